// Package worker is the process of rkllm-server that owns the runtime handle. It reads
// requests from the supervisor over a socketpair (package workerproto), calls the
// runtime, and streams result deliveries back. A crash in the closed runtime library
// kills only this process; the supervisor keeps the clients and restarts it.
package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/rkllm-operator/rkllm-operator/server/memlimit"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Runtime is the loaded runtime library: what the worker needs before a model exists.
type Runtime interface {
	// ABI is the layout generation the binding speaks.
	ABI() runtime.ABI
	// DefaultParams is rkllm_createDefaultParam().
	DefaultParams() runtime.Param
	// Init loads a model (rkllm_init).
	Init(p runtime.Param) (Model, error)
}

// Model is one runtime handle. IsRunning is called while Run is in progress on another
// goroutine; the worker never calls any other method concurrently. A run is aborted by
// ending its context, which the binding turns into rkllm_abort (runtime.Handle.Run).
type Model interface {
	Run(ctx context.Context, inputs []runtime.Input, ip runtime.InferParams, fn runtime.ResultFunc) error
	IsRunning() bool
	Destroy() error
	LoadLora(a runtime.LoraAdapter) error
	LoadPromptCache(path string) error
	ReleasePromptCache() error
	ClearKVCache(keepSystemPrompt bool, ranges []runtime.KVRange) error
	KVCacheSize() ([]int, error)
	SetChatTemplate(systemPrompt, promptPrefix, promptPostfix string) error
	SetFunctionTools(systemPrompt, tools, toolResponseStr string) error
	SetCrossAttnParams(p runtime.CrossAttnParams) error
	// SetEmbedWidth records the model's embedding width from configuration;
	// LearnEmbedWidth learns it with a run (runtime.Handle documents both). So do
	// SetVocabSize and LearnVocabSize for the vocabulary size.
	SetEmbedWidth(width int) error
	LearnEmbedWidth(ctx context.Context) (int, error)
	SetVocabSize(size int) error
	LearnVocabSize(ctx context.Context) (int, error)
}

// errNoModel answers requests that need a model when none is loaded.
var errNoModel = errors.New("no model is loaded")

// Worker serves one supervisor connection.
type Worker struct {
	rt      Runtime
	library string
	conn    *workerproto.Conn
	log     logr.Logger

	mu    sync.Mutex // guards model
	model Model

	// busy is held by the one request on the model in progress (all but Abort and
	// IsRunning). The supervisor never sends two; TryLock turns a bug into an error
	// instead of two calls racing inside the runtime.
	busy sync.Mutex
	wg   sync.WaitGroup

	// runs holds the cancel function of each Run received and not yet answered, by call
	// id. A Run is entered here by the read loop before the next frame is read, so an
	// Abort (which names its run) always finds a run it arrives after, however far the
	// run has got: not yet handed to the runtime, starting there, or running.
	runsMu sync.Mutex
	runs   map[uint64]context.CancelFunc

	// trim, when set, gives the memory of large frames back once their request is done.
	trim *memlimit.Trimmer
	// tokens, when set, writes a run's token deliveries without entering Go.
	tokens TokenWriter
	// clients, when set, holds the client sockets the supervisor passed for runs whose
	// tokens the worker writes to the client itself (workerproto.Run.Direct).
	clients ClientSockets
}

// TokenWriter writes a run's token deliveries from the runtime's thread, as the
// connection's Send would (workerproto.FrameSink): For returns its sink for the run
// with call id, writing the tokens to the client's socket client itself when client
// >= 0 (workerproto.Direct).
type TokenWriter interface {
	For(id uint64, client int, d *workerproto.Direct) (runtime.Sink, error)
	// Reclaim stops the writes to the client socket numbered socket: when it returns,
	// nothing more is written there.
	Reclaim(socket uint64)
}

// ClientSockets are the client sockets the supervisor passes for direct runs: Take
// returns the one numbered id (workerproto.Direct.Socket; the caller closes it),
// false when there is none.
type ClientSockets interface {
	Take(id uint64) (fd int, ok bool)
}

// sinkModel is a Model that offers a run's deliveries to a runtime.Sink first
// (runtime.Handle).
type sinkModel interface {
	RunWithSink(ctx context.Context, inputs []runtime.Input, ip runtime.InferParams, sink runtime.Sink, fn runtime.ResultFunc) error
}

// New returns a worker for conn. library names the runtime library for Hello.
func New(rt Runtime, library string, conn *workerproto.Conn, log logr.Logger) *Worker {
	return &Worker{rt: rt, library: library, conn: conn, log: log, runs: map[uint64]context.CancelFunc{}}
}

