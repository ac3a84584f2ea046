package main_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A hostile --chat-template-file over the real /v1/ API: every trap gets a 400 that
// says what went wrong, the server goes on serving (same worker), a render whose client
// leaves is stopped at once, and a template that fails its test render is refused at
// start.

// trapTemplate renders ChatML, unless the last message names a trap.
const trapTemplate = `{%- set last = messages[-1].content -%}
{%- if last == 'spin' -%}{%- for i in range(100000) -%}{%- for j in range(100000) -%}{%- endfor -%}{%- endfor -%}
{%- elif last.startswith('grow') -%}{%- for i in range(10000000) -%}{{ last * 1000 }}{%- endfor -%}
{%- elif last == 'negative' -%}{{ 'x' * -1 }}
{%- elif last == 'recurse' -%}{%- macro f(n) -%}{{ f(n + 1) }}{%- endmacro -%}{{ f(0) }}
{%- elif last == 'double' -%}{%- set ns = namespace(s='x') -%}{%- for i in range(64) -%}{%- set ns.s = ns.s ~ ns.s -%}{%- endfor -%}{{ ns.s }}
{%- elif last == 'raise' -%}{{ raise_exception('this template refuses ' ~ last) }}
{%- endif -%}
{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
`

func writeTemplate(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "chat.jinja")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func templateConfig(path, timeout string) map[string]any {
	return map[string]any{"chat-template-file": path, "chat-template-eos": "<|im_end|>", "chat-template-timeout": timeout,
		"chat-template-max-memory": 64 << 20, "chat-template-max-output": 4 << 20}
}

func TestOpenAIHostileChatTemplate(t *testing.T) {
	// Under a virtual memory limit, as the attacker ran it: the server must
	// not run out of memory, whatever a template does.
	s := startServer(t, "1.3", serverOpts{config: templateConfig(writeTemplate(t, trapTemplate), "1s"),
		wrap: []string{"sh", "-c", `ulimit -v 8388608 && exec "$@"`, "sh"}})
	hello := []msg{{"role": "user", "content": "Hello"}}
	first := s.chat(hello, nil)
	before := first.content()
	// Which bound a growing template breaks first, memory or time, depends on the
	// machine's speed; either must be named.
	const grows = "more memory than --chat-template-max-memory 67108864|ran longer than --chat-template-timeout 1s"
	for _, tt := range []struct{ trap, says string }{
		{"spin", "ran longer than --chat-template-timeout 1s"},
		{"grow" + strings.Repeat("!", 1000), grows},
		{"negative", "panicked: strings: negative Repeat count"},
		{"recurse", "recursed too deeply"},
		{"double", grows},
		{"raise", "this template refuses raise"},
	} {
		name := tt.trap[:min(len(tt.trap), 8)]
		resp, body := s.v1(http.MethodPost, "/v1/chat/completions", chatBody([]msg{{"role": "user", "content": tt.trap}}, nil))
		if resp.StatusCode != http.StatusBadRequest || !saysOneOf(body, tt.says) || !strings.Contains(body, `"param":"messages"`) {
			t.Errorf("%s: %d %s, want 400 saying %q", name, resp.StatusCode, body, tt.says)
		}
		if c := s.chat(hello, nil); c.content() != before {
			t.Errorf("after %s: %q, before: %q", name, c.content(), before)
		}
	}
	if code, st := s.status(); code != http.StatusOK || st["worker_restarts"] != 0.0 {
		t.Errorf("readyz after the traps: %d %v", code, st)
	}
	if n := len(renderers(t, s)); n > 2 {
		t.Errorf("%d renderer processes, --chat-template-renderers is 2", n)
	}
}

// TestOpenAIChatTemplateStopsWhenTheClientLeaves: a render that would loop for hours
// (the timeout is 10 minutes) has its renderer killed as soon as its client goes.
func TestOpenAIChatTemplateStopsWhenTheClientLeaves(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: templateConfig(writeTemplate(t, trapTemplate), "10m")})
	pids := renderers(t, s)
	if len(pids) != 2 {
		t.Fatalf("renderers after start: %v, want --chat-template-renderers (2)", pids)
	}
	base := map[int]int{}
	for _, pid := range pids {
		base[pid] = cpuTicks(t, pid)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/chat/completions",
			strings.NewReader(chatBody([]msg{{"role": "user", "content": "spin"}}, nil)))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}()
	spinning := 0
	s.eventually("a renderer to loop", waitTimeout, func() bool {
		for _, pid := range pids {
			if cpuTicks(t, pid) > base[pid]+10 {
				spinning = pid
				return true
			}
		}
		return false
	})
	cancel()
	<-done
	s.eventually("the looping renderer killed", waitTimeout, func() bool { return syscall.Kill(spinning, 0) != nil })
	if !strings.Contains(s.logs.String(), "the request ended (its client left") {
		t.Error("the server did not log why it stopped the renderer")
	}
	if c := s.chat([]msg{{"role": "user", "content": "Hello"}}, nil); c.content() == "" {
		t.Error("no reply after the client left")
	}
}

// TestChatTemplateRefusedAtStart: templates that do not compile, raise, loop or leave
// the messages out stop the server at start with the reason.
func TestChatTemplateRefusedAtStart(t *testing.T) {
	for name, tt := range map[string]struct{ src, says string }{
		"loops":       {`{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`, "ran longer than --chat-template-timeout"},
		"broken":      {`{% for m in messages %}`, "jinja parse"},
		"raises":      {`{% if messages[0].role != 'system' %}{{ raise_exception('System role not supported') }}{% endif %}`, "System role not supported"},
		"no messages": {`<|im_start|>assistant`, "lacks the last user message"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.CommandContext(context.Background(), serverBin, "serve", "--listen", "127.0.0.1:0", "--probe-listen", "", //nolint:gosec // the test's binary
				"--chat-template-file", writeTemplate(t, tt.src), "--chat-template-eos", "</s>", "--chat-template-timeout", "500ms", "--log-format", "text")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 || !strings.Contains(out.String(), "is refused") || !strings.Contains(out.String(), tt.says) {
				t.Errorf("exit %v, output:\n%s\nwant a refusal saying %q", err, out.String(), tt.says)
			}
		})
	}
}

func saysOneOf(body, alternatives string) bool {
	for _, a := range strings.Split(alternatives, "|") {
		if strings.Contains(body, a) {
			return true
		}
	}
	return false
}

// renderers lists the server's renderer processes.
func renderers(t *testing.T, s *server) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err1 := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		cmdline, err2 := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err1 != nil || err2 != nil || !bytes.Contains(cmdline, []byte("render-chat-template")) {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
		if ppid, _ := strconv.Atoi(f[1]); ppid == s.cmd.Process.Pid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cpuTicks is the CPU time pid has used, in clock ticks (utime + stime).
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return u + st
}
