package processcri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/cgroup"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/container"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/crilog"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
)

// Exit reasons the kubelet shows (those containerd reports).
const (
	ReasonCompleted  = "Completed"
	ReasonError      = "Error"
	ReasonOOMKilled  = "OOMKilled"
	ReasonStartError = "StartError"
)

// ctr is a container.
type ctr struct {
	id, sandboxID string
	config        *runtimeapi.ContainerConfig
	imageRef      string
	imageName     string
	spec          *container.Spec
	limits        cgroup.Limits
	logPath       string
	dir           string

	// Guarded by Runtime.mu.
	state                            runtimeapi.ContainerState
	createdAt, startedAt, finishedAt time.Time
	exitCode                         int32
	reason, message                  string
	pid                              int

	proc    *container.Process
	log     *crilog.File
	copying sync.WaitGroup
	// exited is closed once the process has ended and its output is in the log.
	exited chan struct{}
}

// CreateContainer records a container of a ready sandbox; StartContainer runs it.
func (r *Runtime) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	r.mu.Lock()
	s, ok := r.sandboxes[req.GetPodSandboxId()]
	r.mu.Unlock()
	if !ok {
		return nil, notFound("pod sandbox", req.GetPodSandboxId())
	}
	cfg := req.GetConfig()
	img, err := r.imageEntry(cfg.GetImage())
	if err != nil {
		return nil, err
	}
	imageID, err := img.ID()
	if err != nil {
		return nil, err
	}
	name := cfg.GetImage().GetUserSpecifiedImage()
	if name == "" {
		name = cfg.GetImage().GetImage()
	}
	c := &ctr{
		id: newID(), sandboxID: s.id, config: cfg, imageRef: imageID, imageName: name, createdAt: time.Now(),
		state: runtimeapi.ContainerState_CONTAINER_CREATED, exited: make(chan struct{}),
	}
	c.dir = filepath.Join(r.opts.StateDir, "containers", c.id)
	if cfg.GetLogPath() != "" {
		c.logPath = filepath.Join(s.config.GetLogDirectory(), cfg.GetLogPath())
	}
	if c.spec, err = r.containerSpec(s, cfg, img, c.dir); err != nil {
		return nil, fmt.Errorf("container %s: %w", cfg.GetMetadata().GetName(), err)
	}
	c.limits = limitsOf(cfg.GetLinux().GetResources())
	if err := os.MkdirAll(filepath.Join(c.dir, "scratch"), 0o750); err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.containers[c.id] = c
	r.mu.Unlock()
	return &runtimeapi.CreateContainerResponse{ContainerId: c.id}, nil
}

func limitsOf(res *runtimeapi.LinuxContainerResources) cgroup.Limits {
	return cgroup.Limits{
		MemoryLimitBytes: res.GetMemoryLimitInBytes(), CPUQuota: res.GetCpuQuota(),
		CPUPeriod: res.GetCpuPeriod(), CPUShares: res.GetCpuShares(),
	}
}

// StartContainer starts a created container and returns once its program runs.
func (r *Runtime) StartContainer(_ context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	var s *sandbox
	if ok {
		s = r.sandboxes[c.sandboxID]
	}
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	if c.state != runtimeapi.ContainerState_CONTAINER_CREATED {
		return nil, fmt.Errorf("container %s is %s, not created", c.id, c.state)
	}
	if s == nil || s.state != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("the sandbox of container %s is not ready", c.id)
	}
	if err := r.start(c); err != nil {
		r.mu.Lock()
		c.state = runtimeapi.ContainerState_CONTAINER_EXITED
		c.startedAt, c.finishedAt = time.Now(), time.Now()
		c.exitCode, c.reason, c.message = 128, ReasonStartError, err.Error()
		r.mu.Unlock()
		close(c.exited)
		return nil, err
	}
	return &runtimeapi.StartContainerResponse{}, nil
}

