package auth

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
)

// DefaultUpstreamTTL is how long a server's key is used before its Secret is read
// again, so a rotated key reaches the gateway within it.
const DefaultUpstreamTTL = time.Minute

// ServerKeys reads the API keys of models' servers from the Secrets their RKLLMModels
// name (spec.server.apiKeySecretRef), each read at most once per TTL. Only the Secrets
// models name are read, one at a time (get, never list or watch).
type ServerKeys struct {
	Reader client.Reader
	TTL    time.Duration
	Clock  clock.PassiveClock

	mu    sync.Mutex
	cache map[string]cachedKey
}

type cachedKey struct {
	key  string
	read time.Time
}

// Key implements httpapi.UpstreamKeys.
func (s *ServerKeys) Key(ctx context.Context, m catalog.Model) (string, error) {
	if m.APIKey == nil {
		return "", nil
	}
	id := m.Key.Namespace + "/" + m.APIKey.Name + "/" + m.APIKey.GetKey()
	now := s.Clock.Now()
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if ok && now.Sub(c.read) < s.TTL {
		return c.key, nil
	}
	secret := &corev1.Secret{}
	if err := s.Reader.Get(ctx, client.ObjectKey{Namespace: m.Key.Namespace, Name: m.APIKey.Name}, secret); err != nil {
		return "", fmt.Errorf("reading Secret %s/%s: %w", m.Key.Namespace, m.APIKey.Name, err)
	}
	v, ok := secret.Data[m.APIKey.GetKey()]
	if !ok {
		return "", fmt.Errorf("secret %s/%s has no key %q", m.Key.Namespace, m.APIKey.Name, m.APIKey.GetKey())
	}
	key := firstKey(string(v))
	if key == "" {
		return "", fmt.Errorf("secret %s/%s key %q holds no API key", m.Key.Namespace, m.APIKey.Name, m.APIKey.GetKey())
	}
	s.mu.Lock()
	if s.cache == nil {
		s.cache = map[string]cachedKey{}
	}
	s.cache[id] = cachedKey{key: key, read: now}
	s.mu.Unlock()
	return key, nil
}

// firstKey is the first key of a server's key file, read as the server reads it (one
// key a line; blank lines and lines starting with # skipped): any of its keys opens it.
func firstKey(file string) string {
	for _, line := range strings.Split(file, "\n") {
		if k := strings.TrimSpace(line); k != "" && !strings.HasPrefix(k, "#") {
			return k
		}
	}
	return ""
}
