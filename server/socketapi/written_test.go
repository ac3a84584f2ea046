package socketapi

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
)

// TestSentCountsNotifications: the bytes a connection has been sent count its
// notifications (which notify writes from its scratch buffer, at once when the socket
// has room) as well as its responses, in the order the client gets them. An answer over
// the output buffer's bound is held until the connection has written as many bytes as
// it has been sent up to that answer's end: with the notifications left out, a run's
// answer would count as written once the bytes of its tokens had gone, and its account
// of the budget of bytes in flight would be closed with most of it still unread.
func TestSentCountsNotifications(t *testing.T) {
	s := New(jsonrpc.NewDispatcher(logr.Discard(), nil), Options{Log: logr.Discard(), OutputBufferBytes: 1024})
	server, client := socketPair(t)
	c := s.newConn(server)
	defer c.close()

	notes := 0
	for i := range 3 {
		n := &jsonrpc.Notification{Method: "rkllm.result", Params: map[string]any{"i": i, "text": strings.Repeat("x", 10<<10)}}
		line, err := n.AppendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		notes += len(line) + 1
		if err := c.notify(n); err != nil {
			t.Fatal(err)
		}
	}
	answer := &jsonrpc.Response{ID: json.RawMessage("1"), Result: json.RawMessage(`"` + strings.Repeat("y", 1<<20) + `"`)}
	end, n, err := c.send(answer)
	if err != nil {
		t.Fatal(err)
	}
	if n <= c.bufferBound() || end != int64(notes+n) {
		t.Fatalf("an answer of %d bytes after %d bytes of notifications ends at byte %d of the connection, want %d", n, notes, end, notes+n)
	}

	read := make(chan int64, 1)
	go func() {
		got, _ := io.Copy(io.Discard, client)
		read <- got
	}()
	c.waitWritten(end) // returns once the client has been written everything
	c.close()
	if got := <-read; got != end {
		t.Errorf("the client read %d bytes, want %d", got, end)
	}
}

// socketPair returns both ends of a Unix stream socketpair (the server's end has a
// descriptor, so its writes are tried at once), closed at the end of the test.
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
