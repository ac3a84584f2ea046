// Package rkllmrpc is the rkllm.* JSON-RPC 2.0 API of rkllm-server: one method per
// function of the RKLLM C API, with params named after the C arguments and struct
// fields, served through the supervisor's queue. docs/jsonrpc.md is its reference.
package rkllmrpc

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Backend is what the methods need from the supervisor.
type Backend interface {
	Enqueue(ctx context.Context, req supervisor.Request) (*supervisor.Ticket, error)
	Abort(owner, id string) ([]string, error)
	IsRunning(ctx context.Context) (bool, error)
	Defaults(ctx context.Context) (runtime.Param, runtime.ABI, error)
	// Loaded returns the parameters of the loaded model.
	Loaded() (runtime.Param, bool)
	// LoadedModel describes the loaded model, whose limits requests are checked against.
	LoadedModel() (supervisor.LoadedModel, bool)
}

// Options configure the methods.
type Options struct {
	// ModelDir is the folder every path a client names must resolve into; empty
	// refuses client paths.
	ModelDir string
	// RequestTimeout bounds a request from queueing to its result; zero means none.
	RequestTimeout time.Duration
	// DefaultsTimeout bounds the wait for the worker's defaults (30s).
	DefaultsTimeout time.Duration
	// Version is reported by rkllm.get_constants.
	Version string
	Log     logr.Logger
}

// Service implements the methods.
type Service struct {
	b    Backend
	opts Options
	dir  modelDir
}

// New returns the service; the model directory must exist.
func New(b Backend, opts Options) (*Service, error) {
	dir, err := newModelDir(opts.ModelDir)
	if err != nil {
		return nil, err
	}
	if opts.DefaultsTimeout <= 0 {
		opts.DefaultsTimeout = 30 * time.Second
	}
	return &Service{b: b, opts: opts, dir: dir}, nil
}

// Method names.
const (
	MethodGetConstants       = "rkllm.get_constants"
	MethodCreateDefaultParam = "rkllm.createDefaultParam"
	MethodInit               = "rkllm.init"
	MethodDestroy            = "rkllm.destroy"
	MethodRun                = "rkllm.run"
	MethodRunAsync           = "rkllm.run_async"
	MethodAbort              = "rkllm.abort"
	MethodIsRunning          = "rkllm.is_running"
	MethodLoadLora           = "rkllm.load_lora"
	MethodLoadPromptCache    = "rkllm.load_prompt_cache"
	MethodReleasePromptCache = "rkllm.release_prompt_cache"
	MethodClearKVCache       = "rkllm.clear_kv_cache"
	MethodGetKVCacheSize     = "rkllm.get_kv_cache_size"
	MethodSetChatTemplate    = "rkllm.set_chat_template"
	MethodSetFunctionTools   = "rkllm.set_function_tools"
	MethodSetCrossAttnParams = "rkllm.set_cross_attn_params"

	// NotifyResult carries each token of a streaming or asynchronous run.
	NotifyResult = "rkllm.result"
	// NotifyDone carries the final result (or error) of an asynchronous run.
	NotifyDone = "rkllm.done"
)

