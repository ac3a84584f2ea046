/*
 * leakcheck.c: drives every function of a simulator library, for `make sim-leakcheck`
 * to run under valgrind (leaks and memory errors fail it). It also checks the init
 * failures' messages on stderr, which the Go binding never provokes (it refuses such
 * params itself).
 *
 *   leakcheck LIBRARY MODEL LORA TMPDIR      (built with -DRKLLM_SIM_ABI=12 or 13)
 */
#include "rkllm_abi.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if RKLLM_SIM_ABI == 12
typedef RKLLM12Param Param;
typedef RKLLM12Input Input;
typedef RKLLM12InferParam InferParam;
typedef LLMResultCallback InitCallback;
#else
typedef RKLLM13Param Param;
typedef RKLLM13Input Input;
typedef RKLLM13InferParam InferParam;
typedef RKLLM13Callback *InitCallback;
#endif

static struct {
	Param (*create_default)(void);
	int (*init)(LLMHandle *, Param *, InitCallback);
	int (*destroy)(LLMHandle);
	int (*run)(LLMHandle, Input *, InferParam *, void *);
	int (*run_async)(LLMHandle, Input *, InferParam *, void *);
	int (*abort_run)(LLMHandle);
	int (*is_running)(LLMHandle);
	int (*load_lora)(LLMHandle, RKLLMLoraAdapter *);
	int (*load_prompt_cache)(LLMHandle, const char *);
	int (*release_prompt_cache)(LLMHandle);
	int (*clear_kv_cache)(LLMHandle, int, int *, int *);
	int (*get_kv_cache_size)(LLMHandle, int *);
	int (*set_chat_template)(LLMHandle, const char *, const char *, const char *);
	int (*set_function_tools)(LLMHandle, const char *, const char *, const char *);
	int (*set_cross_attn_params)(LLMHandle, RKLLMCrossAttnParam *);
} rk;

