/*
 * street.c — the store-level half of doorstep-bench: a synthetic street,
 * ingested through store_append_batch, then queried as station staff would.
 *
 * The street.  Households of 1–6 persons (mean ≈ 2.95), ~350 households per
 * grid and 10 grids per community (so 1 M persons ≈ 340 k households ≈ 970
 * grids ≈ 97 communities).  300 devices (one street's volunteers) each own a
 * contiguous slice of households.  Each device, in order:
 *   - per household: a household delta (community, grid, address, head,
 *     phone for 60 %), then one delta per person (name, id_number, gender,
 *     birth_date, household, relation, insurance_type, payment[2026], life
 *     status, phone for 70 %, 0–2 key-group tags for 20 %);
 *   - later: a visit to 25 % of households (household visit log), and a
 *     follow-up for 30 % of persons (a visit with a service, and for the
 *     unpaid a payment that supersedes the first one: mv set observing it).
 * ID numbers are valid GB 11643 numbers, unique per person.  Everything is
 * derived from (seed, device), so the data does not depend on the number of
 * threads that pre-sign it.
 *
 * Invariants: every envelope is encoded, signed (Ed25519, the device's key)
 * and chained (prev = hash of the device's previous delta) before the
 * ingest clock starts; the ingest feeds devices round-robin in pushes of 50
 * deltas (as phones syncing together would) and commits every `batch`
 * deltas with the store's durable defaults (fsync; not no_sync).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <lmdb.h>
#include <sodium.h>

#include "bench.h"
#include "store.h"
#include "wire.h"

#define NOW_MS 1790000000000ull        /* 2026-09-21, as the store tests use */
#define MAX_AHEAD_MS 86400000ull
#define N_DEVICES 300
#define HH_PER_GRID 350
#define GRIDS_PER_COMM 10
#define PUSH 50                        /* deltas per simulated phone push */
#define YEAR 2026

/* ---- the layout: household sizes, devices' slices --------------------------- */

typedef bench_gen layout;   /* first[h]: first person of household h; first[H] = persons */

static int layout_make(layout *l, uint64_t persons, uint64_t seed, unsigned n_dev,
                       uint64_t now_ms)
{
    /* 1..6 persons, percent weights 15 28 25 17 9 6. */
    static const unsigned cum[6] = {15, 43, 68, 85, 94, 100};
    uint64_t rng = seed ^ 0x1a7047ULL, cap = persons + 1, h = 0, p = 0;
    memset(l, 0, sizeof *l);
    l->first = malloc(cap * sizeof *l->first);
    if (!l->first) return -1;
    while (p < persons) {
        unsigned r = (unsigned)bench_below(&rng, 100), k = 0;
        while (r >= cum[k]) k++;
        uint64_t n = k + 1;
        if (p + n > persons) n = persons - p;
        l->first[h++] = (uint32_t)p;
        p += n;
    }
    l->first[h] = (uint32_t)persons;
    l->households = h;
    l->persons = persons;
    l->seed = seed;
    l->n_dev = n_dev;
    l->now_ms = now_ms;
    return 0;
}

static uint64_t grid_of(uint64_t h) { return h / HH_PER_GRID; }
static uint64_t comm_of(uint64_t h) { return grid_of(h) / GRIDS_PER_COMM; }
static void comm_code(uint64_t c, char out[16]) { snprintf(out, 16, "C%03u", (unsigned)(c + 1)); }
static void grid_code(uint64_t g, char out[24])
{
    snprintf(out, 24, "C%03u-G%02u", (unsigned)(g / GRIDS_PER_COMM + 1),
             (unsigned)(g % GRIDS_PER_COMM + 1));
}

/* ---- values ---------------------------------------------------------------------- */


/* Unique valid ID number for person p (< 25 M): birth date spread over
 * 1940..2008, a 3-digit sequence, then the region. */
static void idnum_of(uint64_t p, char out[19], char birth[11])
{
    int y;
    unsigned m, d;
    uint64_t day = p % 25000, rest = p / 25000;
    crdt_civil_from_days(-10957 + (int64_t)day, &y, &m, &d);   /* 1940-01-01 + day */
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%06u%04d%02u%02u%03u", (unsigned)(110101 + rest / 1000), y, m,
             d, (unsigned)(rest % 1000));
    memcpy(out, tmp, 17);
    out[17] = crdt_idnum_check_char(out);
    out[18] = 0;
    if (birth) {
        snprintf(tmp, sizeof tmp, "%04d-%02u-%02u", y, m, d);
        memcpy(birth, tmp, 10);
        birth[10] = 0;
    }
}

static void phone_of(uint64_t *rng, char out[12])
{
    snprintf(out, 12, "1%c%09u", (char)('3' + bench_below(rng, 7)),
             (unsigned)bench_below(rng, 1000000000));
}

static const char *const surnames[] = {
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡",
    "郭", "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹"};
