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
	"regexp"
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
	// retry: the operator looks again after its retry interval (a missing PVC, a name
	// held by someone else), since the fix does not touch the model; otherwise only a
	// spec change helps (InvalidSpec). Either way the model is Stalled.
	retry bool
	// transient: an error talking to the cluster, retried with backoff. While it is
	// recent the status keeps what it said, Reconciling aside.
	transient bool
	// lasting: a transient error that has gone on past the grace period; it stalls the
	// model.
	lasting bool
}

// observation is everything the status is derived from.
type observation struct {
	// deployment is the server Deployment as the API server returned it after the apply
	// (nil when it was not applied, or does not exist).
	deployment *appsv1.Deployment
	// pods are the model's server pods.
	pods []corev1.Pod
	// mountFailures are the kubelet's latest FailedMount messages, by pod name, for
	// current pods whose containers have not started.
	mountFailures map[string]string
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
	// mountFailed is the kubelet's message for a current pod whose volumes it cannot
	// mount yet, for a reason it may get over.
	mountFailed string
	// problem is the first problem of a current pod.
	problem *problem
	// failure is the newest container failure of any pod.
	failure *inferencev1alpha1.Failure
	// old counts pods of an older spec that still exist.
	old int
	// live counts pods that still exist, terminating ones included.
	live int
}

// kstate is where a model stands for kstatus.
type kstate int

const (
	// kCurrent: Ready is True; neither Reconciling nor Stalled is present.
	kCurrent kstate = iota
	// kReconciling: the model converges on its own.
	kReconciling
	// kStalled: the model will not converge without a change by someone.
	kStalled
)

// summarize derives the status from what was observed. It is pure: the same inputs
// give the same status (now is only used for failures that carry no time of their own).
//
// Whatever it reports keeps the kstatus contract on its own, so tools never need to
// fall back on Ready: Ready=True with neither Reconciling nor Stalled; or Ready not True
// with exactly one of them.
func summarize(model *inferencev1alpha1.RKLLMModel, obs observation, now metav1.Time) inferencev1alpha1.RKLLMModelStatus {
	st := *model.Status.DeepCopy()
	gen := model.Generation
	spec := &model.Spec

	report := inspectPods(obs.pods, obs.hash, obs.mountFailures, st.LastFailure, now)
	st.LastFailure = report.failure
	st.ModelFetches = modelFetches(model, obs.pods, obs.hash)
	st.Model = modelDisplayName(model)
	st.TargetPlatform = targetPlatform(model)
	st.Selector = metav1.FormatLabelSelector(metav1.SetAsLabelSelector(selectorLabels(model)))
	if d := obs.deployment; d != nil {
		st.Replicas = d.Status.Replicas
		st.ReadyReplicas = d.Status.ReadyReplicas
		st.Endpoint = endpoint(model)
	}

	switch b := obs.blocked; {
	case b != nil && b.transient && !b.lasting:
		summarizeRetrying(&st, gen, b)
		return st
	case b != nil:
		// Stalled: observedGeneration says the operator looked at this generation, which
		// kstatus needs before it reports Failed.
		st.ObservedGeneration = gen
		summarizeBlocked(&st, gen, report, b)
		return st
	}
	if obs.applied {
		st.ObservedGeneration = gen
	}
	if spec.Suspend || spec.GetReplicas() == 0 {
		summarizeStopped(&st, gen, obs.deployment, report, spec.Suspend)
		return st
	}
	summarizeServing(&st, model, obs, report)
	return st
}

// summarizeServing reports a model that should have server pods: ready, failing (the
// pods' or the Deployment's problem stalls it), or on its way (Reconciling).
func summarizeServing(st *inferencev1alpha1.RKLLMModelStatus, model *inferencev1alpha1.RKLLMModel, obs observation, report podReport) {
	gen := model.Generation
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	desired := model.Spec.GetReplicas()
	ready := rolloutComplete(obs.deployment, desired, report)
	degraded := degradedBy(report, obs.deployment)

	state := kReconciling
	switch {
	case ready:
		msg := fmt.Sprintf("%d/%d replicas ready, serving at %s", st.ReadyReplicas, desired, endpoint(model))
		set(inferencev1alpha1.ConditionReady, metav1.ConditionTrue, inferencev1alpha1.ReasonReady, msg)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse, inferencev1alpha1.ReasonRolloutComplete,
			"every server pod runs the current spec")
		st.Phase = inferencev1alpha1.PhaseReady
		state = kCurrent
		report.modelAvailable = true
	case degraded != nil:
		msg := fmt.Sprintf("%d/%d replicas ready: %s", st.ReadyReplicas, desired, degraded.message)
		set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse, degraded.reason, msg)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse, degraded.reason, degraded.message)
		st.Phase = inferencev1alpha1.PhaseFailed
		state = kStalled
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
	setModelAvailable(st, gen, report, nil)
	if state == kCurrent && !obs.applied {
		// Not every object is in place for this generation yet.
		state = kReconciling
	}
	ready0 := meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionReady)
	setKstatus(st, gen, state, ready0.Reason, ready0.Message)
}

