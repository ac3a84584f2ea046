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
	"reflect"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/nodelabels"
)

func TestPlatformFromFileName(t *testing.T) {
	for name, want := range map[string]inferencev1alpha1.Platform{
		"Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm":          "rk3588",
		"qwen2.5-0.5b-w8a8-rk3588s.rkllm":                  "rk3588",
		"DeepSeek-R1-Distill-Qwen-1.5B_W4A16_RK3576.rkllm": "rk3576",
		"tinyllama_rk3562.rkllm":                           "rk3562",
		"gemma-RV1126B.rkllm":                              "rv1126b",
		"model.rkllm":                                      "",
		"rk3588-and-rk3576.rkllm":                          "",       // two platforms: not a guess to make
		"rk3588_RK3588S.rkllm":                             "rk3588", // the same NPU twice
		"mark35880.rkllm":                                  "",       // inside a longer word
		"RV1126.rkllm":                                     "",       // the RV1126 without B is not served
	} {
		if got := platformFromFileName(name); got != want {
			t.Errorf("platformFromFileName(%q) = %q, want %q", name, got, want)
		}
	}
}

// The label the pods select on is the one the device plugin writes.
func TestSoCLabelIsThePluginsLabel(t *testing.T) {
	if inferencev1alpha1.LabelNPUSoC != nodelabels.SoC {
		t.Errorf("the operator selects %s, the plugin labels %s", inferencev1alpha1.LabelNPUSoC, nodelabels.SoC)
	}
}

// Which nodes a model's server pods may go to, decided by the scheduler's own node
// affinity code, and the anti-affinity that keeps two of them off one NPU.
func TestPlacement(t *testing.T) {
	nodes := map[string]map[string]string{
		"rk3588":     {inferencev1alpha1.LabelNPUSoC: "rk3588", "zone": "a"},
		"rk3576":     {inferencev1alpha1.LabelNPUSoC: "rk3576", "zone": "a"},
		"rk3588-b":   {inferencev1alpha1.LabelNPUSoC: "rk3588", "zone": "b"},
		"unlabelled": {"zone": "a"},
	}
	zoneA := &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}}}}}}
	theirAnti := corev1.PodAffinityTerm{TopologyKey: "zone", LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}
	cases := []struct {
		name      string
		model     func(*inferencev1alpha1.RKLLMModel)
		platform  inferencev1alpha1.Platform
		nodes     []string
		antiTerms int  // required pod anti-affinity terms
		ownAnti   bool // one of them keeps the model's pods apart per node
	}{
		{name: "platform from the file name", platform: "rk3588", nodes: []string{"rk3588", "rk3588-b", "unlabelled"}, antiTerms: 1, ownAnti: true},
		{name: "platform set", platform: "rk3576", nodes: []string{"rk3576", "unlabelled"}, antiTerms: 1, ownAnti: true,
			model: func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.Model.TargetPlatform = ptr.To(inferencev1alpha1.PlatformRK3576)
			}},
		{name: "no platform known", nodes: []string{"rk3588", "rk3576", "rk3588-b", "unlabelled"}, antiTerms: 1, ownAnti: true,
			model: func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.Model = inferencev1alpha1.ModelSource{HostPath: "/models/qwen.rkllm"}
			}},
		{name: "the user's node affinity still holds", platform: "rk3588", nodes: []string{"rk3588", "unlabelled"}, antiTerms: 1, ownAnti: true,
			model: func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Affinity = zoneA.DeepCopy() }},
		{name: "colocation allowed", platform: "rk3588", nodes: []string{"rk3588", "rk3588-b", "unlabelled"},
			model: func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.NPU = &inferencev1alpha1.NPUSpec{Colocation: inferencev1alpha1.ColocationAllowed}
			}},
		{name: "the user's anti-affinity is kept", platform: "rk3588", nodes: []string{"rk3588", "rk3588-b", "unlabelled"}, antiTerms: 2, ownAnti: true,
			model: func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
					RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{theirAnti}}}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := unitModel(tc.model)
			if got := targetPlatform(m); got != tc.platform {
				t.Errorf("target platform %q, want %q", got, tc.platform)
			}
			d, _ := build(t, m)
			pod := &corev1.Pod{Spec: d.Spec.Template.Spec}
			required := nodeaffinity.GetRequiredNodeAffinity(pod)
			var fit []string
			for name, labels := range nodes {
				ok, err := required.Match(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					fit = append(fit, name)
				}
			}
			sort.Strings(fit)
			want := append([]string(nil), tc.nodes...)
			sort.Strings(want)
			if !reflect.DeepEqual(fit, want) {
				t.Errorf("the pods fit %v, want %v", fit, want)
			}

			var anti []corev1.PodAffinityTerm
			if a := pod.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
				anti = a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
			}
			own := false
			for _, term := range anti {
				if term.TopologyKey == hostnameTopologyKey && reflect.DeepEqual(term.LabelSelector.MatchLabels, d.Spec.Selector.MatchLabels) {
					own = true
				}
			}
			if len(anti) != tc.antiTerms || own != tc.ownAnti {
				t.Errorf("pod anti-affinity %+v: want %d terms, the model's own per node: %v", anti, tc.antiTerms, tc.ownAnti)
			}
		})
	}
}
