// Package scaling changes models' replicas for the gateway, always through the
// RKLLMModel (spec.replicas; the operator stays the only writer of Deployments):
//
//   - activation: a request for a model without a ready replica scales it to
//     max(1, minReplicas), first scaling down idle models when no rockchip.com/npu is
//     free for it (placement decides which), then follows it until a replica is ready,
//     evicting again if its pod finds no NPU after all;
//   - growth: while requests queue for every replica of a ready model, one more replica
//     up to maxReplicas, when an NPU is free (never by evicting);
//   - idle scale-down: a model without requests for its scaleDownDelay goes back to
//     minReplicas;
//   - usage: the time of each model's last request goes into its status
//     (lastRequestTime), where every gateway replica and `kubectl get rkm` see it.
//
// Each decision holds a Lease (lease.go), reads the cluster from the API server and
// writes with optimistic locking, so two gateway replicas never fight over a model.
// Every change is an Event on the models involved and a metric.
package scaling

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
)

// Event reasons the gateway records on models.
const (
	// ReasonActivated: the gateway scaled the model up for a request.
	ReasonActivated = "Activated"
	// ReasonEvicted: the gateway scaled the model down to free an NPU for another.
	ReasonEvicted = "Evicted"
	// ReasonIdle: the gateway scaled the model back to minReplicas after scaleDownDelay
	// without requests.
	ReasonIdle = "ScaledDownIdle"
	// ReasonScaledUp: the gateway added a replica because requests queued, or to reach
	// minReplicas.
	ReasonScaledUp = "ScaledUp"
	// ReasonNoCapacity (a warning): an activation found no NPU and nothing to evict.
	ReasonNoCapacity = "NoCapacity"
)

// Errors of an activation that no waiting can fix.
var (
	// ErrNotScalable: the model is at zero replicas and has no spec.scaling.
	ErrNotScalable = errors.New("the model has no ready replica and no spec.scaling, so the gateway does not start it: scale it up (kubectl scale rkm/NAME --replicas=1) or set spec.scaling")
	// ErrSuspended: spec.suspend is true.
	ErrSuspended = errors.New("the model is suspended (spec.suspend): the gateway does not start it")
)

// Defaults of Options.
const (
	DefaultActivationTimeout = 10 * time.Minute
	DefaultNoCapacityWait    = 2 * time.Minute
	DefaultMinLifetime       = time.Minute
	DefaultRecheck           = 5 * time.Second
	DefaultSweep             = 30 * time.Second
	DefaultProbeTimeout      = 2 * time.Second
)

// Activity is what the gateway's own requests say of a model (by id).
type Activity interface {
	// Busy says why the model is not idle here ("" when no request is in flight or
	// queued for it).
	Busy(model string) string
	// LastUsed is when the model last had a request here (zero: never).
	LastUsed(model string) time.Time
}

// Options configure a Scaler. Zero durations take the defaults.
type Options struct {
	// Namespaces whose RKLLMModels the gateway serves; all when empty.
	Namespaces []string
	// ActivationTimeout bounds an activation, from the request to a ready replica.
	ActivationTimeout time.Duration
	// NoCapacityWait is how long an activation waits for an NPU to free (a busy model
	// to go idle) before it fails; negative: it fails at once.
	NoCapacityWait time.Duration
	// MinLifetime protects a model scaled up less than this ago from eviction.
	MinLifetime time.Duration
	// Recheck is how often a waiting activation looks at the cluster again (besides
	// the changes that wake it).
	Recheck time.Duration
	// Sweep is how often idle models are scaled down and lastRequestTime is written:
	// the resolution of both.
	Sweep time.Duration
	// ProbeTimeout bounds asking a server pod whether it is busy.
	ProbeTimeout time.Duration
}

func (o *Options) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&o.ActivationTimeout, DefaultActivationTimeout)
	set(&o.NoCapacityWait, DefaultNoCapacityWait)
	set(&o.MinLifetime, DefaultMinLifetime)
	set(&o.Recheck, DefaultRecheck)
	set(&o.Sweep, DefaultSweep)
	set(&o.ProbeTimeout, DefaultProbeTimeout)
}

// Scaler makes the scaling decisions of one gateway replica.
type Scaler struct {
	client   client.Client
	reader   client.Reader
	recorder events.EventRecorder
	catalog  catalog.Catalog
	activity Activity
	metrics  *metrics.Metrics
	lease    *Lease
	probe    Prober
	clock    clock.WithTicker
	log      logr.Logger
	opts     Options
	base     context.Context //nolint:containedctx // activations outlive the request that starts them

	mu      sync.Mutex
	active  map[types.NamespacedName]*Activation
	growing map[types.NamespacedName]bool
	poke    chan struct{}
}

