/*
 * benchtool: the target servers and load clients of tunneld's benchmark, in C so that the
 * measuring side is never the bottleneck. Everything is on 127.0.0.1.
 *
 *   benchtool echo PORT                  echo server (sends back what it gets, half-closes after the client)
 *   benchtool sink PORT                  reads until EOF, then replies with the byte count as text
 *   benchtool source PORT                sends the number of bytes the client asks for ("N\n"), then closes
 *   benchtool smtp PORT                  speaks first like SMTP: a 220 banner, 250 to EHLO, 221 to QUIT and closes
 *   benchtool latency PORT N [PAUSE_MS]  N x (connect, 3 x 64-byte request/response, close): median/p90/p99 us
 *   benchtool smtplatency PORT N TIMEOUT_MS BUDGET_S
 *                                        up to N x (connect, banner, EHLO, reply, QUIT, reply, close), each given
 *                                        up at TIMEOUT_MS, none started after BUDGET_S: median/p90/p99 us of the
 *                                        whole exchange and of connect to banner, the longest, how many took over 1 s
 *   benchtool connrate PORT SECONDS C    C clients in a loop of connect + 1 round trip: connections/s
 *   benchtool upload PORT BYTES C        C connections each send BYTES to a sink: MB/s total
 *   benchtool download PORT BYTES C      C connections each fetch BYTES from a source: MB/s total
 *   benchtool hold PORT N                opens N connections, one round trip each, holds them, prints successes
 *   benchtool stall PORT SECONDS         one client that sends as fast as it can and never reads
 *   benchtool burst PORT N TIMEOUT_S     opens N connections at once (non-blocking, one epoll loop), sends each
 *                                        its own 16 bytes and checks that exactly those come back; prints how
 *                                        many echoed and how each of the others failed, and when; then holds
 *                                        every connection until stdin closes or gives a line, and prints how
 *                                        many the far side dropped meanwhile
 *   benchtool socksburst PORT K TARGET_PORT TIMEOUT_S
 *                                        K SOCKS5 clients at once (non-blocking, one epoll loop), each greets,
 *                                        asks for CONNECT 127.0.0.1:TARGET_PORT and reads the target's banner
 *                                        line (a server that speaks first); prints the time until all K have it
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BUFFER (256 * 1024)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int dial(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int recv_exactly(int fd, char *p, size_t n) {
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r; n -= (size_t)r;
    }
    return 0;
}

/* ---- servers ---- */

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) { perror("bind"); exit(1); }
    return fd;
}

