// Package connlimit caps the client connections the server holds across its
// transports (--max-connections) and keeps file descriptors in reserve
// (--reserved-fds): a connection over the cap, or one that would leave too few
// descriptors for the server's own work (the worker's pipes, model files, the next
// accept), is answered with one error message and closed, instead of waiting unseen in
// the listen backlog or making the server fail with "too many open files".
package connlimit

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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
	// fds returns the descriptors open and the process's limit (tests replace it).
	fds func() (open, limit int, err error)
}

// New returns a limiter allowing max connections at once (max <= 0: no cap) and
// refusing a connection when fewer than reserve file descriptors would remain below
// the process's RLIMIT_NOFILE (reserve <= 0: no check). observer may be nil.
func New(max, reserve int, observer Observer) *Limiter {
	return &Limiter{max: int64(max), reserve: reserve, observer: observer, fds: openFDs}
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
func (l *Limiter) Acquire(transport string) *Refusal {
	var refusal *Refusal
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		refusal = &Refusal{Reason: ReasonMaxConnections, msg: fmt.Sprintf("busy: the server holds its maximum of %d connections; retry later", l.max)}
	} else if l.reserve > 0 {
		if open, limit, err := l.fds(); err == nil && limit-open < l.reserve {
			refusal = &Refusal{Reason: ReasonFileDescriptors, msg: fmt.Sprintf("busy: the server is short of file descriptors (%d open, limit %d, %d kept in reserve); retry later", open, limit, l.reserve)}
		}
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

// Release gives a slot back.
func (l *Limiter) Release(transport string) {
	l.open.Add(-1)
	if l.observer != nil {
		l.observer.ConnClosed(transport)
	}
}

// Listener wraps ln so that each accepted connection takes a slot, given back when it is
// closed. A connection that is refused is handed to reject (which writes its one
// message, saying why, and closes it) and not returned.
func (l *Limiter) Listener(ln net.Listener, transport string, reject func(net.Conn, *Refusal)) net.Listener {
	return &listener{Listener: ln, l: l, transport: transport, reject: reject}
}

type listener struct {
	net.Listener
	l         *Limiter
	transport string
	reject    func(net.Conn, *Refusal)
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		refusal := ln.l.Acquire(ln.transport)
		if refusal == nil {
			return &conn{Conn: c, release: func() { ln.l.Release(ln.transport) }}, nil
		}
		go ln.reject(c, refusal)
	}
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
