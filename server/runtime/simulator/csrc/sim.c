/*
 * sim.c: a simulator of Rockchip's RKLLM runtime (librkllmrt.so) for machines without
 * an NPU. It exports every function of the runtime's header with the exact layouts of
 * one ABI (RKLLM_SIM_ABI=12 or 13 at build time) and behaves as ../README.md documents.
 * It runs no model: its output is deterministic text made from a model file of its own.
 */
#include "rkllm_abi.h"

#include "json.h"
#include "model.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#if RKLLM_SIM_ABI == 12
typedef RKLLM12Param RKLLMParam;
typedef RKLLM12Input RKLLMInput;
typedef RKLLM12InferParam RKLLMInferParam;
#define SIM_ABI "1.2"
#define SIM_RUNTIME_VERSION "1.2.3"
#elif RKLLM_SIM_ABI == 13
typedef RKLLM13Param RKLLMParam;
typedef RKLLM13Input RKLLMInput;
typedef RKLLM13InferParam RKLLMInferParam;
#define SIM_ABI "1.3"
#define SIM_RUNTIME_VERSION "1.3.0"
#else
#error "build with -DRKLLM_SIM_ABI=12 or -DRKLLM_SIM_ABI=13"
#endif

#define EXPORT __attribute__((visibility("default")))
#define SIM_MAX_LORAS 16
#define SIM_ECHO_PROMPT "<sim:echo-params>"
#define SIM_HANDLE_MAGIC 0x52534D48u /* "RSMH" */

typedef struct {
	long crash_after;     /* SIGSEGV after this many token deliveries; -1 off */
	long hang_after;      /* stop delivering after this many; -1 off */
	bool hang_ignores_abort;
	int run_error;        /* non-zero: rkllm_run returns it */
	long run_error_after; /* ... after this many deliveries */
	long fault_run;       /* 0: every run, else only the n-th run (1-based) */
	char *once_file;      /* RKLLM_SIM_FAULT_ONCE_FILE: the handle's own copy, or NULL */
	char *run_gate;       /* RKLLM_SIM_RUN_GATE: the handle's own copy, or NULL */
	bool clock_text;      /* RKLLM_SIM_CLOCK_TEXT: token text is the callback's time */
	bool token_perf;      /* RKLLM_SIM_TOKEN_PERF: every token carries perf counters */
	int log_level;        /* RKLLM_LOG_LEVEL */
} sim_faults;

typedef struct {
	int32_t *tok;
	int len, sys_len;
} sim_kv;

typedef struct {
	const char *name; /* caller memory, kept as the runtime keeps it */
	const char *path;
	float scale;
	uint64_t hash;
} sim_lora;

typedef struct sim_run sim_run;

typedef struct sim_handle {
	uint32_t magic;
	struct sim_handle *next;
	long id;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	sim_model m;
	RKLLMParam param; /* a copy; its strings are the caller's */
	int n_batch;
	sim_kv *kv; /* n_batch caches of max_context_len positions */
	sim_lora loras[SIM_MAX_LORAS];
	int n_loras;
	int32_t *pc; /* loaded prompt cache */
	int pc_len;
	bool pc_loaded;
	const char *sys, *prefix, *postfix; /* template override (caller memory) */
	bool tmpl_set;
	const char *tools_sys, *tools_json, *tools_resp; /* caller memory */
	json_value tools;
	bool tools_set;
	RKLLMCrossAttnParam cross; /* its buffers are the caller's */
	bool cross_set;
	LLMResultCallback cb;
	void *cb_userdata;
	/* run state, under mu */
	bool running, abort_req, paused, paused_keep0;
	long runs;
	sim_faults f;
	char *stats_path;
} sim_handle;

struct sim_run {
	sim_handle *h;
	RKLLMInput *in;
	RKLLMInferParam *ip;
	void *userdata;
	pthread_t thread;
	long no; /* 1-based run number on the handle */
	bool async;
	int ret;
};

/* Per batch entry generation state. */
typedef struct {
	sim_seq in;       /* this run's input positions */
	int old_len;      /* cache length before the run */
	int prefilled;    /* positions prefilled (not found in the cache or prompt cache) */
	int32_t *script;  /* scripted reply (parameter echo, tool call), or NULL */
	int script_n, script_i;
	const char *fallback; /* a multi-byte character being sent byte by byte */
	int fb_i, fb_n;
	int generated, reply_len;
	int utf8_need;
	bool done;
	float *hidden, *logits; /* hidden-layer / logits outputs held until released */
} sim_gen;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static sim_handle *g_live;
static long g_next_id = 1;

/* ---- small helpers ---- */

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p) {
		fprintf(stderr, "E rkllm-sim: out of memory\n");
		abort();
	}
	return p;
}

