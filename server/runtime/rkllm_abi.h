/*
 * rkllm_abi.h: the project's own C declarations of the RKLLM runtime ABI, written from
 * the fact sheet (docs/runtime.md), for both ABIs the binding speaks:
 *
 *   ABI 1.2 = runtime 1.2.1, 1.2.2, 1.2.3 (types prefixed RKLLM12)
 *   ABI 1.3 = runtime 1.3.0              (types prefixed RKLLM13)
 *
 * Types whose layout is the same in both ABIs carry the runtime's own names. Both ABIs
 * live in one header so that the binding can hold both in one translation unit; the
 * simulator maps the prefixed names to the runtime's names for the ABI it is built for.
 *
 * Every struct size and field offset in the fact sheet is checked at compile time below
 * (LP64: aarch64 and x86_64 agree). The vendor header needs C++ (<cstdint>) and uses
 * bool/size_t without their headers; this one is plain C11.
 */
#ifndef RKLLM_ABI_H
#define RKLLM_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void *LLMHandle;

/* Enums: 4-byte ints, equal values in 1.2 and 1.3. */
typedef enum {
	RKLLM_RUN_NORMAL = 0,
	RKLLM_RUN_WAITING = 1,
	RKLLM_RUN_FINISH = 2,
	RKLLM_RUN_ERROR = 3,
} LLMCallState;

typedef enum {
	RKLLM_INPUT_PROMPT = 0,
	RKLLM_INPUT_TOKEN = 1,
	RKLLM_INPUT_EMBED = 2,
	RKLLM_INPUT_MULTIMODAL = 3,
} RKLLMInputType;

typedef enum {
	RKLLM_INFER_GENERATE = 0,
	RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1,
	RKLLM_INFER_GET_LOGITS = 2,
} RKLLMInferMode;

/* ---- Structs with one layout in both ABIs ---- */

typedef struct {
	int32_t base_domain_id;
	int8_t embed_flash;
	int8_t enabled_cpus_num;
	uint32_t enabled_cpus_mask;
	uint8_t n_batch;
	int8_t use_cross_attn;
	uint8_t reserved[104];
} RKLLMExtendParam;

typedef struct {
	const char *lora_adapter_path;
	const char *lora_adapter_name;
	float scale;
} RKLLMLoraAdapter;

typedef struct {
	float *embed;
	size_t n_tokens;
} RKLLMEmbedInput;

typedef struct {
	int32_t *input_ids;
	size_t n_tokens;
} RKLLMTokenInput;

typedef struct {
	const char *lora_adapter_name;
} RKLLMLoraParam;

typedef struct {
	int save_prompt_cache;
	const char *prompt_cache_path;
} RKLLMPromptCacheParam;

typedef struct {
	float *encoder_k_cache;
	float *encoder_v_cache;
	float *encoder_mask;
	int32_t *encoder_pos;
	int num_tokens;
} RKLLMCrossAttnParam;

typedef struct {
	const float *hidden_states;
	int embd_size;
	int num_tokens;
} RKLLMResultLastHiddenLayer;

typedef struct {
	const float *logits;
	int vocab_size;
	int num_tokens;
} RKLLMResultLogits;

typedef struct {
	float prefill_time_ms;
	int prefill_tokens;
	float generate_time_ms;
	int generate_tokens;
	float memory_usage_mb;
} RKLLMPerfStat;

typedef struct {
	const char *text;
	int32_t token_id;
	RKLLMResultLastHiddenLayer last_hidden_layer;
	RKLLMResultLogits logits;
	RKLLMPerfStat perf;
} RKLLMResult;

/* Result callback, both ABIs: 0 continue, 1 pause, 2 (1.3) release the output buffer. */
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);

/* ---- ABI 1.2 ---- */

