/* model.c: loading the simulator's model files, and its tokenizer. */
#include "model.h"

#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIM_MODEL_MAX_BYTES (64u << 20)

static char *xstrdup(const char *s)
{
	char *d = strdup(s ? s : "");
	if (!d) {
		fprintf(stderr, "E rkllm-sim: out of memory\n");
		abort();
	}
	return d;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p) {
		fprintf(stderr, "E rkllm-sim: out of memory\n");
		abort();
	}
	return p;
}

uint64_t sim_hash(uint64_t h, uint64_t v)
{
	/* splitmix64 of the running state and the value */
	uint64_t z = h + 0x9E3779B97F4A7C15ull + v * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

uint64_t sim_hash_bytes(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t f = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		f = (f ^ b[i]) * 0x100000001b3ull;
	return sim_hash(h, f ^ n);
}

static int read_file(const char *path, char **out, size_t *n, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		snprintf(err, errlen, "cannot open '%s': %m", path);
		return -1;
	}
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (!buf) {
			fclose(f);
			snprintf(err, errlen, "out of memory reading '%s'", path);
			return -1;
		}
		size_t r = fread(buf + len, 1, cap - len, f);
		len += r;
		if (r == 0)
			break;
		if (len == cap) {
			if (cap >= SIM_MODEL_MAX_BYTES) {
				free(buf);
				fclose(f);
				snprintf(err, errlen, "'%s' is larger than %u bytes", path, SIM_MODEL_MAX_BYTES);
				return -1;
			}
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb)
				free(buf);
			buf = nb;
		}
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		snprintf(err, errlen, "cannot read '%s'", path);
		return -1;
	}
	*out = buf;
	*n = len;
	return 0;
}

static int get_num(const json_value *root, const char *key, double def, double lo, double hi,
		   double *out, char *err, size_t errlen)
{
	const json_value *v = json_get(root, key);
	if (!v) {
		*out = def;
		return 0;
	}
	if (v->type != JSON_NUMBER || v->number < lo || v->number > hi) {
		snprintf(err, errlen, "\"%s\" must be a number from %g to %g", key, lo, hi);
		return -1;
	}
	*out = v->number;
	return 0;
}

static int get_int(const json_value *root, const char *key, int def, int lo, int hi, int *out,
		   char *err, size_t errlen)
{
	double d;
	if (get_num(root, key, def, lo, hi, &d, err, errlen))
		return -1;
	if (d != (double)(int)d) {
		snprintf(err, errlen, "\"%s\" must be a whole number", key);
		return -1;
	}
	*out = (int)d;
	return 0;
}

static int get_str(const json_value *obj, const char *key, const char *def, char **out, char *err,
		   size_t errlen)
{
	const json_value *v = json_get(obj, key);
	if (v && v->type != JSON_STRING) {
		snprintf(err, errlen, "\"%s\" must be a string", key);
		return -1;
	}
	*out = xstrdup(v ? v->string : def);
	return 0;
}

static int utf8_len(unsigned char c)
{
	if (c < 0x80)
		return 1;
	if ((c & 0xE0) == 0xC0)
		return 2;
	if ((c & 0xF0) == 0xE0)
		return 3;
	if ((c & 0xF8) == 0xF0)
		return 4;
	return 0;
}

static int load_strings(const json_value *root, const char *key, bool one_multibyte_char,
			char ***out, size_t **lens, int *n, char *err, size_t errlen)
{
	const json_value *v = json_get(root, key);
	if (!v || v->type == JSON_NULL) {
		*n = 0;
		return 0;
	}
	if (v->type != JSON_ARRAY || v->len > 65536) {
		snprintf(err, errlen, "\"%s\" must be an array of at most 65536 strings", key);
		return -1;
	}
	*out = xcalloc(v->len, sizeof **out);
	if (lens)
		*lens = xcalloc(v->len, sizeof **lens);
	*n = (int)v->len;
	for (size_t i = 0; i < v->len; i++) {
		const json_value *s = &v->items[i];
		if (s->type != JSON_STRING || s->len == 0) {
			snprintf(err, errlen, "\"%s\"[%zu] must be a non-empty string", key, i);
			return -1;
		}
		if (one_multibyte_char &&
		    (s->len < 2 || utf8_len((unsigned char)s->string[0]) != (int)s->len)) {
			snprintf(err, errlen, "\"%s\"[%zu] must be one multi-byte UTF-8 character", key, i);
			return -1;
		}
		(*out)[i] = xstrdup(s->string);
		if (lens)
			(*lens)[i] = s->len;
	}
	return 0;
}

