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
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

const currentHash = "cafe"

var (
	t0  = metav1.NewTime(time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC))
	t1  = metav1.NewTime(t0.Add(time.Minute))
	now = metav1.NewTime(t0.Add(time.Hour))
)

func deployment(gen, observed, replicas, updated, ready int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Generation: int64(gen)},
		Status: appsv1.DeploymentStatus{ObservedGeneration: int64(observed), Replicas: replicas, UpdatedReplicas: updated,
			ReadyReplicas: ready, AvailableReplicas: ready, Conditions: conds},
	}
}

func pod(name, hash string, status corev1.PodStatus, inits int) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{AnnotationRolloutHash: hash}},
		Status:     status,
	}
	for i := 0; i < inits; i++ {
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "fetch-model"})
	}
	return p
}

func running(name string, ready bool) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, Ready: ready, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
}

func terminated(name string, code int32, reason, msg string, at metav1.Time) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: msg, FinishedAt: at}}}
}

func crashLooping(name string, code int32, msg string, at metav1.Time) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, RestartCount: 4,
		State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: "Error", Message: msg, FinishedAt: at}},
	}
}

type want struct {
	phase       inferencev1alpha1.Phase
	conds       map[string]string // type -> "Status/Reason"; absent types must be absent
	observedGen int64
	failureExit *int32
	failureCont string
	failureTime *metav1.Time
	messageHas  string // in the Ready message
	// failureReason is the reason of a lastFailure without an exit code (a waiting container).
	failureReason string
	readyReplica  int32
	// kstatus is what cli-utils' kstatus computes; argo what the shipped Argo CD health
	// check says.
	kstatus status.Status
	argo    string
}

// Conditions of each kind of outcome, as "Status/Reason".
func converging(reason, available string) map[string]string {
	return map[string]string{
		"Ready": "False/" + reason, "Progressing": "True/" + reason, "Degraded": "False/AsExpected",
		"ModelAvailable": available, "Reconciling": "True/" + reason,
	}
}

func stalled(reason, available string) map[string]string {
	return map[string]string{
		"Ready": "False/" + reason, "Progressing": "False/" + reason, "Degraded": "True/" + reason,
		"ModelAvailable": available, "Stalled": "True/" + reason,
	}
}

func stopped(reason string) map[string]string {
	return map[string]string{
		"Ready": "True/" + reason, "Progressing": "False/" + reason, "Degraded": "False/" + reason,
		"ModelAvailable": "False/" + reason,
	}
}

func stopping(reason string) map[string]string {
	return map[string]string{
		"Ready": "False/ScalingDown", "Progressing": "True/ScalingDown", "Degraded": "False/" + reason,
		"ModelAvailable": "False/" + reason, "Reconciling": "True/ScalingDown",
	}
}

const (
	inProgress = status.InProgressStatus
	current    = status.CurrentStatus
	failed     = status.FailedStatus
)

