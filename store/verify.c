/*
 * verify.c — hot backup and the consistency check.
 *
 * store_verify rebuilds from the delta log and compares byte for byte:
 *   1. chains: per device, dots are contiguous 1..head, the head matches
 *      (seq and hash), each applied dot's envelope exists, decodes, names
 *      that dot and hashes to the dot's stored hash where it keeps one, and
 *      each applied delta's previous hash is the hash of the dot before it
 *      (zeros for seq 1), so a changed envelope breaks the chain even where
 *      the dot keeps no hash of its own;
 *   2. records: every record equals the merge of the deltas its history
 *      names (rdeltas, then its value: store_record_deltas; re-applied from the verbatim envelopes), and every
 *      delta is named by exactly one record (counts agree);
 *   3. indexes: every entry a record implies (members, grid, lookups) is
 *      present, and each index holds exactly as many entries as implied;
 *      every feed entry names an existing delta, and every household's
 *      deltas are in its feed;
 *   4. aggregates: the sums of all records' contributions, recomputed,
 *      equal the stored agg/aggw values.
 * It runs in one read transaction (a consistent snapshot) and never writes.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int store_backup(store *s, const char *dest, char *err, size_t errlen)
{
    int rc = mdb_env_copy2(s->env, dest, MDB_CP_COMPACT);
    if (rc) {
        if (err && errlen)
            snprintf(err, errlen, "%s: backup failed: %s (the directory must exist and be empty)",
                     dest, mdb_strerror(rc));
        return store_lmdb_err(rc);
    }
    return STORE_OK;
}

typedef struct vctx {
    store *s;
    store_txn *t;
    store_report_fn report;
    void *arg;
    uint64_t problems;
    crdt_arena *arena;
    crdt_buf env, a, b;
} vctx;

static void problem(vctx *v, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    v->problems++;
    if (v->report) v->report(v->arg, line);
}

/* Decode an envelope's delta (borrowed from v->arena and v->env). */
static int open_delta(vctx *v, uint64_t sseq, crdt_delta *d, uint8_t hash[32])
{
    return store_delta_at(v->t, sseq, &v->env, v->arena, d, hash);
}

static uint64_t db_entries(vctx *v, int db)
{
    MDB_stat st;
    return mdb_stat(v->t->txn, v->s->dbi[db], &st) ? 0 : st.ms_entries;
}

/* The dots one by one in (device, seq) order, whatever their form: a
 * chunk's slots (applied, no hash) merged with the entries of single seqs
 * that sort after the chunk's key but belong to its range (internal.h). */
typedef struct dotit {
    MDB_cursor *c;
    int mrc;                    /* of the cursor's current entry */
    MDB_val k, v;
    bool in_chunk;
    uint32_t cdev;
    uint64_t cbase;
    unsigned ci;
    uint8_t slots[STORE_DOT_CHUNK_VAL];
} dotit;

typedef struct dotent {
    uint32_t dev;
    uint64_t seq, sseq;
    const uint8_t *hash;        /* NULL: none stored */
    bool malformed;
} dotent;