// Deps are what a Scaler works with.
type Deps struct {
	// Client writes models and reads from the cache; Reader reads from the API server.
	Client client.Client
	Reader client.Reader
	// Recorder records Events on models.
	Recorder events.EventRecorder
	Catalog  catalog.Catalog
	Activity Activity
	Metrics  *metrics.Metrics
	// Lease serialises decisions between gateway replicas.
	Lease *Lease
	// Probe asks server pods whether they are busy.
	Probe Prober
	Clock clock.WithTicker
	Log   logr.Logger
}

// New returns a scaler; activations run under ctx (the process's lifetime).
func New(ctx context.Context, d Deps, o Options) *Scaler {
	o.defaults()
	if d.Clock == nil {
		d.Clock = clock.RealClock{}
	}
	return &Scaler{
		client: d.Client, reader: d.Reader, recorder: d.Recorder, catalog: d.Catalog, activity: d.Activity,
		metrics: d.Metrics, lease: d.Lease, probe: d.Probe, clock: d.Clock, log: d.Log, opts: o, base: ctx,
		active: map[types.NamespacedName]*Activation{}, growing: map[types.NamespacedName]bool{}, poke: make(chan struct{}),
	}
}

// Activation is one model's activation, shared by every request waiting for it.
type Activation struct {
	done chan struct{}
	err  error
}

// Done is closed when the activation has ended: a replica is ready, or it failed.
func (a *Activation) Done() <-chan struct{} { return a.done }

// Err is why the activation failed (nil when a replica is ready); it waits for the end.
func (a *Activation) Err() error {
	<-a.done
	return a.err
}

// NewActivation returns an activation and the function that ends it (with nil: a
// replica is ready), for scalers other than Scaler, such as tests' fakes.
func NewActivation() (*Activation, func(error)) {
	a := &Activation{done: make(chan struct{})}
	var once sync.Once
	return a, func(err error) {
		once.Do(func() {
			a.err = err
			close(a.done)
		})
	}
}

// Activate starts the model's activation, or joins the one under way. It runs apart
// from any one request (bounded by ActivationTimeout), so a client that leaves does not
// stop it for the others.
func (s *Scaler) Activate(m catalog.Model) *Activation {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.active[m.Key]; ok {
		return a
	}
	a := &Activation{done: make(chan struct{})}
	s.active[m.Key] = a
	go func() {
		err := s.activate(m)
		s.mu.Lock()
		delete(s.active, m.Key)
		s.mu.Unlock()
		a.err = err
		close(a.done)
	}()
	return a
}

// Poke tells waiting activations that something may have freed an NPU (a request
// ended), so they look again now rather than at the next recheck.
func (s *Scaler) Poke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.poke)
	s.poke = make(chan struct{})
}

func (s *Scaler) poked() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.poke
}

// activate gets the model a replica and waits until one is ready.
func (s *Scaler) activate(m catalog.Model) error {
	ctx, cancel := context.WithTimeoutCause(s.base, s.opts.ActivationTimeout,
		fmt.Errorf("model %s had no ready replica within the activation timeout (%s)", m.Name, s.opts.ActivationTimeout))
	defer cancel()
	start := s.clock.Now()
	err := s.ensureReplica(ctx, m)
	if err == nil {
		err = s.awaitReady(ctx, m)
	}
	var nc *placement.NoCapacityError
	switch {
	case err == nil:
		s.metrics.Activation(m.Name, "ready", s.clock.Since(start))
		s.log.Info("model activated", "model", m.Name, "seconds", s.clock.Since(start).Seconds())
	case errors.As(err, &nc):
		s.metrics.Activation(m.Name, "no_capacity", 0)
	case ctx.Err() != nil:
		s.metrics.Activation(m.Name, "timeout", 0)
		err = context.Cause(ctx)
	default:
		s.metrics.Activation(m.Name, "failed", 0)
	}
	return err
}

// ensureReplica makes the model's spec ask for a replica that can be placed, waiting
// up to NoCapacityWait for an NPU to free.
func (s *Scaler) ensureReplica(ctx context.Context, m catalog.Model) error {
	deadline := s.clock.Now().Add(s.opts.NoCapacityWait)
	for {
		err := s.decideActivation(ctx, m.Key)
		if apierrors.IsConflict(err) {
			// A model changed since the decision read it (the operator writes status all
			// the time): decide again from the new state.
			s.log.V(1).Info("deciding again after a conflict", "model", m.Name, "reason", err.Error())
			continue
		}
		var nc *placement.NoCapacityError
		if !errors.As(err, &nc) {
			return err
		}
		if !s.clock.Now().Before(deadline) {
			s.warnNoCapacity(ctx, m.Key, nc)
			return err
		}
		s.log.V(1).Info("waiting for an NPU", "model", m.Name, "reason", nc.Error())
		if err := s.pause(ctx); err != nil {
			return nc
		}
	}
}

