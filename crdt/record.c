/*
 * record.c — merged records: field states, merge, apply, canonical bytes.
 *
 * Every field state is a join-semilattice (DESIGN.md §3):
 *   lww      the entry with the greatest stamp (hlc, dev, seq)
 *   stage    the entry with the greatest (ordinal, stamp)
 *   mv       entries ∪ entries, dead dots ∪ dead dots, minus entries whose dot
 *            is dead (a write's observed dots are the writes it supersedes,
 *            so concurrent writes, which observed each other's absence, stay)
 *   set      the same with (element, dot) pairs: add-wins, because a remove
 *            kills only the add dots it observed
 *   log      entries ∪ entries, ordered by stamp
 *   counter  entries ∪ entries (one per dot), value = sum
 * and the record tombstone is an lww of bool.  Where two entries share a key
 * but differ (only a forged or cloned dot can cause that), the greater by
 * (stamp, num, value bytes) is kept, so merge stays a semilattice even then.
 *
 * Invariants (crdt_record_invariant_ok): fields sorted and unique by
 * (name, key); per-type ordering and uniqueness as documented on crdt_field
 * in crdt.h; every blob with n > 0 is an owned heap copy.
 *
 * Failure atomicity: crdt_record_merge builds the new field array aside,
 * moving untouched fields and deep-copying merged ones, and swaps it in only
 * when everything succeeded; on failure the record is unchanged.
 */
#include "crdt.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

/* ---- entries ------------------------------------------------------------- */

int crdt_stamp_cmp(crdt_stamp a, crdt_stamp b)
{
    if (a.hlc != b.hlc) return a.hlc < b.hlc ? -1 : 1;
    return crdt_dot_cmp(a.dot, b.dot);
}

static int blob_dup(crdt_blob src, crdt_blob *dst)
{
    dst->p = NULL;
    dst->n = 0;
    if (src.n == 0) return CRDT_OK;
    uint8_t *p = malloc(src.n);
    if (!p) return CRDT_ENOMEM;
    memcpy(p, src.p, src.n);
    dst->p = p;
    dst->n = src.n;
    return CRDT_OK;
}

static void blob_free(crdt_blob *b)
{
    free((void *)b->p);
    b->p = NULL;
    b->n = 0;
}

static int entry_copy(const crdt_entry *src, crdt_entry *dst)
{
    dst->st = src->st;
    dst->num = src->num;
    return blob_dup(src->v, &dst->v);
}

/* Total order on whole entries, used to break ties between equal keys. */
static int entry_full_cmp(const crdt_entry *a, const crdt_entry *b)
{
    int c = crdt_stamp_cmp(a->st, b->st);
    if (c) return c;
    if (a->num != b->num) return a->num < b->num ? -1 : 1;
    return crdt_blob_cmp(a->v, b->v);
}

typedef int (*entry_key_cmp)(const crdt_entry *, const crdt_entry *);

static int key_dot(const crdt_entry *a, const crdt_entry *b)
{
    return crdt_dot_cmp(a->st.dot, b->st.dot);
}

static int key_elem(const crdt_entry *a, const crdt_entry *b)
{
    int c = crdt_blob_cmp(a->v, b->v);
    return c ? c : crdt_dot_cmp(a->st.dot, b->st.dot);
}

static int key_stamp(const crdt_entry *a, const crdt_entry *b)
{
    return crdt_stamp_cmp(a->st, b->st);
}

/* The key order of a type's live entries (dead entries use the same). */
static entry_key_cmp key_of(int type)
{
    switch (type) {
    case CRDT_F_SET: return key_elem;
    case CRDT_F_LOG: return key_stamp;
    default: return key_dot; /* mv, counter; lww/stage hold <= 1 entry */
    }
}

static void entries_free(crdt_entry *e, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) blob_free(&e[i].v);
    free(e);
}

/*
 * Sorted union of a[] and b[] by `key`, deep-copied into a new array.  On an
 * equal key the greater entry (entry_full_cmp) is kept.
 */
