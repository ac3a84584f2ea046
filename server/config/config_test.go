package config

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

func parse(t *testing.T, file string, args ...string) (*Serve, error) {
	t.Helper()
	var o Serve
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.BindFlags(fs)
	if file != "" {
		name := "server.json"
		if !strings.HasPrefix(strings.TrimSpace(file), "{") {
			name = "server.yaml"
		}
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	return &o, o.Parse(args)
}

var defaults = runtime.Param{
	MaxContextLen: 512, MaxNewTokens: -1, TopK: 40, NKeep: -1, TopP: 0.9, Temperature: 0.8, RepeatPenalty: 1.1,
	MirostatTau: 5, MirostatEta: 0.1, SkipSpecialToken: true,
	Extend: runtime.ExtendParam{EmbedFlash: 1, EnabledCPUsNum: 4, EnabledCPUsMask: 0xF0},
}

// The example of docs/design.md, as the operator writes it.
const operatorFile = `{
  "model": "/models/qwen2.5-1.5b.rkllm",
  "model-dir": "/models",
  "runtime-abi": "1.3",
  "runtime-lib": "librkllmrt.so",
  "listen": ":8080",
  "socket": "/run/rkllm/rkllm.sock",
  "max-context-len": 4096,
  "top-p": "0.9",
  "lora": ["chat=/models/chat.lora:1.0"],
  "max-queue": 16,
  "request-timeout": "5m",
  "shutdown-timeout": "30s",
  "enabled-cpus-mask": "0xF0",
  "n-batch": 1,
  "skip-special-token": false,
  "chat-template-system": "You are helpful."
}`

func TestOperatorFile(t *testing.T) {
	o, err := parse(t, operatorFile)
	if err != nil {
		t.Fatal(err)
	}
	if o.Model != "/models/qwen2.5-1.5b.rkllm" || o.ModelDir != "/models" || o.Socket != "/run/rkllm/rkllm.sock" ||
		o.MaxQueue != 16 || o.RequestTimeout != 5*time.Minute || o.ShutdownTimeout != 30*time.Second {
		t.Errorf("options %+v", o)
	}
	p := o.ModelParam(defaults)
	want := defaults
	want.ModelPath = "/models/qwen2.5-1.5b.rkllm"
	want.MaxContextLen = 4096
	want.SkipSpecialToken = false
	want.Extend.NBatch = 1
	if p != want {
		t.Errorf("param\n got %+v\nwant %+v", p, want)
	}
	loras, err := o.LoraAdapters()
	if err != nil || len(loras) != 1 || loras[0] != (runtime.LoraAdapter{Name: "chat", Path: "/models/chat.lora", Scale: 1}) {
		t.Errorf("loras %+v %v", loras, err)
	}
	sys, _, _, ok := o.ChatTemplate()
	if !ok || sys != "You are helpful." {
		t.Errorf("chat template %q %v", sys, ok)
	}
}

func TestCommandLineWins(t *testing.T) {
	o, err := parse(t, "max-queue: 4\ntop-p: 0.5\nlora:\n  - a=/m/a.lora:0.25\n  - b=/m/b.lora\n", "--max-queue=9", "--top-k=7")
	if err != nil {
		t.Fatal(err)
	}
	if o.MaxQueue != 9 {
		t.Errorf("max-queue %d, want the flag's 9", o.MaxQueue)
	}
	p := o.ModelParam(defaults)
	if p.TopP != 0.5 || p.TopK != 7 || p.Temperature != 0.8 {
		t.Errorf("param %+v", p)
	}
	loras, _ := o.LoraAdapters()
	if len(loras) != 2 || loras[0].Scale != 0.25 || loras[1].Scale != 1 || loras[1].Path != "/m/b.lora" {
		t.Errorf("loras %+v", loras)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name, file string
		args       []string
		want       string
	}{
		{"unknown key", `{"mdoel": "x"}`, nil, `unknown key "mdoel"`},
		{"config key in file", `{"config": "x"}`, nil, `unknown key "config"`},
		{"list for a scalar", `{"model": ["a"]}`, nil, `a list is only allowed for a repeatable flag`},
		{"bad number", `{"max-queue": "many"}`, nil, `key "max-queue"`},
		{"bad yaml", "model: [", nil, "not JSON or YAML"},
		{"bad abi", ``, []string{"--runtime-abi=2.0"}, "unknown runtime ABI"},
		{"bad admin", ``, []string{"--admin=everyone"}, "--admin"},
		{"bad lora", ``, []string{"--lora=nopath"}, "NAME=PATH[:SCALE]"},
		{"top-p range", `{"top-p": "1.5"}`, nil, "--top-p 1.5"},
		{"n-batch range", ``, []string{"--n-batch=0"}, "--n-batch 0"},
		{"max-context-len range", ``, []string{"--max-context-len=0"}, "--max-context-len 0: must be at least 1"},
		{"n-keep past the context", `{"max-context-len": 4096}`, []string{"--n-keep=5000"}, "--n-keep 5000: more than --max-context-len 4096"},
		{"negative top-k", ``, []string{"--top-k=-1"}, "--top-k -1"},
		{"negative temperature", `{"temperature": -0.5}`, nil, "--temperature -0.5"},
		{"mirostat range", ``, []string{"--mirostat=3"}, "--mirostat 3"},
		{"nothing to listen on", ``, []string{"--listen="}, "no way to be reached"},
		{"log level", ``, []string{"--log-level=loud"}, "--log-level"},
		{"positional", ``, []string{"serve"}, `unexpected argument "serve"`},
		{"unknown preset", `{"chat-template": "vicuna"}`, nil, `--chat-template: unknown chat template preset "vicuna"`},
		{"two templates", `{"chat-template": "llama3", "chat-template-custom": {"user_prefix": "U", "assistant_prefix": "A"}}`, nil, "give one"},
		{"bad custom template", `{"chat-template-custom": {"user_prefx": "U"}}`, nil, "--chat-template-custom"},
		{"jinja without eos", ``, []string{"--chat-template-file=/nonexistent/t.jinja"}, "--chat-template-file"},
		{"no renderers", ``, []string{"--chat-template-renderers=0"}, "--chat-template-renderers must be positive"},
		{"no render time", `{"chat-template-timeout": "0s"}`, nil, "--chat-template-timeout"},
		{"renderer memory too small", ``, []string{"--chat-template-max-memory=1000"}, "--chat-template-max-memory must be at least"},
		{"zero prefill rate", `{"min-prefill-rate": 0}`, nil, "--min-prefill-rate 0: must be more than 0"},
		{"negative prefill rate", ``, []string{"--min-prefill-rate=-5"}, "--min-prefill-rate -5"},
		{"NaN prefill rate", ``, []string{"--min-prefill-rate=NaN"}, "--min-prefill-rate NaN"},
		{"tiny frame", `{"max-frame-bytes": 1024}`, nil, "--max-frame-bytes 1024: must be between 65536"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.file, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestOnlySetFlagsOverrideDefaults(t *testing.T) {
	o, err := parse(t, "")
	if err != nil {
		t.Fatal(err)
	}
	p := o.ModelParam(defaults)
	want := defaults
	want.Extend.NBatch = 1
	if p != want {
		t.Errorf("param without flags\n got %+v\nwant %+v", p, want)
	}
	if _, _, _, ok := o.ChatTemplate(); ok {
		t.Error("chat template set without flags")
	}
}

func TestAdminOn(t *testing.T) {
	for admin, want := range map[string][2]bool{
		AdminSocket: {false, true}, AdminHTTP: {true, false}, AdminAll: {true, true}, AdminNone: {false, false},
	} {
		o := &Serve{Admin: admin}
		if got := [2]bool{o.AdminOn("http"), o.AdminOn("unix")}; got != want {
			t.Errorf("--admin %s: http/unix %v, want %v", admin, got, want)
		}
	}
}

// TestDocumentedDefaults: every flag row of docs/server.md with a default states the
// flag's real default, and every bound of the server is documented there.
func TestDocumentedDefaults(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "server.md"))
	if err != nil {
		t.Fatal(err)
	}
	var o Serve
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.BindFlags(fs)
	documented := map[string]bool{}
	withDefaults := false // in a "| flag | default | meaning |" table
	for _, line := range strings.Split(string(doc), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) >= 4 && strings.TrimSpace(cells[1]) == "flag" {
			withDefaults = strings.TrimSpace(cells[2]) == "default"
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[min(1, len(cells)-1)]), "`-")
		if len(cells) < 4 || !withDefaults || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`--") || strings.ContainsAny(name, "` ") {
			continue
		}
		def := strings.TrimSpace(cells[2])
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("docs/server.md documents --%s, which serve does not have", name)
			continue
		}
		documented[name] = true
		if !strings.HasPrefix(def, "`") {
			continue
		}
		want := strings.Trim(def, "`")
		got := f.DefValue
		if f.Value.Type() == "duration" {
			w, err1 := time.ParseDuration(want)
			g, err2 := time.ParseDuration(got)
			if err1 == nil && err2 == nil && w == g {
				continue
			}
		}
		if got == "" && strings.Contains(f.Usage, "(default "+want+")") {
			continue // empty means the documented default
		}
		if got != want {
			t.Errorf("--%s: docs/server.md says the default is %s, the flag's is %s", name, want, got)
		}
	}
	for _, name := range []string{"max-connections", "reserved-fds", "max-request-bytes", "max-json-depth", "max-string-bytes",
		"max-array-len", "max-batch", "max-queue", "max-inflight-per-connection", "max-inflight-bytes", "client-buffer-bytes",
		"request-timeout", "write-timeout", "idle-timeout", "read-header-timeout", "body-read-timeout",
		"token-stall-timeout", "min-prefill-rate", "abort-timeout", "shutdown-timeout", "max-frame-bytes"} {
		if !documented[name] {
			t.Errorf("--%s is not in docs/server.md", name)
		}
	}
}

