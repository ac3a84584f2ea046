package openai

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// request is a checked request and how to answer it.
type request struct {
	spec         *generation.Spec
	chat         bool // chat.completion (else text_completion)
	model        string
	stream       bool
	includeUsage bool
}

var nullJSON = json.RawMessage("null")

// stream is one streamed response as server-sent events: chunks of the chat or
// completion shape.
type stream struct {
	*generation.Stream
	req     *request
	id      string
	created int64
	fp      string
}

func (st *stream) event(v any) {
	b, err := generation.Marshal(v)
	if err != nil {
		return
	}
	st.data(b)
}

func (st *stream) data(b []byte) {
	out := make([]byte, 0, len(b)+8)
	st.Write(append(append(append(out, "data: "...), b...), "\n\n"...))
}

func (st *stream) chunk(delta Delta, finish *string) {
	if !st.req.chat {
		st.text(derefString(delta.Content), finish)
		return
	}
	c := ChatCompletionChunk{ID: st.id, Object: "chat.completion.chunk", Created: st.created, Model: st.req.model,
		SystemFingerprint: st.fp, Choices: []ChunkChoice{{Delta: delta, FinishReason: finish}}}
	if st.req.includeUsage {
		c.Usage = nullJSON
	}
	st.event(c)
}

func (st *stream) text(s string, finish *string) {
	c := Completion{ID: st.id, Object: "text_completion", Created: st.created, Model: st.req.model, SystemFingerprint: st.fp,
		Choices: []TextChoice{{Text: s, FinishReason: finish}}}
	if st.req.includeUsage {
		c.Usage = nullJSON
	}
	st.event(c)
}

func (st *stream) content(s string) {
	if s != "" {
		st.chunk(Delta{Content: &s}, nil)
	}
}

// final sends the last content, the tool calls, the finish reason, the usage when
// asked, and [DONE].
func (st *stream) final(res generation.Result) {
	st.content(res.Rest)
	for i, tc := range toolCalls(res.ToolCalls) {
		args := tc.Function.Arguments
		head := tc
		head.Function.Arguments = ""
		st.chunk(Delta{ToolCalls: []ToolCall{head}}, nil)
		st.chunk(Delta{ToolCalls: []ToolCall{{Index: &i, Function: ToolCallFunction{Arguments: args}}}}, nil)
	}
	finish := res.Finish
	st.chunk(Delta{}, &finish)
	if st.req.includeUsage {
		ub, _ := json.Marshal(usage(res.Usage))
		if st.req.chat {
			st.event(ChatCompletionChunk{ID: st.id, Object: "chat.completion.chunk", Created: st.created, Model: st.req.model,
				SystemFingerprint: st.fp, Choices: []ChunkChoice{}, Usage: ub})
		} else {
			st.event(Completion{ID: st.id, Object: "text_completion", Created: st.created, Model: st.req.model,
				SystemFingerprint: st.fp, Choices: []TextChoice{}, Usage: ub})
		}
	}
	st.data([]byte("[DONE]"))
}

// toolCalls are the model's calls in OpenAI's shape, with their stream index.
func toolCalls(calls []generation.ToolCall) []ToolCall {
	out := make([]ToolCall, len(calls))
	for i, c := range calls {
		out[i] = ToolCall{Index: &i, ID: c.ID, Type: "function", Function: ToolCallFunction{Name: c.Name, Arguments: c.Arguments}}
	}
	return out
}

func usage(u generation.Usage) *Usage {
	out := &Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens}
	out.PromptTokensDetails.CachedTokens = u.CachedTokens
	return out
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// run serves a checked request: it queues the run and relays its output, as a stream
// or one response.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, req *request) {
	run, e := h.g.Start(r, req.spec)
	if e != nil {
		h.fail(w, e)
		return
	}
	defer run.Close()
	var st *stream
	var content []byte
	emit := func(s string) { content = append(content, s...) }
	if req.stream {
		st = &stream{Stream: run.StartStream(w, "text/event-stream; charset=utf-8"), req: req, id: run.ID, created: time.Now().Unix(), fp: h.opts.Fingerprint}
		if req.chat {
			empty := ""
			st.chunk(Delta{Role: "assistant", Content: &empty}, nil)
		}
		emit = st.content
	}
	run.Relay(emit)
	res, e, gone := run.Wait()
	switch {
	case gone:
	case e != nil && st != nil:
		st.event(errorBody{Error: e})
	case e != nil:
		h.fail(w, e)
	case st != nil:
		st.final(res)
	default:
		h.respond(w, req, run.ID, append(content, res.Rest...), res)
	}
}

// respond writes a whole (not streamed) response.
func (h *Handler) respond(w http.ResponseWriter, req *request, id string, content []byte, res generation.Result) {
	created := time.Now().Unix()
	var n int
	if req.chat {
		msg := ResponseMessage{Role: "assistant", ToolCalls: toolCalls(res.ToolCalls), Annotations: []any{}}
		if len(res.ToolCalls) == 0 || len(content) > 0 {
			s := string(content)
			msg.Content = &s
		}
		for i := range msg.ToolCalls {
			msg.ToolCalls[i].Index = nil
		}
		if len(msg.ToolCalls) == 0 {
			msg.ToolCalls = nil
		}
		n = writeJSON(w, http.StatusOK, ChatCompletion{ID: id, Object: "chat.completion", Created: created, Model: req.model,
			SystemFingerprint: h.opts.Fingerprint, Choices: []Choice{{Message: msg, FinishReason: res.Finish}}, Usage: usage(res.Usage)})
	} else {
		ub, _ := json.Marshal(usage(res.Usage))
		finish := res.Finish
		n = writeJSON(w, http.StatusOK, Completion{ID: id, Object: "text_completion", Created: created, Model: req.model,
			SystemFingerprint: h.opts.Fingerprint, Choices: []TextChoice{{Text: string(content), FinishReason: &finish}}, Usage: ub})
	}
	h.g.BytesOut(n)
}
