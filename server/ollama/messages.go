package ollama

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// wireMessage is a chat message as Ollama's clients send it. thinking (an assistant's
// past reasoning) is read and left out, as the chat templates leave past reasoning out.
type wireMessage struct {
	Role       string            `json:"role"`
	Content    string            `json:"content"`
	Images     []json.RawMessage `json:"images"`
	ToolCalls  []wireToolCall    `json:"tool_calls"`
	ToolName   string            `json:"tool_name"`
	ToolCallID string            `json:"tool_call_id"`
}

// wireToolCall is an assistant's past tool call: the arguments are an object.
type wireToolCall struct {
	ID       string `json:"id"`
	Function struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

// decodeMessages reads the messages member; an empty list is valid (a request that
// only loads the model).
func decodeMessages(raw json.RawMessage) ([]chattemplate.Message, *generation.Error) {
	if generation.IsNull(raw) {
		return nil, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, generation.Invalid("messages", "invalid_type", "messages must be an array of messages, not %s", generation.JSONKind(raw))
	}
	out := make([]chattemplate.Message, 0, len(list))
	for i, r := range list {
		m, e := decodeMessage(r, fmt.Sprintf("messages[%d]", i))
		if e != nil {
			return nil, e
		}
		out = append(out, m)
	}
	return out, nil
}

func decodeMessage(raw json.RawMessage, at string) (chattemplate.Message, *generation.Error) {
	var w wireMessage
	if err := json.Unmarshal(raw, &w); err != nil {
		return chattemplate.Message{}, generation.Invalid(at, "invalid_type", "%s must be a message {role, content, ...}: %v", at, err)
	}
	switch w.Role {
	case chattemplate.RoleSystem, chattemplate.RoleUser, chattemplate.RoleAssistant, chattemplate.RoleTool:
	case "":
		return chattemplate.Message{}, generation.Invalid(at+".role", "missing_required_parameter", "%s.role is required", at)
	default:
		return chattemplate.Message{}, generation.Invalid(at+".role", "invalid_value", "%s.role %q: use system, user, assistant or tool", at, w.Role)
	}
	if len(w.Images) > 0 {
		return chattemplate.Message{}, generation.Unsupported(at+".images", "%s.images: images are not supported, this server serves a text model", at)
	}
	m := chattemplate.Message{Role: w.Role, Content: w.Content, ToolCallID: w.ToolCallID, Name: w.ToolName}
	if len(w.ToolCalls) > 0 && w.Role != chattemplate.RoleAssistant {
		return m, generation.Invalid(at+".tool_calls", "", "%s.tool_calls: only assistant messages have tool calls", at)
	}
	for j, tc := range w.ToolCalls {
		param := fmt.Sprintf("%s.tool_calls[%d].function", at, j)
		if tc.Function.Name == "" {
			return m, generation.Invalid(param+".name", "missing_required_parameter", "%s.name is required", param)
		}
		args := bytes.TrimSpace(tc.Function.Arguments)
		if generation.IsNull(args) {
			args = []byte("{}")
		}
		if args[0] != '{' {
			return m, generation.Invalid(param+".arguments", "invalid_type", "%s.arguments must be an object, not %s", param, generation.JSONKind(args))
		}
		m.ToolCalls = append(m.ToolCalls, chattemplate.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: string(spaced(args))})
	}
	return m, nil
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
