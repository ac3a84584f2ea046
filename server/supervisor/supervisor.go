// Package supervisor runs the worker process of rkllm-server and serves the runtime to
// many clients through it: one request at a time from a bounded FIFO queue, with a
// watchdog on token delivery, and restarts with backoff that reload the model and
// replay the state clients set when the worker dies. It never loads the runtime itself.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Options configure a Supervisor. A zero duration or size takes the default named in
// its comment.
type Options struct {
	// Command builds the worker command (required). It must use exec.CommandContext
	// with the context it is given; the supervisor adds the protocol socket as fd 3.
	Command func(ctx context.Context) *exec.Cmd
	// Model, when set, is loaded as soon as the worker is up, and reloaded after
	// every restart until a client destroys it.
	Model *ModelSpec
	// MaxQueue, when positive, bounds the requests waiting for the model: a request
	// over it gets ErrQueueFull at once. Zero: no count, the queue is bounded by what
	// its requests cost (the server's budget of bytes in flight, and its connections).
	MaxQueue int
	// TokenStallTimeout is the longest a run may go without a delivery before the
	// watchdog aborts it (60s). Before the first delivery the run also gets its
	// prompt's prefill at MinPrefillRate.
	TokenStallTimeout time.Duration
	// MinPrefillRate is the slowest prefill, in tokens per second, the watchdog allows
	// before the first delivery (DefaultMinPrefillRate).
	MinPrefillRate float64
	// AbortTimeout is how long an aborted run may take to end before the worker is
	// killed (10s). A worker that shows no sign of life (stopped, or not reading its
	// socket) is killed within TokenStallTimeout plus AbortTimeout.
	AbortTimeout time.Duration
	// StartTimeout bounds the worker's start, until its Hello (30s).
	StartTimeout time.Duration
	// InitTimeout bounds rkllm_init, which takes up to a minute for large models (10m).
	InitTimeout time.Duration
	// CallTimeout bounds every other runtime call (TokenStallTimeout plus AbortTimeout,
	// at least 1s): a worker blocked in one is killed as soon as one stopped or stalled
	// in a run would be.
	CallTimeout time.Duration
	// RestartBackoffMin and RestartBackoffMax bound the delay before restarting a
	// worker that died, or retrying a model that failed to load (500ms, 30s).
	RestartBackoffMin, RestartBackoffMax time.Duration
	// HealthyAfter is how long a worker must live for the backoff to start over (60s).
	HealthyAfter time.Duration
	// MaxWorkerFailures, when positive, is how many workers in a row may fail (die, be
	// killed as unresponsive, or fail to start), none of them up for HealthyAfter,
	// before the supervisor gives up: it stops serving, Failed is closed and Err says
	// why, so the process can exit and let its own supervisor (the kubelet) see a crash
	// loop that restarting the worker inside hides. Zero: retry for ever.
	MaxWorkerFailures int
	// StopGrace is how long Shutdown may go on after its context ends, to let the
	// aborted run end, destroy the model and stop the worker, which is killed past it
	// (AbortTimeout, at most 2s).
	StopGrace time.Duration
	// MaxFrameBytes bounds one protocol frame (workerproto.DefaultMaxFrameBytes).
	MaxFrameBytes int
	// EmbedWidth is the embedding width (hidden size) of the models loaded, when the
	// configuration knows it; 0 has the worker learn it at every load.
	EmbedWidth int
	// VocabSize is the vocabulary size of the models loaded, when the configuration
	// knows it; 0 has the worker learn it at every load.
	VocabSize int
	// Log receives the supervisor's and the worker's log entries.
	Log logr.Logger
	// Observer receives metrics; nil for none.
	Observer Observer
}

// ModelSpec is the model loaded at start (from the server's configuration).
type ModelSpec struct {
	// Param returns the init parameters given the runtime's defaults
	// (rkllm_createDefaultParam of the library the worker loaded).
	Param func(defaults runtime.Param) runtime.Param
	// Loras are loaded in order after init.
	Loras []runtime.LoraAdapter
	// ChatTemplate is set after init when non-nil.
	ChatTemplate *workerproto.SetChatTemplate
	// PromptCache is loaded after init when non-empty.
	PromptCache string
	// FallbackTemplate, when set, is the runtime chat template JSON-RPC runs get after
	// a conversation run switched the model's own off (which cannot be restored), unless
	// a client set one: the configured preset's equivalent of the model's template.
	FallbackTemplate *workerproto.SetChatTemplate
}

