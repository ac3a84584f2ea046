package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"

	"github.com/rkllm-operator/rkllm-operator/bench/serverproc"
	"github.com/rkllm-operator/rkllm-operator/server/config"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator/simtest"
	"github.com/rkllm-operator/rkllm-operator/server/serve"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// FuzzServe is the end-to-end fuzz target: every input goes the way a client's bytes
// go, over HTTP or the Unix socket, through the supervisor, into a worker that runs a
// build of rkllm-server with AddressSanitizer and the simulator built with it too
// (`make sim-asan`). A worker that crashes or restarts, an AddressSanitizer report
// (the runtime reading or writing past what the server handed it), or a server that
// does not come back to idle fails the input.
//
// The supervisor and the transports run in the test process, so the fuzzer's coverage
// guidance sees the decoding and validation that decide what reaches the runtime.
//
// mode picks the path: bits 0-1 the transport (0: POST /rpc, 1: lines on the socket,
// 2: raw bytes on the HTTP listener, 3: POST /v1/chat/completions), bit 2 the ABI
// (1.2 or 1.3). The seed corpus is testdata/e2e-seeds/ (see its README: adding a seed
// is adding a file) and the hostile-input table.
func FuzzServe(f *testing.F) {
	for _, s := range e2eSeeds(f) {
		f.Add(s.mode, s.data)
	}
	// The worker binary is built here, before f.Fuzz: in the process that runs the seeds,
	// or the fuzz coordinator, whose fuzzing processes inherit its environment. Running
	// `go build` inside a fuzzing process kills that process.
	if os.Getenv(asanBinEnv) == "" {
		bin, err := buildASanServer()
		if err != nil {
			f.Fatal(err)
		}
		f.Setenv(asanBinEnv, bin)
	}
	servers := [2]*fuzzServer{newFuzzServer(f, "1.2"), newFuzzServer(f, "1.3")}
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		z := servers[mode>>2&1]
		z.start(t)
		z.send(t, mode&3, data)
		z.check(t)
	})
}

// Fuzz transports (bits 0-1 of mode).
const (
	fuzzRPC    = 0
	fuzzSocket = 1
	fuzzRawTCP = 2
	fuzzOpenAI = 3
	fuzzABI13  = 4
)

type e2eSeed struct {
	mode uint8
	data []byte
}

// e2eSeeds reads testdata/e2e-seeds/: rpc/ holds JSON-RPC messages (sent over HTTP and
// over the socket), socket/ raw socket streams, http/ raw HTTP requests (header lines
// may end in \n, sent as \r\n), openai/ chat completion bodies. Every seed goes to
// both ABIs. The hostile-input table's entries (those under 64 KiB) are seeds too.
func e2eSeeds(f *testing.F) []e2eSeed {
	var seeds []e2eSeed
	add := func(mode uint8, data []byte) {
		seeds = append(seeds, e2eSeed{mode, data}, e2eSeed{mode | fuzzABI13, data})
	}
	for _, d := range []struct {
		dir   string
		modes []uint8
	}{{"rpc", []uint8{fuzzRPC, fuzzSocket}}, {"socket", []uint8{fuzzSocket}}, {"http", []uint8{fuzzRawTCP}}, {"openai", []uint8{fuzzOpenAI}}} {
		dir, modes := d.dir, d.modes
		files, err := filepath.Glob(filepath.Join("testdata", "e2e-seeds", dir, "*"))
		if err != nil {
			f.Fatal(err)
		}
		for _, name := range files {
			data, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			if dir == "http" {
				data = crlfHead(data)
			}
			for _, m := range modes {
				add(m, data)
			}
		}
	}
	if len(seeds) == 0 {
		f.Fatal("no seeds in testdata/e2e-seeds")
	}
	for _, h := range hostileInputs() {
		if len(h.msg) <= 64<<10 {
			add(fuzzSocket, []byte(h.msg))
			add(fuzzRPC, []byte(h.msg))
		}
	}
	return seeds
}

// crlfHead ends the header lines of a raw HTTP seed with \r\n (files are easier to
// write with \n); from the first empty line on (the body, and any request after it)
// the bytes are left as they are.
func crlfHead(b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		line, rest, found := bytes.Cut(b, []byte("\n"))
		if !found {
			return append(out, b...)
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		out = append(append(out, line...), '\r', '\n')
		b = rest
		if len(line) == 0 {
			return append(out, b...)
		}
	}
	return out
}

// fuzzServer is an rkllm-server whose supervisor and transports run in the test
// process and whose worker is the AddressSanitizer build.
type fuzzServer struct {
	abi    string
	dir    string // the model dir
	sock   string
	asan   string // where AddressSanitizer writes its reports
	cancel context.CancelFunc
	done   chan error

	once     sync.Once
	startErr error
	base     string
	pid      int
	restarts int
}

// fuzzIdle bounds the wait for the server to finish what an input started: the
// request timeout, then the watchdog's abort.
const (
	fuzzRequestTimeout = 20 * time.Second
	fuzzIdle           = fuzzRequestTimeout + 30*time.Second
)

