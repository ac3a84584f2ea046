package httpapi

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// keepalive opens a server-sent event stream and writes a comment every interval while
// a streamed request waits (for the model to activate, or for a replica), so clients
// and proxies in between do not give up on a quiet connection. Nothing is written
// before the first interval has passed: a short wait keeps the status free for an
// error.
type keepalive struct {
	w        http.ResponseWriter
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	opened   bool
	writeErr error
}

// startKeepalive starts the comments on w, each saying what the request waits for.
func startKeepalive(w http.ResponseWriter, c clock.Clock, interval time.Duration, what func() string) *keepalive {
	k := &keepalive{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		for {
			select {
			case <-k.stop:
				return
			case <-c.After(interval):
			}
			if !k.comment(what()) {
				return
			}
		}
	}()
	return k
}

func (k *keepalive) comment(text string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.opened {
		h := k.w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Accel-Buffering", "no")
		k.w.WriteHeader(http.StatusOK)
		k.opened = true
	}
	if _, err := fmt.Fprintf(k.w, ": %s\n\n", text); err != nil {
		k.writeErr = err
		return false
	}
	if err := http.NewResponseController(k.w).Flush(); err != nil {
		k.writeErr = err
		return false
	}
	return true
}

// end stops the comments and reports whether the stream was opened (so the reply must
// continue it). After end returns, nothing more is written by the keepalive.
func (k *keepalive) end() bool {
	if k == nil {
		return false
	}
	close(k.stop)
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.opened
}
