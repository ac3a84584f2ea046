package runtime

import (
	"errors"
	"math"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// bareHandle has no chat template and no system prompt, so a run's cache positions are
// exactly its input, starting at 0.
func bareHandle(t *testing.T, lib *Library) (*Handle, simulator.Model) {
	t.Helper()
	model, m := writeModel(t, nil)
	h := newHandle(t, lib, params(lib, model))
	if err := h.SetChatTemplate("", "", ""); err != nil {
		t.Fatal(err)
	}
	if err := h.SetEmbedWidth(m.HiddenSize); err != nil {
		t.Fatal(err)
	}
	if err := h.SetVocabSize(m.VocabSize()); err != nil {
		t.Fatal(err)
	}
	return h, m
}

// arrayRun runs mode and returns the one result that carries the arrays.
func arrayRun(t *testing.T, h *Handle, inputs []Input, mode InferMode) []Result {
	t.Helper()
	r := collect(t, h, inputs, InferParams{Mode: mode}, nil)
	r.finish(t)
	var out []Result
	for _, d := range r.deliveries {
		if d.State == StateNormal && (d.Results[0].HiddenStates != nil || d.Results[0].Logits != nil) {
			if out != nil {
				t.Fatal("more than one delivery with arrays")
			}
			out = d.Results
		}
	}
	if out == nil {
		t.Fatalf("no delivery with arrays in %d deliveries", len(r.deliveries))
	}
	return out
}

// rowSource gives the expected value source of each cache position: a token id, or
// (for embedding positions) the input row.
type rowSource struct {
	token int32
	row   []float32
}

func tokenRows(ids []int32) []rowSource {
	out := make([]rowSource, len(ids))
	for i, id := range ids {
		out[i].token = id
	}
	return out
}

func embedRows(embed []float32, width int) []rowSource {
	var out []rowSource
	for i := 0; i < len(embed); i += width {
		out = append(out, rowSource{row: embed[i : i+width]})
	}
	return out
}

func checkHidden(t *testing.T, res Result, rows []rowSource, width int) {
	t.Helper()
	if res.NumTokens != len(rows) || res.EmbdSize != width || len(res.HiddenStates) != len(rows)*width {
		t.Fatalf("hidden states %d x %d (%d floats), want %d x %d", res.NumTokens, res.EmbdSize, len(res.HiddenStates), len(rows), width)
	}
	for pos, src := range rows {
		for j := 0; j < width; j++ {
			want := simulator.HiddenValue(src.token, pos, j)
			if src.row != nil {
				want = simulator.EmbedHiddenValue(src.row[j], pos)
			}
			if got := res.HiddenStates[pos*width+j]; got != want {
				t.Fatalf("hidden[%d][%d] = %v, want %v", pos, j, got, want)
			}
		}
	}
}

func checkLogits(t *testing.T, res Result, rows []rowSource, vocab int) {
	t.Helper()
	if res.NumTokens != len(rows) || res.VocabSize != vocab || len(res.Logits) != len(rows)*vocab {
		t.Fatalf("logits %d x %d (%d floats), want %d x %d", res.NumTokens, res.VocabSize, len(res.Logits), len(rows), vocab)
	}
	for pos, src := range rows {
		for v := 0; v < vocab; v++ {
			want := simulator.LogitValue(src.token, pos, v)
			if src.row != nil {
				want = simulator.EmbedLogitValue(src.row, pos, v)
			}
			if got := res.Logits[pos*vocab+v]; got != want {
				t.Fatalf("logits[%d][%d] = %v, want %v", pos, v, got, want)
			}
		}
	}
}

func embedding(n, width int, scale float32) []float32 {
	e := make([]float32, n*width)
	for i := range e {
		e[i] = float32(i%37)*scale - 2 // small dyadic values: exact in float32
	}
	return e
}

// TestEveryInputTypeAndMode checks every float that crosses the boundary, both ways, for
// each input type in the hidden-layer and logits modes, and that generation accepts
// each input type.
func TestEveryInputTypeAndMode(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		h, m := bareHandle(t, lib)
		w := m.HiddenSize
		text := "the quick café 日本"
		ids := []int32{300, 257, 258, 12, 256}
		emb := embedding(3, w, 0.25)
		img := embedding(2*2, w, 0.5) // two images of two tokens
		mm := MultimodalInput{Prompt: "<image><image>", ImageEmbed: img, NImageTokens: 2, NImage: 2, ImageWidth: 8, ImageHeight: 8}
		cases := []struct {
			name string
			in   Input
			rows []rowSource
		}{
			{"prompt", Input{Type: InputPrompt, Prompt: text}, tokenRows(m.Tokenize(text))},
			{"tokens", Input{Type: InputToken, TokenIDs: ids}, tokenRows(ids)},
			{"embedding", Input{Type: InputEmbed, Embed: emb, NTokens: 3}, embedRows(emb, w)},
			{"multimodal", Input{Type: InputMultimodal, Multimodal: mm}, embedRows(img, w)},
		}
		if lib.ABI() == ABI13 {
			vid := embedding(1*3*1, w, 0.125) // one video of three one-token frames
			vm := MultimodalInput{Prompt: "<image><video>", ImageEmbed: img[:2*w], NImageTokens: 2, NImage: 1,
				VideoEmbed: vid, NVideo: 1, NFramePerVideo: 3, NFrameTokens: 1}
			cases = append(cases, struct {
				name string
				in   Input
				rows []rowSource
			}{"multimodal with video", Input{Type: InputMultimodal, Multimodal: vm}, append(embedRows(img[:2*w], w), embedRows(vid, w)...)})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				checkHidden(t, arrayRun(t, h, []Input{c.in}, InferGetLastHiddenLayer)[0], c.rows, w)
				checkLogits(t, arrayRun(t, h, []Input{c.in}, InferGetLogits)[0], c.rows, m.VocabSize())
				gen := collect(t, h, []Input{c.in}, InferParams{}, nil)
				gen.finish(t)
				if len(gen.tokens(0)) == 0 {
					t.Error("generation from this input delivered no tokens")
				}
			})
		}
	})
}

