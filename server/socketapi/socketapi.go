// Package socketapi serves JSON-RPC 2.0 on a Unix socket: one JSON message (a request,
// a notification or a batch) per line in each direction, several requests in flight per
// connection, answers matched by id, and notifications (tokens, asynchronous results)
// interleaved between them.
package socketapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/hangup"
	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
	"github.com/rkllm-operator/rkllm-operator/server/rawconn"
)

// Transport is the Peer.Transport of socket connections.
const Transport = "unix"

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("socketapi: server closed")

// Options configure the server. Zero values take the defaults in brackets.
type Options struct {
	// Path of the socket file. An existing socket file there is replaced; any other
	// file is an error.
	Path string
	// Mode of the socket file (0660).
	Mode os.FileMode
	// Admin allows state-changing methods on this transport.
	Admin bool
	// MaxMessageBytes bounds one line (16 MiB). A longer line is answered with -32008 and
	// skipped; the connection goes on.
	MaxMessageBytes int
	// WriteTimeout bounds one write to a client (30s); a client that stops reading is
	// disconnected, which aborts its runs.
	WriteTimeout time.Duration
	// OutputBufferBytes bounds what may wait for a client to read it
	// (outbuf.DefaultMaxBytes); a client that falls further behind is disconnected,
	// which aborts its runs, instead of growing the server's memory or holding the model.
	OutputBufferBytes int
	// IdleTimeout closes a connection that sent nothing for this long while it had
	// nothing in flight (5m); a message begun and not finished within it closes the
	// connection too. Negative: never.
	IdleTimeout time.Duration
	// Limiter caps connections across transports; nil for none.
	Limiter *connlimit.Limiter
	// Budget, when set, is the server's budget of bytes in flight: each message pays
	// for its line as it is read, and a line that does not fit is answered busy
	// (-32002) and skipped.
	Budget *inflight.Budget
	// Hangup, when set, tells at once that a client which stopped sending has closed
	// its connection (without it the connection is polled four times a second).
	Hangup *hangup.Watcher
	// Observer counts bytes; nil for none.
	Observer Observer
	Log      logr.Logger
}

// Observer counts the bytes the transport reads and writes, and the clients it cuts
// off for not reading.
type Observer interface {
	BytesIn(transport string, n int)
	BytesOut(transport string, n int)
	ClientCutOff(transport string)
}

// Server is a JSON-RPC server on a Unix socket.
type Server struct {
	d    *jsonrpc.Dispatcher
	opts Options

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	closed   bool
	inflight sync.WaitGroup // requests being served, across connections
	nextID   atomic.Uint64
}

// New returns a server for d.
func New(d *jsonrpc.Dispatcher, opts Options) *Server {
	if opts.Mode == 0 {
		opts.Mode = 0o660
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = 16 << 20
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	return &Server{d: d, opts: opts, conns: map[*conn]struct{}{}}
}

// Listen creates the socket file and returns its listener (for Serve). A stale socket
// left by a crashed server is replaced.
func (s *Server) Listen() (net.Listener, error) {
	path := s.opts.Path
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { //nolint:gosec // clients in other containers of the pod reach the socket
		return nil, fmt.Errorf("socket folder: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("socket path %s exists and is not a socket; remove it or choose another --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener must not unlink the file on Close: Shutdown does, after the last
	// response is out.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, s.opts.Mode); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return ln, nil
}

// ListenAndServe listens on Options.Path and serves until Shutdown or Close.
func (s *Server) ListenAndServe() error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts connections on ln until Shutdown or Close, then returns ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	if s.opts.Limiter != nil {
		ln = s.opts.Limiter.Listener(ln, Transport, refusal)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.ln = ln
	s.mu.Unlock()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if !temporary(err) {
				return fmt.Errorf("accept: %w", err)
			}
			// Out of descriptors (or a connection reset before it was taken): wait and
			// try again, as net/http does, instead of ending the listener.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.opts.Log.Error(err, "accept failed; retrying", "retry_in", delay.String())
			timer := time.NewTimer(delay)
			<-timer.C
			continue
		}
		delay = 0
		c := s.newConn(nc)
		if c == nil {
			continue
		}
		go c.serve()
	}
}

// temporary reports whether an accept error is worth retrying: a timeout, running out
// of descriptors or memory, or a connection aborted before it was taken.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// refusal is the answer of a connection over the cap: one error line (the connection
// is closed after it).
func refusal(why *connlimit.Refusal) []byte {
	b, _ := json.Marshal(&jsonrpc.Response{Error: jsonrpc.ErrBusy.Withf("%s", why.Error()).WithData(map[string]any{"reason": why.Reason})})
	return append(b, '\n')
}

// Shutdown stops accepting, waits until every request in flight has been answered (or
// ctx ends), then closes the connections and removes the socket file. The dispatcher
// should be drained first, so that requests still arriving get -32009.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	done := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// Write what each client still has queued (until ctx ends), then close.
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.closeGracefully(ctx) })
	}
	wg.Wait()
	s.removeSocket()
	return err
}

