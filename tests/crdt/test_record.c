/*
 * test_record.c — records: every field type's merge, the edge cases
 * (equal HLCs, removes of unseen elements, stage regressions, tombstone then
 * edit, superseding writes arriving first), canonical bytes, decoding of
 * stored bytes, failure atomicity.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "crdt.h"
#include "tdelta.h"
#include "testutil.h"

static crdt_schema *schema;

/* ---- deltas (tests/common/tdelta.h) on record t/r1 ---------------------------- */

static void td_init(tdelta *t, uint32_t dev, uint64_t seq, uint64_t ms)
{
    td_init_for(t, "t", "r1", dev, seq, ms);
    if (seq > 1) t->d.prev[0] = 1;
}

/* Encode, decode, schema-check and apply; returns the apply code. */
static int td_apply(tdelta *t, crdt_record *r)
{
    crdt_buf enc = {0};
    crdt_arena *a = crdt_arena_new(0);
    crdt_delta d;
    int err_op, rc;
    assert_int_equal(crdt_delta_encode(&t->d, &enc), 0);
    assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &d, &err_op), 0);
    assert_int_equal(crdt_schema_check_delta(schema, &d, &err_op), 0);
    rc = crdt_record_apply(r, schema, &d);
    crdt_buf_free(&enc);
    crdt_arena_free(a);
    td_free(t);
    return rc;
}

static crdt_record *rec(void) { return crdt_record_new("t", 1, "r1", 2); }

static bool val_is(crdt_blob b, const char *s)
{
    crdt_val v;
    if (crdt_val_parse(b, &v) || v.t != CRDT_V_STR) return false;
    return v.len == strlen(s) && memcmp(v.s, s, v.len) == 0;
}

static const crdt_field *fld(const crdt_record *r, const char *name)
{
    return crdt_record_field(r, name, (crdt_blob){NULL, 0});
}

static void same_bytes(const crdt_record *a, const crdt_record *b)
{
    crdt_buf x = {0}, y = {0};
    assert_int_equal(crdt_record_encode(a, &x), 0);
    assert_int_equal(crdt_record_encode(b, &y), 0);
    assert_int_equal(x.n, y.n);
    assert_memory_equal(x.p, y.p, x.n);
    crdt_buf_free(&x);
    crdt_buf_free(&y);
}

/* ---- lww ---------------------------------------------------------------------- */

static void test_lww_latest_wins(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 2000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "new");
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 2, 1, 1000); /* older, arrives later */
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "old");
    assert_int_equal(td_apply(&t, r), 0);
    const crdt_field *f = fld(r, "lw");
    assert_non_null(f);
    assert_int_equal(f->n, 1);
    assert_true(val_is(f->e[0].v, "new"));
    assert_int_equal(f->e[0].st.dot.dev, 1); /* provenance */
    crdt_record_free(r);
}

static void test_lww_equal_hlc_breaks_on_device(void **state)
{
    (void)state;
    for (int order = 0; order < 2; order++) {
        crdt_record *r = rec();
        tdelta a, b;
        td_init(&a, 7, 1, 5000);
        td_str(&a, td_op(&a, CRDT_OP_SET, "lw"), "from7");
        td_init(&b, 9, 1, 5000);
        td_str(&b, td_op(&b, CRDT_OP_SET, "lw"), "from9");
        if (order) {
            assert_int_equal(td_apply(&b, r), 0);
            assert_int_equal(td_apply(&a, r), 0);
        } else {
            assert_int_equal(td_apply(&a, r), 0);
            assert_int_equal(td_apply(&b, r), 0);
        }
        assert_true(val_is(fld(r, "lw")->e[0].v, "from9"));
        crdt_record_free(r);
    }
}

/* ---- mv ----------------------------------------------------------------------- */

