package rkllmrpc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
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
	acc.notify = func(params any, release func()) { _ = c.Notify(NotifyResult, params); release() }
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

// queueFull is a backend whose queue refuses every run: what a request costs up to
// the queue, and its refusal, is what a benchmark of it measures.
type queueFull struct{}

func (queueFull) Enqueue(context.Context, supervisor.Request) (*supervisor.Ticket, error) {
	return nil, supervisor.ErrQueueFull
}
func (queueFull) Abort(string, string) ([]string, error)  { return nil, nil }
func (queueFull) IsRunning(context.Context) (bool, error) { return false, nil }
func (queueFull) Defaults(context.Context) (runtime.Param, runtime.ABI, error) {
	return runtime.Param{}, runtime.ABI13, nil
}
func (queueFull) Loaded() (runtime.Param, bool) {
	return runtime.Param{ModelPath: "/models/model.rkllm", MaxContextLen: 4096, MaxNewTokens: 512}, true
}
func (queueFull) LoadedModel() (supervisor.LoadedModel, bool) {
	return supervisor.LoadedModel{Param: runtime.Param{ModelPath: "/models/model.rkllm", MaxContextLen: 4096, MaxNewTokens: 512}, ABI: runtime.ABI13}, true
}

// BenchmarkRunToQueue is what a short streamed rkllm.run costs the server from its
// socket line to the queue: the JSON-RPC checks and decoding, the run's params
// (docs/benchmarks.md, time to first token over the socket); the queue refuses it, so
// its short answer is encoded too.
func BenchmarkRunToQueue(b *testing.B) {
	s, err := New(queueFull{}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	d := jsonrpc.NewDispatcher(logr.Discard(), nil)
	s.Register(d)
	peer := &jsonrpc.Peer{Transport: "unix", ID: "unix-1", Persistent: true, Context: context.Background(), Notify: func(*jsonrpc.Notification) error { return nil }}
	msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"stream":true,"input":{"prompt_input":"What is the capital of France?"},"infer_params":{"max_new_tokens":4}}}`)
	var answer []byte
	b.ReportAllocs()
	for b.Loop() {
		d.Serve(context.Background(), peer, msg, nil, func(resps []*jsonrpc.Response, _ bool) {
			answer, _ = json.Marshal(resps[0])
		})
	}
	b.StopTimer()
	if !strings.Contains(string(answer), "-32002") {
		b.Fatalf("answer %s, want the queue's refusal", answer)
	}
}