// Close closes the listener and every connection at once (their requests are
// cancelled) and removes the socket file.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	s.closeConns()
	s.removeSocket()
	return nil
}

func (s *Server) closeConns() {
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

func (s *Server) removeSocket() {
	if err := os.Remove(s.opts.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.opts.Log.Error(err, "cannot remove the socket file", "path", s.opts.Path)
	}
}

// conn is one client connection.
type conn struct {
	s      *Server
	nc     net.Conn
	peer   *jsonrpc.Peer
	ctx    context.Context
	cancel context.CancelFunc
	out    *outbuf.Buffer

	inflight sync.WaitGroup // this connection's requests being served
	once     sync.Once

	// sent and written count the bytes queued for the client and written to it, so that
	// an answer the buffer took beyond its bound is waited for (writtenSignal is closed
	// and replaced at each write).
	sendMu        sync.Mutex
	sent          int64
	writtenMu     sync.Mutex
	written       int64
	writtenSignal chan struct{}

	encMu sync.Mutex
	enc   []byte // notify's scratch buffer
}

func (s *Server) newConn(nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{s: s, nc: nc, ctx: ctx, cancel: cancel, writtenSignal: make(chan struct{})}
	c.out = outbuf.New(nc, outbuf.Options{
		MaxBytes:         s.opts.OutputBufferBytes,
		WriteTimeout:     s.opts.WriteTimeout,
		SetWriteDeadline: nc.SetWriteDeadline,
		TryWrite:         outbuf.NonBlockingWriter(nc),
		OnFail: func(err error) {
			s.opts.Log.Info("cutting off a client that does not read its messages; its requests are cancelled", "peer", c.peer.ID, "reason", err.Error())
			if s.opts.Observer != nil {
				s.opts.Observer.ClientCutOff(Transport)
			}
			c.close()
		},
		Written: func(n int) {
			if s.opts.Observer != nil {
				s.opts.Observer.BytesOut(Transport, n)
			}
			c.wrote(n)
		},
	})
	c.peer = &jsonrpc.Peer{
		Transport:  Transport,
		ID:         "unix-" + strconv.FormatUint(s.nextID.Add(1), 10),
		Admin:      s.opts.Admin,
		Persistent: true,
		Context:    ctx,
		Notify:     c.notify,
		Lend:       c.lend,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		cancel()
		c.out.Abort()
		_ = nc.Close()
		return nil
	}
	s.conns[c] = struct{}{}
	return c
}

// close cancels the connection's requests (queued ones leave the queue, a running one
// is aborted) and closes it; what was still queued for the client is dropped. It never
// waits for the client.
func (c *conn) close() {
	c.once.Do(func() {
		c.cancel()
		_ = c.nc.Close() // ends a write in progress
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
}

// closeGracefully writes what is queued for the client (until ctx ends), then closes.
func (c *conn) closeGracefully(ctx context.Context) {
	_ = c.out.Close(ctx)
	c.close()
}

func (c *conn) serve() {
	// A small buffer: an idle connection costs little; longer lines are read in pieces.
	br := bufio.NewReaderSize(c.nc, 8<<10)
	for {
		if c.s.opts.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.s.opts.IdleTimeout))
		}
		acct := c.s.opts.Budget.Open()
		line, tooLong, over, err := readLine(br, c.s.opts.MaxMessageBytes, acct)
		if isTimeout(err) {
			acct.Close()
			if len(line) == 0 && !tooLong && c.peer.Busy() {
				continue // waiting for its answers is not idle
			}
			c.s.opts.Log.V(1).Info("closing an idle connection", "peer", c.peer.ID, "idle_timeout", c.s.opts.IdleTimeout.String(), "partial_message_bytes", len(line))
			c.close()
			break
		}
		if c.s.opts.Observer != nil && len(line) > 0 {
			c.s.opts.Observer.BytesIn(Transport, len(line))
		}
		switch {
		case tooLong:
			acct.Close()
			_ = c.writeJSON(&jsonrpc.Response{Error: jsonrpc.ErrTooLarge.Withf("request too large: a message may have at most %d bytes (--max-request-bytes)", c.s.opts.MaxMessageBytes).
				WithData(map[string]any{"limit": "max-request-bytes", "max": c.s.opts.MaxMessageBytes})})
		case over != nil:
			acct.Close()
			_ = c.writeJSON(&jsonrpc.Response{ID: jsonrpc.LeadingID(line), Error: jsonrpc.BusyError(over)})
		case len(bytes.TrimSpace(line)) > 0:
			c.handle(line, acct)
		default:
			acct.Close()
		}
		if err != nil {
			break
		}
	}
	// The client closed its side. If it only half-closed (it still reads), answer what it
	// sent; if it is gone, cancel its requests at once.
	c.waitForPeerOrDone()
	ctx, cancel := context.WithTimeout(context.Background(), c.s.opts.WriteTimeout)
	defer cancel()
	c.closeGracefully(ctx)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handle serves one message on its own goroutine and returns once the message's first
// request has taken its place in the queue, so that requests from one connection are
// queued in the order they were sent. The message's account is closed when it has
// been answered.
func (c *conn) handle(msg []byte, acct *inflight.Account) {
	admitted := make(chan struct{})
	c.inflight.Add(1)
	c.s.inflight.Add(1)
	ctx := inflight.WithAccount(c.ctx, acct)
	go func() {
		defer c.s.inflight.Done()
		defer c.inflight.Done()
		defer acct.Close()
		c.s.d.Serve(ctx, c.peer, msg, func() { close(admitted) }, func(resps []*jsonrpc.Response, batch bool) {
			// A failed write has closed the connection already; nothing more to do.
			var v any = resps[0]
			if batch {
				v = resps
			}
			if end, n, err := c.send(v); err == nil && n > c.bufferBound() {
				c.waitWritten(end)
			}
		})
	}()
	select {
	case <-admitted:
	case <-c.ctx.Done():
	}
}

// waitForPeerOrDone waits for the connection's requests after the client stopped
// sending, cancelling them as soon as the client has hung up completely.
func (c *conn) waitForPeerOrDone() {
	done := make(chan struct{})
	go func() {
		c.inflight.Wait()
		close(done)
	}()
	if w := c.s.opts.Hangup; w != nil {
		if stop, err := w.Watch(c.nc, hangup.HungUp, c.cancel); err == nil {
			defer stop()
			<-done
			return
		}
	}
	for {
		if c.peerGone() {
			c.cancel()
			<-done
			return
		}
		select {
		case <-done:
			return
		case <-c.ctx.Done():
			<-done
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// peerGone reports whether the client closed both directions (POLLHUP), as opposed to
// shutting down only its writing side.
func (c *conn) peerGone() bool {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := true
	_ = raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}} //nolint:gosec // descriptors fit an int32
		if n, err := unix.Poll(fds, 0); err == nil {
			gone = n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	})
	return gone
}

// notify queues a notification (a token, most often) as a line. It is encoded into the
// connection's scratch buffer, which Send copies: a token costs no allocation here.
func (c *conn) notify(n *jsonrpc.Notification) error {
	c.encMu.Lock()
	defer c.encMu.Unlock()
	b, err := n.AppendJSON(c.enc[:0])
	if err != nil {
		c.s.opts.Log.Error(err, "cannot encode a notification")
		return err
	}
	b = append(b, '\n')
	if cap(b) <= maxScratch {
		c.enc = b
	}
	_, err = c.queue(b)
	return err
}

// lend lends the client's socket to the worker for a run's tokens (jsonrpc.Lease).
func (c *conn) lend(reclaim func()) (jsonrpc.Lease, bool) {
	if !c.out.Lend(reclaim) {
		return nil, false
	}
	return (*lease)(c), true
}

// lease is a conn lent for a run's tokens: each is a line, as notify writes it.
type lease conn

func (l *lease) FD() (int, error) { return rawconn.Dup(l.nc) }

func (l *lease) Framing() (open, close string, chunked bool) { return "", "\n", false }

func (l *lease) Wrote(n int) {
	c := (*conn)(l)
	c.sendMu.Lock()
	c.sent += int64(n)
	c.sendMu.Unlock()
	if c.s.opts.Observer != nil {
		c.s.opts.Observer.BytesOut(Transport, n)
	}
	c.wrote(n)
}

func (l *lease) Return(part *jsonrpc.Notification, written int) {
	c := (*conn)(l)
	var rest []byte
	if part != nil {
		if b, err := part.AppendJSON(nil); err == nil {
			b = append(b, '\n')
			written = min(written, len(b))
			l.Wrote(written)
			rest = b[written:]
			c.sendMu.Lock()
			c.sent += int64(len(rest))
			c.sendMu.Unlock()
		}
	}
	c.out.Return(rest)
}

// maxScratch is the largest encoding buffer a connection keeps between notifications.
const maxScratch = 4 << 10

// writeJSON queues one message as a line for the client and returns at once. A client
// whose buffer overflows (it stopped reading) is cut off, which cancels its requests.
func (c *conn) writeJSON(v any) error {
	_, _, err := c.send(v)
	return err
}

// send queues one message of n bytes as a line and returns how many bytes the
// connection has been sent, this message included.
func (c *conn) send(v any) (end int64, n int, err error) {
	b, err := jsonrpc.Marshal(v)
	if err != nil {
		c.s.opts.Log.Error(err, "cannot encode a message")
		return 0, 0, err
	}
	b = append(b, '\n')
	end, err = c.queue(b)
	if err != nil {
		return 0, 0, err
	}
	return end, len(b), nil
}

// queue queues line b (notifications too, so that sent counts every byte the buffer
// writes, in its order) and returns how many bytes the connection has been sent, b
// included.
func (c *conn) queue(b []byte) (end int64, err error) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := c.out.Send(b); err != nil {
		return 0, err
	}
	c.sent += int64(len(b))
	return c.sent, nil
}

