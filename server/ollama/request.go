package ollama

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// Requests are read as Ollama reads them: members it does not know are ignored (clients
// send their own, such as Open WebUI's), the members it knows are checked, and a value
// the runtime cannot honour is refused with a 400 saying why.

// members splits a request body into its members, as slices of the body (nothing is
// copied), paying first for the map that holds them.
func members(body []byte, pay generation.Budget) (map[string]json.RawMessage, *generation.Error) {
	if json.Valid(body) {
		n := 0
		generation.EachMember(body, func(_, _ []byte) { n++ })
		if e := pay.Pay(n * generation.MemberCost); e != nil {
			return nil, e
		}
		m := make(map[string]json.RawMessage, n)
		if generation.EachMember(body, func(key, value []byte) { m[generation.MemberName(key)] = value }) {
			return m, nil
		}
	}
	// Say what is wrong the way encoding/json does.
	var m map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, generation.Invalid("", "", "the request body must be a JSON object: %v", errText(err))
	}
	return nil, generation.Invalid("", "", "the request body must be one JSON object: there is data after it")
}

func errText(err error) string {
	if err == nil {
		return "it is null"
	}
	return err.Error()
}

// decode decodes the member key of m into v; a mismatch is a 400 naming it (as param).
func decode(m map[string]json.RawMessage, key, param string, v any, what string) *generation.Error {
	raw, ok := m[key]
	if !ok || generation.IsNull(raw) {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return generation.Invalid(param, "invalid_type", "%s must be %s, not %s", param, what, generation.JSONKind(raw))
	}
	return nil
}

// common are the members /api/chat and /api/generate share.
type common struct {
	model    string
	stream   bool
	think    *bool
	sampling generation.Sampling
}

// decodeCommon reads the shared members: model, stream (true when left out), options,
// think, and the members that are accepted without effect (keep_alive) or refused when
// they ask for what the runtime cannot do (format, logprobs, template).
func decodeCommon(m map[string]json.RawMessage, pay generation.Budget) (*common, *generation.Error) {
	c := &common{stream: true}
	var logprobs bool
	var template string
	for _, f := range []struct {
		key  string
		v    any
		what string
	}{{"model", &c.model, "a string"}, {"stream", &c.stream, "a boolean"}, {"logprobs", &logprobs, "a boolean"}, {"template", &template, "a string"}} {
		if e := decode(m, f.key, f.key, f.v, f.what); e != nil {
			return nil, e
		}
	}
	switch {
	case logprobs:
		return nil, generation.Unsupported("logprobs", "logprobs is not supported: the RKLLM runtime reports no log probabilities")
	case template != "":
		return nil, generation.Unsupported("template", "template is not supported: this server renders every conversation with its chat template (--chat-template); leave template out")
	}
	if e := checkFormat(m["format"]); e != nil {
		return nil, e
	}
	if raw := m["keep_alive"]; !generation.IsNull(raw) && raw[0] != '"' && raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		return nil, generation.Invalid("keep_alive", "invalid_type", "keep_alive must be a duration (\"5m\") or a number of seconds, not %s", generation.JSONKind(raw))
	}
	var e *generation.Error
	if c.think, e = decodeThink(m["think"]); e != nil {
		return nil, e
	}
	if c.sampling, e = decodeOptions(m["options"], pay); e != nil {
		return nil, e
	}
	return c, nil
}

// checkFormat refuses structured output: the runtime cannot constrain decoding.
func checkFormat(raw json.RawMessage) *generation.Error {
	var s string
	if generation.IsNull(raw) || json.Unmarshal(raw, &s) == nil && s == "" {
		return nil
	}
	what := "a JSON schema"
	if s == "json" {
		what = "\"json\""
	}
	return generation.Unsupported("format", "format %s is not supported: the RKLLM runtime cannot constrain what the model writes; leave format out and ask for JSON in the prompt", what)
}

func decodeThink(raw json.RawMessage) (*bool, *generation.Error) {
	if generation.IsNull(raw) {
		return nil, nil
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return &b, nil
	}
	var level string
	if json.Unmarshal(raw, &level) == nil {
		return nil, generation.Unsupported("think", "think %q is not supported: the RKLLM runtime has no reasoning effort levels; send think true or false", level)
	}
	return nil, generation.Invalid("think", "invalid_type", "think must be a boolean, not %s", generation.JSONKind(raw))
}

