// Package simulator is the Go side of the RKLLM simulator library
// (bin/librkllmrt-sim-1.2.so and bin/librkllmrt-sim-1.3.so, built from csrc/ by
// `make sim`): it writes the simulator's model and LoRA files, and computes the values
// the simulator documents (tokens, hidden states, logits), so tests can check every
// value that crosses the runtime boundary. The simulator runs no model: its output is
// deterministic text for testing, never a model's answer. See README.md.
package simulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"
)

// File magics: a model file is ModelMagic followed by the JSON of a Model; a LoRA file
// is LoraMagic followed by anything (the simulator hashes it to change its output).
const (
	ModelMagic = "RKLLMSIM\n"
	LoraMagic  = "RKLLMSIM-LORA\n"
)

// Token ids of the simulator: byte tokens 0..255, the end-of-sequence token, then the
// model's vocabulary words in order.
const (
	TokenEOS  = 256
	FirstWord = 257
)

// ChatTemplate is the model's built-in chat template.
type ChatTemplate struct {
	System  string `json:"system"`
	Prefix  string `json:"prefix"`
	Postfix string `json:"postfix"`
	// ThinkingOff is appended after Postfix when an input has EnableThinking false and
	// no template was set with rkllm_set_chat_template.
	ThinkingOff string `json:"thinking_off"`
}

// Model is the JSON body of a simulator model file.
type Model struct {
	Format          int    `json:"format"`
	Name            string `json:"name"`
	MaxContextLimit int    `json:"max_context_limit"`
	HiddenSize      int    `json:"hidden_size"`
	// DecodeTokensPerSecond and PrefillTokensPerSecond pace the simulator like an NPU;
	// 0 means as fast as possible.
	DecodeTokensPerSecond  float64      `json:"decode_tokens_per_second"`
	PrefillTokensPerSecond float64      `json:"prefill_tokens_per_second"`
	Seed                   uint64       `json:"seed"`
	ReplyMinTokens         int          `json:"reply_min_tokens"`
	ReplyMaxTokens         int          `json:"reply_max_tokens"`
	MemoryMB               float64      `json:"memory_mb"`
	EOS                    string       `json:"eos"`
	Vocab                  []string     `json:"vocab"`
	ByteFallback           []string     `json:"byte_fallback"`
	ChatTemplate           ChatTemplate `json:"chat_template"`
}

// DefaultModel is a small model paced like a 1.5B W8A8 model on an RK3588: about 15
// tokens/s decode and 150 tokens/s prefill. Its replies mix ASCII words, multi-byte
// words and characters sent one byte per delivery.
func DefaultModel() Model {
	return Model{
		Format:                 1,
		Name:                   "rkllm-sim",
		MaxContextLimit:        4096,
		HiddenSize:             16,
		DecodeTokensPerSecond:  15,
		PrefillTokensPerSecond: 150,
		Seed:                   1,
		ReplyMinTokens:         8,
		ReplyMaxTokens:         32,
		MemoryMB:               1024,
		EOS:                    "<|im_end|>",
		Vocab:                  defaultVocab(),
		ByteFallback:           []string{"é", "ß", "€", "中", "文", "🙂", "🚀", "ñ"},
		ChatTemplate: ChatTemplate{
			System:      "<|im_start|>system\nYou are the RKLLM simulator, not a language model.<|im_end|>\n",
			Prefix:      "<|im_start|>user\n",
			Postfix:     "<|im_end|>\n<|im_start|>assistant\n",
			ThinkingOff: "<think>\n\n</think>\n\n",
		},
	}
}

// FastModel is DefaultModel without pacing: it answers as fast as the host allows, to
// measure the server's own overhead and to keep tests quick.
func FastModel() Model {
	m := DefaultModel()
	m.Name = "rkllm-sim-fast"
	m.DecodeTokensPerSecond = 0
	m.PrefillTokensPerSecond = 0
	return m
}

func defaultVocab() []string {
	words := strings.Fields("the a an simulated token NPU model reply text is of and to in on for with " +
		"this that it runs board edge cluster Rockchip kernel driver cache batch prompt answer " +
		"quick brown fox jumps over lazy dog hello world test value stream window context")
	v := make([]string, 0, len(words)*2+32)
	for _, w := range words {
		v = append(v, " "+w)
	}
	v = append(v, words...)
	v = append(v, ".", ",", "!", "?", ":", "\n", "\n\n", " café", " naïve", " über", " 日本", " 東京", " señor",
		"—", "…", " €5", "<|im_start|>", "<tool_call>", "</tool_call>", "<think>", "</think>",
		"{\"", "\":", "\"", " \"", ", ", "}", "{", "name", "arguments")
	return v
}

