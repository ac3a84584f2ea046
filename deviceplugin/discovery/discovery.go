// Package discovery finds a Rockchip NPU and its kernel driver by reading /proc, /sys and
// /dev under a filesystem root. Scan is a pure function of that root, so tests build fake
// trees in a temporary folder (see package discoverytest) and the plugin can run in a
// container with the host's folders mounted under, say, /host.
package discovery

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Stack is the kernel driver stack that drives the NPU. A node has at most one.
type Stack string

const (
	// StackNone means no NPU driver was found.
	StackNone Stack = "none"
	// StackDRM is the vendor rknpu driver built as a DRM driver (Rockchip BSP kernels
	// 5.10 and 6.1): a card node and a render node under /dev/dri.
	StackDRM Stack = "drm"
	// StackDMAHeap is the vendor rknpu driver built with DMA heaps: the misc device
	// /dev/rknpu plus the heaps under /dev/dma_heap.
	StackDMAHeap Stack = "dma-heap"
	// StackRocket is the mainline rocket accel driver (Linux 6.18+) at /dev/accel/accelN.
	// librkllmrt cannot use it, so it is reported and never advertised.
	StackRocket Stack = "rocket"
)

// Usable reports whether librkllmrt can use the NPU through this stack.
func (s Stack) Usable() bool { return s == StackDRM || s == StackDMAHeap }

// SoC is a recognised Rockchip chip.
type SoC struct {
	// Name is the NPU family given to pods and node labels: rk3588 (also for RK3588S,
	// whose NPU is the same), rk3576, rk3568, rk3566, rk3562 or rv1126b.
	Name string
	// Compatible is the device-tree entry that matched, e.g. "rockchip,rk3588s".
	Compatible string
	// Cores is the number of NPU cores.
	Cores int
}

// knownSoCs maps device-tree compatible entries to chips. The kernel lists the most
// specific entry first, so the first match wins.
var knownSoCs = map[string]SoC{
	"rockchip,rk3588":  {Name: "rk3588", Cores: 3},
	"rockchip,rk3588s": {Name: "rk3588", Cores: 3},
	"rockchip,rk3576":  {Name: "rk3576", Cores: 2},
	"rockchip,rk3568":  {Name: "rk3568", Cores: 1},
	"rockchip,rk3566":  {Name: "rk3566", Cores: 1},
	"rockchip,rk3562":  {Name: "rk3562", Cores: 1},
	"rockchip,rv1126b": {Name: "rv1126b", Cores: 1},
}

// RecognisedSoCs lists the chips the plugin knows, for messages and docs.
const RecognisedSoCs = "rk3588, rk3588s, rk3576, rk3568, rk3566, rk3562, rv1126b"

// SoCNames lists the Name of every recognised chip, sorted.
func SoCNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, soc := range knownSoCs {
		if !seen[soc.Name] {
			seen[soc.Name] = true
			out = append(out, soc.Name)
		}
	}
	sort.Strings(out)
	return out
}

// DeviceNode is a device file the container needs.
type DeviceNode struct {
	// Path is the node's path on the host (without the scan root), e.g. /dev/dri/renderD129.
	Path string
	// Present reports whether the node exists now.
	Present bool
}

// Inventory is what one scan found.
type Inventory struct {
	// SoC is the recognised chip; its Name is empty when the chip was not recognised.
	SoC SoC
	// Stack is the driver stack found.
	Stack Stack
	// Nodes are the device nodes a container needs for this stack, in a stable order:
	// render then card node (DRM), or /dev/rknpu then the DMA heaps.
	Nodes []DeviceNode
	// AccelNodes are the rocket driver's nodes (reported only).
	AccelNodes []string
	// DriverVersion is the rknpu driver version; valid when DriverVersionKnown.
	DriverVersion      Version
	DriverVersionKnown bool
	// Problems say why the NPU cannot be offered to pods; empty when it can.
	Problems []string
	// Warnings are oddities that do not stop the NPU from being offered.
	Warnings []string
}

// MissingNodes lists the nodes that the stack needs but that do not exist now.
func (inv Inventory) MissingNodes() []string {
	var out []string
	for _, n := range inv.Nodes {
		if !n.Present {
			out = append(out, n.Path)
		}
	}
	return out
}

// NodePaths lists the host paths of the needed device nodes.
func (inv Inventory) NodePaths() []string {
	out := make([]string, 0, len(inv.Nodes))
	for _, n := range inv.Nodes {
		out = append(out, n.Path)
	}
	return out
}

