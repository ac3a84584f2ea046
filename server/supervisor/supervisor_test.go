package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/worker"
	"github.com/rkllm-operator/rkllm-operator/server/worker/fakeruntime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// The test binary doubles as the worker: the supervisor re-executes it with this
// variable set, and it serves the fake runtime on fd 3.
const workerEnv = "SUPERVISOR_TEST_WORKER_ABI"

// initHangEnv, set for the worker, makes its rkllm_init never return (a wedged NPU
// driver), for the tests of the supervisor's call timeouts.
const initHangEnv = "SUPERVISOR_TEST_WORKER_INIT_HANGS"

// hangingInit is the fake runtime whose Init never returns.
type hangingInit struct{ *fakeruntime.Runtime }

func (hangingInit) Init(runtime.Param) (worker.Model, error) { select {} }

func TestMain(m *testing.M) {
	if abi := os.Getenv(workerEnv); abi != "" {
		log := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		var rt worker.Runtime = fakeruntime.New(runtime.ABI(abi))
		if os.Getenv(initHangEnv) != "" {
			rt = hangingInit{fakeruntime.New(runtime.ABI(abi))}
		}
		if err := worker.ServeInherited(context.Background(), rt, "fake", 0, log); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Named limits for waiting on asynchronous outcomes (never sleeps).
const (
	readyTimeout = 30 * time.Second
	waitTimeout  = 30 * time.Second
)

func testOptions(t *testing.T, abi runtime.ABI) Options {
	return Options{
		Command: func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"="+string(abi))
			return cmd
		},
		MaxQueue:          4,
		RestartBackoffMin: 5 * time.Millisecond,
		RestartBackoffMax: 50 * time.Millisecond,
		Log:               testLogger(t),
	}
}

func testLogger(t *testing.T) logr.Logger {
	return logr.FromSlogHandler(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// restarts records the causes the supervisor reports to its Observer.
type restarts struct {
	nopObserver
	mu     sync.Mutex
	causes []string
}

func (r *restarts) WorkerRestart(cause string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.causes = append(r.causes, cause)
}

// seen returns the causes reported so far.
func (r *restarts) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.causes...)
}

// only reports whether every cause seen so far is cause, and there is at least one.
func (r *restarts) only(cause string) bool {
	seen := r.seen()
	for _, c := range seen {
		if c != cause {
			return false
		}
	}
	return len(seen) > 0
}

func withModel(o Options, path string, mutate func(*runtime.Param)) Options {
	o.Model = &ModelSpec{Param: func(d runtime.Param) runtime.Param {
		d.ModelPath = path
		d.MaxNewTokens = 3
		if mutate != nil {
			mutate(&d)
		}
		return d
	}}
	return o
}

func start(t *testing.T, o Options) *Supervisor {
	t.Helper()
	s := New(o)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// eventually polls cond until it holds or the named timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func waitReady(t *testing.T, s *Supervisor) {
	t.Helper()
	eventually(t, readyTimeout, "ready", func() bool { return s.Status().Ready })
}

// run is a started run and what it has delivered.
type run struct {
	t      *Ticket
	mu     sync.Mutex
	text   string
	states []runtime.CallState
	first  chan struct{}
}

func (r *run) Text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.text
}

func startRun(ctx context.Context, t *testing.T, s *Supervisor, owner, id, prompt string, ip runtime.InferParams, onFirst ...func()) (*run, error) {
	t.Helper()
	r := &run{first: make(chan struct{})}
	var once sync.Once
	tk, err := s.Enqueue(ctx, Request{Owner: owner, ID: id,
		Msg: &workerproto.Run{Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: prompt}}, Infer: ip},
		OnDelivery: func(d runtime.Delivery) {
			r.mu.Lock()
			r.states = append(r.states, d.State)
			r.text += d.Results[0].Text
			r.mu.Unlock()
			once.Do(func() {
				for _, f := range onFirst {
					f()
				}
				close(r.first)
			})
		}})
	r.t = tk
	return r, err
}

func wait(t *testing.T, tk *Ticket) (Outcome, error) {
	t.Helper()
	select {
	case <-tk.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("request did not finish within %s", waitTimeout)
	}
	return tk.Wait()
}

