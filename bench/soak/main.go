// Command soak runs rkllm-server on the unpaced simulator under mixed traffic for
// minutes (thousands of requests: whole and abandoned streams over the socket and HTTP,
// asynchronous runs, aborts, malformed messages, connections that come and go) and
// reports the supervisor's and the worker's resident memory, goroutines and open
// descriptors over time. It fails when, after the traffic stops, goroutines or
// descriptors stay above where they were, or memory kept growing. `make soak` runs it;
// it is not part of CI.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

func main() {
	server := flag.String("server", "bin/rkllm-server", "the rkllm-server binary")
	simDir := flag.String("sim-dir", "bin", "folder of librkllmrt-sim-*.so")
	duration := flag.Duration("duration", 10*time.Minute, "how long to send traffic")
	interval := flag.Duration("interval", 30*time.Second, "time between samples")
	clients := flag.Int("clients", 16, "clients sending at once")
	flag.Parse()
	if err := soak(*server, *simDir, *duration, *interval, *clients); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type sample struct {
	at                 time.Duration
	requests, failures int64
	supervisor, worker int64
	goroutines         float64
	fds                int
}

func soak(server, simDir string, duration, interval time.Duration, clients int) error {
	dir, err := os.MkdirTemp("", "rkllm-soak-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	m := simulator.FastModel()
	m.ReplyMinTokens, m.ReplyMaxTokens = 20, 200
	s, err := serverproc.Start(serverproc.Options{Server: server, SimDir: simDir, ABI: "1.3", Dir: filepath.Join(dir, "server"), Model: m,
		Config: map[string]any{"max-queue": 32}})
	if err != nil {
		return err
	}
	defer s.Stop()
	serverproc.Machine(os.Stdout)
	fmt.Printf("soak: %d clients for %s, unpaced simulator, replies of 20-200 tokens\n\n", clients, duration)
	fmt.Println("| time | requests | failed | supervisor RSS | worker RSS | goroutines | descriptors |")
	fmt.Println("|---|---|---|---|---|---|---|")

	var requests, failures atomic.Int64
	began := time.Now()
	var samples []sample
	take := func() error {
		sup, worker, err := s.RSS()
		if err != nil {
			return err
		}
		g, err := s.Metric("go_goroutines")
		if err != nil {
			return err
		}
		fds, err := s.FDs()
		if err != nil {
			return err
		}
		smp := sample{at: time.Since(began).Round(time.Second), requests: requests.Load(), failures: failures.Load(),
			supervisor: sup, worker: worker, goroutines: g, fds: fds}
		samples = append(samples, smp)
		fmt.Printf("| %s | %d | %d | %.1f MiB | %.1f MiB | %.0f | %d |\n", smp.at, smp.requests, smp.failures,
			serverproc.MiB(sup), serverproc.MiB(worker), g, fds)
		return nil
	}
	if err := take(); err != nil { // before any traffic: the baseline
		return err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 42)) //nolint:gosec // traffic mix, not a secret
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := one(s, rng); err != nil {
					failures.Add(1)
					if failures.Load() <= 5 {
						fmt.Fprintln(os.Stderr, "soak: request failed:", err)
					}
				}
				requests.Add(1)
			}
		})
	}
	if err := every(interval, duration, take); err != nil {
		return err
	}
	close(stop)
	wg.Wait()
	if err := settle(s, take); err != nil {
		return err
	}
	return verdict(samples, samples[len(samples)-1], failures.Load(), requests.Load())
}

// settle samples once a second, for at most 30 s, until the clients' connections have
// closed.
func settle(s *serverproc.Server, take func() error) error {
	settled := time.Now().Add(30 * time.Second)
	for {
		if err := take(); err != nil {
			return err
		}
		open, _ := s.Metric(`rkllm_connections_open{transport="unix"}`)
		if open == 0 || time.Now().After(settled) {
			return nil
		}
		time.Sleep(time.Second) //nolint:forbidigo // pacing the samples of a soak run
	}
}

