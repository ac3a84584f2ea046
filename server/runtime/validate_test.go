package runtime

import (
	"errors"
	"math"
	"testing"
)

// TestCheckInputs: the rules that keep the runtime's reads inside what a caller sent,
// at their edges: products that would wrap, counts one past max_context_len, rows one
// float off the width, and the same inputs with no model known (only what needs none).
func TestCheckInputs(t *testing.T) {
	model := Limits{Known: true, ABI: ABI13, NBatch: 1, MaxContextLen: 8, EmbedWidth: 4, VocabSize: 300, Loras: []string{"chat"}}
	noModel := Limits{ABI: ABI13}
	rows := func(n int) []float32 { return make([]float32, n*4) }
	image := func(n, tokens int, embed []float32) Input {
		prompt := ""
		for range n {
			prompt += "<image>"
		}
		return Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: prompt, NImage: n, NImageTokens: tokens, ImageEmbed: embed}}
	}
	video := func(frames, tokens int, embed []float32) Input {
		return Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<video>", NVideo: 1, NFramePerVideo: frames, NFrameTokens: tokens, VideoEmbed: embed}}
	}
	cases := []struct {
		name           string
		in             Input
		model, noModel string // the field refused ("" accepted)
	}{
		{"tokens at max_context_len", Input{Type: InputToken, TokenIDs: make([]int32, 8)}, "", ""},
		{"tokens past max_context_len", Input{Type: InputToken, TokenIDs: make([]int32, 9)}, "token_input.input_ids", ""},
		{"negative token", Input{Type: InputToken, TokenIDs: []int32{1, -1}}, "token_input.input_ids[1]", "token_input.input_ids[1]"},
		{"last token of the vocabulary", Input{Type: InputToken, TokenIDs: []int32{0, 299}}, "", ""},
		{"token one past the vocabulary", Input{Type: InputToken, TokenIDs: []int32{0, 1, 300}}, "token_input.input_ids[2]", ""},
		{"token at int32's end", Input{Type: InputToken, TokenIDs: []int32{math.MaxInt32}}, "token_input.input_ids[0]", ""},
		{"embedding rows", Input{Type: InputEmbed, Embed: rows(8), NTokens: 8}, "", ""},
		{"embedding rows one float wide", Input{Type: InputEmbed, Embed: make([]float32, 3), NTokens: 3}, "embed_input.embed", ""},
		{"embedding a float short", Input{Type: InputEmbed, Embed: make([]float32, 7), NTokens: 2}, "embed_input.embed", ""},
		{"embedding past max_context_len", Input{Type: InputEmbed, Embed: rows(9), NTokens: 9}, "embed_input.n_tokens", ""},
		{"embedding without rows", Input{Type: InputEmbed, NTokens: 1}, "embed_input.embed", "embed_input.embed"},
		{"image product wraps to -2", image(2, math.MaxInt64, []float32{1, 2}), "multimodal_input.n_image_tokens", "multimodal_input.n_image_tokens"},
		{"image product wraps to 0", image(4, 1<<62, []float32{1, 2}), "multimodal_input.n_image_tokens", "multimodal_input.n_image_tokens"},
		{"image tokens negative", image(1, -1, rows(1)), "multimodal_input.n_image_tokens", "multimodal_input.n_image_tokens"},
		{"images at max_context_len", image(2, 4, rows(8)), "", ""},
		{"images past max_context_len", image(3, 3, rows(9)), "multimodal_input.n_image_tokens", ""},
		{"image rows one float wide", image(2, 1, []float32{1, 2}), "multimodal_input.image_embed", ""},
		{"tags and count differ", Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image>", NImage: 2, NImageTokens: 1, ImageEmbed: rows(2)}}, "multimodal_input.n_image", "multimodal_input.n_image"},
		{"embedding without images", Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "x", ImageEmbed: rows(1)}}, "multimodal_input.image_embed", "multimodal_input.image_embed"},
		{"video product wraps", video(1<<62, 4, []float32{1}), "multimodal_input.n_frame_per_video", "multimodal_input.n_frame_per_video"},
		{"video product past the context", video(1<<20, 1<<20, []float32{1}), "multimodal_input.n_frame_per_video", "multimodal_input.n_frame_tokens"},
		{"video rows", video(2, 3, rows(6)), "", ""},
		{"video rows one float wide", video(2, 1, []float32{1, 2}), "multimodal_input.video_embed", ""},
		{"images and video past max_context_len", Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "<image><video>",
			NImage: 1, NImageTokens: 5, ImageEmbed: rows(5), NVideo: 1, NFramePerVideo: 1, NFrameTokens: 4, VideoEmbed: rows(4)}}, "multimodal_input", ""},
		{"size past int32", Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "x", ImageWidth: math.MaxInt32 + 1}}, "multimodal_input.image_width", "multimodal_input.image_width"},
		{"NUL in a prompt", Input{Type: InputPrompt, Prompt: "a\x00"}, "prompt_input", "prompt_input"},
		{"NUL in a marker", Input{Type: InputMultimodal, Multimodal: MultimodalInput{Prompt: "x", ImageEnd: "\x00"}}, "multimodal_input.image_end", "multimodal_input.image_end"},
	}
	for _, c := range cases {
		for _, l := range []struct {
			lim  Limits
			want string
		}{{model, c.model}, {noModel, c.noModel}} {
			err := CheckInputs([]Input{c.in}, l.lim)
			var ie *InputError
			switch {
			case l.want == "" && err != nil:
				t.Errorf("%s (model known %v): %v, want accepted", c.name, l.lim.Known, err)
			case l.want != "" && (!errors.As(err, &ie) || ie.Field != l.want || ie.Input != 0):
				t.Errorf("%s (model known %v): %v, want an InputError naming %s", c.name, l.lim.Known, err, l.want)
			}
		}
	}
	if err := CheckInputs([]Input{{Type: InputPrompt}, {Type: InputPrompt}}, model); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("two inputs for n_batch 1: %v", err)
	}
	var ie *InputError
	if err := CheckInputs([]Input{{Type: InputEmbed, Embed: rows(1), NTokens: 1}}, Limits{Known: true, MaxContextLen: 8}); !errors.As(err, &ie) || !ie.NoWidth {
		t.Errorf("an embedding with the width unknown: %v", err)
	}
	if err := CheckInputs([]Input{{Type: InputToken, TokenIDs: []int32{0}}}, Limits{Known: true, MaxContextLen: 8}); !errors.As(err, &ie) || !ie.NoVocab || ie.Field != "token_input.input_ids" {
		t.Errorf("a token with the vocabulary size unknown: %v", err)
	}
	if err := CheckInferParams(&InferParams{LoraAdapterName: "code"}, model); !errors.As(err, &ie) || ie.Field != "infer_params.lora_params.lora_adapter_name" {
		t.Errorf("an adapter not loaded: %v", err)
	}
	if err := CheckInferParams(&InferParams{Sampling: &SamplingParams{}}, Limits{ABI: ABI12}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("per-run sampling on ABI 1.2: %v", err)
	}
}

