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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"path"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Labels and annotations the operator puts on what it creates.
const (
	// LabelName and LabelInstance select a model's server pods (the Deployment selector).
	LabelName     = "app.kubernetes.io/name"
	LabelInstance = "app.kubernetes.io/instance"
	// LabelManagedBy marks every object the operator owns; the manager caches only those.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// LabelModel names the RKLLMModel an object belongs to.
	LabelModel = "inference.rkllm.io/model"
	// AnnotationRolloutHash on the pod template is a hash of everything a server pod runs
	// with, the server configuration included: a change rolls the pods, and pods carrying
	// the current value are the current revision.
	AnnotationRolloutHash = "inference.rkllm.io/rollout-hash"

	serverAppName  = "rkllm-server"
	managedByValue = "rkllm-operator"
)

// Paths inside the server pod (docs/design.md, "Operator -> server").
const (
	configDir       = "/etc/rkllm"
	configFileName  = "server.json"
	apiKeyDir       = "api-key"
	apiKeyFileName  = "api-key"
	modelsDir       = "/models"
	socketDir       = "/run/rkllm"
	socketPath      = socketDir + "/rkllm.sock"
	hostLibraryPath = "/opt/rkllm/lib/librkllmrt.so"
	deviceTreePath  = "/proc/device-tree"
	// hostDeviceTree is what the node's /proc/device-tree links to.
	hostDeviceTree = "/sys/firmware/devicetree/base"
	serverBinary   = "rkllm-server"
	// terminationLogPath is the containers' terminationMessagePath (the default).
	terminationLogPath = "/dev/termination-log"
)

// Names of containers, volumes and ports in the server pod.
const (
	serverContainer = "server"
	httpPortName    = "http"
	probePortName   = "probes"
	volConfig       = "config"
	volModels       = "models"
	volRun          = "run"
	volTmp          = "tmp"
	volDeviceTree   = "device-tree"
	volRuntimeLib   = "runtime-lib"
	volModelPVC     = "model-pvc"
)

// Lifecycle timings of the server pod.
const (
	// preStopSeconds is the pause before SIGTERM, so endpoints controllers and proxies
	// stop sending traffic before the server starts refusing it.
	preStopSeconds = 5
	// serverExitMargin is how long after its shutdown timeout rkllm-server may take to
	// exit on SIGTERM (its config.ShutdownMargin; the contract test checks they agree).
	serverExitMargin = 5 * time.Second
	// graceSlack is what the grace period allows beyond the preStop pause and the
	// server's own bound, for what is not the server's: the kubelet sending SIGTERM
	// after the pause, a loaded node scheduling the process late.
	graceSlack = 5 * time.Second
	// startupProbePeriod is the period of the startup probe; its failure threshold is
	// startupTimeout / period.
	startupProbePeriod = 10
	// revisionHistoryLimit keeps a few old ReplicaSets for `kubectl rollout undo`.
	revisionHistoryLimit = 3
)

// Options are the operator-wide settings the controller gets from the manager's flags.
type Options struct {
	// DefaultImage is the server image for models without spec.runtime.image. Models
	// whose pods run already keep the image they run until their spec changes (or
	// RollOnUpgrade).
	DefaultImage string
	// RollOnUpgrade builds every model's pods afresh, rolling them when this operator
	// would make them differently from the one that made them (a new default image, a new
	// pod layout). Off: only a change of the model's spec rolls its pods.
	RollOnUpgrade bool
}

// ConfigMapName is the name of a model's ConfigMap holding server.json.
func ConfigMapName(model *inferencev1alpha1.RKLLMModel) string {
	return model.Name + "-config"
}

// selectorLabels select a model's server pods. They are immutable in a Deployment, so
// they never change.
func selectorLabels(model *inferencev1alpha1.RKLLMModel) map[string]string {
	return map[string]string{LabelName: serverAppName, LabelInstance: model.Name}
}

// objectLabels are the labels of every object the operator creates for a model.
func objectLabels(model *inferencev1alpha1.RKLLMModel) map[string]string {
	l := selectorLabels(model)
	l[LabelManagedBy] = managedByValue
	l[LabelModel] = model.Name
	return l
}

