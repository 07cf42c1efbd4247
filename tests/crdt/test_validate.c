/*
 * test_validate.c — GB 11643-1999 ID numbers, mainland phone numbers and
 * dates (crdt/validate.c).
 *
 * The ID-number checks are compared with an independent reference: the
 * weights are computed as 2^(18-i) mod 11 (the ISO 7064 MOD 11-2 definition)
 * rather than taken from a table, and the check value as (12 - sum mod 11)
 * mod 11.  Dates are compared with a reference over every (y, m, d) in a
 * window around the accepted years.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "crdt.h"
#include "testutil.h"

/* ---- reference ------------------------------------------------------------ */

static char ref_check(const char *s17)
{
    int sum = 0;
    for (int i = 1; i <= 17; i++) {
        int w = 1;
        for (int k = 0; k < 18 - i; k++) w = (w * 2) % 11;
        sum += (s17[i - 1] - '0') * w;
    }
    int c = (12 - sum % 11) % 11;
    return c == 10 ? 'X' : (char)('0' + c);
}

static bool ref_date_ok(int y, int m, int d)
{
    bool lp = ((y % 4 == 0) ^ (y % 100 == 0)) ^ (y % 400 == 0);
    int dim;
    if (y < 1900 || y > 2100 || m < 1 || m > 12 || d < 1) return false;
    if (m == 2) dim = lp ? 29 : 28;
    else if (m == 4 || m == 6 || m == 9 || m == 11) dim = 30;
    else dim = 31;
    return d <= dim;
}

/* Build an 18-char ID number with the right check char. */
static void put_digits(char *p, unsigned v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10) p[i] = (char)('0' + v % 10);
}

static void make_id(char out[19], const char *region, int y, int m, int d, int seq)
{
    memcpy(out, region, 6);
    put_digits(out + 6, (unsigned)y, 4);
    put_digits(out + 10, (unsigned)m, 2);
    put_digits(out + 12, (unsigned)d, 2);
    put_digits(out + 14, (unsigned)seq, 3);
    out[17] = ref_check(out);
    out[18] = 0;
}

/* ---- ID numbers ------------------------------------------------------------ */

static void test_idnum_known(void **state)
{
    (void)state;
    /* The example printed in GB 11643-1999 and a classic textbook one. */
    assert_int_equal(crdt_idnum_check_char("11010519491231002"), 'X');
    assert_int_equal(crdt_check_idnum("11010519491231002X", 18), 0);
    assert_int_equal(crdt_idnum_check_char("44052418800101001"), '4');
    assert_int_equal(crdt_check_idnum("440524188001010014", 18), CRDT_EIDNUM); /* 1880 */
    assert_int_equal(crdt_idnum_check_char("44052419800101001"), ref_check("44052419800101001"));
    /* Not 17 digits: 0. */
    assert_int_equal(crdt_idnum_check_char("1101051949123100"), 0); /* 16 + NUL */
    assert_int_equal(crdt_idnum_check_char("1101051949123100A"), 0);
    assert_int_equal(crdt_idnum_check_char(NULL), 0);
    assert_int_equal(crdt_check_idnum(NULL, 18), CRDT_EIDNUM);
}

static void test_idnum_random_and_every_wrong_check(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_init(&r, tu_seed("idnum"));
    static const char cand[] = "0123456789X";
    int n_x = 0;
    for (int it = 0; it < (int)tu_scaled(20000); it++) {
        char region[7], id[19];
        int y = 1900 + (int)tu_below(&r, 201), m = 1 + (int)tu_below(&r, 12);
        int d = 1 + (int)tu_below(&r, 28);
        do {
            for (int i = 0; i < 6; i++) region[i] = (char)('0' + tu_below(&r, 10));
            region[6] = 0;
        } while (!strcmp(region, "000000"));
        make_id(id, region, y, m, d, (int)tu_below(&r, 1000));
        assert_int_equal(crdt_idnum_check_char(id), id[17]);
        assert_int_equal(crdt_check_idnum(id, 18), 0);
        /* Every other check character is refused. */
        char good = id[17];
        for (int c = 0; c < 11; c++) {
            if (cand[c] == good) continue;
            id[17] = cand[c];
            assert_int_equal(crdt_check_idnum(id, 18), CRDT_EIDNUM);
        }
        if (good == 'X') {
            n_x++;
            id[17] = 'x'; /* lowercase is not canonical */
            assert_int_equal(crdt_check_idnum(id, 18), CRDT_EIDNUM);
        }
        id[17] = good;
        /* A single changed digit is always detected by MOD 11-2. */
        int pos = (int)tu_below(&r, 17);
        char old = id[pos];
        id[pos] = (char)('0' + (old - '0' + 1 + (int)tu_below(&r, 9)) % 10);
        if (crdt_check_idnum(id, 18) == 0) {
            /* Only possible if the change broke nothing else: never, since
             * the checksum catches every single-digit error. */
            fail_msg("single-digit change undetected: %s", id);
        }
        id[pos] = old;
    }
    assert_true(n_x > 0);
}

