package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// gaveUp waits for the supervisor to give up and returns why.
func gaveUp(t *testing.T, s *Supervisor) *GiveUpError {
	t.Helper()
	select {
	case <-s.Failed():
	case <-time.After(waitTimeout):
		t.Fatalf("the supervisor did not give up within %s: %+v", waitTimeout, s.Status())
	}
	var ge *GiveUpError
	if err := s.Err(); !errors.As(err, &ge) {
		t.Fatalf("Err() = %v after Failed, want a *GiveUpError", err)
	}
	return ge
}

// TestGiveUpOnWorkerThatCannotStart: a worker that exits before its Hello (a runtime
// library that does not load) is retried MaxWorkerFailures times in all, then the
// supervisor gives up, naming the worker's last words; it is not ready and refuses
// requests with the reason.
func TestGiveUpOnWorkerThatCannotStart(t *testing.T) {
	o := testOptions(t, runtime.ABI13)
	o.MaxWorkerFailures = 3
	o.Command = func(ctx context.Context) *exec.Cmd {
		return exec.CommandContext(ctx, "sh", "-c", `echo "E worker: cannot load the runtime library: librkllmrt.so: cannot open shared object file" >&2; exit 1`)
	}
	rec := &restarts{}
	o.Observer = rec
	s := start(t, o)
	ge := gaveUp(t, s)
	if ge.Failures != 3 || ge.HealthyAfter != time.Minute || !strings.Contains(ge.LastExit, "cannot load the runtime library") {
		t.Errorf("gave up with %+v; want 3 failures, the 1m healthy period and the worker's last stderr line", ge)
	}
	if got := rec.seen(); fmt.Sprint(got) != "[start_failed start_failed start_failed]" {
		t.Errorf("restart causes %v, want three failed starts", got)
	}
	st := s.Status()
	if st.Ready || !strings.Contains(st.Reason, "giving up") || !strings.Contains(st.Reason, "cannot load the runtime library") {
		t.Errorf("status after giving up %+v; want not ready, saying why", st)
	}
	_, err := s.Enqueue(context.Background(), Request{Owner: "c1", Msg: &workerproto.Run{Inputs: []runtime.Input{{Type: runtime.InputPrompt, Prompt: "x"}}}})
	if !errors.Is(err, ErrShuttingDown) || !errors.As(err, &ge) {
		t.Errorf("a request after giving up: %v, want ErrShuttingDown with the reason", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after giving up: %v", err)
	}
}

// TestGiveUpOnCrashLoop: runs that crash the worker each time, none of the workers up
// for HealthyAfter: after MaxWorkerFailures crashes the supervisor gives up, and the
// request queued behind the last crash is answered with the reason instead of waiting
// for a worker that will not come.
func TestGiveUpOnCrashLoop(t *testing.T) {
	o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
	o.MaxWorkerFailures = 3
	s := start(t, o)
	ctx := context.Background()
	for i := range 3 {
		waitReady(t, s)
		crash, err := startRun(ctx, t, s, "c1", "crash", "!crash@1", runtime.InferParams{})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		var queued *run
		if i == 2 {
			if queued, err = startRun(ctx, t, s, "c2", "queued", "x", runtime.InferParams{}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := wait(t, crash.t); !errors.Is(err, ErrCrashed) {
			t.Fatalf("crashing run %d: %v, want ErrCrashed", i, err)
		}
		if i < 2 {
			select {
			case <-s.Failed():
				t.Fatalf("gave up after %d crashes, want 3: %v", i+1, s.Err())
			default:
			}
			continue
		}
		var ge *GiveUpError
		if _, err := wait(t, queued.t); !errors.Is(err, ErrShuttingDown) || !errors.As(err, &ge) {
			t.Errorf("the run queued behind the last crash: %v, want ErrShuttingDown with the reason", err)
		}
	}
	ge := gaveUp(t, s)
	if ge.Failures != 3 || !strings.Contains(ge.LastExit, "SIGKILL") {
		t.Errorf("gave up with %+v; want 3 failures, the last one killed by SIGKILL", ge)
	}
}

// TestCrashesApartDoNotGiveUp: a worker that stayed up for HealthyAfter before it died
// starts the count over, and MaxWorkerFailures zero never gives up.
func TestCrashesApartDoNotGiveUp(t *testing.T) {
	for _, c := range []struct {
		name         string
		max          int
		healthyAfter time.Duration
	}{
		{"each worker up for HealthyAfter", 2, time.Nanosecond},
		{"MaxWorkerFailures 0", 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := withModel(testOptions(t, runtime.ABI13), "/models/m.rkllm", nil)
			o.MaxWorkerFailures, o.HealthyAfter = c.max, c.healthyAfter
			s := start(t, o)
			ctx := context.Background()
			for i := range 4 {
				waitReady(t, s)
				crash, err := startRun(ctx, t, s, "c1", "crash", "!crash@1", runtime.InferParams{})
				if err != nil {
					t.Fatalf("run %d: %v", i, err)
				}
				if _, err := wait(t, crash.t); !errors.Is(err, ErrCrashed) {
					t.Fatalf("crashing run %d: %v, want ErrCrashed", i, err)
				}
			}
			waitReady(t, s)
			r, err := startRun(ctx, t, s, "c1", "after", "x", runtime.InferParams{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := wait(t, r.t); err != nil {
				t.Errorf("a run after 4 crashes: %v", err)
			}
			if err := s.Err(); err != nil || s.Status().Restarts != 4 {
				t.Errorf("after 4 crashes: Err() = %v, status %+v; want still serving", err, s.Status())
			}
		})
	}
}
