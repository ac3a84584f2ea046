package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/gateway/auth"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/httpapi"
	"github.com/rkllm-operator/rkllm-operator/gateway/placement"
	"github.com/rkllm-operator/rkllm-operator/gateway/routing"
)

// One URL, two models: each request reaches the server of the model it names, and the
// gateway lists both with whether they are loaded.
func TestRoutesByModel(t *testing.T) {
	chatSrv, coderSrv := upstream(t, "chat", fast(), nil), upstream(t, "coder", fast(), nil)
	g := newGateway(t, httpapi.Options{})
	g.set(model("chat", chatSrv), model("coder", coderSrv), model("sleeping"))

	for _, name := range []string{"chat", "coder"} {
		resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat(name, false, "Hello"))
		var out struct {
			Model   string `json:"model"`
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil || out.Model != name || len(out.Choices) != 1 {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	resp, body := g.do(http.MethodPost, "/v1/completions", `{"model":"coder","prompt":"def f():","max_tokens":3}`)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"model":"coder"`) {
		t.Errorf("completion: %d %s", resp.StatusCode, body)
	}
	if v, err := coderSrv.Metric(`rkllm_openai_requests_total{code="200",endpoint="completions"}`); err != nil || v != 1 {
		t.Errorf("the coder's server counted %v completions (%v), want 1", v, err)
	}

	resp, body = g.do(http.MethodGet, "/v1/models", "")
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
			Loaded bool   `json:"loaded"`
		} `json:"data"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || list.Object != "list" || len(list.Data) != 3 {
		t.Fatalf("models: %d %s", resp.StatusCode, body)
	}
	loaded := map[string]bool{}
	for _, d := range list.Data {
		loaded[d.ID] = d.Loaded
	}
	if !loaded["chat"] || !loaded["coder"] || loaded["sleeping"] {
		t.Errorf("loaded = %v, want chat and coder loaded, sleeping not", loaded)
	}
	if resp, body := g.do(http.MethodGet, "/v1/models/coder", ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"id":"coder"`) {
		t.Errorf("model: %d %s", resp.StatusCode, body)
	}

	// An unknown model: OpenAI's 404, naming the models there are.
	resp, body = g.do(http.MethodPost, "/v1/chat/completions", chat("gpt-4o", false, "Hello"))
	e := decodeError(t, body)
	if resp.StatusCode != http.StatusNotFound || ptr(e.Error.Code) != "model_not_found" || ptr(e.Error.Param) != "model" ||
		!strings.Contains(e.Error.Message, "`gpt-4o` does not exist") || !strings.Contains(e.Error.Message, "chat, coder, sleeping") {
		t.Errorf("unknown model: %d %s", resp.StatusCode, body)
	}
	// No model at all, and a body that is not JSON: 400s that say so.
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", `{"messages":[]}`); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, "names no model") {
		t.Errorf("no model: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", `model=chat`); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, "not a JSON object") {
		t.Errorf("not JSON: %d %s", resp.StatusCode, body)
	}
	if got, err := metricValue(g, `rkllm_gateway_requests_total{code="200",endpoint="chat.completions",model="chat"}`); err != nil || got != 1 {
		t.Errorf("requests_total for chat = %v (%v), want 1", got, err)
	}
	if got, err := metricValue(g, `rkllm_gateway_rejected_total{model="",reason="unknown_model"}`); err != nil || got != 1 {
		t.Errorf("rejected_total unknown_model = %v (%v), want 1", got, err)
	}
}

func ptr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// metricValue reads one sample of the gateway's metrics.
func metricValue(g *gw, name string) (float64, error) {
	rec := httptest.NewRecorder()
	g.metrics.ServeHTTP(rec, httptest.NewRequestWithContext(context.Background(), http.MethodGet, "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("no sample %s", name)
}

// A stream passes through chunk by chunk: the first event reaches the client while the
// server is still generating, and a client that leaves stops the generation.
func TestStreamsPassThroughAndCancel(t *testing.T) {
	s := upstream(t, "slow", paced(20), nil)
	g := newGateway(t, httpapi.Options{})
	g.set(model("slow", s))
	body := `{"model":"slow","stream":true,"max_tokens":400,"messages":[{"role":"user","content":"Tell me a long story"}]}`
	resp := g.open(http.MethodPost, "/v1/chat/completions", body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ev := &events{r: bufio.NewReader(resp.Body)}
	for range 3 {
		if line := ev.next(t); !strings.HasPrefix(line, "data: {") {
			t.Fatalf("event %q", line)
		}
	}
	// 400 tokens at 20 a second take 20 s: the events came before the end.
	if running := serverRunning(t, s); !running {
		t.Fatal("the server had finished before the first events reached the client: the gateway buffered the stream")
	}
	_ = resp.Body.Close()
	eventually(t, "the server to stop generating after the client left", func() (bool, string) {
		return !serverRunning(t, s), "still running"
	})
	tokens, err := s.Metric("rkllm_tokens_generated_total")
	if err != nil || tokens >= 400 {
		t.Errorf("the server generated %v tokens (%v): the run went on after the client left", tokens, err)
	}
}

// serverRunning asks the server's health whether a run is going on.
func serverRunning(t *testing.T, s *serverproc.Server) bool {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, s.Probes+"/healthz", nil)
	resp, err := s.HTTP().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var st struct {
		Running bool `json:"running"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Running
}

// The turns of a conversation stay on one of three replicas, where the server reuses
// the conversation's prefix; a conversation without affinity goes round.
func TestConversationStaysOnItsReplica(t *testing.T) {
	var servers []*serverproc.Server
	for range 3 {
		servers = append(servers, upstream(t, "chat", fast(), nil))
	}
	for _, affinity := range []bool{true, false} {
		t.Run(fmt.Sprintf("affinity=%v", affinity), func(t *testing.T) {
			before := make([]float64, 3)
			for i, s := range servers {
				before[i], _ = s.Metric(`rkllm_openai_requests_total{code="200",endpoint="chat.completions"}`)
			}
			g := newGateway(t, httpapi.Options{Routing: routing.Policy{NoAffinity: !affinity}})
			g.set(model("chat", servers...))
			msgs := []string{"Let us plan a trip to the mountains."}
			for turn := range 6 {
				resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, msgs...))
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("turn %d: %d %s", turn, resp.StatusCode, body)
				}
				var out struct {
					Choices []struct {
						Message struct {
							Content string `json:"content"`
						} `json:"message"`
					} `json:"choices"`
				}
				_ = json.Unmarshal([]byte(body), &out)
				msgs = append(msgs, out.Choices[0].Message.Content, fmt.Sprintf("And on day %d?", turn+2))
			}
			var served []int
			for i, s := range servers {
				after, _ := s.Metric(`rkllm_openai_requests_total{code="200",endpoint="chat.completions"}`)
				if n := int(after - before[i]); n > 0 {
					served = append(served, n)
				}
			}
			switch {
			case affinity && (len(served) != 1 || served[0] != 6):
				t.Errorf("with affinity, turns per replica %v; want all 6 on one", served)
			case !affinity && len(served) != 3:
				t.Errorf("without affinity, turns per replica %v; want them spread over 3", served)
			}
		})
	}
}

