// SPDX-License-Identifier: GPL-2.0
/*
 * uapi tests for grelay's kernel series: SQE groups (IOSQE_GROUP) and the group kernel
 * buffer (IORING_RECV_GROUP_KBUF leaders, IOSQE_GROUP_KBUF SEND/WRITE members).
 *
 *   group_kbuf_test [-v] [CASE...]
 *
 * Prints one line per case ("ok NAME" / "FAIL NAME: why" / "skip NAME: why") and a
 * summary. Exit 0 if every case passed, 1 if any failed, 77 if the running kernel lacks
 * IORING_FEAT_SQE_GROUP / IORING_FEAT_GROUP_KBUF (e.g. a stock kernel).
 *
 * Built by kernel/build.sh against the patched kernel's exported headers: the kernel's
 * <linux/io_uring.h> is included before <liburing.h>, so liburing 2.3 uses it (same include
 * guard) and the group constants come from the kernel itself. kernel/tests/uapi_check
 * checks relay/uring_compat.h against the same header.
 */
#include <linux/io_uring.h>

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

#define KB 1024u
#define MB (1024u * 1024u)
/* generous: the debug kernel (KASAN, lockdep) under TCG is slow */
#define WAIT_MS 20000

static bool verbose;
static char failure[512];

static void failf(int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (failure[0])
		return;
	n = snprintf(failure, sizeof(failure), "line %d: ", line);
	va_start(ap, fmt);
	vsnprintf(failure + n, sizeof(failure) - n, fmt, ap);
	va_end(ap);
}

#define CHECK(cond, ...)                                                                   \
	do {                                                                                   \
		if (!(cond)) {                                                                     \
			failf(__LINE__, __VA_ARGS__);                                                  \
			goto out;                                                                      \
		}                                                                                  \
	} while (0)

#define CHECK_RES(got, want, what)                                                         \
	CHECK((got) == (want), "%s: res %d (%s), want %d (%s)", what, (int)(got),              \
	      (got) < 0 ? strerror(-(got)) : "ok", (int)(want), (want) < 0 ? strerror(-(want)) : "ok")

/* --- small helpers ------------------------------------------------------------------------ */

static uint8_t pattern(uint32_t seed, size_t i)
{
	uint32_t x = seed * 2654435761u + (uint32_t)i * 40503u;

	return (uint8_t)(x ^ (x >> 13) ^ (i >> 8));
}

static uint8_t *pattern_buf(uint32_t seed, size_t n)
{
	uint8_t *b = malloc(n ? n : 1);
	size_t i;

	for (i = 0; i < n; i++)
		b[i] = pattern(seed, i);
	return b;
}

static int listener_fd = -1;

static int tcp_listener(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd, one = 1;

	if (listener_fd >= 0)
		return listener_fd;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 1024)) {
		close(fd);
		return -1;
	}
	listener_fd = fd;
	return fd;
}

/*
 * A connected pair: *a is the connecting side, *b the accepted one. With small_rcvbuf the
 * accepted side gets a small receive buffer, so a peer's sends block once it stops reading.
 */
static int tcp_pair_opts(int *a, int *b, bool small_rcvbuf)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int l = tcp_listener(), c, s, one = 1;

	if (l < 0 || getsockname(l, (struct sockaddr *)&sa, &len))
		return -1;
	c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0)
		return -1;
	if (small_rcvbuf) {
		int sz = 4096;

		setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa))) {
		close(c);
		return -1;
	}
	s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (s < 0) {
		close(c);
		return -1;
	}
	if (small_rcvbuf) {
		int sz = 4096;

		setsockopt(s, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
	}
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	*a = c;
	*b = s;
	return 0;
}

static int tcp_pair(int *a, int *b)
{
	return tcp_pair_opts(a, b, false);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Close with a reset (SO_LINGER 0): whatever the peer still sends to it fails */
static void reset_fd(int *fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	if (*fd >= 0)
		setsockopt(*fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close_fd(fd);
}

static int write_all(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t r = write(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Read exactly n bytes (or until EOF/timeout); returns bytes read. */
static ssize_t read_n(int fd, void *buf, size_t n, int timeout_ms)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < n) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, timeout_ms) <= 0)
			break;
		r = read(fd, p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

/* Nothing more is readable within a short while. */
static bool quiet_for(int fd, int ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, ms) == 0;
}

static int tmp_file(void)
{
	const char *dir = getenv("TMPDIR");
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/group_kbuf_test.XXXXXX", dir ? dir : "/tmp");
	fd = mkstemp(path);
	if (fd >= 0)
		unlink(path);
	return fd;
}

struct writer {
	pthread_t thread;
	int fd;
	const uint8_t *buf;
	size_t len;
	int ret;
	bool started;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;

	w->ret = write_all(w->fd, w->buf, w->len);
	return NULL;
}

/* Write in a thread, so the ring's task keeps running task_work while the peer fills up. */
static void writer_start(struct writer *w, int fd, const uint8_t *buf, size_t len)
{
	w->fd = fd;
	w->buf = buf;
	w->len = len;
	w->ret = -1;
	w->started = pthread_create(&w->thread, NULL, writer_main, w) == 0;
}

static int writer_join(struct writer *w)
{
	if (!w->started)
		return -1;
	pthread_join(w->thread, NULL);
	w->started = false;
	return w->ret;
}

struct reader {
	pthread_t thread;
	int fd;
	uint8_t *buf;
	size_t len;
	ssize_t got;
	bool started;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	r->got = read_n(r->fd, r->buf, r->len, WAIT_MS);
	return NULL;
}

/* Drain a target in a thread, so members sending more than socket buffers hold complete. */
static void reader_start(struct reader *r, int fd, size_t len)
{
	r->fd = fd;
	r->len = len;
	r->buf = malloc(len ? len : 1);
	r->got = -1;
	r->started = pthread_create(&r->thread, NULL, reader_main, r) == 0;
}

static ssize_t reader_join(struct reader *r)
{
	if (r->started)
		pthread_join(r->thread, NULL);
	r->started = false;
	return r->got;
}

static void reader_free(struct reader *r)
{
	if (r->started) {
		shutdown(r->fd, SHUT_RDWR);
		reader_join(r);
	}
	free(r->buf);
	r->buf = NULL;
}

/* --- ring helpers ------------------------------------------------------------------------- */

static int ring_init(struct io_uring *ring, unsigned entries, unsigned flags)
{
	struct io_uring_params p;
	int ret;

	memset(&p, 0, sizeof(p));
	p.flags = flags;
	if (flags & IORING_SETUP_SQPOLL)
		p.sq_thread_idle = 1000;
	ret = io_uring_queue_init_params(entries, ring, &p);
	if (ret)
		failf(__LINE__, "io_uring_queue_init_params(flags %#x): %s", flags, strerror(-ret));
	return ret;
}

static struct io_uring_sqe *sqe_get(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	return sqe;
}

#define UD(group, idx) (((uint64_t)(group) << 16) | (idx))
#define UD_GROUP(ud) ((ud) >> 16)
#define UD_IDX(ud) ((ud)&0xffff)

struct result {
	uint64_t ud;
	int res;
	unsigned flags;
};

/*
 * Collect n CQEs in arrival order. Returns how many arrived within the timeout.
 */
static int collect(struct io_uring *ring, struct result *out, int n, int timeout_ms)
{
	int got = 0;

	while (got < n) {
		struct __kernel_timespec ts = { .tv_sec = timeout_ms / 1000,
						.tv_nsec = (timeout_ms % 1000) * 1000000L };
		struct io_uring_cqe *cqe;
		int ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);

		if (ret == -EINTR)
			continue;
		if (ret)
			break;
		out[got].ud = cqe->user_data;
		out[got].res = cqe->res;
		out[got].flags = cqe->flags;
		if (verbose)
			fprintf(stderr, "  cqe ud=%llu.%llu res=%d\n",
				(unsigned long long)UD_GROUP(cqe->user_data),
				(unsigned long long)UD_IDX(cqe->user_data), cqe->res);
		got++;
		io_uring_cqe_seen(ring, cqe);
	}
	return got;
}

static const struct result *find(const struct result *r, int n, uint64_t ud)
{
	int i;

	for (i = 0; i < n; i++)
		if (r[i].ud == ud)
			return &r[i];
	return NULL;
}

/* The leader (index 0) of every group completed before any member of that group. */
static bool leaders_first(const struct result *r, int n)
{
	int i, j;

	for (i = 0; i < n; i++) {
		if (UD_IDX(r[i].ud) != 0)
			continue;
		for (j = 0; j < i; j++)
			if (UD_GROUP(r[j].ud) == UD_GROUP(r[i].ud))
				return false;
	}
	return true;
}

