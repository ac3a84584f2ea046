// Package cdi writes the Container Device Interface spec for the NPU units, so a CDI-aware
// runtime (containerd 2, CRI-O) can inject the device nodes from the names the plugin
// returns in Allocate (rockchip.com/npu=npu0). The spec is validated and written by the
// CDI project's own library.
package cdi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

// Vendor and Class make the CDI kind rockchip.com/npu.
const (
	Vendor = "rockchip.com"
	Class  = "npu"
)

// DefaultSpecDir is where runtimes look for dynamically generated specs.
const DefaultSpecDir = "/var/run/cdi"

// DeviceName is the fully qualified CDI name of a unit, e.g. rockchip.com/npu=npu0.
func DeviceName(unitID string) string { return parser.QualifiedName(Vendor, Class, unitID) }

// Spec builds the CDI spec: one device per unit ID, each with every device node (they all
// share the one NPU device node set).
func Spec(unitIDs, nodes []string) *specs.Spec {
	ids := append([]string(nil), unitIDs...)
	sort.Strings(ids)
	spec := &specs.Spec{Kind: Vendor + "/" + Class}
	for _, id := range ids {
		dev := specs.Device{Name: id}
		for _, n := range nodes {
			dev.ContainerEdits.DeviceNodes = append(dev.ContainerEdits.DeviceNodes, &specs.DeviceNode{Path: n, HostPath: n, Permissions: "rw"})
		}
		spec.Devices = append(spec.Devices, dev)
	}
	version, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		version = specs.CurrentVersion
	}
	spec.Version = version
	return spec
}

// Writer writes the spec into a folder when it changes.
type Writer struct {
	cache *cdi.Cache
	last  []byte
}

// NewWriter returns a Writer for dir (DefaultSpecDir in production); the folder is
// created on the first write.
func NewWriter(dir string) *Writer {
	// NewCache never fails; its error result is kept for API compatibility.
	cache, _ := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	return &Writer{cache: cache}
}

// SpecFileName is the spec's file name in the folder.
var SpecFileName = cdi.GenerateSpecName(Vendor, Class) + ".json"

// Write writes the spec for the units and nodes, unless it is unchanged since the last
// write. With no units it removes the spec, so stale names do not linger.
func (w *Writer) Write(unitIDs, nodes []string) error {
	if len(unitIDs) == 0 {
		w.last = nil
		if err := w.cache.RemoveSpec(SpecFileName); err != nil {
			return fmt.Errorf("removing CDI spec %s: %w", SpecFileName, err)
		}
		return nil
	}
	spec := Spec(unitIDs, nodes)
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encoding CDI spec: %w", err)
	}
	if bytes.Equal(data, w.last) {
		return nil
	}
	if err := w.cache.WriteSpec(spec, SpecFileName); err != nil {
		return fmt.Errorf("writing CDI spec %s: %w", SpecFileName, err)
	}
	w.last = data
	return nil
}
