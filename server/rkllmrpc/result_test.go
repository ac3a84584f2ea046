package rkllmrpc

import (
	"bytes"
	"encoding/json"
	"math"
	"testing"
)

// TestResultEncoding: the result written by hand, into one buffer of the size charged
// for it, is byte for byte what encoding/json writes, whatever it holds.
func TestResultEncoding(t *testing.T) {
	type plain runResult // the same fields, without runResult's MarshalJSON
	arrays := []float32{0, -1.17549435e-38, 3.4028235e38, 1e-7, 123456.79, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), -0.5}
	entry := func(b64 bool) *entryResult {
		return &entryResult{Text: "<b>&é\x01 \u2028\xff", TokenIDs: []int32{0, -1, math.MaxInt32}, TokenCount: 3,
			LastHiddenLayer: &hiddenLayerJ{EmbdSize: 3, NumTokens: 3, HiddenStates: floatOut{arrays, b64}},
			Logits:          &logitsJ{VocabSize: 9, NumTokens: 1, Logits: floatOut{arrays[:8], b64}}}
	}
	many := make([]float32, 5000) // more than one base64 piece, and not a multiple of it
	for i := range many {
		many[i] = float32(i) / 7
	}
	for name, r := range map[string]*runResult{
		"json":        {RequestID: "r-1", entryResult: entry(false), FinishReason: FinishStop, Perf: &perfJ{PrefillTimeMs: 0.0123, PrefillTokens: 7, MemoryUsageMB: 1024}},
		"base64":      {RequestID: "r-2", entryResult: entry(true), FinishReason: FinishAbort},
		"batch":       {RequestID: "r-3", FinishReason: FinishLength, Results: []entryResult{*entry(false), {Text: "", TokenIDs: []int32{}}}},
		"no arrays":   {RequestID: "r-4", entryResult: &entryResult{TokenIDs: []int32{}}, FinishReason: FinishStop},
		"long base64": {RequestID: "r-5", entryResult: &entryResult{TokenIDs: []int32{}, Logits: &logitsJ{VocabSize: 5000, NumTokens: 1, Logits: floatOut{many, true}}}},
	} {
		want, err := json.Marshal((*plain)(r))
		if err != nil {
			t.Fatal(err)
		}
		size := r.size()
		got, err := r.encode()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s (%v)\nwant %s", name, got, err, want)
		}
		if len(got) > size || cap(got) != size {
			t.Errorf("%s: %d bytes in a buffer of %d, sized %d", name, len(got), cap(got), size)
		}
	}
}

// TestArrayCost: what a delivery's arrays are charged covers what their encoding can
// take, for the longest floats.
func TestArrayCost(t *testing.T) {
	worst := make([]float32, 1000)
	for i := range worst {
		worst[i] = -1.17549435e-38
	}
	for _, b64 := range []bool{false, true} {
		enc, _ := floatOut{worst, b64}.MarshalJSON()
		if len(enc) > encodedLen(len(worst), b64) {
			t.Errorf("base64 %v: %d bytes encoded, bound %d", b64, len(enc), encodedLen(len(worst), b64))
		}
		kept, transient := arrayCost(len(worst), b64, true)
		if kept < 4*len(worst)+2*len(enc) || transient < 2*len(enc) {
			t.Errorf("base64 %v: charged %d + %d for %d floats encoded in %d bytes", b64, kept, transient, len(worst), len(enc))
		}
	}
}