// TestCheckCrossAttn: K and V are num_tokens rows of the width; mask and positions
// num_tokens values.
func TestCheckCrossAttn(t *testing.T) {
	lim := Limits{Known: true, MaxContextLen: 8, EmbedWidth: 4}
	ok := CrossAttnParams{NumTokens: 2, EncoderKCache: make([]float32, 8), EncoderVCache: make([]float32, 8), EncoderMask: []float32{1, 1}, EncoderPos: []int32{0, 1}}
	if err := CheckCrossAttn(&ok, lim); err != nil {
		t.Fatal(err)
	}
	for field, p := range map[string]CrossAttnParams{
		"cross_attn_params.encoder_k_cache": {NumTokens: 2, EncoderKCache: make([]float32, 2), EncoderVCache: make([]float32, 8), EncoderMask: []float32{1, 1}, EncoderPos: []int32{0, 1}},
		"cross_attn_params.encoder_v_cache": {NumTokens: 2, EncoderKCache: make([]float32, 8), EncoderVCache: make([]float32, 9), EncoderMask: []float32{1, 1}, EncoderPos: []int32{0, 1}},
		"cross_attn_params.encoder_pos":     {NumTokens: 2, EncoderKCache: make([]float32, 8), EncoderVCache: make([]float32, 8), EncoderMask: []float32{1, 1}, EncoderPos: []int32{0}},
		"cross_attn_params.num_tokens":      {NumTokens: math.MaxInt32 + 2, EncoderKCache: make([]float32, 8)},
		"cross_attn_params.encoder_pos[1]":  {NumTokens: 2, EncoderKCache: make([]float32, 8), EncoderVCache: make([]float32, 8), EncoderMask: []float32{1, 1}, EncoderPos: []int32{0, -1}},
		"cross_attn_params.encoder_pos[0]":  {NumTokens: 2, EncoderKCache: make([]float32, 8), EncoderVCache: make([]float32, 8), EncoderMask: []float32{1, 1}, EncoderPos: []int32{8, 1}},
	} {
		var ie *InputError
		if err := CheckCrossAttn(&p, lim); !errors.As(err, &ie) || ie.Field != field {
			t.Errorf("want %s refused: %v", field, err)
		}
	}
}

// TestCheckKVRanges: one range per batch entry, each 0 <= start <= end <= max_context_len.
func TestCheckKVRanges(t *testing.T) {
	lim := Limits{Known: true, NBatch: 2, MaxContextLen: 8}
	if err := CheckKVRanges([]int32{0, 2}, []int32{8, 3}, lim); err != nil {
		t.Errorf("ranges at the edges: %v", err)
	}
	if err := CheckKVRanges(nil, nil, lim); err != nil {
		t.Errorf("clear all: %v", err)
	}
	for field, r := range map[string][2][]int32{
		"end_pos":      {{0, 0}, nil},
		"start_pos":    {{0}, {1}},
		"start_pos[1]": {{0, 3}, {1, 2}},
		"start_pos[0]": {{-1, 0}, {1, 1}},
		"end_pos[1]":   {{0, 0}, {1, 9}},
	} {
		var ie *InputError
		if err := CheckKVRanges(r[0], r[1], lim); !errors.As(err, &ie) || ie.Field != field {
			t.Errorf("%v: %v, want %s refused", r, err, field)
		}
	}
}
