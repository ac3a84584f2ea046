package templatehost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// rendererEnv makes the test binary a renderer process (the server runs
// `rkllm-server render-chat-template`, which calls the same Serve).
const rendererEnv = "TEMPLATEHOST_TEST_RENDERER"

func TestMain(m *testing.M) {
	if os.Getenv(rendererEnv) != "" {
		if err := Serve(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "renderer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// waitTimeout bounds waits for events that come at once when the code works.
const waitTimeout = 30 * time.Second

// chatML is a template as the Qwen family writes it; hostile templates below add their
// trap to it, so they render normal conversations like any chat template.
const chatML = `{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
`

func newHost(t testing.TB, source string, o Options) *Host {
	t.Helper()
	o.Template = &chattemplate.JinjaSource{ID: "jinja:test", Source: source, EOS: "<|im_end|>"}
	o.Command = func() *exec.Cmd {
		cmd := exec.CommandContext(context.Background(), os.Args[0]) //nolint:gosec // the test binary
		cmd.Env = append(os.Environ(), rendererEnv+"=1")
		return cmd
	}
	o.Log = testLog(t)
	h := New(o)
	t.Cleanup(h.Close)
	return h
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func user(text string) *chattemplate.Conversation {
	return &chattemplate.Conversation{Messages: []chattemplate.Message{{Role: chattemplate.RoleUser, Content: text}}}
}

// TestRendersAsInProcess: a real template (Qwen 2.5's, with tools) renders byte for
// byte as the in-process renderer does.
func TestRendersAsInProcess(t *testing.T) {
	src, err := os.ReadFile(filepath.Join("..", "chattemplate", "testdata", "templates", "qwen2.5.jinja"))
	if err != nil {
		t.Fatal(err)
	}
	h := newHost(t, string(src), Options{})
	if err := h.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	in, err := chattemplate.NewJinja("jinja:test", string(src), "", "<|im_end|>")
	if err != nil {
		t.Fatal(err)
	}
	c := &chattemplate.Conversation{
		Messages: []chattemplate.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Weather in <Paris> & \"Lyon\"? 天气"}},
		Tools:    []byte(`[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]`),
	}
	want, err := in.Render(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // the same renderer serves one render after another
		got, err := h.Render(ctxT(t), c)
		if err != nil || got != want {
			t.Fatalf("renderer: %q, %v\nin process: %q", got, err, want)
		}
	}
}

// hostileCases are templates (each a trap in front of chatML, sprung by the message
// "go") of every kind that loops, multiplies strings or lists, recurses, allocates or
// panics, with what the error must say. Any of the words of want will do where the
// bound that trips first depends on the machine (memory or output).
func hostileCases() []struct {
	name, trap string
	want       []string
} {
	return []struct {
		name, trap string
		want       []string
	}{
		{"negative string repeat", `{{ 'x' * -1 }}`, []string{"panicked", "negative Repeat count"}},
		{"negative indent", `{{ 'x'|indent(-5) }}`, []string{"panicked"}},
		{"huge string repeat", `{{ 'x' * 9223372036854775807 }}`, []string{"panicked"}},
		{"string repeat of 8 GiB", `{{ 'x' * 8589934592 }}`, []string{"memory"}},
		{"output growing with the message", `{% for i in range(1000000) %}{{ messages[-1].content * 100 }}{% endfor %}`, []string{"memory", "--chat-template-max-output"}},
		{"doubling a string", `{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}`, []string{"memory"}},
		{"doubling a list", `{% set ns = namespace(l=[1]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l|length }}`, []string{"memory"}},
		{"huge range", `{{ range(9223372036854775807)|length }}`, []string{"memory", "panicked"}},
		{"recursive macro", `{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`, []string{"recursed too deeply"}},
		{"mutually recursive macros", `{% macro a(n) %}{{ b(n) }}{% endmacro %}{% macro b(n) %}{{ a(n) }}{% endmacro %}{{ a(0) }}`, []string{"recursed too deeply"}},
		{"raise_exception", `{{ raise_exception('no ' ~ messages[-1].content) }}`, []string{"no go"}},
	}
}

// TestHostileTemplates renders each hostile template through the host: every one
// ends with ErrInvalid naming what went wrong, and the host then renders a normal
// conversation with the same template, in a renderer started again.
func TestHostileTemplates(t *testing.T) {
	for _, tt := range hostileCases() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := `{% if messages[-1].content == 'go' %}` + tt.trap + `{% endif %}` + chatML
			h := newHost(t, src, Options{Timeout: 5 * time.Minute, MaxMemory: 64 << 20, MaxOutput: 4 << 20, Renderers: 1})
			if err := h.Start(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			_, err := h.Render(ctxT(t), user("go"))
			if !errors.Is(err, chattemplate.ErrInvalid) {
				t.Fatalf("error %v, want ErrInvalid", err)
			}
			if !containsAny(err.Error(), tt.want) {
				t.Errorf("error %q says none of %q", err, tt.want)
			}
			got, err := h.Render(ctxT(t), user("hello"))
			if err != nil || !strings.Contains(got, "<|im_start|>user\nhello<|im_end|>") {
				t.Errorf("after it: %q, %v", got, err)
			}
		})
	}
}