// ownerReference makes the model the controller of an object, so deleting the model
// deletes it and changes to it wake the controller (Owns).
func ownerReference(model *inferencev1alpha1.RKLLMModel) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(inferencev1alpha1.GroupVersion.String()).
		WithKind("RKLLMModel").
		WithName(model.Name).
		WithUID(model.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// endpoint is the in-cluster URL of a model's Service.
func endpoint(model *inferencev1alpha1.RKLLMModel) string {
	return fmt.Sprintf("http://%s.%s.svc:%d", model.Name, model.Namespace, model.Spec.GetPort())
}

// modelFile is one file the server reads: the model, a LoRA adapter or the prompt cache.
type modelFile struct {
	// role names the file in container and volume names: "model", "lora-NAME",
	// "prompt-cache".
	role string
	// url and sha256 are set for downloads.
	url, sha256 string
	// hostPath is set for files on the node.
	hostPath string
	// path is where the server finds the file.
	path string
}

// fetchContainerName is the init container that downloads f.
func (f modelFile) fetchContainerName() string { return "fetch-" + f.role }

// hostVolumeName is the volume that mounts f from the node.
func (f modelFile) hostVolumeName() string { return "host-" + f.role }

// newModelFile places a file from a url or a host path in the container.
func newModelFile(role, rawURL, sha, hostPath string) modelFile {
	f := modelFile{role: role, url: rawURL, sha256: strings.ToLower(sha), hostPath: hostPath}
	switch {
	case rawURL != "":
		f.path = path.Join(modelsDir, downloadFileName(role, rawURL))
	case hostPath != "":
		f.path = path.Join(modelsDir, "host", role, path.Base(hostPath))
	}
	return f
}

// downloadFileName names a download after its URL: a short hash of the whole URL (two
// URLs never share a file in a node-wide cache) and the URL's last path element (so a
// person recognises it).
func downloadFileName(role, rawURL string) string {
	sum := sha256.Sum256([]byte(rawURL))
	base := role
	if u, err := url.Parse(rawURL); err == nil {
		if b := path.Base(u.Path); b != "/" && b != "." && b != ".." && b != "" {
			base = b
		}
	}
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, base)
	if len(clean) > 100 {
		clean = clean[len(clean)-100:]
	}
	return hex.EncodeToString(sum[:5]) + "-" + clean
}

// podFiles are the files a model's server reads.
type podFiles struct {
	// modelPath is where the server finds the model.
	modelPath string
	// model is nil for a model on a PVC, which is mounted with its volume.
	model       *modelFile
	loras       []modelFile
	promptCache *modelFile
}

// all lists the files that are downloaded or mounted from the node one by one: the
// model, the LoRA adapters in spec order, the prompt cache.
func (p podFiles) all() []modelFile {
	var out []modelFile
	if p.model != nil {
		out = append(out, *p.model)
	}
	out = append(out, p.loras...)
	if p.promptCache != nil {
		out = append(out, *p.promptCache)
	}
	return out
}

// modelFiles places the files of a model in the server pod.
func modelFiles(model *inferencev1alpha1.RKLLMModel) podFiles {
	var p podFiles
	src := model.Spec.Model
	if src.PVC != nil {
		p.modelPath = path.Join(modelsDir, "pvc", src.PVC.Path)
	} else {
		f := newModelFile("model", src.URL, src.SHA256, src.HostPath)
		p.model = &f
		p.modelPath = f.path
	}
	for _, l := range model.Spec.LoraAdapters {
		p.loras = append(p.loras, newModelFile("lora-"+l.Name, l.URL, l.SHA256, l.HostPath))
	}
	if pc := model.Spec.PromptCache; pc != nil {
		f := newModelFile("prompt-cache", pc.URL, pc.SHA256, pc.HostPath)
		p.promptCache = &f
	}
	return p
}

// modelDisplayName is the model's file name as a person knows it, for status.model.
func modelDisplayName(model *inferencev1alpha1.RKLLMModel) string {
	src := model.Spec.Model
	switch {
	case src.URL != "":
		if u, err := url.Parse(src.URL); err == nil && path.Base(u.Path) != "/" && path.Base(u.Path) != "." {
			return path.Base(u.Path)
		}
		return src.URL
	case src.HostPath != "":
		return path.Base(src.HostPath)
	case src.PVC != nil:
		return path.Base(src.PVC.Path)
	}
	return ""
}

