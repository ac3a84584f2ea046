/* shim.c: see shim.h. */
#include "shim.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "_cgo_export.h"

static const char *const optional_names[] = {
	[RK_LOAD_LORA] = "rkllm_load_lora",
	[RK_LOAD_PROMPT_CACHE] = "rkllm_load_prompt_cache",
	[RK_RELEASE_PROMPT_CACHE] = "rkllm_release_prompt_cache",
	[RK_CLEAR_KV_CACHE] = "rkllm_clear_kv_cache",
	[RK_GET_KV_CACHE_SIZE] = "rkllm_get_kv_cache_size",
	[RK_SET_CHAT_TEMPLATE] = "rkllm_set_chat_template",
	[RK_SET_FUNCTION_TOOLS] = "rkllm_set_function_tools",
	[RK_SET_CROSS_ATTN_PARAMS] = "rkllm_set_cross_attn_params",
};

/* LeakSanitizer's interface, present only when the binary is built with it. */
extern void __lsan_ignore_object(const void *p) __attribute__((weak));

const char *rk_optional_name(int which)
{
	return optional_names[which];
}

int rk_open(const char *path, int abi, rk_lib *lib, char *dl_err, size_t dl_err_len,
	    const char **missing)
{
	memset(lib, 0, sizeof *lib);
	*missing = NULL;
	dlerror();
	void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		const char *e = dlerror();
		snprintf(dl_err, dl_err_len, "%s", e ? e : "dlopen failed");
		return -1;
	}
	struct {
		const char *name;
		void **slot;
	} required[] = {
		{"rkllm_createDefaultParam", &lib->create_default_param},
		{"rkllm_init", &lib->init},
		{"rkllm_run", &lib->run},
		{"rkllm_destroy", (void **)&lib->destroy},
		{"rkllm_abort", (void **)&lib->abort_run},
		{"rkllm_is_running", (void **)&lib->is_running},
	};
	for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
		*required[i].slot = dlsym(dl, required[i].name);
		if (!*required[i].slot) {
			*missing = required[i].name;
			dlclose(dl);
			memset(lib, 0, sizeof *lib);
			return -1;
		}
	}
	void **optional[] = {
		[RK_LOAD_LORA] = (void **)&lib->load_lora,
		[RK_LOAD_PROMPT_CACHE] = (void **)&lib->load_prompt_cache,
		[RK_RELEASE_PROMPT_CACHE] = (void **)&lib->release_prompt_cache,
		[RK_CLEAR_KV_CACHE] = (void **)&lib->clear_kv_cache,
		[RK_GET_KV_CACHE_SIZE] = (void **)&lib->get_kv_cache_size,
		[RK_SET_CHAT_TEMPLATE] = (void **)&lib->set_chat_template,
		[RK_SET_FUNCTION_TOOLS] = (void **)&lib->set_function_tools,
		[RK_SET_CROSS_ATTN_PARAMS] = (void **)&lib->set_cross_attn_params,
	};
	for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++)
		*optional[i] = dlsym(dl, optional_names[i]);
	*(void **)&lib->sim_version = dlsym(dl, "rkllm_sim_version");
	lib->dl = dl;
	lib->abi = abi;
	/* The table lives as long as the loaded library, for the life of the process, and
	 * only Go memory points to it: tell LeakSanitizer (in a build with it) that it is
	 * held on purpose. */
	if (__lsan_ignore_object)
		__lsan_ignore_object(lib);
	return 0;
}

const char *rk_sim_version(const rk_lib *lib)
{
	return lib->sim_version ? lib->sim_version() : NULL;
}

void rk_close(rk_lib *lib)
{
	if (lib->dl)
		dlclose(lib->dl);
	memset(lib, 0, sizeof *lib);
}

