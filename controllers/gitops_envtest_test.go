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

package controllers

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// readyModel creates a model and plays the Deployment controller and the kubelet until it
// is Ready; it returns the Deployment.
func readyModel(t *testing.T, ns, name string, mutate func(*inferencev1alpha1.RKLLMModel)) *appsv1.Deployment {
	t.Helper()
	createModel(t, ns, name, mutate)
	d := &appsv1.Deployment{}
	getChild(t, ns, name, d, "the Deployment", nil)
	serverPod(t, d, corev1.PodStatus{
		Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: serverContainer, Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
	}, true)
	writeDeploymentStatus(t, d, true, nil)
	getReconciled(t, ns, name, "Ready", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonReady)
	})
	return d
}

// poke wakes the controller for a model: its Deployment changes in a way that is none of
// the operator's business. A label, not an annotation: an annotation change is a new
// generation of a Deployment, which the Deployment controller would have to observe.
func poke(t *testing.T, d *appsv1.Deployment, value string) {
	t.Helper()
	patch := client.MergeFrom(d.DeepCopy())
	d.Labels["test.rkllm.io/poke"] = value
	if err := k8sClient.Patch(context.Background(), d, patch); err != nil {
		t.Fatalf("poking the Deployment: %v", err)
	}
}

// A control-plane hiccup does not make a serving model flap: Ready stays True while the
// operator retries with backoff (Reconciling says so, an event too); an error that lasts
// past the grace period turns Ready False and stalls the model; recovery clears it.
// Not parallel: it moves the suite's clock.
func TestTransientApplyErrorsKeepReady(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	d := readyModel(t, ns, "steady", nil)
	t.Cleanup(func() { faults.fail(ns, nil) })
	written := len(faults.written(ns))

	faults.fail(ns, apierrors.NewServiceUnavailable("etcdserver: leader changed"))
	poke(t, d, "1")
	m := getReconciled(t, ns, "steady", "Reconciling while the apply fails", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReconciling, metav1.ConditionTrue, inferencev1alpha1.ReasonReconcileFailed)
	})
	if err := conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonReady); err != nil {
		t.Errorf("a transient error changed Ready: %v", err)
	}
	if c := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReconciling); !strings.Contains(c.Message, "leader changed") {
		t.Errorf("Reconciling %q does not say what failed", c.Message)
	}
	// Retries come from the rate limiter, not from new events.
	eventually(t, "three refused applies (retries with backoff)", func(context.Context) error {
		if n := faults.refused(ns); n < 3 {
			return fmt.Errorf("%d refused applies", n)
		}
		return nil
	})
	waitEmitted(t, ns, "steady", corev1.EventTypeWarning, inferencev1alpha1.ReasonReconcileFailed, "leader changed")

	// The error lasts: past the grace period, Ready says so and the model stalls.
	testClock.advance(2 * testErrorGracePeriod)
	poke(t, d, "2")
	m = getReconciled(t, ns, "steady", "Ready=False once the error lasted", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionStalled, metav1.ConditionTrue, inferencev1alpha1.ReasonReconcileFailed)
	})
	if err := conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonReconcileFailed); err != nil {
		t.Error(err)
	}
	if h := healthOf(t, m); h.kstatus != failed || h.argo != "Degraded" {
		t.Errorf("a lasting error is %s to kstatus and %s to Argo CD, want Failed and Degraded", h.kstatus, h.argo)
	}
	// Every status written before the error lasted kept Ready True.
	for i, o := range faults.written(ns)[written:] {
		st := o.(*inferencev1alpha1.RKLLMModel).Status
		if meta.IsStatusConditionTrue(st.Conditions, inferencev1alpha1.ConditionStalled) {
			break
		}
		if !meta.IsStatusConditionTrue(st.Conditions, inferencev1alpha1.ConditionReady) {
			t.Errorf("status write %d during the transient error set Ready %+v", i,
				meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionReady))
		}
	}

	faults.fail(ns, nil)
	poke(t, d, "3")
	m = getReconciled(t, ns, "steady", "Ready again after the error", func(m *inferencev1alpha1.RKLLMModel) error {
		if len(kstatusConditions(m)) > 0 {
			return fmt.Errorf("kstatus conditions left: %v", kstatusConditions(m))
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonReady)
	})
	if h := healthOf(t, m); h.kstatus != current || h.argo != "Healthy" {
		t.Errorf("after recovery: kstatus %s, Argo CD %s", h.kstatus, h.argo)
	}
}

