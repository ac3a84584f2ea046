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
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// The spec's defaults are written twice: as CRD markers (so the API server fills them in
// and `kubectl get -o yaml` shows them) and as the getters in api/v1alpha1/defaults.go
// (for objects that never went through the API server). This test keeps the two one
// source of truth: the operator must build the same ConfigMap, Deployment and Service
// from a spec as the user wrote it and as the API server stores it, defaulted by the
// generated CRD's own schema. Sparse specs with every defaulted parent present but empty
// reach every default the CRD declares.
func TestCRDDefaultsEqualTheOperatorsDefaults(t *testing.T) {
	schema := crdSchema(t)
	for name, m := range sparseModels() {
		t.Run(name, func(t *testing.T) {
			defaulted := applyCRDDefaults(t, m, schema)
			if d := builtDifference(t, m, defaulted); d != "" {
				t.Errorf("the CRD's defaults and the operator's disagree: %s differs between the spec as written and as defaulted by the CRD", d)
			}
		})
	}

	// The sparse specs reach every default the CRD declares outside lists (those inside
	// are Kubernetes' own types'), so a new default under a new parent is compared too.
	reached := map[string]bool{}
	for _, m := range sparseModels() {
		raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(applyCRDDefaults(t, m, schema))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range defaultPaths(schema, nil) {
			if _, found, _ := unstructured.NestedFieldNoCopy(raw, p...); found {
				reached[strings.Join(p, ".")] = true
			}
		}
	}
	for _, p := range defaultPaths(schema, nil) {
		if !reached[strings.Join(p, ".")] {
			t.Errorf("no sparse model reaches the CRD's default at %s: add its parent to sparseModels", strings.Join(p, "."))
		}
	}

	// The check has teeth: a CRD default that differs from the getter's is reported.
	stale := crdSchema(t)
	port := stale.Properties["spec"].Properties["server"].Properties["port"]
	port.Default.Object = int64(9090)
	stale.Properties["spec"].Properties["server"].Properties["port"] = port
	m := sparseModels()["every defaulted parent empty"]
	if d := builtDifference(t, m, applyCRDDefaults(t, m, stale)); d == "" {
		t.Error("a CRD default of port 9090 against the getter's 8080 was not reported")
	}
}

// spec.scaling is read by the gateway, not built into anything here: its CRD defaults
// must equal what the getters return for an empty scaling.
func TestScalingDefaultsEqualTheGetters(t *testing.T) {
	empty := unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Scaling = &inferencev1alpha1.ScalingSpec{} })
	got := applyCRDDefaults(t, empty, crdSchema(t)).Spec.Scaling
	want := empty.Spec.Scaling
	if got.MinReplicas == nil || *got.MinReplicas != want.GetMinReplicas() || got.MaxReplicas == nil || *got.MaxReplicas != want.GetMaxReplicas() ||
		got.Priority == nil || *got.Priority != want.GetPriority() || got.ScaleDownDelay == nil || got.ScaleDownDelay.Duration != want.GetScaleDownDelay() {
		t.Errorf("the CRD defaults spec.scaling to %+v; the getters say min %d max %d priority %d scaleDownDelay %s",
			got, want.GetMinReplicas(), want.GetMaxReplicas(), want.GetPriority(), want.GetScaleDownDelay())
	}
}

// sparseModels are specs that leave every defaulted field unset.
func sparseModels() map[string]*inferencev1alpha1.RKLLMModel {
	return map[string]*inferencev1alpha1.RKLLMModel{
		"only the model": unitModel(nil),
		"every defaulted parent empty": unitModel(func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Model.Cache = &inferencev1alpha1.ModelCache{HostPath: &inferencev1alpha1.HostPathCache{}}
			m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{}
			m.Spec.NPU = &inferencev1alpha1.NPUSpec{}
			m.Spec.Server = &inferencev1alpha1.ServerSpec{APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "key"}}
			m.Spec.Security = &inferencev1alpha1.SecuritySpec{}
			m.Spec.Service = &inferencev1alpha1.ServiceSpec{Annotations: map[string]string{"a": "b"}}
			// The gateway's: TestScalingDefaultsEqualTheGetters compares them.
			m.Spec.Scaling = &inferencev1alpha1.ScalingSpec{}
		}),
	}
}

// defaultPaths lists the fields under s that have a default, outside lists and maps.
func defaultPaths(s *structuralschema.Structural, at []string) [][]string {
	var out [][]string
	if s.Default.Object != nil {
		out = append(out, at)
	}
	for name, prop := range s.Properties {
		out = append(out, defaultPaths(&prop, append(append([]string{}, at...), name))...)
	}
	return out
}

// crdSchema is the structural schema of the generated CRD's served version.
func crdSchema(t *testing.T) *structuralschema.Structural {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "config", "crd", "bases", "inference.rkllm.io_rkllmmodels.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(data, crd); err != nil {
		t.Fatal(err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != inferencev1alpha1.GroupVersion.Version {
			continue
		}
		internal := &apiextensions.JSONSchemaProps{}
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, internal, nil); err != nil {
			t.Fatal(err)
		}
		s, err := structuralschema.NewStructural(internal)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Fatalf("the CRD has no version %s", inferencev1alpha1.GroupVersion.Version)
	return nil
}

// applyCRDDefaults defaults a copy of m the way the API server does on a write.
func applyCRDDefaults(t *testing.T, m *inferencev1alpha1.RKLLMModel, s *structuralschema.Structural) *inferencev1alpha1.RKLLMModel {
	t.Helper()
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	defaulting.Default(raw, s)
	out := &inferencev1alpha1.RKLLMModel{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, out); err != nil {
		t.Fatal(err)
	}
	if reflect.DeepEqual(out.Spec, m.Spec) && m.Spec.Server != nil {
		t.Fatal("the CRD defaulted nothing in a spec with empty defaulted parents: is the schema read right?")
	}
	return out
}

// builtDifference names the first object the operator builds differently from a and b,
// or "" when they are the same.
func builtDifference(t *testing.T, a, b *inferencev1alpha1.RKLLMModel) string {
	t.Helper()
	da, ca := build(t, a)
	db, cb := build(t, b)
	// The revision record hashes the spec as given (defaulted or not, by design); what it
	// records besides is compared below, in server.json and the pod template.
	delete(da.Annotations, AnnotationRevision)
	delete(db.Annotations, AnnotationRevision)
	if !reflect.DeepEqual(ca, cb) {
		return "server.json"
	}
	if !reflect.DeepEqual(da, db) {
		return "the Deployment"
	}
	sa, sb := &corev1.Service{}, &corev1.Service{}
	if err := convert(desiredService(a), sa); err != nil {
		t.Fatal(err)
	}
	if err := convert(desiredService(b), sb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sa, sb) {
		return "the Service"
	}
	return ""
}
