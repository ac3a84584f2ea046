package rkllmrpc

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// A run's hidden states and logits are the largest thing the server holds for a
// client: up to --max-frame-bytes of float32 per delivery, and several times that once
// encoded as JSON numbers. They are paid for from the request's account of the budget
// of bytes in flight (--max-inflight-bytes) when they arrive, before they are kept:
// the floats kept for the result, its encoding and the transport's copy of the
// message, and while a streamed run's notification of them is encoded and queued, that
// too. A run whose arrays do not fit the budget is aborted and answered busy (-32002),
// never left to take the server's memory.

// maxFloatJSON is the longest a float32 is as a JSON array element: a sign, nine
// significant digits, the point, an exponent of four ("-1.17549435e-38"), a comma.
const maxFloatJSON = 16

// encodedLen bounds the bytes of n floats encoded as the client asked.
func encodedLen(n int, b64 bool) int {
	if b64 {
		return base64.StdEncoding.EncodedLen(4*n) + 2
	}
	return maxFloatJSON*n + 2
}

// arrayCost is what the floats of one delivery cost from arrival to the client: kept
// (4 bytes each), encoded into the result, and copied into the message the transport
// writes; stream adds their notification while it is encoded and queued for the
// client (encoding/json's passes over it: the array's own encoding, the buffer it is
// copied into, the copy returned, and the line queued).
func arrayCost(n int, b64, stream bool) (kept, transient int) {
	enc := encodedLen(n, b64)
	kept = 4*n + 2*enc
	if stream {
		transient = 4 * enc
	}
	return kept, transient
}

// arrayFloats counts the floats of hidden states and logits in a delivery.
func arrayFloats(d *runtime.Delivery) int {
	n := 0
	for i := range d.Results {
		n += len(d.Results[i].HiddenStates) + len(d.Results[i].Logits)
	}
	return n
}

// resultBusyError is a run whose hidden states or logits did not fit the budget of
// bytes in flight.
type resultBusyError struct {
	floats int
	over   *inflight.OverError
}

func (e *resultBusyError) Error() string {
	return fmt.Sprintf("busy: the run's hidden states or logits (%d floats, %d bytes with their encoding) do not fit what the server may hold for requests in flight now (%d bytes held by others, limit %d, --max-inflight-bytes); retry later, or ask for fewer positions",
		e.floats, e.over.Need, e.over.Used, e.over.Max)
}

func (e *resultBusyError) Unwrap() error { return e.over }

// chargeArrays pays for the arrays of d before they are kept. It returns false when
// they do not fit: the run is then stopped (its context ends, which aborts it) and
// answers busy. release gives back what the delivery's notification held once it has
// been queued.
func (a *runAcc) chargeArrays(d *runtime.Delivery) (release func(), ok bool) {
	n := arrayFloats(d)
	if n == 0 || a.acct == nil {
		return func() {}, a.over == nil
	}
	if a.over != nil {
		return func() {}, false
	}
	kept, transient := arrayCost(n, a.base64, a.notify != nil)
	if err := a.acct.Charge(kept + transient); err != nil {
		a.over = &resultBusyError{floats: n, over: asOver(err)}
		if a.stop != nil {
			a.stop()
		}
		return func() {}, false
	}
	return func() { a.acct.Release(transient) }, true
}

func asOver(err error) *inflight.OverError {
	if o, ok := err.(*inflight.OverError); ok { //nolint:errorlint // Charge returns it bare
		return o
	}
	return &inflight.OverError{}
}

// busy is the answer of a run whose arrays did not fit.
func (a *runAcc) busy() error {
	e := jsonrpc.BusyError(a.over.over)
	e.Message = a.over.Error()
	data, _ := e.Data.(map[string]any)
	data["request_id"] = a.id
	return e
}

// encode writes the final result as JSON, into one buffer of the size its arrays were
// charged for.
func (r *runResult) encode() (json.RawMessage, error) {
	return r.appendJSON(make([]byte, 0, r.size()))
}

// MarshalJSON implements json.Marshaler (the params of rkllm.done).
func (r *runResult) MarshalJSON() ([]byte, error) { return r.encode() }

