//go:build cgo

package runtime

import (
	"context"
	"errors"
)

// errNotYet marks the API skeleton committed early so the server can compile against
// it; every method is replaced by the real binding in the following commits.
var errNotYet = errors.New("runtime binding: not implemented yet")

// Library is a runtime library (librkllmrt.so or a simulator of it) loaded with dlopen,
// spoken to in one ABI. A Library stays loaded for the life of the process: the
// runtime starts threads that make dlclose unsafe.
type Library struct {
	path string
	abi  ABI
}

// Open loads the runtime library at path and resolves every function of the ABI.
// A path without a slash is looked up through the dynamic linker's search path
// (LD_LIBRARY_PATH, the ld.so cache, /usr/lib ...), like dlopen(3).
func Open(path string, abi ABI) (*Library, error) {
	return nil, errNotYet
}

// Path is the path the library was opened with.
func (l *Library) Path() string { return l.path }

// ABI is the ABI the library is spoken to in.
func (l *Library) ABI() ABI { return l.abi }

// DefaultParams returns the runtime's defaults (rkllm_createDefaultParam), with
// Extend.NBatch set to 1 when the runtime leaves it 0.
func (l *Library) DefaultParams() Param { return Param{} }

// Init loads a model (rkllm_init) and returns its handle. It is slow: seconds to a
// minute on a board.
func (l *Library) Init(p Param) (*Handle, error) { return nil, errNotYet }

// Handle is one initialised model (LLMHandle).
type Handle struct{}

// NBatch is the number of inputs every Run takes (n_batch at init).
func (h *Handle) NBatch() int { return 0 }

// Run runs one inference (rkllm_run) and blocks until it ends.
func (h *Handle) Run(ctx context.Context, inputs []Input, params InferParams, onResult ResultFunc) error {
	return errNotYet
}

// Abort stops the run in progress (rkllm_abort); safe from any goroutine.
func (h *Handle) Abort() error { return errNotYet }

// IsRunning reports whether a run is in progress (rkllm_is_running).
func (h *Handle) IsRunning() bool { return false }

// Destroy aborts any run, waits for it and frees the model (rkllm_destroy).
func (h *Handle) Destroy() error { return errNotYet }

// LoadLora loads a LoRA adapter (rkllm_load_lora) that runs can pick by name.
func (h *Handle) LoadLora(a LoraAdapter) error { return errNotYet }

// LoadPromptCache loads a prompt cache file (rkllm_load_prompt_cache).
func (h *Handle) LoadPromptCache(path string) error { return errNotYet }

// ReleasePromptCache drops the loaded prompt cache (rkllm_release_prompt_cache).
func (h *Handle) ReleasePromptCache() error { return errNotYet }

// ClearKVCache clears the KV cache (rkllm_clear_kv_cache).
func (h *Handle) ClearKVCache(keepSystemPrompt bool, ranges []KVRange) error { return errNotYet }

// KVCacheSize returns the positions in the KV cache, one per batch entry.
func (h *Handle) KVCacheSize() ([]int, error) { return nil, errNotYet }

// SetChatTemplate overrides the model's chat template (rkllm_set_chat_template).
func (h *Handle) SetChatTemplate(systemPrompt, promptPrefix, promptPostfix string) error {
	return errNotYet
}

// SetFunctionTools sets the tools the model may call (rkllm_set_function_tools).
func (h *Handle) SetFunctionTools(systemPrompt, toolsJSON, toolResponse string) error {
	return errNotYet
}

// SetCrossAttnParams sets the encoder caches of a cross-attention model
// (rkllm_set_cross_attn_params).
func (h *Handle) SetCrossAttnParams(p CrossAttnParams) error { return errNotYet }
