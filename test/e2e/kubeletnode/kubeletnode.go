// Package kubeletnode runs a real kubelet as a Kubernetes node on a machine with no
// container engine and without touching the host: the container runtime is the process
// runtime (hack/processcri), which runs every pod for real as host processes, and the
// node lives in the runtime's private namespaces (processcri.Launch): a mount namespace
// where temporary folders are bind-mounted over /var/lib (the kubelet's folder and its
// device-plugin folder are hard-coded under /var/lib/kubelet) and /var/log
// (/var/log/containers is hard-coded), and files holding the kernel tunables the
// kubelet insists on are bind-mounted over their /proc/sys entries, with
// protectKernelDefaults on so it never writes them; a network namespace with the node's
// bridge and address (the node IP, where pods and the API server reach the kubelet) and
// the pods' addresses behind it; a PID namespace whose end ends every process of the
// node. The kubelet joins the mount and network namespaces (nsenter), so it can be
// restarted alone, as on a real node.
//
// From the host, the node's network is reached through this package: the kubelet
// reaches the API server through a forwarder listening on the node's loopback, the API
// server reaches the kubelet (kubectl logs) through EgressProxy, and tests reach pod IPs
// with Node.DialContext. Every mount, interface and address lives in the node's
// namespaces and vanishes with them; the host's kernel settings are never changed.
//
// It needs root and util-linux (unshare, nsenter).
package kubeletnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rkllm-operator/rkllm-operator/hack/childproc"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri"
)

// DefaultSubnet is the pods' subnet when Options.Subnet is unset. It exists only in the
// node's network namespace, so every node can use it.
var DefaultSubnet = netip.MustParsePrefix("10.244.0.0/24")

// Options configures a node.
type Options struct {
	// Kubelet is the kubelet binary (hack/k8s-binaries.sh kubelet).
	Kubelet string
	// Kubeconfig is the kubeconfig the kubelet uses to reach the API server (an admin
	// kubeconfig is fine for tests); its server must be on this machine's loopback.
	Kubeconfig string
	// WorkDir is a private folder for the node: the folders mounted over /var/lib and
	// /var/log, the kubelet's configuration, the runtime's state. It must not be under
	// /var/lib or /var/log, which the node sees replaced.
	WorkDir string
	// NodeName is the node's name (default "rknpu-node").
	NodeName string
	// Log receives the kubelet's and the runtime's output (nil discards it).
	Log io.Writer
	// StopTimeout bounds a graceful kubelet or runtime stop before a kill (default 30s).
	StopTimeout time.Duration

	// ProcessCRI is the process runtime's binary (make process-cri).
	ProcessCRI string
	// CNIBinDir holds the CNI plugins (make cni-plugins).
	CNIBinDir string
	// Images is the runtime's image map (hack/processcri/imagemap).
	Images string
	// NodePaths make host paths of the kubelet's mounts and devices come from local
	// folders (the fake NPU tree's /dev and /sys).
	NodePaths []processcri.PathMap
	// Subnet is the pods' subnet (default DefaultSubnet); its first address is the
	// node's.
	Subnet netip.Prefix
}