func waitFirst(t *testing.T, r *run) {
	t.Helper()
	select {
	case <-r.first:
	case <-time.After(waitTimeout):
		t.Fatalf("no delivery within %s", waitTimeout)
	}
}

func call(t *testing.T, s *Supervisor, m workerproto.Message) (Outcome, error) {
	t.Helper()
	tk, err := s.Enqueue(context.Background(), Request{Owner: "test", Msg: m})
	if err != nil {
		return Outcome{}, err
	}
	return wait(t, tk)
}

func TestRunDeliversInOrder(t *testing.T) {
	for _, abi := range []runtime.ABI{runtime.ABI12, runtime.ABI13} {
		t.Run(string(abi), func(t *testing.T) {
			s := start(t, withModel(testOptions(t, abi), "/models/m.rkllm", nil))
			waitReady(t, s)
			st := s.Status()
			if st.ABI != string(abi) || st.Model != "/models/m.rkllm" || !st.ModelLoaded || st.WorkerPID == 0 {
				t.Errorf("status %+v", st)
			}
			r, err := startRun(context.Background(), t, s, "c1", "r1", "hello world", runtime.InferParams{})
			if err != nil {
				t.Fatal(err)
			}
			out, err := wait(t, r.t)
			if err != nil || out.Aborted {
				t.Fatalf("run: %+v %v", out, err)
			}
			if r.Text() != "w0 w1 w2 " {
				t.Errorf("text %q", r.Text())
			}
			want := []runtime.CallState{runtime.StateNormal, runtime.StateNormal, runtime.StateNormal, runtime.StateFinish}
			if fmt.Sprint(r.states) != fmt.Sprint(want) {
				t.Errorf("states %v, want %v", r.states, want)
			}
		})
	}
}

func TestQueueOrderFullAndAbort(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.MaxQueue = 2
	s := start(t, o)
	waitReady(t, s)
	ctx := context.Background()
	held, err := startRun(ctx, t, s, "c1", "held", "!hold@1", runtime.InferParams{})
	if err != nil {
		t.Fatal(err)
	}
	waitFirst(t, held)
	running, err := s.IsRunning(ctx)
	if err != nil || !running {
		t.Fatalf("is_running during a run = %v, %v", running, err)
	}

	var order []string
	var mu sync.Mutex
	queued := make([]*run, 0, 2)
	for _, id := range []string{"a", "b"} {
		r, err := startRun(ctx, t, s, "c2", id, "x", runtime.InferParams{}, func() {
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		queued = append(queued, r)
	}
	if _, err := startRun(ctx, t, s, "c3", "c", "x", runtime.InferParams{}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third queued run: %v, want ErrQueueFull", err)
	}
	if st := s.Status(); st.QueueDepth != 2 || !st.Running {
		t.Errorf("status %+v", st)
	}
	// Abort of another connection's request is refused; the owner's works.
	if _, err := s.Abort("c2", "held"); !errors.Is(err, ErrNoSuchRequest) {
		t.Fatalf("abort by a stranger: %v", err)
	}
	ids, err := s.Abort("c1", "")
	if err != nil || fmt.Sprint(ids) != "[held]" {
		t.Fatalf("abort = %v, %v", ids, err)
	}
	out, err := wait(t, held.t)
	if err != nil || !out.Aborted {
		t.Fatalf("aborted run: %+v, %v", out, err)
	}
	if held.Text() != "w0 " {
		t.Errorf("aborted run text %q", held.Text())
	}
	for _, r := range queued {
		if _, err := wait(t, r.t); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(order) != "[a b]" {
		t.Errorf("order %v, want [a b]", order)
	}
	if running, _ := s.IsRunning(ctx); running {
		t.Error("is_running after the runs")
	}
}

func TestAbortQueued(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI12), "/models/m.rkllm", nil))
	waitReady(t, s)
	ctx := context.Background()
	held, _ := startRun(ctx, t, s, "c1", "held", "!hold@1", runtime.InferParams{})
	waitFirst(t, held)
	q, err := startRun(ctx, t, s, "c2", "q", "x", runtime.InferParams{})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := s.Abort("c2", "q")
	if err != nil || fmt.Sprint(ids) != "[q]" {
		t.Fatalf("abort queued = %v, %v", ids, err)
	}
	if _, err := wait(t, q.t); !errors.Is(err, ErrAborted) {
		t.Fatalf("queued run after abort: %v", err)
	}
	if q.Text() != "" {
		t.Errorf("aborted queued run delivered %q", q.Text())
	}
	if st := s.Status(); st.QueueDepth != 0 {
		t.Errorf("queue depth %d after abort", st.QueueDepth)
	}
	_, _ = s.Abort("c1", "held")
	if _, err := wait(t, held.t); err != nil {
		t.Fatal(err)
	}
}

