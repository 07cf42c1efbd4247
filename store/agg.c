/*
 * agg.c — aggregates per (community, grid), maintained on every merge.
 *
 * A record contributes to the aggregates of the grid its household is in:
 *   person:    persons, enrolled, paid, key groups, key groups not enrolled
 *              (see person_contrib for the exact rules), and its visits;
 *   household: its own visits.
 * Visits count per ISO week (Monday first) of the entry's "date" member.
 *
 * Maintenance is by difference: after a merge, the record's contribution
 * before is subtracted and its contribution after is added; when a
 * household changes grid, each member's contribution moves with it.  So
 * agg/aggw always equal the sum of the current records' contributions, which
 * is what store_verify recomputes.  A record whose household (or whose
 * household's community/grid) is not known yet contributes nothing until it
 * is.  Reports read these sums; they never scan records.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* The enum values the rules below name (default schema, crdt/schema/yibao.json). */
#define LIFE_DECEASED "死亡"
#define LIFE_MOVED_OUT "迁出"
/* payment[campaign year]: paid by the person, paid on their behalf (代缴), or
 * paid with a government subsidy (资助参保) all count as paid; "no payment
 * needed" (employee insurance, insured elsewhere) counts as enrolled. */
static const char *const PAID_VALUES[] = {"已缴费", "代缴", "资助参保"};
static const char *const ENROLLED_ONLY_VALUES[] = {"无需缴费"};
/* insurance_type values that mean covered whatever the payment field says. */
static const char *const INSURED_ELSEWHERE[] = {"职工", "异地参保"};

#define AGG_FIELDS (3 + 2 * STORE_MAX_GROUPS)
#define MAX_WEEKS 64

typedef struct contrib {
    char c[128], g[128];          /* empty: contributes nothing */
    int64_t v[AGG_FIELDS];        /* persons, enrolled, paid, group[], group_unenrolled[] */
    uint32_t weeks[MAX_WEEKS];    /* visit weeks (with repeats) */
    int64_t week_n[MAX_WEEKS];
    uint32_t nweeks;
} contrib;


/* Monday-based week index (1970-01-01 was a Thursday). */
static uint32_t week_of_days(int64_t days) { return (uint32_t)((days + 3) / 7); }

static bool parse_date(const char *s, uint32_t len, uint32_t *week)
{
    int64_t days;
    if (crdt_date_days(s, len, &days)) return false;
    *week = week_of_days(days);
    return true;
}

static void add_week(contrib *c, uint32_t w)
{
    for (uint32_t i = 0; i < c->nweeks; i++)
        if (c->weeks[i] == w) {
            c->week_n[i]++;
            return;
        }
    if (c->nweeks < MAX_WEEKS) {
        c->weeks[c->nweeks] = w;
        c->week_n[c->nweeks++] = 1;
    }
}

static void add_visits(contrib *c, const crdt_record *r, const crdt_fspec *f)
{
    const crdt_field *fl = crdt_record_field(r, f->name, (crdt_blob){NULL, 0});
    crdt_val v;
    if (!fl) return;
    for (uint32_t i = 0; i < fl->n; i++) {
        if (crdt_val_parse(fl->e[i].v, &v) || v.t != CRDT_V_MAP) continue;
        for (uint32_t j = 0; j < v.nkv; j++) {
            uint32_t w;
            if (v.kv[j].klen == 4 && !memcmp(v.kv[j].k, "date", 4) &&
                v.kv[j].v.t == CRDT_V_STR && parse_date(v.kv[j].v.s, v.kv[j].v.len, &w))
                add_week(c, w);
        }
    }
}

static bool str_is(const char *s, uint32_t len, const char *want)
{
    return s && strlen(want) == len && memcmp(s, want, len) == 0;
}

static bool str_in(const char *s, uint32_t len, const char *const *set, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (str_is(s, len, set[i])) return true;
    return false;
}

/* A household's place (community, grid), or empty strings. */
typedef struct place {
    char c[128], g[128];
} place;

static void place_of_record(const store *s, const crdt_record *hh, place *pl)
{
    uint32_t cl, gl;
    const char *cs = hh ? store_field_str(hh, s->model.hh_community, (crdt_blob){NULL, 0}, &cl) : NULL;
    const char *gs = hh ? store_field_str(hh, s->model.hh_grid, (crdt_blob){NULL, 0}, &gl) : NULL;
    pl->c[0] = pl->g[0] = 0;
    if (!cs || !gs || !cl || !gl || cl >= sizeof pl->c || gl >= sizeof pl->g) return;
    memcpy(pl->c, cs, cl);
    pl->c[cl] = 0;
    memcpy(pl->g, gs, gl);
    pl->g[gl] = 0;
}

