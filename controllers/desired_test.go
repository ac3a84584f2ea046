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
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

var unitOpts = Options{DefaultImage: "registry.test/rkllm-server:1"}

func unitModel(mutate func(*inferencev1alpha1.RKLLMModel)) *inferencev1alpha1.RKLLMModel {
	m := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "qwen", UID: "uid-1", Generation: 1},
		Spec:       inferencev1alpha1.RKLLMModelSpec{Model: inferencev1alpha1.ModelSource{URL: sampleURL}},
	}
	if mutate != nil {
		mutate(m)
	}
	return m
}

// build returns the Deployment as the API server would decode it.
func build(t *testing.T, m *inferencev1alpha1.RKLLMModel) (*appsv1.Deployment, map[string]any) {
	t.Helper()
	config, err := serverConfig(m)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := desiredDeployment(m, unitOpts, config, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{}
	if err := convert(ac, d); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(config, &cfg); err != nil {
		t.Fatal(err)
	}
	return d, cfg
}

// The keys docs/design.md lets the operator write into server.json.
var contractKeys = strings.Fields(`model model-dir runtime-lib runtime-abi listen probe-listen socket api-key-file
max-queue request-timeout shutdown-timeout termination-message-path init-timeout log-format max-context-len max-new-tokens top-k top-p
temperature repeat-penalty frequency-penalty presence-penalty mirostat mirostat-tau mirostat-eta
n-keep skip-special-token embed-flash enabled-cpus-num enabled-cpus-mask n-batch base-domain-id
chat-template-system chat-template-prefix chat-template-postfix chat-template lora prompt-cache served-model-name`)

func TestServerConfigMinimal(t *testing.T) {
	m := unitModel(nil)
	_, cfg := build(t, m)
	want := map[string]any{
		"model":            "/models/" + downloadFileName("model", sampleURL),
		"model-dir":        "/models",
		"runtime-abi":      "1.3",
		"runtime-lib":      "librkllmrt.so",
		"listen":           ":8080",
		"probe-listen":     ":8081",
		"socket":           "/run/rkllm/rkllm.sock",
		"shutdown-timeout": "30s",
		"init-timeout":     "10m0s",
		"log-format":       "json",
		// The RKLLMModel's name, which the gateway routes by.
		"served-model-name": m.Name,
		// The server writes why it gave up there: the container's termination message.
		"termination-message-path": "/dev/termination-log",
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("server.json = %v\nwant %v", cfg, want)
	}
}

func TestServerConfigEveryField(t *testing.T) {
	m := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.2", HostLibraryPath: "/usr/lib/librkllmrt.so"}
		m.Spec.Parameters = &inferencev1alpha1.Parameters{
			MaxContextLen: ptr.To[int32](4096), MaxNewTokens: ptr.To[int32](256), TopK: ptr.To[int32](20), TopP: ptr.To("0.9"),
			Temperature: ptr.To("0.7"), RepeatPenalty: ptr.To("1.1"), FrequencyPenalty: ptr.To("0.1"), PresencePenalty: ptr.To("-0.2"),
			Mirostat: ptr.To[int32](1), MirostatTau: ptr.To("5.0"), MirostatEta: ptr.To("0.1"), NKeep: ptr.To[int32](8),
			SkipSpecialToken: ptr.To(true), EmbedFlash: ptr.To(false), NBatch: ptr.To[int32](2), BaseDomainID: ptr.To[int32](3),
			EnabledCPUs: &inferencev1alpha1.EnabledCPUs{Count: ptr.To[int32](4), Mask: ptr.To("0xF0")},
		}
		m.Spec.ChatTemplate = &inferencev1alpha1.ChatTemplate{System: ptr.To("sys"), Prefix: ptr.To("<u>"), Postfix: ptr.To("<a>"), Preset: ptr.To("qwen2.5")}
		m.Spec.LoraAdapters = []inferencev1alpha1.LoraAdapter{
			{Name: "chat", URL: "https://example.org/lora/chat.rkllm", Scale: ptr.To("0.5")},
			{Name: "code", HostPath: "/opt/lora/code.rkllm"},
		}
		m.Spec.PromptCache = &inferencev1alpha1.PromptCache{URL: "https://example.org/prompt.cache"}
		m.Spec.ServedModelName = "qwen2.5:1.5b"
		m.Spec.Server = &inferencev1alpha1.ServerSpec{
			Port: ptr.To[int32](9000), MaxQueue: ptr.To[int32](16), RequestTimeout: &metav1.Duration{Duration: 5 * time.Minute},
			ShutdownTimeout: &metav1.Duration{Duration: time.Minute}, LogFormat: "text",
			APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "api"},
		}
	})
	_, cfg := build(t, m)
	var keys []string
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := append([]string(nil), contractKeys...)
	sort.Strings(want)
	if !reflect.DeepEqual(keys, want) {
		t.Errorf("keys written = %v\nwant exactly the contract's %v", keys, want)
	}
	checks := map[string]any{
		"runtime-abi": "1.2", "runtime-lib": "/opt/rkllm/lib/librkllmrt.so", "listen": ":9000", "probe-listen": ":8081",
		"top-p": "0.9", "presence-penalty": "-0.2", "max-context-len": float64(4096), "skip-special-token": true,
		"embed-flash": float64(0), "enabled-cpus-mask": "0xF0", "enabled-cpus-num": float64(4), "request-timeout": "5m0s",
		"shutdown-timeout": "1m0s", "log-format": "text", "api-key-file": "/etc/rkllm/api-key/api-key",
		"chat-template-prefix": "<u>", "chat-template": "qwen2.5", "max-queue": float64(16), "served-model-name": "qwen2.5:1.5b",
		"prompt-cache": "/models/" + downloadFileName("prompt-cache", "https://example.org/prompt.cache"),
	}
	for k, v := range checks {
		if cfg[k] != v {
			t.Errorf("%s = %#v, want %#v", k, cfg[k], v)
		}
	}
	wantLora := []any{
		"chat=/models/" + downloadFileName("lora-chat", "https://example.org/lora/chat.rkllm") + ":0.5",
		"code=/models/host/lora-code/code.rkllm",
	}
	if !reflect.DeepEqual(cfg["lora"], wantLora) {
		t.Errorf("lora = %v, want %v", cfg["lora"], wantLora)
	}
}

