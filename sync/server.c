/*
 * server.c — doorstepd's event loop (libwebsockets), verify workers and the
 * group-commit writer.  The only file of the server that includes
 * libwebsockets.h.
 *
 * Threads
 *   - the event loop (lws_service): sockets, framing, sessions, HTTP;
 *   - N verify workers: sync_job_verify (decode, schema, scope, Ed25519);
 *   - one writer: takes every verified job at the head of the queue and
 *     commits them in one LMDB transaction (sync_jobs_commit), then hands
 *     them back to the loop with lws_cancel_service().
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
} conn;

/* Metrics (atomic counters, read by /metrics). */
#define LAT_BUCKETS 12
static const double lat_bounds_ms[LAT_BUCKETS] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000,
                                                  2000, 5000};
#define BATCH_BUCKETS 8
static const unsigned batch_bounds[BATCH_BUCKETS] = {1, 10, 50, 100, 500, 1000, 5000, 20000};

typedef struct metrics {
    uint64_t connections, connections_total, auth_ok, auth_failed;
    uint64_t deltas_in, applied, duplicate, quarantined, rejected;
    uint64_t commits, commit_failures;
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
    struct lws_context *ctx;
    struct lws_vhost *vh;
    int port;
    conn *conns;

    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_commit;
    qjob *jobs, **jobs_tail;      /* FIFO, creation order */
    sync_job *done, **done_tail;  /* committed, for the loop */
    char (*touched)[CRDT_RECID_MAX + 1];
    size_t n_touched;
    bool threads_stop;
    int n_workers;
    pthread_t *workers;
    pthread_t writer;
    bool writer_started;

    lws_sorted_usec_list_t admin_sul;  /* polls store_admin_gen */
    uint64_t admin_gen;

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
            if (rc) continue;
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

static void *writer_main(void *arg)
{
    sync_server *sv = arg;
    pthread_mutex_lock(&sv->mu);
    for (;;) {
        while (!sv->threads_stop && !(sv->jobs && sv->jobs->state == JOB_VERIFIED))
            pthread_cond_wait(&sv->cv_commit, &sv->mu);
        if (!(sv->jobs && sv->jobs->state == JOB_VERIFIED)) break; /* stopping, idle */
        /* Take the verified prefix: one group commit. */
        sync_job *batch = NULL, **bt = &batch;
        while (sv->jobs && sv->jobs->state == JOB_VERIFIED) {
            qjob *q = sv->jobs;
            sv->jobs = q->next;
            if (!sv->jobs) sv->jobs_tail = &sv->jobs;
            q->job->next = NULL;
            *bt = q->job;
            bt = &q->job->next;
            free(q);
        }
        pthread_mutex_unlock(&sv->mu);

        char (*touched)[CRDT_RECID_MAX + 1] = NULL;
        size_t nt = 0;
        uint64_t t0 = mono_ms();
        struct timespec a, z;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = sync_jobs_commit(sv->st, sv->cfg, batch, now_ms(), &touched, &nt);
        clock_gettime(CLOCK_MONOTONIC, &z);
        (void)t0;
        double ms = (double)(z.tv_sec - a.tv_sec) * 1e3 + (double)(z.tv_nsec - a.tv_nsec) / 1e6;
        record_commit_metrics(sv, batch, ms, rc);
        if (rc && sv->o.log_level >= 1)
            lwsl_user("commit of a batch failed: %s (nothing acked; devices retry)\n",
                      store_strerror(rc));

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
    lws_callback_on_writable(c->wsi);
    if (c->qbytes > SENDQ_MAX && !c->paused) {
        c->paused = true;
        lws_rx_flow_control(c->wsi, 0);
    }
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
    pthread_cond_signal(&sv->cv_work);
    pthread_mutex_unlock(&sv->mu);
}

static conn *find_conn(sync_server *sv, void *owner)
{
    for (conn *c = sv->conns; c; c = c->next)
        if (c->sess == owner) return c;
    return NULL;
}

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
        if (sync_session_job_done(c->sess, j, &out) == 0) conn_queue(c, &out);
        else sync_frames_free(out.frames);
    }
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
        c->next = sv->conns;
        if (sv->conns) sv->conns->prev = c;
        sv->conns = c;
        ADD(connections, 1);
        ADD(connections_total, 1);
        sync_out out;
        sync_out_init(&out);
        sync_session_hello(c->sess, now_ms(), &out);
        conn_queue(c, &out);
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, (int)sv->cfg->auth_timeout_s);
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
            if (sync_session_live(c->sess, &out, &more) == 0) conn_queue(c, &out);
            else sync_frames_free(out.frames);
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
    char *body;
    size_t len;
    const char *type;
} http_pss;

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
    EMIT("# HELP doorstep_map_bytes LMDB map: used and current size.\n"
         "# TYPE doorstep_map_bytes gauge\n");
    EMIT("doorstep_map_bytes{kind=\"used\"} %zu\ndoorstep_map_bytes{kind=\"size\"} %zu\n", used,
         size);