typedef struct {
	const char *model_path;
	int32_t max_context_len;
	int32_t max_new_tokens;
	int32_t top_k;
	int32_t n_keep;
	float top_p;
	float temperature;
	float repeat_penalty;
	float frequency_penalty;
	float presence_penalty;
	int32_t mirostat;
	float mirostat_tau;
	float mirostat_eta;
	bool skip_special_token;
	bool is_async;
	const char *img_start;
	const char *img_end;
	const char *img_content;
	RKLLMExtendParam extend_param;
} RKLLM12Param;

/* Spelled RKLLMMultiModelInput up to runtime 1.2.2. */
typedef struct {
	char *prompt;
	float *image_embed;
	size_t n_image_tokens;
	size_t n_image;
	size_t image_width;
	size_t image_height;
} RKLLM12MultiModalInput;

typedef struct {
	const char *role;
	bool enable_thinking;
	RKLLMInputType input_type;
	union {
		const char *prompt_input;
		RKLLMEmbedInput embed_input;
		RKLLMTokenInput token_input;
		RKLLM12MultiModalInput multimodal_input;
	};
} RKLLM12Input;

typedef struct {
	RKLLMInferMode mode;
	RKLLMLoraParam *lora_params;
	RKLLMPromptCacheParam *prompt_cache_params;
	int keep_history;
} RKLLM12InferParam;

/* ---- ABI 1.3 ---- */

typedef struct {
	const char *model_path;
	int32_t max_context_len;
	int32_t max_new_tokens;
	int32_t top_k;
	int32_t n_keep;
	float top_p;
	float temperature;
	float repeat_penalty;
	float frequency_penalty;
	float presence_penalty;
	int32_t mirostat;
	float mirostat_tau;
	float mirostat_eta;
	bool skip_special_token;
	bool ignore_eos_token;
	bool is_async;
	RKLLMExtendParam extend_param;
} RKLLM13Param;

typedef struct {
	float *image_embed;
	size_t n_image_tokens;
	size_t n_image;
	const char *image_start;
	const char *image_end;
	const char *image_content;
	size_t image_width;
	size_t image_height;
} RKLLM13ImageInput;

typedef struct {
	float *video_embed;
	size_t n_frame_tokens;
	size_t n_frame_per_video;
	size_t n_video;
	const char *video_start;
	const char *video_end;
	const char *video_content;
	size_t frame_width;
	size_t frame_height;
} RKLLM13VideoInput;

typedef struct {
	char *prompt;
	RKLLM13ImageInput image;
	RKLLM13VideoInput video;
} RKLLM13MultiModalInput;

typedef struct {
	const char *role;
	bool enable_thinking;
	RKLLMInputType input_type;
	union {
		const char *prompt_input;
		RKLLMEmbedInput embed_input;
		RKLLMTokenInput token_input;
		RKLLM13MultiModalInput multimodal_input;
	};
} RKLLM13Input;

typedef struct {
	int32_t top_k;
	float top_p;
	float temperature;
	float repeat_penalty;
	float frequency_penalty;
	float presence_penalty;
	int32_t mirostat;
	float mirostat_tau;
	float mirostat_eta;
} RKLLMSamplingParam;

typedef struct {
	RKLLMInferMode mode;
	RKLLMLoraParam *lora_params;
	RKLLMPromptCacheParam *prompt_cache_params;
	RKLLMSamplingParam *sampling_params;
	int keep_history;
	int32_t max_new_tokens;
} RKLLM13InferParam;

typedef int (*LLMTokenizerCallback)(void *userdata, const char *text, int32_t text_len,
				    int32_t *tokens, int32_t n_tokens_max);
typedef int (*LLMEmbedCallback)(void *userdata, int32_t *tokens, uint64_t num_tokens,
				void *embed, uint64_t len);

typedef struct {
	LLMResultCallback result_callback;
	void *result_userdata;
	LLMTokenizerCallback tokenizer_callback;
	void *tokenizer_userdata;
	LLMEmbedCallback embed_callback;
	void *embed_userdata;
} RKLLM13Callback;

/* ---- Compile-time layout checks: every size and offset of the fact sheet ---- */

