/*
 * test_ledger.c — the CSV ledger library (clients/ctl/ledger.h) without
 * doorstepctl: decoding (BOM, NUL, invalid UTF-8, GBK, forced encodings,
 * the messages and their lines), parsing (quotes, line ends, blank rows,
 * the export's writer read back), problems sorted by line, phase one's
 * warnings returned (not printed), and phase two on a real store: a dry
 * run, a retried transaction counting once, and three bugs of the code
 * this library replaced — a row without person_id whose ID number is on
 * file (the lookup's answer was freed before it was read), a tag given
 * twice in a cell ("field changed twice in one delta" aborted the import)
 * and a row with more ops than a delta may hold after phase one let it
 * through (all three now pass, or are problems, in phase one).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ledger.h"
#include "storeutil.h"

#define NOW 1790000000000ull

static void test_decode(void **state)
{
    (void)state;
    char *t, err[256];
    size_t n;
    const char *used;
    /* UTF-8 with a BOM: the BOM goes. */
    assert_int_equal(ledger_decode("\xef\xbb\xbfhousehold_id\n", 16, NULL, "a.csv", &t, &n, &used,
                                   err, sizeof err), 0);
    assert_string_equal(used, "utf-8");
    assert_int_equal(n, 13);
    assert_string_equal(t, "household_id\n");
    free(t);
    /* A NUL byte, with its offset. */
    assert_int_equal(ledger_decode("ab\0c", 4, NULL, "a.csv", &t, &n, &used, err, sizeof err),
                     LEDGER_ENUL);
    assert_null(t);
    assert_int_equal(n, 0);
    assert_null(used);
    assert_string_equal(err, "a.csv: a NUL byte at offset 2: not a text file (UTF-16 is not "
                             "supported: save as UTF-8 or GBK)");
    /* GBK: auto-detected (not valid UTF-8), or refused when UTF-8 is forced. */
    const char gbk[] = "a\n\xd5\xc5\xc8\xfd\n"; /* 张三 */
    assert_int_equal(ledger_decode(gbk, sizeof gbk - 1, NULL, "g.csv", &t, &n, &used, err,
                                   sizeof err), 0);
    assert_string_equal(used, "gbk");
    assert_string_equal(t, "a\n张三\n");
    free(t);
    assert_int_equal(ledger_decode(gbk, sizeof gbk - 1, "utf-8", "g.csv", &t, &n, &used, err,
                                   sizeof err), LEDGER_EUTF8);
    assert_string_equal(err, "g.csv:2: invalid UTF-8 (byte 0xd5 at offset 2); for a GBK file "
                             "give --encoding gbk");
    /* Not GBK either. */
    assert_int_equal(ledger_decode("x\n\xff\xff", 4, "gbk", "g.csv", &t, &n, &used, err,
                                   sizeof err), LEDGER_EGBK);
    assert_string_equal(err, "g.csv:2: byte 0xff at offset 2 is not GBK (is the file UTF-8? "
                             "try --encoding utf-8)");
    /* Empty input; an unknown encoding. */
    assert_int_equal(ledger_decode("", 0, NULL, "e.csv", &t, &n, &used, err, sizeof err), 0);
    assert_string_equal(t, "");
    free(t);
    assert_int_equal(ledger_decode("a", 1, "latin1", "e.csv", &t, &n, &used, err, sizeof err),
                     LEDGER_EINVAL);
    assert_int_equal(ledger_read("/nonexistent/x.csv", NULL, &t, &n, &used, err, sizeof err),
                     LEDGER_EIO);
    assert_string_equal(err, "cannot open /nonexistent/x.csv: No such file or directory");
}

