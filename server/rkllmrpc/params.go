package rkllmrpc

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// The params of each method, named after the C function's arguments and struct fields.

// paramJSON is RKLLMParam. Decoding starts from the runtime's defaults, so a client may
// send only the fields it changes.
type paramJSON struct {
	ModelPath        string          `json:"model_path"`
	MaxContextLen    int32           `json:"max_context_len"`
	MaxNewTokens     int32           `json:"max_new_tokens"`
	TopK             int32           `json:"top_k"`
	NKeep            int32           `json:"n_keep"`
	TopP             float32         `json:"top_p"`
	Temperature      float32         `json:"temperature"`
	RepeatPenalty    float32         `json:"repeat_penalty"`
	FrequencyPenalty float32         `json:"frequency_penalty"`
	PresencePenalty  float32         `json:"presence_penalty"`
	Mirostat         int32           `json:"mirostat"`
	MirostatTau      float32         `json:"mirostat_tau"`
	MirostatEta      float32         `json:"mirostat_eta"`
	SkipSpecialToken cBool           `json:"skip_special_token"`
	IgnoreEOSToken   cBool           `json:"ignore_eos_token"` // ABI 1.3
	IsAsync          cBool           `json:"is_async"`
	ImgStart         string          `json:"img_start"`   // ABI 1.2
	ImgEnd           string          `json:"img_end"`     // ABI 1.2
	ImgContent       string          `json:"img_content"` // ABI 1.2
	ExtendParam      extendParamJSON `json:"extend_param"`
}

type extendParamJSON struct {
	BaseDomainID    int32   `json:"base_domain_id"`
	EmbedFlash      int8    `json:"embed_flash"`
	EnabledCPUsNum  int8    `json:"enabled_cpus_num"`
	EnabledCPUsMask cpuMask `json:"enabled_cpus_mask"`
	NBatch          uint8   `json:"n_batch"`
	UseCrossAttn    int8    `json:"use_cross_attn"`
}

func paramToJSON(p runtime.Param) paramJSON {
	return paramJSON{
		ModelPath: p.ModelPath, MaxContextLen: p.MaxContextLen, MaxNewTokens: p.MaxNewTokens, TopK: p.TopK,
		NKeep: p.NKeep, TopP: p.TopP, Temperature: p.Temperature, RepeatPenalty: p.RepeatPenalty,
		FrequencyPenalty: p.FrequencyPenalty, PresencePenalty: p.PresencePenalty, Mirostat: p.Mirostat,
		MirostatTau: p.MirostatTau, MirostatEta: p.MirostatEta, SkipSpecialToken: cBool(p.SkipSpecialToken),
		IgnoreEOSToken: cBool(p.IgnoreEOSToken), IsAsync: cBool(p.IsAsync), ImgStart: p.ImgStart,
		ImgEnd: p.ImgEnd, ImgContent: p.ImgContent,
		ExtendParam: extendParamJSON{
			BaseDomainID: p.Extend.BaseDomainID, EmbedFlash: p.Extend.EmbedFlash, EnabledCPUsNum: p.Extend.EnabledCPUsNum,
			EnabledCPUsMask: cpuMask(p.Extend.EnabledCPUsMask), NBatch: p.Extend.NBatch, UseCrossAttn: p.Extend.UseCrossAttn,
		},
	}
}