// Register adds every method to d.
func (s *Service) Register(d *jsonrpc.Dispatcher) {
	h := func(f func(context.Context, *jsonrpc.Call) (any, error)) jsonrpc.Handler {
		return jsonrpc.HandlerFunc(f)
	}
	admin := func(f func(context.Context, *jsonrpc.Call) (any, error)) jsonrpc.Handler {
		return jsonrpc.HandlerFunc(func(ctx context.Context, c *jsonrpc.Call) (any, error) {
			if c.Peer == nil || !c.Peer.Admin {
				return nil, notAllowed(c)
			}
			return f(ctx, c)
		})
	}
	d.NeverWaits(MethodGetConstants, MethodCreateDefaultParam, MethodAbort, MethodIsRunning)
	d.Register(MethodGetConstants, h(s.getConstants))
	d.Register(MethodCreateDefaultParam, h(s.createDefaultParam))
	d.Register(MethodInit, admin(s.init))
	d.Register(MethodDestroy, admin(s.destroy))
	d.Register(MethodRun, h(func(ctx context.Context, c *jsonrpc.Call) (any, error) { return s.run(ctx, c, false) }))
	d.Register(MethodRunAsync, h(func(ctx context.Context, c *jsonrpc.Call) (any, error) { return s.run(ctx, c, true) }))
	d.Register(MethodAbort, h(s.abort))
	d.Register(MethodIsRunning, h(s.isRunning))
	d.Register(MethodLoadLora, admin(s.loadLora))
	d.Register(MethodLoadPromptCache, admin(s.loadPromptCache))
	d.Register(MethodReleasePromptCache, admin(s.simple(func(*jsonrpc.Call) (workerproto.Message, error) {
		return &workerproto.ReleasePromptCache{}, nil
	})))
	d.Register(MethodClearKVCache, admin(s.simple(clearKVCache)))
	d.Register(MethodGetKVCacheSize, h(s.getKVCacheSize))
	d.Register(MethodSetChatTemplate, admin(s.simple(setChatTemplate)))
	d.Register(MethodSetFunctionTools, admin(s.simple(setFunctionTools)))
	d.Register(MethodSetCrossAttnParams, admin(s.simple(setCrossAttnParams)))
}

func notAllowed(c *jsonrpc.Call) error {
	transport := "this connection"
	if c.Peer != nil && c.Peer.Transport != "" {
		transport = c.Peer.Transport
	}
	return jsonrpc.ErrNotAllowed.Withf("not allowed: %s changes the server's state and is not allowed over %s; use the Unix socket, or widen --admin", c.Method, transport)
}

// requestContext applies the request timeout.
func (s *Service) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.opts.RequestTimeout > 0 {
		return context.WithTimeout(ctx, s.opts.RequestTimeout)
	}
	return context.WithCancel(ctx)
}

// queued runs one call through the supervisor's queue.
func (s *Service) queued(ctx context.Context, c *jsonrpc.Call, m workerproto.Message) (supervisor.Outcome, error) {
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	t, err := s.b.Enqueue(ctx, supervisor.Request{Owner: owner(c), Msg: m})
	if err != nil {
		return supervisor.Outcome{}, rpcError(err, nil)
	}
	c.Admit()
	out, err := t.Wait()
	return out, rpcError(err, nil)
}

func owner(c *jsonrpc.Call) string {
	if c.Peer == nil {
		return ""
	}
	return c.Peer.ID
}

// simple serves a state call whose C function returns only a status: the result is
// that status, 0 (failures are errors).
func (s *Service) simple(build func(*jsonrpc.Call) (workerproto.Message, error)) func(context.Context, *jsonrpc.Call) (any, error) {
	return func(ctx context.Context, c *jsonrpc.Call) (any, error) {
		m, err := build(c)
		if err != nil {
			return nil, err
		}
		if _, err := s.queued(ctx, c, m); err != nil {
			return nil, err
		}
		return 0, nil
	}
}

func (s *Service) defaults(ctx context.Context) (runtime.Param, runtime.ABI, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.DefaultsTimeout)
	defer cancel()
	p, abi, err := s.b.Defaults(ctx)
	if err != nil {
		return p, abi, jsonrpc.ErrModelNotLoaded.Withf("the runtime is not available: %v", err)
	}
	return p, abi, nil
}

func (s *Service) getConstants(ctx context.Context, c *jsonrpc.Call) (any, error) {
	if err := c.DecodeParams(&struct{}{}); err != nil {
		return nil, err
	}
	cpus := map[string]int{}
	for i := 0; i < 8; i++ {
		cpus["CPU"+strconv.Itoa(i)] = 1 << i
	}
	out := map[string]any{
		"LLMCallState":   callStates.values(),
		"RKLLMInputType": inputTypes.values(),
		"RKLLMInferMode": inferModes.values(),
		"CPUMask":        cpus,
		"server_version": s.opts.Version,
	}
	if _, abi, err := s.b.Defaults(ctxDone(ctx)); err == nil {
		out["abi"] = string(abi)
	}
	return out, nil
}

