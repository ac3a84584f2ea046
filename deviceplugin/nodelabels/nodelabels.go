// Package nodelabels writes a node-feature-discovery local features file describing the
// NPU, so NFD labels the node (rockchip.com/npu.present=true, .soc, .cores,
// .driver-version) and charts can target NPU nodes. NFD only applies labels outside its
// own namespace when told to: nfd-master needs rockchip.com in its extraLabelNs.
package nodelabels

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
)

// DefaultPath is where nfd-worker reads local feature files.
const DefaultPath = "/etc/kubernetes/node-feature-discovery/features.d/rockchip-npu"

// Label names (docs/design.md).
const (
	Present       = "rockchip.com/npu.present"
	SoC           = "rockchip.com/npu.soc"
	Cores         = "rockchip.com/npu.cores"
	DriverVersion = "rockchip.com/npu.driver-version"
)

// Labels describes an inventory. An NPU counts as present when the vendor driver drives a
// recognised SoC (a rocket-driven NPU is not, as librkllmrt cannot use it); otherwise
// only present=false is written.
func Labels(inv discovery.Inventory) map[string]string {
	if !inv.Stack.Usable() || inv.SoC.Name == "" {
		return map[string]string{Present: "false"}
	}
	labels := map[string]string{
		Present: "true",
		SoC:     inv.SoC.Name,
		Cores:   strconv.Itoa(inv.SoC.Cores),
	}
	if inv.DriverVersionKnown {
		labels[DriverVersion] = inv.DriverVersion.String()
	}
	return labels
}

// Format renders labels as NFD's local feature file: one name=value per line, sorted.
func Format(labels map[string]string) []byte {
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	b.WriteString("# Written by rknpu-device-plugin; rewritten when the NPU changes.\n")
	for _, n := range names {
		fmt.Fprintf(&b, "%s=%s\n", n, labels[n])
	}
	return b.Bytes()
}

// Writer writes the file at Path when its content changes.
type Writer struct {
	Path string
	last []byte
}

// Write writes the labels of inv, atomically (nfd-worker may read at any time), unless
// the content is unchanged since the last write.
func (w *Writer) Write(inv discovery.Inventory) error {
	data := Format(Labels(inv))
	if bytes.Equal(data, w.last) {
		return nil
	}
	dir := filepath.Dir(w.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // nfd-worker, another user, reads it
		return fmt.Errorf("creating the NFD features folder %s: %w", dir, err)
	}
	// nfd-worker reads every file in the folder, so the temporary file is hidden (NFD
	// skips dot files) and renamed into place.
	tmp, err := os.CreateTemp(dir, ".rockchip-npu-*")
	if err != nil {
		return fmt.Errorf("writing node labels to %s: %w", w.Path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o644) //nolint:gosec // nfd-worker, another user, reads it
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), w.Path)
	}
	if werr != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("writing node labels to %s: %w", w.Path, werr)
	}
	w.last = data
	return nil
}
