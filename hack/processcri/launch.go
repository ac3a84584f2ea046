package processcri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/childproc"
)

// LaunchOptions say how to run the runtime as a node.
type LaunchOptions struct {
	// Binary is the process-cri binary.
	Binary string
	// StateDir is the runtime's folder: its socket (cri.sock), its pid file, the proc
	// filesystem of its PID namespace (proc/), its sandboxes' and containers' files. It
	// must exist and not be under a folder Setup mounts over.
	StateDir string
	// Setup are shell commands run in the node's new namespaces before the runtime
	// starts (bind mounts of the node's folders).
	Setup []string
	// Args are the serve flags besides --socket, --state and --proc-dir.
	Args []string
	// Log receives the runtime's output.
	Log io.Writer
	// StartTimeout bounds the wait for the socket (default 1 minute).
	StartTimeout time.Duration
}

// Node is a runtime running in the node's private mount, network and PID namespaces
// (unshare --mount --net --pid --fork --kill-child): whatever it starts lives in them,
// and when it ends the kernel ends everything it started and the namespaces, their
// mounts, interfaces and addresses with them.
type Node struct {
	// PID is the runtime's process id in the host's PID namespace (for nsenter).
	PID int
	// Socket is the CRI socket's path.
	Socket string

	unshare *childproc.Process
}

// NetNS is the path of the node's network namespace.
func (n *Node) NetNS() string { return fmt.Sprintf("/proc/%d/ns/net", n.PID) }

// MountNS is the path of the node's mount namespace.
func (n *Node) MountNS() string { return fmt.Sprintf("/proc/%d/ns/mnt", n.PID) }

// Launch starts the runtime in new namespaces and returns once it serves the CRI.
func Launch(ctx context.Context, opts LaunchOptions) (*Node, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = time.Minute
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the process runtime needs root (namespaces and mounts)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return nil, fmt.Errorf("unshare not found (Debian package util-linux): %w", err)
	}
	state, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(state, "cri.sock")
	pidFile := filepath.Join(state, "runtime.pid")
	proc := filepath.Join(state, "proc")
	for _, f := range []string{socket, pidFile} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if err := os.MkdirAll(proc, 0o750); err != nil {
		return nil, err
	}
	serve := []string{"exec", shellQuote(opts.Binary), NodeInitCommand, shellQuote(opts.Binary), "serve", "--socket", shellQuote(socket), "--state", shellQuote(state),
		"--proc-dir", shellQuote(proc), "--pid-file", shellQuote(pidFile)}
	for _, a := range opts.Args {
		serve = append(serve, shellQuote(a))
	}
	script := strings.Join(append(append([]string{"set -e"}, opts.Setup...), strings.Join(serve, " ")), "\n")
	cmd := exec.Command("unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private", //nolint:noctx,gosec // unshare with the runtime; outlives ctx: Stop and Pdeathsig end it
		"--mount-proc="+proc, "--", "/bin/sh", "-c", script)
	cmd.Dir = state
	cmd.Stdout, cmd.Stderr = opts.Log, opts.Log
	u, err := childproc.Start(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("starting the runtime: %w", err)
	}
	n := &Node{Socket: socket, unshare: u}
	if err := n.waitServing(ctx, pidFile, opts.StartTimeout); err != nil {
		return nil, errors.Join(err, n.Stop(5*time.Second))
	}
	return n, nil
}

// waitServing waits for the pid file and for the socket to answer Version.
func (n *Node) waitServing(ctx context.Context, pidFile string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if n.PID == 0 {
			if data, err := os.ReadFile(pidFile); err == nil {
				n.PID, _ = strconv.Atoi(strings.TrimSpace(string(data)))
			}
		}
		if n.PID != 0 {
			if err := version(ctx, n.Socket); err == nil {
				return nil
			}
		}
		select {
		case <-n.unshare.Done():
			return fmt.Errorf("the runtime exited: %v", n.unshare.Err())
		case <-ctx.Done():
			return fmt.Errorf("the runtime did not serve %s within %s", n.Socket, timeout)
		case <-tick.C:
		}
	}
}

func version(ctx context.Context, socket string) error {
	if _, err := os.Stat(socket); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
	return err
}

// Exited is closed when the runtime has ended.
func (n *Node) Exited() <-chan struct{} { return n.unshare.Done() }

// Stop asks the runtime to stop (SIGTERM: it stops its containers and sandboxes) and
// kills it after timeout; with it goes everything in its namespaces.
func (n *Node) Stop(timeout time.Duration) error {
	if n.PID != 0 {
		_ = syscall.Kill(n.PID, syscall.SIGTERM)
	}
	// unshare --kill-child passes the SIGKILL after timeout on to the runtime, and the
	// kernel to every process of its PID namespace.
	if err := n.unshare.Stop(timeout, 0); err != nil {
		return fmt.Errorf("stopping the runtime: %w", err)
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
