package connlimit

import (
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// direntBufs holds the buffers openFDs reads directory entries into.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// fdLimit is the soft RLIMIT_NOFILE.
func fdLimit() (int, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	return int(min(rl.Cur, uint64(1<<31-1))), nil //nolint:gosec // capped to an int32
}

// openFDs counts the process's open file descriptors (the entries of /proc/self/fd,
// read with getdents into a pooled buffer, so counting costs no allocation per
// descriptor) and returns them with the soft RLIMIT_NOFILE.
func openFDs() (open, limit int, err error) {
	limit, err = fdLimit()
	if err != nil {
		return 0, 0, err
	}
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open /proc/self/fd: %w", err)
	}
	defer func() { _ = unix.Close(fd) }()
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return 0, 0, fmt.Errorf("read /proc/self/fd: %w", err)
		}
		if n <= 0 {
			break
		}
		for off := 0; off < n; {
			// struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			name := buf[off+19]
			if name != '.' { // "." and ".."
				open++
			}
			off += reclen
		}
	}
	// The descriptor counting them is not one the server holds.
	return open - 1, limit, nil
}
