package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
)

func TestOpenMissingLibraryNamesThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "librkllmrt.so")
	_, err := Open(path, ABI13)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open(%s) = %v, want an error naming the path", path, err)
	}
}

func TestOpenLibraryWithoutTheSymbols(t *testing.T) {
	// libm is a real shared library that is not a runtime.
	_, err := Open("libm.so.6", ABI12)
	var se *SymbolError
	if !errors.As(err, &se) || se.Symbol != "rkllm_createDefaultParam" || se.Path != "libm.so.6" {
		t.Fatalf("Open(libm.so.6) = %v, want a SymbolError for rkllm_createDefaultParam", err)
	}
	if !strings.Contains(err.Error(), "libm.so.6") || !strings.Contains(err.Error(), "rkllm_createDefaultParam") {
		t.Errorf("error %q does not name the path and the symbol", err)
	}
}

func TestOpenRejectsUnknownABI(t *testing.T) {
	if _, err := Open(simLibPath(t, ABI13), ABI("1.1")); err == nil || !strings.Contains(err.Error(), "1.1") {
		t.Fatalf("Open with ABI 1.1 = %v, want an error naming it", err)
	}
}

// TestOpenDetectsTheOtherABI covers both ways a library's ABI is told: the simulator
// names it, and (for libraries that do not, like the vendor's) the defaults of
// rkllm_createDefaultParam must sit at the configured ABI's offsets.
func TestOpenDetectsTheOtherABI(t *testing.T) {
	cases := []struct {
		name string
		file func(ABI) string
	}{
		{"simulator", func(a ABI) string { return "librkllmrt-sim-" + string(a) + ".so" }},
		{"library without a version symbol", func(a ABI) string { return ".sim-build/librkllmrt-anon-" + string(a) + ".so" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, built := range abis {
				other := ABI12
				if built == ABI12 {
					other = ABI13
				}
				path := simtest.File(t, c.file(built))
				lib, err := Open(path, built)
				if err != nil {
					t.Fatalf("Open(%s, %s): %v", path, built, err)
				}
				if got := lib.DefaultParams(); got.TopK != 40 || got.Extend.EnabledCPUsNum != 4 {
					t.Errorf("DefaultParams of %s: %+v", path, got)
				}
				_, err = Open(path, other)
				var me *ABIMismatchError
				if !errors.As(err, &me) || me.Detected != built || me.Configured != other {
					t.Fatalf("Open(%s, %s) = %v, want ABIMismatchError detecting %s", path, other, err, built)
				}
			}
		})
	}
}

func TestSimulatorNamesItself(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		if s := lib.Simulator(); !strings.Contains(s, "RKLLM simulator") || !strings.Contains(s, string(lib.ABI())) {
			t.Errorf("Simulator() = %q", s)
		}
		anon, err := Open(simtest.File(t, ".sim-build/librkllmrt-anon-"+string(lib.ABI())+".so"), lib.ABI())
		if err != nil {
			t.Fatal(err)
		}
		if anon.Simulator() != "" {
			t.Errorf("a library without rkllm_sim_version reports Simulator() = %q", anon.Simulator())
		}
	})
}

func TestDefaultParams(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		got := lib.DefaultParams()
		want := Param{
			MaxContextLen: 512, MaxNewTokens: -1, TopK: 40, NKeep: -1, TopP: 0.9, Temperature: 0.8,
			RepeatPenalty: 1.1, MirostatTau: 5, MirostatEta: 0.1, SkipSpecialToken: true,
			// n_batch is 0 in the runtime's defaults; the binding makes it 1.
			Extend: ExtendParam{EmbedFlash: 1, EnabledCPUsNum: 4, EnabledCPUsMask: 0xF0, NBatch: 1},
		}
		if got != want {
			t.Errorf("DefaultParams() =\n%+v, want\n%+v", got, want)
		}
	})
}

