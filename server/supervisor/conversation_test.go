package supervisor

import (
	"context"
	"errors"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// converse runs one conversation request and returns what it delivered and how it was
// fed.
func converse(t *testing.T, s *Supervisor, prompt string, tools *workerproto.SetFunctionTools) (string, *ConversationOutcome) {
	t.Helper()
	var text string
	tk, err := s.Enqueue(context.Background(), Request{Owner: "openai", ID: "c", OnDelivery: func(d runtime.Delivery) {
		if len(d.Results) > 0 {
			text += d.Results[0].Text
		}
	}, Conversation: &Conversation{Prompt: prompt, Tools: tools, EndOfReply: "<eos>", Reuse: true}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := wait(t, tk)
	if err != nil || out.Conversation == nil {
		t.Fatalf("conversation: %+v %v", out, err)
	}
	return text, out.Conversation
}

// TestConversationHandleState checks, with the fake runtime (which tags its first
// token with the template's system prompt and whether tools are set): a conversation
// runs with the template off and its own tools; its follow-up reuses the cache; a
// JSON-RPC run gets the configured fallback template back and no tools, and makes the
// next conversation start over; so does a worker restart.
func TestConversationHandleState(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.Model.FallbackTemplate = &workerproto.SetChatTemplate{SystemPrompt: "FB", PromptPrefix: "<u>", PromptPostfix: "<a>"}
	s := start(t, o)
	waitReady(t, s)
	tools := &workerproto.SetFunctionTools{SystemPrompt: "S", Tools: `[{"type":"function"}]`, ToolResponseStr: "tool_response"}

	p1 := "<u>hi</u><a>"
	r1, c1 := converse(t, s, p1, tools)
	if r1 != "[tools=yes] w0 w1 w2 " || c1.Reused || c1.CachedTokens != 0 {
		t.Errorf("first turn %q %+v", r1, c1)
	}
	// The fake stopped at max_new_tokens (3): no end-of-reply token in the cache.
	p2 := p1 + r1 + "<u>more</u><a>"
	r2, c2 := converse(t, s, p2, tools)
	if !c2.Reused || c2.CachedTokens <= 0 || r2 != "[tools=yes] w0 w1 w2 " {
		t.Errorf("follow-up %q %+v, want the cache reused", r2, c2)
	}
	// Other tools: another system prompt, so the cache is not reused.
	_, c := converse(t, s, p2+r2+"<u>x</u><a>", &workerproto.SetFunctionTools{SystemPrompt: "T", Tools: `[{"type":"function"}]`})
	if c.Reused {
		t.Error("a conversation with other tools reused the cache")
	}

	rpc, err := startRun(context.Background(), t, s, "rpc", "r", "x", runtime.InferParams{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(t, rpc.t); err != nil {
		t.Fatal(err)
	}
	if rpc.Text() != "[sys=FB] w0 w1 w2 " {
		t.Errorf("JSON-RPC run after conversations %q: want the fallback template and no tools", rpc.Text())
	}
	p3 := "<u>a</u><a>"
	r3, c3 := converse(t, s, p3, nil)
	if c3.Reused || r3 != "w0 w1 w2 " {
		t.Errorf("conversation after a JSON-RPC run %q %+v", r3, c3)
	}
	p4 := p3 + r3 + "<u>b</u><a>"
	if _, c4 := converse(t, s, p4, nil); !c4.Reused {
		t.Errorf("follow-up without tools %+v", c4)
	}

	crash, _ := startRun(context.Background(), t, s, "rpc", "crash", "!crash@1", runtime.InferParams{})
	if _, err := wait(t, crash.t); !errors.Is(err, ErrCrashed) {
		t.Fatalf("crash: %v", err)
	}
	waitReady(t, s)
	if _, c5 := converse(t, s, p4+"w0 w1 w2 <u>c</u><a>", nil); c5.Reused {
		t.Error("a conversation reused the cache of a worker that died")
	}
}

// TestConversationStartsOverInItsRun: a conversation that cannot reuse the cache runs
// on a cleared one (the worker clears it in the run's own round trip) and the cache's
// size after the run comes back with the run: a follow-up reuses exactly what the new
// conversation left, nothing of the one before.
func TestConversationStartsOverInItsRun(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil))
	waitReady(t, s)
	cachedAfter := func(first string) int {
		p1 := "<u>" + first + "</u><a>"
		r1, c1 := converse(t, s, p1, nil)
		if c1.Reused {
			t.Fatalf("conversation %q reused the cache of another", first)
		}
		_, c2 := converse(t, s, p1+r1+"<u>more</u><a>", nil)
		if !c2.Reused || c2.CachedTokens <= 0 {
			t.Fatalf("follow-up of %q: %+v, want the cache reused", first, c2)
		}
		return c2.CachedTokens
	}
	a := cachedAfter("a")
	if b := cachedAfter("b"); b != a {
		t.Errorf("a follow-up reused %d cache positions after starting over, want %d: the cache was not cleared, or its size not read after the run", b, a)
	}
	// A JSON-RPC run that keeps its history starts on a cache without the
	// conversation: the fake holds its prompt token and 3 generated tokens.
	rpc, err := startRun(context.Background(), t, s, "rpc", "r", "x", runtime.InferParams{KeepHistory: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(t, rpc.t); err != nil {
		t.Fatal(err)
	}
	tk, err := s.Enqueue(context.Background(), Request{Owner: "rpc", Msg: &workerproto.GetKVCacheSize{}})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := wait(t, tk); err != nil || len(out.CacheSizes) != 1 || out.CacheSizes[0] != 4 {
		t.Errorf("cache after a JSON-RPC run that followed a conversation: %v %v, want [4]", out.CacheSizes, err)
	}
}
