/*
 * dsync.c — the device side of the Doorstep protocol (docs/PROTOCOL.md;
 * the server side is sync/session.c): hello, enroll or auth, welcome,
 * rotate, push/ack, pull/changes, subscribe.
 *
 * Invariants (crash safety: every step is one LMDB transaction)
 *   - An outbox entry is deleted only in the transaction that records the
 *     server's ack of it as applied, duplicate or quarantined (or, at
 *     welcome, because the server's chain head covers its seq).  A crash
 *     before that commit means the entry is sent again and acked as a
 *     duplicate; nothing is lost and nothing is stored twice.
 *   - A rejected entry moves from the outbox to `rejected` (with its code
 *     and message) in one transaction.
 *   - A page of changes is applied and the cursor advanced to the page's end
 *     in one transaction; a crash replays at most that page, and applying is
 *     idempotent.
 *   - Scope changes (welcome.scope) replace the scope table, purge records
 *     that left it and reset the cursor to 0 when households were added
 *     (so their history is pulled), in one transaction.
 *   - Pushes: at most 500 deltas each and at most 4 awaiting acks.  A gap
 *     (STORE_EGAP with expected seq x) or a retryable error means: wait for
 *     every push in flight, then resend from the lowest seq still needed.
 *   - Every frame from the server passes crdt_mp_check before msgpack-c.
 */
#include "internal.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PUSH_MAX 500
#define INFLIGHT_MAX 4
#define PULL_PAGE 500

enum { E_TOKEN_USED = -216, E_EPOCH = -307, E_EGAP = -210 };

typedef struct conn {
    dsd *h;
    dsd_ws ws;
    int timeout_ms;
    uint8_t srvpk[32], nonce[32];
    uint64_t now;
    uint64_t next_id;
    crdt_buf msg;
    msgpack_unpacked up;
    bool have_up;
    char type[16];
    char (*fresh)[CRDT_RECID_MAX + 1]; /* persons to fetch whole (moved in) */
    uint32_t nfresh;
} conn;

#define FETCH_MAX 500

/* ---- frames ---------------------------------------------------------------------- */

/* msgpack write callback: sticky on failure, so a frame is never sent with
 * bytes missing inside it; every caller checks p before sending (crdt.h). */
static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

