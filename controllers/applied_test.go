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
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
)

// The Deployment controller writes status between the operator's read and its apply;
// that is not a change the apply made, while a field the apply sets is.
func TestFieldDiffIgnoresStatus(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	r := &RKLLMModelReconciler{Scheme: scheme}
	stored := func(replicas, ready int32) *appsv1.Deployment {
		return &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "m", Namespace: "ns"},
			Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(replicas)},
			Status:     appsv1.DeploymentStatus{ReadyReplicas: ready, ObservedGeneration: int64(ready)},
		}
	}
	desired := appsv1ac.Deployment("m", "ns").WithSpec(appsv1ac.DeploymentSpec().WithReplicas(1))
	diff, err := r.fieldDiff(&appsv1.Deployment{}, desired)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		before, after *appsv1.Deployment
		want          bool
	}{
		{"status only", stored(1, 0), stored(1, 1), false},
		{"a field the apply sets", stored(2, 0), stored(1, 0), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := diff.changed(tc.before, tc.after)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("changed = %v, want %v", got, tc.want)
			}
		})
	}
}
