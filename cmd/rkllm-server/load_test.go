package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// outcome is what one load-test client saw.
type outcome struct {
	idx       int
	socket    bool
	busy      bool // -32002 at once
	text      string
	streamed  string // the text its notifications carried
	prefill   int    // perf.prefill_tokens: unique per prompt, it tells the runs apart
	sent, acc time.Time
	err       error
}

// loadPrompt gives client i a prompt whose length (in byte tokens) is unique.
func loadPrompt(i int) string { return strings.Repeat("#", i+1) }

// TestManyClients: 200 clients at once, half on the socket (rkllm.run_async) and half
// over HTTP (rkllm.run, half of them streaming), while the model is held busy. The
// queue takes --max-queue of them and the rest get -32002 at once; once the model is
// free every queued client gets its complete, correct answer, in the order the queue
// took them. The server runs with -race when the tests do.
func TestManyClients(t *testing.T) {
	const sockets, https, maxQueue = 100, 100, 64
	s := startServer(t, "1.3", serverOpts{race: true, config: map[string]any{"max-queue": maxQueue, "max-connections": 400},
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
			if i < sockets {
				go func() { results <- socketClient(s, i, &busy) }()
			} else {
				go func() { results <- httpClient(s, i, i%2 == 0, &busy) }()
			}
		}
	}
	// A first wave fills half the queue; the rest come at once after it was taken, so
	// the queue's order is known for every pair across the waves.
	const firstWave = maxQueue / 2
	launch(0, firstWave)
	s.waitQueueDepth(firstWave)
	launch(firstWave, sockets+https)
	s.eventually("a full queue and every other client refused", waitTimeout, func() bool {
		return s.queueDepth() == maxQueue && busy.Load() == sockets+https-maxQueue
	})
	ok[map[string]any](t, holder.call("rkllm.abort", map[string]any{"request_id": holdID}))
	if res := ok[runResult](t, wait(t, held)); res.FinishReason != "abort" {
		t.Errorf("the held run: %+v", res)
	}

	var served []outcome
	for range sockets + https {
		var o outcome
		select {
		case o = <-results:
		case <-time.After(waitTimeout):
			t.Fatalf("a client got no answer within %s", waitTimeout)
		}
		switch {
		case o.err != nil:
			t.Errorf("client %d: %v", o.idx, o.err)
		case !o.busy:
			served = append(served, o)
		}
	}
	if len(served) != maxQueue {
		t.Fatalf("%d clients served, want %d (the queue's size)", len(served), maxQueue)
	}
	checkFIFO(t, s, served)
	// Each answer is the one the prompt gets alone, and streams carried all of it.
	for _, o := range served {
		want := ok[runResult](t, s.http("rkllm.run", prompt(loadPrompt(o.idx)))).Text
		if o.text != want || (o.streamed != "" && o.streamed != o.text) {
			t.Errorf("client %d: answer %q, streamed %q, want %q", o.idx, o.text, o.streamed, want)
		}
	}
}

// checkFIFO checks the order the runtime ran the served clients in (from the
// simulator's stats, told apart by their prefill) against what the clients saw: a
// socket client whose run the server had accepted before another client sent its own
// must run first.
func checkFIFO(t *testing.T, s *server, served []outcome) {
	t.Helper()
	byPrefill := map[int]outcome{}
	for _, o := range served {
		byPrefill[o.prefill] = o
	}
	var order []outcome
	for _, line := range s.statsEvents("event=run", "outcome=finished") {
		for _, f := range strings.Fields(line) {
			if v, found := strings.CutPrefix(f, "prefill="); found {
				n, _ := strconv.Atoi(v)
				if o, known := byPrefill[n]; known {
					order = append(order, o)
				}
			}
		}
	}
	if len(order) != len(served) {
		t.Fatalf("found %d of the %d served runs in the simulator's stats", len(order), len(served))
	}
	violations, pairs := 0, 0
	for i, o := range order {
		for _, prev := range order[:i] {
			if o.socket && !o.acc.IsZero() && o.acc.Before(prev.sent) {
				t.Logf("never: client %d was accepted before client %d was sent, yet ran later", o.idx, prev.idx)
			}
			if prev.socket && prev.acc.Before(o.sent) {
				pairs++ // ordered as it must be
			}
		}
	}
	for i, later := range order {
		for _, earlier := range order[i+1:] {
			if earlier.socket && !earlier.acc.IsZero() && earlier.acc.Before(later.sent) {
				violations++
				if violations <= 5 {
					t.Errorf("client %d ran before client %d, which the queue had accepted before client %d sent", later.idx, earlier.idx, later.idx)
				}
			}
		}
	}
	if pairs == 0 {
		t.Error("no two clients whose order the test could check; the clients need staggering")
	}
	t.Logf("FIFO: %d ordered pairs checked, %d out of order", pairs, violations)
}

