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
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/config"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// The contract between the operator and rkllm-server (docs/design.md): the server's own
// configuration parser accepts every server.json the operator writes and reads back the
// values the user put in the RKLLMModel.
func TestServerParsesTheOperatorsConfig(t *testing.T) {
	m := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.2", LibraryPath: "/usr/lib/librkllmrt.so"}
		m.Spec.Parameters = &inferencev1alpha1.Parameters{
			MaxContextLen: ptr.To[int32](4096), MaxNewTokens: ptr.To[int32](-1), TopK: ptr.To[int32](20), TopP: ptr.To("0.95"),
			Temperature: ptr.To("0.7"), RepeatPenalty: ptr.To("1.1"), FrequencyPenalty: ptr.To("-0.5"), PresencePenalty: ptr.To("0.25"),
			Mirostat: ptr.To[int32](2), MirostatTau: ptr.To("5.0"), MirostatEta: ptr.To("0.1"), NKeep: ptr.To[int32](-1),
			SkipSpecialToken: ptr.To(true), EmbedFlash: ptr.To(true), NBatch: ptr.To[int32](4), BaseDomainID: ptr.To[int32](2),
			EnabledCPUs: &inferencev1alpha1.EnabledCPUs{Count: ptr.To[int32](4), Mask: ptr.To("0xF0")},
		}
		m.Spec.ChatTemplate = &inferencev1alpha1.ChatTemplate{System: ptr.To("You are helpful."), Prefix: ptr.To("<u>"), Postfix: ptr.To("<a>"), Preset: ptr.To("llama3")}
		m.Spec.LoraAdapters = []inferencev1alpha1.LoraAdapter{
			{Name: "chat", URL: "https://example.org/chat.lora", Scale: ptr.To("0.5")},
			{Name: "code", HostPath: "/opt/lora/code.lora"},
		}
		m.Spec.PromptCache = &inferencev1alpha1.PromptCache{HostPath: "/opt/cache/p.bin"}
		m.Spec.ServedModelName = "llama:8b"
		m.Spec.Server = &inferencev1alpha1.ServerSpec{
			Port: ptr.To[int32](9090), MaxQueue: ptr.To[int32](4), RequestTimeout: &metav1.Duration{Duration: 3 * time.Minute},
			ShutdownTimeout: &metav1.Duration{Duration: 45 * time.Second}, LogFormat: "text",
			APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api"},
		}
	})
	o := parseWithServer(t, m)

	if o.Model != "/models/"+downloadFileName("model", sampleURL) || o.ModelDir != "/models" || o.RuntimeABI != "1.2" ||
		o.RuntimeLib != "/usr/lib/librkllmrt.so" || o.Listen != ":9090" || o.ProbeListen != ":8081" || o.Socket != "/run/rkllm/rkllm.sock" ||
		o.APIKeyFile != "/etc/rkllm/api-key/api-key" || o.MaxQueue != 4 || o.RequestTimeout != 3*time.Minute ||
		o.ShutdownTimeout != 45*time.Second || o.LogFormat != "text" || o.PromptCache != "/models/host/prompt-cache/p.bin" ||
		o.ServedModelName != "llama:8b" {
		t.Errorf("server options = %+v", o)
	}
	p := o.ModelParam(runtime.Param{})
	want := runtime.Param{
		ModelPath: o.Model, MaxContextLen: 4096, MaxNewTokens: -1, TopK: 20, NKeep: -1, TopP: 0.95, Temperature: 0.7,
		RepeatPenalty: 1.1, FrequencyPenalty: -0.5, PresencePenalty: 0.25, Mirostat: 2, MirostatTau: 5, MirostatEta: 0.1,
		SkipSpecialToken: true,
		Extend:           runtime.ExtendParam{BaseDomainID: 2, EmbedFlash: 1, EnabledCPUsNum: 4, EnabledCPUsMask: 0xF0, NBatch: 4},
	}
	if p != want {
		t.Errorf("init parameters the server reads:\n%+v\nwant\n%+v", p, want)
	}
	if sys, pre, post, ok := o.ChatTemplate(); !ok || sys != "You are helpful." || pre != "<u>" || post != "<a>" {
		t.Errorf("chat template %q %q %q %v", sys, pre, post, ok)
	}
	// The preset is the template of the OpenAI-compatible API.
	if tmpl, err := o.Template(); err != nil || tmpl.Name() != "llama3" {
		t.Errorf("OpenAI chat template %v, %v; want the llama3 preset", tmpl, err)
	}
	loras, err := o.LoraAdapters()
	if err != nil {
		t.Fatal(err)
	}
	wantLoras := []runtime.LoraAdapter{
		{Name: "chat", Path: "/models/" + downloadFileName("lora-chat", "https://example.org/chat.lora"), Scale: 0.5},
		{Name: "code", Path: "/models/host/lora-code/code.lora", Scale: 1},
	}
	if len(loras) != 2 || loras[0] != wantLoras[0] || loras[1] != wantLoras[1] {
		t.Errorf("LoRA adapters %+v, want %+v", loras, wantLoras)
	}
}

