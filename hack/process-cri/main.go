// Command process-cri is the simulated node's container runtime (package
// hack/processcri): the kubelet's CRI on a Unix socket, running each container as a host
// process. Test infrastructure, not part of the product. Subcommands:
//
//	process-cri serve --socket S --state DIR --images FILE --cni-bin-dir DIR ...
//	process-cri node-init BINARY serve ...   (PID 1 of the node's PID namespace; processcri.Launch)
//	process-cri pause HOSTNAME      (a sandbox's namespace holder; started by serve)
//	process-cri container-init      (a container's init; started by serve)
//
// serve expects to run in namespaces of its own (processcri.Launch starts it so).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/cgroup"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/container"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/podnet"
)

func init() {
	// A container's init changes its namespaces and capabilities on the thread that
	// execs, which must be the main thread: lock it before main runs.
	if len(os.Args) > 1 && os.Args[1] == container.InitCommand {
		goruntime.LockOSThread()
	}
}

const usage = "usage: process-cri serve|pause|container-init [flags]"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case processcri.NodeInitCommand:
		code, err := processcri.NodeInit(os.Args[2:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "process-cri:", err)
		}
		os.Exit(code)
	case processcri.PauseCommand:
		hostname := ""
		if len(os.Args) > 2 {
			hostname = os.Args[2]
		}
		err = processcri.Pause(hostname)
	case container.InitCommand:
		err = container.Init()
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "process-cri:", err)
		os.Exit(1)
	}
}

// pathMaps is a repeatable --node-path flag.
type pathMaps []processcri.PathMap

func (p *pathMaps) String() string { return fmt.Sprint(*p) }
func (p *pathMaps) Set(s string) error {
	m, err := processcri.ParsePathMap(s)
	if err != nil {
		return err
	}
	*p = append(*p, m)
	return nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	socket := fs.String("socket", "", "Unix socket to serve the CRI on.")
	state := fs.String("state", "", "State folder (sandboxes, containers, CNI leases).")
	procDir := fs.String("proc-dir", "/proc", "The proc filesystem of the runtime's PID namespace.")
	pidFile := fs.String("pid-file", "", "File to write the runtime's process id in the host's PID namespace to.")
	images := fs.String("images", "", "The image map (YAML; see hack/processcri/imagemap).")
	cniBin := fs.String("cni-bin-dir", "", "Folder with the CNI plugins bridge, host-local and loopback.")
	subnet := fs.String("subnet", "10.244.0.0/24", "Pod subnet; its first address is the node's, on the bridge.")
	bridge := fs.String("bridge", "rkcni0", "The node's bridge.")
	cgroupParent := fs.String("cgroup-parent", "", "A cgroup v2 folder delegating memory and cpu, for containers' limits (empty: no limits).")
	nsenter := fs.String("nsenter", "nsenter", "The nsenter binary (util-linux), for ExecSync.")
	var nodePaths pathMaps
	fs.Var(&nodePaths, "node-path", "HOST=LOCAL: the kubelet's mounts and devices under HOST come from LOCAL (repeatable).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *socket == "" || *state == "" || *images == "" || *cniBin == "" {
		return errors.New("serve needs --socket, --state, --images and --cni-bin-dir")
	}
	log := logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, nil))
	if *pidFile != "" {
		if err := writeHostPID(*pidFile); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	m, err := imagemap.Load(*images)
	if err != nil {
		return err
	}
	prefix, err := netip.ParsePrefix(*subnet)
	if err != nil {
		return fmt.Errorf("--subnet: %w", err)
	}
	network, err := podnet.New(podnet.Config{PluginDir: *cniBin, StateDir: filepath.Join(*state, "cni"), Subnet: prefix, Bridge: *bridge,
		OwnPIDNamespace: ownPIDNamespace(),
	})
	if err != nil {
		return err
	}
	nsenterPath, err := lookPath(*nsenter)
	if err != nil {
		return err
	}
	rt, err := processcri.New(processcri.Options{
		Self: self, StateDir: *state, ProcDir: *procDir, Images: m, Network: network,
		Cgroups: cgroup.Open(*cgroupParent), NodePaths: nodePaths, Nsenter: nsenterPath, Log: log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return rt.Serve(ctx, *socket)
}

// writeHostPID records the runtime's pid as the host sees it: /proc here is still the
// host's proc filesystem, whose self link names the reader in the host's PID namespace.
func writeHostPID(file string) error {
	self, err := os.Readlink("/proc/self")
	if err != nil {
		return fmt.Errorf("finding the runtime's host pid: %w", err)
	}
	return os.WriteFile(file, []byte(strings.TrimSpace(self)+"\n"), 0o600)
}

// ownPIDNamespace reports whether the runtime runs in a PID namespace other than the
// one of the proc filesystem at /proc (whose self link then names another pid).
func ownPIDNamespace() bool {
	self, err := os.Readlink("/proc/self")
	return err == nil && self != strconv.Itoa(os.Getpid())
}

func lookPath(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found (Debian package util-linux): %w", name, err)
	}
	return p, nil
}
