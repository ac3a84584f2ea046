// Package health watches the NPU: it scans the root again whenever a device folder changes
// (fsnotify) and on a period (sysfs sends no file events for driver changes), and passes
// on every inventory that differs from the last one.
package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
)

// DefaultInterval is the default period of the full rescan.
const DefaultInterval = time.Second

// Monitor scans Root for NPU changes.
type Monitor struct {
	// Root is the filesystem root scanned ("/" on a host).
	Root string
	// Interval is the period of the full rescan (DefaultInterval when zero). A vanished
	// device node is seen at once through file events; a driver change within Interval.
	Interval time.Duration
	// Log receives watch errors.
	Log logr.Logger
}

// Run sends the first inventory at once, then each one that differs from the previous,
// until ctx is done (then it returns nil). Sends block until received or ctx is done.
func (m *Monitor) Run(ctx context.Context, out chan<- discovery.Inventory) error {
	interval := m.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching device folders under %s: %w", m.Root, err)
	}
	defer func() { _ = watcher.Close() }()
	tick := time.NewTicker(interval)
	defer tick.Stop()

	var last discovery.Inventory
	first := true
	for {
		// Folders appear and disappear with the driver (/dev/dri, /dev/dma_heap), so the
		// watch list is refreshed before each scan; a watch made after the change it
		// missed is covered by the scan that follows.
		m.watch(watcher)
		inv := discovery.Scan(m.Root)
		if first || !inv.Equal(last) {
			select {
			case out <- inv:
			case <-ctx.Done():
				return nil
			}
			last, first = inv, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case _, ok := <-watcher.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
		case err, ok := <-watcher.Errors:
			if ok {
				m.Log.Error(err, "device folder watch error; relying on the periodic scan", "root", m.Root)
			}
		}
	}
}

// watch adds every existing watch folder; fsnotify ignores folders already watched.
func (m *Monitor) watch(w *fsnotify.Watcher) {
	for _, rel := range discovery.WatchDirs() {
		dir := filepath.Join(m.Root, rel)
		if info, err := os.Stat(dir); err != nil || !info.IsDir() {
			continue
		}
		if err := w.Add(dir); err != nil {
			m.Log.V(1).Info("cannot watch a device folder; the periodic scan covers it", "dir", dir, "error", err.Error())
		}
	}
}
