/*
 * append.c — appending deltas (one, or a group-committed batch), device
 * chains, quarantine, devices, the scoped feed, record and index reads.
 *
 * Invariants (checked by store_verify)
 *   - dots holds exactly one dot (a chunk's slot, or an entry of its own) per
 *     (device, seq) the server has accepted into the device's chain;
 *     heads[dev] is the greatest such seq and its
 *     hash, and seqs 1..head are all present (chains are contiguous).
 *   - Every applied delta has a server seq; deltas[sseq] is its envelope,
 *     verbatim (sealed, in a block of the log: log.c); its record's history
 *     (rdeltas in older stores) and the feed name it under its record and
 *     the household(s) it touched.
 *   - records[kind,id] equals the merge of the record's applied deltas
 *     (stored in full, or, for a record one delta made, a reference to that
 *     delta, rebuilt from the log when read: store_record_build).
 *   - members, grid and lookup describe the current records exactly;
 *     agg/aggw equal the sum of the current records' contributions.
 *   - One delta's effects are all-or-nothing: any error aborts the caller's
 *     transaction, so a failed append leaves nothing behind.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- devices ---------------------------------------------------------------- */

/* Layout 2 adds the flags byte at the end; layout 1 records read as flags 0. */
#define DEV_LAYOUT 2
#define DEV_BYTES_V1 (1 + 1 + 4 + 8 + 8 + 8 + 64)
#define DEV_BYTES (DEV_BYTES_V1 + 1)

int store_admin_gen(store_txn *t, uint64_t *gen)
{
    MDB_val v;
    *gen = 0;
    int rc = store_get(t, DB_META, "admin_gen", 9, &v);
    if (rc == STORE_ENOTFOUND) return STORE_OK;
    if (rc) return rc;
    if (v.mv_size != 8) return STORE_ECORRUPT;
    *gen = rd64(v.mv_data);
    return STORE_OK;
}

int store_device_next_id(store_txn *t, uint32_t *id)
{
    MDB_cursor *c;
    MDB_val k, v;
    *id = 1;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_DEVICES], &c);
    if (rc) return store_lmdb_err(rc);
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) return STORE_OK;
    if (rc) return store_lmdb_err(rc);
    if (k.mv_size < 4) return STORE_ECORRUPT;
    uint32_t last = rd32(k.mv_data);
    if (last == UINT32_MAX) return STORE_EINVAL;
    *id = last + 1;
    return STORE_OK;
}

/* Write d's record (no admin generation bump: see the callers). */
static int device_write(store_txn *t, const store_device *d)
{
    uint8_t k[4], v[DEV_BYTES];
    be32(k, d->id);
    memset(v, 0, sizeof v);
    v[0] = DEV_LAYOUT;
    v[1] = d->state;
    be32(v + 2, d->epoch);
    be64(v + 6, d->revoked_at_seq);
    be64(v + 14, d->created_ms);
    be64(v + 22, d->last_sync_ms);
    memcpy(v + 30, d->volunteer, strnlen(d->volunteer, sizeof d->volunteer - 1));
    v[DEV_BYTES_V1] = d->flags;
    return store_put(t, DB_DEVICES, k, 4, v, sizeof v);
}

int store_device_put(store_txn *t, const store_device *d)
{
    uint64_t gen;
    int rc = store_admin_gen(t, &gen);
    if (rc) return rc;
    uint8_t g[8];
    be64(g, gen + 1);
    if ((rc = store_put(t, DB_META, "admin_gen", 9, g, 8))) return rc;
    return device_write(t, d);
}

int store_device_seen(store_txn *t, uint32_t dev, uint64_t ms)
{
    store_device d;
    int rc = store_device_get(t, dev, &d);
    if (rc) return rc;
    if (ms <= d.last_sync_ms) return STORE_OK; /* never moves back */
    d.last_sync_ms = ms;
    /* Only the time changes: no admin generation bump, so live sessions
     * are not rechecked for it. */
    return device_write(t, &d);
}

int store_device_get(store_txn *t, uint32_t id, store_device *out)
{
    uint8_t k[4];
    MDB_val v;
    if (t->cdev_ok && t->cdev_v.id == id) { /* read before in this txn, unchanged since */
        *out = t->cdev_v;
        return STORE_OK;
    }
    memset(out, 0, sizeof *out);
    be32(k, id);
    int rc = store_get(t, DB_DEVICES, k, 4, &v);
    if (rc) return rc;
    const uint8_t *p = v.mv_data;
    if (!(v.mv_size == DEV_BYTES && p[0] == 2) && !(v.mv_size == DEV_BYTES_V1 && p[0] == 1))
        return STORE_ECORRUPT;
    out->id = id;
    out->state = p[1];
    out->epoch = rd32(p + 2);
    out->revoked_at_seq = rd64(p + 6);
    out->created_ms = rd64(p + 14);
    out->last_sync_ms = rd64(p + 22);
    memcpy(out->volunteer, p + 30, sizeof out->volunteer - 1);
    out->flags = v.mv_size == DEV_BYTES ? p[DEV_BYTES_V1] : 0;
    t->cdev_v = *out;
    t->cdev_ok = true;
    return STORE_OK;
}

/* Scope entries share the devices database: key dev(4) || household. */
int store_device_scope_set(store_txn *t, uint32_t dev, const char *const *households, size_t n)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[4 + CRDT_RECID_MAX];
    int rc;
    if (!t->rw) return STORE_EREADONLY;
    /* A relay's scope is the one reserved entry (not a record id). */
    bool relay = n == 1 && !strcmp(households[0], STORE_RELAY_SCOPE);
    for (size_t i = 0; i < n && !relay; i++)
        if (!crdt_recid_valid(households[i], strlen(households[i]))) return STORE_EINVAL;
    be32(key, dev);
    if ((rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_DEVICES], &c)))) return rc;
    k.mv_data = key;
    k.mv_size = 4;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= 4 && memcmp(k.mv_data, key, 4) == 0) {
        if (k.mv_size > 4 && (rc = mdb_cursor_del(c, 0))) break;
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return store_lmdb_err(rc);
    for (size_t i = 0; i < n; i++) {
        size_t hl = strlen(households[i]);
        memcpy(key + 4, households[i], hl);
        if ((rc = store_put(t, DB_DEVICES, key, 4 + hl, "", 0))) return rc;
    }
    return STORE_OK;
}

static int prefix_scan(store_txn *t, int db, const uint8_t *prefix, size_t pn,
                       const char *after, size_t limit, store_ids *out);

int store_device_scope_get(store_txn *t, uint32_t dev, store_ids *out)
{
    uint8_t key[4];
    be32(key, dev);
    int rc = prefix_scan(t, DB_DEVICES, key, 4, NULL, SIZE_MAX, out);
    if (rc) return rc;
    /* The device record itself (key of exactly 4 bytes) scans as "". */
    if (out->n && out->id[0][0] == 0) {
        memmove(out->id, out->id + 1, (out->n - 1) * sizeof *out->id);
        out->n--;
    }
    return STORE_OK;
}

/* ---- quarantine ----------------------------------------------------------- */

/* Quarantine entry plaintext: reason(1) dev(4) seq(8) at(8) envelope. */
static int quarantine(store_txn *t, uint8_t reason, uint32_t dev, uint64_t seq,
                      uint64_t now_ms, const uint8_t *env, size_t n)
{
    if (!t->rw) return STORE_EREADONLY;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t qid = 1;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_QUAR], &c);
    if (rc) return store_lmdb_err(rc);
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) qid = rd64(k.mv_data) + 1;
    mdb_cursor_close(c);
    uint8_t key[8];
    be64(key, qid);
    uint8_t *plain = malloc(21 + n);
    if (!plain) return CRDT_ENOMEM;
    plain[0] = reason;
    be32(plain + 1, dev);
    be64(plain + 5, seq);
    be64(plain + 13, now_ms);
    memcpy(plain + 21, env, n);
    rc = store_put_sealed_append(t, DB_QUAR, key, 8, plain, 21 + n); /* qid = last + 1 */
    free(plain);
    return rc;
}

int store_quarantine_put(store_txn *t, uint8_t reason, uint32_t dev, uint64_t seq,
                         uint64_t now_ms, const uint8_t *env, size_t n)
{
    if (reason < STORE_Q_CLOCK_AHEAD || reason > STORE_Q_UNVERIFIED || (!env && n)) return STORE_EINVAL;
    return quarantine(t, reason, dev, seq, now_ms, env, n);
}