// serverConfig is the content of server.json: rkllm-server serve flags without their
// dashes (docs/design.md). Only fields the user set are written, so the server and the
// runtime keep their own defaults for the rest; decimals stay strings, as in the CRD.
func serverConfig(model *inferencev1alpha1.RKLLMModel) ([]byte, error) {
	spec := &model.Spec
	files := modelFiles(model)
	c := map[string]any{
		"model":            files.modelPath,
		"model-dir":        modelsDir,
		"runtime-abi":      spec.GetABI(),
		"runtime-lib":      runtimeLib(spec),
		"listen":           fmt.Sprintf(":%d", spec.GetPort()),
		"probe-listen":     fmt.Sprintf(":%d", probePort(spec)),
		"socket":           socketPath,
		"shutdown-timeout": spec.GetShutdownTimeout().String(),
		// Why the server gave up lands in the pod's status, and from there in lastFailure.
		"termination-message-path": corev1.TerminationMessagePathDefault,
		// The startup probe's budget is also the longest rkllm_init may take.
		"init-timeout": spec.GetStartupTimeout().String(),
		"log-format":   spec.GetLogFormat(),
		// The id requests name: the gateway routes by it, so the server must accept it.
		"served-model-name": model.GetServedModelName(),
	}
	if s := spec.Server; s != nil {
		if s.APIKeySecretRef != nil {
			c["api-key-file"] = path.Join(configDir, apiKeyDir, apiKeyFileName)
		}
		setIfNotNil(c, "max-queue", s.MaxQueue)
	}
	if rt, ok := requestTimeout(spec); ok {
		c["request-timeout"] = rt.String()
	}
	if p := spec.Parameters; p != nil {
		setIfNotNil(c, "max-context-len", p.MaxContextLen)
		setIfNotNil(c, "max-new-tokens", p.MaxNewTokens)
		setIfNotNil(c, "top-k", p.TopK)
		setIfNotNil(c, "top-p", p.TopP)
		setIfNotNil(c, "temperature", p.Temperature)
		setIfNotNil(c, "repeat-penalty", p.RepeatPenalty)
		setIfNotNil(c, "frequency-penalty", p.FrequencyPenalty)
		setIfNotNil(c, "presence-penalty", p.PresencePenalty)
		setIfNotNil(c, "mirostat", p.Mirostat)
		setIfNotNil(c, "mirostat-tau", p.MirostatTau)
		setIfNotNil(c, "mirostat-eta", p.MirostatEta)
		setIfNotNil(c, "n-keep", p.NKeep)
		setIfNotNil(c, "skip-special-token", p.SkipSpecialToken)
		if p.EmbedFlash != nil {
			// The server's flag is the runtime's int8 field.
			c["embed-flash"] = boolToInt(*p.EmbedFlash)
		}
		setIfNotNil(c, "n-batch", p.NBatch)
		setIfNotNil(c, "base-domain-id", p.BaseDomainID)
		if cpus := p.EnabledCPUs; cpus != nil {
			setIfNotNil(c, "enabled-cpus-num", cpus.Count)
			setIfNotNil(c, "enabled-cpus-mask", cpus.Mask)
		}
	}
	if t := spec.ChatTemplate; t != nil {
		setIfNotNil(c, "chat-template-system", t.System)
		setIfNotNil(c, "chat-template-prefix", t.Prefix)
		setIfNotNil(c, "chat-template-postfix", t.Postfix)
		setIfNotNil(c, "chat-template", t.Preset)
	}
	var loras []string
	for i, l := range spec.LoraAdapters {
		entry := l.Name + "=" + files.loras[i].path
		if l.Scale != nil {
			entry += ":" + *l.Scale
		}
		loras = append(loras, entry)
	}
	if len(loras) > 0 {
		c["lora"] = loras
	}
	if files.promptCache != nil {
		c["prompt-cache"] = files.promptCache.path
	}
	// encoding/json sorts map keys: the same spec always gives the same bytes, and so
	// the same rollout hash.
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding server configuration: %w", err)
	}
	return append(b, '\n'), nil
}

func boolToInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setIfNotNil sets c[key] to *v when v is set.
// The server's defaults the operator builds on (a contract test checks them).
const (
	serverRequestTimeout = 10 * time.Minute
	serverMinPrefillRate = 10 // prompt tokens per second
)

// requestTimeout is the server's request timeout: the one the user set, else for a
// model whose context the user set, the server's default plus a full context's prefill
// at the server's minimum prefill rate, which its watchdog allows before the first
// token, so a prompt that fills a long context is not cut while the NPU prefills it.
// ok is false when the server's default applies.
func requestTimeout(spec *inferencev1alpha1.RKLLMModelSpec) (time.Duration, bool) {
	if s := spec.Server; s != nil && s.RequestTimeout != nil {
		return s.RequestTimeout.Duration, true
	}
	if p := spec.Parameters; p != nil && p.MaxContextLen != nil {
		return serverRequestTimeout + time.Duration(max(*p.MaxContextLen, 0))*time.Second/serverMinPrefillRate, true
	}
	return 0, false
}

func setIfNotNil[T any](c map[string]any, key string, v *T) {
	if v != nil {
		c[key] = *v
	}
}

// runtimeLib is the runtime library the server loads.
func runtimeLib(spec *inferencev1alpha1.RKLLMModelSpec) string {
	if rt := spec.Runtime; rt != nil {
		if rt.HostLibraryPath != "" {
			return hostLibraryPath
		}
		if rt.LibraryPath != "" {
			return rt.LibraryPath
		}
	}
	return inferencev1alpha1.DefaultLibraryPath
}

// desiredConfigMap holds the server configuration file.
func desiredConfigMap(model *inferencev1alpha1.RKLLMModel, config []byte) *corev1ac.ConfigMapApplyConfiguration {
	return corev1ac.ConfigMap(ConfigMapName(model), model.Namespace).
		WithLabels(objectLabels(model)).
		WithOwnerReferences(ownerReference(model)).
		WithData(map[string]string{configFileName: string(config)})
}