#undef EMIT
    *len = b.n;
    return (char *)b.p;
}

static int http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                         void *in, size_t len)
{
    sync_server *sv = lws_context_user(lws_get_context(wsi));
    http_pss *h = user;
    (void)in;
    (void)len;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_done(sv);
        return 0;
    case LWS_CALLBACK_HTTP: {
        char uri[128];
        uint8_t buf[LWS_PRE + 512], *start = &buf[LWS_PRE], *p = start, *end = &buf[sizeof buf - 1];
        unsigned status = HTTP_STATUS_OK;
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) < 0) uri[0] = 0;
        h->type = "text/plain; charset=utf-8";
        if (!strcmp(uri, "/healthz")) {
            h->body = strdup(sv->draining ? "draining\n" : "ok\n");
            if (sv->draining) status = HTTP_STATUS_SERVICE_UNAVAILABLE;
            h->len = h->body ? strlen(h->body) : 0;
        } else if (!strcmp(uri, "/metrics")) {
            h->body = metrics_text(sv, &h->len);
            h->type = "text/plain; version=0.0.4";
        } else {
            h->body = strdup("not found\n");
            h->len = h->body ? strlen(h->body) : 0;
            status = HTTP_STATUS_NOT_FOUND;
        }
        if (!h->body) return -1;
        if (lws_add_http_common_headers(wsi, status, h->type, h->len, &p, end) ||
            lws_finalize_write_http_header(wsi, start, &p, end))
            return 1;
        lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!h->body) return -1;
        uint8_t *buf = malloc(LWS_PRE + h->len);
        if (!buf) return -1;
        memcpy(buf + LWS_PRE, h->body, h->len);
        int n = lws_write(wsi, buf + LWS_PRE, h->len, LWS_WRITE_HTTP_FINAL);
        free(buf);
        free(h->body);
        h->body = NULL;
        if (n < (int)h->len) return -1;
        if (lws_http_transaction_completed(wsi)) return -1;
        return 0;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (h) {
            free(h->body);
            h->body = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"http", http_callback, sizeof(http_pss), 0, 0, NULL, 0},
    {SYNC_SUBPROTOCOL, ws_callback, sizeof(conn), 65536, 0, NULL, 0},
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
    sv = calloc(1, sizeof *sv);
    if (!sv) return CRDT_ENOMEM;
    sv->st = st;
    sv->cfg = cfg;
    sv->o = *o;
    sv->jobs_tail = &sv->jobs;
    sv->done_tail = &sv->done;
    pthread_mutex_init(&sv->mu, NULL);
    pthread_cond_init(&sv->cv_work, NULL);
    pthread_cond_init(&sv->cv_commit, NULL);

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
    info.options = LWS_SERVER_OPTION_HTTP_HEADERS_SECURITY_BEST_PRACTICES_ENFORCE;
    if (is_loopback(o->listen_host) && strchr(o->listen_host, ':') == NULL)
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    if (tls) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = o->tls_cert;
        info.ssl_private_key_filepath = o->tls_key;
    }
    static struct lws_http_mount mount;
    if (o->static_dir) {
        memset(&mount, 0, sizeof mount);
        mount.mountpoint = "/";
        mount.mountpoint_len = 1;
        mount.origin = o->static_dir;
        mount.def = "index.html";
        mount.origin_protocol = LWSMPRO_FILE;
        info.mounts = &mount;
    }
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

int sync_server_run(sync_server *sv)
{
    for (;;) {
        if (lws_service(sv->ctx, 0) < 0) break;
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
    /* Close every session with "going away". */
    for (conn *c = sv->conns; c; c = c->next) {
        c->close_code = LWS_CLOSE_STATUS_GOINGAWAY;
        lws_callback_on_writable(c->wsi);
    }
    uint64_t until = mono_ms() + 500;
    while (sv->conns && mono_ms() < until)
        if (lws_service(sv->ctx, 0) < 0) break;
    return SYNC_OK;
}

void sync_server_free(sync_server *sv)
{
    if (!sv) return;
    pthread_mutex_lock(&sv->mu);
    sv->threads_stop = true;
    pthread_cond_broadcast(&sv->cv_work);
    pthread_cond_broadcast(&sv->cv_commit);
    pthread_mutex_unlock(&sv->mu);
    for (int i = 0; i < sv->n_workers; i++) pthread_join(sv->workers[i], NULL);
    if (sv->writer_started) pthread_join(sv->writer, NULL);
    if (sv->ctx) lws_context_destroy(sv->ctx);
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
    free(sv->touched);
    free(sv->workers);
    pthread_mutex_destroy(&sv->mu);
    pthread_cond_destroy(&sv->cv_work);
    pthread_cond_destroy(&sv->cv_commit);
    free(sv);
}
