/*
 * session.c — the per-connection protocol logic, as a pure function:
 * (session, input message, store, time) -> (frames, push job, close code).
 *
 * States: HELLO (hello sent, waiting for auth) -> READY (authenticated).
 * Everything but auth is refused before READY; auth is refused after.
 *
 * Invariants
 *   - Every input message is walked by crdt_mp_check under the configured
 *     limits before msgpack-c parses it; nothing here trusts a length.
 *   - A push never produces an ack here: it becomes a sync_job, and the ack
 *     is built only in sync_session_job_done, after the commit returned.
 *   - Read transactions are opened and closed within one call.
 *   - Live changes are produced one frame at a time (sync_session_live), so
 *     the caller's writeable callback paces a slow reader: nothing is
 *     buffered beyond one page per session.
 */
#include "sync.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const sync_config sync_config_default = {
    CRDT_LIMITS_DEFAULT_INIT, 500, 500, 192 * 1024, 24ull * 3600 * 1000, 10, 4, 200, 5000, 10000
};

const char *sync_strerror(int code)
{
    switch (code) {
    case SYNC_OK: return "ok";
    case SYNC_EPROTO: return "frame is malformed for its type";
    case SYNC_EFRAME: return "unknown frame type";
    case SYNC_ESTATE: return "frame not allowed now (authenticate first, once)";
    case SYNC_EUNKNOWN_DEVICE: return "unknown device";
    case SYNC_EFROZEN: return "device frozen: a cloned key was detected; contact the station";
    case SYNC_EREVOKED: return "device revoked";
    case SYNC_EBADAUTH: return "authentication signature does not verify";
    case SYNC_EEPOCH: return "key epoch unknown, retired or revoked";
    case SYNC_ETOOMANY: return "too many deltas in one push";
    case SYNC_ESCOPE: return "record outside this device's households";
    case SYNC_EDEVICE: return "delta signed for another device";
    case SYNC_EBUSY: return "server busy; retry later";
    case SYNC_EUNAVAILABLE: return "server cannot store data now; retry later";
    case SYNC_ESHUTDOWN: return "server shutting down; retry later";
    case SYNC_EAUTHTIME: return "not authenticated in time";
    case SYNC_EROTATE: return "key rotation required before pushing";
    case SYNC_ERATE: return "this device is pushing faster than its rate limit; retry later";
    default: return store_strerror(code);
    }
}

/* The ack's "m" for a rejected delta: a value the schema refuses reads as
 * it does for staff and in imports (crdt_value_message). */
static const char *reject_text(int code)
{
    switch (code) {
    case CRDT_EVALUE: case CRDT_ETEXT: case CRDT_EBLANK: case CRDT_ERANGE: case CRDT_EDATE:
    case CRDT_EENUM: case CRDT_EIDNUM: case CRDT_EPHONE: case CRDT_ERECID: case CRDT_EMISSING:
    case CRDT_EUNKNOWNKEY: case CRDT_EKEY:
        return crdt_value_message(code);
    default: return sync_strerror(code);
    }
}

bool sync_retryable(int code)
{
    return code == SYNC_EBUSY || code == SYNC_EUNAVAILABLE || code == SYNC_ESHUTDOWN ||
           code == SYNC_ERATE || store_retryable(code);
}

/* ---- frames ------------------------------------------------------------------- */

void sync_frame_free(sync_frame *f) { free(f); }

void sync_frames_free(sync_frame *list)
{
    while (list) {
        sync_frame *n = list->next;
        free(list);
        list = n;
    }
}

sync_frame *sync_frame_new(const uint8_t *p, size_t n)
{
    sync_frame *f = malloc(sizeof *f + SYNC_FRAME_PRE + n);
    if (!f) return NULL;
    f->next = NULL;
    f->len = n;
    memcpy(f->buf + SYNC_FRAME_PRE, p, n);
    return f;
}

void sync_out_init(sync_out *o)
{
    o->frames = NULL;
    o->tail = &o->frames;
    o->job = NULL;
    o->close_code = 0;
    o->wake_live = false;
    o->synced = false;
}

void sync_out_append(sync_out *o, sync_frame *f)
{
    if (!f) return;
    f->next = NULL;
    *o->tail = f;
    o->tail = &f->next;
}

/* msgpack-c writes frames through crdt_buf_pack_write (crdt.h): frames are
 * packed without checking every pack call, so a failed append must fail the
 * whole frame; frame_of() and sync_frame_error() then build no frame. */

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

sync_frame *sync_frame_error(int code, const char *msg, uint64_t req_id)
{
    return sync_frame_error_ra(code, msg, req_id, 0);
}

sync_frame *sync_frame_error_ra(int code, const char *msg, uint64_t req_id, uint64_t retry_ms)
{
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    /* keys in bytewise order: c, id, m, r, ra, t */
    msgpack_pack_map(&pk, 4 + (req_id ? 1 : 0) + (retry_ms ? 1 : 0));
    pk_str(&pk, "c");
    msgpack_pack_int64(&pk, code);
    if (req_id) {
        pk_str(&pk, "id");
        msgpack_pack_uint64(&pk, req_id);
    }
    pk_str(&pk, "m");
    pk_str(&pk, msg ? msg : sync_strerror(code));
    pk_str(&pk, "r");
    if (sync_retryable(code)) msgpack_pack_true(&pk);
    else msgpack_pack_false(&pk);
    if (retry_ms) {
        pk_str(&pk, "ra");
        msgpack_pack_uint64(&pk, retry_ms);
    }
    pk_str(&pk, "t");
    pk_str(&pk, "error");
    sync_frame *f = b.p ? sync_frame_new(b.p, b.n) : NULL;
    crdt_buf_free(&b);
    return f;
}

static sync_frame *frame_of(crdt_buf *b)
{
    sync_frame *f = b->p ? sync_frame_new(b->p, b->n) : NULL;
    crdt_buf_free(b);
    return f;
}

/* ---- sessions ---------------------------------------------------------------- */

enum { ST_HELLO = 1, ST_READY = 2 };

struct sync_session {
    store *st;
    const sync_config *cfg;
    uint8_t nonce[SYNC_NONCE_BYTES];
    int state;
    uint32_t dev, epoch;
    store_ids scope;            /* sorted household ids */
    bool subscribed;
    bool rotate_required;
    int restricted;             /* SYNC_EREVOKED: may push (into quarantine), not read */
    bool relay;                 /* a relay (scope STORE_RELAY_SCOPE): sends `relay`, not `push` */
    uint64_t cursor;            /* live: last sseq sent */
    uint32_t inflight;
    uint64_t serial;
    sync_limiter *limiter;      /* the server's, shared by all sessions; may be NULL */
    /* Key records this session already signed (page_key_records), so a
     * device pulling page after page, or live, costs one server signature
     * per signer, not one per page.  Allocated on first use. */
    struct keysig { uint32_t dev, epoch; uint8_t pk[32], sig[64]; } *keysigs;
    uint32_t n_keysigs, next_keysig;
};

#define KEYSIG_CACHE 32          /* key records a session remembers (round robin) */

sync_session *sync_session_new(store *st, const sync_config *cfg,
                               const uint8_t nonce[SYNC_NONCE_BYTES])
{
    static uint64_t next_serial; /* only read/written on the event-loop thread */
    sync_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->st = st;
    s->cfg = cfg;
    memcpy(s->nonce, nonce, SYNC_NONCE_BYTES);
    s->state = ST_HELLO;
    s->serial = ++next_serial;
    return s;
}

void sync_session_free(sync_session *s)
{
    if (!s) return;
    store_ids_free(&s->scope);
    free(s->keysigs);
    free(s);
}

void sync_session_set_limiter(sync_session *s, sync_limiter *l) { s->limiter = l; }

bool sync_session_authed(const sync_session *s) { return s->state == ST_READY; }
uint32_t sync_session_device(const sync_session *s) { return s->dev; }
uint32_t sync_session_inflight(const sync_session *s) { return s->inflight; }

int sync_session_hello(sync_session *s, uint64_t now_ms, sync_out *out)
{
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 5); /* n, now, srv, t, v */
    pk_str(&pk, "n");
    msgpack_pack_bin_with_body(&pk, s->nonce, SYNC_NONCE_BYTES);
    pk_str(&pk, "now");
    msgpack_pack_uint64(&pk, now_ms);
    pk_str(&pk, "srv");
    msgpack_pack_bin_with_body(&pk, store_server_pk(s->st), 32);
    pk_str(&pk, "t");
    pk_str(&pk, "hello");
    pk_str(&pk, "v");
    msgpack_pack_uint32(&pk, SYNC_PROTOCOL_VERSION);
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    return SYNC_OK;
}

