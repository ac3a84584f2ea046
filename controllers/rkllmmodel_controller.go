/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Package controllers holds the RKLLMModel reconciler: it turns each RKLLMModel into a
// ConfigMap with the server configuration, a Deployment running rkllm-server, a
// PodDisruptionBudget and a Service, and reports what the pods do in the model's status.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/client-go/applyconfigurations"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// FieldManager owns the fields the operator applies (server-side apply).
const FieldManager = "rkllm-operator"

// Event reasons, besides the condition reasons of the API.
const (
	EventCreated     = "Created"
	EventUpdated     = "Updated"
	EventApplyFailed = "ApplyFailed"
)

// Defaults of the reconciler's timings.
const (
	DefaultRetryInterval    = 30 * time.Second
	DefaultProgressInterval = time.Minute
	DefaultErrorGracePeriod = 2 * time.Minute
)

// RKLLMModelReconciler reconciles RKLLMModel objects.
type RKLLMModelReconciler struct {
	// Client reads from the manager's cache (which holds only the operator's own
	// objects) and writes to the API server.
	client.Client
	// APIReader reads straight from the API server: PVCs, the kubelet's events about
	// server pods, and each child just before it is applied. The operator never reads
	// Secrets.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Options   Options
	// RetryInterval is how soon a model waiting for a missing PVC or Secret, or for a
	// name held by someone else, is tried again. Default 30s.
	RetryInterval time.Duration
	// ProgressInterval is how often a model that is not ready yet is looked at again,
	// besides the pod and Deployment events that wake it. Default 1m.
	ProgressInterval time.Duration
	// ErrorGracePeriod is how long errors talking to the cluster may go on before they
	// change Ready (and stall the model); shorter ones only set Reconciling. Default 2m.
	ErrorGracePeriod time.Duration
	// MaxConcurrentReconciles is how many models are reconciled at once. Default 1.
	MaxConcurrentReconciles int
	// Clock tells the time; tests set a fake one. Default the real clock.
	Clock clock.PassiveClock

	// failing records, per model, when the current run of transient errors began.
	failing sync.Map // client.ObjectKey -> time.Time
	// typeConverter reads the fields the operator applied out of an object.
	typeConverter     managedfields.TypeConverter
	typeConverterOnce sync.Once
}

// blockedError stops a reconcile for a reason the user must act on.
type blockedError struct{ blocker }

func (e *blockedError) Error() string { return e.reason + ": " + e.message }

// step is one part of a reconcile; it records what it learns in obs.
type step func(ctx context.Context, model *inferencev1alpha1.RKLLMModel, obs *observation) (ctrl.Result, error)

// +kubebuilder:rbac:groups=inference.rkllm.io,resources=rkllmmodels,verbs=get;list;watch
// +kubebuilder:rbac:groups=inference.rkllm.io,resources=rkllmmodels/status,verbs=get;patch
// +kubebuilder:rbac:groups=inference.rkllm.io,resources=rkllmmodels/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get
// +kubebuilder:rbac:groups="",resources=events,verbs=list
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one model's objects in line with its spec and reports their state.
// It only sequences: fetch, defer the one status write, then the steps in order. A step
// that finds something the user must fix stops the sequence with a blockedError; the
// objects applied so far stay, and a running server of the previous spec keeps running.
// Any other error is transient: it goes back to the rate limiter (a retry with backoff)
// and only changes Ready once it has lasted ErrorGracePeriod.
func (r *RKLLMModelReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	model := &inferencev1alpha1.RKLLMModel{}
	if err := r.Get(ctx, req.NamespacedName, model); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !model.DeletionTimestamp.IsZero() {
		// Owner references let the garbage collector delete the children.
		return ctrl.Result{}, nil
	}

	original := model.DeepCopy()
	obs := &observation{}
	defer func() {
		var err error
		result, err = r.summarizeStatus(ctx, original, model, obs, result, retErr)
		retErr = errors.Join(retErr, err)
	}()

	for _, s := range []step{r.reconcileDependencies, r.reconcileConfig, r.reconcileDeployment, r.reconcilePodDisruptionBudget, r.reconcileService} {
		res, err := s(ctx, model, obs)
		var be *blockedError
		switch {
		case errors.As(err, &be):
			r.failing.Delete(req.NamespacedName)
			obs.blocked = &be.blocker
			if !be.retry {
				// Terminal: only a spec change (which wakes the controller) can help.
				return ctrl.Result{}, nil
			}
			return ctrl.Result{RequeueAfter: r.retryInterval()}, nil
		case err != nil:
			obs.blocked = r.transient(req.NamespacedName, err)
			r.Recorder.Eventf(model, nil, corev1.EventTypeWarning, inferencev1alpha1.ReasonReconcileFailed, "Reconcile",
				"%v; retrying with backoff", err)
			return ctrl.Result{}, err
		}
		result = earliest(result, res)
	}
	r.failing.Delete(req.NamespacedName)
	obs.applied = true
	return result, nil
}