#define RKLLM_CHECK_SIZE(T, n) _Static_assert(sizeof(T) == (n), "sizeof(" #T ") != " #n)
#define RKLLM_CHECK_OFF(T, f, n) \
	_Static_assert(offsetof(T, f) == (n), "offsetof(" #T ", " #f ") != " #n)

_Static_assert(sizeof(void *) == 8 && sizeof(size_t) == 8 && sizeof(int) == 4 &&
		       sizeof(float) == 4 && sizeof(bool) == 1 && sizeof(LLMCallState) == 4 &&
		       sizeof(RKLLMInputType) == 4 && sizeof(RKLLMInferMode) == 4,
	       "the RKLLM ABI is defined for LP64 targets only");

RKLLM_CHECK_SIZE(RKLLMExtendParam, 120);
_Static_assert(_Alignof(RKLLMExtendParam) == 4, "RKLLMExtendParam must be 4-aligned");
RKLLM_CHECK_OFF(RKLLMExtendParam, base_domain_id, 0);
RKLLM_CHECK_OFF(RKLLMExtendParam, embed_flash, 4);
RKLLM_CHECK_OFF(RKLLMExtendParam, enabled_cpus_num, 5);
RKLLM_CHECK_OFF(RKLLMExtendParam, enabled_cpus_mask, 8);
RKLLM_CHECK_OFF(RKLLMExtendParam, n_batch, 12);
RKLLM_CHECK_OFF(RKLLMExtendParam, use_cross_attn, 13);
RKLLM_CHECK_OFF(RKLLMExtendParam, reserved, 14);

#define RKLLM_CHECK_PARAM_COMMON(T)                 \
	RKLLM_CHECK_OFF(T, model_path, 0);          \
	RKLLM_CHECK_OFF(T, max_context_len, 8);     \
	RKLLM_CHECK_OFF(T, max_new_tokens, 12);     \
	RKLLM_CHECK_OFF(T, top_k, 16);              \
	RKLLM_CHECK_OFF(T, n_keep, 20);             \
	RKLLM_CHECK_OFF(T, top_p, 24);              \
	RKLLM_CHECK_OFF(T, temperature, 28);        \
	RKLLM_CHECK_OFF(T, repeat_penalty, 32);     \
	RKLLM_CHECK_OFF(T, frequency_penalty, 36);  \
	RKLLM_CHECK_OFF(T, presence_penalty, 40);   \
	RKLLM_CHECK_OFF(T, mirostat, 44);           \
	RKLLM_CHECK_OFF(T, mirostat_tau, 48);       \
	RKLLM_CHECK_OFF(T, mirostat_eta, 52);       \
	RKLLM_CHECK_OFF(T, skip_special_token, 56); \
	_Static_assert(_Alignof(T) == 8, #T " must be 8-aligned")

RKLLM_CHECK_SIZE(RKLLM13Param, 184);
RKLLM_CHECK_PARAM_COMMON(RKLLM13Param);
RKLLM_CHECK_OFF(RKLLM13Param, ignore_eos_token, 57);
RKLLM_CHECK_OFF(RKLLM13Param, is_async, 58);
RKLLM_CHECK_OFF(RKLLM13Param, extend_param, 60);

RKLLM_CHECK_SIZE(RKLLM12Param, 208);
RKLLM_CHECK_PARAM_COMMON(RKLLM12Param);
RKLLM_CHECK_OFF(RKLLM12Param, is_async, 57);
RKLLM_CHECK_OFF(RKLLM12Param, img_start, 64);
RKLLM_CHECK_OFF(RKLLM12Param, img_end, 72);
RKLLM_CHECK_OFF(RKLLM12Param, img_content, 80);
RKLLM_CHECK_OFF(RKLLM12Param, extend_param, 88);

RKLLM_CHECK_SIZE(RKLLMLoraAdapter, 24);
RKLLM_CHECK_OFF(RKLLMLoraAdapter, lora_adapter_path, 0);
RKLLM_CHECK_OFF(RKLLMLoraAdapter, lora_adapter_name, 8);
RKLLM_CHECK_OFF(RKLLMLoraAdapter, scale, 16);

RKLLM_CHECK_SIZE(RKLLMEmbedInput, 16);
RKLLM_CHECK_OFF(RKLLMEmbedInput, embed, 0);
RKLLM_CHECK_OFF(RKLLMEmbedInput, n_tokens, 8);

RKLLM_CHECK_SIZE(RKLLMTokenInput, 16);
RKLLM_CHECK_OFF(RKLLMTokenInput, input_ids, 0);
RKLLM_CHECK_OFF(RKLLMTokenInput, n_tokens, 8);

RKLLM_CHECK_SIZE(RKLLM12MultiModalInput, 48);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, prompt, 0);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, image_embed, 8);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, n_image_tokens, 16);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, n_image, 24);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, image_width, 32);
RKLLM_CHECK_OFF(RKLLM12MultiModalInput, image_height, 40);