func TestInitFailures(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		notModel := filepath.Join(t.TempDir(), "not-a-model.rkllm")
		if err := os.WriteFile(notModel, []byte("GGUF\x03\x00"), 0o644); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name   string
			mutate func(*Param)
			setenv [2]string
		}{
			{"wrong magic", func(p *Param) { p.ModelPath = notModel }, [2]string{}},
			{"missing model file", func(p *Param) { p.ModelPath = notModel + ".missing" }, [2]string{}},
			{"context above the model's limit", func(p *Param) { p.MaxContextLen = 8192 }, [2]string{}},
			{"RKLLM_SIM_INIT_FAIL", nil, [2]string{"RKLLM_SIM_INIT_FAIL", "1"}},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if c.setenv[0] != "" {
					t.Setenv(c.setenv[0], c.setenv[1])
				}
				p := params(lib, model)
				if c.mutate != nil {
					c.mutate(&p)
				}
				before := lib.LiveCAllocations()
				_, err := lib.Init(p)
				var ce *CallError
				if !errors.As(err, &ce) || ce.Func != "rkllm_init" || ce.Code != -1 {
					t.Fatalf("Init = %v, want CallError{rkllm_init, -1}", err)
				}
				if !strings.Contains(err.Error(), p.ModelPath) {
					t.Errorf("error %q does not name the model", err)
				}
				if after := lib.LiveCAllocations(); after != before {
					t.Errorf("a failed Init holds %d C allocations", after-before)
				}
			})
		}
	})
}

func TestInitRejectsWhatTheBindingCannotPass(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, _ := writeModel(t, nil)
		cases := []struct {
			name        string
			mutate      func(*Param)
			unsupported bool
		}{
			{"no model path", func(p *Param) { p.ModelPath = "" }, false},
			{"n_batch 0", func(p *Param) { p.Extend.NBatch = 0 }, false},
			{"n_batch 101", func(p *Param) { p.Extend.NBatch = 101 }, false},
			{"async", func(p *Param) { p.IsAsync = true }, false},
			{"NUL in the path", func(p *Param) { p.ModelPath += "\x00x" }, false},
		}
		if lib.ABI() == ABI12 {
			cases = append(cases, struct {
				name        string
				mutate      func(*Param)
				unsupported bool
			}{"ignore_eos_token", func(p *Param) { p.IgnoreEOSToken = true }, true})
		} else {
			cases = append(cases, struct {
				name        string
				mutate      func(*Param)
				unsupported bool
			}{"img_start at init", func(p *Param) { p.ImgStart = "<img>" }, true})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				p := params(lib, model)
				c.mutate(&p)
				_, err := lib.Init(p)
				if err == nil {
					t.Fatal("Init succeeded")
				}
				if got := errors.Is(err, ErrNotSupported); got != c.unsupported {
					t.Errorf("Init = %v; errors.Is(ErrNotSupported) = %v, want %v", err, got, c.unsupported)
				}
			})
		}
	})
}

func TestInitDelay(t *testing.T) {
	lib := simLib(t, ABI13)
	model, _ := writeModel(t, nil)
	t.Setenv("RKLLM_SIM_INIT_DELAY_MS", "40")
	start := time.Now()
	newHandle(t, lib, params(lib, model))
	if took := time.Since(start); took < 40*time.Millisecond {
		t.Errorf("Init took %v with RKLLM_SIM_INIT_DELAY_MS=40", took)
	}
}

func TestModelFileRoundTrip(t *testing.T) {
	path, m := writeModel(t, func(m *simulator.Model) { m.Name = "round-trip" })
	got, err := simulator.ReadModel(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "round-trip" || len(got.Vocab) != len(m.Vocab) || got.ChatTemplate != m.ChatTemplate {
		t.Errorf("ReadModel = %+v", got)
	}
	bad := m
	bad.ByteFallback = []string{"a"}
	if err := simulator.WriteModel(filepath.Join(t.TempDir(), "bad.rkllm"), bad); err == nil {
		t.Error("WriteModel accepted an ASCII byte_fallback entry")
	}
}