// desiredService exposes the server port, inside the cluster unless spec.service asks
// for a NodePort or LoadBalancer. Annotations the spec no longer lists are removed by
// the apply (the operator owns only the fields it applies); those other controllers add
// stay.
func desiredService(model *inferencev1alpha1.RKLLMModel) *corev1ac.ServiceApplyConfiguration {
	svc := corev1ac.Service(model.Name, model.Namespace)
	if s := model.Spec.Service; s != nil && len(s.Annotations) > 0 {
		svc.WithAnnotations(s.Annotations)
	}
	return svc.
		WithLabels(objectLabels(model)).
		WithOwnerReferences(ownerReference(model)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(model.Spec.GetServiceType()).
			WithSelector(selectorLabels(model)).
			WithPorts(corev1ac.ServicePort().
				WithName(httpPortName).
				WithProtocol(corev1.ProtocolTCP).
				WithAppProtocol("http").
				WithPort(model.Spec.GetPort()).
				WithTargetPort(intstr.FromString(httpPortName))))
}

// desiredDeployment runs the server. It is a pure function of the model, the
// operator's options, the server configuration (whose hash rolls the pods) and, when the
// model still stands for it, the revision recorded on the live Deployment, whose pod
// template it keeps (revision.go).
func desiredDeployment(model *inferencev1alpha1.RKLLMModel, opts Options, config []byte, kept *revision) (*appsv1ac.DeploymentApplyConfiguration, error) {
	spec := &model.Spec
	sh, err := specHash(model)
	if err != nil {
		return nil, err
	}
	rev := revision{Config: string(config), SpecHash: sh, Generation: model.Generation}
	if kept != nil {
		rev.Template = kept.Template
	} else if rev.Template, err = desiredPodTemplate(model, opts, config); err != nil {
		return nil, err
	}
	record, err := json.Marshal(rev)
	if err != nil {
		return nil, fmt.Errorf("encoding the revision: %w", err)
	}
	replicas := spec.GetReplicas()
	if spec.Suspend {
		replicas = 0
	}
	// A Deployment reports ProgressDeadlineExceeded when a rollout makes no progress for
	// this long; give it the startup budget plus time for a download.
	progressDeadline := int32(spec.GetStartupTimeout().Seconds()) + 600
	return appsv1ac.Deployment(model.Name, model.Namespace).
		WithLabels(objectLabels(model)).
		WithAnnotations(map[string]string{AnnotationRevision: string(record)}).
		WithOwnerReferences(ownerReference(model)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(model))).
			WithStrategy(deploymentStrategy(spec)).
			WithRevisionHistoryLimit(revisionHistoryLimit).
			WithProgressDeadlineSeconds(progressDeadline).
			WithTemplate(rev.Template)), nil
}

// desiredPodTemplate is the server pod template built from the spec, with the rollout
// hash of the server configuration (less what the server takes while running) and the
// pod spec.
func desiredPodTemplate(model *inferencev1alpha1.RKLLMModel, opts Options, config []byte) (*corev1ac.PodTemplateSpecApplyConfiguration, error) {
	podSpec, err := desiredPodSpec(model, opts)
	if err != nil {
		return nil, err
	}
	hashed, err := configForHash(&model.Spec, config)
	if err != nil {
		return nil, err
	}
	podLabels, podAnnotations := podMetadata(model)
	hash, err := rolloutHash(hashed, podSpec, podLabels, podAnnotations)
	if err != nil {
		return nil, err
	}
	podAnnotations[AnnotationRolloutHash] = hash
	return corev1ac.PodTemplateSpec().
		WithLabels(podLabels).
		WithAnnotations(podAnnotations).
		WithSpec(podSpec), nil
}

// deploymentStrategy replaces servers one at a time when there are several: the old pod
// gives its NPU unit back before a new one is created (no surge: nodes have no spare NPU
// to surge onto, and a surged pod would wait Pending), while the other replicas keep
// serving. A single replica is replaced with Recreate: it cannot overlap with its
// successor on the exclusive NPU either way.
func deploymentStrategy(spec *inferencev1alpha1.RKLLMModelSpec) *appsv1ac.DeploymentStrategyApplyConfiguration {
	if spec.GetReplicas() > 1 {
		return appsv1ac.DeploymentStrategy().
			WithType(appsv1.RollingUpdateDeploymentStrategyType).
			WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
				WithMaxSurge(intstr.FromInt32(0)).
				WithMaxUnavailable(intstr.FromInt32(1)))
	}
	return appsv1ac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType)
}

// desiredPodDisruptionBudget lets voluntary disruptions (a node drain, a cluster
// autoscaler) take one server pod at a time. Pods that are not ready (crash-looping)
// may always be evicted, so a broken model never blocks a drain.
func desiredPodDisruptionBudget(model *inferencev1alpha1.RKLLMModel) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(model.Name, model.Namespace).
		WithLabels(objectLabels(model)).
		WithOwnerReferences(ownerReference(model)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(model))).
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithUnhealthyPodEvictionPolicy(policyv1.AlwaysAllow))
}

// podMetadata are the server pods' labels and annotations: the user's podLabels and
// podAnnotations, then the operator's labels (the CRD refuses user keys that would
// collide with them, so this order is only a second line of defence).
func podMetadata(model *inferencev1alpha1.RKLLMModel) (labels, annotations map[string]string) {
	labels = map[string]string{}
	for k, v := range model.Spec.PodLabels {
		labels[k] = string(v)
	}
	for k, v := range objectLabels(model) {
		labels[k] = v
	}
	annotations = map[string]string{}
	for k, v := range model.Spec.PodAnnotations {
		annotations[k] = v
	}
	return labels, annotations
}