/* ---- parsing helpers ------------------------------------------------------------ */

static bool get_u64(const msgpack_object *map, const char *key, uint64_t *v)
{
    const msgpack_object *o = wire_mp_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *v = o->via.u64;
    return true;
}

static bool get_bin(const msgpack_object *map, const char *key, size_t len, const uint8_t **p)
{
    const msgpack_object *o = wire_mp_get(map, key);
    if (!o || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != len) return false;
    *p = (const uint8_t *)o->via.bin.ptr;
    return true;
}

/* Only these keys may appear (besides "t"). */
static bool only_keys(const msgpack_object *map, const char *const *keys, size_t n)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        bool ok = kv->key.via.str.size == 1 && kv->key.via.str.ptr[0] == 't';
        for (size_t j = 0; j < n && !ok; j++)
            ok = kv->key.via.str.size == strlen(keys[j]) &&
                 memcmp(kv->key.via.str.ptr, keys[j], kv->key.via.str.size) == 0;
        if (!ok) return false;
    }
    return true;
}

static void fail(sync_out *out, int code, uint64_t id, int close_code)
{
    sync_out_append(out, sync_frame_error(code, NULL, id));
    if (close_code) out->close_code = close_code;
}

/* A read (pull, subscribe, snapshot) by a soft-revoked device: refused,
 * the connection stays open for pushes. */
static void fail_restricted(sync_out *out, uint64_t id)
{
    sync_out_append(out, sync_frame_error(SYNC_EREVOKED,
                                          "device revoked (soft): push only, reads refused; "
                                          "delete local data",
                                          id));
}

static int welcome(sync_session *s, uint32_t dev, uint32_t epoch, uint64_t now_ms,
                   sync_out *out);

/* ---- auth ------------------------------------------------------------------------ */

static int on_auth(sync_session *s, const msgpack_object *m, uint64_t now_ms, sync_out *out)
{
    static const char *const keys[] = {"d", "e", "n", "s"};
    uint64_t dev, epoch;
    const uint8_t *cn, *sig;
    store_txn *t = NULL;
    store_device dv;
    store_key key;
    int rc;
    if (s->state != ST_HELLO) {
        fail(out, SYNC_ESTATE, 0, 1008);
        return SYNC_OK;
    }
    if (!only_keys(m, keys, 4) || !get_u64(m, "d", &dev) || !get_u64(m, "e", &epoch) ||
        dev == 0 || dev > UINT32_MAX || epoch == 0 || epoch > UINT32_MAX ||
        !get_bin(m, "n", SYNC_NONCE_BYTES, &cn) || !get_bin(m, "s", 64, &sig)) {
        fail(out, SYNC_EPROTO, 0, 1008);
        return SYNC_OK;
    }
    if ((rc = store_begin(s->st, STORE_RDONLY, &t))) {
        fail(out, SYNC_EUNAVAILABLE, 0, 1011);
        return SYNC_OK;
    }
    rc = store_device_get(t, (uint32_t)dev, &dv);
    int code = 0;
    if (rc == STORE_ENOTFOUND) code = SYNC_EUNKNOWN_DEVICE;
    else if (rc) code = SYNC_EUNAVAILABLE;
    else if (dv.state == STORE_DEV_FROZEN) code = SYNC_EFROZEN;
    else if (dv.state == STORE_DEV_REVOKED_HARD) code = SYNC_EREVOKED;
    /* A soft-revoked (lost, retired) phone may still hand in what it
     * recorded offline: it authenticates in a restricted mode where pushes
     * are accepted (beyond the seq held at revocation they go to quarantine)
     * and nothing is sent to it. */
    if (!code) {
        /* A soft revocation also revokes the phone's key; it may still sign
         * in with it (restricted mode) to hand in its offline work. */
        rc = store_key_get(t, (uint32_t)dev, (uint32_t)epoch, &key);
        bool soft = dv.state == STORE_DEV_REVOKED_SOFT && epoch == dv.epoch &&
                    key.state == STORE_KEY_REVOKED;
        if (rc || (key.state != STORE_KEY_ACTIVE && !soft)) code = SYNC_EEPOCH;
    }
    if (!code) {
        uint8_t msg[WIRE_AUTH_MSG_BYTES];
        wire_auth_msg(store_server_pk(s->st), s->nonce, cn, (uint32_t)dev, (uint32_t)epoch, msg);
        if (crypto_sign_verify_detached(sig, msg, sizeof msg, key.pk) != 0) code = SYNC_EBADAUTH;
    }
    store_abort(t);
    if (code) {
        fail(out, code, 0, code == SYNC_EUNAVAILABLE ? 1011 : 1008);
        return SYNC_OK;
    }
    return welcome(s, (uint32_t)dev, (uint32_t)epoch, now_ms, out);
}

/* Authenticated as dev/epoch: load scope and chain state, send welcome. */
static int welcome(sync_session *s, uint32_t dev, uint32_t epoch, uint64_t now_ms, sync_out *out)
{
    store_txn *t = NULL;
    store_device dv;
    uint64_t head = 0, cur = 0;
    uint8_t hh[CRDT_HASH_BYTES];
    store_ids_free(&s->scope);
    if (store_begin(s->st, STORE_RDONLY, &t) || store_device_get(t, dev, &dv) ||
        store_device_scope_get(t, dev, &s->scope) || store_chain_head(t, dev, &head, hh) ||
        store_last_sseq(t, &cur)) {
        store_abort(t);
        fail(out, SYNC_EUNAVAILABLE, 0, 1011);
        return SYNC_OK;
    }
    store_abort(t);
    s->state = ST_READY;
    s->dev = dev;
    s->epoch = epoch;
    s->restricted = dv.state == STORE_DEV_REVOKED_SOFT ? SYNC_EREVOKED : 0;
    s->relay = s->scope.n == 1 && !strcmp(s->scope.id[0], STORE_RELAY_SCOPE);
    /* A revoked key is not rotated: restricted mode only hands work in. */
    s->rotate_required = !s->restricted && (dv.flags & STORE_DEVF_ROTATE_REQUIRED);

    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    /* cur, d, e, h, now, req, scope, seq, t */
    msgpack_pack_map(&pk, 9);
    pk_str(&pk, "cur");
    msgpack_pack_uint64(&pk, cur);
    pk_str(&pk, "d");
    msgpack_pack_uint32(&pk, s->dev);
    pk_str(&pk, "e");
    msgpack_pack_uint32(&pk, s->epoch);
    pk_str(&pk, "h");
    msgpack_pack_bin_with_body(&pk, hh, CRDT_HASH_BYTES);
    pk_str(&pk, "now");
    msgpack_pack_uint64(&pk, now_ms);
    pk_str(&pk, "req");
    msgpack_pack_array(&pk, (s->rotate_required ? 1 : 0) + (s->restricted ? 1 : 0));
    if (s->rotate_required) pk_str(&pk, "rotate");
    if (s->restricted) pk_str(&pk, "revoked"); /* push only; delete local data */
    pk_str(&pk, "scope");
    msgpack_pack_array(&pk, s->scope.n);
    for (size_t i = 0; i < s->scope.n; i++) pk_str(&pk, s->scope.id[i]);
    pk_str(&pk, "seq");
    msgpack_pack_uint64(&pk, head);
    pk_str(&pk, "t");
    pk_str(&pk, "welcome");
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    return SYNC_OK;
}


/* ---- enroll and rotate ------------------------------------------------------------ */

static void be32p(uint8_t **p, uint32_t v)
{
    for (int i = 3; i >= 0; i--) *(*p)++ = (uint8_t)(v >> (8 * i));
}

/* Expand a token scope ("H123", or "community/grid") into household ids. */
static int expand_scope(store_txn *t, const store_token *tok, store_ids *out)
{
    size_t cap = 0;
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < tok->n_scope; i++) {
        const char *e = tok->scope[i];
        const char *slash = strchr(e, '/');
        store_ids page = {0};
        if (slash) {
            char comm[STORE_SCOPE_ITEM_MAX + 1];
            size_t cl = (size_t)(slash - e);
            memcpy(comm, e, cl);
            comm[cl] = 0;
            int rc = store_grid_households(t, comm, slash + 1, "", SIZE_MAX, &page);
            if (rc) {
                store_ids_free(out);
                return rc;
            }
        } else {
            page.n = 1;
            page.id = calloc(1, sizeof *page.id);
            if (!page.id || strlen(e) > CRDT_RECID_MAX) {
                free(page.id);
                store_ids_free(out);
                return page.id ? STORE_EINVAL : CRDT_ENOMEM;
            }
            strcpy(page.id[0], e);
        }
        if (out->n + page.n > cap) {
            size_t nc = (out->n + page.n) * 2;
            void *np = realloc(out->id, nc * sizeof *out->id);
            if (!np) {
                store_ids_free(&page);
                store_ids_free(out);
                return CRDT_ENOMEM;
            }
            out->id = np;
            cap = nc;
        }
        memcpy(out->id + out->n, page.id, page.n * sizeof *page.id);
        out->n += page.n;
        store_ids_free(&page);
    }
    return STORE_OK;
}