// transient records a transient error of a model and reports it: lasting once the run of
// errors it belongs to has gone on for ErrorGracePeriod.
func (r *RKLLMModelReconciler) transient(key client.ObjectKey, err error) *blocker {
	now := r.clock().Now()
	first, _ := r.failing.LoadOrStore(key, now)
	since, _ := first.(time.Time)
	b := &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: err.Error(), transient: true}
	if elapsed := now.Sub(since); elapsed >= r.errorGracePeriod() {
		b.lasting = true
		b.message = fmt.Sprintf("failing for %s: %v", elapsed.Round(time.Second), err)
	}
	return b
}

// reconcileDependencies checks what the spec names but the CRD cannot: the model's
// PersistentVolumeClaim. A missing one blocks the reconcile (Ready=False, Degraded=True
// and Stalled=True with reason PVCNotFound; it is looked at again every RetryInterval).
// Secrets are not read here: the operator has no access to them, and the kubelet reports
// a missing one (summarizeStatus maps its report to SecretNotFound or SecretKeyNotFound).
func (r *RKLLMModelReconciler) reconcileDependencies(ctx context.Context, model *inferencev1alpha1.RKLLMModel, _ *observation) (ctrl.Result, error) {
	if pvc := model.Spec.Model.PVC; pvc != nil {
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: model.Namespace, Name: pvc.ClaimName}, &corev1.PersistentVolumeClaim{})
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, &blockedError{blocker{reason: inferencev1alpha1.ReasonPVCNotFound, retry: true, message: fmt.Sprintf(
				"PersistentVolumeClaim %q named by spec.model.pvc.claimName does not exist in namespace %s: create it or fix the name",
				pvc.ClaimName, model.Namespace)}}
		}
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("reading PersistentVolumeClaim %s: %w", pvc.ClaimName, err)
		}
	}
	return ctrl.Result{}, nil
}

// reconcileConfig applies the ConfigMap with server.json: the one of the revision the
// live Deployment records while the model still stands for it (with the current
// retunable parameters, which the server takes while running), else the current spec's.
// It sets no condition itself; a name held by another owner blocks the reconcile
// (NameConflict).
func (r *RKLLMModelReconciler) reconcileConfig(ctx context.Context, model *inferencev1alpha1.RKLLMModel, obs *observation) (ctrl.Result, error) {
	config, err := serverConfig(model)
	if err != nil {
		return ctrl.Result{}, err
	}
	if obs.kept = r.keptRevision(ctx, model); obs.kept != nil {
		if config, err = retuneConfig(obs.kept.Config, config); err != nil {
			return ctrl.Result{}, err
		}
	}
	obs.config = config
	return ctrl.Result{}, r.apply(ctx, model, desiredConfigMap(model, config), ConfigMapName(model), &corev1.ConfigMap{})
}

// keptRevision is the revision recorded on the model's live Deployment when the model
// still stands for it and the operator does not roll on upgrade; nil otherwise (no
// Deployment yet, a spec change, a Deployment made by an operator that recorded none).
func (r *RKLLMModelReconciler) keptRevision(ctx context.Context, model *inferencev1alpha1.RKLLMModel) *revision {
	if r.Options.RollOnUpgrade {
		return nil
	}
	d := &appsv1.Deployment{}
	// From the API server: the cache may lag behind the last apply.
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: model.Namespace, Name: model.Name}, d); err != nil || !metav1.IsControlledBy(d, model) {
		return nil
	}
	rev, ok := parseRevision(d.Annotations[AnnotationRevision])
	if !ok || !rev.stillCurrent(model) {
		return nil
	}
	return rev
}

