package main_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// End-to-end tests of embeddings (/v1/embeddings, /api/embed, /api/embeddings): the
// simulator's last hidden layer is a known function of each token and its cache
// position (simulator.HiddenValue), so the tests compute every vector the server must
// give, pooled and normalized, and compare them exactly.

// wantVector is the embedding of tokens: their hidden states from cache position 0
// (an embedding run starts from an empty cache), pooled and, with normalize, scaled to
// length 1.
func wantVector(width int, tokens []int32, pooling string, normalize bool) []float32 {
	v := make([]float64, width)
	switch pooling {
	case "mean":
		for t, tok := range tokens {
			for j := range v {
				v[j] += float64(simulator.HiddenValue(tok, t, j))
			}
		}
		for j := range v {
			v[j] /= float64(len(tokens))
		}
	case "last", "cls":
		t := 0
		if pooling == "last" {
			t = len(tokens) - 1
		}
		for j := range v {
			v[j] = float64(simulator.HiddenValue(tokens[t], t, j))
		}
	}
	if normalize {
		var n float64
		for _, x := range v {
			n += x * x
		}
		n = math.Sqrt(n)
		for j := range v {
			v[j] /= n
		}
	}
	out := make([]float32, width)
	for j, x := range v {
		out[j] = float32(x)
	}
	return out
}

// openaiEmbeddings is /v1/embeddings' response as the tests read it.
type openaiEmbeddings struct {
	Object string `json:"object"`
	Model  string `json:"model"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func (s *server) embedV1(body map[string]any) (openaiEmbeddings, [][]float32) {
	s.t.Helper()
	body["model"] = modelID
	resp, b := s.v1(http.MethodPost, "/v1/embeddings", jsonBody(body))
	var e openaiEmbeddings
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(b), &e) != nil {
		s.t.Fatalf("/v1/embeddings: %d %s", resp.StatusCode, b)
	}
	var out [][]float32
	for i, d := range e.Data {
		var v []float32
		var packed string
		switch {
		case json.Unmarshal(d.Embedding, &v) == nil:
		case json.Unmarshal(d.Embedding, &packed) == nil:
			raw, err := base64.StdEncoding.DecodeString(packed)
			if err != nil || len(raw)%4 != 0 {
				s.t.Fatalf("base64 embedding %q: %v", packed, err)
			}
			for k := 0; k < len(raw); k += 4 {
				v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(raw[k:])))
			}
		default:
			s.t.Fatalf("embedding %s", d.Embedding)
		}
		if d.Index != i || d.Object != "embedding" {
			s.t.Errorf("data[%d]: index %d object %q", i, d.Index, d.Object)
		}
		out = append(out, v)
	}
	return e, out
}

func (s *server) embedOllama(input any) ([][]float32, int) {
	s.t.Helper()
	resp, b := s.v1(http.MethodPost, "/api/embed", jsonBody(map[string]any{"model": ollamaName, "input": input}))
	var e struct {
		Model           string      `json:"model"`
		Embeddings      [][]float32 `json:"embeddings"`
		PromptEvalCount int         `json:"prompt_eval_count"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(b), &e) != nil || e.Model != ollamaName {
		s.t.Fatalf("/api/embed: %d %s", resp.StatusCode, b)
	}
	return e.Embeddings, e.PromptEvalCount
}