static void test_parse(void **state)
{
    (void)state;
    const char *text = "a, b ,\"c,\"\"d\"\"\r\ne\"\r\n\r\n,\n x ,\"\"\ry\n";
    ledger_doc d = {0};
    size_t bad;
    const char *why;
    assert_int_equal(ledger_parse(text, strlen(text), &d, &bad, &why), 0);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.r[0].line, 1);
    assert_int_equal(d.r[0].n, 3);
    assert_string_equal(d.r[0].f[1], "b");
    assert_string_equal(d.r[0].f[2], "c,\"d\"\ne");
    assert_int_equal(d.r[1].line, 5);     /* line 3 is blank, line 4 all-empty */
    assert_string_equal(d.r[1].f[0], "x");
    assert_string_equal(d.r[1].f[1], "");
    assert_int_equal(d.r[2].line, 6);     /* a lone CR ends a record */
    /* The export's writer, read back. */
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    for (size_t r = 0; r < d.n; r++) {
        for (size_t k = 0; k < d.r[r].n; k++) ledger_csv_put(f, d.r[r].f[k], k == 0);
        fputs("\r\n", f);
    }
    fclose(f);
    ledger_doc d2 = {0};
    assert_int_equal(ledger_parse(buf, n, &d2, &bad, &why), 0);
    assert_int_equal(d2.n, d.n);
    for (size_t r = 0; r < d.n; r++)
        for (size_t k = 0; k < d.r[r].n; k++) assert_string_equal(d2.r[r].f[k], d.r[r].f[k]);
    free(buf);
    ledger_doc_free(&d2);
    ledger_doc_free(&d);
    /* Errors name the line; the doc is left empty. */
    text = "a,b\n\"x\ny\n";
    assert_int_equal(ledger_parse(text, strlen(text), &d, &bad, &why), LEDGER_ECSV);
    assert_int_equal(bad, 2);
    assert_string_equal(why, "a quoted field is never closed (a '\"' is missing)");
    assert_null(d.r);
    text = "a\n\"x\" y\n";
    assert_int_equal(ledger_parse(text, strlen(text), &d, &bad, &why), LEDGER_ECSV);
    assert_int_equal(bad, 2);
    assert_int_equal(ledger_parse("a\nb\0", 4, &d, &bad, &why), LEDGER_ECSV);
    assert_int_equal(bad, 2);
}

static int parse_text(const char *text, ledger_doc *d)
{
    size_t bad;
    const char *why;
    return ledger_parse(text, strlen(text), d, &bad, &why);
}

static void init_import(ledger_import *li, store *s, const char *path)
{
    memset(li, 0, sizeof *li);
    li->path = path;
    li->enc = "utf-8";
    li->actor = "admin:test";
    li->sc = store_schema(s);
    li->year = store_campaign_year(s);
    li->now_ms = NOW;
}

static void test_check_messages(void **state)
{
    store *s = *state;
    ledger_import li;
    ledger_doc d = {0};
    /* Problems come in passes; sorted, by line, stably. */
    assert_int_equal(parse_text("household_id,name,id_number,序号,person_id\n"
                                "H1,a,110105195003121015\n"
                                "H2,,110105195003121015,,P1\n"
                                "H3,c,,,P1\n", &d), 0);
    init_import(&li, s, "p.csv");
    assert_int_equal(ledger_check(&li, &d), 0);
    assert_null(d.r);
    assert_int_equal(li.warnings.n, 1);
    assert_string_equal(li.warnings.v[0], "p.csv:1: column 4 \"序号\" is not a ledger column: "
                                          "ignored");
    assert_int_equal(li.n_rows, 3);
    assert_int_equal(li.n_hh, 3);
    assert_int_equal(li.problems.n, 3);
    assert_int_equal(ledger_msgs_sort(&li.problems), 2);
    assert_string_equal(li.problems.v[0], "p.csv:3: name: 必填，不能为空。Required: must not be empty");
    assert_string_equal(li.problems.v[1], "p.csv:3: id_number: 110105195003121015 is already on "
                                          "line 2 (one row per person)");
    assert_string_equal(li.problems.v[2], "p.csv:4: person_id: P1 is already on line 3 (one "
                                          "row per person)");
    /* Phase two refuses what phase one did not pass. */
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(ledger_import_txn(t, &li), LEDGER_EINVAL);
    store_abort(t);
    ledger_import_free(&li);
    /* A name of only an ideographic space (trimming takes ASCII blanks) is
     * blank to the schema: the same words as the staff API and the acks. */
    assert_int_equal(parse_text("household_id,name,id_number\n"
                                "H1,\xe3\x80\x80,110105195003121015\n", &d), 0);
    init_import(&li, s, "b.csv");
    assert_int_equal(ledger_check(&li, &d), 0);
    assert_int_equal(li.problems.n, 1);
    assert_string_equal(li.problems.v[0], "b.csv:2: name: \"\xe3\x80\x80\": "
                                          "必填，不能为空。Required: must not be empty");
    ledger_import_free(&li);
    /* No rows. */
    assert_int_equal(parse_text("household_id,name\n", &d), 0);
    init_import(&li, s, "e.csv");
    assert_int_equal(ledger_check(&li, &d), LEDGER_ENOROWS);
    ledger_import_free(&li);
}