// reconcileDeployment applies the server Deployment (scaled to zero while suspended)
// and records it, as the API server returned it, for the status. The cluster refusing
// it stalls the model (Stalled=True, InvalidSpec); a name held by another owner blocks
// it (NameConflict).
func (r *RKLLMModelReconciler) reconcileDeployment(ctx context.Context, model *inferencev1alpha1.RKLLMModel, obs *observation) (ctrl.Result, error) {
	desired, err := desiredDeployment(model, r.Options, obs.config, obs.kept)
	if err != nil {
		// Only an operator without a default image gets here: tell the user how to fix it.
		return ctrl.Result{}, &blockedError{blocker{reason: inferencev1alpha1.ReasonInvalidSpec, message: err.Error()}}
	}
	obs.hash = desired.Spec.Template.Annotations[AnnotationRolloutHash]
	d := &appsv1.Deployment{}
	if err := r.apply(ctx, model, desired, model.Name, d); err != nil {
		return ctrl.Result{}, err
	}
	obs.deployment = d
	return ctrl.Result{}, nil
}

// reconcilePodDisruptionBudget applies the PodDisruptionBudget of the server pods. It
// sets no condition itself; a name held by another owner blocks the reconcile
// (NameConflict).
func (r *RKLLMModelReconciler) reconcilePodDisruptionBudget(ctx context.Context, model *inferencev1alpha1.RKLLMModel, _ *observation) (ctrl.Result, error) {
	return ctrl.Result{}, r.apply(ctx, model, desiredPodDisruptionBudget(model), model.Name, &policyv1.PodDisruptionBudget{})
}

// reconcileService applies the Service in front of the server pods. It sets no
// condition itself; a name held by another owner blocks the reconcile (NameConflict).
func (r *RKLLMModelReconciler) reconcileService(ctx context.Context, model *inferencev1alpha1.RKLLMModel, _ *observation) (ctrl.Result, error) {
	return ctrl.Result{}, r.apply(ctx, model, desiredService(model), model.Name, &corev1.Service{})
}

// apply is the one place objects are written: server-side apply with the operator's
// field manager, taking over its fields if someone edited them. It refuses to touch an
// object of the same name that the model does not control, records Created and Updated
// events for changes it made, and leaves the applied object (as the API server returned
// it) in into.
func (r *RKLLMModelReconciler) apply(ctx context.Context, model *inferencev1alpha1.RKLLMModel, desired runtime.ApplyConfiguration, name string, into client.Object) error {
	kind := kindOf(into, r.Scheme)
	key := client.ObjectKey{Namespace: model.Namespace, Name: name}
	// Read from the API server, not the cache: the cache holds only objects labelled as
	// the operator's (someone else's object may have the name), and it can lag behind the
	// operator's own last apply, which would make that apply look new again.
	err := r.APIReader.Get(ctx, key, into)
	existed := err == nil
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("reading %s %s: %w", kind, name, err)
	case !metav1.IsControlledBy(into, model):
		return &blockedError{blocker{reason: inferencev1alpha1.ReasonNameConflict, retry: true, message: fmt.Sprintf(
			"%s %q exists and does not belong to this RKLLMModel: delete it or rename the model", kind, name)}}
	}
	before, ok := into.DeepCopyObject().(client.Object)
	if !ok {
		return fmt.Errorf("copying %s %s", kind, name)
	}
	// The fields the apply sets, before the apply fills desired with the answer.
	diff, diffErr := r.fieldDiff(into, desired)

	if err := r.Apply(ctx, desired, client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		if apierrors.IsInvalid(err) {
			r.Recorder.Eventf(model, nil, corev1.EventTypeWarning, EventApplyFailed, "Apply"+kind, "Applying %s %s failed: %v", kind, name, err)
			return &blockedError{blocker{reason: inferencev1alpha1.ReasonInvalidSpec, message: fmt.Sprintf(
				"the cluster refused the %s built from the spec: %v", kind, err)}}
		}
		return fmt.Errorf("applying %s %s: %w", kind, name, err)
	}
	// The apply configuration now holds the API server's answer.
	if err := convert(desired, into); err != nil {
		return fmt.Errorf("decoding applied %s %s: %w", kind, name, err)
	}
	// The child is the related object: events about different children are different
	// event series, and `kubectl events --for` finds them from either side.
	switch {
	case !existed:
		r.Recorder.Eventf(model, into, corev1.EventTypeNormal, EventCreated, "Create", "Created %s %s", kind, name)
	case changedByApply(ctx, diff, diffErr, before, into):
		r.Recorder.Eventf(model, into, corev1.EventTypeNormal, EventUpdated, "Update", "Updated %s %s", kind, name)
	}
	return nil
}

// changedByApply reports whether an apply changed a field the operator sets (fieldDiff):
// status updates and others' fields are not the operator's changes, and a new
// resourceVersion alone says nothing; taking back a field someone else changed is. When
// the fields cannot be worked out it says true: an extra event beats a lost one.
func changedByApply(ctx context.Context, diff *fieldDiff, diffErr error, before, after client.Object) bool {
	changed := true
	if diffErr == nil {
		changed, diffErr = diff.changed(before, after)
	}
	if diffErr != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("cannot compare applied fields; reporting an update", "error", diffErr.Error())
		return true
	}
	return changed
}

