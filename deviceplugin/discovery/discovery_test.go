package discovery_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
)

func TestScan(t *testing.T) {
	v098 := discovery.Version{Major: 0, Minor: 9, Patch: 8}
	rk3588 := discovery.SoC{Name: "rk3588", Compatible: "rockchip,rk3588s", Cores: 3}
	tests := []struct {
		name string
		tree discoverytest.Tree
		// extra runs after the tree is written, for damage no Tree field describes.
		extra func(t *testing.T, root string)

		wantSoC      discovery.SoC
		wantStack    discovery.Stack
		wantNodes    []discovery.DeviceNode
		wantAccel    []string
		wantVersion  *discovery.Version
		wantProblems []string // substrings, one per problem
		wantWarnings []string // substrings, one per warning
	}{
		{
			name:        "DRM build at renderD129 beside the GPU",
			tree:        discoverytest.RK3588(),
			wantSoC:     rk3588,
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion: &v098,
		},
		{
			name: "DRM build at renderD128 on a headless board, version from debugfs",
			tree: discoverytest.Tree{
				Compatible: discoverytest.Rock5B, NPURender: "renderD128", NPUCard: "card0",
				DebugfsVersion: "RKNPU driver: v0.9.7",
			},
			wantSoC:     discovery.SoC{Name: "rk3588", Compatible: "rockchip,rk3588", Cores: 3},
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD128", Present: true}, {Path: "/dev/dri/card0", Present: true}},
			wantVersion: &discovery.Version{Major: 0, Minor: 9, Patch: 7},
		},
		{
			name: "DRM build with the render node missing from /dev",
			tree: discoverytest.RK3588(),
			extra: func(t *testing.T, root string) {
				if err := os.Remove(filepath.Join(root, "dev/dri/renderD129")); err != nil {
					t.Fatal(err)
				}
			},
			wantSoC:     rk3588,
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: false}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion: &v098,
		},
		{
			name: "DMA-heap build",
			tree: discoverytest.Tree{
				Compatible: discoverytest.OrangePi5, DMAHeap: []string{"system", "cma"}, ModuleVersion: "0.9.8",
			},
			wantSoC:   rk3588,
			wantStack: discovery.StackDMAHeap,
			wantNodes: []discovery.DeviceNode{
				{Path: "/dev/rknpu", Present: true}, {Path: "/dev/dma_heap/cma", Present: true}, {Path: "/dev/dma_heap/system", Present: true},
			},
			wantVersion: &v098,
		},
		{
			name:         "mainline rocket driver is reported, not usable",
			tree:         discoverytest.Tree{Compatible: discoverytest.Rock5B, Rocket: true, GPURender: "renderD128"},
			wantSoC:      discovery.SoC{Name: "rk3588", Compatible: "rockchip,rk3588", Cores: 3},
			wantStack:    discovery.StackRocket,
			wantAccel:    []string{"/dev/accel/accel0"},
			wantProblems: []string{"mainline rocket driver (/dev/accel/accel0), which librkllmrt cannot use"},
		},
		{
			name:         "no NPU driver",
			tree:         discoverytest.Tree{Compatible: discoverytest.OrangePi5, GPURender: "renderD128", GPUCard: "card0"},
			wantSoC:      rk3588,
			wantStack:    discovery.StackNone,
			wantProblems: []string{"no rknpu device found"},
		},
		{
			name: "RK3576",
			tree: discoverytest.Tree{
				Compatible: discoverytest.RK3576EVB, NPURender: "renderD128", NPUCard: "card0", ModuleVersion: "0.9.8",
			},
			wantSoC:     discovery.SoC{Name: "rk3576", Compatible: "rockchip,rk3576", Cores: 2},
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD128", Present: true}, {Path: "/dev/dri/card0", Present: true}},
			wantVersion: &v098,
		},
		{
			name: "RK3568, single core",
			tree: discoverytest.Tree{
				Compatible: discoverytest.Rock3A, NPURender: "renderD129", NPUCard: "card1", ModuleVersion: "0.9.6",
			},
			wantSoC:     discovery.SoC{Name: "rk3568", Compatible: "rockchip,rk3568", Cores: 1},
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion: &discovery.Version{Major: 0, Minor: 9, Patch: 6},
		},
		{
			name:         "unsupported SoC",
			tree:         discoverytest.Tree{Compatible: discoverytest.RaspberryP},
			wantStack:    discovery.StackNone,
			wantProblems: []string{`unsupported SoC: the device tree lists ["raspberrypi,5-model-b" "brcm,bcm2712"]; recognised chips are rk3588`, "no rknpu device found"},
		},
		{
			name:         "no device tree",
			tree:         discoverytest.Tree{NPURender: "renderD129", NPUCard: "card1", ModuleVersion: "0.9.8"},
			wantStack:    discovery.StackDRM,
			wantNodes:    []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion:  &v098,
			wantProblems: []string{"cannot read the device tree's compatible list (/proc/device-tree/compatible or /sys/firmware/devicetree/base/compatible): no such file or directory"},
		},
		{
			name: "device tree only under /sys/firmware (a container without the host's /proc)",
			tree: discoverytest.Tree{NPURender: "renderD129", NPUCard: "card1", ModuleVersion: "0.9.8"},
			extra: func(t *testing.T, root string) {
				if err := discoverytest.WriteFile(root, "sys/firmware/devicetree/base/compatible", discoverytest.Rock5B); err != nil {
					t.Fatal(err)
				}
			},
			wantSoC:     discovery.SoC{Name: "rk3588", Compatible: "rockchip,rk3588", Cores: 3},
			wantStack:   discovery.StackDRM,
			wantNodes:   []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion: &v098,
		},
		{
			name:         "unparseable compatible list",
			tree:         discoverytest.Tree{Compatible: "\x00\x00 \x00", NPURender: "renderD129", NPUCard: "card1", ModuleVersion: "0.9.8"},
			wantStack:    discovery.StackDRM,
			wantNodes:    []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantVersion:  &v098,
			wantProblems: []string{"cannot read the SoC from /proc/device-tree/compatible: the compatible list is empty"},
		},
		{
			name:         "unparseable driver version",
			tree:         discoverytest.Tree{Compatible: discoverytest.OrangePi5, NPURender: "renderD129", NPUCard: "card1", ModuleVersion: "next-20250101"},
			wantSoC:      rk3588,
			wantStack:    discovery.StackDRM,
			wantNodes:    []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantWarnings: []string{`cannot read the rknpu driver version from /sys/module/rknpu/version: version "next-20250101\n" is not of the form MAJOR.MINOR[.PATCH]`},
		},
		{
			name:         "driver version unreadable",
			tree:         discoverytest.Tree{Compatible: discoverytest.OrangePi5, NPURender: "renderD129", NPUCard: "card1"},
			wantSoC:      rk3588,
			wantStack:    discovery.StackDRM,
			wantNodes:    []discovery.DeviceNode{{Path: "/dev/dri/renderD129", Present: true}, {Path: "/dev/dri/card1", Present: true}},
			wantWarnings: []string{"the rknpu driver version is unknown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, err := tt.tree.Write(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if tt.extra != nil {
				tt.extra(t, root)
			}
			inv := discovery.Scan(root)
			if inv.SoC != tt.wantSoC {
				t.Errorf("SoC = %+v, want %+v", inv.SoC, tt.wantSoC)
			}
			if inv.Stack != tt.wantStack {
				t.Errorf("Stack = %q, want %q", inv.Stack, tt.wantStack)
			}
			if !reflect.DeepEqual(inv.Nodes, tt.wantNodes) {
				t.Errorf("Nodes = %+v, want %+v", inv.Nodes, tt.wantNodes)
			}
			if !reflect.DeepEqual(inv.AccelNodes, tt.wantAccel) {
				t.Errorf("AccelNodes = %v, want %v", inv.AccelNodes, tt.wantAccel)
			}
			if tt.wantVersion == nil {
				if inv.DriverVersionKnown {
					t.Errorf("DriverVersion = %v, want unknown", inv.DriverVersion)
				}
			} else if !inv.DriverVersionKnown || inv.DriverVersion != *tt.wantVersion {
				t.Errorf("DriverVersion = %v (known %v), want %v", inv.DriverVersion, inv.DriverVersionKnown, *tt.wantVersion)
			}
			checkMessages(t, "Problems", inv.Problems, tt.wantProblems)
			checkMessages(t, "Warnings", inv.Warnings, tt.wantWarnings)
		})
	}
}

