/*
 * test_converge.c — property tests: replicas converge to byte-identical
 * canonical records whatever the delivery order, and merge is a semilattice.
 *
 * A history: D devices (5..8) edit one record offline, each from its own
 * replica, with every op type (lww/mv writes that observe what the device
 * sees, set adds and removes of seen and unseen elements, log appends,
 * counter increments, stage raises and regressions, tombstones), skewed
 * clocks, and occasional device-to-device exchanges that create causal
 * chains.  Every delta goes through crdt_delta_encode -> crdt_delta_decode ->
 * crdt_schema_check_delta before it is applied anywhere.
 *
 * Then R >= 5 fresh replicas receive all deltas in random orders, with
 * duplicates and with some deltas dropped and redelivered at the end, and a
 * record encode/decode round trip in the middle.  All must end with the same
 * bytes, equal to the merge of the devices' own replicas.
 *
 * Seeded: the seed is printed; DOORSTEP_SEED=N replays it; DOORSTEP_LONG=1
 * runs 20x more histories.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "crdt.h"
#include "testutil.h"

#define MAX_DEV 8
#define MAX_DELTAS 256

typedef struct history {
    crdt_buf bytes[MAX_DELTAS];  /* encoded deltas */
    uint32_t n;
} history;

typedef struct device {
    uint32_t id;
    uint64_t seq;
    crdt_hlc clock;
    int64_t skew;                 /* ms added to the global wall clock */
    crdt_record *rec;
    bool known[MAX_DELTAS];       /* which deltas this device has applied */
} device;

static crdt_schema *schema;
static uint64_t conflicts_seen, tomb_seen, regress_seen, unseen_rem_seen;

static crdt_record *new_rec(void) { return crdt_record_new("t", 1, "r1", 2); }

static void encode_rec(const crdt_record *r, crdt_buf *out)
{
    crdt_buf_reset(out);
    assert_int_equal(crdt_record_encode(r, out), 0);
}

/* Decode, schema-check and apply delta bytes to r. */
static void apply_bytes(crdt_record *r, const crdt_buf *b)
{
    crdt_arena *a = crdt_arena_new(0);
    crdt_delta d;
    int err_op;
    assert_non_null(a);
    assert_int_equal(crdt_delta_decode(b->p, b->n, &crdt_limits_default, a, &d, &err_op), 0);
    assert_int_equal(crdt_schema_check_delta(schema, &d, &err_op), 0);
    assert_int_equal(crdt_record_apply(r, schema, &d), 0);
    assert_true(crdt_record_invariant_ok(r));
    crdt_arena_free(a);
}

/* ---- generating ops from a device's view ---------------------------------- */

typedef struct opbuf {
    crdt_op ops[4];
    crdt_buf vals[4], keys[4];
    crdt_dot obs[4][64];
    uint32_t n;
} opbuf;

static const char *const words[] = {"张三", "李四", "王五", "赵六", "a", "b", "c"};
static const char *const tagpool[] = {"特困", "低保", "返贫致贫", "灵活就业", "x"};
static const char *const stages[] = {"a", "b", "c"};
static const char *const pays[] = {"unpaid", "paid", "proxy"};

static bool op_touches(const opbuf *ob, const char *field, const crdt_buf *key,
                       const crdt_buf *elem)
{
    for (uint32_t i = 0; i < ob->n; i++) {
        const crdt_op *o = &ob->ops[i];
        if (!o->field || strcmp(o->field, field)) continue;
        if (key && (o->key.n != key->n || memcmp(o->key.p, key->p, key->n))) continue;
        if (!key && o->key.n) continue;
        if (elem && (o->code == CRDT_OP_ADD || o->code == CRDT_OP_REM) &&
            (o->val.n != elem->n || memcmp(o->val.p, elem->p, elem->n)))
            continue;
        return true;
    }
    return false;
}

