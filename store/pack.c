/*
 * pack.c — compressing envelopes and records before they are sealed (zstd
 * with a dictionary built from the schema), and the dictionary itself.
 *
 * One envelope (~390 B) or record (~400–700 B) at a time compresses poorly
 * on its own: most of it is msgpack structure, field names and enum values
 * that each value repeats once.  The dictionary's content holds those
 * (every enum value and entry member, then for each kind a sample envelope
 * with one op per field and the record it makes, built with the real
 * encoders), so zstd refers to them instead; its header holds entropy
 * tables computed from the same samples (ZDICT_finalizeDictionary), so a
 * small value reuses them instead of building its own: that is both
 * smaller and cheaper (~14,600 instructions per value instead of ~22,000
 * with the bare content; the fixed cost per value dominates at this size).
 *
 * Plaintext of a records value, and of a deltas value that holds one
 * envelope (blocks of several: log.c, tags 0x03 and 0x04):
 *   first byte >= 0x80   the msgpack value itself (an envelope or record is
 *                        a map): values written before compression existed,
 *                        and values that would not get smaller;
 *   0x01 frame           a zstd frame without its 4-byte magic number,
 *                        compressed with the dictionary in meta "zdict1";
 *   anything else        STORE_ECORRUPT.
 * Compression comes before sealing, never after: sealed bytes are random.
 *
 * Invariants
 *   - A store holding a packed value or a short dot is format 2 or more (meta
 *     "format"), and every format 2 store has its dictionary in meta
 *     (sealed, AD "meta" "zdict1"): store_init writes both, and store_open
 *     upgrades a format 1 store (dictionary and format in one write
 *     transaction, store_zdict_upgrade) before anything else runs, so older
 *     binaries refuse it rather than misread it.  The dictionary is then
 *     loaded from meta; values are always decompressed with the stored
 *     bytes, never a rebuilt dictionary, so a changed schema or builder
 *     cannot change what old values mean.  A different dictionary must
 *     take a new tag and a new meta key (0x02, "zdict2"; 0x03 and 0x04
 *     are the log's blocks).
 *   - store_zdict_build is deterministic: same schema, same bytes.
 *   - The dictionary objects are made once, at open, and only read after;
 *     the compression context is used only inside a write transaction (one
 *     at a time per environment, hence per process); decompression contexts
 *     come from a per-store pool (under zlock), so any thread may read.
 *   - Every failure to decompress (no dictionary, bad frame, wrong size) is
 *     STORE_ECORRUPT: sealed values authenticate, so it means damage or a bug.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <zdict.h>
#include <zstd.h>

#define PACK_TAG_ZDICT1 0x01
#define PACK_MIN 64              /* smaller values are stored as they are */
#define PACK_LEVEL (-2)          /* zstd's fast mode: ~1.5 µs per value here */
#define PACK_MAX_PLAIN (64u << 20) /* the record decoder's own limit */
#define DCTX_POOL 8

static const uint8_t zstd_magic[4] = {0x28, 0xb5, 0x2f, 0xfd}; /* ZSTD_MAGICNUMBER, LE */

/* ---- the schema dictionary ------------------------------------------------------ */

static int put_cstr(crdt_buf *out, const char *s) { return crdt_val_put_str(out, s, strlen(s)); }

/* A valid sample value of spec v (not ENTRY), canonical, appended to out. */
static int sample_scalar(const crdt_vspec *v, crdt_buf *out)
{
    char id[18];
    switch (v->vtype) {
    case CRDT_VT_INT: return crdt_val_put_int(out, v->min > 0 ? v->min : v->max < 0 ? v->max : 0);
    case CRDT_VT_BOOL: return crdt_val_put_bool(out, false);
    case CRDT_VT_DATE: return crdt_val_put_str(out, "2000-01-01", 10);
    case CRDT_VT_ENUM:
        return v->n_enum ? put_cstr(out, v->enum_values[0]) : crdt_val_put_str(out, "", 0);
    case CRDT_VT_IDNUM:
        memcpy(id, "11010119900101001", 17);
        id[17] = crdt_idnum_check_char(id);
        return crdt_val_put_str(out, id, 18);
    case CRDT_VT_PHONE: return crdt_val_put_str(out, "13800000000", 11);
    case CRDT_VT_REF: return crdt_val_put_str(out, "A", 1);
    default: return crdt_val_put_str(out, "", 0);
    }
}

