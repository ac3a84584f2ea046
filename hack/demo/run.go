package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

const (
	release   = "rkllm-operator"
	namespace = "rkllm-operator-system"
)

// demoValues are what the simulated cluster needs from the chart: the manager and
// gateway Deployments at 0 replicas (they need the API server's Service address, which
// no node here routes: they run as local processes with their Deployment's arguments
// and ServiceAccount instead, the gateway in the real-kubelet node's network), a short
// minimum lifetime so the demo's swap need not wait a minute, and the device plugin's DaemonSet on the kwok nodes labelled
// as NPU nodes (the real-kubelet node has its plugin already, on the fake NPU tree).
const demoValues = `manager:
  replicas: 0
gateway:
  replicas: 0
  minLifetime: 5s
devicePlugin:
  nodeSelector:
    kubernetes.io/arch: null
    rockchip.com/npu.present: "true"
    type: kwok
`

// gatewayPort is the gateway's port in the node's network (its admin port is the next).
const gatewayPort = 30080

func logf(format string, args ...any) {
	fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// run owns the cluster: it starts everything, reports ready, and stops everything on
// SIGTERM (make demo-down) or when a part of it dies.
func run(p paths) (err error) {
	ctx, stop := signalContext()
	defer stop()
	work, err := newWorkDir(p)
	if err != nil {
		return err
	}
	c, err := edgecluster.Start(ctx, edgecluster.Options{
		K8sBinDir: p.k8sBin, Kwokctl: p.kwokctl, Kwok: p.kwok, DevicePlugin: p.plugin, WorkDir: work,
		ProcessCRI: p.processCRI, CNIBinDir: p.cniBin, Server: p.server, SimLib: p.simLib, Manager: p.manager,
		Progress: func(f string, a ...any) { logf("starting "+f, a...) },
	})
	if err != nil {
		return err
	}
	defer func() {
		logf("stopping everything")
		err = errors.Join(err, c.Stop())
		logf("stopped")
	}()

	logf("helm install %s %s -n %s (values: %s)", release, p.chart, namespace, "manager.replicas=0, device plugin on rockchip.com/npu.present=true nodes")
	values := filepath.Join(work, "demo-values.yaml")
	if err := os.WriteFile(values, []byte(demoValues), 0o600); err != nil {
		return err
	}
	if _, err := c.Run(ctx, nil, p.helm, "install", release, p.chart, "-n", namespace, "--create-namespace", "-f", values); err != nil {
		return err
	}

	modelURL, sum, err := serveModel(ctx, c, work)
	if err != nil {
		return err
	}
	logf("starting the manager as the chart's Deployment would run it (its arguments, its ServiceAccount's token)")
	manager, err := c.StartManager(ctx, p.manager, namespace, release+"-controller-manager")
	if err != nil {
		return err
	}

	logf("starting the model gateway as the chart's Deployment would run it, in the real-kubelet node's network (where the pods are)")
	gateway, err := c.StartGateway(ctx, p.gateway, namespace, release+"-gateway", "rkllm-gateway-demo", gatewayPort, "--keepalive-interval=2s")
	if err != nil {
		return err
	}

	r := ready{GatewayURL: gateway.URL, WorkDir: work, Kubeconfig: c.Kubeconfig, NodeNetNS: c.Node().Runtime.NetNS(), NodePID: c.Node().Runtime.PID, ModelURL: modelURL, ModelSHA256: sum, LogDir: c.LogDir()}
	if err := writeReady(p, r); err != nil {
		return err
	}
	logf("ready")

	select {
	case <-ctx.Done():
		return nil
	case <-gateway.Exited():
		return fmt.Errorf("the gateway exited (%v); its log: %s", gateway.Err(), gateway.Log)
	case <-manager.Exited():
		return fmt.Errorf("the manager exited (%v); its log: %s", manager.Err(), manager.Log)
	case <-c.Node().Runtime.Exited():
		return fmt.Errorf("the process runtime exited; its log: %s", filepath.Join(c.LogDir(), "kubelet.log"))
	case <-c.Plugin.Exited():
		return fmt.Errorf("the device plugin exited (%v); its log: %s", c.Plugin.Err(), c.Plugin.Log)
	}
}

// writeReady tells `up` the cluster serves: the ready file, written whole.
func writeReady(p paths, r ready) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := os.WriteFile(readyFile(p)+".tmp", data, 0o600); err != nil {
		return err
	}
	return os.Rename(readyFile(p)+".tmp", readyFile(p))
}

// serveModel writes the simulator model file and serves it from a local HTTP server in
// the node's network; it returns its URL and sha256.
func serveModel(ctx context.Context, c *edgecluster.Cluster, work string) (string, string, error) {
	modelFile := filepath.Join(work, "models", "qwen2.5-1.5b-sim.rkllm")
	if err := edgecluster.WriteSimModel(modelFile); err != nil {
		return "", "", err
	}
	sum, err := fileSHA256(modelFile)
	if err != nil {
		return "", "", err
	}
	base, err := c.ServeFiles(ctx, filepath.Dir(modelFile))
	if err != nil {
		return "", "", err
	}
	modelURL := base + "/" + filepath.Base(modelFile)
	logf("serving the simulator model file at %s (a local HTTP server in the node's network)", modelURL)
	return modelURL, sum, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// newWorkDir creates the cluster's work folder and records it in the state folder
// before anything starts there, so `demo down` finds whatever a crash leaves running.
func newWorkDir(p paths) (string, error) {
	work, err := os.MkdirTemp("", workDirPrefix)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(workDirFile(p), []byte(work+"\n"), 0o600); err != nil {
		return "", err
	}
	return work, nil
}
