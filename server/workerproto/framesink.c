/* framesink.c: see framesink.h and framesink.go. */
#include "framesink.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* The frame's length, op and call id, as putHeader writes them. */
enum { FRAME_HEAD = 4 + 1 + 8 };
/* A result without arrays after its text: token_id, empty hidden states, embd_size,
 * empty logits, vocab_size, num_tokens, and the five perf fields (Delivery.encode). */
enum { RESULT_TAIL = 4 + 1 + 8 + 1 + 8 + 8 + 5 * 4 };
/* A direct delivery's frame adds what went to the client: bytes written, whether that
 * was the whole notification, and the time since the run's previous delivery
 * (Delivery.encode with Direct). */
enum { DIRECT_HEAD = 4 + 1 + 8 };

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int write_all(int fd, const unsigned char *p, size_t n);

/* flush_held writes the frames held (with the lock held). A failed write breaks the
 * Conn: Go reports it from the next frame on. */
static void flush_held(wp_sink *s)
{
	if (s->held_len == 0)
		return;
	if (write_all(s->fd, s->held, s->held_len) != 0)
		__atomic_store_n(&s->failed, 1, __ATOMIC_RELEASE);
	s->held_len = 0;
}

static void lock_sem(wp_sink *s)
{
	while (sem_wait(&s->lock) != 0 && errno == EINTR) {
	}
}

static size_t uvarint_len(uint64_t v)
{
	size_t n = 1;
	for (; v >= 0x80; v >>= 7)
		n++;
	return n;
}

static unsigned char *put_uvarint(unsigned char *p, uint64_t v)
{
	for (; v >= 0x80; v >>= 7)
		*p++ = (unsigned char)(v | 0x80);
	*p++ = (unsigned char)v;
	return p;
}

static unsigned char *put_le32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		*p++ = (unsigned char)(v >> (8 * i));
	return p;
}

static unsigned char *put_le64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		*p++ = (unsigned char)(v >> (8 * i));
	return p;
}

static unsigned char *put_f32(unsigned char *p, float f)
{
	uint32_t v;
	memcpy(&v, &f, sizeof v);
	return put_le32(p, v);
}

int wp_sink_init(wp_sink *s, int fd, uint8_t op, uint8_t direct_op, uint32_t max_frame)
{
	memset(s, 0, sizeof *s);
	s->fd = fd;
	s->op = op;
	s->direct_op = direct_op;
	s->max_frame = max_frame;
	s->client = -1;
	return sem_init(&s->lock, 0, 1);
}

static void stop_direct(wp_sink *s);

int wp_sink_direct(wp_sink *s, int client, const char *head, size_t head_len, const char *tail, size_t tail_len, int chunked)
{
	if (client >= 0 && (head_len > WP_TEMPLATE_MAX || tail_len > WP_TEMPLATE_MAX))
		return -1;
	s->client = client;
	s->pending_len = 0;
	s->last_ns = 0;
	s->held_ns = 0;
	if (client < 0)
		return 0;
	memcpy(s->head, head, head_len);
	memcpy(s->tail, tail, tail_len);
	s->head_len = head_len;
	s->tail_len = tail_len;
	s->chunked = chunked;
	return 0;
}

void wp_sink_stop(wp_sink *s) { stop_direct(s); }

/* stop_direct ends the run's direct writes: what follows goes to the supervisor. */
static void stop_direct(wp_sink *s)
{
	lock_sem(s);
	s->client = -1;
	flush_held(s);
	wp_sink_unlock(s);
}

/* wp_json_string writes n bytes of t as a JSON string exactly as the supervisor's
 * encoder does (jsonrpc.AppendString, encoding/json's rules): HTML characters, control
 * characters, U+2028 and U+2029 escaped, invalid UTF-8 as U+FFFD. */
