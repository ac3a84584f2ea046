// Package processcri is a container runtime for the kubelet (the CRI's RuntimeService
// and ImageService on a Unix socket) that runs each container as a host process, for the
// simulated RK3588 node: the real kubelet runs every pod scheduled to it, with no
// container engine and no images.
//
//   - Images come from an image map (package imagemap): a mapped image pulls at once,
//     an unmapped one fails as a missing image does (ErrImagePull, naming the map).
//   - A pod sandbox is a pause process holding the pod's network, UTS and IPC
//     namespaces; the CNI reference plugins (package podnet) give it lo and an address
//     on the node's bridge, the pod IP the kubelet reports and probes.
//   - A container is a process in mount and PID namespaces of its own inside the
//     sandbox's (package container), with the kubelet's mounts and devices at their
//     container paths, its env, args, working folder, user and capabilities; its output
//     goes to the kubelet's log path in the CRI format (package crilog).
//   - StopContainer sends SIGTERM, then SIGKILL after the timeout; exit codes are
//     reported with the reasons Completed, Error or OOMKilled (package cgroup, where
//     cgroup v2 is given); ExecSync runs a command in the container's namespaces.
//
// Launch runs the runtime in a private mount, network and PID namespace (the node's),
// so the host's network and mounts never change and everything dies with it.
package processcri

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/cgroup"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/podnet"
)

// Name and version the runtime reports.
const (
	RuntimeName    = "process-cri"
	RuntimeVersion = "0.1.0"
)

// Options configure a Runtime.
type Options struct {
	// Self is the runtime's own binary (its pause and container-init subcommands).
	Self string
	// StateDir holds per-sandbox and per-container files (resolv.conf, the folders
	// containers build their roots on).
	StateDir string
	// ProcDir is where the proc filesystem of the runtime's PID namespace is mounted
	// (the process ids the runtime sees are looked up there).
	ProcDir string
	// Images is the image map.
	Images *imagemap.Map
	// Network attaches sandboxes to the node's bridge.
	Network *podnet.Network
	// Cgroups applies resource limits (a Manager that is not Available does nothing).
	Cgroups *cgroup.Manager
	// NodePaths maps host path prefixes to the folders that stand for them on the
	// simulated node (such as /dev and /sys to a fake RK3588 tree), for the kubelet's
	// mounts and device nodes.
	NodePaths []PathMap
	// Nsenter is the nsenter binary (util-linux) ExecSync runs commands with.
	Nsenter string
	// Log is the runtime's log.
	Log logr.Logger
}

// Runtime serves the CRI.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	opts Options

	mu         sync.Mutex
	sandboxes  map[string]*sandbox
	containers map[string]*ctr
	// pulled are the images pulled so far, by reference, with their entries.
	pulled map[string]*imagemap.Image
}

// New makes a Runtime.
func New(opts Options) (*Runtime, error) {
	for _, d := range []string{"sandboxes", "containers"} {
		if err := os.MkdirAll(filepath.Join(opts.StateDir, d), 0o750); err != nil {
			return nil, err
		}
	}
	if opts.Cgroups == nil {
		opts.Cgroups = cgroup.Open("")
	}
	if !opts.Cgroups.Available() {
		opts.Log.Info("cgroup v2 limits are not applied: containers run without memory and CPU limits, and OOMKilled is never reported", "reason", opts.Cgroups.Reason)
	}
	return &Runtime{
		opts: opts, sandboxes: map[string]*sandbox{}, containers: map[string]*ctr{}, pulled: map[string]*imagemap.Image{},
	}, nil
}

// Serve serves the CRI on a Unix socket at path until ctx ends, then stops every
// container and sandbox.
func (r *Runtime) Serve(ctx context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing a stale socket: %w", err)
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(r.logErrors))
	runtimeapi.RegisterRuntimeServiceServer(srv, r)
	runtimeapi.RegisterImageServiceServer(srv, r)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	r.opts.Log.Info("serving the CRI", "socket", path, "nodeIP", r.opts.Network.NodeIP().String())
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	srv.Stop()
	return errors.Join(err, r.Shutdown())
}

// logErrors logs every failed call once, where the kubelet's view of it is decided.
func (r *Runtime) logErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil && status.Code(err) != codes.NotFound && status.Code(err) != codes.Unimplemented {
		r.opts.Log.Error(err, "CRI call failed", "method", info.FullMethod)
	}
	return resp, err
}

// Shutdown kills every container and removes every sandbox (the runtime is stopping).
func (r *Runtime) Shutdown() error {
	r.mu.Lock()
	ids := make([]string, 0, len(r.sandboxes))
	for id := range r.sandboxes {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if err := r.removeSandbox(context.Background(), id, 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Version reports the runtime.
func (r *Runtime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version: "0.1.0", RuntimeName: RuntimeName, RuntimeVersion: RuntimeVersion, RuntimeApiVersion: "v1",
	}, nil
}

// Status reports the runtime and its network ready.
func (r *Runtime) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}}, nil
}

// RuntimeConfig tells the kubelet the cgroup driver (cgroupfs).
func (r *Runtime) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS}}, nil
}

// UpdateRuntimeConfig accepts the pod CIDR the kubelet sends; the network has its own.
func (r *Runtime) UpdateRuntimeConfig(context.Context, *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

// newID is a random identifier in the form container runtimes use (64 hex digits).
func newID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "%s %q not found", kind, id)
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// procPath is a file of process pid in the runtime's PID namespace.
func (r *Runtime) procPath(pid int, elem ...string) string {
	return filepath.Join(append([]string{r.opts.ProcDir, fmt.Sprint(pid)}, elem...)...)
}
