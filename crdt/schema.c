/*
 * schema.c — the record schema: lookups, its consistency check, and checking
 * decoded deltas against it.
 *
 * A schema (built by a loader, e.g. wire/schema_load.c from JSON, or by hand
 * in tests) lists record kinds; each kind lists fields with a CRDT type
 * (lww, mv, set, log, counter, stage) and a value spec.  The op/type table
 * that crdt_schema_check_delta enforces:
 *
 *   lww      set    value                  no obs
 *   mv       set    value                  obs allowed
 *   set      add    value = element        no obs
 *            rem    value = element        obs allowed (may be empty)
 *   log      app    value = entry map      no obs
 *   counter  inc    int, != 0, |v| <= inc_max   no obs
 *   stage    raise  a stage name (enum member)  no obs
 *   (record) del / undel: no field, no key, no value, no obs
 *
 * and a key is present exactly when the field is keyed (lww/mv only).
 *
 * Invariants: a schema that passed crdt_schema_validate has well-formed
 * unique names, non-empty unique enum lists, ordered ranges, stage fields of
 * type ENUM, ENTRY exactly on LOG fields, counter fields of type INT with
 * inc_max > 0, keys only on lww/mv and of type INT or ENUM, and REF kinds
 * that exist.  The check functions rely on that and never allocate.
 */
#include "crdt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENUM_MAX 1024      /* entries in one enum list */
#define ENUM_VALUE_MAX 255 /* bytes in one enum value */
#define TEXT_MAX 4096      /* max_len ceiling: the walker's string limit */

/* ---- freeing ---------------------------------------------------------------- */

static void vspec_free(crdt_vspec *v)
{
    if (v->enum_values) {
        for (uint32_t i = 0; i < v->n_enum; i++) free(v->enum_values[i]);
        free(v->enum_values);
    }
    v->enum_values = NULL;
    v->n_enum = 0;
}

void crdt_schema_free(crdt_schema *s)
{
    if (!s) return;
    for (uint32_t k = 0; s->kinds && k < s->n_kinds; k++) {
        crdt_kspec *ks = &s->kinds[k];
        for (uint32_t f = 0; ks->fields && f < ks->n_fields; f++) {
            crdt_fspec *fs = &ks->fields[f];
            vspec_free(&fs->v);
            vspec_free(&fs->key);
            for (uint32_t m = 0; fs->members && m < fs->n_members; m++)
                vspec_free(&fs->members[m].v);
            free(fs->members);
            free(fs->doc);
        }
        free(ks->fields);
    }
    free(s->kinds);
    free(s);
}

/* ---- lookups ------------------------------------------------------------------ */

static bool name_eq(const char *name, size_t cap, const char *s, size_t len)
{
    return len < cap && strnlen(name, cap) == len && memcmp(name, s, len) == 0;
}

const crdt_kspec *crdt_schema_kind(const crdt_schema *s, const char *kind, size_t len)
{
    if (!s || !kind || !s->kinds) return NULL;
    for (uint32_t i = 0; i < s->n_kinds; i++)
        if (name_eq(s->kinds[i].name, CRDT_NAME_MAX, kind, len)) return &s->kinds[i];
    return NULL;
}

const crdt_fspec *crdt_schema_field(const crdt_kspec *k, const char *field, size_t len)
{
    if (!k || !field || !k->fields) return NULL;
    for (uint32_t i = 0; i < k->n_fields; i++)
        if (name_eq(k->fields[i].name, CRDT_NAME_MAX, field, len)) return &k->fields[i];
    return NULL;
}

int crdt_vspec_enum_index(const crdt_vspec *v, const char *s, size_t len)
{
    if (!v || !v->enum_values || (!s && len)) return -1;
    for (uint32_t i = 0; i < v->n_enum; i++) {
        const char *e = v->enum_values[i];
        if (e && strlen(e) == len && (len == 0 || memcmp(e, s, len) == 0)) return (int)i;
    }
    return -1;
}

/* ---- value checks ------------------------------------------------------------- */


/* Control characters: C0 other than \t and \n, DEL, and C1 (U+0080..U+009F,
 * UTF-8 C2 80..C2 9F).  The input is valid UTF-8. */
static bool has_control(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n; i++) {
        if ((p[i] < 0x20 && p[i] != '\n' && p[i] != '\t') || p[i] == 0x7f) return true;
        if (p[i] == 0xc2 && i + 1 < n && p[i + 1] >= 0x80 && p[i + 1] <= 0x9f) return true;
    }
    return false;
}

