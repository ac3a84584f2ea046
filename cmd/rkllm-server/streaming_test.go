package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// streamed is what a client rebuilds from the notifications of one run.
type streamed struct {
	text     strings.Builder
	tokenIDs []int32
	states   map[string]int
}

func (st *streamed) add(t *testing.T, n map[string]any, requestID string) {
	t.Helper()
	p := n["params"].(map[string]any)
	if n["method"] != "rkllm.result" || (requestID != "" && p["request_id"] != requestID) {
		t.Fatalf("notification %v", n)
	}
	text := p["text"].(string)
	if !utf8.ValidString(text) {
		t.Fatalf("notification text %q is not valid UTF-8", text)
	}
	st.text.WriteString(text)
	if id := int32(p["token_id"].(float64)); id >= 0 {
		st.tokenIDs = append(st.tokenIDs, id)
	}
	if st.states == nil {
		st.states = map[string]int{}
	}
	st.states[p["state"].(string)]++
}

func (st *streamed) check(t *testing.T, final runResult) {
	t.Helper()
	if st.text.String() != final.Text || !slices.Equal(st.tokenIDs, final.TokenIDs) {
		t.Errorf("streamed %q %v\n   final %q %v", st.text.String(), st.tokenIDs, final.Text, final.TokenIDs)
	}
}

// longPrompts give replies long enough to hold characters sent one byte per delivery.
var longPrompts = []string{"Write a long story about rivers.", "Explain the NPU.", "List twenty fruits.", "Describe Paris in detail."}

// TestStreaming checks that a streamed run sends one notification per token, in order,
// that together make the final response's text, which comes last; multi-byte characters
// split over deliveries (RKLLM_RUN_WAITING) arrive whole.
func TestStreaming(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{})
		waiting := 0
		for _, sse := range []bool{false, true} {
			for _, p := range longPrompts {
				params := prompt(p)
				params["stream"] = true
				header := []string{}
				if sse {
					header = []string{"Accept", "text/event-stream"}
				}
				resp, body := s.post(request("s1", "rkllm.run", params), header...)
				want := "application/x-ndjson"
				if sse {
					want = "text/event-stream"
				}
				if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != want {
					t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
				}
				var msgs []string
				sc := bufio.NewScanner(strings.NewReader(body))
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				for sc.Scan() {
					line := sc.Text()
					if sse {
						if line == "" {
							continue
						}
						if !strings.HasPrefix(line, "data: ") {
							t.Fatalf("SSE line %q", line)
						}
						line = strings.TrimPrefix(line, "data: ")
					}
					msgs = append(msgs, line)
				}
				var st streamed
				for _, m := range msgs[:len(msgs)-1] {
					var n map[string]any
					if err := json.Unmarshal([]byte(m), &n); err != nil {
						t.Fatal(err)
					}
					st.add(t, n, "")
				}
				var final response
				if err := json.Unmarshal([]byte(msgs[len(msgs)-1]), &final); err != nil || final.ID != "s1" {
					t.Fatalf("last message %s is not the response: %v", msgs[len(msgs)-1], err)
				}
				res := ok[runResult](t, final)
				st.check(t, res)
				if st.states["RKLLM_RUN_NORMAL"] == 0 {
					t.Errorf("states %v", st.states)
				}
				waiting += st.states["RKLLM_RUN_WAITING"]
			}
		}
		// Over the socket, the same run streams the same tokens.
		c := s.dial()
		params := prompt(longPrompts[0])
		params["stream"] = true
		ch := c.send("rkllm.run", params)
		final := ok[runResult](t, wait(t, ch))
		var st streamed
		for range len(c.notes) {
			st.add(t, c.note(), final.RequestID)
		}
		st.check(t, final)
		if waiting == 0 {
			t.Error("no reply had a character split over deliveries (RKLLM_RUN_WAITING); the test prompts need changing")
		}
	})
}