/* --- group building ---------------------------------------------------------------------- */

enum member_op { M_SEND, M_WRITE, M_NOP };

struct member {
	enum member_op op;
	int fd;
	uint64_t off;      /* offset into the group buffer */
	uint32_t len;      /* bytes, 0 = the rest */
	uint64_t file_off; /* M_WRITE */
	unsigned msg_flags;
	unsigned sqe_flags; /* extra flags (IOSQE_ASYNC, ...) */
	bool plain;	    /* don't set IOSQE_GROUP_KBUF */
};

/* extra sqe->ioprio bits for the next leaders (IORING_RECVSEND_POLL_FIRST) */
static unsigned leader_ioprio;

static void prep_recv_leader(struct io_uring_sqe *sqe, int fd, unsigned len, unsigned msg_flags)
{
	io_uring_prep_recv(sqe, fd, NULL, len, (int)msg_flags);
	sqe->ioprio = IORING_RECV_GROUP_KBUF | leader_ioprio;
	sqe->flags |= IOSQE_GROUP;
}

static void prep_member(struct io_uring_sqe *sqe, const struct member *m)
{
	switch (m->op) {
	case M_SEND:
		io_uring_prep_send(sqe, m->fd, NULL, m->len, (int)m->msg_flags);
		sqe->addr = m->off;
		break;
	case M_WRITE:
		io_uring_prep_write(sqe, m->fd, NULL, m->len, m->file_off);
		sqe->addr = m->off;
		break;
	case M_NOP:
		io_uring_prep_nop(sqe);
		break;
	}
	if (!m->plain && m->op != M_NOP)
		sqe->flags |= IOSQE_GROUP_KBUF;
	sqe->flags |= m->sqe_flags;
}

/*
 * Queue a RECV group-buffer leader on fd (len bytes max) and the members, user_data
 * UD(group, 0..n). Not submitted.
 */
static int queue_group(struct io_uring *ring, int group, int fd, unsigned len, unsigned msg_flags,
		       unsigned leader_sqe_flags, const struct member *m, int n)
{
	struct io_uring_sqe *sqe = sqe_get(ring);
	int i;

	if (!sqe)
		return -1;
	prep_recv_leader(sqe, fd, len, msg_flags);
	sqe->flags |= leader_sqe_flags;
	sqe->user_data = UD(group, 0);
	for (i = 0; i < n; i++) {
		sqe = sqe_get(ring);
		if (!sqe)
			return -1;
		prep_member(sqe, &m[i]);
		if (i + 1 < n)
			sqe->flags |= IOSQE_GROUP;
		sqe->user_data = UD(group, i + 1);
	}
	return 0;
}

static int submit_all(struct io_uring *ring)
{
	int ret = io_uring_submit(ring);

	if (ret < 0)
		failf(__LINE__, "io_uring_submit: %s", strerror(-ret));
	return ret < 0 ? ret : 0;
}

/* --- cases -------------------------------------------------------------------------------- */

static int test_features(void)
{
	struct io_uring_params p;
	struct io_uring ring;
	int ret;

	memset(&p, 0, sizeof(p));
	ret = io_uring_queue_init_params(4, &ring, &p);
	CHECK(ret == 0, "io_uring_queue_init_params: %s", strerror(-ret));
	io_uring_queue_exit(&ring);
	CHECK(p.features & IORING_FEAT_SQE_GROUP, "no IORING_FEAT_SQE_GROUP");
	CHECK(p.features & IORING_FEAT_GROUP_KBUF, "no IORING_FEAT_GROUP_KBUF");
	return 0;
out:
	return -1;
}

static int nop_group(int inject_leader, int inject_member)
{
	struct result r[8];
	struct io_uring ring;
	int i, got;

	if (ring_init(&ring, 16, 0))
		return -1;
	for (i = 0; i < 4; i++) {
		struct io_uring_sqe *sqe = sqe_get(&ring);

		io_uring_prep_nop(sqe);
		if ((i == 0 && inject_leader) || (i == 2 && inject_member)) {
			sqe->nop_flags = IORING_NOP_INJECT_RESULT;
			sqe->len = (unsigned)(i == 0 ? inject_leader : inject_member);
		}
		if (i < 3)
			sqe->flags |= IOSQE_GROUP;
		sqe->user_data = UD(1, i);
	}
	CHECK(submit_all(&ring) == 0, "submit");
	got = collect(&ring, r, 4, WAIT_MS);
	CHECK(got == 4, "%d CQEs, want 4", got);
	CHECK(UD_IDX(r[0].ud) == 0, "first CQE is %llu, not the leader",
	      (unsigned long long)UD_IDX(r[0].ud));
	CHECK_RES(r[0].res, inject_leader, "leader");
	for (i = 1; i < 4; i++) {
		const struct result *m = find(r, got, UD(1, i));
		int want = inject_leader ? -ECANCELED : (i == 2 ? inject_member : 0);

		CHECK(m, "member %d has no CQE", i);
		CHECK_RES(m->res, want, "member");
	}
	io_uring_queue_exit(&ring);
	return 0;
out:
	io_uring_queue_exit(&ring);
	return -1;
}

static int test_nop_group(void)
{
	return nop_group(0, 0);
}

static int test_nop_group_leader_fails(void)
{
	return nop_group(-EIO, 0);
}

static int test_nop_group_member_fails(void)
{
	return nop_group(0, -EIO);
}

/*
 * The main shape: a RECV leader, three SEND members to three TCP connections and a WRITE
 * member to a file, everything compared byte for byte. On an existing ring.
 */
static int fanout_on(struct io_uring *ring, unsigned leader_flags, unsigned member_flags,
		     size_t size)
{
	int client = -1, server = -1, tx[3] = { -1, -1, -1 }, rx[3] = { -1, -1, -1 }, file = -1;
	uint8_t *data = pattern_buf(7, size), *buf = malloc(size + 1);
	struct reader rd[3] = { { 0 } };
	struct writer w = { 0 };
	struct member m[4];
	struct result r[8];
	int i, got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0, "tcp_pair");
	for (i = 0; i < 3; i++)
		CHECK(tcp_pair(&tx[i], &rx[i]) == 0, "tcp_pair");
	file = tmp_file();
	CHECK(file >= 0, "tmp file: %s", strerror(errno));

	memset(m, 0, sizeof(m));
	for (i = 0; i < 3; i++)
		m[i] = (struct member){ .op = M_SEND, .fd = tx[i], .msg_flags = MSG_WAITALL,
					.sqe_flags = member_flags };
	m[3] = (struct member){ .op = M_WRITE, .fd = file, .file_off = 0, .sqe_flags = member_flags };
	CHECK(queue_group(ring, 1, server, (unsigned)size, MSG_WAITALL, leader_flags, m, 4) == 0,
	      "queue");
	CHECK(submit_all(ring) == 0, "submit");
	for (i = 0; i < 3; i++)
		reader_start(&rd[i], rx[i], size);
	writer_start(&w, client, data, size);

	got = collect(ring, r, 5, WAIT_MS);
	CHECK(got == 5, "%d CQEs, want 5", got);
	CHECK(UD_IDX(r[0].ud) == 0, "leader CQE is not first");
	CHECK_RES(r[0].res, (int)size, "leader");
	for (i = 1; i <= 4; i++)
		CHECK_RES(find(r, got, UD(1, i))->res, (int)size, "member");
	CHECK(writer_join(&w) == 0, "client writer");
	for (i = 0; i < 3; i++) {
		CHECK(reader_join(&rd[i]) == (ssize_t)size, "short data on target %d", i);
		CHECK(memcmp(rd[i].buf, data, size) == 0, "target %d got different bytes", i);
		CHECK(quiet_for(rx[i], 10), "target %d got extra bytes", i);
	}
	CHECK(pread(file, buf, size + 1, 0) == (ssize_t)size, "file size");
	CHECK(memcmp(buf, data, size) == 0, "file has different bytes");
	ret = 0;
out:
	if (w.started) {
		shutdown(client, SHUT_RDWR);
		writer_join(&w);
	}
	for (i = 0; i < 3; i++)
		reader_free(&rd[i]);
	close_fd(&client);
	close_fd(&server);
	for (i = 0; i < 3; i++) {
		close_fd(&tx[i]);
		close_fd(&rx[i]);
	}
	close_fd(&file);
	free(data);
	free(buf);
	return ret;
}

