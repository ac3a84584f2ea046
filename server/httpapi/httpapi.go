// Package httpapi is rkllm-server's HTTP listener: JSON-RPC 2.0 on POST /rpc (with
// streamed runs as NDJSON or server-sent events), the health endpoints /livez, /readyz
// and /healthz, and /metrics. Other APIs (an OpenAI-compatible /v1/) mount on the same
// listener with Handle.
package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
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
	// APIKey, when set, is the bearer token /rpc requires (health and metrics stay open,
	// for the kubelet and Prometheus).
	APIKey string
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
	// Health backs /readyz and /healthz.
	Health Health
	// Metrics serves /metrics; nil leaves it out.
	Metrics  http.Handler
	Observer Observer
	Log      logr.Logger
}

// Server is the HTTP listener.
type Server struct {
	d    *jsonrpc.Dispatcher
	opts Options
	mux  *http.ServeMux
	srv  *http.Server
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
	}
	return s
}

// limitBody bounds every request on every path: its body to MaxRequestBytes, read
// within BodyTimeout (a read deadline lifted when the body has been read to its end),
// and each write of its response to WriteTimeout, so a client that does not read a
// plain answer cannot hold a goroutine and a connection forever either.
func (s *Server) limitBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// A deadline left by the previous request on this keep-alive connection must not
		// cut this one (net/http leaves write deadlines alone without its WriteTimeout).
		_ = rc.SetWriteDeadline(time.Time{})
		if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
			_ = rc.SetReadDeadline(time.Now().Add(s.opts.BodyTimeout))
			r.Body = &deadlineBody{ReadCloser: http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes), rc: rc}
		}
		h.ServeHTTP(&timedWriter{ResponseWriter: w, rc: rc, timeout: s.opts.WriteTimeout}, r)
	})
}

// timedWriter gives each write of a response WriteTimeout.
type timedWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

func (w *timedWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.ResponseWriter.Write(p)
}

// Flush implements http.Flusher (within the write timeout).
func (w *timedWriter) Flush() {
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

// Listen opens the listen address.
func (s *Server) Listen() (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", s.opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", s.opts.Addr, err)
	}
	return ln, nil
}

// Serve serves on ln until Shutdown or Close; it returns http.ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	if s.opts.Limiter != nil {
		ln = s.opts.Limiter.Listener(ln, Transport, s.reject)
	}
	return s.srv.Serve(ln)
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
// included) until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close closes the listener and every connection at once.
func (s *Server) Close() error { return s.srv.Close() }

// reject answers a refused connection with a 503 and closes it.
func (s *Server) reject(nc net.Conn, why *connlimit.Refusal) {
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	// Read the request head first, so the client sees the answer rather than a reset.
	_, _ = http.ReadRequest(bufio.NewReader(io.LimitReader(nc, 64<<10)))
	body, _ := json.Marshal(&jsonrpc.Response{Error: jsonrpc.ErrBusy.Withf("%s", why.Error()).WithData(map[string]any{"reason": why.Reason})})
	resp := fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	_, _ = io.WriteString(nc, resp)
}

func (s *Server) authorized(r *http.Request) bool {
	if s.opts.APIKey == "" {
		return true
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.opts.APIKey)) == 1
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
	b, err := json.Marshal(v)
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
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
		s.writeRPC(w, http.StatusUnauthorized, &jsonrpc.Response{Error: jsonrpc.ErrNotAllowed.Withf("not allowed: missing or wrong API key; send the header Authorization: Bearer <key>")})
		return
	}
	body, err := io.ReadAll(r.Body)
	if s.opts.Observer != nil {
		s.opts.Observer.BytesIn(Transport, len(body))
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
	sw := &streamWriter{w: w, sse: wantsSSE(r), s: s, cancel: cancel}
	defer sw.close()
	peer := &jsonrpc.Peer{Transport: Transport, ID: Transport, Admin: s.opts.Admin, Context: ctx}
	// Only a single request can stream: a batch is answered with one JSON array.
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' {
		peer.Notify = sw.notify
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
type streamWriter struct {
	w      http.ResponseWriter
	sse    bool
	s      *Server
	cancel context.CancelFunc // ends the request when the client cannot keep up

	mu  sync.Mutex
	out *outbuf.Buffer // nil until the stream starts
	enc []byte         // notify's scratch buffer
}

// frame encodes one message of the stream.
func (sw *streamWriter) frame(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if sw.sse {
		out := make([]byte, 0, len(b)+8)
		return append(append(append(out, "data: "...), b...), "\n\n"...), nil
	}
	return append(b, '\n'), nil
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
	rc := http.NewResponseController(sw.w)
	obs := sw.s.opts.Observer
	sw.out = outbuf.New(sw.w, outbuf.Options{
		MaxBytes:         sw.s.opts.OutputBufferBytes,
		WriteTimeout:     sw.s.opts.WriteTimeout,
		SetWriteDeadline: rc.SetWriteDeadline,
		Flush:            rc.Flush,
		OnFail: func(err error) {
			sw.s.opts.Log.Info("cutting off a streaming client that does not read; its run is aborted", "reason", err.Error())
			if obs != nil {
				obs.ClientCutOff(Transport)
			}
			sw.cancel()
		},
		Written: func(n int) {
			if obs != nil {
				obs.BytesOut(Transport, n)
			}
		},
	})
}

// notify queues a notification (a token, most often) as a line or an event. It is
// encoded into the stream's scratch buffer, which Send copies.
func (sw *streamWriter) notify(n *jsonrpc.Notification) error {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	b := sw.enc[:0]
	if sw.sse {
		b = append(b, "data: "...)
	}
	b, err := n.AppendJSON(b)
	if err != nil {
		return err
	}
	if sw.sse {
		b = append(b, "\n\n"...)
	} else {
		b = append(b, '\n')
	}
	if cap(b) <= maxScratch {
		sw.enc = b
	}
	if sw.out == nil {
		sw.start()
	}
	return sw.out.Send(b)
}

// maxScratch is the largest encoding buffer a stream keeps between notifications.
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
			_ = sw.out.Send(b)
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
