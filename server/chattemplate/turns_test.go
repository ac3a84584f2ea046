package chattemplate

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func msgs(pairs ...string) []Message {
	out := make([]Message, 0, len(pairs)/2)
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Message{Role: pairs[i], Content: pairs[i+1]})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// TestPresets pins every preset's rendering of a short conversation.
func TestPresets(t *testing.T) {
	conv := msgs("system", "Be brief.", "user", " Hi ", "assistant", "Hello.", "user", "Bye")
	cases := map[string]string{
		"chatml":            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
		"minicpm":           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
		"qwen3-no-thinking": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
		"llama3": "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
			"<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
		"deepseek-r1": "Be brief.<｜User｜> Hi <｜Assistant｜>Hello.<｜end▁of▁sentence｜><｜User｜>Bye<｜Assistant｜><think>\n",
		"gemma":       "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
		"phi3":        "<|system|>\nBe brief.<|end|>\n<|user|>\n Hi <|end|>\n<|assistant|>\nHello.<|end|>\n<|user|>\nBye<|end|>\n<|assistant|>\n",
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			p, err := Preset(name)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p.Render(context.Background(), &Conversation{Messages: conv})
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("\n got: %q\nwant: %q", got, want)
			}
		})
	}
	if len(Presets()) != 11 {
		t.Errorf("presets %v: a new preset needs a case here and a line in docs/openai.md", Presets())
	}
	if _, err := Preset("vicuna"); err == nil || !strings.Contains(err.Error(), "qwen2.5") {
		t.Errorf("unknown preset: %v", err)
	}
}

