/*
 * crash_harness.c — crash durability (issue #9, docs/RELIABILITY.md).
 *
 *   crash_harness --build DIR [--doorstepd PATH] [--kills N] [--devices N]
 *                 [--expect-loss] [--keep] [--run-ms MS] [--wrap "CMD ARGS"]
 *
 * Runs doorstepd (DIR/doorstepd unless --doorstepd) as a child process on a
 * store made by `doorstepctl init`, with N devices registered in the store
 * beforehand (key epoch 1, scope: a shared household "HS" and one of their
 * own).  One thread per device pushes batches of signed deltas over real
 * WebSockets (tests/common/wsclient.c), sometimes with a delta the server
 * must reject (unknown field) at the end of the batch.  The main thread
 * SIGKILLs the server at random moments, restarts it, and after every kill,
 * with the server down, opens the store and checks:
 *
 *   - every delta a device saw acked ("applied"/"duplicate") is in the log,
 *     byte for byte the envelope the device generated;
 *   - no envelope rejected with a definite error is in the log;
 *   - every device's seqs in the log are exactly 1..head, each once, and
 *     store_chain_head agrees (the chain is contiguous, nothing duplicated);
 *   - store_verify passes.
 *
 * Devices reconnect on their own; welcome.seq (what the server holds) must
 * never be below what they saw acked, and they resend from welcome.seq + 1
 * (the same bytes: unanswered deltas are resent without duplication).  At
 * the end every device finishes, `doorstepctl verify` passes, and each
 * device pulls its scope and receives exactly the log's in-scope envelopes
 * (devices converge).
 *
 * --expect-loss is the negative control: run against doorstepd-ackfirst
 * (acks before committing) the harness must detect a lost acked delta;
 * then it exits 0 (and 1 if it never caught one).
 *
 * --run-ms MS keeps the last server up under load for MS before the
 * devices finish; --wrap runs doorstepd under a command (make memcheck:
 * valgrind; its exit status on SIGTERM must be 0).
 *
 * Seed: DOORSTEP_SEED (printed).  Exit 0 on success, 1 on a failed check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
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

#define MAX_GEN 4000 /* envelopes a device generates at most */

typedef struct hdev {
    su_dev d;
    char hh[16];
    pthread_mutex_t mu;
    crdt_buf *env;      /* env[i] = seq i + 1 */
    size_t n_env;
    uint64_t acked;     /* highest seq acked applied/duplicate */
    crdt_buf *rej;      /* envelopes rejected with a definite error */
    size_t n_rej;
    uint64_t pushes, acks, reconnects, resent;
    bool finished;
    tu_rng rng;
} hdev;

static hdev *devs;
static int n_devs = 12;
static atomic_int g_port;
static atomic_bool g_stop;
static atomic_int g_failures;
static atomic_int g_losses;
static bool expect_loss;
static char g_dir[256], g_data[300], g_key[300], g_build[512], g_doorstepd[600];
static pid_t g_pid;
static char *g_wrap[16]; /* --wrap "valgrind ...": a command prefix for doorstepd */
static int g_nwrap;

static void failf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "crash_harness: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    atomic_fetch_add(&g_failures, 1);
}

static void lossf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, expect_loss ? "crash_harness: caught (negative control): "
                                : "crash_harness: FAIL: acked delta lost: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    atomic_fetch_add(&g_losses, 1);
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- the server as a child process ------------------------------------------------- */