// Equal reports whether two inventories describe the same hardware and health.
func (inv Inventory) Equal(o Inventory) bool {
	return inv.SoC == o.SoC && inv.Stack == o.Stack &&
		inv.DriverVersion == o.DriverVersion && inv.DriverVersionKnown == o.DriverVersionKnown &&
		equalSlices(inv.Nodes, o.Nodes) && equalSlices(inv.AccelNodes, o.AccelNodes) &&
		equalSlices(inv.Problems, o.Problems) && equalSlices(inv.Warnings, o.Warnings)
}

func equalSlices[T comparable](a, b []T) bool {
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

// Paths read by Scan, relative to the root. Only these name the host's folders.
const (
	compatiblePath      = "proc/device-tree/compatible"
	compatibleSysfsPath = "sys/firmware/devicetree/base/compatible"
	drmClassPath        = "sys/class/drm"
	accelClassPath      = "sys/class/accel"
	moduleVersionPath   = "sys/module/rknpu/version"
	debugfsVersionPath  = "sys/kernel/debug/rknpu/version"
	debugfsLoadPath     = "sys/kernel/debug/rknpu/load"
	procfsLoadPath      = "proc/rknpu/load"
	rknpuMiscPath       = "dev/rknpu"
	dmaHeapPath         = "dev/dma_heap"
	driPath             = "dev/dri"
	accelPath           = "dev/accel"
)

// WatchDirs lists the folders (relative to the root) whose changes can change a scan's
// result, for a file watcher; they make a node's removal visible at once. /dev itself is
// left out: every write to /dev/null or a tty there would wake the watcher. sysfs sends
// no inotify events for driver changes, so a periodic scan covers those and /dev/rknpu.
func WatchDirs() []string {
	return []string{driPath, dmaHeapPath, accelPath, drmClassPath, accelClassPath, "sys/module/rknpu"}
}

// Scan reads the NPU's state under root ("/" on a host). It never fails: what it cannot
// read becomes a Problem or a Warning in the inventory.
func Scan(root string) Inventory {
	inv := Inventory{Stack: StackNone}
	fsys := os.DirFS(root)

	soc, err := readSoC(fsys)
	if err != nil {
		inv.Problems = append(inv.Problems, err.Error())
	} else {
		inv.SoC = soc
	}

	switch drm := findDRM(fsys); {
	case len(drm) > 0:
		inv.Stack = StackDRM
		inv.Nodes = drm
	case exists(fsys, rknpuMiscPath):
		inv.Stack = StackDMAHeap
		inv.Nodes = dmaHeapNodes(fsys)
	default:
		if accel := findRocket(fsys); len(accel) > 0 {
			inv.Stack = StackRocket
			inv.AccelNodes = accel
			inv.Problems = append(inv.Problems, fmt.Sprintf(
				"the NPU is driven by the mainline rocket driver (%s), which librkllmrt cannot use; "+
					"boot a Rockchip BSP kernel with the vendor rknpu driver to serve RKLLM models",
				strings.Join(accel, ", ")))
		} else {
			inv.Problems = append(inv.Problems,
				"no rknpu device found: no DRM device bound to the RKNPU driver under /sys/class/drm and no /dev/rknpu; "+
					"is the rknpu driver loaded (lsmod, dmesg | grep -i rknpu)?")
		}
	}

	if inv.Stack.Usable() {
		v, known, warn := readDriverVersion(fsys)
		inv.DriverVersion, inv.DriverVersionKnown = v, known
		if warn != "" {
			inv.Warnings = append(inv.Warnings, warn)
		}
	}
	return inv
}

// readSoC reads the device-tree compatible list, from /proc/device-tree or, when /proc is
// not mounted under the root (a container), from /sys/firmware/devicetree/base.
func readSoC(fsys fs.FS) (SoC, error) {
	data, err := fs.ReadFile(fsys, compatiblePath)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = fs.ReadFile(fsys, compatibleSysfsPath)
	}
	if err != nil {
		return SoC{}, fmt.Errorf("cannot read the device tree's compatible list (/%s or /%s): %w; "+
			"the plugin needs a Rockchip board with a device tree (in a container, mount the host's /sys under --root)",
			compatiblePath, compatibleSysfsPath, unwrapPath(err))
	}
	entries, err := parseCompatible(data)
	if err != nil {
		return SoC{}, fmt.Errorf("cannot read the SoC from /%s: %w", compatiblePath, err)
	}
	for _, e := range entries {
		if soc, ok := knownSoCs[e]; ok {
			soc.Compatible = e
			return soc, nil
		}
	}
	return SoC{}, fmt.Errorf("unsupported SoC: the device tree lists %q; recognised chips are %s", entries, RecognisedSoCs)
}

