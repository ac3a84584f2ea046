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

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RKLLMModelSpec is what a user asks for: one model served by rkllm-server on Rockchip NPUs.
// Only spec.model is required; every other field has a documented default.
type RKLLMModelSpec struct {
	// model is where the model file (.rkllm) comes from: exactly one of url, hostPath or pvc.
	// +required
	Model ModelSource `json:"model"`

	// runtime selects the RKLLM runtime library and the server image.
	// +kubebuilder:default={}
	// +optional
	Runtime *RuntimeSpec `json:"runtime,omitempty"`

	// parameters are the RKLLMParam fields passed to rkllm_init. Unset fields keep the
	// runtime's own defaults (rkllm_createDefaultParam).
	// +optional
	Parameters *Parameters `json:"parameters,omitempty"`

	// chatTemplate chooses how conversations are laid out for the model: preset for the
	// OpenAI-compatible API (/v1/), and system, prefix and postfix to override the
	// template baked into the model at conversion (rkllm_set_chat_template) for JSON-RPC
	// clients. Unset: the chatml preset, and the model's own template.
	// +optional
	ChatTemplate *ChatTemplate `json:"chatTemplate,omitempty"`

	// loraAdapters are loaded after the model (rkllm_load_lora); a request picks one by name.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=8
	// +optional
	LoraAdapters []LoraAdapter `json:"loraAdapters,omitempty"`

	// promptCache is a prompt cache file (written by an earlier run with save_prompt_cache)
	// loaded after the model (rkllm_load_prompt_cache).
	// +optional
	PromptCache *PromptCache `json:"promptCache,omitempty"`

	// replicas is the number of server pods; each takes npu.units of rockchip.com/npu.
	// 0 scales the model to zero (status.phase ScaledToZero): the Service, ConfigMap and
	// status stay, so an autoscaler (HPA, KEDA) or a gateway can scale it up again through
	// the scale subresource. Default 1.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=64
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// npu is how much of the NPU each server pod requests.
	// +kubebuilder:default={}
	// +optional
	NPU *NPUSpec `json:"npu,omitempty"`

	// resources are the CPU and memory requests and limits of the server container.
	// Unset memory: requests 2Gi, limits 8Gi (a limit is never below the request).
	// The NPU is requested through npu.units, never here.
	// +optional
	Resources *Resources `json:"resources,omitempty"`

	// nodeSelector restricts the server pods to nodes with these labels, in addition to
	// the nodes that have rockchip.com/npu to give.
	// +kubebuilder:validation:MaxProperties=32
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations of the server pods.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// affinity of the server pods.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// priorityClassName of the server pods.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="priorityClassName must be a PriorityClass name: lower-case letters, digits, '-' and '.'"
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// runtimeClassName of the server pods: the RuntimeClass (container runtime handler)
	// they run with. Unset: the node's default runtime.
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="runtimeClassName must be a RuntimeClass name: lower-case letters, digits, '-' and '.'"
	// +optional
	RuntimeClassName *string `json:"runtimeClassName,omitempty"`

	// podLabels are added to the server pods, for policies, cost reports and service
	// meshes. The operator's own labels (app.kubernetes.io/name, instance and managed-by,
	// and the inference.rkllm.io/ prefix) select and track its pods, so they are refused.
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by']) && !k.startsWith('inference.rkllm.io/'))",message="podLabels must not set app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by or inference.rkllm.io/ labels: the operator selects and tracks its pods by them"
	// +optional
	PodLabels map[string]LabelValue `json:"podLabels,omitempty"`

	// podAnnotations are added to the server pods, such as a service mesh's or a log
	// collector's settings. The inference.rkllm.io/ prefix is the operator's.
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, !k.startsWith('inference.rkllm.io/'))",message="podAnnotations must not use the inference.rkllm.io/ prefix: the operator's own annotations use it"
	// +optional
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`

	// env are environment variables of the server container and of the init containers
	// that download files (which honour HTTPS_PROXY, HTTP_PROXY and NO_PROXY). Values can
	// come from Secrets and ConfigMaps (valueFrom). The RKNPU_ variables are the device
	// plugin's (they name the NPU it allocated), so they are refused.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:XValidation:rule="self.all(e, !e.name.startsWith('RKNPU_'))",message="env must not set RKNPU_ variables: the device plugin sets them for the NPU it allocates"
	// +optional
	Env []corev1.EnvVar `json:"env,omitempty"`

	// envFrom fills environment variables of the same containers from whole Secrets and
	// ConfigMaps; env wins over them. A prefix must not start with RKNPU_.
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(e, !has(e.prefix) || !e.prefix.startsWith('RKNPU_'))",message="envFrom must not use a prefix starting with RKNPU_: the device plugin sets those variables"
	// +optional
	EnvFrom []corev1.EnvFromSource `json:"envFrom,omitempty"`

	// args are appended to `rkllm-server serve --config /etc/rkllm/server.json`: server
	// flags (docs/server.md) the spec has no field for. A flag given here wins over the
	// same key in server.json. The flags that tie the server to its pod (config, listen,
	// probe-listen, socket, model, model-dir, runtime-lib and api-key-file) come from the
	// spec and are refused here.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="!self.exists(a, a.matches('^--?(config|listen|probe-listen|socket|model|model-dir|runtime-lib|api-key-file)(=.*)?$'))",message="args must not set --config, --listen, --probe-listen, --socket, --model, --model-dir, --runtime-lib or --api-key-file: the operator sets them from the spec (spec.server, spec.model, spec.runtime)"
	// +optional
	Args []string `json:"args,omitempty"`

	// service configures the model's Service: its type and annotations.
	// +optional
	Service *ServiceSpec `json:"service,omitempty"`

	// server configures the HTTP server, its limits and its lifecycle.
	// +kubebuilder:default={}
	// +optional
	Server *ServerSpec `json:"server,omitempty"`

	// security configures how the server pod reaches the NPU.
	// +kubebuilder:default={}
	// +optional
	Security *SecuritySpec `json:"security,omitempty"`

	// suspend scales the server to zero pods while true and keeps everything else,
	// spec.replicas included (status.phase Suspended). It wins over replicas, so it stops a
	// model whatever an autoscaler sets. Default false.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// servedModelName is the model's id in the OpenAI-compatible and Ollama APIs: what
	// requests name in `model`, to the model's own server and to the gateway (which
	// routes by it). Default: the RKLLMModel's name. Two models the gateway serves must
	// not share one.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9][-A-Za-z0-9._:/]*$')",message="servedModelName must start with a letter or digit and hold only letters, digits, '-', '.', '_', ':' and '/', such as qwen2.5:1.5b"
	// +optional
	ServedModelName string `json:"servedModelName,omitempty"`

	// scaling lets the gateway (rkllm-gateway) scale the model on demand: from zero when a
	// request comes, back to minReplicas when idle, and down to free an NPU for another
	// model. Unset: the gateway routes requests to the model but never changes its
	// replicas.
	// +optional
	Scaling *ScalingSpec `json:"scaling,omitempty"`
}

// ScalingSpec is how the gateway may scale a model. The gateway writes spec.replicas
// (through the RKLLMModel, never the Deployment), always within minReplicas and
// maxReplicas.
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",message="scaling.minReplicas must not be above scaling.maxReplicas"
type ScalingSpec struct {
	// minReplicas is the fewest replicas the gateway leaves when the model is idle or
	// evicted for another model; 0 lets it go to zero. Default 0.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=64
	// +optional
	MinReplicas *int32 `json:"minReplicas,omitempty"`

	// maxReplicas is the most replicas the gateway asks for: it activates a model with
	// one, and adds one while requests queue for every replica and an NPU is free.
	// Default 1.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	// +optional
	MaxReplicas *int32 `json:"maxReplicas,omitempty"`

	// scaleDownDelay is how long the model must go without requests before the gateway
	// scales it back to minReplicas, such as "15m". Default "15m".
	// +kubebuilder:default="15m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('168h')",message="scaleDownDelay must be a duration from 10s to 168h, such as \"15m\""
	// +optional
	ScaleDownDelay *metav1.Duration `json:"scaleDownDelay,omitempty"`

	// priority orders models competing for NPUs: to activate a model the gateway evicts
	// idle models of the same or a lower priority only, the lowest priority first and
	// among equals the least recently used. Default 0.
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=-1000
	// +kubebuilder:validation:Maximum=1000
	// +optional
	Priority *int32 `json:"priority,omitempty"`
}

// ModelSource names exactly one place the model file comes from.
// +kubebuilder:validation:XValidation:rule="(has(self.url) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",message="model needs exactly one source: set one of url, hostPath or pvc"
// +kubebuilder:validation:XValidation:rule="!has(self.sha256) || has(self.url)",message="model.sha256 is checked after a download, so it needs model.url"
type ModelSource struct {
	// url is an http:// or https:// address of the .rkllm file. An init container
	// downloads it into the cache before the server starts.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an http:// or https:// address with a host, such as https://example.org/model.rkllm"
	// +optional
	URL string `json:"url,omitempty"`

	// hostPath is the absolute path of a model file already on the node; it is mounted
	// read-only.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !self.endsWith('/') && !('..' in self.split('/'))",message="hostPath must be an absolute path to a file, without '..'"
	// +optional
	HostPath string `json:"hostPath,omitempty"`

	// pvc is a file on a PersistentVolumeClaim in the model's namespace, mounted read-only.
	// +optional
	PVC *PVCSource `json:"pvc,omitempty"`

	// sha256 is the expected SHA-256 of the downloaded file (64 hex digits); the download
	// fails when it does not match. Only with url.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-fA-F]{64}$')",message="sha256 must be 64 hexadecimal digits"
	// +optional
	SHA256 string `json:"sha256,omitempty"`

	// targetPlatform is the SoC the model file was converted for (rkllm-toolkit's
	// target_platform): rk3588 (also RK3588S), rk3576, rk3562 or rv1126b. The server pods
	// only go to nodes whose rockchip.com/npu.soc label names this SoC (nodes without the
	// label, where node-feature-discovery does not run, are not excluded). Unset: read from
	// the file name (url, hostPath or pvc.path) when it names exactly one of these SoCs, as
	// in Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm; otherwise no SoC is required.
	// status.targetPlatform shows the platform in use.
	// +kubebuilder:validation:Enum=rk3588;rk3576;rk3562;rv1126b
	// +optional
	TargetPlatform *Platform `json:"targetPlatform,omitempty"`

	// cache is where downloads go: node (the default: the node's model cache, which the
	// device plugin mounts into NPU containers, so a file is downloaded once per node;
	// nodes whose plugin has no cache download into the pod's own volume), emptyDir (the
	// pod's own scratch space: downloaded again for every new pod) or hostPath (a folder on
	// the node mounted as a hostPath volume: Pod Security baseline refuses the pod).
	// +optional
	Cache *ModelCache `json:"cache,omitempty"`
}

// PVCSource is a file on a PersistentVolumeClaim.
type PVCSource struct {
	// claimName is the PersistentVolumeClaim in the model's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="claimName must be a valid PersistentVolumeClaim name: lower-case letters, digits, '-' and '.'"
	// +required
	ClaimName string `json:"claimName"`

	// path is the model file's path inside the volume, relative to its root.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/') && !self.endsWith('/') && !('..' in self.split('/'))",message="pvc.path must be a relative path to a file inside the volume, without '..'"
	// +required
	Path string `json:"path"`
}

// ModelCache is where downloads are written. At most one of node, emptyDir and
// hostPath; none means node.
// +kubebuilder:validation:XValidation:rule="(has(self.node) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) <= 1",message="cache takes one of node, emptyDir or hostPath"
type ModelCache struct {
	// node keeps downloads in the node's model cache (the device plugin's
	// --model-cache-dir, mounted into NPU containers at /var/cache/rkllm): every model on
	// the node shares it, each file is downloaded once and checked against its sha256 at
	// every start, and the least recently used files are removed past the plugin's size
	// limit. On a node without one the file is downloaded into the pod's own volume.
	// +optional
	Node *NodeCache `json:"node,omitempty"`

	// emptyDir keeps downloads in the pod's scratch space.
	// +optional
	EmptyDir *EmptyDirCache `json:"emptyDir,omitempty"`

	// hostPath keeps downloads in a folder on the node, mounted as a hostPath volume:
	// the fetch runs as root and Pod Security baseline refuses the pod. Prefer node.
	// +optional
	HostPath *HostPathCache `json:"hostPath,omitempty"`
}

// NodeCache keeps downloads in the node's model cache. Its folder and size limit are
// the device plugin's (set once per node, not per model).
type NodeCache struct{}

// EmptyDirCache keeps downloads in an emptyDir volume.
type EmptyDirCache struct {
	// sizeLimit caps the volume. Unset: no limit but the node's.
	// +optional
	SizeLimit *resource.Quantity `json:"sizeLimit,omitempty"`
}

// HostPathCache keeps downloads in a folder on the node.
type HostPathCache struct {
	// path of the folder on the node, created when missing. Default /var/lib/rkllm/models.
	// +kubebuilder:default="/var/lib/rkllm/models"
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !('..' in self.split('/'))",message="cache.hostPath.path must be an absolute path without '..'"
	// +optional
	Path string `json:"path,omitempty"`
}

// RuntimeSpec selects the RKLLM runtime library and the image that runs it.
// +kubebuilder:validation:XValidation:rule="!(has(self.libraryPath) && has(self.hostLibraryPath))",message="runtime takes libraryPath or hostLibraryPath, not both"
type RuntimeSpec struct {
	// abi is the struct layout generation of the runtime library: "1.2" (runtime
	// 1.2.1-1.2.3) or "1.3" (runtime 1.3.0). It must match the library, or the server
	// misreads its parameters. Default "1.3".
	// +kubebuilder:default="1.3"
	// +kubebuilder:validation:Enum="1.2";"1.3"
	// +optional
	ABI string `json:"abi,omitempty"`

	// image of the server (it holds rkllm-server and, unless hostLibraryPath is set,
	// librkllmrt.so). Default: the operator's --default-server-image.
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	Image string `json:"image,omitempty"`

	// imagePullPolicy of the server image. Default: Kubernetes' own (IfNotPresent, or
	// Always for the tag latest).
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// imagePullSecrets for a private registry.
	// +kubebuilder:validation:MaxItems=8
	// +optional
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// libraryPath is where librkllmrt.so is inside the image: an absolute path, or a file
	// name looked up by the dynamic loader. Default "librkllmrt.so".
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="!('..' in self.split('/'))",message="libraryPath must not contain '..'"
	// +optional
	LibraryPath string `json:"libraryPath,omitempty"`

	// hostLibraryPath is the absolute path of librkllmrt.so on the node; it is mounted
	// read-only into the server container, for images that do not carry the library.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !self.endsWith('/') && !('..' in self.split('/'))",message="hostLibraryPath must be an absolute path to a file, without '..'"
	// +optional
	HostLibraryPath string `json:"hostLibraryPath,omitempty"`

	// env are extra environment variables of the server container (the download init
	// containers do not get them): the runtime library reads some, such as
	// RKLLM_LOG_LEVEL for Rockchip's, or the RKLLM simulator's fault injection
	// (RKLLM_SIM_INIT_FAIL, RKLLM_SIM_CRASH_AFTER, ...) in tests. The server's own
	// settings are spec fields, not variables.
	// +kubebuilder:validation:MaxItems=32
	// +listType=map
	// +listMapKey=name
	// +optional
	Env []corev1.EnvVar `json:"env,omitempty"`
}

// Parameters are the RKLLMParam fields users tune. Unset fields keep the runtime's
// defaults. Decimals are strings (Kubernetes APIs have no floats), such as "0.9".
// +kubebuilder:validation:XValidation:rule="!has(self.nKeep) || !has(self.maxContextLen) || self.nKeep <= self.maxContextLen",message="nKeep must not exceed maxContextLen: the tokens kept when the context window shifts are part of it"
type Parameters struct {
	// maxContextLen is the context window in tokens; it must not exceed the limit the model
	// was converted with. Runtime default 512.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=131072
	// +optional
	MaxContextLen *int32 `json:"maxContextLen,omitempty"`

	// maxNewTokens caps the tokens generated per request; -1 means no cap. Runtime default -1.
	// +kubebuilder:validation:Minimum=-1
	// +kubebuilder:validation:Maximum=131072
	// +optional
	MaxNewTokens *int32 `json:"maxNewTokens,omitempty"`

	// topK samples from the k most likely tokens. Runtime default 40.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1024
	// +optional
	TopK *int32 `json:"topK,omitempty"`

	// topP samples from the smallest set of tokens whose probabilities add up to p, a
	// decimal from 0 to 1. Runtime default "0.9".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 1.0",message="topP must be a decimal from 0 to 1 written as a string, such as \"0.9\""
	// +optional
	TopP *string `json:"topP,omitempty"`

	// temperature scales the randomness of sampling, a decimal from 0 to 10. Runtime
	// default "0.8".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 10.0",message="temperature must be a decimal from 0 to 10 written as a string, such as \"0.8\""
	// +optional
	Temperature *string `json:"temperature,omitempty"`

	// repeatPenalty penalises tokens repeated from the context, a decimal from 0 to 10.
	// Runtime default "1.1".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 10.0",message="repeatPenalty must be a decimal from 0 to 10 written as a string, such as \"1.1\""
	// +optional
	RepeatPenalty *string `json:"repeatPenalty,omitempty"`

	// frequencyPenalty penalises tokens by how often they appeared, a decimal from -2 to 2.
	// Runtime default "0".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^-?[0-9]+(\\\\.[0-9]+)?$') && double(self) >= -2.0 && double(self) <= 2.0",message="frequencyPenalty must be a decimal from -2 to 2 written as a string, such as \"0.5\""
	// +optional
	FrequencyPenalty *string `json:"frequencyPenalty,omitempty"`

	// presencePenalty penalises tokens that appeared at all, a decimal from -2 to 2.
	// Runtime default "0".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^-?[0-9]+(\\\\.[0-9]+)?$') && double(self) >= -2.0 && double(self) <= 2.0",message="presencePenalty must be a decimal from -2 to 2 written as a string, such as \"0.5\""
	// +optional
	PresencePenalty *string `json:"presencePenalty,omitempty"`

	// mirostat selects Mirostat sampling: 0 off, 1 or 2 for the algorithm's versions.
	// Runtime default 0.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=2
	// +optional
	Mirostat *int32 `json:"mirostat,omitempty"`

	// mirostatTau is Mirostat's target entropy, a decimal from 0 to 100. Runtime default "5.0".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 100.0",message="mirostatTau must be a decimal from 0 to 100 written as a string, such as \"5.0\""
	// +optional
	MirostatTau *string `json:"mirostatTau,omitempty"`

	// mirostatEta is Mirostat's learning rate, a decimal from 0 to 1. Runtime default "0.1".
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 1.0",message="mirostatEta must be a decimal from 0 to 1 written as a string, such as \"0.1\""
	// +optional
	MirostatEta *string `json:"mirostatEta,omitempty"`

	// nKeep is the number of tokens kept at the start of the context when the window
	// shifts; -1 keeps the runtime's choice. Runtime default -1.
	// +kubebuilder:validation:Minimum=-1
	// +kubebuilder:validation:Maximum=131072
	// +optional
	NKeep *int32 `json:"nKeep,omitempty"`

	// skipSpecialToken leaves special tokens out of the generated text. Runtime default true.
	// +optional
	SkipSpecialToken *bool `json:"skipSpecialToken,omitempty"`

	// embedFlash keeps the embedding table in the model file instead of memory, which
	// saves memory at some speed. Runtime default true.
	// +optional
	EmbedFlash *bool `json:"embedFlash,omitempty"`

	// enabledCPUs are the CPU cores the runtime's own threads run on.
	// +optional
	EnabledCPUs *EnabledCPUs `json:"enabledCPUs,omitempty"`

	// nBatch is the number of requests the runtime runs in one batch, 1 to 100.
	// Default: the server's (1).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	NBatch *int32 `json:"nBatch,omitempty"`

	// baseDomainID is the model's memory domain; models sharing a process need distinct
	// ids. Runtime default 0.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1024
	// +optional
	BaseDomainID *int32 `json:"baseDomainID,omitempty"`
}

// EnabledCPUs selects the CPU cores the runtime's threads use.
type EnabledCPUs struct {
	// count of CPU threads, 1 to 8. Runtime default 4.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8
	// +optional
	Count *int32 `json:"count,omitempty"`

	// mask of the cores as hexadecimal, bit i for core i, such as "0xF0" for the big cores
	// 4-7 of an RK3588. Runtime default "0xF0" on 8-core chips.
	// +kubebuilder:validation:MaxLength=10
	// +kubebuilder:validation:XValidation:rule="self.matches('^0[xX][0-9a-fA-F]{1,8}$') && !self.matches('^0[xX]0+$')",message="mask must be a non-zero hexadecimal number of up to 8 digits, such as \"0xF0\""
	// +optional
	Mask *string `json:"mask,omitempty"`
}

// ChatTemplate chooses the chat template of the model.
type ChatTemplate struct {
	// preset is the model family whose chat template the OpenAI-compatible API renders
	// conversations with (rkllm-server --chat-template): chatml, qwen2, qwen2.5, qwen3,
	// qwen3-no-thinking, llama3, deepseek-r1, gemma, phi3, minicpm or internlm2. Unset:
	// chatml (Qwen's layout). Choose the family the model was converted from.
	// +kubebuilder:validation:Enum=chatml;qwen2;qwen2.5;qwen3;qwen3-no-thinking;llama3;deepseek-r1;gemma;phi3;minicpm;internlm2
	// +optional
	Preset *string `json:"preset,omitempty"`

	// system is the system prompt.
	// +kubebuilder:validation:MaxLength=16384
	// +optional
	System *string `json:"system,omitempty"`

	// prefix is put before each user prompt.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Prefix *string `json:"prefix,omitempty"`

	// postfix is put after each user prompt.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Postfix *string `json:"postfix,omitempty"`
}

// LoraAdapter is a LoRA adapter file, from exactly one of url or hostPath.
// +kubebuilder:validation:XValidation:rule="has(self.url) != has(self.hostPath)",message="a LoRA adapter needs exactly one source: set url or hostPath"
// +kubebuilder:validation:XValidation:rule="!has(self.sha256) || has(self.url)",message="sha256 of a LoRA adapter is checked after a download, so it needs url"
type LoraAdapter struct {
	// name by which requests select the adapter: lower-case letters, digits and '-', at
	// most 40 characters.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=40
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="a LoRA adapter name must be lower-case letters, digits and '-', starting and ending with a letter or digit"
	// +required
	Name string `json:"name"`

	// url is an http:// or https:// address of the adapter file, downloaded by an init
	// container.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an http:// or https:// address with a host, such as https://example.org/adapter.rkllm"
	// +optional
	URL string `json:"url,omitempty"`

	// hostPath is the absolute path of the adapter file on the node, mounted read-only.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !self.endsWith('/') && !('..' in self.split('/'))",message="hostPath must be an absolute path to a file, without '..'"
	// +optional
	HostPath string `json:"hostPath,omitempty"`

	// sha256 of the downloaded file (64 hex digits). Only with url.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-fA-F]{64}$')",message="sha256 must be 64 hexadecimal digits"
	// +optional
	SHA256 string `json:"sha256,omitempty"`

	// scale of the adapter, a decimal from 0 to 10. Default: the server's (1.0).
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9]+(\\\\.[0-9]+)?$') && double(self) <= 10.0",message="scale must be a decimal from 0 to 10 written as a string, such as \"1.0\""
	// +optional
	Scale *string `json:"scale,omitempty"`
}

// PromptCache is a prompt cache file, from exactly one of url or hostPath.
// +kubebuilder:validation:XValidation:rule="has(self.url) != has(self.hostPath)",message="promptCache needs exactly one source: set url or hostPath"
// +kubebuilder:validation:XValidation:rule="!has(self.sha256) || has(self.url)",message="promptCache.sha256 is checked after a download, so it needs url"
type PromptCache struct {
	// url is an http:// or https:// address of the prompt cache file.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="url must be an http:// or https:// address with a host, such as https://example.org/prompt.cache"
	// +optional
	URL string `json:"url,omitempty"`

	// hostPath is the absolute path of the prompt cache file on the node, mounted read-only.
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/') && !self.endsWith('/') && !('..' in self.split('/'))",message="hostPath must be an absolute path to a file, without '..'"
	// +optional
	HostPath string `json:"hostPath,omitempty"`

	// sha256 of the downloaded file (64 hex digits). Only with url.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-fA-F]{64}$')",message="sha256 must be 64 hexadecimal digits"
	// +optional
	SHA256 string `json:"sha256,omitempty"`
}

// Platform is a Rockchip SoC an RKLLM model file is converted for, named as the device
// plugin's rockchip.com/npu.soc node label names it.
type Platform string

// Platforms the RKLLM runtime serves (Rockchip's list for runtime 1.2 and 1.3).
const (
	PlatformRK3588  Platform = "rk3588"
	PlatformRK3576  Platform = "rk3576"
	PlatformRK3562  Platform = "rk3562"
	PlatformRV1126B Platform = "rv1126b"
)

// Colocation says whether server pods of one model may share a node's NPU.
// +kubebuilder:validation:Enum=Forbidden;Allowed
type Colocation string

const (
	// ColocationForbidden keeps server pods of one model on different nodes (required pod
	// anti-affinity on kubernetes.io/hostname): in the device plugin's cores mode, two of
	// them would otherwise share one NPU, and a replica would not add an NPU's throughput.
	ColocationForbidden Colocation = "Forbidden"
	// ColocationAllowed lets the scheduler put several server pods of the model on one
	// node, each on its own share of the NPU (cores mode).
	ColocationAllowed Colocation = "Allowed"
)

// NPUSpec is the share of the NPU each server pod requests.
type NPUSpec struct {
	// units of rockchip.com/npu each server pod requests (and limits). With the device
	// plugin's exclusive mode a unit is a whole NPU; in cores mode, one NPU core.
	// Default 1.
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8
	// +optional
	Units *int32 `json:"units,omitempty"`

	// colocation says whether two server pods of this model may run on one node, and so
	// share its NPU: Forbidden (one per node) or Allowed. Default Forbidden. An
	// affinity.podAntiAffinity of your own is kept either way.
	// +kubebuilder:default=Forbidden
	// +optional
	Colocation Colocation `json:"colocation,omitempty"`
}

// Resources are the server container's requests and limits other than the NPU.
// +kubebuilder:validation:XValidation:rule="!has(self.requests) || !('rockchip.com/npu' in self.requests)",message="request the NPU with spec.npu.units, not in spec.resources.requests"
// +kubebuilder:validation:XValidation:rule="!has(self.limits) || !('rockchip.com/npu' in self.limits)",message="request the NPU with spec.npu.units, not in spec.resources.limits"
type Resources struct {
	// requests, such as cpu and memory.
	// +kubebuilder:validation:MaxProperties=8
	// +optional
	Requests corev1.ResourceList `json:"requests,omitempty"`

	// limits, such as cpu and memory. Models are 0.5-8 GB and count against the memory
	// limit.
	// +kubebuilder:validation:MaxProperties=8
	// +optional
	Limits corev1.ResourceList `json:"limits,omitempty"`
}

// ServerSpec configures rkllm-server.
type ServerSpec struct {
	// port the server listens on for HTTP (JSON-RPC on /rpc, health, metrics); the
	// Service exposes the same port. Default 8080.
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port *int32 `json:"port,omitempty"`

	// maxQueue is a count of requests that may wait for the NPU; more are refused at
	// once. Default: no count; the server bounds its queue by the memory the requests
	// hold (its max-inflight-bytes) and by its connections.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	// +optional
	MaxQueue *int32 `json:"maxQueue,omitempty"`

	// requestTimeout caps one request, queueing included, such as "5m". Default: the
	// server's (10m), plus parameters.maxContextLen / 10 seconds when that is set (a
	// full context's prefill at the server's minimum prefill rate).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="requestTimeout must be a duration from 1s to 24h, such as \"5m\""
	// +optional
	RequestTimeout *metav1.Duration `json:"requestTimeout,omitempty"`

	// shutdownTimeout is how long a stopping server lets a running generation finish.
	// The pod's termination grace period is longer than this plus the preStop pause.
	// Default "30s".
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="shutdownTimeout must be a duration from 1s to 1h, such as \"30s\""
	// +optional
	ShutdownTimeout *metav1.Duration `json:"shutdownTimeout,omitempty"`

	// startupTimeout is how long the server may take to load the model (after any
	// download) before the kubelet restarts it; the server's init-timeout too. Large
	// models on slow storage take minutes. Default "10m".
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s') && duration(self) <= duration('24h')",message="startupTimeout must be a duration from 10s to 24h, such as \"10m\""
	// +optional
	StartupTimeout *metav1.Duration `json:"startupTimeout,omitempty"`

	// apiKeySecretRef names a Secret key holding the bearer token HTTP clients must send.
	// Unset: no key is required.
	// +optional
	APIKeySecretRef *SecretKeyRef `json:"apiKeySecretRef,omitempty"`

	// logFormat of the server's logs: json or text. Default json.
	// +kubebuilder:default=json
	// +kubebuilder:validation:Enum=json;text
	// +optional
	LogFormat string `json:"logFormat,omitempty"`
}

// A pattern, not a CEL rule: a rule over every value of a map costs more than the API
// server allows a CRD.

// LabelValue is a Kubernetes label value: at most 63 letters, digits, '-', '_' and '.',
// starting and ending with a letter or digit, or empty.
// +kubebuilder:validation:MaxLength=63
// +kubebuilder:validation:Pattern=`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`
type LabelValue string

// ServiceSpec configures the Service in front of a model's server pods.
type ServiceSpec struct {
	// type of the Service: ClusterIP (reachable inside the cluster), NodePort or
	// LoadBalancer. Default ClusterIP.
	// +kubebuilder:default=ClusterIP
	// +kubebuilder:validation:Enum=ClusterIP;NodePort;LoadBalancer
	// +optional
	Type corev1.ServiceType `json:"type,omitempty"`

	// annotations of the Service, such as a cloud load balancer's settings. Annotations
	// that other controllers add to the Service are left alone.
	// +kubebuilder:validation:MaxProperties=64
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// SecretKeyRef names a key of a Secret in the model's namespace.
type SecretKeyRef struct {
	// name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="name must be a valid Secret name: lower-case letters, digits, '-' and '.'"
	// +required
	Name string `json:"name"`

	// key in the Secret. Default "api-key".
	// +kubebuilder:default="api-key"
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="key must be letters, digits, '-', '_' and '.'"
	// +optional
	Key string `json:"key,omitempty"`
}

// DeviceTreeAccess is how an unprivileged server container reads the SoC identity in
// /proc/device-tree, which container runtimes mask.
// +kubebuilder:validation:Enum=DevicePlugin;HostPath;UnmaskedProc;None
type DeviceTreeAccess string

const (
	// DeviceTreeDevicePlugin leaves it to the device plugin, which mounts the node's
	// device tree into every NPU container (its --device-tree-mount; the chart sets it):
	// nothing in the pod spec, so the pod passes Pod Security restricted.
	DeviceTreeDevicePlugin DeviceTreeAccess = "DevicePlugin"
	// DeviceTreeHostPath mounts the node's /sys/firmware/devicetree/base read-only at
	// /proc/device-tree with a hostPath volume, which Pod Security baseline refuses.
	DeviceTreeHostPath DeviceTreeAccess = "HostPath"
	// DeviceTreeUnmaskedProc runs the pod in a user namespace (hostUsers: false) with an
	// unmasked /proc (procMount: Unmasked). Needs user namespace support on the nodes.
	DeviceTreeUnmaskedProc DeviceTreeAccess = "UnmaskedProc"
	// DeviceTreeNone mounts nothing: the image provides it, or the runtime does without.
	DeviceTreeNone DeviceTreeAccess = "None"
)

// SecuritySpec configures how the server pod reaches the NPU.
type SecuritySpec struct {
	// privileged runs the server container privileged, as root. Simplest on a trusted
	// board, but it gives the container the whole node. Default false: the container
	// runs hardened (non-root, read-only root filesystem, no privilege escalation, no
	// capabilities, seccomp RuntimeDefault) and gets the NPU from the device plugin.
	// +kubebuilder:default=false
	// +optional
	Privileged *bool `json:"privileged,omitempty"`

	// deviceTree is how an unprivileged server reads /proc/device-tree/compatible, which
	// the runtime needs to detect the SoC: DevicePlugin, HostPath, UnmaskedProc or None
	// (see the DeviceTreeAccess values). Ignored when privileged. Default DevicePlugin.
	// +kubebuilder:default=DevicePlugin
	// +optional
	DeviceTree DeviceTreeAccess `json:"deviceTree,omitempty"`

	// runAsUser is the user id of the unprivileged containers. Default 65532 (non-root).
	// 0 runs as root, still without capabilities.
	// +kubebuilder:default=65532
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=2147483647
	// +optional
	RunAsUser *int64 `json:"runAsUser,omitempty"`

	// supplementalGroups are extra group ids of the containers, such as the node's
	// "render" group that owns the NPU's /dev/dri nodes, so a non-root server can open them.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	SupplementalGroups []int64 `json:"supplementalGroups,omitempty"`
}

// Phase is a one-word summary of where a model is in its life.
// +kubebuilder:validation:Enum=Pending;Downloading;Loading;Ready;Failed;Suspended;ScaledToZero
type Phase string

// Phases, in the order a healthy model passes through them.
const (
	// PhasePending: no server pod has started yet (being created, scheduled, pulled, or
	// waiting for a missing PVC or Secret).
	PhasePending Phase = "Pending"
	// PhaseDownloading: an init container is downloading model files.
	PhaseDownloading Phase = "Downloading"
	// PhaseLoading: the server has started and is loading the model.
	PhaseLoading Phase = "Loading"
	// PhaseReady: every replica is serving.
	PhaseReady Phase = "Ready"
	// PhaseFailed: something needs the user: a failed download, a crashing server, an
	// image that cannot be pulled, a spec the cluster refuses.
	PhaseFailed Phase = "Failed"
	// PhaseSuspended: spec.suspend is true; no server pods run.
	PhaseSuspended Phase = "Suspended"
	// PhaseScaledToZero: spec.replicas is 0 (set by a user, an autoscaler or a gateway
	// through the scale subresource); no server pods run until it is scaled up.
	PhaseScaledToZero Phase = "ScaledToZero"
)

// Failure is the most recent failure of a server pod's container.
type Failure struct {
	// reason from the kubelet, such as Error, OOMKilled, CrashLoopBackOff or ImagePullBackOff.
	Reason string `json:"reason"`

	// message is the container's termination message (its last log lines when it wrote
	// none) or the kubelet's message, at most 1024 characters.
	// +optional
	Message string `json:"message,omitempty"`

	// exitCode of the container, when it exited.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`

	// time the failure happened (or was first seen, for failures without a time).
	Time metav1.Time `json:"time"`

	// pod that failed.
	// +optional
	Pod string `json:"pod,omitempty"`

	// container that failed: fetch-model, fetch-lora-NAME and fetch-prompt-cache download
	// files; server runs rkllm-server.
	// +optional
	Container string `json:"container,omitempty"`
}