/* The place index (kept by the append path): cheaper than decoding the
 * household record for every person delta. */
static int place_of_id(store_txn *t, const char *id, place *pl)
{
    MDB_val v;
    pl->c[0] = pl->g[0] = 0;
    if (!id || !*id) return STORE_OK;
    int rc = store_get(t, DB_PLACE, id, strlen(id), &v);
    if (rc == STORE_ENOTFOUND) return STORE_OK;
    if (rc) return rc;
    const uint8_t *z = memchr(v.mv_data, 0, v.mv_size);
    size_t cl = z ? (size_t)(z - (const uint8_t *)v.mv_data) : 0;
    size_t gl = z ? v.mv_size - cl - 1 : 0;
    if (!z || !cl || !gl || cl >= sizeof pl->c || gl >= sizeof pl->g) return STORE_ECORRUPT;
    memcpy(pl->c, v.mv_data, cl);
    pl->c[cl] = 0;
    memcpy(pl->g, z + 1, gl);
    pl->g[gl] = 0;
    return STORE_OK;
}

/* A person's contribution, placed in the grid `pl`. */
static void person_contrib(const store *s, const crdt_record *p, const place *pl, contrib *c)
{
    const store_model *m = &s->model;
    uint32_t len;
    memset(c, 0, sizeof *c);
    if (!p || !pl->c[0]) return;
    memcpy(c->c, pl->c, sizeof c->c);
    memcpy(c->g, pl->g, sizeof c->g);
    add_visits(c, p, m->p_visits);
    if (crdt_record_deleted(p)) return;
    const char *life = store_field_str(p, m->p_life, (crdt_blob){NULL, 0}, &len);
    if (str_is(life, len, LIFE_DECEASED) || str_is(life, len, LIFE_MOVED_OUT)) return;
    c->v[0] = 1; /* persons */

    /* Payment status for the campaign year (the field is keyed by year).
     * The key is encoded straight into kb: a msgpack integer takes at most
     * 9 bytes, so the append never allocates and cannot fail.  (It used to
     * go through a heap buffer whose failure was ignored: the key came out
     * empty, the payment read as missing, and wrong sums were committed.) */
    uint8_t kb[9];
    crdt_buf key = {kb, 0, sizeof kb};
    crdt_val_put_int(&key, s->campaign_year);
    const char *pay = store_field_str(p, m->p_payment, (crdt_blob){kb, (uint32_t)key.n}, &len);
    bool paid = str_in(pay, len, PAID_VALUES, 3);
    bool enrolled = paid || str_in(pay, len, ENROLLED_ONLY_VALUES, 1);
    if (m->p_insurance) {
        uint32_t il;
        const char *ins = store_field_str(p, m->p_insurance, (crdt_blob){NULL, 0}, &il);
        if (str_in(ins, il, INSURED_ELSEWHERE, 2)) enrolled = true;
    }
    c->v[1] = enrolled;
    c->v[2] = paid;

    /* Key groups: the live tags. */
    const crdt_field *tags = crdt_record_field(p, m->p_tags->name, (crdt_blob){NULL, 0});
    if (!tags) return;
    for (uint32_t i = 0; i < tags->n; i++) {
        crdt_val v;
        if (i && crdt_blob_cmp(tags->e[i].v, tags->e[i - 1].v) == 0) continue; /* same tag */
        if (crdt_val_parse(tags->e[i].v, &v) || v.t != CRDT_V_STR) continue;
        int g = crdt_vspec_enum_index(&m->p_tags->v, v.s, v.len);
        if (g < 0 || g >= STORE_MAX_GROUPS) continue;
        c->v[3 + g] = 1;
        if (!enrolled) c->v[3 + STORE_MAX_GROUPS + g] = 1;
    }
}

static void household_contrib(const store *s, const crdt_record *hh, contrib *c)
{
    place pl;
    memset(c, 0, sizeof *c);
    if (!hh) return;
    place_of_record(s, hh, &pl);
    if (!pl.c[0]) return;
    memcpy(c->c, pl.c, sizeof c->c);
    memcpy(c->g, pl.g, sizeof c->g);
    add_visits(c, hh, s->model.hh_visits);
}

/* ---- applying a contribution to the stored sums ------------------------------ */

