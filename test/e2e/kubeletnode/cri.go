package kubeletnode

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

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
// devices. Its containers "run" without running anything.
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
	f := &FakeCRI{RemoteRuntime: fake.NewFakeRemoteRuntime(), Endpoint: "unix://" + path, server: grpc.NewServer(), logPaths: map[string]string{}}
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
	f.mu.Unlock()
	return resp, nil
}

// ContainerStatus reports the container with its absolute log path, as real runtimes
// do. The fake's own status has an empty or relative path, and the kubelet removes
// "<log path>*" when it removes a container: with an empty path that is every file in
// its working folder.
func (f *FakeCRI) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	resp, err := f.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil || resp.GetStatus() == nil {
		return resp, err
	}
	f.mu.Lock()
	path, ok := f.logPaths[req.GetContainerId()]
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

// Stop stops serving.
func (f *FakeCRI) Stop() { f.server.Stop() }
