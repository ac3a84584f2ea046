package main_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/filewatch/filewatchtest"
)

// logCount counts the server's log lines containing msg.
func (s *server) logCount(msg string) int { return strings.Count(s.logs.String(), msg) }

// waitLog waits until the server has logged msg n times.
func (s *server) waitLog(msg string, n int) {
	s.t.Helper()
	s.eventually("log line "+msg, waitTimeout, func() bool { return s.logCount(msg) >= n })
}

// rewriteConfig swaps the configuration file's ..data as the kubelet does when the
// ConfigMap changes, with the keys of change set (nil removes a key).
func (s *server) rewriteConfig(change map[string]any) {
	s.t.Helper()
	for k, v := range change {
		if v == nil {
			delete(s.cfg, k)
		} else {
			s.cfg[k] = v
		}
	}
	b, _ := json.Marshal(s.cfg)
	if err := s.vol.Write(map[string][]byte{"server.json": b}); err != nil {
		s.t.Fatal(err)
	}
}

// TestAPIKeyRotation: the key lives in a Secret volume (api-key/api-key, as the
// operator projects it); the kubelet swaps in a new key and, without a restart, the new
// key works and the old one is refused on /rpc and /v1/. A swap to an empty file keeps
// the key in force.
func TestAPIKeyRotation(t *testing.T) {
	vol := filewatchtest.AtomicDir{Dir: t.TempDir()}
	keyPath := filepath.Join("api-key", "api-key")
	if err := vol.Write(map[string][]byte{keyPath: []byte("old-key\n")}); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": filepath.Join(vol.Dir, keyPath)}})
	const keyRead = "API key file read"
	s.waitLog(keyRead, 1)
	check := func(key string, want int) {
		t.Helper()
		if resp, body := s.post(request(1, "rkllm.run", prompt("x")), "Authorization", "Bearer "+key); resp.StatusCode != want {
			t.Errorf("/rpc with key %q: %d %.200s, want %d", key, resp.StatusCode, body, want)
		}
		if resp, body := s.v1(http.MethodGet, "/v1/models", "", "Authorization", "Bearer "+key); resp.StatusCode != want {
			t.Errorf("/v1/models with key %q: %d %.200s, want %d", key, resp.StatusCode, body, want)
		}
	}
	check("old-key", http.StatusOK)
	check("new-key", http.StatusUnauthorized)

	if err := vol.Write(map[string][]byte{keyPath: []byte("new-key\n")}); err != nil {
		t.Fatal(err)
	}
	s.eventually("the new key to be accepted", waitTimeout, func() bool {
		resp, _ := s.v1(http.MethodGet, "/v1/models", "", "Authorization", "Bearer new-key")
		return resp.StatusCode == http.StatusOK
	})
	check("new-key", http.StatusOK)
	check("old-key", http.StatusUnauthorized)

	if err := vol.Write(map[string][]byte{keyPath: []byte("\n")}); err != nil {
		t.Fatal(err)
	}
	s.waitLog("holds no key; keeping the previous key", 1)
	check("new-key", http.StatusOK)
	check("", http.StatusUnauthorized)
	if s.logCount("new-key") > 0 {
		t.Error("the server logged the API key")
	}
}

