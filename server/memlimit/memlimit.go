// Package memlimit bounds the Go heap of rkllm-server's processes and gives the memory
// of large requests back to the operating system once they are done.
//
// Go returns freed heap pages to the system slowly (its scavenger paces itself), and no
// collection runs at all while a server is idle, so one 10 MB request would leave tens
// of MiB resident for minutes. A Trimmer runs a collection and returns what is free
// (debug.FreeOSMemory) shortly after a large request ends: a full collection of a small
// live heap costs a few milliseconds, and it runs at most once per interval however
// many large requests come.
package memlimit

import (
	"math"
	"runtime/debug"
	"sync"
	"time"
)

// DefaultLimit is the default soft limit of each process's Go heap: above what the
// supervisor peaks at under --max-inflight-bytes' default (about 200 MiB with eight
// 15 MiB chats at once), a small part of a 4 GiB board whose model takes the rest.
const DefaultLimit = 256 << 20

// SetLimit sets the soft limit of the Go heap (runtime/debug.SetMemoryLimit): as the
// heap nears it the collector runs more often, and past it at most half the CPU goes
// to collection; allocations never fail for it. limit <= 0 removes the limit (a
// GOMEMLIMIT in the environment then applies, as the runtime read it at start).
func SetLimit(limit int64) {
	if limit <= 0 {
		return
	}
	debug.SetMemoryLimit(min(limit, math.MaxInt64))
}

// Trimmer returns freed memory to the system after large requests.
type Trimmer struct {
	// Min is the size from which a request counts as large (bytes held at once).
	Min int64
	// Delay is how long after a large request the memory is returned, so that the
	// requests of a burst are trimmed once.
	Delay time.Duration
	// Interval is the least time between two trims.
	Interval time.Duration
	// Release returns the memory (debug.FreeOSMemory and, in the worker, the C
	// allocator's free pages).
	Release func()

	mu      sync.Mutex
	pending bool
	last    time.Time
}

// Defaults of a Trimmer.
const (
	DefaultMin      = 1 << 20
	DefaultDelay    = 250 * time.Millisecond
	DefaultInterval = time.Second
)

// NewTrimmer returns a trimmer with the defaults, releasing with debug.FreeOSMemory
// and then each of also.
func NewTrimmer(also ...func()) *Trimmer {
	return &Trimmer{Min: DefaultMin, Delay: DefaultDelay, Interval: DefaultInterval, Release: func() {
		debug.FreeOSMemory()
		for _, f := range also {
			f()
		}
	}}
}

// Note reports that a request that held n bytes at most has ended; a large one
// schedules a trim, unless one is scheduled already. It never blocks.
func (t *Trimmer) Note(n int64) {
	if t == nil || n < t.Min {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending {
		return
	}
	t.pending = true
	wait := t.Delay
	if next := time.Until(t.last.Add(t.Interval)); next > wait {
		wait = next
	}
	time.AfterFunc(wait, t.trim)
}

// trim releases the memory. A large request that ends meanwhile schedules the next
// trim, an interval after this one began.
func (t *Trimmer) trim() {
	t.mu.Lock()
	t.pending = false
	t.last = time.Now()
	t.mu.Unlock()
	t.Release()
}
