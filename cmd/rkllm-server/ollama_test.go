package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// End-to-end tests of the Ollama API (/api/) against the simulator, next to /v1/ on
// the same port. The model file is model.rkllm: its Ollama name is "model:latest".

const ollamaName = modelID + ":latest"

// ollamaChat is a response (or a stream's line) of /api/chat or /api/generate as the
// tests read it.
type ollamaChat struct {
	Model     string `json:"model"`
	CreatedAt string `json:"created_at"`
	Message   struct {
		Role      string `json:"role"`
		Content   string `json:"content"`
		Thinking  string `json:"thinking"`
		ToolCalls []struct {
			Function struct {
				Index     int             `json:"index"`
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	} `json:"message"`
	Response           string `json:"response"`
	Thinking           string `json:"thinking"`
	Done               bool   `json:"done"`
	DoneReason         string `json:"done_reason"`
	TotalDuration      int64  `json:"total_duration"`
	PromptEvalCount    int    `json:"prompt_eval_count"`
	PromptEvalDuration int64  `json:"prompt_eval_duration"`
	EvalCount          int    `json:"eval_count"`
	EvalDuration       int64  `json:"eval_duration"`
	Error              string `json:"error"`
}

// ollama posts to an Ollama endpoint and expects 200 and one JSON object.
func (s *server) ollama(path string, body any) ollamaChat {
	s.t.Helper()
	resp, b := s.v1(http.MethodPost, path, jsonBody(body))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		s.t.Fatalf("%s: %d %q %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var c ollamaChat
	if err := json.Unmarshal([]byte(b), &c); err != nil {
		s.t.Fatalf("%s body %q: %v", path, b, err)
	}
	return c
}

// ollamaStream posts a streamed request and returns its lines: every line but the last
// with done false, the last with done true.
func (s *server) ollamaStream(path string, body any) []ollamaChat {
	s.t.Helper()
	resp, b := s.v1(http.MethodPost, path, jsonBody(body))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		s.t.Fatalf("%s stream: %d %q %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	if !strings.HasSuffix(b, "\n") {
		s.t.Fatalf("the stream does not end with a newline: %q", b)
	}
	var out []ollamaChat
	for _, l := range strings.Split(strings.TrimSuffix(b, "\n"), "\n") {
		var c ollamaChat
		if err := json.Unmarshal([]byte(l), &c); err != nil {
			s.t.Fatalf("line %q: %v", l, err)
		}
		if _, err := time.Parse(time.RFC3339Nano, c.CreatedAt); err != nil || c.Model == "" {
			s.t.Errorf("line %q: created_at or model", l)
		}
		out = append(out, c)
	}
	for i, c := range out {
		if c.Done != (i == len(out)-1) {
			s.t.Fatalf("line %d of %d has done %v: %s", i, len(out), c.Done, b)
		}
	}
	return out
}

// wantOllamaError checks an error in Ollama's shape: {"error": message}.
func wantOllamaError(t *testing.T, resp *http.Response, body string, status int, says string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if resp.StatusCode != status || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, says) {
		t.Errorf("%d %s, want %d with an error saying %q", resp.StatusCode, body, status, says)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("content type %q", resp.Header.Get("Content-Type"))
	}
}

// TestOllamaModelEndpoints checks /api/version, /api/tags, /api/show and /api/ps for
// the served model, and that the endpoints that would change models answer that the
// RKLLMModel resource manages them.
func TestOllamaModelEndpoints(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 2048, "max-new-tokens": 64}})
	_, body := s.v1(http.MethodGet, "/api/version", "")
	if body != `{"version":"0.12.6"}`+"\n" {
		t.Errorf("version: %s", body)
	}
	st, err := os.Stat(filepath.Join(s.dir, "model.rkllm"))
	if err != nil {
		t.Fatal(err)
	}
	var tags struct {
		Models []struct {
			Name, Model, ModifiedAt, Digest string
			Size                            int64
			Details                         struct{ Format, Family string }
		} `json:"models"`
	}
	_, body = s.v1(http.MethodGet, "/api/tags", "")
	if err := json.Unmarshal([]byte(body), &tags); err != nil || len(tags.Models) != 1 {
		t.Fatalf("tags: %s", body)
	}
	m := tags.Models[0]
	if m.Name != ollamaName || m.Model != ollamaName || m.Size != st.Size() || len(m.Digest) != 64 || m.Details.Format != "rkllm" || m.Details.Family != "chatml" {
		t.Errorf("tags: %s", body)
	}
	var ps struct {
		Models []struct {
			Name          string `json:"name"`
			ExpiresAt     string `json:"expires_at"`
			ContextLength int    `json:"context_length"`
		} `json:"models"`
	}
	_, body = s.v1(http.MethodGet, "/api/ps", "")
	if err := json.Unmarshal([]byte(body), &ps); err != nil || len(ps.Models) != 1 || ps.Models[0].Name != ollamaName || ps.Models[0].ContextLength != 2048 {
		t.Errorf("ps: %s", body)
	} else if _, err := time.Parse(time.RFC3339, ps.Models[0].ExpiresAt); err != nil {
		t.Errorf("ps expires_at: %v", err)
	}
	for _, name := range []string{modelID, ollamaName} {
		var show struct {
			Template     string         `json:"template"`
			Parameters   string         `json:"parameters"`
			Modelfile    string         `json:"modelfile"`
			Capabilities []string       `json:"capabilities"`
			ModelInfo    map[string]any `json:"model_info"`
		}
		resp, body := s.v1(http.MethodPost, "/api/show", jsonBody(map[string]any{"model": name}))
		if err := json.Unmarshal([]byte(body), &show); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("show %s: %d %s", name, resp.StatusCode, body)
		}
		if show.Template != "<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n" ||
			!strings.Contains(show.Parameters, "num_ctx                        2048") || !strings.Contains(show.Parameters, "num_predict                    64") ||
			!strings.Contains(show.Parameters, `stop                           "<|im_end|>"`) || !strings.Contains(show.Modelfile, "managed by the RKLLMModel resource") ||
			strings.Join(show.Capabilities, ",") != "completion,tools,embedding" || show.ModelInfo["rkllm.context_length"] != 2048.0 ||
			show.ModelInfo["rkllm.embedding_length"] != 16.0 {
			t.Errorf("show %s: %s", name, body)
		}
	}
	// The old clients' name member works too.
	if resp, body := s.v1(http.MethodPost, "/api/show", `{"name": "model"}`); resp.StatusCode != http.StatusOK {
		t.Errorf("show by name: %d %s", resp.StatusCode, body)
	}
	resp, body := s.v1(http.MethodPost, "/api/show", `{"model": "llama3.2"}`)
	wantOllamaError(t, resp, body, http.StatusNotFound, `model "llama3.2" not found: this server serves model:latest`)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/pull", `{"model": "llama3.2"}`}, {http.MethodPost, "/api/push", `{"model": "model"}`},
		{http.MethodPost, "/api/create", `{"model": "x", "from": "model"}`}, {http.MethodPost, "/api/copy", `{"source": "model", "destination": "y"}`},
		{http.MethodDelete, "/api/delete", `{"model": "model"}`}, {http.MethodPost, "/api/blobs/sha256:00", ""},
	} {
		resp, body := s.v1(c.method, c.path, c.body)
		wantOllamaError(t, resp, body, http.StatusForbidden, "managed by the RKLLMModel resource")
	}
	resp, body = s.v1(http.MethodGet, "/api/chat", "")
	wantOllamaError(t, resp, body, http.StatusMethodNotAllowed, "use POST")
	if resp.Header.Get("Allow") != http.MethodPost {
		t.Errorf("Allow %q", resp.Header.Get("Allow"))
	}
	resp, body = s.v1(http.MethodPost, "/api/nothing", "{}")
	wantOllamaError(t, resp, body, http.StatusNotFound, "this server serves /api/chat")
	_, metrics := s.get("/metrics")
	if !strings.Contains(metrics, `rkllm_ollama_requests_total{code="403",endpoint="pull"} 1`) || !strings.Contains(metrics, `rkllm_ollama_requests_total{code="200",endpoint="tags"} 1`) {
		t.Errorf("ollama metrics:\n%s", grepLines(metrics, "rkllm_ollama_requests_total"))
	}
}

