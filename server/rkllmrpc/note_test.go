package rkllmrpc

import (
	"encoding/json"
	"math"
	"testing"
)

// TestTextNoteEncoding: a token's notification written by hand is what encoding/json
// writes for the same struct, for texts that need every kind of escaping.
func TestTextNoteEncoding(t *testing.T) {
	for _, text := range []string{"", "plain", "quote \" backslash \\", "\n\t\x00\x1f", "<b>&</b>", "é 世界 😀", "\u2028\u2029", "cut \xe2\x82"} {
		for _, id := range []int32{0, -1, 295, math.MaxInt32, math.MinInt32} {
			n := &textNote{RequestID: "r-\"1\"", State: "RKLLM_RUN_NORMAL", Text: text, TokenID: id}
			want, err := json.Marshal(n)
			if err != nil {
				t.Fatal(err)
			}
			if got := n.AppendJSON([]byte("x")); string(got) != "x"+string(want) {
				t.Errorf("AppendJSON = %s, want %s", got[1:], want)
			}
		}
	}
}