static void logf_(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(const char *level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s rkllm: %s\n", level, line);
}

static void rknn_error(const char *msg)
{
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	fprintf(stderr, "E RKNN: [%02d:%02d:%02d.%03ld] %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
		(long)(tv.tv_usec / 1000), msg);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void stats(sim_handle *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void stats(sim_handle *h, const char *fmt, ...)
{
	if (!h->stats_path)
		return;
	char line[512];
	int n = snprintf(line, sizeof line, "rkllm-sim abi=%s pid=%ld handle=%ld ", SIM_ABI,
			 (long)getpid(), h->id);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof line - 2)
		n = (int)sizeof line - 2;
	line[n++] = '\n';
	/* One write with O_APPEND keeps lines whole across threads and processes. */
	int fd = open(h->stats_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		logf_("E", "cannot open RKLLM_SIM_STATS_FILE %s: %s", h->stats_path, strerror(errno));
		return;
	}
	if (write(fd, line, (size_t)n) != n)
		logf_("E", "cannot write RKLLM_SIM_STATS_FILE %s", h->stats_path);
	close(fd);
}

static int env_long(const char *name, long def, long lo, long *out)
{
	const char *v = getenv(name);
	*out = def;
	if (!v || !*v)
		return 0;
	char *end;
	errno = 0;
	long x = strtol(v, &end, 10);
	if (errno || *end || x < lo) {
		logf_("E", "simulator: %s must be a whole number >= %ld, got '%s'", name, lo, v);
		return -1;
	}
	*out = x;
	return 0;
}

/* fault_once reports whether a fault may fire now. Without RKLLM_SIM_FAULT_ONCE_FILE
 * every fault fires; with it, a fault fires only when the marker file does not exist
 * yet, and creating it (O_EXCL) claims the fault, so it fires once across handles,
 * worker restarts and processes. */
static bool fault_once(const char *marker)
{
	if (!marker)
		return true;
	int fd = open(marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		if (errno != EEXIST)
			logf_("E", "cannot create RKLLM_SIM_FAULT_ONCE_FILE %s: %s", marker, strerror(errno));
		return false;
	}
	close(fd);
	return true;
}

/* read_faults reads the fault variables; f->once_file points into the environment
 * until the handle takes its own copy. */
static int read_faults(sim_faults *f)
{
	long err, ign;
	if (env_long("RKLLM_SIM_CRASH_AFTER", -1, 0, &f->crash_after) ||
	    env_long("RKLLM_SIM_HANG_AFTER", -1, 0, &f->hang_after) ||
	    env_long("RKLLM_SIM_HANG_IGNORES_ABORT", 0, 0, &ign) ||
	    env_long("RKLLM_SIM_RUN_ERROR", 0, -2147483647L - 1, &err) ||
	    env_long("RKLLM_SIM_RUN_ERROR_AFTER", 0, 0, &f->run_error_after) ||
	    env_long("RKLLM_SIM_FAULT_RUN", 0, 0, &f->fault_run))
		return -1;
	f->hang_ignores_abort = ign != 0;
	f->run_error = (int)err;
	long clock;
	if (env_long("RKLLM_SIM_CLOCK_TEXT", 0, 0, &clock))
		return -1;
	f->clock_text = clock != 0;
	long perf;
	if (env_long("RKLLM_SIM_TOKEN_PERF", 0, 0, &perf))
		return -1;
	f->token_perf = perf != 0;
	const char *once = getenv("RKLLM_SIM_FAULT_ONCE_FILE");
	f->once_file = once && *once ? (char *)once : NULL;
	const char *gate = getenv("RKLLM_SIM_RUN_GATE");
	f->run_gate = gate && *gate ? (char *)gate : NULL;
	/* The runtime's own variable: read leniently, as a runtime would. */
	const char *lvl = getenv("RKLLM_LOG_LEVEL");
	f->log_level = lvl ? atoi(lvl) : 0;
	return 0;
}

/* sim_wait sleeps ms milliseconds unless an abort arrives; it returns true on abort.
 * Called with h->mu held. */
static bool sim_wait_locked(sim_handle *h, double ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	long long ns = (long long)ts.tv_nsec + (long long)(ms * 1e6);
	ts.tv_sec += (time_t)(ns / 1000000000LL);
	ts.tv_nsec = (long)(ns % 1000000000LL);
	while (!h->abort_req) {
		if (pthread_cond_timedwait(&h->cv, &h->mu, &ts) == ETIMEDOUT)
			break;
	}
	return h->abort_req;
}

static bool sim_wait(sim_handle *h, double ms)
{
	bool aborted;
	pthread_mutex_lock(&h->mu);
	aborted = ms > 0 ? sim_wait_locked(h, ms) : h->abort_req;
	pthread_mutex_unlock(&h->mu);
	return aborted;
}

static sim_handle *lookup(LLMHandle handle, const char *fn)
{
	sim_handle *found = NULL;
	pthread_mutex_lock(&g_mu);
	for (sim_handle *h = g_live; h; h = h->next)
		if (h == handle && h->magic == SIM_HANDLE_MAGIC)
			found = h;
	pthread_mutex_unlock(&g_mu);
	if (!found)
		logf_("E", "%s: invalid handle %p (not initialised, or destroyed)", fn, handle);
	return found;
}

/* busy reports (and logs) a call that needs the handle idle. */
static bool busy(sim_handle *h, const char *fn)
{
	pthread_mutex_lock(&h->mu);
	bool b = h->running;
	pthread_mutex_unlock(&h->mu);
	if (b)
		logf_("E", "%s: a run is in progress", fn);
	return b;
}

/* ---- default parameters ---- */

EXPORT RKLLMParam rkllm_createDefaultParam(void)
{
	RKLLMParam p;
	memset(&p, 0, sizeof p);
	p.model_path = NULL;
	p.max_context_len = 512;
	p.max_new_tokens = -1;
	p.top_k = 40;
	p.n_keep = -1;
	p.top_p = 0.9f;
	p.temperature = 0.8f;
	p.repeat_penalty = 1.1f;
	p.frequency_penalty = 0.0f;
	p.presence_penalty = 0.0f;
	p.mirostat = 0;
	p.mirostat_tau = 5.0f;
	p.mirostat_eta = 0.1f;
	p.skip_special_token = true;
	p.is_async = false;
	p.extend_param.base_domain_id = 0;
	p.extend_param.embed_flash = 1;
	p.extend_param.enabled_cpus_num = 4;
	p.extend_param.enabled_cpus_mask = 0xF0;
	p.extend_param.n_batch = 1; /* both vendor headers (1.2.1, 1.3.0): "Default is 1" */
	p.extend_param.use_cross_attn = 0;
	return p;
}

/* ---- init and destroy ---- */

static void free_handle(sim_handle *h)
{
	for (int b = 0; h->kv && b < h->n_batch; b++)
		free(h->kv[b].tok);
	free(h->kv);
	free(h->pc);
	json_free(&h->tools);
	free(h->stats_path);
	free(h->f.once_file);
	free(h->f.run_gate);
	sim_model_free(&h->m);
	pthread_mutex_destroy(&h->mu);
	pthread_cond_destroy(&h->cv);
	h->magic = 0;
	free(h);
}

#if RKLLM_SIM_ABI == 12
EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback)
#else
EXPORT int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLM13Callback *callback)
#endif
{
	if (!handle || !param) {
		logf_("E", "rkllm_init: handle and param must not be NULL");
		return -1;
	}
	*handle = NULL;
	sim_faults f;
	if (read_faults(&f))
		return -1;
	long delay;
	if (env_long("RKLLM_SIM_INIT_DELAY_MS", 0, 0, &delay))
		return -1;
	if (delay > 0) {
		struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
		}
	}
	const char *fail = getenv("RKLLM_SIM_INIT_FAIL");
	if (fail && *fail && fault_once(f.once_file)) {
		logf_("E", "simulated init failure (RKLLM_SIM_INIT_FAIL=%s)", fail);
		return -1;
	}
	int n_batch = param->extend_param.n_batch;
	if (n_batch < 1 || n_batch > 100) {
		logf_("E", "n_batch must be between 1 and 100, but got %d", n_batch);
		return -1;
	}
	if (!param->model_path) {
		logf_("E", "model_path must not be NULL");
		return -1;
	}
	logf_("I", "rkllm-runtime version: %s (RKLLM simulator, ABI %s), rknpu driver version: none, "
		   "platform: SIMULATOR",
	      SIM_RUNTIME_VERSION, SIM_ABI);
	logf_("I", "loading rkllm model from %s", param->model_path);

	sim_handle *h = xcalloc(1, sizeof *h);
	char err[512];
	int rc = sim_model_load(&h->m, param->model_path, err, sizeof err);
	if (rc == -2) {
		rknn_error("invalid rknn llm model magic");
		rknn_error("load model file error!");
		free(h);
		return -1;
	}
	if (rc) {
		logf_("E", "failed to load model '%s': %s", param->model_path, err);
		free(h);
		return -1;
	}
	logf_("I", "rkllm-toolkit version: simulator, max_context_limit: %d, npu_core_num: 0, "
		   "target_platform: SIMULATOR, model_dtype: SIM",
	      h->m.max_context_limit);
	if (param->max_context_len <= 0 || param->max_context_len > h->m.max_context_limit) {
		logf_("E", "max_context_len (%d) must be between 1 and the model's max_context_limit (%d)",
		      param->max_context_len, h->m.max_context_limit);
		sim_model_free(&h->m);
		free(h);
		return -1;
	}
	h->magic = SIM_HANDLE_MAGIC;
	h->param = *param;
	h->n_batch = n_batch;
	h->f = f;
	h->f.once_file = f.once_file ? strdup(f.once_file) : NULL;
	h->f.run_gate = f.run_gate ? strdup(f.run_gate) : NULL;
	const char *sp = getenv("RKLLM_SIM_STATS_FILE");
	h->stats_path = sp && *sp ? strdup(sp) : NULL;
	h->kv = xcalloc((size_t)n_batch, sizeof *h->kv);
	for (int b = 0; b < n_batch; b++)
		h->kv[b].tok = xcalloc((size_t)param->max_context_len, sizeof(int32_t));
	pthread_mutex_init(&h->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cv, &ca);
	pthread_condattr_destroy(&ca);
#if RKLLM_SIM_ABI == 12
	h->cb = callback;
#else
	if (callback) {
		h->cb = callback->result_callback;
		h->cb_userdata = callback->result_userdata;
	}
#endif
	pthread_mutex_lock(&g_mu);
	h->id = g_next_id++;
	h->next = g_live;
	g_live = h;
	pthread_mutex_unlock(&g_mu);
	stats(h, "event=init model=%s n_batch=%d max_context_len=%d", h->m.name, n_batch,
	      param->max_context_len);
	*handle = h;
	return 0;
}

EXPORT int rkllm_destroy(LLMHandle handle)
{
	sim_handle *h = lookup(handle, "rkllm_destroy");
	if (!h)
		return -1;
	pthread_mutex_lock(&g_mu);
	for (sim_handle **pp = &g_live; *pp; pp = &(*pp)->next)
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	pthread_mutex_unlock(&g_mu);
	/* A run in progress is aborted and waited for: freeing under it would crash. */
	pthread_mutex_lock(&h->mu);
	h->abort_req = h->running;
	pthread_cond_broadcast(&h->cv);
	while (h->running)
		pthread_cond_wait(&h->cv, &h->mu);
	pthread_mutex_unlock(&h->mu);
	stats(h, "event=destroy runs=%ld", h->runs);
	free_handle(h);
	return 0;
}

/* ---- LoRA, prompt cache, templates, tools, cross-attention ---- */