static void *serve_echo(void *arg) {
    int fd = (int)(intptr_t)arg, on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    char *buffer = malloc(BUFFER);
    for (;;) {
        ssize_t r = recv(fd, buffer, BUFFER, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (send_all(fd, buffer, (size_t)r)) break;
    }
    shutdown(fd, SHUT_WR);
    free(buffer);
    close(fd);
    return NULL;
}

static void *serve_sink(void *arg) {
    int fd = (int)(intptr_t)arg;
    char *buffer = malloc(BUFFER);
    long long total = 0;
    for (;;) {
        ssize_t r = recv(fd, buffer, BUFFER, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        total += r;
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%lld\n", total);
    send_all(fd, line, (size_t)n);
    free(buffer);
    close(fd);
    return NULL;
}

static void *serve_source(void *arg) {
    int fd = (int)(intptr_t)arg;
    char line[64] = {0};
    size_t used = 0;
    while (used < sizeof line - 1 && recv(fd, line + used, 1, 0) == 1 && line[used] != '\n') used++;
    long long want = atoll(line);
    char *buffer = malloc(BUFFER);
    memset(buffer, 'x', BUFFER);
    while (want > 0) {
        size_t n = want < BUFFER ? (size_t)want : BUFFER;
        if (send_all(fd, buffer, n)) break;
        want -= (long long)n;
    }
    free(buffer);
    close(fd);
    return NULL;
}

/* Reads one line ending in \n into line (at most size - 1 bytes, NUL-terminated), a byte at a
 * time so that nothing after the line is consumed. Returns 0, or -1 on EOF, error or overlong line. */
static int recv_line(int fd, char *line, size_t size) {
    size_t used = 0;
    while (used < size - 1) {
        ssize_t r = recv(fd, line + used, 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        if (line[used++] == '\n') { line[used] = 0; return 0; }
    }
    return -1;
}

/* A server that speaks first, shaped like SMTP: the banner goes out as soon as the client is
 * accepted, before the client has sent anything. Unknown commands get a 500 reply. */
static void *serve_smtp(void *arg) {
    int fd = (int)(intptr_t)arg, on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    static const char banner[] = "220 bench ESMTP\r\n", hello[] = "250 ok\r\n", bye[] = "221 bye\r\n", what[] = "500 what\r\n";
    char line[512];
    if (!send_all(fd, banner, sizeof banner - 1)) {
        while (!recv_line(fd, line, sizeof line)) {
            if (!strncasecmp(line, "QUIT", 4)) { send_all(fd, bye, sizeof bye - 1); break; }
            const char *reply = strncasecmp(line, "EHLO", 4) ? what : hello;
            if (send_all(fd, reply, strlen(reply))) break;
        }
    }
    close(fd);
    return NULL;
}

static _Noreturn void serve(int port, void *(*handler)(void *)) {
    int listener = listen_on(port);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) continue;
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        pthread_create(&thread, &attr, handler, (void *)(intptr_t)fd);
        pthread_attr_destroy(&attr);
    }
}

/* ---- clients ---- */

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int latency(int port, int count, int pause_ms) {
    double *samples = calloc((size_t)count, sizeof *samples);
    char request[64], reply[64];
    memset(request, 'q', sizeof request);
    int ok = 0;
    for (int i = 0; i < count; i++) {
        double start = now();
        int fd = dial(port);
        if (fd < 0) continue;
        int good = 1;
        for (int j = 0; j < 3 && good; j++)
            good = !send_all(fd, request, sizeof request) && !recv_exactly(fd, reply, sizeof reply);
        close(fd);
        if (good) samples[ok++] = (now() - start) * 1e6;
        if (pause_ms > 0) usleep((useconds_t)pause_ms * 1000);
    }
    if (ok == 0) { printf("latency failed\n"); return 1; }
    qsort(samples, (size_t)ok, sizeof *samples, compare);
    printf("median_us=%.0f p90_us=%.0f p99_us=%.0f ok=%d of %d\n", samples[ok / 2], samples[ok * 9 / 10],
           samples[ok * 99 / 100], ok, count);
    return ok == count ? 0 : 1;
}

enum reply { REPLY_OK, REPLY_TIMEOUT, REPLY_BAD };

/* Receives one reply line and checks that it starts with the three-digit code. Returns
 * REPLY_TIMEOUT if the socket's receive timeout ran out first, REPLY_BAD on EOF, error or another code. */
static enum reply expect_reply(int fd, const char *code) {
    char line[512];
    if (recv_line(fd, line, sizeof line)) return errno == EAGAIN || errno == EWOULDBLOCK ? REPLY_TIMEOUT : REPLY_BAD;
    return strncmp(line, code, 3) ? REPLY_BAD : REPLY_OK;
}

/* Server-speaks-first latency: each exchange is connect, read the banner, EHLO and its reply,
 * QUIT and its reply, close. The banner's wait is where a tunnel's channel open shows. An
 * exchange still waiting after timeout_ms is given up and counts as that long (so the figures
 * are then lower bounds) and as timed out; no exchange starts after budget_s, so that a contender
 * that stalls for seconds at a time cannot stretch the run. Returns 1 if an exchange failed
 * (refused, closed, wrong reply) or none finished in time, else 0. */
static int smtp_latency(int port, int count, int timeout_ms, double budget_s) {
    double *total = calloc((size_t)count, sizeof *total), *banner = calloc((size_t)count, sizeof *banner);
    static const char ehlo[] = "EHLO x\r\n", quit[] = "QUIT\r\n";
    int done = 0, failed = 0, timed_out = 0, over_second = 0;
    double end = now() + budget_s;
    for (int i = 0; i < count && now() < end; i++) {
        double start = now();
        int fd = dial(port);
        if (fd < 0) { failed++; continue; }
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        enum reply r = expect_reply(fd, "220");
        double greeted = now();
        if (r == REPLY_OK) r = send_all(fd, ehlo, sizeof ehlo - 1) ? REPLY_BAD : expect_reply(fd, "250");
        if (r == REPLY_OK) r = send_all(fd, quit, sizeof quit - 1) ? REPLY_BAD : expect_reply(fd, "221");
        close(fd);
        if (r == REPLY_BAD) { failed++; continue; }
        timed_out += r == REPLY_TIMEOUT;
        banner[done] = (greeted - start) * 1e6;
        total[done] = (now() - start) * 1e6;
        over_second += total[done++] > 1e6;
    }
    if (done == timed_out) { printf("smtplatency failed: done=%d timed_out=%d errors=%d\n", done, timed_out, failed); return 1; }
    qsort(total, (size_t)done, sizeof *total, compare);
    qsort(banner, (size_t)done, sizeof *banner, compare);
    printf("median_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f banner_median_us=%.0f banner_p90_us=%.0f "
           "over_1s=%d timed_out=%d errors=%d done=%d of %d\n", total[done / 2], total[done * 9 / 10],
           total[done * 99 / 100], total[done - 1], banner[done / 2], banner[done * 9 / 10], over_second, timed_out,
           failed, done, count);
    return failed ? 1 : 0;
}

struct job { int port; long long bytes; double seconds; int ok; long long done; };

static void *connrate_worker(void *arg) {
    struct job *job = arg;
    char request[64], reply[64];
    memset(request, 'c', sizeof request);
    double end = now() + job->seconds;
    while (now() < end) {
        int fd = dial(job->port);
        if (fd < 0) continue;
        if (!send_all(fd, request, sizeof request) && !recv_exactly(fd, reply, sizeof reply)) job->done++;
        close(fd);
    }
    return NULL;
}

static void *upload_worker(void *arg) {
    struct job *job = arg;
    int fd = dial(job->port);
    if (fd < 0) return NULL;
    char *buffer = malloc(BUFFER);
    memset(buffer, 'u', BUFFER);
    long long left = job->bytes;
    while (left > 0) {
        size_t n = left < BUFFER ? (size_t)left : BUFFER;
        if (send_all(fd, buffer, n)) break;
        left -= (long long)n;
    }
    shutdown(fd, SHUT_WR);
    char line[64] = {0};
    ssize_t r = recv(fd, line, sizeof line - 1, MSG_WAITALL);
    if (r > 0 && atoll(line) == job->bytes) job->ok = 1;
    free(buffer);
    close(fd);
    return NULL;
}

static void *download_worker(void *arg) {
    struct job *job = arg;
    int fd = dial(job->port);
    if (fd < 0) return NULL;
    char line[64];
    int n = snprintf(line, sizeof line, "%lld\n", job->bytes);
    send_all(fd, line, (size_t)n);
    char *buffer = malloc(BUFFER);
    long long got = 0;
    for (;;) {
        ssize_t r = recv(fd, buffer, BUFFER, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += r;
    }
    job->ok = got == job->bytes;
    free(buffer);
    close(fd);
    return NULL;
}

static int run_workers(void *(*worker)(void *), int port, long long bytes, int count, double seconds, int report_rate) {
    pthread_t threads[1024];
    struct job jobs[1024];
    if (count > 1024) count = 1024;
    double start = now();
    for (int i = 0; i < count; i++) {
        jobs[i] = (struct job){.port = port, .bytes = bytes, .seconds = seconds};
        pthread_create(&threads[i], NULL, worker, &jobs[i]);
    }
    long long done = 0;
    int ok = 0;
    for (int i = 0; i < count; i++) {
        pthread_join(threads[i], NULL);
        done += jobs[i].done;
        ok += jobs[i].ok;
    }
    double elapsed = now() - start;
    if (report_rate) {
        printf("conn_per_s=%.0f\n", done / elapsed);
        return done > 0 ? 0 : 1;
    }
    printf("mb_per_s=%.1f ok=%d of %d\n", (double)bytes * count / elapsed / 1e6, ok, count);
    return ok == count ? 0 : 1;
}

static int hold(int port, int count) {
    int *fds = calloc((size_t)count, sizeof *fds);
    char request[16] = "hold-this-line\n", reply[16];
    int ok = 0;
    for (int i = 0; i < count; i++) {
        fds[i] = dial(port);
        if (fds[i] >= 0 && !send_all(fds[i], request, sizeof request)) ok++;
    }
    int answered = 0;
    for (int i = 0; i < count; i++)
        if (fds[i] >= 0 && !recv_exactly(fds[i], reply, sizeof reply) && !memcmp(request, reply, sizeof reply)) answered++;
    printf("held=%d answered=%d of %d\n", ok, answered, count);
    fflush(stdout);
    /* Keep them open until told to go (stdin closes or a line arrives). */
    char line[8];
    if (fgets(line, sizeof line, stdin) == NULL) {}
    for (int i = 0; i < count; i++) if (fds[i] >= 0) close(fds[i]);
    return answered == count ? 0 : 1;
}

static int stall(int port, double seconds) {
    int fd = dial(port);
    if (fd < 0) return 1;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char *buffer = malloc(BUFFER);
    memset(buffer, 's', BUFFER);
    long long sent = 0;
    double end = now() + seconds;
    while (now() < end) {
        ssize_t w = send(fd, buffer, BUFFER, MSG_NOSIGNAL);
        if (w > 0) sent += w;
    }
    printf("stalled_after_kib=%lld\n", sent / 1024);
    close(fd);
    return 0;
}

/* ---- bursts: many connections at once from one epoll loop ---- */

/* What a burst connection goes through. An echo connection: CONNECTING, then AWAIT_ECHO
 * (its 16 bytes sent), then DONE. A SOCKS connection: CONNECTING, AWAIT_METHOD (greeting
 * sent), AWAIT_REPLY (CONNECT sent), AWAIT_BANNER, DONE. FAILED ends either. */
enum burst_state { CONNECTING, AWAIT_ECHO, AWAIT_METHOD, AWAIT_REPLY, AWAIT_BANNER, DONE, FAILED };

/* Why a burst connection failed; counted per reason and never folded into "ok". */
enum burst_failure {
    F_REFUSED,     /* connect: ECONNREFUSED */
    F_RESET,       /* ECONNRESET or EPIPE on connect, send or receive */
    F_CLOSED,      /* EOF before the whole answer */
    F_WRONG,       /* bytes other than the answer (another connection's, a refusal text, too many) */
    F_SOCKS_ERROR, /* a SOCKS reply other than "succeeded" */
    F_CONNECT_TIMEOUT, /* still connecting at the deadline */
    F_ANSWER_TIMEOUT,  /* connected, but the answer was not complete at the deadline */
    F_LOCAL,       /* this client's own failure: socket() or connect() (EMFILE, EADDRNOTAVAIL, ...) */
    F_COUNT
};
static const char *const failure_names[F_COUNT] = {"refused", "reset", "closed", "wrong", "socks_error",
                                                    "connect_timed_out", "answer_timed_out", "local_errors"};

struct burst_conn {
    int fd;
    enum burst_state state;
    double finished; /* seconds after the burst started */
    size_t got;
    char buffer[96];
};

struct burst {
    int socks, target_port;
    struct burst_conn *conns;
    int count, epoll, ok, failures, failed[F_COUNT], last_errno;
    int dropped; /* echoed, then dropped by the far side (EOF, reset, more bytes) */
    double start;
};

/* Raises the soft descriptor limit to the hard one, so that a burst is not cut short by this client. */
static void raise_descriptor_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

static void burst_payload(int index, char out[16]) {
    char text[17];
    snprintf(text, sizeof text, "burst-%09d\n", index);
    memcpy(out, text, 16);
}

static void burst_fail(struct burst *b, struct burst_conn *c, enum burst_failure why, int error) {
    if (c->state == DONE || c->state == FAILED) return;
    c->state = FAILED;
    c->finished = now() - b->start;
    b->failed[why]++;
    b->failures++;
    if (error) b->last_errno = error;
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
}

static enum burst_failure failure_of(int error) {
    if (error == ECONNREFUSED) return F_REFUSED;
    if (error == ECONNRESET || error == EPIPE) return F_RESET;
    if (error == ETIMEDOUT) return F_CONNECT_TIMEOUT;
    return F_LOCAL;
}

/* Sends a few bytes a fresh socket can always take at once; a short send is this client's failure. */
static int burst_send(struct burst *b, struct burst_conn *c, const void *bytes, size_t n, enum burst_state next) {
    ssize_t w = send(c->fd, bytes, n, MSG_NOSIGNAL);
    if (w != (ssize_t)n) { burst_fail(b, c, w < 0 ? failure_of(errno) : F_LOCAL, w < 0 ? errno : 0); return -1; }
    c->state = next;
    c->got = 0;
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - b->conns)};
    epoll_ctl(b->epoll, EPOLL_CTL_MOD, c->fd, &e);
    return 0;
}

static void burst_done(struct burst *b, struct burst_conn *c) {
    c->state = DONE;
    c->finished = now() - b->start;
    b->ok++;
    /* Held from now on: anything readable (bytes, EOF, reset) means the far side dropped it. */
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)(c - b->conns)};
    epoll_ctl(b->epoll, EPOLL_CTL_MOD, c->fd, &e);
}

