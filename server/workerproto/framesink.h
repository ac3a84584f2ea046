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

typedef struct {
	int fd;
	uint8_t op;         /* OpDelivery */
	uint64_t id;        /* the run's call id */
	uint32_t max_frame; /* the Conn's limit */
	int failed;         /* atomic; a write failed, Go reports it from now on */
	sem_t lock;         /* one frame at a time on fd, the Conn's own included */
	unsigned char buf[WP_SINK_BUF];
} wp_sink;

int wp_sink_init(wp_sink *s, int fd, uint8_t op, uint32_t max_frame);
void wp_sink_destroy(wp_sink *s);
void wp_sink_lock(wp_sink *s);
void wp_sink_unlock(wp_sink *s);
/* wp_sink_deliver is an rk_sink_fn: it writes a token's delivery (NORMAL or WAITING)
 * as the Conn's Send would and returns RKLLM's continue, or RK_SINK_PASS for what Go must handle. */
int wp_sink_deliver(void *arg, const RKLLMResult *results, int n_results, int state);

#endif