static const char *const given[] = {
    "伟", "芳", "娜", "秀", "英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰",
    "娟", "涛", "明", "超", "兰", "霞", "平", "刚", "桂", "文", "华", "建", "国", "玉", "红",
    "春", "梅", "海", "燕", "志", "德", "福", "宝", "淑", "云"};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static void name_of(uint64_t *rng, char out[32])
{
    int two = bench_below(rng, 100) < 70;
    snprintf(out, 32, "%s%s%s", surnames[bench_below(rng, NELEM(surnames))],
             given[bench_below(rng, NELEM(given))],
             two ? given[bench_below(rng, NELEM(given))] : "");
}

static const char *const tag_names[] = {"特困", "低保", "低保边缘", "返贫致贫", "易返贫致贫",
                                         "灵活就业", "外出务工", "60岁以上无收入", "残疾",
                                         "新生儿", "在校学生"};
static const char *const relations[] = {"配偶", "子女", "父母", "子女", "孙子女", "祖父母",
                                        "兄弟姐妹", "其他"};

/* ---- ops of one delta ------------------------------------------------------------ */

#define MAX_OPS 16
typedef struct ops {
    crdt_op op[MAX_OPS];
    crdt_buf val[MAX_OPS], key[MAX_OPS];
    crdt_dot obs[MAX_OPS];
    uint32_t n;
    int err;
} ops;

static void ops_reset(ops *o)
{
    for (int i = 0; i < MAX_OPS; i++) {
        crdt_buf_reset(&o->val[i]);
        crdt_buf_reset(&o->key[i]);
    }
    memset(o->op, 0, sizeof o->op);
    o->n = 0;
}

static void ops_free(ops *o)
{
    for (int i = 0; i < MAX_OPS; i++) {
        crdt_buf_free(&o->val[i]);
        crdt_buf_free(&o->key[i]);
    }
}

static crdt_op *op_next(ops *o, int code, const char *field)
{
    if (o->n == MAX_OPS) {
        o->err = -1;
        o->n--;            /* overwrite the last one; the error stops the run */
    }
    crdt_op *op = &o->op[o->n++];
    memset(op, 0, sizeof *op);
    op->code = (uint8_t)code;
    op->field = field;
    op->field_len = (uint32_t)strlen(field);
    return op;
}

static void op_val_done(ops *o, crdt_op *op)
{
    crdt_buf *b = &o->val[op - o->op];
    op->val = (crdt_blob){b->p, (uint32_t)b->n};
}

static void set_str(ops *o, const char *field, const char *v)
{
    crdt_op *op = op_next(o, CRDT_OP_SET, field);
    if (crdt_val_put_str(&o->val[op - o->op], v, strlen(v))) o->err = -1;
    op_val_done(o, op);
}

/* payment[year] = v, superseding the entry of dot *obs if not NULL. */
static void set_payment(ops *o, const char *v, const crdt_dot *obs)
{
    crdt_op *op = op_next(o, CRDT_OP_SET, "payment");
    crdt_buf *k = &o->key[op - o->op];
    if (crdt_val_put_int(k, YEAR)) o->err = -1;
    op->key = (crdt_blob){k->p, (uint32_t)k->n};
    if (crdt_val_put_str(&o->val[op - o->op], v, strlen(v))) o->err = -1;
    op_val_done(o, op);
    if (obs) {
        o->obs[op - o->op] = *obs;
        op->obs = &o->obs[op - o->op];
        op->n_obs = 1;
    }
}

static void add_elem(ops *o, const char *field, const char *elem)
{
    crdt_op *op = op_next(o, CRDT_OP_ADD, field);
    if (crdt_val_put_str(&o->val[op - o->op], elem, strlen(elem))) o->err = -1;
    op_val_done(o, op);
}

static void add_int(ops *o, const char *field, int64_t elem)
{
    crdt_op *op = op_next(o, CRDT_OP_ADD, field);
    if (crdt_val_put_int(&o->val[op - o->op], elem)) o->err = -1;
    op_val_done(o, op);
}

/* A visit log entry: date, method, result, and optionally a service. */
static void add_visit(ops *o, const char *date, const char *method, const char *result,
                      const char *service)
{
    crdt_op *op = op_next(o, CRDT_OP_APP, "visits");
    const char *keys[4] = {"date", "method", "result", "service"};
    crdt_scalar v[4] = {
        {.t = CRDT_V_STR, .s = date, .len = (uint32_t)strlen(date)},
        {.t = CRDT_V_STR, .s = method, .len = (uint32_t)strlen(method)},
        {.t = CRDT_V_STR, .s = result, .len = (uint32_t)strlen(result)},
        {.t = CRDT_V_STR, .s = service ? service : "", .len = service ? (uint32_t)strlen(service) : 0}};
    if (crdt_val_put_map(&o->val[op - o->op], keys, v, service ? 4 : 3)) o->err = -1;
    op_val_done(o, op);
}

/* ---- a device and its envelopes ---------------------------------------------------- */

