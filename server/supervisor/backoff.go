package supervisor

import (
	"math/rand/v2"
	"time"
)

// backoff is capped exponential backoff with jitter: the n-th consecutive failure waits
// about min*2^(n-1), at most max, each delay spread by ±20% so that many servers
// restarted together do not retry in step.
type backoff struct {
	min, max time.Duration
	failures int
}

// next records a failure and returns how long to wait before the next attempt.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.failures && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.failures++
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) * 2 //nolint:gosec // jitter, not a secret
	return max(d-d/5+jitter, 0)
}

// reset forgets earlier failures (after a healthy period).
func (b *backoff) reset() { b.failures = 0 }
