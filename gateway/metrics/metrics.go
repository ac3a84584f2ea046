// Package metrics holds rkllm-gateway's Prometheus metrics (documented in
// docs/gateway.md), in a registry of their own. Every per-model metric is labelled with
// the model's id; requests for models the gateway does not know are counted under the
// empty id, so clients cannot grow the label set.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "rkllm_gateway"

// Metrics is the gateway's metric set.
type Metrics struct {
	reg *prometheus.Registry

	requests          *prometheus.CounterVec
	duration          *prometheus.HistogramVec
	firstByte         *prometheus.HistogramVec
	inflight          *prometheus.GaugeVec
	queued            *prometheus.GaugeVec
	queueWait         *prometheus.HistogramVec
	rejected          *prometheus.CounterVec
	routed            *prometheus.CounterVec
	upstreamErrors    *prometheus.CounterVec
	activations       *prometheus.CounterVec
	activationSeconds *prometheus.HistogramVec
	evictions         *prometheus.CounterVec
	scaling           *prometheus.CounterVec
	replicas          *prometheus.GaugeVec
}

// New registers every metric, with the Go and process collectors, in a new registry.
func New() *Metrics {
	latency := prometheus.ExponentialBuckets(0.001, 2.5, 14) // 1ms .. ~150s
	slow := prometheus.ExponentialBuckets(0.5, 2, 12)        // 0.5s .. ~17min
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "requests_total",
			Help: "Requests answered, by model, endpoint and HTTP status code."}, []string{"model", "endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "request_duration_seconds",
			Help: "Time from a request's arrival to the end of its response, by model and endpoint.", Buckets: latency}, []string{"model", "endpoint"}),
		firstByte: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "time_to_first_token_seconds",
			Help:    "Time from a request's arrival to the first byte of the replica's reply (the first token of a stream), queueing and activation included, by model.",
			Buckets: latency}, []string{"model"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "requests_in_flight",
			Help: "Requests sent to a replica and not yet ended, by model."}, []string{"model"}),
		queued: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "queue_depth",
			Help: "Requests waiting for a replica (the model activating, or every replica busy), by model."}, []string{"model"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "queue_wait_seconds",
			Help: "Time requests waited for a replica, by model.", Buckets: latency}, []string{"model"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "rejected_total",
			Help: "Requests refused before reaching a replica, by model and reason: unknown_model, unauthorized, forbidden, bad_request, too_large, client_limit, queue_full, queue_timeout, no_capacity, not_scalable, activation_failed."},
			[]string{"model", "reason"}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "routed_total",
			Help: "Requests sent to a replica, by model and how it was chosen: affine (the conversation's replica), spilled (its replica was overloaded), balanced (no conversation)."},
			[]string{"model", "choice"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "upstream_errors_total",
			Help: "Replicas that could not be reached or broke off a reply, by model."}, []string{"model"}),
		activations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "activations_total",
			Help: "Activations of models from zero replicas (or without a ready one), by model and outcome: ready, no_capacity, timeout, failed."},
			[]string{"model", "outcome"}),
		activationSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "activation_seconds",
			Help: "Time from the first request for a model without a ready replica to its first ready replica, by model.", Buckets: slow}, []string{"model"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "evictions_total",
			Help: "Models scaled down to free an NPU for another, by the model evicted."}, []string{"model"}),
		scaling: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "scale_changes_total",
			Help: "Changes the gateway made to models' spec.replicas, by model and reason: activate, evict, idle, load, min_replicas."},
			[]string{"model", "reason"}),
		replicas: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "ready_replicas",
			Help: "Ready replicas the gateway routes to, by model."}, []string{"model"}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.firstByte, m.inflight, m.queued, m.queueWait, m.rejected, m.routed,
		m.upstreamErrors, m.activations, m.activationSeconds, m.evictions, m.scaling, m.replicas,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ServeHTTP serves the metrics in Prometheus' text format.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// Request records an answered request.
func (m *Metrics) Request(model, endpoint string, code int, elapsed time.Duration) {
	m.requests.WithLabelValues(model, endpoint, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(model, endpoint).Observe(elapsed.Seconds())
}

// FirstByte records the time to the first byte of a reply.
func (m *Metrics) FirstByte(model string, elapsed time.Duration) {
	m.firstByte.WithLabelValues(model).Observe(elapsed.Seconds())
}

// InFlight adds delta to the requests in flight.
func (m *Metrics) InFlight(model string, delta float64) { m.inflight.WithLabelValues(model).Add(delta) }

// Queued adds delta to the requests waiting.
func (m *Metrics) Queued(model string, delta float64) { m.queued.WithLabelValues(model).Add(delta) }

// QueueWait records how long a request waited.
func (m *Metrics) QueueWait(model string, d time.Duration) {
	m.queueWait.WithLabelValues(model).Observe(d.Seconds())
}

// Rejected counts a refused request.
func (m *Metrics) Rejected(model, reason string) { m.rejected.WithLabelValues(model, reason).Inc() }

// Routed counts a request sent to a replica, by how it was chosen.
func (m *Metrics) Routed(model, choice string) { m.routed.WithLabelValues(model, choice).Inc() }

// UpstreamError counts a replica that failed a request.
func (m *Metrics) UpstreamError(model string) { m.upstreamErrors.WithLabelValues(model).Inc() }

// Activation records the end of an activation; elapsed counts only for ready ones.
func (m *Metrics) Activation(model, outcome string, elapsed time.Duration) {
	m.activations.WithLabelValues(model, outcome).Inc()
	if outcome == "ready" {
		m.activationSeconds.WithLabelValues(model).Observe(elapsed.Seconds())
	}
}

// Eviction counts a model scaled down for another.
func (m *Metrics) Eviction(model string) { m.evictions.WithLabelValues(model).Inc() }

// ScaleChange counts a change of a model's replicas.
func (m *Metrics) ScaleChange(model, reason string) { m.scaling.WithLabelValues(model, reason).Inc() }

// ReadyReplicas sets the ready replicas of a model.
func (m *Metrics) ReadyReplicas(model string, n int) {
	m.replicas.WithLabelValues(model).Set(float64(n))
}
