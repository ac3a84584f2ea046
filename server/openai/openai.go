// Package openai is rkllm-server's OpenAI-compatible API on /v1/: GET /v1/models,
// POST /v1/chat/completions and POST /v1/completions, with server-sent events for
// streams, tools and OpenAI's error shape. It is a second front door to the same
// supervisor as the JSON-RPC API: requests wait in the same queue, under the same
// limits. Conversations are rendered with the server's chat template
// (server/chattemplate) and run with the runtime's own template switched off; the
// supervisor reuses the KV cache when a conversation continues the previous one.
// docs/openai.md is its reference.
package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// Backend is what the API needs from the supervisor.
type Backend interface {
	Enqueue(ctx context.Context, req supervisor.Request) (*supervisor.Ticket, error)
	Abort(owner, id string) ([]string, error)
	Status() supervisor.Status
	// Loaded returns the parameters of the loaded model.
	Loaded() (runtime.Param, bool)
}

// Observer receives the API's measurements.
type Observer interface {
	// ObserveOpenAI reports one request: the endpoint ("chat.completions",
	// "completions", "models"), the HTTP status answered and the time it took.
	ObserveOpenAI(endpoint string, status int, elapsed time.Duration)
	// ClientCutOff reports a client cut off for not reading its stream.
	ClientCutOff(transport string)
	BytesIn(transport string, n int)
	BytesOut(transport string, n int)
}

// Options configure the API. Zero values take the defaults in brackets.
type Options struct {
	// ModelName is the model's id; "" takes the model file's name without its
	// extension.
	ModelName string
	// ModelPath is the configured model file (--model), for the id before it loads.
	ModelPath string
	// Template renders conversations (the chatml preset).
	Template chattemplate.Template
	// PrefixReuse lets the supervisor feed only the new part of a conversation that
	// continues the one in the KV cache.
	PrefixReuse bool
	// RequestTimeout bounds a request from queueing to its end; 0 means none.
	RequestTimeout time.Duration
	// MaxRequestBytes bounds a request body (16 MiB); a larger one gets 413.
	MaxRequestBytes int64
	// WriteTimeout bounds writing one event of a stream (30s): a client that stops
	// reading is cut off and its run aborted.
	WriteTimeout time.Duration
	// MaxBacklogBytes bounds the output a request may hold for a client that reads
	// slower than the model writes (outbuf.DefaultMaxBytes, as --client-buffer-bytes
	// for the other transports); past it the client is cut off and its run aborted.
	MaxBacklogBytes int
	// Draining reports that the server is shutting down (503 from then on).
	Draining func() bool
	// Fingerprint is the system_fingerprint of responses.
	Fingerprint string
	Observer    Observer
	Log         logr.Logger
}

// Handler serves /v1/.
type Handler struct {
	b    Backend
	opts Options
	mux  *http.ServeMux
}

