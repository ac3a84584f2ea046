package workerproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

func sampleMessages() []Message {
	param := runtime.Param{
		ModelPath: "/models/m.rkllm", MaxContextLen: 4096, MaxNewTokens: -1, TopK: 40, NKeep: -1,
		TopP: 0.9, Temperature: 0.8, RepeatPenalty: 1.1, FrequencyPenalty: 0.25, PresencePenalty: -0.5,
		Mirostat: 2, MirostatTau: 5, MirostatEta: 0.1, SkipSpecialToken: true, IgnoreEOSToken: true,
		ImgStart: "<img>", ImgEnd: "</img>", ImgContent: "<pad>",
		Extend: runtime.ExtendParam{BaseDomainID: 3, EmbedFlash: 1, EnabledCPUsNum: 4, EnabledCPUsMask: 0xF0, NBatch: 1, UseCrossAttn: 1},
	}
	return []Message{
		&Hello{ABI: runtime.ABI13, PID: 4242, Library: "/lib/librkllmrt.so", Simulator: "sim 1.0", Default: param},
		&Init{Param: param}, &Init{Param: param, EmbedWidth: 2048, VocabSize: 151936},
		&Destroy{}, &Abort{Run: 7}, &IsRunning{}, &Ping{}, &ReleasePromptCache{}, &GetKVCacheSize{},
		&Run{
			Inputs: []runtime.Input{
				{Role: "user", EnableThinking: true, Type: runtime.InputPrompt, Prompt: "héllo, 世界"},
				{Type: runtime.InputToken, TokenIDs: []int32{1, -2, math.MaxInt32, math.MinInt32}},
				{Type: runtime.InputEmbed, Embed: []float32{0.1, float32(math.Inf(-1)), -0, 3.4e38}, NTokens: 2},
				{Role: "tool", Type: runtime.InputMultimodal, Multimodal: runtime.MultimodalInput{
					Prompt: "<image><video>", ImageEmbed: []float32{1, 2, 3}, NImageTokens: 3, NImage: 1, ImageWidth: 392, ImageHeight: 392,
					ImageStart: "<s>", ImageEnd: "</s>", ImageContent: "<c>", VideoEmbed: []float32{4}, NFrameTokens: 1,
					NFramePerVideo: 1, NVideo: 1, VideoStart: "<v>", VideoEnd: "</v>", VideoContent: "<vc>", FrameWidth: 2, FrameHeight: 3,
				}},
			},
			Infer: runtime.InferParams{
				Mode: runtime.InferGetLogits, LoraAdapterName: "chat",
				PromptCache: &runtime.PromptCacheParams{Save: true, Path: "/models/cache.bin"},
				Sampling:    &runtime.SamplingParams{TopK: 1, TopP: 0.5, Temperature: 0.1, RepeatPenalty: 1, FrequencyPenalty: 0.2, PresencePenalty: 0.3, Mirostat: 1, MirostatTau: 4, MirostatEta: 0.2},
				KeepHistory: true, MaxNewTokens: 64,
			},
			ClearKVCache: true, ReportKVCacheSize: true,
		},
		&Run{Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: ""}}},
		&LoadLora{Adapter: runtime.LoraAdapter{Path: "/models/a.lora", Name: "a", Scale: 0.75}},
		&LoadPromptCache{Path: "/models/c.bin"},
		&ClearKVCache{KeepSystemPrompt: true},
		&ClearKVCache{StartPos: []int32{0, 4}, EndPos: []int32{8, 12}},
		&ClearKVCache{StartPos: []int32{}, EndPos: []int32{}},
		&SetChatTemplate{SystemPrompt: "sys", PromptPrefix: "<|user|>", PromptPostfix: "<|assistant|>"},
		&SetFunctionTools{SystemPrompt: "tools", Tools: `[{"type":"function"}]`, ToolResponseStr: "tool_response"},
		&SetCrossAttnParams{Params: runtime.CrossAttnParams{EncoderKCache: []float32{1}, EncoderVCache: []float32{2}, EncoderMask: []float32{0, -1}, EncoderPos: []int32{0, 1}, NumTokens: 2}},
		&Delivery{Delivery: runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "é", TokenID: 17}}}},
		&Delivery{Delivery: runtime.Delivery{State: runtime.StateWaiting, Results: []runtime.Result{{Text: "\xe6", TokenID: 3}}}, Direct: true, Written: 93, Whole: true, Gap: 1500 * time.Microsecond},
		&Delivery{Delivery: runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "x"}}}, Direct: true, Written: 7},
		&Run{Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: "p"}}, Direct: &Direct{Socket: 4, Head: `{"a":`, Tail: "}}\n", Chunked: true}},
		&Delivery{Delivery: runtime.Delivery{State: runtime.StateFinish, Results: []runtime.Result{
			{TokenID: -1, HiddenStates: []float32{0.5, -0.25}, EmbdSize: 2, Logits: []float32{1e-30}, VocabSize: 1, NumTokens: 1,
				Perf: runtime.PerfStat{PrefillTimeMs: 12.5, PrefillTokens: 7, GenerateTimeMs: 100.25, GenerateTokens: 9, MemoryUsageMB: 512}},
			{Text: "b"},
		}}},
		&Reply{},
		&Reply{Running: true},
		&Reply{CacheSizes: []int32{17, 0}},
		&Reply{Err: &runtime.UnsupportedError{Feature: "sampling_params", ABI: runtime.ABI12}},
		&Reply{Err: &RemoteError{Message: "cannot open library"}},
		&Reply{Err: ErrWorkerBusy},
		&Reply{Err: &runtime.SymbolError{Path: "/usr/lib/librkllmrt.so", Symbol: "rkllm_load_lora"}},
		&Reply{Err: runtime.ErrBusy},
		&Reply{Err: runtime.ErrDestroyed},
		&Reply{Err: &ResultTooLargeError{Field: "logits", Size: 1 << 30, Limit: 256 << 20}},
		&Reply{EmbedWidth: 1536, VocabSize: 32000},
		&Reply{Err: &runtime.InputError{Input: 2, Field: "embed_input.embed", Reason: "holds 3 floats", NoWidth: true}},
		&Reply{Err: &runtime.InputError{Input: -1, Field: "token_input.input_ids", Reason: "cannot be checked", NoVocab: true}},
		&Reply{Err: &runtime.InputError{Input: -1, Field: "start_pos", Reason: "holds 3 positions"}},
	}
}

