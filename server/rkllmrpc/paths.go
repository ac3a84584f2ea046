package rkllmrpc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// modelDir confines the paths clients name (models, LoRA adapters, prompt caches) to
// one folder: a relative path is taken from it, and the path with every symlink
// resolved must stay inside it.
type modelDir struct {
	root string // absolute, symlinks resolved; "" refuses every path
	abs  string // absolute, as configured
}

func newModelDir(dir string) (modelDir, error) {
	if dir == "" {
		return modelDir{}, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return modelDir{}, fmt.Errorf("model dir %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return modelDir{}, fmt.Errorf("model dir %s: %w", dir, err)
	}
	return modelDir{root: real, abs: abs}, nil
}

// resolve returns the real path of p inside the folder. For a file the runtime will
// create (a prompt cache to save), mustExist is false and the parent folder must exist.
func (d modelDir) resolve(field, p string, mustExist bool) (string, error) {
	if d.root == "" {
		return "", jsonrpc.ErrNotAllowed.Withf("not allowed: %s names a file, but the server has no --model-dir to take files from", field).
			WithData(map[string]string{"field": field})
	}
	if p == "" {
		return "", jsonrpc.InvalidParams(field, "is required")
	}
	if strings.ContainsRune(p, 0) {
		return "", jsonrpc.InvalidParams(field, "must not contain a NUL byte")
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(d.root, p)
	}
	p = filepath.Clean(p)
	if !inside(d.root, p) && !inside(d.abs, p) {
		return "", d.outside(field, p)
	}
	real, err := evalPath(p, mustExist)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", jsonrpc.InvalidParams(field, "%s does not exist", p)
		}
		return "", jsonrpc.InvalidParams(field, "%s: %v", p, err)
	}
	if !inside(d.root, real) {
		return "", d.outside(field, p)
	}
	st, err := os.Stat(real)
	switch {
	case err != nil && mustExist:
		return "", jsonrpc.InvalidParams(field, "%s: %v", p, err)
	case err == nil && !st.Mode().IsRegular():
		// The runtime would block opening a FIFO or a device (until --init-timeout
		// kills the worker) and fail on the rest.
		return "", jsonrpc.InvalidParams(field, "%s is %s, not a regular file: name a model, adapter or prompt cache file", p, runtime.FileKind(st.Mode()))
	}
	return real, nil
}

func (d modelDir) outside(field, p string) error {
	return jsonrpc.ErrNotAllowed.Withf("not allowed: %s %s is outside the model directory %s", field, p, d.abs).
		WithData(map[string]string{"field": field})
}

// inside reports whether p is root or below it (both clean and absolute).
func inside(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// evalPath resolves every symlink of p; for a file still to be created only its folder
// must exist.
func evalPath(p string, mustExist bool) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil && !mustExist && errors.Is(err, fs.ErrNotExist) {
		var dir string
		dir, err = filepath.EvalSymlinks(filepath.Dir(p))
		real = filepath.Join(dir, filepath.Base(p))
	}
	return real, err
}
