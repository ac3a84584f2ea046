package workerproto

import (
	"errors"
	"fmt"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// Op identifies a message type. Requests go from supervisor to worker; Hello,
// Delivery and Reply go from worker to supervisor.
type Op uint8

// Operations. Each request maps to one runtime function.
const (
	OpHello Op = iota + 1
	OpInit
	OpDestroy
	OpRun
	OpAbort
	OpIsRunning
	OpLoadLora
	OpLoadPromptCache
	OpReleasePromptCache
	OpClearKVCache
	OpGetKVCacheSize
	OpSetChatTemplate
	OpSetFunctionTools
	OpSetCrossAttnParams
	OpDelivery
	OpReply
	OpPing
	OpDirectDelivery // a Delivery the worker wrote to the client itself (Run.Direct)
	OpReclaim
)

var opNames = map[Op]string{
	OpHello: "hello", OpInit: "init", OpDestroy: "destroy", OpRun: "run", OpAbort: "abort",
	OpIsRunning: "is_running", OpLoadLora: "load_lora", OpLoadPromptCache: "load_prompt_cache",
	OpReleasePromptCache: "release_prompt_cache", OpClearKVCache: "clear_kv_cache",
	OpGetKVCacheSize: "get_kv_cache_size", OpSetChatTemplate: "set_chat_template",
	OpSetFunctionTools: "set_function_tools", OpSetCrossAttnParams: "set_cross_attn_params",
	OpDelivery: "delivery", OpReply: "reply", OpPing: "ping", OpDirectDelivery: "direct_delivery",
	OpReclaim: "reclaim",
}

func (o Op) String() string {
	if n, ok := opNames[o]; ok {
		return n
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Message is one protocol message.
type Message interface {
	Op() Op
	encode(e *encoder)
	decode(d *decoder)
}

// Hello is the worker's first message: what it loaded and the runtime's defaults.
type Hello struct {
	ABI     runtime.ABI
	PID     int
	Library string
	// Simulator is the simulator's version when the library is the project's RKLLM
	// simulator (its output is not a model's), else "".
	Simulator string
	// Default is rkllm_createDefaultParam() of the loaded library.
	Default runtime.Param
}

// Init loads a model (rkllm_init). EmbedWidth and VocabSize are the model's embedding
// width and vocabulary size when the configuration gives them; 0 makes the worker learn
// each with a run right after init.
type Init struct {
	Param      runtime.Param
	EmbedWidth int
	VocabSize  int
}

// Destroy frees the model (rkllm_destroy).
type Destroy struct{}

// Run runs one generation (rkllm_run). Inputs has one entry, or n_batch entries.
type Run struct {
	Inputs []runtime.Input
	Infer  runtime.InferParams
	// ClearKVCache clears the whole KV cache (rkllm_clear_kv_cache) before the run, in
	// the same round trip; a failure fails the run.
	ClearKVCache bool
	// ReportKVCacheSize asks for rkllm_get_kv_cache_size after a run that succeeded, in
	// the reply's CacheSizes (nil when the runtime cannot say).
	ReportKVCacheSize bool
	// Direct, when set, asks the worker to write the run's token notifications to the
	// client's socket itself, which the supervisor passed before the Run (see Direct).
	Direct *Direct
}

// Direct is how the worker writes a streamed run's tokens to the client's socket
// itself, saving the supervisor's hop on their way: each token of text alone (the
// notification of almost every token) goes out as Head, the state's name as a JSON
// string, `,"text":` and the text as a JSON string, `,"token_id":` and the id, then
// Tail; as an HTTP/1.1 chunk when Chunked. The worker writes only what the socket takes
// at once, until a token does not go out whole or is not text alone; it reports each
// token it wrote in a Delivery with Direct set, and from the first it did not write
// whole, everything goes to the supervisor again.
type Direct struct {
	// Socket is the client socket's number in the Handoff.
	Socket     uint64
	Head, Tail string
	Chunked    bool
}

// MaxDirectTemplate bounds Direct's Head and Tail (framesink.h's WP_TEMPLATE_MAX).
const MaxDirectTemplate = 1024

// Abort stops the Run whose call id is Run; it is served while that Run is. Naming
// the run makes the abort hold whenever it arrives: before the worker has started the
// run in the runtime (which would ignore an rkllm_abort then), and never for a later
// run (an abort that arrives after its run ended does nothing).
type Abort struct{ Run uint64 }

// Reclaim stops the worker writing to the client socket numbered Socket
// (Direct.Socket): the client has another message to send. It is served while the Run
// is, and answered once the worker writes nothing more to that client, so whatever the
// worker wrote to it before comes first in the stream of frames.
type Reclaim struct{ Socket uint64 }

// IsRunning asks rkllm_is_running; it is served while Run is.
type IsRunning struct{}

// Ping asks the worker for a sign of life; it answers without the runtime, while any
// other request is in progress, so a worker that does not answer is stopped or wedged
// as a process, whatever its runtime is doing.
type Ping struct{}

// LoadLora loads one adapter (rkllm_load_lora).
type LoadLora struct{ Adapter runtime.LoraAdapter }

// LoadPromptCache loads a saved prompt cache (rkllm_load_prompt_cache).
type LoadPromptCache struct{ Path string }

// ReleasePromptCache releases it (rkllm_release_prompt_cache).
type ReleasePromptCache struct{}

// ClearKVCache clears the KV cache (rkllm_clear_kv_cache); nil ranges mean NULL.
type ClearKVCache struct {
	KeepSystemPrompt bool
	StartPos, EndPos []int32
}

// GetKVCacheSize asks rkllm_get_kv_cache_size.
type GetKVCacheSize struct{}

// SetChatTemplate calls rkllm_set_chat_template.
type SetChatTemplate struct{ SystemPrompt, PromptPrefix, PromptPostfix string }

// SetFunctionTools calls rkllm_set_function_tools.
type SetFunctionTools struct{ SystemPrompt, Tools, ToolResponseStr string }

// SetCrossAttnParams calls rkllm_set_cross_attn_params.
type SetCrossAttnParams struct{ Params runtime.CrossAttnParams }

// Delivery is one result-callback invocation of a Run, sent with the Run's call id.
type Delivery struct {
	runtime.Delivery
	// Direct says the worker wrote the delivery's notification to the client itself
	// (Run.Direct): Written bytes of it, which is all of it when Whole. The frames of
	// such deliveries may reach the supervisor a few milliseconds late, several at
	// once (the client has them already), so Gap tells the time since the run's
	// previous delivery (0 for its first), as the worker saw it.
	Direct  bool
	Written int
	Whole   bool
	Gap     time.Duration
}

// Reply ends a request: Err is nil on success. Running answers IsRunning, CacheSizes
// answers GetKVCacheSize, EmbedWidth and VocabSize answer Init (the model's embedding
// width and vocabulary size; 0 when one could not be learned).
type Reply struct {
	Err        error
	Running    bool
	CacheSizes []int32
	EmbedWidth int
	VocabSize  int
}

// Op implements Message.
func (*Hello) Op() Op { return OpHello }

// Op implements Message.
func (*Init) Op() Op { return OpInit }

// Op implements Message.
func (*Destroy) Op() Op { return OpDestroy }

// Op implements Message.
func (*Run) Op() Op { return OpRun }

// Op implements Message.
func (*Abort) Op() Op { return OpAbort }

// Op implements Message.
func (*Reclaim) Op() Op { return OpReclaim }

// Op implements Message.
func (*IsRunning) Op() Op { return OpIsRunning }

// Op implements Message.
func (*Ping) Op() Op { return OpPing }

// Op implements Message.
func (*LoadLora) Op() Op { return OpLoadLora }

// Op implements Message.
func (*LoadPromptCache) Op() Op { return OpLoadPromptCache }

// Op implements Message.
func (*ReleasePromptCache) Op() Op { return OpReleasePromptCache }

// Op implements Message.
func (*ClearKVCache) Op() Op { return OpClearKVCache }

// Op implements Message.
func (*GetKVCacheSize) Op() Op { return OpGetKVCacheSize }

// Op implements Message.
func (*SetChatTemplate) Op() Op { return OpSetChatTemplate }

// Op implements Message.
func (*SetFunctionTools) Op() Op { return OpSetFunctionTools }

// Op implements Message.
func (*SetCrossAttnParams) Op() Op { return OpSetCrossAttnParams }

// Op implements Message.
func (m *Delivery) Op() Op {
	if m.Direct {
		return OpDirectDelivery
	}
	return OpDelivery
}

// Op implements Message.
func (*Reply) Op() Op { return OpReply }

// constructors make an empty message of each type.
var constructors = map[Op]func() Message{
	OpHello: func() Message { return &Hello{} }, OpInit: func() Message { return &Init{} },
	OpDestroy: func() Message { return &Destroy{} }, OpRun: func() Message { return &Run{} },
	OpAbort: func() Message { return &Abort{} }, OpIsRunning: func() Message { return &IsRunning{} },
	OpLoadLora: func() Message { return &LoadLora{} }, OpLoadPromptCache: func() Message { return &LoadPromptCache{} },
	OpReleasePromptCache: func() Message { return &ReleasePromptCache{} }, OpClearKVCache: func() Message { return &ClearKVCache{} },
	OpGetKVCacheSize: func() Message { return &GetKVCacheSize{} }, OpSetChatTemplate: func() Message { return &SetChatTemplate{} },
	OpSetFunctionTools: func() Message { return &SetFunctionTools{} }, OpSetCrossAttnParams: func() Message { return &SetCrossAttnParams{} },
	OpDelivery: func() Message { return &Delivery{} }, OpReply: func() Message { return &Reply{} },
	OpPing: func() Message { return &Ping{} }, OpDirectDelivery: func() Message { return &Delivery{Direct: true} },
	OpReclaim: func() Message { return &Reclaim{} },
}

// newMessage returns an empty message of the given type.
func newMessage(op Op) (Message, error) {
	if f, ok := constructors[op]; ok {
		return f(), nil
	}
	return nil, fmt.Errorf("unknown message type %d", uint8(op))
}

// Encode returns the payload of m.
func Encode(m Message) []byte {
	var e encoder
	m.encode(&e)
	return e.b
}

// Decode parses a payload of the given type.
func Decode(op Op, payload []byte) (Message, error) {
	m, err := newMessage(op)
	if err != nil {
		return nil, err
	}
	d := decoder{b: payload}
	m.decode(&d)
	if err := d.finish(); err != nil {
		return nil, fmt.Errorf("decode %s: %w", op, err)
	}
	return m, nil
}

func (m *Hello) encode(e *encoder) {
	e.str(string(m.ABI))
	e.int(m.PID)
	e.str(m.Library)
	e.str(m.Simulator)
	encodeParam(e, &m.Default)
}

func (m *Hello) decode(d *decoder) {
	m.ABI = runtime.ABI(d.str())
	m.PID = d.int()
	m.Library = d.str()
	m.Simulator = d.str()
	decodeParam(d, &m.Default)
}

func encodeParam(e *encoder, p *runtime.Param) {
	e.str(p.ModelPath)
	e.i32(p.MaxContextLen)
	e.i32(p.MaxNewTokens)
	e.i32(p.TopK)
	e.i32(p.NKeep)
	e.f32(p.TopP)
	e.f32(p.Temperature)
	e.f32(p.RepeatPenalty)
	e.f32(p.FrequencyPenalty)
	e.f32(p.PresencePenalty)
	e.i32(p.Mirostat)
	e.f32(p.MirostatTau)
	e.f32(p.MirostatEta)
	e.bool(p.SkipSpecialToken)
	e.bool(p.IgnoreEOSToken)
	e.bool(p.IsAsync)
	e.str(p.ImgStart)
	e.str(p.ImgEnd)
	e.str(p.ImgContent)
	e.i32(p.Extend.BaseDomainID)
	e.i8(p.Extend.EmbedFlash)
	e.i8(p.Extend.EnabledCPUsNum)
	e.u32(p.Extend.EnabledCPUsMask)
	e.u8(p.Extend.NBatch)
	e.i8(p.Extend.UseCrossAttn)
}

func decodeParam(d *decoder, p *runtime.Param) {
	p.ModelPath = d.str()
	p.MaxContextLen = d.i32()
	p.MaxNewTokens = d.i32()
	p.TopK = d.i32()
	p.NKeep = d.i32()
	p.TopP = d.f32()
	p.Temperature = d.f32()
	p.RepeatPenalty = d.f32()
	p.FrequencyPenalty = d.f32()
	p.PresencePenalty = d.f32()
	p.Mirostat = d.i32()
	p.MirostatTau = d.f32()
	p.MirostatEta = d.f32()
	p.SkipSpecialToken = d.bool()
	p.IgnoreEOSToken = d.bool()
	p.IsAsync = d.bool()
	p.ImgStart = d.str()
	p.ImgEnd = d.str()
	p.ImgContent = d.str()
	p.Extend.BaseDomainID = d.i32()
	p.Extend.EmbedFlash = d.i8()
	p.Extend.EnabledCPUsNum = d.i8()
	p.Extend.EnabledCPUsMask = d.u32()
	p.Extend.NBatch = d.u8()
	p.Extend.UseCrossAttn = d.i8()
}

func (m *Init) encode(e *encoder) {
	encodeParam(e, &m.Param)
	e.int(m.EmbedWidth)
	e.int(m.VocabSize)
}

func (m *Init) decode(d *decoder) {
	decodeParam(d, &m.Param)
	m.EmbedWidth = d.int()
	m.VocabSize = d.int()
}

func (*Destroy) encode(*encoder)            {}
func (*Destroy) decode(*decoder)            {}
func (m *Abort) encode(e *encoder)          { e.u64(m.Run) }
func (m *Abort) decode(d *decoder)          { m.Run = d.u64() }
func (m *Reclaim) encode(e *encoder)        { e.u64(m.Socket) }
func (m *Reclaim) decode(d *decoder)        { m.Socket = d.u64() }
func (*IsRunning) encode(*encoder)          {}
func (*IsRunning) decode(*decoder)          {}
func (*Ping) encode(*encoder)               {}
func (*Ping) decode(*decoder)               {}
func (*ReleasePromptCache) encode(*encoder) {}
func (*ReleasePromptCache) decode(*decoder) {}
func (*GetKVCacheSize) encode(*encoder)     {}
func (*GetKVCacheSize) decode(*decoder)     {}

func (m *Run) encode(e *encoder) {
	e.length(len(m.Inputs))
	for i := range m.Inputs {
		encodeInput(e, &m.Inputs[i])
	}
	ip := &m.Infer
	e.i32(int32(ip.Mode))
	e.str(ip.LoraAdapterName)
	e.bool(ip.PromptCache != nil)
	if ip.PromptCache != nil {
		e.bool(ip.PromptCache.Save)
		e.str(ip.PromptCache.Path)
	}
	e.bool(ip.Sampling != nil)
	if s := ip.Sampling; s != nil {
		e.i32(s.TopK)
		e.f32(s.TopP)
		e.f32(s.Temperature)
		e.f32(s.RepeatPenalty)
		e.f32(s.FrequencyPenalty)
		e.f32(s.PresencePenalty)
		e.i32(s.Mirostat)
		e.f32(s.MirostatTau)
		e.f32(s.MirostatEta)
	}
	e.bool(ip.KeepHistory)
	e.i32(ip.MaxNewTokens)
	e.bool(m.ClearKVCache)
	e.bool(m.ReportKVCacheSize)
	e.bool(m.Direct != nil)
	if m.Direct != nil {
		e.u64(m.Direct.Socket)
		e.str(m.Direct.Head)
		e.str(m.Direct.Tail)
		e.bool(m.Direct.Chunked)
	}
}

func (m *Run) decode(d *decoder) {
	// Each input takes at least 40 bytes on the wire; the bound stops a hostile count
	// from allocating before the payload runs out.
	n := d.length(40)
	if n > 0 {
		m.Inputs = make([]runtime.Input, n)
	}
	for i := range m.Inputs {
		decodeInput(d, &m.Inputs[i])
	}
	ip := &m.Infer
	ip.Mode = runtime.InferMode(d.i32())
	ip.LoraAdapterName = d.str()
	if d.bool() {
		ip.PromptCache = &runtime.PromptCacheParams{Save: d.bool(), Path: d.str()}
	}
	if d.bool() {
		ip.Sampling = &runtime.SamplingParams{
			TopK: d.i32(), TopP: d.f32(), Temperature: d.f32(), RepeatPenalty: d.f32(),
			FrequencyPenalty: d.f32(), PresencePenalty: d.f32(), Mirostat: d.i32(),
			MirostatTau: d.f32(), MirostatEta: d.f32(),
		}
	}
	ip.KeepHistory = d.bool()
	ip.MaxNewTokens = d.i32()
	m.ClearKVCache = d.bool()
	m.ReportKVCacheSize = d.bool()
	if d.bool() {
		m.Direct = &Direct{Socket: d.u64(), Head: d.str(), Tail: d.str(), Chunked: d.bool()}
	}
}

func encodeInput(e *encoder, in *runtime.Input) {
	e.str(in.Role)
	e.bool(in.EnableThinking)
	e.i32(int32(in.Type))
	e.str(in.Prompt)
	e.i32s(in.TokenIDs)
	e.f32s(in.Embed)
	e.int(in.NTokens)
	mm := &in.Multimodal
	e.str(mm.Prompt)
	e.f32s(mm.ImageEmbed)
	for _, v := range []int{mm.NImageTokens, mm.NImage, mm.ImageWidth, mm.ImageHeight} {
		e.int(v)
	}
	e.str(mm.ImageStart)
	e.str(mm.ImageEnd)
	e.str(mm.ImageContent)
	e.f32s(mm.VideoEmbed)
	for _, v := range []int{mm.NFrameTokens, mm.NFramePerVideo, mm.NVideo} {
		e.int(v)
	}
	e.str(mm.VideoStart)
	e.str(mm.VideoEnd)
	e.str(mm.VideoContent)
	e.int(mm.FrameWidth)
	e.int(mm.FrameHeight)
}

func decodeInput(d *decoder, in *runtime.Input) {
	in.Role = d.str()
	in.EnableThinking = d.bool()
	in.Type = runtime.InputType(d.i32())
	in.Prompt = d.str()
	in.TokenIDs = d.i32s()
	in.Embed = d.f32s()
	in.NTokens = d.int()
	mm := &in.Multimodal
	mm.Prompt = d.str()
	mm.ImageEmbed = d.f32s()
	for _, p := range []*int{&mm.NImageTokens, &mm.NImage, &mm.ImageWidth, &mm.ImageHeight} {
		*p = d.int()
	}
	mm.ImageStart = d.str()
	mm.ImageEnd = d.str()
	mm.ImageContent = d.str()
	mm.VideoEmbed = d.f32s()
	for _, p := range []*int{&mm.NFrameTokens, &mm.NFramePerVideo, &mm.NVideo} {
		*p = d.int()
	}
	mm.VideoStart = d.str()
	mm.VideoEnd = d.str()
	mm.VideoContent = d.str()
	mm.FrameWidth = d.int()
	mm.FrameHeight = d.int()
}

func (m *LoadLora) encode(e *encoder) {
	e.str(m.Adapter.Path)
	e.str(m.Adapter.Name)
	e.f32(m.Adapter.Scale)
}

func (m *LoadLora) decode(d *decoder) {
	m.Adapter.Path = d.str()
	m.Adapter.Name = d.str()
	m.Adapter.Scale = d.f32()
}

func (m *LoadPromptCache) encode(e *encoder) { e.str(m.Path) }
func (m *LoadPromptCache) decode(d *decoder) { m.Path = d.str() }

func (m *ClearKVCache) encode(e *encoder) {
	e.bool(m.KeepSystemPrompt)
	e.optI32s(m.StartPos)
	e.optI32s(m.EndPos)
}

func (m *ClearKVCache) decode(d *decoder) {
	m.KeepSystemPrompt = d.bool()
	m.StartPos = d.optI32s()
	m.EndPos = d.optI32s()
}

func (m *SetChatTemplate) encode(e *encoder) {
	e.str(m.SystemPrompt)
	e.str(m.PromptPrefix)
	e.str(m.PromptPostfix)
}

func (m *SetChatTemplate) decode(d *decoder) {
	m.SystemPrompt, m.PromptPrefix, m.PromptPostfix = d.str(), d.str(), d.str()
}

func (m *SetFunctionTools) encode(e *encoder) {
	e.str(m.SystemPrompt)
	e.str(m.Tools)
	e.str(m.ToolResponseStr)
}

func (m *SetFunctionTools) decode(d *decoder) {
	m.SystemPrompt, m.Tools, m.ToolResponseStr = d.str(), d.str(), d.str()
}

func (m *SetCrossAttnParams) encode(e *encoder) {
	p := &m.Params
	e.f32s(p.EncoderKCache)
	e.f32s(p.EncoderVCache)
	e.f32s(p.EncoderMask)
	e.i32s(p.EncoderPos)
	e.int(p.NumTokens)
}

func (m *SetCrossAttnParams) decode(d *decoder) {
	p := &m.Params
	p.EncoderKCache = d.f32s()
	p.EncoderVCache = d.f32s()
	p.EncoderMask = d.f32s()
	p.EncoderPos = d.i32s()
	p.NumTokens = d.int()
}

func (m *Delivery) encode(e *encoder) {
	if m.Direct {
		e.u32(uint32(m.Written)) //nolint:gosec // a notification's bytes, under a frame
		e.bool(m.Whole)
		e.u64(uint64(m.Gap)) //nolint:gosec // a duration is never negative
	}
	e.i32(int32(m.State))
	e.length(len(m.Results))
	for i := range m.Results {
		r := &m.Results[i]
		e.str(r.Text)
		e.i32(r.TokenID)
		e.f32s(r.HiddenStates)
		e.int(r.EmbdSize)
		e.f32s(r.Logits)
		e.int(r.VocabSize)
		e.int(r.NumTokens)
		e.f32(r.Perf.PrefillTimeMs)
		e.i32(r.Perf.PrefillTokens)
		e.f32(r.Perf.GenerateTimeMs)
		e.i32(r.Perf.GenerateTokens)
		e.f32(r.Perf.MemoryUsageMB)
	}
}

// size is the encoded size of the delivery, so one too large for a frame is refused
// before it is encoded (hidden states and logits reach hundreds of megabytes).
func (m *Delivery) size() int {
	n := 4 + uvarintLen(len(m.Results))
	if m.Direct {
		n += 4 + 1 + 8
	}
	for i := range m.Results {
		r := &m.Results[i]
		n += uvarintLen(len(r.Text)) + len(r.Text) + 4
		n += uvarintLen(len(r.HiddenStates)) + 4*len(r.HiddenStates) + 8
		n += uvarintLen(len(r.Logits)) + 4*len(r.Logits) + 8 + 8 + 5*4
	}
	return n
}

// Fields names the arrays a delivery carries (last_hidden_layer, logits), for errors.
func (m *Delivery) Fields() string {
	var hidden, logits bool
	for i := range m.Results {
		hidden = hidden || len(m.Results[i].HiddenStates) > 0
		logits = logits || len(m.Results[i].Logits) > 0
	}
	switch {
	case hidden && logits:
		return "last_hidden_layer and logits"
	case hidden:
		return "last_hidden_layer"
	case logits:
		return "logits"
	}
	return "result"
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

func (m *Delivery) decode(d *decoder) {
	if m.Direct {
		m.Written = int(d.u32())
		m.Whole = d.bool()
		m.Gap = time.Duration(d.u64()) //nolint:gosec // the worker's nanoseconds
	}
	m.State = runtime.CallState(d.i32())
	// A result takes at least 51 bytes on the wire.
	n := d.length(51)
	if n > 0 {
		m.Results = make([]runtime.Result, n)
	}
	for i := range m.Results {
		r := &m.Results[i]
		r.Text = d.str()
		r.TokenID = d.i32()
		r.HiddenStates = d.f32s()
		r.EmbdSize = d.int()
		r.Logits = d.f32s()
		r.VocabSize = d.int()
		r.NumTokens = d.int()
		r.Perf.PrefillTimeMs = d.f32()
		r.Perf.PrefillTokens = d.i32()
		r.Perf.GenerateTimeMs = d.f32()
		r.Perf.GenerateTokens = d.i32()
		r.Perf.MemoryUsageMB = d.f32()
	}
}

// Error kinds on the wire, so the supervisor gets back the typed runtime errors.
const (
	errNone        = 0
	errCall        = 1  // *runtime.CallError
	errUnsupported = 2  // *runtime.UnsupportedError
	errOther       = 3  // message only
	errBusy        = 4  // ErrWorkerBusy
	errRuntimeBusy = 5  // runtime.ErrBusy, with the message
	errDestroyed   = 6  // runtime.ErrDestroyed, with the message
	errSymbol      = 7  // *runtime.SymbolError
	errRunFailed   = 8  // runtime.ErrRunFailed, with the message
	errTooLarge    = 9  // *ResultTooLargeError
	errInput       = 10 // *runtime.InputError
)

// sentinels are the runtime's sentinel errors that cross the wire as themselves (the
// message keeps the context they were wrapped in).
var sentinels = []struct {
	kind uint8
	err  error
}{{errRuntimeBusy, runtime.ErrBusy}, {errDestroyed, runtime.ErrDestroyed}, {errRunFailed, runtime.ErrRunFailed}}

// wrappedError is a sentinel error with the message it had in the worker.
type wrappedError struct {
	msg string
	err error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.err }

// sentinelError rebuilds a sentinel with its message (the sentinel itself when the
// message is just its own).
func sentinelError(msg string, err error) error {
	if msg == err.Error() {
		return err
	}
	return &wrappedError{msg: msg, err: err}
}

// ErrWorkerBusy is the worker's answer to a request that needs the model while another
// such request is in progress (the supervisor never sends one; it guards against bugs).
var ErrWorkerBusy = errors.New("worker busy: another call on the model is in progress")

// RemoteError is an error from the worker that is neither a runtime call error nor an
// unsupported feature.
type RemoteError struct{ Message string }

func (e *RemoteError) Error() string { return e.Message }

// ResultTooLargeError fails a run one of whose deliveries (hidden states or logits) is
// larger than one worker frame: the run is aborted, and never ends as a success
// missing its data.
type ResultTooLargeError struct {
	// Field names the arrays: last_hidden_layer, logits, or both.
	Field string
	// Size is the delivery's frame in bytes; Limit the largest frame.
	Size, Limit int
}

func (e *ResultTooLargeError) Error() string {
	return fmt.Sprintf("result too large: the run's %s takes %d bytes, over the %d bytes one worker frame carries (--max-frame-bytes); ask for fewer positions (a shorter input or a smaller batch), or raise the limit",
		e.Field, e.Size, e.Limit)
}

func (m *Reply) encode(e *encoder) {
	encodeErr(e, m.Err)
	e.bool(m.Running)
	e.optI32s(m.CacheSizes)
	e.int(m.EmbedWidth)
	e.int(m.VocabSize)
}

// encodeErr writes an error as its kind and what rebuilds it on the other side.
func encodeErr(e *encoder, err error) {
	var (
		callErr     *runtime.CallError
		unsupported *runtime.UnsupportedError
		symbol      *runtime.SymbolError
		input       *runtime.InputError
		tooLarge    *ResultTooLargeError
	)
	switch {
	case err == nil:
		e.u8(errNone)
		return
	case errors.As(err, &input):
		e.u8(errInput)
		e.int(input.Input)
		e.str(input.Field)
		e.str(input.Reason)
		e.bool(input.NoWidth)
		e.bool(input.NoVocab)
		return
	case errors.As(err, &tooLarge):
		e.u8(errTooLarge)
		e.str(tooLarge.Field)
		e.int(tooLarge.Size)
		e.int(tooLarge.Limit)
		return
	case errors.As(err, &callErr):
		e.u8(errCall)
		e.str(callErr.Func)
		e.int(callErr.Code)
		e.str(err.Error())
		return
	case errors.As(err, &unsupported):
		e.u8(errUnsupported)
		e.str(unsupported.Feature)
		e.str(string(unsupported.ABI))
		return
	case errors.As(err, &symbol):
		e.u8(errSymbol)
		e.str(symbol.Path)
		e.str(symbol.Symbol)
		return
	case errors.Is(err, ErrWorkerBusy):
		e.u8(errBusy)
		return
	}
	for _, st := range sentinels {
		if errors.Is(err, st.err) {
			e.u8(st.kind)
			e.str(err.Error())
			return
		}
	}
	e.u8(errOther)
	e.str(err.Error())
}

func (m *Reply) decode(d *decoder) {
	switch kind := d.u8(); kind {
	case errNone:
	case errCall:
		ce := &runtime.CallError{Func: d.str(), Code: d.int()}
		if msg := d.str(); msg != ce.Error() {
			m.Err = fmt.Errorf("%s: %w", trimSuffix(msg, ": "+ce.Error()), ce)
		} else {
			m.Err = ce
		}
	case errUnsupported:
		m.Err = &runtime.UnsupportedError{Feature: d.str(), ABI: runtime.ABI(d.str())}
	case errBusy:
		m.Err = ErrWorkerBusy
	case errOther:
		m.Err = &RemoteError{Message: d.str()}
	case errSymbol:
		m.Err = &runtime.SymbolError{Path: d.str(), Symbol: d.str()}
	case errInput:
		m.Err = &runtime.InputError{Input: d.int(), Field: d.str(), Reason: d.str(), NoWidth: d.bool(), NoVocab: d.bool()}
	case errTooLarge:
		m.Err = &ResultTooLargeError{Field: d.str(), Size: d.int(), Limit: d.int()}
	case errRuntimeBusy, errDestroyed, errRunFailed:
		msg := d.str()
		for _, st := range sentinels {
			if st.kind == kind {
				m.Err = sentinelError(msg, st.err)
			}
		}
	default:
		if d.err == nil {
			d.err = fmt.Errorf("unknown error kind %d", kind)
		}
	}
	m.Running = d.bool()
	m.CacheSizes = d.optI32s()
	m.EmbedWidth = d.int()
	m.VocabSize = d.int()
}

func trimSuffix(s, suffix string) string {
	if len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)]
	}
	return s
}
