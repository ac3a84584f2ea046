package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// loop is the executor: it keeps a worker up with the desired model loaded and serves
// the queue one request at a time. It is the only goroutine that changes the worker
// and the model state, so those need no further coordination.
func (s *Supervisor) loop() {
	defer close(s.loopDone)
	st := &retries{
		restart: backoff{min: s.opts.RestartBackoffMin, max: s.opts.RestartBackoffMax},
		load:    backoff{min: s.opts.RestartBackoffMin, max: s.opts.RestartBackoffMax},
	}
	for !s.stopping() {
		p := s.current()
		if p == nil {
			var ok bool
			if p, ok = s.startWorker(st); !ok {
				return
			}
			if p == nil {
				continue
			}
		}
		if s.needsLoad() && !time.Now().Before(st.loadAt) && !s.loadModel(p, st) {
			// The worker died while loading: restart it first.
			if !s.replaceWorker(p, st) {
				return
			}
			continue
		}
		s.serveNext(p, st.loadAt)
		if s.current() != p && !s.replaceWorker(p, st) {
			return
		}
	}
}

// retries is the executor's retry state: the backoffs of worker restarts and model
// loads, and when the next of each is due.
type retries struct {
	restart, load   backoff
	startAt, loadAt time.Time
}

// stopping reports whether Shutdown or Close has begun.
func (s *Supervisor) stopping() bool {
	select {
	case <-s.drainCh:
		return true
	case <-s.loopCtx.Done():
		return true
	default:
		return false
	}
}

// startWorker starts a worker once its restart is due. It returns nil and true when the
// start failed and is to be retried, and false when the supervisor stops or gives up.
func (s *Supervisor) startWorker(st *retries) (*proc, bool) {
	if !s.waitUntil(st.startAt) {
		return nil, false
	}
	p, err := startProc(s.loopCtx, s.opts.Command, s.procOptions(), s.log)
	if err == nil {
		s.workerUp(p)
		return p, true
	}
	s.setLastExit(err.Error())
	s.opts.Observer.WorkerRestart("start_failed")
	d := st.restart.next()
	if s.giveUp(st.restart.failures) {
		return nil, false
	}
	st.startAt = time.Now().Add(d)
	s.log.Error(err, "worker start failed; retrying", "retry_in", d.String())
	return nil, true
}

// loadModel loads the desired model into p, scheduling a retry when it fails; false
// when p died meanwhile.
func (s *Supervisor) loadModel(p *proc, st *retries) bool {
	err := s.load(p)
	if err == nil {
		st.load.reset()
		st.loadAt = time.Time{}
		return true
	}
	if s.current() != p {
		return false
	}
	d := st.load.next()
	st.loadAt = time.Now().Add(d)
	s.log.Error(err, "model failed to load; retrying", "retry_in", d.String())
	return true
}

// replaceWorker schedules the restart of p, which died; false when the supervisor gives
// up instead.
func (s *Supervisor) replaceWorker(p *proc, st *retries) bool {
	d, ok := s.restartDelay(p, &st.restart)
	if ok {
		st.startAt = time.Now().Add(d)
	}
	return ok
}

// serveNext serves the next request, or returns when p dies or the model's load retry
// (at loadAt) is due.
func (s *Supervisor) serveNext(p *proc, loadAt time.Time) {
	var retry <-chan time.Time
	if s.needsLoad() {
		timer := time.NewTimer(time.Until(loadAt))
		defer timer.Stop()
		retry = timer.C
	}
	if t := s.next(p, retry); t != nil {
		s.execute(p, t)
	}
}

// restartDelay is the backoff before replacing p, which died; a worker that lived
// HealthyAfter starts the backoff over. It returns false when the supervisor gives up
// instead.
func (s *Supervisor) restartDelay(p *proc, b *backoff) (time.Duration, bool) {
	if time.Since(p.started) >= s.opts.HealthyAfter {
		b.reset()
	}
	d := b.next()
	if s.giveUp(b.failures) {
		return 0, false
	}
	s.log.Info("restarting the worker", "after", d.String())
	return d, true
}

