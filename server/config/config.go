// Package config holds the options of `rkllm-server serve`: their flags, and the
// configuration file (--config) that sets the same options by the flags' long names,
// as the operator writes it. A flag given on the command line wins over the file.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/embedding"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/memlimit"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
	"github.com/rkllm-operator/rkllm-operator/server/templatehost"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// Admin values: which transports allow state-changing methods.
const (
	AdminSocket = "socket"
	AdminHTTP   = "http"
	AdminAll    = "all"
	AdminNone   = "none"
)

// ShutdownMargin is how long after --shutdown-timeout rkllm-server may take to exit on
// SIGTERM, whatever its worker and clients do: the supervisor's grace to stop the worker
// (at most 2 s, then it is killed and reaped), then flushing the last responses in what
// is left. A pod's termination grace period must cover the preStop pause plus
// ExitBudget (the operator's does).
const ShutdownMargin = 5 * time.Second

// ExitBudget is the longest the server takes to exit after SIGTERM.
func (o *Serve) ExitBudget() time.Duration { return o.ShutdownTimeout + ShutdownMargin }

// DefaultMaxWorkerFailures is --max-worker-failures' default: with the restart backoff
// (0.5 s doubling) five failed workers take about 8 s of retries, enough to ride out a
// one-off fault and short enough that a crash loop reaches the kubelet soon.
const DefaultMaxWorkerFailures = 5

// Log formats.
const (
	LogJSON = "json"
	LogText = "text"
)

// Serve is the configuration of `rkllm-server serve`.
type Serve struct {
	// ConfigFile is --config: a JSON or YAML object keyed by the long flag names.
	ConfigFile string

	Model      string
	ModelDir   string
	RuntimeLib string
	RuntimeABI string
	// EmbeddingWidth is the model's embedding width when known; 0 learns it at load.
	EmbeddingWidth int
	// VocabSize is the model's vocabulary size when known; 0 learns it at load.
	VocabSize int

	// Param holds the RKLLMParam flags; only those set (Changed) override the runtime's
	// defaults.
	Param runtime.Param

	ChatTemplateSystem  string
	ChatTemplatePrefix  string
	ChatTemplatePostfix string
	Loras               []string
	PromptCache         string

	// The OpenAI-compatible API (/v1/).
	ServedModelName    string
	ChatTemplateName   string
	ChatTemplateFile   string
	ChatTemplateEOS    string
	ChatTemplateCustom string
	PrefixReuse        bool
	// Embeddings (/v1/embeddings, /api/embed): pooling ("" picks it by the chat
	// template's family), raw vectors instead of unit length, inputs per request.
	EmbeddingPooling   string
	EmbeddingNormalize bool
	MaxEmbeddingInputs int
	// Bounds of --chat-template-file renders (server/templatehost).
	ChatTemplateTimeout   time.Duration
	ChatTemplateMaxMemory int64
	ChatTemplateMaxOutput int64
	ChatTemplateRenderers int

	Listen          string
	ProbeListen     string
	Socket          string
	Admin           string
	APIKeyFile      string
	MaxConnections  int
	MaxRequestBytes int64
	MaxQueue        int
	// Message and connection bounds (docs/server.md, "Limits").
	MaxJSONDepth             int
	MaxStringBytes           int
	MaxArrayLen              int
	MaxBatch                 int
	MaxInflightPerConnection int
	MaxInflightBytes         int64
	ClientBufferBytes        int
	ReservedFDs              int
	MaxFrameBytes            int
	MemoryLimit              int64
	IdleTimeout              time.Duration
	ReadHeaderTimeout        time.Duration
	BodyReadTimeout          time.Duration

	RequestTimeout     time.Duration
	TokenStallTimeout  time.Duration
	MinPrefillRate     float64
	ShutdownTimeout    time.Duration
	AbortTimeout       time.Duration
	InitTimeout        time.Duration
	WorkerStartTimeout time.Duration
	RestartBackoffMin  time.Duration
	RestartBackoffMax  time.Duration
	MaxWorkerFailures  int
	WriteTimeout       time.Duration

	// TerminationMessagePath is where the reason of a failed exit is written (the
	// kubelet's terminationMessagePath); empty for nowhere.
	TerminationMessagePath string

	LogFormat string
	LogLevel  string

	fs *pflag.FlagSet
	// args are the command-line arguments Parse got, for Reload.
	args []string
}

// paramFlags are the flags that map to RKLLMParam fields.
var paramFlags = []string{
	"max-context-len", "max-new-tokens", "top-k", "n-keep", "top-p", "temperature", "repeat-penalty",
	"frequency-penalty", "presence-penalty", "mirostat", "mirostat-tau", "mirostat-eta",
	"skip-special-token", "ignore-eos-token", "img-start", "img-end", "img-content",
	"base-domain-id", "embed-flash", "enabled-cpus-num", "enabled-cpus-mask", "n-batch", "use-cross-attn",
}