int store_quarantine_count(store_txn *t, uint64_t *n)
{
    MDB_stat st;
    int rc = mdb_stat(t->txn, t->s->dbi[DB_QUAR], &st);
    *n = rc ? 0 : st.ms_entries;
    return store_lmdb_err(rc);
}

int store_quarantine_get(store_txn *t, uint64_t qid, store_qentry *out)
{
    uint8_t key[8];
    crdt_buf plain = {0};
    memset(out, 0, sizeof *out);
    be64(key, qid);
    int rc = store_get_sealed(t, DB_QUAR, key, 8, &plain);
    if (rc) goto out;
    if (plain.n < 21) {
        rc = STORE_ECORRUPT;
        goto out;
    }
    out->qid = qid;
    out->reason = plain.p[0];
    out->dev = rd32(plain.p + 1);
    out->seq = rd64(plain.p + 5);
    out->at_ms = rd64(plain.p + 13);
    rc = crdt_buf_append(&out->env, plain.p + 21, plain.n - 21);
out:
    crdt_buf_free(&plain);
    return rc;
}

const char *store_qreason_name(int reason)
{
    switch (reason) {
    case STORE_Q_CLOCK_AHEAD: return "clock_ahead";
    case STORE_Q_CLONE: return "clone";
    case STORE_Q_FROZEN: return "device_frozen";
    case STORE_Q_REVOKED: return "device_revoked";
    case STORE_Q_SEALED: return "key_sealed";
    case STORE_Q_FORK: return "chain_fork";
    case STORE_Q_SCOPE: return "out_of_scope";
    case STORE_Q_UNVERIFIED: return "unverified";
    default: return "unknown";
    }
}

/* ---- chains and server seqs ------------------------------------------------ */

int store_chain_head(store_txn *t, uint32_t dev, uint64_t *seq, uint8_t hash[CRDT_HASH_BYTES])
{
    uint8_t k[4];
    MDB_val v;
    be32(k, dev);
    if (t->chead_ok && t->chead_dev == dev) { /* read or written before in this txn */
        *seq = t->chead_seq;
        memcpy(hash, t->chead_hash, CRDT_HASH_BYTES);
        return STORE_OK;
    }
    *seq = 0;
    memset(hash, 0, CRDT_HASH_BYTES);
    int rc = store_get(t, DB_HEADS, k, 4, &v);
    if (rc && rc != STORE_ENOTFOUND) return rc;
    if (rc == STORE_OK) {
        if (v.mv_size != 8 + CRDT_HASH_BYTES) return STORE_ECORRUPT;
        *seq = rd64(v.mv_data);
        memcpy(hash, (uint8_t *)v.mv_data + 8, CRDT_HASH_BYTES);
    }
    t->chead_dev = dev;
    t->chead_seq = *seq;
    memcpy(t->chead_hash, hash, CRDT_HASH_BYTES);
    t->chead_ok = true;
    return STORE_OK;
}

/* heads[dev] := (seq, hash), and the txn's cached head with it. */
static int head_put(store_txn *t, uint32_t dev, uint64_t seq, const uint8_t hash[CRDT_HASH_BYTES])
{
    uint8_t k[4], v[8 + CRDT_HASH_BYTES];
    be32(k, dev);
    be64(v, seq);
    memcpy(v + 8, hash, CRDT_HASH_BYTES);
    int rc = store_put(t, DB_HEADS, k, 4, v, sizeof v);
    if (rc) return rc;
    t->chead_dev = dev;
    t->chead_seq = seq;
    memcpy(t->chead_hash, hash, CRDT_HASH_BYTES);
    t->chead_ok = true;
    return STORE_OK;
}

int store_hlc_hwm(store_txn *t, crdt_hlc *out)
{
    MDB_val v;
    *out = 0;
    int rc = store_get(t, DB_META, "hlc_hwm", 7, &v);
    if (rc && rc != STORE_ENOTFOUND) return rc;
    if (rc == STORE_OK && v.mv_size != 8) return STORE_ECORRUPT;
    *out = rc == STORE_OK ? rd64(v.mv_data) : 0;
    if (t->hwm > *out) *out = t->hwm; /* not yet written by store_commit */
    return STORE_OK;
}

/* ---- records ------------------------------------------------------------- */

static size_t record_key(uint8_t *out, const char *kind, size_t kl, const char *id, size_t il)
{
    memcpy(out, kind, kl);
    out[kl] = 0;
    memcpy(out + kl + 1, id, il);
    return kl + 1 + il;
}

/* ---- a record's history (format 3) ----------------------------------------
 * The plaintext of a records value is the canonical record (a msgpack map),
 * or, since format 3, a msgpack array of two: a bin holding the server
 * seqs of the record's deltas (ascending, LEB128 differences, the first
 * from 0) and then the record.  Deltas a format 2 store merged are still
 * listed in rdeltas; the history carries on after them (larger seqs). */

int store_record_split(const uint8_t *p, size_t n, const uint8_t **rec, size_t *rn,
                       const uint8_t **hist, size_t *hn)
{
    *hist = NULL;
    *hn = 0;
    *rec = p;
    *rn = n;
    if (!n) return STORE_ECORRUPT;
    if (p[0] != 0x92) return p[0] >= 0x80 ? STORE_OK : STORE_ECORRUPT;
    size_t h, len;
    if (n >= 3 && p[1] == 0xc4) h = 3, len = p[2];
    else if (n >= 4 && p[1] == 0xc5) h = 4, len = (size_t)p[2] << 8 | p[3];
    else if (n >= 6 && p[1] == 0xc6) h = 6, len = rd32(p + 2);
    else return STORE_ECORRUPT;
    if (len > n - h || n - h - len == 0) return STORE_ECORRUPT;
    *hist = p + h;
    *hn = len;
    *rec = p + h + len;
    *rn = n - h - len;
    return (*rec)[0] >= 0x80 ? STORE_OK : STORE_ECORRUPT;
}

int store_history_next(const uint8_t **p, const uint8_t *end, uint64_t *sseq)
{
    uint64_t d = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p == end) return STORE_ECORRUPT;
        uint8_t b = *(*p)++;
        d |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (!d || *sseq > UINT64_MAX - d) return STORE_ECORRUPT; /* ascending */
            *sseq += d;
            return STORE_OK;
        }
    }
    return STORE_ECORRUPT;
}

/* ---- a record kept as a reference (format 4) --------------------------------
 * Most records are made by one delta and never merged into again (a person
 * entered on a first visit): such a record is exactly that delta applied to
 * an empty record, and the delta is in the log already.  Its value is then
 * REC_REF followed by its history (one LEB128 sseq), not sealed (it holds no
 * personal data: the log's sealed envelope does) and no copy of the record;
 * store_record_build rebuilds it from the log when it is read.  The second
 * delta merged into it writes the record out in full (put_record).  A
 * sealed value is at least SEAL_OVERHEAD + 1 bytes, so a value of at most
 * REC_REF_MAX bytes is a reference and any longer one is sealed. */
#define REC_REF 0x00
#define REC_REF_MAX 32

int store_record_value(store_txn *t, const MDB_val *k, const MDB_val *raw, crdt_buf *plain,
                       store_recval *rv)
{
    const uint8_t *p = raw->mv_data;
    int rc;
    memset(rv, 0, sizeof *rv);
    crdt_buf_reset(plain);
    if (raw->mv_size <= REC_REF_MAX) {
        if (raw->mv_size < 2 || p[0] != REC_REF) return STORE_ECORRUPT;
        if ((rc = crdt_buf_append(plain, p + 1, raw->mv_size - 1))) return rc;
        rv->hist = plain->p;
        rv->hn = plain->n;
        return STORE_OK;
    }
    if ((rc = store_unseal(t->s, DB_RECORDS, k, p, raw->mv_size, plain)) ||
        (rc = store_unpack(t, plain))) {
        crdt_buf_reset(plain);
        return rc;
    }
    return store_record_split(plain->p, plain->n, &rv->rec, &rv->rn, &rv->hist, &rv->hn);
}

int store_get_record_value(store_txn *t, const void *k, size_t kn, crdt_buf *plain,
                           store_recval *rv)
{
    MDB_val key = {kn, (void *)k}, raw;
    memset(rv, 0, sizeof *rv);
    int rc = store_get(t, DB_RECORDS, k, kn, &raw);
    return rc ? rc : store_record_value(t, &key, &raw, plain, rv);
}