// giveUp stops the supervisor when failures workers in a row failed and that is
// MaxWorkerFailures: new and queued requests get ErrShuttingDown with the reason, the
// status says it, and Failed is closed. A worker lost because the supervisor is
// stopping does not count.
func (s *Supervisor) giveUp(failures int) bool {
	if s.opts.MaxWorkerFailures <= 0 || failures < s.opts.MaxWorkerFailures {
		return false
	}
	s.mu.Lock()
	if s.draining || s.closed || s.loopCtx.Err() != nil {
		s.mu.Unlock()
		return false
	}
	err := &GiveUpError{Failures: failures, HealthyAfter: s.opts.HealthyAfter, LastExit: s.lastExit}
	s.gaveUp = err
	s.draining = true
	queued := s.queue
	s.queue = nil
	s.mu.Unlock()
	s.opts.Observer.QueueDepth(0)
	for _, t := range queued {
		t.stop()
		t.finish(Outcome{}, fmt.Errorf("%w: %w", ErrShuttingDown, err))
	}
	close(s.failedCh)
	return true
}

// waitUntil waits for t; false when the supervisor stops meanwhile.
func (s *Supervisor) waitUntil(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-s.drainCh:
	case <-s.loopCtx.Done():
	}
	return false
}

func (s *Supervisor) current() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

func (s *Supervisor) setLastExit(msg string) {
	s.mu.Lock()
	s.lastExit = msg
	s.mu.Unlock()
}

// workerUp installs a worker that said Hello; the first Hello also fixes the
// configured model's parameters (they build on the runtime's defaults).
func (s *Supervisor) workerUp(p *proc) {
	s.mu.Lock()
	first := s.hello == nil
	s.proc = p
	s.hello = p.hello
	if first && s.opts.Model != nil && s.opts.Model.Param != nil {
		param := s.opts.Model.Param(p.hello.Default)
		s.desired = &param
	}
	s.mu.Unlock()
	if first {
		close(s.helloCh)
	}
	if p.hello.Simulator != "" {
		s.log.Info("worker started with the RKLLM simulator: its output is generated filler, not a model's answer",
			"worker_pid", p.hello.PID, "abi", p.hello.ABI, "library", p.hello.Library, "simulator", p.hello.Simulator)
		return
	}
	s.log.Info("worker started", "worker_pid", p.hello.PID, "abi", p.hello.ABI, "library", p.hello.Library)
}

// procOptions are the bounds of the next worker. A worker must show a sign of life
// within TokenStallTimeout plus half of AbortTimeout, and is pinged after being quiet
// for at most half of AbortTimeout (5 s at most), so one that stops making progress is
// killed within TokenStallTimeout plus AbortTimeout of its last sign of life. The
// bound is at least a second, so a loaded machine's scheduling delays do not kill a
// healthy worker.
func (s *Supervisor) procOptions() procOptions {
	heartbeat := min(s.opts.AbortTimeout/2, 5*time.Second)
	return procOptions{
		maxFrame: s.opts.MaxFrameBytes, helloTimeout: s.opts.StartTimeout,
		liveness: max(addDurations(s.opts.TokenStallTimeout, s.opts.AbortTimeout/2), time.Second), heartbeat: max(heartbeat, 10*time.Millisecond),
	}
}

// workerGone forgets p after it died, once.
func (s *Supervisor) workerGone(p *proc, cause string, exit *ExitInfo) {
	s.mu.Lock()
	if s.proc != p {
		s.mu.Unlock()
		return
	}
	s.proc = nil
	wasLoaded := s.loaded
	s.loaded = false
	s.restarts++
	s.lastExit = exit.summary()
	s.mu.Unlock()
	s.applied = handleState{}
	s.kv.invalidate()
	s.convInCache = false
	s.log.Error(nil, "worker died", "cause", cause, "exit", exit.String(), "stderr", exit.Stderr)
	s.opts.Observer.WorkerRestart(cause)
	if wasLoaded {
		s.opts.Observer.ModelLoaded(false)
	}
}

