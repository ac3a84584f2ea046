package processcri

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/podnet"
)

// PauseCommand is the subcommand of the runtime's binary that holds a sandbox's
// namespaces.
const PauseCommand = "pause"

// sandbox is a pod's sandbox: the pause process whose network, UTS and IPC namespaces
// the pod's containers join.
type sandbox struct {
	id        string
	config    *runtimeapi.PodSandboxConfig
	createdAt time.Time
	state     runtimeapi.PodSandboxState
	pause     *exec.Cmd
	pauseDone chan struct{}
	// hostNetwork: the containers use the node's network namespace.
	hostNetwork bool
	ip          netip.Addr
	netns       string
	dir         string
}

// Pause is the pause process: it sets the sandbox's hostname and waits for SIGTERM.
func Pause(hostname string) error {
	if hostname != "" {
		if err := syscall.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("setting the pod's hostname: %w", err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func (s *sandbox) pod() podnet.Pod {
	m := s.config.GetMetadata()
	return podnet.Pod{Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUid()}
}

// RunPodSandbox starts the pause process and attaches its network namespace.
func (r *Runtime) RunPodSandbox(ctx context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	cfg := req.GetConfig()
	if cfg.GetMetadata() == nil {
		return nil, errors.New("the sandbox config has no metadata")
	}
	s := &sandbox{id: newID(), config: cfg, createdAt: time.Now(), state: runtimeapi.PodSandboxState_SANDBOX_READY}
	s.dir = filepath.Join(r.opts.StateDir, "sandboxes", s.id)
	s.hostNetwork = cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return nil, err
	}
	if err := r.startPause(s); err != nil {
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	if err := r.attach(ctx, s); err != nil {
		r.killPause(s)
		_ = os.RemoveAll(s.dir)
		return nil, err
	}
	if err := writeResolvConf(filepath.Join(s.dir, "resolv.conf"), cfg.GetDnsConfig()); err != nil {
		return nil, errors.Join(err, r.removeSandboxState(ctx, s))
	}
	r.mu.Lock()
	r.sandboxes[s.id] = s
	r.mu.Unlock()
	r.opts.Log.Info("sandbox ready", "pod", cfg.GetMetadata().GetNamespace()+"/"+cfg.GetMetadata().GetName(), "sandbox", s.id[:12], "ip", s.ip.String())
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: s.id}, nil
}

// startPause starts the pause process in new network (unless the pod uses the node's),
// UTS and IPC namespaces.
func (r *Runtime) startPause(s *sandbox) error {
	flags := uintptr(syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if !s.hostNetwork {
		flags |= syscall.CLONE_NEWNET
	}
	hostname := s.config.GetHostname()
	if s.hostNetwork {
		hostname = ""
	}
	cmd := exec.Command(r.opts.Self, PauseCommand, hostname) //nolint:noctx,gosec // the runtime's own binary; lives as long as the sandbox
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the sandbox's pause process: %w", err)
	}
	s.pause = cmd
	s.pauseDone = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.pauseDone) }()
	s.netns = r.procPath(cmd.Process.Pid, "ns", "net")
	return nil
}

// attach gives the sandbox its address (the node's, for a pod on the node's network).
func (r *Runtime) attach(ctx context.Context, s *sandbox) error {
	if s.hostNetwork {
		s.ip = r.opts.Network.NodeIP()
		s.netns = r.procPath(os.Getpid(), "ns", "net")
		return nil
	}
	ip, err := r.opts.Network.Add(ctx, s.id, s.netns, s.pod())
	if err != nil {
		return fmt.Errorf("attaching the pod's network: %w", err)
	}
	s.ip = ip
	return nil
}

// writeResolvConf writes the pod's resolv.conf from the kubelet's DNS config.
func writeResolvConf(path string, dns *runtimeapi.DNSConfig) error {
	var b strings.Builder
	if len(dns.GetSearches()) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(dns.GetSearches(), " "))
	}
	for _, s := range dns.GetServers() {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(dns.GetOptions()) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(dns.GetOptions(), " "))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644) //nolint:gosec // containers of any user read it
}