// Every phase and failure the status derivation knows, with how kstatus and Argo CD see
// it: the kstatus contract is kept without kstatus' fallback on Ready (healthOf checks).
func TestSummarize(t *testing.T) {
	fetchOK := terminated("fetch-model", 0, "Completed", "", t0)
	serverStarted := func(pod corev1.Pod) corev1.Pod { pod.Spec.NodeName = "node-1"; return pod }
	notStarted := serverStarted(pod("p", currentHash, corev1.PodStatus{
		ContainerStatuses: []corev1.ContainerStatus{waiting("server", "ContainerCreating", "")}}, 0))
	mountObs := func(msg string) observation {
		return observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{notStarted},
			mountFailures: map[string]string{"p": msg}}
	}
	suspend := func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Suspend = true }
	zero := func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptrInt32(0) }
	cases := []struct {
		name  string
		model func(*inferencev1alpha1.RKLLMModel)
		obs   observation
		prev  *inferencev1alpha1.Failure
		want  want
	}{
		{
			name: "just applied, no pods yet",
			obs:  observation{applied: true, deployment: deployment(1, 1, 0, 0, 0)},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, conds: converging("Pending", "False/Pending"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "downloading",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{running("fetch-model", false)}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseDownloading, observedGen: 2, conds: converging("Downloading", "False/Downloading"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "loading after the download",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{
					InitContainerStatuses: []corev1.ContainerStatus{fetchOK},
					ContainerStatuses:     []corev1.ContainerStatus{running("server", false)},
				}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseLoading, observedGen: 2, conds: converging("Loading", "True/Available"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "ready",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 1), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{
					InitContainerStatuses: []corev1.ContainerStatus{fetchOK},
					ContainerStatuses:     []corev1.ContainerStatus{running("server", true)},
				}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseReady, observedGen: 2, readyReplica: 1, messageHas: "serving at http://qwen.ns.svc:8080", conds: map[string]string{
				"Ready": "True/Ready", "Progressing": "False/RolloutComplete", "Degraded": "False/AsExpected",
				"ModelAvailable": "True/Available",
			}, kstatus: current, argo: "Healthy"},
		},
		{
			name: "deployment has not seen the new spec yet",
			obs:  observation{applied: true, deployment: deployment(2, 1, 1, 1, 1)},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, readyReplica: 1, conds: converging("Pending", "False/Pending"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "old pod still running",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 0, 1), pods: []corev1.Pod{
				pod("old", "beef", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, readyReplica: 1, conds: converging("RollingOut", "False/Pending"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "download keeps failing",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{
					crashLooping("fetch-model", 2, "progress 5%\nfetch: GET https://x/m.rkllm: 404 Not Found", t1)}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, failureExit: ptrInt32(2), failureCont: "fetch-model", failureTime: &t1,
				messageHas: "fetch: GET https://x/m.rkllm: 404 Not Found", conds: stalled("DownloadFailed", "False/DownloadFailed"),
				kstatus: failed, argo: "Degraded"},
		},
		{
			name: "server OOM-killed and restarting",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
					Name: "server", RestartCount: 1, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
					LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled", FinishedAt: t1}},
				}}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, failureExit: ptrInt32(137), failureCont: "server", failureTime: &t1,
				messageHas: "OOMKilled, exit code 137", conds: stalled("ServerFailed", "True/Available"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "server crash loop",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					crashLooping("server", 1, "E RKNN: failed to open rknpu module", t1)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, failureExit: ptrInt32(1), failureCont: "server", failureTime: &t1,
				messageHas: "failed to open rknpu module", conds: stalled("ServerFailed", "True/Available"), kstatus: failed, argo: "Degraded"},
		},
		{
			name:  "one of two replicas crash-loops",
			model: func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Replicas = ptrInt32(2) },
			obs: observation{applied: true, deployment: deployment(1, 1, 2, 2, 1), pods: []corev1.Pod{
				pod("ok", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0),
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					crashLooping("server", 1, "boom", t1)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, readyReplica: 1, failureExit: ptrInt32(1), failureCont: "server", failureTime: &t1,
				messageHas: "1/2 replicas ready", conds: stalled("ServerFailed", "True/Available"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "unschedulable",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
					Reason: corev1.PodReasonUnschedulable, Message: "0/2 nodes are available: 2 Insufficient rockchip.com/npu."}}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, messageHas: "Insufficient rockchip.com/npu",
				conds: converging("Unschedulable", "False/Pending"), kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "pods refused by admission",
			obs: observation{applied: true, deployment: deployment(1, 1, 0, 0, 0, appsv1.DeploymentCondition{
				Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
				Message: `pods "qwen-1" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes`})},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "violates PodSecurity",
				conds: stalled("ReplicaFailure", "False/Pending"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "rollout past its deadline",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0, appsv1.DeploymentCondition{
				Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded",
				Message: `ReplicaSet "qwen-1" has timed out progressing.`})},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "timed out progressing",
				conds: stalled("ProgressDeadlineExceeded", "False/Pending"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "image cannot be pulled",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					waiting("server", "ImagePullBackOff", `Back-off pulling image "x"`)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "cannot pull its image",
				conds: stalled("ImagePullFailed", "False/Pending"), failureReason: "ImagePullBackOff", kstatus: failed, argo: "Degraded"},
		},
		{
			name: "container the runtime cannot create",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					waiting("server", "CreateContainerError", "failed to generate container spec: device /dev/dri not found")}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "device /dev/dri not found",
				conds: stalled("ContainerConfigError", "False/Pending"), failureReason: "CreateContainerError", kstatus: failed, argo: "Degraded"},
		},
		{
			name: "env reference to a missing Secret",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					waiting("server", "CreateContainerConfigError", `secret "hf-token" not found`)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: `secret "hf-token" not found`,
				conds: stalled("SecretNotFound", "False/Pending"), failureReason: "CreateContainerConfigError", kstatus: failed, argo: "Degraded"},
		},
		{
			name: "env reference to a missing key",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
					waiting("server", "CreateContainerConfigError", "couldn't find key token in Secret ns/api")}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "couldn't find key token",
				conds: stalled("SecretKeyNotFound", "False/Pending"), failureReason: "CreateContainerConfigError", kstatus: failed, argo: "Degraded"},
		},
		{
			name: "API key Secret missing (the kubelet's FailedMount)",
			obs:  mountObs(`MountVolume.SetUp failed for volume "config" : secret "api" not found`),
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: `secret "api" not found`,
				conds: stalled("SecretNotFound", "False/Pending"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "API key missing from its Secret (the kubelet's FailedMount)",
			obs:  mountObs(`MountVolume.SetUp failed for volume "config" : references non-existent secret key: token`),
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "non-existent secret key: token",
				conds: stalled("SecretKeyNotFound", "False/Pending"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "a volume the kubelet is still mounting",
			obs:  mountObs(`Unable to attach or mount volumes: unmounted volumes=[model-pvc]: timed out waiting for the condition`),
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, messageHas: "timed out waiting",
				conds: converging("VolumeMountFailed", "False/Pending"), kstatus: inProgress, argo: "Progressing"},
		},
		{
			name:  "suspended",
			model: suspend,
			obs:   observation{applied: true, deployment: deployment(1, 1, 0, 0, 0)},
			want: want{phase: inferencev1alpha1.PhaseSuspended, observedGen: 2, conds: stopped("Suspended"),
				kstatus: current, argo: "Suspended"},
		},
		{
			name:  "suspended while the server still stops",
			model: suspend,
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 0, 1), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhaseSuspended, observedGen: 2, readyReplica: 1, conds: stopping("Suspended"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name:  "scaled to zero",
			model: zero,
			obs:   observation{applied: true, deployment: deployment(3, 3, 0, 0, 0)},
			want: want{phase: inferencev1alpha1.PhaseScaledToZero, observedGen: 2, messageHas: "spec.replicas is 0",
				conds: stopped("ScaledToZero"), kstatus: current, argo: "Suspended"},
		},
		{
			name:  "scaling to zero, the Deployment has not caught up",
			model: zero,
			obs:   observation{applied: true, deployment: deployment(3, 2, 1, 1, 1)},
			want: want{phase: inferencev1alpha1.PhaseScaledToZero, observedGen: 2, readyReplica: 1, conds: stopping("ScaledToZero"),
				kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "missing claim",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonPVCNotFound, message: "no claim", retry: true}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, conds: stalled("PVCNotFound", "False/PVCNotFound"),
				kstatus: failed, argo: "Degraded"},
		},
		{
			name: "name held by someone else",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonNameConflict, message: `Service "qwen" exists`, retry: true}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: `Service "qwen"`,
				conds: stalled("NameConflict", "False/Pending"), kstatus: failed, argo: "Degraded"},
		},
		{
			name: "refused by the cluster",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonInvalidSpec, message: "Deployment.apps is invalid"}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, conds: stalled("InvalidSpec", "False/Pending"),
				kstatus: failed, argo: "Degraded"},
		},
		{
			name: "the first reconcile hits a transient error",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: "connection refused", transient: true}},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 1, messageHas: "connection refused", conds: map[string]string{
				"Ready": "False/ReconcileFailed", "Reconciling": "True/ReconcileFailed",
			}, kstatus: inProgress, argo: "Progressing"},
		},
		{
			name: "an error that lasted",
			obs: observation{blocked: &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: "failing for 5m0s: forbidden",
				transient: true, lasting: true}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "failing for 5m0s", conds: stalled("ReconcileFailed", "False/Pending"),
				kstatus: failed, argo: "Degraded"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := unitModel(tc.model)
			m.Generation = 2
			m.Status.ObservedGeneration = 1
			m.Status.LastFailure = tc.prev
			tc.obs.hash = currentHash
			st := summarize(m, tc.obs, now)
			checkStatus(t, st, tc.want)
			m.Status = st
			h := healthOf(t, m)
			if h.kstatus != tc.want.kstatus || h.argo != tc.want.argo {
				t.Errorf("kstatus %s, Argo CD %s (%q); want %s and %s", h.kstatus, h.argo, h.argoMessage, tc.want.kstatus, tc.want.argo)
			}
		})
	}
}

