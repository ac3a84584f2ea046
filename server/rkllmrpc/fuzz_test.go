package rkllmrpc

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
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
		// Issue 12: products that wrap, rows one float wide, NUL in C strings.
		`{"input":{"multimodal_input":{"prompt":"<image><image>","n_image":2,"n_image_tokens":9223372036854775807,"image_embed":[1,2]}}}`,
		`{"input":{"multimodal_input":{"prompt":"<image><image><image><image>","n_image":4,"n_image_tokens":4611686018427387904,"image_embed":[1,2]}}}`,
		`{"input":{"multimodal_input":{"prompt":"<video><video>","n_video":2,"n_frame_per_video":4611686018427387904,"n_frame_tokens":2,"video_embed":[1]}}}`,
		`{"input":{"embed_input":{"embed":[1,2,3],"n_tokens":3}}}`,
		`{"input":{"prompt_input":"a\u0000b"}}`,
		`{"input":{"prompt_input":"x"},"infer_params":{"lora_params":{"lora_adapter_name":"ch\u0000at"}}}`,
	} {
		f.Add([]byte(seed))
	}
	s, err := New(fuzzModel, Options{})
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
		// The supervisor checks the rest against the model loaded when the run executes.
		lim := fuzzModel.m.Limits()
		if err := runtime.CheckInputs(plan.inputs, lim); err != nil {
			if e := invalidInput(err, plan.batch); !isInvalidParams(e) {
				t.Fatalf("refusal %v at execution is not -32602", e)
			}
			return
		}
		if err := runtime.CheckInferParams(&plan.ip, lim); err != nil {
			if e := invalidInput(err, plan.batch); !isInvalidParams(e) {
				t.Fatalf("refusal %v at execution is not -32602", e)
			}
			return
		}
		if p := plan.ip.Sampling; p != nil && (p.TopP < 0 || p.TopP > 1 || p.Temperature < 0 || p.TopK < 0) {
			t.Fatalf("sampling out of range accepted: %+v", p)
		}
		for _, in := range plan.inputs {
			checkInput(t, in)
		}
	})
}

func isInvalidParams(err error) bool {
	var e *jsonrpc.Error
	return errors.As(err, &e) && e.Code == -32602
}

// fuzzModel is a backend with a model loaded: its limits are what FuzzRunParams
// checks accepted runs against.
var fuzzModel = staticModel{supervisor.LoadedModel{
	Param: runtime.Param{MaxContextLen: 4096, Extend: runtime.ExtendParam{NBatch: 1}},
	ABI:   runtime.ABI13, EmbedWidth: 16, Loras: []string{"chat"},
}}

// staticModel answers LoadedModel; nothing else of Backend is called by plan.
type staticModel struct{ m supervisor.LoadedModel }

func (b staticModel) LoadedModel() (supervisor.LoadedModel, bool) { return b.m, true }
func (b staticModel) Loaded() (runtime.Param, bool)               { return b.m.Param, true }
func (staticModel) Enqueue(context.Context, supervisor.Request) (*supervisor.Ticket, error) {
	panic("not used")
}
func (staticModel) Abort(string, string) ([]string, error)  { panic("not used") }
func (staticModel) IsRunning(context.Context) (bool, error) { panic("not used") }
func (staticModel) Defaults(context.Context) (runtime.Param, runtime.ABI, error) {
	panic("not used")
}

// reads is how many floats the runtime reads for counts of rows of width floats,
// computed exactly (no overflow can hide a mismatch).
func reads(width int, counts ...int) *big.Int {
	n := big.NewInt(int64(width))
	for _, c := range counts {
		n.Mul(n, big.NewInt(int64(c)))
	}
	return n
}

// checkInput fails when an accepted input would make the runtime read past what was
// sent, or fill more positions than the model has.
func checkInput(t *testing.T, in runtime.Input) {
	t.Helper()
	m := fuzzModel.m
	limit := big.NewInt(int64(m.Param.MaxContextLen))
	sent := func(f []float32) *big.Int { return big.NewInt(int64(len(f))) }
	switch in.Type {
	case runtime.InputToken:
		if len(in.TokenIDs) == 0 || len(in.TokenIDs) > int(m.Param.MaxContextLen) {
			t.Fatalf("token input of %d ids accepted", len(in.TokenIDs))
		}
		for _, id := range in.TokenIDs {
			if id < 0 {
				t.Fatalf("negative token id %d accepted", id)
			}
		}
	case runtime.InputEmbed:
		if in.NTokens < 1 || reads(m.EmbedWidth, in.NTokens).Cmp(sent(in.Embed)) != 0 || big.NewInt(int64(in.NTokens)).Cmp(limit) > 0 {
			t.Fatalf("embedding of %d floats for %d tokens accepted", len(in.Embed), in.NTokens)
		}
	case runtime.InputMultimodal:
		mm := in.Multimodal
		if mm.NImage > 0 && reads(m.EmbedWidth, mm.NImage, mm.NImageTokens).Cmp(sent(mm.ImageEmbed)) != 0 {
			t.Fatalf("image embedding of %d floats for %d x %d accepted", len(mm.ImageEmbed), mm.NImage, mm.NImageTokens)
		}
		if mm.NVideo > 0 && reads(m.EmbedWidth, mm.NVideo, mm.NFramePerVideo, mm.NFrameTokens).Cmp(sent(mm.VideoEmbed)) != 0 {
			t.Fatalf("video embedding of %d floats for %d x %d x %d accepted", len(mm.VideoEmbed), mm.NVideo, mm.NFramePerVideo, mm.NFrameTokens)
		}
		if (mm.NImage == 0 && len(mm.ImageEmbed) > 0) || (mm.NVideo == 0 && len(mm.VideoEmbed) > 0) {
			t.Fatal("embeddings without images or videos accepted")
		}
		positions := new(big.Int).Add(reads(1, mm.NImage, mm.NImageTokens), reads(1, mm.NVideo, mm.NFramePerVideo, mm.NFrameTokens))
		if positions.Cmp(limit) > 0 || strings.Contains(mm.Prompt, "\x00") {
			t.Fatalf("multimodal input of %v positions accepted", positions)
		}
	case runtime.InputPrompt:
		if strings.Contains(in.Prompt, "\x00") {
			t.Fatal("a prompt with a NUL accepted")
		}
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
		`{"model_path":"m.rkllm","max_context_len":4096,"n_keep":4097}`,
		`{"model_path":"m.rkllm","top_k":-1}`,
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
			p.NKeep > p.MaxContextLen || p.TopK < 0 || p.TopP < 0 || p.TopP > 1 || p.Temperature < 0 || p.Mirostat < 0 || p.Mirostat > 2 {
			t.Fatalf("accepted %+v", p)
		}
	})
}