// lost waits until p has ended (killing it if it lingers) and returns the crash.
func (s *Supervisor) lost(p *proc, cause string) *CrashError {
	exit := s.ended(p)
	s.workerGone(p, cause, exit)
	return &CrashError{Exit: exit}
}

// ended waits until p has been reaped and returns how it ended. A worker that closed
// its end may still be finishing; one that lingers for AbortTimeout, or when the
// supervisor stops, is killed. Every wait is bounded: a process that cannot die (blocked
// in the kernel) is left behind after reapTimeout.
func (s *Supervisor) ended(p *proc) *ExitInfo {
	if !p.isKilled() {
		timer := time.NewTimer(s.opts.AbortTimeout)
		select {
		case <-p.exited:
		case <-timer.C:
		case <-s.loopCtx.Done():
		}
		timer.Stop()
	}
	p.kill()
	return p.reaped()
}

// connLost handles the end of p's connection in the middle of a request and returns
// the error the request gets: a timeout when the worker was killed as unresponsive
// (stopped, or not reading its socket), else a crash.
func (s *Supervisor) connLost(p *proc) error {
	if reason := p.unresponsiveReason(); reason != "" {
		_ = s.lost(p, "unresponsive")
		return unresponsiveError(reason)
	}
	return s.lost(p, "crash")
}

func unresponsiveError(reason string) *TimeoutError {
	return &TimeoutError{Reason: "worker unresponsive", After: reason, WorkerKilled: true}
}

func (s *Supervisor) needsLoad() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desired != nil && !s.loaded
}

// load initialises the desired model in p and replays the recorded state.
func (s *Supervisor) load(p *proc) error {
	s.mu.Lock()
	param := *s.desired
	replay := s.state.messages()
	s.mu.Unlock()
	s.log.Info("loading the model", "model", param.ModelPath, "replay", len(replay))
	mark := p.mark()
	r, err := s.call(p, &workerproto.Init{Param: param, EmbedWidth: s.opts.EmbedWidth, VocabSize: s.opts.VocabSize}, s.opts.InitTimeout, "rkllm_init")
	if err == nil {
		err = s.explain(p, mark, r.Err)
	}
	if err != nil {
		err = fmt.Errorf("load %s: %w", param.ModelPath, err)
		s.mu.Lock()
		s.loadErr = err
		s.mu.Unlock()
		return err
	}
	var replayErr []string
	for _, m := range replay {
		r, err := s.call(p, m, s.opts.CallTimeout, m.Op().String())
		if err != nil {
			return fmt.Errorf("replay %s: %w", m.Op(), err)
		}
		if r.Err != nil {
			msg := fmt.Sprintf("%s: %v", m.Op(), r.Err)
			s.log.Error(r.Err, "state could not be restored; dropping it", "call", m.Op().String())
			replayErr = append(replayErr, msg)
			s.mu.Lock()
			s.state.forget(m)
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	s.loaded = true
	s.inited = param
	s.width, s.vocab = r.EmbedWidth, r.VocabSize
	s.loadErr = nil
	s.replayErr = replayErr
	s.applied = handleState{chat: s.state.chat, tools: s.state.tools}
	s.mu.Unlock()
	s.kv.invalidate()
	s.convInCache = false
	s.opts.Observer.ModelLoaded(true)
	s.log.Info("model loaded", "model", param.ModelPath)
	return nil
}

// call sends m to p and waits for its reply. When p dies the result is a *CrashError;
// when it does not answer within timeout it is killed and the result is a
// *TimeoutError. A request too large for one frame fails at once, the worker unharmed.
func (s *Supervisor) call(p *proc, m workerproto.Message, timeout time.Duration, what string) (*workerproto.Reply, error) {
	pend, err := p.client.Start(m, nil)
	if err != nil {
		if errors.Is(err, workerproto.ErrFrameTooLarge) {
			return nil, tooLarge(err)
		}
		return nil, s.connLost(p)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-pend.Done():
		r, err := pend.Result()
		if err != nil {
			return nil, s.connLost(p)
		}
		return r, nil
	case <-timer.C:
		p.kill()
		<-pend.Done()
		_ = s.lost(p, "unresponsive")
		return nil, &TimeoutError{Reason: "worker unresponsive", After: fmt.Sprintf("%s did not return within %s", what, timeout), WorkerKilled: true}
	case <-s.loopCtx.Done():
		p.kill()
		<-pend.Done()
		_ = s.lost(p, "shutdown")
		return nil, ErrShuttingDown
	}
}

// next takes the next request from the queue. It returns nil when p died, the load
// retry is due, or the supervisor stops.
func (s *Supervisor) next(p *proc, retry <-chan time.Time) *Ticket {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			t := s.queue[0]
			s.queue[0] = nil // the backing array must not keep the request (its prompt) alive
			s.queue = s.queue[1:]
			s.running = t
			depth := len(s.queue)
			s.mu.Unlock()
			s.opts.Observer.QueueDepth(depth)
			s.opts.Observer.QueueWait(time.Since(t.enqueued))
			return t
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-p.client.Done():
			_ = s.connLost(p)
			return nil
		case <-retry:
			return nil
		case <-s.drainCh:
			return nil
		case <-s.loopCtx.Done():
			return nil
		}
	}
}

