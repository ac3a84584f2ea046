// Package npu is the Rockchip-NPU half of the device plugin: which units a node offers
// as rockchip.com/npu, whether they are healthy, what a container that gets them receives
// (device nodes, environment, mounts, CDI names), and which units to prefer. Everything
// here is a pure function of a discovery.Inventory except Plugin, which keeps the current
// inventory and answers the kubelet through package pluginserver.
package npu

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/cdi"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
)

// ResourceName is the extended resource the plugin advertises.
const ResourceName = "rockchip.com/npu"

// Mode says how the NPU is cut into units.
type Mode string

const (
	// ModeExclusive offers one unit per SoC (ID npu0): one pod owns the whole NPU.
	ModeExclusive Mode = "exclusive"
	// ModeCores offers one unit per NPU core (IDs npu0-core0, ...). This caps how many pods
	// share the NPU; it does not isolate them: all cores sit behind one device node and the
	// core mask is only a hint the pod's runtime may follow.
	ModeCores Mode = "cores"
)

// ParseMode checks a --mode value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeExclusive, ModeCores:
		return m, nil
	}
	return "", fmt.Errorf("mode %q is not one of %q or %q", s, ModeExclusive, ModeCores)
}

// Environment variables set in every container that gets NPU units (docs/design.md).
const (
	EnvDeviceNodes   = "RKNPU_DEVICE_NODES"
	EnvSoC           = "RKNPU_SOC"
	EnvCores         = "RKNPU_CORES"
	EnvCoreMask      = "RKNPU_CORE_MASK"
	EnvDriverVersion = "RKNPU_DRIVER_VERSION"
	EnvUnitIDs       = "RKNPU_UNIT_IDS"
	// EnvModelCache and EnvModelCacheMaxBytes are set with a model cache: the folder in
	// the container and its size limit in bytes (rkllm-server fetch reads both).
	EnvModelCache         = "RKNPU_MODEL_CACHE"
	EnvModelCacheMaxBytes = "RKNPU_MODEL_CACHE_MAX_BYTES"
)

// ModelCacheContainerPath is where NPU containers get the node's model cache.
const ModelCacheContainerPath = "/var/cache/rkllm"

// Unit is one advertised device.
type Unit struct {
	// ID is the device ID the kubelet sees: npu0, or npu0-coreN in cores mode.
	ID string
	// CoreMask has a bit for each NPU core the unit stands for.
	CoreMask uint32
}

// Core returns the core index of a cores-mode unit, or -1 for a whole-SoC unit.
func (u Unit) Core() int {
	for i := range 32 {
		if u.CoreMask == 1<<i {
			return i
		}
	}
	return -1
}

// DefaultServedSoCs are the chips the RKLLM runtime runs on (Rockchip's list for runtime
// 1.2 and 1.3). RK3566 and RK3568 have an NPU, but not one librkllmrt serves.
var DefaultServedSoCs = []string{"rk3588", "rk3576", "rk3562", "rv1126b"}

// ParseSoCs checks a comma-separated --socs value against the chips discovery knows.
func ParseSoCs(s string) ([]string, error) {
	known := discovery.SoCNames()
	var out []string
	for _, name := range strings.Split(s, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("%q is not a SoC the plugin recognises (%s)", name, strings.Join(known, ", "))
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no SoC given; the RKLLM runtime serves %s", strings.Join(DefaultServedSoCs, ","))
	}
	return out, nil
}

// Served reports whether units of soc are advertised with the served list; reason says
// why not.
func Served(soc discovery.SoC, served []string) (ok bool, reason string) {
	if soc.Name == "" || slices.Contains(served, soc.Name) {
		return true, ""
	}
	return false, fmt.Sprintf("the NPU of this %s is not advertised: the RKLLM runtime does not serve it "+
		"(served: %s; --socs overrides the list)", soc.Name, strings.Join(served, ", "))
}

// Units lists the units of a SoC in a mode; none when the SoC is not recognised.
func Units(soc discovery.SoC, mode Mode) []Unit {
	if soc.Cores <= 0 {
		return nil
	}
	if mode == ModeCores {
		units := make([]Unit, soc.Cores)
		for i := range units {
			units[i] = Unit{ID: fmt.Sprintf("npu0-core%d", i), CoreMask: 1 << i}
		}
		return units
	}
	return []Unit{{ID: "npu0", CoreMask: 1<<soc.Cores - 1}}
}

// Health says whether the units of an inventory can be given to pods, and if not, why.
// All units share one device node and one driver, so they are healthy or not together.
func Health(inv discovery.Inventory, minDriver discovery.Version) (healthy bool, reason string) {
	switch {
	case !inv.Stack.Usable():
		if len(inv.Problems) > 0 {
			return false, strings.Join(inv.Problems, "; ")
		}
		return false, fmt.Sprintf("no usable rknpu device (driver stack %q)", inv.Stack)
	case inv.SoC.Cores == 0:
		return false, strings.Join(inv.Problems, "; ")
	}
	if missing := inv.MissingNodes(); len(missing) > 0 {
		return false, fmt.Sprintf("device node %s is missing (driver unloaded or node removed)", strings.Join(missing, ", "))
	}
	if inv.DriverVersionKnown && inv.DriverVersion.Less(minDriver) {
		return false, fmt.Sprintf("rknpu driver %s is older than the minimum %s (--min-driver-version); "+
			"librkllmrt needs 0.9.7 or newer: update the board's kernel or rknpu module", inv.DriverVersion, minDriver)
	}
	return true, ""
}

// Mount is a host path given to every container that gets NPU units, read-only unless
// Writable.
type Mount struct {
	HostPath, ContainerPath string
	Writable                bool
}

