/*
 * ledger.c — CSV ledgers: decode, parse, check (phase one), import (phase
 * two).  See ledger.h.
 *
 * A ledger has one row per person; the household's columns (community,
 * grid, address) repeat on each of its rows.  Headers are English field
 * names or the station's Chinese ones (ledger_cols).  Every row is checked
 * (every op it would write goes through crdt_schema_check_delta, plus the
 * rules across rows) before anything is written; then, in ONE write
 * transaction of the caller's, the deltas are signed as the server (device
 * 0, the chain the dashboard's staff edits use) and appended, with the
 * audit entry.  Any bad row: every problem is reported, nothing is written.
 *
 * Invariants
 *   - No global mutable state and no output: problems and warnings are
 *     collected in the ledger_import, each "PATH:LINE: message" with its
 *     line kept beside it.  A problem that cannot be recorded (out of
 *     memory) fails the stage, so a bad row is never imported unnoticed.
 *   - Decoded text holds no NUL byte and is valid UTF-8; parsed cells are
 *     NUL-terminated, trimmed of blanks and hold no CR.
 *   - Rows that pass phase one, with an empty problem list, produce deltas
 *     that pass the schema: a person's ops are checked together, as the one
 *     delta phase two will sign (so two tags that are the same, or more ops
 *     than a delta may hold, are caught in phase one).
 *   - Cells in li->rows are borrowed from li->doc, which the import owns
 *     from ledger_check on.
 */
#include "ledger.h"

#include <errno.h>
#include <iconv.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IMPORT_MAX_OPS 40        /* ops per delta the importer builds */
#define LEDGER_MAX_COLS 256      /* header columns */

const ledger_col ledger_cols[LEDGER_NCOLS] = {
    [LEDGER_COL_PID] = {"person_id", "人员编号", NULL, 0, NULL},
    [LEDGER_COL_HH] = {"household_id", "户编号", "户号", 'p', "household"},
    [LEDGER_COL_COMM] = {"community", "所属社区", "社区", 'h', "community"},
    [LEDGER_COL_GRID] = {"grid", "网格", NULL, 'h', "grid"},
    [LEDGER_COL_ADDR] = {"address", "住址", "地址", 'h', "address"},
    [LEDGER_COL_NAME] = {"name", "姓名", NULL, 'p', "name"},
    [LEDGER_COL_IDNUM] = {"id_number", "公民身份号码", "身份证号码", 'p', "id_number"},
    [LEDGER_COL_GENDER] = {"gender", "性别", NULL, 'p', "gender"},
    [LEDGER_COL_BIRTH] = {"birth_date", "出生日期", NULL, 'p', "birth_date"},
    [LEDGER_COL_PHONE] = {"phone", "联系电话", NULL, 'p', "phone"},
    [LEDGER_COL_REL] = {"relation", "与户主关系", NULL, 'p', "relation"},
    [LEDGER_COL_INS] = {"insurance_type", "参保类型", NULL, 'p', "insurance_type"},
    [LEDGER_COL_PAY] = {"payment", "缴费状态", NULL, 'p', "payment"},
    [LEDGER_COL_TAGS] = {"tags", "重点人群标签", "标签", 'p', "tags"},
    [LEDGER_COL_LIFE] = {"life_status", "人员状态", NULL, 'p', "life_status"},
    [LEDGER_COL_NOTE] = {"note", "备注", NULL, 'p', "note"},
    [LEDGER_COL_CONFLICT] = {"conflict", "冲突字段", NULL, 0, NULL},
    [LEDGER_COL_BY] = {"last_changed_by", "最后修改人", NULL, 0, NULL},
    [LEDGER_COL_DEV] = {"last_changed_device", "最后修改设备", NULL, 0, NULL},
    [LEDGER_COL_AT] = {"last_changed_at", "最后修改时间", NULL, 0, NULL},
};

const char *ledger_strerror(int code)
{
    switch (code) {
    case LEDGER_OK: return "ok";
    case LEDGER_EINVAL: return "invalid argument";
    case LEDGER_EIO: return "cannot read the ledger file";
    case LEDGER_ETOOBIG: return "the ledger is too large";
    case LEDGER_ENUL: return "a NUL byte: not a text file";
    case LEDGER_EUTF8: return "invalid UTF-8";
    case LEDGER_EGBK: return "not GBK";
    case LEDGER_EICONV: return "iconv cannot convert from GB18030";
    case LEDGER_ECSV: return "malformed CSV";
    case LEDGER_ENOROWS: return "no rows";
    default: return store_strerror(code);
    }
}

/* ---- messages -------------------------------------------------------------------------------- */

static bool msgs_push(ledger_msgs *m, size_t line, const char *s)
{
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 16;
        char **nv = realloc(m->v, nc * sizeof *nv);
        if (!nv) return false;
        m->v = nv;
        size_t *nl = realloc(m->line, nc * sizeof *nl);
        if (!nl) return false;
        m->line = nl;
        m->cap = nc;
    }
    char *c = strdup(s);
    if (!c) return false;
    m->v[m->n] = c;
    m->line[m->n++] = line;
    return true;
}

void ledger_msgs_free(ledger_msgs *m)
{
    for (size_t i = 0; i < m->n; i++) free(m->v[i]);
    free(m->v);
    free(m->line);
    memset(m, 0, sizeof *m);
}

typedef struct msg_ref {
    size_t line, i;
    char *v;
} msg_ref;

