/*
 * fuzz_ledger.c — libFuzzer target: arbitrary bytes through the whole CSV
 * ledger importer (clients/ctl/ledger.h), as `doorstepctl import --csv`
 * runs it: ledger_decode, ledger_parse, ledger_check (phase one) and, when
 * the rows pass, ledger_import_txn (phase two) as a dry run in a write
 * transaction on a real store (LMDB in a temporary directory, created once
 * per process with the default schema).  The dry run's transaction is
 * aborted, so the store stays empty and every input sees the same store.
 *
 * Input: a first byte 0x01..0x03 selects a mode and is dropped — 0x01
 * decode as UTF-8 (forced), 0x02 as GBK (forced), 0x03 auto-detect and
 * also parse the raw bytes undecoded; with any other first byte the whole
 * input is the file, auto-detected.  So a plain CSV file is a seed as is.
 *
 * Beyond "no crash, no leak, no sanitizer report", each stage's contract is
 * checked (abort() on a breach):
 *   decode  fails only as ENUL (iff a NUL byte), EUTF8 or EGBK, with a
 *           message naming the file and zeroed outputs; else the text is
 *           valid UTF-8 without NUL, strlen == len, the encoding asked for
 *           (auto: UTF-8 whenever the bytes after a BOM are valid UTF-8)
 *           and, read as UTF-8, the input minus its BOM byte for byte.
 *   parse   fails only as ECSV with a line inside the text and a zeroed
 *           doc; else rows start on strictly increasing lines, have a
 *           non-empty cell, cells hold no CR and no blank at either end,
 *           and writing the rows back (ledger_csv_put) and parsing that
 *           gives the same cells.  Raw bytes with a NUL never parse.
 *   check   returns 0 (ENOROWS for fewer than two rows); every problem and
 *           warning reads "ledger.csv:LINE: " with the LINE stored beside
 *           it, a line of the file; counts agree (rows = data rows,
 *           households <= rows); ledger_msgs_sort orders by line and
 *           counts distinct lines.
 *   import  on rows that passed: LEDGER_DRY_RUN, or LEDGER_BAD_ROWS only
 *           for what the store alone can tell (two rows resolving to one
 *           person, a household id too long to derive a person id) — never
 *           an error, never a delta the schema or the store refuses.  On a
 *           dry run on the empty store every household and person is new,
 *           each person is one delta, seqs are contiguous, no audit entry.
 *           Run twice (as a retried transaction would), it counts the same.
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

#define PATH "ledger.csv"

static store *st;
static su_dir dir;

static void cleanup(void)
{
    if (st) store_close(st);
    st = NULL;
    su_dir_remove(&dir);
}

static void setup(void)
{
    if (st) return;
    if (wire_init()) abort();
    su_dir_make(&dir, "fuzz-ledger");
    st = su_store_new(&dir, NULL);
    atexit(cleanup);
}

#define CHECK(c)                                                                  \
    do {                                                                          \
        if (!(c)) {                                                               \
            fprintf(stderr, "fuzz_ledger: invariant failed at line %d: %s\n",     \
                    __LINE__, #c);                                                \
            abort();                                                              \
        }                                                                         \
    } while (0)

static size_t count_breaks(const char *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += p[i] == '\n' || p[i] == '\r';
    return k;
}

/* Every message is "PATH:LINE: text" with LINE = m->line[i], within 1..max. */
static void check_msgs(const ledger_msgs *m, size_t max_line)
{
    CHECK(m->n <= m->cap);
    for (size_t i = 0; i < m->n; i++) {
        char pre[64];
        int k = snprintf(pre, sizeof pre, PATH ":%zu: ", m->line[i]);
        CHECK(m->v[i] && !strncmp(m->v[i], pre, (size_t)k));
        CHECK(m->line[i] >= 1 && m->line[i] <= max_line);
    }
}