/* The connect finished (or failed): send the first request. */
static void burst_connected(struct burst *b, struct burst_conn *c) {
    int error = 0;
    socklen_t length = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length);
    if (error) { burst_fail(b, c, failure_of(error), error); return; }
    if (b->socks) {
        static const unsigned char greeting[] = {5, 1, 0};
        burst_send(b, c, greeting, sizeof greeting, AWAIT_METHOD);
    } else {
        char payload[16];
        burst_payload((int)(c - b->conns), payload);
        burst_send(b, c, payload, sizeof payload, AWAIT_ECHO);
    }
}

/* Bytes arrived: take them and move the connection on when its answer is complete. */
static void burst_readable(struct burst *b, struct burst_conn *c) {
    ssize_t r = recv(c->fd, c->buffer + c->got, sizeof c->buffer - c->got, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r < 0) { burst_fail(b, c, failure_of(errno), errno); return; }
    if (r == 0) { burst_fail(b, c, F_CLOSED, 0); return; }
    c->got += (size_t)r;
    for (;;) {
        if (c->state == AWAIT_ECHO) {
            char payload[16];
            burst_payload((int)(c - b->conns), payload);
            if (memcmp(c->buffer, payload, c->got < 16 ? c->got : 16) || c->got > 16) { burst_fail(b, c, F_WRONG, 0); return; }
            if (c->got == 16) burst_done(b, c);
            return;
        }
        if (c->state == AWAIT_METHOD) {
            if (c->got < 2) return;
            if (c->buffer[0] != 5 || c->buffer[1] != 0 || c->got > 2) { burst_fail(b, c, F_WRONG, 0); return; }
            unsigned char request[10] = {5, 1, 0, 1, 127, 0, 0, 1, (unsigned char)(b->target_port >> 8), (unsigned char)b->target_port};
            burst_send(b, c, request, sizeof request, AWAIT_REPLY);
            return;
        }
        if (c->state == AWAIT_REPLY) {
            if (c->got < 5) return;
            if (c->buffer[0] != 5) { burst_fail(b, c, F_WRONG, 0); return; }
            if (c->buffer[1] != 0) { burst_fail(b, c, F_SOCKS_ERROR, 0); return; }
            size_t address = c->buffer[3] == 1 ? 4 : c->buffer[3] == 4 ? 16 : c->buffer[3] == 3 ? 1 + (unsigned char)c->buffer[4] : 0;
            if (address == 0) { burst_fail(b, c, F_WRONG, 0); return; }
            size_t length = 4 + address + 2;
            if (c->got < length) return;
            /* What follows the reply is the target's, already: the banner's first bytes. */
            memmove(c->buffer, c->buffer + length, c->got - length);
            c->got -= length;
            c->state = AWAIT_BANNER;
            continue;
        }
        if (c->state == AWAIT_BANNER) {
            if (c->got >= 3 && memcmp(c->buffer, "220", 3)) { burst_fail(b, c, F_WRONG, 0); return; }
            if (memchr(c->buffer, '\n', c->got)) { burst_done(b, c); return; }
            if (c->got == sizeof c->buffer) burst_fail(b, c, F_WRONG, 0);
            return;
        }
        return;
    }
}