static bool get_u64(const msgpack_object *m, const char *k, uint64_t *v)
{
    const msgpack_object *o = wire_mp_get(m, k);
    if (!o || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *v = o->via.u64;
    return true;
}

static bool get_bin(const msgpack_object *m, const char *k, uint8_t *out, size_t n)
{
    const msgpack_object *o = wire_mp_get(m, k);
    if (!o || o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != n) return false;
    memcpy(out, o->via.bin.ptr, n);
    return true;
}

static void conn_free_up(conn *c)
{
    if (c->have_up) msgpack_unpacked_destroy(&c->up);
    c->have_up = false;
}

static int conn_send(conn *c, const crdt_buf *b)
{
    int rc = dsd_ws_send(&c->ws, b->p, b->n);
    return rc ? dsd_fail(c->h, rc, "connection lost while sending") : 0;
}

/*
 * Receive the next frame into c->up (its type in c->type).  An error frame
 * becomes its code (message kept in the handle), except that error frames
 * carrying a request id are returned as frames (type "error") so the push
 * loop can match them.
 */
static int conn_recv(conn *c, int timeout_ms)
{
    int cc = 0;
    conn_free_up(c);
    c->type[0] = 0;
    int rc = dsd_ws_recv(&c->ws, timeout_ms, &c->msg, &cc);
    if (rc == DSD_ETIMEOUT) return dsd_fail(c->h, rc, "server did not answer within %d ms", timeout_ms);
    if (rc == DSD_ECLOSED)
        return dsd_fail(c->h, rc, "server closed the connection%s%d", cc ? " with code " : "", cc);
    if (rc) return dsd_fail(c->h, rc, "bad WebSocket data from the server");
    size_t off = 0;
    if (crdt_mp_check(c->msg.p, c->msg.n, &c->h->lim, &off))
        return dsd_fail(c->h, DSD_EPROTO, "server frame fails the msgpack check at byte %zu", off);
    msgpack_unpacked_init(&c->up);
    c->have_up = true;
    off = 0;
    if (msgpack_unpack_next(&c->up, (const char *)c->msg.p, c->msg.n, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        c->up.data.type != MSGPACK_OBJECT_MAP)
        return dsd_fail(c->h, DSD_EPROTO, "server frame is not a map");
    const msgpack_object *t = wire_mp_get(&c->up.data, "t");
    if (!t || t->type != MSGPACK_OBJECT_STR || t->via.str.size >= sizeof c->type)
        return dsd_fail(c->h, DSD_EPROTO, "server frame without a type");
    memcpy(c->type, t->via.str.ptr, t->via.str.size);
    c->type[t->via.str.size] = 0;
    if (!strcmp(c->type, "error")) {
        const msgpack_object *code = wire_mp_get(&c->up.data, "c"), *m = wire_mp_get(&c->up.data, "m");
        uint64_t id = 0;
        int64_t cv = code && (code->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
                              code->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                         ? code->via.i64
                         : DSD_EPROTO;
        if (cv >= 0 || cv < -10000) cv = DSD_EPROTO;
        char text[200] = "";
        if (m && m->type == MSGPACK_OBJECT_STR)
            snprintf(text, sizeof text, "%.*s", (int)(m->via.str.size < 199 ? m->via.str.size : 199),
                     m->via.str.ptr);
        dsd_fail(c->h, (int)cv, "server: %s (code %lld)", text[0] ? text : dsd_strerror((int)cv),
                 (long long)cv);
        if (get_u64(&c->up.data, "id", &id) && id) return 0;
        return (int)cv;
    }
    return 0;
}

static int expect(conn *c, const char *type)
{
    int rc = conn_recv(c, c->timeout_ms);
    if (rc) return rc;
    if (strcmp(c->type, type))
        return dsd_fail(c->h, DSD_EPROTO, "expected a %s frame, got %s", type, c->type);
    return 0;
}

static int conn_open(dsd *h, conn *c, const char *url, const dsd_sync_opts *o)
{
    memset(c, 0, sizeof *c);
    c->h = h;
    c->ws.fd = -1;
    c->timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : 10000;
    c->next_id = 1;
    int rc = dsd_ws_connect(h, &c->ws, url, c->timeout_ms);
    if (rc) return rc;
    if ((rc = expect(c, "hello"))) return rc;
    uint64_t v = 0;
    if (!get_u64(&c->up.data, "v", &v) || v != 1 || !get_bin(&c->up.data, "srv", c->srvpk, 32) ||
        !get_bin(&c->up.data, "n", c->nonce, 32) || !get_u64(&c->up.data, "now", &c->now))
        return dsd_fail(h, DSD_EPROTO, "hello frame lacks v=1, srv, n or now");
    return 0;
}

static void conn_close(conn *c, bool abort)
{
    free(c->fresh);
    c->fresh = NULL;
    c->nfresh = 0;
    conn_free_up(c);
    if (abort) dsd_ws_abort(&c->ws);
    else dsd_ws_close(&c->ws);
    crdt_buf_free(&c->msg);
}

static void be32w(uint8_t **p, uint32_t v)
{
    for (int i = 3; i >= 0; i--) *(*p)++ = (uint8_t)(v >> (8 * i));
}

/* ---- auth ------------------------------------------------------------------------- */

static int send_auth(conn *c, uint32_t dev, uint32_t epoch, const uint8_t sk[64])
{
    uint8_t cn[32], sig[64], m[WIRE_AUTH_MSG_BYTES];
    crdt_buf f = {0};
    randombytes_buf(cn, sizeof cn);
    wire_auth_msg(c->srvpk, c->nonce, cn, dev, epoch, m);
    crypto_sign_detached(sig, NULL, m, sizeof m, sk);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 5);
    pstr(&pk, "d");
    msgpack_pack_uint32(&pk, dev);
    pstr(&pk, "e");
    msgpack_pack_uint32(&pk, epoch);
    pstr(&pk, "n");
    msgpack_pack_bin_with_body(&pk, cn, 32);
    pstr(&pk, "s");
    msgpack_pack_bin_with_body(&pk, sig, 64);
    pstr(&pk, "t");
    pstr(&pk, "auth");
    int rc = f.p ? conn_send(c, &f) : DSD_ENOMEM;
    crdt_buf_free(&f);
    return rc;
}

typedef struct ident {
    uint32_t dev, epoch, rot_epoch;
    bool rot;
    uint8_t srvpk[32], pk[32], rot_pk[32];
} ident;

static int ident_load(dsd *h, ident *id)
{
    MDB_txn *t;
    uint64_t v;
    memset(id, 0, sizeof *id);
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    if (!(rc = dsd_meta_u64(h, t, "dev", &v))) id->dev = (uint32_t)v;
    if (!rc && !(rc = dsd_meta_u64(h, t, "epoch", &v))) id->epoch = (uint32_t)v;
    if (!rc && !(rc = dsd_meta_u64(h, t, "rot_epoch", &v))) id->rot_epoch = (uint32_t)v;
    if (!rc) rc = dsd_meta_bin(h, t, "srvpk", id->srvpk, 32, NULL);
    if (!rc) rc = dsd_meta_bin(h, t, "pk", id->pk, 32, NULL);
    if (!rc) rc = dsd_meta_bin(h, t, "rot_pk", id->rot_pk, 32, &id->rot);
    mdb_txn_abort(t);
    return rc;
}

/* Read key file `name` and check it holds the secret key of pk. */
static int key_for(dsd *h, const char *name, const uint8_t pk[32], uint8_t sk[64])
{
    uint8_t kpk[32];
    int rc = dsd_key_read(h, name, sk);
    if (rc) return rc;
    crypto_sign_ed25519_sk_to_pk(kpk, sk);
    if (memcmp(kpk, pk, 32)) {
        sodium_memzero(sk, 64);
        return dsd_fail(h, DSD_EKEYFILE, "%s/%s does not match the recorded key", h->dir, name);
    }
    return 0;
}

/* Record a rotation the server confirmed (epoch e, key rot_pk). */
static int rotation_finish(dsd *h, uint32_t e, const uint8_t pk[32])
{
    MDB_txn *t;
    int rc = dsd_txn_begin(h, true, &t);
    if (rc) return rc;
    if ((rc = dsd_meta_put_u64(h, t, "epoch", e)) || (rc = dsd_meta_put_bin(h, t, "pk", pk, 32)) ||
        (rc = dsd_meta_del(h, t, "rot_epoch")) || (rc = dsd_meta_del(h, t, "rot_pk"))) {
        mdb_txn_abort(t);
        return rc;
    }
    if ((rc = dsd_lmdb(h, mdb_txn_commit(t), "commit"))) return rc;
    /* After this commit meta names the new key; load_sk finishes the rename
     * if we crash right here. */
    return dsd_key_rename(h, "device.key.next", "device.key");
}

static int rotation_forget(dsd *h)
{
    MDB_txn *t;
    int rc = dsd_txn_begin(h, true, &t);
    if (rc) return rc;
    if ((rc = dsd_meta_del(h, t, "rot_epoch")) || (rc = dsd_meta_del(h, t, "rot_pk"))) {
        mdb_txn_abort(t);
        return rc;
    }
    rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
    if (!rc) dsd_key_remove(h, "device.key.next");
    return rc;
}

/* Connect and authenticate (finishing a rotation the server confirmed but
 * we never recorded).  On success the welcome frame is in c->up. */
/* Record on disk that the station revoked this device (how: 1 soft, 2
 * hard), so dsd_status reports it and edits are refused.  Returns 0 or an
 * LMDB error. */
static int note_revoked(dsd *h, uint64_t how)
{
    MDB_txn *t;
    int rc = dsd_txn_begin(h, true, &t);
    if (!rc && (rc = dsd_meta_put_u64(h, t, "revoked", how))) mdb_txn_abort(t);
    if (!rc) rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
    return rc;
}

/* A read answered SYNC_EREVOKED: the device was soft-revoked during this
 * session (what was pushed before the read stays handed in).  Returns
 * DSD_EREVOKED, or an LMDB error if the fact could not be recorded. */
static int mark_revoked(dsd *h, dsd_sync_report *rep)
{
    int rc = note_revoked(h, 1);
    if (rc) return rc;
    if (rep) rep->revoked = true;
    return dsd_fail(h, DSD_EREVOKED, "the station revoked this device during the session; it "
                                     "takes no more data");
}

static int connect_auth(dsd *h, conn *c, const char *url, const dsd_sync_opts *o, ident *id)
{
    uint8_t sk[64];
    int rc = ident_load(h, id);
    if (rc) return rc;
    if (!id->dev) return dsd_fail(h, DSD_ENOTENROLLED, "enroll the device before syncing");
    for (int attempt = 0; attempt < 2; attempt++) {
        bool pending = attempt == 1;
        if ((rc = conn_open(h, c, url, o))) return rc;
        if (memcmp(c->srvpk, id->srvpk, 32)) {
            conn_close(c, false);
            return dsd_fail(h, DSD_ESERVERKEY,
                            "the server at %s presents a different key than at enrollment", url);
        }
        rc = pending ? key_for(h, "device.key.next", id->rot_pk, sk) : dsd_key_read(h, "device.key", sk);
        if (!rc && !pending) {
            uint8_t kpk[32];
            crypto_sign_ed25519_sk_to_pk(kpk, sk);
            if (memcmp(kpk, id->pk, 32)) {
                /* meta names the new key but the rename did not happen */
                rc = key_for(h, "device.key.next", id->pk, sk);
                if (!rc) dsd_key_rename(h, "device.key.next", "device.key");
            }
        }
        if (rc) {
            conn_close(c, false);
            return rc;
        }
        rc = send_auth(c, id->dev, pending ? id->rot_epoch : id->epoch, sk);
        sodium_memzero(sk, sizeof sk);
        if (!rc) rc = expect(c, "welcome");
        if (!rc) {
            if (pending) {
                if ((rc = rotation_finish(h, id->rot_epoch, id->rot_pk))) return rc;
                id->epoch = id->rot_epoch;
                memcpy(id->pk, id->rot_pk, 32);
                id->rot = false;
            }
            return 0;
        }
        conn_close(c, true);
        if (rc == -305) {
            /* SYNC_EREVOKED at auth: hard-revoked (a soft-revoked device
             * authenticates in restricted mode).  Nothing more is sent. */
            int wrc = note_revoked(h, 2);
            return wrc ? wrc : rc;
        }
        if (rc != E_EPOCH || pending || !id->rot) return rc;
        /* Our epoch was retired: the server took a rotation we did not record. */
    }
    return rc;
}

/* ---- welcome ------------------------------------------------------------------------ */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Apply the welcome frame in c->up (enroll: record identity first).
 * *rotate: the station requires a key rotation; *revoked: the device is
 * soft-revoked (restricted mode: push only), recorded on disk here. */
static int on_welcome(conn *c, const ident *enrolled, dsd_sync_report *rep, bool *rotate,
                      bool *revoked)
{
    dsd *h = c->h;
    const msgpack_object *w = &c->up.data, *scope = wire_mp_get(w, "scope"), *req = wire_mp_get(w, "req");
    uint64_t dev, epoch, seq, now, lseq;
    uint8_t hh[32], prev[32];
    MDB_txn *t = NULL;
    MDB_cursor *cur = NULL;
    char **ids = NULL;
    size_t nids = 0;
    int rc;
    *rotate = *revoked = false;
    if (!get_u64(w, "d", &dev) || !get_u64(w, "e", &epoch) || !get_u64(w, "seq", &seq) ||
        !get_u64(w, "now", &now) || !get_bin(w, "h", hh, 32) || !scope ||
        scope->type != MSGPACK_OBJECT_ARRAY || dev == 0 || dev > UINT32_MAX)
        return dsd_fail(h, DSD_EPROTO, "welcome frame lacks d, e, seq, now, h or scope");
    if (req && req->type == MSGPACK_OBJECT_ARRAY)
        for (uint32_t i = 0; i < req->via.array.size; i++) {
            const msgpack_object *r = &req->via.array.ptr[i];
            if (r->type == MSGPACK_OBJECT_STR && r->via.str.size == 6 &&
                !memcmp(r->via.str.ptr, "rotate", 6))
                *rotate = true;
            if (r->type == MSGPACK_OBJECT_STR && r->via.str.size == 7 &&
                !memcmp(r->via.str.ptr, "revoked", 7))
                *revoked = true;
        }
    ids = calloc(scope->via.array.size ? scope->via.array.size : 1, sizeof *ids);
    if (!ids) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < scope->via.array.size; i++) {
        const msgpack_object *s = &scope->via.array.ptr[i];
        if (s->type != MSGPACK_OBJECT_STR || s->via.str.size == 0 || s->via.str.size > CRDT_RECID_MAX) {
            rc = dsd_fail(h, DSD_EPROTO, "welcome scope holds a bad household id");
            goto out;
        }
        if (!(ids[nids] = malloc(s->via.str.size + 1))) {
            rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(ids[nids], s->via.str.ptr, s->via.str.size);
        ids[nids++][s->via.str.size] = 0;
    }
    qsort(ids, nids, sizeof *ids, cmp_str);

    if ((rc = dsd_txn_begin(h, true, &t))) goto out;
    if (enrolled) {
        if ((rc = dsd_meta_put_u64(h, t, "dev", dev)) || (rc = dsd_meta_put_u64(h, t, "epoch", epoch)) ||
            (rc = dsd_meta_put_bin(h, t, "srvpk", enrolled->srvpk, 32)) ||
            (rc = dsd_meta_put_bin(h, t, "pk", enrolled->pk, 32)))
            goto out;
    }
    if ((rc = dsd_meta_u64(h, t, "seq", &lseq)) || (rc = dsd_meta_bin(h, t, "prev", prev, 32, NULL)))
        goto out;
    if (seq > lseq || (seq == lseq && seq > 0 && memcmp(hh, prev, 32))) {
        rc = dsd_fail(h, DSD_ECHAIN,
                      "the server holds this device's deltas up to seq %llu (hash differs or device "
                      "is at %llu): restored from an old copy? contact the station",
                      (unsigned long long)seq, (unsigned long long)lseq);
        goto out;
    }
    /* Drop outbox entries the server already holds. */
    if ((rc = mdb_cursor_open(t, h->db_out, &cur))) {
        rc = dsd_lmdb(h, rc, "outbox");
        goto out;
    }
    MDB_val k, v;
    int mrc;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (dsd_rd64(k.mv_data) > seq) break;
        if ((mrc = mdb_cursor_del(cur, 0))) break;
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (mrc && mrc != MDB_NOTFOUND) {
        rc = dsd_lmdb(h, mrc, "outbox");
        goto out;
    }
    if (*revoked && (rc = dsd_meta_put_u64(h, t, "revoked", 1))) goto out;
    /* Clock: keep an offset so new HLCs are not behind the server's time. */
    int64_t off = (int64_t)now - (int64_t)dsd_wall_ms();
    if ((rc = dsd_meta_put_u64(h, t, "off", (uint64_t)off))) goto out;
    /* Scope: replace, purge what left, refill if something was added. */
    bool added = false, removed = false;
    for (size_t i = 0; i < nids; i++)
        if (!dsd_in_scope(h, t, ids[i], strlen(ids[i]))) added = true;
    if ((rc = mdb_cursor_open(t, h->db_scope, &cur))) {
        rc = dsd_lmdb(h, rc, "scope");
        goto out;
    }
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char key[CRDT_RECID_MAX + 1], *kp = key;
        if (k.mv_size > CRDT_RECID_MAX) continue;
        memcpy(key, k.mv_data, k.mv_size);
        key[k.mv_size] = 0;
        if (!bsearch(&kp, ids, nids, sizeof *ids, cmp_str)) {
            removed = true;
            if ((mrc = mdb_cursor_del(cur, 0))) break;
        }
    }
    mdb_cursor_close(cur);
    cur = NULL;
    if (mrc && mrc != MDB_NOTFOUND) {
        rc = dsd_lmdb(h, mrc, "scope");
        goto out;
    }
    for (size_t i = 0; i < nids && added; i++) {
        MDB_val sk = {strlen(ids[i]), ids[i]}, sv = {0, (void *)""};
        if ((rc = dsd_lmdb(h, mdb_put(t, h->db_scope, &sk, &sv, 0), "scope"))) goto out;
    }
    if (removed && (rc = dsd_purge_out_of_scope(h, t, rep ? &rep->purged : NULL))) goto out;
    uint64_t cursor;
    if ((rc = dsd_meta_u64(h, t, "cursor", &cursor))) goto out;
    if (added && cursor > 0) {
        if ((rc = dsd_meta_put_u64(h, t, "cursor", 0))) goto out;
        if (rep) rep->filled = true;
    }
    rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
    t = NULL;
out:
    if (cur) mdb_cursor_close(cur);
    if (t) mdb_txn_abort(t);
    for (size_t i = 0; i < nids; i++) free(ids[i]);
    free(ids);
    return rc;
}

/* ---- rotate --------------------------------------------------------------------------- */

static int do_rotate(conn *c, ident *id, dsd_sync_report *rep)
{
    dsd *h = c->h;
    uint8_t nsk[64], npk[32], osk[64], so[64], sn[64];
    uint8_t m[WIRE_ROTATE_MSG_BYTES];
    uint64_t seal;
    MDB_txn *t;
    crdt_buf f = {0};
    uint32_t e = id->epoch + 1;
    int rc = dsd_txn_begin(h, true, &t);
    if (rc) return rc;
    crypto_sign_keypair(npk, nsk);
    if ((rc = dsd_meta_u64(h, t, "seq", &seal)) || (rc = dsd_key_write(h, "device.key.next", nsk)) ||
        (rc = dsd_meta_put_u64(h, t, "rot_epoch", e)) || (rc = dsd_meta_put_bin(h, t, "rot_pk", npk, 32))) {
        mdb_txn_abort(t);
        sodium_memzero(nsk, sizeof nsk);
        return rc;
    }
    if ((rc = dsd_lmdb(h, mdb_txn_commit(t), "commit"))) {
        sodium_memzero(nsk, sizeof nsk);
        return rc;
    }
    wire_rotate_msg(id->dev, e, npk, seal, m);
    crypto_sign_detached(sn, NULL, m, sizeof m, nsk);
    sodium_memzero(nsk, sizeof nsk);
    if ((rc = key_for(h, "device.key", id->pk, osk))) return rc;
    crypto_sign_detached(so, NULL, m, sizeof m, osk);
    sodium_memzero(osk, sizeof osk);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 6);
    pstr(&pk, "e");
    msgpack_pack_uint32(&pk, e);
    pstr(&pk, "pk");
    msgpack_pack_bin_with_body(&pk, npk, 32);
    pstr(&pk, "seal");
    msgpack_pack_uint64(&pk, seal);
    pstr(&pk, "sn");
    msgpack_pack_bin_with_body(&pk, sn, 64);
    pstr(&pk, "so");
    msgpack_pack_bin_with_body(&pk, so, 64);
    pstr(&pk, "t");
    pstr(&pk, "rotate");
    rc = f.p ? conn_send(c, &f) : DSD_ENOMEM;
    crdt_buf_free(&f);
    if (rc) return rc; /* pending: finished or retried at the next connection */
    rc = conn_recv(c, c->timeout_ms);
    if (rc == 0 && strcmp(c->type, "rotated")) {
        if (!strcmp(c->type, "error")) {
            const msgpack_object *code = wire_mp_get(&c->up.data, "c");
            rc = code ? (int)code->via.i64 : DSD_EPROTO;
        } else {
            rc = dsd_fail(h, DSD_EPROTO, "expected rotated, got %s", c->type);
        }
    }
    if (rc) {
        if (rc != DSD_ETIMEOUT && rc != DSD_ECLOSED) {
            char keep[256];
            snprintf(keep, sizeof keep, "%s", h->err);
            rotation_forget(h);
            dsd_fail(h, rc, "%s", keep);
        }
        return rc;
    }
    uint64_t got = 0;
    if (!get_u64(&c->up.data, "e", &got) || got != e)
        return dsd_fail(h, DSD_EPROTO, "rotated frame names epoch %llu, expected %u",
                        (unsigned long long)got, e);
    if ((rc = rotation_finish(h, e, npk))) return rc;
    id->epoch = e;
    memcpy(id->pk, npk, 32);
    if (rep) rep->rotated = true;
    return 0;
}

