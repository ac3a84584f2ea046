package processcri

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// NodeInitCommand is the subcommand of the runtime's binary that is PID 1 of the
// node's PID namespace.
const NodeInitCommand = "node-init"

// NodeInit is PID 1 of the node's PID namespace: it starts the runtime (args), passes
// SIGTERM and SIGINT on to it, and reaps every process the kernel hands it. Orphans go
// to PID 1 (a command ExecSync started, whose nsenter was killed at its timeout, is
// one), and a container's PID namespace cannot finish dying while one of its processes
// is an unreaped zombie, so this cannot be the runtime itself: its os/exec waits would
// race a reaper. It returns the runtime's exit status; when it returns, the kernel ends
// every process left in the namespace.
func NodeInit(args []string) (int, error) {
	if len(args) == 0 {
		return 2, errors.New("node-init needs the runtime's command line")
	}
	// Signals first, so none arrives between the start and the handler.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	proc, err := os.StartProcess(args[0], args, &os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr}})
	if err != nil {
		return 1, fmt.Errorf("starting the runtime: %w", err)
	}
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			_ = proc.Signal(sig)
			continue
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
			if pid == proc.Pid {
				if ws.Signaled() {
					return 128 + int(ws.Signal()), nil
				}
				return ws.ExitStatus(), nil
			}
		}
	}
	return 1, nil
}
