//go:build e2e

// Package kubelet_test runs rknpu-device-plugin against a real kubelet (v1.37.2) whose
// device manager is the client that matters: the plugin (on a fake RK3588 root)
// registers, the node's allocatable shows rockchip.com/npu, a pod asking for it is
// scheduled and runs (on the process runtime) with the plugin's device nodes and
// variables, a kubelet restart is survived, and a vanished device node drops
// allocatable until it returns. Run it with `make e2e-kubelet` (needs root; see
// test/e2e/kubeletnode).
package kubelet_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	crilogs "k8s.io/cri-client/pkg/logs"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/controlplane"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/kubeletnode"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

// Named timeouts for things that take seconds on a loaded 2-core machine.
const (
	nodeReadyTimeout   = 90 * time.Second
	allocatableTimeout = 60 * time.Second
	podTimeout         = 60 * time.Second
	pluginExitTimeout  = 15 * time.Second
)

const npuResource corev1.ResourceName = "rockchip.com/npu"

// shellImage runs the host's /bin/sh -c with the container's arguments (the process
// runtime's image map in the test).
const shellImage = "e2e.local/shell:1"

func TestDevicePluginWithRealKubelet(t *testing.T) {
	k8sBin := makevars.Path(t, "E2E_K8S_BIN_DIR", "e2e-kubelet")
	kwokctl := makevars.Path(t, "E2E_KWOKCTL", "e2e-kubelet")
	pluginBin := makevars.Path(t, "E2E_DEVICE_PLUGIN", "e2e-kubelet")
	processCRI := makevars.Path(t, "E2E_PROCESS_CRI", "e2e-kubelet")
	cniBin := makevars.Path(t, "E2E_CNI_BIN_DIR", "e2e-kubelet")
	if os.Geteuid() != 0 {
		t.Fatal("the real-kubelet e2e test needs root (a private mount namespace for the kubelet)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	if deadline, ok := t.Deadline(); ok {
		// Leave time for the cleanups, which stop every process.
		ctx, cancel = context.WithDeadline(context.Background(), deadline.Add(-time.Minute))
	}
	defer cancel()

	work := t.TempDir()
	logs := newLogs(t, work)

	// Control plane: etcd, kube-apiserver, kube-scheduler, kube-controller-manager.
	cp, err := controlplane.Start(ctx, controlplane.Options{
		Kwokctl: kwokctl, BinDir: k8sBin, WorkDir: filepath.Join(work, "cp"), Log: logs.file("kwokctl"),
		// The node lifecycle controller lifts the not-ready taint the kubelet registers with.
		ControllerManager: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(context.Background()); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
		logs.dumpDir(filepath.Join(work, "cp", "logs"))
	})
	client := newClient(t, cp.Kubeconfig)

	// The plugin's Orange Pi 5 fake root: its /dev is the node's, for the device nodes
	// the plugin hands out.
	root, err := discoverytest.RK3588().Write(filepath.Join(work, "root"))
	if err != nil {
		t.Fatal(err)
	}
	images := filepath.Join(work, "images.yaml")
	if err := os.WriteFile(images, []byte("images:\n- image: "+shellImage+"\n  entrypoint: [/bin/sh, -c]\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The node: a real kubelet on the process runtime.
	node, err := kubeletnode.Start(ctx, kubeletnode.Options{
		Kubelet: filepath.Join(k8sBin, "kubelet"), Kubeconfig: cp.Kubeconfig,
		WorkDir: filepath.Join(work, "node"), NodeName: "rknpu-e2e", Log: logs.file("kubelet"),
		ProcessCRI: processCRI, CNIBinDir: cniBin, Images: images,
		NodePaths: []processcri.PathMap{{Host: "/dev", Local: filepath.Join(root, "dev")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := node.Stop(); err != nil {
			t.Errorf("stopping the kubelet: %v", err)
		}
	})
	waitNode(ctx, t, client, node.Name, nodeReadyTimeout, "Ready", func(n *corev1.Node) bool {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	})

	// The plugin, on the fake root.
	metricsAddr := freeAddr(t)
	plugin := startPlugin(ctx, t, logs.file("rknpu-device-plugin"), pluginBin,
		"--root", root, "--kubelet-dir", node.DevicePluginDir, "--metrics-addr", metricsAddr,
		"--node-labels", filepath.Join(work, "features.d", "rockchip-npu"))
	t.Cleanup(plugin.kill)

	t.Log("the plugin registers and the node's allocatable shows rockchip.com/npu: 1")
	waitAllocatable(ctx, t, client, node.Name, 1)

	t.Log("a pod asking for the NPU is scheduled and runs with the plugin's devices and envs")
	waitServiceAccount(ctx, t, client)
	pod := createPod(ctx, t, client, "npu-user")
	waitPod(ctx, t, client, pod, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }, "Running")
	checkContainerGotTheNPU(ctx, t, node, pod)

	t.Log("restarting the kubelet deletes the plugin's socket; the plugin registers again and the pod keeps its device")
	restartsBefore := metric(ctx, t, metricsAddr, "rknpu_kubelet_restarts_total")
	if err := node.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, allocatableTimeout, "the plugin to register again after the kubelet restart", func() (bool, string) {
		got := metric(ctx, t, metricsAddr, "rknpu_kubelet_restarts_total")
		return got == restartsBefore+1, fmt.Sprintf("rknpu_kubelet_restarts_total %v (was %v)", got, restartsBefore)
	})
	waitAllocatable(ctx, t, client, node.Name, 1)
	second := createPod(ctx, t, client, "npu-second")
	waitPod(ctx, t, client, second, func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				return strings.Contains(c.Message, "Insufficient rockchip.com/npu")
			}
		}
		return false
	}, "unschedulable for lack of rockchip.com/npu (the first pod still holds the only unit)")
	waitPod(ctx, t, client, pod, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount == 0
	}, "still Running, not restarted")

	t.Log("removing the NPU's render node drops allocatable to 0; restoring it brings it back")
	render := filepath.Join(root, "dev/dri/renderD129")
	if err := os.Remove(render); err != nil {
		t.Fatal(err)
	}
	waitAllocatable(ctx, t, client, node.Name, 0)
	if err := os.WriteFile(render, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitAllocatable(ctx, t, client, node.Name, 1)

	t.Log("SIGTERM stops the plugin cleanly")
	if err := plugin.terminate(pluginExitTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(node.DevicePluginDir, "rknpu.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("plugin socket after SIGTERM: %v, want removed", err)
	}
}

// checkContainerGotTheNPU reads what the running container printed (its log, in the
// kubelet's pod log folder) and checks the device plugin's contribution: exactly its
// device nodes in the container's /dev/dri, and its variables.
func checkContainerGotTheNPU(ctx context.Context, t *testing.T, node *kubeletnode.Node, pod *corev1.Pod) {
	t.Helper()
	logFile := filepath.Join(node.PodLogDir, pod.Namespace+"_"+pod.Name+"_"+string(pod.UID), "server", "0.log")
	var out string
	eventually(ctx, t, podTimeout, "the container to print its devices", func() (bool, string) {
		var b strings.Builder
		if err := crilogs.ReadLogs(ctx, logFile, "", &crilogs.LogOptions{}, nil, &b, &b); err != nil {
			return false, err.Error()
		}
		out = b.String()
		return strings.Contains(out, "done"), out
	})
	for _, want := range []string{
		"devices: card1 renderD129", "RKNPU_DEVICE_NODES=/dev/dri/renderD129,/dev/dri/card1", "RKNPU_SOC=rk3588", "RKNPU_CORES=3",
		"RKNPU_DRIVER_VERSION=0.9.8", "RKNPU_UNIT_IDS=npu0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the container printed no %q:\n%s", want, out)
		}
	}
}