// socketClient sends one rkllm.run_async and follows its notifications to rkllm.done.
func socketClient(s *server, i int, busy *atomic.Int32) outcome {
	o := outcome{idx: i, socket: true}
	nc, err := dialNet("unix", s.socket)
	if err != nil {
		o.err = err
		return o
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(2 * waitTimeout))
	o.sent = time.Now()
	if _, err := fmt.Fprintln(nc, request(i, "rkllm.run_async", prompt(loadPrompt(i)))); err != nil {
		o.err = err
		return o
	}
	br := bufio.NewReader(nc)
	var streamed strings.Builder
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			o.err = fmt.Errorf("read: %w", err)
			return o
		}
		var m struct {
			ID     *int            `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Error  *rpcError       `json:"error"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			o.err = fmt.Errorf("line %q: %w", line, err)
			return o
		}
		switch {
		case m.ID != nil && m.Error != nil && m.Error.Code == -32002:
			o.busy = true
			busy.Add(1)
			return o
		case m.ID != nil && m.Error != nil:
			o.err = fmt.Errorf("error %+v", m.Error)
			return o
		case m.ID != nil:
			o.acc = time.Now()
		case m.Method == "rkllm.result":
			var p struct{ Text string }
			_ = json.Unmarshal(m.Params, &p)
			streamed.WriteString(p.Text)
		case m.Method == "rkllm.done":
			var res runResult
			if err := json.Unmarshal(m.Params, &res); err != nil || res.FinishReason == "" {
				o.err = fmt.Errorf("rkllm.done %s: %v", m.Params, err)
				return o
			}
			o.text, o.streamed, o.prefill = res.Text, streamed.String(), res.Perf.PrefillTokens
			return o
		}
	}
}

// httpClient sends one rkllm.run, streamed or not.
func httpClient(s *server, i int, stream bool, busy *atomic.Int32) outcome {
	o := outcome{idx: i}
	params := prompt(loadPrompt(i))
	params["stream"] = stream
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/rpc", strings.NewReader(request(i, "rkllm.run", params)))
	o.sent = time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		o.err = err
		return o
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		o.err = err
		return o
	}
	lines := strings.Split(strings.TrimSpace(string(body)), "\n")
	var streamed strings.Builder
	for _, l := range lines[:len(lines)-1] {
		var n struct {
			Params struct{ Text string } `json:"params"`
		}
		if err := json.Unmarshal([]byte(l), &n); err != nil {
			o.err = fmt.Errorf("stream line %q: %w", l, err)
			return o
		}
		streamed.WriteString(n.Params.Text)
	}
	var r response
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		o.err = fmt.Errorf("response %q: %w", lines[len(lines)-1], err)
		return o
	}
	if r.Error != nil && r.Error.Code == -32002 && resp.StatusCode == http.StatusTooManyRequests {
		o.busy = true
		busy.Add(1)
		return o
	}
	var res runResult
	if r.Error != nil || json.Unmarshal(r.Result, &res) != nil {
		o.err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
		return o
	}
	o.text, o.prefill = res.Text, res.Perf.PrefillTokens
	if stream {
		o.streamed = streamed.String()
	}
	return o
}

// processState is what TestChurn compares before and after: the server's goroutines
// (its own metric) and open file descriptors.
type processState struct{ goroutines, fds int }

// metricsClient scrapes without keeping connections, so scraping adds nothing that
// stays.
var metricsClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func (s *server) metric(name string) float64 {
	s.t.Helper()
	v, err := s.tryMetric(name)
	if err != nil {
		s.t.Fatal(err)
	}
	return v
}

// tryMetric reads one sample of /metrics; it fails when the server cannot answer (it
// may be refusing connections) or lacks the sample.
func (s *server) tryMetric(name string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.probes+"/metrics", nil)
	resp, err := metricsClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, found := strings.CutPrefix(sc.Text(), name+" "); found {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no metric %s (HTTP %d)", name, resp.StatusCode)
}

func (s *server) state() processState {
	s.t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid))
	if err != nil {
		s.t.Fatal(err)
	}
	return processState{goroutines: int(s.metric("go_goroutines")), fds: len(fds)}
}

// churnModel's replies take seconds unless aborted, so a run that was not aborted
// shows in the stats as finished.
func churnModel() *simulator.Model {
	m := pacedModel()
	m.DecodeTokensPerSecond = 1000
	m.MaxContextLimit = 16384
	m.ReplyMinTokens, m.ReplyMaxTokens = 15000, 15000
	return m
}

