/*
 * sim.c — doorstep-sim: a synthetic street worked by volunteers' phones.
 *
 * The street (deterministic from the seed): `communities` communities of
 * grids of ~40 households; 1–6 persons per household (mean ≈ 2.9); Chinese
 * names, valid GB 11643 ID numbers, mobile numbers; insurance: ~12.6 %
 * employee (职工), ~0.2 % uninsured, the rest resident (城乡居民); ~6 % of
 * the insured in subsidised key groups (特困, 低保, 返贫致贫, 易返贫致贫),
 * paid with a subsidy (资助参保); of the other residents ~65 % have paid for
 * the campaign year when the campaign opens, the rest are the volunteers'
 * work.  Nothing real.
 *
 * Devices: one "station" device (staff) whose scope is every household:
 * it seeds the street (every household and person is a signed delta) and
 * later edits and resolves conflicts as staff would; and V volunteers, each
 * with a contiguous slice of households plus the first two households of
 * the next volunteer's slice (shared: both may edit them, so concurrent
 * writes — real mv conflicts — arise).  Each visit day every volunteer,
 * offline, visits some households and records payments, tags, review
 * stages, notes, deaths, moves (within its own unshared households: see the
 * report in issue #5 about history of persons moving between scopes), new
 * babies and visit log entries; the station edits a share of households
 * and resolves half of the conflicts it sees.  Then every device syncs at
 * once (pushes and pulls), and once more (pulls what the others pushed).
 *
 * Invariants: the simulator never writes records into the store itself; it
 * only creates tokens and assigns the station's scope (admin actions).
 * Each device handle is used by one thread at a time.
 */
#define _GNU_SOURCE
#include "sim.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define HH_PER_GRID 40
#define SHARED_PER_SLICE 2

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint32_t below(uint64_t *s, uint32_t n) { return n ? (uint32_t)(mix(s) % n) : 0; }
static bool pct(uint64_t *s, uint32_t p) { return below(s, 1000) < p * 10; }
static bool permille(uint64_t *s, uint32_t p) { return below(s, 1000) < p; }

void sim_opts_defaults(sim_opts *o)
{
    if (!o->volunteers) o->volunteers = 300;
    if (!o->households) o->households = 7000;
    if (!o->communities) o->communities = 22;
    if (o->communities > o->households / 20) o->communities = o->households / 20 ? o->households / 20 : 1;
    if (!o->threads) o->threads = 64;
    if (!o->seed) o->seed = 20260901;
}

#define LOG(o, ...)                                                                               \
    do {                                                                                          \
        if ((o)->log) {                                                                           \
            fprintf((o)->log, "sim: " __VA_ARGS__);                                               \
            fputc('\n', (o)->log);                                                                \
            fflush((o)->log);                                                                     \
        }                                                                                         \
    } while (0)

/* ---- values --------------------------------------------------------------------------- */

static const char *const surnames[] = {
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡",
    "郭", "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹"};
static const char *const given[] = {
    "伟", "芳", "娜", "秀", "英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰",
    "娟", "涛", "明", "超", "兰", "霞", "平", "刚", "桂", "文", "华", "建", "国", "玉", "红",
    "春", "梅", "海", "燕", "志", "德", "福", "宝", "淑", "云"};
static const char *const streets[] = {"幸福路", "建设街", "和平路", "人民路", "光明巷",
                                      "解放路", "新华街", "团结路"};
static const char *const methods[] = {"上门走访", "上门走访", "上门走访", "电话随访", "微信联系"};
static const char *const move_tags[] = {"灵活就业", "外出务工", "在校学生", "残疾", "低保边缘"};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void name_of(uint64_t *rng, char out[32])
{
    bool two = pct(rng, 70);
    snprintf(out, 32, "%s%s%s", surnames[below(rng, NELEM(surnames))],
             given[below(rng, NELEM(given))], two ? given[below(rng, NELEM(given))] : "");
}

static void phone_of(uint64_t *rng, char out[12])
{
    snprintf(out, 12, "1%c%09u", (char)('3' + below(rng, 7)), below(rng, 1000000000));
}



/* A valid ID number born in year `by` (random day), region from `region`,
 * sequence `seq`; birth date "YYYY-MM-DD" in birth. */
static void idnum_of(uint64_t *rng, int by, unsigned region, unsigned seq, char out[19],
                     char birth[11])
{
    int y;
    unsigned m, d;
    crdt_civil_from_days(crdt_days_from_civil(by, 1, 1) + below(rng, 365), &y, &m, &d);
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%06u%04d%02u%02u%03u", region, y, m, d, seq % 1000);
    memcpy(out, tmp, 17);
    out[17] = crdt_idnum_check_char(out);
    out[18] = 0;
    snprintf(birth, 11, "%04d-%02u-%02u", y, m, d);
}

/* China Standard Time (UTC+8, no DST), the stations' clock, as sync/api.c counts days. */
#define SIM_TZ_OFFSET_MS (8ull * 3600 * 1000)

/* Visit days follow the clock: the last day this run simulates is today (in
 * the station's time zone), the ones before it the calendar days before, so
 * the dashboard's 本周走访 counts the demo's visits on the day it runs. */
static void visit_date(int64_t today, int64_t last_day, uint32_t day, char out[11])
{
    int y;
    unsigned m, d;
    crdt_civil_from_days(today - (last_day - (int64_t)day), &y, &m, &d);
    snprintf(out, 11, "%04d-%02u-%02u", y, m, d);
}

/* ---- the street layout ------------------------------------------------------------------ */

typedef struct street {
    uint32_t H, C, V;
    uint32_t *comm_first;    /* first household of community c; [C] = H */
} street;

static uint32_t comm_of(const street *s, uint32_t h) { return (uint32_t)((uint64_t)h * s->C / s->H); }
/* sim_opts.prefix (at most SIM_PREFIX_MAX letters and digits): put before
 * every record id and community code, so that two simulated streets can
 * feed one district without their ids meeting.  Set once by sim_run. */
static char id_prefix[SIM_PREFIX_MAX + 1];
static void hh_id(uint32_t h, char out[24]) { snprintf(out, 24, "%sH%05u", id_prefix, h); }
static void hh_codes(const street *s, uint32_t h, char comm[24], char grid[32])
{
    uint32_t c = comm_of(s, h);
    uint32_t first = (uint32_t)(((uint64_t)c * s->H + s->C - 1) / s->C);
    snprintf(comm, 24, "%sC%02u", id_prefix, c + 1);
    snprintf(grid, 32, "%sC%02u-G%02u", id_prefix, c + 1, (h - first) / HH_PER_GRID + 1);
}
static uint32_t slice_first(const street *s, uint32_t v) { return (uint32_t)((uint64_t)v * s->H / s->V); }