// TestSamplingReload: with runtime ABI 1.3, a changed configuration file (the kubelet
// swapping the ConfigMap volume) changes the sampling defaults of runs that do not set
// their own, without a restart; a run's own values still win; removing a key goes back
// to the runtime's default; a worker restarted afterwards loads the model with the new
// values. Options that need a restart are logged as such and change nothing. With ABI
// 1.2 (sampling only at init) the change waits for a restart.
func TestSamplingReload(t *testing.T) {
	const retuned = "sampling defaults changed"
	const later = "take effect at the next restart"
	t.Run("1.3", func(t *testing.T) {
		t.Parallel()
		fault := filepath.Join(t.TempDir(), "crashed")
		if err := os.WriteFile(fault, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, "1.3", serverOpts{atomicConfig: true, config: map[string]any{"temperature": "0.8", "max-context-len": 4096},
			env: []string{"RKLLM_SIM_CRASH_AFTER=2", "RKLLM_SIM_FAULT_ONCE_FILE=" + fault}})
		if infer := s.echoInfer(nil); infer["sampling"] != nil || infer["max_new_tokens"] != 0.0 {
			t.Fatalf("before the change the run overrides nothing: %v", infer)
		}
		s.rewriteConfig(map[string]any{"temperature": "0.25", "top-k": 5, "max-new-tokens": 3000})
		var infer map[string]any
		s.eventually("runs to get the new temperature", waitTimeout, func() bool {
			infer = s.echoInfer(nil)
			sampling, _ := infer["sampling"].(map[string]any)
			return sampling["temperature"] == 0.25
		})
		sampling, _ := infer["sampling"].(map[string]any)
		if sampling["temperature"] != 0.25 || sampling["top_k"] != 5.0 || sampling["top_p"] != 0.899999976 || infer["max_new_tokens"] != 3000.0 {
			t.Errorf("after the change: %v", infer)
		}
		if got := s.echoInfer(map[string]any{"temperature": 1.5})["sampling"].(map[string]any); got["temperature"] != 1.5 || got["top_k"] != 5.0 {
			t.Errorf("a request's own temperature with the new defaults: %v", got)
		}
		// JSON-RPC runs get the same defaults.
		res := ok[runResult](t, s.http("rkllm.run", prompt("<sim:echo-params>")))
		var rpcEcho map[string]any
		if err := json.Unmarshal([]byte(res.Text), &rpcEcho); err != nil {
			t.Fatalf("JSON-RPC echo %q: %v", res.Text, err)
		}
		if got := rpcEcho["infer"].(map[string]any)["sampling"].(map[string]any); got["temperature"] != 0.25 {
			t.Errorf("JSON-RPC run after the change: %v", got)
		}

		s.rewriteConfig(map[string]any{"temperature": nil, "max-context-len": 2048})
		s.waitLog(retuned, 2)
		s.waitLog(later, 1)
		if !strings.Contains(s.logs.String(), `"options":["max-context-len"]`) {
			t.Errorf("the option that needs a restart is not named in the log")
		}
		if got := s.echoInfer(nil)["sampling"].(map[string]any); got["temperature"] != 0.800000012 || got["top_k"] != 5.0 {
			t.Errorf("temperature removed from the file: %v, want the runtime's 0.8", got)
		}

		// The worker crashes once (the fault is armed by removing its file); the
		// restarted one loads the model with top_k 5.
		if err := os.Remove(fault); err != nil {
			t.Fatal(err)
		}
		s.v1(http.MethodPost, "/v1/completions", jsonBody(map[string]any{"model": modelID, "prompt": "crash"}))
		s.waitLog("worker died", 1)
		s.waitReady()
		echo, body := s.echo(nil)
		if echo == nil {
			t.Fatalf("echo after the restart: %s", body)
		}
		param, _ := echo["param"].(map[string]any)
		if param["sampling"].(map[string]any)["top_k"] != 5.0 || param["max_new_tokens"] != 3000.0 || param["max_context_len"] != 4096.0 {
			t.Errorf("init parameters after a worker restart: %v; want top_k 5, max_new_tokens 3000 and the old max_context_len 4096", param)
		}
		if infer := echo["infer"].(map[string]any); infer["sampling"] != nil {
			t.Errorf("after the restart the init parameters hold the defaults; runs override nothing: %v", infer)
		}
	})
	t.Run("1.2", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.2", serverOpts{atomicConfig: true, config: map[string]any{"max-context-len": 4096}})
		s.rewriteConfig(map[string]any{"temperature": "0.25"})
		s.waitLog(later, 1)
		if s.logCount(retuned) != 0 {
			t.Error("ABI 1.2 reports changed sampling defaults it cannot apply")
		}
		// The loaded value still passes; the new one is the model's only after a restart.
		if echo, body := s.echo(map[string]any{"temperature": 0.8}); echo == nil {
			t.Errorf("the loaded temperature after the change: %s", body)
		}
	})
}

// echoInfer returns the run parameters the simulator received for a completion.
func (s *server) echoInfer(extra map[string]any) map[string]any {
	s.t.Helper()
	echo, body := s.echo(extra)
	if echo == nil {
		s.t.Fatalf("echo: %s", body)
	}
	return echo["infer"].(map[string]any)
}
