/*
 * fault_server.c — disk full and I/O errors against the real doorstepd
 * (issue #9, docs/RELIABILITY.md).
 *
 *   fault_server --build DIR --shim PATH/libfailwrite.so
 *
 * For each scenario (ENOSPC or EIO, on the write calls or on the syncs),
 * doorstepd runs on a fresh store with the failwrite shim preloaded, armed
 * by a control file:
 *
 *   1. disarmed: device 1 pushes seq 1 -> "applied";
 *   2. armed: device 1 pushes seq 2 -> no ack, the retryable
 *      SYNC_EUNAVAILABLE error carrying the push id;
 *   3. still armed: reads keep working (device 2 pulls seq 1 back verbatim,
 *      /healthz answers 200) and /metrics counts the failed commit;
 *   4. disarmed ("space returns"): seq 2 is pushed again -> "applied";
 *   5. SIGKILL; the store holds exactly seqs 1 and 2 of device 1, byte for
 *      byte, and store_verify passes.
 *
 * What the server does after a failed fsync is printed (it is reported in
 * docs/RELIABILITY.md): whether the retry was acked, and what the log says.
 *
 * Then the map-full scenario (no shim): doorstepd with --map-max 1M.
 *
 *   1. device 1 pushes batches of large deltas until one is refused: every
 *      batch before it was acked "applied"; the refused one gets the
 *      retryable SYNC_EUNAVAILABLE naming the full map, and so does the
 *      same batch sent again;
 *   2. nothing of the refused batch is stored (the chain head is the last
 *      acked seq), reads keep working (device 2 pulls, /healthz), /metrics
 *      shows the failed commits and the map at its maximum;
 *   3. SIGTERM; doorstepd restarted with --map-max 64M: the same batch is
 *      applied, the chain is contiguous and store_verify passes.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "storeutil.h"
#include "sync.h"
#include "testutil.h"
#include "wsclient.h"

static char build[512], shim[600];
static int failures;

#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (!(cond)) {                                        \
            fprintf(stderr, "fault_server: FAIL: " __VA_ARGS__); \
            fprintf(stderr, "\n");                            \
            failures++;                                       \
            goto out;                                         \
        }                                                     \
    } while (0)

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static pid_t start_with(const char *dir, const char *data, const char *key, const char *errname,
                        const char *ops, const char *map_max, int *port)
{
    int pfd[2];
    char logf[400], arm[400];
    snprintf(logf, sizeof logf, "%s/doorstepd.log", dir);
    snprintf(arm, sizeof arm, "%s/arm", dir);
    if (pipe2(pfd, O_CLOEXEC)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        int lf = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (lf >= 0) dup2(lf, 2);
        if (errname) {
            setenv("LD_PRELOAD", shim, 1);
            setenv("FAILWRITE_PATH", data, 1);
            setenv("FAILWRITE_ARM", arm, 1);
            setenv("FAILWRITE_ERRNO", errname, 1);
            setenv("FAILWRITE_OPS", ops, 1);
            if (getenv("FAULT_NTH")) setenv("FAILWRITE_NTH", getenv("FAULT_NTH"), 1);
            if (getenv("FAULT_COUNT")) setenv("FAILWRITE_COUNT", getenv("FAULT_COUNT"), 1);
        }
        char dsd[600];
        snprintf(dsd, sizeof dsd, "%s/doorstepd", build);
        if (map_max)
            execl(dsd, dsd, "--data", data, "--key-file", key, "--listen", "127.0.0.1:0",
                  "--log-level", "1", "--map-max", map_max, (char *)NULL);
        else
            execl(dsd, dsd, "--data", data, "--key-file", key, "--listen", "127.0.0.1:0",
                  "--log-level", "1", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char buf[512];
    size_t n = 0;
    *port = 0;
    uint64_t t0 = wall_ms();
    while (!*port && wall_ms() - t0 < 10000) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(pfd[0], buf + n, sizeof buf - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        char *s = strstr(buf, "ws://127.0.0.1:");
        if (s && strstr(s, "/sync")) *port = atoi(s + strlen("ws://127.0.0.1:"));
    }
    close(pfd[0]);
    return pid;
}

/* A new store in d (doorstepctl init) with devices 1 and 2 (a, b), both
 * scoped to household H1.  0, or -1 after printing why. */
