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
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

const sampleURL = "https://models.example.org/qwen/Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm"

// createModel creates a model that downloads sampleURL, changed by mutate.
func createModel(t *testing.T, ns, name string, mutate func(*inferencev1alpha1.RKLLMModel)) *inferencev1alpha1.RKLLMModel {
	t.Helper()
	m := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       inferencev1alpha1.RKLLMModelSpec{Model: inferencev1alpha1.ModelSource{URL: sampleURL}},
	}
	if mutate != nil {
		mutate(m)
	}
	if err := k8sClient.Create(context.Background(), m); err != nil {
		t.Fatalf("creating RKLLMModel %s: %v", name, err)
	}
	return m
}

func key(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

// getReconciled waits until the model's status describes its current generation and
// check accepts it, and returns it.
func getReconciled(t *testing.T, ns, name, what string, check func(*inferencev1alpha1.RKLLMModel) error) *inferencev1alpha1.RKLLMModel {
	t.Helper()
	m := &inferencev1alpha1.RKLLMModel{}
	eventually(t, what, func(ctx context.Context) error {
		if err := k8sClient.Get(ctx, key(ns, name), m); err != nil {
			return err
		}
		if check == nil {
			return nil
		}
		return check(m)
	})
	return m
}

// conditionIs checks a condition's status and reason.
func conditionIs(m *inferencev1alpha1.RKLLMModel, t string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(m.Status.Conditions, t)
	if c == nil {
		return fmt.Errorf("no %s condition (conditions: %v)", t, m.Status.Conditions)
	}
	if c.Status != status || c.Reason != reason {
		return fmt.Errorf("%s is %s/%s (%q), want %s/%s", t, c.Status, c.Reason, c.Message, status, reason)
	}
	return nil
}

// getChild waits for a child object to exist and check to accept it.
func getChild(t *testing.T, ns, name string, obj client.Object, what string, check func() error) {
	t.Helper()
	eventually(t, what, func(ctx context.Context) error {
		if err := k8sClient.Get(ctx, key(ns, name), obj); err != nil {
			return err
		}
		if check == nil {
			return nil
		}
		return check()
	})
}

func rolloutHashOf(d *appsv1.Deployment) string {
	return d.Spec.Template.Annotations[AnnotationRolloutHash]
}

// modelEvents lists the events regarding a model.
func modelEvents(ctx context.Context, ns, name string) ([]eventsv1.Event, error) {
	list := &eventsv1.EventList{}
	if err := k8sClient.List(ctx, list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Kind == "RKLLMModel" && e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out, nil
}

// waitEvent waits for an event with the reason whose note contains text.
func waitEvent(t *testing.T, ns, name, eventType, reason, text string) {
	t.Helper()
	eventually(t, fmt.Sprintf("a %s event %s mentioning %q", eventType, reason, text), func(ctx context.Context) error {
		evs, err := modelEvents(ctx, ns, name)
		if err != nil {
			return err
		}
		var seen []string
		for _, e := range evs {
			if e.Type == eventType && e.Reason == reason && strings.Contains(e.Note, text) {
				return nil
			}
			seen = append(seen, e.Type+"/"+e.Reason+": "+e.Note)
		}
		return fmt.Errorf("events so far: %v", seen)
	})
}

func TestCreateMakesConfigDeploymentAndService(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	model := createModel(t, ns, "qwen", func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Model.SHA256 = strings.Repeat("ab", 32)
		m.Spec.Parameters = &inferencev1alpha1.Parameters{TopP: ptr.To("0.9"), MaxContextLen: ptr.To[int32](4096)}
		m.Spec.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "chat", URL: "https://models.example.org/chat.lora", Scale: ptr.To("0.5")}}
	})

	cm := &corev1.ConfigMap{}
	getChild(t, ns, "qwen-config", cm, "the ConfigMap", nil)
	var cfg map[string]any
	if err := json.Unmarshal([]byte(cm.Data["server.json"]), &cfg); err != nil {
		t.Fatalf("server.json is not JSON: %v\n%s", err, cm.Data["server.json"])
	}
	if cfg["top-p"] != "0.9" || cfg["max-context-len"] != float64(4096) || cfg["runtime-abi"] != "1.3" || cfg["listen"] != ":8080" {
		t.Errorf("server.json = %s", cm.Data["server.json"])
	}

	d := &appsv1.Deployment{}
	getChild(t, ns, "qwen", d, "the Deployment", nil)
	if !metav1.IsControlledBy(d, model) || !metav1.IsControlledBy(cm, model) {
		t.Errorf("children are not controlled by the model: %v / %v", d.OwnerReferences, cm.OwnerReferences)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy = %s, want Recreate", d.Spec.Strategy.Type)
	}
	pod := d.Spec.Template.Spec
	if len(pod.InitContainers) != 2 || pod.InitContainers[0].Name != "fetch-model" || pod.InitContainers[1].Name != "fetch-lora-chat" {
		t.Fatalf("init containers = %v", containerNames(pod.InitContainers))
	}
	if got := strings.Join(pod.InitContainers[0].Args, " "); !strings.Contains(got, "--url "+sampleURL) || !strings.Contains(got, "--sha256 "+strings.Repeat("ab", 32)) {
		t.Errorf("fetch args = %s", got)
	}
	server := pod.Containers[0]
	if npu := server.Resources.Limits[inferencev1alpha1.NPUResourceName]; npu.Value() != 1 {
		t.Errorf("NPU limit = %v, want 1", npu)
	}
	if d.Spec.Template.Annotations[AnnotationRolloutHash] == "" {
		t.Error("no rollout hash on the pod template")
	}

	svc := &corev1.Service{}
	getChild(t, ns, "qwen", svc, "the Service", nil)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 || svc.Spec.Ports[0].TargetPort.StrVal != "http" {
		t.Errorf("service ports = %+v", svc.Spec.Ports)
	}

	m := getReconciled(t, ns, "qwen", "the status of the new model", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.ObservedGeneration != m.Generation {
			return fmt.Errorf("observedGeneration %d, generation %d", m.Status.ObservedGeneration, m.Generation)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonPending)
	})
	if m.Status.Phase != inferencev1alpha1.PhasePending || m.Status.Endpoint != "http://qwen."+ns+".svc:8080" {
		t.Errorf("phase %s endpoint %s", m.Status.Phase, m.Status.Endpoint)
	}
	if m.Status.Model != "Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm" {
		t.Errorf("status.model = %q", m.Status.Model)
	}
	if err := conditionIs(m, inferencev1alpha1.ConditionReconciling, metav1.ConditionTrue, inferencev1alpha1.ReasonPending); err != nil {
		t.Error(err)
	}
	// Defaults the CRD applies show in the stored object.
	if m.Spec.Runtime == nil || m.Spec.Runtime.ABI != "1.3" || *m.Spec.Replicas != 1 || *m.Spec.Server.Port != 8080 ||
		m.Spec.Server.ShutdownTimeout.Duration.String() != "30s" || m.Spec.Security.DeviceTree != inferencev1alpha1.DeviceTreeDevicePlugin {
		t.Errorf("defaults not applied: %+v", m.Spec)
	}
	waitEvent(t, ns, "qwen", corev1.EventTypeNormal, EventCreated, "Deployment qwen")
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func TestUpdateChangesRolloutHash(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "m", nil)
	d := &appsv1.Deployment{}
	getChild(t, ns, "m", d, "the Deployment", nil)
	first := rolloutHashOf(d)

	// A change that only reaches server.json still rolls the pods when the server takes
	// it only at start (an rkllm_init parameter).
	m := &inferencev1alpha1.RKLLMModel{}
	if err := k8sClient.Get(context.Background(), key(ns, "m"), m); err != nil {
		t.Fatal(err)
	}
	m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](2048)}
	if err := k8sClient.Update(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "m", d, "a new rollout hash", func() error {
		if rolloutHashOf(d) == first {
			return errors.New("rollout hash unchanged")
		}
		return nil
	})
	cm := &corev1.ConfigMap{}
	getChild(t, ns, "m-config", cm, "max-context-len in server.json", func() error {
		if !strings.Contains(cm.Data["server.json"], `"max-context-len": 2048`) {
			return fmt.Errorf("server.json = %s", cm.Data["server.json"])
		}
		return nil
	})
	getReconciled(t, ns, "m", "observedGeneration 2", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.ObservedGeneration != 2 {
			return fmt.Errorf("observedGeneration %d", m.Status.ObservedGeneration)
		}
		return nil
	})
	waitEvent(t, ns, "m", corev1.EventTypeNormal, EventUpdated, "Deployment m")
}

