/* json.c: see json.h. A recursive-descent reader with a depth limit. */
#include "json.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
	const char *p, *start, *end;
	char *err;
	size_t errlen;
} parser;

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, "E rkllm-sim: out of memory\n");
		abort();
	}
	return q;
}

static int fail(parser *ps, const char *what)
{
	if (ps->err && ps->errlen)
		snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
	return -1;
}

static void skip_ws(parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static void put_utf8(sbuf *b, uint32_t cp)
{
	char c[4];
	size_t n;
	if (cp < 0x80) {
		c[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		c[0] = (char)(0xC0 | (cp >> 6));
		c[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		c[0] = (char)(0xE0 | (cp >> 12));
		c[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		c[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		c[0] = (char)(0xF0 | (cp >> 18));
		c[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		c[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		c[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	sbuf_put(b, c, n);
}

static int hex4(parser *ps, uint32_t *out)
{
	uint32_t v = 0;
	if (ps->end - ps->p < 4)
		return fail(ps, "truncated \\u escape");
	for (int i = 0; i < 4; i++) {
		char c = *ps->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return fail(ps, "bad \\u escape");
	}
	*out = v;
	return 0;
}

static int parse_string(parser *ps, char **out, size_t *outlen)
{
	sbuf b = {0};
	ps->p++; /* opening quote */
	while (ps->p < ps->end && *ps->p != '"') {
		unsigned char c = (unsigned char)*ps->p;
		if (c < 0x20) {
			sbuf_free(&b);
			return fail(ps, "control character in string");
		}
		if (c != '\\') {
			sbuf_put(&b, ps->p++, 1);
			continue;
		}
		ps->p++;
		if (ps->p >= ps->end)
			break;
		char e = *ps->p++;
		switch (e) {
		case '"': sbuf_put(&b, "\"", 1); break;
		case '\\': sbuf_put(&b, "\\", 1); break;
		case '/': sbuf_put(&b, "/", 1); break;
		case 'b': sbuf_put(&b, "\b", 1); break;
		case 'f': sbuf_put(&b, "\f", 1); break;
		case 'n': sbuf_put(&b, "\n", 1); break;
		case 'r': sbuf_put(&b, "\r", 1); break;
		case 't': sbuf_put(&b, "\t", 1); break;
		case 'u': {
			uint32_t cp, lo;
			if (hex4(ps, &cp)) {
				sbuf_free(&b);
				return -1;
			}
			if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' &&
			    ps->p[1] == 'u') {
				ps->p += 2;
				if (hex4(ps, &lo)) {
					sbuf_free(&b);
					return -1;
				}
				if (lo >= 0xDC00 && lo < 0xE000)
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				else
					cp = 0xFFFD;
			} else if (cp >= 0xD800 && cp < 0xE000) {
				cp = 0xFFFD;
			}
			if (cp == 0) {
				sbuf_free(&b);
				return fail(ps, "\\u0000 is not supported");
			}
			put_utf8(&b, cp);
			break;
		}
		default:
			sbuf_free(&b);
			return fail(ps, "bad escape");
		}
	}
	if (ps->p >= ps->end) {
		sbuf_free(&b);
		return fail(ps, "unterminated string");
	}
	ps->p++; /* closing quote */
	sbuf_put(&b, "", 0);
	*out = b.s;
	*outlen = b.len;
	return 0;
}

static int parse_value(parser *ps, json_value *v, int depth);

static int parse_members(parser *ps, json_value *v, int depth, bool object)
{
	char close = object ? '}' : ']';
	size_t cap = 0;
	ps->p++;
	skip_ws(ps);
	if (ps->p < ps->end && *ps->p == close) {
		ps->p++;
		return 0;
	}
	for (;;) {
		char *key = NULL;
		size_t keylen;
		skip_ws(ps);
		if (object) {
			if (ps->p >= ps->end || *ps->p != '"')
				return fail(ps, "expected a string key");
			if (parse_string(ps, &key, &keylen))
				return -1;
			skip_ws(ps);
			if (ps->p >= ps->end || *ps->p != ':') {
				free(key);
				return fail(ps, "expected ':'");
			}
			ps->p++;
		}
		if (v->len == cap) {
			cap = cap ? cap * 2 : 8;
			v->items = xrealloc(v->items, cap * sizeof *v->items);
			if (object)
				v->keys = xrealloc(v->keys, cap * sizeof *v->keys);
		}
		memset(&v->items[v->len], 0, sizeof v->items[0]);
		if (object)
			v->keys[v->len] = key;
		v->len++;
		if (parse_value(ps, &v->items[v->len - 1], depth + 1))
			return -1;
		skip_ws(ps);
		if (ps->p < ps->end && *ps->p == ',') {
			ps->p++;
			continue;
		}
		if (ps->p < ps->end && *ps->p == close) {
			ps->p++;
			return 0;
		}
		return fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
	}
}

static int parse_value(parser *ps, json_value *v, int depth)
{
	memset(v, 0, sizeof *v);
	if (depth > JSON_MAX_DEPTH)
		return fail(ps, "nested too deeply");
	skip_ws(ps);
	if (ps->p >= ps->end)
		return fail(ps, "unexpected end of input");
	char c = *ps->p;
	if (c == '{') {
		v->type = JSON_OBJECT;
		return parse_members(ps, v, depth, true);
	}
	if (c == '[') {
		v->type = JSON_ARRAY;
		return parse_members(ps, v, depth, false);
	}
	if (c == '"') {
		v->type = JSON_STRING;
		return parse_string(ps, &v->string, &v->len);
	}
	if (c == '-' || (c >= '0' && c <= '9')) {
		char buf[64];
		size_t n = 0;
		while (ps->p + n < ps->end && n < sizeof buf - 1 &&
		       strchr("+-0123456789.eE", ps->p[n]) != NULL)
			n++;
		memcpy(buf, ps->p, n);
		buf[n] = 0;
		char *endp;
		v->type = JSON_NUMBER;
		v->number = strtod(buf, &endp);
		if (endp != buf + n || n == 0)
			return fail(ps, "bad number");
		ps->p += n;
		return 0;
	}
	static const struct {
		const char *word;
		json_type type;
		bool b;
	} words[] = {{"true", JSON_BOOL, true}, {"false", JSON_BOOL, false}, {"null", JSON_NULL, false}};
	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
		size_t n = strlen(words[i].word);
		if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, words[i].word, n) == 0) {
			v->type = words[i].type;
			v->boolean = words[i].b;
			ps->p += n;
			return 0;
		}
	}
	return fail(ps, "unexpected character");
}

int json_parse(const char *text, size_t n, json_value *out, char *err, size_t errlen)
{
	parser ps = {text, text, text + n, err, errlen};
	if (parse_value(&ps, out, 0)) {
		json_free(out);
		return -1;
	}
	skip_ws(&ps);
	if (ps.p != ps.end) {
		json_free(out);
		return fail(&ps, "trailing data after the JSON value");
	}
	return 0;
}

void json_free(json_value *v)
{
	for (size_t i = 0; v->items && i < v->len; i++) {
		json_free(&v->items[i]);
		if (v->keys)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	free(v->string);
	memset(v, 0, sizeof *v);
}

const json_value *json_get(const json_value *obj, const char *key)
{
	if (!obj || obj->type != JSON_OBJECT)
		return NULL;
	for (size_t i = 0; i < obj->len; i++)
		if (strcmp(obj->keys[i], key) == 0)
			return &obj->items[i];
	return NULL;
}

void sbuf_put(sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->s = xrealloc(b->s, cap);
		b->cap = cap;
	}
	if (n)
		memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = 0;
}

void sbuf_puts(sbuf *b, const char *s)
{
	sbuf_put(b, s, strlen(s));
}

void sbuf_printf(sbuf *b, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof small) {
		sbuf_put(b, small, (size_t)n);
		return;
	}
	char *big = xrealloc(NULL, (size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	sbuf_put(b, big, (size_t)n);
	free(big);
}

void sbuf_json_string(sbuf *b, const char *s)
{
	if (!s) {
		sbuf_puts(b, "null");
		return;
	}
	sbuf_put(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			sbuf_put(b, e, 2);
		} else if (c == '\n') {
			sbuf_puts(b, "\\n");
		} else if (c < 0x20) {
			sbuf_printf(b, "\\u%04x", c);
		} else {
			sbuf_put(b, (const char *)&c, 1);
		}
	}
	sbuf_put(b, "\"", 1);
}

void sbuf_free(sbuf *b)
{
	free(b->s);
	memset(b, 0, sizeof *b);
}