static void burst_event(struct burst *b, struct epoll_event *e) {
    struct burst_conn *c = &b->conns[e->data.u32];
    if (c->state == CONNECTING) {
        if (e->events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) burst_connected(b, c);
    } else if (c->state == DONE) {
        epoll_ctl(b->epoll, EPOLL_CTL_DEL, c->fd, NULL);
        b->dropped++;
    } else if (c->state != FAILED) {
        if (e->events & (EPOLLIN | EPOLLERR | EPOLLHUP)) burst_readable(b, c);
    }
}

static void burst_poll(struct burst *b, int timeout_ms) {
    struct epoll_event events[256];
    int n = epoll_wait(b->epoll, events, 256, timeout_ms);
    for (int i = 0; i < n; i++) burst_event(b, &events[i]);
}

/* Opens every connection as fast as connect() returns, taking the events already due every
 * 64 connects so that early answers are timed when they come, then waits for the rest until
 * timeout_s after the start. Connections still waiting then count as timed out. */
static void burst_run(struct burst *b, int port, double timeout_s) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    b->epoll = epoll_create1(0);
    b->start = now();
    for (int i = 0; i < b->count; i++) {
        struct burst_conn *c = &b->conns[i];
        c->state = CONNECTING;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) { burst_fail(b, c, F_LOCAL, errno); continue; }
        int on = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
        epoll_ctl(b->epoll, EPOLL_CTL_ADD, c->fd, &e);
        if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) burst_fail(b, c, failure_of(errno), errno);
        if (i % 64 == 63) burst_poll(b, 0);
    }
    double end = b->start + timeout_s;
    while (b->ok + b->failures < b->count && now() < end) burst_poll(b, (int)((end - now()) * 1000) + 1);
    for (int i = 0; i < b->count; i++) {
        struct burst_conn *c = &b->conns[i];
        if (c->state == CONNECTING) burst_fail(b, c, F_CONNECT_TIMEOUT, 0);
        else if (c->state != DONE && c->state != FAILED) burst_fail(b, c, F_ANSWER_TIMEOUT, 0);
    }
}

