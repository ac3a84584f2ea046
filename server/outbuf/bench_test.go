package outbuf

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

// BenchmarkSendWritten is the client writer's part of a token: from Send to the
// message's bytes written to a Unix socket whose other end is drained, one message at
// a time (as tokens come, far apart). "goroutine" writes on the buffer's goroutine
// (HTTP); "now" lets Send write at once (the Unix socket).
func BenchmarkSendWritten(b *testing.B) {
	for _, now := range []bool{false, true} {
		name := "goroutine"
		if now {
			name = "now"
		}
		b.Run(name, func(b *testing.B) {
			nc := drainedSocket(b)
			written := make(chan struct{}, 1)
			opts := Options{SetWriteDeadline: nc.SetWriteDeadline, Written: func(int) { written <- struct{}{} }}
			if now {
				opts.TryWrite = NonBlockingWriter(nc)
			}
			buf := New(nc, opts)
			b.Cleanup(buf.Abort)
			msg := []byte(`{"jsonrpc":"2.0","method":"rkllm.result","params":{"request_id":"r-1","state":"RKLLM_RUN_NORMAL","text":"@1234567890123","token_id":295}}` + "\n")
			b.ReportAllocs()
			for b.Loop() {
				if err := buf.Send(msg); err != nil {
					b.Fatal(err)
				}
				<-written
			}
		})
	}
}

// drainedSocket returns one end of a Unix socketpair whose other end is read and
// thrown away.
func drainedSocket(b *testing.B) net.Conn {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		_ = f.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = conns[i].Close() })
	}
	go func() { _, _ = io.Copy(io.Discard, conns[1]) }()
	return conns[0]
}
