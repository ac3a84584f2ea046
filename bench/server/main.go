// Command server benchmarks rkllm-server's own cost, with the simulator at unlimited
// speed (its per-token work is the only thing besides the server): single-stream
// throughput over the Unix socket and HTTP, the latency each token gains between the
// runtime's callback and the client (and the CPU and wake-ups it costs both
// processes), time to first token idle (socket and /v1/) and with 100 clients queued,
// memory idle and with 1,000 connections; memory idle and after a 10 MB request; and,
// with the default flags, bursts of 100 and 1,000 clients, 8 chats of 15 MiB at once,
// and the probes with every client slot taken. It prints a Markdown report for docs/benchmarks.md. Run it with
// `make bench-server`; -only runs some of it.
//
// The simulator's RKLLM_SIM_CLOCK_TEXT makes each token's text the CLOCK_MONOTONIC time
// of its callback, so a client on the same machine can tell what the server added.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

type options struct {
	server, simDir, abi string
	tokens, runs        int
	connections         int
	only                string
}

func main() {
	var o options
	flag.StringVar(&o.server, "server", "bin/rkllm-server", "the rkllm-server binary")
	flag.StringVar(&o.simDir, "sim-dir", "bin", "folder of librkllmrt-sim-*.so")
	flag.StringVar(&o.abi, "abi", "1.3", "simulator ABI")
	flag.IntVar(&o.tokens, "tokens", 30000, "tokens of each throughput run")
	flag.IntVar(&o.runs, "runs", 5, "runs of each measurement")
	flag.IntVar(&o.connections, "connections", 1000, "idle connections for the memory figure")
	flag.StringVar(&o.only, "only", "", "run only these parts, comma-separated: tuned (throughput, latency, time to first token, memory and connections on servers set up for them), latency (tuned's per-token latency alone), defaults (the bursts, the long chats and the probes, with the default flags), memory (idle and after a 10 MB request)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench is a running server.
type bench struct {
	*serverproc.Server
	o options
}

func start(o options, dir string, tps int) (*bench, error) {
	m := simulator.FastModel()
	m.DecodeTokensPerSecond = float64(tps)
	m.MaxContextLimit = 1 << 16
	m.ReplyMinTokens, m.ReplyMaxTokens = 1<<16, 1<<16 // runs end at max_new_tokens
	s, err := serverproc.Start(serverproc.Options{Server: o.server, SimDir: o.simDir, ABI: o.abi, Dir: dir, Model: m,
		Config: map[string]any{"max-context-len": m.MaxContextLimit, "max-queue": 256, "max-connections": o.connections + 200},
		Env:    []string{"RKLLM_SIM_CLOCK_TEXT=1"}})
	if err != nil {
		return nil, err
	}
	return &bench{Server: s, o: o}, nil
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "rkllm-bench-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	began := time.Now()
	report := &strings.Builder{}
	serverproc.Machine(report)
	_, _ = fmt.Fprintf(report, "\n| measurement | result | target |\n|---|---|---|\n")
	for _, part := range []struct {
		name string
		run  func(options, string, io.Writer) error
	}{{"tuned", tuned}, {"latency", latencyOnly}, {"memory", memory}, {"defaults", defaults}} {
		if o.only != "" && !slices.Contains(strings.Split(o.only, ","), part.name) {
			continue
		}
		if err := part.run(o, dir, report); err != nil {
			return fmt.Errorf("%s: %w", part.name, err)
		}
	}
	_, _ = fmt.Fprintf(report, "\n(%s in all)\n", time.Since(began).Round(time.Second))
	fmt.Print(report.String())
	return nil
}

// tuned runs the parts measured on servers configured for them.
func tuned(o options, dir string, report io.Writer) error {
	b, err := start(o, filepath.Join(dir, "unpaced"), 0)
	if err != nil {
		return err
	}
	defer b.Stop()
	idleSup, idleWorker, err := b.RSS()
	if err != nil {
		return err
	}
	if err := b.throughput(report); err != nil {
		return err
	}

	if err := latency(o, b, dir, report); err != nil {
		return err
	}

	ttft, err := b.ttftIdle(50)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(report, "| time to first token, idle (send to first token at the client, 50 runs) | p50 %s, p99 %s | |\n", pct(ttft, 50), pct(ttft, 99))
	if err := b.ttftVersus(report, 50); err != nil {
		return err
	}
	handover, err := b.ttftQueued(100)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(report, "| time to first token with 100 clients queued (previous answer at its client to the next run's first token, 100 runs) | p50 %s, p99 %s | |\n", pct(handover, 50), pct(handover, 99))

	_, _ = fmt.Fprintf(report, "| RSS idle, supervisor (model loaded) | %.1f MiB | < 30 MiB |\n", serverproc.MiB(idleSup))
	_, _ = fmt.Fprintf(report, "| RSS idle, worker (simulator and model loaded) | %.1f MiB | |\n", serverproc.MiB(idleWorker))
	held, failed, err := b.holdConnections(o.connections)
	if err != nil {
		return err
	}
	sup, _, err := b.RSS()
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(report, "| %d connections held, each answered once | %d held, %d failed; supervisor RSS %.1f MiB | all held without error |\n",
		o.connections, held, failed, serverproc.MiB(sup))
	return nil
}

// latencyOnly runs the latency part of tuned alone (for profiling the token path).
func latencyOnly(o options, dir string, report io.Writer) error {
	b, err := start(o, filepath.Join(dir, "unpaced"), 0)
	if err != nil {
		return err
	}
	defer b.Stop()
	return latency(o, b, dir, report)
}

// defaults runs the parts measured with the default flags.
func defaults(o options, dir string, report io.Writer) error {
	for _, n := range []int{100, 1000} {
		if err := burst(o, defaultsDir(dir, fmt.Sprintf("burst-%d", n)), n, report); err != nil {
			return fmt.Errorf("burst of %d: %w", n, err)
		}
	}
	if err := longChats(o, defaultsDir(dir, "long-chats"), report); err != nil {
		return fmt.Errorf("long chats: %w", err)
	}
	if err := probesWithSlotsTaken(o, defaultsDir(dir, "probes"), report); err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	return nil
}

// throughput measures single-stream throughput over both transports.
func (b *bench) throughput(report io.Writer) error {
	for _, transport := range []string{"unix", "http"} {
		var rates []float64
		for range b.o.runs {
			n, d, _, err := b.stream(transport, b.o.tokens)
			if err != nil {
				return fmt.Errorf("throughput over %s: %w", transport, err)
			}
			rates = append(rates, float64(n)/d.Seconds())
		}
		sort.Float64s(rates)
		_, _ = fmt.Fprintf(report, "| single-stream throughput, %s (%d-token replies, %d runs) | median %.0f tokens/s (%.0f-%.0f) | >= 50000 tokens/s |\n",
			transport, b.o.tokens, b.o.runs, rates[len(rates)/2], rates[0], rates[len(rates)-1])
	}
	return nil
}

// latency measures the latency each token gains between the runtime's callback and the
// client, with 100 other clients connected. At unlimited speed the simulator outruns
// the pipeline and tokens queue, which measures the backlog rather than the cost of
// one token; so the figure is taken from models generating 1,000 and 10,000 tokens/s (a
// fast NPU does 30; the pipeline's capacity is about 60,000), each started in a folder
// under dir, with the unpaced server's figure for comparison.
func latency(o options, unpaced *bench, dir string, report io.Writer) error {
	type server struct {
		b    *bench
		what string
		tps  int
	}
	var servers []server
	for _, tps := range []int{1000, 10000} {
		paced, err := start(o, filepath.Join(dir, strconv.Itoa(tps)), tps)
		if err != nil {
			return err
		}
		defer paced.Stop()
		servers = append(servers, server{paced, fmt.Sprintf("model at %s tokens/s", thousands(tps)), tps})
	}
	for _, srv := range append(servers, server{unpaced, "unpaced model (backlog)", 0}) {
		idle, err := srv.b.dialIdle(100)
		if err != nil {
			return err
		}
		for _, transport := range []string{"unix", "http"} {
			var lat []time.Duration
			cost := startCost(srv.b)
			for range o.runs {
				_, _, l, err := srv.b.stream(transport, 2000)
				if err != nil {
					closeAll(idle)
					return fmt.Errorf("latency over %s: %w", transport, err)
				}
				lat = append(lat, l...)
			}
			perToken, err := cost.perToken(len(lat))
			if err != nil {
				closeAll(idle)
				return err
			}
			target := "p99 < 1 ms"
			if srv.tps == 1000 {
				target = "p50 <= 50 µs, p99 <= 200 µs"
			}
			_, _ = fmt.Fprintf(report, "| added latency per token (runtime callback to client), %s, %s, 100 other clients connected (%d tokens) | p50 %s, p99 %s, max %s; %s | %s |\n",
				transport, srv.what, len(lat), pct(lat, 50), pct(lat, 99), pct(lat, 100), perToken, target)
		}
		closeAll(idle)
	}
	return nil
}

// thousands writes n with a comma between thousands (1,000).
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// notification is how every token notification starts.
var notification = []byte(`{"jsonrpc":"2.0","method"`)

func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func runRequest(id int, tokens int) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"rkllm.run","params":{"stream":true,"input":{"prompt_input":"bench"},"infer_params":{"max_new_tokens":%d}}}`, id, tokens)
}

// stream runs one streamed run of n tokens and returns the tokens the client got, the
// time from sending to the final response, and each token's added latency.
func (b *bench) stream(transport string, n int) (int, time.Duration, []time.Duration, error) {
	var r io.Reader
	var closer io.Closer
	start := time.Now()
	switch transport {
	case "unix":
		nc, err := serverproc.Dial("unix", b.Socket)
		if err != nil {
			return 0, 0, nil, err
		}
		closer = nc
		if _, err := fmt.Fprintln(nc, runRequest(1, n)); err != nil {
			return 0, 0, nil, err
		}
		r = nc
	default:
		resp, err := b.HTTP().Post(b.Base+"/rpc", "application/json", strings.NewReader(runRequest(1, n))) //nolint:noctx // bounded by the run
		if err != nil {
			return 0, 0, nil, err
		}
		closer = resp.Body
		r = resp.Body
	}
	defer func() { _ = closer.Close() }()
	br := bufio.NewReaderSize(r, 1<<20)
	lat := make([]time.Duration, 0, n)
	tokens := 0
	marker := []byte(`"text":"@`)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return tokens, 0, nil, fmt.Errorf("after %d tokens: %w", tokens, err)
		}
		now := monotonic()
		if !bytes.HasPrefix(line, notification) {
			if !bytes.Contains(line, []byte(`"result"`)) {
				return tokens, 0, nil, fmt.Errorf("unexpected line %.200s", line)
			}
			return tokens, time.Since(start), lat, nil
		}
		i := bytes.Index(line, marker)
		if i < 0 {
			return tokens, 0, nil, fmt.Errorf("a token without its time: %.200s", line)
		}
		digits := line[i+len(marker):]
		j := bytes.IndexByte(digits, '"')
		at, err := strconv.ParseInt(string(digits[:j]), 10, 64)
		if err != nil {
			return tokens, 0, nil, fmt.Errorf("token time %.40q: %w", digits[:j], err)
		}
		lat = append(lat, time.Duration(now-at))
		tokens++
	}
}

