package openai

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// fields splits a JSON object into its members, keeping the raw value of each (as
// slices of raw: nothing is copied).
func fields(raw []byte, where string, pay payFunc) (map[string]json.RawMessage, *Error) {
	var m map[string]json.RawMessage
	if json.Valid(raw) {
		n := 0
		generation.EachMember(raw, func(_, _ []byte) { n++ })
		if e := pay.Pay(n * memberCost); e != nil {
			return nil, e
		}
		m = make(map[string]json.RawMessage, n)
		if !generation.EachMember(raw, func(key, value []byte) { m[generation.MemberName(key)] = value }) {
			m = nil
		}
	}
	if m != nil {
		return m, nil
	}
	if where != "" {
		return nil, invalid(where, "invalid_type", "%s must be an object.", where)
	}
	// Say what is wrong the way encoding/json does.
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, invalid("", "", "We could not parse the JSON body of your request: %v. The body must be a JSON object.", errText(err))
	}
	return nil, invalid("", "", "We could not parse the JSON body of your request: data after the JSON object.")
}

// payFunc charges a request's account of the budget of bytes in flight before an
// allocation; nil charges nothing.
type payFunc = generation.Budget

// Costs charged before decoding, beyond the bytes of the text itself.
const (
	memberCost  = generation.MemberCost
	elementCost = generation.ElementCost
)

func errText(err error) string {
	if err == nil {
		return "null"
	}
	return err.Error()
}

// checkKnown refuses members that are not in known (OpenAI answers "Unrecognized
// request argument supplied"), and those in unsupportedFields with their reason.
func checkKnown(m map[string]json.RawMessage, where string, known map[string]bool, unsupportedFields map[string]string) *Error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if where != "" {
			name = where + "." + k
		}
		if why, ok := unsupportedFields[k]; ok && !isNull(m[k]) {
			return unsupported(name, "%s is not supported by this server: %s.", name, why)
		}
		if !known[k] {
			if where == "" {
				return invalid(k, "", "Unrecognized request argument supplied: %s", k)
			}
			return invalid(name, "", "Unrecognized argument supplied: %s", name)
		}
	}
	return nil
}

var (
	isNull   = generation.IsNull
	jsonKind = generation.JSONKind
)

// decodeField decodes one member into v; a type mismatch is a 400 naming it.
func decodeField(m map[string]json.RawMessage, key, param string, v any, what string) *Error {
	raw, ok := m[key]
	if !ok || isNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return invalid(param, "invalid_type", "Invalid type for '%s': expected %s, but got %s.", param, what, jsonKind(raw))
	}
	return nil
}

// sampling holds the sampling members common to both endpoints.
type sampling struct {
	// Sampling has max_tokens (or max_completion_tokens) as MaxTokens and the
	// extensions top_k and repetition_penalty (as vLLM's) as TopK and RepeatPenalty.
	generation.Sampling
	Seed         *int64
	N            *int
	Stream       bool
	IncludeUsage bool
}

// samplingFields are the members decodeSampling reads.
var samplingFields = []string{"max_tokens", "temperature", "top_p", "top_k", "frequency_penalty", "presence_penalty",
	"repetition_penalty", "seed", "stop", "n", "stream", "stream_options"}

// samplingName is a sampling member's name in OpenAI's API.
func samplingName(member string) string {
	if member == generation.MemberRepeatPenalty {
		return "repetition_penalty"
	}
	return member
}

