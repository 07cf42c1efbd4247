/*
 * test_records.c — golden vectors of merged records (tests/vectors/records.txt,
 * docs/RECORD.md): the canonical bytes of person records built from four
 * deltas that touch every field type of the real schema
 * (crdt/schema/yibao.json), so a client in another language can check its
 * record decoder and merge against them.
 *
 * For each vector: the deltas encode to the pinned delta bytes; decoding
 * those bytes, checking them against the schema and applying them gives the
 * pinned record bytes; the pinned record bytes decode and re-encode to
 * themselves; and the merged record is the same whichever way it is made
 * (merge A into B, B into A, or every delta applied in any order).
 * A missing vector fails and prints what the code gives, so a deliberate
 * format change is pasted in, never silently taken.
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
#include "wire.h"

#define VEC_FILE DOORSTEP_SOURCE_DIR "/tests/vectors/records.txt"
#define MS0 1790000000000ull

static crdt_schema *schema;

/* ---- the four deltas ---------------------------------------------------------- */

static void vd_init(tdelta *t, uint32_t dev, uint64_t seq, uint64_t ms)
{
    td_init_for(t, "person", "P-0001", dev, seq, ms);
    memset(t->d.prev, seq > 1 ? 0x11 : 0, sizeof t->d.prev);
}

/*
 * a1  device 42 seq 1, t0:       name=张三, payment[2026]=未缴费, tags+低保,
 *                                errands_done+1, review→待初审, note=首次走访
 * a2  device 42 seq 2, t0+100ms: payment[2026]=已缴费 (observes 42:1),
 *                                visits+{2026-12-01 上门走访 已完成}
 * b1  device 7 seq 1, t0+50ms:   name=张山, payment[2026]=代缴 (both observe
 *                                nothing: concurrent), tags−低保 (observes 42:1),
 *                                errands_done+2, review→社区已初审, note=电话随访
 * b2  device 7 seq 2, t0+200ms:  del (the record's tombstone)
 */
static void build(tdelta *t, int which)
{
    crdt_op *o;
    switch (which) {
    case 0:
        vd_init(t, 42, 1, MS0);
        td_str(t, td_op(t, CRDT_OP_SET, "name"), "张三");
        o = td_op(t, CRDT_OP_SET, "payment");
        td_key(t, o, 2026);
        td_str(t, o, "未缴费");
        td_str(t, td_op(t, CRDT_OP_ADD, "tags"), "低保");
        td_int(t, td_op(t, CRDT_OP_INC, "errands_done"), 1);
        td_str(t, td_op(t, CRDT_OP_RAISE, "review"), "待初审");
        td_str(t, td_op(t, CRDT_OP_SET, "note"), "首次走访");
        break;
    case 1: {
        vd_init(t, 42, 2, MS0 + 100);
        o = td_op(t, CRDT_OP_SET, "payment");
        td_key(t, o, 2026);
        td_str(t, o, "已缴费");
        td_obs(t, o, 42, 1);
        o = td_op(t, CRDT_OP_APP, "visits");
        static const char *const keys[] = {"date", "method", "result"};
        const crdt_scalar vals[] = {
            {.t = CRDT_V_STR, .s = "2026-12-01", .len = 10},
            {.t = CRDT_V_STR, .s = "上门走访", .len = (uint32_t)strlen("上门走访")},
            {.t = CRDT_V_STR, .s = "已完成", .len = (uint32_t)strlen("已完成")}};
        crdt_buf *b = &t->v[o - t->ops];
        assert_int_equal(crdt_val_put_map(b, keys, vals, 3), 0);
        o->val = (crdt_blob){b->p, (uint32_t)b->n};
        break;
    }
    case 2:
        vd_init(t, 7, 1, MS0 + 50);
        td_str(t, td_op(t, CRDT_OP_SET, "name"), "张山");
        o = td_op(t, CRDT_OP_SET, "payment");
        td_key(t, o, 2026);
        td_str(t, o, "代缴");
        o = td_op(t, CRDT_OP_REM, "tags");
        td_str(t, o, "低保");
        td_obs(t, o, 42, 1);
        td_int(t, td_op(t, CRDT_OP_INC, "errands_done"), 2);
        td_str(t, td_op(t, CRDT_OP_RAISE, "review"), "社区已初审");
        td_str(t, td_op(t, CRDT_OP_SET, "note"), "电话随访");
        break;
    default:
        vd_init(t, 7, 2, MS0 + 200);
        td_op(t, CRDT_OP_DEL, NULL);
        break;
    }
}

static const char *const DELTA_NAMES[4] = {"delta-a1", "delta-a2", "delta-b1", "delta-b2"};

/* ---- the vectors file ---------------------------------------------------------- */

/* The bytes of "name: hex" in records.txt; fails (printing got) if absent or different. */
static void pinned(const char *name, const uint8_t *got, size_t n)
{
    size_t len;
    char *text = tu_read_file(VEC_FILE, &len);
    assert_non_null(text);
    uint8_t *want = malloc(len / 2 + 1);
    assert_non_null(want);
    long wn = -1;
    size_t nl = strlen(name);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
        if (!strncmp(line, name, nl) && line[nl] == ':') {
            wn = tu_unhex(line + nl + 1, want, len / 2 + 1);
            break;
        }
    free(text);
    if (wn < 0 || (size_t)wn != n || memcmp(want, got, n)) {
        char *hex = malloc(2 * n + 1);
        assert_non_null(hex);
        tu_hex(got, n, hex);
        fprintf(stderr, "%s: %s\n", name, hex);
        free(hex);
        free(want);
        fail_msg("vector '%s' %s in %s (the code gives the line above)", name,
                 wn < 0 ? "is missing" : "differs", VEC_FILE);
    }
    free(want);
}

