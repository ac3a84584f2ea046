package rkllmrpc

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// TestTextNoteEncoding: a token's notification written by hand is what encoding/json
// writes for the same struct, for texts that need every kind of escaping.
func TestTextNoteEncoding(t *testing.T) {
	for _, text := range []string{"", "plain", "quote \" backslash \\", "\n\t\x00\x1f", "<b>&</b>", "é 世界 😀", "\u2028\u2029", "cut \xe2\x82"} {
		for _, id := range []int32{0, -1, 295, math.MaxInt32, math.MinInt32} {
			n := &textNote{RequestID: "r-\"1\"", State: "RKLLM_RUN_NORMAL", Text: text, TokenID: id}
			want, err := json.Marshal(n)
			if err != nil {
				t.Fatal(err)
			}
			if got := n.AppendJSON([]byte("x")); string(got) != "x"+string(want) {
				t.Errorf("AppendJSON = %s, want %s", got[1:], want)
			}
		}
	}
}

// fakeLease frames notifications as SSE chunks and records what it is told.
type fakeLease struct {
	wrote    int
	part     *jsonrpc.Notification
	written  int
	returned bool
}

func (*fakeLease) FD() (int, error)                          { return 7, nil }
func (*fakeLease) Framing() (open, end string, chunked bool) { return "data: ", "\n\n", true }
func (l *fakeLease) Wrote(n int)                             { l.wrote += n }
func (l *fakeLease) Return(part *jsonrpc.Notification, written int) {
	l.part, l.written, l.returned = part, written, true
}

// TestDirectTemplate: the worker writes a token as the template's head, the state,
// `,"text":` and the text, `,"token_id":` and the id, and its tail (workerproto.Direct);
// that must be the notification the supervisor writes for it, byte for byte.
func TestDirectTemplate(t *testing.T) {
	lease := &fakeLease{}
	acc := newRunAcc("r-0a1b", 1, false, false)
	acc.notify = func(any, func()) { t.Error("a token the worker wrote was notified again") }
	d := &directRun{acc: acc, lend: func(func()) (jsonrpc.Lease, bool) { return lease, true }}
	fd, tmpl, ok := d.Lend(func() {})
	if !ok || fd != 7 || !tmpl.Chunked {
		t.Fatalf("Lend = %d, %+v, %v", fd, tmpl, ok)
	}
	for _, text := range []string{"plain", "quote \" <b>&", "\u2028 é", "cut \xe2\x82"} {
		for _, state := range []runtime.CallState{runtime.StateNormal, runtime.StateWaiting} {
			note := &textNote{RequestID: "r-0a1b", State: stateName(int32(state)), Text: text, TokenID: 295}
			want, err := (&jsonrpc.Notification{Method: NotifyResult, Params: note}).AppendJSON([]byte("data: "))
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, "\n\n"...)
			got := jsonrpc.AppendString([]byte(tmpl.Head), note.State)
			got = jsonrpc.AppendString(append(got, `,"text":`...), text)
			got = append(append(got, `,"token_id":295`...), tmpl.Tail...)
			if string(got) != string(want) {
				t.Errorf("the worker writes\n%s\nthe supervisor\n%s", got, want)
			}
		}
	}
	// A token the worker wrote whole is kept and counted; one it wrote in part ends
	// the lease with its notification, for the transport to write the rest.
	d.Delivered(runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "a", TokenID: 1}}}, 90, true)
	d.Delivered(runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "b", TokenID: 2}}}, 10, false)
	if lease.wrote != 90 || !lease.returned || lease.written != 10 || lease.part == nil || lease.part.Params.(*textNote).Text != "b" {
		t.Errorf("lease told %+v", lease)
	}
	if got := string(acc.entries[0].text); got != "ab" {
		t.Errorf("the run's text is %q, want both tokens", got)
	}
}