RKLLM_CHECK_SIZE(RKLLM13MultiModalInput, 144);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, prompt, 0);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image, 8);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_embed, 8);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.n_image_tokens, 16);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.n_image, 24);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_start, 32);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_end, 40);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_content, 48);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_width, 56);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, image.image_height, 64);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video, 72);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.video_embed, 72);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.n_frame_tokens, 80);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.n_frame_per_video, 88);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.n_video, 96);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.video_start, 104);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.video_end, 112);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.video_content, 120);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.frame_width, 128);
RKLLM_CHECK_OFF(RKLLM13MultiModalInput, video.frame_height, 136);

#define RKLLM_CHECK_INPUT(T)                        \
	RKLLM_CHECK_OFF(T, role, 0);                \
	RKLLM_CHECK_OFF(T, enable_thinking, 8);     \
	RKLLM_CHECK_OFF(T, input_type, 12);         \
	RKLLM_CHECK_OFF(T, prompt_input, 16);       \
	RKLLM_CHECK_OFF(T, embed_input, 16);        \
	RKLLM_CHECK_OFF(T, token_input, 16);        \
	RKLLM_CHECK_OFF(T, multimodal_input, 16)

RKLLM_CHECK_SIZE(RKLLM12Input, 64);
RKLLM_CHECK_INPUT(RKLLM12Input);
RKLLM_CHECK_SIZE(RKLLM13Input, 160);
RKLLM_CHECK_INPUT(RKLLM13Input);

RKLLM_CHECK_SIZE(RKLLMLoraParam, 8);
RKLLM_CHECK_OFF(RKLLMLoraParam, lora_adapter_name, 0);

RKLLM_CHECK_SIZE(RKLLMPromptCacheParam, 16);
RKLLM_CHECK_OFF(RKLLMPromptCacheParam, save_prompt_cache, 0);
RKLLM_CHECK_OFF(RKLLMPromptCacheParam, prompt_cache_path, 8);

RKLLM_CHECK_SIZE(RKLLMCrossAttnParam, 40);
RKLLM_CHECK_OFF(RKLLMCrossAttnParam, encoder_k_cache, 0);
RKLLM_CHECK_OFF(RKLLMCrossAttnParam, encoder_v_cache, 8);
RKLLM_CHECK_OFF(RKLLMCrossAttnParam, encoder_mask, 16);
RKLLM_CHECK_OFF(RKLLMCrossAttnParam, encoder_pos, 24);
RKLLM_CHECK_OFF(RKLLMCrossAttnParam, num_tokens, 32);

RKLLM_CHECK_SIZE(RKLLMSamplingParam, 36);
RKLLM_CHECK_OFF(RKLLMSamplingParam, top_k, 0);
RKLLM_CHECK_OFF(RKLLMSamplingParam, top_p, 4);
RKLLM_CHECK_OFF(RKLLMSamplingParam, temperature, 8);
RKLLM_CHECK_OFF(RKLLMSamplingParam, repeat_penalty, 12);
RKLLM_CHECK_OFF(RKLLMSamplingParam, frequency_penalty, 16);
RKLLM_CHECK_OFF(RKLLMSamplingParam, presence_penalty, 20);
RKLLM_CHECK_OFF(RKLLMSamplingParam, mirostat, 24);
RKLLM_CHECK_OFF(RKLLMSamplingParam, mirostat_tau, 28);
RKLLM_CHECK_OFF(RKLLMSamplingParam, mirostat_eta, 32);