func TestSuspendScalesToZero(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "s", func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptr.To[int32](2) })
	d := &appsv1.Deployment{}
	getChild(t, ns, "s", d, "2 replicas", func() error { return replicasIs(d, 2) })

	setSuspend(t, ns, "s", true)
	getChild(t, ns, "s", d, "0 replicas while suspended", func() error { return replicasIs(d, 0) })
	// Until the Deployment says its pods are gone, the model is stopping.
	getReconciled(t, ns, "s", "ScalingDown while the Deployment has not scaled down", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReconciling, metav1.ConditionTrue, inferencev1alpha1.ReasonScalingDown)
	})
	writeScaledDown(t, d)
	m := getReconciled(t, ns, "s", "the Suspended phase", func(m *inferencev1alpha1.RKLLMModel) error {
		if m.Status.Phase != inferencev1alpha1.PhaseSuspended {
			return fmt.Errorf("phase %s", m.Status.Phase)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonSuspended)
	})
	if meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReconciling) != nil {
		t.Error("a suspended model should not be Reconciling")
	}
	if h := healthOf(t, m); h.kstatus != current || h.argo != "Suspended" {
		t.Errorf("a suspended model is %s to kstatus and %s to Argo CD, want Current and Suspended", h.kstatus, h.argo)
	}
	// The Service and ConfigMap stay, so resuming is quick.
	if err := k8sClient.Get(context.Background(), key(ns, "s"), &corev1.Service{}); err != nil {
		t.Errorf("service gone while suspended: %v", err)
	}

	setSuspend(t, ns, "s", false)
	getChild(t, ns, "s", d, "2 replicas after resuming", func() error { return replicasIs(d, 2) })
}

