/*
 * test_codec.c — deltas on the wire: round trips, golden vectors that pin
 * the canonical bytes (tests/vectors/deltas.txt), and a catalogue of hostile
 * deltas, each refused with its specific code, with decode memory bounded by
 * the input size (measured with the sanitizer allocator hooks in the
 * ASan build).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <msgpack.h>

#include "crdt.h"
#include "testutil.h"

#ifdef DOORSTEP_SANITIZED
#include <sanitizer/allocator_interface.h>
#endif

/* ---- allocation accounting (ASan build) ----------------------------------- */

static size_t alloc_total, alloc_max;
static int alloc_tracking;

#ifdef DOORSTEP_SANITIZED
static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    if (!alloc_tracking) return;
    alloc_total += n;
    if (n > alloc_max) alloc_max = n;
}
static void on_free(const volatile void *p) { (void)p; }
#endif

/* Decode p[0..n) and return the code; asserts the memory bound. */
static int decode_bounded(const uint8_t *p, size_t n, int *err_op)
{
    crdt_arena *a = crdt_arena_new(64 * n + 4096);
    crdt_delta d;
    assert_non_null(a);
    alloc_total = alloc_max = 0;
    alloc_tracking = 1;
    int rc = crdt_delta_decode(p, n, &crdt_limits_default, a, &d, err_op);
    alloc_tracking = 0;
#ifdef DOORSTEP_SANITIZED
    /* msgpack-c's zone starts with an 8 KiB chunk; everything else must be
     * proportional to the bytes actually present. */
    size_t bound = 64 * 1024 + 64 * n;
    if (alloc_total > bound)
        fail_msg("decode of %zu bytes allocated %zu bytes (bound %zu)", n, alloc_total, bound);
#endif
    crdt_arena_free(a);
    return rc;
}

/* ---- building wire bytes by hand -------------------------------------------- */

static int bw(void *data, const char *p, size_t n)
{
    return crdt_buf_append(data, p, n) ? -1 : 0;
}

typedef struct mp {
    crdt_buf b;
    msgpack_packer pk;
} mp;

static void mp_init(mp *m)
{
    memset(m, 0, sizeof *m);
    msgpack_packer_init(&m->pk, &m->b, bw);
}

static void k(mp *m, const char *key) { msgpack_pack_str_with_body(&m->pk, key, strlen(key)); }
static void s(mp *m, const char *v) { msgpack_pack_str_with_body(&m->pk, v, strlen(v)); }

/* Variations of an otherwise valid delta. */
enum {
    V_NONE, V_SEQ0, V_EPOCH0, V_DEV_BIG, V_PREV31, V_PREV_NONZERO_SEQ1, V_ID_SPACE,
    V_ID_EMPTY, V_ID_LONG, V_KIND_UPPER, V_OPS_EMPTY, V_OPS_65, V_OP_UNKNOWN,
    V_OP_NO_O, V_SET_NO_V, V_DEL_WITH_F, V_ADD_WITH_X, V_OBS_UNSORTED, V_OBS_SEQ0,
    V_DUP_FIELD, V_VALUE_ARRAY, V_VALUE_NIL, V_VALUE_BIN, V_MISSING_S, V_EXTRA_KEY,
    V_KEYS_UNSORTED, V_SEQ_WIDE, V_OPS_NOT_ARRAY, V_OP_NOT_MAP, V_FIELD_BAD,
    V_KEY_ARRAY, V_VALUE_NESTED_MAP, V_OBS_EMPTY, V_SEQ_STR, V_X_NOT_DOTS, V_DUP_DEL
};

