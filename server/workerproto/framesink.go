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
}

// NewFrameSink returns a sink writing to f, the blocking socket under conn, and makes
// conn take the sink's lock for each frame it writes. Call it before conn is used.
func NewFrameSink(conn *Conn, f *os.File) (*FrameSink, error) {
	c := (*C.wp_sink)(C.malloc(C.sizeof_wp_sink))
	if c == nil {
		return nil, fmt.Errorf("frame sink: out of memory")
	}
	if C.wp_sink_init(c, C.int(f.Fd()), C.uint8_t(OpDelivery), C.uint32_t(conn.maxFrame)) != 0 { //nolint:gosec // maxFrame <= MaxInt32 (NewConn)
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

// For returns the sink for the run with call id, one run at a time.
func (s *FrameSink) For(id uint64) runtime.Sink {
	s.c.id = C.uint64_t(id)
	return runtime.Sink{Fn: C.wp_sink_deliver, Arg: unsafe.Pointer(s.c)}
}

// Close frees the sink, once no run and no Conn write can use it.
func (s *FrameSink) Close() {
	C.wp_sink_destroy(s.c)
	C.free(unsafe.Pointer(s.c))
	s.c = nil
}
