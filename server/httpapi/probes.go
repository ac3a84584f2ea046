package httpapi

import (
	"container/list"
	"context"
	"net"
	"net/http"
	"sync"
)

// probeListener caps the probe listener's connections at max without ever turning a
// new one away: when it is full, the connection that has waited longest for its
// request to reach a handler is closed to make room. A kubelet's probe sends its
// request as soon as it connects and is answered within milliseconds, so connections
// that sit there (idle, or sending a request head byte by byte) can hold no slot a
// probe needs; refusing the newest instead would let 32 of them keep every probe out.
type probeListener struct {
	net.Listener
	max int

	mu      sync.Mutex
	open    int
	waiting list.List // *probeConn not yet in a handler, oldest first
}

// probeConn is one accepted probe connection.
type probeConn struct {
	net.Conn
	ln    *probeListener
	elem  *list.Element // in ln.waiting until its request reaches a handler; guarded by ln.mu
	close sync.Once
}

func (l *probeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &probeConn{Conn: c, ln: l}
	var evict *probeConn
	l.mu.Lock()
	if l.open >= l.max && l.waiting.Len() > 0 {
		evict = l.waiting.Remove(l.waiting.Front()).(*probeConn)
		evict.elem = nil
	}
	l.open++
	pc.elem = l.waiting.PushBack(pc)
	l.mu.Unlock()
	if evict != nil {
		_ = evict.Close()
	}
	return pc, nil
}

// serving takes the connection out of the eviction queue: its request is being
// answered.
func (c *probeConn) serving() {
	c.ln.mu.Lock()
	defer c.ln.mu.Unlock()
	if c.elem != nil {
		c.ln.waiting.Remove(c.elem)
		c.elem = nil
	}
}

// Close closes the connection once (the server closes it again after an eviction).
func (c *probeConn) Close() error {
	err := net.ErrClosed
	c.close.Do(func() {
		c.ln.mu.Lock()
		if c.elem != nil {
			c.ln.waiting.Remove(c.elem)
			c.elem = nil
		}
		c.ln.open--
		c.ln.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

type probeConnKey struct{}

// probeConnContext keeps the probe connection in its requests' context.
func probeConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*probeConn); ok {
		return context.WithValue(ctx, probeConnKey{}, pc)
	}
	return ctx
}

// markServing tells the probe listener that a request reached its handler, so its
// connection is no longer evicted.
func markServing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pc, ok := r.Context().Value(probeConnKey{}).(*probeConn); ok {
			pc.serving()
		}
		next.ServeHTTP(w, r)
	})
}