func (j *paramJSON) param() runtime.Param {
	return runtime.Param{
		ModelPath: j.ModelPath, MaxContextLen: j.MaxContextLen, MaxNewTokens: j.MaxNewTokens, TopK: j.TopK,
		NKeep: j.NKeep, TopP: j.TopP, Temperature: j.Temperature, RepeatPenalty: j.RepeatPenalty,
		FrequencyPenalty: j.FrequencyPenalty, PresencePenalty: j.PresencePenalty, Mirostat: j.Mirostat,
		MirostatTau: j.MirostatTau, MirostatEta: j.MirostatEta, SkipSpecialToken: bool(j.SkipSpecialToken),
		IgnoreEOSToken: bool(j.IgnoreEOSToken), IsAsync: bool(j.IsAsync), ImgStart: j.ImgStart,
		ImgEnd: j.ImgEnd, ImgContent: j.ImgContent,
		Extend: runtime.ExtendParam{
			BaseDomainID: j.ExtendParam.BaseDomainID, EmbedFlash: j.ExtendParam.EmbedFlash,
			EnabledCPUsNum: j.ExtendParam.EnabledCPUsNum, EnabledCPUsMask: uint32(j.ExtendParam.EnabledCPUsMask),
			NBatch: j.ExtendParam.NBatch, UseCrossAttn: j.ExtendParam.UseCrossAttn,
		},
	}
}

// paramOut is RKLLMParam as results show it: only the fields the ABI has, the CPU mask
// as a number.
func paramOut(p runtime.Param, abi runtime.ABI) map[string]any {
	b, _ := json.Marshal(paramToJSON(p))
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if abi == runtime.ABI13 {
		delete(m, "img_start")
		delete(m, "img_end")
		delete(m, "img_content")
	} else {
		delete(m, "ignore_eos_token")
	}
	if ext, ok := m["extend_param"].(map[string]any); ok {
		ext["enabled_cpus_mask"] = p.Extend.EnabledCPUsMask
	}
	return m
}

// MarshalJSON writes the mask as a number.
func (m cpuMask) MarshalJSON() ([]byte, error) { return json.Marshal(uint32(m)) }

// checkParam applies the rules the server adds to the runtime's own.
func checkParam(p *runtime.Param) error {
	switch {
	case p.ModelPath == "":
		return jsonrpc.InvalidParams("param.model_path", "is required: the path of the .rkllm file (inside --model-dir)")
	case p.IsAsync:
		return jsonrpc.InvalidParams("param.is_async", "must be false: the server runs every generation on its own worker; use rkllm.run_async for an asynchronous run")
	case p.Extend.NBatch < 1 || p.Extend.NBatch > 100:
		return jsonrpc.InvalidParams("param.extend_param.n_batch", "must be between 1 and 100, got %d", p.Extend.NBatch)
	case p.MaxContextLen < 1:
		return jsonrpc.InvalidParams("param.max_context_len", "must be at least 1, got %d", p.MaxContextLen)
	case p.TopP < 0 || p.TopP > 1:
		return jsonrpc.InvalidParams("param.top_p", "must be between 0 and 1, got %g", p.TopP)
	case p.Temperature < 0:
		return jsonrpc.InvalidParams("param.temperature", "must not be negative, got %g", p.Temperature)
	case p.Mirostat < 0 || p.Mirostat > 2:
		return jsonrpc.InvalidParams("param.mirostat", "must be 0 (off), 1 or 2, got %d", p.Mirostat)
	}
	return nil
}

type initParams struct {
	Param json.RawMessage `json:"param"`
}

type loraParams struct {
	LoraAdapter *struct {
		LoraAdapterPath string   `json:"lora_adapter_path"`
		LoraAdapterName string   `json:"lora_adapter_name"`
		Scale           *float32 `json:"scale"`
	} `json:"lora_adapter"`
}

type promptCacheParams struct {
	PromptCachePath string `json:"prompt_cache_path"`
}

type clearKVCacheParams struct {
	KeepSystemPrompt cBool   `json:"keep_system_prompt"`
	StartPos         []int32 `json:"start_pos"`
	EndPos           []int32 `json:"end_pos"`
}

type chatTemplateParams struct {
	SystemPrompt  string `json:"system_prompt"`
	PromptPrefix  string `json:"prompt_prefix"`
	PromptPostfix string `json:"prompt_postfix"`
}

type functionToolsParams struct {
	SystemPrompt string `json:"system_prompt"`
	// Tools is the tools JSON: a string, or the array itself.
	Tools           json.RawMessage `json:"tools"`
	ToolResponseStr string          `json:"tool_response_str"`
}

