package chattemplate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Turns is a template made of strings around each turn: the presets, and custom
// templates (the JSON object of --chat-template-custom, whose keys are the json tags).
type Turns struct {
	// TemplateName names the template ("custom" for a user's own).
	TemplateName string `json:"-"`
	// SystemPrefix and SystemSuffix wrap the system prompt.
	SystemPrefix string `json:"system_prefix"`
	SystemSuffix string `json:"system_suffix"`
	// DefaultSystem is the system prompt when the conversation has none ("" for none).
	DefaultSystem string `json:"default_system"`
	// SystemInUser puts the system prompt in front of the first user message,
	// separated by a blank line, for families without a system role (Gemma).
	SystemInUser bool `json:"system_in_user"`
	// UserPrefix and UserSuffix wrap each user message.
	UserPrefix string `json:"user_prefix"`
	UserSuffix string `json:"user_suffix"`
	// AssistantPrefix opens the assistant's turn (the generation prompt);
	// AssistantSuffix closes a past one.
	AssistantPrefix string `json:"assistant_prefix"`
	AssistantSuffix string `json:"assistant_suffix"`
	// ToolGroupPrefix and ToolGroupSuffix wrap consecutive tool results; ToolPrefix and
	// ToolSuffix wrap each. Empty values default to a user turn holding
	// <tool_response>...</tool_response> blocks.
	ToolGroupPrefix string `json:"tool_group_prefix"`
	ToolGroupSuffix string `json:"tool_group_suffix"`
	ToolPrefix      string `json:"tool_prefix"`
	ToolSuffix      string `json:"tool_suffix"`
	// EOS is the text of the token that ends a reply (EndOfReply).
	EOS string `json:"eos"`
	// TrimContent trims white space around message contents (Llama 3).
	TrimContent bool `json:"trim_content"`
	// Thinking is how the family marks reasoning: "" (none), "qwen3" (on by default,
	// switched off with an empty <think></think> block) or "deepseek-r1" (always on: the
	// generation prompt opens the <think> block).
	Thinking string `json:"thinking"`
	// ThinkingOff makes thinking off by default (qwen3-no-thinking).
	ThinkingOff bool `json:"thinking_off"`
}

const (
	thinkQwen3    = "qwen3"
	thinkDeepSeek = "deepseek-r1"
	thinkStart    = "<think>"
	thinkEnd      = "</think>"
	toolResponse  = "tool_response"
)

