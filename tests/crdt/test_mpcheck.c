/*
 * test_mpcheck.c — the bounded msgpack walk (crdt_mp_check) and the UTF-8
 * rule (crdt_utf8_valid).
 *
 *   - a table-driven catalogue: hex input (optionally with a repeated unit
 *     in front, for deep nesting) -> expected code and err_off;
 *   - generated cases too big for the table: limits exactly at and one past
 *     max_str / max_entries / max_msg, maps of 1024 and 1025 entries,
 *     duplicate keys far apart, the map-key scratch cap;
 *   - every prefix of a valid multi-field map is refused with ETRUNC or
 *     ELENGTH;
 *   - crdt_utf8_valid against an independent reference decoder on every
 *     1-, 2- and 3-byte string and a large slice of 4-byte strings;
 *   - randomized: random byte strings, and random valid encodings (every
 *     header width) plus mutations of them.  Never a crash, the result is
 *     deterministic, generated valid values are accepted, and whatever is
 *     accepted is accepted by msgpack-c too (consuming exactly n bytes) and
 *     obeys every rule when inspected as a msgpack_object.
 * Seeded via tu_seed (replay with DOORSTEP_SEED=N); DOORSTEP_LONG=1 runs
 * ten times as many random iterations.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <msgpack.h>

#include "crdt.h"
#include "testutil.h"

/* ---- limits used by the catalogue ---------------------------------------- */

static const crdt_limits lim_small = {262144u, 8u, 1024u, 4u, 4u, 64u};   /* str/bin <= 4 */
static const crdt_limits lim_msg4 = {4u, 8u, 1024u, 4096u, 262144u, 64u}; /* msg <= 4 */
static const crdt_limits lim_huge = {262144u, 8u, UINT32_MAX, 4096u, 262144u, 64u};
static const crdt_limits lim_depth2 = {262144u, 2u, 1024u, 4096u, 262144u, 64u};
static const crdt_limits lim_depth64 = {262144u, 64u, 1024u, 4096u, 262144u, 64u};
static const crdt_limits lim_entries2 = {262144u, 8u, 2u, 4096u, 262144u, 64u};
/* As crdt/record.c uses for stored records. */
static const crdt_limits lim_record = {64u << 20, 8u, 1u << 20, 4096u, 64u << 20, 64u};

/* ---- the catalogue -------------------------------------------------------- */

typedef struct mp_case {
    const char *name;
    const char *rep;          /* hex repeated nrep times before hex, or NULL */
    unsigned nrep;
    const char *hex;
    const crdt_limits *lim;   /* NULL: crdt_limits_default */
    int rc;
    long off;                 /* expected err_off; -1: not checked */
} mp_case;

#define OK(name, hex) {name, NULL, 0, hex, NULL, 0, 0}
#define BAD(name, hex, rc, off) {name, NULL, 0, hex, NULL, rc, off}
#define BADL(name, hex, lim, rc, off) {name, NULL, 0, hex, lim, rc, off}

