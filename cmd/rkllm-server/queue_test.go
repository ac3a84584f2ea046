package main_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// hangFirstRun makes the first run of each handle stop after one token until it is
// aborted, so a test holds the model busy for exactly as long as it wants.
var hangFirstRun = []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_RUN=1"}

func (s *server) queueDepth() int {
	_, st := s.status()
	return int(st["queue_depth"].(float64))
}

func (s *server) waitQueueDepth(n int) {
	s.t.Helper()
	s.eventually(fmt.Sprintf("queue depth %d", n), waitTimeout, func() bool { return s.queueDepth() == n })
}

// TestQueueOrderAndAbort: requests wait in FIFO order behind the running one, a full
// queue answers -32002 at once, rkllm.abort removes the caller's queued request and stops
// its running one (which answers with what it generated, finish_reason "abort").
func TestQueueOrderAndAbort(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: map[string]any{"max-queue": 2}, env: hangFirstRun})
		c1, c2, c3, c4 := s.dial(), s.dial(), s.dial(), s.dial()
		first := prompt("first")
		first["stream"] = true
		r1 := c1.send("rkllm.run", first)
		tok := c1.note()["params"].(map[string]any)
		if n := ok[int](t, s.http("rkllm.is_running", nil)); n != 1 {
			t.Errorf("is_running during a run = %d", n)
		}
		r2 := c2.send("rkllm.run", prompt("second request"))
		s.waitQueueDepth(1)
		r3 := c3.send("rkllm.run", prompt("the third request here"))
		s.waitQueueDepth(2)
		// The queue is full: refused at once, over both transports.
		fails(t, c4.call("rkllm.run", prompt("too many")), -32002)
		resp, body := s.post(request(1, "rkllm.run", prompt("too many")))
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "-32002") {
			t.Errorf("full queue over HTTP: %d %s", resp.StatusCode, body)
		}
		// c2 gives up on its queued run; c4's run takes the free place behind c3's.
		aborted := ok[map[string][]string](t, c2.call("rkllm.abort", nil))["aborted"]
		if len(aborted) != 1 {
			t.Errorf("abort of a queued run: %v", aborted)
		}
		if e := fails(t, wait(t, r2), -32006); !strings.Contains(e.Message, "queued") {
			t.Errorf("aborted queued run: %s", e.Message)
		}
		s.waitQueueDepth(1)
		r4 := c4.send("rkllm.run", prompt("and a fourth request comes last"))
		s.waitQueueDepth(2)
		// Stop the running run: it answers with the token it made.
		running := ok[map[string][]string](t, c1.call("rkllm.abort", map[string]any{"request_id": tok["request_id"]}))["aborted"]
		if len(running) != 1 || running[0] != tok["request_id"] {
			t.Errorf("abort of the running run: %v", running)
		}
		res1 := ok[runResult](t, wait(t, r1))
		if res1.FinishReason != "abort" || res1.Text != tok["text"] || res1.TokenCount != 1 {
			t.Errorf("aborted run %+v (its token was %v)", res1, tok)
		}
		res3 := ok[runResult](t, wait(t, r3))
		res4 := ok[runResult](t, wait(t, r4))
		// The simulator logged the runs in the order it ran them.
		runs := s.statsEvents("event=run")
		if len(runs) != 3 || !strings.Contains(runs[0], "outcome=aborted") ||
			!strings.Contains(runs[1], fmt.Sprintf("prefill=%d ", res3.Perf.PrefillTokens)) ||
			!strings.Contains(runs[2], fmt.Sprintf("prefill=%d ", res4.Perf.PrefillTokens)) {
			t.Errorf("runs in the simulator (want aborted, then third, then fourth):\n%s", strings.Join(runs, "\n"))
		}
	})
}

// TestDisconnectAbortsItsRun: a client that goes away loses its queued request and its
// running one is aborted in the runtime, so the NPU is free for the next client.
func TestDisconnectAbortsItsRun(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{env: hangFirstRun})
		c1, c2 := s.dial(), s.dial()
		first := prompt("first")
		first["stream"] = true
		c1.send("rkllm.run", first)
		c1.note()
		c2.send("rkllm.run", prompt("queued"))
		s.waitQueueDepth(1)
		_ = c2.nc.Close()
		s.waitQueueDepth(0)
		_ = c1.nc.Close()
		s.eventually("the runtime to report the run aborted", waitTimeout, func() bool {
			return len(s.statsEvents("event=run", "run=1 ", "outcome=aborted")) == 1
		})
		if res := ok[runResult](t, s.http("rkllm.run", prompt("next"))); res.FinishReason != "stop" {
			t.Errorf("run after the disconnect: %+v", res)
		}
		if n := len(s.statsEvents("event=run")); n != 2 {
			t.Errorf("%d runs in the runtime, want 2 (the queued one never ran)", n)
		}
	})
}

// TestHTTPDisconnectAbortsItsRun: the same over HTTP, with a streaming client.
func TestHTTPDisconnectAbortsItsRun(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{env: hangFirstRun})
	params := prompt("first")
	params["stream"] = true
	stream := s.openStream(request(1, "rkllm.run", params))
	stream.next(t)
	stream.close()
	s.eventually("the runtime to report the run aborted", waitTimeout, func() bool {
		return len(s.statsEvents("event=run", "outcome=aborted")) == 1
	})
}

// TestRequestTimeout: a request still queued when --request-timeout passes is
// answered -32005 (reason "request timeout"), over the socket and over HTTP, and counted
// with outcome timeout. The model is held by a run wedged in the runtime (abort does
// not stop it, and --abort-timeout is long), so the queued requests cannot start.
func TestRequestTimeout(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"request-timeout": "300ms", "abort-timeout": "10m"},
		env: append([]string{"RKLLM_SIM_HANG_IGNORES_ABORT=1"}, hangFirstRun...)})
	holder := s.dial()
	held := prompt("hold")
	held["stream"] = true
	holder.send("rkllm.run", held)
	holder.note()
	queued := []chan response{s.dial().send("rkllm.run", prompt("queued")), s.httpAsync("rkllm.run", prompt("queued"))}
	for i, ch := range queued {
		e := fails(t, wait(t, ch), -32005)
		if e.Data["reason"] != "request timeout" || !strings.Contains(e.Message, "in the queue") {
			t.Errorf("queued request %d: %+v", i, e)
		}
	}
	s.eventually("both timeouts counted", waitTimeout, func() bool {
		return s.metric(`rkllm_requests_total{method="rkllm.run",outcome="timeout"}`) == 2
	})
	if n := len(s.statsEvents("event=run")); n != 0 {
		t.Errorf("%d runs ended in the runtime, want none (the held one is wedged, the queued ones never ran)", n)
	}
}
