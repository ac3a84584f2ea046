package rkllmrpc

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// typeError reports a JSON value that does not fit a parameter type; encoding/json adds
// the member's path and jsonrpc.ParamsError quotes the type's DescribeJSON.
func typeError(data []byte, t any) error {
	v := strings.TrimSpace(string(data))
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	var kind string
	switch {
	case strings.HasPrefix(v, `"`):
		kind = "string"
	case strings.HasPrefix(v, "{"):
		kind = "object"
	case strings.HasPrefix(v, "["):
		kind = "array"
	case v == "true" || v == "false":
		kind = "boolean"
	case v == "null":
		kind = "null"
	default:
		kind = "number"
	}
	return &json.UnmarshalTypeError{Value: kind + " " + v, Type: reflect.TypeOf(t)}
}

// cBool is a C boolean or int flag: true, false, 1 or 0.
type cBool bool

// DescribeJSON implements jsonrpc.Describer.
func (cBool) DescribeJSON() string { return "true, false, 1 or 0" }

// UnmarshalJSON implements json.Unmarshaler.
func (b *cBool) UnmarshalJSON(data []byte) error {
	switch string(bytes.TrimSpace(data)) {
	case "true", "1":
		*b = true
	case "false", "0":
		*b = false
	case "null":
	default:
		return typeError(data, *b)
	}
	return nil
}

// cString is a string the runtime reads as a C string, which ends at its first NUL
// byte: one with a NUL character (\u0000) is refused, naming the member, because the
// runtime would silently read only what comes before it.
type cString string

// DescribeJSON implements jsonrpc.Describer.
func (cString) DescribeJSON() string {
	return `a string without NUL characters (\u0000; the runtime reads it as a C string, which ends at the first NUL)`
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *cString) UnmarshalJSON(data []byte) error {
	var v string
	if err := json.Unmarshal(data, &v); err != nil {
		return typeError(data, *s)
	}
	if i := strings.IndexByte(v, 0); i >= 0 {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("string with a NUL character at byte %d", i), Type: reflect.TypeOf(*s)}
	}
	*s = cString(v)
	return nil
}

// enumeration is a C enum: its constants by name, each with its number.
type enumeration struct {
	cType string
	names []string // index = value
}

func (e *enumeration) describe() string {
	return fmt.Sprintf("one of %s (or its number 0-%d)", strings.Join(e.names, ", "), len(e.names)-1)
}

// parse accepts a constant's name or its number.
func (e *enumeration) parse(data []byte) (int32, bool) {
	var name string
	if json.Unmarshal(data, &name) == nil {
		for i, n := range e.names {
			if n == name {
				return int32(i), true
			}
		}
		return 0, false
	}
	var n int64
	if json.Unmarshal(data, &n) == nil && n >= 0 && n < int64(len(e.names)) {
		return int32(n), true
	}
	return 0, false
}

// values is the enumeration as a JSON object for rkllm.get_constants.
func (e *enumeration) values() map[string]int {
	m := make(map[string]int, len(e.names))
	for i, n := range e.names {
		m[n] = i
	}
	return m
}

var (
	callStates = &enumeration{"LLMCallState", []string{"RKLLM_RUN_NORMAL", "RKLLM_RUN_WAITING", "RKLLM_RUN_FINISH", "RKLLM_RUN_ERROR"}}
	inputTypes = &enumeration{"RKLLMInputType", []string{"RKLLM_INPUT_PROMPT", "RKLLM_INPUT_TOKEN", "RKLLM_INPUT_EMBED", "RKLLM_INPUT_MULTIMODAL"}}
	inferModes = &enumeration{"RKLLMInferMode", []string{"RKLLM_INFER_GENERATE", "RKLLM_INFER_GET_LAST_HIDDEN_LAYER", "RKLLM_INFER_GET_LOGITS"}}
)

// stateName is the C name of a call state.
func stateName(s int32) string {
	if s >= 0 && int(s) < len(callStates.names) {
		return callStates.names[s]
	}
	return strconv.Itoa(int(s))
}

// inputType is an RKLLMInputType given by name or number.
type inputType int32

// DescribeJSON implements jsonrpc.Describer.
func (inputType) DescribeJSON() string { return inputTypes.describe() }

// UnmarshalJSON implements json.Unmarshaler.
func (t *inputType) UnmarshalJSON(data []byte) error {
	v, ok := inputTypes.parse(data)
	if !ok {
		return typeError(data, *t)
	}
	*t = inputType(v)
	return nil
}

// inferMode is an RKLLMInferMode given by name or number.
type inferMode int32

// DescribeJSON implements jsonrpc.Describer.
func (inferMode) DescribeJSON() string { return inferModes.describe() }

// UnmarshalJSON implements json.Unmarshaler.
func (m *inferMode) UnmarshalJSON(data []byte) error {
	v, ok := inferModes.parse(data)
	if !ok {
		return typeError(data, *m)
	}
	*m = inferMode(v)
	return nil
}

// cpuMask is enabled_cpus_mask: a number, or a string in hex ("0xF0") or decimal.
type cpuMask uint32

// DescribeJSON implements jsonrpc.Describer.
func (cpuMask) DescribeJSON() string {
	return `a CPU bit mask: a number or a string such as "0xF0"`
}

// UnmarshalJSON implements json.Unmarshaler.
func (m *cpuMask) UnmarshalJSON(data []byte) error {
	var s string
	if json.Unmarshal(data, &s) == nil {
		v, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return typeError(data, *m)
		}
		*m = cpuMask(v)
		return nil
	}
	var v uint32
	if err := json.Unmarshal(data, &v); err != nil {
		return typeError(data, *m)
	}
	*m = cpuMask(v)
	return nil
}

// floats is a float32 array given as a JSON array of numbers or as a base64 string of
// little-endian float32 values (compact for embeddings).
type floats []float32

// DescribeJSON implements jsonrpc.Describer.
func (floats) DescribeJSON() string {
	return "an array of numbers, or a base64 string of little-endian float32 values"
}

// UnmarshalJSON implements json.Unmarshaler.
func (f *floats) UnmarshalJSON(data []byte) error {
	var s string
	if json.Unmarshal(data, &s) == nil {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b)%4 != 0 {
			return typeError(data, *f)
		}
		v := make([]float32, len(b)/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		*f = v
		return nil
	}
	var v []float32
	if err := json.Unmarshal(data, &v); err != nil {
		return typeError(data, *f)
	}
	*f = v
	return nil
}

// floatOut writes a float32 array the way the client asked: a JSON array whose numbers
// are printed so that they parse back to the same float32 (non-finite values, which
// JSON lacks, as the strings "NaN", "Infinity" and "-Infinity"), or a base64 string of
// little-endian float32 values.
type floatOut struct {
	v      []float32
	base64 bool
}

// MarshalJSON implements json.Marshaler.
func (f floatOut) MarshalJSON() ([]byte, error) {
	return f.appendJSON(make([]byte, 0, encodedLen(len(f.v), f.base64))), nil
}