static const mp_case cases[] = {
    /* scalars, every format */
    OK("nil", "c0"),
    OK("false", "c2"),
    OK("true", "c3"),
    OK("fixint 0", "00"),
    OK("fixint 127", "7f"),
    OK("neg fixint -32", "e0"),
    OK("neg fixint -1", "ff"),
    OK("uint8", "cc ff"),
    OK("uint16", "cd ffff"),
    OK("uint32", "ce ffffffff"),
    OK("uint64 max", "cf ffffffffffffffff"),
    OK("int8 min", "d0 80"),
    OK("int16 min", "d1 8000"),
    OK("int32 min", "d2 80000000"),
    OK("int64 min", "d3 8000000000000000"),
    OK("fixstr empty", "a0"),
    OK("fixstr", "a3 616263"),
    OK("str8", "d9 03 616263"),
    OK("str16", "da 0003 616263"),
    OK("str32", "db 00000003 616263"),
    OK("fixstr 31", "bf 61616161616161616161616161616161616161616161616161616161616161"),
    OK("bin8 empty", "c4 00"),
    OK("bin8", "c4 02 0102"),
    OK("bin16", "c5 0002 0102"),
    OK("bin32", "c6 00000002 0102"),
    OK("fixarray empty", "90"),
    OK("fixarray", "93 c0 01 a0"),
    OK("array16", "dc 0001 c0"),
    OK("array32", "dd 00000001 c0"),
    OK("array16 empty", "dc 0000"),
    OK("fixmap empty", "80"),
    OK("fixmap", "81 a161 01"),
    OK("map16", "de 0001 a161 01"),
    OK("map32", "df 00000001 a161 01"),
    OK("map32 empty", "df 00000000"),
    OK("str8 key", "82 d901 61 01 a162 02"),
    OK("nested same keys in different maps", "82 a161 81 a161 01 a162 81 a161 02"),
    OK("key a prefix of another", "82 a161 01 a26161 02"),
    OK("empty key", "82 a0 01 a161 02"),
    OK("array holding maps", "92 81 a161 01 81 a161 01"),

    /* UTF-8 */
    OK("utf8 zhangsan", "a6 e5bca0e4b889"),
    OK("utf8 yibao key", "81 a6 e58cbbe4bf9d c3"),
    OK("utf8 emoji", "a4 f09f9880"),
    OK("utf8 U+D7FF", "a3 ed9fbf"),
    OK("utf8 U+E000", "a3 ee8080"),
    OK("utf8 U+10FFFF", "a4 f48fbfbf"),
    OK("utf8 NUL", "a1 00"),
    BAD("utf8 overlong c0 80", "a2 c080", CRDT_EUTF8, 1),
    BAD("utf8 overlong c1 bf", "a2 c1bf", CRDT_EUTF8, 1),
    BAD("utf8 overlong e0 80 80", "a3 e08080", CRDT_EUTF8, 1),
    BAD("utf8 overlong f0 8f bf bf", "a4 f08fbfbf", CRDT_EUTF8, 1),
    BAD("utf8 surrogate ed a0 80", "a3 eda080", CRDT_EUTF8, 1),
    BAD("utf8 surrogate ed bf bf", "a3 edbfbf", CRDT_EUTF8, 1),
    BAD("utf8 above U+10FFFF", "a4 f4908080", CRDT_EUTF8, 1),
    BAD("utf8 f5", "a4 f5808080", CRDT_EUTF8, 1),
    BAD("utf8 ff", "a1 ff", CRDT_EUTF8, 1),
    BAD("utf8 lone continuation", "a1 80", CRDT_EUTF8, 1),
    BAD("utf8 truncated e4 b8", "a2 e4b8", CRDT_EUTF8, 1),
    BAD("utf8 truncated after ascii", "a3 61 e4b8", CRDT_EUTF8, 2),
    BAD("utf8 bad continuation", "a3 e4 41 89", CRDT_EUTF8, 1),
    BAD("utf8 bad 4th byte", "a4 f09f98 41", CRDT_EUTF8, 1),
    BAD("utf8 in map key", "81 a2 c080 01", CRDT_EUTF8, 2),
    BAD("utf8 in str16", "da 0002 e4b8", CRDT_EUTF8, 3),

    /* floats, ext, reserved */
    BAD("float32", "ca 00000000", CRDT_EFLOAT, 0),
    BAD("float64", "cb 0000000000000000", CRDT_EFLOAT, 0),
    BAD("float32 in array", "92 c0 ca 3f800000", CRDT_EFLOAT, 2),
    BAD("float truncated", "ca", CRDT_EFLOAT, 0),
    BAD("fixext1", "d4 01 00", CRDT_EEXT, 0),
    BAD("fixext2", "d5 01 0000", CRDT_EEXT, 0),
    BAD("fixext4", "d6 01 00000000", CRDT_EEXT, 0),
    BAD("fixext8", "d7 01 0000000000000000", CRDT_EEXT, 0),
    BAD("fixext16", "d8 01 00000000000000000000000000000000", CRDT_EEXT, 0),
    BAD("ext8", "c7 01 01 00", CRDT_EEXT, 0),
    BAD("ext16", "c8 0001 01 00", CRDT_EEXT, 0),
    BAD("ext32", "c9 00000001 01 00", CRDT_EEXT, 0),
    BAD("ext as map value", "81 a161 d4 0100", CRDT_EEXT, 3),
    BAD("reserved c1", "c1", CRDT_ERESERVED, 0),
    BAD("reserved c1 in array", "92 c0 c1", CRDT_ERESERVED, 2),
    BAD("reserved c1 as map key", "81 c1 c0", CRDT_ERESERVED, 1),

    /* empty, trailing, truncated headers */
    BAD("empty", "", CRDT_ETRUNC, 0),
    BAD("trailing byte", "c0 c0", CRDT_ETRAILING, 1),
    BAD("trailing after array", "91 c0 00", CRDT_ETRAILING, 2),
    BAD("trailing after map", "81 a161 01 ff", CRDT_ETRAILING, 4),
    BAD("uint16 cut", "cd 00", CRDT_ETRUNC, 0),
    BAD("uint64 cut", "cf 00000000000000", CRDT_ETRUNC, 0),
    BAD("int32 cut", "92 c0 d2 0000", CRDT_ETRUNC, 2),
    BAD("str8 header cut", "d9", CRDT_ETRUNC, 0),
    BAD("str16 header cut", "da 00", CRDT_ETRUNC, 0),
    BAD("bin32 header cut", "c6 0000", CRDT_ETRUNC, 0),
    BAD("array16 header cut", "dc 00", CRDT_ETRUNC, 0),
    BAD("map32 header cut", "df 000000", CRDT_ETRUNC, 0),
    BAD("value missing after nested", "92 91 c0", CRDT_ETRUNC, 3),
    BAD("map value missing", "82 a161 01 a162", CRDT_ETRUNC, 6),

    /* declared lengths and counts beyond the input */
    BAD("array32 ff000000 (count first)", "dd ff000000", CRDT_ECOUNT, 0),
    BADL("array32 ff000000, huge max_entries", "dd ff000000", &lim_huge, CRDT_ELENGTH, 0),
    BAD("map32 ff000000", "df ff000000", CRDT_ECOUNT, 0),
    BADL("map32 ff000000, huge max_entries", "df ff000000", &lim_huge, CRDT_ECOUNT, 0),
    BADL("map16 ffff, huge max_entries", "de ffff", &lim_huge, CRDT_ECOUNT, 0),
    BADL("map16 0fff, huge max_entries", "de 0fff a161 01", &lim_huge, CRDT_ELENGTH, 0),
    BAD("array16 count > bytes", "dc 0002 c0", CRDT_ELENGTH, 0),
    BAD("fixarray count > bytes", "92 c0", CRDT_ELENGTH, 0),
    BAD("fixmap needs 2k bytes", "82 a161 01", CRDT_ELENGTH, 0),
    BAD("inner array count > bytes", "92 c0 93 c0", CRDT_ELENGTH, 2),
    BAD("fixstr len > bytes", "a5 6162", CRDT_ELENGTH, 0),
    BAD("str8 len > bytes", "d9 05 61", CRDT_ELENGTH, 0),
    BAD("str32 len > bytes", "db 00000fff 61", CRDT_ELENGTH, 0),
    BAD("str32 huge (strlen first)", "db ffffffff 61", CRDT_ESTRLEN, 0),
    BAD("bin8 len > bytes", "c4 05 00", CRDT_ELENGTH, 0),
    BAD("bin32 huge (binlen first)", "c6 ffffffff 00", CRDT_EBINLEN, 0),
    BAD("bin in map len > bytes", "81 a162 c4 09 00", CRDT_ELENGTH, 3),

    /* limits */
    BADL("str at max_str", "a4 61626364", &lim_small, 0, 0),
    BADL("str max_str+1", "a5 6162636465", &lim_small, CRDT_ESTRLEN, 0),
    BADL("key max_str+1", "81 a5 6162636465 c0", &lim_small, CRDT_ESTRLEN, 1),
    BADL("bin at max_bin", "c4 04 01020304", &lim_small, 0, 0),
    BADL("bin max_bin+1", "c4 05 0102030405", &lim_small, CRDT_EBINLEN, 0),
    BADL("message at max_msg", "93 c0c0c0", &lim_msg4, 0, 0),
    BADL("message max_msg+1", "94 c0c0c0c0", &lim_msg4, CRDT_ETOOBIG, 4),
    BADL("too big beats everything", "c1 c1 c1 c1 c1", &lim_msg4, CRDT_ETOOBIG, 4),
    BADL("array at max_entries", "92 c0 c0", &lim_entries2, 0, 0),
    BADL("array max_entries+1", "93 c0 c0 c0", &lim_entries2, CRDT_ECOUNT, 0),
    BADL("map max_entries+1", "83 a161 01 a162 02 a163 03", &lim_entries2, CRDT_ECOUNT, 0),
    BADL("nesting at depth 2", "91 91 c0", &lim_depth2, 0, 0),
    BADL("nesting depth 3", "91 91 91 c0", &lim_depth2, CRDT_EDEPTH, 2),
    BADL("map nesting depth 3", "81 a161 81 a161 81 a161 c0", &lim_depth2, CRDT_EDEPTH, 6),
    BADL("empty container at depth 3", "91 91 90", &lim_depth2, CRDT_EDEPTH, 2),
    {"nesting at default max (8)", "91", 8, "c0", NULL, 0, 0},
    {"nesting default max+1 (9)", "91", 9, "c0", NULL, CRDT_EDEPTH, 8},
    {"1000-deep arrays", "91", 1000, "c0", NULL, CRDT_EDEPTH, 8},
    {"1000-deep maps", "81a161", 1000, "c0", NULL, CRDT_EDEPTH, 24},
    {"nesting at 64", "91", 64, "c0", &lim_depth64, 0, 0},
    {"1000-deep at max_depth 64", "91", 1000, "c0", &lim_depth64, CRDT_EDEPTH, 64},
    {"1000-deep truncated", "91", 1000, "", NULL, CRDT_EDEPTH, 8},

    /* map keys */
    BAD("int key", "81 01 c0", CRDT_EMAPKEY, 1),
    BAD("nil key", "81 c0 c0", CRDT_EMAPKEY, 1),
    BAD("array key", "81 91 c0 c0", CRDT_EMAPKEY, 1),
    BAD("map key", "81 80 c0", CRDT_EMAPKEY, 1),
    BAD("bin key", "81 c4 01 61 c0", CRDT_EMAPKEY, 1),
    BAD("bool key in 2nd entry", "82 a161 01 c3 02", CRDT_EMAPKEY, 4),
    BAD("int key in nested map", "81 a161 81 05 c0", CRDT_EMAPKEY, 4),
    BAD("dup keys adjacent", "82 a161 01 a161 02", CRDT_EDUPKEY, 4),
    BAD("dup keys far apart",
        "8a a161 00 a162 00 a163 00 a164 00 a165 00 a166 00 a167 00 a168 00 a169 00 a161 00",
        CRDT_EDUPKEY, 28),
    BAD("dup keys, different str formats", "82 a161 01 da0001 61 02", CRDT_EDUPKEY, 4),
    BAD("dup empty keys", "82 a0 01 a0 02", CRDT_EDUPKEY, 3),
    BAD("dup keys, earliest repeat reported", "84 a162 00 a161 00 a161 00 a162 00", CRDT_EDUPKEY, 7),
    BAD("dup keys in inner map", "82 a161 82 a178 01 a178 02 a162 00", CRDT_EDUPKEY, 7),
    BAD("dup keys in outer map after inner",
        "83 a161 81 a161 01 a162 00 a161 00", CRDT_EDUPKEY, 10),
    BAD("dup keys with map values", "82 a16b 81 a161 01 a16b 81 a161 01", CRDT_EDUPKEY, 7),
    BAD("dup reported at map close (later error first)", "83 a161 01 a161 02 a162 ca",
        CRDT_EFLOAT, 9),
};

