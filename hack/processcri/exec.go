package processcri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxExecOutput bounds what ExecSync keeps of each stream (containerd's limit).
const maxExecOutput = 16 << 20

// ExecSync runs a command in a running container (its mount, PID, network, UTS and IPC
// namespaces, its root and working folder, its user and environment) and returns its
// output and exit code; exec probes come here. A command still running at the timeout
// is killed and the call fails with DeadlineExceeded, which the kubelet reports as a
// probe timeout.
func (r *Runtime) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	var pid int
	running := ok && c.state == runtimeapi.ContainerState_CONTAINER_RUNNING
	if ok {
		pid = c.pid
	}
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	if !running || len(req.GetCmd()) == 0 {
		return nil, fmt.Errorf("cannot exec in container %s: it is not running or the command is empty", req.GetContainerId())
	}
	if t := req.GetTimeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Second)
		defer cancel()
	}
	ns := func(kind string) string { return r.procPath(pid, "ns", kind) }
	args := []string{
		"--mount=" + ns("mnt"), "--pid=" + ns("pid"), "--net=" + ns("net"), "--uts=" + ns("uts"), "--ipc=" + ns("ipc"),
		"--root=" + r.procPath(pid, "root"), "--wd=" + r.procPath(pid, "cwd"),
		"--setuid=" + strconv.FormatUint(uint64(c.spec.UID), 10), "--setgid=" + strconv.FormatUint(uint64(c.spec.GID), 10),
		"--",
	}
	cmd := exec.CommandContext(ctx, r.opts.Nsenter, append(args, req.GetCmd()...)...) //nolint:gosec // the kubelet's command, in the container
	cmd.Env = c.spec.Env
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &limitedBuffer{b: &stdout, max: maxExecOutput}
	cmd.Stderr = &limitedBuffer{b: &stderr, max: maxExecOutput}
	// nsenter forks the command into the container's PID namespace: kill both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return nil, status.Errorf(codes.DeadlineExceeded, "command %q timed out after %ds", strings.Join(req.GetCmd(), " "), req.GetTimeout())
	}
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return nil, fmt.Errorf("exec in container %s: %w", req.GetContainerId(), err)
		}
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	}
	return &runtimeapi.ExecSyncResponse{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: int32(code)}, nil //nolint:gosec // exit codes fit
}

// limitedBuffer keeps the first max bytes written and drops the rest.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// ContainerStats reports a running container's CPU and memory (of its init process,
// from /proc).
func (r *Runtime) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	return &runtimeapi.ContainerStatsResponse{Stats: r.stats(c)}, nil
}

// ListContainerStats reports every container's stats.
func (r *Runtime) ListContainerStats(_ context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	var list []*ctr
	for _, c := range r.containers {
		if f != nil && ((f.GetId() != "" && f.GetId() != c.id) || (f.GetPodSandboxId() != "" && f.GetPodSandboxId() != c.sandboxID)) {
			continue
		}
		list = append(list, c)
	}
	r.mu.Unlock()
	out := make([]*runtimeapi.ContainerStats, 0, len(list))
	for _, c := range list {
		out = append(out, r.stats(c))
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: out}, nil
}

func (r *Runtime) stats(c *ctr) *runtimeapi.ContainerStats {
	r.mu.Lock()
	pid, running := c.pid, c.state == runtimeapi.ContainerState_CONTAINER_RUNNING
	r.mu.Unlock()
	now := time.Now().UnixNano()
	st := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{Id: c.id, Metadata: c.config.GetMetadata(), Labels: c.config.GetLabels(), Annotations: c.config.GetAnnotations()},
		Cpu:        &runtimeapi.CpuUsage{Timestamp: now, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{}},
		Memory:     &runtimeapi.MemoryUsage{Timestamp: now, WorkingSetBytes: &runtimeapi.UInt64Value{}},
	}
	if !running {
		return st
	}
	if data, err := os.ReadFile(r.procPath(pid, "stat")); err == nil {
		// Fields after the command's closing parenthesis; utime and stime are 14 and 15.
		if i := bytes.LastIndexByte(data, ')'); i > 0 {
			f := strings.Fields(string(data[i+1:]))
			if len(f) > 13 {
				ut, _ := strconv.ParseUint(f[11], 10, 64)
				stt, _ := strconv.ParseUint(f[12], 10, 64)
				// Clock ticks of 10 ms (USER_HZ is 100 on Linux).
				st.Cpu.UsageCoreNanoSeconds.Value = (ut + stt) * 10_000_000
			}
		}
	}
	if data, err := os.ReadFile(r.procPath(pid, "statm")); err == nil {
		if f := strings.Fields(string(data)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			st.Memory.WorkingSetBytes.Value = pages * uint64(os.Getpagesize()) //nolint:gosec // page size is positive
		}
	}
	return st
}
