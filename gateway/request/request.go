// Package request reads what the gateway routes by out of an inference request's body:
// the model it names, whether its reply streams, and a key of the conversation it
// belongs to. The body itself is forwarded untouched; this only looks.
package request

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
)

// API is the shape of a request: which endpoint family and kind of body.
type API int

// The request shapes the gateway routes.
const (
	// OpenAIChat is POST /v1/chat/completions: messages, streamed as server-sent events.
	OpenAIChat API = iota
	// OpenAICompletion is POST /v1/completions: a prompt, streamed as server-sent events.
	OpenAICompletion
	// OpenAIEmbedding is POST /v1/embeddings: never streamed.
	OpenAIEmbedding
	// OllamaChat is POST /api/chat: messages, streamed as NDJSON unless "stream": false.
	OllamaChat
	// OllamaGenerate is POST /api/generate: a prompt, streamed as NDJSON unless "stream": false.
	OllamaGenerate
	// OllamaOther is any other Ollama request naming a model (/api/embed, /api/embeddings,
	// /api/show): never streamed.
	OllamaOther
)

// Ollama reports whether the shape is one of Ollama's API.
func (a API) Ollama() bool { return a >= OllamaChat }

// Facts are what the gateway needs to know of a request.
type Facts struct {
	// Model is the model the request names.
	Model string
	// Stream is true when the reply is a stream: server-sent events (OpenAI) or NDJSON
	// (Ollama).
	Stream bool
	// Conversation identifies the conversation the request continues, for affinity: 0
	// when the request has none (embeddings, an empty prompt).
	Conversation uint64
}

// PromptPrefixBytes is how much of a prompt (completions, Ollama's generate) names its
// conversation: a later turn of the same conversation repeats the earlier prompt, so
// its first bytes stay the same. A prompt shorter than this is its own key, so a
// conversation that starts below it changes key once, when it grows past it.
const PromptPrefixBytes = 256

// ErrNoModel is returned for a body without a model.
var ErrNoModel = errors.New("the request names no model: set its \"model\" member")

// body is the part of every request shape the gateway reads.
type body struct {
	Model    string          `json:"model"`
	Stream   *bool           `json:"stream"`
	Messages []message       `json:"messages"`
	Prompt   json.RawMessage `json:"prompt"`
	System   string          `json:"system"`
}

// message is a chat message: its role and content (a string, or a list of parts).
type message struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// Inspect reads the facts of a request body of the given shape. The seed makes the
// conversation keys of one gateway process comparable (and unpredictable to clients).
func Inspect(api API, data []byte, seed maphash.Seed) (Facts, error) {
	var b body
	if err := json.Unmarshal(data, &b); err != nil {
		return Facts{}, fmt.Errorf("the request body is not a JSON object of this API: %w", err)
	}
	if strings.TrimSpace(b.Model) == "" {
		return Facts{}, ErrNoModel
	}
	f := Facts{Model: b.Model}
	switch {
	case b.Stream != nil:
		f.Stream = *b.Stream
	case api == OllamaChat || api == OllamaGenerate:
		// Ollama streams unless told not to.
		f.Stream = true
	}
	switch api {
	case OpenAIChat, OllamaChat:
		f.Conversation = chatKey(b.Messages, seed)
	case OpenAICompletion, OllamaGenerate:
		f.Conversation = promptKey(b.System, b.Prompt, seed)
	case OpenAIEmbedding, OllamaOther:
		// An embedding has no conversation, and the replica holds no state for it.
		f.Stream = false
	}
	return f, nil
}

// chatKey hashes the messages up to and including the first user message: the system
// prompt and the opening question stay the same on every turn of a conversation, while
// everything after them grows. A content is hashed by its text, so a client that sends
// the same message as a string on one turn and as text parts on the next (Open WebUI
// marks the last message's parts for prompt caching) keeps its key.
func chatKey(msgs []message, seed maphash.Seed) uint64 {
	if len(msgs) == 0 {
		return 0
	}
	var h maphash.Hash
	h.SetSeed(seed)
	for _, m := range msgs {
		// A maphash.Hash never fails a write.
		_, _ = h.WriteString(m.Role)
		_ = h.WriteByte(0)
		writeContent(&h, m.Content)
		_ = h.WriteByte(0)
		if m.Role == "user" {
			break
		}
	}
	return nonZero(h.Sum64())
}

// part is a content part: its type, and its text for text parts.
type part struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// writeContent hashes a message content: a string as it is; of a list of parts, the
// text of text parts and the compacted JSON of others (an image); anything else
// compacted.
func writeContent(h *maphash.Hash, raw json.RawMessage) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		_, _ = h.WriteString(s)
		return
	}
	var parts []json.RawMessage
	if json.Unmarshal(raw, &parts) == nil {
		for _, p := range parts {
			var tp part
			if json.Unmarshal(p, &tp) == nil && tp.Type == "text" {
				_, _ = h.WriteString(tp.Text)
				continue
			}
			writeCompact(h, p)
		}
		return
	}
	writeCompact(h, raw)
}

func writeCompact(h *maphash.Hash, raw json.RawMessage) {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		_, _ = h.Write(raw)
		return
	}
	_, _ = h.Write(buf.Bytes())
}

// promptKey hashes the system prompt and the first PromptPrefixBytes of the prompt (a
// string, or a list whose first element is one).
func promptKey(system string, raw json.RawMessage, seed maphash.Seed) uint64 {
	prompt := promptText(raw)
	if prompt == "" {
		return 0
	}
	if len(prompt) > PromptPrefixBytes {
		prompt = prompt[:PromptPrefixBytes]
	}
	var h maphash.Hash
	h.SetSeed(seed)
	_, _ = h.WriteString(system)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(prompt)
	return nonZero(h.Sum64())
}

func promptText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil && len(list) > 0 && json.Unmarshal(list[0], &s) == nil {
		return s
	}
	return ""
}

// nonZero keeps 0 meaning "no conversation".
func nonZero(k uint64) uint64 {
	if k == 0 {
		return 1
	}
	return k
}
