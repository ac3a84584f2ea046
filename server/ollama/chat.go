package ollama

import (
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// turn is a checked request of /api/chat or /api/generate and how to answer it.
type turn struct {
	chat   bool // /api/chat (else /api/generate)
	model  string
	stream bool
	// think splits the reply's reasoning off as "thinking" (think true).
	think bool
	start time.Time
	spec  *generation.Spec
}

// chat serves POST /api/chat.
func (h *Handler) chat(w http.ResponseWriter, r *http.Request) {
	t := &turn{chat: true, start: time.Now()}
	c, msgs, tools, e := h.decodeChat(w, r)
	if e == nil {
		t.model, t.stream = c.model, c.stream
		e = h.prepare(r, t, c, &generation.Chat{Messages: msgs, Tools: tools, Thinking: c.think}, len(msgs) == 0)
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	h.answer(w, r, t)
}

func (h *Handler) decodeChat(w http.ResponseWriter, r *http.Request) (*common, []chattemplate.Message, []generation.Tool, *generation.Error) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		return nil, nil, nil, e
	}
	pay := generation.BudgetFor(r.Context())
	m, e := members(body, pay)
	if e != nil {
		return nil, nil, nil, e
	}
	c, e := decodeCommon(m, pay)
	if e != nil {
		return nil, nil, nil, e
	}
	msgs, e := decodeMessages(m["messages"], pay)
	if e != nil {
		return nil, nil, nil, e
	}
	tools, e := generation.DecodeTools(m["tools"], "tools", pay)
	return c, msgs, tools, e
}

// generate serves POST /api/generate: the prompt (with system) rendered with the chat
// template as one user turn, or with raw true the prompt as it is.
func (h *Handler) generate(w http.ResponseWriter, r *http.Request) {
	t := &turn{start: time.Now()}
	c, chat, raw, prompt, e := h.decodeGenerate(w, r)
	if e == nil && raw {
		chat = nil
	}
	if e == nil {
		t.model, t.stream = c.model, c.stream
		e = h.prepare(r, t, c, chat, prompt == "")
	}
	if e == nil && raw && t.spec != nil {
		t.spec.Prompt = prompt
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	h.answer(w, r, t)
}

func (h *Handler) decodeGenerate(w http.ResponseWriter, r *http.Request) (c *common, chat *generation.Chat, raw bool, prompt string, e *generation.Error) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		return nil, nil, false, "", e
	}
	pay := generation.BudgetFor(r.Context())
	m, e := members(body, pay)
	if e != nil {
		return nil, nil, false, "", e
	}
	if c, e = decodeCommon(m, pay); e != nil {
		return nil, nil, false, "", e
	}
	var system, suffix string
	var images []json.RawMessage
	var context []int
	for _, f := range []struct {
		key  string
		v    any
		what string
	}{{"prompt", &prompt, "a string"}, {"system", &system, "a string"}, {"raw", &raw, "a boolean"}, {"suffix", &suffix, "a string"},
		{"images", &images, "an array"}, {"context", &context, "an array of token ids"}} {
		if e := decode(m, f.key, f.key, f.v, f.what); e != nil {
			return nil, nil, false, "", e
		}
	}
	for _, f := range []struct{ param, v string }{{"prompt", prompt}, {"system", system}} {
		if e := generation.NoNUL(f.param, f.v); e != nil {
			return nil, nil, false, "", e
		}
	}
	switch {
	case suffix != "":
		return nil, nil, false, "", generation.Unsupported("suffix", "suffix (fill in the middle) is not supported by this server")
	case len(images) > 0:
		return nil, nil, false, "", generation.Unsupported("images", "images are not supported: this server serves a text model")
	case len(context) > 0:
		return nil, nil, false, "", generation.Unsupported("context", "context is not supported: send the conversation to /api/chat, whose prefix the server reuses from the KV cache")
	}
	chat = &generation.Chat{Thinking: c.think}
	if system != "" {
		chat.Messages = append(chat.Messages, chattemplate.Message{Role: chattemplate.RoleSystem, Content: system})
	}
	chat.Messages = append(chat.Messages, chattemplate.Message{Role: chattemplate.RoleUser, Content: prompt})
	return c, chat, raw, prompt, nil
}

