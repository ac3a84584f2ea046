package outbuf

import (
	"context"
	"io"
	"testing"
	"time"
)

// A lent connection is the other writer's: what is sent meanwhile waits, asks for the
// connection back once, and goes out after the rest of the other writer's last
// message.
func TestLendHoldsMessagesUntilReturn(t *testing.T) {
	b, client, _ := pipe(t, Options{})
	reclaims := make(chan struct{}, 4)
	if !b.Lend(func() { reclaims <- struct{}{} }) {
		t.Fatal("Lend refused an idle buffer")
	}
	if b.Lend(nil) {
		t.Fatal("a lent buffer was lent again")
	}
	for _, m := range []string{"reply 1\n", "reply 2\n"} {
		if err := b.Send([]byte(m)); err != nil {
			t.Fatalf("Send while lent: %v", err)
		}
	}
	await(t, "the reclaim", reclaims)
	select {
	case <-reclaims:
		t.Fatal("reclaim called twice")
	default:
	}
	// Nothing reaches the client before the Return.
	_ = client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := client.Read(make([]byte, 64)); n > 0 || err == nil {
		t.Fatalf("the client read %d bytes while the connection was lent", n)
	}
	_ = client.SetReadDeadline(time.Time{})
	b.Return([]byte("ken\n")) // the end of the other writer's "token\n"
	want := "ken\nreply 1\nreply 2\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != want {
		t.Fatalf("after Return the client read %q (%v), want %q", got, err, want)
	}
	// The writer counts its batch written just after the client has it.
	for deadline := time.Now().Add(waitTimeout); !b.Lend(nil); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("Lend refused the buffer once everything was written")
		}
	}
	b.Return(nil)
}

// Lend refuses a buffer that holds something for the client: the other writer's
// messages would overtake it.
func TestLendRefusesAQueue(t *testing.T) {
	b, client, _ := pipe(t, Options{})
	if err := b.Send([]byte("waiting\n")); err != nil { // net.Pipe: blocks until read
		t.Fatal(err)
	}
	if b.Lend(nil) {
		t.Fatal("Lend took a buffer with a message waiting")
	}
	if _, err := io.ReadFull(client, make([]byte, len("waiting\n"))); err != nil {
		t.Fatal(err)
	}
}

// Close asks for a lent connection back and waits for it before it ends: nothing
// writes to the client after Close returns, the other writer included.
func TestCloseReclaimsALentConnection(t *testing.T) {
	b, client, _ := pipe(t, Options{})
	go func() { _, _ = io.Copy(io.Discard, client) }()
	returned := make(chan struct{})
	if !b.Lend(func() {
		go func() {
			time.Sleep(20 * time.Millisecond) // the worker's answer
			close(returned)
			b.Return(nil)
		}()
	}) {
		t.Fatal("Lend refused an idle buffer")
	}
	closed := make(chan error, 1)
	go func() { closed <- b.Close(context.Background()) }()
	if err := await(t, "Close", closed); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-returned:
	default:
		t.Fatal("Close returned before the connection was given back")
	}
}