// TestSentinelsKeepTheirContext: the runtime's sentinel errors cross the wire as
// themselves (errors.Is holds) with the message they had in the worker.
func TestSentinelsKeepTheirContext(t *testing.T) {
	for _, want := range []error{runtime.ErrBusy, runtime.ErrDestroyed, runtime.ErrRunFailed} {
		sent := &Reply{Err: fmt.Errorf("run: %w", want)}
		got, err := Decode(sent.Op(), Encode(sent))
		if err != nil {
			t.Fatal(err)
		}
		gotErr := got.(*Reply).Err
		if !errors.Is(gotErr, want) || gotErr.Error() != sent.Err.Error() {
			t.Errorf("%v came back as %v", sent.Err, gotErr)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		got, err := Decode(m.Op(), Encode(m))
		if err != nil {
			t.Fatalf("%s: %v", m.Op(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s round trip\n got: %#v\nwant: %#v", m.Op(), got, m)
		}
	}
}

func TestReplyKeepsTypedErrors(t *testing.T) {
	m := &Reply{Err: &runtime.CallError{Func: "rkllm_init", Code: -1}}
	got, err := Decode(OpReply, Encode(m))
	if err != nil {
		t.Fatal(err)
	}
	var ce *runtime.CallError
	if !errors.As(got.(*Reply).Err, &ce) || ce.Func != "rkllm_init" || ce.Code != -1 {
		t.Fatalf("error %v lost its CallError", got.(*Reply).Err)
	}
	m = &Reply{Err: &runtime.UnsupportedError{Feature: "ignore_eos_token", ABI: runtime.ABI12}}
	got, _ = Decode(OpReply, Encode(m))
	if !errors.Is(got.(*Reply).Err, runtime.ErrNotSupported) {
		t.Fatalf("error %v does not wrap ErrNotSupported", got.(*Reply).Err)
	}
}

func TestDecodeRejectsDamage(t *testing.T) {
	for _, m := range sampleMessages() {
		b := Encode(m)
		for cut := 0; cut < len(b); cut++ {
			if _, err := Decode(m.Op(), b[:cut]); err == nil {
				t.Fatalf("%s truncated to %d of %d bytes decoded without error", m.Op(), cut, len(b))
			}
		}
		if _, err := Decode(m.Op(), append(b, 0)); err == nil {
			t.Fatalf("%s with a trailing byte decoded without error", m.Op())
		}
	}
	// A huge claimed length must fail without allocating it.
	if _, err := Decode(OpLoadPromptCache, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}); err == nil {
		t.Fatal("hostile length decoded")
	}
	if _, err := Decode(Op(200), nil); err == nil {
		t.Fatal("unknown op decoded")
	}
}

func TestFrameLimit(t *testing.T) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	w := NewConn(a, 1<<20)
	r := NewConn(b, 64)
	if err := NewConn(a, 16).Send(1, &LoadPromptCache{Path: "/a/very/long/path/that/does/not/fit"}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized write = %v, want ErrFrameTooLarge", err)
	}
	go func() { _ = w.Send(1, &LoadPromptCache{Path: string(make([]byte, 100))}) }()
	if _, err := r.ReadFrame(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized read = %v, want ErrFrameTooLarge", err)
	}
}

// fakeWorker answers requests on the other end of a pipe the way the worker does.
func fakeWorker(t *testing.T, conn *Conn) {
	t.Helper()
	if err := conn.Send(0, &Hello{ABI: runtime.ABI12, PID: 1}); err != nil {
		t.Error(err)
		return
	}
	for {
		id, m, err := conn.Receive()
		if err != nil {
			return
		}
		switch m.(type) {
		case *Run:
			for _, text := range []string{"a", "b"} {
				_ = conn.Send(id, &Delivery{Delivery: runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: text}}}})
			}
			_ = conn.Send(id, &Reply{})
		case *IsRunning:
			_ = conn.Send(id, &Reply{Running: true})
		case *Destroy:
			_ = conn.Close()
			return
		}
	}
}