// prepare checks the model and makes the run's spec, with chat rendered into its
// prompt (nil: the caller gives the prompt); load is true for a request that only
// loads the model (no messages, no prompt), which gets no spec.
func (h *Handler) prepare(r *http.Request, t *turn, c *common, chat *generation.Chat, load bool) *generation.Error {
	loaded, e := h.ready(c.model)
	if e != nil || load {
		return e
	}
	if c.think != nil && *c.think {
		if turns, ok := h.g.Template().(*chattemplate.Turns); ok && turns.Thinking == "" {
			return generation.Unsupported("think", "think is not supported by this model's chat template %s: it has no thinking mode (use a thinking template such as qwen3 or deepseek-r1 for a thinking model)", turns.Name())
		}
		t.think = true
	}
	infer, e := c.sampling.InferParams(loaded, optionName)
	if e != nil {
		return e
	}
	t.spec = &generation.Spec{IDPrefix: "ollama-", Infer: infer, Stop: c.sampling.Stop, MaxTokens: c.sampling.MaxTokens, Loaded: loaded}
	if chat == nil {
		return nil
	}
	return h.g.PrepareChat(r.Context(), chat, t.spec)
}

// answer runs t, or answers a request that only loads the model.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, t *turn) {
	if t.spec == nil {
		h.g.BytesOut(writeJSON(w, http.StatusOK, t.response("", "", nil, "load", nil)))
		return
	}
	run, e := h.g.Start(r, t.spec)
	if e != nil {
		h.fail(w, e)
		return
	}
	defer run.Close()
	var st *generation.Stream
	var split *reasoning
	if t.think {
		split = &reasoning{}
	}
	var thinking, content strings.Builder
	give := func(th, c string) {
		switch {
		case st != nil && (th != "" || c != ""):
			line(st, t.response(th, c, nil, "", nil))
		case st == nil:
			thinking.WriteString(th)
			content.WriteString(c)
		}
	}
	emit := func(s string) {
		if split == nil {
			give("", s)
			return
		}
		give(split.split(s))
	}
	if t.stream {
		st = run.StartStream(w, "application/x-ndjson")
	}
	run.Relay(emit)
	res, e, gone := run.Wait()
	switch {
	case gone:
		return
	case e != nil && st != nil:
		line(st, errorBody{Error: e.Message})
		return
	case e != nil:
		h.fail(w, e)
		return
	}
	emit(res.Rest)
	if split != nil {
		give(split.flush())
	}
	t.finish(w, st, res, thinking.String(), content.String(), h)
}

// finish writes the end of the reply: the tool calls and the counters.
func (t *turn) finish(w http.ResponseWriter, st *generation.Stream, res generation.Result, thinking, content string, h *Handler) {
	calls := toolCalls(res.ToolCalls)
	reason := res.Finish
	if reason == generation.FinishToolCalls {
		reason = generation.FinishStop
	}
	m := metrics(t.start, res)
	if st == nil {
		h.g.BytesOut(writeJSON(w, http.StatusOK, t.response(thinking, content, calls, reason, &m)))
		return
	}
	if len(calls) > 0 {
		line(st, t.response("", "", calls, "", nil))
	}
	line(st, t.response("", "", nil, reason, &m))
}

// response is one object of the reply: a piece of it (done false), or its end (with
// reason and the counters).
func (t *turn) response(thinking, content string, calls []ToolCall, reason string, m *Metrics) any {
	done := reason != ""
	if !t.chat {
		r := GenerateResponse{Model: t.model, CreatedAt: now(), Response: content, Thinking: thinking, DoneReason: reason, Done: done}
		if m != nil {
			r.Metrics = *m
		}
		return r
	}
	r := ChatResponse{Model: t.model, CreatedAt: now(), Message: Message{Role: "assistant", Content: content, Thinking: thinking, ToolCalls: calls},
		DoneReason: reason, Done: done}
	if m != nil {
		r.Metrics = *m
	}
	return r
}

// line writes one NDJSON line.
func line(st *generation.Stream, v any) {
	b, err := generation.Marshal(v)
	if err != nil {
		return
	}
	st.Write(append(b, '\n'))
}

// metrics are the counters of a finished run: the prompt's tokens (cached ones
// included) and the generated ones, and the runtime's prefill and generation times.
func metrics(start time.Time, res generation.Result) Metrics {
	m := Metrics{TotalDuration: time.Since(start).Nanoseconds(), PromptEvalCount: res.Usage.PromptTokens, EvalCount: res.Usage.CompletionTokens}
	if res.Perf != nil {
		m.PromptEvalDuration = int64(float64(res.Perf.PrefillTimeMs) * 1e6)
		m.EvalDuration = int64(float64(res.Perf.GenerateTimeMs) * 1e6)
	}
	return m
}

// toolCalls are the model's calls in Ollama's shape: the arguments an object (the
// model's text when it wrote JSON, else that text as a JSON string).
func toolCalls(calls []generation.ToolCall) []ToolCall {
	out := make([]ToolCall, 0, len(calls))
	for i, c := range calls {
		args := json.RawMessage(c.Arguments)
		if !json.Valid(args) {
			args, _ = json.Marshal(c.Arguments)
		}
		out = append(out, ToolCall{Function: ToolCallFunction{Index: i, Name: c.Name, Arguments: args}})
	}
	return out
}
