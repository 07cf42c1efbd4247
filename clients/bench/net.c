/*
 * net.c — the network half of doorstep-bench: a real doorstepd, started as a
 * child process on loopback, driven by a WebSocket client written for load.
 *
 * The server.  Each section gets a fresh store: the bench creates it
 * (store_init, as `doorstepctl init` does), registers its devices (key epoch
 * 1, scope = the device's households, as tests/sync/test_server.c does),
 * closes it, then starts `doorstepd --data DIR --listen 127.0.0.1:0` with
 * RLIMIT_NOFILE raised (inherited through exec) and reads the port from the
 * "listening on ws://127.0.0.1:PORT/sync" line it prints.  Its RSS and CPU
 * time come from /proc/PID/status and /proc/PID/stat.  Stopped with SIGTERM.
 *
 * The client.  One thread, one epoll set, non-blocking sockets.  Everything
 * that can be done before a clock starts is: envelopes are signed, push
 * frames are encoded and masked (RFC 6455 client frames), the upgrade request
 * is one shared string.  Only the auth signature (over the server's nonce)
 * is computed on the clock, once per connection.  The client's own CPU time
 * is measured and reported beside each figure, since client and server share
 * the machine's cores.
 *
 * Sections:
 *   wave       D devices connect at once and each pushes W pre-signed deltas
 *              in one push: clock from before the first connect to the last
 *              ack; per-push latency from the push's last byte written to
 *              its ack.  Fresh server per trial.
 *   sustained  all devices authenticate first; then each keeps one push of
 *              B deltas in flight, sending the next as soon as the ack
 *              returns; deltas acked inside the window (after a warm-up).
 *   pull       on the sustained server, after device 1's whole history was
 *              pushed: a new device whose scope is the first H households of
 *              volunteer 1's slice connects and pulls from cursor 0 until
 *              `more` is false; bytes received on the socket and time.
 *   idle       N devices connect and authenticate (bound to 127.0.0.2..17 so
 *              ports never run short) and stay idle; server RSS before and
 *              after, per connection.
 *
 * Invariant: every figure comes from acks the server sent after its commit;
 * an ack entry that is not "applied" is counted apart and reported.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <sodium.h>

#include "bench.h"

#define YEAR 2026
/* The protocol's constants (docs/PROTOCOL.md); the bench does not link sync/. */
#define SUBPROTOCOL "doorstep.v1"

/* ---- small helpers ------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double q)
{
    if (!n) return NAN;
    size_t i = (size_t)(q * (double)n + 0.999999);
    if (i < 1) i = 1;
    if (i > n) i = n;
    return v[i - 1];
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* utime + stime of a process, seconds; NAN if unreadable. */
static double proc_cpu_s(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return NAN;
    unsigned long ut = 0, st = 0;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS (or another Vm* field) of a process in KiB; -1 if unreadable. */
static long proc_status_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    size_t fl = strlen(field);
    long v = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, fl) && line[fl] == ':') {
            v = strtol(line + fl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* The 1-minute load average (other work on the machine skews every figure). */
static double loadavg1(void)
{
    double l = NAN;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = NAN;
        fclose(f);
    }
    return l;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- msgpack writing (canonical: keys in order, shortest integers) --------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    int err;
} wbuf;

static void wb_need(wbuf *b, size_t k)
{
    if (b->n + k <= b->cap) return;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->n + k) nc *= 2;
    uint8_t *np = realloc(b->p, nc);
    if (!np) {
        b->err = -1;
        return;
    }
    b->p = np;
    b->cap = nc;
}

static void wb_put(wbuf *b, const void *p, size_t k)
{
    wb_need(b, k);
    if (b->err) return;
    memcpy(b->p + b->n, p, k);
    b->n += k;
}

static void wb_byte(wbuf *b, uint8_t c) { wb_put(b, &c, 1); }