/* ---- devices ------------------------------------------------------------------------------ */

typedef struct simdev {
    dsd *h;
    int idx;                 /* -1: station, else volunteer index */
    uint32_t dev;
    uint64_t seq0;           /* seq at the start of this run */
    uint64_t rng;
    uint32_t babies;
    int err;
    bool revoked;            /* the station revoked it: no more edits or syncs */
    char errmsg[300];
} simdev;

typedef struct sim {
    const sim_opts *o;
    store *st;
    street s;
    uint32_t year;
    simdev *devs;            /* [0] = station, [1..V] volunteers */
    size_t n;
    uint32_t day0;           /* first day number of this run */
    int64_t today;           /* days since 1970-01-01 of today, station time */
    int64_t last_day;        /* the day number this run dates today */
} sim;

static int dev_open(sim *S, simdev *d, const char *name)
{
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s", S->o->devices_dir, name);
    int rc = dsd_open(path, S->o->schema, &d->h, err, sizeof err);
    if (rc) {
        snprintf(d->errmsg, sizeof d->errmsg, "%.100s: %.190s", path, err);
        return rc;
    }
    dsd_set_durable(d->h, false);
    dsd_status stt;
    if (!(rc = dsd_status_get(d->h, &stt))) {
        d->dev = stt.dev;
        d->seq0 = stt.seq;
        d->revoked = stt.revoked;
    }
    return rc;
}

int sim_token(store *st, const char *volunteer, const char *const *scope, size_t n,
              char text[STORE_TOKEN_TEXT_LEN + 1])
{
    store_txn *t;
    int rc = store_begin(st, STORE_RW, &t);
    if (rc) return rc;
    uint64_t now = now_ms();
    rc = store_token_create(t, volunteer, scope, n, now, now + 86400000ull, text);
    if (rc) {
        store_abort(t);
        return rc;
    }
    return store_commit(t);
}

/* Run fn(S, devs[i], arg) for every device on a pool of threads. */
typedef void (*dev_fn)(sim *S, simdev *d, void *arg);
typedef struct pool {
    sim *S;
    dev_fn fn;
    void *arg;
    atomic_size_t next;
} pool;

static void *pool_main(void *p)
{
    pool *pl = p;
    for (;;) {
        size_t i = atomic_fetch_add(&pl->next, 1);
        if (i >= pl->S->n) return NULL;
        pl->fn(pl->S, &pl->S->devs[i], pl->arg);
    }
}

static void for_all(sim *S, dev_fn fn, void *arg)
{
    pool pl = {.S = S, .fn = fn, .arg = arg};
    atomic_init(&pl.next, 0);
    size_t nt = S->o->threads < S->n ? S->o->threads : S->n;
    pthread_t *th = calloc(nt, sizeof *th);
    size_t started = 0;
    for (size_t i = 0; th && i < nt; i++)
        if (pthread_create(&th[i], NULL, pool_main, &pl) == 0) started++;
    if (!started) pool_main(&pl);
    for (size_t i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
}

static void dev_sync(sim *S, simdev *d, void *arg)
{
    (void)arg;
    if (d->err || d->revoked) return;
    dsd_sync_opts so = {.timeout_ms = 60000};
    dsd_sync_report rep;
    int rc = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        rc = dsd_sync(d->h, S->o->server, &so, &rep);
        if (rc == 0) return;
        /* An administrator revoked the phone (doorstepctl device revoke):
         * soft, it handed in its outbox; hard, it was refused.  Either way
         * it takes no further part, and the rest of the street goes on. */
        if (rc == DSD_EREVOKED || rc == -305) {
            d->revoked = true;
            LOG(S->o, "device %u: revoked by the station (%s); %llu pending edit(s) handed in, "
                      "%llu of them kept for review",
                d->dev, rc == DSD_EREVOKED ? "soft" : "hard",
                (unsigned long long)(rep.pushed + rep.quarantined),
                (unsigned long long)rep.quarantined);
            return;
        }
        /* busy / unavailable / rate limited / transport: try again */
        if (!(rc == -311 || rc == -312 || rc == -316 || rc == DSD_ECLOSED || rc == DSD_ETIMEOUT ||
              rc == DSD_ECONNECT))
            break;
        struct timespec ts = {0, 200000000L * (attempt + 1)};
        nanosleep(&ts, NULL);
    }
    d->err = rc;
    snprintf(d->errmsg, sizeof d->errmsg, "device %u: sync: %s (%d): %s", d->dev,
             dsd_strerror(rc), rc, dsd_errmsg(d->h));
}

static int first_error(sim *S, char *why, size_t cap)
{
    for (size_t i = 0; i < S->n; i++)
        if (S->devs[i].err) {
            snprintf(why, cap, "%s", S->devs[i].errmsg);
            return S->devs[i].err;
        }
    return 0;
}

/* ---- enrollment and seeding --------------------------------------------------------------- */

static void dev_enroll(sim *S, simdev *d, void *arg)
{
    (void)arg;
    char vol[64], text[STORE_TOKEN_TEXT_LEN + 1];
    const street *s = &S->s;
    char (*ids)[24] = NULL;
    const char **scope = NULL;
    size_t n = 0;
    if (d->err || d->dev) return;
    if (d->idx < 0) {
        snprintf(vol, sizeof vol, "街道工作站");
        ids = calloc(1, sizeof *ids);
        scope = calloc(1, sizeof *scope);
        if (ids && scope) {
            hh_id(0, ids[0]);
            scope[0] = ids[0];
            n = 1;
        }
    } else {
        uint32_t v = (uint32_t)d->idx, a = slice_first(s, v), b = slice_first(s, v + 1);
        uint32_t extra = S->s.V > 1 ? SHARED_PER_SLICE : 0;
        snprintf(vol, sizeof vol, "志愿者%03u", v + 1);
        ids = calloc(b - a + extra + 1, sizeof *ids);
        scope = calloc(b - a + extra + 1, sizeof *scope);
        for (uint32_t h = a; ids && scope && h < b; h++, n++) {
            hh_id(h, ids[n]);
            scope[n] = ids[n];
        }
        uint32_t nb = slice_first(s, (v + 1) % s->V), ne = (v + 1) % s->V + 1 <= s->V
                                                              ? slice_first(s, (v + 1) % s->V + 1)
                                                              : s->H;
        for (uint32_t h = nb; ids && scope && h < ne && h < nb + extra; h++) {
            if (h >= a && h < b) continue;
            hh_id(h, ids[n]);
            scope[n] = ids[n];
            n++;
        }
    }
    int rc = ids && scope ? sim_token(S->st, vol, scope, n, text) : DSD_ENOMEM;
    if (!rc) rc = dsd_enroll(d->h, S->o->server, text);
    free(ids);
    free(scope);
    if (rc) {
        d->err = rc;
        snprintf(d->errmsg, sizeof d->errmsg, "%s: enroll: %s (%d): %s", vol, dsd_strerror(rc), rc,
                 d->h ? dsd_errmsg(d->h) : "");
        return;
    }
    dsd_status stt;
    if (!dsd_status_get(d->h, &stt)) d->dev = stt.dev;
}

