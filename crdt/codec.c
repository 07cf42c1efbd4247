/*
 * codec.c — canonical encoding and untrusted decoding of deltas.
 *
 * Wire form of a delta (docs/PROTOCOL.md "Deltas"): a msgpack map with the
 * eight keys below in bytewise order, ints in shortest form:
 *   {"d": dev, "e": epoch, "h": hlc, "i": record id, "k": kind,
 *    "o": [op, ...], "p": bin32 previous-delta hash, "s": seq}
 *   op = {"f": field, "k": field key, "o": op name, "v": value,
 *         "x": [[dev, seq], ...]}          absent members are omitted
 *
 * crdt_delta_decode first tries a single strict pass (crdt_delta_decode_fast,
 * "fast path" below), which takes only the encoder's exact bytes within the
 * limits; when it gives up, the reference decoder (crdt_delta_decode_ref)
 * runs from the start, and its verdict and error code are the answer.  The
 * reference's decoding order, each step guarding the next:
 *   1. crdt_mp_check: bounded walk; msgpack-c never sees unchecked bytes.
 *   2. msgpack-c unpacks (its allocations are now bounded by the input).
 *   3. Types and ranges of every key, copied into the caller's arena.
 *   4. delta_check_struct: the rules shared with the encoder (op shapes,
 *      uniqueness of field instances, sorted observed dots, record id).
 *   5. Canonical check: encoding the decoded delta must give the input bytes
 *      back, so each delta value has exactly one signed representation.
 *
 * Invariants: nothing in a decoded crdt_delta points outside the arena; the
 * encoder never produces bytes the decoder would reject (the tests check
 * this on random deltas).
 */
#include "crdt.h"

#include <msgpack.h>
#include <string.h>


/* ---- names and small checks ---------------------------------------------- */

static const char *const op_names[] = {
    NULL, "set", "add", "rem", "app", "inc", "raise", "del", "undel"
};

const char *crdt_opcode_name(int op)
{
    if (op < CRDT_OP_SET || op > CRDT_OP_UNDEL) return NULL;
    return op_names[op];
}

static int opcode_from(const char *s, size_t n)
{
    for (int i = CRDT_OP_SET; i <= CRDT_OP_UNDEL; i++)
        if (strlen(op_names[i]) == n && memcmp(op_names[i], s, n) == 0) return i;
    return 0;
}