typedef bench_dev device;

static int dev_emit(device *d, const char *kind, const char *id, uint64_t h, ops *o,
                    crdt_buf *bytes)
{
    crdt_delta dl;
    uint8_t sig[64];
    crdt_hlc now;
    int rc;
    if (o->err) return -1;
    d->wall += 1000 + d->seq % 2000;   /* a record every one to three seconds */
    if ((rc = crdt_hlc_now(&d->clock, d->wall, &now))) return rc;
    memset(&dl, 0, sizeof dl);
    dl.dev = d->id;
    dl.epoch = 1;
    dl.seq = ++d->seq;
    memcpy(dl.prev, d->prev, CRDT_HASH_BYTES);
    dl.hlc = now;
    dl.kind = kind;
    dl.kind_len = (uint32_t)strlen(kind);
    dl.id = id;
    dl.id_len = (uint32_t)strlen(id);
    dl.ops = o->op;
    dl.n_ops = o->n;
    crdt_buf_reset(bytes);
    if ((rc = crdt_delta_encode(&dl, bytes))) return rc;
    if ((rc = wire_delta_sign(bytes->p, bytes->n, d->sk, sig))) return rc;
    if (d->n + 2 > d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 1024;
        size_t *no = realloc(d->off, nc * sizeof *no);
        if (!no) return CRDT_ENOMEM;
        d->off = no;
        uint32_t *nh = realloc(d->hh, nc * sizeof *nh);
        if (!nh) return CRDT_ENOMEM;
        d->hh = nh;
        d->cap = nc;
    }
    if (d->n == 0) d->off[0] = 0;
    if ((rc = wire_envelope_encode(bytes->p, bytes->n, sig, &d->envs))) return rc;
    d->hh[d->n] = (uint32_t)h;
    d->off[++d->n] = d->envs.n;
    return wire_delta_hash(bytes->p, bytes->n, d->prev);
}

/* The household of person p (within device d's slice). */
static uint64_t hh_of_person(const layout *l, const device *d, uint64_t p)
{
    uint64_t lo = d->h_lo, hi = d->h_hi;   /* first[lo] <= p < first[hi] */
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (l->first[mid] <= p) lo = mid;
        else hi = mid;
    }
    return lo;
}

