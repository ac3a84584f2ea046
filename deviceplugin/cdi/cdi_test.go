package cdi_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/cdi"
)

func TestDeviceName(t *testing.T) {
	if got := cdi.DeviceName("npu0-core1"); got != "rockchip.com/npu=npu0-core1" {
		t.Errorf("DeviceName = %q", got)
	}
}

func TestWriterWritesASpecRuntimesAccept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cdi")
	w := cdi.NewWriter(dir)
	nodes := []string{"/dev/dri/renderD129", "/dev/dri/card1"}
	if err := w.Write([]string{"npu0-core1", "npu0-core0"}, nodes); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, cdi.SpecFileName)
	if cdi.SpecFileName != "rockchip.com-npu.json" {
		t.Errorf("spec file name = %q", cdi.SpecFileName)
	}

	// Read it back the way a runtime does, through the CDI library's registry.
	cache, err := cdiapi.NewCache(cdiapi.WithSpecDirs(dir), cdiapi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("the runtime's CDI cache rejects the spec: %v", errs)
	}
	for _, name := range []string{"rockchip.com/npu=npu0-core0", "rockchip.com/npu=npu0-core1"} {
		dev := cache.GetDevice(name)
		if dev == nil {
			t.Fatalf("device %s not in the spec; devices: %v", name, cache.ListDevices())
		}
		var got []string
		for _, n := range dev.ContainerEdits.DeviceNodes {
			got = append(got, n.Path+":"+n.HostPath+":"+n.Permissions)
		}
		if len(got) != 2 || got[0] != "/dev/dri/renderD129:/dev/dri/renderD129:rw" || got[1] != "/dev/dri/card1:/dev/dri/card1:rw" {
			t.Errorf("%s device nodes = %v", name, got)
		}
	}

	// Unchanged content is not rewritten.
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write([]string{"npu0-core0", "npu0-core1"}, nodes); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Errorf("an unchanged spec was rewritten")
	}

	// No units: the spec goes away.
	if err := w.Write(nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spec after Write(nil): %v, want removed", err)
	}
}
