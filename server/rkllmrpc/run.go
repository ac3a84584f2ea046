package rkllmrpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Finish reasons of a run's final response.
const (
	FinishStop   = "stop"   // the model ended the reply
	FinishLength = "length" // max_new_tokens was reached
	FinishAbort  = "abort"  // rkllm.abort (or shutdown) ended it early
	FinishError  = "error"  // the runtime reported RKLLM_RUN_ERROR (in the error's data)
)

// runPlan is a checked rkllm.run request.
type runPlan struct {
	inputs []runtime.Input
	batch  bool
	ip     runtime.InferParams
	stream bool
	base64 bool
}

// plan decodes and checks the params of a run.
func (s *Service) plan(c *jsonrpc.Call, async bool) (*runPlan, error) {
	var p runParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	// What does not depend on the model is checked now; the supervisor checks the rest
	// against the model loaded when the run executes (runtime.Limits).
	lim := runtime.Limits{ABI: s.abi()}
	inputs, batch, err := p.inputs(lim)
	if err != nil {
		return nil, err
	}
	if err := p.InferParams.check(); err != nil {
		return nil, err
	}
	plan := &runPlan{inputs: inputs, batch: batch, ip: p.InferParams.inferParams(), stream: p.Stream || async, base64: p.Encoding == "base64"}
	if err := runtime.CheckInferParams(&plan.ip, lim); err != nil {
		return nil, invalidInput(err, batch)
	}
	switch p.Encoding {
	case "", "json", "base64":
	default:
		return nil, jsonrpc.InvalidParams("encoding", `must be "json" (default) or "base64" (little-endian float32)`)
	}
	if err := s.checkPromptCache(c, plan.ip.PromptCache); err != nil {
		return nil, err
	}
	if plan.stream && !c.CanNotify() {
		return nil, jsonrpc.InvalidParams("stream", "streaming is not available for a request inside a batch over HTTP; send it alone, or use the Unix socket")
	}
	if async && (c.Peer == nil || !c.Peer.Persistent) {
		return nil, jsonrpc.ErrNotAllowed.Withf("not allowed: %s delivers its results later on the same connection, which HTTP cannot; use the Unix socket, or rkllm.run with \"stream\": true", c.Method)
	}
	return plan, nil
}

// checkPromptCache confines a run's prompt cache file to --model-dir; writing one needs
// an admin connection.
func (s *Service) checkPromptCache(c *jsonrpc.Call, pc *runtime.PromptCacheParams) error {
	if pc == nil || (!pc.Save && pc.Path == "") {
		return nil
	}
	if c.Peer == nil || !c.Peer.Admin {
		return jsonrpc.ErrNotAllowed.Withf("not allowed: infer_params.prompt_cache_params writes a file on the server; use the Unix socket, or widen --admin")
	}
	var err error
	pc.Path, err = s.dir.resolve("infer_params.prompt_cache_params.prompt_cache_path", pc.Path, !pc.Save)
	return err
}

// newRequestID names a run with 128 random bits: the id is what lets a caller abort
// the run (over HTTP, with the same API key), so it must not be guessable.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return short)
	return "r-" + hex.EncodeToString(b[:])
}

