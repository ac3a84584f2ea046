package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// held starts a run whose callback blocks on its first token until release is closed.
// It returns a channel with the run's record once Run returns.
func held(t *testing.T, h *Handle) (started <-chan struct{}, release chan<- struct{}, done <-chan run) {
	t.Helper()
	st, rel, dn := make(chan struct{}), make(chan struct{}), make(chan run, 1)
	go func() {
		var r run
		first := true
		r.err = h.Run(context.Background(), prompt("hold on"), InferParams{}, func(d Delivery) CallbackAction {
			r.deliveries = append(r.deliveries, d)
			if first && d.State == StateNormal {
				first = false
				close(st)
				<-rel
			}
			return Continue
		})
		dn <- r
	}()
	return st, rel, dn
}

func TestAbortFromAnotherGoroutine(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		stats := statsFile(t)
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 50, 50 })
		h := newHandle(t, lib, params(lib, model))
		started, release, done := held(t, h)
		await(t, "the first token", started)
		if !h.IsRunning() {
			t.Error("IsRunning is false during a run")
		}
		if err := h.Abort(); err != nil {
			t.Fatalf("Abort: %v", err)
		}
		close(release)
		r := await(t, "Run to return after Abort", done)
		r.finish(t)
		if n := len(r.tokens(0)); n != 1 {
			t.Errorf("%d tokens delivered, want 1 (aborted after the first of 50)", n)
		}
		runs := statsEvents(t, stats, "run")
		if len(runs) != 1 || runs[0]["outcome"] != "aborted" || len(statsEvents(t, stats, "abort")) != 1 {
			t.Errorf("simulator stats: runs %v, want one aborted run and one abort", runs)
		}
		if h.IsRunning() {
			t.Error("IsRunning after the aborted run returned")
		}
		// The handle is usable after an abort.
		collect(t, h, prompt("again"), InferParams{}, nil).finish(t)
	})
}

func TestContextCancelAbortsTheRun(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		stats := statsFile(t)
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 50, 50 })
		h := newHandle(t, lib, params(lib, model))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var tokens int
		err := h.Run(ctx, prompt("cancel me"), InferParams{}, func(d Delivery) CallbackAction {
			if d.State != StateNormal && d.State != StateWaiting {
				return Continue
			}
			if tokens++; tokens == 1 {
				cancel()
				// Hold the run until the binding's abort reached the runtime.
				if !waitFor(func() bool { return len(statsEvents(t, stats, "abort")) > 0 }) {
					t.Error("the abort never reached the simulator")
				}
			}
			return Continue
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
		if tokens != 1 {
			t.Errorf("%d tokens delivered after cancel, want 1", tokens)
		}
		if runs := statsEvents(t, stats, "run"); len(runs) != 1 || runs[0]["outcome"] != "aborted" {
			t.Errorf("simulator stats %v, want an aborted run", runs)
		}
		if err := h.Run(ctx, prompt("x"), InferParams{}, func(Delivery) CallbackAction { return Continue }); !errors.Is(err, context.Canceled) {
			t.Errorf("Run with a cancelled context = %v", err)
		}
	})
}

// TestCancelBeforeTheRuntimeStarts: a context that ends while rkllm_run has been
// called but the runtime has not started the run (it waits at the simulator's gate, so
// the first rkllm_abort finds no run) still aborts the run, as soon as it starts.
func TestCancelBeforeTheRuntimeStarts(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		stats := statsFile(t)
		gate := filepath.Join(t.TempDir(), "gate")
		if err := syscall.Mkfifo(gate, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("RKLLM_SIM_RUN_GATE", gate)
		// A slow prefill (seconds, as on a board): an abort lost before it lets the whole
		// prefill run, and the run is stopped at its first token at best.
		model, _ := writeModel(t, func(m *simulator.Model) { m.PrefillTokensPerSecond = 20 })
		h := newHandle(t, lib, params(lib, model))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- h.Run(ctx, prompt("stop before you start"), InferParams{}, func(Delivery) CallbackAction { return Continue })
		}()
		eventually(t, "the run at the gate", func() bool { return len(statsEvents(t, stats, "gate")) == 1 })
		cancel()
		eventually(t, "an abort that found no run", func() bool { return len(statsEvents(t, stats, "idle_abort")) > 0 })
		f, err := os.OpenFile(gate, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run = %v, want context.Canceled", err)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the run went on: its abort was lost")
		}
		if runs := statsEvents(t, stats, "run"); len(runs) != 1 || runs[0]["outcome"] != "aborted" || runs[0]["tokens"] != "0" {
			t.Errorf("simulator stats %v, want a run aborted in its prefill", runs)
		}
	})
}