func kstatusConditions(m *inferencev1alpha1.RKLLMModel) []string {
	var out []string
	for _, c := range m.Status.Conditions {
		if c.Type == inferencev1alpha1.ConditionReconciling || c.Type == inferencev1alpha1.ConditionStalled {
			out = append(out, c.Type+"="+string(c.Status)+"/"+c.Reason)
		}
	}
	return out
}

// waitEmitted waits until the controller emitted an event for the model.
func waitEmitted(t *testing.T, ns, model, eventType, reason, text string) {
	t.Helper()
	eventually(t, fmt.Sprintf("a %s %s event mentioning %q", eventType, reason, text), func(context.Context) error {
		for _, e := range recorder.of(ns, model) {
			if e.eventType == eventType && e.reason == reason && strings.Contains(e.note, text) {
				return nil
			}
		}
		return fmt.Errorf("emitted: %+v", recorder.of(ns, model))
	})
}

// Created and Updated events mean changes the operator made. Status churn of the
// Deployment and pods wakes the controller many times without one; a spec change gives
// one Updated event per object it changed.
func TestEventsOnlyForChangesTheOperatorMade(t *testing.T) {
	needEnv(t)
	t.Parallel()
	ns := newNamespace(t)
	createModel(t, ns, "churn", nil)
	d := &appsv1.Deployment{}
	getChild(t, ns, "churn", d, "the Deployment", nil)
	pod := serverPod(t, d, corev1.PodStatus{}, true)

	// The kubelet and the Deployment controller report, back and forth; each report is
	// seen by the controller before the next.
	steps := []struct {
		phase  inferencev1alpha1.Phase
		status corev1.PodStatus
	}{
		{inferencev1alpha1.PhaseDownloading, corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{running("fetch-model", false)},
			ContainerStatuses:     []corev1.ContainerStatus{waiting(serverContainer, "PodInitializing", "")}}},
		{inferencev1alpha1.PhaseLoading, corev1.PodStatus{
			InitContainerStatuses: []corev1.ContainerStatus{terminated("fetch-model", 0, "Completed", "", t0)},
			ContainerStatuses:     []corev1.ContainerStatus{running(serverContainer, false)}}},
	}
	for i := range 8 {
		step := steps[i%len(steps)]
		writeDeploymentStatus(t, d, false, func(s *appsv1.DeploymentStatus) { s.ObservedGeneration = d.Generation })
		pod.Status = step.status
		pod.Status.Phase = corev1.PodPending
		if err := k8sClient.Status().Update(context.Background(), pod); err != nil {
			t.Fatal(err)
		}
		getReconciled(t, ns, "churn", fmt.Sprintf("churn step %d: phase %s", i, step.phase), func(m *inferencev1alpha1.RKLLMModel) error {
			if m.Status.Phase != step.phase {
				return fmt.Errorf("phase %s", m.Status.Phase)
			}
			return nil
		})
	}
	if got := countEmitted(ns, "churn"); got != "Created ConfigMap churn-config=1 Created Deployment churn=1 Created PodDisruptionBudget churn=1 Created Service churn=1" {
		t.Errorf("after status churn the operator emitted: %s; want one Created per object and nothing else", got)
	}

	// A spec change that reaches server.json and needs a restart changes the ConfigMap and
	// the Deployment (its rollout hash), not the PodDisruptionBudget or the Service.
	m := &inferencev1alpha1.RKLLMModel{}
	if err := k8sClient.Get(context.Background(), key(ns, "churn"), m); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](2048)}
	if err := k8sClient.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	getReconciled(t, ns, "churn", "generation 2 applied", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.ObservedGeneration != 2 {
			return fmt.Errorf("observedGeneration %d", m.Status.ObservedGeneration)
		}
		return nil
	})
	for i := range 3 {
		poke(t, d, fmt.Sprint(i))
	}
	// The pod of the old spec still reports: the controller sees it after the pokes.
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{running(serverContainer, true)}
	if err := k8sClient.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	getReconciled(t, ns, "churn", "the old pod's report", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonRollingOut)
	})
	want := "Created ConfigMap churn-config=1 Created Deployment churn=1 Created PodDisruptionBudget churn=1 Created Service churn=1 Updated ConfigMap churn-config=1 Updated Deployment churn=1"
	if got := countEmitted(ns, "churn"); got != want {
		t.Errorf("after one spec change the operator emitted: %s; want %s", got, want)
	}
}

