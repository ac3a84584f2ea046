package pluginserver_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver/kubelettest"
)

// Named timeouts: how long a test waits for something that should take milliseconds.
const (
	registerTimeout = 5 * time.Second
	updateTimeout   = 5 * time.Second
)

const resource = "example.com/widget"

// fakeAllocator hands out one env per device ID.
type fakeAllocator struct{}

func (fakeAllocator) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		if len(c.DevicesIds) == 0 {
			return nil, errors.New("no devices requested")
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"WIDGETS": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (fakeAllocator) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{
			DeviceIDs: c.AvailableDeviceIDs[len(c.AvailableDeviceIDs)-int(c.AllocationSize):],
		})
	}
	return resp, nil
}

// countingObserver counts registrations and restarts.
type countingObserver struct {
	mu                          sync.Mutex
	ok, failed, kubeletRestarts int
}

func (o *countingObserver) Registered(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		o.failed++
	} else {
		o.ok++
	}
}

func (o *countingObserver) KubeletRestarted() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.kubeletRestarts++
}

func (o *countingObserver) counts() (ok, failed, restarts int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ok, o.failed, o.kubeletRestarts
}

// startServer runs a Server on dir until the test ends, then checks that Run returned nil.
func startServer(t *testing.T, dir string, obs pluginserver.Observer) *pluginserver.Server {
	t.Helper()
	srv, err := pluginserver.New(pluginserver.Config{
		ResourceName: resource, Dir: dir, Socket: "widget.sock", PreferredAllocation: true,
		RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond, CheckInterval: 100 * time.Millisecond,
	}, fakeAllocator{}, obs, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	srv.SetDevices([]*pluginapi.Device{{ID: "w0", Health: pluginapi.Healthy}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	})
	return srv
}

func TestRegisterListAndWatchAllocate(t *testing.T) {
	dir := t.TempDir()
	kubelet := kubelettest.Start(t, dir)
	srv := startServer(t, dir, nil)

	reg := kubelet.WaitRegistration(t, registerTimeout)
	if reg.ResourceName != resource || reg.Endpoint != "widget.sock" || reg.Version != pluginapi.Version {
		t.Fatalf("registration = %+v", reg)
	}
	if !reg.Options.GetGetPreferredAllocationAvailable() || reg.Options.GetPreStartRequired() {
		t.Errorf("registration options = %+v, want preferred allocation and no pre-start", reg.Options)
	}
	client := kubelet.Dial(t, reg.Endpoint)
	ctx := context.Background()
	opts, err := client.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable {
		t.Fatalf("GetDevicePluginOptions = %+v, %v", opts, err)
	}

	// Two streams, as after a kubelet reconnect: both get every change.
	first, second := kubelettest.Watch(t, client), kubelettest.Watch(t, client)
	for _, ch := range []<-chan []*pluginapi.Device{first, second} {
		kubelettest.WaitDevices(t, ch, updateTimeout, "w0 healthy", kubelettest.Health(pluginapi.Healthy, "w0"))
	}
	srv.SetDevices([]*pluginapi.Device{{ID: "w0", Health: pluginapi.Unhealthy}, {ID: "w1", Health: pluginapi.Unhealthy}})
	for _, ch := range []<-chan []*pluginapi.Device{first, second} {
		kubelettest.WaitDevices(t, ch, updateTimeout, "w0 and w1 unhealthy", kubelettest.Health(pluginapi.Unhealthy, "w0", "w1"))
	}

	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"w0", "w1"}}}})
	if err != nil || len(resp.ContainerResponses) != 1 || resp.ContainerResponses[0].Envs["WIDGETS"] != "w0,w1" {
		t.Fatalf("Allocate = %+v, %v", resp, err)
	}
	_, err = client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{}}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no devices requested") {
		t.Errorf("Allocate of nothing: err = %v, want FailedPrecondition with the allocator's message", err)
	}
	pref, err := client.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: []string{"w0", "w1"}, AllocationSize: 1},
	}})
	if err != nil || len(pref.ContainerResponses) != 1 || strings.Join(pref.ContainerResponses[0].DeviceIDs, ",") != "w1" {
		t.Errorf("GetPreferredAllocation = %+v, %v", pref, err)
	}
	if _, err := client.PreStartContainer(ctx, &pluginapi.PreStartContainerRequest{}); err != nil {
		t.Errorf("PreStartContainer: %v", err)
	}
}

