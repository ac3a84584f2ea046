package generation

import (
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

func tok(text string) runtime.Delivery {
	return runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: text, TokenID: 300}}}
}

func waiting(text string) runtime.Delivery {
	return runtime.Delivery{State: runtime.StateWaiting, Results: []runtime.Result{{Text: text, TokenID: 5}}}
}

// feed runs deliveries through o and returns what was given out piece by piece, the
// index of the delivery that asked to stop (-1 for none), and the result.
func feed(o *output, ds ...runtime.Delivery) ([]string, int, Result) {
	var pieces []string
	stopAt := -1
	for i, d := range ds {
		s, stop := o.add(d)
		if s != "" {
			pieces = append(pieces, s)
		}
		if stop && stopAt < 0 {
			stopAt = i
		}
	}
	return pieces, stopAt, o.finish(false)
}

func TestOutput(t *testing.T) {
	cases := []struct {
		name      string
		o         *output
		in        []runtime.Delivery
		pieces    []string
		stopAt    int
		rest      string
		finish    string
		toolNames []string
		toolArgs  []string
	}{
		{name: "plain", o: newOutput(nil, false, "<eos>", 0), in: []runtime.Delivery{tok("Hel"), tok("lo")},
			pieces: []string{"Hel", "lo"}, stopAt: -1, finish: "stop"},
		{name: "end of reply delivered as text is left out", o: newOutput(nil, false, "<eos>", 0), in: []runtime.Delivery{tok("Hi"), tok("<eo"), tok("s>")},
			pieces: []string{"Hi"}, stopAt: -1, finish: "stop"},
		{name: "held back text that was not a mark comes out", o: newOutput(nil, false, "<eos>", 0), in: []runtime.Delivery{tok("a<e"), tok("x")},
			pieces: []string{"a", "<ex"}, stopAt: -1, finish: "stop"},
		{name: "stop sequence across deliveries", o: newOutput([]string{"END"}, false, "", 0), in: []runtime.Delivery{tok("one E"), tok("ND two")},
			pieces: []string{"one "}, stopAt: 1, finish: "stop"},
		{name: "earliest of two stops", o: newOutput([]string{"b", "a"}, false, "", 0), in: []runtime.Delivery{tok("xxab")},
			pieces: []string{"xx"}, stopAt: 0, finish: "stop"},
		{name: "UTF-8 joined", o: newOutput(nil, false, "", 0), in: []runtime.Delivery{waiting("\xc3"), tok("\xa9!")},
			pieces: []string{"é!"}, stopAt: -1, finish: "stop"},
		{name: "server max tokens", o: newOutput(nil, false, "", 2), in: []runtime.Delivery{tok("a"), tok("b"), tok("c")},
			pieces: []string{"a", "b"}, stopAt: 1, finish: "length"},
		{name: "tool call", o: newOutput(nil, true, "<eos>", 0),
			in:     []runtime.Delivery{tok("Let me check.\n<tool"), tok("_call>\n{\"name\": \"f\", \"arguments\": {\"x\": [1, 2]}}\n</tool_call>")},
			pieces: []string{"Let me check.\n"}, stopAt: -1, finish: "tool_calls", toolNames: []string{"f"}, toolArgs: []string{`{"x": [1, 2]}`}},
		{name: "two tool calls, parameters and string arguments", o: newOutput(nil, true, "", 0),
			in:     []runtime.Delivery{tok("<tool_call>{\"name\": \"f\", \"parameters\": {}}</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": \"{\\\"y\\\":1}\"}</tool_call>")},
			stopAt: -1, finish: "tool_calls", toolNames: []string{"f", "g"}, toolArgs: []string{"{}", `{"y":1}`}},
		{name: "a broken tool call is content", o: newOutput(nil, true, "", 0), in: []runtime.Delivery{tok("<tool_call>{not json</tool_call>")},
			stopAt: -1, rest: "<tool_call>{not json</tool_call>", finish: "stop"},
		{name: "tool call text without tools is content", o: newOutput(nil, false, "", 0), in: []runtime.Delivery{tok("<tool_call>{\"name\": \"f\"}</tool_call>")},
			pieces: []string{"<tool_call>{\"name\": \"f\"}</tool_call>"}, stopAt: -1, finish: "stop"},
		{name: "the prompt's reasoning opening comes first, once", o: opened(newOutput(nil, false, "<eos>", 0), "<think>\n"),
			in:     []runtime.Delivery{tok("why"), tok("</think>"), tok("ok<eos>")},
			pieces: []string{"<think>\nwhy", "</think>", "ok"}, stopAt: -1, finish: "stop"},
		{name: "the opening in front of held back text", o: opened(newOutput(nil, false, "<eos>", 0), "<think>\n"),
			in:     []runtime.Delivery{tok("<e")},
			stopAt: -1, rest: "<think>\n<e", finish: "stop"},
		{name: "no opening before a reply that is a tool call alone", o: opened(newOutput(nil, true, "", 0), "<think>\n"),
			in:     []runtime.Delivery{tok("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>")},
			stopAt: -1, finish: "tool_calls", toolNames: []string{"f"}, toolArgs: []string{"{}"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pieces, stopAt, res := feed(c.o, c.in...)
			if strings.Join(pieces, "|") != strings.Join(c.pieces, "|") || stopAt != c.stopAt || res.Rest != c.rest || res.Finish != c.finish {
				t.Errorf("pieces %q stop at %d rest %q finish %q; want %q %d %q %q", pieces, stopAt, res.Rest, res.Finish, c.pieces, c.stopAt, c.rest, c.finish)
			}
			if len(res.ToolCalls) != len(c.toolNames) {
				t.Fatalf("tool calls %+v", res.ToolCalls)
			}
			for i, tc := range res.ToolCalls {
				if tc.Name != c.toolNames[i] || tc.Arguments != c.toolArgs[i] || len(tc.ID) != 29 || !strings.HasPrefix(tc.ID, "call_") {
					t.Errorf("call %d: %+v", i, tc)
				}
			}
		})
	}
	o := newOutput(nil, false, "", 0)
	o.add(tok("a"))
	if r := o.finish(true); r.Finish != "length" {
		t.Errorf("ran out: %q", r.Finish)
	}
}

