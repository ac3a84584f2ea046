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
	// ID identifies the connection among all connections (it owns the requests it
	// started, for rkllm.abort).
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
}

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
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return ParamsError(err)
	}
	return nil
}

// ParamsError turns an encoding/json error (or an *Error) from decoding params into
// ErrInvalidParams naming the member and the rule.
func ParamsError(err error) error {
	var rpcErr *Error
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			field = "params"
		}
		return InvalidParams(field, "must be %s, not a JSON %s", describeType(typeErr.Type), typeErr.Value)
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		field := strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`)
		return InvalidParams(field, "unknown member; check the spelling against docs/jsonrpc.md")
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
	draining atomic.Bool
}

// NewDispatcher returns a dispatcher that logs handler panics and internal errors to
// log and reports each request to observer (which may be nil).
func NewDispatcher(log logr.Logger, observer Observer) *Dispatcher {
	return &Dispatcher{log: log, observer: observer, methods: map[string]Handler{}}
}

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
	items, batch := decode(msg)
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
	call := &Call{Request: req, Peer: peer, InBatch: batch, admit: admit, reply: hooks}
	result, err := h.ServeRPC(ctx, call)
	call.Admit()
	if err != nil {
		resp.Error = d.toError(req.Method, err)
		return resp
	}
	raw, err := json.Marshal(result)
	if err != nil {
		d.log.Error(err, "cannot encode result", "method", req.Method)
		resp.Error = ErrInternal.Withf("internal error: cannot encode the result of %s: %v", req.Method, err)
		return resp
	}
	resp.Result = raw
	return resp
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
