package generation

import (
	"fmt"
	"math"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// Sampling holds a request's sampling members, by the runtime's names; nil members
// keep the loaded model's values.
type Sampling struct {
	MaxTokens        *int
	Temperature      *float64 // 0-2
	TopP             *float64 // 0-1
	TopK             *int     // 0..MaxInt32
	FrequencyPenalty *float64 // -2..2
	PresencePenalty  *float64 // -2..2
	RepeatPenalty    *float64 // 0.01-10
	Mirostat         *int     // 0, 1 or 2
	MirostatTau      *float64 // >= 0
	MirostatEta      *float64 // >= 0
	Stop             []string
}

// Sampling members, as the runtime (and, with dashes, the server's flags) names them.
const (
	MemberTemperature      = "temperature"
	MemberTopP             = "top_p"
	MemberTopK             = "top_k"
	MemberFrequencyPenalty = "frequency_penalty"
	MemberPresencePenalty  = "presence_penalty"
	MemberRepeatPenalty    = "repeat_penalty"
	MemberMirostat         = "mirostat"
	MemberMirostatTau      = "mirostat_tau"
	MemberMirostatEta      = "mirostat_eta"
)

// Names gives a sampling member's name in the API's request, for errors.
type Names func(member string) string

// Validate checks the members' ranges.
func (s *Sampling) Validate(name Names) *Error {
	for _, c := range []struct {
		member string
		v      *float64
		lo, hi float64
	}{{MemberTemperature, s.Temperature, 0, 2}, {MemberTopP, s.TopP, 0, 1}, {MemberFrequencyPenalty, s.FrequencyPenalty, -2, 2},
		{MemberPresencePenalty, s.PresencePenalty, -2, 2}, {MemberRepeatPenalty, s.RepeatPenalty, 0.01, 10},
		{MemberMirostatTau, s.MirostatTau, 0, 100}, {MemberMirostatEta, s.MirostatEta, 0, 100}} {
		if c.v != nil && (math.IsNaN(*c.v) || *c.v < c.lo || *c.v > c.hi) {
			p := name(c.member)
			return Invalid(p, "invalid_value", "Invalid '%s': %g is out of range: it must be between %g and %g.", p, *c.v, c.lo, c.hi)
		}
	}
	switch {
	case s.TopK != nil && (*s.TopK < 0 || *s.TopK > math.MaxInt32): // the runtime's top_k is an int32
		p := name(MemberTopK)
		return Invalid(p, "invalid_value", "Invalid '%s': %d is out of range: it must be between 0 and %d.", p, *s.TopK, math.MaxInt32)
	case s.Mirostat != nil && (*s.Mirostat < 0 || *s.Mirostat > 2):
		p := name(MemberMirostat)
		return Invalid(p, "invalid_value", "Invalid '%s': %d must be 0 (off), 1 or 2.", p, *s.Mirostat)
	}
	return nil
}

// InferParams turns the members into per-run parameters for the loaded model. ABI 1.3
// takes sampling per run (the members not given keep the loaded model's values); 1.2
// takes it only at init, so a member that differs from the loaded value is refused.
// MaxTokens on 1.2 is enforced by the server (the run is stopped there).
func (s *Sampling) InferParams(l Loaded, name Names) (runtime.InferParams, *Error) {
	loaded := l.Param
	sp := runtime.SamplingParams{
		TopK: loaded.TopK, TopP: loaded.TopP, Temperature: loaded.Temperature, RepeatPenalty: loaded.RepeatPenalty,
		FrequencyPenalty: loaded.FrequencyPenalty, PresencePenalty: loaded.PresencePenalty,
		Mirostat: loaded.Mirostat, MirostatTau: loaded.MirostatTau, MirostatEta: loaded.MirostatEta,
	}
	set := false
	for _, f := range []struct {
		member string
		v      *float64
		dst    *float32
	}{{MemberTemperature, s.Temperature, &sp.Temperature}, {MemberTopP, s.TopP, &sp.TopP}, {MemberFrequencyPenalty, s.FrequencyPenalty, &sp.FrequencyPenalty},
		{MemberPresencePenalty, s.PresencePenalty, &sp.PresencePenalty}, {MemberRepeatPenalty, s.RepeatPenalty, &sp.RepeatPenalty},
		{MemberMirostatTau, s.MirostatTau, &sp.MirostatTau}, {MemberMirostatEta, s.MirostatEta, &sp.MirostatEta}} {
		if f.v == nil || float32(*f.v) == *f.dst {
			continue
		}
		if l.ABI != runtime.ABI13 {
			return runtime.InferParams{}, perRunSampling(name(f.member), f.member, fmt.Sprintf("%g", *f.dst), l.ABI)
		}
		*f.dst, set = float32(*f.v), true
	}
	for _, f := range []struct {
		member string
		v      *int
		dst    *int32
	}{{MemberTopK, s.TopK, &sp.TopK}, {MemberMirostat, s.Mirostat, &sp.Mirostat}} {
		if f.v == nil || int32(*f.v) == *f.dst { //nolint:gosec // small counts, validated
			continue
		}
		if l.ABI != runtime.ABI13 {
			return runtime.InferParams{}, perRunSampling(name(f.member), f.member, fmt.Sprint(*f.dst), l.ABI)
		}
		*f.dst, set = int32(*f.v), true //nolint:gosec // as above
	}
	ip := runtime.InferParams{Mode: runtime.InferGenerate}
	if set {
		ip.Sampling = &sp
	}
	if s.MaxTokens != nil && l.ABI == runtime.ABI13 {
		ip.MaxNewTokens = int32(min(*s.MaxTokens, math.MaxInt32)) //nolint:gosec // bounded above
	}
	return ip, nil
}

func perRunSampling(param, member, loadedValue string, abi runtime.ABI) *Error {
	return Unsupported(param, "'%s' cannot be set per request with runtime ABI %s: runtime 1.2.x takes sampling parameters only when the model loads, and this model was loaded with %s = %s. Leave '%s' out (or send %s), or configure it on the server (--%s), or use runtime 1.3.",
		param, abi, member, loadedValue, param, loadedValue, strings.ReplaceAll(member, "_", "-"))
}
