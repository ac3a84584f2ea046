package supervisor

import (
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// kvCache is what the supervisor knows the runtime's KV cache holds, for
// conversation-prefix reuse: after a conversation run with keep_history, the cache
// holds the system prompt the runtime put in front (set by the function tools, or none
// with the chat template switched off), then exactly the text that was fed and the
// reply. A later conversation whose prompt extends that text only needs the new part
// fed. Anything else that touches the cache (another kind of run, clear_kv_cache, a
// LoRA adapter, the template or tools set over JSON-RPC, a prompt cache, init, destroy,
// a worker restart) makes it unknown, and the next conversation starts over.
//
// Only the executor goroutine uses it, so it needs no lock.
type kvCache struct {
	valid bool
	// tools made the system part (the zero value: none).
	tools workerproto.SetFunctionTools
	// text is what follows the system part.
	text string
	// positions is the cache size after text, -1 when unknown.
	positions int
}

// kvPlan is how to feed one conversation.
type kvPlan struct {
	// reuse is true when the cache holds a prefix of the prompt: feed only the rest.
	reuse bool
	// feed is what the run gets as its prompt.
	feed string
	// cached is the number of cache positions reused (0 when not reusing, -1 unknown).
	cached int
}

// plan decides how to feed prompt, given the system part the run needs.
func (k *kvCache) plan(tools workerproto.SetFunctionTools, prompt string, allow bool) kvPlan {
	if allow && k.valid && k.tools == tools && len(prompt) > len(k.text) && strings.HasPrefix(prompt, k.text) {
		return kvPlan{reuse: true, feed: prompt[len(k.text):], cached: k.positions}
	}
	return kvPlan{feed: prompt}
}

// set records what the cache holds after a conversation run.
func (k *kvCache) set(tools workerproto.SetFunctionTools, text string, positions int) {
	*k = kvCache{valid: true, tools: tools, text: text, positions: positions}
}

// invalidate forgets the cache's content.
func (k *kvCache) invalidate() { *k = kvCache{} }

// replyText joins a run's deliveries the way the runtime's text is laid out in the
// cache; incomplete is true when the last character was cut (bytes of a WAITING
// delivery never completed), so the text does not say what the cache holds.
type replyText struct {
	text    strings.Builder
	pending []byte
	tokens  int
}

func (r *replyText) add(waiting bool, text string, tokenID int32) {
	if tokenID >= 0 {
		r.tokens++
	}
	if waiting {
		r.pending = append(r.pending, text...)
		return
	}
	r.text.Write(r.pending)
	r.pending = r.pending[:0]
	r.text.WriteString(text)
}

func (r *replyText) incomplete() bool { return len(r.pending) > 0 }

// cachedText is what the cache holds after the prompt: the reply, and the
// end-of-reply token when the model ended the reply itself (the runtime keeps it in
// the cache, and does not deliver it when skip_special_token is set).
func cachedText(reply, endOfReply string, endedByModel bool) string {
	if endedByModel && !strings.HasSuffix(reply, endOfReply) {
		return reply + endOfReply
	}
	return reply
}
