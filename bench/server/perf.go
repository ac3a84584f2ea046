package main

// The figures of issue 14: what each token costs both processes, time to first token
// over /v1/ against the socket, and memory idle and after a 10 MB request.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// cost is the usage of both processes from a point on.
type cost struct {
	b                 *bench
	supPID, workerPID int
	sup, worker       serverproc.Usage
	err               error
}

func startCost(b *bench) *cost {
	c := &cost{b: b, supPID: b.PID()}
	if c.workerPID, c.err = b.WorkerPID(); c.err != nil {
		return c
	}
	if c.sup, c.err = serverproc.ReadUsage(c.supPID); c.err != nil {
		return c
	}
	c.worker, c.err = serverproc.ReadUsage(c.workerPID)
	return c
}

// perToken says what the tokens since start cost each process: CPU time (the runtime's
// own work included, the simulator's little), and the times a thread waited
// (voluntary context switches, each one a wake-up later, a count the machine's load
// does not change) among the threads that outlive the run.
func (c *cost) perToken(tokens int) (string, error) {
	if c.err != nil {
		return "", c.err
	}
	sup, err := serverproc.ReadUsage(c.supPID)
	if err != nil {
		return "", err
	}
	worker, err := serverproc.ReadUsage(c.workerPID)
	if err != nil {
		return "", err
	}
	ds, dw := sup.Sub(c.sup), worker.Sub(c.worker)
	n := float64(max(tokens, 1))
	return fmt.Sprintf("a token costs supervisor / worker %.0f / %.0f µs of CPU, %.1f / %.1f waits of threads that outlive the run",
		float64(ds.CPU.Microseconds())/n, float64(dw.CPU.Microseconds())/n, float64(ds.Voluntary)/n, float64(dw.Voluntary)/n), nil
}

// samePrompt is the question asked over the socket and over /v1/.
const samePrompt = "What is the capital of France?"

// ttftVersus measures the time to first token of the same question over the socket
// (rkllm.run, a connection per run, as ttftIdle) and over /v1/chat/completions
// (streamed; with net/http's client on a kept-alive connection and on a new one each
// time, and, like the socket's client, with one write of the request and reads on the
// same goroutine, on a kept-alive connection), each run read to its end before the
// next starts.
func (b *bench) ttftVersus(report io.Writer, runs int) error {
	kept := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	plain, err := serverproc.Dial("tcp", strings.TrimPrefix(b.Base, "http://"))
	if err != nil {
		return err
	}
	defer func() { _ = plain.Close() }()
	plainR := bufio.NewReader(plain)
	var socket, v1, v1New, v1Plain []time.Duration
	for i := range runs {
		d, err := v1PlainFirstToken(plain, plainR)
		if err != nil {
			return fmt.Errorf("/v1/ with a plain client: %w", err)
		}
		v1Plain = append(v1Plain, d)
		if d, err = b.socketFirstToken(i); err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		socket = append(socket, d)
		if d, err = b.v1FirstToken(kept); err != nil {
			return fmt.Errorf("/v1/: %w", err)
		}
		v1 = append(v1, d)
		if d, err = b.v1FirstToken(fresh); err != nil {
			return fmt.Errorf("/v1/ on new connections: %w", err)
		}
		v1New = append(v1New, d)
	}
	ratio := func(d []time.Duration) string {
		return fmt.Sprintf("%.2fx", float64(pctDur(d, 50))/float64(pctDur(socket, 50)))
	}
	_, _ = fmt.Fprintf(report, "| time to first token, idle, the same question (%q), %d runs each: socket `rkllm.run` / `/v1/chat/completions` streamed, net/http's client on a kept-alive connection / on a new connection / a plain client (one write, reads on its goroutine, as the socket's) on a kept-alive connection | p50 %s / %s / %s / %s (%s / %s / %s the socket's), p99 %s / %s / %s / %s | `/v1/` <= 1.3x the socket |\n",
		samePrompt, runs, pct(socket, 50), pct(v1, 50), pct(v1New, 50), pct(v1Plain, 50), ratio(v1), ratio(v1New), ratio(v1Plain),
		pct(socket, 99), pct(v1, 99), pct(v1New, 99), pct(v1Plain, 99))
	return nil
}

// v1PlainFirstToken asks the question as a streamed chat completion on the kept-alive
// connection nc (read through br) with one write, and returns the time to its first
// content event; it reads the stream to its end.
func v1PlainFirstToken(nc net.Conn, br *bufio.Reader) (time.Duration, error) {
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	body := fmt.Sprintf(`{"model":"model","stream":true,"max_tokens":4,"messages":[{"role":"user","content":%q}]}`, samePrompt)
	req := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	start := time.Now()
	if _, err := io.WriteString(nc, req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return firstContent(resp.Body, start)
}

// socketFirstToken sends the question as a streamed rkllm.run on a new connection and
// returns the time to its first notification; it reads the run to its end.
func (b *bench) socketFirstToken(id int) (time.Duration, error) {
	nc, err := serverproc.Dial("unix", b.Socket)
	if err != nil {
		return 0, err
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	if _, err := fmt.Fprintf(nc, `{"jsonrpc":"2.0","id":%d,"method":"rkllm.run","params":{"stream":true,"input":{"prompt_input":%q},"infer_params":{"max_new_tokens":4}}}`+"\n", id, samePrompt); err != nil {
		return 0, err
	}
	br := bufio.NewReader(nc)
	var first time.Duration
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if first == 0 {
			first = time.Since(start)
		}
		if !strings.HasPrefix(string(line), string(notification)) {
			return first, nil
		}
	}
}

// v1FirstToken asks the question as a streamed chat completion and returns the time
// to its first content chunk (after the role chunk); it reads the stream to its end.
func (b *bench) v1FirstToken(c *http.Client) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	body := fmt.Sprintf(`{"model":"model","stream":true,"max_tokens":4,"messages":[{"role":"user","content":%q}]}`, samePrompt)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, b.Base+"/v1/chat/completions", strings.NewReader(body))
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return firstContent(resp.Body, start)
}

