/*
 * val.c — field values as canonical msgpack bytes: a parser that accepts
 * only the canonical form, canonical encoders, and the byte order on blobs.
 *
 * A value is one of: nil, bool, int (int64 range), str, or a flat map of
 * str -> (bool | int | str) with at most CRDT_VAL_MAP_MAX entries (a log
 * entry).  Canonical form, which the encoders produce and the parser
 * demands:
 *   - ints in their shortest form: 0..127 positive fixint, then uint8,
 *     uint16, uint32, uint64 for larger non-negative values; -32..-1
 *     negative fixint, then int8, int16, int32, int64 for smaller ones.  A
 *     non-negative value is never written with a signed type.
 *   - str with the shortest header: fixstr (< 32), str8, str16, str32.
 *   - map with fixmap (< 16 entries) or map16; keys unique and sorted
 *     bytewise (memcmp over the common prefix, then the shorter first).
 * This is exactly what msgpack-c's packer emits for the same scalars, so the
 * delta codec (which re-packs with msgpack-c) and this file agree; with keys
 * sorted, equal values have equal bytes.
 *
 * Invariants: the parser reads only p[0..n), allocates nothing, and every
 * pointer in a crdt_val points into the input; the encoders leave *out
 * unchanged on failure.
 */
#include "crdt.h"

#include <string.h>

/* ---- reading -------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t n, off;
} rd;

static int rd_bytes(rd *r, size_t k, const uint8_t **out)
{
    if (r->n - r->off < k) return CRDT_ETRUNC;
    *out = r->p + r->off;
    r->off += k;
    return CRDT_OK;
}


/* Read a str body of length len; the header is already consumed. */
static int rd_str_body(rd *r, uint64_t len, const char **s, uint32_t *slen)
{
    const uint8_t *q;
    int rc;
    if (len > UINT32_MAX) return CRDT_ETRUNC;
    if ((rc = rd_bytes(r, (size_t)len, &q))) return rc;
    *s = (const char *)q;
    *slen = (uint32_t)len;
    return CRDT_OK;
}

/*
 * Read one value.  Scalars land in *sc; a map header (allowed only when
 * map_count != NULL) stores its entry count in *map_count and returns with
 * sc->t = CRDT_V_MAP, leaving the entries to the caller.
 */
static int rd_value(rd *r, crdt_scalar *sc, bool *is_nil, uint32_t *map_count)
{
    const uint8_t *q;
    uint8_t b;
    int rc;
    memset(sc, 0, sizeof(*sc));
    *is_nil = false;
    if ((rc = rd_bytes(r, 1, &q))) return rc;
    b = q[0];
    if (b <= 0x7f) { sc->t = CRDT_V_INT; sc->i = b; return CRDT_OK; }
    if (b >= 0xe0) { sc->t = CRDT_V_INT; sc->i = (int8_t)b; return CRDT_OK; }
    if (b >= 0xa0 && b <= 0xbf) {
        sc->t = CRDT_V_STR;
        return rd_str_body(r, b & 0x1f, &sc->s, &sc->len);
    }
    if (b >= 0x80 && b <= 0x8f) {
        if (!map_count) return CRDT_ETYPE;
        sc->t = CRDT_V_MAP;
        *map_count = b & 0x0f;
        return CRDT_OK;
    }
    switch (b) {
    case 0xc0: *is_nil = true; sc->t = CRDT_V_NIL; return CRDT_OK;
    case 0xc2: sc->t = CRDT_V_BOOL; sc->b = false; return CRDT_OK;
    case 0xc3: sc->t = CRDT_V_BOOL; sc->b = true; return CRDT_OK;
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        static const uint64_t lo[4] = {0x80, 0x100, 0x10000, UINT64_C(0x100000000)};
        size_t k = (size_t)1 << (b - 0xcc);
        uint64_t v;
        if ((rc = rd_bytes(r, k, &q))) return rc;
        v = crdt_be_read(q, k);
        if (v > (uint64_t)INT64_MAX) return CRDT_ETYPE;
        if (v < lo[b - 0xcc]) return CRDT_ENONCANON;
        sc->t = CRDT_V_INT;
        sc->i = (int64_t)v;
        return CRDT_OK;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        /* Canonical only below the range of the next smaller form. */
        static const int64_t hi[4] = {-33, -129, -32769, -(INT64_C(2147483648)) - 1};
        size_t k = (size_t)1 << (b - 0xd0);
        uint64_t u;
        int64_t v;
        if ((rc = rd_bytes(r, k, &q))) return rc;
        u = crdt_be_read(q, k);
        if (k == 1) v = (int8_t)u;
        else if (k == 2) v = (int16_t)u;
        else if (k == 4) v = (int32_t)u;
        else v = (int64_t)u;
        if (v > hi[b - 0xd0]) return CRDT_ENONCANON;
        sc->t = CRDT_V_INT;
        sc->i = v;
        return CRDT_OK;
    }
    case 0xd9: case 0xda: case 0xdb: {
        static const uint64_t lo[3] = {32, 0x100, 0x10000};
        size_t k = (size_t)1 << (b - 0xd9);
        uint64_t len;
        if ((rc = rd_bytes(r, k, &q))) return rc;
        len = crdt_be_read(q, k);
        if (len < lo[b - 0xd9]) return CRDT_ENONCANON;
        sc->t = CRDT_V_STR;
        return rd_str_body(r, len, &sc->s, &sc->len);
    }
    case 0xde: case 0xdf: {
        size_t k = b == 0xde ? 2 : 4;
        uint64_t cnt;
        if (!map_count) return CRDT_ETYPE;
        if ((rc = rd_bytes(r, k, &q))) return rc;
        cnt = crdt_be_read(q, k);
        if (cnt > CRDT_VAL_MAP_MAX) return CRDT_ECOUNT;
        if (b == 0xdf || cnt < 16) return CRDT_ENONCANON;
        sc->t = CRDT_V_MAP;
        *map_count = (uint32_t)cnt;
        return CRDT_OK;
    }
    default:
        /* 0x90-0x9f, 0xdc, 0xdd arrays; 0xc4-0xc6 bin; 0xc7-0xc9, 0xd4-0xd8
         * ext; 0xca, 0xcb floats; 0xc1 reserved: types values never take. */
        return CRDT_ETYPE;
    }
}

