package main_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// requestIDPattern is a run's id: 128 random bits in hex.
var requestIDPattern = regexp.MustCompile(`^r-[0-9a-f]{32}$`)

// TestAbortIsolation (issue 12.4): over HTTP a run is stopped only by a caller that
// names its unguessable request_id and presents the API key that started it; a
// guessed id, another key and another transport's connection stop nothing.
func TestAbortIsolation(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("# two clients\nalpha-key\n\nbeta-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"api-key-file": keys}, env: hangFirstRun})
	alpha := []string{"Authorization", "Bearer alpha-key"}
	beta := []string{"Authorization", "Bearer beta-key"}
	held := prompt("held")
	held["stream"] = true
	st := s.openStream(request(1, "rkllm.run", held), alpha...)
	first := st.next(t)
	params, _ := first["params"].(map[string]any)
	id, _ := params["request_id"].(string)
	if !requestIDPattern.MatchString(id) {
		t.Fatalf("request id %q (in %v): want r- and 32 hex digits (128 random bits)", id, first)
	}

	abort := func(id string, header ...string) response {
		t.Helper()
		r, body := s.post(request(2, "rkllm.abort", map[string]any{"request_id": id}), header...)
		var out response
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("abort answered %d %q", r.StatusCode, body)
		}
		return out
	}
	// Another key, even with the id; guessed ids with the owner's key; the socket.
	fails(t, abort(id, beta...), -32602)
	for _, guess := range []string{"r-1", "r-2", "r-0", id[:len(id)-1] + "x"} {
		fails(t, abort(guess, alpha...), -32602)
	}
	fails(t, s.dial().call("rkllm.abort", map[string]any{"request_id": id}), -32602)
	if n := ok[int](t, s.dial().call("rkllm.is_running", nil)); n != 1 || len(s.statsEvents("event=run", "outcome=aborted")) != 0 {
		t.Fatalf("the run was stopped by someone else: is_running %d, stats %v", n, s.statsEvents("event=run"))
	}

	// The owner, from another connection, with the id and its key.
	aborted := ok[map[string][]string](t, abort(id, alpha...))["aborted"]
	if len(aborted) != 1 || aborted[0] != id {
		t.Fatalf("the owner's abort stopped %v, want [%s]", aborted, id)
	}
	for {
		m := st.next(t)
		if _, isNote := m["method"]; isNote {
			continue
		}
		if res, _ := m["result"].(map[string]any); res["finish_reason"] != "abort" {
			t.Errorf("the held run ended with %v, want finish_reason abort", m)
		}
		break
	}
	// Each run gets its own id.
	again := ok[runResult](t, func() response {
		_, body := s.post(request(3, "rkllm.run", prompt("again")), beta...)
		var r response
		_ = json.Unmarshal([]byte(body), &r)
		return r
	}())
	if !requestIDPattern.MatchString(again.RequestID) || again.RequestID == id {
		t.Errorf("second run's id %q after %q", again.RequestID, id)
	}
}