// run serves rkllm.run and rkllm.run_async.
func (s *Service) run(ctx context.Context, c *jsonrpc.Call, async bool) (any, error) {
	plan, err := s.plan(c, async)
	if err != nil {
		return nil, err
	}
	id := newRequestID()
	acc := newRunAcc(id, len(plan.inputs), plan.batch, plan.base64)
	// An asynchronous run's notifications wait until its handle has been sent, so a
	// client never sees a request_id before the response that names it. Not in a batch:
	// the batch's answer waits for its other requests, which may wait for this run.
	gate := &notifyGate{send: func(params any) { _ = c.Notify(NotifyResult, params) }, replied: make(chan struct{})}
	if async && !c.InBatch {
		c.AfterReply(gate.open)
	} else {
		gate.open()
	}
	if plan.stream {
		acc.notify = gate.notify
	}
	maxNew := plan.ip.MaxNewTokens
	if loaded, ok := s.b.Loaded(); ok && maxNew <= 0 {
		maxNew = loaded.MaxNewTokens
	}
	base := ctx
	if async {
		base = c.Peer.Context
	}
	rctx, cancel := s.requestContext(base)
	acc.acct, acc.stop = inflight.FromContext(ctx), cancel
	if async {
		// The run outlives the run_async request, whose account is closed with its
		// answer: its arrays are paid from an account of its own until rkllm.done.
		acc.acct = acc.acct.Budget().Open()
	}
	t, err := s.b.Enqueue(rctx, supervisor.Request{
		Owner: owner(c), ID: id, OnDelivery: acc.deliver, Direct: direct(c, plan, async, acc),
		Msg: &workerproto.Run{Inputs: plan.inputs, Infer: plan.ip},
	})
	if err != nil {
		cancel()
		acc.acct.Close()
		return nil, rpcError(err, nil)
	}
	c.Admit()
	if async {
		// The connection is not idle while its run is queued or going.
		release := c.Peer.Hold()
		go func() {
			defer release()
			defer cancel()
			defer acc.acct.Close()
			out, err := t.Wait()
			<-gate.replied
			if acc.over != nil {
				err = acc.busy()
			}
			if err != nil {
				_ = c.Notify(NotifyDone, map[string]any{"request_id": id, "error": asRPCError(runError(err, plan.batch, acc))})
				return
			}
			_ = c.Notify(NotifyDone, acc.result(out, maxNew))
		}()
		return map[string]any{"request_id": id}, nil
	}
	defer cancel()
	out, err := t.Wait()
	if acc.over != nil {
		return nil, acc.busy()
	}
	if err != nil {
		return nil, runError(err, plan.batch, acc)
	}
	return acc.result(out, maxNew).encode()
}

// notifyGate holds a run's notifications until the response that names the run has
// been written, without blocking the supervisor goroutine that delivers them. A held
// notification stays paid for (its release is called once it has been sent).
type notifyGate struct {
	send    func(params any)
	mu      sync.Mutex
	opened  bool
	held    []heldNote
	replied chan struct{} // closed once open has sent what was held
}

// heldNote is a notification waiting for the gate to open, with what gives back its
// charge.
type heldNote struct {
	params  any
	release func()
}

func (g *notifyGate) notify(params any, release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.opened {
		g.held = append(g.held, heldNote{params, release})
		return
	}
	g.send(params)
	release()
}

// open sends the notifications held so far, in order, and lets the next ones through.
func (g *notifyGate) open() {
	g.mu.Lock()
	for _, h := range g.held {
		g.send(h.params)
		h.release()
	}
	g.held, g.opened = nil, true
	g.mu.Unlock()
	close(g.replied)
}

// runError maps the error of a run: an input the model's limits refused is invalid
// params naming the member (batch tells how the input was given).
func runError(err error, batch bool, acc *runAcc) error {
	if errors.Is(err, runtime.ErrInvalidInput) {
		return invalidInput(err, batch)
	}
	return rpcError(err, acc.partial(err))
}

// abi is the runtime library's ABI, "" before the worker has said which.
func (s *Service) abi() runtime.ABI {
	if m, ok := s.b.LoadedModel(); ok {
		return m.ABI
	}
	return ""
}

// runAcc collects the deliveries of one run, relays them as notifications when the
// client streams, and builds the final result. deliver runs on the supervisor's
// goroutine that reads the worker's connection and result after the run ended, so no
// lock is needed.
type runAcc struct {
	id     string
	batch  bool
	base64 bool
	// notify sends a notification when the client streams; release gives back what
	// the notification was charged for (chargeArrays) once it has been sent.
	notify  func(params any, release func())
	entries []entryAcc
	perf    *runtime.PerfStat
	// acct pays for the run's hidden states and logits (result.go); stop aborts the
	// run when they do not fit, and over says so.
	acct *inflight.Account
	stop func()
	over *resultBusyError
}

