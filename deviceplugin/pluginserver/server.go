// Package pluginserver is a small, device-agnostic kubelet device-plugin framework: it
// serves the DevicePlugin gRPC service on a Unix socket in the kubelet's device-plugin
// folder, registers with kubelet.sock, fans device-list changes out to every ListAndWatch
// stream, and notices kubelet restarts (its socket deleted, kubelet.sock re-created) to
// serve and register again. What the devices are and what a container gets is the
// Allocator's business (package npu for Rockchip NPUs).
package pluginserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Allocator is the device-specific half of a plugin.
type Allocator interface {
	// Allocate answers the kubelet's Allocate call. An error fails the pod's admission;
	// its message reaches the pod's events, so it should say what to do.
	Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error)
	// GetPreferredAllocation chooses among available device IDs. It is called only when
	// Config.PreferredAllocation is set.
	GetPreferredAllocation(ctx context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error)
}

// Observer is told about registrations, for metrics. Its methods must not block.
type Observer interface {
	// Registered is called after each registration attempt, with its error.
	Registered(err error)
	// KubeletRestarted is called once each time the kubelet is seen restarting.
	KubeletRestarted()
}

// Config configures a Server. Zero durations take the documented defaults.
type Config struct {
	// ResourceName is the extended resource, e.g. "rockchip.com/npu" (required).
	ResourceName string
	// Dir is the kubelet's device-plugin folder, holding kubelet.sock (required).
	Dir string
	// Socket is the file name of the plugin's socket in Dir (required), e.g. "rknpu.sock".
	Socket string
	// PreferredAllocation advertises GetPreferredAllocation to the kubelet.
	PreferredAllocation bool
	// RegisterTimeout bounds one registration call (default 5s).
	RegisterTimeout time.Duration
	// RetryMin and RetryMax bound the exponential backoff between failed registrations
	// or failed serves (defaults 250ms and 10s). A re-created kubelet.sock cuts the wait.
	RetryMin, RetryMax time.Duration
	// CheckInterval is how often the socket and kubelet.sock are checked in case a file
	// event was missed, e.g. when the whole folder was re-created (default 1s).
	CheckInterval time.Duration
	// StopTimeout bounds the graceful stop of the gRPC server on shutdown (default 5s).
	StopTimeout time.Duration
}

func (c *Config) setDefaults() error {
	if c.ResourceName == "" || c.Dir == "" || c.Socket == "" {
		return errors.New("pluginserver: ResourceName, Dir and Socket are required")
	}
	if c.Socket == KubeletSocket || filepath.Base(c.Socket) != c.Socket {
		return fmt.Errorf("pluginserver: socket %q must be a plain file name other than %s", c.Socket, KubeletSocket)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RegisterTimeout, 5*time.Second)
	def(&c.RetryMin, 250*time.Millisecond)
	def(&c.RetryMax, 10*time.Second)
	def(&c.CheckInterval, time.Second)
	def(&c.StopTimeout, 5*time.Second)
	return nil
}

// KubeletSocket is the kubelet's registration socket's name in the device-plugin folder.
const KubeletSocket = "kubelet.sock"

// Server serves one resource to the kubelet.
type Server struct {
	cfg   Config
	alloc Allocator
	obs   Observer
	log   logr.Logger

	mu      sync.Mutex
	devices []*pluginapi.Device
	changed chan struct{} // closed and replaced by SetDevices
}

// New returns a Server; call SetDevices before or after Run to publish devices.
func New(cfg Config, alloc Allocator, obs Observer, log logr.Logger) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if obs == nil {
		obs = nopObserver{}
	}
	return &Server{cfg: cfg, alloc: alloc, obs: obs, log: log, changed: make(chan struct{})}, nil
}

// SocketPath is the plugin socket's full path.
func (s *Server) SocketPath() string { return filepath.Join(s.cfg.Dir, s.cfg.Socket) }

// SetDevices publishes the full device list; every open ListAndWatch stream sends it.
func (s *Server) SetDevices(devices []*pluginapi.Device) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.devices = devices
	close(s.changed)
	s.changed = make(chan struct{})
}

// snapshot returns the current list and a channel closed at the next change.
func (s *Server) snapshot() ([]*pluginapi.Device, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devices, s.changed
}

