/*
 * server.c — doorstepd's event loop (libwebsockets), verify workers and the
 * group-commit writer.  The only file of the server that includes
 * libwebsockets.h.
 *
 * Threads
 *   - the event loop: sockets, framing, sessions, HTTP.  lws runs on a
 *     libev loop the server owns (a "foreign loop", as lws's
 *     minimal-http-server-eventlib-foreign example does), one ev_run turn
 *     per iteration of sync_server_run.  libev waits with epoll, so a turn
 *     costs what the ready sockets cost; lws's own poll() backend walks
 *     every connection's pollfd on every wake-up (each commit, each
 *     verified push), 5-8 % of the server's CPU with 300 phones connected
 *     and small commits (clients/bench/NOTES.md).  Not libuv: Debian's
 *     lws 4.1.6 is built with _DEBUG, whose libuv-only "uv repeat test"
 *     closes a socket that is waiting to send its close frame, so devices
 *     would lose the close code (tests/sync/test_hostile.c catches it);
 *   - N verify workers: sync_job_verify (decode, schema, scope, Ed25519);
 *   - one writer: takes every verified job at the head of the queue and
 *     commits them in one LMDB transaction (sync_jobs_commit), then hands
 *     them back to the loop with lws_cancel_service().  Group-commit delay
 *     (as PostgreSQL's commit_delay with commit_siblings): while other jobs
 *     are still being verified, the writer waits until commit_delay_ms have
 *     passed since its previous commit began (or COMMIT_DELAY_MAX_DELTAS
 *     are waiting), so one commit takes more deltas.  A random-keyed index
 *     page (lookup, records, members) is then written once for more deltas,
 *     and fsyncs and wake-ups are fewer: at 200 ms, 3.1 instead of 6.5 KB
 *     written per delta and ~10-15 % more deltas per second on the bench's
 *     sustained load (clients/bench/NOTES.md).  It never delays a push that
 *     has no company: with nothing left to verify, the writer commits at
 *     once, so a lone phone's ack and the end of a wave are not held back.
 *
 * Invariants
 *   - Jobs are committed in the order they were created (a FIFO: workers
 *     mark jobs verified in any order, the writer only takes the verified
 *     prefix), so one device's pipelined pushes reach the chain check in
 *     the order it sent them.
 *   - An ack is queued only in the loop thread after the writer's commit
 *     returned (sync_session_job_done).
 *   - Sockets are written only from LWS_CALLBACK_*_WRITEABLE.  Each
 *     connection's send queue is bounded: live changes are produced only
 *     when the queue is empty, pushes in flight are capped per session, and
 *     if the queue still exceeds SENDQ_MAX the connection's input is paused
 *     (lws_rx_flow_control) until it drains.
 *   - A job whose connection went away is still committed (the device gets
 *     the outcome as "duplicate" when it resends); only its ack is dropped.
 */
#include "sync.h"

#include <libwebsockets.h>
#include <ev.h>
#include <sodium.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

_Static_assert(LWS_PRE <= SYNC_FRAME_PRE, "frame headroom must fit LWS_PRE");

#define SENDQ_MAX (2u << 20)  /* bytes queued per connection before pausing input */
#define DRAIN_MS 5000         /* graceful shutdown: time allowed to finish acks */
#define COMMIT_DELAY_MAX_DELTAS 20000 /* verified deltas that end a group-commit delay */

enum { JOB_QUEUED = 0, JOB_VERIFYING = 1, JOB_VERIFIED = 2 };

typedef struct qjob {
    struct qjob *next;
    sync_job *job;
    int state;
} qjob;

typedef struct conn {
    struct conn *next, *prev;
    struct lws *wsi;
    sync_session *sess;
    sync_frame *q, **qtail;
    size_t qbytes;
    crdt_buf rx;
    int close_code;
    bool live_pending;
    bool paused;
    uint64_t since_ms;          /* monotonic time of connect (auth timeout) */
    uint64_t rx_since_ms;       /* monotonic time the unfinished message began */
} conn;

#define PARTIAL_MSG_TIMEOUT_MS 30000 /* a message must finish within this */

/* Metrics (atomic counters, read by /metrics). */
#define LAT_BUCKETS 12
static const double lat_bounds_ms[LAT_BUCKETS] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
                                                  2000, 5000};
#define BATCH_BUCKETS 8
static const unsigned batch_bounds[BATCH_BUCKETS] = {1, 10, 50, 100, 500, 1000, 5000, 20000};

typedef struct metrics {
    uint64_t connections, connections_total, auth_ok, auth_failed;
    uint64_t deltas_in, applied, duplicate, quarantined, rejected;
    uint64_t commits, commit_failures, reopens;
    uint64_t lat_count[LAT_BUCKETS + 1], batch_count[BATCH_BUCKETS + 1];
    double lat_sum_ms;
    uint64_t batch_sum;
    uint64_t rejected_by_code[64]; /* index: -code % 64 (see /metrics) */
    int rejected_code_of[64];
} metrics;

struct sync_server {
    store *st;
    const sync_config *cfg;
    sync_server_opts o;
    struct ev_loop *loop;         /* lws's event loop (foreign: ours to close) */
    void *foreign_loops[1];       /* info.foreign_loops: {&loop} */
    struct lws_context *ctx;
    struct lws_vhost *vh;
    int port;
    conn *conns;

    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_commit;
    qjob *jobs, **jobs_tail;      /* FIFO, creation order */
    uint32_t n_unverified;        /* jobs in `jobs` not yet JOB_VERIFIED */
    uint64_t n_verified_deltas;   /* deltas of JOB_VERIFIED jobs still in `jobs` */
    uint64_t commit_began_ms;     /* monotonic start of the writer's last commit */
    sync_job *done, **done_tail;  /* committed, for the loop */
    char (*touched)[CRDT_RECID_MAX + 1];
    size_t n_touched;
    bool threads_stop;
    int n_workers;
    pthread_t *workers;
    pthread_t writer;
    bool writer_started;

    /* The staff API: requests run on their own thread (see api_main). */
    sync_api *api;
    /* More /metrics lines from outside the server (doorstepd: the upstream
     * relay's), appended after the server's own; any thread. */
    void (*metrics_hook)(void *arg, crdt_buf *out);
    void *metrics_arg;
    sync_limiter *limiter;            /* per-device push rate (event-loop thread only) */
    pthread_t api_thread;
    bool api_started;
    struct api_job *api_q, **api_q_tail, *api_done, **api_done_tail;
    pthread_cond_t cv_api;
    struct http_pss *api_pending;   /* loop thread only */
    uint64_t http_serial;
    struct dconn *dash;             /* dashboard live connections (loop thread) */
    struct lws_http_mount mounts[5];
    struct lws_protocol_vhost_options sec_headers[6];

    lws_sorted_usec_list_t admin_sul;  /* polls store_admin_gen */
    volatile bool write_failed;       /* writer thread: reopen before committing */
    uint64_t last_snapshot_mono;      /* coverage history: snapshot every 10 min */
    uint64_t admin_gen;

    /* Last-sync times (DESIGN: what staff see as 最后同步).  The loop
     * thread notes every completed sync step in seen_ms (by device id) and
     * lists each device once in seen_dirty; every cfg->seen_flush_ms admin_poll
     * hands the list to the writer (seen_q, under mu), which records it in
     * one short transaction.  Pushes also record it in their own commit. */
    uint64_t *seen_ms;
    uint32_t seen_cap;
    uint32_t *seen_dirty;
    size_t n_seen_dirty, seen_dirty_cap;
    store_seen *seen_q;
    size_t n_seen_q;
    uint64_t seen_flush_mono;

