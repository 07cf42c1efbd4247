/*
 * test_review.c — store/review.c: soft and hard revocation (held deltas
 * stay, later arrivals quarantined; keys revoked; monotonic; audited),
 * admin-required rotation, device listing with scope sizes, and quarantine
 * review: list with state filters, accept (merged through the normal path:
 * record, indexes, feed; store_verify passes; the approver is in the review
 * and the audit log), reject (kept, marked), no decision twice, clock-ahead
 * and clone entries, persistence across reopen, and nothing ever deleted.
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
    assert_true(rc == STORE_OK || rc == STORE_EVERIFY);
    return problems;
}

static store *reopen(store *s, su_dir *d)
{
    char err[256];
    store_opts o = {.no_sync = true};
    store_close(s);
    s = NULL;
    int rc = store_open(d->data, d->key, &o, &s, err, sizeof err);
    if (rc) fail_msg("reopen: %s", err);
    return s;
}

/* Register device dev->id with its key at epoch 1. */
static void enroll(store *s, su_dev *dev, const char *volunteer)
{
    store_txn *t;
    store_device d = {.id = dev->id, .state = STORE_DEV_ACTIVE, .epoch = 1,
                      .created_ms = NOW};
    store_key k = {.dev = dev->id, .epoch = 1, .state = STORE_KEY_ACTIVE, .created_ms = NOW,
                   .changed_ms = NOW};
    snprintf(d.volunteer, sizeof d.volunteer, "%s", volunteer);
    memcpy(k.pk, dev->pk, 32);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_put(t, &d), 0);
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_commit(t), 0);
}

/* The device's next delta: a household note (and community/grid if given). */
static store_outcome push_note(store *s, su_dev *dev, const char *hh, const char *note,
                               const char *comm, const char *grid, uint64_t ms,
                               uint64_t server_ms, crdt_buf *env)
{
    su_ops o = {0};
    if (comm) su_set_str(&o, "community", comm);
    if (grid) su_set_str(&o, "grid", grid);
    if (note) su_set_str(&o, "note", note);
    su_make(dev, "household", hh, &o, ms, env, NULL);
    su_ops_free(&o);
    return su_push(s, env, server_ms);
}

static store_outcome push_person(store *s, su_dev *dev, const char *pid, const char *hh,
                                 const char *name, unsigned idx, crdt_buf *env)
{
    su_ops o = {0};
    char idn[19];
    su_idnum(idx, idn);
    su_set_str(&o, "name", name);
    su_set_str(&o, "id_number", idn);
    su_set_str(&o, "household", hh);
    su_make(dev, "person", pid, &o, NOW + 100, env, NULL);
    su_ops_free(&o);
    return su_push(s, env, NOW + 100);
}

/* The display value of a string field ("" if absent). */
static void field_of(store *s, const char *kind, const char *id, const char *field, char *buf,
                     size_t cap)
{
    store_txn *t;
    crdt_record *r = NULL;
    buf[0] = 0;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    int rc = store_get_record(t, kind, id, &r);
    if (rc == 0) {
        const crdt_field *f = crdt_record_field(r, field, (crdt_blob){NULL, 0});
        const crdt_entry *best = NULL;
        for (uint32_t i = 0; f && i < f->n; i++)
            if (!best || crdt_stamp_cmp(f->e[i].st, best->st) > 0) best = &f->e[i];
        crdt_val v;
        if (best && crdt_val_parse(best->v, &v) == 0 && v.t == CRDT_V_STR && v.len < cap) {
            memcpy(buf, v.s, v.len);
            buf[v.len] = 0;
        }
    } else {
        assert_int_equal(rc, STORE_ENOTFOUND);
    }
    crdt_record_free(r);
    store_abort(t);
}

/* ---- audit helpers ---------------------------------------------------------------- */

typedef struct audit_find {
    const char *action;
    const char *actor;
    const char *detail_has;
    int found;
    uint64_t total;
} audit_find;

static int audit_each(const store_audit *e, void *arg)
{
    audit_find *f = arg;
    f->total++;
    if (!strcmp(e->action, f->action) && (!f->actor || !strcmp(e->actor, f->actor)) &&
        (!f->detail_has || strstr(e->detail, f->detail_has)))
        f->found++;
    return 0;
}