// TrimAfterLarge has t told of each request whose frame, or a frame it sent, was large,
// once the request is done, so the worker gives that memory back. Call it before Serve.
func (w *Worker) TrimAfterLarge(t *memlimit.Trimmer) {
	w.trim = t
	w.conn.OnLargeSend(func(size int) { t.Note(int64(size)) })
}

// WriteTokensWith has tw write the token deliveries of runs on models that take a
// runtime.Sink; everything else goes through the connection. Call it before Serve.
func (w *Worker) WriteTokensWith(tw TokenWriter) { w.tokens = tw }

// WriteToClients has runs that ask for it (workerproto.Run.Direct) write their tokens
// to the client socket taken from cs, through the TokenWriter. Call it before Serve.
func (w *Worker) WriteToClients(cs ClientSockets) { w.clients = cs }

// Serve sends Hello and serves requests until the supervisor closes the connection,
// then aborts a run in progress, destroys the model and returns nil. It returns an
// error when the connection fails otherwise.
func (w *Worker) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hello := &workerproto.Hello{ABI: w.rt.ABI(), PID: os.Getpid(), Library: w.library, Default: w.rt.DefaultParams()}
	if sim, ok := w.rt.(interface{ Simulator() string }); ok {
		hello.Simulator = sim.Simulator()
	}
	if err := w.conn.Send(0, hello); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	var err error
	for {
		var id uint64
		var m workerproto.Message
		id, m, err = w.conn.Receive()
		if err != nil {
			break
		}
		w.dispatch(ctx, id, m, w.conn.LastReceived())
	}
	cancel()
	w.shutdown()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("read request: %w", err)
}

// shutdown frees the model once every request is done; a run in progress was aborted
// when Serve's context ended.
func (w *Worker) shutdown() {
	w.wg.Wait()
	if m := w.current(); m != nil {
		if err := m.Destroy(); err != nil {
			w.log.Error(err, "destroy at shutdown")
		}
		w.setModel(nil)
	}
}

func (w *Worker) current() Model {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.model
}

func (w *Worker) setModel(m Model) {
	w.mu.Lock()
	w.model = m
	w.mu.Unlock()
}

// dispatch serves one request on its own goroutine, so Abort and IsRunning are answered
// while a Run (or a slow Init) is in progress. size is the request's frame.
func (w *Worker) dispatch(ctx context.Context, id uint64, m workerproto.Message, size int) {
	w.wg.Add(1)
	switch m := m.(type) {
	case *workerproto.Abort:
		// Here, not on the goroutine: the run it names is entered in runs already.
		w.abortRun(m.Run)
		go func() {
			defer w.wg.Done()
			w.reply(id, &workerproto.Reply{})
		}()
		return
	case *workerproto.Reclaim:
		if w.tokens != nil {
			w.tokens.Reclaim(m.Socket)
		}
		go func() {
			defer w.wg.Done()
			w.reply(id, &workerproto.Reply{}) // after what the sink wrote before
		}()
		return
	case *workerproto.IsRunning, *workerproto.Ping:
		go func() {
			defer w.wg.Done()
			w.reply(id, w.serveConcurrent(m))
		}()
		return
	}
	if !w.busy.TryLock() {
		w.wg.Done()
		if run, ok := m.(*workerproto.Run); ok {
			// Its client's socket must not stay in flight, holding the client's
			// connection open.
			if fd := w.clientFor(run); fd >= 0 {
				_ = unix.Close(fd)
			}
		}
		w.reply(id, &workerproto.Reply{Err: workerproto.ErrWorkerBusy})
		return
	}
	if _, ok := m.(*workerproto.Run); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		w.runsMu.Lock()
		w.runs[id] = cancel
		w.runsMu.Unlock()
	}
	go func() {
		defer w.wg.Done()
		r := w.serve(ctx, id, m)
		w.endRun(id)
		// Unlock before replying: the supervisor may send the next request as soon as
		// it has the reply.
		w.busy.Unlock()
		w.reply(id, r)
		w.trim.Note(int64(size))
	}()
}

