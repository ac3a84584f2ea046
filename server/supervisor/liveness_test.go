package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// stopWorkerProcess sends SIGSTOP to the worker, as a debugger or a frozen cgroup would, and
// returns its pid.
func stopWorkerProcess(t *testing.T, s *Supervisor) int {
	t.Helper()
	pid := s.Status().WorkerPID
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// TestStoppedWorkerIsReplaced: a stopped worker, sent a run whose request does not fit
// in the socket's buffer, is killed as unresponsive and replaced; the run gets a
// timeout naming why, the status stops saying running, and the request queued behind
// is served by the new worker.
func TestStoppedWorkerIsReplaced(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.TokenStallTimeout = 500 * time.Millisecond
	o.AbortTimeout = 500 * time.Millisecond
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	waitReady(t, s)
	pid := stopWorkerProcess(t, s)
	ctx := context.Background()
	big, _ := startRun(ctx, t, s, "c1", "big", strings.Repeat("x", 1<<20), runtime.InferParams{})
	queued, _ := startRun(ctx, t, s, "c2", "next", "x", runtime.InferParams{})
	_, err := wait(t, big.t)
	var te *TimeoutError
	if !errors.As(err, &te) || te.Reason != "worker unresponsive" || !te.WorkerKilled || !strings.Contains(te.After, "stopped") {
		t.Fatalf("run on a stopped worker: %v", err)
	}
	if _, err := wait(t, queued.t); err != nil || queued.Text() != "w0 w1 w2 " {
		t.Fatalf("queued run: %q %v", queued.Text(), err)
	}
	st := s.Status()
	if st.Running || st.WorkerPID == pid || st.Restarts != 1 || !strings.Contains(st.LastExit, "SIGKILL") {
		t.Errorf("status after the stopped worker %+v", st)
	}
	if got := rec.seen(); fmt.Sprint(got) != "[unresponsive]" {
		t.Errorf("restart causes %v, want [unresponsive]", got)
	}
}

// TestIdleStoppedWorkerIsReplaced: a stopped worker with nothing to do is found by the
// heartbeat and replaced before a client needs it.
func TestIdleStoppedWorkerIsReplaced(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI12), "/models/m.rkllm", nil)
	o.TokenStallTimeout = 200 * time.Millisecond
	o.AbortTimeout = 200 * time.Millisecond
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	waitReady(t, s)
	pid := stopWorkerProcess(t, s)
	eventually(t, waitTimeout, "a new worker", func() bool { st := s.Status(); return st.Ready && st.WorkerPID != pid })
	if got := rec.seen(); fmt.Sprint(got) != "[unresponsive]" {
		t.Errorf("restart causes %v, want [unresponsive]", got)
	}
	if ok, err := s.IsRunning(context.Background()); err != nil || ok {
		t.Errorf("is_running on the new worker: %v %v", ok, err)
	}
}

// TestShutdownWithStoppedWorker: Shutdown returns StopGrace after its context ends
// even when the worker is stopped in the middle of taking a run (no watchdog limit is
// near), and the worker is gone.
func TestShutdownWithStoppedWorker(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.TokenStallTimeout = time.Hour
	o.AbortTimeout = time.Hour
	o.StopGrace = 100 * time.Millisecond
	s := start(t, o)
	waitReady(t, s)
	pid := stopWorkerProcess(t, s)
	r, _ := startRun(context.Background(), t, s, "c1", "big", strings.Repeat("x", 1<<20), runtime.InferParams{})
	eventually(t, waitTimeout, "the run to start", func() bool { return s.Status().Running })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Shutdown did not return within %s with a stopped worker", waitTimeout)
	}
	if out, err := wait(t, r.t); err != nil || !out.Aborted {
		t.Errorf("the run at shutdown: %+v %v", out, err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("worker %d alive after shutdown", pid)
	}
}