int rk_has(const rk_lib *lib, int which)
{
	switch (which) {
	case RK_LOAD_LORA: return lib->load_lora != NULL;
	case RK_LOAD_PROMPT_CACHE: return lib->load_prompt_cache != NULL;
	case RK_RELEASE_PROMPT_CACHE: return lib->release_prompt_cache != NULL;
	case RK_CLEAR_KV_CACHE: return lib->clear_kv_cache != NULL;
	case RK_GET_KV_CACHE_SIZE: return lib->get_kv_cache_size != NULL;
	case RK_SET_CHAT_TEMPLATE: return lib->set_chat_template != NULL;
	case RK_SET_FUNCTION_TOOLS: return lib->set_function_tools != NULL;
	case RK_SET_CROSS_ATTN_PARAMS: return lib->set_cross_attn_params != NULL;
	}
	return 0;
}

/* Larger than either ABI's RKLLMParam: the callee writes its own size through the
 * hidden result pointer, whatever the caller believes it returns. */
typedef struct {
	unsigned char b[256];
} rk_param_probe;
_Static_assert(sizeof(rk_param_probe) >= sizeof(RKLLM12Param) &&
		       sizeof(rk_param_probe) >= sizeof(RKLLM13Param),
	       "the probe buffer must hold either RKLLMParam");

static rk_param_probe call_default(const rk_lib *lib)
{
	rk_param_probe (*fn)(void) = (rk_param_probe(*)(void))lib->create_default_param;
	return fn();
}

static int plausible_extend(const unsigned char *p)
{
	RKLLMExtendParam x;
	memcpy(&x, p, sizeof x);
	/* Documented defaults: base_domain_id 0, embed_flash 0/1, enabled_cpus_num 4. */
	return x.base_domain_id == 0 && (x.embed_flash == 0 || x.embed_flash == 1) &&
	       x.enabled_cpus_num >= 1 && x.enabled_cpus_num <= 8;
}

void rk_probe_abi(const rk_lib *lib, int *looks12, int *looks13)
{
	rk_param_probe p = call_default(lib);
	/* Only bytes below sizeof(RKLLM13Param) are read, which both ABIs write. */
	*looks12 = plausible_extend(p.b + offsetof(RKLLM12Param, extend_param));
	*looks13 = plausible_extend(p.b + offsetof(RKLLM13Param, extend_param));
}

void rk_default_param12(const rk_lib *lib, RKLLM12Param *out)
{
	rk_param_probe p = call_default(lib);
	memcpy(out, p.b, sizeof *out);
}

void rk_default_param13(const rk_lib *lib, RKLLM13Param *out)
{
	rk_param_probe p = call_default(lib);
	memcpy(out, p.b, sizeof *out);
}

/* The result callback: userdata is the handle's rk_run_ctx (C memory), which names the
 * run by its cgo.Handle, never by a Go pointer. It may be called on a thread Go did not
 * create; cgo handles that. */
static int rk_result_callback(RKLLMResult *result, void *userdata, LLMCallState state)
{
	rk_run_ctx *run = userdata;
	if (run->sink && !__atomic_load_n(&run->go_only, __ATOMIC_ACQUIRE)) {
		int action = run->sink(run->sink_arg, result, run->n_batch, (int)state);
		if (action != RK_SINK_PASS)
			return action;
	}
	return goResultCallback(run->go_run, result, (int)state);
}

void rk_run_go_only(rk_run_ctx *run)
{
	__atomic_store_n(&run->go_only, 1, __ATOMIC_RELEASE);
}

int rk_init(const rk_lib *lib, LLMHandle *h, void *param, RKLLM13Callback *cb)
{
	if (lib->abi == 12) {
		int (*fn)(LLMHandle *, RKLLM12Param *, LLMResultCallback) = lib->init;
		return fn(h, param, rk_result_callback);
	}
	memset(cb, 0, sizeof *cb);
	cb->result_callback = rk_result_callback;
	int (*fn)(LLMHandle *, RKLLM13Param *, RKLLM13Callback *) = lib->init;
	return fn(h, param, cb);
}

