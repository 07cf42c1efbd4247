/*
 * test_relay.c — store/relay.c and the relayed append path (issue 16): the
 * (relay, street device) -> chain device map is one-to-one and stable; a
 * street key is pinned once, by one relay; relayed deltas of one phone are
 * applied in any order (a street relays deltas an admin accepted from
 * quarantine after later ones), duplicates are duplicates, a different
 * delta for a seen dot is a clone, and store_verify holds; the same gap on
 * a phone's own chain is refused; an unverified entry cannot be accepted;
 * the upstream cursors only move forward; communities remember their street.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "storeutil.h"
#include "testutil.h"
#include "wire.h"

#define NOW 1790000000000ull
#define DAY 86400000ull

static void report_line(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "verify: %s\n", line);
}

static uint64_t verify_problems(store *s)
{
    uint64_t problems = 0;
    int rc = store_verify(s, report_line, NULL, &problems);
    assert_true(rc == 0 || rc == STORE_EVERIFY);
    return problems;
}

static int run_rw(store *s, int (*fn)(store_txn *, void *), void *arg)
{
    store_txn *t = NULL;
    int rc = store_begin(s, STORE_RW, &t);
    if (rc) return rc;
    rc = fn(t, arg);
    if (rc) {
        store_abort(t);
        return rc;
    }
    return store_commit(t);
}

/* ---- the map and the pins ------------------------------------------------------------ */

static void test_map_and_pin(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "relay-map");
    store *s = su_store_new(&d, NULL);
    store_txn *t = NULL;
    uint32_t a5, a5b, b5, rel, dev;
    uint8_t ka[32], kb[32];
    memset(ka, 0xaa, 32);
    memset(kb, 0xbb, 32);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_relay_map(t, 1, 5, NULL, false, &a5), STORE_ENOTFOUND);
    assert_int_equal(store_relay_map(t, 1, 5, "东城街道 #5", true, &a5), 0);
    assert_int_equal(store_relay_map(t, 1, 5, NULL, false, &a5b), 0);
    assert_int_equal(a5, a5b);
    assert_int_equal(store_relay_map(t, 2, 5, "西城街道 #5", true, &b5), 0);
    assert_int_not_equal(a5, b5); /* another street's device 5 is another phone */
    uint32_t none;
    assert_int_equal(store_relay_map(t, 0, 5, NULL, true, &none), STORE_EINVAL);
    assert_int_equal(store_relay_origin(t, a5, &rel, &dev), 0);
    assert_int_equal(rel, 1);
    assert_int_equal(dev, 5);
    assert_int_equal(store_relay_origin(t, 999, &rel, &dev), STORE_ENOTFOUND);
    store_device sd;
    assert_int_equal(store_device_get(t, a5, &sd), 0);
    assert_string_equal(sd.volunteer, "东城街道 #5");
    assert_int_equal(sd.state, STORE_DEV_ACTIVE);
    /* One relay, one street key; one street key, one relay. */
    assert_int_equal(store_relay_pin(t, 1, ka, false), 0); /* not pinned yet */
    assert_int_equal(store_relay_pin(t, 1, ka, true), 0);
    assert_int_equal(store_relay_pin(t, 1, ka, true), 0);
    assert_int_equal(store_relay_pin(t, 1, kb, true), STORE_ERELAYKEY);
    assert_int_equal(store_relay_pin(t, 2, ka, true), STORE_ERELAYKEY);
    assert_int_equal(store_relay_pin(t, 2, kb, true), 0);
    uint8_t got[32];
    assert_int_equal(store_relay_server_key(t, 1, got), 0);
    assert_memory_equal(got, ka, 32);
    /* Cursors only move forward. */
    uint64_t c;
    assert_int_equal(store_upstream_cursor(t, &c), 0);
    assert_int_equal(c, 0);
    assert_int_equal(store_upstream_cursor_set(t, 10), 0);
    assert_int_equal(store_upstream_cursor_set(t, 4), 0);
    assert_int_equal(store_upstream_cursor(t, &c), 0);
    assert_int_equal(c, 10);
    assert_int_equal(store_upstream_admin_cursor_set(t, 3), 0);
    assert_int_equal(store_upstream_admin_cursor(t, &c), 0);
    assert_int_equal(c, 3);
    assert_int_equal(store_relay_admin_cursor_set(t, 1, 7), 0);
    assert_int_equal(store_relay_admin_cursor(t, 1, &c), 0);
    assert_int_equal(c, 7);
    assert_int_equal(store_relay_admin_cursor(t, 2, &c), 0);
    assert_int_equal(c, 0);
    assert_int_equal(store_commit(t), 0);
    /* It all survives a reopen. */
    store_close(s);
    char err[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_relay_map(t, 2, 5, NULL, false, &a5b), 0);
    assert_int_equal(a5b, b5);
    assert_int_equal(store_upstream_cursor(t, &c), 0);
    assert_int_equal(c, 10);
    store_abort(t);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- relayed appends ------------------------------------------------------------------ */

