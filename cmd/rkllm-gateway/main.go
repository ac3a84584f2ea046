// Command rkllm-gateway is the cluster's one endpoint for every RKLLMModel: an
// OpenAI-compatible and Ollama-style API that routes each request by its model to a
// ready replica, activates models from zero, and swaps idle models out when NPUs are
// short (docs/gateway.md).
package main

import (
	"flag"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/rkllm-operator/rkllm-operator/gateway/serve"
)

// version is stamped by the build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	var o serve.Options
	o.BindFlags(flag.CommandLine)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("rkllm-gateway").WithValues("version", version)

	cfg, err := ctrl.GetConfig()
	if err != nil {
		log.Error(err, "finding the cluster (in-cluster config, --kubeconfig or KUBECONFIG)")
		os.Exit(1)
	}
	if err := serve.Run(ctrl.SetupSignalHandler(), cfg, o, log); err != nil {
		log.Error(err, "rkllm-gateway stopped")
		os.Exit(1)
	}
}