/* Build the input of a case into a malloc'd buffer. */
static uint8_t *case_bytes(const mp_case *c, size_t *n)
{
    size_t unit_hex = c->rep ? strlen(c->rep) : 0;
    size_t cap = (unit_hex / 2) * c->nrep + strlen(c->hex) / 2 + 1;
    uint8_t *buf = malloc(cap);
    size_t at = 0;
    assert_non_null(buf);
    for (unsigned i = 0; i < c->nrep; i++) {
        long k = tu_unhex(c->rep, buf + at, cap - at);
        assert_true(k >= 0);
        at += (size_t)k;
    }
    long k = tu_unhex(c->hex, buf + at, cap - at);
    assert_true(k >= 0);
    *n = at + (size_t)k;
    return buf;
}

static void test_catalogue(void **state)
{
    (void)state;
    size_t ncase = sizeof cases / sizeof cases[0];
    int failures = 0;
    assert_true(ncase >= 40);
    for (size_t i = 0; i < ncase; i++) {
        const mp_case *c = &cases[i];
        const crdt_limits *lim = c->lim ? c->lim : &crdt_limits_default;
        size_t n, off = 12345;
        uint8_t *p = case_bytes(c, &n);
        int rc = crdt_mp_check(p, n, lim, &off);
        long want_off = c->rc == 0 ? 0 : c->off;
        if (rc != c->rc || (want_off >= 0 && off != (size_t)want_off)) {
            fprintf(stderr, "case %zu \"%s\": got %d (%s) at %zu, want %d (%s) at %ld\n", i,
                    c->name, rc, crdt_strerror(rc), off, c->rc, crdt_strerror(c->rc), want_off);
            failures++;
        }
        /* err_off is optional. */
        assert_int_equal(crdt_mp_check(p, n, lim, NULL), rc);
        free(p);
    }
    fprintf(stderr, "catalogue: %zu cases\n", ncase);
    assert_int_equal(failures, 0);
}