// findDRM returns the render and card nodes of the DRM devices bound to the rknpu
// platform driver, whatever their numbers. /sys/class/drm/<name>/device/driver links to
// the platform driver, named RKNPU.
func findDRM(fsys fs.FS) []DeviceNode {
	entries, err := fs.ReadDir(fsys, drmClassPath)
	if err != nil {
		return nil
	}
	var render, card []DeviceNode
	for _, e := range entries {
		name := e.Name()
		isRender := isNumbered(name, "renderD")
		if !isRender && !isNumbered(name, "card") {
			continue // connectors such as card0-HDMI-A-1, and "version"
		}
		if !strings.EqualFold(driverName(fsys, path.Join(drmClassPath, name, "device", "driver")), "rknpu") {
			continue
		}
		node := DeviceNode{Path: "/" + path.Join(driPath, name), Present: exists(fsys, path.Join(driPath, name))}
		if isRender {
			render = append(render, node)
		} else {
			card = append(card, node)
		}
	}
	sortNodes(render)
	sortNodes(card)
	return append(render, card...)
}

// findRocket returns the accel nodes bound to the mainline rocket driver.
func findRocket(fsys fs.FS) []string {
	entries, err := fs.ReadDir(fsys, accelClassPath)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if !isNumbered(e.Name(), "accel") {
			continue
		}
		if driverName(fsys, path.Join(accelClassPath, e.Name(), "device", "driver")) == "rocket" {
			out = append(out, "/"+path.Join(accelPath, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// dmaHeapNodes returns /dev/rknpu followed by every heap under /dev/dma_heap.
func dmaHeapNodes(fsys fs.FS) []DeviceNode {
	nodes := []DeviceNode{{Path: "/" + rknpuMiscPath, Present: true}}
	entries, err := fs.ReadDir(fsys, dmaHeapPath)
	if err != nil {
		return nodes
	}
	var heaps []DeviceNode
	for _, e := range entries {
		heaps = append(heaps, DeviceNode{Path: "/" + path.Join(dmaHeapPath, e.Name()), Present: true})
	}
	sortNodes(heaps)
	return append(nodes, heaps...)
}

// readDriverVersion reads /sys/module/rknpu/version, falling back to debugfs. A missing
// or unreadable version is a warning: it cannot prove the driver too old.
func readDriverVersion(fsys fs.FS) (v Version, known bool, warning string) {
	for _, p := range []string{moduleVersionPath, debugfsVersionPath} {
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			continue
		}
		v, err := ParseVersion(string(data))
		if err != nil {
			return Version{}, false, fmt.Sprintf("cannot read the rknpu driver version from /%s: %v", p, err)
		}
		return v, true, ""
	}
	return Version{}, false, fmt.Sprintf("the rknpu driver version is unknown: neither /%s nor /%s is readable "+
		"(mount debugfs, or check that the driver is loaded)", moduleVersionPath, debugfsVersionPath)
}

// ReadLoad reads the per-core NPU load under root from debugfs or, on kernels built with
// the procfs option, /proc/rknpu/load.
func ReadLoad(root string) ([]int, error) {
	fsys := os.DirFS(root)
	var firstErr error
	for _, p := range []string{debugfsLoadPath, procfsLoadPath} {
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			if firstErr == nil {
				firstErr = unwrapPath(err)
			}
			continue
		}
		load, err := ParseLoad(string(data))
		if err != nil {
			return nil, fmt.Errorf("reading /%s: %w", p, err)
		}
		return load, nil
	}
	return nil, fmt.Errorf("cannot read the NPU load from /%s or /%s (debugfs needs root and a mounted /sys/kernel/debug): %w",
		debugfsLoadPath, procfsLoadPath, firstErr)
}

// driverName returns the last element of a sysfs driver link, or "" when there is none.
func driverName(fsys fs.FS, link string) string {
	target, err := fs.ReadLink(fsys, link)
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func exists(fsys fs.FS, p string) bool {
	_, err := fs.Stat(fsys, p)
	return err == nil
}

// isNumbered reports whether name is prefix followed by decimal digits only.
func isNumbered(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return false
	}
	for _, c := range rest {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func sortNodes(nodes []DeviceNode) {
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Path < nodes[j].Path })
}

// unwrapPath drops the *fs.PathError wrapper, whose path is relative to the root and
// so would mislead; callers name the path themselves.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
