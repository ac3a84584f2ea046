package scaling

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
)

// Start runs the sweep every Sweep until ctx ends (a manager Runnable, on every
// gateway replica: the lease keeps their decisions apart).
func (s *Scaler) Start(ctx context.Context) error {
	t := s.clock.NewTicker(s.opts.Sweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			s.Sweep(ctx)
		}
	}
}

// Sweep writes each model's last request time into its status, scales idle models back
// to minReplicas and brings models below minReplicas up to it.
func (s *Scaler) Sweep(ctx context.Context) {
	for _, m := range s.catalog.List() {
		s.publishUsage(ctx, m)
		if m.Scaling == nil || m.Suspended {
			continue
		}
		low := m.Scaling.GetMinReplicas()
		var err error
		switch {
		case m.Replicas > low && s.activity.Busy(m.Name) == "" && s.idleFor(m) >= m.Scaling.GetScaleDownDelay():
			err = s.decide(ctx, func(ctx context.Context) error { return s.scaleDownIdle(ctx, m.Key) })
		case m.Replicas < low:
			err = s.decide(ctx, func(ctx context.Context) error { return s.raise(ctx, m.Key, low, "min_replicas") })
		}
		if err != nil {
			s.log.Error(err, "scaling a model", "model", m.Name)
		}
	}
}

// idleFor is how long the model has gone without a request (or since it was scaled up,
// or created, when later).
func (s *Scaler) idleFor(m catalog.Model) time.Duration {
	last := m.Created
	for _, t := range []time.Time{m.LastRequestTime, m.ScaledUpAt, s.activity.LastUsed(m.Name)} {
		if t.After(last) {
			last = t
		}
	}
	return s.clock.Since(last)
}

// publishUsage writes this gateway's last request for the model into status.lastRequestTime
// when it is at least a second later than what is there.
func (s *Scaler) publishUsage(ctx context.Context, m catalog.Model) {
	last := s.activity.LastUsed(m.Name).UTC().Truncate(time.Second)
	if last.IsZero() || !last.After(m.LastRequestTime) {
		return
	}
	obj := &inferencev1alpha1.RKLLMModel{}
	obj.Namespace, obj.Name = m.Key.Namespace, m.Key.Name
	patch := fmt.Sprintf(`{"status":{"lastRequestTime":%q}}`, last.Format(time.RFC3339))
	if err := s.client.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		s.log.Error(err, "writing the model's last request time", "model", m.Name)
	}
}

// scaleDownIdle scales the model to minReplicas if, read again, it is still idle
// everywhere: no request through this gateway, none recorded by another replica, none
// running on its pods.
func (s *Scaler) scaleDownIdle(ctx context.Context, key types.NamespacedName) error {
	m := &inferencev1alpha1.RKLLMModel{}
	if err := s.reader.Get(ctx, key, m); err != nil {
		return client.IgnoreNotFound(err)
	}
	sc := m.Spec.Scaling
	if sc == nil || m.Spec.Suspend || m.Spec.GetReplicas() <= sc.GetMinReplicas() {
		return nil
	}
	cur := catalog.FromObject(m, nil)
	delay := sc.GetScaleDownDelay()
	if s.activity.Busy(cur.Name) != "" || s.idleFor(cur) < delay {
		return nil
	}
	v := &view{}
	var pods corev1.PodList
	if err := s.reader.List(ctx, &pods, client.InNamespace(key.Namespace), client.MatchingLabels{labelModel: key.Name, labelManagedBy: managedBy}); err != nil {
		return fmt.Errorf("listing the model's pods: %w", err)
	}
	v.pods = pods.Items
	if busy := s.busyPods(ctx, v, key.String()); busy != "" {
		s.log.V(1).Info("idle here but busy on its pods", "model", cur.Name, "busy", busy)
		return nil
	}
	from, to := m.Spec.GetReplicas(), sc.GetMinReplicas()
	if err := s.setReplicas(ctx, m, to, false); err != nil {
		return fmt.Errorf("scaling idle model %s down: %w", cur.Name, err)
	}
	s.recorder.Eventf(m, nil, corev1.EventTypeNormal, ReasonIdle, "Scale",
		"Scaled from %d to %d replicas by rkllm-gateway: no request for %s (scaling.scaleDownDelay %s)", from, to, s.idleFor(cur).Round(time.Second), delay)
	s.metrics.ScaleChange(cur.Name, "idle")
	s.log.Info("idle model scaled down", "model", cur.Name, "from", from, "to", to)
	return nil
}

// raise scales the model up to want when an NPU is free for each new replica; it never
// evicts.
func (s *Scaler) raise(ctx context.Context, key types.NamespacedName, want int32, reason string) error {
	m := &inferencev1alpha1.RKLLMModel{}
	if err := s.reader.Get(ctx, key, m); err != nil {
		return client.IgnoreNotFound(err)
	}
	if m.Spec.Scaling == nil || m.Spec.Suspend || m.Spec.GetReplicas() >= want || want > m.Spec.Scaling.GetMaxReplicas() {
		return nil
	}
	v, err := s.read(ctx)
	if err != nil {
		return err
	}
	spec, err := s.podSpec(ctx, m)
	if err != nil {
		return err
	}
	req, nodes, pods, models := s.inputs(v, m, spec, s.clock.Now())
	// The model's own pods stay counted: the new replica comes beside them, and not on
	// their nodes unless the model allows colocation.
	req.Additional = true
	if m.Spec.GetColocation() == inferencev1alpha1.ColocationForbidden {
		for _, p := range pods {
			for i := range nodes {
				if p.Model == req.Model && p.Node == nodes[i].Name {
					nodes[i].Eligible = false
				}
			}
		}
	}
	d, err := placement.Plan(req, nodes, pods, withoutEvictions(models))
	if err != nil || len(d.Evict) > 0 {
		s.log.V(1).Info("no free NPU for another replica", "model", m.GetServedModelName(), "want", want)
		return nil
	}
	return s.scaleUp(ctx, m, m.Spec.GetReplicas()+1, ReasonScaledUp, reason, "")
}

// withoutEvictions marks every model unevictable.
func withoutEvictions(models []placement.Model) []placement.Model {
	out := make([]placement.Model, len(models))
	for i, m := range models {
		m.Scalable = false
		out[i] = m
	}
	return out
}

// Grow adds a replica to a ready model whose requests queue for every replica, when
// it is below maxReplicas, every replica it asked for is ready and an NPU is free. It
// returns at once; one growth per model runs at a time.
func (s *Scaler) Grow(m catalog.Model) {
	if m.Scaling == nil || m.Suspended || m.Replicas >= m.Scaling.GetMaxReplicas() || len(m.Endpoints) < int(m.Replicas) {
		return
	}
	s.mu.Lock()
	if s.growing[m.Key] {
		s.mu.Unlock()
		return
	}
	s.growing[m.Key] = true
	s.mu.Unlock()
	go func() {
		defer func() {
			s.mu.Lock()
			delete(s.growing, m.Key)
			s.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(s.base, s.lease.Duration*2)
		defer cancel()
		if err := s.decide(ctx, func(ctx context.Context) error { return s.raise(ctx, m.Key, m.Replicas+1, "load") }); err != nil {
			s.log.Error(err, "adding a replica", "model", m.Name)
		}
	}()
}
