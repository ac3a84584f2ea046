// Package httpapi is rkllm-server's HTTP listener: JSON-RPC 2.0 on POST /rpc (with
// streamed runs as NDJSON or server-sent events), the health endpoints /livez, /readyz
// and /healthz, and /metrics. Other APIs (an OpenAI-compatible /v1/) mount on the same
// listener with Handle.
package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
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
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// Transport is the Peer.Transport of HTTP requests.
const Transport = "http"

// Content types of /rpc responses.
const (
	ContentJSON   = "application/json"
	ContentNDJSON = "application/x-ndjson"
	ContentSSE    = "text/event-stream"
)

// Health reports the server's state for the health endpoints.
type Health interface {
	Status() supervisor.Status
}

// Observer counts the bytes of /rpc requests and responses, and the streaming clients
// cut off for not reading.
type Observer interface {
	BytesIn(transport string, n int)
	BytesOut(transport string, n int)
	ClientCutOff(transport string)
}

// Options configure the server. Zero values take the defaults in brackets.
type Options struct {
	// Addr is the listen address (":8080").
	Addr string
	// Admin allows state-changing methods over HTTP.
	Admin bool
	// APIKeys, when set, are the bearer tokens /rpc accepts (health and metrics stay
	// open, for the kubelet and Prometheus). The key a request presents also owns the
	// runs it starts: rkllm.abort over HTTP stops a run only for a caller that names
	// its request_id and presents the same key. SetAPIKeys replaces them while serving.
	APIKeys []string
	// MaxRequestBytes bounds a request body on every path, /v1/ included (16 MiB); on
	// /rpc a larger one gets 413 and -32008.
	MaxRequestBytes int64
	// ReadHeaderTimeout bounds reading a request's headers (10s).
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request's body, from the end of its headers (60s).
	// It is a read deadline that is lifted once the body has been read, so a long
	// streamed response is not cut by it (the supervisor's watchdog bounds those).
	BodyTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections (120s).
	IdleTimeout time.Duration
	// WriteTimeout bounds one write of a streamed response (30s).
	WriteTimeout time.Duration
	// OutputBufferBytes bounds what a streamed response may have waiting for the client
	// (outbuf.DefaultMaxBytes): a client that stops reading its stream is cut off and
	// its run aborted, instead of holding the model or growing the server's memory.
	OutputBufferBytes int
	// Limiter caps connections across transports; nil for none.
	Limiter *connlimit.Limiter
	// Budget, when set, is the server's budget of bytes in flight: every request has an
	// account of it (in its context, for the handlers' stages) and pays for its body
	// before reading it; over the budget a request is answered busy (429 and -32002).
	Budget *inflight.Budget
	// Hangup, when set, ends a request as soon as its client closes the connection,
	// even while net/http is not reading it (a pipelined request waits behind it).
	Hangup *hangup.Watcher
	// Health backs /readyz and /healthz.
	Health Health
	// Metrics serves /metrics; nil leaves it out.
	Metrics  http.Handler
	Observer Observer
	Log      logr.Logger
}

// Server is the HTTP listener.
type Server struct {
	d      *jsonrpc.Dispatcher
	opts   Options
	mux    *http.ServeMux
	srv    *http.Server
	probes *http.Server // the probe listener's (ServeProbes)
	// apiKeys are the keys requests may carry now (none: no key needed).
	apiKeys atomic.Pointer[[]string]
}

