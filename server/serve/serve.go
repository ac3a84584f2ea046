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
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/config"
	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/filewatch"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
	"github.com/rkllm-operator/rkllm-operator/server/hangup"
	"github.com/rkllm-operator/rkllm-operator/server/httpapi"
	"github.com/rkllm-operator/rkllm-operator/server/inflight"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/memlimit"
	"github.com/rkllm-operator/rkllm-operator/server/metrics"
	"github.com/rkllm-operator/rkllm-operator/server/modelcache"
	"github.com/rkllm-operator/rkllm-operator/server/ollama"
	"github.com/rkllm-operator/rkllm-operator/server/openai"
	"github.com/rkllm-operator/rkllm-operator/server/rkllmrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/socketapi"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/templatehost"
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
		"--max-frame-bytes", strconv.Itoa(o.MaxFrameBytes), "--memory-limit", strconv.FormatInt(o.MemoryLimit, 10)}
}

// Run serves until ctx ends, then shuts down gracefully: readiness turns false and new
// requests get -32009 at once, the running generation may finish within
// --shutdown-timeout (then it is aborted), responses are flushed, the model is
// destroyed and the socket file removed. It returns nil after a clean shutdown, and an
// error after shutting down because a listener failed or the supervisor gave up on its
// worker (--max-worker-failures).
func Run(ctx context.Context, o *config.Serve, log logr.Logger, opts Options) error {
	a, err := build(o, log, opts)
	if err != nil {
		return err
	}
	if err := a.listen(); err != nil {
		return err
	}
	loras, _ := o.LoraAdapters() // build checked them
	if err := a.start(opts, loras); err != nil {
		return err
	}
	var failed error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "shutdown_timeout", o.ShutdownTimeout.String())
	case err := <-a.serveErr:
		failed = fmt.Errorf("listener failed: %w", err)
		log.Error(err, "listener failed; shutting down")
	case <-a.sup.Failed():
		failed = fmt.Errorf("giving up (--max-worker-failures %d): %w", o.MaxWorkerFailures, a.sup.Err())
		log.Error(a.sup.Err(), "giving up on the worker; shutting down", "max_worker_failures", o.MaxWorkerFailures)
	}
	if err := a.shutdown(); err != nil && failed == nil {
		failed = err
	}
	if failed == nil {
		log.Info("shut down cleanly")
	}
	return failed
}

// app is the server's parts.
type app struct {
	o        *config.Serve
	log      logr.Logger
	sup      *supervisor.Supervisor
	d        *jsonrpc.Dispatcher
	httpSrv  *httpapi.Server
	sockSrv  *socketapi.Server
	httpLn   net.Listener
	probeLn  net.Listener
	sockLn   net.Listener
	metrics  *metrics.Metrics
	hangup   *hangup.Watcher
	serveErr chan error
	// templates renders --chat-template-file in renderer processes (nil without one).
	templates *templatehost.Host
	// watchers follow the API key and configuration files; closed at shutdown.
	watchers []*filewatch.Watcher
	// seen is the configuration as last read from the file (the config watcher's
	// goroutine only).
	seen *config.Serve
	// pins keep the model files from being evicted from the node's cache while served.
	pins []*os.File
}

