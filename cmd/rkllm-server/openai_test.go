package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// End-to-end tests of the OpenAI-compatible API (/v1/) against the simulator. The
// model is "model" (the file model.rkllm); conversations are rendered with the
// default ChatML preset.

const modelID = "model"

// v1 sends a request to the OpenAI API and returns the response and its body.
func (s *server) v1(method, path, body string, header ...string) (*http.Response, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequestWithContext(ctx, method, s.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func jsonBody(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSpace(b.String())
}

type msg = map[string]any

func chatBody(msgs []msg, extra map[string]any) string {
	m := map[string]any{"model": modelID, "messages": msgs}
	for k, v := range extra {
		m[k] = v
	}
	return jsonBody(m)
}

// completion is a chat or text completion as the tests read it.
type completion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int    `json:"index"`
		Text    string `json:"text"`
		Message struct {
			Role      string  `json:"role"`
			Content   *string `json:"content"`
			ToolCalls []struct {
				ID       string `json:"id"`
				Type     string `json:"type"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		TotalTokens         int `json:"total_tokens"`
		PromptTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
}

func (c *completion) content() string {
	if c.Choices[0].Message.Content == nil {
		return ""
	}
	return *c.Choices[0].Message.Content
}

// chat posts a chat completion and expects 200.
func (s *server) chat(msgs []msg, extra map[string]any) completion {
	s.t.Helper()
	resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody(msgs, extra))
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("chat: %d %s", resp.StatusCode, body)
	}
	var c completion
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		s.t.Fatalf("chat body %q: %v", body, err)
	}
	return c
}

// apiError is OpenAI's error body.
type apiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// wantError checks an error response: status, param, code and a part of the message.
func wantError(t *testing.T, resp *http.Response, body string, status int, param, code, contains string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, status)
	}
	var e apiError
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %q", body)
	}
	if got := deref(e.Error.Param); got != param {
		t.Errorf("param %q, want %q (%s)", got, param, body)
	}
	if got := deref(e.Error.Code); got != code {
		t.Errorf("code %q, want %q (%s)", got, code, body)
	}
	if !strings.Contains(e.Error.Message, contains) {
		t.Errorf("message %q does not say %q", e.Error.Message, contains)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("content type %q", resp.Header.Get("Content-Type"))
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// chatML renders msgs as the server does (the default preset).
func chatML(t *testing.T, msgs []chattemplate.Message) string {
	t.Helper()
	p, _ := chattemplate.Preset(chattemplate.Default)
	out, err := p.Render(context.Background(), &chattemplate.Conversation{Messages: msgs})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sseEvents reads a whole event stream: the data of each event, in order.
func sseEvents(t *testing.T, resp *http.Response, body string) []string {
	t.Helper()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("stream: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if !strings.HasSuffix(body, "\n\n") {
		t.Fatalf("the stream does not end with a blank line: %q", body)
	}
	var out []string
	for _, ev := range strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n") {
		data, ok := strings.CutPrefix(ev, "data: ")
		if !ok || strings.Contains(data, "\n") {
			t.Fatalf("event %q is not one data line", ev)
		}
		out = append(out, data)
	}
	return out
}

func quote(s string) string { return jsonBody(s) }

// TestOpenAIModelsAndChat checks /v1/models, a chat completion with its exact usage,
// and that the streamed form of the same request is, byte for byte, the chunks
// OpenAI documents and carries the same reply.
func TestOpenAIModelsAndChat(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		resp, body := s.v1(http.MethodGet, "/v1/models", "")
		want := `{"object":"list","data":[{"id":"model","object":"model","created":0,"owned_by":"rkllm-server","max_model_len":512,"context_length":512}]}` + "\n"
		if resp.StatusCode != http.StatusOK || body != want {
			t.Errorf("/v1/models: %d %q\nwant %q", resp.StatusCode, body, want)
		}
		resp, body = s.v1(http.MethodGet, "/v1/models/model", "")
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(body, `{"id":"model","object":"model"`) {
			t.Errorf("/v1/models/model: %d %s", resp.StatusCode, body)
		}
		resp, body = s.v1(http.MethodGet, "/v1/models/gpt-4o", "")
		wantError(t, resp, body, http.StatusNotFound, "model", "model_not_found", "`model`")

		msgs := []msg{{"role": "system", "content": "Be brief & <kind>."}, {"role": "user", "content": "Hello, naïve one"}}
		c := s.chat(msgs, nil)
		if !strings.HasPrefix(c.ID, "chatcmpl-") || c.Object != "chat.completion" || c.Model != modelID || c.Choices[0].Message.Role != "assistant" {
			t.Errorf("response: %+v", c)
		}
		if c.content() == "" || (c.Choices[0].FinishReason != "stop" && c.Choices[0].FinishReason != "length") {
			t.Errorf("reply %q finish %q", c.content(), c.Choices[0].FinishReason)
		}
		// The runtime's template is off and no tools are set: the prompt is exactly the
		// rendered conversation, every token of which is prefilled.
		prompt := chatML(t, []chattemplate.Message{{Role: "system", Content: "Be brief & <kind>."}, {Role: "user", Content: "Hello, naïve one"}})
		if n := len(s.model.Tokenize(prompt)); c.Usage.PromptTokens != n || c.Usage.PromptTokensDetails.CachedTokens != 0 {
			t.Errorf("prompt tokens %d (cached %d), want %d", c.Usage.PromptTokens, c.Usage.PromptTokensDetails.CachedTokens, n)
		}
		if c.Usage.CompletionTokens < 1 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
			t.Errorf("usage %+v", c.Usage)
		}

		// The same request streamed, with usage.
		resp, body = s.v1(http.MethodPost, "/v1/chat/completions", chatBody(msgs, map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}))
		events := sseEvents(t, resp, body)
		var first struct {
			ID      string `json:"id"`
			Created int64  `json:"created"`
		}
		if err := json.Unmarshal([]byte(events[0]), &first); err != nil || !strings.HasPrefix(first.ID, "chatcmpl-") {
			t.Fatalf("first chunk %q", events[0])
		}
		head := fmt.Sprintf(`{"id":%q,"object":"chat.completion.chunk","created":%d,"model":"model","system_fingerprint":"rkllm-server-dev","choices":`, first.ID, first.Created)
		if want := head + `[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}`; events[0] != want {
			t.Errorf("role chunk\n got %s\nwant %s", events[0], want)
		}
		var text strings.Builder
		contentChunk := regexp.MustCompile(`^` + regexp.QuoteMeta(head+`[{"index":0,"delta":{"content":`) + `(".*")` + regexp.QuoteMeta(`},"logprobs":null,"finish_reason":null}],"usage":null}`) + `$`)
		i := 1
		for ; i < len(events); i++ {
			m := contentChunk.FindStringSubmatch(events[i])
			if m == nil {
				break
			}
			var piece string
			if err := json.Unmarshal([]byte(m[1]), &piece); err != nil || piece == "" || quote(piece) != m[1] {
				t.Errorf("content chunk %s", events[i])
			}
			text.WriteString(piece)
		}
		if text.String() != c.content() {
			t.Errorf("streamed reply %q, whole reply %q", text.String(), c.content())
		}
		rest := events[i:]
		if len(rest) != 3 {
			t.Fatalf("after the content: %q", rest)
		}
		if want := head + `[{"index":0,"delta":{},"logprobs":null,"finish_reason":"` + c.Choices[0].FinishReason + `"}],"usage":null}`; rest[0] != want {
			t.Errorf("finish chunk\n got %s\nwant %s", rest[0], want)
		}
		u := c.Usage
		// The same request again starts over (it does not extend the cached reply).
		if want := head + fmt.Sprintf(`[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}`,
			u.PromptTokens, u.CompletionTokens, u.TotalTokens); rest[1] != want {
			t.Errorf("usage chunk\n got %s\nwant %s", rest[1], want)
		}
		if rest[2] != "[DONE]" {
			t.Errorf("last event %q", rest[2])
		}

		// Without include_usage, chunks have no usage member. (sseEvents checks this
		// response's status and content type.)
		resp, body = s.v1(http.MethodPost, "/v1/chat/completions", chatBody(msgs, map[string]any{"stream": true, "max_tokens": 2}))
		events = sseEvents(t, resp, body)
		if len(events) < 3 || events[len(events)-1] != "[DONE]" {
			t.Fatalf("stream without include_usage: %q", events)
		}
		for _, ev := range events[:len(events)-1] {
			if strings.Contains(ev, `"usage"`) {
				t.Errorf("usage without include_usage: %s", ev)
			}
		}
		if !strings.Contains(events[len(events)-2], `"finish_reason":"length"`) {
			t.Errorf("max_tokens 2: %s", events[len(events)-2])
		}
	})
}

// TestOpenAICompletions checks /v1/completions: the prompt is fed as it is, streamed
// and not.
func TestOpenAICompletions(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		body := jsonBody(map[string]any{"model": modelID, "prompt": "Once upon a time"})
		resp, out := s.v1(http.MethodPost, "/v1/completions", body)
		var c completion
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(out), &c) != nil || c.Object != "text_completion" || !strings.HasPrefix(c.ID, "cmpl-") || c.Choices[0].Text == "" {
			t.Fatalf("completion: %d %s", resp.StatusCode, out)
		}
		if n := len(s.model.Tokenize("Once upon a time")); c.Usage.PromptTokens != n {
			t.Errorf("prompt tokens %d, want %d", c.Usage.PromptTokens, n)
		}
		resp, out = s.v1(http.MethodPost, "/v1/completions", jsonBody(map[string]any{"model": modelID, "prompt": []string{"Once upon a time"}, "stream": true}))
		events := sseEvents(t, resp, out)
		var text strings.Builder
		for _, ev := range events[:len(events)-1] {
			var ch completion
			if err := json.Unmarshal([]byte(ev), &ch); err != nil || ch.Object != "text_completion" || len(ch.Choices) != 1 {
				t.Fatalf("chunk %s", ev)
			}
			text.WriteString(ch.Choices[0].Text)
		}
		if text.String() != c.Choices[0].Text || events[len(events)-1] != "[DONE]" {
			t.Errorf("streamed %q, whole %q", text.String(), c.Choices[0].Text)
		}
		if !strings.HasSuffix(events[len(events)-2], `"logprobs":null,"finish_reason":"`+c.Choices[0].FinishReason+`"}]}`) {
			t.Errorf("last chunk %s", events[len(events)-2])
		}

		// A stop sequence from the middle of that reply cuts it there (the server also
		// aborts the run; the unpaced simulator may have finished it by then).
		whole := c.Choices[0].Text
		runes := []rune(whole)
		stop := string(runes[len(runes)/2 : len(runes)/2+2])
		cut := whole[:strings.Index(whole, stop)]
		for _, stream := range []bool{false, true} {
			resp, out = s.v1(http.MethodPost, "/v1/completions", jsonBody(map[string]any{"model": modelID, "prompt": "Once upon a time", "stop": stop, "stream": stream}))
			text, finish := "", ""
			if stream {
				for _, ev := range sseEvents(t, resp, out) {
					var ch completion
					if json.Unmarshal([]byte(ev), &ch) == nil && len(ch.Choices) == 1 {
						text += ch.Choices[0].Text
						finish = ch.Choices[0].FinishReason
					}
				}
			} else {
				var sc completion
				_ = json.Unmarshal([]byte(out), &sc)
				text, finish = sc.Choices[0].Text, sc.Choices[0].FinishReason
			}
			if text != cut || finish != "stop" {
				t.Errorf("stop %q (stream %v): %q %q, want %q", stop, stream, text, finish, cut)
			}
		}
	})
}

// echo asks the simulator to echo the parameters of a run (the prompt
// <sim:echo-params>) through /v1/completions with extra request members.
func (s *server) echo(extra map[string]any) (map[string]any, string) {
	s.t.Helper()
	req := map[string]any{"model": modelID, "prompt": "<sim:echo-params>"}
	for k, v := range extra {
		req[k] = v
	}
	resp, body := s.v1(http.MethodPost, "/v1/completions", jsonBody(req))
	if resp.StatusCode != http.StatusOK {
		return nil, body
	}
	var c completion
	_ = json.Unmarshal([]byte(body), &c)
	var echo map[string]any
	if err := json.Unmarshal([]byte(c.Choices[0].Text), &echo); err != nil {
		s.t.Fatalf("echo %q: %v", c.Choices[0].Text, err)
	}
	return echo, body
}

// TestOpenAISampling checks every sampling member: ABI 1.3 passes them per run (the
// simulator echoes what it got); ABI 1.2 refuses a value the model was not loaded with,
// naming the member, and enforces max_tokens itself.
func TestOpenAISampling(t *testing.T) {
	cfg := map[string]any{"max-context-len": 4096}
	t.Run("1.3", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: cfg})
		echo, body := s.echo(map[string]any{"temperature": 0.5, "top_p": 0.25, "top_k": 7, "frequency_penalty": 0.5,
			"presence_penalty": -0.5, "repetition_penalty": 1.5, "max_tokens": 3000})
		if echo == nil {
			t.Fatalf("echo: %s", body)
		}
		infer := echo["infer"].(map[string]any)
		want := map[string]any{"top_k": 7.0, "top_p": 0.25, "temperature": 0.5, "repeat_penalty": 1.5, "frequency_penalty": 0.5,
			"presence_penalty": -0.5, "mirostat": 0.0, "mirostat_tau": 5.0, "mirostat_eta": 0.100000001}
		got := infer["sampling"].(map[string]any)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("sampling %s = %v, want %v", k, got[k], v)
			}
		}
		if infer["max_new_tokens"] != 3000.0 || infer["keep_history"] != 1.0 || echo["input"].(map[string]any)["role"] != "user" {
			t.Errorf("infer %v input %v", infer, echo["input"])
		}
		// Without sampling members the run keeps the init-time values (no override).
		echo, _ = s.echo(nil)
		if infer := echo["infer"].(map[string]any); infer["sampling"] != nil || infer["max_new_tokens"] != 0.0 {
			t.Errorf("no sampling members: %v", infer)
		}
	})
	t.Run("1.2", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.2", serverOpts{config: cfg})
		for member, value := range map[string]any{"temperature": 0.5, "top_p": 0.25, "top_k": 7, "frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.5} {
			resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}}, map[string]any{member: value}))
			wantError(t, resp, body, http.StatusBadRequest, member, "unsupported_parameter", "runtime ABI 1.2")
		}
		// The values the model was loaded with are accepted.
		echo, body := s.echo(map[string]any{"temperature": 0.8, "top_p": 0.9, "top_k": 40})
		if echo == nil {
			t.Fatalf("loaded values refused: %s", body)
		}
		// The server stops the run after 3 tokens; the unpaced simulator has usually
		// generated more by the time the abort lands, as a runtime whose abort lags
		// would: usage counts what the client got, and the whole prompt.
		c := s.chat([]msg{{"role": "user", "content": "Hello"}}, map[string]any{"max_tokens": 3})
		if c.Choices[0].FinishReason != "length" || c.Usage.CompletionTokens != 3 {
			t.Errorf("max_tokens 3 on 1.2: finish %q, %d tokens", c.Choices[0].FinishReason, c.Usage.CompletionTokens)
		}
		if n := len(s.model.Tokenize(chatML(t, []chattemplate.Message{{Role: "user", Content: "Hello"}}))); c.Usage.PromptTokens != n {
			t.Errorf("max_tokens 3 on 1.2: prompt tokens %d, want %d", c.Usage.PromptTokens, n)
		}
	})
}

// TestOpenAITools checks a tool call through rkllm_set_function_tools, parsed into
// tool_calls, streamed and not, then the tool's result answered as text with the
// conversation's prefix reused.
func TestOpenAITools(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		tools := []any{map[string]any{"type": "function", "function": map[string]any{"name": "get_weather", "description": "Weather of a city",
			"parameters": map[string]any{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}, "days": map[string]any{"type": "integer"}}}}}}
		msgs := []msg{{"role": "system", "content": "You are a weather bot."}, {"role": "user", "content": "Use get_weather for Paris"}}
		c := s.chat(msgs, map[string]any{"tools": tools})
		ch := c.Choices[0]
		if ch.FinishReason != "tool_calls" || ch.Message.Content != nil || len(ch.Message.ToolCalls) != 1 {
			t.Fatalf("tool call: %+v", ch)
		}
		call := ch.Message.ToolCalls[0]
		if !regexp.MustCompile(`^call_[A-Za-z0-9]{24}$`).MatchString(call.ID) || call.Type != "function" || call.Function.Name != "get_weather" ||
			call.Function.Arguments != `{"city": "sim", "days": 1}` {
			t.Errorf("call %+v", call)
		}
		// The system prompt and the tools went to the runtime, which puts them in front;
		// the prompt is the conversation without its system turn.
		toolsJSON := `[{"type":"function","function":{"name":"get_weather","description":"Weather of a city","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}]`
		conv := chatML(t, []chattemplate.Message{{Role: "user", Content: "Use get_weather for Paris"}})
		conv = strings.TrimPrefix(conv, "<|im_start|>system\n"+"<|im_end|>\n")
		if n := len(s.model.Tokenize("You are a weather bot.\n" + toolsJSON + conv)); c.Usage.PromptTokens != n {
			t.Errorf("prompt tokens %d, want %d (system prompt, tools, conversation)", c.Usage.PromptTokens, n)
		}

		// The tool's result: the cache holds the conversation so far, so only the result
		// is prefilled, and the model answers in text.
		msgs = append(msgs, msg{"role": "assistant", "content": nil, "tool_calls": []any{map[string]any{"id": call.ID, "type": "function",
			"function": map[string]any{"name": "get_weather", "arguments": call.Function.Arguments}}}},
			msg{"role": "tool", "tool_call_id": call.ID, "content": `{"temp": 21}`})
		c2 := s.chat(msgs, map[string]any{"tools": tools})
		if c2.Choices[0].FinishReason == "tool_calls" || c2.content() == "" || c2.Usage.PromptTokensDetails.CachedTokens <= c.Usage.PromptTokens {
			t.Errorf("after the result: finish %q, reply %q, cached %d (first prompt %d)", c2.Choices[0].FinishReason, c2.content(),
				c2.Usage.PromptTokensDetails.CachedTokens, c.Usage.PromptTokens)
		}

		// Streamed: the call comes as two deltas (id, type, name; then the arguments).
		resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody(msgs[:2], map[string]any{"tools": tools, "stream": true}))
		events := sseEvents(t, resp, body)
		var deltas []string
		for _, ev := range events[1 : len(events)-1] {
			var chunk struct {
				Choices []struct {
					Delta        json.RawMessage `json:"delta"`
					FinishReason *string         `json:"finish_reason"`
				} `json:"choices"`
			}
			_ = json.Unmarshal([]byte(ev), &chunk)
			deltas = append(deltas, string(chunk.Choices[0].Delta)+" "+deref(chunk.Choices[0].FinishReason))
		}
		id := regexp.MustCompile(`"id":"(call_[A-Za-z0-9]{24})"`).FindStringSubmatch(body)
		if id == nil {
			t.Fatalf("no call id in %s", body)
		}
		want := []string{
			`{"tool_calls":[{"index":0,"id":"` + id[1] + `","type":"function","function":{"name":"get_weather","arguments":""}}]} `,
			`{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\": \"sim\", \"days\": 1}"}}]} `,
			`{} tool_calls`,
		}
		if strings.Join(deltas, "\n") != strings.Join(want, "\n") {
			t.Errorf("deltas\n%s\nwant\n%s", strings.Join(deltas, "\n"), strings.Join(want, "\n"))
		}

		// tool_choice none: no tools reach the model, so no call.
		c = s.chat(msgs[:2], map[string]any{"tools": tools, "tool_choice": "none"})
		if c.Choices[0].FinishReason == "tool_calls" || c.content() == "" {
			t.Errorf("tool_choice none: %+v", c.Choices[0])
		}
		c = s.chat(msgs[:2], map[string]any{"tools": tools, "tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "get_weather"}}})
		if c.Choices[0].FinishReason != "tool_calls" {
			t.Errorf("named tool_choice: %+v", c.Choices[0])
		}
	})
}

// TestOpenAIErrors checks that bad requests get a 400 (or 404, 405) in OpenAI's error
// shape, naming the parameter.
func TestOpenAIErrors(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	user := []msg{{"role": "user", "content": "hi"}}
	chat := func(extra map[string]any) string { return chatBody(user, extra) }
	cases := []struct {
		name, method, path, body string
		status                   int
		param, code, says        string
	}{
		{"unknown member", "POST", "/v1/chat/completions", chat(map[string]any{"foo": 1}), 400, "foo", "", "Unrecognized request argument supplied: foo"},
		{"not JSON", "POST", "/v1/chat/completions", `{"model":`, 400, "", "", "could not parse the JSON body"},
		{"no model", "POST", "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}]}`, 400, "model", "missing_required_parameter", "serves `model`"},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}`, 404, "model", "model_not_found", "gpt-4o"},
		{"no messages", "POST", "/v1/chat/completions", `{"model":"model"}`, 400, "messages", "missing_required_parameter", "'messages'"},
		{"empty messages", "POST", "/v1/chat/completions", `{"model":"model","messages":[]}`, 400, "messages", "empty_array", "empty array"},
		{"bad role", "POST", "/v1/chat/completions", chatBody([]msg{{"role": "robot", "content": "x"}}, nil), 400, "messages[0].role", "invalid_value", "'robot'"},
		{"image part", "POST", "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": []any{map[string]any{"type": "image_url", "image_url": map[string]any{"url": "x"}}}}}, nil),
			400, "messages[0].content[0].type", "unsupported_parameter", "text parts only"},
		{"content type", "POST", "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": 5}}, nil), 400, "messages[0].content", "invalid_type", "an integer"},
		{"tool without id", "POST", "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}}, nil),
			400, "messages[1].tool_call_id", "missing_required_parameter", "tool_call_id"},
		{"n", "POST", "/v1/chat/completions", chat(map[string]any{"n": 2}), 400, "n", "unsupported_parameter", "one choice"},
		{"seed", "POST", "/v1/chat/completions", chat(map[string]any{"seed": 7}), 400, "seed", "unsupported_parameter", "no sampling seed"},
		{"temperature range", "POST", "/v1/chat/completions", chat(map[string]any{"temperature": 3}), 400, "temperature", "invalid_value", "between 0 and 2"},
		{"temperature type", "POST", "/v1/chat/completions", chat(map[string]any{"temperature": "hot"}), 400, "temperature", "invalid_type", "a string"},
		{"max_tokens", "POST", "/v1/chat/completions", chat(map[string]any{"max_tokens": 0}), 400, "max_tokens", "invalid_value", "at least 1"},
		{"top_k past int32", "POST", "/v1/chat/completions", chat(map[string]any{"top_k": 1 << 31}), 400, "top_k", "invalid_value", "between 0 and 2147483647"},
		{"top_k wrapping to 0", "POST", "/v1/completions", `{"model":"model","prompt":"x","top_k":4294967296}`, 400, "top_k", "invalid_value", "between 0 and 2147483647"},
		{"five stops", "POST", "/v1/chat/completions", chat(map[string]any{"stop": []string{"a", "b", "c", "d", "e"}}), 400, "stop", "invalid_value", "at most 4"},
		{"stream_options alone", "POST", "/v1/chat/completions", chat(map[string]any{"stream_options": map[string]any{"include_usage": true}}), 400, "stream_options", "invalid_value", "only allowed when 'stream'"},
		{"logprobs", "POST", "/v1/chat/completions", chat(map[string]any{"logprobs": true}), 400, "logprobs", "unsupported_parameter", "log probabilities"},
		{"json mode", "POST", "/v1/chat/completions", chat(map[string]any{"response_format": map[string]any{"type": "json_object"}}), 400, "response_format", "unsupported_parameter", "constrain"},
		{"functions", "POST", "/v1/chat/completions", chat(map[string]any{"functions": []any{}}), 400, "functions", "unsupported_parameter", "use tools"},
		{"tool type", "POST", "/v1/chat/completions", chat(map[string]any{"tools": []any{map[string]any{"type": "retrieval"}}}), 400, "tools[0].type", "invalid_value", "'retrieval'"},
		{"tool_choice name", "POST", "/v1/chat/completions", chat(map[string]any{"tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}},
			"tool_choice": map[string]any{"type": "function", "function": map[string]any{"name": "g"}}}), 400, "tool_choice", "invalid_value", "'g'"},
		{"echo", "POST", "/v1/completions", `{"model":"model","prompt":"x","echo":true}`, 400, "echo", "unsupported_parameter", "echo"},
		{"token prompt", "POST", "/v1/completions", `{"model":"model","prompt":[1,2]}`, 400, "prompt", "unsupported_parameter", "token arrays"},
		{"no prompt", "POST", "/v1/completions", `{"model":"model"}`, 400, "prompt", "missing_required_parameter", "'prompt'"},
		{"wrong method", "GET", "/v1/chat/completions", "", 405, "", "", "use POST"},
		{"unknown path", "POST", "/v1/images/generations", "{}", 404, "", "", "Invalid URL (POST /v1/images/generations)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := s.v1(c.method, c.path, c.body)
			wantError(t, resp, body, c.status, c.param, c.code, c.says)
		})
	}
}

