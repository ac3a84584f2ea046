package filewatch_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/rkllm-operator/rkllm-operator/server/filewatch"
	"github.com/rkllm-operator/rkllm-operator/server/filewatch/filewatchtest"
)

// changeTimeout bounds the wait for a change that file events report at once; the
// periodic read is an hour away, so only events can pass these tests.
const changeTimeout = 30 * time.Second

func watch(t *testing.T, path string) (<-chan string, string) {
	t.Helper()
	changes := make(chan string, 16)
	w, first, err := filewatch.New(path, filewatch.Options{PollInterval: time.Hour, Log: testr.New(t)}, func(b []byte) { changes <- string(b) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	return changes, string(first)
}

func next(t *testing.T, changes <-chan string, want string) {
	t.Helper()
	timeout := time.After(changeTimeout)
	for {
		select {
		case got := <-changes:
			if got == want {
				return
			}
			// An intermediate content is allowed only on the way to want.
			t.Logf("change to %q while waiting for %q", got, want)
		case <-timeout:
			t.Fatalf("no change to %q within %s", want, changeTimeout)
		}
	}
}

// none checks that nothing was reported, after a change that must be reported has
// been: the watcher reports in order, so anything unwanted would have come first.
func none(t *testing.T, changes <-chan string, then func(), want string) {
	t.Helper()
	then()
	select {
	case got := <-changes:
		if got != want {
			t.Fatalf("reported %q before %q", got, want)
		}
	case <-time.After(changeTimeout):
		t.Fatalf("no change to %q within %s", want, changeTimeout)
	}
}

// TestKubeletVolumeSwaps: files in a Secret or ConfigMap volume, nested under a folder
// (api-key/api-key, as the operator projects the key) and at the top (server.json),
// are reported after each swap of ..data, and only when their bytes change.
func TestKubeletVolumeSwaps(t *testing.T) {
	for _, rel := range []string{filepath.Join("api-key", "api-key"), "server.json"} {
		t.Run(rel, func(t *testing.T) {
			vol := filewatchtest.AtomicDir{Dir: t.TempDir()}
			other := "other.json"
			if err := vol.Write(map[string][]byte{rel: []byte("one"), other: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			changes, first := watch(t, filepath.Join(vol.Dir, rel))
			if first != "one" {
				t.Fatalf("first content %q, want one", first)
			}
			for _, v := range []string{"two", "three"} {
				if err := vol.Write(map[string][]byte{rel: []byte(v), other: []byte("x")}); err != nil {
					t.Fatal(err)
				}
				next(t, changes, v)
			}
			// Another file of the volume changes, ours does not: nothing is reported
			// before the next change of ours.
			none(t, changes, func() {
				if err := vol.Write(map[string][]byte{rel: []byte("three"), other: []byte("y")}); err != nil {
					t.Fatal(err)
				}
				if err := vol.Write(map[string][]byte{rel: []byte("four"), other: []byte("y")}); err != nil {
					t.Fatal(err)
				}
			}, "four")
		})
	}
}

// TestPlainFile: a file written in place (a reader may see it half-written: callers
// validate what they get), replaced by a rename (as editors do), removed and created
// again.
func TestPlainFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.WriteFile(path, []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	changes, _ := watch(t, path)
	if err := os.WriteFile(path, []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	next(t, changes, "b")
	tmp := filepath.Join(dir, "key.tmp")
	if err := os.WriteFile(tmp, []byte("c"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	next(t, changes, "c")
	none(t, changes, func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(tmp, []byte("d"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}, "d")
}

// TestSymlinkedFolderSwap: the file's folder is itself a symlink that is swapped (as a
// deployment tool may do with releases/current).
func TestSymlinkedFolderSwap(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"r1", "r2"} {
		if err := os.MkdirAll(filepath.Join(root, v), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, v, "key"), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("r1", filepath.Join(root, "current")); err != nil {
		t.Fatal(err)
	}
	changes, first := watch(t, filepath.Join(root, "current", "key"))
	if first != "r1" {
		t.Fatalf("first content %q", first)
	}
	if err := os.Symlink("r2", filepath.Join(root, "next")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, "next"), filepath.Join(root, "current")); err != nil {
		t.Fatal(err)
	}
	next(t, changes, "r2")
	// The old release changing does not matter any more; the new one does.
	none(t, changes, func() {
		if err := os.WriteFile(filepath.Join(root, "r1", "key"), []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "r2", "key"), []byte("r2b"), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "r2b")
}

func TestMissingFileAndLimit(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := filewatch.New(filepath.Join(dir, "absent"), filewatch.Options{}, func([]byte) {}); err == nil {
		t.Error("watching a missing file: no error")
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 11), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := filewatch.New(big, filewatch.Options{MaxBytes: 10}, func([]byte) {}); err == nil {
		t.Error("a file over MaxBytes: no error")
	}
}