/* ---- push ------------------------------------------------------------------------------ */

typedef struct inflight {
    uint64_t id, first, last;
} inflight;

/* Read up to PUSH_MAX outbox entries with seq >= from and build a push. */
static int build_push(dsd *h, uint64_t id, uint64_t from, crdt_buf *f, uint64_t *first,
                      uint64_t *last, uint32_t *count)
{
    MDB_txn *t;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t kb[8];
    crdt_buf body = {0};
    msgpack_packer pk;
    uint32_t n = 0;
    *count = 0;
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(t, h->db_out, &cur))) {
        mdb_txn_abort(t);
        return dsd_lmdb(h, rc, "outbox");
    }
    dsd_be64(kb, from);
    k.mv_data = kb;
    k.mv_size = 8;
    msgpack_packer_init(&pk, &body, crdt_buf_pack_write);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && n < PUSH_MAX;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t s = dsd_rd64(k.mv_data);
        if (msgpack_pack_bin_with_body(&pk, v.mv_data, v.mv_size)) break; /* ENOMEM: below */
        if (n == 0) *first = s;
        *last = s;
        n++;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(t);
    crdt_buf_reset(f);
    if (n) {
        msgpack_packer_init(&pk, f, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 3);
        pstr(&pk, "d");
        msgpack_pack_array(&pk, n);
        if (body.p) {
            crdt_buf_pack_write(f, (const char *)body.p, body.n);
        } else { /* the body failed: so does the frame */
            crdt_buf_free(f);
            f->n = SIZE_MAX;
        }
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, id);
        pstr(&pk, "t");
        pstr(&pk, "push");
    }
    bool oom = body.n == SIZE_MAX || (n && !f->p);
    crdt_buf_free(&body);
    if (oom) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    *count = n;
    return 0;
}

