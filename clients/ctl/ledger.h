/*
 * ledger.h — CSV ledgers (一人一档, one row per person): reading, checking
 * and importing them into the store, and the column table the export
 * writes (issue #6; docs/ADMIN.md "Ledgers").
 *
 * One public header for the importer behind `doorstepctl import --csv`
 * (library doorstep_ledger; uses store/, crdt/).  An import runs in stages,
 * each one a function here, so that a test or a fuzzer can drive every one
 * of them without doorstepctl:
 *
 *   1. ledger_read / ledger_decode   file or bytes -> UTF-8 text: a BOM is
 *      dropped, a NUL byte refused, UTF-8 validated, GBK (read as GB 18030)
 *      converted with iconv(3).
 *   2. ledger_parse                  text -> rows (RFC 4180 with the usual
 *      tolerances, see there).
 *   3. ledger_check                  phase one, no store needed: headers,
 *      every cell through the schema, the rules across rows.  Every problem
 *      is collected, in words, as "PATH:LINE: message".
 *   4. ledger_import_txn             phase two, inside the caller's write
 *      transaction: person ids resolved against the store, only the fields
 *      that differ kept, the deltas signed as the server (device 0) and
 *      appended, the audit entry written.  All or nothing: the caller
 *      commits only on 0.
 *
 * Errors: 0 or a negative code, LEDGER_E* or a STORE_E* / CRDT_E* /
 * WIRE_E* code passed through; ledger_strerror() knows all of them.  The
 * stages that can fail on the input itself (decode, parse) also leave a
 * one-line message for the user in the caller's buffer.
 *
 * No global state, no printing, no clock (the time is a parameter):
 * distinct ledger_import values may be used from distinct threads.  Memory
 * handed out is owned by the caller and freed with the matching *_free.
 */
#ifndef DOORSTEP_LEDGER_H
#define DOORSTEP_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LEDGER_OK = 0,
    LEDGER_ENOMEM = CRDT_ENOMEM, /* allocation failed (the same code at every layer) */
    LEDGER_EINVAL = -500,        /* bad argument, or a stage called out of order */
    LEDGER_EIO = -501,           /* ledger_read: cannot open or read the file */
    LEDGER_ETOOBIG = -502,       /* larger than LEDGER_MAX_BYTES */
    LEDGER_ENUL = -503,          /* a NUL byte: not a text file (UTF-16?) */
    LEDGER_EUTF8 = -504,         /* not valid UTF-8 (and UTF-8 was asked for or detected) */
    LEDGER_EGBK = -505,          /* not GBK (GB 18030) */
    LEDGER_EICONV = -506,        /* iconv(3) cannot convert from GB18030 on this system */
    LEDGER_ECSV = -507,          /* malformed CSV (a quote never closed, ...) */
    LEDGER_ENOROWS = -508        /* no header, or a header and no rows */
};

/* Positive results of ledger_import_txn: not errors, but the caller must
 * abort its transaction. */
enum {
    LEDGER_BAD_ROWS = 1,         /* problems found (li->problems); nothing to keep */
    LEDGER_DRY_RUN = 2           /* li->dry_run: counted, nothing to keep */
};

/* A static English message for any code (never NULL). */
const char *ledger_strerror(int code);

#define LEDGER_MAX_BYTES (512u << 20)            /* a station's ledger is a few MB */
#define LEDGER_MAX_AHEAD_MS (24ull * 3600 * 1000) /* store_server_append's clock bound */

/* ---- the columns ------------------------------------------------------------ */

/* Export writes LEDGER_COL_PID..LEDGER_COL_AT in this order; import reads
 * PID..NOTE and ignores the provenance columns (BY..AT); a non-empty
 * CONFLICT cell is a problem. */
enum {
    LEDGER_COL_PID, LEDGER_COL_HH, LEDGER_COL_COMM, LEDGER_COL_GRID, LEDGER_COL_ADDR,
    LEDGER_COL_NAME, LEDGER_COL_IDNUM, LEDGER_COL_GENDER, LEDGER_COL_BIRTH, LEDGER_COL_PHONE,
    LEDGER_COL_REL, LEDGER_COL_INS, LEDGER_COL_PAY, LEDGER_COL_TAGS, LEDGER_COL_LIFE,
    LEDGER_COL_NOTE, LEDGER_COL_CONFLICT, LEDGER_COL_BY, LEDGER_COL_DEV, LEDGER_COL_AT,
    LEDGER_NCOLS
};

