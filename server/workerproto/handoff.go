package workerproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Handoff passes client sockets from the supervisor to the worker for runs whose
// tokens the worker writes to the client itself (Run.Direct). It is one end of a
// SOCK_SEQPACKET socketpair beside the frames' connection: each message is the
// socket's number (Direct.Socket) with the socket attached (SCM_RIGHTS), sent before
// the Run, so it is there when the worker reads the Run. A socket whose Run never came
// (the worker answered busy) is closed when a later run takes its own.
type Handoff struct {
	mu   sync.Mutex // fd is not used after Close, nor closed during a Give
	fd   int        // -1 once closed
	sent uint64     // the number of the last socket given
}

// NewHandoffPair returns the supervisor's and the worker's ends, close-on-exec (the
// worker's is passed to it explicitly).
func NewHandoffPair() (supervisor, worker int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("handoff socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

// NewHandoff uses fd, an end of NewHandoffPair's socketpair, and closes it with Close.
func NewHandoff(fd int) *Handoff { return &Handoff{fd: fd} }

// Give passes a copy of client and returns its number, for the Run's Direct.Socket.
// It never waits (a worker that does not take what it is given makes it fail, and the
// run's tokens then go through the supervisor).
func (h *Handoff) Give(client int) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return 0, errors.New("pass the client's socket to the worker: the worker has ended")
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.sent+1)
	if err := unix.Sendmsg(h.fd, b[:], unix.UnixRights(client), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err != nil {
		return 0, fmt.Errorf("pass the client's socket to the worker: %w", err)
	}
	h.sent++
	return h.sent, nil
}

// Take returns the client socket numbered id, closing those given before it that no
// run took; false when there is none.
func (h *Handoff) Take(id uint64) (int, bool) {
	for {
		var b [8]byte
		oob := make([]byte, unix.CmsgSpace(4))
		n, oobn, _, _, err := unix.Recvmsg(h.fd, b[:], oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return -1, false
		}
		fd := -1
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
			if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
				fd = fds[0]
			}
		}
		got := binary.BigEndian.Uint64(b[:])
		switch {
		case fd < 0 || n != len(b):
			if fd >= 0 {
				_ = unix.Close(fd)
			}
		case got == id:
			return fd, true
		case got > id: // given after: cannot happen, sockets are taken in order
			_ = unix.Close(fd)
			return -1, false
		default:
			_ = unix.Close(fd)
		}
	}
}

// Close closes this end, once.
func (h *Handoff) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}