// Observer receives the supervisor's measurements.
type Observer interface {
	QueueDepth(n int)
	QueueWait(d time.Duration)
	// Delivery reports a token delivery: the time since the run started (first) or
	// since the previous delivery.
	Delivery(first bool, d time.Duration)
	// DirectWrite reports a token the worker wrote to its client itself (whole when
	// all of it went out; see DirectClient).
	DirectWrite(whole bool)
	Perf(p runtime.PerfStat)
	WorkerRestart(cause string)
	ModelLoaded(loaded bool)
}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.TokenStallTimeout, 60*time.Second)
	def(&o.AbortTimeout, 10*time.Second)
	def(&o.StartTimeout, 30*time.Second)
	def(&o.InitTimeout, 10*time.Minute)
	def(&o.CallTimeout, max(addDurations(o.TokenStallTimeout, o.AbortTimeout), time.Second))
	def(&o.RestartBackoffMin, 500*time.Millisecond)
	def(&o.RestartBackoffMax, 30*time.Second)
	def(&o.HealthyAfter, 60*time.Second)
	def(&o.StopGrace, min(o.AbortTimeout, 2*time.Second))
	if o.MinPrefillRate <= 0 {
		o.MinPrefillRate = DefaultMinPrefillRate
	}
	if o.Observer == nil {
		o.Observer = nopObserver{}
	}
}

