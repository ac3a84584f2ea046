package supervisor

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Errors the supervisor returns; callers (the JSON-RPC methods) map them to codes.
var (
	// ErrQueueFull: the queue holds MaxQueue requests already (when MaxQueue is set).
	ErrQueueFull = errors.New("queue full")
	// ErrModelNotLoaded: the request needs a model and none is loaded.
	ErrModelNotLoaded = errors.New("model not loaded")
	// ErrAlreadyLoaded: init while another model is loaded.
	ErrAlreadyLoaded = errors.New("a model is already loaded")
	// ErrShuttingDown: the supervisor is draining or closed.
	ErrShuttingDown = errors.New("shutting down")
	// ErrAborted: the request was aborted (by rkllm.abort or its client going away)
	// before it produced a result.
	ErrAborted = errors.New("aborted")
	// ErrTimeout: the request ran out of time (its deadline, a token stall, or a
	// worker that stopped answering).
	ErrTimeout = errors.New("timed out")
	// ErrCrashed: the worker died while serving the request.
	ErrCrashed = errors.New("runtime crashed")
	// ErrNoSuchRequest: rkllm.abort named a request the caller does not have.
	ErrNoSuchRequest = errors.New("no such request")
	// ErrNeedsReload: Retune on a runtime that takes sampling only when the model
	// loads (a restart of the server applies the change).
	ErrNeedsReload = errors.New("the runtime takes this only when the model loads")
	// ErrTooLarge: a request does not fit in one frame of the worker protocol (the
	// worker is unharmed). A run whose result does not fit fails with a
	// *workerproto.ResultTooLargeError instead.
	ErrTooLarge = errors.New("request too large")
)

// tooLarge explains a request refused by the worker protocol's frame limit.
func tooLarge(err error) error {
	var fe *workerproto.FrameTooLargeError
	if errors.As(err, &fe) {
		return fmt.Errorf("%w: the %s request takes %d bytes, over the %d bytes one worker frame carries (--max-frame-bytes)", ErrTooLarge, fe.Op, fe.Size, fe.Limit)
	}
	return fmt.Errorf("%w: %w", ErrTooLarge, err)
}

// ExitInfo describes how a worker process ended.
type ExitInfo struct {
	PID      int    `json:"pid"`
	ExitCode int    `json:"exit_code"`        // -1 when killed by a signal
	Signal   string `json:"signal,omitempty"` // e.g. "SIGSEGV": the signal that killed it, or the fatal signal its crash report names
	// Stderr holds the last lines the worker wrote to stderr before it died.
	Stderr []string `json:"stderr,omitempty"`
}

func (e *ExitInfo) String() string {
	switch {
	case e == nil:
		return "worker exited"
	case e.Signal != "" && e.ExitCode < 0:
		return fmt.Sprintf("worker %d killed by %s", e.PID, e.Signal)
	case e.Signal != "":
		return fmt.Sprintf("worker %d exited with code %d after %s", e.PID, e.ExitCode, e.Signal)
	}
	return fmt.Sprintf("worker %d exited with code %d", e.PID, e.ExitCode)
}

// CrashError is ErrCrashed with the worker's exit details.
type CrashError struct{ Exit *ExitInfo }

func (e *CrashError) Error() string { return "runtime crashed: " + e.Exit.String() }

// Unwrap makes errors.Is(err, ErrCrashed) true.
func (e *CrashError) Unwrap() error { return ErrCrashed }

// GiveUpError is why the supervisor gave up on its worker: MaxWorkerFailures workers
// in a row failed, none of them up for HealthyAfter.
type GiveUpError struct {
	// Failures is how many workers in a row failed.
	Failures int
	// HealthyAfter is how long none of them stayed up.
	HealthyAfter time.Duration
	// LastExit is how the last one ended, with the last line it wrote to stderr.
	LastExit string
}

func (e *GiveUpError) Error() string {
	return fmt.Sprintf("the worker failed %d times in a row, none of them up for %s; the last: %s", e.Failures, e.HealthyAfter, e.LastExit)
}

// TimeoutError is ErrTimeout with what ran out.
type TimeoutError struct {
	// Reason is "request timeout", "token stall" or "worker unresponsive".
	Reason string
	// After is the limit that was exceeded, as configured.
	After string
	// WorkerKilled is true when the worker had to be killed.
	WorkerKilled bool
	// AbortSent is true when an abort was sent before the kill (it did not end the
	// run); false when the worker was killed without one (a call that never returned).
	AbortSent bool
}

func (e *TimeoutError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "timed out: %s (%s)", e.Reason, e.After)
	switch {
	case e.WorkerKilled && e.AbortSent:
		b.WriteString("; abort did not stop the runtime, so the worker was killed and is restarting")
	case e.WorkerKilled:
		b.WriteString("; the worker was killed and is restarting")
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrTimeout) true.
func (e *TimeoutError) Unwrap() error { return ErrTimeout }