static int on_enroll(sync_session *s, const msgpack_object *m, uint64_t now_ms, sync_out *out)
{
    static const char *const keys[] = {"pk", "sig", "tok"};
    const uint8_t *pk, *sig;
    const msgpack_object *tok = wire_mp_get(m, "tok");
    store_txn *t = NULL;
    store_token token;
    store_ids scope = {0};
    uint32_t dev = 0;
    int rc;
    memset(&token, 0, sizeof token);
    if (s->state != ST_HELLO) {
        fail(out, SYNC_ESTATE, 0, 1008);
        return SYNC_OK;
    }
    if (!only_keys(m, keys, 3) || !tok || tok->type != MSGPACK_OBJECT_STR ||
        tok->via.str.size == 0 || tok->via.str.size > WIRE_TOKEN_MAX || !get_bin(m, "pk", 32, &pk) ||
        !get_bin(m, "sig", 64, &sig)) {
        fail(out, SYNC_EPROTO, 0, 1008);
        return SYNC_OK;
    }
    /* Proof that the enrolling phone holds the new secret key. */
    uint8_t msg[WIRE_ENROLL_MSG_MAX];
    size_t ml = wire_enroll_msg(store_server_pk(s->st), s->nonce, tok->via.str.ptr,
                                tok->via.str.size, pk, msg);
    if (!ml || crypto_sign_verify_detached(sig, msg, ml, pk) != 0) {
        fail(out, SYNC_EBADAUTH, 0, 1008);
        return SYNC_OK;
    }
    char text[WIRE_TOKEN_MAX + 1];
    memcpy(text, tok->via.str.ptr, tok->via.str.size);
    text[tok->via.str.size] = 0;
    /* A short write transaction on the loop thread: enrollment is rare. */
    if ((rc = store_begin(s->st, STORE_RW, &t))) goto fail;
    if ((rc = store_device_next_id(t, &dev))) goto fail;
    if ((rc = store_token_redeem(t, text, now_ms, dev, &token))) goto fail;
    if ((rc = expand_scope(t, &token, &scope))) goto fail;
    store_device d = {.id = dev, .state = STORE_DEV_ACTIVE, .epoch = 1, .created_ms = now_ms,
                      .last_sync_ms = now_ms};
    snprintf(d.volunteer, sizeof d.volunteer, "%s", token.volunteer);
    store_key k = {.dev = dev, .epoch = 1, .state = STORE_KEY_ACTIVE, .created_ms = now_ms,
                   .changed_ms = now_ms};
    memcpy(k.pk, pk, 32);
    const char **hh = calloc(scope.n ? scope.n : 1, sizeof *hh);
    if (!hh) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; i < scope.n; i++) hh[i] = scope.id[i];
    char detail[160];
    snprintf(detail, sizeof detail, "device %u enrolled for %s (token %s, %zu households)", dev,
             token.volunteer, token.id, scope.n);
    rc = store_device_put(t, &d);
    if (!rc) rc = store_key_put(t, &k);
    if (!rc) rc = store_device_scope_set(t, dev, hh, scope.n);
    if (!rc) rc = store_audit_append(t, now_ms, "server", "device.enroll", detail, NULL);
    free(hh);
    if (rc) goto fail;
    rc = store_commit(t);
    t = NULL;
    if (rc) goto fail;
    store_token_free(&token);
    store_ids_free(&scope);
    return welcome(s, dev, 1, now_ms, out);
fail:
    store_abort(t);
    store_token_free(&token);
    store_ids_free(&scope);
    if (rc == CRDT_ENOMEM) return rc;
    {
        int code = rc == STORE_ENOTFOUND || rc == STORE_ETOKEN_USED || rc == STORE_ETOKEN_EXPIRED
                       ? rc
                       : SYNC_EUNAVAILABLE;
        const char *why = rc == STORE_ENOTFOUND ? "enrollment token not recognised"
                                                : store_strerror(rc);
        sync_out_append(out, sync_frame_error(code, why, 0));
        out->close_code = code == SYNC_EUNAVAILABLE ? 1011 : 1008;
    }
    return SYNC_OK;
}

static int on_rotate(sync_session *s, const msgpack_object *m, uint64_t now_ms, sync_out *out)
{
    static const char *const keys[] = {"e", "pk", "seal", "sn", "so"};
    uint64_t e, seal, head;
    const uint8_t *pk, *so, *sn;
    uint8_t hh[CRDT_HASH_BYTES];
    store_txn *t = NULL;
    store_key old;
    int rc;
    if (!only_keys(m, keys, 5) || !get_u64(m, "e", &e) || !get_u64(m, "seal", &seal) ||
        !get_bin(m, "pk", 32, &pk) || !get_bin(m, "so", 64, &so) || !get_bin(m, "sn", 64, &sn)) {
        fail(out, SYNC_EPROTO, 0, 0);
        return SYNC_OK;
    }
    if (s->restricted) { /* a revoked key never hands over to a new one */
        sync_out_append(out, sync_frame_error(SYNC_EREVOKED,
                                              "device revoked (soft): no key rotation", 0));
        return SYNC_OK;
    }
    if (e != (uint64_t)s->epoch + 1) {
        sync_out_append(out, sync_frame_error(SYNC_EEPOCH, "new epoch must be the current one + 1", 0));
        return SYNC_OK;
    }
    uint8_t msg[WIRE_ROTATE_MSG_BYTES];
    wire_rotate_msg(s->dev, (uint32_t)e, pk, seal, msg);
    if ((rc = store_begin(s->st, STORE_RW, &t))) goto unavailable;
    if ((rc = store_key_get(t, s->dev, s->epoch, &old)) || (rc = store_chain_head(t, s->dev, &head, hh)))
        goto unavailable;
    if (old.state != STORE_KEY_ACTIVE) {
        /* Revoked or retired since this session authenticated (the admin
         * recheck has not run yet): it must stay so. */
        store_abort(t);
        sync_out_append(out, sync_frame_error(SYNC_EEPOCH, "the session's key is no longer active", 0));
        return SYNC_OK;
    }
    /* The old key hands over, the new key countersigns. */
    if (crypto_sign_verify_detached(so, msg, sizeof msg, old.pk) != 0 ||
        crypto_sign_verify_detached(sn, msg, sizeof msg, pk) != 0) {
        store_abort(t);
        sync_out_append(out, sync_frame_error(SYNC_EBADAUTH, "rotation signatures do not verify", 0));
        return SYNC_OK;
    }
    if (seal < head) {
        store_abort(t);
        sync_out_append(out, sync_frame_error(SYNC_EPROTO,
                                              "sealed seq is below what the server already holds", 0));
        return SYNC_OK;
    }
    old.state = STORE_KEY_RETIRED;
    old.sealed_seq = seal;
    old.changed_ms = now_ms;
    store_key nk = {.dev = s->dev, .epoch = (uint32_t)e, .state = STORE_KEY_ACTIVE,
                    .created_ms = now_ms, .changed_ms = now_ms};
    memcpy(nk.pk, pk, 32);
    store_device d;
    char detail[128];
    snprintf(detail, sizeof detail, "device %u rotated to key epoch %llu, old key sealed at seq %llu",
             s->dev, (unsigned long long)e, (unsigned long long)seal);
    if ((rc = store_key_put(t, &old)) || (rc = store_key_put(t, &nk)) ||
        (rc = store_device_get(t, s->dev, &d)))
        goto unavailable;
    d.epoch = (uint32_t)e;
    d.flags &= (uint8_t)~STORE_DEVF_ROTATE_REQUIRED;
    if ((rc = store_device_put(t, &d)) ||
        (rc = store_audit_append(t, now_ms, "server", "key.rotate", detail, NULL)))
        goto unavailable;
    rc = store_commit(t);
    t = NULL;
    if (rc) goto unavailable;
    s->epoch = (uint32_t)e;
    s->rotate_required = false;
    crdt_buf b = {0};
    msgpack_packer pkr;
    msgpack_packer_init(&pkr, &b, crdt_buf_pack_write);
    msgpack_pack_map(&pkr, 2);
    pk_str(&pkr, "e");
    msgpack_pack_uint64(&pkr, e);
    pk_str(&pkr, "t");
    pk_str(&pkr, "rotated");
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    out->synced = true;
    return SYNC_OK;
unavailable:
    store_abort(t);
    sync_out_append(out, sync_frame_error(SYNC_EUNAVAILABLE, store_strerror(rc), 0));
    return SYNC_OK;
}

