package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// Regression tests of issue 12's input items (1, 11), each over the transport it was
// found on and the other one: a request the runtime would misread is refused with
// -32602 naming the member, and the worker that would have crashed keeps serving.

// learnWidth starts the server as it runs by default: the embedding width learned at
// load, not given by the harness.
var learnWidth = map[string]any{"embedding-width": nil}

// viaBoth sends one message over HTTP and over the Unix socket and returns the answers.
func viaBoth(s *server, sock *rawClient, msg string) map[string][]response {
	return map[string][]response{"http": s.postRaw(msg), "socket": sock.exchange(msg)}
}

// sameWorker fails unless the worker that served the requests is the one that started.
func sameWorker(t *testing.T, s *server, pid any) {
	t.Helper()
	if code, st := s.status(); code != http.StatusOK || st["worker_pid"] != pid || st["worker_restarts"] != 0.0 {
		t.Errorf("after the requests: %d %v, want worker %v still serving, never restarted", code, st, pid)
	}
}

// TestOverflowingCountsAreRefused: item 1. Counts whose products wrap, counts beyond
// the loaded model's max_context_len and embeddings whose rows are not the model's
// width, in every input type that carries a count, answer -32602 naming the member,
// over HTTP and the socket, on both ABIs; the worker never restarts, and well-formed
// embeddings still run.
func TestOverflowingCountsAreRefused(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: learnWidth})
		_, st := s.status()
		pid, w := st["worker_pid"], s.model.HiddenSize
		if st["embed_width"] != float64(w) {
			t.Fatalf("readyz embed_width %v, want the model's hidden size %d learned at load", st["embed_width"], w)
		}
		floats := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat("0.5,", n), ",") + "]" }
		image := func(nImage int, nTokens string, embed string) string {
			return run(fmt.Sprintf(`{"multimodal_input":{"prompt":"%s","n_image":%d,"n_image_tokens":%s,"image_embed":%s}}`,
				strings.Repeat("<image>", nImage), nImage, nTokens, embed))
		}
		cases := []struct{ name, msg, field string }{
			{"image rows wrap to -2", image(2, "9223372036854775807", "[1,2]"), "input.multimodal_input.n_image_tokens"},
			{"image rows wrap to 0", image(4, "4611686018427387904", "[1,2]"), "input.multimodal_input.n_image_tokens"},
			{"image count beyond size_t's sign", image(1, "-1", floats(w)), "input.multimodal_input.n_image_tokens"},
			{"image rows one float wide", image(2, "1", "[1,2]"), "input.multimodal_input.image_embed"},
			{"image over max_context_len", image(1, "600", floats(600*w)), "input.multimodal_input.n_image_tokens"},
			{"image tags and count differ", run(`{"multimodal_input":{"prompt":"<image>","n_image":2,"n_image_tokens":1,"image_embed":` + floats(2*w) + `}}`), "input.multimodal_input.n_image"},
			{"embedding rows one float wide", run(`{"embed_input":{"embed":[1,2,3],"n_tokens":3}}`), "input.embed_input.embed"},
			{"embedding rows a float short", run(`{"embed_input":{"embed":` + floats(2*w-2) + `,"n_tokens":2}}`), "input.embed_input.embed"},
			{"embedding over max_context_len", run(`{"embed_input":{"embed":` + floats(600*w) + `,"n_tokens":600}}`), "input.embed_input.n_tokens"},
			{"token ids over max_context_len", run(`{"token_input":{"input_ids":[` + strings.TrimSuffix(strings.Repeat("300,", 600), ",") + `]}}`), "input.token_input.input_ids"},
			{"more inputs than n_batch", run(`[{"prompt_input":"a"},{"prompt_input":"b"}]`), "input"},
		}
		if abi == "1.3" {
			video := func(nVideo int, frames, tokens, embed string) string {
				return run(fmt.Sprintf(`{"multimodal_input":{"prompt":"%s","n_video":%d,"n_frame_per_video":%s,"n_frame_tokens":%s,"video_embed":%s}}`,
					strings.Repeat("<video>", nVideo), nVideo, frames, tokens, embed))
			}
			cases = append(cases, []struct{ name, msg, field string }{
				{"video rows wrap", video(2, "4611686018427387904", "2", "[1]"), "input.multimodal_input.n_frame_per_video"},
				{"video rows one float wide", video(1, "2", "1", "[1,2]"), "input.multimodal_input.video_embed"},
				{"images and video over max_context_len", run(`{"multimodal_input":{"prompt":"<image><video>","n_image":1,"n_image_tokens":300,"image_embed":` +
					floats(300*w) + `,"n_video":1,"n_frame_per_video":1,"n_frame_tokens":300,"video_embed":` + floats(300*w) + `}}`), "input.multimodal_input"},
			}...)
		}
		sock := s.rawDial()
		for _, c := range cases {
			for transport, resps := range viaBoth(s, sock, c.msg) {
				if len(resps) != 1 || resps[0].Error == nil || resps[0].Error.Code != -32602 || resps[0].Error.Data["field"] != c.field {
					t.Errorf("%s over %s: %+v, want -32602 naming %s", c.name, transport, resps, c.field)
				}
			}
		}
		// Cross-attention caches are rows of the model's width too (admin: the socket).
		xattn := req("rkllm.set_cross_attn_params", `{"cross_attn_params":{"encoder_k_cache":[1,2],"encoder_v_cache":[1,2],"encoder_mask":[1,1],"encoder_pos":[0,1],"num_tokens":2}}`)
		if r := sock.call1(xattn); r.Error == nil || r.Error.Code != -32602 || r.Error.Data["field"] != "cross_attn_params.encoder_k_cache" {
			t.Errorf("cross-attention caches of rows one float wide: %+v", r.Error)
		}
		// rkllm_clear_kv_cache reads one start and one end per batch entry.
		clear := req("rkllm.clear_kv_cache", `{"keep_system_prompt":1,"start_pos":[0,0,0],"end_pos":[1,1,1]}`)
		if r := sock.call1(clear); r.Error == nil || r.Error.Code != -32602 || r.Error.Data["field"] != "start_pos" {
			t.Errorf("three KV-cache ranges for n_batch 1: %+v", r.Error)
		}
		sameWorker(t, s, pid)

		// Rows of exactly the width run, over both transports, and come back as hidden
		// states of that width.
		good := req("rkllm.run", `{"input":{"embed_input":{"embed":`+floats(2*w)+`,"n_tokens":2}},"infer_params":{"mode":"RKLLM_INFER_GET_LAST_HIDDEN_LAYER"}}`)
		for transport, resps := range viaBoth(s, sock, good) {
			var res runResult
			if len(resps) != 1 || resps[0].Error != nil || json.Unmarshal(resps[0].Result, &res) != nil ||
				res.LastHiddenLayer == nil || res.LastHiddenLayer.EmbdSize != w {
				t.Errorf("embedding of 2 rows of width %d over %s: %+v", w, transport, resps)
			}
		}
		sameWorker(t, s, pid)
	})
}