// A client that goes away loses its queued request and aborts its running one.
func TestContextEndAbortsRun(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil))
	waitReady(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	held, _ := startRun(ctx, t, s, "c1", "held", "!hold@1", runtime.InferParams{})
	waitFirst(t, held)
	queued, _ := startRun(ctx, t, s, "c1", "q", "x", runtime.InferParams{})
	cancel()
	if _, err := wait(t, queued.t); !errors.Is(err, ErrAborted) {
		t.Errorf("queued run of a gone client: %v", err)
	}
	if _, err := wait(t, held.t); !errors.Is(err, ErrAborted) {
		t.Errorf("running run of a gone client: %v", err)
	}
	// The runtime really stopped: the next run is served at once.
	r, _ := startRun(context.Background(), t, s, "c2", "n", "x", runtime.InferParams{})
	if _, err := wait(t, r.t); err != nil || r.Text() != "w0 w1 w2 " {
		t.Fatalf("next run: %q %v", r.Text(), err)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer dcancel()
	<-dctx.Done()
	r, err := startRun(dctx, t, s, "c3", "late", "x", runtime.InferParams{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(t, r.t); !errors.Is(err, ErrTimeout) {
		t.Errorf("expired request: %v, want ErrTimeout", err)
	}
}

func TestCrashRecoveryReplaysState(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	waitReady(t, s)
	for _, m := range []workerproto.Message{
		&workerproto.SetChatTemplate{SystemPrompt: "S", PromptPrefix: "<u>", PromptPostfix: "<a>"},
		&workerproto.LoadLora{Adapter: runtime.LoraAdapter{Path: "/models/a.lora", Name: "a", Scale: 1}},
		&workerproto.SetFunctionTools{Tools: `[{"type":"function"}]`},
		&workerproto.LoadPromptCache{Path: "/models/c.bin"},
	} {
		if _, err := call(t, s, m); err != nil {
			t.Fatalf("%s: %v", m.Op(), err)
		}
	}
	pid := s.Status().WorkerPID
	ctx := context.Background()
	crash, _ := startRun(ctx, t, s, "c1", "crash", "!crash@1", runtime.InferParams{})
	queued, _ := startRun(ctx, t, s, "c2", "after", "x", runtime.InferParams{LoraAdapterName: "a"})
	_, err := wait(t, crash.t)
	var ce *CrashError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCrashed) {
		t.Fatalf("crashed run: %v, want a CrashError", err)
	}
	if ce.Exit.Signal != "SIGKILL" || ce.Exit.PID != pid {
		t.Errorf("exit %+v, want SIGKILL of %d", ce.Exit, pid)
	}
	if crash.Text() != "[sys=S;tools=yes;cache=c.bin] w0 " {
		t.Errorf("text before the crash %q", crash.Text())
	}
	// The queued request waited for the restart and sees the replayed state.
	if _, err := wait(t, queued.t); err != nil {
		t.Fatal(err)
	}
	if want := "[sys=S;tools=yes;cache=c.bin;lora=a] w0 w1 w2 "; queued.Text() != want {
		t.Errorf("after restart %q, want %q", queued.Text(), want)
	}
	st := s.Status()
	if !st.Ready || st.Restarts != 1 || st.WorkerPID == pid || !strings.Contains(st.LastExit, "SIGKILL") {
		t.Errorf("status after recovery %+v", st)
	}
	if got := rec.seen(); fmt.Sprint(got) != "[crash]" {
		t.Errorf("restart causes %v, want [crash]", got)
	}
}

func TestWatchdog(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI12), "/models/m.rkllm", nil)
	o.TokenStallTimeout = 300 * time.Millisecond
	o.AbortTimeout = 300 * time.Millisecond
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	waitReady(t, s)
	ctx := context.Background()

	// A stalled run that abort can stop: the worker survives.
	pid := s.Status().WorkerPID
	r, _ := startRun(ctx, t, s, "c1", "stall", "!hold@2", runtime.InferParams{})
	_, err := wait(t, r.t)
	var te *TimeoutError
	if !errors.As(err, &te) || te.Reason != "token stall" || te.WorkerKilled {
		t.Fatalf("stalled run: %v", err)
	}
	if r.Text() != "w0 w1 " || s.Status().WorkerPID != pid {
		t.Errorf("text %q, worker %d (was %d)", r.Text(), s.Status().WorkerPID, pid)
	}
	if got := rec.seen(); len(got) != 0 {
		t.Errorf("restart causes %v after an abort that worked, want none", got)
	}

	// A hung runtime that ignores abort: the worker is killed and restarted.
	r, _ = startRun(ctx, t, s, "c1", "hang", "!hang@1", runtime.InferParams{})
	_, err = wait(t, r.t)
	if !errors.As(err, &te) || !te.WorkerKilled || !errors.Is(err, ErrTimeout) {
		t.Fatalf("hung run: %v", err)
	}
	waitReady(t, s)
	r, _ = startRun(ctx, t, s, "c1", "next", "x", runtime.InferParams{})
	if _, err := wait(t, r.t); err != nil || r.Text() != "w0 w1 w2 " {
		t.Fatalf("run after watchdog kill: %q %v", r.Text(), err)
	}
	if st := s.Status(); st.Restarts != 1 {
		t.Errorf("restarts %d", st.Restarts)
	}
	if got := rec.seen(); fmt.Sprint(got) != "[abort_timeout]" {
		t.Errorf("restart causes %v, want [abort_timeout]", got)
	}
}