// BindFlags registers the flags with their defaults.
func (o *Serve) BindFlags(fs *pflag.FlagSet) {
	o.fs = fs
	fs.StringVar(&o.ConfigFile, "config", "", "Configuration file (JSON or YAML) keyed by these flags' long names; flags on the command line win.")

	fs.StringVar(&o.Model, "model", "", "Model file (.rkllm) to load at start; without it clients load one with rkllm.init.")
	fs.StringVar(&o.ModelDir, "model-dir", "", "Folder that every path a client names (models, LoRA adapters, prompt caches) must be inside; empty refuses client paths.")
	fs.StringVar(&o.RuntimeLib, "runtime-lib", runtime.DefaultLibrary, "The RKLLM runtime library: a file name searched like dlopen(3) does, or a path.")
	fs.StringVar(&o.RuntimeABI, "runtime-abi", "1.3", "ABI of the runtime library: 1.2 (runtime 1.2.1-1.2.3) or 1.3 (runtime 1.3.0).")
	fs.IntVar(&o.EmbeddingWidth, "embedding-width", 0, "The models' embedding width (hidden size: the floats in one row of an embedding input); 0 learns it at each load from a one-token hidden-layer run.")
	fs.IntVar(&o.VocabSize, "vocab-size", 0, "The models' vocabulary size (token ids are 0 to this minus 1); 0 learns it at each load from a one-token logits run.")

	p := &o.Param
	fs.Int32Var(&p.MaxContextLen, "max-context-len", 0, "RKLLMParam.max_context_len (runtime default when not set).")
	fs.Int32Var(&p.MaxNewTokens, "max-new-tokens", 0, "RKLLMParam.max_new_tokens; <= 0 means no limit.")
	fs.Int32Var(&p.TopK, "top-k", 0, "RKLLMParam.top_k.")
	fs.Int32Var(&p.NKeep, "n-keep", 0, "RKLLMParam.n_keep: tokens kept when the context window shifts.")
	fs.Float32Var(&p.TopP, "top-p", 0, "RKLLMParam.top_p, 0-1.")
	fs.Float32Var(&p.Temperature, "temperature", 0, "RKLLMParam.temperature.")
	fs.Float32Var(&p.RepeatPenalty, "repeat-penalty", 0, "RKLLMParam.repeat_penalty.")
	fs.Float32Var(&p.FrequencyPenalty, "frequency-penalty", 0, "RKLLMParam.frequency_penalty.")
	fs.Float32Var(&p.PresencePenalty, "presence-penalty", 0, "RKLLMParam.presence_penalty.")
	fs.Int32Var(&p.Mirostat, "mirostat", 0, "RKLLMParam.mirostat: 0 off, 1 or 2.")
	fs.Float32Var(&p.MirostatTau, "mirostat-tau", 0, "RKLLMParam.mirostat_tau.")
	fs.Float32Var(&p.MirostatEta, "mirostat-eta", 0, "RKLLMParam.mirostat_eta.")
	fs.BoolVar(&p.SkipSpecialToken, "skip-special-token", false, "RKLLMParam.skip_special_token.")
	fs.BoolVar(&p.IgnoreEOSToken, "ignore-eos-token", false, "RKLLMParam.ignore_eos_token (ABI 1.3 only).")
	fs.StringVar(&p.ImgStart, "img-start", "", "RKLLMParam.img_start (ABI 1.2 only; 1.3 takes it per multimodal input).")
	fs.StringVar(&p.ImgEnd, "img-end", "", "RKLLMParam.img_end (ABI 1.2 only).")
	fs.StringVar(&p.ImgContent, "img-content", "", "RKLLMParam.img_content (ABI 1.2 only).")
	fs.Int32Var(&p.Extend.BaseDomainID, "base-domain-id", 0, "RKLLMExtendParam.base_domain_id: memory domain of the model.")
	fs.Int8Var(&p.Extend.EmbedFlash, "embed-flash", 0, "RKLLMExtendParam.embed_flash: 1 keeps the embedding table in the file.")
	fs.Int8Var(&p.Extend.EnabledCPUsNum, "enabled-cpus-num", 0, "RKLLMExtendParam.enabled_cpus_num: CPU threads.")
	fs.Uint32Var(&p.Extend.EnabledCPUsMask, "enabled-cpus-mask", 0, "RKLLMExtendParam.enabled_cpus_mask, such as 0xF0 (the big cores of an RK3588).")
	fs.Uint8Var(&p.Extend.NBatch, "n-batch", 1, "RKLLMExtendParam.n_batch: inputs per run, 1-100.")
	fs.Int8Var(&p.Extend.UseCrossAttn, "use-cross-attn", 0, "RKLLMExtendParam.use_cross_attn: 1 enables the cross-attention decoder.")

	fs.StringVar(&o.ChatTemplateSystem, "chat-template-system", "", "System prompt of the chat template set after the model loads (rkllm_set_chat_template).")
	fs.StringVar(&o.ChatTemplatePrefix, "chat-template-prefix", "", "Prompt prefix of the chat template.")
	fs.StringVar(&o.ChatTemplatePostfix, "chat-template-postfix", "", "Prompt postfix of the chat template.")
	fs.StringArrayVar(&o.Loras, "lora", nil, "LoRA adapter to load after the model, NAME=PATH[:SCALE] (scale 1 by default); repeatable.")
	fs.StringVar(&o.PromptCache, "prompt-cache", "", "Prompt cache file to load after the model.")

	fs.StringVar(&o.ServedModelName, "served-model-name", "", "Model id of the OpenAI-compatible API (/v1/) and the Ollama API (/api/); default: the model file's name without its extension.")
	fs.StringVar(&o.ChatTemplateName, "chat-template", "", "Chat template preset the OpenAI-compatible API renders conversations with: "+strings.Join(chattemplate.Presets(), ", ")+" (default "+chattemplate.Default+").")
	fs.StringVar(&o.ChatTemplateFile, "chat-template-file", "", "Hugging Face chat template for the OpenAI-compatible API: a Jinja file, or the model's tokenizer_config.json.")
	fs.StringVar(&o.ChatTemplateEOS, "chat-template-eos", "", "Text of the model's end-of-sequence token, for --chat-template-file (a tokenizer_config.json has it).")
	fs.StringVar(&o.ChatTemplateCustom, "chat-template-custom", "", "Custom chat template for the OpenAI-compatible API: a JSON object of turn strings (see docs/openai.md).")
	fs.DurationVar(&o.ChatTemplateTimeout, "chat-template-timeout", templatehost.DefaultTimeout, "Longest one render of --chat-template-file may take; past it the renderer process is killed and the request gets 400.")
	fs.Int64Var(&o.ChatTemplateMaxMemory, "chat-template-max-memory", templatehost.DefaultMaxMemory, "Memory in bytes one renderer process of --chat-template-file may take beyond its start; past it the renderer dies and the request gets 400.")
	fs.Int64Var(&o.ChatTemplateMaxOutput, "chat-template-max-output", templatehost.DefaultMaxOutput, "Largest prompt in bytes --chat-template-file may render (400 beyond).")
	fs.IntVar(&o.ChatTemplateRenderers, "chat-template-renderers", templatehost.DefaultRenderers, "Renderer processes of --chat-template-file; renders beyond them wait for one.")
	fs.BoolVar(&o.PrefixReuse, "prefix-reuse", true, "Reuse the KV cache when a conversation continues the previous one (feed only the new part).")
	fs.StringVar(&o.EmbeddingPooling, "embedding-pooling", "", "How embeddings pool an input's last hidden layer: mean, last or cls (default: last for the Qwen/ChatML templates, else mean).")
	fs.BoolVar(&o.EmbeddingNormalize, "embedding-normalize", true, "Scale embeddings to length 1 (L2); false returns them as pooled.")
	fs.IntVar(&o.MaxEmbeddingInputs, "max-embedding-inputs", 256, "Most inputs one embeddings request may hold (each is one prefill).")

	fs.StringVar(&o.Listen, "listen", ":8080", "HTTP listen address (/rpc, /livez, /readyz, /healthz, /metrics); empty disables HTTP.")
	fs.StringVar(&o.ProbeListen, "probe-listen", ":8081", "HTTP listen address of the probes alone (/livez, /readyz, /healthz, /metrics), which client connections cannot fill; empty serves them on --listen only.")
	fs.StringVar(&o.Socket, "socket", "", "Unix socket path for newline-delimited JSON-RPC, such as /run/rkllm/rkllm.sock; empty disables it.")
	fs.StringVar(&o.Admin, "admin", AdminSocket, "Where state-changing methods (init, destroy, load_lora, ...) are allowed: socket, http, all or none.")
	fs.StringVar(&o.APIKeyFile, "api-key-file", "", "File holding the API keys (one a line) of which HTTP clients must send one as 'Authorization: Bearer KEY'.")
	fs.IntVar(&o.MaxConnections, "max-connections", 2048, "Client connections held at once, over both transports; 0 means no limit.")
	fs.Int64Var(&o.MaxRequestBytes, "max-request-bytes", 16<<20, "Largest request message in bytes (an HTTP body, a socket line).")
	fs.IntVar(&o.MaxQueue, "max-queue", 0, "Requests that may wait for the model, if set; more are refused with -32002 at once. 0: no count (the queue is bounded by --max-inflight-bytes and --max-connections).")
	fs.IntVar(&o.MaxJSONDepth, "max-json-depth", jsonrpc.DefaultMaxDepth, "Deepest nesting of objects and arrays in a message (-32008 beyond).")
	fs.IntVar(&o.MaxStringBytes, "max-string-bytes", jsonrpc.DefaultMaxStringBytes, "Longest string in a message (a prompt, a base64 embedding), in bytes as sent (-32008 beyond).")
	fs.IntVar(&o.MaxArrayLen, "max-array-len", jsonrpc.DefaultMaxArrayLen, "Most elements of one array in a message (an embedding, a token list) (-32008 beyond).")
	fs.IntVar(&o.MaxBatch, "max-batch", jsonrpc.DefaultMaxBatch, "Most requests in one batch (-32008 beyond).")
	fs.IntVar(&o.MaxInflightPerConnection, "max-inflight-per-connection", jsonrpc.DefaultMaxPeerMessages, "Messages one socket connection may have in flight; more are answered -32002 at once.")
	fs.Int64Var(&o.MaxInflightBytes, "max-inflight-bytes", jsonrpc.DefaultMaxInflightBytes, "Memory that requests in flight (queued or running) may hold, over every transport and stage (body, decoded messages, prompt, tokens); a request that does not fit is answered -32002 (HTTP 429) at once.")
	fs.IntVar(&o.ClientBufferBytes, "client-buffer-bytes", outbuf.DefaultMaxBytes, "Bytes that may wait for one client to read them; a client further behind is cut off and its runs aborted.")
	fs.IntVar(&o.MaxFrameBytes, "max-frame-bytes", workerproto.DefaultMaxFrameBytes, "Largest message between the supervisor and its worker: a run's request, or one delivery of hidden states or logits; over it the request or the run fails with -32008.")
	fs.Int64Var(&o.MemoryLimit, "memory-limit", memlimit.DefaultLimit, "Soft limit of the Go heap of the supervisor and of the worker, each, in bytes (the runtime library's memory is not counted): the garbage collector works harder as a heap nears it. 0: none (GOMEMLIMIT from the environment then applies).")
	fs.IntVar(&o.ReservedFDs, "reserved-fds", 64, "File descriptors kept free: a connection that would leave fewer is refused with -32002 (0: no check).")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 5*time.Minute, "A connection with nothing in flight that sends nothing for this long is closed (HTTP keep-alive and the socket).")
	fs.DurationVar(&o.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "Longest an HTTP client may take to send its request headers.")
	fs.DurationVar(&o.BodyReadTimeout, "body-read-timeout", time.Minute, "Longest an HTTP client may take to send its request body.")

	fs.DurationVar(&o.RequestTimeout, "request-timeout", 10*time.Minute, "Longest a request may take, queueing included; 0 means no limit.")
	fs.DurationVar(&o.TokenStallTimeout, "token-stall-timeout", time.Minute, "Watchdog: a run that delivers no token for this long is aborted (before the first token, plus the prompt's prefill at --min-prefill-rate); a worker that shows no sign of life for this long plus --abort-timeout is killed.")
	fs.Float64Var(&o.MinPrefillRate, "min-prefill-rate", supervisor.DefaultMinPrefillRate, "Watchdog: the slowest prefill, in prompt tokens per second, allowed before the first token (the default suits the largest models an RK3588 runs).")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "On SIGTERM, how long the running generation may go on before it is aborted.")
	fs.DurationVar(&o.AbortTimeout, "abort-timeout", 10*time.Second, "How long an aborted run may take to stop before the worker is killed and restarted.")
	fs.DurationVar(&o.InitTimeout, "init-timeout", 10*time.Minute, "Longest rkllm_init may take before the worker is killed.")
	fs.DurationVar(&o.WorkerStartTimeout, "worker-start-timeout", 30*time.Second, "Longest the worker process may take to start and load the runtime library.")
	fs.DurationVar(&o.RestartBackoffMin, "restart-backoff-min", 500*time.Millisecond, "First delay before restarting a dead worker or retrying a failed model load; doubles each time.")
	fs.DurationVar(&o.RestartBackoffMax, "restart-backoff-max", 30*time.Second, "Longest delay between restarts.")
	fs.IntVar(&o.MaxWorkerFailures, "max-worker-failures", DefaultMaxWorkerFailures, "Workers in a row that may fail (crash, hang until killed, or fail to start), none of them up for a minute, before the server gives up and exits with status 1, so that its supervisor (the kubelet) sees the crash loop; 0 retries for ever.")
	fs.StringVar(&o.TerminationMessagePath, "termination-message-path", "", "File the reason of a failed exit is written to (the container's terminationMessagePath, /dev/termination-log, as the operator sets it); empty for none.")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", 30*time.Second, "Longest a client may take to accept one message (a socket message, a piece of an HTTP stream) before it is cut off and its run aborted.")

	fs.StringVar(&o.LogFormat, "log-format", LogJSON, "Log format: json or text.")
	fs.StringVar(&o.LogLevel, "log-level", "info", "Log level: error, info, debug, or a verbosity number (1 = debug).")
}

