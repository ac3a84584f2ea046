package rkllmrpc

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

func TestFloatOutRoundTrips(t *testing.T) {
	v := []float32{0, -0.5, 1.0 / 3, 3.4028235e38, 1.4e-45, -2.5e-10, 16777217, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN())}
	b, err := json.Marshal(floatOut{v: v})
	if err != nil {
		t.Fatal(err)
	}
	var back []any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	for i, x := range v[:7] {
		if got := float32(back[i].(float64)); got != x {
			t.Errorf("value %d: %v came back as %v (%s)", i, x, got, b)
		}
	}
	if back[7] != "Infinity" || back[8] != "-Infinity" || back[9] != "NaN" {
		t.Errorf("non-finite values %v", back[7:])
	}
	// base64 in, base64 out.
	b, _ = json.Marshal(floatOut{v: v[:7], base64: true})
	var in floats
	if err := json.Unmarshal(b, &in); err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if in[i] != v[i] {
			t.Errorf("base64 value %d: %v, want %v", i, in[i], v[i])
		}
	}
}

func decodeRun(t *testing.T, params string) (*runParams, error) {
	t.Helper()
	var p runParams
	c := &jsonrpc.Call{Request: &jsonrpc.Request{Method: "rkllm.run", Params: json.RawMessage(params)}}
	if err := c.DecodeParams(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

func TestEnumsAndFlags(t *testing.T) {
	for _, tt := range []struct {
		params string
		mode   runtime.InferMode
		keep   bool
	}{
		{`{"infer_params":{"mode":"RKLLM_INFER_GET_LOGITS","keep_history":1}}`, runtime.InferGetLogits, true},
		{`{"infer_params":{"mode":1,"keep_history":true}}`, runtime.InferGetLastHiddenLayer, true},
		{`{"infer_params":{"keep_history":0}}`, runtime.InferGenerate, false},
	} {
		p, err := decodeRun(t, tt.params)
		if err != nil {
			t.Fatalf("%s: %v", tt.params, err)
		}
		ip := p.InferParams.inferParams()
		if ip.Mode != tt.mode || ip.KeepHistory != tt.keep {
			t.Errorf("%s: %+v", tt.params, ip)
		}
	}
	for params, field := range map[string]string{
		`{"infer_params":{"mode":"GENERATE"}}`:    "infer_params.mode",
		`{"infer_params":{"mode":3}}`:             "infer_params.mode",
		`{"infer_params":{"keep_history":2}}`:     "infer_params.keep_history",
		`{"infer_params":{"max_new_tokens":"x"}}`: "infer_params.max_new_tokens",
	} {
		_, err := decodeRun(t, params)
		var e *jsonrpc.Error
		if !errors.As(err, &e) || e.Code != -32602 || e.Data.(map[string]string)["field"] != field {
			t.Errorf("%s: %v, want invalid params naming %s", params, err, field)
		}
	}
	var m struct{ Mask cpuMask }
	for in, want := range map[string]uint32{`"0xF0"`: 0xF0, `240`: 240, `"15"`: 15} {
		if err := json.Unmarshal([]byte(`{"Mask":`+in+`}`), &m); err != nil || uint32(m.Mask) != want {
			t.Errorf("mask %s: %v %v", in, m.Mask, err)
		}
	}
}

func TestModelDir(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	for _, f := range []string{filepath.Join(root, "m.rkllm"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "m.rkllm"), filepath.Join(root, "alias.rkllm")); err != nil {
		t.Fatal(err)
	}
	d, err := newModelDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path      string
		mustExist bool
		code      int64 // 0: allowed
	}{
		{"m.rkllm", true, 0},
		{filepath.Join(root, "m.rkllm"), true, 0},
		{"alias.rkllm", true, 0},
		{"new-cache.bin", false, 0},
		{"missing.rkllm", true, -32602},
		{"../x", true, -32007},
		{"../x", false, -32007},
		{"link/secret", true, -32007},
		{"link/new", false, -32007},
		{filepath.Join(outside, "secret"), true, -32007},
		{"", true, -32602},
		{".", true, -32602}, // a folder, not a file
	} {
		_, err := d.resolve("f", tt.path, tt.mustExist)
		var code int64
		var e *jsonrpc.Error
		if errors.As(err, &e) {
			code = e.Code
		} else if err != nil {
			code = -1
		}
		if code != tt.code {
			t.Errorf("resolve(%q, mustExist=%v) = %v, want code %d", tt.path, tt.mustExist, err, tt.code)
		}
	}
	if _, err := (modelDir{}).resolve("f", "m.rkllm", true); !errors.Is(err, jsonrpc.ErrNotAllowed) {
		t.Errorf("without --model-dir: %v", err)
	}
}

func TestRunAccumulator(t *testing.T) {
	acc := newRunAcc("r-1", 1, false, false)
	var notes []map[string]any
	acc.notify = func(p any, release func()) { // as the client reads it
		defer release()
		var m map[string]any
		b, _ := json.Marshal(p)
		_ = json.Unmarshal(b, &m)
		notes = append(notes, m)
	}
	for _, d := range []runtime.Delivery{
		{State: runtime.StateNormal, Results: []runtime.Result{{Text: "caf", TokenID: 5}}},
		{State: runtime.StateWaiting, Results: []runtime.Result{{Text: "\xc3", TokenID: 195}}},
		{State: runtime.StateNormal, Results: []runtime.Result{{Text: "\xa9!", TokenID: 169}}},
		{State: runtime.StateFinish, Results: []runtime.Result{{TokenID: -1, Perf: runtime.PerfStat{GenerateTokens: 3}}}},
	} {
		acc.deliver(d)
	}
	if len(notes) != 3 || notes[1]["text"] != "" || notes[1]["state"] != "RKLLM_RUN_WAITING" || notes[2]["text"] != "é!" {
		t.Errorf("notifications %v", notes)
	}
	res := acc.result(supervisor.Outcome{}, 3)
	if res.Text != "café!" || res.TokenCount != 3 || res.FinishReason != FinishLength || res.Perf.GenerateTokens != 3 {
		t.Errorf("result %+v", res)
	}
	if res := acc.result(supervisor.Outcome{Aborted: true}, 0); res.FinishReason != FinishAbort {
		t.Errorf("aborted finish reason %s", res.FinishReason)
	}
	if res := acc.result(supervisor.Outcome{}, 0); res.FinishReason != FinishStop {
		t.Errorf("finish reason without a limit %s", res.FinishReason)
	}
	// A run cut inside a character: the dangling byte is counted but not in the text.
	acc.deliver(runtime.Delivery{State: runtime.StateWaiting, Results: []runtime.Result{{Text: "\xe4", TokenID: 228}}})
	if res := acc.result(supervisor.Outcome{}, 4); res.Text != "café!" || res.TokenCount != 4 || res.FinishReason != FinishLength {
		t.Errorf("cut result %+v", res)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code int64
		want string
	}{
		{&supervisor.CrashError{Exit: &supervisor.ExitInfo{PID: 7, ExitCode: -1, Signal: "SIGSEGV"}}, -32004, "SIGSEGV"},
		{&supervisor.TimeoutError{Reason: "token stall", After: "no token for 1s"}, -32005, "token stall"},
		{supervisor.ErrQueueFull, -32002, "retry later"},
		{supervisor.ErrModelNotLoaded, -32001, "model not loaded"},
		{supervisor.ErrShuttingDown, -32009, "shutting down"},
		{supervisor.ErrAborted, -32006, "aborted"},
		{&runtime.UnsupportedError{Feature: "sampling_params", ABI: runtime.ABI12}, -32602, "not supported by ABI 1.2"},
		{&supervisor.RuntimeError{Err: &runtime.CallError{Func: "rkllm_init", Code: -1}, Reason: "invalid model magic"}, -32003, "invalid model magic"},
		{&runtime.SymbolError{Path: "/usr/lib/librkllmrt.so", Symbol: "rkllm_set_cross_attn_params"}, -32003, "rkllm_set_cross_attn_params"},
		{fmt.Errorf("load lora: %w", runtime.ErrBusy), -32002, "a run is in progress"},
		{fmt.Errorf("run: %w", runtime.ErrDestroyed), -32001, "rkllm.init"},
		{fmt.Errorf("run: %w", runtime.ErrRunFailed), -32003, "RKLLM_RUN_ERROR"},
	} {
		var e *jsonrpc.Error
		if !errors.As(rpcError(tt.err, nil), &e) || e.Code != tt.code || !strings.Contains(e.Message, tt.want) {
			t.Errorf("%v -> %+v, want %d containing %q", tt.err, e, tt.code, tt.want)
		}
		var symbol *runtime.SymbolError
		if errors.As(tt.err, &symbol) {
			if d, _ := e.Data.(map[string]any); d["function"] != symbol.Symbol || d["library"] != symbol.Path {
				t.Errorf("symbol error data %v", e.Data)
			}
		}
	}
}