func TestInitDestroy(t *testing.T) {
	s := start(t, testOptions(t, runtime.ABI13))
	eventually(t, readyTimeout, "worker up", func() bool { return s.Status().WorkerUp })
	if st := s.Status(); st.Ready || !strings.Contains(st.Reason, "no model loaded") {
		t.Errorf("status without a model %+v", st)
	}
	r, _ := startRun(context.Background(), t, s, "c", "r", "x", runtime.InferParams{})
	if _, err := wait(t, r.t); !errors.Is(err, ErrModelNotLoaded) {
		t.Fatalf("run without a model: %v", err)
	}
	def, abi, err := s.Defaults(context.Background())
	if err != nil || abi != runtime.ABI13 || def.TopK != 40 {
		t.Fatalf("defaults %+v %s %v", def, abi, err)
	}
	p := def
	p.ModelPath = "/models/m.rkllm"
	if _, err := call(t, s, &workerproto.Init{Param: p}); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, s, &workerproto.Init{Param: p}); err != nil {
		t.Errorf("repeated init with the same param: %v", err)
	}
	other := p
	other.ModelPath = "/models/other.rkllm"
	if _, err := call(t, s, &workerproto.Init{Param: other}); !errors.Is(err, ErrAlreadyLoaded) {
		t.Errorf("init of another model: %v", err)
	}
	if !s.Status().Ready {
		t.Error("not ready after init")
	}
	out, err := call(t, s, &workerproto.GetKVCacheSize{})
	if err != nil || fmt.Sprint(out.CacheSizes) != "[0]" {
		t.Errorf("kv cache %v %v", out.CacheSizes, err)
	}
	if _, err := call(t, s, &workerproto.Destroy{}); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, s, &workerproto.Destroy{}); !errors.Is(err, ErrModelNotLoaded) {
		t.Errorf("second destroy: %v", err)
	}
	if s.Status().Ready {
		t.Error("ready after destroy")
	}
	bad := p
	bad.ModelPath = "/models/bad.rkllm"
	_, err = call(t, s, &workerproto.Init{Param: bad})
	var ce *runtime.CallError
	if !errors.As(err, &ce) || ce.Func != "rkllm_init" {
		t.Errorf("bad model: %v", err)
	}
}