// addDurations adds two positive durations, saturating instead of overflowing (the
// flags take durations up to centuries).
func addDurations(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Request is one queued call of the runtime.
type Request struct {
	// Owner identifies the connection that sent it (rkllm.abort stops the caller's own
	// requests).
	Owner string
	// ID names a run for rkllm.abort; empty for other requests.
	ID string
	// Msg is the runtime call: *workerproto.Init, Run, LoadLora, ... (not Abort or
	// IsRunning, which have their own methods and never wait in the queue).
	Msg workerproto.Message
	// Conversation, instead of Msg, is a conversation run of the HTTP APIs.
	Conversation *Conversation
	// Embedding, instead of Msg, is a batch of inputs whose last hidden layers the
	// HTTP APIs pool into embeddings.
	Embedding *Embedding
	// OnDelivery receives each delivery of a Run (or Conversation) in order, on the
	// goroutine that reads the worker's connection, so a token reaches its client
	// without a hop to another goroutine. It must not block: until it returns, no other
	// frame of the worker is read (replies and heartbeats included).
	OnDelivery func(runtime.Delivery)
	// Direct, when set on a Run, is a streaming client the worker may write the run's
	// tokens to itself (see DirectClient).
	Direct DirectClient
}

// DirectClient is a streaming client that the worker may write a run's tokens to
// itself (workerproto.Direct): a token then reaches the client in one hop, the
// worker's write, instead of two with the supervisor's in between, which on a machine
// where waking a process costs tens of microseconds is most of a token's latency. The
// supervisor still reads every delivery (for the run's result, the watchdog and the
// metrics) and the client gets every other message from the supervisor as before.
type DirectClient interface {
	// Lend hands over the client's socket when the run starts: a descriptor of it,
	// which the supervisor closes once passed on, and how a token's notification reads.
	// ok is false when the client cannot take tokens directly now (something is
	// waiting to be written to it); the run's tokens then go through the supervisor.
	// The client calls reclaim when it has something else to write: the worker stops
	// writing to it, and Return follows.
	Lend(reclaim func()) (fd int, d *workerproto.Direct, ok bool)
	// Delivered takes, on the relay's goroutine, a delivery the worker wrote to the
	// client: written bytes of its notification, all of it when whole. When not whole
	// the worker has stopped writing and the lease is over: Delivered writes the rest
	// of the notification itself, before anything else.
	Delivered(d runtime.Delivery, written int, whole bool)
	// Return ends the lease: the worker writes nothing more to the client (its next
	// delivery comes through the supervisor, or the run is over and the worker has
	// answered or ended). Called once after Lend, unless Delivered ended the lease.
	Return()
}

// Outcome is what a finished request returns besides an error.
type Outcome struct {
	// Running answers IsRunning.
	Running bool
	// CacheSizes answers GetKVCacheSize.
	CacheSizes []int32
	// Aborted is true for a run that rkllm.abort (or shutdown) ended early; its
	// deliveries so far are its result.
	Aborted bool
	// Conversation tells how a Conversation request was fed.
	Conversation *ConversationOutcome
}

// Ticket is a queued request; Wait returns its outcome.
type Ticket struct {
	req      Request
	ctx      context.Context
	enqueued time.Time
	abort    chan struct{} // signalled (buffered) to abort the running request
	stop     func() bool   // stops the queue's watch of ctx

	done    chan struct{}
	outcome Outcome
	err     error
}

// Done is closed when the request has finished.
func (t *Ticket) Done() <-chan struct{} { return t.done }

// Wait blocks until the request has finished. Every ticket finishes: the supervisor
// answers each one even when its context ends or the worker dies.
func (t *Ticket) Wait() (Outcome, error) {
	<-t.done
	return t.outcome, t.err
}

func (t *Ticket) finish(o Outcome, err error) {
	t.outcome, t.err = o, err
	close(t.done)
}

// Status is the supervisor's state, for readiness and the health endpoints.
type Status struct {
	Ready     bool   `json:"ready"`
	Reason    string `json:"reason,omitempty"`
	Draining  bool   `json:"draining"`
	WorkerUp  bool   `json:"worker_up"`
	WorkerPID int    `json:"worker_pid,omitempty"`
	Restarts  int    `json:"worker_restarts"`
	LastExit  string `json:"last_worker_exit,omitempty"`
	ABI       string `json:"abi,omitempty"`
	// Simulator is set when the runtime library is the project's simulator: its output
	// is not a model's.
	Simulator   string `json:"simulator,omitempty"`
	ModelLoaded bool   `json:"model_loaded"`
	Model       string `json:"model,omitempty"`
	// EmbedWidth is the loaded model's embedding width (0: not known, so inputs that
	// carry embeddings are refused).
	EmbedWidth int `json:"embed_width,omitempty"`
	// VocabSize is the loaded model's vocabulary size (0: not known, so token inputs
	// are refused).
	VocabSize int    `json:"vocab_size,omitempty"`
	LoadError string `json:"model_load_error,omitempty"`
	// ReplayErrors lists state that could not be restored after a restart.
	ReplayErrors []string `json:"replay_errors,omitempty"`
	QueueDepth   int      `json:"queue_depth"`
	Running      bool     `json:"running"`
}

// replayState is what clients set on the handle, replayed after a restart.
type replayState struct {
	loras []runtime.LoraAdapter
	chat  *workerproto.SetChatTemplate
	tools *workerproto.SetFunctionTools
	cache string
	xattn *workerproto.SetCrossAttnParams
}

// messages returns the calls that restore the state, in a fixed order.
func (st *replayState) messages() []workerproto.Message {
	var ms []workerproto.Message
	for _, l := range st.loras {
		ms = append(ms, &workerproto.LoadLora{Adapter: l})
	}
	if st.chat != nil {
		ms = append(ms, st.chat)
	}
	if st.tools != nil {
		ms = append(ms, st.tools)
	}
	if st.cache != "" {
		ms = append(ms, &workerproto.LoadPromptCache{Path: st.cache})
	}
	if st.xattn != nil {
		ms = append(ms, st.xattn)
	}
	return ms
}

// record notes a successful state-changing call.
func (st *replayState) record(m workerproto.Message) {
	switch m := m.(type) {
	case *workerproto.LoadLora:
		st.loras = append(st.loras, m.Adapter)
	case *workerproto.SetChatTemplate:
		st.chat = m
	case *workerproto.SetFunctionTools:
		st.tools = m
	case *workerproto.LoadPromptCache:
		st.cache = m.Path
	case *workerproto.ReleasePromptCache:
		st.cache = ""
	case *workerproto.SetCrossAttnParams:
		st.xattn = m
	}
}

// forget drops a call that failed on replay, so the state reported is the truth.
func (st *replayState) forget(m workerproto.Message) {
	switch m := m.(type) {
	case *workerproto.LoadLora:
		for i, l := range st.loras {
			if l == m.Adapter {
				st.loras = append(st.loras[:i:i], st.loras[i+1:]...)
				break
			}
		}
	case *workerproto.SetChatTemplate:
		st.chat = nil
	case *workerproto.SetFunctionTools:
		st.tools = nil
	case *workerproto.LoadPromptCache:
		st.cache = ""
	case *workerproto.SetCrossAttnParams:
		st.xattn = nil
	}
}

// Supervisor serves the runtime through a worker process. Create it with New, then
// Start; stop it with Shutdown (graceful) or Close (immediate).
type Supervisor struct {
	opts Options
	log  logr.Logger

	loopCtx    context.Context
	loopCancel context.CancelFunc
	loopDone   chan struct{}
	drainCh    chan struct{} // closed by Shutdown: stop after the current request
	failedCh   chan struct{} // closed when the supervisor gives up on its worker
	wake       chan struct{} // a request was queued
	helloCh    chan struct{} // closed at the first Hello
	startOnce  sync.Once
	drainOnce  sync.Once

	mu       sync.Mutex
	queue    []*Ticket
	running  *Ticket
	proc     *proc
	hello    *workerproto.Hello
	draining bool
	closed   bool
	restarts int
	lastExit string
	// desired is the model that should be loaded (nil: none); loaded is true when the
	// current worker has it.
	desired *runtime.Param
	loaded  bool
	width   int // the loaded model's embedding width (0: not known)
	vocab   int // the loaded model's vocabulary size (0: not known)
	// inited is what the current handle was initialised with; runs make up for
	// sampling that Retune changed since (ABI 1.3 takes it per run).
	inited    runtime.Param
	loadErr   error
	state     replayState
	replayErr []string
	// gaveUp is why the supervisor gave up on its worker (MaxWorkerFailures); nil
	// while it has not.
	gaveUp *GiveUpError

	// Owned by the executor goroutine: what the handle's template and tools are now,
	// and what its KV cache holds.
	applied handleState
	kv      kvCache
	// convInCache is true while the KV cache may hold a conversation (an OpenAI
	// client's context), which a JSON-RPC run must not see.
	convInCache bool

	// isRunning is the is_running request in flight, shared by every caller meanwhile,
	// so clients cannot pile requests up in front of a worker that does not answer.
	isRunningMu sync.Mutex
	isRunning   *isRunningCall
}

// isRunningCall is one is_running request to one worker.
type isRunningCall struct {
	p    *proc
	pend *workerproto.Pending
}

// New returns a supervisor; call Start to run it.
func New(opts Options) *Supervisor {
	opts.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	s := &Supervisor{
		opts: opts, log: opts.Log, loopCtx: ctx, loopCancel: cancel, loopDone: make(chan struct{}),
		drainCh: make(chan struct{}), failedCh: make(chan struct{}), wake: make(chan struct{}, 1), helloCh: make(chan struct{}),
	}
	if m := opts.Model; m != nil {
		for _, l := range m.Loras {
			s.state.record(&workerproto.LoadLora{Adapter: l})
		}
		if m.ChatTemplate != nil {
			s.state.record(m.ChatTemplate)
		}
		if m.PromptCache != "" {
			s.state.record(&workerproto.LoadPromptCache{Path: m.PromptCache})
		}
	}
	return s
}

// Start starts the worker and the executor in the background. It returns at once;
// Status tells when the server is ready.
func (s *Supervisor) Start() error {
	if s.opts.Command == nil {
		return errors.New("supervisor: Options.Command is required")
	}
	s.startOnce.Do(func() { go s.loop() })
	return nil
}

// Enqueue queues a request and returns at once: ErrQueueFull when MaxQueue (if set)
// requests wait already, ErrShuttingDown while draining. The request is removed from the queue
// (ErrTimeout or ErrAborted) when ctx ends before it runs, and aborted when ctx ends
// while it runs.
func (s *Supervisor) Enqueue(ctx context.Context, req Request) (*Ticket, error) {
	switch req.Msg.(type) {
	case nil:
		if (req.Conversation == nil) == (req.Embedding == nil) {
			return nil, errors.New("supervisor: a request needs one of Msg, Conversation or Embedding")
		}
	case *workerproto.Abort, *workerproto.IsRunning, *workerproto.Hello, *workerproto.Delivery, *workerproto.Reply:
		return nil, fmt.Errorf("supervisor: %T cannot be queued", req.Msg)
	}
	t := &Ticket{req: req, ctx: ctx, enqueued: time.Now(), abort: make(chan struct{}, 1), done: make(chan struct{})}
	// Watch ctx before the ticket is visible to the executor. If ctx is already done the
	// watch finds nothing to remove and the executor finishes the ticket instead.
	t.stop = context.AfterFunc(ctx, func() { s.dequeue(t, contextError(ctx, "in the queue")) })
	s.mu.Lock()
	if s.gaveUp != nil {
		err := s.gaveUp
		s.mu.Unlock()
		t.stop()
		return nil, fmt.Errorf("%w: %w", ErrShuttingDown, err)
	}
	if s.draining || s.closed {
		s.mu.Unlock()
		t.stop()
		return nil, ErrShuttingDown
	}
	if n := len(s.queue); s.opts.MaxQueue > 0 && n >= s.opts.MaxQueue {
		s.mu.Unlock()
		t.stop()
		return nil, fmt.Errorf("%w: %d requests are waiting (limit %d)", ErrQueueFull, n, s.opts.MaxQueue)
	}
	s.queue = append(s.queue, t)
	depth := len(s.queue)
	s.mu.Unlock()
	s.opts.Observer.QueueDepth(depth)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return t, nil
}

// contextError turns the end of a request's context into ErrTimeout or ErrAborted.
func contextError(ctx context.Context, where string) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &TimeoutError{Reason: "request timeout", After: "the deadline passed " + where}
	}
	return fmt.Errorf("%w: the client went away or cancelled the request %s", ErrAborted, where)
}