// TestDeliveryQueue: the executor's pushes never block; a client further behind than
// the bound is cut off (its request cancelled) and gets nothing more.
func TestDeliveryQueue(t *testing.T) {
	cancelled := false
	q := &deliveryQueue{max: 200, wake: make(chan struct{}, 1), cancel: func() { cancelled = true }}
	q.push(tok("a"))
	q.push(tok("b")) // the wake signal is already pending: push does not wait
	if got := q.take(); len(got) != 2 || cancelled {
		t.Fatalf("took %d, cancelled %v", len(got), cancelled)
	}
	for range 5 {
		q.push(tok(strings.Repeat("x", 50)))
	}
	if !cancelled || !q.overflow || len(q.take()) != 1 {
		t.Errorf("overflow %v cancelled %v", q.overflow, cancelled)
	}
	q.push(tok("late"))
	if len(q.take()) != 0 {
		t.Error("a cut-off client still gets deliveries")
	}
}

func finished(prefill, generated int32) runtime.Delivery {
	return runtime.Delivery{State: runtime.StateFinish, Results: []runtime.Result{{TokenID: -1, Perf: runtime.PerfStat{PrefillTokens: prefill, GenerateTokens: generated}}}}
}

// TestUsage: completion_tokens is the runtime's count of generated tokens, except for
// a run the server cut short, whose abort lagged behind (the runtime went on
// generating tokens the client never got): then it counts the tokens up to the cut.
func TestUsage(t *testing.T) {
	cases := []struct {
		name             string
		o                *output
		in               []runtime.Delivery
		cached           int
		prompt, complete int
	}{
		{name: "ended by the model", o: newOutput(nil, false, "", 0), in: []runtime.Delivery{tok("a"), tok("b"), finished(10, 3)},
			prompt: 10, complete: 3},
		{name: "with cached positions", o: newOutput(nil, false, "", 0), in: []runtime.Delivery{tok("a"), finished(4, 1)}, cached: 6,
			prompt: 10, complete: 1},
		{name: "server max_tokens, the abort lagged", o: newOutput(nil, false, "", 2),
			in: []runtime.Delivery{tok("a"), tok("b"), tok("c"), tok("d"), tok("e"), finished(10, 5)}, prompt: 10, complete: 2},
		{name: "stop sequence, the abort lagged", o: newOutput([]string{"END"}, false, "", 0),
			in: []runtime.Delivery{tok("a"), tok("E"), tok("ND"), tok("x"), tok("y"), tok("z"), finished(10, 6)}, prompt: 10, complete: 3},
		{name: "cut short, the runtime counted fewer", o: newOutput(nil, false, "", 3),
			in: []runtime.Delivery{tok("a"), tok("b"), tok("c"), finished(10, 2)}, prompt: 10, complete: 2},
		{name: "no perf counters", o: newOutput(nil, false, "", 0), in: []runtime.Delivery{tok("a"), tok("b")}, complete: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			feed(c.o, c.in...)
			var out supervisor.Outcome
			if c.cached > 0 {
				out.Conversation = &supervisor.ConversationOutcome{Reused: true, CachedTokens: c.cached}
			}
			u := usage(c.o, out)
			if u.PromptTokens != c.prompt || u.CompletionTokens != c.complete || u.CachedTokens != c.cached {
				t.Errorf("usage %+v, want prompt %d (cached %d) completion %d", u, c.prompt, c.cached, c.complete)
			}
		})
	}
}

func opened(o *output, opening string) *output {
	o.opening = opening
	return o
}
