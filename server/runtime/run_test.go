package runtime

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// A model whose replies are mostly characters sent one byte per delivery.
func multibyteModel(m *simulator.Model) {
	m.Vocab = []string{" a", " b"}
	m.ByteFallback = []string{"é", "日", "🙂"}
}

func TestGenerateIsDeterministicUTF8(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, multibyteModel)
		h := newHandle(t, lib, params(lib, model))
		first := collect(t, h, prompt("hello"), InferParams{}, nil)
		fin := first.finish(t)
		again := collect(t, h, prompt("hello"), InferParams{}, nil)
		again.finish(t)
		other := collect(t, h, prompt("something else"), InferParams{}, nil)
		other.finish(t)

		text := first.text(0)
		if text == "" || text != again.text(0) || !slices.Equal(first.tokens(0), again.tokens(0)) {
			t.Errorf("the same prompt gave %q then %q", text, again.text(0))
		}
		if other.text(0) == text {
			t.Errorf("different prompts gave the same text %q", text)
		}
		if !utf8.ValidString(text) || !strings.ContainsAny(text, "é日🙂") {
			t.Errorf("text %q is not valid UTF-8 with multi-byte characters", text)
		}
		waiting := 0
		for _, d := range first.deliveries {
			switch d.State {
			case StateWaiting:
				waiting++
				if utf8.ValidString(d.Results[0].Text) {
					t.Errorf("WAITING delivery %q is a whole character", d.Results[0].Text)
				}
			case StateNormal:
				if d.Results[0].TokenID < 0 {
					t.Errorf("NORMAL delivery without a token id: %+v", d.Results[0])
				}
			}
		}
		if waiting == 0 {
			t.Error("no WAITING delivery although the reply has multi-byte characters split over tokens")
		}
		perf := fin.Results[0].Perf
		wantPrefill := len(m.Tokenize(m.ChatTemplate.System)) + turnTokens(&m, "hello")
		if int(perf.GenerateTokens) != len(first.tokens(0)) || int(perf.PrefillTokens) != wantPrefill ||
			perf.GenerateTimeMs <= 0 || perf.PrefillTimeMs <= 0 || perf.MemoryUsageMB != float32(m.MemoryMB) {
			t.Errorf("FINISH perf %+v, want %d generated, %d prefilled, times > 0, %v MB",
				perf, len(first.tokens(0)), wantPrefill, m.MemoryMB)
		}
	})
}

func TestSkipSpecialToken(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		p := params(lib, model)
		p.SkipSpecialToken = false
		h := newHandle(t, lib, p)
		r := collect(t, h, prompt("hi"), InferParams{}, nil)
		r.finish(t)
		if ids := r.tokens(0); len(ids) == 0 || ids[len(ids)-1] != simulator.TokenEOS || !strings.HasSuffix(r.text(0), m.EOS) {
			t.Errorf("with skip_special_token off the reply %q does not end with %q", r.text(0), m.EOS)
		}
	})
}

func TestMaxNewTokens(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 40, 40 })
		p := params(lib, model)
		p.MaxNewTokens = 5
		h := newHandle(t, lib, p)
		r := collect(t, h, prompt("count"), InferParams{}, nil)
		if got := r.finish(t).Results[0].Perf.GenerateTokens; got != 5 || len(r.tokens(0)) != 5 {
			t.Errorf("init max_new_tokens 5: generated %d (%d delivered)", got, len(r.tokens(0)))
		}
		r = collect(t, h, prompt("count"), InferParams{MaxNewTokens: 3}, nil)
		if lib.ABI() == ABI12 {
			if !errors.Is(r.err, ErrNotSupported) || len(r.deliveries) != 0 {
				t.Fatalf("per-run max_new_tokens on ABI 1.2: %v, %d deliveries", r.err, len(r.deliveries))
			}
			return
		}
		if got := r.finish(t).Results[0].Perf.GenerateTokens; got != 3 {
			t.Errorf("per-run max_new_tokens 3: generated %d", got)
		}
	})
}

func TestIgnoreEOSToken(t *testing.T) {
	lib := simLib(t, ABI13)
	model, _ := writeModel(t, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 2, 2 })
	p := params(lib, model)
	p.IgnoreEOSToken = true
	p.MaxNewTokens = 12
	h := newHandle(t, lib, p)
	if got := collect(t, h, prompt("go on"), InferParams{}, nil).finish(t).Results[0].Perf.GenerateTokens; got != 12 {
		t.Errorf("ignore_eos_token: generated %d tokens, want max_new_tokens 12", got)
	}
}

