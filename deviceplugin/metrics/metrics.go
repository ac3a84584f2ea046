// Package metrics exposes the device plugin's Prometheus metrics: per-core NPU load (read
// at scrape time), unit health, allocations, registrations and kubelet restarts seen. It
// uses its own registry, so nothing is global.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Result label values.
const (
	resultSuccess = "success"
	resultFailure = "failure"
)

// Metrics implements pluginserver.Observer and npu.Observer.
type Metrics struct {
	registry        *prometheus.Registry
	unitHealthy     *prometheus.GaugeVec
	allocations     *prometheus.CounterVec
	registrations   *prometheus.CounterVec
	kubeletRestarts prometheus.Counter
}

// New registers the metrics. readLoad returns the busy percentage of each NPU core; it is
// called at each scrape, and a failure just leaves the load out (no debugfs, no NPU).
func New(readLoad func() ([]int, error)) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		unitHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rknpu_unit_healthy",
			Help: "1 when the rockchip.com/npu unit is Healthy (offered to pods), 0 when Unhealthy.",
		}, []string{"unit"}),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rknpu_allocations_total",
			Help: "Allocate calls answered, by result (success or failure).",
		}, []string{"result"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rknpu_kubelet_registrations_total",
			Help: "Registration attempts with the kubelet, by result (success or failure).",
		}, []string{"result"}),
		kubeletRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rknpu_kubelet_restarts_total",
			Help: "Kubelet restarts seen (plugin socket deleted or kubelet.sock re-created) and recovered from by registering again.",
		}),
	}
	m.registry.MustRegister(m.unitHealthy, m.allocations, m.registrations, m.kubeletRestarts,
		&loadCollector{read: readLoad},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Both results exist from the start, so rate() works before the first failure.
	for _, r := range []string{resultSuccess, resultFailure} {
		m.allocations.WithLabelValues(r)
		m.registrations.WithLabelValues(r)
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// Registry is the metrics' registry, for tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// UnitHealth records a unit's health.
func (m *Metrics) UnitHealth(unit string, healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.unitHealthy.WithLabelValues(unit).Set(v)
}

// Allocated counts an Allocate call.
func (m *Metrics) Allocated(err error) { m.allocations.WithLabelValues(result(err)).Inc() }

// Registered counts a registration attempt.
func (m *Metrics) Registered(err error) { m.registrations.WithLabelValues(result(err)).Inc() }

// KubeletRestarted counts a kubelet restart.
func (m *Metrics) KubeletRestarted() { m.kubeletRestarts.Inc() }

func result(err error) string {
	if err != nil {
		return resultFailure
	}
	return resultSuccess
}

var loadDesc = prometheus.NewDesc("rknpu_core_load_percent",
	"Busy share of each NPU core over the driver's last 1 s window, from the rknpu load file.", []string{"core"}, nil)

// loadCollector reads the load file at scrape time, so the value is as fresh as the
// driver's own window and nothing polls between scrapes.
type loadCollector struct {
	read func() ([]int, error)
}

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) { ch <- loadDesc }

func (c *loadCollector) Collect(ch chan<- prometheus.Metric) {
	load, err := c.read()
	if err != nil {
		return
	}
	for core, p := range load {
		ch <- prometheus.MustNewConstMetric(loadDesc, prometheus.GaugeValue, float64(p), strconv.Itoa(core))
	}
}
