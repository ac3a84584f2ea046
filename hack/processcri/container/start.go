package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
)

// Process is a started container process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
	// status is how it ended (valid once done is closed).
	status syscall.WaitStatus
}

// StartOptions are what Start needs besides the Spec.
type StartOptions struct {
	// Self is the runtime's own binary, which has the InitCommand subcommand.
	Self string
	// Stdout and Stderr receive the container's output (the write ends of pipes the
	// runtime reads; closed by the caller after Start returns).
	Stdout, Stderr *os.File
	// CgroupFD, when not negative, is the cgroup folder the process starts in.
	CgroupFD int
}

// Start starts the container's init process and returns once it has exec'd the
// container's program, or the reason it could not.
func Start(spec *Spec, opts StartOptions) (*Process, error) {
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer func() { _ = specR.Close(); _ = specW.Close() }()
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer func() { _ = syncR.Close(); _ = syncW.Close() }()

	// Not CommandContext: the container outlives the request that started it.
	cmd := exec.Command(opts.Self, InitCommand) //nolint:noctx,gosec // the runtime's own binary
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stderr
	cmd.ExtraFiles = []*os.File{specR, syncW} // fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// A mount namespace for its root, and a PID namespace whose init the program
		// becomes: when it ends, the kernel ends everything it started.
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
	}
	if opts.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = opts.CgroupFD
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the container's init: %w", err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go p.wait()
	_ = specR.Close()
	_ = syncW.Close()
	_, werr := specW.Write(data)
	_ = specW.Close()
	// EOF without a message: the exec happened (it closed the last write end).
	msg, rerr := io.ReadAll(io.LimitReader(syncR, 64<<10))
	if len(msg) > 0 || rerr != nil || werr != nil {
		_ = cmd.Process.Kill()
		<-p.done
		if len(msg) > 0 {
			return nil, errors.New(string(msg))
		}
		return nil, fmt.Errorf("starting the container: %w", errors.Join(werr, rerr))
	}
	return p, nil
}

func (p *Process) wait() {
	_ = p.cmd.Wait()
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		p.status = ws
	}
	close(p.done)
}

// PID is the process id (in the runtime's PID namespace).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitCode is how the process ended as a container runtime reports it: its exit code,
// or 128 plus the signal that killed it.
func (p *Process) ExitCode() int32 {
	if p.status.Signaled() {
		return 128 + int32(p.status.Signal()) //nolint:gosec // signal numbers are small
	}
	return int32(p.status.ExitStatus()) //nolint:gosec // an exit status fits
}

// Signal sends sig to the process (a no-op once it has ended).
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}