bool crdt_recid_valid(const char *s, size_t n)
{
    if (!s || n == 0 || n > CRDT_RECID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* Kind and field names: 1..31 bytes of [a-z0-9_]. */
bool crdt_name_valid(const char *s, size_t n)
{
    if (!s || n == 0 || n >= CRDT_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* ---- structural rules shared by encoder and decoder ------------------------ */

static bool str_eq(const char *a, uint32_t an, const char *b, uint32_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

static bool blob_eq(crdt_blob a, crdt_blob b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* Does the op change an element of a set (so its identity includes v)? */
static bool op_is_elem(int code) { return code == CRDT_OP_ADD || code == CRDT_OP_REM; }

static int check_op_shape(const crdt_op *o)
{
    bool record_op = o->code == CRDT_OP_DEL || o->code == CRDT_OP_UNDEL;
    if (!crdt_opcode_name(o->code)) return CRDT_EOPCODE;
    if (record_op) {
        if (o->field || o->field_len || o->key.n || o->val.n) return CRDT_EUNKNOWNKEY;
        if (o->n_obs) return CRDT_EOBS;
        return CRDT_OK;
    }
    if (!o->field || !crdt_name_valid(o->field, o->field_len)) return o->field ? CRDT_EFIELD
                                                                       : CRDT_EMISSING;
    if (o->val.n == 0) return CRDT_EMISSING;
    if (o->n_obs && o->code != CRDT_OP_SET && o->code != CRDT_OP_REM) return CRDT_EOBS;
    for (uint32_t i = 0; i < o->n_obs; i++) {
        if (o->obs[i].seq == 0) return CRDT_EOBS;
        if (i && crdt_dot_cmp(o->obs[i - 1], o->obs[i]) >= 0) return CRDT_EOBS;
    }
    return CRDT_OK;
}

static int delta_check_struct(const crdt_delta *d, const crdt_limits *lim,
                              int *err_op)
{
    *err_op = -1;
    if (d->epoch == 0 || d->seq == 0) return CRDT_ERANGE;
    if (!crdt_name_valid(d->kind, d->kind_len)) return CRDT_EKIND;
    if (!crdt_recid_valid(d->id, d->id_len)) return CRDT_ERECID;
    if (d->n_ops == 0) return CRDT_ENOOPS;
    if (d->n_ops > lim->max_ops) return CRDT_ETOOMANYOPS;
    if (d->seq == 1) {
        for (int i = 0; i < CRDT_HASH_BYTES; i++)
            if (d->prev[i]) return CRDT_ERANGE;
    }
    for (uint32_t i = 0; i < d->n_ops; i++) {
        const crdt_op *o = &d->ops[i];
        int rc = check_op_shape(o);
        if (rc) {
            *err_op = (int)i;
            return rc;
        }
        /* One op per field instance (and per element for set ops); at most
         * one record-level op.  n <= 64, so the quadratic scan is cheap. */
        for (uint32_t j = 0; j < i; j++) {
            const crdt_op *q = &d->ops[j];
            bool rec_i = o->field == NULL, rec_j = q->field == NULL;
            if (rec_i || rec_j) {
                if (rec_i && rec_j) goto dup;
                continue;
            }
            if (!str_eq(o->field, o->field_len, q->field, q->field_len)) continue;
            if (!blob_eq(o->key, q->key)) continue;
            if (op_is_elem(o->code) && op_is_elem(q->code) && !blob_eq(o->val, q->val))
                continue;
        dup:
            *err_op = (int)i;
            return CRDT_EDUPOP;
        }
    }
    return CRDT_OK;
}

/* ---- encoder --------------------------------------------------------------- */

static int buf_write(void *data, const char *p, size_t n)
{
    return crdt_buf_append(data, p, n) == CRDT_OK ? 0 : -1;
}

static int pack_key(msgpack_packer *pk, const char *k)
{
    return msgpack_pack_str_with_body(pk, k, strlen(k));
}

static int encode_op(msgpack_packer *pk, crdt_buf *out, const crdt_op *o)
{
    uint32_t n = 1 + (o->field != NULL) + (o->key.n > 0) + (o->val.n > 0) +
                 (o->n_obs > 0);
    if (msgpack_pack_map(pk, n)) return CRDT_ENOMEM;
    if (o->field && (pack_key(pk, "f") ||
                     msgpack_pack_str_with_body(pk, o->field, o->field_len)))
        return CRDT_ENOMEM;
    if (o->key.n && (pack_key(pk, "k") || crdt_buf_append(out, o->key.p, o->key.n)))
        return CRDT_ENOMEM;
    if (pack_key(pk, "o") || pack_key(pk, crdt_opcode_name(o->code))) return CRDT_ENOMEM;
    if (o->val.n && (pack_key(pk, "v") || crdt_buf_append(out, o->val.p, o->val.n)))
        return CRDT_ENOMEM;
    if (o->n_obs) {
        if (pack_key(pk, "x") || msgpack_pack_array(pk, o->n_obs)) return CRDT_ENOMEM;
        for (uint32_t i = 0; i < o->n_obs; i++)
            if (msgpack_pack_array(pk, 2) || msgpack_pack_uint32(pk, o->obs[i].dev) ||
                msgpack_pack_uint64(pk, o->obs[i].seq))
                return CRDT_ENOMEM;
    }
    return CRDT_OK;
}

static int encode_unchecked(const crdt_delta *d, crdt_buf *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    if (msgpack_pack_map(&pk, 8) ||
        pack_key(&pk, "d") || msgpack_pack_uint32(&pk, d->dev) ||
        pack_key(&pk, "e") || msgpack_pack_uint32(&pk, d->epoch) ||
        pack_key(&pk, "h") || msgpack_pack_uint64(&pk, d->hlc) ||
        pack_key(&pk, "i") || msgpack_pack_str_with_body(&pk, d->id, d->id_len) ||
        pack_key(&pk, "k") || msgpack_pack_str_with_body(&pk, d->kind, d->kind_len) ||
        pack_key(&pk, "o") || msgpack_pack_array(&pk, d->n_ops))
        return CRDT_ENOMEM;
    for (uint32_t i = 0; i < d->n_ops; i++) {
        int rc = encode_op(&pk, out, &d->ops[i]);
        if (rc) return rc;
    }
    if (pack_key(&pk, "p") || msgpack_pack_bin_with_body(&pk, d->prev, CRDT_HASH_BYTES) ||
        pack_key(&pk, "s") || msgpack_pack_uint64(&pk, d->seq))
        return CRDT_ENOMEM;
    return CRDT_OK;
}

int crdt_delta_encode(const crdt_delta *d, crdt_buf *out)
{
    int err_op, rc;
    size_t start;
    if (!d || !out) return CRDT_EINVAL;
    start = out->n;
    rc = delta_check_struct(d, &crdt_limits_default, &err_op);
    if (rc) return rc;
    /* Values and keys must themselves be canonical values. */
    for (uint32_t i = 0; i < d->n_ops; i++) {
        crdt_val v;
        if (d->ops[i].val.n && (rc = crdt_val_parse(d->ops[i].val, &v))) return rc;
        if (d->ops[i].key.n && (rc = crdt_val_parse(d->ops[i].key, &v))) return rc;
    }
    rc = encode_unchecked(d, out);
    if (rc) out->n = start;
    return rc;
}

/* ---- decoder --------------------------------------------------------------- */

typedef struct dec {
    crdt_arena *a;
    crdt_buf scratch;   /* for re-packing values into canonical bytes */
} dec;

static const char *arena_str(crdt_arena *a, const char *s, size_t n)
{
    char *p = crdt_arena_alloc(a, n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static bool get_u64(const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *v = o->via.u64;
    return true;
}

/* Re-pack a msgpack object as canonical value bytes into the arena. */
static int pack_value(dec *dc, const msgpack_object *o, crdt_blob *out)
{
    msgpack_packer pk;
    crdt_val v;
    int rc;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
    case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_MAP:
        break;
    default:
        return CRDT_ETYPE;
    }
    crdt_buf_reset(&dc->scratch);
    msgpack_packer_init(&pk, &dc->scratch, buf_write);
    if (msgpack_pack_object(&pk, *o)) return CRDT_ENOMEM;
    uint8_t *p = crdt_arena_alloc(dc->a, dc->scratch.n);
    if (!p) return CRDT_ENOMEM;
    memcpy(p, dc->scratch.p, dc->scratch.n);
    out->p = p;
    out->n = (uint32_t)dc->scratch.n;
    rc = crdt_val_parse(*out, &v);
    return rc;
}

static int decode_obs(dec *dc, const msgpack_object *o, crdt_op *op)
{
    if (o->type != MSGPACK_OBJECT_ARRAY) return CRDT_ETYPE;
    uint32_t n = o->via.array.size;
    crdt_dot *dots = crdt_arena_alloc(dc->a, (size_t)(n ? n : 1) * sizeof(*dots));
    if (!dots) return CRDT_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        uint64_t dev, seq;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2) return CRDT_ETYPE;
        if (!get_u64(&e->via.array.ptr[0], &dev) || !get_u64(&e->via.array.ptr[1], &seq))
            return CRDT_ETYPE;
        if (dev > UINT32_MAX || seq == 0) return CRDT_EOBS;
        dots[i].dev = (uint32_t)dev;
        dots[i].seq = seq;
    }
    op->obs = dots;
    op->n_obs = n;
    return CRDT_OK;
}

static int decode_op(dec *dc, const msgpack_object *o, crdt_op *op)
{
    bool have_o = false;
    int rc;
    memset(op, 0, sizeof(*op));
    if (o->type != MSGPACK_OBJECT_MAP) return CRDT_ETYPE;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        const msgpack_object *v = &kv->val;
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 1)
            return CRDT_EUNKNOWNKEY;
        switch (kv->key.via.str.ptr[0]) {
        case 'f':
            if (v->type != MSGPACK_OBJECT_STR) return CRDT_ETYPE;
            if (!crdt_name_valid(v->via.str.ptr, v->via.str.size)) return CRDT_EFIELD;
            op->field = arena_str(dc->a, v->via.str.ptr, v->via.str.size);
            if (!op->field) return CRDT_ENOMEM;
            op->field_len = v->via.str.size;
            break;
        case 'k':
            if (v->type != MSGPACK_OBJECT_STR && v->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
                v->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
                return CRDT_EKEY;
            if ((rc = pack_value(dc, v, &op->key))) return rc;
            break;
        case 'o':
            if (v->type != MSGPACK_OBJECT_STR) return CRDT_ETYPE;
            op->code = (uint8_t)opcode_from(v->via.str.ptr, v->via.str.size);
            if (!op->code) return CRDT_EOPCODE;
            have_o = true;
            break;
        case 'v':
            if (v->type == MSGPACK_OBJECT_NIL) return CRDT_EVALUE; /* "absent" is omission */
            if ((rc = pack_value(dc, v, &op->val))) return rc;
            break;
        case 'x':
            if ((rc = decode_obs(dc, v, op))) return rc;
            break;
        default:
            return CRDT_EUNKNOWNKEY;
        }
    }
    return have_o ? CRDT_OK : CRDT_EMISSING;
}

static int decode_obj(dec *dc, const msgpack_object *root, const crdt_limits *lim,
                      crdt_delta *d, int *err_op)
{
    enum { K_D = 1, K_E = 2, K_H = 4, K_I = 8, K_K = 16, K_O = 32, K_P = 64, K_S = 128 };
    unsigned seen = 0;
    uint64_t u;
    int rc;
    if (root->type != MSGPACK_OBJECT_MAP) return CRDT_ETYPE;
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        const msgpack_object *v = &kv->val;
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 1)
            return CRDT_EUNKNOWNKEY;
        switch (kv->key.via.str.ptr[0]) {
        case 'd':
            if (!get_u64(v, &u)) return CRDT_ETYPE;
            if (u > UINT32_MAX) return CRDT_ERANGE;
            d->dev = (uint32_t)u;
            seen |= K_D;
            break;
        case 'e':
            if (!get_u64(v, &u)) return CRDT_ETYPE;
            if (u == 0 || u > UINT32_MAX) return CRDT_ERANGE;
            d->epoch = (uint32_t)u;
            seen |= K_E;
            break;
        case 'h':
            if (!get_u64(v, &u)) return CRDT_ETYPE;
            d->hlc = u;
            seen |= K_H;
            break;
        case 'i':
            if (v->type != MSGPACK_OBJECT_STR) return CRDT_ETYPE;
            if (!crdt_recid_valid(v->via.str.ptr, v->via.str.size)) return CRDT_ERECID;
            d->id = arena_str(dc->a, v->via.str.ptr, v->via.str.size);
            if (!d->id) return CRDT_ENOMEM;
            d->id_len = v->via.str.size;
            seen |= K_I;
            break;
        case 'k':
            if (v->type != MSGPACK_OBJECT_STR) return CRDT_ETYPE;
            if (!crdt_name_valid(v->via.str.ptr, v->via.str.size)) return CRDT_EKIND;
            d->kind = arena_str(dc->a, v->via.str.ptr, v->via.str.size);
            if (!d->kind) return CRDT_ENOMEM;
            d->kind_len = v->via.str.size;
            seen |= K_K;
            break;
        case 'o': {
            if (v->type != MSGPACK_OBJECT_ARRAY) return CRDT_ETYPE;
            uint32_t n = v->via.array.size;
            if (n == 0) return CRDT_ENOOPS;
            if (n > lim->max_ops) return CRDT_ETOOMANYOPS;
            crdt_op *ops = crdt_arena_alloc(dc->a, (size_t)n * sizeof(*ops));
            if (!ops) return CRDT_ENOMEM;
            for (uint32_t j = 0; j < n; j++) {
                rc = decode_op(dc, &v->via.array.ptr[j], &ops[j]);
                if (rc) {
                    *err_op = (int)j;
                    return rc;
                }
            }
            d->ops = ops;
            d->n_ops = n;
            seen |= K_O;
            break;
        }
        case 'p':
            if (v->type != MSGPACK_OBJECT_BIN) return CRDT_ETYPE;
            if (v->via.bin.size != CRDT_HASH_BYTES) return CRDT_ERANGE;
            memcpy(d->prev, v->via.bin.ptr, CRDT_HASH_BYTES);
            seen |= K_P;
            break;
        case 's':
            if (!get_u64(v, &u)) return CRDT_ETYPE;
            if (u == 0) return CRDT_ERANGE;
            d->seq = u;
            seen |= K_S;
            break;
        default:
            return CRDT_EUNKNOWNKEY;
        }
    }
    if (seen != 0xff) return CRDT_EMISSING;
    return CRDT_OK;
}

/* ---- fast path: one strict pass over canonical bytes -------------------------
 *
 * Almost every delta a server sees is valid.  fast_decode reads such a delta
 * in one pass over its bytes, accepting only the exact bytes the encoder
 * writes (the keys in their one order, every header in msgpack-c's shortest
 * form, values that crdt_val_parse accepts) and every limit crdt_mp_check
 * enforces, and fills *out as the reference decoder below would.  Anything
 * else (an error, or a form it does not know) makes it give up, and the
 * reference decoder runs from the start and gives the precise error: so the
 * fast path changes speed, never a verdict or an error code.
 *
 * Invariant (tested on random and mutated deltas, tests/crdt/test_codec.c,
 * and by tests/fuzz/fuzz_delta.c on every input): fast_decode succeeds only
 * on bytes the reference decoder accepts, with an identical result, and it
 * succeeds on every delta crdt_delta_encode writes under the default limits.
 */
typedef struct fr {
    const uint8_t *p;
    size_t n, off;
    const crdt_limits *lim;
} fr;

static bool fr_take(fr *r, size_t k, const uint8_t **q)
{
    if (r->n - r->off < k) return false;
    *q = r->p + r->off;
    r->off += k;
    return true;
}

/* An unsigned integer in its shortest form. */
static bool fr_uint(fr *r, uint64_t *v)
{
    static const uint64_t lo[4] = {0x80, 0x100, 0x10000, UINT64_C(0x100000000)};
    const uint8_t *q;
    if (!fr_take(r, 1, &q)) return false;
    if (q[0] <= 0x7f) {
        *v = q[0];
        return true;
    }
    if (q[0] < 0xcc || q[0] > 0xcf) return false;
    size_t k = (size_t)1 << (q[0] - 0xcc);
    unsigned t = q[0] - 0xcc;
    if (!fr_take(r, k, &q)) return false;
    *v = crdt_be_read(q, k);
    return *v >= lo[t];
}

/* A str header in its shortest form and its body, within lim->max_str. */
static bool fr_str(fr *r, const char **s, uint32_t *len)
{
    static const uint64_t lo[3] = {32, 0x100, 0x10000};
    const uint8_t *q;
    uint64_t l;
    if (!fr_take(r, 1, &q)) return false;
    if (q[0] >= 0xa0 && q[0] <= 0xbf) {
        l = q[0] & 0x1f;
    } else if (q[0] >= 0xd9 && q[0] <= 0xdb) {
        size_t k = (size_t)1 << (q[0] - 0xd9);
        unsigned t = q[0] - 0xd9;
        if (!fr_take(r, k, &q)) return false;
        l = crdt_be_read(q, k);
        if (l < lo[t]) return false;
    } else {
        return false;
    }
    if (l > r->lim->max_str || !fr_take(r, (size_t)l, &q)) return false;
    *s = (const char *)q;
    *len = (uint32_t)l;
    return true;
}

/* An array header in its shortest form, within lim->max_entries. */
static bool fr_array(fr *r, uint32_t *cnt)
{
    const uint8_t *q;
    if (!fr_take(r, 1, &q)) return false;
    if (q[0] >= 0x90 && q[0] <= 0x9f) {
        *cnt = q[0] & 0x0f;
    } else if (q[0] == 0xdc || q[0] == 0xdd) {
        size_t k = q[0] == 0xdc ? 2 : 4;
        if (!fr_take(r, k, &q)) return false;
        uint64_t c = crdt_be_read(q, k);
        if (c < (k == 2 ? 16u : 0x10000u)) return false;
        *cnt = (uint32_t)c;
    } else {
        return false;
    }
    return *cnt <= r->lim->max_entries;
}

/* The one-letter key c, as the encoder writes it. */
static bool fr_key(fr *r, char c)
{
    const uint8_t *q;
    return fr_take(r, 2, &q) && q[0] == 0xa1 && q[1] == (uint8_t)c;
}

/* An op member the encoder omits when empty: true (and consumed) when the
 * one-letter key c comes next. */
static bool fr_opt_key(fr *r, char c)
{
    if (r->n - r->off < 2 || r->p[r->off] != 0xa1 || r->p[r->off + 1] != (uint8_t)c) return false;
    r->off += 2;
    return true;
}

/* One scalar or str of a value (or of a value map's entry), skipped: its
 * form is checked by crdt_val_parse afterwards; here only what the walk
 * demands of strs (length, UTF-8) and that the bytes are there. */
static bool fr_skip_scalar(fr *r)
{
    const uint8_t *q;
    uint8_t b;
    if (r->off >= r->n) return false;
    b = r->p[r->off];
    if ((b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb)) {
        const char *s;
        uint32_t l;
        return fr_str(r, &s, &l) && crdt_utf8_valid((const uint8_t *)s, l);
    }
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return fr_take(r, 1, &q);
    if (b >= 0xcc && b <= 0xcf) return fr_take(r, 1 + ((size_t)1 << (b - 0xcc)), &q);
    if (b >= 0xd0 && b <= 0xd3) return fr_take(r, 1 + ((size_t)1 << (b - 0xd0)), &q);
    return false;
}

/* A field value or key: its bytes (a scalar, a str, or a flat map of them),
 * which crdt_val_parse must accept; copied into the arena. */
static bool fr_value(fr *r, crdt_arena *a, crdt_blob *out)
{
    size_t start = r->off;
    if (r->off >= r->n) return false;
    uint8_t b = r->p[r->off];
    if ((b >= 0x80 && b <= 0x8f) || b == 0xde) {
        /* A map: one level below an op's map (depth 4 of the walk, within
         * the 5 that fast_decode demands of max_depth). */
        const uint8_t *q;
        uint32_t cnt;
        if (b == 0xde) {
            if (!fr_take(r, 3, &q)) return false;
            cnt = (uint32_t)crdt_be_read(q + 1, 2);
        } else {
            r->off++;
            cnt = b & 0x0f;
        }
        if (cnt > r->lim->max_entries || cnt > CRDT_MP_MAP_KEYS_MAX) return false;
        for (uint32_t i = 0; i < 2 * cnt; i++)
            if (!fr_skip_scalar(r)) return false;
    } else if (!fr_skip_scalar(r)) {
        return false;
    }
    crdt_blob v = {r->p + start, (uint32_t)(r->off - start)};
    crdt_val pv;
    if (crdt_val_parse(v, &pv)) return false;
    uint8_t *c = crdt_arena_alloc(a, v.n);
    if (!c) return false;
    memcpy(c, v.p, v.n);
    out->p = c;
    out->n = v.n;
    return true;
}

static bool fr_op(fr *r, crdt_arena *a, crdt_op *op)
{
    const uint8_t *q;
    const char *s;
    uint32_t l, have = 0;
    memset(op, 0, sizeof *op);
    if (!fr_take(r, 1, &q) || q[0] < 0x81 || q[0] > 0x85) return false;
    uint32_t want = q[0] & 0x0f;
    /* Members in the encoder's order f k o v x; "o" always there. */
    if (fr_opt_key(r, 'f')) {
        if (!fr_str(r, &s, &l) || !crdt_name_valid(s, l)) return false;
        if (!(op->field = arena_str(a, s, l))) return false;
        op->field_len = l;
        have++;
    }
    if (fr_opt_key(r, 'k')) {
        if (r->off >= r->n) return false;
        uint8_t b = r->p[r->off];
        bool str = (b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb);
        bool num = b <= 0x7f || b >= 0xe0 || (b >= 0xcc && b <= 0xd3);
        if (!(str || num) || !fr_value(r, a, &op->key)) return false;
        have++;
    }
    if (!fr_key(r, 'o') || !fr_str(r, &s, &l)) return false;
    if (!(op->code = (uint8_t)opcode_from(s, l))) return false;
    have++;
    if (fr_opt_key(r, 'v')) {
        if (r->off >= r->n || r->p[r->off] == 0xc0 || !fr_value(r, a, &op->val)) return false;
        have++;
    }
    if (fr_opt_key(r, 'x')) {
        uint32_t k;
        if (!fr_array(r, &k) || k == 0) return false;
        crdt_dot *dots = crdt_arena_alloc(a, (size_t)k * sizeof *dots);
        if (!dots) return false;
        for (uint32_t i = 0; i < k; i++) {
            uint64_t dev, seq;
            if (!fr_take(r, 1, &q) || q[0] != 0x92 || !fr_uint(r, &dev) || !fr_uint(r, &seq) ||
                dev > UINT32_MAX || seq == 0)
                return false;
            dots[i].dev = (uint32_t)dev;
            dots[i].seq = seq;
        }
        op->obs = dots;
        op->n_obs = k;
        have++;
    }
    return have == want;
}

static bool fast_decode(const uint8_t *p, size_t n, const crdt_limits *lim, crdt_arena *a,
                        crdt_delta *d)
{
    fr r = {p, n, 0, lim};
    const uint8_t *q;
    const char *s;
    uint32_t l, nops;
    uint64_t u;
    int eop;
    /* The walk's limits that a delta's shape reaches: 5 levels (the pair
     * arrays of "x"), maps of 8 keys, one-byte key strs (fr_key does not
     * check max_str), the 32-byte bin. */
    if (lim->max_depth < 5 || lim->max_depth > 64 || lim->max_entries < 8 || lim->max_str < 1 ||
        lim->max_bin < CRDT_HASH_BYTES || n == 0 || n > lim->max_msg || n > UINT32_MAX)
        return false;
    if (!fr_take(&r, 1, &q) || q[0] != 0x88) return false;
    if (!fr_key(&r, 'd') || !fr_uint(&r, &u) || u > UINT32_MAX) return false;
    d->dev = (uint32_t)u;
    if (!fr_key(&r, 'e') || !fr_uint(&r, &u) || u == 0 || u > UINT32_MAX) return false;
    d->epoch = (uint32_t)u;
    if (!fr_key(&r, 'h') || !fr_uint(&r, &d->hlc)) return false;
    if (!fr_key(&r, 'i') || !fr_str(&r, &s, &l) || !crdt_recid_valid(s, l)) return false;
    if (!(d->id = arena_str(a, s, l))) return false;
    d->id_len = l;
    if (!fr_key(&r, 'k') || !fr_str(&r, &s, &l) || !crdt_name_valid(s, l)) return false;
    if (!(d->kind = arena_str(a, s, l))) return false;
    d->kind_len = l;
    if (!fr_key(&r, 'o') || !fr_array(&r, &nops) || nops == 0 || nops > lim->max_ops)
        return false;
    crdt_op *ops = crdt_arena_alloc(a, (size_t)nops * sizeof *ops);
    if (!ops) return false;
    for (uint32_t i = 0; i < nops; i++)
        if (!fr_op(&r, a, &ops[i])) return false;
    d->ops = ops;
    d->n_ops = nops;
    if (!fr_key(&r, 'p') || !fr_take(&r, 2 + CRDT_HASH_BYTES, &q) || q[0] != 0xc4 ||
        q[1] != CRDT_HASH_BYTES)
        return false;
    memcpy(d->prev, q + 2, CRDT_HASH_BYTES);
    if (!fr_key(&r, 's') || !fr_uint(&r, &d->seq) || d->seq == 0) return false;
    if (r.off != n) return false;
    return delta_check_struct(d, lim, &eop) == CRDT_OK;
}

bool crdt_delta_decode_fast(const uint8_t *p, size_t n, const crdt_limits *lim, crdt_arena *a,
                            crdt_delta *out)
{
    if (!p || !lim || !a || !out) return false;
    memset(out, 0, sizeof(*out));
    crdt_arena_mark m = crdt_arena_get_mark(a);
    if (fast_decode(p, n, lim, a, out)) return true;
    crdt_arena_rewind(a, m);
    memset(out, 0, sizeof(*out));
    return false;
}

int crdt_delta_decode(const uint8_t *p, size_t n, const crdt_limits *lim,
                      crdt_arena *a, crdt_delta *out, int *err_op)
{
    if (err_op) *err_op = -1;
    if (!p || !lim || !a || !out) return CRDT_EINVAL;
    if (crdt_delta_decode_fast(p, n, lim, a, out)) return CRDT_OK;
    return crdt_delta_decode_ref(p, n, lim, a, out, err_op);
}

int crdt_delta_decode_ref(const uint8_t *p, size_t n, const crdt_limits *lim,
                          crdt_arena *a, crdt_delta *out, int *err_op)
{
    msgpack_unpacked up;
    dec dc = {a, {0}};
    crdt_buf re = {0};
    size_t off = 0;
    int eop = -1, rc;
    if (err_op) *err_op = -1;
    if (!p || !lim || !a || !out) return CRDT_EINVAL;
    memset(out, 0, sizeof(*out));

    rc = crdt_mp_check(p, n, lim, NULL);
    if (rc) return rc;

    msgpack_unpacked_init(&up);
    msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)p, n, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != n) {
        rc = CRDT_ETRUNC; /* cannot happen after a successful walk */
        goto fail;
    }
    rc = decode_obj(&dc, &up.data, lim, out, &eop);
    if (rc) goto fail;
    rc = delta_check_struct(out, lim, &eop);
    if (rc) goto fail;
    rc = encode_unchecked(out, &re);
    if (rc) goto fail;
    if (re.n != n || memcmp(re.p, p, n) != 0) {
        rc = CRDT_ENONCANON;
        goto fail;
    }
    msgpack_unpacked_destroy(&up);
    crdt_buf_free(&dc.scratch);
    crdt_buf_free(&re);
    return CRDT_OK;

fail:
    msgpack_unpacked_destroy(&up);
    crdt_buf_free(&dc.scratch);
    crdt_buf_free(&re);
    memset(out, 0, sizeof(*out));
    if (err_op) *err_op = eop;
    return rc;
}
