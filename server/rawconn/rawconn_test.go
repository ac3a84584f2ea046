package rawconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
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

// socketPair returns a Socket on one end of a blocking socketpair and the other end.
func socketPair(t *testing.T) (*Socket, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSocket(os.NewFile(uintptr(fds[0]), "worker"))
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "supervisor")
	t.Cleanup(func() { _ = s.Close(); _ = peer.Close() })
	return s, peer
}

// A Socket's frames reach the peer whole and in order, the small ones written at once
// and one larger than the socket's buffer after waiting for the peer to read; its
// reads take what the peer sends, then io.EOF.
func TestSocketWritesAndReads(t *testing.T) {
	s, peer := socketPair(t)
	small := []byte("token frame")
	large := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	got := make(chan []byte)
	go func() {
		b := make([]byte, len(small)+len(large))
		_, _ = io.ReadFull(peer, b)
		got <- b
	}()
	for _, p := range [][]byte{small, large} {
		if n, err := s.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	if b := <-got; !bytes.Equal(b, append(append([]byte(nil), small...), large...)) {
		t.Fatal("the peer did not read what was written, in order")
	}
	go func() {
		_, _ = peer.Write([]byte("request"))
		_ = peer.Close()
	}()
	b, err := io.ReadAll(s)
	if err != nil || string(b) != "request" {
		t.Fatalf("ReadAll = %q, %v; want \"request\", nil", b, err)
	}
}

// A write to a peer that has gone fails with EPIPE, without the SIGPIPE that would
// kill the worker.
func TestSocketWriteToAClosedPeer(t *testing.T) {
	s, peer := socketPair(t)
	_ = peer.Close()
	if _, err := s.Write([]byte("token")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Write to a closed peer: %v, want EPIPE", err)
	}
}

// A descriptor that is not a stream socket is refused with a message naming it.
func TestNewSocketRefusesOthers(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close(); _ = w.Close() }()
	if _, err := NewSocket(r); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("NewSocket(a pipe) = %v, want \"not a socket\"", err)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "datagram")
	defer func() { _ = f.Close() }()
	if _, err := NewSocket(f); err == nil || !strings.Contains(err.Error(), "not a stream socket") {
		t.Fatalf("NewSocket(a datagram socket) = %v, want \"not a stream socket\"", err)
	}
}