static int cmp_msg_ref(const void *a, const void *b)
{
    const msg_ref *x = a, *y = b;
    if (x->line != y->line) return x->line < y->line ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

size_t ledger_msgs_sort(ledger_msgs *m)
{
    msg_ref *r = m->n ? malloc(m->n * sizeof *r) : NULL;
    if (r) {
        for (size_t i = 0; i < m->n; i++) r[i] = (msg_ref){m->line[i], i, m->v[i]};
        qsort(r, m->n, sizeof *r, cmp_msg_ref);
        for (size_t i = 0; i < m->n; i++) {
            m->line[i] = r[i].line;
            m->v[i] = r[i].v;
        }
        free(r);
    }
    size_t lines = 0;
    for (size_t i = 0; i < m->n; i++) lines += !i || m->line[i] != m->line[i - 1];
    return lines;
}

/* ---- 1. bytes to text: BOM, UTF-8 or GBK ----------------------------------------------------- */

static size_t line_of(const char *p, size_t off)
{
    size_t line = 1;
    for (size_t i = 0; i < off; i++) line += p[i] == '\n';
    return line;
}

/* The first invalid UTF-8 byte's offset, or n if all valid. */
static size_t utf8_bad_at(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t len = p[i] < 0x80 ? 1 : (p[i] & 0xe0) == 0xc0 ? 2 : (p[i] & 0xf0) == 0xe0 ? 3
                   : (p[i] & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || i + len > n || !crdt_utf8_valid(p + i, len)) return i;
        i += len;
    }
    return n;
}

static int set_err(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_err(char *err, size_t cap, int rc, const char *fmt, ...)
{
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* GBK (read as GB 18030, its superset) to UTF-8 with iconv(3). */
static int gbk_to_utf8(const char *path, const char *in, size_t n, char **out, size_t *out_n,
                       char *err, size_t errcap)
{
    iconv_t cd = iconv_open("UTF-8", "GB18030");
    if (cd == (iconv_t)-1)
        return set_err(err, errcap, LEDGER_EICONV, "iconv cannot convert from GB18030 here: %s",
                       strerror(errno));
    size_t cap = n * 2 + 16, left_in = n, left_out = cap;
    char *buf = malloc(cap + 1), *ip = (char *)in, *op = buf;
    if (!buf) {
        iconv_close(cd);
        return set_err(err, errcap, LEDGER_ENOMEM, "out of memory");
    }
    while (left_in) {
        if (iconv(cd, &ip, &left_in, &op, &left_out) != (size_t)-1) break;
        if (errno == E2BIG) {
            size_t used = (size_t)(op - buf);
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) break;
            buf = nb;
            op = buf + used;
            left_out += cap;
            cap *= 2;
            continue;
        }
        size_t off = (size_t)(ip - in);
        iconv_close(cd);
        free(buf);
        return set_err(err, errcap, LEDGER_EGBK,
                       "%s:%zu: byte 0x%02x at offset %zu is not GBK (is the file UTF-8? try "
                       "--encoding utf-8)",
                       path, line_of(in, off), (unsigned)(uint8_t)in[off], off);
    }
    iconv_close(cd);
    if (left_in) {
        free(buf);
        return set_err(err, errcap, LEDGER_ENOMEM, "out of memory");
    }
    *out_n = (size_t)(op - buf);
    buf[*out_n] = 0;
    *out = buf;
    return 0;
}

int ledger_decode(const char *p, size_t n, const char *enc, const char *path, char **utf8,
                  size_t *len, const char **used, char *err, size_t errcap)
{
    int rc;
    *utf8 = NULL;
    *len = 0;
    *used = NULL;
    if (err && errcap) err[0] = 0;
    if (!path) path = "(ledger)";
    if ((!p && n) || (enc && strcmp(enc, "utf-8") && strcmp(enc, "gbk")))
        return set_err(err, errcap, LEDGER_EINVAL, "%s: invalid argument", path);
    if (n > LEDGER_MAX_BYTES)
        return set_err(err, errcap, LEDGER_ETOOBIG, "%s: larger than %u MiB or out of memory",
                       path, LEDGER_MAX_BYTES >> 20);
    size_t off = 0;
    bool bom = n >= 3 && !memcmp(p, "\xef\xbb\xbf", 3);
    if (bom) off = 3;
    const char *z = n ? memchr(p, 0, n) : NULL;
    if (z)
        return set_err(err, errcap, LEDGER_ENUL,
                       "%s: a NUL byte at offset %zu: not a text file (UTF-16 is not "
                       "supported: save as UTF-8 or GBK)",
                       path, (size_t)(z - p));
    size_t bad = utf8_bad_at((const uint8_t *)p + off, n - off) + off;
    if (!enc) enc = bom || bad == n ? "utf-8" : "gbk";
    if (!strcmp(enc, "utf-8")) {
        if (bad != n)
            return set_err(err, errcap, LEDGER_EUTF8,
                           "%s:%zu: invalid UTF-8 (byte 0x%02x at offset %zu); for a GBK file "
                           "give --encoding gbk",
                           path, line_of(p, bad), (unsigned)(uint8_t)p[bad], bad);
        char *t = malloc(n - off + 1);
        if (!t) return set_err(err, errcap, LEDGER_ENOMEM, "out of memory");
        if (n > off) memcpy(t, p + off, n - off);
        t[n - off] = 0;
        *utf8 = t;
        *len = n - off;
        *used = "utf-8";
        return 0;
    }
    char *t = NULL;
    size_t tn = 0;
    if ((rc = gbk_to_utf8(path, p ? p : "", n, &t, &tn, err, errcap))) return rc;
    *utf8 = t;
    *len = tn;
    *used = "gbk";
    return 0;
}

int ledger_read(const char *path, const char *enc, char **utf8, size_t *len, const char **used,
                char *err, size_t errcap)
{
    *utf8 = NULL;
    *len = 0;
    *used = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, errcap, LEDGER_EIO, "cannot open %s: %s", path, strerror(errno));
    crdt_buf b = {0};
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.n + k > LEDGER_MAX_BYTES || crdt_buf_append(&b, chunk, k)) {
            fclose(f);
            crdt_buf_free(&b);
            return set_err(err, errcap, LEDGER_ETOOBIG, "%s: larger than %u MiB or out of memory",
                           path, LEDGER_MAX_BYTES >> 20);
        }
    }
    bool rerr = ferror(f);
    fclose(f);
    if (rerr) {
        crdt_buf_free(&b);
        return set_err(err, errcap, LEDGER_EIO, "cannot read %s", path);
    }
    int rc = ledger_decode((const char *)b.p, b.n, enc, path, utf8, len, used, err, errcap);
    crdt_buf_free(&b);
    return rc;
}

/* ---- 2. text to rows ------------------------------------------------------------------------- */

