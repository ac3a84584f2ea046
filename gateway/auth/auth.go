// Package auth checks the gateway's API keys: a file (from a Secret) listing clients,
// each with a key and the models it may use. Keys are compared as SHA-256 digests in
// constant time against every entry, so neither the time taken nor an early exit tells
// anything of a key; keys are never logged.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	"sigs.k8s.io/yaml"
)

// MinKeyLength is the shortest key accepted: shorter keys can be guessed.
const MinKeyLength = 16

// maxFileBytes bounds the keys file.
const maxFileBytes = 1 << 20

// File is the keys file, YAML or JSON:
//
//	keys:
//	- name: open-webui
//	  key: sk-...            # at least 16 characters
//	  models: [chat, coder]  # optional: without it, every model
type File struct {
	Keys []Entry `json:"keys"`
}

// Entry is one client.
type Entry struct {
	// Name names the client in logs, metrics and the per-client limit.
	Name string `json:"name"`
	// Key is the bearer token the client sends.
	Key string `json:"key"`
	// Models the client may use, by id; empty: every model.
	Models []string `json:"models,omitempty"`
}

// Client is an authenticated client.
type Client struct {
	// Name is the entry's name.
	Name   string
	models map[string]bool
}

// May reports whether the client may use the model with this id (or its Ollama name
// with the ":latest" tag).
func (c Client) May(model string) bool {
	if c.models == nil {
		return true
	}
	base, _ := strings.CutSuffix(model, ":latest")
	return c.models[model] || c.models[base]
}

// Keys is a parsed keys file.
type Keys struct {
	entries []key
}

type key struct {
	client Client
	digest [sha256.Size]byte
}

// Parse reads a keys file. Every entry needs a unique name and a unique key of at
// least MinKeyLength characters; the error names the entry, never the key.
func Parse(data []byte) (*Keys, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("the keys file is not valid YAML of the form {keys: [{name, key, models}]}: %w", err)
	}
	k := &Keys{}
	names := map[string]bool{}
	digests := map[[sha256.Size]byte]string{}
	for i, e := range f.Keys {
		switch {
		case e.Name == "":
			return nil, fmt.Errorf("keys[%d] has no name", i)
		case names[e.Name]:
			return nil, fmt.Errorf("keys[%d]: the name %q is used twice", i, e.Name)
		case len(e.Key) < MinKeyLength:
			return nil, fmt.Errorf("keys[%d] (%s): the key must be at least %d characters", i, e.Name, MinKeyLength)
		}
		names[e.Name] = true
		d := sha256.Sum256([]byte(e.Key))
		if other, ok := digests[d]; ok {
			return nil, fmt.Errorf("keys[%d] (%s) has the same key as %s", i, e.Name, other)
		}
		digests[d] = e.Name
		c := Client{Name: e.Name}
		if len(e.Models) > 0 {
			c.models = map[string]bool{}
			for _, m := range e.Models {
				c.models[m] = true
			}
		}
		k.entries = append(k.entries, key{client: c, digest: d})
	}
	return k, nil
}

// Check authenticates an Authorization header ("Bearer KEY").
func (k *Keys) Check(authorization string) (Client, bool) {
	token, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok || token == "" {
		return Client{}, false
	}
	d := sha256.Sum256([]byte(token))
	found := -1
	for i := range k.entries {
		// Every entry is compared, whatever matched before.
		if subtle.ConstantTimeCompare(d[:], k.entries[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Client{}, false
	}
	return k.entries[found].client, true
}

// Store holds the keys of a file and reloads them when the file changes (a Secret
// volume is updated by swapping a symbolic link in its folder).
type Store struct {
	path string
	log  logr.Logger
	cur  atomic.Pointer[Keys]
}

// NewStore reads the keys file; it fails when the file is missing or invalid.
func NewStore(path string, log logr.Logger) (*Store, error) {
	s := &Store{path: path, log: log}
	k, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(k)
	return s, nil
}

// Keys returns the current keys.
func (s *Store) Keys() *Keys { return s.cur.Load() }

func (s *Store) load() (*Keys, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, fmt.Errorf("reading the keys file: %w", err)
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the keys file %s: %w", s.path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("the keys file %s is larger than %d bytes", s.path, maxFileBytes)
	}
	k, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.path, err)
	}
	return k, nil
}

// Start reloads the keys whenever the file's folder changes, and every minute in case
// a change went unnoticed, until ctx ends. A file that fails to load keeps the
// previous keys (and is logged).
func (s *Store) Start(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching the keys file: %w", err)
	}
	defer func() { _ = w.Close() }()
	if err := w.Add(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("watching the keys file's folder: %w", err)
	}
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	// A change between NewStore and the watch raised no event: read once more now
	// that the watch is in place.
	s.reload()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.Events:
		case err := <-w.Errors:
			s.log.Error(err, "watching the keys file")
		case <-tick.C:
		}
		s.reload()
	}
}

// reload replaces the keys with the file's; a file that fails to load keeps the
// previous keys.
func (s *Store) reload() {
	k, err := s.load()
	if err != nil {
		s.log.Error(err, "reloading the keys file; keeping the previous keys")
		return
	}
	s.cur.Store(k)
}
