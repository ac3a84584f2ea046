// The types in this file are plain Go values that mirror the C structs of the runtime
// ABI (see docs/runtime.md) without exposing either ABI's layout: the cgo binding
// converts them for ABI 1.2 or 1.3 and reports fields that the chosen ABI lacks as
// ErrNotSupported. Everything above the binding (the server's worker, its tests and
// fakes) speaks only these types; this file builds without cgo.

package runtime

import (
	"errors"
	"fmt"
	"unsafe"
)

// DefaultLibrary is the library Open loads when given an empty path: the vendor's file
// name, found through the dynamic linker's search path. It is here, in the file that
// builds without cgo, so that configuration code can name it too.
const DefaultLibrary = "librkllmrt.so"

// ABI names a layout generation of the runtime's C structs. Layouts change with every
// minor runtime release, so the binding must be told which one the library speaks.
type ABI string

const (
	// ABI12 is the layout of runtime 1.2.1, 1.2.2 and 1.2.3.
	ABI12 ABI = "1.2"
	// ABI13 is the layout of runtime 1.3.0.
	ABI13 ABI = "1.3"
)

// ParseABI accepts "1.2" or "1.3" (also with a patch version, such as "1.2.3").
func ParseABI(s string) (ABI, error) {
	switch s {
	case "1.2", "1.2.1", "1.2.2", "1.2.3":
		return ABI12, nil
	case "1.3", "1.3.0":
		return ABI13, nil
	}
	return "", fmt.Errorf("unknown runtime ABI %q: use 1.2 (runtime 1.2.1-1.2.3) or 1.3 (runtime 1.3.0)", s)
}

// CallState is the state a result callback reports (LLMCallState).
type CallState int32

// Call states, with the runtime's values.
const (
	StateNormal  CallState = 0 // a token is delivered
	StateWaiting CallState = 1 // text so far ends inside a UTF-8 sequence
	StateFinish  CallState = 2 // the run is done; Perf is valid
	StateError   CallState = 3 // the run failed
)

// InputType selects which member of RKLLMInput's union a run uses (RKLLMInputType).
type InputType int32

// Input types, with the runtime's values.
const (
	InputPrompt     InputType = 0
	InputToken      InputType = 1
	InputEmbed      InputType = 2
	InputMultimodal InputType = 3
)

// InferMode selects what a run produces (RKLLMInferMode).
type InferMode int32

// Infer modes, with the runtime's values.
const (
	InferGenerate           InferMode = 0
	InferGetLastHiddenLayer InferMode = 1
	InferGetLogits          InferMode = 2
)

// CallbackAction is what a result callback tells the runtime to do next.
type CallbackAction int32

const (
	// Continue the run.
	Continue CallbackAction = 0
	// Pause stops generation and keeps the KV cache; a later run resumes.
	Pause CallbackAction = 1
	// ReleaseOutput asks the runtime to release the current output buffer now (ABI 1.3 only).
	ReleaseOutput CallbackAction = 2
)

// ExtendParam mirrors RKLLMExtendParam.
type ExtendParam struct {
	BaseDomainID    int32
	EmbedFlash      int8
	EnabledCPUsNum  int8
	EnabledCPUsMask uint32
	NBatch          uint8
	UseCrossAttn    int8
}

// Param mirrors RKLLMParam, the init-time parameters.
type Param struct {
	ModelPath        string
	MaxContextLen    int32
	MaxNewTokens     int32
	TopK             int32
	NKeep            int32
	TopP             float32
	Temperature      float32
	RepeatPenalty    float32
	FrequencyPenalty float32
	PresencePenalty  float32
	Mirostat         int32
	MirostatTau      float32
	MirostatEta      float32
	SkipSpecialToken bool
	// IgnoreEOSToken exists in ABI 1.3 only.
	IgnoreEOSToken bool
	IsAsync        bool
	// ImgStart, ImgEnd and ImgContent exist in ABI 1.2 only (1.3 moved them into the
	// multimodal input).
	ImgStart   string
	ImgEnd     string
	ImgContent string
	Extend     ExtendParam
}

// LoraAdapter mirrors RKLLMLoraAdapter.
type LoraAdapter struct {
	Path  string
	Name  string
	Scale float32
}

// Input mirrors RKLLMInput. Exactly the member that Type selects is used.
type Input struct {
	Role           string // "user", or "tool" for tool results; empty means the runtime default
	EnableThinking bool
	Type           InputType

	Prompt string // InputPrompt

	TokenIDs []int32 // InputToken

	// Embed holds NTokens x hidden-size floats (InputEmbed).
	Embed   []float32
	NTokens int

	Multimodal MultimodalInput // InputMultimodal
}

// MultimodalInput mirrors RKLLMMultiModalInput. The prompt carries one "<image>"
// placeholder per image (and "<video>" per video, ABI 1.3 only).
type MultimodalInput struct {
	Prompt       string
	ImageEmbed   []float32
	NImageTokens int
	NImage       int
	ImageWidth   int
	ImageHeight  int
	// ABI 1.3 only.
	ImageStart     string
	ImageEnd       string
	ImageContent   string
	VideoEmbed     []float32
	NFrameTokens   int
	NFramePerVideo int
	NVideo         int
	VideoStart     string
	VideoEnd       string
	VideoContent   string
	FrameWidth     int
	FrameHeight    int
}