// TestOllamaChatAndGenerate checks, on both ABIs, that /api/chat and /api/generate give
// the reply /v1/ gives for the same conversation or prompt, whole and streamed (the
// default), with Ollama's counters from the runtime's perf, the load request, the
// options num_predict and stop, and the refusals.
func TestOllamaChatAndGenerate(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096}})
		msgs := []msg{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}}
		want := s.chat(msgs, nil)
		got := s.ollama("/api/chat", map[string]any{"model": ollamaName, "messages": msgs, "stream": false})
		if got.Model != ollamaName || got.Message.Role != "assistant" || got.Message.Content != want.content() || !got.Done || got.DoneReason != "stop" ||
			got.PromptEvalCount != want.Usage.PromptTokens || got.EvalCount != want.Usage.CompletionTokens || got.TotalDuration <= 0 {
			t.Errorf("chat %+v, want the reply %q with %+v", got, want.content(), want.Usage)
		}
		// Streamed by default: the pieces join to the same reply; the last line has the counters.
		lines := s.ollamaStream("/api/chat", map[string]any{"model": modelID, "messages": msgs})
		var joined strings.Builder
		for _, l := range lines {
			joined.WriteString(l.Message.Content)
		}
		last := lines[len(lines)-1]
		if joined.String() != want.content() || len(lines) < 3 || last.Message.Content != "" || last.DoneReason != "stop" ||
			last.PromptEvalCount != want.Usage.PromptTokens || last.EvalCount != want.Usage.CompletionTokens {
			t.Errorf("stream %q in %d lines, last %+v; want %q", joined.String(), len(lines), last, want.content())
		}
		// generate: the prompt and system as one templated turn, or raw.
		gen := s.ollama("/api/generate", map[string]any{"model": modelID, "prompt": "Hello!", "system": "Be brief.", "stream": false})
		if gen.Response != want.content() || gen.PromptEvalCount != want.Usage.PromptTokens || gen.DoneReason != "stop" {
			t.Errorf("generate %+v, want %q", gen, want.content())
		}
		_, body := s.v1(http.MethodPost, "/v1/completions", jsonBody(map[string]any{"model": modelID, "prompt": "Once upon a time"}))
		var raw completion
		_ = json.Unmarshal([]byte(body), &raw)
		lines = s.ollamaStream("/api/generate", map[string]any{"model": ollamaName, "prompt": "Once upon a time", "raw": true})
		joined.Reset()
		for _, l := range lines {
			joined.WriteString(l.Response)
		}
		if joined.String() != raw.Choices[0].Text {
			t.Errorf("raw generate %q, /v1/completions %q", joined.String(), raw.Choices[0].Text)
		}
		// options: num_predict and stop.
		short := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "stream": false, "options": map[string]any{"num_predict": 3}})
		if short.EvalCount != 3 || short.DoneReason != "length" {
			t.Errorf("num_predict 3: %d tokens, %q", short.EvalCount, short.DoneReason)
		}
		stop := strings.Fields(want.content())[1]
		cut := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "stream": false, "options": map[string]any{"stop": []string{stop}}})
		if wantCut, _, _ := strings.Cut(want.content(), stop); cut.Message.Content != wantCut || cut.DoneReason != "stop" {
			t.Errorf("stop %q: %q, want %q", stop, cut.Message.Content, wantCut)
		}
		// No messages, or no prompt: the model is loaded (it always is), nothing runs.
		for path, body := range map[string]map[string]any{"/api/chat": {"model": modelID, "messages": []any{}}, "/api/generate": {"model": modelID}} {
			if l := s.ollama(path, body); !l.Done || l.DoneReason != "load" {
				t.Errorf("%s without input: %+v", path, l)
			}
		}
		for _, c := range []struct {
			path   string
			body   any
			status int
			says   string
		}{
			{"/api/chat", map[string]any{"model": "llama3.2", "messages": msgs}, 404, `model "llama3.2" not found`},
			{"/api/chat", map[string]any{"messages": msgs}, 400, "model is required"},
			{"/api/chat", map[string]any{"model": modelID, "messages": msgs, "format": "json"}, 400, "cannot constrain"},
			{"/api/chat", map[string]any{"model": modelID, "messages": msgs, "format": map[string]any{"type": "object"}}, 400, "JSON schema is not supported"},
			{"/api/chat", map[string]any{"model": modelID, "messages": []msg{{"role": "user", "content": "x", "images": []string{"aGk="}}}}, 400, "images are not supported"},
			{"/api/chat", map[string]any{"model": modelID, "messages": msgs, "think": true}, 400, "chatml: it has no thinking mode"},
			{"/api/chat", map[string]any{"model": modelID, "messages": msgs, "options": map[string]any{"seed": 1}}, 400, "options.seed cannot be honoured"},
			{"/api/chat", map[string]any{"model": modelID, "messages": "hi"}, 400, "messages must be an array"},
			{"/api/generate", map[string]any{"model": modelID, "prompt": "x", "suffix": "y"}, 400, "suffix"},
			{"/api/generate", map[string]any{"model": modelID, "prompt": "x", "context": []int{1, 2}}, 400, "context is not supported"},
			{"/api/chat", "not an object", 400, "must be a JSON object"},
		} {
			resp, body := s.v1(http.MethodPost, c.path, jsonBody(c.body))
			wantOllamaError(t, resp, body, c.status, c.says)
		}
	})
}