static int start_server(void)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC)) return -1;
    char logf[400];
    snprintf(logf, sizeof logf, "%s/doorstepd.log", g_dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(pfd[1], 1);
        int lf = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (lf >= 0) dup2(lf, 2);
        char *av[32];
        int ac = 0;
        for (int i = 0; i < g_nwrap; i++) av[ac++] = g_wrap[i];
        const char *rest[] = {g_doorstepd, "--data", g_data, "--key-file", g_key, "--listen",
                              "127.0.0.1:0", "--log-level", "1"};
        for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++) av[ac++] = (char *)rest[i];
        av[ac] = NULL;
        execvp(av[0], av);
        _exit(127);
    }
    close(pfd[1]);
    char buf[512];
    size_t n = 0;
    int port = 0;
    uint64_t t0 = wall_ms();
    while (!port && wall_ms() - t0 < 10000) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(pfd[0], buf + n, sizeof buf - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        char *s = strstr(buf, "ws://127.0.0.1:");
        if (s && strchr(s, '/' ) && strstr(s, "/sync")) port = atoi(s + strlen("ws://127.0.0.1:"));
    }
    close(pfd[0]);
    if (!port) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        failf("doorstepd did not start (see %s)", logf);
        return -1;
    }
    g_pid = pid;
    atomic_store(&g_port, port);
    return 0;
}

