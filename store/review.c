/*
 * review.c — administration of devices and of the quarantine: soft and hard
 * revocation, admin-required key rotation, device listing, and quarantine
 * review (list, accept, reject).  Used by doorstepctl; the server reads the
 * resulting device states (store_append quarantines on them; the admin
 * generation bumped by store_device_put closes live sessions).
 *
 * Layout (see internal.h for the whole store)
 *   meta  "qreview" qid(8) -> sealed: layout(1)=1 state(1) decided_ms(8)
 *                             aseq(8) sseq(8) alen(1) actor nlen(1) note
 *   A quarantine entry (quar qid(8) -> reason(1) dev(4) seq(8) at(8)
 *   envelope, written by append.c) is never rewritten; the absence of a
 *   review record means "pending".  Review records live in meta, not in
 *   quar, so that quar's MDB_LAST (next qid) and ms_entries (count) keep
 *   meaning exactly "quarantine entries".
 *
 * Invariants
 *   - Nothing here deletes a quarantine entry, a delta, a key or an audit
 *     entry.  A review record goes from absent (pending) to accepted or
 *     rejected once, never back, never from one decision to the other.
 *   - Every decision and every device state change here writes an audit
 *     entry in the same transaction, naming the actor.
 *   - An accepted delta is in the log under exactly one new server seq (or,
 *     if its exact bytes were already applied, the existing one) and in its
 *     record's history, through store_merge_reviewed — the same merge and
 *     index code as store_append — so store_verify holds after an accept.
 *   - Device chains (dots, heads) only change in one case: a delta held in
 *     the chain (clock ahead, or out of scope: seq in the chain, server seq
 *     0, same hash) has its dot linked to the server seq its acceptance
 *     assigned.  Chains stay contiguous.
 *   - Revocation is monotonic: ACTIVE/FROZEN -> REVOKED_SOFT -> REVOKED_HARD.
 *   - Nothing here reads a clock: times are the caller's now_ms.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1..max bytes of valid UTF-8 without NUL. */
static bool text_ok(const char *s, size_t max)
{
    if (!s) return false;
    size_t n = strnlen(s, max + 1);
    return n >= 1 && n <= max && crdt_utf8_valid((const uint8_t *)s, n);
}

/* ---- devices ------------------------------------------------------------------- */

typedef struct keyvec {
    store_key *k;
    size_t n, cap;
} keyvec;

static int collect_key(const store_key *k, void *arg)
{
    keyvec *v = arg;
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 4;
        store_key *nk = realloc(v->k, nc * sizeof *nk);
        if (!nk) return CRDT_ENOMEM;
        v->k = nk;
        v->cap = nc;
    }
    v->k[v->n++] = *k;
    return STORE_OK;
}

const char *store_device_state_name(uint8_t st)
{
    switch (st) {
    case STORE_DEV_ACTIVE: return "active";
    case STORE_DEV_FROZEN: return "frozen";
    case STORE_DEV_REVOKED_SOFT: return "revoked_soft";
    case STORE_DEV_REVOKED_HARD: return "revoked_hard";
    default: return "unknown";
    }
}