func TestPerRunSampling(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		p := params(lib, model)
		h := newHandle(t, lib, p)
		same := SamplingParams{TopK: p.TopK, TopP: p.TopP, Temperature: p.Temperature, RepeatPenalty: p.RepeatPenalty,
			FrequencyPenalty: p.FrequencyPenalty, PresencePenalty: p.PresencePenalty, Mirostat: p.Mirostat,
			MirostatTau: p.MirostatTau, MirostatEta: p.MirostatEta}
		base := collect(t, h, prompt("sample"), InferParams{}, nil)
		withSame := collect(t, h, prompt("sample"), InferParams{Sampling: &same}, nil)
		if lib.ABI() == ABI12 {
			var ue *UnsupportedError
			if !errors.As(withSame.err, &ue) || ue.ABI != ABI12 || !strings.Contains(ue.Error(), "sampling") {
				t.Fatalf("per-run sampling on ABI 1.2: %v", withSame.err)
			}
			return
		}
		hot := same
		hot.Temperature = 1.5
		withHot := collect(t, h, prompt("sample"), InferParams{Sampling: &hot}, nil)
		base.finish(t)
		withSame.finish(t)
		withHot.finish(t)
		if withSame.text(0) != base.text(0) {
			t.Errorf("sampling equal to the init values changed the output: %q vs %q", withSame.text(0), base.text(0))
		}
		if withHot.text(0) == base.text(0) {
			t.Errorf("another temperature gave the same output %q", base.text(0))
		}
	})
}

// echoSampling is RKLLMSamplingParam as the simulator's echo spells it.
type echoSampling struct {
	TopK             int32   `json:"top_k"`
	TopP             float32 `json:"top_p"`
	Temperature      float32 `json:"temperature"`
	RepeatPenalty    float32 `json:"repeat_penalty"`
	FrequencyPenalty float32 `json:"frequency_penalty"`
	PresencePenalty  float32 `json:"presence_penalty"`
	Mirostat         int32   `json:"mirostat"`
	MirostatTau      float32 `json:"mirostat_tau"`
	MirostatEta      float32 `json:"mirostat_eta"`
}

// echo is what the simulator reports reading from the caller's structs.
type echo struct {
	ABI   string `json:"abi"`
	Param struct {
		ModelPath        string       `json:"model_path"`
		MaxContextLen    int32        `json:"max_context_len"`
		MaxNewTokens     int32        `json:"max_new_tokens"`
		NKeep            int32        `json:"n_keep"`
		Sampling         echoSampling `json:"sampling"`
		SkipSpecialToken bool         `json:"skip_special_token"`
		IsAsync          bool         `json:"is_async"`
		IgnoreEOSToken   *bool        `json:"ignore_eos_token"`
		ImgStart         *string      `json:"img_start"`
		ImgEnd           *string      `json:"img_end"`
		ImgContent       *string      `json:"img_content"`
		Extend           struct {
			BaseDomainID    int32  `json:"base_domain_id"`
			EmbedFlash      int8   `json:"embed_flash"`
			EnabledCPUsNum  int8   `json:"enabled_cpus_num"`
			EnabledCPUsMask uint32 `json:"enabled_cpus_mask"`
			NBatch          uint8  `json:"n_batch"`
			UseCrossAttn    int8   `json:"use_cross_attn"`
		} `json:"extend_param"`
	} `json:"param"`
	Infer struct {
		Mode            int32     `json:"mode"`
		LoraAdapterName *string   `json:"lora_adapter_name"`
		PromptCache     *struct { //
			Save int     `json:"save"`
			Path *string `json:"path"`
		} `json:"prompt_cache"`
		Sampling     *echoSampling `json:"sampling"`
		MaxNewTokens *int32        `json:"max_new_tokens"`
		KeepHistory  int           `json:"keep_history"`
	} `json:"infer"`
	Input struct {
		Role           string  `json:"role"`
		EnableThinking bool    `json:"enable_thinking"`
		InputType      int32   `json:"input_type"`
		NImageTokens   int     `json:"n_image_tokens"`
		NImage         int     `json:"n_image"`
		ImageWidth     int     `json:"image_width"`
		ImageHeight    int     `json:"image_height"`
		ImageStart     *string `json:"image_start"`
		ImageEnd       *string `json:"image_end"`
		ImageContent   *string `json:"image_content"`
		NFrameTokens   int     `json:"n_frame_tokens"`
		NFramePerVideo int     `json:"n_frame_per_video"`
		NVideo         int     `json:"n_video"`
		FrameWidth     int     `json:"frame_width"`
		FrameHeight    int     `json:"frame_height"`
		VideoStart     *string `json:"video_start"`
		VideoEnd       *string `json:"video_end"`
		VideoContent   *string `json:"video_content"`
	} `json:"input"`
	CrossAttn *struct {
		NumTokens int `json:"num_tokens"`
	} `json:"cross_attn"`
}