static int station_scope_all(sim *S)
{
    const char **hh = calloc(S->s.H, sizeof *hh);
    char (*ids)[24] = calloc(S->s.H, sizeof *ids);
    store_txn *t = NULL;
    int rc = hh && ids ? 0 : DSD_ENOMEM;
    for (uint32_t h = 0; !rc && h < S->s.H; h++) {
        hh_id(h, ids[h]);
        hh[h] = ids[h];
    }
    if (!rc) rc = store_begin(S->st, STORE_RW, &t);
    if (!rc) rc = store_device_scope_set(t, S->devs[0].dev, hh, S->s.H);
    if (!rc) rc = store_commit(t);
    else if (t) store_abort(t);
    free(hh);
    free(ids);
    return rc;
}

static const char *const relations[] = {"配偶", "子女", "子女", "父母", "孙子女", "兄弟姐妹"};

/* One person of the seed street. */
static int seed_person(sim *S, dsd *h, uint64_t *rng, const char *hid, const char *pid,
                       uint32_t k, uint32_t serial, int head_by)
{
    char name[32], idn[19], birth[11], phone[12], year[8];
    const char *rel = k == 0 ? "户主" : relations[below(rng, NELEM(relations))];
    int by = head_by;
    if (!strcmp(rel, "配偶")) by = head_by + (int)below(rng, 7) - 3;
    else if (!strcmp(rel, "子女")) by = head_by + 22 + (int)below(rng, 12);
    else if (!strcmp(rel, "父母")) by = head_by - 24 - (int)below(rng, 8);
    else if (!strcmp(rel, "孙子女")) by = head_by + 45 + (int)below(rng, 12);
    else by = head_by + (int)below(rng, 11) - 5;
    if (by > (int)S->year - 1) by = (int)S->year - 1;
    if (by < 1925) by = 1925;
    name_of(rng, name);
    idnum_of(rng, by, 320500 + (serial / 1000) % 90, serial, idn, birth);
    snprintf(year, sizeof year, "%u", S->year);
    dsd_edit *e;
    int rc = dsd_edit_begin(h, "person", pid, &e);
    if (rc) return rc;
    int age = (int)S->year - by;
    const char *ins = "城乡居民", *pay;
    uint32_t r = below(rng, 1000);
    const char *tag = NULL;
    if (r < 126 && age >= 18 && age < 65) ins = "职工";
    else if (r < 128) ins = "未参保";
    if (!strcmp(ins, "职工")) pay = "无需缴费";
    else if (!strcmp(ins, "未参保")) pay = "未缴费";
    else {
        uint32_t g = below(rng, 1000);
        if (g < 8) tag = "特困";
        else if (g < 40) tag = "低保";
        else if (g < 50) tag = "返贫致贫";
        else if (g < 64) tag = "易返贫致贫";
        pay = tag ? "资助参保" : (pct(rng, 65) ? (pct(rng, 85) ? "已缴费" : "代缴") : "未缴费");
    }
    if (!(rc = dsd_edit_set(e, "household", NULL, hid)) && !(rc = dsd_edit_set(e, "name", NULL, name)) &&
        !(rc = dsd_edit_set(e, "id_number", NULL, idn)) &&
        !(rc = dsd_edit_set(e, "gender", NULL, pct(rng, 50) ? "男" : "女")) &&
        !(rc = dsd_edit_set(e, "birth_date", NULL, birth)) &&
        !(rc = dsd_edit_set(e, "relation", NULL, rel)) &&
        !(rc = dsd_edit_set(e, "insurance_type", NULL, ins)) &&
        !(rc = dsd_edit_set(e, "payment", year, pay)) &&
        !(rc = dsd_edit_set(e, "life_status", NULL, "正常"))) {
        if (tag) rc = dsd_edit_add(e, "tags", tag);
        if (!rc && age >= 60 && pct(rng, 8)) rc = dsd_edit_add(e, "tags", "60岁以上无收入");
        if (!rc && age >= 6 && age <= 22 && pct(rng, 60)) rc = dsd_edit_add(e, "tags", "在校学生");
        if (!rc && age >= 18 && age < 60 && pct(rng, 10)) rc = dsd_edit_add(e, "tags", "外出务工");
        if (!rc && strcmp(pay, "未缴费") && strcmp(pay, "无需缴费"))
            rc = dsd_edit_add(e, "paid_years", year);
        if (!rc && age >= 16 && pct(rng, 70)) {
            phone_of(rng, phone);
            rc = dsd_edit_set(e, "phone", NULL, phone);
        }
    }
    if (rc) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

static int seed_street(sim *S)
{
    static const unsigned cum[6] = {15, 43, 68, 85, 94, 100};
    simdev *st = &S->devs[0];
    uint64_t rng = S->o->seed ^ 0x5eed;
    uint32_t serial = 0;
    for (uint32_t h = 0; h < S->s.H; h++) {
        char hid[24], comm[24], grid[32], addr[96], pid[32], phone[12];
        hh_id(h, hid);
        hh_codes(&S->s, h, comm, grid);
        snprintf(addr, sizeof addr, "%s%u号%u栋%u室", streets[comm_of(&S->s, h) % NELEM(streets)],
                 h / 40 + 1, h % 40 / 8 + 1, 101 + h % 8);
        unsigned r = below(&rng, 100), k = 0;
        while (r >= cum[k]) k++;
        uint32_t size = k + 1;
        dsd_edit *e;
        int rc = dsd_edit_begin(st->h, "household", hid, &e);
        snprintf(pid, sizeof pid, "%sP%05u-1", id_prefix, h);
        if (!rc && !(rc = dsd_edit_set(e, "community", NULL, comm)) &&
            !(rc = dsd_edit_set(e, "grid", NULL, grid)) && !(rc = dsd_edit_set(e, "address", NULL, addr)) &&
            !(rc = dsd_edit_set(e, "head", NULL, pid)) && pct(&rng, 60)) {
            phone_of(&rng, phone);
            rc = dsd_edit_set(e, "phone", NULL, phone);
        }
        if (rc) {
            dsd_edit_abort(e);
            return rc;
        }
        if ((rc = dsd_edit_commit(e, NULL))) return rc;
        int head_by = 1940 + (int)below(&rng, 55);
        for (uint32_t p = 0; p < size; p++) {
            snprintf(pid, sizeof pid, "%sP%05u-%u", id_prefix, h, p + 1);
            if ((rc = seed_person(S, st->h, &rng, hid, pid, p, serial++, head_by))) return rc;
        }
    }
    return 0;
}

/* ---- a visit day ---------------------------------------------------------------------------- */

typedef struct pinfo {
    char id[CRDT_RECID_MAX + 1];
    char hh[CRDT_RECID_MAX + 1];
    char pay[32];
    char life[32];
    int review;
    bool has_tag[NELEM(move_tags)];
} pinfo;

typedef struct plist {
    pinfo *p;
    size_t n, cap;
    uint32_t year;
} plist;

static void field_str(const crdt_record *r, const char *name, crdt_blob key, char *out, size_t cap)
{
    const crdt_field *f = crdt_record_field(r, name, key);
    crdt_val v;
    out[0] = 0;
    if (f && f->n && !crdt_val_parse(f->e[f->n - 1].v, &v) && v.t == CRDT_V_STR && v.len < cap) {
        memcpy(out, v.s, v.len);
        out[v.len] = 0;
    }
}

static int collect_person(const char *kind, const char *id, const uint8_t *p, size_t n, void *arg)
{
    plist *l = arg;
    crdt_record *r = NULL;
    (void)kind;
    if (crdt_record_decode(p, n, &r)) return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 128;
        pinfo *np = realloc(l->p, nc * sizeof *np);
        if (!np) {
            crdt_record_free(r);
            return DSD_ENOMEM;
        }
        l->p = np;
        l->cap = nc;
    }
    pinfo *pi = &l->p[l->n++];
    memset(pi, 0, sizeof *pi);
    snprintf(pi->id, sizeof pi->id, "%s", id);
    field_str(r, "household", (crdt_blob){NULL, 0}, pi->hh, sizeof pi->hh);
    crdt_buf kb = {0};
    crdt_val_put_int(&kb, l->year);
    field_str(r, "payment", (crdt_blob){kb.p, (uint32_t)kb.n}, pi->pay, sizeof pi->pay);
    crdt_buf_free(&kb);
    field_str(r, "life_status", (crdt_blob){NULL, 0}, pi->life, sizeof pi->life);
    const crdt_field *rv = crdt_record_field(r, "review", (crdt_blob){NULL, 0});
    pi->review = rv ? crdt_field_stage(rv) : -1;
    const crdt_field *tg = crdt_record_field(r, "tags", (crdt_blob){NULL, 0});
    for (uint32_t i = 0; tg && i < tg->n; i++) {
        crdt_val v;
        if (crdt_val_parse(tg->e[i].v, &v) || v.t != CRDT_V_STR) continue;
        for (size_t j = 0; j < NELEM(move_tags); j++)
            if (strlen(move_tags[j]) == v.len && !memcmp(move_tags[j], v.s, v.len)) pi->has_tag[j] = true;
    }
    crdt_record_free(r);
    return 0;
}