// TestEmbeddingWidth: the width is learned at load from one hidden-layer run (which
// leaves the KV cache empty), or taken from --embedding-width without any run; when it
// cannot be learned, prompts still run and embeddings are refused, saying what to set.
func TestEmbeddingWidth(t *testing.T) {
	t.Run("learned", func(t *testing.T) {
		t.Parallel()
		m := simulator.FastModel()
		m.HiddenSize = 24
		s := startServer(t, "1.3", serverOpts{config: learnWidth, model: &m})
		if _, st := s.status(); st["embed_width"] != 24.0 {
			t.Errorf("readyz embed_width %v, want 24", st["embed_width"])
		}
		if runs := s.statsEvents("event=run"); len(runs) != 1 || !strings.Contains(runs[0], "outcome=finished") {
			t.Errorf("runs at load: %q, want the one that learns the width", runs)
		}
		c := s.dial()
		if sizes := ok[map[string][]int](t, c.call("rkllm.get_kv_cache_size", nil)); len(sizes["cache_sizes"]) != 1 || sizes["cache_sizes"][0] != 0 {
			t.Errorf("KV cache after load: %v, want empty", sizes)
		}
	})
	t.Run("configured", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{}) // the harness gives --embedding-width
		if runs := s.statsEvents("event=run"); len(runs) != 0 {
			t.Errorf("runs at load with --embedding-width: %q, want none", runs)
		}
		w := s.model.HiddenSize
		emb := make([]float32, w)
		ok[runResult](t, s.http("rkllm.run", map[string]any{"input": map[string]any{"embed_input": map[string]any{"embed": emb, "n_tokens": 1}}}))
	})
	t.Run("unknown", func(t *testing.T) {
		t.Parallel()
		// The run that would learn it (the first on the handle) fails in the runtime.
		s := startServer(t, "1.3", serverOpts{config: learnWidth, env: []string{"RKLLM_SIM_RUN_ERROR=-5", "RKLLM_SIM_FAULT_RUN=1"}})
		if _, st := s.status(); st["embed_width"] != nil {
			t.Errorf("readyz embed_width %v, want none", st["embed_width"])
		}
		ok[runResult](t, s.http("rkllm.run", prompt("Hello")))
		e := fails(t, s.http("rkllm.run", map[string]any{"input": map[string]any{"embed_input": map[string]any{"embed": make([]float32, 16), "n_tokens": 1}}}), -32602)
		if e.Data["field"] != "input.embed_input.embed" || !strings.Contains(e.Message, "--embedding-width") {
			t.Errorf("an embedding with the width unknown: %+v", e)
		}
	})
}

