package edgecluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Process is a child process that dies with this process: Pdeathsig is tied to the
// thread that started it, so that thread stays locked for the child's lifetime.
type Process struct {
	// Name names the process in logs and errors.
	Name string
	// Log is the file the process writes to.
	Log string

	pid  int
	done chan struct{}
	err  error
}

// startProcess starts name with args, its output appended to logPath, in its own
// process group (so a stop reaches its children too).
func startProcess(ctx context.Context, dir, name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	p := &Process{Name: name, Log: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer func() { _ = logFile.Close() }()
		// Not CommandContext: the process outlives Start's context; Stop and Pdeathsig end it.
		cmd := exec.Command(bin, args...) //nolint:noctx,gosec // binaries and arguments from the harness
		cmd.Env = append(os.Environ(), env...)
		cmd.Dir = dir // never the caller's folder (a repository)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("starting %s: %w", name, err)
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	select {
	case err := <-started:
		if err != nil {
			return nil, err
		}
		return p, nil
	case <-ctx.Done():
		if err := <-started; err == nil {
			_ = p.Stop(0)
		}
		return nil, ctx.Err()
	}
}

// PID is the process id.
func (p *Process) PID() int { return p.pid }

// Exited is closed when the process ends.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Err is how the process ended (valid after Exited is closed).
func (p *Process) Err() error { return p.err }

// Stop sends SIGTERM to the process group and SIGKILL after timeout; it returns when the
// process has exited.
func (p *Process) Stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := syscall.Kill(-p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s (pid %d): %w", p.Name, p.pid, err)
	}
	<-p.done
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