static int union_sorted(const crdt_entry *a, uint32_t na, const crdt_entry *b,
                        uint32_t nb, entry_key_cmp key, crdt_entry **out,
                        uint32_t *nout)
{
    uint32_t i = 0, j = 0, k = 0, cap = na + nb;
    crdt_entry *e = NULL;
    *out = NULL;
    *nout = 0;
    if (cap == 0) return CRDT_OK;
    e = calloc(cap, sizeof(*e));
    if (!e) return CRDT_ENOMEM;
    while (i < na || j < nb) {
        const crdt_entry *pick;
        if (j == nb) pick = &a[i++];
        else if (i == na) pick = &b[j++];
        else {
            int c = key(&a[i], &b[j]);
            if (c < 0) pick = &a[i++];
            else if (c > 0) pick = &b[j++];
            else {
                pick = entry_full_cmp(&a[i], &b[j]) >= 0 ? &a[i] : &b[j];
                i++;
                j++;
            }
        }
        if (entry_copy(pick, &e[k])) {
            entries_free(e, k);
            return CRDT_ENOMEM;
        }
        k++;
    }
    *out = e;
    *nout = k;
    return CRDT_OK;
}

/* Drop (and free) the entries of e[] whose key appears in d[]; both sorted. */
static void remove_dead(crdt_entry *e, uint32_t *n, const crdt_entry *d,
                        uint32_t nd, entry_key_cmp key)
{
    uint32_t i = 0, j = 0, k = 0;
    while (i < *n) {
        while (j < nd && key(&d[j], &e[i]) < 0) j++;
        if (j < nd && key(&d[j], &e[i]) == 0) {
            blob_free(&e[i].v);
            i++;
            continue;
        }
        e[k++] = e[i++];
    }
    *n = k;
}

/* ---- fields -------------------------------------------------------------- */

static void field_free(crdt_field *f)
{
    entries_free(f->e, f->n);
    entries_free(f->d, f->nd);
    blob_free(&f->key);
    memset(f, 0, sizeof(*f));
}

static int field_copy(const crdt_field *src, crdt_field *dst)
{
    memset(dst, 0, sizeof(*dst));
    memcpy(dst->name, src->name, sizeof(dst->name));
    dst->type = src->type;
    if (blob_dup(src->key, &dst->key)) goto fail;
    if (union_sorted(src->e, src->n, NULL, 0, key_of(src->type), &dst->e, &dst->n))
        goto fail;
    dst->cap = dst->n;
    if (union_sorted(src->d, src->nd, NULL, 0, key_of(src->type), &dst->d, &dst->nd))
        goto fail;
    dst->capd = dst->nd;
    return CRDT_OK;
fail:
    field_free(dst);
    return CRDT_ENOMEM;
}

static int field_cmp(const crdt_field *a, const crdt_field *b)
{
    int c = strcmp(a->name, b->name);
    return c ? c : crdt_blob_cmp(a->key, b->key);
}

/* The winner of a single-entry register (lww, stage, tombstone). */
static const crdt_entry *register_max(int type, const crdt_field *a, const crdt_field *b)
{
    if (a->n == 0) return b->n ? &b->e[0] : NULL;
    if (b->n == 0) return &a->e[0];
    const crdt_entry *x = &a->e[0], *y = &b->e[0];
    if (type == CRDT_F_STAGE && x->num != y->num) return x->num > y->num ? x : y;
    return entry_full_cmp(x, y) >= 0 ? x : y;
}

/* out := a ⊔ b (deep copies).  a and b have the same name, key and type. */
static int field_merge(const crdt_field *a, const crdt_field *b, crdt_field *out)
{
    int type = a->type;
    entry_key_cmp key = key_of(type);
    memset(out, 0, sizeof(*out));
    memcpy(out->name, a->name, sizeof(out->name));
    out->type = (uint8_t)type;
    if (blob_dup(a->key, &out->key)) goto fail;
    switch (type) {
    case CRDT_F_LWW:
    case CRDT_F_STAGE: {
        const crdt_entry *w = register_max(type, a, b);
        if (w) {
            out->e = calloc(1, sizeof(*out->e));
            if (!out->e || entry_copy(w, &out->e[0])) goto fail;
            out->n = out->cap = 1;
        }
        break;
    }
    case CRDT_F_MV:
    case CRDT_F_SET:
        if (union_sorted(a->d, a->nd, b->d, b->nd, key, &out->d, &out->nd)) goto fail;
        out->capd = out->nd;
        if (union_sorted(a->e, a->n, b->e, b->n, key, &out->e, &out->n)) goto fail;
        out->cap = out->n;
        remove_dead(out->e, &out->n, out->d, out->nd, key);
        break;
    case CRDT_F_LOG:
    case CRDT_F_COUNTER:
        if (union_sorted(a->e, a->n, b->e, b->n, key, &out->e, &out->n)) goto fail;
        out->cap = out->n;
        break;
    default:
        field_free(out);
        return CRDT_EMISMATCH;
    }
    return CRDT_OK;
fail:
    field_free(out);
    return CRDT_ENOMEM;
}

