package fetch

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// What a hostile or broken server can make fetch install: each test serves one over
// real HTTP (httptest) and checks that nothing but the whole, announced file is ever
// installed, that refusals are permanent (one request, not five) and that the error
// says what to do.

// counter counts the requests a handler gets, by path.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[r.Method+" "+r.URL.Path]++
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// noFile checks that neither the destination nor a part larger than max is left.
func noFile(t *testing.T, dest string) {
	t.Helper()
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s was installed: %v", dest, err)
	}
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q lacks %q", err, p)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

func TestRefusesARedirectFromHTTPSToHTTP(t *testing.T) {
	data, sum := payload(4096)
	plain := httptest.NewServer(&server{data: data})
	defer plain.Close()
	var c counter
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		http.Redirect(w, r, plain.URL+"/m.rkllm", http.StatusFound)
	}))
	defer secure.Close()
	o := opts(t, secure.URL+"/m.rkllm")
	o.Client = secure.Client()
	wantErr(t, run(t, o), "from https to plain http", "--allow-insecure-redirect")
	noFile(t, o.Dest)
	if n := c.get("GET /m.rkllm"); n != 1 {
		t.Errorf("%d GETs: the refusal was retried", n)
	}
	// The flag allows it.
	o.AllowInsecureRedirect, o.SHA256 = true, sum
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
}

func TestRedirectsThatCannotWorkArePermanent(t *testing.T) {
	var c counter
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		switch {
		case r.URL.Path == "/file":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		case r.URL.Path == "/ftp":
			http.Redirect(w, r, "ftp://example.invalid/m.rkllm", http.StatusMovedPermanently)
		case r.URL.Path == "/loop-a":
			http.Redirect(w, r, "/loop-b", http.StatusFound)
		case r.URL.Path == "/loop-b":
			http.Redirect(w, r, "/loop-a", http.StatusTemporaryRedirect)
		case strings.HasPrefix(r.URL.Path, "/chain/"):
			n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/chain/"))
			http.Redirect(w, r, fmt.Sprintf("/chain/%d", n+1), http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer ts.Close()
	for _, tt := range []struct {
		path string
		want []string
	}{
		{"/file", []string{"only http and https redirects", "file:///etc/passwd"}},
		{"/ftp", []string{"only http and https redirects"}},
		{"/loop-a", []string{"redirect loop"}},
		{"/chain/0", []string{"more than 10 redirects"}},
	} {
		t.Run(tt.path, func(t *testing.T) {
			o := opts(t, ts.URL+tt.path)
			wantErr(t, run(t, o), tt.want...)
			noFile(t, o.Dest)
			if n := c.get("GET " + tt.path); n != 1 {
				t.Errorf("%d GETs of %s: the refusal was retried", n, tt.path)
			}
		})
	}
}

// closeDelimited answers with no Content-Length and no chunking: the body ends when
// the connection closes, after n bytes of data.
func closeDelimited(data []byte, n int, c *counter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer func() { _ = conn.Close() }()
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n\r\n")
		_, _ = brw.Write(data[:n])
		_ = brw.Flush()
	})
}

func TestACloseDelimitedBodyIsNeverTakenOnTrust(t *testing.T) {
	data, sum := payload(64 << 10)
	var c counter
	cut := httptest.NewServer(closeDelimited(data, len(data)/2, &c))
	defer cut.Close()
	o := opts(t, cut.URL+"/m.rkllm")
	wantErr(t, run(t, o), "no Content-Length", "give --sha256")
	noFile(t, o.Dest)
	if n := c.get("GET /m.rkllm"); n != 1 {
		t.Errorf("%d GETs: the refusal was retried", n)
	}
	// With the checksum, the cut body is caught by it.
	o.SHA256 = sum
	if err := run(t, o); !errors.Is(err, ErrChecksum) {
		t.Fatalf("error %v, want a checksum mismatch", err)
	}
	noFile(t, o.Dest)
	// And a whole one is installed.
	whole := httptest.NewServer(closeDelimited(data, len(data), &c))
	defer whole.Close()
	o.URL = whole.URL + "/m.rkllm"
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
}

