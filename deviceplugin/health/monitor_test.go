package health_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/health"
)

// eventTimeout is how long a change may take to arrive. The periodic scan is set to an
// hour, so a pass proves the file event did the work.
const eventTimeout = 5 * time.Second

func startMonitor(t *testing.T, root string, interval time.Duration) <-chan discovery.Inventory {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan discovery.Inventory)
	done := make(chan error, 1)
	m := &health.Monitor{Root: root, Interval: interval, Log: testr.New(t)}
	go func() { done <- m.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return out
}

func next(t *testing.T, ch <-chan discovery.Inventory, what string) discovery.Inventory {
	t.Helper()
	timer := time.NewTimer(eventTimeout)
	defer timer.Stop()
	select {
	case inv := <-ch:
		return inv
	case <-timer.C:
		t.Fatalf("no inventory %s within %v", what, eventTimeout)
		return discovery.Inventory{}
	}
}

func TestMonitorSeesNodeRemovalThroughFileEvents(t *testing.T) {
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ch := startMonitor(t, root, time.Hour)
	if inv := next(t, ch, "at start"); len(inv.MissingNodes()) != 0 || inv.Stack != discovery.StackDRM {
		t.Fatalf("first inventory = %+v", inv)
	}
	render := filepath.Join(root, "dev/dri/renderD129")
	if err := os.Remove(render); err != nil {
		t.Fatal(err)
	}
	if inv := next(t, ch, "after removing renderD129"); len(inv.MissingNodes()) != 1 || inv.MissingNodes()[0] != "/dev/dri/renderD129" {
		t.Fatalf("after removal: missing %v", inv.MissingNodes())
	}
	if err := os.WriteFile(render, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if inv := next(t, ch, "after restoring renderD129"); len(inv.MissingNodes()) != 0 {
		t.Fatalf("after restore: missing %v", inv.MissingNodes())
	}
}

func TestMonitorPeriodicScanSeesDriverVersionChange(t *testing.T) {
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Only debugfs holds the version here, and no watch covers debugfs: only the periodic
	// scan can see it change.
	if err := os.Remove(filepath.Join(root, "sys/module/rknpu/version")); err != nil {
		t.Fatal(err)
	}
	ch := startMonitor(t, root, 20*time.Millisecond)
	if inv := next(t, ch, "at start"); inv.DriverVersion.String() != "0.9.8" {
		t.Fatalf("first version = %v", inv.DriverVersion)
	}
	if err := discoverytest.WriteFile(root, "sys/kernel/debug/rknpu/version", "RKNPU driver: v0.9.6"); err != nil {
		t.Fatal(err)
	}
	if inv := next(t, ch, "after the debugfs version changed"); inv.DriverVersion.String() != "0.9.6" {
		t.Fatalf("version = %v", inv.DriverVersion)
	}
}

func TestMonitorSeesDevDriAppear(t *testing.T) {
	root, err := discoverytest.RK3588().Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "dev/dri")); err != nil {
		t.Fatal(err)
	}
	ch := startMonitor(t, root, 20*time.Millisecond)
	if inv := next(t, ch, "at start"); len(inv.MissingNodes()) != 2 {
		t.Fatalf("missing at start = %v", inv.MissingNodes())
	}
	for _, n := range []string{"dev/dri/renderD129", "dev/dri/card1"} {
		if err := discoverytest.WriteFile(root, n, ""); err != nil {
			t.Fatal(err)
		}
	}
	for {
		inv := next(t, ch, "with /dev/dri back")
		if len(inv.MissingNodes()) == 0 {
			return
		}
	}
}
