//go:build cgo

package runtime

/*
#cgo CFLAGS: -std=gnu11 -Wall
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"fmt"
	"regexp"
	"sync/atomic"
	"unsafe"
)

// Library is a runtime library (librkllmrt.so or a simulator of it) loaded with dlopen
// and spoken to in one ABI. It stays loaded for the life of the process: the runtime
// starts threads of its own, which make unloading it unsafe.
type Library struct {
	path string
	abi  ABI
	c    *C.rk_lib // C memory for the life of the process, like the loaded library
	sim  string
	live atomic.Int64
}

// Open loads the runtime library at path (DefaultLibrary when empty) and resolves its
// functions for the given ABI. A path without a slash is looked up like dlopen(3) does
// (LD_LIBRARY_PATH, the ld.so cache, /lib and /usr/lib); a path with one is used as is.
//
// A missing library is an error naming the path and the dynamic linker's reason; a
// missing core function (create-default-param, init, run, destroy, abort, is_running) is
// a *SymbolError. The other functions are looked up too, and a call of one the library
// lacks returns a *SymbolError (older 1.2 runtimes lack some of them).
//
// Open also checks that the library speaks the configured ABI where that can be told:
// a simulator names its ABI, and for the vendor's library rkllm_createDefaultParam's
// defaults must sit at the configured ABI's offsets. A library that clearly speaks the
// other ABI gives an *ABIMismatchError; passing one ABI's structs to the other's library
// would silently misread every field.
func Open(path string, abi ABI) (*Library, error) {
	if path == "" {
		path = DefaultLibrary
	}
	abiNum, err := abiNumber(abi)
	if err != nil {
		return nil, err
	}
	if err := CheckCString("library path", path); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	lib := (*C.rk_lib)(C.calloc(1, C.sizeof_rk_lib))
	var dlErr [1024]C.char
	var missing *C.char
	if C.rk_open(cpath, C.int(abiNum), lib, &dlErr[0], C.size_t(len(dlErr)), &missing) != 0 {
		C.free(unsafe.Pointer(lib))
		if missing != nil {
			return nil, &SymbolError{Path: path, Symbol: C.GoString(missing)}
		}
		return nil, fmt.Errorf("load runtime library %s: %s (set the library path, or add its folder to LD_LIBRARY_PATH)",
			path, C.GoString(&dlErr[0]))
	}
	l := &Library{path: path, abi: abi, c: lib}
	if v := C.rk_sim_version(lib); v != nil {
		l.sim = C.GoString(v)
	}
	if detected := l.detectABI(); detected != "" && detected != abi {
		C.rk_close(lib)
		C.free(unsafe.Pointer(lib))
		return nil, &ABIMismatchError{Path: path, Configured: abi, Detected: detected}
	}
	return l, nil
}

var simABI = regexp.MustCompile(`ABI (1\.[23])\b`)

// detectABI returns the ABI the library evidently speaks, or "" when it cannot tell.
func (l *Library) detectABI() ABI {
	if m := simABI.FindStringSubmatch(l.sim); m != nil {
		return ABI(m[1])
	}
	var looks12, looks13 C.int
	C.rk_probe_abi(l.c, &looks12, &looks13)
	switch {
	case looks12 != 0 && looks13 == 0:
		return ABI12
	case looks13 != 0 && looks12 == 0:
		return ABI13
	}
	return ""
}

func abiNumber(abi ABI) (int, error) {
	switch abi {
	case ABI12:
		return 12, nil
	case ABI13:
		return 13, nil
	}
	_, err := ParseABI(string(abi))
	if err == nil {
		err = fmt.Errorf("runtime ABI %q is not canonical: use ParseABI", abi)
	}
	return 0, err
}

// Path is the path the library was opened with.
func (l *Library) Path() string { return l.path }

// ABI is the ABI the library is spoken to in.
func (l *Library) ABI() ABI { return l.abi }

// Simulator returns the simulator's version string when the library is the project's
// RKLLM simulator (it exports rkllm_sim_version), and "" for any other library. Output
// of a simulator is not a model's and must not be presented as one.
func (l *Library) Simulator() string { return l.sim }

// LiveCAllocations is the number of C allocations the binding holds for this library's
// handles and runs. It is back to its earlier value after every Run returns and after
// Destroy, which tests use to prove that nothing leaks.
func (l *Library) LiveCAllocations() int64 { return l.live.Load() }

// need returns a *SymbolError when the library lacks an optional function.
func (l *Library) need(which C.int) error {
	if C.rk_has(l.c, which) == 0 {
		return &SymbolError{Path: l.path, Symbol: C.GoString(C.rk_optional_name(which))}
	}
	return nil
}

// DefaultParams returns the runtime's defaults (rkllm_createDefaultParam). The runtime
// leaves n_batch undocumented; it is set to 1 when the runtime returns 0.
func (l *Library) DefaultParams() Param {
	a := newArena(&l.live)
	defer a.free()
	var p Param
	if l.abi == ABI12 {
		c := (*C.RKLLM12Param)(a.alloc(C.sizeof_RKLLM12Param))
		C.rk_default_param12(l.c, c)
		p = param12ToGo(c)
	} else {
		c := (*C.RKLLM13Param)(a.alloc(C.sizeof_RKLLM13Param))
		C.rk_default_param13(l.c, c)
		p = param13ToGo(c)
	}
	if p.Extend.NBatch == 0 {
		p.Extend.NBatch = 1
	}
	return p
}

// goStringOrEmpty copies a C string that may be NULL.
func goStringOrEmpty(s *C.char) string {
	if s == nil {
		return ""
	}
	return C.GoString(s)
}

func extendToGo(x *C.RKLLMExtendParam) ExtendParam {
	return ExtendParam{
		BaseDomainID:    int32(x.base_domain_id),
		EmbedFlash:      int8(x.embed_flash),
		EnabledCPUsNum:  int8(x.enabled_cpus_num),
		EnabledCPUsMask: uint32(x.enabled_cpus_mask),
		NBatch:          uint8(x.n_batch),
		UseCrossAttn:    int8(x.use_cross_attn),
	}
}

func fillExtend(x *C.RKLLMExtendParam, e ExtendParam) {
	x.base_domain_id = C.int32_t(e.BaseDomainID)
	x.embed_flash = C.int8_t(e.EmbedFlash)
	x.enabled_cpus_num = C.int8_t(e.EnabledCPUsNum)
	x.enabled_cpus_mask = C.uint32_t(e.EnabledCPUsMask)
	x.n_batch = C.uint8_t(e.NBatch)
	x.use_cross_attn = C.int8_t(e.UseCrossAttn)
}

func param12ToGo(c *C.RKLLM12Param) Param {
	return Param{
		ModelPath:        goStringOrEmpty(c.model_path),
		MaxContextLen:    int32(c.max_context_len),
		MaxNewTokens:     int32(c.max_new_tokens),
		TopK:             int32(c.top_k),
		NKeep:            int32(c.n_keep),
		TopP:             float32(c.top_p),
		Temperature:      float32(c.temperature),
		RepeatPenalty:    float32(c.repeat_penalty),
		FrequencyPenalty: float32(c.frequency_penalty),
		PresencePenalty:  float32(c.presence_penalty),
		Mirostat:         int32(c.mirostat),
		MirostatTau:      float32(c.mirostat_tau),
		MirostatEta:      float32(c.mirostat_eta),
		SkipSpecialToken: bool(c.skip_special_token),
		IsAsync:          bool(c.is_async),
		ImgStart:         goStringOrEmpty(c.img_start),
		ImgEnd:           goStringOrEmpty(c.img_end),
		ImgContent:       goStringOrEmpty(c.img_content),
		Extend:           extendToGo(&c.extend_param),
	}
}

func param13ToGo(c *C.RKLLM13Param) Param {
	return Param{
		ModelPath:        goStringOrEmpty(c.model_path),
		MaxContextLen:    int32(c.max_context_len),
		MaxNewTokens:     int32(c.max_new_tokens),
		TopK:             int32(c.top_k),
		NKeep:            int32(c.n_keep),
		TopP:             float32(c.top_p),
		Temperature:      float32(c.temperature),
		RepeatPenalty:    float32(c.repeat_penalty),
		FrequencyPenalty: float32(c.frequency_penalty),
		PresencePenalty:  float32(c.presence_penalty),
		Mirostat:         int32(c.mirostat),
		MirostatTau:      float32(c.mirostat_tau),
		MirostatEta:      float32(c.mirostat_eta),
		SkipSpecialToken: bool(c.skip_special_token),
		IgnoreEOSToken:   bool(c.ignore_eos_token),
		IsAsync:          bool(c.is_async),
		Extend:           extendToGo(&c.extend_param),
	}
}

// checkParam rejects what the binding cannot pass on, with what to do instead.
func (l *Library) checkParam(p Param) error {
	if p.ModelPath == "" {
		return fmt.Errorf("param: ModelPath is empty: set it to the model file")
	}
	if p.Extend.NBatch < 1 || p.Extend.NBatch > 100 {
		return fmt.Errorf("param: Extend.NBatch is %d: it must be 1..100 (1 unless you run batches)", p.Extend.NBatch)
	}
	if p.IsAsync {
		return fmt.Errorf("param: IsAsync is set: the binding runs synchronously (Run blocks; call it from a goroutine)")
	}
	if l.abi == ABI12 && p.IgnoreEOSToken {
		return &UnsupportedError{Feature: "ignore_eos_token", ABI: l.abi}
	}
	if l.abi == ABI13 && (p.ImgStart != "" || p.ImgEnd != "" || p.ImgContent != "") {
		return &UnsupportedError{Feature: "img_start/img_end/img_content in the init params (1.3 takes them in MultimodalInput)", ABI: l.abi}
	}
	if err := CheckFile(p.ModelPath); err != nil {
		return inputErr("param.model_path", "%v", err)
	}
	for _, f := range []struct{ name, v string }{
		{"model_path", p.ModelPath}, {"img_start", p.ImgStart}, {"img_end", p.ImgEnd}, {"img_content", p.ImgContent},
	} {
		if err := CheckCString("param."+f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// cParam writes p into C memory owned by keep (it lives as long as the handle: the
// runtime may keep pointers to the struct and its strings).
func (l *Library) cParam(keep *arena, p Param) unsafe.Pointer {
	optStr := func(s string) *C.char {
		if s == "" {
			return nil
		}
		return keep.str(s)
	}
	if l.abi == ABI12 {
		c := (*C.RKLLM12Param)(keep.alloc(C.sizeof_RKLLM12Param))
		c.model_path = keep.str(p.ModelPath)
		c.max_context_len = C.int32_t(p.MaxContextLen)
		c.max_new_tokens = C.int32_t(p.MaxNewTokens)
		c.top_k = C.int32_t(p.TopK)
		c.n_keep = C.int32_t(p.NKeep)
		c.top_p = C.float(p.TopP)
		c.temperature = C.float(p.Temperature)
		c.repeat_penalty = C.float(p.RepeatPenalty)
		c.frequency_penalty = C.float(p.FrequencyPenalty)
		c.presence_penalty = C.float(p.PresencePenalty)
		c.mirostat = C.int32_t(p.Mirostat)
		c.mirostat_tau = C.float(p.MirostatTau)
		c.mirostat_eta = C.float(p.MirostatEta)
		c.skip_special_token = C.bool(p.SkipSpecialToken)
		c.is_async = C.bool(p.IsAsync)
		c.img_start = optStr(p.ImgStart)
		c.img_end = optStr(p.ImgEnd)
		c.img_content = optStr(p.ImgContent)
		fillExtend(&c.extend_param, p.Extend)
		return unsafe.Pointer(c)
	}
	c := (*C.RKLLM13Param)(keep.alloc(C.sizeof_RKLLM13Param))
	c.model_path = keep.str(p.ModelPath)
	c.max_context_len = C.int32_t(p.MaxContextLen)
	c.max_new_tokens = C.int32_t(p.MaxNewTokens)
	c.top_k = C.int32_t(p.TopK)
	c.n_keep = C.int32_t(p.NKeep)
	c.top_p = C.float(p.TopP)
	c.temperature = C.float(p.Temperature)
	c.repeat_penalty = C.float(p.RepeatPenalty)
	c.frequency_penalty = C.float(p.FrequencyPenalty)
	c.presence_penalty = C.float(p.PresencePenalty)
	c.mirostat = C.int32_t(p.Mirostat)
	c.mirostat_tau = C.float(p.MirostatTau)
	c.mirostat_eta = C.float(p.MirostatEta)
	c.skip_special_token = C.bool(p.SkipSpecialToken)
	c.ignore_eos_token = C.bool(p.IgnoreEOSToken)
	c.is_async = C.bool(p.IsAsync)
	fillExtend(&c.extend_param, p.Extend)
	return unsafe.Pointer(c)
}

// Init loads a model (rkllm_init) and returns its handle. It is slow on a board
// (seconds to a minute). A failure is a *CallError; the runtime logs the reason to
// stderr. The param struct, its strings and (ABI 1.3) the callback struct stay in C
// memory until Destroy.
func (l *Library) Init(p Param) (*Handle, error) {
	if err := l.checkParam(p); err != nil {
		return nil, err
	}
	keep := newArena(&l.live)
	cparam := l.cParam(keep, p)
	var cb *C.RKLLM13Callback
	if l.abi == ABI13 {
		cb = (*C.RKLLM13Callback)(keep.alloc(C.sizeof_RKLLM13Callback))
	}
	var ch C.LLMHandle
	if ret := C.rk_init(l.c, &ch, cparam, cb); ret != 0 || ch == nil {
		keep.free()
		return nil, fmt.Errorf("load model %s (the runtime logs the reason on stderr): %w",
			p.ModelPath, &CallError{Func: "rkllm_init", Code: int(ret)})
	}
	runCtx := (*C.rk_run_ctx)(keep.alloc(C.sizeof_rk_run_ctx))
	return &Handle{lib: l, c: ch, nBatch: int(p.Extend.NBatch), maxCtx: int(p.MaxContextLen), keep: keep, runCtx: runCtx}, nil
}
