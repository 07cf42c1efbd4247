/*
 * schema_load.c — read a record schema from its JSON file (format:
 * docs/SCHEMA.md) into a crdt_schema, then crdt_schema_validate() it.
 *
 * The file is parsed by libjansson with JSON_REJECT_DUPLICATES; a syntax
 * error is reported as "source:line:column: jansson's text".  Everything
 * after that is reported with the source and the path of the offending
 * attribute, e.g.
 *   yibao.json: kinds[1](person).fields[3](id_number).type: unknown type
 *   'idnr' (expected text|int|bool|date|enum|idnum|phone|ref|entry)
 * Unknown attributes are errors (a typo must never pass silently), and so
 * are attributes that do not apply to the field's type (max_len on an int).
 * Semantic rules (unique names, enum lists, ranges, which CRDT type takes
 * which value type, refs to existing kinds) are crdt_schema_validate's; its
 * message is prefixed with the source.
 *
 * Invariants: on failure *out is NULL and nothing leaks (the partial schema
 * is always consistent enough for crdt_schema_free: every count is set only
 * together with the array it counts); on success the schema is valid.
 */
#include "wire.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_FILE_MAX (4u << 20) /* a schema file is small; refuse huge ones */
#define DEFAULT_TEXT_LEN 200
#define DEFAULT_INC_MAX 1000000
#define PATH_MAX_LEN 256

typedef struct ld {
    const char *src;
    char *err;
    size_t errlen;
} ld;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int lerr(ld *l, const char *path, const char *attr, const char *fmt, ...)
{
    if (l->err && l->errlen) {
        va_list ap;
        int n;
        if (!*path && !attr)
            n = snprintf(l->err, l->errlen, "%s: ", l->src);
        else
            n = snprintf(l->err, l->errlen, "%s: %s%s%s: ", l->src, path,
                         (*path && attr) ? "." : "", attr ? attr : "");
        if (n >= 0 && (size_t)n < l->errlen) {
            va_start(ap, fmt);
            vsnprintf(l->err + n, l->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return CRDT_ESCHEMA;
}

/* Build a path: snprintf into out, truncating silently (paths are short). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void mkpath(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* ---- names of things ------------------------------------------------------ */

static const char *const crdt_names[] = {"lww", "mv", "set", "log", "counter", "stage"};
static const uint8_t crdt_codes[] = {CRDT_F_LWW, CRDT_F_MV, CRDT_F_SET,
                                     CRDT_F_LOG, CRDT_F_COUNTER, CRDT_F_STAGE};
static const char *const type_names[] = {"text", "int", "bool", "date", "enum",
                                         "idnum", "phone", "ref", "entry"};
static const uint8_t type_codes[] = {CRDT_VT_TEXT, CRDT_VT_INT, CRDT_VT_BOOL,
                                     CRDT_VT_DATE, CRDT_VT_ENUM, CRDT_VT_IDNUM,
                                     CRDT_VT_PHONE, CRDT_VT_REF, CRDT_VT_ENTRY};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* "a|b|c" from a NULL-terminated list, into buf. */
static const char *joined(const char *const *list, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; list[i]; i++) {
        int w = snprintf(buf + n, cap - n, "%s%s", i ? "|" : "", list[i]);
        if (w < 0 || (size_t)w >= cap - n) break;
        n += (size_t)w;
    }
    return buf;
}

/* Every key of obj must be in allowed (NULL-terminated). */
static int check_attrs(ld *l, const char *path, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val) {
        bool ok = false;
        (void)val;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0) ok = true;
        if (!ok) {
            char buf[256];
            return lerr(l, path, NULL, "unknown attribute '%s' (expected %s)", key,
                        joined(allowed, buf, sizeof buf));
        }
    }
    return CRDT_OK;
}

/* ---- typed attribute readers ---------------------------------------------- */

