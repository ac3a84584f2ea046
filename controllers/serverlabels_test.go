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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// ServerLabels select the pods and the Service of every model, whatever its name and
// its own pod labels.
func TestServerLabelsSelectEveryServer(t *testing.T) {
	for _, m := range []*inferencev1alpha1.RKLLMModel{
		unitModel(nil),
		unitModel(func(m *inferencev1alpha1.RKLLMModel) {
			m.Name = "other"
			m.Spec.PodLabels = map[string]inferencev1alpha1.LabelValue{"team": "a"}
			m.Spec.Service = &inferencev1alpha1.ServiceSpec{Type: corev1.ServiceTypeNodePort}
			m.Spec.Replicas = ptr.To[int32](2)
		}),
	} {
		d, _ := build(t, m)
		svc := &corev1.Service{}
		if err := convert(desiredService(m), svc); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
			found = found || p.Name == ServerMetricsPort
		}
		if !found {
			t.Errorf("model %s: the server has no port named %s: %v", m.Name, ServerMetricsPort, d.Spec.Template.Spec.Containers[0].Ports)
		}
		for k, v := range ServerLabels() {
			if d.Spec.Template.Labels[k] != v || svc.Labels[k] != v {
				t.Errorf("model %s: label %s=%s missing from pods %v or Service %v", m.Name, k, v, d.Spec.Template.Labels, svc.Labels)
			}
		}
	}
}