// TestEveryFieldCrossesTheBoundary sends distinctive values in every field of the
// init params, the run params and the inputs, and compares what the simulator read
// (its "<sim:echo-params>" reply) field by field: a wrong offset shows here.
func TestEveryFieldCrossesTheBoundary(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		dir := t.TempDir()
		model, _ := writeModel(t, nil)
		lora := filepath.Join(dir, "chat.rkllm-lora")
		if err := simulator.WriteLora(lora, "chat"); err != nil {
			t.Fatal(err)
		}
		p := Param{
			ModelPath: model, MaxContextLen: 3000, MaxNewTokens: 2500, TopK: 7, NKeep: 11, TopP: 0.625,
			Temperature: 0.375, RepeatPenalty: 1.25, FrequencyPenalty: 0.5, PresencePenalty: 0.75, Mirostat: 2,
			MirostatTau: 4.5, MirostatEta: 0.125, SkipSpecialToken: true,
			Extend: ExtendParam{BaseDomainID: 3, EmbedFlash: 0, EnabledCPUsNum: 2, EnabledCPUsMask: 0x30, NBatch: 1, UseCrossAttn: 1},
		}
		if lib.ABI() == ABI12 {
			p.ImgStart, p.ImgEnd, p.ImgContent = "<img_s>", "<img_e>", "<img_c>"
		} else {
			p.IgnoreEOSToken = true
		}
		h := newHandle(t, lib, p)
		if err := h.SetEmbedWidth(16); err != nil {
			t.Fatal(err)
		}
		if err := h.LoadLora(LoraAdapter{Path: lora, Name: "chat", Scale: 0.5}); err != nil {
			t.Fatal(err)
		}
		if err := h.SetCrossAttnParams(CrossAttnParams{EncoderKCache: make([]float32, 3*16), EncoderVCache: make([]float32, 3*16),
			EncoderMask: make([]float32, 3), EncoderPos: []int32{0, 1, 2}, NumTokens: 3}); err != nil {
			t.Fatal(err)
		}
		ip := InferParams{LoraAdapterName: "chat", PromptCache: &PromptCacheParams{Path: filepath.Join(dir, "unused")}, KeepHistory: true}
		sampling := SamplingParams{TopK: 9, TopP: 0.5, Temperature: 0.25, RepeatPenalty: 1.5, FrequencyPenalty: 0.125,
			PresencePenalty: 0.0625, Mirostat: 1, MirostatTau: 3.5, MirostatEta: 0.375}
		if lib.ABI() == ABI13 {
			ip.Sampling, ip.MaxNewTokens = &sampling, 2400
		}
		mm := MultimodalInput{Prompt: "<sim:echo-params> look <image>", ImageEmbed: make([]float32, 2*16), NImageTokens: 2, NImage: 1,
			ImageWidth: 640, ImageHeight: 480}
		if lib.ABI() == ABI13 {
			mm.Prompt += " and <video>"
			mm.ImageStart, mm.ImageEnd, mm.ImageContent = "<s>", "<e>", "<c>"
			mm.VideoEmbed, mm.NVideo, mm.NFramePerVideo, mm.NFrameTokens = make([]float32, 2*16), 1, 2, 1
			mm.VideoStart, mm.VideoEnd, mm.VideoContent, mm.FrameWidth, mm.FrameHeight = "<vs>", "<ve>", "<vc>", 320, 240
		}
		for _, in := range []Input{
			{Type: InputPrompt, Role: "user", EnableThinking: true, Prompt: "<sim:echo-params>"},
			{Type: InputMultimodal, Role: "tool", Multimodal: mm},
		} {
			r := collect(t, h, []Input{in}, ip, nil)
			r.finish(t)
			var e echo
			if err := json.Unmarshal([]byte(r.text(0)), &e); err != nil {
				t.Fatalf("the echo %q is not JSON: %v", r.text(0), err)
			}
			checkEcho(t, lib.ABI(), &e, p, ip, in)
		}
	})
}

