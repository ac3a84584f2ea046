package connlimit

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

type counts struct{ opened, closed, rejected map[string]int }

func (c *counts) ConnOpened(string)             { c.opened["x"]++ }
func (c *counts) ConnClosed(string)             { c.closed["x"]++ }
func (c *counts) ConnRejected(_, reason string) { c.rejected[reason]++ }

func TestCapAndRelease(t *testing.T) {
	obs := &counts{map[string]int{}, map[string]int{}, map[string]int{}}
	l := New(2, 0, obs)
	if l.Acquire("unix") != nil || l.Acquire("http") != nil {
		t.Fatal("the first two connections were refused")
	}
	r := l.Acquire("unix")
	if r == nil || r.Reason != ReasonMaxConnections || l.Open() != 2 {
		t.Fatalf("third connection: %v, %d open", r, l.Open())
	}
	l.Release("unix")
	if l.Acquire("unix") != nil {
		t.Error("a released slot was not given again")
	}
	if obs.rejected[ReasonMaxConnections] != 1 || obs.opened["x"] != 3 || obs.closed["x"] != 1 {
		t.Errorf("observed %+v", obs)
	}
}

// TestDescriptorReserve: a connection that would leave fewer than the reserved file
// descriptors is refused, whatever the connection cap.
func TestDescriptorReserve(t *testing.T) {
	obs := &counts{map[string]int{}, map[string]int{}, map[string]int{}}
	l := New(0, 10, obs)
	open := 80
	l.fds = func() (int, int, error) { return open, 100, nil }
	if r := l.Acquire("unix"); r != nil {
		t.Fatalf("20 descriptors free, 10 reserved: refused: %v", r)
	}
	open = 91
	r := l.Acquire("unix")
	if r == nil || r.Reason != ReasonFileDescriptors || obs.rejected[ReasonFileDescriptors] != 1 {
		t.Fatalf("9 descriptors free, 10 reserved: %v, observed %+v", r, obs)
	}
	if r.Error() != "busy: the server is short of file descriptors (91 open, limit 100, 10 kept in reserve); retry later" {
		t.Errorf("message %q", r.Error())
	}
}

func TestOpenFDsCountsTheProcesssDescriptors(t *testing.T) {
	before, limit, err := openFDs()
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for range 5 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	after, _, err := openFDs()
	for _, f := range files {
		_ = f.Close()
	}
	if err != nil || after != before+5 || limit < after {
		t.Errorf("open descriptors %d then %d after opening 5 (limit %d): %v", before, after, limit, err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	now, _, _ := openFDs()
	if want := len(entries) - 1; now != want { // ReadDir's own descriptor is listed
		t.Errorf("openFDs = %d, /proc/self/fd lists %d", now, want)
	}
}

// TestDescriptorNumberShortCut: a connection whose descriptor number alone shows the
// reserve is gone is refused without counting the descriptors (a cost per refusal that
// does not grow with the connections held).
func TestDescriptorNumberShortCut(t *testing.T) {
	obs := &counts{map[string]int{}, map[string]int{}, map[string]int{}}
	l := New(0, 10, obs)
	l.rlimit = func() (int, error) { return 100, nil }
	counted := 0
	l.fds = func() (int, int, error) { counted++; return 50, 100, nil }
	if r := l.acquire("http", 95); r == nil || r.Reason != ReasonFileDescriptors || counted != 0 {
		t.Fatalf("descriptor 95 of 100 with 10 reserved: %v, counted %d times", r, counted)
	}
	if r := l.acquire("http", 40); r != nil || counted != 1 {
		t.Fatalf("descriptor 40 of 100 (50 open): %v, counted %d times", r, counted)
	}
}

// TestRefusedConnectionAnsweredAtOnce: a connection over the cap that sends nothing
// gets its answer and the close from the accepting goroutine itself, before Accept
// returns the next connection.
func TestRefusedConnectionAnsweredAtOnce(t *testing.T) {
	var lc net.ListenConfig
	inner, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(1, 0, nil)
	ln := l.Listener(inner, "http", func(r *Refusal) []byte { return []byte("no: " + r.Reason + "\n") })
	t.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		var d net.Dialer
		c, err := d.DialContext(context.Background(), "tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c
	}
	dial()
	held := <-accepted
	refused := dial() // sends nothing
	got, err := io.ReadAll(refused)
	if err != nil || string(got) != "no: max_connections\n" {
		t.Fatalf("refused connection read %q, %v", got, err)
	}
	_ = held.Close()
	dial()
	select {
	case <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("a connection within the cap was not accepted after the refusal")
	}
}

// TestDescriptorCountReused: far below the limit, a count of the descriptors serves
// the connections that follow (listing /proc/self/fd costs more with every connection
// held); near it, each connection is counted again.
func TestDescriptorCountReused(t *testing.T) {
	l := New(0, 10, nil)
	counted, open := 0, 50
	l.fds = func() (int, int, error) { counted++; return open, 10000, nil }
	for range 100 {
		if r := l.Acquire("http"); r != nil {
			t.Fatal(r)
		}
		open++
	}
	if counted != 1 {
		t.Errorf("100 connections far below the limit counted the descriptors %d times, want once", counted)
	}
	l = New(0, 10, nil)
	counted, open = 0, 9965
	l.fds = func() (int, int, error) { counted++; return open, 10000, nil }
	for range 5 {
		_ = l.Acquire("http")
		open++
	}
	if counted != 5 {
		t.Errorf("5 connections within 35 descriptors of the limit counted them %d times, want each time", counted)
	}
}
