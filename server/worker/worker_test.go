package worker_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/worker"
	"github.com/rkllm-operator/rkllm-operator/server/worker/fakeruntime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

const testTimeout = 10 * time.Second

func startWorker(t *testing.T, rt *fakeruntime.Runtime) (*workerproto.Client, chan error) {
	t.Helper()
	a, b := net.Pipe()
	w := worker.New(rt, "fake.so", workerproto.NewConn(b, 0), logr.Discard())
	done := make(chan error, 1)
	go func() { done <- w.Serve(context.Background()) }()
	c := workerproto.NewClient(workerproto.NewConn(a, 0), workerproto.ClientOptions{})
	t.Cleanup(func() { _ = c.Close() })
	return c, done
}

func call(t *testing.T, c *workerproto.Client, m workerproto.Message) *workerproto.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r, err := c.Call(ctx, m)
	if err != nil {
		t.Fatalf("%s: %v", m.Op(), err)
	}
	return r
}

func TestWorkerServesRuntime(t *testing.T) {
	rt := fakeruntime.New(runtime.ABI13)
	c, done := startWorker(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.ABI != runtime.ABI13 || h.Library != "fake.so" || h.Default.TopK != 40 || h.Default.Extend.NBatch != 1 {
		t.Errorf("hello %+v", h)
	}
	if r := call(t, c, &workerproto.Run{Inputs: []runtime.Input{{Prompt: "x"}}}); r.Err == nil {
		t.Error("run before init succeeded")
	}
	p := h.Default
	p.ModelPath = "/models/m.rkllm"
	p.MaxNewTokens = 3
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatalf("init: %v", r.Err)
	}
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err == nil {
		t.Error("second init succeeded")
	}
	if r := call(t, c, &workerproto.SetChatTemplate{SystemPrompt: "S"}); r.Err != nil {
		t.Fatal(r.Err)
	}
	var got []runtime.Delivery
	pend, err := c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "a b", Type: runtime.InputPrompt}}, Infer: runtime.InferParams{KeepHistory: true}},
		func(d *workerproto.Delivery) { got = append(got, d.Delivery) })
	if err != nil {
		t.Fatal(err)
	}
	<-pend.Done()
	if r, err := pend.Result(); err != nil || r.Err != nil {
		t.Fatalf("run: %v %v", err, r.Err)
	}
	want := []runtime.Delivery{
		{State: runtime.StateNormal, Results: []runtime.Result{{Text: "[sys=S] w0 ", TokenID: 1000}}},
		{State: runtime.StateNormal, Results: []runtime.Result{{Text: "w1 ", TokenID: 1001}}},
		{State: runtime.StateNormal, Results: []runtime.Result{{Text: "w2 ", TokenID: 1002}}},
		{State: runtime.StateFinish, Results: []runtime.Result{{TokenID: -1, Perf: runtime.PerfStat{PrefillTimeMs: 1.5, PrefillTokens: 2, GenerateTimeMs: 7.5, GenerateTokens: 3, MemoryUsageMB: 64}}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("deliveries\n got %+v\nwant %+v", got, want)
	}
	if r := call(t, c, &workerproto.GetKVCacheSize{}); !reflect.DeepEqual(r.CacheSizes, []int32{5}) {
		t.Errorf("kv cache %v, want [5]", r.CacheSizes)
	}
	r := call(t, c, &workerproto.LoadLora{Adapter: runtime.LoraAdapter{Path: "/bad.lora", Name: "x"}})
	var ce *runtime.CallError
	if !errors.As(r.Err, &ce) || ce.Func != "rkllm_load_lora" {
		t.Errorf("bad lora: %v", r.Err)
	}
	r = call(t, c, &workerproto.Run{Inputs: []runtime.Input{{Prompt: "x"}}, Infer: runtime.InferParams{Sampling: &runtime.SamplingParams{}}})
	if r.Err != nil {
		t.Errorf("1.3 sampling: %v", r.Err)
	}
	if r := call(t, c, &workerproto.Destroy{}); r.Err != nil {
		t.Fatal(r.Err)
	}
	_ = c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v after the supervisor closed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return after close")
	}
}