static int failures;
#define CHECK(cond)                                                                  \
	do {                                                                         \
		if (!(cond)) {                                                       \
			fprintf(stderr, "leakcheck: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                                  \
		}                                                                    \
	} while (0)

/* Deliveries of the current run. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int tokens, finished, errors, hidden, pause_after, release, block;
	LLMHandle abort_from_thread;
} cb = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, -1, 0, 0, NULL};

static int on_result(RKLLMResult *r, void *userdata, LLMCallState state)
{
	(void)userdata;
	pthread_mutex_lock(&cb.mu);
	int act = 0;
	if (state == RKLLM_RUN_FINISH)
		cb.finished++;
	else if (state == RKLLM_RUN_ERROR)
		cb.errors++;
	else if (r[0].last_hidden_layer.hidden_states || r[0].logits.logits) {
		cb.hidden++;
		act = cb.release ? 2 : 0;
	} else {
		cb.tokens++;
		if (cb.pause_after >= 0 && cb.tokens >= cb.pause_after)
			act = 1;
	}
	pthread_cond_broadcast(&cb.cv);
	while (cb.block && state != RKLLM_RUN_FINISH && state != RKLLM_RUN_ERROR)
		pthread_cond_wait(&cb.cv, &cb.mu);
	pthread_mutex_unlock(&cb.mu);
	return act;
}

static void reset_cb(void)
{
	pthread_mutex_lock(&cb.mu);
	cb.tokens = cb.finished = cb.errors = cb.hidden = cb.release = cb.block = 0;
	cb.pause_after = -1;
	pthread_mutex_unlock(&cb.mu);
}

static int init(LLMHandle *h, Param *p)
{
#if RKLLM_SIM_ABI == 12
	return rk.init(h, p, on_result);
#else
	RKLLM13Callback c = {on_result, NULL, NULL, NULL, NULL, NULL};
	return rk.init(h, p, &c);
#endif
}

/* stderr_of runs fn with stderr sent to a file and returns what it wrote. */
static char *stderr_of(const char *dir, int (*fn)(void *), void *arg, int *ret)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/leakcheck-stderr.txt", dir);
	fflush(stderr);
	int saved = dup(2);
	FILE *f = fopen(path, "w+");
	dup2(fileno(f), 2);
	*ret = fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	rewind(f);
	char *s = calloc(1, (size_t)n + 1);
	if (fread(s, 1, (size_t)n, f) != (size_t)n)
		s[0] = 0;
	fclose(f);
	unlink(path);
	return s;
}

static int init_fails(void *arg)
{
	LLMHandle h = NULL;
	int rc = init(&h, arg);
	if (rc == 0)
		rk.destroy(h);
	return rc;
}

static void set_prompt(Input *in, const char *prompt)
{
	memset(in, 0, sizeof *in);
	in->role = "user";
	in->input_type = RKLLM_INPUT_PROMPT;
	in->prompt_input = prompt;
}

static void *abort_later(void *h)
{
	pthread_mutex_lock(&cb.mu);
	while (cb.tokens < 1)
		pthread_cond_wait(&cb.cv, &cb.mu);
	pthread_mutex_unlock(&cb.mu);
	CHECK(rk.is_running(h) == 1);
	CHECK(rk.abort_run(h) == 0);
	pthread_mutex_lock(&cb.mu);
	cb.block = 0;
	pthread_cond_broadcast(&cb.cv);
	pthread_mutex_unlock(&cb.mu);
	return NULL;
}

static void init_failures(const char *model, const char *lora, const char *dir)
{
	Param zero;
	memset(&zero, 0, sizeof zero);
	int rc;
	char *msg = stderr_of(dir, init_fails, &zero, &rc);
	CHECK(rc != 0 && strstr(msg, "n_batch must be between 1 and 100, but got 0"));
	free(msg);

	/* Both vendor headers document n_batch "Default is 1": a client that starts from
	 * the defaults and sets only the model path initialises, as it would on a board. */
	Param p = rk.create_default();
	CHECK(p.extend_param.n_batch == 1);
	p.model_path = model;
	LLMHandle h = NULL;
	CHECK(init(&h, &p) == 0);
	if (h)
		CHECK(rk.destroy(h) == 0);

	p.model_path = lora; /* not a model: wrong magic */
	msg = stderr_of(dir, init_fails, &p, &rc);
	CHECK(rc != 0 && strstr(msg, "invalid rknn llm model magic"));
	free(msg);

	p.model_path = model;
	p.max_context_len = 1 << 20;
	msg = stderr_of(dir, init_fails, &p, &rc);
	CHECK(rc != 0 && strstr(msg, "max_context_len (1048576)"));
	free(msg);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: leakcheck LIBRARY MODEL LORA TMPDIR\n");
		return 2;
	}
	const char *model = argv[2], *lora = argv[3], *dir = argv[4];
	void *dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		fprintf(stderr, "leakcheck: %s\n", dlerror());
		return 2;
	}
#define SYM(field, name)                               \
	do {                                           \
		*(void **)&rk.field = dlsym(dl, name); \
		CHECK(rk.field != NULL);               \
	} while (0)
	SYM(create_default, "rkllm_createDefaultParam");
	SYM(init, "rkllm_init");
	SYM(destroy, "rkllm_destroy");
	SYM(run, "rkllm_run");
	SYM(run_async, "rkllm_run_async");
	SYM(abort_run, "rkllm_abort");
	SYM(is_running, "rkllm_is_running");
	SYM(load_lora, "rkllm_load_lora");
	SYM(load_prompt_cache, "rkllm_load_prompt_cache");
	SYM(release_prompt_cache, "rkllm_release_prompt_cache");
	SYM(clear_kv_cache, "rkllm_clear_kv_cache");
	SYM(get_kv_cache_size, "rkllm_get_kv_cache_size");
	SYM(set_chat_template, "rkllm_set_chat_template");
	SYM(set_function_tools, "rkllm_set_function_tools");
	SYM(set_cross_attn_params, "rkllm_set_cross_attn_params");
	if (failures)
		return 1;

	init_failures(model, lora, dir);

	Param p = rk.create_default();
	p.model_path = model;
	p.max_context_len = 4096;
	p.extend_param.n_batch = 2;
	p.extend_param.use_cross_attn = 1;
	LLMHandle h = NULL;
	CHECK(init(&h, &p) == 0);

	RKLLMLoraAdapter la = {lora, "leak", 1.0f};
	CHECK(rk.load_lora(h, &la) == 0);
	CHECK(rk.load_lora(h, &la) != 0); /* duplicate name */
	CHECK(rk.set_function_tools(h, "tools:", "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
					    "\"parameters\":{\"properties\":{\"city\":{\"type\":\"string\"}}}}}]",
				    "tool_response") == 0);
	CHECK(rk.set_function_tools(h, "tools:", "[{", "tool_response") != 0);
	float kc[4 * 16], vc[4 * 16], mask[4];
	int32_t pos[4];
	for (int i = 0; i < 4 * 16; i++)
		kc[i] = vc[i] = (float)i / 8;
	for (int i = 0; i < 4; i++)
		mask[i] = 1, pos[i] = i;
	RKLLMCrossAttnParam ca = {kc, vc, mask, pos, 4};
	CHECK(rk.set_cross_attn_params(h, &ca) == 0);

	char pc_path[4096];
	snprintf(pc_path, sizeof pc_path, "%s/leakcheck.prompt-cache", dir);
	Input in[2];
	RKLLMLoraParam lp = {"leak"};
	RKLLMPromptCacheParam pcp = {1, pc_path};
	InferParam ip;
	memset(&ip, 0, sizeof ip);
	ip.lora_params = &lp;
	ip.prompt_cache_params = &pcp;
	set_prompt(&in[0], "hello there");
	set_prompt(&in[1], "<sim:echo-params>");
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.finished == 1 && cb.tokens > 0);

	/* tool call, then a tool result */
	ip.lora_params = NULL;
	ip.prompt_cache_params = NULL;
	set_prompt(&in[0], "call get_weather please");
	set_prompt(&in[1], "{\"temp\": 20}");
	in[1].role = "tool";
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.finished == 1);

	/* the prompt cache written above */
	CHECK(rk.load_prompt_cache(h, pc_path) == 0);
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) == 0);
	CHECK(rk.release_prompt_cache(h) == 0);
	unlink(pc_path);

	/* hidden states (released early in 1.3) and logits from token and embedding inputs */
	int32_t ids[3] = {300, 301, 302};
	float emb[2 * 16];
	for (int i = 0; i < 2 * 16; i++)
		emb[i] = (float)i;
	memset(in, 0, sizeof in);
	in[0].input_type = RKLLM_INPUT_TOKEN;
	in[0].token_input.input_ids = ids;
	in[0].token_input.n_tokens = 3;
	in[1].input_type = RKLLM_INPUT_EMBED;
	in[1].embed_input.embed = emb;
	in[1].embed_input.n_tokens = 2;
	ip.mode = RKLLM_INFER_GET_LAST_HIDDEN_LAYER;
	reset_cb();
	cb.release = 1;
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.hidden == 1);
	ip.mode = RKLLM_INFER_GET_LOGITS;
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.hidden == 1);
	ip.mode = RKLLM_INFER_GENERATE;

	/* multimodal: one image of 2 tokens per batch entry */
	float img[2 * 16];
	for (int i = 0; i < 2 * 16; i++)
		img[i] = (float)i / 4;
	for (int b = 0; b < 2; b++) {
		memset(&in[b], 0, sizeof in[b]);
		in[b].input_type = RKLLM_INPUT_MULTIMODAL;
		in[b].multimodal_input.prompt = "look: <image>";
#if RKLLM_SIM_ABI == 12
		in[b].multimodal_input.image_embed = img;
		in[b].multimodal_input.n_image_tokens = 2;
		in[b].multimodal_input.n_image = 1;
#else
		in[b].multimodal_input.image.image_embed = img;
		in[b].multimodal_input.image.n_image_tokens = 2;
		in[b].multimodal_input.image.n_image = 1;
		in[b].multimodal_input.image.image_start = "<img>";
#endif
	}
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.finished == 1);

	/* pause with keep_history 0, clear a range, read the sizes, clear all */
	set_prompt(&in[0], "pause me");
	set_prompt(&in[1], "pause me too");
	reset_cb();
	cb.pause_after = 2;
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.tokens == 2);
	int sizes[2] = {0, 0}, start[2] = {0, 1}, end[2] = {1, 2};
	CHECK(rk.get_kv_cache_size(h, sizes) == 0 && sizes[0] > 2 && sizes[1] > 2);
	int before = sizes[0];
	CHECK(rk.clear_kv_cache(h, 0, start, end) == 0);
	CHECK(rk.get_kv_cache_size(h, sizes) == 0 && sizes[0] == before - 1);
	CHECK(rk.clear_kv_cache(h, 1, NULL, NULL) == 0);

	/* abort from another thread while the callback holds the run */
	reset_cb();
	cb.block = 1;
	pthread_t t;
	pthread_create(&t, NULL, abort_later, h);
	CHECK(rk.run(h, in, &ip, NULL) == 0 && cb.tokens == 1 && cb.finished == 1);
	pthread_join(t, NULL);
	CHECK(rk.is_running(h) == 0);

	/* async run: returns at once, FINISH comes later */
	reset_cb();
	CHECK(rk.run_async(h, in, &ip, NULL) == 0);
	pthread_mutex_lock(&cb.mu);
	while (cb.finished == 0)
		pthread_cond_wait(&cb.cv, &cb.mu);
	pthread_mutex_unlock(&cb.mu);

	/* a run that fails: unknown adapter */
	lp.lora_adapter_name = "missing";
	ip.lora_params = &lp;
	reset_cb();
	CHECK(rk.run(h, in, &ip, NULL) != 0 && cb.errors == 1);

	CHECK(rk.destroy(h) == 0);
	CHECK(rk.destroy(h) != 0); /* the simulator knows a destroyed handle */
	dlclose(dl);
	if (failures)
		fprintf(stderr, "leakcheck: %d failures\n", failures);
	return failures ? 1 : 0;
}