// TestOllamaSampling checks the options on both ABIs: 1.3 passes them per run (the
// simulator echoes what it got); 1.2 refuses a value the model was not loaded with,
// naming the option and the flag.
func TestOllamaSampling(t *testing.T) {
	echo := func(s *server, options map[string]any) (map[string]any, *http.Response, string) {
		resp, body := s.v1(http.MethodPost, "/api/generate", jsonBody(map[string]any{"model": modelID, "prompt": "<sim:echo-params>", "raw": true,
			"stream": false, "options": options}))
		var g ollamaChat
		var e map[string]any
		if json.Unmarshal([]byte(body), &g) != nil || json.Unmarshal([]byte(g.Response), &e) != nil {
			return nil, resp, body
		}
		return e, resp, body
	}
	t.Run("1.3", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 4096}})
		e, _, body := echo(s, map[string]any{"temperature": 0.5, "top_p": 0.25, "top_k": 7, "repeat_penalty": 1.5, "frequency_penalty": 0.5,
			"presence_penalty": -0.5, "mirostat": 2, "mirostat_tau": 4, "mirostat_eta": 0.25, "num_predict": 3000, "num_ctx": 8192, "num_gpu": 99})
		if e == nil {
			t.Fatalf("echo: %s", body)
		}
		infer := e["infer"].(map[string]any)
		want := map[string]any{"top_k": 7.0, "top_p": 0.25, "temperature": 0.5, "repeat_penalty": 1.5, "frequency_penalty": 0.5,
			"presence_penalty": -0.5, "mirostat": 2.0, "mirostat_tau": 4.0, "mirostat_eta": 0.25}
		got := infer["sampling"].(map[string]any)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("sampling %s = %v, want %v", k, got[k], v)
			}
		}
		if infer["max_new_tokens"] != 3000.0 {
			t.Errorf("num_predict: %v", infer)
		}
	})
	t.Run("1.2", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.2", serverOpts{config: map[string]any{"max-context-len": 4096}})
		for _, c := range []struct {
			option string
			value  any
			flag   string
		}{{"temperature", 0.5, "--temperature"}, {"top_p", 0.5, "--top-p"}, {"top_k", 7, "--top-k"}, {"repeat_penalty", 1.5, "--repeat-penalty"},
			{"frequency_penalty", 0.5, "--frequency-penalty"}, {"mirostat", 2, "--mirostat"}} {
			option, flag := c.option, c.flag
			_, resp, body := echo(s, map[string]any{option: c.value})
			wantOllamaError(t, resp, body, http.StatusBadRequest, "'options."+option+"' cannot be set per request with runtime ABI 1.2")
			if !strings.Contains(body, flag) {
				t.Errorf("%s: the error does not name %s: %s", option, flag, body)
			}
		}
		if e, _, body := echo(s, map[string]any{"temperature": 0.8, "top_p": 0.9, "top_k": 40}); e == nil {
			t.Errorf("the loaded values refused: %s", body)
		}
		// num_predict on 1.2 is the server's: it stops the run.
		c := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": []msg{{"role": "user", "content": "Hello"}}, "stream": false,
			"options": map[string]any{"num_predict": 3}})
		if c.EvalCount != 3 || c.DoneReason != "length" {
			t.Errorf("num_predict 3 on 1.2: %d tokens, %q", c.EvalCount, c.DoneReason)
		}
	})
}