func TestAbortAndIsRunningDuringRun(t *testing.T) {
	rt := fakeruntime.New(runtime.ABI12)
	c, _ := startWorker(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, _ := c.Hello(ctx)
	p := h.Default
	p.ModelPath = "m.rkllm"
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatal(r.Err)
	}
	first := make(chan struct{})
	var n int
	pend, err := c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "!hold@1"}}}, func(*workerproto.Delivery) {
		if n++; n == 1 {
			close(first)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	<-first
	if r := call(t, c, &workerproto.IsRunning{}); !r.Running {
		t.Error("is_running false during a run")
	}
	if r := call(t, c, &workerproto.SetChatTemplate{}); !errors.Is(r.Err, workerproto.ErrWorkerBusy) {
		t.Errorf("call during run: %v, want ErrWorkerBusy", r.Err)
	}
	if r := call(t, c, &workerproto.Abort{Run: pend.ID()}); r.Err != nil {
		t.Fatal(r.Err)
	}
	<-pend.Done()
	if r, err := pend.Result(); err != nil || r.Err != nil {
		t.Fatalf("aborted run: %v %v", err, r.Err)
	}
	if n != 2 { // one token, then FINISH
		t.Errorf("%d deliveries, want 2", n)
	}
	if r := call(t, c, &workerproto.IsRunning{}); r.Running {
		t.Error("is_running true after the run")
	}
	r := call(t, c, &workerproto.Run{Inputs: []runtime.Input{{Prompt: "x"}}, Infer: runtime.InferParams{MaxNewTokens: 2}})
	if !errors.Is(r.Err, runtime.ErrNotSupported) {
		t.Errorf("1.2 max_new_tokens: %v, want ErrNotSupported", r.Err)
	}
}

// TestAbortNamesItsRun: an Abort sent right behind its Run stops it wherever the run
// is (here, most often, not yet handed to the runtime), and an Abort of a run that has
// ended does not stop the next one.
func TestAbortNamesItsRun(t *testing.T) {
	rt := fakeruntime.New(runtime.ABI13)
	c, _ := startWorker(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, _ := c.Hello(ctx)
	p := h.Default
	p.ModelPath = "m.rkllm"
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatal(r.Err)
	}
	for i := range 20 {
		var got []runtime.CallState
		pend, err := c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "!hold@0"}}}, func(d *workerproto.Delivery) { got = append(got, d.State) })
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Start(&workerproto.Abort{Run: pend.ID()}, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-pend.Done():
		case <-time.After(testTimeout):
			t.Fatalf("run %d: an abort sent right behind its run was lost", i)
		}
		if r, err := pend.Result(); err != nil || r.Err != nil || len(got) > 1 {
			t.Fatalf("run %d aborted: %v %v, deliveries %v (want at most FINISH)", i, err, r.Err, got)
		}
		// The same abort again, after its run: the next run is not touched.
		if r := call(t, c, &workerproto.Abort{Run: pend.ID()}); r.Err != nil {
			t.Fatal(r.Err)
		}
		var tokens int
		pend, err = c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "x"}}, Infer: runtime.InferParams{MaxNewTokens: 3}}, func(d *workerproto.Delivery) {
			if d.State == runtime.StateNormal {
				tokens++
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		<-pend.Done()
		if r, err := pend.Result(); err != nil || r.Err != nil || tokens != 3 {
			t.Fatalf("run after a stale abort: %v %v, %d tokens, want 3", err, r.Err, tokens)
		}
	}
}

// A supervisor that goes away mid-run must not leave the worker generating.
func TestCloseDuringRunAborts(t *testing.T) {
	rt := fakeruntime.New(runtime.ABI13)
	c, done := startWorker(t, rt)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, _ := c.Hello(ctx)
	p := h.Default
	p.ModelPath = "m.rkllm"
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatal(r.Err)
	}
	first := make(chan struct{}, 1)
	if _, err := c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "!hold@1"}}}, func(*workerproto.Delivery) {
		select {
		case first <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	<-first
	_ = c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("worker kept running after the supervisor closed")
	}
}

