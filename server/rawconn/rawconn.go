// Package rawconn reads and writes a connection's non-blocking descriptor with raw
// system calls, which the Go scheduler does not see.
//
// Every ordinary system call marks its thread as in a system call, and the first one
// after the whole process was idle wakes the scheduler's monitor thread (sysmon), which
// then polls every 20 µs until the process is idle again. A server that sleeps between
// tokens (a few per second from an NPU, a thousand from a fast model) pays that wake-up,
// and the CPU of the polling, for each token on the token's own path. A read or write
// on a non-blocking socket never blocks, so it needs none of the scheduler's care: made
// raw, it costs only itself. Waiting for a descriptor is still the runtime poller's, so
// deadlines, Close and the rest of net.Conn behave as before.
package rawconn

import (
	"errors"
	"io"
	"net"
	"syscall"
	"unsafe"
)

// Conn is a net.Conn whose Read and Write are raw system calls on its descriptor.
type Conn struct {
	net.Conn
	raw syscall.RawConn

	// The RawConn callbacks, bound once (a method value made per call is allocated),
	// and their arguments and results: one Read and one Write at a time, as a
	// bufio.Reader and a writer holding its lock make them.
	readFn, writeFn func(fd uintptr) bool
	rp, wp          []byte
	rn, wn          int
	rerr, werr      error
}

// Wrap returns c with raw reads and writes when it has a descriptor (a *net.UnixConn or
// *net.TCPConn), else c itself.
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	rc := &Conn{Conn: c, raw: raw}
	rc.readFn, rc.writeFn = rc.readOnce, rc.writeAll
	return rc
}

// Read reads what the descriptor has, waiting in the runtime's poller when it has nothing.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rp = p
	err := c.raw.Read(c.readFn)
	n, rerr := c.rn, c.rerr
	c.rp, c.rerr = nil, nil
	if err != nil {
		return n, c.opError("read", err)
	}
	if rerr != nil {
		return n, c.opError("read", rerr)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting in the runtime's poller while the socket is full.
func (c *Conn) Write(p []byte) (int, error) {
	c.wp, c.wn = p, 0
	err := c.raw.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wp, c.werr = nil, nil
	if err != nil {
		return n, c.opError("write", err)
	}
	if werr != nil {
		return n, c.opError("write", werr)
	}
	return n, nil
}

// SyscallConn exposes the descriptor, as the wrapped connection does.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return c.raw, nil }

// readOnce makes one read; false asks the poller to wait for data.
func (c *Conn) readOnce(fd uintptr) bool {
	for {
		n, err := Read(int(fd), c.rp)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			return false
		}
		c.rn, c.rerr = max(n, 0), err
		return true
	}
}

// writeAll writes what the socket takes; false asks the poller to wait for room.
func (c *Conn) writeAll(fd uintptr) bool {
	for c.wn < len(c.wp) {
		n, err := Write(int(fd), c.wp[c.wn:])
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EAGAIN):
			return false
		case err != nil:
			c.werr = err
			return true
		}
		c.wn += n
	}
	return true
}

func (c *Conn) opError(op string, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read is read(2) on a non-blocking descriptor, as a raw system call. It must not be
// used on a descriptor that can block: the thread would hold its P while it waits.
func Read(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p))) //nolint:gosec // a raw read(2) into p, which outlives the call
	if e != 0 {
		return -1, e
	}
	return int(r), nil //nolint:gosec // at most len(p)
}

// Write is write(2) on a non-blocking descriptor, as a raw system call (see Read).
func Write(fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p))) //nolint:gosec // a raw write(2) of p, which outlives the call
	if e != 0 {
		return -1, e
	}
	return int(r), nil //nolint:gosec // at most len(p)
}