// ParseCustom reads a custom template from its JSON object. Unknown keys are errors.
func ParseCustom(js string) (*Turns, error) {
	t := &Turns{TemplateName: "custom"}
	dec := json.NewDecoder(strings.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(t); err != nil {
		return nil, fmt.Errorf("custom chat template: %w (keys: system_prefix, system_suffix, default_system, system_in_user, user_prefix, user_suffix, assistant_prefix, assistant_suffix, tool_group_prefix, tool_group_suffix, tool_prefix, tool_suffix, eos, trim_content, thinking, thinking_off)", err)
	}
	switch t.Thinking {
	case "", thinkQwen3, thinkDeepSeek:
	default:
		return nil, fmt.Errorf("custom chat template: thinking %q: use \"\", %q or %q", t.Thinking, thinkQwen3, thinkDeepSeek)
	}
	if t.AssistantPrefix == "" || t.UserPrefix == "" && t.UserSuffix == "" {
		return nil, fmt.Errorf("custom chat template: user_prefix or user_suffix, and assistant_prefix, are required (the model must see where turns start)")
	}
	return t, nil
}

// Name implements Template.
func (t *Turns) Name() string { return t.TemplateName }

// EndOfReply implements Template.
func (t *Turns) EndOfReply() string { return t.EOS }

// ToolsInPrompt implements Template: the runtime gets the tools.
func (t *Turns) ToolsInPrompt() bool { return false }

// ToolResponse implements Template.
func (t *Turns) ToolResponse() string { return toolResponse }

// SystemPrompt implements Template.
func (t *Turns) SystemPrompt(msgs []Message) string {
	sys, _ := leadingSystem(msgs)
	if len(sys) == 0 {
		return t.DefaultSystem
	}
	return t.content(strings.Join(sys, "\n\n"))
}

func (t *Turns) content(s string) string {
	if t.TrimContent {
		return strings.TrimSpace(s)
	}
	return s
}

// RuntimeTemplate returns the template as the runtime's rkllm_set_chat_template takes
// it: the system turn with the default system prompt, the user prefix, and the user
// suffix followed by the generation prompt (with the reasoning block a thinking
// family puts there by default).
func (t *Turns) RuntimeTemplate() (system, prefix, postfix string) {
	if t.DefaultSystem != "" && !t.SystemInUser {
		system = t.SystemPrefix + t.DefaultSystem + t.SystemSuffix
	}
	return system, t.UserPrefix, t.UserSuffix + t.generationPrompt(nil)
}

// generationPrompt is the assistant's prefix that ends a prompt, with the reasoning
// block the family's template puts after it: qwen3's empty one when thinking is off,
// DeepSeek-R1's opening tag always.
func (t *Turns) generationPrompt(enableThinking *bool) string {
	switch {
	case t.Thinking == thinkQwen3 && !t.thinking(enableThinking):
		return t.AssistantPrefix + "<think>\n\n</think>\n\n"
	case t.Thinking == thinkDeepSeek:
		// DeepSeek's templates open the reasoning block themselves (since February
		// 2025) so that the model does not skip it; the reply starts inside it.
		return t.AssistantPrefix + "<think>\n"
	}
	return t.AssistantPrefix
}

// Render implements Template.
func (t *Turns) Render(_ context.Context, c *Conversation) (string, error) {
	var b strings.Builder
	sys, rest := leadingSystem(c.Messages)
	pending := t.writeSystem(&b, sys, c.OmitSystem)
	lastUser := -1
	for i, m := range rest {
		if m.Role == RoleUser {
			lastUser = i
		}
	}
	for i := 0; i < len(rest); i++ {
		m := rest[i]
		switch m.Role {
		case RoleSystem:
			// A system message inside the conversation: its own turn where the family has
			// one, else a user turn.
			if t.SystemInUser {
				b.WriteString(t.UserPrefix + t.content(m.Content) + t.UserSuffix)
			} else {
				b.WriteString(t.SystemPrefix + t.content(m.Content) + t.SystemSuffix)
			}
		case RoleUser:
			text := t.content(m.Content)
			if pending != "" {
				text, pending = pending+"\n\n"+text, ""
			}
			b.WriteString(t.UserPrefix + text + t.UserSuffix)
		case RoleAssistant:
			t.writeAssistant(&b, m, i < lastUser)
		case RoleTool:
			j := i
			for j < len(rest) && rest[j].Role == RoleTool {
				j++
			}
			t.writeTools(&b, rest[i:j])
			i = j - 1
		default:
			return "", fmt.Errorf("%w: message role %q: use system, user, assistant or tool", ErrInvalid, m.Role)
		}
	}
	if pending != "" {
		b.WriteString(t.UserPrefix + pending + t.UserSuffix)
	}
	b.WriteString(t.generationPrompt(c.EnableThinking))
	return b.String(), nil
}

// writeSystem writes the system turn (the leading system messages, or the default),
// or returns it when it goes into the first user turn.
func (t *Turns) writeSystem(b *strings.Builder, sys []string, omit bool) (pending string) {
	if omit {
		return ""
	}
	text := t.DefaultSystem
	if len(sys) > 0 {
		text = t.content(strings.Join(sys, "\n\n"))
	}
	if text == "" {
		return ""
	}
	if t.SystemInUser {
		return text
	}
	b.WriteString(t.SystemPrefix + text + t.SystemSuffix)
	return ""
}

func (t *Turns) thinking(enable *bool) bool {
	if enable != nil {
		return *enable
	}
	return !t.ThinkingOff
}

// writeAssistant writes a past assistant turn without its reasoning, as the families'
// own templates do: Qwen 3 drops it from turns before the last user message and trims
// the newlines after it, DeepSeek-R1 drops it from every turn and keeps the rest as it
// is.
func (t *Turns) writeAssistant(b *strings.Builder, m Message, beforeLastUser bool) {
	content := m.Content
	if i := strings.LastIndex(content, thinkEnd); i >= 0 {
		switch {
		case t.Thinking == thinkQwen3 && beforeLastUser:
			content = strings.TrimLeft(content[i+len(thinkEnd):], "\n")
		case t.Thinking == thinkDeepSeek:
			content = content[i+len(thinkEnd):]
		}
	}
	content = t.content(content)
	parts := make([]string, 0, 1+len(m.ToolCalls))
	if content != "" {
		parts = append(parts, content)
	}
	for _, tc := range m.ToolCalls {
		parts = append(parts, FormatToolCall(tc.Name, tc.Arguments))
	}
	b.WriteString(t.AssistantPrefix + strings.Join(parts, "\n") + t.AssistantSuffix)
}

// writeTools writes consecutive tool results.
func (t *Turns) writeTools(b *strings.Builder, msgs []Message) {
	gp, gs, p, s := t.ToolGroupPrefix, t.ToolGroupSuffix, t.ToolPrefix, t.ToolSuffix
	if gp == "" && gs == "" && p == "" && s == "" {
		gp, gs = t.UserPrefix, t.UserSuffix
		p, s = "<"+toolResponse+">\n", "\n</"+toolResponse+">"
		parts := make([]string, len(msgs))
		for i, m := range msgs {
			parts[i] = p + t.content(m.Content) + s
		}
		b.WriteString(gp + strings.Join(parts, "\n") + gs)
		return
	}
	b.WriteString(gp)
	for _, m := range msgs {
		b.WriteString(p + t.content(m.Content) + s)
	}
	b.WriteString(gs)
}

// FormatToolCall writes one call the way RKLLM's function calling emits it:
// <tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>, with the arguments'
// JSON text as the model wrote it (so a conversation sent back matches what the model
// produced, byte for byte).
func FormatToolCall(name, arguments string) string {
	var nb bytes.Buffer
	enc := json.NewEncoder(&nb)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(name)
	args := strings.TrimSpace(arguments)
	if args == "" {
		args = "{}"
	}
	return "<tool_call>\n{\"name\": " + strings.TrimSuffix(nb.String(), "\n") + ", \"arguments\": " + args + "}\n</tool_call>"
}
