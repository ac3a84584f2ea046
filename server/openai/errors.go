package openai

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

// Error is an API error in OpenAI's shape: {"error": {message, type, param, code}},
// answered with Status.
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
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typeRateLimit      = "requests"
	typeServer         = "server_error"
	typeTimeout        = "timeout_error"
)

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// invalid is a 400 naming the parameter.
func invalid(param, code, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: typeInvalidRequest, Param: strp(param), Code: strp(code), Message: fmt.Sprintf(format, args...)}
}

// unsupported is a 400 for a parameter the server cannot honour.
func unsupported(param, format string, args ...any) *Error {
	return invalid(param, "unsupported_parameter", format, args...)
}

func notFound(format string, args ...any) *Error {
	return &Error{Status: http.StatusNotFound, Type: typeInvalidRequest, Message: fmt.Sprintf(format, args...)}
}

func modelNotFound(model, served string) *Error {
	e := notFound("The model `%s` does not exist: this server serves `%s` (GET /v1/models lists it).", model, served)
	e.Param, e.Code = strp("model"), strp("model_not_found")
	return e
}

func unavailable(reason string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: typeServer, Code: strp("service_unavailable"), RetryAfter: "5",
		Message: "The server is not ready: " + reason + ". Retry later."}
}

// overBudget answers a request that does not fit the budget of bytes in flight.
func overBudget(err error) *Error {
	return &Error{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: strp("rate_limit_exceeded"), RetryAfter: strconv.Itoa(inflight.RetryAfterSeconds),
		Message: "The server is busy: " + err.Error() + "."}
}

// payFor charges the request's account (in ctx) before an allocation.
func payFor(ctx context.Context) payFunc {
	acct := inflight.FromContext(ctx)
	if acct == nil {
		return nil
	}
	return func(n int) *Error {
		if err := acct.Charge(n); err != nil {
			return overBudget(err)
		}
		return nil
	}
}

// fromBackend maps the supervisor's errors.
func fromBackend(err error) *Error {
	var rt *supervisor.RuntimeError
	var crash *supervisor.CrashError
	var timeout *supervisor.TimeoutError
	switch {
	case errors.Is(err, supervisor.ErrQueueFull):
		return &Error{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: strp("rate_limit_exceeded"), RetryAfter: "1",
			Message: "The server is busy: " + err.Error() + ". Retry after a second."}
	case errors.Is(err, supervisor.ErrShuttingDown):
		return unavailable("it is shutting down")
	case errors.Is(err, supervisor.ErrModelNotLoaded):
		return unavailable(err.Error())
	case errors.Is(err, supervisor.ErrTooLarge):
		return &Error{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: strp("request_too_large"), Message: err.Error()}
	case errors.As(err, &crash):
		return &Error{Status: http.StatusInternalServerError, Type: typeServer, Code: strp("runtime_crashed"),
			Message: crash.Error() + "; the server is restarting it, retry the request"}
	case errors.As(err, &timeout):
		return &Error{Status: http.StatusGatewayTimeout, Type: typeTimeout, Code: strp("timeout"), Message: timeout.Error()}
	case errors.As(err, &rt) && strings.Contains(rt.Reason, "max context"):
		return invalid("messages", "context_length_exceeded", "The conversation is longer than the model's context (%s): shorten it.", rt.Reason)
	case errors.As(err, &rt):
		return &Error{Status: http.StatusInternalServerError, Type: typeServer, Code: strp("runtime_error"), Message: "The runtime failed: " + rt.Error()}
	case errors.Is(err, runtime.ErrInvalidInput):
		return invalid("messages", "invalid_value", "The request cannot be given to the model: %v.", err)
	case errors.Is(err, supervisor.ErrAborted):
		return &Error{Status: 499, Type: typeInvalidRequest, Code: strp("aborted"), Message: err.Error()}
	}
	return &Error{Status: http.StatusInternalServerError, Type: typeServer, Message: "Internal error: " + err.Error()}
}