// ctxDone is a context that has already ended: Defaults then answers only when the
// worker has said Hello before, without waiting.
func ctxDone(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	return ctx
}

func (s *Service) createDefaultParam(ctx context.Context, c *jsonrpc.Call) (any, error) {
	if err := c.DecodeParams(&struct{}{}); err != nil {
		return nil, err
	}
	p, abi, err := s.defaults(ctx)
	if err != nil {
		return nil, err
	}
	return paramOut(p, abi), nil
}

func (s *Service) init(ctx context.Context, c *jsonrpc.Call) (any, error) {
	var ip initParams
	if err := c.DecodeParams(&ip); err != nil {
		return nil, err
	}
	if len(ip.Param) == 0 || string(ip.Param) == "null" {
		return nil, jsonrpc.InvalidParams("param", "is required: an RKLLMParam object, at least {\"model_path\": ...}; rkllm.createDefaultParam gives the defaults")
	}
	def, _, err := s.defaults(ctx)
	if err != nil {
		return nil, err
	}
	wire := paramToJSON(def)
	if def.Extend.NBatch == 0 {
		wire.ExtendParam.NBatch = 1
	}
	if err := strictDecode(ip.Param, &wire); err != nil {
		return nil, prefixField("param", err)
	}
	p := wire.param()
	if err := checkParam(&p); err != nil {
		return nil, err
	}
	if p.ModelPath, err = s.dir.resolve("param.model_path", p.ModelPath, true); err != nil {
		return nil, err
	}
	if _, err := s.queued(ctx, c, &workerproto.Init{Param: p}); err != nil {
		return nil, err
	}
	return 0, nil
}

func (s *Service) destroy(ctx context.Context, c *jsonrpc.Call) (any, error) {
	if err := c.DecodeParams(&struct{}{}); err != nil {
		return nil, err
	}
	if _, err := s.queued(ctx, c, &workerproto.Destroy{}); err != nil {
		return nil, err
	}
	return 0, nil
}

func (s *Service) abort(_ context.Context, c *jsonrpc.Call) (any, error) {
	var p abortParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	if p.RequestID == "" && c.Peer != nil && !c.Peer.Persistent {
		return nil, jsonrpc.InvalidParams("request_id", "is required over HTTP (each request is its own caller): give the request_id of the run to stop")
	}
	ids, err := s.b.Abort(owner(c), p.RequestID)
	if err != nil {
		return nil, rpcError(err, nil)
	}
	if ids == nil {
		ids = []string{}
	}
	return map[string]any{"aborted": ids}, nil
}

func (s *Service) isRunning(ctx context.Context, c *jsonrpc.Call) (any, error) {
	if err := c.DecodeParams(&struct{}{}); err != nil {
		return nil, err
	}
	running, err := s.b.IsRunning(ctx)
	if err != nil {
		return nil, rpcError(err, nil)
	}
	if running {
		return 1, nil
	}
	return 0, nil
}

func (s *Service) loadLora(ctx context.Context, c *jsonrpc.Call) (any, error) {
	var p loraParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	if p.LoraAdapter == nil {
		return nil, jsonrpc.InvalidParams("lora_adapter", "is required: {lora_adapter_path, lora_adapter_name, scale}")
	}
	a := runtime.LoraAdapter{Name: string(p.LoraAdapter.LoraAdapterName), Scale: 1}
	if p.LoraAdapter.Scale != nil {
		a.Scale = *p.LoraAdapter.Scale
	}
	if a.Name == "" {
		return nil, jsonrpc.InvalidParams("lora_adapter.lora_adapter_name", "is required: runs pick the adapter by this name")
	}
	var err error
	if a.Path, err = s.dir.resolve("lora_adapter.lora_adapter_path", string(p.LoraAdapter.LoraAdapterPath), true); err != nil {
		return nil, err
	}
	if _, err := s.queued(ctx, c, &workerproto.LoadLora{Adapter: a}); err != nil {
		return nil, err
	}
	return 0, nil
}