// TestOpenAILimits checks 401 without the API key, 413 for a body over
// --max-request-bytes, 503 while the model loads.
func TestOpenAILimits(t *testing.T) {
	t.Run("api key", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		key := filepath.Join(dir, "key")
		if err := os.WriteFile(key, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": key}})
		resp, body := s.v1(http.MethodGet, "/v1/models", "")
		wantError(t, resp, body, http.StatusUnauthorized, "", "invalid_api_key", "Authorization: Bearer")
		resp, body = s.v1(http.MethodGet, "/v1/models", "", "Authorization", "Bearer s3cret")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("with the key: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("too large", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-request-bytes": 2000}})
		resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": strings.Repeat("x", 3000)}}, nil))
		wantError(t, resp, body, http.StatusRequestEntityTooLarge, "", "request_too_large", "2000 bytes")
	})
	t.Run("loading", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{env: []string{"RKLLM_SIM_INIT_DELAY_MS=60000"}, noWait: true})
		resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}}, nil))
		wantError(t, resp, body, http.StatusServiceUnavailable, "", "service_unavailable", "not ready")
		if resp.Header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
	})
}

// openChat starts a streamed chat completion and returns once its first event (the
// role chunk) has arrived; close ends the connection.
func (s *server) openChat(body string) (*bufio.Reader, func()) {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/chat/completions", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		s.t.Fatalf("stream: %v", err)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, `"role":"assistant"`) {
		s.t.Fatalf("first event %q: %v", line, err)
	}
	closeFn := func() {
		cancel()
		_ = resp.Body.Close()
	}
	s.t.Cleanup(closeFn)
	return br, closeFn
}

