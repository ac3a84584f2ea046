package connlimit

import (
	"os"
	"testing"
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
