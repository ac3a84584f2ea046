package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/gateway/auth"
	"github.com/rkllm-operator/rkllm-operator/gateway/httpapi"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
)

// TestOpenWebUIOpenAIConnection sends what Open WebUI's OpenAI connection sends, as
// backend/open_webui/routers/openai.py (open-webui/open-webui, commit
// 004a45f5824bd78635cdc39a071af98873fb50c2) builds it: the model list from GET
// {url}/models with the connection's key as a bearer token (send_get_request); a chat
// from generate_chat_completion: the model's system prompt and parameters applied
// (apply_system_prompt_to_body, apply_model_params_to_body_openai), "stream_options":
// {"include_usage": true} added to a stream, the last message's content turned into a
// text part marked {"cache_control": {"type": "ephemeral"}}
// (apply_ephemeral_cache_control_to_last_message), posted with the key and, with
// ENABLE_FORWARD_USER_INFO_HEADERS, the X-OpenWebUI-User-* and X-OpenWebUI-Chat-Id
// headers (get_headers_and_cookies); and its title task, a request that does not
// stream. Two turns of one chat reach one replica of two, though the first message is
// parts in the first turn and a string in the second.
func TestOpenWebUIOpenAIConnection(t *testing.T) {
	a, b := upstream(t, "qwen", fast(), nil), upstream(t, "qwen", fast(), nil)
	keys, err := auth.Parse([]byte("keys: [{name: open-webui, key: sk-open-webui-0123456789}]"))
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, httpapi.Options{}, func(d *httpapi.Deps) { d.Keys = func() *auth.Keys { return keys } })
	g.set(model("qwen", a, b))
	headers := []string{"Authorization", "Bearer sk-open-webui-0123456789", "X-OpenWebUI-User-Name", "Jane Doe",
		"X-OpenWebUI-User-Id", "8d3e6b1c", "X-OpenWebUI-User-Email", "jane@example.org", "X-OpenWebUI-User-Role", "user",
		"X-OpenWebUI-Chat-Id", "2f1c9e77"}

	if resp, body := g.do(http.MethodGet, "/v1/models", "", headers[:2]...); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"id":"qwen"`) {
		t.Fatalf("models: %d %s", resp.StatusCode, body)
	}
	turn1 := `{"model":"qwen","messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":[{"type":"text","text":"What is an NPU?","cache_control":{"type":"ephemeral"}}]}],` +
		`"stream":true,"temperature":0.7,"top_p":0.9,"max_tokens":16,"stream_options":{"include_usage":true}}`
	reply := openWebUIStream(t, g, turn1, headers)
	turn2 := fmt.Sprintf(`{"model":"qwen","messages":[{"role":"system","content":"You are a helpful assistant."},`+
		`{"role":"user","content":"What is an NPU?"},{"role":"assistant","content":%q},`+
		`{"role":"user","content":[{"type":"text","text":"And on the RK3588?","cache_control":{"type":"ephemeral"}}]}],`+
		`"stream":true,"temperature":0.7,"top_p":0.9,"max_tokens":16,"stream_options":{"include_usage":true}}`, reply)
	openWebUIStream(t, g, turn2, headers)
	served := 0
	for _, s := range []*serverproc.Server{a, b} {
		if n, _ := s.Metric(`rkllm_openai_requests_total{code="200",endpoint="chat.completions"}`); n > 0 {
			served++
		}
	}
	if served != 1 {
		t.Errorf("the chat's two turns went to %d replicas, want one", served)
	}

	title := `{"model":"qwen","messages":[{"role":"user","content":"### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Chat History:\n<chat_history>\nUSER: What is an NPU?\n</chat_history>"}],"stream":false,"max_tokens":1000}`
	resp, body := g.do(http.MethodPost, "/v1/chat/completions", title, headers...)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"object":"chat.completion"`) {
		t.Errorf("title task: %d %s", resp.StatusCode, body)
	}
}

