// Package simtest finds, for tests, the simulator files that `make sim` builds.
package simtest

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir is where `make sim` puts the simulator: RKLLM_SIM_DIR when set, else bin/ at the
// top of the module the test runs in.
func Dir() string {
	if d := os.Getenv("RKLLM_SIM_DIR"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return "bin"
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "bin")
		}
		if filepath.Dir(d) == d {
			return filepath.Join(dir, "bin")
		}
	}
}

// File returns the absolute path of name in Dir. When it is missing the test is
// skipped, or fails under RKLLM_SIM_REQUIRED (which `make test` sets).
func File(tb testing.TB, name string) string {
	tb.Helper()
	p, err := filepath.Abs(filepath.Join(Dir(), name))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("RKLLM_SIM_REQUIRED") != "" {
			tb.Fatalf("simulator file %s is missing (%v): `make sim` builds it", p, err)
		}
		tb.Skipf("simulator file %s is missing: run `make sim` first", p)
	}
	return p
}

// Library is File of the simulator library of abi ("1.2" or "1.3").
func Library(tb testing.TB, abi string) string {
	tb.Helper()
	return File(tb, "librkllmrt-sim-"+abi+".so")
}
