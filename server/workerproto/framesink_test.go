//go:build cgo

package workerproto_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// The FrameSink is tested the way the supervisor meets it: a real run of the simulator
// through the binding, its frames read from the other end of a socketpair.

// simLibrary opens the simulator of abi built by `make sim`.
func simLibrary(t *testing.T, abi runtime.ABI) *runtime.Library {
	t.Helper()
	path := simtest.Library(t, string(abi))
	lib, err := runtime.Open(path, abi)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return lib
}

// longToken is over what the sink writes itself (WP_SINK_BUF).
var longToken = strings.Repeat("x", 20000)

// sinkModel loads a simulator model whose replies mix ASCII, multi-byte and long
// tokens, with nBatch inputs per run.
func sinkModel(t *testing.T, lib *runtime.Library, nBatch int) *runtime.Handle {
	t.Helper()
	m := simulator.FastModel()
	m.Vocab = append(m.Vocab, " café", " 日本", longToken, "\"quoted\\\"")
	m.ReplyMinTokens, m.ReplyMaxTokens = 300, 300
	return initModel(t, lib, m, nBatch)
}

// initModel loads m with nBatch inputs per run, destroyed when the test ends.
func initModel(t *testing.T, lib *runtime.Library, m simulator.Model, nBatch int) *runtime.Handle {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.rkllm")
	if err := simulator.WriteModel(path, m); err != nil {
		t.Fatal(err)
	}
	p := lib.DefaultParams()
	p.ModelPath = path
	p.MaxContextLen = 4096
	p.Extend.NBatch = uint8(nBatch)
	h, err := lib.Init(p)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = h.Destroy() })
	return h
}

func batchOf(n int) []runtime.Input {
	in := make([]runtime.Input, n)
	for i := range in {
		in[i] = runtime.Input{Type: runtime.InputPrompt, Prompt: "tell me about the board " + strings.Repeat("again ", i)}
	}
	return in
}

// pipe is a worker's Conn with a FrameSink on one end of a socketpair, and the
// supervisor's end.
type pipe struct {
	worker, supervisor *workerproto.Conn
	sink               *workerproto.FrameSink
	workerFile         *os.File
	// onDelivery, when set, sees each delivery the supervisor's end reads.
	onDelivery func(*workerproto.Delivery)
}

func newPipe(t *testing.T, maxFrame int) *pipe {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	wf, sf := os.NewFile(uintptr(fds[0]), "worker"), os.NewFile(uintptr(fds[1]), "supervisor")
	p := &pipe{worker: workerproto.NewConn(wf, maxFrame), supervisor: workerproto.NewConn(sf, 0), workerFile: wf}
	if p.sink, err = workerproto.NewFrameSink(p.worker, wf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.worker.Close()
		_ = p.supervisor.Close()
		p.sink.Close()
	})
	return p
}

// received is what the supervisor's end read.
type received struct {
	deliveries []runtime.Delivery
	frames     []*workerproto.Delivery // the deliveries as sent, direct or not
	pings      int
}

// read reads frames on the supervisor's end until the worker's end closes, in the
// background; each delivery's payload must be exactly what Go's encoder makes of it.
func (p *pipe) read(t *testing.T) <-chan received {
	t.Helper()
	ch := make(chan received, 1)
	go func() {
		var r received
		defer func() { ch <- r }()
		for {
			f, err := p.supervisor.ReadFrame()
			if err != nil {
				return
			}
			m, err := workerproto.Decode(f.Op, f.Payload)
			if err != nil {
				t.Errorf("frame %d (%s): %v", len(r.deliveries), f.Op, err)
				_ = p.supervisor.Close() // the worker's writes fail rather than wait for a reader
				return
			}
			switch m := m.(type) {
			case *workerproto.Delivery:
				if f.ID != runID {
					t.Errorf("delivery with call id %d, want %d", f.ID, runID)
				}
				if enc := workerproto.Encode(m); !bytes.Equal(enc, f.Payload) {
					t.Errorf("delivery %d on the wire:\n%x\nGo encodes it as\n%x", len(r.deliveries), f.Payload, enc)
				}
				r.deliveries = append(r.deliveries, m.Delivery)
				r.frames = append(r.frames, m)
				if p.onDelivery != nil {
					p.onDelivery(m)
				}
			case *workerproto.Ping:
				r.pings++
			}
		}
	}()
	return ch
}

const runID = 42

