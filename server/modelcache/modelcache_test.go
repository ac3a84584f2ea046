package modelcache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/npu"
	"github.com/rkllm-operator/rkllm-operator/server/fetch"
	"github.com/rkllm-operator/rkllm-operator/server/modelcache"
)

const fetchTimeout = 30 * time.Second

// origin serves files by path and counts the GETs of each.
type origin struct {
	files map[string][]byte
	gets  sync.Map // path -> *atomic.Int32
	// hold, when set, is waited on before a GET body is sent.
	hold chan struct{}
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, ok := o.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method == http.MethodGet {
		n, _ := o.gets.LoadOrStore(r.URL.Path, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if o.hold != nil {
			<-o.hold
		}
	}
	http.ServeContent(w, r, "f", time.Unix(0, 0), bytes.NewReader(data))
}

func (o *origin) count(path string) int32 {
	n, ok := o.gets.Load(path)
	if !ok {
		return 0
	}
	return n.(*atomic.Int32).Load()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func options(t *testing.T, url, dest, dir string) modelcache.Options {
	return modelcache.Options{
		Fetch: fetch.Options{URL: url, Dest: dest, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond, LockRetry: 10 * time.Millisecond, Log: testr.New(t)},
		Dir:   dir, Log: testr.New(t),
	}
}

func run(t *testing.T, o modelcache.Options) modelcache.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	out, err := modelcache.Fetch(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestSecondPodHitsTheCache: the first pod of a node downloads into the cache, the
// second (its own /models folder) finds the file there and downloads nothing; both see
// the file at their destination; a sha256 is checked on the hit too.
func TestSecondPodHitsTheCache(t *testing.T) {
	model := bytes.Repeat([]byte("weights"), 1000)
	o := &origin{files: map[string][]byte{"/m.rkllm": model}}
	srv := httptest.NewServer(o)
	defer srv.Close()
	cache := t.TempDir()
	for i, want := range []string{modelcache.ResultDownloaded, modelcache.ResultCacheHit, modelcache.ResultCacheHit} {
		dest := filepath.Join(t.TempDir(), "models", "abc-m.rkllm")
		opts := options(t, srv.URL+"/m.rkllm", dest, cache)
		if i == 2 {
			opts.Fetch.SHA256 = sum(model)
		}
		out := run(t, opts)
		if out.Result != want || !out.NodeCache || out.File != filepath.Join(cache, "abc-m.rkllm") || out.Bytes != int64(len(model)) {
			t.Errorf("pod %d: %+v, want %s from the node cache", i, out, want)
		}
		if target, err := os.Readlink(dest); err != nil || target != out.File {
			t.Errorf("pod %d: %s links to %q (%v), want the cached file", i, dest, target, err)
		}
		if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, model) {
			t.Errorf("pod %d: reading %s: %v", i, dest, err)
		}
	}
	if n := o.count("/m.rkllm"); n != 1 {
		t.Errorf("%d GETs of the model for three pods on one node, want 1", n)
	}

	// A cached file that no longer matches its sha256 is downloaded again.
	if err := os.WriteFile(filepath.Join(cache, "abc-m.rkllm"), []byte("rotten"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := options(t, srv.URL+"/m.rkllm", filepath.Join(t.TempDir(), "abc-m.rkllm"), cache)
	opts.Fetch.SHA256 = sum(model)
	if out := run(t, opts); out.Result != modelcache.ResultDownloaded {
		t.Errorf("a corrupted cached file: %+v, want a download", out)
	}
}

// TestOneWriterPerFile: pods of one node fetching the same file at once download it
// once; the others wait for the lock and hit the cache.
func TestOneWriterPerFile(t *testing.T) {
	model := bytes.Repeat([]byte("w"), 1<<16)
	o := &origin{files: map[string][]byte{"/m.rkllm": model}, hold: make(chan struct{})}
	srv := httptest.NewServer(o)
	defer srv.Close()
	cache := t.TempDir()
	const pods = 4
	results := make(chan modelcache.Outcome, pods)
	errs := make(chan error, pods)
	for range pods {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
			defer cancel()
			out, err := modelcache.Fetch(ctx, options(t, srv.URL+"/m.rkllm", filepath.Join(t.TempDir(), "m.rkllm"), cache))
			results <- out
			errs <- err
		}()
	}
	// One GET is held by the origin: the lock keeps every other pod from starting one.
	deadline := time.After(fetchTimeout)
	for o.count("/m.rkllm") == 0 {
		select {
		case <-deadline:
			t.Fatal("no download started")
		case <-time.After(time.Millisecond):
		}
	}
	close(o.hold)
	var hits int
	for range pods {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if (<-results).Result == modelcache.ResultCacheHit {
			hits++
		}
	}
	if n := o.count("/m.rkllm"); n != 1 || hits != pods-1 {
		t.Errorf("%d GETs and %d cache hits for %d concurrent pods, want 1 and %d", n, hits, pods, pods-1)
	}
}

// TestLeastRecentlyUsedEviction: past the size limit the least recently used files go,
// never the one just fetched and never one a server has pinned; a hit counts as a use.
func TestLeastRecentlyUsedEviction(t *testing.T) {
	files := map[string][]byte{}
	for _, n := range []string{"/a", "/b", "/c", "/d"} {
		files[n] = bytes.Repeat([]byte(n[1:]), 100)
	}
	o := &origin{files: files}
	srv := httptest.NewServer(o)
	defer srv.Close()
	cache := t.TempDir()
	base := time.Now().Add(-time.Hour)
	fetchOne := func(name string, maxBytes int64) modelcache.Outcome {
		opts := options(t, srv.URL+"/"+name, filepath.Join(t.TempDir(), name), cache)
		opts.MaxBytes = maxBytes
		return run(t, opts)
	}
	for i, n := range []string{"a", "b", "c"} {
		fetchOne(n, 0)
		// Deterministic use times, a before b before c.
		at := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(filepath.Join(cache, n), at, at); err != nil {
			t.Fatal(err)
		}
	}
	// a is used again: b is now the least recently used.
	if out := fetchOne("a", 0); out.Result != modelcache.ResultCacheHit {
		t.Fatalf("a again: %+v", out)
	}
	// b is pinned by a running server: c goes instead.
	pin, err := modelcache.Pin(filepath.Join(cache, "b"))
	if err != nil {
		t.Fatal(err)
	}
	out := fetchOne("d", 300)
	if !slices.Equal(out.Evicted, []string{"c"}) {
		t.Errorf("evicted %v for d with b pinned, want [c]", out.Evicted)
	}
	if err := pin.Close(); err != nil {
		t.Fatal(err)
	}
	// Unpinned, b is the oldest.
	out = fetchOne("c", 300)
	if !slices.Equal(out.Evicted, []string{"b"}) || out.Result != modelcache.ResultDownloaded {
		t.Errorf("c again: %+v, want b evicted", out)
	}
	left, _ := filepath.Glob(filepath.Join(cache, "[a-d]"))
	if len(left) != 3 {
		t.Errorf("cache holds %v, want three files", left)
	}
}

// TestWithoutCache: without a cache folder (the node's plugin has none, or the model asks
// for the pod's own volume) the file is downloaded to the destination itself.
func TestWithoutCache(t *testing.T) {
	o := &origin{files: map[string][]byte{"/m": []byte("m")}}
	srv := httptest.NewServer(o)
	defer srv.Close()
	dest := filepath.Join(t.TempDir(), "m")
	for _, dir := range []string{"", filepath.Join(t.TempDir(), "not-mounted")} {
		out := run(t, options(t, srv.URL+"/m", dest, dir))
		if out.NodeCache || out.File != dest {
			t.Errorf("cache %q: %+v, want the destination itself", dir, out)
		}
		if fi, err := os.Lstat(dest); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("cache %q: %s is not a regular file: %v", dir, dest, err)
		}
	}
}

// The variable names are the device plugin's (the contract in docs/design.md).
func TestEnvMatchesThePlugin(t *testing.T) {
	if modelcache.EnvDir != npu.EnvModelCache || modelcache.EnvMaxBytes != npu.EnvModelCacheMaxBytes {
		t.Errorf("modelcache reads %s and %s; the plugin sets %s and %s", modelcache.EnvDir, modelcache.EnvMaxBytes, npu.EnvModelCache, npu.EnvModelCacheMaxBytes)
	}
}