func TestBatchArrays(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		model, m := writeModel(t, nil)
		p := params(lib, model)
		p.Extend.NBatch = 2
		h := newHandle(t, lib, p)
		if err := h.SetChatTemplate("", "", ""); err != nil {
			t.Fatal(err)
		}
		if err := h.SetVocabSize(m.VocabSize()); err != nil {
			t.Fatal(err)
		}
		a, b := []int32{260, 261, 262}, []int32{300}
		res := arrayRun(t, h, []Input{{Type: InputToken, TokenIDs: a}, {Type: InputToken, TokenIDs: b}}, InferGetLastHiddenLayer)
		checkHidden(t, res[0], tokenRows(a), m.HiddenSize)
		checkHidden(t, res[1], tokenRows(b), m.HiddenSize)
	})
}

// TestReleaseOutput: returning ReleaseOutput (1.3) makes the simulator free the output
// buffer at once, which its stats report; on 1.2 the binding turns it into Continue.
func TestReleaseOutput(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		stats := statsFile(t)
		h, _ := bareHandle(t, lib)
		r := collect(t, h, []Input{{Type: InputToken, TokenIDs: []int32{1, 2}}}, InferParams{Mode: InferGetLogits},
			func(int, Delivery) CallbackAction { return ReleaseOutput })
		r.finish(t)
		runs := statsEvents(t, stats, "run")
		if len(runs) != 1 {
			t.Fatalf("%d run events, want 1", len(runs))
		}
		want := map[ABI]string{ABI12: "0", ABI13: "1"}[lib.ABI()]
		if runs[0]["released"] != want || runs[0]["outcome"] != "finished" {
			t.Errorf("run event %v, want released=%s outcome=finished", runs[0], want)
		}
	})
}

