package footprint

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tcpListen is the state /proc/net/tcp gives a listening socket.
const tcpListen = "0A"

// Listeners maps each of ports to the processes (pid: command) that hold a TCP socket
// listening on it, in this process's network namespace. A port nothing listens on is
// absent. A listener no live process holds (its owner being torn down) is under pid 0.
func Listeners(ports []int) (map[int]map[string]string, error) {
	inodes := map[string]int{} // socket inode -> port
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := listeningSockets(table, ports, inodes); err != nil {
			return nil, err
		}
	}
	out := map[int]map[string]string{}
	held := map[string]bool{}
	for _, p := range pids() {
		fds, _ := os.ReadDir(filepath.Join("/proc", p, "fd"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p, "fd", fd.Name()))
			inode, ok := strings.CutPrefix(target, "socket:[")
			if err != nil || !ok {
				continue
			}
			inode = strings.TrimSuffix(inode, "]")
			if port, ok := inodes[inode]; ok {
				add(out, port, p, command(p))
				held[inode] = true
			}
		}
	}
	for inode, port := range inodes {
		if !held[inode] {
			add(out, port, "0", "socket "+inode+" held by no live process")
		}
	}
	return out, nil
}

func add(m map[int]map[string]string, port int, pid, cmd string) {
	if m[port] == nil {
		m[port] = map[string]string{}
	}
	m[port][pid] = cmd
}

// listeningSockets adds to inodes the listening sockets of table whose port is one of
// ports.
func listeningSockets(table string, ports []int, inodes map[string]int) error {
	f, err := os.Open(table)
	if os.IsNotExist(err) {
		return nil // no IPv6
	}
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	want := map[int]bool{}
	for _, p := range ports {
		want[p] = true
	}
	s := bufio.NewScanner(f)
	s.Scan() // the header
	for s.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(s.Text())
		if len(fields) < 10 || fields[3] != tcpListen {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		port, err := strconv.ParseInt(hexPort, 16, 32)
		if !ok || err != nil {
			return fmt.Errorf("%s: local address %q", table, fields[1])
		}
		if want[int(port)] {
			inodes[fields[9]] = int(port)
		}
	}
	return s.Err()
}
