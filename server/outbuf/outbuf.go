// Package outbuf is the bounded output buffer of one client connection. Messages for
// the client (responses, token notifications) are queued without blocking and written
// by a goroutine of the buffer's own, so a client that reads slowly never holds up the
// code producing them (the goroutine that relays the worker's tokens, and the
// supervisor's executor, which runs the watchdog). When the transport can try a write
// without waiting (a Unix socket), a message that finds the buffer empty is written at
// once by the sender instead, so a token reaches a client that keeps up without waking
// the buffer's goroutine. A client that lets its buffer fill up, or does not take a
// write within the write timeout, is cut off: the buffer calls its OnFail once, and the
// transport closes the connection, which aborts the client's runs.
package outbuf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/rawconn"
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
	// WriteTimeout bounds one write to the client (30s): a write gets at least nine
	// tenths of it (all but a second, for timeouts over ten seconds).
	WriteTimeout time.Duration
	// SetWriteDeadline sets the deadline of the next write (a net.Conn's, or an HTTP
	// response's through http.ResponseController); nil for none.
	SetWriteDeadline func(time.Time) error
	// Flush is called after each write (an HTTP response's flush); nil for none.
	Flush func() error
	// TryWrite, when set, writes what the client's socket takes at once without
	// waiting (see NonBlockingWriter) and returns how many bytes it took; Send uses it
	// for a message that finds nothing queued. nil: every write goes through the
	// buffer's goroutine.
	TryWrite func(p []byte) (int, error)
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

// keepBytes is the largest batch buffer kept for the connection's next writes: a large
// result's memory is given back once it is written.
const keepBytes = 64 << 10

// Buffer queues messages for one client and writes them in order.
type Buffer struct {
	w    io.Writer
	opts Options

	mu      sync.Mutex
	pending []byte // queued bytes, in order, not yet taken by a write
	spare   []byte // the last batch's buffer, for the next
	queued  int    // bytes queued and not yet written (pending and the batch being written)
	writing bool   // a write is in progress (the goroutine's, or Send's attempt)
	err     error  // set once: why the buffer stopped taking messages
	closing bool   // Close called: write what is queued, then stop
	// reclaim, while the connection is lent (Lend), asks the other writer to stop; it
	// is called once, by the first Send (or Close) that finds the connection lent.
	reclaim func()
	wake    chan struct{}
	done    chan struct{} // closed when the goroutine has ended
	failed  sync.Once

	deadline time.Time // the write deadline the goroutine set last (only it reads this)
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

// Send queues a copy of msg (the caller may reuse msg once Send returns) and returns
// without waiting for the client. It fails with ErrOverflow when the client has
// fallen behind by more than MaxBytes, which also cuts the client off, and with
// ErrClosed afterwards. With TryWrite, a message that finds nothing queued is written
// at once, as far as the client's socket takes it.
func (b *Buffer) Send(msg []byte) error {
	b.mu.Lock()
	if b.err != nil || b.closing {
		b.mu.Unlock()
		return ErrClosed
	}
	if b.queued > 0 && b.queued+len(msg) > b.opts.MaxBytes {
		err := fmt.Errorf("%w (%d bytes waiting, limit %d)", ErrOverflow, b.queued, b.opts.MaxBytes)
		b.stop(err)
		b.mu.Unlock()
		b.fail(err)
		b.interrupt()
		b.signal()
		return err
	}
	if b.opts.TryWrite != nil && b.queued == 0 && !b.writing {
		return b.sendNow(msg)
	}
	b.pending = append(b.pending, msg...)
	b.queued += len(msg)
	reclaim := b.takeReclaim()
	b.mu.Unlock()
	reclaim()
	b.signal()
	return nil
}

// sendNow writes msg at once as far as the client's socket takes it and queues the
// rest. It is called with b.mu held and releases it.
func (b *Buffer) sendNow(msg []byte) error {
	b.writing = true
	b.mu.Unlock()
	n, err := b.opts.TryWrite(msg)
	n = max(n, 0)
	if b.opts.Written != nil && n > 0 {
		b.opts.Written(n)
	}
	b.mu.Lock()
	b.writing = false
	if err != nil {
		err = fmt.Errorf("write to the client: %w", err)
		stopped := b.err != nil
		b.stop(err)
		b.mu.Unlock()
		if !stopped {
			b.fail(err)
		}
		b.signal() // the goroutine waits for the attempt to end
		return err
	}
	rest := msg[n:]
	b.putFirst(rest) // what other senders queued while the attempt ran goes after it
	// The goroutine sleeps unless it has work that waited for the attempt.
	wake := len(b.pending) > 0 || b.closing || b.err != nil
	stopped := b.err != nil && len(rest) > 0
	b.mu.Unlock()
	if wake {
		b.signal()
	}
	if stopped {
		return ErrClosed
	}
	return nil
}

// Lend hands the connection to another writer (the worker writing a run's tokens
// itself) when nothing waits to be written: until Return, Send queues without writing
// and the goroutine writes nothing. The first message queued meanwhile calls reclaim,
// which must have the other writer stop and Return soon (Close and Abort call it too,
// and wait for the Return). It reports false when something is queued or being
// written, or the buffer has stopped.
func (b *Buffer) Lend(reclaim func()) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil || b.closing || b.queued > 0 || b.writing {
		return false
	}
	b.writing = true // as for Send's own attempt: nobody else writes
	b.reclaim = reclaim
	return true
}