static void wb_be(wbuf *b, uint64_t v, int bytes)
{
    uint8_t t[8];
    for (int i = 0; i < bytes; i++) t[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    wb_put(b, t, (size_t)bytes);
}

static void mp_uint(wbuf *b, uint64_t v)
{
    if (v < 128) wb_byte(b, (uint8_t)v);
    else if (v < 256) { wb_byte(b, 0xcc); wb_be(b, v, 1); }
    else if (v < 65536) { wb_byte(b, 0xcd); wb_be(b, v, 2); }
    else if (v < 4294967296ull) { wb_byte(b, 0xce); wb_be(b, v, 4); }
    else { wb_byte(b, 0xcf); wb_be(b, v, 8); }
}

static void mp_str(wbuf *b, const char *s)
{
    size_t l = strlen(s);   /* only short keys and type names here */
    wb_byte(b, (uint8_t)(0xa0 | l));
    wb_put(b, s, l);
}

static void mp_bin(wbuf *b, const uint8_t *p, size_t l)
{
    if (l < 256) { wb_byte(b, 0xc4); wb_be(b, l, 1); }
    else if (l < 65536) { wb_byte(b, 0xc5); wb_be(b, l, 2); }
    else { wb_byte(b, 0xc6); wb_be(b, l, 4); }
    wb_put(b, p, l);
}

static void mp_array(wbuf *b, uint32_t n)
{
    if (n < 16) wb_byte(b, (uint8_t)(0x90 | n));
    else if (n < 65536) { wb_byte(b, 0xdc); wb_be(b, n, 2); }
    else { wb_byte(b, 0xdd); wb_be(b, n, 4); }
}

/* Append payload as one masked binary WebSocket frame (client -> server). */
static void ws_frame(wbuf *out, const uint8_t *p, size_t n, uint64_t *rng)
{
    uint8_t mask[4];
    uint64_t r = bench_rand(rng);
    memcpy(mask, &r, 4);
    wb_byte(out, 0x82);
    if (n < 126) wb_byte(out, (uint8_t)(0x80 | n));
    else if (n < 65536) { wb_byte(out, 0x80 | 126); wb_be(out, n, 2); }
    else { wb_byte(out, 0x80 | 127); wb_be(out, n, 8); }
    wb_put(out, mask, 4);
    wb_need(out, n);
    if (out->err) return;
    uint8_t *d = out->p + out->n;
    for (size_t i = 0; i < n; i++) d[i] = p[i] ^ mask[i & 3];
    out->n += n;
}

/* ---- msgpack reading (msgpack-c, on server frames) --------------------------------- */

static bool mp_is(const msgpack_object *o, const char *s)
{
    size_t l = strlen(s);
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == l &&
           !memcmp(o->via.str.ptr, s, l);
}

static void mp_errtext(const msgpack_object *m, char *out, size_t n)
{
    const msgpack_object *c = wire_mp_get(m, "c"), *msg = wire_mp_get(m, "m");
    long long code = 0;
    if (c && (c->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
              c->type == MSGPACK_OBJECT_POSITIVE_INTEGER))
        code = (long long)c->via.i64;
    snprintf(out, n, "code %lld: %.*s", code,
             msg && msg->type == MSGPACK_OBJECT_STR ? (int)msg->via.str.size : 1,
             msg && msg->type == MSGPACK_OBJECT_STR ? msg->via.str.ptr : "?");
}

/* ---- the server as a child process ---------------------------------------------------- */

typedef struct server {
    char data[700], key[700];
    pid_t pid;
    int port;
} server;

/* A fresh store in dir/tag, opened for registering devices. */
static int server_store(const char *dir, const char *tag, const char *schema, server *sv,
                        store **st)
{
    char err[512] = "";
    memset(sv, 0, sizeof *sv);
    snprintf(sv->data, sizeof sv->data, "%s/%s", dir, tag);
    snprintf(sv->key, sizeof sv->key, "%s/%s.key", dir, tag);
    int e = store_init(sv->data, sv->key, schema, YEAR, err, sizeof err);
    if (!e) e = store_open(sv->data, sv->key, NULL, st, err, sizeof err);
    if (e) {
        fprintf(stderr, "doorstep-bench: store %s: %s (%s)\n", sv->data, err, store_strerror(e));
        return -1;
    }
    return 0;
}

static int reg_device(store_txn *t, uint32_t id, const uint8_t pk[32], const char *const *hh,
                      size_t n)
{
    store_device d = {.id = id, .state = STORE_DEV_ACTIVE, .epoch = 1,
                      .created_ms = wall_ms()};
    snprintf(d.volunteer, sizeof d.volunteer, "志愿者%u", id);
    store_key k = {.dev = id, .epoch = 1, .state = STORE_KEY_ACTIVE, .created_ms = wall_ms()};
    memcpy(k.pk, pk, 32);
    int e = store_device_put(t, &d);
    if (!e) e = store_key_put(t, &k);
    if (!e) e = store_device_scope_set(t, id, hh, n);
    if (e) fprintf(stderr, "doorstep-bench: registering device %u: %s\n", id, store_strerror(e));
    return e ? -1 : 0;
}

/* Register devices 1..n_dev of g (scope: their slices), plus, if pull_hh,
 * device n_dev+1 with the first pull_hh households of device 1's slice. */
static int reg_street(store *st, const bench_gen *g, unsigned n_dev, unsigned pull_hh)
{
    store_txn *t = NULL;
    char (*ids)[24] = NULL;
    const char **ptr = NULL;
    size_t maxh = 0;
    int rc = -1;
    for (unsigned i = 0; i < n_dev; i++)
        if (g->dev[i].h_hi - g->dev[i].h_lo > maxh) maxh = g->dev[i].h_hi - g->dev[i].h_lo;
    ids = malloc((maxh + 1) * sizeof *ids);
    ptr = malloc((maxh + 1) * sizeof *ptr);
    if (!ids || !ptr || store_begin(st, STORE_RW, &t)) goto done;
    for (unsigned i = 0; i <= n_dev; i++) {
        const bench_dev *d = &g->dev[i == n_dev ? 0 : i];
        uint64_t nh = d->h_hi - d->h_lo;
        uint8_t pk[32], sk[64];
        if (i == n_dev) {
            if (!pull_hh) break;
            if (nh > pull_hh) nh = pull_hh;
        }
        for (uint64_t h = 0; h < nh; h++) {
            bench_hh_id(d->h_lo + h, ids[h]);
            ptr[h] = ids[h];
        }
        if (i < n_dev) memcpy(pk, d->pk, 32);
        else bench_dev_keypair(g->seed, n_dev + 1, pk, sk);
        sodium_memzero(sk, sizeof sk);
        if (reg_device(t, i + 1, pk, ptr, (size_t)nh)) goto done;
    }
    if (store_commit(t)) {
        t = NULL;
        goto done;
    }
    t = NULL;
    rc = 0;
done:
    if (t) store_abort(t);
    free(ids);
    free(ptr);
    if (rc) fprintf(stderr, "doorstep-bench: registering the devices failed\n");
    return rc;
}

static int server_start(server *sv, const char *doorstepd)
{
    int pfd[2];
    if (pipe(pfd)) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return -1;
    }
    if (pid == 0) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);   /* inherited by doorstepd */
        }
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        char log[800];
        snprintf(log, sizeof log, "%s.log", sv->data);
        int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (lfd >= 0) dup2(lfd, 2);   /* the server's own messages, shown if it fails */
        execl(doorstepd, doorstepd, "--data", sv->data, "--key-file", sv->key, "--listen",
              "127.0.0.1:0", "--log-level", "0", (char *)NULL);
        fprintf(stderr, "doorstep-bench: exec %s: %s\n", doorstepd, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    sv->pid = pid;
    /* Read the "listening on ws://127.0.0.1:PORT/sync" line (10 s at most). */
    char line[1024];
    size_t n = 0;
    double t0 = bench_now();
    while (bench_now() - t0 < 10) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(pfd[0], line + n, sizeof line - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        line[n] = 0;
        const char *m = strstr(line, "ws://127.0.0.1:");
        if (m && strchr(m, '\n')) {
            sv->port = atoi(m + strlen("ws://127.0.0.1:"));
            break;
        }
        if (n == sizeof line - 1) break;
    }
    close(pfd[0]);   /* the server prints nothing more on stdout at log level 0 */
    if (sv->port <= 0) {
        char log[800], l2[512];
        snprintf(log, sizeof log, "%s.log", sv->data);
        fprintf(stderr, "doorstep-bench: %s did not say where it listens; its log:\n", doorstepd);
        FILE *lf = fopen(log, "r");
        while (lf && fgets(l2, sizeof l2, lf)) fprintf(stderr, "  %s", l2);
        if (lf) fclose(lf);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        sv->pid = 0;
        return -1;
    }
    return 0;
}

static void server_stop(server *sv)
{
    if (sv->pid <= 0) return;
    kill(sv->pid, SIGTERM);
    double t0 = bench_now();
    int status;
    while (waitpid(sv->pid, &status, WNOHANG) == 0) {
        if (bench_now() - t0 > 15) {
            fprintf(stderr, "doorstep-bench: doorstepd (pid %d) did not stop; killing it\n",
                    (int)sv->pid);
            kill(sv->pid, SIGKILL);
            waitpid(sv->pid, &status, 0);
            break;
        }
        sleep_s(0.02);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char log[800], line[512];
        if (WIFSIGNALED(status))
            fprintf(stderr, "doorstep-bench: doorstepd (pid %d) died of signal %d; its log:\n",
                    (int)sv->pid, WTERMSIG(status));
        else
            fprintf(stderr, "doorstep-bench: doorstepd (pid %d) exited with %d; its log:\n",
                    (int)sv->pid, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        snprintf(log, sizeof log, "%s.log", sv->data);
        FILE *lf = fopen(log, "r");
        while (lf && fgets(line, sizeof line, lf)) fprintf(stderr, "  %s", line);
        if (lf) fclose(lf);
    }
    sv->pid = 0;
}

static void server_remove(server *sv)
{
    char log[800];
    snprintf(log, sizeof log, "%s.log", sv->data);
    nftw(sv->data, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    remove(sv->key);
    remove(log);
}

/* The server's group-commit counters, from GET /metrics (blocking; 5 s). */
typedef struct commit_stats {
    double commits, seconds, deltas;
} commit_stats;

static int server_metrics(int port, commit_stats *cs)
{
    char req[128], *buf = NULL;
    size_t n = 0, cap = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), rc = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {5, 0};
    memset(cs, 0, sizeof *cs);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) goto done;
    int l = snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n");
    if (send(fd, req, (size_t)l, MSG_NOSIGNAL) != l) goto done;
    for (;;) {
        if (n + 4096 > cap) {
            char *nb = realloc(buf, cap = cap ? cap * 2 : 65536);
            if (!nb) goto done;
            buf = nb;
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0) break;
        n += (size_t)r;
    }
    if (!buf) goto done;
    buf[n] = 0;
    static const char *const names[3] = {"\ndoorstep_commits_total ",
                                         "\ndoorstep_commit_seconds_sum ",
                                         "\ndoorstep_commit_batch_deltas_sum "};
    double *dst[3] = {&cs->commits, &cs->seconds, &cs->deltas};
    for (int i = 0; i < 3; i++) {
        const char *p = strstr(buf, names[i]);
        if (p) *dst[i] = strtod(p + strlen(names[i]), NULL);
    }
    rc = 0;
done:
    free(buf);
    close(fd);
    return rc;
}