func decodeSampling(m map[string]json.RawMessage, maxTokensKey string) (*sampling, *Error) {
	s := &sampling{}
	type field struct {
		key  string
		v    any
		what string
	}
	var stop json.RawMessage
	var so map[string]json.RawMessage
	for _, f := range []field{
		{maxTokensKey, &s.MaxTokens, "an integer"}, {"temperature", &s.Temperature, "a number"}, {"top_p", &s.TopP, "a number"},
		{"top_k", &s.TopK, "an integer"}, {"frequency_penalty", &s.FrequencyPenalty, "a number"},
		{"presence_penalty", &s.PresencePenalty, "a number"}, {"repetition_penalty", &s.RepeatPenalty, "a number"},
		{"seed", &s.Seed, "an integer"}, {"n", &s.N, "an integer"}, {"stream", &s.Stream, "a boolean"},
		{"stop", &stop, "a string or an array of strings"}, {"stream_options", &so, "an object"},
	} {
		if err := decodeField(m, f.key, f.key, f.v, f.what); err != nil {
			return nil, err
		}
	}
	if err := s.validate(maxTokensKey); err != nil {
		return nil, err
	}
	if err := s.decodeStop(stop); err != nil {
		return nil, err
	}
	if so != nil {
		if err := checkKnown(so, "stream_options", map[string]bool{"include_usage": true, "include_obfuscation": true}, nil); err != nil {
			return nil, err
		}
		if err := decodeField(so, "include_usage", "stream_options.include_usage", &s.IncludeUsage, "a boolean"); err != nil {
			return nil, err
		}
		if !s.Stream {
			return nil, invalid("stream_options", "invalid_value", "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
		}
	}
	return s, nil
}

// validate checks the ranges of the members, and refuses what the runtime cannot do.
func (s *sampling) validate(maxTokensKey string) *Error {
	if s.MaxTokens != nil && *s.MaxTokens < 1 {
		return invalid(maxTokensKey, "invalid_value", "Invalid '%s': %d must be at least 1.", maxTokensKey, *s.MaxTokens)
	}
	if err := s.Validate(samplingName); err != nil {
		return err
	}
	switch {
	case s.N != nil && *s.N != 1:
		return unsupported("n", "Invalid 'n': this server generates one choice per request (the NPU runs one generation at a time); send n = 1 or leave it out.")
	case s.Seed != nil:
		return unsupported("seed", "The RKLLM runtime has no sampling seed, so 'seed' cannot be honoured: leave it out.")
	}
	return nil
}

// decodeStop reads stop: a string or up to 4 of them, none empty.
func (s *sampling) decodeStop(stop json.RawMessage) *Error {
	if len(stop) == 0 {
		return nil
	}
	var one string
	if json.Unmarshal(stop, &one) == nil {
		s.Stop = []string{one}
	} else if err := json.Unmarshal(stop, &s.Stop); err != nil {
		return invalid("stop", "invalid_type", "Invalid type for 'stop': expected a string or an array of strings, but got %s.", jsonKind(stop))
	}
	if len(s.Stop) > 4 {
		return invalid("stop", "invalid_value", "Invalid 'stop': at most 4 stop sequences, got %d.", len(s.Stop))
	}
	for i, st := range s.Stop {
		if st == "" {
			return invalid(fmt.Sprintf("stop[%d]", i), "invalid_value", "Invalid 'stop[%d]': a stop sequence must not be empty.", i)
		}
	}
	return nil
}

// decodeMessages decodes the messages one at a time from the array: a long
// conversation costs its messages and not a copy of each one's members on the way (a
// 15 MiB body of one-character messages once took 950 MiB of allocations to decode).
// budget, when set, is charged for each message before it is decoded.
func decodeMessages(raw json.RawMessage, pay payFunc) ([]chattemplate.Message, *Error) {
	msgs, isArray, e := generation.DecodeMessages(raw, pay, messageCost, func(i int, one []byte, m *chattemplate.Message) *Error {
		return decodeMessage(one, i, m, pay)
	})
	switch {
	case !isArray:
		return nil, invalid("messages", "invalid_type", "Invalid type for 'messages': expected an array of message objects, but got %s.", jsonKind(raw))
	case e != nil:
		return nil, e
	case len(msgs) == 0:
		return nil, invalid("messages", "empty_array", "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.")
	}
	return msgs, nil
}

// textPartMembers are the members of a text content part. cache_control is a prompt
// caching hint (Anthropic's, which Open WebUI puts on the last message of every chat):
// accepted and ignored, since the server reuses the KV cache of a conversation anyway.
var textPartMembers = map[string]bool{"type": true, "text": true, "cache_control": true}

// messageCost is what a decoded message holds besides its text.
const messageCost = int(unsafe.Sizeof(chattemplate.Message{}))

// wireMessage is a chat message's members that the server reads, matched exactly
// (case-sensitive), as they are written in the body; other members a client sends back
// from a response (refusal, annotations, reasoning_content, ...) are ignored.
type wireMessage struct {
	Role, Content, Name, ToolCalls, ToolCallID, FunctionCall, Audio json.RawMessage
}

// readWireMessage picks the members of the message object raw (valid JSON); false when
// it is not an object.
func readWireMessage(raw []byte, w *wireMessage) bool {
	return generation.EachMember(raw, func(key, value []byte) {
		if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) { // an escaped name, such as "\u0072ole"
			key = []byte(generation.MemberName(key))
		}
		switch string(key) {
		case "role":
			w.Role = value
		case "content":
			w.Content = value
		case "name":
			w.Name = value
		case "tool_calls":
			w.ToolCalls = value
		case "tool_call_id":
			w.ToolCallID = value
		case "function_call":
			w.FunctionCall = value
		case "audio":
			w.Audio = value
		}
	})
}

