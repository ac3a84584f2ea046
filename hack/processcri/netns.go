package processcri

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialContext connects to addr from inside the node's network namespace (where pod IPs
// and the node IP are), from a process that runs outside it: a socket belongs to the
// namespace it was created in, whichever thread uses it later.
func (n *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := InNetNS(n.NetNS(), func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// Listen listens on addr inside the node's network namespace.
func (n *Node) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := InNetNS(n.NetNS(), func() error {
		var lc net.ListenConfig
		var err error
		l, err = lc.Listen(ctx, network, addr)
		return err
	})
	return l, err
}

// InNetNS runs f on a thread that has entered the network namespace at path. The
// thread goes back to its namespace afterwards, or, if that fails, is never reused.
func InNetNS(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening this thread's network namespace: %w", err)
			return
		}
		defer func() { _ = unix.Close(orig) }()
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening network namespace %s: %w", path, err)
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		_ = unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		ferr := f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the goroutine ends locked and the runtime retires the thread
		errc <- ferr
	}()
	return <-errc
}
