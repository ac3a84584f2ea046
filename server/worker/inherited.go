//go:build cgo

package worker

import (
	"context"
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/memlimit"
	"github.com/rkllm-operator/rkllm-operator/server/rawconn"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// InheritedFD is the descriptor on which the supervisor hands the worker its end of
// the socketpair (the first of exec.Cmd.ExtraFiles).
const InheritedFD = 3

// HandoffFD is the worker's end of the workerproto.Handoff on which the supervisor
// passes client sockets (the second of exec.Cmd.ExtraFiles).
const HandoffFD = 4

// ServeInherited serves the supervisor on InheritedFD until it closes the connection.
func ServeInherited(ctx context.Context, rt Runtime, library string, maxFrame int, log logr.Logger) error {
	f := os.NewFile(InheritedFD, "supervisor")
	if f == nil {
		return fmt.Errorf("fd %d is not open: the worker must be started by rkllm-server serve", InheritedFD)
	}
	// Out of the poller, its frames written without waking the scheduler's monitor: a
	// token costs the worker no wake-up but the runtime's callback (rawconn.Socket).
	sock, err := rawconn.NewSocket(f)
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("fd %d is not the supervisor's socket (the worker must be started by rkllm-server serve): %w", InheritedFD, err)
	}
	conn := workerproto.NewConn(sock, maxFrame)
	defer func() { _ = conn.Close() }()
	tokens, err := workerproto.NewFrameSink(conn, f)
	if err != nil {
		return err
	}
	w := New(rt, library, conn, log)
	w.TrimAfterLarge(memlimit.NewTrimmer(runtime.ReleaseFreeMemory))
	w.WriteTokensWith(tokens)
	if _, err := unix.GetsockoptInt(HandoffFD, unix.SOL_SOCKET, unix.SO_TYPE); err == nil {
		handoff := workerproto.NewHandoff(HandoffFD)
		defer func() { _ = handoff.Close() }()
		w.WriteToClients(handoff)
	}
	err = w.Serve(ctx) // every run has ended when Serve returns
	tokens.Close()
	return err
}
