/*
 * log.c — the delta log: every applied envelope under its server seq, in
 * sealed blocks of consecutive seqs.
 *
 * Why blocks.  One envelope is ~390 B of msgpack; sealed on its own it costs
 * 24 B of nonce, 16 B of tag and a zstd frame of ~220 B, because most of
 * what compresses in an envelope is what it shares with the envelopes next
 * to it (field names, enum values, ids of the same street, the same HLC
 * prefix).  Envelopes appended in one write transaction are packed together
 * as one zstd frame (with the store's dictionary) under one seal: measured
 * on the bench's street, ~150–180 B per envelope instead of ~262.
 *
 * Layout (format 3; see internal.h for the other databases):
 *   deltas  last sseq(8) -> sealed plaintext, AD "deltas" || key, one of
 *     first byte >= 0x80   one envelope, as it is (formats 1 and 2, and a
 *                          block of one that would not shrink);
 *     0x01 frame           one envelope, zstd with "zdict1" (format 2, and
 *                          a transaction that appended a single envelope);
 *     0x03 frame           a block, zstd with "zdict1";
 *     0x04 body            a block, as it is (a store without dictionary);
 *   where a block's body is n (1 byte, 2..LOG_BLOCK_MAX), n lengths (be32),
 *   then the n envelopes; it holds seqs key - n + 1 .. key.
 *
 * Invariants
 *   - Server seqs are dense: the log holds 1..last with no gap and no
 *     overlap, each entry's range starts one after the previous entry's
 *     key.  So the entry holding seq s is the first whose key is >= s
 *     (MDB_SET_RANGE), and the last key is the last seq (store_last_sseq).
 *   - A block never spans transactions: envelopes appended in a write txn
 *     wait in t->pend, readable by that txn (store_get_envelope and every
 *     reader here look there first), and are written as blocks when the
 *     pending bytes would make a block bigger than one LMDB leaf node may
 *     hold inline (s->log_vmax) and at store_commit.  An aborted txn loses
 *     them with everything else it wrote.
 *   - Blocks are sized to stay on leaf pages (no overflow page, which would
 *     cost a whole page per block): compressed size is predicted from the
 *     last block's ratio; a block that still comes out too big is written
 *     with fewer envelopes, the rest go into the next one.
 *   - A store holding a block is format 3: the transaction that writes the
 *     first block of a format 2 store writes meta "format" 3 with it, so
 *     older binaries refuse the store instead of misreading it.
 *   - t->blk caches the last entry read by this txn (decoded); entries are
 *     never rewritten once committed, so it stays valid for the txn.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define LOG_TAG_BLOCK_Z 0x03
#define LOG_TAG_BLOCK_RAW 0x04
#define LOG_RATIO_INIT 0.45       /* compressed / raw before the first block is made */

/* ---- the pending envelopes of a write txn ------------------------------------------- */

static size_t pend_bytes(const store_txn *t) { return t->pend_off[t->pend_n]; }

/* Write the first k pending envelopes as one entry (k == 1: one envelope, as
 * format 2 stores it; else a block), keyed by the last seq among them.
 * *too_big: the block would not fit inline (nothing written). */
static int write_entry(store_txn *t, uint32_t k, bool *too_big)
{
    store *s = t->s;
    uint64_t last = t->pend_first + k - 1;
    uint8_t key[8];
    const uint8_t *env = t->pend.p;
    size_t raw = t->pend_off[k];
    int rc;
    *too_big = false;
    be64(key, last);
    if (k == 1) return store_put_packed(t, DB_DELTAS, key, 8, env, raw, true);
    /* The block's body in blkw: n, lengths, envelopes. */
    crdt_buf *b = &t->blkw;
    crdt_buf_reset(b);
    uint8_t hdr[1 + 4 * LOG_BLOCK_MAX];
    hdr[0] = (uint8_t)k;
    for (uint32_t i = 0; i < k; i++) be32(hdr + 1 + 4 * i, t->pend_off[i + 1] - t->pend_off[i]);
    if ((rc = crdt_buf_append(b, (const uint8_t[]){LOG_TAG_BLOCK_RAW}, 1)) ||
        (rc = crdt_buf_append(b, hdr, 1 + 4 * (size_t)k)) || (rc = crdt_buf_append(b, env, raw)))
        return rc;
    const uint8_t *p = b->p;
    size_t pn = b->n;
    if (s->zcc) {
        if ((rc = store_zframe(t, b->p + 1, b->n - 1, LOG_TAG_BLOCK_Z, &p, &pn))) return rc;
        if (pn >= b->n) { /* would not shrink: as it is */
            p = b->p;
            pn = b->n;
        }
        /* What sizes the next block (the last one's ratio predicts it
         * within a few per cent; an overshoot costs one more try). */
        s->log_ratio = (double)pn / (double)(b->n - 1);
    }
    if (pn + SEAL_OVERHEAD > s->log_vmax) {
        *too_big = true;
        return STORE_OK;
    }
    if ((rc = store_format_raise(t, 3))) return rc; /* the first block of a format 2 store */
    return store_put_sealed_append(t, DB_DELTAS, key, 8, p, pn);
}

