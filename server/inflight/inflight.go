// Package inflight is rkllm-server's one budget of memory held by requests in flight
// (--max-inflight-bytes). Every transport and every stage of a request charges it
// before the allocation it pays for: the body or socket line as it is read, the decoded
// messages, the rendered prompt, the run's frame to the worker, and the hidden states
// or logits a run returns with their encoding for the client. A charge that does
// not fit is refused, and the request is answered busy (-32002, HTTP 429 with
// Retry-After) instead of the server running out of memory. Waiting requests hold
// their charges, so the queue is bounded by what it costs, not by a count.
package inflight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
)

// Budget counts the bytes that requests in flight hold.
type Budget struct {
	max  int64
	used atomic.Int64

	largeMin int64            // see OnLarge
	large    func(peak int64) // see OnLarge
}

// OnLarge has f called with its peak when an account that held at least min bytes at
// once closes (the server gives such a request's memory back to the system then). f
// must not block. Call it before the budget is used.
func (b *Budget) OnLarge(min int64, f func(peak int64)) { b.largeMin, b.large = min, f }

// New returns a budget of max bytes (max <= 0: no limit).
func New(max int64) *Budget { return &Budget{max: max} }

// Max is the budget's size (0: no limit).
func (b *Budget) Max() int64 { return max(b.max, 0) }

// Used is the bytes charged now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// Open starts the account of one request (or one message); Close ends it. A nil
// budget gives a nil account, which charges nothing.
func (b *Budget) Open() *Account {
	if b == nil {
		return nil
	}
	return &Account{b: b}
}

// OverError is a charge that did not fit.
type OverError struct {
	// Need is the charge refused, Used what other requests held then, Max the budget.
	Need, Used, Max int64
}

func (e *OverError) Error() string {
	return fmt.Sprintf("busy: the server holds %d bytes of requests in flight and this one needs %d more (limit %d, --max-inflight-bytes); retry later", e.Used, e.Need, e.Max)
}

// RetryAfterSeconds is what a refused client is told to wait before trying again.
const RetryAfterSeconds = 1

// Account is what one request holds of the budget. A nil account charges nothing.
type Account struct {
	b    *Budget
	held atomic.Int64
	peak atomic.Int64 // the most held at once
}

// Charge takes n more bytes for the request, or returns an *OverError and takes
// nothing. A request that is alone in flight is never refused, so one message larger
// than the budget can still be served, alone.
func (a *Account) Charge(n int) error {
	if a == nil || n <= 0 {
		return nil
	}
	need := int64(n)
	for {
		used := a.b.used.Load()
		mine := a.held.Load()
		if a.b.max > 0 && used+need > a.b.max && used != mine {
			return &OverError{Need: need, Used: used - mine, Max: a.b.max}
		}
		if a.b.used.CompareAndSwap(used, used+need) {
			held := a.held.Add(need)
			for peak := a.peak.Load(); held > peak && !a.peak.CompareAndSwap(peak, held); peak = a.peak.Load() {
			}
			return nil
		}
	}
}

// Release gives back n bytes of what the request holds (a stage whose memory is no
// longer referenced).
func (a *Account) Release(n int) {
	if a == nil || n <= 0 {
		return
	}
	n64 := min(int64(n), a.held.Load())
	a.held.Add(-n64)
	a.b.used.Add(-n64)
}

// Budget is the budget the account charges (nil for a nil account): a stage that
// outlives the request's own account (an asynchronous run) opens one of its own there.
func (a *Account) Budget() *Budget {
	if a == nil {
		return nil
	}
	return a.b
}

// Held is what the request holds now.
func (a *Account) Held() int64 {
	if a == nil {
		return 0
	}
	return a.held.Load()
}

// Close gives back everything the request holds.
func (a *Account) Close() {
	if a == nil {
		return
	}
	a.b.used.Add(-a.held.Swap(0))
	if peak := a.peak.Swap(0); a.b.large != nil && peak >= a.b.largeMin {
		a.b.large(peak)
	}
}

type accountKey struct{}

// WithAccount returns a context carrying the request's account, for the stages that
// charge it further down.
func WithAccount(ctx context.Context, a *Account) context.Context {
	return context.WithValue(ctx, accountKey{}, a)
}

// FromContext returns the request's account, or nil (which charges nothing).
func FromContext(ctx context.Context) *Account {
	a, _ := ctx.Value(accountKey{}).(*Account)
	return a
}

// readChunk is the most ReadAll reads (and charges) at a time when the size is not
// known in advance.
const readChunk = 64 << 10

// ReadAll reads r to its end, charging a for each allocation before it is made: size
// bytes at once when the size is known (size >= 0, such as a Content-Length), else
// the buffer's growth as the data comes. On an *OverError the read stops.
func ReadAll(r io.Reader, a *Account, size int64) ([]byte, error) {
	capacity := readChunk
	if size >= 0 {
		capacity = int(min(size, 1<<40)) + 1 // +1: the read that finds the end
	}
	if err := a.Charge(capacity); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, capacity)
	for {
		if len(buf) == cap(buf) {
			grow := max(cap(buf), readChunk)
			if err := a.Charge(grow); err != nil {
				return buf, err
			}
			grown := make([]byte, len(buf), cap(buf)+grow)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// ReadBody reads a request's body, paying for it first from the request's account (in
// its context): its size at once when the client sent a Content-Length, capped at
// limit, which the body cannot exceed (http.MaxBytesReader), else as it comes. An
// *OverError says the body does not fit; the rest of it has then been read and thrown
// away (within the body's limit and deadline, holding no more memory), so that the
// client, still sending, reads the answer instead of a reset connection.
func ReadBody(r *http.Request, limit int64) ([]byte, error) {
	size := r.ContentLength
	if size > limit {
		size = limit
	}
	body, err := ReadAll(r.Body, FromContext(r.Context()), size)
	var over *OverError
	if errors.As(err, &over) {
		_, _ = io.Copy(io.Discard, r.Body)
		return nil, err
	}
	return body, err
}