static int dev_generate(const layout *l, device *d, crdt_buf *bytes)
{
    uint64_t rng = l->seed * 0x9e3779b97f4a7c15ULL + d->id;
    char id[24], hid[24], cc[16], gc[24], buf[256], idn[19], birth[11], phone[12], name[32];
    char today[11];
    int y, rc = 0;
    unsigned m, dd;
    ops o;
    uint64_t *pseq = NULL;    /* seq of each of the device's person-create deltas */
    memset(&o, 0, sizeof o);
    bench_dev_keypair(l->seed, d->id, d->pk, d->sk);
    d->wall = l->now_ms - 20ull * 86400000ull + d->id * 997ull;
    crdt_civil_from_days((int64_t)(l->now_ms / 86400000ull), &y, &m, &dd);
    snprintf(today, sizeof today, "%04d-%02u-%02u", y, m, dd);
    uint64_t p_lo = l->first[d->h_lo], p_hi = l->first[d->h_hi];
    pseq = calloc(p_hi - p_lo + 1, sizeof *pseq);
    if (!pseq) return -1;

    /* First visits: households, then their persons. */
    for (uint64_t h = d->h_lo; h < d->h_hi && !rc; h++) {
        snprintf(hid, sizeof hid, "H%07u", (unsigned)h);
        comm_code(comm_of(h), cc);
        grid_code(grid_of(h), gc);
        ops_reset(&o);
        set_str(&o, "community", cc);
        set_str(&o, "grid", gc);
        snprintf(buf, sizeof buf, "%s社区幸福路%u号%u单元%u室", cc,
                 (unsigned)(h % 300 + 1), (unsigned)bench_below(&rng, 6) + 1,
                 (unsigned)bench_below(&rng, 30) * 100 + 101);
        set_str(&o, "address", buf);
        snprintf(id, sizeof id, "P%07u", (unsigned)l->first[h]);
        set_str(&o, "head", id);
        if (bench_below(&rng, 100) < 60) {
            phone_of(&rng, phone);
            set_str(&o, "phone", phone);
        }
        if ((rc = dev_emit(d, "household", hid, h, &o, bytes))) break;
        for (uint64_t p = l->first[h]; p < l->first[h + 1]; p++) {
            uint64_t r = bench_below(&rng, 100);
            ops_reset(&o);
            snprintf(id, sizeof id, "P%07u", (unsigned)p);
            idnum_of(p, idn, birth);
            name_of(&rng, name);
            set_str(&o, "name", name);
            set_str(&o, "id_number", idn);
            set_str(&o, "gender", bench_below(&rng, 2) ? "男" : "女");
            set_str(&o, "birth_date", birth);
            set_str(&o, "household", hid);
            set_str(&o, "relation", p == l->first[h] ? "户主"
                                    : relations[bench_below(&rng, NELEM(relations))]);
            const char *ins, *pay;
            if (r < 72) { ins = "城乡居民"; pay = r < 50 ? "已缴费" : r < 55 ? "代缴"
                                                : r < 62 ? "资助参保" : "未缴费"; }
            else if (r < 90) { ins = "职工"; pay = "无需缴费"; }
            else if (r < 96) { ins = "异地参保"; pay = "无需缴费"; }
            else { ins = "未参保"; pay = "未缴费"; }
            set_str(&o, "insurance_type", ins);
            set_payment(&o, pay, NULL);
            set_str(&o, "life_status", "正常");
            if (bench_below(&rng, 100) < 70) {
                phone_of(&rng, phone);
                set_str(&o, "phone", phone);
            }
            if (bench_below(&rng, 100) < 20) {
                unsigned nt = 1 + (unsigned)bench_below(&rng, 2);
                unsigned t0 = (unsigned)bench_below(&rng, NELEM(tag_names));
                for (unsigned k = 0; k < nt; k++)
                    add_elem(&o, "tags", tag_names[(t0 + k * 3) % NELEM(tag_names)]);
            }
            if ((rc = dev_emit(d, "person", id, h, &o, bytes))) break;
            pseq[p - p_lo] = !strcmp(pay, "未缴费") ? d->seq : 0;
        }
    }
    /* Later: visits to a quarter of the households, follow-ups for 30 % of
     * persons (the unpaid among them pay, superseding the first entry). */
    static const char *const methods[] = {"上门走访", "电话随访", "微信联系", "代办事项"};
    for (uint64_t h = d->h_lo; h < d->h_hi && !rc; h++) {
        if (bench_below(&rng, 100) >= 25) continue;
        snprintf(hid, sizeof hid, "H%07u", (unsigned)h);
        ops_reset(&o);
        add_visit(&o, today, methods[bench_below(&rng, 2)],
                  bench_below(&rng, 100) < 80 ? "已完成" : "无人在家", NULL);
        rc = dev_emit(d, "household", hid, h, &o, bytes);
    }
    for (uint64_t p = p_lo; p < p_hi && !rc; p++) {
        if (bench_below(&rng, 100) >= 30) continue;
        snprintf(id, sizeof id, "P%07u", (unsigned)p);
        ops_reset(&o);
        if (pseq[p - p_lo]) {
            crdt_dot obs = {d->id, pseq[p - p_lo]};
            set_payment(&o, "已缴费", &obs);
            add_int(&o, "paid_years", YEAR);
            add_visit(&o, today, "代办事项", "已完成", "代缴");
        } else {
            add_visit(&o, today, methods[bench_below(&rng, NELEM(methods))], "已完成",
                      bench_below(&rng, 100) < 30 ? "信息变更" : NULL);
        }
        rc = dev_emit(d, "person", id, hh_of_person(l, d, p), &o, bytes);
    }
    ops_free(&o);
    free(pseq);
    sodium_memzero(d->sk, sizeof d->sk);
    return rc;
}

typedef struct worker {
    pthread_t th;
    const layout *l;
    device *dev;
    atomic_uint *next;
    atomic_ullong *done;
    atomic_int *exited;
    int rc;
} worker;

static void *gen_thread(void *arg)
{
    worker *w = arg;
    crdt_buf bytes = {0};
    for (;;) {
        unsigned i = atomic_fetch_add(w->next, 1);
        if (i >= w->l->n_dev) break;
        int rc = dev_generate(w->l, &w->dev[i], &bytes);
        if (rc) {
            fprintf(stderr, "doorstep-bench: device %u: generating deltas failed: %s\n", i + 1,
                    rc == -1 ? "bad op" : store_strerror(rc));
            w->rc = -1;
            break;
        }
        atomic_fetch_add(w->done, w->dev[i].n);
    }
    crdt_buf_free(&bytes);
    atomic_fetch_add(w->exited, 1);
    return NULL;
}

/* Pre-sign everything on all cores. */
static int generate(const layout *l, device *dev)
{
    int nt = bench_cores(), rc = 0;
    worker *w = calloc((size_t)nt, sizeof *w);
    atomic_uint next = 0;
    atomic_ullong done = 0;
    atomic_int exited = 0;
    if (!w) return -1;
    unsigned nd = l->n_dev;
    for (unsigned i = 0; i < nd; i++) {
        dev[i].id = i + 1;
        dev[i].h_lo = l->households * i / nd;
        dev[i].h_hi = l->households * (i + 1) / nd;
    }
    int started = 0;
    for (int i = 0; i < nt; i++) {
        w[i].l = l;
        w[i].dev = dev;
        w[i].next = &next;
        w[i].done = &done;
        w[i].exited = &exited;
        if (pthread_create(&w[i].th, NULL, gen_thread, &w[i])) break;
        started++;
    }
    if (!started) {
        free(w);
        return -1;
    }
    double last = bench_now();
    for (;;) {
        struct timespec ts = {0, 200000000};
        nanosleep(&ts, NULL);
        if (atomic_load(&exited) == started) break;
        if (bench_now() - last >= 5) {
            bench_progress("street: %llu deltas signed (%u of %d devices started)",
                           (unsigned long long)atomic_load(&done),
                           atomic_load(&next) > nd ? nd : atomic_load(&next), nd);
            last = bench_now();
        }
    }
    for (int i = 0; i < started; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].rc) rc = -1;
    }
    free(w);
    return rc;
}