// Node is a running kubelet with its process runtime.
type Node struct {
	// Runtime is the process runtime, whose namespaces are the node's.
	Runtime *processcri.Node
	// DevicePluginDir is the host path of the kubelet's /var/lib/kubelet/device-plugins,
	// where a device plugin under test puts its socket (its --kubelet-dir).
	DevicePluginDir string
	// PodLogDir is the host path of the kubelet's pod log folder.
	PodLogDir string
	// Name is the node's name.
	Name string
	// IP is the node's address, in its network namespace.
	IP netip.Addr

	opts   Options
	script string
	proc   *childproc.Process
	apiFwd *Forwarder
	subnet netip.Prefix
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

// Start starts the process runtime in the node's new namespaces and the kubelet in them.
// It returns once the kubelet runs; wait for the Node object to be Ready through the API.
// On error everything started is stopped.
func Start(ctx context.Context, opts Options) (n *Node, err error) {
	if err := opts.complete(); err != nil {
		return nil, err
	}
	work := opts.WorkDir
	n = &Node{
		Name:            opts.NodeName,
		DevicePluginDir: filepath.Join(work, "var-lib", "kubelet", "device-plugins"),
		PodLogDir:       filepath.Join(work, "pod-logs"),
		IP:              opts.Subnet.Masked().Addr().Next(),
		opts:            opts,
		subnet:          opts.Subnet.Masked(),
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Stop())
		}
	}()
	setup, err := n.prepare()
	if err != nil {
		return nil, err
	}
	if n.Runtime, err = processcri.Launch(ctx, processcri.LaunchOptions{
		Binary: opts.ProcessCRI, StateDir: filepath.Join(work, "runtime"), Setup: setup, Log: opts.Log,
		Args: n.runtimeArgs(),
	}); err != nil {
		return nil, err
	}
	if err := n.forwardAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := n.startKubelet(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// complete fills in the defaults and checks the machine.
func (o *Options) complete() error {
	if o.NodeName == "" {
		o.NodeName = "rknpu-node"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 30 * time.Second
	}
	if !o.Subnet.IsValid() {
		o.Subnet = DefaultSubnet
	}
	if os.Geteuid() != 0 {
		return errors.New("kubeletnode needs root (namespaces and bind mounts)")
	}
	work, err := filepath.Abs(o.WorkDir)
	if err != nil {
		return err
	}
	for _, hidden := range []string{"/var/lib", "/var/log"} {
		if work == hidden || strings.HasPrefix(work, hidden+"/") {
			return fmt.Errorf("work folder %s is under %s, which the kubelet sees replaced; use a folder under /tmp", work, hidden)
		}
	}
	for _, tool := range []string{"unshare", "nsenter", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (Debian package util-linux / mount): %w", tool, err)
		}
	}
	o.WorkDir = work
	return nil
}

func (n *Node) runtimeArgs() []string {
	args := []string{"--images", n.opts.Images, "--cni-bin-dir", n.opts.CNIBinDir, "--subnet", n.opts.Subnet.String()}
	for _, m := range n.opts.NodePaths {
		args = append(args, "--node-path", m.Host+"="+m.Local)
	}
	return args
}