static void pack_op(mp *m, int v, int i)
{
    switch (v) {
    case V_OP_UNKNOWN:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "zap");
        k(m, "v"); s(m, "x");
        return;
    case V_OP_NO_O:
        msgpack_pack_map(&m->pk, 2); k(m, "f"); s(m, "name"); k(m, "v"); s(m, "x");
        return;
    case V_SET_NO_V:
        msgpack_pack_map(&m->pk, 2); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        return;
    case V_DEL_WITH_F:
        msgpack_pack_map(&m->pk, 2); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "del");
        return;
    case V_ADD_WITH_X:
        msgpack_pack_map(&m->pk, 4); k(m, "f"); s(m, "tags"); k(m, "o"); s(m, "add");
        k(m, "v"); s(m, "a"); k(m, "x"); msgpack_pack_array(&m->pk, 1);
        msgpack_pack_array(&m->pk, 2); msgpack_pack_uint32(&m->pk, 1); msgpack_pack_uint32(&m->pk, 1);
        return;
    case V_OBS_UNSORTED:
    case V_OBS_SEQ0:
        msgpack_pack_map(&m->pk, 4); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); s(m, "x"); k(m, "x"); msgpack_pack_array(&m->pk, 2);
        msgpack_pack_array(&m->pk, 2); msgpack_pack_uint32(&m->pk, 5);
        msgpack_pack_uint32(&m->pk, v == V_OBS_SEQ0 ? 0 : 3);
        msgpack_pack_array(&m->pk, 2); msgpack_pack_uint32(&m->pk, 2); msgpack_pack_uint32(&m->pk, 1);
        return;
    case V_OBS_EMPTY:
        msgpack_pack_map(&m->pk, 4); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); s(m, "x"); k(m, "x"); msgpack_pack_array(&m->pk, 0);
        return;
    case V_X_NOT_DOTS:
        msgpack_pack_map(&m->pk, 4); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); s(m, "x"); k(m, "x"); msgpack_pack_array(&m->pk, 1); s(m, "dot");
        return;
    case V_VALUE_ARRAY:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); msgpack_pack_array(&m->pk, 1); s(m, "x");
        return;
    case V_VALUE_NIL:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); msgpack_pack_nil(&m->pk);
        return;
    case V_VALUE_BIN:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "name"); k(m, "o"); s(m, "set");
        k(m, "v"); msgpack_pack_bin_with_body(&m->pk, "x", 1);
        return;
    case V_VALUE_NESTED_MAP:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "visits"); k(m, "o"); s(m, "app");
        k(m, "v"); msgpack_pack_map(&m->pk, 1); k(m, "d"); msgpack_pack_map(&m->pk, 1);
        k(m, "e"); s(m, "x");
        return;
    case V_OP_NOT_MAP:
        s(m, "set name x");
        return;
    case V_FIELD_BAD:
        msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, "Name!"); k(m, "o"); s(m, "set");
        k(m, "v"); s(m, "x");
        return;
    case V_KEY_ARRAY:
        msgpack_pack_map(&m->pk, 4); k(m, "f"); s(m, "pay"); k(m, "k");
        msgpack_pack_array(&m->pk, 0); k(m, "o"); s(m, "set"); k(m, "v"); s(m, "paid");
        return;
    case V_DUP_DEL:
        msgpack_pack_map(&m->pk, 1); k(m, "o"); s(m, "del");
        return;
    default:
        break;
    }
    /* A valid op; V_DUP_FIELD and V_OPS_65 repeat fields deliberately. */
    char field[16];
    if (v == V_DUP_FIELD) snprintf(field, sizeof field, "name");
    else snprintf(field, sizeof field, "f%d", i);
    msgpack_pack_map(&m->pk, 3); k(m, "f"); s(m, field); k(m, "o"); s(m, "set");
    k(m, "v"); s(m, "张三");
}

static void pack_delta(mp *m, int v)
{
    uint8_t prev[32] = {0};
    uint64_t seq = 7;
    if (v == V_PREV_NONZERO_SEQ1) { seq = 1; prev[3] = 1; }
    if (v == V_SEQ0) seq = 0;
    int nkeys = 8 - (v == V_MISSING_S) + (v == V_EXTRA_KEY);
    msgpack_pack_map(&m->pk, (size_t)nkeys);
    if (v == V_KEYS_UNSORTED) { k(m, "e"); msgpack_pack_uint32(&m->pk, 1);
                                k(m, "d"); msgpack_pack_uint32(&m->pk, 3); }
    else { k(m, "d");
           if (v == V_DEV_BIG) msgpack_pack_uint64(&m->pk, 1ull << 33);
           else msgpack_pack_uint32(&m->pk, 3);
           k(m, "e"); msgpack_pack_uint32(&m->pk, v == V_EPOCH0 ? 0 : 1); }
    k(m, "h"); msgpack_pack_uint64(&m->pk, CRDT_HLC_MAKE(1790000000000ull, 2));
    k(m, "i");
    if (v == V_ID_SPACE) s(m, "P 1");
    else if (v == V_ID_EMPTY) s(m, "");
    else if (v == V_ID_LONG) s(m, "P12345678901234567890123456789012345678901234567890123456789012345");
    else s(m, "P1");
    k(m, "k"); s(m, v == V_KIND_UPPER ? "Person" : "person");
    k(m, "o");
    if (v == V_OPS_NOT_ARRAY) s(m, "ops");
    else {
        int nops = v == V_OPS_EMPTY ? 0 : v == V_OPS_65 ? 65
                 : (v == V_DUP_FIELD || v == V_DUP_DEL) ? 2 : 1;
        msgpack_pack_array(&m->pk, (size_t)nops);
        for (int i = 0; i < nops; i++) pack_op(m, v, i);
    }
    k(m, "p"); msgpack_pack_bin_with_body(&m->pk, prev, v == V_PREV31 ? 31 : 32);
    if (v != V_MISSING_S) {
        k(m, "s");
        if (v == V_SEQ_WIDE) { uint8_t w[3] = {0xcd, 0x00, 0x07}; crdt_buf_append(&m->b, w, 3); }
        else if (v == V_SEQ_STR) s(m, "7");
        else msgpack_pack_uint64(&m->pk, seq);
    }
    if (v == V_EXTRA_KEY) { k(m, "z"); msgpack_pack_nil(&m->pk); }
}

