// Package generation is what rkllm-server's HTTP APIs (OpenAI's on /v1/, Ollama's on
// /api/) share below their request and response shapes: the served model's id and
// readiness, request bodies read within their bound, sampling parameters turned into
// run parameters by the runtime ABI's rules, conversations rendered with the server's
// chat template, runs queued on the supervisor with their output relayed (stop
// sequences, tool calls, the end-of-reply token, clients that read slower than the
// model writes) and counted, and embeddings from the last hidden layer. Both APIs wait
// in the same queue under the same limits; each writes the *Error values of this
// package in its own shape.
package generation

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
	"github.com/rkllm-operator/rkllm-operator/server/embedding"
	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// Backend is what the APIs need from the supervisor.
type Backend interface {
	Enqueue(ctx context.Context, req supervisor.Request) (*supervisor.Ticket, error)
	Abort(owner, id string) ([]string, error)
	Status() supervisor.Status
	// LoadedModel describes the loaded model: its parameters, ABI and embedding width.
	LoadedModel() (supervisor.LoadedModel, bool)
}

// Observer receives the measurements both APIs share.
type Observer interface {
	// ClientCutOff reports a client cut off for not reading its stream.
	ClientCutOff(transport string)
	BytesIn(transport string, n int)
	BytesOut(transport string, n int)
}

// Transport is the transport the APIs report their bytes under.
const Transport = "http"

// Options configure the Service. Zero values take the defaults in brackets.
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
	// WriteTimeout bounds writing one piece of a stream (30s): a client that stops
	// reading is cut off and its run aborted.
	WriteTimeout time.Duration
	// MaxBacklogBytes bounds the output a request may hold for a client that reads
	// slower than the model writes (outbuf.DefaultMaxBytes, as --client-buffer-bytes
	// for the other transports); past it the client is cut off and its run aborted.
	MaxBacklogBytes int
	// Draining reports that the server is shutting down (503 from then on).
	Draining func() bool
	// Embedding configures embeddings (mean pooling, normalized, 256 inputs).
	Embedding EmbeddingOptions
	Observer  Observer
	Log       logr.Logger
}

// EmbeddingOptions configure embeddings.
type EmbeddingOptions struct {
	// Pooling turns a input's hidden states into one vector ("" is mean).
	Pooling embedding.Pooling
	// Raw leaves vectors as pooled instead of scaling them to length 1.
	Raw bool
	// MaxInputs bounds the inputs of one request (256).
	MaxInputs int
}

// Service is the part of the APIs that does not depend on their shapes.
type Service struct {
	b    Backend
	opts Options
}

// New returns the Service.
func New(b Backend, opts Options) *Service {
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
	if opts.Embedding.Pooling == "" {
		opts.Embedding.Pooling = embedding.Mean
	}
	if opts.Embedding.MaxInputs <= 0 {
		opts.Embedding.MaxInputs = 256
	}
	return &Service{b: b, opts: opts}
}

// Template is the chat template conversations are rendered with.
func (s *Service) Template() chattemplate.Template { return s.opts.Template }

// Backend returns the supervisor the Service queues on.
func (s *Service) Backend() Backend { return s.b }

// ModelID is the id clients name the model by: --served-model-name, else the model
// file's name without its extension; "" while no model is configured or loaded.
func (s *Service) ModelID() string {
	if s.opts.ModelName != "" {
		return s.opts.ModelName
	}
	path := s.ModelPath()
	if path == "" {
		return ""
	}
	return strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
}

// ModelPath is the model file: the loaded one, else the one being loaded, else the
// configured one.
func (s *Service) ModelPath() string {
	if m, ok := s.b.LoadedModel(); ok {
		return m.Param.ModelPath
	}
	if st := s.b.Status(); st.Model != "" {
		return st.Model
	}
	return s.opts.ModelPath
}

// Served reports whether a model is configured or loaded (one the APIs list).
func (s *Service) Served() bool {
	return s.b.Status().Model != "" || s.opts.ModelName != "" || s.opts.ModelPath != ""
}

// NoModel is the 503 of a server without a model.
func NoModel() *Error {
	return Unavailable("no model is loaded (the server was started without --model; a JSON-RPC client loads one with rkllm.init)")
}

// Loaded is the model a request runs on.
type Loaded struct {
	Param runtime.Param
	ABI   runtime.ABI
	// EmbedWidth is its embedding width (hidden size), learned at load or configured
	// (--embedding-width); 0 when the runtime could not tell.
	EmbedWidth int
}

// Ready checks that the server can take a request now: not draining, the model
// loaded. The caller has checked the model the request names against ModelID.
func (s *Service) Ready() (Loaded, *Error) {
	if s.opts.Draining() {
		return Loaded{}, Unavailable("it is shutting down")
	}
	st := s.b.Status()
	m, ok := s.b.LoadedModel()
	if !st.Ready || !ok {
		reason := st.Reason
		if reason == "" {
			reason = "the model is loading"
		}
		return Loaded{}, Unavailable(reason)
	}
	return Loaded{Param: m.Param, ABI: m.ABI, EmbedWidth: m.EmbedWidth}, nil
}

// ReadBody reads the request body within MaxRequestBytes, paying for it first from the
// request's account of the budget of bytes in flight.
func (s *Service) ReadBody(w http.ResponseWriter, r *http.Request) ([]byte, *Error) {
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxRequestBytes)
	body, err := inflight.ReadBody(r, s.opts.MaxRequestBytes)
	if s.opts.Observer != nil {
		s.opts.Observer.BytesIn(Transport, len(body))
	}
	if err != nil {
		var tooLarge *http.MaxBytesError
		var over *inflight.OverError
		switch {
		case errors.As(err, &tooLarge):
			return nil, &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Code: Strp("request_too_large"),
				Message: fmt.Sprintf("The request body is larger than %d bytes (--max-request-bytes): shorten it.", s.opts.MaxRequestBytes)}
		case errors.As(err, &over):
			return nil, OverBudget(err)
		}
		return nil, Invalid("", "", "Cannot read the request body: %v.", err)
	}
	return body, nil
}

// BytesOut reports n bytes written to a client.
func (s *Service) BytesOut(n int) {
	if s.opts.Observer != nil {
		s.opts.Observer.BytesOut(Transport, n)
	}
}

// Marshal encodes v as JSON with <, > and & as they are (as OpenAI and Ollama's
// clients read them either way, and logs stay readable).
func Marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// WriteJSON writes v as the whole response and returns the bytes written. fallback is
// the body written when v cannot be encoded (a 500).
func WriteJSON(w http.ResponseWriter, status int, v any, fallback string) int {
	b, err := Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(fallback)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	n, _ := w.Write(append(b, '\n'))
	return n
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

// Observe wraps f to report the status it answered and the time it took.
func Observe(f http.HandlerFunc, report func(status int, elapsed time.Duration)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		f(sw, r)
		report(sw.status, time.Since(start))
	}
}