    volatile sig_atomic_t stop_requested;
    bool draining;
    uint64_t drain_deadline;
    metrics m;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define ADD(field, n) __atomic_add_fetch(&sv->m.field, (n), __ATOMIC_RELAXED)
#define GET(field) __atomic_load_n(&sv->m.field, __ATOMIC_RELAXED)

/* ---- worker and writer threads ---------------------------------------------------- */

/* Loop thread: device dev completed a sync step now. */
static void seen_note(sync_server *sv, uint32_t dev, uint64_t ms)
{
    if (!dev) return;
    if (dev >= sv->seen_cap) {
        uint32_t nc = sv->seen_cap ? sv->seen_cap : 64;
        while (nc <= dev && nc < UINT32_MAX / 2) nc *= 2;
        if (nc <= dev) return;
        uint64_t *p = realloc(sv->seen_ms, (size_t)nc * sizeof *p);
        if (!p) return; /* out of memory costs only a last-sync time */
        memset(p + sv->seen_cap, 0, (size_t)(nc - sv->seen_cap) * sizeof *p);
        sv->seen_ms = p;
        sv->seen_cap = nc;
    }
    if (!sv->seen_ms[dev]) {
        if (sv->n_seen_dirty == sv->seen_dirty_cap) {
            size_t nc = sv->seen_dirty_cap ? sv->seen_dirty_cap * 2 : 64;
            uint32_t *p = realloc(sv->seen_dirty, nc * sizeof *p);
            if (!p) return;
            sv->seen_dirty = p;
            sv->seen_dirty_cap = nc;
        }
        sv->seen_dirty[sv->n_seen_dirty++] = dev;
    }
    sv->seen_ms[dev] = ms;
}

/* Loop thread: hand the noted times to the writer (seen_q). */
static void seen_flush(sync_server *sv)
{
    if (!sv->n_seen_dirty) return;
    pthread_mutex_lock(&sv->mu);
    store_seen *q = realloc(sv->seen_q, (sv->n_seen_q + sv->n_seen_dirty) * sizeof *q);
    if (q) {
        sv->seen_q = q;
        for (size_t i = 0; i < sv->n_seen_dirty; i++) {
            uint32_t d = sv->seen_dirty[i];
            q[sv->n_seen_q++] = (store_seen){d, sv->seen_ms[d]};
        }
        pthread_cond_signal(&sv->cv_commit);
    }
    pthread_mutex_unlock(&sv->mu);
    for (size_t i = 0; i < sv->n_seen_dirty; i++) sv->seen_ms[sv->seen_dirty[i]] = 0;
    sv->n_seen_dirty = 0;
}

/* Writer thread: record last-sync times (a device deleted meanwhile is
 * skipped).  Not data: a failure is logged, never retried. */
static void seen_commit(sync_server *sv, const store_seen *v, size_t n)
{
    store_txn *t;
    int rc = sv->write_failed ? STORE_EIO : store_begin(sv->st, STORE_RW, &t);
    for (size_t i = 0; !rc && i < n; i++) {
        rc = store_device_seen(t, v[i].dev, v[i].ms);
        if (rc == STORE_ENOTFOUND) rc = 0;
    }
    if (!rc) rc = store_commit(t);
    else if (!sv->write_failed) store_abort(t);
    if (rc && sv->o.log_level >= 2)
        lwsl_user("last-sync times of %zu devices not recorded: %s\n", n, store_strerror(rc));
}

static void *worker_main(void *arg)
{
    sync_server *sv = arg;
    pthread_mutex_lock(&sv->mu);
    for (;;) {
        qjob *q = NULL;
        while (!sv->threads_stop) {
            for (q = sv->jobs; q && q->state != JOB_QUEUED; q = q->next) {}
            if (q) break;
            pthread_cond_wait(&sv->cv_work, &sv->mu);
        }
        if (!q) break;
        q->state = JOB_VERIFYING;
        pthread_mutex_unlock(&sv->mu);
        sync_job_verify(sv->st, sv->cfg, q->job);
        pthread_mutex_lock(&sv->mu);
        q->state = JOB_VERIFIED;
        sv->n_unverified--;
        sv->n_verified_deltas += q->job->n;
        pthread_cond_signal(&sv->cv_commit);
    }
    pthread_mutex_unlock(&sv->mu);
    return NULL;
}

static void record_commit_metrics(sync_server *sv, sync_job *batch, double ms, int rc)
{
    uint64_t n = 0;
    for (sync_job *j = batch; j; j = j->next) {
        for (uint32_t i = 0; i < j->n; i++) {
            const sync_job_item *it = &j->items[i];
            n++;
            if (rc || j->commit_rc) continue; /* not judged: nothing to count */
            int result = it->code ? STORE_REJECTED : it->out.result;
            int code = it->code ? it->code : it->out.code;
            switch (result) {
            case STORE_APPLIED: ADD(applied, 1); break;
            case STORE_DUPLICATE: ADD(duplicate, 1); break;
            case STORE_QUARANTINED: ADD(quarantined, 1); break;
            default: {
                ADD(rejected, 1);
                unsigned slot = (unsigned)(-code) % 64;
                __atomic_store_n(&sv->m.rejected_code_of[slot], code, __ATOMIC_RELAXED);
                ADD(rejected_by_code[slot], 1);
            }
            }
        }
    }
    ADD(commits, 1);
    if (rc) ADD(commit_failures, 1);
    int b = 0;
    while (b < LAT_BUCKETS && ms > lat_bounds_ms[b]) b++;
    ADD(lat_count[b], 1);
    int c = 0;
    while (c < BATCH_BUCKETS && n > batch_bounds[c]) c++;
    ADD(batch_count[c], 1);
    ADD(batch_sum, n);
    pthread_mutex_lock(&sv->mu);
    sv->m.lat_sum_ms += ms;
    pthread_mutex_unlock(&sv->mu);
}

/* The group-commit delay (see the file header).  Called with sv->mu held
 * and a verified job at the head of the queue; returns with sv->mu held.
 * Waits while (a) other jobs are still queued or being verified, (b) fewer
 * than COMMIT_DELAY_MAX_DELTAS verified deltas wait, (c) commit_delay_ms
 * have not passed since the previous commit began, and (d) the server is
 * not stopping.  Each worker that finishes a job signals cv_commit, so the
 * wait ends as soon as (a) or (b) stops holding. */
static void commit_delay(sync_server *sv)
{
    if (sv->o.commit_delay_ms <= 0) return;
    uint64_t until = sv->commit_began_ms + (uint64_t)sv->o.commit_delay_ms;
    for (;;) {
        uint64_t now = mono_ms();
        if (sv->threads_stop || !sv->n_unverified ||
            sv->n_verified_deltas >= COMMIT_DELAY_MAX_DELTAS || now >= until)
            return;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (until - now) * 1000000u;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&sv->cv_commit, &sv->mu, &ts);
    }
}