static void test_idnum_dates(void **state)
{
    (void)state;
    static const struct { int y, m, d; bool ok; } cases[] = {
        {2000, 2, 29, true},  {2004, 2, 29, true},  {1900, 2, 29, false},
        {2100, 2, 29, false}, {2023, 2, 29, false}, {1999, 2, 30, false},
        {2024, 2, 30, false}, {2024, 4, 31, false}, {2024, 13, 1, false},
        {2024, 0, 10, false}, {2024, 1, 0, false},  {2024, 1, 32, false},
        {1899, 12, 31, false}, {2101, 1, 1, false}, {1900, 1, 1, true},
        {2100, 12, 31, true}, {1985, 6, 15, true},  {2024, 12, 31, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char id[19];
        make_id(id, "320102", cases[i].y, cases[i].m, cases[i].d, 123);
        assert_int_equal(crdt_check_idnum(id, 18), cases[i].ok ? 0 : CRDT_EIDNUM);
    }
    /* Region 000000 with a correct check char. */
    char id[19];
    make_id(id, "000000", 1980, 1, 1, 1);
    assert_int_equal(crdt_check_idnum(id, 18), CRDT_EIDNUM);
    make_id(id, "000001", 1980, 1, 1, 1);
    assert_int_equal(crdt_check_idnum(id, 18), 0);
}

static void test_idnum_shapes(void **state)
{
    (void)state;
    char id[19];
    make_id(id, "110105", 1990, 5, 17, 42);
    assert_int_equal(crdt_check_idnum(id, 18), 0);
    assert_int_equal(crdt_check_idnum(id, 17), CRDT_EIDNUM);
    assert_int_equal(crdt_check_idnum(id, 0), CRDT_EIDNUM);
    char longer[20];
    memcpy(longer, id, 18);
    longer[18] = '0';
    longer[19] = 0;
    assert_int_equal(crdt_check_idnum(longer, 19), CRDT_EIDNUM);
    /* 15-digit first-generation numbers are not accepted. */
    assert_int_equal(crdt_check_idnum("110105491231002", 15), CRDT_EIDNUM);
    /* Non-digits anywhere in the first 17, including an 'X'. */
    for (int pos = 0; pos < 17; pos++) {
        static const char bad[] = {'A', 'X', ' ', '-', '\0', '/', ':'};
        for (size_t b = 0; b < sizeof bad; b++) {
            char t[19];
            memcpy(t, id, 19);
            t[pos] = bad[b];
            assert_int_equal(crdt_check_idnum(t, 18), CRDT_EIDNUM);
        }
    }
    char t[19];
    memcpy(t, id, 19);
    t[17] = 'Y';
    assert_int_equal(crdt_check_idnum(t, 18), CRDT_EIDNUM);
}

/* ---- phones ---------------------------------------------------------------- */

static void test_phone(void **state)
{
    (void)state;
    static const char *const good[] = {
        "13800138000", "13912345678", "19912345678", "15000000000", "17012345678",
        "010-12345678", "01012345678", "021-1234567", "0755-1234567", "0755-12345678",
        "07551234567", "075512345678", "0101234567",
    };
    static const char *const bad[] = {
        "", "1", "12800138000", "10800138000", "1380013800", "138001380001",
        "1380013800a", "+8613800138000", "86-13800138000", " 13800138000",
        "13800138000 ", "138-0013-8000", "010-123456", "010-123456789",
        "10-12345678", "0-12345678", "01-12345678", "010--12345678",
        "0755-1234567-", "07555-1234567x", "0755-123456a", "00000", "0",
        "010-", "-12345678", "010 12345678", "０１０-12345678",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (crdt_check_phone(good[i], strlen(good[i])) != 0) fail_msg("rejected %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (crdt_check_phone(bad[i], strlen(bad[i])) != CRDT_EPHONE)
            fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(crdt_check_phone(NULL, 11), CRDT_EPHONE);
    /* Length is what counts, not a NUL: a prefix of a good number fails. */
    assert_int_equal(crdt_check_phone("13800138000", 10), CRDT_EPHONE);
    /* Every second digit for mobiles. */
    for (char c = '0'; c <= '9'; c++) {
        char m[12] = "13800138000";
        m[1] = c;
        assert_int_equal(crdt_check_phone(m, 11), c >= '3' ? 0 : CRDT_EPHONE);
    }
}

/* ---- dates ------------------------------------------------------------------- */

static void test_date_cases(void **state)
{
    (void)state;
    static const char *const good[] = {"2024-02-29", "2000-02-29", "1900-01-01",
                                       "2100-12-31", "2023-12-31", "1985-06-15"};
    static const char *const bad[] = {
        "", "2023-02-29", "1900-02-29", "2100-02-29", "2024-02-30", "2024-04-31",
        "2024-13-01", "2024-00-10", "2024-01-00", "1899-12-31", "2101-01-01",
        "2024/01/01", "2024-1-01", "24-01-01", "2024-01-011", " 2024-01-01",
        "2024-0a-01", "20240101", "2024-01-01T00:00", "+024-01-01", "2024-01--1",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (crdt_check_date(good[i], strlen(good[i])) != 0) fail_msg("rejected %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (crdt_check_date(bad[i], strlen(bad[i])) != CRDT_EDATE)
            fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(crdt_check_date(NULL, 10), CRDT_EDATE);
}

/* Calendar arithmetic: fixed points, and every day 1900..2100 maps to a
 * string crdt_check_date accepts and back to the same day number. */
static void test_date_days(void **state)
{
    (void)state;
    int64_t z = 1;
    assert_int_equal(crdt_date_days("1970-01-01", 10, &z), 0);
    assert_int_equal(z, 0);
    assert_int_equal(crdt_date_days("2000-03-01", 10, &z), 0);
    assert_int_equal(z, 11017);
    assert_int_equal(crdt_date_days("1900-01-01", 10, &z), 0);
    assert_int_equal(z, -25567);
    z = 42;
    assert_int_equal(crdt_date_days("2026-02-29", 10, &z), CRDT_EDATE);
    assert_int_equal(z, 42); /* untouched on failure */
    int64_t first = crdt_days_from_civil(1900, 1, 1), last = crdt_days_from_civil(2100, 12, 31);
    assert_int_equal(last - first + 1, 73414); /* 201 × 365 + 49 leap days (1904..2096) */
    for (int64_t day = first; day <= last; day++) {
        int y;
        unsigned m, d;
        char b[16];
        crdt_civil_from_days(day, &y, &m, &d);
        snprintf(b, sizeof b, "%04d-%02u-%02u", y, m, d);
        if (crdt_date_days(b, strlen(b), &z) || z != day)
            fail_msg("day %lld -> %s -> %lld", (long long)day, b, (long long)z);
    }
}

static void test_date_exhaustive(void **state)
{
    (void)state;
    int n_ok = 0;
    for (int y = 1890; y <= 2110; y++)
        for (int m = 0; m <= 13; m++)
            for (int d = 0; d <= 32; d++) {
                char s[16];
                snprintf(s, sizeof s, "%04d-%02d-%02d", y, m, d);
                bool want = ref_date_ok(y, m, d);
                int got = crdt_check_date(s, 10);
                if ((got == 0) != want) fail_msg("%s: got %d", s, got);
                n_ok += want;
            }
    /* 201 years, 49 of them leap (1900 and 2100 are not). */
    assert_int_equal(n_ok, 201 * 365 + 49);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idnum_known),
        cmocka_unit_test(test_idnum_random_and_every_wrong_check),
        cmocka_unit_test(test_idnum_dates),
        cmocka_unit_test(test_idnum_shapes),
        cmocka_unit_test(test_phone),
        cmocka_unit_test(test_date_cases),
        cmocka_unit_test(test_date_exhaustive),
        cmocka_unit_test(test_date_days),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