func checkEcho(t *testing.T, abi ABI, e *echo, p Param, ip InferParams, in Input) {
	t.Helper()
	ep := e.Param
	want := echoSampling{TopK: p.TopK, TopP: p.TopP, Temperature: p.Temperature, RepeatPenalty: p.RepeatPenalty,
		FrequencyPenalty: p.FrequencyPenalty, PresencePenalty: p.PresencePenalty, Mirostat: p.Mirostat,
		MirostatTau: p.MirostatTau, MirostatEta: p.MirostatEta}
	if e.ABI != string(abi) || ep.ModelPath != p.ModelPath || ep.MaxContextLen != p.MaxContextLen ||
		ep.MaxNewTokens != p.MaxNewTokens || ep.NKeep != p.NKeep || ep.Sampling != want ||
		ep.SkipSpecialToken != p.SkipSpecialToken || ep.IsAsync != p.IsAsync {
		t.Errorf("init params read as %+v, sent %+v", ep, p)
	}
	x := ep.Extend
	if x.BaseDomainID != p.Extend.BaseDomainID || x.EmbedFlash != p.Extend.EmbedFlash || x.EnabledCPUsNum != p.Extend.EnabledCPUsNum ||
		x.EnabledCPUsMask != p.Extend.EnabledCPUsMask || x.NBatch != p.Extend.NBatch || x.UseCrossAttn != p.Extend.UseCrossAttn {
		t.Errorf("extend_param read as %+v, sent %+v", x, p.Extend)
	}
	if abi == ABI12 {
		if ep.ImgStart == nil || *ep.ImgStart != p.ImgStart || *ep.ImgEnd != p.ImgEnd || *ep.ImgContent != p.ImgContent || ep.IgnoreEOSToken != nil {
			t.Errorf("1.2 image strings read as %v %v %v", ep.ImgStart, ep.ImgEnd, ep.ImgContent)
		}
	} else if ep.IgnoreEOSToken == nil || *ep.IgnoreEOSToken != p.IgnoreEOSToken || ep.ImgStart != nil {
		t.Errorf("1.3 ignore_eos_token read as %v", ep.IgnoreEOSToken)
	}
	ei := e.Infer
	if ei.Mode != int32(ip.Mode) || ei.LoraAdapterName == nil || *ei.LoraAdapterName != ip.LoraAdapterName ||
		ei.PromptCache == nil || ei.PromptCache.Save != 0 || *ei.PromptCache.Path != ip.PromptCache.Path || ei.KeepHistory != 1 {
		t.Errorf("infer params read as %+v, sent %+v", ei, ip)
	}
	if abi == ABI13 && (ei.Sampling == nil || *ei.Sampling != echoSampling(*ip.Sampling) || *ei.MaxNewTokens != ip.MaxNewTokens) {
		t.Errorf("1.3 sampling/max_new_tokens read as %v/%v", ei.Sampling, ei.MaxNewTokens)
	}
	if e.Input.Role != in.Role || e.Input.EnableThinking != in.EnableThinking || e.Input.InputType != int32(in.Type) {
		t.Errorf("input head read as %+v, sent %+v", e.Input, in)
	}
	if e.CrossAttn == nil || e.CrossAttn.NumTokens != 3 {
		t.Errorf("cross-attention params read as %+v", e.CrossAttn)
	}
	if in.Type != InputMultimodal {
		return
	}
	m, ei2 := in.Multimodal, e.Input
	if ei2.NImage != m.NImage || ei2.NImageTokens != m.NImageTokens || ei2.ImageWidth != m.ImageWidth || ei2.ImageHeight != m.ImageHeight {
		t.Errorf("multimodal image read as %+v, sent %+v", ei2, m)
	}
	if abi == ABI13 && (*ei2.ImageStart != m.ImageStart || *ei2.ImageEnd != m.ImageEnd || *ei2.ImageContent != m.ImageContent ||
		ei2.NVideo != m.NVideo || ei2.NFramePerVideo != m.NFramePerVideo || ei2.NFrameTokens != m.NFrameTokens ||
		ei2.FrameWidth != m.FrameWidth || ei2.FrameHeight != m.FrameHeight || *ei2.VideoStart != m.VideoStart ||
		*ei2.VideoEnd != m.VideoEnd || *ei2.VideoContent != m.VideoContent) {
		t.Errorf("1.3 multimodal read as %+v, sent %+v", ei2, m)
	}
}

