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
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// The escape hatches (env, envFrom, args, pod labels and annotations, runtime and
// priority class, Service type and annotations) reach exactly the fields they name, and
// never the operator's own.
func TestEscapeHatchesInDesiredObjects(t *testing.T) {
	type model = inferencev1alpha1.RKLLMModel
	proxy := corev1.EnvVar{Name: "HTTPS_PROXY", Value: "http://proxy.example.org:3128"}
	token := corev1.EnvVar{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "tokens"}, Key: "t"}}}
	fromCM := corev1.EnvFromSource{Prefix: "RKLLM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}
	baseArgs := []string{"serve", "--config", "/etc/rkllm/server.json"}
	withLoRA := func(m *model) {
		m.Spec.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "chat", URL: "https://example.org/chat.rkllm"}}
	}
	cases := []struct {
		name   string
		mutate func(*model)
		check  func(d *appsv1.Deployment, svc *corev1.Service) error
	}{
		{"none set: nothing added", nil, func(d *appsv1.Deployment, svc *corev1.Service) error {
			pod := d.Spec.Template.Spec
			for _, c := range append(pod.InitContainers, pod.Containers...) {
				if len(c.Env) > 0 || len(c.EnvFrom) > 0 {
					return fmt.Errorf("container %s has env %v %v", c.Name, c.Env, c.EnvFrom)
				}
			}
			if pod.RuntimeClassName != nil || pod.PriorityClassName != "" {
				return fmt.Errorf("runtime class %v, priority class %q", pod.RuntimeClassName, pod.PriorityClassName)
			}
			if !reflect.DeepEqual(pod.Containers[0].Args, baseArgs) {
				return fmt.Errorf("server args %v", pod.Containers[0].Args)
			}
			if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Annotations) != 0 {
				return fmt.Errorf("service type %s, annotations %v", svc.Spec.Type, svc.Annotations)
			}
			return nil
		}},
		{"env and envFrom reach the server and every download", func(m *model) {
			withLoRA(m)
			m.Spec.Env = []corev1.EnvVar{proxy, token}
			m.Spec.EnvFrom = []corev1.EnvFromSource{fromCM}
		}, func(d *appsv1.Deployment, _ *corev1.Service) error {
			pod := d.Spec.Template.Spec
			all := append(pod.InitContainers, pod.Containers...)
			if len(all) != 3 {
				return fmt.Errorf("containers %v, want fetch-model, fetch-lora-chat and server", containerNames(all))
			}
			for _, c := range all {
				if !reflect.DeepEqual(c.Env, []corev1.EnvVar{proxy, token}) || !reflect.DeepEqual(c.EnvFrom, []corev1.EnvFromSource{fromCM}) {
					return fmt.Errorf("container %s: env %+v envFrom %+v", c.Name, c.Env, c.EnvFrom)
				}
			}
			return nil
		}},
		{"args follow the server's own, downloads keep theirs", func(m *model) {
			m.Spec.Args = []string{"--max-queue=64", "--log-level", "debug"}
		}, func(d *appsv1.Deployment, _ *corev1.Service) error {
			pod := d.Spec.Template.Spec
			if want := append(append([]string{}, baseArgs...), "--max-queue=64", "--log-level", "debug"); !reflect.DeepEqual(pod.Containers[0].Args, want) {
				return fmt.Errorf("server args %v, want %v", pod.Containers[0].Args, want)
			}
			if args := pod.InitContainers[0].Args; args[0] != "fetch" || strings.Contains(strings.Join(args, " "), "max-queue") {
				return fmt.Errorf("fetch args %v", args)
			}
			return nil
		}},
		{"pod labels and annotations join the operator's", func(m *model) {
			m.Spec.PodLabels = map[string]inferencev1alpha1.LabelValue{"team": "edge", "sidecar.istio.io/inject": "false"}
			m.Spec.PodAnnotations = map[string]string{"prometheus.io/scrape": "true"}
		}, func(d *appsv1.Deployment, _ *corev1.Service) error {
			tpl := d.Spec.Template
			want := objectLabels(unitModel(nil))
			want["team"], want["sidecar.istio.io/inject"] = "edge", "false"
			if !reflect.DeepEqual(tpl.Labels, want) {
				return fmt.Errorf("pod labels %v, want %v", tpl.Labels, want)
			}
			if !reflect.DeepEqual(d.Spec.Selector.MatchLabels, selectorLabels(unitModel(nil))) {
				return fmt.Errorf("the selector changed: %v", d.Spec.Selector.MatchLabels)
			}
			if tpl.Annotations["prometheus.io/scrape"] != "true" || tpl.Annotations[AnnotationRolloutHash] == "" || len(tpl.Annotations) != 2 {
				return fmt.Errorf("pod annotations %v", tpl.Annotations)
			}
			if _, ok := d.Labels["team"]; ok {
				return fmt.Errorf("pod labels leaked onto the Deployment: %v", d.Labels)
			}
			return nil
		}},
		{"the operator's labels win over colliding ones", func(m *model) {
			// The CRD refuses these; the builder must not trust that alone.
			m.Spec.PodLabels = map[string]inferencev1alpha1.LabelValue{LabelInstance: "other", LabelManagedBy: "someone"}
		}, func(d *appsv1.Deployment, _ *corev1.Service) error {
			if l := d.Spec.Template.Labels; l[LabelInstance] != "qwen" || l[LabelManagedBy] != managedByValue {
				return fmt.Errorf("pod labels %v", l)
			}
			return nil
		}},
		{"runtime and priority class", func(m *model) {
			m.Spec.RuntimeClassName = ptr.To("kata-npu")
			m.Spec.PriorityClassName = "llm-high"
		}, func(d *appsv1.Deployment, _ *corev1.Service) error {
			pod := d.Spec.Template.Spec
			if pod.RuntimeClassName == nil || *pod.RuntimeClassName != "kata-npu" || pod.PriorityClassName != "llm-high" {
				return fmt.Errorf("runtime class %v, priority class %q", pod.RuntimeClassName, pod.PriorityClassName)
			}
			return nil
		}},
		{"service type and annotations", func(m *model) {
			m.Spec.Service = &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
				Annotations: map[string]string{"metallb.universe.tf/address-pool": "lan"}}
		}, func(_ *appsv1.Deployment, svc *corev1.Service) error {
			if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Annotations["metallb.universe.tf/address-pool"] != "lan" {
				return fmt.Errorf("service type %s, annotations %v", svc.Spec.Type, svc.Annotations)
			}
			if !reflect.DeepEqual(svc.Spec.Selector, selectorLabels(unitModel(nil))) {
				return fmt.Errorf("service selector %v", svc.Spec.Selector)
			}
			return nil
		}},
		{"service section without a type", func(m *model) {
			m.Spec.Service = &inferencev1alpha1.ServiceSpec{Annotations: map[string]string{"a": "b"}}
		}, func(_ *appsv1.Deployment, svc *corev1.Service) error {
			if svc.Spec.Type != corev1.ServiceTypeClusterIP {
				return fmt.Errorf("service type %s, want the default ClusterIP", svc.Spec.Type)
			}
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := unitModel(tc.mutate)
			d, _ := build(t, m)
			svc := &corev1.Service{}
			if err := convert(desiredService(m), svc); err != nil {
				t.Fatal(err)
			}
			if err := tc.check(d, svc); err != nil {
				t.Error(err)
			}
		})
	}
}

