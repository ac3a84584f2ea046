package footprint

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLeftFindsWhatHoldsANamespace: a process in new PID, network and mount namespaces
// (as the node's runtime is) shows in Left; once it was killed, its zombie does not (it
// holds nothing), but an open handle on its network namespace and a bind mount of it
// do (they keep the namespace alive); once both are gone, nothing does, and the host
// gained no interface or address.
func TestLeftFindsWhatHoldsANamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (namespaces and a bind mount)")
	}
	before, err := Addresses()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), "sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNET | syscall.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := false
	t.Cleanup(func() {
		if !reaped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	pid := strconv.Itoa(cmd.Process.Pid)
	nsFile := filepath.Join("/proc", pid, "ns", "net")

	nss, err := Namespaces(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	netNS, err := os.Readlink(nsFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(nss) != 3 || !nss[netNS] {
		t.Fatalf("Namespaces = %v; want the new PID, network and mount namespaces, %s among them", nss, netNS)
	}
	if left := Left(nss); !contains(left, "process "+pid+" (sleep infinity) is in "+netNS) {
		t.Errorf("Left while the process runs = %q; want it in %s", left, netNS)
	}

	fd, err := unix.Open(nsFile, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(fd) }()
	target := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(nsFile, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting the network namespace: %v", err)
	}
	mounted := true
	defer func() {
		if mounted {
			_ = unix.Unmount(target, unix.MNT_DETACH)
		}
	}()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitZombie(t, pid)

	left := Left(nss)
	if contains(left, "process "+pid+" ") {
		t.Errorf("Left = %q; want nothing of the zombie %s, which holds no namespace", left, pid)
	}
	if !contains(left, "process "+strconv.Itoa(os.Getpid())) || !contains(left, "holds "+netNS+" open") {
		t.Errorf("Left after the process ended = %q; want this process's open handle on %s", left, netNS)
	}
	if !contains(left, "mount of "+netNS+" at "+target) {
		t.Errorf("Left after the process ended = %q; want the mount of %s at %s", left, netNS, target)
	}
	if left := Left(nss, filepath.Dir(target)); !contains(left, "mount at "+target) {
		t.Errorf("Left with the mount's folder = %q; want the mount at %s", left, target)
	}
	_ = cmd.Wait()
	reaped = true

	if err := unix.Close(fd); err != nil {
		t.Fatal(err)
	}
	fd = -1
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

// waitZombie waits until the killed process has ended (its parent, this test, has not
// reaped it yet).
func waitZombie(t *testing.T, pid string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n, _ := strconv.Atoi(pid); Exited(n) {
			return
		}
	}
	t.Fatalf("process %s still runs after SIGKILL", pid)
}

func contains(lines []string, part string) bool {
	for _, l := range lines {
		if strings.Contains(l, part) {
			return true
		}
	}
	return false
}