// bufferBound is what the client's output buffer holds before it cuts the client off.
func (c *conn) bufferBound() int {
	if c.s.opts.OutputBufferBytes > 0 {
		return c.s.opts.OutputBufferBytes
	}
	return outbuf.DefaultMaxBytes
}

// wrote counts n bytes written to the client and wakes waitWritten.
func (c *conn) wrote(n int) {
	c.writtenMu.Lock()
	c.written += int64(n)
	close(c.writtenSignal)
	c.writtenSignal = make(chan struct{})
	c.writtenMu.Unlock()
}

// waitWritten waits until the first end bytes sent have been written, or the
// connection ends (a client that does not read is cut off within --write-timeout). An
// answer larger than --client-buffer-bytes, which the buffer takes only when nothing
// else waits, is held this way: the request's account of the budget of bytes in
// flight, closed when the answer is handed over, then covers it until it is written.
func (c *conn) waitWritten(end int64) {
	for {
		c.writtenMu.Lock()
		done, signal := c.written >= end, c.writtenSignal
		c.writtenMu.Unlock()
		if done {
			return
		}
		select {
		case <-signal:
		case <-c.ctx.Done():
			return
		}
	}
}

// readLine reads one line of at most limit bytes, paying for its buffer from acct before
// each allocation. A longer line is consumed to its end and reported as tooLong
// (without keeping it); a line that does not fit the budget is consumed to its end too,
// over says why, and line keeps what was read of it before (for its id). err is io.EOF
// (or another read error, such as the idle timeout) after the last line; line then
// holds what was read of an unfinished one.
func readLine(br *bufio.Reader, limit int, acct *inflight.Account) (line []byte, tooLong bool, over, err error) {
	for {
		frag, err := br.ReadSlice('\n')
		switch {
		case tooLong || over != nil:
		case len(line)+len(frag) > limit+1: // +1: the newline itself
			tooLong, line = true, nil
		case len(line)+len(frag) > cap(line):
			grown := min(max(2*cap(line), len(line)+len(frag)), limit+1)
			if over = acct.Charge(grown); over == nil {
				line = append(make([]byte, 0, grown), line...)
				line = append(line, frag...)
			}
		default:
			line = append(line, frag...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return line, tooLong, over, err
	}
}