void ledger_doc_free(ledger_doc *d)
{
    for (size_t i = 0; i < d->n; i++) {
        for (size_t k = 0; k < d->r[i].n; k++) free(d->r[i].f[k]);
        free(d->r[i].f);
    }
    free(d->r);
    memset(d, 0, sizeof *d);
}

/* Push cell b (trimmed of ASCII blanks) onto the row being built. */
static bool push_cell(ledger_row *row, size_t *cap, const crdt_buf *b)
{
    const char *p = b->n ? (const char *)b->p : "";
    size_t n = b->n;
    while (n && (*p == ' ' || *p == '\t')) p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    if (row->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        char **nf = realloc(row->f, nc * sizeof *nf);
        if (!nf) return false;
        row->f = nf;
        *cap = nc;
    }
    char *c = malloc(n + 1);
    if (!c) return false;
    memcpy(c, p, n);
    c[n] = 0;
    row->f[row->n++] = c;
    return true;
}

int ledger_parse(const char *p, size_t n, ledger_doc *d, size_t *bad_line, const char **why)
{
    size_t i = 0, line = 1;
    crdt_buf b = {0};
    ledger_row row = {0};
    size_t cap = 0;
    int rc = LEDGER_ENOMEM;
    *why = "out of memory";
    *bad_line = 0;
    memset(d, 0, sizeof *d);
    const char *z = n ? memchr(p, 0, n) : NULL;
    if (z) {
        *bad_line = line_of(p, (size_t)(z - p));
        *why = "a NUL byte (not a text file)";
        return LEDGER_ECSV;
    }
    while (i < n) {
        memset(&row, 0, sizeof row);
        cap = 0;
        row.line = line;
        for (;;) {
            crdt_buf_reset(&b);
            if (i < n && p[i] == '"') {
                size_t open_line = line;
                i++;
                for (;;) {
                    if (i >= n) {
                        *bad_line = open_line;
                        *why = "a quoted field is never closed (a '\"' is missing)";
                        rc = LEDGER_ECSV;
                        goto fail;
                    }
                    char ch = p[i];
                    if (ch == '"') {
                        if (i + 1 < n && p[i + 1] == '"') {
                            if (crdt_buf_append(&b, "\"", 1)) goto fail;
                            i += 2;
                            continue;
                        }
                        i++;
                        break;
                    }
                    if (ch == '\r' && i + 1 < n && p[i + 1] == '\n') {
                        i++;
                        continue;
                    }
                    if (ch == '\n' || ch == '\r') {
                        line++;
                        ch = '\n';
                    }
                    if (crdt_buf_append(&b, &ch, 1)) goto fail;
                    i++;
                }
                while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
                if (i < n && p[i] != ',' && p[i] != '\n' && p[i] != '\r') {
                    *bad_line = line;
                    *why = "text after the closing '\"' of a quoted field (write \"\" for a "
                           "quote inside one)";
                    rc = LEDGER_ECSV;
                    goto fail;
                }
            } else {
                size_t s0 = i;
                while (i < n && p[i] != ',' && p[i] != '\n' && p[i] != '\r') i++;
                if (crdt_buf_append(&b, p + s0, i - s0)) goto fail;
            }
            if (!push_cell(&row, &cap, &b)) goto fail;
            if (i < n && p[i] == ',') {
                i++;
                continue;
            }
            if (i < n && p[i] == '\r') {
                i++;
                if (i < n && p[i] == '\n') i++;
                line++;
            } else if (i < n && p[i] == '\n') {
                i++;
                line++;
            }
            break;
        }
        bool blank = true;
        for (size_t k = 0; k < row.n; k++) blank &= !row.f[k][0];
        if (blank) {
            for (size_t k = 0; k < row.n; k++) free(row.f[k]);
            free(row.f);
            continue;
        }
        if (d->n == d->cap) {
            size_t nc = d->cap ? d->cap * 2 : 256;
            ledger_row *nr = realloc(d->r, nc * sizeof *nr);
            if (!nr) goto fail;
            d->r = nr;
            d->cap = nc;
        }
        d->r[d->n++] = row;
    }
    crdt_buf_free(&b);
    *why = NULL;
    return 0;
fail:
    for (size_t k = 0; k < row.n; k++) free(row.f[k]);
    free(row.f);
    crdt_buf_free(&b);
    ledger_doc_free(d);
    return rc;
}

