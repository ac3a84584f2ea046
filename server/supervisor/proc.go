package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/rawconn"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// stderrTail is how many of the worker's last stderr lines a crash report keeps.
const stderrTail = 20

// maxLogLine bounds one line of worker output; longer lines are cut.
const maxLogLine = 64 << 10

// reapTimeout bounds the wait for a killed worker to be reaped. A process blocked in
// the kernel (a wedged NPU driver) does not die from SIGKILL until the call returns;
// the supervisor then goes on without it rather than wait for good.
const reapTimeout = 2 * time.Second

// logDrainTimeout bounds reading the worker's last output after it exited: a process it
// started may hold the pipe open.
const logDrainTimeout = time.Second

// proc is one running worker process.
type proc struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc // kills the process (exec.Cmd.Cancel)
	client *workerproto.Client
	hello  *workerproto.Hello
	// handoff passes client sockets for runs whose tokens the worker writes itself.
	handoff *workerproto.Handoff
	started time.Time
	log     logr.Logger

	exited chan struct{} // closed when the process has been reaped
	exit   *ExitInfo     // valid after exited is closed
	killed atomic.Bool

	mu sync.Mutex
	// unresponsive says why the supervisor killed the worker as unresponsive ("" if it
	// did not): the requests it was serving get a timeout, not a crash.
	unresponsive string
	tail         []string      // last stderr lines
	lines        int           // lines logged so far
	added        chan struct{} // closed (and replaced) when a line is added
	// fatal is the signal a Go crash report named ("SIGSEGV: segmentation violation"
	// from a fault inside the runtime), which the exit status alone does not show.
	fatal string
}

// fatalSignal matches the first line of the Go runtime's report of a fatal signal.
var fatalSignal = regexp.MustCompile(`^(SIG[A-Z]+): `)

// procOptions are the bounds of one worker process.
type procOptions struct {
	maxFrame     int
	helloTimeout time.Duration
	// liveness is how long the worker may go without a sign of life (any frame, a
	// heartbeat's answer included) before it is killed as unresponsive; it also bounds
	// how long a request may wait to be taken by the worker. heartbeat is how long the
	// worker may be quiet before it is pinged.
	liveness, heartbeat time.Duration
}

// startProc starts the worker with one end of a socketpair as its fd 3 and waits for
// its Hello. newCmd builds the command with exec.CommandContext on the context it is
// given, which lives as long as the process (cancelling it kills the process).
func startProc(ctx context.Context, newCmd func(context.Context) *exec.Cmd, o procOptions, log logr.Logger) (*proc, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	parent := os.NewFile(uintptr(fds[0]), "worker-supervisor")
	child := os.NewFile(uintptr(fds[1]), "worker-child")
	// Only the worker may hold the child's end: the supervisor sees EOF when it dies.
	defer func() { _ = child.Close() }()
	nc, err := net.FileConn(parent)
	_ = parent.Close() // FileConn dups it
	if err != nil {
		return nil, fmt.Errorf("socketpair conn: %w", err)
	}
	nc = rawconn.Wrap(nc) // a token's frame read without waking the scheduler's monitor
	handoff, handoffChild, err := workerproto.NewHandoffPair()
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	handoffFile := os.NewFile(uintptr(handoffChild), "worker-handoff")
	defer func() { _ = handoffFile.Close() }()

	outR, outW, err := os.Pipe()
	if err != nil {
		_ = nc.Close()
		_ = unix.Close(handoff)
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	procCtx, cancel := context.WithCancel(context.Background())
	cmd := newCmd(procCtx)
	p := &proc{cmd: cmd, cancel: cancel, exited: make(chan struct{}), log: log, added: make(chan struct{}), handoff: workerproto.NewHandoff(handoff)}
	cmd.ExtraFiles = []*os.File{child, handoffFile}
	// The runtime prints to both streams; both become log entries.
	cmd.Stdout, cmd.Stderr = outW, outW
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// The worker must not outlive the supervisor (a second SIGTERM exits at once).
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		_ = nc.Close()
		_ = p.handoff.Close()
		_ = outR.Close()
		_ = outW.Close()
		return nil, fmt.Errorf("start worker %s: %w", cmd.Path, err)
	}
	_ = outW.Close()
	_ = child.Close()
	_ = handoffFile.Close()
	p.started = time.Now()
	p.log = log.WithValues("worker_pid", cmd.Process.Pid)
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		p.copyLogs(outR)
	}()
	go func() {
		err := cmd.Wait()
		select {
		case <-logsDone:
		case <-time.After(logDrainTimeout):
			_ = outR.Close() // ends copyLogs
			<-logsDone
		}
		cancel()
		_ = p.handoff.Close()
		p.exit = p.exitInfo(err)
		close(p.exited)
	}()
	p.client = workerproto.NewClient(workerproto.NewConn(nc, o.maxFrame), workerproto.ClientOptions{WriteTimeout: o.liveness})
	hctx, hcancel := context.WithTimeout(ctx, o.helloTimeout)
	defer hcancel()
	p.hello, err = p.client.Hello(hctx)
	if err != nil {
		p.kill()
		exit := p.reaped()
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("worker did not start within %s: %s", o.helloTimeout, exit.summary())
		}
		return nil, fmt.Errorf("worker failed to start: %s", exit.summary())
	}
	go p.watchLiveness(o.heartbeat, o.liveness)
	return p, nil
}