// toolSpec is a tool in the shape both APIs take.
func toolSpec(name string) map[string]any {
	return map[string]any{"type": "function", "function": map[string]any{"name": name, "description": "Weather of a city",
		"parameters": map[string]any{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}, "days": map[string]any{"type": "integer"}}, "required": []string{"city"}}}}
}

// TestOllamaTools checks a tool call in Ollama's shape (arguments an object), streamed
// and not, then the tool's result answered with the conversation's prefix reused from
// the KV cache, the arguments sent back as the client's JSON.
func TestOllamaTools(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096}})
		tools := []any{toolSpec("get_weather")}
		msgs := []msg{{"role": "user", "content": "Use get_weather for Paris"}}
		c := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "tools": tools, "stream": false})
		if len(c.Message.ToolCalls) != 1 || c.Message.ToolCalls[0].Function.Name != "get_weather" || c.DoneReason != "stop" {
			t.Fatalf("tool call: %+v", c)
		}
		var args map[string]any
		if err := json.Unmarshal(c.Message.ToolCalls[0].Function.Arguments, &args); err != nil || args["city"] != "sim" || args["days"] != 1.0 {
			t.Errorf("arguments %s", c.Message.ToolCalls[0].Function.Arguments)
		}
		lines := s.ollamaStream("/api/chat", map[string]any{"model": modelID, "messages": msgs, "tools": tools})
		var calls int
		for _, l := range lines {
			calls += len(l.Message.ToolCalls)
			if len(l.Message.ToolCalls) > 0 && string(l.Message.ToolCalls[0].Function.Arguments) != string(c.Message.ToolCalls[0].Function.Arguments) {
				t.Errorf("streamed arguments %s", l.Message.ToolCalls[0].Function.Arguments)
			}
		}
		if calls != 1 || lines[len(lines)-1].DoneReason != "stop" {
			t.Errorf("streamed tool call: %d calls in %+v", calls, lines)
		}
		// The client sends the call back with compact arguments (as JSON.stringify
		// writes them) and the result; the prefix is reused.
		compact, _ := json.Marshal(args)
		msgs = append(msgs, msg{"role": "assistant", "content": "", "tool_calls": []any{map[string]any{"function": map[string]any{"name": "get_weather", "arguments": json.RawMessage(compact)}}}},
			msg{"role": "tool", "content": `{"temp": 21}`, "tool_name": "get_weather"})
		_, before := s.get("/metrics")
		answer := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "tools": tools, "stream": false})
		_, after := s.get("/metrics")
		if answer.Message.Content == "" || len(answer.Message.ToolCalls) != 0 {
			t.Errorf("answer to the result: %+v", answer)
		}
		if hits := func(m string) string { return grepLines(m, `rkllm_prefix_reuse_total{result="hit"}`) }; hits(after) == hits(before) {
			t.Errorf("the answer to the tool result did not reuse the prefix:\n%s", grepLines(after, "rkllm_prefix"))
		}
	})
}