// TestEmbeddingPooling checks the vectors of every pooling, normalized and not, on both
// ABIs, over the three endpoints: exactly the pooled hidden states of the simulator,
// as wide as the model's hidden size; equal inputs give equal vectors (also after a
// chat changed the cache), different inputs different ones; usage counts the tokens.
// The default pooling follows the chat template's family (last for ChatML, mean for
// Llama 3).
func TestEmbeddingPooling(t *testing.T) {
	m := simulator.FastModel()
	m.HiddenSize = 24
	texts := []string{"The quick brown fox", "jumps over the lazy dog", "The quick brown fox"}
	cases := []struct {
		name, pooling string
		normalize     bool
		config        map[string]any
	}{
		{"default of chatml: last", "last", true, map[string]any{}},
		{"default of llama3: mean", "mean", true, map[string]any{"chat-template": "llama3"}},
		{"mean, raw", "mean", false, map[string]any{"embedding-pooling": "mean", "embedding-normalize": false}},
		{"cls", "cls", true, map[string]any{"embedding-pooling": "cls"}},
	}
	for _, abi := range abis {
		for _, c := range cases {
			t.Run(abi+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				config := map[string]any{"max-context-len": 4096}
				maps.Copy(config, c.config)
				s := startServer(t, abi, serverOpts{model: &m, config: config})
				want := make([][]float32, len(texts))
				tokens := 0
				for i, text := range texts {
					ids := m.Tokenize(text)
					want[i], tokens = wantVector(m.HiddenSize, ids, c.pooling, c.normalize), tokens+len(ids)
				}
				resp, got := s.embedV1(map[string]any{"input": texts})
				if resp.Object != "list" || resp.Model != modelID || resp.Usage.PromptTokens != tokens || resp.Usage.TotalTokens != tokens {
					t.Errorf("response %+v, want %d prompt tokens", resp, tokens)
				}
				for i := range texts {
					if len(got[i]) != m.HiddenSize || !slices.Equal(got[i], want[i]) {
						t.Errorf("%q: %v, want %v", texts[i], got[i], want[i])
					}
				}
				if !slices.Equal(got[0], got[2]) || slices.Equal(got[0], got[1]) {
					t.Error("equal inputs must give equal vectors, different ones different vectors")
				}
				// After a chat (which leaves its conversation in the cache), the same input
				// gives the same vector, as base64 too, and the same over Ollama's API.
				s.chat([]msg{{"role": "user", "content": "Hello!"}}, nil)
				_, again := s.embedV1(map[string]any{"input": texts[0], "encoding_format": "base64"})
				if !slices.Equal(again[0], want[0]) {
					t.Errorf("after a chat, base64: %v, want %v", again[0], want[0])
				}
				vecs, count := s.embedOllama(texts)
				if count != tokens || len(vecs) != 3 || !slices.Equal(vecs[1], want[1]) {
					t.Errorf("/api/embed: %v (%d tokens)", vecs, count)
				}
				var one struct {
					Embedding []float32 `json:"embedding"`
				}
				_, b := s.v1(http.MethodPost, "/api/embeddings", jsonBody(map[string]any{"model": modelID, "prompt": texts[1]}))
				if json.Unmarshal([]byte(b), &one) != nil || !slices.Equal(one.Embedding, want[1]) {
					t.Errorf("/api/embeddings: %s", b)
				}
				// Token ids embed as the ids they are.
				ids := [][]int32{{257, 300, 5, 42}, {7}}
				_, got = s.embedV1(map[string]any{"input": ids})
				for i := range ids {
					if w := wantVector(m.HiddenSize, ids[i], c.pooling, c.normalize); !slices.Equal(got[i], w) {
						t.Errorf("tokens %v: %v, want %v", ids[i], got[i], w)
					}
				}
				// Every embedding run ended with the cache empty: keep_history 0.
				for _, line := range s.statsEvents("event=run") {
					if !strings.Contains(line, " tokens=0 ") {
						continue // a chat's run
					}
					if !strings.Contains(line, " kv=0") {
						t.Errorf("an embedding run left the cache full: %s", line)
					}
				}
			})
		}
	}
}

// TestEmbeddingsAndConversations: an embedding request between two turns of a chat
// drops the conversation the KV cache held, knowingly: the next turn is prefilled
// whole (no cached tokens) and its reply is the one a server that never reuses gives.
// Without the embedding request between them, the turn reuses the prefix.
func TestEmbeddingsAndConversations(t *testing.T) {
	reuse := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 4096}})
	fresh := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 4096, "prefix-reuse": false}})
	conv := []msg{{"role": "user", "content": "Tell me about NPUs."}}
	turn := func(wantCached bool) {
		t.Helper()
		got, want := reuse.chat(conv, nil), fresh.chat(conv, nil)
		if got.content() != want.content() || got.Usage.PromptTokens != want.Usage.PromptTokens {
			t.Errorf("turn %d: %q with reuse, %q without", len(conv)/2, got.content(), want.content())
		}
		if cached := got.Usage.PromptTokensDetails.CachedTokens > 0; cached != wantCached {
			t.Errorf("turn %d: %d cached tokens, want reuse %v", len(conv)/2, got.Usage.PromptTokensDetails.CachedTokens, wantCached)
		}
		conv = append(conv, msg{"role": "assistant", "content": got.content()}, msg{"role": "user", "content": "And then?"})
	}
	turn(false)
	turn(true)
	reuse.embedV1(map[string]any{"input": []string{"a document", "another one"}})
	turn(false)
	turn(true)
	reuse.embedOllama("a query")
	turn(false)
}