// dequeue removes t from the queue (if it is still there) and finishes it with err.
func (s *Supervisor) dequeue(t *Ticket, err error) bool {
	s.mu.Lock()
	i := s.indexLocked(t)
	if i < 0 {
		s.mu.Unlock()
		return false
	}
	s.queue = slices.Delete(s.queue, i, i+1) // clears the freed slot: no ticket kept alive
	depth := len(s.queue)
	s.mu.Unlock()
	s.opts.Observer.QueueDepth(depth)
	t.finish(Outcome{}, err)
	return true
}

func (s *Supervisor) indexLocked(t *Ticket) int {
	for i, q := range s.queue {
		if q == t {
			return i
		}
	}
	return -1
}

// Abort stops the owner's requests: the one named id, or all of them when id is empty.
// Queued ones finish with ErrAborted; a running one is aborted in the runtime and
// finishes with Outcome.Aborted. It returns the ids of the runs it stopped, or
// ErrNoSuchRequest when id names none of the owner's requests.
func (s *Supervisor) Abort(owner, id string) ([]string, error) {
	s.mu.Lock()
	var stopped []string
	var queued []*Ticket
	match := func(t *Ticket) bool { return t.req.Owner == owner && (id == "" || t.req.ID == id) }
	for _, t := range s.queue {
		if match(t) {
			queued = append(queued, t)
		}
	}
	running := s.running
	if running != nil && match(running) {
		select {
		case running.abort <- struct{}{}:
		default:
		}
		if running.req.ID != "" {
			stopped = append(stopped, running.req.ID)
		}
	} else {
		running = nil
	}
	s.mu.Unlock()
	for _, t := range queued {
		if s.dequeue(t, fmt.Errorf("%w by rkllm.abort while queued", ErrAborted)) && t.req.ID != "" {
			stopped = append(stopped, t.req.ID)
		}
	}
	if id != "" && running == nil && len(queued) == 0 {
		return nil, fmt.Errorf("%w: %q is not a queued or running request of this caller (on the socket: of this connection; over HTTP: started with the same API key)", ErrNoSuchRequest, id)
	}
	return stopped, nil
}

