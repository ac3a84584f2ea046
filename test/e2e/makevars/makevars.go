// Package makevars hands e2e tests the binaries and files the Makefile builds and names
// in environment variables (E2E_HELM, E2E_K8S_BIN_DIR, ...).
package makevars

import (
	"os"
	"path/filepath"
	"testing"
)

// Path returns the absolute path in the environment variable name. When it is unset or
// names nothing, the test fails saying which make target builds it and sets it.
func Path(tb testing.TB, name, target string) string {
	tb.Helper()
	p := os.Getenv(name)
	if p == "" {
		tb.Fatalf("%s is not set: run this test with `make %s`, which builds what it needs and sets it", name, target)
	}
	if _, err := os.Stat(p); err != nil { //nolint:gosec // a path the Makefile set for the test
		tb.Fatalf("%s: %v (run `make %s`)", name, err, target)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		tb.Fatal(err)
	}
	return abs
}
