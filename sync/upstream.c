/*
 * upstream.c — the sending side of upward replication (issue 16): a street
 * server pushes every envelope it applied, verbatim and in server order, to
 * its district server, where it is enrolled as a relay device.
 *
 *   doorstepd --data DIR --upstream ws://DISTRICT:PORT/sync [--upstream-dir D]
 *
 * D (default DIR.upstream, beside the data directory) is the relay's
 * identity: a device directory of the C device library (its key, the
 * district's pinned server key), made once by `doorstepctl upstream enroll`.
 *
 * One thread: connect and authenticate (dsd_chan_open), then, from the
 * durable cursor (store meta "upstream_cursor", store/relay.c), read up to
 * 500 envelopes (192 KiB) of the log, send them as one `relay` frame with
 * the key records of their signers (signed here with the street's server
 * key, as in `changes`) and the street's audit entries about devices and
 * the quarantine since the admin cursor (admin records, signed the same
 * way), wait for the district's `ack`, and only then move both cursors
 * past them, in a write transaction of its own.  When caught up
 * it looks again every RELAY_IDLE_MS.  A lost connection, a timeout or a
 * retryable error: reconnect with a backoff (1 s doubling to 30 s) and
 * resend from the cursor.
 *
 * Invariants
 *   - The cursor moves only past envelopes the district acked, after its
 *     commit (the district acks after commit): a crash of either side
 *     resends at most one frame, which the district answers "duplicate".
 *   - The street's own work never waits on the district: this thread only
 *     reads the log, plus one small write per acked frame (the cursor).
 *   - Every frame from the district is bounded and checked (crdt_mp_check
 *     in the device library) before it is parsed.
 */
#include "sync.h"

#include <msgpack.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "doorstep_device.h"
#include "wire.h"

#define RELAY_MAX 500                 /* envelopes per frame (the server's max_push) */
#define RELAY_INFLIGHT 3              /* frames awaiting their ack (the server allows 4) */
#define KEYSIG_MAX 8192               /* key record signatures remembered */
#define RELAY_BYTES (192u << 10)      /* envelope bytes per frame */
#define RELAY_IDLE_MS 250             /* caught up: look at the log again after this */
#define RELAY_ACK_MS 60000            /* an ack must come within this */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000

struct sync_upstream {
    store *st;
    char url[512];
    char dir[1024];
    int log_level;
    pthread_t thread;
    atomic_bool stop;
    /* Key records signed so far (the thread's own): a street's phones are
     * signed for once, not once per frame.  Checked against the key read
     * from the store each time, so a changed key is signed again. */
    struct keysig { uint32_t dev, epoch; uint8_t pk[32], g[64]; } *keysigs;
    size_t n_keysigs;
    /* For status and tests: what the thread did (atomics; read anywhere). */
    atomic_uint_fast64_t cursor, relayed, quarantined, rejected;
    atomic_uint_fast64_t last_ack_ms;   /* wall clock of the last ack (0: none yet) */
    atomic_bool connected;
};