// TestACutChunkedBodyIsResumed: a chunked body (no Content-Length) whose connection
// drops is an error, never a finished file, and the next attempt resumes it.
func TestACutChunkedBodyIsResumed(t *testing.T) {
	data, _ := payload(64 << 10)
	var c counter
	var ranges []string
	var mu sync.Mutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		first := len(ranges) == 1
		mu.Unlock()
		if first {
			_, _ = w.Write(data[:len(data)/2])
			_ = http.NewResponseController(w).Flush() // chunked: no Content-Length
			panic(http.ErrAbortHandler)
		}
		(&server{data: data}).ServeHTTP(w, r)
	}))
	defer ts.Close()
	o := opts(t, ts.URL+"/m.rkllm")
	o.Attempts = 1
	wantErr(t, run(t, o), "unexpected EOF")
	noFile(t, o.Dest)
	o.Attempts = 5
	if err := run(t, o); err != nil {
		t.Fatal(err)
	}
	checkFile(t, o.Dest, data)
	if want := "bytes=" + strconv.Itoa(len(data)/2) + "-"; ranges[1] != want {
		t.Errorf("second GET asked Range %q, want %q", ranges[1], want)
	}
}

func TestMaxSize(t *testing.T) {
	var c counter
	endless := make([]byte, 32<<10)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		switch r.URL.Path {
		case "/announced":
			w.Header().Set("Content-Length", strconv.Itoa(1<<30))
			w.WriteHeader(http.StatusOK)
		case "/endless":
			for r.Context().Err() == nil {
				if _, err := w.Write(endless); err != nil {
					return
				}
			}
		case "/range":
			w.Header().Set("Content-Range", "bytes 100-199/"+strconv.Itoa(1<<30))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(endless[:100])
		}
	}))
	defer ts.Close()
	for _, path := range []string{"/announced", "/endless", "/range"} {
		t.Run(path, func(t *testing.T) {
			o := opts(t, ts.URL+path)
			o.MaxSize = 1 << 20
			if path == "/range" {
				if err := os.MkdirAll(filepath.Dir(o.Dest), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(o.Dest+".part", endless[:100], 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wantErr(t, run(t, o), "--max-size 1048576")
			noFile(t, o.Dest)
			if st, err := os.Stat(o.Dest + ".part"); err == nil && st.Size() > o.MaxSize {
				t.Errorf("the part grew to %d bytes, over --max-size", st.Size())
			}
			if n := c.get("GET " + path); n != 1 {
				t.Errorf("%d GETs: the refusal was retried", n)
			}
		})
	}
}

// TestRangeAnswersAreChecked resumes a half-downloaded file from servers whose 206
// answers do not fit the request or the file; each is refused, the part never grows
// past the file's size, and the next (sane) answer finishes the file correctly.
func TestRangeAnswersAreChecked(t *testing.T) {
	data, sum := payload(64 << 10)
	size, half := len(data), len(data)/2
	for _, tt := range []struct {
		name   string
		header string // Content-Range of the broken answer
		body   []byte
		want   string
	}{
		{"longer than its Content-Range", fmt.Sprintf("bytes %d-%d/%d", half, half+99, size), data[half:], "more than the 100 bytes it announced"},
		{"past the end of the file", fmt.Sprintf("bytes %d-%d/%d", half, size+999, size), append(append([]byte(nil), data[half:]...), make([]byte, 1000)...), "ends past the end of the file"},
		{"at the wrong place", fmt.Sprintf("bytes %d-%d/%d", half-10, size-1, size), data[half-10:], "starts at the wrong place"},
		{"size unknown", fmt.Sprintf("bytes %d-%d/*", half, size-1), data[half:], "size is not given"},
		{"not a range", "pages 1-2/3", data[half:], "not a byte range"},
		{"size changed", fmt.Sprintf("bytes %d-%d/%d", half, size+half-1, size+half), append(append([]byte(nil), data[half:]...), data[:half]...), "changed on the server"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := opts(t, "")
			var n atomic.Int32
			var tooBig atomic.Int64
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if st, err := os.Stat(o.Dest + ".part"); err == nil && st.Size() > int64(size) {
					tooBig.Store(st.Size())
				}
				switch n.Add(1) {
				case 1: // the whole file announced, cut after half
					w.Header().Set("Content-Length", strconv.Itoa(size))
					_, _ = w.Write(data[:half])
					_ = http.NewResponseController(w).Flush()
					panic(http.ErrAbortHandler)
				case 2: // the broken resume (chunked, so only Content-Range describes it)
					w.Header().Set("Content-Range", tt.header)
					w.WriteHeader(http.StatusPartialContent)
					_, _ = w.Write(tt.body)
				default:
					(&server{data: data}).ServeHTTP(w, r)
				}
			}))
			defer ts.Close()
			o.URL = ts.URL + "/m.rkllm"
			o.Attempts = 2
			wantErr(t, run(t, o), tt.want)
			noFile(t, o.Dest)
			o.Attempts, o.SHA256 = 1, sum
			if err := run(t, o); err != nil {
				t.Fatal(err)
			}
			checkFile(t, o.Dest, data)
			if b := tooBig.Load(); b != 0 {
				t.Errorf("the part grew to %d bytes, past the file's %d", b, size)
			}
		})
	}
}

