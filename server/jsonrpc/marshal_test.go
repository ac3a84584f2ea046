package jsonrpc

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestMarshal: responses written by appending are byte for byte what encoding/json
// writes, single or in a batch, with results (as the dispatcher encodes them), errors
// and unknown ids, and leave room for a line's end.
func TestMarshal(t *testing.T) {
	result, err := encodeResult(map[string]any{"text": "<a>&", "ids": []int{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	resps := []*Response{
		{ID: json.RawMessage(`1`), Result: result},
		{ID: json.RawMessage(`"x\"y"`), Result: nil},
		{ID: nil, Error: ErrParse.Withf("parse error: <bad>")},
		{ID: json.RawMessage(`-2.5e3`), Error: ErrBusy.Withf("busy").WithData(map[string]any{"limit": "max-inflight-bytes", "retry_after": 1})},
	}
	for _, r := range resps {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Marshal(r)
		if err != nil || !bytes.Equal(got, want) || cap(got)-len(got) < lineEnd {
			t.Errorf("got %s (cap %d, %v), want %s", got, cap(got), err, want)
		}
	}
	want, _ := json.Marshal(resps)
	if got, err := Marshal(resps); err != nil || !bytes.Equal(got, want) {
		t.Errorf("batch: got %s (%v), want %s", got, err, want)
	}
	note := &Notification{Method: "rkllm.result", Params: map[string]any{"a": 1}}
	want, _ = json.Marshal(note)
	if got, err := Marshal(note); err != nil || !bytes.Equal(got, want) {
		t.Errorf("notification: got %s, want %s", got, want)
	}
}