static int fanout(unsigned ring_flags, unsigned leader_flags, unsigned member_flags, size_t size)
{
	struct io_uring ring;
	int ret;

	if (ring_init(&ring, 32, ring_flags))
		return -1;
	ret = fanout_on(&ring, leader_flags, member_flags, size);
	io_uring_queue_exit(&ring);
	return ret;
}

static int test_kbuf_fanout(void)
{
	return fanout(0, 0, 0, 64 * KB);
}

static int test_kbuf_fanout_1mib(void)
{
	return fanout(0, 0, 0, IORING_GROUP_KBUF_MAX);
}

static int test_kbuf_fanout_odd_size(void)
{
	return fanout(0, 0, 0, 3 * 4096 + 123);
}

/*
 * Relays what is already queued on a TCP socket, one group at a time: a RECV leader
 * without MSG_WAITALL (which takes references to the socket's pages where it can, copies
 * where it can't) and a SEND member of the rest and a WRITE member at the stream offset.
 * `queue` writes the client's side first; `want` is what the stream must carry.
 */
typedef int (*queue_fn)(int client, const uint8_t *data, size_t size);

struct queuer {
	pthread_t thread;
	queue_fn fn;
	int fd;
	const uint8_t *data;
	size_t size;
	int ret;
};

/* The client's side runs in a thread: more than the socket buffers hold may be queued */
static void *queuer_main(void *arg)
{
	struct queuer *q = arg;

	q->ret = q->fn(q->fd, q->data, q->size);
	shutdown(q->fd, SHUT_WR);
	return NULL;
}

static int relay_queued(queue_fn queue, size_t size, unsigned chunk, const uint8_t *want,
			size_t want_len)
{
	int client = -1, server = -1, tx = -1, rx = -1, file = -1, groups = 0;
	uint8_t *data = pattern_buf(11, size), *buf;
	struct reader rd = { 0 };
	struct queuer q = { 0 };
	bool have_ring = false, queuing = false;
	struct io_uring ring;
	size_t done = 0;
	int ret = -1;

	if (!want) {
		want = data;
		want_len = size;
	}
	buf = malloc(want_len + 1);
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	have_ring = true;
	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	file = tmp_file();
	CHECK(file >= 0, "tmp file: %s", strerror(errno));
	reader_start(&rd, rx, want_len);
	q = (struct queuer){ .fn = queue, .fd = client, .data = data, .size = size };
	CHECK(pthread_create(&q.thread, NULL, queuer_main, &q) == 0, "pthread_create");
	queuing = true;

	while (done < want_len) {
		struct member m[2] = {
			{ .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL },
			{ .op = M_WRITE, .fd = file, .file_off = done },
		};
		struct result r[3];

		CHECK(queue_group(&ring, ++groups, server, chunk, 0, 0, m, 2) == 0, "queue");
		CHECK(submit_all(&ring) == 0, "submit");
		CHECK(collect(&ring, r, 3, WAIT_MS) == 3, "group %d: missing CQEs", groups);
		CHECK(r[0].res > 0 && (unsigned)r[0].res <= chunk,
		      "group %d: leader %d after %zu of %zu bytes", groups, r[0].res, done,
		      want_len);
		CHECK_RES(find(r, 3, UD(groups, 1))->res, r[0].res, "send member");
		CHECK_RES(find(r, 3, UD(groups, 2))->res, r[0].res, "write member");
		done += (size_t)r[0].res;
	}
	CHECK(done == want_len, "relayed %zu bytes, want %zu", done, want_len);
	pthread_join(q.thread, NULL);
	queuing = false;
	CHECK(q.ret == 0, "client send: %s", strerror(errno));
	CHECK(reader_join(&rd) == (ssize_t)want_len, "short data on the target");
	CHECK(memcmp(rd.buf, want, want_len) == 0, "the target got different bytes");
	CHECK(pread(file, buf, want_len + 1, 0) == (ssize_t)want_len, "file size");
	CHECK(memcmp(buf, want, want_len) == 0, "the file has different bytes");
	ret = 0;
out:
	if (queuing) {
		shutdown(client, SHUT_RDWR);
		pthread_join(q.thread, NULL);
	}
	reader_free(&rd);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	close_fd(&file);
	if (have_ring)
		io_uring_queue_exit(&ring);
	free(data);
	free(buf);
	return ret;
}

static int queue_whole(int client, const uint8_t *data, size_t size)
{
	return write_all(client, data, size);
}

