/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Command manager runs the rkllm-operator: the RKLLMModel controller, with metrics,
// health probes and leader election.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/controllers"
)

// version is stamped by the build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	var (
		metricsAddr, probeAddr, metricsCertPath string
		secureMetrics, enableHTTP2, leaderElect bool
		defaultImage, watchNamespaces           string
		concurrency                             int
		rollOnUpgrade                           bool
		errorGrace                              time.Duration
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443",
		"Address the metrics endpoint binds to (:8443 for HTTPS, :8080 for HTTP), or 0 to disable it.")
	flag.BoolVar(&secureMetrics, "metrics-secure", true,
		"Serve metrics over HTTPS, to clients authenticated and authorised by the API server (TokenReview, SubjectAccessReview).")
	flag.StringVar(&metricsCertPath, "metrics-cert-path", "",
		"Folder with tls.crt and tls.key for the metrics server; a self-signed certificate when empty.")
	flag.BoolVar(&enableHTTP2, "enable-http2", false,
		"Serve metrics over HTTP/2 too (off by default: HTTP/2 Stream Cancellation and Rapid Reset CVEs).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	flag.BoolVar(&leaderElect, "leader-elect", false,
		"Elect a leader, so only one of several manager replicas reconciles at a time.")
	flag.StringVar(&defaultImage, "default-server-image", defaultServerImage(),
		"Server image for models without spec.runtime.image. Running models keep the image they run until their spec changes (see --roll-on-upgrade).")
	flag.BoolVar(&rollOnUpgrade, "roll-on-upgrade", false,
		"Rebuild every model's pods with this operator's layout and default server image, rolling them where they differ; off: only a model's spec change rolls its pods.")
	flag.StringVar(&watchNamespaces, "watch-namespaces", "",
		"Comma-separated namespaces whose RKLLMModels are reconciled; all namespaces when empty.")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", 4, "How many models are reconciled at once.")
	flag.DurationVar(&errorGrace, "error-grace-period", controllers.DefaultErrorGracePeriod,
		"How long errors talking to the cluster may go on before a model's Ready turns False (and it stalls); shorter ones only set Reconciling.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	if err := run(runOptions{
		metricsAddr: metricsAddr, probeAddr: probeAddr, metricsCertPath: metricsCertPath,
		secureMetrics: secureMetrics, enableHTTP2: enableHTTP2, leaderElect: leaderElect,
		defaultImage: defaultImage, namespaces: splitList(watchNamespaces), concurrency: concurrency, rollOnUpgrade: rollOnUpgrade,
		errorGrace: errorGrace,
	}); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

type runOptions struct {
	metricsAddr, probeAddr, metricsCertPath string
	secureMetrics, enableHTTP2, leaderElect bool
	defaultImage                            string
	namespaces                              []string
	concurrency                             int
	rollOnUpgrade                           bool
	errorGrace                              time.Duration
}

func run(o runOptions) error {
	log := ctrl.Log.WithName("setup")
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))

	var tlsOpts []func(*tls.Config)
	if !o.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{BindAddress: o.metricsAddr, SecureServing: o.secureMetrics, TLSOpts: tlsOpts}
	if o.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	if o.metricsCertPath != "" {
		metricsOpts.CertDir = o.metricsCertPath
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster (in-cluster config, --kubeconfig or KUBECONFIG): %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: o.probeAddr,
		LeaderElection:         o.leaderElect,
		LeaderElectionID:       "rkllm-operator.inference.rkllm.io",
		// The manager exits right after losing the lease, so a fast hand-over is safe.
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(o.namespaces),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}

	r := &controllers.RKLLMModelReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                mgr.GetEventRecorder("rkllm-operator"),
		Options:                 controllers.Options{DefaultImage: o.defaultImage, RollOnUpgrade: o.rollOnUpgrade},
		MaxConcurrentReconciles: o.concurrency,
		ErrorGracePeriod:        o.errorGrace,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the RKLLMModel controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("adding the readiness check: %w", err)
	}

	log.Info("starting manager", "version", version, "defaultServerImage", o.defaultImage, "namespaces", o.namespaces)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// defaultServerImage is the server image of the same release as the manager.
func defaultServerImage() string {
	tag := version
	if tag == "dev" {
		tag = "latest"
	}
	return "ghcr.io/rkllm-operator/rkllm-server:" + tag
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