/* ---- arguments ------------------------------------------------------------ */

static void test_invalid_args(void **state)
{
    (void)state;
    const uint8_t nil = 0xc0;
    crdt_limits deep = crdt_limits_default;
    size_t off = 99;
    assert_int_equal(crdt_mp_check(&nil, 1, NULL, &off), CRDT_EINVAL);
    assert_int_equal(off, 0);
    assert_int_equal(crdt_mp_check(NULL, 1, &crdt_limits_default, &off), CRDT_EINVAL);
    assert_int_equal(crdt_mp_check(NULL, 0, &crdt_limits_default, &off), CRDT_ETRUNC);
    deep.max_depth = 65;
    assert_int_equal(crdt_mp_check(&nil, 1, &deep, &off), CRDT_EINVAL);
    deep.max_depth = 64;
    assert_int_equal(crdt_mp_check(&nil, 1, &deep, &off), 0);
    assert_int_equal(off, 0);
    /* max_depth 0: scalars only. */
    deep.max_depth = 0;
    assert_int_equal(crdt_mp_check(&nil, 1, &deep, NULL), 0);
    const uint8_t arr[] = {0x90};
    assert_int_equal(crdt_mp_check(arr, 1, &deep, &off), CRDT_EDEPTH);
    assert_true(crdt_utf8_valid(NULL, 0));
    assert_false(crdt_utf8_valid(NULL, 1));
}

/* ---- generated big cases -------------------------------------------------- */

typedef struct obuf {
    uint8_t *p;
    size_t n, cap;
} obuf;

