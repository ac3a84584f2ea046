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
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/server/config"
)

// The keys the operator leaves out of the rollout are the ones the server takes while
// running (docs/server.md, "Changes while running").
func TestRetunableKeysMatchTheServer(t *testing.T) {
	if got, want := slices.Sorted(slices.Values(retunableKeys)), slices.Sorted(slices.Values(config.RetunableFlags())); !reflect.DeepEqual(got, want) {
		t.Errorf("operator's retunable keys %v, server's %v", got, want)
	}
}

func TestSpecHash(t *testing.T) {
	h := func(mutate func(*inferencev1alpha1.RKLLMModel)) string {
		s, err := specHash(unitModel(mutate))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := h(nil)
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"replicas": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptr.To[int32](3) },
		"suspend":  func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Suspend = true },
		"sampling on ABI 1.3": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Parameters = &inferencev1alpha1.Parameters{Temperature: ptr.To("0.1"), MaxNewTokens: ptr.To[int32](9)}
		},
		"metadata": func(m *inferencev1alpha1.RKLLMModel) { m.Generation = 7; m.Labels = map[string]string{"a": "b"} },
	} {
		if h(mutate) != base {
			t.Errorf("%s changes the spec hash", name)
		}
	}
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"the image": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{Image: "x:1"} },
		"an init parameter": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Parameters = &inferencev1alpha1.Parameters{NKeep: ptr.To[int32](3)}
		},
		"resources": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.NPU = &inferencev1alpha1.NPUSpec{Units: ptr.To[int32](2)}
		},
		"the security context": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Security = &inferencev1alpha1.SecuritySpec{RunAsUser: ptr.To[int64](7)}
		},
	} {
		if h(mutate) == base {
			t.Errorf("%s does not change the spec hash", name)
		}
	}
	abi12 := func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.2"} }
	if h(abi12) == h(func(m *inferencev1alpha1.RKLLMModel) {
		abi12(m)
		m.Spec.Parameters = &inferencev1alpha1.Parameters{Temperature: ptr.To("0.1")}
	}) {
		t.Error("on ABI 1.2 (sampling only at init) a temperature change does not change the spec hash")
	}
}

func TestRetuneConfig(t *testing.T) {
	recorded := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](1024), TopK: ptr.To[int32](5), Temperature: ptr.To("0.3")}
	})
	current := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](4096), Temperature: ptr.To("0.9"), TopP: ptr.To("0.5")}
	})
	old, _ := serverConfig(recorded)
	fresh, _ := serverConfig(current)
	got, err := retuneConfig(string(old), fresh)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(got, &c); err != nil {
		t.Fatal(err)
	}
	if c["max-context-len"] != 1024.0 || c["temperature"] != "0.9" || c["top-p"] != "0.5" || c["top-k"] != nil {
		t.Errorf("retuned config %s: want the recorded max-context-len with the current sampling", got)
	}
	// Nothing to retune: the bytes stay the same (no ConfigMap update).
	if same, _ := retuneConfig(string(old), old); string(same) != string(old) {
		t.Errorf("a retune without changes rewrote the config:\n%s\n%s", old, same)
	}
}

// TestKeptRevision: a Deployment keeps its recorded pod template (an older default
// image, an older pod layout) while the model stands for it; a spec change builds a new
// one with the current default image.
func TestKeptRevision(t *testing.T) {
	m := unitModel(nil)
	cfg, _ := serverConfig(m)
	first, err := desiredDeployment(m, Options{DefaultImage: "old:1"}, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	live := &appsv1.Deployment{}
	if err := convert(first, live); err != nil {
		t.Fatal(err)
	}
	rev, ok := parseRevision(live.Annotations[AnnotationRevision])
	if !ok || rev.Generation != 1 || rev.Config != string(cfg) {
		t.Fatalf("recorded revision %+v", rev)
	}
	image := func(d *appsv1.Deployment) string { return d.Spec.Template.Spec.Containers[0].Image }
	upgraded := Options{DefaultImage: "new:2"}
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"the same generation, an upgraded CRD's new default": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Server = &inferencev1alpha1.ServerSpec{LogFormat: "json"}
		},
		"a scale": func(m *inferencev1alpha1.RKLLMModel) { m.Generation = 2; m.Spec.Replicas = ptr.To[int32](3) },
		"a temperature on ABI 1.3": func(m *inferencev1alpha1.RKLLMModel) {
			m.Generation = 2
			m.Spec.Parameters = &inferencev1alpha1.Parameters{Temperature: ptr.To("0.1")}
		},
		"nothing (steady reconcile)": func(*inferencev1alpha1.RKLLMModel) {},
	} {
		m := unitModel(mutate)
		if !rev.stillCurrent(m) {
			t.Errorf("%s: the revision is no longer current", name)
			continue
		}
		fresh, _ := serverConfig(m)
		c, _ := retuneConfig(rev.Config, fresh)
		ac, err := desiredDeployment(m, upgraded, c, rev)
		if err != nil {
			t.Fatal(err)
		}
		d := &appsv1.Deployment{}
		if err := convert(ac, d); err != nil {
			t.Fatal(err)
		}
		if image(d) != "old:1" || !reflect.DeepEqual(d.Spec.Template, live.Spec.Template) {
			t.Errorf("%s: the pod template changed (image %s)", name, image(d))
		}
	}
	changed := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Generation = 2
		m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](2048)}
	})
	if rev.stillCurrent(changed) {
		t.Error("a new max-context-len keeps the old revision")
	}
	if _, ok := parseRevision(`{"config":"x"}`); ok {
		t.Error("a revision without a template was accepted")
	}
}

func TestModelFetches(t *testing.T) {
	pod := func(name, hash, msg string, exit int32) corev1.Pod {
		return corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{AnnotationRolloutHash: hash}},
			Spec:       corev1.PodSpec{NodeName: "node-" + name},
			Status: corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{{Name: "fetch-model", State: corev1.ContainerState{
				Terminated: &corev1.ContainerStateTerminated{ExitCode: exit, Message: msg}}}}},
		}
	}
	pods := []corev1.Pod{
		pod("b", "h1", `{"result":"CacheHit","nodeCache":true,"file":"/var/cache/rkllm/x","bytes":10}`, 0),
		pod("a", "h1", `{"result":"Downloaded","nodeCache":true,"bytes":10}`, 0),
		pod("c", "h1", `{"result":"Downloaded","nodeCache":false,"bytes":10}`, 0),
		pod("old", "h0", `{"result":"Downloaded","nodeCache":true}`, 0),
		pod("failed", "h1", "rkllm-server fetch: GET ...: 404", 1),
	}
	got := modelFetches(unitModel(nil), pods, "h1")
	want := []inferencev1alpha1.ModelFetch{
		{Pod: "a", Node: "node-a", Result: inferencev1alpha1.FetchDownloaded, Cache: inferencev1alpha1.FetchCacheNode, Bytes: 10},
		{Pod: "b", Node: "node-b", Result: inferencev1alpha1.FetchCacheHit, Cache: inferencev1alpha1.FetchCacheNode, Bytes: 10},
		{Pod: "c", Node: "node-c", Result: inferencev1alpha1.FetchDownloaded, Cache: inferencev1alpha1.FetchCachePod, Bytes: 10},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("modelFetches = %+v, want %+v", got, want)
	}
}
