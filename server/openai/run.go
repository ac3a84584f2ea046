package openai

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// runSpec is a checked request, ready to run.
type runSpec struct {
	chat       bool // chat.completion (else text_completion)
	model      string
	prompt     string
	opening    string // given out before the reply: the reasoning opening the prompt ended with
	tools      *workerproto.SetFunctionTools
	parseTools bool
	infer      runtime.InferParams
	sampling   *sampling
	abi        runtime.ABI
	loaded     runtime.Param
}

// deliveryQueue hands a run's deliveries from the supervisor's executor to the
// request's goroutine without ever blocking the executor: a client that reads slower
// than the model writes is cut off once MaxBacklogBytes are waiting for it.
type deliveryQueue struct {
	mu       sync.Mutex
	items    []runtime.Delivery
	bytes    int
	max      int
	overflow bool
	wake     chan struct{}
	cancel   context.CancelFunc
}

func (q *deliveryQueue) push(d runtime.Delivery) {
	n := 64
	for _, r := range d.Results {
		n += len(r.Text)
	}
	q.mu.Lock()
	if q.overflow {
		q.mu.Unlock()
		return
	}
	if q.bytes+n > q.max {
		q.overflow = true
		q.mu.Unlock()
		q.cancel()
		return
	}
	q.items = append(q.items, d)
	q.bytes += n
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *deliveryQueue) take() []runtime.Delivery {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items, q.bytes = nil, 0
	return items
}

// sse writes server-sent events, each within the write timeout; a failed write ends
// the request (its run is aborted).
type sse struct {
	w       http.ResponseWriter
	timeout time.Duration
	cancel  context.CancelFunc
	failed  bool
	err     error // why the stream failed
	sent    int
}

func (s *sse) start() {
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
}

func (s *sse) data(b []byte) {
	if s.failed {
		return
	}
	rc := http.NewResponseController(s.w)
	_ = rc.SetWriteDeadline(time.Now().Add(s.timeout))
	out := make([]byte, 0, len(b)+8)
	out = append(append(append(out, "data: "...), b...), "\n\n"...)
	n, err := s.w.Write(out)
	s.sent += n
	if err == nil {
		err = rc.Flush()
	}
	if err != nil {
		s.failed, s.err = true, err
		s.cancel()
	}
}

func (s *sse) event(v any) {
	b, err := marshal(v)
	if err != nil {
		return
	}
	s.data(b)
}

var nullJSON = json.RawMessage("null")

// stream is one streamed response: chunks of the chat or completion shape.
type stream struct {
	*sse
	spec    *runSpec
	id      string
	created int64
	fp      string
	usage   bool
}

func (st *stream) chunk(delta Delta, finish *string) {
	if !st.spec.chat {
		st.text(derefString(delta.Content), finish)
		return
	}
	c := ChatCompletionChunk{ID: st.id, Object: "chat.completion.chunk", Created: st.created, Model: st.spec.model,
		SystemFingerprint: st.fp, Choices: []ChunkChoice{{Delta: delta, FinishReason: finish}}}
	if st.usage {
		c.Usage = nullJSON
	}
	st.event(c)
}