// TestOllamaThinking: with a thinking template, think true gives the reasoning as
// thinking and the answer as content (as Ollama does), think false switches it off,
// and without think the reply is given whole.
func TestOllamaThinking(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 4096, "chat-template": "deepseek-r1"}})
	msgs := []msg{{"role": "user", "content": "Why?"}}
	v1 := s.chat(msgs, nil)
	whole := v1.content()
	if !strings.HasPrefix(whole, "<think>\n") {
		t.Fatalf("/v1/ reply %q does not open the reasoning", whole)
	}
	reasoning, answer, closed := strings.Cut(strings.TrimPrefix(whole, "<think>\n"), "</think>")
	if !closed {
		reasoning, answer = strings.TrimPrefix(whole, "<think>\n"), ""
	}
	c := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "think": true, "stream": false})
	if c.Message.Thinking != strings.TrimSpace(reasoning) || c.Message.Content != strings.TrimSpace(answer) {
		t.Errorf("think true: thinking %q content %q; the reply is %q", c.Message.Thinking, c.Message.Content, whole)
	}
	lines := s.ollamaStream("/api/chat", map[string]any{"model": modelID, "messages": msgs, "think": true})
	var th, co strings.Builder
	for _, l := range lines {
		th.WriteString(l.Message.Thinking)
		co.WriteString(l.Message.Content)
	}
	if th.String() != c.Message.Thinking || co.String() != c.Message.Content {
		t.Errorf("streamed: thinking %q content %q", th.String(), co.String())
	}
	if c := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": msgs, "stream": false}); c.Message.Content != whole || c.Message.Thinking != "" {
		t.Errorf("without think: %+v", c.Message)
	}
	if g := s.ollama("/api/generate", map[string]any{"model": modelID, "prompt": "Why?", "think": true, "stream": false}); g.Thinking != c.Message.Thinking {
		t.Errorf("generate with think: thinking %q", g.Thinking)
	}
}

