//go:build e2e

package edge_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

// chainModel is the model of the chain steps, whose one pod runs on the real-kubelet
// node.
const chainModel = "chain"

// chain runs the whole chain on the real-kubelet node, for real: a model whose init
// container downloads its file from a local HTTP server (a wrong sha256 fails the
// download and the status says so), whose server loads it on the simulator library and
// is Ready only once the kubelet's readiness probe passed (a model that fails to load,
// through the simulator's fault variable in the model's spec, keeps the pod Running but
// not Ready; one whose runtime crashes at every load makes the server give up and exit,
// and the model Degraded with lastFailure saying why), streams tokens through its pod IP, drains on `kubectl delete pod` (the
// stream goes on through the preStop pause and ends cut by the shutdown, and the server
// exits 0 after SIGTERM), and never runs two servers on the node's one NPU during a
// rollout. The NPU of the real-kubelet node must be free.
func (s *suite) chain() {
	s.step("chain: a model downloaded from a local HTTP server onto the real-kubelet node")
	dir := filepath.Join(s.work, "served")
	file := filepath.Join(dir, "chain-sim.rkllm")
	m := simulator.DefaultModel()
	// Replies long enough to outlast the preStop pause at the simulator's 15 tokens/s.
	m.ReplyMinTokens, m.ReplyMaxTokens = 3000, 3000
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := simulator.WriteModel(file, m); err != nil {
		s.t.Fatal(err)
	}
	base, err := s.c.ServeFiles(s.ctx, dir)
	if err != nil {
		s.t.Fatal(err)
	}
	sum := sha256File(s, file)
	url := base + "/" + filepath.Base(file)

	s.step("chain: a wrong sha256 fails the download: Degraded, and lastFailure has the fetch's exit code and message")
	wrong := strings.Repeat("0", 64)
	s.apply(chainModelSpec(url, wrong))
	got := s.waitModel(chainModel, "failed to download", func(m *inferencev1alpha1.RKLLMModel) bool {
		r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
		d := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionDegraded)
		f := m.Status.LastFailure
		return r != nil && r.Reason == inferencev1alpha1.ReasonDownloadFailed && d != nil && d.Status == metav1.ConditionTrue &&
			f != nil && f.ExitCode != nil && *f.ExitCode != 0 && f.Container == "fetch-model" && strings.Contains(f.Message, "sha256 mismatch")
	})
	s.t.Logf("lastFailure: %+v", *got.Status.LastFailure)

	s.step("chain: with the model failing to load (RKLLM_SIM_INIT_FAIL in spec.runtime.env) the pod runs, the kubelet's probe fails, and nothing is Ready")
	s.patch(chainModel, fmt.Sprintf(`{"spec":{"model":{"sha256":%q},"runtime":{"env":[{"name":"RKLLM_SIM_INIT_FAIL","value":"1"}]}}}`, sum))
	pod := s.waitChainPod("Running, the kubelet's startup probe failed", func(p *corev1.Pod) bool {
		return serverRunning(p) && s.probeFailed(p)
	})
	if podIsReady(pod) {
		s.t.Fatalf("pod %s is Ready while its server cannot load the model", pod.Name)
	}
	if code, body := s.get(pod.Status.PodIP, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "simulated init failure") {
		s.t.Errorf("the server's /readyz at %s: %d %s; want 503 naming the init failure", pod.Status.PodIP, code, body)
	}
	var cur inferencev1alpha1.RKLLMModel
	if err := s.cl.Get(s.ctx, keyOf(chainModel), &cur); err != nil || edgecluster.IsReady(&cur) {
		s.t.Errorf("model %s: %v, %s; want not Ready", chainModel, err, edgecluster.DescribeModel(&cur))
	}

	s.crashLoop()

	s.step("chain: without the fault the server loads the model and the pod is Ready once the kubelet's readiness probe passed")
	s.patch(chainModel, `{"spec":{"runtime":{"env":null}}}`)
	s.waitReady(chainModel)
	pod = s.waitChainPod("Ready", podIsReady)
	s.checkReadyAfterPod(pod)
	if code, body := s.get(pod.Status.PodIP, "/readyz"); code != http.StatusOK {
		s.t.Errorf("the server's /readyz at %s: %d %s; want 200", pod.Status.PodIP, code, body)
	}
	logs, err := s.c.Run(s.ctx, nil, s.kubectl, "logs", "-n", models, pod.Name, "-c", "server")
	if err != nil || !strings.Contains(logs, "simulator") {
		s.t.Errorf("kubectl logs of the server: %v\n%s\nwant the server's log (its simulator notice)", err, logs)
	}

	s.step("chain: kubectl delete pod during a stream: tokens keep coming through the preStop pause, the stream ends cut by the shutdown, the server exits 0 after SIGTERM")
	s.deleteDuringStream(pod)

	s.step("chain: a rollout never runs two servers on the node's one NPU")
	s.waitReady(chainModel)
	oldHash := s.podHashes(chainModel)
	rec := s.recordPods(chainModel)
	// A parameter that needs a new server (the context length is fixed at load).
	s.patch(chainModel, `{"spec":{"parameters":{"maxContextLen":2048}}}`)
	s.waitRolledOver(chainModel, oldHash)
	rec.stop()
	rec.checkOneServerAtATime(s)

	if err := s.cl.Delete(s.ctx, &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: chainModel}}); err != nil {
		s.t.Fatal(err)
	}
	s.waitChildrenGone(chainModel)
}

