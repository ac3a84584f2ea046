package supervisor

import (
	"fmt"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Embedding is a batch of inputs of the HTTP APIs' embedding endpoints, queued as one
// request: each input is a run in RKLLM_INFER_GET_LAST_HIDDEN_LAYER mode (prefill
// only, no generation) with keep_history 0, the runtime's chat template switched off
// and no function tools, so the hidden states are those of the input alone, from cache
// position 0, whatever ran before. The KV cache is cleared first: a conversation it
// held is gone (the conversation-prefix record is dropped, and the next turn of that
// conversation prefills it whole).
type Embedding struct {
	// Inputs are the texts (InputPrompt) or token ids (InputToken), one run each.
	Inputs []runtime.Input
	// Deliver receives each delivery of input i's run, in order, on the executor: the
	// hidden states (a NORMAL delivery) and the FINISH with the perf counters. It must
	// not block for long.
	Deliver func(i int, d runtime.Delivery)
}

// InputError is the failure of one input of an Embedding.
type InputError struct {
	// Input is the index of the input that failed.
	Input int
	Err   error
}

func (e *InputError) Error() string { return fmt.Sprintf("input %d: %v", e.Input, e.Err) }

// Unwrap returns the run's error.
func (e *InputError) Unwrap() error { return e.Err }

// execEmbedding runs an Embedding's inputs one after the other. A client's abort, its
// context or a failed input ends the batch there.
func (s *Supervisor) execEmbedding(p *proc, t *Ticket, e *Embedding) (Outcome, error) {
	if err := s.modelErr(); err != nil {
		return Outcome{}, err
	}
	if s.kv.valid {
		s.log.V(1).Info("an embedding request clears the conversation the KV cache held; its next turn is prefilled whole", "request_id", t.req.ID)
	}
	s.kv.invalidate()
	if err := s.setHandle(p, templateOff, nil); err != nil {
		return Outcome{}, fmt.Errorf("prepare the handle: %w", err)
	}
	// Until the batch has run well, the cache may hold what a failed run left.
	s.convInCache = true
	if err := s.handleCall(p, &workerproto.ClearKVCache{}); err != nil {
		return Outcome{}, fmt.Errorf("clear the KV cache: %w", err)
	}
	for i, in := range e.Inputs {
		if err := t.ctx.Err(); err != nil {
			return Outcome{}, contextError(t.ctx, "while running")
		}
		run := &workerproto.Run{Inputs: []runtime.Input{in}, Infer: runtime.InferParams{Mode: runtime.InferGetLastHiddenLayer}}
		if err := s.checkLimits(run); err != nil {
			return Outcome{}, &InputError{Input: i, Err: err}
		}
		out, err := s.execRun(p, t, run, func(d runtime.Delivery) { e.Deliver(i, d) })
		if err != nil {
			return out, &InputError{Input: i, Err: err}
		}
		if out.Aborted {
			return out, fmt.Errorf("%w: the embedding request was aborted at input %d", ErrAborted, i)
		}
	}
	// keep_history 0 leaves the cache as the clear left it: empty.
	s.convInCache = false
	return Outcome{}, nil
}
