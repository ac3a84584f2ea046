package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/gateway/admission"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
	"github.com/rkllm-operator/rkllm-operator/gateway/request"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
)

// Causes of a wait that ended without a replica.
var (
	errQueueTimeout      = errors.New("queue timeout")
	errActivationTimeout = errors.New("activation timeout")
)

// statusClientGone is the status recorded (never sent) for a client that left.
const statusClientGone = 499

// infer serves a request that names a model: it authenticates the client, reads the
// body, finds the model, waits for room (activating the model when it has no ready
// replica) and forwards the request to a replica.
func (h *Handler) infer(api request.API, endpoint string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		x := &exchange{h: h, w: &statusWriter{ResponseWriter: w}, r: r, api: api, endpoint: endpoint, start: h.Clock.Now()}
		defer x.record()
		x.serve()
	}
}

// exchange is one request on its way through the gateway.
type exchange struct {
	h        *Handler
	w        *statusWriter
	r        *http.Request
	api      request.API
	endpoint string
	start    time.Time
	// model labels the metrics: the model's id once known.
	model string
	// committed is true once a keepalive opened the event stream.
	committed bool
	// gone is true when the client left before an answer.
	gone bool
}

func (x *exchange) serve() {
	client, ok := x.h.client(x.w, x.r, x.api.Ollama())
	if !ok {
		return
	}
	body, e := x.readBody()
	if e != nil {
		x.fail(e)
		return
	}
	facts, err := request.Inspect(x.api, body, x.h.Seed)
	if err != nil {
		x.fail(errorf(http.StatusBadRequest, typeInvalidRequest, "", "bad_request", "%s", err).withParam(paramOf(err)))
		return
	}
	m, ok := x.h.Catalog.Get(facts.Model)
	if !ok || !client.May(m.Name) {
		x.fail(x.unknownModel(facts.Model, client.May))
		return
	}
	x.model = m.Name
	releaseClient, err := x.h.clients.Acquire(client.Name)
	if err != nil {
		x.fail(errorf(http.StatusTooManyRequests, typeRateLimit, "rate_limit_exceeded", "client_limit",
			"Too many requests at once from this client (at most %d): wait for one to end.", x.h.opts.MaxPerClient).after(time.Second))
		return
	}
	defer releaseClient()

	st := x.h.models.state(m.Name)
	st.used(x.h.Clock.Now())
	defer func() {
		st.used(x.h.Clock.Now())
		if x.h.Scaler != nil {
			// A request ending may leave the model idle, which may let an activation
			// waiting for an NPU evict it.
			x.h.Scaler.Poke()
		}
	}()
	release, e := x.admit(m, st, facts)
	if e != nil {
		x.fail(e)
		return
	}
	defer release()
	x.forward(m, st, facts, body)
}

// readBody reads the body, bounded by MaxBodyBytes.
func (x *exchange) readBody() ([]byte, *apiError) {
	limit := x.h.opts.MaxBodyBytes
	tooLarge := errorf(http.StatusRequestEntityTooLarge, typeInvalidRequest, "request_too_large", "too_large",
		"The request body is larger than the gateway's limit of %d bytes.", limit)
	if x.r.ContentLength > limit {
		return nil, tooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(x.w, x.r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, tooLarge
	case err != nil:
		return nil, errorf(http.StatusBadRequest, typeInvalidRequest, "", "bad_request", "Reading the request body failed: %v.", err)
	}
	return body, nil
}

func paramOf(err error) string {
	if errors.Is(err, request.ErrNoModel) {
		return "model"
	}
	return ""
}

// unknownModel is the 404 for a model the gateway does not serve (or the client may not
// use), naming those it may.
func (x *exchange) unknownModel(name string, may func(string) bool) *apiError {
	var names []string
	for _, m := range x.h.Catalog.List() {
		if may(m.Name) {
			names = append(names, m.Name)
		}
	}
	list := "none"
	if len(names) > 0 {
		list = strings.Join(names, ", ")
	}
	if x.api.Ollama() {
		return errorf(http.StatusNotFound, typeInvalidRequest, "model_not_found", "unknown_model",
			"model %q not found: the gateway serves %s (GET /api/tags lists them)", name, list)
	}
	return errorf(http.StatusNotFound, typeInvalidRequest, "model_not_found", "unknown_model",
		"The model `%s` does not exist or you do not have access to it. Available models: %s (GET /v1/models lists them).", name, list).withParam("model")
}

// admit waits for room at the model: at once when a replica has room, else in the
// model's queue while the model activates (its scaler scales it up, evicting idle
// models if it must) or while every replica is busy (asking for another replica). A
// streamed OpenAI request gets comments meanwhile.
func (x *exchange) admit(m catalog.Model, st *modelState, f request.Facts) (func(), *apiError) {
	ctx, cancel := context.WithCancelCause(x.r.Context())
	defer cancel(nil)
	wt, e := x.prepareWait(m, st)
	if e != nil {
		return nil, e
	}
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, wt.timeout, wt.cause)
	defer cancelTimeout()
	if act := wt.activation; act != nil {
		go func() {
			select {
			case <-act.Done():
				if err := act.Err(); err != nil {
					cancel(err)
				}
			case <-ctx.Done():
			}
		}()
	}
	var ka *keepalive
	if f.Stream && !x.api.Ollama() {
		ka = startKeepalive(x.w, x.h.Clock, x.h.opts.KeepAlive, func() string { return x.waitingFor(m.Name) })
	}
	x.h.Metrics.Queued(m.Name, 1)
	waitStart := x.h.Clock.Now()
	release, err := st.gate.Acquire(ctx)
	x.h.Metrics.Queued(m.Name, -1)
	x.h.Metrics.QueueWait(m.Name, x.h.Clock.Since(waitStart))
	x.committed = ka.end()
	if err == nil {
		return release, nil
	}
	return nil, x.waitError(m, errCause(ctx, err))
}