// crashLoop: a runtime that crashes at every load (RKLLM_SIM_CRASH_AFTER=0 through
// spec.runtime.env: SIGSEGV in the run that learns the model's embedding width) makes the
// server give up after --max-worker-failures workers in a row and exit 1 with why in its
// termination message; the kubelet restarts it into CrashLoopBackOff, and the model is
// Degraded and Stalled with lastFailure naming the server container, its exit code and
// that message.
func (s *suite) crashLoop() {
	s.step("chain: a runtime crashing at every load (RKLLM_SIM_CRASH_AFTER=0 in spec.runtime.env): the server gives up and exits 1, the model is Degraded with lastFailure saying why")
	s.patch(chainModel, `{"spec":{"runtime":{"env":[{"name":"RKLLM_SIM_CRASH_AFTER","value":"0"}]}}}`)
	got := s.waitModel(chainModel, "Degraded by the server's crash loop", func(m *inferencev1alpha1.RKLLMModel) bool {
		r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
		d := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionDegraded)
		st := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionStalled)
		f := m.Status.LastFailure
		return m.Status.ObservedGeneration == m.Generation && r != nil && r.Status == metav1.ConditionFalse && r.Reason == inferencev1alpha1.ReasonServerFailed &&
			d != nil && d.Status == metav1.ConditionTrue && st != nil && st.Status == metav1.ConditionTrue &&
			f != nil && f.Container == "server" && f.ExitCode != nil && *f.ExitCode == 1
	})
	f := got.Status.LastFailure
	s.t.Logf("lastFailure: %s exit %d: %s", f.Reason, *f.ExitCode, f.Message)
	for _, want := range []string{"giving up (--max-worker-failures 5)", "SIGSEGV", "simulated crash"} {
		if !strings.Contains(f.Message, want) {
			s.t.Errorf("lastFailure's message %q lacks %q: not the server's termination message", f.Message, want)
		}
	}
	if r := meta.FindStatusCondition(got.Status.Conditions, inferencev1alpha1.ConditionReady); !strings.Contains(r.Message, "giving up") {
		s.t.Errorf("Ready's message %q does not say why the server fails", r.Message)
	}
}

// chainModelSpec is the chain's model: a download with its checksum, on the
// real-kubelet node, with a short shutdown timeout so a drained stream ends soon.
func chainModelSpec(url, sum string) *inferencev1alpha1.RKLLMModel {
	one := int32(1)
	return &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: chainModel},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:        inferencev1alpha1.ModelSource{URL: url, SHA256: sum},
			Replicas:     &one,
			NodeSelector: map[string]string{"kubernetes.io/hostname": edgecluster.KubeletNode},
			Server:       &inferencev1alpha1.ServerSpec{ShutdownTimeout: &metav1.Duration{Duration: 2 * time.Second}},
			Resources: &inferencev1alpha1.Resources{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
			},
		},
	}
}

func sha256File(s *suite, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		s.t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

func keyOf(name string) client.ObjectKey { return client.ObjectKey{Namespace: models, Name: name} }

// waitChainPod waits for the chain model's current pod (not being deleted) to satisfy ok.
func (s *suite) waitChainPod(what string, ok func(*corev1.Pod) bool) *corev1.Pod {
	s.t.Helper()
	var found *corev1.Pod
	err := edgecluster.Poll(s.ctx, readyTimeout, "the pod of "+chainModel+" to be "+what, func(ctx context.Context) (bool, string, error) {
		pods, err := s.c.ModelPods(ctx, models, chainModel)
		if err != nil {
			return false, err.Error(), nil
		}
		var m inferencev1alpha1.RKLLMModel
		if err := s.cl.Get(ctx, keyOf(chainModel), &m); err != nil {
			return false, err.Error(), nil
		}
		for i := range pods {
			p := &pods[i]
			if p.DeletionTimestamp == nil && p.Annotations[hashAnnotation] != "" && ok(p) {
				found = p
				return true, "", nil
			}
		}
		return false, edgecluster.DescribePods(pods) + edgecluster.DescribeModel(&m), nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return found
}

// checkReadyAfterPod checks that the model turned Ready no earlier than the kubelet
// marked its pod Ready (after the readiness probe passed): the operator follows the
// kubelet, it does not guess.
func (s *suite) checkReadyAfterPod(pod *corev1.Pod) {
	s.t.Helper()
	var m inferencev1alpha1.RKLLMModel
	if err := s.cl.Get(s.ctx, keyOf(chainModel), &m); err != nil {
		s.t.Fatal(err)
	}
	r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && r != nil && r.LastTransitionTime.Before(&c.LastTransitionTime) {
			s.t.Errorf("model %s Ready at %s, before its pod %s was (%s)", chainModel, r.LastTransitionTime, pod.Name, c.LastTransitionTime)
		}
	}
}

func serverRunning(p *corev1.Pod) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == "server" {
			return cs.State.Running != nil
		}
	}
	return false
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// probeFailed reports whether the kubelet recorded a failed startup or readiness probe
// of the pod (its Unhealthy events).
func (s *suite) probeFailed(p *corev1.Pod) bool {
	evs, err := s.c.Client.CoreV1().Events(p.Namespace).List(s.ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.name=" + p.Name + ",reason=Unhealthy",
	})
	if err != nil {
		return false
	}
	for _, e := range evs.Items {
		if strings.Contains(e.Message, "probe failed") && strings.Contains(e.Message, "503") {
			return true
		}
	}
	return false
}

