package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestEveryMethod calls each method over both transports and checks what a client
// would: results, the admin rule (HTTP is not admin by default) and path confinement.
func TestEveryMethod(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		c := s.dial()

		// rkllm.get_constants over both transports.
		for _, r := range []response{s.http("rkllm.get_constants", nil), c.call("rkllm.get_constants", nil)} {
			k := ok[map[string]any](t, r)
			if k["abi"] != abi || k["RKLLMInputType"].(map[string]any)["RKLLM_INPUT_MULTIMODAL"] != 3.0 ||
				k["RKLLMInferMode"].(map[string]any)["RKLLM_INFER_GET_LOGITS"] != 2.0 ||
				k["LLMCallState"].(map[string]any)["RKLLM_RUN_WAITING"] != 1.0 || k["CPUMask"].(map[string]any)["CPU7"] != 128.0 {
				t.Errorf("constants %v", k)
			}
		}

		// rkllm.createDefaultParam: the runtime's defaults, with the ABI's own fields.
		def := ok[map[string]any](t, s.http("rkllm.createDefaultParam", nil))
		if def["top_k"] != 40.0 || def["top_p"] != 0.9 || def["max_context_len"] != 512.0 || def["extend_param"].(map[string]any)["enabled_cpus_mask"] != 240.0 {
			t.Errorf("defaults %v", def)
		}
		_, hasIgnoreEOS := def["ignore_eos_token"]
		_, hasImgStart := def["img_start"]
		if hasIgnoreEOS != (abi == "1.3") || hasImgStart != (abi == "1.2") {
			t.Errorf("ABI %s defaults have ignore_eos_token %v, img_start %v", abi, hasIgnoreEOS, hasImgStart)
		}

		// rkllm.is_running and rkllm.abort with nothing to do.
		if n := ok[int](t, s.http("rkllm.is_running", nil)); n != 0 {
			t.Errorf("is_running idle = %d", n)
		}
		if a := ok[map[string][]string](t, c.call("rkllm.abort", nil)); len(a["aborted"]) != 0 {
			t.Errorf("abort with nothing running: %v", a)
		}
		fails(t, s.http("rkllm.abort", nil), -32602) // HTTP needs a request_id
		fails(t, s.http("rkllm.abort", map[string]any{"request_id": "r-999"}), -32602)

		// rkllm.run over both transports gives the same reply.
		viaHTTP := ok[runResult](t, s.http("rkllm.run", prompt("Tell me about the sea.")))
		viaSocket := ok[runResult](t, c.call("rkllm.run", prompt("Tell me about the sea.")))
		if viaHTTP.Text == "" || viaHTTP.Text != viaSocket.Text || viaHTTP.TokenCount != len(viaHTTP.TokenIDs) || viaHTTP.TokenCount == 0 {
			t.Errorf("run over HTTP %+v\nover the socket %+v", viaHTTP, viaSocket)
		}
		if viaHTTP.FinishReason != "stop" || viaHTTP.Perf.GenerateTokens != viaHTTP.TokenCount || viaHTTP.Perf.MemoryUsageMB != 1024 {
			t.Errorf("run result %+v", viaHTTP)
		}

		// State-changing methods are refused over HTTP and allowed on the socket.
		admin := []struct {
			method string
			params any
		}{
			{"rkllm.set_chat_template", map[string]any{"system_prompt": "", "prompt_prefix": "", "prompt_postfix": ""}},
			{"rkllm.load_lora", map[string]any{"lora_adapter": map[string]any{"lora_adapter_path": "chat.lora", "lora_adapter_name": "chat", "scale": 1.0}}},
			{"rkllm.set_function_tools", map[string]any{"system_prompt": "You may call tools.", "tools": `[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]`, "tool_response_str": "tool_response"}},
			{"rkllm.clear_kv_cache", map[string]any{"keep_system_prompt": 1}},
			{"rkllm.release_prompt_cache", nil},
		}
		for _, m := range admin {
			e := fails(t, s.http(m.method, m.params), -32007)
			if !strings.Contains(e.Message, "Unix socket") {
				t.Errorf("%s over HTTP: %s", m.method, e.Message)
			}
			if n := ok[int](t, c.call(m.method, m.params)); n != 0 {
				t.Errorf("%s = %d", m.method, n)
			}
		}
		fails(t, s.http("rkllm.destroy", nil), -32007)
		fails(t, s.http("rkllm.init", map[string]any{"param": map[string]any{"model_path": "model.rkllm"}}), -32007)

		// The LoRA adapter changes the reply; the tools make the model call one.
		plain := ok[runResult](t, c.call("rkllm.run", prompt("Hello")))
		withLora := prompt("Hello")
		withLora["infer_params"] = map[string]any{"lora_params": map[string]any{"lora_adapter_name": "chat"}}
		lora := ok[runResult](t, c.call("rkllm.run", withLora))
		if lora.Text == plain.Text {
			t.Errorf("the LoRA adapter did not change the reply %q", plain.Text)
		}
		bad := prompt("Hello")
		bad["infer_params"] = map[string]any{"lora_params": map[string]any{"lora_adapter_name": "nope"}}
		// The server knows the adapters loaded: an unknown name is refused before it
		// reaches the runtime, naming the member and the names it knows.
		if e := fails(t, c.call("rkllm.run", bad), -32602); e.Data["field"] != "infer_params.lora_params.lora_adapter_name" || !strings.Contains(e.Message, "loaded: chat") {
			t.Errorf("unknown adapter: %+v", e)
		}
		tool := ok[runResult](t, c.call("rkllm.run", prompt("What is get_weather in Paris?")))
		if want := "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"sim\"}}\n</tool_call>"; tool.Text != want {
			t.Errorf("tool call %q, want %q", tool.Text, want)
		}

		// KV cache: a kept turn fills it, clearing empties it.
		keep := prompt("Remember this.")
		keep["infer_params"] = map[string]any{"keep_history": 1}
		ok[runResult](t, c.call("rkllm.run", keep))
		sizes := ok[map[string][]int](t, s.http("rkllm.get_kv_cache_size", nil))["cache_sizes"]
		if len(sizes) != 1 || sizes[0] == 0 {
			t.Errorf("cache after a kept turn %v", sizes)
		}
		ok[int](t, c.call("rkllm.clear_kv_cache", map[string]any{"keep_system_prompt": false}))
		if sizes := ok[map[string][]int](t, c.call("rkllm.get_kv_cache_size", nil))["cache_sizes"]; len(sizes) != 1 || sizes[0] != 0 {
			t.Errorf("cache after clearing %v", sizes)
		}
		fails(t, c.call("rkllm.clear_kv_cache", map[string]any{"start_pos": []int{0}}), -32602)

		// Prompt cache: a run saves it (admin only), load and release it.
		save := prompt("A long shared preamble.")
		save["infer_params"] = map[string]any{"prompt_cache_params": map[string]any{"save_prompt_cache": 1, "prompt_cache_path": "cache.bin"}}
		fails(t, s.http("rkllm.run", save), -32007)
		ok[runResult](t, c.call("rkllm.run", save))
		if _, err := os.Stat(filepath.Join(s.dir, "cache.bin")); err != nil {
			t.Errorf("prompt cache not written: %v", err)
		}
		ok[int](t, c.call("rkllm.load_prompt_cache", map[string]any{"prompt_cache_path": "cache.bin"}))
		ok[int](t, c.call("rkllm.release_prompt_cache", nil))

		// Paths must stay inside --model-dir, symlinks included.
		outside := t.TempDir()
		if err := os.Symlink(outside, filepath.Join(s.dir, "escape")); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"../x.lora", "/etc/passwd", "escape/x.lora"} {
			e := c.call("rkllm.load_lora", map[string]any{"lora_adapter": map[string]any{"lora_adapter_path": p, "lora_adapter_name": "x"}})
			if e.Error == nil || (e.Error.Code != -32007 && e.Error.Code != -32602) {
				t.Errorf("lora path %s: %+v", p, e.Error)
			}
		}
		fails(t, c.call("rkllm.load_prompt_cache", map[string]any{"prompt_cache_path": "missing.bin"}), -32602)

		// destroy, then runs need a model; init loads it again (path relative to --model-dir).
		ok[int](t, c.call("rkllm.destroy", nil))
		fails(t, s.http("rkllm.run", prompt("Hello")), -32001)
		if code, st := s.status(); code != 503 || st["model_loaded"] != false {
			t.Errorf("readyz after destroy: %d %v", code, st)
		}
		fails(t, c.call("rkllm.init", map[string]any{"param": map[string]any{"model_path": "../model.rkllm"}}), -32007)
		fails(t, c.call("rkllm.init", map[string]any{"param": map[string]any{"model_path": "model.rkllm", "is_async": true}}), -32602)
		init := map[string]any{"param": map[string]any{"model_path": "model.rkllm", "max_context_len": 1024, "max_new_tokens": 5,
			"extend_param": map[string]any{"n_batch": 1, "use_cross_attn": 1, "enabled_cpus_mask": "0xF0"}}}
		ok[int](t, c.call("rkllm.init", init))
		s.waitReady()
		short := ok[runResult](t, s.http("rkllm.run", prompt("Hello")))
		if short.TokenCount != 5 || short.FinishReason != "length" {
			t.Errorf("run with max_new_tokens 5 at init: %+v", short)
		}
		// A repeated init with the same param succeeds; another model is refused.
		ok[int](t, c.call("rkllm.init", init))
		fails(t, c.call("rkllm.init", map[string]any{"param": map[string]any{"model_path": "model.rkllm"}}), -32007)

		// Cross-attention (use_cross_attn 1 at init): K and V hold num_tokens x 16 floats.
		kv := make([]float32, 2*16)
		ok[int](t, c.call("rkllm.set_cross_attn_params", map[string]any{"cross_attn_params": map[string]any{
			"encoder_k_cache": kv, "encoder_v_cache": kv, "encoder_mask": []float32{0, 0}, "encoder_pos": []int{0, 1}, "num_tokens": 2}}))
		fails(t, c.call("rkllm.set_cross_attn_params", map[string]any{"cross_attn_params": map[string]any{"num_tokens": 2}}), -32602)

		// rkllm.run_async: a handle at once, tokens as notifications, then rkllm.done.
		fails(t, s.http("rkllm.run_async", prompt("Hello")), -32007)
		asyncID := fmt.Sprint(float64(c.nextID.Load() + 1))
		handle := ok[map[string]string](t, c.call("rkllm.run_async", prompt("Hello")))["request_id"]
		var text strings.Builder
		for {
			n := c.note()
			p := n["params"].(map[string]any)
			if p["request_id"] != handle {
				t.Fatalf("notification for %v, want %s", p["request_id"], handle)
			}
			if n["method"] == "rkllm.done" {
				order := c.readOrder()
				iResp, iNote := slices.Index(order, "response "+asyncID), slices.Index(order, "note "+handle)
				if iResp < 0 || iNote < iResp {
					t.Errorf("read order %v: a notification of %s came before the response %s naming it", order, handle, asyncID)
				}
				if p["text"] != text.String() || p["finish_reason"] != "length" || p["token_count"] != 5.0 {
					t.Errorf("rkllm.done %v (streamed %q)", p, text.String())
				}
				break
			}
			if n["method"] != "rkllm.result" {
				t.Fatalf("notification %v", n)
			}
			text.WriteString(p["text"].(string))
		}

		// Unknown methods and members are named in the error.
		fails(t, s.http("rkllm.nope", nil), -32601)
		e := fails(t, s.http("rkllm.run", map[string]any{"input": map[string]any{"prompt_input": "x", "promt": 1}}), -32602)
		if e.Data["field"] != "input.promt" {
			t.Errorf("unknown member error %+v", e)
		}
		e = fails(t, s.http("rkllm.run", map[string]any{"input": map[string]any{"prompt_input": "x"}, "infer_params": map[string]any{"mode": "RKLLM_INFER_NOPE"}}), -32602)
		if e.Data["field"] != "infer_params.mode" || !strings.Contains(e.Message, "RKLLM_INFER_GET_LOGITS") {
			t.Errorf("bad enum error %+v", e)
		}
	})
}

// ABI 1.2 lacks per-run sampling and max_new_tokens; 1.3 has them.
func TestPerRunParamsByABI(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		p := prompt("Hello")
		p["infer_params"] = map[string]any{"max_new_tokens": 3, "sampling_params": map[string]any{"top_k": 1, "top_p": 0.5, "temperature": 0.1, "repeat_penalty": 1.0}}
		r := s.http("rkllm.run", p)
		if abi == "1.2" {
			if e := fails(t, r, -32602); !strings.Contains(e.Message, "not supported by ABI 1.2") {
				t.Errorf("1.2 per-run params: %s", e.Message)
			}
			return
		}
		res := ok[runResult](t, r)
		if res.TokenCount != 3 || res.FinishReason != "length" {
			t.Errorf("1.3 per-run max_new_tokens 3: %+v", res)
		}
	})
}