// TestVocabularySize: token ids index the model's vocabulary, which the runtime would
// read past. The size is learned at load from one logits run (which leaves the KV cache
// empty), or taken from --vocab-size; an id past it, in any entry of a batch, is
// -32602 naming the id over both transports, the worker untouched; when the size
// cannot be learned, prompts still run and token inputs are refused, saying what to
// set.
func TestVocabularySize(t *testing.T) {
	t.Run("learned", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.2", serverOpts{config: map[string]any{"vocab-size": nil}})
		v := s.model.VocabSize()
		_, st := s.status()
		if st["vocab_size"] != float64(v) {
			t.Errorf("readyz vocab_size %v, want the model's %d learned at load", st["vocab_size"], v)
		}
		if runs := s.statsEvents("event=run"); len(runs) != 1 || !strings.Contains(runs[0], "outcome=finished") {
			t.Errorf("runs at load: %q, want the one that learns the vocabulary size", runs)
		}
		c := s.dial()
		if sizes := ok[map[string][]int](t, c.call("rkllm.get_kv_cache_size", nil)); len(sizes["cache_sizes"]) != 1 || sizes["cache_sizes"][0] != 0 {
			t.Errorf("KV cache after load: %v, want empty", sizes)
		}
		ids := func(v ...int) string { b, _ := json.Marshal(v); return string(b) }
		sock := s.rawDial()
		for _, c := range []struct{ msg, field string }{
			{run(`{"token_input":{"input_ids":` + ids(300, v) + `}}`), "input.token_input.input_ids[1]"},
			{run(`{"token_input":{"input_ids":` + ids(v+1000) + `}}`), "input.token_input.input_ids[0]"},
			{run(`{"token_input":{"input_ids":` + ids(math.MaxInt32) + `}}`), "input.token_input.input_ids[0]"},
			{run(`[{"token_input":{"input_ids":` + ids(0, 1, v) + `}}]`), "input[0].token_input.input_ids[2]"},
		} {
			for transport, resps := range viaBoth(s, sock, c.msg) {
				if len(resps) != 1 || resps[0].Error == nil || resps[0].Error.Code != -32602 || resps[0].Error.Data["field"] != c.field ||
					!strings.Contains(resps[0].Error.Message, fmt.Sprintf("vocab_size %d", v)) {
					t.Errorf("%s over %s: %+v, want -32602 naming %s and the vocabulary", c.msg, transport, resps, c.field)
				}
			}
		}
		ok[runResult](t, s.http("rkllm.run", map[string]any{"input": map[string]any{"token_input": map[string]any{"input_ids": []int{0, v - 1}}}}))
		sameWorker(t, s, st["worker_pid"])
	})
	t.Run("configured", func(t *testing.T) {
		t.Parallel()
		// A smaller vocabulary than the model's: the server takes the flag's word.
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"vocab-size": 300}})
		if runs := s.statsEvents("event=run"); len(runs) != 0 {
			t.Errorf("runs at load with --vocab-size: %q, want none", runs)
		}
		if _, st := s.status(); st["vocab_size"] != 300.0 {
			t.Errorf("readyz vocab_size %v, want 300", st["vocab_size"])
		}
		ok[runResult](t, s.http("rkllm.run", map[string]any{"input": map[string]any{"token_input": map[string]any{"input_ids": []int{299}}}}))
		fails(t, s.http("rkllm.run", map[string]any{"input": map[string]any{"token_input": map[string]any{"input_ids": []int{300}}}}), -32602)
	})
	t.Run("unknown", func(t *testing.T) {
		t.Parallel()
		// The run that would learn it (the first on the handle) fails in the runtime.
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"vocab-size": nil}, env: []string{"RKLLM_SIM_RUN_ERROR=-5", "RKLLM_SIM_FAULT_RUN=1"}})
		if _, st := s.status(); st["vocab_size"] != nil {
			t.Errorf("readyz vocab_size %v, want none", st["vocab_size"])
		}
		ok[runResult](t, s.http("rkllm.run", prompt("Hello")))
		e := fails(t, s.http("rkllm.run", map[string]any{"input": map[string]any{"token_input": map[string]any{"input_ids": []int{300}}}}), -32602)
		if e.Data["field"] != "input.token_input.input_ids" || !strings.Contains(e.Message, "--vocab-size") {
			t.Errorf("a token with the vocabulary size unknown: %+v", e)
		}
	})
}