// ttftIdle is the time from sending a run to its first token at the client.
func (b *bench) ttftIdle(runs int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range runs {
		nc, err := serverproc.Dial("unix", b.Socket)
		if err != nil {
			return nil, err
		}
		br := bufio.NewReader(nc)
		start := time.Now()
		_, err = fmt.Fprintln(nc, runRequest(i, 4))
		if err == nil {
			_, err = br.ReadSlice('\n')
		}
		out = append(out, time.Since(start))
		_ = nc.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ttftQueued queues n runs of 8 tokens at once, then measures, in the order they ran,
// the time from one run's final response at its client to the next run's first token
// at its client: what the server adds when the model passes to the next in line.
func (b *bench) ttftQueued(n int) ([]time.Duration, error) {
	type times struct{ first, last time.Time }
	res := make([]times, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range n {
		nc, err := serverproc.Dial("unix", b.Socket)
		if err != nil {
			return nil, err
		}
		wg.Go(func() {
			defer func() { _ = nc.Close() }()
			<-ready
			if _, err := fmt.Fprintln(nc, runRequest(i, 8)); err != nil {
				errs <- err
				return
			}
			br := bufio.NewReader(nc)
			for k := 0; ; k++ {
				line, err := br.ReadSlice('\n')
				if err != nil {
					errs <- err
					return
				}
				if k == 0 {
					res[i].first = time.Now()
				}
				if bytes.Contains(line, []byte(`"result"`)) || bytes.Contains(line, []byte(`"error"`)) {
					res[i].last = time.Now()
					if bytes.Contains(line, []byte(`"error"`)) {
						errs <- fmt.Errorf("run %d: %s", i, line)
					}
					return
				}
			}
		})
	}
	close(ready)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	sort.Slice(res, func(a, c int) bool { return res[a].first.Before(res[c].first) })
	var out []time.Duration
	for i := 1; i < len(res); i++ {
		out = append(out, res[i].first.Sub(res[i-1].last))
	}
	return out, nil
}

// dialIdle opens n socket connections that stay idle.
func (b *bench) dialIdle(n int) ([]net.Conn, error) {
	var conns []net.Conn
	for range n {
		nc, err := serverproc.Dial("unix", b.Socket)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, nc)
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// holdConnections opens n connections (a tenth of them HTTP keep-alive), has each
// answered once, and keeps them open while the caller measures; it returns how many
// were answered and how many failed.
func (b *bench) holdConnections(n int) (held, failed int, err error) {
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	addr := strings.TrimPrefix(b.Base, "http://")
	for i := range n {
		var nc net.Conn
		var err error
		if i%10 == 0 {
			nc, err = serverproc.Dial("tcp", addr)
		} else {
			nc, err = serverproc.Dial("unix", b.Socket)
		}
		if err != nil {
			failed++
			continue
		}
		conns = append(conns, nc)
		_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
		if i%10 == 0 {
			_, _ = io.WriteString(nc, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				failed++
				continue
			}
			_ = resp.Body.Close()
		} else {
			_, _ = fmt.Fprintln(nc, `{"jsonrpc":"2.0","id":1,"method":"rkllm.get_constants"}`)
			line, err := bufio.NewReader(nc).ReadString('\n')
			if err != nil || !strings.Contains(line, `"result"`) {
				failed++
				continue
			}
		}
		held++
	}
	return held, failed, nil
}

func pct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := min(len(s)*p/100, len(s)-1)
	return fmtDur(s[i])
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/1e3)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}
