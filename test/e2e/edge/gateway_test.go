//go:build e2e

package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

// The gateway's models: two, more than the real-kubelet node's one NPU, which is the only
// node they may run on.
const (
	swapA = "chat"
	swapB = "coder"
)

// openaiNodeVersion is the openai npm package the cluster test installs (as
// make test-openai-node does).
const openaiNodeVersion = "6.49.0"

// gatewayPort is where the first gateway listens in the node's network (the second
// takes the next two ports).
const gatewayPort = 30080

// gatewaySwap runs two gateway replicas (the chart's Deployment arguments, as its
// ServiceAccount, in the real-kubelet node's network) in front of two models at zero
// whose servers really run on that node's one NPU: a request for A activates A; a
// request for B evicts idle A and activates B; while B streams, a request for A gets 503
// with Retry-After from the replica configured not to wait (--no-capacity-wait=-1s,
// which sees B busy only through B's pod) and waits, with SSE comments, at the one that
// waits, until B's stream ends and B is evicted in turn; then the official openai npm
// client does the same through the gateway. Every activation and eviction is an Event and
// a metric. The NPU of the real-kubelet node must be free.
func (s *suite) gatewaySwap() {
	s.step("gateway: models chat and coder at zero, both only on the real-kubelet node (one NPU); gateway replicas g1 (waits for an NPU) and g2 (503 at once)")
	dir := filepath.Join(s.work, "gateway-models")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	for name, tokens := range map[string]int{swapA: 16, swapB: 3000} {
		m := simulator.DefaultModel()
		// coder's replies outlast any wait here; the test ends its stream itself.
		m.ReplyMinTokens, m.ReplyMaxTokens = tokens, tokens
		if err := simulator.WriteModel(filepath.Join(dir, name+".rkllm"), m); err != nil {
			s.t.Fatal(err)
		}
		s.apply(swapModel(name, filepath.Join(dir, name+".rkllm")))
	}
	deployment := release + "-gateway"
	fast := []string{"--min-lifetime=1s", "--keepalive-interval=1s", "--recheck-interval=2s", "--activation-timeout=" + readyTimeout.String()}
	g1, err := s.c.StartGateway(s.ctx, gatewayBinary(s), namespace, deployment, "g1", gatewayPort, fast...)
	if err != nil {
		s.t.Fatal(err)
	}
	g2, err := s.c.StartGateway(s.ctx, gatewayBinary(s), namespace, deployment, "g2", gatewayPort+2, append(fast, "--no-capacity-wait=-1s")...)
	if err != nil {
		s.t.Fatal(err)
	}
	var list struct {
		Data []struct {
			ID     string `json:"id"`
			Loaded bool   `json:"loaded"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(s.getText(g1.URL+"/v1/models")), &list); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("GET /v1/models: %+v", list.Data)
	if len(list.Data) != 2 || list.Data[0].Loaded || list.Data[1].Loaded {
		s.t.Errorf("the gateway lists %+v, want chat and coder, neither loaded", list.Data)
	}

	s.step("gateway: a request for chat activates it (0 -> 1 replica through the RKLLMModel)")
	start := time.Now()
	s.chatThrough(g1.URL, swapA)
	s.t.Logf("TIME activation of chat from zero, request to reply: %s", time.Since(start).Round(time.Millisecond))
	s.checkReplicas(swapA, 1)

	s.step("gateway: a request for coder evicts idle chat and activates coder")
	start = time.Now()
	stream := s.openStream(g1.URL, swapB)
	stream.readContent(s)
	s.t.Logf("TIME swap chat -> coder, request to first token: %s", time.Since(start).Round(time.Millisecond))
	s.checkReplicas(swapA, 0)
	s.checkReplicas(swapB, 1)
	s.waitEvent(swapA, "Evicted", swapB)
	s.waitEvent(swapB, "Activated", swapA)

	s.step("gateway: while coder streams, g2 answers a request for chat 503 with Retry-After, saying coder is busy")
	code, hdr, body := s.post(g2.URL, swapA, false)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(body, "no_capacity") || !strings.Contains(body, swapB+" is busy") {
		s.t.Errorf("g2, chat while coder streams: %d Retry-After %q %s; want 503 no_capacity with Retry-After, naming coder", code, hdr.Get("Retry-After"), body)
	}
	s.checkReplicas(swapB, 1)

	s.step("gateway: while coder streams, g1 holds a streamed request for chat (SSE comments) until coder's stream ends, then swaps")
	waiting := s.openStream(g1.URL, swapA)
	if !strings.HasPrefix(waiting.first, ":") {
		s.t.Errorf("g1's first line for chat while coder streams is %q, want an SSE comment (the request waits)", waiting.first)
	}
	s.checkReplicas(swapA, 0)
	start = time.Now()
	stream.close()
	waiting.readContent(s)
	waiting.close()
	s.t.Logf("TIME swap coder -> chat, coder's stream closed to chat's first token: %s", time.Since(start).Round(time.Millisecond))
	s.checkReplicas(swapB, 0)
	s.checkReplicas(swapA, 1)

	s.step("gateway: the official openai npm client through the gateway: the list, a stream from the loaded model, a swap")
	s.openaiNode(g1.URL)

	s.step("gateway: activations and evictions are metrics too")
	metrics := s.getText(g1.AdminURL + "/metrics")
	for _, want := range []string{
		`rkllm_gateway_activations_total{model="chat",outcome="ready"}`,
		`rkllm_gateway_evictions_total{model="chat"}`,
		`rkllm_gateway_evictions_total{model="coder"}`,
	} {
		if !strings.Contains(metrics, want) {
			s.t.Errorf("g1's /metrics lacks %s", want)
		}
	}
	for _, g := range []*edgecluster.Gateway{g1, g2} {
		if err := g.Stop(15 * time.Second); err != nil {
			s.t.Error(err)
		}
		s.c.Forget(g.Process)
	}
	for _, name := range []string{swapA, swapB} {
		if err := s.cl.Delete(s.ctx, &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: name}}); err != nil {
			s.t.Fatal(err)
		}
		s.waitChildrenGone(name)
	}
}

// swapModel is a model the gateway scales: at zero, on the real-kubelet node only.
func swapModel(name, file string) *inferencev1alpha1.RKLLMModel {
	zero, one := int32(0), int32(1)
	return &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: name},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:        inferencev1alpha1.ModelSource{HostPath: file},
			Replicas:     &zero,
			Scaling:      &inferencev1alpha1.ScalingSpec{MinReplicas: &zero, MaxReplicas: &one},
			NodeSelector: map[string]string{"kubernetes.io/hostname": edgecluster.KubeletNode},
			Server:       &inferencev1alpha1.ServerSpec{ShutdownTimeout: &metav1.Duration{Duration: 2 * time.Second}},
			Resources: &inferencev1alpha1.Resources{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
			},
		},
	}
}

// gatewayClient has no overall timeout: a request waits for an activation, bounded by
// the suite's context.
var gatewayClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// post sends a small chat to model and returns the status, headers and body.
func (s *suite) post(base, model string, stream bool) (int, http.Header, string) {
	s.t.Helper()
	resp := s.send(base, model, stream)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

func (s *suite) send(base, model string, stream bool) *http.Response {
	s.t.Helper()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello from the e2e test"}],"stream":%t}`, model, stream)
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := gatewayClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp
}

// chatThrough asks model for a reply through the gateway at base and checks it came
// from model's server.
func (s *suite) chatThrough(base, model string) {
	s.t.Helper()
	code, _, body := s.post(base, model, false)
	var r struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &r) != nil || r.Model != model || len(r.Choices) != 1 || r.Choices[0].Message.Content == "" {
		s.t.Fatalf("chat with %s through the gateway: %d %s", model, code, body)
	}
}

