package generation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Chat is a conversation to run.
type Chat struct {
	Messages []chattemplate.Message
	// Tools are the functions the model is offered; none for a plain chat.
	Tools []Tool
	// Thinking switches a thinking model's reasoning; nil keeps the template's default.
	Thinking *bool
}

// PrepareChat renders c with the chat template into spec: the prompt, the reasoning
// opening it ends with, and the tools (written into the prompt by templates that do,
// else handed to the runtime with the system prompt, which the runtime then puts in
// front itself).
func (s *Service) PrepareChat(ctx context.Context, c *Chat, spec *Spec) *Error {
	tmpl := s.opts.Template
	conv := &chattemplate.Conversation{Messages: c.Messages, EnableThinking: c.Thinking}
	spec.ParseTools = len(c.Tools) > 0
	if len(c.Tools) > 0 {
		if tmpl.ToolsInPrompt() {
			conv.Tools = ToolsJSON(c.Tools)
		} else {
			spec.Tools = &workerproto.SetFunctionTools{SystemPrompt: tmpl.SystemPrompt(c.Messages), Tools: string(ToolsJSON(c.Tools)), ToolResponseStr: tmpl.ToolResponse()}
			conv.OmitSystem = true
		}
	}
	// The prompt is about as long as the conversation's text plus each turn's markers;
	// a template that writes more pays for the rest once it is known.
	pay := BudgetFor(ctx)
	estimate := renderCost * len(c.Messages)
	for i := range c.Messages {
		estimate += len(c.Messages[i].Content)
	}
	if e := pay.Pay(estimate); e != nil {
		return e
	}
	prompt, err := tmpl.Render(ctx, conv)
	if err != nil {
		if errors.Is(err, chattemplate.ErrInvalid) {
			why := strings.TrimPrefix(err.Error(), chattemplate.ErrInvalid.Error()+": ")
			return Invalid("messages", "invalid_value", "The conversation cannot be rendered with the chat template %s: %s.", tmpl.Name(), why)
		}
		return Internal("%v", err)
	}
	if e := pay.Pay(len(prompt) - estimate); e != nil {
		return e
	}
	if e := NoNUL("messages", prompt); e != nil { // a template may add what no message held
		return e
	}
	spec.Prompt, spec.Opening = prompt, chattemplate.OpenReasoning(prompt)
	return nil
}

// Tool is one entry of a request's tools, as the client sent it.
type Tool struct {
	Name string
	Raw  json.RawMessage
}

// DecodeTools reads the tools member (named param in errors): function specs
// {type: "function", function: {name, description, parameters}}, the same in OpenAI's
// and Ollama's APIs.
func DecodeTools(raw json.RawMessage, param string, pay Budget) ([]Tool, *Error) {
	if IsNull(raw) {
		return nil, nil
	}
	if e := pay.Pay(Elements(raw)*ElementCost + len(raw)); e != nil {
		return nil, e
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, Invalid(param, "invalid_type", "Invalid type for '%s': expected an array, but got %s.", param, JSONKind(raw))
	}
	out := make([]Tool, 0, len(list))
	for i, r := range list {
		at := fmt.Sprintf("%s[%d]", param, i)
		var t struct {
			Type     string `json:"type"`
			Function *struct {
				Name       string          `json:"name"`
				Parameters json.RawMessage `json:"parameters"`
			} `json:"function"`
		}
		if err := json.Unmarshal(r, &t); err != nil {
			return nil, Invalid(at, "invalid_type", "Invalid '%s': expected an object {type: \"function\", function: {name, description, parameters}}.", at)
		}
		if t.Type != "function" {
			return nil, Invalid(at+".type", "invalid_value", "Invalid value: '%s'. Supported values are: 'function'.", t.Type)
		}
		if t.Function == nil || t.Function.Name == "" {
			return nil, Invalid(at+".function.name", "missing_required_parameter", "Missing required parameter: '%s.function.name'.", at)
		}
		if len(t.Function.Parameters) > 0 && !IsNull(t.Function.Parameters) && bytes.TrimSpace(t.Function.Parameters)[0] != '{' {
			return nil, Invalid(at+".function.parameters", "invalid_type", "Invalid '%s.function.parameters': expected a JSON Schema object.", at)
		}
		if err := runtime.CheckJSONStrings(at, string(r)); err != nil {
			var ie *runtime.InputError
			errors.As(err, &ie)
			return nil, Invalid(at, "invalid_value", "Invalid '%s': it %s. Remove it.", at, ie.Reason)
		}
		out = append(out, Tool{Name: t.Function.Name, Raw: r})
	}
	return out, nil
}

// ToolsJSON is the array of tool specs as the client sent them.
func ToolsJSON(tools []Tool) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, t := range tools {
		if i > 0 {
			b.WriteByte(',')
		}
		_ = json.Compact(&b, t.Raw)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// IsNull reports whether a member is absent or null.
func IsNull(raw json.RawMessage) bool { return len(raw) == 0 || string(bytes.TrimSpace(raw)) == "null" }

// JSONKind names the kind of a JSON value, for errors.
func JSONKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	if bytes.ContainsAny(t, ".eE") {
		return "a decimal number"
	}
	return "an integer"
}