// TestChurn: 1,000 connections that leave at random points: before sending, in the
// middle of a message, right after a request (queued or running), in the middle of a
// stream (socket and HTTP), after an asynchronous run was accepted, in the middle of a
// stream with an asynchronous run queued behind it, or after a whole answer.
// Afterwards the server's goroutines and open descriptors are back to what they were,
// nothing is queued or running, and every run the runtime started was aborted in the
// runtime (none ran on for nobody), at least one for each client seen leaving
// mid-stream; no run of a client that left while it was queued reached the runtime.
// Some clients must have left mid-stream and some while queued, or the test proves
// nothing.
func TestChurn(t *testing.T) {
	m := churnModel()
	// A queue as long as the clients are many: with a shorter one most runs are refused
	// and few clients get to leave mid-stream or queued at all.
	s := startServer(t, "1.3", serverOpts{race: true, model: m, config: map[string]any{"max-queue": 16, "max-context-len": m.MaxContextLimit}})
	// Warm up every path once, so lazily started goroutines are in the baseline.
	warm := prompt("warm up")
	warm["stream"] = true
	st := s.openStream(request(1, "rkllm.run", warm))
	st.next(t)
	st.close()
	c := s.dial()
	c.send("rkllm.run", warm)
	c.note()
	_ = c.nc.Close()
	s.eventually("the warm-up runs to be aborted", waitTimeout, func() bool {
		return len(s.statsEvents("event=run", "outcome=aborted")) == 2
	})
	var baseline processState
	s.eventually("a steady baseline", waitTimeout, func() bool {
		a := s.state()
		b := s.state()
		baseline = b
		return a == b
	})

	const conns, workers = 1000, 16
	jobs := make(chan int)
	var left churnCounts
	var failures sync.Map
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				if err := churnOne(s, i, &left); err != nil {
					failures.Store(i, err)
				}
			}
		})
	}
	for i := range conns {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	failures.Range(func(k, v any) bool {
		t.Errorf("connection %v: %v", k, v)
		return true
	})

	var last string
	s.eventually("nothing queued or running, and no connection open", waitTimeout, func() bool {
		_, st := s.status()
		unix, web := s.metric(`rkllm_connections_open{transport="unix"}`), s.metric(`rkllm_connections_open{transport="http"}`)
		last = fmt.Sprintf("queue %v, running %v, connections open: unix %v, http %v", st["queue_depth"], st["running"], unix, web)
		return st["queue_depth"] == 0.0 && st["running"] == false && unix == 0 && web <= 1 // the scrape's own
	}, func() string { return last })
	var now processState
	s.eventually("goroutines and descriptors back to the baseline", waitTimeout, func() bool {
		now = s.state()
		return now == baseline
	}, func() string { return fmt.Sprintf("now %+v, baseline %+v", now, baseline) })
	midStream, queued := int(left.midStream.Load()), int(left.queued.Load())
	if midStream == 0 || queued == 0 {
		t.Errorf("%d clients left mid-stream and %d while queued: the churn must include both", midStream, queued)
	}
	runs := s.statsEvents("event=run")
	aborted := s.statsEvents("event=run", "outcome=aborted")
	if len(runs) != len(aborted) || len(aborted) < midStream+2 {
		t.Errorf("%d runs in the runtime, %d of them aborted; %d clients left mid-stream (and 2 warm-ups): every run must have been aborted", len(runs), len(aborted), midStream)
	}
	for _, r := range runs {
		if prefillOf(r) >= len(queuedPrompt) {
			t.Errorf("a run of a client that left while queued reached the runtime: %s", r)
		}
	}
	if n := len(s.statsEvents("event=abort")); n < len(aborted) {
		t.Errorf("%d aborts reached the runtime for %d aborted runs", n, len(aborted))
	}
	t.Logf("%d connections: %d runs started and aborted in the runtime, %d clients left mid-stream, %d while queued; goroutines %d, descriptors %d (baseline %+v)",
		conns, len(runs)-2, midStream, queued, now.goroutines, now.fds, baseline)
	// And the server still serves.
	if res := ok[runResult](t, s.http("rkllm.run", map[string]any{"input": map[string]any{"prompt_input": "done"}, "infer_params": map[string]any{"max_new_tokens": 3}})); res.TokenCount != 3 {
		t.Errorf("a run after the churn: %+v", res)
	}
}

// churnCounts counts the TestChurn clients that are known to have left mid-stream
// (they read a token of their run) or while queued (their run was accepted behind
// their own running stream).
type churnCounts struct{ midStream, queued atomic.Int32 }