/* Process the ack in c->up.  *resend_from lowered for gaps. */
static int on_ack(conn *c, dsd_sync_report *rep, uint64_t *resend_from, uint64_t *progress)
{
    dsd *h = c->h;
    const msgpack_object *r = wire_mp_get(&c->up.data, "r");
    MDB_txn *t;
    if (!r || r->type != MSGPACK_OBJECT_ARRAY) return dsd_fail(h, DSD_EPROTO, "ack without r");
    int rc = dsd_txn_begin(h, true, &t);
    if (rc) return rc;
    for (uint32_t i = 0; i < r->via.array.size && !rc; i++) {
        const msgpack_object *e = &r->via.array.ptr[i], *res = wire_mp_get(e, "r"), *code = wire_mp_get(e, "c"),
                             *msg = wire_mp_get(e, "m");
        uint64_t seq = 0, x = 0;
        if (!res || res->type != MSGPACK_OBJECT_STR || !get_u64(e, "s", &seq)) {
            rc = dsd_fail(h, DSD_EPROTO, "ack entry without r or s");
            break;
        }
        char what[16] = "";
        if (res->via.str.size < sizeof what) memcpy(what, res->via.str.ptr, res->via.str.size);
        uint8_t kb[8];
        dsd_be64(kb, seq);
        MDB_val k = {8, kb}, v;
        bool done = !strcmp(what, "applied") || !strcmp(what, "duplicate") ||
                    !strcmp(what, "quarantined");
        if (done) {
            int mrc = mdb_del(t, h->db_out, &k, NULL);
            if (mrc && mrc != MDB_NOTFOUND) rc = dsd_lmdb(h, mrc, "outbox");
            if (rep) {
                if (!strcmp(what, "quarantined")) rep->quarantined++;
                else rep->pushed++;
            }
            (*progress)++;
            continue;
        }
        int64_t cv = code ? code->via.i64 : DSD_EPROTO;
        if (cv == E_EGAP && get_u64(e, "x", &x)) {
            if (x < *resend_from) *resend_from = x;
            continue;
        }
        /* Rejected: keep it aside with its code so the app can show it. */
        int mrc = mdb_get(t, h->db_out, &k, &v);
        if (mrc == MDB_NOTFOUND) continue;
        if (mrc) {
            rc = dsd_lmdb(h, mrc, "outbox");
            break;
        }
        char text[200] = "";
        if (msg && msg->type == MSGPACK_OBJECT_STR)
            snprintf(text, sizeof text, "%.*s", (int)(msg->via.str.size < 199 ? msg->via.str.size : 199),
                     msg->via.str.ptr);
        size_t tl = strlen(text);
        uint8_t *val = malloc(4 + tl + 1 + v.mv_size);
        if (!val) {
            rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
            break;
        }
        uint32_t uc = (uint32_t)(int32_t)cv;
        val[0] = (uint8_t)(uc >> 24), val[1] = (uint8_t)(uc >> 16), val[2] = (uint8_t)(uc >> 8),
        val[3] = (uint8_t)uc;
        memcpy(val + 4, text, tl + 1);
        memcpy(val + 5 + tl, v.mv_data, v.mv_size);
        MDB_val rv = {4 + tl + 1 + v.mv_size, val};
        mrc = mdb_put(t, h->db_rej, &k, &rv, 0);
        free(val);
        if (!mrc) mrc = mdb_del(t, h->db_out, &k, NULL);
        if (mrc) rc = dsd_lmdb(h, mrc, "rejected");
        if (rep) rep->rejected++;
    }
    if (rc) {
        mdb_txn_abort(t);
        return rc;
    }
    return dsd_lmdb(h, mdb_txn_commit(t), "commit");
}

