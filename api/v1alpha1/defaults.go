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
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Defaults of the spec. The CRD applies the ones it can as OpenAPI defaults (so
// `kubectl get -o yaml` shows them); the getters below apply the same values to objects
// that never went through the API server, such as those in unit tests.
const (
	DefaultABI                   = "1.3"
	DefaultReplicas        int32 = 1
	DefaultNPUUnits        int32 = 1
	DefaultPort            int32 = 8080
	DefaultShutdownTimeout       = 30 * time.Second
	DefaultStartupTimeout        = 10 * time.Minute
	DefaultCacheHostPath         = "/var/lib/rkllm/models"
	DefaultRunAsUser       int64 = 65532
	DefaultLibraryPath           = "librkllmrt.so"
	DefaultAPIKeySecretKey       = "api-key"
	DefaultLogFormat             = "json"
	DefaultDeviceTree            = DeviceTreeDevicePlugin
	DefaultServiceType           = corev1.ServiceTypeClusterIP
	DefaultColocation            = ColocationForbidden
	DefaultMinReplicas     int32 = 0
	DefaultMaxReplicas     int32 = 1
	DefaultScaleDownDelay        = 15 * time.Minute
	DefaultPriority        int32 = 0
	// DefaultMemoryRequest and DefaultMemoryLimit apply when spec.resources sets no memory.
	DefaultMemoryRequest = "2Gi"
	DefaultMemoryLimit   = "8Gi"
)

// NPUResourceName is the extended resource the device plugin advertises.
const NPUResourceName = "rockchip.com/npu"

// AnnotationScaledUpAt is the time (RFC 3339) the gateway last scaled the model up; an
// eviction leaves a model alone for the gateway's minimum lifetime after it.
const AnnotationScaledUpAt = "inference.rkllm.io/scaled-up-at"

// LabelNPUSoC is the node label naming the node's SoC (a Platform value), which the
// device plugin writes through node-feature-discovery.
const LabelNPUSoC = "rockchip.com/npu.soc"

// GetReplicas returns spec.replicas or its default.
func (s *RKLLMModelSpec) GetReplicas() int32 {
	if s.Replicas == nil {
		return DefaultReplicas
	}
	return *s.Replicas
}

// GetNPUUnits returns spec.npu.units or its default.
func (s *RKLLMModelSpec) GetNPUUnits() int32 {
	if s.NPU == nil || s.NPU.Units == nil {
		return DefaultNPUUnits
	}
	return *s.NPU.Units
}

// GetColocation returns spec.npu.colocation or its default.
func (s *RKLLMModelSpec) GetColocation() Colocation {
	if s.NPU == nil || s.NPU.Colocation == "" {
		return DefaultColocation
	}
	return s.NPU.Colocation
}

// GetABI returns spec.runtime.abi or its default.
func (s *RKLLMModelSpec) GetABI() string {
	if s.Runtime == nil || s.Runtime.ABI == "" {
		return DefaultABI
	}
	return s.Runtime.ABI
}

// GetPort returns spec.server.port or its default.
func (s *RKLLMModelSpec) GetPort() int32 {
	if s.Server == nil || s.Server.Port == nil {
		return DefaultPort
	}
	return *s.Server.Port
}

// GetShutdownTimeout returns spec.server.shutdownTimeout or its default.
func (s *RKLLMModelSpec) GetShutdownTimeout() time.Duration {
	if s.Server == nil || s.Server.ShutdownTimeout == nil {
		return DefaultShutdownTimeout
	}
	return s.Server.ShutdownTimeout.Duration
}

// GetStartupTimeout returns spec.server.startupTimeout or its default.
func (s *RKLLMModelSpec) GetStartupTimeout() time.Duration {
	if s.Server == nil || s.Server.StartupTimeout == nil {
		return DefaultStartupTimeout
	}
	return s.Server.StartupTimeout.Duration
}

// GetLogFormat returns spec.server.logFormat or its default.
func (s *RKLLMModelSpec) GetLogFormat() string {
	if s.Server == nil || s.Server.LogFormat == "" {
		return DefaultLogFormat
	}
	return s.Server.LogFormat
}

// IsPrivileged reports spec.security.privileged.
func (s *RKLLMModelSpec) IsPrivileged() bool {
	return s.Security != nil && s.Security.Privileged != nil && *s.Security.Privileged
}

// GetDeviceTree returns spec.security.deviceTree or its default.
func (s *RKLLMModelSpec) GetDeviceTree() DeviceTreeAccess {
	if s.Security == nil || s.Security.DeviceTree == "" {
		return DefaultDeviceTree
	}
	return s.Security.DeviceTree
}

// GetRunAsUser returns spec.security.runAsUser or its default.
func (s *RKLLMModelSpec) GetRunAsUser() int64 {
	if s.Security == nil || s.Security.RunAsUser == nil {
		return DefaultRunAsUser
	}
	return *s.Security.RunAsUser
}

// GetKey returns the key or its default.
func (r *SecretKeyRef) GetKey() string {
	if r.Key == "" {
		return DefaultAPIKeySecretKey
	}
	return r.Key
}

// GetPath returns the cache folder or its default.
func (c *HostPathCache) GetPath() string {
	if c.Path == "" {
		return DefaultCacheHostPath
	}
	return c.Path
}

// GetServedModelName returns the model's id in the OpenAI-compatible API:
// spec.servedModelName or the RKLLMModel's name.
func (m *RKLLMModel) GetServedModelName() string {
	if m.Spec.ServedModelName != "" {
		return m.Spec.ServedModelName
	}
	return m.Name
}

// GetMinReplicas returns scaling.minReplicas or its default.
func (s *ScalingSpec) GetMinReplicas() int32 {
	if s == nil || s.MinReplicas == nil {
		return DefaultMinReplicas
	}
	return *s.MinReplicas
}

// GetMaxReplicas returns scaling.maxReplicas or its default.
func (s *ScalingSpec) GetMaxReplicas() int32 {
	if s == nil || s.MaxReplicas == nil {
		return DefaultMaxReplicas
	}
	return *s.MaxReplicas
}

// GetScaleDownDelay returns scaling.scaleDownDelay or its default.
func (s *ScalingSpec) GetScaleDownDelay() time.Duration {
	if s == nil || s.ScaleDownDelay == nil {
		return DefaultScaleDownDelay
	}
	return s.ScaleDownDelay.Duration
}

// GetPriority returns scaling.priority or its default.
func (s *ScalingSpec) GetPriority() int32 {
	if s == nil || s.Priority == nil {
		return DefaultPriority
	}
	return *s.Priority
}

// GetServiceType returns spec.service.type or its default.
func (s *RKLLMModelSpec) GetServiceType() corev1.ServiceType {
	if s.Service == nil || s.Service.Type == "" {
		return DefaultServiceType
	}
	return s.Service.Type
}

// GetCache returns where downloads are kept: Node (the default), Pod (emptyDir) or
// HostPath.
func (m *ModelSource) GetCache() FetchCache {
	switch c := m.Cache; {
	case c == nil, c.Node != nil:
		return FetchCacheNode
	case c.HostPath != nil:
		return FetchCacheHostPath
	case c.EmptyDir != nil:
		return FetchCachePod
	}
	return FetchCacheNode
}
