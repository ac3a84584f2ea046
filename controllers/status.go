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
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// maxMessageLen caps messages copied from pods into the status.
const maxMessageLen = 1024

// blocker is why a reconcile stopped before the model's objects were all applied.
type blocker struct {
	reason  string
	message string
	// stalled: nothing changes until the spec does (kstatus Stalled); otherwise the
	// operator retries.
	stalled bool
	// transient: an error talking to the cluster, retried with backoff; the model's
	// other conditions keep what they said.
	transient bool
}

// observation is everything the status is derived from.
type observation struct {
	// deployment is the server Deployment as the API server returned it after the apply
	// (nil when it was not applied, or does not exist).
	deployment *appsv1.Deployment
	// pods are the model's server pods.
	pods []corev1.Pod
	// config is the server configuration of the current spec.
	config []byte
	// kept is the revision recorded on the live Deployment when the model still stands
	// for it: its pod template is applied again (nil: build the template afresh).
	kept *revision
	// hash is the rollout hash of the current spec; pods carrying it are current.
	hash string
	// blocked is set when the reconcile could not apply the spec.
	blocked *blocker
	// applied is true when every object was applied for the current generation.
	applied bool
}

// problem is something wrong with a server pod that needs the user.
type problem struct {
	reason  string
	message string
}

// podReport summarises the model's server pods.
type podReport struct {
	// downloading: a current pod runs a fetch init container.
	downloading bool
	// loading: a current pod's server runs but is not ready yet.
	loading bool
	// modelAvailable: a current pod got past its downloads and mounts.
	modelAvailable bool
	// unschedulable is the scheduler's message for a current pod it cannot place.
	unschedulable string
	// problem is the first problem of a current pod.
	problem *problem
	// failure is the newest container failure of any pod.
	failure *inferencev1alpha1.Failure
	// old counts pods of an older spec that still exist.
	old int
}

// summarize derives the status from what was observed. It is pure: the same inputs
// give the same status (now is only used for failures that carry no time of their own).
func summarize(model *inferencev1alpha1.RKLLMModel, obs observation, now metav1.Time) inferencev1alpha1.RKLLMModelStatus {
	st := *model.Status.DeepCopy()
	gen := model.Generation
	spec := &model.Spec
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}

	report := inspectPods(obs.pods, obs.hash, st.LastFailure, now)
	st.LastFailure = report.failure
	st.ModelFetches = modelFetches(model, obs.pods, obs.hash)
	st.Model = modelDisplayName(model)
	st.Selector = metav1.FormatLabelSelector(metav1.SetAsLabelSelector(selectorLabels(model)))
	if d := obs.deployment; d != nil {
		st.Replicas = d.Status.Replicas
		st.ReadyReplicas = d.Status.ReadyReplicas
		st.Endpoint = endpoint(model)
	}
	if obs.applied || (obs.blocked != nil && obs.blocked.stalled) {
		st.ObservedGeneration = gen
	}

	switch {
	case obs.blocked != nil:
		summarizeBlocked(&st, gen, report, obs.blocked)
		return st
	case spec.Suspend:
		summarizeSuspended(&st, gen)
		return st
	}

	desired := spec.GetReplicas()
	ready := rolloutComplete(obs.deployment, desired, report)
	degraded := degradedBy(report, obs.deployment)

	switch {
	case ready:
		msg := fmt.Sprintf("%d/%d replicas ready, serving at %s", st.ReadyReplicas, desired, endpoint(model))
		set(inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonReady, msg)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse, inferencev1alpha1.ReasonRolloutComplete,
			"every server pod runs the current spec")
		st.Phase = inferencev1alpha1.PhaseReady
	case degraded != nil:
		msg := fmt.Sprintf("%d/%d replicas ready: %s", st.ReadyReplicas, desired, degraded.message)
		set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse, degraded.reason, msg)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse, degraded.reason, degraded.message)
		st.Phase = inferencev1alpha1.PhaseFailed
	default:
		reason, phase, what := waitingReason(report)
		msg := fmt.Sprintf("%d/%d replicas ready: %s", st.ReadyReplicas, desired, what)
		set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse, reason, msg)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionTrue, reason, what)
		st.Phase = phase
	}
	if degraded != nil {
		set(inferencev1alpha1.ConditionDegraded, metav1.ConditionTrue, degraded.reason, degraded.message)
	} else {
		set(inferencev1alpha1.ConditionDegraded, metav1.ConditionFalse, inferencev1alpha1.ReasonAsExpected, "nothing is wrong")
	}
	if ready {
		report.modelAvailable = true
	}
	setModelAvailable(&st, gen, report, nil)
	progressing := meta.IsStatusConditionTrue(st.Conditions, inferencev1alpha1.ConditionProgressing)
	p := meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionProgressing)
	setKstatus(&st, gen, progressing || !obs.applied, false, p.Reason, p.Message)
	return st
}