type crossAttnParams struct {
	CrossAttnParams *struct {
		EncoderKCache floats  `json:"encoder_k_cache"`
		EncoderVCache floats  `json:"encoder_v_cache"`
		EncoderMask   floats  `json:"encoder_mask"`
		EncoderPos    []int32 `json:"encoder_pos"`
		NumTokens     int     `json:"num_tokens"`
	} `json:"cross_attn_params"`
}

type abortParams struct {
	RequestID string `json:"request_id"`
}

// runParams are the params of rkllm.run and rkllm.run_async.
type runParams struct {
	// Input is one RKLLMInput, or an array of n_batch of them.
	Input       json.RawMessage `json:"input"`
	InferParams inferParamsJSON `json:"infer_params"`
	Stream      bool            `json:"stream"`
	// Encoding of hidden states and logits in results: "json" (default) or "base64".
	Encoding string `json:"encoding"`
}

type inputJSON struct {
	Role           string     `json:"role"`
	EnableThinking cBool      `json:"enable_thinking"`
	InputType      *inputType `json:"input_type"`
	PromptInput    *string    `json:"prompt_input"`
	TokenInput     *struct {
		InputIDs []int32 `json:"input_ids"`
		NTokens  *int    `json:"n_tokens"`
	} `json:"token_input"`
	EmbedInput *struct {
		Embed   floats `json:"embed"`
		NTokens *int   `json:"n_tokens"`
	} `json:"embed_input"`
	MultimodalInput *multimodalJSON `json:"multimodal_input"`
}

type multimodalJSON struct {
	Prompt         string `json:"prompt"`
	ImageEmbed     floats `json:"image_embed"`
	NImageTokens   int    `json:"n_image_tokens"`
	NImage         int    `json:"n_image"`
	ImageWidth     int    `json:"image_width"`
	ImageHeight    int    `json:"image_height"`
	ImageStart     string `json:"image_start"`
	ImageEnd       string `json:"image_end"`
	ImageContent   string `json:"image_content"`
	VideoEmbed     floats `json:"video_embed"`
	NFrameTokens   int    `json:"n_frame_tokens"`
	NFramePerVideo int    `json:"n_frame_per_video"`
	NVideo         int    `json:"n_video"`
	VideoStart     string `json:"video_start"`
	VideoEnd       string `json:"video_end"`
	VideoContent   string `json:"video_content"`
	FrameWidth     int    `json:"frame_width"`
	FrameHeight    int    `json:"frame_height"`
}

type inferParamsJSON struct {
	Mode       inferMode `json:"mode"`
	LoraParams *struct {
		LoraAdapterName string `json:"lora_adapter_name"`
	} `json:"lora_params"`
	PromptCacheParams *struct {
		SavePromptCache cBool  `json:"save_prompt_cache"`
		PromptCachePath string `json:"prompt_cache_path"`
	} `json:"prompt_cache_params"`
	SamplingParams *struct {
		TopK             int32   `json:"top_k"`
		TopP             float32 `json:"top_p"`
		Temperature      float32 `json:"temperature"`
		RepeatPenalty    float32 `json:"repeat_penalty"`
		FrequencyPenalty float32 `json:"frequency_penalty"`
		PresencePenalty  float32 `json:"presence_penalty"`
		Mirostat         int32   `json:"mirostat"`
		MirostatTau      float32 `json:"mirostat_tau"`
		MirostatEta      float32 `json:"mirostat_eta"`
	} `json:"sampling_params"`
	KeepHistory  cBool `json:"keep_history"`
	MaxNewTokens int32 `json:"max_new_tokens"`
}

