// Package edgecluster runs a simulated RK3588 edge cluster on one machine without a
// container engine, for `make demo` and the e2e test (test/e2e/edge):
//
//   - a real control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager)
//     with kwokctl's binary runtime (test/e2e/controlplane), plus the kwok controller;
//   - two RK3588 nodes simulated by kwok: created through the API with rockchip.com/npu: 1
//     and the device plugin's node labels; kwok keeps them Ready and moves their pods to
//     Running and Ready (its default stages) without running anything, probes included;
//   - one node run by a real kubelet on the process runtime (test/e2e/kubeletnode,
//     hack/processcri), which runs every pod scheduled to it for real, as host processes
//     in the node's private namespaces: the images of the chart and the operator
//     (rkllm-server, rknpu-device-plugin, the manager) map to the binaries built here,
//     rkllm-server's runtime library to the RKLLM simulator; pods get addresses in the
//     node's own network (reached with Cluster.DialContext), the kubelet probes them
//     there, and the API server reaches the kubelet (kubectl logs) through an egress
//     proxy. Its rockchip.com/npu comes from the real rknpu-device-plugin registering
//     over the kubelet's socket, scanning a fake RK3588 filesystem tree, which is also
//     the node's /dev and /sys for its pods (their device nodes); the labels the plugin
//     writes for node-feature-discovery are put on the node as NFD would.
//
// Processes that would be pods but that no node here can run well (the operator's
// manager, which needs the API server's Service address) run as local processes with
// the in-cluster configuration a pod gets (StartInCluster). Everything started is
// stopped by Stop; every child also dies with this process.
package edgecluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/controlplane"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/footprint"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/kubeletnode"
)

// NPUResource is the extended resource the device plugin advertises.
const NPUResource corev1.ResourceName = "rockchip.com/npu"

// Node names.
const (
	KwokNode1   = "rk3588-kwok-1"
	KwokNode2   = "rk3588-kwok-2"
	KubeletNode = "rk3588-kubelet"
)

// Named timeouts, generous for a loaded 2-core machine.
const (
	nodeReadyTimeout   = 2 * time.Minute
	allocatableTimeout = time.Minute
	stopTimeout        = 15 * time.Second
)

// Options says where the binaries are.
type Options struct {
	// K8sBinDir holds kube-apiserver, etcd, kube-controller-manager, kube-scheduler,
	// kubelet and kubectl (hack/k8s-binaries.sh).
	K8sBinDir string
	// Kwokctl and Kwok are the kwok binaries (make kwokctl kwok).
	Kwokctl, Kwok string
	// DevicePlugin is the rknpu-device-plugin binary.
	DevicePlugin string
	// ProcessCRI and CNIBinDir are the process runtime and the CNI plugins (make
	// process-cri cni-plugins).
	ProcessCRI, CNIBinDir string
	// Server, SimLib and Manager are what the images map to: rkllm-server, the RKLLM
	// simulator library it loads as librkllmrt.so, the manager.
	Server, SimLib, Manager string
	// WorkDir is a new folder for everything: state, logs (WorkDir/logs), the fake NPU
	// tree. It must not be under /var/lib or /var/log.
	WorkDir string
	// Progress, when set, is told what is starting.
	Progress func(format string, args ...any)
}

// Cluster is a running simulated edge cluster.
type Cluster struct {
	// Kubeconfig is the admin kubeconfig.
	Kubeconfig string
	// Config and Client reach the API server as admin.
	Config *rest.Config
	Client kubernetes.Interface
	// Images is the process runtime's image map.
	Images string
	// WorkDir is the cluster's folder; logs are in WorkDir/logs.
	WorkDir string
	// NPURoot is the fake filesystem tree the device plugin scans.
	NPURoot string
	// ModelCache is the real-kubelet node's model cache folder, which the device plugin
	// mounts into NPU containers (--model-cache-dir).
	ModelCache string
	// Plugin is the device plugin process serving the real-kubelet node.
	Plugin *Process

	opts   Options
	cp     *controlplane.ControlPlane
	node   *kubeletnode.Node
	egress *kubeletnode.EgressProxy
	mu     sync.Mutex
	procs  []*Process
	// logs stay open until Stop: kwokctl and the kubelet write to them until then.
	logs []*os.File
	// closers are servers to close at Stop (ServeFiles).
	closers []func() error
}