/* ---- records ------------------------------------------------------------- */

crdt_record *crdt_record_new(const char *kind, size_t kind_len, const char *id,
                             size_t id_len)
{
    if (!crdt_name_valid(kind, kind_len) || !crdt_recid_valid(id, id_len)) return NULL;
    crdt_record *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    memcpy(r->kind, kind, kind_len);
    memcpy(r->id, id, id_len);
    r->tomb.type = CRDT_F_LWW;
    return r;
}

void crdt_record_free(crdt_record *r)
{
    if (!r) return;
    for (uint32_t i = 0; i < r->n_fields; i++) field_free(&r->fields[i]);
    free(r->fields);
    field_free(&r->tomb);
    free(r);
}

/*
 * r := r ⊔ o.  With steal (o is a scratch record the caller frees right
 * after: crdt_record_apply's one-delta record), fields only o has are moved
 * into r instead of deep-copied; they are taken from o (zeroed there) only
 * once everything succeeded, so a failure leaves r and o as they were.
 */
static int record_merge(crdt_record *r, crdt_record *o, bool steal)
{
    crdt_field *nf = NULL, tomb;
    bool *fresh = NULL;   /* nf[k] was built here (vs moved from r or o) */
    bool *moved = NULL;   /* r->fields[i] was moved into nf */
    bool *taken = NULL;   /* o->fields[j] was moved into nf (steal) */
    uint32_t i = 0, j = 0, k = 0;
    int rc = CRDT_ENOMEM;
    if (!r || !o) return CRDT_EINVAL;
    if (strcmp(r->kind, o->kind) || strcmp(r->id, o->id)) return CRDT_EMISMATCH;
    memset(&tomb, 0, sizeof(tomb));

    uint32_t cap = r->n_fields + o->n_fields;
    nf = calloc(cap ? cap : 1, sizeof(*nf));
    /* One allocation for the three flag arrays. */
    fresh = calloc((size_t)cap + r->n_fields + o->n_fields + 1, sizeof(*fresh));
    if (!nf || !fresh) goto fail;
    moved = fresh + cap;
    taken = moved + r->n_fields;

    while (i < r->n_fields || j < o->n_fields) {
        int c = j == o->n_fields ? -1
              : i == r->n_fields ? 1
              : field_cmp(&r->fields[i], &o->fields[j]);
        if (c < 0) {
            nf[k++] = r->fields[i];
            moved[i++] = true;
        } else if (c > 0 && steal) {
            nf[k++] = o->fields[j];
            taken[j++] = true;
        } else if (c > 0) {
            if ((rc = field_copy(&o->fields[j++], &nf[k]))) goto fail;
            fresh[k++] = true;
        } else {
            if (r->fields[i].type != o->fields[j].type) {
                rc = CRDT_EMISMATCH;
                goto fail;
            }
            if ((rc = field_merge(&r->fields[i++], &o->fields[j++], &nf[k]))) goto fail;
            fresh[k++] = true;
        }
    }
    if ((rc = field_merge(&r->tomb, &o->tomb, &tomb))) goto fail;

    /* Commit: free what was replaced, keep what was moved. */
    for (i = 0; i < r->n_fields; i++)
        if (!moved[i]) field_free(&r->fields[i]);
    free(r->fields);
    field_free(&r->tomb);
    r->fields = nf;
    r->n_fields = k;
    r->cap_fields = cap;
    r->tomb = tomb;
    for (j = 0; j < o->n_fields; j++)
        if (taken[j]) memset(&o->fields[j], 0, sizeof(o->fields[j]));
    free(fresh);
    return CRDT_OK;

fail:
    if (nf && fresh)
        for (uint32_t x = 0; x < k; x++)
            if (fresh[x]) field_free(&nf[x]);
    free(nf);
    free(fresh);
    field_free(&tomb);
    return rc;
}