/* A string attribute without NUL bytes; *s borrowed from the JSON. */
static int get_str(ld *l, const char *path, json_t *obj, const char *attr, bool required,
                   const char **s, size_t *len)
{
    json_t *v = json_object_get(obj, attr);
    *s = NULL;
    *len = 0;
    if (!v) return required ? lerr(l, path, attr, "missing (required)") : CRDT_OK;
    if (!json_is_string(v)) return lerr(l, path, attr, "expected a string");
    *s = json_string_value(v);
    *len = json_string_length(v);
    if (strlen(*s) != *len) return lerr(l, path, attr, "contains a NUL character");
    return CRDT_OK;
}

/* An integer attribute in [lo, hi]; *present tells whether it was there. */
static int get_int(ld *l, const char *path, json_t *obj, const char *attr, int64_t lo,
                   int64_t hi, int64_t *out, bool *present)
{
    json_t *v = json_object_get(obj, attr);
    *out = 0; /* defined on every path: callers read it only when *present */
    *present = v != NULL;
    if (!v) return CRDT_OK;
    if (!json_is_integer(v)) return lerr(l, path, attr, "expected an integer");
    json_int_t x = json_integer_value(v);
    if ((int64_t)x < lo || (int64_t)x > hi)
        return lerr(l, path, attr, "%lld out of range (%lld..%lld)", (long long)x,
                    (long long)lo, (long long)hi);
    *out = (int64_t)x;
    return CRDT_OK;
}

/* A name attribute copied into a CRDT_NAME_MAX buffer. */
static int get_name(ld *l, const char *path, json_t *obj, const char *attr,
                    char out[CRDT_NAME_MAX])
{
    const char *s;
    size_t n;
    int rc = get_str(l, path, obj, attr, true, &s, &n);
    if (rc) return rc;
    if (n == 0 || n >= CRDT_NAME_MAX)
        return lerr(l, path, attr, "'%s' must be 1..%d bytes", s, CRDT_NAME_MAX - 1);
    memcpy(out, s, n);
    out[n] = 0;
    return CRDT_OK;
}

static int get_code(ld *l, const char *path, json_t *obj, const char *attr, bool required,
                    const char *const *names, const uint8_t *codes, size_t count,
                    const char *what, uint8_t *out)
{
    const char *s;
    size_t n;
    int rc = get_str(l, path, obj, attr, required, &s, &n);
    if (rc || !s) return rc;
    for (size_t i = 0; i < count; i++)
        if (strcmp(names[i], s) == 0) {
            *out = codes[i];
            return CRDT_OK;
        }
    char buf[128];
    size_t m = 0;
    buf[0] = 0;
    for (size_t i = 0; i < count; i++) {
        int w = snprintf(buf + m, sizeof buf - m, "%s%s", i ? "|" : "", names[i]);
        if (w < 0 || (size_t)w >= sizeof buf - m) break;
        m += (size_t)w;
    }
    return lerr(l, path, attr, "unknown %s '%s' (expected %s)", what, s, buf);
}

static const char *type_name(uint8_t t)
{
    for (size_t i = 0; i < NELEM(type_codes); i++)
        if (type_codes[i] == t) return type_names[i];
    return "?";
}

/*
 * The value-spec attributes shared by fields, entry members and keys:
 * max_len (text), min/max (int), values (enum), ref (ref).  v->vtype is
 * already set; an attribute that does not apply to it is an error.
 */