typedef struct slist {
    char (*id)[CRDT_RECID_MAX + 1];
    size_t n, cap;
} slist;

static int collect_scope(const char *kind, const char *id, const uint8_t *p, size_t n, void *arg)
{
    slist *l = arg;
    (void)kind, (void)p, (void)n;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        void *np = realloc(l->id, nc * sizeof *l->id);
        if (!np) return DSD_ENOMEM;
        l->id = np;
        l->cap = nc;
    }
    snprintf(l->id[l->n++], sizeof *l->id, "%s", id);
    return 0;
}

static bool is_shared(const sim *S, const char *hid)
{
    uint32_t h = (uint32_t)strtoul(hid + 1, NULL, 10);
    if (S->s.V < 2) return false;
    for (uint32_t v = 0; v < S->s.V; v++) {
        uint32_t a = slice_first(&S->s, v);
        if (h >= a && h < a + SHARED_PER_SLICE) return true;
        if (a > h) break;
    }
    return false;
}

#define TRY(x)                                                                                    \
    do {                                                                                          \
        if ((rc = (x))) goto fail;                                                                \
    } while (0)

/* One person visited by a volunteer. */
static int visit_person(sim *S, simdev *d, pinfo *pi, const char *date, bool shared,
                        const slist *own)
{
    uint64_t *rng = &d->rng;
    char year[8], note[96];
    int rc;
    dsd_edit *e = NULL;
    snprintf(year, sizeof year, "%u", S->year);
    if (!strcmp(pi->life, "死亡") || !strcmp(pi->life, "迁出")) return 0;
    TRY(dsd_edit_begin(d->h, "person", pi->id, &e));
    uint32_t nops = 0;
    const char *service = NULL;
    bool unpaid = !strcmp(pi->pay, "未缴费");
    if ((unpaid && pct(rng, 60)) || (shared && pct(rng, 40))) {
        /* Two volunteers on a shared household may record this at once. */
        const char *np = pct(rng, 50) ? "已缴费" : "代缴";
        TRY(dsd_edit_set(e, "payment", year, np));
        TRY(dsd_edit_add(e, "paid_years", year));
        service = !strcmp(np, "代缴") ? "代缴" : "参保登记";
        if (!strcmp(np, "代缴")) TRY(dsd_edit_inc(e, "errands_done", 1));
        nops += 2;
    }
    if (pct(rng, 10)) {
        size_t t = below(rng, NELEM(move_tags));
        if (pi->has_tag[t]) TRY(dsd_edit_remove(e, "tags", move_tags[t]));
        else TRY(dsd_edit_add(e, "tags", move_tags[t]));
        nops++;
    }
    if (pi->review < 1 && pct(rng, 5)) {
        TRY(dsd_edit_raise(e, "review", pi->review < 0 && pct(rng, 50) ? "待初审" : "社区已初审"));
        nops++;
    }
    if (pct(rng, 3)) {
        snprintf(note, sizeof note, "%s 走访：家中情况稳定", date);
        TRY(dsd_edit_set(e, "note", NULL, note));
        nops++;
    }
    if (permille(rng, 8)) {
        TRY(dsd_edit_set(e, "life_status", NULL, "死亡"));
        service = "信息变更";
        nops++;
    } else if (permille(rng, 8)) {
        TRY(dsd_edit_set(e, "life_status", NULL, "迁出"));
        service = "信息变更";
        nops++;
    } else if (permille(rng, 10) && own->n > 1 && !shared) {
        /* Move within the volunteer's own (unshared) households. */
        const char *to = own->id[below(rng, (uint32_t)own->n)];
        if (strcmp(to, pi->hh)) {
            TRY(dsd_edit_set(e, "household", NULL, to));
            service = "信息变更";
            nops++;
        }
    }
    if (service || pct(rng, 20)) {
        const char *names[4] = {"date", "method", "result", "service"};
        const char *vals[4] = {date, methods[below(rng, NELEM(methods))], "已完成",
                               service ? service : "政策宣传"};
        TRY(dsd_edit_append(e, "visits", names, vals, 4));
        nops++;
    }
    if (!nops) {
        dsd_edit_abort(e);
        return 0;
    }
    return dsd_edit_commit(e, NULL);
fail:
    dsd_edit_abort(e);
    return rc;
}