// countEmitted summarises the Created and Updated events emitted for a model.
func countEmitted(ns, model string) string {
	counts := map[string]int{}
	for _, e := range recorder.of(ns, model) {
		if e.reason == EventCreated || e.reason == EventUpdated {
			counts[e.note]++
		}
	}
	var parts []string
	for note, n := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", note, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// fieldDiff against objects as the API server stores them: a status write (a new
// resourceVersion) is no change; a spec change and an edit by someone else that the apply
// undoes are.
func TestFieldDiff(t *testing.T) {
	needEnv(t)
	t.Parallel()
	ns := newNamespace(t)
	ctx := context.Background()
	r := &RKLLMModelReconciler{Scheme: k8sClient.Scheme()}
	m := unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Namespace = ns; m.Name = "direct"; m.UID = "no-such-model" })
	// apply applies m's Deployment as the operator does and says whether it changed it.
	apply := func(m *inferencev1alpha1.RKLLMModel) (*appsv1.Deployment, bool) {
		t.Helper()
		before := &appsv1.Deployment{}
		if err := k8sClient.Get(ctx, key(ns, m.Name), before); err != nil {
			t.Fatal(err)
		}
		config, err := serverConfig(m)
		if err != nil {
			t.Fatal(err)
		}
		desired, err := desiredDeployment(m, unitOpts, config, nil)
		if err != nil {
			t.Fatal(err)
		}
		diff, err := r.fieldDiff(before, desired)
		if err != nil {
			t.Fatal(err)
		}
		if err := k8sClient.Apply(ctx, desired, client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
			t.Fatal(err)
		}
		after := &appsv1.Deployment{}
		if err := convert(desired, after); err != nil {
			t.Fatal(err)
		}
		changed, err := diff.changed(before, after)
		if err != nil {
			t.Fatal(err)
		}
		return after, changed
	}
	config, _ := serverConfig(m)
	first, _ := desiredDeployment(m, unitOpts, config, nil)
	if err := k8sClient.Apply(ctx, first, client.FieldOwner(FieldManager)); err != nil {
		t.Fatal(err)
	}

	d := &appsv1.Deployment{}
	if err := k8sClient.Get(ctx, key(ns, "direct"), d); err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1}
	if err := k8sClient.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, changed := apply(m); changed {
		t.Error("a status write counted as a change the operator made")
	}

	m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](1024)}
	if _, changed := apply(m); !changed {
		t.Error("a new rollout hash was not a change")
	}
	if _, changed := apply(m); changed {
		t.Error("applying the same spec again counted as a change")
	}

	// Someone scales the Deployment with their own field manager; the apply takes it back.
	if err := k8sClient.Get(ctx, key(ns, "direct"), d); err != nil {
		t.Fatal(err)
	}
	d.Spec.Replicas = ptr.To[int32](4)
	if err := k8sClient.Update(ctx, d, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	after, changed := apply(m)
	if !changed || *after.Spec.Replicas != 1 {
		t.Errorf("undoing someone's edit: changed %v, replicas %d", changed, *after.Spec.Replicas)
	}
}

