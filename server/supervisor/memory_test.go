package supervisor

import (
	"context"
	"runtime"
	"testing"
	"weak"

	rt "github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// TestFinishedRequestsAreNotKept: once a request is done and its caller has let go of
// it, nothing in the supervisor keeps it (its prompt, its delivery callback) alive: not
// the queue a run went through, nor the queue a cancelled request left.
func TestFinishedRequestsAreNotKept(t *testing.T) {
	s := start(t, withModel(testOptions(t, rt.ABI13), "/models/m.rkllm", nil))
	waitReady(t, s)
	held, err := startRun(context.Background(), t, s, "rpc", "hold", "!hold@1", rt.InferParams{})
	if err != nil {
		t.Fatal(err)
	}
	<-held.first // the model is busy: what follows waits in the queue
	ran := enqueueWeak(t, s, func(tk *Ticket) { _, _ = wait(t, tk) }, nil)
	cancelled := enqueueWeak(t, s, nil, func(ctx context.CancelFunc) { ctx() })
	if _, err := s.Abort("rpc", "hold"); err != nil {
		t.Fatal(err)
	}
	_, _ = wait(t, held.t)
	<-ran.done
	for range 3 {
		runtime.GC()
	}
	if ran.msg.Value() != nil {
		t.Error("a request that ran is still reachable after it finished")
	}
	if cancelled.msg.Value() != nil {
		t.Error("a request cancelled in the queue is still reachable")
	}
}

type weakRequest struct {
	msg  weak.Pointer[workerproto.Run]
	done chan struct{}
}

// enqueueWeak queues a run and keeps only a weak pointer to its message; then (on
// their own goroutine, so the caller's stack holds nothing) after waits for its end,
// or cancel cancels it in the queue.
func enqueueWeak(t *testing.T, s *Supervisor, after func(*Ticket), cancel func(context.CancelFunc)) *weakRequest {
	t.Helper()
	w := &weakRequest{done: make(chan struct{})}
	queued := make(chan struct{})
	go func() {
		defer close(w.done)
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		m := &workerproto.Run{Inputs: []rt.Input{{Type: rt.InputPrompt, Prompt: "x"}}}
		w.msg = weak.Make(m)
		tk, err := s.Enqueue(ctx, Request{Owner: "rpc", ID: "w", Msg: m, OnDelivery: func(rt.Delivery) {}})
		close(queued)
		if err != nil {
			t.Error(err)
			return
		}
		if cancel != nil {
			cancel(stop)
			_, _ = wait(t, tk)
			return
		}
		after(tk)
	}()
	<-queued
	if cancel != nil {
		<-w.done
	}
	return w
}