static void test_hostile_deltas(void **state)
{
    (void)state;
    static const struct { int v; int code; int op; const char *what; } cases[] = {
        {V_NONE, 0, -1, "valid"},
        {V_SEQ0, CRDT_ERANGE, -1, "seq 0"},
        {V_EPOCH0, CRDT_ERANGE, -1, "epoch 0"},
        {V_DEV_BIG, CRDT_ERANGE, -1, "device id above 2^32"},
        {V_PREV31, CRDT_ERANGE, -1, "31-byte previous hash"},
        {V_PREV_NONZERO_SEQ1, CRDT_ERANGE, -1, "seq 1 with a previous hash"},
        {V_ID_SPACE, CRDT_ERECID, -1, "record id with a space"},
        {V_ID_EMPTY, CRDT_ERECID, -1, "empty record id"},
        {V_ID_LONG, CRDT_ERECID, -1, "65-byte record id"},
        {V_KIND_UPPER, CRDT_EKIND, -1, "kind with capitals"},
        {V_OPS_EMPTY, CRDT_ENOOPS, -1, "no ops"},
        {V_OPS_65, CRDT_ETOOMANYOPS, -1, "65 ops"},
        {V_OP_UNKNOWN, CRDT_EOPCODE, 0, "unknown op"},
        {V_OP_NO_O, CRDT_EMISSING, 0, "op without a name"},
        {V_SET_NO_V, CRDT_EMISSING, 0, "set without a value"},
        {V_DEL_WITH_F, CRDT_EUNKNOWNKEY, 0, "del naming a field"},
        {V_ADD_WITH_X, CRDT_EOBS, 0, "add with observed dots"},
        {V_OBS_UNSORTED, CRDT_EOBS, 0, "observed dots unsorted"},
        {V_OBS_SEQ0, CRDT_EOBS, 0, "observed dot with seq 0"},
        {V_OBS_EMPTY, CRDT_ENONCANON, -1, "empty observed list (omit it)"},
        {V_X_NOT_DOTS, CRDT_ETYPE, 0, "observed list of strings"},
        {V_DUP_FIELD, CRDT_EDUPOP, 1, "the same field twice"},
        {V_DUP_DEL, CRDT_EDUPOP, 1, "two record-level ops"},
        {V_VALUE_ARRAY, CRDT_ETYPE, 0, "array value"},
        {V_VALUE_NIL, CRDT_EVALUE, 0, "nil value"},
        {V_VALUE_BIN, CRDT_ETYPE, 0, "bin value"},
        {V_VALUE_NESTED_MAP, CRDT_ETYPE, 0, "nested map value"},
        {V_KEY_ARRAY, CRDT_EKEY, 0, "array as field key"},
        {V_MISSING_S, CRDT_EMISSING, -1, "no seq"},
        {V_EXTRA_KEY, CRDT_EUNKNOWNKEY, -1, "unknown top-level key"},
        {V_KEYS_UNSORTED, CRDT_ENONCANON, -1, "keys out of order"},
        {V_SEQ_WIDE, CRDT_ENONCANON, -1, "seq in a wider int than needed"},
        {V_SEQ_STR, CRDT_ETYPE, -1, "seq as a string"},
        {V_OPS_NOT_ARRAY, CRDT_ETYPE, -1, "ops not an array"},
        {V_OP_NOT_MAP, CRDT_ETYPE, 0, "op not a map"},
        {V_FIELD_BAD, CRDT_EFIELD, 0, "field name with capitals"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mp m;
        int err_op = 99;
        mp_init(&m);
        pack_delta(&m, cases[i].v);
        int rc = decode_bounded(m.b.p, m.b.n, &err_op);
        if (rc != cases[i].code || err_op != cases[i].op)
            fail_msg("case '%s': got %d (%s) op %d, want %d op %d", cases[i].what, rc,
                     crdt_strerror(rc), err_op, cases[i].code, cases[i].op);
        crdt_buf_free(&m.b);
    }
}

static void test_hostile_bytes(void **state)
{
    (void)state;
    static const struct { const char *hex; int code; const char *what; } cases[] = {
        {"ddff000000", CRDT_ECOUNT, "array32 declaring 4 billion entries"},
        {"dfff000000", CRDT_ECOUNT, "map32 declaring 4 billion entries"},
        {"dc0400", CRDT_ELENGTH, "array16 of 1024 with nothing behind it"},
        {"dbffffffff", CRDT_ESTRLEN, "str32 of 4 GiB"},
        {"c6ffffffff", CRDT_EBINLEN, "bin32 of 4 GiB"},
        {"", CRDT_ETRUNC, "empty input"},
        {"8aa164", CRDT_ELENGTH, "map declaring more entries than bytes"},
        {"cd00", CRDT_ETRUNC, "uint16 cut short"},
        {"c1", CRDT_ERESERVED, "reserved byte"},
        {"d40100", CRDT_EEXT, "fixext1"},
        {"cb3ff0000000000000", CRDT_EFLOAT, "float64"},
        {"82a16401a16402", CRDT_EDUPKEY, "duplicate key"},
        {"81c0c0", CRDT_EMAPKEY, "nil as map key"},
        {"a2c0af", CRDT_EUTF8, "overlong UTF-8"},
        {"c0c0", CRDT_ETRAILING, "trailing bytes"},
        {"93010203", CRDT_ETYPE, "array instead of map"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        long n = tu_unhex(cases[i].hex, buf, sizeof buf);
        assert_true(n >= 0);
        int rc = decode_bounded(buf, (size_t)n, NULL);
        if (rc != cases[i].code)
            fail_msg("case '%s': got %d (%s), want %d", cases[i].what, rc, crdt_strerror(rc),
                     cases[i].code);
    }
    /* 1,000-deep nesting. */
    uint8_t deep[1001];
    memset(deep, 0x91, 1000);
    deep[1000] = 0xc0;
    assert_int_equal(decode_bounded(deep, sizeof deep, NULL), CRDT_EDEPTH);
    /* Oversized message. */
    size_t big = crdt_limits_default.max_msg + 1;
    uint8_t *huge = calloc(1, big);
    assert_int_equal(decode_bounded(huge, big, NULL), CRDT_ETOOBIG);
    free(huge);
}

/* ---- round trips and golden vectors ---------------------------------------- */

typedef struct built {
    crdt_delta d;
    crdt_op ops[4];
    crdt_buf v[4], k[4];
    crdt_dot obs[2];
} built;

/* The golden deltas.  Changing what these produce is a protocol change. */
static void build_golden(built *b, int which)
{
    memset(b, 0, sizeof *b);
    crdt_delta *d = &b->d;
    d->dev = 42;
    d->epoch = 1;
    d->hlc = CRDT_HLC_MAKE(1790000000000ull, 3);
    d->kind = "person";
    d->kind_len = 6;
    d->id = "P-0001";
    d->id_len = 6;
    d->ops = b->ops;
    switch (which) {
    case 0: /* seq 1: set a name */
        d->seq = 1;
        b->ops[0] = (crdt_op){.code = CRDT_OP_SET, .field = "name", .field_len = 4};
        crdt_val_put_str(&b->v[0], "张三", strlen("张三"));
        b->ops[0].val = (crdt_blob){b->v[0].p, (uint32_t)b->v[0].n};
        d->n_ops = 1;
        break;
    case 1: /* seq 2: mv with observed dots, keyed payment, tag add, counter */
        d->seq = 2;
        memset(d->prev, 0xab, sizeof d->prev);
        b->obs[0] = (crdt_dot){7, 3};
        b->obs[1] = (crdt_dot){42, 1};
        b->ops[0] = (crdt_op){.code = CRDT_OP_SET, .field = "name", .field_len = 4,
                              .obs = b->obs, .n_obs = 2};
        crdt_val_put_str(&b->v[0], "张山", strlen("张山"));
        b->ops[1] = (crdt_op){.code = CRDT_OP_SET, .field = "payment", .field_len = 7};
        crdt_val_put_int(&b->k[1], 2026);
        crdt_val_put_str(&b->v[1], "已缴费", strlen("已缴费"));
        b->ops[2] = (crdt_op){.code = CRDT_OP_ADD, .field = "tags", .field_len = 4};
        crdt_val_put_str(&b->v[2], "低保", strlen("低保"));
        b->ops[3] = (crdt_op){.code = CRDT_OP_INC, .field = "errands", .field_len = 7};
        crdt_val_put_int(&b->v[3], -1);
        for (int i = 0; i < 4; i++) {
            b->ops[i].val = (crdt_blob){b->v[i].p, (uint32_t)b->v[i].n};
            if (b->k[i].n) b->ops[i].key = (crdt_blob){b->k[i].p, (uint32_t)b->k[i].n};
        }
        d->n_ops = 4;
        break;
    default: /* seq 3: tombstone */
        d->seq = 3;
        memset(d->prev, 0xcd, sizeof d->prev);
        b->ops[0] = (crdt_op){.code = CRDT_OP_DEL};
        d->n_ops = 1;
        break;
    }
}

static void built_free(built *b)
{
    for (int i = 0; i < 4; i++) {
        crdt_buf_free(&b->v[i]);
        crdt_buf_free(&b->k[i]);
    }
}

/* Find "name: hex" in the vectors file. */
static long golden(const char *name, uint8_t *out, size_t cap)
{
    size_t len;
    char *text = tu_read_file(DOORSTEP_SOURCE_DIR "/tests/vectors/deltas.txt", &len);
    assert_non_null(text);
    long n = -1;
    size_t nl = strlen(name);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, name, nl) == 0 && line[nl] == ':') {
            n = tu_unhex(line + nl + 1, out, cap);
            break;
        }
    }
    free(text);
    return n;
}

