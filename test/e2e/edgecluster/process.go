package edgecluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/rkllm-operator/rkllm-operator/hack/childproc"
)

// Process is a child process that dies with this process (childproc).
type Process struct {
	// Name names the process in logs and errors.
	Name string
	// Log is the file the process writes to.
	Log string

	proc *childproc.Process
}

// startProcess starts name with args, its output appended to logPath, in its own
// process group (so a stop reaches its children too).
func startProcess(ctx context.Context, dir, name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...) //nolint:noctx,gosec // binaries and arguments from the harness; outlives ctx, Stop and Pdeathsig end it
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir // never the caller's folder (a repository)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	proc, err := childproc.Start(ctx, cmd)
	if err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		<-proc.Done()
		_ = logFile.Close()
	}()
	return &Process{Name: name, Log: logPath, proc: proc}, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.proc.PID }

// Exited is closed when the process ends.
func (p *Process) Exited() <-chan struct{} { return p.proc.Done() }

// Err is how the process ended (valid after Exited is closed).
func (p *Process) Err() error { return p.proc.Err() }

// Stop sends SIGTERM to the process group and SIGKILL after timeout; it returns when the
// process has exited.
func (p *Process) Stop(timeout time.Duration) error {
	if err := p.proc.Stop(timeout, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping %s: %w", p.Name, err)
	}
	return nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