// summarizeRetrying reports a transient error talking to the cluster. Ready, the phase
// and the other conditions keep what they said, since the servers keep serving what was
// applied before: a control-plane hiccup must not make a model flap. Only Reconciling
// says the operator is retrying.
func summarizeRetrying(st *inferencev1alpha1.RKLLMModelStatus, gen int64, b *blocker) {
	msg := "retrying after an error: " + b.message
	if meta.FindStatusCondition(st.Conditions, inferencev1alpha1.ConditionReady) == nil {
		// The first reconcile failed: Ready is always present.
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: inferencev1alpha1.ConditionReady,
			Status: metav1.ConditionFalse, Reason: b.reason, Message: msg, ObservedGeneration: gen})
	}
	if st.Phase == "" {
		st.Phase = inferencev1alpha1.PhasePending
	}
	setKstatus(st, gen, kReconciling, b.reason, msg)
}

// summarizeBlocked reports a reconcile that stopped before applying everything, for a
// reason that needs someone: the model is Stalled (the operator retries where a retry can
// see the fix).
func summarizeBlocked(st *inferencev1alpha1.RKLLMModelStatus, gen int64, report podReport, b *blocker) {
	set := func(t string, s metav1.ConditionStatus) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: b.reason, Message: b.message, ObservedGeneration: gen})
	}
	set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse)
	set(inferencev1alpha1.ConditionDegraded, metav1.ConditionTrue)
	set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse)
	setModelAvailable(st, gen, report, b)
	st.Phase = inferencev1alpha1.PhaseFailed
	setKstatus(st, gen, kStalled, b.reason, b.message)
}