int crdt_record_merge(crdt_record *r, const crdt_record *o)
{
    return record_merge(r, (crdt_record *)o, false); /* o is only read */
}

crdt_record *crdt_record_dup(const crdt_record *r)
{
    if (!r) return NULL;
    crdt_record *c = crdt_record_new(r->kind, strlen(r->kind), r->id, strlen(r->id));
    if (!c) return NULL;
    if (crdt_record_merge(c, r)) {
        crdt_record_free(c);
        return NULL;
    }
    return c;
}

/* ---- apply: the one-delta record ----------------------------------------- */

static int qsort_field_cmp(const void *a, const void *b)
{
    return field_cmp(a, b);
}

static int set_entries(crdt_entry **arr, uint32_t *n, uint32_t *cap, uint32_t count)
{
    *arr = calloc(count ? count : 1, sizeof(**arr));
    if (!*arr) return CRDT_ENOMEM;
    *n = *cap = count;
    return CRDT_OK;
}

/* Build the field (or tombstone) state that op `o` of delta `d` contributes. */
static int field_of_op(const crdt_kspec *ks, const crdt_delta *d, const crdt_op *o,
                       crdt_field *f)
{
    const crdt_stamp st = {d->hlc, {d->dev, d->seq}};
    const crdt_fspec *fs;
    crdt_val v;
    int rc;
    memset(f, 0, sizeof(*f));
    if (o->code == CRDT_OP_DEL || o->code == CRDT_OP_UNDEL) {
        uint8_t b = o->code == CRDT_OP_DEL ? 0xc3 : 0xc2; /* msgpack true/false */
        f->type = CRDT_F_LWW;
        if (set_entries(&f->e, &f->n, &f->cap, 1)) return CRDT_ENOMEM;
        f->e[0].st = st;
        return blob_dup((crdt_blob){&b, 1}, &f->e[0].v);
    }
    fs = crdt_schema_field(ks, o->field, o->field_len);
    if (!fs) return CRDT_EFIELD;
    memcpy(f->name, fs->name, sizeof(f->name));
    f->type = fs->type;
    if ((rc = blob_dup(o->key, &f->key))) goto fail;
    rc = CRDT_EOP;
    switch (fs->type) {
    case CRDT_F_LWW:
    case CRDT_F_MV:
        if (o->code != CRDT_OP_SET) goto fail;
        rc = CRDT_ENOMEM;
        if (set_entries(&f->e, &f->n, &f->cap, 1)) goto fail;
        f->e[0].st = st;
        if (blob_dup(o->val, &f->e[0].v)) goto fail;
        if (fs->type == CRDT_F_MV && o->n_obs) {
            if (set_entries(&f->d, &f->nd, &f->capd, o->n_obs)) goto fail;
            for (uint32_t i = 0; i < o->n_obs; i++) f->d[i].st.dot = o->obs[i];
            /* A write that names its own dot supersedes itself (a forged op). */
            remove_dead(f->e, &f->n, f->d, f->nd, key_dot);
        }
        break;
    case CRDT_F_SET:
        rc = CRDT_ENOMEM;
        if (o->code == CRDT_OP_ADD) {
            if (set_entries(&f->e, &f->n, &f->cap, 1)) goto fail;
            f->e[0].st = st;
            if (blob_dup(o->val, &f->e[0].v)) goto fail;
        } else if (o->code == CRDT_OP_REM) {
            if (set_entries(&f->d, &f->nd, &f->capd, o->n_obs)) goto fail;
            for (uint32_t i = 0; i < o->n_obs; i++) {
                f->d[i].st.dot = o->obs[i];
                if (blob_dup(o->val, &f->d[i].v)) goto fail;
            }
        } else {
            rc = CRDT_EOP;
            goto fail;
        }
        break;
    case CRDT_F_LOG:
        if (o->code != CRDT_OP_APP) goto fail;
        rc = CRDT_ENOMEM;
        if (set_entries(&f->e, &f->n, &f->cap, 1)) goto fail;
        f->e[0].st = st;
        if (blob_dup(o->val, &f->e[0].v)) goto fail;
        break;
    case CRDT_F_COUNTER:
        if (o->code != CRDT_OP_INC) goto fail;
        if (crdt_val_parse(o->val, &v) || v.t != CRDT_V_INT) goto fail;
        rc = CRDT_ENOMEM;
        if (set_entries(&f->e, &f->n, &f->cap, 1)) goto fail;
        f->e[0].st = st;
        f->e[0].num = v.i;
        break;
    case CRDT_F_STAGE: {
        if (o->code != CRDT_OP_RAISE) goto fail;
        if (crdt_val_parse(o->val, &v) || v.t != CRDT_V_STR) goto fail;
        int ord = crdt_vspec_enum_index(&fs->v, v.s, v.len);
        if (ord < 0) goto fail;
        rc = CRDT_ENOMEM;
        if (set_entries(&f->e, &f->n, &f->cap, 1)) goto fail;
        f->e[0].st = st;
        f->e[0].num = ord;
        break;
    }
    default:
        goto fail;
    }
    return CRDT_OK;
fail:
    field_free(f);
    return rc;
}