static int load_vspec(ld *l, const char *path, json_t *obj, crdt_vspec *v)
{
    int64_t x;
    bool have;
    int rc;
    json_t *vals;
    const char *s;
    size_t n;

    /* max_len */
    if ((rc = get_int(l, path, obj, "max_len", 1, 4096, &x, &have))) return rc;
    if (have && v->vtype != CRDT_VT_TEXT)
        return lerr(l, path, "max_len", "applies only to type text (this is %s)",
                    type_name(v->vtype));
    v->max_len = have ? (uint32_t)x : DEFAULT_TEXT_LEN;

    /* min, max */
    v->min = INT64_MIN;
    v->max = INT64_MAX;
    if ((rc = get_int(l, path, obj, "min", INT64_MIN, INT64_MAX, &x, &have))) return rc;
    if (have && v->vtype != CRDT_VT_INT)
        return lerr(l, path, "min", "applies only to type int (this is %s)",
                    type_name(v->vtype));
    if (have) v->min = x;
    if ((rc = get_int(l, path, obj, "max", INT64_MIN, INT64_MAX, &x, &have))) return rc;
    if (have && v->vtype != CRDT_VT_INT)
        return lerr(l, path, "max", "applies only to type int (this is %s)",
                    type_name(v->vtype));
    if (have) v->max = x;

    /* values */
    vals = json_object_get(obj, "values");
    if (vals && v->vtype != CRDT_VT_ENUM)
        return lerr(l, path, "values", "applies only to type enum (this is %s)",
                    type_name(v->vtype));
    if (v->vtype == CRDT_VT_ENUM) {
        if (!vals) return lerr(l, path, "values", "missing (required for type enum)");
        if (!json_is_array(vals)) return lerr(l, path, "values", "expected an array of strings");
        size_t cnt = json_array_size(vals);
        if (cnt == 0) return lerr(l, path, "values", "must not be empty");
        if (cnt > 1024) return lerr(l, path, "values", "more than 1024 values");
        v->enum_values = calloc(cnt, sizeof(char *));
        if (!v->enum_values) return CRDT_ENOMEM;
        v->n_enum = (uint32_t)cnt;
        for (size_t i = 0; i < cnt; i++) {
            json_t *e = json_array_get(vals, i);
            char at[32];
            mkpath(at, sizeof at, "values[%zu]", i);
            if (!json_is_string(e)) return lerr(l, path, at, "expected a string");
            s = json_string_value(e);
            n = json_string_length(e);
            if (strlen(s) != n) return lerr(l, path, at, "contains a NUL character");
            v->enum_values[i] = malloc(n + 1);
            if (!v->enum_values[i]) return CRDT_ENOMEM;
            memcpy(v->enum_values[i], s, n + 1);
        }
    }

    /* ref */
    if ((rc = get_str(l, path, obj, "ref", false, &s, &n))) return rc;
    if (s && v->vtype != CRDT_VT_REF)
        return lerr(l, path, "ref", "applies only to type ref (this is %s)",
                    type_name(v->vtype));
    if (v->vtype == CRDT_VT_REF) {
        if (!s) return lerr(l, path, "ref", "missing (required for type ref: the kind referred to)");
        if (n == 0 || n >= CRDT_NAME_MAX)
            return lerr(l, path, "ref", "'%s' must be 1..%d bytes", s, CRDT_NAME_MAX - 1);
        memcpy(v->ref_kind, s, n + 1);
    }
    return CRDT_OK;
}

static int load_member(ld *l, const char *path, json_t *jm, crdt_member *m)
{
    static const char *const attrs[] = {"name", "type", "required", "max_len", "min",
                                        "max", "values", "ref", "doc", NULL};
    char mp[PATH_MAX_LEN];
    json_t *req;
    const char *s;
    size_t n;
    int rc;
    if (!json_is_object(jm)) return lerr(l, path, NULL, "expected an object");
    if ((rc = get_name(l, path, jm, "name", m->name))) return rc;
    mkpath(mp, sizeof mp, "%s(%s)", path, m->name);
    if ((rc = check_attrs(l, mp, jm, attrs))) return rc;
    if ((rc = get_str(l, mp, jm, "doc", false, &s, &n))) return rc;
    if ((rc = get_code(l, mp, jm, "type", true, type_names, type_codes, NELEM(type_names),
                       "type", &m->v.vtype)))
        return rc;
    if (m->v.vtype == CRDT_VT_ENTRY)
        return lerr(l, mp, "type", "an entry member cannot itself be an entry");
    req = json_object_get(jm, "required");
    if (req && !json_is_boolean(req)) return lerr(l, mp, "required", "expected true or false");
    m->required = req && json_is_true(req);
    if ((rc = load_vspec(l, mp, jm, &m->v))) return rc;
    m->v.nonblank = m->required; /* a required text member must say something */
    return CRDT_OK;
}