// wait is what a request in the model's queue waits for, and for how long.
type wait struct {
	timeout time.Duration
	// cause is the error the request gets when timeout passes.
	cause error
	// activation is the model's activation the request joined, if any.
	activation *scaling.Activation
}

// prepareWait says how long the request may wait and for what: for a busy replica
// (asking for another replica), or for the model's activation, which it starts or
// joins. A model that will not start is an error at once.
func (x *exchange) prepareWait(m catalog.Model, st *modelState) (wait, *apiError) {
	switch {
	case m.Ready():
		if s, _ := st.gate.State(); s.InUse >= s.Capacity && x.h.Scaler != nil {
			x.h.Scaler.Grow(m)
		}
		return wait{timeout: x.h.opts.QueueTimeout, cause: errQueueTimeout}, nil
	case m.Suspended:
		return wait{}, x.activationError(m, scaling.ErrSuspended)
	case m.Replicas == 0 && (m.Scaling == nil || x.h.Scaler == nil):
		return wait{}, x.activationError(m, scaling.ErrNotScalable)
	}
	w := wait{timeout: x.h.opts.ActivationTimeout, cause: errActivationTimeout}
	if x.h.Scaler != nil {
		w.activation = x.h.Scaler.Activate(m)
	}
	return w, nil
}

// waitingFor is the keepalive comment: what the request waits for.
func (x *exchange) waitingFor(model string) string {
	cur, ok := x.h.Catalog.Get(model)
	if ok && cur.Ready() {
		return fmt.Sprintf("waiting for a free replica of %s", model)
	}
	return fmt.Sprintf("waiting for %s to load (%d replicas asked for, none ready yet)", model, cur.Replicas)
}

// waitError answers a wait that ended without room.
func (x *exchange) waitError(m catalog.Model, err error) *apiError {
	switch {
	case errors.Is(err, admission.ErrQueueFull):
		return errorf(http.StatusTooManyRequests, typeRateLimit, "rate_limit_exceeded", "queue_full",
			"Too many requests wait for model %s (at most %d queue): retry later.", m.Name, x.h.opts.MaxQueue).after(x.h.opts.RetryAfter)
	case errors.Is(err, errQueueTimeout):
		return errorf(http.StatusServiceUnavailable, typeServer, "queue_timeout", "queue_timeout",
			"Every replica of model %s stayed busy for %s: retry later.", m.Name, x.h.opts.QueueTimeout).after(x.h.opts.RetryAfter)
	case errors.Is(err, errActivationTimeout):
		return errorf(http.StatusServiceUnavailable, typeServer, "activation_timeout", "activation_failed",
			"Model %s did not get a ready replica within %s: `kubectl describe rkm %s -n %s` tells why.",
			m.Name, x.h.opts.ActivationTimeout, m.Key.Name, m.Key.Namespace).after(x.h.opts.RetryAfter)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		x.gone = true
		return nil
	}
	return x.activationError(m, err)
}

