package openai

import (
	"encoding/json"
	"net/http"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// chatFields are the members of a chat completion request this server reads or
// accepts; members in chatUnsupported are refused with their reason when set.
var chatFields = set(append([]string{"model", "messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
	"user", "metadata", "store", "service_tier", "logprobs", "top_logprobs", "logit_bias", "response_format", "chat_template_kwargs"},
	samplingFields...)...)

var chatUnsupported = map[string]string{
	"functions":          "use tools",
	"function_call":      "use tool_choice",
	"modalities":         "this server produces text only",
	"audio":              "this server produces text only",
	"prediction":         "predicted outputs are not supported",
	"reasoning_effort":   "the RKLLM runtime has no reasoning effort; switch thinking with chat_template_kwargs.enable_thinking",
	"web_search_options": "this server has no web search",
	"top_logprobs":       "the RKLLM runtime reports no log probabilities",
}

var completionFields = set(append([]string{"model", "prompt", "user", "logprobs", "echo", "suffix", "best_of", "logit_bias"}, samplingFields...)...)

func set(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// checkUnsupportedValues refuses members whose value asks for something the runtime
// cannot do (log probabilities, logit bias, structured output).
func checkUnsupportedValues(m map[string]json.RawMessage) *Error {
	var logprobs bool
	if json.Unmarshal(m["logprobs"], &logprobs) == nil && logprobs {
		return unsupported("logprobs", "The RKLLM runtime reports no log probabilities: leave 'logprobs' out or false.")
	}
	var bias map[string]json.RawMessage
	if json.Unmarshal(m["logit_bias"], &bias) == nil && len(bias) > 0 {
		return unsupported("logit_bias", "The RKLLM runtime cannot bias tokens: leave 'logit_bias' out.")
	}
	var format struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(m["response_format"], &format) == nil && format.Type != "" && format.Type != "text" {
		return unsupported("response_format", "Structured output (%s) is not supported: the RKLLM runtime cannot constrain decoding; use {\"type\": \"text\"} or leave it out.", format.Type)
	}
	return nil
}

// chat serves POST /v1/chat/completions.
func (h *Handler) chat(w http.ResponseWriter, r *http.Request) {
	spec, s, e := h.chatSpec(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	h.run(w, r, &request{spec: spec, chat: true, model: s.model, stream: s.sampling.Stream, includeUsage: s.sampling.IncludeUsage})
}

// chatRequest is a decoded chat completion request.
type chatRequest struct {
	model    string
	msgs     []chattemplate.Message
	sampling *sampling
	tools    []generation.Tool
	thinking *bool
}

func (h *Handler) chatSpec(w http.ResponseWriter, r *http.Request) (*generation.Spec, *chatRequest, *Error) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		return nil, nil, e
	}
	req, e := decodeChat(body, generation.BudgetFor(r.Context()))
	if e != nil {
		return nil, nil, e
	}
	loaded, e := h.ready(req.model)
	if e != nil {
		return nil, nil, e
	}
	spec, e := newSpec("chatcmpl-", req.sampling, loaded)
	if e != nil {
		return nil, nil, e
	}
	if e := h.g.PrepareChat(r.Context(), &generation.Chat{Messages: req.msgs, Tools: req.tools, Thinking: req.thinking}, spec); e != nil {
		return nil, nil, e
	}
	return spec, req, nil
}

// newSpec starts a run's spec from the sampling members.
func newSpec(prefix string, s *sampling, loaded generation.Loaded) (*generation.Spec, *Error) {
	infer, e := s.InferParams(loaded, samplingName)
	if e != nil {
		return nil, e
	}
	return &generation.Spec{IDPrefix: prefix, Infer: infer, Stop: s.Stop, MaxTokens: s.MaxTokens, Loaded: loaded}, nil
}

// decodeChat decodes and checks a chat completion request.
func decodeChat(body []byte, pay payFunc) (*chatRequest, *Error) {
	m, e := fields(body, "", pay)
	if e != nil {
		return nil, e
	}
	if e := checkKnown(m, "", chatFields, chatUnsupported); e != nil {
		return nil, e
	}
	if e := checkUnsupportedValues(m); e != nil {
		return nil, e
	}
	req := &chatRequest{}
	if e := decodeField(m, "model", "model", &req.model, "a string"); e != nil {
		return nil, e
	}
	if _, ok := m["messages"]; !ok {
		return nil, invalid("messages", "missing_required_parameter", "Missing required parameter: 'messages'.")
	}
	if req.msgs, e = decodeMessages(m["messages"], pay); e != nil {
		return nil, e
	}
	if req.sampling, e = decodeSampling(m, "max_tokens"); e != nil {
		return nil, e
	}
	var mct *int
	if e := decodeField(m, "max_completion_tokens", "max_completion_tokens", &mct, "an integer"); e != nil {
		return nil, e
	}
	if mct != nil {
		if *mct < 1 {
			return nil, invalid("max_completion_tokens", "invalid_value", "Invalid 'max_completion_tokens': %d must be at least 1.", *mct)
		}
		req.sampling.MaxTokens = mct
	}
	tools, e := generation.DecodeTools(m["tools"], "tools", pay)
	if e != nil {
		return nil, e
	}
	if req.tools, e = toolChoice(m["tool_choice"], tools); e != nil {
		return nil, e
	}
	var kwargs struct {
		EnableThinking *bool `json:"enable_thinking"`
	}
	if e := decodeField(m, "chat_template_kwargs", "chat_template_kwargs", &kwargs, "an object"); e != nil {
		return nil, e
	}
	req.thinking = kwargs.EnableThinking
	return req, nil
}

// completions serves POST /v1/completions: the prompt goes to the model as it is.
func (h *Handler) completions(w http.ResponseWriter, r *http.Request) {
	spec, model, s, e := h.completionSpec(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	h.run(w, r, &request{spec: spec, model: model, stream: s.Stream, includeUsage: s.IncludeUsage})
}

func (h *Handler) completionSpec(w http.ResponseWriter, r *http.Request) (*generation.Spec, string, *sampling, *Error) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		return nil, "", nil, e
	}
	m, e := fields(body, "", generation.BudgetFor(r.Context()))
	if e != nil {
		return nil, "", nil, e
	}
	if e := checkKnown(m, "", completionFields, nil); e != nil {
		return nil, "", nil, e
	}
	if e := checkCompletionOnly(m); e != nil {
		return nil, "", nil, e
	}
	var model string
	if e := decodeField(m, "model", "model", &model, "a string"); e != nil {
		return nil, "", nil, e
	}
	prompt, e := decodePrompt(m["prompt"])
	if e != nil {
		return nil, "", nil, e
	}
	if e := generation.NoNUL("prompt", prompt); e != nil {
		return nil, "", nil, e
	}
	s, e := decodeSampling(m, "max_tokens")
	if e != nil {
		return nil, "", nil, e
	}
	loaded, e := h.ready(model)
	if e != nil {
		return nil, "", nil, e
	}
	spec, e := newSpec("cmpl-", s, loaded)
	if e != nil {
		return nil, "", nil, e
	}
	spec.Prompt = prompt
	return spec, model, s, nil
}