// TestOpenAIQueueDisconnectDrain holds the model with a run that hangs (a simulator
// fault on the first run), then checks: a full queue answers 429 with Retry-After;
// the client that drops its stream has its run aborted in the runtime, and the queued
// request then runs; after SIGTERM new requests get 503.
func TestOpenAIQueueDisconnectDrain(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		// Replies of 500 tokens at 50 tokens/s: a stream lasts long enough to drain during it.
		slow := simulator.FastModel()
		slow.DecodeTokensPerSecond, slow.ReplyMinTokens, slow.ReplyMaxTokens = 50, 500, 500
		s := startServer(t, abi, serverOpts{model: &slow, config: map[string]any{"max-queue": 1, "shutdown-timeout": "5s", "max-context-len": 4096},
			env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_RUN=1"}})
		_, closeHung := s.openChat(chatBody([]msg{{"role": "user", "content": "hang"}}, map[string]any{"stream": true}))
		s.eventually("the hung run", waitTimeout, func() bool { return len(s.statsEvents("event=hang")) == 1 })
		queued := make(chan completion, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/chat/completions", strings.NewReader(chatBody([]msg{{"role": "user", "content": "queued"}}, map[string]any{"max_tokens": 2})))
			var c completion
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&c)
				_ = resp.Body.Close()
			}
			queued <- c
		}()
		s.eventually("a queued request", waitTimeout, func() bool { _, st := s.status(); return st["queue_depth"] == 1.0 })
		resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}}, nil))
		wantError(t, resp, body, http.StatusTooManyRequests, "", "rate_limit_exceeded", "busy")
		if resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
		}

		closeHung()
		s.eventually("the dropped client's run aborted", waitTimeout, func() bool { return len(s.statsEvents("event=run", "run=1 ", "outcome=aborted")) == 1 })
		select {
		case c := <-queued:
			if c.content() == "" {
				t.Errorf("the queued request: %+v", c)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the queued request did not finish")
		}

		// Draining: a stream in progress goes on, new requests get 503.
		_, closeSlow := s.openChat(chatBody([]msg{{"role": "user", "content": "long"}}, map[string]any{"stream": true}))
		s.signal(syscall.SIGTERM)
		s.eventually("503 while draining", waitTimeout, func() bool {
			resp, _ := s.v1(http.MethodGet, "/readyz", "")
			return resp.StatusCode == http.StatusServiceUnavailable
		})
		resp, body = s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}}, nil))
		wantError(t, resp, body, http.StatusServiceUnavailable, "", "service_unavailable", "shutting down")
		closeSlow()
		if err := s.waitExit(); err != nil {
			t.Errorf("exit: %v", err)
		}
	})
}