static int audit_count(store *s, const char *action, const char *actor, const char *has,
                       uint64_t *total)
{
    store_txn *t;
    uint64_t next;
    audit_find f = {action, actor, has, 0, 0};
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_read(t, 0, SIZE_MAX, audit_each, &f, &next), 0);
    store_abort(t);
    if (total) *total = f.total;
    return f.found;
}

static uint64_t count_deltas(store *s)
{
    store_txn *t;
    uint64_t n;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &n), 0);
    store_abort(t);
    return n;
}

static uint64_t count_quarantine(store *s)
{
    store_txn *t;
    uint64_t n;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_count(t, &n), 0);
    store_abort(t);
    return n;
}

/* ---- revocation ------------------------------------------------------------------ */

static void test_revoke_soft_then_hard(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "revoke");
    store *s = su_store_new(&d, NULL);
    su_dev a;
    su_dev_init(&a, 5);
    enroll(s, &a, "王五");
    crdt_buf e1 = {0}, e2 = {0}, e3 = {0}, e4 = {0};
    assert_int_equal(push_note(s, &a, "H1", NULL, "C01", "G01", NOW, NOW, &e1).result,
                     STORE_APPLIED);
    assert_int_equal(push_note(s, &a, "H1", "second", NULL, NULL, NOW + 1, NOW, &e2).result,
                     STORE_APPLIED);
    assert_int_equal(push_note(s, &a, "H1", "third", NULL, NULL, NOW + 2, NOW, &e3).result,
                     STORE_APPLIED);
    /* Queued offline on the phone, not sent before the phone was lost. */
    su_dev later = a;
    crdt_buf e_late = {0};
    {
        su_ops o = {0};
        su_set_str(&o, "note", "sent after the revocation");
        su_make(&later, "household", "H1", &o, NOW + 3, &e_late, NULL);
        su_ops_free(&o);
    }

    store_txn *t;
    uint64_t gen0, gen1, total0, total1;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_admin_gen(t, &gen0), 0);
    store_abort(t);
    audit_count(s, "device.revoke_soft", NULL, NULL, &total0);

    /* Refusals. */
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW, "admin:alice"),
                     STORE_EREADONLY);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 99, STORE_REVOKE_SOFT, NOW, "admin:alice"),
                     STORE_ENOTFOUND);
    assert_int_equal(store_device_revoke(t, 5, 7, NOW, "admin:alice"), STORE_EINVAL);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW, ""), STORE_EINVAL);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW, NULL), STORE_EINVAL);
    store_abort(t);

    /* Soft: held up to the chain head (3). */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW + 10, "admin:alice"), 0);
    assert_int_equal(store_commit(t), 0);
    store_device dv;
    store_key k;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 5, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_REVOKED_SOFT);
    assert_int_equal(dv.revoked_at_seq, 3);
    assert_string_equal(dv.volunteer, "王五");
    assert_int_equal(store_key_get(t, 5, 1, &k), 0);
    assert_int_equal(k.state, STORE_KEY_REVOKED);
    assert_int_equal(k.changed_ms, NOW + 10);
    assert_int_equal(store_key_current(t, 5, &k), STORE_ENOTFOUND);
    assert_int_equal(store_admin_gen(t, &gen1), 0);
    assert_true(gen1 > gen0);
    store_abort(t);
    assert_int_equal(audit_count(s, "device.revoke_soft", "admin:alice", "chain head seq 3",
                                 &total1),
                     1);
    assert_int_equal(total1, total0 + 1);

    /* Held deltas stay: a late re-send of seq 2 is a duplicate, not held back. */
    uint64_t nd = count_deltas(s);
    store_outcome out = su_push(s, &e2, NOW + 20);
    assert_int_equal(out.result, STORE_DUPLICATE);
    assert_int_equal(out.sseq, 2);
    /* Beyond the held seq: quarantined, not merged, not lost. */
    out = su_push(s, &e_late, NOW + 20);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_REVOKED);
    assert_int_equal(count_deltas(s), nd);
    assert_int_equal(count_quarantine(s), 1);
    char buf[64];
    field_of(s, "household", "H1", "note", buf, sizeof buf);
    assert_string_equal(buf, "third");

    /* Repeating the soft revocation changes nothing and is not audited. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW + 30, "admin:alice"), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(audit_count(s, "device.revoke_soft", NULL, NULL, NULL), 1);

    /* Hard: now even re-sends of held deltas are quarantined. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_HARD, NOW + 40, "admin:bob"), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 5, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_REVOKED_HARD);
    assert_int_equal(dv.revoked_at_seq, 3); /* from the soft revocation */
    store_abort(t);
    assert_int_equal(audit_count(s, "device.revoke_hard", "admin:bob", "revoked_soft -> revoked_hard",
                                 NULL),
                     1);
    /* A re-send of a held delta is acked as a duplicate (store_append
     * checks the dot first); anything new is quarantined — again if sent
     * again: nothing is lost, nothing is merged. */
    out = su_push(s, &e2, NOW + 50);
    assert_int_equal(out.result, STORE_DUPLICATE);
    out = su_push(s, &e_late, NOW + 50);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_REVOKED);
    assert_int_equal(count_quarantine(s), 2);
    assert_int_equal(count_deltas(s), nd);
    /* No way back. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_SOFT, NOW, "admin:alice"),
                     STORE_EINVAL);
    assert_int_equal(store_device_revoke(t, 5, STORE_REVOKE_HARD, NOW, "admin:alice"), 0);
    assert_int_equal(store_device_require_rotation(t, 5, true, NOW, "admin:alice"),
                     STORE_EINVAL);
    store_abort(t);
    assert_int_equal(audit_count(s, "device.revoke_hard", NULL, NULL, NULL), 1);

    /* A device revoked hard straight from active, with a retired key. */
    su_dev b;
    su_dev_init(&b, 6);
    enroll(s, &b, "赵六");
    assert_int_equal(push_note(s, &b, "H2", NULL, "C01", "G01", NOW, NOW, &e4).result,
                     STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_key_get(t, 6, 1, &k), 0);
    k.state = STORE_KEY_RETIRED;
    k.sealed_seq = 1;
    assert_int_equal(store_key_put(t, &k), 0);
    k.epoch = 2;
    k.state = STORE_KEY_ACTIVE;
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_device_revoke(t, 6, STORE_REVOKE_HARD, NOW + 60, "admin:carol"), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 6, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_REVOKED_HARD);
    assert_int_equal(dv.revoked_at_seq, 1);
    assert_int_equal(store_key_get(t, 6, 1, &k), 0);
    assert_int_equal(k.state, STORE_KEY_REVOKED);
    assert_int_equal(k.sealed_seq, 1);
    assert_int_equal(store_key_get(t, 6, 2, &k), 0);
    assert_int_equal(k.state, STORE_KEY_REVOKED);
    store_abort(t);
    assert_int_equal(audit_count(s, "device.revoke_hard", "admin:carol", "2 key(s) revoked", NULL),
                     1);

    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&e1);
    crdt_buf_free(&e2);
    crdt_buf_free(&e3);
    crdt_buf_free(&e4);
    crdt_buf_free(&e_late);
    store_close(s);
    su_dir_remove(&d);
}