// summarizeBlocked reports a reconcile that stopped before applying everything.
func summarizeBlocked(st *inferencev1alpha1.RKLLMModelStatus, gen int64, report podReport, b *blocker) {
	set := func(t string, s metav1.ConditionStatus) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: b.reason, Message: b.message, ObservedGeneration: gen})
	}
	set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse)
	if b.transient {
		// Talking to the cluster failed; what the rest of the status says still holds.
		setKstatus(st, gen, true, false, b.reason, b.message)
		return
	}
	set(inferencev1alpha1.ConditionDegraded, metav1.ConditionTrue)
	set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse)
	setModelAvailable(st, gen, report, b)
	st.Phase = inferencev1alpha1.PhaseFailed
	setKstatus(st, gen, !b.stalled, b.stalled, b.reason, b.message)
}

// summarizeSuspended reports a suspended model.
func summarizeSuspended(st *inferencev1alpha1.RKLLMModelStatus, gen int64) {
	const msg = "spec.suspend is true: no server pods run"
	for _, t := range []string{inferencev1alpha1.ConditionReady, inferencev1alpha1.ConditionProgressing,
		inferencev1alpha1.ConditionDegraded, inferencev1alpha1.ConditionModelAvailable} {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: metav1.ConditionFalse, Reason: inferencev1alpha1.ReasonSuspended, Message: msg, ObservedGeneration: gen,
		})
	}
	st.Phase = inferencev1alpha1.PhaseSuspended
	setKstatus(st, gen, false, false, "", "")
}

// degradedBy is the problem that keeps the model from getting ready: a pod's, or the
// Deployment's when no pod is busy downloading or loading (a long download is progress,
// whatever the Deployment's deadline says).
func degradedBy(r podReport, d *appsv1.Deployment) *problem {
	if r.problem != nil {
		return r.problem
	}
	if r.downloading || r.loading {
		return nil
	}
	return deploymentProblem(d)
}

// waitingReason says what a model that is neither ready nor failed waits for.
func waitingReason(r podReport) (reason string, phase inferencev1alpha1.Phase, message string) {
	switch {
	case r.unschedulable != "":
		return inferencev1alpha1.ReasonUnschedulable, inferencev1alpha1.PhasePending, "no node can run the server: " + r.unschedulable
	case r.loading:
		return inferencev1alpha1.ReasonLoading, inferencev1alpha1.PhaseLoading, "the server is loading the model"
	case r.downloading:
		return inferencev1alpha1.ReasonDownloading, inferencev1alpha1.PhaseDownloading, "downloading model files"
	case r.old > 0:
		return inferencev1alpha1.ReasonRollingOut, inferencev1alpha1.PhasePending, "replacing server pods of an older spec"
	}
	return inferencev1alpha1.ReasonPending, inferencev1alpha1.PhasePending, "waiting for server pods to start"
}

// setModelAvailable sets ModelAvailable from the pods (or from what blocked the reconcile).
func setModelAvailable(st *inferencev1alpha1.RKLLMModelStatus, gen int64, r podReport, b *blocker) {
	c := metav1.Condition{Type: inferencev1alpha1.ConditionModelAvailable, ObservedGeneration: gen}
	switch {
	case b != nil && b.reason == inferencev1alpha1.ReasonPVCNotFound:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, b.reason, b.message
	case r.modelAvailable:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, inferencev1alpha1.ReasonAvailable, "the model file is in place"
	case r.problem != nil && r.problem.reason == inferencev1alpha1.ReasonDownloadFailed:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, r.problem.reason, r.problem.message
	case r.downloading:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, inferencev1alpha1.ReasonDownloading, "downloading model files"
	default:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, inferencev1alpha1.ReasonPending, "no server pod of the current spec has its model file yet"
	}
	meta.SetStatusCondition(&st.Conditions, c)
}

