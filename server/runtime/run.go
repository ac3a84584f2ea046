//go:build cgo

package runtime

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// maxResultFloats bounds what one result may claim to hold (1 GiB of floats), so that a
// corrupt size from a runtime of the wrong ABI cannot make the copy read wild memory.
const maxResultFloats = 1 << 28

// runState is what the result callback reaches through the run's cgo.Handle.
type runState struct {
	h        *Handle
	nBatch   int
	ctx      context.Context
	onResult ResultFunc

	// mu orders every delivery before Run's return for Go's memory model (and the
	// race detector), which cannot see the runtime's own thread synchronisation.
	mu       sync.Mutex
	sawError bool
	panicVal any
	panicked bool

	stopAsked atomic.Bool // an abort was sent because ctx ended or onResult panicked
	resent    atomic.Bool // ... and sent again from a delivery
	// abortMu orders a late abort against the end of the run, so that an abort meant
	// for this run never reaches the next one. Run takes it only after rkllm_run returned.
	abortMu sync.Mutex
	ended   bool
}

// Run runs one inference (rkllm_run) and blocks until it ends. inputs holds one input
// per batch entry (NBatch). onResult receives every delivery, on a thread the runtime
// chooses, with all data copied into Go memory (hidden states and logits as float32
// slices of NumTokens x width); everything onResult does happens before Run returns.
// Its return value continues (Continue), pauses (Pause: generation stops, the KV cache is
// kept, a later run resumes) or, with ABI 1.3, releases the output buffer
// (ReleaseOutput; on ABI 1.2 it means Continue).
//
// When ctx ends, Run aborts the run and returns ctx.Err() once the runtime has stopped,
// whenever it ends: before rkllm_run (the run never starts), while the runtime starts
// the run, or while it runs. Ending ctx is the only abort that never misses its run or
// reaches the next one (Abort is the bare rkllm_abort).
// A non-zero return of rkllm_run is a *CallError; an RKLLM_RUN_ERROR delivery with a zero
// return wraps ErrRunFailed. ABI 1.2 lacks per-run sampling and max_new_tokens: asking
// for them is an *UnsupportedError. A panic in onResult aborts the run and is re-raised
// by Run. Run returns ErrBusy while another run is in progress on the handle.
func (h *Handle) Run(ctx context.Context, inputs []Input, params InferParams, onResult ResultFunc) error {
	return h.run(ctx, inputs, params, Sink{}, onResult, h.limitsLocked)
}

// RunWithSink is Run with sink offered every delivery first. Once ctx ends, every
// delivery goes to onResult, as Run's abort needs.
func (h *Handle) RunWithSink(ctx context.Context, inputs []Input, params InferParams, sink Sink, onResult ResultFunc) error {
	return h.run(ctx, inputs, params, sink, onResult, h.limitsLocked)
}

