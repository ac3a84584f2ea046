// Package kubeletnode runs a real kubelet as a Kubernetes node on a machine with no
// container engine and without touching the host: the container runtime is the CRI fake
// from k8s.io/cri-client (served in this process), and the kubelet runs in a private mount
// namespace (unshare --mount --propagation private) where temporary folders are
// bind-mounted over /var/lib (its device-plugin folder is hard-coded under
// /var/lib/kubelet) and /var/log (/var/log/containers is hard-coded), and files holding
// the kernel tunables the kubelet insists on are bind-mounted over their /proc/sys
// entries, with protectKernelDefaults on so it never writes them. Every mount lives in
// that namespace and vanishes with the kubelet; the host's kernel settings are never
// changed. It backs the device plugin's real-kubelet e2e test and the demo's node.
//
// It needs root (for unshare and mount) and the unshare and mount commands (util-linux).
package kubeletnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Options configures a node.
type Options struct {
	// Kubelet is the kubelet binary (hack/k8s-binaries.sh kubelet).
	Kubelet string
	// Kubeconfig is the kubeconfig the kubelet uses to reach the API server (an admin
	// kubeconfig is fine for tests).
	Kubeconfig string
	// WorkDir is a private folder for the node: the folders mounted over /var/lib and
	// /var/log, the kubelet's configuration, the CRI socket. It must not be under
	// /var/lib or /var/log, which the kubelet sees replaced.
	WorkDir string
	// NodeName is the node's name (default "rknpu-node").
	NodeName string
	// Log receives the kubelet's output (nil discards it).
	Log io.Writer
	// StopTimeout bounds a graceful kubelet stop before it is killed (default 10s).
	StopTimeout time.Duration
	// PodIP, when set, is the IP the fake runtime reports for every pod sandbox (the
	// kubelet's probes go there), instead of the fake's fixed 192.168.192.168.
	PodIP string
}

// Node is a running kubelet with its fake runtime.
type Node struct {
	// CRI is the fake container runtime; CRI.Created() shows what the kubelet asked for.
	CRI *FakeCRI
	// DevicePluginDir is the host path of the kubelet's /var/lib/kubelet/device-plugins,
	// where a device plugin under test puts its socket (its --kubelet-dir).
	DevicePluginDir string
	// Name is the node's name.
	Name string

	opts   Options
	script string
	proc   *process
}

// kernelTunables are what the kubelet checks (and, with protectKernelDefaults false,
// would write) at start.
var kernelTunables = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// Start starts the fake runtime and the kubelet. It returns once the kubelet runs; wait
// for the Node object to be Ready through the API. On error everything started is stopped.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.NodeName == "" {
		opts.NodeName = "rknpu-node"
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 10 * time.Second
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("kubeletnode needs root (unshare --mount and bind mounts)")
	}
	work, err := filepath.Abs(opts.WorkDir)
	if err != nil {
		return nil, err
	}
	for _, hidden := range []string{"/var/lib", "/var/log"} {
		if work == hidden || strings.HasPrefix(work, hidden+"/") {
			return nil, fmt.Errorf("work folder %s is under %s, which the kubelet sees replaced; use a folder under /tmp", work, hidden)
		}
	}
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (Debian package util-linux / mount): %w", tool, err)
		}
	}
	opts.WorkDir = work
	n := &Node{
		Name:            opts.NodeName,
		DevicePluginDir: filepath.Join(work, "var-lib", "kubelet", "device-plugins"),
		opts:            opts,
	}
	if err := n.prepare(); err != nil {
		return nil, err
	}
	if n.CRI, err = StartFakeCRI(filepath.Join(work, "cri.sock")); err != nil {
		return nil, err
	}
	n.CRI.SetPodIP(opts.PodIP)
	if err := n.startKubelet(ctx); err != nil {
		n.CRI.Stop()
		return nil, err
	}
	return n, nil
}

// prepare writes the folders, the tunables, the kubelet configuration and the script run
// inside the mount namespace.
func (n *Node) prepare() error {
	w := n.opts.WorkDir
	for _, d := range []string{"var-lib/kubelet/device-plugins", "var-log", "pod-logs", "volume-plugins", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(w, d), 0o750); err != nil {
			return fmt.Errorf("preparing the node folder: %w", err)
		}
	}
	var mounts []string
	for key, value := range kernelTunables {
		file := filepath.Join(w, "sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(file, []byte(value+"\n"), 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", file, err)
		}
		mounts = append(mounts, fmt.Sprintf("mount --bind %s /proc/sys/%s", shellQuote(file), key))
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	config := filepath.Join(w, "kubelet.yaml")
	if err := renderFile(config, kubeletConfig, map[string]any{
		"Port": ports[0], "HealthzPort": ports[1], "CRI": "unix://" + filepath.Join(w, "cri.sock"),
		"PodLogs": filepath.Join(w, "pod-logs"), "VolumePlugins": filepath.Join(w, "volume-plugins"),
	}); err != nil {
		return err
	}
	n.script = strings.Join(append([]string{
		"set -e",
		"mount --bind " + shellQuote(filepath.Join(w, "var-lib")) + " /var/lib",
		"mount --bind " + shellQuote(filepath.Join(w, "var-log")) + " /var/log",
	}, append(mounts,
		fmt.Sprintf("exec %s --config=%s --kubeconfig=%s --hostname-override=%s --v=1",
			shellQuote(n.opts.Kubelet), shellQuote(config), shellQuote(n.opts.Kubeconfig), shellQuote(n.opts.NodeName)),
	)...), "\n")
	return nil
}

