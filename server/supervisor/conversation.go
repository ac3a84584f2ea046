package supervisor

import (
	"fmt"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Conversation is a run of the OpenAI-compatible API: a whole conversation rendered
// into one prompt by the server's chat template, run with the runtime's own template
// switched off. The supervisor reuses the KV cache when it already holds a prefix of
// the prompt (the usual follow-up of one chat) and starts over otherwise.
type Conversation struct {
	// Prompt is the rendered conversation, after the system prompt the runtime puts in
	// front itself (with Tools; none otherwise).
	Prompt string
	// Tools, when set, are handed to the runtime (rkllm_set_function_tools) before the
	// run; nil runs without tools.
	Tools *workerproto.SetFunctionTools
	// Infer carries the run's sampling parameters and max_new_tokens (ABI 1.3); the
	// supervisor sets KeepHistory.
	Infer runtime.InferParams
	// EndOfReply is the text of the token that ends the model's reply, which the
	// runtime keeps in the cache.
	EndOfReply string
	// Reuse allows feeding only what follows the cached prefix.
	Reuse bool
}

// ConversationOutcome tells how a conversation was fed.
type ConversationOutcome struct {
	// Reused is true when only the part after the cached prefix was fed.
	Reused bool
	// CachedTokens is the number of cache positions reused (prompt tokens not
	// prefilled again); -1 when the runtime could not say.
	CachedTokens int
}

// noTools is the zero system part: no function tools.
var noTools workerproto.SetFunctionTools

// clearTools removes the function tools (an empty array).
var clearTools = &workerproto.SetFunctionTools{Tools: "[]", ToolResponseStr: "tool_response"}

// templateOff switches the runtime's chat template off: the prompt is fed as is.
var templateOff = &workerproto.SetChatTemplate{}

// handleState is the chat template and function tools the handle has now. Conversation
// runs switch the template off and set their own tools; JSON-RPC runs get back what
// JSON-RPC clients and the configuration set (the replay state).
type handleState struct {
	// chat is the template set on the handle; nil for the model's own.
	chat *workerproto.SetChatTemplate
	// tools are the function tools set on the handle; nil for none.
	tools *workerproto.SetFunctionTools
}

func sameTemplate(a, b *workerproto.SetChatTemplate) bool {
	return a == b || a != nil && b != nil && *a == *b
}

func sameTools(a, b *workerproto.SetFunctionTools) bool {
	if a == nil || a.Tools == "[]" {
		a = nil
	}
	if b == nil || b.Tools == "[]" {
		b = nil
	}
	return a == b || a != nil && b != nil && *a == *b
}

// setHandle makes the handle's template and tools what a run needs, calling the
// runtime only for what differs. A change invalidates the KV-cache record.
func (s *Supervisor) setHandle(p *proc, chat *workerproto.SetChatTemplate, tools *workerproto.SetFunctionTools) error {
	if !sameTemplate(s.applied.chat, chat) {
		if chat == nil {
			// The model's own template cannot be restored once replaced.
			s.log.V(1).Info("the model's built-in chat template was replaced by the OpenAI API; JSON-RPC runs go without one (set --chat-template or --chat-template-* for them)")
		} else {
			s.kv.invalidate()
			if err := s.handleCall(p, chat); err != nil {
				return err
			}
			s.applied.chat = chat
		}
	}
	if !sameTools(s.applied.tools, tools) {
		s.kv.invalidate()
		m := tools
		if m == nil {
			m = clearTools
		}
		if err := s.handleCall(p, m); err != nil {
			return err
		}
		s.applied.tools = tools
	}
	return nil
}

// handleCall makes one state call on the handle.
func (s *Supervisor) handleCall(p *proc, m workerproto.Message) error {
	mark := p.mark()
	r, err := s.call(p, m, s.opts.CallTimeout, m.Op().String())
	if err != nil {
		return err
	}
	return s.explain(p, mark, r.Err)
}

// restoreForRPC gives a JSON-RPC run the template and tools JSON-RPC clients (or the
// configuration) set, after conversation runs changed them.
func (s *Supervisor) restoreForRPC(p *proc) error {
	s.mu.Lock()
	chat, tools := s.state.chat, s.state.tools
	s.mu.Unlock()
	if chat == nil && s.applied.chat != nil && s.opts.Model != nil {
		chat = s.opts.Model.FallbackTemplate
	}
	return s.setHandle(p, chat, tools)
}

// execConversation runs one conversation: template off, its tools set, the cache
// cleared unless it holds a prefix of the prompt, then a run with keep_history whose
// reply is recorded as part of the cache.
func (s *Supervisor) execConversation(p *proc, t *Ticket, c *Conversation) (Outcome, error) {
	if err := s.modelErr(); err != nil {
		return Outcome{}, err
	}
	if err := s.setHandle(p, templateOff, c.Tools); err != nil {
		s.kv.invalidate()
		return Outcome{}, fmt.Errorf("prepare the handle: %w", err)
	}
	key := noTools
	if c.Tools != nil {
		key = *c.Tools
	}
	plan := s.kv.plan(key, c.Prompt, c.Reuse)
	s.observePrefix(plan.reuse, plan.cached)
	s.kv.invalidate() // until the run has ended well
	s.convInCache = true
	if !plan.reuse {
		plan.cached = 0
	}
	infer := c.Infer
	infer.KeepHistory = true
	// The cache is cleared (when not reused) and its size read back by the worker in
	// the run's own round trip: a conversation costs the worker no more calls than
	// rkllm.run does.
	run := &workerproto.Run{Inputs: []runtime.Input{{Role: "user", Type: runtime.InputPrompt, Prompt: plan.feed}}, Infer: infer,
		ClearKVCache: !plan.reuse, ReportKVCacheSize: true}
	var reply replyText
	out, err := s.execRun(p, t, run, func(d runtime.Delivery) {
		if (d.State == runtime.StateNormal || d.State == runtime.StateWaiting) && len(d.Results) > 0 {
			reply.add(d.State == runtime.StateWaiting, d.Results[0].Text, d.Results[0].TokenID)
		}
		if t.req.OnDelivery != nil {
			t.req.OnDelivery(d)
		}
	})
	sizes := out.CacheSizes
	out.CacheSizes = nil
	out.Conversation = &ConversationOutcome{Reused: plan.reuse, CachedTokens: plan.cached}
	if err != nil || out.Aborted || reply.incomplete() || s.current() != p {
		return out, err
	}
	s.record(c, key, &reply, sizes)
	return out, nil
}

// record notes what the cache holds after a conversation run that ended well: the
// prompt, the reply, and the end-of-reply token when the model ended the reply.
// sizes is the cache's size the worker read after the run (nil: unknown).
func (s *Supervisor) record(c *Conversation, key workerproto.SetFunctionTools, reply *replyText, sizes []int32) {
	maxNew := c.Infer.MaxNewTokens
	if maxNew <= 0 {
		if param, ok := s.Loaded(); ok {
			maxNew = param.MaxNewTokens
		}
	}
	endedByModel := maxNew <= 0 || reply.tokens < int(maxNew)
	positions := -1
	if len(sizes) > 0 {
		positions = int(sizes[0])
	}
	s.kv.set(key, c.Prompt+cachedText(reply.text.String(), c.EndOfReply, endedByModel), positions)
}

// PrefixObserver is implemented by observers that count conversation-prefix reuse.
type PrefixObserver interface {
	// PrefixReuse reports whether a conversation reused the cached prefix, and how many
	// cache positions it reused (-1: unknown).
	PrefixReuse(reused bool, cachedTokens int)
}

func (s *Supervisor) observePrefix(reused bool, cached int) {
	if o, ok := s.opts.Observer.(PrefixObserver); ok {
		o.PrefixReuse(reused, cached)
	}
}
