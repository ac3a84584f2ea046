package simulator

import (
	"slices"
	"strings"
	"testing"
)

func TestTokenize(t *testing.T) {
	m := Model{EOS: "<e>", Vocab: []string{"ab", "abc", " x", "é"}}
	cases := []struct {
		text string
		want []int32
	}{
		{"", nil},
		{"abc", []int32{FirstWord + 1}},  // longest match wins
		{"abd", []int32{FirstWord, 'd'}}, // then byte tokens
		{" x<e>ab", []int32{FirstWord + 2, TokenEOS, FirstWord}}, // the EOS text is one token
		{"éé", []int32{FirstWord + 3, FirstWord + 3}},
		{"ü", []int32{0xC3, 0xBC}}, // a character outside the vocabulary: its bytes
	}
	for _, c := range cases {
		if got := m.Tokenize(c.text); !slices.Equal(got, c.want) {
			t.Errorf("Tokenize(%q) = %v, want %v", c.text, got, c.want)
		}
	}
}

func TestValidate(t *testing.T) {
	good := DefaultModel()
	if err := good.Validate(); err != nil {
		t.Fatalf("DefaultModel: %v", err)
	}
	for name, mutate := range map[string]func(*Model){
		"format":            func(m *Model) { m.Format = 2 },
		"max_context_limit": func(m *Model) { m.MaxContextLimit = 8 },
		"hidden_size":       func(m *Model) { m.HiddenSize = 0 },
		"reply tokens":      func(m *Model) { m.ReplyMinTokens, m.ReplyMaxTokens = 5, 4 },
		"vocab":             func(m *Model) { m.Vocab = nil },
		"byte_fallback":     func(m *Model) { m.ByteFallback = []string{"ab"} },
		"token rates":       func(m *Model) { m.DecodeTokensPerSecond = -1 },
	} {
		m := DefaultModel()
		mutate(&m)
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), strings.Fields(name)[0]) {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
}

func TestValuesAreExactDyadics(t *testing.T) {
	// The documented formulas give multiples of 1/64 (hidden) and 1/16 (logits), which
	// float32 holds exactly, so tests can compare with ==.
	for _, c := range []struct {
		got, want float32
	}{
		{HiddenValue(0, 0, 0), -16},
		{HiddenValue(1, 2, 3), float32((31+51+14)%2048-1024) / 64},
		{LogitValue(5, 1, 2), float32((35+6+1)%256-128) / 16},
		{EmbedHiddenValue(0.5, 3), 3.5},
		{EmbedLogitValue([]float32{1, 2}, 1, 3), 1},
	} {
		if c.got != c.want {
			t.Errorf("got %v, want %v", c.got, c.want)
		}
	}
}