func TestModelSources(t *testing.T) {
	cases := []struct {
		name      string
		src       inferencev1alpha1.ModelSource
		modelPath string
		inits     []string
		volume    func(v corev1.Volume) bool
	}{
		{
			name: "url", src: inferencev1alpha1.ModelSource{URL: sampleURL},
			modelPath: "/models/" + downloadFileName("model", sampleURL), inits: []string{"fetch-model"},
		},
		{
			name: "hostPath", src: inferencev1alpha1.ModelSource{HostPath: "/opt/models/q.rkllm"},
			modelPath: "/models/host/model/q.rkllm",
			volume: func(v corev1.Volume) bool {
				return v.Name == "host-model" && v.HostPath != nil && v.HostPath.Path == "/opt/models/q.rkllm" && *v.HostPath.Type == corev1.HostPathFile
			},
		},
		{
			name: "pvc", src: inferencev1alpha1.ModelSource{PVC: &inferencev1alpha1.PVCSource{ClaimName: "store", Path: "qwen/q.rkllm"}},
			modelPath: "/models/pvc/qwen/q.rkllm",
			volume: func(v corev1.Volume) bool {
				return v.Name == "model-pvc" && v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == "store" && v.PersistentVolumeClaim.ReadOnly
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, cfg := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Model = tc.src }))
			if cfg["model"] != tc.modelPath {
				t.Errorf("model = %v, want %s", cfg["model"], tc.modelPath)
			}
			pod := d.Spec.Template.Spec
			if got := containerNames(pod.InitContainers); !reflect.DeepEqual(got, tc.inits) {
				t.Errorf("init containers %v, want %v", got, tc.inits)
			}
			if tc.volume != nil {
				found := false
				for _, v := range pod.Volumes {
					found = found || tc.volume(v)
				}
				if !found {
					t.Errorf("volume missing: %+v", pod.Volumes)
				}
				// The server sees the file read-only where server.json says.
				mounted := false
				for _, vm := range pod.Containers[0].VolumeMounts {
					if strings.HasPrefix(tc.modelPath, vm.MountPath) && vm.MountPath != "/models" && vm.ReadOnly {
						mounted = true
					}
				}
				if !mounted {
					t.Errorf("no read-only mount leads to %s: %+v", tc.modelPath, pod.Containers[0].VolumeMounts)
				}
			}
		})
	}
}

