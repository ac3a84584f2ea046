package main_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// pacedModel generates about 50 tokens/s with replies of 30-40 tokens, so a stream lasts
// long enough to be interrupted.
func pacedModel() *simulator.Model {
	m := simulator.FastModel()
	m.DecodeTokensPerSecond = 50
	m.ReplyMinTokens, m.ReplyMaxTokens = 30, 40
	return &m
}

// TestSIGTERMDuringStream: on SIGTERM readiness turns false and new requests get -32009
// (HTTP 503) at once, the running stream completes, then the server exits 0 and removes
// its socket.
func TestSIGTERMDuringStream(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{model: pacedModel()})
		params := prompt("Tell me a long story.")
		params["stream"] = true
		st := s.openStream(request("long", "rkllm.run", params))
		st.next(t)
		s.signal(syscall.SIGTERM)
		s.eventually("readiness to turn false", waitTimeout, func() bool {
			code, body := s.status()
			return code == http.StatusServiceUnavailable && body["draining"] == true
		})
		resp, body := s.post(request(2, "rkllm.run", prompt("late")))
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "-32009") {
			t.Errorf("request while draining: %d %s", resp.StatusCode, body)
		}
		var text strings.Builder
		for {
			m := st.next(t)
			if m["id"] == "long" {
				res := m["result"].(map[string]any)
				if res["finish_reason"] != "stop" || !strings.HasSuffix(res["text"].(string), text.String()) {
					t.Errorf("final response after SIGTERM: %v", m)
				}
				break
			}
			text.WriteString(m["params"].(map[string]any)["text"].(string))
		}
		if err := s.waitExit(); err != nil {
			t.Errorf("exit: %v, want 0", err)
		}
		if _, err := os.Stat(s.socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left behind: %v", err)
		}
		if !strings.Contains(s.logs.String(), `"shut down cleanly"`) {
			t.Error("no clean shutdown in the log")
		}
	})
}

// TestShutdownTimeoutAborts: a generation longer than --shutdown-timeout is aborted and
// answered (finish_reason "abort"); the server still exits 0.
func TestShutdownTimeoutAborts(t *testing.T) {
	m := pacedModel()
	m.ReplyMinTokens, m.ReplyMaxTokens = 500, 600
	s := startServer(t, "1.3", serverOpts{model: m, config: map[string]any{"shutdown-timeout": "300ms"}})
	c := s.dial()
	params := prompt("Never stop.")
	params["stream"] = true
	ch := c.send("rkllm.run", params)
	c.note()
	s.signal(syscall.SIGTERM)
	res := ok[runResult](t, wait(t, ch))
	if res.FinishReason != "abort" || res.TokenCount == 0 {
		t.Errorf("run cut by the shutdown: %+v", res)
	}
	if err := s.waitExit(); err != nil {
		t.Errorf("exit: %v, want 0", err)
	}
}

// TestSecondSignalExitsAtOnce: a second signal ends the server without waiting.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	m := pacedModel()
	m.ReplyMinTokens, m.ReplyMaxTokens = 500, 600
	s := startServer(t, "1.2", serverOpts{model: m})
	c := s.dial()
	params := prompt("Never stop.")
	params["stream"] = true
	c.send("rkllm.run", params)
	c.note()
	s.signal(syscall.SIGTERM)
	s.eventually("draining", waitTimeout, func() bool { code, _ := s.status(); return code == 503 })
	s.signal(syscall.SIGTERM)
	var exitErr *exec.ExitError
	if err := s.waitExit(); !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Errorf("exit after a second signal: %v, want code 1", err)
	}
}