static void ob_put(obuf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void ob_byte(obuf *b, uint8_t v) { ob_put(b, &v, 1); }

static void ob_be(obuf *b, uint64_t v, unsigned bytes)
{
    for (unsigned i = bytes; i-- > 0;) ob_byte(b, (uint8_t)(v >> (8 * i)));
}

/* Shortest headers. */
static void ob_map_hdr(obuf *b, uint32_t k)
{
    if (k < 16) ob_byte(b, (uint8_t)(0x80 | k));
    else if (k <= 0xffff) { ob_byte(b, 0xde); ob_be(b, k, 2); }
    else { ob_byte(b, 0xdf); ob_be(b, k, 4); }
}

static void ob_array_hdr(obuf *b, uint32_t k)
{
    if (k < 16) ob_byte(b, (uint8_t)(0x90 | k));
    else if (k <= 0xffff) { ob_byte(b, 0xdc); ob_be(b, k, 2); }
    else { ob_byte(b, 0xdd); ob_be(b, k, 4); }
}

static void ob_str(obuf *b, const void *s, uint32_t len)
{
    if (len < 32) ob_byte(b, (uint8_t)(0xa0 | len));
    else if (len <= 0xff) { ob_byte(b, 0xd9); ob_be(b, len, 1); }
    else if (len <= 0xffff) { ob_byte(b, 0xda); ob_be(b, len, 2); }
    else { ob_byte(b, 0xdb); ob_be(b, len, 4); }
    ob_put(b, s, len);
}

static int check(const obuf *b, const crdt_limits *lim, size_t *off)
{
    return crdt_mp_check(b->p, b->n, lim, off);
}

/* A map of k entries "k%05u" -> nil; if dup, the last key repeats key 0.
 * *last_key receives the offset of the last key's header. */
static void make_map(obuf *b, uint32_t k, bool dup, size_t *last_key)
{
    char key[16];
    b->n = 0;
    ob_map_hdr(b, k);
    for (uint32_t i = 0; i < k; i++) {
        snprintf(key, sizeof key, "k%05u", (dup && i == k - 1) ? 0u : i);
        if (last_key) *last_key = b->n;
        ob_str(b, key, (uint32_t)strlen(key));
        ob_byte(b, 0xc0);
    }
}

static void test_big_maps(void **state)
{
    (void)state;
    obuf b = {0};
    size_t off, last;
    make_map(&b, 1024, false, NULL);
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    make_map(&b, 1025, false, NULL);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_ECOUNT);
    assert_int_equal(off, 0);
    make_map(&b, 1024, true, &last);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_EDUPKEY);
    assert_int_equal(off, last);
    /* Keys in descending order (heapsort's worst friend is fine). */
    b.n = 0;
    ob_map_hdr(&b, 1000);
    for (uint32_t i = 1000; i-- > 0;) {
        char key[16];
        snprintf(key, sizeof key, "%u", i);
        ob_str(&b, key, (uint32_t)strlen(key));
        ob_byte(&b, (uint8_t)(i & 0x7f));
    }
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    /* Generous limits (as for stored records): arrays up to max_entries, but
     * maps stop at the 4096-key scratch cap. */
    make_map(&b, 4096, false, NULL);
    assert_int_equal(check(&b, &lim_record, &off), 0);
    make_map(&b, 4096, true, &last);
    assert_int_equal(check(&b, &lim_record, &off), CRDT_EDUPKEY);
    assert_int_equal(off, last);
    make_map(&b, 4097, false, NULL);
    assert_int_equal(check(&b, &lim_record, &off), CRDT_ECOUNT);
    assert_int_equal(off, 0);
    b.n = 0;
    ob_array_hdr(&b, 100000);
    for (uint32_t i = 0; i < 100000; i++) ob_byte(&b, 0xc0);
    assert_int_equal(check(&b, &lim_record, &off), 0);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_ECOUNT);
    /* Arrays: 1024 ok, 1025 refused. */
    b.n = 0;
    ob_array_hdr(&b, 1024);
    for (int i = 0; i < 1024; i++) ob_byte(&b, 0xc0);
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    b.n = 0;
    ob_array_hdr(&b, 1025);
    for (int i = 0; i < 1025; i++) ob_byte(&b, 0xc0);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_ECOUNT);
    /* 16 maps of 1024 keys inside one array (128 KiB), each key reused
     * across maps: fine; the scratch is per map. */
    b.n = 0;
    ob_array_hdr(&b, 16);
    for (int m = 0; m < 16; m++) {
        ob_map_hdr(&b, 1024);
        for (uint32_t i = 0; i < 1024; i++) {
            char key[16];
            snprintf(key, sizeof key, "k%05u", i);
            ob_str(&b, key, (uint32_t)strlen(key));
            ob_byte(&b, 0x01);
        }
    }
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    free(b.p);
}

static void test_big_strings(void **state)
{
    (void)state;
    obuf b = {0};
    size_t off;
    uint32_t max = crdt_limits_default.max_str;
    char *s = malloc(max + 1);
    assert_non_null(s);
    memset(s, 'a', max + 1);
    ob_str(&b, s, max);
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    b.n = 0;
    ob_str(&b, s, max + 1);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_ESTRLEN);
    assert_int_equal(off, 0);
    /* 张 repeated: 3 bytes each; a split character at the end is EUTF8. */
    for (uint32_t i = 0; i + 3 <= max; i += 3) memcpy(s + i, "\xe5\xbc\xa0", 3);
    b.n = 0;
    ob_str(&b, s, max - max % 3);
    assert_int_equal(check(&b, &crdt_limits_default, &off), 0);
    b.n = 0;
    ob_str(&b, s, max - max % 3 - 1);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_EUTF8);
    assert_int_equal(off, 3 + (max - max % 3) - 3);
    free(s);

    /* bin at max_bin, and one over. */
    uint32_t bmax = crdt_limits_default.max_bin;
    b.n = 0;
    ob_byte(&b, 0xc6);
    ob_be(&b, bmax, 4);
    for (uint32_t i = 0; i < bmax; i++) ob_byte(&b, (uint8_t)i);
    assert_int_equal(b.n, 5 + (size_t)bmax);
    /* 5 + max_bin > max_msg with the defaults: raise max_msg. */
    crdt_limits lim = crdt_limits_default;
    lim.max_msg = 5 + (size_t)bmax;
    assert_int_equal(check(&b, &lim, &off), 0);
    assert_int_equal(check(&b, &crdt_limits_default, &off), CRDT_ETOOBIG);
    assert_int_equal(off, crdt_limits_default.max_msg);
    b.p[4]++;  /* declare max_bin + 1 */
    assert_int_equal(check(&b, &lim, &off), CRDT_EBINLEN);
    free(b.p);
}

static void test_too_big(void **state)
{
    (void)state;
    size_t max = crdt_limits_default.max_msg, off;
    uint8_t *p = malloc(max + 1);
    assert_non_null(p);
    /* bin32 of max-5 bytes: exactly max_msg. */
    p[0] = 0xc6;
    p[1] = (uint8_t)((max - 5) >> 24);
    p[2] = (uint8_t)((max - 5) >> 16);
    p[3] = (uint8_t)((max - 5) >> 8);
    p[4] = (uint8_t)(max - 5);
    memset(p + 5, 0x5a, max - 4);
    assert_int_equal(crdt_mp_check(p, max, &crdt_limits_default, &off), 0);
    assert_int_equal(crdt_mp_check(p, max + 1, &crdt_limits_default, &off), CRDT_ETOOBIG);
    assert_int_equal(off, max);
    free(p);
}

