package rkllmrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	kjson "sigs.k8s.io/json"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// The params of each method, named after the C function's arguments and struct fields.

// paramJSON is RKLLMParam. Decoding starts from the runtime's defaults, so a client may
// send only the fields it changes.
type paramJSON struct {
	ModelPath        cString         `json:"model_path"`
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
	ImgStart         cString         `json:"img_start"`   // ABI 1.2
	ImgEnd           cString         `json:"img_end"`     // ABI 1.2
	ImgContent       cString         `json:"img_content"` // ABI 1.2
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
		ModelPath: cString(p.ModelPath), MaxContextLen: p.MaxContextLen, MaxNewTokens: p.MaxNewTokens, TopK: p.TopK,
		NKeep: p.NKeep, TopP: p.TopP, Temperature: p.Temperature, RepeatPenalty: p.RepeatPenalty,
		FrequencyPenalty: p.FrequencyPenalty, PresencePenalty: p.PresencePenalty, Mirostat: p.Mirostat,
		MirostatTau: p.MirostatTau, MirostatEta: p.MirostatEta, SkipSpecialToken: cBool(p.SkipSpecialToken),
		IgnoreEOSToken: cBool(p.IgnoreEOSToken), IsAsync: cBool(p.IsAsync), ImgStart: cString(p.ImgStart),
		ImgEnd: cString(p.ImgEnd), ImgContent: cString(p.ImgContent),
		ExtendParam: extendParamJSON{
			BaseDomainID: p.Extend.BaseDomainID, EmbedFlash: p.Extend.EmbedFlash, EnabledCPUsNum: p.Extend.EnabledCPUsNum,
			EnabledCPUsMask: cpuMask(p.Extend.EnabledCPUsMask), NBatch: p.Extend.NBatch, UseCrossAttn: p.Extend.UseCrossAttn,
		},
	}
}

func (j *paramJSON) param() runtime.Param {
	return runtime.Param{
		ModelPath: string(j.ModelPath), MaxContextLen: j.MaxContextLen, MaxNewTokens: j.MaxNewTokens, TopK: j.TopK,
		NKeep: j.NKeep, TopP: j.TopP, Temperature: j.Temperature, RepeatPenalty: j.RepeatPenalty,
		FrequencyPenalty: j.FrequencyPenalty, PresencePenalty: j.PresencePenalty, Mirostat: j.Mirostat,
		MirostatTau: j.MirostatTau, MirostatEta: j.MirostatEta, SkipSpecialToken: bool(j.SkipSpecialToken),
		IgnoreEOSToken: bool(j.IgnoreEOSToken), IsAsync: bool(j.IsAsync), ImgStart: string(j.ImgStart),
		ImgEnd: string(j.ImgEnd), ImgContent: string(j.ImgContent),
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
	case p.NKeep > p.MaxContextLen:
		return jsonrpc.InvalidParams("param.n_keep", "is %d, more than max_context_len (%d): the tokens kept when the context window shifts are part of it", p.NKeep, p.MaxContextLen)
	case p.TopK < 0:
		return jsonrpc.InvalidParams("param.top_k", "must not be negative, got %d", p.TopK)
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
		LoraAdapterPath cString  `json:"lora_adapter_path"`
		LoraAdapterName cString  `json:"lora_adapter_name"`
		Scale           *float32 `json:"scale"`
	} `json:"lora_adapter"`
}

type promptCacheParams struct {
	PromptCachePath cString `json:"prompt_cache_path"`
}

type clearKVCacheParams struct {
	KeepSystemPrompt cBool   `json:"keep_system_prompt"`
	StartPos         []int32 `json:"start_pos"`
	EndPos           []int32 `json:"end_pos"`
}

type chatTemplateParams struct {
	SystemPrompt  cString `json:"system_prompt"`
	PromptPrefix  cString `json:"prompt_prefix"`
	PromptPostfix cString `json:"prompt_postfix"`
}

