// Package outbuf is the bounded output buffer of one client connection. Messages for
// the client (responses, token notifications) are queued without blocking and written
// by a goroutine of the buffer's own, so a client that reads slowly never holds up the
// code producing them (the supervisor's executor, which also runs the watchdog). A
// client that lets its buffer fill up, or does not take a write within the write
// timeout, is cut off: the buffer calls its OnFail once, and the transport closes the
// connection, which aborts the client's runs.
package outbuf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// ErrOverflow is returned by Send when the client has not taken what was queued for it
// and the message would take the buffer over its bound.
var ErrOverflow = errors.New("client output buffer full: the client is not reading")

// ErrClosed is returned by Send after the buffer failed or was closed.
var ErrClosed = errors.New("client output buffer closed")

// Options configure a Buffer. Zero values take the defaults in brackets.
type Options struct {
	// MaxBytes bounds the bytes queued and not yet written (DefaultMaxBytes). A message
	// larger than the bound is still taken when nothing else is queued, so one large
	// result (logits) can always be sent.
	MaxBytes int
	// WriteTimeout bounds one write to the client (30s).
	WriteTimeout time.Duration
	// SetWriteDeadline sets the deadline of the next write (a net.Conn's, or an HTTP
	// response's through http.ResponseController); nil for none.
	SetWriteDeadline func(time.Time) error
	// Flush is called after each write (an HTTP response's flush); nil for none.
	Flush func() error
	// OnFail is called once, on the buffer's goroutine or in Send, when the client is
	// cut off (the buffer overflowed or a write failed or timed out; not when Close
	// gives up at its deadline, nor on Abort); the transport closes the connection and
	// cancels its requests there. It must not call the Buffer.
	OnFail func(err error)
	// Written reports the bytes written, for metrics; nil for none.
	Written func(n int)
}

// DefaultMaxBytes is the default bound of a client's output buffer.
const DefaultMaxBytes = 4 << 20

// Buffer queues messages for one client and writes them in order.
type Buffer struct {
	w    io.Writer
	opts Options

	mu      sync.Mutex
	queue   [][]byte
	queued  int
	err     error // set once: why the buffer stopped taking messages
	closing bool  // Close called: write what is queued, then stop
	wake    chan struct{}
	done    chan struct{} // closed when the goroutine has ended
	failed  sync.Once
}

// New starts a buffer writing to w.
func New(w io.Writer, opts Options) *Buffer {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	b := &Buffer{w: w, opts: opts, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go b.run()
	return b
}

// Send queues msg (which the buffer keeps: the caller must not change it) and returns
// at once. It fails with ErrOverflow when the client has fallen behind by more than
// MaxBytes, which also cuts the client off, and with ErrClosed afterwards.
func (b *Buffer) Send(msg []byte) error {
	b.mu.Lock()
	if b.err != nil || b.closing {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.queued > 0 && b.queued+len(msg) > b.opts.MaxBytes {
		err := fmt.Errorf("%w (%d bytes waiting, limit %d)", ErrOverflow, b.queued, b.opts.MaxBytes)
		b.err = err
		b.queue, b.queued = nil, 0
		b.mu.Unlock()
		b.fail(err)
		b.interrupt()
		b.signal()
		return err
	}
	b.queue = append(b.queue, msg)
	b.queued += len(msg)
	b.mu.Unlock()
	b.signal()
	return nil
}

// Queued is the number of bytes waiting to be written.
func (b *Buffer) Queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.queued
}

// Err is why the buffer stopped taking messages, or nil.
func (b *Buffer) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Close stops taking messages, writes what is queued (until ctx ends), and ends the
// goroutine. It returns the error that cut the client off, if any, or ctx's error
// when the queue could not be written in time (what was left is dropped). Nothing
// writes to the client after Close returns.
func (b *Buffer) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closing = true
	b.mu.Unlock()
	b.signal()
	select {
	case <-b.done:
	case <-ctx.Done():
		b.abandon(ctx.Err())
		<-b.done
		return ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Abort drops what is queued and ends the goroutine, interrupting a write in progress
// (its deadline is moved to now). Nothing writes to the client after it returns.
func (b *Buffer) Abort() {
	b.abandon(ErrClosed)
	<-b.done
}

func (b *Buffer) abandon(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.queue, b.queued = nil, 0
	b.mu.Unlock()
	b.interrupt()
	b.signal()
}

// interrupt makes a write in progress fail at once. b.err is set before, and write
// checks it after arming its own deadline, so the write either sees b.err or gets
// this deadline.
func (b *Buffer) interrupt() {
	if b.opts.SetWriteDeadline != nil {
		_ = b.opts.SetWriteDeadline(time.Now())
	}
}

func (b *Buffer) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *Buffer) fail(err error) {
	b.failed.Do(func() {
		if b.opts.OnFail != nil {
			b.opts.OnFail(err)
		}
	})
}

// run writes queued messages in order; everything queued at the time of a write goes
// out in one write call.
func (b *Buffer) run() {
	defer close(b.done)
	var batch []byte
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && b.err == nil && !b.closing {
			b.mu.Unlock()
			<-b.wake
			b.mu.Lock()
		}
		if b.err != nil || len(b.queue) == 0 {
			b.mu.Unlock()
			return
		}
		msgs := b.queue
		b.queue = nil
		b.mu.Unlock()

		batch = batch[:0]
		for _, m := range msgs {
			batch = append(batch, m...)
		}
		if err := b.write(batch); err != nil {
			b.mu.Lock()
			stopped := b.err // an overflow, Close's deadline or Abort: already handled
			if stopped == nil {
				b.err = err
			}
			b.queue, b.queued = nil, 0
			b.mu.Unlock()
			if stopped == nil {
				b.fail(err)
			}
			return
		}
		b.mu.Lock()
		b.queued -= len(batch)
		b.mu.Unlock()
		if cap(batch) > 1<<20 {
			batch = nil // do not keep a large result's buffer for the connection's life
		}
	}
}

func (b *Buffer) write(p []byte) error {
	if b.opts.SetWriteDeadline != nil {
		_ = b.opts.SetWriteDeadline(time.Now().Add(b.opts.WriteTimeout))
	}
	if err := b.Err(); err != nil {
		return err
	}
	n, err := b.w.Write(p)
	if b.opts.Written != nil && n > 0 {
		b.opts.Written(n)
	}
	if err == nil && b.opts.Flush != nil {
		err = b.opts.Flush()
	}
	if err != nil {
		return fmt.Errorf("write to the client: %w", err)
	}
	return nil
}