/* ---- every prefix of a valid multi-field map ------------------------------ */

static void test_prefixes(void **state)
{
    (void)state;
    static const char *const valid[] = {
        /* {"name":"张三","age":30,"tags":["a","医保"],"m":{"x":true,"y":nil},
         *  "b":bin(3),"n":-200,"u":0xffffffff,"big":uint64,"s16":str16} */
        "89"
        "a4 6e616d65 a6 e5bca0e4b889"
        "a3 616765 1e"
        "a4 74616773 92 a161 a6 e58cbbe4bf9d"
        "a1 6d 82 a178 c3 a179 c0"
        "a1 62 c4 03 010203"
        "a1 6e d1 ff38"
        "a1 75 ce ffffffff"
        "a3 626967 cf ffffffffffffffff"
        "a3 733136 da 0003 616263",
        "dc 0003 de 0001 a161 90 db 00000002 6869 c5 0001 00",
        "92 dd 00000002 81 a161 00 81 a161 01 df 00000002 d9 01 61 c0 d9 01 62 c3",
    };
    for (size_t v = 0; v < sizeof valid / sizeof valid[0]; v++) {
        uint8_t buf[256];
        long n = tu_unhex(valid[v], buf, sizeof buf);
        size_t off;
        assert_true(n > 0);
        assert_int_equal(crdt_mp_check(buf, (size_t)n, &crdt_limits_default, &off), 0);
        for (long k = 0; k < n; k++) {
            /* Copy the prefix to its own allocation so ASan sees any
             * over-read. */
            uint8_t *q = malloc(k ? (size_t)k : 1);
            assert_non_null(q);
            memcpy(q, buf, (size_t)k);
            int rc = crdt_mp_check(q, (size_t)k, &crdt_limits_default, &off);
            if (rc != CRDT_ETRUNC && rc != CRDT_ELENGTH)
                fail_msg("valid %zu prefix %ld: got %d (%s)", v, k, rc, crdt_strerror(rc));
            assert_true(off <= (size_t)k);
            free(q);
        }
    }
}

/* ---- UTF-8 against a reference decoder ------------------------------------ */

/* Decode code points by bit patterns, then apply the rules. */
static bool ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], min;
        size_t k;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { k = 1; c &= 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { k = 2; c &= 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { k = 3; c &= 0x07; min = 0x10000; }
        else return false;
        if (n - i - 1 < k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            c = (c << 6) | (s[i + j] & 0x3fu);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

static void test_utf8_exhaustive(void **state)
{
    (void)state;
    uint8_t s[4];
    unsigned long valid3 = 0;
    /* Exhaustive natively; a representative stride under valgrind. */
    const unsigned stride = tu_memcheck() ? 7 : 1;
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        assert_int_equal(crdt_utf8_valid(s, 1), ref_utf8(s, 1));
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            if (crdt_utf8_valid(s, 2) != ref_utf8(s, 2))
                fail_msg("2-byte %02x %02x", a, b);
            for (unsigned c = 0; c < 256; c += stride) {
                s[2] = (uint8_t)c;
                bool got = crdt_utf8_valid(s, 3);
                if (got != ref_utf8(s, 3)) fail_msg("3-byte %02x %02x %02x", a, b, c);
                valid3 += got;
            }
        }
    }
    assert_true(valid3 > 0);
    static const uint8_t last[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0xbf, 0xc0, 0xff};
    for (unsigned a = 0xe0; a < 0x100; a++) {
        s[0] = (uint8_t)a;
        for (unsigned b = 0; b < 256; b += stride) {
            s[1] = (uint8_t)b;
            for (unsigned c = 0; c < 256; c += stride) {
                s[2] = (uint8_t)c;
                for (size_t d = 0; d < sizeof last; d++) {
                    s[3] = last[d];
                    if (crdt_utf8_valid(s, 4) != ref_utf8(s, 4))
                        fail_msg("4-byte %02x %02x %02x %02x", a, b, c, last[d]);
                }
            }
        }
    }
    /* Boundaries, explicitly. */
    assert_true(crdt_utf8_valid((const uint8_t *)"\xf4\x8f\xbf\xbf", 4));
    assert_false(crdt_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4));
    assert_false(crdt_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));
    assert_true(crdt_utf8_valid((const uint8_t *)"\xe5\xbc\xa0\xe4\xb8\x89", 6));
}

/* ---- randomized ----------------------------------------------------------- */

/* Random valid values, choosing any header width that fits. */
typedef struct gen {
    tu_rng *r;
    obuf *b;
    unsigned budget;  /* values left to emit */
} gen;

static void gen_len_hdr(gen *g, uint8_t fix_base, uint32_t fix_max, const uint8_t wide[3],
                        uint32_t len)
{
    /* Options: fix (if it fits), 8-bit (if wide[0] and fits), 16, 32. */
    for (;;) {
        unsigned w = (unsigned)tu_below(g->r, 4);
        if (w == 0 && fix_base && len <= fix_max) { ob_byte(g->b, (uint8_t)(fix_base | len)); return; }
        if (w == 1 && wide[0] && len <= 0xff) { ob_byte(g->b, wide[0]); ob_be(g->b, len, 1); return; }
        if (w == 2 && len <= 0xffff) { ob_byte(g->b, wide[1]); ob_be(g->b, len, 2); return; }
        if (w == 3) { ob_byte(g->b, wide[2]); ob_be(g->b, len, 4); return; }
    }
}