static int new_baby(sim *S, simdev *d, const char *hid, const char *date)
{
    char pid[40], idn[19], birth[11], name[32], year[8];
    uint64_t *rng = &d->rng;
    snprintf(pid, sizeof pid, "%sN%u-%u", id_prefix, d->dev, ++d->babies);
    snprintf(year, sizeof year, "%u", S->year);
    /* Born this year, before today. */
    int by;
    unsigned bm, bd;
    int64_t today;
    if (crdt_date_days(date, strlen(date), &today)) return CRDT_EDATE;
    crdt_civil_from_days(today - 1 - below(rng, 200), &by, &bm, &bd);
    if (by < (int)S->year) by = (int)S->year, bm = 1, bd = 1;
    snprintf(birth, sizeof birth, "%04d-%02u-%02u", by, bm, bd);
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%06u%04d%02u%02u%03u", 320600 + d->dev % 90, by, bm, bd,
             d->babies % 1000);
    memcpy(idn, tmp, 17);
    idn[17] = crdt_idnum_check_char(idn);
    idn[18] = 0;
    name_of(rng, name);
    dsd_edit *e;
    int rc = dsd_edit_begin(d->h, "person", pid, &e);
    if (rc) return rc;
    const char *names[4] = {"date", "method", "result", "service"};
    const char *vals[4] = {date, "上门走访", "已完成", "新生儿参保登记"};
    if ((rc = dsd_edit_set(e, "household", NULL, hid)) || (rc = dsd_edit_set(e, "name", NULL, name)) ||
        (rc = dsd_edit_set(e, "id_number", NULL, idn)) ||
        (rc = dsd_edit_set(e, "gender", NULL, pct(rng, 50) ? "男" : "女")) ||
        (rc = dsd_edit_set(e, "birth_date", NULL, birth)) ||
        (rc = dsd_edit_set(e, "relation", NULL, "子女")) ||
        (rc = dsd_edit_set(e, "insurance_type", NULL, "城乡居民")) ||
        (rc = dsd_edit_set(e, "payment", year, "未缴费")) ||
        (rc = dsd_edit_set(e, "life_status", NULL, "新增")) || (rc = dsd_edit_add(e, "tags", "新生儿")) ||
        (rc = dsd_edit_append(e, "visits", names, vals, 4))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

static int cmp_pinfo(const void *a, const void *b)
{
    const pinfo *x = a, *y = b;
    int c = strcmp(x->hh, y->hh);
    return c ? c : strcmp(x->id, y->id);
}

static void volunteer_day(sim *S, simdev *d, uint32_t day)
{
    plist pl = {.year = S->year};
    slist sc = {0}, own = {0};
    char date[11];
    int rc = 0;
    visit_date(S->today, S->last_day, day, date);
    if ((rc = dsd_record_foreach(d->h, "person", collect_person, &pl)) ||
        (rc = dsd_scope_foreach(d->h, collect_scope, &sc)))
        goto out;
    qsort(pl.p, pl.n, sizeof *pl.p, cmp_pinfo);
    for (size_t i = 0; i < sc.n; i++)
        if (!is_shared(S, sc.id[i]) && (rc = collect_scope("household", sc.id[i], NULL, 0, &own)))
            goto out;
    uint32_t visits = 3 + below(&d->rng, 4);
    for (size_t i = 0; i < sc.n && !rc; i++) {
        const char *hid = sc.id[i];
        bool shared = is_shared(S, hid);
        /* Shared households are visited by both volunteers most days. */
        bool go = shared ? pct(&d->rng, 60) : below(&d->rng, (uint32_t)sc.n) < visits;
        if (!go) continue;
        const char *res = pct(&d->rng, 85) ? "已完成" : (pct(&d->rng, 70) ? "无人在家" : "需再访");
        if ((rc = dsd_visit_append(d->h, "household", hid, date, methods[below(&d->rng, NELEM(methods))],
                                   res, NULL, NULL)))
            break;
        if (strcmp(res, "已完成")) continue;
        for (size_t j = 0; j < pl.n && !rc; j++)
            if (!strcmp(pl.p[j].hh, hid)) rc = visit_person(S, d, &pl.p[j], date, shared, &own);
        if (!rc && pct(&d->rng, 2)) rc = new_baby(S, d, hid, date);
    }
out:
    if (rc) {
        d->err = rc;
        snprintf(d->errmsg, sizeof d->errmsg, "device %u: visit day %u: %s (%d): %s", d->dev, day,
                 dsd_strerror(rc), rc, dsd_errmsg(d->h));
    }
    free(pl.p);
    free(sc.id);
    free(own.id);
}

/* Staff: resolve half of the conflicts they see, edit some households. */
typedef struct conflicts {
    uint64_t rng;
    struct cf { char kind[16]; char id[CRDT_RECID_MAX + 1]; char field[CRDT_NAME_MAX]; char key[16];
                char val[64]; } *c;
    size_t n, cap;
} conflicts;

static int collect_conflict(const char *kind, const char *id, const uint8_t *p, size_t n, void *arg)
{
    conflicts *cs = arg;
    crdt_record *r = NULL;
    if (crdt_record_decode(p, n, &r)) return 0;
    for (uint32_t i = 0; i < r->n_fields; i++) {
        const crdt_field *f = &r->fields[i];
        if (f->type != CRDT_F_MV || f->n < 2) continue;
        crdt_val kv, vv;
        if (cs->n == cs->cap) {
            size_t nc = cs->cap ? cs->cap * 2 : 64;
            void *np = realloc(cs->c, nc * sizeof *cs->c);
            if (!np) break;
            cs->c = np;
            cs->cap = nc;
        }
        struct cf *c = &cs->c[cs->n];
        memset(c, 0, sizeof *c);
        snprintf(c->kind, sizeof c->kind, "%s", kind);
        snprintf(c->id, sizeof c->id, "%s", id);
        snprintf(c->field, sizeof c->field, "%s", f->name);
        if (f->key.n && !crdt_val_parse(f->key, &kv) && kv.t == CRDT_V_INT)
            snprintf(c->key, sizeof c->key, "%lld", (long long)kv.i);
        if (crdt_val_parse(f->e[f->n - 1].v, &vv) || vv.t != CRDT_V_STR || vv.len >= sizeof c->val)
            continue;
        memcpy(c->val, vv.s, vv.len);
        c->val[vv.len] = 0;
        cs->n++;
    }
    crdt_record_free(r);
    return 0;
}

static void station_day(sim *S, simdev *d, uint32_t day)
{
    conflicts cs = {0};
    plist pl = {.year = S->year};
    char date[11], year[8];
    int rc = 0;
    visit_date(S->today, S->last_day, day, date);
    snprintf(year, sizeof year, "%u", S->year);
    if ((rc = dsd_record_foreach(d->h, "person", collect_conflict, &cs))) goto out;
    for (size_t i = 0; i < cs.n && !rc; i++) {
        if (!pct(&d->rng, 50)) continue;
        rc = dsd_resolve(d->h, cs.c[i].kind, cs.c[i].id, cs.c[i].field,
                         cs.c[i].key[0] ? cs.c[i].key : NULL, cs.c[i].val);
        if (rc == DSD_ENOCONFLICT) rc = 0;
    }
    if (rc) goto out;
    /* Staff edits: ~1 % of households (shared ones favoured: conflicts). */
    if ((rc = dsd_record_foreach(d->h, "person", collect_person, &pl))) goto out;
    for (size_t j = 0; j < pl.n && !rc; j++) {
        pinfo *pi = &pl.p[j];
        bool shared = is_shared(S, pi->hh);
        if (!(shared ? pct(&d->rng, 15) : permille(&d->rng, 8))) continue;
        if (!strcmp(pi->life, "死亡") || !strcmp(pi->life, "迁出")) continue;
        dsd_edit *e;
        if ((rc = dsd_edit_begin(d->h, "person", pi->id, &e))) break;
        if (!strcmp(pi->pay, "未缴费") || shared) rc = dsd_edit_set(e, "payment", year, "代缴");
        if (!rc && pi->review == 1) rc = dsd_edit_raise(e, "review", "街道已办结");
        const char *names[4] = {"date", "method", "result", "service"};
        const char *vals[4] = {date, "电话随访", "已完成", "工作站核查"};
        if (!rc) rc = dsd_edit_append(e, "visits", names, vals, 4);
        if (rc) dsd_edit_abort(e);
        else rc = dsd_edit_commit(e, NULL);
    }
out:
    if (rc) {
        d->err = rc;
        snprintf(d->errmsg, sizeof d->errmsg, "station: day %u: %s (%d): %s", day, dsd_strerror(rc),
                 rc, dsd_errmsg(d->h));
    }
    free(cs.c);
    free(pl.p);
}

static void dev_day(sim *S, simdev *d, void *arg)
{
    uint32_t day = *(uint32_t *)arg;
    if (d->err || d->revoked) return;
    if (d->idx < 0) station_day(S, d, day);
    else volunteer_day(S, d, day);
}

/* ---- the check ------------------------------------------------------------------------------ */

typedef struct cmpctx {
    store_txn *t;
    uint64_t local, mismatches, missing_on_server;
    char first[256];
} cmpctx;

static int compare_record(const char *kind, const char *id, const uint8_t *p, size_t n, void *arg)
{
    cmpctx *c = arg;
    crdt_record *r = NULL;
    crdt_buf b = {0};
    c->local++;
    int rc = store_get_record(c->t, kind, id, &r);
    if (rc == STORE_ENOTFOUND) {
        if (!c->missing_on_server++ && !c->first[0])
            snprintf(c->first, sizeof c->first, "%s/%s is on the device but not on the server", kind, id);
        return 0;
    }
    if (rc) return rc;
    rc = crdt_record_encode(r, &b);
    crdt_record_free(r);
    if (rc) return rc;
    if (b.n != n || memcmp(b.p, p, n)) {
        if (!c->mismatches++ && !c->first[0])
            snprintf(c->first, sizeof c->first, "%s/%s differs between device and server", kind, id);
    }
    crdt_buf_free(&b);
    return 0;
}

typedef struct cwalk {
    store_txn *t;
    uint64_t k;
} cwalk;

static int count_server_conflicts(const char *kind, const char *id, const uint8_t *p, size_t len,
                                  void *arg)
{
    cwalk *w = arg;
    crdt_record *r = NULL;
    (void)p, (void)len;
    if (store_get_record(w->t, kind, id, &r) == 0) {
        w->k += crdt_record_conflicts(r); /* distinct values, as staff see them */
        crdt_record_free(r);
    }
    return 0;
}

int sim_check(store *st, dsd *const *devs, size_t n, uint64_t skip_sseq, sim_result *r)
{
    store_txn *t = NULL;
    uint64_t last = 0;
    uint32_t maxdev = 0;
    uint64_t *count = NULL;
    dsd_status *ss = calloc(n ? n : 1, sizeof *ss);
    crdt_arena *a = crdt_arena_new(0);
    crdt_buf env = {0};
    int rc = ss && a ? 0 : DSD_ENOMEM;
    r->converged = false;
    r->why[0] = 0;
    r->deltas = r->conflicts = r->server_deltas = 0;
#define PROBLEM(...)                                                                              \
    do {                                                                                          \
        if (!r->why[0]) snprintf(r->why, sizeof r->why, __VA_ARGS__);                             \
    } while (0)
    for (size_t i = 0; !rc && i < n; i++) {
        if ((rc = dsd_status_get(devs[i], &ss[i]))) break;
        if (ss[i].dev > maxdev) maxdev = ss[i].dev;
        r->deltas += ss[i].seq;
        if (ss[i].outbox) PROBLEM("device %u still has %llu deltas in its outbox", ss[i].dev,
                                  (unsigned long long)ss[i].outbox);
        if (ss[i].rejected) PROBLEM("device %u has %llu rejected deltas", ss[i].dev,
                                    (unsigned long long)ss[i].rejected);
    }
    if (rc) goto out;
    /* 1. Chain heads. */
    if ((rc = store_begin(st, STORE_RDONLY, &t))) goto out;
    for (size_t i = 0; i < n; i++) {
        uint64_t head;
        uint8_t hh[CRDT_HASH_BYTES];
        if ((rc = store_chain_head(t, ss[i].dev, &head, hh))) goto out;
        if (head != ss[i].seq || memcmp(hh, ss[i].head, 32))
            PROBLEM("device %u: server chain head is seq %llu, device made %llu%s", ss[i].dev,
                    (unsigned long long)head, (unsigned long long)ss[i].seq,
                    head == ss[i].seq ? " (hashes differ)" : "");
    }
    /* 2. Every delta exactly once: count the log per device. */
    count = calloc((size_t)maxdev + 1, sizeof *count);
    if (!count || (rc = store_last_sseq(t, &last))) {
        rc = rc ? rc : DSD_ENOMEM;
        goto out;
    }
    for (uint64_t q = 1; q <= last; q++) {
        if (q == skip_sseq) continue; /* test hook: a server that lost this delta */
        const uint8_t *db, *sig;
        size_t dl;
        crdt_delta d;
        crdt_buf_reset(&env);
        crdt_arena_reset(a);
        if ((rc = store_get_envelope(t, q, &env))) {
            if (rc == STORE_ENOTFOUND) {
                rc = 0;
                continue;
            }
            goto out;
        }
        r->server_deltas++;
        if (wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig) ||
            crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, NULL)) {
            PROBLEM("server delta %llu does not decode", (unsigned long long)q);
            continue;
        }
        if (d.dev <= maxdev) count[d.dev]++;
    }
    for (size_t i = 0; i < n; i++)
        if (count[ss[i].dev] != ss[i].seq)
            PROBLEM("device %u made %llu deltas; the server log holds %llu of them", ss[i].dev,
                    (unsigned long long)ss[i].seq, (unsigned long long)count[ss[i].dev]);
    store_abort(t);
    t = NULL;
    /* 3. Views: each device's records equal the server's, and it holds all of its scope. */
    for (size_t i = 0; i < n; i++) {
        cmpctx c = {0};
        slist sc = {0};
        if ((rc = store_begin(st, STORE_RDONLY, &t))) goto out;
        c.t = t;
        if ((rc = dsd_record_foreach(devs[i], NULL, compare_record, &c))) goto out;
        if ((rc = dsd_scope_foreach(devs[i], collect_scope, &sc))) goto out;
        uint64_t expected = 0;
        for (size_t j = 0; j < sc.n; j++) {
            crdt_record *hr = NULL;
            store_ids mem = {0};
            if (store_get_record(t, "household", sc.id[j], &hr) == 0) {
                expected++;
                crdt_record_free(hr);
            }
            if ((rc = store_household_members(t, sc.id[j], &mem))) {
                free(sc.id);
                goto out;
            }
            expected += mem.n;
            store_ids_free(&mem);
        }
        free(sc.id);
        store_abort(t);
        t = NULL;
        if (c.first[0]) PROBLEM("device %u: %s (%llu differ, %llu unknown to the server)", ss[i].dev,
                                c.first, (unsigned long long)c.mismatches,
                                (unsigned long long)c.missing_on_server);
        if (c.local != expected)
            PROBLEM("device %u holds %llu records; its scope on the server has %llu", ss[i].dev,
                    (unsigned long long)c.local, (unsigned long long)expected);
    }
    /* 4. Conflicts on the server, among the records of the device that
     * holds the most (the station: every record). */
    if (n) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (ss[i].records > ss[best].records) best = i;
        cwalk w = {NULL, 0};
        if ((rc = store_begin(st, STORE_RDONLY, &t))) goto out;
        w.t = t;
        rc = dsd_record_foreach(devs[best], NULL, count_server_conflicts, &w);
        store_abort(t);
        t = NULL;
        if (rc) goto out;
        r->conflicts = w.k;
    }
    r->converged = r->why[0] == 0;
