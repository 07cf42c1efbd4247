/*
 * test_val.c — canonical field values (crdt/val.c): encoders agree byte for
 * byte with msgpack-c's packer (which the delta codec re-packs with), parse
 * round-trips, every non-canonical form is refused with its code, and any
 * bytes the parser accepts re-encode to themselves (one representation per
 * value).
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

static int mp_write(void *data, const char *buf, size_t len)
{
    return crdt_buf_append(data, buf, len) ? -1 : 0;
}

static crdt_blob blob(const crdt_buf *b) { return (crdt_blob){b->p, (uint32_t)b->n}; }

/* Parse hex bytes and return the crdt_val_parse code. */
static int parse_hex(const char *hex, crdt_val *v)
{
    uint8_t buf[70000];
    long n = tu_unhex(hex, buf, sizeof buf);
    assert_true(n >= 0);
    return crdt_val_parse((crdt_blob){buf, (uint32_t)n}, v);
}

static bool all_zero(const void *p, size_t n)
{
    const uint8_t *q = p;
    for (size_t i = 0; i < n; i++)
        if (q[i]) return false;
    return true;
}

/* ---- ints -------------------------------------------------------------------- */

static void check_int(int64_t x, size_t want_len)
{
    crdt_buf a = {0}, b = {0};
    msgpack_packer pk;
    crdt_val v;
    assert_int_equal(crdt_val_put_int(&a, x), 0);
    msgpack_packer_init(&pk, &b, mp_write);
    assert_int_equal(msgpack_pack_int64(&pk, x), 0);
    if (want_len) assert_int_equal(a.n, want_len);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.p, b.p, a.n);
    assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
    assert_int_equal(v.t, CRDT_V_INT);
    assert_true(v.i == x);
    crdt_buf_free(&a);
    crdt_buf_free(&b);
}

static void test_int_boundaries(void **state)
{
    (void)state;
    static const struct { int64_t x; size_t len; } c[] = {
        {0, 1}, {1, 1}, {127, 1}, {128, 2}, {255, 2}, {256, 3}, {65535, 3},
        {65536, 5}, {INT64_C(4294967295), 5}, {INT64_C(4294967296), 9},
        {INT64_MAX, 9}, {-1, 1}, {-32, 1}, {-33, 2}, {-128, 2}, {-129, 3},
        {-32768, 3}, {-32769, 5}, {INT32_MIN, 5}, {(int64_t)INT32_MIN - 1, 9},
        {INT64_MIN, 9},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) check_int(c[i].x, c[i].len);
}

static void test_int_random(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("val-int"));
    for (int i = 0; i < 20000; i++) {
        int64_t x = (int64_t)tu_next(&r);
        x >>= tu_below(&r, 64); /* all magnitudes */
        check_int(x, 0);
    }
}

/* ---- strings, nil, bool ------------------------------------------------------------ */

static void test_str_headers(void **state)
{
    (void)state;
    static const struct { size_t len, hdr; } c[] = {
        {0, 1}, {1, 1}, {31, 1}, {32, 2}, {255, 2}, {256, 3}, {65535, 3}, {65536, 5}, {70000, 5},
    };
    char *s = malloc(70000);
    assert_non_null(s);
    memset(s, 'a', 70000);
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        crdt_buf a = {0}, b = {0};
        msgpack_packer pk;
        crdt_val v;
        assert_int_equal(crdt_val_put_str(&a, s, c[i].len), 0);
        assert_int_equal(a.n, c[i].hdr + c[i].len);
        msgpack_packer_init(&pk, &b, mp_write);
        assert_int_equal(msgpack_pack_str_with_body(&pk, s, c[i].len), 0);
        assert_int_equal(a.n, b.n);
        assert_memory_equal(a.p, b.p, a.n);
        assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
        assert_int_equal(v.t, CRDT_V_STR);
        assert_int_equal(v.len, c[i].len);
        assert_ptr_equal(v.s, (const char *)a.p + c[i].hdr); /* borrowed */
        crdt_buf_free(&a);
        crdt_buf_free(&b);
    }
    free(s);
    /* UTF-8 passes through untouched. */
    crdt_buf a = {0};
    crdt_val v;
    assert_int_equal(crdt_val_put_str(&a, "张三", strlen("张三")), 0);
    assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
    assert_int_equal(v.len, 6);
    assert_memory_equal(v.s, "张三", 6);
    crdt_buf_free(&a);
    assert_int_equal(crdt_val_put_str(&a, NULL, 1), CRDT_EINVAL);
    assert_int_equal(crdt_val_put_str(&a, NULL, 0), 0);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.p[0], 0xa0);
    crdt_buf_free(&a);
}