// execute serves one request and finishes its ticket.
func (s *Supervisor) execute(p *proc, t *Ticket) {
	t.stop()
	defer func() {
		s.mu.Lock()
		s.running = nil
		s.mu.Unlock()
	}()
	if err := t.ctx.Err(); err != nil {
		t.finish(Outcome{}, contextError(t.ctx, "in the queue"))
		return
	}
	switch m := t.req.Msg.(type) {
	case *workerproto.Init:
		t.finish(Outcome{}, s.execInit(p, m))
	case *workerproto.Destroy:
		t.finish(Outcome{}, s.execDestroy(p))
	case *workerproto.Run:
		t.finish(s.execRPCRun(p, t, m))
	case nil:
		if t.req.Embedding != nil {
			t.finish(s.execEmbedding(p, t, t.req.Embedding))
			return
		}
		t.finish(s.execConversation(p, t, t.req.Conversation))
	default:
		t.finish(s.execCall(p, m))
	}
}

// modelErr explains why no model is loaded.
func (s *Supervisor) modelErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loaded {
		return nil
	}
	if s.loadErr != nil {
		return fmt.Errorf("%w: %v", ErrModelNotLoaded, s.loadErr)
	}
	return fmt.Errorf("%w: call rkllm.init first", ErrModelNotLoaded)
}

func (s *Supervisor) execInit(p *proc, m *workerproto.Init) error {
	s.mu.Lock()
	desired, loaded := s.desired, s.loaded
	s.mu.Unlock()
	if loaded {
		if sameParam(*desired, m.Param) {
			return nil
		}
		return fmt.Errorf("%w from %s; call rkllm.destroy before loading another", ErrAlreadyLoaded, desired.ModelPath)
	}
	mark := p.mark()
	m.EmbedWidth, m.VocabSize = s.opts.EmbedWidth, s.opts.VocabSize
	r, err := s.call(p, m, s.opts.InitTimeout, "rkllm_init")
	if err != nil {
		return err
	}
	if r.Err != nil {
		return s.explain(p, mark, r.Err)
	}
	s.mu.Lock()
	param := m.Param
	s.desired = &param
	s.loaded = true
	s.inited = param
	s.width, s.vocab = r.EmbedWidth, r.VocabSize
	s.loadErr = nil
	s.state = replayState{}
	s.replayErr = nil
	s.mu.Unlock()
	s.applied = handleState{}
	s.kv.invalidate()
	s.convInCache = false
	s.opts.Observer.ModelLoaded(true)
	s.log.Info("model loaded by a client", "model", param.ModelPath)
	return nil
}