// TestNULInStrings: item 11. A \u0000 in any string the runtime reads as a C string
// (which would end there) is -32602 naming the member, over both transports, and a
// 400 naming the member on the OpenAI and Ollama APIs.
func TestNULInStrings(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	_, st := s.status()
	sock := s.rawDial()
	for _, c := range []struct{ msg, field string }{
		{run(`{"prompt_input":"a\u0000b"}`), "input.prompt_input"},
		{run(`[{"prompt_input":"a\u0000"}]`), "input[0].prompt_input"},
		{run(`{"role":"user\u0000","prompt_input":"a"}`), "input.role"},
		{run(`{"multimodal_input":{"prompt":"x\u0000"}}`), "input.multimodal_input.prompt"},
		{run(`{"multimodal_input":{"prompt":"x","image_start":"<\u0000>"}}`), "input.multimodal_input.image_start"},
		{run(`{"multimodal_input":{"prompt":"x","video_content":"\u0000"}}`), "input.multimodal_input.video_content"},
		{runWith(`{"lora_params":{"lora_adapter_name":"chat\u0000"}}`), "infer_params.lora_params.lora_adapter_name"},
	} {
		for transport, resps := range viaBoth(s, sock, c.msg) {
			if len(resps) != 1 || resps[0].Error == nil || resps[0].Error.Code != -32602 || resps[0].Error.Data["field"] != c.field {
				t.Errorf("%s over %s: %+v, want -32602 naming %s", c.msg, transport, resps, c.field)
			}
		}
	}
	// Admin methods, over the socket.
	for _, c := range []struct{ msg, field string }{
		{req("rkllm.load_lora", `{"lora_adapter":{"lora_adapter_path":"chat.lora","lora_adapter_name":"c\u0000"}}`), "lora_adapter.lora_adapter_name"},
		{req("rkllm.load_lora", `{"lora_adapter":{"lora_adapter_path":"chat.lora\u0000x","lora_adapter_name":"c"}}`), "lora_adapter.lora_adapter_path"},
		{req("rkllm.set_chat_template", `{"system_prompt":"s\u0000","prompt_prefix":"","prompt_postfix":""}`), "system_prompt"},
		{req("rkllm.set_chat_template", `{"system_prompt":"","prompt_prefix":"","prompt_postfix":"\u0000"}`), "prompt_postfix"},
		{req("rkllm.set_function_tools", `{"system_prompt":"s","tools":"[{\"name\":\"f\u0000\"}]","tool_response_str":"r"}`), "tools"},
		{req("rkllm.set_function_tools", `{"system_prompt":"s","tools":[],"tool_response_str":"r\u0000"}`), "tool_response_str"},
		// A NUL inside the tools' JSON (an escape there): the runtime decodes it into the
		// tool's name, a C string again.
		{req("rkllm.set_function_tools", `{"system_prompt":"s","tools":"[{\"type\":\"function\",\"function\":{\"name\":\"f\\u0000g\"}}]","tool_response_str":"r"}`), "tools"},
		{req("rkllm.set_function_tools", `{"system_prompt":"s","tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"a\u0000":{}}}}}],"tool_response_str":"r"}`), "tools"},
		{req("rkllm.load_prompt_cache", `{"prompt_cache_path":"c\u0000"}`), "prompt_cache_path"},
		{req("rkllm.init", `{"param":{"model_path":"model.rkllm\u0000"}}`), "param.model_path"},
	} {
		if r := sock.call1(c.msg); r.Error == nil || r.Error.Code != -32602 || r.Error.Data["field"] != c.field {
			t.Errorf("%s: %+v, want -32602 naming %s", c.msg, r.Error, c.field)
		}
	}
	// The OpenAI API renders messages into the prompt, a C string too.
	resp, body := s.postTo("/v1/chat/completions", `{"model":"model","messages":[{"role":"user","content":"hi"},{"role":"user","content":"a\u0000b"}]}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"param":"messages[1].content"`) {
		t.Errorf("/v1/chat/completions with a NUL: %d %s", resp.StatusCode, body)
	}
	// So are its tools, handed to the runtime as JSON whose strings it reads as C strings.
	resp, body = s.postTo("/v1/chat/completions", `{"model":"model","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","description":"a\u0000b"}}]}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"param":"tools[0]"`) {
		t.Errorf("/v1/chat/completions with a NUL in a tool: %d %s", resp.StatusCode, body)
	}
	// Every text member of every API that may reach the prompt: 400 naming the member.
	for _, c := range []struct{ path, body, param string }{
		{"/v1/completions", `{"model":"model","prompt":"a\u0000b"}`, "prompt"},
		{"/v1/chat/completions", `{"model":"model","messages":[{"role":"assistant","content":"","tool_calls":[{"id":"c","type":"function","function":{"name":"f\u0000","arguments":"{}"}}]},{"role":"user","content":"x"}]}`, "messages[0].tool_calls[0].function"},
		{"/v1/embeddings", `{"model":"model","input":["a","b\u0000"]}`, "input[1]"},
		{"/api/generate", `{"model":"model","prompt":"a\u0000b","stream":false}`, "prompt"},
		{"/api/generate", `{"model":"model","prompt":"a\u0000b","raw":true,"stream":false}`, "prompt"},
		{"/api/generate", `{"model":"model","prompt":"a","system":"s\u0000","stream":false}`, "system"},
		{"/api/chat", `{"model":"model","messages":[{"role":"user","content":"hi"},{"role":"user","content":"a\u0000b"}],"stream":false}`, "messages[1].content"},
		{"/api/chat", `{"model":"model","messages":[{"role":"tool","content":"r","tool_name":"f\u0000"}],"stream":false}`, "messages[0].tool_name"},
		{"/api/chat", `{"model":"model","messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f\u0000","arguments":{}}}]},{"role":"user","content":"x"}],"stream":false}`, "messages[0].tool_calls[0].function"},
		{"/api/chat", `{"model":"model","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"a\u0000":{}}}}}],"stream":false}`, "tools[0]"},
		{"/api/embed", `{"model":"model","input":"a\u0000"}`, "input"},
		{"/api/embeddings", `{"model":"model","prompt":"a\u0000"}`, "prompt"},
	} {
		resp, body := s.postTo(c.path, c.body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `Invalid '`+c.param+`'`) {
			t.Errorf("%s %s: %d %s, want 400 naming %s", c.path, c.body, resp.StatusCode, body, c.param)
		}
	}
	sameWorker(t, s, st["worker_pid"])
}