// setKstatus keeps the kstatus conditions: present only while true.
func setKstatus(st *inferencev1alpha1.RKLLMModelStatus, gen int64, reconciling, stalled bool, reason, msg string) {
	for _, c := range []struct {
		t  string
		on bool
	}{{inferencev1alpha1.ConditionReconciling, reconciling}, {inferencev1alpha1.ConditionStalled, stalled}} {
		if !c.on {
			meta.RemoveStatusCondition(&st.Conditions, c.t)
			continue
		}
		if reason == "" {
			reason = inferencev1alpha1.ReasonPending
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: c.t, Status: metav1.ConditionTrue, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
}

// rolloutComplete reports whether the Deployment runs desired ready pods of its current
// spec and no others.
func rolloutComplete(d *appsv1.Deployment, desired int32, r podReport) bool {
	if d == nil || d.Status.ObservedGeneration < d.Generation {
		return false
	}
	s := d.Status
	return s.UpdatedReplicas >= desired && s.Replicas == s.UpdatedReplicas && s.ReadyReplicas >= desired && r.old == 0
}

// deploymentProblem reports a Deployment that cannot create pods or stopped progressing.
func deploymentProblem(d *appsv1.Deployment) *problem {
	if d == nil {
		return nil
	}
	for _, c := range d.Status.Conditions {
		switch {
		case c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue:
			return &problem{inferencev1alpha1.ReasonReplicaFailure, "cannot create server pods: " + truncate(c.Message)}
		case c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded":
			return &problem{inferencev1alpha1.ReasonProgressDeadlineExceeded, "the rollout made no progress: " + truncate(c.Message)}
		}
	}
	return nil
}

// inspectPods summarises the pods; prev is the failure recorded so far.
func inspectPods(pods []corev1.Pod, hash string, prev *inferencev1alpha1.Failure, now metav1.Time) podReport {
	r := podReport{failure: prev}
	for i := range pods {
		pod := &pods[i]
		if pod.DeletionTimestamp != nil {
			continue
		}
		for _, cs := range pod.Status.InitContainerStatuses {
			r.failure = newer(r.failure, containerFailure(pod, cs, r.failure, now))
		}
		for _, cs := range pod.Status.ContainerStatuses {
			r.failure = newer(r.failure, containerFailure(pod, cs, r.failure, now))
		}
		if pod.Annotations[AnnotationRolloutHash] != hash {
			r.old++
			continue
		}
		inspectCurrentPod(pod, &r)
	}
	return r
}

// inspectCurrentPod adds a pod of the current spec to the report.
func inspectCurrentPod(pod *corev1.Pod, r *podReport) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			r.unschedulable = truncate(c.Message)
			return
		}
	}
	if !inspectInitContainers(pod, r) {
		return
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != serverContainer {
			continue
		}
		started := cs.State.Running != nil || cs.State.Terminated != nil || cs.RestartCount > 0
		// The server starts only after the downloads and mounts worked.
		if started || len(pod.Spec.InitContainers) > 0 {
			r.modelAvailable = true
		}
		if p := containerProblem(cs, inferencev1alpha1.ReasonServerFailed, "serving"); p != nil {
			setProblem(r, p)
		} else if cs.State.Running != nil && !cs.Ready {
			r.loading = true
		}
	}
}

// inspectInitContainers reports the download init containers and whether all of them
// finished.
func inspectInitContainers(pod *corev1.Pod, r *podReport) bool {
	if len(pod.Spec.InitContainers) > len(pod.Status.InitContainerStatuses) {
		return false
	}
	for _, cs := range pod.Status.InitContainerStatuses {
		if t := cs.State.Terminated; t != nil && t.ExitCode == 0 {
			continue
		}
		if p := containerProblem(cs, inferencev1alpha1.ReasonDownloadFailed, "downloading"); p != nil {
			setProblem(r, p)
		} else if cs.State.Running != nil {
			r.downloading = true
		}
		return false
	}
	return true
}