// TestBatchRequests: a JSON-RPC batch is answered with an array in order; its
// notifications get nothing.
func TestBatchRequests(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	body := "[" + strings.Join([]string{
		request(1, "rkllm.get_constants", nil),
		request(nil, "rkllm.is_running", nil),
		request(2, "rkllm.run", prompt("Hello")),
		request(3, "rkllm.is_running", nil),
		request(4, "rkllm.nope", nil),
		`{"jsonrpc":"1.0","id":5,"method":"x"}`,
		request(6, "rkllm.run", map[string]any{"input": map[string]any{"prompt_input": "x"}, "stream": true}),
	}, ",") + "]"
	resp, out := s.post(body)
	var rs []response
	if err := json.Unmarshal([]byte(out), &rs); err != nil || resp.StatusCode != 200 {
		t.Fatalf("batch answer %d %s: %v", resp.StatusCode, out, err)
	}
	var ids []string
	for _, r := range rs {
		ids = append(ids, fmt.Sprint(r.ID))
	}
	if want := []string{"1", "2", "3", "4", "5", "6"}; !slices.Equal(ids, want) {
		t.Fatalf("ids %v, want %v", ids, want)
	}
	ok[map[string]any](t, rs[0])
	if run := ok[runResult](t, rs[1]); run.Text == "" {
		t.Errorf("run in a batch: %+v", run)
	}
	if n := ok[int](t, rs[2]); n != 0 {
		t.Errorf("is_running after the run = %d", n)
	}
	fails(t, rs[3], -32601)
	fails(t, rs[4], -32600)
	if e := fails(t, rs[5], -32602); e.Data["field"] != "stream" {
		t.Errorf("stream in an HTTP batch: %+v", e)
	}
	// A batch of notifications only: 204.
	resp, _ = s.post("[" + request(nil, "rkllm.is_running", nil) + "]")
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("notifications only: %d", resp.StatusCode)
	}
}

// TestSeveralInFlightOnOneConnection: requests sent back to back on one socket are
// queued in order and each answered by its id, with the notifications of the streamed
// ones tagged by request_id.
func TestSeveralInFlightOnOneConnection(t *testing.T) {
	s := startServer(t, "1.2", serverOpts{})
	c := s.dial()
	var chans []chan response
	for i, p := range longPrompts {
		params := prompt(p)
		params["stream"] = i%2 == 0
		chans = append(chans, c.send("rkllm.run", params))
	}
	isRunning := c.send("rkllm.get_constants", nil)
	ok[map[string]any](t, wait(t, isRunning))
	var results []runResult
	for _, ch := range chans {
		results = append(results, ok[runResult](t, wait(t, ch)))
	}
	// Runs ran in the order sent: the simulator's stats list them in the order it ran
	// them, told apart by their prefill (the prompts' lengths differ).
	index := map[string]int{}
	for i, r := range results {
		index["prefill="+strconv.Itoa(r.Perf.PrefillTokens)] = i
	}
	var ran []int
	for _, line := range s.statsEvents("event=run") {
		for _, f := range strings.Fields(line) {
			if i, found := index[f]; found {
				ran = append(ran, i)
			}
		}
	}
	if len(ran) != len(results) || !sort.IntsAreSorted(ran) {
		t.Errorf("runs ran in the order %v, want the order sent", ran)
	}
	byID := map[string]*streamed{}
	for range len(c.notes) {
		n := c.note()
		id := n["params"].(map[string]any)["request_id"].(string)
		if byID[id] == nil {
			byID[id] = &streamed{}
		}
		byID[id].add(t, n, id)
	}
	for i, r := range results {
		st := byID[r.RequestID]
		if i%2 == 1 {
			if st != nil {
				t.Errorf("run %d was not streamed but sent notifications", i)
			}
			continue
		}
		if st == nil {
			t.Fatalf("streamed run %d sent no notifications", i)
		}
		st.check(t, r)
	}
	// Same prompts one at a time give the same replies (no state leaked between runs).
	for i, p := range longPrompts {
		if again := ok[runResult](t, s.http("rkllm.run", prompt(p))); again.Text != results[i].Text {
			t.Errorf("prompt %d: %q then %q", i, results[i].Text, again.Text)
		}
	}
}