static void gen_op(tu_rng *rng, const device *dv, opbuf *ob)
{
    uint32_t i = ob->n;
    crdt_op *o = &ob->ops[i];
    crdt_buf *v = &ob->vals[i], *k = &ob->keys[i];
    memset(o, 0, sizeof(*o));
    crdt_buf_reset(v);
    crdt_buf_reset(k);
    switch (tu_below(rng, 9)) {
    case 0: { /* lww */
        if (op_touches(ob, "lw", NULL, NULL)) return;
        const char *w = words[tu_below(rng, 7)];
        crdt_val_put_str(v, w, strlen(w));
        *o = (crdt_op){.code = CRDT_OP_SET, .field = "lw", .field_len = 2};
        break;
    }
    case 1:
    case 2: { /* mv, unkeyed or keyed; observe what this device sees */
        bool keyed = tu_below(rng, 2);
        const char *fname = keyed ? "pay" : "mv";
        if (keyed) crdt_val_put_int(k, 2024 + (int64_t)tu_below(rng, 2));
        if (op_touches(ob, fname, keyed ? k : NULL, NULL)) return;
        if (keyed) {
            const char *p = pays[tu_below(rng, 3)];
            crdt_val_put_str(v, p, strlen(p));
        } else {
            const char *w = words[tu_below(rng, 7)];
            crdt_val_put_str(v, w, strlen(w));
        }
        *o = (crdt_op){.code = CRDT_OP_SET, .field = fname, .field_len = (uint32_t)strlen(fname)};
        if (keyed) o->key = (crdt_blob){k->p, (uint32_t)k->n};
        const crdt_field *f = crdt_record_field(dv->rec, fname,
                                                keyed ? (crdt_blob){k->p, (uint32_t)k->n}
                                                      : (crdt_blob){NULL, 0});
        uint32_t no = 0;
        if (f && tu_below(rng, 8) != 0) /* sometimes write blind: a conflict */
            for (uint32_t j = 0; j < f->n && no < 64; j++) ob->obs[i][no++] = f->e[j].st.dot;
        o->obs = ob->obs[i];
        o->n_obs = no;
        break;
    }
    case 3: { /* set add */
        const char *t = tagpool[tu_below(rng, 5)];
        crdt_val_put_str(v, t, strlen(t));
        if (op_touches(ob, "tags", NULL, v)) return;
        *o = (crdt_op){.code = CRDT_OP_ADD, .field = "tags", .field_len = 4};
        break;
    }
    case 4: { /* set remove: of a seen element (its add dots), or unseen */
        const char *t = tagpool[tu_below(rng, 5)];
        crdt_val_put_str(v, t, strlen(t));
        if (op_touches(ob, "tags", NULL, v)) return;
        *o = (crdt_op){.code = CRDT_OP_REM, .field = "tags", .field_len = 4};
        const crdt_field *f = crdt_record_field(dv->rec, "tags", (crdt_blob){NULL, 0});
        uint32_t no = 0;
        if (f)
            for (uint32_t j = 0; j < f->n && no < 64; j++)
                if (f->e[j].v.n == v->n && !memcmp(f->e[j].v.p, v->p, v->n))
                    ob->obs[i][no++] = f->e[j].st.dot;
        /* obs must be sorted by dot; set entries of one element are. */
        if (no == 0) unseen_rem_seen++;
        o->obs = ob->obs[i];
        o->n_obs = no;
        break;
    }
    case 5: { /* log append */
        if (op_touches(ob, "visits", NULL, NULL)) return;
        const char *keys[2] = {"d", "n"};
        char date[16];
        snprintf(date, sizeof date, "2026-%02u-%02u", (unsigned)(1 + tu_below(rng, 12)) % 100,
                 (unsigned)(1 + tu_below(rng, 28)) % 100);
        crdt_scalar vals[2] = {
            {.t = CRDT_V_STR, .s = date, .len = 10},
            {.t = CRDT_V_STR, .s = words[tu_below(rng, 7)]},
        };
        vals[1].len = (uint32_t)strlen(vals[1].s);
        assert_int_equal(crdt_val_put_map(v, keys, vals, 1 + (uint32_t)tu_below(rng, 2)), 0);
        *o = (crdt_op){.code = CRDT_OP_APP, .field = "visits", .field_len = 6};
        break;
    }
    case 6: { /* counter */
        if (op_touches(ob, "cnt", NULL, NULL)) return;
        int64_t amt = (int64_t)tu_below(rng, 9) - 4;
        if (amt == 0) amt = 1;
        crdt_val_put_int(v, amt);
        *o = (crdt_op){.code = CRDT_OP_INC, .field = "cnt", .field_len = 3};
        break;
    }
    case 7: { /* stage raise, possibly a regression */
        if (op_touches(ob, "st", NULL, NULL)) return;
        uint64_t s = tu_below(rng, 3);
        const crdt_field *f = crdt_record_field(dv->rec, "st", (crdt_blob){NULL, 0});
        if (f && crdt_field_stage(f) > (int)s) regress_seen++;
        crdt_val_put_str(v, stages[s], 1);
        *o = (crdt_op){.code = CRDT_OP_RAISE, .field = "st", .field_len = 2};
        break;
    }
    default: { /* record tombstone / lift it (rare) */
        for (uint32_t j = 0; j < ob->n; j++)
            if (!ob->ops[j].field) return;
        if (tu_below(rng, 3)) return;
        *o = (crdt_op){.code = tu_below(rng, 2) ? CRDT_OP_DEL : CRDT_OP_UNDEL};
        tomb_seen++;
        break;
    }
    }
    if (v->n) o->val = (crdt_blob){v->p, (uint32_t)v->n};
    ob->n++;
}