// inputs decodes the input member: one object, or an array for n_batch > 1.
func (p *runParams) inputs() ([]runtime.Input, bool, error) {
	raw := bytes.TrimSpace(p.Input)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false, jsonrpc.InvalidParams("input", "is required: an RKLLMInput object such as {\"input_type\":\"RKLLM_INPUT_PROMPT\",\"prompt_input\":\"Hello\"}")
	}
	var wires []inputJSON
	batch := raw[0] == '['
	if batch {
		if err := strictDecode(raw, &wires); err != nil {
			return nil, true, prefixField("input", err)
		}
		if len(wires) == 0 {
			return nil, true, jsonrpc.InvalidParams("input", "an array of inputs must not be empty (it holds n_batch inputs)")
		}
	} else {
		wires = make([]inputJSON, 1)
		if err := strictDecode(raw, &wires[0]); err != nil {
			return nil, false, prefixField("input", err)
		}
	}
	out := make([]runtime.Input, len(wires))
	for i := range wires {
		field := "input"
		if batch {
			field = fmt.Sprintf("input[%d]", i)
		}
		in, err := wires[i].input(field)
		if err != nil {
			return nil, batch, err
		}
		out[i] = in
	}
	return out, batch, nil
}

// input converts and checks one RKLLMInput.
func (w *inputJSON) input(field string) (runtime.Input, error) {
	in := runtime.Input{Role: w.Role, EnableThinking: bool(w.EnableThinking)}
	switch w.Role {
	case "", "user", "tool":
	default:
		return in, jsonrpc.InvalidParams(field+".role", `must be "user" or "tool" (tool results), got %q`, w.Role)
	}
	t, err := w.inputType(field)
	if err != nil {
		return in, err
	}
	in.Type = t
	missing := func(member string) error {
		return jsonrpc.InvalidParams(field+"."+member, "is required when input_type is %s", inputTypes.names[t])
	}
	switch t {
	case runtime.InputPrompt:
		if w.PromptInput == nil {
			return in, missing("prompt_input")
		}
		in.Prompt = *w.PromptInput
	case runtime.InputToken:
		if w.TokenInput == nil {
			return in, missing("token_input")
		}
		return in, w.tokens(field, &in)
	case runtime.InputEmbed:
		if w.EmbedInput == nil {
			return in, missing("embed_input")
		}
		return in, w.embed(field, &in)
	case runtime.InputMultimodal:
		if w.MultimodalInput == nil {
			return in, missing("multimodal_input")
		}
		return in, w.multimodal(field, &in)
	}
	return in, nil
}

// inputType is input_type, or the one member present when it is left out.
func (w *inputJSON) inputType(field string) (runtime.InputType, error) {
	if w.InputType != nil {
		return runtime.InputType(*w.InputType), nil
	}
	var present []runtime.InputType
	for t, set := range map[runtime.InputType]bool{
		runtime.InputPrompt: w.PromptInput != nil, runtime.InputToken: w.TokenInput != nil,
		runtime.InputEmbed: w.EmbedInput != nil, runtime.InputMultimodal: w.MultimodalInput != nil,
	} {
		if set {
			present = append(present, t)
		}
	}
	if len(present) != 1 {
		return 0, jsonrpc.InvalidParams(field+".input_type", "is required when the input does not hold exactly one of prompt_input, token_input, embed_input, multimodal_input")
	}
	return present[0], nil
}

func (w *inputJSON) tokens(field string, in *runtime.Input) error {
	in.TokenIDs = w.TokenInput.InputIDs
	if len(in.TokenIDs) == 0 {
		return jsonrpc.InvalidParams(field+".token_input.input_ids", "must hold at least one token id")
	}
	if n := w.TokenInput.NTokens; n != nil && *n != len(in.TokenIDs) {
		return jsonrpc.InvalidParams(field+".token_input.n_tokens", "is %d but input_ids holds %d ids; omit it or make them match", *n, len(in.TokenIDs))
	}
	return nil
}

func (w *inputJSON) embed(field string, in *runtime.Input) error {
	in.Embed = w.EmbedInput.Embed
	if w.EmbedInput.NTokens == nil || *w.EmbedInput.NTokens < 1 {
		return jsonrpc.InvalidParams(field+".embed_input.n_tokens", "is required: the number of embedding rows (embed holds n_tokens x hidden size floats)")
	}
	in.NTokens = *w.EmbedInput.NTokens
	if len(in.Embed) == 0 || len(in.Embed)%in.NTokens != 0 {
		return jsonrpc.InvalidParams(field+".embed_input.embed", "holds %d floats, not a multiple of n_tokens (%d)", len(in.Embed), in.NTokens)
	}
	return nil
}

