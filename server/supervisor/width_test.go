package supervisor

import (
	"context"
	"errors"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/worker/fakeruntime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// TestLoadedModelWidth: the loaded model's embedding width is learned by the worker at
// load (the fake's hidden states are fakeruntime.EmbdSize wide), or taken from
// Options.EmbedWidth; LoadedModel and Status report it with the limits the model's
// requests are checked against, and a run or a cross-attention call that the limits
// refuse never reaches the worker.
func TestLoadedModelWidth(t *testing.T) {
	for name, c := range map[string]struct {
		configured, want int
		model            string
	}{
		"learned":    {0, fakeruntime.EmbdSize, "m.rkllm"},
		"configured": {7, 7, "m.rkllm"},
		"unknown":    {0, 0, "nowidth.rkllm"},
	} {
		t.Run(name, func(t *testing.T) {
			o := withModel(testOptions(t, runtime.ABI13), c.model, func(p *runtime.Param) { p.MaxContextLen = 64 })
			o.EmbedWidth = c.configured
			s := start(t, o)
			waitReady(t, s)
			m, ok := s.LoadedModel()
			if !ok || m.EmbedWidth != c.want || s.Status().EmbedWidth != c.want {
				t.Fatalf("LoadedModel %+v %v, status width %d, want width %d", m, ok, s.Status().EmbedWidth, c.want)
			}
			lim := m.Limits()
			if !lim.Known || lim.MaxContextLen != 64 || lim.NBatch != 1 || lim.EmbedWidth != c.want || lim.ABI != runtime.ABI13 {
				t.Errorf("limits %+v", lim)
			}
			embed := &workerproto.Run{Inputs: []runtime.Input{{Type: runtime.InputEmbed, Embed: make([]float32, 2*fakeruntime.EmbdSize), NTokens: 2}}}
			_, err := call(t, s, embed)
			if c.want == fakeruntime.EmbdSize && err != nil {
				t.Errorf("an embedding of the model's width: %v", err)
			}
			if c.want != fakeruntime.EmbdSize && !errors.Is(err, runtime.ErrInvalidInput) {
				t.Errorf("an embedding of another width (model %d): %v", c.want, err)
			}
			long := &workerproto.Run{Inputs: []runtime.Input{{Type: runtime.InputToken, TokenIDs: make([]int32, 65)}}}
			if _, err := call(t, s, long); !errors.Is(err, runtime.ErrInvalidInput) {
				t.Errorf("65 tokens for max_context_len 64: %v", err)
			}
		})
	}
}

// TestLoadedModelVocabulary: the loaded model's vocabulary size is learned by the
// worker at load (the fake's logits are fakeruntime.VocabSize wide), or taken from
// Options.VocabSize; LoadedModel and Status report it, and a token id past it (or any
// token while it is not known) never reaches the worker.
func TestLoadedModelVocabulary(t *testing.T) {
	for name, c := range map[string]struct {
		configured, want int
		model            string
	}{
		"learned":    {0, fakeruntime.VocabSize, "m.rkllm"},
		"configured": {100, 100, "m.rkllm"},
		"unknown":    {0, 0, "novocab.rkllm"},
	} {
		t.Run(name, func(t *testing.T) {
			o := withModel(testOptions(t, runtime.ABI13), c.model, nil)
			o.VocabSize = c.configured
			s := start(t, o)
			waitReady(t, s)
			m, ok := s.LoadedModel()
			if !ok || m.VocabSize != c.want || s.Status().VocabSize != c.want || m.Limits().VocabSize != c.want {
				t.Fatalf("LoadedModel %+v %v, status vocabulary %d, want %d", m, ok, s.Status().VocabSize, c.want)
			}
			tokens := func(ids ...int32) *workerproto.Run {
				return &workerproto.Run{Inputs: []runtime.Input{{Type: runtime.InputToken, TokenIDs: ids}}}
			}
			_, err := call(t, s, tokens(0, int32(max(c.want-1, 0))))
			if c.want > 0 && err != nil {
				t.Errorf("the vocabulary's first and last ids: %v", err)
			}
			var ie *runtime.InputError
			if c.want == 0 && (!errors.As(err, &ie) || !ie.NoVocab) {
				t.Errorf("a token with the vocabulary unknown: %v", err)
			}
			if _, err := call(t, s, tokens(1, int32(max(c.want, 1)))); !errors.As(err, &ie) || (c.want > 0 && ie.Field != "token_input.input_ids[1]") {
				t.Errorf("an id one past the vocabulary of %d: %v", c.want, err)
			}
		})
	}
}

// TestLimitsWhenTheCallExecutes: a run queued before a LoRA adapter was loaded, but
// executed after, may use it: the names are checked when the run executes.
func TestLimitsWhenTheCallExecutes(t *testing.T) {
	s := start(t, withModel(testOptions(t, runtime.ABI13), "m.rkllm", nil))
	waitReady(t, s)
	ctx := context.Background()
	load, err := s.Enqueue(ctx, Request{Owner: "c", Msg: &workerproto.LoadLora{Adapter: runtime.LoraAdapter{Path: "a.lora", Name: "a", Scale: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	use, err := s.Enqueue(ctx, Request{Owner: "c", ID: "r", Msg: &workerproto.Run{
		Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: "x"}}, Infer: runtime.InferParams{LoraAdapterName: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(t, load); err != nil {
		t.Fatal(err)
	}
	if _, err := wait(t, use); err != nil {
		t.Errorf("a run with the adapter loaded before it executed: %v", err)
	}
	other, _ := startRun(ctx, t, s, "c", "r2", "x", runtime.InferParams{LoraAdapterName: "b"})
	if _, err := wait(t, other.t); !errors.Is(err, runtime.ErrInvalidInput) {
		t.Errorf("a run with an adapter never loaded: %v", err)
	}
}
