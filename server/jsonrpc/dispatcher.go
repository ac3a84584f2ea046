package jsonrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	kjson "sigs.k8s.io/json"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
)

// Handler serves one method. It returns the result (marshalled with encoding/json) or
// an error; an *Error (possibly wrapped) chooses the code, anything else is reported as
// ErrInternal and logged.
type Handler interface {
	ServeRPC(ctx context.Context, call *Call) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, call *Call) (any, error)

// ServeRPC calls f.
func (f HandlerFunc) ServeRPC(ctx context.Context, call *Call) (any, error) { return f(ctx, call) }

// Peer describes the connection a message arrived on. Transports fill it once per
// connection (HTTP: per request).
type Peer struct {
	// Transport is "http" or "unix".
	Transport string
	// ID names the owner of the requests that arrive on it, for rkllm.abort: a socket
	// connection owns its own; over HTTP, the API key a request presents owns the
	// requests made with it (every request when no key is configured).
	ID string
	// Admin is true when state-changing methods are allowed on this connection.
	Admin bool
	// Notify sends a notification to the client, or is nil when the transport cannot
	// (then streaming is unavailable). It must be safe for concurrent use.
	Notify func(n *Notification) error
	// Persistent is true when notifications can still reach the client after the
	// response to the request that caused them (needed by rkllm.run_async).
	Persistent bool
	// Context lives as long as the connection; work that outlives one request (an
	// asynchronous run) is bound to it.
	Context context.Context
	// Lend, when set, lends the connection's socket to another writer for the
	// notifications of one run (see Lease); false when it cannot now (something waits
	// to be written to the client). reclaim is called, once, when the transport has
	// something else to write: it must have the other writer stop and the lease end.
	Lend func(reclaim func()) (Lease, bool)

	messages atomic.Int64 // messages being served
	requests atomic.Int64 // requests being served that count against MaxPeerRequests
	holds    atomic.Int64 // work that outlives its request (Hold)
}

// Lease is a client's socket lent for the notifications of one streamed run, which
// the worker process writes to it itself (supervisor.DirectClient). Until Return the
// transport writes nothing to the client: what it is given to send waits.
type Lease interface {
	// FD returns a new descriptor of the client's socket; the caller closes it.
	FD() (int, error)
	// Framing is how the transport frames a notification: open and close around its
	// JSON, the whole as an HTTP/1.1 chunk when chunked.
	Framing() (open, close string, chunked bool)
	// Wrote counts n bytes of whole notifications, framing included, that the other
	// writer wrote to the client.
	Wrote(n int)
	// Return ends the lease. part, when not nil, is a notification of which the other
	// writer wrote only the first written bytes (framing included): the transport
	// writes the rest of it first.
	Return(part *Notification, written int)
}

// Hold marks work of this connection that goes on after its request was answered (an
// asynchronous run), so the connection does not count as idle; release ends it.
func (p *Peer) Hold() (release func()) {
	p.holds.Add(1)
	var once sync.Once
	return func() { once.Do(func() { p.holds.Add(-1) }) }
}

// Busy reports whether the connection has messages being served or held work.
func (p *Peer) Busy() bool { return p.messages.Load() > 0 || p.holds.Load() > 0 }

// Call is one request being served.
type Call struct {
	*Request
	Peer *Peer
	// InBatch is true when the request came in a batch.
	InBatch bool

	admitOnce sync.Once
	admit     func()
	reply     *replyHooks
}

// replyHooks collects the AfterReply functions of one message's requests.
type replyHooks struct {
	mu    sync.Mutex
	hooks []func()
}

// AfterReply registers f to run once the response to this request has been written
// to the client (or its writing failed). A handler whose work sends notifications
// after it returns (rkllm.run_async) uses it so that they never overtake the response.
func (c *Call) AfterReply(f func()) {
	if c.reply == nil {
		f()
		return
	}
	c.reply.mu.Lock()
	defer c.reply.mu.Unlock()
	c.reply.hooks = append(c.reply.hooks, f)
}

func (h *replyHooks) run() {
	h.mu.Lock()
	hooks := h.hooks
	h.hooks = nil
	h.mu.Unlock()
	for _, f := range hooks {
		f()
	}
}

// Admit tells the transport that this request has taken its place in line (queued),
// so the next message from the same connection may be read. Requests from one
// connection are therefore queued in the order they were sent, even though they are
// served concurrently. Returning from the handler admits implicitly.
func (c *Call) Admit() {
	c.admitOnce.Do(func() {
		if c.admit != nil {
			c.admit()
		}
	})
}

