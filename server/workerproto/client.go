package workerproto

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrClosed is returned for calls on a client whose connection has ended; errors.Is
// matches the error that ended it too (see Client.Err).
var ErrClosed = errors.New("worker connection closed")

// Client is the supervisor's end of the protocol: it sends requests and routes the
// worker's Deliveries and Replies to them by call id.
type Client struct {
	conn  *Conn
	hello chan *Hello

	mu      sync.Mutex
	next    uint64
	pending map[uint64]*Pending
	err     error // why the connection ended; set once
	done    chan struct{}
}

// Pending is a request in flight.
type Pending struct {
	onDelivery func(*Delivery)
	done       chan struct{}
	reply      *Reply
	err        error
}

// Done is closed when the reply arrived or the connection ended.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Result returns the reply, or the error that ended the connection first. Call after
// Done is closed.
func (p *Pending) Result() (*Reply, error) { return p.reply, p.err }

// NewClient starts reading from conn. The first message must be Hello.
func NewClient(conn *Conn) *Client {
	c := &Client{conn: conn, hello: make(chan *Hello, 1), pending: map[uint64]*Pending{}, done: make(chan struct{})}
	go c.readLoop()
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

// Start sends a request. onDelivery (may be nil) receives the Deliveries of a Run on the
// client's read goroutine: it must return promptly, and it must not call the client.
func (c *Client) Start(m Message, onDelivery func(*Delivery)) (*Pending, error) {
	p := &Pending{onDelivery: onDelivery, done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.next++
	id := c.next
	c.pending[id] = p
	c.mu.Unlock()
	if err := c.conn.Send(id, m); err != nil {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		return nil, fmt.Errorf("send %s: %w", m.Op(), err)
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

// Close closes the connection; pending calls fail with ErrClosed.
func (c *Client) Close() error { return c.conn.Close() }

func (c *Client) readLoop() {
	var err error
	for {
		var id uint64
		var m Message
		id, m, err = c.conn.Receive()
		if err != nil {
			break
		}
		if err = c.route(id, m); err != nil {
			break
		}
	}
	// A protocol violation leaves the stream unusable; closing makes the worker exit.
	_ = c.conn.Close()
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %w", ErrClosed, err)
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, p := range pending {
		p.err = c.err
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