int store_delta_at(store_txn *t, uint64_t sseq, crdt_buf *env, crdt_arena *a, crdt_delta *d,
                   uint8_t hash[CRDT_HASH_BYTES])
{
    const uint8_t *db, *sig;
    size_t dl;
    int err_op, rc;
    crdt_arena_reset(a);
    if ((rc = store_get_envelope(t, sseq, env))) return rc;
    if ((rc = wire_envelope_decode(env->p, env->n, &crdt_limits_default, &db, &dl, &sig)))
        return rc;
    if ((rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, d, &err_op))) return rc;
    if (hash) wire_delta_hash(db, dl, hash);
    return STORE_OK;
}

/* Apply the envelope at sseq to r: STORE_ECORRUPT if it is missing or is
 * not a delta of r that the schema takes (the history names it). */
static int apply_logged(store_txn *t, crdt_record *r, uint64_t sseq)
{
    crdt_delta d;
    int err_op, rc;
    if (!t->marena && !(t->marena = crdt_arena_new(0))) return CRDT_ENOMEM;
    rc = store_delta_at(t, sseq, &t->menv, t->marena, &d, NULL);
    if (rc == CRDT_ENOMEM) return rc;
    if (rc) return STORE_ECORRUPT;
    rc = crdt_schema_check_delta(t->s->schema, &d, &err_op);
    if (!rc) rc = crdt_record_apply(r, t->s->schema, &d);
    return !rc || rc == CRDT_ENOMEM ? rc : STORE_ECORRUPT;
}

int store_record_build(store_txn *t, const char *kind, size_t kl, const char *id, size_t il,
                       const store_recval *rv, crdt_record **out)
{
    int rc;
    *out = NULL;
    if (rv->rec) {
        rc = crdt_record_decode(rv->rec, rv->rn, out);
        return !rc || rc == CRDT_ENOMEM ? rc : STORE_ECORRUPT;
    }
    crdt_record *r = crdt_record_new(kind, kl, id, il);
    if (!r) return CRDT_ENOMEM;
    uint64_t sseq = 0;
    const uint8_t *q = rv->hist, *end = rv->hist + rv->hn;
    rc = rv->hn ? STORE_OK : STORE_ECORRUPT; /* a reference names at least one */
    while (!rc && q < end)
        if (!(rc = store_history_next(&q, end, &sseq))) rc = apply_logged(t, r, sseq);
    if (rc) {
        crdt_record_free(r);
        return rc;
    }
    *out = r;
    return STORE_OK;
}

/* Make h (hn bytes) the history t->hist holds for records[key]; stored:
 * whether records[key] exists. */
static int hist_set(store_txn *t, const uint8_t *key, size_t kn, bool stored, const uint8_t *h,
                    size_t hn)
{
    int rc = STORE_OK;
    t->hist_ok = false;
    t->hist_stored = stored;
    crdt_buf_reset(&t->hist);
    t->hist_last = 0;
    if (hn) {
        rc = crdt_buf_append(&t->hist, h, hn);
        for (const uint8_t *q = h, *end = h + hn; !rc && q < end;)
            rc = store_history_next(&q, end, &t->hist_last);
    }
    if (rc) return rc;
    memcpy(t->hist_key, key, kn);
    t->hist_kn = kn;
    t->hist_ok = true;
    return STORE_OK;
}

/* The history of records[key] into t->hist (unless it holds it already);
 * a record not stored yet has none. */
static int hist_load(store_txn *t, const uint8_t *key, size_t kn)
{
    if (t->hist_ok && t->hist_kn == kn && !memcmp(t->hist_key, key, kn)) return STORE_OK;
    t->hist_ok = false;
    store_recval rv;
    int rc = store_get_record_value(t, key, kn, &t->scratch2, &rv);
    if (rc == STORE_ENOTFOUND) return hist_set(t, key, kn, false, NULL, 0);
    return rc ? rc : hist_set(t, key, kn, true, rv.hist, rv.hn);
}

/* Is the txn's cached record records[kind, id]? */
static bool rcache_is(const store_txn *t, const char *kind, const char *id)
{
    return t->rcache && !strcmp(t->rcache->kind, kind) && !strcmp(t->rcache->id, id);
}

/* Make r (owned) the txn's cached record. */
static void rcache_set(store_txn *t, crdt_record *r)
{
    crdt_record_free(t->rcache);
    t->rcache = r;
}

/* The record, decoded; *out owned by the caller.  In a write txn the
 * record last read or written is kept decoded (t->rcache): a hit costs a
 * copy instead of a read, unseal, decompress and decode.  With take, a hit
 * hands over the cached record itself (the caller writes the record back
 * through put_record, which caches it again). */
