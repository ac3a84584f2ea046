package metrics_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/metrics"
)

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestMetrics(t *testing.T) {
	m := metrics.New(func() ([]int, error) { return []int{0, 45, 100}, nil })
	m.UnitHealth("npu0", true)
	m.UnitHealth("npu0", false)
	m.Allocated(nil)
	m.Allocated(nil)
	m.Allocated(errors.New("unhealthy"))
	m.Registered(nil)
	m.KubeletRestarted()

	body := scrape(t, m)
	for _, want := range []string{
		`rknpu_core_load_percent{core="0"} 0`,
		`rknpu_core_load_percent{core="1"} 45`,
		`rknpu_core_load_percent{core="2"} 100`,
		`rknpu_unit_healthy{unit="npu0"} 0`,
		`rknpu_allocations_total{result="success"} 2`,
		`rknpu_allocations_total{result="failure"} 1`,
		`rknpu_kubelet_registrations_total{result="success"} 1`,
		`rknpu_kubelet_registrations_total{result="failure"} 0`,
		`rknpu_kubelet_restarts_total 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestMetricsWithoutLoad(t *testing.T) {
	m := metrics.New(func() ([]int, error) { return nil, errors.New("no debugfs") })
	if body := scrape(t, m); strings.Contains(body, "rknpu_core_load_percent{") {
		t.Errorf("load reported although unreadable:\n%s", body)
	}
}
