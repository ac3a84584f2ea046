// Package childproc starts the long-lived helper processes of the simulated node (the
// process runtime, the kubelet) as children that die with this process, in a process
// group of their own so that stopping one stops what it started.
package childproc

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Process is a started child.
type Process struct {
	PID  int
	done chan struct{}
	err  error
}

// Start starts cmd (its program, arguments, folder, environment and output set by the
// caller) in a process group of its own, killed when this process dies. Pdeathsig is
// tied to the thread that started the child, so that thread stays locked for the
// child's lifetime. ctx bounds the start only: the child outlives it (Stop and Pdeathsig
// end it), so cmd is made with exec.Command, not exec.CommandContext.
func Start(ctx context.Context, cmd *exec.Cmd) (*Process, error) {
	p := &Process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.PID = cmd.Process.Pid
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
			_ = p.Stop(0, syscall.SIGKILL)
		}
		return nil, ctx.Err()
	}
}

// Done is closed when the child has exited; Err then says how.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the child's exit error, once Done is closed.
func (p *Process) Err() error { return p.err }

// Stop sends sig to the child's process group (0: nothing, for a caller that asked the
// child to stop in its own way), SIGKILL after timeout, and waits for the child to exit.
func (p *Process) Stop(timeout time.Duration, sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-p.PID, sig)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := syscall.Kill(-p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing pid %d: %w", p.PID, err)
	}
	<-p.done
	return nil
}