// build creates the parts without starting anything.
func build(o *config.Serve, log logr.Logger, opts Options) (*app, error) {
	apiKeys, err := o.APIKeys()
	if err != nil {
		return nil, err
	}
	loras, err := o.LoraAdapters()
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	supOpts := supervisor.Options{
		Command: func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, opts.Executable, WorkerArgs(o)...) //nolint:gosec // our own binary
		},
		MaxQueue:          o.MaxQueue,
		TokenStallTimeout: o.TokenStallTimeout,
		MinPrefillRate:    o.MinPrefillRate,
		AbortTimeout:      o.AbortTimeout,
		StartTimeout:      o.WorkerStartTimeout,
		InitTimeout:       o.InitTimeout,
		RestartBackoffMin: o.RestartBackoffMin,
		RestartBackoffMax: o.RestartBackoffMax,
		MaxWorkerFailures: o.MaxWorkerFailures,
		MaxFrameBytes:     o.MaxFrameBytes,
		EmbedWidth:        o.EmbeddingWidth,
		VocabSize:         o.VocabSize,
		Log:               log.WithName("supervisor"),
		Observer:          m,
	}
	if o.Model != "" {
		spec := &supervisor.ModelSpec{Param: o.ModelParam, Loras: loras, PromptCache: o.PromptCache}
		if sys, prefix, postfix, ok := o.ChatTemplate(); ok {
			spec.ChatTemplate = &workerproto.SetChatTemplate{SystemPrompt: sys, PromptPrefix: prefix, PromptPostfix: postfix}
		}
		if sys, prefix, postfix, ok := o.RuntimeFallbackTemplate(); ok {
			spec.FallbackTemplate = &workerproto.SetChatTemplate{SystemPrompt: sys, PromptPrefix: prefix, PromptPostfix: postfix}
		}
		supOpts.Model = spec
	}
	a := &app{o: o, log: log, sup: supervisor.New(supOpts), d: jsonrpc.NewDispatcher(log.WithName("jsonrpc"), m), metrics: m, serveErr: make(chan error, 3), seen: o}
	a.d.SetLimits(jsonrpc.Limits{
		MaxDepth: o.MaxJSONDepth, MaxStringBytes: o.MaxStringBytes, MaxArrayLen: o.MaxArrayLen, MaxBatch: o.MaxBatch,
		MaxPeerMessages: o.MaxInflightPerConnection, MaxInflightBytes: o.MaxInflightBytes,
	})
	budget := inflight.New(o.MaxInflightBytes)
	// The memory of a large request is given back to the system once it is done.
	memlimit.SetLimit(o.MemoryLimit)
	trim := memlimit.NewTrimmer()
	budget.OnLarge(trim.Min, trim.Note)
	a.d.SetBudget(budget)
	m.InflightBytes(budget.Used)
	svc, err := rkllmrpc.New(a.sup, rkllmrpc.Options{
		ModelDir: o.ModelDir, RequestTimeout: o.RequestTimeout, Version: opts.Version, Log: log.WithName("rkllm"),
	})
	if err != nil {
		return nil, err
	}
	svc.Register(a.d)
	limiter := connlimit.New(o.MaxConnections, o.ReservedFDs, m)
	if a.hangup, err = hangup.New(); err != nil {
		return nil, err
	}
	if o.Listen != "" || o.ProbeListen != "" {
		a.httpSrv = httpapi.New(a.d, httpapi.Options{
			Addr: o.Listen, Admin: o.AdminOn(httpapi.Transport), APIKeys: apiKeys, MaxRequestBytes: o.MaxRequestBytes,
			ReadHeaderTimeout: o.ReadHeaderTimeout, BodyTimeout: o.BodyReadTimeout, IdleTimeout: o.IdleTimeout,
			WriteTimeout: o.WriteTimeout, OutputBufferBytes: o.ClientBufferBytes,
			Limiter: limiter, Hangup: a.hangup, Budget: budget, Health: a.sup, Metrics: m.Handler(), Observer: m, Log: log.WithName("http"),
		})
		tmpl, err := a.chatTemplate(opts)
		if err != nil {
			return nil, err
		}
		log.Info("OpenAI-compatible API on /v1/, Ollama API on /api/", "chat_template", tmpl.Name(), "prefix_reuse", o.PrefixReuse,
			"embedding_pooling", o.Pooling(), "embedding_normalize", o.EmbeddingNormalize)
		gen := generation.New(a.sup, generation.Options{
			ModelName: o.ServedModelName, ModelPath: o.Model, Template: tmpl, PrefixReuse: o.PrefixReuse, RequestTimeout: o.RequestTimeout,
			MaxRequestBytes: o.MaxRequestBytes, WriteTimeout: o.WriteTimeout, MaxBacklogBytes: o.ClientBufferBytes, Draining: a.d.Draining,
			Embedding: generation.EmbeddingOptions{Pooling: o.Pooling(), Raw: !o.EmbeddingNormalize, MaxInputs: o.MaxEmbeddingInputs},
			Observer:  m, Log: log.WithName("api"),
		})
		v1 := openai.New(gen, openai.Options{Fingerprint: "rkllm-server-" + opts.Version, Observer: m, Log: log.WithName("openai")})
		a.httpSrv.Handle("/v1/", a.httpSrv.RequireAPIKey(v1, openai.Unauthorized))
		api := ollama.New(gen, ollama.Options{Observer: m, Log: log.WithName("ollama")})
		a.httpSrv.Handle("/api/", a.httpSrv.RequireAPIKey(api, ollama.Unauthorized))
	}
	if o.Socket != "" {
		a.sockSrv = socketapi.New(a.d, socketapi.Options{
			Path: o.Socket, Admin: o.AdminOn(socketapi.Transport), MaxMessageBytes: int(o.MaxRequestBytes),
			WriteTimeout: o.WriteTimeout, OutputBufferBytes: o.ClientBufferBytes, IdleTimeout: o.IdleTimeout,
			Limiter: limiter, Hangup: a.hangup, Budget: budget, Observer: m, Log: log.WithName("socket"),
		})
	}
	return a, nil
}