int sync_session_recheck(sync_session *s, sync_out *out)
{
    store_txn *t;
    store_device d;
    if (s->state != ST_READY) return SYNC_OK;
    if (store_begin(s->st, STORE_RDONLY, &t)) return SYNC_OK; /* try again next time */
    int rc = store_device_get(t, s->dev, &d);
    store_abort(t);
    if (rc) return SYNC_OK;
    if (d.state == STORE_DEV_FROZEN) fail(out, SYNC_EFROZEN, 0, 1008);
    else if (d.state == STORE_DEV_REVOKED_HARD) fail(out, SYNC_EREVOKED, 0, 1008);
    else if (d.state == STORE_DEV_REVOKED_SOFT) {
        /* Soft: the session becomes restricted in place, as if it had
         * authenticated now: pushes go on (into quarantine beyond the seq
         * held at revocation), reads are refused from here on.  A live
         * subscription ends with one SYNC_EREVOKED error (no close). */
        if (!s->restricted) {
            s->restricted = SYNC_EREVOKED;
            s->rotate_required = false;
            if (s->subscribed) {
                s->subscribed = false;
                fail_restricted(out, 0);
            }
        }
    } else if (d.flags & STORE_DEVF_ROTATE_REQUIRED) s->rotate_required = true;
    return SYNC_OK;
}

/* ---- push ------------------------------------------------------------------------- */

void sync_job_free(sync_job *j)
{
    if (!j) return;
    store_ids_free(&j->scope);
    /* items may be NULL with n set: on_push ran out of memory allocating it */
    for (uint32_t i = 0; j->items && i < j->n; i++) free(j->items[i].env);
    free(j->items);
    free(j->relay_keys);
    free(j->relay_admin);
    crdt_arena_free(j->arena);
    free(j);
}

/* A new job for n envelopes (copied), or NULL (out of memory). */
static sync_job *job_new(sync_session *s, uint64_t id, const msgpack_object *d)
{
    sync_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->owner = s;
    j->session_serial = s->serial;
    j->push_id = id;
    j->dev = s->dev;
    j->epoch = s->epoch;
    j->n = d->via.array.size;
    j->items = calloc(j->n ? j->n : 1, sizeof *j->items);
    j->arena = crdt_arena_new(0);
    if (!j->items || !j->arena) goto nomem;
    for (uint32_t i = 0; i < j->n; i++) {
        const msgpack_object *e = &d->via.array.ptr[i];
        j->items[i].env = malloc(e->via.bin.size ? e->via.bin.size : 1);
        if (!j->items[i].env) goto nomem;
        memcpy(j->items[i].env, e->via.bin.ptr, e->via.bin.size);
        j->items[i].env_len = e->via.bin.size;
    }
    return j;
nomem:
    sync_job_free(j);
    return NULL;
}

static int on_push(sync_session *s, const msgpack_object *m, uint64_t now_ms, sync_out *out)
{
    static const char *const keys[] = {"d", "id"};
    uint64_t id = 0;
    const msgpack_object *d = wire_mp_get(m, "d");
    get_u64(m, "id", &id);
    if (!only_keys(m, keys, 2) || id == 0 || !d || d->type != MSGPACK_OBJECT_ARRAY) {
        fail(out, SYNC_EPROTO, id, 0);
        return SYNC_OK;
    }
    if (s->relay) { /* a relay has no deltas of its own: it sends `relay` */
        fail(out, SYNC_ESTATE, id, 0);
        return SYNC_OK;
    }
    if (s->rotate_required) {
        fail(out, SYNC_EROTATE, id, 0);
        return SYNC_OK;
    }
    if (d->via.array.size > s->cfg->max_push) {
        fail(out, SYNC_ETOOMANY, id, 0);
        return SYNC_OK;
    }
    if (s->inflight >= s->cfg->max_inflight) {
        fail(out, SYNC_EBUSY, id, 0);
        return SYNC_OK;
    }
    for (uint32_t i = 0; i < d->via.array.size; i++)
        if (d->via.array.ptr[i].type != MSGPACK_OBJECT_BIN) {
            fail(out, SYNC_EPROTO, id, 0);
            return SYNC_OK;
        }
    /* Last check before work is queued: a refused push takes no tokens. */
    uint64_t retry_ms = 0;
    int lrc = sync_limiter_take(s->limiter, s->cfg, s->dev, d->via.array.size, now_ms, &retry_ms);
    if (lrc == SYNC_ERATE) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s (%u deltas a second, %u at once); retry after %llu ms",
                 sync_strerror(SYNC_ERATE), s->cfg->device_rate, s->cfg->device_burst,
                 (unsigned long long)retry_ms);
        sync_frame *f = sync_frame_error_ra(SYNC_ERATE, msg, id, retry_ms);
        if (!f) return CRDT_ENOMEM; /* the connection closes; the device resends */
        sync_out_append(out, f);
        return SYNC_OK;
    }
    if (lrc) return lrc;
    sync_job *j = job_new(s, id, d);
    if (!j) return CRDT_ENOMEM;
    s->inflight++;
    out->job = j;
    return SYNC_OK;
}

/*
 * relay (relay session -> server): a street server's applied envelopes,
 * verbatim, with the key records (signed by the street server key `srv`)
 * of the devices that signed them.  Checked like push (count, in flight);
 * no rate limit: a relay catches up as fast as the server verifies.
 */
static int on_relay(sync_session *s, const msgpack_object *m, sync_out *out)
{
    static const char *const keys[] = {"a", "d", "id", "k", "srv"};
    uint64_t id = 0;
    const uint8_t *srv = NULL;
    const msgpack_object *d = wire_mp_get(m, "d"), *k = wire_mp_get(m, "k"), *a = wire_mp_get(m, "a");
    get_u64(m, "id", &id);
    if (!only_keys(m, keys, 5) || id == 0 || !d || d->type != MSGPACK_OBJECT_ARRAY || !k ||
        k->type != MSGPACK_OBJECT_ARRAY || !get_bin(m, "srv", 32, &srv) ||
        (a && a->type != MSGPACK_OBJECT_ARRAY)) {
        fail(out, SYNC_EPROTO, id, 0);
        return SYNC_OK;
    }
    /* Admin records (optional): [{b: bin, g: bin 64}], bounded. */
    static const char *const akeys[] = {"b", "g"};
    uint32_t na = a ? a->via.array.size : 0;
    if (na > SYNC_ADMIN_MAX) {
        fail(out, SYNC_ETOOMANY, id, 0);
        return SYNC_OK;
    }
    for (uint32_t i = 0; i < na; i++) {
        const msgpack_object *r = &a->via.array.ptr[i], *b = wire_mp_get(r, "b");
        const uint8_t *g;
        if (r->type != MSGPACK_OBJECT_MAP || !only_keys(r, akeys, 2) || !b ||
            b->type != MSGPACK_OBJECT_BIN || b->via.bin.size == 0 ||
            b->via.bin.size > SYNC_ADMIN_BYTES || !get_bin(r, "g", 64, &g)) {
            fail(out, SYNC_EPROTO, id, 0);
            return SYNC_OK;
        }
    }
    if (!s->relay || s->restricted) {
        /* Only a relay relays; a revoked relay hands in nothing more (its
         * street keeps everything and can be enrolled again). */
        fail(out, s->relay ? SYNC_EREVOKED : SYNC_ESTATE, id, 0);
        return SYNC_OK;
    }
    if (d->via.array.size > s->cfg->max_push || k->via.array.size > s->cfg->max_push + 1) {
        fail(out, SYNC_ETOOMANY, id, 0);
        return SYNC_OK;
    }
    if (s->inflight >= s->cfg->max_inflight) {
        fail(out, SYNC_EBUSY, id, 0);
        return SYNC_OK;
    }
    for (uint32_t i = 0; i < d->via.array.size; i++)
        if (d->via.array.ptr[i].type != MSGPACK_OBJECT_BIN) {
            fail(out, SYNC_EPROTO, id, 0);
            return SYNC_OK;
        }
    static const char *const kkeys[] = {"d", "e", "g", "p"};
    for (uint32_t i = 0; i < k->via.array.size; i++) {
        const msgpack_object *r = &k->via.array.ptr[i];
        uint64_t kd, ke;
        const uint8_t *g, *p;
        if (r->type != MSGPACK_OBJECT_MAP || !only_keys(r, kkeys, 4) || !get_u64(r, "d", &kd) ||
            !get_u64(r, "e", &ke) || kd == 0 || kd > UINT32_MAX || ke == 0 || ke > UINT32_MAX ||
            !get_bin(r, "g", 64, &g) || !get_bin(r, "p", 32, &p)) {
            fail(out, SYNC_EPROTO, id, 0);
            return SYNC_OK;
        }
    }
    sync_job *j = job_new(s, id, d);
    if (!j) return CRDT_ENOMEM;
    j->relay = true;
    memcpy(j->relay_srv, srv, 32);
    j->n_relay_keys = k->via.array.size;
    j->relay_keys = calloc(j->n_relay_keys ? j->n_relay_keys : 1, sizeof *j->relay_keys);
    if (!j->relay_keys) {
        sync_job_free(j);
        return CRDT_ENOMEM;
    }
    for (uint32_t i = 0; i < j->n_relay_keys; i++) {
        const msgpack_object *r = &k->via.array.ptr[i];
        sync_relay_key *rk = &j->relay_keys[i];
        uint64_t v = 0;
        const uint8_t *b = NULL;
        get_u64(r, "d", &v);
        rk->dev = (uint32_t)v;
        get_u64(r, "e", &v);
        rk->epoch = (uint32_t)v;
        if (get_bin(r, "g", 64, &b)) memcpy(rk->sig, b, 64); /* checked above */
        if (get_bin(r, "p", 32, &b)) memcpy(rk->pk, b, 32);
    }
    j->n_relay_admin = na;
    j->relay_admin = na ? calloc(na, sizeof *j->relay_admin) : NULL;
    if (na && !j->relay_admin) {
        sync_job_free(j);
        return CRDT_ENOMEM;
    }
    for (uint32_t i = 0; i < na; i++) {
        const msgpack_object *r = &a->via.array.ptr[i], *b = wire_mp_get(r, "b");
        const uint8_t *g = NULL;
        sync_relay_admin *ad = &j->relay_admin[i];
        memcpy(ad->b, b->via.bin.ptr, b->via.bin.size);
        ad->n = b->via.bin.size;
        if (get_bin(r, "g", 64, &g)) memcpy(ad->g, g, 64);
    }
    s->inflight++;
    out->job = j;
    return SYNC_OK;
}

