package nodelabels_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/nodelabels"
)

func TestWriter(t *testing.T) {
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "features.d", "rockchip-npu")
	w := &nodelabels.Writer{Path: path}
	if err := w.Write(discovery.Scan(root)); err != nil {
		t.Fatal(err)
	}
	want := "# Written by rknpu-device-plugin; rewritten when the NPU changes.\n" +
		"rockchip.com/npu.cores=3\n" +
		"rockchip.com/npu.driver-version=0.9.8\n" +
		"rockchip.com/npu.present=true\n" +
		"rockchip.com/npu.soc=rk3588\n"
	if got, err := os.ReadFile(path); err != nil || string(got) != want {
		t.Fatalf("features file = %q, %v; want %q", got, err, want)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil || len(entries) != 1 {
		t.Errorf("features folder holds %v, %v; want only the features file", entries, err)
	}

	rocket, err := discoverytest.Tree{Compatible: discoverytest.Rock5B, Rocket: true}.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(discovery.Scan(rocket)); err != nil {
		t.Fatal(err)
	}
	want = "# Written by rknpu-device-plugin; rewritten when the NPU changes.\nrockchip.com/npu.present=false\n"
	if got, err := os.ReadFile(path); err != nil || string(got) != want {
		t.Fatalf("features file on a rocket node = %q, %v; want %q", got, err, want)
	}
}

func TestWriterReportsUnwritableFolder(t *testing.T) {
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w := &nodelabels.Writer{Path: filepath.Join(blocker, "features.d", "rockchip-npu")}
	if err := w.Write(discovery.Inventory{}); err == nil {
		t.Error("Write under a regular file succeeded")
	}
}