static void *writer_main(void *arg)
{
    sync_server *sv = arg;
    pthread_mutex_lock(&sv->mu);
    for (;;) {
        while (!sv->threads_stop && !(sv->jobs && sv->jobs->state == JOB_VERIFIED) &&
               !sv->n_seen_q)
            pthread_cond_wait(&sv->cv_commit, &sv->mu);
        if (sv->n_seen_q) {
            store_seen *seen = sv->seen_q;
            size_t nseen = sv->n_seen_q;
            sv->seen_q = NULL;
            sv->n_seen_q = 0;
            pthread_mutex_unlock(&sv->mu);
            seen_commit(sv, seen, nseen);
            free(seen);
            pthread_mutex_lock(&sv->mu);
            continue;
        }
        if (!(sv->jobs && sv->jobs->state == JOB_VERIFIED)) break; /* stopping, idle */
        commit_delay(sv);
        sv->commit_began_ms = mono_ms();
        /* Take the verified prefix: one group commit. */
        sync_job *batch = NULL, **bt = &batch;
        while (sv->jobs && sv->jobs->state == JOB_VERIFIED) {
            qjob *q = sv->jobs;
            sv->jobs = q->next;
            sv->n_verified_deltas -= q->job->n;
            if (!sv->jobs) sv->jobs_tail = &sv->jobs;
            q->job->next = NULL;
            *bt = q->job;
            bt = &q->job->next;
            free(q);
        }
        pthread_mutex_unlock(&sv->mu);

#ifdef DOORSTEP_TEST_ACK_BEFORE_COMMIT
        /* TEST-ONLY negative control (target doorstepd-ackfirst, issue #9):
         * ack every verified delta as "applied" BEFORE committing, then
         * commit copies of the jobs after a pause.  tests/crash must catch
         * this build losing acknowledged deltas.  Never in doorstepd. */
        {
            sync_job *copies = NULL, **ct = &copies;
            for (sync_job *j = batch; j; j = j->next) {
                sync_job *k = calloc(1, sizeof *k);
                if (!k) abort();
                k->dev = j->dev, k->epoch = j->epoch, k->n = j->n, k->push_id = j->push_id;
                k->items = calloc(j->n ? j->n : 1, sizeof *k->items);
                k->arena = crdt_arena_new(0);
                if (!k->items || !k->arena) abort();
                for (uint32_t i = 0; i < j->n; i++) {
                    k->items[i].env = malloc(j->items[i].env_len + 1);
                    if (!k->items[i].env) abort();
                    memcpy(k->items[i].env, j->items[i].env, j->items[i].env_len);
                    k->items[i].env_len = j->items[i].env_len;
                    if (!j->items[i].code) j->items[i].out.result = STORE_APPLIED;
                }
                sync_job_verify(sv->st, sv->cfg, k);
                *ct = k;
                ct = &k->next;
            }
            pthread_mutex_lock(&sv->mu);
            *sv->done_tail = batch;
            while (*sv->done_tail) sv->done_tail = &(*sv->done_tail)->next;
            pthread_mutex_unlock(&sv->mu);
            lws_cancel_service(sv->ctx);
            usleep(20 * 1000);
            char (*tch)[CRDT_RECID_MAX + 1] = NULL;
            size_t ntch = 0;
            sync_jobs_commit(sv->st, sv->cfg, copies, now_ms(), &tch, &ntch);
            free(tch);
            while (copies) {
                sync_job *k = copies;
                copies = k->next;
                sync_job_free(k);
            }
            pthread_mutex_lock(&sv->mu);
            continue;
        }
#endif
        char (*touched)[CRDT_RECID_MAX + 1] = NULL;
        size_t nt = 0;
        struct timespec a, z;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc;
        if (sv->write_failed) {
            /* After a failed fsync nothing is committed until the store was
             * reopened from disk; try that first. */
            char err[256] = "";
            if (store_reopen(sv->st, err, sizeof err) == STORE_OK) {
                sv->write_failed = false;
                ADD(reopens, 1);
                lwsl_user("store reopened after a failed write; accepting pushes again\n");
            } else {
                lwsl_user("store reopen failed: %s (refusing writes)\n", err);
            }
        }
        if (sv->write_failed) {
            rc = STORE_EIO;
            for (sync_job *j = batch; j; j = j->next) j->commit_rc = rc;
        } else {
            rc = sync_jobs_commit(sv->st, sv->cfg, batch, now_ms(), &touched, &nt);
        }
        if (rc == STORE_EIO && !sv->write_failed) {
            /* Never pretend a retry succeeded: LMDB's view of the file may be
             * wrong after a failed fsync.  Reopen before the next commit. */
            sv->write_failed = true;
            lwsl_user("commit failed with an I/O error: the store will be reopened from "
                      "disk before any further write\n");
        }
        clock_gettime(CLOCK_MONOTONIC, &z);
        double ms = (double)(z.tv_sec - a.tv_sec) * 1e3 + (double)(z.tv_nsec - a.tv_nsec) / 1e6;
        record_commit_metrics(sv, batch, ms, rc);
        if (rc && sv->o.log_level >= 1)
            lwsl_user("commit of a batch failed: %s (nothing acked; devices retry)%s\n",
                      store_strerror(rc),
                      rc == STORE_EMAPFULL ? "; the database reached --map-max: free disk "
                                             "space and restart doorstepd with a larger --map-max"
                                           : "");

        pthread_mutex_lock(&sv->mu);
        *sv->done_tail = batch;
        while (*sv->done_tail) sv->done_tail = &(*sv->done_tail)->next;
        if (nt) {
            void *p = realloc(sv->touched, (sv->n_touched + nt) * sizeof *sv->touched);
            if (p) {
                sv->touched = p;
                memcpy(sv->touched + sv->n_touched, touched, nt * sizeof *touched);
                sv->n_touched += nt;
            }
        }
        free(touched);
        pthread_mutex_unlock(&sv->mu);
        lws_cancel_service(sv->ctx);
        pthread_mutex_lock(&sv->mu);
    }
    pthread_mutex_unlock(&sv->mu);
    return NULL;
}

/* ---- connections ----------------------------------------------------------------- */

static void conn_queue(conn *c, sync_out *out)
{
    if (out->synced) {
        sync_server *sv = lws_context_user(lws_get_context(c->wsi));
        seen_note(sv, sync_session_device(c->sess), now_ms());
        out->synced = false;
    }
    for (sync_frame *f = out->frames; f;) {
        sync_frame *next = f->next;
        f->next = NULL;
        *c->qtail = f;
        c->qtail = &f->next;
        c->qbytes += f->len;
        f = next;
    }
    out->frames = NULL;
    out->tail = &out->frames;
    if (out->close_code && !c->close_code) c->close_code = out->close_code;
    if (out->wake_live) {
        c->live_pending = true;
        out->wake_live = false;
    }
    lws_callback_on_writable(c->wsi);
    if (c->qbytes > SENDQ_MAX && !c->paused) {
        c->paused = true;
        lws_rx_flow_control(c->wsi, 0);
    }
}

/* Queue what a session call produced (rc 0), or, when it failed (rc != 0:
 * no frame could be built), drop any partial output and close with 1011. */
static void conn_answer(conn *c, sync_out *out, int rc)
{
    if (rc) {
        sync_frames_free(out->frames);
        sync_out_init(out);
        out->close_code = LWS_CLOSE_STATUS_UNEXPECTED_CONDITION;
    }
    conn_queue(c, out);
}

static void submit_job(sync_server *sv, sync_job *j)
{
    qjob *q = calloc(1, sizeof *q);
    if (!q) {
        j->commit_rc = CRDT_ENOMEM;
        pthread_mutex_lock(&sv->mu);
        *sv->done_tail = j;
        sv->done_tail = &j->next;
        pthread_mutex_unlock(&sv->mu);
        lws_cancel_service(sv->ctx);
        return;
    }
    ADD(deltas_in, j->n);
    q->job = j;
    pthread_mutex_lock(&sv->mu);
    *sv->jobs_tail = q;
    sv->jobs_tail = &q->next;
    sv->n_unverified++;
    pthread_cond_signal(&sv->cv_work);
    pthread_mutex_unlock(&sv->mu);
}

static conn *find_conn(sync_server *sv, void *owner)
{
    for (conn *c = sv->conns; c; c = c->next)
        if (c->sess == owner) return c;
    return NULL;
}

static void dash_notify(sync_server *sv, char (*touched)[CRDT_RECID_MAX + 1], size_t nt);

/* In the loop thread: hand committed jobs to their sessions; wake live readers. */
static void drain_done(sync_server *sv)
{
    pthread_mutex_lock(&sv->mu);
    sync_job *done = sv->done;
    sv->done = NULL;
    sv->done_tail = &sv->done;
    char (*touched)[CRDT_RECID_MAX + 1] = sv->touched;
    size_t nt = sv->n_touched;
    sv->touched = NULL;
    sv->n_touched = 0;
    pthread_mutex_unlock(&sv->mu);
    while (done) {
        sync_job *j = done;
        done = j->next;
        j->next = NULL;
        conn *c = find_conn(sv, j->owner);
        if (!c) {
            sync_job_free(j); /* committed; the device learns it on resend */
            continue;
        }
        sync_out out;
        sync_out_init(&out);
        /* No ack or error frame could be built (out of memory): close
         * rather than leave the device waiting; it reconnects and resends
         * (duplicates if this push was committed). */
        conn_answer(c, &out, sync_session_job_done(c->sess, j, &out));
    }
    dash_notify(sv, touched, nt);
    if (nt) {
        for (conn *c = sv->conns; c; c = c->next)
            if (sync_session_wants(c->sess, touched, nt)) {
                c->live_pending = true;
                lws_callback_on_writable(c->wsi);
            }
    }
    free(touched);
}

#define ADMIN_POLL_US (250 * LWS_US_PER_MS)

/*
 * Every 250 ms: if any device record changed (in this or another process,
 * e.g. `doorstepctl device revoke`), re-check every session's device, so a
 * revoked or frozen phone is cut off within well under a second.
 */