static bool is_rejected(dsd *h, uint64_t seq)
{
    MDB_txn *t;
    uint8_t kb[8];
    dsd_be64(kb, seq);
    MDB_val k = {8, kb}, v;
    if (dsd_txn_begin(h, false, &t)) return false;
    bool r = mdb_get(t, h->db_rej, &k, &v) == 0;
    mdb_txn_abort(t);
    return r;
}

/* SYNC_EBUSY, SYNC_EUNAVAILABLE, SYNC_ESHUTDOWN, SYNC_ERATE (sync.h). */
static bool retryable(int code)
{
    return code == -311 || code == -312 || code == -313 || code == -316;
}
#define RATE_WAIT_MAX_MS 60000 /* never trust a server's `ra` beyond a minute */

static int do_push(conn *c, const dsd_sync_opts *o, dsd_sync_report *rep)
{
    dsd *h = c->h;
    inflight fl[INFLIGHT_MAX];
    uint32_t nfl = 0, stalls = 0, sent_frames = 0;
    uint64_t next = 1, resend_from = UINT64_MAX, wait_ms = 0;
    bool more = true;
    crdt_buf f = {0};
    int rc = 0;
    for (;;) {
        /* Fill the window. */
        while (more && resend_from == UINT64_MAX && nfl < INFLIGHT_MAX) {
            uint64_t first = 0, last = 0;
            uint32_t n;
            uint64_t id = c->next_id++;
            if ((rc = build_push(h, id, next, &f, &first, &last, &n))) goto out;
            if (n == 0) {
                more = false;
                break;
            }
            if ((rc = conn_send(c, &f))) goto out;
            if (rep && first < next) rep->resent += n;
            fl[nfl++] = (inflight){id, first, last};
            next = last + 1;
            if (o && o->test_drop_after_pushes && ++sent_frames >= o->test_drop_after_pushes) {
                dsd_ws_abort(&c->ws);
                rc = dsd_fail(h, DSD_ECLOSED, "test: connection dropped after %u push frame(s)",
                              sent_frames);
                goto out;
            }
        }
        if (nfl == 0) {
            if (resend_from == UINT64_MAX) break; /* all sent and acked */
            /* A round ended with something to send again. */
            if (rep) rep->rounds++;
            if (is_rejected(h, resend_from)) {
                rc = dsd_fail(h, DSD_EBLOCKED,
                              "the server expects seq %llu, which it rejected: later deltas cannot "
                              "be stored until the station resolves it",
                              (unsigned long long)resend_from);
                goto out;
            }
            if (wait_ms) {
                /* Rate limited (SYNC_ERATE): the server said when the same
                 * push will pass; that is progress deferred, not a stall. */
                struct timespec ts = {(time_t)(wait_ms / 1000), (long)(wait_ms % 1000) * 1000000L};
                nanosleep(&ts, NULL);
                wait_ms = 0;
            } else if (++stalls > 50) {
                rc = dsd_fail(h, DSD_ETIMEOUT, "push made no progress after %u rounds", stalls);
                goto out;
            } else if (stalls > 1) {
                struct timespec ts = {0, 50000000L * (stalls < 10 ? stalls : 10)};
                nanosleep(&ts, NULL);
            }
            next = resend_from;
            resend_from = UINT64_MAX;
            more = true;
            continue;
        }
        if ((rc = conn_recv(c, c->timeout_ms))) goto out;
        uint64_t id = 0;
        if (!strcmp(c->type, "ack") || !strcmp(c->type, "error")) {
            if (!get_u64(&c->up.data, "id", &id)) {
                rc = dsd_fail(h, DSD_EPROTO, "%s frame without id", c->type);
                goto out;
            }
        } else if (!strcmp(c->type, "changes")) {
            continue; /* live changes are not subscribed during push; ignore */
        } else {
            rc = dsd_fail(h, DSD_EPROTO, "unexpected %s frame during push", c->type);
            goto out;
        }
        uint32_t i = 0;
        while (i < nfl && fl[i].id != id) i++;
        if (i == nfl) {
            rc = dsd_fail(h, DSD_EPROTO, "%s for unknown push id %llu", c->type,
                          (unsigned long long)id);
            goto out;
        }
        inflight done = fl[i];
        memmove(fl + i, fl + i + 1, (nfl - i - 1) * sizeof *fl);
        nfl--;
        if (!strcmp(c->type, "error")) {
            const msgpack_object *code = wire_mp_get(&c->up.data, "c");
            int cv = code ? (int)code->via.i64 : DSD_EPROTO;
            if (!retryable(cv)) {
                rc = cv;
                goto out;
            }
            uint64_t ra = 0;
            if (cv == -316 && get_u64(&c->up.data, "ra", &ra)) {
                if (ra > RATE_WAIT_MAX_MS) ra = RATE_WAIT_MAX_MS;
                if (ra > wait_ms) wait_ms = ra;
            }
            if (done.first < resend_from) resend_from = done.first;
            continue;
        }
        uint64_t progress = 0;
        if ((rc = on_ack(c, rep, &resend_from, &progress))) goto out;
        if (progress) stalls = 0;
    }
out:
    crdt_buf_free(&f);
    return rc;
}

/* ---- pull and live ----------------------------------------------------------------------- */

/* The key records of a changes frame, each checked with the pinned server key. */
typedef struct keyrecs {
    uint32_t n;
    struct { uint64_t dev, epoch; uint8_t pk[32]; } *k;
} keyrecs;

/*
 * The frame's key records ("k": {d, e, g, p}): each says "device d's key of
 * epoch e is p", signed by the server key pinned at enrollment
 * (wire_key_msg).  0, or DSD_EFORGED / DSD_EPROTO / DSD_ENOMEM.
 */
static int keyrecs_load(conn *c, keyrecs *kr)
{
    dsd *h = c->h;
    const msgpack_object *k = wire_mp_get(&c->up.data, "k");
    kr->n = 0;
    kr->k = NULL;
    if (!k || k->type != MSGPACK_OBJECT_ARRAY || k->via.array.size > 1024)
        return dsd_fail(h, DSD_EPROTO, "changes frame lacks its key records (k)");
    uint32_t nk = k->via.array.size;
    if (!(kr->k = calloc(nk ? nk : 1, sizeof *kr->k))) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < nk; i++) {
        const msgpack_object *r = &k->via.array.ptr[i];
        uint8_t sig[64], msg[WIRE_KEY_MSG_BYTES];
        if (!get_u64(r, "d", &kr->k[i].dev) || !get_u64(r, "e", &kr->k[i].epoch) ||
            kr->k[i].dev == 0 || kr->k[i].dev > UINT32_MAX || kr->k[i].epoch > UINT32_MAX ||
            !get_bin(r, "g", sig, 64) || !get_bin(r, "p", kr->k[i].pk, 32))
            return dsd_fail(h, DSD_EPROTO, "a key record of a changes frame is malformed");
        wire_key_msg((uint32_t)kr->k[i].dev, (uint32_t)kr->k[i].epoch, kr->k[i].pk, msg);
        if (crypto_sign_verify_detached(sig, msg, sizeof msg, c->srvpk) != 0)
            return dsd_fail(h, DSD_EFORGED, "the key record of device %llu epoch %llu is not "
                            "signed by the server key", (unsigned long long)kr->k[i].dev,
                            (unsigned long long)kr->k[i].epoch);
        kr->n++;
    }
    return 0;
}