static void test_mv_concurrent_kept_then_resolved(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "mv"), "张三");
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 2, 1, 900); /* concurrent: did not observe (1,1) */
    td_str(&t, td_op(&t, CRDT_OP_SET, "mv"), "张山");
    assert_int_equal(td_apply(&t, r), 0);
    const crdt_field *f = fld(r, "mv");
    assert_int_equal(f->n, 2); /* a conflict staff can see */
    /* Staff (device 0 = server) resolves, observing both. */
    td_init(&t, 0, 1, 800); /* even with an older clock */
    crdt_op *o = td_op(&t, CRDT_OP_SET, "mv");
    td_str(&t, o, "张三");
    td_obs(&t, o, 1, 1);
    td_obs(&t, o, 2, 1);
    assert_int_equal(td_apply(&t, r), 0);
    f = fld(r, "mv");
    assert_int_equal(f->n, 1);
    assert_true(val_is(f->e[0].v, "张三"));
    assert_int_equal(f->e[0].st.dot.dev, 0);
    assert_int_equal(f->nd, 2);
    crdt_record_free(r);
}

static void test_mv_superseding_write_arrives_first(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 2, 2000); /* (1,2) supersedes (1,1) */
    crdt_op *o = td_op(&t, CRDT_OP_SET, "mv");
    td_str(&t, o, "second");
    td_obs(&t, o, 1, 1);
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "mv"), "first");
    assert_int_equal(td_apply(&t, r), 0);
    const crdt_field *f = fld(r, "mv");
    assert_int_equal(f->n, 1);
    assert_true(val_is(f->e[0].v, "second"));
    crdt_record_free(r);
}

static void test_mv_keyed_instances_independent(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    crdt_op *o = td_op(&t, CRDT_OP_SET, "pay");
    td_key(&t, o, 2025);
    td_str(&t, o, "paid");
    o = td_op(&t, CRDT_OP_SET, "pay");
    td_key(&t, o, 2026);
    td_str(&t, o, "unpaid");
    assert_int_equal(td_apply(&t, r), 0);
    crdt_buf k = {0};
    crdt_val_put_int(&k, 2025);
    const crdt_field *f = crdt_record_field(r, "pay", (crdt_blob){k.p, (uint32_t)k.n});
    assert_non_null(f);
    assert_true(val_is(f->e[0].v, "paid"));
    crdt_buf_reset(&k);
    crdt_val_put_int(&k, 2026);
    f = crdt_record_field(r, "pay", (crdt_blob){k.p, (uint32_t)k.n});
    assert_non_null(f);
    assert_true(val_is(f->e[0].v, "unpaid"));
    assert_null(fld(r, "pay")); /* no unkeyed instance */
    crdt_buf_free(&k);
    crdt_record_free(r);
}

/* ---- set ---------------------------------------------------------------------- */

static uint32_t live_count(const crdt_record *r, const char *field, const char *elem)
{
    const crdt_field *f = fld(r, field);
    uint32_t n = 0;
    if (!f) return 0;
    for (uint32_t i = 0; i < f->n; i++)
        if (val_is(f->e[i].v, elem)) n++;
    return n;
}

static void test_set_add_wins_and_unseen_remove(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    /* Remove of an element nobody added: a no-op, not an error. */
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_REM, "tags"), "低保");
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "低保"), 0);
    /* Add, then a remove that observed it, and a concurrent add. */
    td_init(&t, 1, 2, 2000);
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "低保");
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "低保"), 1);
    td_init(&t, 2, 1, 3000);
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "低保"); /* concurrent add */
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 3, 1, 4000);
    crdt_op *o = td_op(&t, CRDT_OP_REM, "tags");
    td_str(&t, o, "低保");
    td_obs(&t, o, 1, 2); /* saw only device 1's add */
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "低保"), 1); /* add wins */
    td_init(&t, 3, 2, 5000);
    o = td_op(&t, CRDT_OP_REM, "tags");
    td_str(&t, o, "低保");
    td_obs(&t, o, 2, 1);
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "低保"), 0);
    /* Re-adding after removal works. */
    td_init(&t, 1, 3, 6000);
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "低保");
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "特困"); /* two elements, one delta */
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "低保"), 1);
    assert_int_equal(live_count(r, "tags", "特困"), 1);
    assert_true(crdt_record_invariant_ok(r));
    crdt_record_free(r);
}