// openWebUIStream posts a streamed chat and reads it as Open WebUI's stream_wrapper
// does: data lines, the usage chunk, [DONE]. It returns the reply.
func openWebUIStream(t *testing.T, g *gw, body string, headers []string) string {
	t.Helper()
	resp := g.open(http.MethodPost, "/v1/chat/completions", body, headers...)
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("chat: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var reply strings.Builder
	usage, done := false, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		switch {
		case !ok:
			continue
		case data == "[DONE]":
			done = true
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("chunk %q: %v", data, err)
		}
		for _, c := range chunk.Choices {
			reply.WriteString(c.Delta.Content)
		}
		if chunk.Usage != nil && chunk.Usage.CompletionTokens > 0 {
			usage = true
		}
	}
	if !done || !usage || reply.Len() == 0 {
		t.Errorf("stream: done %v, usage %v, reply %q", done, usage, reply.String())
	}
	return reply.String()
}

// openaiNodeVersion is the official OpenAI Node.js client the test installs, as
// cmd/rkllm-server's TestOpenAINodeClient does.
const openaiNodeVersion = "6.49.0"

// TestOpenAINodeClientThroughGateway runs test/openai-node/gateway.test.mjs, written
// with the official `openai` npm package, against the gateway in front of two models:
// it lists both, chats with each (streamed and not), streams through an activation (the
// client reads past the gateway's comments), and gets the gateway's 404 and 503 as the
// client's errors. It needs Node.js, npm and the npm registry, so it runs only when
// RKLLM_OPENAI_NODE_TEST is set (make test-openai-node).
func TestOpenAINodeClientThroughGateway(t *testing.T) {
	if os.Getenv("RKLLM_OPENAI_NODE_TEST") == "" {
		t.Skip("set RKLLM_OPENAI_NODE_TEST=1 (make test-openai-node) to install the openai npm package and run its test")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: make deps installs Debian's nodejs and npm", tool)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts",
		"--legacy-peer-deps", "--loglevel=error", "openai@"+openaiNodeVersion)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install openai@%s: %v\n%s", openaiNodeVersion, err, out)
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "test", "openai-node", "gateway.test.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gateway.test.mjs"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	chatSrv, coderSrv := upstream(t, "chat", fast(), nil), upstream(t, "coder", fast(), nil)
	keys, err := auth.Parse([]byte("keys: [{name: node, key: node-test-key-0123456789}]"))
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, httpapi.Options{KeepAlive: 50 * time.Millisecond}, func(d *httpapi.Deps) { d.Keys = func() *auth.Keys { return keys } })
	coldCoder, full, busy := model("coder"), model("full"), model("busy")
	coldCoder.Replicas, full.Replicas, busy.Replicas = 0, 0, 0
	g.set(model("chat", chatSrv), coldCoder, full, busy)
	noNPU := func(name string) error {
		return &placement.NoCapacityError{Model: name, Nodes: "on the 1 node it may run on, n1: 1 of 1 in use",
			Reasons: []string{"chat is busy (1 requests in flight)"}}
	}
	// The scaler's part: coder comes up, and busy fails, once the client has been sent a
	// comment while it waits; full fails at once.
	waitComment := func(name string) {
		for c := range g.comments {
			if strings.Contains(c, name) {
				return
			}
		}
	}
	go func() {
		for m := range g.scaler.started {
			switch m.Name {
			case "coder":
				waitComment("coder")
				g.set(model("chat", chatSrv), model("coder", coderSrv), full, busy)
				g.scaler.finish(m.Key, nil)
			case "busy":
				waitComment("busy")
				g.scaler.finish(m.Key, noNPU("busy"))
			case "full":
				g.scaler.finish(m.Key, noNPU("full"))
			}
		}
	}()
	run := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", "gateway.test.mjs")
	run.Dir = dir
	run.Env = append(os.Environ(), "OPENAI_BASE_URL="+g.url+"/v1", "OPENAI_API_KEY=node-test-key-0123456789")
	out, err := run.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	if err != nil {
		t.Fatalf("the OpenAI Node.js client's test through the gateway failed: %v", err)
	}
}