/* Device dv makes one delta from its current view; it is applied locally. */
static void device_edit(tu_rng *rng, device *dv, uint64_t wall, history *h,
                        uint8_t prev_hash[][CRDT_HASH_BYTES], opbuf *ob)
{
    crdt_delta d;
    crdt_hlc now;
    memset(&d, 0, sizeof d);
    ob->n = 0;
    uint32_t want = 1 + (uint32_t)tu_below(rng, 3);
    for (int tries = 0; ob->n < want && tries < 10; tries++) gen_op(rng, dv, ob);
    if (ob->n == 0) return;
    int64_t w = (int64_t)wall + dv->skew;
    assert_int_equal(crdt_hlc_now(&dv->clock, (uint64_t)w, &now), 0);
    d.dev = dv->id;
    d.epoch = 1;
    d.seq = ++dv->seq;
    memcpy(d.prev, prev_hash[dv->id], CRDT_HASH_BYTES);
    d.hlc = now;
    d.kind = "t";
    d.kind_len = 1;
    d.id = "r1";
    d.id_len = 2;
    d.ops = ob->ops;
    d.n_ops = ob->n;
    crdt_buf *out = &h->bytes[h->n];
    crdt_buf_reset(out);
    assert_int_equal(crdt_delta_encode(&d, out), 0);
    /* A stand-in chain hash (the real one is BLAKE2b, in wire/). */
    for (size_t i = 0; i < CRDT_HASH_BYTES; i++)
        prev_hash[dv->id][i] = (uint8_t)(out->p[i % out->n] + out->n + i);
    apply_bytes(dv->rec, out);
    dv->known[h->n] = true;
    h->n++;
}

/* Device a receives everything device b knows (a causal exchange). */
static void device_sync(device *a, const device *b, const history *h, uint64_t wall)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (!b->known[i] || a->known[i]) continue;
        apply_bytes(a->rec, &h->bytes[i]);
        a->known[i] = true;
    }
    crdt_hlc out;
    /* Devices bring their clock forward past what they received. */
    crdt_hlc seen = 0;
    for (uint32_t i = 0; i < b->rec->n_fields; i++)
        for (uint32_t j = 0; j < b->rec->fields[i].n; j++)
            if (b->rec->fields[i].e[j].st.hlc > seen) seen = b->rec->fields[i].e[j].st.hlc;
    int64_t w = (int64_t)wall + a->skew;
    int rc = crdt_hlc_recv(&a->clock, seen, (uint64_t)w, 86400000ull, &out);
    assert_true(rc == 0 || rc == CRDT_EHLC_DRIFT);
}

