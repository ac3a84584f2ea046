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
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// The CRD's OpenAPI and CEL rules reject bad specs in the API server, with messages
// that say what to fix. These run against the real kube-apiserver with the generated CRD.
func TestInvalidSpecsAreRejected(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	type spec = inferencev1alpha1.RKLLMModelSpec
	cases := []struct {
		name   string
		model  string // metadata.name; "bad-spec" when empty
		mutate func(s *spec)
		want   []string // every substring must be in the error
	}{
		{"no source", "", func(s *spec) { s.Model = inferencev1alpha1.ModelSource{} },
			[]string{"model needs exactly one source: set one of url, hostPath or pvc"}},
		{"two sources", "", func(s *spec) { s.Model.HostPath = "/models/a.rkllm" },
			[]string{"model needs exactly one source"}},
		{"ftp url", "", func(s *spec) { s.Model.URL = "ftp://example.org/a.rkllm" },
			[]string{"spec.model.url", "url must be an http:// or https:// address"}},
		{"url without host", "", func(s *spec) { s.Model.URL = "https:///a.rkllm" },
			[]string{"url must be an http:// or https:// address with a host"}},
		{"sha256 without url", "", func(s *spec) {
			s.Model = inferencev1alpha1.ModelSource{HostPath: "/models/a.rkllm", SHA256: strings.Repeat("a", 64)}
		}, []string{"model.sha256 is checked after a download, so it needs model.url"}},
		{"short sha256", "", func(s *spec) { s.Model.SHA256 = "abc" },
			[]string{"sha256 must be 64 hexadecimal digits"}},
		{"relative hostPath", "", func(s *spec) { s.Model = inferencev1alpha1.ModelSource{HostPath: "models/a.rkllm"} },
			[]string{"hostPath must be an absolute path to a file"}},
		{"pvc path escapes", "", func(s *spec) {
			s.Model = inferencev1alpha1.ModelSource{PVC: &inferencev1alpha1.PVCSource{ClaimName: "m", Path: "../etc/passwd"}}
		}, []string{"pvc.path must be a relative path to a file inside the volume"}},
		{"both caches", "", func(s *spec) {
			s.Model.Cache = &inferencev1alpha1.ModelCache{EmptyDir: &inferencev1alpha1.EmptyDirCache{}, HostPath: &inferencev1alpha1.HostPathCache{}}
		}, []string{"cache takes one of node, emptyDir or hostPath"}},
		{"node and emptyDir caches", "", func(s *spec) {
			s.Model.Cache = &inferencev1alpha1.ModelCache{Node: &inferencev1alpha1.NodeCache{}, EmptyDir: &inferencev1alpha1.EmptyDirCache{}}
		}, []string{"cache takes one of node, emptyDir or hostPath"}},
		{"topP above 1", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{TopP: ptr.To("1.5")} },
			[]string{"spec.parameters.topP", `topP must be a decimal from 0 to 1 written as a string, such as "0.9"`}},
		{"topP not a number", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{TopP: ptr.To("high")} },
			[]string{"topP must be a decimal from 0 to 1"}},
		{"negative temperature", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{Temperature: ptr.To("-0.5")} },
			[]string{"temperature must be a decimal from 0 to 10"}},
		{"frequencyPenalty too big", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{FrequencyPenalty: ptr.To("2.5")} },
			[]string{"frequencyPenalty must be a decimal from -2 to 2"}},
		{"nBatch 0", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{NBatch: ptr.To[int32](0)} },
			[]string{"spec.parameters.nBatch", "greater than or equal to 1"}},
		{"nBatch 101", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{NBatch: ptr.To[int32](101)} },
			[]string{"spec.parameters.nBatch", "less than or equal to 100"}},
		{"mirostat 3", "", func(s *spec) { s.Parameters = &inferencev1alpha1.Parameters{Mirostat: ptr.To[int32](3)} },
			[]string{"spec.parameters.mirostat", "less than or equal to 2"}},
		{"nKeep past the context", "", func(s *spec) {
			s.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](4096), NKeep: ptr.To[int32](5000)}
		}, []string{"spec.parameters", "nKeep must not exceed maxContextLen"}},
		{"zero cpu mask", "", func(s *spec) {
			s.Parameters = &inferencev1alpha1.Parameters{EnabledCPUs: &inferencev1alpha1.EnabledCPUs{Mask: ptr.To("0x00")}}
		}, []string{`mask must be a non-zero hexadecimal number of up to 8 digits, such as "0xF0"`}},
		{"unknown ABI", "", func(s *spec) { s.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.4"} },
			[]string{"spec.runtime.abi", `Unsupported value: "1.4"`, `"1.2"`, `"1.3"`}},
		{"two libraries", "", func(s *spec) {
			s.Runtime = &inferencev1alpha1.RuntimeSpec{LibraryPath: "/usr/lib/librkllmrt.so", HostLibraryPath: "/usr/lib/librkllmrt.so"}
		}, []string{"runtime takes libraryPath or hostLibraryPath, not both"}},
		{"duplicate LoRA names", "", func(s *spec) {
			s.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "a", HostPath: "/l/a"}, {Name: "a", HostPath: "/l/b"}}
		}, []string{"spec.loraAdapters[1]", "Duplicate value"}},
		{"LoRA without source", "", func(s *spec) { s.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "a"}} },
			[]string{"a LoRA adapter needs exactly one source: set url or hostPath"}},
		{"LoRA name with capitals", "", func(s *spec) { s.LoraAdapters = []inferencev1alpha1.LoraAdapter{{Name: "Chat", HostPath: "/l/a"}} },
			[]string{"a LoRA adapter name must be lower-case letters, digits and '-'"}},
		{"promptCache with both sources", "", func(s *spec) {
			s.PromptCache = &inferencev1alpha1.PromptCache{URL: "https://example.org/p.cache", HostPath: "/p.cache"}
		}, []string{"promptCache needs exactly one source: set url or hostPath"}},
		{"negative replicas", "", func(s *spec) { s.Replicas = ptr.To[int32](-1) },
			[]string{"spec.replicas", "greater than or equal to 0"}},
		{"unknown platform", "", func(s *spec) { s.Model.TargetPlatform = ptr.To[inferencev1alpha1.Platform]("rk3568") },
			[]string{"spec.model.targetPlatform", `supported values: "rk3588", "rk3576", "rk3562", "rv1126b"`}},
		{"unknown colocation", "", func(s *spec) { s.NPU = &inferencev1alpha1.NPUSpec{Colocation: "Sometimes"} },
			[]string{"spec.npu.colocation", `supported values: "Forbidden", "Allowed"`}},
		{"zero NPU units", "", func(s *spec) { s.NPU = &inferencev1alpha1.NPUSpec{Units: ptr.To[int32](0)} },
			[]string{"spec.npu.units", "greater than or equal to 1"}},
		{"NPU in resources", "", func(s *spec) {
			s.Resources = &inferencev1alpha1.Resources{Limits: corev1.ResourceList{"rockchip.com/npu": resource.MustParse("1")}}
		}, []string{"request the NPU with spec.npu.units, not in spec.resources.limits"}},
		{"long shutdownTimeout", "", func(s *spec) {
			s.Server = &inferencev1alpha1.ServerSpec{ShutdownTimeout: &metav1.Duration{Duration: 2 * time.Hour}}
		}, []string{`shutdownTimeout must be a duration from 1s to 1h, such as "30s"`}},
		{"short startupTimeout", "", func(s *spec) {
			s.Server = &inferencev1alpha1.ServerSpec{StartupTimeout: &metav1.Duration{Duration: time.Second}}
		}, []string{"startupTimeout must be a duration from 10s to 24h"}},
		{"port out of range", "", func(s *spec) { s.Server = &inferencev1alpha1.ServerSpec{Port: ptr.To[int32](70000)} },
			[]string{"spec.server.port", "less than or equal to 65535"}},
		{"unknown deviceTree", "", func(s *spec) {
			s.Security = &inferencev1alpha1.SecuritySpec{DeviceTree: "Magic"}
		}, []string{"spec.security.deviceTree", `Unsupported value: "Magic"`}},
		{"name starting with a digit", "1qwen", nil,
			[]string{"an RKLLMModel name must be at most 63 lower-case letters, digits and '-', starting with a letter"}},
		{"name too long for a Service", strings.Repeat("q", 64), nil,
			[]string{"an RKLLMModel name must be at most 63"}},
		{"unknown chat template preset", "", func(s *spec) { s.ChatTemplate = &inferencev1alpha1.ChatTemplate{Preset: ptr.To("vicuna")} },
			[]string{"spec.chatTemplate.preset", `Unsupported value: "vicuna"`, `"qwen2.5"`}},
		{"served name with a space", "", func(s *spec) { s.ServedModelName = "my model" },
			[]string{"spec.servedModelName", "servedModelName must start with a letter or digit"}},
		{"scaling min above max", "", func(s *spec) {
			s.Replicas = ptr.To[int32](0)
			s.Scaling = &inferencev1alpha1.ScalingSpec{MinReplicas: ptr.To[int32](3), MaxReplicas: ptr.To[int32](2)}
		}, []string{"scaling.minReplicas must not be above scaling.maxReplicas"}},
		{"replicas above maxReplicas", "", func(s *spec) {
			s.Replicas = ptr.To[int32](3)
			s.Scaling = &inferencev1alpha1.ScalingSpec{MaxReplicas: ptr.To[int32](2)}
		}, []string{"spec.replicas must not be above spec.scaling.maxReplicas"}},
		{"replicas above the default maxReplicas", "", func(s *spec) {
			s.Replicas = ptr.To[int32](2)
			s.Scaling = &inferencev1alpha1.ScalingSpec{}
		}, []string{"spec.replicas must not be above spec.scaling.maxReplicas"}},
		{"zero maxReplicas", "", func(s *spec) { s.Scaling = &inferencev1alpha1.ScalingSpec{MaxReplicas: ptr.To[int32](0)} },
			[]string{"spec.scaling.maxReplicas", "greater than or equal to 1"}},
		{"short scaleDownDelay", "", func(s *spec) {
			s.Scaling = &inferencev1alpha1.ScalingSpec{ScaleDownDelay: &metav1.Duration{Duration: time.Second}}
		}, []string{`scaleDownDelay must be a duration from 10s to 168h, such as "15m"`}},
		{"priority out of range", "", func(s *spec) { s.Scaling = &inferencev1alpha1.ScalingSpec{Priority: ptr.To[int32](5000)} },
			[]string{"spec.scaling.priority", "less than or equal to 1000"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.model
			if name == "" {
				name = "bad-spec"
			}
			m := &inferencev1alpha1.RKLLMModel{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       inferencev1alpha1.RKLLMModelSpec{Model: inferencev1alpha1.ModelSource{URL: sampleURL}},
			}
			if tc.mutate != nil {
				tc.mutate(&m.Spec)
			}
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

	// The rules accept what they should: a spec using every source kind and field.
	good := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "everything"},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model: inferencev1alpha1.ModelSource{URL: sampleURL, SHA256: strings.Repeat("0F", 32),
				Cache:          &inferencev1alpha1.ModelCache{HostPath: &inferencev1alpha1.HostPathCache{}},
				TargetPlatform: ptr.To(inferencev1alpha1.PlatformRV1126B)},
			Runtime: &inferencev1alpha1.RuntimeSpec{ABI: "1.2", HostLibraryPath: "/usr/lib/librkllmrt.so"},
			Parameters: &inferencev1alpha1.Parameters{
				MaxContextLen: ptr.To[int32](4096), MaxNewTokens: ptr.To[int32](-1), TopK: ptr.To[int32](40), TopP: ptr.To("0.95"),
				Temperature: ptr.To("0.8"), RepeatPenalty: ptr.To("1.1"), FrequencyPenalty: ptr.To("-1.5"), PresencePenalty: ptr.To("0"),
				Mirostat: ptr.To[int32](2), MirostatTau: ptr.To("5.0"), MirostatEta: ptr.To("0.1"), NKeep: ptr.To[int32](-1),
				SkipSpecialToken: ptr.To(true), EmbedFlash: ptr.To(false), NBatch: ptr.To[int32](100), BaseDomainID: ptr.To[int32](1),
				EnabledCPUs: &inferencev1alpha1.EnabledCPUs{Count: ptr.To[int32](4), Mask: ptr.To("0xF0")},
			},
			ChatTemplate: &inferencev1alpha1.ChatTemplate{System: ptr.To("You are helpful."), Prefix: ptr.To("<|user|>"), Postfix: ptr.To("<|assistant|>"), Preset: ptr.To("qwen3-no-thinking")},
			LoraAdapters: []inferencev1alpha1.LoraAdapter{
				{Name: "chat", URL: "http://lora.example.org/chat.rkllm", Scale: ptr.To("0.75")},
				{Name: "code-2", HostPath: "/opt/lora/code.rkllm"},
			},
			PromptCache: &inferencev1alpha1.PromptCache{HostPath: "/opt/cache/prompt.bin"},
			Replicas:    ptr.To[int32](2),
			NPU:         &inferencev1alpha1.NPUSpec{Units: ptr.To[int32](3), Colocation: inferencev1alpha1.ColocationAllowed},
			Server: &inferencev1alpha1.ServerSpec{Port: ptr.To[int32](9000), MaxQueue: ptr.To[int32](8),
				RequestTimeout: &metav1.Duration{Duration: 5 * time.Minute}, LogFormat: "text",
				APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api"}},
			Security:        &inferencev1alpha1.SecuritySpec{Privileged: ptr.To(true), SupplementalGroups: []int64{44, 107}},
			ServedModelName: "qwen2.5:1.5b-instruct",
			Scaling: &inferencev1alpha1.ScalingSpec{MinReplicas: ptr.To[int32](0), MaxReplicas: ptr.To[int32](2),
				ScaleDownDelay: &metav1.Duration{Duration: 30 * time.Minute}, Priority: ptr.To[int32](-10)},
		},
	}
	if err := k8sClient.Create(context.Background(), good, client.DryRunAll); err != nil {
		t.Fatalf("a valid spec was rejected: %v", err)
	}
}