// awaitReady waits for a ready replica; while it waits, a pod the scheduler cannot
// place for want of an NPU makes it decide (and evict) again.
func (s *Scaler) awaitReady(ctx context.Context, m catalog.Model) error {
	for {
		changed := s.catalog.Changed()
		cur, ok := s.catalog.Get(m.Name)
		switch {
		case !ok:
			return fmt.Errorf("model %s was deleted while it was activated", m.Name)
		case cur.Ready():
			return nil
		case cur.Replicas == 0:
			return fmt.Errorf("model %s was scaled to zero while it was activated", m.Name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-s.clock.After(s.opts.Recheck):
			if s.waitsForNPU(ctx, m.Key) {
				if err := s.decideActivation(ctx, m.Key); err != nil {
					s.log.V(1).Info("the model's pod waits for an NPU", "model", m.Name, "reason", err.Error())
				}
			}
		}
	}
}

// pause waits for the next recheck, a poke or a change of the models.
func (s *Scaler) pause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.poked():
	case <-s.catalog.Changed():
	case <-s.clock.After(s.opts.Recheck):
	}
	return nil
}

// waitsForNPU reports whether a pod of the model waits because no node has a free NPU.
func (s *Scaler) waitsForNPU(ctx context.Context, key types.NamespacedName) bool {
	var pods corev1.PodList
	if err := s.reader.List(ctx, &pods, client.InNamespace(key.Namespace),
		client.MatchingLabels{labelModel: key.Name, labelManagedBy: managedBy}); err != nil {
		s.log.Error(err, "listing the pods of an activating model", "model", key)
		return false
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil && unschedulableForNPU(&pods.Items[i]) {
			return true
		}
	}
	return false
}

// decide runs f holding the decision lease, with a deadline well within the lease's
// duration.
func (s *Scaler) decide(ctx context.Context, f func(ctx context.Context) error) error {
	release, err := s.lease.Acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	dctx, cancel := context.WithTimeout(ctx, s.lease.Duration/2)
	defer cancel()
	return f(dctx)
}

// decideActivation scales the model up to max(1, minReplicas), evicting first what
// placement says must go; with the replicas already asked for, it evicts only if one of
// the model's pods cannot be scheduled for want of an NPU.
func (s *Scaler) decideActivation(ctx context.Context, key types.NamespacedName) error {
	return s.decide(ctx, func(ctx context.Context) error {
		target := &inferencev1alpha1.RKLLMModel{}
		if err := s.reader.Get(ctx, key, target); err != nil {
			return fmt.Errorf("reading model %s: %w", key, err)
		}
		replicas := target.Spec.GetReplicas()
		switch {
		case target.Spec.Suspend:
			return ErrSuspended
		case target.Spec.Scaling == nil && replicas == 0:
			return ErrNotScalable
		case target.Spec.Scaling == nil:
			return nil
		}
		want := max(1, target.Spec.Scaling.GetMinReplicas())
		v, err := s.read(ctx)
		if err != nil {
			return err
		}
		if replicas >= want && !pendingForNPU(v, key.String()) {
			return nil
		}
		spec, err := s.podSpec(ctx, target)
		if err != nil {
			return err
		}
		d, err := s.plan(ctx, v, target, spec)
		if err != nil {
			return err
		}
		if err := s.evict(ctx, v, target, d); err != nil {
			return err
		}
		if replicas >= want {
			return nil
		}
		return s.scaleUp(ctx, target, want, ReasonActivated, "activate", evictionNote(d))
	})
}

// pendingForNPU reports whether a pod of the model with key waits for an NPU.
func pendingForNPU(v *view, key string) bool {
	for i := range v.pods {
		if modelOf(&v.pods[i]) == key && v.pods[i].DeletionTimestamp == nil && unschedulableForNPU(&v.pods[i]) {
			return true
		}
	}
	return false
}

// plan asks placement, then asks each model it would evict whether its pods are busy
// (another gateway replica's requests, or the Service's clients) and plans again
// without those that are.
func (s *Scaler) plan(ctx context.Context, v *view, target *inferencev1alpha1.RKLLMModel, spec *corev1.PodSpec) (placement.Decision, error) {
	probed := map[string]string{}
	for {
		req, nodes, pods, models := s.inputs(v, target, spec, s.clock.Now())
		for i := range models {
			if b := probed[models[i].Key]; b != "" && models[i].Busy == "" {
				models[i].Busy = b
			}
		}
		d, err := placement.Plan(req, nodes, pods, models)
		if err != nil {
			return d, err
		}
		again := false
		for _, e := range d.Evict {
			if _, done := probed[e.Model]; done {
				continue
			}
			probed[e.Model] = s.busyPods(ctx, v, e.Model)
			again = again || probed[e.Model] != ""
		}
		if !again {
			return d, nil
		}
	}
}