/* ---- pre-built push frames ----------------------------------------------------------------- */

/* The pushes of one device: frame i at buf.p + off[i], carrying cnt[i] deltas. */
typedef struct pushes {
    wbuf buf;
    size_t *off;
    uint32_t *cnt;
    uint32_t n;
} pushes;

static void pushes_free(pushes *p)
{
    free(p->buf.p);
    free(p->off);
    free(p->cnt);
    memset(p, 0, sizeof *p);
}

/* Envelopes [from, to) of d in pushes of `batch`, push ids from 1. */
static int pushes_build(const bench_dev *d, size_t from, size_t to, unsigned batch, pushes *p,
                        uint64_t *rng)
{
    wbuf pl = {0};
    uint32_t np = (uint32_t)((to - from + batch - 1) / batch);
    memset(p, 0, sizeof *p);
    p->off = malloc((np + 1) * sizeof *p->off);
    p->cnt = malloc((np + 1) * sizeof *p->cnt);
    if (!p->off || !p->cnt) goto fail;
    for (size_t i = from; i < to; i += batch) {
        size_t k = to - i < batch ? to - i : batch;
        pl.n = 0;
        wb_byte(&pl, 0x83);
        mp_str(&pl, "d");
        mp_array(&pl, (uint32_t)k);
        for (size_t j = i; j < i + k; j++)
            mp_bin(&pl, d->envs.p + d->off[j], d->off[j + 1] - d->off[j]);
        mp_str(&pl, "id");
        mp_uint(&pl, p->n + 1);
        mp_str(&pl, "t");
        mp_str(&pl, "push");
        p->off[p->n] = p->buf.n;
        p->cnt[p->n] = (uint32_t)k;
        ws_frame(&p->buf, pl.p, pl.n, rng);
        p->n++;
        if (pl.err || p->buf.err) goto fail;
    }
    p->off[p->n] = p->buf.n;
    free(pl.p);
    return 0;
fail:
    free(pl.p);
    pushes_free(p);
    fprintf(stderr, "doorstep-bench: out of memory building push frames\n");
    return -1;
}

/* ---- the client ------------------------------------------------------------------------------- */

enum { C_IDLE, C_CONNECTING, C_UPGRADE, C_HELLO, C_AUTH, C_READY, C_DONE, C_FAILED };
enum { M_WAVE, M_SUSTAINED, M_PULL, M_IDLE };

#define OUTQ 4
typedef struct outbuf {
    const uint8_t *p;
    uint8_t *own;             /* freed when sent, if not NULL */
    size_t n, off;
} outbuf;

typedef struct conn {
    int fd;
    uint8_t state;
    bool pollout;
    uint32_t idx;             /* device index in the section */
    uint32_t dev_id;
    uint8_t *in;
    size_t in_n, in_cap;
    wbuf frag;                /* a fragmented message being reassembled */
    outbuf out[OUTQ];
    uint8_t out_h, out_n;
    double t_start, t_welcome, t_push;
    uint64_t rx_bytes;
    uint32_t next_push, acked_pushes;
    bool push_inflight;
} conn;

typedef struct client {
    int ep, port, mode;
    conn *c;
    unsigned n;
    const uint8_t (*sk)[64];  /* per conn index */
    pushes *push;             /* per conn index (wave, sustained) */
    char upgrade[512];
    size_t upgrade_len;
    uint64_t rng;
    unsigned next_connect, connecting, max_connecting;
    unsigned authed, failed, done;
    bool stop;
    /* push accounting */
    double *lat;              /* ms, one per acked push */
    size_t n_lat, cap_lat;
    uint64_t applied, not_applied, pushes_acked, inflight;
    double win_lo, win_hi;    /* sustained: count acks arriving in [win_lo, win_hi) */
    uint64_t win_applied;
    double send_until;        /* sustained: no new push after this time */
    int only_idx;             /* >= 0: only this conn keeps pushing */
    bool ran_out;
    double t_ran_out;
    double t_last_ack;
    int shown;
    /* pull */
    uint64_t pull_next, pull_envs, pull_env_bytes;
    unsigned pull_pages;
    double t_pull_done;
} client;

static void conn_fail(client *cl, conn *c, const char *why)
{
    if (c->state == C_FAILED || c->state == C_DONE) return;
    if (cl->shown++ < 5)
        fprintf(stderr, "doorstep-bench: connection of device %u: %s\n", c->dev_id, why);
    if (c->state == C_CONNECTING || c->state == C_UPGRADE || c->state == C_HELLO ||
        c->state == C_AUTH)
        cl->connecting--;
    c->state = C_FAILED;
    cl->failed++;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static void conn_release(conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    c->in_n = c->in_cap = 0;
    free(c->frag.p);
    memset(&c->frag, 0, sizeof c->frag);
    for (int i = 0; i < c->out_n; i++) free(c->out[(c->out_h + i) % OUTQ].own);
    c->out_n = 0;
}

static void set_pollout(client *cl, conn *c, bool on)
{
    if (c->pollout == on || c->fd < 0) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(cl->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->pollout = on;
}

static int conn_flush(client *cl, conn *c)
{
    while (c->out_n) {
        outbuf *o = &c->out[c->out_h];
        while (o->off < o->n) {
            ssize_t w = send(c->fd, o->p + o->off, o->n - o->off, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                set_pollout(cl, c, true);
                return 0;
            }
            if (w <= 0) {
                conn_fail(cl, c, "send failed");
                return -1;
            }
            o->off += (size_t)w;
        }
        free(o->own);
        o->own = NULL;
        c->out_h = (uint8_t)((c->out_h + 1) % OUTQ);
        c->out_n--;
    }
    set_pollout(cl, c, false);
    return 0;
}

/* Queue bytes (own: freed after sending) and try to send them now. */
static int conn_send(client *cl, conn *c, const uint8_t *p, size_t n, uint8_t *own)
{
    if (c->out_n == OUTQ) {
        free(own);
        conn_fail(cl, c, "client output queue full");
        return -1;
    }
    outbuf *o = &c->out[(c->out_h + c->out_n) % OUTQ];
    o->p = own ? own : p;
    o->own = own;
    o->n = n;
    o->off = 0;
    c->out_n++;
    return conn_flush(cl, c);
}

static int conn_send_payload(client *cl, conn *c, const wbuf *pl)
{
    wbuf f = {0};
    if (pl->err) return -1;
    ws_frame(&f, pl->p, pl->n, &cl->rng);
    if (f.err) {
        free(f.p);
        conn_fail(cl, c, "out of memory");
        return -1;
    }
    return conn_send(cl, c, f.p, f.n, f.p);
}

/* Start connecting conn i (non-blocking). */
static int conn_start(client *cl, unsigned i)
{
    conn *c = &cl->c[i];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cl->port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->t_start = bench_now();
    cl->connecting++;
    c->state = C_CONNECTING;
    if (c->fd < 0) {
        conn_fail(cl, c, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cl->mode == M_IDLE) {
        /* Spread over 16 source addresses, so 10,000+ connections never run
         * out of ephemeral ports (the port is picked at connect). */
        struct sockaddr_in src = {.sin_family = AF_INET};
        char ip[32];
        snprintf(ip, sizeof ip, "127.0.0.%u", 2 + i % 16);
        inet_pton(AF_INET, ip, &src.sin_addr);
#ifdef IP_BIND_ADDRESS_NO_PORT
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src)) {
            conn_fail(cl, c, "bind to a 127.0.0.x source address failed");
            return -1;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, c->fd, &ev)) {
        conn_fail(cl, c, "epoll_ctl failed");
        return -1;
    }
    c->pollout = true;
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) {
        conn_fail(cl, c, strerror(errno));
        return -1;
    }
    return 0;
}