/* A log entry with every member of f set to its sample value. */
static int sample_entry(const crdt_fspec *f, crdt_buf *out)
{
    const char *keys[CRDT_VAL_MAP_MAX];
    crdt_scalar sc[CRDT_VAL_MAP_MAX];
    size_t off[CRDT_VAL_MAP_MAX + 1];
    crdt_buf vals = {0};
    uint32_t n = f->n_members < CRDT_VAL_MAP_MAX ? f->n_members : CRDT_VAL_MAP_MAX;
    int rc = STORE_OK;
    for (uint32_t m = 0; m < n && !rc; m++) {
        off[m] = vals.n;
        rc = sample_scalar(&f->members[m].v, &vals);
    }
    off[n] = vals.n;
    for (uint32_t m = 0; m < n && !rc; m++) {
        crdt_val cv;
        crdt_blob b = {vals.p + off[m], (uint32_t)(off[m + 1] - off[m])};
        if ((rc = crdt_val_parse(b, &cv))) break;
        keys[m] = f->members[m].name;
        sc[m] = (crdt_scalar){.t = cv.t, .b = cv.b, .i = cv.i, .s = cv.s, .len = cv.len};
    }
    if (!rc) rc = crdt_val_put_map(out, keys, sc, n);
    crdt_buf_free(&vals);
    return rc;
}

/* Sizes of the samples in the dictionary content (for the entropy tables). */
typedef struct samples {
    size_t n[64];
    unsigned count;
} samples;

static void sample_end(samples *sm, const crdt_buf *out, size_t start)
{
    if (out->n > start && sm->count < 64) sm->n[sm->count++] = out->n - start;
}

/* Kind k's sample delta (one op per field, each with its sample value) as
 * an envelope with a zero signature, then the record it makes. */
static int sample_kind(const crdt_schema *s, const crdt_kspec *k, crdt_buf *out, samples *sm)
{
    crdt_op *ops = calloc(k->n_fields ? k->n_fields : 1, sizeof *ops);
    size_t *off = calloc(2 * (size_t)k->n_fields + 1, sizeof *off);
    crdt_buf vals = {0}, enc = {0}, env = {0};
    crdt_record *r = NULL;
    uint8_t sig[64] = {0};
    crdt_delta d;
    int rc = STORE_OK;
    if (!ops || !off) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < k->n_fields; i++) {
        const crdt_fspec *f = &k->fields[i];
        off[2 * i] = vals.n;
        if (f->keyed && (rc = sample_scalar(&f->key, &vals))) goto fail;
        off[2 * i + 1] = vals.n;
        rc = f->type == CRDT_F_COUNTER ? crdt_val_put_int(&vals, 1)
           : f->v.vtype == CRDT_VT_ENTRY ? sample_entry(f, &vals)
           : sample_scalar(&f->v, &vals);
        if (rc) goto fail;
    }
    off[2 * (size_t)k->n_fields] = vals.n;
    for (uint32_t i = 0; i < k->n_fields; i++) { /* vals is complete: no more moves */
        const crdt_fspec *f = &k->fields[i];
        ops[i].code = f->type == CRDT_F_SET ? CRDT_OP_ADD
                    : f->type == CRDT_F_LOG ? CRDT_OP_APP
                    : f->type == CRDT_F_COUNTER ? CRDT_OP_INC
                    : f->type == CRDT_F_STAGE ? CRDT_OP_RAISE : CRDT_OP_SET;
        ops[i].field = f->name;
        ops[i].field_len = (uint32_t)strlen(f->name);
        ops[i].key = (crdt_blob){vals.p + off[2 * i], (uint32_t)(off[2 * i + 1] - off[2 * i])};
        ops[i].val = (crdt_blob){vals.p + off[2 * i + 1],
                                 (uint32_t)(off[2 * i + 2] - off[2 * i + 1])};
    }
    memset(&d, 0, sizeof d);
    d.dev = 1;
    d.epoch = 1;
    d.seq = 1;
    d.kind = k->name;
    d.kind_len = (uint32_t)strlen(k->name);
    d.id = "A";
    d.id_len = 1;
    d.n_ops = k->n_fields;
    d.ops = ops;
    if (!k->n_fields) goto done; /* nothing to sample */
    if ((rc = crdt_delta_encode(&d, &enc)) || (rc = wire_envelope_encode(enc.p, enc.n, sig, &env)) ||
        (rc = crdt_buf_append(out, env.p, env.n)))
        goto fail;
    sample_end(sm, out, out->n - env.n);
    /* The record, if the sample passes the schema (it is built to). */
    if (crdt_schema_check_delta(s, &d, NULL) != CRDT_OK) goto done;
    if (!(r = crdt_record_new(d.kind, d.kind_len, d.id, d.id_len))) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    if (crdt_record_apply(r, s, &d) != CRDT_OK) goto done;
    crdt_buf_reset(&enc);
    if ((rc = crdt_record_encode(r, &enc)) || (rc = crdt_buf_append(out, enc.p, enc.n)))
        goto fail;
    sample_end(sm, out, out->n - enc.n);