// ErrCannotNotify is returned by Call.Notify when the transport has no way to deliver
// notifications for this request.
var ErrCannotNotify = errors.New("this transport cannot deliver notifications for this request")

// CanNotify reports whether Notify can deliver.
func (c *Call) CanNotify() bool { return c.Peer != nil && c.Peer.Notify != nil }

// Notify sends a notification to the caller.
func (c *Call) Notify(method string, params any) error {
	if !c.CanNotify() {
		return ErrCannotNotify
	}
	return c.Peer.Notify(&Notification{Method: method, Params: params})
}

// DecodeParams decodes the params object into v strictly: unknown members and wrong
// types are ErrInvalidParams naming the member. Absent params decode as {}.
func (c *Call) DecodeParams(v any) error {
	p := bytes.TrimSpace(c.Params)
	if len(p) == 0 {
		p = []byte("{}")
	}
	if p[0] != '{' {
		return ErrInvalidParams.Withf("invalid params: %s takes its params by name (a JSON object), not by position", c.Method)
	}
	return ParamsError(UnmarshalStrict(p, v))
}

// UnmarshalStrict decodes JSON into v the strict way params are decoded: member names
// match exactly (case-sensitive), and an unknown or repeated member is an error naming
// it (a kjson.FieldError). Parameter types decode nested members with it too.
func UnmarshalStrict(data []byte, v any) error {
	strict, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return err
	}
	if len(strict) > 0 {
		return strict[0]
	}
	return nil
}

// ParamsError turns an error from decoding params (encoding/json's, UnmarshalStrict's
// or an *Error) into ErrInvalidParams naming the member and the rule; nil stays nil.
func ParamsError(err error) error {
	if err == nil {
		return nil
	}
	var rpcErr *Error
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	var fieldErr kjson.FieldError
	if errors.As(err, &fieldErr) {
		if strings.HasPrefix(fieldErr.Error(), "duplicate field") {
			return InvalidParams(fieldErr.FieldPath(), "is given more than once")
		}
		return InvalidParams(fieldErr.FieldPath(), "unknown member (names are case-sensitive); check the spelling against docs/jsonrpc.md")
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			field = "params"
		}
		return InvalidParams(field, "must be %s, not a JSON %s", describeType(typeErr.Type), typeErr.Value)
	}
	return ErrInvalidParams.Withf("invalid params: %v", err)
}

// Describer is implemented by parameter types with their own JSON rule (an enumeration
// accepting names or numbers, say): invalid-params errors quote DescribeJSON. A type's
// UnmarshalJSON reports a bad value as a *json.UnmarshalTypeError of its own type, so
// the error names the member too.
type Describer interface {
	DescribeJSON() string
}

var describerType = reflect.TypeFor[Describer]()

// describeType names a Go type the way a JSON client thinks of it.
func describeType(rt reflect.Type) string {
	if rt == nil {
		return "another type"
	}
	if rt.Implements(describerType) {
		return reflect.Zero(rt).Interface().(Describer).DescribeJSON()
	}
	if reflect.PointerTo(rt).Implements(describerType) {
		return reflect.New(rt).Interface().(Describer).DescribeJSON()
	}
	t := rt.String()
	switch {
	case t == "string":
		return "a string"
	case t == "bool":
		return "a boolean"
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer in range of " + t
	case strings.HasPrefix(t, "float"):
		return "a number"
	case strings.HasPrefix(t, "[]"):
		return "an array"
	case strings.HasPrefix(t, "map"), strings.Contains(t, "."):
		return "an object"
	}
	return t
}

// Observer receives one observation per request served (for metrics).
type Observer interface {
	// ObserveRequest reports a method ("" for requests that never reached one), the
	// error code (0 for success) and the time spent.
	ObserveRequest(method string, code int64, elapsed time.Duration)
}

// Dispatcher routes requests to handlers by method name. Register methods before
// serving; Handle is safe for concurrent use.
type Dispatcher struct {
	log      logr.Logger
	observer Observer
	methods  map[string]Handler
	quick    map[string]bool // methods that never wait (NeverWaits)
	limits   Limits
	draining atomic.Bool
	budget   *inflight.Budget
}

// SetBudget makes the dispatcher charge the server's one budget of bytes in flight,
// which the transports charge too (by default it has one of its own, of
// Limits.MaxInflightBytes). Call it before serving.
func (d *Dispatcher) SetBudget(b *inflight.Budget) { d.budget = b }

