// Package chattemplate renders a whole chat conversation into the one prompt string an
// RKLLM model is given, the way the model was trained to read it. rkllm-server's
// OpenAI-compatible API uses it with the runtime's own template switched off, so
// requests are stateless and many clients can share one model.
//
// Three kinds of template: presets for the model families converted for RKLLM (Qwen,
// Llama 3, DeepSeek-R1 distills, Gemma, Phi-3, MiniCPM, InternLM), custom turn strings,
// and Hugging Face Jinja chat templates (rendered with github.com/ardanlabs/jinja).
package chattemplate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Roles of chat messages.
const (
	RoleSystem    = "system"
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
)

// Message is one message of a conversation.
type Message struct {
	Role    string
	Content string
	// ToolCalls are the calls an assistant message made.
	ToolCalls []ToolCall
	// ToolCallID names the call a tool message answers.
	ToolCallID string
	// Name is the optional name of the author (or of the tool).
	Name string
}

// ToolCall is one function call of an assistant message.
type ToolCall struct {
	ID   string
	Name string
	// Arguments is the JSON text of the arguments, as the model wrote it.
	Arguments string
}

// Conversation is what a template renders. The rendered prompt always ends with the
// assistant's turn opened (the generation prompt).
type Conversation struct {
	Messages []Message
	// Tools is the JSON array of the request's tool specs, for templates that write
	// them into the prompt (ToolsInPrompt); nil when there are none.
	Tools json.RawMessage
	// OmitSystem leaves the system turn out (leading system messages and any default
	// system prompt): the runtime puts the system prompt in front itself when tools
	// are handed to it with rkllm_set_function_tools.
	OmitSystem bool
	// EnableThinking turns a thinking model's reasoning on or off; nil keeps the
	// template's default.
	EnableThinking *bool
}

// Template renders conversations for one model family.
type Template interface {
	// Name is the preset's name, "custom", or "jinja:FILE".
	Name() string
	// Render returns the prompt for c. A render that fails because of the conversation
	// or the template (an error the template raised, a bound it broke) wraps ErrInvalid;
	// one stopped because ctx ended returns ctx's error.
	Render(ctx context.Context, c *Conversation) (string, error)
	// EndOfReply is the text of the token that ends the model's reply (its
	// end-of-sequence or end-of-turn token). The runtime keeps it in the KV cache after
	// a reply that ended by itself.
	EndOfReply() string
	// ToolsInPrompt reports whether Render writes Conversation.Tools into the prompt
	// (Jinja templates). Otherwise tools go to the runtime through
	// rkllm_set_function_tools, with the system prompt (SystemPrompt).
	ToolsInPrompt() bool
	// SystemPrompt is the system prompt for rkllm_set_function_tools: the leading
	// system messages of msgs, or the template's default.
	SystemPrompt(msgs []Message) string
	// ToolResponse is the tag that wraps tool results (tool_response_str).
	ToolResponse() string
}

// ErrInvalid is wrapped by errors about a conversation a template cannot render; the
// message says what is wrong.
var ErrInvalid = errors.New("cannot render the conversation")

// Default is the preset used when none is configured: ChatML, the format of Qwen,
// the family most RKLLM models belong to.
const Default = "chatml"

// Presets lists the preset names, sorted.
func Presets() []string {
	names := make([]string, 0, len(presets))
	for n := range presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Preset returns the named preset.
func Preset(name string) (Template, error) {
	p, ok := presets[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("unknown chat template preset %q: use one of %s", name, strings.Join(Presets(), ", "))
	}
	return p, nil
}

// leadingSystem splits the leading system messages off msgs.
func leadingSystem(msgs []Message) (system []string, rest []Message) {
	i := 0
	for i < len(msgs) && msgs[i].Role == RoleSystem {
		system = append(system, msgs[i].Content)
		i++
	}
	return system, msgs[i:]
}

// OpenReasoning returns the reasoning block's opening that prompt ends with ("<think>"
// and the white space after it), or "" when the prompt does not end inside a reasoning
// block. Templates that make a model think (DeepSeek-R1's) open the block in the
// generation prompt, so the reply starts inside it; a client given the reply alone
// would see a closing tag without its opening.
func OpenReasoning(prompt string) string {
	i := strings.LastIndex(prompt, thinkStart)
	if i < 0 || strings.TrimSpace(prompt[i+len(thinkStart):]) != "" {
		return ""
	}
	return prompt[i:]
}
