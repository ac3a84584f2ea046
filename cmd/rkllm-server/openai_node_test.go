package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// openaiNodeVersion is the official OpenAI Node.js client the compatibility test
// installs (6.x supports Node.js 18 and 20, which Debian and the build machines have).
const openaiNodeVersion = "6.49.0"

// nodeTimeout bounds installing the client and running its test.
const nodeTimeout = 5 * time.Minute

// TestOpenAINodeClient runs test/openai-node/compat.test.mjs, written with the official
// `openai` npm package, against the server: list models, a chat completion, a streamed
// one, a tool call, errors. It installs the package into a temporary folder with the
// machine's Node.js and npm (which need the npm registry), so it runs only when
// RKLLM_OPENAI_NODE_TEST is set (make test-openai-node).
func TestOpenAINodeClient(t *testing.T) {
	if os.Getenv("RKLLM_OPENAI_NODE_TEST") == "" {
		t.Skip("set RKLLM_OPENAI_NODE_TEST=1 (make test-openai-node) to install the openai npm package and run its test")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: make deps installs Debian's nodejs and npm", tool)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), nodeTimeout)
	defer cancel()
	install := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--no-save", "--ignore-scripts",
		"--legacy-peer-deps", "--loglevel=error", "openai@"+openaiNodeVersion)
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install openai@%s: %v\n%s", openaiNodeVersion, err, out)
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "test", "openai-node", "compat.test.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "compat.test.mjs"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "api-key")
	if err := os.WriteFile(key, []byte("node-test-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": key}})
	run := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", "compat.test.mjs")
	run.Dir = dir
	run.Env = append(os.Environ(), "OPENAI_BASE_URL="+s.base+"/v1", "OPENAI_API_KEY=node-test-key", "MODEL="+modelID)
	out, err := run.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	if err != nil {
		t.Fatalf("the OpenAI Node.js client's test failed: %v", err)
	}
}