static void gen_utf8(gen *g, obuf *s, unsigned chars)
{
    static const char *const pieces[] = {"a", "z", "0", " ", "\xc3\xa9", "\xe5\xbc\xa0",
                                         "\xe4\xb8\x89", "\xe5\x8c\xbb", "\xf0\x9f\x98\x80",
                                         "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "\x00"};
    for (unsigned i = 0; i < chars; i++) {
        const char *pc = pieces[tu_below(g->r, sizeof pieces / sizeof pieces[0])];
        ob_put(s, pc, pc[0] ? strlen(pc) : 1);
    }
}

static void gen_str(gen *g, const uint8_t *s, uint32_t len)
{
    static const uint8_t wide[3] = {0xd9, 0xda, 0xdb};
    gen_len_hdr(g, 0xa0, 31, wide, len);
    ob_put(g->b, s, len);
}

static void gen_value(gen *g, unsigned depth, unsigned max_depth)
{
    unsigned t = (unsigned)tu_below(g->r, depth < max_depth && g->budget > 4 ? 10 : 7);
    if (g->budget) g->budget--;
    switch (t) {
    case 0: ob_byte(g->b, (uint8_t)(0xc0 | (tu_below(g->r, 2) ? 2 + tu_below(g->r, 2) : 0))); break;
    case 1: ob_byte(g->b, (uint8_t)tu_below(g->r, 0x80)); break;
    case 2: ob_byte(g->b, (uint8_t)(0xe0 + tu_below(g->r, 32))); break;
    case 3: {
        static const uint8_t ints[] = {0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3};
        static const unsigned sz[] = {1, 2, 4, 8, 1, 2, 4, 8};
        unsigned k = (unsigned)tu_below(g->r, 8);
        ob_byte(g->b, ints[k]);
        ob_be(g->b, tu_next(g->r), sz[k]);
        break;
    }
    case 4: case 5: {
        obuf s = {0};
        gen_utf8(g, &s, (unsigned)tu_below(g->r, 12));
        gen_str(g, s.p, (uint32_t)s.n);
        free(s.p);
        break;
    }
    case 6: {
        static const uint8_t wide[3] = {0xc4, 0xc5, 0xc6};
        uint32_t len = (uint32_t)tu_below(g->r, 10);
        gen_len_hdr(g, 0, 0, wide, len);
        for (uint32_t i = 0; i < len; i++) ob_byte(g->b, (uint8_t)tu_next(g->r));
        break;
    }
    case 7: case 8: {
        static const uint8_t wide[3] = {0, 0xdc, 0xdd};
        uint32_t k = (uint32_t)tu_below(g->r, 6);
        gen_len_hdr(g, 0x90, 15, wide, k);
        for (uint32_t i = 0; i < k; i++) gen_value(g, depth + 1, max_depth);
        break;
    }
    default: {
        static const uint8_t wide[3] = {0, 0xde, 0xdf};
        uint32_t k = (uint32_t)tu_below(g->r, 6);
        gen_len_hdr(g, 0x80, 15, wide, k);
        for (uint32_t i = 0; i < k; i++) {
            /* Unique keys: a distinct 2-digit prefix, then random UTF-8. */
            obuf s = {0};
            char pre[2] = {(char)('0' + i / 10 % 10), (char)('0' + i % 10)};
            ob_put(&s, pre, 2);
            gen_utf8(g, &s, (unsigned)tu_below(g->r, 3));
            gen_str(g, s.p, (uint32_t)s.n);
            free(s.p);
            gen_value(g, depth + 1, max_depth);
        }
        break;
    }
    }
}

/* Inspect an accepted value as msgpack-c sees it: every rule must hold. */
static void obey_rules(const msgpack_object *o, unsigned depth, const crdt_limits *lim)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_POSITIVE_INTEGER: case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        break;
    case MSGPACK_OBJECT_STR:
        assert_true(o->via.str.size <= lim->max_str);
        assert_true(ref_utf8((const uint8_t *)o->via.str.ptr, o->via.str.size));
        break;
    case MSGPACK_OBJECT_BIN:
        assert_true(o->via.bin.size <= lim->max_bin);
        break;
    case MSGPACK_OBJECT_ARRAY:
        assert_true(depth + 1 <= lim->max_depth);
        assert_true(o->via.array.size <= lim->max_entries);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            obey_rules(&o->via.array.ptr[i], depth + 1, lim);
        break;
    case MSGPACK_OBJECT_MAP:
        assert_true(depth + 1 <= lim->max_depth);
        assert_true(o->via.map.size <= lim->max_entries);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            assert_int_equal(k->type, MSGPACK_OBJECT_STR);
            for (uint32_t j = 0; j < i; j++) {
                const msgpack_object *k2 = &o->via.map.ptr[j].key;
                assert_false(k2->via.str.size == k->via.str.size &&
                             (k->via.str.size == 0 ||
                              memcmp(k2->via.str.ptr, k->via.str.ptr, k->via.str.size) == 0));
            }
            obey_rules(k, depth + 1, lim);
            obey_rules(&o->via.map.ptr[i].val, depth + 1, lim);
        }
        break;
    default:
        fail_msg("accepted msgpack type %d", (int)o->type);
    }
}