int store_device_revoke(store_txn *t, uint32_t dev, int how, uint64_t now_ms, const char *actor)
{
    store_device d;
    keyvec keys = {0};
    uint8_t hash[CRDT_HASH_BYTES];
    uint64_t head = 0;
    size_t revoked = 0;
    char detail[256];
    int rc;
    if (!t->rw) return STORE_EREADONLY;
    if ((how != STORE_REVOKE_SOFT && how != STORE_REVOKE_HARD) ||
        !text_ok(actor, STORE_AUDIT_ACTOR_MAX))
        return STORE_EINVAL;
    if ((rc = store_device_get(t, dev, &d))) return rc;
    if (d.state == STORE_DEV_REVOKED_HARD)
        return how == STORE_REVOKE_HARD ? STORE_OK : STORE_EINVAL;
    if (d.state == STORE_DEV_REVOKED_SOFT && how == STORE_REVOKE_SOFT) return STORE_OK;
    if ((rc = store_chain_head(t, dev, &head, hash))) return rc;
    uint8_t was = d.state;
    if (how == STORE_REVOKE_SOFT) {
        d.state = STORE_DEV_REVOKED_SOFT;
        d.revoked_at_seq = head;
    } else {
        /* From soft, keep the seq held at the first revocation (shown by
         * doorstepctl); a hard revocation does not read it. */
        if (was != STORE_DEV_REVOKED_SOFT) d.revoked_at_seq = head;
        d.state = STORE_DEV_REVOKED_HARD;
    }
    if ((rc = store_device_put(t, &d))) return rc;
    /* Collect first: no writes while store_key_list's cursor is open. */
    if ((rc = store_key_list(t, dev, collect_key, &keys))) goto out;
    for (size_t i = 0; i < keys.n; i++) {
        store_key *k = &keys.k[i];
        if (k->state == STORE_KEY_ACTIVE ||
            (how == STORE_REVOKE_HARD && k->state == STORE_KEY_RETIRED)) {
            k->state = STORE_KEY_REVOKED;
            k->changed_ms = now_ms;
            if ((rc = store_key_put(t, k))) goto out;
            revoked++;
        }
    }
    snprintf(detail, sizeof detail,
             "device %u (%s) %s -> %s; chain head seq %llu; %zu key(s) revoked", dev,
             d.volunteer, store_device_state_name(was), store_device_state_name(d.state), (unsigned long long)head,
             revoked);
    rc = store_audit_append(t, now_ms, actor,
                            how == STORE_REVOKE_SOFT ? "device.revoke_soft" : "device.revoke_hard",
                            detail, NULL);
out:
    free(keys.k);
    return rc;
}

int store_device_require_rotation(store_txn *t, uint32_t dev, bool on, uint64_t now_ms,
                                  const char *actor)
{
    store_device d;
    char detail[160];
    int rc;
    if (!t->rw) return STORE_EREADONLY;
    if (!text_ok(actor, STORE_AUDIT_ACTOR_MAX)) return STORE_EINVAL;
    if ((rc = store_device_get(t, dev, &d))) return rc;
    if (d.state == STORE_DEV_REVOKED_SOFT || d.state == STORE_DEV_REVOKED_HARD)
        return STORE_EINVAL;
    bool is_on = (d.flags & STORE_DEVF_ROTATE_REQUIRED) != 0;
    if (is_on == on) return STORE_OK;
    if (on) d.flags |= STORE_DEVF_ROTATE_REQUIRED;
    else d.flags &= (uint8_t)~STORE_DEVF_ROTATE_REQUIRED;
    if ((rc = store_device_put(t, &d))) return rc;
    snprintf(detail, sizeof detail, "device %u (%s), key epoch %u: rotation %s", dev,
             d.volunteer, d.epoch, on ? "required on next connect" : "no longer required");
    return store_audit_append(t, now_ms, actor,
                              on ? "device.rotate_require" : "device.rotate_cancel", detail,
                              NULL);
}

int store_device_list(store_txn *t, store_device_cb cb, void *arg)
{
    MDB_cursor *c;
    MDB_val k, v;
    store_device cur;
    bool have = false;
    size_t scope_n = 0;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_DEVICES], &c);
    if (rc) return store_lmdb_err(rc);
    /* Keys: dev(4) is the device; dev(4) || household a scope entry, which
     * sorts right after its device. */
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        bool end = rc == MDB_NOTFOUND;
        if (rc && !end) {
            rc = store_lmdb_err(rc);
            break;
        }
        if (!end && k.mv_size < 4) {
            rc = STORE_ECORRUPT;
            break;
        }
        if (!end && k.mv_size > 4) {
            /* A scope entry: of the current device (an entry without a
             * device record belongs to nobody listed). */
            if (have && rd32(k.mv_data) == cur.id) scope_n++;
            continue;
        }
        if (have && (rc = cb(&cur, scope_n, arg))) break;
        if (end) {
            rc = STORE_OK;
            break;
        }
        if ((rc = store_device_get(t, rd32(k.mv_data), &cur))) break;
        have = true;
        scope_n = 0;
    }
    mdb_cursor_close(c);
    return rc;
}

/* ---- quarantine review ------------------------------------------------------------ */