static int get_record(store_txn *t, const char *kind, const char *id, bool take,
                      crdt_record **out)
{
    uint8_t k[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    size_t kl = strlen(kind), il = strlen(id);
    *out = NULL;
    if (kl >= CRDT_NAME_MAX || il > CRDT_RECID_MAX) return STORE_EINVAL;
    if (rcache_is(t, kind, id)) {
        if (take) {
            *out = t->rcache;
            t->rcache = NULL;
        } else if (!(*out = crdt_record_dup(t->rcache))) {
            return CRDT_ENOMEM;
        }
        return STORE_OK;
    }
    size_t n = record_key(k, kind, kl, id, il);
    store_recval rv;
    int rc = store_get_record_value(t, k, n, &t->scratch2, &rv);
    if (rc == STORE_ENOTFOUND && t->rw) hist_set(t, k, n, false, NULL, 0); /* a new one: none */
    if (rc) return rc;
    /* A write txn is likely to write it back: keep its history (hist_load). */
    if (t->rw && hist_set(t, k, n, true, rv.hist, rv.hn) == CRDT_ENOMEM) return CRDT_ENOMEM;
    if ((rc = store_record_build(t, kind, kl, id, il, &rv, out))) return rc;
    if (t->rw && !take) rcache_set(t, crdt_record_dup(*out)); /* NULL (no cache) on ENOMEM */
    return STORE_OK;
}

int store_get_record(store_txn *t, const char *kind, const char *id, crdt_record **out)
{
    return get_record(t, kind, id, false, out);
}

/* Write r (the only writer of DB_RECORDS) with sseq, the delta just merged
 * into it, added to its history: a new record (sseq made it) as a
 * reference, any other in full.  A cached copy of the record is dropped:
 * the caller may cache r once it is done with it. */
static int put_record(store_txn *t, const crdt_record *r, uint64_t sseq)
{
    uint8_t k[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    size_t n = record_key(k, r->kind, strlen(r->kind), r->id, strlen(r->id));
    int rc;
    if (rcache_is(t, r->kind, r->id)) rcache_set(t, NULL);
    if ((rc = hist_load(t, k, n))) return rc;
    if (sseq <= t->hist_last) return STORE_ECORRUPT; /* seqs only grow */
    if ((rc = store_format_raise(t, 3))) return rc;
    uint8_t leb[10];
    size_t ln = store_leb128(leb, sseq - t->hist_last);
    if ((rc = crdt_buf_append(&t->hist, leb, ln))) goto undo;
    t->hist_last = sseq;
    if (!t->hist_stored) { /* made by this delta: a reference to it */
        uint8_t v[1 + 10] = {REC_REF};
        memcpy(v + 1, leb, ln);
        if ((rc = store_format_raise(t, 4)) || (rc = store_put(t, DB_RECORDS, k, n, v, 1 + ln)))
            goto undo;
        t->hist_stored = true;
        return STORE_OK;
    }
    /* 0x92, the history as a bin, then the record. */
    crdt_buf *b = &t->scratch2;
    size_t hn = t->hist.n;
    uint8_t hdr[6] = {0x92};
    size_t hl;
    if (hn <= 0xff) hdr[1] = 0xc4, hdr[2] = (uint8_t)hn, hl = 3;
    else if (hn <= 0xffff) hdr[1] = 0xc5, hdr[2] = (uint8_t)(hn >> 8), hdr[3] = (uint8_t)hn, hl = 4;
    else hdr[1] = 0xc6, be32(hdr + 2, (uint32_t)hn), hl = 6;
    crdt_buf_reset(b);
    if ((rc = crdt_buf_append(b, hdr, hl)) || (rc = crdt_buf_append(b, t->hist.p, hn)) ||
        (rc = crdt_record_encode(r, b)))
        goto undo;
    if ((rc = store_put_packed(t, DB_RECORDS, k, n, b->p, b->n, false))) goto undo;
    return STORE_OK;
undo:
    t->hist_ok = false; /* t->hist no longer says what is stored */
    return rc;
}

/* ---- field helpers shared with agg.c and verify.c --------------------------- */

const char *store_field_str(const crdt_record *r, const crdt_fspec *f, crdt_blob key,
                            uint32_t *len)
{
    const crdt_field *fl = r ? crdt_record_field(r, f->name, key) : NULL;
    const crdt_entry *best = NULL;
    crdt_val v;
    *len = 0;
    if (!fl) return NULL;
    for (uint32_t i = 0; i < fl->n; i++)
        if (!best || crdt_stamp_cmp(fl->e[i].st, best->st) > 0) best = &fl->e[i];
    if (!best || crdt_val_parse(best->v, &v) || v.t != CRDT_V_STR) return NULL;
    *len = v.len;
    return v.s;
}

/* Copy a field's display string into buf (NUL-terminated); "" if absent. */
static void field_cstr(const crdt_record *r, const crdt_fspec *f, char *buf, size_t cap)
{
    uint32_t len;
    const char *s = store_field_str(r, f, (crdt_blob){NULL, 0}, &len);
    if (!s || len >= cap) len = 0;
    if (len) memcpy(buf, s, len);
    buf[len] = 0;
}

/* ---- indexes ---------------------------------------------------------------- */

/* The feed (format 3): household 0 first(8) -> the LEB128 differences of
 * the sseqs after first, a chunk of at most FEED_CHUNK sseqs of the
 * household in server order.  Entries of stores before format 3 have an
 * empty value: a chunk of one, read the same way (and extended). */
#define FEED_CHUNK 64

size_t store_leb128(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    do {
        p[n++] = (uint8_t)(v & 0x7f) | (v >= 0x80 ? 0x80 : 0);
        v >>= 7;
    } while (v);
    return n;
}

/* Position c on household's last feed entry: STORE_OK with k, v set, or
 * STORE_ENOTFOUND.  prefix: household 0 (pn bytes). */
static int feed_last(MDB_cursor *c, const uint8_t *prefix, size_t pn, MDB_val *k, MDB_val *v)
{
    uint8_t end[CRDT_RECID_MAX + 10];
    memcpy(end, prefix, pn);
    memset(end + pn, 0xff, 8);
    *k = (MDB_val){pn + 8, end};
    int mrc = mdb_cursor_get(c, k, v, MDB_SET_RANGE);
    if (mrc == 0) mrc = mdb_cursor_get(c, k, v, MDB_PREV);
    else if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(c, k, v, MDB_LAST);
    if (mrc == MDB_NOTFOUND) return STORE_ENOTFOUND;
    if (mrc) return store_lmdb_err(mrc);
    if (k->mv_size != pn + 8 || memcmp(k->mv_data, prefix, pn)) return STORE_ENOTFOUND;
    return STORE_OK;
}

static int feed_put(store_txn *t, const char *household, uint64_t sseq)
{
    uint8_t k[CRDT_RECID_MAX + 1 + 8], val[FEED_CHUNK * 10];
    size_t hl = strlen(household), vn = 0;
    MDB_cursor *c;
    MDB_val key, v;
    bool extend = false;
    if (!hl || hl > CRDT_RECID_MAX) return STORE_EINVAL;
    memcpy(k, household, hl);
    k[hl] = 0;
    int rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_FEED], &c));
    if (rc) return rc;
    rc = feed_last(c, k, hl + 1, &key, &v);
    if (rc == STORE_OK) {
        uint64_t last = rd64((const uint8_t *)key.mv_data + hl + 1);
        unsigned count = 1;
        const uint8_t *q = v.mv_data, *end = q + v.mv_size;
        while (!rc && q < end) {
            rc = store_history_next(&q, end, &last);
            count++;
        }
        if (!rc && sseq < last) rc = STORE_EINVAL; /* the feed only grows */
        if (!rc && sseq == last) { /* listed already */
            mdb_cursor_close(c);
            return STORE_OK;
        }
        if (!rc && count < FEED_CHUNK && v.mv_size + 10 <= sizeof val) {
            memcpy(k + hl + 1, (const uint8_t *)key.mv_data + hl + 1, 8);
            memcpy(val, v.mv_data, v.mv_size);
            vn = v.mv_size + store_leb128(val + v.mv_size, sseq - last);
            extend = true;
        }
    } else if (rc == STORE_ENOTFOUND) {
        rc = STORE_OK;
    }
    mdb_cursor_close(c);
    if (rc) return rc;
    if (extend) {
        if ((rc = store_format_raise(t, 3))) return rc;
        return store_put(t, DB_FEED, k, hl + 9, val, vn);
    }
    be64(k + hl + 1, sseq);
    return store_put(t, DB_FEED, k, hl + 9, "", 0);
}

static int pair_index(store_txn *t, int db, const char *const *parts, size_t n, bool add)
{
    uint8_t k[512];
    size_t kl = store_key_join(k, sizeof k, parts, n);
    if (!kl) return STORE_EINVAL;
    return add ? store_put(t, db, k, kl, "", 0) : store_del(t, db, k, kl);
}

/* Keyed hash for exact lookups: BLAKE2b-128(lookup key, what || value),
 * its first s->lookup_hlen bytes (8 in stores made since format 2, 16
 * before: meta "lookup_hlen").  A PRF output cut to 64 bits: two values of
 * one field collide with odds ~2^-64 per pair, and a collision only adds a
 * person to a lookup's answer. */
static void lookup_hash(const store *s, int what, const uint8_t *v, size_t n,
                        uint8_t out[STORE_LOOKUP_HASH_MAX])
{
    crypto_generichash_state st;
    uint8_t w = (uint8_t)what, h[16];
    crypto_generichash_init(&st, s->lookup_key, sizeof s->lookup_key, sizeof h);
    crypto_generichash_update(&st, &w, 1);
    crypto_generichash_update(&st, v, n);
    crypto_generichash_final(&st, h, sizeof h);
    memcpy(out, h, s->lookup_hlen);
}

static int lookup_key(const store *s, int what, const uint8_t *v, size_t n, const char *id,
                      uint8_t *k)
{
    size_t il = strlen(id);
    k[0] = (uint8_t)what;
    lookup_hash(s, what, v, n, k + 1);
    memcpy(k + 1 + s->lookup_hlen, id, il);
    return (int)(1 + s->lookup_hlen + il);
}

/* Is the string value v among f's live entries in r? */
static bool has_value(const crdt_record *r, const crdt_fspec *f, const crdt_entry *v)
{
    const crdt_field *fl = r ? crdt_record_field(r, f->name, (crdt_blob){NULL, 0}) : NULL;
    if (!fl) return false;
    for (uint32_t i = 0; i < fl->n; i++)
        if (crdt_blob_cmp(fl->e[i].v, v->v) == 0) return true;
    return false;
}

/*
 * Lookup changes wait in the write transaction and are applied at commit in
 * key order.  The keys are keyed hashes, so a group commit's thousands of
 * changes fall all over the tree: applied one by one as the deltas come,
 * each descends from the root through pages the transaction has dirtied
 * (LMDB looks each one up in its dirty list); sorted, one cursor walks the
 * tree once, and mdb_cursor_put starts from the cursor's page when the key
 * falls on it.  Nothing reads DB_LOOKUP in a write transaction but
 * store_lookup, which applies the queue first, so every reader sees the
 * changes as if made at once; an aborted transaction drops them with the
 * rest.
 */
static int lookup_queue(store_txn *t, bool put, const uint8_t *k, size_t kl)
{
    uint8_t h[2] = {put ? 1 : 0, (uint8_t)kl};
    int rc;
    if (kl == 0 || kl > 255) return STORE_EINVAL;
    if ((rc = crdt_buf_append(&t->lk, h, 2)) || (rc = crdt_buf_append(&t->lk, k, kl)))
        return rc;
    t->lk_n++;
    return STORE_OK;
}

typedef struct lk_ref {
    const uint8_t *k;
    uint32_t seq;
    uint8_t kl, put;
} lk_ref;

/* LMDB's default order (memcmp, then the shorter first); ties in the order
 * queued. */