// openLog creates LogDir()/name.log, closed by Stop.
func (c *Cluster) openLog(name string) (*os.File, error) {
	f, err := os.Create(filepath.Join(c.LogDir(), name+".log"))
	if err != nil {
		return nil, err
	}
	c.logs = append(c.logs, f)
	return f, nil
}

// Start starts the control plane, the three nodes and the device plugin, and returns
// once every node is Ready with rockchip.com/npu: 1 allocatable. On error it stops
// whatever it started.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Progress == nil {
		opts.Progress = func(string, ...any) {}
	}
	work, err := filepath.Abs(opts.WorkDir)
	if err != nil {
		return nil, err
	}
	c = &Cluster{WorkDir: work, opts: opts}
	if err := os.MkdirAll(c.LogDir(), 0o750); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	if c.egress, err = kubeletnode.NewEgressProxy(filepath.Join(work, "egress.sock")); err != nil {
		return nil, err
	}
	if err := c.startControlPlane(ctx); err != nil {
		return nil, err
	}

	opts.Progress("nodes %s and %s: RK3588 boards simulated by kwok (rockchip.com/npu: 1 each)", KwokNode1, KwokNode2)
	for _, name := range []string{KwokNode1, KwokNode2} {
		if err := c.createKwokNode(ctx, name); err != nil {
			return nil, err
		}
	}

	root, err := discoverytest.RK3588().Write(filepath.Join(c.WorkDir, "npu-root"))
	if err != nil {
		return nil, err
	}
	c.NPURoot = root
	if err := c.startKubelet(ctx); err != nil {
		return nil, err
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return nil, err
	}

	opts.Progress("rknpu-device-plugin for %s, on a fake Orange Pi 5 (RK3588) filesystem tree", KubeletNode)
	if err := c.startDevicePlugin(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler and the kwok controller, and the admin clients.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	opts := c.opts
	opts.Progress("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller (kwokctl, binary runtime)")
	kwokLog, err := c.openLog("kwokctl")
	if err != nil {
		return err
	}
	c.cp, err = controlplane.Start(ctx, controlplane.Options{
		Kwokctl: opts.Kwokctl, Kwok: opts.Kwok, BinDir: opts.K8sBinDir, WorkDir: filepath.Join(c.WorkDir, "cp"),
		ControllerManager: true, Log: kwokLog, EgressSelectorConfig: c.egress.EgressSelectorConfig(),
	})
	if err != nil {
		return err
	}
	c.Kubeconfig = c.cp.Kubeconfig
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return err
	}
	c.Config.QPS, c.Config.Burst = 50, 100
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	return nil
}

// startKubelet starts the real kubelet on the process runtime.
func (c *Cluster) startKubelet(ctx context.Context) error {
	opts := c.opts
	opts.Progress("node %s: a real kubelet on the process runtime, which runs its pods as processes in the node's own namespaces", KubeletNode)
	kubeletLog, err := c.openLog("kubelet")
	if err != nil {
		return err
	}
	if c.Images, err = c.writeImageMap(); err != nil {
		return err
	}
	c.node, err = kubeletnode.Start(ctx, kubeletnode.Options{
		Kubelet: filepath.Join(opts.K8sBinDir, "kubelet"), Kubeconfig: c.Kubeconfig,
		WorkDir: filepath.Join(c.WorkDir, "node"), NodeName: KubeletNode, Log: kubeletLog,
		ProcessCRI: opts.ProcessCRI, CNIBinDir: opts.CNIBinDir, Images: c.Images,
		// The node's device nodes and sysfs are the fake RK3588's.
		NodePaths: []processcri.PathMap{{Host: "/dev", Local: filepath.Join(c.NPURoot, "dev")}, {Host: "/sys", Local: filepath.Join(c.NPURoot, "sys")}},
	})
	if err != nil {
		return err
	}
	c.egress.SetNode(c.node)
	return nil
}