func (s *Supervisor) execDestroy(p *proc) error {
	s.mu.Lock()
	desired, loaded := s.desired, s.loaded
	s.mu.Unlock()
	if desired == nil {
		return fmt.Errorf("%w: nothing to destroy", ErrModelNotLoaded)
	}
	if loaded {
		r, err := s.call(p, &workerproto.Destroy{}, s.opts.CallTimeout, "rkllm_destroy")
		if err != nil {
			return err
		}
		if r.Err != nil {
			return r.Err
		}
	}
	s.mu.Lock()
	s.desired = nil
	s.loaded = false
	s.loadErr = nil
	s.state = replayState{}
	s.replayErr = nil
	s.mu.Unlock()
	s.applied = handleState{}
	s.kv.invalidate()
	s.convInCache = false
	s.opts.Observer.ModelLoaded(false)
	s.log.Info("model destroyed by a client", "model", desired.ModelPath)
	return nil
}

// checkLimits checks a run's inputs, cross-attention buffers or KV-cache ranges against the model
// loaded when it executes (not when it was queued: a client may have loaded another
// model, or a LoRA adapter, in between), so that the runtime reads nothing past them.
// The error is a *runtime.InputError naming the member; the worker checks again.
func (s *Supervisor) checkLimits(m workerproto.Message) error {
	lm, ok := s.LoadedModel()
	if !ok {
		return s.modelErr()
	}
	lim := lm.Limits()
	switch m := m.(type) {
	case *workerproto.Run:
		if err := runtime.CheckInputs(m.Inputs, lim); err != nil {
			return err
		}
		return runtime.CheckInferParams(&m.Infer, lim)
	case *workerproto.SetCrossAttnParams:
		return runtime.CheckCrossAttn(&m.Params, lim)
	case *workerproto.ClearKVCache:
		return runtime.CheckKVRanges(m.StartPos, m.EndPos, lim)
	}
	return nil
}

// execCall serves the other calls on the model and records the state they set.
func (s *Supervisor) execCall(p *proc, m workerproto.Message) (Outcome, error) {
	if err := s.modelErr(); err != nil {
		return Outcome{}, err
	}
	if err := s.checkLimits(m); err != nil {
		return Outcome{}, err
	}
	if _, query := m.(*workerproto.GetKVCacheSize); !query {
		// Every other call may change what the cache holds or how it was made.
		s.kv.invalidate()
	}
	mark := p.mark()
	r, err := s.call(p, m, s.opts.CallTimeout, m.Op().String())
	if err != nil {
		return Outcome{}, err
	}
	if r.Err != nil {
		return Outcome{}, s.explain(p, mark, r.Err)
	}
	s.mu.Lock()
	s.state.record(m)
	s.mu.Unlock()
	switch m := m.(type) {
	case *workerproto.SetChatTemplate:
		s.applied.chat = m
	case *workerproto.SetFunctionTools:
		s.applied.tools = m
	}
	return Outcome{Running: r.Running, CacheSizes: r.CacheSizes}, nil
}

// abortReason is why the executor aborted a run.
type abortReason int

const (
	notAborted abortReason = iota
	abortedByClient
	abortedByContext
	abortedByWatchdog
)

// runWatch is the state of one run's watchdog: its stall timer and why the run was
// aborted. It lives on the executor; the deliveries themselves go through a relay.
type runWatch struct {
	s         *Supervisor
	p         *proc
	t         *Ticket
	relay     *relay
	budget    prefillBudget
	stall     *time.Timer
	killTimer <-chan time.Time
	reason    abortReason
	// stallLimit is the limit a stalled run exceeded, noted when the watchdog fired.
	stallLimit string
	// run is the run's call id, which its abort names.
	run uint64
}

// abort asks the worker to stop the run (once) and arms the kill timer. The abort is
// queued, never awaited: a worker that does not read its socket cannot hold up the
// executor, whose kill timer ends it. It names the run, so it holds wherever the run
// is: still on its way to the worker, not yet started in the runtime, or running.
func (w *runWatch) abort(why abortReason) {
	if w.reason != notAborted {
		return
	}
	w.reason = why
	// The reply is not awaited: the run's own reply is what ends the wait.
	if _, err := w.p.client.Start(&workerproto.Abort{Run: w.run}, nil); err != nil {
		w.s.log.V(1).Info("cannot send abort", "error", err.Error())
	}
	w.killTimer = time.After(w.s.opts.AbortTimeout)
}