/* ---- admin records (relay frames) ---------------------------------------------------- */

int sync_admin_msg(const uint8_t *b, size_t n, crdt_buf *out)
{
    memset(out, 0, sizeof *out);
    if (crdt_buf_append(out, SYNC_ADMIN_DOMAIN, sizeof SYNC_ADMIN_DOMAIN) ||
        crdt_buf_append(out, b, n)) {
        crdt_buf_free(out);
        return CRDT_ENOMEM;
    }
    return 0;
}

/* A str member of map m into out (cap bytes with the NUL): false if absent,
 * not a str, too long, or not UTF-8. */
static bool get_text(const msgpack_object *m, const char *key, char *out, size_t cap, bool need)
{
    const msgpack_object *o = wire_mp_get(m, key);
    out[0] = 0;
    if (!o) return !need;
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= cap ||
        !crdt_utf8_valid((const uint8_t *)o->via.str.ptr, o->via.str.size) ||
        memchr(o->via.str.ptr, 0, o->via.str.size))
        return false;
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = 0;
    return true;
}

bool sync_admin_parse(sync_relay_admin *a)
{
    static const char *const keys[] = {"a", "act", "at", "by", "d", "rs", "st", "x"};
    msgpack_unpacked up;
    size_t off = 0, eoff;
    uint64_t v;
    bool ok = false;
    if (crdt_mp_check(a->b, a->n, &crdt_limits_default, &eoff)) return false;
    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, (const char *)a->b, a->n, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != a->n || up.data.type != MSGPACK_OBJECT_MAP)
        goto out;
    const msgpack_object *m = &up.data;
    if (!only_keys(m, keys, 8) || !get_u64(m, "a", &a->aseq) || !a->aseq || !get_u64(m, "at", &a->at) ||
        !get_text(m, "act", a->act, sizeof a->act, true) || !a->act[0] ||
        !get_text(m, "by", a->by, sizeof a->by, true) || !get_text(m, "x", a->x, sizeof a->x, false))
        goto out;
    a->has_dev = wire_mp_get(m, "d") != NULL;
    if (a->has_dev) {
        if (!get_u64(m, "d", &v) || !v || v > UINT32_MAX) goto out;
        a->dev = (uint32_t)v;
        if (!get_u64(m, "st", &v) || v < STORE_DEV_ACTIVE || v > STORE_DEV_REVOKED_HARD) goto out;
        a->st = (uint8_t)v;
        if (!get_u64(m, "rs", &a->rs)) goto out;
    } else if (wire_mp_get(m, "st") || wire_mp_get(m, "rs")) {
        goto out;
    }
    ok = true;
out:
    msgpack_unpacked_destroy(&up);
    return ok;
}

static const char *result_name(int r)
{
    switch (r) {
    case STORE_APPLIED: return "applied";
    case STORE_DUPLICATE: return "duplicate";
    case STORE_QUARANTINED: return "quarantined";
    default: return "rejected";
    }
}

int sync_session_job_done(sync_session *s, sync_job *j, sync_out *out)
{
    if (s->inflight) s->inflight--;
    if (j->commit_rc) {
        int code = j->commit_rc == SYNC_ESHUTDOWN ? SYNC_ESHUTDOWN : SYNC_EUNAVAILABLE;
        char msg[160];
        snprintf(msg, sizeof msg, "%s (%s); nothing from this push was stored",
                 sync_strerror(code), store_strerror(j->commit_rc));
        sync_frame *f = sync_frame_error(code, msg, j->push_id);
        sync_job_free(j);
        if (!f) return CRDT_ENOMEM; /* no answer: the caller closes the connection */
        sync_out_append(out, f);
        return SYNC_OK;
    }
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 3); /* id, r, t */
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, j->push_id);
    pk_str(&pk, "r");
    msgpack_pack_array(&pk, j->n);
    for (uint32_t i = 0; i < j->n; i++) {
        const sync_job_item *it = &j->items[i];
        int result = it->code ? STORE_REJECTED : it->out.result;
        int code = it->code ? it->code : it->out.code;
        bool has_code = result == STORE_REJECTED || result == STORE_QUARANTINED;
        bool has_x = result == STORE_REJECTED && code == STORE_EGAP;
        /* c, m, q, r, s, x */
        msgpack_pack_map(&pk, 2 + (has_code ? 2 : 0) + (it->out.sseq ? 1 : 0) + has_x);
        if (has_code) {
            pk_str(&pk, "c");
            msgpack_pack_int64(&pk, code);
            pk_str(&pk, "m");
            pk_str(&pk, result == STORE_QUARANTINED ? store_qreason_name(code)
                                                    : reject_text(code));
        }
        if (it->out.sseq) {
            pk_str(&pk, "q");
            msgpack_pack_uint64(&pk, it->out.sseq);
        }
        pk_str(&pk, "r");
        pk_str(&pk, result_name(result));
        pk_str(&pk, "s");
        msgpack_pack_uint64(&pk, it->seq);
        if (has_x) {
            pk_str(&pk, "x");
            msgpack_pack_uint64(&pk, it->out.expected_seq);
        }
    }
    pk_str(&pk, "t");
    pk_str(&pk, "ack");
    sync_job_free(j);
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    out->synced = true;
    return SYNC_OK;
}

/* ---- pull, subscribe, live ---------------------------------------------------------- */

typedef struct page {
    crdt_buf envs;          /* packed bin values */
    uint64_t sseqs[1024];
    uint32_t n;
    size_t bytes, max_bytes;
    uint32_t max_n;
    /* The (device, key epoch) pairs that signed the page's envelopes, each
     * once, for the key records (not the server's own, device 0). */
    struct { uint32_t dev, epoch; } keys[1024];
    uint32_t nkeys;
    crdt_arena *arena;      /* decoding an envelope's delta header */
} page;

/* Bytes a key record may take in the frame ({d, e, g, p}: at most 119). */
#define KEY_RECORD_BYTES 128

/* The signer (device, epoch) of env, a stored envelope; *dev 0 if it is the
 * server's own or does not decode (the device then refuses it and says so). */
