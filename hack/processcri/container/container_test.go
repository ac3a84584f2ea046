package container

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSecurePathStaysInTheRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"run", "usr/bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{"var/run": "/run", "bin": "usr/bin", "etc/escape": "../../../../outside", "loop": "loop"}
	if err := os.MkdirAll(filepath.Join(root, "var"), 0o755); err != nil {
		t.Fatal(err)
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	for in, want := range map[string]string{
		"/var/run/rkllm":  "run/rkllm",
		"/bin/sh":         "usr/bin/sh",
		"/etc/escape/x":   "outside/x",
		"/a/../etc/hosts": "etc/hosts",
		"/models/m.rkllm": "models/m.rkllm",
	} {
		got, err := securePath(root, in)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("securePath(%s) = %s, %v; want %s", in, got, err, filepath.Join(root, want))
		}
	}
	if _, err := securePath(root, "/loop/x"); err == nil {
		t.Error("a symlink loop was followed forever or accepted")
	}
}

func TestCapabilities(t *testing.T) {
	bit := func(name string) capSet {
		n, err := capNumber(name)
		if err != nil {
			t.Fatal(err)
		}
		return 1 << n
	}
	def, err := capabilities(false, nil, nil)
	if err != nil || def&bit("CHOWN") == 0 || def&bit("SYS_ADMIN") != 0 {
		t.Errorf("defaults = %x, %v; want CHOWN without SYS_ADMIN", def, err)
	}
	if none, _ := capabilities(false, nil, []string{"ALL"}); none != 0 {
		t.Errorf("drop ALL = %x, want 0", none)
	}
	if some, _ := capabilities(false, []string{"NET_ADMIN"}, []string{"ALL"}); some != 0 {
		t.Errorf("add NET_ADMIN, drop ALL = %x; drops win", some)
	}
	if one, _ := capabilities(false, []string{"CAP_NET_ADMIN"}, []string{"CHOWN"}); one&bit("NET_ADMIN") == 0 || one&bit("CHOWN") != 0 {
		t.Errorf("add CAP_NET_ADMIN, drop CHOWN = %x", one)
	}
	if all, _ := capabilities(true, nil, []string{"ALL"}); all != capSet(1)<<len(capNames)-1 {
		t.Errorf("privileged = %x, want every capability", all)
	}
	if _, err := capabilities(false, []string{"NOT_A_CAP"}, nil); err == nil {
		t.Error("an unknown capability was accepted")
	}
}