// stalled reports whether the run has gone past its limit without a delivery when the
// stall timer fires, and otherwise rearms the timer for the rest of the limit that
// the last delivery began. The timer is armed once per run and only moved when it
// fires, so a delivery costs the watchdog one atomic store.
func (w *runWatch) stalled() bool {
	last, ok := w.relay.lastDelivery()
	if !ok {
		return true // the prefill budget ran out before the first delivery
	}
	left := w.s.opts.TokenStallTimeout - time.Since(last)
	if left <= 0 {
		return true
	}
	w.stall.Reset(left)
	return false
}

// stallLimitText is the limit a stalled run exceeded, for its error.
func (w *runWatch) stallLimitText() string {
	if _, ok := w.relay.lastDelivery(); !ok {
		return w.budget.String()
	}
	return "no token for " + w.s.opts.TokenStallTimeout.String()
}

// relay hands a run's deliveries to its request. It runs on the goroutine that reads
// the worker's connection, so a token reaches the client's output buffer without
// waking another goroutine; the executor's watchdog reads only the time of the last
// delivery. Deliveries end before the run's reply is routed, so whoever waits for the
// reply sees everything the relay did.
type relay struct {
	s          *Supervisor
	onDelivery func(runtime.Delivery)
	// direct is the client the worker writes the run's tokens to while lent is true,
	// on the socket numbered socket.
	direct DirectClient
	lent   atomic.Bool
	p      *proc
	socket uint64
	// reclaimMu orders a reclaim with the lease's start: reclaimed is set by the
	// first reclaim, which asks the worker to stop only once the lease has started.
	reclaimMu sync.Mutex
	reclaimed bool
	start     time.Time
	// last is the time of the last delivery (nanoseconds after start, monotonic), or
	// -1 before the first.
	last atomic.Int64
	// prev is when the previous delivery came (start before the first); only the
	// relay's goroutine touches it.
	prev time.Time
}

func newRelay(s *Supervisor, onDelivery func(runtime.Delivery)) *relay {
	r := &relay{s: s, onDelivery: onDelivery, start: time.Now()}
	r.prev = r.start
	r.last.Store(-1)
	return r
}

// deliver relays one delivery, on the worker connection's read goroutine.
func (r *relay) deliver(d *workerproto.Delivery) {
	now := time.Now()
	first, gap := r.last.Load() < 0, now.Sub(r.prev)
	if d.Direct && !first && d.Gap > 0 {
		gap = d.Gap // the frame may have waited in the worker (workerproto.Delivery)
	}
	r.s.opts.Observer.Delivery(first, gap)
	r.prev = now
	if d.State == runtime.StateFinish && len(d.Results) > 0 {
		r.s.opts.Observer.Perf(d.Results[0].Perf)
	}
	switch {
	case d.Direct && r.direct != nil:
		r.s.opts.Observer.DirectWrite(d.Whole)
		// The worker writes nothing more to the client after a token it did not
		// write whole; the client writes the rest.
		if !d.Whole {
			r.lent.Store(false)
		}
		r.direct.Delivered(d.Delivery, d.Written, d.Whole)
	default:
		// The worker has stopped writing to the client: the run's end, or a delivery
		// it does not write itself; what follows is the supervisor's to send.
		r.endLease()
		if r.onDelivery != nil {
			r.onDelivery(d.Delivery)
		}
	}
	r.last.Store(int64(now.Sub(r.start)))
}