// IsRunning asks the runtime whether a run is in progress: false when no worker is up,
// or when the worker is lost meanwhile (its run, if any, ended with it); a TimeoutError
// when the runtime does not answer within CallTimeout. Callers at the same time share
// one request to the worker.
func (s *Supervisor) IsRunning(ctx context.Context) (bool, error) {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return false, nil
	}
	pend, err := s.isRunningRequest(p)
	if err != nil {
		return false, nil // the worker's connection has ended: no run is in progress
	}
	timer := time.NewTimer(s.opts.CallTimeout)
	defer timer.Stop()
	select {
	case <-pend.Done():
	case <-timer.C:
		return false, &TimeoutError{Reason: "worker unresponsive", After: "rkllm_is_running did not return within " + s.opts.CallTimeout.String()}
	case <-ctx.Done():
		return false, contextError(ctx, "waiting for is_running")
	}
	r, err := pend.Result()
	if err != nil {
		return false, nil // the worker is gone, and no run with it
	}
	return r.Running, nil
}

// isRunningRequest returns the is_running request in flight to p, or starts one.
func (s *Supervisor) isRunningRequest(p *proc) (*workerproto.Pending, error) {
	s.isRunningMu.Lock()
	defer s.isRunningMu.Unlock()
	if c := s.isRunning; c != nil && c.p == p && !isDone(c.pend.Done()) {
		return c.pend, nil
	}
	pend, err := p.client.Start(&workerproto.IsRunning{}, nil)
	if err != nil {
		return nil, err
	}
	s.isRunning = &isRunningCall{p: p, pend: pend}
	return pend, nil
}