int crdt_record_apply(crdt_record *r, const crdt_schema *s, const crdt_delta *d)
{
    crdt_record *one = NULL;
    crdt_field *ops = NULL;
    uint32_t nops = 0;
    int rc = CRDT_ENOMEM;
    if (!r || !s || !d) return CRDT_EINVAL;
    if (d->kind_len != strlen(r->kind) || memcmp(d->kind, r->kind, d->kind_len) ||
        d->id_len != strlen(r->id) || memcmp(d->id, r->id, d->id_len))
        return CRDT_EMISMATCH;
    const crdt_kspec *ks = crdt_schema_kind(s, d->kind, d->kind_len);
    if (!ks) return CRDT_EMISMATCH;

    one = crdt_record_new(r->kind, strlen(r->kind), r->id, strlen(r->id));
    ops = calloc(d->n_ops ? d->n_ops : 1, sizeof(*ops));
    if (!one || !ops) goto fail;
    for (uint32_t i = 0; i < d->n_ops; i++) {
        crdt_field f;
        if ((rc = field_of_op(ks, d, &d->ops[i], &f))) goto fail;
        if (d->ops[i].field == NULL) {
            field_free(&one->tomb);
            one->tomb = f;
        } else {
            ops[nops++] = f;
        }
    }
    /* Set ops on distinct elements of one field become one field state. */
    qsort(ops, nops, sizeof(*ops), qsort_field_cmp);
    one->fields = calloc(nops ? nops : 1, sizeof(*one->fields));
    if (!one->fields) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    one->cap_fields = nops ? nops : 1;
    for (uint32_t i = 0; i < nops; i++) {
        crdt_field *last = one->n_fields ? &one->fields[one->n_fields - 1] : NULL;
        if (last && field_cmp(last, &ops[i]) == 0) {
            crdt_field m;
            if ((rc = field_merge(last, &ops[i], &m))) goto fail;
            field_free(last);
            *last = m;
            field_free(&ops[i]);
        } else {
            one->fields[one->n_fields++] = ops[i];
        }
        memset(&ops[i], 0, sizeof(ops[i]));
    }
    rc = record_merge(r, one, true); /* one is freed below */
fail:
    for (uint32_t i = 0; i < nops; i++) field_free(&ops[i]);
    free(ops);
    crdt_record_free(one);
    return rc;
}

/* ---- queries ------------------------------------------------------------- */

bool crdt_field_conflict(const crdt_field *f)
{
    if (!f || f->type != CRDT_F_MV) return false;
    for (uint32_t i = 1; i < f->n; i++)
        if (crdt_blob_cmp(f->e[i].v, f->e[0].v)) return true;
    return false;
}

uint32_t crdt_record_conflicts(const crdt_record *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; r && i < r->n_fields; i++)
        if (crdt_field_conflict(&r->fields[i])) n++;
    return n;
}