// Images the process runtime runs, as the chart and the operator name them.
const (
	ServerImage       = "ghcr.io/rkllm-operator/rkllm-server"
	DevicePluginImage = "ghcr.io/rkllm-operator/rknpu-device-plugin"
	ManagerImage      = "ghcr.io/rkllm-operator/rkllm-operator"
)

// writeImageMap maps the project's images to the binaries built here, as their
// Dockerfiles lay them out (images/), with the RKLLM simulator as rkllm-server's
// runtime library.
func (c *Cluster) writeImageMap() (string, error) {
	o := c.opts
	doc := fmt.Sprintf(`# The process runtime's images (hack/processcri/imagemap): what images/*/Dockerfile put
# in each, from this machine's builds. librkllmrt.so is the RKLLM simulator.
images:
- image: %[1]s
  files:
    /usr/local/bin/rkllm-server: %[4]s
    /opt/rkllm/lib/librkllmrt.so: %[5]s
  entrypoint: [/usr/local/bin/rkllm-server]
  env: [LD_LIBRARY_PATH=/opt/rkllm/lib]
  user: "65532:65532"
- image: %[2]s
  files:
    /rknpu-device-plugin: %[6]s
  entrypoint: [/rknpu-device-plugin]
- image: %[3]s
  files:
    /manager: %[7]s
  entrypoint: [/manager]
  user: "65532:65532"
`, ServerImage, DevicePluginImage, ManagerImage, o.Server, o.SimLib, o.DevicePlugin, o.Manager)
	path := filepath.Join(c.WorkDir, "images.yaml")
	return path, os.WriteFile(path, []byte(doc), 0o600)
}

// Node is the real-kubelet node.
func (c *Cluster) Node() *kubeletnode.Node { return c.node }

// DialContext connects to an address in the real-kubelet node's network: a pod IP of
// that node, or the node's own.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return c.node.DialContext(ctx, network, addr)
}

// HTTPClient is an HTTP client whose connections are made in the real-kubelet node's
// network.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: c.DialContext, DisableKeepAlives: true}}
}

// LogDir is where every component logs.
func (c *Cluster) LogDir() string { return filepath.Join(c.WorkDir, "logs") }

// APIServerHostPort is the API server's host and port.
func (c *Cluster) APIServerHostPort() (string, string, error) {
	u := strings.TrimPrefix(c.Config.Host, "https://")
	return net.SplitHostPort(u)
}

// Stop stops every process the cluster started, the kubelet and the control plane,
// and kills whatever remains; it keeps the logs.
func (c *Cluster) Stop() error {
	var errs []error
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	closers := c.closers
	c.closers = nil
	c.mu.Unlock()
	for _, cl := range closers {
		_ = cl()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(stopTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if c.node != nil {
		if err := c.node.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the kubelet: %w", err))
		}
		c.node = nil
	}
	if c.egress != nil {
		_ = c.egress.Close()
		c.egress = nil
	}
	if c.cp != nil {
		if err := c.cp.Stop(context.Background()); err != nil {
			errs = append(errs, fmt.Errorf("stopping the control plane: %w", err))
		}
		c.cp = nil
	}
	for _, f := range c.logs {
		_ = f.Close()
	}
	c.logs = nil
	return errors.Join(errs...)
}

// Cleanup stops what a cluster in workDir left running when its owner died without Stop
// (a crash, SIGKILL): it deletes the control plane with kwokctl (whose processes are
// detached and do not die with their parent), then kills every process still running
// from workDir (see Leftovers), and returns an error naming any that outlive the kill.
func Cleanup(ctx context.Context, kwokctl, workDir string) error {
	work, err := filepath.Abs(workDir)
	if err != nil {
		return err
	}
	// Waited for below until they have exited: a process on its way out no longer shows
	// its command line but still holds its files and ports for a moment.
	running := Leftovers(work)
	cpErr := controlplane.Leftover(kwokctl, filepath.Join(work, "cp"), "").Stop(ctx)
	for _, p := range Leftovers(work) {
		if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			cpErr = errors.Join(cpErr, fmt.Errorf("killing %s: %w", p, err))
		}
	}
	err = Poll(ctx, stopTimeout, "the processes of "+work+" to end", func(context.Context) (bool, string, error) {
		left := Leftovers(work)
		for _, p := range running {
			if !footprint.Exited(p.PID) && !slices.Contains(left, p) {
				left = append(left, p)
			}
		}
		return len(left) == 0, fmt.Sprint(left), nil
	})
	return errors.Join(cpErr, err)
}