func TestFetchContainer(t *testing.T) {
	d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Model.SHA256 = strings.Repeat("AB", 32) }))
	c := d.Spec.Template.Spec.InitContainers[0]
	want := []string{"fetch", "--url", sampleURL, "--dest", "/models/" + downloadFileName("model", sampleURL), "--sha256", strings.Repeat("ab", 32),
		"--result-file", "/dev/termination-log"}
	if !reflect.DeepEqual(c.Command, []string{"rkllm-server"}) || !reflect.DeepEqual(c.Args, want) {
		t.Errorf("fetch = %v %v, want rkllm-server %v", c.Command, c.Args, want)
	}
	if c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		t.Error("a failed download's reason would not reach the status")
	}
	// The node's cache comes with the NPU (the device plugin mounts it): the fetch asks
	// for the server's units, which the kubelet then hands on to the server.
	server := d.Spec.Template.Spec.Containers[0].Resources
	for _, l := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
		if got, want := l[inferencev1alpha1.NPUResourceName], server.Limits[inferencev1alpha1.NPUResourceName]; got.Cmp(want) != 0 {
			t.Errorf("fetch NPU %s, want the server's %s", got.String(), want.String())
		}
	}

	// The pod's own volume: the node's cache is turned off, and the NPU is not needed.
	for name, cache := range map[string]*inferencev1alpha1.ModelCache{
		"emptyDir": {EmptyDir: &inferencev1alpha1.EmptyDirCache{}},
		"hostPath": {HostPath: &inferencev1alpha1.HostPathCache{}},
	} {
		d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Model.Cache = cache }))
		c := d.Spec.Template.Spec.InitContainers[0]
		if c.Args[len(c.Args)-1] != "--cache-dir=" {
			t.Errorf("%s cache: fetch args %v, want the node cache off", name, c.Args)
		}
		if _, ok := c.Resources.Limits[inferencev1alpha1.NPUResourceName]; ok {
			t.Errorf("%s cache: the download holds the NPU without a reason", name)
		}
	}
}

// TestStrategy: one replica is replaced with Recreate; several one at a time, never
// with a surge pod (no spare NPU to put it on).
func TestStrategy(t *testing.T) {
	for replicas, want := range map[int32]appsv1.DeploymentStrategy{
		1: {Type: appsv1.RecreateDeploymentStrategyType},
		3: {Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
			MaxSurge: ptr.To(intstr.FromInt32(0)), MaxUnavailable: ptr.To(intstr.FromInt32(1))}},
	} {
		d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = &replicas }))
		if !reflect.DeepEqual(d.Spec.Strategy, want) {
			t.Errorf("%d replicas: strategy %+v, want %+v", replicas, d.Spec.Strategy, want)
		}
	}
	pdb := desiredPodDisruptionBudget(unitModel(nil))
	if pdb.Spec.MaxUnavailable.IntValue() != 1 || *pdb.Spec.UnhealthyPodEvictionPolicy != "AlwaysAllow" ||
		!reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, selectorLabels(unitModel(nil))) {
		t.Errorf("PodDisruptionBudget spec %+v", pdb.Spec)
	}
}

// A model served on the probe listener's usual port moves the probes to the next one.
func TestProbePortAvoidsTheHTTPPort(t *testing.T) {
	d, cfg := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Server = &inferencev1alpha1.ServerSpec{Port: ptr.To[int32](8081)}
	}))
	c := d.Spec.Template.Spec.Containers[0]
	if cfg["listen"] != ":8081" || cfg["probe-listen"] != ":8082" || len(c.Ports) != 2 || c.Ports[1].ContainerPort != 8082 {
		t.Errorf("listen %v, probe-listen %v, ports %+v", cfg["listen"], cfg["probe-listen"], c.Ports)
	}
}

