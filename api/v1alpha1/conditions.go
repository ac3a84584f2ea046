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

// Condition types of an RKLLMModel. Ready, ModelAvailable, Progressing and Degraded are
// always present; Reconciling and Stalled (kstatus) only while true, so tools that read
// kstatus (Flux, kpt, cli-utils) wait for a model the same way as for built-in kinds.
// The kstatus contract holds on its own, without falling back on Ready: whenever Ready is
// not True, exactly one of Reconciling (still converging) and Stalled (will not converge
// without a change) is True.
const (
	// ConditionReady is the roll-up: every replica serves the current spec, or the model
	// is scaled to zero or suspended as asked (reasons ScaledToZero, Suspended).
	// `kubectl wait --for=condition=Ready rkm/NAME` waits for it. A transient error
	// talking to the cluster leaves it as it was.
	ConditionReady = "Ready"
	// ConditionModelAvailable is true once the model file is in place for a server pod
	// of the current spec: downloaded, or mounted from the node or a PVC.
	ConditionModelAvailable = "ModelAvailable"
	// ConditionProgressing is true while server pods of the current spec are being
	// created, download or load.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is true when something is wrong that will not fix itself:
	// a failed download, a crashing server, an image that cannot be pulled.
	ConditionDegraded = "Degraded"
	// ConditionReconciling (kstatus) is present and true while the model converges: pods
	// being created, scheduled, downloading, loading or replaced, or a transient error
	// being retried.
	ConditionReconciling = "Reconciling"
	// ConditionStalled (kstatus) is present and true when the model will not converge
	// without a change by someone: a crash loop, a failed download, an image that cannot
	// be pulled, pods the cluster refuses, a missing PVC or Secret, a spec the cluster
	// refuses, an error that lasted. The operator keeps retrying where a retry can help,
	// and drops Stalled once the cause is gone.
	ConditionStalled = "Stalled"
)

// Condition reasons. Each names the cause a user acts on; messages give the details.
const (
	// ReasonReady: every replica is ready.
	ReasonReady = "Ready"
	// ReasonSuspended: spec.suspend is true.
	ReasonSuspended = "Suspended"
	// ReasonScaledToZero: spec.replicas is 0 and no server pod is left.
	ReasonScaledToZero = "ScaledToZero"
	// ReasonScalingDown: server pods are stopping after a scale-down.
	ReasonScalingDown = "ScalingDown"
	// ReasonPending: server pods are being created, scheduled or started.
	ReasonPending = "Pending"
	// ReasonUnschedulable: the scheduler finds no node for a server pod, often because
	// no node has a free rockchip.com/npu.
	ReasonUnschedulable = "Unschedulable"
	// ReasonDownloading: an init container is downloading model files.
	ReasonDownloading = "Downloading"
	// ReasonLoading: the server is loading the model.
	ReasonLoading = "Loading"
	// ReasonRollingOut: pods of an older spec are being replaced.
	ReasonRollingOut = "RollingOut"
	// ReasonRolloutComplete: every pod runs the current spec.
	ReasonRolloutComplete = "RolloutComplete"
	// ReasonAvailable: the model file is in place.
	ReasonAvailable = "Available"
	// ReasonAsExpected: nothing is wrong.
	ReasonAsExpected = "AsExpected"
	// ReasonDownloadFailed: an init container failed to download a file.
	ReasonDownloadFailed = "DownloadFailed"
	// ReasonServerFailed: the server container exits or keeps restarting.
	ReasonServerFailed = "ServerFailed"
	// ReasonImagePullFailed: the server image cannot be pulled.
	ReasonImagePullFailed = "ImagePullFailed"
	// ReasonContainerConfigError: the kubelet cannot create a container from its spec.
	ReasonContainerConfigError = "ContainerConfigError"
	// ReasonProgressDeadlineExceeded: the Deployment made no progress for too long.
	ReasonProgressDeadlineExceeded = "ProgressDeadlineExceeded"
	// ReasonReplicaFailure: the Deployment cannot create pods (quota, admission).
	ReasonReplicaFailure = "ReplicaFailure"
	// ReasonPVCNotFound: model.pvc.claimName names a PersistentVolumeClaim that does not exist.
	ReasonPVCNotFound = "PVCNotFound"
	// ReasonSecretNotFound: the kubelet cannot find a Secret the server pod mounts, such
	// as the one server.apiKeySecretRef names. The operator does not read Secrets: the
	// kubelet's report (an event or the container's state) says so.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyNotFound: the Secret exists but has no such key (from the kubelet's
	// report, as for SecretNotFound).
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	// ReasonVolumeMountFailed: the kubelet cannot mount a volume of the server pod for a
	// reason other than a missing Secret; it keeps trying.
	ReasonVolumeMountFailed = "VolumeMountFailed"
	// ReasonNameConflict: an object the model needs exists and belongs to someone else.
	ReasonNameConflict = "NameConflict"
	// ReasonInvalidSpec: the cluster refused an object built from the spec.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonReconcileFailed: the operator hit an error talking to the cluster and retries
	// with backoff. While the error is recent only Reconciling carries it and Ready keeps
	// what it said; once it lasts past the operator's --error-grace-period, Ready turns
	// False and Stalled True with this reason.
	ReasonReconcileFailed = "ReconcileFailed"
)