// lend passes the client's socket to the worker for run m when the client can take
// its tokens directly.
func (r *relay) lend(p *proc, m *workerproto.Run, client DirectClient) *workerproto.Run {
	r.p = p
	fd, d, ok := client.Lend(r.reclaim)
	if !ok {
		return m
	}
	defer func() { _ = unix.Close(fd) }() // the worker has its own copy
	r.reclaimMu.Lock()
	defer r.reclaimMu.Unlock()
	if r.reclaimed {
		// The client has something to send already.
		client.Return()
		return m
	}
	socket, err := p.handoff.Give(fd)
	if err != nil {
		r.s.log.V(1).Info("the worker cannot write tokens to the client; they go through the supervisor", "reason", err.Error())
		client.Return()
		return m
	}
	d.Socket = socket
	r.direct, r.socket = client, socket
	r.lent.Store(true)
	run := *m
	run.Direct = d
	return &run
}

// reclaim asks the worker to stop writing to the client, which has something else to
// send; the lease ends with the worker's answer, which comes after every token it
// wrote (or with the run). Called by the client, on any goroutine, at most once.
func (r *relay) reclaim() {
	r.reclaimMu.Lock()
	first := !r.reclaimed
	r.reclaimed = true
	r.reclaimMu.Unlock()
	if !first || !r.lent.Load() {
		return
	}
	pend, err := r.p.client.Start(&workerproto.Reclaim{Socket: r.socket}, nil)
	if err != nil {
		return // the worker is gone: the run's end gives the socket back
	}
	go func() {
		<-pend.Done()
		// Without its answer the worker was lost: the socket comes back once it has
		// exited (execRun), not before.
		if _, err := pend.Result(); err == nil {
			r.endLease()
		}
	}()
}

// endLease gives the client its socket back, once.
func (r *relay) endLease() {
	if r.lent.CompareAndSwap(true, false) {
		r.direct.Return()
	}
}

// lastDelivery is when the last delivery came; ok is false before the first.
func (r *relay) lastDelivery() (t time.Time, ok bool) {
	n := r.last.Load()
	if n < 0 {
		return time.Time{}, false
	}
	return r.start.Add(time.Duration(n)), true
}

// execRPCRun serves rkllm.run: the handle gets back the template and tools JSON-RPC
// set, and the KV cache is no longer what a conversation left.
func (s *Supervisor) execRPCRun(p *proc, t *Ticket, m *workerproto.Run) (Outcome, error) {
	if err := s.modelErr(); err != nil {
		return Outcome{}, err
	}
	if err := s.checkLimits(m); err != nil {
		return Outcome{}, err
	}
	s.kv.invalidate()
	if err := s.restoreForRPC(p); err != nil {
		return Outcome{}, fmt.Errorf("restore the chat template and tools: %w", err)
	}
	// A conversation left in the cache is cleared by the worker before the run, in the
	// run's own round trip.
	m.ClearKVCache = s.convInCache
	out, err := s.execRun(p, t, m, t.req.OnDelivery)
	if err == nil {
		s.convInCache = false
	}
	return out, err
}

// execRun runs one generation: its deliveries are relayed as they are read (see
// relay), and the executor aborts the run when the client asks, when the request's
// context ends or when no delivery comes in time (the prefill budget before the first,
// TokenStallTimeout after), and kills the worker when an abort does not end the run
// within AbortTimeout, or at once when the supervisor stops.
func (s *Supervisor) execRun(p *proc, t *Ticket, m *workerproto.Run, onDelivery func(runtime.Delivery)) (Outcome, error) {
	m = s.retuned(m)
	mark := p.mark()
	budget := s.prefillBudget(m.Inputs)
	rl := newRelay(s, onDelivery)
	if t.req.Direct != nil {
		m = rl.lend(p, m, t.req.Direct)
	}
	// The worker has answered or ended by the time this runs (runResult, connLost):
	// it writes nothing more to the client.
	defer rl.endLease()
	pend, err := p.client.Start(m, rl.deliver)
	if err != nil {
		if errors.Is(err, workerproto.ErrFrameTooLarge) {
			return Outcome{}, tooLarge(err)
		}
		return Outcome{}, s.connLost(p)
	}
	w := &runWatch{s: s, p: p, t: t, relay: rl, budget: budget, stall: time.NewTimer(budget.total), run: pend.ID()}
	defer w.stall.Stop()
	ctxDone, stopping := t.ctx.Done(), s.loopCtx.Done()
	for {
		select {
		case <-pend.Done():
			return s.runResult(p, t, pend, w, mark)
		case <-w.stall.C:
			if !w.stalled() {
				continue
			}
			w.stallLimit = w.stallLimitText()
			s.log.Info("watchdog: no token delivered; aborting the run", "limit", w.stallLimit, "request_id", t.req.ID)
			w.abort(abortedByWatchdog)
		case <-t.abort:
			w.abort(abortedByClient)
		case <-ctxDone:
			ctxDone = nil
			w.abort(abortedByContext)
		case <-w.killTimer:
			s.log.Info("abort did not end the run; killing the worker", "abort_timeout", s.opts.AbortTimeout.String(), "request_id", t.req.ID)
			w.killTimer = nil
			p.kill()
		case <-stopping:
			// Close, or a shutdown past its grace: the run may not hold the stop up.
			stopping = nil
			p.kill()
		}
	}
}