func newClient(t *testing.T, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitServiceAccount waits for kube-controller-manager to create the namespace's default
// ServiceAccount, without which pods are refused.
func waitServiceAccount(ctx context.Context, t *testing.T, c kubernetes.Interface) {
	t.Helper()
	eventually(ctx, t, podTimeout, "the default ServiceAccount", func() (bool, string) {
		_, err := c.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
}

func createPod(ctx context.Context, t *testing.T, c kubernetes.Interface, name string) *corev1.Pod {
	t.Helper()
	no := false
	one := resource.MustParse("1")
	grace := int64(5)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "server", Image: shellImage,
				Args:      []string{`echo "devices: $(ls /dev/dri | tr '\n' ' ')"; env | grep ^RKNPU_ | sort; echo done; trap 'exit 0' TERM; while :; do sleep 1; done`},
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{npuResource: one}},
			}},
		},
	}
	created, err := c.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func waitPod(ctx context.Context, t *testing.T, c kubernetes.Interface, pod *corev1.Pod, ok func(*corev1.Pod) bool, what string) {
	t.Helper()
	eventually(ctx, t, podTimeout, "pod "+pod.Name+" "+what, func() (bool, string) {
		p, err := c.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return ok(p), fmt.Sprintf("phase %s, conditions %v, container statuses %v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
	})
}

func waitNode(ctx context.Context, t *testing.T, c kubernetes.Interface, name string, timeout time.Duration, what string, ok func(*corev1.Node) bool) {
	t.Helper()
	eventually(ctx, t, timeout, "node "+name+" "+what, func() (bool, string) {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return ok(n), fmt.Sprintf("conditions %v, capacity %v, allocatable %v", n.Status.Conditions, n.Status.Capacity, n.Status.Allocatable)
	})
}

func waitAllocatable(ctx context.Context, t *testing.T, c kubernetes.Interface, name string, want int64) {
	t.Helper()
	waitNode(ctx, t, c, name, allocatableTimeout, fmt.Sprintf("allocatable %s = %d", npuResource, want), func(n *corev1.Node) bool {
		q, ok := n.Status.Allocatable[npuResource]
		return ok && q.Value() == want
	})
}

// eventually polls cond every 200ms until it holds, failing with its last detail after
// timeout.
func eventually(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, detail := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, detail)
		case <-tick.C:
		}
	}
}

