/*
 * framesink.h: a worker's delivery frames written from the runtime's thread (see
 * framesink.go). Declarations only: the cgo preamble may not hold definitions.
 */
#ifndef WP_FRAMESINK_H
#define WP_FRAMESINK_H

#include <semaphore.h>
#include <stdint.h>

#include "shim.h"

/* Larger than a token's frame however long its text, smaller than a page of stack. */
#define WP_SINK_BUF 16384
/* The longest text (a token with the bytes WAITING held before it) written to the
 * client directly: escaped (up to six bytes a byte) it fits WP_LINE_BUF with the
 * template, the chunk's size line, the state and the token id (under 128 bytes).
 * Longer text ends the direct writes of the run. */
#define WP_DIRECT_TEXT 2048
#define WP_TEMPLATE_MAX 1024
#define WP_LINE_BUF (6 * WP_DIRECT_TEXT + 2 * WP_TEMPLATE_MAX + 128)
/* The frames of tokens written to the client directly wait here, WP_HOLD_NS at most
 * from the first token after a write, before they go to the supervisor together: the
 * client has them already, and the supervisor woken for every token takes the CPU its
 * client needs at that moment. */
#define WP_HOLD_BUF 16384
#define WP_HOLD_NS 5000000

typedef struct {
	int fd;
	uint8_t op;         /* OpDelivery */
	uint8_t direct_op;  /* OpDirectDelivery */
	uint64_t id;        /* the run's call id */
	uint32_t max_frame; /* the Conn's limit */
	int failed;         /* atomic; a write failed, Go reports it from now on */
	sem_t lock;         /* one frame at a time on fd, the Conn's own included */
	unsigned char buf[WP_SINK_BUF];

	/* The client's socket while the run's tokens are written to it directly (-1:
	 * they are not), and the notification around a token (wp_sink_direct). */
	int client;
	int chunked;
	size_t head_len, tail_len;
	char head[WP_TEMPLATE_MAX], tail[WP_TEMPLATE_MAX];
	size_t pending_len; /* bytes of WAITING deliveries, given out with the next token */
	char pending[WP_DIRECT_TEXT];
	uint64_t last_ns;  /* when the run's previous delivery came (CLOCK_MONOTONIC) */
	uint64_t held_ns;  /* when the frames held were last written out */
	size_t held_len;
	unsigned char held[WP_HOLD_BUF];
	/* Last, so that AddressSanitizer sees a line past its end. */
	unsigned char line[WP_LINE_BUF];
} wp_sink;

int wp_sink_init(wp_sink *s, int fd, uint8_t op, uint8_t direct_op, uint32_t max_frame);
/* wp_sink_direct has the next run's tokens written to client, each as head, the
 * token's state, text and id, and tail (chunked: as an HTTP/1.1 chunk), until one
 * does not go whole; wp_sink_direct(s, -1, ...) stops it. Between runs only. */
int wp_sink_direct(wp_sink *s, int client, const char *head, size_t head_len, const char *tail, size_t tail_len, int chunked);
void wp_sink_destroy(wp_sink *s);
/* wp_sink_lock takes the frame lock for a frame of the Conn's: the frames held go out
 * first, so every frame keeps its place. */
void wp_sink_lock(wp_sink *s);
void wp_sink_unlock(wp_sink *s);
/* wp_sink_deliver is an rk_sink_fn: it writes a token's delivery (NORMAL or WAITING)
 * as the Conn's Send would and returns RKLLM's continue, or RK_SINK_PASS for what Go must handle. */
/* wp_json_string writes n bytes of t at p as a JSON string (at most 6 * n + 2 bytes)
 * and returns the end. */
unsigned char *wp_json_string(unsigned char *p, const unsigned char *t, size_t n);
/* wp_sink_stop stops the direct writes of the run in progress: when it returns, the
 * sink writes nothing more to the client. */
void wp_sink_stop(wp_sink *s);
int wp_sink_deliver(void *arg, const RKLLMResult *results, int n_results, int state);

#endif