static void kill_server(int sig)
{
    atomic_store(&g_port, 0);
    if (g_pid <= 0) return;
    kill(g_pid, sig);
    int st;
    waitpid(g_pid, &st, 0);
    if (sig == SIGTERM && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        failf("doorstepd did not exit 0 on SIGTERM (status %d)", st);
    g_pid = 0;
}

/* ---- devices ----------------------------------------------------------------------- */

/* The envelope for seq (1-based), generating as needed.  Caller holds mu. */
static const crdt_buf *env_for(hdev *h, uint64_t seq)
{
    while (h->n_env < seq) {
        su_ops o = {0};
        char note[64];
        bool shared = tu_below(&h->rng, 3) == 0;
        snprintf(note, sizeof note, "dev %u seq %zu", h->d.id, h->n_env + 1);
        su_set_str(&o, "note", note);
        if (tu_below(&h->rng, 4) == 0) su_visit(&o, "visits", "2026-03-01", NULL);
        if ((h->n_env & 63) == 0) {
            crdt_buf *ne = realloc(h->env, (h->n_env + 64) * sizeof *ne);
            if (!ne) abort();
            h->env = ne;
        }
        memset(&h->env[h->n_env], 0, sizeof h->env[0]);
        su_make(&h->d, "household", shared ? "HS" : h->hh, &o, wall_ms(), &h->env[h->n_env], NULL);
        h->n_env++;
        su_ops_free(&o);
    }
    return &h->env[seq - 1];
}

/* A delta the server must reject with a definite error (unknown field),
 * at seq: the device's real chain does not advance. */
static void bogus_env(hdev *h, crdt_buf *out)
{
    su_dev copy = h->d;
    su_ops o = {0};
    su_set_str(&o, "no_such_field", "x");
    su_make(&copy, "household", h->hh, &o, wall_ms(), out, NULL);
    su_ops_free(&o);
}

static void *device_main(void *arg)
{
    hdev *h = arg;
    crdt_buf w = {0}, f = {0}, m = {0}, bogus = {0};
    crdt_buf batch[24];
    memset(batch, 0, sizeof batch);
    uint64_t push_id = 1;
    while (!h->finished) {
        int port = atomic_load(&g_port);
        if (!port) {
            usleep(10 * 1000);
            continue;
        }
        wsc c;
        int rc = device_connect(&c, port, h->d.id, 1, h->d.sk, &w);
        if (rc) {
            wsc_close(&c);
            if (rc != -1 && rc != SYNC_ESHUTDOWN) failf("device %u: auth refused %d", h->d.id, rc);
            usleep(20 * 1000);
            continue;
        }
        h->reconnects++;
        uint64_t held = 0;
        if (!mp_get_u64(w.p, w.n, "seq", &held)) failf("device %u: welcome without seq", h->d.id);
        pthread_mutex_lock(&h->mu);
        if (held < h->acked)
            lossf("device %u: welcome.seq %llu < %llu acked", h->d.id, (unsigned long long)held,
                  (unsigned long long)h->acked);
        if (held > h->n_env)
            failf("device %u: server holds seq %llu, device made only %zu", h->d.id,
                  (unsigned long long)held, h->n_env);
        pthread_mutex_unlock(&h->mu);
        uint64_t next = held + 1;
        for (;;) {
            bool stopping = atomic_load(&g_stop);
            pthread_mutex_lock(&h->mu);
            size_t have = h->n_env;
            pthread_mutex_unlock(&h->mu);
            if ((stopping || have >= MAX_GEN) && next > have) {
                h->finished = true; /* everything generated is held */
                break;
            }
            size_t k = 1 + (size_t)tu_below(&h->rng, 20);
            if (stopping || have >= MAX_GEN) {
                if (next + k - 1 > have) k = (size_t)(have - next + 1);
            }
            pthread_mutex_lock(&h->mu);
            for (size_t i = 0; i < k; i++) {
                if (next + i <= h->n_env) h->resent++;
                const crdt_buf *e = env_for(h, next + i);
                crdt_buf_reset(&batch[i]);
                crdt_buf_append(&batch[i], e->p, e->n);
            }
            pthread_mutex_unlock(&h->mu);
            bool with_bogus = tu_below(&h->rng, 8) == 0;
            size_t nb = k;
            if (with_bogus) {
                bogus_env(h, &bogus); /* seq = last generated + 1: refused first by the schema */
                crdt_buf_reset(&batch[nb]);
                crdt_buf_append(&batch[nb], bogus.p, bogus.n);
                nb++;
            }
            frame_push(&f, push_id, batch, nb);
            h->pushes++;
            if (wsc_send(&c, f.p, f.n)) break;
            int cc = 0, op;
            bool answered = false;
            while (!answered && (op = wsc_recv(&c, 8000, &m, &cc)) == WSC_BINARY) {
                const char *t = mp_type(m.p, m.n);
                uint64_t id = 0;
                mp_get_u64(m.p, m.n, "id", &id);
                if (id != push_id) continue;
                answered = true;
                if (!strcmp(t, "error")) {
                    int64_t code = 0;
                    mp_get_i64(m.p, m.n, "c", &code);
                    if (!sync_retryable((int)code))
                        failf("device %u: push answered by error %lld", h->d.id, (long long)code);
                    usleep(20 * 1000);
                    break;
                }
                if (strcmp(t, "ack") || ack_count(m.p, m.n) != nb) {
                    failf("device %u: bad answer '%s' to push", h->d.id, t);
                    break;
                }
                h->acks++;
                pthread_mutex_lock(&h->mu);
                for (size_t i = 0; i < nb; i++) {
                    char r[32];
                    int64_t code = 0;
                    uint64_t s = 0;
                    ack_entry(m.p, m.n, i, r, sizeof r, &code, &s, NULL);
                    if (i < k) {
                        if (strcmp(r, "applied") && strcmp(r, "duplicate"))
                            failf("device %u seq %llu: %s (%lld)", h->d.id,
                                  (unsigned long long)(next + i), r, (long long)code);
                        else if (next + i > h->acked)
                            h->acked = next + i;
                    } else {
                        if (strcmp(r, "rejected") || code != CRDT_EFIELD) {
                            failf("device %u: bogus delta got %s (%lld)", h->d.id, r,
                                  (long long)code);
                        } else {
                            crdt_buf *nr = realloc(h->rej, (h->n_rej + 1) * sizeof *nr);
                            if (!nr) abort();
                            h->rej = nr;
                            memset(&h->rej[h->n_rej], 0, sizeof *nr);
                            crdt_buf_append(&h->rej[h->n_rej], bogus.p, bogus.n);
                            h->n_rej++;
                        }
                    }
                }
                pthread_mutex_unlock(&h->mu);
                next += k;
            }
            push_id++;
            if (!answered) break; /* connection lost: resume from welcome.seq */
        }
        wsc_close(&c);
    }
    for (size_t i = 0; i < sizeof batch / sizeof batch[0]; i++) crdt_buf_free(&batch[i]);
    crdt_buf_free(&w);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    crdt_buf_free(&bogus);
    return NULL;
}

/* ---- checking the store with the server down ----------------------------------- */

typedef struct seen {
    uint64_t *seqs; /* count per seq */
    size_t cap;
    uint64_t max;
} seen;

static hdev *dev_by_id(uint32_t id)
{
    if (id < 1 || id > (uint32_t)n_devs) return NULL;
    return &devs[id - 1];
}

/* Returns the number of envelopes in the log. */
static uint64_t check_store(const char *when)
{
    char err[512];
    store *st = NULL;
    int rc = store_open(g_data, g_key, NULL, &st, err, sizeof err);
    if (rc) {
        failf("%s: store_open: %s", when, err);
        return 0;
    }
    seen *sn = calloc((size_t)n_devs, sizeof *sn);
    uint64_t *acked = calloc((size_t)n_devs, sizeof *acked);
    for (int i = 0; i < n_devs; i++) {
        pthread_mutex_lock(&devs[i].mu);
        acked[i] = devs[i].acked; /* the kill is over: no later ack can be lost */
        pthread_mutex_unlock(&devs[i].mu);
    }
    store_txn *t;
    uint64_t last = 0;
    crdt_buf env = {0};
    if (store_begin(st, STORE_RDONLY, &t) || store_last_sseq(t, &last)) {
        failf("%s: cannot read the store", when);
        goto out;
    }
    for (uint64_t q = 1; q <= last; q++) {
        crdt_buf_reset(&env);
        if (store_get_envelope(t, q, &env)) {
            failf("%s: server seq %llu missing", when, (unsigned long long)q);
            continue;
        }
        const uint8_t *db, *sig;
        size_t dl;
        crdt_delta d;
        int eo;
        crdt_arena *a = crdt_arena_new(0);
        if (wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig) ||
            crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &eo)) {
            failf("%s: server seq %llu does not decode", when, (unsigned long long)q);
            crdt_arena_free(a);
            continue;
        }
        hdev *h = dev_by_id(d.dev);
        crdt_arena_free(a);
        if (!h) {
            failf("%s: server seq %llu from unknown device %u", when, (unsigned long long)q, d.dev);
            continue;
        }
        seen *s = &sn[d.dev - 1];
        if (d.seq >= s->cap) {
            size_t nc = (size_t)d.seq * 2 + 16;
            uint64_t *p = realloc(s->seqs, nc * sizeof *p);
            memset(p + s->cap, 0, (nc - s->cap) * sizeof *p);
            s->seqs = p;
            s->cap = nc;
        }
        s->seqs[d.seq]++;
        if (d.seq > s->max) s->max = d.seq;
        pthread_mutex_lock(&h->mu);
        if (d.seq > h->n_env)
            failf("%s: device %u seq %llu stored but never generated", when, d.dev,
                  (unsigned long long)d.seq);
        else if (h->env[d.seq - 1].n != env.n || memcmp(h->env[d.seq - 1].p, env.p, env.n))
            failf("%s: device %u seq %llu: stored bytes differ from the device's", when, d.dev,
                  (unsigned long long)d.seq);
        for (size_t r = 0; r < h->n_rej; r++)
            if (h->rej[r].n == env.n && !memcmp(h->rej[r].p, env.p, env.n))
                failf("%s: a rejected envelope of device %u is stored", when, d.dev);
        pthread_mutex_unlock(&h->mu);
    }
    for (int i = 0; i < n_devs; i++) {
        seen *s = &sn[i];
        uint64_t head = 0;
        uint8_t hash[32];
        store_chain_head(t, (uint32_t)i + 1, &head, hash);
        if (head != s->max)
            failf("%s: device %d chain head %llu, log has up to %llu", when, i + 1,
                  (unsigned long long)head, (unsigned long long)s->max);
        for (uint64_t q = 1; q <= s->max; q++)
            if (s->seqs[q] != 1)
                failf("%s: device %d seq %llu appears %llu times in the log", when, i + 1,
                      (unsigned long long)q, (unsigned long long)s->seqs[q]);
        if (s->max < acked[i])
            lossf("%s: device %d: log holds up to seq %llu, %llu was acked", when, i + 1,
                  (unsigned long long)s->max, (unsigned long long)acked[i]);
    }
    store_abort(t);
    uint64_t problems = 0;
    rc = store_verify(st, NULL, NULL, &problems);
    if (rc || problems) failf("%s: store_verify: %s, %llu problems", when, store_strerror(rc),
                              (unsigned long long)problems);