// writeScaledDown writes the status the Deployment controller writes once no pod is left.
func writeScaledDown(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation}
	if err := k8sClient.Status().Update(context.Background(), d); err != nil {
		t.Fatalf("writing deployment status: %v", err)
	}
}

func replicasIs(d *appsv1.Deployment, n int32) error {
	if d.Spec.Replicas == nil || *d.Spec.Replicas != n {
		return fmt.Errorf("replicas = %v, want %d", d.Spec.Replicas, n)
	}
	return nil
}

func setSuspend(t *testing.T, ns, name string, suspend bool) {
	t.Helper()
	m := &inferencev1alpha1.RKLLMModel{}
	if err := k8sClient.Get(context.Background(), key(ns, name), m); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Suspend = suspend
	if err := k8sClient.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
}

func TestDeletedChildrenAreRecreated(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "d", nil)
	for _, c := range []struct {
		name string
		obj  client.Object
	}{
		{"d", &corev1.Service{}},
		{"d-config", &corev1.ConfigMap{}},
		{"d", &appsv1.Deployment{}},
	} {
		getChild(t, ns, c.name, c.obj, "the child", nil)
		oldUID := c.obj.GetUID()
		if err := k8sClient.Delete(context.Background(), c.obj); err != nil {
			t.Fatal(err)
		}
		getChild(t, ns, c.name, c.obj, fmt.Sprintf("%T %s to come back", c.obj, c.name), func() error {
			if c.obj.GetUID() == oldUID {
				return errors.New("still the old object")
			}
			return nil
		})
	}
}

