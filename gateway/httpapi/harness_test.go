package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/httpapi"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
)

// These tests run the gateway's front door in the test process in front of real
// rkllm-server processes serving the RKLLM simulator (built by TestMain and `make sim`;
// RKLLM_SIM_DIR overrides where the simulator is). Without the simulator they skip,
// unless RKLLM_SIM_REQUIRED is set (`make test` sets it). The catalog is a snapshot the
// tests set, and the scaler a fake they drive: the Kubernetes side has its own tests.

// watchdog bounds waits that end as soon as what they wait for happens.
const watchdog = 60 * time.Second

var serverBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gateway-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serverBin = filepath.Join(dir, "rkllm-server")
	if err := serverproc.Build(context.Background(), serverBin); err != nil {
		fmt.Fprintln(os.Stderr, "build rkllm-server:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// simDir is the simulator's folder, once the test knows the library is there.
func simDir(t *testing.T) string {
	t.Helper()
	return filepath.Dir(simtest.Library(t, "1.3"))
}

// upstream starts an rkllm-server serving the model under id name.
func upstream(t *testing.T, name string, m simulator.Model, config map[string]any) *serverproc.Server {
	t.Helper()
	// A short folder: the server's Unix socket path must fit 108 bytes.
	dir, err := os.MkdirTemp("", "gw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := map[string]any{"served-model-name": name, "max-queue": 16, "request-timeout": "2m"}
	for k, v := range config {
		cfg[k] = v
	}
	s, err := serverproc.Start(serverproc.Options{Server: serverBin, SimDir: simDir(t), ABI: "1.3", Dir: dir, Model: m, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// fast is a simulator model answering at once; paced one generating tps tokens a
// second, with long replies.
func fast() simulator.Model { return simulator.FastModel() }

func paced(tps float64) simulator.Model {
	m := simulator.FastModel()
	m.DecodeTokensPerSecond = tps
	m.ReplyMinTokens, m.ReplyMaxTokens = 400, 500
	return m
}

// model is a catalog entry for id served by servers (pod-0, pod-1, ...).
func model(id string, servers ...*serverproc.Server) catalog.Model {
	m := catalog.Model{Key: types.NamespacedName{Namespace: "ns", Name: id}, Name: id, Replicas: int32(len(servers)),
		Scaling: &inferencev1alpha1.ScalingSpec{}, Units: 1, Created: time.Unix(1700000000, 0)}
	for i, s := range servers {
		m.Endpoints = append(m.Endpoints, catalog.Endpoint{ID: fmt.Sprintf("%s-pod-%d", id, i), Address: strings.TrimPrefix(s.Base, "http://")})
	}
	return m
}

// fakeScaler stands for the scaler: each activation waits for the test to end it.
type fakeScaler struct {
	mu      sync.Mutex
	started chan catalog.Model
	end     map[types.NamespacedName]func(error)
	current map[types.NamespacedName]*scaling.Activation
	grown   []string
	pokes   int
}

func newFakeScaler() *fakeScaler {
	return &fakeScaler{started: make(chan catalog.Model, 16), end: map[types.NamespacedName]func(error){},
		current: map[types.NamespacedName]*scaling.Activation{}}
}

func (f *fakeScaler) Activate(m catalog.Model) *scaling.Activation {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.current[m.Key]; ok {
		return a
	}
	a, end := scaling.NewActivation()
	f.current[m.Key], f.end[m.Key] = a, end
	f.started <- m
	return a
}

// finish ends the model's activation with err.
func (f *fakeScaler) finish(key types.NamespacedName, err error) {
	f.mu.Lock()
	end := f.end[key]
	delete(f.current, key)
	delete(f.end, key)
	f.mu.Unlock()
	end(err)
}

func (f *fakeScaler) Grow(m catalog.Model) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.grown = append(f.grown, m.Name)
}

func (f *fakeScaler) Poke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pokes++
}

// gw is a gateway under test.
type gw struct {
	t       *testing.T
	url     string
	cat     *catalog.Snapshot
	scaler  *fakeScaler
	metrics *metrics.Metrics
	handler *httpapi.Handler
	// comments receives each comment line the gateway writes to a waiting stream.
	comments chan string
}

func newGateway(t *testing.T, o httpapi.Options, deps ...func(*httpapi.Deps)) *gw {
	t.Helper()
	g := &gw{t: t, cat: catalog.NewSnapshot(), scaler: newFakeScaler(), metrics: metrics.New(), comments: make(chan string, 64)}
	d := httpapi.Deps{Catalog: g.cat, Scaler: g.scaler, Metrics: g.metrics, Clock: clock.RealClock{}, Log: testr.New(t), Seed: maphash.MakeSeed(),
		Proxy: &proxy.Proxy{Transport: proxy.NewTransport(5*time.Second, 8), Clock: clock.RealClock{}}}
	for _, f := range deps {
		f(&d)
	}
	g.handler = httpapi.New(d, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.handler.Start(ctx)
	}()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.handler.ServeHTTP(&tap{ResponseWriter: w, comments: g.comments}, r)
	}))
	g.url = srv.URL
	t.Cleanup(func() {
		srv.Close()
		cancel()
		<-done
	})
	return g
}

// tap passes the gateway's writes on and reports its comment lines.
type tap struct {
	http.ResponseWriter
	comments chan<- string
}

func (t *tap) Write(b []byte) (int, error) {
	if len(b) > 0 && b[0] == ':' {
		select {
		case t.comments <- string(b):
		default:
		}
	}
	return t.ResponseWriter.Write(b)
}

func (t *tap) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (t *tap) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// set replaces the models and waits until the front door has room for their replicas.
func (g *gw) set(models ...catalog.Model) {
	g.t.Helper()
	g.cat.Set(models)
}

// do sends a request and returns the response with its whole body.
func (g *gw) do(method, path, body string, header ...string) (*http.Response, string) {
	g.t.Helper()
	resp := g.open(method, path, body, header...)
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, string(b)
}

// open sends a request and returns the response to read.
func (g *gw) open(method, path, body string, header ...string) *http.Response {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), watchdog)
	g.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, g.url+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// chat is a chat completion request body.
func chat(model string, stream bool, messages ...string) string {
	var ms []map[string]string
	for i, m := range messages {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		ms = append(ms, map[string]string{"role": role, "content": m})
	}
	b, _ := json.Marshal(map[string]any{"model": model, "stream": stream, "messages": ms, "max_tokens": 4})
	return string(b)
}

// events reads a server-sent event stream: each line that is not blank.
type events struct {
	r *bufio.Reader
}

func (e *events) next(t *testing.T) string {
	t.Helper()
	for {
		line, err := e.r.ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended (%v) after %q", err, line)
		}
		if line = strings.TrimRight(line, "\n"); line != "" {
			return line
		}
	}
}

// eventually polls cond until it holds, failing after the watchdog with what it says.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(watchdog)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %s", what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openaiError is the error member of an OpenAI error reply.
type openaiError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, body string) openaiError {
	t.Helper()
	var e openaiError
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(body), "data: ")), &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error: %q (%v)", body, err)
	}
	return e
}