typedef struct dev_seen {
    uint32_t id[8];
    size_t scope[8];
    uint8_t state[8];
    size_t n;
} dev_seen;

static int collect_dev(const store_device *dv, size_t scope_n, void *arg)
{
    dev_seen *ds = arg;
    assert_true(ds->n < 8);
    ds->id[ds->n] = dv->id;
    ds->scope[ds->n] = scope_n;
    ds->state[ds->n] = dv->state;
    ds->n++;
    return 0;
}

static int stop_dev(const store_device *dv, size_t scope_n, void *arg)
{
    (void)dv;
    (void)scope_n;
    (void)arg;
    return 5;
}

static void test_rotation_and_list(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "rotreq");
    store *s = su_store_new(&d, NULL);
    su_dev a, b, c;
    su_dev_init(&a, 1);
    su_dev_init(&b, 2);
    su_dev_init(&c, 300);
    enroll(s, &a, "甲");
    enroll(s, &b, "乙");
    enroll(s, &c, "丙");
    store_txn *t;
    const char *scope_a[] = {"H1", "H2", "H3"}, *scope_c[] = {"H9"};
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_scope_set(t, 1, scope_a, 3), 0);
    assert_int_equal(store_device_scope_set(t, 300, scope_c, 1), 0);
    assert_int_equal(store_device_require_rotation(t, 2, true, NOW, "admin:alice"), 0);
    assert_int_equal(store_device_require_rotation(t, 2, true, NOW, "admin:alice"), 0);
    assert_int_equal(store_device_require_rotation(t, 42, true, NOW, "admin:alice"),
                     STORE_ENOTFOUND);
    assert_int_equal(store_device_require_rotation(t, 2, true, NOW, ""), STORE_EINVAL);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(audit_count(s, "device.rotate_require", "admin:alice", "device 2", NULL), 1);

    store_device dv;
    dev_seen ds = {0};
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 2, &dv), 0);
    assert_true(dv.flags & STORE_DEVF_ROTATE_REQUIRED);
    assert_int_equal(store_device_get(t, 1, &dv), 0);
    assert_false(dv.flags & STORE_DEVF_ROTATE_REQUIRED);
    assert_int_equal(store_device_list(t, collect_dev, &ds), 0);
    store_abort(t);
    assert_int_equal(ds.n, 3);
    assert_int_equal(ds.id[0], 1);
    assert_int_equal(ds.scope[0], 3);
    assert_int_equal(ds.id[1], 2);
    assert_int_equal(ds.scope[1], 0);
    assert_int_equal(ds.id[2], 300);
    assert_int_equal(ds.scope[2], 1);

    /* Cancelling clears the flag (audited once). */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_require_rotation(t, 2, false, NOW + 1, "admin:bob"), 0);
    assert_int_equal(store_device_require_rotation(t, 2, false, NOW + 1, "admin:bob"), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(audit_count(s, "device.rotate_cancel", "admin:bob", NULL, NULL), 1);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 2, &dv), 0);
    assert_false(dv.flags & STORE_DEVF_ROTATE_REQUIRED);
    /* The callback's value stops the listing. */
    assert_int_equal(store_device_list(t, stop_dev, NULL), 5);
    store_abort(t);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- quarantine review ------------------------------------------------------------ */