/* 0 with *e filled, MDB_NOTFOUND at the end, or an LMDB error. */
static int dotit_next(dotit *it, dotent *e)
{
    memset(e, 0, sizeof *e);
    for (;;) {
        if (it->in_chunk) {
            while (it->ci < STORE_DOT_CHUNK && !store_dot_slot(it->slots, it->ci)) it->ci++;
            bool raw_in = it->mrc == 0 && it->k.mv_size == 12 &&
                          rd32(it->k.mv_data) == it->cdev &&
                          rd64((uint8_t *)it->k.mv_data + 4) < it->cbase + STORE_DOT_CHUNK;
            uint64_t rs = raw_in ? rd64((uint8_t *)it->k.mv_data + 4) : 0;
            if (it->ci < STORE_DOT_CHUNK && (!raw_in || it->cbase + it->ci < rs)) {
                e->dev = it->cdev;
                e->seq = it->cbase + it->ci;
                e->sseq = store_dot_slot(it->slots, it->ci);
                it->ci++;
                return 0;
            }
            if (!raw_in) {
                it->in_chunk = false;
                continue;
            }
        }
        if (it->mrc) return it->mrc;
        MDB_val k = it->k, v = it->v;
        if (k.mv_size == STORE_DOT_CHUNK_KEY && ((uint8_t *)k.mv_data)[12] == 'C' &&
            v.mv_size == STORE_DOT_CHUNK_VAL && !it->in_chunk) {
            it->in_chunk = true;
            it->cdev = rd32(k.mv_data);
            it->cbase = rd64((uint8_t *)k.mv_data + 4);
            it->ci = 0;
            memcpy(it->slots, v.mv_data, sizeof it->slots);
            it->mrc = mdb_cursor_get(it->c, &it->k, &it->v, MDB_NEXT);
            continue;
        }
        it->mrc = mdb_cursor_get(it->c, &it->k, &it->v, MDB_NEXT);
        /* sseq(8) for an applied dot, sseq(8) hash(32) for a held-back one
         * (sseq 0) or one written before the short form. */
        bool has_hash = v.mv_size == 40;
        if (k.mv_size != 12 || (v.mv_size != 8 && !has_hash) ||
            (!has_hash && rd64(v.mv_data) == 0)) {
            e->malformed = true;
            if (k.mv_size >= 4) e->dev = rd32(k.mv_data);
            return 0;
        }
        e->dev = rd32(k.mv_data);
        e->seq = rd64((uint8_t *)k.mv_data + 4);
        e->sseq = rd64(v.mv_data);
        e->hash = has_hash ? (const uint8_t *)v.mv_data + 8 : NULL;
        return 0;
    }
}

/* 1. Chains. */
static int check_chains(vctx *v)
{
    dotit it;
    dotent e;
    uint32_t dev = 0, orig = 0;
    uint64_t expect = 1;
    bool have = false, prev_known = false, relayed = false;
    uint8_t last_hash[32], prev_hash[32];
    MDB_val k, val;
    memset(&it, 0, sizeof it);
    int rc = store_lmdb_err(mdb_cursor_open(v->t->txn, v->s->dbi[DB_DOTS], &it.c));
    if (rc) return rc;
    it.mrc = mdb_cursor_get(it.c, &it.k, &it.v, MDB_FIRST);
    for (;;) {
        rc = dotit_next(&it, &e);
        bool end = rc == MDB_NOTFOUND;
        if (rc && !end) break;
        uint32_t d = end ? 0 : e.dev;
        if (have && (end || d != dev)) {
            uint64_t hs;
            uint8_t hh[32];
            store_chain_head(v->t, dev, &hs, hh);
            if (hs != expect - 1)
                problem(v, "device %u: chain head says seq %llu, dots end at %llu", dev,
                        (unsigned long long)hs, (unsigned long long)(expect - 1));
            else if (memcmp(hh, last_hash, 32))
                problem(v, "device %u: chain head's hash is not the hash of seq %llu", dev,
                        (unsigned long long)hs);
        }
        if (end) {
            rc = 0;
            break;
        }
        bool has_hash = e.hash != NULL;
        if (e.malformed) {
            problem(v, "dots: malformed entry");
            continue;
        }
        if (!have || d != dev) {
            dev = d;
            /* A relayed chain (relay.c): its deltas name the street's
             * device id, and it may have gaps (deltas the street still
             * holds in quarantine); the street checked its continuity. */
            relayed = store_relay_origin(v->t, dev, NULL, &orig) == STORE_OK;
            if (!relayed) orig = dev;
            expect = 1;
            have = true;
            memset(prev_hash, 0, 32); /* seq 1 names no previous delta */
            prev_known = true;
        }
        uint64_t seq = e.seq, sseq = e.sseq;
        if (seq != expect && !relayed) {
            problem(v, "device %u: chain gap, seq %llu where %llu was expected", dev,
                    (unsigned long long)seq, (unsigned long long)expect);
            prev_known = false;
        }
        expect = seq + 1;
        bool known = has_hash;
        if (has_hash) memcpy(last_hash, e.hash, 32);
        else memset(last_hash, 0, 32);
        if (sseq) {
            crdt_delta dl;
            uint8_t h[32];
            int r2 = open_delta(v, sseq, &dl, h);
            if (r2) {
                problem(v, "delta %llu (device %u seq %llu): %s", (unsigned long long)sseq,
                        dev, (unsigned long long)seq, store_strerror(r2));
            } else if (dl.dev != orig || dl.seq != seq || (has_hash && memcmp(h, last_hash, 32))) {
                problem(v, "delta %llu does not match its dot (device %u seq %llu)",
                        (unsigned long long)sseq, dev, (unsigned long long)seq);
            } else {
                if (prev_known && !relayed && memcmp(dl.prev, prev_hash, 32))
                    problem(v, "device %u seq %llu: its previous-delta hash is not the hash "
                            "of seq %llu", dev, (unsigned long long)seq,
                            (unsigned long long)(seq - 1));
                memcpy(last_hash, h, 32);
                known = true;
            }
        }
        memcpy(prev_hash, last_hash, 32);
        prev_known = known;
    }
    mdb_cursor_close(it.c);
    if (rc) return store_lmdb_err(rc);
    if (db_entries(v, DB_HEADS) != 0) {
        /* Every head must have dots (checked above per device with dots). */
        MDB_cursor *h;
        if (mdb_cursor_open(v->t->txn, v->s->dbi[DB_HEADS], &h) == 0) {
            for (rc = mdb_cursor_get(h, &k, &val, MDB_FIRST); rc == 0;
                 rc = mdb_cursor_get(h, &k, &val, MDB_NEXT)) {
                uint64_t dsseq;
                uint8_t dh[32];
                if (k.mv_size != 4 || val.mv_size < 8 ||
                    store_dot_get(v->t, rd32(k.mv_data), rd64(val.mv_data), &dsseq, dh))
                    problem(v, "device %u: head seq %llu has no dot", rd32(k.mv_data),
                            (unsigned long long)rd64(val.mv_data));
            }
            mdb_cursor_close(h);
        }
    }
    return STORE_OK;
}