// RKLLMModelStatus is what the operator observed.
type RKLLMModelStatus struct {
	// observedGeneration is the generation of the spec the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (the roll-up: every replica serves the current spec),
	// ModelAvailable, Progressing, Degraded, and while true, Reconciling and Stalled.
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// phase summarises the conditions in one word.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// replicas is the number of server pods that exist.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`

	// readyReplicas is the number of server pods ready to serve.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`

	// selector of the server pods, for the scale subresource.
	// +optional
	Selector string `json:"selector,omitempty"`

	// endpoint is the in-cluster URL of the model's Service, such as
	// http://qwen.default.svc:8080.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// model is the file the server loads, as seen inside the container.
	// +optional
	Model string `json:"model,omitempty"`

	// targetPlatform is the SoC the server pods are placed on: spec.model.targetPlatform,
	// or the one the file name names; empty when neither says.
	// +optional
	TargetPlatform Platform `json:"targetPlatform,omitempty"`

	// lastFailure is the most recent failure of a server pod's init container (a download)
	// or server container, kept after recovery as a record.
	// +optional
	LastFailure *Failure `json:"lastFailure,omitempty"`

	// modelFetches says, for each server pod of the current spec that fetched its model
	// file, where the file came from: the node's cache or a download.
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +optional
	ModelFetches []ModelFetch `json:"modelFetches,omitempty"`

	// lastRequestTime is when the gateway (rkllm-gateway) last sent the model a request.
	// The gateway writes it, at most once every 30 seconds per model, and reads it to
	// find idle models; the operator keeps it.
	// +optional
	LastRequestTime *metav1.Time `json:"lastRequestTime,omitempty"`
}

