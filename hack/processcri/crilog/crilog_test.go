package crilog

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"k8s.io/cri-client/pkg/logs"
)

// readBack reads a log file with the kubelet's own reader (k8s.io/cri-client/pkg/logs),
// as `kubectl logs` does.
func readBack(t *testing.T, path string) (string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := logs.ReadLogs(t.Context(), path, "", &logs.LogOptions{}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String()
}

func TestCopyIsReadBackByTheKubeletsReader(t *testing.T) {
	long := strings.Repeat("x", 2*MaxLine+10)
	for _, tc := range []struct {
		name, in string
		chunk    int
	}{
		{"lines", "one\ntwo\n\nthree\n", 0},
		{"no final newline", "one\ntwo", 0},
		{"lines split across reads", "hello world\nsecond line\n", 3},
		{"a line longer than an entry", long + "\nafter\n", 0},
		{"a long unterminated line", long, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "0.log")
			l, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			var r io.Reader = strings.NewReader(tc.in)
			if tc.chunk > 0 {
				r = &chunked{data: []byte(tc.in), n: tc.chunk}
			}
			if err := l.Copy(Stdout, r); err != nil {
				t.Fatal(err)
			}
			if err := l.Copy(Stderr, iotest.HalfReader(strings.NewReader("an error\n"))); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			stdout, stderr := readBack(t, path)
			want := tc.in
			if !strings.HasSuffix(want, "\n") {
				// The reader ends a partial last line with nothing; the bytes are all there.
				want = strings.TrimSuffix(stdout, "\n")
				if want != tc.in {
					t.Fatalf("stdout read back %d bytes, want the %d written", len(want), len(tc.in))
				}
			} else if stdout != want {
				t.Errorf("stdout read back %q, want %q", trim(stdout), trim(want))
			}
			if stderr != "an error\n" {
				t.Errorf("stderr read back %q, want %q", stderr, "an error\n")
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n") {
				if f := strings.SplitN(line, " ", 4); len(f) < 3 || (f[2] != "F" && f[2] != "P") || len(line) > MaxLine+64 {
					t.Fatalf("entry %q is not in the CRI format or is longer than an entry may be", trim(line))
				}
			}
		})
	}
}

func TestReopenStartsANewFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	if err := l.Copy(Stdout, strings.NewReader("before\n")); err != nil {
		t.Fatal(err)
	}
	// The kubelet's rotation: rename, then ask the runtime to reopen.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := l.Copy(Stdout, strings.NewReader("after\n")); err != nil {
		t.Fatal(err)
	}
	if out, _ := readBack(t, path+".1"); out != "before\n" {
		t.Errorf("rotated file has %q, want %q", out, "before\n")
	}
	if out, _ := readBack(t, path); out != "after\n" {
		t.Errorf("new file has %q, want %q", out, "after\n")
	}
}

// chunked returns its data n bytes a read.
type chunked struct {
	data []byte
	n    int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(c.n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func trim(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