// kubeletConfig keeps the kubelet on loopback, off the host's cgroups and kernel
// settings, and quick to report node status.
var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {{.Port}}
healthzBindAddress: 127.0.0.1
healthzPort: {{.HealthzPort}}
readOnlyPort: 0
containerRuntimeEndpoint: {{.CRI}}
imageServiceEndpoint: {{.CRI}}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
protectKernelDefaults: true
podLogsDir: {{.PodLogs}}
volumePluginDir: {{.VolumePlugins}}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
nodeStatusUpdateFrequency: 2s
evictionHard:
  memory.available: 1Mi
serializeImagePulls: false
`))

// startKubelet starts the kubelet in its own mount namespace.
func (n *Node) startKubelet(ctx context.Context) error {
	p, err := startProcess(ctx, n.opts.WorkDir, n.opts.Log, "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", n.script)
	if err != nil {
		return fmt.Errorf("starting the kubelet: %w", err)
	}
	n.proc = p
	return nil
}

// Restart stops the kubelet and starts it again with the same folders, as a kubelet
// restart on a real node (which deletes the device-plugin sockets and re-creates
// kubelet.sock).
func (n *Node) Restart(ctx context.Context) error {
	if err := n.stopKubelet(); err != nil {
		return err
	}
	return n.startKubelet(ctx)
}

// Exited is closed when the kubelet process ends.
func (n *Node) Exited() <-chan struct{} { return n.proc.done }

// Stop stops the kubelet (its mounts go with its namespace) and the fake runtime.
func (n *Node) Stop() error {
	err := n.stopKubelet()
	n.CRI.Stop()
	return err
}

func (n *Node) stopKubelet() error {
	if n.proc == nil {
		return nil
	}
	p := n.proc
	n.proc = nil
	return p.stop(n.opts.StopTimeout)
}

// process is a child that dies with this process: Pdeathsig is tied to the thread that
// started it, so that thread is locked for the child's lifetime.
type process struct {
	pid  int
	done chan struct{}
	err  error
}

func startProcess(ctx context.Context, dir string, log io.Writer, name string, args ...string) (*process, error) {
	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		// Not CommandContext: the kubelet outlives Start's context; stop() and Pdeathsig end it.
		cmd := exec.Command(name, args...) //nolint:noctx,gosec // fixed program (unshare), caller-chosen kubelet
		// A folder of its own: the kubelet resolves paths the runtime reports relative to it.
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	select {
	case err := <-started:
		if err != nil {
			return nil, err
		}
		return p, nil
	case <-ctx.Done():
		err := <-started
		if err == nil {
			_ = p.stop(0)
		}
		return nil, ctx.Err()
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after timeout.
func (p *process) stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing the kubelet (pid %d): %w", p.pid, err)
	}
	<-p.done
	return nil
}

func renderFile(path string, t *template.Template, data any) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := t.Execute(f, data); err != nil {
		_ = f.Close()
		return fmt.Errorf("rendering %s: %w", path, err)
	}
	return f.Close()
}

func freePorts(n int) ([]int, error) {
	var lc net.ListenConfig
	ports := make([]int, 0, n)
	for range n {
		l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer func() { _ = l.Close() }()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// PID is the kubelet's process id (for logs).
func (n *Node) PID() string {
	if n.proc == nil {
		return "none"
	}
	return strconv.Itoa(n.proc.pid)
}

// HostPath is where a path the kubelet names (in its mount namespace, where /var/lib and
// /var/log are folders of the node's) is for other processes.
func (n *Node) HostPath(p string) string {
	for _, d := range []struct{ in, host string }{{"/var/lib", "var-lib"}, {"/var/log", "var-log"}} {
		if p == d.in || strings.HasPrefix(p, d.in+"/") {
			return filepath.Join(n.opts.WorkDir, d.host, strings.TrimPrefix(p, d.in))
		}
	}
	return p
}

// Command is a created container's process as a host process with bin as its
// executable: its arguments, and its environment on top of this process's, with every
// container path under one of the container's mounts (a volume, the termination log,
// the device plugin's mounts) turned into the host path behind it. It runs as this
// process's user, in the runtime's ExecContext.
func (n *Node) Command(req *runtimeapi.CreateContainerRequest, bin string) *exec.Cmd {
	cfg := req.GetConfig()
	hostOf := func(v string) string {
		best := ""
		var host string
		for _, m := range cfg.GetMounts() {
			c := m.GetContainerPath()
			if (v == c || strings.HasPrefix(v, c+"/")) && len(c) > len(best) {
				best, host = c, n.HostPath(m.GetHostPath())+strings.TrimPrefix(v, c)
			}
		}
		if best == "" {
			return v
		}
		return host
	}
	translate := func(v string) string {
		if name, value, ok := strings.Cut(v, "="); ok && strings.HasPrefix(name, "--") {
			return name + "=" + hostOf(value)
		}
		return hostOf(v)
	}
	args := make([]string, 0, len(cfg.GetArgs()))
	for _, a := range cfg.GetArgs() {
		args = append(args, translate(a))
	}
	cmd := exec.CommandContext(n.CRI.ExecContext(), bin, args...) //nolint:gosec // the test's own binary
	cmd.Env = os.Environ()
	for _, e := range cfg.GetEnvs() {
		cmd.Env = append(cmd.Env, e.GetKey()+"="+hostOf(string(e.GetValue())))
	}
	cmd.Dir = n.opts.WorkDir
	return cmd
}