// checkCompletionOnly refuses the members of a completion request the server cannot
// honour.
func checkCompletionOnly(m map[string]json.RawMessage) *Error {
	var logprobs *int
	if e := decodeField(m, "logprobs", "logprobs", &logprobs, "an integer"); e != nil {
		return e
	}
	if logprobs != nil {
		return unsupported("logprobs", "The RKLLM runtime reports no log probabilities: leave 'logprobs' out.")
	}
	var echo bool
	var suffix string
	bestOf := 1
	for _, f := range []struct {
		key  string
		v    any
		what string
	}{{"echo", &echo, "a boolean"}, {"suffix", &suffix, "a string"}, {"best_of", &bestOf, "an integer"}} {
		if e := decodeField(m, f.key, f.key, f.v, f.what); e != nil {
			return e
		}
	}
	switch {
	case echo:
		return unsupported("echo", "'echo' is not supported: the prompt is yours already.")
	case suffix != "":
		return unsupported("suffix", "'suffix' (insertion) is not supported by this server.")
	case bestOf != 1:
		return unsupported("best_of", "'best_of' must be 1: this server generates one completion per request.")
	}
	return checkUnsupportedValues(map[string]json.RawMessage{"logit_bias": m["logit_bias"]})
}

// decodePrompt reads the prompt: a string, or an array holding one string.
func decodePrompt(raw json.RawMessage) (string, *Error) {
	if isNull(raw) {
		return "", invalid("prompt", "missing_required_parameter", "Missing required parameter: 'prompt'.")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return "", invalid("prompt", "invalid_value", "Invalid 'prompt': it must not be empty.")
		}
		return s, nil
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		if len(list) != 1 || list[0] == "" {
			return "", unsupported("prompt", "Invalid 'prompt': this server completes one prompt per request; send a string (or an array of one string).")
		}
		return list[0], nil
	}
	return "", unsupported("prompt", "Invalid 'prompt': token arrays are not supported; send the prompt as a string.")
}
