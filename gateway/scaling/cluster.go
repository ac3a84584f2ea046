package scaling

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
)

// Labels the operator puts on server pods.
const (
	labelModel     = "inference.rkllm.io/model"
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedBy      = "rkllm-operator"
)

// view is what one decision reads of the cluster, straight from the API server (the
// other gateway replica's last decision must be in it).
type view struct {
	nodes  []corev1.Node
	pods   []corev1.Pod // pods that request rockchip.com/npu and have not ended
	models []inferencev1alpha1.RKLLMModel
}

// read lists the nodes, the NPU pods of the whole cluster and the models the gateway
// serves.
func (s *Scaler) read(ctx context.Context) (*view, error) {
	v := &view{}
	var nodes corev1.NodeList
	if err := s.reader.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	v.nodes = nodes.Items
	var pods corev1.PodList
	notEnded := fields.AndSelectors(fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)))
	if err := s.reader.List(ctx, &pods, client.MatchingFieldsSelector{Selector: notEnded}); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for _, p := range pods.Items {
		if podUnits(&p) > 0 {
			v.pods = append(v.pods, p)
		}
	}
	for _, ns := range s.namespaces() {
		var models inferencev1alpha1.RKLLMModelList
		if err := s.reader.List(ctx, &models, client.InNamespace(ns)); err != nil {
			return nil, fmt.Errorf("listing RKLLMModels: %w", err)
		}
		v.models = append(v.models, models.Items...)
	}
	return v, nil
}

func (s *Scaler) namespaces() []string {
	if len(s.opts.Namespaces) == 0 {
		return []string{""}
	}
	return s.opts.Namespaces
}

// podUnits is the rockchip.com/npu a pod requests: the larger of its containers' sum
// and its largest init container, as the scheduler counts.
func podUnits(p *corev1.Pod) int64 {
	var sum, initMax int64
	for _, c := range p.Spec.Containers {
		sum += units(c.Resources)
	}
	for _, c := range p.Spec.InitContainers {
		initMax = max(initMax, units(c.Resources))
	}
	return max(sum, initMax)
}

func units(r corev1.ResourceRequirements) int64 {
	if q, ok := r.Requests[inferencev1alpha1.NPUResourceName]; ok {
		return q.Value()
	}
	// Extended resources may give only limits; the request is then the limit.
	if q, ok := r.Limits[inferencev1alpha1.NPUResourceName]; ok {
		return q.Value()
	}
	return 0
}

// modelOf is the key of the model a server pod serves; "" for other pods.
func modelOf(p *corev1.Pod) string {
	if p.Labels[labelManagedBy] != managedBy || p.Labels[labelModel] == "" {
		return ""
	}
	return types.NamespacedName{Namespace: p.Namespace, Name: p.Labels[labelModel]}.String()
}

// podSpec is what places the model's pods: the operator's Deployment's pod template,
// or, before the operator has made one, the model's own scheduling fields.
func (s *Scaler) podSpec(ctx context.Context, m *inferencev1alpha1.RKLLMModel) (*corev1.PodSpec, error) {
	d := &appsv1.Deployment{}
	err := s.reader.Get(ctx, client.ObjectKeyFromObject(m), d)
	if err == nil {
		return &d.Spec.Template.Spec, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading the Deployment of %s: %w", m.Name, err)
	}
	spec := &corev1.PodSpec{NodeSelector: map[string]string{}, Affinity: m.Spec.Affinity, Tolerations: m.Spec.Tolerations}
	for k, v := range m.Spec.NodeSelector {
		spec.NodeSelector[k] = v
	}
	if p := m.Spec.Model.TargetPlatform; p != nil {
		spec.NodeSelector[inferencev1alpha1.LabelNPUSoC] = string(*p)
	}
	return spec, nil
}