// Options: sampling members map to the run's parameters (generation.Sampling, with
// the same rules per runtime ABI as /v1/); options that configure how a model loads
// are the RKLLMModel resource's and have no effect here; sampling methods the runtime
// lacks are refused unless they have their neutral value.
var (
	loadOptions = map[string]bool{"numa": true, "num_ctx": true, "num_batch": true, "num_gpu": true, "main_gpu": true, "low_vram": true,
		"f16_kv": true, "logits_all": true, "vocab_only": true, "use_mmap": true, "use_mlock": true, "embedding_only": true, "num_thread": true,
		"num_keep": true, "repeat_last_n": true, "penalize_newline": true}
	neutralOptions = map[string]float64{"min_p": 0, "typical_p": 1, "tfs_z": 1}
)

// decodeOptions reads the options member (valid JSON, from the body).
func decodeOptions(raw json.RawMessage, pay generation.Budget) (generation.Sampling, *generation.Error) {
	var s generation.Sampling
	if generation.IsNull(raw) {
		return s, nil
	}
	var m map[string]json.RawMessage
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		m, _ = members(t, pay)
	}
	if m == nil {
		return s, generation.Invalid("options", "invalid_type", "options must be an object, not %s", generation.JSONKind(raw))
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if e := setOption(&s, k, m[k]); e != nil {
			return s, e
		}
	}
	return s, s.Validate(optionName)
}

// optionName is a sampling member's name in Ollama's request.
func optionName(member string) string { return "options." + member }

// setOption reads one option into s.
func setOption(s *generation.Sampling, key string, raw json.RawMessage) *generation.Error {
	if generation.IsNull(raw) || loadOptions[key] {
		return nil
	}
	param := optionName(key)
	if neutral, ok := neutralOptions[key]; ok {
		v, e := number(raw, param)
		if e == nil && *v != neutral {
			e = generation.Unsupported(param, "%s is not supported: the RKLLM runtime has no %s sampling; leave it out (or send %g)", param, key, neutral)
		}
		return e
	}
	if dst := numberOptions(s)[key]; dst != nil {
		v, e := number(raw, param)
		*dst = v
		return e
	}
	var e *generation.Error
	switch key {
	case "top_k":
		s.TopK, e = integer(raw, param)
	case "mirostat":
		s.Mirostat, e = integer(raw, param)
	case "num_predict":
		s.MaxTokens, e = numPredict(raw, param)
	case "stop":
		s.Stop, e = stops(raw, param)
	case "seed":
		e = generation.Unsupported(param, "%s cannot be honoured: the RKLLM runtime has no sampling seed; leave it out", param)
	}
	return e
}

// numberOptions are the options that are numbers, and the members they set.
func numberOptions(s *generation.Sampling) map[string]**float64 {
	return map[string]**float64{"temperature": &s.Temperature, "top_p": &s.TopP, "repeat_penalty": &s.RepeatPenalty,
		"presence_penalty": &s.PresencePenalty, "frequency_penalty": &s.FrequencyPenalty, "mirostat_tau": &s.MirostatTau,
		"mirostat_eta": &s.MirostatEta}
}

// number reads a number option.
func number(raw json.RawMessage, param string) (*float64, *generation.Error) {
	var v float64
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, generation.Invalid(param, "invalid_type", "%s must be a number, not %s", param, generation.JSONKind(raw))
	}
	return &v, nil
}

// integer reads an integer option (a number with no fraction, as Ollama accepts 40.0).
func integer(raw json.RawMessage, param string) (*int, *generation.Error) {
	v, e := number(raw, param)
	if e != nil {
		return nil, e
	}
	if *v != math.Trunc(*v) || math.Abs(*v) > 1<<31 {
		return nil, generation.Invalid(param, "invalid_type", "%s must be an integer, not %g", param, *v)
	}
	n := int(*v)
	return &n, nil
}

// numPredict reads num_predict: a positive limit, or -1 (no limit) or -2 (until the
// context is full), which keep the loaded model's max_new_tokens.
func numPredict(raw json.RawMessage, param string) (*int, *generation.Error) {
	n, e := integer(raw, param)
	switch {
	case e != nil:
		return nil, e
	case *n == -1 || *n == -2:
		return nil, nil
	case *n < 1:
		return nil, generation.Invalid(param, "invalid_value", "%s must be positive, or -1 for no limit: got %d", param, *n)
	}
	return n, nil
}

// stops reads stop: an array of strings (or one string), none empty.
func stops(raw json.RawMessage, param string) ([]string, *generation.Error) {
	var list []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		list = []string{one}
	} else if err := json.Unmarshal(raw, &list); err != nil {
		return nil, generation.Invalid(param, "invalid_type", "%s must be an array of strings, not %s", param, generation.JSONKind(raw))
	}
	for i, s := range list {
		if s == "" {
			return nil, generation.Invalid(fmt.Sprintf("%s[%d]", param, i), "invalid_value", "%s[%d] is empty: a stop sequence must not be", param, i)
		}
	}
	return list, nil
}
