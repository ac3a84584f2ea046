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
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// hostnameTopologyKey spreads pods over nodes: a node has one NPU.
const hostnameTopologyKey = "kubernetes.io/hostname"

// platformInName finds a platform in a model file name: rkllm-toolkit's conversion
// scripts and the published models end the name with the target, as in
// Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm. RK3588S models are RK3588 models.
var platformInName = regexp.MustCompile(`(?i)(?:^|[^a-z0-9])(rk3588s?|rk3576|rk3562|rv1126b)(?:[^a-z0-9]|$)`)

// targetPlatform is the SoC the model's file was converted for: spec.model.targetPlatform,
// or the only one its file name names; "" when neither says.
func targetPlatform(model *inferencev1alpha1.RKLLMModel) inferencev1alpha1.Platform {
	if p := model.Spec.Model.TargetPlatform; p != nil {
		return *p
	}
	return platformFromFileName(modelDisplayName(model))
}

// platformFromFileName returns the platform a file name names, or "" when it names none
// or several.
func platformFromFileName(name string) inferencev1alpha1.Platform {
	var found inferencev1alpha1.Platform
	// Matches may share their separator, so look from each match's end minus one.
	for rest := name; rest != ""; {
		loc := platformInName.FindStringSubmatchIndex(rest)
		if loc == nil {
			break
		}
		p := inferencev1alpha1.Platform(strings.TrimSuffix(strings.ToLower(rest[loc[2]:loc[3]]), "s"))
		if found != "" && found != p {
			return ""
		}
		found = p
		rest = rest[loc[3]:]
	}
	return found
}

// podAffinity is the server pods' affinity: the user's spec.affinity, plus a node
// affinity for the model's platform and, unless npu.colocation is Allowed, an
// anti-affinity that keeps two server pods of the model off one node's NPU.
func podAffinity(model *inferencev1alpha1.RKLLMModel) *corev1.Affinity {
	spec := &model.Spec
	aff := &corev1.Affinity{}
	if spec.Affinity != nil {
		aff = spec.Affinity.DeepCopy()
	}
	if p := targetPlatform(model); p != "" {
		if aff.NodeAffinity == nil {
			aff.NodeAffinity = &corev1.NodeAffinity{}
		}
		requireSoC(aff.NodeAffinity, string(p))
	}
	if spec.GetColocation() == inferencev1alpha1.ColocationForbidden {
		if aff.PodAntiAffinity == nil {
			aff.PodAntiAffinity = &corev1.PodAntiAffinity{}
		}
		aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution = append(
			aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution, corev1.PodAffinityTerm{
				LabelSelector: &metav1.LabelSelector{MatchLabels: selectorLabels(model)},
				TopologyKey:   hostnameTopologyKey,
			})
	}
	if aff.NodeAffinity == nil && aff.PodAffinity == nil && aff.PodAntiAffinity == nil {
		return nil
	}
	return aff
}

// requireSoC narrows the required node affinity to nodes whose SoC label names soc, or
// that carry no SoC label (clusters without node-feature-discovery keep scheduling; the
// device plugin does not advertise SoCs the runtime cannot serve). Terms are ORed, so
// each of the user's terms is split in two, each ANDed with one of the alternatives.
func requireSoC(na *corev1.NodeAffinity, soc string) {
	terms := []corev1.NodeSelectorTerm{{}}
	if na.RequiredDuringSchedulingIgnoredDuringExecution != nil && len(na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms) > 0 {
		terms = na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	}
	alternatives := []corev1.NodeSelectorRequirement{
		{Key: inferencev1alpha1.LabelNPUSoC, Operator: corev1.NodeSelectorOpIn, Values: []string{soc}},
		{Key: inferencev1alpha1.LabelNPUSoC, Operator: corev1.NodeSelectorOpDoesNotExist},
	}
	out := make([]corev1.NodeSelectorTerm, 0, 2*len(terms))
	for _, t := range terms {
		for _, alt := range alternatives {
			nt := *t.DeepCopy()
			nt.MatchExpressions = append(nt.MatchExpressions, alt)
			out = append(out, nt)
		}
	}
	na.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{NodeSelectorTerms: out}
}
