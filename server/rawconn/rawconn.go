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
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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

// Socket is a blocking stream socket kept out of the runtime's poller, for a
// connection that one peer writes far more than the other: the worker's end of its
// socketpair, which writes a frame per token. In the poller, each read the peer makes
// wakes the writer's poller thread with a notice of room (a Unix socket signals one
// whenever the peer takes data), a wake-up per token for nothing. Read blocks its
// thread, as a file's does; Write first offers the bytes without waiting, as a raw
// system call, and waits (an ordinary blocking write) only when the socket is full.
// It has no deadlines.
type Socket struct {
	f   *os.File
	raw syscall.RawConn

	sendFn func(fd uintptr) bool // bound once, as Conn's
	p      []byte
	n      int
	err    error
}

// NewSocket returns the socket on f, a blocking descriptor (os.NewFile of one keeps it
// out of the poller). It fails when f is not a stream socket.
func NewSocket(f *os.File) (*Socket, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var typ int
	var serr error
	if err := raw.Control(func(fd uintptr) { typ, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TYPE) }); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("%s is not a socket: %w", f.Name(), serr)
	}
	if typ != syscall.SOCK_STREAM {
		return nil, fmt.Errorf("%s is not a stream socket (type %d)", f.Name(), typ)
	}
	s := &Socket{f: f, raw: raw}
	s.sendFn = s.sendOnce
	return s, nil
}

// Read reads what the socket has, blocking its thread until something comes.
func (s *Socket) Read(p []byte) (int, error) { return s.f.Read(p) }

// Write writes all of p: at once when the socket has room, else waiting for it.
// Writes must not be concurrent (a writer holding its lock makes them).
func (s *Socket) Write(p []byte) (int, error) {
	s.p, s.n, s.err = p, 0, nil
	err := s.raw.Write(s.sendFn)
	n, serr := s.n, s.err
	s.p, s.err = nil, nil
	switch {
	case err != nil:
		return n, err
	case errors.Is(serr, syscall.EAGAIN):
		m, err := s.f.Write(p[n:])
		return n + m, err
	case serr != nil:
		return n, &os.PathError{Op: "write", Path: s.f.Name(), Err: serr}
	}
	return n, nil
}

// sendOnce offers s.p to the socket without waiting (MSG_DONTWAIT), and without the
// SIGPIPE a write to a closed peer raises (MSG_NOSIGNAL).
func (s *Socket) sendOnce(fd uintptr) bool {
	for s.n < len(s.p) {
		p := s.p[s.n:]
		r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), //nolint:gosec // a raw send(2) of p, which outlives the call
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			s.err = e
			return true
		}
		s.n += int(r) //nolint:gosec // at most len(p)
	}
	return true
}

// Close closes the socket (after a Read blocked in it returns: the peer's close ends it).
func (s *Socket) Close() error { return s.f.Close() }

// Dup returns a new descriptor (close-on-exec) of conn's socket, for another process:
// it shares the socket, and its non-blocking mode, with conn. conn must give access to
// its descriptor (a *net.UnixConn, *net.TCPConn or a Conn).
func Dup(conn any) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("duplicate a %T: it has no descriptor", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("duplicate the connection's descriptor: %w", err)
	}
	fd, dupErr := -1, error(nil)
	err = raw.Control(func(s uintptr) {
		fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return -1, fmt.Errorf("duplicate the connection's descriptor: %w", err)
	}
	return fd, nil
}