static void start_more(client *cl)
{
    while (cl->next_connect < cl->n &&
           (!cl->max_connecting || cl->connecting < cl->max_connecting))
        conn_start(cl, cl->next_connect++);
}

/* Send device c's next pre-built push. */
static void send_push(client *cl, conn *c)
{
    pushes *p = &cl->push[c->idx];
    if (c->next_push >= p->n) return;
    uint32_t k = c->next_push++;
    c->push_inflight = true;
    cl->inflight++;
    c->t_push = bench_now();
    conn_send(cl, c, p->buf.p + p->off[k], p->off[k + 1] - p->off[k], NULL);
}

static void sust_next(client *cl, conn *c)
{
    double now = bench_now();
    if (cl->only_idx >= 0 && (int)c->idx != cl->only_idx) return;
    if (now >= cl->send_until) return;
    if (c->next_push >= cl->push[c->idx].n) {
        if (!cl->ran_out) {
            cl->ran_out = true;
            cl->t_ran_out = now;
            /* The window ends here: fewer devices pushing is less load. */
            if (now >= cl->win_lo && now < cl->win_hi) cl->win_hi = now;
        }
        return;
    }
    send_push(cl, c);
}

static void send_pull(client *cl, conn *c)
{
    wbuf pl = {0};
    wb_byte(&pl, 0x84);
    mp_str(&pl, "a");
    mp_uint(&pl, cl->pull_next);
    mp_str(&pl, "id");
    mp_uint(&pl, cl->pull_pages + 1);
    mp_str(&pl, "m");
    mp_uint(&pl, 500);
    mp_str(&pl, "t");
    mp_str(&pl, "pull");
    conn_send_payload(cl, c, &pl);
    free(pl.p);
}

static void on_ready(client *cl, conn *c)
{
    c->t_welcome = bench_now();
    c->state = C_READY;
    cl->authed++;
    cl->connecting--;
    switch (cl->mode) {
    case M_WAVE: send_push(cl, c); break;
    case M_PULL: send_pull(cl, c); break;
    case M_IDLE:
        /* Idle from now on: give the input buffer back. */
        free(c->in);
        c->in = NULL;
        c->in_n = c->in_cap = 0;
        break;
    default: break;
    }
}

static void on_ack(client *cl, conn *c, const msgpack_object *m)
{
    double now = bench_now();
    const msgpack_object *t = wire_mp_get(m, "t"), *r = wire_mp_get(m, "r");
    char why[200];
    if (!c->push_inflight) {
        conn_fail(cl, c, "a frame arrived with no push in flight");
        return;
    }
    c->push_inflight = false;
    cl->inflight--;
    if (!mp_is(t, "ack") || !r || r->type != MSGPACK_OBJECT_ARRAY) {
        mp_errtext(m, why, sizeof why);
        if (cl->shown++ < 5)
            fprintf(stderr, "doorstep-bench: device %u: push answered by %.*s (%s)\n",
                    c->dev_id, t && t->type == MSGPACK_OBJECT_STR ? (int)t->via.str.size : 1,
                    t && t->type == MSGPACK_OBJECT_STR ? t->via.str.ptr : "?", why);
        cl->not_applied += cl->push[c->idx].cnt[c->next_push - 1];
    } else {
        uint64_t ok = 0;
        for (uint32_t i = 0; i < r->via.array.size; i++) {
            const msgpack_object *e = &r->via.array.ptr[i];
            if (mp_is(wire_mp_get(e, "r"), "applied")) {
                ok++;
                continue;
            }
            if (cl->shown++ < 5) {
                mp_errtext(e, why, sizeof why);
                const msgpack_object *res = wire_mp_get(e, "r");
                fprintf(stderr, "doorstep-bench: device %u: delta %s (%s)\n", c->dev_id,
                        res && res->type == MSGPACK_OBJECT_STR ? "not applied" : "?", why);
            }
        }
        cl->applied += ok;
        cl->not_applied += r->via.array.size - ok;
        if (now >= cl->win_lo && now < cl->win_hi) cl->win_applied += ok;
    }
    if (cl->n_lat == cl->cap_lat) {
        size_t nc = cl->cap_lat ? cl->cap_lat * 2 : 1024;
        double *nl = realloc(cl->lat, nc * sizeof *nl);
        if (nl) {
            cl->lat = nl;
            cl->cap_lat = nc;
        }
    }
    if (cl->n_lat < cl->cap_lat) cl->lat[cl->n_lat++] = (now - c->t_push) * 1e3;
    cl->pushes_acked++;
    c->acked_pushes++;
    cl->t_last_ack = now;
    if (cl->mode == M_WAVE) {
        if (c->next_push >= cl->push[c->idx].n) {
            c->state = C_DONE;
            cl->done++;
        } else {
            send_push(cl, c);
        }
    } else {
        sust_next(cl, c);
    }
}

static void on_changes(client *cl, conn *c, const msgpack_object *m)
{
    const msgpack_object *t = wire_mp_get(m, "t"), *e = wire_mp_get(m, "e"), *more = wire_mp_get(m, "more"),
                         *n = wire_mp_get(m, "n");
    char why[200];
    if (!mp_is(t, "changes") || !e || e->type != MSGPACK_OBJECT_ARRAY || !n ||
        n->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        mp_errtext(m, why, sizeof why);
        conn_fail(cl, c, why);
        return;
    }
    cl->pull_pages++;
    cl->pull_envs += e->via.array.size;
    for (uint32_t i = 0; i < e->via.array.size; i++)
        if (e->via.array.ptr[i].type == MSGPACK_OBJECT_BIN)
            cl->pull_env_bytes += e->via.array.ptr[i].via.bin.size;
    cl->pull_next = n->via.u64;
    if (more && more->type == MSGPACK_OBJECT_BOOLEAN && more->via.boolean) {
        send_pull(cl, c);
    } else {
        cl->t_pull_done = bench_now();
        c->state = C_DONE;
        cl->done++;
    }
}