// admit charges a message to the budget of bytes in flight, before it is decoded: what
// decoding it and handing it to the worker may allocate (DecodeCost), on top of its raw
// bytes, which the transport charged as it read them to the account in ctx (without
// one, the raw bytes are charged here). It counts the message on its connection;
// release gives the connection's count back and ends an account opened here. It fails
// with ErrBusy (charging nothing more) when the budget is spent; a message alone in
// flight is always admitted.
func (d *Dispatcher) admit(ctx context.Context, peer *Peer, msg []byte) (release func(), err *Error) {
	acct := inflight.FromContext(ctx)
	own := acct == nil
	if own {
		acct = d.budget.Open()
	}
	charge := DecodeCost(msg)
	if own {
		charge += len(msg)
	}
	if cerr := acct.Charge(charge); cerr != nil {
		if own {
			acct.Close()
		}
		return nil, BusyError(cerr)
	}
	if peer != nil {
		peer.messages.Add(1)
	}
	return func() {
		if own {
			acct.Close()
		}
		if peer != nil {
			peer.messages.Add(-1)
		}
	}, nil
}

// admitRequest counts a request against its connection's cap of requests in flight;
// release gives it back.
func (d *Dispatcher) admitRequest(peer *Peer, method string) (release func(), err *Error) {
	if peer == nil || d.quick[method] {
		return func() {}, nil
	}
	if m := peer.requests.Add(1); m > int64(d.limits.MaxPeerMessages) {
		peer.requests.Add(-1)
		return nil, ErrBusy.Withf("busy: this connection has %d requests in flight (limit %d, --max-inflight-per-connection); wait for answers before sending more", m-1, d.limits.MaxPeerMessages).
			WithData(map[string]any{"limit": "max-inflight-per-connection", "max": d.limits.MaxPeerMessages})
	}
	return func() { peer.requests.Add(-1) }, nil
}

// reject answers every request of msg with e (invalid ones with their own error).
func (d *Dispatcher) reject(msg []byte, e *Error) (resps []*Response, batch bool) {
	items, batch := decode(msg, d.limits)
	for _, it := range items {
		switch {
		case it.err != nil:
			d.observe("", it.err.Error.Code, 0)
			resps = append(resps, it.err)
		case !it.req.IsNotification():
			method := it.req.Method
			if _, ok := d.methods[method]; !ok {
				method = ""
			}
			d.observe(method, e.Code, 0)
			resps = append(resps, &Response{ID: it.req.ID, Error: e})
		}
	}
	return resps, batch
}

// NewDispatcher returns a dispatcher that logs handler panics and internal errors to
// log and reports each request to observer (which may be nil).
func NewDispatcher(log logr.Logger, observer Observer) *Dispatcher {
	l := Limits{}.withDefaults()
	return &Dispatcher{log: log, observer: observer, methods: map[string]Handler{}, quick: map[string]bool{}, limits: l, budget: inflight.New(l.MaxInflightBytes)}
}

// NeverWaits marks methods that answer at once (rkllm.abort, rkllm.is_running): they
// are not counted against a connection's cap of requests in flight, so a client at
// its cap can still abort. Call it before serving.
func (d *Dispatcher) NeverWaits(methods ...string) {
	for _, m := range methods {
		d.quick[m] = true
	}
}

// SetLimits sets the bounds every message is checked against before it is decoded
// (zero fields take their defaults), and gives the dispatcher a budget of
// MaxInflightBytes of its own (SetBudget shares one with the transports instead).
// Call it before serving.
func (d *Dispatcher) SetLimits(l Limits) {
	d.limits = l.withDefaults()
	d.budget = inflight.New(d.limits.MaxInflightBytes)
}

// Limits returns the bounds in force.
func (d *Dispatcher) Limits() Limits { return d.limits }

// Register adds a method. It panics on a duplicate name (a programming error).
func (d *Dispatcher) Register(method string, h Handler) {
	if _, dup := d.methods[method]; dup {
		panic("jsonrpc: method registered twice: " + method)
	}
	d.methods[method] = h
}

// Drain makes every later request fail with ErrShuttingDown (requests already being
// served go on).
func (d *Dispatcher) Drain() { d.draining.Store(true) }

// Draining reports whether Drain was called.
func (d *Dispatcher) Draining() bool { return d.draining.Load() }

// Handle serves one message from peer and returns its responses (none for
// notifications) and whether the message was a batch; EncodeResponses writes them.
// AfterReply hooks run before it returns: transports use Serve, which runs them after
// writing.
func (d *Dispatcher) Handle(ctx context.Context, peer *Peer, msg []byte, admitted func()) (resps []*Response, batch bool) {
	release, rerr := d.admit(ctx, peer, msg)
	if rerr != nil {
		if admitted != nil {
			admitted()
		}
		return d.reject(msg, rerr)
	}
	defer release()
	hooks := &replyHooks{}
	defer hooks.run()
	return d.handle(ctx, peer, msg, admitted, hooks)
}