// Run serves and registers until ctx is done, then stops serving, removes the socket and
// returns nil. It serves again whenever its socket disappears and registers again whenever
// kubelet.sock is re-created, retrying failures with capped exponential backoff; it never
// gives up while ctx lives. It returns an error only when the folder cannot be watched.
func (s *Server) Run(ctx context.Context) error {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.cfg.Dir, err)
	}
	defer func() { _ = watcher.Close() }()

	r := &runState{Server: s, watcher: watcher, needServe: true, backoff: s.cfg.RetryMin}
	defer r.stopServing()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	check := time.NewTicker(s.cfg.CheckInterval)
	defer check.Stop()

	for {
		if r.step(ctx) {
			retry.Reset(r.backoff)
			r.retryPending = true
			r.backoff = min(2*r.backoff, s.cfg.RetryMax)
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-watcher.Events:
			if ok {
				r.handleEvent(ev)
			}
		case err, ok := <-watcher.Errors:
			if ok {
				s.log.Error(err, "file watch error; relying on the periodic check", "dir", s.cfg.Dir)
			}
		case <-retry.C:
			r.retryPending = false
		case <-check.C:
			r.periodicCheck()
		case err := <-r.serveErr:
			s.log.Error(err, "device-plugin gRPC server stopped; serving again", "socket", s.SocketPath())
			r.needServe = true
		}
	}
}

// runState is Run's loop state; only Run's goroutine touches it.
type runState struct {
	*Server
	watcher *fsnotify.Watcher

	grpcServer *grpc.Server
	streamsEnd chan struct{} // closed to end the current server's ListAndWatch streams
	serveErr   <-chan error

	needServe, needRegister bool
	retryPending            bool
	backoff                 time.Duration
	restartSeen             bool        // a kubelet restart was seen and not yet counted
	registeredWith          os.FileInfo // kubelet.sock as it was at the last registration
}

// step serves and registers as needed. It returns true when something failed and should
// be retried after the backoff.
func (r *runState) step(ctx context.Context) (failed bool) {
	if r.retryPending {
		return false
	}
	if r.needServe {
		if err := r.serve(); err != nil {
			r.log.Error(err, "cannot serve the device plugin; retrying", "socket", r.SocketPath(), "retryIn", r.backoff)
			return true
		}
		r.needServe, r.needRegister = false, true
	}
	if r.needRegister {
		kubeletSock, err := r.register(ctx)
		r.obs.Registered(err)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			r.log.Error(err, "registration with the kubelet failed; retrying", "kubeletSocket", r.kubeletSocketPath(), "retryIn", r.backoff)
			return true
		}
		r.log.Info("registered with the kubelet", "resource", r.cfg.ResourceName, "socket", r.SocketPath())
		r.needRegister, r.registeredWith, r.backoff = false, kubeletSock, r.cfg.RetryMin
		if r.restartSeen {
			r.obs.KubeletRestarted()
			r.restartSeen = false
		}
	}
	return false
}

// serve (re)starts the gRPC server on a fresh socket.
func (r *runState) serve() error {
	r.stopServing()
	if err := os.MkdirAll(r.cfg.Dir, 0o750); err != nil {
		return fmt.Errorf("creating %s: %w", r.cfg.Dir, err)
	}
	// The watch is gone if the folder was removed; adding it again is harmless otherwise.
	if err := r.watcher.Add(r.cfg.Dir); err != nil {
		return fmt.Errorf("watching %s: %w", r.cfg.Dir, err)
	}
	path := r.SocketPath()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the stale socket %s: %w", path, err)
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", path, err)
	}
	srv := grpc.NewServer()
	end := make(chan struct{})
	pluginapi.RegisterDevicePluginServer(srv, &service{Server: r.Server, end: end})
	errc := make(chan error, 1)
	go func() {
		if err := srv.Serve(lis); err != nil {
			errc <- err
		}
	}()
	r.grpcServer, r.streamsEnd, r.serveErr = srv, end, errc
	return nil
}

// stopServing stops the current gRPC server, if any, and removes its socket. Streams are
// ended first so the graceful stop does not wait for ListAndWatch, which never returns on
// its own.
func (r *runState) stopServing() {
	if r.grpcServer == nil {
		return
	}
	close(r.streamsEnd)
	done := make(chan struct{})
	go func() {
		r.grpcServer.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(r.cfg.StopTimeout)
	select {
	case <-done:
	case <-timer.C:
		r.grpcServer.Stop()
		<-done
	}
	timer.Stop()
	r.grpcServer, r.streamsEnd, r.serveErr = nil, nil, nil
	if err := os.Remove(r.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Error(err, "cannot remove the plugin socket", "socket", r.SocketPath())
	}
}

// register calls Registration.Register on kubelet.sock and returns kubelet.sock's file
// info, to tell a re-created socket from the one registered with.
func (r *runState) register(ctx context.Context) (os.FileInfo, error) {
	path := r.kubeletSocketPath()
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("kubelet socket: %w (is the kubelet running, and is --kubelet-dir its device-plugin folder?)", err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", path, err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RegisterTimeout)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     r.cfg.Socket,
		ResourceName: r.cfg.ResourceName,
		Options:      r.options(),
	})
	if err != nil {
		return nil, fmt.Errorf("registering %s with %s: %w", r.cfg.ResourceName, path, err)
	}
	return info, nil
}