func TestClient(t *testing.T) {
	a, b := net.Pipe()
	go fakeWorker(t, NewConn(b, 0))
	c := NewClient(NewConn(a, 0), ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := c.Hello(ctx)
	if err != nil || h.ABI != runtime.ABI12 {
		t.Fatalf("hello %+v, %v", h, err)
	}
	var texts []string
	p, err := c.Start(&Run{Inputs: []runtime.Input{{Prompt: "x"}}}, func(d *Delivery) { texts = append(texts, d.Results[0].Text) })
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if r, err := p.Result(); err != nil || r.Err != nil {
		t.Fatalf("run reply %+v, %v", r, err)
	}
	if !reflect.DeepEqual(texts, []string{"a", "b"}) {
		t.Errorf("deliveries %q", texts)
	}
	r, err := c.Call(ctx, &IsRunning{})
	if err != nil || !r.Running {
		t.Fatalf("is_running %+v, %v", r, err)
	}
	// The worker closes on Destroy: pending and later calls fail with ErrClosed.
	p, err = c.Start(&Destroy{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if _, err := p.Result(); !errors.Is(err, ErrClosed) || !errors.Is(err, io.EOF) {
		t.Fatalf("pending after close = %v, want ErrClosed wrapping EOF", err)
	}
	<-c.Done()
	if _, err := c.Start(&IsRunning{}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("start after close = %v", err)
	}
}

// TestDeliverySize: the size a delivery is checked against before it is encoded is the
// size of its encoding.
func TestDeliverySize(t *testing.T) {
	for _, m := range sampleMessages() {
		if d, ok := m.(*Delivery); ok {
			if got, want := d.size(), len(Encode(d)); got != want {
				t.Errorf("size %d, encoded %d bytes: %+v", got, want, d)
			}
		}
	}
	big := &Delivery{Delivery: runtime.Delivery{Results: []runtime.Result{{Text: string(make([]byte, 200)), HiddenStates: make([]float32, 40000), Logits: make([]float32, 300)}}}}
	if got, want := big.size(), len(Encode(big)); got != want {
		t.Errorf("size %d, encoded %d bytes", got, want)
	}
}

// TestOversizedDeliveryRefused: Send refuses a delivery over the frame limit with the
// sizes, and the connection stays usable.
func TestOversizedDeliveryRefused(t *testing.T) {
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	w, r := NewConn(a, 1024), NewConn(b, 1024)
	big := &Delivery{Delivery: runtime.Delivery{Results: []runtime.Result{{HiddenStates: make([]float32, 300), EmbdSize: 4, NumTokens: 75}}}}
	err := w.Send(7, big)
	var fe *FrameTooLargeError
	if !errors.As(err, &fe) || !errors.Is(err, ErrFrameTooLarge) || fe.Limit != 1024 || fe.Size != headerSize+big.size() || fe.Op != OpDelivery {
		t.Fatalf("oversized delivery: %v (%+v)", err, fe)
	}
	if big.Fields() != "last_hidden_layer" {
		t.Errorf("fields %q", big.Fields())
	}
	go func() { _ = w.Send(8, &Reply{}) }()
	if id, m, err := r.Receive(); err != nil || id != 8 || m.Op() != OpReply {
		t.Fatalf("next frame: %d %v %v", id, m, err)
	}
}

// TestClientWriteTimeout: a worker that does not read its socket cannot block Start;
// the connection ends with ErrWriteTimeout once a request waited for the write timeout.
func TestClientWriteTimeout(t *testing.T) {
	a, b := net.Pipe() // b is never read: a stopped worker
	t.Cleanup(func() { _ = b.Close() })
	c := NewClient(NewConn(a, 0), ClientOptions{WriteTimeout: 50 * time.Millisecond})
	p, err := c.Start(&Run{Inputs: []runtime.Input{{Prompt: string(make([]byte, 1<<20))}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not give up on a worker that does not read")
	}
	if err := c.Err(); !errors.Is(err, ErrWriteTimeout) || !errors.Is(err, ErrClosed) {
		t.Fatalf("client error %v, want ErrWriteTimeout", err)
	}
	<-p.Done()
	if _, err := p.Result(); !errors.Is(err, ErrWriteTimeout) {
		t.Errorf("pending request: %v", err)
	}
	if _, err := c.Start(&Abort{}, nil); !errors.Is(err, ErrWriteTimeout) {
		t.Errorf("request after the timeout: %v", err)
	}
}