// TestResultTooLargeFailsTheRun: a delivery of hidden states larger than one frame
// fails the run with a ResultTooLargeError naming the field and the limit (never a
// success missing its data); a result that fits comes back whole, and the worker goes
// on serving.
func TestResultTooLargeFailsTheRun(t *testing.T) {
	const maxFrame = 4096
	a, b := net.Pipe()
	w := worker.New(fakeruntime.New(runtime.ABI13), "fake.so", workerproto.NewConn(b, maxFrame), logr.Discard())
	go func() { _ = w.Serve(context.Background()) }()
	c := workerproto.NewClient(workerproto.NewConn(a, maxFrame), workerproto.ClientOptions{})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := h.Default
	p.ModelPath = "/models/m.rkllm"
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatal(r.Err)
	}
	hiddenRun := func(tokens int) (*workerproto.Reply, []float32) {
		var got []float32
		pend, err := c.Start(&workerproto.Run{
			Inputs: []runtime.Input{{Type: runtime.InputToken, TokenIDs: make([]int32, tokens)}},
			Infer:  runtime.InferParams{Mode: runtime.InferGetLastHiddenLayer},
		}, func(d *workerproto.Delivery) {
			for _, r := range d.Results {
				got = append(got, r.HiddenStates...)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-pend.Done():
		case <-time.After(testTimeout):
			t.Fatal("run did not end")
		}
		r, err := pend.Result()
		if err != nil {
			t.Fatal(err)
		}
		return r, got
	}
	// 4 floats per token: 100 tokens fit in 4096 bytes, 300 do not.
	r, got := hiddenRun(100)
	if r.Err != nil || len(got) != 100*fakeruntime.EmbdSize {
		t.Fatalf("a result that fits: %v, %d floats", r.Err, len(got))
	}
	r, got = hiddenRun(300)
	var tl *workerproto.ResultTooLargeError
	if !errors.As(r.Err, &tl) || tl.Field != "last_hidden_layer" || tl.Limit != maxFrame || tl.Size <= maxFrame || len(got) != 0 {
		t.Fatalf("a result over the frame: %v (%+v), %d floats delivered", r.Err, tl, len(got))
	}
	if r, got := hiddenRun(10); r.Err != nil || len(got) != 10*fakeruntime.EmbdSize {
		t.Errorf("the run after: %v, %d floats", r.Err, len(got))
	}
}

// longErrorRuntime fails Init with an error that quotes the model path twice.
type longErrorRuntime struct{ *fakeruntime.Runtime }

func (longErrorRuntime) Init(p runtime.Param) (worker.Model, error) {
	return nil, fmt.Errorf("cannot load %s: %s not found", p.ModelPath, p.ModelPath)
}

// TestLongErrorIsCut: an error reply too large for a frame (it quotes a long model
// path) reaches the supervisor cut, instead of never.
func TestLongErrorIsCut(t *testing.T) {
	a, b := net.Pipe()
	w := worker.New(longErrorRuntime{fakeruntime.New(runtime.ABI13)}, "fake.so", workerproto.NewConn(b, 4096), logr.Discard())
	go func() { _ = w.Serve(context.Background()) }()
	c := workerproto.NewClient(workerproto.NewConn(a, 4096), workerproto.ClientOptions{})
	t.Cleanup(func() { _ = c.Close() })
	r := call(t, c, &workerproto.Init{Param: runtime.Param{ModelPath: "/models/" + strings.Repeat("é", 1500)}})
	if r.Err == nil || !strings.HasPrefix(r.Err.Error(), "cannot load /models/é") || !strings.HasSuffix(r.Err.Error(), "(cut to fit a frame)") {
		t.Fatalf("init error %v", r.Err)
	}
}

// TestRunClearsAndReportsTheCache: a Run can clear the KV cache before it and report
// the cache's size after it, in its one round trip.
func TestRunClearsAndReportsTheCache(t *testing.T) {
	c, _ := startWorker(t, fakeruntime.New(runtime.ABI13))
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h, err := c.Hello(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := h.Default
	p.ModelPath, p.MaxNewTokens = "/models/m.rkllm", 3
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatal(r.Err)
	}
	run := func(clear bool) []int32 {
		r := call(t, c, &workerproto.Run{Inputs: []runtime.Input{{Prompt: "a b", Type: runtime.InputPrompt}}, Infer: runtime.InferParams{KeepHistory: true},
			ClearKVCache: clear, ReportKVCacheSize: true})
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r.CacheSizes
	}
	// 2 prompt tokens and 3 generated a run, kept.
	for _, tc := range []struct {
		clear bool
		want  []int32
	}{{false, []int32{5}}, {false, []int32{10}}, {true, []int32{5}}} {
		if got := run(tc.clear); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("run (clear %v): cache %v, want %v", tc.clear, got, tc.want)
		}
	}
	if r := call(t, c, &workerproto.Run{Inputs: []runtime.Input{{Prompt: "x"}}}); r.Err != nil || r.CacheSizes != nil {
		t.Errorf("a run that did not ask: %v, cache sizes %v", r.Err, r.CacheSizes)
	}
}