/* Empty, or only spaces: ASCII space, tab, newline, CR and the ideographic
 * space U+3000 (UTF-8 E3 80 80) a Chinese input method types. */
static bool is_blank(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') continue;
        if (p[i] == 0xe3 && i + 2 < n && p[i + 1] == 0x80 && p[i + 2] == 0x80) {
            i += 2;
            continue;
        }
        return false;
    }
    return true;
}

int crdt_vspec_check(const crdt_vspec *v, const crdt_val *val)
{
    if (!v || !val) return CRDT_EINVAL;
    if (v->vtype == CRDT_VT_ENTRY) return CRDT_EINVAL; /* needs the fspec */
    if (v->vtype == CRDT_VT_INT) {
        if (val->t != CRDT_V_INT) return CRDT_EVALUE;
        return val->i < v->min || val->i > v->max ? CRDT_ERANGE : CRDT_OK;
    }
    if (v->vtype == CRDT_VT_BOOL) return val->t == CRDT_V_BOOL ? CRDT_OK : CRDT_EVALUE;
    if (v->vtype < CRDT_VT_TEXT || v->vtype > CRDT_VT_REF) return CRDT_EINVAL;
    /* Everything else is a string. */
    if (val->t != CRDT_V_STR || (!val->s && val->len)) return CRDT_EVALUE;
    switch (v->vtype) {
    case CRDT_VT_TEXT:
        if (val->len > v->max_len) return CRDT_ETEXT;
        if (!crdt_utf8_valid((const uint8_t *)val->s, val->len)) return CRDT_EVALUE;
        if (has_control(val->s, val->len)) return CRDT_EVALUE;
        return v->nonblank && is_blank(val->s, val->len) ? CRDT_EBLANK : CRDT_OK;
    case CRDT_VT_DATE: return crdt_check_date(val->s, val->len);
    case CRDT_VT_ENUM:
        return crdt_vspec_enum_index(v, val->s, val->len) < 0 ? CRDT_EENUM : CRDT_OK;
    case CRDT_VT_IDNUM: return crdt_check_idnum(val->s, val->len);
    case CRDT_VT_PHONE: return crdt_check_phone(val->s, val->len);
    case CRDT_VT_REF: return crdt_recid_valid(val->s, val->len) ? CRDT_OK : CRDT_ERECID;
    default: return CRDT_EINVAL;
    }
}

int crdt_fspec_check_value(const crdt_fspec *f, const crdt_val *val)
{
    bool seen[CRDT_VAL_MAP_MAX];
    if (!f || !val) return CRDT_EINVAL;
    if (f->v.vtype != CRDT_VT_ENTRY) return crdt_vspec_check(&f->v, val);
    if (val->t != CRDT_V_MAP) return CRDT_EVALUE;
    if (f->n_members > CRDT_VAL_MAP_MAX || (f->n_members && !f->members)) return CRDT_EINVAL;
    memset(seen, 0, sizeof(seen));
    for (uint32_t i = 0; i < val->nkv && i < CRDT_VAL_MAP_MAX; i++) {
        const crdt_member *m = NULL;
        crdt_val mv;
        int rc;
        for (uint32_t j = 0; j < f->n_members; j++)
            if (name_eq(f->members[j].name, CRDT_NAME_MAX, val->kv[i].k, val->kv[i].klen)) {
                m = &f->members[j];
                seen[j] = true;
                break;
            }
        if (!m) return CRDT_EUNKNOWNKEY;
        memset(&mv, 0, sizeof(mv));
        mv.t = val->kv[i].v.t;
        mv.b = val->kv[i].v.b;
        mv.i = val->kv[i].v.i;
        mv.s = val->kv[i].v.s;
        mv.len = val->kv[i].v.len;
        if ((rc = crdt_vspec_check(&m->v, &mv))) return rc;
    }
    for (uint32_t j = 0; j < f->n_members; j++)
        if (f->members[j].required && !seen[j]) return CRDT_EMISSING;
    return CRDT_OK;
}

/* ---- schema consistency ------------------------------------------------------- */

typedef struct vctx {
    const crdt_schema *s;
    char *err;
    size_t errlen;
} vctx;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int verr(vctx *c, const char *fmt, ...)
{
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return CRDT_ESCHEMA;
}