/*
 * Envelope b[0..n) of a changes frame, decoded into *d (borrowing from b and
 * a) and verified: signed by the key its (device, epoch) has in kr, or, for
 * the server's own (device 0), by the pinned server key.  0, or DSD_EFORGED /
 * DSD_EPROTO.
 */
static int envelope_verify(conn *c, const keyrecs *kr, const uint8_t *b, size_t n,
                           crdt_arena *a, crdt_delta *d)
{
    const uint8_t *db, *sig, *pk = NULL;
    size_t dl;
    int eo;
    crdt_arena_reset(a);
    if (wire_envelope_decode(b, n, &crdt_limits_default, &db, &dl, &sig) ||
        crdt_delta_decode(db, dl, &crdt_limits_default, a, d, &eo))
        return dsd_fail(c->h, DSD_EPROTO, "an envelope of a changes frame does not decode");
    if (d->dev == 0) pk = c->srvpk;
    for (uint32_t j = 0; !pk && j < kr->n; j++)
        if (kr->k[j].dev == d->dev && kr->k[j].epoch == d->epoch) pk = kr->k[j].pk;
    if (!pk)
        return dsd_fail(c->h, DSD_EFORGED, "no key record for device %u epoch %u in a changes "
                        "frame", d->dev, d->epoch);
    if (wire_delta_verify(db, dl, sig, pk))
        return dsd_fail(c->h, DSD_EFORGED, "the envelope of device %u seq %llu is not signed "
                        "by its key", d->dev, (unsigned long long)d->seq);
    return 0;
}

/*
 * Apply the changes frame in c->up: envelopes and the new cursor, one txn.
 * Every envelope is verified (envelope_verify) before it is applied; one that
 * fails aborts the txn, so nothing of the page is applied and the cursor stays.
 */
static int on_changes(conn *c, dsd_sync_report *rep, bool *more)
{
    dsd *h = c->h;
    const msgpack_object *e = wire_mp_get(&c->up.data, "e"), *m = wire_mp_get(&c->up.data, "more");
    uint64_t n;
    MDB_txn *t = NULL;
    keyrecs kr = {0, NULL};
    crdt_arena *a = NULL;
    uint64_t pulled = 0, purged = 0;
    uint32_t nfresh = c->nfresh;
    if (!e || e->type != MSGPACK_OBJECT_ARRAY || !get_u64(&c->up.data, "n", &n))
        return dsd_fail(h, DSD_EPROTO, "changes frame lacks e or n");
    if (more) *more = m && m->type == MSGPACK_OBJECT_BOOLEAN && m->via.boolean;
    int rc = keyrecs_load(c, &kr);
    if (!rc && !(a = crdt_arena_new(4096))) rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
    if (!rc) rc = dsd_txn_begin(h, true, &t);
    if (rc) goto out;
    uint64_t cursor;
    if ((rc = dsd_meta_u64(h, t, "cursor", &cursor))) goto out;
    for (uint32_t i = 0; i < e->via.array.size; i++) {
        const msgpack_object *b = &e->via.array.ptr[i];
        crdt_delta d;
        if (b->type != MSGPACK_OBJECT_BIN) {
            rc = dsd_fail(h, DSD_EPROTO, "changes entry is not bin");
            goto out;
        }
        const uint8_t *bp = (const uint8_t *)b->via.bin.ptr;
        if ((rc = envelope_verify(c, &kr, bp, b->via.bin.size, a, &d))) goto out;
        bool fresh = false;
        if ((rc = dsd_apply_remote(h, t, bp, b->via.bin.size, &purged, &fresh))) goto out;
        pulled++;
        if (fresh && nfresh < FETCH_MAX && d.id_len <= CRDT_RECID_MAX) {
            if (!c->fresh && !(c->fresh = calloc(FETCH_MAX, sizeof *c->fresh))) {
                rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
                goto out;
            }
            memcpy(c->fresh[nfresh], d.id, d.id_len); /* the envelope's record id */
            c->fresh[nfresh][d.id_len] = 0;
            nfresh++;
        }
    }
    if (n > cursor && (rc = dsd_meta_put_u64(h, t, "cursor", n))) goto out;
    rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
    t = NULL;
    if (!rc) {
        /* Counted, and persons to fetch noted, only once the page is in. */
        c->nfresh = nfresh;
        if (rep) {
            rep->pulled += pulled;
            rep->purged += purged;
        }
    }
out:
    if (t) mdb_txn_abort(t);
    crdt_arena_free(a);
    free(kr.k);
    return rc;
}


/*
 * Fetch the merged records of persons this device had never seen (a person
 * who moved into its households arrives with history it never received:
 * the feed only carries deltas from the move on).  Uses the snapshot frame
 * with a list of ids; every page is checked against the server key from
 * hello before it is merged.  Live changes arriving meanwhile are applied.
 */