// Every escape hatch that changes the pods changes the rollout hash, so the status knows
// which pods are current; the Service's settings do not roll the pods.
func TestEscapeHatchesRollThePods(t *testing.T) {
	hash := func(mutate func(*inferencev1alpha1.RKLLMModel)) string {
		d, _ := build(t, unitModel(mutate))
		return d.Spec.Template.Annotations[AnnotationRolloutHash]
	}
	base := hash(nil)
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"env": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Env = []corev1.EnvVar{{Name: "A", Value: "1"}} },
		"envFrom": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{}}}
		},
		"args": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Args = []string{"--max-queue=2"} },
		"podLabels": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.PodLabels = map[string]inferencev1alpha1.LabelValue{"a": "b"}
		},
		"podAnnotations": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.PodAnnotations = map[string]string{"a": "b"} },
		"runtimeClass":   func(m *inferencev1alpha1.RKLLMModel) { m.Spec.RuntimeClassName = ptr.To("kata") },
	} {
		if hash(mutate) == base {
			t.Errorf("changing %s does not change the rollout hash", name)
		}
	}
	if h := hash(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Service = &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Annotations: map[string]string{"a": "b"}}
	}); h != base {
		t.Error("changing the Service rolls the pods")
	}
}

// The API server refuses escape hatches that would break the operator's pods, with a
// message that says why; and accepts every hatch used as meant.
func TestEscapeHatchValidation(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	type spec = inferencev1alpha1.RKLLMModelSpec
	cases := []struct {
		name   string
		mutate func(s *spec)
		want   []string
	}{
		{"pod label selecting the pods", func(s *spec) {
			s.PodLabels = map[string]inferencev1alpha1.LabelValue{"app.kubernetes.io/instance": "x"}
		},
			[]string{"spec.podLabels", "podLabels must not set app.kubernetes.io/name, app.kubernetes.io/instance"}},
		{"pod label in the operator's prefix", func(s *spec) { s.PodLabels = map[string]inferencev1alpha1.LabelValue{"inference.rkllm.io/model": "x"} },
			[]string{"podLabels must not set"}},
		{"pod label value too long", func(s *spec) {
			s.PodLabels = map[string]inferencev1alpha1.LabelValue{"team": inferencev1alpha1.LabelValue(strings.Repeat("a", 64))}
		},
			[]string{"spec.podLabels.team", "may not be more than 63"}},
		{"pod label value with a space", func(s *spec) { s.PodLabels = map[string]inferencev1alpha1.LabelValue{"team": "edge team"} },
			[]string{"spec.podLabels.team", "should match"}},
		{"pod annotation in the operator's prefix", func(s *spec) {
			s.PodAnnotations = map[string]string{"inference.rkllm.io/rollout-hash": "0"}
		}, []string{"spec.podAnnotations", "podAnnotations must not use the inference.rkllm.io/ prefix"}},
		{"args moving the listener", func(s *spec) { s.Args = []string{"--listen=:9999"} },
			[]string{"spec.args", "args must not set --config, --listen"}},
		{"args with a second config", func(s *spec) { s.Args = []string{"--max-queue=2", "-config", "/tmp/x.json"} },
			[]string{"args must not set --config"}},
		{"args replacing the model", func(s *spec) { s.Args = []string{"--model", "/etc/passwd"} },
			[]string{"args must not set"}},
		{"args moving the probes", func(s *spec) { s.Args = []string{"--probe-listen="} },
			[]string{"args must not set --config, --listen, --probe-listen"}},
		{"duplicate env names", func(s *spec) { s.Env = []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "A", Value: "2"}} },
			[]string{"spec.env[1]", "Duplicate value"}},
		{"env hiding the device plugin's", func(s *spec) { s.Env = []corev1.EnvVar{{Name: "RKNPU_DEVICE_NODES", Value: "/dev/mem"}} },
			[]string{"spec.env", "env must not set RKNPU_ variables"}},
		{"envFrom prefix of the device plugin's", func(s *spec) {
			s.EnvFrom = []corev1.EnvFromSource{{Prefix: "RKNPU_X", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "c"}}}}
		}, []string{"envFrom must not use a prefix starting with RKNPU_"}},
		{"runtime class with capitals", func(s *spec) { s.RuntimeClassName = ptr.To("Kata") },
			[]string{"runtimeClassName must be a RuntimeClass name"}},
		{"priority class with a slash", func(s *spec) { s.PriorityClassName = "a/b" },
			[]string{"priorityClassName must be a PriorityClass name"}},
		{"ExternalName Service", func(s *spec) { s.Service = &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeExternalName} },
			[]string{"spec.service.type", `Unsupported value: "ExternalName"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &inferencev1alpha1.RKLLMModel{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad-hatch"},
				Spec:       inferencev1alpha1.RKLLMModelSpec{Model: inferencev1alpha1.ModelSource{URL: sampleURL}},
			}
			tc.mutate(&m.Spec)
			err := k8sClient.Create(context.Background(), m, client.DryRunAll)
			if err == nil {
				t.Fatal("the API server accepted the spec")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}

	good := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "every-hatch"},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:            inferencev1alpha1.ModelSource{URL: sampleURL},
			Env:              []corev1.EnvVar{{Name: "HTTPS_PROXY", Value: "http://proxy:3128"}, {Name: "NO_PROXY", Value: ".svc"}},
			EnvFrom:          []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}}}},
			Args:             []string{"--max-queue=64", "--served-model-name=qwen", "--log-level=debug"},
			PodLabels:        map[string]inferencev1alpha1.LabelValue{"team": "edge", "example.org/tier": "gold", "empty": ""},
			PodAnnotations:   map[string]string{"example.org/inference.rkllm.io": "fine"},
			RuntimeClassName: ptr.To("kata.npu"),
			// The default of the chart's device plugin, which model pods may share.
			PriorityClassName: "system-node-critical",
			Service:           &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Annotations: map[string]string{"a": "b"}},
		},
	}
	if err := k8sClient.Create(context.Background(), good, client.DryRunAll); err != nil {
		t.Fatalf("a valid spec was rejected: %v", err)
	}
}

// The operator owns only the Service and pod fields it applies (server-side apply):
// removing a hatch from the spec removes it from the objects, what other controllers
// add stays, and switching the Service back from NodePort leaves no node ports behind.
func TestEscapeHatchesReconciled(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	ctx := context.Background()
	m := createModel(t, ns, "hatch", func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Env = []corev1.EnvVar{{Name: "HTTPS_PROXY", Value: "http://proxy:3128"}}
		m.Spec.EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "proxy-settings"}}}}
		m.Spec.PriorityClassName = "edge-high"
		m.Spec.Args = []string{"--max-queue=64"}
		m.Spec.PodLabels = map[string]inferencev1alpha1.LabelValue{"team": "edge"}
		m.Spec.PodAnnotations = map[string]string{"example.org/note": "user"}
		m.Spec.RuntimeClassName = ptr.To("kata")
		m.Spec.Service = &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
			Annotations: map[string]string{"example.org/lb": "user"}}
	})
	d := &appsv1.Deployment{}
	getChild(t, ns, "hatch", d, "the Deployment with the hatches", func() error {
		pod := d.Spec.Template.Spec
		c := pod.Containers[0]
		if len(c.Env) != 1 || c.Env[0].Name != "HTTPS_PROXY" || c.Args[len(c.Args)-1] != "--max-queue=64" {
			return fmt.Errorf("server env %v args %v", c.Env, c.Args)
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "proxy-settings" {
			return fmt.Errorf("server envFrom %v", c.EnvFrom)
		}
		if pod.PriorityClassName != "edge-high" {
			return fmt.Errorf("priority class %q", pod.PriorityClassName)
		}
		if d.Spec.Template.Labels["team"] != "edge" || d.Spec.Template.Annotations["example.org/note"] != "user" {
			return fmt.Errorf("pod metadata %v %v", d.Spec.Template.Labels, d.Spec.Template.Annotations)
		}
		if pod.RuntimeClassName == nil || *pod.RuntimeClassName != "kata" {
			return fmt.Errorf("runtime class %v", pod.RuntimeClassName)
		}
		return nil
	})
	svc := &corev1.Service{}
	getChild(t, ns, "hatch", svc, "the NodePort Service", func() error {
		if svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Ports[0].NodePort == 0 || svc.Annotations["example.org/lb"] != "user" {
			return fmt.Errorf("service type %s node port %d annotations %v", svc.Spec.Type, svc.Spec.Ports[0].NodePort, svc.Annotations)
		}
		return nil
	})

	// Another controller (a load balancer's, say) annotates the Service under its own
	// field manager.
	other := corev1ac.Service("hatch", ns).WithAnnotations(map[string]string{"lb.example.org/id": "42"})
	if err := k8sClient.Apply(ctx, other, client.FieldOwner("lb-controller")); err != nil {
		t.Fatal(err)
	}

	// The user drops every hatch.
	if err := k8sClient.Get(ctx, key(ns, "hatch"), m); err != nil {
		t.Fatal(err)
	}
	m.Spec.Env, m.Spec.EnvFrom, m.Spec.Args, m.Spec.PodLabels, m.Spec.PodAnnotations = nil, nil, nil, nil, nil
	m.Spec.RuntimeClassName, m.Spec.PriorityClassName = nil, ""
	m.Spec.Service = nil
	if err := k8sClient.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	getChild(t, ns, "hatch", d, "the Deployment without the hatches", func() error {
		pod := d.Spec.Template.Spec
		c := pod.Containers[0]
		if len(c.Env) != 0 || len(c.EnvFrom) != 0 || len(c.Args) != 3 || pod.RuntimeClassName != nil || pod.PriorityClassName != "" {
			return fmt.Errorf("server env %v envFrom %v args %v runtime class %v priority class %q",
				c.Env, c.EnvFrom, c.Args, pod.RuntimeClassName, pod.PriorityClassName)
		}
		if _, ok := d.Spec.Template.Labels["team"]; ok {
			return fmt.Errorf("pod labels %v", d.Spec.Template.Labels)
		}
		if _, ok := d.Spec.Template.Annotations["example.org/note"]; ok {
			return fmt.Errorf("pod annotations %v", d.Spec.Template.Annotations)
		}
		return nil
	})
	getChild(t, ns, "hatch", svc, "a ClusterIP Service without the user's annotation", func() error {
		if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].NodePort != 0 {
			return fmt.Errorf("service type %s node port %d", svc.Spec.Type, svc.Spec.Ports[0].NodePort)
		}
		if _, ok := svc.Annotations["example.org/lb"]; ok {
			return fmt.Errorf("the user's annotation is still there: %v", svc.Annotations)
		}
		return nil
	})
	if svc.Annotations["lb.example.org/id"] != "42" {
		t.Errorf("the operator removed another controller's annotation: %v", svc.Annotations)
	}
}