static int page_signer(page *p, const uint8_t *env, size_t len, uint32_t *dev, uint32_t *epoch)
{
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int eo;
    *dev = *epoch = 0;
    if (!p->arena && !(p->arena = crdt_arena_new(4096))) return CRDT_ENOMEM;
    crdt_arena_reset(p->arena);
    int rc = wire_envelope_decode(env, len, &crdt_limits_default, &db, &dl, &sig);
    if (!rc) rc = crdt_delta_decode(db, dl, &crdt_limits_default, p->arena, &d, &eo);
    if (rc == CRDT_ENOMEM) return rc;
    if (!rc) {
        *dev = d.dev;
        *epoch = d.epoch;
    }
    return 0;
}

/*
 * Add env to the page unless it is full.  The page's byte budget counts the
 * key record a new signer adds too, so envelopes and key records together
 * stay within max_bytes (plus one envelope), well inside a device's 256 KiB
 * message limit.  (The probe page, max_bytes SIZE_MAX, keeps no signers.)
 */
static int page_add(uint64_t sseq, const uint8_t *env, size_t len, void *arg)
{
    page *p = arg;
    uint32_t dev = 0, epoch = 0;
    bool fresh = false;
    if (p->max_bytes != SIZE_MAX) {
        if (page_signer(p, env, len, &dev, &epoch)) return CRDT_ENOMEM;
        fresh = dev != 0;
        for (uint32_t i = 0; fresh && i < p->nkeys; i++)
            if (p->keys[i].dev == dev && p->keys[i].epoch == epoch) fresh = false;
    }
    size_t add = len + (fresh ? KEY_RECORD_BYTES : 0);
    if (p->n >= p->max_n || (p->n && p->bytes + add > p->max_bytes)) return 1; /* full */
    msgpack_packer pk;
    msgpack_packer_init(&pk, &p->envs, crdt_buf_pack_write);
    if (msgpack_pack_bin_with_body(&pk, env, len)) return CRDT_ENOMEM;
    if (fresh) {
        p->keys[p->nkeys].dev = dev;
        p->keys[p->nkeys].epoch = epoch;
        p->nkeys++;
    }
    p->sseqs[p->n++] = sseq;
    p->bytes += add;
    return 0;
}

/*
 * The key records of page p, packed as a msgpack array into kr: for each
 * signer, {d: dev, e: epoch, g: Ed25519(server key, wire_key_msg), p: pk},
 * so a device verifies every envelope back to the phone that signed it
 * (PROTOCOL.md, "Key records").  A key the store does not hold (it never
 * drops one) is left out; the device then refuses the page.
 */
/* The server's signature of key (wire_key_msg), from the session's cache or
 * made now (store_server_sign unseals the server key: not per page). */
static int key_record_sig(sync_session *s, store_txn *t, const store_key *key, uint8_t sig[64])
{
    for (uint32_t i = 0; i < s->n_keysigs; i++) {
        const struct keysig *c = &s->keysigs[i];
        if (c->dev == key->dev && c->epoch == key->epoch && !memcmp(c->pk, key->pk, 32)) {
            memcpy(sig, c->sig, 64);
            return 0;
        }
    }
    uint8_t msg[WIRE_KEY_MSG_BYTES];
    wire_key_msg(key->dev, key->epoch, key->pk, msg);
    int rc = store_server_sign(t, msg, sizeof msg, sig);
    if (rc) return rc;
    if (!s->keysigs && !(s->keysigs = calloc(KEYSIG_CACHE, sizeof *s->keysigs)))
        return 0; /* no cache: still correct, only slower */
    struct keysig *c = &s->keysigs[s->next_keysig];
    s->next_keysig = (s->next_keysig + 1) % KEYSIG_CACHE;
    if (s->n_keysigs < KEYSIG_CACHE) s->n_keysigs++;
    c->dev = key->dev;
    c->epoch = key->epoch;
    memcpy(c->pk, key->pk, 32);
    memcpy(c->sig, sig, 64);
    return 0;
}

static int page_key_records(sync_session *s, store_txn *t, const page *p, crdt_buf *kr)
{
    msgpack_packer pk;
    uint32_t n = 0;
    crdt_buf items = {0};
    msgpack_packer_init(&pk, &items, crdt_buf_pack_write);
    int rc = 0;
    for (uint32_t i = 0; i < p->nkeys && !rc; i++) {
        store_key key;
        uint8_t sig[64];
        rc = store_key_get(t, p->keys[i].dev, p->keys[i].epoch, &key);
        if (rc == STORE_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc || (rc = key_record_sig(s, t, &key, sig))) break;
        /* d, e, g, p */
        msgpack_pack_map(&pk, 4);
        pk_str(&pk, "d");
        msgpack_pack_uint32(&pk, key.dev);
        pk_str(&pk, "e");
        msgpack_pack_uint32(&pk, key.epoch);
        pk_str(&pk, "g");
        msgpack_pack_bin_with_body(&pk, sig, 64);
        pk_str(&pk, "p");
        msgpack_pack_bin_with_body(&pk, key.pk, 32);
        n++;
    }
    if (!rc) {
        msgpack_packer_init(&pk, kr, crdt_buf_pack_write);
        if (msgpack_pack_array(&pk, n) || crdt_buf_append(kr, items.p, items.n)) rc = CRDT_ENOMEM;
    }
    crdt_buf_free(&items);
    return rc;
}

/* One changes frame from cursor `after`; *next, *more describe the rest. */
static int changes_frame(sync_session *s, uint64_t req_id, uint64_t after, uint32_t max,
                         sync_out *out, uint64_t *next, bool *more, uint32_t *count)
{
    store_txn *t = NULL;
    page *p = calloc(1, sizeof *p);
    const char **hh = NULL;
    uint64_t last = 0;
    crdt_buf krec = {0};    /* the key records, a packed array */
    int rc;
    *count = 0;
    if (!p) return CRDT_ENOMEM;
    p->max_n = max < s->cfg->page_max ? max : s->cfg->page_max;
    if (p->max_n > 1024) p->max_n = 1024;
    if (p->max_n == 0) p->max_n = 1;
    p->max_bytes = s->cfg->page_bytes;
    hh = calloc(s->scope.n ? s->scope.n : 1, sizeof *hh);
    if (!hh) {
        rc = CRDT_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < s->scope.n; i++) hh[i] = s->scope.id[i];
    if ((rc = store_begin(s->st, STORE_RDONLY, &t))) goto out;
    rc = store_feed(t, hh, s->scope.n, after, p->max_n + 1, page_add, p, next);
    if (rc == 1) rc = 0; /* page full: there is more */
    *more = false;
    if (!rc) {
        /* store_feed stopped at the first envelope that did not fit, so
         * whether more exist is: did it deliver fewer than asked for? */
        uint64_t probe_next;
        *next = p->n ? p->sseqs[p->n - 1] : after;
        page probe;
        memset(&probe, 0, sizeof probe);
        probe.max_n = 1;
        probe.max_bytes = SIZE_MAX;
        rc = store_feed(t, hh, s->scope.n, *next, 1, page_add, &probe, &probe_next);
        *more = probe.n > 0;
        crdt_buf_free(&probe.envs);
        store_last_sseq(t, &last);
    }
    if (!rc) rc = page_key_records(s, t, p, &krec);
    store_abort(t);
    t = NULL;
    if (rc) goto out;
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    /* e, id, k, more, n, q, t */
    msgpack_pack_map(&pk, 7);
    pk_str(&pk, "e");
    msgpack_pack_array(&pk, p->n);
    crdt_buf_pack_write(&b, (const char *)p->envs.p, p->envs.n);
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, req_id);
    pk_str(&pk, "k");
    crdt_buf_pack_write(&b, (const char *)krec.p, krec.n);
    pk_str(&pk, "more");
    if (*more) msgpack_pack_true(&pk);
    else msgpack_pack_false(&pk);
    pk_str(&pk, "n");
    /* With nothing more in scope, the cursor may jump to the log's end. */
    msgpack_pack_uint64(&pk, *more ? *next : (last > *next ? last : *next));
    if (!*more && last > *next) *next = last;
    pk_str(&pk, "q");
    msgpack_pack_array(&pk, p->n);
    for (uint32_t i = 0; i < p->n; i++) msgpack_pack_uint64(&pk, p->sseqs[i]);
    *count = p->n;
    pk_str(&pk, "t");
    pk_str(&pk, "changes");
    sync_frame *f = frame_of(&b);
    if (!f) {
        rc = CRDT_ENOMEM;
        goto out;
    }
    sync_out_append(out, f);