static void test_set_remove_one_element_keeps_sibling_of_same_dot(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "a");
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "b");
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 2, 1, 2000);
    crdt_op *o = td_op(&t, CRDT_OP_REM, "tags");
    td_str(&t, o, "a");
    td_obs(&t, o, 1, 1);
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(live_count(r, "tags", "a"), 0);
    assert_int_equal(live_count(r, "tags", "b"), 1);
    crdt_record_free(r);
}

/* ---- log, counter, stage ---------------------------------------------------- */

static void test_log_ordered_by_stamp(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    const char *keys[1] = {"d"};
    uint64_t times[3] = {3000, 1000, 2000};
    for (int i = 0; i < 3; i++) {
        td_init(&t, (uint32_t)i + 1, 1, times[i]);
        crdt_op *o = td_op(&t, CRDT_OP_APP, "visits");
        char date[11];
        snprintf(date, sizeof date, "2026-10-0%d", i + 1);
        crdt_scalar v = {.t = CRDT_V_STR, .s = date, .len = 10};
        crdt_buf *b = &t.v[0];
        assert_int_equal(crdt_val_put_map(b, keys, &v, 1), 0);
        o->val = (crdt_blob){b->p, (uint32_t)b->n};
        assert_int_equal(td_apply(&t, r), 0);
    }
    const crdt_field *f = fld(r, "visits");
    assert_int_equal(f->n, 3);
    assert_int_equal(CRDT_HLC_MS(f->e[0].st.hlc), 1000);
    assert_int_equal(CRDT_HLC_MS(f->e[1].st.hlc), 2000);
    assert_int_equal(CRDT_HLC_MS(f->e[2].st.hlc), 3000);
    crdt_record_free(r);
}

static void test_counter_and_idempotent_apply(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_int(&t, td_op(&t, CRDT_OP_INC, "cnt"), 5);
    assert_int_equal(td_apply(&t, r), 0);
    crdt_record *snap = crdt_record_dup(r);
    td_init(&t, 1, 1, 1000); /* the same delta again */
    td_int(&t, td_op(&t, CRDT_OP_INC, "cnt"), 5);
    assert_int_equal(td_apply(&t, r), 0);
    same_bytes(r, snap);
    td_init(&t, 2, 1, 1000);
    td_int(&t, td_op(&t, CRDT_OP_INC, "cnt"), -2);
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(crdt_field_counter(fld(r, "cnt")), 3);
    crdt_record_free(snap);
    crdt_record_free(r);
}

static void test_stage_never_regresses(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_RAISE, "st"), "c");
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 2, 1, 9000); /* later but lower: no effect */
    td_str(&t, td_op(&t, CRDT_OP_RAISE, "st"), "a");
    assert_int_equal(td_apply(&t, r), 0);
    assert_int_equal(crdt_field_stage(fld(r, "st")), 2);
    assert_int_equal(fld(r, "st")->e[0].st.dot.dev, 1);
    crdt_record_free(r);
}

/* ---- tombstones --------------------------------------------------------------- */

static void test_tombstone_then_edit_keeps_data(void **state)
{
    (void)state;
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "before");
    assert_int_equal(td_apply(&t, r), 0);
    assert_false(crdt_record_deleted(r));
    td_init(&t, 1, 2, 2000);
    td_op(&t, CRDT_OP_DEL, NULL);
    assert_int_equal(td_apply(&t, r), 0);
    assert_true(crdt_record_deleted(r));
    assert_true(val_is(fld(r, "lw")->e[0].v, "before")); /* data kept */
    /* An edit after the tombstone (e.g. from an offline phone) is merged
     * into the kept data; the record stays deleted. */
    td_init(&t, 2, 1, 3000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "after");
    assert_int_equal(td_apply(&t, r), 0);
    assert_true(crdt_record_deleted(r));
    assert_true(val_is(fld(r, "lw")->e[0].v, "after"));
    /* Lifting the tombstone with a later stamp. */
    td_init(&t, 3, 1, 4000);
    td_op(&t, CRDT_OP_UNDEL, NULL);
    assert_int_equal(td_apply(&t, r), 0);
    assert_false(crdt_record_deleted(r));
    crdt_record_free(r);
}

