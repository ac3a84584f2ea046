package chattemplate

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ardanlabs/jinja"
)

// testConversation reads testdata/conversations/NAME.json (OpenAI-style messages).
func testConversation(t *testing.T, name string) *Conversation {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "conversations", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		Messages []struct {
			Role       string `json:"role"`
			Content    string `json:"content"`
			ToolCallID string `json:"tool_call_id"`
			ToolCalls  []struct {
				ID       string `json:"id"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"messages"`
		Tools          json.RawMessage `json:"tools"`
		EnableThinking *bool           `json:"enable_thinking"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	c := &Conversation{Tools: in.Tools, EnableThinking: in.EnableThinking}
	for _, m := range in.Messages {
		msg := Message{Role: m.Role, Content: m.Content, ToolCallID: m.ToolCallID}
		for _, tc := range m.ToolCalls {
			msg.ToolCalls = append(msg.ToolCalls, ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		c.Messages = append(c.Messages, msg)
	}
	return c
}

func testJinja(t *testing.T, name string) *Jinja {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", "templates", name+".jinja"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := NewJinja(name, string(src), "", "<|eos|>")
	if err != nil {
		t.Fatal(err)
	}
	j.vars = map[string]jinja.Value{"date_string": jinja.NewString("26 Jul 2024")}
	return j
}

func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "golden", name+".txt"))
	if err != nil {
		t.Fatalf("%v: run hack/chat-template-goldens.py", err)
	}
	return string(b)
}

// TestJinjaMatchesTransformers renders real Hugging Face chat templates (Qwen 2.5,
// Qwen 3, Llama 3.2) and compares byte for byte with what Python's Jinja2 renders the
// way transformers' apply_chat_template does (testdata/golden, written by
// hack/chat-template-goldens.py): tools with their JSON in the client's key order,
// tool calls and results, unicode, HTML characters, thinking switched off, and the
// template's own refusal of a conversation it does not support.
func TestJinjaMatchesTransformers(t *testing.T) {
	convs, _ := filepath.Glob(filepath.Join("testdata", "conversations", "*.json"))
	tmpls, _ := filepath.Glob(filepath.Join("testdata", "templates", "*.jinja"))
	if len(convs) < 5 || len(tmpls) < 3 {
		t.Fatalf("testdata is missing: %d conversations, %d templates", len(convs), len(tmpls))
	}
	for _, tp := range tmpls {
		tn := strings.TrimSuffix(filepath.Base(tp), ".jinja")
		j := testJinja(t, tn)
		for _, cp := range convs {
			cn := strings.TrimSuffix(filepath.Base(cp), ".json")
			t.Run(tn+"/"+cn, func(t *testing.T) {
				want := golden(t, tn+"__"+cn)
				got, err := j.Render(context.Background(), testConversation(t, cn))
				if msg, ok := strings.CutPrefix(want, "RENDER ERROR: "); ok {
					if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), msg) {
						t.Fatalf("want the template's error %q, got %v (output %q)", msg, err, got)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("rendering differs from transformers'\n got: %q\nwant: %q", got, want)
				}
			})
		}
	}
}

// TestPresetsMatchHuggingFace checks that the Qwen presets render exactly what the
// models' own Hugging Face templates render, for conversations without tool specs (the
// server hands those to the runtime instead).
func TestPresetsMatchHuggingFace(t *testing.T) {
	for preset, tmpl := range map[string]string{"qwen2.5": "qwen2.5", "qwen3": "qwen3"} {
		p, err := Preset(preset)
		if err != nil {
			t.Fatal(err)
		}
		for _, conv := range []string{"chat", "nosystem", "toolresults", "nothink"} {
			if preset == "qwen2.5" && conv == "nothink" {
				continue // Qwen 2.5 has no thinking to switch off
			}
			t.Run(preset+"/"+conv, func(t *testing.T) {
				want := golden(t, tmpl+"__"+conv)
				got, err := p.Render(context.Background(), testConversation(t, conv))
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("preset differs from the Hugging Face template\n got: %q\nwant: %q", got, want)
				}
			})
		}
	}
}

// TestLoadJinja reads a tokenizer_config.json (named templates, eos_token as an object)
// and a bare .jinja file, which needs the end-of-sequence text given.
func TestLoadJinja(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "tokenizer_config.json")
	body := `{"eos_token": {"content": "<|im_end|>", "lstrip": false},
	  "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ messages[0].content }}|{{ eos_token }}"}]}`
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := LoadJinja(cfg, "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.Render(context.Background(), &Conversation{Messages: []Message{{Role: "user", Content: "hi"}}})
	if err != nil || got != "hi|<|im_end|>" || j.EndOfReply() != "<|im_end|>" || j.Name() != "jinja:tokenizer_config.json" || !j.ToolsInPrompt() {
		t.Errorf("tokenizer_config.json: %q, %v", got, err)
	}
	plain := filepath.Join(dir, "t.jinja")
	if err := os.WriteFile(plain, []byte("{{ messages | length }}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadJinja(plain, ""); err == nil || !strings.Contains(err.Error(), "--chat-template-eos") {
		t.Errorf("a .jinja without eos: %v", err)
	}
	if _, err := LoadJinja(plain, "</s>"); err != nil {
		t.Error(err)
	}
	if err := os.WriteFile(plain, []byte("{% if %}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadJinja(plain, "</s>"); err == nil {
		t.Error("a broken template loads")
	}
}

// TestOpenReasoning: the reply of a prompt that opened the reasoning block starts inside
// it; a prompt with the block closed (Qwen 3 with thinking off) or none does not.
func TestOpenReasoning(t *testing.T) {
	render := func(preset string, thinking *bool) string {
		t.Helper()
		tmpl, err := Preset(preset)
		if err != nil {
			t.Fatal(err)
		}
		p, err := tmpl.Render(context.Background(), &Conversation{Messages: []Message{{Role: RoleUser, Content: "Is <think> a tag?"}}, EnableThinking: thinking})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	off := false
	for _, c := range []struct {
		name, prompt, want string
	}{
		{"deepseek-r1", render("deepseek-r1", nil), "<think>\n"},
		{"qwen3, thinking on: the model opens the block itself", render("qwen3", nil), ""},
		{"qwen3, thinking off: the block is closed", render("qwen3", &off), ""},
		{"qwen2.5: a <think> in the user's words is not an opening", render("qwen2.5", nil), ""},
		{"an opening followed by text", "<think>\nhmm", ""},
		{"no prompt", "", ""},
	} {
		if got := OpenReasoning(c.prompt); got != c.want {
			t.Errorf("%s: OpenReasoning(%q) = %q, want %q", c.name, c.prompt, got, c.want)
		}
	}
}