// fieldDiff works out the fields desired sets on an object like obj.
func (r *RKLLMModelReconciler) fieldDiff(obj client.Object, desired runtime.ApplyConfiguration) (*fieldDiff, error) {
	gvk, err := apiutil.GVKForObject(obj, r.Scheme)
	if err != nil {
		return nil, err
	}
	r.typeConverterOnce.Do(func() {
		r.typeConverter = applyconfigurations.NewTypeConverter(r.Scheme)
	})
	return newFieldDiff(r.typeConverter, r.Scheme, gvk, desired)
}

// summarizeStatus is the deferred end of every reconcile: it lists the model's pods (and
// the kubelet's mount failures of those that cannot start), derives the status
// (summarize) and writes it in one patch when it changed, recording an event when the
// Ready condition changes. It sets every condition.
func (r *RKLLMModelReconciler) summarizeStatus(ctx context.Context, original, model *inferencev1alpha1.RKLLMModel,
	obs *observation, result ctrl.Result, reconcileErr error) (ctrl.Result, error) {
	pods := &corev1.PodList{}
	if err := r.List(ctx, pods, client.InNamespace(model.Namespace), client.MatchingLabels(selectorLabels(model))); err != nil {
		return result, fmt.Errorf("listing server pods: %w", err)
	}
	obs.pods = pods.Items
	obs.mountFailures = r.mountFailures(ctx, model, obs.pods, obs.hash)
	status := summarize(model, *obs, metav1.NewTime(r.clock().Now()))
	r.recordReadyChange(model, original.Status.Conditions, status.Conditions)

	if reconcileErr == nil && result.IsZero() && (meta.IsStatusConditionTrue(status.Conditions, inferencev1alpha1.ConditionReconciling) ||
		(obs.applied && meta.IsStatusConditionTrue(status.Conditions, inferencev1alpha1.ConditionStalled))) {
		// Pod and Deployment events wake the model too; this is the safety net, and how
		// the kubelet's events about pods that cannot start (which wake nothing) are read.
		result.RequeueAfter = r.progressInterval()
	}
	if equality.Semantic.DeepEqual(original.Status, status) {
		return result, nil
	}
	model.Status = status
	// Optimistic locking: a status derived from a model the cache had not caught up with
	// (the operator's own last status write not in it yet) would write old conditions
	// back; the conflict sends the model back for a fresh look instead.
	if err := r.Status().Patch(ctx, model, client.MergeFromWithOptions(original, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			// Not an error: a newer version is on its way to the cache, and its event
			// brings the model back (the requeue is the safety net). Returned as an error
			// it would be logged with a stack trace each time.
			ctrl.LoggerFrom(ctx).V(1).Info("status written from an older version of the model; looking again", "error", err.Error())
			if result.RequeueAfter == 0 || result.RequeueAfter > conflictRetry {
				result.RequeueAfter = conflictRetry
			}
			return result, nil
		}
		return result, client.IgnoreNotFound(fmt.Errorf("writing status: %w", err))
	}
	return result, nil
}

// conflictRetry is how soon a model whose status write met a newer version is looked
// at again, if the newer version's own event has not brought it back first.
const conflictRetry = time.Second

