//go:build cgo

package runtime

/*
#include "shim.h"
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Handle is one initialised model (LLMHandle).
//
// Concurrency: Run holds the handle for the whole run; the other methods need the
// handle idle and return ErrBusy while a run is in progress, except Abort and IsRunning,
// which take no lock shared with Run and work from any goroutine while Run blocks.
// Destroy aborts a run in progress and waits for it.
//
// C memory: strings and structs handed to the runtime stay alive as long as the runtime
// may use them, then are freed exactly once: per-run memory when Run returns; the
// chat template, function tools, cross-attention buffers and prompt-cache path when they
// are replaced (after the runtime accepted the new ones) or at Destroy; init-time memory
// and LoRA adapters at Destroy.
type Handle struct {
	lib    *Library
	c      C.LLMHandle
	nBatch int

	// mu is held by Run for the run and by calls that need the handle idle.
	mu sync.Mutex
	// life guards the C handle against Destroy: Abort and IsRunning share it, Destroy
	// holds it alone while the runtime frees the handle.
	life      sync.RWMutex
	destroyed bool        // under life (write also under mu)
	closing   atomic.Bool // set by Destroy first, so no new run starts

	// maxCtx is max_context_len at init; embedWidth the model's embedding width once
	// known (0 before); loras the names of the adapters loaded (under mu). Run and
	// SetCrossAttnParams check what they are given against them.
	maxCtx     int
	embedWidth atomic.Int64
	vocabSize  atomic.Int64
	loras      []string

	runCtx    *C.rk_run_ctx // the result callback's userdata, in keep
	keep      *arena        // init-time memory and LoRA adapters
	template  *arena
	tools     *arena
	cross     *arena
	promptBuf *arena
}

// NBatch is the number of inputs every Run takes (n_batch at init).
func (h *Handle) NBatch() int { return h.nBatch }

// limitsLocked are what the handle's model takes; the caller holds mu.
func (h *Handle) limitsLocked() Limits {
	return Limits{Known: true, ABI: h.lib.abi, NBatch: h.nBatch, MaxContextLen: h.maxCtx,
		EmbedWidth: int(h.embedWidth.Load()), VocabSize: int(h.vocabSize.Load()), Loras: append([]string{}, h.loras...)}
}

// EmbedWidth is the model's embedding width (its hidden size: the floats in one row
// of an embedding input), or 0 while it is not known: see LearnEmbedWidth and
// SetEmbedWidth. Until it is known, Run refuses inputs that carry embeddings.
func (h *Handle) EmbedWidth() int { return int(h.embedWidth.Load()) }

// maxEmbedWidth bounds a configured width: far above any model's hidden size, and
// small enough that rows x width never overflows.
const maxEmbedWidth = 1 << 20

// SetEmbedWidth records the model's embedding width when it is known from
// configuration, instead of learning it with LearnEmbedWidth.
func (h *Handle) SetEmbedWidth(width int) error {
	if width < 1 || width > maxEmbedWidth {
		return fmt.Errorf("embedding width %d: it must be between 1 and %d", width, maxEmbedWidth)
	}
	h.embedWidth.Store(int64(width))
	return nil
}

// LearnEmbedWidth learns the model's embedding width, which the runtime reports
// nowhere else, from the embd_size of a one-token run (learnShape) in
// RKLLM_INFER_GET_LAST_HIDDEN_LAYER mode, and records it. Call it right after Init,
// before the handle holds anything a client set.
func (h *Handle) LearnEmbedWidth(ctx context.Context) (int, error) {
	width, err := h.learnShape(ctx, InferGetLastHiddenLayer, "embedding width", func(r *Result) int { return r.EmbdSize })
	if err != nil {
		return 0, err
	}
	if width > maxEmbedWidth {
		return 0, fmt.Errorf("learn the embedding width: the hidden-layer run reported embd_size %d", width)
	}
	h.embedWidth.Store(int64(width))
	return width, nil
}

// VocabSize is the model's vocabulary size (token ids are 0 to VocabSize-1), or 0
// while it is not known: see LearnVocabSize and SetVocabSize. Until it is known, Run
// refuses token inputs, whose ids the runtime looks up in a table that long.
func (h *Handle) VocabSize() int { return int(h.vocabSize.Load()) }

// maxVocabSize bounds a vocabulary size: far above any model's (about 250,000 at most
// today), small enough for every id to be an int32.
const maxVocabSize = 1 << 24

// SetVocabSize records the model's vocabulary size when it is known from
// configuration, instead of learning it with LearnVocabSize.
func (h *Handle) SetVocabSize(size int) error {
	if size < 1 || size > maxVocabSize {
		return fmt.Errorf("vocabulary size %d: it must be between 1 and %d", size, maxVocabSize)
	}
	h.vocabSize.Store(int64(size))
	return nil
}

// LearnVocabSize learns the model's vocabulary size, which the runtime reports only
// with logits, from the vocab_size of a one-token run (learnShape) in
// RKLLM_INFER_GET_LOGITS mode, and records it. Call it right after Init, before the
// handle holds anything a client set.
func (h *Handle) LearnVocabSize(ctx context.Context) (int, error) {
	size, err := h.learnShape(ctx, InferGetLogits, "vocabulary size", func(r *Result) int { return r.VocabSize })
	if err != nil {
		return 0, err
	}
	if size > maxVocabSize {
		return 0, fmt.Errorf("learn the vocabulary size: the logits run reported vocab_size %d", size)
	}
	h.vocabSize.Store(int64(size))
	return size, nil
}

// learnShape runs one token (id 0, in every vocabulary) per batch entry in mode and
// returns the first positive size of reported. The run uses only what both ABIs share
// (the callback returns 0; no sampling or max_new_tokens of 1.3), is an independent
// turn (keep_history 0), and the KV cache is cleared after it when the library has
// rkllm_clear_kv_cache, so the handle is left as Init left it.
func (h *Handle) learnShape(ctx context.Context, mode InferMode, what string, reported func(*Result) int) (int, error) {
	inputs := make([]Input, h.nBatch)
	for i := range inputs {
		inputs[i] = Input{Type: InputToken, TokenIDs: []int32{0}}
	}
	size := 0 // written by deliveries, which happen before Run returns
	lim := h.limitsLocked
	err := h.run(ctx, inputs, InferParams{Mode: mode}, Sink{}, func(d Delivery) CallbackAction {
		for i := range d.Results {
			if n := reported(&d.Results[i]); size == 0 && n > 0 {
				size = n
			}
		}
		return Continue
	}, func() Limits {
		l := lim()
		l.VocabSize = max(l.VocabSize, 1) // id 0 is a token of every model
		return l
	})
	if err != nil {
		return 0, fmt.Errorf("learn the %s from a one-token run: %w", what, err)
	}
	if size < 1 {
		return 0, fmt.Errorf("learn the %s: the one-token run reported %d", what, size)
	}
	if h.lib.need(C.RK_CLEAR_KV_CACHE) == nil {
		if err := h.ClearKVCache(false, nil); err != nil {
			return 0, fmt.Errorf("learn the %s: clear the KV cache after the run: %w", what, err)
		}
	}
	return size, nil
}

// Library is the library the handle was initialised from.
func (h *Handle) Library() *Library { return h.lib }

// idle takes the handle for a call that needs it idle; the caller must call h.mu.Unlock.
func (h *Handle) idle(op string) error {
	if !h.mu.TryLock() {
		return fmt.Errorf("%s: %w", op, ErrBusy)
	}
	if h.destroyed || h.closing.Load() {
		h.mu.Unlock()
		return fmt.Errorf("%s: %w", op, ErrDestroyed)
	}
	return nil
}

func callErr(fn string, ret C.int) error {
	if ret != 0 {
		return &CallError{Func: fn, Code: int(ret)}
	}
	return nil
}

// Abort stops the run in progress (rkllm_abort). It is safe from any goroutine while
// Run blocks in another (it shares no lock with Run). With no run in progress it is
// still passed to the runtime, which the simulator ignores; prefer cancelling Run's
// context, whose abort never reaches a later run. The vendor runtime may take about a
// second to stop; Run returns then.
func (h *Handle) Abort() error {
	h.life.RLock()
	defer h.life.RUnlock()
	if h.destroyed {
		return fmt.Errorf("abort: %w", ErrDestroyed)
	}
	return callErr("rkllm_abort", C.rk_abort(h.lib.c, h.c))
}

// IsRunning reports whether a run is in progress (rkllm_is_running: 1 while running,
// whatever the 1.2 header comment says). It is false after Destroy.
func (h *Handle) IsRunning() bool {
	h.life.RLock()
	defer h.life.RUnlock()
	return !h.destroyed && C.rk_is_running(h.lib.c, h.c) != 0
}

// Destroy aborts a run in progress, waits for Run to return, frees the model
// (rkllm_destroy) and then every C allocation the handle holds. Do not call it from
// onResult. A second call returns ErrDestroyed.
func (h *Handle) Destroy() error {
	if h.closing.Swap(true) {
		return fmt.Errorf("destroy: %w", ErrDestroyed)
	}
	_ = h.Abort() // stops a run in progress; an error here means there is none to stop
	h.mu.Lock()
	defer h.mu.Unlock()
	h.life.Lock()
	defer h.life.Unlock()
	ret := C.rk_destroy(h.lib.c, h.c)
	h.destroyed = true
	// Freed even when rkllm_destroy fails: the handle is unusable either way.
	for _, a := range []*arena{h.keep, h.template, h.tools, h.cross, h.promptBuf} {
		a.free()
	}
	return callErr("rkllm_destroy", ret)
}

// LoadLora loads a LoRA adapter (rkllm_load_lora) that runs pick by name with
// InferParams.LoraAdapterName. Its strings live until Destroy.
func (h *Handle) LoadLora(a LoraAdapter) error {
	if err := h.idle("load lora"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_LOAD_LORA); err != nil {
		return err
	}
	if a.Path == "" || a.Name == "" {
		return fmt.Errorf("load lora: the adapter needs a Path and a Name")
	}
	if err := firstErr(CheckCString("lora_adapter.lora_adapter_path", a.Path), CheckCString("lora_adapter.lora_adapter_name", a.Name)); err != nil {
		return err
	}
	if err := CheckFile(a.Path); err != nil {
		return inputErr("lora_adapter.lora_adapter_path", "%v", err)
	}
	m := newArena(&h.lib.live)
	c := (*C.RKLLMLoraAdapter)(m.alloc(C.sizeof_RKLLMLoraAdapter))
	c.lora_adapter_path = m.str(a.Path)
	c.lora_adapter_name = m.str(a.Name)
	c.scale = C.float(a.Scale)
	if err := callErr("rkllm_load_lora", C.rk_load_lora(h.lib.c, h.c, c)); err != nil {
		m.free()
		return fmt.Errorf("load lora %s from %s: %w", a.Name, a.Path, err)
	}
	h.keep.adopt(m) // the runtime may keep the adapter's pointers until the handle ends
	h.loras = append(h.loras, a.Name)
	return nil
}

// LoadPromptCache loads a prompt cache file written by an earlier run with
// PromptCacheParams.Save (rkllm_load_prompt_cache).
func (h *Handle) LoadPromptCache(path string) error {
	if err := h.idle("load prompt cache"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_LOAD_PROMPT_CACHE); err != nil {
		return err
	}
	if path == "" {
		return fmt.Errorf("load prompt cache: the path is empty")
	}
	if err := CheckCString("prompt_cache_path", path); err != nil {
		return err
	}
	if err := CheckFile(path); err != nil {
		return inputErr("prompt_cache_path", "%v", err)
	}
	a := newArena(&h.lib.live)
	if err := callErr("rkllm_load_prompt_cache", C.rk_load_prompt_cache(h.lib.c, h.c, a.str(path))); err != nil {
		a.free()
		return fmt.Errorf("load prompt cache %s: %w", path, err)
	}
	h.promptBuf.free()
	h.promptBuf = a
	return nil
}

// ReleasePromptCache drops the loaded prompt cache (rkllm_release_prompt_cache).
func (h *Handle) ReleasePromptCache() error {
	if err := h.idle("release prompt cache"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_RELEASE_PROMPT_CACHE); err != nil {
		return err
	}
	if err := callErr("rkllm_release_prompt_cache", C.rk_release_prompt_cache(h.lib.c, h.c)); err != nil {
		return err
	}
	h.promptBuf.free()
	h.promptBuf = nil
	return nil
}

// ClearKVCache clears the KV cache (rkllm_clear_kv_cache). With no ranges it clears
// everything, keeping the system prompt when keepSystemPrompt is set. With ranges (one
// per batch entry) it clears [Start, End) of each entry; the runtime allows that only
// while a run is paused with keep_history 0.
func (h *Handle) ClearKVCache(keepSystemPrompt bool, ranges []KVRange) error {
	if err := h.idle("clear kv cache"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_CLEAR_KV_CACHE); err != nil {
		return err
	}
	keep := C.int(0)
	if keepSystemPrompt {
		keep = 1
	}
	if ranges == nil {
		return callErr("rkllm_clear_kv_cache", C.rk_clear_kv_cache(h.lib.c, h.c, keep, nil, nil))
	}
	if len(ranges) != h.nBatch {
		return fmt.Errorf("clear kv cache: %w", inputErr("start_pos", "holds %d positions, but the model was loaded with n_batch %d: the runtime reads one per batch entry", len(ranges), h.nBatch))
	}
	starts, ends := make([]int, len(ranges)), make([]int, len(ranges))
	for i, r := range ranges {
		if r.Start < 0 || r.End < r.Start || r.End > math.MaxInt32 {
			return fmt.Errorf("clear kv cache: %w", inputErr(fmt.Sprintf("start_pos[%d]", i), "the range [%d, %d) is not valid: 0 <= start <= end", r.Start, r.End))
		}
		starts[i], ends[i] = r.Start, r.End
	}
	a := newArena(&h.lib.live)
	defer a.free()
	return callErr("rkllm_clear_kv_cache", C.rk_clear_kv_cache(h.lib.c, h.c, keep, a.ints(starts), a.ints(ends)))
}

// KVCacheSize returns the positions in the KV cache, one per batch entry
// (rkllm_get_kv_cache_size).
func (h *Handle) KVCacheSize() ([]int, error) {
	if err := h.idle("kv cache size"); err != nil {
		return nil, err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_GET_KV_CACHE_SIZE); err != nil {
		return nil, err
	}
	a := newArena(&h.lib.live)
	defer a.free()
	sizes := a.ints(make([]int, h.nBatch))
	if err := callErr("rkllm_get_kv_cache_size", C.rk_get_kv_cache_size(h.lib.c, h.c, sizes)); err != nil {
		return nil, err
	}
	out := make([]int, h.nBatch)
	for i, v := range unsafe.Slice(sizes, h.nBatch) {
		out[i] = int(v)
	}
	return out, nil
}

// SetChatTemplate overrides the chat template baked into the model
// (rkllm_set_chat_template). Afterwards Input.EnableThinking no longer applies.
func (h *Handle) SetChatTemplate(systemPrompt, promptPrefix, promptPostfix string) error {
	if err := h.idle("set chat template"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_SET_CHAT_TEMPLATE); err != nil {
		return err
	}
	if err := firstErr(CheckCString("system_prompt", systemPrompt), CheckCString("prompt_prefix", promptPrefix),
		CheckCString("prompt_postfix", promptPostfix)); err != nil {
		return err
	}
	a := newArena(&h.lib.live)
	ret := C.rk_set_chat_template(h.lib.c, h.c, a.str(systemPrompt), a.str(promptPrefix), a.str(promptPostfix))
	return h.replace(&h.template, a, callErr("rkllm_set_chat_template", ret))
}

// SetFunctionTools sets the tools the model may call (rkllm_set_function_tools):
// toolsJSON is an OpenAI-style array of function specs, toolResponse the tag that
// wraps tool results (inputs with Role "tool"). The model then answers a request for a
// tool with "<tool_call>{...}</tool_call>" text.
func (h *Handle) SetFunctionTools(systemPrompt, toolsJSON, toolResponse string) error {
	if err := h.idle("set function tools"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_SET_FUNCTION_TOOLS); err != nil {
		return err
	}
	if err := firstErr(CheckCString("system_prompt", systemPrompt), CheckCString("tools", toolsJSON),
		CheckJSONStrings("tools", toolsJSON), CheckCString("tool_response_str", toolResponse)); err != nil {
		return err
	}
	a := newArena(&h.lib.live)
	ret := C.rk_set_function_tools(h.lib.c, h.c, a.str(systemPrompt), a.str(toolsJSON), a.str(toolResponse))
	return h.replace(&h.tools, a, callErr("rkllm_set_function_tools", ret))
}

// SetCrossAttnParams hands the encoder's caches to a cross-attention model
// (rkllm_set_cross_attn_params; needs Extend.UseCrossAttn at init). The buffers are
// copied into C memory that lives until they are replaced or the handle is destroyed.
func (h *Handle) SetCrossAttnParams(p CrossAttnParams) error {
	if err := h.idle("set cross-attention params"); err != nil {
		return err
	}
	defer h.mu.Unlock()
	if err := h.lib.need(C.RK_SET_CROSS_ATTN_PARAMS); err != nil {
		return err
	}
	if err := CheckCrossAttn(&p, h.limitsLocked()); err != nil {
		return fmt.Errorf("set cross-attention params: %w", err)
	}
	n := p.NumTokens
	a := newArena(&h.lib.live)
	c := (*C.RKLLMCrossAttnParam)(a.alloc(C.sizeof_RKLLMCrossAttnParam))
	c.encoder_k_cache = a.floats(p.EncoderKCache)
	c.encoder_v_cache = a.floats(p.EncoderVCache)
	c.encoder_mask = a.floats(p.EncoderMask)
	c.encoder_pos = a.int32s(p.EncoderPos)
	c.num_tokens = C.int(n)
	return h.replace(&h.cross, a, callErr("rkllm_set_cross_attn_params", C.rk_set_cross_attn_params(h.lib.c, h.c, c)))
}

// replace keeps next in *slot when the runtime accepted it (err == nil) and frees the
// memory the runtime no longer uses: the old setting, or next when it was refused.
func (h *Handle) replace(slot **arena, next *arena, err error) error {
	if err != nil {
		next.free()
		return err
	}
	(*slot).free()
	*slot = next
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