// ParseMount reads HOST[:CONTAINER]; CONTAINER defaults to HOST. Both must be absolute.
func ParseMount(s string) (Mount, error) {
	host, container, found := strings.Cut(s, ":")
	if !found {
		container = host
	}
	if !strings.HasPrefix(host, "/") || !strings.HasPrefix(container, "/") {
		return Mount{}, fmt.Errorf("mount %q: want HOST_PATH[:CONTAINER_PATH] with absolute paths", s)
	}
	return Mount{HostPath: host, ContainerPath: container}, nil
}

// AllocateConfig is what shapes a container's allocation besides the inventory.
type AllocateConfig struct {
	Mode Mode
	// Mounts are read-only host paths added to every allocation (the runtime library, the
	// device tree for unprivileged pods).
	Mounts []Mount
	// CDI adds the units' CDI device names (rockchip.com/npu=ID); the CDI spec must be
	// written for them (package cdi).
	CDI bool
	// ModelCache, when set, is the node's model cache given to every container.
	ModelCache *ModelCache
}

// ModelCache is a host folder where rkllm-server fetch keeps model files for every NPU
// pod of the node, so each file is downloaded once per node. It reaches the containers
// as an Allocate mount (writable), not as a hostPath volume in the pod spec, so model pods
// pass Pod Security baseline and restricted.
type ModelCache struct {
	// HostPath is the folder on the node.
	HostPath string
	// MaxBytes bounds the folder (least recently used files are removed); 0 for none.
	MaxBytes int64
}

// ContainerResponse is what a container gets for units: every device node as a device
// (so the device cgroup admits it), the RKNPU_* environment, the configured mounts, and
// with CDI the units' CDI names. Device nodes are given by host path, which is also their
// path in the container.
func ContainerResponse(inv discovery.Inventory, units []Unit, cfg AllocateConfig) *pluginapi.ContainerAllocateResponse {
	nodes := inv.NodePaths()
	resp := &pluginapi.ContainerAllocateResponse{
		Envs: map[string]string{
			EnvDeviceNodes: strings.Join(nodes, ","),
			EnvSoC:         inv.SoC.Name,
			EnvCores:       strconv.Itoa(inv.SoC.Cores),
			EnvUnitIDs:     strings.Join(unitIDs(units), ","),
		},
	}
	if inv.DriverVersionKnown {
		resp.Envs[EnvDriverVersion] = inv.DriverVersion.String()
	}
	if cfg.Mode == ModeCores {
		var mask uint32
		for _, u := range units {
			mask |= u.CoreMask
		}
		resp.Envs[EnvCoreMask] = fmt.Sprintf("%#x", mask)
	}
	for _, n := range nodes {
		resp.Devices = append(resp.Devices, &pluginapi.DeviceSpec{ContainerPath: n, HostPath: n, Permissions: "rw"})
	}
	for _, m := range cfg.Mounts {
		resp.Mounts = append(resp.Mounts, &pluginapi.Mount{ContainerPath: m.ContainerPath, HostPath: m.HostPath, ReadOnly: !m.Writable})
	}
	if c := cfg.ModelCache; c != nil {
		resp.Mounts = append(resp.Mounts, &pluginapi.Mount{ContainerPath: ModelCacheContainerPath, HostPath: c.HostPath})
		resp.Envs[EnvModelCache] = ModelCacheContainerPath
		resp.Envs[EnvModelCacheMaxBytes] = strconv.FormatInt(c.MaxBytes, 10)
	}
	if cfg.CDI {
		for _, id := range unitIDs(units) {
			resp.CdiDevices = append(resp.CdiDevices, &pluginapi.CDIDevice{Name: cdi.DeviceName(id)})
		}
	}
	return resp
}

// Prefer chooses size units among available, keeping mustInclude, then taking the units
// on the least-loaded cores (load per core index; nil when unknown), ties broken by core.
func Prefer(units []Unit, available, mustInclude []string, size int, load []int) []string {
	chosen := make([]string, 0, size)
	taken := map[string]bool{}
	for _, id := range mustInclude {
		if len(chosen) < size && !taken[id] {
			chosen, taken[id] = append(chosen, id), true
		}
	}
	byID := map[string]Unit{}
	for _, u := range units {
		byID[u.ID] = u
	}
	rest := make([]Unit, 0, len(available))
	for _, id := range available {
		if u, ok := byID[id]; ok && !taken[id] {
			rest = append(rest, u)
		}
	}
	loadOf := func(u Unit) int {
		if c := u.Core(); c >= 0 && c < len(load) {
			return load[c]
		}
		return 0
	}
	sort.SliceStable(rest, func(i, j int) bool {
		if li, lj := loadOf(rest[i]), loadOf(rest[j]); li != lj {
			return li < lj
		}
		return rest[i].ID < rest[j].ID
	})
	for _, u := range rest {
		if len(chosen) == size {
			break
		}
		chosen = append(chosen, u.ID)
	}
	return chosen
}

func unitIDs(units []Unit) []string {
	ids := make([]string, len(units))
	for i, u := range units {
		ids[i] = u.ID
	}
	sort.Strings(ids)
	return ids
}

// Devices is the ListAndWatch list for units with one health.
func Devices(units []Unit, healthy bool) []*pluginapi.Device {
	health := pluginapi.Unhealthy
	if healthy {
		health = pluginapi.Healthy
	}
	out := make([]*pluginapi.Device, len(units))
	for i, u := range units {
		out[i] = &pluginapi.Device{ID: u.ID, Health: health}
	}
	return out
}