// waitWorker waits for a server started without a model to have its worker up.
func (s *server) waitWorker() {
	s.t.Helper()
	s.eventually("the worker", waitTimeout, func() bool { resp, _ := s.get("/healthz"); return resp.StatusCode == http.StatusOK })
}

// postTo posts a JSON body to a path of the HTTP listener.
func (s *server) postTo(path, body string) (*http.Response, string) {
	s.t.Helper()
	req, _ := http.NewRequestWithContext(s.t.Context(), http.MethodPost, s.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("POST %s: %v", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestNonRegularFiles: item 11. A FIFO, a folder or a socket in --model-dir named as a
// model, an adapter or a prompt cache is refused at once, naming the member and what
// the file is (a FIFO used to block rkllm_init until --init-timeout); --model naming
// one stops the server at start with the reason.
func TestNonRegularFiles(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{noModel: true, noWait: true, config: map[string]any{"init-timeout": "10m"}})
	s.waitWorker()
	fifo := filepath.Join(s.dir, "pipe.rkllm")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(s.dir, "folder.rkllm"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "unix", filepath.Join(s.dir, "s.rkllm"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	sock := s.rawDial()
	for _, c := range []struct{ msg, field, kind string }{
		{req("rkllm.init", `{"param":{"model_path":"pipe.rkllm"}}`), "param.model_path", "named pipe (FIFO)"},
		{req("rkllm.init", `{"param":{"model_path":"folder.rkllm"}}`), "param.model_path", "a folder"},
		{req("rkllm.init", `{"param":{"model_path":"s.rkllm"}}`), "param.model_path", "a socket"},
	} {
		if r := sock.call1(c.msg); r.Error == nil || r.Error.Code != -32602 || r.Error.Data["field"] != c.field || !strings.Contains(r.Error.Message, c.kind) {
			t.Errorf("%s: %+v, want -32602 naming %s as %s", c.msg, r.Error, c.field, c.kind)
		}
	}
	ok[int](t, sock.call1(req("rkllm.init", `{"param":{"model_path":"model.rkllm"}}`)))
	for _, c := range []struct{ msg, field string }{
		{req("rkllm.load_lora", `{"lora_adapter":{"lora_adapter_path":"pipe.rkllm","lora_adapter_name":"p"}}`), "lora_adapter.lora_adapter_path"},
		{req("rkllm.load_prompt_cache", `{"prompt_cache_path":"pipe.rkllm"}`), "prompt_cache_path"},
		{runWith(`{"prompt_cache_params":{"save_prompt_cache":1,"prompt_cache_path":"pipe.rkllm"}}`), "infer_params.prompt_cache_params.prompt_cache_path"},
	} {
		if r := sock.call1(c.msg); r.Error == nil || r.Error.Code != -32602 || r.Error.Data["field"] != c.field || !strings.Contains(r.Error.Message, "FIFO") {
			t.Errorf("%s: %+v, want -32602 naming %s", c.msg, r.Error, c.field)
		}
	}

	// At start: the configured model is checked before any worker starts.
	cmd := exec.CommandContext(t.Context(), serverBinary(t, false), "serve", "--model", fifo, "--runtime-lib", simLib(t, "1.3"), "--listen", "127.0.0.1:0", "--probe-listen", "") //nolint:gosec // the test's own binary
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--model: "+fifo+" is a named pipe (FIFO), not a regular file") {
		t.Errorf("serve --model FIFO: %v\n%s", err, out)
	}
}

// TestInitTimeoutMessage: item 11. A call the worker never returns from is killed
// without an abort being sent, and the error says so (it used to say an abort had not
// stopped the runtime).
func TestInitTimeoutMessage(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{noModel: true, noWait: true, config: map[string]any{"init-timeout": "300ms"},
		env: []string{"RKLLM_SIM_INIT_DELAY_MS=600000"}})
	s.waitWorker()
	e := fails(t, s.dial().call("rkllm.init", map[string]any{"param": map[string]any{"model_path": "model.rkllm"}}), -32005)
	if strings.Contains(e.Message, "abort") || !strings.Contains(e.Message, "rkllm_init did not return within 300ms); the worker was killed and is restarting") {
		t.Errorf("init timeout: %q", e.Message)
	}
}

// TestBatchIDsByValue: item 11. Ids a client decodes into the same number (0 and -0,
// two numbers too large for a double) are duplicates in a batch, over both transports;
// ids it can tell apart are not.
func TestBatchIDsByValue(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	sock := s.rawDial()
	isRunning := func(id string) string {
		return `{"jsonrpc":"2.0","id":` + id + `,"method":"rkllm.is_running"}`
	}
	// The answers hold ids no float64 can hold: read them as they were sent.
	answers := func(transport, batch string) []struct {
		ID    json.RawMessage `json:"id"`
		Error *rpcError       `json:"error"`
	} {
		var line []byte
		if transport == "http" {
			_, body := s.post(batch)
			line = []byte(body)
		} else {
			_ = sock.nc.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := sock.nc.Write([]byte(batch + "\n")); err != nil {
				t.Fatal(err)
			}
			var err error
			if line, err = sock.br.ReadBytes('\n'); err != nil {
				t.Fatal(err)
			}
		}
		var out []struct {
			ID    json.RawMessage `json:"id"`
			Error *rpcError       `json:"error"`
		}
		if err := json.Unmarshal(line, &out); err != nil {
			t.Fatalf("answer %s: %v", line, err)
		}
		return out
	}
	for _, transport := range []string{"http", "socket"} {
		for _, ids := range [][2]string{{"0", "-0"}, {"1e999999", "2e999999"}, {"1", "1.0"}, {"-1e400", "-7e999"}, {"9007199254740993", "9007199254740992"}} {
			resps := answers(transport, "["+isRunning(ids[0])+","+isRunning(ids[1])+"]")
			if len(resps) != 2 {
				t.Errorf("ids %v over %s: %d responses", ids, transport, len(resps))
				continue
			}
			for i, r := range resps {
				if string(r.ID) != ids[i] || r.Error == nil || r.Error.Code != -32600 || !strings.Contains(r.Error.Message, "its own id") {
					t.Errorf("ids %v over %s: answer %d is %s %+v, want -32600 for both, with the id as sent", ids, transport, i, r.ID, r.Error)
				}
			}
		}
		for _, r := range answers(transport, "["+isRunning("1")+","+isRunning(`"1"`)+","+isRunning("1e999999")+","+isRunning("-1e999999")+"]") {
			if r.Error != nil {
				t.Errorf("distinct ids over %s: %s %+v", transport, r.ID, r.Error)
			}
		}
	}
}

// TestContentLengthOverLimit: item 11. A request head that declares a body over
// --max-request-bytes is answered 413 at once, on /rpc (-32008) and /v1/, though the
// body is never sent and --body-read-timeout is an hour.
func TestContentLengthOverLimit(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"body-read-timeout": "1h"}})
	for _, path := range []string{"/rpc", "/v1/chat/completions"} {
		nc, err := dialNet("tcp", strings.TrimPrefix(s.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		_, _ = fmt.Fprintf(nc, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", path, int64(math.MaxInt32))
		_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			t.Fatalf("%s: no answer to a head declaring 2 GB within %s: %v", path, waitTimeout, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || (path == "/rpc" && !strings.Contains(string(body), `"code":-32008`)) {
			t.Errorf("%s: %d %s, want 413", path, resp.StatusCode, body)
		}
	}
}