static void test_nil_bool(void **state)
{
    (void)state;
    crdt_buf a = {0};
    crdt_val v;
    assert_int_equal(crdt_val_put_nil(&a), 0);
    assert_int_equal(crdt_val_put_bool(&a, true), 0);
    assert_int_equal(crdt_val_put_bool(&a, false), 0);
    assert_int_equal(a.n, 3);
    assert_memory_equal(a.p, "\xc0\xc3\xc2", 3);
    assert_int_equal(crdt_val_parse((crdt_blob){a.p, 1}, &v), 0);
    assert_int_equal(v.t, CRDT_V_NIL);
    assert_int_equal(crdt_val_parse((crdt_blob){a.p + 1, 1}, &v), 0);
    assert_int_equal(v.t, CRDT_V_BOOL);
    assert_true(v.b);
    assert_int_equal(crdt_val_parse((crdt_blob){a.p + 2, 1}, &v), 0);
    assert_int_equal(v.t, CRDT_V_BOOL);
    assert_false(v.b);
    /* Three values in a row are one value plus trailing bytes. */
    assert_int_equal(crdt_val_parse(blob(&a), &v), CRDT_ENONCANON);
    crdt_buf_free(&a);
    assert_int_equal(crdt_val_put_nil(NULL), CRDT_EINVAL);
    assert_int_equal(crdt_val_parse((crdt_blob){NULL, 0}, NULL), CRDT_EINVAL);
}

/* ---- maps ------------------------------------------------------------------------ */

static void test_map_sorted(void **state)
{
    (void)state;
    const char *keys[] = {"note", "date", "b", "aa", "a", "Z"};
    crdt_scalar vals[6] = {
        {.t = CRDT_V_STR, .s = "备注", .len = 6}, {.t = CRDT_V_STR, .s = "2026-01-02", .len = 10},
        {.t = CRDT_V_BOOL, .b = true}, {.t = CRDT_V_INT, .i = -200},
        {.t = CRDT_V_INT, .i = 300}, {.t = CRDT_V_STR, .s = "", .len = 0},
    };
    crdt_buf a = {0};
    crdt_val v;
    assert_int_equal(crdt_val_put_map(&a, keys, vals, 6), 0);
    assert_int_equal(a.p[0], 0x86);
    assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
    assert_int_equal(v.t, CRDT_V_MAP);
    assert_int_equal(v.nkv, 6);
    static const char *const want[] = {"Z", "a", "aa", "b", "date", "note"};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(v.kv[i].klen, strlen(want[i]));
        assert_memory_equal(v.kv[i].k, want[i], v.kv[i].klen);
    }
    assert_int_equal(v.kv[1].v.t, CRDT_V_INT);
    assert_true(v.kv[1].v.i == 300);
    assert_int_equal(v.kv[2].v.t, CRDT_V_INT);
    assert_true(v.kv[2].v.i == -200);
    assert_int_equal(v.kv[3].v.t, CRDT_V_BOOL);
    assert_int_equal(v.kv[5].v.len, 6);
    /* Any input order gives the same bytes. */
    const char *keys2[] = {"a", "Z", "note", "aa", "date", "b"};
    crdt_scalar vals2[6] = {vals[4], vals[5], vals[0], vals[3], vals[1], vals[2]};
    crdt_buf b = {0};
    assert_int_equal(crdt_val_put_map(&b, keys2, vals2, 6), 0);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.p, b.p, a.n);
    crdt_buf_free(&a);
    crdt_buf_free(&b);
    /* Empty map. */
    assert_int_equal(crdt_val_put_map(&a, NULL, NULL, 0), 0);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.p[0], 0x80);
    assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
    assert_int_equal(v.t, CRDT_V_MAP);
    assert_int_equal(v.nkv, 0);
    crdt_buf_free(&a);
}