// retunableFlags are the options a running server takes from a changed configuration
// file without a restart: the sampling defaults and max_new_tokens, which runtime ABI
// 1.3 takes per run.
var retunableFlags = []string{
	"max-new-tokens", "top-k", "top-p", "temperature", "repeat-penalty", "frequency-penalty",
	"presence-penalty", "mirostat", "mirostat-tau", "mirostat-eta",
}

// RetunableFlags lists the options a running server takes from a changed configuration
// file (with runtime ABI 1.3); every other change needs a restart.
func RetunableFlags() []string { return append([]string(nil), retunableFlags...) }

// Parse parses args, then the configuration file for the flags args did not set.
func (o *Serve) Parse(args []string) error {
	o.args = append([]string(nil), args...)
	if err := o.fs.Parse(args); err != nil {
		return err
	}
	if o.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every option is a --flag", o.fs.Arg(0))
	}
	if o.ConfigFile != "" {
		if err := o.applyFile(o.ConfigFile); err != nil {
			return err
		}
	}
	return o.Validate()
}

// Reload parses the same command line again with the configuration file as it is now,
// into a new Serve: the running server's view of a changed file.
func (o *Serve) Reload() (*Serve, error) {
	n := &Serve{}
	fs := pflag.NewFlagSet(o.fs.Name(), pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	n.BindFlags(fs)
	if err := n.Parse(o.args); err != nil {
		return nil, err
	}
	return n, nil
}

// ChangedFlags lists the options whose value, or whether they are set at all (a
// runtime default against an explicit value), differs between o and n, in name order.
func (o *Serve) ChangedFlags(n *Serve) []string {
	var out []string
	o.fs.VisitAll(func(f *pflag.Flag) {
		g := n.fs.Lookup(f.Name)
		if g == nil || f.Value.String() != g.Value.String() || f.Changed != g.Changed {
			out = append(out, f.Name)
		}
	})
	return out
}

// applyFile sets, from the file, every flag the command line left unset.
func (o *Serve) applyFile(path string) error {
	raw, err := runtime.ReadRegularFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("config file %s: not JSON or YAML: %w", path, err)
	}
	var values map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := dec.Decode(&values); err != nil {
		return fmt.Errorf("config file %s: must be an object keyed by flag names: %w", path, err)
	}
	cmdline := map[string]bool{}
	o.fs.Visit(func(f *pflag.Flag) { cmdline[f.Name] = true })
	for _, key := range sortedKeys(values) {
		f := o.fs.Lookup(key)
		if f == nil || key == "config" {
			return fmt.Errorf("config file %s: unknown key %q: keys are the long flag names of rkllm-server serve (see docs/server.md)", path, key)
		}
		if cmdline[key] {
			continue
		}
		strs, err := flagStrings(values[key], f.Value.Type() == "stringArray")
		if err != nil {
			return fmt.Errorf("config file %s: key %q: %w", path, key, err)
		}
		for _, s := range strs {
			if err := o.fs.Set(key, s); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", path, key, err)
			}
		}
	}
	return nil
}

