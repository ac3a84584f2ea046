package workerproto

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// The benchmarks below measure what the worker protocol costs per generated token on
// either side of the socketpair (docs/benchmarks.md, "where the per-token time goes").
// Their allocation counts do not depend on the machine's load; their times do.

// tokenDelivery is a delivery as the runtime makes one per token: one result with a
// short text and a token id.
func tokenDelivery() *Delivery {
	return &Delivery{Delivery: runtime.Delivery{State: runtime.StateNormal, Results: []runtime.Result{{Text: "@1234567890123", TokenID: 295}}}}
}

// socketpair returns both ends of a Unix stream socketpair as net.Conns, as the
// supervisor and the worker hold them.
func socketpair(b *testing.B) (net.Conn, net.Conn) {
	b.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		_ = f.Close()
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		b.Cleanup(func() { _ = c.Close() })
	}
	return conns[0], conns[1]
}

// BenchmarkDeliverySend is the worker's part of a token: encoding the delivery and
// writing its frame to the supervisor's socket (the syscall included), with the other
// end drained.
func BenchmarkDeliverySend(b *testing.B) {
	sup, wrk := socketpair(b)
	go func() { _, _ = io.Copy(io.Discard, sup) }()
	c := NewConn(wrk, 0)
	d := tokenDelivery()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Send(7, d); err != nil {
			b.Fatal(err)
		}
	}
}

// repeatReader returns the same bytes over and over.
type repeatReader struct {
	b []byte
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.i:])
	r.i = (r.i + n) % len(r.b)
	return n, nil
}

// BenchmarkDeliveryReceive is the supervisor's part of reading a token: reading one
// frame from the worker's stream and decoding the delivery (no syscall: the frames
// come from memory).
func BenchmarkDeliveryReceive(b *testing.B) {
	var frame bytes.Buffer
	w := NewConn(nopRWC{Writer: &frame}, 0)
	if err := w.Send(7, tokenDelivery()); err != nil {
		b.Fatal(err)
	}
	c := NewConn(nopRWC{Reader: bufio.NewReader(&repeatReader{b: frame.Bytes()})}, 0)
	b.ReportAllocs()
	for b.Loop() {
		if _, m, err := c.Receive(); err != nil || m.Op() != OpDelivery {
			b.Fatal(m, err)
		}
	}
}

// nopRWC turns a reader or a writer into the io.ReadWriteCloser a Conn wraps.
type nopRWC struct {
	io.Reader
	io.Writer
}

func (nopRWC) Close() error { return nil }