// size bounds the encoded result.
func (r *runResult) size() int {
	n := 256 + len(r.RequestID) + len(r.FinishReason)
	entries := r.Results
	if r.entryResult != nil {
		entries = []entryResult{*r.entryResult}
	}
	for i := range entries {
		n += 128 + 6*len(entries[i].Text) + 12*len(entries[i].TokenIDs) // \u escapes at most 6 bytes a byte
		if h := entries[i].LastHiddenLayer; h != nil {
			n += 64 + encodedLen(len(h.HiddenStates.v), h.HiddenStates.base64)
		}
		if l := entries[i].Logits; l != nil {
			n += 64 + encodedLen(len(l.Logits.v), l.Logits.base64)
		}
	}
	return n
}

// appendJSON appends the result as encoding/json would marshal it.
func (r *runResult) appendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"request_id":`...)
	if b, err = appendMarshal(b, r.RequestID); err != nil {
		return nil, err
	}
	if r.entryResult != nil {
		b = append(b, ',')
		if b, err = r.appendFields(b); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"finish_reason":`...)
	if b, err = appendMarshal(b, r.FinishReason); err != nil {
		return nil, err
	}
	b = append(b, `,"perf":`...)
	if b, err = appendMarshal(b, r.Perf); err != nil {
		return nil, err
	}
	if len(r.Results) > 0 {
		b = append(b, `,"results":[`...)
		for i := range r.Results {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '{')
			if b, err = r.Results[i].appendFields(b); err != nil {
				return nil, err
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendFields appends an entry's members (without the braces).
func (e *entryResult) appendFields(b []byte) ([]byte, error) {
	var err error
	b = append(b, `"text":`...)
	if b, err = appendMarshal(b, e.Text); err != nil {
		return nil, err
	}
	b = append(b, `,"token_ids":[`...)
	for i, id := range e.TokenIDs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(id), 10)
	}
	b = strconv.AppendInt(append(b, `],"token_count":`...), int64(e.TokenCount), 10)
	if h := e.LastHiddenLayer; h != nil {
		b = strconv.AppendInt(append(b, `,"last_hidden_layer":{"embd_size":`...), int64(h.EmbdSize), 10)
		b = strconv.AppendInt(append(b, `,"num_tokens":`...), int64(h.NumTokens), 10)
		b = append(h.HiddenStates.appendJSON(append(b, `,"hidden_states":`...)), '}')
	}
	if l := e.Logits; l != nil {
		b = strconv.AppendInt(append(b, `,"logits":{"vocab_size":`...), int64(l.VocabSize), 10)
		b = strconv.AppendInt(append(b, `,"num_tokens":`...), int64(l.NumTokens), 10)
		b = append(l.Logits.appendJSON(append(b, `,"logits":`...)), '}')
	}
	return b, nil
}

// appendMarshal appends v as encoding/json marshals it (small values: strings, perf).
func appendMarshal(b []byte, v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, raw...), nil
}

// appendJSON appends the array as MarshalJSON writes it.
func (f floatOut) appendJSON(out []byte) []byte {
	if f.base64 {
		// In pieces of 768 floats (3,072 bytes, a multiple of 3: no padding inside), so
		// the little-endian bytes are never all held at once.
		var raw [3072]byte
		out = append(out, '"')
		for v := f.v; len(v) > 0; {
			n := min(len(v), len(raw)/4)
			for i, x := range v[:n] {
				binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
			}
			out = base64.StdEncoding.AppendEncode(out, raw[:4*n])
			v = v[n:]
		}
		return append(out, '"')
	}
	out = append(out, '[')
	for i, x := range f.v {
		if i > 0 {
			out = append(out, ',')
		}
		switch {
		case math.IsNaN(float64(x)):
			out = append(out, `"NaN"`...)
		case math.IsInf(float64(x), 1):
			out = append(out, `"Infinity"`...)
		case math.IsInf(float64(x), -1):
			out = append(out, `"-Infinity"`...)
		default:
			out = strconv.AppendFloat(out, float64(x), 'g', -1, 32)
		}
	}
	return append(out, ']')
}
