// Package placement decides, as a pure function of what the cluster holds, whether a
// model can get an NPU and which idle models to scale down so that it can: the swap
// decision of the gateway. It counts rockchip.com/npu on the nodes the model may run on
// the way the scheduler does (allocatable minus what bound pods request), reserves what
// pods not yet scheduled and replicas not yet created will take, and picks victims among
// the models the gateway may scale: idle, past a minimum lifetime, of no higher priority
// than the model being activated, lowest priority first and then least recently used.
package placement

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Node is a node with NPUs, as a decision sees it.
type Node struct {
	Name string
	// Allocatable is the node's allocatable rockchip.com/npu.
	Allocatable int64
	// Eligible says the model being placed may run there: the node is ready and
	// schedulable and matches the model's node selector, required affinity and
	// tolerations.
	Eligible bool
}

// Pod is a pod requesting rockchip.com/npu.
type Pod struct {
	// Model is the key of the model the pod serves; "" for pods of other workloads.
	Model string
	// Node is the node the pod is bound to; "" while it waits for the scheduler.
	Node string
	// Units of rockchip.com/npu the pod requests.
	Units int64
	// Terminating pods are on their way out: their NPUs count as free, since the
	// scheduler places a waiting pod as soon as they are gone.
	Terminating bool
}

// Model is a model that holds or may hold NPUs.
type Model struct {
	// Key names the model (namespace/name), Name is how messages name it.
	Key, Name string
	// Replicas is spec.replicas, what the model asks for.
	Replicas int32
	// Units is the rockchip.com/npu each of its pods requests.
	Units int64
	// Scalable is true when the gateway may scale the model (it has spec.scaling).
	Scalable bool
	// MinReplicas is the fewest replicas an eviction leaves.
	MinReplicas int32
	// Priority orders victims: lower goes first, higher than the requester's never.
	Priority int32
	// LastUsed is when the model last had a request; ActiveSince when it was last
	// scaled up (the minimum lifetime counts from then).
	LastUsed, ActiveSince time.Time
	// Busy says why the model is not idle ("" when it is): requests in flight or
	// queued.
	Busy string
}

// Request is a model asking for room for one more replica.
type Request struct {
	// Model is the key of the model to place; Name how messages name it.
	Model, Name string
	// Units is the rockchip.com/npu its pod requests.
	Units int64
	// Priority of the model.
	Priority int32
	// Additional is true when the model already runs and asks for one more replica:
	// its own pods then hold NPUs like any other's (otherwise they are the ones being
	// placed, and do not count).
	Additional bool
	// Now and MinLifetime: a model scaled up less than MinLifetime before Now is not
	// evicted.
	Now         time.Time
	MinLifetime time.Duration
}

// Eviction scales one model down.
type Eviction struct {
	// Model is the model's key, Name how messages name it.
	Model, Name string
	// From and To are its replicas before and after.
	From, To int32
}

// Decision is where the new replica fits and what must make room for it.
type Decision struct {
	// Node is the node the decision counts on (the scheduler may choose another).
	Node string
	// Evict lists the models to scale down first; empty when an NPU is free.
	Evict []Eviction
}

// NoCapacityError says why a model cannot get an NPU now: what the nodes hold and why
// no model may be evicted.
type NoCapacityError struct {
	// Model names the model that asked.
	Model string
	// Nodes describes the nodes the model may run on and their use.
	Nodes string
	// Reasons say, per model holding NPUs, why it is not evicted, and which models are
	// starting and will take the NPUs still free.
	Reasons []string
}

func (e *NoCapacityError) Error() string {
	msg := fmt.Sprintf("no rockchip.com/npu is free for model %s (%s)", e.Model, e.Nodes)
	if len(e.Reasons) == 0 {
		return msg + ", and no model holds one that the gateway could free"
	}
	return msg + ", and no model can be evicted: " + strings.Join(e.Reasons, "; ")
}

// Plan decides how req gets an NPU: on a node with enough free units, or on the node
// where evicting the fewest (then the lowest-ranked) idle models frees enough. It
// returns a *NoCapacityError when neither works.
func Plan(req Request, nodes []Node, pods []Pod, models []Model) (Decision, error) {
	used, onNode := usage(req, pods)
	claims, starting := pendingClaims(req, pods, models)
	free := map[string]int64{}
	var eligible []Node
	for _, n := range nodes {
		if n.Eligible {
			eligible = append(eligible, n)
			free[n.Name] = n.Allocatable - used[n.Name]
		}
	}
	if len(eligible) == 0 {
		return Decision{}, &NoCapacityError{Model: req.Name, Nodes: "no ready node with rockchip.com/npu matches its node selector, affinity and tolerations"}
	}
	// Pods waiting for the scheduler take free units first, wherever they are.
	slices.SortStableFunc(eligible, func(a, b Node) int { return cmp.Compare(free[b.Name], free[a.Name]) })
	for _, n := range eligible {
		take := min(max(free[n.Name], 0), claims)
		free[n.Name] -= take
		claims -= take
	}
	for _, n := range eligible {
		if free[n.Name] >= req.Units+claims {
			return Decision{Node: n.Name}, nil
		}
	}

	victims, reasons := candidates(req, models)
	if d, ok := cheapest(req, eligible, free, claims, victims, onNode); ok {
		return d, nil
	}
	return Decision{}, &NoCapacityError{Model: req.Name, Nodes: describeNodes(eligible, used), Reasons: append(reasons, starting...)}
}

