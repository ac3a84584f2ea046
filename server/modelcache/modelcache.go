// Package modelcache keeps downloaded model files in a folder shared by every server pod
// on a node (the node's model cache, which the device plugin mounts into NPU containers),
// so a model is downloaded once per node instead of once per pod.
//
// One writer per file: fetch.Fetch holds the file's lock (fetch.LockPath) while it checks
// and downloads, so a second pod of the same model waits and then finds the file in
// place; eviction takes the same lock. Files are verified by SHA-256 when one is given (at every fetch, hit or not).
// The cache is bounded: after a download the least recently used files are removed until
// the folder is within its size limit, skipping files a running server holds (Pin takes
// a shared lock the eviction's exclusive try cannot get). A hit marks the file used.
package modelcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/fetch"
)

// Environment variables the device plugin sets in containers it mounts the node's cache
// into (docs/design.md, "Device plugin -> pods").
const (
	// EnvDir is the cache folder inside the container.
	EnvDir = "RKNPU_MODEL_CACHE"
	// EnvMaxBytes is the cache's size limit in bytes; absent or 0: no limit.
	EnvMaxBytes = "RKNPU_MODEL_CACHE_MAX_BYTES"
)

// Results of a fetch.
const (
	// ResultCacheHit: the file was already there (in the cache, or at the destination)
	// and nothing was downloaded.
	ResultCacheHit = "CacheHit"
	// ResultDownloaded: the file was downloaded.
	ResultDownloaded = "Downloaded"
)

// Options configure a cached fetch.
type Options struct {
	// Fetch is the download; its Dest is where the server finds the file. With a cache it
	// becomes a symlink to the cached file.
	Fetch fetch.Options
	// Dir is the node's cache folder; empty downloads straight to Fetch.Dest.
	Dir string
	// MaxBytes bounds the files in Dir (0: no bound).
	MaxBytes int64
	Log      logr.Logger
}

// Outcome is what a fetch did, as the init container reports it in its termination
// message for the operator's status.
type Outcome struct {
	// Result is ResultCacheHit or ResultDownloaded.
	Result string `json:"result"`
	// NodeCache is true when the file is in the node's cache.
	NodeCache bool `json:"nodeCache"`
	// File is where the file is: in the cache, or the destination.
	File string `json:"file"`
	// Bytes is the file's size.
	Bytes int64 `json:"bytes"`
	// Evicted lists the cached files removed to stay within the size limit.
	Evicted []string `json:"evicted,omitempty"`
}

// Fetch makes the file available at o.Fetch.Dest: from the cache when the node has one
// (downloading it there first when missing), otherwise by downloading it there.
func Fetch(ctx context.Context, o Options) (Outcome, error) {
	if o.Dir == "" {
		return fetchDirect(ctx, o)
	}
	if fi, err := os.Stat(o.Dir); err != nil || !fi.IsDir() {
		o.Log.Info("the node's model cache is not there; downloading into the pod", "cache", o.Dir, "error", fmt.Sprint(err))
		return fetchDirect(ctx, o)
	}
	dest := o.Fetch.Dest
	cached := filepath.Join(o.Dir, filepath.Base(dest))
	out, err := fetchCached(ctx, o, cached)
	if err != nil {
		return Outcome{}, err
	}
	if err := link(cached, dest); err != nil {
		return Outcome{}, err
	}
	return out, nil
}

// fetchCached fetches into the cache; fetch.Fetch holds the file's lock while it checks
// and downloads (one writer per file across the node's pods).
func fetchCached(ctx context.Context, o Options, cached string) (Outcome, error) {
	fo := o.Fetch
	fo.Dest = cached
	r, err := fetch.Fetch(ctx, fo)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Result: ResultDownloaded, NodeCache: true, File: cached}
	if r.UpToDate {
		out.Result = ResultCacheHit
		// Used now: the last to be evicted. Only the file's owner may set its times;
		// another user's file stays where it is in the order.
		now := time.Now()
		if err := os.Chtimes(cached, now, now); err != nil {
			o.Log.V(1).Info("cannot mark the cached file used", "file", cached, "error", err.Error())
		}
	}
	fi, err := os.Stat(cached)
	if err != nil {
		return Outcome{}, err
	}
	out.Bytes = fi.Size()
	if o.MaxBytes > 0 {
		out.Evicted = Prune(o.Dir, o.MaxBytes, cached, o.Log)
	}
	return out, nil
}

