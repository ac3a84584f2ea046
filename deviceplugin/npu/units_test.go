package npu_test

import (
	"reflect"
	"strings"
	"testing"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/npu"
)

var (
	rk3588   = discovery.SoC{Name: "rk3588", Compatible: "rockchip,rk3588s", Cores: 3}
	v097     = discovery.Version{Major: 0, Minor: 9, Patch: 7}
	drmNodes = []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}}
)

func drmInventory() discovery.Inventory {
	return discovery.Inventory{
		SoC: rk3588, Stack: discovery.StackDRM, Nodes: append([]discovery.DeviceNode(nil), drmNodes...),
		DriverVersion: discovery.Version{Major: 0, Minor: 9, Patch: 8}, DriverVersionKnown: true,
	}
}

func TestUnits(t *testing.T) {
	tests := []struct {
		soc  discovery.SoC
		mode npu.Mode
		want []npu.Unit
	}{
		{rk3588, npu.ModeExclusive, []npu.Unit{{ID: "npu0", CoreMask: 0x7}}},
		{rk3588, npu.ModeCores, []npu.Unit{{ID: "npu0-core0", CoreMask: 1}, {ID: "npu0-core1", CoreMask: 2}, {ID: "npu0-core2", CoreMask: 4}}},
		{discovery.SoC{Name: "rk3576", Cores: 2}, npu.ModeExclusive, []npu.Unit{{ID: "npu0", CoreMask: 0x3}}},
		{discovery.SoC{Name: "rk3566", Cores: 1}, npu.ModeCores, []npu.Unit{{ID: "npu0-core0", CoreMask: 1}}},
		{discovery.SoC{}, npu.ModeExclusive, nil},
	}
	for _, tt := range tests {
		if got := npu.Units(tt.soc, tt.mode); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Units(%v, %s) = %+v, want %+v", tt.soc, tt.mode, got, tt.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"exclusive", "cores"} {
		if m, err := npu.ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := npu.ParseMode("shared"); err == nil || !strings.Contains(err.Error(), `"exclusive" or "cores"`) {
		t.Errorf("ParseMode(shared) error = %v", err)
	}
}

func TestParseMount(t *testing.T) {
	m, err := npu.ParseMount("/usr/lib/librkllmrt.so")
	if err != nil || m != (npu.Mount{HostPath: "/usr/lib/librkllmrt.so", ContainerPath: "/usr/lib/librkllmrt.so"}) {
		t.Errorf("ParseMount(one path) = %+v, %v", m, err)
	}
	m, err = npu.ParseMount("/sys/firmware/devicetree/base:/run/rknpu/device-tree")
	if err != nil || m != (npu.Mount{HostPath: "/sys/firmware/devicetree/base", ContainerPath: "/run/rknpu/device-tree"}) {
		t.Errorf("ParseMount(two paths) = %+v, %v", m, err)
	}
	for _, bad := range []string{"", "lib.so", "/a:b", ":/b"} {
		if _, err := npu.ParseMount(bad); err == nil {
			t.Errorf("ParseMount(%q) accepted", bad)
		}
	}
}

func TestHealth(t *testing.T) {
	missing := drmInventory()
	missing.Nodes[0].Present = false
	old := drmInventory()
	old.DriverVersion = discovery.Version{Major: 0, Minor: 9, Patch: 6}
	unknownVersion := drmInventory()
	unknownVersion.DriverVersionKnown = false
	rocket := discovery.Inventory{SoC: rk3588, Stack: discovery.StackRocket, Problems: []string{"the NPU is driven by the mainline rocket driver"}}
	none := discovery.Inventory{SoC: rk3588, Stack: discovery.StackNone, Problems: []string{"no rknpu device found"}}

	tests := []struct {
		name       string
		inv        discovery.Inventory
		wantOK     bool
		wantReason string
	}{
		{"healthy", drmInventory(), true, ""},
		{"render node missing", missing, false, "device node /dev/dri/renderD129 is missing"},
		{"driver too old", old, false, "rknpu driver 0.9.6 is older than the minimum 0.9.7 (--min-driver-version)"},
		{"driver version unknown", unknownVersion, true, ""},
		{"rocket", rocket, false, "mainline rocket driver"},
		{"driver unloaded", none, false, "no rknpu device found"},
	}
	for _, tt := range tests {
		ok, reason := npu.Health(tt.inv, v097)
		if ok != tt.wantOK || !strings.Contains(reason, tt.wantReason) || (tt.wantReason == "" && reason != "") {
			t.Errorf("%s: Health = %v, %q; want %v, %q", tt.name, ok, reason, tt.wantOK, tt.wantReason)
		}
	}
}

func TestContainerResponse(t *testing.T) {
	dmaHeap := discovery.Inventory{
		SoC: discovery.SoC{Name: "rk3576", Cores: 2}, Stack: discovery.StackDMAHeap,
		Nodes: []discovery.DeviceNode{{Path: "/dev/rknpu", Present: true}, {Path: "/dev/dma_heap/system", Present: true}},
	}
	lib := npu.Mount{HostPath: "/usr/lib/librkllmrt.so", ContainerPath: "/opt/rkllm/librkllmrt.so"}
	tests := []struct {
		name        string
		inv         discovery.Inventory
		units       []npu.Unit
		cfg         npu.AllocateConfig
		wantDevices []string // container:host:permissions
		wantEnvs    map[string]string
		wantMounts  []string // container:host:ro
		wantCDI     []string
	}{
		{
			name:        "exclusive, DRM build",
			inv:         drmInventory(),
			units:       []npu.Unit{{ID: "npu0", CoreMask: 7}},
			cfg:         npu.AllocateConfig{Mode: npu.ModeExclusive},
			wantDevices: []string{"/dev/dri/renderD129:/dev/dri/renderD129:rw", "/dev/dri/card1:/dev/dri/card1:rw"},
			wantEnvs: map[string]string{
				"RKNPU_DEVICE_NODES": "/dev/dri/renderD129,/dev/dri/card1", "RKNPU_SOC": "rk3588", "RKNPU_CORES": "3",
				"RKNPU_DRIVER_VERSION": "0.9.8", "RKNPU_UNIT_IDS": "npu0",
			},
		},
		{
			name:        "cores, two cores, with a mount and CDI",
			inv:         drmInventory(),
			units:       []npu.Unit{{ID: "npu0-core2", CoreMask: 4}, {ID: "npu0-core0", CoreMask: 1}},
			cfg:         npu.AllocateConfig{Mode: npu.ModeCores, Mounts: []npu.Mount{lib}, CDI: true},
			wantDevices: []string{"/dev/dri/renderD129:/dev/dri/renderD129:rw", "/dev/dri/card1:/dev/dri/card1:rw"},
			wantEnvs: map[string]string{
				"RKNPU_DEVICE_NODES": "/dev/dri/renderD129,/dev/dri/card1", "RKNPU_SOC": "rk3588", "RKNPU_CORES": "3",
				"RKNPU_CORE_MASK": "0x5", "RKNPU_DRIVER_VERSION": "0.9.8", "RKNPU_UNIT_IDS": "npu0-core0,npu0-core2",
			},
			wantMounts: []string{"/opt/rkllm/librkllmrt.so:/usr/lib/librkllmrt.so:true"},
			wantCDI:    []string{"rockchip.com/npu=npu0-core0", "rockchip.com/npu=npu0-core2"},
		},
		{
			name:        "DMA-heap build, driver version unknown",
			inv:         dmaHeap,
			units:       []npu.Unit{{ID: "npu0", CoreMask: 3}},
			cfg:         npu.AllocateConfig{Mode: npu.ModeExclusive},
			wantDevices: []string{"/dev/rknpu:/dev/rknpu:rw", "/dev/dma_heap/system:/dev/dma_heap/system:rw"},
			wantEnvs: map[string]string{
				"RKNPU_DEVICE_NODES": "/dev/rknpu,/dev/dma_heap/system", "RKNPU_SOC": "rk3576", "RKNPU_CORES": "2", "RKNPU_UNIT_IDS": "npu0",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := npu.ContainerResponse(tt.inv, tt.units, tt.cfg)
			var devices, mounts, cdi []string
			for _, d := range resp.Devices {
				devices = append(devices, d.ContainerPath+":"+d.HostPath+":"+d.Permissions)
			}
			for _, m := range resp.Mounts {
				mounts = append(mounts, m.ContainerPath+":"+m.HostPath+":"+map[bool]string{true: "true", false: "false"}[m.ReadOnly])
			}
			for _, c := range resp.CdiDevices {
				cdi = append(cdi, c.Name)
			}
			if !reflect.DeepEqual(devices, tt.wantDevices) {
				t.Errorf("devices = %v, want %v", devices, tt.wantDevices)
			}
			if !reflect.DeepEqual(resp.Envs, tt.wantEnvs) {
				t.Errorf("envs = %v, want %v", resp.Envs, tt.wantEnvs)
			}
			if !reflect.DeepEqual(mounts, tt.wantMounts) {
				t.Errorf("mounts = %v, want %v", mounts, tt.wantMounts)
			}
			if !reflect.DeepEqual(cdi, tt.wantCDI) {
				t.Errorf("CDI devices = %v, want %v", cdi, tt.wantCDI)
			}
		})
	}
}

func TestPrefer(t *testing.T) {
	units := npu.Units(rk3588, npu.ModeCores)
	all := []string{"npu0-core0", "npu0-core1", "npu0-core2"}
	tests := []struct {
		name        string
		available   []string
		mustInclude []string
		size        int
		load        []int
		want        []string
	}{
		{"least loaded first", all, nil, 1, []int{90, 10, 50}, []string{"npu0-core1"}},
		{"two least loaded", all, nil, 2, []int{90, 10, 50}, []string{"npu0-core1", "npu0-core2"}},
		{"ties by core", all, nil, 2, []int{0, 0, 0}, []string{"npu0-core0", "npu0-core1"}},
		{"unknown load: core order", all, nil, 1, nil, []string{"npu0-core0"}},
		{"must include kept", all, []string{"npu0-core0"}, 2, []int{90, 10, 50}, []string{"npu0-core0", "npu0-core1"}},
		{"only available ones", []string{"npu0-core0", "npu0-core2"}, nil, 1, []int{90, 10, 50}, []string{"npu0-core2"}},
		{"unknown IDs ignored", []string{"gpu0", "npu0-core2"}, nil, 1, nil, []string{"npu0-core2"}},
	}
	for _, tt := range tests {
		if got := npu.Prefer(units, tt.available, tt.mustInclude, tt.size, tt.load); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: Prefer = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestDevices(t *testing.T) {
	got := npu.Devices(npu.Units(rk3588, npu.ModeCores), false)
	if len(got) != 3 || got[0].ID != "npu0-core0" || got[2].Health != pluginapi.Unhealthy {
		t.Errorf("Devices = %v", got)
	}
}
