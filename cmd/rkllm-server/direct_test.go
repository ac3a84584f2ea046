package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// The worker writes a streamed run's tokens to the client itself (docs/server.md,
// "Tokens in one hop"). These tests read the stream as a client does, over each
// transport, and check what the client must never notice: every line whole and in
// order, the streamed text and count the final result's, the other answers on the
// connection not held up by the stream, a slow client served whole.

// directModel replies n tokens at tokensPerSecond (0: unpaced), with words whose JSON
// takes care and characters split into WAITING deliveries.
func directModel(n int, tokensPerSecond float64) *simulator.Model {
	m := simulator.FastModel()
	m.Vocab = append(m.Vocab, " café", " 日本", "<b>&amp;", "\u2028\u2029", "\"quoted\\\"", "\ttab\n", "\x01\x1f", " 🙂")
	m.DecodeTokensPerSecond = tokensPerSecond
	m.ReplyMinTokens, m.ReplyMaxTokens = n, n
	m.MaxContextLimit = 2 * n
	return &m
}

// streamReader reads a stream's messages (lines, or SSE events) and checks them as a
// client would: each is one JSON-RPC message, notifications first, in order.
type streamReader struct {
	t     *testing.T
	br    *bufio.Reader
	sse   bool
	text  strings.Builder
	notes int
}

// next returns the next message that is not a token notification, after taking in the
// notifications before it.
func (r *streamReader) next() map[string]any {
	r.t.Helper()
	return r.read(-1)
}

// read takes in notifications until it has taken upTo of them (-1: any number) and
// returns the first other message, nil when it stopped at upTo.
func (r *streamReader) read(upTo int) map[string]any {
	r.t.Helper()
	for r.notes != upTo {
		line, err := r.br.ReadBytes('\n')
		if err != nil {
			r.t.Fatalf("after %d notifications: %v (%q)", r.notes, err, line)
		}
		if r.sse {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var ok bool
			if line, ok = bytes.CutPrefix(line, []byte("data: ")); !ok {
				r.t.Fatalf("after %d notifications: not an SSE data line: %q", r.notes, line)
			}
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			r.t.Fatalf("after %d notifications: a line that is not JSON (%v): %q", r.notes, err, line)
		}
		if m["method"] != "rkllm.result" {
			return m
		}
		p := m["params"].(map[string]any)
		r.text.WriteString(p["text"].(string))
		r.notes++
	}
	return nil
}

// checkResult checks the run's final response against what was streamed.
func (r *streamReader) checkResult(m map[string]any, tokens int) {
	r.t.Helper()
	res, ok := m["result"].(map[string]any)
	if !ok {
		r.t.Fatalf("final response: %v", m)
	}
	if res["text"] != r.text.String() {
		r.t.Errorf("the streamed text (%d bytes) is not the result's (%d bytes)", r.text.Len(), len(res["text"].(string)))
	}
	if res["token_count"] != float64(tokens) || r.notes < tokens {
		r.t.Errorf("token_count %v and %d notifications, want %d tokens", res["token_count"], r.notes, tokens)
	}
}

func runLine(id any) string {
	p := prompt("stream to me")
	p["stream"] = true
	return request(id, "rkllm.run", p) + "\n"
}

func TestTokensInOneHop(t *testing.T) {
	const paced = 1500
	s := startServer(t, "1.3", serverOpts{race: true, model: directModel(paced, 1500), config: map[string]any{"max-context-len": 2 * paced}})
	whole := func() float64 { return s.metric(`rkllm_direct_token_writes_total{outcome="whole"}`) }

	t.Run("socket, with another request during the stream", func(t *testing.T) {
		before := whole()
		nc, err := (&net.Dialer{}).DialContext(context.Background(), "unix", s.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(waitTimeout))
		if _, err := io.WriteString(nc, runLine(1)); err != nil {
			t.Fatal(err)
		}
		r := &streamReader{t: t, br: bufio.NewReader(nc)}
		if m := r.read(50); m != nil {
			t.Fatalf("before the 50th token: %v", m)
		}
		if _, err := io.WriteString(nc, request("busy?", "rkllm.is_running", nil)+"\n"); err != nil {
			t.Fatal(err)
		}
		// The answer comes as soon as the worker has let go of the socket, long before
		// the run's end: tokens after it go through the supervisor.
		m := r.next()
		if m["id"] != "busy?" || m["result"] != float64(1) {
			t.Fatalf("answer to is_running during the stream: %v", m)
		}
		if r.notes > paced/2 {
			t.Errorf("is_running was answered after %d of %d tokens: held until the stream ended", r.notes, paced)
		}
		r.checkResult(r.next(), paced)
		if whole()-before < 50 {
			t.Errorf("%v tokens written by the worker, want the 50 before is_running at least", whole()-before)
		}
	})

	for _, sse := range []bool{false, true} {
		t.Run(fmt.Sprintf("http, sse=%v", sse), func(t *testing.T) {
			before := whole()
			var header []string
			if sse {
				header = []string{"Accept", "text/event-stream"}
			}
			st := s.openStream(runLine(1), header...)
			defer st.close()
			r := &streamReader{t: t, br: st.br, sse: sse}
			r.checkResult(r.next(), paced)
			if n := whole() - before; n < paced/2 {
				t.Errorf("%v of %d tokens written by the worker", n, paced)
			}
		})
	}
}

// A client that reads only after the run is served every token: the worker writes
// while the socket has room, the supervisor the rest, in order; the bytes counted sent
// are those the client reads (over HTTP, the messages without the chunks' framing).
func TestTokensInOneHopToASlowClient(t *testing.T) {
	// About 11 MB of notifications: more than a loopback TCP connection holds (its
	// buffers grow to several MB), all of which the server's buffer for the client may
	// hold.
	const n = 100000
	s := startServer(t, "1.3", serverOpts{race: true, model: directModel(n, 0), config: map[string]any{"max-context-len": 2 * n, "client-buffer-bytes": 64 << 20}})
	for _, transport := range []string{"unix", "http"} {
		t.Run(transport, func(t *testing.T) {
			sent := fmt.Sprintf(`rkllm_sent_bytes_total{transport=%q}`, transport)
			partial := s.metric(`rkllm_direct_token_writes_total{outcome="partial"}`)
			before := s.metric(sent)
			var body io.Reader
			if transport == "unix" {
				nc, err := (&net.Dialer{}).DialContext(context.Background(), "unix", s.socket)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = nc.Close() }()
				if _, err := io.WriteString(nc, runLine(1)); err != nil {
					t.Fatal(err)
				}
				_ = nc.SetDeadline(time.Now().Add(waitTimeout))
				body = nc
			} else {
				st := s.openStream(runLine(1))
				defer st.close()
				body = st.br
			}
			s.eventually("the run to end", waitTimeout, func() bool {
				return s.metric(`rkllm_direct_token_writes_total{outcome="partial"}`) == partial+1 && s.metric("rkllm_queue_depth") == 0 && len(s.statsEvents("event=run")) > 0
			})
			counted := &countingReader{r: body}
			r := &streamReader{t: t, br: bufio.NewReaderSize(counted, 1<<20)}
			r.checkResult(r.next(), n)
			s.eventually("every byte read to be counted sent", waitTimeout, func() bool {
				return s.metric(sent)-before == float64(counted.n)
			})
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