unsigned char *wp_json_string(unsigned char *p, const unsigned char *t, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	*p++ = '"';
	for (size_t i = 0; i < n;) {
		unsigned char c = t[i];
		if (c < 0x80) {
			switch (c) {
			case '"': case '\\': *p++ = '\\'; *p++ = c; break;
			case '\b': *p++ = '\\'; *p++ = 'b'; break;
			case '\f': *p++ = '\\'; *p++ = 'f'; break;
			case '\n': *p++ = '\\'; *p++ = 'n'; break;
			case '\r': *p++ = '\\'; *p++ = 'r'; break;
			case '\t': *p++ = '\\'; *p++ = 't'; break;
			default:
				if (c < 0x20 || c == '<' || c == '>' || c == '&') {
					memcpy(p, "\\u00", 4);
					p += 4;
					*p++ = hex[c >> 4];
					*p++ = hex[c & 0xF];
				} else {
					*p++ = c;
				}
			}
			i++;
			continue;
		}
		/* The length of a valid sequence starting at i (Go's utf8.DecodeRune), 0 if
		 * invalid. */
		size_t size = 0;
		unsigned char lo = 0x80, hi = 0xBF;
		if (c >= 0xC2 && c <= 0xDF)
			size = 2;
		else if (c >= 0xE0 && c <= 0xEF) {
			size = 3;
			if (c == 0xE0)
				lo = 0xA0;
			else if (c == 0xED)
				hi = 0x9F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			size = 4;
			if (c == 0xF0)
				lo = 0x90;
			else if (c == 0xF4)
				hi = 0x8F;
		}
		if (size == 0 || i + size > n || t[i + 1] < lo || t[i + 1] > hi)
			size = 0;
		for (size_t k = 2; size != 0 && k < size; k++)
			if (t[i + k] < 0x80 || t[i + k] > 0xBF)
				size = 0;
		if (size == 0) {
			memcpy(p, "\\ufffd", 6);
			p += 6;
			i++;
			continue;
		}
		if (size == 3 && c == 0xE2 && t[i + 1] == 0x80 && (t[i + 2] == 0xA8 || t[i + 2] == 0xA9)) {
			memcpy(p, t[i + 2] == 0xA8 ? "\\u2028" : "\\u2029", 6);
			p += 6;
		} else {
			memcpy(p, t + i, size);
			p += size;
		}
		i += size;
	}
	*p++ = '"';
	return p;
}

/* The call states as the supervisor names them in a notification (rkllmrpc). */
static const char *state_name(int state)
{
	return state == RKLLM_RUN_WAITING ? "RKLLM_RUN_WAITING" : "RKLLM_RUN_NORMAL";
}

/* direct_line encodes a token's notification for the client (framed as a chunk when
 * the stream is chunked) into s->line and returns its length, or 0 when it is not for
 * the direct path (its text too long). It takes the WAITING bytes held as the
 * supervisor does: a WAITING token's notification has no text, the next token's has
 * them in front of its own. With s->lock held. */
static size_t direct_line(wp_sink *s, const RKLLMResult *r, int state)
{
	const char *text = r->text ? r->text : "";
	size_t n = strnlen(text, WP_DIRECT_TEXT + 1);
	if (s->pending_len + n > WP_DIRECT_TEXT)
		return 0;
	unsigned char *body = s->line + 16; /* room for the chunk's size line */
	unsigned char *p = body;
	memcpy(p, s->head, s->head_len);
	p += s->head_len;
	const char *name = state_name(state);
	p = wp_json_string(p, (const unsigned char *)name, strlen(name));
	memcpy(p, ",\"text\":", 8);
	p += 8;
	if (state == RKLLM_RUN_WAITING) {
		memcpy(s->pending + s->pending_len, text, n);
		s->pending_len += n;
		p = wp_json_string(p, (const unsigned char *)"", 0);
	} else if (s->pending_len > 0) {
		memcpy(s->pending + s->pending_len, text, n);
		p = wp_json_string(p, (const unsigned char *)s->pending, s->pending_len + n);
		s->pending_len = 0;
	} else {
		p = wp_json_string(p, (const unsigned char *)text, n);
	}
	p += sprintf((char *)p, ",\"token_id\":%d", (int)r->token_id);
	memcpy(p, s->tail, s->tail_len);
	p += s->tail_len;
	size_t len = (size_t)(p - body);
	if (!s->chunked) {
		memmove(s->line, body, len);
		return len;
	}
	char size_line[16];
	int h = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
	unsigned char *start = body - h;
	memcpy(start, size_line, (size_t)h);
	memcpy(p, "\r\n", 2);
	len += (size_t)h + 2;
	memmove(s->line, start, len);
	return len;
}

void wp_sink_destroy(wp_sink *s) { sem_destroy(&s->lock); }

void wp_sink_lock(wp_sink *s)
{
	lock_sem(s);
	flush_held(s);
}

void wp_sink_unlock(wp_sink *s) { sem_post(&s->lock); }

