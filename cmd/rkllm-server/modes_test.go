package main_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// rowSource gives the expected values of one input position: a token, or an embedding row.
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

func embedding(n, width int, scale float32) []float32 {
	e := make([]float32, n*width)
	for i := range e {
		e[i] = float32(i%37)*scale - 2
	}
	return e
}

// decodeFloats reads a float array the way a client does: a JSON array (numbers that
// parse back to the same float32), or base64 little-endian float32.
func decodeFloats(t *testing.T, raw json.RawMessage, b64 bool) []float32 {
	t.Helper()
	if b64 {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("base64 array: %v", err)
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b)%4 != 0 {
			t.Fatalf("base64 array: %v (%d bytes)", err, len(b))
		}
		out := make([]float32, len(b)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out
	}
	var f64 []float64
	if err := json.Unmarshal(raw, &f64); err != nil {
		t.Fatalf("JSON array: %v", err)
	}
	out := make([]float32, len(f64))
	for i, v := range f64 {
		out[i] = float32(v)
	}
	return out
}

func checkArray(t *testing.T, what string, got []float32, rows []rowSource, width int, value func(rowSource, int, int) float32) {
	t.Helper()
	if len(got) != len(rows)*width {
		t.Fatalf("%s holds %d floats, want %d x %d", what, len(got), len(rows), width)
	}
	for pos, src := range rows {
		for j := 0; j < width; j++ {
			if want := value(src, pos, j); got[pos*width+j] != want {
				t.Fatalf("%s[%d][%d] = %v, want exactly %v", what, pos, j, got[pos*width+j], want)
			}
		}
	}
}

func hiddenValue(src rowSource, pos, j int) float32 {
	if src.row != nil {
		return simulator.EmbedHiddenValue(src.row[j], pos)
	}
	return simulator.HiddenValue(src.token, pos, j)
}

func logitValue(src rowSource, pos, v int) float32 {
	if src.row != nil {
		return simulator.EmbedLogitValue(src.row, pos, v)
	}
	return simulator.LogitValue(src.token, pos, v)
}