// Defaults returns the runtime's default parameters and ABI, waiting for the first
// worker to start if none has yet.
func (s *Supervisor) Defaults(ctx context.Context) (runtime.Param, runtime.ABI, error) {
	select {
	case <-s.helloCh:
	default:
		select {
		case <-s.helloCh:
		case <-ctx.Done():
			st := s.Status()
			return runtime.Param{}, "", fmt.Errorf("the worker has not started (%s): %w", st.Reason, ctx.Err())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hello.Default, s.hello.ABI, nil
}

// Status reports the state for readiness.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		Draining: s.draining, WorkerUp: s.proc != nil, Restarts: s.restarts, LastExit: s.lastExit,
		ModelLoaded: s.loaded, QueueDepth: len(s.queue), Running: s.running != nil,
		ReplayErrors: append([]string(nil), s.replayErr...),
	}
	if s.proc != nil {
		st.WorkerPID = s.proc.hello.PID
	}
	if s.hello != nil {
		st.ABI = string(s.hello.ABI)
		st.Simulator = s.hello.Simulator
	}
	if s.desired != nil {
		st.Model = s.desired.ModelPath
	}
	if s.loaded {
		st.EmbedWidth, st.VocabSize = s.width, s.vocab
	}
	if s.loadErr != nil {
		st.LoadError = s.loadErr.Error()
	}
	switch {
	case s.gaveUp != nil:
		st.Reason = "shutting down, giving up: " + s.gaveUp.Error()
	case s.closed || s.draining:
		st.Reason = "shutting down"
	case s.proc == nil && s.lastExit != "":
		st.Reason = "worker restarting after: " + s.lastExit
	case s.proc == nil:
		st.Reason = "worker starting"
	case s.desired == nil:
		st.Reason = "no model loaded: start with --model or call rkllm.init"
	case s.loadErr != nil:
		st.Reason = "model failed to load (retrying): " + s.loadErr.Error()
	case !s.loaded:
		st.Reason = "model loading"
	default:
		st.Ready = true
	}
	return st
}

// Failed is closed when the supervisor gives up on its worker (Options.MaxWorkerFailures);
// Err then says why. The caller should Shutdown and exit with that error.
func (s *Supervisor) Failed() <-chan struct{} { return s.failedCh }

// Err is the *GiveUpError once the supervisor gave up on its worker, else nil.
func (s *Supervisor) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gaveUp == nil {
		return nil
	}
	return s.gaveUp
}

