/*
 * serverkey.c — what the staff dashboard (sync/api.c, issue #7) needs from
 * the store beyond store.c/append.c: signing with the server's key, and
 * walks over indexes that have no public reader elsewhere.
 *
 *   store_server_sign_delta   the server's own deltas (device id 0)
 *   store_server_append       ... built, signed and appended in one call
 *   store_record_deltas       a record's history (rdeltas: kind 0 id 0 sseq, from
 *                             stores before format 3; then the history in the
 *                             record's own value, append.c)
 *   store_agg_places          the (community, grid) pairs with aggregates
 *   store_agg_place_list      ... collected into an owned list
 *   store_records_page        a bounded walk over one kind's records
 *
 * Invariants:
 *   - The server's secret key exists in plaintext only inside
 *     store_server_sign_delta, in a buffer wiped before it returns (also on
 *     every failure path); the store object never holds it.
 *   - Every function runs in the caller's transaction; only
 *     store_server_append writes (through store_append, like a phone).
 *   - Borrowed results (record, entry, strings) live only for the callback.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

int store_server_sign_delta(store_txn *t, const uint8_t *delta, size_t n,
                            uint8_t sig[WIRE_SIG_BYTES])
{
    crdt_buf sk = {0};
    int rc;
    memset(sig, 0, WIRE_SIG_BYTES);
    if (!t || (!delta && n)) return STORE_EINVAL;
    /* store_unseal decrypts straight into one fresh allocation, so no
     * realloc leaves a stray copy of the key behind. */
    rc = store_get_sealed(t, DB_META, "server_sk", 9, &sk);
    if (rc) goto out;
    if (sk.n != WIRE_SK_BYTES) {
        rc = STORE_ECORRUPT;
        goto out;
    }
    rc = wire_delta_sign(delta, n, sk.p, sig);
    if (rc) memset(sig, 0, WIRE_SIG_BYTES);
out:
    if (sk.p) sodium_memzero(sk.p, sk.cap);
    crdt_buf_free(&sk);
    return rc;
}

int store_server_append(store_txn *t, const char *kind, const char *id, const crdt_op *ops,
                        uint32_t n_ops, uint64_t now_ms, uint64_t max_ahead_ms,
                        store_server_delta *out)
{
    uint8_t prev[CRDT_HASH_BYTES], sig[WIRE_SIG_BYTES];
    uint64_t head = 0;
    crdt_hlc hwm = 0;
    crdt_buf bytes = {0}, env = {0};
    crdt_arena *a = NULL;
    crdt_delta d, dd;
    store_item it;
    const uint8_t *db, *sg;
    size_t dl;
    int rc, v;
    if (!out) return STORE_EINVAL;
    memset(out, 0, sizeof *out);
    out->err_op = -1;
    if (!t || !kind || !id || (!ops && n_ops)) return STORE_EINVAL;
    if (!(a = crdt_arena_new(0))) return CRDT_ENOMEM;
    memset(&d, 0, sizeof d);
    if ((rc = store_chain_head(t, 0, &head, prev)) || (rc = store_hlc_hwm(t, &hwm)) ||
        (rc = crdt_hlc_now(&hwm, now_ms, &d.hlc)))
        goto out;
    d.dev = 0;
    d.epoch = 1;
    d.seq = head + 1;
    memcpy(d.prev, prev, sizeof prev);
    d.kind = kind;
    d.kind_len = (uint32_t)strlen(kind);
    d.id = id;
    d.id_len = (uint32_t)strlen(id);
    d.ops = ops;
    d.n_ops = n_ops;
    if ((rc = crdt_delta_encode(&d, &bytes)) ||
        (rc = store_server_sign_delta(t, bytes.p, bytes.n, sig)) ||
        (rc = wire_envelope_encode(bytes.p, bytes.n, sig, &env)))
        goto out;
    /* From here on, exactly what store_append_batch does with a phone's
     * envelope: the server gets no shortcut past decoding or the schema. */
    v = wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sg);
    if (!v) v = crdt_delta_decode(db, dl, &crdt_limits_default, a, &dd, &out->err_op);
    if (!v) v = crdt_schema_check_delta(t->s->schema, &dd, &out->err_op);
    if (v) {
        out->invalid = v;
        goto out;
    }
    memset(&it, 0, sizeof it);
    it.env = env.p;
    it.env_len = env.n;
    it.delta = &dd;
    if ((rc = wire_delta_hash(db, dl, it.hash)) ||
        (rc = store_append(t, &it, now_ms, max_ahead_ms, &out->oc)))
        goto out;
    out->seq = d.seq;