static void ulog(const sync_upstream *u, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ulog(const sync_upstream *u, int level, const char *fmt, ...)
{
    if (u->log_level < level) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "doorstepd: upstream: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Sleep ms in small steps; false if asked to stop meanwhile. */
static bool nap(sync_upstream *u, int ms)
{
    while (ms > 0 && !atomic_load(&u->stop)) {
        int step = ms < 100 ? ms : 100;
        struct timespec ts = {0, (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return !atomic_load(&u->stop);
}

static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* ---- one frame: the log after the cursor ------------------------------------------- */

typedef struct batch {
    crdt_buf envs;                   /* packed bin values */
    uint32_t n;
    uint64_t last;                   /* server seq of the last envelope */
    struct { uint32_t dev, epoch; } signer[RELAY_MAX];
    uint32_t n_signer;
    crdt_arena *arena;
} batch;

static int batch_add(uint64_t sseq, const uint8_t *env, size_t len, void *arg)
{
    batch *b = arg;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b->envs, crdt_buf_pack_write);
    msgpack_pack_bin_with_body(&pk, env, len);
    if (!b->envs.p) return CRDT_ENOMEM;
    b->n++;
    b->last = sseq;
    /* Its signer, for the key records (the server's own edits need none). */
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int err_op;
    crdt_arena_reset(b->arena);
    if (wire_envelope_decode(env, len, &crdt_limits_default, &db, &dl, &sig) ||
        crdt_delta_decode(db, dl, &crdt_limits_default, b->arena, &d, &err_op) || d.dev == 0)
        return 0; /* the district keeps what it cannot verify, and says so */
    for (uint32_t i = 0; i < b->n_signer; i++)
        if (b->signer[i].dev == d.dev && b->signer[i].epoch == d.epoch) return 0;
    b->signer[b->n_signer].dev = d.dev;
    b->signer[b->n_signer].epoch = d.epoch;
    b->n_signer++;
    return 0;
}

/* The street's signature of k's key record: remembered, or made now. */
static int key_sig(sync_upstream *u, store_txn *t, const store_key *k, uint8_t g[64])
{
    for (size_t i = 0; i < u->n_keysigs; i++) {
        const struct keysig *c = &u->keysigs[i];
        if (c->dev == k->dev && c->epoch == k->epoch && !memcmp(c->pk, k->pk, 32)) {
            memcpy(g, c->g, 64);
            return 0;
        }
    }
    uint8_t m[WIRE_KEY_MSG_BYTES];
    wire_key_msg(k->dev, k->epoch, k->pk, m);
    int rc = store_server_sign(t, m, sizeof m, g);
    if (rc) return rc;
    if (!u->keysigs && !(u->keysigs = malloc(KEYSIG_MAX * sizeof *u->keysigs))) return 0;
    if (u->n_keysigs == KEYSIG_MAX) u->n_keysigs = 0; /* start again: still correct */
    struct keysig *c = &u->keysigs[u->n_keysigs++];
    c->dev = k->dev;
    c->epoch = k->epoch;
    memcpy(c->pk, k->pk, 32);
    memcpy(c->g, g, 64);
    return 0;
}

/* ---- admin records: the street's audit entries about devices and quarantine -------- */

typedef struct admins {
    store_txn *t;
    crdt_buf recs;                   /* packed {b, g} maps */
    uint32_t n;
    uint64_t scanned;                /* last aseq looked at (sent or not) */
    int err;
} admins;

/* The street device an audit entry of a device action is about, or 0:
 * "device N ..." (enroll, scope, revoke, rotation) or "... dev=N ..." (freeze). */
static uint32_t audit_device(const store_audit *e)
{
    const char *p = strstr(e->detail, "dev=");
    unsigned long v = 0;
    if (p) v = strtoul(p + 4, NULL, 10);
    else if (!strncmp(e->detail, "device ", 7)) v = strtoul(e->detail + 7, NULL, 10);
    return v <= UINT32_MAX ? (uint32_t)v : 0;
}

static int admin_add(const store_audit *e, void *arg)
{
    admins *a = arg;
    bool dev_act = !strncmp(e->action, "device.", 7);
    if (a->n == SYNC_ADMIN_MAX) return 1; /* full: the rest next frame */
    a->scanned = e->aseq;
    if (!dev_act && strncmp(e->action, "quarantine.", 11)) return 0; /* not for the district */
    crdt_buf b = {0}, m = {0};
    msgpack_packer pk;
    store_device d;
    uint32_t dev = dev_act ? audit_device(e) : 0;
    bool has_dev = dev && store_device_get(a->t, dev, &d) == STORE_OK;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    msgpack_pack_map(&pk, has_dev ? 8 : 5); /* a, act, at, by, [d], [rs], [st], x */
    pstr(&pk, "a");
    msgpack_pack_uint64(&pk, e->aseq);
    pstr(&pk, "act");
    pstr(&pk, e->action);
    pstr(&pk, "at");
    msgpack_pack_uint64(&pk, e->at_ms);
    pstr(&pk, "by");
    pstr(&pk, e->actor);
    if (has_dev) {
        pstr(&pk, "d");
        msgpack_pack_uint32(&pk, dev);
        pstr(&pk, "rs");
        msgpack_pack_uint64(&pk, d.revoked_at_seq);
        pstr(&pk, "st");
        msgpack_pack_uint8(&pk, d.state);
    }
    pstr(&pk, "x");
    pstr(&pk, e->detail);
    uint8_t g[64];
    int rc = b.p && b.n <= SYNC_ADMIN_BYTES ? sync_admin_msg(b.p, b.n, &m) : CRDT_ENOMEM;
    if (!rc) rc = store_server_sign(a->t, m.p, m.n, g);
    if (!rc) {
        msgpack_packer_init(&pk, &a->recs, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 2);
        pstr(&pk, "b");
        msgpack_pack_bin_with_body(&pk, b.p, b.n);
        pstr(&pk, "g");
        msgpack_pack_bin_with_body(&pk, g, 64);
        if (!a->recs.p) rc = CRDT_ENOMEM;
        else a->n++;
    }
    crdt_buf_free(&b);
    crdt_buf_free(&m);
    if (rc) a->err = rc;
    return rc;
}

/* Build the next `relay` frame after `after` (envelopes) and `aafter`
 * (audit entries) into f; *n envelopes and *na admin records in it, both 0
 * when caught up; *last and *alast: the cursors once it is acked. */
static int build_frame(sync_upstream *u, uint64_t after, uint64_t aafter, uint64_t id, crdt_buf *f,
                       uint32_t *n, uint32_t *na, uint64_t *last, uint64_t *alast)
{
    batch b;
    admins ad;
    store_txn *t = NULL;
    uint64_t next = 0;
    memset(&b, 0, sizeof b);
    memset(&ad, 0, sizeof ad);
    *n = *na = 0;
    *alast = aafter;
    crdt_buf_reset(f);
    if (!(b.arena = crdt_arena_new(0))) return CRDT_ENOMEM;
    int rc = store_begin(u->st, STORE_RDONLY, &t);
    if (!rc) rc = store_log_read(t, after, RELAY_MAX, RELAY_BYTES, batch_add, &b);
    ad.t = t;
    ad.scanned = aafter;
    if (!rc) {
        rc = store_audit_read(t, aafter, 1000, admin_add, &ad, &next);
        if (rc == 1) rc = 0; /* a frame's worth */
        if (!rc) rc = ad.err;
    }
    if (rc || (b.n == 0 && ad.scanned == aafter)) goto done;
    msgpack_packer pk;
    msgpack_packer_init(&pk, f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 6); /* a, d, id, k, srv, t */
    pstr(&pk, "a");
    msgpack_pack_array(&pk, ad.n);
    if (ad.recs.n) crdt_buf_append(f, ad.recs.p, ad.recs.n);
    pstr(&pk, "d");
    msgpack_pack_array(&pk, b.n);
    if (b.envs.n) crdt_buf_append(f, b.envs.p, b.envs.n);
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pstr(&pk, "k");
    uint32_t nk = 0;
    store_key keys[RELAY_MAX];
    for (uint32_t i = 0; i < b.n_signer; i++) {
        rc = store_key_get(t, b.signer[i].dev, b.signer[i].epoch, &keys[nk]);
        if (rc == STORE_ENOTFOUND) continue; /* cannot be: it was verified with it */
        if (rc) goto done;
        nk++;
    }
    msgpack_pack_array(&pk, nk);
    for (uint32_t i = 0; i < nk; i++) {
        uint8_t g[64];
        if ((rc = key_sig(u, t, &keys[i], g))) goto done;
        msgpack_pack_map(&pk, 4);
        pstr(&pk, "d");
        msgpack_pack_uint32(&pk, keys[i].dev);
        pstr(&pk, "e");
        msgpack_pack_uint32(&pk, keys[i].epoch);
        pstr(&pk, "g");
        msgpack_pack_bin_with_body(&pk, g, 64);
        pstr(&pk, "p");
        msgpack_pack_bin_with_body(&pk, keys[i].pk, 32);
    }
    pstr(&pk, "srv");
    msgpack_pack_bin_with_body(&pk, store_server_pk(u->st), 32);
    pstr(&pk, "t");
    pstr(&pk, "relay");
    if (!f->p) {
        rc = CRDT_ENOMEM;
        goto done;
    }
    *n = b.n;
    *na = ad.n;
    *last = b.n ? b.last : after;
    *alast = ad.scanned;
done:
    store_abort(t);
    crdt_buf_free(&ad.recs);
    crdt_buf_free(&b.envs);
    crdt_arena_free(b.arena);
    return rc;
}

/* ---- the district's answer ------------------------------------------------------------- */

static bool str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           !memcmp(o->via.str.ptr, s, o->via.str.size);
}

enum { ACK_OK = 0, ACK_RETRY = 1, ACK_FATAL = 2 };

/* Read the answer to frame `id` carrying n envelopes: ACK_OK (every entry
 * answered: the cursor may move), ACK_RETRY (a retryable error: resend),
 * ACK_FATAL (the district refuses this relay: log, back off long). */
static int read_ack(sync_upstream *u, dsd_chan *ch, uint64_t id, uint32_t n)
{
    const uint8_t *p;
    size_t len, off = 0;
    int waited = 0;
    for (;;) {
        /* In slices, so that a stop request (SIGTERM) is not held up by a
         * district that does not answer. */
        int rc = dsd_chan_recv(ch, 1000, &p, &len);
        if (rc == DSD_ETIMEOUT && !atomic_load(&u->stop) && (waited += 1000) < RELAY_ACK_MS)
            continue;
        if (rc) return ACK_RETRY; /* connection lost, timeout or stop: reconnect */
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        off = 0;
        if (msgpack_unpack_next(&up, (const char *)p, len, &off) != MSGPACK_UNPACK_SUCCESS) {
            msgpack_unpacked_destroy(&up);
            return ACK_RETRY;
        }
        const msgpack_object *m = &up.data, *t = wire_mp_get(m, "t"), *fid = wire_mp_get(m, "id");
        bool ours = fid && fid->type == MSGPACK_OBJECT_POSITIVE_INTEGER && fid->via.u64 == id;
        int res = -1;
        if (str_is(t, "changes")) {
            res = -1; /* not subscribed: ignore anything else */
        } else if (str_is(t, "error") && ours) {
            const msgpack_object *c = wire_mp_get(m, "c"), *msg = wire_mp_get(m, "m");
            int64_t code = c && (c->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) ? c->via.i64 : 0;
            ulog(u, 1, "the district refused a frame: %.*s (code %lld)",
                 msg && msg->type == MSGPACK_OBJECT_STR ? (int)msg->via.str.size : 0,
                 msg && msg->type == MSGPACK_OBJECT_STR ? msg->via.str.ptr : "",
                 (long long)code);
            res = sync_retryable((int)code) ? ACK_RETRY : ACK_FATAL;
        } else if (str_is(t, "ack") && ours) {
            const msgpack_object *r = wire_mp_get(m, "r");
            if (!r || r->type != MSGPACK_OBJECT_ARRAY || r->via.array.size != n) {
                ulog(u, 1, "malformed ack from the district");
                res = ACK_RETRY;
            } else {
                res = ACK_OK;
                for (uint32_t i = 0; i < n; i++) {
                    const msgpack_object *e = &r->via.array.ptr[i], *rr = wire_mp_get(e, "r");
                    if (str_is(rr, "applied") || str_is(rr, "duplicate")) {
                        atomic_fetch_add(&u->relayed, 1);
                    } else if (str_is(rr, "quarantined")) {
                        atomic_fetch_add(&u->quarantined, 1);
                    } else {
                        const msgpack_object *c = wire_mp_get(e, "c");
                        int64_t code = c && c->type == MSGPACK_OBJECT_NEGATIVE_INTEGER
                                           ? c->via.i64 : 0;
                        if (code == STORE_ERELAYKEY || sync_retryable((int)code)) {
                            ulog(u, 1, "the district did not take the frame: %s",
                                 store_strerror((int)code));
                            res = code == STORE_ERELAYKEY ? ACK_FATAL : ACK_RETRY;
                            break;
                        }
                        /* A definite refusal, with its reason: logged here,
                         * the envelope stays in this street's log. */
                        atomic_fetch_add(&u->rejected, 1);
                        ulog(u, 1, "the district rejected a relayed envelope: %s (code %lld)",
                             store_strerror((int)code), (long long)code);
                    }
                }
            }
        }
        msgpack_unpacked_destroy(&up);
        if (res >= 0) return res;
    }
}

/* ---- the thread ------------------------------------------------------------------------- */

/* A frame sent and not yet acked: what its ack lets the cursors move to. */
typedef struct inflight {
    uint64_t id, last, alast;
    uint32_t n;
} inflight;

/* Move the durable cursors (after the district acked up to there). */
static int save_cursors(sync_upstream *u, uint64_t last, uint64_t alast)
{
    store_txn *t = NULL;
    int rc;
    for (;;) {
        rc = store_begin(u->st, STORE_RW, &t);
        if (!rc) rc = store_upstream_cursor_set(t, last);
        if (!rc) rc = store_upstream_admin_cursor_set(t, alast);
        if (!rc) rc = store_commit(t);
        else store_abort(t);
        if (rc != STORE_EMAPFULL || store_grow(u->st)) break;
    }
    return rc;
}

/*
 * One connection: relay until it fails or we are asked to stop, with up to
 * RELAY_INFLIGHT frames in flight (the district verifies them in parallel
 * and acks them in order).  Sets *progress if a frame was acked.  Any
 * failure ends the connection: the next one resends from the durable
 * cursors, and the district answers what it already has as duplicates.
 */
static int relay_session(sync_upstream *u, dsd_chan *ch, bool *progress)
{
    crdt_buf f = {0};
    uint64_t id = 1, cursor = 0, acursor = 0;
    store_txn *t = NULL;
    inflight q[RELAY_INFLIGHT];
    int qn = 0, res = ACK_RETRY;
    int rc = store_begin(u->st, STORE_RDONLY, &t);
    if (!rc) rc = store_upstream_cursor(t, &cursor);
    if (!rc) rc = store_upstream_admin_cursor(t, &acursor);
    store_abort(t);
    if (rc) {
        ulog(u, 1, "cannot read the cursor: %s", store_strerror(rc));
        return ACK_RETRY;
    }
    atomic_store(&u->cursor, cursor);
    uint64_t scur = cursor, sacur = acursor; /* what has been sent */
    while (!atomic_load(&u->stop)) {
        while (qn < RELAY_INFLIGHT) {
            uint32_t n = 0, na = 0;
            uint64_t last = 0, alast = 0;
            if ((rc = build_frame(u, scur, sacur, id, &f, &n, &na, &last, &alast))) {
                ulog(u, 1, "cannot read the log: %s", store_strerror(rc));
                goto out;
            }
            if (n == 0 && alast == sacur) break; /* nothing more for now */
            if (dsd_chan_send(ch, f.p, f.n)) {
                ulog(u, 2, "connection lost while sending");
                goto out;
            }
            q[qn++] = (inflight){id++, last, alast, n};
            scur = last;
            sacur = alast;
        }
        if (qn == 0) {
            if (!nap(u, RELAY_IDLE_MS)) break;
            continue;
        }
        res = read_ack(u, ch, q[0].id, q[0].n);
        if (res != ACK_OK) goto out;
        /* Acked, so durable at the district: now move the cursors. */
        if ((rc = save_cursors(u, q[0].last, q[0].alast))) {
            ulog(u, 1, "cannot record the cursor: %s", store_strerror(rc));
            res = ACK_RETRY;
            goto out;
        }
        cursor = q[0].last;
        atomic_store(&u->cursor, cursor);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        atomic_store(&u->last_ack_ms, (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000);
        *progress = true;
        ulog(u, 3, "relayed up to server seq %llu", (unsigned long long)cursor);
        memmove(q, q + 1, (size_t)(qn - 1) * sizeof *q);
        qn--;
    }
    res = ACK_OK;
out:
    crdt_buf_free(&f);
    return res;
}

static void *upstream_main(void *arg)
{
    sync_upstream *u = arg;
    char err[256], schema[1100];
    dsd *h = NULL;
    int backoff = BACKOFF_MIN_MS;
    /* The device library checks deltas with a schema file: the street's. */
    snprintf(schema, sizeof schema, "%s/schema.json", u->dir);
    size_t sn = 0;
    const uint8_t *sj = store_schema_json(u->st, &sn);
    FILE *sf = fopen(schema, "w");
    if (!sf || fwrite(sj, 1, sn, sf) != sn || fclose(sf)) {
        ulog(u, 0, "cannot write %s; not relaying", schema);
        return NULL;
    }
    if (dsd_open(u->dir, schema, &h, err, sizeof err)) {
        ulog(u, 0, "%s; not relaying", err);
        return NULL;
    }
    dsd_status stt;
    if (dsd_status_get(h, &stt) || !stt.dev) {
        ulog(u, 0, "%s is not enrolled at the district (doorstepctl upstream enroll); not relaying",
             u->dir);
        dsd_close(h);
        return NULL;
    }
    ulog(u, 1, "relaying to %s as device %u", u->url, stt.dev);
    while (!atomic_load(&u->stop)) {
        dsd_chan *ch = NULL;
        bool progress = false;
        int rc = dsd_chan_open(h, u->url, 10000, &ch);
        int res = ACK_RETRY;
        if (rc) {
            ulog(u, 1, "%s: %s", u->url, dsd_errmsg(h));
            if (rc == DSD_EREVOKED || rc == DSD_ESERVERKEY || rc == -305 /* SYNC_EREVOKED */)
                res = ACK_FATAL;
        } else {
            atomic_store(&u->connected, true);
            res = relay_session(u, ch, &progress);
            atomic_store(&u->connected, false);
            dsd_chan_close(ch, res != ACK_OK);
        }
        if (progress) backoff = BACKOFF_MIN_MS;
        int wait = res == ACK_FATAL ? BACKOFF_MAX_MS : backoff;
        if (!nap(u, wait)) break;
        if (backoff < BACKOFF_MAX_MS) backoff *= 2;
    }
    dsd_close(h);
    free(u->keysigs);
    u->keysigs = NULL;
    return NULL;
}

int sync_upstream_start(store *st, const char *url, const char *dir, int log_level,
                        sync_upstream **out, char *err, size_t errlen)
{
    struct stat sb;
    *out = NULL;
    if (!url || strncmp(url, "ws://", 5) || strlen(url) >= sizeof((sync_upstream *)0)->url) {
        snprintf(err, errlen, "--upstream: expected ws://HOST:PORT[/sync], got '%s'",
                 url ? url : "");
        return SYNC_EPROTO;
    }
    if (!dir || strlen(dir) >= sizeof((sync_upstream *)0)->dir || stat(dir, &sb) ||
        !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "upstream directory %s does not exist: enroll first with "
                 "`doorstepctl upstream enroll URL TOKEN`", dir ? dir : "(none)");
        return STORE_ENOTFOUND;
    }
    static bool dsd_ready;
    if (!dsd_ready) {
        if (dsd_global_init()) {
            snprintf(err, errlen, "the device library failed to initialise");
            return CRDT_ENOMEM;
        }
        dsd_ready = true;
    }
    sync_upstream *u = calloc(1, sizeof *u);
    if (!u) return CRDT_ENOMEM;
    u->st = st;
    snprintf(u->url, sizeof u->url, "%s", url);
    snprintf(u->dir, sizeof u->dir, "%s", dir);
    u->log_level = log_level;
    if (pthread_create(&u->thread, NULL, upstream_main, u)) {
        free(u);
        snprintf(err, errlen, "cannot start the upstream thread");
        return CRDT_ENOMEM;
    }
    *out = u;
    return SYNC_OK;
}

void sync_upstream_stop(sync_upstream *u)
{
    if (!u) return;
    atomic_store(&u->stop, true);
    pthread_join(u->thread, NULL);
    free(u);
}

void sync_upstream_metrics(void *arg, crdt_buf *out)
{
    sync_upstream *u = arg;
    char line[512];
    uint64_t last = 0, cur = atomic_load(&u->cursor);
    store_txn *t = NULL;
    if (!store_begin(u->st, STORE_RDONLY, &t)) {
        store_last_sseq(t, &last);
        store_abort(t);
    }
    int n = snprintf(line, sizeof line,
                     "# HELP doorstep_upstream_connected 1 while the relay to the district is "
                     "connected.\n# TYPE doorstep_upstream_connected gauge\n"
                     "doorstep_upstream_connected %d\n"
                     "# HELP doorstep_upstream_behind Envelopes of the log the district has not "
                     "acked yet.\n# TYPE doorstep_upstream_behind gauge\n"
                     "doorstep_upstream_behind %llu\n"
                     "# TYPE doorstep_upstream_acked_seq gauge\ndoorstep_upstream_acked_seq %llu\n"
                     "# TYPE doorstep_upstream_last_ack_ms gauge\n"
                     "doorstep_upstream_last_ack_ms %llu\n",
                     atomic_load(&u->connected) ? 1 : 0,
                     (unsigned long long)(last > cur ? last - cur : 0), (unsigned long long)cur,
                     (unsigned long long)atomic_load(&u->last_ack_ms));
    if (n > 0) crdt_buf_append(out, line, (size_t)n);
    n = snprintf(line, sizeof line,
                 "# HELP doorstep_upstream_envelopes_total The district's answers to relayed "
                 "envelopes.\n# TYPE doorstep_upstream_envelopes_total counter\n"
                 "doorstep_upstream_envelopes_total{result=\"taken\"} %llu\n"
                 "doorstep_upstream_envelopes_total{result=\"quarantined\"} %llu\n"
                 "doorstep_upstream_envelopes_total{result=\"rejected\"} %llu\n",
                 (unsigned long long)atomic_load(&u->relayed),
                 (unsigned long long)atomic_load(&u->quarantined),
                 (unsigned long long)atomic_load(&u->rejected));
    if (n > 0) crdt_buf_append(out, line, (size_t)n);
}
