package workerproto

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned for calls on a client whose connection has ended; errors.Is
// matches the error that ended it too (see Client.Err).
var ErrClosed = errors.New("worker connection closed")

// ErrWriteTimeout ends a client's connection when the worker did not take a frame
// within the write timeout: it is not reading its socket (stopped, or wedged).
var ErrWriteTimeout = errors.New("the worker did not read its socket (stopped, or wedged)")

// ClientOptions configure a Client.
type ClientOptions struct {
	// WriteTimeout bounds how long a request may wait to be taken by the worker, from
	// Start until its whole frame is written; past it the connection is closed with
	// ErrWriteTimeout. Zero means no limit (tests over pipes).
	WriteTimeout time.Duration
}

// Client is the supervisor's end of the protocol: it sends requests and routes the
// worker's Deliveries and Replies to them by call id.
//
// Requests are written by a goroutine of the client's own, in the order they were
// started, so Start never blocks its caller: a worker that stops reading cannot hold
// up the supervisor's executor, whose watchdog must stay free to kill it. The frames
// waiting are few by construction (the supervisor has one request on the model at a
// time, plus an abort, a heartbeat and one shared is_running), so the queue needs no
// bound of its own; the write timeout bounds how long they wait.
type Client struct {
	conn         *Conn
	hello        chan *Hello
	writeTimeout time.Duration
	lastHeard    atomic.Int64 // unix nanoseconds of the last frame read

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*Pending
	out     []outFrame
	err     error // why the connection ended; set once
	done    chan struct{}
	wake    chan struct{} // a frame was queued
}

// outFrame is a request waiting for the writer.
type outFrame struct {
	op       Op
	id       uint64
	payload  []byte
	deadline time.Time
}

// Pending is a request in flight.
type Pending struct {
	id         uint64
	onDelivery func(*Delivery)
	done       chan struct{}
	reply      *Reply
	err        error
}

// ID is the request's call id (what an Abort names).
func (p *Pending) ID() uint64 { return p.id }

// Done is closed when the reply arrived or the connection ended.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Result returns the reply, or the error that ended the connection first. Call after
// Done is closed.
func (p *Pending) Result() (*Reply, error) { return p.reply, p.err }

// NewClient starts reading from and writing to conn. The first message must be Hello.
func NewClient(conn *Conn, opts ClientOptions) *Client {
	c := &Client{conn: conn, hello: make(chan *Hello, 1), writeTimeout: opts.WriteTimeout,
		pending: map[uint64]*Pending{}, done: make(chan struct{}), wake: make(chan struct{}, 1)}
	c.lastHeard.Store(time.Now().UnixNano())
	go c.readLoop()
	go c.writeLoop()
	return c
}

// Hello waits for the worker's Hello message.
func (c *Client) Hello(ctx context.Context) (*Hello, error) {
	select {
	case h := <-c.hello:
		return h, nil
	case <-c.done:
		return nil, c.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Start queues a request and returns at once. A request too large for one frame is
// refused with a *FrameTooLargeError and the connection goes on. onDelivery (may be
// nil) receives the Deliveries of a Run on the client's read goroutine: it must return
// promptly, and it must not call the client.
func (c *Client) Start(m Message, onDelivery func(*Delivery)) (*Pending, error) {
	payload, err := c.conn.encode(m)
	if err != nil {
		return nil, fmt.Errorf("send %s: %w", m.Op(), err)
	}
	p := &Pending{onDelivery: onDelivery, done: make(chan struct{})}
	f := outFrame{op: m.Op(), payload: payload}
	if c.writeTimeout > 0 {
		f.deadline = time.Now().Add(c.writeTimeout)
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.next++
	f.id = c.next
	p.id = f.id
	c.pending[f.id] = p
	c.out = append(c.out, f)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return p, nil
}

// Call sends a request and waits for its reply. When ctx ends first the call is
// abandoned (its reply is discarded when it comes).
func (c *Client) Call(ctx context.Context, m Message) (*Reply, error) {
	p, err := c.Start(m, nil)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
		return p.Result()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (wrapping ErrClosed), or nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// LastHeard is when the last frame from the worker arrived (the client's start before
// the first).
func (c *Client) LastHeard() time.Time { return time.Unix(0, c.lastHeard.Load()) }

// Close closes the connection; pending calls fail with ErrClosed.
func (c *Client) Close() error { return c.conn.Close() }

// fail ends the connection with err, unless it has ended already.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.mu.Unlock()
	_ = c.conn.Close()
}

// writeLoop writes the queued frames in order, each by its deadline.
func (c *Client) writeLoop() {
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		for {
			c.mu.Lock()
			if len(c.out) == 0 || c.err != nil {
				c.mu.Unlock()
				break
			}
			f := c.out[0]
			c.out[0] = outFrame{}
			c.out = c.out[1:]
			c.mu.Unlock()
			if err := c.conn.writeFrame(f.deadline, f.op, f.id, f.payload); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					err = fmt.Errorf("%w: a %s request was not taken within %s", ErrWriteTimeout, f.op, c.writeTimeout)
				} else {
					err = fmt.Errorf("write %s: %w", f.op, err)
				}
				c.fail(err)
				return
			}
		}
	}
}

func (c *Client) readLoop() {
	var err error
	for {
		var id uint64
		var m Message
		id, m, err = c.conn.Receive()
		if err != nil {
			break
		}
		c.lastHeard.Store(time.Now().UnixNano())
		if err = c.route(id, m); err != nil {
			break
		}
	}
	// A protocol violation leaves the stream unusable; closing makes the worker exit.
	c.fail(err)
	c.mu.Lock()
	pending := c.pending
	c.pending = nil
	c.out = nil
	closeErr := c.err
	c.mu.Unlock()
	for _, p := range pending {
		p.err = closeErr
		close(p.done)
	}
	close(c.done)
}

func (c *Client) route(id uint64, m Message) error {
	switch m := m.(type) {
	case *Hello:
		select {
		case c.hello <- m:
			return nil
		default:
			return errors.New("second hello from the worker")
		}
	case *Delivery:
		c.mu.Lock()
		p := c.pending[id]
		c.mu.Unlock()
		if p != nil && p.onDelivery != nil {
			p.onDelivery(m)
		}
		return nil
	case *Reply:
		c.mu.Lock()
		p := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if p != nil {
			p.reply = m
			close(p.done)
		}
		return nil
	}
	return fmt.Errorf("unexpected %s message from the worker", m.Op())
}
