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
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Pod Security levels, most to least strict.
const (
	levelRestricted = "restricted"
	levelBaseline   = "baseline"
	levelPrivileged = "privileged"
)

// psaNamespace creates a namespace whose Pod Security admission enforces level.
func psaNamespace(t *testing.T, level string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "rkm-psa-" + level + "-",
		Labels:       map[string]string{"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/enforce-version": "latest"},
	}}
	if err := k8sClient.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), ns) })
	// The ServiceAccount admission wants the pod's ServiceAccount to exist (no
	// controller-manager makes it here).
	if err := k8sClient.Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// admitted creates, as a dry run, a pod from the Deployment's template in ns, as the
// ReplicaSet controller would: nil when the API server's admission lets it in.
func admitted(ctx context.Context, d *appsv1.Deployment, ns string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: ns, Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations},
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	return k8sClient.Create(ctx, pod, client.DryRunAll)
}

// TestPodSecurityAdmission: the API server's PodSecurity admission (namespaces labelled
// pod-security.kubernetes.io/enforce) admits the operator's default pod at restricted,
// and so every option that needs no host access; what reaches into the host (the device
// tree or a model by hostPath, a hostPath cache, a privileged or root container, an
// unmasked /proc) is opt-in and needs the level it names. docs/install.md lists these.
func TestPodSecurityAdmission(t *testing.T) {
	needEnv(t)
	ctx := context.Background()
	ns := newNamespace(t)
	levels := map[string]string{
		levelRestricted: psaNamespace(t, levelRestricted),
		levelBaseline:   psaNamespace(t, levelBaseline),
	}
	if err := k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"}, StringData: map[string]string{"api-key": "k"}}); err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "store"}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}}
	if err := k8sClient.Create(ctx, pvc); err != nil {
		t.Fatal(err)
	}
	sec := func(s inferencev1alpha1.SecuritySpec) func(*inferencev1alpha1.RKLLMModel) {
		return func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Security = &s }
	}
	cases := []struct {
		name   string
		mutate func(*inferencev1alpha1.RKLLMModel)
		// strictest is the strictest level that admits the pod.
		strictest string
	}{
		{"default", nil, levelRestricted},
		{"model-on-a-pvc", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Model = inferencev1alpha1.ModelSource{PVC: &inferencev1alpha1.PVCSource{ClaimName: "store", Path: "q.rkllm"}}
		}, levelRestricted},
		{"api-key-lora-prompt-cache", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Server = &inferencev1alpha1.ServerSpec{APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api"}}
			m.Spec.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "chat", URL: "https://example.org/chat.lora"}}
			m.Spec.PromptCache = &inferencev1alpha1.PromptCache{URL: "https://example.org/p.bin"}
		}, levelRestricted},
		{"emptydir-cache", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Model.Cache = &inferencev1alpha1.ModelCache{EmptyDir: &inferencev1alpha1.EmptyDirCache{}}
		}, levelRestricted},
		{"replicas-units-render-group", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Replicas = ptr.To[int32](3)
			m.Spec.NPU = &inferencev1alpha1.NPUSpec{Units: ptr.To[int32](2)}
			m.Spec.Security = &inferencev1alpha1.SecuritySpec{SupplementalGroups: []int64{107}}
		}, levelRestricted},
		{"device-tree-none", sec(inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeNone}), levelRestricted},
		// A user namespace makes an unmasked /proc baseline since Kubernetes 1.35.
		{"unmasked-proc", sec(inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeUnmaskedProc}), levelBaseline},
		{"root", sec(inferencev1alpha1.SecuritySpec{RunAsUser: ptr.To[int64](0)}), levelBaseline},
		{"device-tree-hostpath", sec(inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeHostPath}), levelPrivileged},
		{"model-hostpath", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Model = inferencev1alpha1.ModelSource{HostPath: "/opt/models/q.rkllm"}
		}, levelPrivileged},
		{"hostpath-cache", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Model.Cache = &inferencev1alpha1.ModelCache{HostPath: &inferencev1alpha1.HostPathCache{}}
		}, levelPrivileged},
		{"host-runtime-library", func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{HostLibraryPath: "/usr/lib/librkllmrt.so"}
		}, levelPrivileged},
		{"privileged", sec(inferencev1alpha1.SecuritySpec{Privileged: ptr.To(true)}), levelPrivileged},
	}
	// The namespaces that admit a pod whose strictest level is the key.
	admittedIn := map[string][]string{
		levelRestricted: {levelRestricted, levelBaseline},
		levelBaseline:   {levelBaseline},
		levelPrivileged: {},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			createModel(t, ns, tc.name, tc.mutate)
			d := &appsv1.Deployment{}
			getChild(t, ns, tc.name, d, "the Deployment", nil)
			for _, level := range []string{levelRestricted, levelBaseline} {
				want := false
				for _, l := range admittedIn[tc.strictest] {
					want = want || l == level
				}
				err := admitted(ctx, d, levels[level])
				switch {
				case want && err != nil:
					t.Errorf("a namespace enforcing %s refuses the pod: %v", level, err)
				case !want && err == nil:
					t.Errorf("a namespace enforcing %s admits the pod; docs/install.md says it needs more than %s", level, tc.strictest)
				case !want && (!apierrors.IsForbidden(err) || !strings.Contains(err.Error(), fmt.Sprintf("violates PodSecurity %q", level+":latest"))):
					t.Errorf("refused in %s, but not by Pod Security: %v", level, err)
				}
			}
		})
	}
}