static void admin_poll(lws_sorted_usec_list_t *sul)
{
    sync_server *sv = lws_container_of(sul, sync_server, admin_sul);
    store_txn *t;
    uint64_t gen = sv->admin_gen;
    if (store_begin(sv->st, STORE_RDONLY, &t) == 0) {
        store_admin_gen(t, &gen);
        store_abort(t);
    }
    uint64_t mono = mono_ms();
    if (!sv->last_snapshot_mono || mono - sv->last_snapshot_mono > 10 * 60 * 1000) {
        /* The day's coverage for the campaign chart (a short write txn). */
        store_txn *w;
        sv->last_snapshot_mono = mono;
        if (store_begin(sv->st, STORE_RW, &w) == 0) {
            if (store_agg_snapshot(w, now_ms()) == 0) store_commit(w);
            else store_abort(w);
        }
    }
    for (conn *c = sv->conns; c; c = c->next) {
        if (!c->close_code && c->rx.n && mono - c->rx_since_ms > PARTIAL_MSG_TIMEOUT_MS) {
            /* Fragments that never finish hold a connection slot: close. */
            sync_out out;
            sync_out_init(&out);
            sync_out_append(&out, sync_frame_error(SYNC_EPROTO, "message left unfinished", 0));
            out.close_code = LWS_CLOSE_STATUS_POLICY_VIOLATION;
            conn_queue(c, &out);
            continue;
        }
        if (c->close_code || sync_session_authed(c->sess) ||
            mono - c->since_ms < (uint64_t)sv->cfg->auth_timeout_s * 1000)
            continue;
        sync_out out;
        sync_out_init(&out);
        sync_out_append(&out, sync_frame_error(SYNC_EAUTHTIME, NULL, 0));
        out.close_code = LWS_CLOSE_STATUS_POLICY_VIOLATION;
        conn_queue(c, &out);
    }
    if (mono - sv->seen_flush_mono >= sv->cfg->seen_flush_ms) {
        sv->seen_flush_mono = mono;
        seen_flush(sv);
    }
    if (gen != sv->admin_gen) {
        sv->admin_gen = gen;
        for (conn *c = sv->conns; c; c = c->next) {
            sync_out out;
            sync_out_init(&out);
            sync_session_recheck(c->sess, &out);
            if (out.frames || out.close_code) conn_queue(c, &out);
        }
    }
    lws_sul_schedule(sv->ctx, 0, &sv->admin_sul, admin_poll, ADMIN_POLL_US);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    sync_server *sv = lws_context_user(ctx);
    conn *c = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) < 0 || strcmp(uri, "/sync"))
            return 1; /* WebSocket only at /sync */
        if (sv->draining) return 1;
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED: {
        uint8_t nonce[SYNC_NONCE_BYTES];
        memset(c, 0, sizeof *c);
        c->wsi = wsi;
        c->qtail = &c->q;
        randombytes_buf(nonce, sizeof nonce);
        c->sess = sync_session_new(sv->st, sv->cfg, nonce);
        if (!c->sess) return -1;
        sync_session_set_limiter(c->sess, sv->limiter);
        c->next = sv->conns;
        if (sv->conns) sv->conns->prev = c;
        sv->conns = c;
        ADD(connections, 1);
        ADD(connections_total, 1);
        sync_out out;
        sync_out_init(&out);
        conn_answer(c, &out, sync_session_hello(c->sess, now_ms(), &out)); /* no hello: close */
        /* admin_poll closes unauthenticated sessions with SYNC_EAUTHTIME
         * after auth_timeout_s; lws's own timeout is the backstop. */
        c->since_ms = mono_ms();
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, (int)sv->cfg->auth_timeout_s + 5);
        return 0;
    }
    case LWS_CALLBACK_RECEIVE: {
        if (!c->sess) return -1;
        if (c->close_code) return 0; /* closing: ignore further input */
        if (!lws_frame_is_binary(wsi)) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
                             (unsigned char *)"binary frames only", 18);
            return -1;
        }
        if (c->rx.n + len > sv->cfg->lim.max_msg) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
                             (unsigned char *)"message too large", 17);
            return -1;
        }
        if (c->rx.n == 0) c->rx_since_ms = mono_ms();
        if (crdt_buf_append(&c->rx, in, len)) return -1;
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi)) return 0;
        sync_out out;
        sync_out_init(&out);
        bool was_authed = sync_session_authed(c->sess);
        int rc = sync_session_input(c->sess, c->rx.p, c->rx.n, now_ms(), &out);
        crdt_buf_reset(&c->rx);
        if (rc) {
            sync_frames_free(out.frames);
            return -1;
        }
        if (!was_authed && sync_session_authed(c->sess)) {
            ADD(auth_ok, 1);
            lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
        } else if (!was_authed && out.close_code) {
            ADD(auth_failed, 1);
        }
        if (out.job) {
            if (sv->draining) {
                out.job->commit_rc = SYNC_ESHUTDOWN;
                sync_session_job_done(c->sess, out.job, &out);
            } else {
                submit_job(sv, out.job);
            }
            out.job = NULL;
        }
        conn_queue(c, &out);
        return 0;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        if (!c->sess) return -1;
        if (!c->q && c->live_pending && !c->close_code) {
            sync_out out;
            bool more = false;
            sync_out_init(&out);
            /* A failed page (out of memory, store unreadable) closes the
             * connection; dropping it silently left the backlog unsent until
             * the next relevant commit.  The device pulls from its cursor
             * after reconnecting (tests/faults/alloc_failures.c, live). */
            int lrc = sync_session_live(c->sess, &out, &more);
            conn_answer(c, &out, lrc);
            if (lrc) more = false;
            c->live_pending = more;
        }
        if (c->q) {
            sync_frame *f = c->q;
            int n = lws_write(wsi, sync_frame_data(f), f->len, LWS_WRITE_BINARY);
            if (n < (int)f->len) return -1;
            c->q = f->next;
            if (!c->q) c->qtail = &c->q;
            c->qbytes -= f->len;
            sync_frame_free(f);
            if (c->paused && c->qbytes < SENDQ_MAX / 2) {
                c->paused = false;
                lws_rx_flow_control(wsi, 1);
            }
        }
        if (c->q || c->live_pending) {
            lws_callback_on_writable(wsi);
        } else if (c->close_code) {
            lws_close_reason(wsi, (enum lws_close_status)c->close_code, NULL, 0);
            return -1;
        }
        return 0;
    }
    case LWS_CALLBACK_CLOSED:
    case LWS_CALLBACK_WSI_DESTROY:
        if (!c || !c->sess) return 0;
        if (c->prev) c->prev->next = c->next;
        else if (sv->conns == c) sv->conns = c->next;
        if (c->next) c->next->prev = c->prev;
        sync_frames_free(c->q);
        crdt_buf_free(&c->rx);
        sync_session_free(c->sess);
        c->sess = NULL;
        c->q = NULL;
        __atomic_sub_fetch(&sv->m.connections, 1, __ATOMIC_RELAXED);
        return 0;
    default:
        return 0;
    }
}

/* ---- HTTP: /healthz, /metrics ------------------------------------------------------ */

typedef struct http_pss {
    char *body;                 /* /healthz, /metrics response */
    size_t len;
    const char *type;
    /* /api/ requests */
    struct lws *wsi;
    bool is_api, resp_ready, too_big;
    uint64_t serial;
    struct http_pss *next_pending;
    char method[8], path[256], query[1024], cookie[1024], csrf[128], ctype[64], origin[256],
        remote[64];
    crdt_buf req_body;
    sync_http_resp resp;
} http_pss;

typedef struct api_job {
    struct api_job *next;
    http_pss *pss;
    uint64_t serial;
    sync_http_req req;
    char *strings;              /* owned copies behind req's pointers */
    uint8_t *body;
    sync_http_resp resp;
} api_job;

/* A dashboard live connection (text messages). */
typedef struct dconn {
    struct dconn *next, *prev;
    struct lws *wsi;
    bool pending;
    char msg[1024];
} dconn;

static void *api_main(void *arg)
{
    sync_server *sv = arg;
    pthread_mutex_lock(&sv->mu);
    for (;;) {
        while (!sv->threads_stop && !sv->api_q) pthread_cond_wait(&sv->cv_api, &sv->mu);
        if (!sv->api_q) break;
        api_job *j = sv->api_q;
        sv->api_q = j->next;
        if (!sv->api_q) sv->api_q_tail = &sv->api_q;
        pthread_mutex_unlock(&sv->mu);
        memset(&j->resp, 0, sizeof j->resp);
        sync_api_handle(sv->api, &j->req, now_ms(), &j->resp);
        pthread_mutex_lock(&sv->mu);
        j->next = NULL;
        *sv->api_done_tail = j;
        sv->api_done_tail = &j->next;
        pthread_mutex_unlock(&sv->mu);
        lws_cancel_service(sv->ctx);
        pthread_mutex_lock(&sv->mu);
    }
    pthread_mutex_unlock(&sv->mu);
    return NULL;
}

