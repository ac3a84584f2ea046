package scaling_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
)

// A request for a model at zero scales it to one through the RKLLMModel when an NPU
// is free, and the activation ends when a replica is ready.
func TestActivationFromZero(t *testing.T) {
	w := newWorld(t)
	w.node("n1", 1)
	w.model("chat", 0)
	s := w.scaler("gw-1", scaling.Options{})
	a := s.Activate(w.known("chat"))

	w.eventually("spec.replicas 1", func() bool { return w.get("chat").Spec.GetReplicas() == 1 })
	m := w.get("chat")
	if _, err := time.Parse(time.RFC3339, m.Annotations[inferencev1alpha1.AnnotationScaledUpAt]); err != nil {
		t.Errorf("scaled-up-at annotation %q: %v", m.Annotations[inferencev1alpha1.AnnotationScaledUpAt], err)
	}
	select {
	case <-a.Done():
		t.Fatalf("the activation ended before a replica was ready: %v", a.Err())
	default:
	}
	w.serve("chat", "10.0.0.5")
	if err := a.Err(); err != nil {
		t.Fatalf("activation: %v", err)
	}
	w.eventually("an Activated event", func() bool {
		ev := w.events("chat")[scaling.ReasonActivated]
		return len(ev) == 1 && strings.Contains(ev[0], "Scaled from 0 to 1 replicas by rkllm-gateway for a request")
	})
	// The lease was given back.
	lease := &coordinationv1.Lease{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: w.ns, Name: "decisions"}, lease); err != nil ||
		ptr.Deref(lease.Spec.HolderIdentity, "x") != "" {
		t.Errorf("lease %+v (%v): want it released", lease.Spec, err)
	}
}

// statusWriteFirst is the operator writing a model's status between a decision's read
// and its write, once: the optimistic lock refuses that write.
type statusWriteFirst struct {
	client.Client
	t    *testing.T
	once sync.Once
}

func (c *statusWriteFirst) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	c.once.Do(func() {
		m := &inferencev1alpha1.RKLLMModel{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(obj), m); err != nil {
			c.t.Error(err)
			return
		}
		m.Status.ObservedGeneration = m.Generation
		if err := c.Status().Update(ctx, m); err != nil {
			c.t.Error(err)
		}
	})
	return c.Client.Patch(ctx, obj, patch, opts...)
}

// The operator writes the model's status while the gateway decides (it does, all the
// time): the scale-up is refused for the stale read, and the gateway decides again
// rather than failing the request.
func TestActivationDecidesAgainAfterAConflict(t *testing.T) {
	w := newWorld(t)
	w.node("n1", 1)
	w.model("chat", 0)
	w.writer = &statusWriteFirst{Client: k8s, t: t}
	s := w.scaler("gw-1", scaling.Options{})
	a := s.Activate(w.known("chat"))
	w.eventually("spec.replicas 1", func() bool { return w.get("chat").Spec.GetReplicas() == 1 })
	w.serve("chat", "10.0.0.5")
	if err := a.Err(); err != nil {
		t.Fatalf("activation: %v", err)
	}
}

// One NPU, two models: a request for B evicts idle A, then activates B; both are
// Events, and the eviction names B.
func TestSwap(t *testing.T) {
	w := newWorld(t)
	n1 := w.node("n1", 1)
	w.model("a", 1, scaledLongAgo)
	w.pod("a", n1, true)
	w.model("b", 0)
	s := w.scaler("gw-1", scaling.Options{})
	a := s.Activate(w.known("b"))
	w.eventually("a evicted and b scaled up", func() bool {
		return w.get("a").Spec.GetReplicas() == 0 && w.get("b").Spec.GetReplicas() == 1
	})
	w.serve("b", "10.0.0.6")
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
	w.eventually("the events", func() bool {
		ev, evB := w.events("a")[scaling.ReasonEvicted], w.events("b")[scaling.ReasonActivated]
		return len(ev) == 1 && strings.Contains(ev[0], "Scaled from 1 to 0 replicas by rkllm-gateway to free rockchip.com/npu on node "+n1+" for model b [related b]") &&
			len(evB) == 1 && strings.Contains(evB[0], "after evicting a")
	})
	w.probe.mu.Lock()
	asked := strings.Join(w.probe.asked, ",")
	w.probe.mu.Unlock()
	if asked != "a" {
		t.Errorf("pods asked whether busy: %q, want a's", asked)
	}
}