// Shutdown stops taking requests (ErrShuttingDown), fails the queued ones, lets the
// running request finish until ctx ends (then aborts it), destroys the model and stops
// the worker. It returns when the worker is gone, with ctx's error if the running
// request had to be aborted, and never later than StopGrace after ctx ends: a worker
// that does not end its run, destroy its model or exit by then is killed.
func (s *Supervisor) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	queued := s.queue
	s.queue = nil
	s.mu.Unlock()
	s.opts.Observer.QueueDepth(0)
	for _, t := range queued {
		t.stop()
		t.finish(Outcome{}, fmt.Errorf("%w: the request was still queued", ErrShuttingDown))
	}
	s.drainOnce.Do(func() { close(s.drainCh) })
	s.startOnce.Do(func() { close(s.loopDone) }) // never started
	// hard ends StopGrace after ctx: every wait below gives up then.
	hard, cancelHard := context.WithCancel(context.Background())
	defer cancelHard()
	stopAfter := context.AfterFunc(ctx, func() { time.AfterFunc(s.opts.StopGrace, cancelHard) })
	defer stopAfter()
	var err error
	select {
	case <-s.loopDone:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		if t := s.running; t != nil {
			select {
			case t.abort <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
		select {
		case <-s.loopDone:
		case <-hard.Done():
			// The executor kills the worker at once and returns (every wait of its
			// watches loopCtx, or ends when the worker is killed).
			s.loopCancel()
			<-s.loopDone
		}
	}
	s.stopWorker(hard)
	return err
}

// Close kills the worker at once and fails every request.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	s.closed = true
	s.draining = true
	queued := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, t := range queued {
		t.stop()
		t.finish(Outcome{}, ErrShuttingDown)
	}
	s.drainOnce.Do(func() { close(s.drainCh) })
	s.startOnce.Do(func() { close(s.loopDone) })
	s.loopCancel()
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
	<-s.loopDone
	s.stopWorker(s.loopCtx)
	return nil
}

// stopWorker destroys the model and ends the worker: closing the connection makes it
// exit; it is killed if it does not within AbortTimeout, or when hard ends.
func (s *Supervisor) stopWorker(hard context.Context) {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	loaded := s.loaded
	s.loaded = false
	s.closed = true
	s.mu.Unlock()
	if p == nil {
		return
	}
	if loaded && p.alive() && hard.Err() == nil {
		ctx, cancel := context.WithTimeout(hard, s.opts.CallTimeout)
		if r, err := p.client.Call(ctx, &workerproto.Destroy{}); err != nil || r.Err != nil {
			s.log.Error(errors.Join(err, replyErr(r)), "destroy the model at shutdown")
		}
		cancel()
	}
	_ = p.client.Close()
	timer := time.NewTimer(s.opts.AbortTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		p.kill()
		p.reaped()
	case <-hard.Done():
		p.kill()
		p.reaped()
	}
	s.opts.Observer.ModelLoaded(false)
}

func replyErr(r *workerproto.Reply) error {
	if r == nil {
		return nil
	}
	return r.Err
}

// sameParam reports whether two init parameters are equal (a repeated rkllm.init with
// the loaded model's parameters succeeds without reloading).
func sameParam(a, b runtime.Param) bool { return reflect.DeepEqual(a, b) }

type nopObserver struct{}

func (nopObserver) QueueDepth(int)               {}
func (nopObserver) QueueWait(time.Duration)      {}
func (nopObserver) Delivery(bool, time.Duration) {}
func (nopObserver) DirectWrite(bool)             {}
func (nopObserver) Perf(runtime.PerfStat)        {}
func (nopObserver) WorkerRestart(string)         {}
func (nopObserver) ModelLoaded(bool)             {}

// Retune changes the sampling parameters and max_new_tokens of the model loaded from
// the configuration without loading it again: runs that do not set their own get the
// new values (ABI 1.3 takes them per run), Loaded reports them, and a restarted worker
// loads the model with them. On ABI 1.2, which takes them only at rkllm_init, it
// returns ErrNeedsReload; it returns ErrModelNotLoaded when no model is configured or
// a client loaded another one.
func (s *Supervisor) Retune(sampling runtime.SamplingParams, maxNewTokens int32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hello == nil || s.desired == nil || s.opts.Model == nil || s.opts.Model.Param == nil ||
		s.desired.ModelPath != s.opts.Model.Param(s.hello.Default).ModelPath {
		return fmt.Errorf("%w: no model from the configuration is loaded", ErrModelNotLoaded)
	}
	if s.hello.ABI != runtime.ABI13 {
		return fmt.Errorf("%w: runtime ABI %s has no per-run sampling", ErrNeedsReload, s.hello.ABI)
	}
	p := *s.desired
	setSampling(&p, sampling)
	p.MaxNewTokens = maxNewTokens
	s.desired = &p
	return nil
}

