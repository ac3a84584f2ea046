package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// longChat is a /v1/chat/completions body of n one-character messages (the shape that
// once cost the supervisor 190 MiB for 15 MiB).
func longChat(n int) []byte { return chatOf(`{"model":"model","max_tokens":4,"messages":[`, n) }

// chatOf is a chat body of n one-character messages after head (the members before
// them and the opening of the messages array).
func chatOf(head string, n int) []byte {
	var b bytes.Buffer
	b.WriteString(head)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		fmt.Fprintf(&b, `{"role":%q,"content":"x"}`, role)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// postV1 posts body to /v1/chat/completions and returns the status, Retry-After and
// the body of the answer.
func (s *server) postV1(body []byte) (int, string, string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, "", err.Error()
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
}

// TestInflightBudget (issue 12.7): one budget of bytes in flight covers every
// transport and stage. While the model is held, long chats over /v1/ are queued as long
// as what they hold fits; the others are answered 429 with Retry-After at once, and so
// are a JSON-RPC request over HTTP (429, -32002) and one on the socket (-32002, its id
// named although its line was not kept). Once the model is free the queued chats are
// served (by the runtime, which finds them longer than the model's context) and the
// budget is whole again.
func TestInflightBudget(t *testing.T) {
	const budget = 8 << 20
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-inflight-bytes": budget, "max-queue": nil},
		env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_ONCE_FILE=" + filepath.Join(t.TempDir(), "hang-once")}})
	release := holdModel(t, s)

	// Chats of 0.6 MiB, sent one after the other: each is queued while what the queued
	// ones hold and what it needs to be decoded fit, then one is refused at once.
	body := longChat(20000)
	waiting, answers := queueUntilRefused(t, s, func() httpAnswer {
		code, retry, b := s.postV1(body)
		return httpAnswer{code, retry, b}
	}, func(a httpAnswer) bool {
		return a.code == http.StatusTooManyRequests && a.retry == "1" && strings.Contains(a.body, "rate_limit_exceeded") && strings.Contains(a.body, "--max-inflight-bytes")
	})
	if used := s.metric("rkllm_inflight_request_bytes"); used <= 0 || used > budget {
		t.Errorf("bytes in flight with %d chats queued: %v, want within the budget of %d", waiting, used, budget)
	}

	// The other transports are refused by the same budget while it is spent.
	big := request(9, "rkllm.run", prompt(strings.Repeat("z", budget)))
	resp, out := s.post(big)
	var r response
	_ = json.Unmarshal([]byte(out), &r)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" || r.Error == nil || r.Error.Code != -32002 || r.Error.Data["limit"] != "max-inflight-bytes" {
		t.Errorf("a large /rpc request: %d %v %.300s", resp.StatusCode, resp.Header, out)
	}
	c := s.rawDial()
	e := fails(t, c.call1(big), -32002)
	if e.Data["limit"] != "max-inflight-bytes" {
		t.Errorf("a large socket message: %+v", e)
	}

	release()
	for range waiting {
		select {
		case a := <-answers:
			if !reachedModel(a.code, a.body) {
				t.Errorf("a queued chat: %d %.300s", a.code, a.body)
			}
		case <-time.After(2 * waitTimeout):
			t.Fatal("a queued chat got no answer")
		}
	}
	s.eventually("the budget whole again", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") == 0 })
	// Alone, a request larger than the budget is still served.
	if code, _, b := s.postV1(longChat(60000)); !reachedModel(code, b) {
		t.Errorf("a chat over the budget, alone: %d %.300s", code, b)
	}
}

// holdModel keeps the model busy with a JSON-RPC run that hangs (the server must run
// with RKLLM_SIM_HANG_AFTER) until release aborts it.
func holdModel(t *testing.T, s *server) (release func()) {
	t.Helper()
	holder := s.dial()
	hold := prompt("hold the model")
	hold["stream"] = true
	held := holder.send("rkllm.run", hold)
	holdID := holder.note()["params"].(map[string]any)["request_id"]
	return func() {
		t.Helper()
		ok[map[string]any](t, holder.call("rkllm.abort", map[string]any{"request_id": holdID}))
		wait(t, held)
	}
}

// httpAnswer is an HTTP answer: its status, Retry-After and body.
type httpAnswer struct {
	code        int
	retry, body string
}

// queueUntilRefused sends requests with send while the model is held, each once the one
// before it is queued, until one is answered at once, which refused must accept. It
// returns how many wait in the queue, and the channel their answers come on.
func queueUntilRefused(t *testing.T, s *server, send func() httpAnswer, refused func(httpAnswer) bool) (int, chan httpAnswer) {
	t.Helper()
	answers := make(chan httpAnswer, 50)
	waiting := 0
	for done := false; !done; {
		if waiting == 40 {
			t.Fatalf("%d requests queued and none refused", waiting)
		}
		go func() { answers <- send() }()
		for queued := false; !queued && !done; {
			select {
			case a := <-answers:
				if !refused(a) {
					t.Fatalf("a request while the model is held: %d (Retry-After %q) %.300s", a.code, a.retry, a.body)
				}
				done = true
			case <-time.After(pollEvery):
				queued = s.queueDepth() == waiting+1
			}
		}
		if !done {
			waiting++
		}
	}
	if waiting == 0 {
		t.Fatal("the first request was refused: the budget holds none")
	}
	return waiting, answers
}

// reachedModel reports whether a chat was served by the model: a completion, or the
// runtime's refusal of a prompt longer than the model's context (these chats are).
func reachedModel(code int, body string) bool {
	return code == http.StatusOK && strings.Contains(body, `"chat.completion"`) ||
		code == http.StatusBadRequest && strings.Contains(body, "context_length_exceeded")
}

// TestBurstWithDefaults (issue 14.1): with the default flags the queue has no count,
// so 100 clients arriving at once while the model is busy are all served, in the
// order the queue took them.
func TestBurstWithDefaults(t *testing.T) {
	const sockets, https = 50, 50
	s := startServer(t, "1.3", serverOpts{race: true, config: map[string]any{"max-queue": nil},
		env: []string{"RKLLM_SIM_HANG_AFTER=1", "RKLLM_SIM_FAULT_ONCE_FILE=" + filepath.Join(t.TempDir(), "hang-once")}})
	holder := s.dial()
	hold := prompt("hold the model")
	hold["stream"] = true
	held := holder.send("rkllm.run", hold)
	holdID := holder.note()["params"].(map[string]any)["request_id"]

	results := make(chan outcome, sockets+https)
	var busy atomic.Int32
	launch := func(from, to int) {
		for i := from; i < to; i++ {
			if i%2 == 0 {
				go func() { results <- socketClient(s, i, &busy) }()
			} else {
				go func() { results <- httpClient(s, i, i%4 == 1, &busy) }()
			}
		}
	}
	const firstWave = 20
	launch(0, firstWave)
	s.waitQueueDepth(firstWave)
	launch(firstWave, sockets+https)
	s.eventually("every client queued", 2*waitTimeout, func() bool { return s.queueDepth() == sockets+https || busy.Load() > 0 })
	if n := busy.Load(); n > 0 {
		t.Fatalf("%d clients refused with the default flags", n)
	}
	ok[map[string]any](t, holder.call("rkllm.abort", map[string]any{"request_id": holdID}))
	wait(t, held)
	var served []outcome
	for range sockets + https {
		select {
		case o := <-results:
			if o.err != nil || o.busy {
				t.Fatalf("client %d: %v (busy %v)", o.idx, o.err, o.busy)
			}
			served = append(served, o)
		case <-time.After(2 * waitTimeout):
			t.Fatal("a client got no answer")
		}
	}
	checkFIFO(t, s, served)
}