/* ---- bytes, decoding, failures ----------------------------------------------- */

static crdt_record *sample(void)
{
    crdt_record *r = rec();
    tdelta t;
    td_init(&t, 1, 1, 1000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "x");
    td_str(&t, td_op(&t, CRDT_OP_SET, "mv"), "y");
    td_str(&t, td_op(&t, CRDT_OP_ADD, "tags"), "z");
    td_int(&t, td_op(&t, CRDT_OP_INC, "cnt"), -7);
    td_str(&t, td_op(&t, CRDT_OP_RAISE, "st"), "b");
    td_op(&t, CRDT_OP_DEL, NULL);
    assert_int_equal(td_apply(&t, r), 0);
    td_init(&t, 2, 1, 1000);
    crdt_op *o = td_op(&t, CRDT_OP_REM, "tags");
    td_str(&t, o, "z");
    td_obs(&t, o, 9, 9);
    assert_int_equal(td_apply(&t, r), 0);
    return r;
}

static void test_record_roundtrip(void **state)
{
    (void)state;
    crdt_record *r = sample(), *back = NULL;
    crdt_buf b = {0}, b2 = {0};
    assert_int_equal(crdt_record_encode(r, &b), 0);
    assert_int_equal(crdt_record_decode(b.p, b.n, &back), 0);
    assert_int_equal(crdt_record_encode(back, &b2), 0);
    assert_int_equal(b.n, b2.n);
    assert_memory_equal(b.p, b2.p, b.n);
    assert_true(crdt_record_deleted(back));
    assert_int_equal(crdt_field_counter(fld(back, "cnt")), -7);
    crdt_record_free(back);
    /* Every truncation is refused as corrupt, never half-read. */
    for (size_t n = 0; n < b.n; n++) {
        crdt_record *x = (crdt_record *)1;
        assert_int_equal(crdt_record_decode(b.p, n, &x), CRDT_ECORRUPT);
        assert_null(x);
    }
    /* Every single-byte corruption either decodes to a valid record or is
     * refused; never a crash or an invariant violation. */
    for (size_t i = 0; i < b.n; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b.p[i] ^= (uint8_t)(1u << bit);
            crdt_record *x = NULL;
            int rc = crdt_record_decode(b.p, b.n, &x);
            if (rc == 0) {
                assert_true(crdt_record_invariant_ok(x));
                crdt_record_free(x);
            } else {
                assert_int_equal(rc, CRDT_ECORRUPT);
            }
            b.p[i] ^= (uint8_t)(1u << bit);
        }
    }
    crdt_buf_free(&b);
    crdt_buf_free(&b2);
    crdt_record_free(r);
}

static void test_record_decode_rejects_unsorted(void **state)
{
    (void)state;
    /* Hand-made: two fields in the wrong order. */
    crdt_record *r = sample();
    crdt_field tmp = r->fields[0];
    r->fields[0] = r->fields[1];
    r->fields[1] = tmp;
    assert_false(crdt_record_invariant_ok(r));
    crdt_buf b = {0};
    assert_int_equal(crdt_record_encode(r, &b), 0);
    crdt_record *x = NULL;
    assert_int_equal(crdt_record_decode(b.p, b.n, &x), CRDT_ECORRUPT);
    tmp = r->fields[0];
    r->fields[0] = r->fields[1];
    r->fields[1] = tmp;
    crdt_buf_free(&b);
    crdt_record_free(r);
}