// flagStrings turns a config value into the strings the flag parses.
func flagStrings(v any, repeatable bool) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case json.Number:
		return []string{v.String()}, nil
	case bool:
		return []string{strconv.FormatBool(v)}, nil
	case map[string]any:
		// An object (chat-template-custom) is given to its flag as JSON.
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		return []string{string(b)}, nil
	case []any:
		if !repeatable {
			return nil, errors.New("a list is only allowed for a repeatable flag (lora)")
		}
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, err := flagStrings(e, false)
			if err != nil || len(s) != 1 {
				return nil, errors.New("list entries must be strings")
			}
			out = append(out, s[0])
		}
		return out, nil
	}
	return nil, fmt.Errorf("value must be a string, number, boolean or (chat-template-custom) object, not %T", v)
}

// Validate checks the values that do not depend on the runtime.
func (o *Serve) Validate() error {
	for _, check := range []func() error{o.validateChoices, o.validateParam, o.validateLimits, o.validateWatchdog, o.validateFiles, o.validateTemplate} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// validateChoices checks the flags that take one of a set of values.
func (o *Serve) validateChoices() error {
	if _, err := runtime.ParseABI(o.RuntimeABI); err != nil {
		return fmt.Errorf("--runtime-abi: %w", err)
	}
	switch o.Admin {
	case AdminSocket, AdminHTTP, AdminAll, AdminNone:
	default:
		return fmt.Errorf("--admin %q: use socket, http, all or none", o.Admin)
	}
	if o.EmbeddingPooling != "" {
		if _, err := embedding.ParsePooling(o.EmbeddingPooling); err != nil {
			return fmt.Errorf("--embedding-pooling: %w", err)
		}
	}
	switch o.LogFormat {
	case LogJSON, LogText:
	default:
		return fmt.Errorf("--log-format %q: use json or text", o.LogFormat)
	}
	if _, err := ParseLogLevel(o.LogLevel); err != nil {
		return err
	}
	if o.Listen == "" && o.Socket == "" {
		return errors.New("--listen and --socket are both empty: the server would have no way to be reached")
	}
	return nil
}

// validateParam checks the RKLLMParam flags that were set.
func (o *Serve) validateParam() error {
	if _, err := o.LoraAdapters(); err != nil {
		return err
	}
	p := &o.Param
	// The rules rkllm.init applies (server/rkllmrpc), for the flags that were set.
	for _, c := range []struct {
		flag string
		bad  bool
		rule string
	}{
		{"top-p", p.TopP < 0 || p.TopP > 1, fmt.Sprintf("--top-p %g: must be between 0 and 1", p.TopP)},
		{"n-batch", p.Extend.NBatch < 1 || p.Extend.NBatch > 100, fmt.Sprintf("--n-batch %d: must be between 1 and 100", p.Extend.NBatch)},
		{"max-context-len", p.MaxContextLen < 1, fmt.Sprintf("--max-context-len %d: must be at least 1", p.MaxContextLen)},
		{"n-keep", o.changed("max-context-len") && p.NKeep > p.MaxContextLen,
			fmt.Sprintf("--n-keep %d: more than --max-context-len %d (the tokens kept when the context window shifts are part of it)", p.NKeep, p.MaxContextLen)},
		{"top-k", p.TopK < 0, fmt.Sprintf("--top-k %d: must not be negative", p.TopK)},
		{"temperature", p.Temperature < 0, fmt.Sprintf("--temperature %g: must not be negative", p.Temperature)},
		{"mirostat", p.Mirostat < 0 || p.Mirostat > 2, fmt.Sprintf("--mirostat %d: must be 0 (off), 1 or 2", p.Mirostat)},
	} {
		if o.changed(c.flag) && c.bad {
			return errors.New(c.rule)
		}
	}
	return nil
}

// validateFiles refuses a configured model, LoRA adapter or prompt cache that exists
// but is not a regular file: the runtime would block opening a FIFO or a device until
// --init-timeout, and fail on a folder. A file that does not exist yet is left to the
// load, which reports it and retries.
func (o *Serve) validateFiles() error {
	files := []struct{ flag, path string }{{"model", o.Model}, {"prompt-cache", o.PromptCache}}
	loras, err := o.LoraAdapters()
	if err != nil {
		return err
	}
	for _, l := range loras {
		files = append(files, struct{ flag, path string }{"lora", l.Path})
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := runtime.CheckFile(f.path); err != nil {
			return fmt.Errorf("--%s: %w", f.flag, err)
		}
	}
	return nil
}

// validateLimits checks sizes and durations.
func (o *Serve) validateLimits() error {
	if o.MaxQueue < 0 {
		return fmt.Errorf("--max-queue %d: must be 0 (no count) or more", o.MaxQueue)
	}
	if o.MaxWorkerFailures < 0 {
		return fmt.Errorf("--max-worker-failures %d: must be 0 (retry for ever) or more", o.MaxWorkerFailures)
	}
	if o.MaxRequestBytes < 1 || o.MaxRequestBytes > 1<<30 {
		return fmt.Errorf("--max-request-bytes %d: must be between 1 and 1 GiB", o.MaxRequestBytes)
	}
	if o.ShutdownTimeout <= 0 || o.TokenStallTimeout <= 0 || o.AbortTimeout <= 0 {
		return errors.New("--shutdown-timeout, --token-stall-timeout and --abort-timeout must be positive")
	}
	for _, b := range []struct {
		flag      string
		v, lo, hi int64
	}{
		{"max-json-depth", int64(o.MaxJSONDepth), 2, 1000},
		{"max-string-bytes", int64(o.MaxStringBytes), 1, 1 << 30},
		{"max-array-len", int64(o.MaxArrayLen), 1, 1 << 30},
		{"max-batch", int64(o.MaxBatch), 1, 100000},
		{"max-inflight-per-connection", int64(o.MaxInflightPerConnection), 1, 100000},
		{"max-inflight-bytes", o.MaxInflightBytes, 1, 1 << 40},
		{"client-buffer-bytes", int64(o.ClientBufferBytes), 1024, 1 << 30},
		{"reserved-fds", int64(o.ReservedFDs), 0, 1 << 20},
		{"embedding-width", int64(o.EmbeddingWidth), 0, 1 << 20},
		{"vocab-size", int64(o.VocabSize), 0, 1 << 24},
		{"max-frame-bytes", int64(o.MaxFrameBytes), 64 << 10, 1<<31 - 1},
		{"memory-limit", o.MemoryLimit, 0, 1 << 40},
		{"max-embedding-inputs", int64(o.MaxEmbeddingInputs), 1, 1 << 16},
	} {
		if b.v < b.lo || b.v > b.hi {
			return fmt.Errorf("--%s %d: must be between %d and %d", b.flag, b.v, b.lo, b.hi)
		}
	}
	if o.IdleTimeout <= 0 || o.ReadHeaderTimeout <= 0 || o.BodyReadTimeout <= 0 || o.WriteTimeout <= 0 {
		return errors.New("--idle-timeout, --read-header-timeout, --body-read-timeout and --write-timeout must be positive")
	}
	return nil
}

// validateWatchdog checks the watchdog's prefill rate.
func (o *Serve) validateWatchdog() error {
	if !(o.MinPrefillRate > 0 && o.MinPrefillRate <= 1e6) {
		return fmt.Errorf("--min-prefill-rate %g: must be more than 0 and at most 1000000 tokens per second", o.MinPrefillRate)
	}
	return nil
}

// validateTemplate checks that at most one chat template is configured, that it loads
// (a Jinja file is only read: it is compiled and test-rendered by its renderer
// processes when the server starts), and the bounds of Jinja renders.
func (o *Serve) validateTemplate() error {
	n := 0
	for _, v := range []string{o.ChatTemplateName, o.ChatTemplateFile, o.ChatTemplateCustom} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return errors.New("--chat-template, --chat-template-file and --chat-template-custom each choose the chat template: give one")
	}
	if o.ChatTemplateTimeout <= 0 || o.ChatTemplateMaxOutput <= 0 || o.ChatTemplateRenderers <= 0 {
		return errors.New("--chat-template-timeout, --chat-template-max-output and --chat-template-renderers must be positive")
	}
	if o.ChatTemplateMaxMemory < minRendererMemory {
		return fmt.Errorf("--chat-template-max-memory must be at least %d (a renderer needs that much to start)", minRendererMemory)
	}
	if o.ChatTemplateFile != "" {
		_, err := o.JinjaTemplate()
		return err
	}
	_, err := o.Template()
	return err
}