// TestAPIKeyAndMetrics: /rpc over HTTP needs the key; after runs over both
// transports (one plain, two streamed) every metric of a run has counted them: the
// request, queue, latency and perf histograms once per run, and the bytes each
// transport sent and received exactly as the clients counted them.
func TestAPIKeyAndMetrics(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("k3y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": keyFile}})
	var httpIn, httpOut int // JSON-RPC bytes of /rpc as this client counts them
	post := func(body string, header ...string) (*http.Response, string) {
		resp, out := s.post(body, header...)
		httpIn += len(body)
		httpOut += len(out)
		return resp, out
	}
	if resp, _ := post(request(1, "rkllm.run", prompt("x"))); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without the key: %d", resp.StatusCode)
	}
	httpIn -= len(request(1, "rkllm.run", prompt("x"))) // refused before its body is read
	resp, body := post(request(1, "rkllm.run", prompt("x")), "Authorization", "Bearer k3y")
	if resp.StatusCode != 200 || !strings.Contains(body, `"finish_reason":"stop"`) {
		t.Errorf("with the key: %d %s", resp.StatusCode, body)
	}
	streamed := prompt("stream it")
	streamed["stream"] = true
	tokens := 0
	resp, body = post(request(2, "rkllm.run", streamed), "Authorization", "Bearer k3y")
	if n := strings.Count(body, `"rkllm.result"`); resp.StatusCode != 200 || n < 2 || !strings.Contains(body, `"finish_reason":"stop"`) {
		t.Errorf("streamed over HTTP: %d %s", resp.StatusCode, body)
	} else {
		tokens += n
	}
	// A streamed run over the socket, every byte it reads counted.
	c := s.rawDial()
	line := request(3, "rkllm.run", streamed) + "\n"
	_ = c.nc.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c.nc, line); err != nil {
		t.Fatal(err)
	}
	unixOut := 0
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			t.Fatalf("streamed over the socket: %v", err)
		}
		unixOut += len(l)
		if strings.Contains(l, `"rkllm.result"`) {
			tokens++
			continue
		}
		if !strings.Contains(l, `"finish_reason":"stop"`) {
			t.Errorf("streamed over the socket: %s", l)
		}
		break
	}

	// The last line is counted once its write has returned, which may be after the
	// client has read it.
	s.eventually("the socket's bytes counted", waitTimeout, func() bool {
		return s.metric(`rkllm_sent_bytes_total{transport="unix"}`) == float64(unixOut)
	})
	_, metrics := s.get("/metrics")
	sample := func(name string) float64 {
		for _, l := range strings.Split(metrics, "\n") {
			if v, found := strings.CutPrefix(l, name+" "); found {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("metric %s: %v", l, err)
				}
				return f
			}
		}
		t.Errorf("metrics lack %s", name)
		return -1
	}
	for name, want := range map[string]float64{
		`rkllm_requests_total{method="rkllm.run",outcome="ok"}`:                        3,
		`rkllm_request_duration_seconds_count{method="rkllm.run"}`:                     3,
		`rkllm_queue_wait_seconds_count`:                                               3,
		`rkllm_time_to_first_token_seconds_count`:                                      3,
		`rkllm_prefill_seconds_count`:                                                  3,
		`rkllm_generate_seconds_count`:                                                 3,
		`rkllm_model_loaded`:                                                           1,
		`rkllm_queue_depth`:                                                            0,
		`rkllm_inflight_request_bytes`:                                                 0,
		`rkllm_clients_cut_off_total{transport="unix"}`:                                0,
		`rkllm_connections_rejected_total{reason="file_descriptors",transport="http"}`: 0,
		`rkllm_received_bytes_total{transport="http"}`:                                 float64(httpIn),
		`rkllm_sent_bytes_total{transport="http"}`:                                     float64(httpOut),
		`rkllm_received_bytes_total{transport="unix"}`:                                 float64(len(line)),
		`rkllm_sent_bytes_total{transport="unix"}`:                                     float64(unixOut),
	} {
		if got := sample(name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// Every token after a run's first is one inter-token interval (the final delivery
	// adds one more per run).
	if got := sample(`rkllm_inter_token_seconds_count`); got < float64(tokens) {
		t.Errorf("rkllm_inter_token_seconds_count = %v, want at least the %d tokens streamed", got, tokens)
	}
	if got := sample(`rkllm_tokens_generated_total`); got < float64(tokens) {
		t.Errorf("rkllm_tokens_generated_total = %v, want at least the %d tokens streamed", got, tokens)
	}
	if got := sample(`rkllm_connections_open{transport="unix"}`); got != 1 {
		t.Errorf("rkllm_connections_open{transport=\"unix\"} = %v, want 1", got)
	}
}

// TestConfigFlagWins: a flag on the command line overrides the configuration file.
func TestConfigFlagWins(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-new-tokens": 7}, flags: []string{"--max-new-tokens=3"}})
	if res := ok[runResult](t, s.http("rkllm.run", prompt("Hello"))); res.TokenCount != 3 || res.FinishReason != "length" {
		t.Errorf("run with --max-new-tokens=3 over a file's 7: %+v", res)
	}
}

func TestBadConfigExits(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(cfg, []byte("mdoel: /models/x.rkllm\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(context.Background(), serverBin, "serve", "--config", cfg).CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 2 || !strings.Contains(string(out), `unknown key "mdoel"`) {
		t.Errorf("bad config: %v %s", err, out)
	}
}

// TestFetchCommand runs `rkllm-server fetch` as the init container does.
func TestFetchCommand(t *testing.T) {
	data := bytes.Repeat([]byte("RKLLMSIM model bytes "), 5000)
	sum := sha256.Sum256(data)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/model.rkllm" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "model.rkllm", time.Unix(0, 0), bytes.NewReader(data))
	}))
	defer ts.Close()
	dest := filepath.Join(t.TempDir(), "models", "model.rkllm")
	out, err := exec.CommandContext(context.Background(), serverBin, "fetch", "--url", ts.URL+"/model.rkllm", "--dest", dest, "--sha256", hex.EncodeToString(sum[:])).CombinedOutput()
	if err != nil {
		t.Fatalf("fetch: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
		t.Error("fetched file differs")
	}
	for name, args := range map[string][]string{
		"404":             {"--url", ts.URL + "/missing.rkllm", "--dest", dest + "2"},
		"bad checksum":    {"--url", ts.URL + "/model.rkllm", "--dest", dest + "3", "--sha256", strings.Repeat("0", 64)},
		"over --max-size": {"--url", ts.URL + "/model.rkllm", "--dest", dest + "4", "--max-size", "1000"},
	} {
		cmd := exec.CommandContext(context.Background(), serverBin, append([]string{"fetch", "--attempts", "1"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exitErr *exec.ExitError
		last := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(last, '\n'); i >= 0 {
			last = last[i+1:]
		}
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 || !strings.HasPrefix(last, "rkllm-server fetch: ") {
			t.Errorf("%s: exit %v, last line %q", name, err, last)
		}
	}
}

// TestFetchThroughNodeCache runs `rkllm-server fetch` as two pods' init containers on one
// node: the device plugin's variables point it at the node's cache, the first pod
// downloads, the second finds the file there (one GET in all), and each reports what it
// did in its termination message (--result-file) for the operator's status.
func TestFetchThroughNodeCache(t *testing.T) {
	data := bytes.Repeat([]byte("RKLLMSIM model bytes "), 5000)
	sum := sha256.Sum256(data)
	var gets atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		http.ServeContent(w, r, "model.rkllm", time.Unix(0, 0), bytes.NewReader(data))
	}))
	defer ts.Close()
	cache := t.TempDir()
	for pod, want := range []string{"Downloaded", "CacheHit"} {
		dir := t.TempDir()
		dest, result := filepath.Join(dir, "models", "abc-model.rkllm"), filepath.Join(dir, "termination-log")
		cmd := exec.CommandContext(context.Background(), serverBin, "fetch", "--url", ts.URL+"/model.rkllm", "--dest", dest,
			"--sha256", hex.EncodeToString(sum[:]), "--result-file", result)
		cmd.Env = append(os.Environ(), "RKNPU_MODEL_CACHE="+cache, "RKNPU_MODEL_CACHE_MAX_BYTES=1000000")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pod %d: fetch: %v\n%s", pod, err, out)
		}
		var outcome struct {
			Result    string `json:"result"`
			NodeCache bool   `json:"nodeCache"`
			File      string `json:"file"`
		}
		b, err := os.ReadFile(result)
		if err != nil || json.Unmarshal(b, &outcome) != nil {
			t.Fatalf("pod %d: result file %q: %v", pod, b, err)
		}
		if outcome.Result != want || !outcome.NodeCache || outcome.File != filepath.Join(cache, "abc-model.rkllm") {
			t.Errorf("pod %d: outcome %s, want %s from the node cache", pod, b, want)
		}
		if got, _ := os.ReadFile(dest); !bytes.Equal(got, data) {
			t.Errorf("pod %d: %s does not hold the model", pod, dest)
		}
	}
	if n := gets.Load(); n != 1 {
		t.Errorf("%d GETs for two pods of one node, want 1", n)
	}
}