// takeReclaim returns the reclaim of a lent connection, once (with b.mu held).
func (b *Buffer) takeReclaim() func() {
	f := b.reclaim
	b.reclaim = nil
	if f == nil {
		return func() {}
	}
	return f
}

// Return ends a Lend. rest, the end of a message the other writer wrote only in part,
// goes out first, then what was queued meanwhile.
func (b *Buffer) Return(rest []byte) {
	b.mu.Lock()
	b.writing = false
	b.reclaim = nil
	b.putFirst(rest)
	wake := len(b.pending) > 0 || b.closing || b.err != nil
	b.mu.Unlock()
	if wake {
		b.signal()
	}
}

// putFirst queues rest in front of what is pending (with b.mu held).
func (b *Buffer) putFirst(rest []byte) {
	if len(rest) > 0 && b.err == nil {
		b.pending = append(append(b.takeSpare(len(rest)+len(b.pending)), rest...), b.pending...)
		b.queued += len(rest)
	}
}

// takeSpare returns an empty buffer for at least n bytes, reusing the last batch's.
func (b *Buffer) takeSpare(n int) []byte {
	buf := b.spare[:0]
	b.spare = nil
	if cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	return buf
}

// stop records why the buffer stopped taking messages and drops what is queued (with
// b.mu held).
func (b *Buffer) stop(err error) {
	if b.err == nil {
		b.err = err
	}
	b.pending, b.spare, b.queued = nil, nil, 0
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
	reclaim := b.takeReclaim()
	b.mu.Unlock()
	reclaim()
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
	b.stop(err)
	reclaim := b.takeReclaim()
	b.mu.Unlock()
	reclaim()
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

// next waits for bytes to write and takes them as one batch; it returns nil when the
// goroutine should end (the buffer failed, or it was closed and everything is out).
// It ends only after Send's attempt in progress, if any: nothing writes after done.
func (b *Buffer) next() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		switch {
		case b.writing: // Send's attempt: wait for its end
		case b.err != nil:
			return nil
		case len(b.pending) > 0:
			batch := b.pending
			b.pending = b.takeSpare(0)
			b.writing = true
			return batch
		case b.closing:
			return nil
		}
		b.mu.Unlock()
		<-b.wake
		b.mu.Lock()
	}
}

// run writes the queued bytes in order; everything queued at the time of a write goes
// out in one write call.
func (b *Buffer) run() {
	defer close(b.done)
	for {
		batch := b.next()
		if batch == nil {
			return
		}
		err := b.write(batch)
		b.mu.Lock()
		b.writing = false
		if err != nil {
			stopped := b.err != nil // an overflow, Close's deadline or Abort: already handled
			b.stop(err)
			b.mu.Unlock()
			if !stopped {
				b.fail(err)
			}
			return
		}
		b.queued -= len(batch)
		if cap(batch) <= keepBytes && b.spare == nil {
			b.spare = batch[:0] // a large result's buffer is not kept for the connection's life
		}
		b.mu.Unlock()
	}
}

// write writes one batch on the buffer's goroutine within the write timeout. The
// deadline is moved only when less than WriteTimeout minus its slack is left: each
// write still gets nearly the whole timeout, and a stream of tokens does not move a
// timer (and wake the network poller) for every one.
func (b *Buffer) write(p []byte) error {
	if b.opts.SetWriteDeadline != nil {
		now := time.Now()
		if b.deadline.Sub(now) < b.opts.WriteTimeout-min(b.opts.WriteTimeout/10, time.Second) {
			b.deadline = now.Add(b.opts.WriteTimeout)
			_ = b.opts.SetWriteDeadline(b.deadline)
		}
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

// NonBlockingWriter returns a TryWrite for a connection that gives access to its
// descriptor (a *net.UnixConn or *net.TCPConn): one write(2) on the non-blocking
// descriptor, which takes what the socket has room for and never waits. A full socket
// is not an error (the bytes go through the buffer's goroutine then). nil when conn
// has no descriptor. The function is for one Buffer: it is not safe for concurrent
// use (a Buffer makes one attempt at a time).
func NonBlockingWriter(conn any) func(p []byte) (int, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawWriter{raw: raw}
	w.once = w.writeOnce // bound once: a method value made per call would be allocated
	return w.write
}

// rawWriter makes single write attempts on a descriptor without allocating.
type rawWriter struct {
	raw  syscall.RawConn
	once func(fd uintptr) bool
	p    []byte
	n    int
	err  error
}

func (w *rawWriter) write(p []byte) (int, error) {
	w.p = p
	err := w.raw.Write(w.once)
	n, werr := w.n, w.err
	w.p, w.err = nil, nil
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		// A deadline left by an earlier write of the goroutine's has passed; the
		// goroutine sets a fresh one.
		return 0, nil
	case err != nil:
		return 0, err
	case errors.Is(werr, syscall.EAGAIN), errors.Is(werr, syscall.EINTR):
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return n, nil
}

// writeOnce is the RawConn callback: one attempt, never a wait for room.
func (w *rawWriter) writeOnce(fd uintptr) bool {
	w.n, w.err = rawconn.Write(int(fd), w.p) // raw: see rawconn
	return true
}
