package generation

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Error is an API error: the HTTP status, a message that says what was wrong and what
// to do, and the classification OpenAI's shape carries ({"error": {message, type,
// param, code}}); Ollama's shape ({"error": message}) writes the message alone.
type Error struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
	// RetryAfter, when set, is sent as the Retry-After header (seconds).
	RetryAfter string `json:"-"`
}

func (e *Error) Error() string { return e.Message }

// Error types, as OpenAI names them.
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeAuthentication = "authentication_error"
	TypeRateLimit      = "requests"
	TypeServer         = "server_error"
	TypeTimeout        = "timeout_error"
)

// Strp returns a pointer to s, or nil for "".
func Strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Invalid is a 400 naming the parameter.
func Invalid(param, code, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: Strp(param), Code: Strp(code), Message: fmt.Sprintf(format, args...)}
}

// Unsupported is a 400 for a parameter the server cannot honour.
func Unsupported(param, format string, args ...any) *Error {
	return Invalid(param, "unsupported_parameter", format, args...)
}

// NotFound is a 404.
func NotFound(format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Type: TypeInvalidRequest, Message: fmt.Sprintf(format, args...)}
}

// Unavailable is a 503: the server cannot take requests now.
func Unavailable(reason string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeServer, Code: Strp("service_unavailable"), RetryAfter: "5",
		Message: "The server is not ready: " + reason + ". Retry later."}
}

// Internal is a 500 for what the server itself failed at.
func Internal(format string, args ...any) *Error {
	return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Message: fmt.Sprintf(format, args...)}
}

// FromBackend maps the supervisor's errors.
func FromBackend(err error) *Error {
	var rt *supervisor.RuntimeError
	var crash *supervisor.CrashError
	var timeout *supervisor.TimeoutError
	var result *workerproto.ResultTooLargeError
	switch {
	case errors.Is(err, supervisor.ErrQueueFull):
		return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: Strp("rate_limit_exceeded"), RetryAfter: "1",
			Message: busy(err) + ". Retry after a second."}
	case errors.Is(err, supervisor.ErrShuttingDown):
		return Unavailable("it is shutting down")
	case errors.Is(err, supervisor.ErrModelNotLoaded):
		return Unavailable(err.Error())
	case errors.Is(err, supervisor.ErrTooLarge), errors.As(err, &result):
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: TypeInvalidRequest, Code: Strp("request_too_large"), Message: err.Error()}
	case errors.As(err, &crash):
		return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Code: Strp("runtime_crashed"),
			Message: crash.Error() + "; the server is restarting it, retry the request"}
	case errors.As(err, &timeout):
		return &Error{Status: http.StatusGatewayTimeout, Type: TypeTimeout, Code: Strp("timeout"), Message: timeout.Error()}
	case errors.As(err, &rt) && strings.Contains(rt.Reason, "max context"):
		return Invalid("messages", "context_length_exceeded", "The conversation is longer than the model's context (%s): shorten it.", rt.Reason)
	case errors.As(err, &rt):
		return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Code: Strp("runtime_error"), Message: "The runtime failed: " + rt.Error()}
	case errors.Is(err, runtime.ErrInvalidInput):
		return Invalid("messages", "invalid_value", "The request cannot be given to the model: %v.", err)
	case errors.Is(err, supervisor.ErrAborted):
		return &Error{Status: 499, Type: TypeInvalidRequest, Code: Strp("aborted"), Message: err.Error()}
	}
	return Internal("Internal error: %v", err)
}