/* Delta i: encoded, pinned, then decoded from the pinned bytes and schema-checked. */
static void delta_bytes(int i, crdt_buf *enc)
{
    tdelta t;
    build(&t, i);
    crdt_buf_reset(enc);
    assert_int_equal(crdt_delta_encode(&t.d, enc), 0);
    pinned(DELTA_NAMES[i], enc->p, enc->n);
    td_free(&t);
}

/* r ⊔= the delta in bytes p[0..n) (decoded, schema-checked, applied). */
static void apply_bytes(crdt_record *r, const uint8_t *p, size_t n)
{
    crdt_arena *a = crdt_arena_new(4096);
    crdt_delta d;
    int err_op;
    assert_non_null(a);
    assert_int_equal(crdt_delta_decode(p, n, &crdt_limits_default, a, &d, &err_op), 0);
    assert_int_equal(crdt_schema_check_delta(schema, &d, &err_op), 0);
    assert_int_equal(crdt_record_apply(r, schema, &d), 0);
    crdt_arena_free(a);
}

static crdt_record *fresh(void)
{
    crdt_record *r = crdt_record_new("person", 6, "P-0001", 6);
    assert_non_null(r);
    return r;
}

/* The record built from the deltas in `order`, pinned as name (if name). */
static crdt_record *from_deltas(const int *order, int n, const char *name, crdt_buf *enc)
{
    crdt_buf db = {0};
    crdt_record *r = fresh();
    for (int i = 0; i < n; i++) {
        delta_bytes(order[i], &db);
        apply_bytes(r, db.p, db.n);
    }
    crdt_buf_free(&db);
    crdt_buf_reset(enc);
    assert_int_equal(crdt_record_encode(r, enc), 0);
    if (name) pinned(name, enc->p, enc->n);
    return r;
}

static void same_bytes(const crdt_record *r, const crdt_buf *want)
{
    crdt_buf b = {0};
    assert_int_equal(crdt_record_encode(r, &b), 0);
    assert_int_equal(b.n, want->n);
    assert_memory_equal(b.p, want->p, b.n);
    crdt_buf_free(&b);
}

/* ---- tests ----------------------------------------------------------------------- */

static void test_delta_vectors(void **state)
{
    (void)state;
    crdt_buf b = {0};
    for (int i = 0; i < 4; i++) delta_bytes(i, &b);
    crdt_buf_free(&b);
}

static void test_record_vectors(void **state)
{
    (void)state;
    static const int A[] = {0, 1}, B[] = {2}, ALL[] = {0, 1, 2, 3};
    crdt_buf ea = {0}, eb = {0}, eab = {0}, edel = {0}, tmp = {0};
    crdt_record *ra = from_deltas(A, 2, "record-a", &ea);
    crdt_record *rb = from_deltas(B, 1, "record-b", &eb);
    /* record-ab = a ⊔ b, either way round. */
    crdt_record *ab = fresh(), *ba = fresh();
    assert_int_equal(crdt_record_merge(ab, ra), 0);
    assert_int_equal(crdt_record_merge(ab, rb), 0);
    assert_int_equal(crdt_record_encode(ab, &eab), 0);
    pinned("record-ab", eab.p, eab.n);
    assert_int_equal(crdt_record_merge(ba, rb), 0);
    assert_int_equal(crdt_record_merge(ba, ra), 0);
    same_bytes(ba, &eab);
    /* Equal to the three deltas applied in any order. */
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (int i = 0; i < 6; i++) {
        crdt_record *r = from_deltas(orders[i], 3, NULL, &tmp);
        same_bytes(r, &eab);
        crdt_record_free(r);
    }
    crdt_record *rd = from_deltas(ALL, 4, "record-ab-deleted", &edel);
    /* What the merged record says, as docs/RECORD.md reads it out. */
    const crdt_field *name = crdt_record_field(ab, "name", (crdt_blob){NULL, 0});
    assert_non_null(name);
    assert_int_equal(name->n, 2);             /* 张三 (42:1) and 张山 (7:1), concurrent */
    assert_true(crdt_field_conflict(name));
    const crdt_field *tags = crdt_record_field(ab, "tags", (crdt_blob){NULL, 0});
    assert_non_null(tags);
    assert_int_equal(tags->n, 0);             /* the add 42:1 was removed by 7:1 */
    assert_int_equal(tags->nd, 1);
    const crdt_field *rev = crdt_record_field(ab, "review", (crdt_blob){NULL, 0});
    assert_int_equal(crdt_field_stage(rev), 1); /* 社区已初审 beats 待初审 */
    assert_int_equal(rd->tomb.n, 1);
    /* Every pinned record decodes and re-encodes to itself. */
    const crdt_buf *all[] = {&ea, &eb, &eab, &edel};
    for (int i = 0; i < 4; i++) {
        crdt_record *r = NULL;
        assert_int_equal(crdt_record_decode(all[i]->p, all[i]->n, &r), 0);
        same_bytes(r, all[i]);
        crdt_record_free(r);
    }
    crdt_record_free(ra);
    crdt_record_free(rb);
    crdt_record_free(ab);
    crdt_record_free(ba);
    crdt_record_free(rd);
    crdt_buf_free(&ea);
    crdt_buf_free(&eb);
    crdt_buf_free(&eab);
    crdt_buf_free(&edel);
    crdt_buf_free(&tmp);
}

static int setup(void **state)
{
    (void)state;
    char err[256];
    return wire_schema_load_file(DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", &schema, err,
                                 sizeof err);
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
        cmocka_unit_test(test_delta_vectors),
        cmocka_unit_test(test_record_vectors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
