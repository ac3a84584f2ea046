// Package discoverytest builds fake root trees (/proc, /sys, /dev) that look like a
// Rockchip board to package discovery, for tests, benchmarks and the e2e test. Device
// nodes are plain files: the plugin only checks that they exist and hands their paths on.
package discoverytest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Compatible strings of real boards.
const (
	OrangePi5  = "xunlong,orangepi-5\x00rockchip,rk3588s\x00"
	Rock5B     = "radxa,rock-5b\x00rockchip,rk3588\x00"
	RK3576EVB  = "rockchip,rk3576-evb1-v10\x00rockchip,rk3576\x00"
	Rock3A     = "radxa,rock-3a\x00rockchip,rk3568\x00"
	RadxaZero3 = "radxa,zero3\x00rockchip,rk3566\x00"
	RV1126BEVB = "rockchip,rv1126b-evb1-v10\x00rockchip,rv1126b\x00"
	RaspberryP = "raspberrypi,5-model-b\x00brcm,bcm2712\x00"
)

// Tree describes a fake root. Zero fields are left out of the tree.
type Tree struct {
	// Compatible is the content of /proc/device-tree/compatible.
	Compatible string
	// NPURender and NPUCard are the DRM node names bound to the RKNPU driver
	// (e.g. "renderD129", "card1"), for the DRM build of the vendor driver.
	NPURender, NPUCard string
	// GPURender and GPUCard are DRM nodes bound to the Mali GPU driver (panthor), which the
	// plugin must ignore.
	GPURender, GPUCard string
	// DMAHeap creates /dev/rknpu and these heaps under /dev/dma_heap (DMA-heap build).
	DMAHeap []string
	// Rocket creates /dev/accel/accel0 bound to the mainline rocket driver.
	Rocket bool
	// ModuleVersion is /sys/module/rknpu/version, e.g. "0.9.8".
	ModuleVersion string
	// DebugfsVersion is /sys/kernel/debug/rknpu/version, e.g. "RKNPU driver: v0.9.8".
	DebugfsVersion string
	// Load is /sys/kernel/debug/rknpu/load, e.g. "NPU load:  Core0:  0%, Core1:  0%, Core2:  0%,".
	Load string
}

// RK3588 is an Orange Pi 5 with the DRM build of rknpu 0.9.8 at card1/renderD129, the GPU
// holding card0/renderD128.
func RK3588() Tree {
	return Tree{
		Compatible: OrangePi5,
		NPURender:  "renderD129", NPUCard: "card1",
		GPURender: "renderD128", GPUCard: "card0",
		ModuleVersion:  "0.9.8",
		DebugfsVersion: "RKNPU driver: v0.9.8",
		Load:           "NPU load:  Core0:  0%, Core1:  0%, Core2:  0%,",
	}
}

// Board is a board with compatible, driven by the DRM build of rknpu 0.9.8 at
// card0/renderD128 (no GPU node before it).
func Board(compatible string) Tree {
	return Tree{Compatible: compatible, NPURender: "renderD128", NPUCard: "card0", ModuleVersion: "0.9.8"}
}

// Write creates the tree under root and returns root.
func (t Tree) Write(root string) (string, error) {
	files := map[string]string{}
	links := map[string]string{}
	if t.Compatible != "" {
		files["proc/device-tree/compatible"] = t.Compatible
	}
	drm := func(name, driver string) {
		if name == "" {
			return
		}
		links["sys/class/drm/"+name+"/device/driver"] = "../../../../bus/platform/drivers/" + driver
		files["dev/dri/"+name] = ""
	}
	drm(t.NPURender, "RKNPU")
	drm(t.NPUCard, "RKNPU")
	drm(t.GPURender, "panthor")
	drm(t.GPUCard, "panthor")
	if t.NPUCard != "" {
		// A connector entry, which is not a device node and must be skipped.
		files["sys/class/drm/"+t.NPUCard+"-Writeback-1/status"] = "disconnected\n"
	}
	if t.DMAHeap != nil {
		files["dev/rknpu"] = ""
		for _, h := range t.DMAHeap {
			files["dev/dma_heap/"+h] = ""
		}
	}
	if t.Rocket {
		links["sys/class/accel/accel0/device/driver"] = "../../../../bus/platform/drivers/rocket"
		files["dev/accel/accel0"] = ""
	}
	if t.ModuleVersion != "" {
		files["sys/module/rknpu/version"] = t.ModuleVersion + "\n"
	}
	if t.DebugfsVersion != "" {
		files["sys/kernel/debug/rknpu/version"] = t.DebugfsVersion + "\n"
	}
	if t.Load != "" {
		files["sys/kernel/debug/rknpu/load"] = t.Load + "\n"
	}
	for p, content := range files {
		if err := WriteFile(root, p, content); err != nil {
			return "", err
		}
	}
	for p, target := range links {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
			return "", fmt.Errorf("creating %s: %w", filepath.Dir(full), err)
		}
		if err := os.Symlink(target, full); err != nil {
			return "", fmt.Errorf("linking %s: %w", full, err)
		}
	}
	return root, nil
}

// WriteFile writes content to rel under root, creating folders. The write goes through a
// temporary file at the top of root and a rename, so a concurrent scan never reads half a
// file nor sees the temporary one in a folder it lists.
func WriteFile(root, rel, content string) error {
	full := filepath.Join(root, filepath.FromSlash(strings.TrimPrefix(rel, "/")))
	if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(full), err)
	}
	tmp := filepath.Join(root, ".tmp-"+filepath.Base(full))
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, full); err != nil {
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	return nil
}
