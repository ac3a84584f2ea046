package main_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLimitFlags sets each bound of docs/server.md ("Limits") to a small value and
// checks that it holds, with its error, and that the connection goes on where the
// protocol allows.
func TestLimitFlags(t *testing.T) {
	t.Run("message", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-json-depth": 6, "max-string-bytes": 64,
			"max-array-len": 4, "max-batch": 2, "max-request-bytes": 4096}})
		c := s.rawDial()
		for _, tc := range []struct{ msg, limit string }{
			{run(`{"token_input":{"input_ids":[[[[1]]]]}}`), "max-json-depth"},
			{run(`{"prompt_input":"` + strings.Repeat("x", 65) + `"}`), "max-string-bytes"},
			{run(`{"token_input":{"input_ids":[1,2,3,4,5]}}`), "max-array-len"},
			{"[" + req("rkllm.is_running", "") + "," + req("rkllm.is_running", "") + "," + req("rkllm.is_running", "") + "]", "max-batch"},
			{run(`{"prompt_input":"` + strings.Repeat("x ", 2100) + `"}`), "max-request-bytes"},
		} {
			e := fails(t, c.call1(tc.msg), -32008)
			if e.Data["limit"] != tc.limit {
				t.Errorf("%s: error %+v", tc.limit, e)
			}
		}
		// Within the limits (the string of exactly 64 bytes), on the same connection.
		ok[runResult](t, c.call1(run(`{"prompt_input":"`+strings.Repeat("x", 64)+`"}`)))
		if resp, body := s.post(run(`{"prompt_input":"` + strings.Repeat("x ", 2100) + `"}`)); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "max-request-bytes") {
			t.Errorf("HTTP body over the limit: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("connections", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-connections": 2, "idle-timeout": "300ms"}})
		a := s.rawDial()
		ok[int](t, a.call1(req("rkllm.is_running", "")))
		b := s.rawDial()
		ok[int](t, b.call1(req("rkllm.is_running", "")))
		// The third gets one error line, then the connection closes.
		extra := s.rawDial()
		_ = extra.nc.SetReadDeadline(time.Now().Add(waitTimeout))
		out, err := io.ReadAll(extra.br)
		if err != nil || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), `"code":-32002`) || !strings.Contains(string(out), "max_connections") {
			t.Errorf("connection over --max-connections read %q, %v", out, err)
		}
		// Idle ones are closed after --idle-timeout, which frees their slots.
		for _, c := range []*rawClient{a, b} {
			_ = c.nc.SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := c.br.ReadByte(); err != io.EOF {
				t.Errorf("idle connection: %v, want EOF", err)
			}
		}
		s.eventually("the slots to be free", waitTimeout, func() bool { return s.metric(`rkllm_connections_open{transport="unix"}`) == 0 })
		if got := s.metric(`rkllm_connections_rejected_total{reason="max_connections",transport="unix"}`); got != 1 {
			t.Errorf("rejections counted: %v", got)
		}
		ok[int](t, s.rawDial().call1(req("rkllm.is_running", "")))
	})
	t.Run("in flight", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-inflight-per-connection": 2, "max-inflight-bytes": 400}, env: hangFirstRun})
		c := s.dial()
		held := prompt("hold")
		held["stream"] = true
		c.send("rkllm.run", held)
		c.note()
		queued := c.send("rkllm.run", prompt("q"))
		s.waitQueueDepth(1)
		// A third request on this connection; methods that never wait still answer.
		e := fails(t, c.call("rkllm.get_kv_cache_size", nil), -32002)
		if e.Data["limit"] != "max-inflight-per-connection" {
			t.Errorf("third request in flight: %+v", e)
		}
		if n := ok[int](t, c.call("rkllm.is_running", nil)); n != 1 {
			t.Errorf("is_running at the cap: %d", n)
		}
		// Another connection: the two held messages and this one exceed 400 bytes.
		e = fails(t, s.dial().call("rkllm.run", prompt(strings.Repeat("y", 150))), -32002)
		if e.Data["limit"] != "max-inflight-bytes" {
			t.Errorf("message over the bytes in flight: %+v", e)
		}
		ok[int](t, s.dial().call("rkllm.is_running", nil)) // small enough
		ok[map[string]any](t, c.call("rkllm.abort", nil))
		wait(t, queued)
	})
	t.Run("client buffer", func(t *testing.T) {
		t.Parallel()
		// A client that does not read its stream is cut off once 16 KiB wait for it,
		// and its run is aborted in the runtime.
		m := churnModel()
		m.DecodeTokensPerSecond = 0
		s := startServer(t, "1.3", serverOpts{model: m, config: map[string]any{"client-buffer-bytes": 16384, "max-context-len": m.MaxContextLimit}})
		nc, err := net.Dial("unix", s.socket)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		if err := nc.(*net.UnixConn).SetReadBuffer(4096); err != nil {
			t.Fatal(err)
		}
		long := prompt("never read")
		long["stream"] = true
		if _, err := fmt.Fprintln(nc, request(1, "rkllm.run", long)); err != nil {
			t.Fatal(err)
		}
		s.eventually("the run to be aborted in the runtime", waitTimeout, func() bool {
			return len(s.statsEvents("event=run", "outcome=aborted")) == 1
		})
		if got := s.metric(`rkllm_clients_cut_off_total{transport="unix"}`); got != 1 {
			t.Errorf("cut-offs counted: %v", got)
		}
		ok[runResult](t, s.http("rkllm.run", map[string]any{"input": map[string]any{"prompt_input": "x"}, "infer_params": map[string]any{"max_new_tokens": 2}}))
	})
	t.Run("reserved descriptors", func(t *testing.T) {
		t.Parallel()
		// With 128 descriptors and 64 in reserve, the server refuses connections before
		// it runs out, and keeps serving.
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-connections": 0},
			wrap: []string{"sh", "-c", `ulimit -n 128 && exec "$@"`, "sh"}})
		var held []*rawClient
		refused := 0
		for range 100 {
			c := s.rawDial()
			_ = c.nc.SetDeadline(time.Now().Add(waitTimeout))
			// A refused connection may be closed before this write (EPIPE): its one
			// line is still there to read.
			_, _ = fmt.Fprintln(c.nc, req("rkllm.is_running", ""))
			line, err := c.br.ReadString('\n')
			if err != nil {
				t.Fatalf("after %d connections: %v", len(held), err)
			}
			if strings.Contains(line, "file_descriptors") {
				refused++
				continue
			}
			held = append(held, c)
		}
		if refused == 0 || len(held) < 20 {
			t.Errorf("%d connections held, %d refused for descriptors", len(held), refused)
		}
		for _, c := range held {
			_ = c.nc.Close()
		}
		s.eventually("the connections to close", waitTimeout, func() bool { return s.metric(`rkllm_connections_open{transport="unix"}`) == 0 })
		ok[runResult](t, s.rawDial().call1(request(2, "rkllm.run", prompt("still here"))))
	})
	t.Run("HTTP timeouts", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"read-header-timeout": "200ms", "body-read-timeout": "200ms"}})
		addr := strings.TrimPrefix(s.base, "http://")
		slowHead, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = slowHead.Close() })
		_, _ = io.WriteString(slowHead, "POST /rpc HTTP/1.1\r\nHost: x\r\n")
		_ = slowHead.SetReadDeadline(time.Now().Add(waitTimeout))
		if _, err := io.ReadAll(slowHead); err != nil {
			t.Errorf("headers never finished: %v, want the connection closed", err)
		}
		slowBody, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = slowBody.Close() })
		_, _ = io.WriteString(slowBody, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
		_ = slowBody.SetReadDeadline(time.Now().Add(waitTimeout))
		resp, err := http.ReadResponse(bufio.NewReader(slowBody), nil)
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body never finished: %v %v", resp, err)
		}
	})
}