int rk_run(const rk_lib *lib, LLMHandle h, void *input, void *infer, rk_run_ctx *run)
{
	if (lib->abi == 12) {
		int (*fn)(LLMHandle, RKLLM12Input *, RKLLM12InferParam *, void *) = lib->run;
		return fn(h, input, infer, run);
	}
	int (*fn)(LLMHandle, RKLLM13Input *, RKLLM13InferParam *, void *) = lib->run;
	return fn(h, input, infer, run);
}

int rk_destroy(const rk_lib *lib, LLMHandle h) { return lib->destroy(h); }
int rk_abort(const rk_lib *lib, LLMHandle h) { return lib->abort_run(h); }
int rk_is_running(const rk_lib *lib, LLMHandle h) { return lib->is_running(h); }

int rk_load_lora(const rk_lib *lib, LLMHandle h, RKLLMLoraAdapter *a)
{
	return lib->load_lora(h, a);
}

int rk_load_prompt_cache(const rk_lib *lib, LLMHandle h, const char *path)
{
	return lib->load_prompt_cache(h, path);
}

int rk_release_prompt_cache(const rk_lib *lib, LLMHandle h)
{
	return lib->release_prompt_cache(h);
}

int rk_clear_kv_cache(const rk_lib *lib, LLMHandle h, int keep, int *start, int *end)
{
	return lib->clear_kv_cache(h, keep, start, end);
}

int rk_get_kv_cache_size(const rk_lib *lib, LLMHandle h, int *sizes)
{
	return lib->get_kv_cache_size(h, sizes);
}

int rk_set_chat_template(const rk_lib *lib, LLMHandle h, const char *sys, const char *prefix,
			 const char *postfix)
{
	return lib->set_chat_template(h, sys, prefix, postfix);
}

int rk_set_function_tools(const rk_lib *lib, LLMHandle h, const char *sys, const char *tools,
			  const char *resp)
{
	return lib->set_function_tools(h, sys, tools, resp);
}

int rk_set_cross_attn_params(const rk_lib *lib, LLMHandle h, RKLLMCrossAttnParam *p)
{
	return lib->set_cross_attn_params(h, p);
}

#define RK_INPUT_HEAD(in, r, t, ty) \
	do {                        \
		(in)->role = (r);   \
		(in)->enable_thinking = (t); \
		(in)->input_type = (ty); \
	} while (0)

void rk12_input_prompt(RKLLM12Input *in, const char *role, bool think, const char *prompt)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_PROMPT);
	in->prompt_input = prompt;
}

void rk12_input_tokens(RKLLM12Input *in, const char *role, bool think, int32_t *ids, size_t n)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_TOKEN);
	in->token_input.input_ids = ids;
	in->token_input.n_tokens = n;
}

void rk12_input_embed(RKLLM12Input *in, const char *role, bool think, float *embed, size_t n)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_EMBED);
	in->embed_input.embed = embed;
	in->embed_input.n_tokens = n;
}

void rk12_input_multimodal(RKLLM12Input *in, const char *role, bool think,
			   const RKLLM12MultiModalInput *mm)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_MULTIMODAL);
	in->multimodal_input = *mm;
}

void rk13_input_prompt(RKLLM13Input *in, const char *role, bool think, const char *prompt)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_PROMPT);
	in->prompt_input = prompt;
}

void rk13_input_tokens(RKLLM13Input *in, const char *role, bool think, int32_t *ids, size_t n)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_TOKEN);
	in->token_input.input_ids = ids;
	in->token_input.n_tokens = n;
}

void rk13_input_embed(RKLLM13Input *in, const char *role, bool think, float *embed, size_t n)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_EMBED);
	in->embed_input.embed = embed;
	in->embed_input.n_tokens = n;
}

void rk13_input_multimodal(RKLLM13Input *in, const char *role, bool think,
			   const RKLLM13MultiModalInput *mm)
{
	RK_INPUT_HEAD(in, role, think, RKLLM_INPUT_MULTIMODAL);
	in->multimodal_input = *mm;
}
