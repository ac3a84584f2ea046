package openai

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
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

// renderCost is what a rendered turn adds to its text (role markers, separators).
const renderCost = 64

// chat serves POST /v1/chat/completions.
func (h *Handler) chat(w http.ResponseWriter, r *http.Request) {
	spec, e := h.chatSpec(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	h.run(w, r, spec)
}

// chatRequest is a decoded chat completion request.
type chatRequest struct {
	model    string
	msgs     []chattemplate.Message
	sampling *sampling
	tools    []tool
	thinking *bool
}

func (h *Handler) chatSpec(w http.ResponseWriter, r *http.Request) (*runSpec, *Error) {
	body, e := h.readBody(w, r)
	if e != nil {
		return nil, e
	}
	pay := payFor(r.Context())
	req, e := decodeChat(body, pay)
	if e != nil {
		return nil, e
	}
	param, abi, e := h.ready(req.model)
	if e != nil {
		return nil, e
	}
	infer, e := req.sampling.inferParams(abi, param)
	if e != nil {
		return nil, e
	}
	tmpl := h.opts.Template
	conv := &chattemplate.Conversation{Messages: req.msgs, EnableThinking: req.thinking}
	spec := &runSpec{chat: true, model: req.model, infer: infer, sampling: req.sampling, abi: abi, loaded: param, parseTools: len(req.tools) > 0}
	if len(req.tools) > 0 {
		if tmpl.ToolsInPrompt() {
			conv.Tools = toolsJSON(req.tools)
		} else {
			spec.tools = &workerproto.SetFunctionTools{SystemPrompt: tmpl.SystemPrompt(req.msgs), Tools: string(toolsJSON(req.tools)), ToolResponseStr: tmpl.ToolResponse()}
			conv.OmitSystem = true
		}
	}
	// The prompt is about as long as the conversation's text plus each turn's markers;
	// a template that writes more pays for the rest once it is known.
	estimate := len(body) + renderCost*len(req.msgs)
	if e := pay.pay(estimate); e != nil {
		return nil, e
	}
	prompt, err := tmpl.Render(r.Context(), conv)
	if extra := len(prompt) - estimate; err == nil && extra > 0 {
		if e := pay.pay(extra); e != nil {
			return nil, e
		}
	}
	if err != nil {
		if errors.Is(err, chattemplate.ErrInvalid) {
			why := strings.TrimPrefix(err.Error(), chattemplate.ErrInvalid.Error()+": ")
			return nil, invalid("messages", "invalid_value", "The conversation cannot be rendered with the chat template %s: %s.", tmpl.Name(), why)
		}
		return nil, &Error{Status: http.StatusInternalServerError, Type: typeServer, Message: err.Error()}
	}
	if e := noNUL("messages", prompt); e != nil { // a template may add what no message held
		return nil, e
	}
	spec.prompt, spec.opening = prompt, chattemplate.OpenReasoning(prompt)
	return spec, nil
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
	tools, e := decodeTools(m["tools"], pay)
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
	spec, e := h.completionSpec(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	h.run(w, r, spec)
}

func (h *Handler) completionSpec(w http.ResponseWriter, r *http.Request) (*runSpec, *Error) {
	body, e := h.readBody(w, r)
	if e != nil {
		return nil, e
	}
	m, e := fields(body, "", payFor(r.Context()))
	if e != nil {
		return nil, e
	}
	if e := checkKnown(m, "", completionFields, nil); e != nil {
		return nil, e
	}
	if e := checkCompletionOnly(m); e != nil {
		return nil, e
	}
	var model string
	if e := decodeField(m, "model", "model", &model, "a string"); e != nil {
		return nil, e
	}
	prompt, e := decodePrompt(m["prompt"])
	if e != nil {
		return nil, e
	}
	if e := noNUL("prompt", prompt); e != nil {
		return nil, e
	}
	s, e := decodeSampling(m, "max_tokens")
	if e != nil {
		return nil, e
	}
	param, abi, e := h.ready(model)
	if e != nil {
		return nil, e
	}
	infer, e := s.inferParams(abi, param)
	if e != nil {
		return nil, e
	}
	return &runSpec{model: model, prompt: prompt, infer: infer, sampling: s, abi: abi, loaded: param}, nil
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