void ledger_csv_put(FILE *f, const char *s, bool first)
{
    if (!first) fputc(',', f);
    if (!strpbrk(s, ",\"\r\n") && s[0] != ' ' && s[0] != '\t') {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* ---- 3. checking rows ------------------------------------------------------------------------ */

typedef struct ledger_ihh {        /* a household named in the file */
    const char *id;
    size_t line;                   /* its first row */
    const char *v[3];              /* community, grid, address (first non-empty) */
    size_t vline[3];
    size_t rows;
} ihh;

typedef struct ledger_irow {
    size_t line;
    const char *v[LEDGER_NCOLS];   /* the row's cells ("" if absent), borrowed from the doc */
    size_t hh;                     /* index into the households */
    size_t index;                  /* 1-based row number within its household */
    char pid[CRDT_RECID_MAX + 1];  /* resolved person id */
} irow;


static void msg_add(ledger_import *li, ledger_msgs *m, size_t line, const char *fmt, va_list ap)
{
    char buf[1024];
    int k = snprintf(buf, sizeof buf, "%s:%zu: ", li->path, line);
    if (k < 0) k = 0;
    if ((size_t)k >= sizeof buf) k = (int)sizeof buf - 1;
    vsnprintf(buf + k, sizeof buf - (size_t)k, fmt, ap);
    if (!msgs_push(m, line, buf)) li->nomem = true;
}

static void problem(ledger_import *li, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void problem(ledger_import *li, size_t line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    msg_add(li, &li->problems, line, fmt, ap);
    va_end(ap);
}

static void warning(ledger_import *li, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warning(ledger_import *li, size_t line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    msg_add(li, &li->warnings, line, fmt, ap);
    va_end(ap);
}

/* A field value as canonical bytes (ints parsed for INT fields). */
static int val_bytes(const crdt_vspec *v, const char *s, crdt_buf *out)
{
    crdt_buf_reset(out);
    if (v->vtype == CRDT_VT_INT) {
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (!*s || *end || errno) return CRDT_EVALUE;
        return crdt_val_put_int(out, x);
    }
    return crdt_val_put_str(out, s, strlen(s));
}

/* Why value s fails its column, in words (after the schema said rc): the
 * text every write path gives (crdt_value_message), then what helps fix
 * the cell (the allowed values; the check character the checksum wants). */
static void reason(const crdt_schema *sc, int rc, int col, const char *s, char *buf, size_t cap)
{
    const ledger_col *lc = &ledger_cols[col];
    size_t n = (size_t)snprintf(buf, cap, "%s", crdt_value_message(rc));
    if (n >= cap) return;
    if (rc == CRDT_EENUM && lc->field) {
        const char *kind = lc->kind == 'h' ? "household" : "person";
        const crdt_kspec *k = crdt_schema_kind(sc, kind, strlen(kind));
        const crdt_fspec *f = k ? crdt_schema_field(k, lc->field, strlen(lc->field)) : NULL;
        if (f && f->v.vtype == CRDT_VT_ENUM) {
            n += (size_t)snprintf(buf + n, cap - n, ":");
            for (uint32_t i = 0; i < f->v.n_enum && n < cap; i++)
                n += (size_t)snprintf(buf + n, cap - n, " %s", f->v.enum_values[i]);
            return;
        }
    }
    if (col == LEDGER_COL_IDNUM && strlen(s) == 18) {
        char c = crdt_idnum_check_char(s);
        if (c && c != s[17])
            snprintf(buf + n, cap - n, ": wrong check character '%c' (the GB 11643 checksum "
                                       "gives '%c')", s[17], c);
    }
}

/* Check ops against the schema as one delta on kind/id; 0 or a CRDT code. */
static int check_ops(const crdt_schema *sc, const char *kind, const char *id, const crdt_op *ops,
                     size_t n)
{
    crdt_delta d;
    memset(&d, 0, sizeof d);
    d.dev = 1;
    d.epoch = 1;
    d.seq = 1;
    d.hlc = CRDT_HLC_MAKE(1, 0);
    d.kind = kind;
    d.kind_len = (uint32_t)strlen(kind);
    d.id = id;
    d.id_len = (uint32_t)strlen(id);
    d.ops = ops;
    d.n_ops = (uint32_t)n;
    int err_op = -1;
    return crdt_schema_check_delta(sc, &d, &err_op);
}

/* "1990/3/1", "1990.3.1", "19900301" -> "1990-03-01"; anything else as is. */
static char *norm_date(const char *s)
{
    unsigned y, m, dd;
    char sep[2], tail;
    size_t n = strlen(s);
    if (n == 8 && strspn(s, "0123456789") == 8 && sscanf(s, "%4u%2u%2u", &y, &m, &dd) == 3) {
    } else if (sscanf(s, "%4u%1[/.]%2u%1[/.]%2u%c", &y, sep, &m, sep, &dd, &tail) == 5 &&
               s[4] == sep[0]) {
    } else {
        return strdup(s);
    }
    char *o = malloc(16);
    if (o) snprintf(o, 16, "%04u-%02u-%02u", y % 10000, m % 100, dd % 100);
    return o;
}

/* ---- string vectors (ledger.h) ---- */

void ledger_strv_free(ledger_strv *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

bool ledger_strv_push(ledger_strv *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 8;
        char **nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return false;
        l->v = nv;
        l->cap = nc;
    }
    char *c = malloc(n + 1);
    if (!c) return false;
    memcpy(c, s, n);
    c[n] = 0;
    l->v[l->n++] = c;
    return true;
}

/* Split a tags cell on ';', '；', '、' or '|' into l; an element given
 * twice is kept once (the cell is a set). */
static bool split_tags(const char *s, ledger_strv *l)
{
    const char *p = s;
    while (*p) {
        size_t n = 0;
        size_t skip = 0;
        while (p[n]) {
            if (p[n] == ';' || p[n] == '|') { skip = 1; break; }
            if (!strncmp(p + n, "；", 3) || !strncmp(p + n, "、", 3)) { skip = 3; break; }
            n++;
        }
        const char *q = p;
        size_t m = n;
        while (m && (*q == ' ')) q++, m--;
        while (m && q[m - 1] == ' ') m--;
        bool seen = false;
        for (size_t i = 0; i < l->n && !seen; i++)
            seen = strlen(l->v[i]) == m && !memcmp(l->v[i], q, m);
        if (m && !seen && !ledger_strv_push(l, q, m)) return false;
        p += n + skip;
        if (!skip) break;
    }
    return true;
}

/* The ops of one delta being built: values and keys in buffers of their
 * own, observed dots (phase two) malloc'd. */
typedef struct opbuf {
    crdt_op op[IMPORT_MAX_OPS];
    crdt_buf val[IMPORT_MAX_OPS], key[IMPORT_MAX_OPS];
    crdt_dot *obs[IMPORT_MAX_OPS];
    size_t n;
} opbuf;

static void opbuf_reset(opbuf *o)
{
    for (size_t i = 0; i < IMPORT_MAX_OPS; i++) {
        crdt_buf_reset(&o->val[i]);
        crdt_buf_reset(&o->key[i]);
        free(o->obs[i]);
        o->obs[i] = NULL;
    }
    memset(o->op, 0, sizeof o->op);
    o->n = 0;
}

static void opbuf_free(opbuf *o)
{
    opbuf_reset(o);
    for (size_t i = 0; i < IMPORT_MAX_OPS; i++) {
        crdt_buf_free(&o->val[i]);
        crdt_buf_free(&o->key[i]);
    }
}

/* Add the op(s) a cell writes to field `field` of kind (without observed
 * dots, which phase two adds): one set for lww/mv (keyed by the campaign
 * year if the field is keyed), one add per element for a set field.  0,
 * CRDT_EFIELD (no such field), CRDT_EOP, a value error, or CRDT_ENOMEM /
 * CRDT_ETOOMANYOPS. */
static int cell_ops(const crdt_schema *sc, const char *kind, const char *field, const char *val,
                    uint32_t year, opbuf *o)
{
    const crdt_kspec *k = crdt_schema_kind(sc, kind, strlen(kind));
    const crdt_fspec *f = k ? crdt_schema_field(k, field, strlen(field)) : NULL;
    if (!f) return CRDT_EFIELD;
    ledger_strv els = {0};
    int rc = 0;
    if (f->type == CRDT_F_SET) {
        if (!split_tags(val, &els)) rc = CRDT_ENOMEM;
    } else if (f->type == CRDT_F_LWW || f->type == CRDT_F_MV) {
        if (!ledger_strv_push(&els, val, strlen(val))) rc = CRDT_ENOMEM;
    } else {
        return CRDT_EOP;
    }
    for (size_t i = 0; i < els.n && !rc; i++) {
        if (o->n == IMPORT_MAX_OPS) {
            rc = CRDT_ETOOMANYOPS;
            break;
        }
        crdt_op *op = &o->op[o->n];
        memset(op, 0, sizeof *op);
        op->code = f->type == CRDT_F_SET ? CRDT_OP_ADD : CRDT_OP_SET;
        op->field = f->name;
        op->field_len = (uint32_t)strlen(f->name);
        if ((rc = val_bytes(&f->v, els.v[i], &o->val[o->n]))) break;
        op->val = (crdt_blob){o->val[o->n].p, (uint32_t)o->val[o->n].n};
        if (f->keyed) {
            crdt_buf_reset(&o->key[o->n]);
            rc = f->key.vtype == CRDT_VT_INT ? crdt_val_put_int(&o->key[o->n], year)
                                             : CRDT_EKEY;
            if (rc) break;
            op->key = (crdt_blob){o->key[o->n].p, (uint32_t)o->key[o->n].n};
        }
        o->n++;
    }
    ledger_strv_free(&els);
    return rc;
}

/* The ops of a person row: every person column that is not empty. */
static int person_ops(const ledger_import *li, const irow *ir, opbuf *o)
{
    opbuf_reset(o);
    for (int col = 0; col < LEDGER_NCOLS; col++) {
        const ledger_col *lc = &ledger_cols[col];
        if (lc->kind != 'p' || !*ir->v[col]) continue;
        int rc = cell_ops(li->sc, "person", lc->field, ir->v[col], li->year, o);
        if (rc) return rc;
    }
    return 0;
}

static const char *col_label(int col, const char *const *hdr)
{
    return hdr && hdr[col] ? hdr[col] : ledger_cols[col].en;
}

/* Households by id: open addressing over indexes into li->hh. */
typedef struct hh_table {
    size_t *slot, cap;           /* slot: index + 1, 0 = empty */
} hh_table;

static int hh_table_init(hh_table *t, size_t n)
{
    t->cap = 16;
    while (t->cap < 2 * n) t->cap *= 2;
    t->slot = calloc(t->cap, sizeof *t->slot);
    return t->slot ? 0 : LEDGER_ENOMEM;
}

/* The index of household id in li->hh, or li->n_hh after reserving its
 * slot (the caller appends it there). */
static size_t hh_find(hh_table *t, const ledger_import *li, const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    for (size_t i = (size_t)h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->slot[i]) {
            t->slot[i] = li->n_hh + 1;
            return li->n_hh;
        }
        if (!strcmp(li->hh[t->slot[i] - 1].id, id)) return t->slot[i] - 1;
    }
}

/* (value, line) pairs sorted by value then line: equal values end up side
 * by side, the first row holding each one first.  Reentrant (no global
 * comparison key). */
typedef struct keyline {
    const char *k;
    size_t line;
} keyline;

static int cmp_keyline(const void *a, const void *b)
{
    const keyline *x = a, *y = b;
    int d = strcmp(x->k, y->k);
    return d ? d : (x->line > y->line) - (x->line < y->line);
}

/* The same non-empty value of column col on two rows. */
static int dup_check(ledger_import *li, int col, const char *const *hdr, const char *why)
{
    keyline *v = malloc((li->n_rows + 1) * sizeof *v);
    size_t n = 0;
    if (!v) return LEDGER_ENOMEM;
    for (size_t i = 0; i < li->n_rows; i++)
        if (*li->rows[i].v[col]) v[n++] = (keyline){li->rows[i].v[col], li->rows[i].line};
    qsort(v, n, sizeof *v, cmp_keyline);
    for (size_t i = 1, first = 0; i < n; i++) {
        if (strcmp(v[i - 1].k, v[i].k)) {
            first = i;
            continue;
        }
        problem(li, v[i].line, "%s: %s is already on line %zu (%s)", col_label(col, hdr), v[i].k,
                v[first].line, why);
    }
    free(v);
    return 0;
}

/* One data row: its cells, its household, every cell through the schema,
 * the row's ops together, the ID number's birth date and gender.  0 or
 * LEDGER_ENOMEM. */
static int check_row(ledger_import *li, ledger_row *row, const ledger_row *h, const int *map,
                     const char *const *hdr, hh_table *ht, opbuf *o)
{
    irow *ir = &li->rows[li->n_rows++];
    ir->line = row->line;
    for (int col = 0; col < LEDGER_NCOLS; col++) ir->v[col] = "";
    if (row->n > h->n)
        problem(li, row->line, "%zu cells, but the header has %zu columns (an unquoted comma in "
                               "a cell?)", row->n, h->n);
    for (size_t k = 0; k < row->n && k < h->n; k++) {
        if (map[k] < 0) continue;
        int col = map[k];
        if (col == LEDGER_COL_IDNUM)
            for (char *q = row->f[k]; *q; q++)
                if (*q == 'x') *q = 'X';
        if (col == LEDGER_COL_BIRTH && row->f[k][0]) {
            char *nd = norm_date(row->f[k]);
            if (!nd) return LEDGER_ENOMEM;
            free(row->f[k]);
            row->f[k] = nd;
        }
        ir->v[col] = row->f[k];
    }
    const char *hid = ir->v[LEDGER_COL_HH];
    if (!*hid) {
        problem(li, row->line, "%s: empty (every row names its household)",
                col_label(LEDGER_COL_HH, hdr));
        return 0;
    }
    if (!crdt_recid_valid(hid, strlen(hid))) {
        problem(li, row->line, "%s: \"%s\" is not a valid record id (1..64 of A-Z a-z 0-9 _ . -)",
                col_label(LEDGER_COL_HH, hdr), hid);
        return 0;
    }
    if (!*ir->v[LEDGER_COL_NAME])
        problem(li, row->line, "%s: %s", col_label(LEDGER_COL_NAME, hdr),
                crdt_value_message(CRDT_EBLANK));
    const char *pid = ir->v[LEDGER_COL_PID];
    if (*pid && !crdt_recid_valid(pid, strlen(pid)))
        problem(li, row->line, "%s: \"%s\" is not a valid record id",
                col_label(LEDGER_COL_PID, hdr), pid);
    if (*ir->v[LEDGER_COL_CONFLICT])
        problem(li, row->line, "%s: \"%s\": the exported row has unresolved conflicts; resolve "
                               "them (dashboard) first",
                col_label(LEDGER_COL_CONFLICT, hdr), ir->v[LEDGER_COL_CONFLICT]);
    /* Household: its fields must agree across its rows. */
    size_t hi = hh_find(ht, li, hid);
    if (hi == li->n_hh) {
        li->hh[hi].id = hid;
        li->hh[hi].line = row->line;
        li->n_hh++;
    }
    ir->hh = hi;
    ir->index = ++li->hh[hi].rows;
    static const int hcols[3] = {LEDGER_COL_COMM, LEDGER_COL_GRID, LEDGER_COL_ADDR};
    for (int j = 0; j < 3; j++) {
        const char *v = ir->v[hcols[j]];
        if (!*v) continue;
        if (!li->hh[hi].v[j]) {
            li->hh[hi].v[j] = v;
            li->hh[hi].vline[j] = row->line;
        } else if (strcmp(li->hh[hi].v[j], v)) {
            problem(li, row->line, "%s: \"%s\" differs from \"%s\" on line %zu for household %s",
                    col_label(hcols[j], hdr), v, li->hh[hi].v[j], li->hh[hi].vline[j], hid);
        }
    }
    /* Every cell through the schema. */
    bool cells_ok = true;
    for (int col = 0; col < LEDGER_NCOLS; col++) {
        const ledger_col *lc = &ledger_cols[col];
        const char *v = ir->v[col];
        if (!lc->kind || !*v) continue;
        opbuf_reset(o);
        const char *kind = lc->kind == 'h' ? "household" : "person";
        int x = cell_ops(li->sc, kind, lc->field, v, li->year, o);
        for (size_t i = 0; !x && i < o->n; i++) x = check_ops(li->sc, kind, hid, &o->op[i], 1);
        if (x == CRDT_ENOMEM) return LEDGER_ENOMEM;
        if (x) {
            char why[512];
            reason(li->sc, x, col, v, why, sizeof why);
            problem(li, row->line, "%s: \"%s\": %s", col_label(col, hdr), v,
                    x == CRDT_EFIELD ? "the store's schema has no such field" : why);
            cells_ok = false;
        }
    }
    /* The person's cells together, as the one delta phase two signs (the
     * record id there is a person id; the household id stands in, it is a
     * valid record id too). */
    if (cells_ok) {
        int x = person_ops(li, ir, o);
        if (!x) x = check_ops(li->sc, "person", hid, o->op, o->n);
        if (x == CRDT_ENOMEM) return LEDGER_ENOMEM;
        if (x)
            problem(li, row->line, "the row's %zu values together do not pass the schema: %s",
                    o->n, crdt_strerror(x));
    }
    /* Cross-field: birth date and gender must agree with the ID number. */
    const char *idn = ir->v[LEDGER_COL_IDNUM];
    if (strlen(idn) == 18 && !crdt_check_idnum(idn, 18)) {
        char bd[11];
        snprintf(bd, sizeof bd, "%.4s-%.2s-%.2s", idn + 6, idn + 10, idn + 12);
        const char *birth = ir->v[LEDGER_COL_BIRTH], *gender = ir->v[LEDGER_COL_GENDER];
        if (*birth && !crdt_check_date(birth, strlen(birth)) && strcmp(bd, birth))
            problem(li, row->line, "%s: \"%s\" does not match the ID number's birth date %s",
                    col_label(LEDGER_COL_BIRTH, hdr), birth, bd);
        const char *g = (idn[16] - '0') % 2 ? "男" : "女";
        if ((!strcmp(gender, "男") || !strcmp(gender, "女")) && strcmp(g, gender))
            problem(li, row->line, "%s: \"%s\" does not match the ID number (its 17th digit says "
                                   "%s)",
                    col_label(LEDGER_COL_GENDER, hdr), gender, g);
    }
    return 0;
}

int ledger_check(ledger_import *li, ledger_doc *doc)
{
    const char *hdr[LEDGER_NCOLS] = {0};
    int map[LEDGER_MAX_COLS];
    int rc = 0;
    if (li->doc.r || li->rows || !li->path || !li->sc) {
        ledger_doc_free(doc);
        return LEDGER_EINVAL;
    }
    li->doc = *doc;
    memset(doc, 0, sizeof *doc);
    li->checked = false;
    if (li->doc.n < 2) return LEDGER_ENOROWS;
    ledger_row *h = &li->doc.r[0];
    if (h->n > LEDGER_MAX_COLS) {
        problem(li, h->line, "more than %d columns", LEDGER_MAX_COLS);
        return li->nomem ? LEDGER_ENOMEM : 0;
    }
    for (size_t k = 0; k < h->n; k++) {
        map[k] = -1;
        const char *name = h->f[k];
        for (int col = 0; col < LEDGER_NCOLS; col++) {
            const ledger_col *lc = &ledger_cols[col];
            if (strcasecmp(name, lc->en) && strcmp(name, lc->zh) &&
                (!lc->zh2 || strcmp(name, lc->zh2)))
                continue;
            if (hdr[col]) {
                problem(li, h->line, "column \"%s\" appears twice (as \"%s\" too)", name, hdr[col]);
            } else {
                hdr[col] = name;
                map[k] = col;
            }
        }
        if (map[k] < 0 && name[0])
            warning(li, h->line, "column %zu \"%s\" is not a ledger column: ignored", k + 1, name);
    }
    if (!hdr[LEDGER_COL_HH] || !hdr[LEDGER_COL_NAME]) {
        problem(li, h->line, "the header needs the columns household_id (户编号) and name (姓名)%s",
                h->n == 1 && strchr(h->f[0], ';') ? "; is the file separated by ';'? it must be "
                                                   "comma-separated" : "");
        return li->nomem ? LEDGER_ENOMEM : 0;
    }
    li->rows = calloc(li->doc.n, sizeof *li->rows);
    li->hh = calloc(li->doc.n, sizeof *li->hh);
    if (!li->rows || !li->hh) return LEDGER_ENOMEM;
    opbuf o;
    memset(&o, 0, sizeof o);
    hh_table ht = {0};
    rc = hh_table_init(&ht, li->doc.n);
    for (size_t r = 1; r < li->doc.n && !rc; r++)
        rc = check_row(li, &li->doc.r[r], h, map, hdr, &ht, &o);
    opbuf_free(&o);
    free(ht.slot);
    /* The same person twice in the file (sorted, so n log n). */
    if (!rc) rc = dup_check(li, LEDGER_COL_IDNUM, hdr, "one row per person");
    if (!rc) rc = dup_check(li, LEDGER_COL_PID, hdr, "one row per person");
    if (!rc && li->nomem) rc = LEDGER_ENOMEM;
    li->checked = !rc && !li->problems.n;
    return rc;
}

/* ---- 4. phase two: one write transaction ----------------------------------------------------- */

/* The current live values of a field instance equal exactly {val}? */
static bool field_is(const crdt_field *f, crdt_blob val)
{
    if (!f || !f->n) return false;
    for (uint32_t i = 0; i < f->n; i++)
        if (crdt_blob_cmp(f->e[i].v, val)) return false;
    return true;
}

/* Keep only the ops that change something in r (NULL: a new record); an mv
 * set observes every live dot of its instance, so the ledger's value
 * supersedes what the record held (a later, concurrent phone edit still
 * shows as a conflict).  A set element already present is dropped. */
static int prune_ops(const crdt_record *r, opbuf *o)
{
    size_t w = 0;
    for (size_t i = 0; i < o->n; i++) {
        crdt_op *op = &o->op[i];
        char name[CRDT_NAME_MAX];
        snprintf(name, sizeof name, "%.*s", (int)op->field_len, op->field);
        const crdt_field *f = r ? crdt_record_field(r, name, op->key) : NULL;
        bool keep = true;
        if (op->code == CRDT_OP_ADD) {
            for (uint32_t k = 0; f && k < f->n && keep; k++)
                keep = crdt_blob_cmp(f->e[k].v, op->val) != 0;
        } else {
            keep = !field_is(f, op->val);
            if (keep && f && f->type == CRDT_F_MV && f->n) {
                crdt_dot *obs = calloc(f->n, sizeof *obs);
                if (!obs) return LEDGER_ENOMEM;
                for (uint32_t k = 0; k < f->n; k++) obs[k] = f->e[k].st.dot;
                free(o->obs[i]);
                o->obs[i] = obs;
                op->obs = obs;
                op->n_obs = f->n;
            }
        }
        if (!keep) continue;
        if (w != i) {
            /* move op i (and the buffers its blobs point into) to slot w */
            crdt_buf tv = o->val[w], tk = o->key[w];
            crdt_dot *to = o->obs[w];
            o->val[w] = o->val[i];
            o->key[w] = o->key[i];
            o->obs[w] = o->obs[i];
            o->val[i] = tv;
            o->key[i] = tk;
            o->obs[i] = to;
            o->op[w] = *op;
        }
        w++;
    }
    o->n = w;
    return 0;
}

/* Sign ops on kind/id as the server and append them in t
 * (store_server_append).  0, 1 (a problem recorded), or a store/CRDT error. */
static int server_append(store_txn *t, ledger_import *li, const char *kind, const char *id,
                         const opbuf *o, size_t line)
{
    store_server_delta r;
    int rc = store_server_append(t, kind, id, o->op, (uint32_t)o->n, li->now_ms,
                                 LEDGER_MAX_AHEAD_MS, &r);
    if (rc) return rc;
    if (r.invalid) {
        problem(li, line, "%s %s: the delta does not pass the schema: %s", kind, id,
                crdt_strerror(r.invalid));
        return 1;
    }
    if (r.oc.result != STORE_APPLIED) {
        problem(li, line, "%s %s: the server's delta was not applied (%s: %s)", kind, id,
                r.oc.result == STORE_REJECTED ? "rejected" : "quarantined",
                r.oc.result == STORE_REJECTED ? store_strerror(r.oc.code)
                                              : store_qreason_name(r.oc.code));
        return 1;
    }
    if (!li->first_seq) li->first_seq = r.seq;
    li->last_seq = r.seq;
    li->deltas++;
    li->ops += o->n;
    return 0;
}

/* The person id of row ir: person_id, else the one person whose ID number it
 * is, else "P" + household id + "-" + its row number in the household
 * (two digits or more).  0, 1 (problem recorded), or an error. */
static int resolve_pid(store_txn *t, ledger_import *li, irow *ir)
{
    if (*ir->v[LEDGER_COL_PID]) {
        snprintf(ir->pid, sizeof ir->pid, "%s", ir->v[LEDGER_COL_PID]);
        return 0;
    }
    const char *idn = ir->v[LEDGER_COL_IDNUM];
    if (*idn) {
        store_ids ids = {0};
        int rc = store_lookup(t, STORE_LOOKUP_IDNUM, idn, strlen(idn), &ids);
        if (rc) return rc;
        if (ids.n > 1) {
            problem(li, ir->line, "id_number %s is held by %zu persons (%s, %s%s): give "
                                  "person_id",
                    idn, ids.n, ids.id[0], ids.id[1], ids.n > 2 ? ", ..." : "");
            store_ids_free(&ids);
            return 1;
        }
        size_t found = ids.n;
        if (found == 1) snprintf(ir->pid, sizeof ir->pid, "%s", ids.id[0]);
        store_ids_free(&ids);
        if (found == 1) return 0;
    }
    const char *hid = li->hh[ir->hh].id;
    int k = snprintf(ir->pid, sizeof ir->pid, "P%s-%02zu", hid, ir->index);
    if (k < 0 || (size_t)k >= sizeof ir->pid) {
        problem(li, ir->line, "household id %s is too long to derive a person id from: give "
                              "person_id", hid);
        return 1;
    }
    /* A derived id that already names someone else is not this person. */
    crdt_record *r = NULL;
    int rc = store_get_record(t, "person", ir->pid, &r);
    if (rc == STORE_ENOTFOUND) return 0;
    if (rc) return rc;
    const crdt_field *f = crdt_record_field(r, "id_number", (crdt_blob){NULL, 0});
    bool other = false;
    for (uint32_t i = 0; f && i < f->n; i++) {
        crdt_val v;
        if (!crdt_val_parse(f->e[i].v, &v) && v.t == CRDT_V_STR &&
            (!*idn || v.len != strlen(idn) || memcmp(v.s, idn, v.len)))
            other = true;
    }
    crdt_record_free(r);
    if (other) {
        problem(li, ir->line, "the derived person id %s already belongs to a person with another "
                              "ID number: give person_id",
                ir->pid);
        return 1;
    }
    return 0;
}

/* Two rows that resolved to the same person (say an ID number already on
 * file under a person_id another row names). */
static int pid_dups(ledger_import *li)
{
    keyline *v = malloc((li->n_rows + 1) * sizeof *v);
    if (!v) return LEDGER_ENOMEM;
    for (size_t i = 0; i < li->n_rows; i++) v[i] = (keyline){li->rows[i].pid, li->rows[i].line};
    qsort(v, li->n_rows, sizeof *v, cmp_keyline);
    for (size_t i = 1, first = 0; i < li->n_rows; i++) {
        if (strcmp(v[i - 1].k, v[i].k)) {
            first = i;
            continue;
        }
        problem(li, v[i].line, "person %s is also on line %zu (same person_id, or an ID number "
                               "already on file as that person)",
                v[i].k, v[first].line);
    }
    free(v);
    return 0;
}

int ledger_import_txn(store_txn *t, ledger_import *li)
{
    opbuf o;
    crdt_record *r = NULL;
    int rc;
    if (!t || !li->checked) return LEDGER_EINVAL;
    li->deltas = li->persons_new = li->hh_new = li->ops = 0;
    li->first_seq = li->last_seq = li->audit_seq = 0;
    li->nomem = false;
    ledger_msgs_free(&li->problems);
    memset(&o, 0, sizeof o);
    /* Person ids first (lookups see the store as it was), then the
     * rows naming the same person twice through different columns. */
    for (size_t i = 0; i < li->n_rows; i++)
        if ((rc = resolve_pid(t, li, &li->rows[i])) < 0) goto out;
    if ((rc = pid_dups(li))) goto out;
    if (li->problems.n) {
        rc = LEDGER_BAD_ROWS;
        goto out;
    }
    /* Households: community, grid, address, once each. */
    for (size_t h = 0; h < li->n_hh; h++) {
        static const char *const hf[3] = {"community", "grid", "address"};
        opbuf_reset(&o);
        for (int j = 0; j < 3; j++)
            if (li->hh[h].v[j] &&
                (rc = cell_ops(li->sc, "household", hf[j], li->hh[h].v[j], li->year, &o)))
                goto out;
        rc = store_get_record(t, "household", li->hh[h].id, &r);
        if (rc == STORE_ENOTFOUND) li->hh_new++;
        else if (rc) goto out;
        if ((rc = prune_ops(r, &o))) goto out;
        crdt_record_free(r);
        r = NULL;
        if (o.n && (rc = server_append(t, li, "household", li->hh[h].id, &o, li->hh[h].line)))
            goto out;
    }
    /* Persons, in file order. */
    for (size_t i = 0; i < li->n_rows; i++) {
        irow *ir = &li->rows[i];
        if ((rc = person_ops(li, ir, &o))) goto out;
        rc = store_get_record(t, "person", ir->pid, &r);
        if (rc == STORE_ENOTFOUND) li->persons_new++;
        else if (rc) goto out;
        if ((rc = prune_ops(r, &o))) goto out;
        crdt_record_free(r);
        r = NULL;
        if (o.n && (rc = server_append(t, li, "person", ir->pid, &o, ir->line))) goto out;
    }
    if (li->dry_run) {
        rc = LEDGER_DRY_RUN;
        goto out;
    }
    char detail[STORE_AUDIT_DETAIL_MAX + 1];
    int dn = snprintf(detail, sizeof detail,
                      "file %s (%s): %zu rows, %zu households (%zu new), %zu persons (%zu new); "
                      "%zu deltas, %zu ops",
                      li->shown ? li->shown : li->path, li->enc ? li->enc : "utf-8", li->n_rows,
                      li->n_hh, li->hh_new, li->n_rows, li->persons_new, li->deltas, li->ops);
    if (li->deltas && dn > 0 && (size_t)dn < sizeof detail)
        snprintf(detail + dn, sizeof detail - (size_t)dn, ", server device 0 seq %llu..%llu",
                 (unsigned long long)li->first_seq, (unsigned long long)li->last_seq);
    rc = store_audit_append(t, li->now_ms, li->actor ? li->actor : "admin:?", "import.csv",
                            detail, &li->audit_seq);
out:
    crdt_record_free(r);
    opbuf_free(&o);
    if (li->nomem && rc >= 0) rc = LEDGER_ENOMEM;
    if (rc == 1 && li->problems.n) rc = LEDGER_BAD_ROWS;
    return rc;
}

void ledger_import_free(ledger_import *li)
{
    ledger_msgs_free(&li->problems);
    ledger_msgs_free(&li->warnings);
    ledger_doc_free(&li->doc);
    free(li->rows);
    free(li->hh);
    li->rows = NULL;
    li->hh = NULL;
    li->checked = li->nomem = false;
    li->n_rows = li->n_hh = 0;
    li->hh_new = li->persons_new = li->deltas = li->ops = 0;
    li->first_seq = li->last_seq = li->audit_seq = 0;
}