// minRendererMemory is the least --chat-template-max-memory: what a renderer process
// needs beyond its start to decode a conversation and run the Go runtime.
const minRendererMemory = 16 << 20

// Template returns the chat template of the OpenAI-compatible API when it renders in
// the server's process: a preset or a custom template. With --chat-template-file it
// returns an error: that template runs in renderer processes (JinjaTemplate).
func (o *Serve) Template() (chattemplate.Template, error) {
	switch {
	case o.ChatTemplateFile != "":
		return nil, errors.New("--chat-template-file renders in renderer processes: see JinjaTemplate")
	case o.ChatTemplateCustom != "":
		t, err := chattemplate.ParseCustom(o.ChatTemplateCustom)
		if err != nil {
			return nil, fmt.Errorf("--chat-template-custom: %w", err)
		}
		return t, nil
	case o.ChatTemplateName != "":
		t, err := chattemplate.Preset(o.ChatTemplateName)
		if err != nil {
			return nil, fmt.Errorf("--chat-template: %w", err)
		}
		return t, nil
	}
	return chattemplate.Preset(chattemplate.Default)
}

// JinjaTemplate reads --chat-template-file without compiling it (compiling runs the
// template library on text from outside, which only renderer processes do); nil when
// the flag is not set.
func (o *Serve) JinjaTemplate() (*chattemplate.JinjaSource, error) {
	if o.ChatTemplateFile == "" {
		return nil, nil
	}
	src, err := chattemplate.ReadJinja(o.ChatTemplateFile, o.ChatTemplateEOS)
	if err != nil {
		return nil, fmt.Errorf("--chat-template-file: %w", err)
	}
	return src, nil
}