// TestOllamaPrefixReuse interleaves /api/chat and /v1/ conversations on a server that
// reuses the KV cache and checks each reply against a server that never does: a
// follow-up over /api/chat reuses the prefix as one over /v1/ does, and never sees
// another conversation's context.
func TestOllamaPrefixReuse(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		reuse := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096}})
		fresh := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096, "prefix-reuse": false}})
		convs := map[string][]msg{"O": {{"role": "user", "content": "Tell me about NPUs."}}, "V": {{"role": "user", "content": "And about edge boards."}}}
		hits := func() string {
			_, m := reuse.get("/metrics")
			return grepLines(m, `rkllm_prefix_reuse_total{result="hit"}`)
		}
		step := 0
		say := func(name string, wantReuse bool) {
			t.Helper()
			step++
			before := hits()
			var got, want string
			if name == "O" {
				body := map[string]any{"model": modelID, "messages": convs[name], "stream": false}
				got, want = reuse.ollama("/api/chat", body).Message.Content, fresh.ollama("/api/chat", body).Message.Content
			} else {
				g, w := reuse.chat(convs[name], nil), fresh.chat(convs[name], nil)
				got, want = g.content(), w.content()
			}
			if got != want {
				t.Errorf("step %d (%s): %q with reuse, %q without", step, name, got, want)
			}
			if reused := hits() != before; reused != wantReuse {
				t.Errorf("step %d (%s): reused %v, want %v", step, name, reused, wantReuse)
			}
			convs[name] = append(convs[name], msg{"role": "assistant", "content": got}, msg{"role": "user", "content": fmt.Sprintf("follow-up %d", step)})
		}
		say("O", false)
		say("O", true)
		say("V", false)
		say("O", false)
		say("O", true)
		say("V", false)
	})
}

// TestOllamaDurations checks the counters against a simulator paced like an NPU (100
// tokens/s prefill, 50 decode): the prefill and generation took at least what the
// pace makes them take, and the whole request at least both.
func TestOllamaDurations(t *testing.T) {
	paced := simulator.FastModel()
	paced.PrefillTokensPerSecond, paced.DecodeTokensPerSecond = 100, 50
	s := startServer(t, "1.3", serverOpts{model: &paced})
	c := s.ollama("/api/chat", map[string]any{"model": modelID, "messages": []msg{{"role": "user", "content": "Hello there, simulated NPU."}}, "stream": false})
	minPrefill := time.Duration(c.PromptEvalCount) * 10 * time.Millisecond
	minEval := time.Duration(c.EvalCount-1) * 20 * time.Millisecond
	if c.PromptEvalCount == 0 || c.EvalCount < 2 || time.Duration(c.PromptEvalDuration) < minPrefill*9/10 || time.Duration(c.EvalDuration) < minEval*9/10 ||
		c.TotalDuration < c.PromptEvalDuration+c.EvalDuration {
		t.Errorf("counters %+v: prefill %v (at least %v), eval %v (at least %v)", c, time.Duration(c.PromptEvalDuration), minPrefill,
			time.Duration(c.EvalDuration), minEval)
	}
}