// run is RunWithSink with the limits the inputs are checked against (what limits
// returns, called with mu held).
func (h *Handle) run(ctx context.Context, inputs []Input, params InferParams, sink Sink, onResult ResultFunc, limits func() Limits) error {
	if onResult == nil {
		return errors.New("run: onResult is nil")
	}
	if err := h.idle("run"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	lim := limits()
	if err := CheckInputs(inputs, lim); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if err := CheckInferParams(&params, lim); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if pc := params.PromptCache; pc != nil && pc.Path != "" {
		if err := CheckFile(pc.Path); err != nil { // one to save must not be a FIFO either
			return fmt.Errorf("run: %w", inputErr("infer_params.prompt_cache_params.prompt_cache_path", "%v", err))
		}
	}

	a := newArena(&h.lib.live)
	defer a.free() // after rkllm_run returned: the runtime no longer reads the inputs
	cin := h.cInputs(a, inputs)
	cparams := h.cInferParams(a, &params)

	rs := &runState{h: h, nBatch: h.nBatch, ctx: ctx, onResult: onResult}
	handle := cgo.NewHandle(rs)
	defer handle.Delete()
	rc := h.runCtx // the runtime thread sees these stores: rkllm_run starts its work after them
	*rc = C.rk_run_ctx{go_run: C.uintptr_t(handle), n_batch: C.int(h.nBatch), sink: C.rk_sink_fn(sink.Fn), sink_arg: sink.Arg}
	stop := context.AfterFunc(ctx, func() {
		rs.abortMu.Lock()
		if !rs.ended { // rc may be the next run's by now
			C.rk_run_go_only(rc)
		}
		rs.abortMu.Unlock()
		rs.stop()
	})
	ret := C.rk_run(h.lib.c, h.c, cin, cparams, rc)
	stop()
	rs.abortMu.Lock()
	rs.ended = true
	rs.abortMu.Unlock()
	rc.sink = nil // a runtime calling back late reaches Go, which ignores it

	rs.mu.Lock() // every delivery happened before this point
	defer rs.mu.Unlock()
	if rs.panicked {
		panic(rs.panicVal)
	}
	if err := ctx.Err(); err != nil && rs.stopAsked.Load() {
		return fmt.Errorf("run aborted: %w", err)
	}
	if ret != 0 {
		return &CallError{Func: "rkllm_run", Code: int(ret)}
	}
	if rs.sawError {
		return fmt.Errorf("rkllm_run: %w", ErrRunFailed)
	}
	return nil
}

// stop aborts the run from a goroutine of its own: rkllm_abort must not be called from
// the callback, which the runtime may be waiting on.
//
// An rkllm_abort that comes before the runtime has started the run is lost: the
// runtime flags a run in progress, and a run that starts clears the flag (the simulator
// does; the vendor's documents nothing else). rkllm_run has been called when stop runs,
// but the runtime may not have got that far, so stop aborts again, at growing
// intervals, until rkllm_is_running said the run was in progress just before an abort
// (that abort reached it) or rkllm_run has returned. The handle outlives the run:
// Destroy waits for Run.
func (rs *runState) stop() {
	rs.stopAsked.Store(true)
	for wait := time.Millisecond; ; wait = min(2*wait, maxAbortRetry) {
		rs.abortMu.Lock()
		if rs.ended {
			rs.abortMu.Unlock()
			return
		}
		running := C.rk_is_running(rs.h.lib.c, rs.h.c) != 0
		C.rk_abort(rs.h.lib.c, rs.h.c)
		rs.abortMu.Unlock()
		if running {
			return
		}
		t := time.NewTimer(wait)
		<-t.C
	}
}

// maxAbortRetry is the longest stop waits before aborting a run again that the
// runtime had not started yet.
const maxAbortRetry = 50 * time.Millisecond

//export goResultCallback
func goResultCallback(run C.uintptr_t, results *C.RKLLMResult, state C.int) (action C.int) {
	defer func() {
		// A handle the binding no longer knows (a runtime calling back after the run
		// ended) is ignored rather than crashing the process.
		if recover() != nil {
			action = C.int(Continue)
		}
	}()
	rs := cgo.Handle(run).Value().(*runState)
	return C.int(rs.deliver(results, CallState(state)))
}

func (rs *runState) deliver(results *C.RKLLMResult, state CallState) CallbackAction {
	d := Delivery{State: state}
	if results != nil {
		d.Results = make([]Result, rs.nBatch)
		for i, r := range unsafe.Slice(results, rs.nBatch) {
			d.Results[i] = copyResult(&r)
		}
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if state == StateError {
		rs.sawError = true
	}
	if rs.panicked {
		return Continue // the abort is on its way
	}
	act := rs.call(d)
	if (state == StateNormal || state == StateWaiting) && rs.ctx.Err() != nil && !rs.resent.Swap(true) {
		// Tokens after the context ended: an abort sent just before the runtime
		// started the run may have been lost, so send it once more.
		go rs.stop()
	}
	switch {
	case act == ReleaseOutput && rs.h.lib.abi == ABI12:
		return Continue
	case act < Continue || act > ReleaseOutput:
		return Continue
	}
	return act
}

// call runs onResult, turning a panic into an abort that Run re-raises.
func (rs *runState) call(d Delivery) (act CallbackAction) {
	defer func() {
		if p := recover(); p != nil {
			rs.panicked, rs.panicVal = true, p
			go rs.stop()
			act = Continue
		}
	}()
	return rs.onResult(d)
}

// copyResult copies one RKLLMResult out of runtime memory, which is valid only during
// the callback.
func copyResult(r *C.RKLLMResult) Result {
	out := Result{TokenID: int32(r.token_id)}
	if r.text != nil {
		out.Text = C.GoString(r.text)
	}
	hl := &r.last_hidden_layer
	if n := int(hl.embd_size) * int(hl.num_tokens); hl.hidden_states != nil && hl.embd_size > 0 && hl.num_tokens > 0 && n <= maxResultFloats {
		out.HiddenStates = append([]float32(nil), unsafe.Slice((*float32)(unsafe.Pointer(hl.hidden_states)), n)...)
		out.EmbdSize, out.NumTokens = int(hl.embd_size), int(hl.num_tokens)
	}
	lg := &r.logits
	if n := int(lg.vocab_size) * int(lg.num_tokens); lg.logits != nil && lg.vocab_size > 0 && lg.num_tokens > 0 && n <= maxResultFloats {
		out.Logits = append([]float32(nil), unsafe.Slice((*float32)(unsafe.Pointer(lg.logits)), n)...)
		out.VocabSize, out.NumTokens = int(lg.vocab_size), int(lg.num_tokens)
	}
	out.Perf = PerfStat{
		PrefillTimeMs:  float32(r.perf.prefill_time_ms),
		PrefillTokens:  int32(r.perf.prefill_tokens),
		GenerateTimeMs: float32(r.perf.generate_time_ms),
		GenerateTokens: int32(r.perf.generate_tokens),
		MemoryUsageMB:  float32(r.perf.memory_usage_mb),
	}
	return out
}

// cInputs writes the inputs into per-run C memory and returns the array.
func (h *Handle) cInputs(a *arena, inputs []Input) unsafe.Pointer {
	if h.lib.abi == ABI12 {
		arr := a.alloc(uintptr(len(inputs)) * C.sizeof_RKLLM12Input)
		cin := unsafe.Slice((*C.RKLLM12Input)(arr), len(inputs))
		for i := range inputs {
			fillInput12(a, &cin[i], &inputs[i])
		}
		return arr
	}
	arr := a.alloc(uintptr(len(inputs)) * C.sizeof_RKLLM13Input)
	cin := unsafe.Slice((*C.RKLLM13Input)(arr), len(inputs))
	for i := range inputs {
		fillInput13(a, &cin[i], &inputs[i])
	}
	return arr
}

// role returns the input's role as a C string; the runtime's own default is "user".
func role(a *arena, in *Input) *C.char {
	if in.Role == "" {
		return a.str("user")
	}
	return a.str(in.Role)
}

func optStr(a *arena, s string) *C.char {
	if s == "" {
		return nil
	}
	return a.str(s)
}

func fillInput12(a *arena, c *C.RKLLM12Input, in *Input) {
	r, think := role(a, in), C.bool(in.EnableThinking)
	switch in.Type {
	case InputPrompt:
		C.rk12_input_prompt(c, r, think, a.str(in.Prompt))
	case InputToken:
		C.rk12_input_tokens(c, r, think, a.int32s(in.TokenIDs), C.size_t(len(in.TokenIDs)))
	case InputEmbed:
		C.rk12_input_embed(c, r, think, a.floats(in.Embed), C.size_t(in.NTokens))
	case InputMultimodal:
		m := &in.Multimodal
		mm := (*C.RKLLM12MultiModalInput)(a.alloc(C.sizeof_RKLLM12MultiModalInput))
		mm.prompt = a.str(m.Prompt)
		mm.image_embed = a.floats(m.ImageEmbed)
		mm.n_image_tokens = C.size_t(m.NImageTokens)
		mm.n_image = C.size_t(m.NImage)
		mm.image_width = C.size_t(m.ImageWidth)
		mm.image_height = C.size_t(m.ImageHeight)
		C.rk12_input_multimodal(c, r, think, mm)
	}
}

func fillInput13(a *arena, c *C.RKLLM13Input, in *Input) {
	r, think := role(a, in), C.bool(in.EnableThinking)
	switch in.Type {
	case InputPrompt:
		C.rk13_input_prompt(c, r, think, a.str(in.Prompt))
	case InputToken:
		C.rk13_input_tokens(c, r, think, a.int32s(in.TokenIDs), C.size_t(len(in.TokenIDs)))
	case InputEmbed:
		C.rk13_input_embed(c, r, think, a.floats(in.Embed), C.size_t(in.NTokens))
	case InputMultimodal:
		m := &in.Multimodal
		mm := (*C.RKLLM13MultiModalInput)(a.alloc(C.sizeof_RKLLM13MultiModalInput))
		mm.prompt = a.str(m.Prompt)
		mm.image.image_embed = a.floats(m.ImageEmbed)
		mm.image.n_image_tokens = C.size_t(m.NImageTokens)
		mm.image.n_image = C.size_t(m.NImage)
		mm.image.image_start = optStr(a, m.ImageStart)
		mm.image.image_end = optStr(a, m.ImageEnd)
		mm.image.image_content = optStr(a, m.ImageContent)
		mm.image.image_width = C.size_t(m.ImageWidth)
		mm.image.image_height = C.size_t(m.ImageHeight)
		mm.video.video_embed = a.floats(m.VideoEmbed)
		mm.video.n_frame_tokens = C.size_t(m.NFrameTokens)
		mm.video.n_frame_per_video = C.size_t(m.NFramePerVideo)
		mm.video.n_video = C.size_t(m.NVideo)
		mm.video.video_start = optStr(a, m.VideoStart)
		mm.video.video_end = optStr(a, m.VideoEnd)
		mm.video.video_content = optStr(a, m.VideoContent)
		mm.video.frame_width = C.size_t(m.FrameWidth)
		mm.video.frame_height = C.size_t(m.FrameHeight)
		C.rk13_input_multimodal(c, r, think, mm)
	}
}

// cInferParams writes the run's parameters into per-run C memory.
func (h *Handle) cInferParams(a *arena, p *InferParams) unsafe.Pointer {
	var lora *C.RKLLMLoraParam
	if p.LoraAdapterName != "" {
		lora = (*C.RKLLMLoraParam)(a.alloc(C.sizeof_RKLLMLoraParam))
		lora.lora_adapter_name = a.str(p.LoraAdapterName)
	}
	var pc *C.RKLLMPromptCacheParam
	if p.PromptCache != nil {
		pc = (*C.RKLLMPromptCacheParam)(a.alloc(C.sizeof_RKLLMPromptCacheParam))
		if p.PromptCache.Save {
			pc.save_prompt_cache = 1
		}
		pc.prompt_cache_path = optStr(a, p.PromptCache.Path)
	}
	keep := C.int(0)
	if p.KeepHistory {
		keep = 1
	}
	if h.lib.abi == ABI12 {
		c := (*C.RKLLM12InferParam)(a.alloc(C.sizeof_RKLLM12InferParam))
		c.mode = C.RKLLMInferMode(p.Mode)
		c.lora_params = lora
		c.prompt_cache_params = pc
		c.keep_history = keep
		return unsafe.Pointer(c)
	}
	c := (*C.RKLLM13InferParam)(a.alloc(C.sizeof_RKLLM13InferParam))
	c.mode = C.RKLLMInferMode(p.Mode)
	c.lora_params = lora
	c.prompt_cache_params = pc
	c.keep_history = keep
	c.max_new_tokens = C.int32_t(p.MaxNewTokens)
	if s := p.Sampling; s != nil {
		cs := (*C.RKLLMSamplingParam)(a.alloc(C.sizeof_RKLLMSamplingParam))
		cs.top_k = C.int32_t(s.TopK)
		cs.top_p = C.float(s.TopP)
		cs.temperature = C.float(s.Temperature)
		cs.repeat_penalty = C.float(s.RepeatPenalty)
		cs.frequency_penalty = C.float(s.FrequencyPenalty)
		cs.presence_penalty = C.float(s.PresencePenalty)
		cs.mirostat = C.int32_t(s.Mirostat)
		cs.mirostat_tau = C.float(s.MirostatTau)
		cs.mirostat_eta = C.float(s.MirostatEta)
		c.sampling_params = cs
	}
	return unsafe.Pointer(c)
}
