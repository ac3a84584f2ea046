package admission

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

// watchdog bounds every wait of these tests; it is never reached when the code works.
const watchdog = 10 * time.Second

// request is one Acquire running in its own goroutine.
type request struct {
	cancel  context.CancelFunc
	done    chan struct{}
	release func()
	err     error
}

func start(g *Gate) *request {
	ctx, cancel := context.WithCancel(context.Background())
	r := &request{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.release, r.err = g.Acquire(ctx)
	}()
	return r
}

func (r *request) admitted() bool {
	select {
	case <-r.done:
		return r.err == nil
	default:
		return false
	}
}

func (r *request) wait(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(watchdog):
		t.Fatal("a request neither got in nor failed")
	}
}

// until waits for the gate to reach a state.
func until(t *testing.T, g *Gate, want State) {
	t.Helper()
	deadline := time.Now().Add(watchdog)
	for {
		s, _ := g.State()
		if s == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gate %+v, want %+v", s, want)
		}
		runtime.Gosched()
	}
}

// The queue decisions, step by step: who gets in, who waits, who is refused.
func TestGateDecisions(t *testing.T) {
	type step struct {
		do    string // "acquire NAME", "release NAME", "cancel NAME", "capacity N"
		name  string
		n     int
		state State // after the step
		// in lists every request admitted so far; full a request refused at this step.
		in   []string
		full string
	}
	cases := []struct {
		name       string
		maxWaiting int
		steps      []step
	}{
		{"activating: requests wait, then go in order", 2, []step{
			{do: "acquire", name: "a", state: State{0, 0, 1}},
			{do: "acquire", name: "b", state: State{0, 0, 2}},
			{do: "acquire", name: "c", state: State{0, 0, 2}, full: "c"},
			{do: "capacity", n: 1, state: State{1, 1, 1}, in: []string{"a"}},
			{do: "release", name: "a", state: State{1, 1, 0}, in: []string{"a", "b"}},
			{do: "release", name: "b", state: State{1, 0, 0}, in: []string{"a", "b"}},
		}},
		{"busy: the newcomer waits behind the queue", 4, []step{
			{do: "capacity", n: 1, state: State{1, 0, 0}},
			{do: "acquire", name: "a", state: State{1, 1, 0}, in: []string{"a"}},
			{do: "acquire", name: "b", state: State{1, 1, 1}, in: []string{"a"}},
			{do: "capacity", n: 2, state: State{2, 2, 0}, in: []string{"a", "b"}},
			{do: "acquire", name: "c", state: State{2, 2, 1}, in: []string{"a", "b"}},
			{do: "release", name: "b", state: State{2, 2, 0}, in: []string{"a", "b", "c"}},
		}},
		{"a client that leaves gives its place up", 1, []step{
			{do: "acquire", name: "a", state: State{0, 0, 1}},
			{do: "acquire", name: "b", state: State{0, 0, 1}, full: "b"},
			{do: "cancel", name: "a", state: State{0, 0, 0}},
			{do: "acquire", name: "c", state: State{0, 0, 1}},
			{do: "capacity", n: 1, state: State{1, 1, 0}, in: []string{"c"}},
		}},
		{"fewer replicas: nobody new until enough have ended", 2, []step{
			{do: "capacity", n: 2, state: State{2, 0, 0}},
			{do: "acquire", name: "a", state: State{2, 1, 0}, in: []string{"a"}},
			{do: "acquire", name: "b", state: State{2, 2, 0}, in: []string{"a", "b"}},
			{do: "capacity", n: 1, state: State{1, 2, 0}, in: []string{"a", "b"}},
			{do: "acquire", name: "c", state: State{1, 2, 1}, in: []string{"a", "b"}},
			{do: "release", name: "a", state: State{1, 1, 1}, in: []string{"a", "b"}},
			{do: "release", name: "b", state: State{1, 1, 0}, in: []string{"a", "b", "c"}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGate(tc.maxWaiting)
			reqs := map[string]*request{}
			for i, s := range tc.steps {
				switch s.do {
				case "acquire":
					reqs[s.name] = start(g)
				case "release":
					reqs[s.name].release()
				case "cancel":
					reqs[s.name].cancel()
					reqs[s.name].wait(t)
					if !errors.Is(reqs[s.name].err, context.Canceled) {
						t.Fatalf("step %d: cancelled request err = %v", i, reqs[s.name].err)
					}
				case "capacity":
					g.SetCapacity(s.n)
				}
				if s.full != "" {
					reqs[s.full].wait(t)
					if !errors.Is(reqs[s.full].err, ErrQueueFull) {
						t.Fatalf("step %d: %s err = %v, want ErrQueueFull", i, s.full, reqs[s.full].err)
					}
				}
				until(t, g, s.state)
				for _, name := range s.in {
					reqs[name].wait(t)
					if !reqs[name].admitted() {
						t.Fatalf("step %d: %s not admitted: %v", i, name, reqs[name].err)
					}
				}
				for name, r := range reqs {
					if r.admitted() && !contains(s.in, name) {
						t.Fatalf("step %d: %s admitted out of turn", i, name)
					}
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// State's channel tells a waiter for idleness when requests end.
func TestGateSignalsChanges(t *testing.T) {
	g := NewGate(1)
	g.SetCapacity(1)
	release, err := g.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s, changed := g.State()
	if s.Idle() {
		t.Fatal("idle with a request in flight")
	}
	release()
	select {
	case <-changed:
	case <-time.After(watchdog):
		t.Fatal("no change signalled when the request ended")
	}
	if s, _ := g.State(); !s.Idle() {
		t.Errorf("state %+v after the release", s)
	}
}

func TestClients(t *testing.T) {
	c := NewClients(2)
	r1, err1 := c.Acquire("alice")
	_, err2 := c.Acquire("alice")
	_, err3 := c.Acquire("alice")
	rb, errb := c.Acquire("bob")
	if err1 != nil || err2 != nil || !errors.Is(err3, ErrClientLimit) || errb != nil {
		t.Fatalf("errors %v %v %v %v; want the third of alice's refused, bob's taken", err1, err2, err3, errb)
	}
	r1()
	r1()
	if _, err := c.Acquire("alice"); err != nil {
		t.Errorf("alice after one release: %v", err)
	}
	rb()
	c.mu.Lock()
	_, kept := c.count["bob"]
	c.mu.Unlock()
	if kept {
		t.Error("a client without requests is still remembered")
	}
	if _, err := NewClients(0).Acquire("anyone"); err != nil {
		t.Errorf("no limit refused: %v", err)
	}
}