/* One line of results: ok, every failure count, when the last one succeeded and when the
 * last one's outcome was known, and the median/p99/longest time to success. */
static void burst_report(struct burst *b) {
    double *times = calloc((size_t)b->count + 1, sizeof *times), last_ok = 0, last = 0;
    int n = 0;
    for (int i = 0; i < b->count; i++) {
        struct burst_conn *c = &b->conns[i];
        if (c->finished > last) last = c->finished;
        if (c->state == DONE) { times[n++] = c->finished; if (c->finished > last_ok) last_ok = c->finished; }
    }
    qsort(times, (size_t)n, sizeof *times, compare);
    printf("ok=%d of %d dropped=%d", b->ok, b->count, b->dropped);
    for (int f = 0; f < F_COUNT; f++) printf(" %s=%d", failure_names[f], b->failed[f]);
    printf(" last_ok_s=%.3f all_s=%.3f ok_median_ms=%.1f ok_p99_ms=%.1f ok_max_ms=%.1f", last_ok, last,
           n ? times[n / 2] * 1e3 : 0, n ? times[n * 99 / 100] * 1e3 : 0, n ? times[n - 1] * 1e3 : 0);
    if (b->last_errno) printf(" last_error=\"%s\"", strerror(b->last_errno));
    printf("\n");
    fflush(stdout);
    free(times);
}