/* ---- a tiny string-keyed hash map for the aggregate recomputation ----------- */

typedef struct aslot {
    char *key;       /* NULL: empty */
    size_t kl;
    int64_t v[3 + 2 * STORE_MAX_GROUPS];
} aslot;

typedef struct amap {
    aslot *s;
    size_t cap, n;
} amap;

static uint64_t fnv(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static aslot *amap_get(amap *m, const void *k, size_t kl)
{
    if (m->n * 2 >= m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 256;
        aslot *ns = calloc(nc, sizeof *ns);
        if (!ns) return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->s[i].key) continue;
            size_t j = fnv(m->s[i].key, m->s[i].kl) & (nc - 1);
            while (ns[j].key) j = (j + 1) & (nc - 1);
            ns[j] = m->s[i];
        }
        free(m->s);
        m->s = ns;
        m->cap = nc;
    }
    size_t j = fnv(k, kl) & (m->cap - 1);
    while (m->s[j].key && (m->s[j].kl != kl || memcmp(m->s[j].key, k, kl)))
        j = (j + 1) & (m->cap - 1);
    if (!m->s[j].key) {
        m->s[j].key = malloc(kl ? kl : 1);
        if (!m->s[j].key) return NULL;
        memcpy(m->s[j].key, k, kl);
        m->s[j].kl = kl;
        m->n++;
    }
    return &m->s[j];
}

static void amap_free(amap *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->s[i].key);
    free(m->s);
}

typedef struct amaps {
    amap *agg, *weeks;
    bool oom;
} amaps;

/* Contribution of one record (agg.c's rules), added to the maps. */
static void add_contrib(void *arg, int db, const uint8_t *key, size_t kl, const int64_t *v,
                        size_t nv)
{
    amaps *m = arg;
    aslot *sl = amap_get(db == DB_AGG ? m->agg : m->weeks, key, kl);
    if (!sl) {
        m->oom = true;
        return;
    }
    for (size_t i = 0; i < nv; i++) sl->v[i] += v[i];
}

/* A growing list of sseqs (a record's deltas). */
typedef struct sseqs {
    uint64_t *v;
    size_t n, cap;
    bool oom;
} sseqs;

static int sseqs_add(uint64_t sseq, void *arg)
{
    sseqs *l = arg;
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 16;
        uint64_t *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            l->oom = true;
            return CRDT_ENOMEM;
        }
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = sseq;
    return 0;
}