// Pooling is how embeddings pool: --embedding-pooling, else the default of the chat
// template's family (a preset's; mean for custom and Jinja templates).
func (o *Serve) Pooling() embedding.Pooling {
	if p, err := embedding.ParsePooling(o.EmbeddingPooling); err == nil {
		return p
	}
	if o.ChatTemplateFile != "" || o.ChatTemplateCustom != "" {
		return embedding.Mean
	}
	name := o.ChatTemplateName
	if name == "" {
		name = chattemplate.Default
	}
	return embedding.DefaultPooling(strings.ToLower(name))
}

// RuntimeFallbackTemplate is the runtime chat template JSON-RPC runs get after the
// OpenAI API switched the model's own off: the configured preset's (or custom
// template's) equivalent, unless --chat-template-* set one. ok is false when there is
// none (no preset configured: the model's family is unknown).
func (o *Serve) RuntimeFallbackTemplate() (system, prefix, postfix string, ok bool) {
	if _, _, _, set := o.ChatTemplate(); set || o.ChatTemplateName == "" && o.ChatTemplateCustom == "" {
		return "", "", "", false
	}
	t, err := o.Template()
	if err != nil {
		return "", "", "", false
	}
	turns, isTurns := t.(*chattemplate.Turns)
	if !isTurns {
		return "", "", "", false
	}
	system, prefix, postfix = turns.RuntimeTemplate()
	return system, prefix, postfix, true
}

