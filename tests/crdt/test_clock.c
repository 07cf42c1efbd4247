/*
 * test_clock.c — hybrid logical clock, dots and version vectors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <cmocka.h>

#include "crdt.h"
#include "testutil.h"

static void test_hlc_now_monotonic(void **state)
{
    (void)state;
    crdt_hlc s = 0, a, b, c;
    assert_int_equal(crdt_hlc_now(&s, 1000, &a), 0);
    assert_int_equal(a, CRDT_HLC_MAKE(1000, 0));
    /* Same wall ms: counter advances. */
    assert_int_equal(crdt_hlc_now(&s, 1000, &b), 0);
    assert_int_equal(b, CRDT_HLC_MAKE(1000, 1));
    /* Wall clock going backwards never moves the HLC backwards. */
    assert_int_equal(crdt_hlc_now(&s, 500, &c), 0);
    assert_true(c > b);
    assert_int_equal(CRDT_HLC_MS(c), 1000);
    assert_int_equal(CRDT_HLC_CTR(c), 2);
}

static void test_hlc_counter_overflow(void **state)
{
    (void)state;
    crdt_hlc s = CRDT_HLC_MAKE(7, 0xffff), out;
    assert_int_equal(crdt_hlc_now(&s, 7, &out), 0);
    assert_int_equal(out, CRDT_HLC_MAKE(8, 0));
    s = CRDT_HLC_MAKE(CRDT_HLC_MS_MAX, 0xffff);
    crdt_hlc before = s;
    assert_int_equal(crdt_hlc_now(&s, 0, &out), CRDT_EHLC_RANGE);
    assert_int_equal(s, before);
    assert_int_equal(out, 0);
    assert_int_equal(crdt_hlc_now(&s, CRDT_HLC_MS_MAX + 1, &out), CRDT_EHLC_RANGE);
}

static void test_hlc_recv(void **state)
{
    (void)state;
    crdt_hlc s = CRDT_HLC_MAKE(1000, 5), out;
    /* Remote ahead within drift: adopt it and tick. */
    assert_int_equal(crdt_hlc_recv(&s, CRDT_HLC_MAKE(1500, 3), 1200, 1000, &out), 0);
    assert_int_equal(out, CRDT_HLC_MAKE(1500, 4));
    assert_int_equal(s, out);
    /* Remote behind: local wall clock wins. */
    assert_int_equal(crdt_hlc_recv(&s, CRDT_HLC_MAKE(10, 0), 2000, 1000, &out), 0);
    assert_int_equal(out, CRDT_HLC_MAKE(2000, 0));
    /* Equal HLCs: strictly greater result. */
    s = CRDT_HLC_MAKE(3000, 9);
    assert_int_equal(crdt_hlc_recv(&s, CRDT_HLC_MAKE(3000, 9), 3000, 1000, &out), 0);
    assert_int_equal(out, CRDT_HLC_MAKE(3000, 10));
    /* Too far ahead: refused, state unchanged. */
    s = CRDT_HLC_MAKE(3000, 0);
    assert_int_equal(crdt_hlc_recv(&s, CRDT_HLC_MAKE(3000 + 86400001, 0), 3000,
                                   86400000, &out), CRDT_EHLC_DRIFT);
    assert_int_equal(s, CRDT_HLC_MAKE(3000, 0));
    assert_int_equal(out, 0);
    /* Exactly at the drift bound: accepted. */
    assert_int_equal(crdt_hlc_recv(&s, CRDT_HLC_MAKE(3000 + 86400000, 0), 3000,
                                   86400000, &out), 0);
    assert_int_equal(crdt_hlc_now(NULL, 0, &out), CRDT_EINVAL);
}