/* 2-4. Records, indexes, aggregates. */
static int check_records(vctx *v)
{
    MDB_cursor *c;
    MDB_val k, val;
    uint64_t implied_members = 0, implied_grid = 0, implied_lookup = 0, named = 0;
    amap agg = {0}, weeks = {0};
    int rc = store_lmdb_err(mdb_cursor_open(v->t->txn, v->s->dbi[DB_RECORDS], &c));
    if (rc) return rc;
    for (rc = mdb_cursor_get(c, &k, &val, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &val, MDB_NEXT)) {
        char kind[CRDT_NAME_MAX], id[CRDT_RECID_MAX + 1];
        const uint8_t *kp = k.mv_data;
        const uint8_t *z = memchr(kp, 0, k.mv_size);
        if (!z || (size_t)(z - kp) >= sizeof kind || k.mv_size - (size_t)(z - kp) - 1 > CRDT_RECID_MAX) {
            problem(v, "records: malformed key");
            continue;
        }
        memcpy(kind, kp, (size_t)(z - kp));
        kind[z - kp] = 0;
        memcpy(id, z + 1, k.mv_size - (size_t)(z - kp) - 1);
        id[k.mv_size - (size_t)(z - kp) - 1] = 0;

        crdt_record *stored = NULL, *rebuilt = crdt_record_new(kind, strlen(kind), id, strlen(id));
        int r2 = store_get_record(v->t, kind, id, &stored);
        if (r2 || !rebuilt) {
            problem(v, "%s %s: stored record unreadable: %s", kind, id, store_strerror(r2));
            crdt_record_free(stored);
            crdt_record_free(rebuilt);
            continue;
        }
        /* Re-apply the record's deltas, in server order (rdeltas, then
         * the history in its value). */
        sseqs ss = {0};
        int r5 = store_record_deltas(v->t, kind, id, 0, SIZE_MAX, sseqs_add, &ss, NULL);
        if (r5 || ss.oom)
            problem(v, "%s %s: its list of deltas is unreadable: %s", kind, id,
                    store_strerror(r5 ? r5 : CRDT_ENOMEM));
        for (size_t i = 0; i < ss.n; i++) {
            uint64_t sseq = ss.v[i];
            crdt_delta d;
            named++;
            int r4 = open_delta(v, sseq, &d, NULL);
            if (r4 || (r4 = crdt_record_apply(rebuilt, v->s->schema, &d)))
                problem(v, "%s %s: delta %llu does not re-apply: %s", kind, id,
                        (unsigned long long)sseq, store_strerror(r4));
            if (!strcmp(kind, "household")) {
                if (store_feed_has(v->t, id, sseq))
                    problem(v, "household %s: delta %llu missing from its feed", id,
                            (unsigned long long)sseq);
            }
        }
        free(ss.v);
        crdt_buf_reset(&v->a);
        crdt_buf_reset(&v->b);
        crdt_record_encode(stored, &v->a);
        crdt_record_encode(rebuilt, &v->b);
        if (v->a.n != v->b.n || memcmp(v->a.p, v->b.p, v->a.n))
            problem(v, "%s %s: stored record differs from its rebuild from the log", kind, id);

        /* Index entries this record implies. */
        const store_model *m = &v->s->model;
        uint32_t len;
        if (!strcmp(kind, "person")) {
            const char *h = store_field_str(stored, m->p_household, (crdt_blob){NULL, 0}, &len);
            if (h && len) {
                char hb[CRDT_RECID_MAX + 1];
                memcpy(hb, h, len < CRDT_RECID_MAX ? len : CRDT_RECID_MAX);
                hb[len < CRDT_RECID_MAX ? len : CRDT_RECID_MAX] = 0;
                uint8_t mk[2 * CRDT_RECID_MAX + 2];
                const char *parts[] = {hb, id};
                size_t ml = store_key_join(mk, sizeof mk, parts, 2);
                MDB_val mv;
                implied_members++;
                if (store_get(v->t, DB_MEMBERS, mk, ml, &mv))
                    problem(v, "person %s: missing from members of %s", id, hb);
            }
            const crdt_fspec *lf[3] = {m->p_idnum, m->p_phone, m->p_name};
            for (int w = 0; w < 3; w++) {
                store_ids ids = {0};
                const crdt_field *fl = crdt_record_field(stored, lf[w]->name, (crdt_blob){NULL, 0});
                for (uint32_t i = 0; fl && i < fl->n; i++) {
                    crdt_val cv;
                    if (crdt_val_parse(fl->e[i].v, &cv) || cv.t != CRDT_V_STR) continue;
                    if (i && !crdt_blob_cmp(fl->e[i].v, fl->e[i - 1].v)) continue;
                    bool dup = false;
                    for (uint32_t j = 0; j < i; j++)
                        if (!crdt_blob_cmp(fl->e[i].v, fl->e[j].v)) dup = true;
                    if (dup) continue;
                    implied_lookup++;
                    bool found = false;
                    if (!store_lookup(v->t, w + 1, cv.s, cv.len, &ids))
                        for (size_t x = 0; x < ids.n; x++)
                            if (!strcmp(ids.id[x], id)) found = true;
                    store_ids_free(&ids);
                    if (!found) problem(v, "person %s: lookup entry %d missing", id, w + 1);
                }
            }
        } else if (!strcmp(kind, "household")) {
            uint32_t cl, gl;
            const char *cs = store_field_str(stored, m->hh_community, (crdt_blob){NULL, 0}, &cl);
            const char *gs = store_field_str(stored, m->hh_grid, (crdt_blob){NULL, 0}, &gl);
            if (cs && gs && cl && gl && cl < 128 && gl < 128) {
                char cb[128], gb[128];
                memcpy(cb, cs, cl);
                cb[cl] = 0;
                memcpy(gb, gs, gl);
                gb[gl] = 0;
                uint8_t gk[300];
                const char *parts[] = {cb, gb, id};
                size_t gkl = store_key_join(gk, sizeof gk, parts, 3);
                MDB_val gv;
                implied_grid++;
                if (!gkl || store_get(v->t, DB_GRID, gk, gkl, &gv))
                    problem(v, "household %s: missing from grid %s/%s", id, cb, gb);
                /* The place index says the same. */
                const char *pp[] = {cb, gb};
                size_t pl = store_key_join(gk, sizeof gk, pp, 2);
                if (store_get(v->t, DB_PLACE, id, strlen(id), &gv) || gv.mv_size != pl ||
                    memcmp(gv.mv_data, gk, pl))
                    problem(v, "household %s: place index does not say %s/%s", id, cb, gb);
            }
        }
        amaps maps = {&agg, &weeks, false};
        r2 = store_agg_contrib(v->t, stored, add_contrib, &maps);
        if (!r2 && maps.oom) r2 = CRDT_ENOMEM;
        if (r2) problem(v, "%s %s: contribution failed: %s", kind, id, store_strerror(r2));
        crdt_record_free(stored);
        crdt_record_free(rebuilt);
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) {
        amap_free(&agg);
        amap_free(&weeks);
        return store_lmdb_err(rc);
    }
    uint64_t logged = 0;
    int lrc = store_log_count(v->t, &logged);
    if (lrc)
        problem(v, "the log cannot be read through: %s", store_strerror(lrc));
    else if (named != logged)
        problem(v, "records name %llu deltas but the log holds %llu",
                (unsigned long long)named, (unsigned long long)logged);
    if (implied_members != db_entries(v, DB_MEMBERS))
        problem(v, "members index holds %llu entries, records imply %llu",
                (unsigned long long)db_entries(v, DB_MEMBERS), (unsigned long long)implied_members);
    if (implied_grid != db_entries(v, DB_PLACE))
        problem(v, "place index holds %llu entries, records imply %llu",
                (unsigned long long)db_entries(v, DB_PLACE), (unsigned long long)implied_grid);
    if (implied_grid != db_entries(v, DB_GRID))
        problem(v, "grid index holds %llu entries, records imply %llu",
                (unsigned long long)db_entries(v, DB_GRID), (unsigned long long)implied_grid);
    if (implied_lookup != db_entries(v, DB_LOOKUP))
        problem(v, "lookup index holds %llu entries, records imply %llu",
                (unsigned long long)db_entries(v, DB_LOOKUP), (unsigned long long)implied_lookup);

    /* Aggregates: every stored sum equals the recomputed one (zeros may be
     * stored where contributions cancelled out). */
    for (int db = DB_AGG; db <= DB_AGGW; db++) {
        amap *want = db == DB_AGG ? &agg : &weeks;
        size_t seen = 0;
        MDB_cursor *ac;
        if (mdb_cursor_open(v->t->txn, v->s->dbi[db], &ac)) continue;
        for (int r5 = mdb_cursor_get(ac, &k, &val, MDB_FIRST); r5 == 0;
             r5 = mdb_cursor_get(ac, &k, &val, MDB_NEXT)) {
            aslot *sl = amap_get(want, k.mv_data, k.mv_size);
            size_t nv = db == DB_AGG ? 3 + 2 * STORE_MAX_GROUPS : 1;
            if (!sl || val.mv_size != nv * 8) {
                problem(v, "%s: malformed entry", store_db_names[db]);
                continue;
            }
            if (memcmp(sl->v, val.mv_data, nv * 8))
                problem(v, "%s: stored sums differ from the records' contributions",
                        store_db_names[db]);
            sl->v[0] = INT64_MIN; /* mark seen */
            seen++;
        }
        mdb_cursor_close(ac);
        for (size_t i = 0; i < want->cap; i++) {
            aslot *sl = &want->s[i];
            if (!sl->key || sl->v[0] == INT64_MIN) continue;
            bool zero = true;
            for (size_t j = 0; j < (db == DB_AGG ? 3 + 2 * STORE_MAX_GROUPS : 1u); j++)
                zero &= sl->v[j] == 0;
            if (!zero) problem(v, "%s: a grid's sums are missing", store_db_names[db]);
        }
        (void)seen;
    }
    amap_free(&agg);
    amap_free(&weeks);

    /* Feed entries must name existing deltas. */
    MDB_cursor *fc;
    if (mdb_cursor_open(v->t->txn, v->s->dbi[DB_FEED], &fc) == 0) {
        for (rc = mdb_cursor_get(fc, &k, &val, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(fc, &k, &val, MDB_NEXT)) {
            if (k.mv_size < 9) {
                problem(v, "feed: malformed key");
                continue;
            }
            /* The chunk's first sseq, then those its value lists. */
            uint64_t s = rd64((uint8_t *)k.mv_data + k.mv_size - 8);
            const uint8_t *q = val.mv_data, *end = q + val.mv_size;
            for (;;) {
                if (store_log_has(v->t, s))
                    problem(v, "feed names delta %llu which does not exist",
                            (unsigned long long)s);
                if (q == end) break;
                if (store_history_next(&q, end, &s)) {
                    problem(v, "feed: malformed chunk");
                    break;
                }
            }
        }
        mdb_cursor_close(fc);
    }
    return STORE_OK;
}

int store_verify(store *s, store_report_fn report, void *arg, uint64_t *problems)
{
    vctx v;
    int rc;
    memset(&v, 0, sizeof v);
    v.s = s;
    v.report = report;
    v.arg = arg;
    *problems = 0;
    v.arena = crdt_arena_new(0);
    if (!v.arena) return CRDT_ENOMEM;
    if ((rc = store_begin(s, STORE_RDONLY, &v.t))) goto out;
    if ((rc = check_chains(&v))) goto out;
    if ((rc = check_records(&v))) goto out;
    {
        uint64_t bad = 0;
        int arc = store_audit_verify(v.t, &bad);
        if (arc == STORE_EVERIFY) {
            if (bad) problem(&v, "audit log: entry %llu does not chain to the one before",
                             (unsigned long long)bad);
            else problem(&v, "audit log: the chain head does not match the last entry");
        } else if (arc) {
            rc = arc;
            goto out;
        }
    }
    *problems = v.problems;
    rc = v.problems ? STORE_EVERIFY : STORE_OK;
out:
    store_abort(v.t);
    crdt_arena_free(v.arena);
    crdt_buf_free(&v.env);
    crdt_buf_free(&v.a);
    crdt_buf_free(&v.b);
    return rc;
}