func (r *Runtime) killPause(s *sandbox) {
	if s.pause == nil {
		return
	}
	_ = s.pause.Process.Kill()
	<-s.pauseDone
}

// StopPodSandbox kills the sandbox's containers that still run, detaches its network
// and ends the pause process. It may be called again.
func (r *Runtime) StopPodSandbox(ctx context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	r.mu.Lock()
	s, ok := r.sandboxes[req.GetPodSandboxId()]
	r.mu.Unlock()
	if !ok {
		// The kubelet may stop a sandbox the runtime no longer knows: nothing to do.
		return &runtimeapi.StopPodSandboxResponse{}, nil
	}
	if err := r.stopSandbox(ctx, s, 0); err != nil {
		return nil, err
	}
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

// stopSandbox stops the sandbox's containers (SIGTERM, SIGKILL after grace), then the
// sandbox.
func (r *Runtime) stopSandbox(ctx context.Context, s *sandbox, grace time.Duration) error {
	for _, c := range r.containersOf(s.id) {
		r.stopContainer(c, grace)
	}
	r.mu.Lock()
	wasReady := s.state == runtimeapi.PodSandboxState_SANDBOX_READY
	s.state = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	r.mu.Unlock()
	if !wasReady {
		return nil
	}
	var err error
	if !s.hostNetwork {
		err = r.opts.Network.Del(ctx, s.id, s.netns, s.pod())
	}
	r.killPause(s)
	return err
}

// RemovePodSandbox stops the sandbox and removes it and its containers.
func (r *Runtime) RemovePodSandbox(ctx context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	if err := r.removeSandbox(ctx, req.GetPodSandboxId(), 0); err != nil {
		return nil, err
	}
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

func (r *Runtime) removeSandbox(ctx context.Context, id string, grace time.Duration) error {
	r.mu.Lock()
	s, ok := r.sandboxes[id]
	r.mu.Unlock()
	if !ok {
		return nil
	}
	if err := r.stopSandbox(ctx, s, grace); err != nil {
		return err
	}
	var errs []error
	for _, c := range r.containersOf(id) {
		errs = append(errs, r.removeContainer(c))
	}
	errs = append(errs, r.removeSandboxState(ctx, s))
	return errors.Join(errs...)
}

func (r *Runtime) removeSandboxState(_ context.Context, s *sandbox) error {
	r.mu.Lock()
	delete(r.sandboxes, s.id)
	r.mu.Unlock()
	return os.RemoveAll(s.dir)
}

// PodSandboxStatus reports a sandbox with its IP.
func (r *Runtime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sandboxes[req.GetPodSandboxId()]
	if !ok {
		return nil, notFound("pod sandbox", req.GetPodSandboxId())
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: s.status()}, nil
}

// status is the sandbox's CRI status (r.mu held).
func (s *sandbox) status() *runtimeapi.PodSandboxStatus {
	st := &runtimeapi.PodSandboxStatus{
		Id: s.id, Metadata: s.config.GetMetadata(), State: s.state, CreatedAt: nanos(s.createdAt),
		Labels: s.config.GetLabels(), Annotations: s.config.GetAnnotations(),
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: s.config.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	if s.ip.IsValid() {
		st.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: s.ip.String()}
	}
	return st
}

// ListPodSandbox lists the sandboxes that pass the filter.
func (r *Runtime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	var items []*runtimeapi.PodSandbox
	for _, s := range r.sandboxes {
		if f != nil {
			if f.GetId() != "" && f.GetId() != s.id {
				continue
			}
			if f.GetState() != nil && f.GetState().GetState() != s.state {
				continue
			}
			if !labels.SelectorFromSet(f.GetLabelSelector()).Matches(labels.Set(s.config.GetLabels())) {
				continue
			}
		}
		items = append(items, &runtimeapi.PodSandbox{
			Id: s.id, Metadata: s.config.GetMetadata(), State: s.state, CreatedAt: nanos(s.createdAt),
			Labels: s.config.GetLabels(), Annotations: s.config.GetAnnotations(),
		})
	}
	return &runtimeapi.ListPodSandboxResponse{Items: items}, nil
}
