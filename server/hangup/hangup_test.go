package hangup

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const waitTimeout = 10 * time.Second

func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	var d net.Dialer
	client, err = d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	return client, server
}

func newWatcher(t *testing.T) *Watcher {
	t.Helper()
	w, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("%s: not reported within %s", what, waitTimeout)
	}
}

// A TCP client that closes while unread data (a pipelined request) waits on the
// server's side is reported at once.
func TestClosedWithUnreadData(t *testing.T) {
	w := newWatcher(t)
	client, server := tcpPair(t)
	gone := make(chan struct{})
	stop, err := w.Watch(server, Closed, func() { close(gone) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := client.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = client.Close()
	waitFor(t, gone, "a closed client")
	if w.Watching() != 0 {
		t.Errorf("%d watches left after the event", w.Watching())
	}
}

// HungUp ignores a Unix client that only shut down its sending side, and reports it
// once it closes.
func TestHungUpIgnoresAHalfClose(t *testing.T) {
	w := newWatcher(t)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	server, err := net.FileConn(fileOf(fds[0]))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Close() })
	var closed atomic.Bool
	gone := make(chan struct{})
	stop, err := w.Watch(server, HungUp, func() {
		if !closed.Load() {
			t.Error("reported before the client closed")
		}
		close(gone)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := unix.Shutdown(fds[1], unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	// A second watch that fires after the half-close has been seen by the kernel.
	other, otherServer := tcpPair(t)
	otherGone := make(chan struct{})
	stopOther, err := w.Watch(otherServer, Closed, func() { close(otherGone) })
	if err != nil {
		t.Fatal(err)
	}
	defer stopOther()
	_ = other.Close()
	waitFor(t, otherGone, "the other client")
	closed.Store(true)
	_ = unix.Close(fds[1])
	waitFor(t, gone, "a closed client")
}

// A watch that was stopped is not reported.
func TestStopped(t *testing.T) {
	w := newWatcher(t)
	client, server := tcpPair(t)
	stop, err := w.Watch(server, Closed, func() { t.Error("a stopped watch was reported") })
	if err != nil {
		t.Fatal(err)
	}
	stop()
	stop() // twice is fine
	_ = client.Close()
	other, otherServer := tcpPair(t)
	otherGone := make(chan struct{})
	stopOther, err := w.Watch(otherServer, Closed, func() { close(otherGone) })
	if err != nil {
		t.Fatal(err)
	}
	defer stopOther()
	_ = other.Close()
	waitFor(t, otherGone, "the other client")
}

func fileOf(fd int) *os.File { return os.NewFile(uintptr(fd), "socketpair") }
