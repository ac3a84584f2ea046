// Package connlimit caps the client connections the server holds across its
// transports (--max-connections): a connection over the cap is answered with one error
// message and closed, instead of waiting unseen in the listen backlog.
package connlimit

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// Observer is told about connections (for metrics); methods must be cheap.
type Observer interface {
	ConnOpened(transport string)
	ConnClosed(transport string)
	ConnRejected(transport string)
}

// Limiter counts connections against a cap shared by every listener wrapped with it.
type Limiter struct {
	max      int64
	open     atomic.Int64
	observer Observer
}

// New returns a limiter allowing max connections at once; max <= 0 means no cap.
// observer may be nil.
func New(max int, observer Observer) *Limiter {
	return &Limiter{max: int64(max), observer: observer}
}

// Max is the cap (0: none).
func (l *Limiter) Max() int { return int(max(l.max, 0)) }

// Open is the number of connections held now.
func (l *Limiter) Open() int { return int(l.open.Load()) }

// Acquire takes a slot for a new connection of transport; false when the cap is
// reached (the rejection is counted).
func (l *Limiter) Acquire(transport string) bool {
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		l.open.Add(-1)
		if l.observer != nil {
			l.observer.ConnRejected(transport)
		}
		return false
	}
	if l.observer != nil {
		l.observer.ConnOpened(transport)
	}
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
// closed. A connection over the cap is handed to reject (which writes its one message
// and closes it) and not returned.
func (l *Limiter) Listener(ln net.Listener, transport string, reject func(net.Conn)) net.Listener {
	return &listener{Listener: ln, l: l, transport: transport, reject: reject}
}

type listener struct {
	net.Listener
	l         *Limiter
	transport string
	reject    func(net.Conn)
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ln.l.Acquire(ln.transport) {
			return &conn{Conn: c, release: func() { ln.l.Release(ln.transport) }}, nil
		}
		go ln.reject(c)
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