func TestInputErrors(t *testing.T) {
	eachABI(t, func(t *testing.T, lib *Library) {
		h, m := bareHandle(t, lib)
		// Refused by the binding before anything reaches C: each of these would make the
		// runtime read past what it was given (issue 12 crashed the worker with some).
		w := m.HiddenSize
		two := "<image><image>"
		for name, in := range map[string]Input{
			"no tokens":                     {Type: InputToken},
			"embedding not n x w":           {Type: InputEmbed, Embed: make([]float32, 5), NTokens: 2},
			"rows one float wide":           {Type: InputEmbed, Embed: make([]float32, 3), NTokens: 3},
			"n_tokens over max_context_len": {Type: InputEmbed, Embed: make([]float32, 5000*w), NTokens: 5000},
			"image count mismatch":          {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image>", NImage: 2, NImageTokens: 1, ImageEmbed: make([]float32, 32)}},
			"image without floats":          {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image>", NImage: 1, NImageTokens: 1}},
			"image rows wrap to -2":         {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: two, NImage: 2, NImageTokens: math.MaxInt64, ImageEmbed: []float32{1, 2}}},
			"image rows wrap to 0":          {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image><image><image><image>", NImage: 4, NImageTokens: 1 << 62, ImageEmbed: []float32{1, 2}}},
			"image rows one float wide":     {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: two, NImage: 2, NImageTokens: 1, ImageEmbed: []float32{1, 2}}},
			"negative image tokens":         {Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image>", NImage: 1, NImageTokens: -1, ImageEmbed: make([]float32, w)}},
			"NUL in the prompt":             {Type: InputPrompt, Prompt: "a\x00b"},
			"NUL in the role":               {Type: InputPrompt, Prompt: "a", Role: "user\x00"},
			"unknown input type":            {Type: InputType(9)},
			"empty multimodal text":         {Type: InputMultimodal},
		} {
			err := h.Run(t.Context(), []Input{in}, InferParams{}, func(Delivery) CallbackAction { return Continue })
			if !errors.Is(err, ErrInvalidInput) {
				t.Errorf("%s: Run returned %v, want an *InputError", name, err)
			}
		}
		if lib.ABI() == ABI13 {
			for name, mm := range map[string]MultimodalInput{
				"video rows wrap":           {Prompt: "<video><video>", NVideo: 2, NFramePerVideo: 1 << 62, NFrameTokens: 2, VideoEmbed: []float32{1}},
				"video rows one float wide": {Prompt: "<video>", NVideo: 1, NFramePerVideo: 2, NFrameTokens: 1, VideoEmbed: []float32{1, 2}},
				"images and video over the context": {Prompt: "<image><video>", NImage: 1, NImageTokens: 3000, ImageEmbed: make([]float32, 3000*w),
					NVideo: 1, NFramePerVideo: 1, NFrameTokens: 3000, VideoEmbed: make([]float32, 3000*w)},
				"NUL in video_start": {Prompt: "x", VideoStart: "<v\x00>"},
			} {
				err := h.Run(t.Context(), []Input{{Type: InputMultimodal, Multimodal: mm}}, InferParams{}, func(Delivery) CallbackAction { return Continue })
				if !errors.Is(err, ErrInvalidInput) {
					t.Errorf("%s: Run returned %v, want an *InputError", name, err)
				}
			}
		}
		if lib.ABI() == ABI12 {
			video := Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<video>", NVideo: 1}}
			if err := h.Run(t.Context(), []Input{video}, InferParams{}, func(Delivery) CallbackAction { return Continue }); !errors.Is(err, ErrNotSupported) {
				t.Errorf("video on ABI 1.2: %v", err)
			}
		}
		// A token id past the vocabulary: the runtime would look it up past its table
		// (the simulator fails the run; a runtime need not).
		r := collect(t, h, []Input{{Type: InputToken, TokenIDs: []int32{5, int32(m.VocabSize())}}}, InferParams{}, nil)
		var ie *InputError
		if !errors.As(r.err, &ie) || ie.Field != "token_input.input_ids[1]" || len(r.deliveries) != 0 {
			t.Errorf("a token outside the vocabulary: %v with %d deliveries, want an InputError naming token_input.input_ids[1]", r.err, len(r.deliveries))
		}
	})
}
