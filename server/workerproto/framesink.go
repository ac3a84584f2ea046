//go:build cgo

package workerproto

/*
#cgo CFLAGS: -I${SRCDIR}/../runtime
#include <stdlib.h>
#include "framesink.h"
*/
import "C"

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// FrameSink writes a run's token deliveries to the supervisor from the runtime's own
// thread, in C, as the Conn's Send would (runtime.Sink): a token then costs the worker
// one write and no entry into Go, whose scheduler hand-offs and wake-ups were most of
// a token's cost and latency in a worker that sleeps between tokens. Deliveries it
// does not take (the run's end and errors, hidden states and logits, anything larger
// than a token, everything after a failed write) reach the run's ResultFunc as before.
//
// The sink and the Conn share one lock per frame, so frames from both never mix.
type FrameSink struct {
	c    *C.wp_sink
	file *os.File // kept open as long as the sink writes to its descriptor
	// socket is the number of the client socket the run in progress writes to
	// (Direct.Socket), 0 for none.
	socket atomic.Uint64
}

// NewFrameSink returns a sink writing to f, the blocking socket under conn, and makes
// conn take the sink's lock for each frame it writes. Call it before conn is used.
func NewFrameSink(conn *Conn, f *os.File) (*FrameSink, error) {
	c := (*C.wp_sink)(C.malloc(C.sizeof_wp_sink))
	if c == nil {
		return nil, fmt.Errorf("frame sink: out of memory")
	}
	if C.wp_sink_init(c, C.int(f.Fd()), C.uint8_t(OpDelivery), C.uint8_t(OpDirectDelivery), C.uint32_t(conn.maxFrame)) != 0 { //nolint:gosec // maxFrame <= MaxInt32 (NewConn)
		C.free(unsafe.Pointer(c))
		return nil, fmt.Errorf("frame sink: sem_init failed")
	}
	s := &FrameSink{c: c, file: f}
	conn.wmu = s
	return s, nil
}

// Lock takes the frame lock (sync.Locker, for the Conn).
func (s *FrameSink) Lock() { C.wp_sink_lock(s.c) }

// Unlock releases it.
func (s *FrameSink) Unlock() { C.wp_sink_unlock(s.c) }

// For returns the sink for the run with call id, one run at a time. With client >= 0
// (a descriptor of the client's socket, which the caller keeps open until the run
// ends) and d, the sink writes the run's tokens to the client itself (Direct);
// otherwise every frame goes to the supervisor.
func (s *FrameSink) For(id uint64, client int, d *Direct) (runtime.Sink, error) {
	s.c.id = C.uint64_t(id)
	s.socket.Store(0)
	if client < 0 || d == nil {
		C.wp_sink_direct(s.c, -1, nil, 0, nil, 0, 0)
	} else {
		s.socket.Store(d.Socket)
		if len(d.Head) > MaxDirectTemplate || len(d.Tail) > MaxDirectTemplate {
			return runtime.Sink{}, fmt.Errorf("direct writes: head of %d bytes and tail of %d, limit %d", len(d.Head), len(d.Tail), MaxDirectTemplate)
		}
		head, tail := C.CString(d.Head), C.CString(d.Tail)
		chunked := C.int(0)
		if d.Chunked {
			chunked = 1
		}
		C.wp_sink_direct(s.c, C.int(client), head, C.size_t(len(d.Head)), tail, C.size_t(len(d.Tail)), chunked) //nolint:gocritic // both freed below, copied by the sink
		C.free(unsafe.Pointer(head))
		C.free(unsafe.Pointer(tail))
	}
	return runtime.Sink{Fn: C.wp_sink_deliver, Arg: unsafe.Pointer(s.c)}, nil
}

// Reclaim stops the direct writes to the client socket numbered socket, if the run in
// progress makes them: when it returns, nothing more is written to that client.
func (s *FrameSink) Reclaim(socket uint64) {
	if socket != 0 && s.socket.Load() == socket {
		C.wp_sink_stop(s.c)
	}
}

// jsonString is the C encoder's JSON string of s, which must be byte for byte the
// supervisor's (jsonrpc.AppendString); for its tests.
func jsonString(s string) string {
	buf := (*C.uchar)(C.malloc(C.size_t(6*len(s) + 2)))
	defer C.free(unsafe.Pointer(buf))
	in := C.CBytes([]byte(s))
	defer C.free(in)
	end := C.wp_json_string(buf, (*C.uchar)(in), C.size_t(len(s)))
	return C.GoStringN((*C.char)(unsafe.Pointer(buf)), C.int(uintptr(unsafe.Pointer(end))-uintptr(unsafe.Pointer(buf)))) //nolint:gosec // at most 6 * len(s) + 2
}

// Close frees the sink, once no run and no Conn write can use it.
func (s *FrameSink) Close() {
	C.wp_sink_destroy(s.c)
	C.free(unsafe.Pointer(s.c))
	s.c = nil
}
