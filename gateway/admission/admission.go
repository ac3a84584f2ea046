// Package admission bounds what the gateway takes in: per model, a gate holding at most
// Capacity requests in flight (the model's ready replicas times the requests each may
// have) with a bounded first-come-first-served queue behind it, where requests wait
// while the model activates or while every replica is busy; and per client, a limit on
// requests at once, so one client cannot fill every queue.
package admission

import (
	"container/list"
	"context"
	"errors"
	"sync"
)

// ErrQueueFull is returned when a request would have to wait and the queue is full.
var ErrQueueFull = errors.New("the queue is full")

// Gate admits requests to one model: at most Capacity at once, the others waiting in
// order, at most MaxWaiting of them.
type Gate struct {
	mu         sync.Mutex
	capacity   int
	inUse      int
	maxWaiting int
	waiting    list.List // of *waiter, oldest first
	// changed is closed (and replaced) whenever a request leaves the queue or the
	// gate, for those waiting for the model to go idle.
	changed chan struct{}
}

type waiter struct {
	ready chan struct{} // closed when admitted
}

// NewGate returns a gate with no capacity (nothing admitted until SetCapacity) and room
// for maxWaiting requests in its queue.
func NewGate(maxWaiting int) *Gate {
	return &Gate{maxWaiting: maxWaiting, changed: make(chan struct{})}
}

// Acquire admits the request at once when the gate has room and no one is waiting
// before it, or queues it until it has, or returns ErrQueueFull when the queue is full,
// or ctx's error when ctx ends first. The caller calls release (once) when the request
// has ended.
func (g *Gate) Acquire(ctx context.Context) (release func(), err error) {
	g.mu.Lock()
	if g.waiting.Len() == 0 && g.inUse < g.capacity {
		g.inUse++
		g.mu.Unlock()
		return g.releaser(), nil
	}
	if g.waiting.Len() >= g.maxWaiting {
		g.mu.Unlock()
		return nil, ErrQueueFull
	}
	w := &waiter{ready: make(chan struct{})}
	el := g.waiting.PushBack(w)
	g.mu.Unlock()

	select {
	case <-w.ready:
		return g.releaser(), nil
	case <-ctx.Done():
		g.mu.Lock()
		defer g.mu.Unlock()
		select {
		case <-w.ready:
			// Admitted just as ctx ended: give the place back.
			g.inUse--
			g.admit()
		default:
			g.waiting.Remove(el)
		}
		g.signal()
		return nil, ctx.Err()
	}
}

func (g *Gate) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.inUse--
			g.admit()
			g.signal()
		})
	}
}

// SetCapacity changes how many requests may be in flight (the ready replicas times
// the requests each may take). Lowering it admits no one until enough requests end.
func (g *Gate) SetCapacity(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.capacity = max(n, 0)
	g.admit()
}

// admit lets waiting requests in while there is room; g.mu is held.
func (g *Gate) admit() {
	for g.inUse < g.capacity && g.waiting.Len() > 0 {
		w := g.waiting.Remove(g.waiting.Front()).(*waiter) //nolint:forcetypeassert // the list holds only waiters
		g.inUse++
		close(w.ready)
	}
}

// signal wakes those waiting for a change; g.mu is held.
func (g *Gate) signal() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// State is a gate's counts.
type State struct {
	// Capacity, InUse and Waiting: the room, the requests in flight and those queued.
	Capacity, InUse, Waiting int
}

// Idle reports whether no request is in flight or waiting.
func (s State) Idle() bool { return s.InUse == 0 && s.Waiting == 0 }

// State returns the gate's counts, and a channel closed at the next change of InUse or
// Waiting.
func (g *Gate) State() (State, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return State{Capacity: g.capacity, InUse: g.inUse, Waiting: g.waiting.Len()}, g.changed
}

// ErrClientLimit is returned when a client already has its limit of requests.
var ErrClientLimit = errors.New("too many requests from this client at once")

// Clients limits the requests each client has at once. The zero limit is no limit.
type Clients struct {
	limit int
	mu    sync.Mutex
	count map[string]int
}

// NewClients returns a limiter allowing each client limit requests at once (0: no
// limit).
func NewClients(limit int) *Clients {
	return &Clients{limit: limit, count: map[string]int{}}
}

// Acquire counts a request of client, or returns ErrClientLimit. release (call once)
// ends it. Only clients with requests are remembered, so the map is bounded by the
// requests in flight.
func (c *Clients) Acquire(client string) (release func(), err error) {
	if c.limit <= 0 {
		return func() {}, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.count[client] >= c.limit {
		return nil, ErrClientLimit
	}
	c.count[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.count[client]--; c.count[client] <= 0 {
				delete(c.count, client)
			}
		})
	}, nil
}