// sse is a streamed reply being read.
type sse struct {
	resp *http.Response
	r    *bufio.Reader
	// first is the first line read: a comment while the request waits, or data.
	first string
}

// openStream sends a streamed chat to model and reads up to its first line that is
// not blank: an SSE comment while the gateway holds the request, or the first chunk.
func (s *suite) openStream(base, model string) *sse {
	s.t.Helper()
	resp := s.send(base, model, true)
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		s.t.Fatalf("streamed chat with %s: %s %s", model, resp.Status, data)
	}
	st := &sse{resp: resp, r: bufio.NewReader(resp.Body)}
	st.first = st.next(s)
	return st
}

func (st *sse) next(s *suite) string {
	s.t.Helper()
	for {
		line, err := st.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading the stream: %v", err)
		}
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
}

// readContent reads past comments to the first data chunk and checks it is content.
func (st *sse) readContent(s *suite) {
	s.t.Helper()
	line := st.first
	for ; ; line = st.next(s) {
		if strings.HasPrefix(line, ":") {
			continue
		}
		st.first = ""
		if !strings.HasPrefix(line, "data: {") || strings.Contains(line, `"error"`) {
			s.t.Fatalf("the stream's first event is %q, want a chunk", line)
		}
		return
	}
}

func (st *sse) close() { _ = st.resp.Body.Close() }

