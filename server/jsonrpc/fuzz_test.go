package jsonrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
)

// FuzzDecode feeds arbitrary messages to the dispatcher, with small limits so they are
// reached. Whatever the input: no panic, the answer is valid JSON, every request gets
// at most one response, and every error carries one of the protocol's codes.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"hi","count":2}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","id":"x","method":"nope"}]`,
		`{"jsonrpc":"2.0","ID":1,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"id":2,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"\ud800"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":[[[[[[[[1]]]]]]]]}}`,
		`[]`, `[1,2]`, `{}`, `null`, `"x"`, `{"jsonrpc":"2.0","id":1.5e300,"method":"echo"}`,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":{\"text\":\"\xff\"}}",
	} {
		f.Add([]byte(seed))
	}
	known := map[int64]bool{-32700: true, -32600: true, -32601: true, -32602: true, -32603: true, -32002: true, -32008: true}
	f.Fuzz(func(t *testing.T, msg []byte) {
		d, _ := newTestDispatcher(t)
		d.SetLimits(Limits{MaxDepth: 6, MaxStringBytes: 64, MaxArrayLen: 8, MaxBatch: 4})
		resps, batch := d.Handle(context.Background(), &Peer{Transport: "fuzz"}, msg, nil)
		out, err := EncodeResponses(resps, batch)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		if len(out) > 0 && !json.Valid(out) {
			t.Fatalf("answer is not JSON: %s", out)
		}
		if trimmed := bytes.TrimSpace(msg); len(trimmed) > 0 && trimmed[0] != '[' && len(resps) > 1 {
			t.Fatalf("%d responses to a single message", len(resps))
		}
		for _, r := range resps {
			if r.Error != nil && !known[r.Error.Code] {
				t.Fatalf("error code %d is not one the dispatcher gives: %s", r.Error.Code, out)
			}
			if (r.Error == nil) == (r.Result == nil) {
				t.Fatalf("a response needs exactly one of result and error: %s", out)
			}
		}
		if batch && len(resps) > 4 {
			t.Fatalf("%d responses to a batch of at most 4", len(resps))
		}
	})
}
