package httpapi

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rkllm-operator/rkllm-operator/gateway/admission"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/routing"
)

// modelState is what the gateway keeps of one model between requests: its gate (room
// and queue), the in-flight count of each replica, and when it was last used.
type modelState struct {
	gate     *admission.Gate
	balancer *routing.Balancer
	lastUsed atomic.Int64 // unix nanoseconds; 0: never
}

// registry holds the state of every model by id.
type registry struct {
	maxQueue    int
	perReplica  int
	policy      routing.Policy
	seed        maphash.Seed
	mu          sync.Mutex
	models      map[string]*modelState
	readyMetric func(model string, n int)
}

func (g *registry) state(name string) *modelState {
	g.mu.Lock()
	defer g.mu.Unlock()
	st, ok := g.models[name]
	if !ok {
		st = &modelState{gate: admission.NewGate(g.maxQueue), balancer: routing.NewBalancer(g.policy, g.seed)}
		g.models[name] = st
	}
	return st
}

// lookup returns the model's state, if it has one.
func (g *registry) lookup(name string) (*modelState, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	st, ok := g.models[name]
	return st, ok
}

// sync sets each model's room from its ready replicas; models gone from the catalog
// get none (their waiting requests time out).
func (g *registry) sync(models []catalog.Model) {
	seen := map[string]bool{}
	for _, m := range models {
		seen[m.Name] = true
		g.state(m.Name).gate.SetCapacity(len(m.Endpoints) * g.perReplica)
		g.readyMetric(m.Name, len(m.Endpoints))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, st := range g.models {
		if !seen[name] {
			st.gate.SetCapacity(0)
			if s, _ := st.gate.State(); s.Idle() {
				delete(g.models, name)
			}
		}
	}
}

// watch keeps the registry in line with the catalog until ctx ends.
func (g *registry) watch(ctx context.Context, c catalog.Catalog) {
	for {
		changed := c.Changed()
		g.sync(c.List())
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Busy implements scaling.Activity.
func (g *registry) Busy(model string) string {
	st, ok := g.lookup(model)
	if !ok {
		return ""
	}
	s, _ := st.gate.State()
	if s.Idle() {
		return ""
	}
	return fmt.Sprintf("%d requests in flight and %d queued at this gateway", s.InUse, s.Waiting)
}

// LastUsed implements scaling.Activity.
func (g *registry) LastUsed(model string) time.Time {
	st, ok := g.lookup(model)
	if !ok {
		return time.Time{}
	}
	if n := st.lastUsed.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

func (st *modelState) used(t time.Time) { st.lastUsed.Store(t.UnixNano()) }