static void test_map_limits(void **state)
{
    (void)state;
    char names[17][4];
    const char *keys[17];
    crdt_scalar vals[17];
    for (int i = 0; i < 17; i++) {
        snprintf(names[i], sizeof names[i], "k%02d", 16 - i);
        keys[i] = names[i];
        vals[i] = (crdt_scalar){.t = CRDT_V_INT, .i = i};
    }
    crdt_buf a = {0};
    crdt_val v;
    assert_int_equal(crdt_val_put_map(&a, keys, vals, 15), 0);
    assert_int_equal(a.p[0], 0x8f);
    crdt_buf_reset(&a);
    assert_int_equal(crdt_val_put_map(&a, keys, vals, 16), 0);
    assert_memory_equal(a.p, "\xde\x00\x10", 3);
    assert_int_equal(crdt_val_parse(blob(&a), &v), 0);
    assert_int_equal(v.nkv, 16);
    crdt_buf_reset(&a);
    assert_int_equal(crdt_val_put_map(&a, keys, vals, 17), CRDT_ECOUNT);
    assert_int_equal(a.n, 0);
    /* Duplicates, wherever they are. */
    const char *dup[] = {"b", "a", "c", "a"};
    assert_int_equal(crdt_val_put_map(&a, dup, vals, 4), CRDT_EDUPKEY);
    const char *dup2[] = {"x", "x"};
    assert_int_equal(crdt_val_put_map(&a, dup2, vals, 2), CRDT_EDUPKEY);
    assert_int_equal(a.n, 0);
    /* Bad scalar types. */
    crdt_scalar bad[1] = {{.t = CRDT_V_MAP}};
    const char *one[] = {"a"};
    assert_int_equal(crdt_val_put_map(&a, one, bad, 1), CRDT_EINVAL);
    bad[0].t = CRDT_V_NIL;
    assert_int_equal(crdt_val_put_map(&a, one, bad, 1), CRDT_EINVAL);
    assert_int_equal(a.n, 0);
    crdt_buf_free(&a);
}

/* ---- refusals ------------------------------------------------------------------- */