// The OpenAI API's chat template: a preset, a custom template given as an object in
// the config file, and the runtime template JSON-RPC runs fall back to.
func TestChatTemplates(t *testing.T) {
	o, err := parse(t, `{"chat-template": "qwen2.5", "served-model-name": "qwen", "prefix-reuse": false}`)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := o.Template()
	if err != nil || tmpl.Name() != "qwen2.5" || o.ServedModelName != "qwen" || o.PrefixReuse {
		t.Fatalf("preset: %v %v %+v", tmpl, err, o)
	}
	sys, pre, post, ok := o.RuntimeFallbackTemplate()
	if !ok || sys != "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" ||
		pre != "<|im_start|>user\n" || post != "<|im_end|>\n<|im_start|>assistant\n" {
		t.Errorf("fallback %q %q %q %v", sys, pre, post, ok)
	}
	// --chat-template-* set the runtime's template: no fallback needed.
	o, _ = parse(t, `{"chat-template": "qwen2.5", "chat-template-prefix": "<u>"}`)
	if _, _, _, ok := o.RuntimeFallbackTemplate(); ok {
		t.Error("a fallback despite --chat-template-prefix")
	}
	o, err = parse(t, "chat-template-custom:\n  user_prefix: 'U: '\n  assistant_prefix: 'A: '\n  eos: '</s>'\n")
	if err != nil {
		t.Fatal(err)
	}
	if tmpl, err := o.Template(); err != nil || tmpl.Name() != "custom" || tmpl.EndOfReply() != "</s>" {
		t.Errorf("custom from YAML: %v %v", tmpl, err)
	}
	o, _ = parse(t, ``)
	if tmpl, _ := o.Template(); tmpl.Name() != "chatml" || !o.PrefixReuse {
		t.Errorf("defaults: %s, reuse %v", tmpl.Name(), o.PrefixReuse)
	}
	if _, _, _, ok := o.RuntimeFallbackTemplate(); ok {
		t.Error("a fallback without a configured preset: the model's family is unknown")
	}
}

// TestFilesThatAreNotRegular: a configuration file, a chat template or an API key file
// that is a FIFO (or a folder) is refused at start, saying what it is: reading a FIFO
// would block the start, and the shutdown, until something writes to it.
func TestFilesThatAreNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--config", fifo}, {"--chat-template-file", fifo, "--chat-template-eos", "</s>"}, {"--config", dir}} {
		if _, err := parse(t, "", args...); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("%v: %v, want a refusal saying it is not a regular file", args, err)
		}
	}
	o, err := parse(t, "", "--api-key-file", fifo)
	if err == nil {
		_, err = o.APIKeys()
	}
	if err == nil || !strings.Contains(err.Error(), "named pipe (FIFO)") {
		t.Errorf("--api-key-file naming a FIFO: %v", err)
	}
}
