package openai

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/generation"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// queueFull is a backend whose queue refuses every run: what a request costs up to
// the queue, and its refusal, is what a benchmark of it measures.
type queueFull struct{}

func (queueFull) Enqueue(context.Context, supervisor.Request) (*supervisor.Ticket, error) {
	return nil, supervisor.ErrQueueFull
}
func (queueFull) Abort(string, string) ([]string, error) { return nil, nil }
func (queueFull) Status() supervisor.Status {
	return supervisor.Status{Ready: true, ABI: string(runtime.ABI13), ModelLoaded: true}
}
func (queueFull) LoadedModel() (supervisor.LoadedModel, bool) {
	return supervisor.LoadedModel{Param: runtime.Param{ModelPath: "/models/model.rkllm", MaxContextLen: 4096, MaxNewTokens: 512}, ABI: runtime.ABI13}, true
}

// BenchmarkChatToQueue is what a short streamed chat costs the server from its HTTP
// request to the queue: reading and decoding the body, the checks, rendering the
// conversation with the default template (docs/benchmarks.md, time to first token
// over /v1/); the queue refuses it, so its short answer is included.
func BenchmarkChatToQueue(b *testing.B) {
	g := generation.New(queueFull{}, generation.Options{ModelPath: "/models/model.rkllm"})
	h := New(g, Options{Log: logr.Discard()})
	body := `{"model":"model","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"What is the capital of France?"}]}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequestWithContext(context.Background(), http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusTooManyRequests {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}