#define QREVIEW_LAYOUT 1
#define QREVIEW_PREFIX "qreview"
#define QREVIEW_KEYLEN (sizeof QREVIEW_PREFIX - 1 + 8)

const char *store_qstate_name(int state)
{
    switch (state) {
    case STORE_QSTATE_PENDING: return "pending";
    case STORE_QSTATE_ACCEPTED: return "accepted";
    case STORE_QSTATE_REJECTED: return "rejected";
    default: return "unknown";
    }
}

static void qreview_key(uint8_t k[QREVIEW_KEYLEN], uint64_t qid)
{
    memcpy(k, QREVIEW_PREFIX, sizeof QREVIEW_PREFIX - 1);
    be64(k + sizeof QREVIEW_PREFIX - 1, qid);
}

/* The review record of qid into *out (PENDING if none); the entry's
 * existence is the caller's to check.  buf: scratch for the unsealing. */
static int review_load(store_txn *t, uint64_t qid, store_qreview *out, crdt_buf *buf)
{
    uint8_t k[QREVIEW_KEYLEN];
    memset(out, 0, sizeof *out);
    out->qid = qid;
    qreview_key(k, qid);
    int rc = store_get_sealed(t, DB_META, k, sizeof k, buf);
    if (rc == STORE_ENOTFOUND) {
        out->state = STORE_QSTATE_PENDING;
        return STORE_OK;
    }
    if (rc) goto fail;
    const uint8_t *p = buf->p;
    size_t n = buf->n;
    rc = STORE_ECORRUPT;
    if (n < 1 + 1 + 8 + 8 + 8 + 1 || p[0] != QREVIEW_LAYOUT) goto fail;
    out->state = p[1];
    out->decided_ms = rd64(p + 2);
    out->aseq = rd64(p + 10);
    out->sseq = rd64(p + 18);
    size_t al = p[26], off = 27;
    if (al > STORE_AUDIT_ACTOR_MAX || off + al + 1 > n) goto fail;
    memcpy(out->actor, p + off, al);
    off += al;
    size_t nl = p[off++];
    if (nl > STORE_QNOTE_MAX || off + nl != n) goto fail;
    memcpy(out->note, p + off, nl);
    if (out->state != STORE_QSTATE_ACCEPTED && out->state != STORE_QSTATE_REJECTED) goto fail;
    return STORE_OK;
fail:
    memset(out, 0, sizeof *out);
    return rc;
}

static int review_store(store_txn *t, const store_qreview *r)
{
    uint8_t k[QREVIEW_KEYLEN], v[27 + STORE_AUDIT_ACTOR_MAX + 1 + STORE_QNOTE_MAX];
    size_t al = strlen(r->actor), nl = strlen(r->note), off = 27;
    qreview_key(k, r->qid);
    v[0] = QREVIEW_LAYOUT;
    v[1] = r->state;
    be64(v + 2, r->decided_ms);
    be64(v + 10, r->aseq);
    be64(v + 18, r->sseq);
    v[26] = (uint8_t)al;
    memcpy(v + off, r->actor, al);
    off += al;
    v[off++] = (uint8_t)nl;
    memcpy(v + off, r->note, nl);
    off += nl;
    return store_put_sealed(t, DB_META, k, sizeof k, v, off);
}

/* Parse a quarantine entry's plaintext (append.c's layout) into *q with
 * env borrowed from p. */
static int qentry_parse(uint64_t qid, const uint8_t *p, size_t n, store_qentry *q)
{
    memset(q, 0, sizeof *q);
    if (n < 21) return STORE_ECORRUPT;
    q->qid = qid;
    q->reason = p[0];
    q->dev = rd32(p + 1);
    q->seq = rd64(p + 5);
    q->at_ms = rd64(p + 13);
    q->env.p = (uint8_t *)(uintptr_t)(p + 21);
    q->env.n = q->env.cap = n - 21;
    return STORE_OK;
}

int store_quarantine_review(store_txn *t, uint64_t qid, store_qreview *out)
{
    uint8_t k[8];
    MDB_val v;
    crdt_buf buf = {0};
    memset(out, 0, sizeof *out);
    be64(k, qid);
    int rc = store_get(t, DB_QUAR, k, 8, &v);
    if (!rc) rc = review_load(t, qid, out, &buf);
    if (buf.p) sodium_memzero(buf.p, buf.cap);
    crdt_buf_free(&buf);
    return rc;
}

