package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/filewatch/filewatchtest"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
)

// End-to-end tests: the rkllm-server binary, built once by TestMain, serving the
// simulator libraries of both ABIs (built by `make sim`; RKLLM_SIM_DIR overrides where).
// Without them the tests skip, unless RKLLM_SIM_REQUIRED is set (`make test` sets it).

// Named bounds for waits that end as soon as the awaited event happens.
const (
	startTimeout = 30 * time.Second
	waitTimeout  = 30 * time.Second
	pollEvery    = 5 * time.Millisecond
)

var (
	serverBin string
	// raceBin is the server built with -race, for the load tests (built once, on first
	// use, when the tests run under -race).
	raceBin     string
	raceBinOnce sync.Once
	raceBinErr  error
)

// serverBinary returns the binary a test's server runs: with race, the -race build
// when the tests run under -race.
func serverBinary(t *testing.T, race bool) string {
	t.Helper()
	if !race || !raceEnabled {
		return serverBin
	}
	raceBinOnce.Do(func() {
		raceBin = serverBin + "-race"
		raceBinErr = serverproc.Build(context.Background(), raceBin, "-race")
	})
	if raceBinErr != nil {
		t.Fatal(raceBinErr)
	}
	return raceBin
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rkllm-server-e2e-")
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

var abis = []string{"1.2", "1.3"}

func simLib(t *testing.T, abi string) string {
	t.Helper()
	return simtest.Library(t, abi)
}

// eachABI runs f as a subtest per ABI, in parallel.
func eachABI(t *testing.T, f func(t *testing.T, abi string)) {
	for _, abi := range abis {
		t.Run(abi, func(t *testing.T) {
			t.Parallel()
			f(t, abi)
		})
	}
}

// server is a running rkllm-server process.
type server struct {
	t      *testing.T
	abi    string
	cmd    *exec.Cmd
	dir    string // the model dir, with model.rkllm, chat.lora, code.lora
	model  simulator.Model
	base   string // http://host:port
	probes string // the probe listener's http://host:port
	socket string
	stats  string // the simulator's stats file
	logs   *logBuffer
	exited chan struct{}
	exit   error
	// cfg is the configuration file's content; vol, with atomicConfig, is the folder
	// that holds it, written as the kubelet writes a ConfigMap volume.
	cfg map[string]any
	vol *filewatchtest.AtomicDir
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serverOpts shape a server: config-file keys, extra flags, environment, the model.
type serverOpts struct {
	config map[string]any
	flags  []string
	env    []string
	model  *simulator.Model
	// noModel starts without --model (clients call rkllm.init).
	noModel bool
	// noWait returns before the server is ready.
	noWait bool
	// race runs the -race build when the tests run under -race.
	race bool
	// wrap, when set, runs the server through this command prefix (such as a shell
	// that lowers a limit first).
	wrap []string
	// atomicConfig writes the configuration file into a folder laid out like a
	// ConfigMap volume (..data swapped by rewriteConfig).
	atomicConfig bool
}

var (
	addrLine  = regexp.MustCompile(`"msg":"serving HTTP","address":"([^"]+)"`)
	probeLine = regexp.MustCompile(`"msg":"serving the probes","address":"([^"]+)"`)
)

// startServer starts rkllm-server for abi with a config file (as the operator writes
// it) and waits until /readyz says ready.
func startServer(t *testing.T, abi string, o serverOpts) *server {
	t.Helper()
	lib := simLib(t, abi)
	dir := t.TempDir()
	m := simulator.FastModel()
	if o.model != nil {
		m = *o.model
	}
	if err := simulator.WriteModel(filepath.Join(dir, "model.rkllm"), m); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"chat", "code"} {
		if err := simulator.WriteLora(filepath.Join(dir, name+".lora"), name); err != nil {
			t.Fatal(err)
		}
	}
	// Short socket paths: sun_path holds 108 bytes.
	sockDir, err := os.MkdirTemp("", "rk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	s := &server{t: t, abi: abi, dir: dir, model: m, socket: filepath.Join(sockDir, "s.sock"),
		stats: filepath.Join(dir, "stats.log"), logs: &logBuffer{}, exited: make(chan struct{})}
	cfg := map[string]any{
		"model-dir":           dir,
		"runtime-lib":         lib,
		"runtime-abi":         abi,
		"listen":              "127.0.0.1:0",
		"probe-listen":        "127.0.0.1:0",
		"socket":              s.socket,
		"max-queue":           8,
		"request-timeout":     "2m",
		"shutdown-timeout":    "20s",
		"restart-backoff-min": "20ms",
		"restart-backoff-max": "200ms",
		"log-format":          "json",
		"log-level":           "debug",
	}
	if !o.noModel {
		cfg["model"] = filepath.Join(dir, "model.rkllm")
	}
	// The embedding width and the vocabulary size are given, so the simulator's run
	// numbers (RKLLM_SIM_FAULT_RUN, run=N in its stats) count only the tests' own runs;
	// without them the server learns each with a run at load, which the tests of
	// input_test.go cover by deleting these keys.
	cfg["embedding-width"] = m.HiddenSize
	cfg["vocab-size"] = m.VocabSize()
	for k, v := range o.config {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	cfgPath := filepath.Join(dir, "server.json")
	b, _ := json.Marshal(cfg)
	s.cfg = cfg
	if o.atomicConfig {
		s.vol = &filewatchtest.AtomicDir{Dir: filepath.Join(dir, "etc")}
		if err := os.Mkdir(s.vol.Dir, 0o750); err != nil {
			t.Fatal(err)
		}
		cfgPath = filepath.Join(s.vol.Dir, "server.json")
		if err := s.vol.Write(map[string][]byte{"server.json": b}); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(append(append([]string(nil), o.wrap...), serverBinary(t, o.race), "serve", "--config", cfgPath), o.flags...)
	s.cmd = exec.CommandContext(context.Background(), args[0], args[1:]...) //nolint:gosec // the test's own binary
	s.cmd.Env = append(append(os.Environ(), "RKLLM_SIM_STATS_FILE="+s.stats), o.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.exit = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		<-s.exited
		if strings.Contains(s.logs.String(), "WARNING: DATA RACE") {
			t.Error("the server (built with -race) reported a data race")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})
	s.eventually("the HTTP addresses in the log", startTimeout, func() bool {
		logs := s.logs.String()
		m, p := addrLine.FindStringSubmatch(logs), probeLine.FindStringSubmatch(logs)
		if m == nil || (p == nil && cfg["probe-listen"] != "") {
			return false
		}
		s.base, s.probes = "http://"+m[1], "http://"+m[1]
		if p != nil {
			s.probes = "http://" + p[1]
		}
		return true
	})
	if !o.noWait {
		s.waitReady()
	}
	return s
}

// eventually polls cond until it holds; on timeout it fails, with what describe (if
// given) says of the last state.
func (s *server) eventually(what string, timeout time.Duration, cond func() bool, describe ...func() string) {
	s.t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-s.exited:
			s.t.Fatalf("server exited (%v) while waiting for %s", s.exit, what)
		case <-deadline:
			for _, d := range describe {
				what += " (" + d() + ")"
			}
			s.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
	}
}

// status reads /readyz (on the probe listener).
func (s *server) status() (int, map[string]any) {
	s.t.Helper()
	resp, body := s.get("/readyz")
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		s.t.Fatalf("readyz body %q: %v", body, err)
	}
	return resp.StatusCode, m
}

func (s *server) waitReady() {
	s.t.Helper()
	s.eventually("readiness", startTimeout, func() bool {
		code, _ := s.status()
		return code == http.StatusOK
	})
}

func (s *server) get(path string) (*http.Response, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.probes+path, nil)
	resp, err := metricsClient.Do(req) // no keep-alive: connections counted by the tests are the clients' own
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// post sends a raw body to /rpc.
func (s *server) post(body string, header ...string) (*http.Response, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/rpc", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("POST /rpc: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// response is a JSON-RPC response as the tests read it.
type response struct {
	ID     any             `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
}

type rpcError struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

func request(id any, method string, params any) string {
	m := map[string]any{"jsonrpc": "2.0", "method": method}
	if id != nil {
		m["id"] = id
	}
	if params != nil {
		m["params"] = params
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// http calls one method over HTTP.
func (s *server) http(method string, params any) response {
	s.t.Helper()
	_, body := s.post(request(1, method, params))
	var r response
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		s.t.Fatalf("%s over HTTP: body %q: %v", method, body, err)
	}
	return r
}

// httpAsync calls one method over HTTP from a goroutine of its own and returns the
// channel its response arrives on (a transport failure arrives as an error -1).
func (s *server) httpAsync(method string, params any) chan response {
	ch := make(chan response, 1)
	body := request(1, method, params)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/rpc", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- response{Error: &rpcError{Code: -1, Message: err.Error()}}
			return
		}
		defer func() { _ = resp.Body.Close() }()
		var r response
		if b, err := io.ReadAll(resp.Body); err != nil || json.Unmarshal(b, &r) != nil {
			r = response{Error: &rpcError{Code: -1, Message: fmt.Sprintf("body %q: %v", b, err)}}
		}
		ch <- r
	}()
	return ch
}

// client is a Unix-socket connection with a reader that routes responses by id and
// queues notifications.
type client struct {
	t      *testing.T
	nc     net.Conn
	wmu    sync.Mutex
	nextID atomic.Int64

	mu      sync.Mutex
	pending map[string]chan response
	order   []string // "response <id>" and "note <request_id>", in the order read
	notes   chan map[string]any
	closed  chan struct{}
}

func (s *server) dial() *client {
	s.t.Helper()
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "unix", s.socket)
	if err != nil {
		s.t.Fatalf("dial %s: %v", s.socket, err)
	}
	return s.clientOn(nc)
}

// clientOn makes a client of a socket connection.
func (s *server) clientOn(nc net.Conn) *client {
	c := &client{t: s.t, nc: nc, pending: map[string]chan response{}, notes: make(chan map[string]any, 10000), closed: make(chan struct{})}
	s.t.Cleanup(func() { _ = nc.Close() })
	go c.read()
	return c
}

func (c *client) read() {
	defer close(c.closed)
	br := bufio.NewReaderSize(c.nc, 1<<20)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(line, &probe) != nil {
			continue
		}
		if _, ok := probe["method"]; ok {
			var n map[string]any
			_ = json.Unmarshal(line, &n)
			p, _ := n["params"].(map[string]any)
			c.mu.Lock()
			c.order = append(c.order, fmt.Sprint("note ", p["request_id"]))
			c.mu.Unlock()
			c.notes <- n
			continue
		}
		var r response
		_ = json.Unmarshal(line, &r)
		key := fmt.Sprint(r.ID)
		c.mu.Lock()
		c.order = append(c.order, "response "+key)
		ch := c.pending[key]
		delete(c.pending, key)
		c.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// send sends a request and returns the channel its response arrives on.
func (c *client) send(method string, params any) chan response {
	c.t.Helper()
	id := c.nextID.Add(1)
	ch := make(chan response, 1)
	c.mu.Lock()
	c.pending[fmt.Sprint(float64(id))] = ch
	c.mu.Unlock()
	c.write(request(id, method, params))
	return ch
}

func (c *client) write(line string) {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) call(method string, params any) response {
	c.t.Helper()
	return wait(c.t, c.send(method, params))
}

func wait(t *testing.T, ch chan response) response {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitTimeout):
		t.Fatalf("no response within %s", waitTimeout)
		return response{}
	}
}

func (c *client) note() map[string]any {
	c.t.Helper()
	select {
	case n := <-c.notes:
		return n
	case <-time.After(waitTimeout):
		c.t.Fatalf("no notification within %s", waitTimeout)
		return nil
	}
}

// ok fails unless r succeeded, and decodes its result.
func ok[T any](t *testing.T, r response) T {
	t.Helper()
	if r.Error != nil {
		t.Fatalf("error %d: %s (%v)", r.Error.Code, r.Error.Message, r.Error.Data)
	}
	var v T
	if err := json.Unmarshal(r.Result, &v); err != nil {
		t.Fatalf("result %s: %v", r.Result, err)
	}
	return v
}

// fails checks that r is the error code and returns it.
func fails(t *testing.T, r response, code int) *rpcError {
	t.Helper()
	if r.Error == nil || r.Error.Code != code {
		t.Fatalf("response %s / %+v, want error %d", r.Result, r.Error, code)
	}
	return r.Error
}

// runResult is rkllm.run's result.
type runResult struct {
	RequestID    string  `json:"request_id"`
	Text         string  `json:"text"`
	TokenIDs     []int32 `json:"token_ids"`
	TokenCount   int     `json:"token_count"`
	FinishReason string  `json:"finish_reason"`
	Perf         struct {
		PrefillTokens  int     `json:"prefill_tokens"`
		GenerateTokens int     `json:"generate_tokens"`
		MemoryUsageMB  float64 `json:"memory_usage_mb"`
	} `json:"perf"`
	LastHiddenLayer *struct {
		EmbdSize     int             `json:"embd_size"`
		NumTokens    int             `json:"num_tokens"`
		HiddenStates json.RawMessage `json:"hidden_states"`
	} `json:"last_hidden_layer"`
	Logits *struct {
		VocabSize int             `json:"vocab_size"`
		NumTokens int             `json:"num_tokens"`
		Logits    json.RawMessage `json:"logits"`
	} `json:"logits"`
}

func prompt(text string) map[string]any {
	return map[string]any{"input": map[string]any{"role": "user", "input_type": "RKLLM_INPUT_PROMPT", "prompt_input": text}}
}

// statsEvents returns the simulator's stats lines that contain every part.
func (s *server) statsEvents(parts ...string) []string {
	b, _ := os.ReadFile(s.stats)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		match := line != ""
		for _, p := range parts {
			match = match && strings.Contains(line, p)
		}
		if match {
			out = append(out, line)
		}
	}
	return out
}

// signal sends sig to the server process.
func (s *server) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(err)
	}
}

func (s *server) waitExit() error {
	s.t.Helper()
	select {
	case <-s.exited:
		return s.exit
	case <-time.After(waitTimeout):
		s.t.Fatalf("server did not exit within %s", waitTimeout)
		return nil
	}
}

// stream is a streamed HTTP response read line by line.
type stream struct {
	resp   *http.Response
	br     *bufio.Reader
	cancel context.CancelFunc
}

func (s *server) openStream(body string, header ...string) *stream {
	s.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/rpc", strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		s.t.Fatalf("POST /rpc: %v", err)
	}
	st := &stream{resp: resp, br: bufio.NewReader(resp.Body), cancel: cancel}
	s.t.Cleanup(st.close)
	return st
}

// next reads the next NDJSON line (a notification or the final response).
func (st *stream) next(t *testing.T) map[string]any {
	t.Helper()
	type result struct {
		line []byte
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := st.br.ReadBytes('\n')
		ch <- result{line, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("stream read: %v", r.err)
		}
		var m map[string]any
		if err := json.Unmarshal(r.line, &m); err != nil {
			t.Fatalf("stream line %q: %v", r.line, err)
		}
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no stream line within %s", waitTimeout)
		return nil
	}
}

func (st *stream) close() {
	st.cancel()
	_ = st.resp.Body.Close()
}

// readOrder is the order of the messages read so far.
func (c *client) readOrder() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.order...)
}

// dialNet connects to the server's socket or HTTP address.
func dialNet(network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(context.Background(), network, addr)
}