static void check_doc(const ledger_doc *d, size_t n_text)
{
    size_t bytes = 0, prev = 0;
    for (size_t r = 0; r < d->n; r++) {
        const ledger_row *row = &d->r[r];
        CHECK(row->n >= 1 && row->line > prev);
        prev = row->line;
        bool any = false;
        for (size_t k = 0; k < row->n; k++) {
            const char *c = row->f[k];
            size_t cl = strlen(c);
            bytes += cl;
            any |= cl > 0;
            CHECK(!strchr(c, '\r'));
            CHECK(!cl || (c[0] != ' ' && c[0] != '\t' && c[cl - 1] != ' ' && c[cl - 1] != '\t'));
        }
        CHECK(any);
    }
    CHECK(bytes <= n_text);
}

/* Write the rows back as CSV, parse that: the same cells. */
static void check_round_trip(const ledger_doc *d)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    CHECK(f);
    for (size_t r = 0; r < d->n; r++) {
        for (size_t k = 0; k < d->r[r].n; k++) ledger_csv_put(f, d->r[r].f[k], k == 0);
        fputc('\n', f);
    }
    CHECK(fclose(f) == 0);
    ledger_doc d2 = {0};
    size_t bad;
    const char *why;
    CHECK(ledger_parse(buf, n, &d2, &bad, &why) == 0);
    CHECK(d2.n == d->n);
    for (size_t r = 0; r < d->n; r++) {
        CHECK(d2.r[r].n == d->r[r].n);
        for (size_t k = 0; k < d->r[r].n; k++) CHECK(!strcmp(d2.r[r].f[k], d->r[r].f[k]));
    }
    ledger_doc_free(&d2);
    free(buf);
}

static bool allowed_phase_two_problem(const char *m)
{
    return strstr(m, "is also on line") || strstr(m, "is too long to derive a person id");
}

typedef struct counts {
    int rc;
    size_t hh_new, persons_new, deltas, ops, problems;
    uint64_t first_seq, last_seq;
} counts;

static counts import_once(ledger_import *li, size_t max_line)
{
    store_txn *t;
    CHECK(store_begin(st, STORE_RW, &t) == 0);
    int rc = ledger_import_txn(t, li);
    store_abort(t);
    CHECK(rc == LEDGER_DRY_RUN || rc == LEDGER_BAD_ROWS);
    check_msgs(&li->problems, max_line);
    CHECK(li->audit_seq == 0);
    if (rc == LEDGER_BAD_ROWS) {
        CHECK(li->problems.n > 0);
        for (size_t i = 0; i < li->problems.n; i++)
            CHECK(allowed_phase_two_problem(li->problems.v[i]));
    } else {
        CHECK(li->problems.n == 0);
        CHECK(li->hh_new == li->n_hh && li->persons_new == li->n_rows);
        CHECK(li->deltas >= li->n_rows && li->deltas <= li->n_rows + li->n_hh);
        CHECK(li->ops >= li->deltas);
        CHECK(li->first_seq >= 1 && li->last_seq - li->first_seq + 1 == li->deltas);
    }
    return (counts){rc, li->hh_new, li->persons_new, li->deltas, li->ops, li->problems.n,
                    li->first_seq, li->last_seq};
}

