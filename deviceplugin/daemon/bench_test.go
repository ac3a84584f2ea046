package daemon_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/daemon"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver/kubelettest"
)

// startBench runs the daemon (default options, fake RK3588 root) against a kubelet stub
// and returns the root, a client dialled as the kubelet does, and its ListAndWatch stream.
func startBench(b *testing.B) (string, pluginapi.DevicePluginClient, <-chan []*pluginapi.Device) {
	b.Helper()
	tmp := b.TempDir()
	root, err := discoverytest.RK3588().Write(filepath.Join(tmp, "root"))
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(tmp, "kubelet")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	kubelet := kubelettest.Start(b, dir)
	opts := daemon.DefaultOptions()
	opts.Root, opts.KubeletDir, opts.MetricsAddr = root, dir, ""
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, opts, logr.Discard()) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	reg := kubelet.WaitRegistration(b, registerTimeout)
	client := kubelet.Dial(b, reg.Endpoint)
	devices := kubelettest.Watch(b, client)
	kubelettest.WaitDevices(b, devices, healthTimeout, "npu0 healthy", kubelettest.Health(pluginapi.Healthy, "npu0"))
	return root, client, devices
}

// BenchmarkAllocate measures one Allocate call as the kubelet makes it: gRPC over the
// Unix socket, including the plugin's fresh scan of the NPU.
func BenchmarkAllocate(b *testing.B) {
	_, client, _ := startBench(b)
	req := &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"npu0"}}}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := client.Allocate(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNodeRemovalToListAndWatch measures the time from deleting the render node to
// the kubelet's ListAndWatch stream receiving npu0 Unhealthy, and from restoring it to
// Healthy, with the default 1 s rescan period (file events do the work).
func BenchmarkNodeRemovalToListAndWatch(b *testing.B) {
	root, _, devices := startBench(b)
	render := filepath.Join(root, "dev/dri/renderD129")
	var toUnhealthy, toHealthy time.Duration
	for b.Loop() {
		start := time.Now()
		if err := os.Remove(render); err != nil {
			b.Fatal(err)
		}
		kubelettest.WaitDevices(b, devices, healthTimeout, "npu0 unhealthy", kubelettest.Health(pluginapi.Unhealthy, "npu0"))
		toUnhealthy += time.Since(start)

		start = time.Now()
		if err := os.WriteFile(render, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		kubelettest.WaitDevices(b, devices, healthTimeout, "npu0 healthy", kubelettest.Health(pluginapi.Healthy, "npu0"))
		toHealthy += time.Since(start)
	}
	b.ReportMetric(float64(toUnhealthy.Microseconds())/float64(b.N), "µs-to-unhealthy")
	b.ReportMetric(float64(toHealthy.Microseconds())/float64(b.N), "µs-to-healthy")
}