// chatTemplate is the template of /v1/: a preset or custom one, or a Jinja file
// rendered by renderer processes (started by start).
func (a *app) chatTemplate(opts Options) (chattemplate.Template, error) {
	src, err := a.o.JinjaTemplate()
	if err != nil || src == nil {
		if err != nil {
			return nil, err
		}
		return a.o.Template()
	}
	a.templates = templatehost.New(templatehost.Options{
		Template: src,
		Command: func() *exec.Cmd {
			return exec.CommandContext(context.Background(), opts.Executable, RendererArgs...) //nolint:gosec // our own binary
		},
		Timeout: a.o.ChatTemplateTimeout, MaxMemory: a.o.ChatTemplateMaxMemory, MaxOutput: a.o.ChatTemplateMaxOutput,
		Renderers: a.o.ChatTemplateRenderers, StartTimeout: a.o.WorkerStartTimeout, Log: a.log.WithName("chattemplate"),
	})
	return a.templates, nil
}

// RendererArgs are the arguments of the chat template renderer subcommand.
var RendererArgs = []string{"render-chat-template"}

// listen opens the listeners first, so a taken port fails the start at once.
func (a *app) listen() (err error) {
	defer func() {
		if err != nil {
			for _, ln := range []net.Listener{a.httpLn, a.probeLn} {
				if ln != nil {
					_ = ln.Close()
				}
			}
		}
	}()
	if a.o.Listen != "" {
		if a.httpLn, err = a.httpSrv.Listen(); err != nil {
			return err
		}
	}
	if a.o.ProbeListen != "" {
		if a.probeLn, err = httpapi.ListenTCP(a.o.ProbeListen); err != nil {
			return err
		}
	}
	if a.sockSrv != nil {
		if a.sockLn, err = a.sockSrv.Listen(); err != nil {
			return err
		}
	}
	return nil
}

// start checks the chat template (a Jinja file must render a test conversation within
// its bounds, or the server does not start), starts the supervisor and the file
// watchers, and serves on the listeners.
func (a *app) start(opts Options, loras []runtime.LoraAdapter) error {
	if a.templates != nil {
		ctx, cancel := context.WithTimeout(context.Background(), a.o.WorkerStartTimeout+a.o.ChatTemplateTimeout)
		err := a.templates.Start(ctx)
		cancel()
		if err != nil {
			a.templates.Close()
			return err
		}
	}
	if err := a.sup.Start(); err != nil {
		return err
	}
	if err := a.watch(); err != nil {
		return err
	}
	a.pin(loras)
	var addr net.Addr
	if a.httpLn != nil {
		go func() { a.serveErr <- a.httpSrv.Serve(a.httpLn) }()
		addr = a.httpLn.Addr()
		a.log.Info("serving HTTP", "address", addr.String())
	}
	if a.probeLn != nil {
		// The probes may use half the descriptor reserve; the other half is the
		// worker's (a restart takes a socketpair and pipes). ServeProbes keeps
		// ProbeMaxConnections by closing the connection that waited longest; this cap,
		// above it, only bounds connections all being answered at once.
		probes := connlimit.New(2*httpapi.ProbeMaxConnections, a.o.ReservedFDs/2, a.metrics)
		go func() { a.serveErr <- a.httpSrv.ServeProbes(a.probeLn, probes) }()
		a.log.Info("serving the probes", "address", a.probeLn.Addr().String())
	}
	if a.sockSrv != nil {
		go func() { a.serveErr <- a.sockSrv.Serve(a.sockLn) }()
		a.log.Info("serving the Unix socket", "path", a.o.Socket)
	}
	if opts.Ready != nil {
		opts.Ready(addr)
	}
	return nil
}

// shutdown drains: new requests get -32009 from here on while the listeners stay open
// (so probes and clients get that answer), the supervisor lets the running request end
// (or aborts it after --shutdown-timeout) and stops the worker, then the transports
// flush their last responses and close.
func (a *app) shutdown() error {
	for _, w := range a.watchers {
		_ = w.Close()
	}
	defer func() {
		for _, f := range a.pins {
			_ = f.Close()
		}
	}()
	a.d.Drain()
	exitBy := time.Now().Add(a.o.ExitBudget())
	sctx, cancel := context.WithTimeout(context.Background(), a.o.ShutdownTimeout)
	defer cancel()
	if err := a.sup.Shutdown(sctx); err != nil {
		a.log.Info("the running generation did not finish in time and was aborted", "shutdown_timeout", a.o.ShutdownTimeout.String())
	}
	flushBy := time.Now().Add(flushTimeout)
	if exitBy.Before(flushBy) {
		flushBy = exitBy
	}
	fctx, fcancel := context.WithDeadline(context.Background(), flushBy)
	defer fcancel()
	if a.httpSrv != nil {
		if err := a.httpSrv.Shutdown(fctx); err != nil {
			a.log.Error(err, "HTTP responses not flushed in time")
			_ = a.httpSrv.Close()
		}
	}
	if a.sockSrv != nil {
		if err := a.sockSrv.Shutdown(fctx); err != nil {
			a.log.Error(err, "socket responses not flushed in time")
			_ = a.sockSrv.Close()
		}
	}
	_ = a.hangup.Close()
	if a.templates != nil {
		a.templates.Close()
	}
	for range cap(a.serveErr) {
		select {
		case err := <-a.serveErr:
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, socketapi.ErrServerClosed) {
				return err
			}
		default:
		}
	}
	return nil
}