out:
    crdt_buf_free(&bytes);
    crdt_buf_free(&env);
    crdt_arena_free(a);
    sodium_memzero(sig, sizeof sig);
    return rc;
}

int store_record_deltas(store_txn *t, const char *kind, const char *id, uint64_t after,
                        size_t limit, store_sseq_cb cb, void *arg, uint64_t *next)
{
    uint8_t prefix[CRDT_NAME_MAX + CRDT_RECID_MAX + 2 + 8];
    size_t kl, il, pn;
    MDB_cursor *c;
    MDB_val k, v;
    size_t delivered = 0;
    int rc = STORE_OK, mrc;
    if (next) *next = after;
    if (!t || !kind || !id || !cb) return STORE_EINVAL;
    kl = strlen(kind);
    il = strlen(id);
    if (!kl || kl >= CRDT_NAME_MAX || !il || il > CRDT_RECID_MAX) return STORE_EINVAL;
    memcpy(prefix, kind, kl);
    prefix[kl] = 0;
    memcpy(prefix + kl + 1, id, il);
    prefix[kl + 1 + il] = 0;
    pn = kl + il + 2;
    if (after == UINT64_MAX || !limit) return STORE_OK;
    be64(prefix + pn, after + 1);
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_RDELTAS], &c))) return store_lmdb_err(mrc);
    k.mv_data = prefix;
    k.mv_size = pn + 8;
    mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && delivered < limit) {
        if (k.mv_size != pn + 8 || memcmp(k.mv_data, prefix, pn) != 0) break;
        uint64_t sseq = rd64((const uint8_t *)k.mv_data + pn);
        if ((rc = cb(sseq, arg))) goto out;
        if (next) *next = sseq;
        delivered++;
        mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    if (mrc && mrc != MDB_NOTFOUND) {
        rc = store_lmdb_err(mrc);
        goto out;
    }
    /* Then the history in the record's value (format 3: deltas merged
     * since, all after those in rdeltas). */
    if (delivered < limit) {
        crdt_buf val = {0}, hist = {0};
        store_recval rv;
        rc = store_get_record_value(t, prefix, pn - 1, &val, &rv);
        if (rc == STORE_ENOTFOUND) rc = STORE_OK;
        else if (!rc) rc = crdt_buf_append(&hist, rv.hist, rv.hn); /* cb may use the txn: a copy */
        uint64_t sseq = 0;
        const uint8_t *q = hist.p, *end = hist.n ? hist.p + hist.n : hist.p;
        while (!rc && q < end && delivered < limit) {
            if ((rc = store_history_next(&q, end, &sseq))) break;
            if (sseq <= after) continue;
            if ((rc = cb(sseq, arg))) break;
            if (next) *next = sseq;
            delivered++;
        }
        if (val.p) sodium_memzero(val.p, val.cap);
        crdt_buf_free(&val);
        crdt_buf_free(&hist);
    }
out:
    mdb_cursor_close(c);
    return rc;
}

