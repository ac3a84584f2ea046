package rkllmrpc

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// FuzzRunParams feeds arbitrary params to rkllm.run's validation. Whatever the input:
// no panic; a refusal is invalid params (-32602) or not allowed (-32007); an accepted
// run satisfies every rule the runtime relies on.
func FuzzRunParams(f *testing.F) {
	for _, seed := range []string{
		`{"input":{"role":"user","input_type":"RKLLM_INPUT_PROMPT","prompt_input":"Hello"}}`,
		`{"input":{"token_input":{"input_ids":[1,2,3],"n_tokens":3}},"infer_params":{"mode":1}}`,
		`{"input":{"embed_input":{"embed":[0.5,1,2,3],"n_tokens":2}},"encoding":"base64"}`,
		`{"input":{"embed_input":{"embed":"AAAAAAAAgD8=","n_tokens":1}}}`,
		`{"input":{"multimodal_input":{"prompt":"<image>x","image_embed":[1,2,3,4],"n_image":1,"n_image_tokens":2}}}`,
		`{"input":[{"prompt_input":"a"},{"prompt_input":"b"}],"infer_params":{"keep_history":1}}`,
		`{"input":{"prompt_input":"x"},"infer_params":{"sampling_params":{"top_p":1.5},"max_new_tokens":3}}`,
		`{"input":{"prompt_input":"x"},"infer_params":{"prompt_cache_params":{"save_prompt_cache":1,"prompt_cache_path":"../x"}}}`,
		`{"input":{"prompt_input":"x","Prompt_input":"y"}}`,
		`{"input":{"token_input":{"input_ids":[-1]}}}`,
		`{"stream":true,"input":{"prompt_input":"x"}}`,
	} {
		f.Add([]byte(seed))
	}
	s, err := New(nil, Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, params []byte) {
		if !json.Valid(params) {
			return // the dispatcher answers -32700 before any method sees it
		}
		call := &jsonrpc.Call{Request: &jsonrpc.Request{Method: MethodRun, Params: params},
			Peer: &jsonrpc.Peer{Transport: "unix", Admin: true, Persistent: true, Notify: func(*jsonrpc.Notification) error { return nil }}}
		plan, err := s.plan(call, false)
		if err != nil {
			var e *jsonrpc.Error
			if !errors.As(err, &e) || (e.Code != -32602 && e.Code != -32007) {
				t.Fatalf("refusal %v is not -32602 or -32007", err)
			}
			return
		}
		if len(plan.inputs) == 0 {
			t.Fatal("a run without inputs was accepted")
		}
		if p := plan.ip.Sampling; p != nil && (p.TopP < 0 || p.TopP > 1 || p.Temperature < 0 || p.TopK < 0) {
			t.Fatalf("sampling out of range accepted: %+v", p)
		}
		for _, in := range plan.inputs {
			checkInput(t, in)
		}
	})
}

func checkInput(t *testing.T, in runtime.Input) {
	t.Helper()
	switch in.Type {
	case runtime.InputToken:
		if len(in.TokenIDs) == 0 {
			t.Fatal("empty token input accepted")
		}
		for _, id := range in.TokenIDs {
			if id < 0 {
				t.Fatalf("negative token id %d accepted", id)
			}
		}
	case runtime.InputEmbed:
		if in.NTokens < 1 || len(in.Embed) == 0 || len(in.Embed)%in.NTokens != 0 {
			t.Fatalf("embedding of %d floats for %d tokens accepted", len(in.Embed), in.NTokens)
		}
	case runtime.InputMultimodal:
		m := in.Multimodal
		if (m.NImage == 0) != (len(m.ImageEmbed) == 0) || (m.NImage > 0 && len(m.ImageEmbed)%(m.NImage*m.NImageTokens) != 0) {
			t.Fatalf("image embedding of %d floats for %d x %d accepted", len(m.ImageEmbed), m.NImage, m.NImageTokens)
		}
	case runtime.InputPrompt:
	default:
		t.Fatalf("input type %d accepted", in.Type)
	}
	switch in.Role {
	case "", "user", "tool":
	default:
		t.Fatalf("role %q accepted", in.Role)
	}
}

// FuzzInitParams feeds arbitrary RKLLMParam objects to rkllm.init's validation: no
// panic, refusals are -32602 naming a param field, accepted params keep the rules.
func FuzzInitParams(f *testing.F) {
	for _, seed := range []string{
		`{"model_path":"m.rkllm"}`,
		`{"model_path":"m.rkllm","max_context_len":4096,"top_p":0.9,"extend_param":{"enabled_cpus_mask":"0xF0","n_batch":2}}`,
		`{"model_path":"m.rkllm","is_async":true}`,
		`{"model_path":"m.rkllm","extend_param":{"n_batch":0}}`,
		`{"model_path":"m.rkllm","top_p":-1,"mirostat":3}`,
		`{"model_path":"m.rkllm","Top_p":1}`,
		`{"model_path":"m.rkllm","extend_param":{"enabled_cpus_mask":"0x1FFFFFFFF"}}`,
	} {
		f.Add([]byte(seed))
	}
	defaults := runtime.Param{MaxContextLen: 512, TopK: 40, TopP: 0.9, Temperature: 0.8, Extend: runtime.ExtendParam{EnabledCPUsNum: 4, NBatch: 1}}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return
		}
		wire := paramToJSON(defaults)
		if err := strictDecode(raw, &wire); err != nil {
			err = prefixField("param", err)
			var e *jsonrpc.Error
			if !errors.As(err, &e) || e.Code != -32602 {
				t.Fatalf("decode refusal %v is not -32602", err)
			}
			return
		}
		p := wire.param()
		if err := checkParam(&p); err != nil {
			var e *jsonrpc.Error
			if !errors.As(err, &e) || e.Code != -32602 {
				t.Fatalf("refusal %v is not -32602", err)
			}
			return
		}
		if p.ModelPath == "" || p.IsAsync || p.Extend.NBatch < 1 || p.Extend.NBatch > 100 || p.MaxContextLen < 1 ||
			p.TopP < 0 || p.TopP > 1 || p.Temperature < 0 || p.Mirostat < 0 || p.Mirostat > 2 {
			t.Fatalf("accepted %+v", p)
		}
	})
}