func TestReregistersAfterSocketRemoved(t *testing.T) {
	dir := t.TempDir()
	kubelet := kubelettest.Start(t, dir)
	obs := &countingObserver{}
	startServer(t, dir, obs)
	reg := kubelet.WaitRegistration(t, registerTimeout)
	stream := kubelettest.Watch(t, kubelet.Dial(t, reg.Endpoint))
	kubelettest.WaitDevices(t, stream, updateTimeout, "w0", kubelettest.Health(pluginapi.Healthy, "w0"))

	if err := os.Remove(filepath.Join(dir, reg.Endpoint)); err != nil {
		t.Fatal(err)
	}
	reg = kubelet.WaitRegistration(t, registerTimeout)
	// The old stream ends with the old server; a new one works.
	for range stream { //nolint:revive // drain until the old stream closes
	}
	kubelettest.WaitDevices(t, kubelettest.Watch(t, kubelet.Dial(t, reg.Endpoint)), updateTimeout, "w0 after re-registration",
		kubelettest.Health(pluginapi.Healthy, "w0"))
	// The observer hears of a registration just after the kubelet answers it.
	waitFor(t, "the observer to count 2 registrations and 1 kubelet restart", func() bool {
		ok, _, restarts := obs.counts()
		return ok == 2 && restarts == 1
	})
}

func TestReregistersAfterKubeletRestart(t *testing.T) {
	dir := t.TempDir()
	kubelet := kubelettest.Start(t, dir)
	obs := &countingObserver{}
	startServer(t, dir, obs)
	kubelet.WaitRegistration(t, registerTimeout)

	kubelet.Restart(t)
	reg := kubelet.WaitRegistration(t, registerTimeout)
	kubelettest.WaitDevices(t, kubelettest.Watch(t, kubelet.Dial(t, reg.Endpoint)), updateTimeout, "w0 after the restart",
		kubelettest.Health(pluginapi.Healthy, "w0"))
	select {
	case extra := <-kubelet.Registrations:
		t.Errorf("registered twice for one kubelet restart: %+v", extra)
	default:
	}
	waitFor(t, "the observer to count 1 kubelet restart", func() bool { _, _, restarts := obs.counts(); return restarts == 1 })
}

func TestReregistersWhenOnlyKubeletSockIsRecreated(t *testing.T) {
	dir := t.TempDir()
	kubelet := kubelettest.Start(t, dir)
	startServer(t, dir, nil)
	kubelet.WaitRegistration(t, registerTimeout)

	// A kubelet that keeps plugin sockets but serves a new kubelet.sock.
	kubelet.Stop()
	kubelet = kubelettest.Start(t, dir)
	if reg := kubelet.WaitRegistration(t, registerTimeout); reg.Endpoint != "widget.sock" {
		t.Errorf("re-registration endpoint = %q", reg.Endpoint)
	}
}

func TestRetriesUntilKubeletAppears(t *testing.T) {
	dir := t.TempDir()
	obs := &countingObserver{}
	startServer(t, dir, obs)
	// The plugin serves before any kubelet exists and keeps retrying.
	waitFor(t, "a failed registration", func() bool { _, failed, _ := obs.counts(); return failed >= 2 })
	if _, err := os.Stat(filepath.Join(dir, "widget.sock")); err != nil {
		t.Fatalf("plugin socket while the kubelet is away: %v", err)
	}
	kubelet := kubelettest.Start(t, dir)
	kubelet.WaitRegistration(t, registerTimeout)
}

func TestRunRemovesSocketOnShutdown(t *testing.T) {
	dir := t.TempDir()
	kubelet := kubelettest.Start(t, dir)
	srv, err := pluginserver.New(pluginserver.Config{ResourceName: resource, Dir: dir, Socket: "widget.sock"}, fakeAllocator{}, nil, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	reg := kubelet.WaitRegistration(t, registerTimeout)
	// An open stream must not hold up the shutdown.
	kubelettest.WaitDevices(t, kubelettest.Watch(t, kubelet.Dial(t, reg.Endpoint)), updateTimeout, "an empty list", kubelettest.Health(pluginapi.Healthy))
	cancel()
	timer := time.NewTimer(registerTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-timer.C:
		t.Fatal("Run did not return after cancel")
	}
	if _, err := os.Stat(srv.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after shutdown: %v, want it removed", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []pluginserver.Config{
		{Dir: "/x", Socket: "a.sock"},
		{ResourceName: resource, Socket: "a.sock"},
		{ResourceName: resource, Dir: "/x", Socket: "kubelet.sock"},
		{ResourceName: resource, Dir: "/x", Socket: "sub/a.sock"},
	} {
		if _, err := pluginserver.New(cfg, fakeAllocator{}, nil, testr.New(t)); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
}

// waitFor polls cond until it holds, failing after updateTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(updateTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", updateTimeout, what)
		}
		<-tick.C
	}
}