func checkStatus(t *testing.T, st inferencev1alpha1.RKLLMModelStatus, w want) {
	t.Helper()
	if st.Phase != w.phase {
		t.Errorf("phase %s, want %s", st.Phase, w.phase)
	}
	if st.ObservedGeneration != w.observedGen {
		t.Errorf("observedGeneration %d, want %d", st.ObservedGeneration, w.observedGen)
	}
	if st.ReadyReplicas != w.readyReplica {
		t.Errorf("readyReplicas %d, want %d", st.ReadyReplicas, w.readyReplica)
	}
	for _, c := range st.Conditions {
		got := string(c.Status) + "/" + c.Reason
		if exp, ok := w.conds[c.Type]; !ok {
			t.Errorf("unexpected condition %s %s", c.Type, got)
		} else if got != exp {
			t.Errorf("%s = %s (%q), want %s", c.Type, got, c.Message, exp)
		}
	}
	for typ := range w.conds {
		if meta.FindStatusCondition(st.Conditions, typ) == nil {
			t.Errorf("missing condition %s", typ)
		}
	}
	if w.messageHas != "" {
		if c := meta.FindStatusCondition(st.Conditions, "Ready"); c == nil || !strings.Contains(c.Message, w.messageHas) {
			t.Errorf("Ready message %q does not contain %q", c.Message, w.messageHas)
		}
	}
	f := st.LastFailure
	if w.failureReason != "" {
		if f == nil || f.Reason != w.failureReason || f.ExitCode != nil || f.Pod != "p" {
			t.Errorf("lastFailure %+v, want reason %s", f, w.failureReason)
		}
		return
	}
	if w.failureExit == nil {
		if f != nil {
			t.Errorf("unexpected lastFailure %+v", f)
		}
		return
	}
	if f == nil || f.ExitCode == nil || *f.ExitCode != *w.failureExit || f.Container != w.failureCont || !f.Time.Equal(w.failureTime) || f.Pod != "p" {
		t.Errorf("lastFailure %+v, want exit %d in %s at %v", f, *w.failureExit, w.failureCont, w.failureTime)
	}
}

