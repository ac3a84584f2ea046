// Package cgroup applies a container's CPU and memory limits with cgroup v2, where the
// machine gives the runtime a cgroup to manage, and tells when a container was killed
// for running out of memory.
//
// The runtime never changes a cgroup it was not given: Open takes a parent folder that
// must already be a cgroup v2 folder whose cgroup.subtree_control enables memory and cpu
// (for example a systemd unit with Delegate=yes whose controllers were enabled for its
// children). Each container gets a child folder there, removed with the container.
// Without such a parent (no flag, cgroup v1, or controllers not delegated), Open returns
// a Manager whose Available is false and every method is a no-op; the runtime says so in
// its log once.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Manager creates containers' cgroups under one parent.
type Manager struct {
	parent string
	// Reason says why limits are not applied (empty when Available).
	Reason string
}

// Limits are a container's resources as the kubelet sends them (CRI's
// LinuxContainerResources).
type Limits struct {
	// MemoryLimitBytes is memory.max (0: no limit).
	MemoryLimitBytes int64
	// CPUQuota and CPUPeriod are cpu.max in microseconds (quota 0 or less: no limit).
	CPUQuota, CPUPeriod int64
	// CPUShares is the cgroup v1 weight the kubelet computes from the CPU request,
	// converted to cpu.weight.
	CPUShares int64
}

// Open checks parent (empty: cgroups not used).
func Open(parent string) *Manager {
	if parent == "" {
		return &Manager{Reason: "no --cgroup-parent given"}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(parent, &st); err != nil {
		return &Manager{Reason: fmt.Sprintf("cgroup parent %s: %v", parent, err)}
	}
	const cgroup2Magic = 0x63677270
	if st.Type != cgroup2Magic {
		return &Manager{Reason: fmt.Sprintf("cgroup parent %s is not on a cgroup v2 filesystem", parent)}
	}
	data, err := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
	if err != nil {
		return &Manager{Reason: fmt.Sprintf("cgroup parent %s: %v", parent, err)}
	}
	enabled := strings.Fields(string(data))
	for _, c := range []string{"memory", "cpu"} {
		if !contains(enabled, c) {
			return &Manager{Reason: fmt.Sprintf("cgroup parent %s does not delegate the %s controller to its children (cgroup.subtree_control: %q)", parent, c, strings.TrimSpace(string(data)))}
		}
	}
	return &Manager{parent: parent}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Available reports whether limits are applied.
func (m *Manager) Available() bool { return m.parent != "" }

// Create makes the container's cgroup with its limits and returns an open descriptor
// of its folder, for starting the container in it (the caller closes it); -1 when not
// Available.
func (m *Manager) Create(id string, l Limits) (int, error) {
	if !m.Available() {
		return -1, nil
	}
	dir := filepath.Join(m.parent, id)
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		return -1, fmt.Errorf("creating cgroup %s: %w", dir, err)
	}
	if err := m.Update(id, l); err != nil {
		return -1, err
	}
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening cgroup %s: %w", dir, err)
	}
	return fd, nil
}

// Update writes the limits of an existing container's cgroup.
func (m *Manager) Update(id string, l Limits) error {
	if !m.Available() {
		return nil
	}
	dir := filepath.Join(m.parent, id)
	for file, value := range files(l) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0o600); err != nil {
			return fmt.Errorf("setting %s of cgroup %s: %w", file, dir, err)
		}
	}
	return nil
}

// files are the interface files and values that give limits l.
func files(l Limits) map[string]string {
	out := map[string]string{"memory.max": "max", "cpu.max": "max 100000"}
	if l.MemoryLimitBytes > 0 {
		out["memory.max"] = strconv.FormatInt(l.MemoryLimitBytes, 10)
		// No swap: a container over its limit is OOM-killed, as on a kubelet node.
		out["memory.swap.max"] = "0"
	}
	if l.CPUQuota > 0 {
		period := l.CPUPeriod
		if period <= 0 {
			period = 100000
		}
		out["cpu.max"] = fmt.Sprintf("%d %d", l.CPUQuota, period)
	}
	if l.CPUShares > 0 {
		out["cpu.weight"] = strconv.FormatInt(sharesToWeight(l.CPUShares), 10)
	}
	return out
}

// sharesToWeight converts cgroup v1 cpu.shares [2, 262144] to cgroup v2 cpu.weight
// [1, 10000], as runc does.
func sharesToWeight(shares int64) int64 {
	shares = max(2, min(shares, 262144))
	return 1 + ((shares-2)*9999)/262142
}

// OOMKilled reports whether the kernel killed a process of the container's cgroup for
// running out of memory.
func (m *Manager) OOMKilled(id string) bool {
	if !m.Available() {
		return false
	}
	f, err := os.Open(filepath.Join(m.parent, id, "memory.events"))
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n > 0
		}
	}
	return false
}

// Remove deletes the container's cgroup (its processes must have ended).
func (m *Manager) Remove(id string) error {
	if !m.Available() {
		return nil
	}
	if err := syscall.Rmdir(filepath.Join(m.parent, id)); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("removing cgroup %s: %w", filepath.Join(m.parent, id), err)
	}
	return nil
}

func closeFD(fd int) error { return syscall.Close(fd) }