// spec.replicas is reached through the scale subresource, as `kubectl scale`, an HPA,
// KEDA or a gateway scale a model: to zero (phase ScaledToZero, Ready, kstatus Current)
// and back.
func TestScaleSubresource(t *testing.T) {
	needEnv(t)
	t.Parallel()
	ns := newNamespace(t)
	ctx := context.Background()
	d := readyModel(t, ns, "scaled", nil)
	model := &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "scaled"}}

	scale := &autoscalingv1.Scale{}
	if err := k8sClient.SubResource("scale").Get(ctx, model, scale); err != nil {
		t.Fatalf("reading the scale subresource: %v", err)
	}
	if scale.Spec.Replicas != 1 || scale.Status.Replicas != 1 ||
		scale.Status.Selector != "app.kubernetes.io/instance=scaled,app.kubernetes.io/name=rkllm-server" {
		t.Errorf("scale = %+v; an HPA needs the replicas and the pods' selector", scale)
	}

	setScale(t, model, 0)
	getChild(t, ns, "scaled", d, "the Deployment scaled to 0", func() error { return replicasIs(d, 0) })
	getReconciled(t, ns, "scaled", "ScalingDown while the pod stops", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReconciling, metav1.ConditionTrue, inferencev1alpha1.ReasonScalingDown)
	})
	// The Deployment controller removes the pod and reports.
	pods := &corev1.PodList{}
	if err := k8sClient.List(ctx, pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if err := k8sClient.Delete(ctx, &pods.Items[i], client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
	}
	writeScaledDown(t, d)
	m := getReconciled(t, ns, "scaled", "phase ScaledToZero", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.Phase != inferencev1alpha1.PhaseScaledToZero {
			return fmt.Errorf("phase %s (conditions %v)", m.Status.Phase, m.Status.Conditions)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonScaledToZero)
	})
	if h := healthOf(t, m); h.kstatus != current || h.argo != "Suspended" {
		t.Errorf("scaled to zero: kstatus %s, Argo CD %s; want Current and Suspended", h.kstatus, h.argo)
	}
	if m.Status.Endpoint == "" || k8sClient.Get(ctx, key(ns, "scaled"), &corev1.Service{}) != nil {
		t.Error("the Service and endpoint must stay while scaled to zero, for a gateway to scale the model up")
	}
	if err := k8sClient.SubResource("scale").Get(ctx, model, scale); err != nil || scale.Status.Replicas != 0 {
		t.Errorf("scale status %+v, %v; want 0 replicas", scale.Status, err)
	}

	setScale(t, model, 2)
	getChild(t, ns, "scaled", d, "the Deployment scaled to 2", func() error { return replicasIs(d, 2) })
	getReconciled(t, ns, "scaled", "Pending after scaling up", func(m *inferencev1alpha1.RKLLMModel) error {
		if *m.Spec.Replicas != 2 || m.Status.Phase != inferencev1alpha1.PhasePending {
			return fmt.Errorf("replicas %d, phase %s", *m.Spec.Replicas, m.Status.Phase)
		}
		return nil
	})

	// The subresource keeps the spec's limits.
	scale.Spec.Replicas = 65
	if err := k8sClient.SubResource("scale").Update(ctx, model, client.WithSubResourceBody(scale)); err == nil {
		t.Error("scaling to 65 replicas was accepted; spec.replicas allows at most 64")
	}
}

// setScale writes spec.replicas through the scale subresource, as `kubectl scale` does.
func setScale(t *testing.T, model *inferencev1alpha1.RKLLMModel, n int32) {
	t.Helper()
	ctx := context.Background()
	scale := &autoscalingv1.Scale{}
	if err := k8sClient.SubResource("scale").Get(ctx, model, scale); err != nil {
		t.Fatal(err)
	}
	scale.Spec.Replicas = n
	if err := k8sClient.SubResource("scale").Update(ctx, model, client.WithSubResourceBody(scale)); err != nil {
		var status apierrors.APIStatus
		if errors.As(err, &status) {
			t.Fatalf("scaling to %d: %v (%+v)", n, err, status.Status().Details)
		}
		t.Fatalf("scaling to %d: %v", n, err)
	}
}