func TestRefusesACompressedBody(t *testing.T) {
	var c counter
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.add(r)
		if got := r.Header.Get("Accept-Encoding"); got != "identity" {
			t.Errorf("Accept-Encoding %q, want identity", got)
		}
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write([]byte("\x1f\x8b compressed"))
	}))
	defer ts.Close()
	o := opts(t, ts.URL+"/m.rkllm")
	wantErr(t, run(t, o), "Content-Encoding gzip")
	noFile(t, o.Dest)
	if n := c.get("GET /m.rkllm"); n != 1 {
		t.Errorf("%d GETs: the refusal was retried", n)
	}
}

// waitLog is a logger that closes waiting when a fetch logs that it waits for the
// lock.
func waitLog(waiting chan struct{}) logr.Logger {
	var once sync.Once
	return funcr.New(func(_, args string) {
		if strings.Contains(args, "waiting for its result") {
			once.Do(func() { close(waiting) })
		}
	}, funcr.Options{})
}

// TestOneWriterPerDestination: two fetches of one destination (a node's shared cache);
// the second waits for the first's lock, then finds the installed file and downloads
// nothing.
func TestOneWriterPerDestination(t *testing.T) {
	for _, withSum := range []bool{true, false} {
		t.Run(fmt.Sprintf("sha256=%v", withSum), func(t *testing.T) {
			data, sum := payload(256 << 10)
			var c counter
			firstGET, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			unblock := sync.OnceFunc(func() { close(release) })
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c.add(r)
				if r.Method == http.MethodGet {
					once.Do(func() { close(firstGET) })
					<-release // the writer holds the lock until the second fetch waits for it
				}
				http.ServeContent(w, r, "m.rkllm", time.Unix(0, 0), bytes.NewReader(data))
			}))
			defer ts.Close()
			defer unblock() // before Close waits for the handlers
			first := opts(t, ts.URL+"/m.rkllm")
			if withSum {
				first.SHA256 = sum
			}
			second := first
			waiting := make(chan struct{})
			second.Log, second.LockRetry = waitLog(waiting), time.Millisecond
			errs := make(chan error, 2)
			go func() { errs <- run(t, first) }()
			await(t, firstGET, "the first fetch's GET") // it holds the lock from before its GET
			go func() { errs <- run(t, second) }()
			await(t, waiting, "the second fetch waiting for the lock")
			unblock()
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			checkFile(t, first.Dest, data)
			if n := c.get("GET /m.rkllm"); n != 1 {
				t.Errorf("%d GETs, want 1: the second fetch downloaded too", n)
			}
		})
	}
}

// TestAWaiterTakesOverAFailedWrite: when the writer fails, the fetch that waited for it
// downloads itself, resuming the part the writer left.
func TestAWaiterTakesOverAFailedWrite(t *testing.T) {
	data, sum := payload(256 << 10)
	firstGET, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	var n atomic.Int32
	var resumedAt atomic.Value
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			close(firstGET)
			<-release
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data[:len(data)/2])
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		resumedAt.Store(r.Header.Get("Range"))
		http.ServeContent(w, r, "m.rkllm", time.Unix(0, 0), bytes.NewReader(data))
	}))
	defer ts.Close()
	defer unblock()
	first := opts(t, ts.URL+"/m.rkllm")
	first.SHA256, first.Attempts = sum, 1
	second := first
	second.Attempts = 5
	waiting := make(chan struct{})
	second.Log, second.LockRetry = waitLog(waiting), time.Millisecond
	errs := make(chan error, 1)
	go func() { errs <- run(t, first) }()
	await(t, firstGET, "the writer's GET")
	go func() { errs <- run(t, second) }()
	await(t, waiting, "the second fetch waiting for the lock")
	unblock()
	if err := <-errs; err == nil {
		t.Fatal("the writer did not fail")
	}
	if err := <-errs; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
	checkFile(t, first.Dest, data)
	if got, want := resumedAt.Load(), "bytes="+strconv.Itoa(len(data)/2)+"-"; got != want {
		t.Errorf("the waiter asked Range %v, want %q (resuming the writer's part)", got, want)
	}
}

// waitTimeout bounds a wait for an event that comes at once when the code works.
const waitTimeout = 30 * time.Second

func await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("waited %s for %s", waitTimeout, what)
	}
}
