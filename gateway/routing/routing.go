// Package routing picks the replica of a model a request goes to: the one with the
// fewest requests in flight, except that the requests of one conversation keep going to
// the same replica (whose KV cache holds the conversation's prefix) while that replica
// is not overloaded.
//
// Affinity is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
// "Consistent Hashing with Bounded Loads", 2018) over rendezvous hashing: each
// conversation ranks the replicas by a hash of (conversation, replica) and goes to the
// first whose load is under ceil(LoadFactor x the mean load with this request). A
// replica that comes or goes moves only the conversations that ranked it first, and an
// overloaded replica spills its newest requests to each conversation's next choice
// rather than to one neighbour.
package routing

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"sort"
	"sync"
)

// DefaultLoadFactor lets a conversation's replica carry 25% more than the mean load
// before its requests spill to another replica.
const DefaultLoadFactor = 1.25

// Outcome says how a replica was chosen, for metrics.
type Outcome string

// Outcomes of a pick.
const (
	// Affine: the conversation's first-ranked replica.
	Affine Outcome = "affine"
	// Spilled: the conversation's first-ranked replica was overloaded (or full), so a
	// later-ranked one took it.
	Spilled Outcome = "spilled"
	// Balanced: no conversation; the least loaded replica.
	Balanced Outcome = "balanced"
)

// Replica is one replica's name and load, as a decision sees it.
type Replica struct {
	// ID names the replica (its pod): the rendezvous hash is over it, so a replica keeps
	// its conversations across changes of the others.
	ID string
	// InFlight is the number of requests the gateway has sent it that have not ended.
	InFlight int
}

// Policy shapes decisions.
type Policy struct {
	// LoadFactor bounds a conversation's replica to LoadFactor x the mean load; below 1
	// means DefaultLoadFactor.
	LoadFactor float64
	// MaxInFlight is the most requests one replica may have in flight; 0 is no bound.
	MaxInFlight int
	// NoAffinity ignores conversations: every request goes to the least loaded replica
	// (ties in turn).
	NoAffinity bool
}

// Choose picks a replica for a request of conversation key (0: none). rotate breaks
// ties between equally loaded replicas, so requests without a conversation take turns.
// It returns -1 when every replica is at MaxInFlight (or there is none).
func Choose(replicas []Replica, key uint64, p Policy, seed maphash.Seed, rotate uint64) (int, Outcome) {
	if key != 0 && !p.NoAffinity {
		if i, first := affine(replicas, key, p, seed); i >= 0 {
			if first {
				return i, Affine
			}
			return i, Spilled
		}
		return -1, Spilled
	}
	return leastLoaded(replicas, p, rotate), Balanced
}

// affine walks the replicas in the conversation's rendezvous order and takes the first
// under the bound; first reports whether that is the top-ranked one.
func affine(replicas []Replica, key uint64, p Policy, seed maphash.Seed) (int, bool) {
	if len(replicas) == 0 {
		return -1, false
	}
	total := 1 // this request
	for _, r := range replicas {
		total += r.InFlight
	}
	factor := p.LoadFactor
	if factor < 1 {
		factor = DefaultLoadFactor
	}
	bound := int(math.Ceil(factor * float64(total) / float64(len(replicas))))
	order := rank(replicas, key, seed)
	for n, i := range order {
		r := replicas[i]
		if r.InFlight < bound && (p.MaxInFlight == 0 || r.InFlight < p.MaxInFlight) {
			return i, n == 0
		}
	}
	return -1, false
}

// rank orders the replicas' indexes by the rendezvous weight of (key, replica),
// highest first; equal weights (never in practice) fall back to the ID.
func rank(replicas []Replica, key uint64, seed maphash.Seed) []int {
	weights := make([]uint64, len(replicas))
	order := make([]int, len(replicas))
	for i, r := range replicas {
		order[i] = i
		var h maphash.Hash
		h.SetSeed(seed)
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], key)
		_, _ = h.Write(b[:])
		_, _ = h.WriteString(r.ID)
		weights[i] = h.Sum64()
	}
	sort.Slice(order, func(a, b int) bool {
		wa, wb := weights[order[a]], weights[order[b]]
		if wa != wb {
			return wa > wb
		}
		return replicas[order[a]].ID < replicas[order[b]].ID
	})
	return order
}

// leastLoaded returns the replica with the fewest requests in flight under
// MaxInFlight; among equals, the one rotate points at (counting from the first).
func leastLoaded(replicas []Replica, p Policy, rotate uint64) int {
	least := math.MaxInt
	var tied []int
	for i, r := range replicas {
		if p.MaxInFlight > 0 && r.InFlight >= p.MaxInFlight {
			continue
		}
		switch {
		case r.InFlight < least:
			least, tied = r.InFlight, append(tied[:0], i)
		case r.InFlight == least:
			tied = append(tied, i)
		}
	}
	if len(tied) == 0 {
		return -1
	}
	return tied[rotate%uint64(len(tied))]
}

// Balancer keeps the in-flight count of each replica of one model and picks replicas
// with Choose. It is safe for concurrent use.
type Balancer struct {
	policy Policy
	seed   maphash.Seed

	mu       sync.Mutex
	inflight map[string]int
	rotate   uint64
}

// NewBalancer returns a balancer deciding by p; seed is the process's hash seed (the
// same for every model, so a conversation's ranking is stable).
func NewBalancer(p Policy, seed maphash.Seed) *Balancer {
	return &Balancer{policy: p, seed: seed, inflight: map[string]int{}}
}

// Acquire picks one of the replicas (by ID) for a request of conversation key and
// counts the request against it until release is called (once). ok is false when
// every replica is at MaxInFlight.
func (b *Balancer) Acquire(ids []string, key uint64) (id string, outcome Outcome, release func(), ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rs := make([]Replica, len(ids))
	for i, id := range ids {
		rs[i] = Replica{ID: id, InFlight: b.inflight[id]}
	}
	i, outcome := Choose(rs, key, b.policy, b.seed, b.rotate)
	if i < 0 {
		return "", outcome, nil, false
	}
	b.rotate++
	id = ids[i]
	b.inflight[id]++
	var once sync.Once
	return id, outcome, func() { once.Do(func() { b.release(id) }) }, true
}

func (b *Balancer) release(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight[id]--; b.inflight[id] <= 0 {
		delete(b.inflight, id)
	}
}

// InFlight returns the requests in flight to replica id.
func (b *Balancer) InFlight(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight[id]
}