// get does a GET on the server at a pod IP of the real-kubelet node.
func (s *suite) get(ip, path string) (int, string) {
	s.t.Helper()
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, "http://"+ip+":8080"+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := s.c.HTTPClient().Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	var b strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&b)
	return resp.StatusCode, b.String()
}

// streamLine is one NDJSON line of a streamed rkllm.run: an rkllm.result notification
// per token, then the response.
type streamLine struct {
	Method string `json:"method"`
	Result *struct {
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
	} `json:"result"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// deleteDuringStream streams from the pod's server, deletes the pod once tokens flow,
// and checks the stream and the server's exit.
func (s *suite) deleteDuringStream(pod *corev1.Pod) {
	s.t.Helper()
	w, err := s.c.Client.CoreV1().Pods(models).Watch(s.ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod.Name})
	if err != nil {
		s.t.Fatal(err)
	}
	defer w.Stop()
	body := `{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"role":"user","input_type":"RKLLM_INPUT_PROMPT","prompt_input":"a long story"},"stream":true}}`
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, "http://"+pod.Status.PodIP+":8080/rpc", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.c.HTTPClient().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	tokens, afterDelete := 0, 0
	deleted := false
	var last streamLine
	for sc.Scan() {
		var l streamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			s.t.Fatalf("stream line %q: %v", sc.Text(), err)
		}
		last = l
		if l.Method == "rkllm.result" {
			tokens++
			if deleted {
				afterDelete++
			}
		}
		if tokens == 5 && !deleted {
			if _, err := s.c.Run(s.ctx, nil, s.kubectl, "delete", "pod", "-n", models, pod.Name, "--wait=false"); err != nil {
				s.t.Fatal(err)
			}
			deleted = true
		}
	}
	if !deleted {
		s.t.Fatalf("the stream ended after %d tokens, before the delete (%v)", tokens, sc.Err())
	}
	if afterDelete == 0 {
		s.t.Errorf("no token after kubectl delete: the server stopped before the preStop pause ended")
	}
	cut := last.Result != nil && last.Result.FinishReason == "abort" || last.Error != nil && last.Error.Code == -32009
	if !cut {
		s.t.Errorf("the stream's last message %+v; want the generation cut by the shutdown (finish_reason abort)", last)
	}
	s.t.Logf("stream: %d tokens, %d after kubectl delete, then %+v", tokens, afterDelete, last)
	s.checkExitedZero(w, pod.Name)
}

// checkExitedZero follows the pod's watch until it is deleted and checks the server
// container's last state: terminated with exit code 0, so the server ended by itself
// after SIGTERM within the grace period (the kubelet's SIGKILL at its end would show
// 137).
func (s *suite) checkExitedZero(w watch.Interface, name string) {
	s.t.Helper()
	var term *corev1.ContainerStateTerminated
	timeout := time.After(readyTimeout)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				s.t.Fatal("the pod watch ended before the pod was deleted")
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod {
				continue
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name == "server" && cs.State.Terminated != nil {
					term = cs.State.Terminated
				}
			}
			if ev.Type != watch.Deleted {
				continue
			}
			if term == nil || term.ExitCode != 0 || term.Reason != "Completed" {
				s.t.Errorf("pod %s deleted with server container last terminated %+v; want exit code 0, Completed: the server exits by itself within the grace period, not by SIGKILL (137)", name, term)
			}
			return
		case <-timeout:
			s.t.Fatalf("pod %s not deleted after %s", name, readyTimeout)
		}
	}
}

// checkOneServerAtATime replays the recorded pod events: at no point did two pods have
// a running server container on the real-kubelet node.
func (r *podRecorder) checkOneServerAtATime(s *suite) {
	s.t.Helper()
	running := map[string]bool{}
	for _, ev := range r.events {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || p.Spec.NodeName != edgecluster.KubeletNode {
			continue
		}
		running[p.Name] = ev.Type != watch.Deleted && serverRunning(p)
		n := 0
		for _, on := range running {
			if on {
				n++
			}
		}
		if n > 1 {
			s.t.Errorf("two servers ran on %s's one NPU at once: %v", edgecluster.KubeletNode, running)
			return
		}
	}
	if len(running) < 2 {
		s.t.Errorf("the rollout showed %d pods on %s; want the old and the new", len(running), edgecluster.KubeletNode)
	}
}
