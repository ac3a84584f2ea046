package controllers

import (
	"context"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// A status written from a model the cache had not caught up with meets a conflict:
// the model is looked at again soon, without an error (which controller-runtime logs
// with a stack trace as a failed reconcile). Any other failure is still an error.
func TestStatusConflictIsNotAnError(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = inferencev1alpha1.AddToScheme(scheme)
	for _, tc := range []struct {
		name    string
		err     error
		wantErr bool
	}{
		{"conflict", apierrors.NewConflict(schema.GroupResource{Group: inferencev1alpha1.GroupVersion.Group, Resource: "rkllmmodels"}, "qwen", nil), false},
		{"server error", apierrors.NewInternalError(context.DeadlineExceeded), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			model := unitModel(nil)
			var patched int
			c := interceptor.NewClient(fake.NewClientBuilder().WithScheme(scheme).WithObjects(model).WithStatusSubresource(model).Build(), interceptor.Funcs{
				SubResourcePatch: func(context.Context, client.Client, string, client.Object, client.Patch, ...client.SubResourcePatchOption) error {
					patched++
					return tc.err
				},
			})
			r := &RKLLMModelReconciler{Client: c, APIReader: c, Scheme: scheme, Recorder: events.NewFakeRecorder(16)}
			result, err := r.summarizeStatus(context.Background(), model.DeepCopy(), model, &observation{}, ctrl.Result{}, nil)
			if patched != 1 {
				t.Fatalf("status patched %d times, want 1", patched)
			}
			if tc.wantErr {
				if err == nil {
					t.Error("a failed status write was not an error")
				}
				return
			}
			if err != nil {
				t.Errorf("a conflict was returned as an error: %v", err)
			}
			if result.RequeueAfter <= 0 || result.RequeueAfter > conflictRetry {
				t.Errorf("requeue after %v, want a look again within %v", result.RequeueAfter, conflictRetry)
			}
		})
	}
}