// Serve serves one message from peer: it calls write with the responses (unless there
// are none), then runs the requests' AfterReply hooks. Requests of a batch are served
// one after another in order, so a batch such as [set_chat_template, run] behaves like
// the same requests sent in turn. admitted (may be nil) is called once, when the first
// request has taken its place in line or finished, so a transport can read the next
// message while this one is served.
func (d *Dispatcher) Serve(ctx context.Context, peer *Peer, msg []byte, admitted func(), write func(resps []*Response, batch bool)) {
	release, rerr := d.admit(ctx, peer, msg)
	if rerr != nil {
		if admitted != nil {
			admitted()
		}
		if resps, batch := d.reject(msg, rerr); len(resps) > 0 {
			write(resps, batch)
		}
		return
	}
	defer release()
	hooks := &replyHooks{}
	defer hooks.run()
	resps, batch := d.handle(ctx, peer, msg, admitted, hooks)
	if len(resps) > 0 {
		write(resps, batch)
	}
}

func (d *Dispatcher) handle(ctx context.Context, peer *Peer, msg []byte, admitted func(), hooks *replyHooks) (resps []*Response, batch bool) {
	var once sync.Once
	admit := func() {
		if admitted != nil {
			once.Do(admitted)
		}
	}
	defer admit()
	items, batch := decode(msg, d.limits)
	for _, it := range items {
		if it.err != nil {
			d.observe("", it.err.Error.Code, 0)
			resps = append(resps, it.err)
			continue
		}
		resp := d.serve(ctx, peer, it.req, batch, admit, hooks)
		if !it.req.IsNotification() {
			resps = append(resps, resp)
		}
	}
	return resps, batch
}

// serve runs one request through its handler.
func (d *Dispatcher) serve(ctx context.Context, peer *Peer, req *Request, batch bool, admit func(), hooks *replyHooks) (resp *Response) {
	start := time.Now()
	resp = &Response{ID: req.ID}
	method := req.Method
	h, ok := d.methods[method]
	if !ok {
		method = "" // unknown names must not become metric labels
	}
	defer func() {
		if p := recover(); p != nil {
			d.log.Error(fmt.Errorf("panic: %v", p), "handler panicked", "method", req.Method, "stack", string(debug.Stack()))
			resp.Result, resp.Error = nil, ErrInternal.Withf("internal error: the handler of %s failed; see the server log", req.Method)
		}
		var code int64
		if resp.Error != nil {
			code = resp.Error.Code
		}
		d.observe(method, code, time.Since(start))
	}()
	if !ok {
		resp.Error = ErrMethodNotFound.Withf("method not found: %q", req.Method)
		return resp
	}
	if d.draining.Load() {
		resp.Error = ErrShuttingDown.Withf("shutting down: the server takes no new requests")
		return resp
	}
	release, busy := d.admitRequest(peer, method)
	if busy != nil {
		resp.Error = busy
		return resp
	}
	defer release()
	call := &Call{Request: req, Peer: peer, InBatch: batch, admit: admit, reply: hooks}
	result, err := h.ServeRPC(ctx, call)
	call.Admit()
	if err != nil {
		resp.Error = d.toError(req.Method, err)
		return resp
	}
	raw, err := encodeResult(result)
	if err != nil {
		d.log.Error(err, "cannot encode result", "method", req.Method)
		resp.Error = ErrInternal.Withf("internal error: cannot encode the result of %s: %v", req.Method, err)
		return resp
	}
	resp.Result = raw
	return resp
}

// encodeResult encodes a handler's result. A json.RawMessage is taken as it is: a
// handler that encodes its own result (a run's hidden states or logits, which can be
// hundreds of megabytes) hands over valid, compact JSON, which encoding/json would
// only copy and check again.
func encodeResult(result any) (json.RawMessage, error) {
	if raw, ok := result.(json.RawMessage); ok && raw != nil {
		return raw, nil
	}
	return json.Marshal(result)
}

// toError maps a handler error to the protocol's error member.
func (d *Dispatcher) toError(method string, err error) *Error {
	var rpcErr *Error
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	d.log.Error(err, "request failed", "method", method)
	return ErrInternal.Withf("internal error: %v", err)
}

func (d *Dispatcher) observe(method string, code int64, elapsed time.Duration) {
	if d.observer != nil {
		d.observer.ObserveRequest(method, code, elapsed)
	}
}