static int load_key(ld *l, const char *path, json_t *jk, crdt_vspec *k)
{
    static const char *const attrs[] = {"type", "min", "max", "values", NULL};
    char kp[PATH_MAX_LEN];
    int rc;
    mkpath(kp, sizeof kp, "%s.key", path);
    if (!json_is_object(jk))
        return lerr(l, kp, NULL, "expected an object such as {\"type\":\"int\",\"min\":2000,\"max\":2100}");
    if ((rc = check_attrs(l, kp, jk, attrs))) return rc;
    if ((rc = get_code(l, kp, jk, "type", true, type_names, type_codes, NELEM(type_names),
                       "type", &k->vtype)))
        return rc;
    if (k->vtype != CRDT_VT_INT && k->vtype != CRDT_VT_ENUM)
        return lerr(l, kp, "type", "key type must be int or enum (not %s)", type_name(k->vtype));
    return load_vspec(l, kp, jk, k);
}

static int load_field(ld *l, const char *path, json_t *jf, crdt_fspec *f)
{
    static const char *const attrs[] = {"name", "crdt", "type", "max_len", "min", "max",
                                        "values", "ref", "key", "members", "inc_max",
                                        "required", "doc", NULL};
    char fp[PATH_MAX_LEN];
    json_t *jk, *jm;
    const char *s;
    size_t n;
    int64_t x;
    bool have, have_type;
    int rc;
    if (!json_is_object(jf)) return lerr(l, path, NULL, "expected an object");
    if ((rc = get_name(l, path, jf, "name", f->name))) return rc;
    mkpath(fp, sizeof fp, "%s(%s)", path, f->name);
    if ((rc = check_attrs(l, fp, jf, attrs))) return rc;

    if ((rc = get_code(l, fp, jf, "crdt", true, crdt_names, crdt_codes, NELEM(crdt_names),
                       "CRDT type", &f->type)))
        return rc;
    /* The value type: required, except where the CRDT type implies it. */
    have_type = json_object_get(jf, "type") != NULL;
    if (!have_type) {
        if (f->type == CRDT_F_COUNTER) f->v.vtype = CRDT_VT_INT;
        else if (f->type == CRDT_F_STAGE) f->v.vtype = CRDT_VT_ENUM;
        else if (f->type == CRDT_F_LOG) f->v.vtype = CRDT_VT_ENTRY;
        else return lerr(l, fp, "type", "missing (required for %s fields)", crdt_names[f->type - 1]);
    } else if ((rc = get_code(l, fp, jf, "type", true, type_names, type_codes,
                              NELEM(type_names), "type", &f->v.vtype))) {
        return rc;
    }
    if ((rc = load_vspec(l, fp, jf, &f->v))) return rc;

    /* required (text of lww and mv fields): a value may not be blank */
    json_t *req = json_object_get(jf, "required");
    if (req && !json_is_boolean(req)) return lerr(l, fp, "required", "expected true or false");
    if (req && json_is_true(req)) {
        if (f->v.vtype != CRDT_VT_TEXT || (f->type != CRDT_F_LWW && f->type != CRDT_F_MV))
            return lerr(l, fp, "required", "applies only to text values of lww and mv fields "
                                           "(other types cannot be blank)");
        f->v.nonblank = true;
    }

    /* members (entry only) */
    jm = json_object_get(jf, "members");
    if (jm && f->v.vtype != CRDT_VT_ENTRY)
        return lerr(l, fp, "members", "applies only to type entry (this is %s)",
                    type_name(f->v.vtype));
    if (f->v.vtype == CRDT_VT_ENTRY) {
        if (!jm) return lerr(l, fp, "members", "missing (required for type entry)");
        if (!json_is_array(jm)) return lerr(l, fp, "members", "expected an array of objects");
        size_t cnt = json_array_size(jm);
        if (cnt == 0) return lerr(l, fp, "members", "must not be empty");
        if (cnt > CRDT_VAL_MAP_MAX)
            return lerr(l, fp, "members", "%zu members, at most %d allowed", cnt, CRDT_VAL_MAP_MAX);
        f->members = calloc(cnt, sizeof(*f->members));
        if (!f->members) return CRDT_ENOMEM;
        f->n_members = (uint32_t)cnt;
        for (size_t i = 0; i < cnt; i++) {
            char mp[PATH_MAX_LEN];
            mkpath(mp, sizeof mp, "%s.members[%zu]", fp, i);
            if ((rc = load_member(l, mp, json_array_get(jm, i), &f->members[i]))) return rc;
        }
    }

    /* key */
    jk = json_object_get(jf, "key");
    if (jk) {
        if (f->type != CRDT_F_LWW && f->type != CRDT_F_MV)
            return lerr(l, fp, "key", "only lww and mv fields can be keyed (this is %s)",
                        crdt_names[f->type - 1]);
        f->keyed = true;
        if ((rc = load_key(l, fp, jk, &f->key))) return rc;
    }

    /* inc_max (counter only) */
    if ((rc = get_int(l, fp, jf, "inc_max", 1, INT64_MAX, &x, &have))) return rc;
    if (have && f->type != CRDT_F_COUNTER)
        return lerr(l, fp, "inc_max", "applies only to counter fields (this is %s)",
                    crdt_names[f->type - 1]);
    f->inc_max = have ? x : (f->type == CRDT_F_COUNTER ? DEFAULT_INC_MAX : 0);

    /* doc */
    if ((rc = get_str(l, fp, jf, "doc", false, &s, &n))) return rc;
    if (s) {
        f->doc = malloc(n + 1);
        if (!f->doc) return CRDT_ENOMEM;
        memcpy(f->doc, s, n + 1);
    }
    return CRDT_OK;
}