static int key_cmp(const char *a, uint32_t an, const char *b, uint32_t bn)
{
    crdt_blob x = {(const uint8_t *)a, an}, y = {(const uint8_t *)b, bn};
    return crdt_blob_cmp(x, y);
}

int crdt_val_parse(crdt_blob b, crdt_val *out)
{
    rd r = {b.p, b.n, 0};
    crdt_scalar sc;
    uint32_t cnt = 0;
    bool nil;
    int rc;
    if (!out) return CRDT_EINVAL;
    memset(out, 0, sizeof(*out));
    if (!b.p && b.n) return CRDT_EINVAL;
    if ((rc = rd_value(&r, &sc, &nil, &cnt))) goto fail;
    out->t = sc.t;
    if (sc.t == CRDT_V_MAP) {
        out->nkv = cnt;
        for (uint32_t i = 0; i < cnt; i++) {
            crdt_scalar k;
            if ((rc = rd_value(&r, &k, &nil, NULL))) goto fail;
            rc = CRDT_ETYPE;
            if (k.t != CRDT_V_STR) goto fail;
            rc = CRDT_ENONCANON; /* unsorted or duplicate */
            if (i > 0 && key_cmp(out->kv[i - 1].k, out->kv[i - 1].klen, k.s, k.len) >= 0)
                goto fail;
            out->kv[i].k = k.s;
            out->kv[i].klen = k.len;
            if ((rc = rd_value(&r, &out->kv[i].v, &nil, NULL))) goto fail;
            rc = CRDT_ETYPE;
            if (nil) goto fail; /* entry members are bool, int or str */
        }
    } else {
        out->b = sc.b;
        out->i = sc.i;
        out->s = sc.s;
        out->len = sc.len;
    }
    rc = CRDT_ENONCANON;
    if (r.off != r.n) goto fail; /* trailing bytes */
    return CRDT_OK;
fail:
    memset(out, 0, sizeof(*out));
    return rc;
}

/* ---- writing -------------------------------------------------------------- */

static int put_be(crdt_buf *out, uint8_t tag, uint64_t v, size_t k)
{
    uint8_t t[9];
    t[0] = tag;
    for (size_t i = 0; i < k; i++) t[1 + i] = (uint8_t)(v >> (8 * (k - 1 - i)));
    return crdt_buf_append(out, t, 1 + k);
}

int crdt_val_put_nil(crdt_buf *out)
{
    static const uint8_t b = 0xc0;
    if (!out) return CRDT_EINVAL;
    return crdt_buf_append(out, &b, 1);
}

int crdt_val_put_bool(crdt_buf *out, bool v)
{
    uint8_t b = v ? 0xc3 : 0xc2;
    if (!out) return CRDT_EINVAL;
    return crdt_buf_append(out, &b, 1);
}

