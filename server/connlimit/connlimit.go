// Package connlimit caps the client connections the server holds across its
// transports (--max-connections) and keeps file descriptors in reserve
// (--reserved-fds): a connection over the cap, or one that would leave too few
// descriptors for the server's own work (the worker's socketpair at a restart, the
// probes, model files), is answered with one error message and closed at once, on the
// accepting goroutine, instead of waiting unseen in the listen backlog or making the
// server fail with "too many open files". Refusing costs a few system calls and holds
// no descriptor and no goroutine, so a flood of connections cannot eat the reserve.
package connlimit

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reasons a connection is refused (the reason label of the rejection metric).
const (
	ReasonMaxConnections  = "max_connections"
	ReasonFileDescriptors = "file_descriptors"
)

// Observer is told about connections (for metrics); methods must be cheap.
type Observer interface {
	ConnOpened(transport string)
	ConnClosed(transport string)
	ConnRejected(transport, reason string)
}

// Limiter counts connections against a cap shared by every listener wrapped with it.
type Limiter struct {
	max      int64
	reserve  int
	open     atomic.Int64
	observer Observer
	// fds returns the descriptors open and the process's limit, rlimit the limit alone
	// (tests replace them).
	fds    func() (open, limit int, err error)
	rlimit func() (int, error)

	countMu      sync.Mutex
	counted      int       // descriptors open at the last count
	countedLimit int       // the limit then
	countedAt    time.Time // when (zero: never)
	sinceCount   int       // connections taken since
}

// Counting the open descriptors lists /proc/self/fd, which costs more the more
// connections are held (hundreds of microseconds a connection on a loaded machine). A
// count is reused while it, plus the connections taken since, stays recountMargin
// times the reserve below the limit, for at most recountAfter: what the server opens
// besides connections meanwhile (a worker's restart, a model file) is a handful of
// descriptors, well within that margin.
const (
	recountMargin = 4
	recountAfter  = time.Second
)

// New returns a limiter allowing max connections at once (max <= 0: no cap) and
// refusing a connection when fewer than reserve file descriptors would remain below
// the process's RLIMIT_NOFILE (reserve <= 0: no check). observer may be nil.
func New(max, reserve int, observer Observer) *Limiter {
	return &Limiter{max: int64(max), reserve: reserve, observer: observer, fds: openFDs, rlimit: fdLimit}
}

// Max is the cap (0: none).
func (l *Limiter) Max() int { return int(max(l.max, 0)) }

// Open is the number of connections held now.
func (l *Limiter) Open() int { return int(l.open.Load()) }

// Refusal says why a connection was refused; Error is for the client.
type Refusal struct {
	Reason string
	msg    string
}

func (r *Refusal) Error() string { return r.msg }

// Acquire takes a slot for a new connection of transport, or says why not (the
// rejection is counted).
func (l *Limiter) Acquire(transport string) *Refusal { return l.acquire(transport, -1) }

// acquire is Acquire for a connection whose descriptor is fd (-1: unknown). The cap is
// checked first and costs an atomic add. Descriptors are counted only for a connection
// within the cap, and not even then when fd alone proves too few are left: the kernel
// gives out the lowest free descriptor, so descriptors 0 to fd are all open.
func (l *Limiter) acquire(transport string, fd int) *Refusal {
	var refusal *Refusal
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		refusal = &Refusal{Reason: ReasonMaxConnections, msg: fmt.Sprintf("busy: the server holds its maximum of %d connections; retry later", l.max)}
	} else if l.reserve > 0 {
		refusal = l.checkFDs(fd)
	}
	if refusal != nil {
		l.open.Add(-1)
		if l.observer != nil {
			l.observer.ConnRejected(transport, refusal.Reason)
		}
		return refusal
	}
	if l.observer != nil {
		l.observer.ConnOpened(transport)
	}
	return nil
}

// checkFDs refuses a connection that would leave fewer than the reserve free.
func (l *Limiter) checkFDs(fd int) *Refusal {
	short := func(open, limit int) *Refusal {
		return &Refusal{Reason: ReasonFileDescriptors, msg: fmt.Sprintf("busy: the server is short of file descriptors (%d open, limit %d, %d kept in reserve); retry later", open, limit, l.reserve)}
	}
	if fd >= 0 {
		if limit, err := l.rlimit(); err == nil && limit-(fd+1) < l.reserve {
			return short(fd+1, limit)
		}
	}
	if l.countStillHolds() {
		return nil
	}
	open, limit, err := l.fds()
	if err != nil {
		return nil
	}
	l.countMu.Lock()
	l.counted, l.countedLimit, l.countedAt, l.sinceCount = open, limit, time.Now(), 0
	l.countMu.Unlock()
	if limit-open < l.reserve {
		return short(open, limit)
	}
	return nil
}

// countStillHolds reports whether the last count of descriptors, with the
// connections taken since and this one, is far enough below the limit to skip a new
// count; it counts this connection then.
func (l *Limiter) countStillHolds() bool {
	l.countMu.Lock()
	defer l.countMu.Unlock()
	if l.countedAt.IsZero() || time.Since(l.countedAt) >= recountAfter {
		return false
	}
	if l.countedLimit-(l.counted+l.sinceCount+1) < recountMargin*l.reserve {
		return false
	}
	l.sinceCount++
	return true
}

// Release gives a slot back.
func (l *Limiter) Release(transport string) {
	l.open.Add(-1)
	if l.observer != nil {
		l.observer.ConnClosed(transport)
	}
}

// Listener wraps ln so that each accepted connection takes a slot, given back when it is
// closed. A refused connection is answered with answer's bytes (the one message that
// says why) and closed before Accept looks at the next one: the write does not wait (a
// new connection's send buffer holds a short message), so a client that sends nothing
// or reads nothing costs no more than one that behaves.
func (l *Limiter) Listener(ln net.Listener, transport string, answer func(*Refusal) []byte) net.Listener {
	return &listener{Listener: ln, l: l, transport: transport, answer: answer}
}

type listener struct {
	net.Listener
	l         *Limiter
	transport string
	answer    func(*Refusal) []byte
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if refusal := ln.l.acquire(ln.transport, descriptor(c)); refusal != nil {
			refuse(c, ln.answer(refusal))
			continue
		}
		return &conn{Conn: c, release: func() { ln.l.Release(ln.transport) }}, nil
	}
}

// descriptor is c's file descriptor, or -1.
func descriptor(c net.Conn) int {
	fd := -1
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			_ = raw.Control(func(d uintptr) { fd = int(d) }) //nolint:gosec // descriptors fit an int
		}
	}
	return fd
}

// refuse answers a refused connection and closes it without waiting for the client.
// What the client has sent so far is read first (without waiting): closing a TCP
// connection with unread data resets it, and a reset can make the client lose the
// answer. Then the answer, a FIN, and the close.
func refuse(c net.Conn, answer []byte) {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			_ = raw.Control(func(d uintptr) {
				fd := int(d) //nolint:gosec // descriptors fit an int
				var buf [4096]byte
				for range 16 { // the socket is non-blocking: EAGAIN once nothing is left
					if n, err := unix.Read(fd, buf[:]); n <= 0 || err != nil {
						break
					}
				}
				_, _ = unix.Write(fd, answer)
				_ = unix.Shutdown(fd, unix.SHUT_WR)
			})
		}
	}
	_ = c.Close()
}

type conn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn exposes the wrapped connection's descriptor (the socket transport polls
// it to tell a hang-up from a half-close).
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("connection has no descriptor")
}
