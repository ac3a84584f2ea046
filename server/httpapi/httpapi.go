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

// Observer counts the bytes of /rpc requests and responses.
type Observer interface {
	BytesIn(transport string, n int)
	BytesOut(transport string, n int)
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
	// MaxRequestBytes bounds a request body (16 MiB); a larger one gets 413 and -32008.
	MaxRequestBytes int64
	// ReadHeaderTimeout bounds reading a request's headers (10s).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request (60s); streamed responses are not
	// bounded by a write timeout, the supervisor's watchdog bounds them.
	ReadTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections (120s).
	IdleTimeout time.Duration
	// WriteTimeout bounds writing one message of a stream (30s): a client that stops
	// reading its stream is cut off and its run aborted, instead of holding the model.
	WriteTimeout time.Duration
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
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 60 * time.Second
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
	s.srv = &http.Server{
		Addr:              opts.Addr,
		Handler:           s.mux,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		ReadTimeout:       opts.ReadTimeout,
		IdleTimeout:       opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	return s
}

// Handle mounts another handler on the listener (for example "/v1/"). Handlers that
// serve clients should use RequireAPIKey.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// RequireAPIKey wraps h with the bearer-token check of /rpc.
func (s *Server) RequireAPIKey(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
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

// reject answers a connection over the cap with a 503 and closes it.
func (s *Server) reject(nc net.Conn) {
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	// Read the request head first, so the client sees the answer rather than a reset.
	_, _ = http.ReadRequest(bufio.NewReader(io.LimitReader(nc, 64<<10)))
	body, _ := json.Marshal(&jsonrpc.Response{Error: jsonrpc.ErrBusy.Withf("busy: the server holds its maximum of %d connections; retry later", s.opts.Limiter.Max())})
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

func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.opts.Log.Error(err, "cannot encode a response")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", ContentJSON)
	w.WriteHeader(status)
	n, _ := w.Write(b)
	if s.opts.Observer != nil {
		s.opts.Observer.BytesOut(Transport, n)
	}
}

func (s *Server) serveRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeJSON(w, http.StatusMethodNotAllowed, &jsonrpc.Response{Error: jsonrpc.ErrInvalidRequest.Withf("invalid request: /rpc takes POST with a JSON-RPC 2.0 body, not %s", r.Method)})
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
		s.writeJSON(w, http.StatusUnauthorized, &jsonrpc.Response{Error: jsonrpc.ErrNotAllowed.Withf("not allowed: missing or wrong API key; send the header Authorization: Bearer <key>")})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes))
	if s.opts.Observer != nil {
		s.opts.Observer.BytesIn(Transport, len(body))
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.writeJSON(w, http.StatusRequestEntityTooLarge, &jsonrpc.Response{Error: jsonrpc.ErrTooLarge.Withf("request too large: a request may have at most %d bytes (--max-request-bytes)", s.opts.MaxRequestBytes)})
			return
		}
		s.writeJSON(w, http.StatusBadRequest, &jsonrpc.Response{Error: jsonrpc.ErrParse.Withf("parse error: cannot read the request body: %v", err)})
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sw := &streamWriter{w: w, sse: wantsSSE(r), observer: s.opts.Observer, timeout: s.opts.WriteTimeout, cancel: cancel}
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
			s.writeJSON(w, http.StatusOK, resps)
			return
		}
		status := statusOf(resps[0].Error)
		if status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		s.writeJSON(w, status, resps[0])
	})
	if !answered {
		w.WriteHeader(http.StatusNoContent)
	}
}

// wantsSSE reports whether the client asked for server-sent events.
func wantsSSE(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), ContentSSE)
}

// streamWriter turns the notifications of a streamed run into NDJSON lines (or SSE
// events), flushed one by one; the final response follows as the last one.
type streamWriter struct {
	w        http.ResponseWriter
	sse      bool
	observer Observer
	timeout  time.Duration
	cancel   context.CancelFunc // ends the request when the client cannot keep up

	mu      sync.Mutex
	started bool
	failed  bool
}

func (sw *streamWriter) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !sw.started {
		sw.started = true
		h := sw.w.Header()
		if sw.sse {
			h.Set("Content-Type", ContentSSE)
			h.Set("Cache-Control", "no-cache")
		} else {
			h.Set("Content-Type", ContentNDJSON)
		}
		h.Set("X-Accel-Buffering", "no")
		sw.w.WriteHeader(http.StatusOK)
	}
	var out []byte
	if sw.sse {
		out = make([]byte, 0, len(b)+8)
		out = append(append(append(out, "data: "...), b...), "\n\n"...)
	} else {
		out = append(b, '\n')
	}
	rc := http.NewResponseController(sw.w)
	_ = rc.SetWriteDeadline(time.Now().Add(sw.timeout))
	n, err := sw.w.Write(out)
	if sw.observer != nil {
		sw.observer.BytesOut(Transport, n)
	}
	if err == nil {
		err = rc.Flush()
	}
	return err
}

func (sw *streamWriter) notify(n *jsonrpc.Notification) error {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.failed {
		return net.ErrClosed
	}
	if err := sw.write(n); err != nil {
		// The client stopped reading (or left): abort its run.
		sw.failed = true
		sw.cancel()
		return err
	}
	return nil
}

// finish writes the final response into a stream that has started, and reports
// whether it did (otherwise the caller answers with a plain JSON response).
func (sw *streamWriter) finish(resps []*jsonrpc.Response) bool {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if !sw.started {
		return false
	}
	if len(resps) > 0 && !sw.failed {
		_ = sw.write(resps[0])
	}
	return true
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
