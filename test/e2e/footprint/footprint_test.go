package footprint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLeftFindsWhatHoldsANamespace: a process in new PID, network and mount namespaces
// (as the node's runtime is) shows in Left; after it was killed, an open handle on its
// network namespace and a bind mount of it still do (they keep the namespace alive);
// once both are gone, nothing does, and the host gained no interface or address.
func TestLeftFindsWhatHoldsANamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces and a bind mount)")
	}
	before, err := Addresses()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "unshare", "--pid", "--net", "--mount", "--fork", "--kill-child", "sleep", "infinity")
	if err := cmd.Start(); err != nil {
		t.Skipf("unshare (util-linux): %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	child := childOf(t, cmd.Process.Pid)

	nss, err := Namespaces(child)
	if err != nil {
		t.Fatal(err)
	}
	netNS, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(child), "ns", "net"))
	if err != nil {
		t.Fatal(err)
	}
	if len(nss) != 3 || !nss[netNS] {
		t.Fatalf("Namespaces = %v; want the new PID, network and mount namespaces, %s among them", nss, netNS)
	}
	if left := Left(nss); !contains(left, "process "+strconv.Itoa(child)+" (sleep infinity) is in "+netNS) {
		t.Errorf("Left while the process runs = %q; want it in %s", left, netNS)
	}

	fd, err := unix.Open(filepath.Join("/proc", strconv.Itoa(child), "ns", "net"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join("/proc", strconv.Itoa(child), "ns", "net"), target, "", unix.MS_BIND, ""); err != nil {
		_ = unix.Close(fd)
		t.Fatalf("bind-mounting the network namespace: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			_ = unix.Unmount(target, unix.MNT_DETACH)
		}
	}()
	_ = cmd.Process.Kill()
	<-exited
	waitNotIn(t, nss, child)

	left := Left(nss)
	if !contains(left, "process "+strconv.Itoa(os.Getpid())) || !contains(left, "holds "+netNS+" open") {
		t.Errorf("Left after the process ended = %q; want this process's open handle on %s", left, netNS)
	}
	if !contains(left, "mount of "+netNS+" at "+target) {
		t.Errorf("Left after the process ended = %q; want the mount of %s at %s", left, netNS, target)
	}
	if left := Left(nss, filepath.Dir(target)); !contains(left, "mount at "+target) {
		t.Errorf("Left with the mount's folder = %q; want the mount at %s", left, target)
	}

	_ = unix.Close(fd)
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if left := Left(nss, filepath.Dir(target)); len(left) > 0 {
		t.Errorf("Left once the handle and the mount are gone = %q; want nothing", left)
	}
	if added, err := NewAddresses(before); err != nil || len(added) > 0 {
		t.Errorf("NewAddresses = %v, %v; want none (the namespace's loopback is not the host's)", added, err)
	}
}

// childOf waits for the first child of pid (unshare's, in the new namespaces).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	path := filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(pid), "children")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		data, _ := os.ReadFile(path)
		if f := strings.Fields(string(data)); len(f) > 0 {
			child, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatal(err)
			}
			// Its namespaces are the new ones once it has run past unshare's fork.
			if cmdline, _ := os.ReadFile(filepath.Join("/proc", f[0], "cmdline")); strings.HasPrefix(string(cmdline), "sleep") {
				return child
			}
		}
	}
	t.Fatalf("unshare (pid %d) started no sleep", pid)
	return 0
}

// waitNotIn waits until the killed process is no longer in the namespaces.
func waitNotIn(t *testing.T, nss map[string]bool, pid int) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !contains(Left(nss), "process "+strconv.Itoa(pid)+" ") {
			return
		}
	}
	t.Fatalf("process %d is still in %v after SIGKILL", pid, nss)
}

func contains(lines []string, part string) bool {
	for _, l := range lines {
		if strings.Contains(l, part) {
			return true
		}
	}
	return false
}