// A busy model is not evicted: with no waiting the activation fails at once, saying
// why, and a Warning event says it on the model; with waiting, it swaps once the other
// model is idle.
func TestBusyModelIsNotEvicted(t *testing.T) {
	w := newWorld(t)
	n1 := w.node("n1", 1)
	w.model("a", 1, scaledLongAgo)
	w.pod("a", n1, true)
	w.model("b", 0)

	// Busy here: a request streams through this gateway.
	w.activity.set("a", "1 requests in flight and 0 queued at this gateway")
	now := w.scaler("gw-1", scaling.Options{NoCapacityWait: -1})
	err := now.Activate(w.known("b")).Err()
	var nc *placement.NoCapacityError
	if !errors.As(err, &nc) || !strings.Contains(err.Error(), "a is busy (1 requests in flight") {
		t.Fatalf("activation: %v, want a NoCapacityError naming a as busy", err)
	}
	if w.get("a").Spec.GetReplicas() != 1 || w.get("b").Spec.GetReplicas() != 0 {
		t.Fatal("a busy model was evicted")
	}
	w.eventually("a NoCapacity warning on b", func() bool { return len(w.events("b")[scaling.ReasonNoCapacity]) == 1 })

	// Busy on its pod: another gateway replica's request, which only the server knows.
	w.activity.set("a", "")
	w.probe.set("a", "pod a-x is generating, 0 queued")
	err = now.Activate(w.known("b")).Err()
	if !errors.As(err, &nc) || !strings.Contains(err.Error(), "a is busy (pod a-x is generating") {
		t.Fatalf("activation: %v, want a NoCapacityError naming a's pod as busy", err)
	}

	// Waiting: the activation holds until a goes idle, then swaps.
	wait := w.scaler("gw-1", scaling.Options{NoCapacityWait: time.Minute})
	act := wait.Activate(w.known("b"))
	w.eventually("the pod asked again", func() bool {
		w.probe.mu.Lock()
		defer w.probe.mu.Unlock()
		return len(w.probe.asked) >= 3
	})
	w.probe.set("a", "")
	wait.Poke()
	w.eventually("the swap", func() bool { return w.get("a").Spec.GetReplicas() == 0 && w.get("b").Spec.GetReplicas() == 1 })
	w.serve("b", "10.0.0.7")
	if err := act.Err(); err != nil {
		t.Fatal(err)
	}
}

// Priority and minimum lifetime protect models, and the error says so.
func TestPriorityAndLifetime(t *testing.T) {
	w := newWorld(t)
	n1, n2 := w.node("n1", 1), w.node("n2", 1)
	w.model("important", 1, scaledLongAgo, func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Scaling.Priority = ptr.To[int32](5) })
	w.pod("important", n1, true)
	w.model("fresh", 1, func(m *inferencev1alpha1.RKLLMModel) {
		m.Annotations = map[string]string{inferencev1alpha1.AnnotationScaledUpAt: time.Now().UTC().Format(time.RFC3339)}
	})
	w.pod("fresh", n2, true)
	w.model("new", 0)
	s := w.scaler("gw-1", scaling.Options{NoCapacityWait: -1, MinLifetime: time.Hour})
	err := s.Activate(w.known("new")).Err()
	if err == nil || !strings.Contains(err.Error(), "important has priority 5, above new's 0") ||
		!strings.Contains(err.Error(), "fresh was scaled up") || !strings.Contains(err.Error(), "minimum lifetime 1h0m0s") {
		t.Fatalf("activation: %v", err)
	}
	// A model of higher priority may evict the lower one.
	w.model("vip", 0, func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Scaling.Priority = ptr.To[int32](10) })
	act := s.Activate(w.known("vip"))
	w.eventually("important evicted for vip", func() bool { return w.get("important").Spec.GetReplicas() == 0 && w.get("vip").Spec.GetReplicas() == 1 })
	w.serve("vip", "10.0.0.8")
	if err := act.Err(); err != nil {
		t.Fatal(err)
	}
}