// TestOllamaLimits: /api/ is under the server's API key, body bound and queue, with
// answers in Ollama's shape.
func TestOllamaLimits(t *testing.T) {
	t.Run("api key", func(t *testing.T) {
		t.Parallel()
		key := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(key, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": key}})
		for _, path := range []string{"/api/tags", "/api/version"} {
			resp, body := s.v1(http.MethodGet, path, "")
			wantOllamaError(t, resp, body, http.StatusUnauthorized, "Authorization: Bearer")
			if resp, body := s.v1(http.MethodGet, path, "", "Authorization", "Bearer s3cret"); resp.StatusCode != http.StatusOK {
				t.Errorf("%s with the key: %d %s", path, resp.StatusCode, body)
			}
		}
		resp, body := s.v1(http.MethodPost, "/api/embed", `{"model":"model","input":"x"}`, "Authorization", "Bearer wrong")
		wantOllamaError(t, resp, body, http.StatusUnauthorized, "unauthorized")
	})
	t.Run("too large", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-request-bytes": 2000}})
		for path, body := range map[string]any{
			"/api/chat":  map[string]any{"model": modelID, "messages": []msg{{"role": "user", "content": strings.Repeat("x", 3000)}}},
			"/api/embed": map[string]any{"model": modelID, "input": strings.Repeat("x", 3000)},
		} {
			resp, b := s.v1(http.MethodPost, path, jsonBody(body))
			wantOllamaError(t, resp, b, http.StatusRequestEntityTooLarge, "2000 bytes")
		}
	})
	t.Run("queue", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-queue": 1}, env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_RUN=1"}})
		_, closeHung := s.openChat(chatBody([]msg{{"role": "user", "content": "hang"}}, map[string]any{"stream": true}))
		s.eventually("the hung run", waitTimeout, func() bool { return len(s.statsEvents("event=hang")) == 1 })
		queued := make(chan ollamaChat, 1)
		go func() {
			resp, body := s.v1(http.MethodPost, "/api/chat", jsonBody(map[string]any{"model": modelID, "messages": []msg{{"role": "user", "content": "queued"}}, "stream": false}))
			var c ollamaChat
			if resp.StatusCode == http.StatusOK {
				_ = json.Unmarshal([]byte(body), &c)
			}
			queued <- c
		}()
		s.eventually("a queued request", waitTimeout, func() bool { _, st := s.status(); return st["queue_depth"] == 1.0 })
		resp, body := s.v1(http.MethodPost, "/api/embed", jsonBody(map[string]any{"model": modelID, "input": "x"}))
		wantOllamaError(t, resp, body, http.StatusTooManyRequests, "busy")
		if resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		closeHung()
		select {
		case c := <-queued:
			if c.Message.Content == "" {
				t.Errorf("the queued chat: %+v", c)
			}
		case <-time.After(waitTimeout):
			t.Fatal("the queued chat did not finish")
		}
	})
}

// TestOllamaInflightBudget: /api/ is under the one budget of bytes in flight. While
// the model is held, long chats over /api/chat are queued as long as what they hold
// fits, then one is answered 429 with Retry-After in Ollama's shape, and so is an
// embeddings request; once the model is free the queued chats are served and the budget
// is whole again.
func TestOllamaInflightBudget(t *testing.T) {
	const budget = 8 << 20
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-inflight-bytes": budget, "max-queue": nil},
		env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_ONCE_FILE=" + filepath.Join(t.TempDir(), "hang-once")}})
	release := holdModel(t, s)
	body := string(chatOf(`{"model":"model","stream":false,"options":{"num_predict":4},"messages":[`, 20000))
	waiting, answers := queueUntilRefused(t, s, func() httpAnswer {
		resp, b := s.v1(http.MethodPost, "/api/chat", body)
		return httpAnswer{resp.StatusCode, resp.Header.Get("Retry-After"), b}
	}, func(a httpAnswer) bool {
		return a.code == http.StatusTooManyRequests && a.retry == "1" && strings.HasPrefix(a.body, `{"error":"The server is busy`) && strings.Contains(a.body, "--max-inflight-bytes")
	})
	inputs := make([]string, 200)
	for i := range inputs {
		inputs[i] = strings.Repeat("y", 20000)
	}
	resp, b := s.v1(http.MethodPost, "/api/embed", jsonBody(map[string]any{"model": modelID, "input": inputs}))
	wantOllamaError(t, resp, b, http.StatusTooManyRequests, "--max-inflight-bytes")
	release()
	for range waiting {
		select {
		case a := <-answers:
			if served := a.code == http.StatusOK || a.code == http.StatusBadRequest && strings.Contains(a.body, "longer than the model's context"); !served {
				t.Errorf("a queued chat: %d %.300s", a.code, a.body)
			}
		case <-time.After(2 * waitTimeout):
			t.Fatal("a queued chat got no answer")
		}
	}
	s.eventually("the budget whole again", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") == 0 })
}
