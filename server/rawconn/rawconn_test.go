package rawconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// pair returns the two ends of a Unix socketpair as net.Conns, the first wrapped.
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		conns[i] = c
	}
	w := Wrap(conns[0])
	if _, ok := w.(*Conn); !ok {
		t.Fatalf("Wrap(%T) = %T, want *Conn", conns[0], w)
	}
	return w, conns[1]
}

// A write larger than the socket's buffer is written whole: the Conn waits for room
// while the peer reads, and the peer reads every byte in order.
func TestWriteLargerThanTheSocket(t *testing.T) {
	c, peer := pair(t)
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, many times a socket's buffer
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := c.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	_ = c.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the peer read %d bytes, not what was written (%d)", len(b), len(want))
	}
}

// Read waits for data, returns what came, and io.EOF once the peer has closed.
func TestReadWaitsAndEnds(t *testing.T) {
	c, peer := pair(t)
	go func() {
		_, _ = peer.Write([]byte("frame"))
		_ = peer.Close()
	}()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "frame" {
		t.Fatalf("ReadAll = %q, %v; want \"frame\", nil", b, err)
	}
	if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

// Deadlines still bound a wait: a read with nothing to read and a write to a full
// socket end with a timeout, as net.Conn's do.
func TestDeadlines(t *testing.T) {
	c, _ := pair(t)
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	n, err := c.Write(make([]byte, 8<<20)) // more than the socket takes without a reader
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write past its deadline: %d, %v; want a timeout", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Write's error %v is not a net.Error timeout", err)
	}
}

// Reads and writes after Close fail with net.ErrClosed, as net.Conn's do.
func TestClosed(t *testing.T) {
	c, _ := pair(t)
	_ = c.Close()
	if _, err := c.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// A write to a peer that has gone fails at once with the system's error (EPIPE), and
// does not kill the process with SIGPIPE.
func TestWriteToAClosedPeer(t *testing.T) {
	c, peer := pair(t)
	_ = peer.Close()
	if _, err := c.Write([]byte("token")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Write to a closed peer: %v, want EPIPE", err)
	}
}

// A connection without a descriptor is returned as it is.
func TestWrapWithoutDescriptor(t *testing.T) {
	a, b := net.Pipe()
	defer func() { _ = a.Close(); _ = b.Close() }()
	if Wrap(a) != a {
		t.Fatal("Wrap of a net.Pipe end changed it")
	}
}