type entryAcc struct {
	text     []byte
	pending  []byte // bytes of a WAITING delivery, joined with the next
	tokenIDs []int32
	hidden   []float32
	embd     int
	hiddenN  int
	logits   []float32
	vocab    int
	logitsN  int
}

func newRunAcc(id string, n int, batch, base64 bool) *runAcc {
	return &runAcc{id: id, batch: batch, base64: base64, entries: make([]entryAcc, n)}
}

// tokenNote is one entry of a rkllm.result notification.
type tokenNote struct {
	Text            string        `json:"text"`
	TokenID         int32         `json:"token_id"`
	LastHiddenLayer *hiddenLayerJ `json:"last_hidden_layer,omitempty"`
	Logits          *logitsJ      `json:"logits,omitempty"`
}

type hiddenLayerJ struct {
	EmbdSize     int      `json:"embd_size"`
	NumTokens    int      `json:"num_tokens"`
	HiddenStates floatOut `json:"hidden_states"`
}

type logitsJ struct {
	VocabSize int      `json:"vocab_size"`
	NumTokens int      `json:"num_tokens"`
	Logits    floatOut `json:"logits"`
}

func (a *runAcc) deliver(d runtime.Delivery) {
	release, ok := a.chargeArrays(&d)
	if !ok {
		return
	}
	if note := a.record(&d); note != nil {
		// Sent at once, or held until the run's handle has been written: either way its
		// charge is given back once it has been sent.
		a.notify(note, release)
		return
	}
	release()
}

// record adds a delivery to the run and returns its notification: nil when the
// client does not stream or the delivery has none.
func (a *runAcc) record(d *runtime.Delivery) any {
	switch d.State {
	case runtime.StateFinish:
		if len(d.Results) > 0 {
			p := d.Results[0].Perf
			a.perf = &p
		}
		return nil
	case runtime.StateError:
		return nil
	}
	state := stateName(int32(d.State))
	if !a.batch && len(d.Results) > 0 {
		note := a.take(0, &d.Results[0], d.State)
		switch {
		case a.notify == nil:
			return nil
		case note.LastHiddenLayer == nil && note.Logits == nil:
			return &textNote{RequestID: a.id, State: state, Text: note.Text, TokenID: note.TokenID}
		default:
			return &singleNote{RequestID: a.id, State: state, tokenNote: note}
		}
	}
	notes := make([]tokenNote, 0, len(d.Results))
	for i := range d.Results {
		if i >= len(a.entries) {
			break
		}
		notes = append(notes, a.take(i, &d.Results[i], d.State))
	}
	if a.notify == nil {
		return nil
	}
	// Structs, not maps: this runs for every token, and encoding a struct costs a
	// fraction of a map.
	if a.batch {
		return &batchNote{RequestID: a.id, State: state, Results: notes}
	}
	return &batchNote{RequestID: a.id, State: state}
}

// take adds result r of a delivery to entry i and returns its part of the
// notification.
func (a *runAcc) take(i int, r *runtime.Result, state runtime.CallState) tokenNote {
	e := &a.entries[i]
	note := tokenNote{TokenID: r.TokenID}
	switch {
	case state == runtime.StateWaiting:
		e.pending = append(e.pending, r.Text...)
	case len(e.pending) > 0:
		chunk := append(e.pending, r.Text...)
		e.pending = nil
		e.text = append(e.text, chunk...)
		note.Text = string(chunk)
	default:
		e.text = append(e.text, r.Text...)
		note.Text = r.Text
	}
	if r.TokenID >= 0 {
		e.tokenIDs = append(e.tokenIDs, r.TokenID)
	}
	if len(r.HiddenStates) > 0 {
		e.hidden = append(e.hidden, r.HiddenStates...)
		e.embd = r.EmbdSize
		e.hiddenN += r.NumTokens
		note.LastHiddenLayer = &hiddenLayerJ{EmbdSize: r.EmbdSize, NumTokens: r.NumTokens, HiddenStates: floatOut{r.HiddenStates, a.base64}}
	}
	if len(r.Logits) > 0 {
		e.logits = append(e.logits, r.Logits...)
		e.vocab = r.VocabSize
		e.logitsN += r.NumTokens
		note.Logits = &logitsJ{VocabSize: r.VocabSize, NumTokens: r.NumTokens, Logits: floatOut{r.Logits, a.base64}}
	}
	return note
}

