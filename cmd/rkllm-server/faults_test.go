package main_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCrashRecovery: the runtime crashes (SIGSEGV) in the middle of a stream while
// five clients (socket and HTTP) wait in the queue. The streaming client gets -32004
// with the signal, the others stay connected and queued, the worker restarts, the model
// is loaded again and the state clients set (LoRA adapter, chat template, tools) is
// replayed, so every queued client gets the same reply as before the crash.
func TestCrashRecovery(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		// The fault is armed by deleting the marker: then the first run that has delivered
		// 40 tokens crashes, and the restarted worker does not crash again. At 50 tokens a
		// second that leaves 0.8 s between the stream's first token and the crash, for
		// the queue to fill.
		marker := filepath.Join(t.TempDir(), "crash-once")
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		m := pacedModel()
		m.ReplyMinTokens, m.ReplyMaxTokens = 45, 45
		s := startServer(t, abi, serverOpts{model: m, config: map[string]any{"max-queue": 8},
			env: []string{"RKLLM_SIM_CRASH_AFTER=40", "RKLLM_SIM_FAULT_ONCE_FILE=" + marker}})
		admin, bystander := s.dial(), s.dial()
		ok[int](t, admin.call("rkllm.set_chat_template", map[string]any{"system_prompt": "<sys>Be brief.</sys>", "prompt_prefix": "<u>", "prompt_postfix": "</u><a>"}))
		ok[int](t, admin.call("rkllm.load_lora", map[string]any{"lora_adapter": map[string]any{"lora_adapter_path": "chat.lora", "lora_adapter_name": "chat", "scale": 0.5}}))
		ok[int](t, admin.call("rkllm.set_function_tools", map[string]any{"system_prompt": "Tools:", "tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "get_time", "parameters": map[string]any{"type": "object", "properties": map[string]any{}}}}}}))
		p := prompt("Hello there")
		p["infer_params"] = map[string]any{"lora_params": map[string]any{"lora_adapter_name": "chat"}}
		before := ok[runResult](t, admin.call("rkllm.run", p))
		_, st := s.status()
		pid := st["worker_pid"]

		if err := os.Remove(marker); err != nil {
			t.Fatal(err)
		}
		p2 := prompt("Hello there")
		p2["stream"] = true
		others := []*client{admin, s.dial(), s.dial()}
		crashing := bystander.send("rkllm.run", p2)
		bystander.note()
		var queued []chan response
		for _, c := range others {
			queued = append(queued, c.send("rkllm.run", p))
		}
		queued = append(queued, s.httpAsync("rkllm.run", p), s.httpAsync("rkllm.run", p))
		s.eventually("five queued requests behind the stream", waitTimeout, func() bool {
			_, st := s.status()
			if st["worker_restarts"] != 0.0 {
				t.Fatalf("the worker crashed before the queue filled (the machine is too slow for this test's pacing): %v", st)
			}
			return st["queue_depth"] == 5.0 && st["running"] == true
		})
		e := fails(t, wait(t, crashing), -32004)
		if e.Data["signal"] != "SIGSEGV" || e.Data["pid"] != pid || !strings.Contains(e.Message, "SIGSEGV") || e.Data["token_count"] != 40.0 {
			t.Errorf("crash error %+v", e)
		}
		if stderr, _ := e.Data["stderr"].([]any); len(stderr) == 0 || !strings.Contains(stderr[len(stderr)-1].(string), "simulated crash") {
			t.Errorf("crash error's stderr %v", e.Data["stderr"])
		}
		// Every queued request is served by the new worker with the state replayed.
		for i, ch := range queued {
			if after := ok[runResult](t, wait(t, ch)); after.Text != before.Text {
				t.Errorf("queued request %d after the restart: %q, before the crash %q: state not replayed", i, after.Text, before.Text)
			}
		}
		code, st := s.status()
		if code != 200 || st["worker_restarts"] != 1.0 || st["worker_pid"] == pid || !strings.Contains(st["last_worker_exit"].(string), "SIGSEGV") {
			t.Errorf("readyz after recovery: %d %v", code, st)
		}
		// The crashing client's connection is still usable.
		if n := ok[int](t, bystander.call("rkllm.is_running", nil)); n != 0 {
			t.Errorf("is_running = %d", n)
		}
		if _, body := s.get("/metrics"); !strings.Contains(body, `rkllm_worker_restarts_total{cause="crash"} 1`) {
			t.Errorf("metrics lack the restart:\n%s", grepLines(body, "rkllm_worker_restarts"))
		}
	})
}

// TestWatchdog: a run that stops delivering tokens in the middle of its stream, with
// clients queued behind it, is aborted after --token-stall-timeout; when abort does not
// stop it either (a wedged NPU), the worker is killed after --abort-timeout and
// restarted. Either way every queued client is then served.
func TestWatchdog(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		cfg := map[string]any{"token-stall-timeout": "300ms", "abort-timeout": "300ms"}
		for _, wedged := range []bool{false, true} {
			t.Run(map[bool]string{false: "abortable", true: "wedged"}[wedged], func(t *testing.T) {
				// The first run hangs after one token (once: the restarted worker does not).
				env := []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_ONCE_FILE=" + filepath.Join(t.TempDir(), "hang-once")}
				if wedged {
					env = append(env, "RKLLM_SIM_HANG_IGNORES_ABORT=1")
				}
				s := startServer(t, abi, serverOpts{config: cfg, env: env})
				c := s.dial()
				params := prompt("stall")
				params["stream"] = true
				stalled := c.send("rkllm.run", params)
				c.note()
				queued := []chan response{s.dial().send("rkllm.run", prompt("next")), s.httpAsync("rkllm.run", prompt("next"))}
				s.waitQueueDepth(2)
				e := fails(t, wait(t, stalled), -32005)
				if e.Data["reason"] != "token stall" || e.Data["worker_killed"] != wedged || e.Data["token_count"] != 1.0 {
					t.Errorf("stalled run %+v", e)
				}
				var texts []string
				for _, ch := range queued {
					texts = append(texts, ok[runResult](t, wait(t, ch)).Text)
				}
				if texts[0] != texts[1] || texts[0] == "" {
					t.Errorf("queued runs of one prompt answered %q", texts)
				}
				restarts := 0.0
				if wedged {
					restarts = 1
					if _, body := s.get("/metrics"); !strings.Contains(body, `rkllm_worker_restarts_total{cause="abort_timeout"} 1`) {
						t.Errorf("metrics:\n%s", grepLines(body, "rkllm_worker_restarts"))
					}
				} else if len(s.statsEvents("event=run", "outcome=aborted")) != 1 {
					t.Error("the runtime did not see the abort")
				}
				if _, st := s.status(); st["worker_restarts"] != restarts {
					t.Errorf("readyz %v, want %v restarts", st, restarts)
				}
			})
		}
	})
}

