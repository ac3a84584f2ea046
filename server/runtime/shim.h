/*
 * shim.h: the C side of the binding. It loads the runtime with dlopen/dlsym, calls it
 * through function pointers (which Go cannot call), fills RKLLMInput's anonymous union
 * (which Go cannot address) and forwards result callbacks to Go.
 *
 * Declarations only: the cgo preamble of a file with //export may not hold definitions.
 */
#ifndef RKLLM_SHIM_H
#define RKLLM_SHIM_H

#include "rkllm_abi.h"

typedef struct {
	void *dl;
	int abi; /* 12 or 13 */
	void *create_default_param;
	void *init;
	void *run;
	int (*destroy)(LLMHandle);
	int (*abort_run)(LLMHandle);
	int (*is_running)(LLMHandle);
	/* optional: NULL when the library lacks the symbol */
	int (*load_lora)(LLMHandle, RKLLMLoraAdapter *);
	int (*load_prompt_cache)(LLMHandle, const char *);
	int (*release_prompt_cache)(LLMHandle);
	int (*clear_kv_cache)(LLMHandle, int, int *, int *);
	int (*get_kv_cache_size)(LLMHandle, int *);
	int (*set_chat_template)(LLMHandle, const char *, const char *, const char *);
	int (*set_function_tools)(LLMHandle, const char *, const char *, const char *);
	int (*set_cross_attn_params)(LLMHandle, RKLLMCrossAttnParam *);
	const char *(*sim_version)(void); /* the simulator's own symbol */
} rk_lib;

/* Optional functions, by index, for rk_has. */
enum {
	RK_LOAD_LORA,
	RK_LOAD_PROMPT_CACHE,
	RK_RELEASE_PROMPT_CACHE,
	RK_CLEAR_KV_CACHE,
	RK_GET_KV_CACHE_SIZE,
	RK_SET_CHAT_TEMPLATE,
	RK_SET_FUNCTION_TOOLS,
	RK_SET_CROSS_ATTN_PARAMS,
};

/* A sink takes a run's deliveries in C, on the runtime's thread, before Go does: it
 * returns the callback's action, or RK_SINK_PASS to hand the delivery to Go. A
 * delivery that Go never sees costs no entry into Go (a scheduler hand-off and its
 * wake-ups), which is most of what a token costs a process that otherwise sleeps. */
#define RK_SINK_PASS (-1)
typedef int (*rk_sink_fn)(void *arg, const RKLLMResult *results, int n_results, int state);

/* rk_run_ctx is the result callback's userdata: one per handle, set up for each run. */
typedef struct {
	uintptr_t go_run; /* the run's cgo.Handle */
	int n_batch;
	rk_sink_fn sink; /* NULL: every delivery goes to Go */
	void *sink_arg;
	int go_only; /* atomic; set when Go must see every delivery from now on */
} rk_run_ctx;

/* rk_run_go_only makes every later delivery of the run go to Go. */
void rk_run_go_only(rk_run_ctx *run);

/* rk_open loads path and resolves the symbols. On failure it returns -1 and writes
 * the dlerror text (dl_err) or the name of the first missing symbol (missing). */
int rk_open(const char *path, int abi, rk_lib *lib, char *dl_err, size_t dl_err_len,
	    const char **missing);
/* rk_probe_abi calls rkllm_createDefaultParam into a buffer large enough for either
 * ABI and reports whether its extend_param defaults sit where each ABI puts them. */
void rk_probe_abi(const rk_lib *lib, int *looks12, int *looks13);
const char *rk_optional_name(int which);
/* rk_sim_version returns the simulator's version string, or NULL for other libraries. */
const char *rk_sim_version(const rk_lib *lib);
/* rk_close unloads a library that has no handles. */
void rk_close(rk_lib *lib);
int rk_has(const rk_lib *lib, int which);

void rk_default_param12(const rk_lib *lib, RKLLM12Param *out);
void rk_default_param13(const rk_lib *lib, RKLLM13Param *out);
/* rk_init calls rkllm_init with the binding's result callback. cb is the 1.3 callback
 * struct, owned by the caller for the handle's life (unused for 1.2). */
int rk_init(const rk_lib *lib, LLMHandle *h, void *param, RKLLM13Callback *cb);
int rk_run(const rk_lib *lib, LLMHandle h, void *input, void *infer, rk_run_ctx *run);

int rk_destroy(const rk_lib *lib, LLMHandle h);
int rk_abort(const rk_lib *lib, LLMHandle h);
int rk_is_running(const rk_lib *lib, LLMHandle h);
int rk_load_lora(const rk_lib *lib, LLMHandle h, RKLLMLoraAdapter *a);
int rk_load_prompt_cache(const rk_lib *lib, LLMHandle h, const char *path);
int rk_release_prompt_cache(const rk_lib *lib, LLMHandle h);
int rk_clear_kv_cache(const rk_lib *lib, LLMHandle h, int keep, int *start, int *end);
int rk_get_kv_cache_size(const rk_lib *lib, LLMHandle h, int *sizes);
int rk_set_chat_template(const rk_lib *lib, LLMHandle h, const char *sys, const char *prefix,
			 const char *postfix);
int rk_set_function_tools(const rk_lib *lib, LLMHandle h, const char *sys, const char *tools,
			  const char *resp);
int rk_set_cross_attn_params(const rk_lib *lib, LLMHandle h, RKLLMCrossAttnParam *p);

/* Filling RKLLMInput: the common head, then one union member. */
void rk12_input_prompt(RKLLM12Input *in, const char *role, bool think, const char *prompt);
void rk12_input_tokens(RKLLM12Input *in, const char *role, bool think, int32_t *ids, size_t n);
void rk12_input_embed(RKLLM12Input *in, const char *role, bool think, float *embed, size_t n);
void rk12_input_multimodal(RKLLM12Input *in, const char *role, bool think,
			   const RKLLM12MultiModalInput *mm);
void rk13_input_prompt(RKLLM13Input *in, const char *role, bool think, const char *prompt);
void rk13_input_tokens(RKLLM13Input *in, const char *role, bool think, int32_t *ids, size_t n);
void rk13_input_embed(RKLLM13Input *in, const char *role, bool think, float *embed, size_t n);
void rk13_input_multimodal(RKLLM13Input *in, const char *role, bool think,
			   const RKLLM13MultiModalInput *mm);

#endif