// summarizeStopped reports a model asked to run no server pods (suspended, or scaled to
// zero): Reconciling while pods are still stopping, then Ready=True, since what was asked
// for is done, and kstatus Current. The phase says why no pod runs.
func summarizeStopped(st *inferencev1alpha1.RKLLMModelStatus, gen int64, d *appsv1.Deployment, report podReport, suspend bool) {
	reason, phase, why := inferencev1alpha1.ReasonScaledToZero, inferencev1alpha1.PhaseScaledToZero,
		"spec.replicas is 0: no server pods run; scale up (kubectl scale rkm/NAME --replicas=1) to serve"
	if suspend {
		reason, phase, why = inferencev1alpha1.ReasonSuspended, inferencev1alpha1.PhaseSuspended,
			"spec.suspend is true: no server pods run"
	}
	st.Phase = phase
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	set(inferencev1alpha1.ConditionDegraded, metav1.ConditionFalse, reason, why)
	set(inferencev1alpha1.ConditionModelAvailable, metav1.ConditionFalse, reason, why)
	stopping := report.live > 0 || d == nil || d.Status.ObservedGeneration < d.Generation || d.Status.Replicas > 0
	if stopping {
		what := fmt.Sprintf("%s; stopping the server pods that still run", why)
		set(inferencev1alpha1.ConditionReady, metav1.ConditionFalse, inferencev1alpha1.ReasonScalingDown, what)
		set(inferencev1alpha1.ConditionProgressing, metav1.ConditionTrue, inferencev1alpha1.ReasonScalingDown, what)
		setKstatus(st, gen, kReconciling, inferencev1alpha1.ReasonScalingDown, what)
		return
	}
	set(inferencev1alpha1.ConditionReady, metav1.ConditionTrue, reason, why)
	set(inferencev1alpha1.ConditionProgressing, metav1.ConditionFalse, reason, why)
	setKstatus(st, gen, kCurrent, "", "")
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
	case r.mountFailed != "":
		return inferencev1alpha1.ReasonVolumeMountFailed, inferencev1alpha1.PhasePending, "the kubelet cannot mount a volume yet: " + r.mountFailed
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

// setKstatus keeps the kstatus conditions: Reconciling or Stalled, present only while
// true and never both.
func setKstatus(st *inferencev1alpha1.RKLLMModelStatus, gen int64, state kstate, reason, msg string) {
	if reason == "" {
		reason = inferencev1alpha1.ReasonPending
	}
	for _, c := range []struct {
		t  string
		on bool
	}{{inferencev1alpha1.ConditionReconciling, state == kReconciling}, {inferencev1alpha1.ConditionStalled, state == kStalled}} {
		if !c.on {
			meta.RemoveStatusCondition(&st.Conditions, c.t)
			continue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: c.t, Status: metav1.ConditionTrue, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
}

// secretNotFound and secretKeyNotFound match what the kubelet reports for a missing
// Secret or key: a FailedMount event of a secret or projected volume, or the
// CreateContainerConfigError of an env or envFrom reference.
var (
	secretNotFound    = regexp.MustCompile(`secrets? "([^"]+)" not found`)
	secretKeyNotFound = regexp.MustCompile(`(?:non-existent secret key: (\S+))|(?:couldn't find key (\S+) in Secret (\S+))`)
)

// secretProblem recognises a missing Secret or key in a kubelet message; where says what
// could not start.
func secretProblem(where, msg string) *problem {
	switch {
	case secretKeyNotFound.MatchString(msg):
		return &problem{inferencev1alpha1.ReasonSecretKeyNotFound, fmt.Sprintf(
			"%s: a Secret it uses has no such key (%s): add the key, or fix the key name (such as spec.server.apiKeySecretRef.key)",
			where, truncate(msg))}
	case secretNotFound.MatchString(msg):
		return &problem{inferencev1alpha1.ReasonSecretNotFound, fmt.Sprintf(
			"%s: a Secret it uses does not exist (%s): create it in the model's namespace, or fix the name (such as spec.server.apiKeySecretRef.name)",
			where, truncate(msg))}
	}
	return nil
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

// inspectPods summarises the pods; mounts are the kubelet's FailedMount messages by pod
// name, and prev is the failure recorded so far.
func inspectPods(pods []corev1.Pod, hash string, mounts map[string]string, prev *inferencev1alpha1.Failure, now metav1.Time) podReport {
	r := podReport{failure: prev, live: len(pods)}
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
		inspectCurrentPod(pod, mounts[pod.Name], &r)
	}
	return r
}

// inspectCurrentPod adds a pod of the current spec to the report; mountFailure is the
// kubelet's latest FailedMount message for it.
func inspectCurrentPod(pod *corev1.Pod, mountFailure string, r *podReport) {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			r.unschedulable = truncate(c.Message)
			return
		}
	}
	if mountFailure != "" && !containersStarted(pod) {
		inspectMountFailure(mountFailure, r)
		return
	}
	if !inspectInitContainers(pod, r) {
		return
	}
	inspectServerContainer(pod, r)
}

// inspectServerContainer reports the server container of a pod past its downloads.
func inspectServerContainer(pod *corev1.Pod, r *podReport) {
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

// inspectMountFailure reports a volume the kubelet cannot mount. It mounts volumes
// before it starts any container, and what it cannot mount shows only in its events: a
// missing Secret or key needs someone; anything else it may get over.
func inspectMountFailure(msg string, r *podReport) {
	if p := secretProblem("the server pod cannot start", msg); p != nil {
		setProblem(r, p)
	} else if r.mountFailed == "" {
		r.mountFailed = truncate(msg)
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

// containersStarted reports whether any container of the pod ran, which means its
// volumes were mounted.
func containersStarted(pod *corev1.Pod) bool {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.State.Running != nil || cs.State.Terminated != nil || cs.RestartCount > 0 {
				return true
			}
		}
	}
	return false
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
			where := "container " + cs.Name + " cannot start"
			if p := secretProblem(where, w.Message); p != nil {
				return p
			}
			return &problem{inferencev1alpha1.ReasonContainerConfigError, fmt.Sprintf("%s: %s", where, truncate(w.Message))}
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