// A transient error keeps what the status said, Ready included: the servers keep serving
// what was applied before. Only Reconciling says the operator retries.
func TestTransientErrorKeepsReady(t *testing.T) {
	m := unitModel(nil)
	m.Generation = 1
	ready := observation{applied: true, hash: currentHash, deployment: deployment(1, 1, 1, 1, 1)}
	m.Status = summarize(m, ready, now)
	before := m.Status.DeepCopy()
	st := summarize(m, observation{blocked: &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: "connection refused", transient: true}}, now)
	if c := meta.FindStatusCondition(st.Conditions, "Ready"); c.Status != metav1.ConditionTrue || c.Reason != inferencev1alpha1.ReasonReady {
		t.Errorf("a transient error changed Ready: %+v", c)
	}
	if c := meta.FindStatusCondition(st.Conditions, "Reconciling"); c == nil || c.Reason != inferencev1alpha1.ReasonReconcileFailed ||
		!strings.Contains(c.Message, "connection refused") {
		t.Errorf("Reconciling %+v, want True/ReconcileFailed with the error", c)
	}
	if st.Phase != before.Phase || st.ObservedGeneration != before.ObservedGeneration ||
		!meta.IsStatusConditionFalse(st.Conditions, "Degraded") {
		t.Errorf("a transient error rewrote the rest of the status: %+v", st)
	}
	m.Status = st
	if h := healthOf(t, m); h.kstatus != inProgress || h.argo != "Progressing" {
		t.Errorf("kstatus %s, Argo CD %s; want InProgress and Progressing while the operator retries", h.kstatus, h.argo)
	}
}

