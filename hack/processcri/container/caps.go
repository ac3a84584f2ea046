package container

import (
	"fmt"
	"strings"
)

// capNames are the Linux capabilities by number (linux/capability.h).
var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// defaultCaps is what containerd and CRI-O give a root container without changes.
var defaultCaps = []string{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

// capSet is a set of capabilities as the kernel's 64-bit mask.
type capSet uint64

func capNumber(name string) (int, error) {
	n := strings.TrimPrefix(strings.ToUpper(name), "CAP_")
	for i, c := range capNames {
		if c == n {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown capability %q", name)
}

// capabilities is the set a container's process gets: every capability when
// privileged, else the defaults with add and drop applied (ALL in either means every
// capability; drops win).
func capabilities(privileged bool, add, drop []string) (capSet, error) {
	all := capSet(1)<<len(capNames) - 1
	if privileged {
		return all, nil
	}
	var set capSet
	apply := func(names []string, on bool) error {
		for _, name := range names {
			var bits capSet
			if strings.EqualFold(name, "ALL") {
				bits = all
			} else {
				n, err := capNumber(name)
				if err != nil {
					return err
				}
				bits = 1 << n
			}
			if on {
				set |= bits
			} else {
				set &^= bits
			}
		}
		return nil
	}
	if err := apply(defaultCaps, true); err != nil {
		return 0, err
	}
	if err := apply(add, true); err != nil {
		return 0, err
	}
	if err := apply(drop, false); err != nil {
		return 0, err
	}
	return set, nil
}