// cheapest is the eviction plan of the node where the fewest evictions, then the
// lowest-ranked victims, free enough; ok is false when no node can be freed.
func cheapest(req Request, eligible []Node, free map[string]int64, claims int64, victims []Model, onNode map[string]map[string]int32) (Decision, bool) {
	rankOf := map[string]int{}
	for i, v := range victims {
		rankOf[v.Key] = i
	}
	best, found := Decision{}, false
	bestCost := [2]int{}
	for _, n := range eligible {
		d, ok := planNode(req, n.Name, free[n.Name]-claims, victims, onNode)
		if !ok {
			continue
		}
		cost := [2]int{len(d.Evict), 0}
		for _, e := range d.Evict {
			cost[1] += rankOf[e.Model]
		}
		if !found || cost[0] < bestCost[0] || (cost[0] == bestCost[0] && cost[1] < bestCost[1]) {
			best, bestCost, found = d, cost, true
		}
	}
	return best, found
}

// usage sums the units bound pods hold per node (terminating pods and the requester's
// own excluded), and counts each model's such pods per node.
func usage(req Request, pods []Pod) (map[string]int64, map[string]map[string]int32) {
	used := map[string]int64{}
	onNode := map[string]map[string]int32{}
	for _, p := range pods {
		if p.Node == "" || p.Terminating || (!req.Additional && p.Model == req.Model) {
			continue
		}
		used[p.Node] += p.Units
		if p.Model != "" {
			if onNode[p.Model] == nil {
				onNode[p.Model] = map[string]int32{}
			}
			onNode[p.Model][p.Node]++
		}
	}
	return used, onNode
}

// pendingClaims is what pods waiting for the scheduler, and replicas whose pods do not
// exist yet, will take: units the requester cannot count on. starting says who claims
// them, for the refusal's message.
func pendingClaims(req Request, pods []Pod, models []Model) (claims int64, starting []string) {
	podsOf := map[string]int32{}
	waiting := map[string]bool{}
	for _, p := range pods {
		if p.Terminating || (!req.Additional && p.Model == req.Model) {
			continue
		}
		if p.Model != "" {
			podsOf[p.Model]++
		}
		if p.Node == "" {
			claims += p.Units
			waiting[p.Model] = true
		}
	}
	for _, m := range models {
		if (req.Additional || m.Key != req.Model) && m.Replicas > podsOf[m.Key] {
			claims += int64(m.Replicas-podsOf[m.Key]) * m.Units
			waiting[m.Key] = true
		}
	}
	for _, m := range models {
		if waiting[m.Key] {
			starting = append(starting, m.Name+" is starting (a replica asked for is not placed yet and will take an NPU)")
			delete(waiting, m.Key)
		}
	}
	if len(waiting) > 0 {
		starting = append(starting, "pods of other workloads wait for the scheduler and will take an NPU")
	}
	return claims, starting
}

// candidates returns the models that may be evicted, in eviction order, and for the
// others that hold NPUs, why not.
func candidates(req Request, models []Model) ([]Model, []string) {
	var out []Model
	var reasons []string
	for _, m := range models {
		if m.Key == req.Model || m.Replicas == 0 {
			continue
		}
		if why := notEvictable(req, m); why != "" {
			reasons = append(reasons, m.Name+" "+why)
			continue
		}
		out = append(out, m)
	}
	slices.SortStableFunc(out, func(a, b Model) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), a.LastUsed.Compare(b.LastUsed), cmp.Compare(a.Key, b.Key))
	})
	return out, reasons
}

// notEvictable says why m may not be scaled down for req; "" when it may.
func notEvictable(req Request, m Model) string {
	switch {
	case !m.Scalable:
		return "has no spec.scaling, so the gateway does not scale it"
	case m.Replicas <= m.MinReplicas:
		return fmt.Sprintf("is at its minReplicas (%d)", m.MinReplicas)
	case m.Priority > req.Priority:
		return fmt.Sprintf("has priority %d, above %s's %d", m.Priority, req.Name, req.Priority)
	case m.Busy != "":
		return "is busy (" + m.Busy + ")"
	case req.Now.Sub(m.ActiveSince) < req.MinLifetime:
		return fmt.Sprintf("was scaled up %s ago (minimum lifetime %s)", req.Now.Sub(m.ActiveSince).Round(time.Second), req.MinLifetime)
	}
	return ""
}

// planNode evicts victims, in order, with pods on node until free covers req; ok is
// false when they cannot. An eviction scales a model to its minReplicas, and counts on
// freeing only what is left on the node if all the replicas it keeps stay there.
func planNode(req Request, node string, free int64, victims []Model, onNode map[string]map[string]int32) (Decision, bool) {
	d := Decision{Node: node}
	for _, v := range victims {
		if free >= req.Units {
			break
		}
		pods := onNode[v.Key][node] - v.MinReplicas
		if pods <= 0 {
			continue
		}
		free += int64(pods) * v.Units
		d.Evict = append(d.Evict, Eviction{Model: v.Key, Name: v.Name, From: v.Replicas, To: v.MinReplicas})
	}
	return d, free >= req.Units
}

func describeNodes(nodes []Node, used map[string]int64) string {
	parts := make([]string, 0, len(nodes))
	slices.SortFunc(nodes, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s: %d of %d in use", n.Name, used[n.Name], n.Allocatable))
	}
	word := "nodes"
	if len(nodes) == 1 {
		word = "node"
	}
	return fmt.Sprintf("on the %d %s it may run on, %s", len(nodes), word, strings.Join(parts, ", "))
}
