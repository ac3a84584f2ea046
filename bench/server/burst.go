package main

// The burst, the memory of long conversations and the probes with every client slot
// taken, each on a server of its own started with the default flags (issues 12 and
// 14): what an operator gets without tuning anything.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// startDefaults starts a server with the default flags (only the model, its context
// length, the runtime and the addresses are configured) on an unpaced model; the
// simulator writes a line for each run into stats.
func startDefaults(o options, dir, stats string) (*serverproc.Server, error) {
	m := simulator.FastModel()
	return serverproc.Start(serverproc.Options{Server: o.server, SimDir: o.simDir, ABI: o.abi, Dir: dir, Model: m,
		Config: map[string]any{"max-context-len": m.MaxContextLimit}, Env: []string{"RKLLM_SIM_STATS_FILE=" + stats}})
}

// client is what one client of the burst saw.
type client struct {
	socket    bool
	sent      time.Time
	accepted  time.Time // the socket's run_async answer
	firstTok  time.Time
	prefill   int // the run's prefill_tokens: unique to the client (its prompt's length)
	busy, bad bool
}

// burst sends n runs at once, half as rkllm.run_async on their own socket
// connections and half as streamed rkllm.run over HTTP, and reports how many were
// served, the time each waited for its first token, whether the queue kept the order
// it accepted them in, and the supervisor's peak resident memory.
func burst(o options, dir string, n int, report io.Writer) error {
	stats := filepath.Join(dir, "stats.log")
	s, err := startDefaults(o, dir, stats)
	if err != nil {
		return err
	}
	defer s.Stop()
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}}
	clients := make([]client, n)
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range n {
		clients[i].socket = i%2 == 0
		wg.Go(func() {
			<-ready
			c := &clients[i]
			if c.socket {
				burstSocket(s, i, c)
			} else {
				burstHTTP(s, httpc, i, c)
			}
		})
	}
	began := time.Now()
	close(ready)
	wg.Wait()
	took := time.Since(began)
	peak, err := s.PeakRSS()
	if err != nil {
		return err
	}
	var waits []time.Duration
	served, busy, bad := 0, 0, 0
	for _, c := range clients {
		switch {
		case c.busy:
			busy++
		case c.bad || c.firstTok.IsZero():
			bad++
		default:
			served++
			waits = append(waits, c.firstTok.Sub(c.sent))
		}
	}
	pairs, outOfOrder, err := runOrder(clients, stats)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(report, "| %s clients at once, default flags (half socket `run_async`, half HTTP streams; 8-token runs) | %d served, %d refused, %d failed in %s; queue wait (sent to first token) p50 %s, p99 %s; %d of %d ordered pairs out of order; supervisor peak RSS %.1f MiB | all served, in order |\n",
		thousands(n), served, busy, bad, took.Round(time.Millisecond), pct(waits, 50), pct(waits, 99), outOfOrder, pairs, serverproc.MiB(peak))
	return nil
}

// burstRun is the run each client of the burst sends: its prompt's length is unique,
// and so is the run's prefill.
func burstRun(method string, i int, stream bool) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":{"stream":%v,"input":{"prompt_input":"%s"},"infer_params":{"max_new_tokens":8}}}`,
		i, method, stream, strings.Repeat("#", i+1))
}

// prefillOf reads the prefill_tokens of a final answer.
func prefillOf(line []byte) int {
	_, rest, found := bytes.Cut(line, []byte(`"prefill_tokens":`))
	if !found {
		return -1
	}
	end := bytes.IndexAny(rest, ",}")
	if end < 0 {
		return -1
	}
	n, err := strconv.Atoi(string(rest[:end]))
	if err != nil {
		return -1
	}
	return n
}

func burstSocket(s *serverproc.Server, i int, c *client) {
	nc, err := serverproc.Dial("unix", s.Socket)
	if err != nil {
		c.bad = true
		return
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Minute))
	c.sent = time.Now()
	if _, err := fmt.Fprintln(nc, burstRun("rkllm.run_async", i, true)); err != nil {
		c.bad = true
		return
	}
	br := bufio.NewReader(nc)
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err != nil:
			c.bad = true
			return
		case bytes.Contains(line, []byte(`"code":-32002`)):
			c.busy = true
			return
		case bytes.Contains(line, []byte(`"error"`)):
			c.bad = true
			return
		case bytes.Contains(line, []byte(`"rkllm.result"`)) && c.firstTok.IsZero():
			c.firstTok = time.Now()
		case bytes.Contains(line, []byte(`"rkllm.done"`)):
			c.prefill = prefillOf(line)
			return
		case bytes.Contains(line, []byte(`"result"`)):
			c.accepted = time.Now()
		}
	}
}

func burstHTTP(s *serverproc.Server, httpc *http.Client, i int, c *client) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Base+"/rpc", strings.NewReader(burstRun("rkllm.run", i, true)))
	c.sent = time.Now()
	resp, err := httpc.Do(req)
	if err != nil {
		c.bad = true
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode == http.StatusTooManyRequests {
		c.busy = true
		return
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			c.bad = c.firstTok.IsZero()
			return
		}
		if bytes.Contains(line, []byte(`"rkllm.result"`)) && c.firstTok.IsZero() {
			c.firstTok = time.Now()
		}
		if bytes.Contains(line, []byte(`"error"`)) {
			c.bad = true
		}
		if bytes.Contains(line, []byte(`"result"`)) {
			c.prefill = prefillOf(line)
		}
	}
}