func (o *Serve) changed(name string) bool { return o.fs != nil && o.fs.Changed(name) }

// ModelParam returns the init parameters of --model: the runtime's defaults with every
// RKLLMParam flag that was set (on the command line or in the file) applied.
func (o *Serve) ModelParam(defaults runtime.Param) runtime.Param {
	p := defaults
	p.ModelPath = o.Model
	if p.Extend.NBatch == 0 {
		p.Extend.NBatch = 1 // undocumented in the runtime; the fact sheet says to set it
	}
	set := func(name string, apply func()) {
		if o.changed(name) {
			apply()
		}
	}
	f := &o.Param
	set("max-context-len", func() { p.MaxContextLen = f.MaxContextLen })
	set("max-new-tokens", func() { p.MaxNewTokens = f.MaxNewTokens })
	set("top-k", func() { p.TopK = f.TopK })
	set("n-keep", func() { p.NKeep = f.NKeep })
	set("top-p", func() { p.TopP = f.TopP })
	set("temperature", func() { p.Temperature = f.Temperature })
	set("repeat-penalty", func() { p.RepeatPenalty = f.RepeatPenalty })
	set("frequency-penalty", func() { p.FrequencyPenalty = f.FrequencyPenalty })
	set("presence-penalty", func() { p.PresencePenalty = f.PresencePenalty })
	set("mirostat", func() { p.Mirostat = f.Mirostat })
	set("mirostat-tau", func() { p.MirostatTau = f.MirostatTau })
	set("mirostat-eta", func() { p.MirostatEta = f.MirostatEta })
	set("skip-special-token", func() { p.SkipSpecialToken = f.SkipSpecialToken })
	set("ignore-eos-token", func() { p.IgnoreEOSToken = f.IgnoreEOSToken })
	set("img-start", func() { p.ImgStart = f.ImgStart })
	set("img-end", func() { p.ImgEnd = f.ImgEnd })
	set("img-content", func() { p.ImgContent = f.ImgContent })
	set("base-domain-id", func() { p.Extend.BaseDomainID = f.Extend.BaseDomainID })
	set("embed-flash", func() { p.Extend.EmbedFlash = f.Extend.EmbedFlash })
	set("enabled-cpus-num", func() { p.Extend.EnabledCPUsNum = f.Extend.EnabledCPUsNum })
	set("enabled-cpus-mask", func() { p.Extend.EnabledCPUsMask = f.Extend.EnabledCPUsMask })
	set("n-batch", func() { p.Extend.NBatch = f.Extend.NBatch })
	set("use-cross-attn", func() { p.Extend.UseCrossAttn = f.Extend.UseCrossAttn })
	return p
}

