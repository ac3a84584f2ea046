package auth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name, file, err string
	}{
		{"no name", "keys: [{key: abcdefghijklmnopq}]", "keys[0] has no name"},
		{"short key", "keys: [{name: a, key: short}]", "keys[0] (a): the key must be at least 16 characters"},
		{"same name", "keys: [{name: a, key: abcdefghijklmnopq}, {name: a, key: bbcdefghijklmnopq}]", `the name "a" is used twice`},
		{"same key", "keys: [{name: a, key: abcdefghijklmnopq}, {name: b, key: abcdefghijklmnopq}]", "keys[1] (b) has the same key as a"},
		{"unknown member", "keys: [{name: a, key: abcdefghijklmnopq, model: [x]}]", "not valid YAML"},
		{"not YAML", "keys: [", "not valid YAML"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
			// The message never repeats a key.
			if strings.Contains(err.Error(), "abcdefghijklmnopq") {
				t.Errorf("the error shows a key: %v", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	k, err := Parse([]byte(`keys:
- {name: all, key: all-models-key-000}
- {name: some, key: some-models-key-00, models: [chat, "qwen:1.5b"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		header, client string
		may            map[string]bool
	}{
		{"Bearer all-models-key-000", "all", map[string]bool{"chat": true, "coder": true}},
		{"Bearer some-models-key-00", "some", map[string]bool{"chat": true, "chat:latest": true, "qwen:1.5b": true, "coder": false}},
		{"Bearer some-models-key-0", "", nil},
		{"Bearer some-models-key-000", "", nil},
		{"some-models-key-00", "", nil},
		{"Basic all-models-key-000", "", nil},
		{"Bearer ", "", nil},
		{"", "", nil},
	}
	for _, tc := range cases {
		c, ok := k.Check(tc.header)
		if ok != (tc.client != "") || c.Name != tc.client {
			t.Errorf("Check(%q) = %q %v, want %q", tc.header, c.Name, ok, tc.client)
			continue
		}
		for m, want := range tc.may {
			if c.May(m) != want {
				t.Errorf("%s may use %s: %v, want %v", c.Name, m, !want, want)
			}
		}
	}
}

// A changed file is picked up; a broken one keeps the keys before it.
func TestStoreReloads(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.yaml")
	write := func(s string) {
		t.Helper()
		// As a Secret volume does: a new file renamed over the old.
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("keys: [{name: a, key: first-key-0123456789}]")
	s, err := NewStore(path, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, ok := s.Keys().Check("Bearer first-key-0123456789"); !ok {
		t.Fatal("the first key is refused")
	}
	write("keys: [{name: b, key: second-key-0123456789}]")
	waitFor("the second key", func() bool { _, ok := s.Keys().Check("Bearer second-key-0123456789"); return ok })
	if _, ok := s.Keys().Check("Bearer first-key-0123456789"); ok {
		t.Error("a removed key still works")
	}
	write("keys: [{name: broken}]")
	write("keys: [{name: c, key: third-key-0123456789}]")
	waitFor("the third key", func() bool { _, ok := s.Keys().Check("Bearer third-key-0123456789"); return ok })

	if _, err := NewStore(filepath.Join(dir, "missing.yaml"), testr.New(t)); err == nil {
		t.Error("a missing file was accepted")
	}
}
