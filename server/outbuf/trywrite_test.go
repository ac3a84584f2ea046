package outbuf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// socketPair returns both ends of a Unix stream socketpair, closed at the end of the
// test.
func socketPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conns[i].Close() })
	}
	return conns[0], conns[1]
}

// countingWriter counts the writes of the buffer's goroutine.
type countingWriter struct {
	io.Writer
	writes atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Writer.Write(p)
}

// TestSendWritesAtOnce: with TryWrite, a message that finds the buffer empty reaches a
// client that keeps up without the buffer's goroutine writing anything.
func TestSendWritesAtOnce(t *testing.T) {
	server, client := socketPair(t)
	w := &countingWriter{Writer: server}
	b := New(w, Options{SetWriteDeadline: server.SetWriteDeadline, TryWrite: NonBlockingWriter(server)})
	t.Cleanup(b.Abort)
	br := bufio.NewReader(client)
	for i := range 50 {
		msg := fmt.Sprintf("token %d\n", i)
		if err := b.Send([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != msg {
			t.Fatalf("read %q, %v; want %q", line, err, msg)
		}
	}
	if n := w.writes.Load(); n != 0 {
		t.Errorf("the buffer's goroutine wrote %d times; Send should have written every message", n)
	}
}

// TestFullSocketGoesThroughTheGoroutine: when the client's socket is full, Send
// returns at once and what the socket did not take is written, in order, once the
// client reads again.
func TestFullSocketGoesThroughTheGoroutine(t *testing.T) {
	server, client := socketPair(t)
	w := &countingWriter{Writer: server}
	b := New(w, Options{MaxBytes: 64 << 20, SetWriteDeadline: server.SetWriteDeadline, TryWrite: NonBlockingWriter(server)})
	t.Cleanup(b.Abort)
	var want bytes.Buffer
	// Nobody reads until the buffer holds something: the socket is full then.
	for i := 0; b.Queued() == 0; i++ {
		msg := fmt.Appendf(nil, "message %d %s\n", i, bytes.Repeat([]byte("x"), 1000))
		want.Write(msg)
		if err := b.Send(msg); err != nil {
			t.Fatal(err)
		}
		if i > 1<<16 {
			t.Fatal("64 MB sent and the socket never filled up")
		}
	}
	for i := range 20 { // queued behind the rest
		msg := fmt.Appendf(nil, "after %d\n", i)
		want.Write(msg)
		if err := b.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the client read the messages out of order or cut")
	}
	if w.writes.Load() == 0 {
		t.Error("the goroutine wrote nothing, yet the socket was full")
	}
}

// TestPartialWritesKeepOrder: however little each attempt writes, concurrent senders'
// messages arrive whole and each sender's in order.
func TestPartialWritesKeepOrder(t *testing.T) {
	server, client := socketPair(t)
	try := NonBlockingWriter(server)
	stingy := func(p []byte) (int, error) { return try(p[:min(len(p), 5)]) }
	b := New(server, Options{MaxBytes: 64 << 20, SetWriteDeadline: server.SetWriteDeadline, TryWrite: stingy})
	t.Cleanup(b.Abort)
	const senders, each = 4, 200
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				if err := b.Send(fmt.Appendf(nil, "%d %d\n", s, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	next := make([]int, senders)
	br := bufio.NewReader(client)
	for range senders * each {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		var s, i int
		if _, err := fmt.Sscanf(line, "%d %d\n", &s, &i); err != nil || s < 0 || s >= senders || i != next[s] {
			t.Fatalf("line %q: want sender %d's message %d", line, s, next[min(max(s, 0), senders-1)])
		}
		next[s]++
	}
	wg.Wait()
}

// TestFailedAttemptCutsOff: a write that fails in Send cuts the client off, once.
func TestFailedAttemptCutsOff(t *testing.T) {
	broken := errors.New("connection reset")
	failed := make(chan error, 2)
	b := New(io.Discard, Options{TryWrite: func([]byte) (int, error) { return 0, broken }, OnFail: func(err error) { failed <- err }})
	t.Cleanup(b.Abort)
	if err := b.Send([]byte("x\n")); !errors.Is(err, broken) {
		t.Fatalf("Send: %v, want the write's error", err)
	}
	if err := <-failed; !errors.Is(err, broken) {
		t.Errorf("OnFail(%v)", err)
	}
	if err := b.Send([]byte("y\n")); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after the failure: %v, want ErrClosed", err)
	}
	select {
	case err := <-failed:
		t.Errorf("OnFail called twice (again with %v)", err)
	default:
	}
}