// TestModelLoadFailure: a model that fails to load leaves the server up and not ready,
// with the runtime's reason on /readyz, retrying with backoff.
func TestModelLoadFailure(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{noWait: true, env: []string{"RKLLM_SIM_INIT_FAIL=1"}})
	s.eventually("the load error on /readyz", waitTimeout, func() bool {
		_, st := s.status()
		return st["model_load_error"] != nil
	})
	code, st := s.status()
	if code != 503 || !strings.Contains(st["reason"].(string), "simulated init failure") || st["worker_up"] != true {
		t.Errorf("readyz %d %v", code, st)
	}
	if e := fails(t, s.http("rkllm.run", prompt("x")), -32001); !strings.Contains(e.Message, "simulated init failure") {
		t.Errorf("run while the model fails: %s", e.Message)
	}
	// The retries back off (--restart-backoff-min 20ms, -max 200ms, ±20% jitter): each
	// delay doubles, so each of the first four is longer than the one before, and none
	// is over the cap.
	var delays []time.Duration
	s.eventually("six retries", waitTimeout, func() bool {
		delays = retryDelays(t, s.logs.String())
		return len(delays) >= 6
	})
	for i, d := range delays {
		if i > 0 && i < 4 && d <= delays[i-1] {
			t.Errorf("retry delays %v: delay %d is not longer than the one before", delays, i+1)
		}
		if d > 240*time.Millisecond {
			t.Errorf("retry delays %v: over the cap of 200ms +20%%", delays)
		}
	}
	if resp, _ := s.get("/livez"); resp.StatusCode != 200 {
		t.Errorf("livez %d", resp.StatusCode)
	}
}