func TestKeepHistoryAndKVCache(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		h := newHandle(t, lib, params(lib, model))
		sys := len(m.Tokenize(m.ChatTemplate.System))
		size := func() int {
			t.Helper()
			s, err := h.KVCacheSize()
			if err != nil || len(s) != 1 {
				t.Fatalf("KVCacheSize = %v, %v", s, err)
			}
			return s[0]
		}
		if got := size(); got != 0 {
			t.Fatalf("a new handle has %d positions", got)
		}
		first := collect(t, h, prompt("turn one"), InferParams{KeepHistory: true}, nil)
		gen1 := int(first.finish(t).Results[0].Perf.GenerateTokens)
		want := sys + turnTokens(&m, "turn one") + gen1 + 1 // + the end-of-sequence token
		if got := size(); got != want {
			t.Fatalf("after a kept turn: %d positions, want %d", got, want)
		}
		second := collect(t, h, prompt("turn two"), InferParams{KeepHistory: true}, nil)
		fin := second.finish(t).Results[0].Perf
		if int(fin.PrefillTokens) != turnTokens(&m, "turn two") {
			t.Errorf("the second turn prefilled %d positions, want only its own %d", fin.PrefillTokens, turnTokens(&m, "turn two"))
		}
		want += turnTokens(&m, "turn two") + int(fin.GenerateTokens) + 1
		if got := size(); got != want {
			t.Fatalf("after two kept turns: %d positions, want %d", got, want)
		}
		collect(t, h, prompt("independent"), InferParams{}, nil).finish(t)
		if got := size(); got != sys {
			t.Errorf("after a turn without keep_history: %d positions, want the system prompt's %d", got, sys)
		}
		collect(t, h, prompt("keep"), InferParams{KeepHistory: true}, nil).finish(t)
		if err := h.ClearKVCache(true, nil); err != nil || size() != sys {
			t.Errorf("ClearKVCache(keep system prompt) = %v, %d positions, want %d", err, size(), sys)
		}
		if err := h.ClearKVCache(false, nil); err != nil || size() != 0 {
			t.Errorf("ClearKVCache(all) = %v, %d positions", err, size())
		}
	})
}

func TestPauseResumeAndClearRanges(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, func(m *simulator.Model) {
			m.ByteFallback = nil // whole tokens only, so a resumed run lines up token by token
			m.ReplyMinTokens, m.ReplyMaxTokens = 20, 20
		})
		h := newHandle(t, lib, params(lib, model))
		full := collect(t, h, prompt("story"), InferParams{}, nil)
		full.finish(t)

		paused := collect(t, h, prompt("story"), InferParams{}, func(i int, _ Delivery) CallbackAction {
			if i == 2 {
				return Pause
			}
			return Continue
		})
		paused.finish(t)
		if got, want := paused.tokens(0), full.tokens(0)[:3]; !slices.Equal(got, want) {
			t.Fatalf("paused run delivered %v, want the first 3 tokens %v", got, want)
		}
		if h.IsRunning() {
			t.Error("IsRunning after a paused run returned")
		}
		sys := len(m.Tokenize(m.ChatTemplate.System))
		sizes, _ := h.KVCacheSize()
		if want := sys + turnTokens(&m, "story") + 3; sizes[0] != want {
			t.Fatalf("a paused run keeps %d positions, want %d", sizes[0], want)
		}
		// Ranges are allowed now (paused with keep_history 0): drop 2 positions.
		if err := h.ClearKVCache(false, []KVRange{{Start: sys, End: sys + 2}}); err != nil {
			t.Fatalf("ClearKVCache(range) while paused: %v", err)
		}
		if after, _ := h.KVCacheSize(); after[0] != sizes[0]-2 {
			t.Errorf("clearing a 2-position range left %d positions, want %d", after[0], sizes[0]-2)
		}
		// Put the cache back the way the paused run left it, then resume.
		collect(t, h, prompt("story"), InferParams{}, nil).finish(t)
		collect(t, h, prompt("story"), InferParams{}, func(i int, _ Delivery) CallbackAction {
			if i == 2 {
				return Pause
			}
			return Continue
		}).finish(t)
		resumed := collect(t, h, prompt(""), InferParams{}, nil)
		resumed.finish(t)
		rest := full.tokens(0)[3:]
		got := resumed.tokens(0)
		n := min(len(got), len(rest))
		if n == 0 || !slices.Equal(got[:n], rest[:n]) {
			t.Errorf("the resumed run delivered %v, want it to continue with %v", got, rest)
		}
		if err := h.ClearKVCache(false, []KVRange{{Start: 0, End: 1}}); err == nil {
			t.Error("ClearKVCache(range) succeeded with no paused run")
		}
		if err := h.ClearKVCache(false, []KVRange{{0, 1}, {0, 1}}); err == nil || !strings.Contains(err.Error(), "one per batch entry") {
			t.Errorf("ClearKVCache with 2 ranges for 1 batch entry: %v", err)
		}
	})
}