// TestEmbeddingLimits: a batch is bounded by --max-embedding-inputs; an input whose
// hidden states do not fit one worker frame (--max-frame-bytes) or the model's context
// fails naming it, and the server goes on serving; empty inputs are refused, and a
// dimensions that is not the model's width (learned when the model loaded) before
// anything runs.
func TestEmbeddingLimits(t *testing.T) {
	wide := simulator.FastModel()
	wide.HiddenSize = 4096
	// 64 KiB frames hold the hidden states of 3 positions of 4096 floats, not 10.
	s := startServer(t, "1.3", serverOpts{model: &wide, config: map[string]any{"max-frame-bytes": 65536, "max-embedding-inputs": 3, "max-context-len": 64,
		"embedding-width": nil}})
	short, long := "hi", "the quick brown fox jumps over the lazy dog and the cat"
	// The width was learned at load: a dimensions it is not is refused before anything
	// runs, and one it is accepted.
	runs := len(s.statsEvents("event=run"))
	resp, body := s.v1(http.MethodPost, "/v1/embeddings", jsonBody(map[string]any{"model": modelID, "input": short, "dimensions": 512}))
	wantError(t, resp, body, http.StatusBadRequest, "dimensions", "unsupported_parameter", "this model's embeddings have 4096")
	if n := len(s.statsEvents("event=run")); n != runs {
		t.Errorf("a wrong dimensions still ran %d runs", n-runs)
	}
	if _, v := s.embedV1(map[string]any{"input": short, "dimensions": 4096}); len(v[0]) != 4096 {
		t.Errorf("dimensions 4096: %d floats", len(v[0]))
	}
	for _, c := range []struct {
		path   string
		body   map[string]any
		status int
		param  string
		says   string
	}{
		{"/v1/embeddings", map[string]any{"input": []string{short, long}}, 413, "input[1]", "--max-frame-bytes"},
		{"/v1/embeddings", map[string]any{"input": []string{"a", "b", "c", "d"}}, 400, "input", "more than the 3 one request may embed (--max-embedding-inputs)"},
		{"/v1/embeddings", map[string]any{"input": []string{"a", ""}}, 400, "input[1]", "an empty string"},
		{"/v1/embeddings", map[string]any{"input": [][]int32{{1}, {-2}}}, 400, "input[1]", "token id -2 is negative"},
		{"/v1/embeddings", map[string]any{"input": []any{"a", 1}}, 400, "input", "expected a string, an array of strings"},
		{"/v1/embeddings", map[string]any{"input": short, "encoding_format": "int8"}, 400, "encoding_format", "'float' and 'base64'"},
		{"/v1/embeddings", map[string]any{"input": short, "user": "u", "extra": 1}, 400, "extra", "Unrecognized request argument supplied: extra"},
		{"/v1/embeddings", map[string]any{"input": strings.Repeat("zq", 40)}, 400, "input", "longer than the model's context"},
		{"/v1/embeddings", map[string]any{"input": short, "dimensions": 0}, 400, "dimensions", "0 must be positive"},
		{"/v1/embeddings", map[string]any{"input": short, "dimensions": -3}, 400, "dimensions", "-3 must be positive"},
	} {
		c.body["model"] = modelID
		resp, body = s.v1(http.MethodPost, c.path, jsonBody(c.body))
		code := ""
		switch c.status {
		case 413:
			code = "request_too_large"
		case 400:
			code = "invalid_value"
			if strings.Contains(c.says, "expected") {
				code = "invalid_type"
			}
			if strings.HasPrefix(c.says, "Unrecognized") {
				code = ""
			}
			if strings.Contains(c.says, "context") {
				code = "context_length_exceeded"
			}
		}
		wantError(t, resp, body, c.status, c.param, code, c.says)
	}
	// Over Ollama's API: the same bounds, its error shape.
	for _, c := range []struct {
		input  any
		status int
		says   string
	}{{[]string{short, long}, 413, "'input[1]' is too long to embed"}, {[]string{"a", "b", "c", "d"}, 400, "--max-embedding-inputs"}} {
		resp, body = s.v1(http.MethodPost, "/api/embed", jsonBody(map[string]any{"model": modelID, "input": c.input}))
		wantOllamaError(t, resp, body, c.status, c.says)
	}
	// Empty inputs only load the model, as Ollama's do.
	for path, body := range map[string]string{"/api/embed": `{"model":"model","input":[]}`, "/api/embeddings": `{"model":"model","prompt":""}`} {
		if resp, b := s.v1(http.MethodPost, path, body); resp.StatusCode != http.StatusOK || !strings.Contains(b, "[]") {
			t.Errorf("%s empty: %d %s", path, resp.StatusCode, b)
		}
	}
	// The server goes on serving.
	if c := s.chat([]msg{{"role": "user", "content": "still there?"}}, map[string]any{"max_tokens": 4}); c.content() == "" {
		t.Errorf("a chat after the failures: %+v", c)
	}
	if v, _ := s.embedOllama(short); len(v) != 1 || len(v[0]) != 4096 {
		t.Errorf("an embedding after the failures: %d", len(v))
	}
}
