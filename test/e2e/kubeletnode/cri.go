package kubeletnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

// fakeImageSize is what the fake image service reports for every image. The kubelet
// refuses an image whose size is 0 ("Id or size of image ... is not set").
const fakeImageSize = 64 << 20

// FakeCRI is the CRI fake from k8s.io/cri-client (runtime and image service on one Unix
// socket) that also keeps every CreateContainer request, so a test can check what the
// kubelet asked the runtime for: the device plugin's DeviceSpecs, envs, mounts and CDI
// devices. Its containers "run" without running anything, except those SetExec picks,
// which run as host processes and exit with them (init containers that must finish).
type FakeCRI struct {
	*fake.RemoteRuntime

	// Endpoint is the socket's URL (unix:///...).
	Endpoint string

	server *grpc.Server
	mu     sync.Mutex
	create []*runtimeapi.CreateContainerRequest
	podIP  string
	// logPaths are the absolute log paths of the containers, by ID.
	logPaths map[string]string
	// byID are the create requests by container ID.
	byID map[string]*runtimeapi.CreateContainerRequest
	exec func(*runtimeapi.CreateContainerRequest) *exec.Cmd
	// stop ends the processes exec started.
	stop context.CancelFunc
	ctx  context.Context
}

// SetExec makes StartContainer ask fn whether to run a container as a host process: fn
// returns the command (made with ExecContext's context) or nil to only pretend. The
// container exits when the command does, with its exit code.
func (f *FakeCRI) SetExec(fn func(*runtimeapi.CreateContainerRequest) *exec.Cmd) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exec = fn
}

// ExecContext is cancelled when the runtime stops; commands from SetExec's function
// should use it.
func (f *FakeCRI) ExecContext() context.Context { return f.ctx }

// StartContainer starts the fake container and, when SetExec's function picks it, its
// process; the container exits with the process.
func (f *FakeCRI) StartContainer(ctx context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	resp, err := f.RemoteRuntime.StartContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	create, run := f.byID[req.GetContainerId()], f.exec
	f.mu.Unlock()
	if run == nil || create == nil {
		return resp, nil
	}
	cmd := run(create)
	if cmd == nil {
		return resp, nil
	}
	if err := cmd.Start(); err != nil {
		f.exited(req.GetContainerId(), 128, err.Error())
		return resp, nil
	}
	go func() {
		code, reason := int32(0), "Completed"
		if err := cmd.Wait(); err != nil {
			code, reason = 1, "Error"
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) && exitErr.ExitCode() > 0 {
				code = int32(exitErr.ExitCode()) //nolint:gosec // an exit code
			}
		}
		f.exited(req.GetContainerId(), code, reason)
	}()
	return resp, nil
}

// exited marks a container as ended.
func (f *FakeCRI) exited(id string, code int32, reason string) {
	rs := f.RuntimeService
	rs.Lock()
	defer rs.Unlock()
	if c, ok := rs.Containers[id]; ok {
		c.State = runtimeapi.ContainerState_CONTAINER_EXITED
		c.FinishedAt = time.Now().UnixNano()
		c.ExitCode = code
		c.Reason = reason
	}
}

// SetPodIP makes the runtime report ip as every pod sandbox's IP (empty: the fake's own).
func (f *FakeCRI) SetPodIP(ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.podIP = ip
}

// PodSandboxStatus reports the sandbox, with the pod IP set by SetPodIP.
func (f *FakeCRI) PodSandboxStatus(ctx context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	resp, err := f.RemoteRuntime.PodSandboxStatus(ctx, req)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	ip := f.podIP
	f.mu.Unlock()
	if ip != "" && resp.GetStatus().GetNetwork() != nil {
		// A new value: the fake's own status must not change under it.
		resp.Status.Network = &runtimeapi.PodSandboxNetworkStatus{Ip: ip}
	}
	return resp, nil
}

// StartFakeCRI serves a FakeCRI on the Unix socket at path.
func StartFakeCRI(path string) (*FakeCRI, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("removing stale CRI socket: %w", err)
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("fake CRI: %w", err)
	}
	f := &FakeCRI{RemoteRuntime: fake.NewFakeRemoteRuntime(), Endpoint: "unix://" + path, server: grpc.NewServer(), logPaths: map[string]string{},
		byID: map[string]*runtimeapi.CreateContainerRequest{}}
	f.ctx, f.stop = context.WithCancel(context.Background())
	f.ImageService.SetFakeImageSize(fakeImageSize)
	f.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}
	// The wrapper is what is registered, so its CreateContainer is the one served.
	runtimeapi.RegisterRuntimeServiceServer(f.server, f)
	runtimeapi.RegisterImageServiceServer(f.server, f)
	go func() { _ = f.server.Serve(lis) }()
	return f, nil
}

// CreateContainer records the request and creates the fake container.
func (f *FakeCRI) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	f.mu.Lock()
	f.create = append(f.create, req)
	f.mu.Unlock()
	resp, err := f.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.logPaths[resp.GetContainerId()] = filepath.Join(req.GetSandboxConfig().GetLogDirectory(), req.GetConfig().GetLogPath())
	f.byID[resp.GetContainerId()] = req
	f.mu.Unlock()
	return resp, nil
}

// ContainerStatus reports the container with its absolute log path and its mounts, as
// real runtimes do. The fake's own status has an empty or relative path, and the kubelet
// removes "<log path>*" when it removes a container: with an empty path that is every
// file in its working folder. The kubelet finds the termination message file among the
// mounts.
func (f *FakeCRI) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	resp, err := f.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil || resp.GetStatus() == nil {
		return resp, err
	}
	f.mu.Lock()
	path, ok := f.logPaths[req.GetContainerId()]
	if create := f.byID[req.GetContainerId()]; create != nil {
		resp.Status.Mounts = create.GetConfig().GetMounts()
	}
	f.mu.Unlock()
	if !ok || !filepath.IsAbs(path) {
		// Never let the kubelet glob a relative pattern.
		path = filepath.Join(os.TempDir(), "kubeletnode-no-log", req.GetContainerId())
	}
	resp.Status.LogPath = path
	return resp, nil
}

// Created returns the CreateContainer requests received so far.
func (f *FakeCRI) Created() []*runtimeapi.CreateContainerRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*runtimeapi.CreateContainerRequest(nil), f.create...)
}

// Stop stops serving and ends the processes SetExec started.
func (f *FakeCRI) Stop() {
	f.stop()
	f.server.Stop()
}
