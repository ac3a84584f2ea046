package supervisor

import (
	"testing"
	"time"
)

// TestBackoff: the n-th consecutive failure waits min*2^(n-1), capped at max, spread by
// at most ±20% and really spread; reset starts over from min.
func TestBackoff(t *testing.T) {
	const draws = 500 // per step, to see the jitter's bounds and spread
	for _, tc := range []struct {
		name     string
		min, max time.Duration
		// want are the delays before jitter of consecutive failures.
		want []time.Duration
	}{
		{"doubles to the cap", 500 * time.Millisecond, 30 * time.Second,
			[]time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}},
		{"cap between two doublings", 20 * time.Millisecond, 50 * time.Millisecond,
			[]time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}},
		{"min at the cap", time.Second, time.Second, []time.Duration{time.Second, time.Second, time.Second}},
		{"many failures stay capped", time.Millisecond, time.Minute,
			powers(time.Millisecond, time.Minute, 80)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for n, base := range tc.want {
				lo, hi := base-base/5, base+base/5
				seen := map[time.Duration]bool{}
				for range draws {
					b := backoff{min: tc.min, max: tc.max, failures: n}
					d := b.next()
					if d < lo || d > hi {
						t.Fatalf("failure %d: delay %s outside %s..%s (%s ±20%%)", n+1, d, lo, hi, base)
					}
					if b.failures != n+1 {
						t.Fatalf("failure %d: %d failures recorded", n+1, b.failures)
					}
					seen[d] = true
				}
				if len(seen) < 2 {
					t.Errorf("failure %d: %d draws all %v: no jitter", n+1, draws, seen)
				}
			}
			// One backoff through the whole sequence, then reset: back to min.
			b := backoff{min: tc.min, max: tc.max}
			for range tc.want {
				b.next()
			}
			b.reset()
			if d := b.next(); d < tc.min-tc.min/5 || d > tc.min+tc.min/5 {
				t.Errorf("first delay after reset %s, want %s ±20%%", d, tc.min)
			}
		})
	}
}

// powers lists first*2^i capped at most, n of them.
func powers(first, most time.Duration, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for d := first; len(out) < n; d *= 2 {
		if d >= most {
			d = most
		}
		out = append(out, d)
	}
	return out
}
