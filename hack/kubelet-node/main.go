// Command kubelet-node runs a real kubelet as a node (the process runtime, in the node's
// private namespaces; see test/e2e/kubeletnode) and, unless --kubeconfig names an
// existing cluster, a local control plane for it (kwokctl's binary runtime; see
// test/e2e/controlplane).
// It prints where things are as shell assignments, then runs until SIGTERM or Ctrl-C and
// stops everything it started. Needs root.
//
//	make kubelet-node && sudo bin/kubelet-node
//
// prints
//
//	KUBECONFIG=/tmp/kubelet-node-.../cp/clusters/rkllm/kubeconfig.yaml
//	DEVICE_PLUGIN_DIR=/tmp/kubelet-node-.../node/var-lib/kubelet/device-plugins
//	NODE_NAME=rknpu-node
//	NODE_NETNS=/proc/4242/ns/net    (nsenter --net=$NODE_NETNS curl POD_IP:PORT reaches a pod)
//
// and a device plugin started with --kubelet-dir=$DEVICE_PLUGIN_DIR serves that node.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/controlplane"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/kubeletnode"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "Kubeconfig of an existing cluster; empty starts a local control plane.")
	kwokctl := flag.String("kwokctl", "bin/kwokctl-v0.8.0", "kwokctl binary (make kwokctl), for the local control plane.")
	binDir := flag.String("k8s-bin-dir", "bin/k8s/1.37.2", "Folder with kubelet, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd (hack/k8s-binaries.sh).")
	workDir := flag.String("workdir", "", "Private working folder (default: a new folder under the temp folder).")
	nodeName := flag.String("node-name", "rknpu-node", "The node's name.")
	var rt runtimeFlags
	flag.StringVar(&rt.bin, "process-cri", "bin/process-cri", "The process runtime (make process-cri).")
	flag.StringVar(&rt.cni, "cni-bin-dir", "bin/cni-plugins-v1.10.0", "The CNI plugins (make cni-plugins).")
	flag.StringVar(&rt.images, "images", "", "The runtime's image map (hack/processcri/imagemap); empty maps only busybox-like shell images (shell:*: /bin/sh -c ARGS).")
	flag.Parse()
	if err := run(*kubeconfig, *kwokctl, *binDir, *workDir, *nodeName, rt); err != nil {
		fmt.Fprintln(os.Stderr, "kubelet-node:", err)
		os.Exit(1)
	}
}

type runtimeFlags struct{ bin, cni, images string }

func run(kubeconfig, kwokctl, binDir, workDir, nodeName string, rt runtimeFlags) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if workDir == "" {
		dir, err := os.MkdirTemp("", "kubelet-node-")
		if err != nil {
			return err
		}
		workDir = dir
	}
	logs, err := os.Create(filepath.Join(workDir, "kubelet-node.log"))
	if err != nil {
		return err
	}
	defer func() { _ = logs.Close() }()

	if rt.images == "" {
		rt.images = filepath.Join(workDir, "images.yaml")
		if err := os.WriteFile(rt.images, []byte("images:\n- image: shell\n  entrypoint: [/bin/sh, -c]\n"), 0o600); err != nil {
			return err
		}
	}
	for _, p := range []*string{&rt.bin, &rt.cni, &rt.images} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	if kubeconfig == "" {
		cp, err := controlplane.Start(ctx, controlplane.Options{
			Kwokctl: kwokctl, BinDir: binDir, WorkDir: filepath.Join(workDir, "cp"), ControllerManager: true, Log: logs,
		})
		if err != nil {
			return err
		}
		defer func() {
			if err := cp.Stop(context.Background()); err != nil {
				fmt.Fprintln(os.Stderr, "kubelet-node: stopping the control plane:", err)
			}
		}()
		kubeconfig = cp.Kubeconfig
	}
	node, err := kubeletnode.Start(ctx, kubeletnode.Options{
		Kubelet: filepath.Join(binDir, "kubelet"), Kubeconfig: kubeconfig, WorkDir: filepath.Join(workDir, "node"),
		NodeName: nodeName, Log: logs, ProcessCRI: rt.bin, CNIBinDir: rt.cni, Images: rt.images,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := node.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubelet-node: stopping the kubelet:", err)
		}
	}()
	fmt.Printf("KUBECONFIG=%s\nDEVICE_PLUGIN_DIR=%s\nNODE_NAME=%s\nNODE_NETNS=%s\nLOGS=%s\n", kubeconfig, node.DevicePluginDir, node.Name, node.Runtime.NetNS(), logs.Name())
	select {
	case <-ctx.Done():
		return nil
	case <-node.Exited():
		return fmt.Errorf("the kubelet exited; see %s", logs.Name())
	}
}
