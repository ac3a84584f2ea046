// Command gateway measures rkllm-gateway's front door against rkllm-server processes on
// the RKLLM simulator, without a cluster (the catalog is set by the benchmark):
//
//   - overhead: the same requests straight to a server and through the gateway, a small
//     non-streamed one (the cost per request) and a long stream from the unpaced
//     simulator (the cost per token);
//   - affinity: a 10-turn conversation over 3 replicas paced like an RK3588, time to
//     first token of each turn with conversation affinity and without (every request to
//     the least loaded replica, ties in turn: round robin for one conversation).
//
// It prints Markdown tables for docs/benchmarks.md.
//
//	make bench-gateway
//
// which builds the simulator and the server, then runs
//
//	go run ./bench/gateway -server bin/rkllm-server -sim-dir bin
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/rkllm-operator/rkllm-operator/bench/chatstream"
	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/httpapi"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
	"github.com/rkllm-operator/rkllm-operator/gateway/routing"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

func main() {
	server := flag.String("server", "bin/rkllm-server", "the rkllm-server binary")
	simDir := flag.String("sim-dir", "bin", "the folder of librkllmrt-sim-1.3.so")
	requests := flag.Int("requests", 300, "small requests per path for the cost per request")
	streams := flag.Int("streams", 5, "long streams per path for the cost per token")
	tokens := flag.Int("tokens", 1000, "tokens of each long stream")
	turns := flag.Int("turns", 10, "turns of the conversation")
	prefillTPS := flag.Float64("prefill-tps", 150, "simulated prefill speed of the affinity run, tokens per second")
	decodeTPS := flag.Float64("decode-tps", 100, "simulated decode speed of the affinity run, tokens per second")
	flag.Parse()
	b := &bench{server: *server, simDir: *simDir}
	defer b.stop()
	serverproc.Machine(os.Stdout)
	if err := b.overhead(*requests, *streams, *tokens); err != nil {
		fmt.Fprintln(os.Stderr, "gateway bench:", err)
		b.stop()
		os.Exit(1)
	}
	if err := b.affinity(*turns, *prefillTPS, *decodeTPS); err != nil {
		fmt.Fprintln(os.Stderr, "gateway bench:", err)
		b.stop()
		os.Exit(1)
	}
}

type bench struct {
	server, simDir string
	stops          []func()
}

func (b *bench) stop() {
	for _, s := range b.stops {
		s()
	}
	b.stops = nil
}

// upstream starts a server of model id m.
func (b *bench) upstream(m simulator.Model) (*serverproc.Server, error) {
	dir, err := os.MkdirTemp("", "gwb")
	if err != nil {
		return nil, err
	}
	s, err := serverproc.Start(serverproc.Options{Server: b.server, SimDir: b.simDir, ABI: "1.3", Dir: dir, Model: m,
		Config: map[string]any{"served-model-name": "model", "max-context-len": 4096, "max-queue": 64}})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	b.stops = append(b.stops, func() { s.Stop(); _ = os.RemoveAll(dir) })
	return s, nil
}

