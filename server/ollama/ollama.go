// Package ollama is rkllm-server's Ollama API on /api/: POST /api/chat and
// /api/generate (NDJSON streams by default, one object with "stream": false), GET
// /api/tags, POST /api/show, GET /api/ps, GET /api/version, and embeddings on POST
// /api/embed and /api/embeddings. It runs requests through the same machinery as the
// OpenAI API (server/generation), so both wait in one queue under the same limits, and
// a chat continued over /api/chat reuses the KV cache as one over /v1/ does. The model
// is managed by the RKLLMModel resource, not by clients: pull, push, create, copy and
// delete answer 403 saying so. docs/ollama.md is its reference.
package ollama

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// APIVersion is the version of Ollama's API this one follows, answered by GET
// /api/version (clients compare it with the versions that introduced features).
const APIVersion = "0.12.6"

// Observer receives the API's measurements.
type Observer interface {
	// ObserveOllama reports one request: the endpoint ("chat", "generate", "embed",
	// ...), the HTTP status answered and the time it took.
	ObserveOllama(endpoint string, status int, elapsed time.Duration)
}

// Options configure the API.
type Options struct {
	Observer Observer
	Log      logr.Logger
}

// Handler serves /api/.
type Handler struct {
	g    *generation.Service
	opts Options
	mux  *http.ServeMux
}

// New returns the API, running requests through g.
func New(g *generation.Service, opts Options) *Handler {
	h := &Handler{g: g, opts: opts, mux: http.NewServeMux()}
	for _, r := range []struct {
		pattern, endpoint string
		f                 http.HandlerFunc
	}{
		{"POST /api/chat", "chat", h.chat},
		{"POST /api/generate", "generate", h.generate},
		{"POST /api/embed", "embed", h.embed},
		{"POST /api/embeddings", "embeddings", h.embeddings},
		{"GET /api/tags", "tags", h.tags},
		{"POST /api/show", "show", h.show},
		{"GET /api/ps", "ps", h.ps},
		{"GET /api/version", "version", h.version},
		{"POST /api/pull", "pull", h.managed},
		{"POST /api/push", "push", h.managed},
		{"POST /api/create", "create", h.managed},
		{"POST /api/copy", "copy", h.managed},
		{"DELETE /api/delete", "delete", h.managed},
		{"/api/blobs/", "blobs", h.managed},
		{"/api/", "unknown", h.unknown},
	} {
		h.mux.HandleFunc(r.pattern, h.observe(r.endpoint, r.f))
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) observe(endpoint string, f http.HandlerFunc) http.HandlerFunc {
	return generation.Observe(f, func(status int, elapsed time.Duration) {
		if h.opts.Observer != nil {
			h.opts.Observer.ObserveOllama(endpoint, status, elapsed)
		}
	})
}

// Unauthorized answers a request without the API key, in Ollama's shape.
func Unauthorized(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-server"`)
	writeError(w, &generation.Error{Status: http.StatusUnauthorized,
		Message: "unauthorized: send the header 'Authorization: Bearer KEY' with the server's API key"})
}

// errorFallback is the body of a response that cannot be encoded.
const errorFallback = `{"error":"cannot encode the response"}`

func writeJSON(w http.ResponseWriter, status int, v any) int {
	return generation.WriteJSON(w, status, v, errorFallback)
}

func writeError(w http.ResponseWriter, e *generation.Error) int {
	if e.RetryAfter != "" {
		w.Header().Set("Retry-After", e.RetryAfter)
	}
	return writeJSON(w, e.Status, errorBody{Error: e.Message})
}

func (h *Handler) fail(w http.ResponseWriter, e *generation.Error) {
	h.g.BytesOut(writeError(w, e))
}

// methods are the API's endpoints and their methods, for 405s.
var methods = map[string]string{
	"/api/chat": http.MethodPost, "/api/generate": http.MethodPost, "/api/embed": http.MethodPost, "/api/embeddings": http.MethodPost,
	"/api/tags": http.MethodGet, "/api/show": http.MethodPost, "/api/ps": http.MethodGet, "/api/version": http.MethodGet,
	"/api/pull": http.MethodPost, "/api/push": http.MethodPost, "/api/create": http.MethodPost, "/api/copy": http.MethodPost,
	"/api/delete": http.MethodDelete,
}

func (h *Handler) unknown(w http.ResponseWriter, r *http.Request) {
	if allow, ok := methods[r.URL.Path]; ok {
		w.Header().Set("Allow", allow)
		h.fail(w, &generation.Error{Status: http.StatusMethodNotAllowed, Message: fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, allow)})
		return
	}
	h.fail(w, generation.NotFound("%s %s: this server serves /api/chat, /api/generate, /api/embed, /api/embeddings, /api/tags, /api/show, /api/ps and /api/version", r.Method, r.URL.Path))
}