/* ---- measuring -------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double q)
{
    size_t i = (size_t)(q * (double)n + 0.999999);
    if (i < 1) i = 1;
    if (i > n) i = n;
    return v[i - 1];
}

static int ingest(store *s, device *dev, uint64_t total, size_t batch, bench_street *out)
{
    const uint8_t **envs = malloc(total * sizeof *envs);
    size_t *lens = malloc(total * sizeof *lens);
    store_outcome *outs = malloc(batch * sizeof *outs);
    uint64_t k = 0;
    int rc = 0, shown = 0;
    if (!envs || !lens || !outs) {
        rc = -1;
        goto done;
    }
    /* Round-robin over devices, a push of PUSH deltas each. */
    for (bool more = true; more;) {
        more = false;
        for (unsigned i = 0; i < N_DEVICES; i++) {
            device *d = &dev[i];
            for (unsigned j = 0; j < PUSH && d->fed < d->n; j++, d->fed++, k++) {
                envs[k] = d->envs.p + d->off[d->fed];
                lens[k] = d->off[d->fed + 1] - d->off[d->fed];
            }
            if (d->fed < d->n) more = true;
        }
    }
    for (uint64_t i = 0; i < total; i++) out->env_bytes_mean += (double)lens[i];
    out->env_bytes_mean /= total ? (double)total : 1;
    bench_progress("ingest: %llu deltas in durable group commits of %zu",
                   (unsigned long long)total, batch);
    double t0 = bench_now(), last = t0;
    for (uint64_t i = 0; i < total; i += batch) {
        size_t n = total - i < batch ? (size_t)(total - i) : batch;
        int e = store_append_batch(s, envs + i, lens + i, n, NOW_MS, MAX_AHEAD_MS, outs);
        if (e) {
            fprintf(stderr, "doorstep-bench: store_append_batch: %s\n", store_strerror(e));
            rc = -1;
            goto done;
        }
        for (size_t j = 0; j < n; j++) {
            if (outs[j].result == STORE_APPLIED) {
                out->applied++;
                continue;
            }
            out->rejected++;
            if (shown++ < 5)
                fprintf(stderr, "doorstep-bench: delta %llu: result %d, code %d (%s)\n",
                        (unsigned long long)(i + j), outs[j].result, outs[j].code,
                        outs[j].result == STORE_QUARANTINED ? store_qreason_name(outs[j].code)
                                                            : store_strerror(outs[j].code));
        }
        double t = bench_now();
        if (t - last >= 5) {
            bench_progress("ingest: %llu / %llu (%.0f deltas/s so far)",
                           (unsigned long long)(i + n), (unsigned long long)total,
                           (double)(i + n) / (t - t0));
            last = t;
        }
    }
    out->ingest_s = bench_now() - t0;
    out->ingest_per_s = (double)total / out->ingest_s;
done:
    free(envs);
    free(lens);
    free(outs);
    return rc;
}

/*
 * The verify worker's cost per delta (sync/jobs.c, sync_job_verify), on one
 * thread, over WORKER_SAMPLE envelopes taken round robin from the devices
 * in pushes of PUSH (the job's arena is reset per push, as per job):
 *   non-crypto: envelope and delta decode, schema check, chain hash;
 *   crypto:     the Ed25519 check of the delta signature (wire_delta_verify).
 * Per-job costs (one read transaction, the scope and the key lookups) are
 * left out: they are paid once per push of up to 500.  Best of 3 passes.
 */
