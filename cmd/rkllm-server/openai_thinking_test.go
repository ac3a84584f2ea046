package main_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// metricValue returns the value of one sample of /metrics ("" when absent).
func metricValue(metrics, sample string) string {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestOpenAIPrefixReuseThinkingTemplates: the thinking presets drop a past turn's
// reasoning (<think>...</think>) when they render the history, as the families' own
// templates do, and qwen3's thinking-off generation prompt puts an empty reasoning
// block in front of the reply. The KV cache holds the reply as generated, so the next
// turn's prompt never extends it: the follow-up must start over (a miss, the whole
// prompt prefilled) and answer exactly as a server that never reuses. qwen2.5 renders
// its history as the cache holds it, so there the same follow-up reuses the prefix.
// The simulator's words include <think> and </think>, so its replies carry a
// reasoning block as a thinking model's do.
func TestOpenAIPrefixReuseThinkingTemplates(t *testing.T) {
	for _, c := range []struct {
		preset string
		hit    bool
	}{{"qwen3", false}, {"qwen3-no-thinking", false}, {"deepseek-r1", false}, {"qwen2.5", true}} {
		t.Run(c.preset, func(t *testing.T) {
			t.Parallel()
			// No word joins others into a longer one: a reply retokenizes into the tokens generated.
			tmpl, m := presetModel(t, c.preset, "<think>", "\n", " step", "</think>", " answer", ".")
			cfg := map[string]any{"chat-template": c.preset, "max-context-len": 4096}
			reuse := startServer(t, "1.3", serverOpts{model: &m, config: cfg})
			fresh := startServer(t, "1.3", serverOpts{model: &m, config: map[string]any{"chat-template": c.preset, "max-context-len": 4096, "prefix-reuse": false}})

			conv := []msg{{"role": "user", "content": "Why is the sky blue?"}}
			first := reuse.chat(conv, nil)
			if want := fresh.chat(conv, nil); first.content() != want.content() {
				t.Fatalf("turn 1: %q with reuse, %q without", first.content(), want.content())
			}
			if c.preset == "qwen3" && !strings.Contains(first.content(), "</think>") {
				t.Fatalf("the simulator's reply %q has no reasoning block: change the test's words", first.content())
			}
			conv = append(conv, msg{"role": "assistant", "content": first.content()}, msg{"role": "user", "content": "And at sunset?"})
			got, want := reuse.chat(conv, nil), fresh.chat(conv, nil)
			if got.content() != want.content() || got.Usage.PromptTokens != want.Usage.PromptTokens {
				t.Errorf("turn 2: reply %q (%d prompt tokens) with reuse, %q (%d) without", got.content(), got.Usage.PromptTokens, want.content(), want.Usage.PromptTokens)
			}
			prompt, err := tmpl.Render(context.Background(), &chattemplate.Conversation{Messages: []chattemplate.Message{
				{Role: "user", Content: "Why is the sky blue?"}, {Role: "assistant", Content: first.content()}, {Role: "user", Content: "And at sunset?"}}})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(m.Tokenize(prompt)); got.Usage.PromptTokens != n {
				t.Errorf("turn 2: %d prompt tokens, the rendered conversation has %d", got.Usage.PromptTokens, n)
			}
			_, metrics := reuse.get("/metrics")
			hits, misses := "0", "2"
			if c.hit {
				hits, misses = "1", "1"
			}
			if (got.Usage.PromptTokensDetails.CachedTokens > 0) != c.hit || metricValue(metrics, `rkllm_prefix_reuse_total{result="hit"}`) != hits ||
				metricValue(metrics, `rkllm_prefix_reuse_total{result="miss"}`) != misses {
				t.Errorf("turn 2: cached tokens %d, want reuse %v; metrics:\n%s", got.Usage.PromptTokensDetails.CachedTokens, c.hit, grepLines(metrics, "rkllm_prefix"))
			}
		})
	}
}

// TestOpenAIReasoningOpening: DeepSeek-R1's generation prompt opens the reasoning block
// itself, so the model's reply starts inside it. The client gets the reply with that
// opening in front, in a whole response and in the first streamed delta, so it sees a
// whole <think>...</think> block; the usage counts only the generated tokens. A template
// that leaves the block to the model (qwen2.5 here) adds nothing.
func TestOpenAIReasoningOpening(t *testing.T) {
	for _, c := range []struct{ preset, opening string }{{"deepseek-r1", "<think>\n"}, {"qwen2.5", ""}} {
		t.Run(c.preset, func(t *testing.T) {
			t.Parallel()
			// No tag of its own: what the client sees of one is the server's.
			_, m := presetModel(t, c.preset, " step", " answer", ".")
			s := startServer(t, "1.3", serverOpts{model: &m, config: map[string]any{"chat-template": c.preset}})
			conv := []msg{{"role": "user", "content": "Why is the sky blue?"}}
			whole := s.chat(conv, map[string]any{"max_tokens": 6})
			reply, ok := strings.CutPrefix(whole.content(), c.opening)
			if !ok || reply == "" || strings.Contains(reply, "<think>") {
				t.Fatalf("content %q, want %q and the generated reply", whole.content(), c.opening)
			}
			if n := len(m.Tokenize(reply)); whole.Usage.CompletionTokens != n {
				t.Errorf("completion tokens %d, the generated reply %q has %d", whole.Usage.CompletionTokens, reply, n)
			}
			streamed := s.streamChat(conv, map[string]any{"max_tokens": 6})
			if streamed.content != whole.content() {
				t.Errorf("streamed content %q, whole %q", streamed.content, whole.content())
			}
		})
	}
}

// presetModel returns a chat template preset and an unpaced simulator model that writes
// only the given words and ends its replies with the preset's end-of-reply text.
func presetModel(t *testing.T, preset string, words ...string) (chattemplate.Template, simulator.Model) {
	t.Helper()
	tmpl, err := chattemplate.Preset(preset)
	if err != nil {
		t.Fatal(err)
	}
	m := simulator.FastModel()
	m.Vocab = words
	m.ByteFallback = nil
	m.EOS = tmpl.EndOfReply()
	return tmpl, m
}