// watch follows the API key file and the configuration file, so a rotated key and
// changed sampling defaults take effect without a restart (docs/server.md, "Changes
// while running"). Kubernetes updates both through a symlink swap, which filewatch
// follows.
func (a *app) watch() error {
	if a.httpSrv != nil && a.o.APIKeyFile != "" {
		w, first, err := filewatch.New(a.o.APIKeyFile, filewatch.Options{Log: a.log}, a.apiKeyChanged)
		if err != nil {
			return fmt.Errorf("--api-key-file: %w", err)
		}
		a.watchers = append(a.watchers, w)
		// The key may have changed since build read it.
		a.apiKeyChanged(first)
	}
	if a.o.ConfigFile != "" {
		w, _, err := filewatch.New(a.o.ConfigFile, filewatch.Options{Log: a.log}, func([]byte) { a.configChanged() })
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
		a.watchers = append(a.watchers, w)
	}
	return nil
}

// apiKeyChanged puts the file's keys in force; requests with a key no longer in it get
// 401 from now on. A file that is empty or holds no key keeps the previous keys:
// locking every client out because of a half-written file would be worse.
func (a *app) apiKeyChanged(content []byte) {
	keys, err := config.ParseAPIKeys(content)
	if err != nil {
		a.log.Error(err, "the API key file changed but holds no key; keeping the previous keys", "file", a.o.APIKeyFile)
		return
	}
	a.httpSrv.SetAPIKeys(keys)
	a.log.Info("API key file read; requests need one of its keys from now on", "file", a.o.APIKeyFile, "keys", len(keys))
}

// reloadTimeout bounds waiting for the worker's defaults when the configuration changes
// before the first worker started.
const reloadTimeout = time.Minute

// configChanged reads the changed configuration file: the sampling defaults and
// max_new_tokens take effect at once (runtime ABI 1.3); any other change is logged as
// waiting for a restart. An invalid file changes nothing.
func (a *app) configChanged() {
	n, err := a.seen.Reload()
	if err != nil {
		a.log.Error(err, "the configuration file changed but is invalid; nothing changed", "file", a.o.ConfigFile)
		return
	}
	changed := a.seen.ChangedFlags(n)
	a.seen = n
	var retune, restart []string
	for _, name := range changed {
		if slices.Contains(config.RetunableFlags(), name) {
			retune = append(retune, name)
		} else {
			restart = append(restart, name)
		}
	}
	if len(restart) > 0 {
		a.log.Info("the configuration file changed options that take effect at the next restart", "options", restart)
	}
	if len(retune) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
	defer cancel()
	defaults, _, err := a.sup.Defaults(ctx)
	if err != nil {
		a.log.Error(err, "cannot apply the changed sampling defaults", "options", retune)
		return
	}
	p := n.ModelParam(defaults)
	switch err := a.sup.Retune(supervisor.SamplingOf(p), p.MaxNewTokens); {
	case errors.Is(err, supervisor.ErrNeedsReload):
		a.log.Info("the configuration file changed sampling options that take effect at the next restart", "options", retune, "reason", err.Error())
	case err != nil:
		a.log.Error(err, "cannot apply the changed sampling defaults", "options", retune)
	default:
		a.log.Info("sampling defaults changed; runs that do not set their own use them", "options", retune)
	}
}

// pin holds a shared lock on each model file the configuration names, so another pod's
// fetch does not evict it from the node's model cache while this server may load it again
// (after a worker restart). A file that is not there is left to the model load to report.
func (a *app) pin(loras []runtime.LoraAdapter) {
	paths := []string{a.o.Model, a.o.PromptCache}
	for _, l := range loras {
		paths = append(paths, l.Path)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		f, err := modelcache.Pin(p)
		if err != nil {
			a.log.V(1).Info("cannot pin a model file in the cache", "file", p, "error", err.Error())
			continue
		}
		a.pins = append(a.pins, f)
	}
}