// runWithSink runs inputs with the sink, passing what it does not take to Send, as the
// worker does, and returns those deliveries.
func (p *pipe) runWithSink(t *testing.T, h *runtime.Handle, inputs []runtime.Input, ip runtime.InferParams) ([]runtime.Delivery, error) {
	t.Helper()
	return p.runTo(t, h, inputs, ip, -1, nil)
}

// runTo is runWithSink with the tokens written to client directly as d says.
func (p *pipe) runTo(t *testing.T, h *runtime.Handle, inputs []runtime.Input, ip runtime.InferParams, client int, d *workerproto.Direct) ([]runtime.Delivery, error) {
	t.Helper()
	var passed []runtime.Delivery
	sink, err := p.sink.For(runID, client, d)
	if err != nil {
		t.Fatal(err)
	}
	err = h.RunWithSink(context.Background(), inputs, ip, sink, func(d runtime.Delivery) runtime.CallbackAction {
		passed = append(passed, d)
		_ = p.worker.Send(runID, &workerproto.Delivery{Delivery: d})
		return runtime.Continue
	})
	return passed, err
}

// goRun runs inputs through the binding's Go path alone.
func goRun(t *testing.T, h *runtime.Handle, inputs []runtime.Input, ip runtime.InferParams) []runtime.Delivery {
	t.Helper()
	var out []runtime.Delivery
	if err := h.Run(context.Background(), inputs, ip, func(d runtime.Delivery) runtime.CallbackAction {
		out = append(out, d)
		return runtime.Continue
	}); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return out
}

// tokensIn counts the token deliveries in ds (WAITING ones hold part of a character).
func tokensIn(ds []runtime.Delivery) (n int) {
	for _, d := range ds {
		if (d.State == runtime.StateNormal || d.State == runtime.StateWaiting) && len(d.Results) > 0 {
			n++
		}
	}
	return n
}

// withoutTimes drops the timings of the run's end, measured, which differ from run to run.
func withoutTimes(ds []runtime.Delivery) []runtime.Delivery {
	out := make([]runtime.Delivery, len(ds))
	for i, d := range ds {
		out[i] = runtime.Delivery{State: d.State, Results: make([]runtime.Result, len(d.Results))}
		for j, r := range d.Results {
			if d.State != runtime.StateNormal {
				r.Perf.PrefillTimeMs, r.Perf.GenerateTimeMs = 0, 0
			}
			out[i].Results[j] = r
		}
	}
	return out
}

// A run with the sink reaches the supervisor as the same deliveries, in the same
// order, as one through Go alone; the sink takes every token but the one too long for
// it, and Go gets the rest (the end of the run).
func TestFrameSinkWritesWhatSendWould(t *testing.T) {
	t.Setenv("RKLLM_SIM_TOKEN_PERF", "1") // every field of a token's result set, and the same each run
	for _, abi := range []runtime.ABI{runtime.ABI12, runtime.ABI13} {
		for _, nBatch := range []int{1, 2} {
			t.Run(fmt.Sprintf("abi%s/batch%d", abi, nBatch), func(t *testing.T) {
				lib := simLibrary(t, abi)
				want := goRun(t, sinkModel(t, lib, nBatch), batchOf(nBatch), runtime.InferParams{})

				p := newPipe(t, 0)
				got := p.read(t)
				passed, err := p.runWithSink(t, sinkModel(t, lib, nBatch), batchOf(nBatch), runtime.InferParams{})
				if err != nil {
					t.Fatalf("RunWithSink: %v", err)
				}
				_ = p.worker.Close()
				r := <-got
				if !reflect.DeepEqual(withoutTimes(r.deliveries), withoutTimes(want)) {
					t.Fatalf("the supervisor read %d deliveries unlike the %d of a run through Go:\n%+v\nwant\n%+v", len(r.deliveries), len(want), withoutTimes(r.deliveries), withoutTimes(want))
				}
				var long int
				for _, d := range want {
					if d.State == runtime.StateNormal && slices.ContainsFunc(d.Results, func(r runtime.Result) bool { return r.Text == longToken }) {
						long++
					}
				}
				if long == 0 {
					t.Fatal("no reply holds a token too long for the sink: change the prompt")
				}
				if !slices.ContainsFunc(want, func(d runtime.Delivery) bool { return d.State == runtime.StateWaiting }) {
					t.Fatal("no reply holds part of a character (WAITING): change the prompt")
				}
				if passedTokens := tokensIn(passed); passedTokens != long {
					t.Errorf("Go got %d token deliveries, want only the %d with a token too long for the sink", passedTokens, long)
				}
				if last := passed[len(passed)-1]; last.State != runtime.StateFinish {
					t.Errorf("Go's last delivery is state %v, want the run's end", last.State)
				}
				if len(want) < 200 {
					t.Errorf("only %d deliveries: the model should reply hundreds of tokens", len(want))
				}
			})
		}
	}
}

