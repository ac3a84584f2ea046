package rkllmrpc

import (
	"context"
	"errors"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// crashLines is how many of the worker's last output lines a crash error carries.
const crashLines = 5

// rpcError maps an error of the supervisor or the runtime to its JSON-RPC error; extra
// (may be nil) is added to the error's data, such as the text a run produced before it
// failed.
func rpcError(err error, extra map[string]any) error {
	if err == nil {
		return nil
	}
	var rpcErr *jsonrpc.Error
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	if errors.Is(err, supervisor.ErrNoSuchRequest) {
		return jsonrpc.InvalidParams("request_id", "%v", err)
	}
	var input *runtime.InputError
	if errors.As(err, &input) {
		// The check of what the runtime would read against the model loaded when the
		// call executed (the supervisor's, or the worker's own).
		return invalidInput(input, input.Input > 0)
	}
	data := map[string]any{}
	for k, v := range extra {
		data[k] = v
	}
	e := supervisorError(err, data)
	if e == nil {
		e = runtimeError(err, data)
	}
	if e == nil {
		return err
	}
	var re *supervisor.RuntimeError
	if errors.As(err, &re) {
		data["reason"] = re.Reason
	}
	if len(data) > 0 {
		e = e.WithData(data)
	}
	return e
}

// supervisorError maps the supervisor's own errors (nil for others).
func supervisorError(err error, data map[string]any) *jsonrpc.Error {
	var (
		crash    *supervisor.CrashError
		timeout  *supervisor.TimeoutError
		tooLarge *workerproto.ResultTooLargeError
	)
	switch {
	case errors.As(err, &tooLarge):
		data["field"] = tooLarge.Field
		data["size"] = tooLarge.Size
		data["limit"] = tooLarge.Limit
		return jsonrpc.ErrTooLarge.Withf("%v", tooLarge)
	case errors.Is(err, supervisor.ErrTooLarge):
		return jsonrpc.ErrTooLarge.Withf("%v", err)
	case errors.As(err, &crash):
		data["pid"] = crash.Exit.PID
		data["exit_code"] = crash.Exit.ExitCode
		if crash.Exit.Signal != "" {
			data["signal"] = crash.Exit.Signal
		}
		if n := len(crash.Exit.Stderr); n > 0 {
			// The last lines explain a crash; the server log has more.
			data["stderr"] = crash.Exit.Stderr[max(n-crashLines, 0):]
		}
		return jsonrpc.ErrRuntimeCrashed.Withf("runtime crashed: %s; the server is restarting it, retry the request", crash.Exit)
	case errors.As(err, &timeout):
		data["reason"] = timeout.Reason
		data["worker_killed"] = timeout.WorkerKilled
		return jsonrpc.ErrTimeout.Withf("%s", timeout.Error())
	case errors.Is(err, supervisor.ErrQueueFull):
		return jsonrpc.ErrBusy.Withf("busy: %v; retry later", err)
	case errors.Is(err, supervisor.ErrModelNotLoaded):
		return jsonrpc.ErrModelNotLoaded.Withf("%v", err)
	case errors.Is(err, supervisor.ErrAlreadyLoaded):
		return jsonrpc.ErrNotAllowed.Withf("not allowed: %v", err)
	case errors.Is(err, supervisor.ErrShuttingDown):
		return jsonrpc.ErrShuttingDown.Withf("shutting down: %v", err)
	case errors.Is(err, supervisor.ErrAborted), errors.Is(err, context.Canceled):
		return jsonrpc.ErrAborted.Withf("%v", err)
	}
	return nil
}

// runtimeError maps the runtime's errors, as the worker reported them (nil for others).
func runtimeError(err error, data map[string]any) *jsonrpc.Error {
	var (
		callErr     *runtime.CallError
		unsupported *runtime.UnsupportedError
		symbol      *runtime.SymbolError
		remote      *workerproto.RemoteError
	)
	switch {
	case errors.As(err, &unsupported):
		data["field"] = unsupported.Feature
		data["abi"] = string(unsupported.ABI)
		return jsonrpc.ErrInvalidParams.Withf("invalid params: %s; use ABI 1.3 (runtime 1.3.0) or leave it out", unsupported.Error())
	case errors.As(err, &symbol):
		data["function"] = symbol.Symbol
		data["library"] = symbol.Path
		return jsonrpc.ErrRuntime.Withf("runtime returned an error: %v; this runtime cannot serve the method, use a newer runtime library", err)
	case errors.As(err, &callErr):
		data["rkllm_code"] = callErr.Code
		data["function"] = callErr.Func
		return jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
	case errors.Is(err, runtime.ErrRunFailed):
		data["finish_reason"] = FinishError
		return jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
	case errors.Is(err, runtime.ErrBusy):
		return jsonrpc.ErrBusy.Withf("busy: %v; retry later", err)
	case errors.Is(err, runtime.ErrDestroyed):
		return jsonrpc.ErrModelNotLoaded.Withf("model not loaded: %v; call rkllm.init", err)
	case errors.As(err, &remote):
		return jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
	}
	return nil
}

// explained is a runtime error's message, pointing to the log when the runtime gave no
// reason of its own.
func explained(err error) string {
	var re *supervisor.RuntimeError
	if errors.As(err, &re) {
		return err.Error()
	}
	return err.Error() + " (the server log has the runtime's output)"
}

// asRPCError is err as a JSON-RPC error object (ErrInternal for an unmapped error), for
// errors sent inside a notification.
func asRPCError(err error) *jsonrpc.Error {
	var e *jsonrpc.Error
	if errors.As(err, &e) {
		return e
	}
	return jsonrpc.ErrInternal.Withf("internal error: %v", err)
}