// TestOpenAIPrefixReuseNeverLeaks interleaves two conversations (one with tools, whose
// system prompt the runtime holds), JSON-RPC runs and a cache clear on a server that
// reuses the KV cache, and checks every reply against a server that never does. The
// simulator's reply depends on what the cache holds (its last positions and length),
// so a cache that held another conversation's context, or missed part of its own,
// would change the reply. It also checks when the prefix was reused: only for the
// follow-up of the conversation that ran last.
func TestOpenAIPrefixReuseNeverLeaks(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		reuse := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096}})
		fresh := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096, "prefix-reuse": false}})
		tools := []any{map[string]any{"type": "function", "function": map[string]any{"name": "lookup", "parameters": map[string]any{"type": "object"}}}}
		convs := map[string][]msg{
			"A": {{"role": "user", "content": "Tell me about NPUs."}},
			"B": {{"role": "system", "content": "You are B's private assistant; B's secret is 42."}, {"role": "user", "content": "Hello from B."}},
		}
		turn := map[string]int{}
		// say sends the next turn of a conversation to both servers and checks the
		// replies are equal and whether the cached prefix was used.
		say := func(name string, wantReuse bool) {
			t.Helper()
			var extra map[string]any
			if name == "B" {
				extra = map[string]any{"tools": tools}
			}
			got := reuse.chat(convs[name], extra)
			want := fresh.chat(convs[name], extra)
			turn[name]++
			step := fmt.Sprintf("%s%d", name, turn[name])
			if got.content() != want.content() || got.Usage.PromptTokens != want.Usage.PromptTokens {
				t.Errorf("%s: reply %q (%d prompt tokens) with reuse, %q (%d) without", step, got.content(), got.Usage.PromptTokens, want.content(), want.Usage.PromptTokens)
			}
			if reused := got.Usage.PromptTokensDetails.CachedTokens > 0; reused != wantReuse {
				t.Errorf("%s: cached tokens %d, want reuse %v", step, got.Usage.PromptTokensDetails.CachedTokens, wantReuse)
			}
			convs[name] = append(convs[name], msg{"role": "assistant", "content": got.content()}, msg{"role": "user", "content": step + " follow-up"})
		}
		sock := reuse.dial()
		rpc := func() string {
			t.Helper()
			return ok[runResult](t, sock.call("rkllm.run", prompt("independent JSON-RPC prompt"))).Text
		}
		say("A", false)
		r0 := rpc()
		say("A", false) // the JSON-RPC run used the cache
		say("A", true)
		say("B", false)
		say("A", false) // B was in the cache
		say("B", false)
		say("B", true)
		if r1 := rpc(); r1 != r0 {
			t.Errorf("a JSON-RPC run after conversation B: %q, before it %q: the conversation leaked", r1, r0)
		}
		say("A", false)
		say("A", true)
		ok[int](t, sock.call("rkllm.clear_kv_cache", map[string]any{"keep_system_prompt": 0}))
		say("A", false)
		say("A", true)
		_, metrics := reuse.get("/metrics")
		if !strings.Contains(metrics, `rkllm_prefix_reuse_total{result="hit"} 4`) || !strings.Contains(metrics, `rkllm_prefix_reuse_total{result="miss"} 7`) {
			t.Errorf("prefix metrics:\n%s", grepLines(metrics, "rkllm_prefix"))
		}
	})
}

// TestOpenAIWithoutModel: a server started without --model lists no model and answers
// 503 until a JSON-RPC client loads one; then the model is served under its file name.
func TestOpenAIWithoutModel(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{noModel: true, noWait: true})
	s.eventually("the worker", waitTimeout, func() bool { resp, _ := s.get("/healthz"); return resp.StatusCode == http.StatusOK })
	if _, body := s.v1(http.MethodGet, "/v1/models", ""); body != `{"object":"list","data":[]}`+"\n" {
		t.Errorf("models without a model: %s", body)
	}
	resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": "x"}}, nil))
	wantError(t, resp, body, http.StatusServiceUnavailable, "", "service_unavailable", "rkllm.init")
	ok[int](t, s.dial().call("rkllm.init", map[string]any{"param": map[string]any{"model_path": "model.rkllm"}}))
	if c := s.chat([]msg{{"role": "user", "content": "x"}}, nil); c.content() == "" {
		t.Errorf("after rkllm.init: %+v", c)
	}
}