// status.lastRequestTime is the gateway's: whatever the operator finds, its status
// write keeps it (a merge patch of a status without it would delete it).
func TestSummarizeKeepsTheGatewaysLastRequestTime(t *testing.T) {
	used := t1
	for name, obs := range map[string]observation{
		"ready":          {applied: true, hash: currentHash, deployment: deployment(1, 1, 1, 1, 1)},
		"transient":      {blocked: &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: "timeout", transient: true}},
		"blocked":        {blocked: &blocker{reason: inferencev1alpha1.ReasonNameConflict, message: "taken", retry: true}},
		"scaled to zero": {applied: true, hash: currentHash, deployment: deployment(0, 0, 0, 0, 0)},
	} {
		t.Run(name, func(t *testing.T) {
			m := unitModel(nil)
			if name == "scaled to zero" {
				m.Spec.Replicas = ptrInt32(0)
			}
			m.Status.LastRequestTime = &used
			if st := summarize(m, obs, now); st.LastRequestTime == nil || !st.LastRequestTime.Equal(&used) {
				t.Errorf("lastRequestTime = %v, want %v kept", st.LastRequestTime, used)
			}
		})
	}
}

func TestLastFailureIsKeptAndUpdated(t *testing.T) {
	prev := &inferencev1alpha1.Failure{Reason: "Error", ExitCode: ptrInt32(1), Time: t1, Pod: "gone", Container: "server"}
	older := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		crashLooping("server", 3, "old", t0)}}, 0)
	r := inspectPods([]corev1.Pod{older}, currentHash, nil, prev, now)
	if r.failure != prev {
		t.Errorf("an older failure replaced a newer one: %+v", r.failure)
	}

	// A failure without a time keeps the time it was first seen.
	pulling := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		waiting("server", "ErrImagePull", "not found")}}, 0)
	first := inspectPods([]corev1.Pod{pulling}, currentHash, nil, nil, t1).failure
	again := inspectPods([]corev1.Pod{pulling}, currentHash, nil, first, now).failure
	if first == nil || !again.Time.Equal(&t1) || again.Reason != "ErrImagePull" {
		t.Errorf("first %+v again %+v", first, again)
	}

	// A recovered model keeps its last failure as a record.
	ok := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0)
	if got := inspectPods([]corev1.Pod{ok}, currentHash, nil, prev, now).failure; got != prev {
		t.Errorf("lastFailure dropped on recovery: %+v", got)
	}
}

func TestMessagesAreBounded(t *testing.T) {
	long := strings.Repeat("x", 5000)
	p := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		terminated("server", 1, "Error", long, t1)}}, 0)
	r := inspectPods([]corev1.Pod{p}, currentHash, nil, nil, now)
	if len(r.failure.Message) > maxMessageLen || len(r.problem.message) > maxMessageLen {
		t.Errorf("messages of %d and %d bytes", len(r.failure.Message), len(r.problem.message))
	}
}
