package ollama

import (
	"encoding/json"
	"net/http"
	"time"
	"unsafe"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// embed serves POST /api/embed: input a string or an array of strings, one vector each
// from the model's last hidden layer (server/embedding). An empty input only loads the
// model. truncate is accepted, but the server has no tokenizer to cut an input with: an
// input longer than the context fails, naming it.
func (h *Handler) embed(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	m, model, e := h.embedRequest(w, r)
	var req *generation.EmbedRequest
	if e == nil {
		req, e = decodeEmbedInput(m, generation.BudgetFor(r.Context()))
	}
	var loaded generation.Loaded
	if e == nil {
		loaded, e = h.ready(model)
	}
	if e == nil && len(req.Inputs) == 0 {
		h.g.BytesOut(writeJSON(w, http.StatusOK, EmbedResponse{Model: model, Embeddings: [][]float32{}}))
		return
	}
	var out *generation.Embeddings
	if e == nil {
		if e = h.g.CheckInputs(req); e == nil {
			out, e = h.g.Embed(r, loaded, req)
		}
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	h.g.BytesOut(writeJSON(w, http.StatusOK, EmbedResponse{Model: model, Embeddings: out.Vectors,
		TotalDuration: time.Since(start).Nanoseconds(), PromptEvalCount: out.PromptTokens}))
}

// embeddings serves POST /api/embeddings (the older endpoint): one prompt, one vector;
// an empty prompt only loads the model.
func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	m, model, e := h.embedRequest(w, r)
	var prompt string
	if e == nil {
		e = decode(m, "prompt", "prompt", &prompt, "a string")
	}
	var loaded generation.Loaded
	if e == nil {
		loaded, e = h.ready(model)
	}
	if e == nil && prompt == "" {
		h.g.BytesOut(writeJSON(w, http.StatusOK, EmbeddingResponse{Embedding: []float32{}}))
		return
	}
	var out *generation.Embeddings
	if e == nil {
		req := &generation.EmbedRequest{Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: prompt}}, Param: "prompt"}
		if e = h.g.CheckInputs(req); e == nil {
			out, e = h.g.Embed(r, loaded, req)
		}
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	h.g.BytesOut(writeJSON(w, http.StatusOK, EmbeddingResponse{Embedding: out.Vectors[0]}))
}

// embedRequest reads the members both endpoints share: model, and keep_alive and
// options (accepted, no effect on embeddings).
func (h *Handler) embedRequest(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, string, *generation.Error) {
	body, e := h.g.ReadBody(w, r)
	if e != nil {
		return nil, "", e
	}
	m, e := members(body, generation.BudgetFor(r.Context()))
	if e != nil {
		return nil, "", e
	}
	var model string
	var truncate bool
	for _, f := range []struct {
		key  string
		v    any
		what string
	}{{"model", &model, "a string"}, {"truncate", &truncate, "a boolean"}} {
		if e := decode(m, f.key, f.key, f.v, f.what); e != nil {
			return nil, "", e
		}
	}
	return m, model, nil
}

// inputCost is what a decoded input holds besides its text.
const inputCost = int(unsafe.Sizeof(runtime.Input{}))

// decodeEmbedInput reads /api/embed's input and dimensions, paying first for the inputs.
func decodeEmbedInput(m map[string]json.RawMessage, pay generation.Budget) (*generation.EmbedRequest, *generation.Error) {
	req := &generation.EmbedRequest{Param: "input"}
	if e := decode(m, "dimensions", "dimensions", &req.Dimensions, "an integer"); e != nil {
		return nil, e
	}
	raw := m["input"]
	if generation.IsNull(raw) {
		return req, nil
	}
	if e := pay.Pay(len(raw) + generation.Elements(raw)*inputCost); e != nil {
		return nil, e
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		if one != "" {
			req.Inputs = []runtime.Input{{Type: runtime.InputPrompt, Prompt: one}}
		}
		return req, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, generation.Invalid("input", "invalid_type", "input must be a string or an array of strings, not %s", generation.JSONKind(raw))
	}
	for _, s := range list {
		req.Inputs = append(req.Inputs, runtime.Input{Type: runtime.InputPrompt, Prompt: s})
	}
	return req, nil
}
