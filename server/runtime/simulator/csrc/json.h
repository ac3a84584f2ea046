/* json.h: a small JSON reader and writer for the simulator (model files, tools JSON,
 * the parameter echo). Values are trees owned by the caller and freed with json_free. */
#ifndef SIM_JSON_H
#define SIM_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
	json_type type;
	bool boolean;
	double number;
	char *string; /* JSON_STRING: NUL-terminated UTF-8 */
	size_t len;   /* JSON_STRING: bytes; JSON_ARRAY/OBJECT: members */
	struct json_value *items; /* JSON_ARRAY/OBJECT members */
	char **keys;              /* JSON_OBJECT keys, parallel to items */
} json_value;

/* json_parse parses text[0:n] into out. On failure it returns -1 and writes a message
 * naming the byte offset into err. */
int json_parse(const char *text, size_t n, json_value *out, char *err, size_t errlen);
void json_free(json_value *v);
/* json_get returns the member key of an object, or NULL. */
const json_value *json_get(const json_value *obj, const char *key);

/* A growable string buffer; sbuf_free releases it. Allocation failure aborts. */
typedef struct {
	char *s;
	size_t len, cap;
} sbuf;
void sbuf_put(sbuf *b, const char *s, size_t n);
void sbuf_puts(sbuf *b, const char *s);
void sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* sbuf_json_string appends s (may be NULL: null) as a quoted JSON string. */
void sbuf_json_string(sbuf *b, const char *s);
void sbuf_free(sbuf *b);

#endif