// checkReplicas checks the model's spec.replicas, which the gateway writes.
func (s *suite) checkReplicas(name string, want int32) {
	s.t.Helper()
	var m inferencev1alpha1.RKLLMModel
	if err := s.cl.Get(s.ctx, keyOf(name), &m); err != nil {
		s.t.Fatal(err)
	}
	if m.Spec.Replicas == nil || *m.Spec.Replicas != want {
		s.t.Errorf("model %s has spec.replicas %v, want %d", name, m.Spec.Replicas, want)
	}
}

// waitEvent waits for an Event of reason on model whose note names other.
func (s *suite) waitEvent(model, reason, other string) {
	s.t.Helper()
	err := edgecluster.Poll(s.ctx, statusTimeout, fmt.Sprintf("a %s Event on %s naming %s", reason, model, other), func(ctx context.Context) (bool, string, error) {
		evs, err := s.c.Client.EventsV1().Events(models).List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=" + model})
		if err != nil {
			return false, err.Error(), nil
		}
		var seen []string
		for _, e := range evs.Items {
			if e.Reason == reason && strings.Contains(e.Note, other) {
				s.t.Logf("Event on %s: %s %s", model, e.Reason, e.Note)
				return true, "", nil
			}
			seen = append(seen, e.Reason+": "+e.Note)
		}
		return false, strings.Join(seen, "; "), nil
	})
	if err != nil {
		s.t.Error(err)
	}
}

func (s *suite) getText(url string) string {
	s.t.Helper()
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, url, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := gatewayClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		s.t.Fatal(err)
	}
	return string(data)
}

// openaiNode installs the openai npm package and runs test/openai-node/cluster.test.mjs
// against the gateway at base.
func (s *suite) openaiNode(base string) {
	s.t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			s.t.Fatalf("%s is missing: make deps installs Debian's nodejs and npm", tool)
		}
	}
	dir := filepath.Join(s.work, "openai-node")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		s.t.Fatal(err)
	}
	install := exec.CommandContext(s.ctx, "npm", "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts",
		"--legacy-peer-deps", "--loglevel=error", "openai@"+openaiNodeVersion)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		s.t.Fatalf("npm install openai@%s: %v\n%s", openaiNodeVersion, err, out)
	}
	src, err := os.ReadFile(filepath.Join(repoRoot, "test", "openai-node", "cluster.test.mjs"))
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.test.mjs"), src, 0o600); err != nil {
		s.t.Fatal(err)
	}
	run := exec.CommandContext(s.ctx, "node", "--test", "--test-concurrency=1", "cluster.test.mjs")
	run.Dir = dir
	run.Env = append(os.Environ(), "OPENAI_BASE_URL="+base+"/v1", "OPENAI_API_KEY=unused")
	out, err := run.CombinedOutput()
	s.t.Logf("node --test cluster.test.mjs:\n%s", out)
	if err != nil {
		s.t.Errorf("the openai npm client through the gateway: %v", err)
	}
}

// gatewayBinary is the rkllm-gateway the Makefile built.
func gatewayBinary(s *suite) string { return makevars.Path(s.t, "E2E_GATEWAY", "e2e") }