/* write_all writes p whole on the blocking socket; a signal may cut a send short. */
static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int wp_sink_deliver(void *arg, const RKLLMResult *results, int n_results, int state)
{
	wp_sink *s = arg;
	/* Go handles the rest: the run's end and errors, hidden states and logits (their
	 * size checks and copies), and everything after a failed write. WAITING carries
	 * the bytes of an incomplete UTF-8 character, a token like any other here. What
	 * goes to Go ends the direct writes: the supervisor writes to the client from
	 * the first delivery it relays. */
	if ((state != RKLLM_RUN_NORMAL && state != RKLLM_RUN_WAITING) || results == NULL || n_results <= 0 ||
	    __atomic_load_n(&s->failed, __ATOMIC_ACQUIRE)) {
		stop_direct(s);
		return RK_SINK_PASS;
	}
	size_t size = FRAME_HEAD + 4 + uvarint_len((uint64_t)n_results);
	for (int i = 0; i < n_results; i++) {
		const RKLLMResult *r = &results[i];
		if (r->last_hidden_layer.hidden_states != NULL || r->logits.logits != NULL) {
			stop_direct(s);
			return RK_SINK_PASS;
		}
		size_t text = r->text ? strnlen(r->text, WP_SINK_BUF) : 0;
		size += uvarint_len(text) + text + RESULT_TAIL;
		if (size > WP_SINK_BUF) {
			stop_direct(s);
			return RK_SINK_PASS;
		}
	}
	if (size + DIRECT_HEAD - 4 > s->max_frame) {
		stop_direct(s);
		return RK_SINK_PASS;
	}

	/* The buffer is the sink's: encoded under the lock, as a runtime may call back
	 * from more than one thread (Go's path serialises deliveries too). */
	lock_sem(s);
	uint64_t now = now_ns();
	uint64_t gap = s->last_ns ? now - s->last_ns : 0;
	s->last_ns = now;
	/* The token goes to the client first, then its frame to the supervisor, which
	 * counts it and keeps its text for the run's result. A token the client's socket
	 * does not take whole ends the direct writes: the frame says how much went out,
	 * and the supervisor writes the rest and what follows. */
	int direct = 0;
	uint32_t written = 0;
	int whole = 0;
	if (s->client >= 0 && n_results == 1) {
		size_t len = direct_line(s, &results[0], state);
		if (len > 0) {
			direct = 1;
			ssize_t w;
			do
				w = send(s->client, s->line, len, MSG_DONTWAIT | MSG_NOSIGNAL);
			while (w < 0 && errno == EINTR);
			written = w > 0 ? (uint32_t)w : 0;
			whole = written == len;
		}
		if (!whole)
			s->client = -1;
	}
	if (direct)
		size += DIRECT_HEAD;
	unsigned char *p = s->buf;
	uint32_t frame = (uint32_t)(size - 4);
	for (int i = 3; i >= 0; i--) /* big-endian length, op, id */
		*p++ = (unsigned char)(frame >> (8 * i));
	*p++ = direct ? s->direct_op : s->op;
	for (int i = 7; i >= 0; i--)
		*p++ = (unsigned char)(s->id >> (8 * i));
	if (direct) {
		p = put_le32(p, written);
		*p++ = (unsigned char)whole;
		p = put_le64(p, gap);
	}
	p = put_le32(p, (uint32_t)state);
	p = put_uvarint(p, (uint64_t)n_results);
	for (int i = 0; i < n_results; i++) {
		const RKLLMResult *r = &results[i];
		size_t text = r->text ? strlen(r->text) : 0;
		p = put_uvarint(p, text);
		if (text > 0)
			memcpy(p, r->text, text);
		p += text;
		p = put_le32(p, (uint32_t)r->token_id);
		*p++ = 0;              /* hidden states */
		p = put_le64(p, 0);    /* embd_size */
		*p++ = 0;              /* logits */
		p = put_le64(p, 0);    /* vocab_size */
		p = put_le64(p, 0);    /* num_tokens */
		p = put_f32(p, r->perf.prefill_time_ms);
		p = put_le32(p, (uint32_t)r->perf.prefill_tokens);
		p = put_f32(p, r->perf.generate_time_ms);
		p = put_le32(p, (uint32_t)r->perf.generate_tokens);
		p = put_f32(p, r->perf.memory_usage_mb);
	}

	size_t n = (size_t)(p - s->buf);
	int err = 0;
	if (direct && whole && s->held_len + n <= WP_HOLD_BUF && now - s->held_ns < WP_HOLD_NS) {
		memcpy(s->held + s->held_len, s->buf, n);
		s->held_len += n;
	} else {
		flush_held(s);
		err = __atomic_load_n(&s->failed, __ATOMIC_ACQUIRE) ? -1 : write_all(s->fd, s->buf, n);
		s->held_ns = now;
	}
	wp_sink_unlock(s);
	if (err != 0) {
		/* Go sends the delivery again and reports what it meets: the Conn is broken.
		 * (A token already written to the client directly is then lost to the
		 * supervisor's count; the supervisor is gone or the worker is.) */
		__atomic_store_n(&s->failed, 1, __ATOMIC_RELEASE);
		stop_direct(s);
		return RK_SINK_PASS;
	}
	return 0; /* continue */
}