static void api_job_free(api_job *j)
{
    if (!j) return;
    crdt_buf_free(&j->resp.body);
    free(j->strings);
    free(j->body);
    free(j);
}

/* Copy the request out of the pss (the connection may go away meanwhile). */
static int api_submit(sync_server *sv, http_pss *h)
{
    api_job *j = calloc(1, sizeof *j);
    if (!j) return -1;
    size_t total = 0;
    const char *parts[] = {h->method, h->path, h->query, h->cookie, h->csrf, h->ctype, h->origin,
                           h->remote};
    for (size_t i = 0; i < 8; i++) total += strlen(parts[i]) + 1;
    j->strings = malloc(total);
    j->body = malloc(h->req_body.n ? h->req_body.n : 1);
    if (!j->strings || !j->body) {
        api_job_free(j);
        return -1;
    }
    char *p = j->strings;
    const char *copies[8];
    for (size_t i = 0; i < 8; i++) {
        size_t l = strlen(parts[i]) + 1;
        memcpy(p, parts[i], l);
        copies[i] = p;
        p += l;
    }
    memcpy(j->body, h->req_body.p ? h->req_body.p : (uint8_t *)"", h->req_body.n);
    j->req = (sync_http_req){copies[0], copies[1], copies[2], copies[3], copies[4], copies[5],
                             copies[6], copies[7], sv->o.tls_cert != NULL, j->body,
                             h->req_body.n};
    j->pss = h;
    j->serial = h->serial;
    /* Remember the pss as pending so a late answer can find it (or not). */
    h->next_pending = sv->api_pending;
    sv->api_pending = h;
    pthread_mutex_lock(&sv->mu);
    *sv->api_q_tail = j;
    sv->api_q_tail = &j->next;
    pthread_cond_signal(&sv->cv_api);
    pthread_mutex_unlock(&sv->mu);
    return 0;
}

static void api_forget(sync_server *sv, http_pss *h)
{
    for (http_pss **pp = &sv->api_pending; *pp; pp = &(*pp)->next_pending)
        if (*pp == h) {
            *pp = h->next_pending;
            return;
        }
}

/* Loop thread: deliver finished API responses to their connections. */
static void drain_api(sync_server *sv)
{
    pthread_mutex_lock(&sv->mu);
    api_job *done = sv->api_done;
    sv->api_done = NULL;
    sv->api_done_tail = &sv->api_done;
    pthread_mutex_unlock(&sv->mu);
    while (done) {
        api_job *j = done;
        done = j->next;
        http_pss *h = NULL;
        for (http_pss *x = sv->api_pending; x; x = x->next_pending)
            if (x == j->pss && x->serial == j->serial) h = x;
        if (j->resp.changed_household[0]) {
            /* A staff write (server-signed delta): wake live devices and
             * dashboards as a device commit would. */
            char (*one)[CRDT_RECID_MAX + 1] = &j->resp.changed_household;
            dash_notify(sv, one, 1);
            for (conn *c = sv->conns; c; c = c->next)
                if (sync_session_wants(c->sess, one, 1)) {
                    c->live_pending = true;
                    lws_callback_on_writable(c->wsi);
                }
        }
        if (h) {
            api_forget(sv, h);
            crdt_buf_free(&h->resp.body);
            h->resp = j->resp;
            memset(&j->resp, 0, sizeof j->resp);
            h->resp_ready = true;
            lws_callback_on_writable(h->wsi);
        }
        api_job_free(j);
    }
}

static char *metrics_text(sync_server *sv, size_t *len)
{
    crdt_buf b = {0};
    char line[256];
#define EMIT(...) do { int n_ = snprintf(line, sizeof line, __VA_ARGS__); \
        if (n_ > 0) crdt_buf_append(&b, line, (size_t)n_); } while (0)
    EMIT("# HELP doorstep_connections Open WebSocket connections.\n# TYPE doorstep_connections gauge\n");
    EMIT("doorstep_connections %llu\n", (unsigned long long)GET(connections));
    EMIT("# TYPE doorstep_connections_total counter\ndoorstep_connections_total %llu\n",
         (unsigned long long)GET(connections_total));
    EMIT("# TYPE doorstep_auth_total counter\n");
    EMIT("doorstep_auth_total{result=\"ok\"} %llu\n", (unsigned long long)GET(auth_ok));
    EMIT("doorstep_auth_total{result=\"failed\"} %llu\n", (unsigned long long)GET(auth_failed));
    EMIT("# HELP doorstep_deltas_total Deltas received and their outcomes.\n"
         "# TYPE doorstep_deltas_total counter\n");
    EMIT("doorstep_deltas_total{outcome=\"received\"} %llu\n", (unsigned long long)GET(deltas_in));
    EMIT("doorstep_deltas_total{outcome=\"applied\"} %llu\n", (unsigned long long)GET(applied));
    EMIT("doorstep_deltas_total{outcome=\"duplicate\"} %llu\n", (unsigned long long)GET(duplicate));
    EMIT("doorstep_deltas_total{outcome=\"quarantined\"} %llu\n",
         (unsigned long long)GET(quarantined));
    EMIT("doorstep_deltas_total{outcome=\"rejected\"} %llu\n", (unsigned long long)GET(rejected));
    EMIT("# TYPE doorstep_deltas_rejected_total counter\n");
    for (int i = 0; i < 64; i++) {
        uint64_t n = GET(rejected_by_code[i]);
        if (n) EMIT("doorstep_deltas_rejected_total{code=\"%d\"} %llu\n",
                    __atomic_load_n(&sv->m.rejected_code_of[i], __ATOMIC_RELAXED),
                    (unsigned long long)n);
    }
    EMIT("# TYPE doorstep_commits_total counter\ndoorstep_commits_total %llu\n",
         (unsigned long long)GET(commits));
    EMIT("# TYPE doorstep_commit_failures_total counter\ndoorstep_commit_failures_total %llu\n",
         (unsigned long long)GET(commit_failures));
    EMIT("# HELP doorstep_pushes_rate_limited_total Pushes refused with SYNC_ERATE.\n"
         "# TYPE doorstep_pushes_rate_limited_total counter\n"
         "doorstep_pushes_rate_limited_total %llu\n",
         (unsigned long long)sync_limiter_refused(sv->limiter));
    EMIT("# HELP doorstep_store_write_failed 1 while writes are refused after an I/O error.\n"
         "# TYPE doorstep_store_write_failed gauge\ndoorstep_store_write_failed %d\n",
         sv->write_failed ? 1 : 0);
    EMIT("# TYPE doorstep_store_reopens_total counter\ndoorstep_store_reopens_total %llu\n",
         (unsigned long long)GET(reopens));
    EMIT("# HELP doorstep_commit_seconds Group-commit latency.\n"
         "# TYPE doorstep_commit_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i <= LAT_BUCKETS; i++) {
        cum += GET(lat_count[i]);
        if (i < LAT_BUCKETS)
            EMIT("doorstep_commit_seconds_bucket{le=\"%g\"} %llu\n", lat_bounds_ms[i] / 1000.0,
                 (unsigned long long)cum);
        else
            EMIT("doorstep_commit_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    pthread_mutex_lock(&sv->mu);
    double sum = sv->m.lat_sum_ms;
    pthread_mutex_unlock(&sv->mu);
    EMIT("doorstep_commit_seconds_sum %g\ndoorstep_commit_seconds_count %llu\n", sum / 1000.0,
         (unsigned long long)cum);
    EMIT("# HELP doorstep_commit_batch_deltas Deltas per group commit.\n"
         "# TYPE doorstep_commit_batch_deltas histogram\n");
    cum = 0;
    for (int i = 0; i <= BATCH_BUCKETS; i++) {
        cum += GET(batch_count[i]);
        if (i < BATCH_BUCKETS)
            EMIT("doorstep_commit_batch_deltas_bucket{le=\"%u\"} %llu\n", batch_bounds[i],
                 (unsigned long long)cum);
        else
            EMIT("doorstep_commit_batch_deltas_bucket{le=\"+Inf\"} %llu\n",
                 (unsigned long long)cum);
    }
    EMIT("doorstep_commit_batch_deltas_sum %llu\ndoorstep_commit_batch_deltas_count %llu\n",
         (unsigned long long)GET(batch_sum), (unsigned long long)cum);
    size_t used = 0, size = 0;
    store_map_usage(sv->st, &used, &size);
    EMIT("# HELP doorstep_map_bytes LMDB map: used, current size, and the most it may grow to "
         "(--map-max).\n# TYPE doorstep_map_bytes gauge\n");
    EMIT("doorstep_map_bytes{kind=\"used\"} %zu\ndoorstep_map_bytes{kind=\"size\"} %zu\n", used,
         size);
    EMIT("doorstep_map_bytes{kind=\"max\"} %zu\n", store_map_max(sv->st));
    if (sv->metrics_hook) sv->metrics_hook(sv->metrics_arg, &b);
#undef EMIT
    *len = b.n;
    return (char *)b.p;
}

static bool starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

static void header_copy(struct lws *wsi, char *dst, size_t cap, enum lws_token_indexes tok)
{
    if (lws_hdr_total_length(wsi, tok) <= 0 || (size_t)lws_hdr_total_length(wsi, tok) >= cap ||
        lws_hdr_copy(wsi, dst, (int)cap, tok) < 0)
        dst[0] = 0;
}

/*
 * The query's arguments, decoded by lws, one fragment each ("x=1", "y=2"),
 * joined with '&' into dst, with a '%' or '&' inside a fragment written %25 /
 * %26, so the joined string splits at every '&' (sync_http_req.query).
 * lws_hdr_copy joins them with ',' (as for a repeated header), which cannot
 * be told from a ',' in a value.  Empty if the whole does not fit: a route
 * then sees no parameters, never half of them.
 */
static void query_copy(struct lws *wsi, char *dst, size_t cap)
{
    size_t used = 0;
    char frag[1024];
    dst[0] = 0;
    for (int i = 0; i < 64; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0) break;
        if (used && used + 1 < cap) dst[used++] = '&';
        for (int j = 0; j < n && used < cap; j++) {
            if (frag[j] == '%' || frag[j] == '&') {
                if (used + 3 >= cap) break;
                dst[used++] = '%';
                dst[used++] = '2';
                dst[used++] = frag[j] == '%' ? '5' : '6';
            } else {
                dst[used++] = frag[j];
            }
        }
        if (used + 1 >= cap) {
            dst[0] = 0;
            return;
        }
        dst[used] = 0;
    }
}