static int lk_cmp(const void *a, const void *b)
{
    const lk_ref *x = a, *y = b;
    int c = memcmp(x->k, y->k, x->kl < y->kl ? x->kl : y->kl);
    if (c) return c;
    if (x->kl != y->kl) return x->kl < y->kl ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int store_lookup_apply(store_txn *t)
{
    if (!t->lk_n) return STORE_OK;
    lk_ref *r = malloc((size_t)t->lk_n * sizeof *r);
    MDB_cursor *c = NULL;
    int rc = STORE_OK;
    if (!r) return CRDT_ENOMEM;
    const uint8_t *p = t->lk.p; /* lk_n entries, as lookup_queue wrote them */
    for (uint32_t i = 0; i < t->lk_n; i++) {
        r[i] = (lk_ref){p + 2, i, p[1], p[0]};
        p += 2 + p[1];
    }
    qsort(r, t->lk_n, sizeof *r, lk_cmp);
    if ((rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_LOOKUP], &c)))) goto out;
    for (uint32_t i = 0; i < t->lk_n; i++) {
        MDB_val key = {r[i].kl, (void *)r[i].k}, v = {0, ""};
        int m;
        if (r[i].put) {
            m = mdb_cursor_put(c, &key, &v, 0);
        } else {
            m = mdb_cursor_get(c, &key, &v, MDB_SET);
            if (m == 0) m = mdb_cursor_del(c, 0);
            else if (m == MDB_NOTFOUND) m = 0;
        }
        if ((rc = store_lmdb_err(m))) goto out;
    }
    crdt_buf_reset(&t->lk);
    t->lk_n = 0;
out:
    if (c) mdb_cursor_close(c);
    free(r);
    return rc;
}

/* Lookup entries for field f: remove values gone, add values new. */
static int lookup_update(store_txn *t, int what, const crdt_fspec *f, const crdt_record *before,
                         const crdt_record *after)
{
    uint8_t k[1 + STORE_LOOKUP_HASH_MAX + CRDT_RECID_MAX + 1];
    crdt_val v;
    for (int pass = 0; pass < 2; pass++) {
        const crdt_record *from = pass ? after : before, *other = pass ? before : after;
        const crdt_field *fl = from ? crdt_record_field(from, f->name, (crdt_blob){NULL, 0})
                                    : NULL;
        if (!fl) continue;
        for (uint32_t i = 0; i < fl->n; i++) {
            if (has_value(other, f, &fl->e[i])) continue;
            if (crdt_val_parse(fl->e[i].v, &v) || v.t != CRDT_V_STR) continue;
            int kl = lookup_key(t->s, what, (const uint8_t *)v.s, v.len, from->id, k);
            int rc = lookup_queue(t, pass != 0, k, (size_t)kl);
            if (rc) return rc;
        }
    }
    return STORE_OK;
}

/* ---- dots ---------------------------------------------------------------------- */

static int dot_key(uint8_t k[12], uint32_t dev, uint64_t seq)
{
    be32(k, dev);
    be64(k + 4, seq);
    return 12;
}

int store_delta_hash_at(store_txn *t, uint64_t sseq, uint8_t hash[CRDT_HASH_BYTES])
{
    crdt_buf env = {0};
    const uint8_t *db, *sig;
    size_t dl;
    memset(hash, 0, CRDT_HASH_BYTES);
    int rc = store_get_envelope(t, sseq, &env);
    if (rc == STORE_ENOTFOUND) rc = STORE_ECORRUPT; /* a dot names it */
    if (rc) goto out;
    if (wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig)) {
        rc = STORE_ECORRUPT;
        goto out;
    }
    rc = wire_delta_hash(db, dl, hash) ? STORE_ECORRUPT : STORE_OK;
out:
    crdt_buf_free(&env);
    return rc;
}

/* Applied dots, 64 consecutive seqs of a device per entry (internal.h):
 * key dev(4) base(8) 'C', value 64 slots of sseq(6), 0 = none. */
static void chunk_key(uint8_t k[STORE_DOT_CHUNK_KEY], uint32_t dev, uint64_t seq)
{
    be32(k, dev);
    be64(k + 4, seq & ~(uint64_t)(STORE_DOT_CHUNK - 1));
    k[12] = 'C';
}

static uint64_t rd48(const uint8_t *p)
{
    return (uint64_t)p[0] << 40 | (uint64_t)p[1] << 32 | (uint64_t)rd32(p + 2);
}

static void be48(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)(v >> 40);
    p[1] = (uint8_t)(v >> 32);
    be32(p + 2, (uint32_t)v);
}

uint64_t store_dot_slot(const uint8_t *chunk, unsigned i) { return rd48(chunk + 6 * (size_t)i); }

/* Set the slot of (dev, seq) to sseq (< 2^48) in its chunk. */
static int dot_put_chunk(store_txn *t, uint32_t dev, uint64_t seq, uint64_t sseq)
{
    uint8_t k[STORE_DOT_CHUNK_KEY], c[STORE_DOT_CHUNK_VAL];
    MDB_val v;
    chunk_key(k, dev, seq);
    /* The chunk this txn wrote last, unchanged since (a push's seqs). */
    bool cached = t->cchunk_ok && !memcmp(t->cchunk_key, k, sizeof k);
    int rc = cached ? STORE_OK : store_get(t, DB_DOTS, k, sizeof k, &v);
    if (cached) {
        memcpy(c, t->cchunk_v, sizeof c);
    } else if (rc == STORE_OK) {
        if (v.mv_size != sizeof c) return STORE_ECORRUPT;
        memcpy(c, v.mv_data, sizeof c);
    } else if (rc == STORE_ENOTFOUND) {
        if ((rc = store_format_raise(t, 3))) return rc; /* the first chunk of a format 2 store */
        memset(c, 0, sizeof c);
    } else {
        return rc;
    }
    be48(c + 6 * (seq & (STORE_DOT_CHUNK - 1)), sseq);
    if ((rc = store_put(t, DB_DOTS, k, sizeof k, c, sizeof c))) return rc;
    memcpy(t->cchunk_key, k, sizeof k);
    memcpy(t->cchunk_v, c, sizeof c);
    t->cchunk_ok = true;
    return STORE_OK;
}

int store_dot_get(store_txn *t, uint32_t dev, uint64_t seq, uint64_t *sseq,
                  uint8_t hash[CRDT_HASH_BYTES])
{
    uint8_t k[12], ck[STORE_DOT_CHUNK_KEY];
    MDB_val v;
    *sseq = 0;
    memset(hash, 0, CRDT_HASH_BYTES);
    chunk_key(ck, dev, seq);
    int rc = store_get(t, DB_DOTS, ck, sizeof ck, &v);
    if (rc && rc != STORE_ENOTFOUND) return rc;
    if (rc == STORE_OK) {
        if (v.mv_size != STORE_DOT_CHUNK_VAL) return STORE_ECORRUPT;
        uint64_t s = rd48((const uint8_t *)v.mv_data + 6 * (seq & (STORE_DOT_CHUNK - 1)));
        if (s) {
            *sseq = s;
            rc = store_delta_hash_at(t, s, hash);
            if (rc) *sseq = 0;
            return rc;
        }
    }
    dot_key(k, dev, seq);
    rc = store_get(t, DB_DOTS, k, 12, &v);
    if (rc) return rc;
    if (v.mv_size == 8 + CRDT_HASH_BYTES) { /* held back, or written before the short form */
        *sseq = rd64(v.mv_data);
        memcpy(hash, (uint8_t *)v.mv_data + 8, CRDT_HASH_BYTES);
        return STORE_OK;
    }
    if (v.mv_size != 8 || rd64(v.mv_data) == 0) return STORE_ECORRUPT;
    *sseq = rd64(v.mv_data);
    rc = store_delta_hash_at(t, *sseq, hash);
    if (rc) *sseq = 0;
    return rc;
}

int store_dot_put(store_txn *t, uint32_t dev, uint64_t seq, uint64_t sseq,
                  const uint8_t hash[CRDT_HASH_BYTES])
{
    uint8_t k[12], v[8 + CRDT_HASH_BYTES];
    dot_key(k, dev, seq);
    be64(v, sseq);
    if (sseq && sseq < (uint64_t)1 << 48) {
        /* Applied: its chunk's slot (the hash is in deltas[sseq]); a dot
         * held back before, or in the long form, goes. */
        int rc = dot_put_chunk(t, dev, seq, sseq);
        return rc ? rc : store_del(t, DB_DOTS, k, 12);
    }
    if (sseq) return store_put(t, DB_DOTS, k, 12, v, 8);
    memcpy(v + 8, hash, CRDT_HASH_BYTES);
    return store_put(t, DB_DOTS, k, 12, v, sizeof v);
}

/* ---- the append path ---------------------------------------------------------- */