done:
fail:
    crdt_record_free(r);
    crdt_buf_free(&vals);
    crdt_buf_free(&enc);
    crdt_buf_free(&env);
    free(ops);
    free(off);
    return rc;
}

int store_zdict_build(const crdt_schema *s, crdt_buf *out)
{
    crdt_buf content = {0};
    samples sm = {.count = 0};
    ZDICT_params_t zp;
    int rc = STORE_OK;
    crdt_buf_reset(out);
    /* Enum values and entry member names, as msgpack strings. */
    for (uint32_t k = 0; k < s->n_kinds && !rc; k++) {
        const crdt_kspec *ks = &s->kinds[k];
        for (uint32_t i = 0; i < ks->n_fields && !rc; i++) {
            const crdt_fspec *f = &ks->fields[i];
            for (uint32_t e = 0; e < f->v.n_enum && !rc; e++)
                rc = put_cstr(&content, f->v.enum_values[e]);
            for (uint32_t e = 0; f->keyed && e < f->key.n_enum && !rc; e++)
                rc = put_cstr(&content, f->key.enum_values[e]);
            for (uint32_t m = 0; m < f->n_members && !rc; m++) {
                rc = put_cstr(&content, f->members[m].name);
                for (uint32_t e = 0; e < f->members[m].v.n_enum && !rc; e++)
                    rc = put_cstr(&content, f->members[m].v.enum_values[e]);
            }
        }
    }
    if (rc) goto fail;
    sample_end(&sm, &content, 0);
    /* Then the samples: the most structure, nearest the data. */
    for (uint32_t k = 0; k < s->n_kinds && !rc; k++)
        rc = sample_kind(s, &s->kinds[k], &content, &sm);
    if (rc) goto fail;
    /* Entropy tables from the samples, then the content (a zstd dictionary
     * with a fixed id, never written into frames).  Should zstd refuse
     * (too little to learn from), the bare content is the dictionary. */
    memset(&zp, 0, sizeof zp);
    zp.compressionLevel = PACK_LEVEL;
    zp.dictID = 0x646f6f72; /* "door" */
    size_t cap = content.n + 16384;
    if (out->cap < cap) {
        uint8_t *p = realloc(out->p, cap);
        if (!p) {
            rc = CRDT_ENOMEM;
            goto fail;
        }
        out->p = p;
        out->cap = cap;
    }
    size_t fn = ZDICT_finalizeDictionary(out->p, cap, content.p, content.n, content.p, sm.n,
                                         sm.count, zp);
    if (ZDICT_isError(fn)) {
        crdt_buf_reset(out);
        rc = crdt_buf_append(out, content.p, content.n);
    } else {
        out->n = fn;
    }
fail:
    if (rc) crdt_buf_reset(out);
    crdt_buf_free(&content);
    return rc;
}

/* ---- the dictionary of this store ------------------------------------------------- */

/* Create the contexts from dictionary bytes (at open: no other thread yet).
 *
 * zstd 1.5.4 (Debian 12) dereferences NULL when the first allocation inside
 * ZSTD_createCDict fails (facebook/zstd#3847, fixed in 1.5.6), so the
 * dictionary objects are made here, once, when the store is opened, and
 * never on the commit path (tests/faults/alloc_failures.c fails every
 * allocation there in turn).  Out of memory while opening (here, or in
 * ZDICT_finalizeDictionary, which makes a CDict of its own, at store_init
 * and when a format 1 store is upgraded) can still crash with that zstd. */
static int zd_adopt(store *s, const uint8_t *dict, size_t n)
{
    int rc = CRDT_ENOMEM;
    if (!(s->zdict = malloc(n ? n : 1))) goto fail;
    memcpy(s->zdict, dict, n);
    s->zdict_n = n;
    if (!(s->zdd = ZSTD_createDDict(dict, n)) ||
        !(s->zcd = ZSTD_createCDict(dict, n, PACK_LEVEL)) || !(s->zcc = ZSTD_createCCtx()))
        goto fail;
    /* The dictionary's id stays out of the frames (a byte each). */
    if (ZSTD_isError(ZSTD_CCtx_refCDict(s->zcc, s->zcd)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(s->zcc, ZSTD_c_dictIDFlag, 0)))
        goto fail;
    return STORE_OK;
fail:
    store_zdict_free(s);
    return rc;
}