func checkMessages(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s = %q, want %d entries containing %q", what, got, len(want), want)
		return
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("%s[%d] = %q, want it to contain %q", what, i, got[i], want[i])
		}
	}
}

func TestReadLoad(t *testing.T) {
	root := t.TempDir()
	if _, err := discovery.ReadLoad(root); err == nil || !strings.Contains(err.Error(), "cannot read the NPU load from /sys/kernel/debug/rknpu/load") {
		t.Errorf("ReadLoad on an empty root: err = %v, want a message naming the debugfs file", err)
	}
	if err := discoverytest.WriteFile(root, "proc/rknpu/load", "NPU load:  Core0: 30%, Core1:100%, Core2:  5%,\n"); err != nil {
		t.Fatal(err)
	}
	got, err := discovery.ReadLoad(root)
	if err != nil || !reflect.DeepEqual(got, []int{30, 100, 5}) {
		t.Errorf("ReadLoad from procfs = %v, %v; want [30 100 5]", got, err)
	}
	// debugfs wins over procfs.
	if err := discoverytest.WriteFile(root, "sys/kernel/debug/rknpu/load", "NPU load:  7%\n"); err != nil {
		t.Fatal(err)
	}
	got, err = discovery.ReadLoad(root)
	if err != nil || !reflect.DeepEqual(got, []int{7}) {
		t.Errorf("ReadLoad from debugfs = %v, %v; want [7]", got, err)
	}
	if err := discoverytest.WriteFile(root, "sys/kernel/debug/rknpu/load", "garbage\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := discovery.ReadLoad(root); err == nil || !strings.Contains(err.Error(), "reading /sys/kernel/debug/rknpu/load") {
		t.Errorf("ReadLoad of garbage: err = %v, want one naming the file", err)
	}
}

func TestInventoryEqual(t *testing.T) {
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, b := discovery.Scan(root), discovery.Scan(root)
	if !a.Equal(b) {
		t.Fatalf("two scans of one tree differ: %+v vs %+v", a, b)
	}
	if err := os.Remove(filepath.Join(root, "dev/dri/card1")); err != nil {
		t.Fatal(err)
	}
	if c := discovery.Scan(root); a.Equal(c) {
		t.Errorf("scan after removing card1 equals the one before: %+v", c)
	}
}
