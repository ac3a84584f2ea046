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
	phase        inferencev1alpha1.Phase
	conds        map[string]string // type -> "Status/Reason"; absent types must be absent
	observedGen  int64
	failureExit  *int32
	failureCont  string
	failureTime  *metav1.Time
	messageHas   string // in the Ready message
	readyReplica int32
}

func TestSummarize(t *testing.T) {
	fetchOK := terminated("fetch-model", 0, "Completed", "", t0)
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
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, conds: map[string]string{
				"Ready": "False/Pending", "Progressing": "True/Pending", "Degraded": "False/AsExpected",
				"ModelAvailable": "False/Pending", "Reconciling": "True/Pending",
			}},
		},
		{
			name: "downloading",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{running("fetch-model", false)}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseDownloading, observedGen: 2, conds: map[string]string{
				"Ready": "False/Downloading", "Progressing": "True/Downloading", "Degraded": "False/AsExpected",
				"ModelAvailable": "False/Downloading", "Reconciling": "True/Downloading",
			}},
		},
		{
			name: "loading after the download",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{
					InitContainerStatuses: []corev1.ContainerStatus{fetchOK},
					ContainerStatuses:     []corev1.ContainerStatus{running("server", false)},
				}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseLoading, observedGen: 2, conds: map[string]string{
				"Ready": "False/Loading", "Progressing": "True/Loading", "Degraded": "False/AsExpected",
				"ModelAvailable": "True/Available", "Reconciling": "True/Loading",
			}},
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
			}},
		},
		{
			name: "deployment has not seen the new spec yet",
			obs:  observation{applied: true, deployment: deployment(2, 1, 1, 1, 1)},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, readyReplica: 1, conds: map[string]string{
				"Ready": "False/Pending", "Progressing": "True/Pending", "Degraded": "False/AsExpected",
				"ModelAvailable": "False/Pending", "Reconciling": "True/Pending",
			}},
		},
		{
			name: "old pod still running",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 0, 1), pods: []corev1.Pod{
				pod("old", "beef", corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0),
			}},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, readyReplica: 1, conds: map[string]string{
				"Ready": "False/RollingOut", "Progressing": "True/RollingOut", "Degraded": "False/AsExpected",
				"ModelAvailable": "False/Pending", "Reconciling": "True/RollingOut",
			}},
		},
		{
			name: "download keeps failing",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{InitContainerStatuses: []corev1.ContainerStatus{
					crashLooping("fetch-model", 2, "progress 5%\nfetch: GET https://x/m.rkllm: 404 Not Found", t1)}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, failureExit: ptrInt32(2), failureCont: "fetch-model", failureTime: &t1,
				messageHas: "fetch: GET https://x/m.rkllm: 404 Not Found", conds: map[string]string{
					"Ready": "False/DownloadFailed", "Progressing": "False/DownloadFailed", "Degraded": "True/DownloadFailed",
					"ModelAvailable": "False/DownloadFailed",
				}},
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
				messageHas: "OOMKilled, exit code 137", conds: map[string]string{
					"Ready": "False/ServerFailed", "Progressing": "False/ServerFailed", "Degraded": "True/ServerFailed",
					"ModelAvailable": "True/Available",
				}},
		},
		{
			name: "unschedulable",
			obs: observation{applied: true, deployment: deployment(1, 1, 1, 1, 0), pods: []corev1.Pod{
				pod("p", currentHash, corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
					Reason: corev1.PodReasonUnschedulable, Message: "0/2 nodes are available: 2 Insufficient rockchip.com/npu."}}}, 1),
			}},
			want: want{phase: inferencev1alpha1.PhasePending, observedGen: 2, messageHas: "Insufficient rockchip.com/npu", conds: map[string]string{
				"Ready": "False/Unschedulable", "Progressing": "True/Unschedulable", "Degraded": "False/AsExpected",
				"ModelAvailable": "False/Pending", "Reconciling": "True/Unschedulable",
			}},
		},
		{
			name: "deployment cannot create pods",
			obs: observation{applied: true, deployment: deployment(1, 1, 0, 0, 0, appsv1.DeploymentCondition{
				Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Message: `pods "qwen-1" is forbidden: exceeded quota`})},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, messageHas: "exceeded quota", conds: map[string]string{
				"Ready": "False/ReplicaFailure", "Progressing": "False/ReplicaFailure", "Degraded": "True/ReplicaFailure",
				"ModelAvailable": "False/Pending",
			}},
		},
		{
			name:  "suspended",
			model: func(m *inferencev1alpha1.RKLLMModel) { m.Spec.Suspend = true },
			obs:   observation{applied: true, deployment: deployment(1, 1, 0, 0, 0)},
			want: want{phase: inferencev1alpha1.PhaseSuspended, observedGen: 2, conds: map[string]string{
				"Ready": "False/Suspended", "Progressing": "False/Suspended", "Degraded": "False/Suspended",
				"ModelAvailable": "False/Suspended",
			}},
		},
		{
			name: "missing secret is retried",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonSecretNotFound, message: `Secret "api" ... does not exist`}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 1, messageHas: `Secret "api"`, conds: map[string]string{
				"Ready": "False/SecretNotFound", "Progressing": "False/SecretNotFound", "Degraded": "True/SecretNotFound",
				"ModelAvailable": "False/Pending", "Reconciling": "True/SecretNotFound",
			}},
		},
		{
			name: "missing claim",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonPVCNotFound, message: "no claim"}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 1, conds: map[string]string{
				"Ready": "False/PVCNotFound", "Progressing": "False/PVCNotFound", "Degraded": "True/PVCNotFound",
				"ModelAvailable": "False/PVCNotFound", "Reconciling": "True/PVCNotFound",
			}},
		},
		{
			name: "refused by the cluster stalls",
			obs:  observation{blocked: &blocker{reason: inferencev1alpha1.ReasonInvalidSpec, message: "Deployment.apps is invalid", stalled: true}},
			want: want{phase: inferencev1alpha1.PhaseFailed, observedGen: 2, conds: map[string]string{
				"Ready": "False/InvalidSpec", "Progressing": "False/InvalidSpec", "Degraded": "True/InvalidSpec",
				"ModelAvailable": "False/Pending", "Stalled": "True/InvalidSpec",
			}},
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

func TestTransientErrorKeepsOtherConditions(t *testing.T) {
	m := unitModel(nil)
	ready := observation{applied: true, hash: currentHash, deployment: deployment(1, 1, 1, 1, 1)}
	m.Status = summarize(m, ready, now)
	st := summarize(m, observation{blocked: &blocker{reason: inferencev1alpha1.ReasonReconcileFailed, message: "connection refused", transient: true}}, now)
	if c := meta.FindStatusCondition(st.Conditions, "Ready"); c.Status != metav1.ConditionFalse || c.Reason != inferencev1alpha1.ReasonReconcileFailed {
		t.Errorf("Ready %+v", c)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, "Reconciling") || st.Phase != inferencev1alpha1.PhaseReady ||
		meta.IsStatusConditionTrue(st.Conditions, "Degraded") {
		t.Errorf("a transient error rewrote the rest of the status: %+v", st)
	}
}

func TestLastFailureIsKeptAndUpdated(t *testing.T) {
	prev := &inferencev1alpha1.Failure{Reason: "Error", ExitCode: ptrInt32(1), Time: t1, Pod: "gone", Container: "server"}
	older := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		crashLooping("server", 3, "old", t0)}}, 0)
	r := inspectPods([]corev1.Pod{older}, currentHash, prev, now)
	if r.failure != prev {
		t.Errorf("an older failure replaced a newer one: %+v", r.failure)
	}

	// A failure without a time keeps the time it was first seen.
	pulling := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		waiting("server", "ErrImagePull", "not found")}}, 0)
	first := inspectPods([]corev1.Pod{pulling}, currentHash, nil, t1).failure
	again := inspectPods([]corev1.Pod{pulling}, currentHash, first, now).failure
	if first == nil || !again.Time.Equal(&t1) || again.Reason != "ErrImagePull" {
		t.Errorf("first %+v again %+v", first, again)
	}

	// A recovered model keeps its last failure as a record.
	ok := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{running("server", true)}}, 0)
	if got := inspectPods([]corev1.Pod{ok}, currentHash, prev, now).failure; got != prev {
		t.Errorf("lastFailure dropped on recovery: %+v", got)
	}
}

func TestMessagesAreBounded(t *testing.T) {
	long := strings.Repeat("x", 5000)
	p := pod("p", currentHash, corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
		terminated("server", 1, "Error", long, t1)}}, 0)
	r := inspectPods([]corev1.Pod{p}, currentHash, nil, now)
	if len(r.failure.Message) > maxMessageLen || len(r.problem.message) > maxMessageLen {
		t.Errorf("messages of %d and %d bytes", len(r.failure.Message), len(r.problem.message))
	}
}