func setProblem(r *podReport, p *problem) {
	if r.problem == nil {
		r.problem = p
	}
}

// containerProblem reports a container that cannot run or keeps failing. failReason is
// the condition reason for a container that exits with an error; doing names its job.
func containerProblem(cs corev1.ContainerStatus, failReason, doing string) *problem {
	if w := cs.State.Waiting; w != nil {
		switch w.Reason {
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
			return &problem{inferencev1alpha1.ReasonImagePullFailed,
				fmt.Sprintf("container %s cannot pull its image: %s", cs.Name, truncate(w.Message))}
		case "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			return &problem{inferencev1alpha1.ReasonContainerConfigError,
				fmt.Sprintf("container %s cannot start: %s", cs.Name, truncate(w.Message))}
		case "CrashLoopBackOff":
			return &problem{failReason, exitMessage(cs.Name, doing, cs.LastTerminationState.Terminated)}
		}
	}
	if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
		return &problem{failReason, exitMessage(cs.Name, doing, t)}
	}
	if cs.State.Running != nil && !cs.Ready && cs.RestartCount > 0 {
		if t := cs.LastTerminationState.Terminated; t != nil && t.ExitCode != 0 {
			return &problem{failReason, exitMessage(cs.Name, doing, t)}
		}
	}
	return nil
}

// exitMessage describes a container's failed exit.
func exitMessage(container, doing string, t *corev1.ContainerStateTerminated) string {
	if t == nil {
		return fmt.Sprintf("container %s keeps failing while %s", container, doing)
	}
	msg := fmt.Sprintf("container %s failed while %s (%s, exit code %d)", container, doing, t.Reason, t.ExitCode)
	if m := strings.TrimSpace(t.Message); m != "" {
		msg += ": " + lastLine(m)
	}
	return truncate(msg)
}

// containerFailure is the failure a container status shows, if any. A failure without a
// time of its own (a waiting reason) keeps the time it was first seen.
func containerFailure(pod *corev1.Pod, cs corev1.ContainerStatus, prev *inferencev1alpha1.Failure, now metav1.Time) *inferencev1alpha1.Failure {
	fromTerminated := func(t *corev1.ContainerStateTerminated) *inferencev1alpha1.Failure {
		reason := t.Reason
		if reason == "" {
			reason = "Error"
		}
		code := t.ExitCode
		return &inferencev1alpha1.Failure{
			Reason: reason, Message: truncate(strings.TrimSpace(t.Message)), ExitCode: &code,
			Time: t.FinishedAt, Pod: pod.Name, Container: cs.Name,
		}
	}
	if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
		return fromTerminated(t)
	}
	if w := cs.State.Waiting; w != nil {
		switch w.Reason {
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			f := &inferencev1alpha1.Failure{Reason: w.Reason, Message: truncate(w.Message), Time: now, Pod: pod.Name, Container: cs.Name}
			if prev != nil && prev.Pod == f.Pod && prev.Container == f.Container && prev.Reason == f.Reason && prev.ExitCode == nil {
				f.Time = prev.Time
			}
			return f
		}
	}
	if t := cs.LastTerminationState.Terminated; t != nil && t.ExitCode != 0 {
		return fromTerminated(t)
	}
	return nil
}

// newer returns the more recent failure; on a tie, the one already recorded.
func newer(cur, cand *inferencev1alpha1.Failure) *inferencev1alpha1.Failure {
	switch {
	case cand == nil:
		return cur
	case cur == nil:
		return cand
	case cand.Time.After(cur.Time.Time):
		return cand
	}
	return cur
}

// lastLine is the last non-empty line of a message: tools print their reason last.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// truncate caps a message copied into the status.
func truncate(s string) string {
	if len(s) <= maxMessageLen {
		return s
	}
	return s[:maxMessageLen-3] + "..."
}