// rolloutHash is a short hash of the server configuration, the pod spec and the pod
// template's labels and annotations: what the Deployment rolls the pods for.
func rolloutHash(config []byte, podSpec *corev1ac.PodSpecApplyConfiguration, podLabels, podAnnotations map[string]string) (string, error) {
	h := sha256.New()
	h.Write(config)
	for _, part := range []any{podSpec, podLabels, podAnnotations} {
		// encoding/json sorts map keys, so equal inputs give equal bytes.
		b, err := json.Marshal(part)
		if err != nil {
			return "", fmt.Errorf("encoding the pod template: %w", err)
		}
		h.Write([]byte{0})
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// terminationGracePeriodSeconds covers the preStop pause, then the server's longest
// exit after SIGTERM (its shutdown timeout plus serverExitMargin) and graceSlack, in
// whole seconds rounded up: the kubelet never SIGKILLs a server that is shutting down on
// time, which would cut its last responses and skip destroying the model.
func terminationGracePeriodSeconds(spec *inferencev1alpha1.RKLLMModelSpec) int64 {
	d := spec.GetShutdownTimeout() + serverExitMargin + graceSlack
	return preStopSeconds + int64(math.Ceil(d.Seconds()))
}

// desiredPodSpec is the server pod: fetch init containers for downloads, then the server.
func desiredPodSpec(model *inferencev1alpha1.RKLLMModel, opts Options) (*corev1ac.PodSpecApplyConfiguration, error) {
	spec := &model.Spec
	files := modelFiles(model).all()
	image := opts.DefaultImage
	var pullPolicy corev1.PullPolicy
	if rt := spec.Runtime; rt != nil {
		if rt.Image != "" {
			image = rt.Image
		}
		pullPolicy = rt.ImagePullPolicy
	}
	if image == "" {
		return nil, fmt.Errorf("no server image: set spec.runtime.image or the operator's --default-server-image")
	}
	resources := serverResources(spec)
	grace := terminationGracePeriodSeconds(spec)

	ps := corev1ac.PodSpec().
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false).
		WithTerminationGracePeriodSeconds(grace).
		WithSecurityContext(podSecurityContext(spec)).
		WithVolumes(volumes(model, files)...)
	for _, f := range files {
		if f.url == "" {
			continue
		}
		ps.WithInitContainers(fetchContainer(spec, f, image, pullPolicy, resources))
	}
	ps.WithContainers(serverContainerSpec(model, files, image, pullPolicy, resources))

	if spec.GetDeviceTree() == inferencev1alpha1.DeviceTreeUnmaskedProc && !spec.IsPrivileged() {
		// An unmasked /proc is allowed only inside a user namespace.
		ps.WithHostUsers(false)
	}
	if err := withScheduling(ps, model); err != nil {
		return nil, err
	}
	if err := withUserSettings(ps, spec); err != nil {
		return nil, err
	}
	return ps, nil
}

// withUserSettings applies the spec's escape hatches: env and envFrom to every container
// (the downloads need proxies as much as the server), args after the server's own, and
// the runtime class.
func withUserSettings(ps *corev1ac.PodSpecApplyConfiguration, spec *inferencev1alpha1.RKLLMModelSpec) error {
	if spec.RuntimeClassName != nil {
		ps.WithRuntimeClassName(*spec.RuntimeClassName)
	}
	var env []*corev1ac.EnvVarApplyConfiguration
	if err := convert(spec.Env, &env); err != nil {
		return fmt.Errorf("spec.env: %w", err)
	}
	var envFrom []*corev1ac.EnvFromSourceApplyConfiguration
	if err := convert(spec.EnvFrom, &envFrom); err != nil {
		return fmt.Errorf("spec.envFrom: %w", err)
	}
	add := func(c *corev1ac.ContainerApplyConfiguration) {
		c.WithEnv(env...).WithEnvFrom(envFrom...)
		if c.Name != nil && *c.Name == serverContainer {
			c.WithArgs(spec.Args...)
		}
	}
	for i := range ps.InitContainers {
		add(&ps.InitContainers[i])
	}
	for i := range ps.Containers {
		add(&ps.Containers[i])
	}
	return nil
}

// withScheduling passes the model's scheduling fields and pull secrets on to the pod,
// with the placement the model needs (podAffinity).
func withScheduling(ps *corev1ac.PodSpecApplyConfiguration, model *inferencev1alpha1.RKLLMModel) error {
	spec := &model.Spec
	if len(spec.NodeSelector) > 0 {
		ps.WithNodeSelector(spec.NodeSelector)
	}
	if spec.PriorityClassName != "" {
		ps.WithPriorityClassName(spec.PriorityClassName)
	}
	if len(spec.Tolerations) > 0 {
		var tols []*corev1ac.TolerationApplyConfiguration
		if err := convert(spec.Tolerations, &tols); err != nil {
			return fmt.Errorf("spec.tolerations: %w", err)
		}
		ps.WithTolerations(tols...)
	}
	if a := podAffinity(model); a != nil {
		aff := &corev1ac.AffinityApplyConfiguration{}
		if err := convert(a, aff); err != nil {
			return fmt.Errorf("spec.affinity: %w", err)
		}
		ps.WithAffinity(aff)
	}
	if rt := spec.Runtime; rt != nil {
		for _, s := range rt.ImagePullSecrets {
			ps.WithImagePullSecrets(corev1ac.LocalObjectReference().WithName(s.Name))
		}
	}
	return nil
}

// convert copies a typed API value into its apply configuration; both share the JSON form.
func convert(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// serverResources are the server container's requests and limits: the user's, memory
// defaults where the user set none, and the NPU units.
func serverResources(spec *inferencev1alpha1.RKLLMModelSpec) *corev1ac.ResourceRequirementsApplyConfiguration {
	requests := corev1.ResourceList{}
	limits := corev1.ResourceList{}
	if r := spec.Resources; r != nil {
		for k, v := range r.Requests {
			requests[k] = v
		}
		for k, v := range r.Limits {
			limits[k] = v
		}
	}
	defReq := resource.MustParse(inferencev1alpha1.DefaultMemoryRequest)
	defLim := resource.MustParse(inferencev1alpha1.DefaultMemoryLimit)
	req, hasReq := requests[corev1.ResourceMemory]
	lim, hasLim := limits[corev1.ResourceMemory]
	switch {
	case !hasReq && !hasLim:
		requests[corev1.ResourceMemory] = defReq
		limits[corev1.ResourceMemory] = defLim
	case hasReq && !hasLim:
		// Never a limit below the request: that pod would be refused.
		if req.Cmp(defLim) > 0 {
			limits[corev1.ResourceMemory] = req
		} else {
			limits[corev1.ResourceMemory] = defLim
		}
	case !hasReq && hasLim:
		if lim.Cmp(defReq) < 0 {
			requests[corev1.ResourceMemory] = lim
		} else {
			requests[corev1.ResourceMemory] = defReq
		}
	}
	npu := *resource.NewQuantity(int64(spec.GetNPUUnits()), resource.DecimalSI)
	// Extended resources cannot be overcommitted: request equals limit.
	requests[inferencev1alpha1.NPUResourceName] = npu
	limits[inferencev1alpha1.NPUResourceName] = npu
	return corev1ac.ResourceRequirements().WithRequests(requests).WithLimits(limits)
}

// fetchResources are the init containers' requests and limits: the server's memory and
// CPU (an init container runs alone, so this costs the pod nothing); fetchContainer adds
// the NPU for the node cache.
func fetchResources(server *corev1ac.ResourceRequirementsApplyConfiguration) *corev1ac.ResourceRequirementsApplyConfiguration {
	keep := func(in *corev1.ResourceList) corev1.ResourceList {
		out := corev1.ResourceList{}
		for _, k := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if v, ok := (*in)[k]; ok {
				out[k] = v
			}
		}
		return out
	}
	return corev1ac.ResourceRequirements().WithRequests(keep(server.Requests)).WithLimits(keep(server.Limits))
}

// podSecurityContext is hardened unless the model asks for privileged: seccomp
// RuntimeDefault, and for a non-root user an fsGroup so the pod can write its emptyDir
// cache and read its volumes.
func podSecurityContext(spec *inferencev1alpha1.RKLLMModelSpec) *corev1ac.PodSecurityContextApplyConfiguration {
	sc := corev1ac.PodSecurityContext()
	if spec.Security != nil && len(spec.Security.SupplementalGroups) > 0 {
		sc.WithSupplementalGroups(spec.Security.SupplementalGroups...)
	}
	if spec.IsPrivileged() {
		return sc
	}
	sc.WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
	if uid := spec.GetRunAsUser(); uid != 0 {
		sc.WithFSGroup(uid).
			// A large PVC is not chowned file by file at every start.
			WithFSGroupChangePolicy(corev1.FSGroupChangeOnRootMismatch)
	}
	return sc
}

// containerSecurityContext is the hardened context of the server and fetch containers,
// running as uid (0 means root, still without capabilities).
func containerSecurityContext(spec *inferencev1alpha1.RKLLMModelSpec, uid int64) *corev1ac.SecurityContextApplyConfiguration {
	if spec.IsPrivileged() {
		return corev1ac.SecurityContext().WithPrivileged(true).WithRunAsUser(0)
	}
	sc := corev1ac.SecurityContext().
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
		WithRunAsUser(uid).
		WithRunAsGroup(uid).
		WithRunAsNonRoot(uid != 0)
	if spec.GetDeviceTree() == inferencev1alpha1.DeviceTreeUnmaskedProc {
		sc.WithProcMount(corev1.UnmaskedProcMount)
	}
	return sc
}

// usesHostPathCache reports whether downloads go to a folder on the node.
func usesHostPathCache(spec *inferencev1alpha1.RKLLMModelSpec) bool {
	return spec.Model.GetCache() == inferencev1alpha1.FetchCacheHostPath
}

// fetchContainer downloads one file with `rkllm-server fetch`. With the node cache (the
// default) it requests the server's NPU units: the kubelet hands the same units to the
// server container afterwards, and with them come the device plugin's mounts, the
// node's model cache among them. Its outcome goes to the termination message, which
// the status reports (status.modelFetches).
func fetchContainer(spec *inferencev1alpha1.RKLLMModelSpec, f modelFile, image string, pull corev1.PullPolicy,
	server *corev1ac.ResourceRequirementsApplyConfiguration) *corev1ac.ContainerApplyConfiguration {
	args := []string{"fetch", "--url", f.url, "--dest", f.path}
	if f.sha256 != "" {
		args = append(args, "--sha256", f.sha256)
	}
	args = append(args, "--result-file", terminationLogPath)
	resources := fetchResources(server)
	if spec.Model.GetCache() == inferencev1alpha1.FetchCacheNode {
		npu := *resource.NewQuantity(int64(spec.GetNPUUnits()), resource.DecimalSI)
		(*resources.Requests)[inferencev1alpha1.NPUResourceName] = npu
		(*resources.Limits)[inferencev1alpha1.NPUResourceName] = npu
	} else {
		// Not the node's cache, even where the plugin offers one.
		args = append(args, "--cache-dir=")
	}
	uid := spec.GetRunAsUser()
	if usesHostPathCache(spec) {
		// The kubelet creates a missing cache folder owned by root, and fsGroup does not
		// apply to hostPath volumes: only root (without capabilities) can write there.
		uid = 0
	}
	c := corev1ac.Container().
		WithName(f.fetchContainerName()).
		WithImage(image).
		WithCommand(serverBinary).
		WithArgs(args...).
		WithResources(resources).
		WithSecurityContext(containerSecurityContext(spec, uid)).
		// The fetch command's last line says why it failed; it lands in status.lastFailure.
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName(volModels).WithMountPath(modelsDir),
			corev1ac.VolumeMount().WithName(volTmp).WithMountPath("/tmp"),
		)
	if pull != "" {
		c.WithImagePullPolicy(pull)
	}
	return c
}