static void custom_copy(struct lws *wsi, char *dst, size_t cap, const char *name)
{
    int n = lws_hdr_custom_length(wsi, name, (int)strlen(name));
    if (n <= 0 || (size_t)n >= cap || lws_hdr_custom_copy(wsi, dst, (int)cap, name,
                                                         (int)strlen(name)) < 0)
        dst[0] = 0;
}

/* Write an /api/ response: status, headers, body (from the writeable callback). */
static int api_write(struct lws *wsi, http_pss *h)
{
    /* lws_write(HTTP_FINAL) and lws_http_transaction_completed may free the
     * connection's pss: take the response out of it first, touch h no more
     * after writing. */
    sync_http_resp resp = h->resp, *r = &resp;
    memset(&h->resp, 0, sizeof h->resp);
    h->resp_ready = false;
    h->is_api = false;
    size_t hdr_cap = LWS_PRE + 2048;
    uint8_t *buf = malloc(hdr_cap + r->body.n);
    if (!buf) {
        crdt_buf_free(&r->body);
        return -1;
    }
    uint8_t *start = buf + LWS_PRE, *p = start, *end = buf + hdr_cap - 1;
    const char *ct = r->content_type[0] ? r->content_type : "application/json; charset=utf-8";
    int rc = -1;
    if (lws_add_http_common_headers(wsi, (unsigned)(r->status ? r->status : 500), ct,
                                    r->body.n, &p, end))
        goto out;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        goto out;
    if (r->set_cookie[0] &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)"set-cookie:",
                                    (const unsigned char *)r->set_cookie,
                                    (int)strlen(r->set_cookie), &p, end))
        goto out;
    if (r->extra_header_name[0] &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)r->extra_header_name,
                                    (const unsigned char *)r->extra_header_value,
                                    (int)strlen(r->extra_header_value), &p, end))
        goto out;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) goto out;
    memcpy(buf + LWS_PRE, r->body.p ? r->body.p : (uint8_t *)"", r->body.n);
    if (lws_write(wsi, buf + LWS_PRE, r->body.n, LWS_WRITE_HTTP_FINAL) < (int)r->body.n) goto out;
    rc = lws_http_transaction_completed(wsi) ? -1 : 0;
out:
    free(buf);
    crdt_buf_free(&r->body);
    return rc;
}

static int http_simple(struct lws *wsi, http_pss *h, unsigned status, const char *type,
                       char *body, size_t len)
{
    uint8_t buf[LWS_PRE + 2048], *start = &buf[LWS_PRE], *p = start, *end = &buf[sizeof buf - 1];
    h->body = body;
    h->len = len;
    h->type = type;
    if (!h->body) return -1;
    if (lws_add_http_common_headers(wsi, status, h->type, h->len, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len)
{
    sync_server *sv = lws_context_user(lws_get_context(wsi));
    http_pss *h = user;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_done(sv);
        drain_api(sv);
        return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 1; /* a WebSocket upgrade without a Doorstep subprotocol */
    case LWS_CALLBACK_HTTP: {
        char uri[256];
        bool post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
        header_copy(wsi, uri, sizeof uri, post ? WSI_TOKEN_POST_URI : WSI_TOKEN_GET_URI);
        if (starts_with(uri, "/api/") || !strcmp(uri, "/api")) {
            memset(h, 0, sizeof *h);
            h->wsi = wsi;
            h->is_api = true;
            h->serial = ++sv->http_serial;
            if (!post && lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0) {
                return http_simple(wsi, h, HTTP_STATUS_METHOD_NOT_ALLOWED, "text/plain",
                                   strdup("method not allowed\n"), 19);
            }
            snprintf(h->method, sizeof h->method, "%s", post ? "POST" : "GET");
            snprintf(h->path, sizeof h->path, "%s", uri);
            query_copy(wsi, h->query, sizeof h->query);
            header_copy(wsi, h->cookie, sizeof h->cookie, WSI_TOKEN_HTTP_COOKIE);
            header_copy(wsi, h->ctype, sizeof h->ctype, WSI_TOKEN_HTTP_CONTENT_TYPE);
            header_copy(wsi, h->origin, sizeof h->origin, WSI_TOKEN_ORIGIN);
            custom_copy(wsi, h->csrf, sizeof h->csrf, "x-csrf-token:");
            lws_get_peer_simple(wsi, h->remote, sizeof h->remote);
            if (!post) {
                if (api_submit(sv, h)) return -1;
            }
            return 0; /* POST: wait for the body */
        }
        h->is_api = false;
        h->type = "text/plain; charset=utf-8";
        if (!strcmp(uri, "/healthz")) {
            return http_simple(wsi, h, sv->draining ? HTTP_STATUS_SERVICE_UNAVAILABLE : HTTP_STATUS_OK,
                               "text/plain; charset=utf-8",
                               strdup(sv->draining ? "draining\n" : "ok\n"),
                               sv->draining ? 9 : 3);
        }
        if (!strcmp(uri, "/metrics")) {
            size_t n = 0;
            char *body = metrics_text(sv, &n);
            return http_simple(wsi, h, HTTP_STATUS_OK, "text/plain; version=0.0.4", body, n);
        }
        return http_simple(wsi, h, HTTP_STATUS_NOT_FOUND, "text/plain; charset=utf-8",
                           strdup("not found\n"), 10);
    }
    case LWS_CALLBACK_HTTP_BODY:
        if (!h->is_api) return 0;
        if (h->req_body.n + len > SYNC_API_BODY_MAX) h->too_big = true;
        else if (crdt_buf_append(&h->req_body, in, len)) return -1;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (!h->is_api) return 0;
        if (h->too_big) {
            h->resp.status = 413;
            crdt_buf_append(&h->resp.body, "{\"error\":\"request body too large\"}", 34);
            h->resp_ready = true;
            lws_callback_on_writable(wsi);
            return 0;
        }
        return api_submit(sv, h) ? -1 : 0;
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (h->is_api) return h->resp_ready ? api_write(wsi, h) : 0;
        if (!h->body) return -1;
        size_t blen = h->len;
        uint8_t *buf = malloc(LWS_PRE + blen);
        if (!buf) return -1;
        memcpy(buf + LWS_PRE, h->body, blen);
        free(h->body); /* before writing: the write may free h */
        h->body = NULL;
        int n = lws_write(wsi, buf + LWS_PRE, blen, LWS_WRITE_HTTP_FINAL);
        free(buf);
        if (n < (int)blen) return -1;
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (h) {
            api_forget(sv, h);
            free(h->body);
            h->body = NULL;
            crdt_buf_free(&h->req_body);
            crdt_buf_free(&h->resp.body);
            h->is_api = false;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* ---- the dashboard's live WebSocket (/live) ------------------------------------- */

static int dash_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    sync_server *sv = lws_context_user(lws_get_context(wsi));
    dconn *d = user;
    (void)in;
    (void)len;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64], cookie[1024];
        header_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
        header_copy(wsi, cookie, sizeof cookie, WSI_TOKEN_HTTP_COOKIE);
        if (strcmp(uri, "/live") || !sv->api || !sync_api_session_ok(sv->api, cookie, now_ms()))
            return 1;
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED:
        memset(d, 0, sizeof *d);
        d->wsi = wsi;
        d->next = sv->dash;
        if (sv->dash) sv->dash->prev = d;
        sv->dash = d;
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return 0; /* the page only listens */
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        if (!d->pending) return 0;
        size_t n = strlen(d->msg);
        uint8_t buf[LWS_PRE + sizeof d->msg];
        memcpy(buf + LWS_PRE, d->msg, n);
        d->pending = false;
        if (lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < (int)n) return -1;
        return 0;
    }
    case LWS_CALLBACK_CLOSED:
        if (d->wsi) {
            if (d->prev) d->prev->next = d->next;
            else if (sv->dash == d) sv->dash = d->next;
            if (d->next) d->next->prev = d->prev;
            d->wsi = NULL;
        }
        return 0;
    default:
        return 0;
    }
}