static void test_golden_vectors(void **state)
{
    (void)state;
    static const char *names[] = {"delta-set-name", "delta-mixed", "delta-tombstone"};
    for (int i = 0; i < 3; i++) {
        built b;
        crdt_buf enc = {0};
        uint8_t want[512];
        build_golden(&b, i);
        assert_int_equal(crdt_delta_encode(&b.d, &enc), 0);
        long n = golden(names[i], want, sizeof want);
        if (n < 0) {
            char hex[1100];
            tu_hex(enc.p, enc.n, hex);
            fail_msg("no vector '%s' in tests/vectors/deltas.txt; encoder gives %s", names[i], hex);
        }
        if ((size_t)n != enc.n || memcmp(want, enc.p, enc.n) != 0) {
            char hex[1100];
            tu_hex(enc.p, enc.n, hex);
            fail_msg("vector '%s' changed: encoder now gives %s", names[i], hex);
        }
        /* And the decoder reads the pinned bytes back to the same delta. */
        int err_op;
        assert_int_equal(decode_bounded(want, (size_t)n, &err_op), 0);
        crdt_buf_free(&enc);
        built_free(&b);
    }
}

static void test_roundtrip_and_mutations(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("codec-mutations"));
    for (int which = 0; which < 3; which++) {
        built b;
        crdt_buf enc = {0}, re = {0};
        crdt_arena *a = crdt_arena_new(0);
        crdt_delta d;
        int err_op;
        build_golden(&b, which);
        assert_int_equal(crdt_delta_encode(&b.d, &enc), 0);
        assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &d, &err_op), 0);
        assert_int_equal(d.dev, b.d.dev);
        assert_int_equal(d.seq, b.d.seq);
        assert_int_equal(d.hlc, b.d.hlc);
        assert_int_equal(d.n_ops, b.d.n_ops);
        assert_memory_equal(d.prev, b.d.prev, 32);
        assert_int_equal(crdt_delta_encode(&d, &re), 0);
        assert_int_equal(re.n, enc.n);
        assert_memory_equal(re.p, enc.p, enc.n);
        /* Random mutations: decode either fails with a code or yields a delta
         * whose re-encoding is byte-identical to the mutated input. */
        for (int it = 0; it < (int)tu_scaled(20000); it++) {
            uint8_t m[512];
            size_t n = enc.n;
            memcpy(m, enc.p, n);
            int edits = 1 + (int)tu_below(&r, 3);
            for (int e = 0; e < edits; e++) {
                switch (tu_below(&r, 3)) {
                case 0: m[tu_below(&r, n)] = (uint8_t)tu_next(&r); break;
                case 1: m[tu_below(&r, n)] ^= (uint8_t)(1u << tu_below(&r, 8)); break;
                default: n = 1 + tu_below(&r, n); break;
                }
            }
            crdt_arena_reset(a);
            int rc = decode_bounded(m, n, &err_op);
            if (rc == 0) {
                crdt_buf_reset(&re);
                assert_int_equal(crdt_delta_decode(m, n, &crdt_limits_default, a, &d, &err_op), 0);
                assert_int_equal(crdt_delta_encode(&d, &re), 0);
                assert_int_equal(re.n, n);
                assert_memory_equal(re.p, m, n);
            } else {
                assert_true(rc < 0);
                assert_string_not_equal(crdt_strerror(rc), "unknown crdt error");
            }
        }
        crdt_buf_free(&enc);
        crdt_buf_free(&re);
        crdt_arena_free(a);
        built_free(&b);
    }
}