static int init_store(const su_dir *d, su_dev *a, su_dev *b, const char *name)
{
    char cmd[2048], e_[512];
    store *st = NULL;
    store_txn *t = NULL;
    snprintf(cmd, sizeof cmd,
             "DOORSTEP_ADMIN_PASSWORD=fault-test-pw '%s/doorstepctl' --data '%s' --key-file '%s' "
             "init --campaign-year 2026 >/dev/null",
             build, d->data, d->key);
    if (system(cmd) != 0) {
        fprintf(stderr, "fault_server: doorstepctl init failed\n");
        return -1;
    }
    if (store_open(d->data, d->key, NULL, &st, e_, sizeof e_) || store_begin(st, STORE_RW, &t)) {
        fprintf(stderr, "fault_server: store_open: %s\n", e_);
        if (st) store_close(st);
        return -1;
    }
    su_dev *devs[2] = {a, b};
    int rc = 0;
    for (uint32_t i = 1; i <= 2 && !rc; i++) {
        su_dev_init(devs[i - 1], i);
        store_device dv = {.id = i, .state = STORE_DEV_ACTIVE, .epoch = 1};
        snprintf(dv.volunteer, sizeof dv.volunteer, "%s%u", name, i);
        store_key k = {.dev = i, .epoch = 1, .state = STORE_KEY_ACTIVE};
        memcpy(k.pk, devs[i - 1]->pk, 32);
        const char *scope[] = {"H1"};
        rc = store_device_put(t, &dv) || store_key_put(t, &k) ||
             store_device_scope_set(t, i, scope, 1);
    }
    if (rc) store_abort(t);
    else rc = store_commit(t);
    store_close(st);
    if (rc) fprintf(stderr, "fault_server: registering the devices failed\n");
    return rc ? -1 : 0;
}

/* Start doorstepd (under the shim if errname, else with --map-max map_max)
 * and read its port from the "listening on" line. */
static pid_t start(const char *dir, const char *data, const char *key, const char *errname,
                   const char *ops, int *port)
{
    return start_with(dir, data, key, errname, ops, NULL, port);
}

/* Push one envelope; returns "applied"/"rejected"/... in res, or the error
 * code in *err (0 if an ack came). */
