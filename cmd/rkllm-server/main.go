// Command rkllm-server serves one RKLLM model on one NPU to many clients over JSON-RPC
// 2.0 (HTTP and a Unix socket). Subcommands: serve, fetch, version (and worker and
// render-chat-template, which serve starts itself). See docs/server.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"

	"github.com/rkllm-operator/rkllm-operator/server/config"
	"github.com/rkllm-operator/rkllm-operator/server/fetch"
	"github.com/rkllm-operator/rkllm-operator/server/memlimit"
	"github.com/rkllm-operator/rkllm-operator/server/modelcache"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/serve"
	"github.com/rkllm-operator/rkllm-operator/server/templatehost"
	"github.com/rkllm-operator/rkllm-operator/server/worker"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `rkllm-server serves an RKLLM model over JSON-RPC 2.0.

Usage:
  rkllm-server serve [flags]     serve (see rkllm-server serve --help)
  rkllm-server fetch --url URL --dest PATH [--sha256 HEX] [--max-size BYTES]
                                 download a model file (resumable, verified)
  rkllm-server version           print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	switch cmd {
	case "serve":
		os.Exit(runServe(args))
	case "worker":
		os.Exit(runWorker(args))
	case serve.RendererArgs[0]:
		os.Exit(runRenderer())
	case "fetch":
		os.Exit(runFetch(args))
	case "version", "--version":
		fmt.Println("rkllm-server", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "rkllm-server: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
}

// newLogger builds a logr logger on log/slog: JSON or text, at a verbosity from
// config.ParseLogLevel (-1: errors only).
func newLogger(w io.Writer, format string, verbosity int) logr.Logger {
	level := slog.Level(-verbosity)
	if verbosity < 0 {
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == config.LogText {
		h = slog.NewTextHandler(w, opts)
	}
	return logr.FromSlogHandler(h)
}

// signalContext is cancelled on the first SIGTERM or SIGINT; a second one exits at
// once (the worker dies with the supervisor).
func signalContext(log logr.Logger) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-ch
		log.Info("signal received; shutting down (send it again to exit at once)", "signal", sig.String())
		cancel()
		sig = <-ch
		log.Info("second signal; exiting at once", "signal", sig.String())
		os.Exit(1)
	}()
	return ctx
}

func runServe(args []string) int {
	var o config.Serve
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.BindFlags(fs)
	if err := o.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "rkllm-server serve:", err)
		return 2
	}
	verbosity, _ := config.ParseLogLevel(o.LogLevel)
	log := newLogger(os.Stderr, o.LogFormat, verbosity)
	exe, err := os.Executable()
	if err != nil {
		log.Error(err, "cannot find the rkllm-server binary to start the worker")
		return 1
	}
	log.Info("starting rkllm-server", "version", version, "model", o.Model, "runtime_lib", o.RuntimeLib, "runtime_abi", o.RuntimeABI)
	if err := serve.Run(signalContext(log), &o, log, serve.Options{Executable: exe, Version: version}); err != nil {
		log.Error(err, "rkllm-server failed")
		writeTerminationMessage(o.TerminationMessagePath, err, log)
		return 1
	}
	return 0
}

// maxTerminationMessage is what the kubelet reads of a termination message.
const maxTerminationMessage = 4096

// writeTerminationMessage writes why the server failed to path (the container's
// terminationMessagePath), one line, so the pod's status and the operator's
// status.lastFailure show it.
func writeTerminationMessage(path string, failure error, log logr.Logger) {
	if path == "" {
		return
	}
	msg := "rkllm-server: " + strings.Join(strings.Fields(failure.Error()), " ")
	if len(msg) > maxTerminationMessage {
		msg = msg[:maxTerminationMessage]
	}
	if err := os.WriteFile(path, []byte(msg+"\n"), 0o644); err != nil { //nolint:gosec // read by the kubelet
		log.Error(err, "cannot write the termination message", "path", path)
	}
}

// runWorker is the process that loads the runtime; serve starts it with the protocol
// socket on fd 3. It exits when the supervisor closes that socket.
func runWorker(args []string) int {
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	lib := fs.String("runtime-lib", runtime.DefaultLibrary, "runtime library")
	abiFlag := fs.String("runtime-abi", "1.3", "runtime ABI")
	level := fs.String("log-level", "info", "log level")
	maxFrame := fs.Int("max-frame-bytes", workerproto.DefaultMaxFrameBytes, "largest protocol frame")
	memoryLimit := fs.Int64("memory-limit", memlimit.DefaultLimit, "soft limit of the Go heap")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	verbosity, err := config.ParseLogLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "E worker:", err)
		return 2
	}
	// JSON always: the supervisor parses these lines and re-emits them in its format.
	log := newLogger(os.Stderr, config.LogJSON, verbosity)
	// Signals go to the supervisor, which stops the worker by closing its socket (and the
	// kernel kills it if the supervisor dies first).
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	memlimit.SetLimit(*memoryLimit)
	abi, err := runtime.ParseABI(*abiFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "E worker:", err)
		return 2
	}
	l, err := runtime.Open(*lib, abi)
	if err != nil {
		fmt.Fprintln(os.Stderr, "E worker: cannot load the runtime library:", err)
		return 1
	}
	if err := worker.ServeInherited(context.Background(), worker.Library{Library: l}, l.Path(), *maxFrame, log); err != nil {
		fmt.Fprintln(os.Stderr, "E worker:", err)
		return 1
	}
	return 0
}

// runRenderer is a chat template renderer process; serve starts it with
// --chat-template-file and talks to it over stdin and stdout (server/templatehost).
func runRenderer() int {
	// Signals go to the server, which kills its renderers (and the kernel does if the
	// server dies first).
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	if err := templatehost.Serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "E chat template renderer:", err)
		return 1
	}
	return 0
}

func runFetch(args []string) int {
	var o modelcache.Options
	fs := pflag.NewFlagSet("fetch", pflag.ContinueOnError)
	fs.StringVar(&o.Fetch.URL, "url", "", "http(s) URL of the file.")
	fs.StringVar(&o.Fetch.Dest, "dest", "", "File to write (atomically; a .part file holds a partial download); with a cache, a link to the cached file.")
	fs.StringVar(&o.Fetch.SHA256, "sha256", "", "Expected SHA-256 (hex); the download fails when it differs.")
	fs.IntVar(&o.Fetch.Attempts, "attempts", 5, "Attempts for transient failures.")
	fs.DurationVar(&o.Fetch.ProgressEvery, "progress-interval", 0, "Interval of progress log lines (default 5s).")
	fs.Int64Var(&o.Fetch.MaxSize, "max-size", fetch.DefaultMaxSize, "Largest file accepted, in bytes; a server that announces or sends more is refused.")
	fs.BoolVar(&o.Fetch.AllowInsecureRedirect, "allow-insecure-redirect", false, "Follow redirects from https to plain http (refused by default: anyone on the way could change the file).")
	fs.StringVar(&o.Dir, "cache-dir", os.Getenv(modelcache.EnvDir), "The node's model cache folder, shared by the pods of the node (default $"+modelcache.EnvDir+", which the device plugin sets); empty downloads to --dest.")
	maxBytes := fs.String("cache-max-bytes", os.Getenv(modelcache.EnvMaxBytes), "Size limit of --cache-dir in bytes: least recently used files are removed past it (default $"+modelcache.EnvMaxBytes+"); 0 or empty: none.")
	resultFile := fs.String("result-file", "", "File to write the outcome to as JSON (the operator uses /dev/termination-log); empty for none.")
	logFormat := fs.String("log-format", config.LogJSON, "Log format: json or text.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "rkllm-server fetch:", err)
		return 2
	}
	if *maxBytes != "" {
		n, err := strconv.ParseInt(*maxBytes, 10, 64)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "rkllm-server fetch: --cache-max-bytes %q: must be a number of bytes\n", *maxBytes)
			return 2
		}
		o.MaxBytes = n
	}
	o.Log = newLogger(os.Stderr, *logFormat, 0)
	o.Fetch.Log = o.Log
	out, err := modelcache.Fetch(signalContext(o.Log), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rkllm-server fetch:", err)
		return 1
	}
	o.Log.Info("model file ready", "result", out.Result, "node_cache", out.NodeCache, "file", out.File, "bytes", out.Bytes)
	if *resultFile != "" {
		b, _ := json.Marshal(out)
		if err := os.WriteFile(*resultFile, b, 0o644); err != nil { //nolint:gosec // read by the kubelet
			fmt.Fprintln(os.Stderr, "rkllm-server fetch: writing --result-file:", err)
			return 1
		}
	}
	return 0
}