// FetchResult is what a pod's model fetch did.
// +kubebuilder:validation:Enum=CacheHit;Downloaded
type FetchResult string

const (
	// FetchCacheHit means the file was in the cache; nothing was downloaded.
	FetchCacheHit FetchResult = "CacheHit"
	// FetchDownloaded means the file was downloaded.
	FetchDownloaded FetchResult = "Downloaded"
)

// FetchCache is where a pod's model file is kept.
// +kubebuilder:validation:Enum=Node;Pod;HostPath
type FetchCache string

const (
	// FetchCacheNode is the node's model cache, shared by the pods of the node.
	FetchCacheNode FetchCache = "Node"
	// FetchCachePod is the pod's own volume (no node cache, or spec.model.cache.emptyDir).
	FetchCachePod FetchCache = "Pod"
	// FetchCacheHostPath is spec.model.cache.hostPath.
	FetchCacheHostPath FetchCache = "HostPath"
)

// ModelFetch is where one server pod's model file came from.
type ModelFetch struct {
	// pod is the server pod.
	Pod string `json:"pod"`

	// node the pod runs on.
	// +optional
	Node string `json:"node,omitempty"`

	// result: CacheHit (nothing downloaded) or Downloaded.
	Result FetchResult `json:"result"`

	// cache is where the file is kept: Node, Pod or HostPath.
	Cache FetchCache `json:"cache"`

	// bytes is the file's size.
	// +optional
	Bytes int64 `json:"bytes,omitempty"`
}