// eligible reports whether a pod with spec may run on node: the node is ready,
// schedulable and has NPUs, and the pod's node selector, required node affinity and
// tolerations admit it (what the scheduler checks besides resources).
func eligible(node *corev1.Node, spec *corev1.PodSpec) bool {
	if node.Spec.Unschedulable || !nodeReady(node) {
		return false
	}
	if q := node.Status.Allocatable[inferencev1alpha1.NPUResourceName]; q.Value() <= 0 {
		return false
	}
	if ok, err := nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: *spec}).Match(node); err != nil || !ok {
		return false
	}
	_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(logr.Discard(), node.Spec.Taints, spec.Tolerations, func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	}, false)
	return !untolerated
}

func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// inputs turns the view into placement's terms for target.
func (s *Scaler) inputs(v *view, target *inferencev1alpha1.RKLLMModel, spec *corev1.PodSpec, now time.Time) (
	placement.Request, []placement.Node, []placement.Pod, []placement.Model) {
	req := placement.Request{
		Model: client.ObjectKeyFromObject(target).String(), Name: target.GetServedModelName(),
		Units: int64(target.Spec.GetNPUUnits()), Priority: target.Spec.Scaling.GetPriority(),
		Now: now, MinLifetime: s.opts.MinLifetime,
	}
	nodes := make([]placement.Node, 0, len(v.nodes))
	for i := range v.nodes {
		n := &v.nodes[i]
		q := n.Status.Allocatable[inferencev1alpha1.NPUResourceName]
		nodes = append(nodes, placement.Node{Name: n.Name, Allocatable: q.Value(), Eligible: eligible(n, spec)})
	}
	pods := make([]placement.Pod, 0, len(v.pods))
	for i := range v.pods {
		p := &v.pods[i]
		pods = append(pods, placement.Pod{Model: modelOf(p), Node: p.Spec.NodeName, Units: podUnits(p), Terminating: p.DeletionTimestamp != nil})
	}
	models := make([]placement.Model, 0, len(v.models))
	for i := range v.models {
		m := &v.models[i]
		key := client.ObjectKeyFromObject(m).String()
		pm := placement.Model{
			Key: key, Name: m.GetServedModelName(), Replicas: m.Spec.GetReplicas(), Units: int64(m.Spec.GetNPUUnits()),
			Scalable: m.Spec.Scaling != nil, MinReplicas: m.Spec.Scaling.GetMinReplicas(), Priority: m.Spec.Scaling.GetPriority(),
			LastUsed: s.lastUsed(m),
		}
		if m.Spec.Suspend {
			pm.Replicas = 0
		}
		// The minimum lifetime counts from the gateway's own last scale-up.
		if t, err := time.Parse(time.RFC3339, m.Annotations[inferencev1alpha1.AnnotationScaledUpAt]); err == nil {
			pm.ActiveSince = t
		}
		pm.Busy = s.activity.Busy(m.GetServedModelName())
		models = append(models, pm)
	}
	return req, nodes, pods, models
}

// lastUsed is the later of this gateway's last request for m and the one recorded in
// its status (by any gateway replica).
func (s *Scaler) lastUsed(m *inferencev1alpha1.RKLLMModel) time.Time {
	t := s.activity.LastUsed(m.GetServedModelName())
	if r := m.Status.LastRequestTime; r != nil && r.After(t) {
		t = r.Time
	}
	return t
}

// readyPods are the ready server pods of the model with key.
func readyPods(v *view, key string) []*corev1.Pod {
	var out []*corev1.Pod
	for i := range v.pods {
		p := &v.pods[i]
		if modelOf(p) == key && p.DeletionTimestamp == nil && podReady(p) {
			out = append(out, p)
		}
	}
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// unschedulableForNPU reports whether a pod waits because no node has the
// rockchip.com/npu it requests (the scheduler's PodScheduled condition says so).
func unschedulableForNPU(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return p.Spec.NodeName == "" && strings.Contains(c.Message, inferencev1alpha1.NPUResourceName)
		}
	}
	return false
}