static void test_rejections(void **state)
{
    (void)state;
    static const struct { const char *hex; int rc; } c[] = {
        /* non-shortest ints */
        {"cc 05", CRDT_ENONCANON},
        {"cc 7f", CRDT_ENONCANON},
        {"cd 00 ff", CRDT_ENONCANON},
        {"ce 00 00 ff ff", CRDT_ENONCANON},
        {"cf 00 00 00 00 ff ff ff ff", CRDT_ENONCANON},
        {"d0 05", CRDT_ENONCANON},            /* positive as int8 */
        {"d0 ff", CRDT_ENONCANON},            /* -1 as int8 */
        {"d0 e0", CRDT_ENONCANON},            /* -32 as int8 */
        {"d1 00 80", CRDT_ENONCANON},         /* 128 as int16 */
        {"d1 ff 80", CRDT_ENONCANON},         /* -128 as int16 */
        {"d2 ff ff 80 00", CRDT_ENONCANON},   /* -32768 as int32 */
        {"d3 ff ff ff ff 80 00 00 00", CRDT_ENONCANON}, /* INT32_MIN as int64 */
        {"d3 00 00 00 00 00 00 00 01", CRDT_ENONCANON},
        /* non-shortest strings */
        {"d9 01 61", CRDT_ENONCANON},
        {"d9 00", CRDT_ENONCANON},
        {"da 00 01 61", CRDT_ENONCANON},
        {"db 00 00 00 01 61", CRDT_ENONCANON},
        /* maps: unsorted, duplicate, long headers */
        {"82 a1 62 01 a1 61 02", CRDT_ENONCANON},
        {"82 a1 61 01 a1 61 02", CRDT_ENONCANON},
        {"82 a2 61 61 01 a1 61 02", CRDT_ENONCANON}, /* "aa" before "a" */
        {"de 00 01 a1 61 01", CRDT_ENONCANON},
        {"df 00 00 00 01 a1 61 01", CRDT_ENONCANON},
        {"de 00 11", CRDT_ECOUNT},
        {"df 00 01 00 00", CRDT_ECOUNT},
        /* trailing bytes */
        {"01 02", CRDT_ENONCANON},
        {"a1 61 00", CRDT_ENONCANON},
        {"80 80", CRDT_ENONCANON},
        /* types values never take */
        {"ca 00 00 00 00", CRDT_ETYPE},
        {"cb 00 00 00 00 00 00 00 00", CRDT_ETYPE},
        {"c4 01 00", CRDT_ETYPE},
        {"c5 00 01 00", CRDT_ETYPE},
        {"90", CRDT_ETYPE},
        {"91 01", CRDT_ETYPE},
        {"dc 00 00", CRDT_ETYPE},
        {"c7 01 01 00", CRDT_ETYPE},
        {"d4 01 00", CRDT_ETYPE},
        {"c1", CRDT_ETYPE},
        {"cf 80 00 00 00 00 00 00 00", CRDT_ETYPE}, /* 2^63 */
        {"cf ff ff ff ff ff ff ff ff", CRDT_ETYPE},
        {"81 a1 61 80", CRDT_ETYPE},          /* nested map */
        {"81 a1 61 de 00 10", CRDT_ETYPE},
        {"81 a1 61 90", CRDT_ETYPE},          /* array in a map */
        {"81 a1 61 c0", CRDT_ETYPE},          /* nil in a map */
        {"81 01 01", CRDT_ETYPE},             /* int key */
        {"81 c0 01", CRDT_ETYPE},
        /* truncated */
        {"", CRDT_ETRUNC},
        {"cc", CRDT_ETRUNC},
        {"cd 01", CRDT_ETRUNC},
        {"cf 00 00 00 01 00 00 00", CRDT_ETRUNC},
        {"d3 ff", CRDT_ETRUNC},
        {"a3 61 62", CRDT_ETRUNC},
        {"d9", CRDT_ETRUNC},
        {"d9 20 61", CRDT_ETRUNC},
        {"db ff ff ff ff 61", CRDT_ETRUNC},
        {"82 a1 61 01", CRDT_ETRUNC},
        {"81 a1 61", CRDT_ETRUNC},
        {"de 00", CRDT_ETRUNC},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        crdt_val v;
        memset(&v, 0xab, sizeof v);
        int rc = parse_hex(c[i].hex, &v);
        if (rc != c[i].rc) fail_msg("'%s': got %d want %d", c[i].hex, rc, c[i].rc);
        assert_true(all_zero(&v, sizeof v)); /* outputs zeroed on failure */
    }
    /* The shortest forms of the same values are accepted. */
    static const char *const ok[] = {"05", "cc 80", "cd 01 00", "d0 df", "d1 ff 7f",
                                     "e0", "a1 61", "d9 20 6161616161616161616161616161616161616161616161616161616161616161",
                                     "82 a1 61 01 a1 62 02", "82 a1 61 01 a2 61 61 02", "80",
                                     "c0", "c2", "c3"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        crdt_val v;
        int rc = parse_hex(ok[i], &v);
        if (rc) fail_msg("'%s': got %d", ok[i], rc);
    }
}

/* ---- any accepted bytes re-encode to themselves -------------------------------- */