/* Add d to the grid's sums at k (read, add, write; nothing if d is all 0). */
static int add_sums(store_txn *t, const uint8_t *k, size_t kl, const int64_t d[AGG_FIELDS])
{
    MDB_val v;
    int64_t sums[AGG_FIELDS];
    bool any = false;
    for (int i = 0; i < AGG_FIELDS; i++) any |= d[i] != 0;
    if (!any) return STORE_OK;
    int rc = store_get(t, DB_AGG, k, kl, &v);
    if (rc == STORE_ENOTFOUND) memset(sums, 0, sizeof sums);
    else if (rc) return rc;
    else if (v.mv_size != sizeof sums) return STORE_ECORRUPT;
    else memcpy(sums, v.mv_data, sizeof sums);
    for (int i = 0; i < AGG_FIELDS; i++) sums[i] += d[i];
    return store_put(t, DB_AGG, k, kl, sums, sizeof sums);
}

/* Add one week's change (delta) to the grid's week count k||0||w. */
static int add_week_delta(store_txn *t, const uint8_t *k, size_t kl, uint32_t w, int64_t delta)
{
    uint8_t wk[310];
    MDB_val v;
    int64_t n = 0;
    memcpy(wk, k, kl);
    wk[kl] = 0;
    be32(wk + kl + 1, w);
    int rc = store_get(t, DB_AGGW, wk, kl + 5, &v);
    if (rc == STORE_OK && v.mv_size == 8) memcpy(&n, v.mv_data, 8);
    else if (rc != STORE_ENOTFOUND) return rc ? rc : STORE_ECORRUPT;
    n += delta;
    return store_put(t, DB_AGGW, wk, kl + 5, &n, 8);
}

/* Add sign * c to its place's sums and week counts. */
static int add_to(store_txn *t, const contrib *c, int sign)
{
    uint8_t k[300];
    int64_t d[AGG_FIELDS];
    int rc;
    if (!c->c[0]) return STORE_OK;
    const char *parts[] = {c->c, c->g};
    size_t kl = store_key_join(k, sizeof k, parts, 2);
    if (!kl) return STORE_EINVAL;
    for (int i = 0; i < AGG_FIELDS; i++) d[i] = sign * c->v[i];
    if ((rc = add_sums(t, k, kl, d))) return rc;
    for (uint32_t i = 0; i < c->nweeks; i++)
        if ((rc = add_week_delta(t, k, kl, c->weeks[i], sign * c->week_n[i]))) return rc;
    return STORE_OK;
}

/* Week w's count in c (0 if absent). */
static int64_t week_count(const contrib *c, uint32_t w)
{
    for (uint32_t i = 0; i < c->nweeks; i++)
        if (c->weeks[i] == w) return c->week_n[i];
    return 0;
}

/*
 * c0 and c1 in the same (non-empty) place: add c1 - c0 once, reading and
 * writing only the sums and weeks that change.  The same result as
 * add_to(c0, -1) then add_to(c1, +1) (which rewrite what they read with
 * the same value where nothing changes), at half the reads and writes or
 * less: a delta that adds one visit to a person with many touches one week.
 */
static int add_change(store_txn *t, const contrib *c0, const contrib *c1)
{
    uint8_t k[300];
    int64_t d[AGG_FIELDS];
    int rc;
    const char *parts[] = {c1->c, c1->g};
    size_t kl = store_key_join(k, sizeof k, parts, 2);
    if (!kl) return STORE_EINVAL;
    for (int i = 0; i < AGG_FIELDS; i++) d[i] = c1->v[i] - c0->v[i];
    if ((rc = add_sums(t, k, kl, d))) return rc;
    for (uint32_t i = 0; i < c0->nweeks; i++) { /* weeks gone or changed */
        int64_t wd = week_count(c1, c0->weeks[i]) - c0->week_n[i];
        if (wd && (rc = add_week_delta(t, k, kl, c0->weeks[i], wd))) return rc;
    }
    for (uint32_t i = 0; i < c1->nweeks; i++) { /* weeks new */
        if (week_count(c0, c1->weeks[i])) continue; /* done above */
        if ((rc = add_week_delta(t, k, kl, c1->weeks[i], c1->week_n[i]))) return rc;
    }
    return STORE_OK;
}