// retryDelays reads the retry_in of each "model failed to load; retrying" log entry.
func retryDelays(t *testing.T, logs string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, l := range strings.Split(logs, "\n") {
		var e struct {
			Msg     string `json:"msg"`
			RetryIn string `json:"retry_in"`
		}
		if json.Unmarshal([]byte(l), &e) != nil || e.Msg != "model failed to load; retrying" {
			continue
		}
		d, err := time.ParseDuration(e.RetryIn)
		if err != nil {
			t.Fatalf("retry_in of %s: %v", l, err)
		}
		out = append(out, d)
	}
	return out
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestModelLoadRetrySucceeds: a load that fails once (the runtime's reason logged and
// on /readyz meanwhile) is retried after the backoff and the server becomes ready.
func TestModelLoadRetrySucceeds(t *testing.T) {
	s := startServer(t, "1.2", serverOpts{noWait: true, config: map[string]any{"restart-backoff-min": "300ms"},
		env: []string{"RKLLM_SIM_INIT_FAIL=1", "RKLLM_SIM_FAULT_ONCE_FILE=" + filepath.Join(t.TempDir(), "init-once")}})
	s.eventually("the load error on /readyz", waitTimeout, func() bool {
		code, st := s.status()
		reason, _ := st["reason"].(string)
		return code == 503 && strings.Contains(reason, "model failed to load (retrying)") && strings.Contains(reason, "simulated init failure")
	})
	s.waitReady()
	logs := s.logs.String()
	if !strings.Contains(logs, `"msg":"model failed to load; retrying"`) || !strings.Contains(logs, `"retry_in":"`) {
		t.Errorf("the log lacks the failure and its retry:\n%s", grepLines(logs, "model"))
	}
	if _, st := s.status(); st["model_load_error"] != nil || st["worker_restarts"] != 0.0 {
		t.Errorf("readyz after the retry: %v", st)
	}
	ok[runResult](t, s.http("rkllm.run", prompt("loaded at last")))
}

// TestCrashLoopExits: a model whose load crashes the runtime every time (SIGSEGV in the
// run that learns its embedding width) makes the worker fail --max-worker-failures times
// in a row; then the server stops retrying, logs why, writes it to
// --termination-message-path (as the kubelet's termination message) and exits with
// status 1, so the kubelet sees the crash loop and the operator's status shows it.
func TestCrashLoopExits(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		term := filepath.Join(t.TempDir(), "termination-log")
		s := startServer(t, abi, serverOpts{noWait: true,
			config: map[string]any{"embedding-width": nil, "max-worker-failures": 3, "termination-message-path": term},
			env:    []string{"RKLLM_SIM_CRASH_AFTER=0"}})
		select {
		case <-s.exited:
		case <-time.After(waitTimeout):
			t.Fatalf("the server still runs %s after starting with a model that crashes every load: %v", waitTimeout, s.health())
		}
		var exit *exec.ExitError
		if !errors.As(s.exit, &exit) || exit.ExitCode() != 1 {
			t.Errorf("the server exited with %v, want status 1", s.exit)
		}
		msg, err := os.ReadFile(term)
		if err != nil {
			t.Fatalf("no termination message: %v", err)
		}
		for _, want := range []string{"rkllm-server: giving up (--max-worker-failures 3): the worker failed 3 times in a row", "SIGSEGV", "simulated crash"} {
			if !strings.Contains(string(msg), want) {
				t.Errorf("termination message %q lacks %q", msg, want)
			}
		}
		t.Logf("termination message: %s", msg)
		if strings.Count(strings.TrimSpace(string(msg)), "\n") != 0 {
			t.Errorf("termination message %q is not one line", msg)
		}
		if logs := s.logs.String(); !strings.Contains(logs, `"msg":"giving up on the worker; shutting down"`) {
			t.Errorf("the log does not say why the server gave up:\n%s", grepLines(logs, "worker"))
		}
	})
}
