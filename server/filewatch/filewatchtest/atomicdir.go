// Package filewatchtest updates a folder the way the kubelet updates ConfigMap, Secret
// and projected volumes, for tests of code that watches files in them.
package filewatchtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const dataDirName = "..data"

// AtomicDir is a volume folder written like the kubelet's AtomicWriter
// (k8s.io/kubernetes/pkg/volume/util): the files live in a timestamped folder,
// ..data is a symlink to it, and each top-level name is a symlink into ..data.
type AtomicDir struct {
	Dir string
}

// Write replaces the whole payload (paths relative to Dir, such as
// "api-key/api-key") in the kubelet's order: a new timestamped folder with every file,
// a ..data_tmp symlink to it renamed over ..data, the missing top-level symlinks, then
// the old folder removed.
func (a AtomicDir) Write(payload map[string][]byte) error {
	old, _ := os.Readlink(filepath.Join(a.Dir, dataDirName))
	ts, err := os.MkdirTemp(a.Dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil { //nolint:gosec // as the kubelet makes it
		return err
	}
	for rel, data := range payload {
		p := filepath.Join(ts, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil { //nolint:gosec // as above
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil { //nolint:gosec // as above
			return err
		}
	}
	tmp := filepath.Join(a.Dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(a.Dir, dataDirName)); err != nil {
		return err
	}
	for rel := range payload {
		top := strings.SplitN(rel, string(filepath.Separator), 2)[0]
		link := filepath.Join(a.Dir, top)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(dataDirName, top), link); err != nil {
			return fmt.Errorf("user-visible link %s: %w", top, err)
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(a.Dir, old))
	}
	return nil
}