#define WORKER_SAMPLE 20000
static int worker_cost(store *s, device *dev, bench_street *out)
{
    crdt_arena *a = crdt_arena_new(0);
    if (!a) return -1;
    size_t n = 0;
    const uint8_t **env = malloc(WORKER_SAMPLE * sizeof *env);
    size_t *len = malloc(WORKER_SAMPLE * sizeof *len);
    const device **who = malloc(WORKER_SAMPLE * sizeof *who);
    int rc = -1;
    if (!env || !len || !who) goto done;
    for (size_t k = 0; n < WORKER_SAMPLE; k += PUSH) {
        bool any = false;
        for (unsigned i = 0; i < N_DEVICES && n < WORKER_SAMPLE; i++)
            for (size_t j = k; j < k + PUSH && j < dev[i].n && n < WORKER_SAMPLE; j++) {
                env[n] = dev[i].envs.p + dev[i].off[j];
                len[n] = dev[i].off[j + 1] - dev[i].off[j];
                who[n++] = &dev[i];
                any = true;
            }
        if (!any) break;
    }
    bench_progress("worker: decode, schema, hash, then Ed25519, %zu deltas, one thread",
                   n);
    double best_plain = 0, best_sig = 0;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = bench_now();
        for (size_t i = 0; i < n; i++) {
            const uint8_t *db, *sig;
            size_t dl;
            int err_op;
            crdt_delta d;
            uint8_t h[CRDT_HASH_BYTES];
            if (i % PUSH == 0) crdt_arena_reset(a);
            if (wire_envelope_decode(env[i], len[i], &crdt_limits_default, &db, &dl, &sig) ||
                crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op) ||
                crdt_schema_check_delta(store_schema(s), &d, &err_op))
                goto done;
            wire_delta_hash(db, dl, h);
        }
        double t1 = bench_now();
        for (size_t i = 0; i < n; i++) {
            const uint8_t *db, *sig;
            size_t dl;
            if (wire_envelope_decode(env[i], len[i], &crdt_limits_default, &db, &dl, &sig) ||
                wire_delta_verify(db, dl, sig, who[i]->pk))
                goto done;
        }
        double t2 = bench_now();
        double plain = (t1 - t0) * 1e6 / (double)n, sigt = (t2 - t1) * 1e6 / (double)n;
        if (!pass || plain < best_plain) best_plain = plain;
        if (!pass || sigt < best_sig) best_sig = sigt;
    }
    out->worker_noncrypto_us = best_plain;
    out->worker_verify_us = best_sig;
    out->worker_sample = n;
    rc = 0;
done:
    if (rc) fprintf(stderr, "doorstep-bench: worker: an envelope of the street does not check\n");
    free(env);
    free(len);
    free(who);
    crdt_arena_free(a);
    return rc;
}

static int lookups(store *s, const layout *l, size_t n, uint64_t seed, bench_street *out)
{
    double *ms = malloc(n * sizeof *ms);
    uint64_t rng = seed ^ 0x100c0bULL;
    char idn[19], want[24];
    int rc = 0;
    if (!ms) return -1;
    bench_progress("lookups: %zu random ID numbers, one read transaction each", n);
    for (size_t i = 0; i < n; i++) {
        uint64_t p = bench_below(&rng, l->persons);
        store_txn *t;
        store_ids ids;
        idnum_of(p, idn, NULL);
        snprintf(want, sizeof want, "P%07u", (unsigned)p);
        double t0 = bench_now();
        int e = store_begin(s, STORE_RDONLY, &t);
        if (!e) {
            e = store_lookup(t, STORE_LOOKUP_IDNUM, idn, 18, &ids);
            store_abort(t);
        }
        ms[i] = (bench_now() - t0) * 1e3;
        if (e) {
            fprintf(stderr, "doorstep-bench: store_lookup: %s\n", store_strerror(e));
            rc = -1;
            break;
        }
        if (ids.n != 1 || strcmp(ids.id[0], want)) out->lookup_misses++;
        store_ids_free(&ids);
    }
    if (!rc) {
        qsort(ms, n, sizeof *ms, cmp_double);
        out->lookups = n;
        out->lookup_p50_ms = pct(ms, n, 0.50);
        out->lookup_p99_ms = pct(ms, n, 0.99);
        out->lookup_p999_ms = pct(ms, n, 0.999);
        out->lookup_max_ms = ms[n - 1];
    }
    free(ms);
    return rc;
}

static int reports(store *s, const layout *l, int runs, bench_street *out)
{
    uint64_t ngrids = grid_of(l->households - 1) + 1;
    uint64_t ncomms = comm_of(l->households - 1) + 1;
    double *ms = malloc((size_t)runs * sizeof *ms);
    int rc = 0;
    if (!ms) return -1;
    out->grids = ngrids;
    out->communities = ncomms;
    out->report_queries = ngrids + ncomms + 1;
    bench_progress("reports: %d station reports of %llu grids + %llu communities + total",
                   runs, (unsigned long long)ngrids, (unsigned long long)ncomms);
    for (int r = 0; r < runs && !rc; r++) {
        store_txn *t = NULL;
        store_agg a, total;
        char cc[16], gc[24];
        int64_t sum = 0;
        double t0 = bench_now();
        int e = store_begin(s, STORE_RDONLY, &t);
        for (uint64_t g = 0; g < ngrids && !e; g++) {
            comm_code(g / GRIDS_PER_COMM, cc);
            grid_code(g, gc);
            e = store_agg_get(t, cc, gc, NOW_MS, &a);
            sum += a.persons;
        }
        for (uint64_t c = 0; c < ncomms && !e; c++) {
            comm_code(c, cc);
            e = store_agg_get(t, cc, NULL, NOW_MS, &a);
        }
        if (!e) e = store_agg_get(t, NULL, NULL, NOW_MS, &total);
        if (t) store_abort(t);
        ms[r] = (bench_now() - t0) * 1e3;
        if (e) {
            fprintf(stderr, "doorstep-bench: store_agg_get: %s\n", store_strerror(e));
            rc = -1;
            break;
        }
        out->report_persons = total.persons;
        if (sum != total.persons)
            fprintf(stderr, "doorstep-bench: warning: grids sum to %lld persons, station %lld\n",
                    (long long)sum, (long long)total.persons);
    }
    if (!rc) {
        qsort(ms, (size_t)runs, sizeof *ms, cmp_double);
        out->report_runs = runs;
        out->report_ms = ms[runs / 2];
        out->report_min_ms = ms[0];
        out->report_max_ms = ms[runs - 1];
    }
    free(ms);
    return rc;
}