// Two gateway replicas activating two models at once on one NPU do not fight: the
// lease orders their decisions, the second sees the first's model as just activated,
// and exactly one of them gets the NPU.
func TestTwoGatewaysDoNotFight(t *testing.T) {
	w := newWorld(t)
	n1 := w.node("n1", 1)
	w.model("a", 1, scaledLongAgo)
	w.pod("a", n1, true)
	w.model("b", 0)
	w.model("c", 0)
	g1 := w.scaler("gw-1", scaling.Options{NoCapacityWait: -1, MinLifetime: time.Hour})
	g2 := w.scaler("gw-2", scaling.Options{NoCapacityWait: -1, MinLifetime: time.Hour})
	b, c := w.known("b"), w.known("c")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	wg.Add(2)
	var actB, actC *scaling.Activation
	go func() { defer wg.Done(); actB = g1.Activate(b) }()
	go func() { defer wg.Done(); actC = g2.Activate(c) }()
	wg.Wait()
	w.eventually("one of b and c scaled up", func() bool {
		return w.get("b").Spec.GetReplicas()+w.get("c").Spec.GetReplicas() == 1
	})
	winner := "b"
	if w.get("c").Spec.GetReplicas() == 1 {
		winner = "c"
	}
	w.serve(winner, "10.0.0.9")
	errs[0], errs[1] = actB.Err(), actC.Err()
	loser := map[string]error{"b": errs[0], "c": errs[1]}[map[string]string{"b": "c", "c": "b"}[winner]]
	var nc *placement.NoCapacityError
	if !errors.As(loser, &nc) || !strings.Contains(loser.Error(), winner+" was scaled up") {
		t.Errorf("the other activation: %v; want no NPU, %s just activated", loser, winner)
	}
	if err := map[string]error{"b": errs[0], "c": errs[1]}[winner]; err != nil {
		t.Errorf("the winner's activation: %v", err)
	}
	if w.get("a").Spec.GetReplicas() != 0 || w.get("b").Spec.GetReplicas()+w.get("c").Spec.GetReplicas() != 1 {
		t.Errorf("final replicas a=%d b=%d c=%d", w.get("a").Spec.GetReplicas(), w.get("b").Spec.GetReplicas(), w.get("c").Spec.GetReplicas())
	}
}

// A model whose pod finds no NPU after all (another model took it) gets one by eviction
// while its activation waits.
func TestUnschedulablePodEvicts(t *testing.T) {
	w := newWorld(t)
	n1 := w.node("n1", 1)
	w.model("late", 1)
	waiting := w.pod("late", "", false)
	w.unschedulable(waiting)
	w.model("holder", 1, scaledLongAgo)
	w.pod("holder", n1, true)
	s := w.scaler("gw-1", scaling.Options{})
	act := s.Activate(w.known("late"))
	w.eventually("holder evicted", func() bool { return w.get("holder").Spec.GetReplicas() == 0 })
	if w.get("late").Spec.GetReplicas() != 1 {
		t.Error("the activating model's replicas changed")
	}
	w.serve("late", "10.0.0.10")
	if err := act.Err(); err != nil {
		t.Fatal(err)
	}
}

// A model at zero without spec.scaling, or suspended, is not started.
func TestNotScalable(t *testing.T) {
	w := newWorld(t)
	w.node("n1", 1)
	w.model("static", 0, func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Scaling = nil })
	w.model("paused", 1, func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Suspend = true })
	s := w.scaler("gw-1", scaling.Options{})
	if err := s.Activate(w.known("static")).Err(); !errors.Is(err, scaling.ErrNotScalable) {
		t.Errorf("static: %v", err)
	}
	if err := s.Activate(w.known("paused")).Err(); !errors.Is(err, scaling.ErrSuspended) {
		t.Errorf("suspended: %v", err)
	}
	if w.get("static").Spec.GetReplicas() != 0 {
		t.Error("a model without spec.scaling was scaled")
	}
}