/* After a commit: tell open dashboards which households changed (one
 * pending message per page: a newer commit replaces an unsent one). */
static void dash_notify(sync_server *sv, char (*touched)[CRDT_RECID_MAX + 1], size_t nt)
{
    if (!sv->dash || !nt) return;
    char msg[1024];
    size_t n = (size_t)snprintf(msg, sizeof msg, "{\"type\":\"changed\",\"households\":[");
    for (size_t i = 0; i < nt && n + CRDT_RECID_MAX + 8 < sizeof msg; i++)
        n += (size_t)snprintf(msg + n, sizeof msg - n, "%s\"%s\"", i ? "," : "", touched[i]);
    snprintf(msg + n, sizeof msg - n, "]}");
    for (dconn *d = sv->dash; d; d = d->next) {
        memcpy(d->msg, msg, sizeof msg);
        d->pending = true;
        lws_callback_on_writable(d->wsi);
    }
}

static const struct lws_protocols protocols[] = {
    {"http", http_callback, sizeof(http_pss), 0, 0, NULL, 0},
    {SYNC_SUBPROTOCOL, ws_callback, sizeof(conn), 65536, 0, NULL, 0},
    {"doorstep.dashboard.v1", dash_callback, sizeof(dconn), 4096, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}
};

/* ---- lifecycle ------------------------------------------------------------------- */

static bool is_loopback(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") || !strcmp(host, "::1") ||
           !strncmp(host, "127.", 4);
}

int sync_server_new(store *st, const sync_config *cfg, const sync_server_opts *o,
                    sync_server **out, char *err, size_t errlen)
{
    struct lws_context_creation_info info;
    sync_server *sv;
    *out = NULL;
    bool tls = o->tls_cert && o->tls_key;
    if ((o->tls_cert != NULL) != (o->tls_key != NULL)) {
        snprintf(err, errlen, "--tls-cert and --tls-key go together");
        return SYNC_EPROTO;
    }
    if (!tls && !is_loopback(o->listen_host) && !o->allow_plain) {
        snprintf(err, errlen,
                 "refusing plain ws on %s: give --tls-cert and --tls-key, or --allow-plain",
                 o->listen_host);
        return SYNC_EPROTO;
    }
    /* A burst below the largest push would let a full bucket pass a push
     * larger than itself (sync/limit.c), i.e. more than the rate. */
    if (cfg->device_rate && (cfg->device_burst < cfg->max_push || cfg->device_rate > 1000000 ||
                             cfg->device_burst > 10000000)) {
        snprintf(err, errlen, "device rate limit: the rate must be 1..1000000 deltas/s and the "
                              "burst %u..10000000 deltas (at least one full push)", cfg->max_push);
        return SYNC_EPROTO;
    }
    if (o->commit_delay_ms < 0 || o->commit_delay_ms > SYNC_COMMIT_DELAY_MAX_MS) {
        snprintf(err, errlen, "commit delay must be 0..%d ms, got %d", SYNC_COMMIT_DELAY_MAX_MS,
                 o->commit_delay_ms);
        return SYNC_EPROTO;
    }
    sv = calloc(1, sizeof *sv);
    if (!sv) return CRDT_ENOMEM;
    sv->st = st;
    sv->cfg = cfg;
    sv->o = *o;
    sv->jobs_tail = &sv->jobs;
    sv->done_tail = &sv->done;
    pthread_mutex_init(&sv->mu, NULL);
    pthread_cond_init(&sv->cv_work, NULL);
    {
        /* cv_commit: timed waits (commit_delay) count on the monotonic clock. */
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&sv->cv_commit, &ca);
        pthread_condattr_destroy(&ca);
    }
    pthread_cond_init(&sv->cv_api, NULL);
    sv->api_q_tail = &sv->api_q;
    sv->api_done_tail = &sv->api_done;
    sv->api = sync_api_new(st, cfg);
    sv->limiter = sync_limiter_new();
    if (!sv->api || !sv->limiter) {
        sync_api_free(sv->api);
        sync_limiter_free(sv->limiter);
        snprintf(err, errlen, "cannot create the staff API");
        pthread_cond_destroy(&sv->cv_api);
        pthread_cond_destroy(&sv->cv_commit);
        pthread_cond_destroy(&sv->cv_work);
        pthread_mutex_destroy(&sv->mu);
        free(sv);
        return CRDT_ENOMEM;
    }

    int levels = LLL_ERR;
    if (o->log_level >= 1) levels |= LLL_WARN | LLL_USER;
    if (o->log_level >= 2) levels |= LLL_NOTICE;
    if (o->log_level >= 3) levels |= LLL_INFO;
    lws_set_log_level(levels, NULL);

    memset(&info, 0, sizeof info);
    info.port = o->port;
    info.iface = o->listen_host;
    info.protocols = protocols;
    info.user = sv;
    /* The security headers of lws's HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE,
     * with a policy that also lets the field app (clients/field) be a PWA:
     * its manifest, its service worker and the camera preview (a MediaStream
     * in a <video>) from this origin only.  Still no inline script or style,
     * no other origin but WebSocket connections. */
    static const struct {
        const char *name, *value;
    } sec[] = {
        {"content-security-policy:",
         "default-src 'none'; img-src 'self' data: blob:; script-src 'self'; font-src 'self'; "
         "style-src 'self'; connect-src 'self' ws: wss:; manifest-src 'self'; worker-src 'self'; "
         "media-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self';"},
        {"x-content-type-options:", "nosniff"},
        {"x-xss-protection:", "1; mode=block"},
        {"x-frame-options:", "deny"},
        {"referrer-policy:", "no-referrer"},
    };
    size_t nsec = sizeof sec / sizeof sec[0];
    memset(sv->sec_headers, 0, sizeof sv->sec_headers);
    for (size_t i = 0; i < nsec; i++) {
        sv->sec_headers[i].name = sec[i].name;
        sv->sec_headers[i].value = sec[i].value;
    }
    if (tls) {
        sv->sec_headers[nsec].name = "strict-transport-security:";
        sv->sec_headers[nsec].value = "max-age=15768000 ; includeSubDomains";
        nsec++;
    }
    for (size_t i = 0; i + 1 < nsec; i++) sv->sec_headers[i].next = &sv->sec_headers[i + 1];
    info.headers = &sv->sec_headers[0];
    info.options = 0;
    if (is_loopback(o->listen_host) && strchr(o->listen_host, ':') == NULL)
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    if (tls) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = o->tls_cert;
        info.ssl_private_key_filepath = o->tls_key;
    }
    /* With a static directory at / (the dashboard) or /field (the field
     * app), the dynamic paths need mounts of their own that route them back
     * to the "http" protocol callback.  lws picks the longest matching
     * mountpoint, so /field wins over / for the field app's files. */
    if (o->static_dir || o->field_dir) {
        static const char *const dyn[] = {"/api", "/healthz", "/metrics"};
        int m = 0;
        memset(sv->mounts, 0, sizeof sv->mounts);
        for (int i = 0; i < 3; i++, m++) {
            sv->mounts[m].mountpoint = dyn[i];
            sv->mounts[m].mountpoint_len = (unsigned char)strlen(dyn[i]);
            sv->mounts[m].origin = "http";
            sv->mounts[m].origin_protocol = LWSMPRO_CALLBACK;
        }
        if (o->field_dir) {
            sv->mounts[m].mountpoint = "/field";
            sv->mounts[m].mountpoint_len = 6;
            sv->mounts[m].origin = o->field_dir;
            sv->mounts[m].def = "index.html";
            sv->mounts[m].origin_protocol = LWSMPRO_FILE;
            m++;
        }
        if (o->static_dir) {
            sv->mounts[m].mountpoint = "/";
            sv->mounts[m].mountpoint_len = 1;
            sv->mounts[m].origin = o->static_dir;
            sv->mounts[m].def = "index.html";
            sv->mounts[m].origin_protocol = LWSMPRO_FILE;
            m++;
        }
        for (int i = 0; i + 1 < m; i++) sv->mounts[i].mount_next = &sv->mounts[i + 1];
        info.mounts = &sv->mounts[0];
    }
    sv->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!sv->loop) {
        snprintf(err, errlen, "cannot create the event loop");
        sync_server_free(sv);
        return SYNC_EUNAVAILABLE;
    }
    sv->foreign_loops[0] = sv->loop;
    info.foreign_loops = sv->foreign_loops;
    info.options |= LWS_SERVER_OPTION_LIBEV;
    sv->ctx = lws_create_context(&info);
    if (!sv->ctx) {
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address here?)",
                 o->listen_host, o->port);
        sync_server_free(sv);
        return SYNC_EUNAVAILABLE;
    }
    sv->vh = lws_get_vhost_by_name(sv->ctx, "default");
    sv->port = sv->vh ? lws_get_vhost_listen_port(sv->vh) : o->port;

    sv->n_workers = o->verify_threads > 0 ? o->verify_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (sv->n_workers < 1) sv->n_workers = 1;
    sv->workers = calloc((size_t)sv->n_workers, sizeof *sv->workers);
    if (!sv->workers) {
        sync_server_free(sv);
        return CRDT_ENOMEM;
    }
    for (int i = 0; i < sv->n_workers; i++)
        if (pthread_create(&sv->workers[i], NULL, worker_main, sv)) {
            sv->n_workers = i;
            sync_server_free(sv);
            snprintf(err, errlen, "cannot start threads");
            return CRDT_ENOMEM;
        }
    if (pthread_create(&sv->writer, NULL, writer_main, sv)) {
        sync_server_free(sv);
        snprintf(err, errlen, "cannot start threads");
        return CRDT_ENOMEM;
    }
    sv->writer_started = true;
    if (pthread_create(&sv->api_thread, NULL, api_main, sv)) {
        sync_server_free(sv);
        snprintf(err, errlen, "cannot start threads");
        return CRDT_ENOMEM;
    }
    sv->api_started = true;
    {
        store_txn *t;
        if (store_begin(st, STORE_RDONLY, &t) == 0) {
            store_admin_gen(t, &sv->admin_gen);
            store_abort(t);
        }
    }
    lws_sul_schedule(sv->ctx, 0, &sv->admin_sul, admin_poll, ADMIN_POLL_US);
    *out = sv;
    return SYNC_OK;
}

