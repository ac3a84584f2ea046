package jsonrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

type echoParams struct {
	Text  string `json:"text"`
	Count int32  `json:"count"`
}

func newTestDispatcher(t *testing.T) (*Dispatcher, *recordingObserver) {
	t.Helper()
	obs := &recordingObserver{}
	d := NewDispatcher(logr.Discard(), obs)
	d.Register("echo", HandlerFunc(func(_ context.Context, c *Call) (any, error) {
		var p echoParams
		if err := c.DecodeParams(&p); err != nil {
			return nil, err
		}
		return p, nil
	}))
	d.Register("fail", HandlerFunc(func(context.Context, *Call) (any, error) {
		return nil, fmt.Errorf("wrapped: %w", ErrBusy.Withf("busy: queue full (16 waiting)"))
	}))
	d.Register("oops", HandlerFunc(func(context.Context, *Call) (any, error) {
		return nil, errors.New("disk on fire")
	}))
	d.Register("panic", HandlerFunc(func(context.Context, *Call) (any, error) {
		panic("boom")
	}))
	return d, obs
}

type recordingObserver struct{ codes []int64 }

func (r *recordingObserver) ObserveRequest(_ string, code int64, _ time.Duration) {
	r.codes = append(r.codes, code)
}

func TestHandle(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		want string // exact JSON of the responses ("" for none)
	}{
		{"single", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"hi","count":2}}`,
			`{"jsonrpc":"2.0","id":1,"result":{"text":"hi","count":2}}`},
		{"string id", `{"jsonrpc":"2.0","id":"a-1","method":"echo"}`,
			`{"jsonrpc":"2.0","id":"a-1","result":{"text":"","count":0}}`},
		{"null id is a request", `{"jsonrpc":"2.0","id":null,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":null,"result":{"text":"","count":0}}`},
		{"notification", `{"jsonrpc":"2.0","method":"echo"}`, ``},
		{"parse error", `{"jsonrpc":"2.0","id":1,"method":"echo"`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error: the message is not valid JSON"}}`},
		{"empty", ` `,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty message; send a JSON-RPC 2.0 request object or a batch array"}}`},
		{"empty batch", `[]`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty batch; a batch holds at least one request"}}`},
		{"scalar", `42`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: a message must be a JSON object or an array of them"}}`},
		{"wrong version", `{"jsonrpc":"1.0","id":7,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: member \"jsonrpc\" must be exactly \"2.0\""}}`},
		{"missing method", `{"jsonrpc":"2.0","id":7}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: member \"method\" must be a non-empty string"}}`},
		{"object id", `{"jsonrpc":"2.0","id":{},"method":"echo"}`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: member \"id\" must be a string, a number or null"}}`},
		{"scalar params", `{"jsonrpc":"2.0","id":7,"method":"echo","params":3}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: member \"params\" must be an object or an array"}}`},
		{"unknown member", `{"jsonrpc":"2.0","id":7,"method":"echo","extra":1}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: unknown member \"extra\"; a request has exactly the members jsonrpc, method, params and id, each once (names are case-sensitive)"}}`},
		{"member names are case-sensitive", `{"jsonrpc":"2.0","ID":7,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: unknown member \"ID\"; a request has exactly the members jsonrpc, method, params and id, each once (names are case-sensitive)"}}`},
		{"duplicate member", `{"jsonrpc":"2.0","id":7,"method":"echo","method":"oops"}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: duplicate member \"method\"; a request has exactly the members jsonrpc, method, params and id, each once (names are case-sensitive)"}}`},
		{"version as a number", `{"jsonrpc":2.0,"id":7,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: member \"jsonrpc\" must be exactly \"2.0\""}}`},
		{"version with a space", `{"jsonrpc":"2.0 ","id":7,"method":"echo"}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32600,"message":"invalid request: member \"jsonrpc\" must be exactly \"2.0\""}}`},
		{"invalid UTF-8", "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"echo\",\"params\":{\"text\":\"\xff\xfe\"}}",
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error: invalid UTF-8 at byte 58; JSON text must be UTF-8"}}`},
		{"lone surrogate", `{"jsonrpc":"2.0","id":7,"method":"echo","params":{"text":"\ud800x"}}`,
			`{"jsonrpc":"2.0","id":7,"error":{"code":-32700,"message":"parse error: a \\u escape of a high surrogate without its low half at byte 58; JSON text must be UTF-8"}}`},
		{"surrogate pair", `{"jsonrpc":"2.0","id":7,"method":"echo","params":{"text":"\ud83d\ude00"}}`,
			`{"jsonrpc":"2.0","id":7,"result":{"text":"😀","count":0}}`},
		{"unknown method", `{"jsonrpc":"2.0","id":2,"method":"nope"}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not found: \"nope\""}}`},
		{"positional params", `{"jsonrpc":"2.0","id":2,"method":"echo","params":["x"]}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: echo takes its params by name (a JSON object), not by position"}}`},
		{"wrong param type", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"count":"x"}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: count: must be an integer in range of int32, not a JSON string","data":{"field":"count","rule":"must be an integer in range of int32, not a JSON string"}}}`},
		{"param out of range", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"count":3000000000}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: count: must be an integer in range of int32, not a JSON number 3000000000","data":{"field":"count","rule":"must be an integer in range of int32, not a JSON number 3000000000"}}}`},
		{"unknown param", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"txt":"x"}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: txt: unknown member (names are case-sensitive); check the spelling against docs/jsonrpc.md","data":{"field":"txt","rule":"unknown member (names are case-sensitive); check the spelling against docs/jsonrpc.md"}}}`},
		{"param names are case-sensitive", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"Text":"x"}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: Text: unknown member (names are case-sensitive); check the spelling against docs/jsonrpc.md","data":{"field":"Text","rule":"unknown member (names are case-sensitive); check the spelling against docs/jsonrpc.md"}}}`},
		{"duplicate param", `{"jsonrpc":"2.0","id":2,"method":"echo","params":{"text":"x","text":"y"}}`,
			`{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"invalid params: text: is given more than once","data":{"field":"text","rule":"is given more than once"}}}`},
		{"server error keeps its code", `{"jsonrpc":"2.0","id":3,"method":"fail"}`,
			`{"jsonrpc":"2.0","id":3,"error":{"code":-32002,"message":"busy: queue full (16 waiting)"}}`},
		{"plain error is internal", `{"jsonrpc":"2.0","id":3,"method":"oops"}`,
			`{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"internal error: disk on fire"}}`},
		{"panic is recovered", `{"jsonrpc":"2.0","id":3,"method":"panic"}`,
			`{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"internal error: the handler of panic failed; see the server log"}}`},
		{"batch mixed", `[{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"a"}},{"jsonrpc":"2.0","method":"echo"},{"foo":1},{"jsonrpc":"2.0","id":2,"method":"nope"}]`,
			`[{"jsonrpc":"2.0","id":1,"result":{"text":"a","count":0}},{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: unknown member \"foo\"; a request has exactly the members jsonrpc, method, params and id, each once (names are case-sensitive)"}},{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"method not found: \"nope\""}}]`},
		{"duplicate ids in a batch", `[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","id":2,"method":"echo"},{"jsonrpc":"2.0","id":1.0,"method":"echo"}]`,
			`[{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"invalid request: id 1 is used by 2 requests of this batch; give each request its own id"}},{"jsonrpc":"2.0","id":2,"result":{"text":"","count":0}},{"jsonrpc":"2.0","id":1.0,"error":{"code":-32600,"message":"invalid request: id 1.0 is used by 2 requests of this batch; give each request its own id"}}]`},
		{"batch of notifications", `[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"}]`, ``},
		{"batch of one", `[{"jsonrpc":"2.0","id":1,"method":"echo"}]`,
			`[{"jsonrpc":"2.0","id":1,"result":{"text":"","count":0}}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := newTestDispatcher(t)
			resps, batch := d.Handle(context.Background(), &Peer{Transport: "test"}, []byte(tt.msg), nil)
			got, err := EncodeResponses(resps, batch)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("responses\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

// TestLimits: each bound is checked before decoding, answered -32008 naming the limit
// and where it was exceeded (with the request's id when it came first), and inside a
// batch only the element over a bound fails.
func TestLimits(t *testing.T) {
	lim := Limits{MaxDepth: 4, MaxStringBytes: 16, MaxArrayLen: 3, MaxBatch: 3}
	tests := []struct {
		name string
		msg  string
		want string
	}{
		{"within every limit", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"0123456789abcdef"}}`,
			`{"jsonrpc":"2.0","id":1,"result":{"text":"0123456789abcdef","count":0}}`},
		{"string too long", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"0123456789abcdefg"}}`,
			`{"jsonrpc":"2.0","id":1,"error":{"code":-32008,"message":"request too large: a string's length at params.text exceeds the limit of 16 (--max-string-bytes)","data":{"field":"params.text","limit":"max-string-bytes","max":16}}}`},
		{"escapes count as sent", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"\u0041\u0041\u0041"}}`,
			`{"jsonrpc":"2.0","id":1,"error":{"code":-32008,"message":"request too large: a string's length (18 bytes) at params.text exceeds the limit of 16 (--max-string-bytes)","data":{"field":"params.text","limit":"max-string-bytes","max":16}}}`},
		{"too deep", `{"jsonrpc":"2.0","id":"d","method":"echo","params":{"a":{"b":{"c":{}}}}}`,
			`{"jsonrpc":"2.0","id":"d","error":{"code":-32008,"message":"request too large: nesting of objects and arrays at params.a.b.c exceeds the limit of 4 (--max-json-depth)","data":{"field":"params.a.b.c","limit":"max-json-depth","max":4}}}`},
		{"id after the violation is not known", `{"jsonrpc":"2.0","method":"echo","params":{"a":{"b":{"c":{}}}},"id":"d"}`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32008,"message":"request too large: nesting of objects and arrays at params.a.b.c exceeds the limit of 4 (--max-json-depth)","data":{"field":"params.a.b.c","limit":"max-json-depth","max":4}}}`},
		{"array too long", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"ids":[1,2,3,4]}}`,
			`{"jsonrpc":"2.0","id":1,"error":{"code":-32008,"message":"request too large: an array's length at params.ids exceeds the limit of 3 (--max-array-len)","data":{"field":"params.ids","limit":"max-array-len","max":3}}}`},
		{"batch too long", `[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"}]`,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32008,"message":"request too large: the number of requests in a batch exceeds the limit of 3 (--max-batch)","data":{"limit":"max-batch","max":3}}}`},
		{"one element over a limit", `[{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"0123456789abcdefg"}},{"jsonrpc":"2.0","id":2,"method":"echo","params":{"text":"ok"}}]`,
			`[{"jsonrpc":"2.0","id":1,"error":{"code":-32008,"message":"request too large: a string's length at [0].params.text exceeds the limit of 16 (--max-string-bytes)","data":{"field":"[0].params.text","limit":"max-string-bytes","max":16}}},{"jsonrpc":"2.0","id":2,"result":{"text":"ok","count":0}}]`},
		{"deep element skipped whole", `[{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":[[["x\"]}"]]]}},{"jsonrpc":"2.0","id":2,"method":"echo"}]`,
			`[{"jsonrpc":"2.0","id":1,"error":{"code":-32008,"message":"request too large: nesting of objects and arrays at [0].params.a[0] exceeds the limit of 4 (--max-json-depth)","data":{"field":"[0].params.a[0]","limit":"max-json-depth","max":4}}},{"jsonrpc":"2.0","id":2,"result":{"text":"","count":0}}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := newTestDispatcher(t)
			d.SetLimits(lim)
			resps, batch := d.Handle(context.Background(), &Peer{Transport: "test"}, []byte(tt.msg), nil)
			got, err := EncodeResponses(resps, batch)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("responses\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func TestDrainAnswersShuttingDown(t *testing.T) {
	d, obs := newTestDispatcher(t)
	d.Drain()
	resps, _ := d.Handle(context.Background(), &Peer{}, []byte(`{"jsonrpc":"2.0","id":1,"method":"echo"}`), nil)
	if len(resps) != 1 || !errors.Is(resps[0].Error, ErrShuttingDown) {
		t.Fatalf("got %+v, want one -32009 response", resps)
	}
	if len(obs.codes) != 1 || obs.codes[0] != -32009 {
		t.Errorf("observed codes %v, want [-32009]", obs.codes)
	}
}

func TestAdmitBeforeCompletion(t *testing.T) {
	d := NewDispatcher(logr.Discard(), nil)
	release := make(chan struct{})
	d.Register("slow", HandlerFunc(func(_ context.Context, c *Call) (any, error) {
		c.Admit()
		<-release
		return "done", nil
	}))
	admitted := make(chan struct{})
	done := make(chan []*Response)
	go func() {
		resps, _ := d.Handle(context.Background(), &Peer{}, []byte(`{"jsonrpc":"2.0","id":1,"method":"slow"}`), func() { close(admitted) })
		done <- resps
	}()
	select {
	case <-admitted:
	case <-done:
		t.Fatal("handler finished before it was admitted")
	}
	close(release)
	resps := <-done
	if string(resps[0].Result) != `"done"` {
		t.Errorf("result %s", resps[0].Result)
	}
}

func TestNotifyWithoutTransport(t *testing.T) {
	c := &Call{Request: &Request{Method: "x"}, Peer: &Peer{}}
	if err := c.Notify("m", nil); !errors.Is(err, ErrCannotNotify) {
		t.Fatalf("Notify = %v, want ErrCannotNotify", err)
	}
	var got []byte
	c.Peer.Notify = func(n *Notification) error {
		var err error
		got, err = json.Marshal(n)
		return err
	}
	if err := c.Notify("rkllm.result", map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if want := `{"jsonrpc":"2.0","method":"rkllm.result","params":{"a":1}}`; string(got) != want {
		t.Errorf("notification %s, want %s", got, want)
	}
}

func TestErrorIsByCode(t *testing.T) {
	err := fmt.Errorf("ctx: %w", ErrTimeout.Withf("timed out: no token for 1s").WithData(map[string]int{"tokens": 3}))
	if !errors.Is(err, ErrTimeout) {
		t.Error("errors.Is by code failed")
	}
	if errors.Is(err, ErrAborted) {
		t.Error("errors.Is matched another code")
	}
	if ErrTimeout.Message != "timed out" {
		t.Error("Withf changed the named value")
	}
}

func TestAfterReplyRunsAfterTheWrite(t *testing.T) {
	d := NewDispatcher(logr.Discard(), nil)
	var events []string
	d.Register("later", HandlerFunc(func(_ context.Context, c *Call) (any, error) {
		c.AfterReply(func() { events = append(events, "hook") })
		return "handle", nil
	}))
	d.Serve(context.Background(), &Peer{}, []byte(`{"jsonrpc":"2.0","id":1,"method":"later"}`), nil, func(resps []*Response, _ bool) {
		events = append(events, "write "+string(resps[0].Result))
	})
	if fmt.Sprint(events) != `[write "handle" hook]` {
		t.Errorf("events %v", events)
	}
	// With nothing to write (a notification) the hooks still run.
	events = nil
	d.Serve(context.Background(), &Peer{}, []byte(`{"jsonrpc":"2.0","method":"later"}`), nil, func([]*Response, bool) {
		events = append(events, "write")
	})
	if fmt.Sprint(events) != `[hook]` {
		t.Errorf("events for a notification %v", events)
	}
}

// TestSameIDs: ids a client cannot tell apart are one id (numbers by the value of
// the double they decode into), ids it can are not.
func TestSameIDs(t *testing.T) {
	same := [][2]string{
		{`0`, `-0`}, {`0`, `0.0e5`}, {`1`, `1.0`}, {`1`, `1e0`}, {`1`, `10e-1`},
		{`1e999999`, `2e999999`}, {`1e400`, `1e999999`}, {`-1e999999`, `-5e400`},
		{`1e-999999`, `0`}, {`9007199254740993`, `9007199254740992`},
		{`"a"`, `"\u0061"`}, {`null`, ` null`},
	}
	different := [][2]string{
		{`1`, `"1"`}, {`1e999999`, `-1e999999`}, {`1`, `1.0000001`}, {`0`, `null`}, {`"a"`, `"A"`},
	}
	for _, p := range same {
		if idKey(json.RawMessage(p[0])) != idKey(json.RawMessage(p[1])) {
			t.Errorf("ids %s and %s are not the same id", p[0], p[1])
		}
	}
	for _, p := range different {
		if idKey(json.RawMessage(p[0])) == idKey(json.RawMessage(p[1])) {
			t.Errorf("ids %s and %s are the same id", p[0], p[1])
		}
	}
}