func TestLoraChangesTheOutput(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		dir := t.TempDir()
		model, _ := writeModel(t, nil)
		h := newHandle(t, lib, params(lib, model))
		for _, name := range []string{"chat", "code"} {
			path := filepath.Join(dir, name+".rkllm-lora")
			if err := simulator.WriteLora(path, name); err != nil {
				t.Fatal(err)
			}
			if err := h.LoadLora(LoraAdapter{Path: path, Name: name, Scale: 1}); err != nil {
				t.Fatalf("LoadLora(%s): %v", name, err)
			}
		}
		texts := map[string]string{}
		for _, name := range []string{"", "chat", "code", "chat"} {
			r := collect(t, h, prompt("same prompt"), InferParams{LoraAdapterName: name}, nil)
			r.finish(t)
			if prev, ok := texts[name]; ok && prev != r.text(0) {
				t.Errorf("adapter %q gave %q then %q", name, prev, r.text(0))
			}
			texts[name] = r.text(0)
		}
		if texts[""] == texts["chat"] || texts["chat"] == texts["code"] || texts[""] == texts["code"] {
			t.Errorf("adapters do not change the output: %q", texts)
		}
		// The binding knows the adapters it loaded: an unknown name never reaches C.
		r := collect(t, h, prompt("x"), InferParams{LoraAdapterName: "missing"}, nil)
		var ie *InputError
		if !errors.As(r.err, &ie) || ie.Field != "infer_params.lora_params.lora_adapter_name" || len(r.deliveries) != 0 {
			t.Errorf("a run with an unknown adapter: %v, %d deliveries, want an InputError and none", r.err, len(r.deliveries))
		}
		var ce *CallError
		if err := h.LoadLora(LoraAdapter{Path: filepath.Join(dir, "chat.rkllm-lora"), Name: "chat"}); !errors.As(err, &ce) {
			t.Errorf("loading a second adapter named chat: %v", err)
		}
		if err := h.LoadLora(LoraAdapter{Path: filepath.Join(dir, "none"), Name: "none"}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "none") {
			t.Errorf("loading a missing adapter file: %v", err)
		}
	})
}

func TestPromptCacheSaveAndLoad(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		cache := filepath.Join(t.TempDir(), "prompt.cache")
		full := len(m.Tokenize(m.ChatTemplate.System)) + turnTokens(&m, "a long shared prefix")

		h := newHandle(t, lib, params(lib, model))
		saved := collect(t, h, prompt("a long shared prefix"), InferParams{PromptCache: &PromptCacheParams{Save: true, Path: cache}}, nil)
		if got := saved.finish(t).Results[0].Perf.PrefillTokens; int(got) != full {
			t.Fatalf("the saving run prefilled %d, want %d", got, full)
		}
		if _, err := os.Stat(cache); err != nil {
			t.Fatalf("no prompt cache file: %v", err)
		}

		h2 := newHandle(t, lib, params(lib, model))
		if err := h2.LoadPromptCache(cache); err != nil {
			t.Fatal(err)
		}
		hit := collect(t, h2, prompt("a long shared prefix"), InferParams{}, nil)
		if got := hit.finish(t).Results[0].Perf.PrefillTokens; got != 0 {
			t.Errorf("with the prompt cache loaded %d positions were prefilled, want 0", got)
		}
		if hit.text(0) != saved.text(0) {
			t.Errorf("the prompt cache changed the output: %q vs %q", hit.text(0), saved.text(0))
		}
		if err := h2.ReleasePromptCache(); err != nil {
			t.Fatal(err)
		}
		if err := h2.ClearKVCache(false, nil); err != nil {
			t.Fatal(err)
		}
		miss := collect(t, h2, prompt("a long shared prefix"), InferParams{}, nil)
		if got := miss.finish(t).Results[0].Perf.PrefillTokens; int(got) != full {
			t.Errorf("after ReleasePromptCache %d positions were prefilled, want %d", got, full)
		}
		var ce *CallError
		if err := h2.LoadPromptCache(model); !errors.As(err, &ce) {
			t.Errorf("loading a model file as a prompt cache: %v", err)
		}
	})
}

