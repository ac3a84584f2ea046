// Package fakeruntime is an in-Go stand-in for the runtime binding, for tests of the
// worker and the supervisor that must not depend on the C simulator. It is a test
// double, not a model: its output is a fixed pattern that encodes the state it was
// given, so tests can check exactly what crossed each boundary.
//
// Generation: a run produces n tokens, n being the run's max_new_tokens, else the init
// max_new_tokens, else 4. Token i has text "w<i> " and id 1000+i. When state was set
// (chat template, function tools, prompt cache, LoRA adapter used by the run) the first
// token's text starts with a tag such as "[sys=S;tools=yes;cache=c.bin;lora=a] ".
//
// Directives in a prompt drive faults: "!crash@N" kills the process after N tokens,
// "!hang@N" stops delivering after N tokens and ignores abort, "!hold@N" stops after N
// tokens until aborted, "!error" makes the run fail (ERROR delivery, rkllm_run -1),
// "!utf8" makes the first token "é" split over a WAITING and a NORMAL delivery.
package fakeruntime

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/worker"
)

// Fixed shapes of the arrays the fake returns.
const (
	EmbdSize  = 4
	VocabSize = 6
)

// Runtime is the fake library.
type Runtime struct {
	abi runtime.ABI
	// Crash is called for "!crash@N"; the default kills the process with SIGKILL, the
	// way a segfault in the runtime ends the worker.
	Crash func()
	// Step, when non-nil, is received from before every token (tests pace runs with it).
	Step chan struct{}
	// Inits counts successful Init calls.
	Inits atomic.Int32
}

// New returns a fake speaking abi.
func New(abi runtime.ABI) *Runtime {
	return &Runtime{abi: abi, Crash: func() { _ = syscall.Kill(syscall.Getpid(), syscall.SIGKILL) }}
}

// ABI implements worker.Runtime.
func (r *Runtime) ABI() runtime.ABI { return r.abi }

// DefaultParams implements worker.Runtime with the documented defaults.
func (r *Runtime) DefaultParams() runtime.Param {
	return runtime.Param{
		MaxContextLen: 512, MaxNewTokens: -1, TopK: 40, NKeep: -1, TopP: 0.9, Temperature: 0.8,
		RepeatPenalty: 1.1, MirostatTau: 5, MirostatEta: 0.1, SkipSpecialToken: true,
		Extend: runtime.ExtendParam{EmbedFlash: 1, EnabledCPUsNum: 4, EnabledCPUsMask: 0xF0, NBatch: 1},
	}
}

// Init implements worker.Runtime. A model path containing "bad" fails like a wrong
// magic; n_batch must be 1..100; ABI-specific fields are checked.
func (r *Runtime) Init(p runtime.Param) (worker.Model, error) {
	switch {
	case p.ModelPath == "" || strings.Contains(filepath.Base(p.ModelPath), "bad"):
		return nil, &runtime.CallError{Func: "rkllm_init", Code: -1}
	case p.Extend.NBatch < 1 || p.Extend.NBatch > 100:
		return nil, &runtime.CallError{Func: "rkllm_init", Code: -1}
	case r.abi == runtime.ABI12 && p.IgnoreEOSToken:
		return nil, &runtime.UnsupportedError{Feature: "ignore_eos_token", ABI: r.abi}
	case r.abi == runtime.ABI13 && (p.ImgStart != "" || p.ImgEnd != "" || p.ImgContent != ""):
		return nil, &runtime.UnsupportedError{Feature: "img_start/img_end/img_content in RKLLMParam", ABI: r.abi}
	}
	r.Inits.Add(1)
	return &Model{rt: r, param: p, loras: map[string]bool{}}, nil
}

// Model is a fake handle.
type Model struct {
	rt    *Runtime
	param runtime.Param

	running atomic.Bool

	mu        sync.Mutex
	loras     map[string]bool
	system    string
	tools     bool
	cache     string
	xattn     int
	width     int
	vocab     int
	kvCache   int
	destroyed bool
}

var directive = regexp.MustCompile(`!(crash|hang|hold)@(\d+)`)

