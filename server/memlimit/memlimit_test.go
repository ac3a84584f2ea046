package memlimit

import (
	"testing"
	"time"
)

// waitTimeout bounds the wait for a trim; it ends as soon as the trim runs.
const waitTimeout = 10 * time.Second

// TestTrimAfterLargeRequests: small requests never trim; a burst of large ones trims
// once, after the last of them was noted; a large one after the trim trims again.
func TestTrimAfterLargeRequests(t *testing.T) {
	released := make(chan struct{}, 10)
	tr := &Trimmer{Min: 100, Delay: time.Millisecond, Interval: time.Millisecond, Release: func() { released <- struct{}{} }}
	for range 5 {
		tr.Note(99)
	}
	tr.mu.Lock()
	if tr.pending {
		t.Error("small requests scheduled a trim")
	}
	tr.mu.Unlock()
	for range 5 {
		tr.Note(100)
	}
	awaitTrim(t, released)
	tr.mu.Lock()
	if tr.pending || len(released) != 0 {
		t.Error("a burst of large requests trimmed more than once")
	}
	tr.mu.Unlock()
	tr.Note(1 << 20)
	awaitTrim(t, released)
	var none *Trimmer
	none.Note(1 << 30) // a nil trimmer trims nothing
}

func awaitTrim(t *testing.T, released <-chan struct{}) {
	t.Helper()
	select {
	case <-released:
	case <-time.After(waitTimeout):
		t.Fatalf("no trim within %s", waitTimeout)
	}
}
