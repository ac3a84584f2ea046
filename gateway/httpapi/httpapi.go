// Package httpapi is the gateway's front door: one OpenAI-compatible API (/v1/) and
// one Ollama-style API (/api/) for every model the cluster serves. Requests are routed
// by the model they name to a ready replica (routing), wait in the model's bounded
// queue while it activates or while every replica is busy (admission, scaling), and
// are forwarded to the replica with its reply streamed back (proxy). The gateway lists
// the models itself (GET /v1/models, /api/tags, /api/ps), with whether each is loaded.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/rkllm-operator/rkllm-operator/gateway/admission"
	"github.com/rkllm-operator/rkllm-operator/gateway/auth"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
	"github.com/rkllm-operator/rkllm-operator/gateway/request"
	"github.com/rkllm-operator/rkllm-operator/gateway/routing"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
)

// Defaults of Options.
const (
	DefaultMaxBodyBytes          = 16 << 20
	DefaultMaxInFlightPerReplica = 4
	DefaultMaxQueue              = 64
	DefaultQueueTimeout          = 5 * time.Minute
	DefaultKeepAlive             = 15 * time.Second
	DefaultMaxPerClient          = 16
	DefaultRetryAfter            = 30 * time.Second
)

// Options are the front door's limits. Zero values take the defaults.
type Options struct {
	// MaxBodyBytes bounds a request body; a larger one is refused (413) before it is
	// read further.
	MaxBodyBytes int64
	// MaxInFlightPerReplica is how many requests one replica gets at once; more wait in
	// the gateway's queue, where any replica can take them.
	MaxInFlightPerReplica int
	// MaxQueue is how many requests may wait per model; more are refused (429).
	MaxQueue int
	// QueueTimeout bounds a wait for a busy replica (an activation is bounded by the
	// scaler's activation timeout instead).
	QueueTimeout time.Duration
	// ActivationTimeout bounds a wait for a model to activate.
	ActivationTimeout time.Duration
	// KeepAlive is the interval of the comments sent on a waiting stream.
	KeepAlive time.Duration
	// MaxPerClient is how many requests one client (API key, or address without keys)
	// may have at once; negative: no limit.
	MaxPerClient int
	// RetryAfter is the Retry-After of refusals that will pass.
	RetryAfter time.Duration
	// Routing shapes the choice of replica.
	Routing routing.Policy
}