// TestTurnsDetails covers the default system prompt, OmitSystem, thinking, end-of-reply
// texts, tool results of other families and bad roles.
func TestTurnsDetails(t *testing.T) {
	q25, _ := Preset("qwen2.5")
	got, _ := q25.Render(context.Background(), &Conversation{Messages: msgs("user", "x")})
	if !strings.HasPrefix(got, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n") {
		t.Errorf("qwen2.5 default system: %q", got)
	}
	got, _ = q25.Render(context.Background(), &Conversation{Messages: msgs("system", "S", "user", "x"), OmitSystem: true})
	if got != "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n" {
		t.Errorf("OmitSystem: %q", got)
	}
	if s := q25.SystemPrompt(msgs("user", "x")); s != "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." {
		t.Errorf("SystemPrompt default: %q", s)
	}
	if s := q25.SystemPrompt(msgs("system", "A", "system", "B", "user", "x")); s != "A\n\nB" {
		t.Errorf("SystemPrompt: %q", s)
	}
	q3, _ := Preset("qwen3")
	on, _ := q3.Render(context.Background(), &Conversation{Messages: msgs("user", "x")})
	off, _ := q3.Render(context.Background(), &Conversation{Messages: msgs("user", "x"), EnableThinking: ptr(false)})
	if strings.Contains(on, "<think>") || !strings.HasSuffix(off, "<|im_start|>assistant\n<think>\n\n</think>\n\n") {
		t.Errorf("qwen3 thinking on %q, off %q", on, off)
	}
	// DeepSeek-R1's template (as its distills' tokenizer_config.json has it since
	// February 2025) opens the reasoning in the generation prompt, and drops a past
	// turn's reasoning up to </think>, keeping what follows as it is. The model's
	// reply starts inside the block, so it has no <think> of its own.
	r1, _ := Preset("deepseek-r1")
	got, _ = r1.Render(context.Background(), &Conversation{Messages: msgs("user", "a", "assistant", "hmm\n</think>\n\nB", "user", "c")})
	if got != "<｜User｜>a<｜Assistant｜>\n\nB<｜end▁of▁sentence｜><｜User｜>c<｜Assistant｜><think>\n" {
		t.Errorf("deepseek-r1 drops past reasoning: %q", got)
	}
	got, _ = r1.Render(context.Background(), &Conversation{Messages: msgs("user", "a", "assistant", "<think>\nhmm\n</think>B", "tool", "1")})
	if !strings.HasPrefix(got, "<｜User｜>a<｜Assistant｜>B<｜end▁of▁sentence｜>") || !strings.HasSuffix(got, "<｜Assistant｜><think>\n") {
		t.Errorf("deepseek-r1 drops the reasoning of a turn after the last user message too: %q", got)
	}
	for name, want := range map[string]string{"chatml": "<|im_end|>\n<|im_start|>assistant\n", "qwen3": "<|im_end|>\n<|im_start|>assistant\n",
		"qwen3-no-thinking": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", "deepseek-r1": "<｜Assistant｜><think>\n"} {
		p, _ := Preset(name)
		if _, _, post := p.(*Turns).RuntimeTemplate(); post != want {
			t.Errorf("%s: runtime template postfix %q, want %q (the generation prompt)", name, post, want)
		}
	}
	ends := map[string]string{"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "phi3": "<|end|>", "deepseek-r1": "<｜end▁of▁sentence｜>"}
	for name, eos := range ends {
		if p, _ := Preset(name); p.EndOfReply() != eos || p.ToolsInPrompt() || p.ToolResponse() != "tool_response" {
			t.Errorf("%s: end of reply %q", name, p.EndOfReply())
		}
	}
	l3, _ := Preset("llama3")
	got, _ = l3.Render(context.Background(), &Conversation{Messages: []Message{
		{Role: "user", Content: "w?"},
		{Role: "assistant", ToolCalls: []ToolCall{{Name: "get", Arguments: `{"a": 1}`}}},
		{Role: "tool", Content: "{\"t\": 2}"},
	}})
	want := "<|start_header_id|>user<|end_header_id|>\n\nw?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<tool_call>\n{\"name\": \"get\", \"arguments\": {\"a\": 1}}\n</tool_call><|eot_id|>" +
		"<|start_header_id|>ipython<|end_header_id|>\n\n{\"t\": 2}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
	if got != want {
		t.Errorf("llama3 tools\n got: %q\nwant: %q", got, want)
	}
	phi, _ := Preset("phi3")
	got, _ = phi.Render(context.Background(), &Conversation{Messages: []Message{{Role: "user", Content: "w?"}, {Role: "tool", Content: "1"}, {Role: "tool", Content: "2"}}})
	if want := "<|user|>\nw?<|end|>\n<|user|>\n<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response><|end|>\n<|assistant|>\n"; got != want {
		t.Errorf("phi3 tool results\n got: %q\nwant: %q", got, want)
	}
	if _, err := q25.Render(context.Background(), &Conversation{Messages: msgs("wizard", "x")}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `"wizard"`) {
		t.Errorf("bad role: %v", err)
	}
	gemma, _ := Preset("gemma")
	got, _ = gemma.Render(context.Background(), &Conversation{Messages: msgs("system", "only")})
	if got != "<start_of_turn>user\nonly<end_of_turn>\n<start_of_turn>model\n" {
		t.Errorf("gemma system without user: %q", got)
	}
}

func TestFormatToolCall(t *testing.T) {
	if got := FormatToolCall(`we"ird<>`, ""); got != "<tool_call>\n{\"name\": \"we\\\"ird<>\", \"arguments\": {}}\n</tool_call>" {
		t.Errorf("%q", got)
	}
}

func TestParseCustom(t *testing.T) {
	c, err := ParseCustom(`{"user_prefix":"U: ","user_suffix":"\n","assistant_prefix":"A: ","assistant_suffix":"</s>\n","eos":"</s>","default_system":"Sys\n"}`)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := c.Render(context.Background(), &Conversation{Messages: msgs("user", "hi", "assistant", "yo", "user", "ok")})
	if got != "Sys\nU: hi\nA: yo</s>\nU: ok\nA: " || c.Name() != "custom" || c.EndOfReply() != "</s>" {
		t.Errorf("custom: %q", got)
	}
	for js, want := range map[string]string{
		`{"user_prefx":"x"}`:  "unknown field",
		`{"user_prefix":"x"}`: "required",
		`{"user_prefix":"x","assistant_prefix":"a","thinking":"o1"}`: "thinking",
	} {
		if _, err := ParseCustom(js); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", js, err, want)
		}
	}
}

func TestPythonFloat(t *testing.T) {
	for f, want := range map[float64]string{1: "1.0", 0.5: "0.5", 1e3: "1000.0", 1e16: "1e+16", 1.5e-5: "1.5e-05", 123456789: "123456789.0", -0.0001: "-0.0001"} {
		if got := pyFloat(f); got != want {
			t.Errorf("pyFloat(%v) = %q, want %q", f, got, want)
		}
	}
}
