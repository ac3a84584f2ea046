package main_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// gate is the simulator's RKLLM_SIM_RUN_GATE: a FIFO at which rkllm_run waits, before
// the run is in progress, until the test opens it.
type gate struct {
	t    *testing.T
	path string
}

func newGate(t *testing.T) *gate {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return &gate{t: t, path: path}
}

// open lets the run waiting at the gate go on.
func (g *gate) open() {
	g.t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(g.path, os.O_WRONLY, 0) // blocks until the run opens it too
		if err == nil {
			err = f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			g.t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		g.t.Fatal("no run came to the gate")
	}
}

// TestAbortBeforeTheRuntimeStarts (issue 12 follow-up): a run ended early at the
// moment the runtime has been asked to run it but has not started it yet (rkllm_run
// called; an rkllm_abort then finds nothing to stop) is aborted all the same, in the
// runtime, as soon as it starts, whichever way it was ended: its client leaving (Unix
// socket, /rpc, /v1/), rkllm.abort, the watchdog, or its request timeout. The abort timeout is far
// away, so a lost abort shows as a run the runtime finished (its 4 tokens); the worker
// is never killed, and the next run is served.
func TestAbortBeforeTheRuntimeStarts(t *testing.T) {
	// Paced, and every reply 4 tokens long: a run whose abort was lost ends by itself,
	// soon, as "finished" instead of "aborted".
	paced := simulator.FastModel()
	paced.DecodeTokensPerSecond = 20
	for _, tc := range []struct {
		name, abi string
		config    map[string]any
		// send starts the run and returns a function that ends it early, and one that
		// checks what its client got (nil when the client left).
		send func(t *testing.T, s *server) (end func(), check func())
	}{
		{name: "socket disconnect", abi: "1.2", send: func(_ *testing.T, s *server) (func(), func()) {
			c := s.dial()
			c.send("rkllm.run", prompt("leave"))
			return func() { _ = c.nc.Close() }, nil
		}},
		{name: "rpc disconnect", abi: "1.3", send: func(t *testing.T, s *server) (func(), func()) {
			nc := rawHTTP(t, s, "/rpc", request(1, "rkllm.run", prompt("leave")))
			return func() { _ = nc.Close() }, nil
		}},
		{name: "v1 disconnect", abi: "1.2", send: func(t *testing.T, s *server) (func(), func()) {
			body, _ := json.Marshal(map[string]any{"model": "model", "messages": []map[string]string{{"role": "user", "content": "leave"}}})
			nc := rawHTTP(t, s, "/v1/chat/completions", string(body))
			return func() { _ = nc.Close() }, nil
		}},
		{name: "rkllm.abort", abi: "1.3", send: func(t *testing.T, s *server) (func(), func()) {
			c := s.dial()
			r := c.send("rkllm.run", prompt("stopped"))
			return func() { ok[map[string]any](t, c.call("rkllm.abort", nil)) },
				func() {
					if res := ok[runResult](t, wait(t, r)); res.FinishReason != "abort" || res.TokenCount >= 4 {
						t.Errorf("the aborted run answered %+v, want finish_reason abort before its 4 tokens", res)
					}
				}
		}},
		{name: "watchdog", abi: "1.3", config: map[string]any{"token-stall-timeout": "2s", "min-prefill-rate": 1000000}, send: func(t *testing.T, s *server) (func(), func()) {
			r := s.dial().send("rkllm.run", prompt("stalled"))
			return func() {}, func() {
				if e := fails(t, wait(t, r), -32005); e.Data["reason"] != "token stall" || e.Data["worker_killed"] == true {
					t.Errorf("the stalled run answered %+v", e)
				}
			}
		}},
		{name: "request timeout", abi: "1.2", config: map[string]any{"request-timeout": "3s"}, send: func(t *testing.T, s *server) (func(), func()) {
			r := s.dial().send("rkllm.run", prompt("late"))
			return func() {}, func() {
				if e := fails(t, wait(t, r), -32005); e.Data["reason"] != "request timeout" {
					t.Errorf("the timed-out run answered %+v", e)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := newGate(t)
			cfg := map[string]any{"abort-timeout": "10m", "token-stall-timeout": "10m", "max-new-tokens": 4}
			for k, v := range tc.config {
				cfg[k] = v
			}
			s := startServer(t, tc.abi, serverOpts{model: &paced, config: cfg, env: []string{"RKLLM_SIM_RUN_GATE=" + g.path, "RKLLM_SIM_FAULT_RUN=1"}})
			pid := s.health()["worker_pid"]
			end, check := tc.send(t, s)
			s.eventually("the run at the gate", waitTimeout, func() bool { return len(s.statsEvents("event=gate")) == 1 })
			end()
			// The abort has reached the runtime, which had nothing to stop yet.
			s.eventually("an abort that found no run", waitTimeout, func() bool { return len(s.statsEvents("event=idle_abort")) > 0 })
			g.open()
			s.eventually("the run to be aborted in the runtime", waitTimeout, func() bool {
				return len(s.statsEvents("event=run", "outcome=")) == 1
			})
			if runs := s.statsEvents("event=run", "outcome=aborted"); len(runs) != 1 {
				t.Errorf("the run ended %v, want outcome=aborted", s.statsEvents("event=run"))
			}
			if check != nil {
				check()
			}
			c := s.dial()
			if res := ok[runResult](t, c.call("rkllm.run", prompt("next"))); res.TokenCount != 4 {
				t.Errorf("the next run: %+v", res)
			}
			if h := s.health(); h["worker_pid"] != pid || h["worker_restarts"] != 0.0 {
				t.Errorf("the worker was replaced: %v (was pid %v)", h, pid)
			}
		})
	}
}

// rawHTTP sends one POST over a connection of its own and returns the connection.
func rawHTTP(t *testing.T, s *server, path, body string) net.Conn {
	t.Helper()
	nc, err := dialNet("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body)
	if _, err := io.WriteString(nc, req); err != nil {
		t.Fatal(err)
	}
	return nc
}