// start runs the container's process with its output going to its log.
func (r *Runtime) start(c *ctr) error {
	var err error
	if c.logPath != "" {
		if c.log, err = crilog.Open(c.logPath); err != nil {
			return err
		}
	}
	cgfd, err := r.opts.Cgroups.Create(c.id, c.limits)
	if err != nil {
		return err
	}
	if cgfd >= 0 {
		defer func() { _ = syscall.Close(cgfd) }()
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return err
	}
	proc, err := container.Start(c.spec, container.StartOptions{Self: r.opts.Self, Stdout: outW, Stderr: errW, CgroupFD: cgfd})
	_ = outW.Close()
	_ = errW.Close()
	c.copying.Add(2)
	go r.copyOutput(c, crilog.Stdout, outR)
	go r.copyOutput(c, crilog.Stderr, errR)
	if err != nil {
		c.copying.Wait()
		r.closeLog(c)
		return err
	}
	r.mu.Lock()
	c.proc, c.pid = proc, proc.PID()
	c.state = runtimeapi.ContainerState_CONTAINER_RUNNING
	c.startedAt = time.Now()
	r.mu.Unlock()
	r.opts.Log.Info("container started", "container", c.config.GetMetadata().GetName(), "id", c.id[:12], "pid", c.pid)
	go r.waitExit(c)
	return nil
}

func (r *Runtime) copyOutput(c *ctr, stream crilog.Stream, pipe *os.File) {
	defer c.copying.Done()
	defer func() { _ = pipe.Close() }()
	if c.log == nil {
		buf := make([]byte, 32<<10)
		for {
			if _, err := pipe.Read(buf); err != nil {
				return
			}
		}
	}
	if err := c.log.Copy(stream, pipe); err != nil {
		r.opts.Log.Error(err, "writing the container's log", "id", c.id[:12])
	}
}

func (r *Runtime) closeLog(c *ctr) {
	if c.log != nil {
		_ = c.log.Close()
	}
}

// waitExit records how the container ended once its process and output are done.
func (r *Runtime) waitExit(c *ctr) {
	<-c.proc.Done()
	c.copying.Wait()
	r.closeLog(c)
	code := c.proc.ExitCode()
	reason := ReasonCompleted
	switch {
	case r.opts.Cgroups.OOMKilled(c.id):
		reason = ReasonOOMKilled
	case code != 0:
		reason = ReasonError
	}
	r.mu.Lock()
	c.state = runtimeapi.ContainerState_CONTAINER_EXITED
	c.finishedAt = time.Now()
	c.exitCode, c.reason = code, reason
	r.mu.Unlock()
	r.opts.Log.Info("container exited", "container", c.config.GetMetadata().GetName(), "id", c.id[:12], "exitCode", code, "reason", reason)
	close(c.exited)
}

// StopContainer sends SIGTERM and, if the container still runs after the timeout,
// SIGKILL; it returns once the container has ended.
func (r *Runtime) StopContainer(_ context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	r.stopContainer(c, time.Duration(req.GetTimeout())*time.Second)
	return &runtimeapi.StopContainerResponse{}, nil
}

func (r *Runtime) stopContainer(c *ctr, grace time.Duration) {
	r.mu.Lock()
	proc := c.proc
	r.mu.Unlock()
	if proc == nil {
		return
	}
	select {
	case <-c.exited:
		return
	default:
	}
	if grace > 0 {
		r.opts.Log.Info("stopping container", "container", c.config.GetMetadata().GetName(), "id", c.id[:12], "signal", "SIGTERM", "grace", grace.String())
		_ = proc.Signal(syscall.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-c.exited:
			return
		case <-timer.C:
		}
	}
	r.opts.Log.Info("killing container", "container", c.config.GetMetadata().GetName(), "id", c.id[:12], "signal", "SIGKILL")
	_ = proc.Signal(syscall.SIGKILL)
	<-c.exited
}