static void on_hello(client *cl, conn *c, const msgpack_object *m)
{
    const msgpack_object *t = wire_mp_get(m, "t"), *n = wire_mp_get(m, "n"), *srv = wire_mp_get(m, "srv");
    if (!mp_is(t, "hello") || !n || n->type != MSGPACK_OBJECT_BIN || n->via.bin.size != 32 ||
        !srv || srv->type != MSGPACK_OBJECT_BIN || srv->via.bin.size != 32) {
        conn_fail(cl, c, "bad hello");
        return;
    }
    uint8_t msg[WIRE_AUTH_MSG_BYTES], cn[32], sig[64];
    uint64_t r;
    for (int i = 0; i < 4; i++) {
        r = bench_rand(&cl->rng);
        memcpy(cn + 8 * i, &r, 8);
    }
    wire_auth_msg((const uint8_t *)srv->via.bin.ptr, (const uint8_t *)n->via.bin.ptr, cn,
                  c->dev_id, 1, msg);
    crypto_sign_detached(sig, NULL, msg, sizeof msg, cl->sk[c->idx]);
    wbuf pl = {0};
    wb_byte(&pl, 0x85);
    mp_str(&pl, "d");
    mp_uint(&pl, c->dev_id);
    mp_str(&pl, "e");
    mp_uint(&pl, 1);
    mp_str(&pl, "n");
    mp_bin(&pl, cn, 32);
    mp_str(&pl, "s");
    mp_bin(&pl, sig, 64);
    mp_str(&pl, "t");
    mp_str(&pl, "auth");
    c->state = C_AUTH;
    conn_send_payload(cl, c, &pl);
    free(pl.p);
}

static void on_message(client *cl, conn *c, const uint8_t *p, size_t n)
{
    msgpack_unpacked up;
    size_t off = 0;
    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, (const char *)p, n, &off) != MSGPACK_UNPACK_SUCCESS ||
        up.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&up);
        conn_fail(cl, c, "a frame that is not a msgpack map");
        return;
    }
    const msgpack_object *m = &up.data;
    char why[200];
    switch (c->state) {
    case C_HELLO: on_hello(cl, c, m); break;
    case C_AUTH:
        if (mp_is(wire_mp_get(m, "t"), "welcome")) {
            on_ready(cl, c);
        } else {
            mp_errtext(m, why, sizeof why);
            conn_fail(cl, c, why);
        }
        break;
    case C_READY:
        if (cl->mode == M_PULL) on_changes(cl, c, m);
        else if (cl->mode == M_IDLE) conn_fail(cl, c, "unexpected frame on an idle connection");
        else on_ack(cl, c, m);
        break;
    default: break;
    }
    msgpack_unpacked_destroy(&up);
}

/* Parse what arrived; returns -1 if the connection is gone. */
static int conn_parse(client *cl, conn *c)
{
    size_t pos = 0;
    if (c->state == C_UPGRADE) {
        uint8_t *end = c->in_n >= 4 ? memmem(c->in, c->in_n, "\r\n\r\n", 4) : NULL;
        if (!end) {
            if (c->in_n > 16384) conn_fail(cl, c, "no end of the HTTP response");
            return c->state == C_FAILED ? -1 : 0;
        }
        if (c->in_n < 12 || memcmp(c->in + 9, "101", 3)) {
            conn_fail(cl, c, "the WebSocket upgrade was refused");
            return -1;
        }
        pos = (size_t)(end - c->in) + 4;
        c->state = C_HELLO;
    }
    while (c->state >= C_HELLO && c->state <= C_READY && c->in_n - pos >= 2) {
        const uint8_t *f = c->in + pos;
        size_t avail = c->in_n - pos, h = 2;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i];
            h = 10;
        }
        if (f[1] & 0x80) h += 4;   /* servers do not mask; tolerate it */
        if (avail < h + len) break;
        int op = f[0] & 0x0f;
        bool fin = f[0] & 0x80;
        uint8_t *pl = c->in + pos + h;
        if (f[1] & 0x80)
            for (uint64_t i = 0; i < len; i++) pl[i] ^= f[h - 4 + (i & 3)];
        pos += h + (size_t)len;
        if (op == 0x8) {
            char why[64];
            snprintf(why, sizeof why, "server closed the connection (%d)",
                     len >= 2 ? pl[0] << 8 | pl[1] : 1005);
            conn_fail(cl, c, why);
            return -1;
        }
        if (op == 0x9) {
            wbuf pong = {0};
            uint8_t mask[4] = {0};
            wb_byte(&pong, 0x8a);
            wb_byte(&pong, (uint8_t)(0x80 | (len < 126 ? len : 0)));
            wb_put(&pong, mask, 4);
            if (len < 126) wb_put(&pong, pl, (size_t)len);
            if (pong.err || conn_send(cl, c, pong.p, pong.n, pong.p)) return -1;
            continue;
        }
        if (op == 0xa) continue;
        if (fin && op != 0 && !c->frag.n) {
            on_message(cl, c, pl, (size_t)len);
        } else {
            wb_put(&c->frag, pl, (size_t)len);
            if (fin) {
                on_message(cl, c, c->frag.p, c->frag.n);
                c->frag.n = 0;
            }
        }
        if (c->state == C_FAILED || !c->in) return c->state == C_FAILED ? -1 : 0;
    }
    if (c->in && pos) {
        memmove(c->in, c->in + pos, c->in_n - pos);
        c->in_n -= pos;
    }
    return 0;
}

static int conn_read(client *cl, conn *c)
{
    for (;;) {
        if (!c->in || c->in_n == c->in_cap) {
            size_t nc = c->in_cap ? c->in_cap * 2 : 4096;
            uint8_t *np = realloc(c->in, nc);
            if (!np) {
                conn_fail(cl, c, "out of memory");
                return -1;
            }
            c->in = np;
            c->in_cap = nc;
        }
        ssize_t r = recv(c->fd, c->in + c->in_n, c->in_cap - c->in_n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (r <= 0) {
            conn_fail(cl, c, r == 0 ? "server closed the connection" : strerror(errno));
            return -1;
        }
        c->in_n += (size_t)r;
        c->rx_bytes += (uint64_t)r;
        if (conn_parse(cl, c)) return -1;
        if (c->state == C_FAILED) return -1;
    }
}

static void conn_event(client *cl, conn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            conn_fail(cl, c, strerror(err));
            return;
        }
        c->state = C_UPGRADE;
        if (conn_send(cl, c, (const uint8_t *)cl->upgrade, cl->upgrade_len, NULL)) return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->state == C_DONE) {
            /* Finished connections are not read any more. */
            epoll_ctl(cl->ep, EPOLL_CTL_DEL, c->fd, NULL);
            return;
        }
        if (conn_read(cl, c)) return;
    }
    if ((ev & EPOLLOUT) && c->fd >= 0 && c->state != C_FAILED) conn_flush(cl, c);
}