static int cmp_len_desc(const void *a, const void *b, void *words_len)
{
	const size_t *lens = words_len;
	int x = *(const int *)a - SIM_FIRST_WORD, y = *(const int *)b - SIM_FIRST_WORD;
	if (lens[x] != lens[y])
		return lens[x] > lens[y] ? -1 : 1;
	return x - y;
}

static void index_words(sim_model *m)
{
	int count[256] = {0};
	for (int i = 0; i < m->n_words; i++)
		count[(unsigned char)m->words[i][0]]++;
	for (int c = 0; c < 256; c++) {
		m->by_first[c] = xcalloc((size_t)count[c] + 1, sizeof(int));
		m->by_first[c][count[c]] = -1;
		count[c] = 0;
	}
	for (int i = 0; i < m->n_words; i++) {
		int c = (unsigned char)m->words[i][0];
		m->by_first[c][count[c]++] = SIM_FIRST_WORD + i;
	}
	for (int c = 0; c < 256; c++)
		qsort_r(m->by_first[c], (size_t)count[c], sizeof(int), cmp_len_desc, m->word_len);
}

static int parse_model(sim_model *m, const json_value *root, char *err, size_t errlen)
{
	int format;
	double seed;
	if (root->type != JSON_OBJECT) {
		snprintf(err, errlen, "the body must be a JSON object");
		return -1;
	}
	if (get_int(root, "format", 0, 1, 1, &format, err, errlen))
		return -1;
	if (!json_get(root, "format")) {
		snprintf(err, errlen, "\"format\" is missing (want 1)");
		return -1;
	}
	if (get_str(root, "name", "unnamed", &m->name, err, errlen) ||
	    get_int(root, "max_context_limit", 4096, 16, 1 << 20, &m->max_context_limit, err, errlen) ||
	    get_int(root, "hidden_size", 16, 1, 8192, &m->hidden_size, err, errlen) ||
	    get_num(root, "decode_tokens_per_second", 15, 0, 1e6, &m->decode_tps, err, errlen) ||
	    get_num(root, "prefill_tokens_per_second", 150, 0, 1e7, &m->prefill_tps, err, errlen) ||
	    get_num(root, "seed", 0, 0, 9007199254740991.0, &seed, err, errlen) ||
	    get_int(root, "reply_min_tokens", 8, 0, 1 << 20, &m->reply_min, err, errlen) ||
	    get_int(root, "reply_max_tokens", 32, 0, 1 << 20, &m->reply_max, err, errlen) ||
	    get_num(root, "memory_mb", 1024, 0, 1e7, &m->memory_mb, err, errlen) ||
	    get_str(root, "eos", "<|im_end|>", &m->eos, err, errlen))
		return -1;
	m->seed = (uint64_t)seed;
	if (m->reply_max < m->reply_min) {
		snprintf(err, errlen, "\"reply_max_tokens\" is below \"reply_min_tokens\"");
		return -1;
	}
	if (load_strings(root, "vocab", false, &m->words, &m->word_len, &m->n_words, err, errlen) ||
	    load_strings(root, "byte_fallback", true, &m->fallback, NULL, &m->n_fallback, err, errlen))
		return -1;
	if (m->n_words == 0) {
		snprintf(err, errlen, "\"vocab\" must hold at least one word");
		return -1;
	}
	const json_value *t = json_get(root, "chat_template");
	if (t && t->type != JSON_OBJECT) {
		snprintf(err, errlen, "\"chat_template\" must be an object");
		return -1;
	}
	if (get_str(t, "system", "", &m->tmpl_system, err, errlen) ||
	    get_str(t, "prefix", "", &m->tmpl_prefix, err, errlen) ||
	    get_str(t, "postfix", "", &m->tmpl_postfix, err, errlen) ||
	    get_str(t, "thinking_off", "", &m->tmpl_thinking_off, err, errlen))
		return -1;
	index_words(m);
	return 0;
}