const crdt_field *crdt_record_field(const crdt_record *r, const char *name, crdt_blob key)
{
    if (!r || !name) return NULL;
    /* Compared in place (as field_cmp would compare a probe holding name
     * and key); a name of CRDT_NAME_MAX bytes or more matches no field. */
    uint32_t lo = 0, hi = r->n_fields;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->fields[mid].name, name);
        if (!c) c = crdt_blob_cmp(r->fields[mid].key, key);
        if (c == 0) return &r->fields[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

bool crdt_record_deleted(const crdt_record *r)
{
    return r && r->tomb.n == 1 && r->tomb.e[0].v.n == 1 && r->tomb.e[0].v.p[0] == 0xc3;
}

int64_t crdt_field_counter(const crdt_field *f)
{
    int64_t sum = 0;
    if (!f || f->type != CRDT_F_COUNTER) return 0;
    for (uint32_t i = 0; i < f->n; i++) {
        int64_t x = f->e[i].num;
        if (x > 0 && sum > INT64_MAX - x) sum = INT64_MAX;
        else if (x < 0 && sum < INT64_MIN - x) sum = INT64_MIN;
        else sum += x;
    }
    return sum;
}

int crdt_field_stage(const crdt_field *f)
{
    if (!f || f->type != CRDT_F_STAGE || f->n == 0) return -1;
    return (int)f->e[0].num;
}

static bool sorted_unique(const crdt_entry *e, uint32_t n, entry_key_cmp key)
{
    for (uint32_t i = 1; i < n; i++)
        if (key(&e[i - 1], &e[i]) >= 0) return false;
    return true;
}

static bool field_invariant_ok(const crdt_field *f)
{
    entry_key_cmp key = key_of(f->type);
    switch (f->type) {
    case CRDT_F_LWW:
    case CRDT_F_STAGE:
        return f->n <= 1 && f->nd == 0;
    case CRDT_F_MV:
    case CRDT_F_SET: {
        if (!sorted_unique(f->e, f->n, key) || !sorted_unique(f->d, f->nd, key)) return false;
        uint32_t j = 0;
        for (uint32_t i = 0; i < f->n; i++) {
            while (j < f->nd && key(&f->d[j], &f->e[i]) < 0) j++;
            if (j < f->nd && key(&f->d[j], &f->e[i]) == 0) return false;
        }
        return true;
    }
    case CRDT_F_LOG:
    case CRDT_F_COUNTER:
        return f->nd == 0 && sorted_unique(f->e, f->n, key);
    default:
        return false;
    }
}

bool crdt_record_invariant_ok(const crdt_record *r)
{
    if (!r || !crdt_name_valid(r->kind, strlen(r->kind)) || !crdt_recid_valid(r->id, strlen(r->id)))
        return false;
    if (r->tomb.type != CRDT_F_LWW || !field_invariant_ok(&r->tomb)) return false;
    for (uint32_t i = 0; i < r->n_fields; i++) {
        if (!field_invariant_ok(&r->fields[i])) return false;
        if (i && field_cmp(&r->fields[i - 1], &r->fields[i]) >= 0) return false;
    }
    return true;
}

/* ---- canonical bytes ------------------------------------------------------ */

static int buf_write(void *data, const char *p, size_t n)
{
    return crdt_buf_append(data, p, n) == CRDT_OK ? 0 : -1;
}

static int encode_entries(msgpack_packer *pk, crdt_buf *out, const crdt_entry *e,
                          uint32_t n)
{
    if (msgpack_pack_array(pk, n)) return CRDT_ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        if (msgpack_pack_array(pk, 5) || msgpack_pack_uint64(pk, e[i].st.hlc) ||
            msgpack_pack_uint32(pk, e[i].st.dot.dev) ||
            msgpack_pack_uint64(pk, e[i].st.dot.seq) || msgpack_pack_int64(pk, e[i].num))
            return CRDT_ENOMEM;
        if (e[i].v.n ? crdt_buf_append(out, e[i].v.p, e[i].v.n) != CRDT_OK
                     : msgpack_pack_nil(pk) != 0)
            return CRDT_ENOMEM;
    }
    return CRDT_OK;
}