static unsigned long n_accepted;

/* The properties every input must have. */
static void probe(const uint8_t *p, size_t n, const crdt_limits *lim)
{
    /* Own allocation of exactly n bytes, so ASan catches over-reads. */
    uint8_t *q = malloc(n ? n : 1);
    size_t off1 = 0, off2 = 0;
    assert_non_null(q);
    if (n) memcpy(q, p, n);
    int rc1 = crdt_mp_check(q, n, lim, &off1);
    int rc2 = crdt_mp_check(q, n, lim, &off2);
    assert_int_equal(rc1, rc2);
    assert_int_equal(off1, off2);
    assert_true(rc1 <= 0);
    if (rc1 == 0) {
        msgpack_unpacked up;
        size_t used = 0;
        assert_int_equal(off1, 0);
        msgpack_unpacked_init(&up);
        msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)q, n, &used);
        if (ur != MSGPACK_UNPACK_SUCCESS || used != n) {
            char hex[2 * 64 + 1];
            tu_hex(q, n < 64 ? n : 64, hex);
            fail_msg("accepted but msgpack-c says %d, used %zu of %zu: %s", (int)ur, used, n, hex);
        }
        obey_rules(&up.data, 0, lim);
        msgpack_unpacked_destroy(&up);
        n_accepted++;
    } else if (rc1 != CRDT_ETOOBIG && rc1 != CRDT_EINVAL) {
        assert_true(off1 <= n);
    }
    free(q);
}

static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                      0xc0, 0xc1, 0xc2, 0xc4, 0xc6, 0xc7, 0xca, 0xcc, 0xcf,
                                      0xd3, 0xd4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
                                      0xe0, 0xed, 0xf4, 0xff};

static void mutate(tu_rng *r, obuf *b)
{
    unsigned nmut = 1 + (unsigned)tu_below(r, 4);
    for (unsigned m = 0; m < nmut; m++) {
        size_t at = b->n ? (size_t)tu_below(r, b->n) : 0;
        switch (tu_below(r, 7)) {
        case 0:
            if (b->n) b->p[at] ^= (uint8_t)(1u << tu_below(r, 8));
            break;
        case 1:
            if (b->n) b->p[at] = (uint8_t)tu_next(r);
            break;
        case 2:
            if (b->n) b->p[at] = interesting[tu_below(r, sizeof interesting)];
            break;
        case 3:  /* delete a byte */
            if (b->n) { memmove(b->p + at, b->p + at + 1, b->n - at - 1); b->n--; }
            break;
        case 4: { /* insert a byte */
            uint8_t v = tu_below(r, 2) ? (uint8_t)tu_next(r)
                                       : interesting[tu_below(r, sizeof interesting)];
            ob_byte(b, 0);
            memmove(b->p + at + 1, b->p + at, b->n - at - 1);
            b->p[at] = v;
            break;
        }
        case 5:  /* truncate */
            b->n = at;
            break;
        default: { /* duplicate a range */
            if (!b->n) break;
            size_t len = 1 + (size_t)tu_below(r, b->n - at < 16 ? b->n - at : 16);
            uint8_t tmp[16];
            memcpy(tmp, b->p + at, len);
            ob_put(b, tmp, len);
            break;
        }
        }
    }
}

static void test_random(void **state)
{
    (void)state;
    tu_rng r;
    uint64_t seed = tu_seed("test_mpcheck.random");
    unsigned long iters = (unsigned long)tu_scaled(tu_long_mode() ? 3000000ul : 300000ul);
    static const crdt_limits *const lims[] = {&crdt_limits_default, &lim_small, &lim_depth2,
                                              &lim_entries2, &lim_huge};
    obuf b = {0};
    unsigned long valid_ok = 0;
    tu_rng_init(&r, seed);
    n_accepted = 0;
    for (unsigned long it = 0; it < iters; it++) {
        const crdt_limits *lim = lims[tu_below(&r, sizeof lims / sizeof lims[0])];
        b.n = 0;
        if (it % 3 == 0) {
            /* Random bytes, biased towards type bytes. */
            size_t n = (size_t)tu_below(&r, 48);
            for (size_t i = 0; i < n; i++)
                ob_byte(&b, tu_below(&r, 2) ? (uint8_t)tu_next(&r)
                                            : interesting[tu_below(&r, sizeof interesting)]);
            probe(b.p, b.n, lim);
        } else {
            gen g = {&r, &b, 40};
            gen_value(&g, 0, 8);
            if (lim == &crdt_limits_default || lim == &lim_huge) {
                /* Within these limits every generated value is valid. */
                size_t off;
                int rc = crdt_mp_check(b.p, b.n, lim, &off);
                if (rc != 0) {
                    char hex[2 * 128 + 1];
                    tu_hex(b.p, b.n < 128 ? b.n : 128, hex);
                    fail_msg("generated valid value refused: %d at %zu: %s", rc, off, hex);
                }
                valid_ok++;
            }
            mutate(&r, &b);
            probe(b.p, b.n, lim);
        }
    }
    fprintf(stderr, "random: %lu iterations, %lu generated values accepted, "
                    "%lu probes accepted\n", iters, valid_ok, n_accepted);
    assert_true(valid_ok > 0);
    assert_true(n_accepted > 0);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalogue),
        cmocka_unit_test(test_invalid_args),
        cmocka_unit_test(test_big_maps),
        cmocka_unit_test(test_big_strings),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