static int reencode(const crdt_val *v, crdt_buf *out)
{
    switch (v->t) {
    case CRDT_V_NIL: return crdt_val_put_nil(out);
    case CRDT_V_BOOL: return crdt_val_put_bool(out, v->b);
    case CRDT_V_INT: return crdt_val_put_int(out, v->i);
    case CRDT_V_STR: return crdt_val_put_str(out, v->s, v->len);
    case CRDT_V_MAP: {
        char kb[CRDT_VAL_MAP_MAX][8];
        const char *keys[CRDT_VAL_MAP_MAX];
        crdt_scalar vals[CRDT_VAL_MAP_MAX];
        for (uint32_t i = 0; i < v->nkv; i++) {
            assert_true(v->kv[i].klen < 8); /* generator keeps keys short */
            memcpy(kb[i], v->kv[i].k, v->kv[i].klen);
            kb[i][v->kv[i].klen] = 0;
            keys[i] = kb[i];
            vals[i] = v->kv[i].v;
        }
        return crdt_val_put_map(out, keys, vals, v->nkv);
    }
    default: return -1;
    }
}

static void test_accepted_is_canonical(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("val-canon"));
    static const uint8_t heads[] = {0x00, 0x7f, 0x80, 0x81, 0x82, 0x8f, 0xa0, 0xa1, 0xa2,
                                    0xc0, 0xc2, 0xc3, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1,
                                    0xd2, 0xd3, 0xd9, 0xde, 0xe0, 0xff, 0x61, 0x62};
    long accepted = 0;
    for (int it = 0; it < (int)tu_scaled(300000); it++) {
        uint8_t buf[24];
        size_t n = 1 + tu_below(&r, sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = tu_below(&r, 2) ? heads[tu_below(&r, sizeof heads)] : (uint8_t)tu_next(&r);
        crdt_val v;
        if (crdt_val_parse((crdt_blob){buf, (uint32_t)n}, &v) != 0) continue;
        if (v.t == CRDT_V_MAP)
            for (uint32_t i = 0; i < v.nkv; i++)
                if (v.kv[i].klen >= 8 || memchr(v.kv[i].k, 0, v.kv[i].klen)) goto next;
        accepted++;
        crdt_buf out = {0};
        assert_int_equal(reencode(&v, &out), 0);
        if (out.n != n || memcmp(out.p, buf, n) != 0) {
            char hex[64];
            tu_hex(buf, n, hex);
            fail_msg("accepted non-canonical bytes %s", hex);
        }
        crdt_buf_free(&out);
    next:;
    }
    assert_true(accepted > (long)tu_scaled(1000));
}

/* ---- order --------------------------------------------------------------------- */

static void test_blob_cmp(void **state)
{
    (void)state;
    crdt_blob a = {(const uint8_t *)"a", 1}, ab = {(const uint8_t *)"ab", 2},
              b = {(const uint8_t *)"b", 1}, e = {NULL, 0},
              hi = {(const uint8_t *)"\xff", 1}, lo = {(const uint8_t *)"\x01", 1};
    assert_int_equal(crdt_blob_cmp(a, a), 0);
    assert_true(crdt_blob_cmp(a, ab) < 0);
    assert_true(crdt_blob_cmp(ab, a) > 0);
    assert_true(crdt_blob_cmp(ab, b) < 0);
    assert_true(crdt_blob_cmp(e, a) < 0);
    assert_true(crdt_blob_cmp(a, e) > 0);
    assert_int_equal(crdt_blob_cmp(e, e), 0);
    assert_true(crdt_blob_cmp(lo, hi) < 0); /* unsigned bytes */
    assert_true(crdt_blob_cmp(hi, lo) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_boundaries),
        cmocka_unit_test(test_int_random),
        cmocka_unit_test(test_str_headers),
        cmocka_unit_test(test_nil_bool),
        cmocka_unit_test(test_map_sorted),
        cmocka_unit_test(test_map_limits),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_accepted_is_canonical),
        cmocka_unit_test(test_blob_cmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