func TestServerContainer(t *testing.T) {
	d, _ := build(t, unitModel(nil))
	pod := d.Spec.Template.Spec
	c := pod.Containers[0]
	if !reflect.DeepEqual(c.Args, []string{"serve", "--config", "/etc/rkllm/server.json"}) || c.Image != unitOpts.DefaultImage {
		t.Errorf("server = %s %v", c.Image, c.Args)
	}
	if c.StartupProbe.HTTPGet.Path != "/readyz" || c.StartupProbe.FailureThreshold*c.StartupProbe.PeriodSeconds != 600 {
		t.Errorf("startup probe budget %ds on %s, want 600s on /readyz", c.StartupProbe.FailureThreshold*c.StartupProbe.PeriodSeconds, c.StartupProbe.HTTPGet.Path)
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/livez" {
		t.Error("readiness must probe /readyz and liveness /livez")
	}
	// Probes go to the server's probe listener, which client connections cannot fill.
	for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
		if p.HTTPGet.Port.StrVal != "probes" {
			t.Errorf("probe of %s on port %v, want the probe listener's port", p.HTTPGet.Path, p.HTTPGet.Port)
		}
	}
	if c.Lifecycle.PreStop.Sleep.Seconds != preStopSeconds {
		t.Errorf("preStop = %+v", c.Lifecycle.PreStop)
	}
	if c.TerminationMessagePath != corev1.TerminationMessagePathDefault || c.TerminationMessagePolicy != corev1.TerminationMessageFallbackToLogsOnError {
		t.Errorf("termination message %s %s, want the file the server writes why it failed to, else its logs", c.TerminationMessagePath, c.TerminationMessagePolicy)
	}
	// The grace period outlasts the preStop pause plus the server's shutdown timeout.
	if got := *pod.TerminationGracePeriodSeconds; got <= preStopSeconds+30 {
		t.Errorf("terminationGracePeriodSeconds %d is not above preStop %d + shutdown 30", got, preStopSeconds)
	}
	if len(c.Ports) != 2 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 8080 || c.Ports[1].Name != "probes" || c.Ports[1].ContainerPort != 8081 {
		t.Errorf("ports %+v", c.Ports)
	}
	if *pod.AutomountServiceAccountToken {
		t.Error("the server needs no API token")
	}
}

// TestServerEnv: spec.runtime.env reaches the server container, values and references
// alike, and not the downloads.
func TestServerEnv(t *testing.T) {
	env := []corev1.EnvVar{
		{Name: "RKLLM_SIM_INIT_FAIL", Value: "1"},
		{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "k"}}},
	}
	d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{Env: env}
	}))
	pod := d.Spec.Template.Spec
	if !reflect.DeepEqual(pod.Containers[0].Env, env) {
		t.Errorf("server env = %+v, want %+v", pod.Containers[0].Env, env)
	}
	for _, c := range pod.InitContainers {
		if len(c.Env) != 0 {
			t.Errorf("init container %s got env %+v", c.Name, c.Env)
		}
	}
	if d2, _ := build(t, unitModel(nil)); d2.Spec.Template.Annotations[AnnotationRolloutHash] == d.Spec.Template.Annotations[AnnotationRolloutHash] {
		t.Error("changing env does not roll the pods")
	}
}

func TestStartupAndShutdownTimings(t *testing.T) {
	d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Server = &inferencev1alpha1.ServerSpec{
			StartupTimeout:  &metav1.Duration{Duration: 30 * time.Minute},
			ShutdownTimeout: &metav1.Duration{Duration: 2 * time.Minute},
		}
	}))
	c := d.Spec.Template.Spec.Containers[0]
	if got := c.StartupProbe.FailureThreshold * c.StartupProbe.PeriodSeconds; got != 1800 {
		t.Errorf("startup budget %ds, want 1800", got)
	}
	// preStop 5 s, then 120 s of shutdown timeout, the server's 5 s to exit and 5 s of slack.
	if got := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; got != 135 {
		t.Errorf("grace %d, want 135", got)
	}
}