static int client_init(client *cl, int mode, int port, unsigned n)
{
    memset(cl, 0, sizeof *cl);
    cl->mode = mode;
    cl->port = port;
    cl->n = n;
    cl->only_idx = -1;
    cl->send_until = INFINITY;
    cl->win_lo = cl->win_hi = INFINITY;
    cl->rng = 0xc0ffee ^ (uint64_t)port;
    cl->ep = epoll_create1(EPOLL_CLOEXEC);
    cl->c = calloc(n ? n : 1, sizeof *cl->c);
    if (cl->ep < 0 || !cl->c) return -1;
    for (unsigned i = 0; i < n; i++) {
        cl->c[i].fd = -1;
        cl->c[i].idx = i;
    }
    cl->upgrade_len = (size_t)snprintf(
        cl->upgrade, sizeof cl->upgrade,
        "GET /sync HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: ZG9vcnN0ZXAtYmVuY2gxMg==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " SUBPROTOCOL "\r\n\r\n",
        port);
    return 0;
}

static void client_free(client *cl)
{
    if (cl->c)
        for (unsigned i = 0; i < cl->n; i++) conn_release(&cl->c[i]);
    free(cl->c);
    free(cl->lat);
    if (cl->ep >= 0) close(cl->ep);
    memset(cl, 0, sizeof *cl);
    cl->ep = -1;
}

/* Run the loop until done(cl) or the deadline (absolute, bench_now). */
static void client_run(client *cl, double deadline, bool (*done)(const client *))
{
    struct epoll_event ev[512];
    start_more(cl);
    while (!done(cl)) {
        double now = bench_now();
        if (now >= deadline) break;
        int ms = (int)((deadline - now) * 1e3) + 1;
        if (ms > 50) ms = 50;
        int k = epoll_wait(cl->ep, ev, 512, ms);
        for (int i = 0; i < k; i++) conn_event(cl, ev[i].data.ptr, ev[i].events);
        start_more(cl);
    }
}

static bool all_settled(const client *cl) { return cl->done + cl->failed >= cl->n; }
static bool all_authed(const client *cl) { return cl->authed + cl->failed >= cl->n; }
static bool none_inflight(const client *cl) { return cl->inflight == 0; }
static bool never(const client *cl) { (void)cl; return false; }

static bool catchup_done(const client *cl)
{
    const conn *c = &cl->c[cl->only_idx];
    return c->state == C_FAILED || (!c->push_inflight && c->next_push >= cl->push[c->idx].n);
}

/* ---- sections ------------------------------------------------------------------------------------ */

typedef struct keys {
    uint8_t (*sk)[64];
    unsigned n;
} keys;

static int keys_make(keys *k, uint64_t seed, unsigned n, uint32_t first_id)
{
    k->sk = malloc((n ? n : 1) * sizeof *k->sk);
    k->n = n;
    if (!k->sk) return -1;
    for (unsigned i = 0; i < n; i++) {
        uint8_t pk[32];
        bench_dev_keypair(seed, first_id + i, pk, k->sk[i]);
    }
    return 0;
}

static void keys_free(keys *k)
{
    if (k->sk) sodium_memzero(k->sk, k->n * sizeof *k->sk);
    free(k->sk);
    k->sk = NULL;
}

static void lat_summary(client *cl, double *p50, double *p99, double *p999, double *max)
{
    qsort(cl->lat, cl->n_lat, sizeof *cl->lat, cmp_double);
    *p50 = pct(cl->lat, cl->n_lat, 0.50);
    *p99 = pct(cl->lat, cl->n_lat, 0.99);
    *p999 = pct(cl->lat, cl->n_lat, 0.999);
    if (max) *max = cl->n_lat ? cl->lat[cl->n_lat - 1] : NAN;
}

/* One wave on a fresh server: ndev devices push `each` deltas in one push. */
static int run_wave(const bench_net_opts *o, const bench_gen *g, const keys *k, unsigned ndev,
                    unsigned each, unsigned trial, bench_wave *w)
{
    server sv;
    store *st = NULL;
    client cl;
    pushes *ps = calloc(ndev, sizeof *ps);
    char tag[64];
    memset(&sv, 0, sizeof sv);
    int rc = -1;
    uint64_t rng = o->seed ^ 0x3a7e;
    memset(w, 0, sizeof *w);
    memset(&cl, 0, sizeof cl);
    cl.ep = -1;
    snprintf(tag, sizeof tag, "wave-%u-%u", ndev, trial);
    if (!ps || server_store(o->dir, tag, o->schema_path, &sv, &st)) goto done;
    if (reg_street(st, g, ndev, 0)) goto done;
    store_close(st);
    st = NULL;
    for (unsigned i = 0; i < ndev; i++) {
        size_t to = g->dev[i].n < each ? g->dev[i].n : each;
        if (pushes_build(&g->dev[i], 0, to, each, &ps[i], &rng)) goto done;
    }
    if (server_start(&sv, o->doorstepd)) goto done;
    sleep_s(0.2);
    if (client_init(&cl, M_WAVE, sv.port, ndev)) goto done;
    cl.sk = (const uint8_t(*)[64])k->sk;
    cl.push = ps;
    for (unsigned i = 0; i < ndev; i++) cl.c[i].dev_id = g->dev[i].id;
    w->load_before = loadavg1();
    double scpu0 = proc_cpu_s(sv.pid), ccpu0 = self_cpu_s();
    double t0 = bench_now();
    client_run(&cl, t0 + 120, all_settled);
    double t1 = cl.t_last_ack;
    w->server_cpu_s = proc_cpu_s(sv.pid) - scpu0;
    w->client_cpu_s = self_cpu_s() - ccpu0;
    w->devices = ndev;
    w->deltas_each = each;
    w->applied = cl.applied;
    w->not_applied = cl.not_applied;
    w->ms = (t1 - t0) * 1e3;
    w->deltas_per_s = t1 > t0 ? (double)cl.applied / (t1 - t0) : 0;
    lat_summary(&cl, &w->ack_p50_ms, &w->ack_p99_ms, &w->ack_p999_ms, &w->ack_max_ms);
    double *auth = malloc(ndev * sizeof *auth);
    size_t na = 0;
    for (unsigned i = 0; auth && i < ndev; i++)
        if (cl.c[i].t_welcome > 0) auth[na++] = (cl.c[i].t_welcome - cl.c[i].t_start) * 1e3;
    if (auth) {
        qsort(auth, na, sizeof *auth, cmp_double);
        w->auth_p50_ms = pct(auth, na, 0.5);
        w->auth_max_ms = na ? auth[na - 1] : NAN;
        free(auth);
    }
    if (cl.failed || cl.done < ndev) {
        fprintf(stderr, "doorstep-bench: wave: %u of %u devices finished (%u failed)\n", cl.done,
                ndev, cl.failed);
        goto done;
    }
    rc = 0;
done:
    client_free(&cl);
    if (st) store_close(st);
    server_stop(&sv);
    server_remove(&sv);
    for (unsigned i = 0; ps && i < ndev; i++) pushes_free(&ps[i]);
    free(ps);
    return rc;
}