// LeftProcess is a process running from a cluster's folder.
type LeftProcess struct {
	PID     int
	Cmdline string
}

func (p LeftProcess) String() string { return fmt.Sprintf("pid %d (%s)", p.PID, p.Cmdline) }

// Leftovers lists the live processes (zombies excluded) that run from one of dirs: it
// is in their command line (the control plane, the kubelet, the device plugin,
// rkllm-server) or is their working folder (every process Start starts, the manager
// included).
func Leftovers(dirs ...string) []LeftProcess {
	var left []LeftProcess
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		proc := filepath.Join("/proc", e.Name())
		cmdline, err := os.ReadFile(filepath.Join(proc, "cmdline"))
		if err != nil || len(cmdline) == 0 { // gone, or a zombie
			continue
		}
		cwd, _ := os.Readlink(filepath.Join(proc, "cwd"))
		for _, d := range dirs {
			if bytes.Contains(cmdline, []byte(d)) || cwd == d || strings.HasPrefix(cwd, d+"/") {
				left = append(left, LeftProcess{PID: pid, Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))})
				break
			}
		}
	}
	return left
}

// Start starts a local process whose output goes to LogDir()/name.log; Stop stops it.
func (c *Cluster) Start(ctx context.Context, name string, env []string, bin string, args ...string) (*Process, error) {
	p, err := startProcess(ctx, c.WorkDir, name, filepath.Join(c.LogDir(), name+".log"), env, bin, args...)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// Forget drops a stopped process from the ones Stop stops.
func (c *Cluster) Forget(p *Process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.procs {
		if q == p {
			c.procs = append(c.procs[:i], c.procs[i+1:]...)
			return
		}
	}
}

// createKwokNode registers an RK3588 board that kwok simulates: the capacity an
// Orange Pi 5 (16 GB) has, with the NPU the device plugin would advertise, and the
// labels its node-feature-discovery file would give.
func (c *Cluster) createKwokNode(ctx context.Context, name string) error {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
		NPUResource:           resource.MustParse("1"),
	}
	labels := map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "arm64",
		"type":                   "kwok",
	}
	for k, v := range NPULabels() {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      labels,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
		},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			NodeInfo: corev1.NodeSystemInfo{
				Architecture: "arm64", OperatingSystem: "linux",
				OSImage: "Ubuntu 22.04 (simulated by kwok)", KernelVersion: "6.1.75-rockchip-rk3588 (simulated)",
			},
		},
	}
	if _, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating kwok node %s: %w", name, err)
	}
	return nil
}

// NPULabels are the labels rknpu-device-plugin writes for an RK3588 with driver 0.9.8.
func NPULabels() map[string]string {
	return map[string]string{
		"rockchip.com/npu.present":        "true",
		"rockchip.com/npu.soc":            "rk3588",
		"rockchip.com/npu.cores":          "3",
		"rockchip.com/npu.driver-version": "0.9.8",
	}
}

