/* framesink.c: see framesink.h and framesink.go. */
#include "framesink.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

/* The frame's length, op and call id, as putHeader writes them. */
enum { FRAME_HEAD = 4 + 1 + 8 };
/* A result without arrays after its text: token_id, empty hidden states, embd_size,
 * empty logits, vocab_size, num_tokens, and the five perf fields (Delivery.encode). */
enum { RESULT_TAIL = 4 + 1 + 8 + 1 + 8 + 8 + 5 * 4 };

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

int wp_sink_init(wp_sink *s, int fd, uint8_t op, uint32_t max_frame)
{
	memset(s, 0, sizeof *s);
	s->fd = fd;
	s->op = op;
	s->max_frame = max_frame;
	return sem_init(&s->lock, 0, 1);
}

void wp_sink_destroy(wp_sink *s) { sem_destroy(&s->lock); }

void wp_sink_lock(wp_sink *s)
{
	while (sem_wait(&s->lock) != 0 && errno == EINTR) {
	}
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
	 * the bytes of an incomplete UTF-8 character, a token like any other here. */
	if ((state != RKLLM_RUN_NORMAL && state != RKLLM_RUN_WAITING) || results == NULL || n_results <= 0 ||
	    __atomic_load_n(&s->failed, __ATOMIC_ACQUIRE))
		return RK_SINK_PASS;
	size_t size = FRAME_HEAD + 4 + uvarint_len((uint64_t)n_results);
	for (int i = 0; i < n_results; i++) {
		const RKLLMResult *r = &results[i];
		if (r->last_hidden_layer.hidden_states != NULL || r->logits.logits != NULL)
			return RK_SINK_PASS;
		size_t text = r->text ? strnlen(r->text, WP_SINK_BUF) : 0;
		size += uvarint_len(text) + text + RESULT_TAIL;
		if (size > WP_SINK_BUF)
			return RK_SINK_PASS;
	}
	if (size - 4 > s->max_frame)
		return RK_SINK_PASS;

	/* The buffer is the sink's: encoded under the lock, as a runtime may call back
	 * from more than one thread (Go's path serialises deliveries too). */
	wp_sink_lock(s);
	unsigned char *p = s->buf;
	uint32_t frame = (uint32_t)(size - 4);
	for (int i = 3; i >= 0; i--) /* big-endian length, op, id */
		*p++ = (unsigned char)(frame >> (8 * i));
	*p++ = s->op;
	for (int i = 7; i >= 0; i--)
		*p++ = (unsigned char)(s->id >> (8 * i));
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

	int err = write_all(s->fd, s->buf, (size_t)(p - s->buf));
	wp_sink_unlock(s);
	if (err != 0) {
		/* Go sends the delivery again and reports what it meets: the Conn is broken. */
		__atomic_store_n(&s->failed, 1, __ATOMIC_RELEASE);
		return RK_SINK_PASS;
	}
	return 0; /* continue */
}
