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
	"errors"
	"fmt"
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

// envtest runs no controllers: these tests play the Deployment controller, the scheduler
// and the kubelet by writing Deployment and Pod status (and the kubelet's events), and
// check what the model says, and how kstatus and the shipped Argo CD health check read
// the model as the API server returns it.
func TestStatusRollupFromDeploymentAndPods(t *testing.T) {
	needEnv(t)
	ns := newNamespace(t)
	finished := metav1.NewTime(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	fetchDone := corev1.ContainerStatus{Name: "fetch-model", State: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}}

	cases := []struct {
		name        string
		ready       bool
		podStatus   corev1.PodStatus
		phase       inferencev1alpha1.Phase
		readyReason string
		available   metav1.ConditionStatus
		degraded    string // reason when Degraded is true
		failure     *inferencev1alpha1.Failure
		// deployment changes the Deployment status written; kubeletEvents are FailedMount
		// messages about the pod (which then runs on a node).
		deployment    func(*appsv1.DeploymentStatus)
		kubeletEvents []string
		kstatus       status.Status
		argo          string
	}{
		{
			name: "downloading",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{{Name: "fetch-model", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
				ContainerStatuses:     []corev1.ContainerStatus{waiting("server", "PodInitializing", "")},
			},
			phase: inferencev1alpha1.PhaseDownloading, readyReason: inferencev1alpha1.ReasonDownloading, available: metav1.ConditionFalse,
			kstatus: inProgress, argo: "Progressing",
		},
		{
			name: "download-failed",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{{
					Name: "fetch-model", RestartCount: 2,
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
					LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
						ExitCode: 1, Reason: "Error", FinishedAt: finished,
						Message: "downloading 10%\nfetch: sha256 mismatch: the file has 00ff..., spec.model.sha256 says abab...",
					}},
				}},
				ContainerStatuses: []corev1.ContainerStatus{waiting("server", "PodInitializing", "")},
			},
			phase: inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonDownloadFailed, available: metav1.ConditionFalse,
			degraded: inferencev1alpha1.ReasonDownloadFailed,
			failure:  &inferencev1alpha1.Failure{Reason: "Error", ExitCode: ptrInt32(1), Container: "fetch-model", Message: "sha256 mismatch", Time: finished},
			kstatus:  failed, argo: "Degraded",
		},
		{
			name: "loading",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{fetchDone},
				ContainerStatuses:     []corev1.ContainerStatus{{Name: "server", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
			},
			phase: inferencev1alpha1.PhaseLoading, readyReason: inferencev1alpha1.ReasonLoading, available: metav1.ConditionTrue,
			kstatus: inProgress, argo: "Progressing",
		},
		{
			name:  "ready",
			ready: true,
			podStatus: corev1.PodStatus{
				Conditions:            []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
				InitContainerStatuses: []corev1.ContainerStatus{fetchDone},
				ContainerStatuses:     []corev1.ContainerStatus{{Name: "server", Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}},
			},
			phase: inferencev1alpha1.PhaseReady, readyReason: inferencev1alpha1.ReasonReady, available: metav1.ConditionTrue,
			kstatus: current, argo: "Healthy",
		},
		{
			name: "server-crashing",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{fetchDone},
				ContainerStatuses: []corev1.ContainerStatus{{
					Name: "server", RestartCount: 3,
					State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
					LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
						ExitCode: 1, Reason: "Error", FinishedAt: finished, Message: "E RKNN: failed to open rknpu module, need to insmod rknpu dirver!",
					}},
				}},
			},
			phase: inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonServerFailed, available: metav1.ConditionTrue,
			degraded: inferencev1alpha1.ReasonServerFailed,
			failure:  &inferencev1alpha1.Failure{Reason: "Error", ExitCode: ptrInt32(1), Container: "server", Message: "failed to open rknpu module", Time: finished},
			kstatus:  failed, argo: "Degraded",
		},
		{
			name: "unschedulable",
			podStatus: corev1.PodStatus{Conditions: []corev1.PodCondition{{
				Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
				Message: "0/3 nodes are available: 3 Insufficient rockchip.com/npu.",
			}}},
			phase: inferencev1alpha1.PhasePending, readyReason: inferencev1alpha1.ReasonUnschedulable, available: metav1.ConditionFalse,
			kstatus: inProgress, argo: "Progressing",
		},
		{
			name: "image-pull",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{waiting("fetch-model", "ImagePullBackOff", `Back-off pulling image "registry.test/rkllm-server:test"`)},
				ContainerStatuses:     []corev1.ContainerStatus{waiting("server", "PodInitializing", "")},
			},
			phase: inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonImagePullFailed, available: metav1.ConditionFalse,
			degraded: inferencev1alpha1.ReasonImagePullFailed,
			failure:  &inferencev1alpha1.Failure{Reason: "ImagePullBackOff", Container: "fetch-model", Message: "Back-off pulling image"},
			kstatus:  failed, argo: "Degraded",
		},
		{
			name: "api-key-secret-missing",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{waiting("fetch-model", "PodInitializing", "")},
				ContainerStatuses:     []corev1.ContainerStatus{waiting("server", "PodInitializing", "")},
			},
			kubeletEvents: []string{`MountVolume.SetUp failed for volume "config" : secret "api" not found`},
			phase:         inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonSecretNotFound, available: metav1.ConditionFalse,
			degraded: inferencev1alpha1.ReasonSecretNotFound, kstatus: failed, argo: "Degraded",
		},
		{
			name: "env-secret-key-missing",
			podStatus: corev1.PodStatus{
				InitContainerStatuses: []corev1.ContainerStatus{fetchDone},
				ContainerStatuses:     []corev1.ContainerStatus{waiting("server", "CreateContainerConfigError", "couldn't find key token in Secret ns/hf")},
			},
			// The download finished: the model file is in place, the server cannot start.
			phase: inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonSecretKeyNotFound, available: metav1.ConditionTrue,
			degraded: inferencev1alpha1.ReasonSecretKeyNotFound, kstatus: failed, argo: "Degraded",
			failure: &inferencev1alpha1.Failure{Reason: "CreateContainerConfigError", Container: "server", Message: "couldn't find key token"},
		},
		{
			name: "refused-by-admission",
			deployment: func(s *appsv1.DeploymentStatus) {
				s.Replicas, s.UpdatedReplicas, s.UnavailableReplicas = 0, 0, 1
				s.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
					Message: `pods "x" is forbidden: violates PodSecurity "baseline:latest": hostPath volumes (volume "device-tree")`}}
			},
			phase: inferencev1alpha1.PhaseFailed, readyReason: inferencev1alpha1.ReasonReplicaFailure, available: metav1.ConditionFalse,
			degraded: inferencev1alpha1.ReasonReplicaFailure, kstatus: failed, argo: "Degraded",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			createModel(t, ns, tc.name, nil)
			d := &appsv1.Deployment{}
			getChild(t, ns, tc.name, d, "the Deployment", nil)
			var pod *corev1.Pod
			if tc.deployment == nil {
				pod = serverPod(t, d, tc.podStatus, len(tc.kubeletEvents) > 0)
				for _, msg := range tc.kubeletEvents {
					kubeletEvent(t, pod, eventFailedMount, msg, metav1.Now())
				}
			}
			writeDeploymentStatus(t, d, tc.ready, tc.deployment)

			m := getReconciled(t, ns, tc.name, "phase "+string(tc.phase), func(m *inferencev1alpha1.RKLLMModel) error {
				if m.Status.Phase != tc.phase {
					return fmt.Errorf("phase %s (conditions %v)", m.Status.Phase, m.Status.Conditions)
				}
				return conditionIs(m, inferencev1alpha1.ConditionReady, readyStatus(tc.ready), tc.readyReason)
			})
			if err := conditionIs(m, inferencev1alpha1.ConditionModelAvailable, tc.available, conditionReason(m, inferencev1alpha1.ConditionModelAvailable)); err != nil {
				t.Error(err)
			}
			if tc.degraded != "" {
				if err := conditionIs(m, inferencev1alpha1.ConditionDegraded, metav1.ConditionTrue, tc.degraded); err != nil {
					t.Error(err)
				}
			} else if meta.IsStatusConditionTrue(m.Status.Conditions, inferencev1alpha1.ConditionDegraded) {
				t.Errorf("degraded: %v", meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionDegraded))
			}
			if tc.ready {
				if meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReconciling) != nil {
					t.Error("a ready model should not be Reconciling")
				}
				if m.Status.ReadyReplicas != 1 || m.Status.Replicas != 1 {
					t.Errorf("replicas %d ready %d", m.Status.Replicas, m.Status.ReadyReplicas)
				}
			}
			podName := ""
			if pod != nil {
				podName = pod.Name
			}
			if err := failureMatches(m.Status.LastFailure, tc.failure, podName); err != nil {
				t.Error(err)
			}
			if h := healthOf(t, m); h.kstatus != tc.kstatus || h.argo != tc.argo {
				t.Errorf("kstatus %s, Argo CD %s (%q); want %s and %s", h.kstatus, h.argo, h.argoMessage, tc.kstatus, tc.argo)
			}
			if tc.degraded != "" {
				waitEvent(t, ns, tc.name, corev1.EventTypeWarning, tc.readyReason, "")
			}
		})
	}
}

