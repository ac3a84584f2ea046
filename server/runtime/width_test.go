package runtime

import (
	"errors"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// TestLearnEmbedWidth: the runtime reports a model's embedding width only in a
// hidden-layer result. LearnEmbedWidth finds it with one run of one token per batch
// entry, on both ABIs, and leaves the handle as Init left it: the KV cache empty and the
// next run's output the same as on a fresh handle.
func TestLearnEmbedWidth(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		for _, nBatch := range []uint8{1, 3} {
			model, m := writeModel(t, func(m *simulator.Model) { m.HiddenSize = 24 })
			p := params(lib, model)
			p.Extend.NBatch = nBatch
			inputs := make([]Input, nBatch)
			for i := range inputs {
				inputs[i] = Input{Type: InputPrompt, Prompt: "hello"}
			}
			fresh := collect(t, newHandle(t, lib, p), inputs, InferParams{}, nil)
			fresh.finish(t)

			h := newHandle(t, lib, p)
			if h.EmbedWidth() != 0 {
				t.Fatalf("n_batch %d: width %d before learning it", nBatch, h.EmbedWidth())
			}
			w, err := h.LearnEmbedWidth(t.Context())
			if err != nil || w != m.HiddenSize || h.EmbedWidth() != m.HiddenSize {
				t.Fatalf("n_batch %d: LearnEmbedWidth = %d, %v (EmbedWidth %d), want %d", nBatch, w, err, h.EmbedWidth(), m.HiddenSize)
			}
			if sizes, err := h.KVCacheSize(); err != nil || len(sizes) != int(nBatch) || sizes[0] != 0 {
				t.Errorf("n_batch %d: KV cache after learning: %v, %v, want empty", nBatch, sizes, err)
			}
			after := collect(t, h, inputs, InferParams{}, nil)
			after.finish(t)
			if after.text(0) != fresh.text(0) {
				t.Errorf("n_batch %d: after learning the width the reply is %q, on a fresh handle %q", nBatch, after.text(0), fresh.text(0))
			}
			// The learned width is what rows are checked against.
			in := Input{Type: InputEmbed, Embed: embedding(2, w, 1), NTokens: 2}
			batch := make([]Input, nBatch)
			for i := range batch {
				batch[i] = in
			}
			collect(t, h, batch, InferParams{}, nil).finish(t)
			batch[0].Embed = embedding(2, w-1, 1)
			if r := collect(t, h, batch, InferParams{}, nil); !errors.Is(r.err, ErrInvalidInput) || len(r.deliveries) != 0 {
				t.Errorf("n_batch %d: rows of width %d with a model of width %d: %v", nBatch, w-1, w, r.err)
			}
		}
	})
}

// TestEmbeddingsNeedAWidth: until the width is known, nothing that carries
// embeddings reaches the runtime, whose reads it could not bound.
func TestEmbeddingsNeedAWidth(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		h := newHandle(t, lib, params(lib, model))
		in := Input{Type: InputEmbed, Embed: embedding(1, m.HiddenSize, 1), NTokens: 1}
		if r := collect(t, h, []Input{in}, InferParams{}, nil); !errors.Is(r.err, ErrInvalidInput) || len(r.deliveries) != 0 {
			t.Errorf("an embedding before the width is known: %v", r.err)
		}
		for _, bad := range []int{0, -1, maxEmbedWidth + 1} {
			if err := h.SetEmbedWidth(bad); err == nil {
				t.Errorf("SetEmbedWidth(%d) succeeded", bad)
			}
		}
		if err := h.SetEmbedWidth(m.HiddenSize); err != nil {
			t.Fatal(err)
		}
		collect(t, h, []Input{in}, InferParams{}, nil).finish(t)
	})
}

// TestLearnVocabSize: the runtime reports a model's vocabulary size only with logits.
// LearnVocabSize finds it with one run of one token per batch entry in logits mode, on
// both ABIs, and leaves the handle as Init left it; ids are then checked against it.
func TestLearnVocabSize(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		for _, nBatch := range []uint8{1, 2} {
			model, m := writeModel(t, nil)
			p := params(lib, model)
			p.Extend.NBatch = nBatch
			batch := func(ids ...int32) []Input {
				in := make([]Input, nBatch)
				for i := range in {
					in[i] = Input{Type: InputToken, TokenIDs: ids}
				}
				return in
			}
			h := newHandle(t, lib, p)
			if r := collect(t, h, batch(300), InferParams{}, nil); !errors.Is(r.err, ErrInvalidInput) || len(r.deliveries) != 0 {
				t.Errorf("n_batch %d: a token before the vocabulary size is known: %v", nBatch, r.err)
			}
			v, err := h.LearnVocabSize(t.Context())
			if err != nil || v != m.VocabSize() || h.VocabSize() != v {
				t.Fatalf("n_batch %d: LearnVocabSize = %d, %v (VocabSize %d), want %d", nBatch, v, err, h.VocabSize(), m.VocabSize())
			}
			if sizes, err := h.KVCacheSize(); err != nil || len(sizes) != int(nBatch) || sizes[0] != 0 {
				t.Errorf("n_batch %d: KV cache after learning: %v, %v, want empty", nBatch, sizes, err)
			}
			collect(t, h, batch(0, int32(v-1)), InferParams{}, nil).finish(t)
			var ie *InputError
			if r := collect(t, h, batch(0, int32(v)), InferParams{}, nil); !errors.As(r.err, &ie) || ie.Field != "token_input.input_ids[1]" || len(r.deliveries) != 0 {
				t.Errorf("n_batch %d: id %d with a vocabulary of %d: %v", nBatch, v, v, r.err)
			}
			for _, bad := range []int{0, -1, maxVocabSize + 1} {
				if err := h.SetVocabSize(bad); err == nil {
					t.Errorf("SetVocabSize(%d) succeeded", bad)
				}
			}
		}
	})
}