// Validate checks what the simulator checks when it loads the file.
func (m *Model) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(m.Format == 1, "format is %d, want 1", m.Format)
	check(m.MaxContextLimit >= 16 && m.MaxContextLimit <= 1<<20, "max_context_limit %d is outside 16..1048576", m.MaxContextLimit)
	check(m.HiddenSize >= 1 && m.HiddenSize <= 8192, "hidden_size %d is outside 1..8192", m.HiddenSize)
	check(m.DecodeTokensPerSecond >= 0 && m.PrefillTokensPerSecond >= 0, "token rates must not be negative")
	check(m.ReplyMinTokens >= 0 && m.ReplyMaxTokens >= m.ReplyMinTokens, "reply tokens must satisfy 0 <= min <= max")
	check(m.Seed <= 1<<53-1, "seed must fit a JSON number exactly (< 2^53)")
	check(len(m.Vocab) >= 1 && len(m.Vocab) <= 65536, "vocab must hold 1..65536 words, has %d", len(m.Vocab))
	for i, w := range m.Vocab {
		check(w != "" && !strings.ContainsRune(w, 0), "vocab[%d] must be a non-empty string without NUL", i)
	}
	for i, c := range m.ByteFallback {
		r, n := utf8.DecodeRuneInString(c)
		check(r != utf8.RuneError && n == len(c) && n >= 2, "byte_fallback[%d] %q must be one multi-byte UTF-8 character", i, c)
	}
	return errors.Join(errs...)
}

// VocabSize is the number of token ids (byte tokens, EOS and words).
func (m *Model) VocabSize() int { return FirstWord + len(m.Vocab) }

// Marshal returns the file content of m.
func (m *Model) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("invalid simulator model: %w", err)
	}
	var b bytes.Buffer
	b.WriteString(ModelMagic)
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep "<|im_end|>" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// WriteModel writes m as a simulator model file.
func WriteModel(path string, m Model) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644) //nolint:gosec // model files are read by other users (a server in a container)
}

// ReadModel reads a simulator model file.
func ReadModel(path string) (Model, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Model{}, err
	}
	body, ok := strings.CutPrefix(string(b), ModelMagic)
	if !ok {
		return Model{}, fmt.Errorf("%s is not a simulator model file (no %q magic)", path, strings.TrimSpace(ModelMagic))
	}
	var m Model
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		return Model{}, fmt.Errorf("%s: %w", path, err)
	}
	return m, m.Validate()
}

// WriteLora writes a simulator LoRA adapter; different names give different output.
func WriteLora(path, name string) error {
	return os.WriteFile(path, []byte(LoraMagic+`{"name":`+fmt.Sprintf("%q", name)+"}\n"), 0o644) //nolint:gosec // as WriteModel
}

// Tokenize returns the token ids the simulator gives text: at each position the
// longest vocabulary word or the EOS string, else a byte token.
func (m *Model) Tokenize(text string) []int32 {
	var ids []int32
	for len(text) > 0 {
		if m.EOS != "" && strings.HasPrefix(text, m.EOS) {
			ids = append(ids, TokenEOS)
			text = text[len(m.EOS):]
			continue
		}
		best, bestLen := -1, 0
		for i, w := range m.Vocab {
			if len(w) > bestLen && strings.HasPrefix(text, w) {
				best, bestLen = i, len(w)
			}
		}
		if best >= 0 {
			ids = append(ids, int32(FirstWord+best))
			text = text[bestLen:]
			continue
		}
		ids = append(ids, int32(text[0]))
		text = text[1:]
	}
	return ids
}

// HiddenValue is the simulator's last-hidden-layer value j of a token at cache position pos.
func HiddenValue(token int32, pos, j int) float32 {
	return float32((int64(token)*31+int64(j)*17+int64(pos)*7)%2048-1024) / 64
}

// EmbedHiddenValue is the simulator's hidden value of an embedding-input position:
// the input value x plus the cache position.
func EmbedHiddenValue(x float32, pos int) float32 { return x + float32(pos) }

// LogitValue is the simulator's logit of vocabulary entry v for a token at cache position pos.
func LogitValue(token int32, pos, v int) float32 {
	return float32((int64(token)*7+int64(v)*3+int64(pos))%256-128) / 16
}

// EmbedLogitValue is the simulator's logit of vocabulary entry v for an embedding-input
// position: the row's value v modulo the hidden size minus the cache position.
func EmbedLogitValue(row []float32, pos, v int) float32 { return row[v%len(row)] - float32(pos) }