int store_agg_person(store_txn *t, const crdt_record *before, const crdt_record *after,
                     const char *h0, const char *h1)
{
    place p0, p1;
    contrib *c = malloc(2 * sizeof *c); /* before, after */
    int rc;
    if (!c) return CRDT_ENOMEM;
    if ((rc = place_of_id(t, h0, &p0))) goto out;
    if (h1 && h0 && !strcmp(h0, h1)) p1 = p0;
    else if ((rc = place_of_id(t, h1, &p1))) goto out;
    person_contrib(t->s, before, &p0, &c[0]);
    person_contrib(t->s, after, &p1, &c[1]);
    if (c[0].c[0] && !strcmp(c[0].c, c[1].c) && !strcmp(c[0].g, c[1].g)) {
        rc = add_change(t, &c[0], &c[1]);
    } else {
        if ((rc = add_to(t, &c[0], -1))) goto out;
        rc = add_to(t, &c[1], +1);
    }
out:
    free(c);
    return rc;
}

int store_agg_household(store_txn *t, const crdt_record *before, const crdt_record *after,
                        bool moved)
{
    contrib *c = malloc(sizeof *c);
    store_ids members = {0};
    int rc;
    if (!c) return CRDT_ENOMEM;
    household_contrib(t->s, before, c);
    if ((rc = add_to(t, c, -1))) goto out;
    household_contrib(t->s, after, c);
    if ((rc = add_to(t, c, +1))) goto out;
    if (!moved) goto out;
    if ((rc = store_household_members(t, after->id, &members))) goto out;
    place p0, p1;
    place_of_record(t->s, before, &p0);
    place_of_record(t->s, after, &p1);
    for (size_t i = 0; i < members.n; i++) {
        crdt_record *p = NULL;
        rc = store_get_record(t, "person", members.id[i], &p);
        if (rc == STORE_ENOTFOUND) continue;
        if (rc) goto out;
        person_contrib(t->s, p, &p0, c);
        rc = add_to(t, c, -1);
        if (!rc) {
            person_contrib(t->s, p, &p1, c);
            rc = add_to(t, c, +1);
        }
        crdt_record_free(p);
        if (rc) goto out;
    }
out:
    store_ids_free(&members);
    free(c);
    return rc;
}

int store_agg_contrib(store_txn *t, const crdt_record *r, store_contrib_fn fn, void *arg)
{
    contrib *c = malloc(sizeof *c);
    crdt_record *hh = NULL;
    int rc = STORE_OK;
    if (!c) return CRDT_ENOMEM;
    memset(c, 0, sizeof *c);
    if (!strcmp(r->kind, "person")) {
        uint32_t len;
        char h[CRDT_RECID_MAX + 1];
        const char *hs = store_field_str(r, t->s->model.p_household, (crdt_blob){NULL, 0}, &len);
        place pl = {"", ""};
        if (hs && len && len <= CRDT_RECID_MAX) {
            memcpy(h, hs, len);
            h[len] = 0;
            /* From the household record itself, not the place index, so
             * verify checks the index too. */
            rc = store_get_record(t, "household", h, &hh);
            if (rc && rc != STORE_ENOTFOUND) goto out;
            rc = STORE_OK;
            place_of_record(t->s, hh, &pl);
        }
        person_contrib(t->s, r, &pl, c);
    } else if (!strcmp(r->kind, "household")) {
        household_contrib(t->s, r, c);
    }
    if (!c->c[0]) goto out;
    uint8_t k[310];
    const char *parts[] = {c->c, c->g};
    size_t kl = store_key_join(k, sizeof k, parts, 2);
    bool any = false;
    for (int i = 0; i < AGG_FIELDS; i++) any |= c->v[i] != 0;
    if (any) fn(arg, DB_AGG, k, kl, c->v, AGG_FIELDS);
    for (uint32_t i = 0; i < c->nweeks; i++) {
        k[kl] = 0;
        be32(k + kl + 1, c->weeks[i]);
        fn(arg, DB_AGGW, k, kl + 5, &c->week_n[i], 1);
    }
out:
    crdt_record_free(hh);
    free(c);
    return rc;
}

/* ---- reading ---------------------------------------------------------------- */

const char *const *store_group_names(const store *s, size_t *n)
{
    const crdt_vspec *v = &s->model.p_tags->v;
    *n = v->n_enum < STORE_MAX_GROUPS ? v->n_enum : STORE_MAX_GROUPS;
    return (const char *const *)v->enum_values;
}

static void agg_add(store_agg *a, const int64_t *sums)
{
    a->persons += sums[0];
    a->enrolled += sums[1];
    a->paid += sums[2];
    for (int g = 0; g < STORE_MAX_GROUPS; g++) {
        a->group[g] += sums[3 + g];
        a->group_unenrolled[g] += sums[3 + STORE_MAX_GROUPS + g];
    }
}