// Run implements worker.Model.
func (m *Model) Run(ctx context.Context, inputs []runtime.Input, ip runtime.InferParams, fn runtime.ResultFunc) error {
	if len(inputs) != 1 {
		return fmt.Errorf("fake runtime: %d inputs; only n_batch 1 is simulated", len(inputs))
	}
	if err := m.check(ip); err != nil {
		return err
	}
	in := inputs[0]
	prompt := in.Prompt
	if in.Type == runtime.InputMultimodal {
		prompt = in.Multimodal.Prompt
	}
	m.mu.Lock()
	tag := m.tag(ip.LoraAdapterName)
	m.mu.Unlock()
	m.running.Store(true)
	defer m.running.Store(false)

	if strings.Contains(prompt, "!error") {
		fn(runtime.Delivery{State: runtime.StateError, Results: []runtime.Result{{}}})
		return &runtime.CallError{Func: "rkllm_run", Code: -1}
	}
	inTokens := inputTokens(in)
	generated := m.generate(ctx, prompt, tag, inTokens, ip, fn)
	m.mu.Lock()
	if ip.KeepHistory {
		m.kvCache += inTokens + generated
	} else {
		m.kvCache = 0
	}
	m.mu.Unlock()
	fn(runtime.Delivery{State: runtime.StateFinish, Results: []runtime.Result{{TokenID: -1, Perf: runtime.PerfStat{
		PrefillTimeMs: 1.5, PrefillTokens: int32(inTokens), GenerateTimeMs: 2.5 * float32(generated), //nolint:gosec // small test counts
		GenerateTokens: int32(generated), MemoryUsageMB: 64, //nolint:gosec // small test counts
	}}}})
	return nil
}

// generate delivers the tokens of a run, applying the prompt's fault directive, and
// returns how many it generated.
func (m *Model) generate(ctx context.Context, prompt, tag string, inTokens int, ip runtime.InferParams, fn runtime.ResultFunc) int {
	fault, faultAt := "", -1
	if d := directive.FindStringSubmatch(prompt); d != nil {
		fault = d[1]
		faultAt, _ = strconv.Atoi(d[2])
	}
	n := m.tokens(ip)
	generated := 0
	for i := 0; i < n; i++ {
		if i == faultAt {
			m.fault(ctx, fault)
		}
		if ctx.Err() != nil {
			break
		}
		if m.rt.Step != nil {
			select {
			case <-m.rt.Step:
			case <-ctx.Done():
			}
		}
		if ip.Mode == runtime.InferGetLastHiddenLayer {
			fn(runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{hidden(inTokens)}})
			break
		}
		res := runtime.Result{Text: fmt.Sprintf("w%d ", i), TokenID: int32(1000 + i)} //nolint:gosec // small test counts
		if i == 0 {
			res.Text = tag + res.Text
		}
		if ip.Mode == runtime.InferGetLogits {
			res.Logits, res.VocabSize, res.NumTokens = logits(i), VocabSize, 1
		}
		if i == 0 && strings.Contains(prompt, "!utf8") {
			fn(runtime.Delivery{State: runtime.StateWaiting, Results: []runtime.Result{{Text: "\xc3", TokenID: 999}}})
			res.Text = "\xa9" + res.Text
		}
		generated++
		fn(runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{res}})
	}
	return generated
}

// fault applies a directive: crash, hang (ignoring abort) or hold (until the run's
// context ends: the worker's abort).
func (m *Model) fault(ctx context.Context, fault string) {
	switch fault {
	case "crash":
		m.rt.Crash()
	case "hang":
		select {} // stops delivering and ignores abort, like a wedged NPU job
	case "hold":
		<-ctx.Done()
	}
}