// New returns a server for d.
func New(d *jsonrpc.Dispatcher, opts Options) *Server {
	if opts.Addr == "" {
		opts.Addr = ":8080"
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = 16 << 20
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = 10 * time.Second
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = 60 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 120 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	s := &Server{d: d, opts: opts, mux: http.NewServeMux()}
	s.SetAPIKeys(opts.APIKeys)
	s.mux.HandleFunc("/rpc", s.serveRPC)
	s.mux.HandleFunc("GET /livez", s.livez)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	if opts.Metrics != nil {
		s.mux.Handle("GET /metrics", opts.Metrics)
	}
	// No ReadTimeout: it would stay armed while a response streams, and net/http cancels
	// a request whose connection read deadline passes. limitBody bounds the body instead.
	s.srv = &http.Server{
		Addr:              opts.Addr,
		Handler:           s.limitBody(s.mux),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
		ConnContext:       func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
	}
	s.probes = s.newProbeServer()
	return s
}

// connKey keys a request's connection in its context.
type connKey struct{}

// limitBody bounds every request on every path: its body to MaxRequestBytes, read
// within BodyTimeout (a read deadline lifted when the body has been read to its end),
// and each write of its response to WriteTimeout, so a client that does not read a
// plain answer cannot hold a goroutine and a connection forever either. It also ends
// the request when its client leaves (watchHangup).
func (s *Server) limitBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A deadline left by the previous request on this keep-alive connection must not
		// cut this one (net/http leaves write deadlines alone without its WriteTimeout).
		_ = rc.SetWriteDeadline(time.Time{})
		switch {
		case r.ContentLength > s.opts.MaxRequestBytes:
			s.refuseBody(h, w, r) // toolarge.go: 413 at once, without reading the body
			return
		case r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody:
			_ = rc.SetReadDeadline(time.Now().Add(s.opts.BodyTimeout))
			r.Body = &deadlineBody{ReadCloser: http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes), rc: rc}
		}
		tw := &timedWriter{ResponseWriter: w, rc: rc, timeout: s.opts.WriteTimeout}
		r, done := s.watchHangup(r, tw)
		defer done()
		if s.opts.Budget != nil {
			acct := s.opts.Budget.Open()
			defer acct.Close()
			r = r.WithContext(inflight.WithAccount(r.Context(), acct))
		}
		h.ServeHTTP(tw, r)
	})
}

// watchHangup cancels r's context as soon as its client closes the connection. net/http
// notices a close only by reading, which it stops doing when the client has pipelined
// another request, so a plain run would go on for nobody, and the pipelined request
// would run after it. Once the client has gone, the answer says Connection: close and
// the connection is closed when the handler returns, so nothing pipelined behind runs.
func (s *Server) watchHangup(r *http.Request, tw *timedWriter) (*http.Request, func()) {
	nc, _ := r.Context().Value(connKey{}).(net.Conn)
	if s.opts.Hangup == nil || nc == nil {
		return r, func() {}
	}
	ctx, cancel := context.WithCancel(r.Context())
	stop, err := s.opts.Hangup.Watch(nc, hangup.Closed, func() {
		tw.gone.Store(true)
		cancel()
	})
	if err != nil {
		s.opts.Log.V(1).Info("cannot watch the connection for a hang-up", "error", err.Error())
		cancel()
		return r, func() {}
	}
	return r.WithContext(ctx), func() {
		stop()
		cancel()
		if tw.gone.Load() {
			_ = nc.Close()
		}
	}
}

// timedWriter gives each write of a response WriteTimeout, and closes the connection
// after the answer of a client that has gone.
type timedWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	gone    atomic.Bool // the client closed the connection
	wrote   bool
}