int crdt_record_encode(const crdt_record *r, crdt_buf *out)
{
    msgpack_packer pk;
    size_t start;
    if (!r || !out) return CRDT_EINVAL;
    start = out->n;
    msgpack_packer_init(&pk, out, buf_write);
    if (msgpack_pack_map(&pk, 4) || msgpack_pack_str_with_body(&pk, "f", 1) ||
        msgpack_pack_array(&pk, r->n_fields))
        goto fail;
    for (uint32_t i = 0; i < r->n_fields; i++) {
        const crdt_field *f = &r->fields[i];
        if (msgpack_pack_array(&pk, 5) ||
            msgpack_pack_str_with_body(&pk, f->name, strlen(f->name)))
            goto fail;
        if (f->key.n ? crdt_buf_append(out, f->key.p, f->key.n) != CRDT_OK
                     : msgpack_pack_nil(&pk) != 0)
            goto fail;
        if (msgpack_pack_uint8(&pk, f->type) || encode_entries(&pk, out, f->e, f->n) ||
            encode_entries(&pk, out, f->d, f->nd))
            goto fail;
    }
    if (msgpack_pack_str_with_body(&pk, "i", 1) ||
        msgpack_pack_str_with_body(&pk, r->id, strlen(r->id)) ||
        msgpack_pack_str_with_body(&pk, "k", 1) ||
        msgpack_pack_str_with_body(&pk, r->kind, strlen(r->kind)) ||
        msgpack_pack_str_with_body(&pk, "t", 1) ||
        encode_entries(&pk, out, r->tomb.e, r->tomb.n))
        goto fail;
    return CRDT_OK;
fail:
    out->n = start;
    return CRDT_ENOMEM;
}

/* ---- decoding stored records --------------------------------------------- */

/* Records come from our own store, but are still walked before msgpack-c. */
static const crdt_limits record_limits = {
    64u << 20, 8u, 1u << 20, 4096u, 64u << 20, 64u
};

static int pack_blob(const msgpack_object *o, crdt_buf *scratch, crdt_blob *out)
{
    msgpack_packer pk;
    crdt_val v;
    out->p = NULL;
    out->n = 0;
    if (o->type == MSGPACK_OBJECT_NIL) return CRDT_OK;
    crdt_buf_reset(scratch);
    msgpack_packer_init(&pk, scratch, buf_write);
    if (msgpack_pack_object(&pk, *o)) return CRDT_ENOMEM;
    if (scratch->n > UINT32_MAX) return CRDT_ECORRUPT;
    crdt_blob tmp = {scratch->p, (uint32_t)scratch->n};
    if (crdt_val_parse(tmp, &v)) return CRDT_ECORRUPT;
    return blob_dup(tmp, out);
}

static bool obj_u64(const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return false;
    *v = o->via.u64;
    return true;
}

static bool obj_i64(const msgpack_object *o, int64_t *v)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return true;
    }
    return false;
}

static int decode_entries(const msgpack_object *o, crdt_buf *scratch, crdt_entry **out,
                          uint32_t *n, uint32_t *cap)
{
    uint64_t hlc, dev, seq;
    int64_t num;
    int rc;
    *out = NULL;
    *n = *cap = 0;
    if (o->type != MSGPACK_OBJECT_ARRAY) return CRDT_ECORRUPT;
    uint32_t cnt = o->via.array.size;
    if (cnt == 0) return CRDT_OK;
    crdt_entry *e = calloc(cnt, sizeof(*e));
    if (!e) return CRDT_ENOMEM;
    for (uint32_t i = 0; i < cnt; i++) {
        const msgpack_object *x = &o->via.array.ptr[i];
        if (x->type != MSGPACK_OBJECT_ARRAY || x->via.array.size != 5 ||
            !obj_u64(&x->via.array.ptr[0], &hlc) || !obj_u64(&x->via.array.ptr[1], &dev) ||
            !obj_u64(&x->via.array.ptr[2], &seq) || !obj_i64(&x->via.array.ptr[3], &num) ||
            dev > UINT32_MAX) {
            entries_free(e, i);
            return CRDT_ECORRUPT;
        }
        e[i].st.hlc = hlc;
        e[i].st.dot.dev = (uint32_t)dev;
        e[i].st.dot.seq = seq;
        e[i].num = num;
        if ((rc = pack_blob(&x->via.array.ptr[4], scratch, &e[i].v))) {
            entries_free(e, i);
            return rc;
        }
    }
    *out = e;
    *n = *cap = cnt;
    return CRDT_OK;
}