static void test_arena_cap_limits_decode(void **state)
{
    (void)state;
    built b;
    crdt_buf enc = {0};
    build_golden(&b, 1);
    assert_int_equal(crdt_delta_encode(&b.d, &enc), 0);
    crdt_arena *a = crdt_arena_new(64);
    crdt_delta d;
    assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &d, NULL),
                     CRDT_ENOMEM);
    assert_int_equal(d.n_ops, 0); /* zeroed on failure */
    crdt_arena_free(a);
    crdt_buf_free(&enc);
    built_free(&b);
}

static void test_encode_refuses_invalid(void **state)
{
    (void)state;
    built b;
    crdt_buf enc = {0};
    build_golden(&b, 0);
    b.d.seq = 0;
    assert_int_equal(crdt_delta_encode(&b.d, &enc), CRDT_ERANGE);
    b.d.seq = 1;
    b.d.id = "bad id";
    b.d.id_len = 6;
    assert_int_equal(crdt_delta_encode(&b.d, &enc), CRDT_ERECID);
    assert_int_equal(enc.n, 0);
    built_free(&b);
}

/* ---- the fast pass against the reference decoder ----------------------------- */

static void blob_same(crdt_blob a, crdt_blob b, const char *what)
{
    if (a.n != b.n || (a.n && memcmp(a.p, b.p, a.n)))
        fail_msg("%s differs between the fast pass and the reference", what);
}

