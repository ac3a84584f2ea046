// Package footprint finds what a real-kubelet node (the process runtime of
// hack/processcri, the kubelet and the pods they start) leaves on the machine once it
// stopped: a process in one of its namespaces, a handle that keeps one of them alive (an
// open file or a mount of it), a mount under its folders, a network interface or address
// on the host. Take the host's Addresses before the node starts and its Namespaces while
// it runs; after it stopped, Left and NewAddresses must find nothing.
package footprint

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// namespaceKinds are the /proc/PID/ns entries a node may make its own.
var namespaceKinds = []string{"net", "mnt", "pid", "ipc", "uts", "cgroup"}

// Namespaces are the namespaces ("net:[4026532281]", as /proc/PID/ns/* read) of every
// process in the PID namespace of pid, the node's runtime: the node's own and its pods'.
// The caller's own namespaces (the host's) are left out.
func Namespaces(pid int) (map[string]bool, error) {
	nodePID, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return nil, fmt.Errorf("the node's PID namespace: %w", err)
	}
	host := namespacesOf("self")
	out := map[string]bool{}
	for _, p := range pids() {
		if ns, err := os.Readlink(filepath.Join("/proc", p, "ns", "pid")); err != nil || ns != nodePID {
			continue
		}
		for ns := range namespacesOf(p) {
			if !host[ns] {
				out[ns] = true
			}
		}
	}
	return out, nil
}

// Left lists what still holds one of nss or sits under one of dirs: processes in those
// namespaces or with one of them open, mounts of them (nsfs) and mounts under dirs, as
// this process's mount namespace (the host's) shows them.
func Left(nss map[string]bool, dirs ...string) []string {
	var left []string
	for _, p := range pids() {
		if pid, _ := strconv.Atoi(p); Exited(pid) {
			// It holds nothing but its process id until its parent (or, orphaned, the
			// machine's init) reaps it.
			continue
		}
		for ns := range namespacesOf(p) {
			if nss[ns] {
				left = append(left, fmt.Sprintf("process %s (%s) is in %s", p, command(p), ns))
			}
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p, "fd"))
		for _, fd := range fds {
			if target, err := os.Readlink(filepath.Join("/proc", p, "fd", fd.Name())); err == nil && nss[target] {
				left = append(left, fmt.Sprintf("process %s (%s) holds %s open", p, command(p), target))
			}
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		// Field 4 is the mount's root (for nsfs, the namespace), field 5 its mount point.
		if nss[f[3]] {
			left = append(left, "mount of "+f[3]+" at "+f[4])
		}
		for _, d := range dirs {
			if d != "" && (f[4] == d || strings.HasPrefix(f[4], d+"/")) {
				left = append(left, "mount at "+f[4])
			}
		}
	}
	sort.Strings(left)
	return left
}

// Addresses are the host's network interfaces with their addresses, one "name addr" (or
// "name" without any) each.
func Addresses() (map[string]bool, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing the host's interfaces: %w", err)
	}
	out := map[string]bool{}
	for _, i := range ifs {
		addrs, err := i.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", i.Name, err)
		}
		out[i.Name] = true
		for _, a := range addrs {
			out[i.Name+" "+a.String()] = true
		}
	}
	return out, nil
}

// NewAddresses lists the host's interfaces and addresses that are not in before.
func NewAddresses(before map[string]bool) ([]string, error) {
	now, err := Addresses()
	if err != nil {
		return nil, err
	}
	var added []string
	for a := range now {
		if !before[a] {
			added = append(added, a)
		}
	}
	sort.Strings(added)
	return added, nil
}

// pids are the live processes' ids, as /proc names them.
func pids() []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// namespacesOf reads the namespaces of /proc/<pid>; a process that is gone (or a
// zombie, whose ns links cannot be read) has none.
func namespacesOf(pid string) map[string]bool {
	out := map[string]bool{}
	for _, kind := range namespaceKinds {
		if ns, err := os.Readlink(filepath.Join("/proc", pid, "ns", kind)); err == nil {
			out[ns] = true
		}
	}
	return out
}

// Exited reports whether pid has exited: gone, or a zombie waiting to be reaped (its
// files closed). A process on its way out has no command line any more but may still
// hold its files and ports.
func Exited(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	// The state follows the command's closing parenthesis.
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

func command(pid string) string {
	cmd, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	return strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
}