// probePort is the server's probe listener (--probe-listen), which client connections
// cannot fill: 8081, or 8082 when the model's HTTP port is 8081. The Service does not
// expose it.
func probePort(spec *inferencev1alpha1.RKLLMModelSpec) int32 {
	if spec.GetPort() == 8081 {
		return 8082
	}
	return 8081
}

// serverContainerSpec runs `rkllm-server serve` with the NPU, probes and a graceful stop.
func serverContainerSpec(model *inferencev1alpha1.RKLLMModel, files []modelFile, image string, pull corev1.PullPolicy,
	resources *corev1ac.ResourceRequirementsApplyConfiguration) *corev1ac.ContainerApplyConfiguration {
	spec := &model.Spec
	probe := func(p string) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath(p).WithPort(intstr.FromString(probePortName)))
	}
	startupFailures := int32(spec.GetStartupTimeout().Seconds()) / startupProbePeriod
	if startupFailures < 1 {
		startupFailures = 1
	}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName(volConfig).WithMountPath(configDir).WithReadOnly(true),
		corev1ac.VolumeMount().WithName(volModels).WithMountPath(modelsDir),
		corev1ac.VolumeMount().WithName(volRun).WithMountPath(socketDir),
		corev1ac.VolumeMount().WithName(volTmp).WithMountPath("/tmp"),
	}
	for _, f := range files {
		if f.hostPath != "" {
			mounts = append(mounts, corev1ac.VolumeMount().WithName(f.hostVolumeName()).WithMountPath(f.path).WithReadOnly(true))
		}
	}
	if model.Spec.Model.PVC != nil {
		mounts = append(mounts, corev1ac.VolumeMount().WithName(volModelPVC).WithMountPath(path.Join(modelsDir, "pvc")).WithReadOnly(true))
	}
	if rt := spec.Runtime; rt != nil && rt.HostLibraryPath != "" {
		mounts = append(mounts, corev1ac.VolumeMount().WithName(volRuntimeLib).WithMountPath(hostLibraryPath).WithReadOnly(true))
	}
	if !spec.IsPrivileged() && spec.GetDeviceTree() == inferencev1alpha1.DeviceTreeHostPath {
		mounts = append(mounts, corev1ac.VolumeMount().WithName(volDeviceTree).WithMountPath(deviceTreePath).WithReadOnly(true))
	}

	c := corev1ac.Container().
		WithName(serverContainer).
		WithImage(image).
		WithCommand(serverBinary).
		WithArgs("serve", "--config", path.Join(configDir, configFileName)).
		WithPorts(corev1ac.ContainerPort().WithName(httpPortName).WithContainerPort(spec.GetPort()).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName(probePortName).WithContainerPort(probePort(spec)).WithProtocol(corev1.ProtocolTCP)).
		WithResources(resources).
		WithStartupProbe(probe("/readyz").
			WithPeriodSeconds(startupProbePeriod).WithTimeoutSeconds(5).WithFailureThreshold(startupFailures)).
		WithReadinessProbe(probe("/readyz").
			WithPeriodSeconds(5).WithTimeoutSeconds(3).WithFailureThreshold(3)).
		WithLivenessProbe(probe("/livez").
			WithPeriodSeconds(10).WithTimeoutSeconds(5).WithFailureThreshold(3)).
		WithLifecycle(corev1ac.Lifecycle().WithPreStop(corev1ac.LifecycleHandler().
			WithSleep(corev1ac.SleepAction().WithSeconds(preStopSeconds)))).
		WithSecurityContext(containerSecurityContext(spec, spec.GetRunAsUser())).
		// The server writes why it failed there (termination-message-path in server.json);
		// without it, its last log lines.
		WithTerminationMessagePath(corev1.TerminationMessagePathDefault).
		WithTerminationMessagePolicy(corev1.TerminationMessageFallbackToLogsOnError).
		WithVolumeMounts(mounts...)
	if pull != "" {
		c.WithImagePullPolicy(pull)
	}
	if rt := spec.Runtime; rt != nil && len(rt.Env) > 0 {
		env := make([]*corev1ac.EnvVarApplyConfiguration, 0, len(rt.Env))
		// EnvVar and its apply configuration share one JSON form: this cannot fail.
		if err := convert(rt.Env, &env); err == nil {
			c.WithEnv(env...)
		}
	}
	return c
}

