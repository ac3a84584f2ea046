package httpapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/gateway/auth"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
)

// modelEntry is a model in GET /v1/models, with the gateway's extensions: whether it
// is loaded, its replicas, and how the gateway scales it.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// Loaded is true while a replica is ready to serve.
	Loaded bool `json:"loaded"`
	// Replicas is what the model asks for, ReadyReplicas what serves.
	Replicas      int32 `json:"replicas"`
	ReadyReplicas int   `json:"ready_replicas"`
	// Scaling says whether the gateway starts and stops the model on demand.
	OnDemand bool `json:"on_demand"`
}

func entry(m catalog.Model) modelEntry {
	return modelEntry{ID: m.Name, Object: "model", Created: m.Created.Unix(), OwnedBy: m.Key.Namespace,
		Loaded: m.Ready(), Replicas: m.Replicas, ReadyReplicas: len(m.Endpoints), OnDemand: m.Scaling != nil}
}

// visible lists the models the client may use.
func (h *Handler) visible(c auth.Client) []catalog.Model {
	var out []catalog.Model
	for _, m := range h.Catalog.List() {
		if c.May(m.Name) {
			out = append(out, m)
		}
	}
	return out
}

// listModels serves GET /v1/models: every model the client may use.
func (h *Handler) listModels(w http.ResponseWriter, r *http.Request) {
	c, ok := h.client(w, r, false)
	if !ok {
		return
	}
	data := []modelEntry{}
	for _, m := range h.visible(c) {
		data = append(data, entry(m))
	}
	writeJSON(w, map[string]any{"object": "list", "data": data})
}

// getModel serves GET /v1/models/{model}.
func (h *Handler) getModel(w http.ResponseWriter, r *http.Request) {
	c, ok := h.client(w, r, false)
	if !ok {
		return
	}
	name := r.PathValue("model")
	m, found := h.Catalog.Get(name)
	if !found || !c.May(m.Name) {
		x := &exchange{h: h, api: 0}
		x.unknownModel(name, c.May).write(w, false, false)
		return
	}
	writeJSON(w, entry(m))
}

// ollamaName is a model's name as Ollama writes names: with a tag.
func ollamaName(id string) string {
	if strings.Contains(id, ":") {
		return id
	}
	return id + ":latest"
}

// ollamaModel is a model in /api/tags and /api/ps.
type ollamaModel struct {
	Name       string         `json:"name"`
	Model      string         `json:"model"`
	ModifiedAt string         `json:"modified_at,omitempty"`
	Size       int64          `json:"size"`
	Digest     string         `json:"digest"`
	Details    map[string]any `json:"details"`
	ExpiresAt  string         `json:"expires_at,omitempty"`
}

func ollamaEntry(m catalog.Model) ollamaModel {
	sum := sha256.Sum256([]byte(m.Key.String()))
	return ollamaModel{Name: ollamaName(m.Name), Model: ollamaName(m.Name), ModifiedAt: m.Created.UTC().Format(time.RFC3339Nano),
		Digest: hex.EncodeToString(sum[:]), Details: map[string]any{"format": "rkllm"}}
}

// ollamaTags serves GET /api/tags: every model the client may use.
func (h *Handler) ollamaTags(w http.ResponseWriter, r *http.Request) {
	c, ok := h.client(w, r, true)
	if !ok {
		return
	}
	list := []ollamaModel{}
	for _, m := range h.visible(c) {
		list = append(list, ollamaEntry(m))
	}
	writeJSON(w, map[string]any{"models": list})
}

// neverExpires is the expires_at of loaded models: the gateway unloads a model only
// after its scaleDownDelay without requests, or to make room.
const neverExpires = "2318-01-01T00:00:00Z"

// ollamaPS serves GET /api/ps: the models with a ready replica.
func (h *Handler) ollamaPS(w http.ResponseWriter, r *http.Request) {
	c, ok := h.client(w, r, true)
	if !ok {
		return
	}
	list := []ollamaModel{}
	for _, m := range h.visible(c) {
		if m.Ready() {
			e := ollamaEntry(m)
			e.ModifiedAt, e.ExpiresAt = "", neverExpires
			list = append(list, e)
		}
	}
	writeJSON(w, map[string]any{"models": list})
}

// OllamaVersion is the Ollama API version the gateway reports: the one whose API the
// servers follow.
const OllamaVersion = "0.12.0"

func (h *Handler) ollamaVersion(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]string{"version": OllamaVersion})
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"cannot encode the response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}