func TestChatTemplateAndThinking(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		h := newHandle(t, lib, params(lib, model))
		think := func(on bool) run {
			r := collect(t, h, []Input{{Type: InputPrompt, Prompt: "q", EnableThinking: on}}, InferParams{}, nil)
			r.finish(t)
			return r
		}
		off, on := think(false), think(true)
		if off.text(0) == on.text(0) {
			t.Error("enable_thinking does not change the output with the model's template")
		}
		if err := h.SetChatTemplate("SYS:", "U:", "A:"); err != nil {
			t.Fatal(err)
		}
		if err := h.ClearKVCache(false, nil); err != nil { // the new system prompt applies to an empty cache
			t.Fatal(err)
		}
		off2 := think(false)
		want := len(m.Tokenize("SYS:")) + len(m.Tokenize("U:")) + len(m.Tokenize("q")) + len(m.Tokenize("A:"))
		if got := int(off2.deliveries[len(off2.deliveries)-1].Results[0].Perf.PrefillTokens); got != want {
			t.Errorf("with the template set, %d positions were prefilled, want %d", got, want)
		}
		if on2 := think(true); on2.text(0) != off2.text(0) {
			t.Error("enable_thinking still applies after SetChatTemplate")
		}
		if off2.text(0) == off.text(0) {
			t.Error("SetChatTemplate does not change the output")
		}
	})
}

func TestFunctionTools(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		h := newHandle(t, lib, params(lib, model))
		tools := `[{"type":"function","function":{"name":"get_weather","description":"Weather",` +
			`"parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}}}}}]`
		if err := h.SetFunctionTools("You may call tools.", tools, "tool_response"); err != nil {
			t.Fatal(err)
		}
		call := collect(t, h, prompt("What does get_weather say for Paris?"), InferParams{}, nil)
		call.finish(t)
		if want := "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"sim\", \"days\": 1}}\n</tool_call>"; call.text(0) != want {
			t.Errorf("tool call reply %q, want %q", call.text(0), want)
		}
		plain := collect(t, h, prompt("Tell me a story"), InferParams{}, nil)
		plain.finish(t)
		if strings.Contains(plain.text(0), "<tool_call>") && strings.Contains(plain.text(0), "get_weather") {
			t.Errorf("a prompt without a tool gave a tool call: %q", plain.text(0))
		}
		result := collect(t, h, []Input{{Type: InputPrompt, Role: "tool", Prompt: `{"temp": 21, "tool": "get_weather"}`}}, InferParams{}, nil)
		result.finish(t)
		if strings.Contains(result.text(0), "<tool_call>\n{") {
			t.Errorf("a tool result was answered with another tool call: %q", result.text(0))
		}
		var ce *CallError
		if err := h.SetFunctionTools("x", `[{"type":`, "tool_response"); !errors.As(err, &ce) {
			t.Errorf("SetFunctionTools with broken JSON: %v", err)
		}
	})
}

