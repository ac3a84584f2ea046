// Package workerproto is the framed protocol between rkllm-server's supervisor and its
// worker process over a socketpair.
//
// A frame is a 4-byte big-endian length (of everything after it), a 1-byte message
// type (Op), an 8-byte big-endian call id and a payload in the compact binary encoding
// of this package. Requests carry the supervisor's call id; the worker answers each with
// one Reply carrying the same id, preceded for a Run by its Deliveries. Abort and
// IsRunning are answered while a Run is in progress. The worker sends Hello (id 0)
// first. The encoding is binary rather than JSON so that tokens and float arrays
// (hidden states, logits) cost little on the hot path. A Run may have the worker write
// its tokens to the client itself (Direct, with the client's socket passed on a
// Handoff); those tokens' Deliveries say what was written (OpDirectDelivery), and a
// Reclaim stops it.
package workerproto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"
)

// headerSize is the bytes of a frame after the length: the op and the call id.
const headerSize = 1 + 8

// DefaultMaxFrameBytes bounds one frame when no limit is given. Frames carry whole
// logits or hidden-state arrays, which reach tens of megabytes for large vocabularies.
const DefaultMaxFrameBytes = 256 << 20

// ErrFrameTooLarge is returned for a frame over the limit, before it is read or
// written.
var ErrFrameTooLarge = errors.New("frame too large")

// FrameTooLargeError is ErrFrameTooLarge for a frame this side was about to write: the
// connection stays usable.
type FrameTooLargeError struct {
	Op          Op
	Size, Limit int
}

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("write %s frame of %d bytes (limit %d): %v", e.Op, e.Size, e.Limit, ErrFrameTooLarge)
}

// Unwrap makes errors.Is(err, ErrFrameTooLarge) true.
func (e *FrameTooLargeError) Unwrap() error { return ErrFrameTooLarge }

// sizer is a message that knows its encoded size, so an oversized one is refused
// before a frame's worth of memory is spent encoding it.
type sizer interface{ size() int }

// Frame is one decoded frame header and its raw payload.
type Frame struct {
	Op      Op
	ID      uint64
	Payload []byte
}

// Conn reads and writes frames. Reads must come from one goroutine; writes are safe
// for concurrent use and each frame is flushed at once (a token must not wait in a
// buffer).
type Conn struct {
	rwc      io.ReadWriteCloser
	r        *bufio.Reader
	rbuf     []byte // Receive's payload buffer, reused (frames up to keepBytes)
	maxFrame int

	rsize     int         // the size of the frame Receive read last
	wmu       sync.Locker // one frame at a time; a FrameSink's lock when it has one
	w         *bufio.Writer
	wbuf      []byte    // Send's frame buffer, reused (frames up to keepBytes)
	wdeadline time.Time // the write deadline last set
	// sent, when set, is told the size of each frame Send wrote over keepBytes (whose
	// memory is free once it returns).
	sent func(size int)
}

// OnLargeSend has f called with the size of each frame Send writes that is larger than
// the Conn keeps a buffer for, after it is written. Call it before the Conn is used.
func (c *Conn) OnLargeSend(f func(size int)) { c.sent = f }

// LastReceived is the size of the frame the last Receive read.
func (c *Conn) LastReceived() int { return c.rsize }

// keepBytes is the largest frame buffer a Conn keeps for the next frame: a token's
// frame is tens of bytes, and a large result's memory is given back once it is sent.
const keepBytes = 64 << 10

// NewConn wraps rwc. maxFrame bounds the size of one frame in either direction; zero
// means DefaultMaxFrameBytes.
func NewConn(rwc io.ReadWriteCloser, maxFrame int) *Conn {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrameBytes
	}
	maxFrame = min(maxFrame, math.MaxInt32) // the length field is 32 bits
	return &Conn{rwc: rwc, r: bufio.NewReaderSize(rwc, 64<<10), wmu: &sync.Mutex{}, w: bufio.NewWriterSize(rwc, 64<<10), maxFrame: maxFrame}
}

// MaxFrame is the largest frame this connection reads or writes.
func (c *Conn) MaxFrame() int { return c.maxFrame }