out:
    store_abort(t);
    if (p) {
        crdt_buf_free(&p->envs);
        crdt_arena_free(p->arena);
    }
    crdt_buf_free(&krec);
    free(p);
    free(hh);
    return rc;
}

static int on_pull(sync_session *s, const msgpack_object *m, sync_out *out)
{
    static const char *const keys[] = {"a", "id", "m"};
    uint64_t id = 0, after = 0, max = s->cfg->page_max, next;
    bool more;
    get_u64(m, "id", &id);
    if (s->restricted) {
        fail_restricted(out, id);
        return SYNC_OK;
    }
    if (!only_keys(m, keys, 3) || id == 0 ||
        (wire_mp_get(m, "a") && !get_u64(m, "a", &after)) || (wire_mp_get(m, "m") && !get_u64(m, "m", &max))) {
        fail(out, SYNC_EPROTO, id, 0);
        return SYNC_OK;
    }
    uint32_t count;
    int rc = changes_frame(s, id, after, (uint32_t)(max > UINT32_MAX ? UINT32_MAX : max), out,
                           &next, &more, &count);
    if (rc == CRDT_ENOMEM) return rc;
    if (rc) fail(out, SYNC_EUNAVAILABLE, id, 0);
    else out->synced = true;
    return SYNC_OK;
}

/*
 * {t:"schema", id}: the record schema the server checks every delta with,
 * as its JSON text (b), signed: g = Ed25519(server key, wire_schema_msg(b)),
 * so a client needs no copy of crdt/schema/yibao.json and can tell the server's
 * from a forged one.  h is the BLAKE2b-256 of b (what g covers), for a
 * client that caches the schema.  Allowed to soft-revoked devices too: it
 * reveals nothing of the records.
 */
static int on_schema(sync_session *s, const msgpack_object *m, sync_out *out)
{
    static const char *const keys[] = {"id"};
    uint64_t id = 0;
    get_u64(m, "id", &id);
    if (!only_keys(m, keys, 1) || id == 0) {
        fail(out, SYNC_EPROTO, id, 0);
        return SYNC_OK;
    }
    size_t n;
    const uint8_t *json = store_schema_json(s->st, &n);
    uint8_t msg[WIRE_SCHEMA_MSG_BYTES], sig[64];
    wire_schema_msg(json, n, msg);
    store_txn *t = NULL;
    int rc = store_begin(s->st, STORE_RDONLY, &t);
    if (!rc) rc = store_server_sign(t, msg, sizeof msg, sig);
    store_abort(t);
    if (rc) {
        fail(out, SYNC_EUNAVAILABLE, id, 0); /* no verdict on the request */
        return SYNC_OK;
    }
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    /* b, g, h, id, t */
    msgpack_pack_map(&pk, 5);
    pk_str(&pk, "b");
    msgpack_pack_bin_with_body(&pk, json, n);
    pk_str(&pk, "g");
    msgpack_pack_bin_with_body(&pk, sig, 64);
    pk_str(&pk, "h");
    msgpack_pack_bin_with_body(&pk, msg + sizeof WIRE_DOMAIN_SCHEMA, 32);
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pk_str(&pk, "t");
    pk_str(&pk, "schema");
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    return SYNC_OK;
}

static int on_subscribe(sync_session *s, const msgpack_object *m, sync_out *out)
{
    static const char *const keys[] = {"a"};
    uint64_t after = 0;
    if (s->restricted) {
        fail_restricted(out, 0);
        return SYNC_OK;
    }
    if (!only_keys(m, keys, 1) || (wire_mp_get(m, "a") && !get_u64(m, "a", &after))) {
        fail(out, SYNC_EPROTO, 0, 0);
        return SYNC_OK;
    }
    s->subscribed = true;
    s->cursor = after;
    out->wake_live = true; /* send the backlog now, not at the next commit */
    return SYNC_OK;
}

int sync_session_live(sync_session *s, sync_out *out, bool *more)
{
    uint64_t next;
    *more = false;
    if (s->state != ST_READY || !s->subscribed) return SYNC_OK;
    store_txn *t;
    uint64_t last = 0;
    /* A read transaction that could not be begun, or a log end that could
     * not be read (out of memory: found by tests/faults/alloc_failures.c,
     * live path), is a failure, not "nothing new":
     * answering SYNC_OK with *more false made the server stop sending the
     * backlog until the next relevant commit. */
    int brc = store_begin(s->st, STORE_RDONLY, &t);
    if (brc) return brc;
    brc = store_last_sseq(t, &last);
    store_abort(t);
    if (brc) return brc;
    if (last <= s->cursor) return SYNC_OK; /* nothing new anywhere */
    /* Only send a frame if it carries something (or moves the cursor). */
    sync_out tmp;
    sync_out_init(&tmp);
    uint32_t count = 0;
    int rc = changes_frame(s, 0, s->cursor, s->cfg->page_max, &tmp, &next, more, &count);
    if (rc) {
        sync_frames_free(tmp.frames);
        return rc;
    }
    s->cursor = next;
    if (count) sync_out_append(out, tmp.frames);
    else sync_frames_free(tmp.frames); /* an empty page only moved the cursor */
    return SYNC_OK;
}

bool sync_session_wants(const sync_session *s, char (*touched)[CRDT_RECID_MAX + 1], size_t n)
{
    if (s->state != ST_READY || !s->subscribed) return false;
    for (size_t i = 0; i < n; i++) {
        size_t lo = 0, hi = s->scope.n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int c = strcmp(s->scope.id[mid], touched[i]);
            if (c == 0) return true;
            if (c < 0) lo = mid + 1;
            else hi = mid;
        }
    }
    return false;
}


/* ---- snapshot bootstrap --------------------------------------------------------------- */

/*
 * A fresh device may ask for the merged records of its scope instead of the
 * whole history.  Everything is read in ONE read transaction, so the records
 * and the cursor agree: the device merges the records, then pulls from the
 * cursor.  The answer is split into pages (page_bytes each); every page is
 * signed by the server:
 *   Ed25519(server key, "doorstep/v1/snapshot" 0 || dev BE32 || cursor BE64
 *           || page BE32 || more (1 byte) || BLAKE2b-256(for each record:
 *           len BE32 || record bytes))
 */
typedef struct snap_page {
    crdt_buf packed;            /* the records as msgpack bin values */
    crypto_generichash_state h;
    uint32_t n;
} snap_page;

static int snap_flush(sync_session *s, uint64_t id, uint64_t cursor, uint32_t pageno, bool more,
                      store_txn *t, snap_page *sp, sync_out *out)
{
    uint8_t digest[32], msg[WIRE_SNAPSHOT_MSG_BYTES], sig[64];
    crypto_generichash_final(&sp->h, digest, sizeof digest);
    wire_snapshot_msg(s->dev, cursor, pageno, more, digest, msg);
    int rc = store_server_sign(t, msg, sizeof msg, sig);
    if (rc) return rc;
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, crdt_buf_pack_write);
    /* g, id, more, n, p, r, t */
    msgpack_pack_map(&pk, 7);
    pk_str(&pk, "g");
    msgpack_pack_bin_with_body(&pk, sig, 64);
    pk_str(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pk_str(&pk, "more");
    if (more) msgpack_pack_true(&pk);
    else msgpack_pack_false(&pk);
    pk_str(&pk, "n");
    msgpack_pack_uint64(&pk, cursor);
    pk_str(&pk, "p");
    msgpack_pack_uint32(&pk, pageno);
    pk_str(&pk, "r");
    msgpack_pack_array(&pk, sp->n);
    crdt_buf_pack_write(&b, (const char *)sp->packed.p, sp->packed.n);
    pk_str(&pk, "t");
    pk_str(&pk, "snapshot");
    sync_frame *f = frame_of(&b);
    if (!f) return CRDT_ENOMEM;
    sync_out_append(out, f);
    crdt_buf_reset(&sp->packed);
    crypto_generichash_init(&sp->h, NULL, 0, 32);
    sp->n = 0;
    return SYNC_OK;
}

static int snap_add(snap_page *sp, const crdt_record *r, crdt_buf *tmp)
{
    uint8_t len[4];
    crdt_buf_reset(tmp);
    int rc = crdt_record_encode(r, tmp);
    if (rc) return rc;
    uint8_t *p = len;
    be32p(&p, (uint32_t)tmp->n);
    crypto_generichash_update(&sp->h, len, 4);
    crypto_generichash_update(&sp->h, tmp->p, tmp->n);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sp->packed, crdt_buf_pack_write);
    if (msgpack_pack_bin_with_body(&pk, tmp->p, tmp->n)) return CRDT_ENOMEM;
    sp->n++;
    return SYNC_OK;
}