static int load_kind(ld *l, const char *path, json_t *jk, crdt_kspec *k)
{
    static const char *const attrs[] = {"name", "fields", "doc", NULL};
    char kp[PATH_MAX_LEN];
    json_t *jf;
    const char *s;
    size_t n;
    int rc;
    if (!json_is_object(jk)) return lerr(l, path, NULL, "expected an object");
    if ((rc = get_name(l, path, jk, "name", k->name))) return rc;
    mkpath(kp, sizeof kp, "%s(%s)", path, k->name);
    if ((rc = check_attrs(l, kp, jk, attrs))) return rc;
    if ((rc = get_str(l, kp, jk, "doc", false, &s, &n))) return rc;
    jf = json_object_get(jk, "fields");
    if (!jf) return lerr(l, kp, "fields", "missing (required)");
    if (!json_is_array(jf)) return lerr(l, kp, "fields", "expected an array of objects");
    size_t cnt = json_array_size(jf);
    if (cnt == 0) return lerr(l, kp, "fields", "must not be empty");
    if (cnt > 1024) return lerr(l, kp, "fields", "more than 1024 fields");
    k->fields = calloc(cnt, sizeof(*k->fields));
    if (!k->fields) return CRDT_ENOMEM;
    k->n_fields = (uint32_t)cnt;
    for (size_t i = 0; i < cnt; i++) {
        char fp[PATH_MAX_LEN];
        mkpath(fp, sizeof fp, "%s.fields[%zu]", kp, i);
        if ((rc = load_field(l, fp, json_array_get(jf, i), &k->fields[i]))) return rc;
    }
    return CRDT_OK;
}

