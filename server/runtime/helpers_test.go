package runtime

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
)

// The simulator libraries are built by `make sim` into bin/ (RKLLM_SIM_DIR when set).
// Without them the tests skip, unless RKLLM_SIM_REQUIRED is set (as `make test` does),
// in which case they fail.

var abis = []ABI{ABI12, ABI13}

// Test timeouts: generous bounds for waits that end as soon as the awaited event happens.
const (
	waitTimeout = 20 * time.Second
	pollEvery   = 5 * time.Millisecond
)

func simLibPath(t testing.TB, abi ABI) string {
	return simtest.Library(t, string(abi))
}

var (
	libsMu sync.Mutex
	libs   = map[ABI]*Library{}
)

// simLib opens the simulator of abi once per test binary: a Library stays loaded.
func simLib(t testing.TB, abi ABI) *Library {
	t.Helper()
	path := simLibPath(t, abi)
	libsMu.Lock()
	defer libsMu.Unlock()
	if l := libs[abi]; l != nil {
		return l
	}
	l, err := Open(path, abi)
	if err != nil {
		t.Fatalf("Open(%s, %s): %v", path, abi, err)
	}
	libs[abi] = l
	return l
}

// eachABI runs f against the simulator of each ABI.
func eachABI(t *testing.T, f func(t *testing.T, lib *Library)) {
	for _, abi := range abis {
		t.Run("abi"+string(abi), func(t *testing.T) { f(t, simLib(t, abi)) })
	}
}

// writeModel writes a simulator model (FastModel changed by mutate) into a temporary
// folder and returns its path.
func writeModel(t testing.TB, mutate func(*simulator.Model)) (string, simulator.Model) {
	t.Helper()
	m := simulator.FastModel()
	if mutate != nil {
		mutate(&m)
	}
	path := filepath.Join(t.TempDir(), "model.rkllm")
	if err := simulator.WriteModel(path, m); err != nil {
		t.Fatal(err)
	}
	return path, m
}

// params returns the library's defaults for model, with room for long replies.
func params(lib *Library, model string) Param {
	p := lib.DefaultParams()
	p.ModelPath = model
	p.MaxContextLen = 4096
	return p
}

// newHandle initialises a handle and destroys it when the test ends.
func newHandle(t testing.TB, lib *Library, p Param) *Handle {
	t.Helper()
	h, err := lib.Init(p)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Destroy(); err != nil && !errors.Is(err, ErrDestroyed) {
			t.Errorf("Destroy: %v", err)
		}
	})
	return h
}

// run is the record of one Run.
type run struct {
	deliveries []Delivery
	err        error
}

// collect runs inputs and records every delivery; act (may be nil) chooses the
// callback's answer.
func collect(t testing.TB, h *Handle, inputs []Input, ip InferParams, act func(i int, d Delivery) CallbackAction) run {
	t.Helper()
	var r run
	r.err = h.Run(context.Background(), inputs, ip, func(d Delivery) CallbackAction {
		r.deliveries = append(r.deliveries, d)
		if act != nil {
			return act(len(r.deliveries)-1, d)
		}
		return Continue
	})
	return r
}

func prompt(s string) []Input { return []Input{{Type: InputPrompt, Prompt: s}} }

// text joins the bytes delivered to batch entry b (WAITING pieces included).
func (r run) text(b int) string {
	var sb strings.Builder
	for _, d := range r.deliveries {
		if d.State == StateNormal || d.State == StateWaiting {
			sb.WriteString(d.Results[b].Text)
		}
	}
	return sb.String()
}

// tokens returns the token ids delivered to batch entry b (finished entries excluded).
func (r run) tokens(b int) []int32 {
	var ids []int32
	for _, d := range r.deliveries {
		if (d.State == StateNormal || d.State == StateWaiting) && d.Results[b].TokenID >= 0 {
			ids = append(ids, d.Results[b].TokenID)
		}
	}
	return ids
}

// finish checks that the run ended with exactly one FINISH delivery, last, and returns it.
func (r run) finish(t testing.TB) Delivery {
	t.Helper()
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if len(r.deliveries) == 0 {
		t.Fatal("no deliveries")
	}
	for i, d := range r.deliveries[:len(r.deliveries)-1] {
		if d.State == StateFinish || d.State == StateError {
			t.Fatalf("delivery %d has state %d before the end", i, d.State)
		}
	}
	last := r.deliveries[len(r.deliveries)-1]
	if last.State != StateFinish {
		t.Fatalf("last delivery has state %d, want FINISH", last.State)
	}
	for b, res := range last.Results {
		if res.Text != "" {
			t.Errorf("FINISH entry %d has text %q, want none", b, res.Text)
		}
	}
	return last
}

// statsFile points the simulator's RKLLM_SIM_STATS_FILE at a fresh file (read at Init).
func statsFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "sim-stats.log")
	t.Setenv("RKLLM_SIM_STATS_FILE", p)
	return p
}

// statsEvents reads the simulator's stats lines with event=name, as key=value maps.
func statsEvents(t testing.TB, path, name string) []map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []map[string]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		kv := map[string]string{}
		for _, field := range strings.Fields(sc.Text()) {
			if k, v, ok := strings.Cut(field, "="); ok {
				kv[k] = v
			}
		}
		if kv["event"] == name {
			out = append(out, kv)
		}
	}
	return out
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !waitFor(cond) {
		t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
	}
}

// waitFor polls cond until it holds (true) or waitTimeout passes (false); unlike
// eventually it may be called from a callback, off the test's goroutine.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
	return true
}

// await receives from ch or fails after waitTimeout.
func await[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
	}
	var zero T
	return zero
}

// turnTokens is what the simulator puts into the cache for a user prompt with the
// model's own template (thinking off).
func turnTokens(m *simulator.Model, p string) int {
	n := 0
	for _, piece := range []string{m.ChatTemplate.Prefix, p, m.ChatTemplate.Postfix, m.ChatTemplate.ThinkingOff} {
		n += len(m.Tokenize(piece))
	}
	return n
}