static void run(const char *text, size_t len, const char *used, bool second_try)
{
    ledger_doc doc = {0};
    size_t bad = 0;
    const char *why = NULL;
    size_t max_line = 1 + count_breaks(text, len);
    int rc = ledger_parse(text, len, &doc, &bad, &why);
    if (rc) {
        CHECK(rc == LEDGER_ECSV && why && bad >= 1 && bad <= max_line);
        CHECK(!doc.r && !doc.n);
        return;
    }
    CHECK(!memchr(text, 0, len));
    check_doc(&doc, len);
    check_round_trip(&doc);
    size_t n_rows = doc.n, last_line = doc.n ? doc.r[doc.n - 1].line : 0;

    ledger_import li;
    memset(&li, 0, sizeof li);
    li.path = PATH;
    li.shown = PATH;
    li.enc = used;
    li.actor = "admin:fuzz";
    li.sc = store_schema(st);
    li.year = store_campaign_year(st);
    li.now_ms = 1790000000000ull;
    li.dry_run = true;
    rc = ledger_check(&li, &doc);
    CHECK(!doc.r && !doc.n);
    if (n_rows < 2) {
        CHECK(rc == LEDGER_ENOROWS);
        ledger_import_free(&li);
        return;
    }
    CHECK(rc == 0);
    check_msgs(&li.problems, last_line);
    check_msgs(&li.warnings, last_line);
    CHECK(li.n_rows == 0 || li.n_rows == n_rows - 1);
    CHECK(li.n_hh <= li.n_rows);
    if (li.problems.n) {
        size_t lines = ledger_msgs_sort(&li.problems), distinct = 0;
        for (size_t i = 0; i < li.problems.n; i++) {
            CHECK(!i || li.problems.line[i] >= li.problems.line[i - 1]);
            distinct += !i || li.problems.line[i] != li.problems.line[i - 1];
        }
        CHECK(lines == distinct && lines >= 1 && lines <= li.problems.n);
        check_msgs(&li.problems, last_line);
        /* Phase two refuses rows that did not pass phase one. */
        store_txn *t;
        CHECK(store_begin(st, STORE_RW, &t) == 0);
        CHECK(ledger_import_txn(t, &li) == LEDGER_EINVAL);
        store_abort(t);
        ledger_import_free(&li);
        return;
    }
    CHECK(li.n_rows == n_rows - 1);
    counts a = import_once(&li, last_line);
    if (second_try) {
        counts b = import_once(&li, last_line);
        CHECK(a.rc == b.rc && a.hh_new == b.hh_new && a.persons_new == b.persons_new &&
              a.deltas == b.deltas && a.ops == b.ops && a.problems == b.problems &&
              a.first_seq == b.first_seq && a.last_seq == b.last_seq);
    }
    ledger_import_free(&li);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    const char *enc = NULL;
    bool raw = false;
    if (size && data[0] >= 1 && data[0] <= 3) {
        enc = data[0] == 1 ? "utf-8" : data[0] == 2 ? "gbk" : NULL;
        raw = data[0] == 3;
        data++;
        size--;
    }
    const char *in = (const char *)data;
    bool second_try = (size & 3) == 0;

    if (raw) {
        /* Undecoded bytes straight to the parser (a caller that skips
         * ledger_decode): a NUL byte is refused, the rest as above. */
        char *copy = malloc(size + 1);
        CHECK(copy);
        if (size) memcpy(copy, in, size);
        run(copy, size, "utf-8", false);
        free(copy);
    }

    char *text = NULL, err[1024];
    size_t len = 0;
    const char *used = NULL;
    int rc = ledger_decode(in, size, enc, PATH, &text, &len, &used, err, sizeof err);
    bool has_nul = size && memchr(in, 0, size);
    bool bom = size >= 3 && !memcmp(in, "\xef\xbb\xbf", 3);
    size_t off = bom ? 3 : 0;
    if (rc) {
        CHECK(rc == LEDGER_ENUL || rc == LEDGER_EUTF8 || rc == LEDGER_EGBK);
        CHECK((rc == LEDGER_ENUL) == has_nul);
        CHECK(!text && !len && !used);
        CHECK(!strncmp(err, PATH ":", strlen(PATH) + 1));
        if (rc == LEDGER_EUTF8) CHECK(enc ? !strcmp(enc, "utf-8") : bom);
        if (rc == LEDGER_EGBK)
            CHECK(enc ? !strcmp(enc, "gbk")
                      : !bom && !crdt_utf8_valid((const uint8_t *)in, size));
        return 0;
    }
    CHECK(!has_nul && text && used);
    CHECK(strlen(text) == len);
    CHECK(crdt_utf8_valid((const uint8_t *)text, len));
    if (enc) CHECK(!strcmp(used, enc));
    else if (bom || crdt_utf8_valid((const uint8_t *)in + off, size - off))
        CHECK(!strcmp(used, "utf-8"));
    if (!strcmp(used, "utf-8")) CHECK(len == size - off && !memcmp(text, in + off, len));
    run(text, len, used, second_try);
    free(text);
    return 0;
}