static int do_fetch(conn *c, dsd_sync_report *rep)
{
    dsd *h = c->h;
    crdt_buf f = {0};
    int rc = 0;
    uint64_t dev = 0;
    if (!c->nfresh) return 0;
    {
        MDB_txn *t;
        if ((rc = dsd_txn_begin(h, false, &t))) return rc;
        rc = dsd_meta_u64(h, t, "dev", &dev);
        mdb_txn_abort(t);
        if (rc) return rc;
    }
    while (c->nfresh && !rc) {
        uint64_t id = c->next_id++;
        msgpack_packer pk;
        crdt_buf_reset(&f);
        msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 3);
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, id);
        pstr(&pk, "k");
        msgpack_pack_array(&pk, c->nfresh);
        for (uint32_t i = 0; i < c->nfresh; i++) pstr(&pk, c->fresh[i]);
        pstr(&pk, "t");
        pstr(&pk, "snapshot");
        c->nfresh = 0;
        if (!f.p) return dsd_fail(h, DSD_ENOMEM, "out of memory");
        if ((rc = conn_send(c, &f))) break;
        for (bool more = true; more && !rc;) {
            if ((rc = conn_recv(c, c->timeout_ms))) break;
            uint64_t rid = 0;
            get_u64(&c->up.data, "id", &rid);
            if (!strcmp(c->type, "changes")) {
                rc = on_changes(c, rep, NULL);
                continue;
            }
            if (!strcmp(c->type, "error") && rid == id) {
                const msgpack_object *code = wire_mp_get(&c->up.data, "c");
                rc = code ? (int)code->via.i64 : DSD_EPROTO;
                break;
            }
            if (strcmp(c->type, "snapshot") || rid != id) continue;
            const msgpack_object *r = wire_mp_get(&c->up.data, "r"), *m = wire_mp_get(&c->up.data, "more");
            uint64_t n = 0, pg = 0;
            uint8_t sig[64];
            if (!r || r->type != MSGPACK_OBJECT_ARRAY || !get_u64(&c->up.data, "n", &n) ||
                !get_u64(&c->up.data, "p", &pg) || !get_bin(&c->up.data, "g", sig, 64)) {
                rc = dsd_fail(h, DSD_EPROTO, "snapshot page lacks r, n, p or g");
                break;
            }
            more = m && m->type == MSGPACK_OBJECT_BOOLEAN && m->via.boolean;
            /* Check the server's signature over the page. */
            crypto_generichash_state hs;
            uint8_t digest[32], msg[WIRE_SNAPSHOT_MSG_BYTES];
            crypto_generichash_init(&hs, NULL, 0, 32);
            for (uint32_t i = 0; i < r->via.array.size; i++) {
                const msgpack_object *b = &r->via.array.ptr[i];
                uint8_t len[4];
                uint8_t *lp = len;
                if (b->type != MSGPACK_OBJECT_BIN) {
                    rc = dsd_fail(h, DSD_EPROTO, "snapshot record is not bin");
                    break;
                }
                be32w(&lp, b->via.bin.size);
                crypto_generichash_update(&hs, len, 4);
                crypto_generichash_update(&hs, (const uint8_t *)b->via.bin.ptr, b->via.bin.size);
            }
            if (rc) break;
            crypto_generichash_final(&hs, digest, 32);
            wire_snapshot_msg((uint32_t)dev, n, (uint32_t)pg, more, digest, msg);
            if (crypto_sign_verify_detached(sig, msg, sizeof msg, c->srvpk) != 0) {
                rc = dsd_fail(h, DSD_EPROTO, "snapshot page signature does not verify");
                break;
            }
            MDB_txn *t;
            if ((rc = dsd_txn_begin(h, true, &t))) break;
            for (uint32_t i = 0; i < r->via.array.size && !rc; i++)
                rc = dsd_merge_record(h, t, (const uint8_t *)r->via.array.ptr[i].via.bin.ptr,
                                      r->via.array.ptr[i].via.bin.size);
            if (rc) mdb_txn_abort(t);
            else rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
        }
    }
    crdt_buf_free(&f);
    return rc;
}

static int do_pull(conn *c, dsd_sync_report *rep)
{
    dsd *h = c->h;
    crdt_buf f = {0};
    int rc = 0;
    for (int pages = 0;; pages++) {
        MDB_txn *t;
        uint64_t cursor;
        if ((rc = dsd_txn_begin(h, false, &t))) break;
        rc = dsd_meta_u64(h, t, "cursor", &cursor);
        mdb_txn_abort(t);
        if (rc) break;
        uint64_t id = c->next_id++;
        msgpack_packer pk;
        crdt_buf_reset(&f);
        msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 4);
        pstr(&pk, "a");
        msgpack_pack_uint64(&pk, cursor);
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, id);
        pstr(&pk, "m");
        msgpack_pack_uint32(&pk, PULL_PAGE);
        pstr(&pk, "t");
        pstr(&pk, "pull");
        if (!f.p) {
            rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
            break;
        }
        if ((rc = conn_send(c, &f))) break;
        bool more = false;
        for (;;) {
            if ((rc = conn_recv(c, c->timeout_ms))) goto out;
            uint64_t rid = 0;
            get_u64(&c->up.data, "id", &rid);
            if (!strcmp(c->type, "error")) {
                const msgpack_object *code = wire_mp_get(&c->up.data, "c");
                rc = code ? (int)code->via.i64 : DSD_EPROTO;
                /* Revoked (soft) while this session was open: the server
                 * keeps the connection for pushes and refuses reads. */
                if (rc == -305 && rid == id) rc = mark_revoked(h, rep);
                goto out;
            }
            if (!strcmp(c->type, "changes") && rid == id) break;
            if (strcmp(c->type, "changes") && strcmp(c->type, "ack")) {
                rc = dsd_fail(h, DSD_EPROTO, "unexpected %s frame during pull", c->type);
                goto out;
            }
        }
        if ((rc = on_changes(c, rep, &more))) break;
        if ((rc = do_fetch(c, rep))) break;
        if (!more) break;
    }
out:
    crdt_buf_free(&f);
    return rc;
}

static int do_live(conn *c, int live_ms, dsd_sync_report *rep)
{
    dsd *h = c->h;
    MDB_txn *t;
    uint64_t cursor;
    crdt_buf f = {0};
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    rc = dsd_meta_u64(h, t, "cursor", &cursor);
    mdb_txn_abort(t);
    if (rc) return rc;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 2);
    pstr(&pk, "a");
    msgpack_pack_uint64(&pk, cursor);
    pstr(&pk, "t");
    pstr(&pk, "subscribe");
    rc = f.p ? conn_send(c, &f) : DSD_ENOMEM;
    crdt_buf_free(&f);
    if (rc) return rc;
    uint64_t end = dsd_wall_ms() + (uint64_t)live_ms;
    for (;;) {
        uint64_t now = dsd_wall_ms();
        if (now >= end) return 0;
        rc = conn_recv(c, (int)(end - now));
        if (rc == DSD_ETIMEOUT) return 0;
        if (rc) return rc;
        if (!strcmp(c->type, "changes") && (rc = on_changes(c, rep, NULL))) return rc;
        if ((rc = do_fetch(c, rep))) return rc;
    }
}

/* ---- public entry points ------------------------------------------------------------------ */

static int session(dsd *h, conn *c, ident *id, const dsd_sync_opts *o, dsd_sync_report *rep,
                   const ident *enrolled)
{
    dsd_sync_report local;
    if (!rep) {
        memset(&local, 0, sizeof local);
        rep = &local;
    }
    bool rotate = false, revoked = false;
    int rc = on_welcome(c, enrolled, rep, &rotate, &revoked);
    if (rc) return rc;
    if (revoked) {
        /* Restricted mode: hand in the outbox (the server quarantines what
         * it did not hold at revocation), then stop; reads are refused. */
        if ((rc = do_push(c, o, rep))) return rc;
        rep->revoked = true;
        return dsd_fail(h, DSD_EREVOKED,
                        "the station revoked this device; %llu pending edit(s) handed in (%llu "
                        "kept for review); it takes no more data",
                        (unsigned long long)(rep->pushed + rep->quarantined),
                        (unsigned long long)rep->quarantined);
    }
    if (rotate && (rc = do_rotate(c, id, rep))) return rc;
    if (!(o && o->no_push) && (rc = do_push(c, o, rep))) return rc;
    if (!(o && o->no_pull) && (rc = do_pull(c, rep))) return rc;
    if (o && o->live_ms > 0 && (rc = do_live(c, o->live_ms, rep))) return rc;
    return 0;
}

int dsd_sync(dsd *h, const char *url, const dsd_sync_opts *o, dsd_sync_report *rep)
{
    conn c;
    ident id;
    if (!h) return DSD_EINVAL;
    memset(&c, 0, sizeof c);
    c.ws.fd = -1;
    if (rep) memset(rep, 0, sizeof *rep);
    h->err[0] = 0;
    int rc = connect_auth(h, &c, url, o, &id);
    if (rc) {
        conn_close(&c, true);
        return rc;
    }
    rc = session(h, &c, &id, o, rep, NULL);
    conn_close(&c, rc == DSD_ECLOSED);
    return rc;
}