// recordReadyChange records an event when the Ready condition changes status or reason.
func (r *RKLLMModelReconciler) recordReadyChange(model *inferencev1alpha1.RKLLMModel, before, after []metav1.Condition) {
	old := meta.FindStatusCondition(before, inferencev1alpha1.ConditionReady)
	cur := meta.FindStatusCondition(after, inferencev1alpha1.ConditionReady)
	if cur == nil || (old != nil && old.Status == cur.Status && old.Reason == cur.Reason) {
		return
	}
	eventType := corev1.EventTypeNormal
	if cur.Status != metav1.ConditionTrue && failureReason(after) {
		eventType = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(model, nil, eventType, cur.Reason, "Reconcile", "%s", cur.Message)
}

// failureReason reports whether the model is degraded or the reconcile failed.
func failureReason(conds []metav1.Condition) bool {
	if meta.IsStatusConditionTrue(conds, inferencev1alpha1.ConditionDegraded) {
		return true
	}
	c := meta.FindStatusCondition(conds, inferencev1alpha1.ConditionReady)
	return c != nil && c.Reason == inferencev1alpha1.ReasonReconcileFailed
}

// mountFailures reads the kubelet's latest FailedMount event of each current server pod
// whose containers have not started: the only place a missing Secret or key of a volume
// shows. A failed read is logged and leaves the status to the pods alone.
func (r *RKLLMModelReconciler) mountFailures(ctx context.Context, model *inferencev1alpha1.RKLLMModel, pods []corev1.Pod, hash string) map[string]string {
	var out map[string]string
	for i := range pods {
		pod := &pods[i]
		if pod.DeletionTimestamp != nil || pod.Annotations[AnnotationRolloutHash] != hash || pod.Spec.NodeName == "" || containersStarted(pod) {
			continue
		}
		list := &corev1.EventList{}
		err := r.APIReader.List(ctx, list, client.InNamespace(model.Namespace), client.MatchingFieldsSelector{Selector: fields.SelectorFromSet(fields.Set{
			"involvedObject.uid": string(pod.UID), "reason": eventFailedMount,
		})})
		if err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "reading the kubelet's events of a server pod", "pod", pod.Name)
			return out
		}
		if msg := latestMessage(list.Items); msg != "" {
			if out == nil {
				out = map[string]string{}
			}
			out[pod.Name] = msg
		}
	}
	return out
}

// eventFailedMount is the kubelet's event reason for a volume it cannot mount.
const eventFailedMount = "FailedMount"

// latestMessage is the message of the most recent event.
func latestMessage(evs []corev1.Event) string {
	var msg string
	var latest time.Time
	for _, e := range evs {
		t := e.LastTimestamp.Time
		if e.Series != nil && e.Series.LastObservedTime.After(t) {
			t = e.Series.LastObservedTime.Time
		}
		if e.EventTime.After(t) {
			t = e.EventTime.Time
		}
		if msg == "" || !t.Before(latest) {
			msg, latest = e.Message, t
		}
	}
	return msg
}

func (r *RKLLMModelReconciler) clock() clock.PassiveClock {
	if r.Clock != nil {
		return r.Clock
	}
	return clock.RealClock{}
}

func (r *RKLLMModelReconciler) errorGracePeriod() time.Duration {
	if r.ErrorGracePeriod > 0 {
		return r.ErrorGracePeriod
	}
	return DefaultErrorGracePeriod
}

func (r *RKLLMModelReconciler) retryInterval() time.Duration {
	if r.RetryInterval > 0 {
		return r.RetryInterval
	}
	return DefaultRetryInterval
}

func (r *RKLLMModelReconciler) progressInterval() time.Duration {
	if r.ProgressInterval > 0 {
		return r.ProgressInterval
	}
	return DefaultProgressInterval
}

// earliest combines two results: the sooner requeue wins.
func earliest(a, b ctrl.Result) ctrl.Result {
	if a.RequeueAfter == 0 || (b.RequeueAfter > 0 && b.RequeueAfter < a.RequeueAfter) {
		return b
	}
	return a
}

// kindOf names the kind of a typed object for messages.
func kindOf(obj client.Object, scheme *runtime.Scheme) string {
	gvk, err := apiutil.GVKForObject(obj, scheme)
	if err != nil {
		return fmt.Sprintf("%T", obj)
	}
	return gvk.Kind
}

// CacheOptions limits the manager's cache to the objects the operator creates (by
// label) and to namespaces (all when empty), so its memory does not grow with the
// cluster's pods, ConfigMaps and Deployments.
func CacheOptions(namespaces []string) cache.Options {
	managed := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{LabelManagedBy: managedByValue})}
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&appsv1.Deployment{}:            managed,
		&corev1.Service{}:               managed,
		&corev1.ConfigMap{}:             managed,
		&corev1.Pod{}:                   managed,
		&policyv1.PodDisruptionBudget{}: managed,
	}}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// SetupWithManager registers the controller. The model is watched with a generation
// predicate, so the controller's own status writes do not wake it; its children without
// one, so an edit or deletion of a child is undone, and pod status changes update the
// model's status.
func (r *RKLLMModelReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&inferencev1alpha1.RKLLMModel{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&corev1.ConfigMap{}).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		// Server pods belong to ReplicaSets, not to the model: map them by label.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(podToModel)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles}).
		Named("rkllmmodel").
		Complete(r)
}

// podToModel maps a server pod to its model.
func podToModel(_ context.Context, obj client.Object) []reconcile.Request {
	name, ok := obj.GetLabels()[LabelModel]
	if !ok || obj.GetLabels()[LabelManagedBy] != managedByValue {
		return nil
	}
	return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: name}}}
}