int store_quarantine_counts(store_txn *t, uint64_t counts[4])
{
    MDB_cursor *c;
    MDB_val k, v;
    crdt_buf rbuf = {0};
    store_qreview r;
    int rc = STORE_OK, mrc;
    memset(counts, 0, 4 * sizeof *counts);
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_QUAR], &c))) return store_lmdb_err(mrc);
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            rc = STORE_ECORRUPT;
            break;
        }
        if ((rc = review_load(t, rd64(k.mv_data), &r, &rbuf))) break;
        if (r.state < STORE_QSTATE_PENDING || r.state > STORE_QSTATE_REJECTED) {
            rc = STORE_ECORRUPT;
            break;
        }
        counts[0]++;
        counts[r.state]++;
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_lmdb_err(mrc);
    mdb_cursor_close(c);
    if (rbuf.p) sodium_memzero(rbuf.p, rbuf.cap);
    crdt_buf_free(&rbuf);
    return rc;
}

int store_quarantine_list(store_txn *t, uint64_t after, size_t limit, int state,
                          store_qreview_cb cb, void *arg, uint64_t *next)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    crdt_buf plain = {0}, rbuf = {0};
    store_qentry q;
    store_qreview r;
    size_t delivered = 0;
    int rc = STORE_OK, mrc;
    *next = after;
    if (after == UINT64_MAX || limit == 0) return STORE_OK;
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_QUAR], &c))) return store_lmdb_err(mrc);
    be64(start, after + 1);
    k.mv_data = start;
    k.mv_size = 8;
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); mrc == 0 && delivered < limit;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8) {
            rc = STORE_ECORRUPT;
            break;
        }
        uint64_t qid = rd64(k.mv_data);
        if ((rc = review_load(t, qid, &r, &rbuf))) break;
        if (state && r.state != state) continue;
        if ((rc = store_unseal(t->s, DB_QUAR, &k, v.mv_data, v.mv_size, &plain))) break;
        if ((rc = qentry_parse(qid, plain.p, plain.n, &q))) break;
        if ((rc = cb(&q, &r, arg))) break;
        *next = qid;
        delivered++;
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_lmdb_err(mrc);
    mdb_cursor_close(c);
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    if (rbuf.p) sodium_memzero(rbuf.p, rbuf.cap);
    crdt_buf_free(&plain);
    crdt_buf_free(&rbuf);
    return rc;
}

/* Load entry qid and check that it is pending; *q owns its envelope. */
static int load_pending(store_txn *t, uint64_t qid, store_qentry *q, store_qreview *r)
{
    crdt_buf buf = {0};
    int rc = store_quarantine_get(t, qid, q);
    if (!rc) rc = review_load(t, qid, r, &buf);
    if (!rc && r->state != STORE_QSTATE_PENDING) rc = STORE_EINVAL;
    crdt_buf_free(&buf);
    return rc;
}

static int decide(store_txn *t, const store_qentry *q, store_qreview *r, uint8_t state,
                  uint64_t now_ms, const char *actor, const char *action, const char *detail)
{
    int rc = store_audit_append(t, now_ms, actor, action, detail, &r->aseq);
    if (rc) return rc;
    r->qid = q->qid;
    r->state = state;
    r->decided_ms = now_ms;
    snprintf(r->actor, sizeof r->actor, "%s", actor);
    return review_store(t, r);
}