// prepare writes the folders, the tunables and the kubelet configuration, and returns
// the commands that mount them in the node's mount namespace.
func (n *Node) prepare() ([]string, error) {
	w := n.opts.WorkDir
	for _, d := range []string{"var-lib/kubelet/device-plugins", "var-log", "pod-logs", "volume-plugins", "sysctl", "runtime"} {
		if err := os.MkdirAll(filepath.Join(w, d), 0o750); err != nil {
			return nil, fmt.Errorf("preparing the node folder: %w", err)
		}
	}
	setup := []string{
		"mount --bind " + shellQuote(filepath.Join(w, "var-lib")) + " /var/lib",
		"mount --bind " + shellQuote(filepath.Join(w, "var-log")) + " /var/log",
	}
	for key, value := range kernelTunables {
		file := filepath.Join(w, "sysctl", strings.ReplaceAll(key, "/", "."))
		if err := os.WriteFile(file, []byte(value+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", file, err)
		}
		setup = append(setup, fmt.Sprintf("mount --bind %s /proc/sys/%s", shellQuote(file), key))
	}
	config := filepath.Join(w, "kubelet.yaml")
	if err := renderFile(config, kubeletConfig, map[string]any{
		"Address": n.IP.String(), "CRI": "unix://" + filepath.Join(w, "runtime", "cri.sock"),
		"PodLogs": n.PodLogDir, "VolumePlugins": filepath.Join(w, "volume-plugins"),
	}); err != nil {
		return nil, err
	}
	n.script = fmt.Sprintf("exec %s --config=%s --kubeconfig=%s --hostname-override=%s --node-ip=%s --v=1",
		shellQuote(n.opts.Kubelet), shellQuote(config), shellQuote(n.opts.Kubeconfig), shellQuote(n.opts.NodeName), n.IP)
	return setup, nil
}

// kubeletConfig keeps the kubelet off the host's cgroups and kernel settings and quick
// to report node status. Its ports are the usual ones: they are the node's own, in its
// network namespace.
var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {{.Address}}
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
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

// forwardAPIServer listens on the API server's loopback address in the node's network
// namespace and forwards to it, so the kubelet's kubeconfig works there unchanged (TLS
// passes through).
func (n *Node) forwardAPIServer(ctx context.Context) error {
	cfg, err := clientcmd.LoadFromFile(n.opts.Kubeconfig)
	if err != nil {
		return fmt.Errorf("reading the kubelet's kubeconfig: %w", err)
	}
	kctx := cfg.Contexts[cfg.CurrentContext]
	if kctx == nil || cfg.Clusters[kctx.Cluster] == nil {
		return fmt.Errorf("kubeconfig %s has no current cluster", n.opts.Kubeconfig)
	}
	u, err := url.Parse(cfg.Clusters[kctx.Cluster].Server)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("the kubelet's API server %s is not on this machine's loopback", u.Host)
	}
	l, err := n.Runtime.Listen(ctx, "tcp", u.Host)
	if err != nil {
		return fmt.Errorf("listening for the kubelet's API server connections in the node: %w", err)
	}
	var d net.Dialer
	n.apiFwd = Forward(l, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", u.Host) })
	return nil
}

// startKubelet starts the kubelet in the node's mount and network namespaces.
func (n *Node) startKubelet(ctx context.Context) error {
	cmd := exec.Command("nsenter", "--mount="+n.Runtime.MountNS(), "--net="+n.Runtime.NetNS(), "--", "/bin/sh", "-c", n.script) //nolint:noctx,gosec // fixed program (nsenter), caller-chosen kubelet; outlives ctx: Stop and Pdeathsig end it
	// A folder of its own: the kubelet resolves paths the runtime reports relative to it.
	cmd.Dir = n.opts.WorkDir
	cmd.Stdout, cmd.Stderr = n.opts.Log, n.opts.Log
	p, err := childproc.Start(ctx, cmd)
	if err != nil {
		return fmt.Errorf("starting the kubelet: %w", err)
	}
	n.proc = p
	return nil
}

// Restart stops the kubelet and starts it again with the same folders, as a kubelet
// restart on a real node (which deletes the device-plugin sockets and re-creates
// kubelet.sock); the runtime and the pods keep running.
func (n *Node) Restart(ctx context.Context) error {
	if err := n.stopKubelet(); err != nil {
		return err
	}
	return n.startKubelet(ctx)
}

// Exited is closed when the kubelet process ends.
func (n *Node) Exited() <-chan struct{} { return n.proc.Done() }

// DialContext connects to an address in the node's network (a pod IP, the node IP).
func (n *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.Runtime.DialContext(ctx, network, addr)
}

// InNetwork reports whether ip is one of the node's: its address or a pod's.
func (n *Node) InNetwork(ip netip.Addr) bool { return n.subnet.Contains(ip) }

// Stop stops the kubelet, then the runtime (which stops every container), and with it
// the node's namespaces, mounts and addresses.
func (n *Node) Stop() error {
	err := n.stopKubelet()
	if n.apiFwd != nil {
		n.apiFwd.Close()
		n.apiFwd = nil
	}
	if n.Runtime != nil {
		if rerr := n.Runtime.Stop(n.opts.StopTimeout); rerr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the process runtime: %w", rerr))
		}
		n.Runtime = nil
	}
	return err
}

func (n *Node) stopKubelet() error {
	if n.proc == nil {
		return nil
	}
	p := n.proc
	n.proc = nil
	if err := p.Stop(n.opts.StopTimeout, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping the kubelet: %w", err)
	}
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

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// PID is the kubelet's process id (for logs).
func (n *Node) PID() string {
	if n.proc == nil {
		return "none"
	}
	return strconv.Itoa(n.proc.PID)
}
