package main_test

import (
	"bufio"
	"encoding/json"
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
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-connections": 2, "idle-timeout": "300ms"}, env: hangFirstRun})
		// Two connections with requests in flight (so not idle): a running stream and a
		// request queued behind it. Each sends its request as its first message: a
		// connection that waited idle for --idle-timeout (300 ms, soon gone on a loaded
		// machine) between its acceptance and its request would be closed, freeing its
		// slot for the connection that must be refused.
		held := prompt("hold")
		held["stream"] = true
		a, running := s.dialSending("rkllm.run", held, func(c *client) bool {
			select {
			case <-c.notes: // the first token: a's run is going
				return true
			default:
				return false
			}
		})
		b, queued := s.dialSending("rkllm.run", prompt("queued"), func(*client) bool { return s.queueDepth() == 1 })
		// A third socket connection gets one error line, then the connection closes.
		extra := s.rawDial()
		_ = extra.nc.SetReadDeadline(time.Now().Add(waitTimeout))
		out, err := io.ReadAll(extra.br)
		if err != nil || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), `"code":-32002`) || !strings.Contains(string(out), "max_connections") {
			t.Errorf("connection over --max-connections read %q, %v", out, err)
		}
		// Over HTTP: 503 with the JSON-RPC error and Retry-After, then the close.
		hc, err := dialNet("tcp", strings.TrimPrefix(s.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = hc.Close() })
		_ = hc.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := io.WriteString(hc, httpRequest(req("rkllm.is_running", ""))); err != nil {
			t.Fatal(err)
		}
		hr := bufio.NewReader(hc)
		if resp, err := http.ReadResponse(hr, nil); err != nil {
			t.Errorf("HTTP connection over --max-connections: %v", err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			var r response
			_ = json.Unmarshal(body, &r)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || !resp.Close ||
				r.Error == nil || r.Error.Code != -32002 || r.Error.Data["reason"] != "max_connections" {
				t.Errorf("HTTP connection over --max-connections: %d %v %s", resp.StatusCode, resp.Header, body)
			}
			if _, err := hr.ReadByte(); err != io.EOF {
				t.Errorf("HTTP connection over --max-connections after the answer: %v, want EOF", err)
			}
		}
		// Once their requests are answered the two are idle, and closed after
		// --idle-timeout, which frees their slots.
		ok[map[string]any](t, a.call("rkllm.abort", nil))
		wait(t, running)
		ok[runResult](t, wait(t, queued))
		for _, c := range []*client{a, b} {
			select {
			case <-c.closed:
			case <-time.After(waitTimeout):
				t.Fatalf("an idle socket connection still open after %s", waitTimeout)
			}
		}
		s.eventually("the slots to be free", waitTimeout, func() bool { return s.metric(`rkllm_connections_open{transport="unix"}`) == 0 })
		for _, transport := range []string{"unix", "http"} {
			if got := s.metric(`rkllm_connections_rejected_total{reason="max_connections",transport="` + transport + `"}`); got != 1 {
				t.Errorf("rejections counted over %s: %v, want 1", transport, got)
			}
		}
		ok[int](t, s.rawDial().call1(req("rkllm.is_running", "")))

		// An HTTP keep-alive connection serves request after request, and is closed once
		// idle for --idle-timeout. The two requests go in one write, so no idle gap
		// between them can close the connection first on a loaded machine.
		kc, err := dialNet("tcp", strings.TrimPrefix(s.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kc.Close() })
		_ = kc.SetDeadline(time.Now().Add(waitTimeout))
		kr := bufio.NewReader(kc)
		if _, err := io.WriteString(kc, httpRequest(req("rkllm.is_running", ""))+httpRequest(req("rkllm.is_running", ""))); err != nil {
			t.Fatalf("requests on the keep-alive connection: %v", err)
		}
		for i := range 2 {
			resp, err := http.ReadResponse(kr, nil)
			if err != nil {
				t.Fatalf("request %d on the keep-alive connection: %v", i+1, err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || resp.Close || !strings.Contains(string(body), `"result":0`) {
				t.Errorf("request %d on the keep-alive connection: %d close=%v %s", i+1, resp.StatusCode, resp.Close, body)
			}
		}
		if _, err := kr.ReadByte(); err != io.EOF {
			t.Errorf("idle keep-alive connection: %v, want EOF (closed after --idle-timeout)", err)
		}
	})
	t.Run("in flight", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-inflight-per-connection": 2, "max-inflight-bytes": 4000}, env: hangFirstRun})
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
		// Another connection: the two held messages and this one (its 2 kB and what
		// decoding it costs) exceed 4000 bytes.
		e = fails(t, s.dial().call("rkllm.run", prompt(strings.Repeat("y", 2000))), -32002)
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
		nc, err := dialNet("unix", s.socket)
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
		// (Scraping may be refused too until the descriptors are back.)
		s.eventually("the connections to close", waitTimeout, func() bool {
			open, err := s.tryMetric(`rkllm_connections_open{transport="unix"}`)
			return err == nil && open == 0
		})
		ok[runResult](t, s.rawDial().call1(request(2, "rkllm.run", prompt("still here"))))
	})
	t.Run("HTTP timeouts", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, "1.3", serverOpts{config: map[string]any{"read-header-timeout": "200ms", "body-read-timeout": "200ms"}})
		addr := strings.TrimPrefix(s.base, "http://")
		slowHead, err := dialNet("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = slowHead.Close() })
		_, _ = io.WriteString(slowHead, "POST /rpc HTTP/1.1\r\nHost: x\r\n")
		_ = slowHead.SetReadDeadline(time.Now().Add(waitTimeout))
		if _, err := io.ReadAll(slowHead); err != nil {
			t.Errorf("headers never finished: %v, want the connection closed", err)
		}
		slowBody, err := dialNet("tcp", addr)
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

// httpRequest is a raw HTTP/1.1 request posting body to /rpc (keep-alive, the default).
func httpRequest(body string) string {
	return fmt.Sprintf("POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// dialSending connects to the socket and sends one request as the connection's first
// message, again until the server takes the connection (a refused one is answered
// -32002 and closed) and accepted says the request is in flight.
func (s *server) dialSending(method string, params any, accepted func(*client) bool) (*client, chan response) {
	s.t.Helper()
	for {
		nc, err := dialNet("unix", s.socket)
		if err != nil {
			s.t.Fatal(err)
		}
		c := s.clientOn(nc)
		r := c.send(method, params)
		refused := false
		s.eventually("the connection's request in flight", waitTimeout, func() bool {
			select {
			case <-c.closed:
				refused = true
				return true
			default:
				return accepted(c)
			}
		})
		if !refused {
			return c, r
		}
		_ = nc.Close()
	}
}

// dialAccepted connects to the socket until the server takes the connection: the
// slot of a connection just closed (such as the readiness probe's) is freed only once
// the server has closed its end.
func (s *server) dialAccepted() *client {
	s.t.Helper()
	var c *client
	s.eventually("a socket connection the server accepts", waitTimeout, func() bool {
		nc, err := dialNet("unix", s.socket)
		if err != nil {
			s.t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(waitTimeout))
		// A refused connection may be closed before this write (EPIPE): its one line is
		// still there to read. The line is read byte by byte so that nothing after it is
		// taken from the client made of nc.
		_, _ = io.WriteString(nc, req("rkllm.is_running", "")+"\n")
		var line []byte
		for b := []byte{0}; b[0] != '\n'; line = append(line, b[0]) {
			if _, err := nc.Read(b); err != nil {
				s.t.Fatalf("probe of a new connection: %v", err)
			}
		}
		if strings.Contains(string(line), "max_connections") {
			_ = nc.Close()
			return false
		}
		_ = nc.SetDeadline(time.Time{})
		c = s.clientOn(nc)
		return true
	})
	return c
}