// runResult turns the end of a run into its outcome.
func (s *Supervisor) runResult(p *proc, t *Ticket, pend *workerproto.Pending, w *runWatch, mark int) (Outcome, error) {
	r, err := pend.Result()
	killed := err != nil
	if killed {
		if res, ok := s.runLost(p, w.reason); ok {
			return res.out, res.err
		}
	}
	switch w.reason {
	case abortedByWatchdog:
		return Outcome{}, &TimeoutError{Reason: "token stall", After: w.stallLimit, WorkerKilled: killed, AbortSent: true}
	case abortedByContext:
		if errors.Is(t.ctx.Err(), context.DeadlineExceeded) {
			return Outcome{}, &TimeoutError{Reason: "request timeout", After: "the deadline passed while running", WorkerKilled: killed, AbortSent: true}
		}
		return Outcome{}, fmt.Errorf("%w: the client went away or cancelled the request while running", ErrAborted)
	}
	if r.Err != nil {
		return Outcome{}, s.explain(p, mark, r.Err)
	}
	return Outcome{Aborted: w.reason == abortedByClient, CacheSizes: r.CacheSizes}, nil
}

// runEnd is a run's outcome and error.
type runEnd struct {
	out Outcome
	err error
}

// runLost handles a run whose worker was lost. ok is false when the reason the run was
// aborted for (the watchdog, its client leaving) explains its end better.
func (s *Supervisor) runLost(p *proc, reason abortReason) (runEnd, bool) {
	if why := p.unresponsiveReason(); why != "" {
		_ = s.lost(p, "unresponsive")
		return runEnd{err: unresponsiveError(why)}, reason != abortedByContext
	}
	if s.loopCtx.Err() != nil {
		_ = s.lost(p, "shutdown")
		if reason == abortedByClient { // a shutdown's abort: the run so far is its answer
			return runEnd{out: Outcome{Aborted: true}}, true
		}
		return runEnd{err: fmt.Errorf("%w: the worker was stopped while the request ran", ErrShuttingDown)}, reason != abortedByContext
	}
	cause := "crash"
	if reason != notAborted {
		cause = "abort_timeout"
	}
	crash := s.lost(p, cause)
	return runEnd{err: crash}, reason == notAborted || reason == abortedByClient
}

// runtimeErrorGrace bounds the wait for the runtime's own explanation of a failure.
const runtimeErrorGrace = 200 * time.Millisecond

// RuntimeError is a runtime call's failure with the reason the runtime printed.
type RuntimeError struct {
	Err error
	// Reason is the runtime's last error line on stderr for this call ("" if none).
	Reason string
}

func (e *RuntimeError) Error() string { return fmt.Sprintf("%v: %s", e.Err, e.Reason) }

// Unwrap returns the call's error.
func (e *RuntimeError) Unwrap() error { return e.Err }

// explain adds the runtime's stderr reason to a failed call's error.
func (s *Supervisor) explain(p *proc, mark int, err error) error {
	if err == nil {
		return nil
	}
	if reason := p.runtimeError(mark, runtimeErrorGrace); reason != "" {
		return &RuntimeError{Err: err, Reason: reason}
	}
	return err
}
