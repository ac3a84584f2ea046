package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The official client libraries' own tests against the server, in Node.js: each
// installs its npm package into a temporary folder with the machine's Node.js and npm
// (which need the npm registry; nothing is cached outside the folder but npm's own
// cache), so they run only when asked (make test-openai-node, make test-ollama-node).

// Pinned client versions (6.x of openai and 0.6.x of ollama support Node.js 18 and 20,
// which Debian and the build machines have).
const (
	openaiNodeVersion = "6.49.0"
	ollamaNodeVersion = "0.6.4"
)

// nodeTimeout bounds installing a client and running its test.
const nodeTimeout = 5 * time.Minute

// TestOpenAINodeClient runs test/openai-node/compat.test.mjs, written with the official
// `openai` npm package, against /v1/: list models, a chat completion, a streamed one,
// a tool call, embeddings, errors.
func TestOpenAINodeClient(t *testing.T) {
	if os.Getenv("RKLLM_OPENAI_NODE_TEST") == "" {
		t.Skip("set RKLLM_OPENAI_NODE_TEST=1 (make test-openai-node) to install the openai npm package and run its test")
	}
	runNodeTest(t, "openai@"+openaiNodeVersion, filepath.Join("openai-node", "compat.test.mjs"), func(s *server, key string) []string {
		return []string{"OPENAI_BASE_URL=" + s.base + "/v1", "OPENAI_API_KEY=" + key, "MODEL=" + modelID}
	})
}

// TestOllamaNodeClient runs test/ollama-node/compat.test.mjs, written with the official
// `ollama` npm package, against /api/: list, show, ps, version, a chat whole and
// streamed, generate, a tool call and its answer, embeddings, errors.
func TestOllamaNodeClient(t *testing.T) {
	if os.Getenv("RKLLM_OLLAMA_NODE_TEST") == "" {
		t.Skip("set RKLLM_OLLAMA_NODE_TEST=1 (make test-ollama-node) to install the ollama npm package and run its test")
	}
	runNodeTest(t, "ollama@"+ollamaNodeVersion, filepath.Join("ollama-node", "compat.test.mjs"), func(s *server, key string) []string {
		return []string{"OLLAMA_HOST=" + s.base, "API_KEY=" + key, "MODEL=" + ollamaName}
	})
}

// runNodeTest installs pkg into a temporary folder, copies test/<script> next to it,
// starts a server (ABI 1.3, with an API key) and runs the script with node --test and
// the environment env gives.
func runNodeTest(t *testing.T, pkg, script string, env func(s *server, key string) []string) {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: make deps installs Debian's nodejs and npm", tool)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), nodeTimeout)
	defer cancel()
	install := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts",
		"--legacy-peer-deps", "--loglevel=error", pkg)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install %s: %v\n%s", pkg, err, out)
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "test", script))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "compat.test.mjs"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	const key = "node-test-key"
	keyFile := filepath.Join(dir, "api-key")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": keyFile}})
	run := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", "compat.test.mjs")
	run.Dir = dir
	run.Env = append(os.Environ(), env(s, key)...)
	out, err := run.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	if err != nil {
		t.Fatalf("the %s client's test failed: %v", pkg, err)
	}
}
