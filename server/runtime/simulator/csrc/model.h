/* model.h: the simulator's model file and tokenizer (see ../README.md, "Model files"). */
#ifndef SIM_MODEL_H
#define SIM_MODEL_H

#include <stddef.h>
#include <stdint.h>

/* A model file starts with this magic line; the rest is a JSON object. */
#define SIM_MODEL_MAGIC "RKLLMSIM\n"

/* Token ids: 0..255 are byte tokens, 256 is the end-of-sequence token, and the model's
 * vocabulary words follow from 257. */
#define SIM_TOKEN_EOS 256
#define SIM_FIRST_WORD 257

typedef struct {
	char *name;
	int max_context_limit;
	int hidden_size;
	double decode_tps;  /* tokens/s; 0 = as fast as possible */
	double prefill_tps; /* tokens/s; 0 = as fast as possible */
	uint64_t seed;
	int reply_min, reply_max;
	double memory_mb;
	char *eos;
	char **words; /* vocabulary, id = SIM_FIRST_WORD + index */
	size_t *word_len;
	int n_words;
	char **fallback; /* characters emitted as byte tokens, one delivery per byte */
	int n_fallback;
	char *tmpl_system, *tmpl_prefix, *tmpl_postfix, *tmpl_thinking_off;
	int *by_first[256]; /* word ids by first byte, longest first; -1 terminated */
} sim_model;

/* sim_model_load reads a model file. On failure it returns -1 with a message in err. */
int sim_model_load(sim_model *m, const char *path, char *err, size_t errlen);
void sim_model_free(sim_model *m);
int sim_vocab_size(const sim_model *m);

/* sim_token_text returns the bytes of a token (not NUL-terminated) and their count. */
const char *sim_token_text(const sim_model *m, int32_t id, size_t *n);

/* A growable token sequence. rows[i] is the embedding row of position i, or NULL for a
 * token position; rows point into caller memory that lives for the run. */
typedef struct {
	int32_t *tok;
	const float **rows;
	int n, cap;
} sim_seq;

void sim_seq_push(sim_seq *s, int32_t tok, const float *row);
/* sim_seq_text appends the tokens of text: greedy longest match over the vocabulary and
 * the EOS string, byte tokens for everything else. */
void sim_seq_text(sim_seq *s, const sim_model *m, const char *text);
/* sim_seq_rows appends n embedding rows of width e taken from base. */
void sim_seq_rows(sim_seq *s, const float *base, size_t n, int e);
void sim_seq_free(sim_seq *s);

uint64_t sim_hash(uint64_t h, uint64_t v);
uint64_t sim_hash_bytes(uint64_t h, const void *p, size_t n);

#endif