// sinkRuntime hands out models that take a runtime.Sink, as the cgo binding's do.
type sinkRuntime struct {
	*fakeruntime.Runtime
	sinks chan runtime.Sink // what each run was given
}

func (r sinkRuntime) Init(p runtime.Param) (worker.Model, error) {
	m, err := r.Runtime.Init(p)
	if err != nil {
		return nil, err
	}
	return sinkModel{Model: m, sinks: r.sinks}, nil
}

type sinkModel struct {
	worker.Model
	sinks chan runtime.Sink
}

func (m sinkModel) RunWithSink(ctx context.Context, inputs []runtime.Input, ip runtime.InferParams, sink runtime.Sink, fn runtime.ResultFunc) error {
	m.sinks <- sink
	return m.Run(ctx, inputs, ip, fn)
}

// tokenWriter gives each run a sink naming its call id.
type tokenWriter struct{ ids []uint64 }

func (*tokenWriter) Reclaim(uint64) {}

func (w *tokenWriter) For(id uint64, _ int, _ *workerproto.Direct) (runtime.Sink, error) {
	w.ids = append(w.ids, id)
	return runtime.Sink{Arg: unsafe.Pointer(&w.ids[len(w.ids)-1])}, nil
}

// A worker with a TokenWriter hands each run on a model that takes a sink the writer's
// sink for that run's call id: the path on which a token costs the worker no entry
// into Go (workerproto.FrameSink).
func TestRunsOfferTokensToTheTokenWriter(t *testing.T) {
	rt := sinkRuntime{Runtime: fakeruntime.New(runtime.ABI13), sinks: make(chan runtime.Sink, 4)}
	a, b := net.Pipe()
	w := worker.New(rt, "fake.so", workerproto.NewConn(b, 0), logr.Discard())
	tw := &tokenWriter{}
	w.WriteTokensWith(tw)
	go func() { _ = w.Serve(context.Background()) }()
	c := workerproto.NewClient(workerproto.NewConn(a, 0), workerproto.ClientOptions{})
	t.Cleanup(func() { _ = c.Close() })
	p := rt.DefaultParams()
	p.ModelPath = "/models/m.rkllm"
	if r := call(t, c, &workerproto.Init{Param: p}); r.Err != nil {
		t.Fatalf("init: %v", r.Err)
	}
	for i := range 2 {
		var tokens int
		pend, err := c.Start(&workerproto.Run{Inputs: []runtime.Input{{Prompt: "a b", Type: runtime.InputPrompt}}}, func(*workerproto.Delivery) { tokens++ })
		if err != nil {
			t.Fatal(err)
		}
		<-pend.Done()
		if r, err := pend.Result(); err != nil || r.Err != nil {
			t.Fatalf("run: %v %v", err, r.Err)
		}
		var sink runtime.Sink
		select {
		case sink = <-rt.sinks:
		default:
			t.Fatalf("run %d ended without being offered a sink", i)
		}
		if len(tw.ids) != i+1 || sink.Arg != unsafe.Pointer(&tw.ids[i]) {
			t.Fatalf("run %d was given sink %v; the writer made %d sinks (ids %v)", i, sink, len(tw.ids), tw.ids)
		}
		if i > 0 && tw.ids[i] == tw.ids[i-1] {
			t.Errorf("two runs share call id %d", tw.ids[i])
		}
		if tokens == 0 {
			t.Error("the run's deliveries did not reach the client")
		}
	}
}
