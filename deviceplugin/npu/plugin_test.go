package npu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/npu"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver/kubelettest"
)

// recorder keeps every published device list and observed event.
type recorder struct {
	lists       [][]*pluginapi.Device
	health      map[string]bool
	allocations []error
}

func (r *recorder) publish(d []*pluginapi.Device) { r.lists = append(r.lists, d) }
func (r *recorder) UnitHealth(id string, ok bool) { r.health[id] = ok }
func (r *recorder) Allocated(err error)           { r.allocations = append(r.allocations, err) }

func (r *recorder) last() string {
	if len(r.lists) == 0 {
		return "<nothing published>"
	}
	return kubelettest.Describe(r.lists[len(r.lists)-1])
}

func newPlugin(t *testing.T, mode npu.Mode) (*npu.Plugin, *recorder, string) {
	t.Helper()
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{health: map[string]bool{}}
	p := npu.NewPlugin(npu.Config{
		AllocateConfig: npu.AllocateConfig{Mode: mode}, Root: root, MinDriverVersion: v097,
	}, rec.publish, rec, testr.New(t))
	return p, rec, root
}

func TestPluginUpdatePublishesChangesOnly(t *testing.T) {
	p, rec, root := newPlugin(t, npu.ModeExclusive)
	p.Update(discovery.Scan(root))
	p.Update(discovery.Scan(root))
	if len(rec.lists) != 1 || rec.last() != "[npu0=Healthy]" {
		t.Fatalf("after two identical scans published %d lists, last %s; want one [npu0=Healthy]", len(rec.lists), rec.last())
	}

	render := filepath.Join(root, "dev/dri/renderD129")
	if err := os.Remove(render); err != nil {
		t.Fatal(err)
	}
	p.Update(discovery.Scan(root))
	if rec.last() != "[npu0=Unhealthy]" || rec.health["npu0"] {
		t.Fatalf("after removing the render node: %s, metrics health %v", rec.last(), rec.health["npu0"])
	}
	if err := os.WriteFile(render, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.Update(discovery.Scan(root))
	if rec.last() != "[npu0=Healthy]" || !rec.health["npu0"] {
		t.Fatalf("after restoring the render node: %s", rec.last())
	}
}

func TestPluginKeepsUnitsWhenDriverUnloads(t *testing.T) {
	p, rec, root := newPlugin(t, npu.ModeCores)
	p.Update(discovery.Scan(root))
	// Unloading the driver takes its sysfs entries and nodes away.
	for _, dir := range []string{"sys/class/drm", "dev/dri", "sys/module/rknpu"} {
		if err := os.RemoveAll(filepath.Join(root, dir)); err != nil {
			t.Fatal(err)
		}
	}
	p.Update(discovery.Scan(root))
	if got := rec.last(); got != "[npu0-core0=Unhealthy npu0-core1=Unhealthy npu0-core2=Unhealthy]" {
		t.Fatalf("after unloading the driver: %s", got)
	}
	if _, err := discoverytest.RK3588().Write(root); err != nil {
		t.Fatal(err)
	}
	p.Update(discovery.Scan(root))
	if got := rec.last(); got != "[npu0-core0=Healthy npu0-core1=Healthy npu0-core2=Healthy]" {
		t.Fatalf("after reloading the driver: %s", got)
	}
}

func TestPluginOldDriverIsUnhealthy(t *testing.T) {
	p, rec, root := newPlugin(t, npu.ModeExclusive)
	if err := discoverytest.WriteFile(root, "sys/module/rknpu/version", "0.9.6\n"); err != nil {
		t.Fatal(err)
	}
	p.Update(discovery.Scan(root))
	if rec.last() != "[npu0=Unhealthy]" {
		t.Fatalf("with driver 0.9.6: %s", rec.last())
	}
	_, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"npu0"}}}})
	if err == nil || !strings.Contains(err.Error(), "rknpu driver 0.9.6 is older than the minimum 0.9.7") {
		t.Errorf("Allocate with an old driver: %v", err)
	}
}

func TestPluginAllocate(t *testing.T) {
	p, rec, root := newPlugin(t, npu.ModeCores)
	p.Update(discovery.Scan(root))
	req := func(ids ...string) *pluginapi.AllocateRequest {
		return &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: ids}}}
	}
	resp, err := p.Allocate(context.Background(), req("npu0-core1"))
	if err != nil {
		t.Fatal(err)
	}
	if env := resp.ContainerResponses[0].Envs; env["RKNPU_CORE_MASK"] != "0x2" || env["RKNPU_UNIT_IDS"] != "npu0-core1" {
		t.Errorf("envs = %v", env)
	}
	if _, err := p.Allocate(context.Background(), req("npu7")); err == nil || !strings.Contains(err.Error(), `unknown rockchip.com/npu unit "npu7"`) {
		t.Errorf("Allocate(npu7): %v", err)
	}

	// A node that vanished without a file event is caught by Allocate's own scan, which
	// also tells ListAndWatch.
	if err := os.Remove(filepath.Join(root, "dev/dri/card1")); err != nil {
		t.Fatal(err)
	}
	_, err = p.Allocate(context.Background(), req("npu0-core0"))
	if err == nil || !strings.Contains(err.Error(), "device node /dev/dri/card1 is missing") {
		t.Errorf("Allocate with card1 gone: %v", err)
	}
	if !strings.Contains(rec.last(), "npu0-core0=Unhealthy") {
		t.Errorf("ListAndWatch was not told: %s", rec.last())
	}
	if n := len(rec.allocations); n != 3 || rec.allocations[0] != nil || rec.allocations[2] == nil {
		t.Errorf("observer saw allocations %v", rec.allocations)
	}
}

func TestPluginPreferredAllocationUsesLoad(t *testing.T) {
	p, _, root := newPlugin(t, npu.ModeCores)
	p.Update(discovery.Scan(root))
	if err := discoverytest.WriteFile(root, "sys/kernel/debug/rknpu/load", "NPU load:  Core0:100%, Core1: 80%, Core2:  3%,"); err != nil {
		t.Fatal(err)
	}
	resp, err := p.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: []string{"npu0-core0", "npu0-core1", "npu0-core2"}, AllocationSize: 1,
		}},
	})
	if err != nil || len(resp.ContainerResponses) != 1 || strings.Join(resp.ContainerResponses[0].DeviceIDs, ",") != "npu0-core2" {
		t.Errorf("GetPreferredAllocation = %v, %v; want npu0-core2 (3%% load)", resp, err)
	}
}

func TestPluginNoNPU(t *testing.T) {
	root, err := discoverytest.Tree{Compatible: discoverytest.OrangePi5, Rocket: true}.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{health: map[string]bool{}}
	p := npu.NewPlugin(npu.Config{AllocateConfig: npu.AllocateConfig{Mode: npu.ModeExclusive}, Root: root}, rec.publish, rec, testr.New(t))
	p.Update(discovery.Scan(root))
	if rec.last() != "[]" {
		t.Errorf("rocket node advertises %s, want nothing", rec.last())
	}
}