// gateway serves the front door for the servers on a loopback port and returns its
// base URL.
func (b *bench) gateway(policy routing.Policy, servers ...*serverproc.Server) (string, error) {
	cat := catalog.NewSnapshot()
	m := catalog.Model{Key: types.NamespacedName{Namespace: "bench", Name: "model"}, Name: "model"}
	for i, s := range servers {
		m.Replicas++
		m.Endpoints = append(m.Endpoints, catalog.Endpoint{ID: fmt.Sprintf("pod-%d", i), Address: strings.TrimPrefix(s.Base, "http://")})
	}
	cat.Set([]catalog.Model{m})
	h := httpapi.New(httpapi.Deps{Catalog: cat, Metrics: metrics.New(), Clock: clock.RealClock{}, Log: logr.Discard(), Seed: maphash.MakeSeed(),
		Proxy: &proxy.Proxy{Transport: proxy.NewTransport(5*time.Second, 16), Clock: clock.RealClock{}}},
		httpapi.Options{Routing: policy, MaxInFlightPerReplica: 16})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = h.Start(ctx) }()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	b.stops = append(b.stops, func() { _ = srv.Close(); cancel() })
	// The front door takes the replicas in once it has read the catalog.
	for range 500 {
		if code, _, err := post(ln.Addr().String(), `{"model":"model","prompt":"x","max_tokens":1}`, "/v1/completions"); err == nil && code == http.StatusOK {
			return "http://" + ln.Addr().String(), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "", errors.New("the gateway did not serve")
}

func post(addr, body, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String(), err
}

// overhead measures the cost per request and per token.
func (b *bench) overhead(requests, streams, tokens int) error {
	m := simulator.FastModel()
	m.ReplyMinTokens, m.ReplyMaxTokens = tokens, tokens
	s, err := b.upstream(m)
	if err != nil {
		return err
	}
	gw, err := b.gateway(routing.Policy{}, s)
	if err != nil {
		return err
	}
	small := `{"model":"model","messages":[{"role":"user","content":"Hello"}],"max_tokens":1}`
	fmt.Printf("\n| path | request, p50 | request, p99 | request, CPU | %d-token stream, median | stream, CPU per token |\n|---|---|---|---|---|---|\n", tokens)
	var rows [2]costs
	for i, target := range []struct{ name, base string }{{"straight to the server", s.Base}, {"through the gateway", gw}} {
		c, err := measureCosts(target.base, small, requests, streams, tokens)
		if err != nil {
			return fmt.Errorf("%s: %w", target.name, err)
		}
		rows[i] = c
		fmt.Printf("| %s | %s | %s | %.0f µs | %s | %.1f µs |\n", target.name, ms(c.p50), ms(c.p99), us(c.requestCPU),
			ms(c.stream), us(c.streamCPU)/float64(tokens))
	}
	d := func(a, b time.Duration) time.Duration { return b - a }
	fmt.Printf("| the gateway's share | %s | %s | %.0f µs | %s | %.1f µs |\n", ms(d(rows[0].p50, rows[1].p50)), ms(d(rows[0].p99, rows[1].p99)),
		us(d(rows[0].requestCPU, rows[1].requestCPU)), ms(d(rows[0].stream, rows[1].stream)), us(d(rows[0].streamCPU, rows[1].streamCPU))/float64(tokens))
	return nil
}

// costs are what one path costs: latency of small requests, and CPU of this process (the
// client, and the gateway when it is in the path) per request and per stream.
type costs struct {
	p50, p99, requestCPU, stream, streamCPU time.Duration
}

func measureCosts(base, small string, requests, streams, tokens int) (costs, error) {
	var c costs
	var lat []time.Duration
	cpu0 := cpuTime()
	for range requests {
		start := time.Now()
		code, body, err := post(strings.TrimPrefix(base, "http://"), small, "/v1/chat/completions")
		if err != nil || code != http.StatusOK {
			return c, fmt.Errorf("%d %v %s", code, err, body)
		}
		lat = append(lat, time.Since(start))
	}
	c.requestCPU = (cpuTime() - cpu0) / time.Duration(requests)
	var wall, cpu []time.Duration
	for range streams {
		cpu0 := cpuTime()
		d, n, err := stream(base, tokens)
		if err != nil {
			return c, fmt.Errorf("stream: %w", err)
		}
		if n < tokens/2 {
			return c, fmt.Errorf("stream: %d chunks for %d tokens", n, tokens)
		}
		wall, cpu = append(wall, d), append(cpu, cpuTime()-cpu0)
	}
	c.p50, c.p99, c.stream, c.streamCPU = pct(lat, 50), pct(lat, 99), pct(wall, 50), pct(cpu, 50)
	return c, nil
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// stream reads a streamed chat of tokens tokens and returns its time and chunk count.
func stream(base string, tokens int) (time.Duration, int, error) {
	body := fmt.Sprintf(`{"model":"model","stream":true,"max_tokens":%d,"messages":[{"role":"user","content":"Tell me a long story"}]}`, tokens)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", strings.NewReader(body))
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: {") {
			n++
		}
	}
	return time.Since(start), n, sc.Err()
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// affinity runs the conversation over three paced replicas with and without affinity.
func (b *bench) affinity(turns int, prefillTPS, decodeTPS float64) error {
	m := simulator.DefaultModel()
	m.PrefillTokensPerSecond, m.DecodeTokensPerSecond = prefillTPS, decodeTPS
	m.ReplyMinTokens, m.ReplyMaxTokens = 40, 60
	results := map[bool][]time.Duration{}
	for _, affine := range []bool{true, false} {
		var servers []*serverproc.Server
		for range 3 {
			s, err := b.upstream(m)
			if err != nil {
				return err
			}
			servers = append(servers, s)
		}
		gw, err := b.gateway(routing.Policy{NoAffinity: !affine}, servers...)
		if err != nil {
			return err
		}
		if results[affine], err = converse(gw, turns); err != nil {
			return err
		}
		b.stop()
	}
	fmt.Printf("\n| turn | with affinity: TTFT | without (round robin): TTFT |\n|---|---|---|\n")
	var on, off time.Duration
	for i := range turns {
		on += results[true][i]
		off += results[false][i]
		fmt.Printf("| %d | %d ms | %d ms |\n", i+1, results[true][i].Milliseconds(), results[false][i].Milliseconds())
	}
	fmt.Printf("| all | %d ms in total | %d ms in total |\n", on.Milliseconds(), off.Milliseconds())
	return nil
}

// converse runs the conversation, one streamed request per turn, and times the first
// content chunk of each.
func converse(base string, turns int) ([]time.Duration, error) {
	msgs := []map[string]any{{"role": "system", "content": "You are a helpful assistant running on a Rockchip RK3588 board."}}
	var out []time.Duration
	for i := range turns {
		msgs = append(msgs, map[string]any{"role": "user", "content": fmt.Sprintf(
			"Question %d: explain in a few sentences how the NPU, the CPU cores and the memory of the board work together when serving a language model.", i+1)})
		body, _ := json.Marshal(map[string]any{"model": "model", "messages": msgs, "stream": true})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		r, err := chatstream.Post(ctx, base, body)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("turn %d: %w", i+1, err)
		}
		out = append(out, r.TTFT)
		msgs = append(msgs, map[string]any{"role": "assistant", "content": r.Text})
	}
	return out, nil
}