// Frames the Conn sends during a run (the worker's replies and pings) never mix with
// the sink's: every frame decodes.
func TestFrameSinkSharesTheConnsFrames(t *testing.T) {
	lib := simLibrary(t, runtime.ABI13)
	reply := tokensIn(goRun(t, sinkModel(t, lib, 1), batchOf(1), runtime.InferParams{}))
	p := newPipe(t, 0)
	got := p.read(t)
	h := sinkModel(t, lib, 1)
	stop := make(chan struct{})
	var sent sync.WaitGroup
	pings := make([]int, 4)
	for i := range pings {
		sent.Add(1)
		go func() {
			defer sent.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := p.worker.Send(0, &workerproto.Ping{}); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
				pings[i]++
			}
		}()
	}
	for range 5 {
		if _, err := p.runWithSink(t, h, batchOf(1), runtime.InferParams{}); err != nil {
			t.Fatalf("RunWithSink: %v", err)
		}
	}
	close(stop)
	sent.Wait()
	_ = p.worker.Close()
	r := <-got
	tokens := tokensIn(r.deliveries)
	var want int
	for _, n := range pings {
		want += n
	}
	if r.pings != want || tokens != 5*reply {
		t.Errorf("read %d pings and %d tokens, want %d pings and %d tokens", r.pings, tokens, want, 5*reply)
	}
}

// What the sink does not take reaches Go whole: hidden states, a frame over the Conn's
// limit (which Send then refuses, as the worker reports), and every delivery once the
// supervisor is gone.
func TestFrameSinkPassesWhatItCannotWrite(t *testing.T) {
	lib := simLibrary(t, runtime.ABI13)
	reply := tokensIn(goRun(t, sinkModel(t, lib, 1), batchOf(1), runtime.InferParams{}))
	t.Run("hidden states", func(t *testing.T) {
		p := newPipe(t, 0)
		got := p.read(t)
		passed, err := p.runWithSink(t, sinkModel(t, lib, 1), batchOf(1), runtime.InferParams{Mode: runtime.InferGetLastHiddenLayer})
		if err != nil {
			t.Fatalf("RunWithSink: %v", err)
		}
		_ = p.worker.Close()
		<-got
		var hidden bool
		for _, d := range passed {
			for _, r := range d.Results {
				hidden = hidden || len(r.HiddenStates) > 0
			}
		}
		if !hidden {
			t.Errorf("Go got no hidden states: %+v", passed)
		}
	})
	t.Run("frame over the limit", func(t *testing.T) {
		p := newPipe(t, 40) // a token's frame is over 60 bytes
		got := p.read(t)
		passed, err := p.runWithSink(t, sinkModel(t, lib, 1), batchOf(1), runtime.InferParams{})
		if err != nil {
			t.Fatalf("RunWithSink: %v", err)
		}
		_ = p.worker.Close()
		if r := <-got; len(r.deliveries) != 0 {
			t.Errorf("the supervisor read %d deliveries over the frame limit", len(r.deliveries))
		}
		if n := tokensIn(passed); n != reply {
			t.Errorf("Go got %d tokens, want all %d", n, reply)
		}
	})
	t.Run("supervisor gone", func(t *testing.T) {
		p := newPipe(t, 0)
		_ = p.supervisor.Close()
		var sendErr error
		var passed []runtime.Delivery
		sink, err := p.sink.For(runID, -1, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = sinkModel(t, lib, 1).RunWithSink(context.Background(), batchOf(1), runtime.InferParams{}, sink, func(d runtime.Delivery) runtime.CallbackAction {
			passed = append(passed, d)
			if err := p.worker.Send(runID, &workerproto.Delivery{Delivery: d}); err != nil && sendErr == nil {
				sendErr = err
			}
			return runtime.Continue
		})
		if err != nil {
			t.Fatalf("RunWithSink: %v", err)
		}
		if n := tokensIn(passed); n != reply {
			t.Errorf("Go got %d tokens, want all %d", n, reply)
		}
		if !errors.Is(sendErr, syscall.EPIPE) {
			t.Errorf("Send: %v, want EPIPE", sendErr)
		}
	})
}