// managed answers the endpoints that change the models a server has.
func (h *Handler) managed(w http.ResponseWriter, r *http.Request) {
	h.fail(w, &generation.Error{Status: http.StatusForbidden, Message: fmt.Sprintf(
		"%s is not available: the model is managed by the RKLLMModel resource (Kubernetes), not by clients; this server serves %s. To pull, replace or delete a model, change the RKLLMModel (or the server's --model)",
		strings.TrimPrefix(r.URL.Path, "/api/"), h.nameOr("no model"))})
}

// name is the served model's name as Ollama writes names: with a tag (":latest" when
// the id has none); "" while no model is served.
func (h *Handler) name() string {
	id := h.g.ModelID()
	if id == "" || strings.Contains(id, ":") {
		return id
	}
	return id + ":latest"
}

func (h *Handler) nameOr(none string) string {
	if n := h.name(); n != "" {
		return n
	}
	return none
}

// matches reports whether model names the served model: its id, or its name with the
// tag (clients such as Open WebUI add ":latest" to names without one).
func (h *Handler) matches(model string) bool {
	id := h.g.ModelID()
	return id != "" && (model == id || model == h.name())
}

// ready checks the model a request names and that the server can take it.
func (h *Handler) ready(model string) (generation.Loaded, *generation.Error) {
	switch {
	case h.g.ModelID() == "":
		return generation.Loaded{}, generation.NoModel()
	case model == "":
		return generation.Loaded{}, generation.Invalid("model", "", "model is required: this server serves %s", h.name())
	case !h.matches(model):
		return generation.Loaded{}, generation.NotFound("model %q not found: this server serves %s (GET /api/tags lists it)", model, h.name())
	}
	return h.g.Ready()
}

// now is a response's created_at.
func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// modelFile describes the model file: its size, its time, and a digest of its path,
// size and time (an identity, not a hash of the content, which would mean reading
// gigabytes).
type modelFile struct {
	size     int64
	modified time.Time
	digest   string
}

func (h *Handler) file() modelFile {
	path := h.g.ModelPath()
	f := modelFile{}
	if st, err := os.Stat(path); err == nil {
		f.size, f.modified = st.Size(), st.ModTime()
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d", path, f.size, f.modified.UnixNano()))
	f.digest = hex.EncodeToString(sum[:])
	return f
}

// details are what the server knows of the model: its format, and the chat template's
// name as its family.
func (h *Handler) details() Details {
	family := strings.TrimPrefix(h.g.Template().Name(), "jinja:")
	return Details{Format: "rkllm", Family: family, Families: []string{family}}
}

// tags serves GET /api/tags: the served model (none while no model is configured).
func (h *Handler) tags(w http.ResponseWriter, _ *http.Request) {
	list := ListResponse{Models: []ListModel{}}
	if h.g.Served() && h.name() != "" {
		f := h.file()
		list.Models = append(list.Models, ListModel{Name: h.name(), Model: h.name(), ModifiedAt: f.modified.UTC().Format(time.RFC3339Nano),
			Size: f.size, Digest: f.digest, Details: h.details()})
	}
	writeJSON(w, http.StatusOK, list)
}

// neverExpires is the expires_at of the loaded model: the server does not unload it.
const neverExpires = "2318-01-01T00:00:00Z"

// ps serves GET /api/ps: the model, once loaded.
func (h *Handler) ps(w http.ResponseWriter, _ *http.Request) {
	list := ProcessResponse{Models: []ProcessModel{}}
	if lm, ok := h.g.Backend().LoadedModel(); ok && h.name() != "" {
		p := lm.Param
		f := h.file()
		list.Models = append(list.Models, ProcessModel{Name: h.name(), Model: h.name(), Size: f.size, Digest: f.digest,
			Details: h.details(), ExpiresAt: neverExpires, ContextLength: int(p.MaxContextLen)})
	}
	writeJSON(w, http.StatusOK, list)
}

// version serves GET /api/version.
func (h *Handler) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"version": APIVersion})
}