func (w *timedWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		if w.gone.Load() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *timedWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher (within the write timeout).
func (w *timedWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	_ = w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *timedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// deadlineBody lifts the body's read deadline once the body has been read.
type deadlineBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.lifted {
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// Handle mounts another handler on the listener (for example "/v1/"). Handlers that
// serve clients should use RequireAPIKey.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// RequireAPIKey wraps h with the bearer-token check of /rpc. denied answers a request
// without the key in the API's own shape; nil answers 401 in plain text.
func (s *Server) RequireAPIKey(h http.Handler, denied http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			if denied != nil {
				denied(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
			http.Error(w, "missing or wrong API key: send Authorization: Bearer <key>", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// SetAPIKeys makes keys the bearer tokens requests need from now on (the key file
// changed); a request already admitted keeps running. None requires no key.
func (s *Server) SetAPIKeys(keys []string) {
	keys = append([]string(nil), keys...)
	s.apiKeys.Store(&keys)
}

// Listen opens the listen address.
func (s *Server) Listen() (net.Listener, error) { return ListenTCP(s.opts.Addr) }

// deferAcceptSeconds is how long the kernel holds a new connection that has sent
// nothing before handing it over anyway (TCP_DEFER_ACCEPT).
const deferAcceptSeconds = 5

// ListenTCP opens a TCP listen address whose connections are handed to the server once
// they have sent something (TCP_DEFER_ACCEPT, as nginx's deferred): an HTTP client
// speaks first, so a connection refused over the cap is answered after its request
// has arrived (a client that gets an answer before it has written takes it for a
// broken connection), and one that sends nothing costs the server no descriptor
// meanwhile.
func ListenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, deferAcceptSeconds) //nolint:gosec // descriptors fit an int
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves on ln until Shutdown or Close; it returns http.ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	if s.opts.Limiter != nil {
		ln = s.opts.Limiter.Listener(ln, Transport, refusal)
	}
	return s.srv.Serve(ln)
}

// Probe listener bounds: the kubelet and Prometheus send one short GET at a time, so a
// few connections and short timeouts are plenty, and a client that holds more gains
// little.
const (
	// ProbeTransport is the transport label of probe connections (metrics).
	ProbeTransport = "probe"
	// ProbeMaxConnections caps the probe listener's connections.
	ProbeMaxConnections = 32
	probeTimeout        = 5 * time.Second
)

// ServeProbes serves /livez, /readyz, /healthz and /metrics on ln, a listener of their
// own (--probe-listen), so that no number of client connections can make a probe wait
// or fail: client connections are capped on the other listener, and this one has its
// own small cap (ProbeMaxConnections, where a new connection takes the place of the one
// that has waited longest for its request, see probeListener), short timeouts and no
// keep-alive. limiter (nil for none) keeps the descriptor reserve. It returns
// http.ErrServerClosed after Shutdown or Close.
func (s *Server) ServeProbes(ln net.Listener, limiter *connlimit.Limiter) error {
	if limiter != nil {
		ln = limiter.Listener(ln, ProbeTransport, refusal)
	}
	return s.probes.Serve(&probeListener{Listener: ln, max: ProbeMaxConnections})
}

// newProbeServer is the probe listener's server (ServeProbes).
func (s *Server) newProbeServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", s.livez)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /healthz", s.healthz)
	if s.opts.Metrics != nil {
		mux.Handle("GET /metrics", s.opts.Metrics)
	}
	srv := &http.Server{
		Handler: markServing(mux), ReadHeaderTimeout: probeTimeout, ReadTimeout: probeTimeout, WriteTimeout: probeTimeout,
		IdleTimeout: probeTimeout, MaxHeaderBytes: 8 << 10, ConnContext: probeConnContext,
	}
	srv.SetKeepAlivesEnabled(false)
	return srv
}

// ListenAndServe listens on Options.Addr and serves.
func (s *Server) ListenAndServe() error {
	ln, err := s.Listen()
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Shutdown stops accepting and waits for the requests in flight (their streams
// included) until ctx ends; then the probe listener stops.
func (s *Server) Shutdown(ctx context.Context) error {
	return errors.Join(s.srv.Shutdown(ctx), s.probes.Shutdown(ctx))
}

// Close closes the listeners and every connection at once.
func (s *Server) Close() error {
	return errors.Join(s.srv.Close(), s.probes.Close())
}

// refusal is the answer of a connection over the cap: a 503 with the JSON-RPC error,
// Retry-After and Connection: close (the connection is closed after it).
func refusal(why *connlimit.Refusal) []byte {
	body, _ := json.Marshal(&jsonrpc.Response{Error: jsonrpc.ErrBusy.Withf("%s", why.Error()).WithData(map[string]any{"reason": why.Reason})})
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

func (s *Server) authorized(r *http.Request) bool {
	_, ok := s.caller(r)
	return ok
}

// caller names the owner of the runs a request starts, and reports whether the request
// may be served: without API keys every HTTP caller is "http"; with them the owner is
// a digest of the key presented (never the key, which could reach a log), so a run is
// bound to its key.
func (s *Server) caller(r *http.Request) (owner string, ok bool) {
	keys := *s.apiKeys.Load()
	if len(keys) == 0 {
		return Transport, true
	}
	token, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !found {
		return "", false
	}
	token = strings.TrimSpace(token)
	match := -1
	for i, key := range keys {
		// Every key is compared, so the time taken does not tell which one matched.
		if subtle.ConstantTimeCompare([]byte(token), []byte(key)) == 1 {
			match = i
		}
	}
	if match < 0 {
		return "", false
	}
	sum := sha256.Sum256([]byte(keys[match]))
	return Transport + "/key-" + hex.EncodeToString(sum[:8]), true
}

// statusOf is the HTTP status of a single (non-streamed) response: JSON-RPC errors are
// answered with 200 except those a plain HTTP client or proxy should see.
func statusOf(e *jsonrpc.Error) int {
	switch {
	case e == nil:
		return http.StatusOK
	case errors.Is(e, jsonrpc.ErrShuttingDown):
		return http.StatusServiceUnavailable
	case errors.Is(e, jsonrpc.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(e, jsonrpc.ErrBusy):
		return http.StatusTooManyRequests
	}
	return http.StatusOK
}

// writeJSON writes v as a JSON response and returns the bytes of the body written.
func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) int {
	b, err := jsonrpc.Marshal(v)
	if err != nil {
		s.opts.Log.Error(err, "cannot encode a response")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return 0
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", ContentJSON)
	w.WriteHeader(status)
	n, _ := w.Write(b)
	return n
}

// writeRPC writes a JSON-RPC answer of /rpc and counts its bytes (the probes' answers
// are not JSON-RPC and are not counted).
func (s *Server) writeRPC(w http.ResponseWriter, status int, v any) {
	n := s.writeJSON(w, status, v)
	if s.opts.Observer != nil {
		s.opts.Observer.BytesOut(Transport, n)
	}
}

func (s *Server) serveRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeRPC(w, http.StatusMethodNotAllowed, &jsonrpc.Response{Error: jsonrpc.ErrInvalidRequest.Withf("invalid request: /rpc takes POST with a JSON-RPC 2.0 body, not %s", r.Method)})
		return
	}
	owner, authorized := s.caller(r)
	if !authorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
		s.writeRPC(w, http.StatusUnauthorized, &jsonrpc.Response{Error: jsonrpc.ErrNotAllowed.Withf("not allowed: missing or wrong API key; send the header Authorization: Bearer <key>")})
		return
	}
	body, err := inflight.ReadBody(r, s.opts.MaxRequestBytes)
	if s.opts.Observer != nil {
		s.opts.Observer.BytesIn(Transport, len(body))
	}
	var over *inflight.OverError
	if errors.As(err, &over) {
		w.Header().Set("Retry-After", strconv.Itoa(inflight.RetryAfterSeconds))
		s.writeRPC(w, http.StatusTooManyRequests, &jsonrpc.Response{Error: jsonrpc.BusyError(err)})
		return
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			w.Header().Set("Connection", "close")
			s.writeRPC(w, http.StatusRequestEntityTooLarge, &jsonrpc.Response{Error: jsonrpc.ErrTooLarge.Withf("request too large: a request may have at most %d bytes (--max-request-bytes)", s.opts.MaxRequestBytes).
				WithData(map[string]any{"limit": "max-request-bytes", "max": s.opts.MaxRequestBytes})})
			return
		}
		w.Header().Set("Connection", "close")
		s.writeRPC(w, http.StatusBadRequest, &jsonrpc.Response{Error: jsonrpc.ErrParse.Withf("parse error: cannot read the request body within %s (--body-read-timeout): %v", s.opts.BodyTimeout, err)})
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sw := &streamWriter{w: w, r: r, sse: wantsSSE(r), s: s, cancel: cancel}
	defer sw.close()
	peer := &jsonrpc.Peer{Transport: Transport, ID: owner, Admin: s.opts.Admin, Context: ctx}
	// Only a single request can stream: a batch is answered with one JSON array.
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' {
		peer.Notify = sw.notify
		peer.Lend = sw.lend
	}
	answered := false
	s.d.Serve(ctx, peer, body, nil, func(resps []*jsonrpc.Response, batch bool) {
		answered = true
		if sw.finish(resps) {
			return
		}
		if batch {
			s.writeRPC(w, http.StatusOK, resps)
			return
		}
		status := statusOf(resps[0].Error)
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		s.writeRPC(w, status, resps[0])
	})
	if !answered && !sw.streaming() {
		w.WriteHeader(http.StatusNoContent)
	}
}

// wantsSSE reports whether the client asked for server-sent events.
func wantsSSE(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), ContentSSE)
}

// streamWriter turns the notifications of a streamed run into NDJSON lines (or SSE
// events) and the final response into the last one. They go through a bounded output
// buffer written by a goroutine of its own, so the run's producer never waits for the
// client; a client that falls behind by more than the buffer is cut off and its run
// aborted.
//
// On HTTP/1.1 the body goes straight to the connection: once net/http has sent the
// headers, which choose the chunked transfer coding, each message is written as one
// chunk by the output buffer, at once by its sender when the socket has room (as on
// the Unix socket: no other goroutine wakes for a token), else by the buffer's
// goroutine. The buffer has written everything, or failed and moved the write deadline
// to now, before the handler returns and net/http writes the last chunk; a stream cut
// off mid-chunk thus fails that write and net/http closes the connection.
type streamWriter struct {
	w      http.ResponseWriter
	r      *http.Request
	sse    bool
	s      *Server
	cancel context.CancelFunc // ends the request when the client cannot keep up

	mu      sync.Mutex
	out     *outbuf.Buffer // nil until the stream starts
	chunked bool           // messages are written to the connection as chunks
	enc     []byte         // the scratch buffer of a message
	chunk   []byte         // the scratch buffer of a message framed as a chunk
	head    int            // the size line of the chunk wrap made last
	count   *chunkCounter  // the chunks' payload written, when chunked
}

// frame encodes one message of the stream (with sw.mu held); the result is valid
// until the next call.
func (sw *streamWriter) frame(v any) ([]byte, error) {
	b, err := jsonrpc.Marshal(v)
	if err != nil {
		return nil, err
	}
	return sw.wrap(append(sw.opening(), b...)), nil
}

// opening starts a message in the scratch buffer (with sw.mu held).
func (sw *streamWriter) opening() []byte {
	if sw.sse {
		return append(sw.enc[:0], "data: "...)
	}
	return sw.enc[:0]
}

// wrap ends a message begun by opening and frames it as a chunk when the stream is
// chunked (with sw.mu held).
func (sw *streamWriter) wrap(b []byte) []byte {
	if sw.sse {
		b = append(b, "\n\n"...)
	} else {
		b = append(b, '\n')
	}
	if cap(b) <= maxScratch {
		sw.enc = b[:0]
	}
	if !sw.chunked {
		return b
	}
	c := strconv.AppendInt(sw.chunk[:0], int64(len(b)), 16)
	c = append(c, "\r\n"...)
	sw.head = len(c)
	c = append(append(c, b...), "\r\n"...)
	if cap(c) <= maxScratch {
		sw.chunk = c[:0]
	}
	return c
}

// rawConn is the connection a stream may write its chunks to: that of an HTTP/1.1
// request with a descriptor; nil otherwise (the body then goes through net/http).
func (sw *streamWriter) rawConn() net.Conn {
	if sw.r == nil || sw.r.ProtoMajor != 1 || !sw.r.ProtoAtLeast(1, 1) || sw.r.Method == http.MethodHead {
		return nil
	}
	nc, _ := sw.r.Context().Value(connKey{}).(net.Conn)
	if nc == nil || outbuf.NonBlockingWriter(nc) == nil {
		return nil
	}
	return nc
}

// start sends the headers and starts the output buffer (with sw.mu held).
func (sw *streamWriter) start() {
	h := sw.w.Header()
	if sw.sse {
		h.Set("Content-Type", ContentSSE)
		h.Set("Cache-Control", "no-cache")
	} else {
		h.Set("Content-Type", ContentNDJSON)
	}
	h.Set("X-Accel-Buffering", "no")
	sw.w.WriteHeader(http.StatusOK)
	// The buffer sets the write deadlines itself (moving them only when needed): its
	// writes skip timedWriter, which would move them on each write and flush.
	w := sw.w
	if tw, ok := w.(*timedWriter); ok {
		w = tw.ResponseWriter
	}
	rc := http.NewResponseController(w)
	obs := sw.s.opts.Observer
	opts := outbuf.Options{
		MaxBytes:     sw.s.opts.OutputBufferBytes,
		WriteTimeout: sw.s.opts.WriteTimeout,
		OnFail: func(err error) {
			sw.s.opts.Log.Info("cutting off a streaming client that does not read; its run is aborted", "reason", err.Error())
			if obs != nil {
				obs.ClientCutOff(Transport)
			}
			sw.cancel()
		},
	}
	var count *chunkCounter // set before the buffer exists, read by its writers
	opts.Written = func(n int) {
		if count != nil {
			n = count.written(n)
		}
		if obs != nil {
			obs.BytesOut(Transport, n)
		}
	}
	if nc := sw.rawConn(); nc != nil && rc.Flush() == nil {
		// The headers are out and net/http holds nothing of the body.
		sw.chunked = true
		count = &chunkCounter{}
		sw.count = count
		opts.SetWriteDeadline = nc.SetWriteDeadline
		opts.TryWrite = outbuf.NonBlockingWriter(nc)
		sw.out = outbuf.New(nc, opts)
		return
	}
	opts.SetWriteDeadline, opts.Flush = rc.SetWriteDeadline, rc.Flush
	sw.out = outbuf.New(w, opts)
}

// notify queues a notification (a token, most often) as a line or an event. It is
// encoded into the stream's scratch buffer, which Send copies.
func (sw *streamWriter) notify(n *jsonrpc.Notification) error {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.out == nil {
		sw.start()
	}
	b, err := n.AppendJSON(sw.opening())
	if err != nil {
		return err
	}
	return sw.send(sw.wrap(b))
}

// lend lends the client's connection to the worker for a run's tokens
// (jsonrpc.Lease). It starts the stream: the headers go out when the run starts
// rather than with its first token. Only a stream written as chunks to the
// connection itself (HTTP/1.1) is lent.
func (sw *streamWriter) lend(reclaim func()) (jsonrpc.Lease, bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.out == nil {
		sw.start()
	}
	if !sw.chunked || !sw.out.Lend(reclaim) {
		return nil, false
	}
	return (*streamLease)(sw), true
}

// streamLease is a stream lent for a run's tokens: each is a chunk, as notify
// writes it.
type streamLease streamWriter

func (l *streamLease) FD() (int, error) { return rawconn.Dup((*streamWriter)(l).rawConn()) }

func (l *streamLease) Framing() (open, close string, chunked bool) {
	if l.sse {
		return "data: ", "\n\n", true
	}
	return "", "\n", true
}

// Wrote counts whole chunks: rkllm_sent_bytes_total counts their messages.
func (l *streamLease) Wrote(n int) {
	if obs := l.s.opts.Observer; obs != nil {
		obs.BytesOut(Transport, chunkBody(n))
	}
}

// chunkBody is the size of the message in a chunk of n bytes (its size line in hex,
// CRLF, the message, CRLF).
func chunkBody(n int) int {
	for h := 1; h < 16; h++ {
		if body := n - h - 4; body >= 0 && len(strconv.FormatInt(int64(body), 16)) == h {
			return body
		}
	}
	return 0
}

func (l *streamLease) Return(part *jsonrpc.Notification, written int) {
	sw := (*streamWriter)(l)
	sw.mu.Lock()
	defer sw.mu.Unlock()
	var rest []byte
	if part != nil {
		if b, err := part.AppendJSON(sw.opening()); err == nil {
			b = sw.wrap(b)
			written = min(written, len(b))
			// The rest goes out before anything queued during the lease.
			if n := sw.count.first(sw.head, len(b)-sw.head-2, written); n > 0 && sw.s.opts.Observer != nil {
				sw.s.opts.Observer.BytesOut(Transport, n)
			}
			rest = b[written:]
		}
	}
	sw.out.Return(rest)
}

// send queues a message that wrap framed (with sw.mu held), telling the counter of a
// chunk's framing first: the buffer may write it at once.
func (sw *streamWriter) send(b []byte) error {
	if sw.count != nil {
		sw.count.queued(sw.head, len(b)-sw.head-2)
	}
	return sw.out.Send(b)
}

// chunkCounter counts the bytes of the stream's messages among those written of their
// chunks: rkllm_sent_bytes_total counts what the client reads of the stream, not
// HTTP's framing (each chunk's size line and its closing CRLF).
type chunkCounter struct {
	mu     sync.Mutex
	chunks []chunkSpan // queued, in order; the first written up to at
	at     int
}

// chunkSpan is one chunk: its size line, its message, its closing CRLF.
type chunkSpan struct{ head, body int }

func (c *chunkCounter) queued(head, body int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.chunks) == 0 {
		c.chunks = c.chunks[:0:0]
	}
	c.chunks = append(c.chunks, chunkSpan{head, body})
}