/* Fail unless x and y are the same delta, field by field. */
static void delta_same(const crdt_delta *x, const crdt_delta *y)
{
    assert_int_equal(x->dev, y->dev);
    assert_int_equal(x->epoch, y->epoch);
    assert_int_equal(x->seq, y->seq);
    assert_int_equal(x->hlc, y->hlc);
    assert_memory_equal(x->prev, y->prev, CRDT_HASH_BYTES);
    blob_same((crdt_blob){(const uint8_t *)x->kind, x->kind_len},
              (crdt_blob){(const uint8_t *)y->kind, y->kind_len}, "kind");
    blob_same((crdt_blob){(const uint8_t *)x->id, x->id_len},
              (crdt_blob){(const uint8_t *)y->id, y->id_len}, "id");
    assert_int_equal(x->id[x->id_len], 0);
    assert_int_equal(x->kind[x->kind_len], 0);
    assert_int_equal(x->n_ops, y->n_ops);
    for (uint32_t i = 0; i < x->n_ops; i++) {
        const crdt_op *a = &x->ops[i], *b = &y->ops[i];
        assert_int_equal(a->code, b->code);
        assert_int_equal(a->field == NULL, b->field == NULL);
        if (a->field) {
            blob_same((crdt_blob){(const uint8_t *)a->field, a->field_len},
                      (crdt_blob){(const uint8_t *)b->field, b->field_len}, "field");
            assert_int_equal(a->field[a->field_len], 0);
        }
        blob_same(a->key, b->key, "key");
        blob_same(a->val, b->val, "value");
        assert_int_equal(a->n_obs, b->n_obs);
        for (uint32_t j = 0; j < a->n_obs; j++) {
            assert_int_equal(a->obs[j].dev, b->obs[j].dev);
            assert_int_equal(a->obs[j].seq, b->obs[j].seq);
        }
    }
}

/* An integer whose encoding lands near a msgpack width boundary. */
static uint64_t edge_uint(tu_rng *r)
{
    static const uint64_t e[] = {0, 1, 127, 128, 255, 256, 65535, 65536, 0xffffffffu,
                                 UINT64_C(0x100000000), UINT64_C(0x7fffffffffffffff)};
    uint64_t v = e[tu_below(r, sizeof e / sizeof e[0])];
    return tu_below(r, 3) ? v : tu_next(r) >> tu_below(r, 64);
}

static int64_t edge_int(tu_rng *r)
{
    static const int64_t e[] = {-1, -32, -33, -128, -129, -32768, -32769, INT64_MIN, 0, 127,
                                128, 70000};
    return tu_below(r, 2) ? e[tu_below(r, sizeof e / sizeof e[0])]
                          : (int64_t)(tu_next(r) >> tu_below(r, 64)) * (tu_below(r, 2) ? -1 : 1);
}

/* A random text of n bytes: ASCII and (whole) 3-byte CJK characters. */
static void rand_text(tu_rng *r, char *out, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i >= 3 && tu_below(r, 2)) {
            memcpy(out + i, "\xe5\xbc\xa0", 3); /* 张 */
            i += 3;
        } else {
            out[i++] = (char)('a' + tu_below(r, 26));
        }
    }
}

/* A random value: bool, int, str (up to 300 bytes: fixstr, str8, str16) or
 * a log-entry map of up to 16 entries (fixmap, map16). */