int store_zdict_load(store_txn *t)
{
    crdt_buf b = {0};
    int rc = store_get_sealed(t, DB_META, "zdict1", 6, &b);
    if (!rc) rc = zd_adopt(t->s, b.p, b.n);
    crdt_buf_free(&b);
    return rc;
}

int store_zdict_put(store_txn *t)
{
    crdt_buf b = {0};
    int rc = store_zdict_build(t->s->schema, &b);
    if (!rc) rc = store_put_sealed(t, DB_META, "zdict1", 6, b.p, b.n);
    crdt_buf_free(&b);
    return rc;
}

/* Only for a format 1 store (it has no dictionary yet): it becomes format 2. */
int store_zdict_upgrade(store *s)
{
    store_txn *t = NULL;
    uint8_t fmt[4];
    MDB_val v;
    int rc;
    for (int tries = 0;; tries++) {
        if ((rc = store_begin(s, STORE_RW, &t))) return rc;
        /* Another process may have upgraded it since our read. */
        rc = store_get(t, DB_META, "zdict1", 6, &v);
        if (rc == STORE_ENOTFOUND) {
            be32(fmt, 2); /* what it holds now; its first log block makes it 3 (log.c) */
            if (!(rc = store_zdict_put(t))) rc = store_put(t, DB_META, "format", 6, fmt, 4);
        }
        if (rc) {
            store_abort(t);
        } else {
            rc = store_commit(t);
        }
        t = NULL;
        if (rc != STORE_EMAPFULL || tries) break;
        if ((rc = store_grow(s))) break;
    }
    if (rc) return rc;
    if ((rc = store_begin(s, STORE_RDONLY, &t))) return rc;
    rc = store_zdict_load(t);
    store_abort(t);
    return rc;
}

void store_zdict_free(store *s)
{
    for (int i = 0; i < s->n_zdctx; i++) ZSTD_freeDCtx(s->zdctx[i]);
    s->n_zdctx = 0;
    ZSTD_freeCCtx(s->zcc);
    ZSTD_freeCDict(s->zcd);
    ZSTD_freeDDict(s->zdd);
    free(s->zdict);
    s->zcc = NULL;
    s->zcd = NULL;
    s->zdd = NULL;
    s->zdict = NULL;
    s->zdict_n = 0;
}

/* ---- packing and unpacking --------------------------------------------------------- */

/* Compress v (n bytes) with cc into dst (cap >= ZSTD_compressBound(n)):
 * *out is the tagged frame inside dst, or v itself if it would not shrink. */
static int zpack(ZSTD_CCtx *cc, uint8_t *dst, size_t cap, const uint8_t *v, size_t n,
                 const uint8_t **out, size_t *on)
{
    *out = v;
    *on = n;
    size_t c = ZSTD_compress2(cc, dst, cap, v, n);
    if (ZSTD_isError(c)) return CRDT_ENOMEM; /* zstd's only failure here: memory */
    if (c < sizeof zstd_magic || memcmp(dst, zstd_magic, sizeof zstd_magic)) return STORE_EINVAL;
    if (c - 3 >= n) return STORE_OK; /* would not get smaller: store it as it is */
    dst[3] = PACK_TAG_ZDICT1;        /* the tag replaces the magic number */
    *out = dst + 3;
    *on = c - 3;
    return STORE_OK;
}

/* Room for cap bytes in z (its contents may go). */
static int zbuf_reserve(crdt_buf *z, size_t cap)
{
    if (z->cap >= cap) return STORE_OK;
    uint8_t *p = realloc(z->p, cap);
    if (!p) return CRDT_ENOMEM;
    z->p = p;
    z->cap = cap;
    return STORE_OK;
}

static int pack(store_txn *t, const uint8_t *v, size_t n, const uint8_t **out, size_t *on)
{
    *out = v;
    *on = n;
    if (n < PACK_MIN || !t->s->zcc) return STORE_OK;
    size_t cap = ZSTD_compressBound(n);
    crdt_buf *z = &t->zbuf;
    if (zbuf_reserve(z, cap)) return CRDT_ENOMEM;
    return zpack(t->s->zcc, z->p, cap, v, n, out, on);
}