static void shuffle(tu_rng *rng, uint32_t *a, uint32_t n)
{
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = (uint32_t)tu_below(rng, i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* A fresh replica receives all of h in a hostile order. */
static crdt_record *replay(tu_rng *rng, const history *h)
{
    uint32_t order[MAX_DELTAS * 2], n = 0, later[MAX_DELTAS], nl = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        order[n++] = i;
        if (tu_below(rng, 5) == 0) order[n++] = i; /* duplicate */
    }
    shuffle(rng, order, n);
    crdt_record *r = new_rec();
    crdt_buf tmp = {0};
    for (uint32_t i = 0; i < n; i++) {
        if (tu_below(rng, 8) == 0 && nl < MAX_DELTAS) { /* dropped, redelivered later */
            later[nl++] = order[i];
            continue;
        }
        apply_bytes(r, &h->bytes[order[i]]);
        if (i == n / 2) { /* persist and reload mid-way */
            crdt_record *r2 = NULL;
            encode_rec(r, &tmp);
            assert_int_equal(crdt_record_decode(tmp.p, tmp.n, &r2), 0);
            crdt_record_free(r);
            r = r2;
        }
    }
    for (uint32_t i = 0; i < nl; i++) apply_bytes(r, &h->bytes[later[i]]);
    crdt_buf_free(&tmp);
    return r;
}

static void count_conflicts(const crdt_record *r)
{
    for (uint32_t i = 0; i < r->n_fields; i++)
        if (r->fields[i].type == CRDT_F_MV && r->fields[i].n > 1) conflicts_seen++;
}

static void run_history(tu_rng *rng, history *h, opbuf *ob)
{
    device dev[MAX_DEV];
    uint8_t prev[MAX_DEV + 1][CRDT_HASH_BYTES];
    uint32_t nd = 5 + (uint32_t)tu_below(rng, MAX_DEV - 4);
    uint32_t steps = 10 + (uint32_t)tu_below(rng, 60);
    uint64_t wall = 1790000000000ull;
    memset(prev, 0, sizeof prev);
    h->n = 0;
    for (uint32_t i = 0; i < nd; i++) {
        memset(&dev[i], 0, sizeof dev[i]);
        dev[i].id = i + 1;
        dev[i].skew = (int64_t)tu_below(rng, 4000) - 2000;
        dev[i].rec = new_rec();
    }
    for (uint32_t s = 0; s < steps && h->n < MAX_DELTAS; s++) {
        wall += tu_below(rng, 3); /* same-ms events make equal-ms HLCs */
        device *a = &dev[tu_below(rng, nd)];
        if (tu_below(rng, 6) == 0) device_sync(a, &dev[tu_below(rng, nd)], h, wall);
        else device_edit(rng, a, wall, h, prev, ob);
    }

    /* Reference: the merge of the devices' own replicas, in a random order. */
    crdt_record *ref = new_rec();
    uint32_t ord[MAX_DEV];
    for (uint32_t i = 0; i < nd; i++) ord[i] = i;
    shuffle(rng, ord, nd);
    for (uint32_t i = 0; i < nd; i++) assert_int_equal(crdt_record_merge(ref, dev[ord[i]].rec), 0);
    crdt_buf want = {0}, got = {0};
    encode_rec(ref, &want);
    count_conflicts(ref);

    for (int rep = 0; rep < 5; rep++) {
        crdt_record *r = replay(rng, h);
        encode_rec(r, &got);
        if (got.n != want.n || memcmp(got.p, want.p, want.n) != 0)
            fail_msg("replica %d diverged after %u deltas", rep, h->n);
        crdt_record_free(r);
    }
    /* A device that syncs with everyone converges too. */
    for (uint32_t i = 0; i < nd; i++) device_sync(&dev[0], &dev[i], h, wall);
    encode_rec(dev[0].rec, &got);
    assert_memory_equal(got.p, want.p, want.n);
    assert_int_equal(got.n, want.n);

    crdt_buf_free(&want);
    crdt_buf_free(&got);
    crdt_record_free(ref);
    for (uint32_t i = 0; i < nd; i++) crdt_record_free(dev[i].rec);
}

static void test_convergence(void **state)
{
    (void)state;
    uint64_t seed = tu_seed("convergence");
    tu_rng rng;
    tu_rng_init(&rng, seed);
    history *h = calloc(1, sizeof *h);
    opbuf *ob = calloc(1, sizeof *ob);
    uint32_t runs = (uint32_t)tu_scaled(tu_long_mode() ? 40000 : 2000);
#ifdef DOORSTEP_SANITIZED
    runs /= 4;
#endif
    for (uint32_t i = 0; i < runs; i++) run_history(&rng, h, ob);
    fprintf(stderr, "convergence: %u histories, %llu mv conflicts, %llu tombstone ops, "
            "%llu stage regressions, %llu removes of unseen elements\n", runs,
            (unsigned long long)conflicts_seen, (unsigned long long)tomb_seen,
            (unsigned long long)regress_seen, (unsigned long long)unseen_rem_seen);
    /* The histories must exercise what they claim to. */
    assert_true(conflicts_seen > 0);
    assert_true(tomb_seen > 0);
    assert_true(regress_seen > 0);
    assert_true(unseen_rem_seen > 0);
    for (uint32_t i = 0; i < MAX_DELTAS; i++) crdt_buf_free(&h->bytes[i]);
    for (uint32_t i = 0; i < 4; i++) {
        crdt_buf_free(&ob->vals[i]);
        crdt_buf_free(&ob->keys[i]);
    }
    free(h);
    free(ob);
}

/* ---- merge laws on random states ------------------------------------------- */

/* A random state: a random subset of a history's deltas applied. */
static crdt_record *random_state(tu_rng *rng, const history *h)
{
    crdt_record *r = new_rec();
    for (uint32_t i = 0; i < h->n; i++)
        if (tu_below(rng, 2)) apply_bytes(r, &h->bytes[i]);
    return r;
}

static void expect_same(const crdt_record *a, const crdt_record *b, const char *law)
{
    crdt_buf x = {0}, y = {0};
    encode_rec(a, &x);
    encode_rec(b, &y);
    if (x.n != y.n || memcmp(x.p, y.p, x.n) != 0) fail_msg("merge is not %s", law);
    crdt_buf_free(&x);
    crdt_buf_free(&y);
}

static void test_merge_laws(void **state)
{
    (void)state;
    uint64_t seed = tu_seed("merge-laws");
    tu_rng rng;
    tu_rng_init(&rng, seed);
    history *h = calloc(1, sizeof *h);
    opbuf *ob = calloc(1, sizeof *ob);
    uint32_t runs = (uint32_t)tu_scaled(tu_long_mode() ? 20000 : 1000);
#ifdef DOORSTEP_SANITIZED
    runs /= 4;
#endif
    for (uint32_t i = 0; i < runs; i++) {
        run_history(&rng, h, ob);
        crdt_record *a = random_state(&rng, h), *b = random_state(&rng, h),
                    *c = random_state(&rng, h);
        /* commutative */
        crdt_record *ab = crdt_record_dup(a), *ba = crdt_record_dup(b);
        assert_int_equal(crdt_record_merge(ab, b), 0);
        assert_int_equal(crdt_record_merge(ba, a), 0);
        expect_same(ab, ba, "commutative");
        /* associative */
        crdt_record *ab_c = crdt_record_dup(ab), *bc = crdt_record_dup(b);
        assert_int_equal(crdt_record_merge(ab_c, c), 0);
        assert_int_equal(crdt_record_merge(bc, c), 0);
        crdt_record *a_bc = crdt_record_dup(a);
        assert_int_equal(crdt_record_merge(a_bc, bc), 0);
        expect_same(ab_c, a_bc, "associative");
        /* idempotent */
        crdt_record *aa = crdt_record_dup(a);
        assert_int_equal(crdt_record_merge(aa, a), 0);
        expect_same(aa, a, "idempotent");
        assert_true(crdt_record_invariant_ok(ab_c));
        crdt_record *all[] = {a, b, c, ab, ba, ab_c, bc, a_bc, aa};
        for (size_t j = 0; j < sizeof all / sizeof all[0]; j++) crdt_record_free(all[j]);
    }
    for (uint32_t i = 0; i < MAX_DELTAS; i++) crdt_buf_free(&h->bytes[i]);
    for (uint32_t i = 0; i < 4; i++) {
        crdt_buf_free(&ob->vals[i]);
        crdt_buf_free(&ob->keys[i]);
    }
    free(h);
    free(ob);
}

static int setup(void **state)
{
    (void)state;
    schema = tu_test_schema();
    return schema ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    crdt_schema_free(schema);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convergence),
        cmocka_unit_test(test_merge_laws),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