// RemoveContainer kills the container if it runs and forgets it.
func (r *Runtime) RemoveContainer(_ context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	r.mu.Unlock()
	if !ok {
		return &runtimeapi.RemoveContainerResponse{}, nil
	}
	if err := r.removeContainer(c); err != nil {
		return nil, err
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

func (r *Runtime) removeContainer(c *ctr) error {
	r.stopContainer(c, 0)
	r.mu.Lock()
	delete(r.containers, c.id)
	r.mu.Unlock()
	return errors.Join(r.opts.Cgroups.Remove(c.id), os.RemoveAll(c.dir))
}

func (r *Runtime) containersOf(sandboxID string) []*ctr {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*ctr
	for _, c := range r.containers {
		if c.sandboxID == sandboxID {
			out = append(out, c)
		}
	}
	return out
}

// ContainerStatus reports a container, with its mounts (the kubelet reads the
// termination message through them) and its absolute log path.
func (r *Runtime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.containers[req.GetContainerId()]
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	st := &runtimeapi.ContainerStatus{
		Id: c.id, Metadata: c.config.GetMetadata(), State: c.state,
		CreatedAt: nanos(c.createdAt), StartedAt: nanos(c.startedAt), FinishedAt: nanos(c.finishedAt),
		ExitCode: c.exitCode, Image: &runtimeapi.ImageSpec{Image: c.imageName}, ImageRef: c.imageRef, ImageId: c.imageRef,
		Reason: c.reason, Message: c.message, Labels: c.config.GetLabels(), Annotations: c.config.GetAnnotations(),
		Mounts: c.config.GetMounts(), LogPath: c.logPath,
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: st}
	if req.GetVerbose() {
		resp.Info = map[string]string{"pid": strconv.Itoa(c.pid)}
	}
	return resp, nil
}

// ListContainers lists the containers that pass the filter.
func (r *Runtime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*runtimeapi.Container
	for _, c := range r.containers {
		if f != nil {
			if (f.GetId() != "" && f.GetId() != c.id) || (f.GetPodSandboxId() != "" && f.GetPodSandboxId() != c.sandboxID) ||
				(f.GetState() != nil && f.GetState().GetState() != c.state) ||
				!labels.SelectorFromSet(f.GetLabelSelector()).Matches(labels.Set(c.config.GetLabels())) {
				continue
			}
		}
		out = append(out, &runtimeapi.Container{
			Id: c.id, PodSandboxId: c.sandboxID, Metadata: c.config.GetMetadata(), Image: &runtimeapi.ImageSpec{Image: c.imageName},
			ImageRef: c.imageRef, ImageId: c.imageRef, State: c.state, CreatedAt: nanos(c.createdAt),
			Labels: c.config.GetLabels(), Annotations: c.config.GetAnnotations(),
		})
	}
	return &runtimeapi.ListContainersResponse{Containers: out}, nil
}

// UpdateContainerResources applies new limits (where cgroups are available).
func (r *Runtime) UpdateContainerResources(_ context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	l := limitsOf(req.GetLinux())
	if err := r.opts.Cgroups.Update(c.id, l); err != nil {
		return nil, err
	}
	r.mu.Lock()
	c.limits = l
	r.mu.Unlock()
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// ReopenContainerLog starts a new log file after the kubelet rotated the old one.
func (r *Runtime) ReopenContainerLog(_ context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	r.mu.Lock()
	c, ok := r.containers[req.GetContainerId()]
	r.mu.Unlock()
	if !ok {
		return nil, notFound("container", req.GetContainerId())
	}
	if c.log == nil || c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return nil, fmt.Errorf("container %s is not running", c.id)
	}
	if err := c.log.Reopen(); err != nil {
		return nil, err
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

// imageEntry is the map entry of the image a container is created from: the kubelet
// names it by the ID PullImage returned, the runtimes' convention.
func (r *Runtime) imageEntry(spec *runtimeapi.ImageSpec) (*imagemap.Image, error) {
	r.mu.Lock()
	img, ok := r.pulled[spec.GetImage()]
	r.mu.Unlock()
	if ok {
		return img, nil
	}
	ref := spec.GetUserSpecifiedImage()
	if ref == "" {
		ref = spec.GetImage()
	}
	return r.opts.Images.Resolve(ref)
}