/* Drop the first k pending envelopes (written). */
static void pend_shift(store_txn *t, uint32_t k)
{
    uint32_t base = t->pend_off[k];
    memmove(t->pend.p, t->pend.p + base, pend_bytes(t) - base);
    for (uint32_t i = 0; i + k <= t->pend_n; i++) t->pend_off[i] = t->pend_off[i + k] - base;
    t->pend_n -= k;
    t->pend.n -= base;
    t->pend_first += k;
}

int store_log_flush(store_txn *t)
{
    int rc;
    while (t->pend_n) {
        uint32_t k = t->pend_n;
        bool too_big;
        for (;;) {
            if ((rc = write_entry(t, k, &too_big))) return rc;
            if (!too_big) break;
            k--; /* one fewer (the size was predicted: it is rarely off by more) */
        }
        pend_shift(t, k);
    }
    return STORE_OK;
}

int store_log_append(store_txn *t, uint64_t sseq, const uint8_t *env, size_t n)
{
    uint64_t last;
    int rc;
    if (!t->rw) return STORE_EREADONLY;
    if (!n || env[0] < 0x80 || n > UINT32_MAX / 2) return STORE_EINVAL;
    /* Dense seqs: exactly the one after the last (stored or pending). */
    if ((rc = store_last_sseq(t, &last))) return rc;
    if (sseq != last + 1) return STORE_EINVAL;
    /* Would this envelope take the block past what fits inline?  Then the
     * pending ones go first. */
    if (t->pend_n) {
        double r = t->s->log_ratio > 0 ? t->s->log_ratio : LOG_RATIO_INIT;
        double est = (double)(pend_bytes(t) + n + 4 * (t->pend_n + 2)) * r + 16;
        if (t->pend_n == LOG_BLOCK_MAX ||
            est + SEAL_OVERHEAD > (double)t->s->log_vmax) {
            if ((rc = store_log_flush(t))) return rc;
        }
    }
    if (!t->pend_n) {
        t->pend_first = sseq;
        t->pend_off[0] = 0;
        crdt_buf_reset(&t->pend);
    }
    if ((rc = crdt_buf_append(&t->pend, env, n))) return rc;
    t->pend_off[++t->pend_n] = (uint32_t)t->pend.n;
    t->last_sseq = sseq; /* the cursor's MDB_LAST does not see pending ones */
    t->have_last_sseq = true;
    return STORE_OK;
}

int store_format_raise(store_txn *t, uint32_t format)
{
    if (t->s->format >= format || t->made_format >= format) return STORE_OK;
    uint8_t fmt[4];
    be32(fmt, format);
    int rc = store_put(t, DB_META, "format", 6, fmt, 4);
    if (!rc) t->made_format = format;
    return rc;
}

/* ---- reading ------------------------------------------------------------------------ */

/* Decode the entry at key (8 bytes), value v, into t->blk. */
static int load_entry(store_txn *t, const MDB_val *key, const MDB_val *v)
{
    crdt_buf *b = &t->blk;
    int rc;
    t->blk_n = 0;
    if (key->mv_size != 8) return STORE_ECORRUPT;
    uint64_t last = rd64(key->mv_data);
    if ((rc = store_unseal(t->s, DB_DELTAS, key, v->mv_data, v->mv_size, b))) return rc;
    if (!b->n) return STORE_ECORRUPT;
    if (b->p[0] >= 0x80 || b->p[0] == 0x01) { /* one envelope */
        if ((rc = store_unpack(t, b))) return rc;
        t->blk_off[0] = 0;
        t->blk_off[1] = (uint32_t)b->n;
        t->blk_n = 1;
        t->blk_first = t->blk_last = last;
        return STORE_OK;
    }
    if (b->p[0] == LOG_TAG_BLOCK_Z) {
        if ((rc = store_unzframe(t, b))) return rc;
    } else if (b->p[0] == LOG_TAG_BLOCK_RAW) {
        memmove(b->p, b->p + 1, b->n - 1);
        b->n--;
    } else {
        return STORE_ECORRUPT;
    }
    /* n, lengths, envelopes: exactly. */
    if (b->n < 1) return STORE_ECORRUPT;
    uint32_t n = b->p[0];
    if (n < 2 || n > LOG_BLOCK_MAX || b->n < 1 + 4 * (size_t)n || last < n) return STORE_ECORRUPT;
    size_t off = 1 + 4 * (size_t)n;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = rd32(b->p + 1 + 4 * i);
        if (!len || len > b->n - off || b->p[off] < 0x80) return STORE_ECORRUPT;
        t->blk_off[i] = (uint32_t)off;
        off += len;
    }
    if (off != b->n) return STORE_ECORRUPT;
    t->blk_off[n] = (uint32_t)off;
    t->blk_n = n;
    t->blk_first = last - n + 1;
    t->blk_last = last;
    return STORE_OK;
}