// every calls f every interval until duration has passed.
func every(interval, duration time.Duration, f func() error) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	deadline := time.After(duration)
	for {
		select {
		case <-tick.C:
			if err := f(); err != nil {
				return err
			}
		case <-deadline:
			return nil
		}
	}
}

// verdict compares the end with the start: after the traffic, goroutines and
// descriptors must be back near where they started, and memory must have stopped
// growing (the second half of the run grows by less than a tenth of the first's level).
func verdict(samples []sample, last sample, failed, requests int64) error {
	first := samples[0]
	mid := samples[len(samples)/2]
	fmt.Printf("\n%d requests, %d failed\n", requests, failed)
	var problems []string
	if last.goroutines > first.goroutines+5 {
		problems = append(problems, fmt.Sprintf("goroutines %0.f at the end, %0.f at the start", last.goroutines, first.goroutines))
	}
	if last.fds > first.fds+5 {
		problems = append(problems, fmt.Sprintf("descriptors %d at the end, %d at the start", last.fds, first.fds))
	}
	if growth := last.supervisor - mid.supervisor; growth > mid.supervisor/10+4<<20 {
		problems = append(problems, fmt.Sprintf("supervisor memory still growing: %.1f MiB half-way, %.1f MiB at the end", serverproc.MiB(mid.supervisor), serverproc.MiB(last.supervisor)))
	}
	if growth := last.worker - mid.worker; growth > mid.worker/10+4<<20 {
		problems = append(problems, fmt.Sprintf("worker memory still growing: %.1f MiB half-way, %.1f MiB at the end", serverproc.MiB(mid.worker), serverproc.MiB(last.worker)))
	}
	if failed*100 > requests {
		problems = append(problems, fmt.Sprintf("%d of %d requests failed", failed, requests))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	fmt.Println("no growth: goroutines and descriptors back to their start, memory flat")
	return nil
}

// one sends one piece of traffic, chosen at random.
func one(s *serverproc.Server, rng *rand.Rand) error {
	n := 4 + rng.IntN(60)
	run := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"stream":true,"input":{"prompt_input":"soak %d"},"infer_params":{"max_new_tokens":%d}}}`, rng.IntN(1000), n)
	switch k := rng.IntN(10); k {
	case 0, 1, 2: // a whole stream over the socket
		return socket(s, run, -1)
	case 3: // a stream abandoned after a few tokens
		return socket(s, run, 1+rng.IntN(3))
	case 4: // an asynchronous run
		return socket(s, strings.Replace(run, `"rkllm.run"`, `"rkllm.run_async"`, 1), -1)
	case 5: // garbage
		return socket(s, `{"jsonrpc":"2.0","id":1,"method":`, -1)
	case 6: // connect and leave
		nc, err := serverproc.Dial("unix", s.Socket)
		if err == nil {
			_ = nc.Close()
		}
		return err
	default: // HTTP, streamed or not
		body := run
		if k == 9 {
			body = strings.Replace(run, `"stream":true`, `"stream":false`, 1)
		}
		resp, err := s.HTTP().Post(s.Base+"/rpc", "application/json", strings.NewReader(body)) //nolint:noctx // bounded by the run
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
			return fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, out)
		}
		return nil
	}
}

// socket sends msg and reads until its response (or rkllm.done), or leaves after
// leaveAfter lines when that is not negative.
func socket(s *serverproc.Server, msg string, leaveAfter int) error {
	nc, err := serverproc.Dial("unix", s.Socket)
	if err != nil {
		return err
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintln(nc, msg); err != nil {
		return err
	}
	br := bufio.NewReader(nc)
	async := strings.Contains(msg, "run_async")
	for i := 0; leaveAfter < 0 || i < leaveAfter; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		final := strings.HasPrefix(line, `{"jsonrpc":"2.0","id"`)
		if async {
			final = strings.Contains(line, `"rkllm.done"`) || (final && strings.Contains(line, `"error"`))
		}
		if final {
			return nil
		}
	}
	return nil
}