// SamplingOf returns the sampling fields of p.
func SamplingOf(p runtime.Param) runtime.SamplingParams {
	return runtime.SamplingParams{
		TopK: p.TopK, TopP: p.TopP, Temperature: p.Temperature, RepeatPenalty: p.RepeatPenalty,
		FrequencyPenalty: p.FrequencyPenalty, PresencePenalty: p.PresencePenalty,
		Mirostat: p.Mirostat, MirostatTau: p.MirostatTau, MirostatEta: p.MirostatEta,
	}
}

func setSampling(p *runtime.Param, sp runtime.SamplingParams) {
	p.TopK, p.TopP, p.Temperature, p.RepeatPenalty = sp.TopK, sp.TopP, sp.Temperature, sp.RepeatPenalty
	p.FrequencyPenalty, p.PresencePenalty = sp.FrequencyPenalty, sp.PresencePenalty
	p.Mirostat, p.MirostatTau, p.MirostatEta = sp.Mirostat, sp.MirostatTau, sp.MirostatEta
}

// retuned returns m with the sampling and max_new_tokens Retune set since the handle
// was initialised, for a run that does not set its own. Called by the executor.
func (s *Supervisor) retuned(m *workerproto.Run) *workerproto.Run {
	s.mu.Lock()
	desired := s.desired
	s.mu.Unlock()
	if desired == nil || desired.ModelPath != s.inited.ModelPath {
		return m
	}
	run := *m
	if want := SamplingOf(*desired); run.Infer.Sampling == nil && want != SamplingOf(s.inited) {
		run.Infer.Sampling = &want
	}
	if run.Infer.MaxNewTokens <= 0 && desired.MaxNewTokens != s.inited.MaxNewTokens {
		// A run's max_new_tokens counts only when positive: "no limit" is the largest.
		run.Infer.MaxNewTokens = math.MaxInt32
		if desired.MaxNewTokens > 0 {
			run.Infer.MaxNewTokens = desired.MaxNewTokens
		}
	}
	return &run
}

// Loaded returns the parameters of the model loaded now.
func (s *Supervisor) Loaded() (runtime.Param, bool) {
	m, ok := s.LoadedModel()
	return m.Param, ok
}

// LoadedModel describes the model loaded now: what a request is checked against
// before it is queued.
type LoadedModel struct {
	// Param is what the model was initialised with.
	Param runtime.Param
	// ABI is the layout the runtime library speaks.
	ABI runtime.ABI
	// EmbedWidth is the model's embedding width (its hidden size: the floats in one
	// row of an embedding input), configured or learned at load; 0 when not known.
	EmbedWidth int
	// VocabSize is the model's vocabulary size (token ids are 0 to VocabSize-1),
	// configured or learned at load; 0 when not known.
	VocabSize int
	// Loras are the names of the LoRA adapters loaded, in order.
	Loras []string
}

// Limits are the bounds of the runtime's input checks for this model.
func (m LoadedModel) Limits() runtime.Limits {
	return runtime.Limits{Known: true, ABI: m.ABI, NBatch: int(m.Param.Extend.NBatch), MaxContextLen: int(m.Param.MaxContextLen),
		EmbedWidth: m.EmbedWidth, VocabSize: m.VocabSize, Loras: m.Loras}
}

// LoadedModel returns the model loaded now, false when none is.
func (s *Supervisor) LoadedModel() (LoadedModel, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.loaded || s.desired == nil {
		return LoadedModel{}, false
	}
	m := LoadedModel{Param: *s.desired, EmbedWidth: s.width, VocabSize: s.vocab, Loras: []string{}}
	if s.hello != nil {
		m.ABI = s.hello.ABI
	}
	for _, l := range s.state.loras {
		m.Loras = append(m.Loras, l.Name)
	}
	return m, true
}