/* A header is recognised by en (ASCII case-insensitive), zh or zh2 (exact).
 * kind: 'h' a household field, 'p' a person field, 0 neither; field: the
 * schema field it writes (NULL when kind is 0). */
typedef struct ledger_col {
    const char *en, *zh, *zh2;
    char kind;
    const char *field;
} ledger_col;

extern const ledger_col ledger_cols[LEDGER_NCOLS];

/* A vector of owned, NUL-terminated strings (a cell's elements; doorstepctl's
 * lists of ids).  Zero-initialise; push copies n bytes of s. */
typedef struct ledger_strv {
    char **v;
    size_t n, cap;
} ledger_strv;

bool ledger_strv_push(ledger_strv *l, const char *s, size_t n); /* false on ENOMEM */
void ledger_strv_free(ledger_strv *l);                          /* frees and zeroes */

/* ---- messages ----------------------------------------------------------------- */

/* A list of messages, each "PATH:LINE: text" (owned), with the line each
 * one names, in the order they were found. */
typedef struct ledger_msgs {
    char **v;
    size_t *line;
    size_t n, cap;
} ledger_msgs;

/* Sort m by line, stably (the checks run in passes, so problems are found
 * out of line order).  Returns the number of distinct lines. */
size_t ledger_msgs_sort(ledger_msgs *m);
void ledger_msgs_free(ledger_msgs *m);   /* frees and zeroes; m may be zeroed */

/* ---- 1. bytes to text ---------------------------------------------------------- */

/*
 * ledger_decode — the ledger's text as UTF-8 without a BOM.
 *
 *   bytes, n  the file's contents (n <= LEDGER_MAX_BYTES); borrowed.
 *   enc       NULL: auto (a UTF-8 BOM, or all of it valid UTF-8, means
 *             UTF-8; anything else is read as GBK); "utf-8"; or "gbk"
 *             (read as GB 18030, its superset).
 *   path      the file's name, for the messages only.
 *   utf8      receives a malloc'd, NUL-terminated copy (free it); len its
 *             length without the NUL.  It holds no NUL byte and is valid
 *             UTF-8.
 *   used      receives "utf-8" or "gbk" (static), the encoding read.
 *   err       receives a one-line message on failure, e.g.
 *             "PATH:LINE: invalid UTF-8 (byte 0x.. at offset N); for a GBK
 *             file give --encoding gbk" (offsets count from the file's
 *             first byte, the BOM included; lines from 1).
 *
 * Returns 0, LEDGER_ETOOBIG, LEDGER_ENUL, LEDGER_EUTF8, LEDGER_EGBK,
 * LEDGER_EICONV, LEDGER_ENOMEM or LEDGER_EINVAL; on failure the outputs
 * are zeroed.
 */
int ledger_decode(const char *bytes, size_t n, const char *enc, const char *path, char **utf8,
                  size_t *len, const char **used, char *err, size_t errcap);

/*
 * ledger_read — read the file at path (at most LEDGER_MAX_BYTES) and
 * ledger_decode it.  Returns as ledger_decode, or LEDGER_EIO ("cannot open
 * PATH: reason", "cannot read PATH") or LEDGER_ETOOBIG.
 */
int ledger_read(const char *path, const char *enc, char **utf8, size_t *len, const char **used,
                char *err, size_t errcap);

/* ---- 2. text to rows ------------------------------------------------------------- */

typedef struct ledger_row {
    size_t line;                 /* the physical line the row starts on (1-based) */
    size_t n;                    /* cells, >= 1 */
    char **f;                    /* n NUL-terminated cells (owned) */
} ledger_row;

typedef struct ledger_doc {
    ledger_row *r;               /* r[0] is the header */
    size_t n, cap;
} ledger_doc;

/*
 * ledger_parse — RFC 4180 with the usual tolerances: cells separated by
 * commas; a cell starting with '"' is quoted, may hold commas, line breaks
 * and "" (one quote); records end with LF, CRLF or CR; a line break inside
 * a quoted cell becomes LF; blanks (space, tab) around cells are trimmed;
 * rows whose cells are all empty are skipped.  So no cell starts or ends
 * with a blank or holds a CR, and every row has a non-empty cell.
 *
 * text[0..n) need not be NUL-terminated; a NUL byte in it is refused
 * (LEDGER_ECSV).  *doc must be zeroed; on 0 it holds the rows (free with
 * ledger_doc_free).  On LEDGER_ECSV, *bad_line names the line and *why
 * (static) the problem; on LEDGER_ENOMEM *bad_line is 0 and *why "out of
 * memory".  On failure *doc is left zeroed.
 */
