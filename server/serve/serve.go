// Package serve wires rkllm-server's parts together for `rkllm-server serve`: the
// supervisor with its worker, the JSON-RPC methods, the HTTP and Unix-socket
// transports and the metrics, and runs them until the context ends, then shuts down
// in order.
package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/config"
	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/httpapi"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/metrics"
	"github.com/rkllm-operator/rkllm-operator/server/rkllmrpc"
	"github.com/rkllm-operator/rkllm-operator/server/socketapi"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// flushTimeout bounds writing the last responses after the model has stopped.
const flushTimeout = 5 * time.Second

// Options are what the serve command knows besides the configuration.
type Options struct {
	// Executable is the rkllm-server binary, started as `Executable worker ...`.
	Executable string
	// Version is reported by rkllm.get_constants.
	Version string
	// Ready, when set, is called once the listeners are open (tests learn the HTTP
	// address from it).
	Ready func(httpAddr net.Addr)
}

// WorkerArgs are the arguments of the worker subcommand for a configuration.
func WorkerArgs(o *config.Serve) []string {
	return []string{"worker", "--runtime-lib", o.RuntimeLib, "--runtime-abi", o.RuntimeABI, "--log-level", o.LogLevel,
		"--max-frame-bytes", strconv.Itoa(workerproto.DefaultMaxFrameBytes)}
}

// Run serves until ctx ends, then shuts down gracefully: readiness turns false and new
// requests get -32009 at once, the running generation may finish within
// --shutdown-timeout (then it is aborted), responses are flushed, the model is
// destroyed and the socket file removed. It returns nil after a clean shutdown.
func Run(ctx context.Context, o *config.Serve, log logr.Logger, opts Options) error {
	apiKey, err := o.APIKey()
	if err != nil {
		return err
	}
	loras, err := o.LoraAdapters()
	if err != nil {
		return err
	}
	m := metrics.New()

	supOpts := supervisor.Options{
		Command: func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, opts.Executable, WorkerArgs(o)...)
		},
		MaxQueue:          o.MaxQueue,
		TokenStallTimeout: o.TokenStallTimeout,
		AbortTimeout:      o.AbortTimeout,
		StartTimeout:      o.WorkerStartTimeout,
		InitTimeout:       o.InitTimeout,
		RestartBackoffMin: o.RestartBackoffMin,
		RestartBackoffMax: o.RestartBackoffMax,
		MaxFrameBytes:     workerproto.DefaultMaxFrameBytes,
		Log:               log.WithName("supervisor"),
		Observer:          m,
	}
	if o.Model != "" {
		spec := &supervisor.ModelSpec{Param: o.ModelParam, Loras: loras, PromptCache: o.PromptCache}
		if sys, prefix, postfix, ok := o.ChatTemplate(); ok {
			spec.ChatTemplate = &workerproto.SetChatTemplate{SystemPrompt: sys, PromptPrefix: prefix, PromptPostfix: postfix}
		}
		supOpts.Model = spec
	}
	sup := supervisor.New(supOpts)

	d := jsonrpc.NewDispatcher(log.WithName("jsonrpc"), m)
	svc, err := rkllmrpc.New(sup, rkllmrpc.Options{
		ModelDir: o.ModelDir, RequestTimeout: o.RequestTimeout, Version: opts.Version, Log: log.WithName("rkllm"),
	})
	if err != nil {
		return err
	}
	svc.Register(d)
	limiter := connlimit.New(o.MaxConnections, m)

	var (
		httpSrv  *httpapi.Server
		sockSrv  *socketapi.Server
		httpLn   net.Listener
		sockLn   net.Listener
		serveErr = make(chan error, 2)
	)
	if o.Listen != "" {
		httpSrv = httpapi.New(d, httpapi.Options{
			Addr: o.Listen, Admin: o.AdminOn(httpapi.Transport), APIKey: apiKey, MaxRequestBytes: o.MaxRequestBytes,
			Limiter: limiter, Health: sup, Metrics: m.Handler(), Observer: m, Log: log.WithName("http"),
		})
		if httpLn, err = httpSrv.Listen(); err != nil {
			return err
		}
	}
	if o.Socket != "" {
		sockSrv = socketapi.New(d, socketapi.Options{
			Path: o.Socket, Admin: o.AdminOn(socketapi.Transport), MaxMessageBytes: int(o.MaxRequestBytes),
			WriteTimeout: o.WriteTimeout, Limiter: limiter, Observer: m, Log: log.WithName("socket"),
		})
		if sockLn, err = sockSrv.Listen(); err != nil {
			if httpLn != nil {
				_ = httpLn.Close()
			}
			return err
		}
	}
	if err := sup.Start(); err != nil {
		return err
	}
	if httpSrv != nil {
		go func() { serveErr <- httpSrv.Serve(httpLn) }()
		log.Info("serving HTTP", "address", httpLn.Addr().String())
	}
	if sockSrv != nil {
		go func() { serveErr <- sockSrv.Serve(sockLn) }()
		log.Info("serving the Unix socket", "path", o.Socket)
	}
	if opts.Ready != nil {
		var addr net.Addr
		if httpLn != nil {
			addr = httpLn.Addr()
		}
		opts.Ready(addr)
	}

	var failed error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "shutdown_timeout", o.ShutdownTimeout.String())
	case err := <-serveErr:
		failed = fmt.Errorf("listener failed: %w", err)
		log.Error(err, "listener failed; shutting down")
	}

	// Readiness turns false and new requests get -32009 (HTTP 503) from here on; the
	// listeners stay open so probes and clients get that answer.
	d.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := sup.Shutdown(sctx); err != nil {
		log.Info("the running generation did not finish in time and was aborted", "shutdown_timeout", o.ShutdownTimeout.String())
	}
	fctx, fcancel := context.WithTimeout(context.Background(), flushTimeout)
	defer fcancel()
	if httpSrv != nil {
		if err := httpSrv.Shutdown(fctx); err != nil {
			log.Error(err, "HTTP responses not flushed in time")
			_ = httpSrv.Close()
		}
	}
	if sockSrv != nil {
		if err := sockSrv.Shutdown(fctx); err != nil {
			log.Error(err, "socket responses not flushed in time")
			_ = sockSrv.Close()
		}
	}
	for range cap(serveErr) {
		select {
		case err := <-serveErr:
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, socketapi.ErrServerClosed) && failed == nil {
				failed = err
			}
		default:
		}
	}
	if failed == nil {
		log.Info("shut down cleanly")
	}
	return failed
}