// TestConcurrentAbortAndIsRunning hammers Abort and IsRunning from several goroutines
// while Run is in progress (run it with -race).
func TestConcurrentAbortAndIsRunning(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 100, 100 })
		h := newHandle(t, lib, params(lib, model))
		for round := 0; round < 5; round++ {
			started, release, done := held(t, h)
			await(t, "the first token", started)
			var wg sync.WaitGroup
			var sawRunning atomic.Bool
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < 50; i++ {
						if h.IsRunning() {
							sawRunning.Store(true)
						}
						if err := h.Abort(); err != nil {
							t.Errorf("Abort: %v", err)
						}
					}
				}()
			}
			wg.Wait()
			close(release)
			r := await(t, "Run to return", done)
			r.finish(t)
			if !sawRunning.Load() {
				t.Error("IsRunning never reported the run in progress")
			}
		}
	})
}

func TestBusyAndDestroyDuringARun(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		before := lib.LiveCAllocations()
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 50, 50 })
		h, err := lib.Init(params(lib, model))
		if err != nil {
			t.Fatal(err)
		}
		started, release, done := held(t, h)
		await(t, "the first token", started)
		noop := func(Delivery) CallbackAction { return Continue }
		for name, err := range map[string]error{
			"Run":             h.Run(t.Context(), prompt("x"), InferParams{}, noop),
			"SetChatTemplate": h.SetChatTemplate("", "", ""),
			"KVCacheSize":     func() error { _, err := h.KVCacheSize(); return err }(),
			"ClearKVCache":    h.ClearKVCache(false, nil),
		} {
			if !errors.Is(err, ErrBusy) {
				t.Errorf("%s during a run = %v, want ErrBusy", name, err)
			}
		}
		destroyed := make(chan error, 1)
		go func() { destroyed <- h.Destroy() }()
		// Destroy aborts the run; the run can only end once its callback returns.
		eventually(t, "Destroy to have started", h.closing.Load)
		close(release)
		r := await(t, "Run to return", done)
		r.finish(t)
		if err := await(t, "Destroy", destroyed); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if len(r.tokens(0)) != 1 {
			t.Errorf("%d tokens delivered, want 1: Destroy should have aborted the run", len(r.tokens(0)))
		}
		for name, err := range map[string]error{
			"Run":      h.Run(t.Context(), prompt("x"), InferParams{}, noop),
			"Abort":    h.Abort(),
			"Destroy":  h.Destroy(),
			"LoadLora": h.LoadLora(LoraAdapter{Path: "x", Name: "x"}),
		} {
			if !errors.Is(err, ErrDestroyed) {
				t.Errorf("%s after Destroy = %v, want ErrDestroyed", name, err)
			}
		}
		if h.IsRunning() {
			t.Error("IsRunning after Destroy")
		}
		if after := lib.LiveCAllocations(); after != before {
			t.Errorf("%d C allocations left after Destroy", after-before)
		}
	})
}

func TestPanicInOnResult(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 50, 50 })
		h := newHandle(t, lib, params(lib, model))
		got := func() (p any) {
			defer func() { p = recover() }()
			_ = h.Run(t.Context(), prompt("boom"), InferParams{}, func(Delivery) CallbackAction { panic("boom") })
			return nil
		}()
		if got != "boom" {
			t.Fatalf("Run re-raised %v, want the callback's panic", got)
		}
		if h.IsRunning() {
			t.Error("IsRunning after the panicking run")
		}
		collect(t, h, prompt("fine"), InferParams{}, nil).finish(t)
	})
}

func TestRunErrorInjection(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 20, 20 })
		t.Setenv("RKLLM_SIM_RUN_ERROR", "-7")
		t.Setenv("RKLLM_SIM_RUN_ERROR_AFTER", "2")
		t.Setenv("RKLLM_SIM_FAULT_RUN", "2")
		h := newHandle(t, lib, params(lib, model))
		collect(t, h, prompt("first run is fine"), InferParams{}, nil).finish(t)
		r := collect(t, h, prompt("second run fails"), InferParams{}, nil)
		var ce *CallError
		if !errors.As(r.err, &ce) || ce.Func != "rkllm_run" || ce.Code != -7 {
			t.Fatalf("Run = %v, want CallError{rkllm_run, -7}", r.err)
		}
		if n := len(r.deliveries); n != 3 || r.deliveries[2].State != StateError || len(r.tokens(0)) != 2 {
			t.Errorf("%d deliveries, want 2 tokens then ERROR", n)
		}
		collect(t, h, prompt("third run is fine"), InferParams{}, nil).finish(t)
	})
}