// TestRequestOverTheFrameLimit: a request too large for one frame fails with
// ErrTooLarge naming the limit, and the worker serves the next one.
func TestRequestOverTheFrameLimit(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.MaxFrameBytes = 64 << 10
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	waitReady(t, s)
	r, _ := startRun(context.Background(), t, s, "c1", "big", strings.Repeat("x", 100<<10), runtime.InferParams{})
	if _, err := wait(t, r.t); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "65536") {
		t.Fatalf("run over the frame limit: %v", err)
	}
	r, _ = startRun(context.Background(), t, s, "c1", "next", "x", runtime.InferParams{})
	if _, err := wait(t, r.t); err != nil || r.Text() != "w0 w1 w2 " {
		t.Fatalf("next run: %q %v", r.Text(), err)
	}
	if got := rec.seen(); len(got) != 0 {
		t.Errorf("restarts %v", got)
	}
}

func TestPromptTokens(t *testing.T) {
	for _, c := range []struct {
		name string
		in   runtime.Input
		want int
	}{
		{"prompt bytes", runtime.Input{Type: runtime.InputPrompt, Prompt: "héllo"}, 6},
		{"tokens", runtime.Input{Type: runtime.InputToken, TokenIDs: make([]int32, 7), NTokens: 7}, 7},
		{"embed rows", runtime.Input{Type: runtime.InputEmbed, Embed: make([]float32, 12), NTokens: 3}, 3},
		{"negative count", runtime.Input{Type: runtime.InputEmbed, NTokens: -5}, 0},
		{"images", runtime.Input{Type: runtime.InputMultimodal, Multimodal: runtime.MultimodalInput{Prompt: "<image>", NImage: 2, NImageTokens: 196}}, 7 + 392},
		{"video", runtime.Input{Type: runtime.InputMultimodal, Multimodal: runtime.MultimodalInput{NVideo: 2, NFramePerVideo: 4, NFrameTokens: 10}}, 80},
		{"overflowing counts", runtime.Input{Type: runtime.InputMultimodal, Multimodal: runtime.MultimodalInput{NImage: 2, NImageTokens: math.MaxInt64}}, math.MaxInt},
		{"wrapping to negative", runtime.Input{Type: runtime.InputMultimodal, Multimodal: runtime.MultimodalInput{NImage: 4, NImageTokens: 1 << 62, NVideo: -1, NFramePerVideo: -1, NFrameTokens: 3}}, math.MaxInt},
	} {
		if got := promptTokens(&c.in); got != c.want {
			t.Errorf("%s: %d tokens, want %d", c.name, got, c.want)
		}
	}
}

// TestPrefillBudget: before the first token a run gets the stall timeout plus its
// prompt at the minimum rate, each input capped at the model's context.
func TestPrefillBudget(t *testing.T) {
	s := New(Options{TokenStallTimeout: 10 * time.Second, MinPrefillRate: 50})
	s.desired = &runtime.Param{MaxContextLen: 4096}
	long := runtime.Input{Type: runtime.InputToken, TokenIDs: make([]int32, 1000)}
	if b := s.prefillBudget([]runtime.Input{long}); b.total != 30*time.Second || b.tokens != 1000 {
		t.Errorf("1000 tokens at 50/s: %+v", b)
	}
	huge := runtime.Input{Type: runtime.InputPrompt, Prompt: strings.Repeat("x", 1<<20)}
	if b := s.prefillBudget([]runtime.Input{huge, long}); b.tokens != 4096+1000 || b.total != 10*time.Second+5096*time.Second/50 {
		t.Errorf("a prompt over the context: %+v", b)
	}
	if b := newPrefillBudget(time.Minute, math.MaxInt, 1e-300); b.total != time.Duration(math.MaxInt64) {
		t.Errorf("an overflowing budget: %+v", b)
	}
	if b := s.prefillBudget([]runtime.Input{long}); !strings.Contains(b.String(), "--min-prefill-rate 50") {
		t.Errorf("budget text %q", b.String())
	}
}