static void test_mismatch_and_atomic_failure(void **state)
{
    (void)state;
    crdt_record *r = sample();
    crdt_record *other = crdt_record_new("t", 1, "r2", 2);
    crdt_buf before = {0}, after = {0};
    assert_int_equal(crdt_record_encode(r, &before), 0);
    assert_int_equal(crdt_record_merge(r, other), CRDT_EMISMATCH);
    /* A delta for another record. */
    tdelta t;
    td_init(&t, 1, 5, 1000);
    t.d.id = "r2";
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "q");
    crdt_buf enc = {0};
    crdt_arena *a = crdt_arena_new(0);
    crdt_delta d;
    int err_op;
    assert_int_equal(crdt_delta_encode(&t.d, &enc), 0);
    assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &d, &err_op), 0);
    assert_int_equal(crdt_record_apply(r, schema, &d), CRDT_EMISMATCH);
    for (int i = 0; i < 8; i++) crdt_buf_free(&t.v[i]);
    /* A delta whose second op names a field the schema lacks (unchecked). */
    crdt_arena_reset(a);
    crdt_buf_reset(&enc);
    td_init(&t, 1, 5, 1000);
    td_str(&t, td_op(&t, CRDT_OP_SET, "lw"), "changed");
    td_str(&t, td_op(&t, CRDT_OP_SET, "nosuch"), "q");
    assert_int_equal(crdt_delta_encode(&t.d, &enc), 0);
    assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &d, &err_op), 0);
    assert_int_equal(crdt_schema_check_delta(schema, &d, &err_op), CRDT_EFIELD);
    assert_int_equal(err_op, 1);
    assert_int_equal(crdt_record_apply(r, schema, &d), CRDT_EFIELD);
    assert_int_equal(crdt_record_encode(r, &after), 0);
    assert_int_equal(before.n, after.n);
    assert_memory_equal(before.p, after.p, before.n); /* unchanged */
    for (int i = 0; i < 8; i++) {
        crdt_buf_free(&t.v[i]);
        crdt_buf_free(&t.k[i]);
    }
    crdt_buf_free(&enc);
    crdt_arena_free(a);
    crdt_buf_free(&before);
    crdt_buf_free(&after);
    crdt_record_free(other);
    crdt_record_free(r);
}

static void test_record_new_rejects_bad_ids(void **state)
{
    (void)state;
    assert_null(crdt_record_new("t", 1, "", 0));
    assert_null(crdt_record_new("t", 1, "a b", 3));
    assert_null(crdt_record_new("T", 1, "ok", 2));
    char long_id[CRDT_RECID_MAX + 1];
    memset(long_id, 'a', sizeof long_id);
    assert_null(crdt_record_new("t", 1, long_id, CRDT_RECID_MAX + 1));
    crdt_record *r = crdt_record_new("t", 1, long_id, CRDT_RECID_MAX);
    assert_non_null(r);
    crdt_record_free(r);
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
        cmocka_unit_test(test_lww_latest_wins),
        cmocka_unit_test(test_lww_equal_hlc_breaks_on_device),
        cmocka_unit_test(test_mv_concurrent_kept_then_resolved),
        cmocka_unit_test(test_mv_superseding_write_arrives_first),
        cmocka_unit_test(test_mv_keyed_instances_independent),
        cmocka_unit_test(test_set_add_wins_and_unseen_remove),
        cmocka_unit_test(test_set_remove_one_element_keeps_sibling_of_same_dot),
        cmocka_unit_test(test_log_ordered_by_stamp),
        cmocka_unit_test(test_counter_and_idempotent_apply),
        cmocka_unit_test(test_stage_never_regresses),
        cmocka_unit_test(test_tombstone_then_edit_keeps_data),
        cmocka_unit_test(test_record_roundtrip),
        cmocka_unit_test(test_record_decode_rejects_unsorted),
        cmocka_unit_test(test_mismatch_and_atomic_failure),
        cmocka_unit_test(test_record_new_rejects_bad_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