EXPORT int rkllm_load_lora(LLMHandle handle, RKLLMLoraAdapter *a)
{
	sim_handle *h = lookup(handle, "rkllm_load_lora");
	if (!h || busy(h, "rkllm_load_lora"))
		return -1;
	if (!a || !a->lora_adapter_path || !a->lora_adapter_name || !*a->lora_adapter_name) {
		logf_("E", "rkllm_load_lora: the adapter needs a path and a name");
		return -1;
	}
	for (int i = 0; i < h->n_loras; i++)
		if (strcmp(h->loras[i].name, a->lora_adapter_name) == 0) {
			logf_("E", "lora adapter '%s' is already loaded", a->lora_adapter_name);
			return -1;
		}
	if (h->n_loras == SIM_MAX_LORAS) {
		logf_("E", "rkllm_load_lora: the simulator holds at most %d adapters", SIM_MAX_LORAS);
		return -1;
	}
	FILE *fp = fopen(a->lora_adapter_path, "rb");
	if (!fp) {
		logf_("E", "failed to open lora adapter '%s': %s", a->lora_adapter_path, strerror(errno));
		return -1;
	}
	char buf[4096];
	size_t n = fread(buf, 1, sizeof buf, fp);
	fclose(fp);
	const char *magic = "RKLLMSIM-LORA\n";
	if (n < strlen(magic) || memcmp(buf, magic, strlen(magic)) != 0) {
		logf_("E", "invalid lora adapter file '%s' (the simulator wants its own format)",
		      a->lora_adapter_path);
		return -1;
	}
	sim_lora *l = &h->loras[h->n_loras++];
	l->name = a->lora_adapter_name;
	l->path = a->lora_adapter_path;
	l->scale = a->scale;
	l->hash = sim_hash_bytes(sim_hash_bytes(0, buf, n), &a->scale, sizeof a->scale);
	logf_("I", "loaded lora adapter '%s' from %s", l->name, l->path);
	return 0;
}

#define SIM_PC_MAGIC "RKLLMSIM-PROMPT-CACHE 1\n"

EXPORT int rkllm_load_prompt_cache(LLMHandle handle, const char *path)
{
	sim_handle *h = lookup(handle, "rkllm_load_prompt_cache");
	if (!h || busy(h, "rkllm_load_prompt_cache"))
		return -1;
	if (!path) {
		logf_("E", "rkllm_load_prompt_cache: path is NULL");
		return -1;
	}
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		logf_("E", "failed to open prompt cache '%s': %s", path, strerror(errno));
		return -1;
	}
	char magic[sizeof SIM_PC_MAGIC];
	long n;
	int32_t *tok = NULL;
	bool ok = fread(magic, 1, strlen(SIM_PC_MAGIC), fp) == strlen(SIM_PC_MAGIC) &&
		  memcmp(magic, SIM_PC_MAGIC, strlen(SIM_PC_MAGIC)) == 0 && fscanf(fp, "%ld", &n) == 1 &&
		  n >= 0 && n <= (1 << 20);
	if (ok) {
		tok = xcalloc((size_t)n, sizeof *tok);
		for (long i = 0; ok && i < n; i++)
			ok = fscanf(fp, "%" SCNd32, &tok[i]) == 1;
	}
	fclose(fp);
	if (!ok) {
		free(tok);
		logf_("E", "invalid prompt cache file '%s'", path);
		return -1;
	}
	free(h->pc);
	h->pc = tok;
	h->pc_len = (int)n;
	h->pc_loaded = true;
	logf_("I", "loaded prompt cache '%s' (%ld positions)", path, n);
	return 0;
}

EXPORT int rkllm_release_prompt_cache(LLMHandle handle)
{
	sim_handle *h = lookup(handle, "rkllm_release_prompt_cache");
	if (!h || busy(h, "rkllm_release_prompt_cache"))
		return -1;
	free(h->pc);
	h->pc = NULL;
	h->pc_len = 0;
	h->pc_loaded = false;
	return 0;
}

EXPORT int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt,
				   const char *prompt_prefix, const char *prompt_postfix)
{
	sim_handle *h = lookup(handle, "rkllm_set_chat_template");
	if (!h || busy(h, "rkllm_set_chat_template"))
		return -1;
	if (!system_prompt || !prompt_prefix || !prompt_postfix) {
		logf_("E", "rkllm_set_chat_template: the strings must not be NULL");
		return -1;
	}
	h->sys = system_prompt;
	h->prefix = prompt_prefix;
	h->postfix = prompt_postfix;
	h->tmpl_set = true;
	return 0;
}

EXPORT int rkllm_set_function_tools(LLMHandle handle, const char *system_prompt, const char *tools,
				    const char *tool_response_str)
{
	sim_handle *h = lookup(handle, "rkllm_set_function_tools");
	if (!h || busy(h, "rkllm_set_function_tools"))
		return -1;
	if (!system_prompt || !tools || !tool_response_str) {
		logf_("E", "rkllm_set_function_tools: the strings must not be NULL");
		return -1;
	}
	json_value v;
	char err[128];
	if (json_parse(tools, strlen(tools), &v, err, sizeof err)) {
		logf_("E", "rkllm_set_function_tools: tools is not valid JSON: %s", err);
		return -1;
	}
	if (v.type != JSON_ARRAY) {
		json_free(&v);
		logf_("E", "rkllm_set_function_tools: tools must be a JSON array of function specs");
		return -1;
	}
	json_free(&h->tools);
	h->tools = v;
	h->tools_sys = system_prompt;
	h->tools_json = tools;
	h->tools_resp = tool_response_str;
	/* An empty array removes the tools (simulator's choice; the vendor does not say
	 * how to unset them): the template's system prompt applies again. */
	h->tools_set = v.len > 0;
	return 0;
}

EXPORT int rkllm_set_cross_attn_params(LLMHandle handle, RKLLMCrossAttnParam *p)
{
	sim_handle *h = lookup(handle, "rkllm_set_cross_attn_params");
	if (!h || busy(h, "rkllm_set_cross_attn_params"))
		return -1;
	if (!h->param.extend_param.use_cross_attn) {
		logf_("E", "rkllm_set_cross_attn_params needs use_cross_attn=1 at init");
		return -1;
	}
	if (!p || !p->encoder_k_cache || !p->encoder_v_cache || !p->encoder_mask ||
	    !p->encoder_pos || p->num_tokens <= 0) {
		logf_("E", "rkllm_set_cross_attn_params: all four buffers and num_tokens > 0 are needed");
		return -1;
	}
	h->cross = *p;
	h->cross_set = true;
	return 0;
}

/* ---- KV cache ---- */

EXPORT int rkllm_get_kv_cache_size(LLMHandle handle, int *cache_sizes)
{
	sim_handle *h = lookup(handle, "rkllm_get_kv_cache_size");
	if (!h)
		return -1;
	if (!cache_sizes) {
		logf_("E", "rkllm_get_kv_cache_size: cache_sizes is NULL");
		return -1;
	}
	pthread_mutex_lock(&h->mu);
	for (int b = 0; b < h->n_batch; b++)
		cache_sizes[b] = h->kv[b].len;
	pthread_mutex_unlock(&h->mu);
	return 0;
}

