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

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
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
		return a.code == http.StatusTooManyRequests && a.retry == "1" && strings.Contains(a.body, "rate_limit_exceeded") && strings.Contains(a.body, "--max-inflight-bytes") &&
			strings.Contains(a.body, "The server is busy: the server holds")
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

// TestResultBudget (issue 12 follow-up): a run's hidden states and logits, and their
// encoding for the client (several times their size as JSON numbers), are paid from
// the budget of bytes in flight like every other stage. With another client holding
// most of the budget (an HTTP body announced and not sent), a run whose result does
// not fit is answered -32002 (HTTP 429, Retry-After) naming the run, over both
// transports and streamed or not, instead of being built regardless; the same
// arrays as base64 (a third of the size) fit; once the budget is free the run comes
// back whole; the budget is given back to the last byte and the worker never restarts.
func TestResultBudget(t *testing.T) {
	const budget = 4 << 20
	m := simulator.FastModel()
	m.HiddenSize = 256
	s := startServer(t, "1.3", serverOpts{model: &m, config: map[string]any{"max-inflight-bytes": budget}})
	c := s.dial()
	ok[int](t, c.call("rkllm.set_chat_template", map[string]any{"system_prompt": "", "prompt_prefix": "", "prompt_postfix": ""}))
	pid := s.health()["worker_pid"]
	// 200 positions of 256 floats: 200 KiB as float32, up to 3.3 MiB as JSON numbers
	// once encoded and copied for the client.
	ids := make([]int32, 200)
	for i := range ids {
		ids[i] = int32(300 + i%50)
	}
	hidden := func(encoding string, stream bool) map[string]any {
		return map[string]any{"stream": stream, "encoding": encoding, "input": map[string]any{"token_input": map[string]any{"input_ids": ids}},
			"infer_params": map[string]any{"mode": "RKLLM_INFER_GET_LAST_HIDDEN_LAYER"}}
	}
	// The holder: 3 MiB announced, paid for as the body is awaited.
	holder, err := dialNet("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(holder, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", 3<<20); err != nil {
		t.Fatal(err)
	}
	s.eventually("the holder's body to be paid for", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") >= 3<<20 })

	for _, stream := range []bool{false, true} {
		for transport, r := range map[string]response{"http": s.runOverHTTP(hidden("json", stream)), "socket": c.call("rkllm.run", hidden("json", stream))} {
			e := fails(t, r, -32002)
			if e.Data["limit"] != "max-inflight-bytes" || e.Data["retry_after"] != 1.0 || e.Data["request_id"] == nil || !strings.Contains(e.Message, "hidden states or logits") {
				t.Errorf("hidden states over the budget (stream %v, %s): %+v", stream, transport, e)
			}
		}
	}
	if resp, body := s.post(request(1, "rkllm.run", hidden("json", false))); resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("over HTTP: %d %v %.200s", resp.StatusCode, resp.Header, body)
	}
	if res := ok[runResult](t, c.call("rkllm.run", hidden("base64", false))); res.LastHiddenLayer == nil || res.LastHiddenLayer.NumTokens != len(ids) {
		t.Errorf("the same hidden states as base64, within the budget: %+v", res.LastHiddenLayer)
	}

	_ = holder.Close()
	s.eventually("the holder's budget back", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") == 0 })
	for transport, r := range map[string]response{"http": s.http("rkllm.run", hidden("json", false)), "socket": c.call("rkllm.run", hidden("json", true))} {
		res := ok[runResult](t, r)
		if h := res.LastHiddenLayer; h == nil || h.EmbdSize != m.HiddenSize || h.NumTokens != len(ids) || len(decodeFloats(t, h.HiddenStates, false)) != len(ids)*m.HiddenSize {
			t.Errorf("the hidden states with the budget free, over %s: %+v", transport, res.LastHiddenLayer)
		}
	}
	s.eventually("the budget whole again", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") == 0 })
	if h := s.health(); h["worker_pid"] != pid || h["worker_restarts"] != 0.0 {
		t.Errorf("the worker was replaced: %v", h)
	}
}

// TestResultBudgetUntilWritten: an answer larger than --client-buffer-bytes (which the
// socket's buffer takes only alone) stays paid for until it has been written: a client
// that does not read its hidden states holds them against the budget, not outside it,
// while other clients are served; once it reads, the budget is whole again.
func TestResultBudgetUntilWritten(t *testing.T) {
	m := simulator.FastModel()
	m.HiddenSize = 256
	s := startServer(t, "1.2", serverOpts{model: &m, config: map[string]any{"client-buffer-bytes": 1024}})
	ids := make([]int32, 200)
	for i := range ids {
		ids[i] = int32(300 + i%50)
	}
	slow := s.rawDial()
	params := map[string]any{"input": map[string]any{"token_input": map[string]any{"input_ids": ids}}, "infer_params": map[string]any{"mode": "RKLLM_INFER_GET_LAST_HIDDEN_LAYER"}}
	if _, err := io.WriteString(slow.nc, request(1, "rkllm.run", params)+"\n"); err != nil {
		t.Fatal(err)
	}
	s.eventually("the run done and its answer held", waitTimeout, func() bool {
		return len(s.statsEvents("event=run")) == 1 && s.metric("rkllm_inflight_request_bytes") >= 1<<20
	})
	ok[runResult](t, s.dial().call("rkllm.run", prompt("meanwhile")))
	if held := s.metric("rkllm_inflight_request_bytes"); held < 1<<20 {
		t.Errorf("an answer of MiBs not yet read holds %v bytes of the budget", held)
	}
	_ = slow.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	line, err := slow.br.ReadBytes('\n')
	if err != nil || !bytes.Contains(line, []byte(`"hidden_states":[`)) {
		t.Fatalf("the slow client's answer: %.200s %v", line, err)
	}
	s.eventually("the budget whole again", waitTimeout, func() bool { return s.metric("rkllm_inflight_request_bytes") == 0 })
}