func (m *Model) check(ip runtime.InferParams) error {
	if m.rt.abi == runtime.ABI12 {
		if ip.Sampling != nil {
			return &runtime.UnsupportedError{Feature: "sampling_params", ABI: m.rt.abi}
		}
		if ip.MaxNewTokens > 0 {
			return &runtime.UnsupportedError{Feature: "max_new_tokens in RKLLMInferParam", ABI: m.rt.abi}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.destroyed {
		return errors.New("fake runtime: run on a destroyed handle")
	}
	if ip.LoraAdapterName != "" && !m.loras[ip.LoraAdapterName] {
		return &runtime.CallError{Func: "rkllm_run", Code: -1}
	}
	return nil
}

func (m *Model) tokens(ip runtime.InferParams) int {
	switch {
	case ip.MaxNewTokens > 0:
		return int(ip.MaxNewTokens)
	case m.param.MaxNewTokens > 0:
		return int(m.param.MaxNewTokens)
	}
	return 4
}

// tag describes the state the run sees; m.mu is held.
func (m *Model) tag(lora string) string {
	var parts []string
	if m.system != "" {
		parts = append(parts, "sys="+m.system)
	}
	if m.tools {
		parts = append(parts, "tools=yes")
	}
	if m.cache != "" {
		parts = append(parts, "cache="+filepath.Base(m.cache))
	}
	if m.xattn > 0 {
		parts = append(parts, "xattn="+strconv.Itoa(m.xattn))
	}
	if lora != "" {
		parts = append(parts, "lora="+lora)
	}
	if len(parts) == 0 {
		return ""
	}
	return "[" + strings.Join(parts, ";") + "] "
}

func inputTokens(in runtime.Input) int {
	switch in.Type {
	case runtime.InputToken:
		return len(in.TokenIDs)
	case runtime.InputEmbed:
		return in.NTokens
	case runtime.InputMultimodal:
		return len(strings.Fields(in.Multimodal.Prompt)) + in.Multimodal.NImageTokens*max(in.Multimodal.NImage, 1)
	}
	return max(len(strings.Fields(in.Prompt)), 1)
}

// hidden returns the fake's last hidden layer: value k is k/4 - 1.
func hidden(tokens int) runtime.Result {
	v := make([]float32, tokens*EmbdSize)
	for k := range v {
		v[k] = float32(k)/4 - 1
	}
	return runtime.Result{HiddenStates: v, EmbdSize: EmbdSize, NumTokens: tokens}
}

// logits returns the fake's logits for token i: value j is i + j/8.
func logits(i int) []float32 {
	v := make([]float32, VocabSize)
	for j := range v {
		v[j] = float32(i) + float32(j)/8
	}
	return v
}

// IsRunning implements worker.Model.
func (m *Model) IsRunning() bool { return m.running.Load() }

// Destroy implements worker.Model.
func (m *Model) Destroy() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.destroyed = true
	return nil
}

// LoadLora implements worker.Model; a path containing "bad" fails.
func (m *Model) LoadLora(a runtime.LoraAdapter) error {
	if strings.Contains(a.Path, "bad") || a.Name == "" {
		return &runtime.CallError{Func: "rkllm_load_lora", Code: -1}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.loras[a.Name] = true
	return nil
}

// LoadPromptCache implements worker.Model.
func (m *Model) LoadPromptCache(path string) error {
	if strings.Contains(path, "bad") {
		return &runtime.CallError{Func: "rkllm_load_prompt_cache", Code: -1}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cache = path
	return nil
}

// ReleasePromptCache implements worker.Model.
func (m *Model) ReleasePromptCache() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cache = ""
	return nil
}

// ClearKVCache implements worker.Model.
func (m *Model) ClearKVCache(_ bool, ranges []runtime.KVRange) error {
	if ranges != nil && len(ranges) != 1 {
		return &runtime.CallError{Func: "rkllm_clear_kv_cache", Code: -1}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if ranges == nil {
		m.kvCache = 0
		return nil
	}
	m.kvCache -= min(m.kvCache, max(ranges[0].End-ranges[0].Start, 0))
	return nil
}

// KVCacheSize implements worker.Model.
func (m *Model) KVCacheSize() ([]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return []int{m.kvCache}, nil
}

// SetChatTemplate implements worker.Model.
func (m *Model) SetChatTemplate(systemPrompt, _, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.system = systemPrompt
	return nil
}

// SetFunctionTools implements worker.Model.
func (m *Model) SetFunctionTools(_, tools, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tools = tools != "" && strings.TrimSpace(tools) != "[]" // an empty array removes them, as in the simulator
	return nil
}

// SetCrossAttnParams implements worker.Model.
func (m *Model) SetCrossAttnParams(p runtime.CrossAttnParams) error {
	if m.param.Extend.UseCrossAttn != 1 {
		return &runtime.CallError{Func: "rkllm_set_cross_attn_params", Code: -1}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.xattn = p.NumTokens
	return nil
}

// SetEmbedWidth implements worker.Model.
func (m *Model) SetEmbedWidth(width int) error {
	if width < 1 {
		return fmt.Errorf("fake runtime: embedding width %d", width)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.width = width
	return nil
}

// LearnEmbedWidth implements worker.Model: the fake's hidden states are EmbdSize wide.
// A model path containing "nowidth" fails to tell, as a runtime whose hidden-layer
// run fails would.
func (m *Model) LearnEmbedWidth(context.Context) (int, error) {
	if strings.Contains(filepath.Base(m.param.ModelPath), "nowidth") {
		return 0, &runtime.CallError{Func: "rkllm_run", Code: -1}
	}
	return EmbdSize, m.SetEmbedWidth(EmbdSize)
}

// SetVocabSize implements worker.Model.
func (m *Model) SetVocabSize(size int) error {
	if size < 1 {
		return fmt.Errorf("fake runtime: vocabulary size %d", size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vocab = size
	return nil
}

// LearnVocabSize implements worker.Model: the fake's logits are VocabSize wide. A
// model path containing "novocab" fails to tell, as a runtime whose logits run fails
// would.
func (m *Model) LearnVocabSize(context.Context) (int, error) {
	if strings.Contains(filepath.Base(m.param.ModelPath), "novocab") {
		return 0, &runtime.CallError{Func: "rkllm_run", Code: -1}
	}
	return VocabSize, m.SetVocabSize(VocabSize)
}

var _ worker.Runtime = (*Runtime)(nil)