// New returns the API.
func New(b Backend, opts Options) *Handler {
	if opts.Template == nil {
		opts.Template, _ = chattemplate.Preset(chattemplate.Default)
	}
	if opts.MaxRequestBytes <= 0 {
		opts.MaxRequestBytes = 16 << 20
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.MaxBacklogBytes <= 0 {
		opts.MaxBacklogBytes = outbuf.DefaultMaxBytes
	}
	if opts.Draining == nil {
		opts.Draining = func() bool { return false }
	}
	h := &Handler{b: b, opts: opts, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /v1/models", h.observe("models", h.models))
	h.mux.HandleFunc("GET /v1/models/{model...}", h.observe("models", h.model))
	h.mux.HandleFunc("POST /v1/chat/completions", h.observe("chat.completions", h.chat))
	h.mux.HandleFunc("POST /v1/completions", h.observe("completions", h.completions))
	h.mux.HandleFunc("/v1/", h.observe("unknown", h.unknown))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Unauthorized answers a request without the API key, in OpenAI's shape.
func Unauthorized(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
	writeError(w, &Error{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: strp("invalid_api_key"),
		Message: "Incorrect or missing API key: send the header 'Authorization: Bearer KEY' with the server's key."})
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (h *Handler) observe(endpoint string, f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		f(sw, r)
		if h.opts.Observer != nil {
			h.opts.Observer.ObserveOpenAI(endpoint, sw.status, time.Since(start))
		}
	}
}

// marshal encodes v as OpenAI does: <, > and & stay as they are.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	b, err := marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"cannot encode the response","type":"server_error","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	n, _ := w.Write(append(b, '\n'))
	return n
}

func writeError(w http.ResponseWriter, e *Error) int {
	if e.RetryAfter != "" {
		w.Header().Set("Retry-After", e.RetryAfter)
	}
	return writeJSON(w, e.Status, errorBody{Error: e})
}

func (h *Handler) fail(w http.ResponseWriter, e *Error) {
	n := writeError(w, e)
	if h.opts.Observer != nil {
		h.opts.Observer.BytesOut("http", n)
	}
}

func (h *Handler) unknown(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/models", "/v1/chat/completions", "/v1/completions":
		allow := http.MethodPost
		if r.URL.Path == "/v1/models" {
			allow = http.MethodGet
		}
		w.Header().Set("Allow", allow)
		h.fail(w, &Error{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest,
			Message: fmt.Sprintf("Invalid method for URL (%s %s): use %s.", r.Method, r.URL.Path, allow)})
		return
	}
	h.fail(w, notFound("Invalid URL (%s %s): this server serves GET /v1/models, POST /v1/chat/completions and POST /v1/completions.", r.Method, r.URL.Path))
}

// modelID is the id clients name the model by.
func (h *Handler) modelID() string {
	if h.opts.ModelName != "" {
		return h.opts.ModelName
	}
	path := h.opts.ModelPath
	if p, ok := h.b.Loaded(); ok {
		path = p.ModelPath
	} else if st := h.b.Status(); st.Model != "" {
		path = st.Model
	}
	if path == "" {
		return ""
	}
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}

func (h *Handler) modelEntry() (Model, bool) {
	st := h.b.Status()
	if st.Model == "" && h.opts.ModelName == "" && h.opts.ModelPath == "" {
		return Model{}, false
	}
	m := Model{ID: h.modelID(), Object: "model", Created: 0, OwnedBy: "rkllm-server"}
	if p, ok := h.b.Loaded(); ok {
		m.MaxModelLen, m.ContextLength = p.MaxContextLen, p.MaxContextLen
	}
	return m, true
}

// models serves GET /v1/models: the model this server serves (none while no model is
// configured or loaded).
func (h *Handler) models(w http.ResponseWriter, _ *http.Request) {
	list := ModelList{Object: "list", Data: []Model{}}
	if m, ok := h.modelEntry(); ok {
		list.Data = append(list.Data, m)
	}
	writeJSON(w, http.StatusOK, list)
}

func (h *Handler) model(w http.ResponseWriter, r *http.Request) {
	m, ok := h.modelEntry()
	if !ok || r.PathValue("model") != m.ID {
		h.fail(w, modelNotFound(r.PathValue("model"), h.modelID()))
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// readBody reads the request body within MaxRequestBytes, paying for it first from the
// request's account of the budget of bytes in flight.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *Error) {
	r.Body = http.MaxBytesReader(w, r.Body, h.opts.MaxRequestBytes)
	body, err := inflight.ReadBody(r, h.opts.MaxRequestBytes)
	if h.opts.Observer != nil {
		h.opts.Observer.BytesIn("http", len(body))
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		var over *inflight.OverError
		switch {
		case errors.As(err, &tooLarge):
			return nil, &Error{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: strp("request_too_large"),
				Message: fmt.Sprintf("The request body is larger than %d bytes (--max-request-bytes): shorten the conversation.", h.opts.MaxRequestBytes)}
		case errors.As(err, &over):
			return nil, overBudget(err)
		}
		return nil, invalid("", "", "Cannot read the request body: %v.", err)
	}
	return body, nil
}

// ready checks the model the request names and that the server can take it.
func (h *Handler) ready(model string) (runtime.Param, runtime.ABI, *Error) {
	id := h.modelID()
	if id == "" {
		return runtime.Param{}, "", unavailable("no model is loaded (the server was started without --model; a JSON-RPC client loads one with rkllm.init)")
	}
	if model == "" {
		return runtime.Param{}, "", invalid("model", "missing_required_parameter", "You must provide a model parameter (this server serves `%s`).", id)
	}
	if model != id {
		return runtime.Param{}, "", modelNotFound(model, id)
	}
	if h.opts.Draining() {
		return runtime.Param{}, "", unavailable("it is shutting down")
	}
	st := h.b.Status()
	param, ok := h.b.Loaded()
	if !st.Ready || !ok {
		reason := st.Reason
		if reason == "" {
			reason = "the model is loading"
		}
		return runtime.Param{}, "", unavailable(reason)
	}
	return param, runtime.ABI(st.ABI), nil
}