int sync_server_port(const sync_server *sv) { return sv->port; }

void sync_server_set_metrics_hook(sync_server *sv, void (*fn)(void *arg, crdt_buf *out), void *arg)
{
    sv->metrics_arg = arg;
    sv->metrics_hook = fn;
}

void sync_server_stop(sync_server *sv)
{
    sv->stop_requested = 1;
    if (sv->ctx) lws_cancel_service(sv->ctx);
}

static bool jobs_pending(sync_server *sv)
{
    pthread_mutex_lock(&sv->mu);
    bool busy = sv->jobs != NULL || sv->done != NULL;
    pthread_mutex_unlock(&sv->mu);
    return busy;
}

/* One turn of the event loop: waits for at least one event (a socket, a
 * timer of lws's, lws_cancel_service from another thread) and handles what
 * is ready.  False when nothing is left to wait for (lws has closed
 * everything), which would otherwise spin. */
static bool loop_turn(sync_server *sv) { return ev_run(sv->loop, EVRUN_ONCE) != 0; }

int sync_server_run(sync_server *sv)
{
    for (;;) {
        if (!loop_turn(sv)) break;
        if (sv->stop_requested && !sv->draining) {
            /* Stop taking work; finish and ack what is in flight. */
            sv->draining = true;
            sv->drain_deadline = mono_ms() + DRAIN_MS;
            if (sv->o.log_level >= 1) lwsl_user("shutting down: finishing in-flight pushes\n");
        }
        if (sv->draining) {
            bool queued = false;
            for (conn *c = sv->conns; c; c = c->next)
                if (c->q || sync_session_inflight(c->sess)) queued = true;
            if ((!jobs_pending(sv) && !queued) || mono_ms() > sv->drain_deadline) break;
        }
    }
    seen_flush(sv); /* the writer records them before it stops (sync_server_free) */
    /* Close every session with "going away". */
    for (conn *c = sv->conns; c; c = c->next) {
        c->close_code = LWS_CLOSE_STATUS_GOINGAWAY;
        lws_callback_on_writable(c->wsi);
    }
    uint64_t until = mono_ms() + 500;
    while (sv->conns && mono_ms() < until)
        if (!loop_turn(sv)) break;
    return SYNC_OK;
}

void sync_server_free(sync_server *sv)
{
    if (!sv) return;
    pthread_mutex_lock(&sv->mu);
    sv->threads_stop = true;
    pthread_cond_broadcast(&sv->cv_work);
    pthread_cond_broadcast(&sv->cv_commit);
    pthread_cond_broadcast(&sv->cv_api);
    pthread_mutex_unlock(&sv->mu);
    for (int i = 0; i < sv->n_workers; i++) pthread_join(sv->workers[i], NULL);
    if (sv->writer_started) pthread_join(sv->writer, NULL);
    if (sv->api_started) pthread_join(sv->api_thread, NULL);
    if (sv->ctx) lws_context_destroy(sv->ctx);
    if (sv->loop) ev_loop_destroy(sv->loop);
    /* Anything left (only on a forced stop) is freed, never acked. */
    while (sv->jobs) {
        qjob *q = sv->jobs;
        sv->jobs = q->next;
        sync_job_free(q->job);
        free(q);
    }
    while (sv->done) {
        sync_job *j = sv->done;
        sv->done = j->next;
        sync_job_free(j);
    }
    while (sv->api_q) {
        api_job *j = sv->api_q;
        sv->api_q = j->next;
        api_job_free(j);
    }
    while (sv->api_done) {
        api_job *j = sv->api_done;
        sv->api_done = j->next;
        api_job_free(j);
    }
    sync_api_free(sv->api);
    sync_limiter_free(sv->limiter);
    pthread_cond_destroy(&sv->cv_api);
    free(sv->touched);
    free(sv->seen_ms);
    free(sv->seen_dirty);
    free(sv->seen_q);
    free(sv->workers);
    pthread_mutex_destroy(&sv->mu);
    pthread_cond_destroy(&sv->cv_work);
    pthread_cond_destroy(&sv->cv_commit);
    free(sv);
}