out:
    if (t) store_abort(t);
    free(ss);
    free(count);
    crdt_arena_free(a);
    crdt_buf_free(&env);
    if (rc && !r->why[0]) snprintf(r->why, sizeof r->why, "check failed: %s", store_strerror(rc));
    return rc;
#undef PROBLEM
}

/*
 * Revoked devices: nothing they made is lost.  Each one's outbox is empty
 * (handed in), and every seq it signed is either in the server's chain or
 * in quarantine (a soft revocation keeps later arrivals for review).  A
 * device revoked before it handed in its last edits (hard, or not synced
 * since) may still hold them: they are counted, not lost, and reported.
 */
int sim_check_revoked(store *st, dsd *const *devs, size_t n, sim_result *r)
{
    store_txn *t = NULL;
    uint64_t nq = 0;
    int rc = store_begin(st, STORE_RDONLY, &t);
    if (!rc) rc = store_quarantine_count(t, &nq);
    for (size_t i = 0; !rc && i < n; i++) {
        dsd_status s;
        uint64_t head, held = 0;
        uint8_t hh[CRDT_HASH_BYTES];
        if ((rc = dsd_status_get(devs[i], &s)) || (rc = store_chain_head(t, s.dev, &head, hh))) break;
        r->revoked++;
        /* Seqs above the chain head must each be in quarantine. */
        uint8_t *seen = s.seq > head ? calloc(s.seq - head, 1) : NULL;
        if (s.seq > head && !seen) {
            rc = DSD_ENOMEM;
            break;
        }
        for (uint64_t q = 1; !rc && q <= nq && s.seq > head; q++) {
            store_qentry e;
            if ((rc = store_quarantine_get(t, q, &e))) {
                if (rc == STORE_ENOTFOUND) rc = 0;
                continue;
            }
            if (e.dev == s.dev && e.seq > head && e.seq <= s.seq && !seen[e.seq - head - 1]) {
                seen[e.seq - head - 1] = 1;
                held++;
            }
            crdt_buf_free(&e.env);
        }
        free(seen);
        r->handed_in += held;
        if (!rc && head + held + s.outbox < s.seq && !r->why[0])
            snprintf(r->why, sizeof r->why,
                     "revoked device %u signed %llu deltas: the log holds %llu, quarantine %llu, "
                     "its outbox %llu",
                     s.dev, (unsigned long long)s.seq, (unsigned long long)head,
                     (unsigned long long)held, (unsigned long long)s.outbox);
    }
    if (t) store_abort(t);
    if (r->why[0]) r->converged = false;
    return rc;
}

