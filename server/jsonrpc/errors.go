package jsonrpc

import (
	"encoding/json"
	"fmt"
)

// Error is a JSON-RPC 2.0 error object. Handlers return one (possibly wrapped) to
// choose the code the client sees; any other error becomes ErrInternal.
type Error struct {
	Code    int64  `json:"code"`
	Message string `json:"message"`
	// Data is optional structured detail (what was wrong and what to do).
	Data any `json:"data,omitempty"`
}

// Error implements error.
func (e *Error) Error() string {
	if e.Data != nil {
		if b, err := json.Marshal(e.Data); err == nil {
			return fmt.Sprintf("jsonrpc error %d: %s (%s)", e.Code, e.Message, b)
		}
	}
	return fmt.Sprintf("jsonrpc error %d: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, ErrBusy) true for any *Error with the same code, so callers
// can branch on the named values below whatever message or data an instance carries.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Withf returns a copy of e with a more specific message (the code is kept).
func (e *Error) Withf(format string, args ...any) *Error {
	c := *e
	c.Message = fmt.Sprintf(format, args...)
	return &c
}

// WithData returns a copy of e carrying data.
func (e *Error) WithData(data any) *Error {
	c := *e
	c.Data = data
	return &c
}

// The errors defined by the JSON-RPC 2.0 specification.
var (
	// ErrParse: the message is not valid JSON.
	ErrParse = &Error{Code: -32700, Message: "parse error"}
	// ErrInvalidRequest: the JSON is not a valid request object.
	ErrInvalidRequest = &Error{Code: -32600, Message: "invalid request"}
	// ErrMethodNotFound: no such method.
	ErrMethodNotFound = &Error{Code: -32601, Message: "method not found"}
	// ErrInvalidParams: the params do not fit the method; the message names the field and the rule.
	ErrInvalidParams = &Error{Code: -32602, Message: "invalid params"}
	// ErrInternal: a fault in the server itself.
	ErrInternal = &Error{Code: -32603, Message: "internal error"}
)

// The server-defined errors of rkllm-server (range -32000 to -32099).
var (
	// ErrModelNotLoaded: the method needs a model and none is loaded (rkllm.init first).
	ErrModelNotLoaded = &Error{Code: -32001, Message: "model not loaded"}
	// ErrBusy: the queue (or the connection limit) is full; retry later.
	ErrBusy = &Error{Code: -32002, Message: "busy: queue full"}
	// ErrRuntime: the runtime returned an error; data.rkllm_code holds its return code.
	ErrRuntime = &Error{Code: -32003, Message: "runtime returned an error"}
	// ErrRuntimeCrashed: the worker process running the runtime died during the request.
	ErrRuntimeCrashed = &Error{Code: -32004, Message: "runtime crashed"}
	// ErrTimeout: the request timed out (request timeout or token stall).
	ErrTimeout = &Error{Code: -32005, Message: "timed out"}
	// ErrAborted: the request was aborted before it produced a result.
	ErrAborted = &Error{Code: -32006, Message: "aborted"}
	// ErrNotAllowed: the method or path is not allowed for this caller.
	ErrNotAllowed = &Error{Code: -32007, Message: "not allowed"}
	// ErrTooLarge: the message is larger than the configured limit.
	ErrTooLarge = &Error{Code: -32008, Message: "request too large"}
	// ErrShuttingDown: the server is draining and takes no new requests.
	ErrShuttingDown = &Error{Code: -32009, Message: "shutting down"}
)

// InvalidParams returns ErrInvalidParams naming the field and the rule it broke.
func InvalidParams(field, format string, args ...any) *Error {
	msg := fmt.Sprintf(format, args...)
	return ErrInvalidParams.Withf("invalid params: %s: %s", field, msg).WithData(map[string]string{"field": field, "rule": msg})
}
