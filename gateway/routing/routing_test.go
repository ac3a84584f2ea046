package routing

import (
	"fmt"
	"hash/maphash"
	"testing"
)

func replicas(loads ...int) []Replica {
	out := make([]Replica, len(loads))
	for i, l := range loads {
		out[i] = Replica{ID: fmt.Sprintf("pod-%d", i), InFlight: l}
	}
	return out
}

// top is the replica a conversation ranks first.
func top(rs []Replica, key uint64, seed maphash.Seed) int { return rank(rs, key, seed)[0] }

func TestChooseWithoutConversation(t *testing.T) {
	seed := maphash.MakeSeed()
	cases := []struct {
		name   string
		loads  []int
		policy Policy
		rotate uint64
		want   int
	}{
		{"least loaded", []int{3, 1, 2}, Policy{}, 0, 1},
		{"ties take turns 0", []int{1, 0, 0}, Policy{}, 0, 1},
		{"ties take turns 1", []int{1, 0, 0}, Policy{}, 1, 2},
		{"ties take turns 2", []int{1, 0, 0}, Policy{}, 2, 1},
		{"full replicas skipped", []int{0, 4, 4}, Policy{MaxInFlight: 1}, 0, 0},
		{"every replica full", []int{2, 2}, Policy{MaxInFlight: 2}, 0, -1},
		{"no replica", nil, Policy{}, 0, -1},
		{"affinity off ignores the key", []int{0, 1}, Policy{NoAffinity: true}, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := uint64(0)
			if tc.policy.NoAffinity {
				key = 42
			}
			got, outcome := Choose(replicas(tc.loads...), key, tc.policy, seed, tc.rotate)
			if got != tc.want || outcome != Balanced {
				t.Errorf("Choose = %d %s, want %d balanced", got, outcome, tc.want)
			}
		})
	}
}

func TestChooseWithConversation(t *testing.T) {
	seed := maphash.MakeSeed()
	const key = 0xfeedface
	idle := replicas(0, 0, 0)
	first := top(idle, key, seed)
	order := rank(idle, key, seed)
	with := func(loads map[int]int) []Replica {
		rs := replicas(0, 0, 0)
		for i, l := range loads {
			rs[i].InFlight = l
		}
		return rs
	}
	cases := []struct {
		name    string
		rs      []Replica
		policy  Policy
		want    int
		outcome Outcome
	}{
		{"idle: its replica", idle, Policy{}, first, Affine},
		// One request elsewhere: the mean with this one is 2/3, the bound ceil(1.25*2/3) = 1,
		// so the conversation's replica (empty) still takes it.
		{"others busy: still its replica", with(map[int]int{order[1]: 1}), Policy{}, first, Affine},
		// Its replica has one request: the bound is 1, so it is full; the next in the
		// conversation's order takes it (not merely the least loaded).
		{"its replica overloaded: spills in order", with(map[int]int{first: 1}), Policy{}, order[1], Spilled},
		{"a looser bound keeps it", with(map[int]int{first: 1}), Policy{LoadFactor: 3}, first, Affine},
		{"its replica at MaxInFlight", with(map[int]int{first: 2, order[1]: 2, order[2]: 2}), Policy{LoadFactor: 10, MaxInFlight: 2}, -1, Spilled},
		{"below MaxInFlight and bound", with(map[int]int{first: 3, order[1]: 3, order[2]: 3}), Policy{MaxInFlight: 4}, first, Affine},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, outcome := Choose(tc.rs, key, tc.policy, seed, 0)
			if got != tc.want || outcome != tc.outcome {
				t.Errorf("Choose = %d %s, want %d %s (order %v)", got, outcome, tc.want, tc.outcome, order)
			}
		})
	}
}

// A replica that goes away moves only the conversations that ranked it first; one that
// comes takes some conversations and leaves the others where they were.
func TestAffinityIsStableWhenReplicasChange(t *testing.T) {
	seed := maphash.MakeSeed()
	three := replicas(0, 0, 0)
	two := three[:2]
	four := append(replicas(0, 0, 0), Replica{ID: "pod-new"})
	moved, movedOnGrow := 0, 0
	const n = 3000
	for k := uint64(1); k <= n; k++ {
		was := three[top(three, k, seed)].ID
		if now := two[top(two, k, seed)].ID; was != "pod-2" && now != was {
			moved++
		}
		if now := four[top(four, k, seed)].ID; now != was && now != "pod-new" {
			movedOnGrow++
		}
	}
	if moved != 0 || movedOnGrow != 0 {
		t.Errorf("conversations moved between replicas that stayed: %d on removal, %d on addition", moved, movedOnGrow)
	}
}

// Conversations spread over the replicas, about evenly.
func TestAffinitySpreads(t *testing.T) {
	seed := maphash.MakeSeed()
	rs := replicas(0, 0, 0)
	count := map[int]int{}
	for k := uint64(1); k <= 3000; k++ {
		count[top(rs, k, seed)]++
	}
	for i := range rs {
		if count[i] < 800 || count[i] > 1200 {
			t.Errorf("replica %d is first for %d of 3000 conversations: %v", i, count[i], count)
		}
	}
}

func TestBalancerCountsAndReleases(t *testing.T) {
	b := NewBalancer(Policy{MaxInFlight: 1}, maphash.MakeSeed())
	ids := []string{"a", "b"}
	first, _, rel1, ok1 := b.Acquire(ids, 0)
	second, _, rel2, ok2 := b.Acquire(ids, 0)
	_, _, _, ok3 := b.Acquire(ids, 0)
	if !ok1 || !ok2 || ok3 || first == second {
		t.Fatalf("acquire: %s %v, %s %v, third %v; want two replicas then none", first, ok1, second, ok2, ok3)
	}
	rel1()
	rel1() // a second release changes nothing
	if b.InFlight(first) != 0 || b.InFlight(second) != 1 {
		t.Errorf("in flight %d %d after one release", b.InFlight(first), b.InFlight(second))
	}
	again, _, rel4, ok := b.Acquire(ids, 0)
	if !ok || again != first {
		t.Errorf("acquire after release = %s %v, want %s", again, ok, first)
	}
	rel2()
	rel4()
	if b.InFlight("a")+b.InFlight("b") != 0 {
		t.Error("requests left in flight")
	}
}