int store_agg_get(store_txn *t, const char *community, const char *grid, uint64_t now_ms,
                  store_agg *out)
{
    uint8_t prefix[300];
    size_t pn = 0;
    MDB_cursor *c;
    MDB_val k, v;
    uint32_t week = week_of_days((int64_t)(now_ms / 86400000ull));
    int rc;
    memset(out, 0, sizeof *out);
    if (grid && !community) return STORE_EINVAL;
    if (community) {
        const char *parts[] = {community, grid ? grid : ""};
        pn = store_key_join(prefix, sizeof prefix, parts, grid ? 2 : 2);
        if (!pn) return STORE_EINVAL;
        if (!grid) pn = strlen(community) + 1; /* "community\0" */
    }
    /* Sums: one key for a grid, a prefix range for a community or station. */
    for (int db = DB_AGG; db <= DB_AGGW; db++) {
        if ((rc = store_lmdb_err(mdb_cursor_open(t->txn, t->s->dbi[db], &c)))) return rc;
        k.mv_data = prefix;
        k.mv_size = pn;
        rc = pn ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(c, &k, &v, MDB_FIRST);
        while (rc == 0) {
            if (k.mv_size < pn || memcmp(k.mv_data, prefix, pn) != 0) break;
            if (db == DB_AGG) {
                if (grid && k.mv_size != pn) break;
                if (v.mv_size == AGG_FIELDS * 8) {
                    int64_t sums[AGG_FIELDS];
                    memcpy(sums, v.mv_data, sizeof sums);
                    agg_add(out, sums);
                }
            } else {
                const uint8_t *kp = k.mv_data;
                bool grid_ok = !grid || (k.mv_size == pn + 5 && kp[pn] == 0);
                if (grid_ok && k.mv_size >= 5 && rd32(kp + k.mv_size - 4) == week &&
                    v.mv_size == 8) {
                    int64_t n;
                    memcpy(&n, v.mv_data, 8);
                    out->visits_week += n;
                }
            }
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(c);
        if (rc && rc != MDB_NOTFOUND) return store_lmdb_err(rc);
    }
    return STORE_OK;
}

/* ---- daily history of coverage ---------------------------------------------- */

static int hist_put(store_txn *t, uint32_t day, const char *community, const store_agg *a)
{
    uint8_t k[4 + 128];
    size_t cl = strlen(community);
    int64_t v[3] = {a->persons, a->enrolled, a->paid};
    if (cl > 127) return STORE_EINVAL;
    be32(k, day);
    memcpy(k + 4, community, cl);
    return store_put(t, DB_AGGHIST, k, 4 + cl, v, sizeof v);
}

typedef struct snap_ctx {
    store_txn *t;
    uint64_t now_ms;
    uint32_t day;
    char last[128];
    int rc;
} snap_ctx;

static int snap_place(const char *community, const char *grid, void *arg)
{
    snap_ctx *c = arg;
    store_agg a;
    (void)grid;
    if (!strcmp(c->last, community)) return 0; /* places come sorted: once per community */
    snprintf(c->last, sizeof c->last, "%s", community);
    if ((c->rc = store_agg_get(c->t, community, NULL, c->now_ms, &a))) return c->rc;
    return c->rc = hist_put(c->t, c->day, community, &a);
}

int store_agg_snapshot(store_txn *t, uint64_t now_ms)
{
    store_agg a;
    snap_ctx c = {t, now_ms, (uint32_t)(now_ms / 86400000ull), "", 0};
    if (!t->rw) return STORE_EREADONLY;
    int rc = store_agg_get(t, NULL, NULL, now_ms, &a);
    if (!rc) rc = hist_put(t, c.day, "", &a);
    if (!rc) rc = store_agg_places(t, snap_place, &c);
    return rc ? rc : c.rc;
}

int store_agg_history(store_txn *t, const char *community, uint32_t from_day, uint32_t to_day,
                      store_hist_cb cb, void *arg)
{
    size_t cl = strlen(community);
    if (cl > 127) return STORE_EINVAL;
    for (uint32_t day = from_day; day <= to_day && day >= from_day; day++) {
        uint8_t k[4 + 128];
        MDB_val v;
        be32(k, day);
        memcpy(k + 4, community, cl);
        int rc = store_get(t, DB_AGGHIST, k, 4 + cl, &v);
        if (rc == STORE_ENOTFOUND) continue;
        if (rc) return rc;
        if (v.mv_size != 24) return STORE_ECORRUPT;
        int64_t x[3];
        memcpy(x, v.mv_data, sizeof x);
        if ((rc = cb(day, x[0], x[1], x[2], arg))) return rc;
    }
    return STORE_OK;
}