static const char *vtype_name(int t)
{
    static const char *const n[] = {"?", "text", "int", "bool", "date", "enum",
                                    "idnum", "phone", "ref", "entry"};
    return t >= CRDT_VT_TEXT && t <= CRDT_VT_ENTRY ? n[t] : "?";
}

static const char *ftype_name(int t)
{
    static const char *const n[] = {"?", "lww", "mv", "set", "log", "counter", "stage"};
    return t >= CRDT_F_LWW && t <= CRDT_F_STAGE ? n[t] : "?";
}

/* 1..31 bytes of [a-z0-9_], NUL-terminated within the buffer. */
static bool ident_ok(const char *name)
{
    size_t n = strnlen(name, CRDT_NAME_MAX);
    if (n == 0 || n >= CRDT_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
    }
    return true;
}

/* A printable copy of a possibly unterminated name for messages. */
static const char *shown(const char *name, char buf[CRDT_NAME_MAX])
{
    size_t n = strnlen(name, CRDT_NAME_MAX - 1);
    memcpy(buf, name, n);
    buf[n] = 0;
    return buf;
}

/* Check one value spec; `where` names it ("person.tags", "person.visits.date"). */
static int vspec_ok(vctx *c, const crdt_vspec *v, const char *where)
{
    switch (v->vtype) {
    case CRDT_VT_TEXT:
        if (v->max_len < 1 || v->max_len > TEXT_MAX)
            return verr(c, "%s: max_len %u out of range (1..%d)", where,
                        (unsigned)v->max_len, TEXT_MAX);
        return CRDT_OK;
    case CRDT_VT_INT:
        if (v->min > v->max)
            return verr(c, "%s: min %lld is greater than max %lld", where,
                        (long long)v->min, (long long)v->max);
        return CRDT_OK;
    case CRDT_VT_BOOL:
    case CRDT_VT_DATE:
    case CRDT_VT_IDNUM:
    case CRDT_VT_PHONE:
        return CRDT_OK;
    case CRDT_VT_ENUM:
        if (v->n_enum == 0 || !v->enum_values)
            return verr(c, "%s: enum needs at least one value", where);
        if (v->n_enum > ENUM_MAX)
            return verr(c, "%s: %u enum values, at most %d allowed", where,
                        (unsigned)v->n_enum, ENUM_MAX);
        for (uint32_t i = 0; i < v->n_enum; i++) {
            const char *e = v->enum_values[i];
            size_t n = e ? strlen(e) : 0;
            if (n == 0 || n > ENUM_VALUE_MAX)
                return verr(c, "%s: enum value %u is empty or longer than %d bytes",
                            where, (unsigned)i, ENUM_VALUE_MAX);
            if (!crdt_utf8_valid((const uint8_t *)e, n) || has_control(e, n) ||
                strchr(e, '\n') || strchr(e, '\t'))
                return verr(c, "%s: enum value %u is not valid printable UTF-8", where,
                            (unsigned)i);
            for (uint32_t j = 0; j < i; j++)
                if (strcmp(v->enum_values[j], e) == 0)
                    return verr(c, "%s: duplicate enum value '%s'", where, e);
        }
        return CRDT_OK;
    case CRDT_VT_REF: {
        size_t n = strnlen(v->ref_kind, CRDT_NAME_MAX);
        if (n == 0 || n >= CRDT_NAME_MAX)
            return verr(c, "%s: ref needs the name of a kind", where);
        if (!crdt_schema_kind(c->s, v->ref_kind, n))
            return verr(c, "%s: ref to unknown kind '%s'", where, v->ref_kind);
        return CRDT_OK;
    }
    case CRDT_VT_ENTRY:
        return verr(c, "%s: type entry is not allowed here", where);
    default:
        return verr(c, "%s: unknown value type %d", where, (int)v->vtype);
    }
}