typedef struct q_seen {
    uint64_t qid[16];
    uint8_t state[16];
    uint8_t reason[16];
    size_t n;
    int stop_at;
} q_seen;

static int collect_q(const store_qentry *q, const store_qreview *r, void *arg)
{
    q_seen *qs = arg;
    assert_true(qs->n < 16);
    assert_int_equal(q->qid, r->qid);
    assert_true(q->env.n > 0);
    qs->qid[qs->n] = q->qid;
    qs->state[qs->n] = r->state;
    qs->reason[qs->n] = q->reason;
    qs->n++;
    return qs->stop_at && (int)qs->n == qs->stop_at ? 9 : 0;
}

static size_t list_q(store *s, int state_filter, q_seen *qs)
{
    store_txn *t;
    uint64_t next;
    memset(qs, 0, sizeof *qs);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_list(t, 0, SIZE_MAX, state_filter, collect_q, qs, &next),
                     0);
    store_abort(t);
    return qs->n;
}

typedef struct feed_seen {
    uint64_t sseq[32];
    size_t n;
} feed_seen;

static int collect_feed(uint64_t sseq, const uint8_t *env, size_t len, void *arg)
{
    feed_seen *f = arg;
    (void)env;
    (void)len;
    if (f->n < 32) f->sseq[f->n++] = sseq;
    return 0;
}