func TestEditedChildrenAreRestored(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "e", nil)
	d := &appsv1.Deployment{}
	getChild(t, ns, "e", d, "the Deployment", nil)

	// Someone changes fields the operator owns, and adds one it does not.
	edited := d.DeepCopy()
	edited.Spec.Replicas = ptr.To[int32](5)
	edited.Spec.Template.Spec.Containers[0].Image = "evil.example/other:1"
	edited.Annotations = map[string]string{"example.org/note": "kept"}
	if err := k8sClient.Update(context.Background(), edited); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "e", d, "the Deployment restored", func() error {
		if err := replicasIs(d, 1); err != nil {
			return err
		}
		if img := d.Spec.Template.Spec.Containers[0].Image; img != testImage {
			return fmt.Errorf("image %s", img)
		}
		return nil
	})
	if d.Annotations["example.org/note"] != "kept" {
		t.Errorf("the operator removed a field it does not own: annotations %v", d.Annotations)
	}

	cm := &corev1.ConfigMap{}
	getChild(t, ns, "e-config", cm, "the ConfigMap", nil)
	want := cm.Data["server.json"]
	cm.Data["server.json"] = "{}"
	if err := k8sClient.Update(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "e-config", cm, "server.json restored", func() error {
		if cm.Data["server.json"] != want {
			return fmt.Errorf("server.json = %s", cm.Data["server.json"])
		}
		return nil
	})
}

func TestMissingDependenciesBlockOnlyTheirModel(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "on-pvc", func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Model = inferencev1alpha1.ModelSource{PVC: &inferencev1alpha1.PVCSource{ClaimName: "models", Path: "qwen/model.rkllm"}}
	})
	createModel(t, ns, "fine", nil)

	// The healthy model is not held up by the broken one.
	getChild(t, ns, "fine", &appsv1.Deployment{}, "the healthy model's Deployment", nil)

	m := getReconciled(t, ns, "on-pvc", inferencev1alpha1.ReasonPVCNotFound, func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionStalled, metav1.ConditionTrue, inferencev1alpha1.ReasonPVCNotFound)
	})
	if msg := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady).Message; !strings.Contains(msg, `PersistentVolumeClaim "models"`) {
		t.Errorf("Ready message %q does not name the claim", msg)
	}
	if m.Status.Phase != inferencev1alpha1.PhaseFailed || m.Status.ObservedGeneration != m.Generation {
		t.Errorf("phase %s, observedGeneration %d of %d; want Failed and the generation seen", m.Status.Phase, m.Status.ObservedGeneration, m.Generation)
	}
	if h := healthOf(t, m); h.kstatus != failed || h.argo != "Degraded" {
		t.Errorf("a model waiting for its PVC is %s to kstatus and %s to Argo CD, want Failed and Degraded", h.kstatus, h.argo)
	}
	if err := k8sClient.Get(context.Background(), key(ns, "on-pvc"), &appsv1.Deployment{}); err == nil {
		t.Error("a Deployment was created despite the missing claim")
	}
	waitEvent(t, ns, "on-pvc", corev1.EventTypeWarning, inferencev1alpha1.ReasonPVCNotFound, `PersistentVolumeClaim "models"`)

	// Creating the claim unblocks the model (the operator looks again).
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "models"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")}},
		},
	}
	if err := k8sClient.Create(context.Background(), pvc); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "on-pvc", &appsv1.Deployment{}, "the Deployment once the PVC exists", nil)
	getReconciled(t, ns, "on-pvc", "Pending after the PVC appears", func(m *inferencev1alpha1.RKLLMModel) error {
		if c := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionStalled); c != nil {
			return fmt.Errorf("still stalled: %s", c.Message)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonPending)
	})
}