/* Freeze the device (if known) and note why in the audit log. */
static int freeze(store_txn *t, uint32_t dev, uint64_t seq, uint64_t now_ms, const char *why)
{
    char detail[96];
    store_device d;
    int rc = store_device_get(t, dev, &d);
    if (rc == STORE_ENOTFOUND) {
        memset(&d, 0, sizeof d);
        d.id = dev;
    } else if (rc) {
        return rc;
    }
    /* Revocation is one-way: a revoked device stays revoked (its later
     * deltas are quarantined as revoked); only the audit records the clone. */
    bool revoked = d.state == STORE_DEV_REVOKED_SOFT || d.state == STORE_DEV_REVOKED_HARD;
    if (!revoked) {
        d.state = STORE_DEV_FROZEN;
        if ((rc = store_device_put(t, &d))) return rc;
    }
    snprintf(detail, sizeof detail, "reason=%s dev=%u seq=%llu%s", why, (unsigned)dev,
             (unsigned long long)seq, revoked ? " (device stays revoked)" : "");
    return store_audit_append(t, now_ms, "server", "device.freeze", detail, NULL);
}

/* Load a record, or a new empty one. */
static int load_or_new(store_txn *t, const char *kind, size_t kl, const char *id, size_t il,
                       crdt_record **out)
{
    char k[CRDT_NAME_MAX], i[CRDT_RECID_MAX + 1];
    memcpy(k, kind, kl);
    k[kl] = 0;
    memcpy(i, id, il);
    i[il] = 0;
    int rc = get_record(t, k, i, true, out);
    if (rc != STORE_ENOTFOUND) return rc;
    *out = crdt_record_new(kind, kl, id, il);
    return *out ? STORE_OK : CRDT_ENOMEM;
}

/* Apply to the household kind: indexes, feed, aggregates of all members. */
static int index_household(store_txn *t, const crdt_record *before, const crdt_record *after,
                           uint64_t sseq)
{
    const store_model *m = &t->s->model;
    char c0[128], g0[128], c1[128], g1[128];
    int rc;
    field_cstr(before, m->hh_community, c0, sizeof c0);
    field_cstr(before, m->hh_grid, g0, sizeof g0);
    field_cstr(after, m->hh_community, c1, sizeof c1);
    field_cstr(after, m->hh_grid, g1, sizeof g1);
    if ((rc = feed_put(t, after->id, sseq))) return rc;
    bool moved = strcmp(c0, c1) || strcmp(g0, g1);
    if (moved && before && *c0 && *g0) {
        const char *parts[] = {c0, g0, after->id};
        if ((rc = pair_index(t, DB_GRID, parts, 3, false))) return rc;
    }
    if (moved && *c1 && *g1) {
        const char *parts[] = {c1, g1, after->id};
        if ((rc = pair_index(t, DB_GRID, parts, 3, true))) return rc;
    }
    if (moved) { /* where the household is, for the aggregates of its members */
        size_t hl = strlen(after->id);
        if (*c1 && *g1) {
            uint8_t v[256];
            const char *parts[] = {c1, g1};
            size_t vl = store_key_join(v, sizeof v, parts, 2);
            if (!vl) return STORE_EINVAL;
            if ((rc = store_put(t, DB_PLACE, after->id, hl, v, vl))) return rc;
        } else if ((rc = store_del(t, DB_PLACE, after->id, hl))) {
            return rc;
        }
    }
    return store_agg_household(t, before, after, moved);
}

static int index_person(store_txn *t, const crdt_record *before, const crdt_record *after,
                        uint64_t sseq)
{
    const store_model *m = &t->s->model;
    char h0[CRDT_RECID_MAX + 1], h1[CRDT_RECID_MAX + 1];
    int rc;
    field_cstr(before, m->p_household, h0, sizeof h0);
    field_cstr(after, m->p_household, h1, sizeof h1);
    if (*h1 && (rc = feed_put(t, h1, sseq))) return rc;
    if (*h0 && strcmp(h0, h1)) {
        /* The old household's devices see the move out. */
        if ((rc = feed_put(t, h0, sseq))) return rc;
        const char *parts[] = {h0, after->id};
        if ((rc = pair_index(t, DB_MEMBERS, parts, 2, false))) return rc;
    }
    if (*h1 && strcmp(h0, h1)) {
        const char *parts[] = {h1, after->id};
        if ((rc = pair_index(t, DB_MEMBERS, parts, 2, true))) return rc;
    }
    if ((rc = lookup_update(t, STORE_LOOKUP_IDNUM, m->p_idnum, before, after)) ||
        (rc = lookup_update(t, STORE_LOOKUP_PHONE, m->p_phone, before, after)) ||
        (rc = lookup_update(t, STORE_LOOKUP_NAME, m->p_name, before, after)))
        return rc;
    return store_agg_person(t, before, after, h0, h1);
}

int store_append(store_txn *t, const store_item *it, uint64_t now_ms, uint64_t max_ahead_ms,
                 store_outcome *out)
{
    const crdt_delta *d = it->delta;
    /* cdev: whose chain (dots, head, device state) this is; the delta's own
     * device unless it was relayed from another server. */
    const uint32_t cdev = it->chain_dev ? it->chain_dev : d->dev;
    store_device dev;
    uint8_t hash[CRDT_HASH_BYTES], head_hash[CRDT_HASH_BYTES];
    uint64_t head = 0, old = 0;
    int rc, held;
    memset(out, 0, sizeof *out);
    if (!t->rw) return STORE_EREADONLY;

    /* 1. Idempotency on the dot (first: a resent delta the server already
     *    merged is acked as a duplicate whatever happened to the device
     *    since); clones.  The stored delta's hash is read from the dot, or
     *    recomputed from its envelope (store_dot_get): dots hit only on
     *    resends.  A dot exists only for a seq the chain holds (seq <=
     *    head, an invariant store_verify checks), so a new delta (the
     *    common case) needs no lookup. */
    if ((rc = store_chain_head(t, cdev, &head, head_hash))) return rc;
    rc = d->seq <= head ? store_dot_get(t, cdev, d->seq, &old, hash) : STORE_ENOTFOUND;
    if (rc == STORE_OK) {
        if (memcmp(hash, it->hash, CRDT_HASH_BYTES) == 0) {
            out->result = STORE_DUPLICATE;
            out->sseq = old;
            return STORE_OK;
        }
        /* Same dot, other content: a cloned key.  Freeze; quarantine both. */
        crdt_buf prev_env = {0};
        if (old) {
            rc = store_get_envelope(t, old, &prev_env);
            if (rc == STORE_OK)
                rc = quarantine(t, STORE_Q_CLONE, cdev, d->seq, now_ms, prev_env.p, prev_env.n);
            crdt_buf_free(&prev_env);
            if (rc) return rc;
        }
        if ((rc = freeze(t, cdev, d->seq, now_ms, "clone"))) return rc;
        if ((rc = quarantine(t, STORE_Q_CLONE, cdev, d->seq, now_ms, it->env, it->env_len)))
            return rc;
        out->result = STORE_QUARANTINED;
        out->code = STORE_Q_CLONE;
        return STORE_OK;
    }
    if (rc != STORE_ENOTFOUND) return rc;

    /* 2. Device state: frozen and revoked devices go to quarantine, and so
     *    does a delta the caller holds back (e.g. signed with a retired key
     *    beyond its sealed seq). */
    rc = store_device_get(t, cdev, &dev);
    if (rc && rc != STORE_ENOTFOUND) return rc;
    /* A relayed delta was applied by its street, which decides about its
     * phones (the state here is what the street's admin records said). */
    if (rc == STORE_OK && !it->relayed) {
        int reason = 0;
        if (dev.state == STORE_DEV_FROZEN) reason = STORE_Q_FROZEN;
        else if (dev.state == STORE_DEV_REVOKED_HARD) reason = STORE_Q_REVOKED;
        else if (dev.state == STORE_DEV_REVOKED_SOFT && d->seq > dev.revoked_at_seq)
            reason = STORE_Q_REVOKED;
        if (reason) goto quarantine_only;
    }
    if (it->quarantine && it->quarantine != STORE_Q_SCOPE) {
        rc = quarantine(t, it->quarantine, cdev, d->seq, now_ms, it->env, it->env_len);
        if (rc) return rc;
        out->result = STORE_QUARANTINED;
        out->code = it->quarantine;
        return STORE_OK;
    }

    /* 3. The chain: next seq, and the previous hash must match the head
     *    (read in step 1; nothing since wrote it). */
    if (it->relayed) goto chain_ok;
    if (d->seq != head + 1) {
        out->result = STORE_REJECTED;
        out->code = STORE_EGAP;
        out->expected_seq = head + 1;
        return STORE_OK;
    }
    if (memcmp(d->prev, head_hash, CRDT_HASH_BYTES) != 0) {
        if ((rc = freeze(t, cdev, d->seq, now_ms, "fork"))) return rc;
        if ((rc = quarantine(t, STORE_Q_FORK, cdev, d->seq, now_ms, it->env, it->env_len)))
            return rc;
        out->result = STORE_QUARANTINED;
        out->code = STORE_Q_FORK;
        return STORE_OK;
    }

chain_ok:
    /* 4. The chain advances whatever happens next (quarantine or merge), so
     *    the device's later deltas are not blocked by one held back.  A
     *    held-back dot keeps its hash (its envelope is not in deltas). */
    held = it->quarantine == STORE_Q_SCOPE ? STORE_Q_SCOPE
             : CRDT_HLC_MS(d->hlc) > now_ms + max_ahead_ms ? STORE_Q_CLOCK_AHEAD : 0;
    if (held) {
        if ((rc = store_dot_put(t, cdev, d->seq, 0, it->hash))) return rc;
        if (d->seq > head && (rc = head_put(t, cdev, d->seq, it->hash))) return rc;
        if ((rc = quarantine(t, (uint8_t)held, cdev, d->seq, now_ms, it->env, it->env_len)))
            return rc;
        out->result = STORE_QUARANTINED;
        out->code = held;
        return STORE_OK;
    }

    /* 5-6. Server seq, envelope verbatim, merge, indexes, aggregates (the
     *      merge half, shared with accepted quarantine entries); then the
     *      dot and the chain head, in the same transaction. */
    if ((rc = store_merge_reviewed(t, it, out))) return rc;
    /* Step 1 found no dot for this seq: only its chunk's slot to set. */
    rc = out->sseq < (uint64_t)1 << 48 ? dot_put_chunk(t, cdev, d->seq, out->sseq)
                                       : store_dot_put(t, cdev, d->seq, out->sseq, it->hash);
    if (rc) return rc;
    /* A relayed chain may arrive out of order: the head is its highest seq. */
    if (d->seq > head && (rc = head_put(t, cdev, d->seq, it->hash))) return rc;
    return STORE_OK;

quarantine_only:
    if ((rc = quarantine(t, (uint8_t)(dev.state == STORE_DEV_FROZEN ? STORE_Q_FROZEN
                                                                     : STORE_Q_REVOKED),
                         cdev, d->seq, now_ms, it->env, it->env_len)))
        return rc;
    out->result = STORE_QUARANTINED;
    out->code = dev.state == STORE_DEV_FROZEN ? STORE_Q_FROZEN : STORE_Q_REVOKED;
    return STORE_OK;
}