// RKLLMModel is one model served by rkllm-server on Rockchip NPUs: the operator runs it
// as a Deployment with a Service and reports its state in status.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=rkm,categories=rkllm
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.spec.replicas`
// +kubebuilder:printcolumn:name="Loaded",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Last Used",type=date,JSONPath=`.status.lastRequestTime`
// +kubebuilder:printcolumn:name="Model",type=string,JSONPath=`.status.model`
// +kubebuilder:printcolumn:name="Platform",type=string,JSONPath=`.status.targetPlatform`,priority=1
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(self.spec.scaling) || !has(self.spec.replicas) || !has(self.spec.scaling.maxReplicas) || self.spec.replicas <= self.spec.scaling.maxReplicas",message="spec.replicas must not be above spec.scaling.maxReplicas: raise maxReplicas, or scale to at most that"
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="an RKLLMModel name must be at most 63 lower-case letters, digits and '-', starting with a letter, because it also names the model's Service"
type RKLLMModel struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the model to serve.
	// +required
	Spec RKLLMModelSpec `json:"spec"`

	// status is what the operator observed.
	// +optional
	Status RKLLMModelStatus `json:"status,omitempty"`
}

// RKLLMModelList is a list of RKLLMModels.
// +kubebuilder:object:root=true
type RKLLMModelList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RKLLMModel `json:"items"`
}