type functionToolsParams struct {
	SystemPrompt cString `json:"system_prompt"`
	// Tools is the tools JSON: a string, or the array itself.
	Tools           json.RawMessage `json:"tools"`
	ToolResponseStr cString         `json:"tool_response_str"`
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
	PromptInput    *cString   `json:"prompt_input"`
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
	Prompt         cString `json:"prompt"`
	ImageEmbed     floats  `json:"image_embed"`
	NImageTokens   int     `json:"n_image_tokens"`
	NImage         int     `json:"n_image"`
	ImageWidth     int     `json:"image_width"`
	ImageHeight    int     `json:"image_height"`
	ImageStart     cString `json:"image_start"`
	ImageEnd       cString `json:"image_end"`
	ImageContent   cString `json:"image_content"`
	VideoEmbed     floats  `json:"video_embed"`
	NFrameTokens   int     `json:"n_frame_tokens"`
	NFramePerVideo int     `json:"n_frame_per_video"`
	NVideo         int     `json:"n_video"`
	VideoStart     cString `json:"video_start"`
	VideoEnd       cString `json:"video_end"`
	VideoContent   cString `json:"video_content"`
	FrameWidth     int     `json:"frame_width"`
	FrameHeight    int     `json:"frame_height"`
}

type inferParamsJSON struct {
	Mode       inferMode `json:"mode"`
	LoraParams *struct {
		LoraAdapterName cString `json:"lora_adapter_name"`
	} `json:"lora_params"`
	PromptCacheParams *struct {
		SavePromptCache cBool   `json:"save_prompt_cache"`
		PromptCachePath cString `json:"prompt_cache_path"`
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

// inputs decodes the input member (one object, or an array for n_batch > 1) and
// checks it against lim: the loaded model's limits, when one is loaded.
func (p *runParams) inputs(lim runtime.Limits) ([]runtime.Input, bool, error) {
	raw := bytes.TrimSpace(p.Input)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false, jsonrpc.InvalidParams("input", "is required: an RKLLMInput object such as {\"input_type\":\"RKLLM_INPUT_PROMPT\",\"prompt_input\":\"Hello\"}")
	}
	elems := []json.RawMessage{raw}
	batch := raw[0] == '['
	if batch {
		if err := strictDecode(raw, &elems); err != nil {
			return nil, true, prefixField("input", err)
		}
		if len(elems) == 0 {
			return nil, true, jsonrpc.InvalidParams("input", "an array of inputs must not be empty (it holds n_batch inputs)")
		}
	}
	// Each element on its own, so that an error names its index.
	wires := make([]inputJSON, len(elems))
	for i, e := range elems {
		if err := strictDecode(e, &wires[i]); err != nil {
			return nil, batch, prefixField(inputField(i, batch), err)
		}
	}
	out := make([]runtime.Input, len(wires))
	for i := range wires {
		in, err := wires[i].input(inputField(i, batch))
		if err != nil {
			return nil, batch, err
		}
		out[i] = in
	}
	if err := runtime.CheckInputs(out, lim); err != nil {
		return nil, batch, invalidInput(err, batch)
	}
	return out, batch, nil
}

// inputField is the path of input i: "input", or "input[i]" in an array.
func inputField(i int, batch bool) string {
	if batch {
		return fmt.Sprintf("input[%d]", i)
	}
	return "input"
}

// invalidInput turns a *runtime.InputError (or an *UnsupportedError) into invalid
// params naming the member; batch tells how the input was given.
func invalidInput(err error, batch bool) error {
	var ie *runtime.InputError
	if !errors.As(err, &ie) {
		return rpcError(err, nil)
	}
	field := ie.Field
	if ie.Input >= 0 && field != "input" {
		field = inputField(ie.Input, batch) + "." + field
	}
	reason := ie.Reason
	switch {
	case ie.NoWidth:
		reason += "; the server learns it when the model loads, which failed (the server log says why): set --embedding-width to the model's hidden size"
	case ie.NoVocab:
		reason += "; the server learns it when the model loads, which failed (the server log says why): set --vocab-size to the model's vocabulary size"
	}
	return jsonrpc.InvalidParams(field, "%s", reason)
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
		in.Prompt = string(*w.PromptInput)
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
		in.Multimodal = w.MultimodalInput.multimodal()
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

// tokens converts token_input; the shared rules (runtime.CheckInputs) check the ids.
func (w *inputJSON) tokens(field string, in *runtime.Input) error {
	in.TokenIDs = w.TokenInput.InputIDs
	if n := w.TokenInput.NTokens; n != nil && *n != len(in.TokenIDs) {
		return jsonrpc.InvalidParams(field+".token_input.n_tokens", "is %d but input_ids holds %d ids; omit it or make them match", *n, len(in.TokenIDs))
	}
	return nil
}

// embed converts embed_input, whose n_tokens is required (the rows of embed).
func (w *inputJSON) embed(field string, in *runtime.Input) error {
	in.Embed = w.EmbedInput.Embed
	if w.EmbedInput.NTokens == nil {
		return jsonrpc.InvalidParams(field+".embed_input.n_tokens", "is required: the number of embedding rows (embed holds n_tokens x the model's embedding width floats)")
	}
	in.NTokens = *w.EmbedInput.NTokens
	return nil
}

// multimodal converts multimodal_input; the shared rules check it.
func (m *multimodalJSON) multimodal() runtime.MultimodalInput {
	return runtime.MultimodalInput{
		Prompt: string(m.Prompt), ImageEmbed: m.ImageEmbed, NImageTokens: m.NImageTokens, NImage: m.NImage,
		ImageWidth: m.ImageWidth, ImageHeight: m.ImageHeight, ImageStart: string(m.ImageStart), ImageEnd: string(m.ImageEnd),
		ImageContent: string(m.ImageContent), VideoEmbed: m.VideoEmbed, NFrameTokens: m.NFrameTokens,
		NFramePerVideo: m.NFramePerVideo, NVideo: m.NVideo, VideoStart: string(m.VideoStart), VideoEnd: string(m.VideoEnd),
		VideoContent: string(m.VideoContent), FrameWidth: m.FrameWidth, FrameHeight: m.FrameHeight,
	}
}

// check applies the ranges of RKLLMInferParam's members.
func (j *inferParamsJSON) check() error {
	if s := j.SamplingParams; s != nil {
		f := "infer_params.sampling_params."
		switch {
		case s.TopK < 0:
			return jsonrpc.InvalidParams(f+"top_k", "must not be negative, got %d", s.TopK)
		case !(s.TopP >= 0 && s.TopP <= 1):
			return jsonrpc.InvalidParams(f+"top_p", "must be between 0 and 1, got %g", s.TopP)
		case !(s.Temperature >= 0):
			return jsonrpc.InvalidParams(f+"temperature", "must not be negative, got %g", s.Temperature)
		case s.Mirostat < 0 || s.Mirostat > 2:
			return jsonrpc.InvalidParams(f+"mirostat", "must be 0 (off), 1 or 2, got %d", s.Mirostat)
		}
	}
	return nil
}

// inferParams converts RKLLMInferParam.
func (j *inferParamsJSON) inferParams() runtime.InferParams {
	ip := runtime.InferParams{Mode: runtime.InferMode(j.Mode), KeepHistory: bool(j.KeepHistory), MaxNewTokens: j.MaxNewTokens}
	if j.LoraParams != nil {
		ip.LoraAdapterName = string(j.LoraParams.LoraAdapterName)
	}
	if c := j.PromptCacheParams; c != nil {
		ip.PromptCache = &runtime.PromptCacheParams{Save: bool(c.SavePromptCache), Path: string(c.PromptCachePath)}
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

// strictDecode decodes JSON as params are decoded: names matched exactly, unknown and
// repeated members rejected.
func strictDecode(raw []byte, v any) error { return jsonrpc.UnmarshalStrict(raw, v) }

// prefixField turns an error of a nested decode into ErrInvalidParams with the outer
// member's name in front of the path.
func prefixField(prefix string, err error) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			typeErr.Field = prefix
		} else {
			typeErr.Field = prefix + "." + typeErr.Field
		}
		return jsonrpc.ParamsError(typeErr)
	}
	var fieldErr kjson.FieldError
	if errors.As(err, &fieldErr) {
		path := fieldErr.FieldPath()
		if !strings.HasPrefix(path, "[") {
			path = "." + path
		}
		fieldErr.SetFieldPath(prefix + path)
		return jsonrpc.ParamsError(fieldErr)
	}
	return jsonrpc.ParamsError(err)
}