func TestCrossAttnParams(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		enc := CrossAttnParams{NumTokens: 2, EncoderKCache: make([]float32, 2*m.HiddenSize), EncoderVCache: make([]float32, 2*m.HiddenSize),
			EncoderMask: []float32{1, 1}, EncoderPos: []int32{0, 1}}
		for i := range enc.EncoderKCache {
			enc.EncoderKCache[i] = float32(i) / 4
		}
		without := newHandle(t, lib, params(lib, model))
		if err := without.SetEmbedWidth(m.HiddenSize); err != nil {
			t.Fatal(err)
		}
		var ce *CallError
		if err := without.SetCrossAttnParams(enc); !errors.As(err, &ce) {
			t.Errorf("SetCrossAttnParams without use_cross_attn: %v", err)
		}
		p := params(lib, model)
		p.Extend.UseCrossAttn = 1
		h := newHandle(t, lib, p)
		if _, err := h.LearnEmbedWidth(t.Context()); err != nil {
			t.Fatal(err)
		}
		before := collect(t, h, prompt("decode"), InferParams{}, nil)
		if err := h.SetCrossAttnParams(enc); err != nil {
			t.Fatal(err)
		}
		after := collect(t, h, prompt("decode"), InferParams{}, nil)
		before.finish(t)
		after.finish(t)
		if before.text(0) == after.text(0) {
			t.Error("cross-attention params do not change the output")
		}
		bad := enc
		bad.EncoderPos = []int32{0}
		if err := h.SetCrossAttnParams(bad); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "encoder_pos") {
			t.Errorf("SetCrossAttnParams with a short EncoderPos: %v", err)
		}
		// The runtime reads num_tokens rows of its own width from K and V: rows of
		// another width are refused before C.
		narrow := enc
		narrow.EncoderKCache, narrow.EncoderVCache = make([]float32, 2), make([]float32, 2)
		if err := h.SetCrossAttnParams(narrow); !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "encoder_k_cache") {
			t.Errorf("SetCrossAttnParams with rows one float wide: %v", err)
		}
	})
}

func TestBatchRunsMatchSingleRuns(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		prompts := []string{"first", "second prompt", "third"}
		single := newHandle(t, lib, params(lib, model))
		var want []string
		for _, p := range prompts {
			r := collect(t, single, prompt(p), InferParams{}, nil)
			r.finish(t)
			want = append(want, r.text(0))
		}
		p := params(lib, model)
		p.Extend.NBatch = 3
		h := newHandle(t, lib, p)
		var inputs []Input
		for _, s := range prompts {
			inputs = append(inputs, Input{Type: InputPrompt, Prompt: s})
		}
		r := collect(t, h, inputs, InferParams{}, nil)
		fin := r.finish(t)
		for b := range prompts {
			if r.text(b) != want[b] {
				t.Errorf("batch entry %d: %q, want the single run's %q", b, r.text(b), want[b])
			}
			if int(fin.Results[b].Perf.GenerateTokens) != len(r.tokens(b)) {
				t.Errorf("batch entry %d: perf says %d tokens, %d delivered", b, fin.Results[b].Perf.GenerateTokens, len(r.tokens(b)))
			}
		}
		finished := false
		for _, d := range r.deliveries {
			if len(d.Results) != 3 {
				t.Fatalf("a delivery has %d results, want 3", len(d.Results))
			}
			for _, res := range d.Results {
				finished = finished || (d.State != StateFinish && res.TokenID < 0 && res.Text == "")
			}
		}
		if !finished {
			t.Error("no delivery marked a finished batch entry with a negative token id")
		}
		if sizes, err := h.KVCacheSize(); err != nil || len(sizes) != 3 {
			t.Errorf("KVCacheSize = %v, %v, want 3 entries", sizes, err)
		}
		if err := h.Run(t.Context(), inputs[:2], InferParams{}, func(Delivery) CallbackAction { return Continue }); err == nil ||
			!errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "n_batch 3") {
			t.Errorf("Run with 2 inputs for n_batch 3: %v", err)
		}
	})
}

func TestSpeedFromTheModelFile(t *testing.T) {
	lib := simLib(t, ABI13)
	model, _ := writeModel(t, func(m *simulator.Model) {
		m.DecodeTokensPerSecond, m.PrefillTokensPerSecond = 200, 1000
		m.ReplyMinTokens, m.ReplyMaxTokens = 10, 10
	})
	h := newHandle(t, lib, params(lib, model))
	start := time.Now()
	perf := collect(t, h, prompt("pace"), InferParams{}, nil).finish(t).Results[0].Perf
	// Lower bounds only: the simulator sleeps at least 1/rate per token.
	if perf.GenerateTimeMs < 10*5 || float64(perf.PrefillTimeMs) < float64(perf.PrefillTokens) || time.Since(start) < 50*time.Millisecond {
		t.Errorf("at 200 tokens/s decode and 1000/s prefill: %+v", perf)
	}
}