func (s *Service) loadPromptCache(ctx context.Context, c *jsonrpc.Call) (any, error) {
	var p promptCacheParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	path, err := s.dir.resolve("prompt_cache_path", string(p.PromptCachePath), true)
	if err != nil {
		return nil, err
	}
	if _, err := s.queued(ctx, c, &workerproto.LoadPromptCache{Path: path}); err != nil {
		return nil, err
	}
	return 0, nil
}

func (s *Service) getKVCacheSize(ctx context.Context, c *jsonrpc.Call) (any, error) {
	if err := c.DecodeParams(&struct{}{}); err != nil {
		return nil, err
	}
	out, err := s.queued(ctx, c, &workerproto.GetKVCacheSize{})
	if err != nil {
		return nil, err
	}
	sizes := out.CacheSizes
	if sizes == nil {
		sizes = []int32{}
	}
	return map[string]any{"cache_sizes": sizes}, nil
}

func clearKVCache(c *jsonrpc.Call) (workerproto.Message, error) {
	var p clearKVCacheParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	// n_batch is checked when the call executes (supervisor.checkLimits).
	if err := runtime.CheckKVRanges(p.StartPos, p.EndPos, runtime.Limits{}); err != nil {
		return nil, invalidInput(err, false)
	}
	return &workerproto.ClearKVCache{KeepSystemPrompt: bool(p.KeepSystemPrompt), StartPos: p.StartPos, EndPos: p.EndPos}, nil
}

func setChatTemplate(c *jsonrpc.Call) (workerproto.Message, error) {
	var p chatTemplateParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	return &workerproto.SetChatTemplate{SystemPrompt: string(p.SystemPrompt), PromptPrefix: string(p.PromptPrefix), PromptPostfix: string(p.PromptPostfix)}, nil
}

func setFunctionTools(c *jsonrpc.Call) (workerproto.Message, error) {
	var p functionToolsParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	tools := string(p.Tools)
	var s string
	if json.Unmarshal(p.Tools, &s) == nil {
		tools = s
	}
	var arr []json.RawMessage
	if err := json.Unmarshal([]byte(tools), &arr); err != nil {
		return nil, jsonrpc.InvalidParams("tools", "must be a JSON array of OpenAI-style function specs (or a string holding one)")
	}
	if err := runtime.CheckCString("tools", tools); err != nil {
		return nil, invalidInput(err, false)
	}
	if err := runtime.CheckJSONStrings("tools", tools); err != nil {
		return nil, invalidInput(err, false)
	}
	return &workerproto.SetFunctionTools{SystemPrompt: string(p.SystemPrompt), Tools: tools, ToolResponseStr: string(p.ToolResponseStr)}, nil
}

// setCrossAttnParams checks the buffers: the runtime reads num_tokens rows of the
// model's embedding width from each cache.
func setCrossAttnParams(c *jsonrpc.Call) (workerproto.Message, error) {
	var p crossAttnParams
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	x := p.CrossAttnParams
	if x == nil {
		return nil, jsonrpc.InvalidParams("cross_attn_params", "is required: {encoder_k_cache, encoder_v_cache, encoder_mask, encoder_pos, num_tokens}")
	}
	params := runtime.CrossAttnParams{
		EncoderKCache: x.EncoderKCache, EncoderVCache: x.EncoderVCache, EncoderMask: x.EncoderMask,
		EncoderPos: x.EncoderPos, NumTokens: x.NumTokens,
	}
	// The model's width is checked when the call executes (supervisor.checkLimits).
	if err := runtime.CheckCrossAttn(&params, runtime.Limits{}); err != nil {
		return nil, invalidInput(err, false)
	}
	return &workerproto.SetCrossAttnParams{Params: params}, nil
}