// queuedPrompt is the prompt of the runs TestChurn's clients leave in the queue: its
// byte tokens make the prefill of such a run, if it ever reached the runtime, longer
// than any other run's.
var queuedPrompt = strings.Repeat("#", 1000)

// prefillOf reads the prefill field of a simulator stats line (-1 without one).
func prefillOf(line string) int {
	for _, f := range strings.Fields(line) {
		if v, found := strings.CutPrefix(f, "prefill="); found {
			n, err := strconv.Atoi(v)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// churnOne is one connection of TestChurn, leaving at the point i chooses.
func churnOne(s *server, i int, left *churnCounts) error {
	long := prompt(fmt.Sprintf("churn %d", i))
	long["stream"] = true
	line := request(i, "rkllm.run", long) + "\n"
	switch i % 8 {
	case 6, 7:
		return churnHTTP(s, i, line, left)
	}
	nc, err := dialNet("unix", s.socket)
	if err != nil {
		return err
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(waitTimeout))
	br := bufio.NewReader(nc)
	switch i % 8 {
	case 0: // connect and leave
		return nil
	case 1: // half a message
		_, err = io.WriteString(nc, line[:len(line)/2])
		return err
	case 2: // a request, then leave at once (it may be queued or running)
		_, err = io.WriteString(nc, line)
		return err
	case 3: // leave in the middle of the stream (or on a full queue's refusal)
		if _, err := io.WriteString(nc, line); err != nil {
			return err
		}
		first, err := br.ReadString('\n')
		if err == nil && strings.Contains(first, `"rkllm.result"`) {
			left.midStream.Add(1)
		}
		return err
	case 4:
		if i%16 == 12 {
			return churnQueuedBehind(nc, br, i, line, left)
		}
		// An asynchronous run, leave once it is accepted (queued or running).
		if _, err := io.WriteString(nc, strings.Replace(line, `"rkllm.run"`, `"rkllm.run_async"`, 1)); err != nil {
			return err
		}
		_, err = br.ReadString('\n')
		return err
	default: // a whole answer, then leave
		if _, err := io.WriteString(nc, request(i, "rkllm.get_constants", nil)+"\n"); err != nil {
			return err
		}
		answer, err := br.ReadString('\n')
		if err == nil && !strings.Contains(answer, `"result"`) {
			err = fmt.Errorf("answer %q", answer)
		}
		return err
	}
}

// churnQueuedBehind starts a stream, and once its first token shows it running, queues
// an asynchronous run behind it on the same connection. Once the server has accepted
// that run (it cannot start before the stream ends) the client leaves: mid-stream and
// while queued.
func churnQueuedBehind(nc net.Conn, br *bufio.Reader, i int, line string, left *churnCounts) error {
	if _, err := io.WriteString(nc, line); err != nil {
		return err
	}
	first, err := br.ReadString('\n')
	if err != nil || !strings.Contains(first, `"rkllm.result"`) {
		return err // refused: the queue was full
	}
	left.midStream.Add(1)
	id := fmt.Sprintf("queued-%d", i)
	if _, err := io.WriteString(nc, request(id, "rkllm.run_async", prompt(queuedPrompt))+"\n"); err != nil {
		return err
	}
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		var r response
		if json.Unmarshal([]byte(l), &r) != nil {
			return fmt.Errorf("line %q", l)
		}
		if r.ID != id {
			continue // the stream's tokens
		}
		if r.Error == nil {
			left.queued.Add(1)
		} else if r.Error.Code != -32002 {
			return fmt.Errorf("run_async behind a stream: %+v", r.Error)
		}
		return nil
	}
}

func churnHTTP(s *server, i int, line string, left *churnCounts) error {
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		return err
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(waitTimeout))
	head := "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(line)) + "\r\n\r\n"
	if i%8 == 6 { // half a body, then leave
		_, err = io.WriteString(nc, head+line[:len(line)/2])
		return err
	}
	if _, err := io.WriteString(nc, head+line); err != nil { // leave in the middle of the stream
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusOK {
		first, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil {
			return err
		}
		if strings.Contains(first, `"rkllm.result"`) {
			left.midStream.Add(1)
		}
	}
	return nil
}

// TestSIGTERMWithManyClients: SIGTERM while 50 clients are connected (socket and
// HTTP; idle, queued, or receiving the running stream). The stream completes, queued
// requests get -32009, idle connections are closed, no client reads a truncated JSON
// message, the server exits 0, and neither its socket file nor its worker is left.
func TestSIGTERMWithManyClients(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{race: true, model: pacedModel(), config: map[string]any{"max-queue": 32}})
	_, st := s.status()
	workerPID := int(st["worker_pid"].(float64))

	type peer struct {
		name   string
		nc     net.Conn
		queued bool
		out    chan []byte // everything the client read until EOF
	}
	var peers []*peer
	readAll := func(p *peer) {
		p.out = make(chan []byte, 1)
		go func() {
			_ = p.nc.SetReadDeadline(time.Now().Add(2 * waitTimeout))
			b, _ := io.ReadAll(p.nc)
			p.out <- b
		}()
	}
	// The stream.
	streamer := &peer{name: "streaming socket client", nc: s.rawDial().nc}
	long := prompt("Tell me a long story.")
	long["stream"] = true
	if _, err := fmt.Fprintln(streamer.nc, request("long", "rkllm.run", long)); err != nil {
		t.Fatal(err)
	}
	peers = append(peers, streamer)
	s.eventually("the stream to run", waitTimeout, func() bool { _, st := s.status(); return st["running"] == true })
	queued := 0
	for i := range 24 {
		p := &peer{name: fmt.Sprintf("socket client %d", i), nc: s.rawDial().nc, queued: i%2 == 0}
		if p.queued {
			if _, err := fmt.Fprintln(p.nc, request(i, "rkllm.run", prompt("queued"))); err != nil {
				t.Fatal(err)
			}
			queued++
		}
		peers = append(peers, p)
	}
	for i := range 25 {
		var d net.Dialer
		nc, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(s.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		p := &peer{name: fmt.Sprintf("HTTP client %d", i), nc: nc, queued: i%2 == 0}
		body := "{}"
		path := "GET /livez"
		if p.queued {
			body, path = request(i, "rkllm.run", prompt("queued")), "POST /rpc"
			queued++
		}
		if _, err := fmt.Fprintf(nc, "%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", path, len(body), body); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, p)
	}
	s.waitQueueDepth(queued)
	for _, p := range peers {
		readAll(p)
	}
	s.signal(syscall.SIGTERM)
	if err := s.waitExit(); err != nil {
		t.Errorf("exit: %v, want 0", err)
	}
	for _, p := range peers {
		var out []byte
		select {
		case out = <-p.out:
		case <-time.After(waitTimeout):
			t.Fatalf("%s: the connection was not closed", p.name)
		}
		if strings.HasPrefix(p.name, "HTTP") {
			checkHTTPAnswers(t, p.name, out, p.queued)
			continue
		}
		msgs := checkLines(t, p.name, out)
		switch {
		case p == streamer:
			var text strings.Builder
			for _, m := range msgs[:max(len(msgs)-1, 0)] {
				text.WriteString(m["params"].(map[string]any)["text"].(string))
			}
			last := msgs[len(msgs)-1]
			res, _ := last["result"].(map[string]any)
			if last["id"] != "long" || res == nil || res["finish_reason"] != "stop" || res["text"] != text.String() {
				t.Errorf("the stream ended with %v (streamed %q)", last, text.String())
			}
		case p.queued:
			if len(msgs) != 1 || msgs[0]["error"].(map[string]any)["code"] != -32009.0 {
				t.Errorf("%s (queued): %v, want one -32009", p.name, msgs)
			}
		case len(msgs) != 0:
			t.Errorf("%s (idle): %v, want nothing", p.name, msgs)
		}
	}
	if _, err := os.Stat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left behind: %v", err)
	}
	s.eventually("the worker process to be gone", waitTimeout, func() bool {
		return errors.Is(syscall.Kill(workerPID, 0), syscall.ESRCH)
	})
}

// checkLines splits what a socket client read into messages, failing on a line that is
// not a whole JSON object (a truncated message).
func checkLines(t *testing.T, who string, out []byte) []map[string]any {
	t.Helper()
	if len(out) > 0 && out[len(out)-1] != '\n' {
		t.Errorf("%s: the last message is cut: %q", who, out[max(len(out)-80, 0):])
	}
	var msgs []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("%s: a truncated or broken message %q: %v", who, line, err)
			continue
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// checkHTTPAnswers reads the HTTP responses a raw client got: whole, and -32009 for a
// queued request.
func checkHTTPAnswers(t *testing.T, who string, out []byte, queued bool) {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(string(out)))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Errorf("%s: %v in %q", who, err, out)
		return
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s: a truncated body %q: %v", who, body, err)
		return
	}
	if !queued {
		return // the /livez answer before the shutdown; the connection was closed then
	}
	var r response
	if err := json.Unmarshal(body, &r); err != nil || r.Error == nil || r.Error.Code != -32009 || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("%s (queued): %d %s, want 503 and -32009", who, resp.StatusCode, body)
	}
}
