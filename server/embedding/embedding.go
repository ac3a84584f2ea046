// Package embedding turns the last hidden layer of an RKLLM model (a run in
// RKLLM_INFER_GET_LAST_HIDDEN_LAYER mode: one row of hidden-size floats per input
// position) into one embedding vector: pooled over the positions (mean, last or cls)
// and, by default, scaled to length 1.
//
// How useful the vectors are depends on the model: an embedding model was trained so
// that its pooled hidden state places similar texts near each other; a chat model's
// last hidden layer was trained to predict the next token, and its vectors separate
// texts far less well. The server computes both the same way.
package embedding

import (
	"fmt"
	"math"
	"strings"
)

// Pooling is how an input's rows become one vector.
type Pooling string

// Poolings.
const (
	// Mean averages the rows of every position.
	Mean Pooling = "mean"
	// Last takes the row of the last position (decoder embedding models such as
	// Qwen3-Embedding and gte-Qwen2 read the end-of-text token's).
	Last Pooling = "last"
	// CLS takes the row of the first position (BERT-style encoders' [CLS] token).
	CLS Pooling = "cls"
)

// Poolings lists the poolings, for flags and errors.
var Poolings = []Pooling{Mean, Last, CLS}

// ParsePooling reads a pooling name.
func ParsePooling(s string) (Pooling, error) {
	for _, p := range Poolings {
		if strings.EqualFold(s, string(p)) {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown embedding pooling %q: use mean, last or cls", s)
}

// familyPooling is the pooling of the embedding models known in a chat template
// family: Qwen's (Qwen3-Embedding, gte-Qwen2) pool the last token; Gemma's
// (EmbeddingGemma) average.
var familyPooling = map[string]Pooling{
	"chatml": Last, "qwen2": Last, "qwen2.5": Last, "qwen3": Last, "qwen3-no-thinking": Last,
	"gemma": Mean,
}

// DefaultPooling is the pooling for a model rendered with the named chat template
// preset: the family's where known, else mean.
func DefaultPooling(template string) Pooling {
	if p, ok := familyPooling[template]; ok {
		return p
	}
	return Mean
}

// Pooler pools the rows of one input as they are delivered (a runtime may deliver
// them in several parts), holding one vector, not every row.
type Pooler struct {
	how   Pooling
	width int
	sum   []float64 // Mean: the sum of the rows; Last and CLS: the row kept
	rows  int
}

// NewPooler returns a Pooler for how.
func NewPooler(how Pooling) *Pooler { return &Pooler{how: how} }

// Add takes n rows of width floats each (states holds n x width floats).
func (p *Pooler) Add(states []float32, width, n int) error {
	if width <= 0 || n <= 0 || len(states)/width != n || len(states)%width != 0 {
		return fmt.Errorf("hidden states of %d floats are not %d rows of %d", len(states), n, width)
	}
	if p.width == 0 {
		p.width, p.sum = width, make([]float64, width)
	} else if width != p.width {
		return fmt.Errorf("hidden states changed width from %d to %d within one input", p.width, width)
	}
	switch p.how {
	case Last:
		copyRow(p.sum, states[(n-1)*width:])
	case CLS:
		if p.rows == 0 {
			copyRow(p.sum, states[:width])
		}
	default:
		for i, v := range states {
			p.sum[i%width] += float64(v)
		}
	}
	p.rows += n
	return nil
}

func copyRow(dst []float64, row []float32) {
	for j := range dst {
		dst[j] = float64(row[j])
	}
}

// Rows is the number of positions pooled so far.
func (p *Pooler) Rows() int { return p.rows }

// Vector returns the pooled vector, scaled to length 1 when normalize is set (a zero
// vector stays zero); nil when no row was added.
func (p *Pooler) Vector(normalize bool) []float32 {
	if p.rows == 0 {
		return nil
	}
	v := make([]float64, p.width)
	copy(v, p.sum)
	if p.how == Mean {
		for j := range v {
			v[j] /= float64(p.rows)
		}
	}
	if normalize {
		var norm float64
		for _, x := range v {
			norm += x * x
		}
		if norm = math.Sqrt(norm); norm > 0 {
			for j := range v {
				v[j] /= norm
			}
		}
	}
	out := make([]float32, len(v))
	for j, x := range v {
		out[j] = float32(x)
	}
	return out
}