// The smallest model gives a configuration the server accepts with its own defaults.
func TestServerParsesTheMinimalConfig(t *testing.T) {
	o := parseWithServer(t, unitModel(nil))
	if o.RuntimeABI != "1.3" || o.RuntimeLib != "librkllmrt.so" || o.Listen != ":8080" || o.ProbeListen != ":8081" || o.LogFormat != "json" ||
		o.ShutdownTimeout != 30*time.Second || o.InitTimeout != 10*time.Minute || o.APIKeyFile != "" || o.ServedModelName != "qwen" {
		t.Errorf("server options = %+v", o)
	}
	if p := o.ModelParam(runtime.Param{TopK: 40}); p.TopK != 40 {
		t.Errorf("an unset parameter did not keep the runtime's default: %+v", p)
	}
}

// parseWithServer writes the model's server.json and parses it as `rkllm-server serve
// --config` does.
func parseWithServer(t *testing.T, m *inferencev1alpha1.RKLLMModel) *config.Serve {
	t.Helper()
	data, err := serverConfig(m)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	o := &config.Serve{}
	o.BindFlags(pflag.NewFlagSet("serve", pflag.ContinueOnError))
	if err := o.Parse([]string{"--config", path}); err != nil {
		t.Fatalf("rkllm-server refuses the operator's server.json: %v\n%s", err, data)
	}
	return o
}

// The pod's termination grace period covers the preStop pause and the longest the
// server takes to exit after SIGTERM as the server computes it from the operator's
// server.json (its shutdown timeout plus its own margin), with graceSlack to spare: the
// kubelet never SIGKILLs a server shutting down on time. The server writes why it
// failed to the container's termination message file.
func TestGracePeriodCoversTheServersShutdown(t *testing.T) {
	if serverExitMargin != config.ShutdownMargin {
		t.Errorf("the operator counts %s for the server's exit after its shutdown timeout; the server takes up to %s", serverExitMargin, config.ShutdownMargin)
	}
	for _, timeout := range []time.Duration{time.Second, 1500 * time.Millisecond, 2 * time.Second, 30 * time.Second, 59*time.Second + 900*time.Millisecond, time.Hour} {
		m := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Server = &inferencev1alpha1.ServerSpec{ShutdownTimeout: &metav1.Duration{Duration: timeout}}
		})
		o := parseWithServer(t, m)
		d, _ := build(t, m)
		pod := d.Spec.Template.Spec
		c := pod.Containers[0]
		preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
		if need := preStop + o.ExitBudget() + graceSlack; grace < need {
			t.Errorf("shutdownTimeout %s: grace period %s, want at least %s (preStop %s, the server's exit budget %s, slack %s)",
				timeout, grace, need, preStop, o.ExitBudget(), graceSlack)
		}
		if o.TerminationMessagePath != c.TerminationMessagePath || c.TerminationMessagePath == "" {
			t.Errorf("the server writes its failure to %q, the container's termination message is %q", o.TerminationMessagePath, c.TerminationMessagePath)
		}
	}
}

// The CRD's chatTemplate.preset accepts exactly the server's presets.
func TestChatTemplatePresetsMatchTheServer(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "config", "crd", "bases", "inference.rkllm.io_rkllmmodels.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		t.Fatal(err)
	}
	preset := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"].Properties["chatTemplate"].Properties["preset"]
	var enum []string
	for _, v := range preset.Enum {
		var s string
		if err := json.Unmarshal(v.Raw, &s); err != nil {
			t.Fatal(err)
		}
		if _, err := chattemplate.Preset(s); err != nil {
			t.Errorf("the CRD allows %q, which the server refuses: %v", s, err)
		}
		enum = append(enum, s)
	}
	if len(enum) != len(chattemplate.Presets()) {
		t.Errorf("CRD presets %v, server presets %v", enum, chattemplate.Presets())
	}
}

// A prompt that fills the model's context gets, from the server's watchdog, its prefill
// at the server's minimum rate before the first token; the request timeout the operator
// writes from the context length must leave that and the server's default time besides,
// or a long prompt on a slow model would be cut as a timeout while the NPU prefills it.
// A timeout the user set is kept as it is.
func TestRequestTimeoutCoversAFullContextPrefill(t *testing.T) {
	defaults := parseWithServer(t, unitModel(nil))
	if serverRequestTimeout != defaults.RequestTimeout || float64(serverMinPrefillRate) != defaults.MinPrefillRate {
		t.Fatalf("the operator assumes the server's request timeout %s and prefill rate %d; the server's are %s and %g",
			serverRequestTimeout, serverMinPrefillRate, defaults.RequestTimeout, defaults.MinPrefillRate)
	}
	for _, ctxLen := range []int32{512, 4096, 16384, 131072} {
		o := parseWithServer(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To(ctxLen)}
		}))
		prefill := o.TokenStallTimeout + time.Duration(float64(ctxLen)/o.MinPrefillRate*float64(time.Second))
		if o.RequestTimeout < prefill+defaults.RequestTimeout-o.TokenStallTimeout {
			t.Errorf("maxContextLen %d: request timeout %s, but a full context may prefill for %s", ctxLen, o.RequestTimeout, prefill)
		}
	}
	o := parseWithServer(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](16384)}
		m.Spec.Server = &inferencev1alpha1.ServerSpec{RequestTimeout: &metav1.Duration{Duration: time.Minute}}
	}))
	if o.RequestTimeout != time.Minute {
		t.Errorf("the user's request timeout became %s", o.RequestTimeout)
	}
}