/* ---- the run ----------------------------------------------------------------------------------- */

static int state_path(const sim_opts *o, char *out, size_t cap)
{
    return snprintf(out, cap, "%s/street.state", o->devices_dir) >= (int)cap ? -1 : 0;
}

int sim_run(store *st, const sim_opts *oin, sim_result *r)
{
    sim_opts o = *oin;
    sim S;
    char path[1024];
    int rc = 0;
    memset(r, 0, sizeof *r);
    memset(&S, 0, sizeof S);
    sim_opts_defaults(&o);
    size_t pl = o.prefix ? strlen(o.prefix) : 0;
    for (size_t i = 0; i < pl; i++)
        if (!isalnum((unsigned char)o.prefix[i])) pl = SIM_PREFIX_MAX + 1;
    if (pl > SIM_PREFIX_MAX) {
        snprintf(r->why, sizeof r->why, "--prefix: at most %d letters and digits", SIM_PREFIX_MAX);
        return DSD_EINVAL;
    }
    memcpy(id_prefix, o.prefix ? o.prefix : "", pl);
    id_prefix[pl] = 0;
    S.o = &o;
    S.st = st;
    S.year = store_campaign_year(st);
    S.s.H = o.households;
    S.s.C = o.communities;
    S.s.V = o.volunteers;
    if (!o.server || !o.schema || !o.devices_dir || S.s.V == 0 || S.s.H < S.s.V) {
        snprintf(r->why, sizeof r->why, "need --server, a schema, a devices directory and at least "
                                        "one household per volunteer");
        return DSD_EINVAL;
    }
    if (mkdir(o.devices_dir, 0700) && errno != EEXIST) {
        snprintf(r->why, sizeof r->why, "%s: %s", o.devices_dir, strerror(errno));
        return DSD_EIO;
    }
    /* Reuse a street built before with the same shape. */
    bool reuse = false;
    state_path(&o, path, sizeof path);
    FILE *sf = fopen(path, "r");
    if (sf) {
        unsigned h, v, c, d0;
        unsigned long long seed;
        if (fscanf(sf, "%u %u %u %llu %u", &h, &v, &c, &seed, &d0) == 5) {
            if (h != S.s.H || v != S.s.V || c != S.s.C) {
                fclose(sf);
                snprintf(r->why, sizeof r->why,
                         "%s holds a street of %u households and %u volunteers; use another "
                         "directory for a different shape", o.devices_dir, h, v);
                return DSD_EINVAL;
            }
            reuse = true;
            S.day0 = d0;
        }
        fclose(sf);
    }
    S.n = S.s.V + 1;
    S.devs = calloc(S.n, sizeof *S.devs);
    if (!S.devs) return DSD_ENOMEM;
    for (size_t i = 0; i < S.n; i++) {
        char name[32];
        S.devs[i].idx = (int)i - 1;
        S.devs[i].rng = o.seed * 1000003 + i * 7919 + S.day0 * 104729;
        if (i == 0) snprintf(name, sizeof name, "station");
        else snprintf(name, sizeof name, "v%03zu", i);
        if ((rc = dev_open(&S, &S.devs[i], name))) {
            snprintf(r->why, sizeof r->why, "%s", S.devs[i].errmsg);
            goto out;
        }
        S.devs[i].babies = (uint32_t)(S.devs[i].seq0 % 100000); /* fresh ids per run */
    }
    r->devices = S.n;
    LOG(&o, "street: %u communities, ~%u grids, %u households, %u volunteers + 1 station device%s",
        S.s.C, (S.s.H + HH_PER_GRID - 1) / HH_PER_GRID, S.s.H, S.s.V, reuse ? " (reused)" : "");
    double t0 = mono_s();
    if (!reuse || !S.devs[0].dev) {
        for_all(&S, dev_enroll, NULL);
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        LOG(&o, "enrolled %zu devices (%.1f s)", S.n, mono_s() - t0);
        if ((rc = station_scope_all(&S))) {
            snprintf(r->why, sizeof r->why, "assigning the station's scope: %s", store_strerror(rc));
            goto out;
        }
        dev_sync(&S, &S.devs[0], NULL); /* learn the new scope */
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        if ((rc = seed_street(&S))) {
            snprintf(r->why, sizeof r->why, "seeding: %s (%d): %s", dsd_strerror(rc), rc,
                     dsd_errmsg(S.devs[0].h));
            goto out;
        }
        dsd_status s0;
        dsd_status_get(S.devs[0].h, &s0);
        LOG(&o, "station device signed %llu seed deltas (%.1f s); pushing",
            (unsigned long long)s0.seq, mono_s() - t0);
        dev_sync(&S, &S.devs[0], NULL);
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        for_all(&S, dev_sync, NULL);
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        sf = fopen(path, "w");
        if (sf) {
            fprintf(sf, "%u %u %u %llu %u\n", S.s.H, S.s.V, S.s.C, (unsigned long long)o.seed, 0u);
            fclose(sf);
        }
        r->seed_s = mono_s() - t0;
        LOG(&o, "street loaded: every device pulled its households (%.1f s)", r->seed_s);
    } else {
        for_all(&S, dev_sync, NULL);
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
    }
    double t1 = mono_s();
    S.today = (int64_t)((now_ms() + SIM_TZ_OFFSET_MS) / 86400000ull);
    S.last_day = (int64_t)S.day0 + (int64_t)o.days - 1;
    for (uint32_t d = 0; d < o.days; d++) {
        uint32_t day = S.day0 + d;
        char date[11];
        visit_date(S.today, S.last_day, day, date);
        double td = mono_s();
        for_all(&S, dev_day, &day);
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        uint64_t made = 0;
        for (size_t i = 0; i < S.n; i++) {
            dsd_status s;
            if (!dsd_status_get(S.devs[i].h, &s)) made += s.outbox;
        }
        double te = mono_s();
        for_all(&S, dev_sync, NULL); /* the evening wave: push and pull */
        for_all(&S, dev_sync, NULL); /* and pick up what the others pushed */
        if ((rc = first_error(&S, r->why, sizeof r->why))) goto out;
        LOG(&o, "day %u (%s): %llu edits offline (%.1f s); evening sync of %zu devices: %.2f s", day + 1,
            date, (unsigned long long)made, te - td, S.n, mono_s() - te);
        sf = fopen(path, "w");
        if (sf) {
            fprintf(sf, "%u %u %u %llu %u\n", S.s.H, S.s.V, S.s.C, (unsigned long long)o.seed, day + 1);
            fclose(sf);
        }
    }
    r->days_s = mono_s() - t1;
    double t2 = mono_s();
    dsd **hs = calloc(S.n, sizeof *hs);
    if (!hs) {
        rc = DSD_ENOMEM;
        goto out;
    }
    /* Revoked phones pull nothing more, so their views are not compared;
     * what they made must be in the log or in quarantine (sim_check_revoked). */
    size_t nh = 0;
    for (size_t i = 0; i < S.n; i++)
        if (!S.devs[i].revoked) hs[nh++] = S.devs[i].h;
    rc = sim_check(st, hs, nh, o.test_skip_sseq, r);
    for (size_t i = 0, k = 0; !rc && i < S.n; i++)
        if (S.devs[i].revoked) hs[k++] = S.devs[i].h;
    if (!rc && nh < S.n) rc = sim_check_revoked(st, hs, S.n - nh, r);
    free(hs);
    r->converge_s = mono_s() - t2;
    for (size_t i = 0; i < S.n; i++) {
        dsd_status s;
        if (!dsd_status_get(S.devs[i].h, &s)) r->deltas_run += s.seq - S.devs[i].seq0;
    }
out:
    for (size_t i = 0; i < S.n; i++) dsd_close(S.devs[i].h);
    free(S.devs);
    return rc;
}