int crdt_val_put_int(crdt_buf *out, int64_t v)
{
    if (!out) return CRDT_EINVAL;
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 0x80) return put_be(out, (uint8_t)u, 0, 0);
        if (u < 0x100) return put_be(out, 0xcc, u, 1);
        if (u < 0x10000) return put_be(out, 0xcd, u, 2);
        if (u < UINT64_C(0x100000000)) return put_be(out, 0xce, u, 4);
        return put_be(out, 0xcf, u, 8);
    }
    if (v >= -32) return put_be(out, (uint8_t)(int8_t)v, 0, 0);
    if (v >= -128) return put_be(out, 0xd0, (uint64_t)v & 0xff, 1);
    if (v >= -32768) return put_be(out, 0xd1, (uint64_t)v & 0xffff, 2);
    if (v >= -INT64_C(2147483648)) return put_be(out, 0xd2, (uint64_t)v & 0xffffffffu, 4);
    return put_be(out, 0xd3, (uint64_t)v, 8);
}

int crdt_val_put_str(crdt_buf *out, const char *s, size_t len)
{
    size_t start;
    int rc;
    if (!out || (!s && len)) return CRDT_EINVAL;
    if ((uint64_t)len > UINT32_MAX) return CRDT_EINVAL;
    start = out->n;
    if (len < 32) rc = put_be(out, (uint8_t)(0xa0 | len), 0, 0);
    else if (len < 0x100) rc = put_be(out, 0xd9, len, 1);
    else if (len < 0x10000) rc = put_be(out, 0xda, len, 2);
    else rc = put_be(out, 0xdb, len, 4);
    if (!rc) rc = crdt_buf_append(out, s, len);
    if (rc) out->n = start;
    return rc;
}

static int put_scalar(crdt_buf *out, const crdt_scalar *v)
{
    switch (v->t) {
    case CRDT_V_BOOL: return crdt_val_put_bool(out, v->b);
    case CRDT_V_INT: return crdt_val_put_int(out, v->i);
    case CRDT_V_STR: return crdt_val_put_str(out, v->s, v->len);
    default: return CRDT_EINVAL;
    }
}

int crdt_val_put_map(crdt_buf *out, const char *const *keys,
                     const crdt_scalar *vals, uint32_t n)
{
    uint32_t ord[CRDT_VAL_MAP_MAX];
    size_t klen[CRDT_VAL_MAP_MAX];
    size_t start;
    int rc;
    if (!out || (n && (!keys || !vals))) return CRDT_EINVAL;
    if (n > CRDT_VAL_MAP_MAX) return CRDT_ECOUNT;
    for (uint32_t i = 0; i < n; i++) {
        if (!keys[i]) return CRDT_EINVAL;
        if (vals[i].t != CRDT_V_BOOL && vals[i].t != CRDT_V_INT && vals[i].t != CRDT_V_STR)
            return CRDT_EINVAL;
        if (vals[i].t == CRDT_V_STR && !vals[i].s && vals[i].len) return CRDT_EINVAL;
        klen[i] = strlen(keys[i]);
    }
    /* Insertion sort of indices by key bytes (n <= 16). */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = i;
        while (j > 0) {
            uint32_t a = ord[j - 1];
            crdt_blob x = {(const uint8_t *)keys[a], (uint32_t)klen[a]};
            crdt_blob y = {(const uint8_t *)keys[i], (uint32_t)klen[i]};
            int c = crdt_blob_cmp(x, y);
            if (c == 0) return CRDT_EDUPKEY;
            if (c < 0) break;
            ord[j] = a;
            j--;
        }
        ord[j] = i;
    }
    /* A duplicate may sit further left than where the insertion stopped. */
    for (uint32_t i = 1; i < n; i++) {
        crdt_blob x = {(const uint8_t *)keys[ord[i - 1]], (uint32_t)klen[ord[i - 1]]};
        crdt_blob y = {(const uint8_t *)keys[ord[i]], (uint32_t)klen[ord[i]]};
        if (crdt_blob_cmp(x, y) == 0) return CRDT_EDUPKEY;
    }
    start = out->n;
    rc = n < 16 ? put_be(out, (uint8_t)(0x80 | n), 0, 0) : put_be(out, 0xde, n, 2);
    for (uint32_t i = 0; !rc && i < n; i++) {
        rc = crdt_val_put_str(out, keys[ord[i]], klen[ord[i]]);
        if (!rc) rc = put_scalar(out, &vals[ord[i]]);
    }
    if (rc) out->n = start;
    return rc;
}

/* ---- order ---------------------------------------------------------------- */

int crdt_blob_cmp(crdt_blob a, crdt_blob b)
{
    uint32_t m = a.n < b.n ? a.n : b.n;
    if (m) {
        int c = memcmp(a.p, b.p, m);
        if (c) return c < 0 ? -1 : 1;
    }
    if (a.n != b.n) return a.n < b.n ? -1 : 1;
    return 0;
}