func TestHangUntilAbort(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		stats := statsFile(t)
		t.Setenv("RKLLM_SIM_HANG_AFTER", "2")
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 20, 20 })
		h := newHandle(t, lib, params(lib, model))
		done := make(chan run, 1)
		go func() { done <- collect(t, h, prompt("hang"), InferParams{}, nil) }()
		eventually(t, "the simulated hang", func() bool { return len(statsEvents(t, stats, "hang")) == 1 })
		if !h.IsRunning() {
			t.Error("IsRunning is false while the run hangs")
		}
		if err := h.Abort(); err != nil {
			t.Fatal(err)
		}
		r := await(t, "the hung run to end after Abort", done)
		r.finish(t)
		if len(r.tokens(0)) != 2 {
			t.Errorf("%d tokens before the hang, want 2", len(r.tokens(0)))
		}
	})
}

// TestNoLeakedCMemory runs many runs of every kind (and failing ones) and checks that
// the binding's C allocations go back to where they were after each Run and to zero
// after Destroy.
func TestNoLeakedCMemory(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		before := lib.LiveCAllocations()
		dir := t.TempDir()
		model, m := writeModel(t, nil)
		lora := filepath.Join(dir, "a.rkllm-lora")
		if err := simulator.WriteLora(lora, "a"); err != nil {
			t.Fatal(err)
		}
		p := params(lib, model)
		p.Extend.UseCrossAttn = 1
		h, err := lib.Init(p)
		if err != nil {
			t.Fatal(err)
		}
		w := m.HiddenSize
		if err := h.SetEmbedWidth(w); err != nil {
			t.Fatal(err)
		}
		steps := []func() error{
			func() error { return h.LoadLora(LoraAdapter{Path: lora, Name: "a", Scale: 1}) },
			func() error { return h.SetChatTemplate("s", "p", "q") },
			func() error { return h.SetChatTemplate("s2", "p2", "q2") },
			func() error { return h.SetFunctionTools("t", `[{"name":"f"}]`, "r") },
			func() error { return h.SetFunctionTools("t", `[broken`, "r") }, // refused: freed at once
			func() error {
				return h.SetCrossAttnParams(CrossAttnParams{NumTokens: 1, EncoderKCache: make([]float32, w), EncoderVCache: make([]float32, w),
					EncoderMask: []float32{1}, EncoderPos: []int32{0}})
			},
		}
		for i, step := range steps {
			err := step()
			if (err != nil) != (i == 4) {
				t.Fatalf("setup step %d: %v", i, err)
			}
		}
		held := lib.LiveCAllocations()
		cache := filepath.Join(dir, "pc")
		inputs := []Input{
			{Type: InputPrompt, Prompt: "hello", Role: "user"},
			{Type: InputToken, TokenIDs: []int32{260, 261}},
			{Type: InputEmbed, Embed: embedding(2, w, 0.5), NTokens: 2},
			{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "see <image>", ImageEmbed: embedding(1, w, 1), NImage: 1, NImageTokens: 1}},
		}
		for i := 0; i < 200; i++ {
			ip := InferParams{Mode: InferMode(i % 3), LoraAdapterName: []string{"", "a"}[i%2], KeepHistory: i%5 == 0,
				PromptCache: &PromptCacheParams{Save: i%7 == 0, Path: cache}}
			if lib.ABI() == ABI13 && i%4 == 0 {
				ip.Sampling, ip.MaxNewTokens = &SamplingParams{TopK: 1, Temperature: 0.5}, 3
			}
			if i%11 == 0 {
				ip.LoraAdapterName = "missing" // fails in the runtime
			}
			_ = h.Run(t.Context(), []Input{inputs[i%len(inputs)]}, ip, func(Delivery) CallbackAction { return Continue })
			if now := lib.LiveCAllocations(); now != held {
				t.Fatalf("run %d: %d C allocations held, want %d", i, now, held)
			}
		}
		if err := h.LoadPromptCache(cache); err != nil {
			t.Fatal(err)
		}
		if err := h.ReleasePromptCache(); err != nil {
			t.Fatal(err)
		}
		if now := lib.LiveCAllocations(); now != held {
			t.Errorf("after the prompt cache calls: %d C allocations held, want %d", now, held)
		}
		if err := h.Destroy(); err != nil {
			t.Fatal(err)
		}
		if after := lib.LiveCAllocations(); after != before {
			t.Errorf("%d C allocations left after Destroy", after-before)
		}
	})
}