func TestResources(t *testing.T) {
	q := resource.MustParse
	cases := []struct {
		name             string
		res              *inferencev1alpha1.Resources
		units            int32
		reqMem, limMem   string
		wantCPURequest   string
		wantNPU          int64
		npuInitContainer bool
	}{
		{name: "defaults", reqMem: "2Gi", limMem: "8Gi", wantNPU: 1},
		{name: "big request raises the limit", res: &inferencev1alpha1.Resources{Requests: corev1.ResourceList{"memory": q("10Gi")}}, reqMem: "10Gi", limMem: "10Gi", wantNPU: 1},
		{name: "small limit lowers the request", res: &inferencev1alpha1.Resources{Limits: corev1.ResourceList{"memory": q("1Gi")}}, reqMem: "1Gi", limMem: "1Gi", wantNPU: 1},
		{name: "user values win", units: 3, res: &inferencev1alpha1.Resources{
			Requests: corev1.ResourceList{"memory": q("3Gi"), "cpu": q("2")}, Limits: corev1.ResourceList{"memory": q("4Gi")},
		}, reqMem: "3Gi", limMem: "4Gi", wantCPURequest: "2", wantNPU: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.Resources = tc.res
				if tc.units > 0 {
					m.Spec.NPU = &inferencev1alpha1.NPUSpec{Units: &tc.units}
				}
			}))
			r := d.Spec.Template.Spec.Containers[0].Resources
			if got := r.Requests[corev1.ResourceMemory]; got.Cmp(q(tc.reqMem)) != 0 {
				t.Errorf("memory request %s, want %s", got.String(), tc.reqMem)
			}
			if got := r.Limits[corev1.ResourceMemory]; got.Cmp(q(tc.limMem)) != 0 {
				t.Errorf("memory limit %s, want %s", got.String(), tc.limMem)
			}
			for _, l := range []corev1.ResourceList{r.Requests, r.Limits} {
				if got := l[inferencev1alpha1.NPUResourceName]; got.Value() != tc.wantNPU {
					t.Errorf("NPU %s, want %d", got.String(), tc.wantNPU)
				}
			}
			if tc.wantCPURequest != "" {
				if got := r.Requests[corev1.ResourceCPU]; got.Cmp(q(tc.wantCPURequest)) != 0 {
					t.Errorf("cpu request %s", got.String())
				}
			}
		})
	}
}