static int push(wsc *c, uint64_t id, const crdt_buf *env, char *res, size_t cap, int64_t *err,
                bool *retryable)
{
    crdt_buf f = {0}, m = {0};
    int cc, rc = -1;
    *err = 0;
    res[0] = 0;
    frame_push(&f, id, env, 1);
    if (wsc_send(c, f.p, f.n) == 0 && wsc_recv(c, 10000, &m, &cc) == WSC_BINARY) {
        uint64_t got = 0;
        mp_get_u64(m.p, m.n, "id", &got);
        if (got == id && !strcmp(mp_type(m.p, m.n), "ack")) {
            ack_entry(m.p, m.n, 0, res, cap, NULL, NULL, NULL);
            rc = 0;
        } else if (got == id && !strcmp(mp_type(m.p, m.n), "error")) {
            mp_get_i64(m.p, m.n, "c", err);
            *retryable = memmem(m.p, m.n, "\xa1r\xc3", 3) != NULL;
            rc = 0;
        }
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    return rc;
}

static void scenario(const char *errname, const char *ops)
{
    su_dir d;
    su_dev a, b;
    char arm[400], res[32];
    int port = 0;
    pid_t pid = -1;
    store *st = NULL;
    crdt_buf e1 = {0}, e2 = {0}, body = {0}, f = {0}, m = {0}, e = {0};
    wsc ca = {.fd = -1}, cb = {.fd = -1};
    int64_t err;
    bool retry = false;
    printf("== scenario: %s on %s\n", errname, ops);
    su_dir_make(&d, "faults");
    snprintf(arm, sizeof arm, "%s/arm", d.root);
    CHECK(init_store(&d, &a, &b, "fault") == 0, "store init and device registration");
    pid = start(d.root, d.data, d.key, errname, ops, &port);
    CHECK(port > 0, "doorstepd did not start");
    su_ops o = {0};
    su_set_str(&o, "note", "before the disk filled");
    su_make(&a, "household", "H1", &o, wall_ms(), &e1, NULL);
    su_ops_reset(&o);
    su_set_str(&o, "note", "while the disk is full");
    su_make(&a, "household", "H1", &o, wall_ms(), &e2, NULL);
    su_ops_free(&o);

    /* 1. baseline */
    CHECK(device_connect(&ca, port, 1, 1, a.sk, NULL) == 0, "device 1 connect");
    CHECK(push(&ca, 1, &e1, res, sizeof res, &err, &retry) == 0 && !strcmp(res, "applied"),
          "baseline push: %s %lld", res, (long long)err);
    /* 2. the disk fills */
    close(open(arm, O_CREAT | O_WRONLY, 0600));
    int failed_pushes = 0;
    for (uint64_t id = 2; id < 5; id++) {
        CHECK(push(&ca, id, &e2, res, sizeof res, &err, &retry) == 0, "no answer to push %llu",
              (unsigned long long)id);
        CHECK(!res[0], "push %llu acked '%s' while writes fail", (unsigned long long)id, res);
        CHECK(err == SYNC_EUNAVAILABLE && retry, "push %llu: error %lld (retryable %d), want %d",
              (unsigned long long)id, (long long)err, retry, SYNC_EUNAVAILABLE);
        failed_pushes++;
    }
    printf("  %d pushes answered with the retryable SYNC_EUNAVAILABLE, no ack\n", failed_pushes);
    /* 3. reads keep working */
    CHECK(http_get("127.0.0.1", port, "/healthz", &body) == 200, "healthz while failing");
    CHECK(device_connect(&cb, port, 2, 1, b.sk, NULL) == 0, "device 2 connect while failing");
    frame_pull(&f, 1, 0, 10);
    {
        int cc;
        CHECK(wsc_send(&cb, f.p, f.n) == 0 && wsc_recv(&cb, 5000, &m, &cc) == WSC_BINARY &&
                  !strcmp(mp_type(m.p, m.n), "changes") && changes_count(m.p, m.n) == 1 &&
                  changes_env(m.p, m.n, 0, &e) && e.n == e1.n && !memcmp(e.p, e1.p, e.n),
              "pull while writes fail");
    }
    CHECK(http_get("127.0.0.1", port, "/metrics", &body) == 200, "metrics");
    crdt_buf_append(&body, "", 1);
    {
        const char *p = strstr((char *)body.p, "\ndoorstep_commit_failures_total ");
        CHECK(p && atoi(p + strlen("\ndoorstep_commit_failures_total ")) >= 1,
              "metrics do not count the failed commits");
        printf("  reads work while writes fail; /metrics: doorstep_commit_failures_total %d\n",
               atoi(p + strlen("\ndoorstep_commit_failures_total ")));
    }
    /* 4. space returns */
    unlink(arm);
    CHECK(push(&ca, 10, &e2, res, sizeof res, &err, &retry) == 0, "no answer after recovery");
    printf("  after the fault cleared, the retried push: %s%s (error %lld)\n",
           res[0] ? "acked " : "not acked", res, (long long)err);
    CHECK(!strcmp(res, "applied"), "writes did not resume: '%s' error %lld", res, (long long)err);
    /* After an I/O error the store was reopened from disk before writing
     * again (never pretending a retry succeeded), and /metrics says so. */
    if (!strcmp(errname, "EIO")) {
        CHECK(http_get("127.0.0.1", port, "/metrics", &body) == 200, "metrics");
        crdt_buf_append(&body, "", 1);
        const char *p = strstr((char *)body.p, "\ndoorstep_store_reopens_total ");
        CHECK(p && atoi(p + strlen("\ndoorstep_store_reopens_total ")) >= 1,
              "no store reopen after an I/O error");
        CHECK(strstr((char *)body.p, "\ndoorstep_store_write_failed 0") != NULL,
              "store still marked write-failed after recovery");
        printf("  EIO: the store was reopened from disk before writes resumed\n");
    }
    wsc_close(&ca);
    wsc_close(&cb);
    /* 5. crash, then check what is on disk */
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    pid = -1;
    {
        char e_[512];
        store_txn *t;
        uint64_t head = 0, last = 0, problems = 0;
        uint8_t h[32];
        CHECK(store_open(d.data, d.key, NULL, &st, e_, sizeof e_) == 0, "reopen: %s", e_);
        CHECK(store_begin(st, STORE_RDONLY, &t) == 0, "begin");
        store_chain_head(t, 1, &head, h);
        store_last_sseq(t, &last);
        crdt_buf_reset(&e);
        int r2 = store_get_envelope(t, 2, &e);
        store_abort(t);
        CHECK(head == 2 && last == 2, "after the crash: head %llu, log %llu (want 2, 2)",
              (unsigned long long)head, (unsigned long long)last);
        CHECK(r2 == 0 && e.n == e2.n && !memcmp(e.p, e2.p, e.n), "seq 2 differs on disk");
        CHECK(store_verify(st, NULL, NULL, &problems) == 0 && problems == 0, "store_verify");
    }
    {
        char logf[400];
        snprintf(logf, sizeof logf, "%s/doorstepd.log", d.root);
        size_t ln = 0;
        char *log = tu_read_file(logf, &ln);
        int shim_failures = 0;
        for (char *p = log; p && (p = strstr(p, "failwrite: ")); p++) shim_failures++;
        char *commit = log ? strstr(log, "commit of a batch failed") : NULL;
        if (commit) {
            char *nl = strchr(commit, '\n');
            if (nl) *nl = 0;
        }
        printf("  shim failed %d calls; doorstepd log: %s\n", shim_failures,
               commit ? commit : "(no commit failure logged)");
        free(log);
    }
    printf("  ok\n");
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    if (st) store_close(st);
    wsc_close(&ca);
    wsc_close(&cb);
    crdt_buf_free(&e1);
    crdt_buf_free(&e2);
    crdt_buf_free(&body);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    crdt_buf_free(&e);
    if (!failures) su_dir_remove(&d);
    else fprintf(stderr, "fault_server: data kept in %s\n", d.root);
}

/* Push n envelopes as one push: the number acked "applied" (all of them, or
 * -1 if any was not), or 0 with the error frame's code, retryable flag and
 * message.  -2 if no answer came. */
static int push_many(wsc *c, uint64_t id, const crdt_buf *envs, size_t n, int64_t *err,
                     bool *retryable, char *msg, size_t cap)
{
    crdt_buf f = {0}, m = {0};
    int cc, rc = -2;
    *err = 0;
    msg[0] = 0;
    frame_push(&f, id, envs, n);
    if (wsc_send(c, f.p, f.n) == 0 && wsc_recv(c, 20000, &m, &cc) == WSC_BINARY) {
        uint64_t got = 0;
        mp_get_u64(m.p, m.n, "id", &got);
        if (got == id && !strcmp(mp_type(m.p, m.n), "ack")) {
            rc = 0;
            for (size_t i = 0; i < n; i++) {
                char res[32];
                ack_entry(m.p, m.n, i, res, sizeof res, NULL, NULL, NULL);
                if (strcmp(res, "applied")) rc = -1;
                else if (rc >= 0) rc++;
            }
        } else if (got == id && !strcmp(mp_type(m.p, m.n), "error")) {
            mp_get_i64(m.p, m.n, "c", err);
            mp_get_str(m.p, m.n, "m", msg, cap);
            *retryable = memmem(m.p, m.n, "\xa1r\xc3", 3) != NULL;
            rc = 0;
        }
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    return rc;
}

static long long metric(int port, const char *name)
{
    crdt_buf body = {0};
    long long v = -1;
    if (http_get("127.0.0.1", port, "/metrics", &body) == 200 && !crdt_buf_append(&body, "", 1)) {
        char key[128];
        snprintf(key, sizeof key, "\n%s ", name);
        const char *p = strstr((char *)body.p, key);
        if (p) v = atoll(p + strlen(key));
    }
    crdt_buf_free(&body);
    return v;
}

static void map_full_scenario(void)
{
    enum { BATCH = 50, MAXD = 2000 };
    su_dir d;
    su_dev a, b;
    char msg[256];
    int port = 0;
    pid_t pid = -1;
    store *st = NULL;
    crdt_buf *env = calloc(MAXD, sizeof *env), f = {0}, m = {0};
    wsc ca = {.fd = -1}, cb = {.fd = -1};
    int64_t err = 0;
    bool retry = false;
    size_t acked = 0, refused_at = 0;
    printf("== scenario: map full (--map-max 1M)\n");
    su_dir_make(&d, "mapfull");
    CHECK(env && init_store(&d, &a, &b, "mapfull") == 0, "store init and device registration");
    /* Large deltas: a 1000-character note each (the map fills in a few
     * hundred).  Pseudo-random letters: the store compresses values, and
     * a repeating pattern would shrink to nothing. */
    {
        char note[3001];
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < MAXD; i++) {
            int k = snprintf(note, sizeof note, "%zu ", i);
            for (; k < 999; k++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                note[k] = (char)('a' + x % 26);
            }
            note[k] = 0;
            su_ops o = {0};
            su_set_str(&o, "note", note);
            su_make(&a, "household", "H1", &o, wall_ms(), &env[i], NULL);
            su_ops_free(&o);
        }
    }
    pid = start_with(d.root, d.data, d.key, NULL, NULL, "1M", &port);
    CHECK(port > 0, "doorstepd --map-max 1M did not start");
    CHECK(device_connect(&ca, port, 1, 1, a.sk, NULL) == 0, "device 1 connect");
    /* 1. fill */
    for (uint64_t id = 1; acked + BATCH <= MAXD; id++) {
        int r = push_many(&ca, id, env + acked, BATCH, &err, &retry, msg, sizeof msg);
        CHECK(r != -2, "no answer to push %llu", (unsigned long long)id);
        CHECK(r != -1, "push %llu: an entry was not applied", (unsigned long long)id);
        if (r == 0) break;
        CHECK(r == BATCH, "push %llu: %d applied", (unsigned long long)id, r);
        acked += BATCH;
    }
    CHECK(acked + BATCH <= MAXD, "the map never filled (%zu deltas acked)", acked);
    refused_at = acked;
    CHECK(err == SYNC_EUNAVAILABLE && retry && strstr(msg, "map is full"),
          "full map: error %lld (retryable %d) '%s', want retryable %d naming the full map",
          (long long)err, retry, msg, SYNC_EUNAVAILABLE);
    printf("  %zu deltas acked, then: %s\n", acked, msg);
    /* The same batch again: refused the same way, nothing partial — or, as
     * the map's last free pages can take it now (the refused commit also
     * held the other work of its batch, such as last-sync times), applied
     * whole and acked; then the next batch must be refused.  Never partly. */
    for (int tries = 0;; tries++) {
        int r = push_many(&ca, 1000 + (uint64_t)tries, env + acked, BATCH, &err, &retry, msg,
                          sizeof msg);
        CHECK(r == 0 || r == BATCH, "retry on a full map: %d of %d applied", r, BATCH);
        if (r == 0) {
            CHECK(err == SYNC_EUNAVAILABLE && retry, "retry on a full map: error %lld",
                  (long long)err);
            break;
        }
        acked += BATCH;
        refused_at = acked;
        CHECK(tries < 3 && acked + BATCH <= MAXD, "the full map kept taking batches (%zu acked)",
              acked);
    }
    /* 2. reads keep working */
    {
        crdt_buf body = {0};
        CHECK(http_get("127.0.0.1", port, "/healthz", &body) == 200, "healthz on a full map");
        crdt_buf_free(&body);
    }
    CHECK(device_connect(&cb, port, 2, 1, b.sk, NULL) == 0, "device 2 connect on a full map");
    frame_pull(&f, 1, 0, 10);
    {
        int cc;
        crdt_buf e = {0};
        CHECK(wsc_send(&cb, f.p, f.n) == 0 && wsc_recv(&cb, 5000, &m, &cc) == WSC_BINARY &&
                  !strcmp(mp_type(m.p, m.n), "changes") && changes_count(m.p, m.n) == 10 &&
                  changes_env(m.p, m.n, 0, &e) && e.n == env[0].n &&
                  !memcmp(e.p, env[0].p, e.n),
              "pull on a full map");
        crdt_buf_free(&e);
    }
    long long fails = metric(port, "doorstep_commit_failures_total");
    long long mused = metric(port, "doorstep_map_bytes{kind=\"used\"}");
    long long mmax = metric(port, "doorstep_map_bytes{kind=\"max\"}");
    CHECK(fails >= 2, "/metrics: %lld commit failures", fails);
    CHECK(mmax == 1 << 20 && mused > (mmax * 3) / 4, "/metrics: map used %lld of max %lld", mused,
          mmax);
    printf("  reads work on the full map; /metrics: %lld commit failures, map %lld of %lld "
           "bytes used\n", fails, mused, mmax);
    wsc_close(&ca);
    wsc_close(&cb);
    /* 3. stop cleanly, check, restart with room */
    kill(pid, SIGTERM);
    {
        int status = 0;
        waitpid(pid, &status, 0);
        pid = -1;
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "doorstepd did not stop cleanly");
    }
    {
        char e_[512];
        store_txn *t;
        uint64_t head = 0, problems = 0;
        uint8_t h[32];
        CHECK(store_open(d.data, d.key, NULL, &st, e_, sizeof e_) == 0, "reopen: %s", e_);
        CHECK(store_begin(st, STORE_RDONLY, &t) == 0, "begin");
        store_chain_head(t, 1, &head, h);
        store_abort(t);
        CHECK(head == acked, "after the full map: chain head %llu, want %zu (nothing partial)",
              (unsigned long long)head, acked);
        CHECK(store_verify(st, NULL, NULL, &problems) == 0 && problems == 0, "store_verify");
        store_close(st);
        st = NULL;
    }
    pid = start_with(d.root, d.data, d.key, NULL, NULL, "64M", &port);
    CHECK(port > 0, "doorstepd --map-max 64M did not start");
    CHECK(device_connect(&ca, port, 1, 1, a.sk, NULL) == 0, "device 1 reconnect");
    {
        int r = push_many(&ca, 1, env + refused_at, BATCH, &err, &retry, msg, sizeof msg);
        CHECK(r == BATCH, "after raising --map-max the batch was not applied: %d, error %lld %s",
              r, (long long)err, msg);
        acked += BATCH;
    }
    wsc_close(&ca);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    pid = -1;
    {
        char e_[512];
        store_txn *t;
        uint64_t head = 0, problems = 0;
        uint8_t h[32];
        CHECK(store_open(d.data, d.key, NULL, &st, e_, sizeof e_) == 0, "reopen: %s", e_);
        CHECK(store_begin(st, STORE_RDONLY, &t) == 0, "begin");
        store_chain_head(t, 1, &head, h);
        store_abort(t);
        CHECK(head == acked, "chain head %llu, want %zu", (unsigned long long)head, acked);
        CHECK(store_verify(st, NULL, NULL, &problems) == 0 && problems == 0, "store_verify");
    }
    printf("  with --map-max 64M the refused batch was applied; chain head %zu, verify ok\n",
           acked);
    printf("  ok\n");
out:
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    if (st) store_close(st);
    wsc_close(&ca);
    wsc_close(&cb);
    for (size_t i = 0; env && i < MAXD; i++) crdt_buf_free(&env[i]);
    free(env);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    if (!failures) su_dir_remove(&d);
    else fprintf(stderr, "fault_server: data kept in %s\n", d.root);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"build", required_argument, NULL, 'b'},
                                         {"shim", required_argument, NULL, 's'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'b') snprintf(build, sizeof build, "%s", optarg);
        else if (c == 's') snprintf(shim, sizeof shim, "%s", optarg);
        else return 2;
    }
    if (!*build || !*shim) {
        fprintf(stderr, "usage: fault_server --build DIR --shim LIB\n");
        return 2;
    }
    if (wire_init()) return 1;
    signal(SIGPIPE, SIG_IGN);
    scenario("ENOSPC", "write");
    scenario("EIO", "write");
    scenario("ENOSPC", "sync");
    scenario("EIO", "sync");
    map_full_scenario();
    printf("fault_server: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