// messagePath names message i in errors.
func messagePath(i int) string { return "messages[" + strconv.Itoa(i) + "]" }

// decodeRaw decodes one member; a type mismatch is a 400 naming it.
func decodeRaw(raw json.RawMessage, param func() string, v any, what string) *Error {
	if isNull(raw) {
		return nil
	}
	if s, ok := v.(*string); ok && generation.PlainString(raw, s) {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		p := param()
		return invalid(p, "invalid_type", "Invalid type for '%s': expected %s, but got %s.", p, what, jsonKind(raw))
	}
	return nil
}

// decodeMessage decodes message i, raw (valid JSON), into msg.
func decodeMessage(raw []byte, i int, msg *chattemplate.Message, pay payFunc) *Error {
	var w wireMessage
	if !readWireMessage(raw, &w) {
		where := messagePath(i)
		return invalid(where, "invalid_type", "%s must be an object.", where)
	}
	at := func(member string) func() string { return func() string { return messagePath(i) + "." + member } }
	for _, u := range []struct {
		raw      json.RawMessage
		key, why string
	}{{w.FunctionCall, "function_call", "use tool_calls"}, {w.Audio, "audio", "audio is not supported"}} {
		if !isNull(u.raw) {
			where := messagePath(i)
			return unsupported(where+"."+u.key, "%s.%s is not supported by this server: %s.", where, u.key, u.why)
		}
	}
	role, err := decodeRole(w.Role, i)
	if err != nil {
		return err
	}
	msg.Role = role
	if err := decodeRaw(w.Name, at("name"), &msg.Name, "a string"); err != nil {
		return err
	}
	content, err := decodeContent(w.Content, at("content"), pay)
	if err != nil {
		return err
	}
	msg.Content = content
	if err := decodeMessageTools(&w, i, msg, pay); err != nil {
		return err
	}
	return generation.MessageNoNUL(msg, messagePath(i))
}

// decodeRole reads message i's role; "developer" is a system message.
func decodeRole(raw json.RawMessage, i int) (string, *Error) {
	param := func() string { return messagePath(i) + ".role" }
	var role string
	if err := decodeRaw(raw, param, &role, "a string"); err != nil {
		return "", err
	}
	switch role {
	case "developer", chattemplate.RoleSystem:
		return chattemplate.RoleSystem, nil
	case chattemplate.RoleUser:
		return chattemplate.RoleUser, nil
	case chattemplate.RoleAssistant:
		return chattemplate.RoleAssistant, nil
	case chattemplate.RoleTool:
		return chattemplate.RoleTool, nil
	case "":
		return "", invalid(param(), "missing_required_parameter", "Missing required parameter: '%s.role'.", messagePath(i))
	default:
		return "", invalid(param(), "invalid_value", "Invalid value: '%s'. Supported values are: 'system', 'developer', 'user', 'assistant' and 'tool'.", role)
	}
}

// decodeMessageTools reads the tool members of a message: an assistant's tool_calls, a
// tool result's tool_call_id.
func decodeMessageTools(w *wireMessage, i int, msg *chattemplate.Message, pay payFunc) *Error {
	var err *Error
	if msg.Role == chattemplate.RoleAssistant {
		if msg.ToolCalls, err = decodeToolCalls(w.ToolCalls, messagePath(i)+".tool_calls", pay); err != nil {
			return err
		}
	} else if len(w.ToolCalls) > 0 {
		return invalid(messagePath(i)+".tool_calls", "", "Only assistant messages have 'tool_calls'.")
	}
	if msg.Role == chattemplate.RoleTool {
		where := messagePath(i)
		if err := decodeRaw(w.ToolCallID, func() string { return where + ".tool_call_id" }, &msg.ToolCallID, "a string"); err != nil {
			return err
		}
		if msg.ToolCallID == "" {
			return invalid(where+".tool_call_id", "missing_required_parameter", "Missing required parameter: '%s.tool_call_id'.", where)
		}
	}
	if isNull(w.Content) && len(msg.ToolCalls) == 0 {
		where := messagePath(i)
		return invalid(where+".content", "missing_required_parameter", "Missing required parameter: '%s.content'.", where)
	}
	return nil
}