func readyStatus(ready bool) metav1.ConditionStatus {
	if ready {
		return metav1.ConditionTrue
	}
	return metav1.ConditionFalse
}

func conditionReason(m *inferencev1alpha1.RKLLMModel, t string) string {
	if c := meta.FindStatusCondition(m.Status.Conditions, t); c != nil {
		return c.Reason
	}
	return ""
}

func ptrInt32(v int32) *int32 { return &v }

func waiting(name, reason, msg string) corev1.ContainerStatus {
	return corev1.ContainerStatus{Name: name, State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}
}

// failureMatches compares status.lastFailure with the expected one; messages by substring.
func failureMatches(got, want *inferencev1alpha1.Failure, pod string) error {
	switch {
	case want == nil && got == nil:
		return nil
	case want == nil:
		return fmt.Errorf("unexpected lastFailure %+v", got)
	case got == nil:
		return errors.New("no lastFailure")
	}
	if got.Reason != want.Reason || got.Container != want.Container || got.Pod != pod || !strings.Contains(got.Message, want.Message) {
		return fmt.Errorf("lastFailure = %+v, want %+v in pod %s", got, want, pod)
	}
	if (want.ExitCode == nil) != (got.ExitCode == nil) || (want.ExitCode != nil && *want.ExitCode != *got.ExitCode) {
		return fmt.Errorf("lastFailure exit code %v, want %v", got.ExitCode, want.ExitCode)
	}
	if !want.Time.IsZero() && !got.Time.Equal(&want.Time) {
		return fmt.Errorf("lastFailure time %v, want %v", got.Time, want.Time)
	}
	return nil
}

