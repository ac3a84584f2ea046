// Package imagemap is the process runtime's stand-in for an image registry: a small
// YAML file that maps image references to local files. A mapped image is "pulled" at
// once and its container runs the host's userland with the image's files placed at
// their paths, its entrypoint, environment, working folder and user; an image the file
// does not map cannot be pulled, as an image missing from a registry.
//
//	images:
//	- image: ghcr.io/rkllm-operator/rkllm-server   # any tag or digest of this repository
//	  files:
//	    /usr/local/bin/rkllm-server: /abs/bin/rkllm-server
//	    /opt/rkllm/lib/librkllmrt.so: /abs/bin/librkllmrt-sim-1.3.so
//	  entrypoint: [/usr/local/bin/rkllm-server]
//	  env: [LD_LIBRARY_PATH=/opt/rkllm/lib]
//	  user: "65532"
//
// An entry's image is a repository (matching every tag and digest of it) or a
// repository with a tag or digest (matching only that). Relative file paths are taken
// from the folder of the map file.
package imagemap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Image is one entry: what a container of the image runs with.
type Image struct {
	// Image is the reference the entry matches: a repository, or a repository with a
	// tag or digest.
	Image string `json:"image"`
	// Files maps absolute paths in the container to files on this machine.
	Files map[string]string `json:"files,omitempty"`
	// Entrypoint and Cmd are the image's ENTRYPOINT and CMD.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env is the image's environment (KEY=VALUE); the container's own variables win.
	Env []string `json:"env,omitempty"`
	// WorkingDir is the image's working folder (default /).
	WorkingDir string `json:"workingDir,omitempty"`
	// User is the image's user: a numeric uid, optionally with :gid (empty: root).
	User string `json:"user,omitempty"`
}

// Map is a loaded image map.
type Map struct {
	// Path is the file it was loaded from, named in errors.
	Path   string
	images []Image
}

// ErrNotMapped is returned for an image the map does not name.
var ErrNotMapped = errors.New("image not in the process runtime's image map")

// Load reads and checks a map file.
func Load(file string) (*Map, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the image map: %w", err)
	}
	var doc struct {
		Images []Image `json:"images"`
	}
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("image map %s: %w", file, err)
	}
	m := &Map{Path: file}
	base := filepath.Dir(file)
	for i, img := range doc.Images {
		if err := check(&img, base); err != nil {
			return nil, fmt.Errorf("image map %s: entry %d (%s): %w", file, i, img.Image, err)
		}
		m.images = append(m.images, img)
	}
	return m, nil
}

// check validates an entry and makes its file paths absolute.
func check(img *Image, base string) error {
	if img.Image == "" {
		return errors.New("image is empty")
	}
	files := make(map[string]string, len(img.Files))
	for in, local := range img.Files {
		if !path.IsAbs(in) || path.Clean(in) != in || in == "/" {
			return fmt.Errorf("container path %q is not a clean absolute path", in)
		}
		if !filepath.IsAbs(local) {
			local = filepath.Join(base, local)
		}
		st, err := os.Stat(local)
		if err != nil {
			return fmt.Errorf("file for %s: %w", in, err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("file for %s: %s is not a regular file", in, local)
		}
		files[in] = local
	}
	img.Files = files
	if _, _, err := img.UID(); err != nil {
		return err
	}
	for _, kv := range img.Env {
		if !strings.Contains(kv, "=") {
			return fmt.Errorf("env entry %q is not KEY=VALUE", kv)
		}
	}
	return nil
}

// UID is the image's user and group; both are nil when the image names no user (root),
// gid when it names only a uid.
func (img *Image) UID() (uid, gid *int64, err error) {
	if img.User == "" {
		return nil, nil, nil
	}
	u, g, hasGroup := strings.Cut(img.User, ":")
	n, err := strconv.ParseInt(u, 10, 32)
	if err != nil || n < 0 {
		return nil, nil, fmt.Errorf("user %q is not a numeric uid[:gid]", img.User)
	}
	uid = &n
	if hasGroup {
		m, err := strconv.ParseInt(g, 10, 32)
		if err != nil || m < 0 {
			return nil, nil, fmt.Errorf("user %q is not a numeric uid[:gid]", img.User)
		}
		gid = &m
	}
	return uid, gid, nil
}

// Resolve finds the entry for a reference: an entry naming the reference exactly
// wins over one naming its repository.
func (m *Map) Resolve(ref string) (*Image, error) {
	repo := Repository(ref)
	var byRepo *Image
	for i := range m.images {
		img := &m.images[i]
		switch img.Image {
		case ref:
			return img, nil
		case repo:
			if byRepo == nil {
				byRepo = img
			}
		}
	}
	if byRepo != nil {
		return byRepo, nil
	}
	return nil, fmt.Errorf("%w: %s maps no image %q (nor its repository %q); add an entry to it", ErrNotMapped, m.Path, ref, repo)
}

// Repository is a reference without its tag and digest.
func Repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	// A tag follows the last colon after the last slash (a colon before it is a port).
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// ID is the image's identifier, as a registry's image ID: a digest of everything the
// entry holds, the files' sizes and modification times included, so a rebuilt binary
// is a new image.
func (img *Image) ID() (string, error) {
	h := sha256.New()
	_, _ = fmt.Fprintf(h, "%q %q %q %q %q %q\n", img.Image, img.Entrypoint, img.Cmd, img.Env, img.WorkingDir, img.User)
	paths := make([]string, 0, len(img.Files))
	for p := range img.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		st, err := os.Stat(img.Files[p])
		if err != nil {
			return "", fmt.Errorf("image %s: %w", img.Image, err)
		}
		_, _ = fmt.Fprintf(h, "%s %s %d %d\n", p, img.Files[p], st.Size(), st.ModTime().UnixNano())
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// Size is the total size of the image's files (the kubelet refuses an image of size 0,
// so an image without files counts one byte).
func (img *Image) Size() uint64 {
	var total uint64 = 1
	for _, f := range img.Files {
		if st, err := os.Stat(f); err == nil {
			total += uint64(st.Size()) //nolint:gosec // a file size is never negative
		}
	}
	return total
}