int ledger_parse(const char *text, size_t n, ledger_doc *doc, size_t *bad_line,
                 const char **why);
void ledger_doc_free(ledger_doc *doc);

/* One cell as ledger_parse reads it back: quoted when it holds a comma, a
 * quote, a line break or starts with a blank; written after a ',' unless
 * first.  The export's writer. */
void ledger_csv_put(FILE *f, const char *s, bool first);

/* ---- 3 and 4. checking and importing ------------------------------------------- */

struct ledger_irow;
struct ledger_ihh;

typedef struct ledger_import {
    /* In: set by the caller before ledger_check (borrowed; they must
     * outlive the import). */
    const char *path;            /* the name in problems and warnings */
    const char *shown;           /* the name for the audit entry (UTF-8; NULL: path) */
    const char *enc;             /* the encoding read, for the audit entry */
    const char *actor;           /* audit actor ("admin:NAME") */
    const crdt_schema *sc;       /* the store's schema */
    uint32_t year;               /* the campaign year: the key of keyed fields */
    uint64_t now_ms;             /* wall clock for the server's deltas and the audit */
    bool dry_run;                /* ledger_import_txn counts, then returns LEDGER_DRY_RUN */

    /* Out. */
    ledger_msgs problems;        /* "PATH:LINE: message"; any: nothing may be written */
    ledger_msgs warnings;        /* "PATH:LINE: message" (columns ignored); informative */
    size_t n_rows;               /* person rows (header excluded) */
    size_t n_hh;                 /* distinct households */
    /* set by ledger_import_txn (reset on every call, so a retried
     * transaction counts once): */
    size_t hh_new, persons_new;  /* records that did not exist */
    size_t deltas, ops;          /* deltas appended (would be, dry) and their ops */
    uint64_t first_seq, last_seq; /* the server's seqs of the first and last delta */
    uint64_t audit_seq;          /* the audit entry written (0 when dry) */

    /* Private. */
    ledger_doc doc;
    struct ledger_irow *rows;
    struct ledger_ihh *hh;
    bool checked;                /* ledger_check passed with no problem */
    bool nomem;                  /* a message could not be recorded */
} ledger_import;

/*
 * ledger_check — phase one.  *li must be zeroed apart from its inputs.
 * Takes *doc over (it is zeroed on return, whatever the result, and freed
 * by ledger_import_free; cells are normalised in place: a lowercase x in an
 * ID number, birth dates written 1990/3/1, 1990.3.1 or 19900301).
 *
 * Checks the header (household_id and name needed; a column twice; more
 * than 256 columns), then every row: cell count, household id, name,
 * person id, unresolved conflicts, household fields that differ between
 * its rows, every cell as the op it would write through
 * crdt_schema_check_delta, birth date and gender against the ID number,
 * the same ID number or person id on two rows.  Problems go to
 * li->problems, a header that is not a ledger column to li->warnings.
 *
 * Returns 0 (look at li->problems), LEDGER_ENOROWS (doc->n < 2),
 * LEDGER_EINVAL, or LEDGER_ENOMEM.
 */
int ledger_check(ledger_import *li, ledger_doc *doc);

/*
 * ledger_import_txn — phase two, in t (a write transaction of the caller's).
 * Needs a ledger_check that returned 0 with no problem.  Resets the
 * problems and the counts, then: the person id of each row (person_id,
 * else the one person holding its ID number, else "P" + household id + "-"
 * + its row number in the household), two rows naming one person;
 * households (community, grid, address), then persons in file order, each
 * as one delta signed by the server with only the ops that change the
 * stored record; then the audit entry "import.csv".
 *
 * Returns 0 (commit t), LEDGER_BAD_ROWS or LEDGER_DRY_RUN (abort t: nothing
 * of it is to be kept), or a negative store/CRDT code (abort t; on
 * STORE_EMAPFULL the caller may grow the map and call again in a new
 * transaction).
 */
int ledger_import_txn(store_txn *t, ledger_import *li);

/* Frees what li holds and zeroes its outputs (its inputs are left as
 * they are: the import may be checked again with a new doc). */
void ledger_import_free(ledger_import *li);

#ifdef __cplusplus
}
#endif
#endif
