package runtime

import (
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// BenchmarkRunPerToken measures what one generated token costs through the binding
// (callback across cgo on a runtime thread, result copy, Go callback) with the unpaced
// simulator: an upper bound on the binding's overhead per token, to compare with the
// ~30-200 ms a token takes on an RK3588.
func BenchmarkRunPerToken(b *testing.B) {
	for _, abi := range abis {
		b.Run("abi"+string(abi), func(b *testing.B) {
			lib := simLib(b, abi)
			const reply = 256
			model, _ := writeModel(b, func(m *simulator.Model) { m.ReplyMinTokens, m.ReplyMaxTokens = reply, reply })
			h := newHandle(b, lib, params(lib, model))
			tokens := 0
			onResult := func(d Delivery) CallbackAction {
				if d.State == StateNormal || d.State == StateWaiting {
					tokens++
				}
				return Continue
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := h.Run(b.Context(), prompt("bench"), InferParams{}, onResult); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(tokens), "ns/token")
		})
	}
}

// BenchmarkLogitsCopy measures copying a logits array (num_tokens x vocab floats) out
// of runtime memory inside the callback.
func BenchmarkLogitsCopy(b *testing.B) {
	lib := simLib(b, ABI13)
	words := make([]string, 32000-simulator.FirstWord)
	for i := range words {
		words[i] = string(rune('a'+i%26)) + string(rune('A'+i/26%26)) + string(rune('0'+i/676%10)) + string(rune('a'+i/6760))
	}
	model, _ := writeModel(b, func(m *simulator.Model) { m.Vocab = words })
	h := newHandle(b, lib, params(lib, model))
	in := []Input{{Type: InputToken, TokenIDs: []int32{300}}}
	b.SetBytes(32000 * 4)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := h.Run(b.Context(), in, InferParams{Mode: InferGetLogits}, func(Delivery) CallbackAction { return Continue }); err != nil {
			b.Fatal(err)
		}
	}
}
