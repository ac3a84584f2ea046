package ollama

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unsafe"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// wireMessage is the members of a chat message as Ollama's clients send it that the
// server reads, as slices of the body. thinking (an assistant's past reasoning) is
// left out, as the chat templates leave past reasoning out; other members are ignored.
type wireMessage struct {
	Role, Content, Images, ToolCalls, ToolName, ToolCallID json.RawMessage
}

// wireToolCall is an assistant's past tool call: the arguments are an object.
type wireToolCall struct {
	ID       string `json:"id"`
	Function struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// messageCost is what a decoded message holds besides its text: the message and its
// wire form.
const messageCost = int(unsafe.Sizeof(chattemplate.Message{}) + unsafe.Sizeof(wireMessage{}))

// decodeMessages reads the messages member (valid JSON, from the body); an empty list
// is valid (a request that only loads the model).
func decodeMessages(raw json.RawMessage, pay generation.Budget) ([]chattemplate.Message, *generation.Error) {
	if generation.IsNull(raw) {
		return nil, nil
	}
	msgs, isArray, e := generation.DecodeMessages(raw, pay, messageCost, func(i int, one []byte, m *chattemplate.Message) *generation.Error {
		var e *generation.Error
		*m, e = decodeMessage(one, fmt.Sprintf("messages[%d]", i), pay)
		return e
	})
	if !isArray {
		return nil, generation.Invalid("messages", "invalid_type", "messages must be an array of messages, not %s", generation.JSONKind(raw))
	}
	return msgs, e
}

// decodeMessage decodes one message (valid JSON) into the chat template's shape. Only
// tool calls, which are rare, go through encoding/json (paid for each).
func decodeMessage(raw json.RawMessage, at string, pay generation.Budget) (chattemplate.Message, *generation.Error) {
	var w wireMessage
	if !generation.EachMember(raw, func(key, value []byte) { w.set(generation.MemberName(key), value) }) {
		return chattemplate.Message{}, generation.Invalid(at, "invalid_type", "%s must be a message {role, content, ...}, not %s", at, generation.JSONKind(raw))
	}
	var m chattemplate.Message
	for _, f := range []struct {
		raw    json.RawMessage
		member string
		dst    *string
	}{{w.Role, "role", &m.Role}, {w.Content, "content", &m.Content}, {w.ToolName, "tool_name", &m.Name}, {w.ToolCallID, "tool_call_id", &m.ToolCallID}} {
		if e := decodeString(f.raw, at+"."+f.member, f.dst); e != nil {
			return m, e
		}
		if e := generation.NoNUL(at+"."+f.member, *f.dst); e != nil { // a template may render it
			return m, e
		}
	}
	switch m.Role {
	case chattemplate.RoleSystem, chattemplate.RoleUser, chattemplate.RoleAssistant, chattemplate.RoleTool:
	case "":
		return m, generation.Invalid(at+".role", "missing_required_parameter", "%s.role is required", at)
	default:
		return m, generation.Invalid(at+".role", "invalid_value", "%s.role %q: use system, user, assistant or tool", at, m.Role)
	}
	if generation.Elements(w.Images) > 0 {
		return m, generation.Unsupported(at+".images", "%s.images: images are not supported, this server serves a text model", at)
	}
	if generation.IsNull(w.ToolCalls) || generation.Elements(w.ToolCalls) == 0 {
		return m, nil
	}
	if m.Role != chattemplate.RoleAssistant {
		return m, generation.Invalid(at+".tool_calls", "", "%s.tool_calls: only assistant messages have tool calls", at)
	}
	var e *generation.Error
	if m.ToolCalls, e = decodeToolCalls(w.ToolCalls, at, pay); e != nil {
		return m, e
	}
	return m, generation.ToolCallsNoNUL(m.ToolCalls, at)
}

// set keeps the member key of a message.
func (w *wireMessage) set(key string, value json.RawMessage) {
	switch key {
	case "role":
		w.Role = value
	case "content":
		w.Content = value
	case "images":
		w.Images = value
	case "tool_calls":
		w.ToolCalls = value
	case "tool_name":
		w.ToolName = value
	case "tool_call_id":
		w.ToolCallID = value
	}
}

// decodeString decodes a string member (null or absent: nothing).
func decodeString(raw json.RawMessage, param string, dst *string) *generation.Error {
	if generation.IsNull(raw) || generation.PlainString(raw, dst) || json.Unmarshal(raw, dst) == nil {
		return nil
	}
	return generation.Invalid(param, "invalid_type", "%s must be a string, not %s", param, generation.JSONKind(raw))
}

// decodeToolCalls reads an assistant's past tool calls.
func decodeToolCalls(raw json.RawMessage, at string, pay generation.Budget) ([]chattemplate.ToolCall, *generation.Error) {
	if e := pay.Pay(generation.Elements(raw) * generation.ElementCost); e != nil {
		return nil, e
	}
	var calls []wireToolCall
	if err := json.Unmarshal(raw, &calls); err != nil {
		return nil, generation.Invalid(at+".tool_calls", "invalid_type", "%s.tool_calls must be an array of {function: {name, arguments}}: %v", at, err)
	}
	out := make([]chattemplate.ToolCall, 0, len(calls))
	for j, tc := range calls {
		param := fmt.Sprintf("%s.tool_calls[%d].function", at, j)
		if tc.Function.Name == "" {
			return nil, generation.Invalid(param+".name", "missing_required_parameter", "%s.name is required", param)
		}
		args := bytes.TrimSpace(tc.Function.Arguments)
		if generation.IsNull(args) {
			args = []byte("{}")
		}
		if args[0] != '{' {
			return nil, generation.Invalid(param+".arguments", "invalid_type", "%s.arguments must be an object, not %s", param, generation.JSONKind(args))
		}
		out = append(out, chattemplate.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: string(spaced(args))})
	}
	return out, nil
}

// spaced rewrites valid JSON with the separators Python's json.dumps writes (", " and
// ": ") and no other white space, keeping strings and numbers as they are. Clients
// send a past tool call's arguments as an object, in their own spacing; models write
// them the way their training data did, which for the families RKLLM serves (Qwen's
// tojson, as the simulator) is this one. Rendering them so lets the conversation's
// prefix match what the KV cache holds, and be reused.
func spaced(raw []byte) []byte {
	out := make([]byte, 0, len(raw)+len(raw)/4)
	inString, escaped := false, false
	for _, c := range raw {
		switch {
		case inString:
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
			out = append(out, c)
		case c == ',' || c == ':':
			out = append(out, c, ' ')
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
		default:
			out = append(out, c)
		}
	}
	return out
}