static void test_hlc_random_monotonic(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("hlc"));
    crdt_hlc s = 0, prev = 0, out;
    uint64_t wall = 1700000000000ull;
    for (int i = 0; i < 100000; i++) {
        wall += tu_below(&r, 3);
        uint64_t w = wall - tu_below(&r, 5); /* jittery wall clock */
        int rc;
        if (tu_below(&r, 2)) {
            rc = crdt_hlc_now(&s, w, &out);
        } else {
            crdt_hlc remote = CRDT_HLC_MAKE(w + tu_below(&r, 2000) - 1000, tu_below(&r, 10));
            rc = crdt_hlc_recv(&s, remote, w, 500, &out);
            if (rc == CRDT_EHLC_DRIFT) continue;
            assert_true(out > remote);
        }
        assert_int_equal(rc, 0);
        assert_true(out > prev);
        prev = out;
    }
}

static void test_dot_cmp(void **state)
{
    (void)state;
    assert_true(crdt_dot_cmp((crdt_dot){1, 5}, (crdt_dot){2, 1}) < 0);
    assert_true(crdt_dot_cmp((crdt_dot){2, 5}, (crdt_dot){2, 1}) > 0);
    assert_int_equal(crdt_dot_cmp((crdt_dot){2, 5}, (crdt_dot){2, 5}), 0);
    assert_true(crdt_stamp_cmp((crdt_stamp){5, {9, 1}}, (crdt_stamp){5, {10, 1}}) < 0);
    assert_true(crdt_stamp_cmp((crdt_stamp){6, {1, 1}}, (crdt_stamp){5, {10, 1}}) > 0);
}

static void test_vv(void **state)
{
    (void)state;
    crdt_vv a = {0}, b = {0};
    assert_int_equal(crdt_vv_compare(&a, &b), CRDT_VV_EQUAL);
    assert_int_equal(crdt_vv_add(&a, (crdt_dot){3, 4}), 0);
    assert_int_equal(crdt_vv_add(&a, (crdt_dot){1, 2}), 0);
    assert_int_equal(crdt_vv_add(&a, (crdt_dot){3, 2}), 0); /* lower: no change */
    assert_int_equal(crdt_vv_get(&a, 3), 4);
    assert_int_equal(crdt_vv_get(&a, 1), 2);
    assert_int_equal(crdt_vv_get(&a, 2), 0);
    assert_true(crdt_vv_covers(&a, (crdt_dot){3, 4}));
    assert_false(crdt_vv_covers(&a, (crdt_dot){3, 5}));
    assert_int_equal(crdt_vv_add(&a, (crdt_dot){3, 0}), CRDT_EINVAL);
    assert_int_equal(crdt_vv_compare(&a, &b), CRDT_VV_AFTER);
    assert_int_equal(crdt_vv_compare(&b, &a), CRDT_VV_BEFORE);
    assert_int_equal(crdt_vv_add(&b, (crdt_dot){2, 1}), 0);
    assert_int_equal(crdt_vv_compare(&a, &b), CRDT_VV_CONCURRENT);
    assert_int_equal(crdt_vv_merge(&b, &a), 0);
    assert_int_equal(crdt_vv_compare(&a, &b), CRDT_VV_BEFORE);
    assert_int_equal(crdt_vv_get(&b, 3), 4);
    assert_int_equal(b.n, 3);
    for (uint32_t i = 1; i < b.n; i++) assert_true(b.e[i - 1].dev < b.e[i].dev);
    crdt_vv_free(&a);
    crdt_vv_free(&b);
}

