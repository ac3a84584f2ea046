// Command hops measures the floor under rkllm-server's added latency per token on this
// machine. A C program writes a line every millisecond (as the simulator paces 1,000
// tokens/s), each holding the CLOCK_MONOTONIC time just before its write, and a Go
// client reads them as bench/server's client reads tokens:
//
//   - one hop: the writer to the client, as a server without a worker process would
//     (the nano);
//   - two hops through a C relay: a process that copies with blocking reads and
//     writes and has no runtime to wake, the least any server with a separate worker
//     process can add;
//   - two hops through a Go relay copying net.Conn to net.Conn (io.Copy): what Go's
//     poller and scheduler add to that.
//
// It prints Markdown rows for docs/benchmarks.md. Run it with `make bench-hops`.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
)

func main() {
	src := flag.String("src", "bench/hops/csrc/hops.c", "the C writer and relay")
	cc := flag.String("cc", "cc", "the C compiler")
	lines := flag.Int("lines", 10000, "lines of each run")
	runs := flag.Int("runs", 3, "runs of each path")
	relayIn := flag.String("go-relay", "", "internal: relay the Unix socket at this path to -relay-to with io.Copy")
	relayOut := flag.String("relay-to", "", "internal: see -go-relay")
	flag.Parse()
	if *relayIn != "" {
		if err := goRelay(context.Background(), *relayIn, *relayOut); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*src, *cc, *lines, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "hops:", err)
		os.Exit(1)
	}
}

func run(src, cc string, lines, runs int) error {
	dir, err := os.MkdirTemp("", "rkllm-hops-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	hops := filepath.Join(dir, "hops")
	ctx := context.Background()
	if out, err := exec.CommandContext(ctx, cc, "-O2", "-o", hops, src).CombinedOutput(); err != nil { //nolint:gosec // the bench's own compiler and source
		return fmt.Errorf("%s %s: %w\n%s", cc, src, err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	report := &bytes.Buffer{}
	serverproc.Machine(report)
	_, _ = fmt.Fprintf(report, "\n| path (a line every millisecond, %d lines, %d runs) | latency p50 / p99 (each run's p50) |\n|---|---|\n", lines, runs)
	paths := []struct {
		what  string
		relay func(in, out string) *exec.Cmd
	}{
		{"one hop: C writer to the Go client", nil},
		{"two hops: through a C relay (blocking read and write)", func(in, out string) *exec.Cmd {
			return exec.CommandContext(ctx, hops, "relay", in, out) //nolint:gosec // the bench's own program
		}},
		{"two hops: through a Go relay (net.Conn to net.Conn, io.Copy)", func(in, out string) *exec.Cmd {
			return exec.CommandContext(ctx, self, "-go-relay", in, "-relay-to", out) //nolint:gosec // this program
		}},
	}
	for n, p := range paths {
		var all []time.Duration
		var medians []string
		for i := range runs {
			lat, err := measure(ctx, filepath.Join(dir, fmt.Sprintf("%d-%d", n, i)), hops, lines, p.relay)
			if err != nil {
				return fmt.Errorf("%s: %w", p.what, err)
			}
			medians = append(medians, fmtDur(pct(lat, 50)))
			all = append(all, lat...)
		}
		_, _ = fmt.Fprintf(report, "| %s | %s / %s (%v) |\n", p.what, fmtDur(pct(all, 50)), fmtDur(pct(all, 99)), medians)
	}
	fmt.Print(report.String())
	return nil
}

// measure runs the writer, through relay when it is set, to a client listening in
// dir, and returns each line's latency.
func measure(ctx context.Context, dir, hops string, lines int, relay func(in, out string) *exec.Cmd) ([]time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	client := filepath.Join(dir, "client.sock")
	l, err := (&net.ListenConfig{}).Listen(ctx, "unix", client)
	if err != nil {
		return nil, err
	}
	defer func() { _ = l.Close() }()
	target := client
	if relay != nil {
		target = filepath.Join(dir, "relay.sock")
		r := relay(target, client)
		r.Stderr = os.Stderr
		out, err := r.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := r.Start(); err != nil {
			return nil, err
		}
		defer func() { _ = r.Wait() }()
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			return nil, fmt.Errorf("relay did not start: %w", err)
		}
	}
	w := exec.CommandContext(ctx, hops, "writer", target, strconv.Itoa(lines)) //nolint:gosec // the bench's own program
	w.Stderr = os.Stderr
	if err := w.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = w.Wait() }()
	c, err := l.Accept()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(time.Duration(lines)*time.Millisecond + time.Minute))
	br := bufio.NewReaderSize(c, 1<<20)
	lat := make([]time.Duration, 0, lines)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, io.EOF) && len(lat) == lines {
			return lat, nil
		}
		if err != nil {
			return nil, fmt.Errorf("after %d lines: %w", len(lat), err)
		}
		now := monotonic()
		at, err := strconv.ParseInt(string(bytes.TrimSpace(line[1:])), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		lat = append(lat, time.Duration(now-at))
	}
}

// goRelay accepts one connection on in and copies it to out.
func goRelay(ctx context.Context, in, out string) error {
	l, err := (&net.ListenConfig{}).Listen(ctx, "unix", in)
	if err != nil {
		return err
	}
	o, err := (&net.Dialer{}).DialContext(ctx, "unix", out)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	c, err := l.Accept()
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, c); err != nil {
		return err
	}
	return o.Close()
}

func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

func fmtDur(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