// volumes of the server pod.
func volumes(model *inferencev1alpha1.RKLLMModel, files []modelFile) []*corev1ac.VolumeApplyConfiguration {
	spec := &model.Spec
	configSources := []*corev1ac.VolumeProjectionApplyConfiguration{
		corev1ac.VolumeProjection().WithConfigMap(corev1ac.ConfigMapProjection().
			WithName(ConfigMapName(model)).
			WithItems(corev1ac.KeyToPath().WithKey(configFileName).WithPath(configFileName))),
	}
	if s := spec.Server; s != nil && s.APIKeySecretRef != nil {
		configSources = append(configSources, corev1ac.VolumeProjection().WithSecret(corev1ac.SecretProjection().
			WithName(s.APIKeySecretRef.Name).
			WithItems(corev1ac.KeyToPath().WithKey(s.APIKeySecretRef.GetKey()).
				WithPath(path.Join(apiKeyDir, apiKeyFileName)).WithMode(0o440))))
	}
	vols := []*corev1ac.VolumeApplyConfiguration{
		// One projected volume: server.json and the API key under /etc/rkllm without
		// nesting one volume inside another.
		corev1ac.Volume().WithName(volConfig).WithProjected(corev1ac.ProjectedVolumeSource().
			WithDefaultMode(0o444).WithSources(configSources...)),
		modelsVolume(spec),
		corev1ac.Volume().WithName(volRun).WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
		corev1ac.Volume().WithName(volTmp).WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
	}
	for _, f := range files {
		if f.hostPath != "" {
			vols = append(vols, corev1ac.Volume().WithName(f.hostVolumeName()).
				WithHostPath(corev1ac.HostPathVolumeSource().WithPath(f.hostPath).WithType(corev1.HostPathFile)))
		}
	}
	if pvc := spec.Model.PVC; pvc != nil {
		vols = append(vols, corev1ac.Volume().WithName(volModelPVC).
			WithPersistentVolumeClaim(corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(pvc.ClaimName).WithReadOnly(true)))
	}
	if rt := spec.Runtime; rt != nil && rt.HostLibraryPath != "" {
		vols = append(vols, corev1ac.Volume().WithName(volRuntimeLib).
			WithHostPath(corev1ac.HostPathVolumeSource().WithPath(rt.HostLibraryPath).WithType(corev1.HostPathFile)))
	}
	if !spec.IsPrivileged() && spec.GetDeviceTree() == inferencev1alpha1.DeviceTreeHostPath {
		vols = append(vols, corev1ac.Volume().WithName(volDeviceTree).
			WithHostPath(corev1ac.HostPathVolumeSource().WithPath(hostDeviceTree).WithType(corev1.HostPathDirectory)))
	}
	return vols
}

// modelsVolume is the download cache mounted at /models.
func modelsVolume(spec *inferencev1alpha1.RKLLMModelSpec) *corev1ac.VolumeApplyConfiguration {
	v := corev1ac.Volume().WithName(volModels)
	if usesHostPathCache(spec) {
		return v.WithHostPath(corev1ac.HostPathVolumeSource().
			WithPath(spec.Model.Cache.HostPath.GetPath()).WithType(corev1.HostPathDirectoryOrCreate))
	}
	ed := corev1ac.EmptyDirVolumeSource()
	if c := spec.Model.Cache; c != nil && c.EmptyDir != nil && c.EmptyDir.SizeLimit != nil {
		ed.WithSizeLimit(*c.EmptyDir.SizeLimit)
	}
	return v.WithEmptyDir(ed)
}