// metric reads one unlabelled metric's value from the plugin (-1 when unreadable).
func metric(ctx context.Context, t *testing.T, addr, name string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}

func freeAddr(t *testing.T) string {
	t.Helper()
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// pluginProcess is the device plugin binary, killed with this process if it dies.
type pluginProcess struct {
	pid  int
	done chan struct{}
	err  error
}

func startPlugin(ctx context.Context, t *testing.T, log io.Writer, bin string, args ...string) *pluginProcess {
	t.Helper()
	p := &pluginProcess{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the starting thread, which stays locked while the plugin runs.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	return p
}

// terminate sends SIGTERM and checks the plugin exits 0 within timeout.
func (p *pluginProcess) terminate(timeout time.Duration) error {
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("signalling the plugin: %w", err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("plugin exited with %w after SIGTERM, want 0", p.err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("plugin still running %v after SIGTERM", timeout)
	}
}

func (p *pluginProcess) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	<-p.done
}

// logs collects each process's output in a file and prints them when the test fails.
type logs struct {
	t     *testing.T
	dir   string
	files []*os.File
}

func newLogs(t *testing.T, work string) *logs {
	l := &logs{t: t, dir: filepath.Join(work, "logs")}
	if err := os.MkdirAll(l.dir, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.dump)
	return l
}

func (l *logs) file(name string) io.Writer {
	f, err := os.Create(filepath.Join(l.dir, name+".log"))
	if err != nil {
		l.t.Fatal(err)
	}
	l.files = append(l.files, f)
	return f
}

// dump prints the tail of every log when the test failed. It runs last, after the
// processes are stopped.
func (l *logs) dump() {
	for _, f := range l.files {
		_ = f.Close()
		if l.t.Failed() {
			l.printTail(f.Name())
		}
	}
}

func (l *logs) dumpDir(dir string) {
	if !l.t.Failed() {
		return
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		l.printTail(filepath.Join(dir, e.Name()))
	}
}

func (l *logs) printTail(path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	l.t.Logf("--- last lines of %s ---\n%s", filepath.Base(path), strings.Join(lines, "\n"))
}