// firstContent reads a chat completion's event stream to its end and returns the time
// from start to its first content event (after the role's), found by matching the
// text rather than decoding each event, which would add to what is measured.
func firstContent(events io.Reader, start time.Time) (time.Duration, error) {
	br := bufio.NewReader(events)
	var first time.Duration
	for {
		line, err := br.ReadString('\n')
		if err == io.EOF {
			if first == 0 {
				return 0, fmt.Errorf("no content in the stream")
			}
			return first, nil
		}
		if err != nil {
			return 0, err
		}
		if first == 0 && strings.Contains(line, `"content":"`) && !strings.Contains(line, `"content":""`) {
			first = time.Since(start)
		}
	}
}

// memory measures, on a server with the default flags (but for --max-string-bytes,
// raised so that a 10 MB prompt reaches the worker), the memory both processes hold
// idle, and their anonymous memory after a 10 MB request on the socket and on /v1/:
// when its answer comes and 5 seconds later.
func memory(o options, dir string, report io.Writer) error {
	m := simulator.FastModel()
	s, err := serverproc.Start(serverproc.Options{Server: o.server, SimDir: o.simDir, ABI: o.abi, Dir: filepath.Join(dir, "memory"), Model: m,
		Config: map[string]any{"max-context-len": m.MaxContextLimit, "max-string-bytes": 16 << 20}})
	if err != nil {
		return err
	}
	defer s.Stop()
	wpid, err := s.WorkerPID()
	if err != nil {
		return err
	}
	pids := []int{s.PID(), wpid}
	read := func(f func(int) (int64, error)) ([2]int64, error) {
		var v [2]int64
		for i, pid := range pids {
			if v[i], err = f(pid); err != nil {
				return v, err
			}
		}
		return v, nil
	}
	rss, err := read(serverproc.VMRSS)
	if err != nil {
		return err
	}
	pss, err := read(serverproc.PSS)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(report, "| resident memory idle, default flags: supervisor + worker RSS; the memory both hold (PSS: the binary's pages they share counted once) | %.1f + %.1f MiB; %.1f MiB together | <= 20 MiB together |\n",
		serverproc.MiB(rss[0]), serverproc.MiB(rss[1]), serverproc.MiB(pss[0]+pss[1]))
	big := strings.Repeat("word ", 2<<20) // 10 MiB
	for _, transport := range []string{"socket", "/v1/"} {
		idle, err := read(serverproc.AnonRSS)
		if err != nil {
			return err
		}
		answer, err := largeRequest(s, transport, big)
		if err != nil {
			return err
		}
		after, err := read(serverproc.AnonRSS)
		if err != nil {
			return err
		}
		time.Sleep(5 * time.Second)
		later, err := read(serverproc.AnonRSS)
		if err != nil {
			return err
		}
		_, _ = fmt.Fprintf(report, "| anonymous resident memory (heaps) after one 10 MB request over %s (%s), supervisor / worker | idle %.1f / %.1f MiB; at the answer %.1f / %.1f MiB; 5 s later %.1f / %.1f MiB | back within 5 MiB of idle within 5 s |\n",
			transport, answer, serverproc.MiB(idle[0]), serverproc.MiB(idle[1]), serverproc.MiB(after[0]), serverproc.MiB(after[1]), serverproc.MiB(later[0]), serverproc.MiB(later[1]))
	}
	return nil
}

// largeRequest sends a 10 MB request (a run of the prompt big, which the model's
// context refuses once the worker has it) and says what it was answered.
func largeRequest(s *serverproc.Server, transport, big string) (string, error) {
	if transport == "socket" {
		nc, err := serverproc.Dial("unix", s.Socket)
		if err != nil {
			return "", err
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(time.Minute))
		if _, err := fmt.Fprintf(nc, `{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"prompt_input":%q}}}`+"\n", big); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(nc).ReadString('\n')
		if err != nil {
			return "", err
		}
		if i := strings.Index(line, `"code":`); i >= 0 {
			return "`rkllm.run`, answered " + strings.SplitN(line[i+len(`"code":`):], ",", 2)[0], nil
		}
		return "`rkllm.run`, answered", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	body := fmt.Sprintf(`{"model":"model","max_tokens":4,"messages":[{"role":"user","content":%q}]}`, big)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.Base+"/v1/chat/completions", strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return fmt.Sprintf("a chat, answered %d", resp.StatusCode), nil
}

// pctDur is the p-th percentile of d.
func pctDur(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)*p/100, len(s)-1)]
}
