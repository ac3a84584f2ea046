package rkllmrpc

import (
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// BenchmarkTokenNotification is the supervisor's fan-out of one token of a streamed
// rkllm.run: the run's accumulator takes the delivery and the rkllm.result
// notification is encoded as a line into a reused buffer, as the transports send it.
func BenchmarkTokenNotification(b *testing.B) {
	var line []byte
	peer := &jsonrpc.Peer{Notify: func(n *jsonrpc.Notification) error {
		enc, err := n.AppendJSON(line[:0])
		line = append(enc, '\n')
		return err
	}}
	c := &jsonrpc.Call{Request: &jsonrpc.Request{Method: "rkllm.run"}, Peer: peer}
	acc := newRunAcc("r-1", 1, false, false)
	acc.notify = func(params any) { _ = c.Notify(NotifyResult, params) }
	d := runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "@1234567890123", TokenID: 295}}}
	b.ReportAllocs()
	for b.Loop() {
		acc.deliver(d)
		if len(acc.entries[0].text) > 1<<20 {
			acc.entries[0].text, acc.entries[0].tokenIDs = nil, nil
		}
	}
	b.StopTimer()
	want := `{"jsonrpc":"2.0","method":"rkllm.result","params":{"request_id":"r-1","state":"RKLLM_RUN_NORMAL","text":"@1234567890123","token_id":295}}` + "\n"
	if string(line) != want {
		b.Fatalf("notification\n%s\nwant\n%s", line, want)
	}
}