/* Used pages of the closed store's environment, per named database too. */
static int disk_usage(const char *data, bench_street *out)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_cursor *c = NULL;
    MDB_envinfo info;
    MDB_stat st;
    MDB_dbi main_dbi;
    MDB_val k, v;
    char path[700];
    struct stat fst;
    int rc;
    snprintf(path, sizeof path, "%s/data.mdb", data);
    if (stat(path, &fst) == 0) out->file_bytes = (uint64_t)fst.st_size;
    out->disk_dbs = json_object();
    if ((rc = mdb_env_create(&env))) goto fail;
    if ((rc = mdb_env_set_maxdbs(env, 64))) goto fail;
    if ((rc = mdb_env_open(env, data, MDB_RDONLY, 0600))) goto fail;
    if ((rc = mdb_env_info(env, &info)) || (rc = mdb_env_stat(env, &st))) goto fail;
    out->page_size = st.ms_psize;
    out->used_pages = (uint64_t)info.me_last_pgno + 1;
    if ((rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))) goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi))) goto fail;
    if ((rc = mdb_cursor_open(txn, main_dbi, &c))) goto fail;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        char name[128];
        MDB_dbi dbi;
        if (k.mv_size == 0 || k.mv_size >= sizeof name) continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = 0;
        if (mdb_dbi_open(txn, name, 0, &dbi) || mdb_stat(txn, dbi, &st)) continue;
        uint64_t pages = st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
        /* What the entries themselves hold, to tell the bytes of the values
         * from the room LMDB leaves in half-split pages. */
        uint64_t kb = 0, vb = 0;
        MDB_cursor *dc = NULL;
        MDB_val dk, dv;
        if ((rc = mdb_cursor_open(txn, dbi, &dc))) goto fail;
        for (rc = mdb_cursor_get(dc, &dk, &dv, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(dc, &dk, &dv, MDB_NEXT)) {
            kb += dk.mv_size;
            vb += dv.mv_size;
        }
        mdb_cursor_close(dc);
        if (rc != MDB_NOTFOUND) goto fail;
        /* Leaf fill: entry bytes with LMDB's 8-byte node header and 2-byte
         * slot, over the leaf pages' room (page size less the 16-byte header).
         * Not defined (null) where values live on overflow pages: the leaf
         * holds only their page number then. */
        double room = (double)st.ms_leaf_pages * (double)(out->page_size - 16);
        json_t *fill = st.ms_overflow_pages || room <= 0
                           ? json_null()
                           : json_real((double)(kb + vb + 10 * st.ms_entries) / room);
        json_object_set_new(out->disk_dbs, name,
                            json_pack("{sI sI sI sI so}", "bytes",
                                      (json_int_t)(pages * out->page_size), "entries",
                                      (json_int_t)st.ms_entries, "key_bytes", (json_int_t)kb,
                                      "value_bytes", (json_int_t)vb, "leaf_fill", fill));
    }
    if (rc != MDB_NOTFOUND) goto fail;
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return 0;
fail:
    fprintf(stderr, "doorstep-bench: reading %s: %s\n", path, mdb_strerror(rc));
    if (c) mdb_cursor_close(c);
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
    return -1;
}