// decodeContent reads a content: a string, or an array of text parts.
func decodeContent(raw json.RawMessage, param func() string, pay payFunc) (string, *Error) {
	if isNull(raw) {
		return "", nil
	}
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if generation.PlainString(raw, &s) || json.Unmarshal(raw, &s) == nil {
			return s, nil
		}
	}
	where := param()
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	if e := pay.Pay(generation.Elements(raw) * elementCost); e != nil {
		return "", e
	}
	var parts []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", invalid(where, "invalid_type", "Invalid type for '%s': expected a string or an array of content parts, but got %s.", where, jsonKind(raw))
	}
	var b strings.Builder
	for i, p := range parts {
		param := fmt.Sprintf("%s[%d]", where, i)
		var typ, text string
		if err := decodeField(p, "type", param+".type", &typ, "a string"); err != nil {
			return "", err
		}
		if typ != "text" {
			return "", unsupported(param+".type", "Content part type '%s' is not supported: this server serves a text model; send text parts only.", typ)
		}
		if err := checkKnown(p, param, textPartMembers, nil); err != nil {
			return "", err
		}
		if err := decodeField(p, "text", param+".text", &text, "a string"); err != nil {
			return "", err
		}
		b.WriteString(text)
	}
	return b.String(), nil
}

func decodeToolCalls(raw json.RawMessage, where string, pay payFunc) ([]chattemplate.ToolCall, *Error) {
	if isNull(raw) {
		return nil, nil
	}
	if e := pay.Pay(generation.Elements(raw) * elementCost); e != nil {
		return nil, e
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, invalid(where, "invalid_type", "Invalid type for '%s': expected an array, but got %s.", where, jsonKind(raw))
	}
	out := make([]chattemplate.ToolCall, 0, len(list))
	for i, r := range list {
		param := fmt.Sprintf("%s[%d]", where, i)
		var tc struct {
			ID       string `json:"id"`
			Type     string `json:"type"`
			Function *struct {
				Name      string `json:"name"`
				Arguments string `json:"arguments"`
			} `json:"function"`
		}
		if err := json.Unmarshal(r, &tc); err != nil || tc.Function == nil || tc.Function.Name == "" {
			return nil, invalid(param, "invalid_value", "Invalid '%s': a tool call is {id, type: \"function\", function: {name, arguments}} with arguments a JSON string.", param)
		}
		if tc.Type != "" && tc.Type != "function" {
			return nil, invalid(param+".type", "invalid_value", "Invalid value: '%s'. Supported values are: 'function'.", tc.Type)
		}
		out = append(out, chattemplate.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
	}
	return out, nil
}

// toolChoice applies tool_choice: "none" drops the tools, "auto" and "required" keep
// them, {type: function, function: {name}} keeps only that one. The runtime cannot be
// forced to call a tool, so "required" and a named function narrow what the model is
// offered but do not constrain its reply.
func toolChoice(raw json.RawMessage, tools []generation.Tool) ([]generation.Tool, *Error) {
	if isNull(raw) {
		return tools, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		switch s {
		case "none":
			return nil, nil
		case "auto", "required":
			if s == "required" && len(tools) == 0 {
				return nil, invalid("tool_choice", "invalid_value", "Invalid value for 'tool_choice': 'required' needs 'tools'.")
			}
			return tools, nil
		}
		return nil, invalid("tool_choice", "invalid_value", "Invalid value: '%s'. Supported values are: 'none', 'auto' and 'required'.", s)
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" || named.Function.Name == "" {
		return nil, invalid("tool_choice", "invalid_value", "Invalid 'tool_choice': use \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": NAME}}.")
	}
	for _, t := range tools {
		if t.Name == named.Function.Name {
			return []generation.Tool{t}, nil
		}
	}
	return nil, invalid("tool_choice", "invalid_value", "Invalid 'tool_choice': no function named '%s' in 'tools'.", named.Function.Name)
}