// A model without a ready replica is activated: the request waits, a streamed one gets
// comments meanwhile, and goes through once a replica is ready.
func TestActivationHoldsRequests(t *testing.T) {
	s := upstream(t, "chat", fast(), nil)
	g := newGateway(t, httpapi.Options{KeepAlive: 20 * time.Millisecond})
	cold := model("chat")
	cold.Replicas = 0
	g.set(cold)

	resp := g.open(http.MethodPost, "/v1/chat/completions", chat("chat", true, "Hello"))
	started := <-g.scaler.started
	if started.Name != "chat" {
		t.Fatalf("activated %s", started.Name)
	}
	plain := make(chan string, 1)
	go func() {
		r, body := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, "Hello"))
		plain <- fmt.Sprint(r.StatusCode, " ", body)
	}()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("waiting stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ev := &events{r: bufio.NewReader(resp.Body)}
	if line := ev.next(t); !strings.HasPrefix(line, ": waiting for chat to load") {
		t.Fatalf("first line %q, want a comment", line)
	}
	// The replica comes up; the activation ends.
	g.set(model("chat", s))
	g.scaler.finish(cold.Key, nil)
	var sawData, sawDone bool
	for !sawDone {
		line := ev.next(t)
		switch {
		case strings.HasPrefix(line, ":"):
		case line == "data: [DONE]":
			sawDone = true
		case strings.HasPrefix(line, "data: {") && strings.Contains(line, `"chat.completion.chunk"`):
			sawData = true
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	_ = resp.Body.Close()
	if !sawData {
		t.Error("no chunk before [DONE]")
	}
	if got := <-plain; !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"chat.completion"`) {
		t.Errorf("the request that waited without streaming: %s", got)
	}
}

// An activation that cannot find an NPU answers 503 with Retry-After and the reason; on
// a stream already opened, as an error event.
func TestActivationFailure(t *testing.T) {
	g := newGateway(t, httpapi.Options{KeepAlive: 20 * time.Millisecond})
	cold := model("coder")
	cold.Replicas = 0
	g.set(cold)
	noNPU := &placement.NoCapacityError{Model: "coder", Nodes: "on the 1 node it may run on, n1: 1 of 1 in use",
		Reasons: []string{"chat is busy (1 requests in flight)"}}

	done := make(chan string, 1)
	go func() {
		r, body := g.do(http.MethodPost, "/v1/chat/completions", chat("coder", false, "Hi"))
		done <- fmt.Sprint(r.StatusCode, " ", r.Header.Get("Retry-After"), " ", body)
	}()
	<-g.scaler.started
	g.scaler.finish(cold.Key, noNPU)
	got := <-done
	if !strings.HasPrefix(got, "503 30 ") || !strings.Contains(got, "chat is busy") || !strings.Contains(got, `"code":"no_capacity"`) {
		t.Errorf("no NPU: %s", got)
	}

	resp := g.open(http.MethodPost, "/v1/chat/completions", chat("coder", true, "Hi"))
	<-g.scaler.started
	ev := &events{r: bufio.NewReader(resp.Body)}
	if line := ev.next(t); !strings.HasPrefix(line, ":") {
		t.Fatalf("first line %q, want a comment", line)
	}
	g.scaler.finish(cold.Key, noNPU)
	line := ev.next(t)
	for strings.HasPrefix(line, ":") {
		line = ev.next(t)
	}
	if e := decodeError(t, line); ptr(e.Error.Code) != "no_capacity" || !strings.Contains(e.Error.Message, "n1: 1 of 1 in use") {
		t.Errorf("error event %q", line)
	}
	_ = resp.Body.Close()

	// A model without spec.scaling at zero is not started, and the answer says how to.
	static := model("static")
	static.Replicas, static.Scaling = 0, nil
	g.set(cold, static)
	g2 := newGateway(t, httpapi.Options{}, func(d *httpapi.Deps) { d.Scaler = nil })
	g2.set(static)
	resp2, body := g2.do(http.MethodPost, "/v1/chat/completions", chat("static", false, "Hi"))
	if resp2.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "spec.scaling") {
		t.Errorf("static model at zero: %d %s", resp2.StatusCode, body)
	}
}

// The queue is bounded per model, and so are a client's requests at once.
func TestQueueAndClientLimits(t *testing.T) {
	g := newGateway(t, httpapi.Options{MaxQueue: 2, MaxPerClient: 3})
	cold := model("chat")
	cold.Replicas = 0
	g.set(cold)
	results := make(chan int, 3)
	for range 2 {
		go func() {
			r, _ := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, "Hi"))
			results <- r.StatusCode
		}()
	}
	<-g.scaler.started
	eventually(t, "two requests queued", func() (bool, string) {
		v, _ := metricValue(g, `rkllm_gateway_queue_depth{model="chat"}`)
		return v == 2, fmt.Sprint(v)
	})
	resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, "Hi"))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "Too many requests wait for model chat") {
		t.Errorf("third request: %d %s", resp.StatusCode, body)
	}
	// The client has two waiting and the limit is three: a fourth at once is refused
	// before it would queue.
	g.set(cold, model("other"))
	go func() {
		r, _ := g.do(http.MethodPost, "/v1/chat/completions", chat("other", false, "Hi"))
		results <- r.StatusCode
	}()
	eventually(t, "three requests of the client", func() (bool, string) {
		v, _ := metricValue(g, `rkllm_gateway_queue_depth{model="other"}`)
		return v == 1, fmt.Sprint(v)
	})
	resp, body = g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, "Hi"))
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many requests at once from this client (at most 3)") {
		t.Errorf("fourth request of one client: %d %s", resp.StatusCode, body)
	}
	g.scaler.finish(cold.Key, &placement.NoCapacityError{Model: "chat", Nodes: "none"})
	g.scaler.finish(model("other").Key, &placement.NoCapacityError{Model: "other", Nodes: "none"})
	for range 3 {
		if code := <-results; code != http.StatusServiceUnavailable {
			t.Errorf("a waiting request ended with %d, want 503", code)
		}
	}
}

// A replica that cannot be reached is skipped: the request goes to the next one.
func TestDeadReplicaIsSkipped(t *testing.T) {
	s := upstream(t, "chat", fast(), nil)
	g := newGateway(t, httpapi.Options{Routing: routing.Policy{NoAffinity: true}})
	m := model("chat", s)
	// A port nothing listens on, sorted first.
	m.Endpoints = append([]catalog.Endpoint{{ID: "chat-pod-0-dead", Address: "127.0.0.1:1"}}, m.Endpoints...)
	m.Replicas = 2
	g.set(m)
	for i := range 4 {
		if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, "Hi")); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if v, _ := metricValue(g, `rkllm_gateway_upstream_errors_total{model="chat"}`); v == 0 {
		t.Error("the dead replica was never tried")
	}
}

// Clients need a gateway key, which names the models they may use; the model's own
// server key is added by the gateway, and the client's never reaches the server.
func TestKeys(t *testing.T) {
	dir := t.TempDir()
	serverKey := filepath.Join(dir, "server-key")
	if err := os.WriteFile(serverKey, []byte("# rotated monthly\nserver-secret-key-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	locked := upstream(t, "locked", fast(), map[string]any{"api-key-file": serverKey})
	open := upstream(t, "open", fast(), nil)
	keys, err := auth.Parse([]byte(`keys:
- name: webui
  key: webui-key-0123456789
- name: scripts
  key: scripts-key-0123456789
  models: [open]
`))
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, httpapi.Options{}, func(d *httpapi.Deps) {
		d.Keys = func() *auth.Keys { return keys }
		d.Upstream = staticKeys{"locked": "server-secret-key-1"}
	})
	lockedModel := model("locked", locked)
	lockedModel.APIKey = &secretRef
	g.set(lockedModel, model("open", open))

	webui := []string{"Authorization", "Bearer webui-key-0123456789"}
	scripts := []string{"Authorization", "Bearer scripts-key-0123456789"}
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("locked", false, "Hi")); resp.StatusCode != http.StatusUnauthorized ||
		resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(body, "invalid_api_key") {
		t.Errorf("no key: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("locked", false, "Hi"), "Authorization", "Bearer wrong-key-0123456789"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong key: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("locked", false, "Hi"), webui...); resp.StatusCode != http.StatusOK {
		t.Errorf("webui on the locked model (the gateway adds the server's key): %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("open", false, "Hi"), webui...); resp.StatusCode != http.StatusOK {
		t.Errorf("webui on the open model: %d %s", resp.StatusCode, body)
	}
	// The scripts' key may use only "open": the other is unknown to it, and unlisted.
	if resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("locked", false, "Hi"), scripts...); resp.StatusCode != http.StatusNotFound ||
		strings.Contains(body, "locked,") || !strings.Contains(body, "Available models: open") {
		t.Errorf("scripts on the locked model: %d %s", resp.StatusCode, body)
	}
	if _, body := g.do(http.MethodGet, "/v1/models", "", scripts...); strings.Contains(body, `"locked"`) || !strings.Contains(body, `"open"`) {
		t.Errorf("scripts' models: %s", body)
	}
	// Without the gateway adding it, the server refuses: the key is the server's own.
	g2 := newGateway(t, httpapi.Options{})
	g2.set(lockedModel)
	if resp, body := g2.do(http.MethodPost, "/v1/chat/completions", chat("locked", false, "Hi"), "Authorization", "Bearer server-secret-key-1x"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a client's key passed to the server: %d %s", resp.StatusCode, body)
	}
}

// A body over the limit is refused before it is read whole.
func TestBodyLimit(t *testing.T) {
	g := newGateway(t, httpapi.Options{MaxBodyBytes: 1024})
	g.set(model("chat"))
	resp, body := g.do(http.MethodPost, "/v1/chat/completions", chat("chat", false, strings.Repeat("x", 2000)))
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "1024 bytes") {
		t.Errorf("large body: %d %s", resp.StatusCode, body)
	}
}

// The Ollama-style API: the gateway lists the models itself (with tags, as Ollama
// names them) and answers model management with what to do instead.
func TestOllamaListing(t *testing.T) {
	s := upstream(t, "chat", fast(), nil)
	g := newGateway(t, httpapi.Options{})
	cold := model("coder")
	cold.Replicas = 0
	g.set(model("chat", s), cold)
	_, body := g.do(http.MethodGet, "/api/tags", "")
	var tags struct {
		Models []struct {
			Name  string `json:"name"`
			Model string `json:"model"`
		} `json:"models"`
	}
	if json.Unmarshal([]byte(body), &tags) != nil || len(tags.Models) != 2 || tags.Models[0].Name != "chat:latest" || tags.Models[1].Model != "coder:latest" {
		t.Errorf("tags: %s", body)
	}
	if _, body := g.do(http.MethodGet, "/api/ps", ""); !strings.Contains(body, "chat:latest") || strings.Contains(body, "coder") {
		t.Errorf("ps (loaded models only): %s", body)
	}
	if resp, body := g.do(http.MethodPost, "/api/pull", `{"model":"llama3"}`); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "RKLLMModel") {
		t.Errorf("pull: %d %s", resp.StatusCode, body)
	}
	if resp, body := g.do(http.MethodPost, "/api/chat", `{"model":"nope","messages":[]}`); resp.StatusCode != http.StatusNotFound ||
		!strings.Contains(body, `{"error":"model \"nope\" not found: the gateway serves chat, coder`) {
		t.Errorf("unknown Ollama model: %d %s", resp.StatusCode, body)
	}
}

var secretRef = inferencev1alpha1.SecretKeyRef{Name: "locked-key"}

// staticKeys are the servers' keys by model.
type staticKeys map[string]string

func (k staticKeys) Key(_ context.Context, m catalog.Model) (string, error) { return k[m.Name], nil }