// watchLiveness kills the worker when it shows no sign of life for timeout: no frame of
// any kind, and no answer to the Ping it is sent after being quiet for interval (at
// most one in flight). A Ping is answered by the worker's own goroutines whatever the
// runtime is doing, so only a process that is stopped (SIGSTOP, a debugger), wedged as
// a whole or not reading its socket misses it. This runs on a goroutine of its own,
// apart from the executor and the writer, so nothing it watches can block it.
func (p *proc) watchLiveness(interval, timeout time.Duration) {
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var ping *workerproto.Pending
	for {
		select {
		case <-p.client.Done():
			return
		case <-timer.C:
		}
		quiet := time.Since(p.client.LastHeard())
		if quiet >= timeout {
			p.killUnresponsive(fmt.Sprintf("the worker showed no sign of life for %s (stopped, or not reading its socket)", quiet.Round(time.Millisecond)))
			return
		}
		if quiet >= interval && (ping == nil || isDone(ping.Done())) {
			ping, _ = p.client.Start(&workerproto.Ping{}, nil)
		}
		timer.Reset(max(min(interval, timeout-quiet), time.Millisecond))
	}
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// killUnresponsive kills the worker, noting why.
func (p *proc) killUnresponsive(reason string) {
	p.mu.Lock()
	if p.unresponsive == "" {
		p.unresponsive = reason
	}
	p.mu.Unlock()
	p.log.Error(nil, "killing the worker: it is unresponsive", "reason", reason)
	p.kill()
}

// unresponsiveReason says why the worker was killed as unresponsive, or "". A client
// whose write timed out (the worker did not read a request in time) counts: the worker
// is killed then.
func (p *proc) unresponsiveReason() string {
	p.mu.Lock()
	reason := p.unresponsive
	p.mu.Unlock()
	if reason != "" {
		return reason
	}
	if err := p.client.Err(); errors.Is(err, workerproto.ErrWriteTimeout) {
		p.killUnresponsive(err.Error())
		return p.unresponsiveReason()
	}
	return ""
}

// reaped waits up to reapTimeout for the process to be reaped and returns how it ended;
// a process not reaped yet is reported as killed (and left to be reaped later).
func (p *proc) reaped() *ExitInfo {
	timeout := reapTimeout
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.exited:
		return p.exit
	case <-timer.C:
	}
	p.log.Error(nil, "the worker has not ended after SIGKILL (blocked in the kernel?); going on without it", "waited", timeout.String())
	info := &ExitInfo{PID: p.cmd.Process.Pid, ExitCode: -1, Signal: "SIGKILL"}
	p.mu.Lock()
	info.Stderr = append(append(info.Stderr, p.tail...), "not reaped: the process had not ended "+timeout.String()+" after SIGKILL")
	p.mu.Unlock()
	return info
}

// summary is one line for logs and readiness: the exit and the worker's last words.
func (e *ExitInfo) summary() string {
	s := e.String()
	if n := len(e.Stderr); n > 0 {
		s += ": " + e.Stderr[n-1]
	}
	return s
}

// kill ends the process at once (SIGKILL through exec.Cmd.Cancel) and closes the
// connection, so every request waiting on it ends even when the process cannot die
// at once.
func (p *proc) kill() {
	p.killed.Store(true)
	p.cancel()
	_ = p.client.Close()
}