int store_quarantine_accept(store_txn *t, uint64_t qid, uint64_t now_ms, const char *actor,
                            store_qreview *out)
{
    store_qentry q;
    store_qreview r;
    store_outcome oc;
    crdt_arena *a = NULL;
    crdt_delta d;
    const uint8_t *db, *sig;
    size_t dl;
    int err_op, rc;
    uint8_t dot_hash[CRDT_HASH_BYTES];
    uint64_t held = 0;
    char detail[512];
    bool link_dot = false, already = false;
    store_item it;
    memset(&q, 0, sizeof q);
    memset(&r, 0, sizeof r);
    if (out) memset(out, 0, sizeof *out);
    if (!t->rw) return STORE_EREADONLY;
    if (!text_ok(actor, STORE_AUDIT_ACTOR_MAX)) return STORE_EINVAL;
    if ((rc = load_pending(t, qid, &q, &r))) goto out;
    /* A relayed envelope that failed verification here is evidence, not an
     * edit: it can only be rejected. */
    if (q.reason == STORE_Q_UNVERIFIED) {
        rc = STORE_EINVAL;
        goto out;
    }
    if (!(a = crdt_arena_new(0))) {
        rc = CRDT_ENOMEM;
        goto out;
    }
    /* The entry passed these checks when it arrived; the schema may have
     * changed since, and the bytes are re-read from disk. */
    if ((rc = wire_envelope_decode(q.env.p, q.env.n, &crdt_limits_default, &db, &dl, &sig)) ||
        (rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op)) ||
        (rc = crdt_schema_check_delta(t->s->schema, &d, &err_op)))
        goto out;
    memset(&it, 0, sizeof it);
    it.env = q.env.p;
    it.env_len = q.env.n;
    it.delta = &d;
    wire_delta_hash(db, dl, it.hash);

    /* The device's chain: is this exact delta already there? */
    rc = store_dot_get(t, q.dev, d.seq, &held, dot_hash); /* q.dev: the chain (relay.c) */
    if (rc == STORE_OK) {
        if (memcmp(dot_hash, it.hash, CRDT_HASH_BYTES) == 0) {
            if (held) { /* applied already (a clone pair's first copy) */
                already = true;
                r.sseq = held;
            } else {    /* in the chain, held back for its clock */
                link_dot = true;
            }
        }
    } else if (rc != STORE_ENOTFOUND) {
        goto out;
    }
    if (!already) {
        if ((rc = store_merge_reviewed(t, &it, &oc))) goto out;
        r.sseq = oc.sseq;
        if (link_dot && (rc = store_dot_put(t, q.dev, d.seq, oc.sseq, it.hash))) goto out;
    }
    snprintf(detail, sizeof detail,
             "quarantine %llu (%s) accepted: device %u seq %llu, %.*s %.*s; %s server seq %llu",
             (unsigned long long)qid, store_qreason_name(q.reason), q.dev,
             (unsigned long long)q.seq, (int)d.kind_len, d.kind, (int)d.id_len, d.id,
             already ? "already merged as" : "merged as", (unsigned long long)r.sseq);
    rc = decide(t, &q, &r, STORE_QSTATE_ACCEPTED, now_ms, actor, "quarantine.accept", detail);
out:
    crdt_arena_free(a);
    crdt_buf_free(&q.env);
    if (out && !rc) *out = r;
    return rc;
}

int store_quarantine_reject(store_txn *t, uint64_t qid, uint64_t now_ms, const char *actor,
                            const char *note, store_qreview *out)
{
    store_qentry q;
    store_qreview r;
    char detail[160 + STORE_QNOTE_MAX];
    size_t nl = note ? strnlen(note, STORE_QNOTE_MAX + 1) : 0;
    int rc;
    memset(&q, 0, sizeof q);
    if (out) memset(out, 0, sizeof *out);
    if (!t->rw) return STORE_EREADONLY;
    if (!text_ok(actor, STORE_AUDIT_ACTOR_MAX) || nl > STORE_QNOTE_MAX ||
        (nl && !crdt_utf8_valid((const uint8_t *)note, nl)))
        return STORE_EINVAL;
    if ((rc = load_pending(t, qid, &q, &r))) goto out;
    if (nl) memcpy(r.note, note, nl);
    r.note[nl] = 0;
    snprintf(detail, sizeof detail, "quarantine %llu (%s) rejected: device %u seq %llu%s%s",
             (unsigned long long)qid, store_qreason_name(q.reason), q.dev,
             (unsigned long long)q.seq, nl ? "; note: " : "", r.note);
    rc = decide(t, &q, &r, STORE_QSTATE_REJECTED, now_ms, actor, "quarantine.reject", detail);
out:
    crdt_buf_free(&q.env);
    if (out && !rc) *out = r;
    return rc;
}