// busyPods asks the ready pods of a model whether they are busy; a pod that does not
// answer counts as busy, so an unknown state never costs a running request.
func (s *Scaler) busyPods(ctx context.Context, v *view, key string) string {
	for _, p := range readyPods(v, key) {
		pctx, cancel := context.WithTimeout(ctx, s.opts.ProbeTimeout)
		busy, err := s.probe(pctx, p)
		cancel()
		if err != nil {
			return "cannot ask it: " + err.Error()
		}
		if busy != "" {
			return busy
		}
	}
	return ""
}

// evict scales down the models the decision names, each from the state read in v
// (optimistic locking: a model changed since is left alone and the decision fails).
func (s *Scaler) evict(ctx context.Context, v *view, target *inferencev1alpha1.RKLLMModel, d placement.Decision) error {
	for _, e := range d.Evict {
		victim := findModel(v, e.Model)
		if victim == nil {
			return fmt.Errorf("model %s to evict is gone", e.Model)
		}
		if err := s.setReplicas(ctx, victim, e.To, false); err != nil {
			return fmt.Errorf("evicting model %s: %w", e.Name, err)
		}
		s.recorder.Eventf(victim, target, corev1.EventTypeNormal, ReasonEvicted, "Evict",
			"Scaled from %d to %d replicas by rkllm-gateway to free rockchip.com/npu on node %s for model %s",
			e.From, e.To, d.Node, target.GetServedModelName())
		s.metrics.Eviction(e.Name)
		s.metrics.ScaleChange(e.Name, "evict")
		s.log.Info("model evicted", "model", e.Name, "from", e.From, "to", e.To, "for", target.GetServedModelName(), "node", d.Node)
	}
	return nil
}

func findModel(v *view, key string) *inferencev1alpha1.RKLLMModel {
	for i := range v.models {
		if client.ObjectKeyFromObject(&v.models[i]).String() == key {
			return &v.models[i]
		}
	}
	return nil
}

func evictionNote(d placement.Decision) string {
	if len(d.Evict) == 0 {
		return ""
	}
	note := " after evicting"
	for i, e := range d.Evict {
		if i > 0 {
			note += ","
		}
		note += " " + e.Name
	}
	return note
}

// scaleUp raises the model's replicas to want, records when (for the minimum lifetime),
// and says so in an Event.
func (s *Scaler) scaleUp(ctx context.Context, m *inferencev1alpha1.RKLLMModel, want int32, reason, metric, note string) error {
	from := m.Spec.GetReplicas()
	if err := s.setReplicas(ctx, m, want, true); err != nil {
		return fmt.Errorf("scaling model %s up: %w", m.GetServedModelName(), err)
	}
	why := map[string]string{"activate": "for a request", "load": "because requests queue for every replica", "min_replicas": "to reach scaling.minReplicas"}[metric]
	s.recorder.Eventf(m, nil, corev1.EventTypeNormal, reason, "Scale", "Scaled from %d to %d replicas by rkllm-gateway %s%s", from, want, why, note)
	s.metrics.ScaleChange(m.GetServedModelName(), metric)
	s.log.Info("model scaled up", "model", m.GetServedModelName(), "from", from, "to", want, "reason", metric)
	return nil
}

// setReplicas writes spec.replicas (and, scaling up, the scaled-up-at annotation) with
// a merge patch that fails if the model changed since it was read.
func (s *Scaler) setReplicas(ctx context.Context, m *inferencev1alpha1.RKLLMModel, to int32, up bool) error {
	orig := m.DeepCopy()
	m.Spec.Replicas = &to
	if up {
		if m.Annotations == nil {
			m.Annotations = map[string]string{}
		}
		m.Annotations[inferencev1alpha1.AnnotationScaledUpAt] = s.clock.Now().UTC().Format(time.RFC3339)
	}
	return s.client.Patch(ctx, m, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
}

// warnNoCapacity records why an activation gave up.
func (s *Scaler) warnNoCapacity(ctx context.Context, key types.NamespacedName, nc *placement.NoCapacityError) {
	m := &inferencev1alpha1.RKLLMModel{}
	if err := s.reader.Get(ctx, key, m); err != nil {
		return
	}
	s.recorder.Eventf(m, nil, corev1.EventTypeWarning, ReasonNoCapacity, "Activate", "Cannot activate: %s", nc.Error())
}
