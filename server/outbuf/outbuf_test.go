package outbuf

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// waitTimeout bounds every wait; all of them end as soon as the awaited event happens.
const waitTimeout = 10 * time.Second

// pipe returns a buffer writing into one end of an in-memory connection (writes block
// until the other end reads, as a client that does not read makes them) and that other
// end, with a channel receiving the error the buffer failed with.
func pipe(t *testing.T, opts Options) (*Buffer, net.Conn, chan error) {
	t.Helper()
	server, client := net.Pipe()
	t.Cleanup(func() { _ = server.Close(); _ = client.Close() })
	failed := make(chan error, 1)
	opts.SetWriteDeadline = server.SetWriteDeadline
	opts.OnFail = func(err error) { failed <- err }
	b := New(server, opts)
	t.Cleanup(b.Abort)
	return b, client, failed
}

func await[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		var zero T
		return zero
	}
}

func TestMessagesArriveInOrder(t *testing.T) {
	b, client, failed := pipe(t, Options{})
	var want bytes.Buffer
	for i := range 200 {
		msg := fmt.Appendf(nil, "message %d\n", i)
		want.Write(msg)
		if err := b.Send(msg); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("the client read\n%s\nwant\n%s", got, want.Bytes())
	}
	select {
	case err := <-failed:
		t.Errorf("failed: %v", err)
	default:
	}
}

// TestClientThatStopsReadingIsCutOff: Send never waits for the client; once the client
// has fallen MaxBytes behind, Send reports the overflow, the buffer fails once, and a
// write blocked on the client is interrupted so Close returns at once.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	b, _, failed := pipe(t, Options{MaxBytes: 1000})
	msg := bytes.Repeat([]byte("x"), 99)
	sent := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if err := b.Send(append(msg, '\n')); err != nil {
				sent <- err
				return
			}
			if i > 100 {
				sent <- errors.New("101 messages of 100 bytes were queued under a bound of 1000")
				return
			}
		}
	}()
	if err := await(t, "Send to refuse a message", sent); !errors.Is(err, ErrOverflow) {
		t.Fatalf("Send: %v, want ErrOverflow", err)
	}
	if err := await(t, "OnFail", failed); !errors.Is(err, ErrOverflow) {
		t.Errorf("OnFail(%v), want ErrOverflow", err)
	}
	if err := b.Send(msg); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after the cut: %v, want ErrClosed", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close(context.Background()) }()
	if err := await(t, "Close after the cut", closed); !errors.Is(err, ErrOverflow) {
		t.Errorf("Close: %v, want ErrOverflow", err)
	}
	select {
	case err := <-failed:
		t.Errorf("OnFail called twice (again with %v)", err)
	default:
	}
}

// TestOneLargeMessageFits: a message over the bound is taken when nothing waits, so a
// large result can always be sent.
func TestOneLargeMessageFits(t *testing.T) {
	b, client, _ := pipe(t, Options{MaxBytes: 10})
	big := bytes.Repeat([]byte("y"), 5000)
	if err := b.Send(big); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(big))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read %d bytes: %v", len(got), err)
	}
}

func TestWriteTimeoutCutsOff(t *testing.T) {
	b, _, failed := pipe(t, Options{WriteTimeout: 50 * time.Millisecond})
	if err := b.Send([]byte("nobody reads this\n")); err != nil {
		t.Fatal(err)
	}
	if err := await(t, "the write timeout", failed); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("OnFail(%v), want a deadline error", err)
	}
}

func TestCloseWritesWhatIsQueued(t *testing.T) {
	b, client, failed := pipe(t, Options{})
	for i := range 3 {
		if err := b.Send(fmt.Appendf(nil, "last words %d\n", i)); err != nil {
			t.Fatal(err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close(context.Background()) }()
	br := bufio.NewReader(client)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if want := fmt.Sprintf("last words %d\n", i); err != nil || line != want {
			t.Fatalf("line %d: %q %v, want %q", i, line, err, want)
		}
	}
	if err := await(t, "Close", closed); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := b.Send([]byte("late\n")); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v, want ErrClosed", err)
	}
	select {
	case err := <-failed:
		t.Errorf("OnFail(%v) after a clean close", err)
	default:
	}
}

func TestCloseGivesUpAtItsDeadline(t *testing.T) {
	b, _, _ := pipe(t, Options{})
	if err := b.Send([]byte("nobody reads this\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- b.Close(ctx) }()
	if err := await(t, "Close to give up", closed); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close: %v, want the context's deadline", err)
	}
}