EXPORT int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos,
				int *end_pos)
{
	sim_handle *h = lookup(handle, "rkllm_clear_kv_cache");
	if (!h || busy(h, "rkllm_clear_kv_cache"))
		return -1;
	if (!start_pos != !end_pos) {
		logf_("E", "rkllm_clear_kv_cache: start_pos and end_pos must both be set or both NULL");
		return -1;
	}
	pthread_mutex_lock(&h->mu);
	int rc = 0;
	if (!start_pos) {
		for (int b = 0; b < h->n_batch; b++) {
			h->kv[b].len = keep_system_prompt ? h->kv[b].sys_len : 0;
			if (!keep_system_prompt)
				h->kv[b].sys_len = 0;
		}
		h->paused = false;
	} else if (!h->paused || !h->paused_keep0) {
		logf_("E", "rkllm_clear_kv_cache: clearing ranges needs a run paused with keep_history=0");
		rc = -1;
	} else {
		for (int b = 0; b < h->n_batch && rc == 0; b++)
			if (start_pos[b] < 0 || start_pos[b] > end_pos[b] || end_pos[b] > h->kv[b].len) {
				logf_("E", "rkllm_clear_kv_cache: range [%d, %d) of batch %d is outside 0..%d",
				      start_pos[b], end_pos[b], b, h->kv[b].len);
				rc = -1;
			}
		for (int b = 0; b < h->n_batch && rc == 0; b++) {
			sim_kv *kv = &h->kv[b];
			int s = start_pos[b], e = end_pos[b];
			memmove(kv->tok + s, kv->tok + e, (size_t)(kv->len - e) * sizeof *kv->tok);
			kv->len -= e - s;
			if (kv->sys_len > s)
				kv->sys_len = kv->sys_len < e ? s : kv->sys_len - (e - s);
		}
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

/* ---- abort and is_running ---- */

EXPORT int rkllm_abort(LLMHandle handle)
{
	sim_handle *h = lookup(handle, "rkllm_abort");
	if (!h)
		return -1;
	pthread_mutex_lock(&h->mu);
	bool running = h->running;
	if (running) {
		h->abort_req = true;
		pthread_cond_broadcast(&h->cv);
	}
	pthread_mutex_unlock(&h->mu);
	stats(h, running ? "event=abort" : "event=idle_abort");
	return 0;
}

EXPORT int rkllm_is_running(LLMHandle handle)
{
	sim_handle *h = lookup(handle, "rkllm_is_running");
	if (!h)
		return 0;
	pthread_mutex_lock(&h->mu);
	int r = h->running ? 1 : 0;
	pthread_mutex_unlock(&h->mu);
	return r;
}

/* ---- a run ---- */

static uint64_t sampling_hash(const sim_handle *h, const RKLLMInferParam *ip)
{
	RKLLMSamplingParam s = {h->param.top_k, h->param.top_p, h->param.temperature,
				h->param.repeat_penalty, h->param.frequency_penalty,
				h->param.presence_penalty, h->param.mirostat, h->param.mirostat_tau,
				h->param.mirostat_eta};
#if RKLLM_SIM_ABI == 13
	if (ip->sampling_params)
		s = *ip->sampling_params;
#else
	(void)ip;
#endif
	return sim_hash_bytes(0, &s, sizeof s);
}

static uint64_t cross_hash(const sim_handle *h)
{
	if (!h->cross_set)
		return 0;
	/* Reads every buffer at each run: they are caller memory that must still be alive. */
	size_t n = (size_t)h->cross.num_tokens, e = (size_t)h->m.hidden_size;
	uint64_t x = sim_hash_bytes(1, h->cross.encoder_k_cache, n * e * sizeof(float));
	x = sim_hash_bytes(x, h->cross.encoder_v_cache, n * e * sizeof(float));
	x = sim_hash_bytes(x, h->cross.encoder_mask, n * sizeof(float));
	return sim_hash_bytes(x, h->cross.encoder_pos, n * sizeof(int32_t));
}

static bool is_tool_role(const RKLLMInput *in)
{
	return in->role && strcmp(in->role, "tool") == 0;
}

static void seq_template_open(sim_handle *h, sim_seq *s, const RKLLMInput *in)
{
	sim_seq_text(s, &h->m, h->tmpl_set ? h->prefix : h->m.tmpl_prefix);
	if (is_tool_role(in)) {
		const char *r = h->tools_set ? h->tools_resp : "tool_response";
		sim_seq_text(s, &h->m, "<");
		sim_seq_text(s, &h->m, r);
		sim_seq_text(s, &h->m, ">\n");
	}
}

static void seq_template_close(sim_handle *h, sim_seq *s, const RKLLMInput *in)
{
	if (is_tool_role(in)) {
		const char *r = h->tools_set ? h->tools_resp : "tool_response";
		sim_seq_text(s, &h->m, "\n</");
		sim_seq_text(s, &h->m, r);
		sim_seq_text(s, &h->m, ">");
	}
	sim_seq_text(s, &h->m, h->tmpl_set ? h->postfix : h->m.tmpl_postfix);
	/* Like the vendor runtime, enable_thinking only applies to the model's own template. */
	if (!h->tmpl_set && !in->enable_thinking)
		sim_seq_text(s, &h->m, h->m.tmpl_thinking_off);
}

static size_t count_tags(const char *p, const char *tag)
{
	size_t n = 0;
	for (const char *q = strstr(p, tag); q; q = strstr(q + strlen(tag), tag))
		n++;
	return n;
}

static int seq_multimodal(sim_handle *h, sim_seq *s, const RKLLMInput *in, char *err, size_t errlen)
{
#if RKLLM_SIM_ABI == 12
	const RKLLM12MultiModalInput *mm = &in->multimodal_input;
	const float *img = mm->image_embed;
	size_t n_img = mm->n_image, img_tok = mm->n_image_tokens;
	const char *istart = h->param.img_start, *iend = h->param.img_end;
	size_t n_vid = 0, vid_tok = 0;
	const float *vid = NULL;
	const char *vstart = NULL, *vend = NULL;
#else
	const RKLLM13MultiModalInput *mm = &in->multimodal_input;
	const float *img = mm->image.image_embed;
	size_t n_img = mm->image.n_image, img_tok = mm->image.n_image_tokens;
	const char *istart = mm->image.image_start, *iend = mm->image.image_end;
	size_t n_vid = mm->video.n_video;
	size_t vid_tok = mm->video.n_frame_tokens * mm->video.n_frame_per_video;
	const float *vid = mm->video.video_embed;
	const char *vstart = mm->video.video_start, *vend = mm->video.video_end;
#endif
	const char *p = mm->prompt;
	int e = h->m.hidden_size;
	if (!p) {
		snprintf(err, errlen, "multimodal_input.prompt is NULL");
		return -1;
	}
	if (count_tags(p, "<image>") != n_img) {
		snprintf(err, errlen, "the prompt has %zu <image> tags but n_image is %zu",
			 count_tags(p, "<image>"), n_img);
		return -1;
	}
	if (RKLLM_SIM_ABI == 13 && count_tags(p, "<video>") != n_vid) {
		snprintf(err, errlen, "the prompt has %zu <video> tags but n_video is %zu",
			 count_tags(p, "<video>"), n_vid);
		return -1;
	}
	if ((n_img && (!img || !img_tok)) || (n_vid && (!vid || !vid_tok))) {
		snprintf(err, errlen, "images or videos without embeddings or tokens");
		return -1;
	}
	seq_template_open(h, s, in);
	size_t i_img = 0, i_vid = 0;
	while (*p) {
		const char *ti = strstr(p, "<image>");
		const char *tv = RKLLM_SIM_ABI == 13 ? strstr(p, "<video>") : NULL;
		const char *t = ti && (!tv || ti < tv) ? ti : tv;
		size_t n = t ? (size_t)(t - p) : strlen(p);
		char *text = strndup(p, n);
		if (!text)
			abort();
		sim_seq_text(s, &h->m, text);
		free(text);
		if (!t)
			break;
		if (t == ti) {
			if (istart)
				sim_seq_text(s, &h->m, istart);
			sim_seq_rows(s, img + i_img * img_tok * (size_t)e, img_tok, e);
			if (iend)
				sim_seq_text(s, &h->m, iend);
			i_img++;
		} else {
			if (vstart)
				sim_seq_text(s, &h->m, vstart);
			sim_seq_rows(s, vid + i_vid * vid_tok * (size_t)e, vid_tok, e);
			if (vend)
				sim_seq_text(s, &h->m, vend);
			i_vid++;
		}
		p = t + 7; /* strlen("<image>") == strlen("<video>") */
	}
	seq_template_close(h, s, in);
	return 0;
}

static const char *raw_prompt(const RKLLMInput *in)
{
	if (in->input_type == RKLLM_INPUT_PROMPT)
		return in->prompt_input;
	if (in->input_type == RKLLM_INPUT_MULTIMODAL)
		return in->multimodal_input.prompt;
	return NULL;
}

/* build_input turns one input into cache positions. */
static int build_input(sim_handle *h, const RKLLMInput *in, sim_seq *s, char *err, size_t errlen)
{
	int vocab = sim_vocab_size(&h->m);
	switch (in->input_type) {
	case RKLLM_INPUT_PROMPT:
		if (!in->prompt_input) {
			snprintf(err, errlen, "prompt_input is NULL");
			return -1;
		}
		if (!*in->prompt_input)
			return 0; /* an empty prompt resumes: nothing to add */
		seq_template_open(h, s, in);
		sim_seq_text(s, &h->m, in->prompt_input);
		seq_template_close(h, s, in);
		return 0;
	case RKLLM_INPUT_TOKEN:
		if (!in->token_input.input_ids || in->token_input.n_tokens == 0) {
			snprintf(err, errlen, "token_input needs input_ids and n_tokens > 0");
			return -1;
		}
		for (size_t i = 0; i < in->token_input.n_tokens; i++) {
			int32_t id = in->token_input.input_ids[i];
			if (id < 0 || id >= vocab) {
				snprintf(err, errlen, "token id %d at %zu is outside the vocabulary (0..%d)",
					 id, i, vocab - 1);
				return -1;
			}
			sim_seq_push(s, id, NULL);
		}
		return 0;
	case RKLLM_INPUT_EMBED:
		if (!in->embed_input.embed || in->embed_input.n_tokens == 0) {
			snprintf(err, errlen, "embed_input needs embed and n_tokens > 0");
			return -1;
		}
		sim_seq_rows(s, in->embed_input.embed, in->embed_input.n_tokens, h->m.hidden_size);
		return 0;
	case RKLLM_INPUT_MULTIMODAL:
		return seq_multimodal(h, s, in, err, errlen);
	}
	snprintf(err, errlen, "unknown input_type %d", (int)in->input_type);
	return -1;
}

static void echo_sampling(sbuf *b, const char *key, const RKLLMSamplingParam *s)
{
	sbuf_printf(b,
		    "\"%s\":{\"top_k\":%d,\"top_p\":%.9g,\"temperature\":%.9g,\"repeat_penalty\":%.9g,"
		    "\"frequency_penalty\":%.9g,\"presence_penalty\":%.9g,\"mirostat\":%d,"
		    "\"mirostat_tau\":%.9g,\"mirostat_eta\":%.9g}",
		    key, s->top_k, (double)s->top_p, (double)s->temperature, (double)s->repeat_penalty,
		    (double)s->frequency_penalty, (double)s->presence_penalty, s->mirostat,
		    (double)s->mirostat_tau, (double)s->mirostat_eta);
}

/* echo_params writes what the simulator read from the caller's structs, as JSON. */
static void echo_params(sim_handle *h, const RKLLMInput *in, const RKLLMInferParam *ip, sbuf *b)
{
	const RKLLMParam *p = &h->param;
	RKLLMSamplingParam s = {p->top_k, p->top_p, p->temperature, p->repeat_penalty,
				p->frequency_penalty, p->presence_penalty, p->mirostat, p->mirostat_tau,
				p->mirostat_eta};
	sbuf_printf(b, "{\"abi\":\"%s\",\"param\":{\"model_path\":", SIM_ABI);
	sbuf_json_string(b, p->model_path);
	sbuf_printf(b, ",\"max_context_len\":%d,\"max_new_tokens\":%d,\"n_keep\":%d,",
		    p->max_context_len, p->max_new_tokens, p->n_keep);
	echo_sampling(b, "sampling", &s);
	sbuf_printf(b, ",\"skip_special_token\":%s,\"is_async\":%s",
		    p->skip_special_token ? "true" : "false", p->is_async ? "true" : "false");
#if RKLLM_SIM_ABI == 12
	sbuf_puts(b, ",\"img_start\":");
	sbuf_json_string(b, p->img_start);
	sbuf_puts(b, ",\"img_end\":");
	sbuf_json_string(b, p->img_end);
	sbuf_puts(b, ",\"img_content\":");
	sbuf_json_string(b, p->img_content);
#else
	sbuf_printf(b, ",\"ignore_eos_token\":%s", p->ignore_eos_token ? "true" : "false");
#endif
	const RKLLMExtendParam *x = &p->extend_param;
	sbuf_printf(b,
		    ",\"extend_param\":{\"base_domain_id\":%d,\"embed_flash\":%d,\"enabled_cpus_num\":%d,"
		    "\"enabled_cpus_mask\":%u,\"n_batch\":%u,\"use_cross_attn\":%d}},",
		    x->base_domain_id, x->embed_flash, x->enabled_cpus_num, x->enabled_cpus_mask,
		    x->n_batch, x->use_cross_attn);
	sbuf_printf(b, "\"infer\":{\"mode\":%d,\"lora_adapter_name\":", (int)ip->mode);
	sbuf_json_string(b, ip->lora_params ? ip->lora_params->lora_adapter_name : NULL);
	if (ip->prompt_cache_params) {
		sbuf_printf(b, ",\"prompt_cache\":{\"save\":%d,\"path\":",
			    ip->prompt_cache_params->save_prompt_cache);
		sbuf_json_string(b, ip->prompt_cache_params->prompt_cache_path);
		sbuf_puts(b, "}");
	} else {
		sbuf_puts(b, ",\"prompt_cache\":null");
	}
#if RKLLM_SIM_ABI == 13
	if (ip->sampling_params) {
		sbuf_puts(b, ",");
		echo_sampling(b, "sampling", ip->sampling_params);
	} else {
		sbuf_puts(b, ",\"sampling\":null");
	}
	sbuf_printf(b, ",\"max_new_tokens\":%d", ip->max_new_tokens);
#endif
	sbuf_printf(b, ",\"keep_history\":%d},\"input\":{\"role\":", ip->keep_history);
	sbuf_json_string(b, in->role);
	sbuf_printf(b, ",\"enable_thinking\":%s,\"input_type\":%d",
		    in->enable_thinking ? "true" : "false", (int)in->input_type);
	if (in->input_type == RKLLM_INPUT_MULTIMODAL) {
#if RKLLM_SIM_ABI == 12
		const RKLLM12MultiModalInput *mm = &in->multimodal_input;
		sbuf_printf(b,
			    ",\"n_image_tokens\":%zu,\"n_image\":%zu,\"image_width\":%zu,"
			    "\"image_height\":%zu",
			    mm->n_image_tokens, mm->n_image, mm->image_width, mm->image_height);
#else
		const RKLLM13MultiModalInput *mm = &in->multimodal_input;
		sbuf_printf(b,
			    ",\"n_image_tokens\":%zu,\"n_image\":%zu,\"image_width\":%zu,"
			    "\"image_height\":%zu,\"image_start\":",
			    mm->image.n_image_tokens, mm->image.n_image, mm->image.image_width,
			    mm->image.image_height);
		sbuf_json_string(b, mm->image.image_start);
		sbuf_puts(b, ",\"image_end\":");
		sbuf_json_string(b, mm->image.image_end);
		sbuf_puts(b, ",\"image_content\":");
		sbuf_json_string(b, mm->image.image_content);
		sbuf_printf(b,
			    ",\"n_frame_tokens\":%zu,\"n_frame_per_video\":%zu,\"n_video\":%zu,"
			    "\"frame_width\":%zu,\"frame_height\":%zu,\"video_start\":",
			    mm->video.n_frame_tokens, mm->video.n_frame_per_video, mm->video.n_video,
			    mm->video.frame_width, mm->video.frame_height);
		sbuf_json_string(b, mm->video.video_start);
		sbuf_puts(b, ",\"video_end\":");
		sbuf_json_string(b, mm->video.video_end);
		sbuf_puts(b, ",\"video_content\":");
		sbuf_json_string(b, mm->video.video_content);
#endif
	}
	sbuf_puts(b, "}");
	if (h->cross_set)
		sbuf_printf(b, ",\"cross_attn\":{\"num_tokens\":%d}", h->cross.num_tokens);
	sbuf_puts(b, "}");
}

/* tool_call writes a tool call for the first tool whose name the prompt mentions; it
 * returns false when none is mentioned. */
static bool tool_call(sim_handle *h, const char *prompt, sbuf *b)
{
	for (size_t i = 0; i < h->tools.len; i++) {
		const json_value *t = &h->tools.items[i];
		const json_value *fn = json_get(t, "function");
		if (!fn)
			fn = t;
		const json_value *name = json_get(fn, "name");
		if (!name || name->type != JSON_STRING || !*name->string || !strstr(prompt, name->string))
			continue;
		sbuf_puts(b, "<tool_call>\n{\"name\": ");
		sbuf_json_string(b, name->string);
		sbuf_puts(b, ", \"arguments\": {");
		const json_value *props = json_get(json_get(fn, "parameters"), "properties");
		for (size_t k = 0; props && props->type == JSON_OBJECT && k < props->len; k++) {
			const json_value *ty = json_get(&props->items[k], "type");
			const char *type = ty && ty->type == JSON_STRING ? ty->string : "";
			const char *val = strcmp(type, "string") == 0    ? "\"sim\""
					  : strcmp(type, "integer") == 0 ? "1"
					  : strcmp(type, "number") == 0  ? "1.5"
					  : strcmp(type, "boolean") == 0 ? "true"
					  : strcmp(type, "array") == 0   ? "[]"
					  : strcmp(type, "object") == 0  ? "{}"
									 : "null";
			if (k)
				sbuf_puts(b, ", ");
			sbuf_json_string(b, props->keys[k]);
			sbuf_printf(b, ": %s", val);
		}
		sbuf_puts(b, "}}\n</tool_call>");
		return true;
	}
	return false;
}

static void set_script(sim_handle *h, sim_gen *g, const char *text)
{
	sim_seq s = {0};
	sim_seq_text(&s, &h->m, text);
	g->script = s.tok;
	g->script_n = s.n;
	free(s.rows);
}

/* Hidden-state and logits values: exact in float32 (see README.md). */
static float hidden_value(const sim_seq *in, int t, int pos, int j)
{
	if (in->rows[t])
		return in->rows[t][j] + (float)pos;
	int64_t k = in->tok[t];
	return (float)((k * 31 + (int64_t)j * 17 + (int64_t)pos * 7) % 2048 - 1024) / 64.0f;
}

static float logit_value(const sim_seq *in, int t, int pos, int v, int e)
{
	if (in->rows[t])
		return in->rows[t][v % e] - (float)pos;
	int64_t k = in->tok[t];
	return (float)((k * 7 + (int64_t)v * 3 + pos) % 256 - 128) / 16.0f;
}

typedef struct {
	sim_handle *h;
	sim_run *r;
	sim_gen *g;
	RKLLMResult *res;
	char **text;
	long delivered;
	bool fault;
	long released;
} sim_ctx;

static int deliver(sim_ctx *c, LLMCallState state)
{
	sim_handle *h = c->h;
	if (!h->cb)
		return 0;
	void *ud = c->r->userdata;
	if (!ud)
		ud = h->cb_userdata; /* 1.3: the run's userdata wins when non-NULL */
	if (h->f.clock_text && (state == RKLLM_RUN_NORMAL || state == RKLLM_RUN_WAITING)) {
		/* Benchmarks: each token's text is the CLOCK_MONOTONIC time of its callback, so a
		 * client on the same machine can measure what lies between it and the callback. */
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		char now[32];
		snprintf(now, sizeof now, "@%lld", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
		for (int b = 0; b < h->n_batch; b++) {
			if (!c->text[b])
				continue;
			free(c->text[b]);
			c->text[b] = strdup(now);
			if (!c->text[b])
				abort();
			c->res[b].text = c->text[b];
		}
		state = RKLLM_RUN_NORMAL;
	}
	if (h->f.token_perf && (state == RKLLM_RUN_NORMAL || state == RKLLM_RUN_WAITING)) {
		/* Tests of what carries a token's result: each field distinct and exact
		 * (the times are made from the counts, not measured). */
		for (int b = 0; b < h->n_batch; b++) {
			c->res[b].perf.prefill_time_ms = 0.5f * (float)c->g[b].prefilled;
			c->res[b].perf.prefill_tokens = c->g[b].prefilled;
			c->res[b].perf.generate_time_ms = 0.25f * (float)c->g[b].generated;
			c->res[b].perf.generate_tokens = c->g[b].generated;
			c->res[b].perf.memory_usage_mb = (float)h->m.memory_mb;
		}
	}
	return h->cb(c->res, ud, state);
}

static void reset_results(sim_ctx *c)
{
	for (int b = 0; b < c->h->n_batch; b++) {
		free(c->text[b]);
		c->text[b] = NULL;
		memset(&c->res[b], 0, sizeof c->res[b]);
		c->res[b].token_id = -1;
	}
}

static void crash_now(void)
{
	fprintf(stderr, "E rkllm: simulated crash (RKLLM_SIM_CRASH_AFTER)\n");
	fflush(stderr);
	volatile int *volatile p = NULL;
	*p = 42; /* a real invalid access: SIGSEGV, as a crashing runtime would raise */
}

/* faults applies the fault-injection variables before a delivery. It returns 1 when
 * the run must stop as aborted, -1 when it must fail, 0 to go on. */
static int faults(sim_ctx *c)
{
	sim_handle *h = c->h;
	if (!c->fault)
		return 0;
	if (h->f.crash_after == c->delivered && fault_once(h->f.once_file))
		crash_now();
	if (h->f.hang_after == c->delivered && fault_once(h->f.once_file)) {
		logf_("W", "simulated hang (RKLLM_SIM_HANG_AFTER=%ld)", h->f.hang_after);
		stats(h, "event=hang run=%ld", c->r->no);
		pthread_mutex_lock(&h->mu);
		while (h->f.hang_ignores_abort || !h->abort_req)
			pthread_cond_wait(&h->cv, &h->mu);
		pthread_mutex_unlock(&h->mu);
		return 1;
	}
	if (h->f.run_error && h->f.run_error_after == c->delivered && fault_once(h->f.once_file))
		return -1;
	return 0;
}

static int next_token(sim_handle *h, sim_gen *g, const sim_kv *kv, uint64_t base, bool ignore_eos)
{
	if (g->script)
		return g->script_i < g->script_n ? g->script[g->script_i++] : SIM_TOKEN_EOS;
	if (g->fallback) {
		int id = (unsigned char)g->fallback[g->fb_i++];
		if (g->fb_i == g->fb_n)
			g->fallback = NULL;
		return id;
	}
	if (g->generated >= g->reply_len && !ignore_eos)
		return SIM_TOKEN_EOS;
	uint64_t x = sim_hash(base, (uint64_t)kv->len);
	for (int i = kv->len - 8 < 0 ? 0 : kv->len - 8; i < kv->len; i++)
		x = sim_hash(x, (uint64_t)(uint32_t)kv->tok[i]);
	uint64_t pick = x % (uint64_t)(h->m.n_words + h->m.n_fallback);
	if (pick < (uint64_t)h->m.n_words)
		return SIM_FIRST_WORD + (int)pick;
	g->fallback = h->m.fallback[pick - (uint64_t)h->m.n_words];
	g->fb_n = (int)strlen(g->fallback);
	g->fb_i = 1;
	return (unsigned char)g->fallback[0];
}

static void utf8_track(sim_gen *g, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (g->utf8_need > 0 && (c & 0xC0) == 0x80)
			g->utf8_need--;
		else if ((c & 0xE0) == 0xC0)
			g->utf8_need = 1;
		else if ((c & 0xF0) == 0xE0)
			g->utf8_need = 2;
		else if ((c & 0xF8) == 0xF0)
			g->utf8_need = 3;
		else
			g->utf8_need = 0;
	}
}

/* generate runs the decode loop; it returns "finished", "paused", "aborted" or "error". */
static const char *generate(sim_ctx *c, uint64_t base, int max_new)
{
	sim_handle *h = c->h;
	bool ignore_eos = false;
#if RKLLM_SIM_ABI == 13
	ignore_eos = h->param.ignore_eos_token;
#endif
	double per_token = h->m.decode_tps > 0 ? 1000.0 / h->m.decode_tps : 0;
	for (;;) {
		int f = faults(c);
		if (f > 0)
			return "aborted";
		if (f < 0)
			return "error";
		if (sim_wait(h, per_token))
			return "aborted";
		reset_results(c);
		bool any = false, waiting = false;
		pthread_mutex_lock(&h->mu);
		for (int b = 0; b < h->n_batch; b++) {
			sim_gen *g = &c->g[b];
			sim_kv *kv = &h->kv[b];
			if (!g->done && ((max_new > 0 && g->generated >= max_new) ||
					 kv->len >= h->param.max_context_len))
				g->done = true;
			if (g->done)
				continue;
			int id = next_token(h, g, kv, base, ignore_eos);
			kv->tok[kv->len++] = id;
			size_t n;
			const char *s = sim_token_text(&h->m, id, &n);
			if (id == SIM_TOKEN_EOS) {
				g->done = true;
				if (h->param.skip_special_token)
					continue;
			} else {
				g->generated++;
			}
			c->text[b] = strndup(s, n);
			if (!c->text[b])
				abort();
			c->res[b].text = c->text[b];
			c->res[b].token_id = id;
			utf8_track(g, s, n);
			waiting |= g->utf8_need > 0;
			any = true;
		}
		pthread_mutex_unlock(&h->mu);
		if (!any)
			return "finished";
		c->delivered++;
		int act = deliver(c, waiting ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL);
		if (act == 1)
			return "paused";
	}
}

/* arrays delivers the hidden states or logits of this run's input positions. */
static const char *arrays(sim_ctx *c, RKLLMInferMode mode)
{
	sim_handle *h = c->h;
	int e = h->m.hidden_size, vocab = sim_vocab_size(&h->m);
	int f = faults(c);
	if (f > 0)
		return "aborted";
	if (f < 0)
		return "error";
	reset_results(c);
	for (int b = 0; b < h->n_batch; b++) {
		sim_gen *g = &c->g[b];
		int n = g->in.n;
		int start = h->kv[b].len - n;
		if (mode == RKLLM_INFER_GET_LAST_HIDDEN_LAYER) {
			g->hidden = xcalloc((size_t)n * (size_t)e, sizeof(float));
			for (int t = 0; t < n; t++)
				for (int j = 0; j < e; j++)
					g->hidden[(size_t)t * (size_t)e + (size_t)j] =
						hidden_value(&g->in, t, start + t, j);
			c->res[b].last_hidden_layer.hidden_states = g->hidden;
			c->res[b].last_hidden_layer.embd_size = e;
			c->res[b].last_hidden_layer.num_tokens = n;
		} else {
			g->logits = xcalloc((size_t)n * (size_t)vocab, sizeof(float));
			for (int t = 0; t < n; t++)
				for (int v = 0; v < vocab; v++)
					g->logits[(size_t)t * (size_t)vocab + (size_t)v] =
						logit_value(&g->in, t, start + t, v, e);
			c->res[b].logits.logits = g->logits;
			c->res[b].logits.vocab_size = vocab;
			c->res[b].logits.num_tokens = n;
		}
	}
	c->delivered++;
	int act = deliver(c, RKLLM_RUN_NORMAL);
	if (act == 2 && RKLLM_SIM_ABI == 13) {
		/* 2 releases the output buffers now instead of at the end of the run. */
		for (int b = 0; b < h->n_batch; b++) {
			free(c->g[b].hidden);
			free(c->g[b].logits);
			c->g[b].hidden = c->g[b].logits = NULL;
		}
		c->released++;
	}
	return act == 1 ? "paused" : "finished";
}

static int save_prompt_cache(sim_handle *h, const char *path, char *err, size_t errlen)
{
	FILE *fp = fopen(path, "wb");
	if (!fp) {
		snprintf(err, errlen, "cannot write prompt cache '%s': %s", path, strerror(errno));
		return -1;
	}
	fprintf(fp, "%s%d\n", SIM_PC_MAGIC, h->kv[0].len);
	for (int i = 0; i < h->kv[0].len; i++)
		fprintf(fp, "%d\n", h->kv[0].tok[i]);
	if (fclose(fp) != 0) {
		snprintf(err, errlen, "cannot write prompt cache '%s'", path);
		return -1;
	}
	return 0;
}

/* prefill puts the system prompt (into an empty cache) and the inputs into the caches.
 * It returns the positions that needed computing, most over the batch entries. */
static int prefill(sim_handle *h, sim_gen *g, char *err, size_t errlen)
{
	int most = 0;
	pthread_mutex_lock(&h->mu);
	for (int b = 0; b < h->n_batch; b++) {
		sim_kv *kv = &h->kv[b];
		g[b].old_len = kv->len;
		sim_seq sys = {0};
		if (kv->len == 0) {
			if (h->tools_set) {
				sim_seq_text(&sys, &h->m, h->tools_sys);
				sim_seq_text(&sys, &h->m, "\n");
				sim_seq_text(&sys, &h->m, h->tools_json);
			} else {
				sim_seq_text(&sys, &h->m, h->tmpl_set ? h->sys : h->m.tmpl_system);
			}
		}
		if (kv->len + sys.n + g[b].in.n > h->param.max_context_len) {
			snprintf(err, errlen, "prompt gather than max context (prompt: %d tokens, max context: %d)",
				 kv->len + sys.n + g[b].in.n, h->param.max_context_len);
			sim_seq_free(&sys);
			for (int k = 0; k < b; k++)
				h->kv[k].len = g[k].old_len;
			pthread_mutex_unlock(&h->mu);
			return -1;
		}
		memcpy(kv->tok + kv->len, sys.tok, (size_t)sys.n * sizeof *kv->tok);
		kv->len += sys.n;
		if (g[b].old_len == 0)
			kv->sys_len = sys.n;
		sim_seq_free(&sys);
		memcpy(kv->tok + kv->len, g[b].in.tok, (size_t)g[b].in.n * sizeof *kv->tok);
		kv->len += g[b].in.n;
		int hit = 0;
		while (h->pc_loaded && hit < h->pc_len && hit < kv->len && h->pc[hit] == kv->tok[hit])
			hit++;
		g[b].prefilled = kv->len - (hit > g[b].old_len ? hit : g[b].old_len);
		if (g[b].prefilled > most)
			most = g[b].prefilled;
	}
	pthread_mutex_unlock(&h->mu);
	return most;
}

static void fill_perf(sim_ctx *c, double prefill_ms, double gen_ms)
{
	for (int b = 0; b < c->h->n_batch; b++) {
		c->res[b].perf.prefill_time_ms = (float)prefill_ms;
		c->res[b].perf.prefill_tokens = c->g[b].prefilled;
		c->res[b].perf.generate_time_ms = (float)gen_ms;
		c->res[b].perf.generate_tokens = c->g[b].generated;
		c->res[b].perf.memory_usage_mb = (float)c->h->m.memory_mb;
	}
}

/* prepare validates the run's parameters and builds every input. */
static int prepare(sim_ctx *c, uint64_t *base, char *err, size_t errlen)
{
	sim_handle *h = c->h;
	const RKLLMInferParam *ip = c->r->ip;
	if (!c->r->in || !ip) {
		snprintf(err, errlen, "rkllm_run: input and infer params must not be NULL");
		return -1;
	}
	if (ip->mode < RKLLM_INFER_GENERATE || ip->mode > RKLLM_INFER_GET_LOGITS) {
		snprintf(err, errlen, "unknown infer mode %d", (int)ip->mode);
		return -1;
	}
	uint64_t lora = 0;
	if (ip->lora_params) {
		const char *name = ip->lora_params->lora_adapter_name;
		int i = 0;
		while (name && i < h->n_loras && strcmp(h->loras[i].name, name) != 0)
			i++;
		if (!name || i == h->n_loras) {
			snprintf(err, errlen, "lora adapter '%s' is not loaded", name ? name : "(null)");
			return -1;
		}
		lora = h->loras[i].hash;
	}
	if (ip->prompt_cache_params && ip->prompt_cache_params->save_prompt_cache &&
	    !ip->prompt_cache_params->prompt_cache_path) {
		snprintf(err, errlen, "save_prompt_cache needs prompt_cache_path");
		return -1;
	}
	*base = sim_hash(sim_hash(sim_hash(h->m.seed, lora), sampling_hash(h, ip)), cross_hash(h));
	for (int b = 0; b < h->n_batch; b++) {
		const RKLLMInput *in = &c->r->in[b];
		if (build_input(h, in, &c->g[b].in, err, errlen))
			return -1;
		const char *raw = raw_prompt(in);
		sbuf s = {0};
		if (ip->mode == RKLLM_INFER_GENERATE && raw &&
		    strncmp(raw, SIM_ECHO_PROMPT, strlen(SIM_ECHO_PROMPT)) == 0)
			echo_params(h, in, ip, &s);
		else if (ip->mode == RKLLM_INFER_GENERATE && raw && h->tools_set && !is_tool_role(in))
			tool_call(h, raw, &s);
		if (s.s)
			set_script(h, &c->g[b], s.s);
		sbuf_free(&s);
	}
	return 0;
}

static int run_body(sim_run *r)
{
	sim_handle *h = r->h;
	char err[512] = "";
	sim_ctx c = {h, r, xcalloc((size_t)h->n_batch, sizeof(sim_gen)),
		     xcalloc((size_t)h->n_batch, sizeof(RKLLMResult)),
		     xcalloc((size_t)h->n_batch, sizeof(char *)), 0, false, 0};
	c.fault = h->f.fault_run == 0 || h->f.fault_run == r->no;
	const char *outcome = "error";
	uint64_t base = 0;
	int max_new = 0, keep = 0, ret = -1;
	double t0 = now_ms(), t1 = t0, t2 = t0;
	bool resume = false, appended = false;

	if (prepare(&c, &base, err, sizeof err))
		goto done;
	const RKLLMInferParam *ip = r->ip;
	keep = ip->keep_history;
	max_new = h->param.max_new_tokens;
#if RKLLM_SIM_ABI == 13
	if (ip->max_new_tokens > 0)
		max_new = ip->max_new_tokens;
#endif
	pthread_mutex_lock(&h->mu);
	resume = h->paused;
	h->paused = false;
	if (!keep && !resume) /* an independent turn: only the system prompt stays */
		for (int b = 0; b < h->n_batch; b++)
			h->kv[b].len = h->kv[b].sys_len;
	pthread_mutex_unlock(&h->mu);

	int most = prefill(h, c.g, err, sizeof err);
	if (most < 0)
		goto done;
	appended = true;
	bool aborted = h->m.prefill_tps > 0 && sim_wait(h, most * 1000.0 / h->m.prefill_tps);
	if (ip->prompt_cache_params && ip->prompt_cache_params->save_prompt_cache &&
	    save_prompt_cache(h, ip->prompt_cache_params->prompt_cache_path, err, sizeof err))
		goto done;
	t1 = now_ms();
	for (int b = 0; b < h->n_batch; b++) {
		sim_gen *g = &c.g[b];
		g->reply_len = h->m.reply_min +
			       (int)(sim_hash(base, (uint64_t)h->kv[b].len) %
				     (uint64_t)(h->m.reply_max - h->m.reply_min + 1));
	}
	if (aborted)
		outcome = "aborted";
	else if (ip->mode == RKLLM_INFER_GENERATE)
		outcome = generate(&c, base, max_new);
	else
		outcome = arrays(&c, ip->mode);
	t2 = now_ms();
	if (strcmp(outcome, "error") == 0) {
		snprintf(err, sizeof err, "simulated run error (RKLLM_SIM_RUN_ERROR=%d)", h->f.run_error);
		ret = h->f.run_error;
		goto done;
	}
	reset_results(&c);
	fill_perf(&c, t1 - t0, t2 - t1);
	deliver(&c, RKLLM_RUN_FINISH);
	ret = 0;
	if (h->f.log_level >= 1)
		logf_("I", "prefill %d tokens in %.2f ms, generate %d tokens in %.2f ms (%s)",
		      c.g[0].prefilled, t1 - t0, c.g[0].generated, t2 - t1, outcome);
done:
	if (ret != 0) {
		logf_("E", "%s", err);
		reset_results(&c);
		deliver(&c, RKLLM_RUN_ERROR);
		/* A failed run leaves the cache as it found it. */
		pthread_mutex_lock(&h->mu);
		for (int b = 0; appended && b < h->n_batch; b++)
			h->kv[b].len = c.g[b].old_len;
		pthread_mutex_unlock(&h->mu);
		outcome = "error";
	}
	pthread_mutex_lock(&h->mu);
	if (strcmp(outcome, "paused") == 0) {
		h->paused = true;
		h->paused_keep0 = !keep;
	} else if (!keep) {
		for (int b = 0; b < h->n_batch; b++)
			h->kv[b].len = h->kv[b].sys_len;
	}
	int kv0 = h->kv[0].len;
	pthread_mutex_unlock(&h->mu);
	stats(h, "event=run run=%ld outcome=%s ret=%d tokens=%d prefill=%d kv=%d released=%ld", r->no,
	      outcome, ret, c.g[0].generated, c.g[0].prefilled, kv0, c.released);
	reset_results(&c);
	for (int b = 0; b < h->n_batch; b++) {
		sim_seq_free(&c.g[b].in);
		free(c.g[b].script);
		free(c.g[b].hidden);
		free(c.g[b].logits);
	}
	free(c.g);
	free(c.res);
	free(c.text);
	return ret;
}

static void *run_thread(void *arg)
{
	sim_run *r = arg;
	sim_handle *h = r->h;
	bool async = r->async;
	r->ret = run_body(r);
	pthread_mutex_lock(&h->mu);
	h->running = false;
	h->abort_req = false;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	/* h may be destroyed from here on. A synchronous caller joins and frees r. */
	if (async)
		free(r);
	return NULL;
}

/* run_gate holds a run (the RKLLM_SIM_FAULT_RUN-th, or every one) at the start of
 * rkllm_run, before the run is in progress, until something opens the FIFO
 * RKLLM_SIM_RUN_GATE for writing: tests use it to reach a runtime that has been asked
 * to run but has not started yet. */
static void run_gate(sim_handle *h)
{
	if (!h->f.run_gate)
		return;
	pthread_mutex_lock(&h->mu);
	long no = h->runs + 1;
	pthread_mutex_unlock(&h->mu);
	if (h->f.fault_run != 0 && h->f.fault_run != no)
		return;
	stats(h, "event=gate run=%ld", no);
	int fd = open(h->f.run_gate, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		logf_("E", "cannot open RKLLM_SIM_RUN_GATE %s: %s", h->f.run_gate, strerror(errno));
		return;
	}
	close(fd);
}

/* start_run starts a run on a thread of its own: like a runtime's worker thread, it
 * delivers callbacks on a thread the caller did not create. */
static sim_run *start_run(LLMHandle handle, RKLLMInput *in, RKLLMInferParam *ip, void *userdata,
			  bool async, const char *fn)
{
	sim_handle *h = lookup(handle, fn);
	if (!h)
		return NULL;
	run_gate(h);
	pthread_mutex_lock(&h->mu);
	if (h->running) {
		pthread_mutex_unlock(&h->mu);
		logf_("E", "%s: a run is already in progress on this handle", fn);
		return NULL;
	}
	h->running = true;
	h->abort_req = false;
	long no = ++h->runs;
	pthread_mutex_unlock(&h->mu);
	sim_run *r = xcalloc(1, sizeof *r);
	r->h = h;
	r->in = in;
	r->ip = ip;
	r->userdata = userdata;
	r->no = no;
	r->async = async;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, async ? PTHREAD_CREATE_DETACHED : PTHREAD_CREATE_JOINABLE);
	int rc = pthread_create(&r->thread, &attr, run_thread, r);
	pthread_attr_destroy(&attr);
	if (rc != 0) {
		logf_("E", "%s: cannot start a thread: %s", fn, strerror(rc));
		pthread_mutex_lock(&h->mu);
		h->running = false;
		pthread_cond_broadcast(&h->cv);
		pthread_mutex_unlock(&h->mu);
		free(r);
		return NULL;
	}
	return r;
}

EXPORT int rkllm_run(LLMHandle handle, RKLLMInput *rkllm_input, RKLLMInferParam *rkllm_infer_params,
		     void *userdata)
{
	sim_run *r = start_run(handle, rkllm_input, rkllm_infer_params, userdata, false, "rkllm_run");
	if (!r)
		return -1;
	pthread_join(r->thread, NULL);
	int ret = r->ret;
	free(r);
	return ret;
}

EXPORT int rkllm_run_async(LLMHandle handle, RKLLMInput *rkllm_input,
			   RKLLMInferParam *rkllm_infer_params, void *userdata)
{
	/* Returns at once; the inputs must stay alive until the FINISH or ERROR callback. */
	return start_run(handle, rkllm_input, rkllm_infer_params, userdata, true, "rkllm_run_async")
		       ? 0
		       : -1;
}

#ifndef RKLLM_SIM_ANONYMOUS
/* rkllm_sim_version is the simulator's own symbol: a binding may look for it to tell a
 * simulator from the vendor's runtime. (Tests build the simulator without it too, to
 * check what a binding does with a library that does not name its ABI.) */
EXPORT const char *rkllm_sim_version(void)
{
	return SIM_RUNTIME_VERSION "-sim (RKLLM simulator, ABI " SIM_ABI ")";
}
#endif
