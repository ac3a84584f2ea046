package workerproto_test

import (
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// A Handoff passes client sockets in order: Take gets the one numbered, and closes those
// given before it that no run took, so no client's connection stays open in flight.
func TestHandoffTakesInOrder(t *testing.T) {
	sup, wrk, err := workerproto.NewHandoffPair()
	if err != nil {
		t.Fatal(err)
	}
	supervisor, worker := workerproto.NewHandoff(sup), workerproto.NewHandoff(wrk)
	t.Cleanup(func() { _ = supervisor.Close(); _ = worker.Close() })

	// Three clients: the server's end is given, the client's end is kept here.
	var clients []*os.File
	for i := range 3 {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		n, err := supervisor.Give(fds[0])
		if err != nil || n != uint64(i+1) {
			t.Fatalf("Give = %d, %v; want %d", n, err, i+1)
		}
		_ = syscall.Close(fds[0]) // the supervisor closes its copy once given
		clients = append(clients, os.NewFile(uintptr(fds[1]), "client"))
	}
	fd, ok := worker.Take(2)
	if !ok {
		t.Fatal("Take(2) found nothing")
	}
	if _, err := syscall.Write(fd, []byte("x")); err != nil {
		t.Fatalf("write to the socket taken: %v", err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(clients[1], b); err != nil || b[0] != 'x' {
		t.Fatalf("client 2 read %q, %v", b, err)
	}
	_ = syscall.Close(fd)
	// Client 1's socket, given and never taken, was closed: its client sees the end.
	if n, err := clients[0].Read(b); n != 0 || err != io.EOF {
		t.Errorf("client 1 read %d, %v; want EOF", n, err)
	}
	if _, ok := worker.Take(9); ok {
		t.Error("Take(9) found a socket never given")
	}
	// Client 3's socket was closed by that Take too (given before 9).
	if n, err := clients[2].Read(b); n != 0 || err != io.EOF {
		t.Errorf("client 3 read %d, %v; want EOF", n, err)
	}
	if _, ok := worker.Take(10); ok {
		t.Error("Take on an empty handoff found a socket")
	}
	_ = worker.Close()
	if _, err := supervisor.Give(0); err == nil {
		t.Error("Give to a worker that is gone succeeded")
	}
}