// abortRun stops the run with call id id: its context ends, so the binding refuses to
// start it, or aborts it in the runtime until the runtime has taken the abort (see
// runtime.Handle.Run). A run that has ended already is left alone.
func (w *Worker) abortRun(id uint64) {
	w.runsMu.Lock()
	cancel := w.runs[id]
	w.runsMu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// endRun forgets the run with call id id (a no-op for other requests).
func (w *Worker) endRun(id uint64) {
	w.runsMu.Lock()
	cancel := w.runs[id]
	delete(w.runs, id)
	w.runsMu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (w *Worker) reply(id uint64, r *workerproto.Reply) {
	err := w.conn.Send(id, r)
	var fe *workerproto.FrameTooLargeError
	if errors.As(err, &fe) && r.Err != nil {
		// An error that quotes a client's input (a model path) may not fit a small
		// frame: the supervisor gets it cut rather than no reply at all.
		msg := r.Err.Error()
		msg = msg[:min(len(msg), fe.Limit/2)] + "... (cut to fit a frame)"
		err = w.conn.Send(id, &workerproto.Reply{Err: &workerproto.RemoteError{Message: strings.ToValidUTF8(msg, "")}, Running: r.Running})
	}
	if err != nil {
		w.log.V(1).Info("cannot send reply; the supervisor is gone", "error", err.Error())
	}
}

// serveConcurrent answers the queries that may run beside a Run: Ping and IsRunning.
func (w *Worker) serveConcurrent(m workerproto.Message) *workerproto.Reply {
	if _, ok := m.(*workerproto.Ping); ok {
		return &workerproto.Reply{}
	}
	model := w.current()
	if model == nil {
		return &workerproto.Reply{}
	}
	return &workerproto.Reply{Running: model.IsRunning()}
}

// serve answers a request that needs the model to itself.
func (w *Worker) serve(ctx context.Context, id uint64, m workerproto.Message) *workerproto.Reply {
	if init, ok := m.(*workerproto.Init); ok {
		if w.current() != nil {
			return &workerproto.Reply{Err: errors.New("a model is already loaded; destroy it first")}
		}
		model, err := w.rt.Init(init.Param)
		if err != nil {
			return &workerproto.Reply{Err: err}
		}
		width := w.shape(ctx, init.EmbedWidth, shapeOf{"embedding width", "embed_width", "inputs with embeddings", "--embedding-width", model.SetEmbedWidth, model.LearnEmbedWidth})
		vocab := w.shape(ctx, init.VocabSize, shapeOf{"vocabulary size", "vocab_size", "token inputs", "--vocab-size", model.SetVocabSize, model.LearnVocabSize})
		w.setModel(model)
		return &workerproto.Reply{EmbedWidth: width, VocabSize: vocab}
	}
	model := w.current()
	if model == nil {
		return &workerproto.Reply{Err: errNoModel}
	}
	switch m := m.(type) {
	case *workerproto.Destroy:
		err := model.Destroy()
		w.setModel(nil)
		return &workerproto.Reply{Err: err}
	case *workerproto.Run:
		return w.runRequest(ctx, id, model, m)
	case *workerproto.GetKVCacheSize:
		sizes, err := cacheSizes(model)
		return &workerproto.Reply{Err: err, CacheSizes: sizes}
	}
	return &workerproto.Reply{Err: setState(model, m)}
}

// shapeOf is one size of a model that the runtime reports only in a run's result
// (the embedding width, the vocabulary size), and how to set or learn it.
type shapeOf struct {
	what, key, refused, flag string
	set                      func(int) error
	learn                    func(context.Context) (int, error)
}

// shape gives a new model one of its sizes, configured or learned, and returns it; 0
// when it could not be learned, which leaves the model serving everything but the
// inputs that need it.
func (w *Worker) shape(ctx context.Context, configured int, s shapeOf) int {
	if configured > 0 {
		if err := s.set(configured); err != nil {
			w.log.Error(err, "the configured "+s.what+" is refused; "+s.refused+" will be refused")
			return 0
		}
		return configured
	}
	n, err := s.learn(ctx)
	if err != nil {
		w.log.Error(err, "cannot learn the model's "+s.what+"; "+s.refused+" will be refused (set "+s.flag+")")
		return 0
	}
	w.log.V(1).Info("learned the model's "+s.what, s.key, n)
	return n
}

// runRequest serves a Run with what the supervisor folded into its round trip: the
// KV cache cleared before, its size reported after.
func (w *Worker) runRequest(ctx context.Context, id uint64, model Model, m *workerproto.Run) *workerproto.Reply {
	if m.ClearKVCache {
		if err := model.ClearKVCache(false, nil); err != nil {
			return &workerproto.Reply{Err: fmt.Errorf("clear the KV cache before the run: %w", err)}
		}
	}
	if err := w.run(ctx, id, model, m); err != nil {
		return &workerproto.Reply{Err: err}
	}
	r := &workerproto.Reply{}
	if m.ReportKVCacheSize {
		r.CacheSizes, _ = cacheSizes(model) // nil: the supervisor does not know the cache
	}
	return r
}

// cacheSizes is rkllm_get_kv_cache_size in the protocol's integers.
func cacheSizes(model Model) ([]int32, error) {
	sizes, err := model.KVCacheSize()
	out := make([]int32, len(sizes))
	for i, v := range sizes {
		out[i] = int32(v) //nolint:gosec // cache positions fit the C int they come from
	}
	return out, err
}

// setState serves the calls that change the handle's state.
func setState(model Model, m workerproto.Message) error {
	switch m := m.(type) {
	case *workerproto.LoadLora:
		return model.LoadLora(m.Adapter)
	case *workerproto.LoadPromptCache:
		return model.LoadPromptCache(m.Path)
	case *workerproto.ReleasePromptCache:
		return model.ReleasePromptCache()
	case *workerproto.ClearKVCache:
		ranges, err := kvRanges(m.StartPos, m.EndPos)
		if err != nil {
			return err
		}
		return model.ClearKVCache(m.KeepSystemPrompt, ranges)
	case *workerproto.SetChatTemplate:
		return model.SetChatTemplate(m.SystemPrompt, m.PromptPrefix, m.PromptPostfix)
	case *workerproto.SetFunctionTools:
		return model.SetFunctionTools(m.SystemPrompt, m.Tools, m.ToolResponseStr)
	case *workerproto.SetCrossAttnParams:
		return model.SetCrossAttnParams(m.Params)
	}
	return fmt.Errorf("unexpected %s request", m.Op())
}

// kvRanges pairs the start and end arrays of rkllm_clear_kv_cache (nil: clear all).
func kvRanges(start, end []int32) ([]runtime.KVRange, error) {
	if start == nil && end == nil {
		return nil, nil
	}
	if len(start) != len(end) {
		return nil, fmt.Errorf("clear_kv_cache: %d start positions but %d end positions", len(start), len(end))
	}
	ranges := make([]runtime.KVRange, len(start))
	for i := range start {
		ranges[i] = runtime.KVRange{Start: int(start[i]), End: int(end[i])}
	}
	return ranges, nil
}

// run calls Run with ctx, which ends when the supervisor aborts the run (or goes
// away), and sends every delivery as it comes. When the supervisor cannot be reached
// any more the run is aborted too, so the NPU is not left generating for nobody. A
// delivery too large for one frame (hidden states or logits of a long input) aborts
// the run as well, and the run fails with a *workerproto.ResultTooLargeError: it must
// not end as a success missing its data. A run ended by its context is not a failure:
// it ends as aborted, with what it delivered (perhaps nothing: it may not have started).
func (w *Worker) run(ctx context.Context, id uint64, model Model, m *workerproto.Run) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		stopOnce sync.Once
		resMu    sync.Mutex
		tooLarge error
	)
	onResult := func(d runtime.Delivery) runtime.CallbackAction {
		msg := &workerproto.Delivery{Delivery: d}
		err := w.conn.Send(id, msg)
		if err == nil {
			return runtime.Continue
		}
		var fe *workerproto.FrameTooLargeError
		if errors.As(err, &fe) {
			resMu.Lock()
			if tooLarge == nil {
				tooLarge = &workerproto.ResultTooLargeError{Field: msg.Fields(), Size: fe.Size, Limit: fe.Limit}
				err = tooLarge
			}
			resMu.Unlock()
		}
		stopOnce.Do(func() {
			// Logged as an error: the client gets an error too, and whoever runs the
			// server should see why without raising the log level.
			w.log.Error(err, "cannot send a delivery; aborting the run")
			stop() // the binding aborts from a goroutine of its own, not the callback
		})
		return runtime.Continue
	}
	client := w.clientFor(m)
	if client >= 0 {
		defer func() { _ = unix.Close(client) }()
	}
	var err error
	sm, ok := model.(sinkModel)
	if ok && w.tokens != nil {
		sink, serr := w.tokens.For(id, client, m.Direct)
		if serr != nil {
			// The tokens go through the supervisor, which writes them as before.
			w.log.Error(serr, "cannot write the run's tokens to the client")
			sink, _ = w.tokens.For(id, -1, nil)
		}
		err = sm.RunWithSink(ctx, m.Inputs, m.Infer, sink, onResult)
	} else {
		err = model.Run(ctx, m.Inputs, m.Infer, onResult)
	}
	resMu.Lock()
	defer resMu.Unlock()
	if tooLarge != nil {
		return tooLarge
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil // aborted: the supervisor knows why
	}
	return err
}

// clientFor takes the client socket passed for a direct run, -1 when the run's tokens
// go through the supervisor (its first delivery then ends the supervisor's wait).
func (w *Worker) clientFor(m *workerproto.Run) int {
	if m.Direct == nil || w.clients == nil {
		return -1
	}
	fd, ok := w.clients.Take(m.Direct.Socket)
	if !ok {
		return -1
	}
	if w.tokens == nil {
		_ = unix.Close(fd)
		return -1
	}
	return fd
}