func (st *stream) text(s string, finish *string) {
	c := Completion{ID: st.id, Object: "text_completion", Created: st.created, Model: st.spec.model, SystemFingerprint: st.fp,
		Choices: []TextChoice{{Text: s, FinishReason: finish}}}
	if st.usage {
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
func (st *stream) final(res result, u *Usage) {
	st.content(res.rest)
	for _, tc := range res.toolCalls {
		args := tc.Function.Arguments
		head := tc
		head.Function.Arguments = ""
		st.chunk(Delta{ToolCalls: []ToolCall{head}}, nil)
		st.chunk(Delta{ToolCalls: []ToolCall{{Index: tc.Index, Function: ToolCallFunction{Arguments: args}}}}, nil)
	}
	finish := res.finish
	st.chunk(Delta{}, &finish)
	if st.usage {
		ub, _ := json.Marshal(u)
		if st.spec.chat {
			st.event(ChatCompletionChunk{ID: st.id, Object: "chat.completion.chunk", Created: st.created, Model: st.spec.model,
				SystemFingerprint: st.fp, Choices: []ChunkChoice{}, Usage: ub})
		} else {
			st.event(Completion{ID: st.id, Object: "text_completion", Created: st.created, Model: st.spec.model,
				SystemFingerprint: st.fp, Choices: []TextChoice{}, Usage: ub})
		}
	}
	st.data([]byte("[DONE]"))
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// run serves a checked request: it queues the conversation, relays its output (as a
// stream or one response) and stops the run early for a stop sequence or, on ABI 1.2,
// max_tokens.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, spec *runSpec) {
	prefix := "cmpl-"
	if spec.chat {
		prefix = "chatcmpl-"
	}
	id := newID(prefix)
	var ctx context.Context
	var cancel context.CancelFunc
	if h.opts.RequestTimeout > 0 {
		ctx, cancel = context.WithTimeout(r.Context(), h.opts.RequestTimeout)
	} else {
		ctx, cancel = context.WithCancel(r.Context())
	}
	defer cancel()
	serverMax := 0
	if spec.sampling.MaxTokens != nil && spec.abi != runtime.ABI13 {
		serverMax = *spec.sampling.MaxTokens
	}
	if e := holdForRun(r.Context(), spec); e != nil {
		h.fail(w, e)
		return
	}
	out := newOutput(spec.sampling.Stop, spec.parseTools, h.opts.Template.EndOfReply(), serverMax)
	out.opening = spec.opening
	q := &deliveryQueue{max: h.opts.MaxBacklogBytes, wake: make(chan struct{}, 1), cancel: cancel}
	owner := "openai/" + id
	t, err := h.b.Enqueue(ctx, supervisor.Request{Owner: owner, ID: id, OnDelivery: q.push, Conversation: &supervisor.Conversation{
		Prompt: spec.prompt, Tools: spec.tools, Infer: spec.infer, EndOfReply: h.opts.Template.EndOfReply(), Reuse: h.opts.PrefixReuse,
	}})
	if err != nil {
		h.fail(w, fromBackend(err))
		return
	}
	var st *stream
	if spec.sampling.Stream {
		st = h.startStream(w, spec, id, cancel)
	}
	content := h.relay(t, q, out, st, owner, id)
	outcome, err := t.Wait()
	if st != nil && h.opts.Observer != nil {
		defer func() { h.opts.Observer.BytesOut("http", st.sent) }()
	}
	if err != nil {
		h.runFailed(w, st, q, err, id)
		return
	}
	res := out.finish(h.ranOut(spec, out.tokens))
	u := usage(out, outcome)
	if st != nil {
		st.final(res, u)
		return
	}
	content = append(content, res.rest...)
	h.respond(w, spec, id, content, res, u)
}

// holdForRun sets what the request holds of the budget of bytes in flight while it
// waits and runs: its prompt and the prompt's copy in the frame to the worker. The
// body and the decoded messages, charged before, are garbage once the prompt exists.
func holdForRun(ctx context.Context, spec *runSpec) *Error {
	acct := inflight.FromContext(ctx)
	keep := 2 * len(spec.prompt)
	if spec.tools != nil {
		keep += 2 * (len(spec.tools.Tools) + len(spec.tools.SystemPrompt))
	}
	switch held := int(acct.Held()); {
	case held < keep:
		if err := acct.Charge(keep - held); err != nil {
			return overBudget(err)
		}
	default:
		acct.Release(held - keep)
	}
	return nil
}

// startStream sends the headers of a stream and, for a chat, the role chunk.
func (h *Handler) startStream(w http.ResponseWriter, spec *runSpec, id string, cancel context.CancelFunc) *stream {
	st := &stream{sse: &sse{w: w, timeout: h.opts.WriteTimeout, cancel: cancel}, spec: spec, id: id,
		created: time.Now().Unix(), fp: h.opts.Fingerprint, usage: spec.sampling.IncludeUsage}
	st.start()
	if spec.chat {
		empty := ""
		st.chunk(Delta{Role: "assistant", Content: &empty}, nil)
	}
	return st
}

// relay gives out the run's output as it comes (streamed, or collected and returned)
// until the run ends, and stops the run when the output asks.
func (h *Handler) relay(t *supervisor.Ticket, q *deliveryQueue, out *output, st *stream, owner, id string) []byte {
	var content []byte
	for done := false; !done; {
		select {
		case <-q.wake:
		case <-t.Done():
			done = true
		}
		for _, d := range q.take() {
			s, stop := out.add(d)
			if st != nil {
				st.content(s)
			} else {
				content = append(content, s...)
			}
			if stop {
				_, _ = h.b.Abort(owner, id)
			}
		}
	}
	return content
}

// ranOut reports whether a run that ended by itself reached max_new_tokens.
func (h *Handler) ranOut(spec *runSpec, tokens int) bool {
	limit := spec.infer.MaxNewTokens
	if limit <= 0 {
		limit = spec.loaded.MaxNewTokens
	}
	return limit > 0 && tokens >= int(limit)
}

func (h *Handler) runFailed(w http.ResponseWriter, st *stream, q *deliveryQueue, err error, id string) {
	q.mu.Lock()
	overflow := q.overflow
	q.mu.Unlock()
	e := fromBackend(err)
	switch {
	case overflow, st != nil && errors.Is(st.err, os.ErrDeadlineExceeded):
		h.opts.Log.Info("cutting off a client that does not read its stream; its run is aborted", "id", id, "max_backlog_bytes", h.opts.MaxBacklogBytes)
		if h.opts.Observer != nil {
			h.opts.Observer.ClientCutOff("http")
		}
		return
	case st != nil && st.failed, errors.Is(err, supervisor.ErrAborted):
		h.opts.Log.V(1).Info("the client went away; its run was aborted", "id", id)
		return
	}
	h.opts.Log.Info("request failed", "id", id, "status", e.Status, "error", err.Error())
	if st != nil {
		st.event(errorBody{Error: e})
		return
	}
	h.fail(w, e)
}

// usage counts the prompt as the cached positions plus those prefilled now, and the
// completion as the runtime's generated tokens; for a run the server cut short (a stop
// sequence, or max_tokens on ABI 1.2) only the tokens up to the cut, because a
// runtime's abort lags and the tokens generated meanwhile never reach the client.
func usage(o *output, out supervisor.Outcome) *Usage {
	u := &Usage{CompletionTokens: o.tokens}
	cached := 0
	if out.Conversation != nil && out.Conversation.CachedTokens > 0 {
		cached = out.Conversation.CachedTokens
	}
	if o.perf != nil {
		u.PromptTokens = cached + int(o.perf.PrefillTokens)
		if n := int(o.perf.GenerateTokens); n > 0 && (!o.cutShort || n < o.tokens) {
			u.CompletionTokens = n
		}
	}
	u.PromptTokensDetails.CachedTokens = cached
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// respond writes a whole (not streamed) response.
func (h *Handler) respond(w http.ResponseWriter, spec *runSpec, id string, content []byte, res result, u *Usage) {
	created := time.Now().Unix()
	var n int
	if spec.chat {
		msg := ResponseMessage{Role: "assistant", ToolCalls: res.toolCalls, Annotations: []any{}}
		if len(res.toolCalls) == 0 || len(content) > 0 {
			s := string(content)
			msg.Content = &s
		}
		for i := range msg.ToolCalls {
			msg.ToolCalls[i].Index = nil
		}
		n = writeJSON(w, http.StatusOK, ChatCompletion{ID: id, Object: "chat.completion", Created: created, Model: spec.model,
			SystemFingerprint: h.opts.Fingerprint, Choices: []Choice{{Message: msg, FinishReason: res.finish}}, Usage: u})
	} else {
		ub, _ := json.Marshal(u)
		finish := res.finish
		n = writeJSON(w, http.StatusOK, Completion{ID: id, Object: "text_completion", Created: created, Model: spec.model,
			SystemFingerprint: h.opts.Fingerprint, Choices: []TextChoice{{Text: string(content), FinishReason: &finish}}, Usage: ub})
	}
	if h.opts.Observer != nil {
		h.opts.Observer.BytesOut("http", n)
	}
}
