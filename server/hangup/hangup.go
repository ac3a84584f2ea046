// Package hangup tells the server, at once, that a client has left while the server is
// busy with its request and not reading from its connection. net/http notices a
// client's close only by reading, and stops reading when a pipelined request follows
// the one being served; the socket transport has nothing to read once the client has
// sent everything. One goroutine waits in epoll(7) on every watched connection for the
// kernel's hang-up events, so a watch costs two system calls and no goroutine.
package hangup

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Event is what counts as the client leaving.
type Event uint32

const (
	// Closed is the client closing its connection, or only its sending side (TCP
	// cannot tell the two apart without writing): what net/http takes as the client
	// gone when it reads end of file.
	Closed = Event(unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR)
	// HungUp is the client closing both directions (a Unix socket reports it as soon
	// as the peer is gone); a client that only shut down its sending side still reads
	// its answers.
	HungUp = Event(unix.EPOLLHUP | unix.EPOLLERR)
)

// Watcher waits for hang-ups on many connections. Create it with New; Close stops it.
type Watcher struct {
	epfd int
	wake int // an eventfd that ends the wait at Close

	mu      sync.Mutex
	watches map[int32]func()
	next    int32
	closed  bool
	done    chan struct{}
}

// New starts a watcher.
func New() (*Watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wake)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	w := &Watcher{epfd: epfd, wake: wake, watches: map[int32]func(){}, done: make(chan struct{})}
	go w.run()
	return w, nil
}

// ErrNoDescriptor is returned by Watch for a connection without a file descriptor.
var ErrNoDescriptor = errors.New("hangup: the connection has no file descriptor")

// Watch calls gone once, from the watcher's goroutine, when c's client leaves (ev says
// what counts as leaving), unless stop is called first. stop must be called before c
// is closed, and gone must not block. A client that leaves just as stop is called may
// still have gone called, concurrently with stop; never after stop has returned and
// gone has returned.
func (w *Watcher) Watch(c net.Conn, ev Event, gone func()) (stop func(), err error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, ErrNoDescriptor
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("hangup: %w", err)
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, errors.New("hangup: the watcher is closed")
	}
	w.next++
	if w.next < 0 { // -1 is the wake-up's token
		w.next = 0
	}
	token := w.next
	w.watches[token] = gone
	w.mu.Unlock()
	var fd int
	var ctlErr error
	if err := raw.Control(func(d uintptr) {
		fd = int(d) //nolint:gosec // descriptors fit an int
		// One-shot: an event is reported once, even though the state that caused it lasts.
		ctlErr = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: uint32(ev) | unix.EPOLLONESHOT, Fd: token})
	}); err != nil || ctlErr != nil {
		w.forget(token)
		return nil, fmt.Errorf("hangup: epoll_ctl: %w", errors.Join(err, ctlErr))
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			w.forget(token)
			_ = raw.Control(func(uintptr) { _ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, fd, nil) })
		})
	}, nil
}

func (w *Watcher) forget(token int32) {
	w.mu.Lock()
	delete(w.watches, token)
	w.mu.Unlock()
}

// Watching is the number of connections watched now.
func (w *Watcher) Watching() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.watches)
}

func (w *Watcher) run() {
	defer close(w.done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, e := range events[:n] {
			if e.Fd == -1 {
				return // Close
			}
			w.mu.Lock()
			gone := w.watches[e.Fd]
			delete(w.watches, e.Fd)
			w.mu.Unlock()
			if gone != nil {
				gone()
			}
		}
	}
}

// Close stops the watcher; watches still registered never fire.
func (w *Watcher) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(w.wake, one[:])
	<-w.done
	return errors.Join(unix.Close(w.epfd), unix.Close(w.wake))
}
