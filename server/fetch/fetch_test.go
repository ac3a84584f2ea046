package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func payload(n int) ([]byte, string) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	_, _ = r.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// server serves data with Range support; fail decides, per request number (from 1),
// whether to answer with a status instead (0: serve) or to cut the body after half.
type server struct {
	data []byte
	fail func(n int, r *http.Request) (status int, cut bool)

	mu       sync.Mutex
	requests []*http.Request
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r)
	n := len(s.requests)
	s.mu.Unlock()
	if s.fail != nil {
		status, cut := s.fail(n, r)
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		if cut {
			w.Header().Set("Content-Length", strconv.Itoa(len(s.data)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(s.data[:len(s.data)/2])
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler) // the connection drops mid-body
		}
	}
	http.ServeContent(w, r, "model.rkllm", time.Unix(0, 0), bytes.NewReader(s.data))
}

func (s *server) gets() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*http.Request
	for _, r := range s.requests {
		if r.Method == http.MethodGet {
			out = append(out, r)
		}
	}
	return out
}

func opts(t *testing.T, url string) Options {
	return Options{URL: url, Dest: filepath.Join(t.TempDir(), "models", "m.rkllm"), BackoffMin: time.Millisecond, BackoffMax: 2 * time.Millisecond, Log: logr.Discard()}
}

func run(t *testing.T, o Options) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := Fetch(ctx, o)
	return err
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s has %d bytes that differ from the %d served", path, len(got), len(want))
	}
	if _, err := os.Stat(path + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial file left behind: %v", err)
	}
}

func TestResumesAnInterruptedDownload(t *testing.T) {
	data, sum := payload(1 << 20)
	s := &server{data: data, fail: func(n int, _ *http.Request) (int, bool) { return 0, n == 1 }}
	ts := httptest.NewServer(s)
	defer ts.Close()
	o := opts(t, ts.URL+"/m.rkllm")
	o.SHA256 = sum
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
	gets := s.gets()
	if len(gets) != 2 {
		t.Fatalf("%d GETs, want 2", len(gets))
	}
	if got, want := gets[1].Header.Get("Range"), "bytes=524288-"; got != want {
		t.Errorf("second GET asked Range %q, want %q", got, want)
	}
}

func TestRetriesTransientErrors(t *testing.T) {
	data, sum := payload(4096)
	s := &server{data: data, fail: func(n int, _ *http.Request) (int, bool) {
		if n <= 2 {
			return http.StatusServiceUnavailable, false
		}
		return 0, false
	}}
	ts := httptest.NewServer(s)
	defer ts.Close()
	o := opts(t, ts.URL)
	o.SHA256 = strings.ToUpper(sum)
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
	if n := len(s.gets()); n != 3 {
		t.Errorf("%d GETs, want 3", n)
	}
}

func TestBadChecksum(t *testing.T) {
	data, _ := payload(4096)
	ts := httptest.NewServer(&server{data: data})
	defer ts.Close()
	o := opts(t, ts.URL)
	o.SHA256 = strings.Repeat("ab", 32)
	err := run(t, o)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "--sha256 is "+o.SHA256) {
		t.Fatalf("error %v, want a checksum mismatch naming the expected sum", err)
	}
	for _, p := range []string{o.Dest, o.Dest + ".part"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a failed checksum", p)
		}
	}
}

func TestNotFoundIsNotRetried(t *testing.T) {
	s := &server{fail: func(int, *http.Request) (int, bool) { return http.StatusNotFound, false }}
	ts := httptest.NewServer(s)
	defer ts.Close()
	o := opts(t, ts.URL+"/missing.rkllm")
	err := run(t, o)
	if err == nil || !strings.Contains(err.Error(), "404 Not Found") || !strings.Contains(err.Error(), "check the URL") {
		t.Fatalf("error %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	if n := len(s.gets()); n != 1 {
		t.Errorf("%d GETs for a 404, want 1", n)
	}
}

func TestSkipsAMatchingDestination(t *testing.T) {
	data, sum := payload(4096)
	s := &server{data: data}
	ts := httptest.NewServer(s)
	defer ts.Close()
	o := opts(t, ts.URL)
	o.SHA256 = sum
	if err := os.MkdirAll(filepath.Dir(o.Dest), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.Dest, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	if n := len(s.gets()); n != 0 {
		t.Errorf("%d GETs for a file already in place, want 0", n)
	}
	// Without a checksum, a destination of the server's size is kept too.
	o.SHA256 = ""
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	if n := len(s.gets()); n != 0 {
		t.Errorf("%d GETs for a file of the right size, want 0", n)
	}
}

func TestStartsOverWhenTheServerIgnoresRange(t *testing.T) {
	data, sum := payload(8192)
	s := &server{data: data}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		s.ServeHTTP(w, r)
	}))
	defer ts.Close()
	o := opts(t, ts.URL)
	o.SHA256 = sum
	if err := os.MkdirAll(filepath.Dir(o.Dest), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.Dest+".part", []byte("stale bytes of another file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
}

func TestBadArguments(t *testing.T) {
	for _, tt := range []struct {
		o    Options
		want string
	}{
		{Options{URL: "ftp://x/y", Dest: "/tmp/x"}, "http:// or https://"},
		{Options{URL: "http://x/y"}, "--dest is required"},
		{Options{URL: "http://x/y", Dest: "/tmp/x", SHA256: "abc"}, "64 hex digits"},
	} {
		if _, err := Fetch(context.Background(), tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Fetch(%+v) = %v, want %q", tt.o, err, tt.want)
		}
	}
}
