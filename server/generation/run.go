package generation

import (
	"context"
	"errors"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Spec is a checked request, ready to run.
type Spec struct {
	// IDPrefix starts the run's id ("chatcmpl-", "cmpl-", ...).
	IDPrefix string
	// Prompt is what the model is fed: a rendered conversation, or a raw prompt.
	Prompt string
	// Opening is given out before the reply: the reasoning opening the prompt ended with.
	Opening string
	// Tools are handed to the runtime (rkllm_set_function_tools); nil for none.
	Tools *workerproto.SetFunctionTools
	// ParseTools turns <tool_call> blocks of the reply into tool calls.
	ParseTools bool
	Infer      runtime.InferParams
	// Stop sequences end the reply before them.
	Stop []string
	// MaxTokens is the request's limit of generated tokens (nil: the loaded model's);
	// on ABI 1.2, which takes it only at init, the server stops the run there.
	MaxTokens *int
	Loaded    Loaded
}

// Usage counts a run's tokens, from the runtime's perf counters.
type Usage struct {
	// PromptTokens is the whole prompt: the tokens prefilled now plus CachedTokens.
	PromptTokens int
	// CachedTokens were in the KV cache already (conversation-prefix reuse).
	CachedTokens int
	// CompletionTokens were generated (and given out).
	CompletionTokens int
}

// Result is how a run ended well.
type Result struct {
	// Rest is the content not given out yet.
	Rest      string
	ToolCalls []ToolCall
	// Finish is FinishStop, FinishLength or FinishToolCalls.
	Finish string
	Usage  Usage
	// Perf is the runtime's perf counters of the run (nil when it gave none).
	Perf *runtime.PerfStat
}

// Run is a run queued or in progress. Use it from one goroutine: Relay, then Wait,
// then Close.
type Run struct {
	// ID names the run (the API's id of the response, and rkllm.abort's).
	ID     string
	s      *Service
	spec   *Spec
	cancel context.CancelFunc
	owner  string
	t      *supervisor.Ticket
	q      *deliveryQueue
	out    *output
	stream *Stream
}

// Start queues a run for spec. The run is bound to the request's context (and
// RequestTimeout): a client that leaves aborts it. Close releases it.
func (s *Service) Start(r *http.Request, spec *Spec) (*Run, *Error) {
	if e := holdForRun(r.Context(), spec); e != nil {
		return nil, e
	}
	id := NewID(spec.IDPrefix)
	ctx, cancel := s.requestContext(r.Context())
	serverMax := 0
	if spec.MaxTokens != nil && spec.Loaded.ABI != runtime.ABI13 {
		serverMax = *spec.MaxTokens
	}
	out := newOutput(spec.Stop, spec.ParseTools, s.opts.Template.EndOfReply(), serverMax)
	out.opening = spec.Opening
	q := &deliveryQueue{max: s.opts.MaxBacklogBytes, wake: make(chan struct{}, 1), cancel: cancel}
	owner := "http/" + id
	t, err := s.b.Enqueue(ctx, supervisor.Request{Owner: owner, ID: id, OnDelivery: q.push, Conversation: &supervisor.Conversation{
		Prompt: spec.Prompt, Tools: spec.Tools, Infer: spec.Infer, EndOfReply: s.opts.Template.EndOfReply(), Reuse: s.opts.PrefixReuse,
	}})
	if err != nil {
		cancel()
		return nil, FromBackend(err)
	}
	return &Run{ID: id, s: s, spec: spec, cancel: cancel, owner: owner, t: t, q: q, out: out}, nil
}

// requestContext bounds a request by RequestTimeout.
func (s *Service) requestContext(parent context.Context) (context.Context, context.CancelFunc) {
	if s.opts.RequestTimeout > 0 {
		return context.WithTimeout(parent, s.opts.RequestTimeout)
	}
	return context.WithCancel(parent)
}

// Close ends the run's context; a run still going is aborted.
func (run *Run) Close() {
	run.cancel()
	if run.stream != nil {
		run.s.BytesOut(run.stream.sent)
	}
}

// StartStream sends the headers of a streamed response of contentType. Its writes are
// bounded by WriteTimeout; a failed one aborts the run.
func (run *Run) StartStream(w http.ResponseWriter, contentType string) *Stream {
	run.stream = &Stream{w: w, timeout: run.s.opts.WriteTimeout, cancel: run.cancel}
	run.stream.start(contentType)
	return run.stream
}

// Relay gives out the run's content through emit as it comes (emit writes it to a
// stream, or collects it) until the run ends, and stops the run when the output asks
// (a stop sequence, or max tokens on ABI 1.2).
func (run *Run) Relay(emit func(string)) {
	for done := false; !done; {
		select {
		case <-run.q.wake:
		case <-run.t.Done():
			done = true
		}
		for _, d := range run.q.take() {
			s, stop := run.out.add(d)
			emit(s)
			if stop {
				_, _ = run.s.b.Abort(run.owner, run.ID)
			}
		}
	}
}

// Wait returns how the run ended, once it has. e is the error to give the client when
// it failed; gone is true when there is nobody to give anything to (the client left,
// or was cut off for not reading).
func (run *Run) Wait() (res Result, e *Error, gone bool) {
	outcome, err := run.t.Wait()
	if err != nil {
		e, gone := run.failed(err)
		return Result{}, e, gone
	}
	res = run.out.finish(run.ranOut(run.out.tokens))
	res.Usage = usage(run.out, outcome)
	res.Perf = run.out.perf
	return res, nil, false
}

// ranOut reports whether a run that ended by itself reached max_new_tokens.
func (run *Run) ranOut(tokens int) bool {
	limit := run.spec.Infer.MaxNewTokens
	if limit <= 0 {
		limit = run.spec.Loaded.Param.MaxNewTokens
	}
	return limit > 0 && tokens >= int(limit)
}

// failed explains a run that ended with err.
func (run *Run) failed(err error) (*Error, bool) {
	run.q.mu.Lock()
	overflow := run.q.overflow
	run.q.mu.Unlock()
	st := run.stream
	log := run.s.opts.Log
	switch {
	case overflow, st != nil && errors.Is(st.err, os.ErrDeadlineExceeded):
		log.Info("cutting off a client that does not read its stream; its run is aborted", "id", run.ID, "max_backlog_bytes", run.s.opts.MaxBacklogBytes)
		if run.s.opts.Observer != nil {
			run.s.opts.Observer.ClientCutOff(Transport)
		}
		return nil, true
	case st != nil && st.failed, errors.Is(err, supervisor.ErrAborted):
		log.V(1).Info("the client went away; its run was aborted", "id", run.ID)
		return nil, true
	}
	e := FromBackend(err)
	log.Info("request failed", "id", run.ID, "status", e.Status, "error", err.Error())
	return e, false
}

// usage counts the prompt as the cached positions plus those prefilled now, and the
// completion as the runtime's generated tokens; for a run the server cut short (a stop
// sequence, or max tokens on ABI 1.2) only the tokens up to the cut, because a
// runtime's abort lags and the tokens generated meanwhile never reach the client.
func usage(o *output, out supervisor.Outcome) Usage {
	u := Usage{CompletionTokens: o.tokens}
	if out.Conversation != nil && out.Conversation.CachedTokens > 0 {
		u.CachedTokens = out.Conversation.CachedTokens
	}
	if o.perf != nil {
		u.PromptTokens = u.CachedTokens + int(o.perf.PrefillTokens)
		if n := int(o.perf.GenerateTokens); n > 0 && (!o.cutShort || n < o.tokens) {
			u.CompletionTokens = n
		}
	}
	return u
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

// Stream writes the pieces of a streamed response (server-sent events, NDJSON lines),
// each within the write timeout and flushed; a failed write ends the request (its run
// is aborted) and the writes after it do nothing.
type Stream struct {
	w       http.ResponseWriter
	timeout time.Duration
	cancel  context.CancelFunc
	failed  bool
	err     error // why the stream failed
	sent    int
}

func (s *Stream) start(contentType string) {
	h := s.w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	s.w.WriteHeader(http.StatusOK)
}

// Write writes one piece and flushes it.
func (s *Stream) Write(piece []byte) {
	if s.failed {
		return
	}
	rc := http.NewResponseController(s.w)
	_ = rc.SetWriteDeadline(time.Now().Add(s.timeout))
	n, err := s.w.Write(piece)
	s.sent += n
	if err == nil {
		err = rc.Flush()
	}
	if err != nil {
		s.failed, s.err = true, err
		s.cancel()
	}
}