typedef struct relayed {
    const crdt_buf *env;
    uint32_t relay;
    bool relayed;               /* false: appended as the phone's own push */
    store_outcome out;
    crdt_arena *a;
} relayed;

static int append_one(store_txn *t, void *arg)
{
    relayed *r = arg;
    const uint8_t *db, *sig;
    size_t dl;
    int err_op;
    crdt_delta dlt;
    store_item it;
    memset(&it, 0, sizeof it);
    assert_int_equal(wire_envelope_decode(r->env->p, r->env->n, &crdt_limits_default, &db, &dl, &sig), 0);
    assert_int_equal(crdt_delta_decode(db, dl, &crdt_limits_default, r->a, &dlt, &err_op), 0);
    it.env = r->env->p;
    it.env_len = r->env->n;
    it.delta = &dlt;
    wire_delta_hash(db, dl, it.hash);
    if (r->relayed) {
        int rc = store_relay_map(t, r->relay, dlt.dev, "street", true, &it.chain_dev);
        if (rc) return rc;
        it.relayed = true;
    }
    int rc = store_append(t, &it, NOW, DAY, &r->out);
    if (!rc && r->relayed && r->out.result == STORE_APPLIED)
        rc = store_relay_note_place(t, r->relay, r->out.household, NOW);
    return rc;
}

static store_outcome push_relayed(store *s, const crdt_buf *env, uint32_t relay, bool as_relay)
{
    relayed r = {env, relay, as_relay, {0}, crdt_arena_new(0)};
    assert_non_null(r.a);
    assert_int_equal(run_rw(s, append_one, &r), 0);
    crdt_arena_free(r.a);
    return r.out;
}

static int comm_cb(const char *community, uint32_t relay, void *arg)
{
    char *out = arg;
    snprintf(out + strlen(out), 64, "%s=%u;", community, (unsigned)relay);
    return 0;
}

static void test_out_of_order(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "relay-order");
    store *s = su_store_new(&d, NULL);
    su_dev phone;
    su_dev_init(&phone, 7);
    crdt_buf e[4] = {{0}};
    su_ops o = {0};
    su_set_str(&o, "community", "AC01");
    su_set_str(&o, "grid", "AC01-G01");
    su_make(&phone, "household", "AH1", &o, NOW, &e[0], NULL);
    for (int i = 1; i < 3; i++) {
        su_ops_reset(&o);
        su_set_str(&o, "address", i == 1 ? "幸福路1号" : "幸福路2号");
        su_make(&phone, "household", "AH1", &o, NOW + (uint64_t)i, &e[i], NULL);
    }
    /* A different delta with seq 3: a clone of the third. */
    su_dev twin = phone;
    twin.seq = 2;
    su_ops_reset(&o);
    su_set_str(&o, "address", "别处");
    su_make(&twin, "household", "AH1", &o, NOW + 9, &e[3], NULL);
    su_ops_free(&o);

    /* Relayed 1, 3, 2: all applied (the street held 2 back, then accepted it). */
    assert_int_equal(push_relayed(s, &e[0], 1, true).result, STORE_APPLIED);
    assert_int_equal(push_relayed(s, &e[2], 1, true).result, STORE_APPLIED);
    assert_int_equal(push_relayed(s, &e[1], 1, true).result, STORE_APPLIED);
    store_outcome dup = push_relayed(s, &e[2], 1, true);
    assert_int_equal(dup.result, STORE_DUPLICATE);
    assert_int_equal(dup.sseq, 2);
    store_outcome clone = push_relayed(s, &e[3], 1, true);
    assert_int_equal(clone.result, STORE_QUARANTINED);
    assert_int_equal(clone.code, STORE_Q_CLONE);
    assert_int_equal(verify_problems(s), 0);
    /* The record has the last write by HLC, wherever it came in the order. */
    store_txn *t = NULL;
    crdt_record *r = NULL;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_record(t, "household", "AH1", &r), 0);
    crdt_record_free(r);
    uint32_t cd;
    uint64_t head = 0;
    uint8_t hh[32];
    assert_int_equal(store_relay_map(t, 1, 7, NULL, false, &cd), 0);
    assert_int_equal(store_chain_head(t, cd, &head, hh), 0);
    assert_int_equal(head, 3);
    assert_int_equal(store_chain_head(t, 7, &head, hh), 0); /* not the district's own device 7 */
    assert_int_equal(head, 0);
    char comms[256] = "";
    assert_int_equal(store_relay_communities(t, comm_cb, comms), 0);
    assert_string_equal(comms, "AC01=1;");
    store_abort(t);

    /* The same gap on a phone's own chain is refused. */
    su_dev own;
    su_dev_init(&own, 9);
    crdt_buf f[2] = {{0}};
    su_ops p = {0};
    su_set_str(&p, "community", "C09");
    su_set_str(&p, "grid", "C09-G01");
    su_make(&own, "household", "H9", &p, NOW, &f[0], NULL);
    su_ops_reset(&p);
    su_set_str(&p, "address", "x");
    su_make(&own, "household", "H9", &p, NOW + 1, &f[1], NULL);
    su_ops_free(&p);
    store_outcome gap = push_relayed(s, &f[1], 0, false);
    assert_int_equal(gap.result, STORE_REJECTED);
    assert_int_equal(gap.code, STORE_EGAP);
    for (int i = 0; i < 4; i++) crdt_buf_free(&e[i]);
    for (int i = 0; i < 2; i++) crdt_buf_free(&f[i]);
    store_close(s);
    su_dir_remove(&d);
}

