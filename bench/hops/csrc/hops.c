/*
 * hops.c: the C ends of bench/hops, with no runtime of their own to wake.
 *
 *   hops writer PATH N   connect to the Unix socket PATH and write N lines, one every
 *                        millisecond (as the simulator paces 1,000 tokens/s), each the
 *                        CLOCK_MONOTONIC time (ns) just before its write
 *   hops relay IN OUT    accept one connection on the Unix socket IN and copy it to a
 *                        connection to OUT with blocking reads and writes
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int dial(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		perror(path);
		exit(1);
	}
	return s;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int writer(const char *path, long n)
{
	int s = dial(path);
	for (long i = 0; i < n; i++) {
		struct timespec gap = {0, 1000000};
		nanosleep(&gap, NULL);
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		char line[32];
		int len = snprintf(line, sizeof line, "@%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
		if (write_all(s, line, (size_t)len) != 0)
			return 1;
	}
	return close(s) != 0;
}

static int relay(const char *in, const char *out)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof a.sun_path, "%s", in);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 1) != 0) {
		perror(in);
		return 1;
	}
	int o = dial(out);
	/* Ready: the bench starts the writer once it sees this line. */
	printf("listening\n");
	fflush(stdout);
	int c = accept(l, NULL, NULL);
	if (c < 0) {
		perror("accept");
		return 1;
	}
	char buf[65536];
	ssize_t n;
	while ((n = read(c, buf, sizeof buf)) > 0)
		if (write_all(o, buf, (size_t)n) != 0)
			return 1;
	return close(o) != 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "writer") == 0)
		return writer(argv[2], atol(argv[3]));
	if (argc == 4 && strcmp(argv[1], "relay") == 0)
		return relay(argv[2], argv[3]);
	fprintf(stderr, "usage: hops writer PATH N | hops relay IN OUT\n");
	return 2;
}
