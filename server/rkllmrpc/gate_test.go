package rkllmrpc

import (
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// TestHeldNotificationStaysPaid: a streamed rkllm.run_async's notifications wait for
// the response that names the run (notifyGate) without holding up the supervisor's
// goroutine that delivers them; one of hidden states stays paid for while it waits,
// and what it was charged for its encoding and queueing is given back only once it has
// been sent, as for a notification sent at once.
func TestHeldNotificationStaysPaid(t *testing.T) {
	acct := inflight.New(0).Open()
	defer acct.Close()
	var sent []any
	gate := &notifyGate{send: func(p any) { sent = append(sent, p) }, replied: make(chan struct{})}
	acc := newRunAcc("r-1", 1, false, false)
	acc.acct, acc.notify = acct, gate.notify
	hidden := make([]float32, 1000)
	d := runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{TokenID: -1, HiddenStates: hidden, EmbdSize: 100, NumTokens: 10}}}
	kept, transient := arrayCost(len(hidden), false, true)

	acc.deliver(d)
	if len(sent) != 0 || acct.Held() != int64(kept+transient) {
		t.Fatalf("held by the gate: %d sent, %d bytes charged, want 0 sent and %d", len(sent), acct.Held(), kept+transient)
	}
	gate.open()
	if len(sent) != 1 || acct.Held() != int64(kept) {
		t.Fatalf("the gate open: %d sent, %d bytes charged, want 1 sent and %d", len(sent), acct.Held(), kept)
	}
	acc.deliver(d)
	if len(sent) != 2 || acct.Held() != int64(2*kept) {
		t.Errorf("sent at once: %d sent, %d bytes charged, want 2 sent and %d", len(sent), acct.Held(), 2*kept)
	}
}