// newFuzzServer prepares the folders; the server starts with the first input, so the
// fuzz coordinator (which runs no input) starts none.
func newFuzzServer(f *testing.F, abi string) *fuzzServer {
	root := f.TempDir()
	sockDir, err := os.MkdirTemp("", "rkz")
	if err != nil {
		f.Fatal(err)
	}
	z := &fuzzServer{abi: abi, dir: filepath.Join(root, "models"), sock: filepath.Join(sockDir, "s.sock"), asan: filepath.Join(root, "asan")}
	f.Cleanup(func() {
		if z.cancel != nil {
			z.cancel()
			if err := <-z.done; err != nil {
				f.Logf("the %s fuzz server shut down: %v", abi, err)
			}
		}
		_ = os.RemoveAll(sockDir)
	})
	return z
}

// asanBinEnv names the AddressSanitizer build of rkllm-server for the fuzzing processes.
const asanBinEnv = "RKLLM_FUZZ_ASAN_SERVER"

// buildASanServer builds rkllm-server with AddressSanitizer next to the test's build.
func buildASanServer() (string, error) {
	bin := serverBin + "-asan"
	if err := serverproc.Build(context.Background(), bin, "-asan"); err != nil {
		return "", err
	}
	return bin, nil
}

// asanWrapper writes a script that runs the AddressSanitizer build as the worker with
// the sanitizer's options: handle_segv=0 leaves a crash to the supervisor (which reports
// the signal); halt_on_error stops the worker at the first report, written into
// dir/asan.
func asanWrapper(dir string) (string, error) {
	wrapper := filepath.Join(dir, "rkllm-server-asan")
	script := fmt.Sprintf("#!/bin/sh\nASAN_OPTIONS=handle_segv=0:detect_leaks=0:halt_on_error=1:log_path=%s/asan/report exec %s \"$@\"\n",
		dir, os.Getenv(asanBinEnv))
	return wrapper, os.WriteFile(wrapper, []byte(script), 0o755) //nolint:gosec // an executable script of the test's own
}

// start starts the server at the first input: the AddressSanitizer simulator and the
// worker binary, a model, a LoRA adapter, a FIFO where a model could be named.
func (z *fuzzServer) start(t *testing.T) {
	z.once.Do(func() { z.startErr = z.launch() })
	if z.startErr != nil {
		if os.Getenv("RKLLM_SIM_REQUIRED") == "" && strings.Contains(z.startErr.Error(), "make sim-asan") {
			t.Skip(z.startErr)
		}
		t.Fatal(z.startErr)
	}
}