// TestInputTypesAndModes checks every float the server returns for each input type in
// the hidden-layer and logits modes, in both encodings, and that generation takes each
// input type. The chat template is emptied first, so positions are the input's own.
func TestInputTypesAndModes(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		c := s.dial()
		ok[int](t, c.call("rkllm.set_chat_template", map[string]any{"system_prompt": "", "prompt_prefix": "", "prompt_postfix": ""}))
		w := s.model.HiddenSize
		text := "the quick café 日本"
		ids := []int32{300, 257, 258, 12, 256}
		emb := embedding(3, w, 0.25)
		img := embedding(4, w, 0.5) // two images of two tokens
		cases := []struct {
			name  string
			input map[string]any
			rows  []rowSource
		}{
			{"prompt", map[string]any{"input_type": "RKLLM_INPUT_PROMPT", "prompt_input": text}, tokenRows(s.model.Tokenize(text))},
			{"tokens", map[string]any{"input_type": 1, "token_input": map[string]any{"input_ids": ids, "n_tokens": len(ids)}}, tokenRows(ids)},
			{"embedding", map[string]any{"input_type": "RKLLM_INPUT_EMBED", "embed_input": map[string]any{"embed": emb, "n_tokens": 3}}, embedRows(emb, w)},
			{"embedding in base64", map[string]any{"embed_input": map[string]any{"embed": floatsBase64(emb), "n_tokens": 3}}, embedRows(emb, w)},
			{"multimodal", map[string]any{"input_type": "RKLLM_INPUT_MULTIMODAL", "multimodal_input": map[string]any{
				"prompt": "<image><image>", "image_embed": img, "n_image_tokens": 2, "n_image": 2, "image_width": 8, "image_height": 8}}, embedRows(img, w)},
		}
		if abi == "1.3" {
			vid := embedding(3, w, 0.125)
			cases = append(cases, struct {
				name  string
				input map[string]any
				rows  []rowSource
			}{"multimodal with video", map[string]any{"multimodal_input": map[string]any{
				"prompt": "<image><video>", "image_embed": img[:2*w], "n_image_tokens": 2, "n_image": 1,
				"video_embed": vid, "n_video": 1, "n_frame_per_video": 3, "n_frame_tokens": 1}}, append(embedRows(img[:2*w], w), embedRows(vid, w)...)})
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				for _, encoding := range []string{"json", "base64"} {
					params := map[string]any{"input": tc.input, "encoding": encoding, "infer_params": map[string]any{"mode": "RKLLM_INFER_GET_LAST_HIDDEN_LAYER"}}
					res := ok[runResult](t, c.call("rkllm.run", params))
					if res.LastHiddenLayer == nil || res.LastHiddenLayer.EmbdSize != w || res.LastHiddenLayer.NumTokens != len(tc.rows) {
						t.Fatalf("hidden layer %+v", res.LastHiddenLayer)
					}
					checkArray(t, "hidden_states", decodeFloats(t, res.LastHiddenLayer.HiddenStates, encoding == "base64"), tc.rows, w, hiddenValue)

					params["infer_params"] = map[string]any{"mode": 2}
					res = ok[runResult](t, s.http("rkllm.run", params))
					if res.Logits == nil || res.Logits.VocabSize != s.model.VocabSize() || res.Logits.NumTokens != len(tc.rows) {
						t.Fatalf("logits %+v", res.Logits)
					}
					checkArray(t, "logits", decodeFloats(t, res.Logits.Logits, encoding == "base64"), tc.rows, s.model.VocabSize(), logitValue)
				}
				gen := ok[runResult](t, c.call("rkllm.run", map[string]any{"input": tc.input}))
				if gen.TokenCount == 0 || gen.Text == "" || gen.FinishReason != "stop" {
					t.Errorf("generation from this input: %+v", gen)
				}
			})
		}
		// Bad inputs are refused naming the field.
		for name, tc := range map[string]struct {
			input map[string]any
			field string
		}{
			"no member":          {map[string]any{"role": "user"}, "input.input_type"},
			"type without input": {map[string]any{"input_type": "RKLLM_INPUT_TOKEN"}, "input.token_input"},
			"n_tokens mismatch":  {map[string]any{"token_input": map[string]any{"input_ids": []int{1, 2}, "n_tokens": 3}}, "input.token_input.n_tokens"},
			"embed not n x w":    {map[string]any{"embed_input": map[string]any{"embed": []float32{1, 2, 3}, "n_tokens": 2}}, "input.embed_input.embed"},
			"bad base64":         {map[string]any{"embed_input": map[string]any{"embed": "!!", "n_tokens": 1}}, "input.embed_input.embed"},
			"bad role":           {map[string]any{"role": "system", "prompt_input": "x"}, "input.role"},
			"bad input type":     {map[string]any{"input_type": 7, "prompt_input": "x"}, "input.input_type"},
		} {
			e := fails(t, s.http("rkllm.run", map[string]any{"input": tc.input}), -32602)
			if e.Data["field"] != tc.field {
				t.Errorf("%s: field %v (%s), want %s", name, e.Data["field"], e.Message, tc.field)
			}
		}
	})
}

func floatsBase64(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return base64.StdEncoding.EncodeToString(b)
}

// TestBatchInputs: with n_batch 2 an input array runs both entries in one run, each with
// its own result.
func TestBatchInputs(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: map[string]any{"n-batch": 2}})
		c := s.dial()
		ok[int](t, c.call("rkllm.set_chat_template", map[string]any{"system_prompt": "", "prompt_prefix": "", "prompt_postfix": ""}))
		a, b := []int32{260, 261, 262}, []int32{300}
		res := ok[struct {
			Results []runResult `json:"results"`
		}](t, c.call("rkllm.run", map[string]any{"input": []any{
			map[string]any{"token_input": map[string]any{"input_ids": a}},
			map[string]any{"token_input": map[string]any{"input_ids": b}},
		}, "infer_params": map[string]any{"mode": "RKLLM_INFER_GET_LAST_HIDDEN_LAYER"}}))
		if len(res.Results) != 2 {
			t.Fatalf("%d results, want 2", len(res.Results))
		}
		w := s.model.HiddenSize
		checkArray(t, "hidden[0]", decodeFloats(t, res.Results[0].LastHiddenLayer.HiddenStates, false), tokenRows(a), w, hiddenValue)
		checkArray(t, "hidden[1]", decodeFloats(t, res.Results[1].LastHiddenLayer.HiddenStates, false), tokenRows(b), w, hiddenValue)
	})
}
