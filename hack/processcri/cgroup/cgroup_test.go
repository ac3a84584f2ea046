package cgroup

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    Limits
		want map[string]string
	}{
		{"no limits", Limits{}, map[string]string{"memory.max": "max", "cpu.max": "max 100000"}},
		{"memory and cpu", Limits{MemoryLimitBytes: 2 << 30, CPUQuota: 50000, CPUPeriod: 100000, CPUShares: 512},
			map[string]string{"memory.max": "2147483648", "memory.swap.max": "0", "cpu.max": "50000 100000", "cpu.weight": "20"}},
		{"quota without a period", Limits{CPUQuota: 20000}, map[string]string{"memory.max": "max", "cpu.max": "20000 100000"}},
		{"smallest shares", Limits{CPUShares: 2}, map[string]string{"memory.max": "max", "cpu.max": "max 100000", "cpu.weight": "1"}},
	} {
		if got := files(tc.l); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: files = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestOpenRefusesWhatItCannotManage(t *testing.T) {
	if m := Open(""); m.Available() || m.Reason == "" {
		t.Errorf("Open(\"\") = %+v; want unavailable with a reason", m)
	}
	dir := t.TempDir() // not a cgroup v2 filesystem
	m := Open(dir)
	if m.Available() || !strings.Contains(m.Reason, "not on a cgroup v2 filesystem") {
		t.Errorf("Open(%s) = %+v; want unavailable: not cgroup v2", dir, m)
	}
	// Unavailable means every operation does nothing.
	if fd, err := m.Create("c1", Limits{MemoryLimitBytes: 1}); fd != -1 || err != nil {
		t.Errorf("Create on an unavailable manager = %d, %v", fd, err)
	}
	if m.OOMKilled("c1") || m.Update("c1", Limits{}) != nil || m.Remove("c1") != nil {
		t.Error("an unavailable manager did something")
	}
}

// TestManagerWritesLimits drives a Manager over a folder laid out like a cgroup (the
// filesystem check is what Open adds; the machines here have no delegated cgroup v2).
func TestManagerWritesLimits(t *testing.T) {
	parent := t.TempDir()
	m := &Manager{parent: parent}
	fd, err := m.Create("c1", Limits{MemoryLimitBytes: 1 << 20, CPUQuota: 10000})
	if err != nil || fd < 0 {
		t.Fatalf("Create = %d, %v", fd, err)
	}
	_ = closeFD(fd)
	if got, _ := os.ReadFile(filepath.Join(parent, "c1", "memory.max")); string(got) != "1048576" {
		t.Errorf("memory.max = %q", got)
	}
	if err := os.WriteFile(filepath.Join(parent, "c1", "memory.events"), []byte("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !m.OOMKilled("c1") {
		t.Error("OOMKilled = false with oom_kill 1 in memory.events")
	}
	if m.OOMKilled("c2") {
		t.Error("OOMKilled = true for a container without a cgroup")
	}
}