static int field_ok(vctx *c, const crdt_kspec *k, const crdt_fspec *f)
{
    char where[2 * CRDT_NAME_MAX + 48];
    int rc;
    snprintf(where, sizeof where, "%s.%s", k->name, f->name);
    if (f->type < CRDT_F_LWW || f->type > CRDT_F_STAGE)
        return verr(c, "%s: unknown CRDT type %d", where, (int)f->type);
    /* Which value types each CRDT type takes. */
    switch (f->type) {
    case CRDT_F_LOG:
        if (f->v.vtype != CRDT_VT_ENTRY)
            return verr(c, "%s: log fields must have type entry (has %s)", where,
                        vtype_name(f->v.vtype));
        break;
    case CRDT_F_COUNTER:
        if (f->v.vtype != CRDT_VT_INT)
            return verr(c, "%s: counter fields must have type int (has %s)", where,
                        vtype_name(f->v.vtype));
        if (f->inc_max <= 0)
            return verr(c, "%s: counter inc_max must be > 0 (is %lld)", where,
                        (long long)f->inc_max);
        break;
    case CRDT_F_STAGE:
        if (f->v.vtype != CRDT_VT_ENUM)
            return verr(c, "%s: stage fields must have type enum (has %s)", where,
                        vtype_name(f->v.vtype));
        break;
    default:
        if (f->v.vtype == CRDT_VT_ENTRY)
            return verr(c, "%s: type entry is only for log fields (this is %s)", where,
                        ftype_name(f->type));
        break;
    }
    if (f->v.vtype == CRDT_VT_ENTRY) {
        if (f->n_members == 0 || !f->members)
            return verr(c, "%s: entry needs at least one member", where);
        if (f->n_members > CRDT_VAL_MAP_MAX)
            return verr(c, "%s: %u members, at most %d allowed", where,
                        (unsigned)f->n_members, CRDT_VAL_MAP_MAX);
        for (uint32_t i = 0; i < f->n_members; i++) {
            const crdt_member *m = &f->members[i];
            char mw[sizeof where + CRDT_NAME_MAX + 2], nb[CRDT_NAME_MAX];
            if (!ident_ok(m->name))
                return verr(c, "%s: member name '%s' must be 1..31 bytes of [a-z0-9_]",
                            where, shown(m->name, nb));
            for (uint32_t j = 0; j < i; j++)
                if (strcmp(f->members[j].name, m->name) == 0)
                    return verr(c, "%s: duplicate member '%s'", where, m->name);
            snprintf(mw, sizeof mw, "%s.%s", where, m->name);
            if ((rc = vspec_ok(c, &m->v, mw))) return rc;
        }
    } else {
        if (f->n_members)
            return verr(c, "%s: members are only for type entry", where);
        if ((rc = vspec_ok(c, &f->v, where))) return rc;
    }
    if (f->keyed) {
        char kw[sizeof where + 8];
        snprintf(kw, sizeof kw, "%s.key", where);
        if (f->type != CRDT_F_LWW && f->type != CRDT_F_MV)
            return verr(c, "%s: only lww and mv fields can be keyed (this is %s)", where,
                        ftype_name(f->type));
        if (f->key.vtype != CRDT_VT_INT && f->key.vtype != CRDT_VT_ENUM)
            return verr(c, "%s: key type must be int or enum (has %s)", kw,
                        vtype_name(f->key.vtype));
        if ((rc = vspec_ok(c, &f->key, kw))) return rc;
    }
    return CRDT_OK;
}

int crdt_schema_validate(const crdt_schema *s, char *err, size_t errlen)
{
    vctx c = {s, err, errlen};
    char nb[CRDT_NAME_MAX];
    size_t n;
    int rc;
    if (err && errlen) err[0] = 0;
    if (!s) return CRDT_EINVAL;
    n = strnlen(s->name, sizeof s->name);
    if (n == 0 || n >= sizeof s->name)
        return verr(&c, "schema name must be 1..%zu bytes", sizeof s->name - 1);
    for (size_t i = 0; i < n; i++) {
        char ch = s->name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return verr(&c, "schema name '%s' must use only [A-Za-z0-9_.-]", s->name);
    }
    if (s->version < 1) return verr(&c, "schema version must be >= 1");
    if (s->n_kinds == 0 || !s->kinds) return verr(&c, "schema has no kinds");
    for (uint32_t i = 0; i < s->n_kinds; i++) {
        const crdt_kspec *k = &s->kinds[i];
        if (!ident_ok(k->name))
            return verr(&c, "kind '%s': name must be 1..31 bytes of [a-z0-9_]",
                        shown(k->name, nb));
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(s->kinds[j].name, k->name) == 0)
                return verr(&c, "%s: duplicate kind", k->name);
        if (k->n_fields == 0 || !k->fields) return verr(&c, "%s: kind has no fields", k->name);
        for (uint32_t f = 0; f < k->n_fields; f++) {
            const crdt_fspec *fs = &k->fields[f];
            if (!ident_ok(fs->name))
                return verr(&c, "%s: field name '%s' must be 1..31 bytes of [a-z0-9_]",
                            k->name, shown(fs->name, nb));
            for (uint32_t j = 0; j < f; j++)
                if (strcmp(k->fields[j].name, fs->name) == 0)
                    return verr(&c, "%s.%s: duplicate field", k->name, fs->name);
            if ((rc = field_ok(&c, k, fs))) return rc;
        }
    }
    return CRDT_OK;
}