func (r *runState) kubeletSocketPath() string { return filepath.Join(r.cfg.Dir, KubeletSocket) }

// handleEvent reacts to changes in the device-plugin folder. The kubelet, when it starts,
// deletes every socket there and then creates kubelet.sock.
func (r *runState) handleEvent(ev fsnotify.Event) {
	switch ev.Name {
	case r.SocketPath():
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			if r.grpcServer == nil {
				return // our own removal while restarting
			}
			if _, err := os.Stat(r.SocketPath()); err == nil {
				return // already replaced
			}
			r.log.Info("plugin socket was removed (kubelet restart?); serving and registering again", "socket", r.SocketPath())
			r.kubeletRestartSeen()
		}
	case r.kubeletSocketPath():
		if ev.Has(fsnotify.Create) && r.kubeletSocketChanged() {
			r.log.Info("kubelet.sock was re-created (kubelet restart); registering again")
			r.needRegister = true
			r.retryPending, r.backoff = false, r.cfg.RetryMin
			r.restartSeen = true
			if _, err := os.Stat(r.SocketPath()); err != nil {
				r.needServe = true
			}
		}
	}
}

// periodicCheck catches what file events missed: a vanished socket or a new kubelet.sock.
func (r *runState) periodicCheck() {
	if r.grpcServer != nil {
		if _, err := os.Stat(r.SocketPath()); err != nil {
			r.log.Info("plugin socket is gone; serving and registering again", "socket", r.SocketPath())
			r.kubeletRestartSeen()
			return
		}
	}
	if !r.needRegister && !r.needServe && r.kubeletSocketChanged() {
		if _, err := os.Stat(r.kubeletSocketPath()); err == nil {
			r.log.Info("kubelet.sock changed since registration; registering again")
			r.needRegister, r.restartSeen = true, true
		}
	}
}

func (r *runState) kubeletRestartSeen() {
	r.needServe, r.restartSeen = true, true
	r.retryPending, r.backoff = false, r.cfg.RetryMin
	r.stopServing()
}

// kubeletSocketChanged reports whether kubelet.sock is not the file registered with.
func (r *runState) kubeletSocketChanged() bool {
	info, err := os.Stat(r.kubeletSocketPath())
	if err != nil {
		return true
	}
	return r.registeredWith == nil || !os.SameFile(info, r.registeredWith) || !info.ModTime().Equal(r.registeredWith.ModTime())
}

func (s *Server) options() *pluginapi.DevicePluginOptions {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: s.cfg.PreferredAllocation}
}

// service is the DevicePlugin gRPC service of one serving cycle.
type service struct {
	pluginapi.UnimplementedDevicePluginServer
	*Server
	end <-chan struct{}
}

// GetDevicePluginOptions tells the kubelet which optional calls the plugin serves.
func (s *service) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return s.options(), nil
}

// ListAndWatch sends the full device list now and after every change, until the kubelet
// hangs up or the server stops.
func (s *service) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	for {
		devices, changed := s.snapshot()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devices}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		case <-s.end:
			return nil
		}
	}
}

// GetPreferredAllocation forwards to the Allocator.
func (s *service) GetPreferredAllocation(ctx context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	if !s.cfg.PreferredAllocation {
		return nil, status.Error(codes.Unimplemented, "this plugin does not choose preferred allocations")
	}
	return s.alloc.GetPreferredAllocation(ctx, req)
}

// Allocate forwards to the Allocator.
func (s *service) Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp, err := s.alloc.Allocate(ctx, req)
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			err = status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, err
	}
	return resp, nil
}

// PreStartContainer is not required by this plugin (pre_start_required is false); it
// answers anyway, as the API allows calls from older kubelets.
func (s *service) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

type nopObserver struct{}

func (nopObserver) Registered(error)  {}
func (nopObserver) KubeletRestarted() {}