RKLLM_CHECK_SIZE(RKLLM12InferParam, 32);
RKLLM_CHECK_OFF(RKLLM12InferParam, mode, 0);
RKLLM_CHECK_OFF(RKLLM12InferParam, lora_params, 8);
RKLLM_CHECK_OFF(RKLLM12InferParam, prompt_cache_params, 16);
RKLLM_CHECK_OFF(RKLLM12InferParam, keep_history, 24);

RKLLM_CHECK_SIZE(RKLLM13InferParam, 40);
RKLLM_CHECK_OFF(RKLLM13InferParam, mode, 0);
RKLLM_CHECK_OFF(RKLLM13InferParam, lora_params, 8);
RKLLM_CHECK_OFF(RKLLM13InferParam, prompt_cache_params, 16);
RKLLM_CHECK_OFF(RKLLM13InferParam, sampling_params, 24);
RKLLM_CHECK_OFF(RKLLM13InferParam, keep_history, 32);
RKLLM_CHECK_OFF(RKLLM13InferParam, max_new_tokens, 36);

RKLLM_CHECK_SIZE(RKLLMResultLastHiddenLayer, 16);
RKLLM_CHECK_OFF(RKLLMResultLastHiddenLayer, hidden_states, 0);
RKLLM_CHECK_OFF(RKLLMResultLastHiddenLayer, embd_size, 8);
RKLLM_CHECK_OFF(RKLLMResultLastHiddenLayer, num_tokens, 12);

RKLLM_CHECK_SIZE(RKLLMResultLogits, 16);
RKLLM_CHECK_OFF(RKLLMResultLogits, logits, 0);
RKLLM_CHECK_OFF(RKLLMResultLogits, vocab_size, 8);
RKLLM_CHECK_OFF(RKLLMResultLogits, num_tokens, 12);

RKLLM_CHECK_SIZE(RKLLMPerfStat, 20);
RKLLM_CHECK_OFF(RKLLMPerfStat, prefill_time_ms, 0);
RKLLM_CHECK_OFF(RKLLMPerfStat, prefill_tokens, 4);
RKLLM_CHECK_OFF(RKLLMPerfStat, generate_time_ms, 8);
RKLLM_CHECK_OFF(RKLLMPerfStat, generate_tokens, 12);
RKLLM_CHECK_OFF(RKLLMPerfStat, memory_usage_mb, 16);

RKLLM_CHECK_SIZE(RKLLMResult, 72);
RKLLM_CHECK_OFF(RKLLMResult, text, 0);
RKLLM_CHECK_OFF(RKLLMResult, token_id, 8);
RKLLM_CHECK_OFF(RKLLMResult, last_hidden_layer, 16);
RKLLM_CHECK_OFF(RKLLMResult, logits, 32);
RKLLM_CHECK_OFF(RKLLMResult, perf, 48);

RKLLM_CHECK_SIZE(RKLLM13Callback, 48);
RKLLM_CHECK_OFF(RKLLM13Callback, result_callback, 0);
RKLLM_CHECK_OFF(RKLLM13Callback, result_userdata, 8);
RKLLM_CHECK_OFF(RKLLM13Callback, tokenizer_callback, 16);
RKLLM_CHECK_OFF(RKLLM13Callback, tokenizer_userdata, 24);
RKLLM_CHECK_OFF(RKLLM13Callback, embed_callback, 32);
RKLLM_CHECK_OFF(RKLLM13Callback, embed_userdata, 40);

#undef RKLLM_CHECK_PARAM_COMMON
#undef RKLLM_CHECK_INPUT

#endif /* RKLLM_ABI_H */