// serverPod creates a pod as the Deployment's ReplicaSet would (its template), placed on
// a node when scheduled, then writes the status the kubelet would.
func serverPod(t *testing.T, d *appsv1.Deployment, status corev1.PodStatus, scheduled bool) *corev1.Pod {
	t.Helper()
	tmpl := d.Spec.Template
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: d.Namespace, GenerateName: d.Name + "-",
			Labels: tmpl.Labels, Annotations: tmpl.Annotations,
		},
		Spec: tmpl.Spec,
	}
	if scheduled {
		pod.Spec.NodeName = "rk3588-1"
	}
	ctx := context.Background()
	if err := k8sClient.Create(ctx, pod); err != nil {
		t.Fatalf("creating pod: %v", err)
	}
	status.Phase = corev1.PodPending
	if len(status.Conditions) > 0 && status.Conditions[0].Type == corev1.PodReady {
		status.Phase = corev1.PodRunning
	}
	pod.Status = status
	if err := k8sClient.Status().Update(ctx, pod); err != nil {
		t.Fatalf("writing pod status: %v", err)
	}
	return pod
}

// writeDeploymentStatus writes what the Deployment controller would for one pod of the
// current template, ready or not, changed by edit.
func writeDeploymentStatus(t *testing.T, d *appsv1.Deployment, ready bool, edit func(*appsv1.DeploymentStatus)) {
	t.Helper()
	var readyCount int32
	if ready {
		readyCount = 1
	}
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration:  d.Generation,
		Replicas:            1,
		UpdatedReplicas:     1,
		ReadyReplicas:       readyCount,
		AvailableReplicas:   readyCount,
		UnavailableReplicas: 1 - readyCount,
	}
	if edit != nil {
		edit(&d.Status)
	}
	if err := k8sClient.Status().Update(context.Background(), d); err != nil {
		t.Fatalf("writing deployment status: %v", err)
	}
}

// kubeletEvent records an event about a pod as the kubelet does (core/v1, the source
// naming the kubelet and the node), last seen at.
func kubeletEvent(t *testing.T, pod *corev1.Pod, reason, msg string, at metav1.Time) {
	t.Helper()
	now := at
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, GenerateName: pod.Name + "."},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
			APIVersion: "v1", ResourceVersion: pod.ResourceVersion},
		Reason: reason, Message: msg, Type: corev1.EventTypeWarning, Count: 1,
		FirstTimestamp: now, LastTimestamp: now,
		Source: corev1.EventSource{Component: "kubelet", Host: pod.Spec.NodeName},
	}
	if err := k8sClient.Create(context.Background(), ev); err != nil {
		t.Fatalf("recording the kubelet's event: %v", err)
	}
}
