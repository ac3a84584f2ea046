// Package metrics holds rkllm-server's Prometheus metrics (documented in
// docs/server.md). One Metrics value implements the observer interfaces of the
// dispatcher, the supervisor and the transports, and serves /metrics from its own
// registry (no global state).
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// Namespace prefixes every metric name.
const Namespace = "rkllm"

// Metrics is the server's metric set.
type Metrics struct {
	reg *prometheus.Registry

	requests         *prometheus.CounterVec
	requestDuration  *prometheus.HistogramVec
	queueDepth       prometheus.Gauge
	queueWait        prometheus.Histogram
	timeToFirstToken prometheus.Histogram
	interToken       prometheus.Histogram
	tokens           prometheus.Counter
	directWrites     *prometheus.CounterVec
	prefillTokens    prometheus.Counter
	prefillSeconds   prometheus.Histogram
	generateSeconds  prometheus.Histogram
	workerRestarts   *prometheus.CounterVec
	modelLoaded      prometheus.Gauge
	connsOpen        *prometheus.GaugeVec
	connsRejected    *prometheus.CounterVec
	bytesIn          *prometheus.CounterVec
	bytesOut         *prometheus.CounterVec
	openaiRequests   *prometheus.CounterVec
	openaiDuration   *prometheus.HistogramVec
	ollamaRequests   *prometheus.CounterVec
	ollamaDuration   *prometheus.HistogramVec
	prefixReuse      *prometheus.CounterVec
	prefixTokens     prometheus.Counter
	cutOff           *prometheus.CounterVec
}