// isKilled reports whether kill was called.
func (p *proc) isKilled() bool { return p.killed.Load() }

// alive reports whether the process has not been reaped yet.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) exitInfo(waitErr error) *ExitInfo {
	info := &ExitInfo{PID: p.cmd.Process.Pid, ExitCode: -1}
	if st := p.cmd.ProcessState; st != nil {
		info.ExitCode = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			info.Signal = unix.SignalName(ws.Signal())
		}
	} else if waitErr != nil {
		info.Stderr = append(info.Stderr, waitErr.Error())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fatal != "" && (info.Signal == "" || info.Signal == "SIGABRT") {
		info.Signal = p.fatal
	}
	info.Stderr = append(info.Stderr, p.tail...)
	return info
}

// copyLogs turns each line the worker writes into a log entry: the worker's own JSON log
// lines keep their level and attributes, the runtime's "I rkllm: ..." lines get the
// level of their first letter, anything else is logged as is.
func (p *proc) copyLogs(r io.ReadCloser) {
	defer func() { _ = r.Close() }()
	br := bufio.NewReaderSize(r, 4096)
	for {
		line, err := readLine(br, maxLogLine)
		if line != "" {
			p.logLine(line)
		}
		if err != nil {
			return
		}
	}
}

// readLine reads one line, cutting it at max bytes (the rest of the line is dropped).
func readLine(br *bufio.Reader, max int) (string, error) {
	var b []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(b) < max {
			b = append(b, frag[:min(len(frag), max-len(b))]...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return strings.TrimRight(string(b), "\r\n"), err
	}
}

func (p *proc) logLine(line string) {
	p.mu.Lock()
	if len(p.tail) == stderrTail {
		copy(p.tail, p.tail[1:])
		p.tail = p.tail[:stderrTail-1]
	}
	p.tail = append(p.tail, line)
	p.lines++
	close(p.added)
	p.added = make(chan struct{})
	if m := fatalSignal.FindStringSubmatch(line); m != nil && p.fatal == "" {
		p.fatal = m[1]
	}
	p.mu.Unlock()

	if strings.HasPrefix(line, "{") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil {
			if msg, ok := entry["msg"].(string); ok {
				p.logEntry(msg, entry)
				return
			}
		}
	}
	log := p.log.WithValues("source", "runtime")
	if len(line) > 2 && line[1] == ' ' {
		switch line[0] {
		case 'E':
			log.Error(nil, line[2:])
			return
		case 'W':
			log.Info(line[2:], "severity", "warning")
			return
		case 'D':
			log.V(1).Info(line[2:])
			return
		case 'I':
			log.Info(line[2:])
			return
		}
	}
	log.Info(line)
}

// logEntry re-emits a JSON log line of the worker (log/slog's JSON format).
func (p *proc) logEntry(msg string, entry map[string]any) {
	level, _ := entry["level"].(string)
	kv := make([]any, 0, 2*len(entry))
	var errVal error
	for k, v := range entry {
		switch k {
		case "time", "level", "msg", "source":
		case "error", "err":
			errVal = fmt.Errorf("%v", v)
		default:
			kv = append(kv, k, v)
		}
	}
	log := p.log.WithValues("source", "worker")
	switch {
	case strings.HasPrefix(level, "ERROR"):
		log.Error(errVal, msg, kv...)
	case strings.HasPrefix(level, "DEBUG"):
		log.V(1).Info(msg, kv...)
	default:
		if errVal != nil {
			kv = append(kv, "error", errVal.Error())
		}
		log.Info(msg, kv...)
	}
}

// mark returns the number of lines logged so far, for runtimeError.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lines
}

// runtimeError returns the last error line ("E rkllm: ...") the worker printed after
// mark, waiting up to grace for it: the runtime prints its reason on stderr before the
// failing call returns, but that stream is read apart from the protocol socket.
func (p *proc) runtimeError(mark int, grace time.Duration) string {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	for {
		p.mu.Lock()
		added := p.added
		n := min(p.lines-mark, len(p.tail))
		for i := len(p.tail) - 1; i >= len(p.tail)-n; i-- {
			if line := p.tail[i]; strings.HasPrefix(line, "E ") {
				p.mu.Unlock()
				return strings.TrimSpace(line[2:])
			}
		}
		p.mu.Unlock()
		select {
		case <-added:
		case <-timer.C:
			return ""
		case <-p.exited:
			return ""
		}
	}
}