// textNote is the params of a rkllm.result notification of a run with one input whose
// token carries text only, the notification of almost every token. It writes its own
// JSON (jsonrpc.Appender), the same as singleNote's.
type textNote struct {
	RequestID string `json:"request_id"`
	State     string `json:"state"`
	Text      string `json:"text"`
	TokenID   int32  `json:"token_id"`
}

// AppendJSON implements jsonrpc.Appender.
func (n *textNote) AppendJSON(b []byte) []byte {
	b = jsonrpc.AppendString(append(b, `{"request_id":`...), n.RequestID)
	b = jsonrpc.AppendString(append(b, `,"state":`...), n.State)
	b = jsonrpc.AppendString(append(b, `,"text":`...), n.Text)
	b = strconv.AppendInt(append(b, `,"token_id":`...), int64(n.TokenID), 10)
	return append(b, '}')
}

// singleNote is the params of a rkllm.result notification of a run with one input.
type singleNote struct {
	RequestID string `json:"request_id"`
	State     string `json:"state"`
	tokenNote
}

// batchNote is the params of a rkllm.result notification of a batch run.
type batchNote struct {
	RequestID string      `json:"request_id"`
	State     string      `json:"state"`
	Results   []tokenNote `json:"results,omitempty"`
}

// entryResult is one batch entry of a final result.
type entryResult struct {
	Text            string        `json:"text"`
	TokenIDs        []int32       `json:"token_ids"`
	TokenCount      int           `json:"token_count"`
	LastHiddenLayer *hiddenLayerJ `json:"last_hidden_layer,omitempty"`
	Logits          *logitsJ      `json:"logits,omitempty"`
}

// runResult is the final response of rkllm.run (and the params of rkllm.done).
type runResult struct {
	RequestID    string `json:"request_id"`
	*entryResult        // one input: its result inline
	FinishReason string `json:"finish_reason"`
	Perf         *perfJ `json:"perf"`
	// Results holds one result per input when the input was an array (n_batch > 1).
	Results []entryResult `json:"results,omitempty"`
}

type perfJ struct {
	PrefillTimeMs  float32 `json:"prefill_time_ms"`
	PrefillTokens  int32   `json:"prefill_tokens"`
	GenerateTimeMs float32 `json:"generate_time_ms"`
	GenerateTokens int32   `json:"generate_tokens"`
	MemoryUsageMB  float32 `json:"memory_usage_mb"`
}

func (a *runAcc) entry(i int) entryResult {
	e := &a.entries[i]
	// Bytes still pending belong to a character the run did not finish (it stopped at
	// max_new_tokens inside it): they are left out, as the stream left them out, so the
	// text stays valid UTF-8; token_ids still count their tokens.
	r := entryResult{Text: string(e.text), TokenIDs: e.tokenIDs, TokenCount: len(e.tokenIDs)}
	if r.TokenIDs == nil {
		r.TokenIDs = []int32{}
	}
	if len(e.hidden) > 0 {
		r.LastHiddenLayer = &hiddenLayerJ{EmbdSize: e.embd, NumTokens: e.hiddenN, HiddenStates: floatOut{e.hidden, a.base64}}
	}
	if len(e.logits) > 0 {
		r.Logits = &logitsJ{VocabSize: e.vocab, NumTokens: e.logitsN, Logits: floatOut{e.logits, a.base64}}
	}
	return r
}