out:
    for (int i = 0; i < n_devs; i++) free(sn[i].seqs);
    free(sn);
    free(acked);
    crdt_buf_free(&env);
    store_close(st);
    return last;
}

/* At the end: each device pulls its whole scope and must get exactly the
 * log's in-scope envelopes, verbatim. */
static void check_converged(void)
{
    char err[512];
    store *st = NULL;
    int port = atomic_load(&g_port);
    for (int i = 0; i < n_devs; i += n_devs > 3 ? n_devs / 3 : 1) {
        hdev *h = &devs[i];
        wsc c;
        crdt_buf f = {0}, m = {0}, e = {0};
        if (device_connect(&c, port, h->d.id, 1, h->d.sk, NULL)) {
            failf("converge: device %u cannot connect", h->d.id);
            wsc_close(&c);
            continue;
        }
        uint64_t cursor = 0, got = 0, mine = 0, more = 1;
        for (uint64_t id = 1; more; id++) {
            int cc;
            frame_pull(&f, id, cursor, 500);
            if (wsc_send(&c, f.p, f.n) || wsc_recv(&c, 5000, &m, &cc) != WSC_BINARY ||
                strcmp(mp_type(m.p, m.n), "changes")) {
                failf("converge: device %u pull failed", h->d.id);
                break;
            }
            got += changes_count(m.p, m.n);
            for (size_t k = 0; k < changes_count(m.p, m.n); k++) {
                changes_env(m.p, m.n, k, &e);
                if (memmem(e.p, e.n, h->hh, strlen(h->hh))) mine++;
            }
            mp_get_u64(m.p, m.n, "n", &cursor);
            more = memmem(m.p, m.n, "\xa4more\xc3", 6) != NULL;
        }
        wsc_close(&c);
        /* Expected: every delta to HS or to h->hh in the log. */
        if (store_open(g_data, g_key, NULL, &st, err, sizeof err) == 0) {
            store_txn *t;
            uint64_t last = 0, want = 0;
            store_begin(st, STORE_RDONLY, &t);
            store_last_sseq(t, &last);
            for (uint64_t q = 1; q <= last; q++) {
                crdt_buf_reset(&e);
                store_get_envelope(t, q, &e);
                char a[24], b[24];
                snprintf(a, sizeof a, "\xa1i\xa2HS");
                snprintf(b, sizeof b, "\xa1i%c%s", (char)(0xa0 | strlen(h->hh)), h->hh);
                if (memmem(e.p, e.n, a, strlen(a)) || memmem(e.p, e.n, b, strlen(b))) want++;
            }
            store_abort(t);
            store_close(st);
            if (got != want)
                failf("converge: device %u pulled %llu envelopes, its scope holds %llu", h->d.id,
                      (unsigned long long)got, (unsigned long long)want);
        }
        crdt_buf_free(&f);
        crdt_buf_free(&m);
        crdt_buf_free(&e);
    }
}

