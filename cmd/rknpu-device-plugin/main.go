// Command rknpu-device-plugin advertises Rockchip RK3588-family NPUs to the kubelet as the
// extended resource rockchip.com/npu. It runs as a DaemonSet; see docs/device-plugin.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/daemon"
)

// version is stamped by the build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	opts := daemon.DefaultOptions()
	opts.AddFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	logFormat := flag.String("log-format", "text", "Log format: text or json.")
	verbosity := flag.Int("v", 0, "Log verbosity; 1 adds debug messages.")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected arguments %q; all settings are flags (see -help)\n", flag.Args())
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println("rknpu-device-plugin", version)
		return
	}

	handlerOpts := &slog.HandlerOptions{Level: slog.Level(-*verbosity)}
	var handler slog.Handler
	switch *logFormat {
	case "text":
		handler = slog.NewTextHandler(os.Stderr, handlerOpts)
	case "json":
		handler = slog.NewJSONHandler(os.Stderr, handlerOpts)
	default:
		fmt.Fprintf(os.Stderr, "--log-format %q is not text or json\n", *logFormat)
		os.Exit(2)
	}
	log := logr.FromSlogHandler(handler)
	log.Info("starting rknpu-device-plugin", "version", version)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := daemon.Run(ctx, opts, log); err != nil {
		log.Error(err, "rknpu-device-plugin failed")
		stop()
		os.Exit(1)
	}
}