// PromptCacheParams mirrors RKLLMPromptCacheParam.
type PromptCacheParams struct {
	Save bool
	Path string
}

// SamplingParams mirrors RKLLMSamplingParam (ABI 1.3 only).
type SamplingParams struct {
	TopK             int32
	TopP             float32
	Temperature      float32
	RepeatPenalty    float32
	FrequencyPenalty float32
	PresencePenalty  float32
	Mirostat         int32
	MirostatTau      float32
	MirostatEta      float32
}

// InferParams mirrors RKLLMInferParam.
type InferParams struct {
	Mode InferMode
	// LoraAdapterName picks an adapter loaded with LoadLora; empty means none.
	LoraAdapterName string
	// PromptCache is nil for none.
	PromptCache *PromptCacheParams
	// Sampling overrides the init-time sampling for this run (ABI 1.3 only); nil for none.
	Sampling    *SamplingParams
	KeepHistory bool
	// MaxNewTokens overrides the init value for this run when > 0 (ABI 1.3 only).
	MaxNewTokens int32
}

// CrossAttnParams mirrors RKLLMCrossAttnParam.
type CrossAttnParams struct {
	EncoderKCache []float32
	EncoderVCache []float32
	EncoderMask   []float32
	EncoderPos    []int32
	NumTokens     int
}

// PerfStat mirrors RKLLMPerfStat; it is filled on the StateFinish delivery.
type PerfStat struct {
	PrefillTimeMs  float32
	PrefillTokens  int32
	GenerateTimeMs float32
	GenerateTokens int32
	MemoryUsageMB  float32
}

// Result is one delivery for one batch entry (RKLLMResult), copied out of C memory
// inside the callback: every slice is owned by Go.
type Result struct {
	Text    string
	TokenID int32
	// HiddenStates holds NumTokens x EmbdSize floats (InferGetLastHiddenLayer).
	HiddenStates []float32
	EmbdSize     int
	// Logits holds NumTokens x VocabSize floats (InferGetLogits).
	Logits    []float32
	VocabSize int
	NumTokens int
	Perf      PerfStat
}

// Delivery is one invocation of the runtime's result callback: a state and one result
// per batch entry (one entry unless n_batch > 1).
type Delivery struct {
	State   CallState
	Results []Result
}

// ResultFunc receives every delivery of a run, on whatever thread the runtime uses.
type ResultFunc func(Delivery) CallbackAction

// ErrNotSupported is wrapped by errors for features the configured ABI lacks.
var ErrNotSupported = errors.New("not supported by this runtime ABI")

// UnsupportedError names the feature and the ABI that lacks it.
type UnsupportedError struct {
	Feature string
	ABI     ABI
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("%s is not supported by ABI %s", e.Feature, e.ABI)
}

// Unwrap makes errors.Is(err, ErrNotSupported) true.
func (e *UnsupportedError) Unwrap() error { return ErrNotSupported }

// CallError is a non-zero return code from a runtime function.
type CallError struct {
	Func string // the C function, such as "rkllm_init"
	Code int
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%s returned %d", e.Func, e.Code)
}

// KVRange is the half-open range of KV-cache positions [Start, End) to clear in one
// batch entry (ClearKVCache).
type KVRange struct {
	Start int
	End   int
}

// Sentinel errors of the binding, wrapped with context; callers branch with errors.Is.
var (
	// ErrBusy: a run is in progress on the handle, and the call needs the handle idle.
	ErrBusy = errors.New("a run is in progress on this handle")
	// ErrDestroyed: the handle was destroyed.
	ErrDestroyed = errors.New("the handle was destroyed")
	// ErrRunFailed: the runtime delivered RKLLM_RUN_ERROR although rkllm_run returned 0.
	ErrRunFailed = errors.New("the runtime reported RKLLM_RUN_ERROR")
)

// SymbolError reports that the runtime library lacks a function the binding needs.
type SymbolError struct {
	Path   string
	Symbol string
}

func (e *SymbolError) Error() string {
	return fmt.Sprintf("runtime library %s has no symbol %s: it is not an RKLLM runtime, or too old for this call", e.Path, e.Symbol)
}

// ABIMismatchError reports a library that evidently speaks another ABI than the
// configured one.
type ABIMismatchError struct {
	Path       string
	Configured ABI
	Detected   ABI
}

func (e *ABIMismatchError) Error() string {
	return fmt.Sprintf("runtime library %s speaks ABI %s, not the configured %s: configure ABI %s (1.2 = runtime 1.2.1-1.2.3, 1.3 = runtime 1.3.0)",
		e.Path, e.Detected, e.Configured, e.Detected)
}

// Sink takes a run's deliveries in C, on the runtime's thread, before Go sees them. Fn
// is a C function of shim.h's type rk_sink_fn,
//
//	int fn(void *arg, const RKLLMResult *results, int n_results, int state)
//
// called with Arg for every delivery; it returns the callback's action, or -1 to hand
// the delivery to the run's ResultFunc. A delivery the sink takes costs no entry into
// Go, which for a process that sleeps between tokens is most of what a token costs:
// the worker writes its token frames this way (workerproto.FrameSink).
type Sink struct{ Fn, Arg unsafe.Pointer }
