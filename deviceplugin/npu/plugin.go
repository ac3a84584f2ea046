package npu

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
)

// Observer is told about unit health and allocations, for metrics. Its methods must not
// block.
type Observer interface {
	UnitHealth(unitID string, healthy bool)
	Allocated(err error)
}

// Config configures a Plugin.
type Config struct {
	AllocateConfig
	// Root is the filesystem root the NPU is scanned under ("/" on a host).
	Root string
	// MinDriverVersion is the oldest rknpu driver whose units are healthy.
	MinDriverVersion discovery.Version
	// ServedSoCs are the chips whose NPU is advertised; nil means DefaultServedSoCs.
	ServedSoCs []string
}

func (c Config) servedSoCs() []string {
	if c.ServedSoCs == nil {
		return DefaultServedSoCs
	}
	return c.ServedSoCs
}

// Plugin keeps the current inventory and answers the kubelet's Allocate and
// GetPreferredAllocation calls. Every change of units or health is passed to publish
// (the plugin server's SetDevices), so it reaches ListAndWatch.
type Plugin struct {
	cfg     Config
	publish func([]*pluginapi.Device)
	obs     Observer
	log     logr.Logger

	mu      sync.Mutex
	inv     discovery.Inventory
	units   []Unit
	healthy bool
	reason  string
	seen    bool // an inventory was applied
}

// NewPlugin returns a Plugin that publishes device lists with publish.
func NewPlugin(cfg Config, publish func([]*pluginapi.Device), obs Observer, log logr.Logger) *Plugin {
	if obs == nil {
		obs = nopObserver{}
	}
	return &Plugin{cfg: cfg, publish: publish, obs: obs, log: log}
}

// Update applies a new inventory: it works out the units and their health, logs what
// changed, and publishes the device list when it changed. Units are advertised once the
// vendor driver is found on a recognised SoC the runtime serves (ServedSoCs: an RK3568's
// NPU is never advertised, since no RKLLM server could use it); once seen, they stay
// advertised (as Unhealthy) if the NPU disappears, so the kubelet drops them from
// allocatable instead of forgetting them, and they come back Healthy with the NPU.
func (p *Plugin) Update(inv discovery.Inventory) {
	p.mu.Lock()
	defer p.mu.Unlock()
	healthy, reason := Health(inv, p.cfg.MinDriverVersion)
	served, why := Served(inv.SoC, p.cfg.servedSoCs())
	var units []Unit
	switch {
	case !served:
		healthy, reason = false, why
	case inv.Stack.Usable():
		// A rocket-driven or driverless NPU is never advertised: no pod could use it.
		units = Units(inv.SoC, p.cfg.Mode)
	}
	if len(units) == 0 && len(p.units) > 0 {
		units = p.units
		healthy = false
	}
	p.logChanges(inv, units, healthy, reason)
	changed := !p.seen || healthy != p.healthy || !equalUnits(units, p.units)
	p.inv, p.units, p.healthy, p.reason, p.seen = inv, units, healthy, reason, true
	if changed {
		for _, u := range units {
			p.obs.UnitHealth(u.ID, healthy)
		}
		p.publish(Devices(units, healthy))
	}
}

// logChanges logs transitions, never steady state. Called with p.mu held.
func (p *Plugin) logChanges(inv discovery.Inventory, units []Unit, healthy bool, reason string) {
	if !p.seen || !inv.Equal(p.inv) {
		if inv.Stack.Usable() {
			p.log.Info("NPU found", "soc", inv.SoC.Name, "compatible", inv.SoC.Compatible, "cores", inv.SoC.Cores,
				"stack", inv.Stack, "nodes", inv.NodePaths(), "driverVersion", versionString(inv))
		}
		for _, w := range newMessages(inv.Warnings, p.inv.Warnings, p.seen) {
			p.log.Info("warning: "+w, "root", p.cfg.Root)
		}
	}
	ids := unitIDs(units)
	switch {
	case len(units) == 0:
		if !p.seen || reason != p.reason {
			p.log.Info("no NPU units to advertise", "reason", reason, "root", p.cfg.Root)
		}
	case healthy && (!p.seen || !p.healthy):
		p.log.Info("NPU units healthy", "units", ids, "mode", p.cfg.Mode)
	case !healthy && (!p.seen || p.healthy || reason != p.reason):
		p.log.Info("NPU units unhealthy", "units", ids, "reason", reason)
	}
}

// Allocate gives each container the units it asks for. The NPU is scanned again first, so
// a device node that vanished since the last event fails the allocation (and updates
// ListAndWatch) instead of starting a pod that cannot open it.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	p.Update(discovery.Scan(p.cfg.Root))
	resp, err := p.allocate(req)
	p.obs.Allocated(err)
	if err != nil {
		p.log.Error(err, "allocation refused")
		return nil, err
	}
	return resp, nil
}

func (p *Plugin) allocate(req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &pluginapi.AllocateResponse{}
	for _, creq := range req.ContainerRequests {
		units, err := p.lookup(creq.DevicesIds)
		if err != nil {
			return nil, err
		}
		if !p.healthy {
			return nil, fmt.Errorf("cannot allocate %s: the NPU is unhealthy: %s", strings.Join(creq.DevicesIds, ","), p.reason)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, ContainerResponse(p.inv, units, p.cfg.AllocateConfig))
	}
	return resp, nil
}

// lookup maps device IDs to units. Called with p.mu held.
func (p *Plugin) lookup(ids []string) ([]Unit, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("the kubelet asked for no %s units", ResourceName)
	}
	units := make([]Unit, 0, len(ids))
	for _, id := range ids {
		var found bool
		for _, u := range p.units {
			if u.ID == id {
				units, found = append(units, u), true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown %s unit %q; this node has %v", ResourceName, id, unitIDs(p.units))
		}
	}
	return units, nil
}

// GetPreferredAllocation prefers units on the least-loaded cores (cores mode); in
// exclusive mode there is one unit and nothing to choose.
func (p *Plugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	var load []int
	if p.cfg.Mode == ModeCores {
		// Unknown load (no debugfs) just means core order.
		load, _ = discovery.ReadLoad(p.cfg.Root)
	}
	p.mu.Lock()
	units := p.units
	p.mu.Unlock()
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, c := range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{
			DeviceIDs: Prefer(units, c.AvailableDeviceIDs, c.MustIncludeDeviceIDs, int(c.AllocationSize), load),
		})
	}
	return resp, nil
}

// Inventory returns the inventory last applied.
func (p *Plugin) Inventory() discovery.Inventory {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inv
}

// UnitIDs returns the advertised unit IDs.
func (p *Plugin) UnitIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return unitIDs(p.units)
}

func versionString(inv discovery.Inventory) string {
	if !inv.DriverVersionKnown {
		return "unknown"
	}
	return inv.DriverVersion.String()
}

// newMessages returns the entries of cur not in prev (all of cur when !seen).
func newMessages(cur, prev []string, seen bool) []string {
	var out []string
	for _, m := range cur {
		isNew := true
		for _, o := range prev {
			if seen && o == m {
				isNew = false
			}
		}
		if isNew {
			out = append(out, m)
		}
	}
	return out
}

func equalUnits(a, b []Unit) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type nopObserver struct{}

func (nopObserver) UnitHealth(string, bool) {}
func (nopObserver) Allocated(error)         {}