static void test_accept_reject(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "review");
    store *s = su_store_new(&d, NULL);
    su_dev a;
    su_dev_init(&a, 7);
    enroll(s, &a, "孙七");
    crdt_buf env = {0}, q1env = {0}, q2env = {0}, q3env = {0};
    assert_int_equal(push_note(s, &a, "H1", "first", "C01", "G01", NOW, NOW, &env).result,
                     STORE_APPLIED);
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, 7, STORE_REVOKE_SOFT, NOW + 1, "admin:alice"), 0);
    assert_int_equal(store_commit(t), 0);
    /* Three late arrivals: two household edits, one new person. */
    store_outcome out = push_note(s, &a, "H1", "late one", NULL, NULL, NOW + 5, NOW + 10, &q1env);
    assert_int_equal(out.result, STORE_QUARANTINED);
    out = push_note(s, &a, "H1", "late two", NULL, NULL, NOW + 6, NOW + 10, &q2env);
    assert_int_equal(out.result, STORE_QUARANTINED);
    out = push_person(s, &a, "P1", "H1", "周八", 77, &q3env);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(count_quarantine(s), 3);
    uint64_t nd = count_deltas(s);
    assert_int_equal(nd, 1);

    q_seen qs;
    assert_int_equal(list_q(s, 0, &qs), 3);
    assert_int_equal(qs.qid[0], 1);
    assert_int_equal(qs.state[0], STORE_QSTATE_PENDING);
    assert_int_equal(qs.reason[2], STORE_Q_REVOKED);
    assert_int_equal(list_q(s, STORE_QSTATE_PENDING, &qs), 3);
    assert_int_equal(list_q(s, STORE_QSTATE_ACCEPTED, &qs), 0);
    {
        store_txn *ct;
        uint64_t qc[4];
        assert_int_equal(store_begin(s, STORE_RDONLY, &ct), 0);
        assert_int_equal(store_quarantine_counts(ct, qc), 0);
        store_abort(ct);
        assert_true(qc[0] == 3 && qc[STORE_QSTATE_PENDING] == 3 && qc[STORE_QSTATE_ACCEPTED] == 0 &&
                    qc[STORE_QSTATE_REJECTED] == 0);
    }
    /* Paging and early stop. */
    {
        uint64_t next;
        q_seen p = {0};
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        assert_int_equal(store_quarantine_list(t, 1, 1, 0, collect_q, &p, &next), 0);
        assert_int_equal(p.n, 1);
        assert_int_equal(p.qid[0], 2);
        assert_int_equal(next, 2);
        memset(&p, 0, sizeof p);
        p.stop_at = 1;
        assert_int_equal(store_quarantine_list(t, 0, 10, 0, collect_q, &p, &next), 9);
        assert_int_equal(next, 0);
        store_abort(t);
    }

    store_qreview rv;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_review(t, 1, &rv), 0);
    assert_int_equal(rv.state, STORE_QSTATE_PENDING);
    assert_int_equal(store_quarantine_review(t, 99, &rv), STORE_ENOTFOUND);
    assert_int_equal(store_quarantine_accept(t, 1, NOW, "admin:bob", &rv), STORE_EREADONLY);
    store_abort(t);

    /* Accept q1 (and q3, the person): merged, indexed, verified. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_quarantine_accept(t, 99, NOW, "admin:bob", &rv), STORE_ENOTFOUND);
    assert_int_equal(rv.state, 0);
    assert_int_equal(store_quarantine_accept(t, 1, NOW, "", &rv), STORE_EINVAL);
    assert_int_equal(store_quarantine_accept(t, 1, NOW + 100, "admin:bob", &rv), 0);
    assert_int_equal(rv.state, STORE_QSTATE_ACCEPTED);
    assert_int_equal(rv.sseq, 2);
    assert_string_equal(rv.actor, "admin:bob");
    assert_true(rv.aseq > 0);
    assert_int_equal(store_quarantine_accept(t, 3, NOW + 100, "admin:bob", NULL), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(count_deltas(s), 3);
    char buf[64];
    field_of(s, "household", "H1", "note", buf, sizeof buf);
    assert_string_equal(buf, "late one");
    field_of(s, "person", "P1", "name", buf, sizeof buf);
    assert_string_equal(buf, "周八");
    assert_int_equal(verify_problems(s), 0);
    {
        store_ids m = {0};
        feed_seen f = {0};
        uint64_t next;
        const char *hh[] = {"H1"};
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        assert_int_equal(store_household_members(t, "H1", &m), 0);
        assert_int_equal(m.n, 1);
        assert_string_equal(m.id[0], "P1");
        store_ids_free(&m);
        assert_int_equal(store_feed(t, hh, 1, 0, 100, collect_feed, &f, &next), 0);
        assert_int_equal(f.n, 3); /* the original and both accepted deltas */
        assert_int_equal(f.sseq[1], 2);
        assert_int_equal(f.sseq[2], 3);
        /* The device's chain is untouched: the revoked device's head is 1. */
        uint64_t head;
        uint8_t hash[32];
        assert_int_equal(store_chain_head(t, 7, &head, hash), 0);
        assert_int_equal(head, 1);
        store_abort(t);
    }
    assert_int_equal(audit_count(s, "quarantine.accept", "admin:bob", "quarantine 1 (device_revoked)",
                                 NULL),
                     1);

    /* Reject q2: kept, marked, not merged. */
    char longnote[STORE_QNOTE_MAX + 2];
    memset(longnote, 'x', sizeof longnote - 1);
    longnote[sizeof longnote - 1] = 0;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_quarantine_reject(t, 2, NOW, "admin:carol", longnote, &rv),
                     STORE_EINVAL);
    assert_int_equal(store_quarantine_reject(t, 2, NOW + 200, "admin:carol", "phone was stolen",
                                             &rv),
                     0);
    assert_int_equal(rv.state, STORE_QSTATE_REJECTED);
    assert_string_equal(rv.note, "phone was stolen");
    assert_int_equal(rv.sseq, 0);
    /* No decision twice, in either direction. */
    assert_int_equal(store_quarantine_accept(t, 2, NOW, "admin:bob", &rv), STORE_EINVAL);
    assert_int_equal(store_quarantine_reject(t, 2, NOW, "admin:bob", NULL, &rv), STORE_EINVAL);
    assert_int_equal(store_quarantine_reject(t, 1, NOW, "admin:bob", NULL, &rv), STORE_EINVAL);
    assert_int_equal(store_quarantine_accept(t, 1, NOW, "admin:bob", &rv), STORE_EINVAL);
    assert_int_equal(store_commit(t), 0);
    field_of(s, "household", "H1", "note", buf, sizeof buf);
    assert_string_equal(buf, "late one");
    assert_int_equal(count_deltas(s), 3);
    assert_int_equal(audit_count(s, "quarantine.reject", "admin:carol", "phone was stolen", NULL),
                     1);

    /* After reopening: states persist; nothing was deleted. */
    s = reopen(s, &d);
    assert_int_equal(list_q(s, STORE_QSTATE_ACCEPTED, &qs), 2);
    assert_int_equal(qs.qid[0], 1);
    assert_int_equal(qs.qid[1], 3);
    assert_int_equal(list_q(s, STORE_QSTATE_REJECTED, &qs), 1);
    assert_int_equal(qs.qid[0], 2);
    assert_int_equal(list_q(s, STORE_QSTATE_PENDING, &qs), 0);
    assert_int_equal(count_quarantine(s), 3);
    const crdt_buf *orig[3] = {&q1env, &q2env, &q3env};
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    /* The counts by state agree with the lists (one walk of the decisions). */
    uint64_t qc[4];
    assert_int_equal(store_quarantine_counts(t, qc), 0);
    assert_int_equal(qc[0], 3);
    assert_int_equal(qc[STORE_QSTATE_PENDING], 0);
    assert_int_equal(qc[STORE_QSTATE_ACCEPTED], 2);
    assert_int_equal(qc[STORE_QSTATE_REJECTED], 1);
    for (uint64_t q = 1; q <= 3; q++) {
        store_qentry e;
        assert_int_equal(store_quarantine_get(t, q, &e), 0);
        assert_int_equal(e.env.n, orig[q - 1]->n);
        assert_memory_equal(e.env.p, orig[q - 1]->p, e.env.n);
        assert_int_equal(e.dev, 7);
        assert_int_equal(e.seq, q + 1);
        crdt_buf_free(&e.env);
    }
    assert_int_equal(store_quarantine_review(t, 2, &rv), 0);
    assert_string_equal(rv.actor, "admin:carol");
    assert_int_equal(rv.decided_ms, NOW + 200);
    assert_int_equal(store_quarantine_review(t, 1, &rv), 0);
    assert_int_equal(rv.decided_ms, NOW + 100);
    assert_int_equal(rv.sseq, 2);
    /* The accepted envelope in the log is the quarantined one, verbatim. */
    crdt_buf logged = {0};
    assert_int_equal(store_get_envelope(t, 2, &logged), 0);
    assert_int_equal(logged.n, q1env.n);
    assert_memory_equal(logged.p, q1env.p, q1env.n);
    crdt_buf_free(&logged);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    crdt_buf_free(&env);
    crdt_buf_free(&q1env);
    crdt_buf_free(&q2env);
    crdt_buf_free(&q3env);
    store_close(s);
    su_dir_remove(&d);
}