/* Sustained closed-loop ingest, then the pull on the same server. */
static int run_sustained_pull(const bench_net_opts *o, const bench_gen *g, const keys *k,
                              bench_net *out)
{
    unsigned ndev = g->n_dev;
    server sv;
    store *st = NULL;
    client cl, pc;
    pushes *ps = calloc(ndev, sizeof *ps);
    keys pk = {0};
    int rc = -1;
    uint64_t rng = o->seed ^ 0x5057;
    memset(&sv, 0, sizeof sv);
    memset(&cl, 0, sizeof cl);
    memset(&pc, 0, sizeof pc);
    cl.ep = pc.ep = -1;
    if (!ps || server_store(o->dir, "sustained", o->schema_path, &sv, &st)) goto done;
    if (reg_street(st, g, ndev, o->pull_households)) goto done;
    store_close(st);
    st = NULL;
    for (unsigned i = 0; i < ndev; i++)
        if (pushes_build(&g->dev[i], 0, g->dev[i].n, o->sust_batch, &ps[i], &rng)) goto done;
    if (server_start(&sv, o->doorstepd)) goto done;
    sleep_s(0.2);
    if (client_init(&cl, M_SUSTAINED, sv.port, ndev)) goto done;
    cl.sk = (const uint8_t(*)[64])k->sk;
    cl.push = ps;
    for (unsigned i = 0; i < ndev; i++) cl.c[i].dev_id = g->dev[i].id;
    bench_progress("sustained: %u devices authenticating", ndev);
    client_run(&cl, bench_now() + 60, all_authed);
    if (cl.failed) {
        fprintf(stderr, "doorstep-bench: sustained: %u devices failed to authenticate\n",
                cl.failed);
        goto done;
    }
    bench_progress("sustained: %u devices push %u deltas at a time for %.0f s (+%.1f s warm-up)",
                   ndev, o->sust_batch, o->sust_seconds, o->sust_warmup);
    out->sust_load_before = loadavg1();
    double t0 = bench_now();
    cl.win_lo = t0 + o->sust_warmup;
    cl.win_hi = cl.win_lo + o->sust_seconds;
    cl.send_until = cl.win_hi;
    for (unsigned i = 0; i < ndev; i++) send_push(&cl, &cl.c[i]);
    client_run(&cl, cl.win_lo, never);
    commit_stats m0, m1;
    server_metrics(sv.port, &m0);
    double scpu0 = proc_cpu_s(sv.pid), ccpu0 = self_cpu_s(), tc0 = bench_now();
    size_t lat0 = cl.n_lat;
    client_run(&cl, cl.win_hi, never);
    double scpu1 = proc_cpu_s(sv.pid), ccpu1 = self_cpu_s(), tc1 = bench_now();
    server_metrics(sv.port, &m1);
    out->sust_commits = m1.commits - m0.commits;
    out->sust_commit_busy = (m1.seconds - m0.seconds) / (tc1 - tc0);
    out->sust_commit_ms = out->sust_commits > 0 ? (m1.seconds - m0.seconds) * 1e3 /
                                                      out->sust_commits : NAN;
    out->sust_commit_batch = out->sust_commits > 0 ? (m1.deltas - m0.deltas) /
                                                         out->sust_commits : NAN;
    double win = cl.win_hi - cl.win_lo;
    if (cl.ran_out && cl.t_ran_out <= cl.win_hi) {
        /* A device ran out of deltas: the window was shortened (not extrapolated). */
        out->sust_ran_out = true;
        fprintf(stderr, "doorstep-bench: warning: sustained: a device ran out of deltas after "
                "%.1f s of the window\n", cl.t_ran_out - cl.win_lo);
        if (win < 0.5) {
            fprintf(stderr, "doorstep-bench: sustained: too few deltas (use more --net-persons)\n");
            goto done;
        }
    }
    out->sust_devices = ndev;
    out->sust_batch = o->sust_batch;
    out->sust_seconds = o->sust_seconds;
    out->sust_warmup = o->sust_warmup;
    out->sust_window_s = win;
    out->sust_deltas = cl.win_applied;
    out->sust_per_s = (double)cl.win_applied / win;
    out->sust_server_cores = (scpu1 - scpu0) / (tc1 - tc0);
    out->sust_client_cores = (ccpu1 - ccpu0) / (tc1 - tc0);
    /* Latency of the pushes acked inside the window. */
    {
        client tmp = cl;
        tmp.lat = cl.lat + lat0;
        tmp.n_lat = cl.n_lat - lat0;
        double mx;
        lat_summary(&tmp, &out->sust_ack_p50_ms, &out->sust_ack_p99_ms, &out->sust_ack_p999_ms,
                    &mx);
        out->sust_pushes = tmp.n_lat;
    }
    client_run(&cl, bench_now() + 60, none_inflight);
    out->sust_not_applied = cl.not_applied;
    if (cl.inflight || cl.failed) {
        fprintf(stderr, "doorstep-bench: sustained: %llu pushes unanswered, %u devices failed\n",
                (unsigned long long)cl.inflight, cl.failed);
        goto done;
    }
    /* Volunteer 1's whole history, so the pull finds it all. */
    cl.only_idx = 0;
    cl.send_until = INFINITY;
    bench_progress("pull: pushing the rest of volunteer 1's history (%u pushes, not timed)",
                   ps[0].n - cl.c[0].next_push);
    sust_next(&cl, &cl.c[0]);
    client_run(&cl, bench_now() + 120, catchup_done);
    if (!catchup_done(&cl) || cl.c[0].state == C_FAILED) {
        fprintf(stderr, "doorstep-bench: pull: volunteer 1's history did not get acked\n");
        goto done;
    }
    out->pull_server_deltas = cl.applied;
    client_free(&cl);   /* everyone disconnects */
    for (unsigned i = 0; i < ndev; i++) pushes_free(&ps[i]);

    /* The pull: a new phone of volunteer 1, scope = the first H households. */
    const bench_dev *d0 = &g->dev[0];
    uint64_t hlim = d0->h_lo + o->pull_households;
    out->pull_households = (unsigned)((d0->h_hi < hlim ? d0->h_hi : hlim) - d0->h_lo);
    out->pull_expected = 0;
    for (size_t i = 0; i < d0->n; i++)
        if (d0->hh[i] < hlim) out->pull_expected++;
    if (keys_make(&pk, g->seed, 1, ndev + 1)) goto done;
    sleep_s(0.5);
    if (client_init(&pc, M_PULL, sv.port, 1)) goto done;
    pc.sk = (const uint8_t(*)[64])pk.sk;
    pc.c[0].dev_id = ndev + 1;
    double p0 = bench_now();
    client_run(&pc, p0 + 60, all_settled);
    if (pc.done != 1) {
        fprintf(stderr, "doorstep-bench: pull did not finish\n");
        goto done;
    }
    out->pull_ms = (pc.t_pull_done - p0) * 1e3;
    out->pull_connect_ms = (pc.c[0].t_welcome - p0) * 1e3;
    out->pull_bytes = pc.c[0].rx_bytes;
    out->pull_envelopes = pc.pull_envs;
    out->pull_env_bytes = pc.pull_env_bytes;
    out->pull_pages = pc.pull_pages;
    if (out->pull_envelopes != out->pull_expected)
        fprintf(stderr, "doorstep-bench: warning: pull got %llu envelopes, %llu expected\n",
                (unsigned long long)out->pull_envelopes,
                (unsigned long long)out->pull_expected);
    rc = 0;
done:
    client_free(&cl);
    client_free(&pc);
    keys_free(&pk);
    if (st) store_close(st);
    server_stop(&sv);
    server_remove(&sv);
    for (unsigned i = 0; ps && i < ndev; i++) pushes_free(&ps[i]);
    free(ps);
    return rc;
}

