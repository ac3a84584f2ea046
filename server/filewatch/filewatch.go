// Package filewatch tells a server when the content of a file it reads (an API key, its
// configuration) changes, so it can take the new content without a restart.
//
// Files in Kubernetes ConfigMap and Secret volumes change in a way a plain watch of the
// file misses: the kubelet writes a new timestamped folder, points the ..data symlink at
// it with a rename, and removes the old folder; the file's path goes through one or two
// symlinks (key -> ..data/key) and never itself sees a write. So the watcher watches the
// folder of the file and the folder of every symlink on its path, sets those watches
// again after every event (a swapped folder is a new inode), then reads the file and
// reports it when its bytes differ from the last ones reported. A periodic read catches
// filesystems that send no events.
package filewatch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
)

// Defaults of Options.
const (
	DefaultMaxBytes     = 4 << 20
	DefaultPollInterval = 30 * time.Second
)

// Options configure a Watcher. Zero values take the defaults in brackets.
type Options struct {
	// MaxBytes bounds the file's size (DefaultMaxBytes); a larger file is an error and
	// is not reported.
	MaxBytes int64
	// PollInterval is how often the file is read besides the file events
	// (DefaultPollInterval), for filesystems that send none.
	PollInterval time.Duration
	Log          logr.Logger
}

// Watcher watches one file. Its OnChange runs on the watcher's goroutine, one call at
// a time.
type Watcher struct {
	path     string
	opts     Options
	onChange func([]byte)
	fs       *fsnotify.Watcher
	last     []byte
	watched  map[string]bool
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// New reads path and starts watching it: onChange gets the file's content each time it
// differs from the last content read. It returns the content read at the start; a file
// that cannot be read then is an error.
func New(path string, opts Options, onChange func(content []byte)) (*Watcher, []byte, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("watch %s: %w", path, err)
	}
	w := &Watcher{path: abs, opts: opts, onChange: onChange, watched: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		// Out of inotify instances (a per-user limit shared by the node's processes):
		// a change is still seen, at the next periodic read.
		opts.Log.Info("no file events; reading the file periodically instead", "path", abs, "interval", opts.PollInterval.String(), "error", err.Error())
	} else {
		w.fs = fw
	}
	// Watches first, then the read: a change between the two is not missed.
	w.rewatch()
	content, err := w.read()
	if err != nil {
		if w.fs != nil {
			_ = w.fs.Close()
		}
		return nil, nil, err
	}
	w.last = content
	go w.loop()
	return w, bytes.Clone(content), nil
}

// Close stops the watcher and waits for its goroutine (and a running onChange) to end.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.stop)
		<-w.done
		if w.fs != nil {
			err = w.fs.Close()
		}
	})
	return err
}

func (w *Watcher) loop() {
	defer close(w.done)
	poll := time.NewTicker(w.opts.PollInterval)
	defer poll.Stop()
	// Without a watcher both channels are nil and never ready.
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.fs != nil {
		events, errs = w.fs.Events, w.fs.Errors
	}
	for {
		select {
		case <-w.stop:
			return
		case _, ok := <-events:
			if !ok {
				return
			}
			w.rewatch()
			w.check()
		case err, ok := <-errs:
			if !ok {
				return
			}
			// An overflowed event queue loses events: read the file to be sure.
			w.opts.Log.V(1).Info("file watch error", "path", w.path, "error", err.Error())
			w.rewatch()
			w.check()
		case <-poll.C:
			w.rewatch()
			w.check()
		}
	}
}

// check reads the file and reports it when it changed. A file that cannot be read
// (between a removal and its replacement) keeps the last content.
func (w *Watcher) check() {
	content, err := w.read()
	if err != nil {
		w.opts.Log.V(1).Info("cannot read the watched file; keeping its last content", "path", w.path, "error", err.Error())
		return
	}
	if bytes.Equal(content, w.last) {
		return
	}
	w.last = content
	w.onChange(bytes.Clone(content))
}

func (w *Watcher) read() ([]byte, error) {
	f, err := os.Open(w.path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, w.opts.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", w.path, err)
	}
	if int64(len(b)) > w.opts.MaxBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", w.path, w.opts.MaxBytes)
	}
	return b, nil
}

// rewatch watches the folders that hold the file and each symlink on its path, as they
// resolve now. Every watch is set again: a folder swapped behind a symlink is a new
// inode under the same name, and a watch set before the swap follows the old one.
func (w *Watcher) rewatch() {
	if w.fs == nil {
		return
	}
	for dir := range w.watched {
		_ = w.fs.Remove(dir)
	}
	clear(w.watched)
	for _, dir := range watchDirs(w.path) {
		if err := w.fs.Add(dir); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				w.opts.Log.V(1).Info("cannot watch a folder; relying on the periodic read", "folder", dir, "error", err.Error())
			}
			continue
		}
		w.watched[dir] = true
	}
}

// watchDirs are the folder of path and the folder of every symlink among path's
// prefixes, following the links (so a link to a link adds the folder of both), each
// resolved to the real folder it is now: inotify watches inodes, and two names of one
// folder would share (and remove) one watch.
func watchDirs(path string) []string {
	seen := map[string]bool{}
	var out []string
	add := func(dir string) {
		real, err := filepath.EvalSymlinks(dir)
		if err == nil && !seen[real] {
			seen[real] = true
			out = append(out, real)
		}
	}
	add(filepath.Dir(path))
	// Bounded like the kernel's own symlink resolution.
	todo := []string{path}
	for steps := 0; len(todo) > 0 && steps < 40; steps++ {
		p := todo[0]
		todo = todo[1:]
		for prefix := p; prefix != filepath.Dir(prefix); prefix = filepath.Dir(prefix) {
			fi, err := os.Lstat(prefix)
			if err != nil || fi.Mode()&os.ModeSymlink == 0 {
				continue
			}
			add(filepath.Dir(prefix))
			target, err := os.Readlink(prefix)
			if err != nil {
				continue
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(prefix), target)
			}
			// The rest of p below prefix, now under the link's target.
			rest, err := filepath.Rel(prefix, p)
			if err == nil {
				todo = append(todo, filepath.Join(target, rest))
				add(filepath.Dir(filepath.Join(target, rest)))
			}
		}
	}
	return out
}
