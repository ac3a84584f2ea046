// Package catalog is what the gateway knows of the models it serves: each model's id
// (spec.servedModelName or its name), its replicas, how it may be scaled, and the
// addresses of its ready server pods, kept up to date from the RKLLMModels and the
// EndpointSlices of their Services. Requests go to pods, not to Services, so the gateway
// balances and keeps conversations on replicas itself.
package catalog

import (
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Endpoint is one ready replica of a model.
type Endpoint struct {
	// ID names the replica: its pod's name (or its address when the EndpointSlice names
	// no pod).
	ID string
	// Address is host:port of the server's HTTP listener.
	Address string
}

// Model is one model the gateway may route to.
type Model struct {
	// Key is the RKLLMModel's namespace and name.
	Key types.NamespacedName
	// Name is the model's id in requests: spec.servedModelName or the RKLLMModel's name.
	Name string
	// Replicas is spec.replicas (0 when suspended).
	Replicas int32
	// Suspended is spec.suspend.
	Suspended bool
	// Scaling is spec.scaling; nil when the gateway must not scale the model.
	Scaling *inferencev1alpha1.ScalingSpec
	// Units is the rockchip.com/npu each pod requests.
	Units int32
	// APIKey names the Secret key holding the server's API key; nil when it has none.
	APIKey *inferencev1alpha1.SecretKeyRef
	// Endpoints are the ready replicas, sorted by ID.
	Endpoints []Endpoint
	// Created is the RKLLMModel's creation time; LastRequestTime its
	// status.lastRequestTime; ScaledUpAt the time the gateway last scaled it up (zero
	// when unset).
	Created, LastRequestTime, ScaledUpAt time.Time
	// Conflict names the other RKLLMModel with the same id, when two share one (the
	// older wins).
	Conflict string
}

// Ready reports whether the model has a ready replica.
func (m *Model) Ready() bool { return len(m.Endpoints) > 0 }

// Catalog is a snapshot of the models, replaced whenever something changes.
type Catalog interface {
	// Get returns the model with this id. Ollama's ":latest" tag is optional: "qwen"
	// and "qwen:latest" name the same model.
	Get(name string) (Model, bool)
	// List returns every model, sorted by id.
	List() []Model
	// Changed returns a channel closed at the next change.
	Changed() <-chan struct{}
}

// Snapshot holds the current models and tells of changes; Static and the Kubernetes
// catalog are built on it.
type Snapshot struct {
	mu      sync.RWMutex
	byName  map[string]Model
	changed chan struct{}
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{byName: map[string]Model{}, changed: make(chan struct{})}
}

// Set replaces the models. Models sharing an id keep the oldest (then by key) and name
// the others in Conflict.
func (s *Snapshot) Set(models []Model) {
	sort.SliceStable(models, func(i, j int) bool {
		if !models[i].Created.Equal(models[j].Created) {
			return models[i].Created.Before(models[j].Created)
		}
		return models[i].Key.String() < models[j].Key.String()
	})
	by := make(map[string]Model, len(models))
	for _, m := range models {
		if prev, ok := by[m.Name]; ok {
			if prev.Conflict == "" {
				prev.Conflict = m.Key.String()
				by[m.Name] = prev
			}
			continue
		}
		by[m.Name] = m
	}
	s.mu.Lock()
	s.byName = by
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Get implements Catalog.
func (s *Snapshot) Get(name string) (Model, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if m, ok := s.byName[name]; ok {
		return m, true
	}
	if base, ok := strings.CutSuffix(name, ":latest"); ok {
		m, ok := s.byName[base]
		return m, ok
	}
	return Model{}, false
}

// List implements Catalog.
func (s *Snapshot) List() []Model {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Model, 0, len(s.byName))
	for _, m := range s.byName {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Changed implements Catalog.
func (s *Snapshot) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}