/* A clock-ahead delta is in the chain without a server seq: accepting links
 * its dot; a later re-send is then a plain duplicate. */
static void test_accept_clock_ahead(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "qahead");
    store *s = su_store_new(&d, NULL);
    su_dev c;
    su_dev_init(&c, 11);
    crdt_buf e0 = {0}, e1 = {0}, e2 = {0};
    assert_int_equal(push_note(s, &c, "H3", NULL, "C02", "G05", NOW, NOW, &e0).result,
                     STORE_APPLIED);
    store_outcome out = push_note(s, &c, "H3", "from the future", NULL, NULL, NOW + 25 * 3600000ull,
                                  NOW, &e1);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_CLOCK_AHEAD);
    c.clock = 0;
    out = push_note(s, &c, "H3", "corrected", NULL, NULL, NOW + 2, NOW, &e2);
    assert_int_equal(out.result, STORE_APPLIED); /* the chain moved on */
    assert_int_equal(out.sseq, 2);

    store_txn *t;
    store_qreview rv;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_quarantine_accept(t, 1, NOW + 5, "admin:dora", &rv), 0);
    assert_int_equal(rv.sseq, 3);
    assert_int_equal(store_commit(t), 0);
    /* Its HLC is the greatest: it wins the lww. */
    char buf[64];
    field_of(s, "household", "H3", "note", buf, sizeof buf);
    assert_string_equal(buf, "from the future");
    out = su_push(s, &e1, NOW + 6);
    assert_int_equal(out.result, STORE_DUPLICATE);
    assert_int_equal(out.sseq, 3);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&e0);
    crdt_buf_free(&e1);
    crdt_buf_free(&e2);
    store_close(s);
    su_dir_remove(&d);
}

