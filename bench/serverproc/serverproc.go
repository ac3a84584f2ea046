// Package serverproc runs rkllm-server on the RKLLM simulator for the benchmarks and
// the soak test under bench/: a model file, a configuration, the process, and what can
// be read of it from outside (readiness, resident memory, descriptors, metrics).
package serverproc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// Options say what to run.
type Options struct {
	// Server is the rkllm-server binary; SimDir holds librkllmrt-sim-<ABI>.so.
	Server, SimDir, ABI string
	// Dir is a folder of the caller's for the model, configuration and socket.
	Dir string
	// Model is the simulator model to serve.
	Model simulator.Model
	// Config adds to (or, with nil values, removes from) the configuration.
	Config map[string]any
	// Env adds to the server's environment.
	Env []string
}

// Build builds rkllm-server into out, with go build's extra flags (-race, -asan), for
// the tests and benchmarks that run it.
func Build(ctx context.Context, out string, flags ...string) error {
	args := append(append([]string{"build"}, flags...), "-o", out, "github.com/rkllm-operator/rkllm-operator/cmd/rkllm-server")
	cmd := exec.CommandContext(ctx, "go", args...)  //nolint:gosec // go build of this module with the caller's flags
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1") // the binding is cgo
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// Server is a running rkllm-server.
type Server struct {
	// Base is the HTTP address (http://host:port), Probes the probe listener's (health
	// and metrics), Socket the Unix socket's path.
	Base, Probes, Socket string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited, with exitErr set
	exitErr error
	stderr  *bytes.Buffer
	http    *http.Client
	stopped bool
}

// Start writes the model and configuration and starts the server, waiting until it is
// ready.
func Start(o Options) (*Server, error) {
	lib, err := filepath.Abs(filepath.Join(o.SimDir, "librkllmrt-sim-"+o.ABI+".so"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	model := filepath.Join(o.Dir, "model.rkllm")
	if err := simulator.WriteModel(model, o.Model); err != nil {
		return nil, err
	}
	addr, probeAddr, err := freeAddrs()
	if err != nil {
		return nil, err
	}
	s := &Server{Base: "http://" + addr, Probes: "http://" + probeAddr, Socket: filepath.Join(o.Dir, "s.sock"), exited: make(chan struct{}), stderr: &bytes.Buffer{},
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	cfg := map[string]any{"model": model, "model-dir": o.Dir, "runtime-lib": lib, "runtime-abi": o.ABI, "listen": addr, "probe-listen": probeAddr, "socket": s.Socket, "log-level": "error"}
	for k, v := range o.Config {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	raw, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(o.Dir, "server.json")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		return nil, err
	}
	s.cmd = exec.CommandContext(context.Background(), o.Server, "serve", "--config", cfgPath) //nolint:gosec // the benchmarked binary
	s.cmd.Env = append(os.Environ(), o.Env...)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		s.exitErr = s.cmd.Wait()
		close(s.exited)
	}()
	deadline := time.After(time.Minute)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if st, err := s.Status(); err == nil && st.Ready {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("the server exited (%v): %s", s.exitErr, s.stderr)
		case <-deadline:
			s.Stop()
			return nil, fmt.Errorf("the server was not ready within a minute: %s", s.stderr)
		case <-tick.C:
		}
	}
}

// Stop sends SIGTERM and waits for the exit (killing it after 30 s).
func (s *Server) Stop() {
	if s.stopped {
		return
	}
	s.stopped = true
	if err := s.cmd.Process.Signal(unix.SIGTERM); err != nil {
		return // it has exited already
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		if err := s.cmd.Process.Kill(); err == nil {
			<-s.exited
		}
	}
}

// Status is part of /readyz.
type Status struct {
	Ready     bool `json:"ready"`
	WorkerPID int  `json:"worker_pid"`
	Restarts  int  `json:"worker_restarts"`
}

// Status reads /readyz.
func (s *Server) Status() (Status, error) {
	var st Status
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Probes+"/readyz", nil)
	resp, err := s.http.Do(req)
	if err != nil {
		return st, err
	}
	defer func() { _ = resp.Body.Close() }()
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// HTTP is a client for the server's HTTP address.
func (s *Server) HTTP() *http.Client { return s.http }

// PID is the supervisor's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// RSS returns the resident memory of the supervisor and of its worker, in bytes.
func (s *Server) RSS() (supervisor, worker int64, err error) {
	st, err := s.Status()
	if err != nil {
		return 0, 0, err
	}
	if supervisor, err = VMRSS(s.PID()); err != nil {
		return 0, 0, err
	}
	worker, err = VMRSS(st.WorkerPID)
	return supervisor, worker, err
}

// FDs counts the supervisor's open descriptors.
func (s *Server) FDs() (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.PID()))
	return len(entries), err
}