int store_agg_places(store_txn *t, store_place_cb cb, void *arg)
{
    MDB_cursor *c;
    MDB_val k, v;
    char *buf = NULL; /* "community\0grid\0", reused across keys */
    size_t cap = 0;
    int rc = STORE_OK, mrc;
    if (!t || !cb) return STORE_EINVAL;
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_AGG], &c))) return store_lmdb_err(mrc);
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        /* Keys are "community\0grid" (agg.c); anything else is damage,
         * reported rather than skipped so no place vanishes from a report. */
        const uint8_t *p = k.mv_data;
        const uint8_t *z = memchr(p, 0, k.mv_size);
        if (!z || memchr(z + 1, 0, k.mv_size - (size_t)(z - p) - 1)) {
            rc = STORE_ECORRUPT;
            break;
        }
        if (k.mv_size + 1 > cap) {
            char *nb = realloc(buf, k.mv_size + 1);
            if (!nb) {
                rc = CRDT_ENOMEM;
                break;
            }
            buf = nb;
            cap = k.mv_size + 1;
        }
        memcpy(buf, p, k.mv_size);
        buf[k.mv_size] = 0;
        if ((rc = cb(buf, buf + (z - p) + 1, arg))) break;
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_lmdb_err(mrc);
    mdb_cursor_close(c);
    free(buf);
    return rc;
}

static int place_append(const char *community, const char *grid, void *arg)
{
    store_places *pl = arg;
    if (pl->n == pl->cap) {
        size_t nc = pl->cap ? pl->cap * 2 : 32;
        store_place *np = realloc(pl->p, nc * sizeof *np);
        if (!np) return CRDT_ENOMEM;
        pl->p = np;
        pl->cap = nc;
    }
    store_place *e = &pl->p[pl->n];
    if (!(e->community = strdup(community))) return CRDT_ENOMEM;
    if (!(e->grid = strdup(grid))) {
        free(e->community);
        return CRDT_ENOMEM;
    }
    pl->n++;
    return 0;
}

int store_agg_place_list(store_txn *t, store_places *out)
{
    if (!out) return STORE_EINVAL;
    memset(out, 0, sizeof *out);
    int rc = store_agg_places(t, place_append, out);
    if (rc) store_places_free(out);
    return rc;
}

void store_places_free(store_places *pl)
{
    if (!pl) return;
    for (size_t i = 0; i < pl->n; i++) {
        free(pl->p[i].community);
        free(pl->p[i].grid);
    }
    free(pl->p);
    memset(pl, 0, sizeof *pl);
}

int store_records_page(store_txn *t, const char *kind, const char *after, size_t limit,
                       store_record_cb cb, void *arg, char next[CRDT_RECID_MAX + 1])
{
    uint8_t start[CRDT_NAME_MAX + CRDT_RECID_MAX + 3];
    size_t kl, al, visited = 0;
    MDB_cursor *c;
    MDB_val k, v;
    crdt_buf plain = {0};
    int rc = STORE_OK, mrc;
    next[0] = 0;
    if (!t || !kind || !cb) return STORE_EINVAL;
    if (!after) after = "";
    kl = strlen(kind);
    al = strlen(after);
    if (!kl || kl >= CRDT_NAME_MAX || al > CRDT_RECID_MAX) return STORE_EINVAL;
    memcpy(start, kind, kl);
    start[kl] = 0;
    memcpy(start + kl + 1, after, al);
    /* Keys are "kind 0 id": the first id greater than `after` starts at
     * "kind 0 after 0" (ids never contain 0x00). */
    size_t sn = kl + 1 + al;
    if (al) start[sn++] = 0;
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_RECORDS], &c))) return store_lmdb_err(mrc);
    k.mv_data = start;
    k.mv_size = sn;
    mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && visited < limit) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size <= kl + 1 || memcmp(kp, kind, kl) != 0 || kp[kl] != 0) break;
        size_t il = k.mv_size - kl - 1;
        if (il > CRDT_RECID_MAX) {
            rc = STORE_ECORRUPT;
            break;
        }
        crdt_record *r = NULL;
        store_recval rv;
        rc = store_record_value(t, &k, &v, &plain, &rv);
        if (!rc) rc = store_record_build(t, kind, kl, (const char *)kp + kl + 1, il, &rv, &r);
        if (rc) break;
        memcpy(next, kp + kl + 1, il);
        next[il] = 0;
        visited++;
        rc = cb(r, arg);
        crdt_record_free(r);
        if (rc) break;
        mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_lmdb_err(mrc);
    mdb_cursor_close(c);
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    crdt_buf_free(&plain);
    return rc;
}
