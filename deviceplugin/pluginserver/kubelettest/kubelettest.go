// Package kubelettest is a stand-in for the kubelet's side of the device-plugin API, for
// tests and benchmarks: it serves Registration on kubelet.sock in a temporary folder,
// records registrations, dials the plugin back and follows its ListAndWatch stream.
package kubelettest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Stub serves the kubelet's Registration service on Dir/kubelet.sock.
type Stub struct {
	pluginapi.UnimplementedRegistrationServer

	// Dir is the device-plugin folder.
	Dir string
	// Registrations receives every successful Register call.
	Registrations chan *pluginapi.RegisterRequest

	mu  sync.Mutex
	srv *grpc.Server
}

// Start serves Registration on dir/kubelet.sock; the stub stops when the test ends.
func Start(tb testing.TB, dir string) *Stub {
	tb.Helper()
	s := &Stub{Dir: dir, Registrations: make(chan *pluginapi.RegisterRequest, 64)}
	if err := s.listen(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// SocketPath is kubelet.sock's path.
func (s *Stub) SocketPath() string { return filepath.Join(s.Dir, "kubelet.sock") }

func (s *Stub) listen() error {
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "unix", s.SocketPath())
	if err != nil {
		return fmt.Errorf("kubelet stub: %w", err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	return nil
}

// Stop stops serving and removes kubelet.sock. A registration the stub has taken is
// answered first (GracefulStop): the test has seen it, so the plugin must too, or it
// would retry and the test's count of registrations would depend on timing.
func (s *Stub) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.GracefulStop()
	}
	_ = os.Remove(s.SocketPath())
}

// Restart does what a restarting kubelet does to the folder: stop, delete every socket
// in it (the plugins' included), and serve a new kubelet.sock.
func (s *Stub) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			if err := os.Remove(filepath.Join(s.Dir, e.Name())); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := s.listen(); err != nil {
		tb.Fatal(err)
	}
}

// Register implements the kubelet's Registration service, checking what the kubelet checks.
func (s *Stub) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	if req.Version != pluginapi.Version {
		return nil, fmt.Errorf("unsupported device-plugin API version %q", req.Version)
	}
	if req.Endpoint == "" || filepath.Base(req.Endpoint) != req.Endpoint {
		return nil, fmt.Errorf("endpoint %q is not a file name in the device-plugin folder", req.Endpoint)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, req.Endpoint)); err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", req.Endpoint, err)
	}
	select {
	case s.Registrations <- req:
	default:
		return nil, fmt.Errorf("kubelet stub: too many unread registrations")
	}
	return &pluginapi.Empty{}, nil
}

// WaitRegistration returns the next registration, failing the test after timeout.
func (s *Stub) WaitRegistration(tb testing.TB, timeout time.Duration) *pluginapi.RegisterRequest {
	tb.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-s.Registrations:
		return r
	case <-timer.C:
		tb.Fatalf("no registration with the kubelet stub within %v", timeout)
		return nil
	}
}

// Dial connects to a plugin's endpoint in the folder, as the kubelet does after Register.
func (s *Stub) Dial(tb testing.TB, endpoint string) pluginapi.DevicePluginClient {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+filepath.Join(s.Dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

// Watch opens ListAndWatch and delivers every device list on the returned channel until
// the stream ends (then the channel is closed) or the test ends.
func Watch(tb testing.TB, client pluginapi.DevicePluginClient) <-chan []*pluginapi.Device {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	out := make(chan []*pluginapi.Device, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case out <- resp.Devices:
			case <-ctx.Done():
				return
			}
		}
	}()
	tb.Cleanup(func() { cancel(); <-done })
	return out
}

// WaitDevices reads device lists from ch until one satisfies ok, failing the test after
// timeout or when the stream ends. It returns that list.
func WaitDevices(tb testing.TB, ch <-chan []*pluginapi.Device, timeout time.Duration, what string, ok func([]*pluginapi.Device) bool) []*pluginapi.Device {
	tb.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var last []*pluginapi.Device
	for {
		select {
		case devs, open := <-ch:
			if !open {
				tb.Fatalf("ListAndWatch ended while waiting for %s; last list: %s", what, Describe(last))
			}
			last = devs
			if ok(devs) {
				return devs
			}
		case <-timer.C:
			tb.Fatalf("no ListAndWatch update with %s within %v; last list: %s", what, timeout, Describe(last))
			return nil
		}
	}
}

// Health returns a predicate: every device in ids has the given health, and no others exist.
func Health(health string, ids ...string) func([]*pluginapi.Device) bool {
	return func(devs []*pluginapi.Device) bool {
		if len(devs) != len(ids) {
			return false
		}
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
		}
		for _, d := range devs {
			if !want[d.ID] || d.Health != health {
				return false
			}
		}
		return true
	}
}

// Describe formats a device list as "id=Health ...".
func Describe(devs []*pluginapi.Device) string {
	out := "["
	for i, d := range devs {
		if i > 0 {
			out += " "
		}
		out += d.ID + "=" + d.Health
	}
	return out + "]"
}
