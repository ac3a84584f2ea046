package rkllmrpc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/worker"
	"github.com/rkllm-operator/rkllm-operator/server/worker/fakeruntime"
)

// The test binary doubles as the supervisor's worker, serving the fake runtime on fd 3.
const workerEnv = "RKLLMRPC_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		if err := worker.ServeInherited(context.Background(), fakeruntime.New(runtime.ABI13), "fake", 0, logr.Discard()); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Named bounds of the waits below.
const (
	waitTimeout = 30 * time.Second
	// overtakeWindow is how long the response's write waits for a notification that
	// would overtake it. Without the ordering the first token's notification comes
	// within microseconds of the handler's return; with it none can come, and this
	// window passes (it is the passing path, not a wait for an event).
	overtakeWindow = 200 * time.Millisecond
)

// TestRunAsyncResponseComesFirst: the response to rkllm.run_async (which names the run)
// reaches the transport before any notification of that run, even when the runtime's
// first token is ready while the response is still being written.
func TestRunAsyncResponseComesFirst(t *testing.T) {
	sup := supervisor.New(supervisor.Options{
		Command: func(ctx context.Context) *exec.Cmd {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"=1")
			return cmd
		},
		Model: &supervisor.ModelSpec{Param: func(d runtime.Param) runtime.Param { d.ModelPath = "m.rkllm"; return d }},
		Log:   logr.Discard(),
	})
	if err := sup.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sup.Close() })
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	notReady := time.After(waitTimeout)
	for !sup.Status().Ready {
		select {
		case <-tick.C:
		case <-notReady:
			t.Fatalf("supervisor not ready after %s: %+v", waitTimeout, sup.Status())
		}
	}
	svc, err := New(sup, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := jsonrpc.NewDispatcher(logr.Discard(), nil)
	svc.Register(d)

	var mu sync.Mutex
	var order []string
	notified := make(chan struct{}, 100)
	done := make(chan struct{})
	peer := &jsonrpc.Peer{Transport: "unix", ID: "c1", Persistent: true, Context: context.Background(),
		Notify: func(n *jsonrpc.Notification) error {
			mu.Lock()
			order = append(order, n.Method)
			mu.Unlock()
			notified <- struct{}{}
			if n.Method == NotifyDone {
				close(done)
			}
			return nil
		}}
	msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run_async","params":{"input":{"prompt_input":"hi"}}}`)
	d.Serve(context.Background(), peer, msg, nil, func([]*jsonrpc.Response, bool) {
		// A slow transport: give a notification every chance to overtake the response.
		select {
		case <-notified:
		case <-time.After(overtakeWindow):
		}
		mu.Lock()
		order = append(order, "response")
		mu.Unlock()
	})
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("no rkllm.done")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) < 3 || order[0] != "response" || order[len(order)-1] != NotifyDone {
		t.Errorf("messages reached the transport in the order %s; the response must come first, rkllm.done last", strings.Join(order, ", "))
	}
}
