package main_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// streamedChat is a streamed chat completion as a client puts it together.
type streamedChat struct {
	content string
	finish  string
	usage   *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	}
}

// streamChat sends a streamed chat completion with include_usage and joins its chunks.
func (s *server) streamChat(msgs []msg, extra map[string]any) streamedChat {
	s.t.Helper()
	m := map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}
	for k, v := range extra {
		m[k] = v
	}
	resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody(msgs, m))
	events := sseEvents(s.t, resp, body)
	var out streamedChat
	for _, ev := range events[:len(events)-1] {
		var ch struct {
			Choices []struct {
				Delta struct {
					Content *string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage json.RawMessage `json:"usage"`
		}
		if err := json.Unmarshal([]byte(ev), &ch); err != nil {
			s.t.Fatalf("chunk %s: %v", ev, err)
		}
		for _, c := range ch.Choices {
			out.content += deref(c.Delta.Content)
			if c.FinishReason != nil {
				out.finish = *c.FinishReason
			}
		}
		if len(ch.Choices) == 0 {
			if err := json.Unmarshal(ch.Usage, &out.usage); err != nil || out.usage == nil {
				s.t.Fatalf("usage chunk %s", ev)
			}
		}
	}
	if events[len(events)-1] != "[DONE]" || out.usage == nil {
		s.t.Fatalf("stream %q", events)
	}
	return out
}

// TestOpenAIRequestFields checks the request members the other tests leave out:
// content as a list of text parts (joined as OpenAI does: concatenated), the developer
// role (OpenAI's newer name for system), max_completion_tokens (which wins over
// max_tokens), and stop sequences on chat completions, streamed and not, with their
// usage.
func TestOpenAIRequestFields(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		promptTokens := func(msgs ...chattemplate.Message) int { return len(s.model.Tokenize(chatML(t, msgs))) }

		t.Run("text parts", func(t *testing.T) {
			whole := s.chat([]msg{{"role": "user", "content": "Hello, world"}}, nil)
			parts := s.chat([]msg{{"role": "user", "content": []any{
				map[string]any{"type": "text", "text": "Hello, "}, map[string]any{"type": "text", "text": "world"}}}}, nil)
			want := promptTokens(chattemplate.Message{Role: "user", Content: "Hello, world"})
			if newline := promptTokens(chattemplate.Message{Role: "user", Content: "Hello, \nworld"}); newline == want {
				t.Fatal("the test's parts tokenize alike joined with or without a newline: choose others")
			}
			if parts.Usage.PromptTokens != want || parts.content() != whole.content() {
				t.Errorf("text parts: %d prompt tokens, reply %q; the same text as a string: %d, %q", parts.Usage.PromptTokens, parts.content(), want, whole.content())
			}
		})

		t.Run("developer role", func(t *testing.T) {
			sys := s.chat([]msg{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}}, nil)
			dev := s.chat([]msg{{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}}, nil)
			want := promptTokens(chattemplate.Message{Role: "system", Content: "Be brief."}, chattemplate.Message{Role: "user", Content: "Hi"})
			if dev.Usage.PromptTokens != want || dev.content() != sys.content() {
				t.Errorf("developer: %d prompt tokens, reply %q; as system: %d, %q", dev.Usage.PromptTokens, dev.content(), want, sys.content())
			}
		})

		t.Run("max_completion_tokens", func(t *testing.T) {
			user := []msg{{"role": "user", "content": "Count"}}
			for _, c := range []struct {
				extra map[string]any
				want  int
			}{
				{map[string]any{"max_completion_tokens": 2}, 2},
				{map[string]any{"max_tokens": 5, "max_completion_tokens": 2}, 2},
				{map[string]any{"max_tokens": 2, "max_completion_tokens": 5}, 5},
			} {
				got := s.chat(user, c.extra)
				if got.Choices[0].FinishReason != "length" || got.Usage.CompletionTokens != c.want || got.content() == "" {
					t.Errorf("%v: finish %q, %d tokens, reply %q; want length after %d", c.extra, got.Choices[0].FinishReason, got.Usage.CompletionTokens, got.content(), c.want)
				}
			}
			resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody(user, map[string]any{"max_completion_tokens": 0}))
			wantError(t, resp, body, http.StatusBadRequest, "max_completion_tokens", "invalid_value", "at least 1")
		})

		t.Run("stop", func(t *testing.T) {
			user := []msg{{"role": "user", "content": "Tell me a story"}}
			whole := s.chat(user, nil)
			runes := []rune(whole.content())
			if len(runes) < 8 {
				t.Fatalf("reply %q too short to cut", whole.content())
			}
			stop := string(runes[len(runes)/2 : len(runes)/2+2])
			cut := whole.content()[:strings.Index(whole.content(), stop)]
			got := s.chat(user, map[string]any{"stop": []string{stop, "never in the reply"}})
			if got.content() != cut || got.Choices[0].FinishReason != "stop" {
				t.Errorf("stop %q: %q finish %q, want %q", stop, got.content(), got.Choices[0].FinishReason, cut)
			}
			streamed := s.streamChat(user, map[string]any{"stop": stop})
			if streamed.content != cut || streamed.finish != "stop" {
				t.Errorf("stop %q streamed: %q finish %q, want %q", stop, streamed.content, streamed.finish, cut)
			}
			// The usage of a cut reply: the whole prompt, and fewer tokens than the
			// whole reply.
			for name, u := range map[string][2]int{"whole": {got.Usage.PromptTokens, got.Usage.CompletionTokens},
				"streamed": {streamed.usage.PromptTokens, streamed.usage.CompletionTokens}} {
				if u[0] != whole.Usage.PromptTokens || u[1] < 1 || u[1] >= whole.Usage.CompletionTokens {
					t.Errorf("usage of the cut reply (%s): %d prompt, %d completion tokens; the uncut reply: %d, %d",
						name, u[0], u[1], whole.Usage.PromptTokens, whole.Usage.CompletionTokens)
				}
			}
		})
	})
}

