package supervisor

import (
	"fmt"
	"math"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// DefaultMinPrefillRate is the prefill rate, in tokens per second, the watchdog
// assumes when none is configured. Public RK3588 figures: about 250 tokens/s for a 0.6B
// model, 1.8 s to the first token of a short prompt for a 4B model (some 20 tokens/s),
// and 7-8B models, the largest a board holds, slower still; 10 leaves them room.
// docs/server.md explains the choice.
const DefaultMinPrefillRate = 10

// fallbackContextTokens caps the prompt estimate when the loaded model's
// max_context_len is not known.
const fallbackContextTokens = 1 << 17

// prefillBudget is how long a run may go before its first delivery: the runtime
// reports nothing while it prefills, so TokenStallTimeout alone would abort a long
// prompt on a slow model while the NPU works.
type prefillBudget struct {
	total  time.Duration
	stall  time.Duration
	tokens int
	rate   float64
}

func (b prefillBudget) String() string {
	return fmt.Sprintf("no first token within %s (--token-stall-timeout %s plus at most %d prompt tokens at --min-prefill-rate %g tokens/s)",
		b.total.Round(time.Millisecond), b.stall, b.tokens, b.rate)
}

// prefillBudget is TokenStallTimeout plus the run's prompt tokens at MinPrefillRate.
// The tokens are an upper bound (see promptTokens) of each input with the template and
// tools around it, each capped at the loaded model's max_context_len, which the runtime
// never prefills past.
func (s *Supervisor) prefillBudget(inputs []runtime.Input) prefillBudget {
	s.mu.Lock()
	ctxLen := fallbackContextTokens
	if s.desired != nil && s.desired.MaxContextLen > 0 {
		ctxLen = int(s.desired.MaxContextLen)
	}
	s.mu.Unlock()
	around := s.applied.textBytes()
	tokens := 0
	for i := range inputs {
		tokens = satAdd(tokens, min(satAdd(promptTokens(&inputs[i]), around), ctxLen))
	}
	return newPrefillBudget(s.opts.TokenStallTimeout, tokens, s.opts.MinPrefillRate)
}

func newPrefillBudget(stall time.Duration, tokens int, rate float64) prefillBudget {
	prefill := float64(tokens) / rate * float64(time.Second)
	total := time.Duration(math.MaxInt64)
	if prefill < float64(math.MaxInt64-stall) {
		total = stall + time.Duration(prefill)
	}
	return prefillBudget{total: total, stall: stall, tokens: tokens, rate: rate}
}

// textBytes is the size of the template and tools the runtime puts around a prompt.
func (h handleState) textBytes() int {
	n := 0
	if c := h.chat; c != nil {
		n += len(c.SystemPrompt) + len(c.PromptPrefix) + len(c.PromptPostfix)
	}
	if t := h.tools; t != nil {
		n += len(t.SystemPrompt) + len(t.Tools) + len(t.ToolResponseStr)
	}
	return n
}

// promptTokens is an upper bound of the positions an input prefills. Text counts one
// token per byte: a tokenizer's token covers at least one byte (byte-level BPE and byte
// fallback), so no text prefills more. The counts of the input are taken as given,
// without overflow, whether or not they were checked.
func promptTokens(in *runtime.Input) int {
	switch in.Type {
	case runtime.InputToken:
		return max(len(in.TokenIDs), in.NTokens, 0)
	case runtime.InputEmbed:
		return max(in.NTokens, 0)
	case runtime.InputMultimodal:
		mm := &in.Multimodal
		n := len(mm.Prompt) + len(mm.ImageStart) + len(mm.ImageEnd) + len(mm.ImageContent) +
			len(mm.VideoStart) + len(mm.VideoEnd) + len(mm.VideoContent)
		n = satAdd(n, satMul(mm.NImage, mm.NImageTokens))
		return satAdd(n, satMul(mm.NVideo, satMul(mm.NFramePerVideo, mm.NFrameTokens)))
	}
	return len(in.Prompt)
}

// satAdd adds two counts (negative ones count as 0), saturating at MaxInt.
func satAdd(a, b int) int {
	a, b = max(a, 0), max(b, 0)
	if a > math.MaxInt-b {
		return math.MaxInt
	}
	return a + b
}

// satMul multiplies two counts (negative ones count as 0), saturating at MaxInt.
func satMul(a, b int) int {
	a, b = max(a, 0), max(b, 0)
	if a != 0 && b > math.MaxInt/a {
		return math.MaxInt
	}
	return a * b
}
