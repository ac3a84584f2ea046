package fetch

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/gofrs/flock"
)

// DefaultLockRetry is how often a process waiting for another writer of the same
// destination tries the lock again.
const DefaultLockRetry = time.Second

// Lock is the exclusive right to write one destination file. It is an advisory lock
// (flock(2)) on LockPath(dest), so it holds between processes, pods sharing a node's
// cache folder, and goroutines of one process alike.
//
// Fetch holds it from its up-to-date check to the install. A second Fetch of the same
// destination waits for it, then checks again: it finds the file the first one
// installed (its checksum, or without --sha256 its size) and returns without
// downloading; if the first one failed, it downloads itself, resuming the .part the
// first one left. Other writers of a destination (such as a cache that prunes files)
// take the same lock with AcquireLock.
type Lock struct {
	f *flock.Flock
}

// LockPath is the lock file of dest: dest + ".lock", next to it, so that every process
// that sees dest sees the same lock. It is left in place after use: removing it would
// let a process that opened it before the removal hold a lock no newcomer sees.
func LockPath(dest string) string { return dest + ".lock" }

// AcquireLock takes the lock of dest, waiting while another process or goroutine
// holds it (trying again every retry, DefaultLockRetry when 0) until ctx ends. It logs
// once when it has to wait, so a pod blocked behind another download says why.
func AcquireLock(ctx context.Context, dest string, retry time.Duration, log logr.Logger) (*Lock, error) {
	if retry <= 0 {
		retry = DefaultLockRetry
	}
	f := flock.New(LockPath(dest), flock.SetPermissions(0o644))
	ok, err := f.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", f.Path(), err)
	}
	if !ok {
		log.Info("another fetch is writing this file; waiting for its result", "dest", dest, "lock", f.Path())
		if ok, err = f.TryLockContext(ctx, retry); !ok {
			if err == nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("wait for the other writer of %s (lock %s): %w", dest, f.Path(), err)
		}
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock (closing its descriptor).
func (l *Lock) Unlock() error { return l.f.Unlock() }