// Send encodes and writes one message, with one write call. A message over the frame
// limit is refused with a *FrameTooLargeError before anything is written. The frame is
// encoded into a buffer the Conn keeps, so a token's delivery costs no allocation here.
func (c *Conn) Send(id uint64, m Message) error {
	if s, ok := m.(sizer); ok {
		if size := headerSize + s.size(); size > c.maxFrame {
			return &FrameTooLargeError{Op: m.Op(), Size: size, Limit: c.maxFrame}
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	e := encoder{b: append(c.wbuf[:0], make([]byte, 4+headerSize)...)}
	m.encode(&e)
	if cap(e.b) <= keepBytes {
		c.wbuf = e.b[:0]
	}
	size := len(e.b) - 4
	if size > c.maxFrame {
		return &FrameTooLargeError{Op: m.Op(), Size: size, Limit: c.maxFrame}
	}
	putHeader(e.b, size, m.Op(), id)
	if err := c.setWriteDeadline(time.Time{}); err != nil {
		return err
	}
	_, err := c.rwc.Write(e.b)
	if c.sent != nil && len(e.b) > keepBytes {
		c.sent(len(e.b))
	}
	return err
}

// putHeader writes a frame's length, op and id into the first bytes of b.
func putHeader(b []byte, size int, op Op, id uint64) {
	binary.BigEndian.PutUint32(b[0:], uint32(size)) //nolint:gosec // size <= maxFrame, an int32
	b[4] = byte(op)
	binary.BigEndian.PutUint64(b[5:], id)
}

// setWriteDeadline sets the connection's write deadline when it changes (with wmu
// held). A connection without deadlines (the worker's blocking socket) is never asked
// for the zero one.
func (c *Conn) setWriteDeadline(t time.Time) error {
	if t.Equal(c.wdeadline) {
		return nil
	}
	d, ok := c.rwc.(deadliner)
	if !ok {
		return nil
	}
	if err := d.SetWriteDeadline(t); err != nil {
		return err
	}
	c.wdeadline = t
	return nil
}

// encode returns m's payload, or a *FrameTooLargeError when its frame would be over the
// limit.
func (c *Conn) encode(m Message) ([]byte, error) {
	if s, ok := m.(sizer); ok {
		if size := headerSize + s.size(); size > c.maxFrame {
			return nil, &FrameTooLargeError{Op: m.Op(), Size: size, Limit: c.maxFrame}
		}
	}
	payload := Encode(m)
	if size := headerSize + len(payload); size > c.maxFrame {
		return nil, &FrameTooLargeError{Op: m.Op(), Size: size, Limit: c.maxFrame}
	}
	return payload, nil
}

// WriteFrame writes one frame and flushes it.
func (c *Conn) WriteFrame(op Op, id uint64, payload []byte) error {
	return c.writeFrame(time.Time{}, op, id, payload)
}

// deadliner is a connection that supports write deadlines (net.Conn).
type deadliner interface{ SetWriteDeadline(t time.Time) error }

// writeFrame writes one frame and flushes it. A non-zero deadline, on a connection that
// supports deadlines, makes the write fail with os.ErrDeadlineExceeded when the peer has
// not taken the whole frame by then: the stream may then end inside the frame, so the
// caller must close the connection.
func (c *Conn) writeFrame(deadline time.Time, op Op, id uint64, payload []byte) error {
	size := headerSize + len(payload)
	if size > c.maxFrame {
		return &FrameTooLargeError{Op: op, Size: size, Limit: c.maxFrame}
	}
	var hdr [4 + headerSize]byte
	putHeader(hdr[:], size, op, id)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.setWriteDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := c.w.Write(payload); err != nil {
		return err
	}
	return c.w.Flush()
}

// ReadFrame reads the next frame. The length is checked against the limit before the
// payload is allocated.
func (c *Conn) ReadFrame() (Frame, error) { return c.readFrame(nil) }

// readFrame reads the next frame, its payload into buf when it fits.
func (c *Conn) readFrame(buf []byte) (Frame, error) {
	var hdr [4 + headerSize]byte
	if _, err := io.ReadFull(c.r, hdr[:4]); err != nil {
		return Frame{}, err
	}
	size := int(binary.BigEndian.Uint32(hdr[:4]))
	if size < headerSize {
		return Frame{}, fmt.Errorf("frame length %d is shorter than its header", size)
	}
	if size > c.maxFrame {
		return Frame{}, fmt.Errorf("read frame of %d bytes (limit %d): %w", size, c.maxFrame, ErrFrameTooLarge)
	}
	if _, err := io.ReadFull(c.r, hdr[4:]); err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	f := Frame{Op: Op(hdr[4]), ID: binary.BigEndian.Uint64(hdr[5:])}
	if n := size - headerSize; n <= cap(buf) {
		f.Payload = buf[:n]
	} else {
		f.Payload = make([]byte, n)
	}
	if _, err := io.ReadFull(c.r, f.Payload); err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	return f, nil
}

// Receive reads and decodes the next message. Decoding copies what it keeps, so the
// payload's buffer serves the next frame.
func (c *Conn) Receive() (id uint64, m Message, err error) {
	f, err := c.readFrame(c.rbuf)
	if err != nil {
		return 0, nil, err
	}
	c.rsize = 4 + headerSize + len(f.Payload)
	if cap(f.Payload) <= keepBytes && cap(f.Payload) > cap(c.rbuf) {
		c.rbuf = f.Payload[:0]
	}
	m, err = Decode(f.Op, f.Payload)
	return f.ID, m, err
}

// Close closes the underlying connection.
func (c *Conn) Close() error { return c.rwc.Close() }

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
