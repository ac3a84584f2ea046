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
	data := map[string]any{}
	for k, v := range extra {
		data[k] = v
	}
	var (
		crash       *supervisor.CrashError
		timeout     *supervisor.TimeoutError
		callErr     *runtime.CallError
		unsupported *runtime.UnsupportedError
		remote      *workerproto.RemoteError
	)
	var e *jsonrpc.Error
	switch {
	case errors.As(err, &crash):
		e = jsonrpc.ErrRuntimeCrashed.Withf("runtime crashed: %s; the server is restarting it, retry the request", crash.Exit)
		data["pid"] = crash.Exit.PID
		data["exit_code"] = crash.Exit.ExitCode
		if crash.Exit.Signal != "" {
			data["signal"] = crash.Exit.Signal
		}
		if n := len(crash.Exit.Stderr); n > 0 {
			// The last lines explain a crash; the server log has more.
			data["stderr"] = crash.Exit.Stderr[max(n-crashLines, 0):]
		}
	case errors.As(err, &timeout):
		e = jsonrpc.ErrTimeout.Withf("%s", timeout.Error())
		data["reason"] = timeout.Reason
		data["worker_killed"] = timeout.WorkerKilled
	case errors.Is(err, supervisor.ErrQueueFull):
		e = jsonrpc.ErrBusy.Withf("busy: %v; retry later", err)
	case errors.Is(err, supervisor.ErrModelNotLoaded):
		e = jsonrpc.ErrModelNotLoaded.Withf("%v", err)
	case errors.Is(err, supervisor.ErrAlreadyLoaded):
		e = jsonrpc.ErrNotAllowed.Withf("not allowed: %v", err)
	case errors.Is(err, supervisor.ErrShuttingDown):
		e = jsonrpc.ErrShuttingDown.Withf("shutting down: %v", err)
	case errors.Is(err, supervisor.ErrAborted), errors.Is(err, context.Canceled):
		e = jsonrpc.ErrAborted.Withf("%v", err)
	case errors.Is(err, supervisor.ErrNoSuchRequest):
		return jsonrpc.InvalidParams("request_id", "%v", err)
	case errors.As(err, &unsupported):
		e = jsonrpc.ErrInvalidParams.Withf("invalid params: %s; use ABI 1.3 (runtime 1.3.0) or leave it out", unsupported.Error())
		data["field"] = unsupported.Feature
		data["abi"] = string(unsupported.ABI)
	case errors.As(err, &callErr):
		e = jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
		data["rkllm_code"] = callErr.Code
		data["function"] = callErr.Func
	case errors.Is(err, runtime.ErrRunFailed):
		e = jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
		data["finish_reason"] = FinishError
	case errors.As(err, &remote):
		e = jsonrpc.ErrRuntime.Withf("runtime returned an error: %s", explained(err))
	default:
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

// explained is a runtime error's message, pointing to the log when the runtime gave no
// reason of its own.
func explained(err error) string {
	var re *supervisor.RuntimeError
	if errors.As(err, &re) {
		return err.Error()
	}
	return err.Error() + " (the server log has the runtime's output)"
}