/* Is person record r currently in one of the session's households? */
static bool person_in_scope(const sync_session *s, const crdt_record *r)
{
    const crdt_field *f = crdt_record_field(r, "household", (crdt_blob){NULL, 0});
    for (uint32_t i = 0; f && i < f->n; i++) {
        crdt_val v;
        if (crdt_val_parse(f->e[i].v, &v) || v.t != CRDT_V_STR) continue;
        char h[CRDT_RECID_MAX + 1];
        if (v.len > CRDT_RECID_MAX) continue;
        memcpy(h, v.s, v.len);
        h[v.len] = 0;
        for (size_t k = 0; k < s->scope.n; k++)
            if (!strcmp(s->scope.id[k], h)) return true;
    }
    return false;
}

static int on_snapshot(sync_session *s, const msgpack_object *m, sync_out *out)
{
    static const char *const keys[] = {"id", "k"};
    uint64_t id = 0, cursor = 0;
    store_txn *t = NULL;
    snap_page sp;
    crdt_buf tmp = {0};
    uint32_t pageno = 0;
    size_t total = 0;
    int rc;
    get_u64(m, "id", &id);
    if (s->restricted) {
        fail_restricted(out, id);
        return SYNC_OK;
    }
    const msgpack_object *want = wire_mp_get(m, "k"); /* optional: these persons only */
    if (!only_keys(m, keys, 2) || id == 0 ||
        (want && (want->type != MSGPACK_OBJECT_ARRAY || want->via.array.size > 500))) {
        fail(out, SYNC_EPROTO, id, 0);
        return SYNC_OK;
    }
    for (uint32_t i = 0; want && i < want->via.array.size; i++)
        if (want->via.array.ptr[i].type != MSGPACK_OBJECT_STR ||
            !crdt_recid_valid(want->via.array.ptr[i].via.str.ptr,
                              want->via.array.ptr[i].via.str.size)) {
            fail(out, SYNC_EPROTO, id, 0);
            return SYNC_OK;
        }
    memset(&sp, 0, sizeof sp);
    crypto_generichash_init(&sp.h, NULL, 0, 32);
    sync_out pages;
    sync_out_init(&pages);
    if ((rc = store_begin(s->st, STORE_RDONLY, &t))) goto fail;
    if ((rc = store_last_sseq(t, &cursor))) goto fail;
    /* Selected persons (e.g. one that moved into the device's households,
     * whose earlier history the device never received). */
    for (uint32_t i = 0; want && i < want->via.array.size; i++) {
        char pid[CRDT_RECID_MAX + 1];
        crdt_record *r = NULL;
        memcpy(pid, want->via.array.ptr[i].via.str.ptr, want->via.array.ptr[i].via.str.size);
        pid[want->via.array.ptr[i].via.str.size] = 0;
        rc = store_get_record(t, "person", pid, &r);
        if (rc == STORE_ENOTFOUND) {
            rc = STORE_OK;
            continue;
        }
        if (!rc && person_in_scope(s, r)) rc = snap_add(&sp, r, &tmp);
        crdt_record_free(r);
        if (rc) goto fail;
    }
    for (size_t i = 0; !want && i < s->scope.n; i++) {
        store_ids members = {0};
        crdt_record *r = NULL;
        rc = store_get_record(t, "household", s->scope.id[i], &r);
        if (rc == STORE_OK) {
            rc = snap_add(&sp, r, &tmp);
            total += tmp.n;
            crdt_record_free(r);
        } else if (rc == STORE_ENOTFOUND) {
            rc = STORE_OK;
        }
        if (!rc) rc = store_household_members(t, s->scope.id[i], &members);
        for (size_t k = 0; !rc && k < members.n; k++) {
            rc = store_get_record(t, "person", members.id[k], &r);
            if (rc == STORE_ENOTFOUND) {
                rc = STORE_OK;
                continue;
            }
            if (!rc) {
                rc = snap_add(&sp, r, &tmp);
                total += tmp.n;
                crdt_record_free(r);
            }
        }
        store_ids_free(&members);
        if (rc) goto fail;
        if (total > SYNC_SNAPSHOT_MAX) {
            store_abort(t);
            sync_frames_free(pages.frames);
            crdt_buf_free(&sp.packed);
            crdt_buf_free(&tmp);
            sync_out_append(out, sync_frame_error(SYNC_ETOOMANY,
                                                  "scope too large for a snapshot; pull instead", id));
            return SYNC_OK;
        }
        if (sp.packed.n >= s->cfg->page_bytes && (rc = snap_flush(s, id, cursor, pageno++, true, t,
                                                                  &sp, &pages)))
            goto fail;
    }
    if ((rc = snap_flush(s, id, cursor, pageno, false, t, &sp, &pages))) goto fail;
    store_abort(t);
    crdt_buf_free(&sp.packed);
    crdt_buf_free(&tmp);
    /* Hand the pages over in order. */
    for (sync_frame *f = pages.frames; f;) {
        sync_frame *next = f->next;
        sync_out_append(out, f);
        f = next;
    }
    out->synced = true;
    return SYNC_OK;
fail:
    store_abort(t);
    sync_frames_free(pages.frames);
    crdt_buf_free(&sp.packed);
    crdt_buf_free(&tmp);
    if (rc == CRDT_ENOMEM) return rc;
    fail(out, SYNC_EUNAVAILABLE, id, 0);
    return SYNC_OK;
}

/* ---- dispatch -------------------------------------------------------------------- */

int sync_session_input(sync_session *s, const uint8_t *msg, size_t n, uint64_t now_ms,
                       sync_out *out)
{
    msgpack_unpacked up;
    size_t off = 0;
    size_t err_off;
    int rc = crdt_mp_check(msg, n, &s->cfg->lim, &err_off);
    if (rc) {
        char m[160];
        snprintf(m, sizeof m, "%s at byte %zu", crdt_strerror(rc), err_off);
        sync_out_append(out, sync_frame_error(rc, m, 0));
        out->close_code = rc == CRDT_ETOOBIG ? 1009 : 1007;
        return SYNC_OK;
    }
    msgpack_unpacked_init(&up);
    msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)msg, n, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        /* Out of memory is no verdict on the frame: the caller closes the
         * connection and the device sends it again (not SYNC_EPROTO, which
         * would tell it the frame itself is wrong). */
        msgpack_unpacked_destroy(&up);
        return CRDT_ENOMEM;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || up.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&up);
        fail(out, SYNC_EPROTO, 0, 1007);
        return SYNC_OK;
    }
    const msgpack_object *t = wire_mp_get(&up.data, "t");
    if (!t || t->type != MSGPACK_OBJECT_STR) {
        msgpack_unpacked_destroy(&up);
        fail(out, SYNC_EPROTO, 0, 1008);
        return SYNC_OK;
    }
    char type[16] = "";
    if (t->via.str.size < sizeof type) memcpy(type, t->via.str.ptr, t->via.str.size);
    if (!strcmp(type, "auth")) {
        rc = on_auth(s, &up.data, now_ms, out);
    } else if (!strcmp(type, "enroll")) {
        rc = on_enroll(s, &up.data, now_ms, out);
    } else if (s->state != ST_READY &&
               (!strcmp(type, "push") || !strcmp(type, "relay") || !strcmp(type, "pull") ||
                !strcmp(type, "subscribe") ||
                !strcmp(type, "rotate") || !strcmp(type, "snapshot") || !strcmp(type, "schema"))) {
        fail(out, SYNC_ESTATE, 0, 1008);
    } else if (!strcmp(type, "push")) {
        rc = on_push(s, &up.data, now_ms, out);
    } else if (!strcmp(type, "relay")) {
        rc = on_relay(s, &up.data, out);
    } else if (!strcmp(type, "pull")) {
        rc = on_pull(s, &up.data, out);
    } else if (!strcmp(type, "subscribe")) {
        rc = on_subscribe(s, &up.data, out);
    } else if (!strcmp(type, "rotate")) {
        rc = on_rotate(s, &up.data, now_ms, out);
    } else if (!strcmp(type, "snapshot")) {
        rc = on_snapshot(s, &up.data, out);
    } else if (!strcmp(type, "schema")) {
        rc = on_schema(s, &up.data, out);
    } else {
        fail(out, SYNC_EFRAME, 0, s->state == ST_READY ? 0 : 1008);
    }
    msgpack_unpacked_destroy(&up);
    return rc;
}