int bench_street_run(const bench_street_opts *o, bench_street *out)
{
    layout l;
    device *dev = NULL;
    store *s = NULL;
    char data[600], key[600], err[512] = "";
    int rc = -1;
    memset(out, 0, sizeof *out);
    snprintf(data, sizeof data, "%s/data", o->dir);
    snprintf(key, sizeof key, "%s/data.key", o->dir);
    if (o->persons < 1 || o->persons > 20000000) {
        fprintf(stderr, "doorstep-bench: --persons must be 1..20000000\n");
        return -1;
    }
    if (layout_make(&l, o->persons, o->seed, N_DEVICES, NOW_MS)) {
        fprintf(stderr, "doorstep-bench: out of memory\n");
        return -1;
    }
    dev = calloc(N_DEVICES, sizeof *dev);
    if (!dev) goto done;
    out->persons = l.persons;
    out->households = l.households;
    out->devices = N_DEVICES;

    bench_progress("street: %llu persons in %llu households, %d devices; pre-signing on %d "
                   "cores", (unsigned long long)l.persons, (unsigned long long)l.households,
                   N_DEVICES, bench_cores());
    double t0 = bench_now();
    if (generate(&l, dev)) goto done;
    out->gen_s = bench_now() - t0;
    for (unsigned i = 0; i < N_DEVICES; i++) out->deltas += dev[i].n;
    bench_progress("street: %llu deltas signed in %.1f s",
                   (unsigned long long)out->deltas, out->gen_s);

    int e = store_init(data, key, o->schema_path, YEAR, err, sizeof err);
    if (e) {
        fprintf(stderr, "doorstep-bench: store_init: %s (%s)\n", err, store_strerror(e));
        goto done;
    }
    store_opts so;
    memset(&so, 0, sizeof so);
    so.map_initial = (size_t)1 << 30;   /* grows by doubling, as in production */
    so.no_sync = false;                 /* durable commits */
    if ((e = store_open(data, key, &so, &s, err, sizeof err))) {
        fprintf(stderr, "doorstep-bench: store_open: %s (%s)\n", err, store_strerror(e));
        goto done;
    }
    if (ingest(s, dev, out->deltas, o->batch, out)) goto done;
    if (worker_cost(s, dev, out)) goto done;
    /* The envelopes are no longer needed: give the memory back before querying. */
    for (unsigned i = 0; i < N_DEVICES; i++) {
        crdt_buf_free(&dev[i].envs);
        free(dev[i].off);
        free(dev[i].hh);
        dev[i].off = NULL;
        dev[i].hh = NULL;
    }
    if (out->rejected)
        fprintf(stderr, "doorstep-bench: warning: %llu deltas were not applied\n",
                (unsigned long long)out->rejected);
    if (lookups(s, &l, o->lookups, o->seed, out)) goto done;
    if (out->lookup_misses)
        fprintf(stderr, "doorstep-bench: warning: %llu lookups did not find exactly their "
                "person\n", (unsigned long long)out->lookup_misses);
    if (reports(s, &l, o->report_runs, out)) goto done;
    if (out->report_persons != (int64_t)l.persons)
        fprintf(stderr, "doorstep-bench: warning: station report counts %lld persons, "
                "%llu were stored\n", (long long)out->report_persons,
                (unsigned long long)l.persons);
    store_close(s);
    s = NULL;
    if (disk_usage(data, out)) goto done;
    out->disk_bytes_per_delta = out->applied
        ? (double)(out->used_pages * out->page_size) / (double)out->applied : 0;
    rc = 0;
done:
    if (s) store_close(s);
    if (dev)
        for (unsigned i = 0; i < N_DEVICES; i++) {
            crdt_buf_free(&dev[i].envs);
            free(dev[i].off);
            free(dev[i].hh);
        }
    free(dev);
    free(l.first);
    return rc;
}

/* ---- the generator as the network sections use it ----------------------------- */

void bench_dev_keypair(uint64_t seed, uint32_t id, uint8_t pk[32], uint8_t sk[64])
{
    uint8_t s32[32] = {0};
    for (int i = 0; i < 8; i++) s32[i] = (uint8_t)(seed >> (8 * i));
    memcpy(s32 + 8, &id, sizeof id);
    crypto_sign_seed_keypair(pk, sk, s32);
    sodium_memzero(s32, sizeof s32);
}

void bench_hh_id(uint64_t h, char out[24]) { snprintf(out, 24, "H%07u", (unsigned)h); }

int bench_gen_make(bench_gen *g, uint64_t persons, unsigned n_dev, uint64_t seed,
                   uint64_t now_ms)
{
    if (persons < 1 || persons > 20000000 || n_dev < 1) return -1;
    if (layout_make(g, persons, seed, n_dev, now_ms)) {
        fprintf(stderr, "doorstep-bench: out of memory\n");
        return -1;
    }
    if (g->households < n_dev) {
        fprintf(stderr, "doorstep-bench: %llu households for %u devices: too few\n",
                (unsigned long long)g->households, n_dev);
        bench_gen_free(g);
        return -1;
    }
    g->dev = calloc(n_dev, sizeof *g->dev);
    if (!g->dev) {
        bench_gen_free(g);
        return -1;
    }
    double t0 = bench_now();
    if (generate(g, g->dev)) {
        bench_gen_free(g);
        return -1;
    }
    g->gen_s = bench_now() - t0;
    g->deltas = 0;
    for (unsigned i = 0; i < n_dev; i++) g->deltas += g->dev[i].n;
    return 0;
}

void bench_gen_free(bench_gen *g)
{
    if (g->dev)
        for (unsigned i = 0; i < g->n_dev; i++) {
            crdt_buf_free(&g->dev[i].envs);
            free(g->dev[i].off);
            free(g->dev[i].hh);
        }
    free(g->dev);
    free(g->first);
    memset(g, 0, sizeof *g);
}
