package main_test

import (
	"strings"
	"testing"
)

// TestCrashRecovery: the runtime crashes (SIGSEGV) in the middle of a run. The client
// gets -32004 with the signal, a queued client waits, the others stay connected, the
// worker restarts, the model is loaded again and the state clients set (LoRA adapter,
// chat template, tools) is replayed, so the next request gets the same reply as before.
func TestCrashRecovery(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		// The second run of each handle crashes after two tokens.
		s := startServer(t, abi, serverOpts{env: []string{"RKLLM_SIM_CRASH_AFTER=2", "RKLLM_SIM_FAULT_RUN=2"}})
		admin, bystander := s.dial(), s.dial()
		ok[int](t, admin.call("rkllm.set_chat_template", map[string]any{"system_prompt": "<sys>Be brief.</sys>", "prompt_prefix": "<u>", "prompt_postfix": "</u><a>"}))
		ok[int](t, admin.call("rkllm.load_lora", map[string]any{"lora_adapter": map[string]any{"lora_adapter_path": "chat.lora", "lora_adapter_name": "chat", "scale": 0.5}}))
		ok[int](t, admin.call("rkllm.set_function_tools", map[string]any{"system_prompt": "Tools:", "tools": []any{map[string]any{"type": "function", "function": map[string]any{"name": "get_time", "parameters": map[string]any{"type": "object", "properties": map[string]any{}}}}}}))
		p := prompt("Hello there")
		p["infer_params"] = map[string]any{"lora_params": map[string]any{"lora_adapter_name": "chat"}}
		before := ok[runResult](t, admin.call("rkllm.run", p)) // run 1 of this handle
		_, st := s.status()
		pid := st["worker_pid"]

		p2 := prompt("Hello there")
		p2["stream"] = true
		crashing := bystander.send("rkllm.run", p2) // run 2: crashes
		bystander.note()
		queued := admin.send("rkllm.run", p) // waits through the restart
		e := fails(t, wait(t, crashing), -32004)
		if e.Data["signal"] != "SIGSEGV" || e.Data["pid"] != pid || !strings.Contains(e.Message, "SIGSEGV") {
			t.Errorf("crash error %+v", e)
		}
		if stderr, _ := e.Data["stderr"].([]any); len(stderr) == 0 || !strings.Contains(stderr[len(stderr)-1].(string), "simulated crash") {
			t.Errorf("crash error's stderr %v", e.Data["stderr"])
		}
		// The queued request is served by the new worker (its run 1) with the state replayed.
		after := ok[runResult](t, wait(t, queued))
		if after.Text != before.Text {
			t.Errorf("after the restart %q, before %q: state not replayed", after.Text, before.Text)
		}
		code, st := s.status()
		if code != 200 || st["worker_restarts"] != 1.0 || st["worker_pid"] == pid || !strings.Contains(st["last_worker_exit"].(string), "SIGSEGV") {
			t.Errorf("readyz after recovery: %d %v", code, st)
		}
		// The other connection is still usable.
		if n := ok[int](t, bystander.call("rkllm.is_running", nil)); n != 0 {
			t.Errorf("is_running = %d", n)
		}
		// And the restart is counted.
		if _, body := s.get("/metrics"); !strings.Contains(body, `rkllm_worker_restarts_total{cause="crash"} 1`) {
			t.Errorf("metrics lack the restart:\n%s", grepLines(body, "rkllm_worker_restarts"))
		}
	})
}

// TestWatchdog: a run that stops delivering tokens is aborted after
// --token-stall-timeout; when abort does not stop it either (a wedged NPU), the worker is
// killed after --abort-timeout and restarted, and the next request succeeds.
func TestWatchdog(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		cfg := map[string]any{"token-stall-timeout": "300ms", "abort-timeout": "300ms"}
		t.Run("abortable", func(t *testing.T) {
			s := startServer(t, abi, serverOpts{config: cfg, env: hangFirstRun})
			e := fails(t, s.http("rkllm.run", prompt("stall")), -32005)
			if e.Data["reason"] != "token stall" || e.Data["worker_killed"] != false || e.Data["token_count"] != 1.0 {
				t.Errorf("stalled run %+v", e)
			}
			if len(s.statsEvents("event=run", "outcome=aborted")) != 1 {
				t.Error("the runtime did not see the abort")
			}
			ok[runResult](t, s.http("rkllm.run", prompt("next")))
		})
		t.Run("wedged", func(t *testing.T) {
			// The second run of each handle hangs after one token and ignores abort.
			s := startServer(t, abi, serverOpts{config: cfg, env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_HANG_IGNORES_ABORT=1", "RKLLM_SIM_FAULT_RUN=2"}})
			first := ok[runResult](t, s.http("rkllm.run", prompt("first")))
			e := fails(t, s.http("rkllm.run", prompt("stall")), -32005)
			if e.Data["reason"] != "token stall" || e.Data["worker_killed"] != true {
				t.Errorf("wedged run %+v", e)
			}
			// The next request waits for the new worker and succeeds.
			if next := ok[runResult](t, s.http("rkllm.run", prompt("first"))); next.Text != first.Text {
				t.Errorf("after the restart %q, before %q", next.Text, first.Text)
			}
			if _, st := s.status(); st["worker_restarts"] != 1.0 {
				t.Errorf("readyz %v", st)
			}
			if _, body := s.get("/metrics"); !strings.Contains(body, `rkllm_worker_restarts_total{cause="abort_timeout"} 1`) {
				t.Errorf("metrics:\n%s", grepLines(body, "rkllm_worker_restarts"))
			}
		})
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
	s.eventually("a retry", waitTimeout, func() bool {
		return strings.Count(s.logs.String(), "model failed to load; retrying") >= 2
	})
	if resp, _ := s.get("/livez"); resp.StatusCode != 200 {
		t.Errorf("livez %d", resp.StatusCode)
	}
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