// TestOpenAIServedModelName: with --served-model-name the model is listed and accepted
// under that id only.
func TestOpenAIServedModelName(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{flags: []string{"--served-model-name", "qwen-edge"}})
	resp, body := s.v1(http.MethodGet, "/v1/models", "")
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil || resp.StatusCode != http.StatusOK || len(list.Data) != 1 || list.Data[0].ID != "qwen-edge" {
		t.Errorf("/v1/models: %d %s", resp.StatusCode, body)
	}
	if resp, body := s.v1(http.MethodGet, "/v1/models/qwen-edge", ""); resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, `{"id":"qwen-edge"`) {
		t.Errorf("/v1/models/qwen-edge: %d %s", resp.StatusCode, body)
	}
	resp, body = s.v1(http.MethodGet, "/v1/models/"+modelID, "")
	wantError(t, resp, body, http.StatusNotFound, "model", "model_not_found", modelID)

	user := []msg{{"role": "user", "content": "Hi"}}
	resp, body = s.v1(http.MethodPost, "/v1/chat/completions", jsonBody(map[string]any{"model": "qwen-edge", "messages": user}))
	var c completion
	if err := json.Unmarshal([]byte(body), &c); err != nil || resp.StatusCode != http.StatusOK || c.Model != "qwen-edge" || c.content() == "" {
		t.Errorf("chat with the served name: %d %s", resp.StatusCode, body)
	}
	resp, body = s.v1(http.MethodPost, "/v1/chat/completions", chatBody(user, nil)) // the file's name
	wantError(t, resp, body, http.StatusNotFound, "model", "model_not_found", modelID)
	resp, body = s.v1(http.MethodPost, "/v1/completions", jsonBody(map[string]any{"model": "model.rkllm", "prompt": "x"}))
	wantError(t, resp, body, http.StatusNotFound, "model", "model_not_found", "model.rkllm")
}