// ParamFlags lists the flags that set RKLLMParam fields.
func ParamFlags() []string { return append([]string(nil), paramFlags...) }

// ChatTemplate returns the --chat-template-* values, or ok false when none was set.
func (o *Serve) ChatTemplate() (system, prefix, postfix string, ok bool) {
	ok = o.changed("chat-template-system") || o.changed("chat-template-prefix") || o.changed("chat-template-postfix")
	return o.ChatTemplateSystem, o.ChatTemplatePrefix, o.ChatTemplatePostfix, ok
}

// LoraAdapters parses --lora NAME=PATH[:SCALE] values.
func (o *Serve) LoraAdapters() ([]runtime.LoraAdapter, error) {
	out := make([]runtime.LoraAdapter, 0, len(o.Loras))
	for _, v := range o.Loras {
		name, rest, ok := strings.Cut(v, "=")
		if !ok || name == "" || rest == "" {
			return nil, fmt.Errorf("--lora %q: use NAME=PATH[:SCALE], such as chat=/models/chat.lora:0.8", v)
		}
		a := runtime.LoraAdapter{Name: name, Path: rest, Scale: 1}
		if i := strings.LastIndexByte(rest, ':'); i > 0 {
			if scale, err := strconv.ParseFloat(rest[i+1:], 32); err == nil {
				a.Path, a.Scale = rest[:i], float32(scale)
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// APIKeys reads --api-key-file: one key a line, blank lines and lines starting with #
// skipped (none when the flag is not set).
func (o *Serve) APIKeys() ([]string, error) {
	if o.APIKeyFile == "" {
		return nil, nil
	}
	b, err := runtime.ReadRegularFile(o.APIKeyFile)
	if err != nil {
		return nil, fmt.Errorf("--api-key-file: %w", err)
	}
	keys, err := ParseAPIKeys(b)
	if err != nil {
		return nil, fmt.Errorf("--api-key-file %s: %w", o.APIKeyFile, err)
	}
	return keys, nil
}

// ParseAPIKeys returns the keys in the content of an API key file: one a line, blank
// lines and lines starting with # ignored, surrounding white space removed.
func ParseAPIKeys(content []byte) ([]string, error) {
	var keys []string
	for _, line := range strings.Split(string(content), "\n") {
		if key := strings.TrimSpace(line); key != "" && !strings.HasPrefix(key, "#") {
			keys = append(keys, key)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("the file holds no key")
	}
	return keys, nil
}

// AdminOn reports whether state-changing methods are allowed on a transport ("http" or
// "unix").
func (o *Serve) AdminOn(transport string) bool {
	switch o.Admin {
	case AdminAll:
		return true
	case AdminSocket:
		return transport == "unix"
	case AdminHTTP:
		return transport == "http"
	}
	return false
}

// ParseLogLevel turns --log-level into a logr verbosity: error -> -1 (errors only),
// info -> 0, debug -> 1, or the number given.
func ParseLogLevel(s string) (int, error) {
	switch strings.ToLower(s) {
	case "error":
		return -1, nil
	case "info", "":
		return 0, nil
	case "debug":
		return 1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("--log-level %q: use error, info, debug or a verbosity number", s)
	}
	return n, nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