static int load_root(ld *l, json_t *root, crdt_schema *s)
{
    static const char *const attrs[] = {"name", "version", "kinds", "doc", NULL};
    json_t *jk;
    const char *str;
    size_t n;
    int64_t x;
    bool have;
    int rc;
    if (!json_is_object(root)) return lerr(l, "", NULL, "the schema must be a JSON object");
    if ((rc = check_attrs(l, "", root, attrs))) return rc;
    if ((rc = get_str(l, "", root, "name", true, &str, &n))) return rc;
    if (n == 0 || n >= sizeof s->name)
        return lerr(l, "", "name", "must be 1..%zu bytes", sizeof s->name - 1);
    memcpy(s->name, str, n + 1);
    if ((rc = get_int(l, "", root, "version", 1, UINT32_MAX, &x, &have))) return rc;
    if (!have) return lerr(l, "", "version", "missing (required)");
    s->version = (uint32_t)x;
    if ((rc = get_str(l, "", root, "doc", false, &str, &n))) return rc;
    jk = json_object_get(root, "kinds");
    if (!jk) return lerr(l, "", "kinds", "missing (required)");
    if (!json_is_array(jk)) return lerr(l, "", "kinds", "expected an array of objects");
    size_t cnt = json_array_size(jk);
    if (cnt == 0) return lerr(l, "", "kinds", "must not be empty");
    if (cnt > 256) return lerr(l, "", "kinds", "more than 256 kinds");
    s->kinds = calloc(cnt, sizeof(*s->kinds));
    if (!s->kinds) return CRDT_ENOMEM;
    s->n_kinds = (uint32_t)cnt;
    for (size_t i = 0; i < cnt; i++) {
        char kp[PATH_MAX_LEN];
        mkpath(kp, sizeof kp, "kinds[%zu]", i);
        if ((rc = load_kind(l, kp, json_array_get(jk, i), &s->kinds[i]))) return rc;
    }
    return CRDT_OK;
}

/* ---- entry points ------------------------------------------------------------ */

int wire_schema_load_buffer(const char *json, size_t len, const char *source,
                            crdt_schema **out, char *err, size_t errlen)
{
    ld l = {source ? source : "<buffer>", err, errlen};
    json_error_t je;
    json_t *root = NULL;
    crdt_schema *s = NULL;
    int rc;
    if (err && errlen) err[0] = 0;
    if (out) *out = NULL;
    if (!out || (!json && len)) return CRDT_EINVAL;
    root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (err && errlen)
            snprintf(err, errlen, "%s:%d:%d: %s", l.src, je.line, je.column, je.text);
        rc = WIRE_EJSON;
        goto fail;
    }
    s = calloc(1, sizeof(*s));
    rc = CRDT_ENOMEM;
    if (!s) goto fail;
    if ((rc = load_root(&l, root, s))) {
        if (rc == CRDT_ENOMEM && err && errlen)
            snprintf(err, errlen, "%s: out of memory", l.src);
        goto fail;
    }
    {
        char msg[512];
        if ((rc = crdt_schema_validate(s, msg, sizeof msg))) {
            if (err && errlen) snprintf(err, errlen, "%s: %s", l.src, msg);
            goto fail;
        }
    }
    json_decref(root);
    *out = s;
    return CRDT_OK;
fail:
    json_decref(root);
    crdt_schema_free(s);
    return rc;
}

int wire_schema_load_file(const char *path, crdt_schema **out, char *err, size_t errlen)
{
    FILE *fp = NULL;
    char *buf = NULL;
    long sz;
    int rc = WIRE_EIO;
    if (err && errlen) err[0] = 0;
    if (out) *out = NULL;
    if (!path || !out) return CRDT_EINVAL;
    fp = fopen(path, "rb");
    if (!fp) {
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (fseek(fp, 0, SEEK_END) != 0 || (sz = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if ((unsigned long)sz > SCHEMA_FILE_MAX) {
        if (err && errlen)
            snprintf(err, errlen, "%s: file too large (%ld bytes, at most %u)", path, sz,
                     SCHEMA_FILE_MAX);
        goto fail;
    }
    buf = malloc((size_t)sz + 1);
    if (!buf) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    if (fread(buf, 1, (size_t)sz, fp) != (size_t)sz) {
        if (err && errlen) snprintf(err, errlen, "%s: read error", path);
        goto fail;
    }
    rc = wire_schema_load_buffer(buf, (size_t)sz, path, out, err, errlen);
fail:
    if (fp) fclose(fp);
    free(buf);
    return rc;
}