/* ---- deltas ---------------------------------------------------------------------- */

static bool op_fits(int ftype, int op)
{
    switch (ftype) {
    case CRDT_F_LWW:
    case CRDT_F_MV: return op == CRDT_OP_SET;
    case CRDT_F_SET: return op == CRDT_OP_ADD || op == CRDT_OP_REM;
    case CRDT_F_LOG: return op == CRDT_OP_APP;
    case CRDT_F_COUNTER: return op == CRDT_OP_INC;
    case CRDT_F_STAGE: return op == CRDT_OP_RAISE;
    default: return false;
    }
}

static int check_op(const crdt_kspec *k, const crdt_op *o)
{
    const crdt_fspec *f;
    crdt_val v;
    bool obs_ok;
    int rc;
    if (o->code < CRDT_OP_SET || o->code > CRDT_OP_UNDEL) return CRDT_EOPCODE;
    if (o->code == CRDT_OP_DEL || o->code == CRDT_OP_UNDEL) {
        if (o->field || o->field_len) return CRDT_EOP;
        if (o->key.n) return CRDT_EKEY;
        if (o->val.n) return CRDT_EVALUE;
        if (o->n_obs) return CRDT_EOBS;
        return CRDT_OK;
    }
    if (!o->field || o->field_len == 0) return CRDT_EFIELD;
    if (!(f = crdt_schema_field(k, o->field, o->field_len))) return CRDT_EFIELD;
    if (!op_fits(f->type, o->code)) return CRDT_EOP;

    if (f->keyed) {
        if (o->key.n == 0 || crdt_val_parse(o->key, &v) || crdt_vspec_check(&f->key, &v))
            return CRDT_EKEY;
    } else if (o->key.n) {
        return CRDT_EKEY;
    }

    obs_ok = (f->type == CRDT_F_MV && o->code == CRDT_OP_SET) ||
             (f->type == CRDT_F_SET && o->code == CRDT_OP_REM);
    if (o->n_obs && !obs_ok) return CRDT_EOBS;
    if (o->n_obs && !o->obs) return CRDT_EINVAL;
    for (uint32_t i = 0; i < o->n_obs; i++)
        /* Device 0 is the server itself (staff edits): its dots may be
         * observed like any phone's.  Seqs start at 1. */
        if (o->obs[i].seq < 1) return CRDT_EOBS;

    if (o->val.n == 0) return CRDT_EVALUE;
    if ((rc = crdt_val_parse(o->val, &v))) return rc;
    switch (f->type) {
    case CRDT_F_COUNTER:
        if (v.t != CRDT_V_INT) return CRDT_EVALUE;
        if (f->inc_max <= 0 || v.i == 0 || v.i > f->inc_max || v.i < -f->inc_max)
            return CRDT_ERANGE;
        return CRDT_OK;
    case CRDT_F_STAGE:
        if (v.t != CRDT_V_STR) return CRDT_EVALUE;
        return crdt_vspec_enum_index(&f->v, v.s, v.len) < 0 ? CRDT_EENUM : CRDT_OK;
    default:
        return crdt_fspec_check_value(f, &v);
    }
}

int crdt_schema_check_delta(const crdt_schema *s, const crdt_delta *d, int *err_op)
{
    const crdt_kspec *k;
    if (err_op) *err_op = -1;
    if (!s || !d || (d->n_ops && !d->ops)) return CRDT_EINVAL;
    if (!d->kind || !(k = crdt_schema_kind(s, d->kind, d->kind_len))) return CRDT_EKIND;
    if (d->n_ops == 0) return CRDT_ENOOPS;
    for (uint32_t i = 0; i < d->n_ops; i++) {
        int rc = check_op(k, &d->ops[i]);
        if (rc) {
            if (err_op) *err_op = (int)i;
            return rc;
        }
    }
    return CRDT_OK;
}
