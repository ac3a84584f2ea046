package openai

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"unsafe"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// inputCost is what a decoded input holds besides its text (runtime.Input), with its
// vector and pooling state bounded by the model's width, paid when the width is known.
const inputCost = int(unsafe.Sizeof(runtime.Input{}))

var embeddingFields = set("model", "input", "encoding_format", "dimensions", "user")

// embeddings serves POST /v1/embeddings: one vector per input, from the model's last
// hidden layer (server/embedding).
func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		h.fail(w, e)
		return
	}
	req, model, base64Out, e := decodeEmbeddings(body, generation.BudgetFor(r.Context()))
	if e == nil {
		e = h.g.CheckInputs(req)
	}
	var loaded generation.Loaded
	if e == nil {
		loaded, e = h.ready(model)
	}
	var out *generation.Embeddings
	if e == nil {
		out, e = h.g.Embed(r, loaded, req)
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	list := EmbeddingList{Object: "list", Data: make([]Embedding, len(out.Vectors)), Model: model,
		Usage: EmbeddingUsage{PromptTokens: out.PromptTokens, TotalTokens: out.PromptTokens}}
	for i, v := range out.Vectors {
		list.Data[i] = Embedding{Object: "embedding", Index: i, Embedding: v}
		if base64Out {
			list.Data[i].Embedding = encodeFloats(v)
		}
	}
	h.g.BytesOut(writeJSON(w, http.StatusOK, list))
}

// decodeEmbeddings reads an embeddings request: input a string, an array of strings, an
// array of token ids or an array of those.
func decodeEmbeddings(body []byte, pay payFunc) (req *generation.EmbedRequest, model string, base64Out bool, e *Error) {
	m, e := fields(body, "", pay)
	if e != nil {
		return nil, "", false, e
	}
	if e := checkKnown(m, "", embeddingFields, nil); e != nil {
		return nil, "", false, e
	}
	req = &generation.EmbedRequest{Param: "input"}
	var format string
	for _, f := range []struct {
		key  string
		v    any
		what string
	}{{"model", &model, "a string"}, {"encoding_format", &format, "a string"}, {"dimensions", &req.Dimensions, "an integer"}} {
		if e := decodeField(m, f.key, f.key, f.v, f.what); e != nil {
			return nil, "", false, e
		}
	}
	if raw, ok := m["dimensions"]; ok && !isNull(raw) && req.Dimensions < 1 {
		return nil, "", false, invalid("dimensions", "invalid_value", "Invalid 'dimensions': %d must be positive (leave it out for the model's own width).", req.Dimensions)
	}
	switch format {
	case "", "float":
	case "base64":
		base64Out = true
	default:
		return nil, "", false, invalid("encoding_format", "invalid_value", "Invalid value: '%s'. Supported values are: 'float' and 'base64'.", format)
	}
	if req.Inputs, e = decodeInput(m["input"], pay); e != nil {
		return nil, "", false, e
	}
	return req, model, base64Out, nil
}

// decodeInput reads OpenAI's input member, paying first for the inputs it decodes:
// their text or token ids and an input each.
func decodeInput(raw json.RawMessage, pay payFunc) ([]runtime.Input, *Error) {
	if isNull(raw) {
		return nil, invalid("input", "missing_required_parameter", "Missing required parameter: 'input'.")
	}
	if e := pay.Pay(2*len(raw) + generation.Elements(raw)*inputCost); e != nil {
		return nil, e
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []runtime.Input{{Type: runtime.InputPrompt, Prompt: one}}, nil
	}
	var texts []string
	if json.Unmarshal(raw, &texts) == nil {
		out := make([]runtime.Input, len(texts))
		for i, t := range texts {
			out[i] = runtime.Input{Type: runtime.InputPrompt, Prompt: t}
		}
		return out, nil
	}
	var tokens []int32
	if json.Unmarshal(raw, &tokens) == nil {
		return []runtime.Input{{Type: runtime.InputToken, TokenIDs: tokens}}, nil
	}
	var lists [][]int32
	if json.Unmarshal(raw, &lists) == nil {
		out := make([]runtime.Input, len(lists))
		for i, t := range lists {
			out[i] = runtime.Input{Type: runtime.InputToken, TokenIDs: t}
		}
		return out, nil
	}
	return nil, invalid("input", "invalid_type", "Invalid type for 'input': expected a string, an array of strings, an array of token ids or an array of those, but got %s.", jsonKind(raw))
}

// encodeFloats is base64 of the vector's little-endian float32 bytes, as OpenAI sends
// encoding_format "base64".
func encodeFloats(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return base64.StdEncoding.EncodeToString(b)
}