static int clash_cb(const store_audit *e, void *arg)
{
    int *n = arg;
    if (!strcmp(e->action, "relay.place_clash")) {
        assert_non_null(strstr(e->detail, "community AC01 belongs to relay 1"));
        assert_non_null(strstr(e->detail, "relay 2"));
        assert_non_null(strstr(e->detail, "AH1"));
        (*n)++;
    }
    return 0;
}

/* Two streets with the same household id: their records merge at the
 * district (nothing can tell them apart there), and the administrator is
 * told once per (community, street) in the audit log. */
static void test_place_clash(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "relay-clash");
    store *s = su_store_new(&d, NULL);
    su_dev a, b;
    su_dev_init(&a, 7);
    su_dev_init(&b, 5);
    crdt_buf ea = {0}, eb[2] = {{0}};
    su_ops o = {0};
    su_set_str(&o, "community", "AC01");
    su_set_str(&o, "grid", "AC01-G01");
    su_make(&a, "household", "AH1", &o, NOW, &ea, NULL);
    for (int i = 0; i < 2; i++) {
        su_ops_reset(&o);
        su_set_str(&o, "address", i ? "别的街道2号" : "别的街道1号");
        su_make(&b, "household", "AH1", &o, NOW + 1 + (uint64_t)i, &eb[i], NULL);
    }
    su_ops_free(&o);
    assert_int_equal(push_relayed(s, &ea, 1, true).result, STORE_APPLIED);
    int n = 0;
    store_txn *t = NULL;
    uint64_t next;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_read(t, 0, 100, clash_cb, &n, &next), 0);
    store_abort(t);
    assert_int_equal(n, 0); /* one street: no clash */
    assert_int_equal(push_relayed(s, &eb[0], 2, true).result, STORE_APPLIED);
    assert_int_equal(push_relayed(s, &eb[1], 2, true).result, STORE_APPLIED);
    char comms[256] = "";
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_read(t, 0, 100, clash_cb, &n, &next), 0);
    assert_int_equal(store_relay_communities(t, comm_cb, comms), 0);
    store_abort(t);
    assert_int_equal(n, 1);                 /* told once, not per delta */
    assert_string_equal(comms, "AC01=1;"); /* the first street keeps it */
    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&ea);
    for (int i = 0; i < 2; i++) crdt_buf_free(&eb[i]);
    store_close(s);
    su_dir_remove(&d);
}

typedef struct qput { const crdt_buf *env; uint64_t qid; store_qreview rv; int rc; } qput;

static int put_unverified(store_txn *t, void *arg)
{
    qput *q = arg;
    return store_quarantine_put(t, STORE_Q_UNVERIFIED, 0, 0, NOW, q->env->p, q->env->n);
}

static int try_accept(store_txn *t, void *arg)
{
    qput *q = arg;
    q->rc = store_quarantine_accept(t, q->qid, NOW, "admin", &q->rv);
    return 0;
}

static int try_reject(store_txn *t, void *arg)
{
    qput *q = arg;
    q->rc = store_quarantine_reject(t, q->qid, NOW, "admin", "forged", &q->rv);
    return 0;
}

static void test_unverified(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "relay-unverified");
    store *s = su_store_new(&d, NULL);
    su_dev phone;
    su_dev_init(&phone, 3);
    crdt_buf env = {0};
    su_ops o = {0};
    su_set_str(&o, "community", "C01");
    su_set_str(&o, "grid", "C01-G01");
    su_make(&phone, "household", "H1", &o, NOW, &env, NULL);
    su_ops_free(&o);
    qput q = {&env, 1, {0}, 0};
    assert_int_equal(run_rw(s, put_unverified, &q), 0);
    store_txn *t = NULL;
    store_qentry qe;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_get(t, 1, &qe), 0);
    assert_int_equal(qe.reason, STORE_Q_UNVERIFIED);
    assert_string_equal(store_qreason_name(qe.reason), "unverified");
    crdt_buf_free(&qe.env);
    store_abort(t);
    assert_int_equal(run_rw(s, try_accept, &q), 0);
    assert_int_equal(q.rc, STORE_EINVAL); /* evidence, not an edit */
    assert_int_equal(run_rw(s, try_reject, &q), 0);
    assert_int_equal(q.rc, 0);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_and_pin),
        cmocka_unit_test(test_out_of_order),
        cmocka_unit_test(test_place_clash),
        cmocka_unit_test(test_unverified),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