// Metric reads one sample of /metrics by its full name (labels included).
func (s *Server) Metric(name string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Probes+"/metrics", nil)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// VMRSS is a process's resident memory in bytes.
func VMRSS(pid int) (int64, error) { return procStatus(pid, "VmRSS") }

// PeakRSS is the supervisor's highest resident memory so far (VmHWM), in bytes.
func (s *Server) PeakRSS() (int64, error) { return procStatus(s.PID(), "VmHWM") }

// procStatus reads a memory figure (in kB) of /proc/PID/status, in bytes.
func procStatus(pid int, field string) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no " + field)
}

// Machine writes what the numbers were measured on.
func Machine(w io.Writer) {
	model := "unknown CPU"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var load string
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	_, _ = fmt.Fprintf(w, "Machine: %s, %d CPUs (%s/%s), %s, load average %s, %s\n", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH,
		runtime.Version(), load, time.Now().UTC().Format("2006-01-02"))
}

// MiB is bytes in MiB.
func MiB(b int64) float64 { return float64(b) / (1 << 20) }

// Dial connects to addr (the server's socket or HTTP address).
func Dial(network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(context.Background(), network, addr)
}

// freeAddrs are two loopback addresses with ports free now.
func freeAddrs() (string, string, error) {
	a, err := freeAddr()
	if err != nil {
		return "", "", err
	}
	b, err := freeAddr()
	return a, b, err
}

// freeAddr is a loopback address with a port free now.
func freeAddr() (string, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String(), nil
}

// WorkerPID is the worker's process id (from /readyz).
func (s *Server) WorkerPID() (int, error) {
	st, err := s.Status()
	return st.WorkerPID, err
}

// PSS is a process's proportional set size (/proc/PID/smaps_rollup), in bytes: its
// private pages, and its share of the pages it maps with other processes (the
// supervisor and its worker run one binary), so that the PSS of two processes add up
// to the memory they hold together.
func PSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no Pss in smaps_rollup")
}

// AnonRSS is a process's anonymous resident memory (RssAnon: its heaps and stacks,
// not the binary and libraries it maps), in bytes.
func AnonRSS(pid int) (int64, error) { return procStatus(pid, "RssAnon") }

// Usage is what a process has used so far: CPU time (all its threads, ended ones
// included) and the context switches of its threads alive now (voluntary, a thread
// waiting; involuntary, a thread preempted).
type Usage struct {
	CPU                    time.Duration
	Voluntary, Involuntary int64
}

// Sub is the usage between two readings.
func (u Usage) Sub(before Usage) Usage {
	return Usage{CPU: u.CPU - before.CPU, Voluntary: u.Voluntary - before.Voluntary, Involuntary: u.Involuntary - before.Involuntary}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on Linux).
const clockTicks = 100

// ReadUsage reads a process's CPU time (/proc/PID/stat, in ticks of 10 ms) and sums
// the context switches of its threads (/proc/PID/task/*/status). A thread that ended
// takes its switches with it: the runtime's run thread, for one.
func ReadUsage(pid int) (Usage, error) {
	var u Usage
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The fields after the command (which may hold spaces) in parentheses; utime and
	// stime are the 14th and 15th of the line.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return u, err
	}
	for _, task := range tasks {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread ended
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.Voluntary += n
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				u.Involuntary += n
			}
		}
	}
	return u, nil
}