/*
 * The envelope with the smallest seq >= from: *sseq, and its bytes in *p, *n
 * (valid until the next call on t).  STORE_ENOTFOUND if the log ends before.
 */
static int log_next(store_txn *t, uint64_t from, uint64_t *sseq, const uint8_t **p, size_t *n)
{
    /* Pending seqs follow every stored one. */
    if (t->pend_n && from >= t->pend_first) {
        if (from >= t->pend_first + t->pend_n) return STORE_ENOTFOUND;
        uint32_t i = (uint32_t)(from - t->pend_first);
        *sseq = from;
        *p = t->pend.p + t->pend_off[i];
        *n = t->pend_off[i + 1] - t->pend_off[i];
        return STORE_OK;
    }
    if (!(t->blk_n && from >= t->blk_first && from <= t->blk_last)) {
        MDB_cursor *c;
        uint8_t k[8];
        MDB_val key = {8, k}, v;
        be64(k, from);
        int rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[DB_DELTAS], &c));
        if (rc) return rc;
        int mrc = mdb_cursor_get(c, &key, &v, MDB_SET_RANGE);
        if (mrc == 0) rc = load_entry(t, &key, &v);
        mdb_cursor_close(c);
        if (mrc == MDB_NOTFOUND) {
            if (!t->pend_n) return STORE_ENOTFOUND;
            *sseq = t->pend_first;
            *p = t->pend.p;
            *n = t->pend_off[1];
            return STORE_OK;
        }
        if (mrc) return store_lmdb_err(mrc);
        if (rc) return rc;
    }
    uint64_t s = from > t->blk_first ? from : t->blk_first;
    uint32_t i = (uint32_t)(s - t->blk_first);
    *sseq = s;
    *p = t->blk.p + t->blk_off[i];
    *n = t->blk_off[i + 1] - t->blk_off[i];
    return STORE_OK;
}

int store_get_envelope(store_txn *t, uint64_t sseq, crdt_buf *out)
{
    uint64_t got;
    const uint8_t *p;
    size_t n;
    crdt_buf_reset(out);
    if (!sseq) return STORE_ENOTFOUND;
    int rc = log_next(t, sseq, &got, &p, &n);
    if (rc) return rc;
    if (got != sseq) return STORE_ENOTFOUND;
    return crdt_buf_append(out, p, n);
}

int store_log_has(store_txn *t, uint64_t sseq)
{
    uint64_t got;
    const uint8_t *p;
    size_t n;
    if (!sseq) return STORE_ENOTFOUND;
    int rc = log_next(t, sseq, &got, &p, &n);
    if (rc) return rc;
    return got == sseq ? STORE_OK : STORE_ENOTFOUND;
}

int store_log_count(store_txn *t, uint64_t *count)
{
    uint64_t from = 1, got;
    const uint8_t *p;
    size_t n;
    int rc;
    *count = 0;
    while ((rc = log_next(t, from, &got, &p, &n)) == STORE_OK) {
        (*count)++;
        from = got + 1;
    }
    return rc == STORE_ENOTFOUND ? STORE_OK : rc;
}

int store_last_sseq(store_txn *t, uint64_t *sseq)
{
    MDB_cursor *c;
    MDB_val k, v;
    *sseq = 0;
    if (t->have_last_sseq) {
        *sseq = t->last_sseq;
        return STORE_OK;
    }
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_DELTAS], &c);
    if (rc) return store_lmdb_err(rc);
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) return STORE_OK;
    if (rc) return store_lmdb_err(rc);
    if (k.mv_size != 8) return STORE_ECORRUPT;
    *sseq = rd64(k.mv_data);
    if (t->rw) { /* only this transaction can move it */
        t->last_sseq = *sseq;
        t->have_last_sseq = true;
    }
    return STORE_OK;
}

int store_log_read(store_txn *t, uint64_t after, size_t max, size_t max_bytes, store_feed_cb cb,
                   void *arg)
{
    size_t n = 0, bytes = 0;
    crdt_buf env = {0};
    uint64_t from = after + 1;
    int rc = STORE_OK;
    if (after == UINT64_MAX) return STORE_OK;
    while (n < max) {
        uint64_t sseq;
        const uint8_t *p;
        size_t len;
        if ((rc = log_next(t, from, &sseq, &p, &len))) {
            if (rc == STORE_ENOTFOUND) rc = STORE_OK;
            break;
        }
        if (n && bytes + len > max_bytes) break; /* the first always fits */
        /* The callback may read the log itself: give it its own copy. */
        crdt_buf_reset(&env);
        if ((rc = crdt_buf_append(&env, p, len))) break;
        bytes += len;
        n++;
        if ((rc = cb(sseq, env.p, env.n, arg))) break;
        from = sseq + 1;
    }
    crdt_buf_free(&env);
    return rc;
}