// runPositions maps each run's prefill to its place in the simulator's stats. The first
// run also prefills the system prompt, so its prefill may equal another run's: such
// runs cannot be told apart and are left out.
func runPositions(stats string) map[int]int {
	position := map[int]int{}
	twice := map[int]bool{}
	runs := 0
	for _, line := range strings.Split(stats, "\n") {
		if !strings.Contains(line, "event=run") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, found := strings.CutPrefix(f, "prefill="); found {
				if n, err := strconv.Atoi(v); err == nil {
					if _, dup := position[n]; dup {
						twice[n] = true
					}
					position[n] = runs
				}
			}
		}
		runs++
	}
	for n := range twice {
		delete(position, n)
	}
	return position
}

// runOrder checks the order the runtime ran the clients in (the simulator's stats,
// one line a run, told apart by prefill: the prompts' lengths differ) against the order the queue promised: a socket
// client the server had accepted before another client sent its run runs first. It
// returns the pairs so promised and how many ran the other way round.
func runOrder(clients []client, stats string) (pairs, outOfOrder int, err error) {
	raw, err := os.ReadFile(stats)
	if err != nil {
		return 0, 0, err
	}
	position := runPositions(string(raw))
	for _, a := range clients {
		pa, ranA := position[a.prefill]
		if !a.socket || a.accepted.IsZero() || !ranA {
			continue
		}
		for _, b := range clients {
			pb, ranB := position[b.prefill]
			if !ranB || !a.accepted.Before(b.sent) {
				continue
			}
			pairs++
			if pb < pa {
				outOfOrder++
			}
		}
	}
	return pairs, outOfOrder, nil
}

// longChats sends 8 chats at once, each a 15 MiB body of one-character messages, and
// reports what they got and the supervisor's peak resident memory.
func longChats(o options, dir string, report io.Writer) error {
	s, err := startDefaults(o, dir, os.DevNull)
	if err != nil {
		return err
	}
	defer s.Stop()
	var b bytes.Buffer
	b.WriteString(`{"model":"model","max_tokens":8,"messages":[`)
	for i := 0; b.Len() < 15<<20-64; i++ {
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
	messages := bytes.Count(b.Bytes(), []byte(`"content"`))
	body := b.Bytes()
	before, _, err := s.RSS()
	if err != nil {
		return err
	}
	codes := make([]int, 8)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Base+"/v1/chat/completions", bytes.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				codes[i] = -1
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			codes[i] = resp.StatusCode
		})
	}
	wg.Wait()
	peak, err := s.PeakRSS()
	if err != nil {
		return err
	}
	counts := map[int]int{}
	for _, c := range codes {
		counts[c]++
	}
	var parts []string
	for _, c := range sortedKeys(counts) {
		parts = append(parts, fmt.Sprintf("%d x %d", counts[c], c))
	}
	_, _ = fmt.Fprintf(report, "| 8 chats at once over `/v1/`, each %.1f MiB of %s one-character messages, default flags | answered %s (400: longer than the model's context, so each was decoded and rendered; 429: over `--max-inflight-bytes`); supervisor RSS %.1f MiB before, peak %.1f MiB | peak < 300 MiB |\n",
		serverproc.MiB(int64(len(body))), thousands(messages), strings.Join(parts, ", "), serverproc.MiB(before), serverproc.MiB(peak))
	return nil
}

func sortedKeys(m map[int]int) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// probesWithSlotsTaken takes every client connection slot of a server with the
// default flags (a tenth HTTP keep-alive, the rest socket, each answered once), then
// times the probes on the probe listener.
func probesWithSlotsTaken(o options, dir string, report io.Writer) error {
	s, err := startDefaults(o, dir, os.DevNull)
	if err != nil {
		return err
	}
	defer s.Stop()
	const slots = 2048 // --max-connections' default
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	addr := strings.TrimPrefix(s.Base, "http://")
	for i := range slots {
		network, target := "unix", s.Socket
		if i%10 == 0 {
			network, target = "tcp", addr
		}
		nc, err := serverproc.Dial(network, target)
		if err != nil {
			return err
		}
		conns = append(conns, nc)
		_ = nc.SetDeadline(time.Now().Add(time.Minute))
		if network == "tcp" {
			_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 55\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rkllm.get_constants\"}")
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil {
				return fmt.Errorf("keep-alive connection %d: %w", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			continue
		}
		_, _ = fmt.Fprintln(nc, `{"jsonrpc":"2.0","id":1,"method":"rkllm.get_constants"}`)
		if _, err := bufio.NewReader(nc).ReadString('\n'); err != nil {
			return fmt.Errorf("socket connection %d: %w", i, err)
		}
	}
	refused := "accepted"
	if nc, err := serverproc.Dial("unix", s.Socket); err == nil {
		line, _ := bufio.NewReader(nc).ReadString('\n')
		if strings.Contains(line, "max_connections") {
			refused = "refused"
		}
		_ = nc.Close()
	}
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	var took []time.Duration
	failed := 0
	for range 50 {
		for _, path := range []string{"/livez", "/readyz", "/healthz", "/metrics"} {
			start := time.Now()
			resp, err := probe.Get(s.Probes + path) //nolint:noctx // the client's timeout bounds it
			if err != nil {
				failed++
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed++
			}
			took = append(took, time.Since(start))
		}
	}
	_, _ = fmt.Fprintf(report, "| probes (`/livez`, `/readyz`, `/healthz`, `/metrics` on `--probe-listen`) with all %s client slots taken (the next client %s) | %d answered, %d failed; p50 %s, p99 %s, max %s | every probe answered < 100 ms |\n",
		thousands(slots), refused, len(took)-failed, failed, pct(took, 50), pct(took, 99), pct(took, 100))
	return nil
}

// defaultsDir names a folder for one of these servers.
func defaultsDir(dir, name string) string { return filepath.Join(dir, name) }