func TestModelLoadFailureRetries(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI13), "/models/bad.rkllm", nil))
	eventually(t, readyTimeout, "load error", func() bool { return s.Status().LoadError != "" })
	st := s.Status()
	if st.Ready || !strings.Contains(st.Reason, "model failed to load") || !strings.Contains(st.LoadError, "rkllm_init returned -1") {
		t.Errorf("status %+v", st)
	}
	r, _ := startRun(context.Background(), t, s, "c", "r", "x", runtime.InferParams{})
	if _, err := wait(t, r.t); !errors.Is(err, ErrModelNotLoaded) || !strings.Contains(err.Error(), "bad.rkllm") {
		t.Errorf("run while the model fails: %v", err)
	}
}

func TestShutdown(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil))
	waitReady(t, s)
	ctx := context.Background()
	held, _ := startRun(ctx, t, s, "c1", "held", "!hold@1", runtime.InferParams{})
	waitFirst(t, held)
	queued, _ := startRun(ctx, t, s, "c2", "q", "x", runtime.InferParams{})
	sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	pid := s.Status().WorkerPID
	if err := s.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown with a held run: %v", err)
	}
	if _, err := wait(t, queued.t); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("queued at shutdown: %v", err)
	}
	out, err := wait(t, held.t)
	if err != nil || !out.Aborted {
		t.Errorf("running at shutdown: %+v %v", out, err)
	}
	if _, err := startRun(ctx, t, s, "c3", "x", "x", runtime.InferParams{}); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("enqueue after shutdown: %v", err)
	}
	if st := s.Status(); st.Ready || st.WorkerUp {
		t.Errorf("status after shutdown %+v", st)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("worker %d still alive after shutdown", pid)
	}
}

func TestWorkerStartFailure(t *testing.T) {
	o := testOptions(t, runtime.ABI13)
	o.Command = func(ctx context.Context) *exec.Cmd {
		return exec.CommandContext(ctx, "sh", "-c", "echo 'cannot open librkllmrt.so: no such file' >&2; exit 3")
	}
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	eventually(t, readyTimeout, "start failure reported", func() bool {
		return strings.Contains(s.Status().Reason, "cannot open librkllmrt.so")
	})
	if st := s.Status(); st.Ready || st.WorkerUp || !strings.Contains(st.Reason, "exited with code 3") {
		t.Errorf("status %+v", st)
	}
	// Each failed start is counted, and retried (with backoff).
	eventually(t, waitTimeout, "a second failed start", func() bool { return len(rec.seen()) >= 2 })
	if !rec.only("start_failed") {
		t.Errorf("restart causes %v, want only start_failed", rec.seen())
	}
}

// TestUnresponsiveWorker: a worker whose rkllm_init never returns is killed after
// InitTimeout and restarted (cause unresponsive), the reason on the status; at shutdown
// a worker stuck in a call is killed too (cause shutdown).
func TestUnresponsiveWorker(t *testing.T) {
	hangingOptions := func(t *testing.T) (Options, *restarts) {
		o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
		o.Command = func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"=1.3", initHangEnv+"=1")
			return cmd
		}
		rec := &restarts{}
		o.Observer = rec
		return o, rec
	}
	t.Run("init timeout", func(t *testing.T) {
		o, rec := hangingOptions(t)
		o.InitTimeout = 200 * time.Millisecond
		s := start(t, o)
		eventually(t, waitTimeout, "the hung worker to be killed", func() bool { return len(rec.seen()) >= 1 })
		if !rec.only("unresponsive") {
			t.Errorf("restart causes %v, want only unresponsive", rec.seen())
		}
		eventually(t, waitTimeout, "the load error on the status", func() bool { return s.Status().LoadError != "" })
		if st := s.Status(); st.Ready || st.Restarts < 1 || !strings.Contains(st.LoadError, "rkllm_init did not return within 200ms") {
			t.Errorf("status %+v", st)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		o, rec := hangingOptions(t)
		o.InitTimeout = time.Hour
		o.AbortTimeout = 100 * time.Millisecond
		s := New(o)
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		eventually(t, readyTimeout, "the worker to be up (and loading)", func() bool { return s.Status().WorkerUp })
		pid := s.Status().WorkerPID
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("shutdown with a hung rkllm_init: %v", err)
		}
		if got := rec.seen(); fmt.Sprint(got) != "[shutdown]" {
			t.Errorf("restart causes %v, want [shutdown]", got)
		}
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("worker %d alive after shutdown", pid)
		}
	})
}
