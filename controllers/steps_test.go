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
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// reconcileDependencies against a fake API server: the reasons it blocks with, and the
// messages that tell the user what to do.
func TestReconcileDependencies(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = inferencev1alpha1.AddToScheme(scheme)
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "store"}}
	onPVC := func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Model = inferencev1alpha1.ModelSource{PVC: &inferencev1alpha1.PVCSource{ClaimName: "store", Path: "m.rkllm"}}
	}
	withKey := func(key string) func(m *inferencev1alpha1.RKLLMModel) {
		return func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Server = &inferencev1alpha1.ServerSpec{APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api", Key: key}}
		}
	}
	cases := []struct {
		name     string
		model    func(*inferencev1alpha1.RKLLMModel)
		existing []client.Object
		reason   string // "" when the step passes
		message  []string
	}{
		{name: "url source needs nothing", reason: ""},
		{name: "claim exists", model: onPVC, existing: []client.Object{claim}},
		{name: "claim missing", model: onPVC, reason: inferencev1alpha1.ReasonPVCNotFound,
			message: []string{`PersistentVolumeClaim "store"`, "namespace ns", "create it or fix the name"}},
		// The operator cannot read Secrets (no RBAC): a missing one is the kubelet's to
		// report, and the step must not try.
		{name: "secret is not read", model: withKey("token")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(tc.existing...).Build()
			noSecrets := interceptor.Funcs{Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*corev1.Secret); ok {
					t.Errorf("the step read Secret %s, which the operator has no right to", key)
				}
				return c.Get(ctx, key, obj, opts...)
			}}
			c = interceptor.NewClient(c, noSecrets)
			r := &RKLLMModelReconciler{Client: c, APIReader: c, Scheme: scheme}
			_, err := r.reconcileDependencies(context.Background(), unitModel(tc.model), &observation{})
			var be *blockedError
			switch {
			case tc.reason == "" && err != nil:
				t.Fatalf("blocked: %v", err)
			case tc.reason == "":
				return
			case !errors.As(err, &be):
				t.Fatalf("err = %v, want a blocking %s", err, tc.reason)
			}
			if be.reason != tc.reason || !be.retry {
				t.Errorf("reason %s retry %v, want %s and a retry", be.reason, be.retry, tc.reason)
			}
			for _, m := range tc.message {
				if !strings.Contains(be.message, m) {
					t.Errorf("message %q does not say %q", be.message, m)
				}
			}
		})
	}
}