// activationError answers an activation that failed.
func (x *exchange) activationError(m catalog.Model, err error) *apiError {
	var nc *placement.NoCapacityError
	switch {
	case errors.As(err, &nc):
		return errorf(http.StatusServiceUnavailable, typeServer, "no_capacity", "no_capacity",
			"Model %s cannot be loaded now: %s. Retry later.", m.Name, nc.Error()).after(x.h.opts.RetryAfter)
	case errors.Is(err, scaling.ErrNotScalable), errors.Is(err, scaling.ErrSuspended):
		return errorf(http.StatusServiceUnavailable, typeServer, "model_not_running", "not_scalable",
			"Model %s is not running: %s.", m.Name, err)
	}
	return errorf(http.StatusServiceUnavailable, typeServer, "activation_failed", "activation_failed",
		"Model %s could not be activated: %s.", m.Name, err).after(x.h.opts.RetryAfter)
}

// forward sends the request to a replica; a replica that cannot be reached is left out
// and the next one tried.
func (x *exchange) forward(m catalog.Model, st *modelState, f request.Facts, body []byte) {
	failed := map[string]bool{}
	for {
		cur, _ := x.h.Catalog.Get(m.Name)
		var ids []string
		addr := map[string]string{}
		for _, e := range cur.Endpoints {
			if !failed[e.ID] {
				ids = append(ids, e.ID)
				addr[e.ID] = e.Address
			}
		}
		id, outcome, release, ok := st.balancer.Acquire(ids, f.Conversation)
		if !ok {
			x.fail(errorf(http.StatusServiceUnavailable, typeServer, "no_replica", "",
				"No replica of model %s can take the request now (%d failed): retry later.", m.Name, len(failed)).after(x.h.opts.RetryAfter))
			return
		}
		x.h.Metrics.Routed(m.Name, string(outcome))
		res, e := x.attempt(cur, proxy.Target{Address: addr[id]}, body, release)
		if e != nil {
			x.fail(e)
			return
		}
		if res.Err == nil {
			return
		}
		x.h.Metrics.UpstreamError(m.Name)
		x.h.Log.V(1).Info("replica failed a request", "model", m.Name, "replica", id, "error", res.Err.Error())
		switch {
		case res.Retryable:
			failed[id] = true
		case x.r.Context().Err() != nil:
			x.gone = true
			return
		case !res.Wrote:
			x.fail(errorf(http.StatusBadGateway, typeServer, "upstream_error", "",
				"Replica %s of model %s failed: %v.", id, m.Name, res.Err))
			return
		default:
			return
		}
	}
}

// attempt forwards to one replica; release frees its place whatever happens (a
// broken stream ends the handler with a panic).
func (x *exchange) attempt(m catalog.Model, t proxy.Target, body []byte, release func()) (proxy.Result, *apiError) {
	defer release()
	if m.APIKey != nil && x.h.Upstream != nil {
		key, err := x.h.Upstream.Key(x.r.Context(), m)
		if err != nil {
			return proxy.Result{}, errorf(http.StatusBadGateway, typeServer, "upstream_key", "",
				"The API key of model %s's server cannot be read: %v.", m.Name, err)
		}
		t.APIKey = key
	}
	x.h.Metrics.InFlight(m.Name, 1)
	defer x.h.Metrics.InFlight(m.Name, -1)
	res := x.h.Proxy.Forward(x.w, x.r, body, t, x.committed)
	if !res.FirstByte.IsZero() {
		x.h.Metrics.FirstByte(m.Name, res.FirstByte.Sub(x.start))
	}
	return res, nil
}

// fail answers an error (nothing when the client is gone) and counts the refusal.
func (x *exchange) fail(e *apiError) {
	if e == nil {
		return
	}
	if e.reason != "" {
		x.h.Metrics.Rejected(x.model, e.reason)
	}
	e.write(x.w, x.api.Ollama(), x.committed)
	if x.committed {
		// The stream had started as 200; the metric records the error.
		x.w.status = e.status
	}
}

// record counts the request when it ends.
func (x *exchange) record() {
	status := x.w.status
	switch {
	case x.gone:
		status = statusClientGone
	case status == 0:
		status = http.StatusOK
	}
	x.h.Metrics.Request(x.model, x.endpoint, status, x.h.Clock.Since(x.start))
}

// statusWriter remembers the status written.
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

// Flush passes flushes on.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// remoteHost is the client's address without its port.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