func TestSecurity(t *testing.T) {
	cases := []struct {
		name  string
		sec   *inferencev1alpha1.SecuritySpec
		cache *inferencev1alpha1.ModelCache
		check func(t *testing.T, pod corev1.PodSpec)
	}{
		{name: "hardened by default", check: func(t *testing.T, pod corev1.PodSpec) {
			sc := pod.Containers[0].SecurityContext
			if sc.Privileged != nil || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem || !*sc.RunAsNonRoot ||
				*sc.RunAsUser != 65532 || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("server security context %+v", sc)
			}
			if pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault || *pod.SecurityContext.FSGroup != 65532 {
				t.Errorf("pod security context %+v", pod.SecurityContext)
			}
			if !*pod.InitContainers[0].SecurityContext.RunAsNonRoot {
				t.Error("the download runs as root without a reason")
			}
			// The device plugin mounts the device tree and the model cache: no hostPath.
			for _, v := range pod.Volumes {
				if v.HostPath != nil {
					t.Errorf("hostPath volume %s in the default pod: Pod Security baseline refuses it", v.Name)
				}
			}
		}},
		{name: "device tree from a hostPath", sec: &inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeHostPath}, check: func(t *testing.T, pod corev1.PodSpec) {
			if !mountedAt(pod.Containers[0], "device-tree", "/proc/device-tree") || volumeOf(pod, "device-tree").HostPath.Path != "/sys/firmware/devicetree/base" {
				t.Error("the device tree is not mounted for the runtime")
			}
		}},
		{name: "privileged", sec: &inferencev1alpha1.SecuritySpec{Privileged: ptr.To(true)}, check: func(t *testing.T, pod corev1.PodSpec) {
			sc := pod.Containers[0].SecurityContext
			if !*sc.Privileged || sc.AllowPrivilegeEscalation != nil {
				t.Errorf("server security context %+v", sc)
			}
			if volumeOf(pod, "device-tree") != nil {
				t.Error("a privileged container sees the device tree; no mount needed")
			}
		}},
		{name: "unmasked proc", sec: &inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeUnmaskedProc}, check: func(t *testing.T, pod corev1.PodSpec) {
			if pod.HostUsers == nil || *pod.HostUsers || *pod.Containers[0].SecurityContext.ProcMount != corev1.UnmaskedProcMount {
				t.Errorf("hostUsers %v procMount %v", pod.HostUsers, pod.Containers[0].SecurityContext.ProcMount)
			}
			if volumeOf(pod, "device-tree") != nil {
				t.Error("device tree mounted although /proc is unmasked")
			}
		}},
		{name: "no device tree", sec: &inferencev1alpha1.SecuritySpec{DeviceTree: inferencev1alpha1.DeviceTreeNone}, check: func(t *testing.T, pod corev1.PodSpec) {
			if volumeOf(pod, "device-tree") != nil || pod.HostUsers != nil {
				t.Error("deviceTree None must add nothing")
			}
		}},
		{name: "render group", sec: &inferencev1alpha1.SecuritySpec{SupplementalGroups: []int64{107}}, check: func(t *testing.T, pod corev1.PodSpec) {
			if !reflect.DeepEqual(pod.SecurityContext.SupplementalGroups, []int64{107}) {
				t.Errorf("supplementalGroups %v", pod.SecurityContext.SupplementalGroups)
			}
		}},
		{name: "hostPath cache", cache: &inferencev1alpha1.ModelCache{HostPath: &inferencev1alpha1.HostPathCache{}}, check: func(t *testing.T, pod corev1.PodSpec) {
			v := volumeOf(pod, "models")
			if v.HostPath == nil || v.HostPath.Path != "/var/lib/rkllm/models" || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("models volume %+v", v)
			}
			// Only root can write into the root-owned cache folder; still no capabilities.
			sc := pod.InitContainers[0].SecurityContext
			if *sc.RunAsUser != 0 || *sc.RunAsNonRoot || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("fetch security context %+v", sc)
			}
			if *pod.Containers[0].SecurityContext.RunAsUser != 65532 {
				t.Error("the server need not run as root for the cache")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
				m.Spec.Security = tc.sec
				m.Spec.Model.Cache = tc.cache
			}))
			tc.check(t, d.Spec.Template.Spec)
		})
	}
}

func mountedAt(c corev1.Container, volume, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && m.MountPath == path && m.ReadOnly {
			return true
		}
	}
	return false
}

func volumeOf(pod corev1.PodSpec, name string) *corev1.Volume {
	return findVolume(pod.Volumes, name)
}