func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

const spin = `{% if messages[-1].content == 'spin' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}` + chatML

// TestLoopsAreStoppedByTheTimeout: nested loops run until --chat-template-timeout,
// then the renderer is killed and the next render gets a new one.
func TestLoopsAreStoppedByTheTimeout(t *testing.T) {
	h := newHost(t, spin, Options{Timeout: 300 * time.Millisecond, Renderers: 1})
	if err := h.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	pid := rendererPIDs(h)[0]
	_, err := h.Render(ctxT(t), user("spin"))
	if !errors.Is(err, chattemplate.ErrInvalid) || !strings.Contains(err.Error(), "ran longer than --chat-template-timeout 300ms") {
		t.Fatalf("error %v", err)
	}
	if alive(pid) {
		t.Errorf("renderer %d still runs after the timeout", pid)
	}
	if _, err := h.Render(ctxT(t), user("hi")); err != nil {
		t.Fatal(err)
	}
}

// TestARenderEndsWithItsContext: when the client leaves (its context ends) in the
// middle of a render that would run for hours, the renderer is killed at once, not at
// the timeout.
func TestARenderEndsWithItsContext(t *testing.T) {
	h := newHost(t, spin, Options{Timeout: time.Hour, Renderers: 1})
	if err := h.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	pid := rendererPIDs(h)[0]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := h.Render(ctx, user("spin"))
		done <- err
	}()
	base := cpuTicks(t, pid)
	eventually(t, "the renderer to burn CPU on the loop", func() bool { return cpuTicks(t, pid) > base+10 })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want the context's", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the render did not end with its context")
	}
	if alive(pid) {
		t.Errorf("renderer %d still runs after its client left", pid)
	}
}

// TestRefusedAtStart: a template that does not compile, fails on the test
// conversation, loops on it, or leaves the messages out is refused by Start with why.
func TestRefusedAtStart(t *testing.T) {
	for _, tt := range []struct {
		name, src, want string
	}{
		// Only the loop waits for the timeout; the others must fail by themselves first.
		{"loops", `{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`, "ran longer than --chat-template-timeout 300ms"},
		{"does not compile", `{% for m in messages %}`, "jinja parse"},
		{"include", `{% include 'other.jinja' %}`, `unknown statement "include"`},
		{"raises", `{{ raise_exception('this template needs a system message') }}`, "needs a system message"},
		{"panics", `{{ 'x' * -1 }}`, "panicked"},
		{"recurses", `{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}`, "recursed too deeply"},
		{"no messages", `<|im_start|>assistant`, "lacks the last user message"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			timeout := 5 * time.Minute
			if tt.name == "loops" {
				timeout = 300 * time.Millisecond
			}
			h := newHost(t, tt.src, Options{Timeout: timeout})
			err := h.Start(ctxT(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "is refused") {
				t.Errorf("Start: %v, want a refusal saying %q", err, tt.want)
			}
		})
	}
}

// TestCloseKillsTheRenderers: no renderer outlives Close, and renders after it fail.
func TestCloseKillsTheRenderers(t *testing.T) {
	h := newHost(t, chatML, Options{Renderers: 2})
	if err := h.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	pids := rendererPIDs(h)
	h.Close()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("renderer %d runs after Close", pid)
		}
	}
	if _, err := h.Render(ctxT(t), user("hi")); !errors.Is(err, ErrClosed) {
		t.Errorf("render after Close: %v", err)
	}
}

func rendererPIDs(h *Host) []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	var pids []int
	for r := range h.live {
		pids = append(pids, r.cmd.Process.Pid)
	}
	return pids
}

// alive reports whether pid is a process that has not been reaped (the host waits
// for every renderer it kills before it returns).
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// cpuTicks is the CPU time pid has used, in clock ticks (utime + stime).
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("waited %s for %s", waitTimeout, what)
		case <-tick.C:
		}
	}
}

func testLog(t testing.TB) logr.Logger {
	if os.Getenv("TEMPLATEHOST_TEST_LOG") == "" {
		return logr.Discard()
	}
	return funcr.New(func(prefix, args string) { t.Log(prefix, args) }, funcr.Options{Verbosity: 1})
}