// The operator cannot read Secrets: the API key Secret goes into the pod as it is, and
// what the kubelet reports about it (FailedMount events) becomes the model's status.
func TestMissingAPIKeySecretIsTheKubeletsReport(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	createModel(t, ns, "with-key", func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Server = &inferencev1alpha1.ServerSpec{APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api", Key: "token"}}
	})
	d := &appsv1.Deployment{}
	getChild(t, ns, "with-key", d, "the Deployment, though the Secret does not exist", nil)
	if vol := findVolume(d.Spec.Template.Spec.Volumes, volConfig); vol == nil || len(vol.Projected.Sources) != 2 {
		t.Errorf("config volume does not project the API key: %+v", vol)
	}

	starting := corev1.PodStatus{
		InitContainerStatuses: []corev1.ContainerStatus{waiting("fetch-model", "PodInitializing", "")},
		ContainerStatuses:     []corev1.ContainerStatus{waiting("server", "PodInitializing", "")},
	}
	pod := serverPod(t, d, starting, true)
	// The kubelet retries the mount and reports each failure; the newest report counts.
	at := metav1.Now()
	for _, c := range []struct{ reason, kubelet string }{
		{inferencev1alpha1.ReasonSecretNotFound, `MountVolume.SetUp failed for volume "config" : secret "api" not found`},
		{inferencev1alpha1.ReasonSecretKeyNotFound, `MountVolume.SetUp failed for volume "config" : references non-existent secret key: token`},
	} {
		at = metav1.NewTime(at.Add(time.Minute))
		kubeletEvent(t, pod, eventFailedMount, c.kubelet, at)
		// Nothing the controller watches changed: it reads the kubelet's events when it
		// looks again (every ProgressInterval), or, as here, when something wakes it.
		poke(t, d, c.reason)
		m := getReconciled(t, ns, "with-key", c.reason, func(m *inferencev1alpha1.RKLLMModel) error {
			return conditionIs(m, inferencev1alpha1.ConditionStalled, metav1.ConditionTrue, c.reason)
		})
		if msg := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady).Message; !strings.Contains(msg, "spec.server.apiKeySecretRef") {
			t.Errorf("Ready message %q does not point at spec.server.apiKeySecretRef", msg)
		}
		waitEvent(t, ns, "with-key", corev1.EventTypeWarning, c.reason, "")
	}

	// The kubelet mounts the volume once the Secret has the key: the pod runs on.
	pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "fetch-model", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	if err := k8sClient.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	getReconciled(t, ns, "with-key", "Downloading once the volume is mounted", func(m *inferencev1alpha1.RKLLMModel) error {
		if c := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionStalled); c != nil {
			return fmt.Errorf("still stalled: %s", c.Message)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonDownloading)
	})
}

func findVolume(vols []corev1.Volume, name string) *corev1.Volume {
	for i := range vols {
		if vols[i].Name == name {
			return &vols[i]
		}
	}
	return nil
}

func TestNameHeldByAnotherOwnerIsReported(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	theirs := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "taken"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}
	if err := k8sClient.Create(context.Background(), theirs); err != nil {
		t.Fatal(err)
	}
	createModel(t, ns, "taken", nil)
	getReconciled(t, ns, "taken", "NameConflict", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonNameConflict)
	})
	svc := &corev1.Service{}
	if err := k8sClient.Get(context.Background(), key(ns, "taken"), svc); err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Ports[0].Port != 80 || len(svc.OwnerReferences) != 0 {
		t.Errorf("the operator changed a Service it does not own: %+v", svc)
	}
}

func TestSpecTheClusterRefusesStalls(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	// The CRD passes tolerations through; the Deployment's own validation refuses a
	// value with operator Exists.
	createModel(t, ns, "refused", func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Tolerations = []corev1.Toleration{{Key: "npu", Operator: corev1.TolerationOpExists, Value: "yes"}}
	})
	m := getReconciled(t, ns, "refused", "Stalled", func(m *inferencev1alpha1.RKLLMModel) error {
		return conditionIs(m, inferencev1alpha1.ConditionStalled, metav1.ConditionTrue, inferencev1alpha1.ReasonInvalidSpec)
	})
	ready := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
	if ready.Reason != inferencev1alpha1.ReasonInvalidSpec || !strings.Contains(ready.Message, "tolerations") {
		t.Errorf("Ready %s: %q should name the refused field", ready.Reason, ready.Message)
	}
	if m.Status.ObservedGeneration != m.Generation || m.Status.Phase != inferencev1alpha1.PhaseFailed {
		t.Errorf("a stalled model reports observedGeneration %d of %d, phase %s", m.Status.ObservedGeneration, m.Generation, m.Status.Phase)
	}
	if meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReconciling) != nil {
		t.Error("a stalled model should not also be Reconciling")
	}
	waitEvent(t, ns, "refused", corev1.EventTypeWarning, EventApplyFailed, "Deployment refused")

	// Fixing the spec un-stalls it.
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Tolerations[0].Value = ""
	if err := k8sClient.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "refused", &appsv1.Deployment{}, "the Deployment after the fix", nil)
	getReconciled(t, ns, "refused", "no longer Stalled", func(m *inferencev1alpha1.RKLLMModel) error {
		if c := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionStalled); c != nil {
			return fmt.Errorf("still stalled: %s", c.Message)
		}
		return conditionIs(m, inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonPending)
	})
}
