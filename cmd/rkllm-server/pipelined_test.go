package main_test

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestPipelinedClientLeaves (issue 12.9): a client that sent a plain (not streamed)
// run, pipelined a second request behind it and closed the connection has its run
// aborted in the runtime, and the pipelined request never runs: over /rpc, /v1/,
// Ollama's /api/ and the Unix socket.
func TestPipelinedClientLeaves(t *testing.T) {
	chat := func(path string) func(content string) string {
		return func(content string) string {
			b, _ := json.Marshal(map[string]any{"model": "model", "messages": []map[string]string{{"role": "user", "content": content}}, "stream": false})
			return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", path, len(b), b)
		}
	}
	v1, ollama := chat("/v1/chat/completions"), chat("/api/chat")
	for _, tc := range []struct {
		name, network string
		first, second string
		transport     string
	}{
		{"rpc", "tcp", httpRequest(request(1, "rkllm.run", prompt("held"))), httpRequest(request(2, "rkllm.run", prompt("pipelined"))), "http"},
		{"v1", "tcp", v1("held"), v1("pipelined"), "http"},
		{"ollama", "tcp", ollama("held"), ollama("pipelined"), "http"},
		{"socket", "unix", request(1, "rkllm.run", prompt("held")) + "\n", request(2, "rkllm.run", prompt("pipelined")) + "\n", "unix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t, "1.3", serverOpts{env: hangFirstRun})
			target := s.socket
			if tc.network == "tcp" {
				target = strings.TrimPrefix(s.base, "http://")
			}
			nc, err := dialNet(tc.network, target)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(nc, tc.first); err != nil {
				t.Fatal(err)
			}
			// The first token is out: the run is in the runtime (an abort sent before the
			// runtime starts the run would be lost, and the run end by the abort timeout).
			s.eventually("the first run's first token", waitTimeout, func() bool {
				return s.metric("rkllm_time_to_first_token_seconds_count") == 1
			})
			if _, err := io.WriteString(nc, tc.second); err != nil {
				t.Fatal(err)
			}
			_ = nc.Close()
			s.eventually("the first run to be aborted in the runtime", waitTimeout, func() bool {
				return len(s.statsEvents("event=run", "outcome=aborted")) == 1
			}, func() string { return strings.Join(s.statsEvents("event=run"), "; ") })
			// Once the server has closed the connection nothing it sent can run any more.
			s.eventually("the connection to close", waitTimeout, func() bool {
				return s.metric(`rkllm_connections_open{transport="`+tc.transport+`"}`) == 0
			})
			if runs := s.statsEvents("event=run"); len(runs) != 1 {
				t.Errorf("runs in the runtime: %v, want only the aborted first one", runs)
			}
			if _, st := s.status(); st["queue_depth"] != 0.0 || st["running"] != false {
				t.Errorf("after the client left: %v", st)
			}
		})
	}
}