func (c *Cluster) waitNodesReady(ctx context.Context) error {
	return Poll(ctx, nodeReadyTimeout, "the three nodes to be Ready", func(ctx context.Context) (bool, string, error) {
		var notReady []string
		for _, name := range []string{KwokNode1, KwokNode2, KubeletNode} {
			n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil || !nodeReady(n) {
				notReady = append(notReady, name)
			}
		}
		return len(notReady) == 0, "not Ready: " + strings.Join(notReady, ", "), nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// startDevicePlugin runs the real plugin for the real-kubelet node, waits for its
// registration to show in the node's allocatable, and labels the node from the NFD
// features file the plugin wrote.
func (c *Cluster) startDevicePlugin(ctx context.Context) error {
	root := c.NPURoot
	metrics, err := freeAddr()
	if err != nil {
		return err
	}
	features := filepath.Join(c.WorkDir, "features.d", "rockchip-npu")
	// The plugin makes the cache folder under --root, the fake tree; on a board the root
	// is the host's. Here the host's folder is made as the plugin would make it.
	c.ModelCache = filepath.Join(c.WorkDir, "model-cache")
	if err := os.Mkdir(c.ModelCache, 0o750); err != nil {
		return err
	}
	if err := os.Chmod(c.ModelCache, os.ModeSticky|0o777); err != nil { //nolint:gosec // as the plugin makes it
		return err
	}
	if c.Plugin, err = c.Start(ctx, "rknpu-device-plugin", nil, c.opts.DevicePlugin,
		"--root", root, "--kubelet-dir", c.node.DevicePluginDir, "--metrics-addr", metrics, "--node-labels", features,
		"--model-cache-dir", c.ModelCache); err != nil {
		return err
	}
	if err := c.WaitAllocatable(ctx, KubeletNode, 1); err != nil {
		return fmt.Errorf("%w (plugin log: %s)", err, tail(c.Plugin.Log, 2000))
	}
	data, err := os.ReadFile(features)
	if err != nil {
		return fmt.Errorf("the device plugin wrote no node labels: %w", err)
	}
	labels := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			labels[k] = v
		}
	}
	return c.Label(ctx, KubeletNode, labels)
}

// Label merges labels into a node's.
func (c *Cluster) Label(ctx context.Context, node string, labels map[string]string) error {
	var b bytes.Buffer
	b.WriteString(`{"metadata":{"labels":{`)
	first := true
	for k, v := range labels {
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	b.WriteString("}}}")
	if _, err := c.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, b.Bytes(), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labelling node %s: %w", node, err)
	}
	return nil
}

// WaitAllocatable waits until a node's allocatable rockchip.com/npu is want.
func (c *Cluster) WaitAllocatable(ctx context.Context, node string, want int64) error {
	return Poll(ctx, allocatableTimeout, fmt.Sprintf("node %s to have %d %s allocatable", node, want, NPUResource),
		func(ctx context.Context) (bool, string, error) {
			n, err := c.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				return false, err.Error(), nil
			}
			q := n.Status.Allocatable[NPUResource]
			return q.Value() == want, "allocatable " + q.String(), nil
		})
}

// Poll calls check every 250 ms until it reports done, returns an error, or timeout
// passes; the timeout error names what was awaited and the last state seen.
func Poll(ctx context.Context, timeout time.Duration, what string, check func(context.Context) (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	last := ""
	for {
		done, state, err := check(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		last = state
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
		case <-ticker.C:
		}
	}
}

// Run runs a command (helm, kubectl) against the cluster and returns its output.
func (c *Cluster) Run(ctx context.Context, stdin []byte, bin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, args...) //nolint:gosec // tools from the Makefile
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "HELM_CACHE_HOME="+filepath.Join(c.WorkDir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(c.WorkDir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(c.WorkDir, "helm", "data"))
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// IsNotFound reports whether err is the API server's NotFound.
func IsNotFound(err error) bool { return apierrors.IsNotFound(err) }