// The crash test runs in a child process (this test binary), since a SIGSEGV in the
// runtime ends the process.
const helperEnv = "RKLLM_RUNTIME_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// helperMain initialises the library and model named in the environment and runs one
// prompt, printing the reply.
func helperMain() int {
	lib, err := Open(os.Getenv("HELPER_LIB"), ABI(os.Getenv("HELPER_ABI")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 3
	}
	p := lib.DefaultParams()
	p.ModelPath = os.Getenv("HELPER_MODEL")
	p.MaxContextLen = 4096
	h, err := lib.Init(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 4
	}
	err = h.Run(context.Background(), prompt("crash?"), InferParams{}, func(d Delivery) CallbackAction {
		if len(d.Results) > 0 {
			fmt.Print(d.Results[0].Text)
		}
		return Continue
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 5
	}
	return 0
}

func TestCrashInjection(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_LIB="+lib.Path(), "HELPER_ABI="+string(lib.ABI()),
			"HELPER_MODEL="+model, "RKLLM_SIM_CRASH_AFTER=3")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("the helper did not crash: %v\n%s", err, stderr.String())
		}
		status, _ := ee.Sys().(syscall.WaitStatus)
		segv := status.Signaled() && status.Signal() == syscall.SIGSEGV
		if !segv && !strings.Contains(stderr.String(), "SIGSEGV") {
			t.Errorf("the helper ended with %v, not a SIGSEGV:\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "simulated crash (RKLLM_SIM_CRASH_AFTER)") {
			t.Errorf("stderr lacks the simulator's crash message:\n%s", stderr.String())
		}
	})
}

// TestFaultOnceFile: with RKLLM_SIM_FAULT_ONCE_FILE a fault fires only while the marker
// file does not exist and creates it, so it fires once across handles (and the worker
// processes of the server, which each init their own).
func TestFaultOnceFile(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 20, 20 })
		marker := filepath.Join(t.TempDir(), "fault-fired")
		t.Setenv("RKLLM_SIM_FAULT_ONCE_FILE", marker)
		t.Run("run error", func(t *testing.T) {
			t.Setenv("RKLLM_SIM_RUN_ERROR", "-7")
			h := newHandle(t, lib, params(lib, model))
			var ce *CallError
			if r := collect(t, h, prompt("fails once"), InferParams{}, nil); !errors.As(r.err, &ce) || ce.Code != -7 {
				t.Fatalf("first run = %v, want CallError -7", r.err)
			}
			if _, err := os.Stat(marker); err != nil {
				t.Fatalf("the fault did not create its marker: %v", err)
			}
			collect(t, h, prompt("the fault has fired"), InferParams{}, nil).finish(t)
			// A new handle (a restarted worker) does not fault either.
			h2 := newHandle(t, lib, params(lib, model))
			collect(t, h2, prompt("still fine"), InferParams{}, nil).finish(t)
		})
		t.Run("init failure", func(t *testing.T) {
			if err := os.Remove(marker); err != nil {
				t.Fatal(err)
			}
			t.Setenv("RKLLM_SIM_INIT_FAIL", "1")
			var ce *CallError
			if _, err := lib.Init(params(lib, model)); !errors.As(err, &ce) || ce.Func != "rkllm_init" {
				t.Fatalf("first init = %v, want CallError{rkllm_init}", err)
			}
			newHandle(t, lib, params(lib, model)) // the retry loads
		})
	})
}

// TestClockText: with RKLLM_SIM_CLOCK_TEXT each token's text is the CLOCK_MONOTONIC time
// of its callback, between the times the caller read before and after the run.
func TestClockText(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 10, 10 })
		t.Setenv("RKLLM_SIM_CLOCK_TEXT", "1")
		h := newHandle(t, lib, params(lib, model))
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		before := ts.Nano()
		r := collect(t, h, prompt("what time is it"), InferParams{}, nil)
		r.finish(t)
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		after := ts.Nano()
		last := before
		n := 0
		for _, d := range r.deliveries {
			if d.State != StateNormal {
				continue
			}
			v, err := strconv.ParseInt(strings.TrimPrefix(d.Results[0].Text, "@"), 10, 64)
			if err != nil || !strings.HasPrefix(d.Results[0].Text, "@") || v < last || v > after {
				t.Fatalf("token text %q: want @ns between %d and %d, not before %d", d.Results[0].Text, before, after, last)
			}
			last = v
			n++
		}
		if n < 10 {
			t.Errorf("%d timed tokens", n)
		}
	})
}
