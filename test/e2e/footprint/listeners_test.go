package footprint

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
)

func TestListenersNamesTheHolder(t *testing.T) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	// A connected socket on another port is not a listener.
	var d net.Dialer
	c, err := d.DialContext(context.Background(), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	clientPort := c.LocalAddr().(*net.TCPAddr).Port

	got, err := Listeners([]int{port, clientPort})
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	if _, ok := got[port][self]; !ok || len(got[port]) != 1 {
		t.Errorf("listeners on %d: %v; want this process (%s) alone", port, got[port], self)
	}
	if len(got[clientPort]) != 0 {
		t.Errorf("a client's port %d is listed as listened on by %v", clientPort, got[clientPort])
	}

	_ = l.Close()
	if got, err := Listeners([]int{port}); err != nil || len(got) != 0 {
		t.Errorf("after the listener closed: %v, %v; want nothing", got, err)
	}
}