static int run_cmd(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"build", required_argument, NULL, 'b'},  {"doorstepd", required_argument, NULL, 'd'},
        {"kills", required_argument, NULL, 'k'},  {"devices", required_argument, NULL, 'n'},
        {"expect-loss", no_argument, NULL, 'x'},  {"keep", no_argument, NULL, 'K'},
        {"wrap", required_argument, NULL, 'w'},   {"run-ms", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0}};
    int kills = 20, run_ms = 0, c;
    bool keep = false;
    const char *dsd = NULL;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b': snprintf(g_build, sizeof g_build, "%s", optarg); break;
        case 'd': dsd = optarg; break;
        case 'k': kills = atoi(optarg); break;
        case 'n': n_devs = atoi(optarg); break;
        case 'x': expect_loss = true; break;
        case 'K': keep = true; break;
        case 'r': run_ms = atoi(optarg); break;
        case 'w':
            for (char *tok = strtok(optarg, " "); tok && g_nwrap < 15; tok = strtok(NULL, " "))
                g_wrap[g_nwrap++] = tok;
            break;
        default: fprintf(stderr, "usage: crash_harness --build DIR [--doorstepd P] [--kills N] "
                                 "[--devices N] [--expect-loss] [--keep]\n");
                 return 2;
        }
    }
    if (!*g_build || n_devs < 1 || n_devs > 200 || kills < 0) {
        fprintf(stderr, "crash_harness: --build DIR is required\n");
        return 2;
    }
    snprintf(g_doorstepd, sizeof g_doorstepd, "%s", dsd ? dsd : "");
    if (!dsd) snprintf(g_doorstepd, sizeof g_doorstepd, "%s/doorstepd", g_build);
    if (wire_init()) return 1;
    signal(SIGPIPE, SIG_IGN);
    uint64_t seed = tu_seed("crash_harness");
    tu_rng rng;
    tu_rng_init(&rng, seed);

    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/doorstep-crash-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) return 1;
    snprintf(g_data, sizeof g_data, "%s/data", g_dir);
    snprintf(g_key, sizeof g_key, "%s/data.key", g_dir);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "DOORSTEP_ADMIN_PASSWORD=crash-harness-pw '%s/doorstepctl' --data '%s' --key-file "
             "'%s' init --campaign-year 2026 >/dev/null",
             g_build, g_data, g_key);
    if (run_cmd(cmd)) {
        fprintf(stderr, "crash_harness: doorstepctl init failed\n");
        return 1;
    }
    /* Register the devices before the server starts. */
    devs = calloc((size_t)n_devs, sizeof *devs);
    {
        char err[512];
        store *st;
        store_txn *t;
        if (store_open(g_data, g_key, NULL, &st, err, sizeof err) ||
            store_begin(st, STORE_RW, &t)) {
            fprintf(stderr, "crash_harness: %s\n", err);
            return 1;
        }
        for (int i = 0; i < n_devs; i++) {
            hdev *h = &devs[i];
            uint32_t id = (uint32_t)i + 1;
            su_dev_init(&h->d, id);
            pthread_mutex_init(&h->mu, NULL);
            tu_rng_init(&h->rng, seed ^ (id * 0x9e3779b97f4a7c15ull));
            snprintf(h->hh, sizeof h->hh, "HC%u", id);
            store_device d = {.id = id, .state = STORE_DEV_ACTIVE, .epoch = 1};
            snprintf(d.volunteer, sizeof d.volunteer, "crash%u", id);
            store_key k = {.dev = id, .epoch = 1, .state = STORE_KEY_ACTIVE};
            memcpy(k.pk, h->d.pk, 32);
            const char *scope[] = {"HS", h->hh};
            if (store_device_put(t, &d) || store_key_put(t, &k) ||
                store_device_scope_set(t, id, scope, 2)) {
                fprintf(stderr, "crash_harness: cannot register device %u\n", id);
                return 1;
            }
        }
        if (store_commit(t)) return 1;
        store_close(st);
    }

    pthread_t *th = calloc((size_t)n_devs, sizeof *th);
    for (int i = 0; i < n_devs; i++) pthread_create(&th[i], NULL, device_main, &devs[i]);
    int done_kills = 0;
    uint64_t t0 = wall_ms();
    for (int k = 0; k < kills; k++) {
        if (start_server()) break;
        usleep((useconds_t)(100 + tu_below(&rng, 600)) * 1000);
        kill_server(SIGKILL);
        done_kills++;
        char when[64];
        snprintf(when, sizeof when, "after kill %d", k + 1);
        uint64_t n = check_store(when);
        if (getenv("DOORSTEP_CRASH_VERBOSE"))
            fprintf(stderr, "kill %d: log holds %llu deltas\n", k + 1, (unsigned long long)n);
        if (atomic_load(&g_failures)) break;
        if (expect_loss && atomic_load(&g_losses)) break;
    }
    /* Finish: devices push what they still have, then the checks. */
    int up = start_server();
    if (!up && run_ms > 0) usleep((useconds_t)run_ms * 1000); /* load without kills */
    atomic_store(&g_stop, true);
    if (!up) {
        uint64_t deadline = wall_ms() + 60000;
        for (int i = 0; i < n_devs; i++) {
            while (!devs[i].finished && wall_ms() < deadline) usleep(20 * 1000);
            if (!devs[i].finished) failf("device %d did not finish", i + 1);
        }
        if (!atomic_load(&g_failures)) check_converged();
        kill_server(SIGTERM);
    }
    for (int i = 0; i < n_devs; i++) devs[i].finished = true;
    for (int i = 0; i < n_devs; i++) pthread_join(th[i], NULL);
    uint64_t total = check_store("at the end");
    snprintf(cmd, sizeof cmd, "'%s/doorstepctl' --data '%s' --key-file '%s' verify >/dev/null",
             g_build, g_data, g_key);
    if (run_cmd(cmd)) failf("doorstepctl verify failed");

    uint64_t pushes = 0, acks = 0, recon = 0, resent = 0, rej = 0;
    for (int i = 0; i < n_devs; i++) {
        pushes += devs[i].pushes;
        acks += devs[i].acks;
        recon += devs[i].reconnects;
        resent += devs[i].resent;
        rej += devs[i].n_rej;
    }
    printf("crash_harness: %d kills in %.1f s, %d devices, %llu deltas in the log, %llu pushes, "
           "%llu acks, %llu sessions, %llu deltas resent, %llu definite rejections; "
           "%d lost acked deltas detected, %d other failures\n",
           done_kills, (double)(wall_ms() - t0) / 1000, n_devs, (unsigned long long)total,
           (unsigned long long)pushes, (unsigned long long)acks, (unsigned long long)recon,
           (unsigned long long)resent, (unsigned long long)rej, atomic_load(&g_losses),
           atomic_load(&g_failures));
    int status;
    if (expect_loss) {
        status = atomic_load(&g_losses) ? 0 : 1;
        printf("crash_harness: negative control %s\n",
               status ? "FAILED: the ack-before-commit build lost nothing detectable"
                      : "ok: the harness caught the ack-before-commit build losing acked deltas");
    } else {
        status = atomic_load(&g_failures) || atomic_load(&g_losses) || done_kills < kills ? 1 : 0;
    }
    if (!keep && status == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        run_cmd(cmd);
    } else {
        fprintf(stderr, "crash_harness: data kept in %s\n", g_dir);
    }
    for (int i = 0; i < n_devs; i++) {
        for (size_t k = 0; k < devs[i].n_env; k++) crdt_buf_free(&devs[i].env[k]);
        for (size_t k = 0; k < devs[i].n_rej; k++) crdt_buf_free(&devs[i].rej[k]);
        free(devs[i].env);
        free(devs[i].rej);
        pthread_mutex_destroy(&devs[i].mu);
    }
    free(devs);
    free(th);
    return status;
}