/* N idle authenticated connections: the server's RSS per connection. */
static int run_idle(const bench_net_opts *o, bench_net *out)
{
    unsigned n = o->idle_conns;
    server sv;
    store *st = NULL;
    store_txn *t = NULL;
    client cl;
    keys k = {0};
    int rc = -1;
    memset(&cl, 0, sizeof cl);
    memset(&sv, 0, sizeof sv);
    cl.ep = -1;
    out->idle_target = n;
    bench_progress("idle: %u devices: keys and registration", n);
    if (keys_make(&k, o->seed ^ 0x1d1e, n, 1)) goto done;
    if (server_store(o->dir, "idle", o->schema_path, &sv, &st)) goto done;
    if (store_begin(st, STORE_RW, &t)) goto done;
    for (unsigned i = 0; i < n; i++) {
        uint8_t pk[32];
        char hh[24];
        const char *ph = hh;
        crypto_sign_ed25519_sk_to_pk(pk, k.sk[i]);
        bench_hh_id(i, hh);
        if (reg_device(t, i + 1, pk, &ph, 1)) goto done;
    }
    int e = store_commit(t);
    t = NULL;
    if (e) goto done;
    store_close(st);
    st = NULL;
    if (server_start(&sv, o->doorstepd)) goto done;
    sleep_s(1.0);
    out->rss_before_kib = proc_status_kib(sv.pid, "VmRSS");
    if (client_init(&cl, M_IDLE, sv.port, n)) goto done;
    cl.sk = (const uint8_t(*)[64])k.sk;
    cl.max_connecting = 256;
    for (unsigned i = 0; i < n; i++) cl.c[i].dev_id = i + 1;
    bench_progress("idle: %u devices connect and authenticate", n);
    double t0 = bench_now();
    client_run(&cl, t0 + 300, all_authed);
    out->idle_connect_s = bench_now() - t0;
    out->idle_conns = cl.authed;
    /* Let the server settle (buffers freed after the handshakes), watching
     * that every connection stays up. */
    client_run(&cl, bench_now() + 2.0, never);
    out->rss_after_kib = proc_status_kib(sv.pid, "VmRSS");
    out->idle_conns = cl.authed;
    if (cl.failed) {
        fprintf(stderr, "doorstep-bench: idle: %u of %u connections failed\n", cl.failed, n);
        goto done;
    }
    out->rss_per_conn_kib = (double)(out->rss_after_kib - out->rss_before_kib) / (double)n;
    rc = 0;
done:
    if (t) store_abort(t);
    if (st) store_close(st);
    client_free(&cl);
    server_stop(&sv);
    server_remove(&sv);
    keys_free(&k);
    return rc;
}

static int median_index(const bench_wave *w, unsigned n)
{
    unsigned idx[BENCH_WAVE_TRIALS_MAX];
    for (unsigned i = 0; i < n; i++) idx[i] = i;
    for (unsigned i = 1; i < n; i++)
        for (unsigned j = i; j > 0 && w[idx[j]].ms < w[idx[j - 1]].ms; j--) {
            unsigned x = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = x;
        }
    return (int)idx[(n - 1) / 2];
}

int bench_net_run(const bench_net_opts *o, bench_net *out)
{
    bench_gen g;
    keys k = {0};
    int rc = -1;
    memset(out, 0, sizeof *out);
    memset(&g, 0, sizeof g);
    if (access(o->doorstepd, X_OK)) {
        fprintf(stderr, "doorstep-bench: %s: %s (build doorstepd, or pass --server PATH)\n",
                o->doorstepd, strerror(errno));
        return -1;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o->idle_conns + 64)
        fprintf(stderr, "doorstep-bench: warning: the open-file limit (%llu) is below %u idle "
                "connections\n", (unsigned long long)rl.rlim_cur, o->idle_conns);
    signal(SIGPIPE, SIG_IGN);

    unsigned ndev = 300;
    bench_progress("network: street of %llu persons for %u devices; pre-signing on %d cores",
                   (unsigned long long)o->persons, ndev, bench_cores());
    /* Delta times end well before now: the server quarantines deltas >24 h ahead. */
    if (bench_gen_make(&g, o->persons, ndev, o->seed, wall_ms() - 86400000ull)) goto done;
    out->persons = g.persons;
    out->households = g.households;
    out->deltas = g.deltas;
    out->devices = ndev;
    out->gen_s = g.gen_s;
    bench_progress("network: %llu deltas signed in %.1f s (not part of any figure)",
                   (unsigned long long)g.deltas, g.gen_s);
    if (keys_make(&k, g.seed, ndev, 1)) goto done;
    if (o->wave_devices > ndev) goto done;

    /* 2. The evening wave. */
    out->wave_trials = o->wave_trials;
    for (unsigned t = 0; t < o->wave_trials; t++) {
        bench_wave *w = &out->wave[t];
        if (run_wave(o, &g, &k, o->wave_devices, o->wave_deltas, t, w)) goto done;
        bench_progress("wave %u/%u: %u x %u deltas acked in %.0f ms (%.0f deltas/s), ack p50 "
                       "%.0f ms p99 %.0f ms; server %.2f CPU s, client %.2f CPU s",
                       t + 1, o->wave_trials, w->devices, w->deltas_each, w->ms,
                       w->deltas_per_s, w->ack_p50_ms, w->ack_p99_ms, w->server_cpu_s,
                       w->client_cpu_s);
    }
    out->wave_median = (unsigned)median_index(out->wave, o->wave_trials);
    /* Ack latency against load (the chart); the main wave's size is its median trial. */
    out->chart_n = o->chart_n;
    for (unsigned i = 0; i < o->chart_n; i++) {
        bench_wave *w = &out->chart[i];
        if (o->chart_devices[i] == o->wave_devices) {
            *w = out->wave[out->wave_median];
            continue;
        }
        if (o->chart_devices[i] > ndev ||
            run_wave(o, &g, &k, o->chart_devices[i], o->wave_deltas, 100 + i, w))
            goto done;
        bench_progress("chart: %u devices: %.0f ms, ack p50 %.0f ms p99 %.0f ms", w->devices,
                       w->ms, w->ack_p50_ms, w->ack_p99_ms);
    }
    /* 3 and 4. Sustained ingest, then the pull on the same server. */
    if (run_sustained_pull(o, &g, &k, out)) goto done;
    bench_progress("sustained: %.0f deltas/s (server %.2f cores, client %.2f cores); pull: %llu "
                   "envelopes, %llu bytes in %.0f ms", out->sust_per_s, out->sust_server_cores,
                   out->sust_client_cores, (unsigned long long)out->pull_envelopes,
                   (unsigned long long)out->pull_bytes, out->pull_ms);
    keys_free(&k);
    bench_gen_free(&g);
    /* 5. Idle connections. */
    if (run_idle(o, out)) goto done;
    bench_progress("idle: %u connections, server RSS %ld -> %ld KiB: %.1f KiB each",
                   out->idle_conns, out->rss_before_kib, out->rss_after_kib,
                   out->rss_per_conn_kib);
    rc = 0;
done:
    keys_free(&k);
    bench_gen_free(&g);
    return rc;
}
