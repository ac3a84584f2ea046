package generation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/embedding"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// EmbedRequest is a checked batch of inputs to embed.
type EmbedRequest struct {
	// Inputs are texts (runtime.InputPrompt) or token ids (runtime.InputToken).
	Inputs []runtime.Input
	// Dimensions, when > 0, is the vector length the client asked for: refused unless
	// it is the model's embedding width (vectors are never cut or padded).
	Dimensions int
	// Param names the inputs in errors ("input").
	Param string
}

// at names input i in errors: the member alone when it holds one input.
func (req *EmbedRequest) at(i int) string {
	if len(req.Inputs) == 1 {
		return req.Param
	}
	return fmt.Sprintf("%s[%d]", req.Param, i)
}

// Embeddings are a request's vectors, in the order of its inputs.
type Embeddings struct {
	Vectors [][]float32
	// PromptTokens counts the positions prefilled for all inputs.
	PromptTokens int
}

// CheckInputs checks the inputs of req before anything runs: at least one, at most
// MaxInputs, none empty, token ids not negative.
func (s *Service) CheckInputs(req *EmbedRequest) *Error {
	n := len(req.Inputs)
	switch {
	case n == 0:
		return Invalid(req.Param, "invalid_value", "Invalid '%s': give at least one input to embed.", req.Param)
	case n > s.opts.Embedding.MaxInputs:
		return Invalid(req.Param, "invalid_value", "Invalid '%s': %d inputs, more than the %d one request may embed (--max-embedding-inputs): send them in several requests.",
			req.Param, n, s.opts.Embedding.MaxInputs)
	case req.Dimensions < 0:
		return Invalid("dimensions", "invalid_value", "Invalid 'dimensions': %d must be positive.", req.Dimensions)
	}
	for i, in := range req.Inputs {
		at := req.at(i)
		if in.Type == runtime.InputToken {
			if len(in.TokenIDs) == 0 {
				return Invalid(at, "invalid_value", "Invalid '%s': an empty token array has nothing to embed.", at)
			}
			for j, id := range in.TokenIDs {
				if id < 0 {
					return Invalid(at, "invalid_value", "Invalid '%s[%d]': token id %d is negative.", at, j, id)
				}
			}
		} else if in.Prompt == "" {
			return Invalid(at, "invalid_value", "Invalid '%s': an empty string has nothing to embed.", at)
		} else if e := NoNUL(at, in.Prompt); e != nil {
			return e
		}
	}
	return nil
}

// Embed runs the inputs of req (checked by CheckInputs) as one queued request: one
// prefill each in the runtime's last-hidden-layer mode, pooled and normalized as
// configured. The conversation the KV cache held is dropped (see
// supervisor.Embedding).
func (s *Service) Embed(r *http.Request, loaded Loaded, req *EmbedRequest) (*Embeddings, *Error) {
	if w := loaded.EmbedWidth; req.Dimensions > 0 && w > 0 && req.Dimensions != w {
		return nil, dimensionsError(req.Dimensions, w)
	}
	if e := holdForEmbeddings(r.Context(), req, loaded.EmbedWidth); e != nil {
		return nil, e
	}
	ctx, cancel := s.requestContext(r.Context())
	defer cancel()
	b := &batch{poolers: make([]*embedding.Pooler, len(req.Inputs)), how: s.opts.Embedding.Pooling}
	id := NewID("embd-")
	t, err := s.b.Enqueue(ctx, supervisor.Request{Owner: "http/" + id, ID: id, Embedding: &supervisor.Embedding{Inputs: req.Inputs, Deliver: b.deliver}})
	if err != nil {
		return nil, FromBackend(err)
	}
	if _, err := t.Wait(); err != nil {
		return nil, s.embedFailed(req, err)
	}
	if b.err != nil {
		return nil, Internal("The runtime's hidden states cannot be pooled: %v.", b.err)
	}
	out := &Embeddings{Vectors: make([][]float32, len(req.Inputs)), PromptTokens: b.tokens}
	for i, p := range b.poolers {
		if p == nil || p.Rows() == 0 {
			return nil, Internal("The runtime delivered no hidden states for input %d.", i)
		}
		out.Vectors[i] = p.Vector(!s.opts.Embedding.Raw)
	}
	// The width is checked again against the vectors: a runtime that could not tell it at
	// load (0) still gets a dimensions it does not have refused.
	width := len(out.Vectors[0])
	if req.Dimensions > 0 && req.Dimensions != width {
		return nil, dimensionsError(req.Dimensions, width)
	}
	return out, nil
}

func dimensionsError(asked, width int) *Error {
	return Unsupported("dimensions", "Invalid 'dimensions': %d, but this model's embeddings have %d (its hidden size), and the server neither cuts nor pads them: leave 'dimensions' out or send %d.",
		asked, width, width)
}

// batch pools the hidden states of a batch's inputs as the executor delivers them.
type batch struct {
	how     embedding.Pooling
	poolers []*embedding.Pooler
	tokens  int
	err     error
}

func (b *batch) deliver(i int, d runtime.Delivery) {
	if len(d.Results) == 0 || b.err != nil {
		return
	}
	r := d.Results[0]
	switch d.State {
	case runtime.StateFinish:
		b.tokens += int(r.Perf.PrefillTokens)
	case runtime.StateNormal:
		if len(r.HiddenStates) == 0 {
			return
		}
		if b.poolers[i] == nil {
			b.poolers[i] = embedding.NewPooler(b.how)
		}
		b.err = b.poolers[i].Add(r.HiddenStates, r.EmbdSize, r.NumTokens)
	}
}

// embedFailed explains a failed batch, naming the input when one failed.
func (s *Service) embedFailed(req *EmbedRequest, err error) *Error {
	var in *supervisor.InputError
	if !errors.As(err, &in) {
		return FromBackend(err)
	}
	at := req.at(in.Input)
	var tooLarge *workerproto.ResultTooLargeError
	var rt *supervisor.RuntimeError
	switch {
	case errors.As(err, &tooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Param: Strp(at), Code: Strp("request_too_large"),
			Message: fmt.Sprintf("'%s' is too long to embed: its hidden states take %d bytes, over the %d bytes one message from the worker carries (--max-frame-bytes): shorten it, or raise the limit.",
				at, tooLarge.Size, tooLarge.Limit)}
	case errors.As(err, &rt) && strings.Contains(rt.Reason, "max context"):
		return Invalid(at, "context_length_exceeded", "'%s' is longer than the model's context (%s): shorten it.", at, rt.Reason)
	case errors.Is(err, runtime.ErrInvalidInput):
		return Invalid(at, "invalid_value", "'%s' cannot be given to the model: %v.", at, in.Err)
	}
	e := FromBackend(in.Err)
	e.Message = at + ": " + e.Message
	return e
}

// embedCost is what one float of a vector holds while a request is served: its pooled
// sum (float64), the vector (float32), and its text in the response.
const embedCost = 8 + 4 + 20

// holdForEmbeddings pays for the vectors of a request before it runs, when the width is
// known; the inputs were paid for when they were decoded.
func holdForEmbeddings(ctx context.Context, req *EmbedRequest, width int) *Error {
	return BudgetFor(ctx).Pay(len(req.Inputs) * width * embedCost)
}