int dsd_rotate(dsd *h, const char *url, const dsd_sync_opts *o)
{
    conn c;
    ident id;
    bool rotate;
    if (!h) return DSD_EINVAL;
    memset(&c, 0, sizeof c);
    c.ws.fd = -1;
    int rc = connect_auth(h, &c, url, o, &id);
    bool revoked;
    if (!rc) rc = on_welcome(&c, NULL, NULL, &rotate, &revoked);
    if (!rc && revoked)
        rc = dsd_fail(h, DSD_EREVOKED, "the station revoked this device: no key rotation");
    if (!rc) rc = do_rotate(&c, &id, NULL);
    conn_close(&c, rc != 0);
    return rc;
}

int dsd_schema_fetch(dsd *h, const char *url, const dsd_sync_opts *o, uint8_t **json, size_t *n)
{
    conn c;
    ident id;
    bool rotate, revoked;
    if (!h || !json || !n) return DSD_EINVAL;
    *json = NULL;
    *n = 0;
    memset(&c, 0, sizeof c);
    c.ws.fd = -1;
    h->err[0] = 0;
    int rc = connect_auth(h, &c, url, o, &id);
    if (!rc) rc = on_welcome(&c, NULL, NULL, &rotate, &revoked);
    crdt_buf f = {0};
    if (!rc) {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 2);
        pstr(&pk, "id");
        msgpack_pack_uint64(&pk, 1);
        pstr(&pk, "t");
        pstr(&pk, "schema");
        rc = f.p ? conn_send(&c, &f) : dsd_fail(h, DSD_ENOMEM, "out of memory");
    }
    /* Live changes are not subscribed here: the next frame is the answer. */
    if (!rc) rc = conn_recv(&c, c.timeout_ms);
    if (!rc && !strcmp(c.type, "error")) {
        const msgpack_object *code = wire_mp_get(&c.up.data, "c");
        rc = code ? (int)code->via.i64 : DSD_EPROTO;
    } else if (!rc && strcmp(c.type, "schema")) {
        rc = dsd_fail(h, DSD_EPROTO, "expected a schema frame, got %s", c.type);
    }
    if (!rc) {
        const msgpack_object *b = wire_mp_get(&c.up.data, "b");
        uint8_t sig[64], msg[WIRE_SCHEMA_MSG_BYTES];
        if (!b || b->type != MSGPACK_OBJECT_BIN || !b->via.bin.size || !get_bin(&c.up.data, "g", sig, 64)) {
            rc = dsd_fail(h, DSD_EPROTO, "schema frame lacks b or g");
        } else {
            wire_schema_msg((const uint8_t *)b->via.bin.ptr, b->via.bin.size, msg);
            if (crypto_sign_verify_detached(sig, msg, sizeof msg, c.srvpk) != 0)
                rc = dsd_fail(h, DSD_EFORGED, "the schema is not signed by the server key");
            else if (!(*json = malloc(b->via.bin.size)))
                rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
            else {
                memcpy(*json, b->via.bin.ptr, b->via.bin.size);
                *n = b->via.bin.size;
            }
        }
    }
    crdt_buf_free(&f);
    conn_close(&c, rc != 0);
    return rc;
}

int dsd_enroll(dsd *h, const char *url, const char *token)
{
    conn c;
    ident id;
    uint8_t sk[64];
    crdt_buf f = {0};
    if (!h || !token) return DSD_EINVAL;
    h->err[0] = 0;
    int rc = ident_load(h, &id);
    if (rc) return rc;
    if (id.dev) return dsd_fail(h, DSD_EENROLLED, "this device is already enrolled as %u", id.dev);
    size_t tl = strlen(token);
    if (tl == 0 || tl > WIRE_TOKEN_MAX) return dsd_fail(h, DSD_EINVAL, "enrollment token must be 1-64 characters");
    /* The new key is on disk before the server hears of it. */
    crypto_sign_keypair(id.pk, sk);
    if ((rc = dsd_key_write(h, "device.key", sk))) {
        sodium_memzero(sk, sizeof sk);
        return rc;
    }
    if ((rc = conn_open(h, &c, url, NULL))) {
        sodium_memzero(sk, sizeof sk);
        conn_close(&c, true);
        return rc;
    }
    memcpy(id.srvpk, c.srvpk, 32);
    uint8_t m[WIRE_ENROLL_MSG_MAX], sig[64];
    size_t ml = wire_enroll_msg(c.srvpk, c.nonce, token, tl, id.pk, m);
    crypto_sign_detached(sig, NULL, m, ml, sk);
    sodium_memzero(sk, sizeof sk);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 4);
    pstr(&pk, "pk");
    msgpack_pack_bin_with_body(&pk, id.pk, 32);
    pstr(&pk, "sig");
    msgpack_pack_bin_with_body(&pk, sig, 64);
    pstr(&pk, "t");
    pstr(&pk, "enroll");
    pstr(&pk, "tok");
    msgpack_pack_str_with_body(&pk, token, tl);
    rc = f.p ? conn_send(&c, &f) : DSD_ENOMEM;
    crdt_buf_free(&f);
    if (!rc) rc = expect(&c, "welcome");
    if (!rc) {
        uint64_t d = 0, e = 0;
        get_u64(&c.up.data, "d", &d);
        get_u64(&c.up.data, "e", &e);
        id.dev = (uint32_t)d;
        id.epoch = (uint32_t)e;
        dsd_sync_opts o = {0};
        o.no_push = true;
        rc = session(h, &c, &id, &o, NULL, &id);
    }
    conn_close(&c, rc != 0);
    return rc;
}

/* ---- channel: an authenticated connection for another protocol role -------------- */

struct dsd_chan {
    conn c;
    ident id;
};

int dsd_chan_open(dsd *h, const char *url, int timeout_ms, dsd_chan **out)
{
    bool rotate = false, revoked = false;
    if (!h || !out) return DSD_EINVAL;
    *out = NULL;
    h->err[0] = 0;
    dsd_chan *ch = calloc(1, sizeof *ch);
    if (!ch) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    ch->c.ws.fd = -1;
    dsd_sync_opts o = {0};
    o.timeout_ms = timeout_ms;
    int rc = connect_auth(h, &ch->c, url, &o, &ch->id);
    if (!rc) rc = on_welcome(&ch->c, NULL, NULL, &rotate, &revoked);
    if (!rc && revoked)
        rc = dsd_fail(h, DSD_EREVOKED, "the server revoked this device (soft): it takes no more data");
    if (!rc && rotate) rc = do_rotate(&ch->c, &ch->id, NULL);
    if (rc) {
        conn_close(&ch->c, true);
        free(ch);
        return rc;
    }
    *out = ch;
    return 0;
}

int dsd_chan_send(dsd_chan *ch, const uint8_t *p, size_t n)
{
    crdt_buf b = {(uint8_t *)p, n, n};
    if (!ch || !p) return DSD_EINVAL;
    return conn_send(&ch->c, &b);
}

int dsd_chan_recv(dsd_chan *ch, int timeout_ms, const uint8_t **p, size_t *n)
{
    if (!ch || !p || !n) return DSD_EINVAL;
    *p = NULL;
    *n = 0;
    int rc = conn_recv(&ch->c, timeout_ms);
    if (rc) return rc;
    *p = ch->c.msg.p;
    *n = ch->c.msg.n;
    return 0;
}

uint32_t dsd_chan_device(const dsd_chan *ch) { return ch ? ch->id.dev : 0; }

void dsd_chan_close(dsd_chan *ch, bool abort)
{
    if (!ch) return;
    conn_close(&ch->c, abort);
    free(ch);
}