static void rand_value(tu_rng *r, crdt_buf *v, bool allow_map)
{
    char text[320];
    switch (tu_below(r, allow_map ? 4 : 3)) {
    case 0: crdt_val_put_bool(v, tu_below(r, 2)); break;
    case 1: crdt_val_put_int(v, edge_int(r)); break;
    case 2: {
        static const size_t lens[] = {0, 1, 31, 32, 255, 256, 300};
        size_t n = tu_below(r, 2) ? lens[tu_below(r, 7)] : tu_below(r, 40);
        rand_text(r, text, n);
        crdt_val_put_str(v, text, n);
        break;
    }
    default: {
        char kb[16][8];
        const char *keys[16];
        crdt_scalar vals[16];
        char sv[16][24];
        uint32_t n = tu_below(r, 4) ? (uint32_t)tu_below(r, 6) : 16;
        for (uint32_t i = 0; i < n; i++) {
            snprintf(kb[i], sizeof kb[i], "k%u", i);
            keys[i] = kb[i];
            memset(&vals[i], 0, sizeof vals[i]);
            switch (tu_below(r, 3)) {
            case 0: vals[i].t = CRDT_V_BOOL; vals[i].b = tu_below(r, 2); break;
            case 1: vals[i].t = CRDT_V_INT; vals[i].i = edge_int(r); break;
            default: {
                size_t l = tu_below(r, 20);
                rand_text(r, sv[i], l);
                vals[i].t = CRDT_V_STR;
                vals[i].s = sv[i];
                vals[i].len = (uint32_t)l;
            }
            }
        }
        assert_int_equal(crdt_val_put_map(v, keys, vals, n), 0);
    }
    }
}

/* Encode a random valid delta into enc (every width and shape the encoder
 * writes: ints at each boundary, ids of 1..64 bytes, up to 64 ops, keys, log
 * entries, observed dots). */
static void rand_delta(tu_rng *r, crdt_buf *enc)
{
    enum { MAXOPS = 64 };
    static crdt_op ops[MAXOPS];
    static crdt_buf v[MAXOPS], kb[MAXOPS];
    static crdt_dot obs[MAXOPS][20];
    static char fields[MAXOPS][12]; /* "f" and any uint32_t: gcc -O0 cannot see i < MAXOPS */
    char id[CRDT_RECID_MAX];
    crdt_delta d;
    memset(&d, 0, sizeof d);
    uint64_t u = edge_uint(r);
    d.dev = (uint32_t)(u > UINT32_MAX ? u >> 32 : u);
    u = edge_uint(r);
    d.epoch = (uint32_t)(u > UINT32_MAX ? u >> 32 : u);
    if (!d.epoch) d.epoch = 1;
    d.hlc = edge_uint(r);
    d.seq = edge_uint(r);
    if (d.seq <= 1) d.seq = 2;
    for (int i = 0; i < CRDT_HASH_BYTES; i++) d.prev[i] = (uint8_t)tu_next(r);
    size_t il = 1 + tu_below(r, CRDT_RECID_MAX);
    for (size_t i = 0; i < il; i++) id[i] = "ab-_.Z9"[tu_below(r, 7)];
    d.id = id;
    d.id_len = (uint32_t)il;
    d.kind = tu_below(r, 2) ? "person" : "household";
    d.kind_len = (uint32_t)strlen(d.kind);
    uint32_t n = tu_below(r, 8) ? 1 + (uint32_t)tu_below(r, 6) : 1 + (uint32_t)tu_below(r, MAXOPS);
    bool record_op = false;
    for (uint32_t i = 0; i < n; i++) {
        crdt_op *o = &ops[i];
        memset(o, 0, sizeof *o);
        crdt_buf_reset(&v[i]);
        crdt_buf_reset(&kb[i]);
        if (!record_op && tu_below(r, 12) == 0) {
            o->code = tu_below(r, 2) ? CRDT_OP_DEL : CRDT_OP_UNDEL;
            record_op = true;
            continue;
        }
        static const int codes[] = {CRDT_OP_SET, CRDT_OP_ADD, CRDT_OP_REM, CRDT_OP_APP,
                                    CRDT_OP_INC, CRDT_OP_RAISE};
        o->code = (uint8_t)codes[tu_below(r, 6)];
        snprintf(fields[i], sizeof fields[i], "f%u", i);
        o->field = fields[i];
        o->field_len = (uint32_t)strlen(fields[i]);
        rand_value(r, &v[i], true);
        o->val = (crdt_blob){v[i].p, (uint32_t)v[i].n};
        if (tu_below(r, 3) == 0) {
            if (tu_below(r, 2)) crdt_val_put_int(&kb[i], edge_int(r));
            else crdt_val_put_str(&kb[i], "2026", 4);
            o->key = (crdt_blob){kb[i].p, (uint32_t)kb[i].n};
        }
        if ((o->code == CRDT_OP_SET || o->code == CRDT_OP_REM) && tu_below(r, 2)) {
            uint32_t k = tu_below(r, 4) ? 1 + (uint32_t)tu_below(r, 3) : 1 + (uint32_t)tu_below(r, 20);
            for (uint32_t j = 0; j < k; j++)
                obs[i][j] = (crdt_dot){(uint32_t)(j + 1), 1 + (edge_uint(r) >> 1)};
            o->obs = obs[i];
            o->n_obs = k;
        }
    }
    d.ops = ops;
    d.n_ops = n;
    crdt_buf_reset(enc);
    assert_int_equal(crdt_delta_encode(&d, enc), 0);
}