// New registers every metric, with the Go and process collectors, in a new registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	latency := prometheus.ExponentialBuckets(0.001, 2.5, 14) // 1ms .. ~150s
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "requests_total",
			Help: "JSON-RPC requests served, by method and outcome (ok or the error's name)."}, []string{"method", "outcome"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "request_duration_seconds",
			Help: "Time from a request's arrival to its response, by method.", Buckets: latency}, []string{"method"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "queue_depth",
			Help: "Requests waiting for the model."}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "queue_wait_seconds",
			Help: "Time requests waited in the queue.", Buckets: latency}),
		timeToFirstToken: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "time_to_first_token_seconds",
			Help: "Time from the start of a run (out of the queue) to its first delivery.", Buckets: latency}),
		interToken: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "inter_token_seconds",
			Help: "Time between consecutive deliveries of a run.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "tokens_generated_total",
			Help: "Tokens generated, from the runtime's perf stats (generate_tokens)."}),
		prefillTokens: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "prefill_tokens_total",
			Help: "Tokens prefilled, from the runtime's perf stats (prefill_tokens)."}),
		prefillSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "prefill_seconds",
			Help: "Prefill time of each run, from the runtime's perf stats (prefill_time_ms).", Buckets: latency}),
		generateSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "generate_seconds",
			Help: "Generation time of each run, from the runtime's perf stats (generate_time_ms).", Buckets: latency}),
		workerRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "worker_restarts_total",
			Help: "Worker processes lost, by cause: crash, abort_timeout (watchdog kill), unresponsive, start_failed, shutdown."}, []string{"cause"}),
		modelLoaded: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "model_loaded",
			Help: "1 while a model is loaded in the worker."}),
		connsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "connections_open",
			Help: "Client connections held, by transport (http, unix)."}, []string{"transport"}),
		connsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "connections_rejected_total",
			Help: "Client connections refused, by transport and reason: max_connections (over --max-connections) or file_descriptors (too few left, --reserved-fds)."}, []string{"transport", "reason"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "received_bytes_total",
			Help: "JSON-RPC bytes received from clients, by transport."}, []string{"transport"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "sent_bytes_total",
			Help: "JSON-RPC bytes sent to clients, by transport."}, []string{"transport"}),
		openaiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "openai_requests_total",
			Help: "Requests of the OpenAI-compatible API, by endpoint and HTTP status code."}, []string{"endpoint", "code"}),
		openaiDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "openai_request_duration_seconds",
			Help: "Time from an OpenAI-compatible request's arrival to the end of its response, by endpoint.", Buckets: latency}, []string{"endpoint"}),
		ollamaRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "ollama_requests_total",
			Help: "Requests of the Ollama API, by endpoint and HTTP status code."}, []string{"endpoint", "code"}),
		ollamaDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "ollama_request_duration_seconds",
			Help: "Time from an Ollama API request's arrival to the end of its response, by endpoint.", Buckets: latency}, []string{"endpoint"}),
		prefixReuse: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "prefix_reuse_total",
			Help: "Conversations of the HTTP APIs (OpenAI's and Ollama's) by whether the KV cache held their prefix (hit: only the new part was prefilled) or not (miss)."}, []string{"result"}),
		directWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "direct_token_writes_total",
			Help: "Token notifications of streamed rkllm.run calls that the worker wrote to the client's socket itself, without the supervisor's hop, by outcome: whole, or partial (the client's socket was full or gone; the supervisor wrote the rest and the run's later tokens)."}, []string{"outcome"}),
		prefixTokens: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "prefix_reused_tokens_total",
			Help: "Prompt tokens taken from the KV cache instead of being prefilled again."}),
		cutOff: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "clients_cut_off_total",
			Help: "Clients disconnected because they did not read their messages (output buffer full or write timeout), by transport."}, []string{"transport"}),
	}
	for _, c := range []prometheus.Collector{m.openaiRequests, m.openaiDuration, m.ollamaRequests, m.ollamaDuration, m.prefixReuse, m.prefixTokens, m.requests, m.requestDuration, m.queueDepth, m.queueWait, m.timeToFirstToken,
		m.interToken, m.tokens, m.prefillTokens, m.prefillSeconds, m.generateSeconds, m.workerRestarts, m.modelLoaded,
		m.connsOpen, m.connsRejected, m.bytesIn, m.bytesOut, m.cutOff, m.directWrites,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	m.directWrites.WithLabelValues("whole")
	m.directWrites.WithLabelValues("partial")
	m.prefixReuse.WithLabelValues("hit")
	m.prefixReuse.WithLabelValues("miss")
	for _, t := range []string{"http", "unix"} {
		m.connsOpen.WithLabelValues(t)
		m.connsRejected.WithLabelValues(t, "max_connections")
		m.connsRejected.WithLabelValues(t, "file_descriptors")
		m.bytesIn.WithLabelValues(t)
		m.bytesOut.WithLabelValues(t)
		m.cutOff.WithLabelValues(t)
	}
	return m
}

// Registry is the registry holding the metrics (others may add theirs).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// outcomes names the error codes for the outcome label.
var outcomes = map[int64]string{
	0: "ok", -32700: "parse_error", -32600: "invalid_request", -32601: "method_not_found",
	-32602: "invalid_params", -32603: "internal_error", -32001: "model_not_loaded", -32002: "busy",
	-32003: "runtime_error", -32004: "runtime_crashed", -32005: "timeout", -32006: "aborted",
	-32007: "not_allowed", -32008: "too_large", -32009: "shutting_down",
}

// ObserveRequest implements jsonrpc.Observer.
func (m *Metrics) ObserveRequest(method string, code int64, elapsed time.Duration) {
	if method == "" {
		method = "invalid"
	}
	outcome, ok := outcomes[code]
	if !ok {
		outcome = strconv.FormatInt(code, 10)
	}
	m.requests.WithLabelValues(method, outcome).Inc()
	m.requestDuration.WithLabelValues(method).Observe(elapsed.Seconds())
}

// QueueDepth implements supervisor.Observer.
func (m *Metrics) QueueDepth(n int) { m.queueDepth.Set(float64(n)) }

