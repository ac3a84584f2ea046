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
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// upgradedOperator is a second operator, as after an upgrade: a new default server image.
func upgradedOperator(opts Options) *RKLLMModelReconciler {
	return &RKLLMModelReconciler{
		Client: k8sClient, APIReader: k8sClient, Scheme: k8sClient.Scheme(),
		Recorder: &events.FakeRecorder{}, Options: opts,
	}
}

// reconcileAs runs a reconcile of the model with r until one succeeds: the suite's
// operator reconciles the same model meanwhile, and a status write may lose the race.
func reconcileAs(t *testing.T, r *RKLLMModelReconciler, ns, name string) {
	t.Helper()
	eventually(t, "a reconcile by the other operator", func(ctx context.Context) error {
		_, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, name)})
		return err
	})
}

func configOf(t *testing.T, ns, name string) map[string]any {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := k8sClient.Get(context.Background(), key(ns, name+"-config"), cm); err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal([]byte(cm.Data["server.json"]), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestOperatorUpgradeRestartsNothing: an upgraded operator with another default server
// image leaves a running model's pod template alone, also when only what the server takes
// while running (a temperature) changes or the model is scaled; --roll-on-upgrade
// rebuilds it with the new image.
func TestOperatorUpgradeRestartsNothing(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "up", nil)
	d := &appsv1.Deployment{}
	getChild(t, ns, "up", d, "the Deployment", nil)
	before := d.Spec.Template.DeepCopy()

	next := "registry.test/rkllm-server:next"
	upgraded := upgradedOperator(Options{DefaultImage: next})
	unchanged := func(what string) {
		t.Helper()
		reconcileAs(t, upgraded, ns, "up")
		if err := k8sClient.Get(context.Background(), key(ns, "up"), d); err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(d.Spec.Template, *before) {
			t.Errorf("%s: the upgraded operator changed the pod template (image %s, want %s)", what, d.Spec.Template.Spec.Containers[0].Image, testImage)
		}
	}
	unchanged("the same spec")

	patch := func(p string) {
		t.Helper()
		m := &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "up"}}
		if err := k8sClient.Patch(context.Background(), m, client.RawPatch("application/merge-patch+json", []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	patch(`{"spec":{"parameters":{"temperature":"0.3","maxNewTokens":200},"replicas":2}}`)
	unchanged("a new temperature and replica count")
	if c := configOf(t, ns, "up"); c["temperature"] != "0.3" || c["max-new-tokens"] != 200.0 {
		t.Errorf("server.json %v lacks the new sampling defaults", c)
	}

	// --roll-on-upgrade builds the template afresh; an operator without the flag (an old
	// default image) then keeps that revision. The suite's operator reconciles the model
	// meanwhile, and one that read the Deployment before the roll may write the old
	// revision back once: the pair is repeated until the image that stays is checked
	// right after the operator without the flag ran.
	upgradedRolling := upgradedOperator(Options{DefaultImage: next, RollOnUpgrade: true})
	plain := upgradedOperator(Options{DefaultImage: testImage})
	eventually(t, "the new image with --roll-on-upgrade, kept by an operator without it", func(ctx context.Context) error {
		for _, r := range []*RKLLMModelReconciler{upgradedRolling, plain} {
			if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "up")}); err != nil {
				return err
			}
		}
		if err := k8sClient.Get(ctx, key(ns, "up"), d); err != nil {
			return err
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != next {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
}

// TestRollingStrategyAndDisruptionBudget: above one replica the Deployment rolls one pod
// at a time without a surge, at one it uses Recreate (the API server takes the switch
// both ways), and a PodDisruptionBudget lets drains take one pod at a time.
func TestRollingStrategyAndDisruptionBudget(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	m := createModel(t, ns, "roll", func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptr.To[int32](3) })
	d := &appsv1.Deployment{}
	rolling := func() error {
		s := d.Spec.Strategy
		if s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
			s.RollingUpdate.MaxSurge.String() != "0" || s.RollingUpdate.MaxUnavailable.String() != "1" {
			return fmt.Errorf("strategy %+v", s)
		}
		return nil
	}
	getChild(t, ns, "roll", d, "a rolling strategy without surge", rolling)
	pdb := &policyv1.PodDisruptionBudget{}
	getChild(t, ns, "roll", pdb, "the PodDisruptionBudget", func() error {
		if !metav1.IsControlledBy(pdb, m) || pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) {
			return fmt.Errorf("PodDisruptionBudget %+v owned by %v", pdb.Spec, pdb.OwnerReferences)
		}
		if !equality.Semantic.DeepEqual(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
			return fmt.Errorf("selector %v, the Deployment's %v", pdb.Spec.Selector, d.Spec.Selector)
		}
		return nil
	})
	patch := func(replicas int) {
		t.Helper()
		if err := k8sClient.Patch(context.Background(), &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "roll"}},
			client.RawPatch("application/merge-patch+json", []byte(fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)))); err != nil {
			t.Fatal(err)
		}
	}
	patch(1)
	getChild(t, ns, "roll", d, "Recreate for one replica", func() error {
		if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate != nil {
			return fmt.Errorf("strategy %+v", d.Spec.Strategy)
		}
		return nil
	})
	patch(2)
	getChild(t, ns, "roll", d, "rolling again for two", rolling)
	getReconciled(t, ns, "roll", "no reconcile error", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.ObservedGeneration != m.Generation {
			return fmt.Errorf("observed generation %d of %d", m.Status.ObservedGeneration, m.Generation)
		}
		for _, c := range m.Status.Conditions {
			if strings.Contains(c.Message, "refused") {
				return fmt.Errorf("%s: %s", c.Type, c.Message)
			}
		}
		return nil
	})
}