/* ---- quarantine review: merging an accepted delta (issue #6, review.c) -------
 *
 * store_merge_reviewed — the merge half of store_append (steps 5 and 6
 * without the dot and the chain head) for a delta an admin accepted from
 * quarantine: a fresh server seq, the envelope verbatim in the log, the merge
 * into its record and its history, feed, indexes, aggregates and the HLC high-water
 * mark.  review.c decides what becomes of the device's chain.  The caller
 * has decoded and schema-checked it->delta.  Fills out->sseq and
 * out->household (result STORE_APPLIED); errors abort the caller's txn.
 * store_append calls it too: there is one merge path. */
int store_merge_reviewed(store_txn *t, const store_item *it, store_outcome *out)
{
    const crdt_delta *d = it->delta;
    crdt_record *rec = NULL, *before = NULL;
    uint64_t sseq = 0;
    uint8_t sk[8];
    int rc;
    memset(out, 0, sizeof *out);
    if (!t->rw) return STORE_EREADONLY;
    if ((rc = store_last_sseq(t, &sseq))) return rc;
    sseq++;
    be64(sk, sseq);
    /* sseq = last + 1: queued for the log's next block (log.c). */
    if ((rc = store_log_append(t, sseq, it->env, it->env_len))) return rc;
    rc = load_or_new(t, d->kind, d->kind_len, d->id, d->id_len, &rec);
    if (rc) goto done;
    if (rec->n_fields || rec->tomb.n) {
        before = crdt_record_dup(rec);
        if (!before) {
            rc = CRDT_ENOMEM;
            goto done;
        }
    }
    if ((rc = crdt_record_apply(rec, t->s->schema, d))) goto done;
    if ((rc = put_record(t, rec, sseq))) goto done; /* and its history */
    if (!strcmp(rec->kind, "household")) {
        rc = index_household(t, before, rec, sseq);
        snprintf(out->household, sizeof out->household, "%s", rec->id);
    } else if (!strcmp(rec->kind, "person")) {
        rc = index_person(t, before, rec, sseq);
        field_cstr(rec, t->s->model.p_household, out->household, sizeof out->household);
    }
    if (rc) goto done;
    if (d->hlc > t->hwm) t->hwm = d->hlc; /* written by store_commit, as above */
    out->result = STORE_APPLIED;
    out->sseq = sseq;
    rcache_set(t, rec); /* as written: the next delta of the batch may want it */
    rec = NULL;
done:
    crdt_record_free(before);
    crdt_record_free(rec);
    return rc;
}

/* ---- group commit ---------------------------------------------------------------- */

static int batch_once(store *s, const uint8_t *const *envs, const size_t *lens, size_t n,
                      uint64_t now_ms, uint64_t max_ahead_ms, store_outcome *outs)
{
    store_txn *t = NULL;
    crdt_arena *a = crdt_arena_new(0);
    int rc;
    if (!a) return CRDT_ENOMEM;
    if ((rc = store_begin(s, STORE_RW, &t))) goto fail;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *db, *sig;
        size_t dl;
        crdt_delta d;
        store_item it;
        int err_op;
        memset(&it, 0, sizeof it);
        memset(&outs[i], 0, sizeof outs[i]);
        crdt_arena_reset(a);
        rc = wire_envelope_decode(envs[i], lens[i], &crdt_limits_default, &db, &dl, &sig);
        if (!rc) rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op);
        if (!rc) rc = crdt_schema_check_delta(s->schema, &d, &err_op);
        if (rc) {
            outs[i].result = STORE_REJECTED;
            outs[i].code = rc;
            continue;
        }
        it.env = envs[i];
        it.env_len = lens[i];
        it.delta = &d;
        wire_delta_hash(db, dl, it.hash);
        if ((rc = store_append(t, &it, now_ms, max_ahead_ms, &outs[i]))) goto fail;
    }
    rc = store_commit(t);
    t = NULL;
    if (rc) goto fail;
    crdt_arena_free(a);
    return STORE_OK;
fail:
    store_abort(t);
    crdt_arena_free(a);
    memset(outs, 0, n * sizeof *outs);
    return rc;
}

int store_append_batch(store *s, const uint8_t *const *envs, const size_t *lens, size_t n,
                       uint64_t now_ms, uint64_t max_ahead_ms, store_outcome *outs)
{
    for (;;) {
        int rc = batch_once(s, envs, lens, n, now_ms, max_ahead_ms, outs);
        if (rc != STORE_EMAPFULL) return rc;
        /* No transaction is open here: grow and redo the whole batch. */
        if ((rc = store_grow(s))) return rc;
    }
}

/* ---- reads: feed, members, grid, lookup ----------------------------------------- */

void store_ids_free(store_ids *ids)
{
    free(ids->id);
    ids->id = NULL;
    ids->n = 0;
}

static int ids_push(store_ids *ids, size_t *cap, const uint8_t *p, size_t n)
{
    if (n > CRDT_RECID_MAX) return STORE_ECORRUPT;
    if (ids->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        void *np = realloc(ids->id, nc * sizeof *ids->id);
        if (!np) return CRDT_ENOMEM;
        ids->id = np;
        *cap = nc;
    }
    memcpy(ids->id[ids->n], p, n);
    ids->id[ids->n][n] = 0;
    ids->n++;
    return STORE_OK;
}

/* All keys of db starting with prefix[0..pn), after `after_suffix`, up to
 * limit; the part after the prefix is pushed to out. */