static void test_vv_random(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("vv"));
    for (int it = 0; it < 2000; it++) {
        crdt_vv a = {0}, b = {0}, ab = {0}, ba = {0};
        uint64_t ma[8] = {0}, mb[8] = {0};
        for (int i = 0; i < 10; i++) {
            crdt_dot d = {(uint32_t)tu_below(&r, 8), 1 + tu_below(&r, 20)};
            crdt_vv_add(&a, d);
            if (d.seq > ma[d.dev]) ma[d.dev] = d.seq;
            d = (crdt_dot){(uint32_t)tu_below(&r, 8), 1 + tu_below(&r, 20)};
            crdt_vv_add(&b, d);
            if (d.seq > mb[d.dev]) mb[d.dev] = d.seq;
        }
        crdt_vv_merge(&ab, &a);
        crdt_vv_merge(&ab, &b);
        crdt_vv_merge(&ba, &b);
        crdt_vv_merge(&ba, &a);
        assert_int_equal(crdt_vv_compare(&ab, &ba), CRDT_VV_EQUAL);
        bool a_ge = true, b_ge = true;
        for (uint32_t d = 0; d < 8; d++) {
            uint64_t m = ma[d] > mb[d] ? ma[d] : mb[d];
            assert_int_equal(crdt_vv_get(&ab, d), m);
            if (ma[d] < mb[d]) a_ge = false;
            if (mb[d] < ma[d]) b_ge = false;
        }
        int want = a_ge && b_ge ? CRDT_VV_EQUAL : a_ge ? CRDT_VV_AFTER
                 : b_ge ? CRDT_VV_BEFORE : CRDT_VV_CONCURRENT;
        assert_int_equal(crdt_vv_compare(&a, &b), want);
        crdt_vv_free(&a);
        crdt_vv_free(&b);
        crdt_vv_free(&ab);
        crdt_vv_free(&ba);
    }
}

static void test_arena_cap(void **state)
{
    (void)state;
    crdt_arena *a = crdt_arena_new(100);
    assert_non_null(crdt_arena_alloc(a, 40));
    assert_non_null(crdt_arena_alloc(a, 40)); /* 48 + 48 = 96 */
    assert_null(crdt_arena_alloc(a, 10));      /* would reach 112 > 100 */
    assert_int_equal(crdt_arena_used(a), 96);
    crdt_arena_reset(a);
    assert_int_equal(crdt_arena_used(a), 0);
    void *p = crdt_arena_alloc(a, 100 - 4);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 16, 0);
    crdt_arena_free(a);
    crdt_arena *u = crdt_arena_new(0);
    for (int i = 0; i < 1000; i++) assert_non_null(crdt_arena_alloc(u, 1000));
    crdt_arena_free(u);
}

static void test_strerror_complete(void **state)
{
    (void)state;
    const char *fallback = crdt_strerror(-9999);
    for (int c = 0; c >= -81; c--) {
        const char *m = crdt_strerror(c);
        assert_non_null(m);
        (void)fallback;
    }
    /* Every documented code has its own text. */
    static const int codes[] = {
        CRDT_ENOMEM, CRDT_EINVAL, CRDT_EHLC_DRIFT, CRDT_EHLC_RANGE, CRDT_ETRUNC,
        CRDT_ETRAILING, CRDT_EDEPTH, CRDT_ECOUNT, CRDT_ELENGTH, CRDT_ESTRLEN,
        CRDT_EBINLEN, CRDT_EEXT, CRDT_EDUPKEY, CRDT_EMAPKEY, CRDT_EUTF8,
        CRDT_ERESERVED, CRDT_ETOOBIG, CRDT_EFLOAT, CRDT_ETYPE, CRDT_EMISSING,
        CRDT_EUNKNOWNKEY, CRDT_ENONCANON, CRDT_ERANGE, CRDT_ERECID,
        CRDT_ETOOMANYOPS, CRDT_EOPCODE, CRDT_EDUPOP, CRDT_EOBS, CRDT_ENOOPS,
        CRDT_EKIND, CRDT_EFIELD, CRDT_EOP, CRDT_EVALUE, CRDT_EIDNUM, CRDT_EPHONE,
        CRDT_EDATE, CRDT_EENUM, CRDT_EKEY, CRDT_ETEXT, CRDT_EBLANK, CRDT_ESCHEMA,
        CRDT_EMISMATCH, CRDT_ECORRUPT};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        assert_string_not_equal(crdt_strerror(codes[i]), fallback);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hlc_now_monotonic),
        cmocka_unit_test(test_hlc_counter_overflow),
        cmocka_unit_test(test_hlc_recv),
        cmocka_unit_test(test_hlc_random_monotonic),
        cmocka_unit_test(test_dot_cmp),
        cmocka_unit_test(test_vv),
        cmocka_unit_test(test_vv_random),
        cmocka_unit_test(test_arena_cap),
        cmocka_unit_test(test_strerror_complete),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