/* A clone pair: the first copy is already merged (accepting it adds nothing
 * to the log); the second is merged under a new server seq. */
static void test_accept_clone(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "qclone");
    store *s = su_store_new(&d, NULL);
    su_dev a, clone;
    su_dev_init(&a, 9);
    enroll(s, &a, "李四");
    crdt_buf e0 = {0}, e1 = {0}, e2 = {0};
    assert_int_equal(push_note(s, &a, "H1", NULL, "C01", "G01", NOW, NOW, &e0).result,
                     STORE_APPLIED);
    clone = a;
    assert_int_equal(push_note(s, &a, "H1", "real", NULL, NULL, NOW + 5, NOW, &e1).result,
                     STORE_APPLIED);
    store_outcome out = push_note(s, &clone, "H1", "clone", NULL, NULL, NOW + 6, NOW, &e2);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_CLONE);
    assert_int_equal(count_quarantine(s), 2);
    assert_int_equal(count_deltas(s), 2);
    assert_int_equal(audit_count(s, "device.freeze", "server", "clone", NULL), 1);

    store_txn *t;
    store_qreview rv;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_quarantine_accept(t, 1, NOW + 10, "admin:erin", &rv), 0);
    assert_int_equal(rv.sseq, 2); /* the copy already in the log */
    assert_int_equal(store_quarantine_accept(t, 2, NOW + 10, "admin:erin", &rv), 0);
    assert_int_equal(rv.sseq, 3);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(count_deltas(s), 3);
    assert_int_equal(audit_count(s, "quarantine.accept", "admin:erin", "already merged as", NULL),
                     1);
    char buf[64];
    field_of(s, "household", "H1", "note", buf, sizeof buf);
    assert_string_equal(buf, "clone"); /* the later HLC */
    /* The device stays frozen: accepting is about data, not trust. */
    store_device dv;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 9, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_FROZEN);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&e0);
    crdt_buf_free(&e1);
    crdt_buf_free(&e2);
    store_close(s);
    su_dir_remove(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_revoke_soft_then_hard),
        cmocka_unit_test(test_rotation_and_list),
        cmocka_unit_test(test_accept_reject),
        cmocka_unit_test(test_accept_clock_ahead),
        cmocka_unit_test(test_accept_clone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