func fetchDirect(ctx context.Context, o Options) (Outcome, error) {
	r, err := fetch.Fetch(ctx, o.Fetch)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Result: ResultDownloaded, File: o.Fetch.Dest}
	if r.UpToDate {
		out.Result = ResultCacheHit
	}
	if fi, err := os.Stat(o.Fetch.Dest); err == nil {
		out.Bytes = fi.Size()
	}
	return out, nil
}

// link makes dest a symlink to target, replacing what is there in one rename.
func link(target, dest string) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil { //nolint:gosec // the model folder is shared with the server container
		return fmt.Errorf("create the folder of %s: %w", dest, err)
	}
	tmp := dest + ".link"
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link %s to the cached file: %w", dest, err)
	}
	if err := os.Rename(tmp, dest); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("link %s to the cached file: %w", dest, err)
	}
	return nil
}

// Pin keeps path (a cached file, or a link to one) from being evicted while the returned
// file stays open: eviction skips files with a shared lock.
func Pin(path string) (*os.File, error) {
	f, err := os.Open(path) //nolint:gosec // the server's own model file
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	return f, nil
}

// entry is a cached file.
type entry struct {
	path string
	size int64
	used time.Time
}

// Prune removes the least recently used files of dir until the files there add up to
// at most maxBytes, never keep and never a file a server has pinned, and returns the
// names it removed. Partial downloads and lock files are neither counted nor removed.
func Prune(dir string, maxBytes int64, keep string, log logr.Logger) []string {
	entries, total := scan(dir)
	var removed []string
	for _, e := range entries {
		if total <= maxBytes {
			break
		}
		if e.path == keep {
			continue
		}
		ok, err := evict(e.path)
		if err != nil {
			log.Info("cannot remove a cached file", "file", e.path, "error", err.Error())
			continue
		}
		if ok {
			total -= e.size
			removed = append(removed, filepath.Base(e.path))
			log.Info("removed the least recently used file from the node's model cache", "file", e.path, "bytes", e.size)
		}
	}
	if total > maxBytes {
		log.Info("the node's model cache is over its size limit: the files left are in use", "bytes", total, "limit", maxBytes)
	}
	return removed
}

// scan lists the cached files, least recently used first, and their total size.
func scan(dir string) ([]entry, int64) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0
	}
	var entries []entry
	var total int64
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".part") || strings.HasSuffix(name, ".lock") || !de.Type().IsRegular() {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		entries = append(entries, entry{path: filepath.Join(dir, name), size: fi.Size(), used: fi.ModTime()})
		total += fi.Size()
	}
	sort.Slice(entries, func(i, j int) bool {
		if !entries[i].used.Equal(entries[j].used) {
			return entries[i].used.Before(entries[j].used)
		}
		return entries[i].path < entries[j].path
	})
	return entries, total
}

// evict removes path unless a server holds it or a fetch is checking it (ok false).
func evict(path string) (ok bool, err error) {
	for _, p := range []string{fetch.LockPath(path), path} {
		locked, err := tryLock(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) && p != path {
				continue // no fetch ever locked it
			}
			return false, err
		}
		if locked == nil {
			return false, nil
		}
		defer func() { _ = locked.Close() }()
	}
	return true, os.Remove(path)
}

// tryLock takes an exclusive lock on path without waiting: nil when someone holds one.
func tryLock(path string) (*os.File, error) {
	f, err := os.Open(path) //nolint:gosec // a file of the cache folder
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, err
	}
	return f, nil
}
