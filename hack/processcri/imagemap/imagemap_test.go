package imagemap

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeMap(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "server"), []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestResolve(t *testing.T) {
	file := writeMap(t, `images:
- image: ghcr.io/x/server
  files: {/usr/local/bin/server: server}
  entrypoint: [/usr/local/bin/server]
  user: "65532:65532"
- image: ghcr.io/x/server:debug
  files: {/usr/local/bin/server: server}
- image: localhost:5000/tool
`)
	m, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, want string }{
		{"ghcr.io/x/server", "ghcr.io/x/server"},
		{"ghcr.io/x/server:1.0", "ghcr.io/x/server"},
		{"ghcr.io/x/server@sha256:abcd", "ghcr.io/x/server"},
		{"ghcr.io/x/server:1.0@sha256:abcd", "ghcr.io/x/server"},
		{"ghcr.io/x/server:debug", "ghcr.io/x/server:debug"},
		{"localhost:5000/tool:v2", "localhost:5000/tool"},
	} {
		img, err := m.Resolve(tc.ref)
		if err != nil || img.Image != tc.want {
			t.Errorf("Resolve(%q) = %v, %v; want the entry %q", tc.ref, img, err, tc.want)
		}
	}
	img, _ := m.Resolve("ghcr.io/x/server:2")
	if got := img.Files["/usr/local/bin/server"]; got != filepath.Join(filepath.Dir(file), "server") {
		t.Errorf("relative file resolved to %q, want it next to the map", got)
	}
	if uid, gid, err := img.UID(); err != nil || *uid != 65532 || *gid != 65532 {
		t.Errorf("UID = %v %v %v, want 65532 65532", uid, gid, err)
	}
	if img.Size() <= 1 {
		t.Errorf("Size = %d, want the file's bytes", img.Size())
	}

	_, err = m.Resolve("ghcr.io/x/other:1")
	if !errors.Is(err, ErrNotMapped) || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), "ghcr.io/x/other:1") {
		t.Errorf("an unmapped image gave %v; want ErrNotMapped naming the map file and the image", err)
	}
}

func TestIDChangesWithTheFiles(t *testing.T) {
	file := writeMap(t, "images:\n- image: a\n  files: {/bin/a: server}\n")
	m, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := m.Resolve("a")
	before, err := img.ID()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(file), "server"), []byte("rebuilt binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	after, _ := img.ID()
	if before == after || !strings.HasPrefix(after, "sha256:") {
		t.Errorf("ID before and after a rebuild: %s, %s; want two sha256 digests", before, after)
	}
}

func TestLoadRefusesBadEntries(t *testing.T) {
	for name, body := range map[string]string{
		"missing file":  "images:\n- image: a\n  files: {/bin/a: nothere}\n",
		"relative path": "images:\n- image: a\n  files: {bin/a: server}\n",
		"unclean path":  "images:\n- image: a\n  files: {/bin/../a: server}\n",
		"bad user":      "images:\n- image: a\n  user: nobody\n",
		"bad env":       "images:\n- image: a\n  env: [NOEQUALS]\n",
		"misspelt key":  "images:\n- image: a\n  entrypiont: [x]\n",
		"no image":      "images:\n- files: {/bin/a: server}\n",
	} {
		if _, err := Load(writeMap(t, body)); err == nil {
			t.Errorf("%s: Load accepted\n%s", name, body)
		}
	}
}