func TestSuspendAndScheduling(t *testing.T) {
	d, _ := build(t, unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Suspend = true
		m.Spec.Replicas = ptr.To[int32](3)
		m.Spec.NodeSelector = map[string]string{"rockchip.com/npu.soc": "rk3588"}
		m.Spec.Tolerations = []corev1.Toleration{{Key: "npu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
		m.Spec.PriorityClassName = "llm"
		m.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "k", Operator: corev1.NodeSelectorOpIn, Values: []string{"v"}}}}},
		}}}
	}))
	if *d.Spec.Replicas != 0 {
		t.Errorf("suspended replicas = %d", *d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if pod.NodeSelector["rockchip.com/npu.soc"] != "rk3588" || pod.PriorityClassName != "llm" || len(pod.Tolerations) != 1 ||
		pod.Tolerations[0].Key != "npu" || pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != "v" {
		t.Errorf("scheduling fields not passed on: %+v", pod)
	}
}

func TestNoImage(t *testing.T) {
	m := unitModel(nil)
	config, _ := serverConfig(m)
	if _, err := desiredDeployment(m, Options{}, config, nil); err == nil || !strings.Contains(err.Error(), "--default-server-image") {
		t.Errorf("err = %v", err)
	}
}

func TestRolloutHash(t *testing.T) {
	hash := func(mutate func(*inferencev1alpha1.RKLLMModel)) string {
		d, _ := build(t, unitModel(mutate))
		return d.Spec.Template.Annotations[AnnotationRolloutHash]
	}
	base := hash(nil)
	base12 := hash(func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.2"} })
	if base == "" || base != hash(nil) {
		t.Fatal("the hash is not stable for the same spec")
	}
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"a parameter of rkllm_init (server.json only)": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Parameters = &inferencev1alpha1.Parameters{MaxContextLen: ptr.To[int32](1024)}
		},
		"a sampling parameter on ABI 1.2 (taken only at init)": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{ABI: "1.2"}
			m.Spec.Parameters = &inferencev1alpha1.Parameters{TopK: ptr.To[int32](1)}
		},
		"the image": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Runtime = &inferencev1alpha1.RuntimeSpec{Image: "other:1"}
		},
		"the model url": func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Model.URL += "?v=2" },
	} {
		if h := hash(mutate); h == base || h == base12 {
			t.Errorf("changing %s does not change the rollout hash", name)
		}
	}
	for name, mutate := range map[string]func(*inferencev1alpha1.RKLLMModel){
		"labels of the model": func(m *inferencev1alpha1.RKLLMModel) { m.Labels = map[string]string{"team": "a"} },
		"replicas":            func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptr.To[int32](4) },
		// The server takes these from the changed server.json without a restart.
		"sampling parameters on ABI 1.3": func(m *inferencev1alpha1.RKLLMModel) {
			m.Spec.Parameters = &inferencev1alpha1.Parameters{TopK: ptr.To[int32](1), TopP: ptr.To("0.5"), Temperature: ptr.To("0.2"),
				RepeatPenalty: ptr.To("1.2"), FrequencyPenalty: ptr.To("0.1"), PresencePenalty: ptr.To("0.1"), Mirostat: ptr.To[int32](2),
				MirostatTau: ptr.To("4"), MirostatEta: ptr.To("0.2"), MaxNewTokens: ptr.To[int32](64)}
		},
	} {
		if hash(mutate) != base {
			t.Errorf("changing %s rolls the pods", name)
		}
	}
}

func TestDownloadFileName(t *testing.T) {
	a := downloadFileName("model", "https://a.example/x/model.rkllm")
	b := downloadFileName("model", "https://b.example/y/model.rkllm")
	if a == b || !strings.HasSuffix(a, "-model.rkllm") {
		t.Errorf("same file name from different URLs: %s %s", a, b)
	}
	if got := downloadFileName("lora-x", "https://a.example/"); !strings.HasSuffix(got, "-lora-x") {
		t.Errorf("no file name in the URL: %s", got)
	}
	if got := downloadFileName("model", "https://a.example/d/we%20ird;name$.rkllm"); strings.ContainsAny(got, " ;$/%") {
		t.Errorf("unsafe characters kept: %s", got)
	}
}

func TestServiceAndConfigMap(t *testing.T) {
	m := unitModel(func(m *inferencev1alpha1.RKLLMModel) {
		m.Spec.Server = &inferencev1alpha1.ServerSpec{Port: ptr.To[int32](9000)}
	})
	svc := &corev1.Service{}
	if err := convert(desiredService(m), svc); err != nil {
		t.Fatal(err)
	}
	if svc.Name != "qwen" || svc.Spec.Ports[0].Port != 9000 || svc.Spec.Ports[0].TargetPort.StrVal != "http" ||
		!reflect.DeepEqual(svc.Spec.Selector, selectorLabels(m)) || !*svc.OwnerReferences[0].Controller {
		t.Errorf("service %+v", svc)
	}
	cm := &corev1.ConfigMap{}
	if err := convert(desiredConfigMap(m, []byte("{}")), cm); err != nil {
		t.Fatal(err)
	}
	if cm.Name != "qwen-config" || cm.Data["server.json"] != "{}" || cm.Labels[LabelManagedBy] != "rkllm-operator" {
		t.Errorf("configmap %+v", cm)
	}
}