func (z *fuzzServer) launch() error {
	lib, err := filepath.Abs(filepath.Join(simtest.Dir(), "librkllmrt-sim-asan-"+z.abi+".so"))
	if err != nil {
		return err
	}
	if _, err := os.Stat(lib); err != nil {
		return fmt.Errorf("the AddressSanitizer simulator %s is missing: `make sim-asan` builds it", lib)
	}
	for _, d := range []string{z.dir, z.asan} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := simulator.WriteModel(filepath.Join(z.dir, "model.rkllm"), simulator.FastModel()); err != nil {
		return err
	}
	if err := simulator.WriteLora(filepath.Join(z.dir, "chat.lora"), "chat"); err != nil {
		return err
	}
	if err := syscall.Mkfifo(filepath.Join(z.dir, "pipe.rkllm"), 0o600); err != nil {
		return err
	}
	exe, err := asanWrapper(filepath.Dir(z.asan))
	if err != nil {
		return err
	}
	var o config.Serve
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.BindFlags(fs)
	if err := o.Parse([]string{"--model", filepath.Join(z.dir, "model.rkllm"), "--model-dir", z.dir, "--runtime-lib", lib,
		"--runtime-abi", z.abi, "--listen", "127.0.0.1:0", "--probe-listen", "127.0.0.1:0", "--socket", z.sock, "--max-context-len", "4096",
		"--use-cross-attn", "1", "--lora", "chat=" + filepath.Join(z.dir, "chat.lora"), "--request-timeout", fuzzRequestTimeout.String(),
		"--restart-backoff-min", "10ms", "--restart-backoff-max", "100ms"}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	z.cancel, z.done = cancel, make(chan error, 1)
	go func() {
		z.done <- serve.Run(ctx, &o, logr.Discard(), serve.Options{Executable: exe, Version: "fuzz", Ready: func(a net.Addr) { addr <- a }})
	}()
	select {
	case a := <-addr:
		z.base = "http://" + a.String()
	case err := <-z.done:
		z.done <- err // for the cleanup, which waits for it
		return fmt.Errorf("serve: %w", err)
	case <-time.After(startTimeout):
		return fmt.Errorf("serve did not open its listeners within %s", startTimeout)
	}
	st, err := z.waitFor(func(st supervisor.Status) bool { return st.Ready }, startTimeout)
	if err != nil {
		return fmt.Errorf("the fuzz server did not get ready: %w", err)
	}
	z.pid, z.restarts = st.WorkerPID, st.Restarts
	return nil
}

// status reads /healthz.
func (z *fuzzServer) status() (supervisor.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, z.base+"/healthz", nil)
	resp, err := metricsClient.Do(req)
	if err != nil {
		return supervisor.Status{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	var st supervisor.Status
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitFor polls the status until cond holds.
func (z *fuzzServer) waitFor(cond func(supervisor.Status) bool, timeout time.Duration) (supervisor.Status, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		st, err := z.status()
		if err == nil && cond(st) {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("not within %s (last status %+v, %v)", timeout, st, err)
		}
		<-tick.C
	}
}

// send delivers one input on its transport and reads what comes back.
func (z *fuzzServer) send(t *testing.T, transport uint8, data []byte) {
	ctx, cancel := context.WithTimeout(t.Context(), fuzzIdle)
	defer cancel()
	switch transport {
	case fuzzRPC, fuzzOpenAI:
		path := map[uint8]string{fuzzRPC: "/rpc", fuzzOpenAI: "/v1/chat/completions"}[transport]
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, z.base+path, bytes.NewReader(data))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := metricsClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	case fuzzSocket:
		z.sendSocket(ctx, data)
	case fuzzRawTCP:
		nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(z.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = nc.Close() }()
		_ = nc.SetDeadline(time.Now().Add(fuzzIdle))
		_, _ = nc.Write(data)
		_ = nc.(*net.TCPConn).CloseWrite()
		_, _ = io.Copy(io.Discard, nc)
	}
}

// fuzzSentinel follows an input on the socket: requests of one connection are taken in
// the order sent, so its answer means every line before it has been taken.
const fuzzSentinel = `{"jsonrpc":"2.0","id":"fuzz-sentinel","method":"rkllm.get_constants"}`

func (z *fuzzServer) sendSocket(ctx context.Context, data []byte) {
	nc, err := (&net.Dialer{}).DialContext(ctx, "unix", z.sock)
	if err != nil {
		return // the connection cap: nothing reached the server
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(fuzzIdle))
	seen := make(chan struct{})
	go func() {
		defer close(seen)
		br := bufio.NewReaderSize(nc, 1<<16)
		for {
			line, err := br.ReadSlice('\n')
			if bytes.Contains(line, []byte(`"id":"fuzz-sentinel"`)) || (err != nil && err != bufio.ErrBufferFull) {
				return
			}
		}
	}()
	if len(data) == 0 || data[len(data)-1] != '\n' {
		data = append(data[:len(data):len(data)], '\n')
	}
	if _, err := nc.Write(append(data, fuzzSentinel+"\n"...)); err != nil {
		return
	}
	<-seen
	// What the input queued runs before the connection closes (which would abort it).
	_, _ = z.waitFor(func(st supervisor.Status) bool { return st.QueueDepth == 0 && !st.Running }, fuzzIdle)
}

// check fails the input when the worker crashed or restarted, AddressSanitizer
// reported an error, or the server did not come back to idle; then it puts back the
// model if the input destroyed it.
func (z *fuzzServer) check(t *testing.T) {
	st, idleErr := z.waitFor(func(st supervisor.Status) bool { return st.QueueDepth == 0 && !st.Running }, fuzzIdle)
	reports, _ := filepath.Glob(filepath.Join(z.asan, "report.*"))
	for _, r := range reports {
		b, _ := os.ReadFile(r)
		_ = os.Remove(r)
		t.Errorf("AddressSanitizer report from the worker (%s):\n%s", r, b)
	}
	if st.WorkerPID != z.pid || st.Restarts != z.restarts {
		t.Errorf("the worker %d died (%d restarts since; last exit: %s)", z.pid, st.Restarts-z.restarts, st.LastExit)
		// Judge the next input on its own, against the worker that replaced this one.
		if st, err := z.waitFor(func(st supervisor.Status) bool { return st.Ready }, fuzzIdle); err == nil {
			z.pid, z.restarts = st.WorkerPID, st.Restarts
		}
		return
	}
	if idleErr != nil {
		t.Fatalf("the server did not come back to idle: %v", idleErr)
	}
	if !st.ModelLoaded && st.WorkerUp {
		z.reload(t)
	}
}

// reload loads the model again after an input destroyed it (or loaded another).
func (z *fuzzServer) reload(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), fuzzIdle)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(ctx, "unix", z.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(fuzzIdle))
	init := `{"jsonrpc":"2.0","id":1,"method":"rkllm.init","params":{"param":{"model_path":"model.rkllm","max_context_len":4096,"extend_param":{"use_cross_attn":1}}}}` + "\n"
	if _, err := nc.Write([]byte(init)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(nc).ReadBytes('\n')
	if err != nil || !bytes.Contains(line, []byte(`"result":0`)) {
		t.Fatalf("reload the model: %s %v", line, err)
	}
}
