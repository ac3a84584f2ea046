package templatehost

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// BenchmarkRender compares one render of a short chat (Qwen 2.5's template, three
// messages) in process with the same render through a renderer process: the cost of
// rendering where a template cannot hurt the server (docs/benchmarks.md).
func BenchmarkRender(b *testing.B) {
	src, err := os.ReadFile(filepath.Join("..", "chattemplate", "testdata", "templates", "qwen2.5.jinja"))
	if err != nil {
		b.Fatal(err)
	}
	c := TestConversation()
	b.Run("in-process", func(b *testing.B) {
		j, err := chattemplate.NewJinja("jinja:qwen2.5", string(src), "", "<|im_end|>")
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := j.Render(context.Background(), c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("renderer-process", func(b *testing.B) {
		h := newHost(b, string(src), Options{})
		if err := h.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := h.Render(context.Background(), c); err != nil {
				b.Fatal(err)
			}
		}
	})
}