// QueueWait implements supervisor.Observer.
func (m *Metrics) QueueWait(d time.Duration) { m.queueWait.Observe(d.Seconds()) }

// Delivery implements supervisor.Observer.
func (m *Metrics) Delivery(first bool, d time.Duration) {
	if first {
		m.timeToFirstToken.Observe(d.Seconds())
	} else {
		m.interToken.Observe(d.Seconds())
	}
}

// DirectWrite implements supervisor.Observer.
func (m *Metrics) DirectWrite(whole bool) {
	if whole {
		m.directWrites.WithLabelValues("whole").Inc()
	} else {
		m.directWrites.WithLabelValues("partial").Inc()
	}
}

// Perf implements supervisor.Observer.
func (m *Metrics) Perf(p runtime.PerfStat) {
	m.tokens.Add(float64(max(p.GenerateTokens, 0)))
	m.prefillTokens.Add(float64(max(p.PrefillTokens, 0)))
	m.prefillSeconds.Observe(float64(p.PrefillTimeMs) / 1000)
	m.generateSeconds.Observe(float64(p.GenerateTimeMs) / 1000)
}

// WorkerRestart implements supervisor.Observer.
func (m *Metrics) WorkerRestart(cause string) { m.workerRestarts.WithLabelValues(cause).Inc() }

// ModelLoaded implements supervisor.Observer.
func (m *Metrics) ModelLoaded(loaded bool) {
	if loaded {
		m.modelLoaded.Set(1)
	} else {
		m.modelLoaded.Set(0)
	}
}

// ConnOpened implements connlimit.Observer.
func (m *Metrics) ConnOpened(transport string) { m.connsOpen.WithLabelValues(transport).Inc() }

// ConnClosed implements connlimit.Observer.
func (m *Metrics) ConnClosed(transport string) { m.connsOpen.WithLabelValues(transport).Dec() }

// ConnRejected implements connlimit.Observer.
func (m *Metrics) ConnRejected(transport, reason string) {
	m.connsRejected.WithLabelValues(transport, reason).Inc()
}

// ClientCutOff implements the transports' Observer.
func (m *Metrics) ClientCutOff(transport string) { m.cutOff.WithLabelValues(transport).Inc() }

// InflightBytes registers a gauge of the bytes of requests being served, read from f.
func (m *Metrics) InflightBytes(f func() int64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "inflight_request_bytes",
		Help: "Bytes of the JSON-RPC messages being served (bounded by --max-inflight-bytes)."}, func() float64 { return float64(f()) }))
}

// BytesIn implements the transports' Observer.
func (m *Metrics) BytesIn(transport string, n int) {
	m.bytesIn.WithLabelValues(transport).Add(float64(n))
}

// BytesOut implements the transports' Observer.
func (m *Metrics) BytesOut(transport string, n int) {
	m.bytesOut.WithLabelValues(transport).Add(float64(n))
}

// ObserveOpenAI implements openai.Observer.
func (m *Metrics) ObserveOpenAI(endpoint string, status int, elapsed time.Duration) {
	m.openaiRequests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.openaiDuration.WithLabelValues(endpoint).Observe(elapsed.Seconds())
}

// ObserveOllama implements ollama.Observer.
func (m *Metrics) ObserveOllama(endpoint string, status int, elapsed time.Duration) {
	m.ollamaRequests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.ollamaDuration.WithLabelValues(endpoint).Observe(elapsed.Seconds())
}

// PrefixReuse implements supervisor.PrefixObserver.
func (m *Metrics) PrefixReuse(reused bool, cachedTokens int) {
	if !reused {
		m.prefixReuse.WithLabelValues("miss").Inc()
		return
	}
	m.directWrites.WithLabelValues("whole")
	m.directWrites.WithLabelValues("partial")
	m.prefixReuse.WithLabelValues("hit").Inc()
	m.prefixTokens.Add(float64(max(cachedTokens, 0)))
}