static int decode_field(const msgpack_object *o, crdt_buf *scratch, crdt_field *f)
{
    uint64_t type;
    int rc = CRDT_ECORRUPT;
    memset(f, 0, sizeof(*f));
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5) return CRDT_ECORRUPT;
    const msgpack_object *a = o->via.array.ptr;
    if (a[0].type != MSGPACK_OBJECT_STR || !crdt_name_valid(a[0].via.str.ptr, a[0].via.str.size))
        return CRDT_ECORRUPT;
    memcpy(f->name, a[0].via.str.ptr, a[0].via.str.size);
    if (!obj_u64(&a[2], &type) || type < CRDT_F_LWW || type > CRDT_F_STAGE)
        return CRDT_ECORRUPT;
    f->type = (uint8_t)type;
    if ((rc = pack_blob(&a[1], scratch, &f->key))) goto fail;
    if ((rc = decode_entries(&a[3], scratch, &f->e, &f->n, &f->cap))) goto fail;
    if ((rc = decode_entries(&a[4], scratch, &f->d, &f->nd, &f->capd))) goto fail;
    return CRDT_OK;
fail:
    field_free(f);
    return rc;
}

int crdt_record_decode(const uint8_t *p, size_t n, crdt_record **out)
{
    msgpack_unpacked up;
    crdt_buf scratch = {0};
    crdt_record *r = NULL;
    const msgpack_object *of = NULL, *oi = NULL, *ok = NULL, *ot = NULL;
    size_t off = 0;
    int rc = CRDT_ECORRUPT;
    if (!p || !out) return CRDT_EINVAL;
    *out = NULL;
    if (crdt_mp_check(p, n, &record_limits, NULL)) return CRDT_ECORRUPT;
    msgpack_unpacked_init(&up);
    msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)p, n, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || up.data.type != MSGPACK_OBJECT_MAP ||
        up.data.via.map.size != 4)
        goto fail;
    for (uint32_t i = 0; i < 4; i++) {
        const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 1) goto fail;
        switch (kv->key.via.str.ptr[0]) {
        case 'f': of = &kv->val; break;
        case 'i': oi = &kv->val; break;
        case 'k': ok = &kv->val; break;
        case 't': ot = &kv->val; break;
        default: goto fail;
        }
    }
    if (!of || !oi || !ok || !ot || of->type != MSGPACK_OBJECT_ARRAY ||
        oi->type != MSGPACK_OBJECT_STR || ok->type != MSGPACK_OBJECT_STR)
        goto fail;
    /* crdt_record_new returns NULL for a bad kind or id and for ENOMEM:
     * check the names first, so that an allocation failure is reported as
     * CRDT_ENOMEM and not as a corrupt record (the store's STORE_ECORRUPT). */
    if (!crdt_name_valid(ok->via.str.ptr, ok->via.str.size) ||
        !crdt_recid_valid(oi->via.str.ptr, oi->via.str.size))
        goto fail;
    r = crdt_record_new(ok->via.str.ptr, ok->via.str.size, oi->via.str.ptr, oi->via.str.size);
    if (!r) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    if ((rc = decode_entries(ot, &scratch, &r->tomb.e, &r->tomb.n, &r->tomb.cap))) goto fail;
    uint32_t nf = of->via.array.size;
    r->fields = calloc(nf ? nf : 1, sizeof(*r->fields));
    if (!r->fields) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    r->cap_fields = nf ? nf : 1;
    for (uint32_t i = 0; i < nf; i++) {
        if ((rc = decode_field(&of->via.array.ptr[i], &scratch, &r->fields[i]))) goto fail;
        r->n_fields++;
    }
    rc = CRDT_ECORRUPT;
    if (!crdt_record_invariant_ok(r)) goto fail;
    msgpack_unpacked_destroy(&up);
    crdt_buf_free(&scratch);
    *out = r;
    return CRDT_OK;
fail:
    msgpack_unpacked_destroy(&up);
    crdt_buf_free(&scratch);
    crdt_record_free(r);
    return rc == CRDT_ENOMEM ? CRDT_ENOMEM : CRDT_ECORRUPT;
}