// first puts a chunk in front of those queued, its first at bytes written already,
// and returns how many of those were its message's.
func (c *chunkCounter) first(head, body, at int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at != 0 {
		// The first queued chunk is partly written: cannot happen, as nothing is written
		// while the stream is lent.
		return 0
	}
	c.chunks = append([]chunkSpan{{head, body}}, c.chunks...)
	c.at = at
	if at >= head+body+2 {
		c.chunks, c.at = c.chunks[1:], 0
	}
	return max(0, min(at, head+body)-head)
}

// written takes n more bytes written and returns how many of them were messages'.
func (c *chunkCounter) written(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	payload := 0
	for n > 0 && len(c.chunks) > 0 {
		s := c.chunks[0]
		total := s.head + s.body + 2
		take := min(n, total-c.at)
		if lo, hi := max(c.at, s.head), min(c.at+take, s.head+s.body); hi > lo {
			payload += hi - lo
		}
		c.at += take
		n -= take
		if c.at == total {
			c.chunks, c.at = c.chunks[1:], 0
		}
	}
	return payload
}

// maxScratch is the largest scratch buffer a stream keeps between messages.
const maxScratch = 4 << 10

func (sw *streamWriter) streaming() bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return sw.out != nil
}

// finish queues the final response into a stream that has started, and reports
// whether it did (otherwise the caller answers with a plain JSON response).
func (sw *streamWriter) finish(resps []*jsonrpc.Response) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.out == nil {
		return false
	}
	if len(resps) > 0 {
		if b, err := sw.frame(resps[0]); err == nil {
			_ = sw.send(b)
		}
	}
	return true
}

// close writes what the stream still holds (within the write timeout) and stops its
// buffer: the handler must not return while the buffer may still write.
func (sw *streamWriter) close() {
	sw.mu.Lock()
	out := sw.out
	sw.mu.Unlock()
	if out == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), sw.s.opts.WriteTimeout)
	defer cancel()
	_ = out.Close(ctx)
}

func (s *Server) livez(w http.ResponseWriter, _ *http.Request) {
	s.writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is 200 when the model is loaded, the worker is up and the server is not
// draining; the body tells why not otherwise.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	st := s.status()
	code := http.StatusOK
	if !st.Ready || s.d.Draining() {
		code = http.StatusServiceUnavailable
	}
	s.writeJSON(w, code, st)
}

// healthz is 200 while the worker process is up (a model need not be loaded).
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	st := s.status()
	code := http.StatusOK
	if !st.WorkerUp {
		code = http.StatusServiceUnavailable
	}
	s.writeJSON(w, code, st)
}

func (s *Server) status() supervisor.Status {
	var st supervisor.Status
	if s.opts.Health != nil {
		st = s.opts.Health.Status()
	}
	if s.d.Draining() {
		st.Ready, st.Draining, st.Reason = false, true, "shutting down"
	}
	return st
}
