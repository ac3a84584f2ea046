package placement

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// model is an idle, scalable model at one replica, used an hour ago, scaled up two
// hours ago.
func model(key string, mutate ...func(*Model)) Model {
	m := Model{Key: "ns/" + key, Name: key, Replicas: 1, Units: 1, Scalable: true,
		LastUsed: now.Add(-time.Hour), ActiveSince: now.Add(-2 * time.Hour)}
	for _, f := range mutate {
		f(&m)
	}
	return m
}

func pod(model, node string) Pod { return Pod{Model: "ns/" + model, Node: node, Units: 1} }

func node(name string, alloc int64) Node { return Node{Name: name, Allocatable: alloc, Eligible: true} }

func req(key string) Request {
	return Request{Model: "ns/" + key, Name: key, Units: 1, Now: now, MinLifetime: time.Minute}
}

func evict(key string) Eviction { return Eviction{Model: "ns/" + key, Name: key, From: 1, To: 0} }

func TestPlan(t *testing.T) {
	cases := []struct {
		name    string
		req     Request
		nodes   []Node
		pods    []Pod
		models  []Model
		want    Decision
		wantErr []string // substrings of the NoCapacityError
	}{
		{
			name:  "a free NPU: no eviction",
			req:   req("b"),
			nodes: []Node{node("n1", 1), node("n2", 1)},
			pods:  []Pod{pod("a", "n1")}, models: []Model{model("a"), model("b", func(m *Model) { m.Replicas = 0 })},
			want: Decision{Node: "n2"},
		},
		{
			name:  "one NPU held by an idle model: evict it",
			req:   req("b"),
			nodes: []Node{node("n1", 1)},
			pods:  []Pod{pod("a", "n1")}, models: []Model{model("a"), model("b", func(m *Model) { m.Replicas = 0 })},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			name:  "the least recently used goes first",
			req:   req("c"),
			nodes: []Node{node("n1", 1), node("n2", 1)},
			pods:  []Pod{pod("a", "n1"), pod("b", "n2")},
			models: []Model{
				model("a", func(m *Model) { m.LastUsed = now.Add(-time.Minute * 5) }),
				model("b", func(m *Model) { m.LastUsed = now.Add(-time.Minute * 50) }),
			},
			want: Decision{Node: "n2", Evict: []Eviction{evict("b")}},
		},
		{
			name:  "lower priority goes before less recently used",
			req:   req("c"),
			nodes: []Node{node("n1", 1), node("n2", 1)},
			pods:  []Pod{pod("a", "n1"), pod("b", "n2")},
			models: []Model{
				model("a", func(m *Model) { m.LastUsed = now.Add(-time.Minute); m.Priority = -5 }),
				model("b", func(m *Model) { m.LastUsed = now.Add(-time.Hour) }),
			},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			name:    "a higher priority is never evicted",
			req:     req("c"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("a", "n1")},
			models:  []Model{model("a", func(m *Model) { m.Priority = 10 })},
			wantErr: []string{"no rockchip.com/npu is free for model c", "n1: 1 of 1 in use", "a has priority 10, above c's 0"},
		},
		{
			name:    "a busy model is not evicted: 503 says why",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("b", "n1")},
			models:  []Model{model("b", func(m *Model) { m.Busy = "1 requests in flight" })},
			wantErr: []string{"b is busy (1 requests in flight)"},
		},
		{
			name:    "a model inside its minimum lifetime is not evicted",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("b", "n1")},
			models:  []Model{model("b", func(m *Model) { m.ActiveSince = now.Add(-20 * time.Second) })},
			wantErr: []string{"b was scaled up 20s ago (minimum lifetime 1m0s)"},
		},
		{
			name:    "a model without spec.scaling is not evicted",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("b", "n1")},
			models:  []Model{model("b", func(m *Model) { m.Scalable = false })},
			wantErr: []string{"b has no spec.scaling"},
		},
		{
			name:    "a model at its minReplicas is not evicted",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("b", "n1")},
			models:  []Model{model("b", func(m *Model) { m.MinReplicas = 1 })},
			wantErr: []string{"b is at its minReplicas (1)"},
		},
		{
			name:  "an eviction keeps minReplicas, counting on what is left",
			req:   req("a"),
			nodes: []Node{node("n1", 2)},
			pods:  []Pod{pod("b", "n1"), pod("b", "n1")},
			models: []Model{model("b", func(m *Model) {
				m.Replicas, m.MinReplicas = 2, 1
			})},
			want: Decision{Node: "n1", Evict: []Eviction{{Model: "ns/b", Name: "b", From: 2, To: 1}}},
		},
		{
			name:    "only nodes the model may run on count",
			req:     req("b"),
			nodes:   []Node{node("n1", 1), {Name: "other-soc", Allocatable: 1}},
			pods:    []Pod{pod("a", "n1")},
			models:  []Model{model("a", func(m *Model) { m.Busy = "streaming" })},
			wantErr: []string{"on the 1 node it may run on", "n1: 1 of 1 in use"},
		},
		{
			name:  "a victim on a node the model cannot use frees nothing for it",
			req:   req("c"),
			nodes: []Node{node("n1", 1), {Name: "n2", Allocatable: 1}},
			pods:  []Pod{pod("a", "n1"), pod("b", "n2")},
			models: []Model{
				model("a", func(m *Model) { m.LastUsed = now }),
				model("b", func(m *Model) { m.LastUsed = now.Add(-24 * time.Hour) }),
			},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			name:    "no eligible node at all",
			req:     req("a"),
			nodes:   []Node{{Name: "n1", Allocatable: 1}},
			wantErr: []string{"no ready node with rockchip.com/npu matches its node selector"},
		},
		{
			name:   "a terminating pod's NPU counts as free",
			req:    req("b"),
			nodes:  []Node{node("n1", 1)},
			pods:   []Pod{{Model: "ns/a", Node: "n1", Units: 1, Terminating: true}},
			models: []Model{model("a", func(m *Model) { m.Replicas = 0 })},
			want:   Decision{Node: "n1"},
		},
		{
			name:  "a pod waiting for the scheduler claims the free NPU",
			req:   req("c"),
			nodes: []Node{node("n1", 1), node("n2", 1)},
			pods:  []Pod{pod("a", "n1"), pod("b", "")},
			models: []Model{model("a"), model("b", func(m *Model) {
				m.ActiveSince = now.Add(-time.Second)
			})},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			name:  "replicas asked for but not created yet claim NPUs",
			req:   req("c"),
			nodes: []Node{node("n1", 1), node("n2", 1)},
			pods:  []Pod{pod("a", "n1")},
			models: []Model{model("a"), model("b", func(m *Model) {
				m.ActiveSince = now.Add(-time.Second)
			})},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			name:  "the model's own waiting pod does not claim against itself",
			req:   req("b"),
			nodes: []Node{node("n1", 1)},
			pods:  []Pod{pod("a", "n1"), pod("b", "")},
			models: []Model{model("a"), model("b", func(m *Model) {
				m.ActiveSince = now.Add(-time.Second)
			})},
			want: Decision{Node: "n1", Evict: []Eviction{evict("a")}},
		},
		{
			// A swap that has just been decided: the NPU is free but claimed.
			name:    "a model starting takes the only NPU: it says so",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("b", "")},
			models:  []Model{model("a", func(m *Model) { m.Replicas = 0 }), model("b")},
			wantErr: []string{"n1: 0 of 1 in use", "b is starting"},
		},
		{
			name:    "a model asked for with no pod yet takes the only NPU: it says so",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			models:  []Model{model("a", func(m *Model) { m.Replicas = 0 }), model("b")},
			wantErr: []string{"n1: 0 of 1 in use", "b is starting"},
		},
		{
			name:    "other workloads' pods hold NPUs too",
			req:     req("a"),
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{{Node: "n1", Units: 1}},
			wantErr: []string{"n1: 1 of 1 in use", "no model holds one that the gateway could free"},
		},
		{
			name:  "cores mode: two units on one node, fewest evictions",
			req:   Request{Model: "ns/big", Name: "big", Units: 2, Now: now, MinLifetime: time.Minute},
			nodes: []Node{node("n1", 3), node("n2", 3)},
			pods:  []Pod{pod("a", "n1"), pod("b", "n1"), pod("c", "n1"), pod("d", "n2"), pod("e", "n2")},
			models: []Model{model("a"), model("b"), model("c"),
				model("d", func(m *Model) { m.LastUsed = now }), model("e", func(m *Model) { m.LastUsed = now })},
			want: Decision{Node: "n2", Evict: []Eviction{evict("d")}},
		},
		{
			name:    "another replica of a running model counts its own pods",
			req:     Request{Model: "ns/a", Name: "a", Units: 1, Now: now, Additional: true},
			nodes:   []Node{node("n1", 1)},
			pods:    []Pod{pod("a", "n1")},
			models:  []Model{model("a", func(m *Model) { m.Scalable = false })},
			wantErr: []string{"n1: 1 of 1 in use"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Plan(tc.req, tc.nodes, tc.pods, tc.models)
			if len(tc.wantErr) > 0 {
				var nc *NoCapacityError
				if !errors.As(err, &nc) {
					t.Fatalf("Plan = %+v, %v; want a NoCapacityError", d, err)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d, tc.want) {
				t.Errorf("Plan = %+v, want %+v", d, tc.want)
			}
		})
	}
}