/* Check and import text in one transaction (dry or committed). */
static int import_text(store *s, const char *text, bool dry, ledger_import *li)
{
    ledger_doc d = {0};
    assert_int_equal(parse_text(text, &d), 0);
    init_import(li, s, "t.csv");
    li->dry_run = dry;
    assert_int_equal(ledger_check(li, &d), 0);
    if (li->problems.n) return LEDGER_BAD_ROWS;
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    int rc = ledger_import_txn(t, li);
    if (rc) store_abort(t);
    else assert_int_equal(store_commit(t), 0);
    return rc;
}

static void test_import(void **state)
{
    store *s = *state;
    ledger_import li;
    const char *ledger = "household_id,name,id_number,tags\n"
                         "H1,张建国,110105195003121015,\n"
                         "H1,李秀英,110105195206051221,低保\n";
    /* Dry: counted, then aborted; twice (a retried transaction) the same. */
    assert_int_equal(import_text(s, ledger, true, &li), LEDGER_DRY_RUN);
    assert_int_equal(li.deltas, 2);
    assert_int_equal(li.persons_new, 2);
    assert_int_equal(li.hh_new, 1);
    uint64_t first = li.first_seq, last = li.last_seq;
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(ledger_import_txn(t, &li), LEDGER_DRY_RUN);
    store_abort(t);
    assert_int_equal(li.deltas, 2);
    assert_int_equal(li.first_seq, first);
    assert_int_equal(li.last_seq, last);
    ledger_import_free(&li);
    /* For real. */
    assert_int_equal(import_text(s, ledger, false, &li), 0);
    assert_int_equal(li.deltas, 2);
    assert_true(li.audit_seq > 0);
    ledger_import_free(&li);
    /* No person_id, the ID number on file: that person (PH1-02), though
     * the row is H1's first here (which would derive PH1-01, 张建国's). */
    assert_int_equal(import_text(s, "household_id,name,id_number,phone\n"
                                    "H1,李秀英,110105195206051221,13700000000\n", false, &li), 0);
    assert_int_equal(li.persons_new, 0);
    assert_int_equal(li.deltas, 1);
    assert_int_equal(li.ops, 1);
    ledger_import_free(&li);
    crdt_record *r = NULL;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_record(t, "person", "PH1-02", &r), 0);
    assert_non_null(crdt_record_field(r, "phone", (crdt_blob){NULL, 0}));
    crdt_record_free(r);
    store_abort(t);
    /* A tag twice in a cell: once. */
    assert_int_equal(import_text(s, "household_id,person_id,name,tags\n"
                                    "H1,PH1-01,张建国,残疾;残疾、低保\n", false, &li), 0);
    assert_int_equal(li.ops, 2);
    ledger_import_free(&li);
    /* 35 times: still two ops, and a row never has more ops than a delta
     * may hold (this one has 12). */
    char big[2048];
    int k = snprintf(big, sizeof big, "household_id,name,id_number,gender,birth_date,phone,"
                     "relation,insurance_type,payment,life_status,note,tags\n"
                     "H9,a,110105201509093320,女,2015-09-09,13800138000,子女,城乡居民,已缴费,"
                     "正常,n,");
    for (int i = 0; i < 35; i++) k += snprintf(big + k, sizeof big - (size_t)k, "低保;");
    snprintf(big + k, sizeof big - (size_t)k, "\n");
    assert_int_equal(import_text(s, big, true, &li), LEDGER_DRY_RUN);
    assert_int_equal(li.deltas, 1);     /* the person's; H9 has no household columns */
    assert_int_equal(li.ops, 12);
    ledger_import_free(&li);
}

static su_dir dir;

static int setup(void **state)
{
    su_dir_make(&dir, "ledger");
    *state = su_store_new(&dir, NULL);
    return 0;
}

static int teardown(void **state)
{
    store_close(*state);
    su_dir_remove(&dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_parse),
        cmocka_unit_test_setup_teardown(test_check_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_import, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