int store_put_packed(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn,
                     bool append)
{
    const uint8_t *p;
    size_t pn;
    if (!t->rw) return STORE_EREADONLY;
    /* Stored as it is when it does not shrink: it must read as msgpack. */
    if (!vn || ((const uint8_t *)v)[0] < 0x80) return STORE_EINVAL;
    int rc = pack(t, v, vn, &p, &pn);
    if (rc) return rc;
    return append ? store_put_sealed_append(t, db, k, kn, p, pn)
                  : store_put_sealed(t, db, k, kn, p, pn);
}

/* A decompression context from the pool (the dictionary loaded first). */
static int dctx_take(store_txn *t, ZSTD_DCtx **out)
{
    store *s = t->s;
    int rc = STORE_OK;
    *out = NULL;
    if (!s->zdd) return STORE_ECORRUPT; /* a packed value, but no dictionary */
    pthread_mutex_lock(&s->zlock);
    if (s->n_zdctx) *out = s->zdctx[--s->n_zdctx];
    else if (!(*out = ZSTD_createDCtx())) rc = CRDT_ENOMEM;
    pthread_mutex_unlock(&s->zlock);
    return rc;
}

static void dctx_give(store *s, ZSTD_DCtx *d)
{
    pthread_mutex_lock(&s->zlock);
    if (s->n_zdctx < DCTX_POOL) {
        s->zdctx[s->n_zdctx++] = d;
        d = NULL;
    }
    pthread_mutex_unlock(&s->zlock);
    ZSTD_freeDCtx(d);
}

int store_unzframe(store_txn *t, crdt_buf *plain)
{
    ZSTD_DCtx *dc = NULL;
    crdt_buf *z = &t->zbuf;
    int rc;
    if (plain->n < 2) return STORE_ECORRUPT;
    /* The frame again, with its magic number, in zbuf. */
    crdt_buf_reset(z);
    if ((rc = crdt_buf_append(z, zstd_magic, sizeof zstd_magic)) ||
        (rc = crdt_buf_append(z, plain->p + 1, plain->n - 1)))
        return rc;
    unsigned long long want = ZSTD_getFrameContentSize(z->p, z->n);
    if (want == ZSTD_CONTENTSIZE_UNKNOWN || want == ZSTD_CONTENTSIZE_ERROR || want == 0 ||
        want > PACK_MAX_PLAIN)
        return STORE_ECORRUPT;
    if ((rc = dctx_take(t, &dc))) return rc;
    if (plain->cap < want) {
        uint8_t *p = realloc(plain->p, (size_t)want);
        if (!p) {
            rc = CRDT_ENOMEM;
            goto out;
        }
        plain->p = p;
        plain->cap = (size_t)want;
    }
    size_t got = ZSTD_decompress_usingDDict(dc, plain->p, (size_t)want, z->p, z->n, t->s->zdd);
    if (ZSTD_isError(got) || got != want) {
        crdt_buf_reset(plain);
        rc = STORE_ECORRUPT;
        goto out;
    }
    plain->n = (size_t)got;
out:
    dctx_give(t->s, dc);
    return rc;
}

int store_unpack(store_txn *t, crdt_buf *plain)
{
    if (plain->n && plain->p[0] >= 0x80) return STORE_OK; /* msgpack as it is */
    if (plain->n < 2 || plain->p[0] != PACK_TAG_ZDICT1) return STORE_ECORRUPT;
    return store_unzframe(t, plain);
}

int store_zframe(store_txn *t, const uint8_t *v, size_t n, uint8_t tag, const uint8_t **out,
                 size_t *on)
{
    *out = NULL;
    *on = 0;
    if (!t->rw || !t->s->zcc) return STORE_EINVAL;
    size_t cap = ZSTD_compressBound(n);
    crdt_buf *z = &t->zbuf;
    if (zbuf_reserve(z, cap)) return CRDT_ENOMEM;
    size_t c = ZSTD_compress2(t->s->zcc, z->p, cap, v, n);
    if (ZSTD_isError(c)) return CRDT_ENOMEM; /* zstd's only failure here: memory */
    if (c < sizeof zstd_magic || memcmp(z->p, zstd_magic, sizeof zstd_magic)) return STORE_EINVAL;
    z->p[3] = tag; /* the tag replaces the magic number */
    *out = z->p + 3;
    *on = c - 3;
    return STORE_OK;
}

int store_get_packed(store_txn *t, int db, const void *k, size_t kn, crdt_buf *out)
{
    int rc = store_get_sealed(t, db, k, kn, out);
    if (!rc) rc = store_unpack(t, out);
    if (rc) crdt_buf_reset(out);
    return rc;
}
