// Command prefix-reuse measures what conversation-prefix reuse saves: the time to first
// token of each turn of a 10-turn chat through rkllm-server's OpenAI-compatible API,
// with --prefix-reuse on and off, against the RKLLM simulator pacing prefill like an
// RK3588 (150 prompt tokens per second by default). It prints a Markdown table for
// docs/benchmarks.md.
//
//	make bench-prefix-reuse
//
// which builds the simulator and the server, then runs
//
//	go run ./bench/prefix-reuse -server bin/rkllm-server -sim bin/librkllmrt-sim-1.3.so
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	"github.com/rkllm-operator/rkllm-operator/bench/chatstream"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

func main() {
	server := flag.String("server", "bin/rkllm-server", "the rkllm-server binary")
	sim := flag.String("sim", "bin/librkllmrt-sim-1.3.so", "the simulator library (ABI 1.3)")
	turns := flag.Int("turns", 10, "turns of the conversation")
	prefillTPS := flag.Float64("prefill-tps", 150, "simulated prefill speed, tokens per second")
	decodeTPS := flag.Float64("decode-tps", 100, "simulated decode speed, tokens per second")
	flag.Parse()
	if err := run(*server, *sim, *turns, *prefillTPS, *decodeTPS); err != nil {
		fmt.Fprintln(os.Stderr, "prefix-reuse:", err)
		os.Exit(1)
	}
}

// turn is one measured turn.
type turn = chatstream.Reply

func run(server, sim string, turns int, prefillTPS, decodeTPS float64) error {
	dir, err := os.MkdirTemp("", "prefix-reuse-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	m := simulator.DefaultModel()
	m.PrefillTokensPerSecond, m.DecodeTokensPerSecond = prefillTPS, decodeTPS
	m.ReplyMinTokens, m.ReplyMaxTokens = 40, 60
	model := filepath.Join(dir, "model.rkllm")
	if err := simulator.WriteModel(model, m); err != nil {
		return err
	}
	results := map[bool][]turn{}
	for _, reuse := range []bool{false, true} {
		base, stop, err := start(server, sim, model, reuse)
		if err != nil {
			return err
		}
		results[reuse], err = converse(base, turns)
		stop()
		if err != nil {
			return err
		}
	}
	fmt.Printf("| turn | prompt tokens | without reuse: TTFT | with reuse: TTFT (tokens prefilled) |\n|---|---|---|---|\n")
	var sumOff, sumOn time.Duration
	for i := range turns {
		off, on := results[false][i], results[true][i]
		sumOff += off.TTFT
		sumOn += on.TTFT
		fmt.Printf("| %d | %d | %d ms | %d ms (%d) |\n", i+1, off.Usage.PromptTokens, off.TTFT.Milliseconds(), on.TTFT.Milliseconds(), on.Usage.PromptTokens-on.Usage.CachedTokens)
	}
	fmt.Printf("| all | | %d ms in total | %d ms in total |\n", sumOff.Milliseconds(), sumOn.Milliseconds())
	return nil
}

var addrLine = regexp.MustCompile(`"msg":"serving HTTP","address":"([^"]+)"`)

// start runs rkllm-server and waits until it is ready.
func start(server, sim, model string, reuse bool) (string, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	args := []string{"serve", "--model", model, "--runtime-lib", sim, "--runtime-abi", "1.3",
		"--listen", "127.0.0.1:0", "--probe-listen", "", "--max-context-len", "4096", fmt.Sprintf("--prefix-reuse=%v", reuse), "--log-format", "json"}
	cmd := exec.CommandContext(ctx, server, args...) //nolint:gosec // the binary to measure, named on the command line
	out, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, err
	}
	stop := func() { cancel(); _ = cmd.Wait() }
	sc := bufio.NewScanner(out)
	base := ""
	for base == "" && sc.Scan() {
		if m := addrLine.FindStringSubmatch(sc.Text()); m != nil {
			base = "http://" + m[1]
		}
	}
	go func() {
		for sc.Scan() { // keep draining the log
		}
	}()
	if base == "" {
		stop()
		return "", nil, errors.New("the server did not say where it listens")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("the server did not become ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// converse runs the conversation, one streamed request per turn, and times the first
// content chunk of each.
func converse(base string, turns int) ([]turn, error) {
	msgs := []map[string]any{{"role": "system", "content": "You are a helpful assistant running on a Rockchip RK3588 board."}}
	var out []turn
	for i := range turns {
		msgs = append(msgs, map[string]any{"role": "user", "content": fmt.Sprintf(
			"Question %d: explain in a few sentences how the NPU, the CPU cores and the memory of the board work together when serving a language model.", i+1)})
		body, _ := json.Marshal(map[string]any{"model": "model", "messages": msgs, "stream": true, "stream_options": map[string]any{"include_usage": true}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		t, err := chatstream.Post(ctx, base, body)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("turn %d: %w", i+1, err)
		}
		out = append(out, t)
		msgs = append(msgs, map[string]any{"role": "assistant", "content": t.Text})
	}
	return out, nil
}