// result builds the final response. maxNew is the effective max_new_tokens (<= 0: no
// limit), to tell "length" from "stop".
func (a *runAcc) result(out supervisor.Outcome, maxNew int32) *runResult {
	res := &runResult{RequestID: a.id, FinishReason: FinishStop}
	if a.perf != nil {
		p := a.perf
		res.Perf = &perfJ{PrefillTimeMs: p.PrefillTimeMs, PrefillTokens: p.PrefillTokens, GenerateTimeMs: p.GenerateTimeMs, GenerateTokens: p.GenerateTokens, MemoryUsageMB: p.MemoryUsageMB}
	}
	longest := 0
	if a.batch {
		res.Results = make([]entryResult, len(a.entries))
		for i := range a.entries {
			res.Results[i] = a.entry(i)
			longest = max(longest, res.Results[i].TokenCount)
		}
	} else {
		e := a.entry(0)
		res.entryResult = &e
		longest = e.TokenCount
	}
	switch {
	case out.Aborted:
		res.FinishReason = FinishAbort
	case maxNew > 0 && longest >= int(maxNew):
		res.FinishReason = FinishLength
	}
	return res
}

// partial is what a run produced before it failed with err, for the error's data.
func (a *runAcc) partial(err error) map[string]any {
	m := map[string]any{"request_id": a.id}
	var callErr *runtime.CallError
	if errors.As(err, &callErr) || errors.Is(err, runtime.ErrRunFailed) {
		m["finish_reason"] = FinishError
	}
	if !a.batch && len(a.entries) == 1 {
		e := a.entry(0)
		m["text"] = e.Text
		m["token_count"] = e.TokenCount
	}
	return m
}

// direct is the client a run's tokens may be written to by the worker itself: that of a
// streamed rkllm.run with one input, on a transport that can lend its socket; nil
// otherwise. An asynchronous run's tokens wait for its handle, and a batch's carry
// several results: both go through the supervisor.
func direct(c *jsonrpc.Call, plan *runPlan, async bool, acc *runAcc) supervisor.DirectClient {
	if !plan.stream || async || plan.batch || c.Peer == nil || c.Peer.Lend == nil {
		return nil
	}
	return &directRun{acc: acc, lend: c.Peer.Lend}
}

// directRun is a streamed run whose tokens the worker may write to the client itself
// (supervisor.DirectClient): each as the notification record would make of it, which
// the worker is given the beginning and end of.
type directRun struct {
	acc   *runAcc
	lend  func(reclaim func()) (jsonrpc.Lease, bool)
	lease jsonrpc.Lease
}

// Lend implements supervisor.DirectClient.
func (d *directRun) Lend(reclaim func()) (int, *workerproto.Direct, bool) {
	lease, ok := d.lend(reclaim)
	if !ok {
		return -1, nil, false
	}
	fd, err := lease.FD()
	if err != nil {
		lease.Return(nil, 0)
		return -1, nil, false
	}
	d.lease = lease
	open, end, chunked := lease.Framing()
	// As (*jsonrpc.Notification).AppendJSON and textNote.AppendJSON write it, up to the
	// state and from after the token id.
	head := append([]byte(open), `{"jsonrpc":"2.0","method":`...)
	head = jsonrpc.AppendString(head, NotifyResult)
	head = jsonrpc.AppendString(append(head, `,"params":{"request_id":`...), d.acc.id)
	head = append(head, `,"state":`...)
	return fd, &workerproto.Direct{Head: string(head), Tail: "}}" + end, Chunked: chunked}, true
}

// Delivered implements supervisor.DirectClient: the token is kept for the result as
// any other, and its notification, written by the worker, is counted.
func (d *directRun) Delivered(dl runtime.Delivery, written int, whole bool) {
	note := d.acc.record(&dl)
	if whole {
		d.lease.Wrote(written)
		return
	}
	var part *jsonrpc.Notification
	if note != nil {
		part = &jsonrpc.Notification{Method: NotifyResult, Params: note}
	}
	d.lease.Return(part, written)
}

// Return implements supervisor.DirectClient.
func (d *directRun) Return() { d.lease.Return(nil, 0) }