int sim_model_load(sim_model *m, const char *path, char *err, size_t errlen)
{
	char *buf;
	size_t n;
	size_t magic = strlen(SIM_MODEL_MAGIC);
	memset(m, 0, sizeof *m);
	if (read_file(path, &buf, &n, err, errlen))
		return -1;
	if (n < magic || memcmp(buf, SIM_MODEL_MAGIC, magic) != 0) {
		free(buf);
		snprintf(err, errlen, "magic");
		return -2;
	}
	json_value root;
	char jerr[128];
	if (json_parse(buf + magic, n - magic, &root, jerr, sizeof jerr)) {
		free(buf);
		snprintf(err, errlen, "the body is not valid JSON: %s", jerr);
		return -1;
	}
	free(buf);
	int rc = parse_model(m, &root, err, errlen);
	json_free(&root);
	if (rc)
		sim_model_free(m);
	return rc;
}

void sim_model_free(sim_model *m)
{
	for (int i = 0; m->words && i < m->n_words; i++)
		free(m->words[i]);
	for (int i = 0; m->fallback && i < m->n_fallback; i++)
		free(m->fallback[i]);
	for (int c = 0; c < 256; c++)
		free(m->by_first[c]);
	free(m->words);
	free(m->word_len);
	free(m->fallback);
	free(m->name);
	free(m->eos);
	free(m->tmpl_system);
	free(m->tmpl_prefix);
	free(m->tmpl_postfix);
	free(m->tmpl_thinking_off);
	memset(m, 0, sizeof *m);
}

int sim_vocab_size(const sim_model *m)
{
	return SIM_FIRST_WORD + m->n_words;
}

const char *sim_token_text(const sim_model *m, int32_t id, size_t *n)
{
#define R4(n) n, n + 1, n + 2, n + 3
#define R16(n) R4(n), R4(n + 4), R4(n + 8), R4(n + 12)
#define R64(n) R16(n), R16(n + 16), R16(n + 32), R16(n + 48)
	static const unsigned char bytes[256] = {R64(0), R64(64), R64(128), R64(192)};
	if (id >= SIM_FIRST_WORD && id < sim_vocab_size(m)) {
		*n = m->word_len[id - SIM_FIRST_WORD];
		return m->words[id - SIM_FIRST_WORD];
	}
	if (id == SIM_TOKEN_EOS) {
		*n = strlen(m->eos);
		return m->eos;
	}
	if (id >= 0 && id < 256) {
		*n = 1;
		return (const char *)&bytes[id];
	}
	*n = 0;
	return "";
}

void sim_seq_push(sim_seq *s, int32_t tok, const float *row)
{
	if (s->n == s->cap) {
		int cap = s->cap ? s->cap * 2 : 64;
		int32_t *t = realloc(s->tok, (size_t)cap * sizeof *t);
		const float **r = t ? realloc(s->rows, (size_t)cap * sizeof *r) : NULL;
		if (!t || !r) {
			fprintf(stderr, "E rkllm-sim: out of memory\n");
			abort();
		}
		s->tok = t;
		s->rows = r;
		s->cap = cap;
	}
	s->tok[s->n] = tok;
	s->rows[s->n] = row;
	s->n++;
}

void sim_seq_text(sim_seq *s, const sim_model *m, const char *text)
{
	size_t eos_len = strlen(m->eos);
	const char *p = text;
	while (*p) {
		if (eos_len && strncmp(p, m->eos, eos_len) == 0) {
			sim_seq_push(s, SIM_TOKEN_EOS, NULL);
			p += eos_len;
			continue;
		}
		const int *ids = m->by_first[(unsigned char)*p];
		int match = -1;
		for (; ids && *ids >= 0; ids++) {
			size_t n = m->word_len[*ids - SIM_FIRST_WORD];
			if (strncmp(p, m->words[*ids - SIM_FIRST_WORD], n) == 0) {
				match = *ids;
				break;
			}
		}
		if (match >= 0) {
			sim_seq_push(s, match, NULL);
			p += m->word_len[match - SIM_FIRST_WORD];
		} else {
			sim_seq_push(s, (unsigned char)*p, NULL);
			p++;
		}
	}
}

void sim_seq_rows(sim_seq *s, const float *base, size_t n, int e)
{
	for (size_t i = 0; i < n; i++) {
		const float *row = base + i * (size_t)e;
		/* An embedding position has no token id; the cache records a negative id
		 * derived from the row so that generation depends on it. */
		uint64_t h = sim_hash_bytes(0, row, (size_t)e * sizeof(float));
		sim_seq_push(s, -1 - (int32_t)(h % 0x7FFFFFF0u), row);
	}
}

void sim_seq_free(sim_seq *s)
{
	free(s->tok);
	free(s->rows);
	memset(s, 0, sizeof *s);
}