func (o *Options) defaults() {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxInFlightPerReplica <= 0 {
		o.MaxInFlightPerReplica = DefaultMaxInFlightPerReplica
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = DefaultMaxQueue
	}
	if o.QueueTimeout <= 0 {
		o.QueueTimeout = DefaultQueueTimeout
	}
	if o.ActivationTimeout <= 0 {
		o.ActivationTimeout = scaling.DefaultActivationTimeout
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.MaxPerClient == 0 {
		o.MaxPerClient = DefaultMaxPerClient
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = DefaultRetryAfter
	}
	o.Routing.MaxInFlight = o.MaxInFlightPerReplica
}

// Scaler activates and grows models (scaling.Scaler).
type Scaler interface {
	Activate(m catalog.Model) *scaling.Activation
	Grow(m catalog.Model)
	Poke()
}

// UpstreamKeys gives the API key of a model's server ("" when it has none).
type UpstreamKeys interface {
	Key(ctx context.Context, m catalog.Model) (string, error)
}

// Deps are what the front door works with.
type Deps struct {
	Catalog catalog.Catalog
	// Scaler is nil when the gateway may not scale models.
	Scaler Scaler
	// Keys returns the API keys clients must present; nil: no key is needed.
	Keys func() *auth.Keys
	// Upstream gives the servers' own API keys; nil: none has one.
	Upstream UpstreamKeys
	Proxy    *proxy.Proxy
	Metrics  *metrics.Metrics
	Clock    clock.Clock
	Log      logr.Logger
	// Seed keys the conversation and rendezvous hashes.
	Seed maphash.Seed
}

// Handler serves the gateway's APIs.
type Handler struct {
	Deps
	opts    Options
	mux     *http.ServeMux
	models  *registry
	clients *admission.Clients
}

// New returns the front door. Start must run to follow the catalog.
func New(d Deps, o Options) *Handler {
	o.defaults()
	if d.Clock == nil {
		d.Clock = clock.RealClock{}
	}
	h := &Handler{Deps: d, opts: o, mux: http.NewServeMux(), clients: admission.NewClients(o.MaxPerClient)}
	h.models = &registry{maxQueue: o.MaxQueue, perReplica: o.MaxInFlightPerReplica, policy: o.Routing, seed: d.Seed,
		models: map[string]*modelState{}, readyMetric: d.Metrics.ReadyReplicas}
	for _, r := range []struct {
		pattern string
		f       http.HandlerFunc
	}{
		{"GET /v1/models", h.listModels},
		{"GET /v1/models/{model...}", h.getModel},
		{"POST /v1/chat/completions", h.infer(request.OpenAIChat, "chat.completions")},
		{"POST /v1/completions", h.infer(request.OpenAICompletion, "completions")},
		{"POST /v1/embeddings", h.infer(request.OpenAIEmbedding, "embeddings")},
		{"/v1/", h.unknownOpenAI},
		{"POST /api/chat", h.infer(request.OllamaChat, "ollama.chat")},
		{"POST /api/generate", h.infer(request.OllamaGenerate, "ollama.generate")},
		{"POST /api/embed", h.infer(request.OllamaOther, "ollama.embed")},
		{"POST /api/embeddings", h.infer(request.OllamaOther, "ollama.embeddings")},
		{"POST /api/show", h.infer(request.OllamaOther, "ollama.show")},
		{"GET /api/tags", h.ollamaTags},
		{"GET /api/ps", h.ollamaPS},
		{"GET /api/version", h.ollamaVersion},
		{"/api/", h.unknownOllama},
		{"GET /{$}", h.root},
	} {
		h.mux.HandleFunc(r.pattern, r.f)
	}
	return h
}

// Activity is what the gateway's requests say of each model, for the scaler.
func (h *Handler) Activity() scaling.Activity { return h.models }

// Start keeps each model's room in line with its ready replicas until ctx ends (a
// manager Runnable).
func (h *Handler) Start(ctx context.Context) error {
	h.models.watch(ctx, h.Catalog)
	return nil
}

// ServeHTTP implements http.Handler: a panic in a request is logged with its stack and
// ends that request only.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler { //nolint:errorlint // the sentinel is compared as net/http does
				panic(v)
			}
			h.Log.Error(fmt.Errorf("panic: %v", v), "request failed", "path", r.URL.Path, "stack", string(debug.Stack()))
			panic(http.ErrAbortHandler)
		}
	}()
	h.mux.ServeHTTP(w, r)
}

// client names the requester for the per-client limit and checks its key; ok is false
// after a 401 was written.
func (h *Handler) client(w http.ResponseWriter, r *http.Request, ollama bool) (auth.Client, bool) {
	if h.Keys == nil {
		return auth.Client{Name: remoteHost(r)}, true
	}
	c, ok := h.Keys().Check(r.Header.Get("Authorization"))
	if !ok {
		h.Metrics.Rejected("", "unauthorized")
		errorf(http.StatusUnauthorized, typeAuthentication, "invalid_api_key", "unauthorized",
			"Incorrect or missing API key: send the header 'Authorization: Bearer KEY' with a key of the gateway.").write(w, ollama, false)
		return auth.Client{}, false
	}
	return c, true
}

func (h *Handler) unknownOpenAI(w http.ResponseWriter, r *http.Request) {
	errorf(http.StatusNotFound, typeInvalidRequest, "unknown_url", "", "Invalid URL (%s %s): the gateway serves GET /v1/models, POST /v1/chat/completions, /v1/completions and /v1/embeddings.",
		r.Method, r.URL.Path).write(w, false, false)
}

func (h *Handler) unknownOllama(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete":
		errorf(http.StatusForbidden, typePermission, "", "", "%s is not available: models are RKLLMModel resources (Kubernetes), which the cluster's administrator creates and changes",
			r.URL.Path).write(w, true, false)
		return
	}
	errorf(http.StatusNotFound, typeInvalidRequest, "", "", "%s %s: the gateway serves /api/chat, /api/generate, /api/embed, /api/embeddings, /api/show, /api/tags, /api/ps and /api/version",
		r.Method, r.URL.Path).write(w, true, false)
}

// root answers the liveness check Ollama clients make.
func (h *Handler) root(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("rkllm-gateway is running\n"))
}

// errCause unwraps the cause of a cancelled wait.
func errCause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
}
