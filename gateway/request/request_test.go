package request

import (
	"errors"
	"hash/maphash"
	"strings"
	"testing"
)

func TestInspect(t *testing.T) {
	seed := maphash.MakeSeed()
	cases := []struct {
		name       string
		api        API
		body       string
		model      string
		stream     bool
		noConv     bool
		wantErr    error
		errMessage string
	}{
		{name: "chat", api: OpenAIChat, body: `{"model":"chat","messages":[{"role":"user","content":"hi"}]}`, model: "chat"},
		{name: "chat streamed", api: OpenAIChat, body: `{"model":"chat","stream":true,"messages":[{"role":"user","content":"hi"}]}`, model: "chat", stream: true},
		{name: "chat without messages", api: OpenAIChat, body: `{"model":"chat","messages":[]}`, model: "chat", noConv: true},
		{name: "completion", api: OpenAICompletion, body: `{"model":"c","prompt":"Once upon"}`, model: "c"},
		{name: "completion list prompt", api: OpenAICompletion, body: `{"model":"c","prompt":["Once upon"]}`, model: "c"},
		{name: "completion empty prompt", api: OpenAICompletion, body: `{"model":"c","prompt":""}`, model: "c", noConv: true},
		{name: "embedding never streams", api: OpenAIEmbedding, body: `{"model":"e","input":"x","stream":true}`, model: "e", noConv: true},
		{name: "ollama chat streams by default", api: OllamaChat, body: `{"model":"qwen:latest","messages":[{"role":"user","content":"hi"}]}`,
			model: "qwen:latest", stream: true},
		{name: "ollama chat without stream", api: OllamaChat, body: `{"model":"q","stream":false,"messages":[{"role":"user","content":"hi"}]}`, model: "q"},
		{name: "ollama generate", api: OllamaGenerate, body: `{"model":"q","prompt":"hello"}`, model: "q", stream: true},
		{name: "ollama show", api: OllamaOther, body: `{"model":"q"}`, model: "q", noConv: true},
		{name: "no model", api: OpenAIChat, body: `{"messages":[]}`, wantErr: ErrNoModel},
		{name: "blank model", api: OpenAIChat, body: `{"model":"  "}`, wantErr: ErrNoModel},
		{name: "not JSON", api: OpenAIChat, body: `model=chat`, errMessage: "not a JSON object"},
		{name: "model not a string", api: OpenAIChat, body: `{"model":7}`, errMessage: "not a JSON object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Inspect(tc.api, []byte(tc.body), seed)
			switch {
			case tc.wantErr != nil || tc.errMessage != "":
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.errMessage) {
					t.Fatalf("err = %v, want %v %q", err, tc.wantErr, tc.errMessage)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if f.Model != tc.model || f.Stream != tc.stream || (f.Conversation == 0) != tc.noConv {
				t.Errorf("facts = %+v, want model %q stream %v conversation %v", f, tc.model, tc.stream, !tc.noConv)
			}
		})
	}
}

// The turns of one conversation share a key; other conversations do not.
func TestConversationKeys(t *testing.T) {
	seed := maphash.MakeSeed()
	key := func(api API, body string) uint64 {
		t.Helper()
		f, err := Inspect(api, []byte(body), seed)
		if err != nil {
			t.Fatal(err)
		}
		return f.Conversation
	}
	turn1 := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}`)
	turn2 := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"},
		{"role":"assistant","content":"Hi!"},{"role":"user","content":"How are you?"}]}`)
	// The same history re-encoded by another client: spacing, and content as parts.
	spaced := key(OpenAIChat, `{ "model" : "m", "messages" : [ {"role":"system", "content" : "Be brief."}, {"role":"user","content":"Hello"} ] }`)
	other := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Goodbye"}]}`)
	otherSystem := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be long."},{"role":"user","content":"Hello"}]}`)
	// Open WebUI sends the last message as text parts marked for caching, and the same
	// message as a string once it is history.
	parts := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello","cache_control":{"type":"ephemeral"}}]}]}`)
	ollama := key(OllamaChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"},{"role":"assistant","content":"Hi"}]}`)
	if turn1 != turn2 || turn1 != spaced || turn1 != ollama || turn1 != parts {
		t.Errorf("one conversation, different keys: %x %x %x %x %x", turn1, turn2, spaced, ollama, parts)
	}
	image := key(OpenAIChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"image_url","image_url":{"url":"data:a"}}]}]}`)
	otherImage := key(OpenAIChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"image_url","image_url":{"url":"data:b"}}]}]}`)
	if image == otherImage {
		t.Error("two images, one key")
	}
	if turn1 == other || turn1 == otherSystem {
		t.Errorf("different conversations share a key %x", turn1)
	}
	long := strings.Repeat("a long story. ", 40)
	p1 := key(OpenAICompletion, `{"model":"m","prompt":"`+long+`"}`)
	p2 := key(OpenAICompletion, `{"model":"m","prompt":"`+long+` and then more"}`)
	p3 := key(OllamaGenerate, `{"model":"m","system":"sys","prompt":"`+long+`"}`)
	if p1 != p2 {
		t.Errorf("a growing prompt changed its key")
	}
	if p1 == p3 {
		t.Errorf("another system prompt kept the key")
	}
	if again := key(OpenAIChat, `{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}`); again != turn1 {
		t.Errorf("the same request gave another key")
	}
	// Another process (another seed) keys differently, so keys say nothing outside it.
	f, _ := Inspect(OpenAIChat, []byte(`{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}`), maphash.MakeSeed())
	if f.Conversation == turn1 {
		t.Errorf("two seeds gave the same key")
	}
}
