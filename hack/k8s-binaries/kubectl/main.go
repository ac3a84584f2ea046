// Command kubectl is kubectl's own entry point (k8s.io/kubernetes/cmd/kubectl), built
// from the published k8s.io/kubectl module so it needs none of k8s.io/kubernetes's
// replace directives. kwokctl runs it to wait for the control plane; people use it too.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Client auth plugins, as in the upstream binary.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// Verbosity is set before the command is built, as upstream does, so klog works while
	// plugins and .kuberc are read.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