static int burst(int port, int count, double timeout_s) {
    raise_descriptor_limit();
    struct burst b = {.count = count, .conns = calloc((size_t)count, sizeof(struct burst_conn))};
    burst_run(&b, port, timeout_s);
    burst_report(&b);
    /* Hold every echoed connection until told to go (stdin closes or a line arrives); count
     * those the far side drops (EOF, reset, unexpected bytes) meanwhile. */
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    int told = 0;
    if (epoll_ctl(b.epoll, EPOLL_CTL_ADD, 0, &e) != 0) {
        /* stdin is not a pipe or socket (a file, /dev/null): wait on it plainly, without watching for drops. */
        char line[8];
        if (fgets(line, sizeof line, stdin) == NULL) {}
        told = 1;
    }
    while (!told) {
        struct epoll_event events[256];
        int n = epoll_wait(b.epoll, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == UINT32_MAX) { told = 1; continue; }
            burst_event(&b, &events[i]);
        }
    }
    printf("dropped_while_held=%d\n", b.dropped);
    for (int i = 0; i < count; i++) if (b.conns[i].fd >= 0) close(b.conns[i].fd);
    return b.ok == count && b.dropped == 0 ? 0 : 1;
}

static int socks_burst(int port, int count, int target_port, double timeout_s) {
    raise_descriptor_limit();
    struct burst b = {.count = count, .socks = 1, .target_port = target_port,
                      .conns = calloc((size_t)count, sizeof(struct burst_conn))};
    burst_run(&b, port, timeout_s);
    burst_report(&b);
    for (int i = 0; i < count; i++) if (b.conns[i].fd >= 0) close(b.conns[i].fd);
    return b.ok == count ? 0 : 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 3) { fprintf(stderr, "usage: see the comment at the top of benchtool.c\n"); return 2; }
    const char *mode = argv[1];
    int port = atoi(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "echo")) serve(port, serve_echo);
    if (!strcmp(mode, "sink")) serve(port, serve_sink);
    if (!strcmp(mode, "source")) serve(port, serve_source);
    if (!strcmp(mode, "smtp")) serve(port, serve_smtp);
    if (!strcmp(mode, "latency") && argc > 3) return latency(port, atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 0);
    if (!strcmp(mode, "smtplatency") && argc > 5) return smtp_latency(port, atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    if (!strcmp(mode, "connrate") && argc > 4) return run_workers(connrate_worker, port, 0, atoi(argv[4]), atof(argv[3]), 1);
    if (!strcmp(mode, "upload") && argc > 4) return run_workers(upload_worker, port, atoll(argv[3]), atoi(argv[4]), 0, 0);
    if (!strcmp(mode, "download") && argc > 4) return run_workers(download_worker, port, atoll(argv[3]), atoi(argv[4]), 0, 0);
    if (!strcmp(mode, "hold") && argc > 3) return hold(port, atoi(argv[3]));
    if (!strcmp(mode, "stall") && argc > 3) return stall(port, atof(argv[3]));
    if (!strcmp(mode, "burst") && argc > 4) return burst(port, atoi(argv[3]), atof(argv[4]));
    if (!strcmp(mode, "socksburst") && argc > 5) return socks_burst(port, atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    fprintf(stderr, "benchtool: unknown mode %s\n", mode);
    return 2;
}