/* 7-byte sends with TCP_NODELAY: one skb each, coalesced on the receive queue */
static int queue_small(int client, const uint8_t *data, size_t size)
{
	int one = 1;
	size_t off;

	if (setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
		return -1;
	for (off = 0; off < size; off += 7)
		if (write_all(client, data + off, size - off < 7 ? size - off : 7))
			return -1;
	return 0;
}

/* An urgent byte in the middle: not part of the stream (no SO_OOBINLINE) */
static int queue_urgent(int client, const uint8_t *data, size_t size)
{
	size_t half = size / 2;

	if (write_all(client, data, half) || send(client, data + half, 1, MSG_OOB) != 1)
		return -1;
	return write_all(client, data + half + 1, size - half - 1);
}

static int test_kbuf_take_queued(void)
{
	return relay_queued(queue_whole, 1024 * KB, 64 * KB, NULL, 0);
}

static int test_kbuf_take_small_pieces(void)
{
	return relay_queued(queue_small, 64 * KB + 5, 4096, NULL, 0);
}

static int test_kbuf_take_urgent(void)
{
	size_t size = 64 * KB, half = size / 2;
	uint8_t *data = pattern_buf(11, size), *want = malloc(size);
	int ret;

	memcpy(want, data, half);
	memcpy(want + half, data + half + 1, size - half - 1);
	ret = relay_queued(queue_urgent, size, 16 * KB, want, size - 1);
	free(data);
	free(want);
	return ret;
}

static int test_kbuf_defer_taskrun(void)
{
	return fanout(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, 0, 0, 64 * KB);
}

static int test_kbuf_sqpoll(void)
{
	return fanout(IORING_SETUP_SQPOLL, 0, 0, 64 * KB);
}

static int test_kbuf_async(void)
{
	return fanout(0, IOSQE_ASYNC, IOSQE_ASYNC, 64 * KB);
}

static int test_kbuf_poll_first(void)
{
	int ret;

	leader_ioprio = IORING_RECVSEND_POLL_FIRST;
	ret = fanout(0, 0, 0, 64 * KB);
	leader_ioprio = 0;
	return ret;
}

/* A leader with IOSQE_CQE_SKIP_SUCCESS posts nothing; its members run. */
static int test_kbuf_leader_cqe_skip(void)
{
	const size_t size = 2000;
	int client = -1, server = -1, tx = -1, rx = -1;
	uint8_t *data = pattern_buf(29, size), *buf = malloc(size);
	struct member m = { .op = M_SEND, .msg_flags = MSG_WAITALL };
	struct result r[2];
	struct io_uring ring;
	bool ring_ok = false;
	int ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	m.fd = tx;
	CHECK(queue_group(&ring, 1, server, (unsigned)size, MSG_WAITALL, IOSQE_CQE_SKIP_SUCCESS,
			  &m, 1) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(write_all(client, data, size) == 0, "client write");
	CHECK(collect(&ring, r, 1, WAIT_MS) == 1, "no member CQE");
	CHECK(r[0].ud == UD(1, 1), "CQE %llu.%llu, want the member's only",
	      (unsigned long long)UD_GROUP(r[0].ud), (unsigned long long)UD_IDX(r[0].ud));
	CHECK_RES(r[0].res, (int)size, "member");
	CHECK(read_n(rx, buf, size, WAIT_MS) == (ssize_t)size && !memcmp(buf, data, size),
	      "member's bytes");
	CHECK(collect(&ring, r + 1, 1, 200) == 0, "a CQE for the skipped leader");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	free(data);
	free(buf);
	return ret;
}

/* Offsets, lengths, 0 = the rest; a short read without MSG_WAITALL. */
static int test_kbuf_offsets(void)
{
	const size_t size = 10000;
	static const struct {
		uint64_t off;
		uint32_t len;
	} ranges[] = { { 0, 0 }, { 100, 0 }, { 0, 50 }, { size - 1, 1 }, { 4095, 2 } };
	enum { N = sizeof(ranges) / sizeof(ranges[0]) };
	int client = -1, server = -1, tx[N], rx[N], file = -1;
	uint8_t *data = pattern_buf(11, size), *buf = malloc(size);
	struct member m[N + 1];
	struct result r[N + 2];
	struct io_uring ring;
	bool ring_ok = false;
	int i, got, ret = -1;

	for (i = 0; i < N; i++)
		tx[i] = rx[i] = -1;
	CHECK(tcp_pair(&client, &server) == 0, "tcp_pair");
	for (i = 0; i < N; i++)
		CHECK(tcp_pair(&tx[i], &rx[i]) == 0, "tcp_pair");
	file = tmp_file();
	CHECK(file >= 0, "tmp file");
	CHECK(ring_init(&ring, 32, 0) == 0, "ring");
	ring_ok = true;

	memset(m, 0, sizeof(m));
	for (i = 0; i < N; i++)
		m[i] = (struct member){ .op = M_SEND, .fd = tx[i], .off = ranges[i].off,
					.len = ranges[i].len, .msg_flags = MSG_WAITALL };
	m[N] = (struct member){ .op = M_WRITE, .fd = file, .off = 200, .len = 300, .file_off = 4096 };
	/* everything is there before the leader runs: one short read of `size` bytes */
	CHECK(write_all(client, data, size) == 0, "client write");
	usleep(100 * 1000);
	CHECK(queue_group(&ring, 1, server, 64 * KB, 0, 0, m, N + 1) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	got = collect(&ring, r, N + 2, WAIT_MS);
	CHECK(got == N + 2, "%d CQEs", got);
	CHECK(leaders_first(r, got), "leader CQE is not first");
	CHECK_RES(r[0].res, (int)size, "leader (short read)");
	for (i = 0; i < N; i++) {
		size_t want = ranges[i].len ? ranges[i].len : size - ranges[i].off;

		CHECK_RES(find(r, got, UD(1, i + 1))->res, (int)want, "send member");
		CHECK(read_n(rx[i], buf, want, WAIT_MS) == (ssize_t)want, "target %d short", i);
		CHECK(memcmp(buf, data + ranges[i].off, want) == 0, "target %d bytes differ", i);
		CHECK(quiet_for(rx[i], 10), "target %d got extra bytes", i);
	}
	CHECK_RES(find(r, got, UD(1, N + 1))->res, 300, "write member");
	CHECK(pread(file, buf, 300, 4096) == 300, "file read");
	CHECK(memcmp(buf, data + 200, 300) == 0, "file bytes differ");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	for (i = 0; i < N; i++) {
		close_fd(&tx[i]);
		close_fd(&rx[i]);
	}
	close_fd(&file);
	free(data);
	free(buf);
	return ret;
}

/* Members whose range is outside what the leader got fail alone with -EINVAL. */
static int test_kbuf_out_of_range(void)
{
	const size_t size = 1000;
	int client = -1, server = -1, tx = -1, rx = -1, file = -1;
	uint8_t *data = pattern_buf(3, size), *buf = malloc(size);
	struct member m[5];
	struct result r[6];
	struct io_uring ring;
	bool ring_ok = false;
	int got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	file = tmp_file();
	CHECK(file >= 0, "tmp file");
	CHECK(ring_init(&ring, 16, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = tx, .off = 0, .len = size + 1 };
	m[1] = (struct member){ .op = M_SEND, .fd = tx, .off = size, .len = 0 };
	m[2] = (struct member){ .op = M_WRITE, .fd = file, .off = 1ull << 40, .len = 1 };
	m[3] = (struct member){ .op = M_WRITE, .fd = file, .off = size - 10, .len = 11 };
	m[4] = (struct member){ .op = M_SEND, .fd = tx, .off = 0, .len = 0, .msg_flags = MSG_WAITALL };
	CHECK(queue_group(&ring, 1, server, 64 * KB, 0, 0, m, 5) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(write_all(client, data, size) == 0, "client write");
	got = collect(&ring, r, 6, WAIT_MS);
	CHECK(got == 6, "%d CQEs", got);
	CHECK(leaders_first(r, got), "leader CQE is not first");
	CHECK_RES(r[0].res, (int)size, "leader");
	CHECK_RES(find(r, got, UD(1, 1))->res, -EINVAL, "len past the end");
	CHECK_RES(find(r, got, UD(1, 2))->res, -EINVAL, "offset at the end");
	CHECK_RES(find(r, got, UD(1, 3))->res, -EINVAL, "huge offset");
	CHECK_RES(find(r, got, UD(1, 4))->res, -EINVAL, "write past the end");
	CHECK_RES(find(r, got, UD(1, 5))->res, (int)size, "valid sibling");
	CHECK(read_n(rx, buf, size, WAIT_MS) == (ssize_t)size && !memcmp(buf, data, size),
	      "valid sibling's bytes");
	CHECK(quiet_for(rx, 10), "extra bytes");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	close_fd(&file);
	free(data);
	free(buf);
	return ret;
}

/*
 * A group on server with one SEND member to tx (all of the buffer); the client side is
 * driven by `act`. Returns the leader's and the member's results.
 */
static int one_member_group(int (*act)(int client), unsigned len, unsigned msg_flags,
			    int *leader_res, int *member_res, uint8_t *sent, size_t *sent_len)
{
	int client = -1, server = -1, tx = -1, rx = -1;
	struct member m = { .op = M_SEND, .msg_flags = MSG_WAITALL };
	struct result r[2];
	struct io_uring ring;
	bool ring_ok = false;
	int got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	m.fd = tx;
	CHECK(queue_group(&ring, 1, server, len, msg_flags, 0, &m, 1) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(act(client) == 0, "client action");
	got = collect(&ring, r, 2, WAIT_MS);
	CHECK(got == 2, "%d CQEs", got);
	CHECK(UD_IDX(r[0].ud) == 0, "leader CQE is not first");
	*leader_res = r[0].res;
	*member_res = r[1].res;
	if (sent) {
		ssize_t n = read_n(rx, sent, *sent_len, 200);

		*sent_len = n < 0 ? 0 : (size_t)n;
	}
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	return ret;
}

static int act_shutdown(int client)
{
	return shutdown(client, SHUT_WR);
}

static int act_close(int client)
{
	return close(client);
}

static int act_1000_then_shutdown(int client)
{
	uint8_t *d = pattern_buf(5, 1000);
	int ret = write_all(client, d, 1000);

	free(d);
	return ret ? ret : shutdown(client, SHUT_WR);
}

static int act_nothing(int client)
{
	(void)client;
	return 0;
}

static int test_kbuf_eof(void)
{
	int lres = 1, mres = 1;

	if (one_member_group(act_shutdown, 4096, 0, &lres, &mres, NULL, NULL))
		return -1;
	CHECK_RES(lres, 0, "leader at EOF");
	CHECK_RES(mres, -ECANCELED, "member after EOF");
	return 0;
out:
	return -1;
}

static int test_kbuf_socket_closed_under_leader(void)
{
	int lres = 1, mres = 1;

	if (one_member_group(act_close, 4096, 0, &lres, &mres, NULL, NULL))
		return -1;
	CHECK(lres <= 0, "leader got %d bytes from a closed socket", lres);
	CHECK_RES(mres, -ECANCELED, "member after the leader's socket closed");
	return 0;
out:
	return -1;
}

/* MSG_WAITALL leader cut short by EOF: what it received is still passed on. */
static int test_kbuf_waitall_short(void)
{
	uint8_t *want = pattern_buf(5, 1000), got[2000];
	size_t got_len = sizeof(got);
	int lres = 1, mres = 1;

	if (one_member_group(act_1000_then_shutdown, 4096, MSG_WAITALL, &lres, &mres, got, &got_len))
		goto out;
	CHECK_RES(lres, 1000, "leader");
	CHECK_RES(mres, 1000, "member");
	CHECK(got_len == 1000 && !memcmp(got, want, 1000), "member sent other bytes");
	free(want);
	return 0;
out:
	free(want);
	return -1;
}

/* MSG_DONTWAIT leader with nothing to receive: -EAGAIN, members cancelled. */
static int test_kbuf_leader_eagain(void)
{
	int lres = 1, mres = 1;

	if (one_member_group(act_nothing, 4096, MSG_DONTWAIT, &lres, &mres, NULL, NULL))
		return -1;
	CHECK_RES(lres, -EAGAIN, "MSG_DONTWAIT leader without data");
	CHECK_RES(mres, -ECANCELED, "member");
	return 0;
out:
	return -1;
}

/* The leader fails (not a socket): members -ECANCELED. */
static int test_kbuf_leader_fails(void)
{
	int pipefd[2] = { -1, -1 }, tx = -1, rx = -1;
	struct member m[2];
	struct result r[3];
	struct io_uring ring;
	bool ring_ok = false;
	int got, ret = -1;

	CHECK(pipe(pipefd) == 0 && tcp_pair(&tx, &rx) == 0, "pipe/tcp_pair");
	CHECK(write(pipefd[1], "x", 1) == 1, "pipe write");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = tx };
	m[1] = (struct member){ .op = M_NOP };
	CHECK(queue_group(&ring, 1, pipefd[0], 4096, 0, 0, m, 2) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	got = collect(&ring, r, 3, WAIT_MS);
	CHECK(got == 3, "%d CQEs", got);
	CHECK(UD_IDX(r[0].ud) == 0, "leader CQE is not first");
	CHECK_RES(r[0].res, -ENOTSOCK, "leader on a pipe");
	CHECK_RES(find(r, got, UD(1, 1))->res, -ECANCELED, "send member");
	CHECK_RES(find(r, got, UD(1, 2))->res, -ECANCELED, "nop member");
	CHECK(quiet_for(rx, 10), "a cancelled member sent something");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&pipefd[0]);
	close_fd(&pipefd[1]);
	close_fd(&tx);
	close_fd(&rx);
	return ret;
}

/* A failing member doesn't affect its siblings. */
static int test_kbuf_member_fails_alone(void)
{
	const size_t size = 5000;
	int client = -1, server = -1, tx = -1, rx = -1, unconnected = -1, rofile = -1, file = -1;
	uint8_t *data = pattern_buf(9, size), *buf = malloc(size);
	struct member m[4];
	struct result r[5];
	struct io_uring ring;
	bool ring_ok = false;
	int got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	unconnected = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	file = tmp_file();
	rofile = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	CHECK(unconnected >= 0 && file >= 0 && rofile >= 0, "fds");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = unconnected };
	m[1] = (struct member){ .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL };
	m[2] = (struct member){ .op = M_WRITE, .fd = rofile };
	m[3] = (struct member){ .op = M_WRITE, .fd = file };
	CHECK(queue_group(&ring, 1, server, (unsigned)size, MSG_WAITALL, 0, m, 4) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(write_all(client, data, size) == 0, "client write");
	got = collect(&ring, r, 5, WAIT_MS);
	CHECK(got == 5, "%d CQEs", got);
	CHECK(leaders_first(r, got), "leader CQE is not first");
	CHECK_RES(r[0].res, (int)size, "leader");
	CHECK(find(r, got, UD(1, 1))->res < 0, "send on an unconnected socket: %d",
	      find(r, got, UD(1, 1))->res);
	CHECK_RES(find(r, got, UD(1, 2))->res, (int)size, "healthy send sibling");
	CHECK_RES(find(r, got, UD(1, 3))->res, -EBADF, "write to a read-only file");
	CHECK_RES(find(r, got, UD(1, 4))->res, (int)size, "healthy write sibling");
	CHECK(read_n(rx, buf, size, WAIT_MS) == (ssize_t)size && !memcmp(buf, data, size),
	      "healthy send sibling's bytes");
	CHECK(pread(file, buf, size, 0) == (ssize_t)size && !memcmp(buf, data, size),
	      "healthy write sibling's bytes");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	close_fd(&unconnected);
	close_fd(&rofile);
	close_fd(&file);
	free(data);
	free(buf);
	return ret;
}

/* A member with IOSQE_CQE_SKIP_SUCCESS posts nothing but does its work. */
static int test_kbuf_member_cqe_skip(void)
{
	const size_t size = 3000;
	int client = -1, server = -1, tx = -1, rx = -1;
	uint8_t *data = pattern_buf(13, size), *buf = malloc(size);
	struct member m[2];
	struct result r[3];
	struct io_uring ring;
	bool ring_ok = false;
	int got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL,
				.sqe_flags = IOSQE_CQE_SKIP_SUCCESS };
	m[1] = (struct member){ .op = M_NOP };
	CHECK(queue_group(&ring, 1, server, (unsigned)size, MSG_WAITALL, 0, m, 2) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(write_all(client, data, size) == 0, "client write");
	got = collect(&ring, r, 2, WAIT_MS);
	CHECK(got == 2, "%d CQEs", got);
	CHECK(read_n(rx, buf, size, WAIT_MS) == (ssize_t)size && !memcmp(buf, data, size),
	      "skipped member's bytes");
	CHECK(collect(&ring, r + 2, 1, 200) == 0, "a CQE for the CQE_SKIP_SUCCESS member");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	free(data);
	free(buf);
	return ret;
}

/* Cancel a leader waiting for data: the whole group is cancelled, nothing is consumed. */
static int test_kbuf_cancel_leader(void)
{
	int client = -1, server = -1, tx = -1, rx = -1;
	struct member m[2];
	struct result r[4];
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	bool ring_ok = false;
	char c = 0;
	int got, ret = -1;

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = tx };
	m[1] = (struct member){ .op = M_NOP };
	CHECK(queue_group(&ring, 1, server, 4096, 0, 0, m, 2) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	usleep(50 * 1000);
	sqe = sqe_get(&ring);
	io_uring_prep_cancel64(sqe, UD(1, 0), 0);
	sqe->user_data = UD(9, 9);
	CHECK(submit_all(&ring) == 0, "submit cancel");
	got = collect(&ring, r, 4, WAIT_MS);
	CHECK(got == 4, "%d CQEs", got);
	CHECK(leaders_first(r, got), "leader CQE is not first");
	CHECK_RES(find(r, got, UD(9, 9))->res, 0, "cancel");
	CHECK_RES(find(r, got, UD(1, 0))->res, -ECANCELED, "leader");
	CHECK_RES(find(r, got, UD(1, 1))->res, -ECANCELED, "send member");
	CHECK_RES(find(r, got, UD(1, 2))->res, -ECANCELED, "nop member");
	CHECK(write(client, "z", 1) == 1 && read_n(server, &c, 1, WAIT_MS) == 1 && c == 'z',
	      "socket unusable after cancel");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	return ret;
}

/* --- invalid combinations ----------------------------------------------------------------- */

enum { SQE_RECV_KBUF, SQE_RECV_PLAIN, SQE_SEND_KBUF, SQE_SENDMSG_KBUF, SQE_READ_KBUF, SQE_NOP,
       SQE_LINK_TIMEOUT };

struct bad_sqe {
	int kind;
	unsigned flags;	   /* sqe->flags besides what the kind sets */
	unsigned len;	   /* RECV len, 0: 4096 */
	bool zero_len;	   /* RECV len 0 */
	uint64_t addr;	   /* RECV addr */
	unsigned ioprio;   /* extra ioprio bits */
	unsigned msg_flags;
	int want;	   /* expected res */
};

struct bad_case {
	const char *name;
	int n;
	struct bad_sqe sqe[4];
	bool consumed_ok; /* the data may be consumed (nothing checks the socket) */
};

#define GRP IOSQE_GROUP
#define KBF IOSQE_GROUP_KBUF

static const struct bad_case bad_cases[] = {
	{ "kbuf flag on the leader", 2,
	  { { SQE_RECV_KBUF, GRP | KBF, .want = -EINVAL }, { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "kbuf flag on a NOP member", 2,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED }, { SQE_NOP, KBF, .want = -EINVAL } } },
	{ "kbuf flag on a SENDMSG member", 2,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED }, { SQE_SENDMSG_KBUF, KBF, .want = -EINVAL } } },
	{ "kbuf flag on a READ member", 3,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED },
	    { SQE_SEND_KBUF, GRP, .want = -ECANCELED },
	    { SQE_READ_KBUF, KBF, .want = -EINVAL } } },
	{ "kbuf member under a plain leader", 2,
	  { { SQE_RECV_PLAIN, GRP, .want = -ECANCELED }, { SQE_SEND_KBUF, 0, .want = -EINVAL } } },
	{ "RECV_GROUP_KBUF without a group", 1, { { SQE_RECV_KBUF, 0, .want = -EINVAL } } },
	{ "RECV_GROUP_KBUF on a member", 2,
	  { { SQE_NOP, GRP, .want = -ECANCELED }, { SQE_RECV_KBUF, 0, .want = -EINVAL } } },
	{ "RECV_GROUP_KBUF with buffer select", 2,
	  { { SQE_RECV_KBUF, GRP | IOSQE_BUFFER_SELECT, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF with len 0", 2,
	  { { SQE_RECV_KBUF, GRP, .zero_len = true, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF with len over the max", 2,
	  { { SQE_RECV_KBUF, GRP, .len = IORING_GROUP_KBUF_MAX + 1, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF with an address", 2,
	  { { SQE_RECV_KBUF, GRP, .addr = 0x1000, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF multishot", 2,
	  { { SQE_RECV_KBUF, GRP, .ioprio = IORING_RECV_MULTISHOT, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF with MSG_PEEK", 2,
	  { { SQE_RECV_KBUF, GRP, .msg_flags = MSG_PEEK, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "RECV_GROUP_KBUF with MSG_TRUNC", 2,
	  { { SQE_RECV_KBUF, GRP, .msg_flags = MSG_TRUNC, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "IO_LINK on the leader", 2,
	  { { SQE_RECV_KBUF, GRP | IOSQE_IO_LINK, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "IO_LINK on a member", 3,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED },
	    { SQE_SEND_KBUF, GRP | IOSQE_IO_LINK, .want = -EINVAL },
	    { SQE_SEND_KBUF, 0, .want = -ECANCELED } } },
	{ "IO_HARDLINK on the last member", 2,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED },
	    { SQE_SEND_KBUF, IOSQE_IO_HARDLINK, .want = -EINVAL } } },
	{ "IO_DRAIN on a NOP group member", 2,
	  { { SQE_NOP, GRP, .want = -ECANCELED }, { SQE_NOP, IOSQE_IO_DRAIN, .want = -EINVAL } },
	  true },
	{ "LINK_TIMEOUT in a group", 3,
	  { { SQE_RECV_KBUF, GRP, .want = -ECANCELED },
	    { SQE_SEND_KBUF, GRP, .want = -ECANCELED },
	    { SQE_LINK_TIMEOUT, 0, .want = -EINVAL } } },
	{ "a group inside a link chain", 3,
	  { { SQE_NOP, IOSQE_IO_LINK, .want = -ECANCELED },
	    { SQE_RECV_KBUF, GRP, .want = -EINVAL },
	    { SQE_NOP, 0, .want = 0 } } },
};

static int run_bad_case(const struct bad_case *bc)
{
	static struct __kernel_timespec ts = { .tv_sec = 10 };
	int client = -1, server = -1, tx = -1, rx = -1, i, got, ret = -1;
	struct result r[4];
	struct io_uring ring;
	bool ring_ok = false;
	struct msghdr msg;
	char buf[16];

	CHECK(tcp_pair(&client, &server) == 0 && tcp_pair(&tx, &rx) == 0, "tcp_pair");
	CHECK(write_all(client, "hello", 5) == 0, "client write");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(&msg, 0, sizeof(msg));
	for (i = 0; i < bc->n; i++) {
		const struct bad_sqe *b = &bc->sqe[i];
		struct io_uring_sqe *sqe = sqe_get(&ring);

		switch (b->kind) {
		case SQE_RECV_KBUF:
		case SQE_RECV_PLAIN:
			io_uring_prep_recv(sqe, server, NULL, b->len, (int)b->msg_flags);
			if (b->kind == SQE_RECV_PLAIN) {
				sqe->addr = (uint64_t)(uintptr_t)buf;
				sqe->len = sizeof(buf);
			} else {
				sqe->addr = b->addr;
				sqe->len = b->zero_len ? 0 : b->len ? b->len : 4096;
				sqe->ioprio = IORING_RECV_GROUP_KBUF;
			}
			sqe->ioprio |= (uint16_t)b->ioprio;
			break;
		case SQE_SEND_KBUF:
			io_uring_prep_send(sqe, tx, NULL, 0, 0);
			sqe->flags |= KBF;
			break;
		case SQE_SENDMSG_KBUF:
			io_uring_prep_sendmsg(sqe, tx, &msg, 0);
			break;
		case SQE_READ_KBUF:
			io_uring_prep_read(sqe, rx, buf, sizeof(buf), 0);
			break;
		case SQE_NOP:
			io_uring_prep_nop(sqe);
			break;
		case SQE_LINK_TIMEOUT:
			io_uring_prep_link_timeout(sqe, &ts, 0);
			break;
		}
		sqe->flags |= b->flags;
		sqe->user_data = UD(1, i);
	}
	/* a chain that fails at submission ends the submit call: submit the rest */
	for (i = 0; i < 4 && io_uring_sq_ready(&ring); i++)
		io_uring_submit(&ring);
	got = collect(&ring, r, bc->n, WAIT_MS);
	CHECK(got == bc->n, "%d CQEs, want %d", got, bc->n);
	for (i = 0; i < bc->n; i++) {
		const struct result *c = find(r, got, UD(1, i));

		CHECK(c, "no CQE for SQE %d", i);
		CHECK(c->res == bc->sqe[i].want, "SQE %d: res %d (%s), want %d (%s)", i, c->res,
		      c->res < 0 ? strerror(-c->res) : "ok", bc->sqe[i].want,
		      bc->sqe[i].want < 0 ? strerror(-bc->sqe[i].want) : "ok");
	}
	if (!bc->consumed_ok) {
		/* a group that was refused consumed nothing */
		CHECK(read_n(server, buf, 5, 1000) == 5 && !memcmp(buf, "hello", 5),
		      "the refused group consumed data");
	}
	CHECK(quiet_for(rx, 10), "a refused group sent something");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	return ret;
}

static int test_invalid_combinations(void)
{
	size_t i;

	for (i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		if (run_bad_case(&bad_cases[i])) {
			char why[sizeof(failure)];

			snprintf(why, sizeof(why), "%s", failure);
			failure[0] = 0;
			failf(__LINE__, "%s: %s", bad_cases[i].name, why);
			return -1;
		}
	}
	return 0;
}

/* --- load --------------------------------------------------------------------------------- */

/*
 * Many connections, a group in flight on each, several rounds: every byte arrives at every
 * target in order, and the tap file gets every chunk at its offset.
 */
static int test_many_groups(void)
{
	enum { CONNS = 128, ROUNDS = 2, CHUNK = 6000 };
	int client[CONNS], server[CONNS], tx[CONNS][2], rx[CONNS][2], file = -1;
	uint8_t *data = NULL, *buf = malloc(CHUNK);
	struct result *r = calloc(CONNS * 4, sizeof(*r));
	struct io_uring ring;
	bool ring_ok = false;
	int c, k, round, got, ret = -1;

	for (c = 0; c < CONNS; c++)
		client[c] = server[c] = tx[c][0] = tx[c][1] = rx[c][0] = rx[c][1] = -1;
	for (c = 0; c < CONNS; c++) {
		CHECK(tcp_pair(&client[c], &server[c]) == 0, "tcp_pair");
		CHECK(tcp_pair(&tx[c][0], &rx[c][0]) == 0 && tcp_pair(&tx[c][1], &rx[c][1]) == 0,
		      "tcp_pair");
	}
	file = tmp_file();
	CHECK(file >= 0, "tmp file");
	CHECK(ring_init(&ring, 4096, 0) == 0, "ring");
	ring_ok = true;

	for (round = 0; round < ROUNDS; round++) {
		for (c = 0; c < CONNS; c++) {
			struct member m[3] = {
				{ .op = M_SEND, .fd = tx[c][0], .msg_flags = MSG_WAITALL },
				{ .op = M_SEND, .fd = tx[c][1], .msg_flags = MSG_WAITALL },
				{ .op = M_WRITE, .fd = file,
				  .file_off = ((uint64_t)round * CONNS + c) * CHUNK },
			};

			CHECK(queue_group(&ring, round * CONNS + c + 1, server[c], CHUNK, MSG_WAITALL, 0,
					  m, 3) == 0, "queue");
		}
		CHECK(submit_all(&ring) == 0, "submit");
		/* the leaders wait; now feed every connection */
		for (c = 0; c < CONNS; c++) {
			data = pattern_buf((uint32_t)(round * CONNS + c), CHUNK);
			CHECK(write_all(client[c], data, CHUNK) == 0, "client write");
			free(data);
			data = NULL;
		}
		got = collect(&ring, r, CONNS * 4, WAIT_MS);
		CHECK(got == CONNS * 4, "round %d: %d CQEs, want %d", round, got, CONNS * 4);
		CHECK(leaders_first(r, got), "a leader CQE came after its members");
		for (k = 0; k < got; k++)
			CHECK(r[k].res == CHUNK, "round %d: group %llu sqe %llu: res %d", round,
			      (unsigned long long)UD_GROUP(r[k].ud),
			      (unsigned long long)UD_IDX(r[k].ud), r[k].res);
		for (c = 0; c < CONNS; c++) {
			data = pattern_buf((uint32_t)(round * CONNS + c), CHUNK);
			for (k = 0; k < 2; k++) {
				CHECK(read_n(rx[c][k], buf, CHUNK, WAIT_MS) == CHUNK, "short target");
				CHECK(!memcmp(buf, data, CHUNK), "conn %d target %d: bytes differ", c, k);
			}
			free(data);
			data = NULL;
		}
	}
	for (round = 0; round < ROUNDS; round++)
		for (c = 0; c < CONNS; c++) {
			data = pattern_buf((uint32_t)(round * CONNS + c), CHUNK);
			CHECK(pread(file, buf, CHUNK, ((off_t)round * CONNS + c) * CHUNK) == CHUNK &&
				      !memcmp(buf, data, CHUNK),
			      "file chunk %d/%d differs", round, c);
			free(data);
			data = NULL;
		}
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	for (c = 0; c < CONNS; c++) {
		close_fd(&client[c]);
		close_fd(&server[c]);
		for (k = 0; k < 2; k++) {
			close_fd(&tx[c][k]);
			close_fd(&rx[c][k]);
		}
	}
	close_fd(&file);
	free(data);
	free(buf);
	free(r);
	return ret;
}

/*
 * A member sending to a peer that stops reading and then closes: that member fails (or
 * completes short), the sibling sending elsewhere gets everything.
 */
static int test_kbuf_target_closed_mid_send(void)
{
	const size_t size = IORING_GROUP_KBUF_MAX;
	int client = -1, server = -1, tx[2] = { -1, -1 }, rx[2] = { -1, -1 };
	uint8_t *data = pattern_buf(17, size), *buf = malloc(size);
	struct member m[2];
	struct result r[3];
	struct io_uring ring;
	struct writer w = { 0 };
	bool ring_ok = false;
	int got, ret = -1;
	const struct result *slow;

	CHECK(tcp_pair(&client, &server) == 0, "tcp_pair");
	CHECK(tcp_pair(&tx[0], &rx[0]) == 0, "tcp_pair");
	CHECK(tcp_pair_opts(&tx[1], &rx[1], true) == 0, "tcp_pair (small buffers)");
	CHECK(ring_init(&ring, 8, 0) == 0, "ring");
	ring_ok = true;
	memset(m, 0, sizeof(m));
	m[0] = (struct member){ .op = M_SEND, .fd = tx[0], .msg_flags = MSG_WAITALL };
	m[1] = (struct member){ .op = M_SEND, .fd = tx[1], .msg_flags = MSG_WAITALL };
	CHECK(queue_group(&ring, 1, server, (unsigned)size, MSG_WAITALL, 0, m, 2) == 0, "queue");
	CHECK(submit_all(&ring) == 0, "submit");
	writer_start(&w, client, data, size);
	/* leader, and the member whose peer reads */
	got = collect(&ring, r, 1, WAIT_MS);
	CHECK(got == 1 && r[0].ud == UD(1, 0), "no leader CQE");
	CHECK_RES(r[0].res, (int)size, "leader");
	CHECK(read_n(rx[0], buf, size, WAIT_MS) == (ssize_t)size && !memcmp(buf, data, size),
	      "healthy target's bytes");
	got += collect(&ring, r + 1, 1, WAIT_MS);
	CHECK(got == 2 && r[1].ud == UD(1, 1), "healthy member didn't complete first");
	CHECK_RES(r[1].res, (int)size, "healthy member");
	/* the other one is stuck on a peer that doesn't read: reset it */
	CHECK(collect(&ring, r + 2, 1, 300) == 0, "stuck member completed early");
	reset_fd(&rx[1]);
	got += collect(&ring, r + 2, 1, WAIT_MS);
	CHECK(got == 3, "stuck member never completed");
	slow = &r[2];
	CHECK(slow->res == -ECONNRESET || slow->res == -EPIPE ||
		      (slow->res >= 0 && slow->res < (int)size),
	      "member to the reset peer: res %d", slow->res);
	CHECK(writer_join(&w) == 0, "client writer");
	ret = 0;
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	if (w.started) {
		shutdown(client, SHUT_RDWR);
		writer_join(&w);
	}
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx[0]);
	close_fd(&rx[0]);
	close_fd(&tx[1]);
	close_fd(&rx[1]);
	free(data);
	free(buf);
	return ret;
}

/*
 * The bytes held by a ring's group buffers are bounded (64 MiB): keep 1 MiB buffers alive
 * with members stuck on a peer that doesn't read, until a leader fails with -ENOBUFS.
 * Freeing them lets the next group through.
 */
static int test_kbuf_enobufs(void)
{
	enum { MAXG = 80 };
	const size_t size = IORING_GROUP_KBUF_MAX;
	int client = -1, server = -1, tx = -1, rx = -1, i, got, ret = -1, stuck = 0;
	uint8_t *data = pattern_buf(21, size);
	struct result *r = calloc(MAXG * 2 + 4, sizeof(*r));
	struct io_uring ring;
	struct writer w = { 0 };
	bool ring_ok = false, hit = false;

	CHECK(tcp_pair(&client, &server) == 0, "tcp_pair");
	CHECK(tcp_pair_opts(&tx, &rx, true) == 0, "tcp_pair (small buffers)");
	CHECK(ring_init(&ring, 256, 0) == 0, "ring");
	ring_ok = true;
	for (i = 0; i < MAXG && !hit; i++) {
		struct member m = { .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL };

		CHECK(queue_group(&ring, i + 1, server, (unsigned)size, MSG_WAITALL, 0, &m, 1) == 0,
		      "queue");
		CHECK(submit_all(&ring) == 0, "submit");
		writer_start(&w, client, data, size);
		/* the leader's CQE, or the leader and its cancelled member on -ENOBUFS */
		got = collect(&ring, r, 1, WAIT_MS);
		CHECK(got == 1, "group %d: no CQE", i);
		if (r[0].ud == UD(i + 1, 0) && r[0].res == -ENOBUFS) {
			hit = true;
			got = collect(&ring, r + 1, 1, WAIT_MS);
			CHECK(got == 1 && r[1].ud == UD(i + 1, 1), "no member CQE after -ENOBUFS");
			CHECK_RES(r[1].res, -ECANCELED, "member of the refused leader");
			/* nobody takes these bytes: reset the writer */
			close_fd(&server);
			writer_join(&w);
			break;
		}
		CHECK(r[0].ud == UD(i + 1, 0), "unexpected CQE %llu.%llu res %d",
		      (unsigned long long)UD_GROUP(r[0].ud), (unsigned long long)UD_IDX(r[0].ud),
		      r[0].res);
		CHECK_RES(r[0].res, (int)size, "leader");
		CHECK(writer_join(&w) == 0, "client writer");
		stuck++;
	}
	CHECK(hit, "no -ENOBUFS after %d MiB held", stuck);
	CHECK(stuck >= 60 && stuck <= 64, "-ENOBUFS after %d MiB held, want about 64", stuck);
	/* free them: reset the peer, every stuck member fails */
	reset_fd(&rx);
	got = collect(&ring, r, stuck, WAIT_MS);
	CHECK(got == stuck, "%d of %d stuck members completed", got, stuck);
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	/* the bound is released: 1 MiB groups go through on the same ring again */
	ret = fanout_on(&ring, 0, 0, size);
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	if (w.started) {
		shutdown(client, SHUT_RDWR);
		writer_join(&w);
	}
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	free(data);
	free(r);
	return ret;
}

/*
 * The same bound where leaders take the socket's pages (no MSG_WAITALL): every page a taken
 * piece spans is charged, so the bytes that stuck members hold when a leader fails with
 * -ENOBUFS stay within 64 MiB, however the data was cut up; freeing them lets 1 MiB groups
 * through again.
 */
static int test_kbuf_take_enobufs(void)
{
	enum { MAXG = 8192 };
	const size_t size = IORING_GROUP_KBUF_MAX, total = 96u << 20;
	int client = -1, server = -1, tx = -1, rx = -1, g, ret = -1, stuck = 0;
	uint8_t *data = pattern_buf(23, total);
	long long held = 0;
	struct io_uring ring;
	struct writer w = { 0 };
	struct result r;
	bool ring_ok = false, hit = false;

	CHECK(tcp_pair(&client, &server) == 0, "tcp_pair");
	CHECK(tcp_pair_opts(&tx, &rx, true) == 0, "tcp_pair (small buffers)");
	CHECK(ring_init(&ring, 256, 0) == 0, "ring");
	ring_ok = true;
	writer_start(&w, client, data, total);
	for (g = 1; g <= MAXG && !hit; g++) {
		struct member m = { .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL };

		CHECK(queue_group(&ring, g, server, (unsigned)size, 0, 0, &m, 1) == 0, "queue");
		CHECK(submit_all(&ring) == 0, "submit");
		/* this group's leader; the first members may get through meanwhile */
		for (;;) {
			CHECK(collect(&ring, &r, 1, WAIT_MS) == 1, "group %d: no leader CQE", g);
			if (r.ud == UD(g, 0))
				break;
			CHECK(UD_IDX(r.ud) == 1 && r.res > 0, "unexpected CQE %llu.%llu res %d",
			      (unsigned long long)UD_GROUP(r.ud), (unsigned long long)UD_IDX(r.ud),
			      r.res);
			held -= r.res;
			stuck--;
		}
		if (r.res == -ENOBUFS) {
			hit = true;
			CHECK(collect(&ring, &r, 1, WAIT_MS) == 1 && r.ud == UD(g, 1),
			      "no member CQE after -ENOBUFS");
			CHECK_RES(r.res, -ECANCELED, "member of the refused leader");
			break;
		}
		CHECK(r.res > 0 && (size_t)r.res <= size, "group %d: leader %d", g, r.res);
		held += r.res;
		stuck++;
	}
	if (verbose)
		fprintf(stderr, "  -ENOBUFS at group %d, %lld bytes held by %d groups\n", g, held,
			stuck);
	CHECK(hit, "no -ENOBUFS after %d groups holding %lld bytes", g - 1, held);
	CHECK(held <= 64ll << 20 && held >= 48ll << 20,
	      "-ENOBUFS with %lld bytes held, want 48..64 MiB", held);
	/* stop the writer: nobody takes its bytes any more */
	close_fd(&server);
	writer_join(&w);
	/* free them: reset the peer, every stuck member fails */
	reset_fd(&rx);
	for (; stuck > 0; stuck--)
		CHECK(collect(&ring, &r, 1, WAIT_MS) == 1 && UD_IDX(r.ud) == 1,
		      "%d stuck members did not complete", stuck);
	close_fd(&client);
	close_fd(&tx);
	/* the bound is released: 1 MiB groups go through on the same ring again */
	ret = fanout_on(&ring, 0, 0, size);
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	if (w.started) {
		shutdown(client, SHUT_RDWR);
		writer_join(&w);
	}
	close_fd(&client);
	close_fd(&server);
	close_fd(&tx);
	close_fd(&rx);
	free(data);
	return ret;
}

/*
 * Tear a ring down with groups in flight: leaders waiting for data, members stuck on a peer
 * that doesn't read. Then a fresh ring works. (Leaks show up in the debug VM's kmemleak.)
 */
static int test_teardown_in_flight(void)
{
	enum { IDLE = 8 };
	const size_t size = 256 * KB;
	int client[IDLE + 1], server[IDLE + 1], tx = -1, rx = -1, i, ret = -1;
	uint8_t *data = pattern_buf(23, size);
	struct result r[4];
	struct io_uring ring;
	bool ring_ok = false;

	for (i = 0; i <= IDLE; i++)
		client[i] = server[i] = -1;
	for (i = 0; i <= IDLE; i++)
		CHECK(tcp_pair(&client[i], &server[i]) == 0, "tcp_pair");
	CHECK(tcp_pair_opts(&tx, &rx, true) == 0, "tcp_pair");
	CHECK(ring_init(&ring, 64, 0) == 0, "ring");
	ring_ok = true;
	for (i = 0; i < IDLE; i++) {
		struct member m[2] = { { .op = M_SEND, .fd = tx }, { .op = M_NOP } };

		CHECK(queue_group(&ring, i + 1, server[i], 4096, 0, 0, m, 2) == 0, "queue idle");
	}
	{
		struct member m[2] = { { .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL },
				       { .op = M_SEND, .fd = tx, .msg_flags = MSG_WAITALL } };

		CHECK(queue_group(&ring, 100, server[IDLE], (unsigned)size, MSG_WAITALL, 0, m, 2) == 0,
		      "queue stuck");
	}
	CHECK(submit_all(&ring) == 0, "submit");
	CHECK(write_all(client[IDLE], data, size) == 0, "client write");
	CHECK(collect(&ring, r, 1, WAIT_MS) == 1 && r[0].ud == UD(100, 0), "no leader CQE");
	CHECK_RES(r[0].res, (int)size, "leader");
	usleep(100 * 1000);
	io_uring_queue_exit(&ring);
	ring_ok = false;
	for (i = 0; i <= IDLE; i++) {
		close_fd(&client[i]);
		close_fd(&server[i]);
	}
	close_fd(&tx);
	close_fd(&rx);
	ret = fanout(0, 0, 0, 64 * KB);
out:
	if (ring_ok)
		io_uring_queue_exit(&ring);
	for (i = 0; i <= IDLE; i++) {
		close_fd(&client[i]);
		close_fd(&server[i]);
	}
	close_fd(&tx);
	close_fd(&rx);
	free(data);
	return ret;
}

/* --- main --------------------------------------------------------------------------------- */

static const struct {
	const char *name;
	int (*fn)(void);
} cases[] = {
	{ "features", test_features },
	{ "nop_group", test_nop_group },
	{ "nop_group_leader_fails", test_nop_group_leader_fails },
	{ "nop_group_member_fails", test_nop_group_member_fails },
	{ "kbuf_fanout", test_kbuf_fanout },
	{ "kbuf_fanout_1mib", test_kbuf_fanout_1mib },
	{ "kbuf_fanout_odd_size", test_kbuf_fanout_odd_size },
	{ "kbuf_offsets_and_rest", test_kbuf_offsets },
	{ "kbuf_out_of_range", test_kbuf_out_of_range },
	{ "kbuf_eof", test_kbuf_eof },
	{ "kbuf_socket_closed_under_leader", test_kbuf_socket_closed_under_leader },
	{ "kbuf_waitall_short", test_kbuf_waitall_short },
	{ "kbuf_leader_eagain", test_kbuf_leader_eagain },
	{ "kbuf_leader_fails", test_kbuf_leader_fails },
	{ "kbuf_member_fails_alone", test_kbuf_member_fails_alone },
	{ "kbuf_member_cqe_skip", test_kbuf_member_cqe_skip },
	{ "kbuf_cancel_leader", test_kbuf_cancel_leader },
	{ "invalid_combinations", test_invalid_combinations },
	{ "kbuf_defer_taskrun", test_kbuf_defer_taskrun },
	{ "kbuf_sqpoll", test_kbuf_sqpoll },
	{ "kbuf_async", test_kbuf_async },
	{ "kbuf_poll_first", test_kbuf_poll_first },
	{ "kbuf_leader_cqe_skip", test_kbuf_leader_cqe_skip },
	{ "many_groups", test_many_groups },
	{ "kbuf_target_closed_mid_send", test_kbuf_target_closed_mid_send },
	{ "kbuf_enobufs", test_kbuf_enobufs },
	{ "kbuf_take_queued", test_kbuf_take_queued },
	{ "kbuf_take_small_pieces", test_kbuf_take_small_pieces },
	{ "kbuf_take_urgent", test_kbuf_take_urgent },
	{ "kbuf_take_enobufs", test_kbuf_take_enobufs },
	{ "teardown_in_flight", test_teardown_in_flight },
};

static bool kernel_has_groups(void)
{
	struct io_uring_params p;
	struct io_uring ring;

	memset(&p, 0, sizeof(p));
	if (io_uring_queue_init_params(4, &ring, &p))
		return false;
	io_uring_queue_exit(&ring);
	return (p.features & IORING_FEAT_SQE_GROUP) && (p.features & IORING_FEAT_GROUP_KBUF);
}

int main(int argc, char **argv)
{
	int passed = 0, failed = 0, i, a, first = 1;
	struct rlimit rl;
	size_t c;

	signal(SIGPIPE, SIG_IGN);
	/* many_groups holds ~800 sockets */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "-v")) {
		verbose = true;
		first = 2;
	}
	if (!kernel_has_groups()) {
		printf("skip all: the running kernel lacks IORING_FEAT_SQE_GROUP/GROUP_KBUF\n");
		return 77;
	}
	for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct timespec t0, t1;
		bool selected = argc <= first;

		for (a = first; a < argc; a++)
			if (!strcmp(argv[a], cases[c].name))
				selected = true;
		if (!selected)
			continue;
		failure[0] = 0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		i = cases[c].fn();
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (i == 0) {
			passed++;
			printf("ok %s (%.2fs)\n", cases[c].name,
			       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
		} else {
			failed++;
			printf("FAIL %s: %s\n", cases[c].name, failure[0] ? failure : "failed");
		}
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