func (w *inputJSON) multimodal(field string, in *runtime.Input) error {
	m := w.MultimodalInput
	in.Multimodal = runtime.MultimodalInput{
		Prompt: m.Prompt, ImageEmbed: m.ImageEmbed, NImageTokens: m.NImageTokens, NImage: m.NImage,
		ImageWidth: m.ImageWidth, ImageHeight: m.ImageHeight, ImageStart: m.ImageStart, ImageEnd: m.ImageEnd,
		ImageContent: m.ImageContent, VideoEmbed: m.VideoEmbed, NFrameTokens: m.NFrameTokens,
		NFramePerVideo: m.NFramePerVideo, NVideo: m.NVideo, VideoStart: m.VideoStart, VideoEnd: m.VideoEnd,
		VideoContent: m.VideoContent, FrameWidth: m.FrameWidth, FrameHeight: m.FrameHeight,
	}
	if min(m.NImage, m.NImageTokens, m.NVideo, m.NFrameTokens, m.NFramePerVideo) < 0 {
		return jsonrpc.InvalidParams(field+".multimodal_input", "counts (n_image, n_image_tokens, n_video, ...) must not be negative")
	}
	if m.NImage > 0 && len(m.ImageEmbed)%(m.NImage*max(m.NImageTokens, 1)) != 0 {
		return jsonrpc.InvalidParams(field+".multimodal_input.image_embed", "holds %d floats, not n_image (%d) x n_image_tokens (%d) x hidden size", len(m.ImageEmbed), m.NImage, m.NImageTokens)
	}
	return nil
}

// inferParams converts RKLLMInferParam.
func (j *inferParamsJSON) inferParams() runtime.InferParams {
	ip := runtime.InferParams{Mode: runtime.InferMode(j.Mode), KeepHistory: bool(j.KeepHistory), MaxNewTokens: j.MaxNewTokens}
	if j.LoraParams != nil {
		ip.LoraAdapterName = j.LoraParams.LoraAdapterName
	}
	if c := j.PromptCacheParams; c != nil {
		ip.PromptCache = &runtime.PromptCacheParams{Save: bool(c.SavePromptCache), Path: c.PromptCachePath}
	}
	if s := j.SamplingParams; s != nil {
		ip.Sampling = &runtime.SamplingParams{
			TopK: s.TopK, TopP: s.TopP, Temperature: s.Temperature, RepeatPenalty: s.RepeatPenalty,
			FrequencyPenalty: s.FrequencyPenalty, PresencePenalty: s.PresencePenalty, Mirostat: s.Mirostat,
			MirostatTau: s.MirostatTau, MirostatEta: s.MirostatEta,
		}
	}
	return ip
}

// strictDecode decodes JSON rejecting unknown members.
func strictDecode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// prefixField decodes an error of a nested decode into ErrInvalidParams with the outer
// member's name in front of the path.
func prefixField(prefix string, err error) error {
	var typeErr *json.UnmarshalTypeError
	if asTypeErr(err, &typeErr) {
		if typeErr.Field == "" {
			typeErr.Field = prefix
		} else {
			typeErr.Field = prefix + "." + typeErr.Field
		}
		return jsonrpc.ParamsError(typeErr)
	}
	if msg := err.Error(); len(msg) > len("json: unknown field ") && msg[:len("json: unknown field ")] == "json: unknown field " {
		name := msg[len("json: unknown field "):]
		return jsonrpc.InvalidParams(prefix+"."+trimQuotes(name), "unknown member; check the spelling against docs/jsonrpc.md")
	}
	return jsonrpc.ParamsError(err)
}

func asTypeErr(err error, target **json.UnmarshalTypeError) bool {
	t, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*target = t
	}
	return ok
}

func trimQuotes(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}
