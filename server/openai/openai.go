// Package openai is rkllm-server's OpenAI-compatible API on /v1/: GET /v1/models,
// POST /v1/chat/completions, POST /v1/completions and POST /v1/embeddings, with
// server-sent events for streams, tools and OpenAI's error shape. It is a front door to
// the same supervisor as the JSON-RPC API (and the Ollama API, server/ollama), through
// the machinery they share (server/generation): requests wait in the same queue, under
// the same limits. Conversations are rendered with the server's chat template
// (server/chattemplate) and run with the runtime's own template switched off; the
// supervisor reuses the KV cache when a conversation continues the previous one.
// docs/openai.md is its reference.
package openai

import (
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// Observer receives the API's measurements.
type Observer interface {
	// ObserveOpenAI reports one request: the endpoint ("chat.completions",
	// "completions", "embeddings", "models"), the HTTP status answered and the time
	// it took.
	ObserveOpenAI(endpoint string, status int, elapsed time.Duration)
}

// Options configure the API.
type Options struct {
	// Fingerprint is the system_fingerprint of responses.
	Fingerprint string
	Observer    Observer
	Log         logr.Logger
}

// Handler serves /v1/.
type Handler struct {
	g    *generation.Service
	opts Options
	mux  *http.ServeMux
}

// New returns the API, running requests through g.
func New(g *generation.Service, opts Options) *Handler {
	h := &Handler{g: g, opts: opts, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /v1/models", h.observe("models", h.models))
	h.mux.HandleFunc("GET /v1/models/{model...}", h.observe("models", h.model))
	h.mux.HandleFunc("POST /v1/chat/completions", h.observe("chat.completions", h.chat))
	h.mux.HandleFunc("POST /v1/completions", h.observe("completions", h.completions))
	h.mux.HandleFunc("POST /v1/embeddings", h.observe("embeddings", h.embeddings))
	h.mux.HandleFunc("/v1/", h.observe("unknown", h.unknown))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// Unauthorized answers a request without the API key, in OpenAI's shape.
func Unauthorized(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
	writeError(w, &Error{Status: http.StatusUnauthorized, Type: generation.TypeAuthentication, Code: strp("invalid_api_key"),
		Message: "Incorrect or missing API key: send the header 'Authorization: Bearer KEY' with the server's key."})
}

func (h *Handler) observe(endpoint string, f http.HandlerFunc) http.HandlerFunc {
	return generation.Observe(f, func(status int, elapsed time.Duration) {
		if h.opts.Observer != nil {
			h.opts.Observer.ObserveOpenAI(endpoint, status, elapsed)
		}
	})
}

// errorFallback is the body of an error that cannot be encoded.
const errorFallback = `{"error":{"message":"cannot encode the response","type":"server_error","param":null,"code":null}}`

func writeJSON(w http.ResponseWriter, status int, v any) int {
	return generation.WriteJSON(w, status, v, errorFallback)
}

func writeError(w http.ResponseWriter, e *Error) int {
	if e.RetryAfter != "" {
		w.Header().Set("Retry-After", e.RetryAfter)
	}
	return writeJSON(w, e.Status, errorBody{Error: e})
}

func (h *Handler) fail(w http.ResponseWriter, e *Error) {
	h.g.BytesOut(writeError(w, e))
}

// paths are the API's endpoints and their methods.
var paths = map[string]string{"/v1/models": http.MethodGet, "/v1/chat/completions": http.MethodPost,
	"/v1/completions": http.MethodPost, "/v1/embeddings": http.MethodPost}

func (h *Handler) unknown(w http.ResponseWriter, r *http.Request) {
	if allow, ok := paths[r.URL.Path]; ok {
		w.Header().Set("Allow", allow)
		h.fail(w, &Error{Status: http.StatusMethodNotAllowed, Type: generation.TypeInvalidRequest,
			Message: fmt.Sprintf("Invalid method for URL (%s %s): use %s.", r.Method, r.URL.Path, allow)})
		return
	}
	h.fail(w, generation.NotFound("Invalid URL (%s %s): this server serves GET /v1/models, POST /v1/chat/completions, POST /v1/completions and POST /v1/embeddings.", r.Method, r.URL.Path))
}

func (h *Handler) modelEntry() (Model, bool) {
	if !h.g.Served() {
		return Model{}, false
	}
	m := Model{ID: h.g.ModelID(), Object: "model", Created: 0, OwnedBy: "rkllm-server"}
	if lm, ok := h.g.Backend().LoadedModel(); ok {
		m.MaxModelLen, m.ContextLength = lm.Param.MaxContextLen, lm.Param.MaxContextLen
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
		h.fail(w, modelNotFound(r.PathValue("model"), h.g.ModelID()))
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// ready checks the model the request names and that the server can take it.
func (h *Handler) ready(model string) (generation.Loaded, *Error) {
	id := h.g.ModelID()
	switch {
	case id == "":
		return generation.Loaded{}, generation.NoModel()
	case model == "":
		return generation.Loaded{}, invalid("model", "missing_required_parameter", "You must provide a model parameter (this server serves `%s`).", id)
	case model != id:
		return generation.Loaded{}, modelNotFound(model, id)
	}
	return h.g.Ready()
}