/* Both decoders on p[0..n) under lim: the fast pass succeeds only where the
 * reference does, with the same delta; returns whether the fast pass took it. */
static bool agree(const uint8_t *p, size_t n, const crdt_limits *lim, crdt_arena *a)
{
    crdt_delta f, ref;
    int eop;
    size_t before = crdt_arena_used(a);
    bool fast = crdt_delta_decode_fast(p, n, lim, a, &f);
    if (!fast) assert_int_equal(crdt_arena_used(a), before); /* gave its memory back */
    int rc = crdt_delta_decode_ref(p, n, lim, a, &ref, &eop);
    if (fast && rc) fail_msg("fast pass accepted what the reference refuses (%s)", crdt_strerror(rc));
    if (fast) delta_same(&f, &ref);
    /* And crdt_delta_decode gives the reference's verdict either way. */
    crdt_delta d;
    int eop2;
    assert_int_equal(crdt_delta_decode(p, n, lim, a, &d, &eop2), rc);
    if (rc) assert_int_equal(eop2, eop);
    else delta_same(&d, &ref);
    return fast;
}

static void test_fast_pass_agrees(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("codec-fast-pass"));
    crdt_arena *a = crdt_arena_new(0);
    crdt_buf enc = {0};
    crdt_limits tight = crdt_limits_default;
    tight.max_str = 64;
    tight.max_entries = 12;
    tight.max_depth = 5;
    uint64_t valid = 0, fast_mut = 0, ref_ok_mut = 0;
    for (int it = 0; it < (int)tu_scaled(40000); it++) {
        crdt_arena_reset(a);
        rand_delta(&r, &enc);
        /* Every delta the encoder writes takes the fast pass. */
        if (!agree(enc.p, enc.n, &crdt_limits_default, a))
            fail_msg("fast pass gave up on an encoder's delta of %zu bytes", enc.n);
        valid++;
        (void)agree(enc.p, enc.n, &tight, a);
        /* Damaged copies: the two agree on each. */
        uint8_t m[8192];
        if (enc.n + 1 > sizeof m) continue;
        for (int k = 0; k < 4; k++) {
            size_t n = enc.n;
            memcpy(m, enc.p, n);
            size_t at = tu_below(&r, n);
            switch (tu_below(&r, 5)) {
            case 0: m[at] = (uint8_t)tu_next(&r); break;
            case 1: m[at] ^= (uint8_t)(1u << tu_below(&r, 8)); break;
            case 2: n = at; break;
            case 3: m[at] = (uint8_t)(m[at] + (tu_below(&r, 2) ? 1 : -1)); break;
            default: /* a fixstr or fixint written one size wider (the same
                      * value, not its shortest form): a byte inserted */
                for (size_t j = 0; j < n; j++, at = (at + 1) % n) {
                    uint8_t b = m[at];
                    if (b <= 0x7f || (b >= 0xa0 && b <= 0xbf)) {
                        memmove(m + at + 2, m + at + 1, n - at - 1);
                        m[at] = b <= 0x7f ? 0xcc : 0xd9;
                        m[at + 1] = b <= 0x7f ? b : (uint8_t)(b & 0x1f);
                        n++;
                        break;
                    }
                }
            }
            crdt_delta d;
            int eop;
            bool ok = crdt_delta_decode_ref(m, n, &crdt_limits_default, a, &d, &eop) == 0;
            bool fast = agree(m, n, &crdt_limits_default, a);
            if (ok && !fast) fail_msg("fast pass gave up on a valid (mutated) delta");
            fast_mut += fast;
            ref_ok_mut += ok;
        }
    }
    /* The mutations did produce accepted deltas, so the agreement was tested
     * on more than refusals. */
    assert_true(valid > 0);
    assert_true(fast_mut > 0 && fast_mut == ref_ok_mut);
    crdt_buf_free(&enc);
    crdt_arena_free(a);
}

static int setup(void **state)
{
    (void)state;
#ifdef DOORSTEP_SANITIZED
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
#endif
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_deltas),
        cmocka_unit_test(test_hostile_bytes),
        cmocka_unit_test(test_golden_vectors),
        cmocka_unit_test(test_roundtrip_and_mutations),
        cmocka_unit_test(test_arena_cap_limits_decode),
        cmocka_unit_test(test_encode_refuses_invalid),
        cmocka_unit_test(test_fast_pass_agrees),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