// The sweep writes the last request time into the status, scales idle models back to
// minReplicas, leaves busy and recently used ones, and raises models below their
// minReplicas. Its clock is an hour ahead, so models created now have been idle for an
// hour unless used.
func TestSweep(t *testing.T) {
	w := newWorld(t)
	n1, n2, n4 := w.node("n1", 1), w.node("n2", 1), w.node("n4", 1)
	w.node("n3", 1)
	later := clocktesting.NewFakeClock(time.Now().Add(time.Hour))
	delay := func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Scaling.ScaleDownDelay = ptrDuration(10 * time.Minute)
		scaledLongAgo(m)
	}
	w.model("idle", 1, delay)
	w.pod("idle", n1, true)
	w.model("recent", 1, delay)
	w.pod("recent", n2, true)
	w.model("busy-pod", 1, delay)
	w.pod("busy-pod", n4, true)
	w.probe.set("busy-pod", "generating")
	w.model("floor", 0, func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Scaling.MinReplicas = ptr.To[int32](1) })
	used := later.Now().Add(-2 * time.Hour)
	w.activity.setUsed("idle", used)
	w.activity.setUsed("recent", later.Now())
	for _, n := range []string{"idle", "recent", "busy-pod", "floor"} {
		w.known(n)
	}
	s := w.scaler("gw-1", scaling.Options{}, later)
	s.Sweep(context.Background())

	if r := w.get("idle").Spec.GetReplicas(); r != 0 {
		t.Errorf("idle: replicas %d, want 0", r)
	}
	if r := w.get("recent").Spec.GetReplicas(); r != 1 {
		t.Errorf("recently used: replicas %d, want 1", r)
	}
	if r := w.get("busy-pod").Spec.GetReplicas(); r != 1 {
		t.Errorf("busy on its pod: replicas %d, want 1", r)
	}
	if r := w.get("floor").Spec.GetReplicas(); r != 1 {
		t.Errorf("below minReplicas: replicas %d, want 1", r)
	}
	if lr := w.get("recent").Status.LastRequestTime; lr == nil || !lr.Time.Equal(later.Now().UTC().Truncate(time.Second)) {
		t.Errorf("recent: status.lastRequestTime %v, want %v", lr, later.Now())
	}
	if lr := w.get("idle").Status.LastRequestTime; lr == nil || !lr.Time.Equal(used.UTC().Truncate(time.Second)) {
		t.Errorf("idle: status.lastRequestTime %v, want %v", lr, used)
	}
	w.eventually("a ScaledDownIdle event", func() bool {
		ev := w.events("idle")[scaling.ReasonIdle]
		return len(ev) == 1 && strings.Contains(ev[0], "no request for 1h") && strings.Contains(ev[0], "scaleDownDelay 10m0s")
	})
	// The time written is read back through the catalog: another gateway replica,
	// without requests of its own, sees recent as used and leaves it.
	w.eventually("the catalog to read lastRequestTime", func() bool {
		m, _ := w.catalog.Get("recent")
		return !m.LastRequestTime.IsZero()
	})
	w.activity.setUsed("recent", time.Time{})
	w.scaler("gw-2", scaling.Options{}, later).Sweep(context.Background())
	if r := w.get("recent").Spec.GetReplicas(); r != 1 {
		t.Errorf("recent after another replica's sweep: %d", r)
	}
}

func ptrDuration(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }

// The lease waits for a live holder and takes over from one that died (its lease
// expired without a release).
func TestLease(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	key := client.ObjectKey{Namespace: w.ns, Name: "decisions"}
	dead := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: "decisions"}, Spec: coordinationv1.LeaseSpec{
		HolderIdentity: ptr.To("gw-dead"), LeaseDurationSeconds: ptr.To[int32](15),
		RenewTime: &metav1.MicroTime{Time: time.Now().Add(-time.Minute)}}}
	if err := k8s.Create(ctx, dead); err != nil {
		t.Fatal(err)
	}
	lease := func(id string) *scaling.Lease {
		return &scaling.Lease{Client: k8s, Key: key, Identity: id, Duration: 15 * time.Second, Retry: 10 * time.Millisecond, Clock: clock.RealClock{}}
	}
	release, err := lease("gw-1").Acquire(ctx)
	if err != nil {
		t.Fatalf("taking over an expired lease: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := lease("gw-2").Acquire(short); err == nil || !strings.Contains(err.Error(), "waiting for the decision lease") {
		t.Fatalf("a second holder got the lease while the first held it: %v", err)
	}
	release()
	release2, err := lease("gw-2").Acquire(ctx)
	if err != nil {
		t.Fatalf("after the release: %v", err)
	}
	release2()
}