static int prefix_scan(store_txn *t, int db, const uint8_t *prefix, size_t pn,
                       const char *after, size_t limit, store_ids *out)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[600];
    size_t cap = 0, al = after ? strlen(after) : 0;
    memset(out, 0, sizeof *out);
    if (pn + al + 1 > sizeof start) return STORE_EINVAL;
    memcpy(start, prefix, pn);
    memcpy(start + pn, after ? after : "", al);
    int rc = mdb_cursor_open(t->txn, t->s->dbi[db], &c);
    if (rc) return store_lmdb_err(rc);
    k.mv_data = start;
    k.mv_size = pn + al;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && out->n < limit) {
        if (k.mv_size < pn || memcmp(k.mv_data, prefix, pn) != 0) break;
        const uint8_t *rest = (const uint8_t *)k.mv_data + pn;
        size_t rl = k.mv_size - pn;
        if (!(al && rl == al && memcmp(rest, after, al) == 0)) {
            if ((rc = ids_push(out, &cap, rest, rl))) {
                mdb_cursor_close(c);
                store_ids_free(out);
                return rc;
            }
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) {
        store_ids_free(out);
        return store_lmdb_err(rc);
    }
    return STORE_OK;
}

int store_household_members(store_txn *t, const char *household, store_ids *out)
{
    uint8_t p[CRDT_RECID_MAX + 2];
    size_t hl = strlen(household);
    if (hl == 0 || hl > CRDT_RECID_MAX) return STORE_EINVAL;
    memcpy(p, household, hl);
    p[hl] = 0;
    return prefix_scan(t, DB_MEMBERS, p, hl + 1, NULL, SIZE_MAX, out);
}

int store_grid_households(store_txn *t, const char *community, const char *grid,
                          const char *after, size_t limit, store_ids *out)
{
    uint8_t p[300];
    const char *parts[] = {community, grid, ""};
    size_t n = store_key_join(p, sizeof p, parts, 3);
    if (!n) return STORE_EINVAL;
    return prefix_scan(t, DB_GRID, p, n, after, limit, out);
}

int store_lookup(store_txn *t, int what, const char *value, size_t len, store_ids *out)
{
    uint8_t p[1 + STORE_LOOKUP_HASH_MAX];
    if (what < STORE_LOOKUP_IDNUM || what > STORE_LOOKUP_NAME) return STORE_EINVAL;
    p[0] = (uint8_t)what;
    lookup_hash(t->s, what, (const uint8_t *)value, len, p + 1);
    if (t->rw) {
        int rc = store_lookup_apply(t);
        if (rc) return rc;
    }
    return prefix_scan(t, DB_LOOKUP, p, 1 + t->s->lookup_hlen, NULL, SIZE_MAX, out);
}

/*
 * The feed: for each household, the sseqs after `after` (at most limit of
 * them), merged in server order.  Cost O(households * log N + page).
 */
typedef struct hcur {
    MDB_cursor *c;
    uint8_t prefix[CRDT_RECID_MAX + 2];
    size_t pn;
    uint64_t cur;   /* current sseq, 0 = exhausted */
    uint8_t val[FEED_CHUNK * 10]; /* the rest of the current chunk, copied */
    size_t vn, vpos;
} hcur;

/* Take the entry at the cursor after op as the current chunk. */
static int hcur_load(hcur *h, MDB_cursor_op op, MDB_val *k)
{
    MDB_val v;
    int rc = mdb_cursor_get(h->c, k, &v, op);
    if (rc == MDB_NOTFOUND || (rc == 0 && (k->mv_size != h->pn + 8 ||
                                            memcmp(k->mv_data, h->prefix, h->pn) != 0))) {
        h->cur = 0;
        return STORE_OK;
    }
    if (rc) return store_lmdb_err(rc);
    if (v.mv_size > sizeof h->val) return STORE_ECORRUPT;
    memcpy(h->val, v.mv_data, v.mv_size);
    h->vn = v.mv_size;
    h->vpos = 0;
    h->cur = rd64((uint8_t *)k->mv_data + h->pn);
    return STORE_OK;
}

/* The household's next sseq (0 at the end). */
static int hcur_step(hcur *h)
{
    if (h->vpos < h->vn) {
        const uint8_t *q = h->val + h->vpos;
        if (store_history_next(&q, h->val + h->vn, &h->cur)) return STORE_ECORRUPT;
        h->vpos = (size_t)(q - h->val);
        return STORE_OK;
    }
    MDB_val k;
    return hcur_load(h, MDB_NEXT, &k);
}

/* The household's first sseq > after. */
static int hcur_seek(hcur *h, uint64_t after)
{
    MDB_val k, v;
    int rc;
    /* The last chunk starting at or before after + 1, else the first (or
     * none: hcur_load finds another household's key or the end). */
    uint8_t start[CRDT_RECID_MAX + 10];
    memcpy(start, h->prefix, h->pn);
    be64(start + h->pn, after + 1);
    k = (MDB_val){h->pn + 8, start};
    int mrc = mdb_cursor_get(h->c, &k, &v, MDB_SET_RANGE);
    bool exact = mrc == 0 && k.mv_size == h->pn + 8 && !memcmp(k.mv_data, start, h->pn + 8);
    if (!exact) {
        mrc = mrc == 0 ? mdb_cursor_get(h->c, &k, &v, MDB_PREV)
                       : mrc == MDB_NOTFOUND ? mdb_cursor_get(h->c, &k, &v, MDB_LAST) : mrc;
        if (mrc && mrc != MDB_NOTFOUND) return store_lmdb_err(mrc);
        if (mrc || k.mv_size != h->pn + 8 || memcmp(k.mv_data, h->prefix, h->pn)) {
            memset(start + h->pn, 0, 8); /* none before: from the household's first */
            k = (MDB_val){h->pn + 8, start};
            if ((rc = hcur_load(h, MDB_SET_RANGE, &k))) return rc;
        } else if ((rc = hcur_load(h, MDB_GET_CURRENT, &k))) {
            return rc;
        }
    } else if ((rc = hcur_load(h, MDB_GET_CURRENT, &k))) {
        return rc;
    }
    while (h->cur && h->cur <= after)
        if ((rc = hcur_step(h))) return rc;
    return STORE_OK;
}

int store_feed_has(store_txn *t, const char *household, uint64_t sseq)
{
    size_t hl = strlen(household);
    hcur *h;
    if (!hl || hl > CRDT_RECID_MAX || !sseq) return STORE_EINVAL;
    if (!(h = calloc(1, sizeof *h))) return CRDT_ENOMEM;
    memcpy(h->prefix, household, hl);
    h->pn = hl + 1;
    int rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_FEED], &h->c));
    if (!rc) rc = hcur_seek(h, sseq - 1);
    if (!rc) rc = h->cur == sseq ? STORE_OK : STORE_ENOTFOUND;
    if (h->c) mdb_cursor_close(h->c);
    free(h);
    return rc;
}

int store_feed(store_txn *t, const char *const *households, size_t nh, uint64_t after,
               size_t limit, store_feed_cb cb, void *arg, uint64_t *next)
{
    hcur *hs = calloc(nh ? nh : 1, sizeof *hs);
    crdt_buf env = {0};
    size_t delivered = 0;
    int rc = STORE_OK;
    *next = after;
    if (!hs) return CRDT_ENOMEM;
    for (size_t i = 0; i < nh; i++) {
        size_t hl = strlen(households[i]);
        if (hl == 0 || hl > CRDT_RECID_MAX) {
            rc = STORE_EINVAL;
            goto out;
        }
        memcpy(hs[i].prefix, households[i], hl);
        hs[i].prefix[hl] = 0;
        hs[i].pn = hl + 1;
        if ((rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_FEED], &hs[i].c))))
            goto out;
        if ((rc = hcur_seek(&hs[i], after))) goto out;
    }
    uint64_t last = after;
    while (delivered < limit) {
        /* The smallest current sseq across households (the scope is small:
         * a linear pass is cheaper than a heap at ~100 households). */
        uint64_t best = 0;
        for (size_t i = 0; i < nh; i++)
            if (hs[i].cur && (!best || hs[i].cur < best)) best = hs[i].cur;
        if (!best) break;
        for (size_t i = 0; i < nh; i++)
            while (hs[i].cur == best)
                if ((rc = hcur_step(&hs[i]))) goto out;
        if (best <= last) continue; /* same delta under two households */
        if ((rc = store_get_envelope(t, best, &env))) goto out;
        if ((rc = cb(best, env.p, env.n, arg))) goto out; /* not delivered */
        last = best;
        *next = best;
        delivered++;
    }
out:
    for (size_t i = 0; i < nh; i++)
        if (hs[i].c) mdb_cursor_close(hs[i].c);
    free(hs);
    crdt_buf_free(&env);
    return rc;
}
