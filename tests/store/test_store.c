/*
 * test_store.c — the LMDB store: init/open errors, persistence across
 * reopen, idempotency, chain gaps, clones and forks, clocks far ahead,
 * lookups and membership, the scoped feed against a brute-force filter,
 * aggregates against recomputation (verify), map growth from a tiny map,
 * a failed batch leaving nothing behind, the privacy canary, backup and
 * verify, verify catching a corrupted record, dots in their short and long
 * forms (and verify catching a replaced envelope under a short dot),
 * in-order (MDB_APPEND) puts, compressed (packed) envelopes and records, and
 * lookup keys with 8 (or, in older stores, 16) bytes of keyed hash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>
#include <cmocka.h>

#include "internal.h"
#include "storeutil.h"
#include "testutil.h"

#define NOW 1790000000000ull   /* 2026-09-21, a Monday-ish campaign day */

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

/* A household in community/grid and one person in it. */
static void seed_household(store *s, su_dev *dev, const char *hh, const char *comm,
                           const char *grid, uint64_t ms)
{
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "community", comm);
    su_set_str(&o, "grid", grid);
    su_set_str(&o, "address", "幸福路1号");
    su_make(dev, "household", hh, &o, ms, &env, NULL);
    store_outcome out = su_push(s, &env, ms);
    assert_int_equal(out.result, STORE_APPLIED);
    su_ops_free(&o);
    crdt_buf_free(&env);
}

static void seed_person(store *s, su_dev *dev, const char *pid, const char *hh,
                        const char *name, unsigned idx, uint64_t ms)
{
    su_ops o = {0};
    crdt_buf env = {0};
    char idn[19];
    su_idnum(idx, idn);
    su_set_str(&o, "name", name);
    su_set_str(&o, "id_number", idn);
    su_set_str(&o, "household", hh);
    su_set_str(&o, "phone", "13800138000");
    su_make(dev, "person", pid, &o, ms, &env, NULL);
    store_outcome out = su_push(s, &env, ms);
    if (out.result != STORE_APPLIED)
        fail_msg("person %s: result %d code %d (%s)", pid, out.result, out.code,
                 store_strerror(out.code));
    su_ops_free(&o);
    crdt_buf_free(&env);
}

/* An envelope's delta, decoded into a (and its chain hash, if hash). */
static void decode_env(const crdt_buf *env, crdt_arena *a, crdt_delta *d, uint8_t hash[32])
{
    const uint8_t *db, *sig;
    size_t dl;
    int err_op;
    assert_int_equal(wire_envelope_decode(env->p, env->n, &crdt_limits_default, &db, &dl, &sig), 0);
    assert_int_equal(crdt_delta_decode(db, dl, &crdt_limits_default, a, d, &err_op), 0);
    if (hash) assert_int_equal(wire_delta_hash(db, dl, hash), 0);
}

/* A second delta for a record: a person's new phone; its outcome. */
static store_outcome push_phone(store *s, su_dev *dev, const char *pid, const char *phone,
                                uint64_t ms)
{
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "phone", phone);
    su_make(dev, "person", pid, &o, ms, &env, NULL);
    store_outcome out = su_push(s, &env, ms);
    su_ops_free(&o);
    crdt_buf_free(&env);
    return out;
}

/* ---- opening ------------------------------------------------------------------- */

static void test_init_open_errors(void **state)
{
    (void)state;
    su_dir d;
    char err[512];
    store *s = NULL;
    su_dir_make(&d, "open");
    /* Not initialised. */
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), STORE_ENOTINIT);
    assert_non_null(strstr(err, "init"));
    /* Key file inside the data directory is refused. */
    char inside[400];
    mkdir(d.data, 0700);
    snprintf(inside, sizeof inside, "%s/k", d.data);
    assert_int_equal(store_init(d.data, inside, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json",
                                2026, err, sizeof err), STORE_EKEYFILE);
    /* Bad schema path: clear error, nothing created. */
    assert_true(store_init(d.data, d.key, "/nonexistent.json", 2026, err, sizeof err) != 0);
    assert_int_equal(access(d.key, F_OK), -1);
    /* A good init, then a second one refuses. */
    assert_int_equal(store_init(d.data, d.key, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json",
                                2026, err, sizeof err), 0);
    struct stat st;
    assert_int_equal(stat(d.key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(store_init(d.data, d.key, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json",
                                2026, err, sizeof err), STORE_EEXIST);
    /* Missing key file; key file readable by others; a different key. */
    char other[400];
    snprintf(other, sizeof other, "%s/other.key", d.root);
    assert_int_equal(store_open(d.data, other, NULL, &s, err, sizeof err), STORE_EKEYFILE);
    chmod(d.key, 0644);
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), STORE_EKEYFILE);
    assert_non_null(strstr(err, "chmod 600"));
    chmod(d.key, 0600);
    char d2[400];
    snprintf(d2, sizeof d2, "%s/data2", d.root);
    assert_int_equal(store_init(d2, other, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", 2026,
                                err, sizeof err), 0);
    assert_int_equal(store_open(d.data, other, NULL, &s, err, sizeof err), STORE_EKEYFILE);
    assert_non_null(strstr(err, "does not belong"));
    assert_null(s);
    /* And the right key opens it. */
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_campaign_year(s), 2026);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- append semantics --------------------------------------------------------- */

static void test_persistence_idempotency_gap(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "append");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 5);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    su_ops o = {0};
    crdt_buf env = {0}, env2 = {0};
    su_set_str(&o, "name", "张三");
    su_set_str(&o, "household", "H1");
    su_make(&dev, "person", "P1", &o, NOW + 1, &env, NULL);
    store_outcome out = su_push(s, &env, NOW);
    assert_int_equal(out.result, STORE_APPLIED);
    uint64_t sseq = out.sseq;
    /* The same envelope again: a duplicate, same server seq. */
    out = su_push(s, &env, NOW);
    assert_int_equal(out.result, STORE_DUPLICATE);
    assert_int_equal(out.sseq, sseq);
    /* Skip a seq: rejected, naming the expected one. */
    su_ops_reset(&o);
    su_set_str(&o, "note", "skipped");
    su_make(&dev, "person", "P1", &o, NOW + 2, &env2, NULL); /* seq 3 */
    su_make(&dev, "person", "P1", &o, NOW + 3, &env2, NULL); /* seq 4 */
    out = su_push(s, &env2, NOW);
    assert_int_equal(out.result, STORE_REJECTED);
    assert_int_equal(out.code, STORE_EGAP);
    assert_int_equal(out.expected_seq, 3);
    /* Reopen: everything is still there. */
    store_close(s);
    char err[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    crdt_record *r = NULL;
    assert_int_equal(store_get_record(t, "person", "P1", &r), 0);
    const crdt_field *f = crdt_record_field(r, "name", (crdt_blob){NULL, 0});
    assert_non_null(f);
    assert_int_equal(f->e[0].st.dot.dev, 5);
    crdt_record_free(r);
    uint64_t head;
    uint8_t h[32];
    assert_int_equal(store_chain_head(t, 5, &head, h), 0);
    assert_int_equal(head, 2);
    crdt_hlc hwm;
    assert_int_equal(store_hlc_hwm(t, &hwm), 0);
    assert_int_equal(CRDT_HLC_MS(hwm), NOW + 1); /* the skipped deltas never merged */
    crdt_buf got = {0};
    assert_int_equal(store_get_envelope(t, sseq, &got), 0);
    assert_int_equal(got.n, env.n);
    assert_memory_equal(got.p, env.p, env.n); /* verbatim */
    crdt_buf_free(&got);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    crdt_buf_free(&env);
    crdt_buf_free(&env2);
    store_close(s);
    su_dir_remove(&d);
}

static void test_clone_fork_clock(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "clone");
    store *s = su_store_new(&d, NULL);
    su_dev a, clone;
    su_dev_init(&a, 9);
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    store_device dv = {.id = 9, .state = STORE_DEV_ACTIVE, .epoch = 1};
    strcpy(dv.volunteer, "李四");
    assert_int_equal(store_device_put(t, &dv), 0);
    assert_int_equal(store_commit(t), 0);
    seed_household(s, &a, "H1", "C01", "G01", NOW); /* seq 1 */
    clone = a; /* a copied phone: same key, same chain position */
    su_ops o = {0};
    crdt_buf e1 = {0}, e2 = {0};
    su_set_str(&o, "note", "from the real phone");
    su_make(&a, "household", "H1", &o, NOW + 5, &e1, NULL);
    su_ops_reset(&o);
    su_set_str(&o, "note", "from the clone");
    su_make(&clone, "household", "H1", &o, NOW + 6, &e2, NULL);
    assert_int_equal(su_push(s, &e1, NOW).result, STORE_APPLIED);
    store_outcome out = su_push(s, &e2, NOW);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_CLONE);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 9, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_FROZEN);
    assert_string_equal(dv.volunteer, "李四");
    uint64_t nq;
    assert_int_equal(store_quarantine_count(t, &nq), 0);
    assert_int_equal(nq, 2); /* both envelopes kept */
    store_qentry q;
    assert_int_equal(store_quarantine_get(t, 2, &q), 0);
    assert_int_equal(q.reason, STORE_Q_CLONE);
    assert_int_equal(q.env.n, e2.n);
    assert_memory_equal(q.env.p, e2.p, e2.n);
    crdt_buf_free(&q.env);
    store_abort(t);
    /* The frozen device's next delta is held, not merged. */
    su_ops_reset(&o);
    su_set_str(&o, "note", "after freeze");
    su_make(&a, "household", "H1", &o, NOW + 7, &e1, NULL);
    out = su_push(s, &e1, NOW);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_FROZEN);

    /* A fork: right seq, wrong previous hash. */
    su_dev b;
    su_dev_init(&b, 10);
    seed_household(s, &b, "H2", "C01", "G01", NOW);
    memset(b.prev, 0x55, 32);
    su_make(&b, "household", "H2", &o, NOW + 8, &e1, NULL);
    out = su_push(s, &e1, NOW);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_FORK);

    /* A clock 25 h ahead: quarantined, but the chain moves on. */
    su_dev c;
    su_dev_init(&c, 11);
    su_make(&c, "household", "H3", &o, NOW + 25 * 3600 * 1000ull, &e1, NULL);
    out = su_push(s, &e1, NOW);
    assert_int_equal(out.result, STORE_QUARANTINED);
    assert_int_equal(out.code, STORE_Q_CLOCK_AHEAD);
    su_ops_reset(&o);
    su_set_str(&o, "community", "C01");
    su_make(&c, "household", "H3", &o, NOW + 1, &e1, NULL); /* clock corrected */
    /* The device's HLC ran ahead; a corrected device would restart from the
     * server's time, but its seq chain continues. */
    c.clock = 0;
    out = su_push(s, &e1, NOW + 25 * 3600 * 1000ull); /* the server's day has come */
    assert_int_equal(out.result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    crdt_record *r = NULL;
    assert_int_equal(store_get_record(t, "household", "H1", &r), 0);
    const crdt_field *f = crdt_record_field(r, "note", (crdt_blob){NULL, 0});
    crdt_val v;
    assert_int_equal(crdt_val_parse(f->e[0].v, &v), 0);
    assert_int_equal(v.len, strlen("from the real phone"));
    crdt_record_free(r);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    crdt_buf_free(&e1);
    crdt_buf_free(&e2);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- reads ------------------------------------------------------------------------ */

static void test_lookups_members_grid(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "lookup");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 3);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_household(s, &dev, "H2", "C01", "G01", NOW);
    seed_household(s, &dev, "H3", "C01", "G02", NOW);
    seed_person(s, &dev, "P1", "H1", "王小明", 1, NOW);
    seed_person(s, &dev, "P2", "H1", "王小红", 2, NOW);
    seed_person(s, &dev, "P3", "H2", "王小明", 3, NOW);
    store_txn *t;
    store_ids ids;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_household_members(t, "H1", &ids), 0);
    assert_int_equal(ids.n, 2);
    assert_string_equal(ids.id[0], "P1");
    assert_string_equal(ids.id[1], "P2");
    store_ids_free(&ids);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_NAME, "王小明", strlen("王小明"), &ids), 0);
    assert_int_equal(ids.n, 2);
    store_ids_free(&ids);
    char idn[19];
    su_idnum(2, idn);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_IDNUM, idn, 18, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "P2");
    store_ids_free(&ids);
    su_idnum(99, idn);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_IDNUM, idn, 18, &ids), 0);
    assert_int_equal(ids.n, 0); /* a wrong ID number finds nobody */
    store_ids_free(&ids);
    assert_int_equal(store_grid_households(t, "C01", "G01", "", 1, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "H1");
    store_ids_free(&ids);
    assert_int_equal(store_grid_households(t, "C01", "G01", "H1", 10, &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "H2"); /* the next page */
    store_ids_free(&ids);
    store_abort(t);

    /* P2 moves to H3 and changes name: indexes follow. */
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "household", "H3");
    su_set_str(&o, "name", "王晓红");
    su_make(&dev, "person", "P2", &o, NOW + 100, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_household_members(t, "H1", &ids), 0);
    assert_int_equal(ids.n, 1);
    store_ids_free(&ids);
    assert_int_equal(store_household_members(t, "H3", &ids), 0);
    assert_int_equal(ids.n, 1);
    store_ids_free(&ids);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_NAME, "王小红", strlen("王小红"), &ids), 0);
    assert_int_equal(ids.n, 1); /* name is mv and this write observed nothing: both names stay, as a conflict */
    store_ids_free(&ids);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* The feed against a brute-force filter on random data. */
typedef struct feed_collect {
    uint64_t got[4096];
    size_t n;
} feed_collect;

static int collect(uint64_t sseq, const uint8_t *env, size_t len, void *arg)
{
    (void)env;
    (void)len;
    feed_collect *c = arg;
    if (c->n < 4096) c->got[c->n++] = sseq;
    return 0;
}

static void test_feed_bruteforce(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "feed");
    store *s = su_store_new(&d, NULL);
    tu_rng rng;
    tu_rng_init(&rng, tu_seed("store-feed"));
    /* ~125 deltas per household: feed chunks of 64 fill and follow on. */
    enum { NH = 12, NP = 120, NDEV = 6, NDELTAS = 1500 };
    su_dev devs[NDEV];
    for (int i = 0; i < NDEV; i++) su_dev_init(&devs[i], (uint32_t)i + 1);
    static char touched[NDELTAS + 400][8]; /* household index touched, by sseq */
    uint64_t max_sseq = 0;
    su_ops o = {0};
    crdt_buf env = {0};
    /* Households, then persons each fixed in a random household. */
    int person_hh[NP];
    for (int h = 0; h < NH; h++) {
        char id[16];
        snprintf(id, sizeof id, "H%03d", h);
        su_ops_reset(&o);
        su_set_str(&o, "community", "C01");
        su_set_str(&o, "grid", h % 2 ? "G01" : "G02");
        su_make(&devs[0], "household", id, &o, NOW + (uint64_t)h, &env, NULL);
        store_outcome out = su_push(s, &env, NOW);
        assert_int_equal(out.result, STORE_APPLIED);
        touched[out.sseq][0] = (char)h;
        max_sseq = out.sseq;
    }
    for (int p = 0; p < NP; p++) person_hh[p] = -1;
    for (int i = 0; i < NDELTAS; i++) {
        su_dev *dv = &devs[tu_below(&rng, NDEV)];
        su_ops_reset(&o);
        char id[16], hh[16];
        store_outcome out;
        int hsel;
        if (tu_below(&rng, 4) == 0) {
            hsel = (int)tu_below(&rng, NH);
            snprintf(id, sizeof id, "H%03d", hsel);
            su_set_str(&o, "note", "走访记录");
            su_make(dv, "household", id, &o, NOW + 1000 + (uint64_t)i, &env, NULL);
        } else {
            int p = (int)tu_below(&rng, NP);
            if (person_hh[p] < 0) person_hh[p] = (int)tu_below(&rng, NH);
            hsel = person_hh[p];
            snprintf(id, sizeof id, "P%03d", p);
            snprintf(hh, sizeof hh, "H%03d", hsel);
            su_set_str(&o, "household", hh);
            su_set_str(&o, "note", "备注");
            su_make(dv, "person", id, &o, NOW + 1000 + (uint64_t)i, &env, NULL);
        }
        out = su_push(s, &env, NOW);
        assert_int_equal(out.result, STORE_APPLIED);
        touched[out.sseq][0] = (char)hsel;
        max_sseq = out.sseq;
    }
    /* Random scopes and cursors, paged; compare with the brute-force list. */
    for (int q = 0; q < 50; q++) {
        bool in[NH] = {0};
        const char *scope[NH];
        char names[NH][16];
        size_t ns = 0;
        size_t want_n = 1 + tu_below(&rng, 10);
        for (size_t k = 0; k < want_n; k++) {
            int h = (int)tu_below(&rng, NH);
            if (in[h]) continue;
            in[h] = true;
            snprintf(names[ns], 16, "H%03d", h);
            scope[ns] = names[ns];
            ns++;
        }
        uint64_t after = tu_below(&rng, max_sseq);
        feed_collect *c = calloc(1, sizeof *c);
        store_txn *t;
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        uint64_t cur = after, next;
        for (;;) {
            size_t before = c->n;
            assert_int_equal(store_feed(t, scope, ns, cur, 1 + tu_below(&rng, 20), collect, c,
                                        &next), 0);
            if (c->n == before) break;
            assert_true(next > cur);
            cur = next;
        }
        store_abort(t);
        size_t k = 0;
        for (uint64_t sq = after + 1; sq <= max_sseq; sq++) {
            if (!in[(int)touched[sq][0]]) continue;
            if (k >= c->n || c->got[k] != sq)
                fail_msg("query %d: feed missing or misordered sseq %llu", q,
                         (unsigned long long)sq);
            k++;
        }
        assert_int_equal(k, c->n);
        free(c);
    }
    assert_int_equal(verify_problems(s), 0);

    /* A household's feed as a store before format 3 left it (an entry per sseq,
     * empty) for its first half, then a chunk: the same feed, and the
     * next delta extends the chunk. */
    /* (The busiest household: ~125 of them, more than one chunk.) */
    size_t per[NH] = {0}, hb = 0;
    for (uint64_t sq = 1; sq <= max_sseq; sq++) per[(int)touched[sq][0]]++;
    for (size_t h = 1; h < NH; h++)
        if (per[h] > per[hb]) hb = h;
    char hname[16];
    snprintf(hname, sizeof hname, "H%03u", (unsigned)hb % 1000u);
    feed_collect *all = calloc(1, sizeof *all);
    const char *h0[] = {hname};
    store_txn *t;
    uint64_t nx;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_feed(t, h0, 1, 0, SIZE_MAX, collect, all, &nx), 0);
    assert_true(all->n > 64 && all->n < 4000);
    for (size_t i = 0; i < all->n; i++) assert_int_equal(store_feed_has(t, hname, all->got[i]), 0);
    assert_int_equal(store_feed_has(t, hname, all->got[all->n - 1] + 1), STORE_ENOTFOUND);
    MDB_cursor *fc;
    MDB_val fk, fv;
    assert_int_equal(mdb_cursor_open(t->txn, t->s->dbi[DB_FEED], &fc), 0);
    uint8_t pre[5 + 8];
    memcpy(pre, hname, 5); /* "Hnnn" and its 0 */
    fk = (MDB_val){5, pre};
    while (mdb_cursor_get(fc, &fk, &fv, MDB_SET_RANGE) == 0 && fk.mv_size == 13 &&
           !memcmp(fk.mv_data, pre, 5))
        assert_int_equal(mdb_cursor_del(fc, 0), 0), fk = (MDB_val){5, pre};
    mdb_cursor_close(fc);
    size_t half = all->n / 2;
    for (size_t i = 0; i < half; i++) {
        be64(pre + 5, all->got[i]);
        assert_int_equal(store_put(t, DB_FEED, pre, 13, "", 0), 0);
    }
    uint8_t cv[64 * 10];
    size_t cn = 0;
    for (size_t i = half + 1; i < all->n; i++) cn += store_leb128(cv + cn, all->got[i] - all->got[i - 1]);
    be64(pre + 5, all->got[half]);
    assert_int_equal(store_put(t, DB_FEED, pre, 13, cv, cn), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(verify_problems(s), 0);
    feed_collect *again = calloc(1, sizeof *again);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    for (uint64_t cur = 0;;) { /* paged, from every place */
        size_t before = again->n;
        assert_int_equal(store_feed(t, h0, 1, cur, 7, collect, again, &nx), 0);
        if (again->n == before) break;
        cur = nx;
    }
    assert_int_equal(again->n, all->n);
    assert_memory_equal(again->got, all->got, all->n * sizeof all->got[0]);
    store_abort(t);
    su_ops_reset(&o);
    su_set_str(&o, "note", "再访");
    su_make(&devs[0], "household", hname, &o, NOW + 5000, &env, NULL);
    store_outcome o2 = su_push(s, &env, NOW);
    assert_int_equal(o2.result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_feed_has(t, hname, o2.sseq), 0);
    be64(pre + 5, o2.sseq);
    if (all->n - half < 64) /* room in the chunk: it went there */
        assert_int_equal(store_get(t, DB_FEED, pre, 13, &fv), STORE_ENOTFOUND);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    free(all);
    free(again);
    su_ops_free(&o);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- aggregates --------------------------------------------------------------- */

typedef struct hist {
    uint32_t day[8];
    int64_t persons[8], enrolled[8];
    int n;
} hist;

static int hist_cb(uint32_t day, int64_t persons, int64_t enrolled, int64_t paid, void *arg)
{
    hist *h = arg;
    (void)paid;
    if (h->n < 8) {
        h->day[h->n] = day;
        h->persons[h->n] = persons;
        h->enrolled[h->n] = enrolled;
        h->n++;
    }
    return 0;
}

static void test_aggregates(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "agg");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 2);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_household(s, &dev, "H2", "C01", "G02", NOW);
    seed_person(s, &dev, "P1", "H1", "甲", 1, NOW);
    seed_person(s, &dev, "P2", "H1", "乙", 2, NOW);
    seed_person(s, &dev, "P3", "H2", "丙", 3, NOW);
    su_ops o = {0};
    crdt_buf env = {0};
    /* P1 paid for 2026 and is 低保; P2 is 特困 and not enrolled; a visit to P3. */
    su_set_keyed(&o, "payment", 2026, "已缴费");
    su_add(&o, "tags", "低保");
    su_make(&dev, "person", "P1", &o, NOW + 10, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    su_ops_reset(&o);
    su_add(&o, "tags", "特困");
    su_make(&dev, "person", "P2", &o, NOW + 11, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    su_ops_reset(&o);
    su_visit(&o, "visits", "2026-09-21", NULL);
    su_make(&dev, "person", "P3", &o, NOW + 12, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);

    store_txn *t;
    store_agg a;
    size_t ng;
    const char *const *groups = store_group_names(s, &ng);
    int g_dibao = -1, g_tekun = -1;
    for (size_t i = 0; i < ng; i++) {
        if (!strcmp(groups[i], "低保")) g_dibao = (int)i;
        if (!strcmp(groups[i], "特困")) g_tekun = (int)i;
    }
    assert_true(g_dibao >= 0 && g_tekun >= 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_agg_get(t, "C01", "G01", NOW, &a), 0);
    assert_int_equal(a.persons, 2);
    assert_int_equal(a.enrolled, 1);
    assert_int_equal(a.paid, 1);
    assert_int_equal(a.group[g_dibao], 1);
    assert_int_equal(a.group[g_tekun], 1);
    assert_int_equal(a.group_unenrolled[g_tekun], 1);
    assert_int_equal(a.group_unenrolled[g_dibao], 0);
    assert_int_equal(store_agg_get(t, "C01", "G02", NOW, &a), 0);
    assert_int_equal(a.persons, 1);
    assert_int_equal(a.visits_week, 1);
    assert_int_equal(store_agg_get(t, "C01", "G02", NOW + 8 * 86400000ull, &a), 0);
    assert_int_equal(a.visits_week, 0); /* next week */
    assert_int_equal(store_agg_get(t, "C01", NULL, NOW, &a), 0);
    assert_int_equal(a.persons, 3);
    assert_int_equal(store_agg_get(t, NULL, NULL, NOW, &a), 0);
    assert_int_equal(a.persons, 3);
    store_abort(t);

    /* H1 moves to grid G02: its members' contributions move with it. */
    su_ops_reset(&o);
    su_set_str(&o, "grid", "G02");
    su_make(&dev, "household", "H1", &o, NOW + 20, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    /* P3 deceased: no longer counted. */
    su_ops_reset(&o);
    su_set_str(&o, "life_status", "死亡");
    su_make(&dev, "person", "P3", &o, NOW + 21, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_agg_get(t, "C01", "G01", NOW, &a), 0);
    assert_int_equal(a.persons, 0);
    assert_int_equal(store_agg_get(t, "C01", "G02", NOW, &a), 0);
    assert_int_equal(a.persons, 2);
    assert_int_equal(a.paid, 1);
    assert_int_equal(a.visits_week, 1); /* the visit happened; still counted */
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* Daily snapshots make coverage over the campaign. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_agg_snapshot(t, NOW), 0);
    assert_int_equal(store_agg_snapshot(t, NOW + 86400000ull), 0);
    assert_int_equal(store_commit(t), 0);
    hist h = {0};
    uint32_t day = (uint32_t)(NOW / 86400000ull);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_agg_history(t, "", day - 5, day + 5, hist_cb, &h), 0);
    assert_int_equal(h.n, 2);
    assert_int_equal(h.day[0], day);
    assert_int_equal(h.persons[0], 2);  /* P1, P2 alive (P3 deceased) */
    assert_int_equal(h.enrolled[0], 1);
    h.n = 0;
    assert_int_equal(store_agg_history(t, "C01", day, day, hist_cb, &h), 0);
    assert_int_equal(h.n, 1);
    store_abort(t);
    su_ops_free(&o);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* Random histories: aggregates always equal the recomputation. */
static void test_aggregates_random(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "aggrand");
    store *s = su_store_new(&d, NULL);
    tu_rng rng;
    tu_rng_init(&rng, tu_seed("store-agg"));
    su_dev devs[4];
    for (int i = 0; i < 4; i++) su_dev_init(&devs[i], (uint32_t)i + 20);
    static const char *const comms[] = {"C01", "C02"}, *const grids[] = {"G1", "G2", "G3"};
    static const char *const tags[] = {"特困", "低保", "返贫致贫", "灵活就业"};
    static const char *const pays[] = {"已缴费", "未缴费", "代缴"};
    static const char *const lifes[] = {"正常", "死亡", "迁出"};
    su_ops o = {0};
    crdt_buf env = {0};
    for (int i = 0; i < 600; i++) {
        su_dev *dv = &devs[tu_below(&rng, 4)];
        char id[16];
        su_ops_reset(&o);
        if (tu_below(&rng, 5) == 0) {
            snprintf(id, sizeof id, "H%d", (int)tu_below(&rng, 8));
            su_set_str(&o, "community", comms[tu_below(&rng, 2)]);
            su_set_str(&o, "grid", grids[tu_below(&rng, 3)]);
            if (tu_below(&rng, 2)) su_visit(&o, "visits", "2026-09-2" "1", NULL);
            su_make(dv, "household", id, &o, NOW + (uint64_t)i, &env, NULL);
        } else {
            char hh[16];
            snprintf(id, sizeof id, "P%d", (int)tu_below(&rng, 30));
            switch (tu_below(&rng, 5)) {
            case 0:
                snprintf(hh, sizeof hh, "H%d", (int)tu_below(&rng, 9)); /* H8 never exists */
                su_set_str(&o, "household", hh);
                break;
            case 1: su_set_keyed(&o, "payment", 2026, pays[tu_below(&rng, 3)]); break;
            case 2: su_add(&o, "tags", tags[tu_below(&rng, 4)]); break;
            case 3: su_set_str(&o, "life_status", lifes[tu_below(&rng, 3)]); break;
            default:
                if (tu_below(&rng, 3)) su_visit(&o, "visits", "2026-09-22", NULL);
                else su_del(&o);
                break;
            }
            su_make(dv, "person", id, &o, NOW + (uint64_t)i, &env, NULL);
        }
        store_outcome out = su_push(s, &env, NOW);
        if (out.result != STORE_APPLIED)
            fail_msg("delta %d: result %d code %d (%s)", i, out.result, out.code,
                     store_strerror(out.code));
        if (i % 100 == 99) assert_int_equal(verify_problems(s), 0);
    }
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- resilience ------------------------------------------------------------------ */

static size_t map_size(store *s)
{
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    return info.me_mapsize;
}

static void test_map_growth_and_full(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "map");
    store_opts opts = {.map_initial = 256 * 1024, .map_max = 64 << 20};
    store *s = su_store_new(&d, &opts);
    size_t initial = map_size(s);
    su_dev dev;
    su_dev_init(&dev, 1);
    su_ops o = {0};
    crdt_buf env = {0};
    char note[950];
    memset(note, 'x', sizeof note - 1);
    note[sizeof note - 1] = 0;
    for (int i = 0; i < 800; i++) {
        char id[16];
        snprintf(id, sizeof id, "H%d", i);
        su_ops_reset(&o);
        su_set_str(&o, "note", note);
        su_make(&dev, "household", id, &o, NOW + (uint64_t)i, &env, NULL);
        assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    }
    assert_true(map_size(s) > initial);
    assert_int_equal(verify_problems(s), 0);
    store_close(s);
    su_dir_remove(&d);

    /* At its maximum: a batch that does not fit fails whole and retryably. */
    su_dir_make(&d, "mapfull");
    store_opts small = {.map_initial = 256 * 1024, .map_max = 256 * 1024};
    s = su_store_new(&d, &small);
    su_dev_init(&dev, 1);
    int applied = 0, rc = 0;
    for (int i = 0; i < 2000 && rc == 0; i++) {
        char id[16];
        snprintf(id, sizeof id, "H%d", i);
        su_ops_reset(&o);
        su_set_str(&o, "note", note);
        su_make(&dev, "household", id, &o, NOW + (uint64_t)i, &env, NULL);
        store_outcome out;
        const uint8_t *e = env.p;
        size_t n = env.n;
        store_txn *t;
        uint64_t before_sseq, after_sseq;
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        store_last_sseq(t, &before_sseq);
        store_abort(t);
        rc = store_append_batch(s, &e, &n, 1, NOW, 86400000ull, &out);
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        store_last_sseq(t, &after_sseq);
        store_abort(t);
        if (rc == 0) {
            applied++;
            assert_int_equal(after_sseq, before_sseq + 1);
        } else {
            assert_int_equal(rc, STORE_EMAPFULL);
            assert_true(store_retryable(rc));
            assert_int_equal(after_sseq, before_sseq); /* nothing partial */
            assert_int_equal(out.result, 0);
        }
    }
    assert_int_equal(rc, STORE_EMAPFULL);
    assert_true(applied > 10);
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}


/* Two processes (as doorstepd and doorstepctl are) append to one store at
 * the same time, one of them growing the map: both succeed, server seqs are
 * unique, and the store verifies. */
static int append_many(const su_dir *d, uint32_t dev_id, int n, size_t map_initial)
{
    char err[256];
    store *s = NULL;
    store_opts o = {.map_initial = map_initial, .map_max = 1u << 30, .no_sync = true};
    int orc = store_open(d->data, d->key, &o, &s, err, sizeof err);
    if (orc) {
        fprintf(stderr, "device %u: open: %s\n", dev_id, err);
        return 1;
    }
    su_dev dev;
    su_dev_init(&dev, dev_id);
    su_ops ops = {0};
    crdt_buf env = {0};
    char note[900];
    memset(note, 'n', sizeof note - 1);
    note[sizeof note - 1] = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "H%u-%d", dev_id, i);
        su_ops_reset(&ops);
        su_set_str(&ops, "note", note);
        su_make(&dev, "household", id, &ops, NOW + (uint64_t)i, &env, NULL);
        store_outcome out;
        const uint8_t *e = env.p;
        size_t len = env.n;
        int rc = store_append_batch(s, &e, &len, 1, NOW, 86400000ull, &out);
        if (rc || out.result != STORE_APPLIED) {
            fprintf(stderr, "device %u delta %d: %s (result %d)\n", dev_id, i,
                    store_strerror(rc), out.result);
            bad++;
        }
    }
    su_ops_free(&ops);
    crdt_buf_free(&env);
    store_close(s);
    return bad ? 1 : 0;
}

static void test_two_processes(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "procs");
    store_opts small = {.map_initial = 256 * 1024, .map_max = 1u << 30};
    store *s = su_store_new(&d, &small);
    store_close(s);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(append_many(&d, 100, 400, 256 * 1024));
    int rc_parent = append_many(&d, 200, 400, 256 * 1024);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(rc_parent, 0);
    char err[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    store_txn *t;
    uint64_t last, head;
    uint8_t h[32];
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &last), 0);
    assert_int_equal(last, 800);
    assert_int_equal(store_chain_head(t, 100, &head, h), 0);
    assert_int_equal(head, 400);
    assert_int_equal(store_chain_head(t, 200, &head, h), 0);
    assert_int_equal(head, 400);
    store_abort(t);
    assert_true(map_size(s) > 256 * 1024);
    assert_int_equal(verify_problems(s), 0);
    store_close(s);
    su_dir_remove(&d);
}

/* A batch where one envelope is garbage: that one is rejected, the rest apply. */
static void test_batch_rejects_individually(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "batch");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 4);
    su_ops o = {0};
    crdt_buf e[3] = {{0}};
    su_set_str(&o, "community", "C01");
    su_make(&dev, "household", "H1", &o, NOW, &e[0], NULL);
    su_ops_reset(&o);
    su_set_str(&o, "phone", "12345"); /* invalid phone: schema rejects */
    crdt_buf bad = {0};
    su_dev tmp = dev;
    su_make(&tmp, "household", "H1", &o, NOW + 1, &bad, NULL);
    su_ops_reset(&o);
    su_set_str(&o, "grid", "G01");
    su_make(&dev, "household", "H1", &o, NOW + 2, &e[2], NULL);
    /* e[2] has seq 2 (tmp's seq-2 delta was never accepted). */
    const uint8_t *envs[3] = {e[0].p, bad.p, e[2].p};
    size_t lens[3] = {e[0].n, bad.n, e[2].n};
    store_outcome outs[3];
    assert_int_equal(store_append_batch(s, envs, lens, 3, NOW, 86400000ull, outs), 0);
    assert_int_equal(outs[0].result, STORE_APPLIED);
    assert_int_equal(outs[1].result, STORE_REJECTED);
    assert_int_equal(outs[1].code, CRDT_EPHONE);
    assert_int_equal(outs[2].result, STORE_APPLIED);
    su_ops_free(&o);
    crdt_buf_free(&e[0]);
    crdt_buf_free(&e[2]);
    crdt_buf_free(&bad);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- privacy, backup, verify --------------------------------------------------------- */

static bool file_contains(const char *path, const void *needle, size_t n)
{
    size_t len;
    char *buf = tu_read_file(path, &len);
    assert_non_null(buf);
    bool found = false;
    for (size_t i = 0; i + n <= len && !found; i++)
        if (memcmp(buf + i, needle, n) == 0) found = true;
    free(buf);
    return found;
}

static void test_privacy_canary(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "canary");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 8);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_person(s, &dev, "P1", "H1", "欧阳震华", 4242, NOW);
    char idn[19];
    su_idnum(4242, idn);
    store_close(s);
    char path[400];
    snprintf(path, sizeof path, "%s/data.mdb", d.data);
    /* Make sure the test would see the strings if they were there. */
    assert_true(file_contains(DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", "household", 9));
    assert_false(file_contains(path, "欧阳震华", strlen("欧阳震华")));
    assert_false(file_contains(path, idn, 18));
    assert_false(file_contains(path, "13800138000", 11));
    assert_false(file_contains(path, "幸福路", strlen("幸福路")));
    su_dir_remove(&d);
}

/* The unsealed bytes of a value, as stored (before decompression). */
static void raw_plain(store_txn *t, int db, const void *k, size_t kn, crdt_buf *out)
{
    MDB_val key = {kn, (void *)k}, v;
    assert_int_equal(store_get(t, db, k, kn, &v), 0);
    assert_int_equal(store_unseal(t->s, db, &key, v.mv_data, v.mv_size, out), 0);
}

/* Envelopes and records are compressed with the schema dictionary (meta
 * "zdict1") before sealing; values stored as they are (older stores, or
 * no gain) still read; a format 1 store (made before compression) is
 * upgraded when opened; damage is STORE_ECORRUPT. */
static void test_packed_values(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "packed");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    crdt_buf plain = {0}, env = {0};
    crdt_record *r = NULL;
    char err[256];
    MDB_val v;

    /* A store made before compression: format 1, no dictionary in meta. */
    uint8_t fmt[4];
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_get(t, DB_META, "format", 6, &v), 0);
    assert_int_equal(rd32(v.mv_data), STORE_FORMAT);
    assert_int_equal(store_get(t, DB_META, "zdict1", 6, &v), 0); /* store_init wrote it */
    assert_int_equal(store_del(t, DB_META, "zdict1", 6), 0);
    be32(fmt, 1);
    assert_int_equal(store_put(t, DB_META, "format", 6, fmt, 4), 0);
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    /* Opening it upgrades it: dictionary and format 2 (older binaries refuse it). */
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_META, "zdict1", 6, &v), 0);
    assert_int_equal(store_get(t, DB_META, "format", 6, &v), 0);
    assert_int_equal(rd32(v.mv_data), 2);
    store_abort(t);
    su_dev dev;
    su_dev_init(&dev, 3);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_person(s, &dev, "P1", "H1", "欧阳震华", 11, NOW);
    /* Stored in full (not a reference to its one delta) once it has two. */
    assert_int_equal(push_phone(s, &dev, "P1", "13900139000", NOW + 1).result, STORE_APPLIED);
    store_close(s);
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_record(t, "person", "P1", &r), 0);
    crdt_record_free(r);
    r = NULL;
    assert_int_equal(store_get_envelope(t, 2, &env), 0);
    assert_int_equal(env.p[0], 0x82);
    /* Stored: tag 0x01 and a zstd frame, smaller than the envelope. */
    uint8_t k2[8];
    be64(k2, 2);
    raw_plain(t, DB_DELTAS, k2, 8, &plain);
    assert_int_equal(plain.p[0], 0x01);
    assert_true(plain.n < env.n);
    raw_plain(t, DB_RECORDS, "person\0P1", 9, &plain);
    assert_int_equal(plain.p[0], 0x01);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* Values stored as they are read as they are: an envelope sealed
     * before compression existed, and a value that would not shrink. */
    uint8_t rnd[200];
    randombytes_buf(rnd, sizeof rnd);
    rnd[0] = 0x82;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, k2, 8, env.p, env.n), 0);
    assert_int_equal(store_put_packed(t, DB_RECORDS, "x\0r", 3, rnd, sizeof rnd, false), 0);
    raw_plain(t, DB_RECORDS, "x\0r", 3, &plain);
    assert_int_equal(plain.n, sizeof rnd);
    assert_int_equal(store_get_packed(t, DB_RECORDS, "x\0r", 3, &plain), 0);
    assert_memory_equal(plain.p, rnd, sizeof rnd);
    /* Not msgpack-looking: refused at the door (it could not read back). */
    rnd[0] = 0x01;
    assert_int_equal(store_put_packed(t, DB_RECORDS, "x\0r", 3, rnd, sizeof rnd, false),
                     STORE_EINVAL);
    assert_int_equal(store_del(t, DB_RECORDS, "x\0r", 3), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(verify_problems(s), 0);

    /* Damage under a valid seal: a bad frame, an unknown tag. */
    uint8_t bad[40];
    memset(bad, 0x33, sizeof bad);
    bad[0] = 0x01;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put_sealed(t, DB_RECORDS, "person\0P1", 9, bad, sizeof bad), 0);
    assert_int_equal(store_get_record(t, "person", "P1", &r), STORE_ECORRUPT);
    assert_null(r);
    bad[0] = 0x05;
    assert_int_equal(store_put_sealed(t, DB_RECORDS, "person\0P1", 9, bad, sizeof bad), 0);
    assert_int_equal(store_get_record(t, "person", "P1", &r), STORE_ECORRUPT);
    /* A frame cut short. */
    raw_plain(t, DB_DELTAS, (uint8_t[8]){0, 0, 0, 0, 0, 0, 0, 1}, 8, &plain);
    assert_int_equal(plain.p[0], 0x01);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, (uint8_t[8]){0, 0, 0, 0, 0, 0, 0, 1}, 8,
                                      plain.p, plain.n - 5), 0);
    assert_int_equal(store_get_envelope(t, 1, &env), STORE_ECORRUPT);
    store_abort(t);
    /* Compressed values, but the dictionary is gone from a format 2 store:
     * it opens (nothing is made again), packed values are STORE_ECORRUPT,
     * new ones are stored uncompressed. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_del(t, DB_META, "zdict1", 6), 0);
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_get(t, DB_META, "zdict1", 6, &v), STORE_ENOTFOUND);
    assert_int_equal(store_get_record(t, "person", "P1", &r), STORE_ECORRUPT);
    uint8_t val[300];
    memset(val, 'a', sizeof val); /* would compress well */
    val[0] = 0x82;
    assert_int_equal(store_put_packed(t, DB_RECORDS, "x\0z", 3, val, sizeof val, false), 0);
    raw_plain(t, DB_RECORDS, "x\0z", 3, &plain);
    assert_int_equal(plain.n, sizeof val);
    store_abort(t);
    assert_true(verify_problems(s) > 0);
    /* A format this version does not know is refused. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    be32(fmt, STORE_FORMAT + 1);
    assert_int_equal(store_put(t, DB_META, "format", 6, fmt, 4), 0);
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    s = NULL;
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), STORE_EFORMAT);
    assert_non_null(strstr(err, "a newer Doorstep wrote or upgraded it")); /* says what to do */

    crdt_buf_free(&plain);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* Lookup keys hold 8 bytes of keyed hash; a store made before (no meta
 * "lookup_hlen") keeps 16 and its lookups still work. */
static void test_lookup_hash_len(void **state)
{
    (void)state;
    char err[256], idn[19];
    for (int old = 0; old < 2; old++) {
        su_dir d;
        su_dir_make(&d, old ? "lookup16" : "lookup8");
        store *s = su_store_new(&d, NULL);
        store_txn *t;
        MDB_val v;
        if (old) {
            assert_int_equal(store_begin(s, STORE_RW, &t), 0);
            assert_int_equal(store_del(t, DB_META, "lookup_hlen", 11), 0);
            assert_int_equal(store_commit(t), 0);
            store_close(s);
            assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
        }
        su_dev dev;
        su_dev_init(&dev, 3);
        seed_household(s, &dev, "H1", "C01", "G01", NOW);
        seed_person(s, &dev, "P1", "H1", "王小明", 1, NOW);
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        if (!old) {
            assert_int_equal(store_get(t, DB_META, "lookup_hlen", 11, &v), 0);
            assert_int_equal(v.mv_size, 1);
            assert_int_equal(*(uint8_t *)v.mv_data, 8);
        }
        MDB_cursor *c;
        MDB_val k;
        size_t hl = old ? 16 : 8;
        assert_int_equal(mdb_cursor_open(t->txn, s->dbi[DB_LOOKUP], &c), 0);
        int n = 0;
        for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), n++) {
            assert_int_equal(k.mv_size, 1 + hl + 2);
            assert_memory_equal((uint8_t *)k.mv_data + 1 + hl, "P1", 2);
        }
        mdb_cursor_close(c);
        assert_int_equal(n, 3); /* ID number, phone, name */
        store_ids ids;
        su_idnum(1, idn);
        assert_int_equal(store_lookup(t, STORE_LOOKUP_IDNUM, idn, 18, &ids), 0);
        assert_int_equal(ids.n, 1);
        assert_string_equal(ids.id[0], "P1");
        store_ids_free(&ids);
        assert_int_equal(store_lookup(t, STORE_LOOKUP_NAME, "王小明", strlen("王小明"), &ids), 0);
        assert_int_equal(ids.n, 1);
        store_ids_free(&ids);
        su_idnum(2, idn);
        assert_int_equal(store_lookup(t, STORE_LOOKUP_IDNUM, idn, 18, &ids), 0);
        assert_int_equal(ids.n, 0);
        store_ids_free(&ids);
        store_abort(t);
        assert_int_equal(verify_problems(s), 0);
        /* Any other length is damage. */
        assert_int_equal(store_begin(s, STORE_RW, &t), 0);
        assert_int_equal(store_put(t, DB_META, "lookup_hlen", 11, "\x07", 1), 0);
        assert_int_equal(store_commit(t), 0);
        store_close(s);
        s = NULL;
        assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), STORE_ECORRUPT);
        su_dir_remove(&d);
    }
}

/* The dictionary depends on the schema alone. */
static void test_zdict_deterministic(void **state)
{
    (void)state;
    crdt_schema *sc = NULL;
    char err[256];
    crdt_buf a = {0}, b = {0};
    assert_int_equal(wire_schema_load_file(DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", &sc,
                                           err, sizeof err), 0);
    assert_int_equal(store_zdict_build(sc, &a), 0);
    assert_int_equal(store_zdict_build(sc, &b), 0);
    assert_true(a.n > 1000);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.p, b.p, a.n);
    crdt_schema_free(sc);
    crdt_buf_free(&a);
    crdt_buf_free(&b);
}

static void test_backup_verify_and_corruption(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "backup");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 6);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_person(s, &dev, "P1", "H1", "赵六", 7, NOW);
    seed_person(s, &dev, "P2", "H1", "钱七", 8, NOW);
    char dest[400], err[256];
    snprintf(dest, sizeof dest, "%s/backup", d.root);
    assert_int_equal(mkdir(dest, 0700), 0);
    assert_int_equal(store_backup(s, dest, err, sizeof err), 0);
    store *b = NULL;
    assert_int_equal(store_open(dest, d.key, NULL, &b, err, sizeof err), 0);
    assert_int_equal(verify_problems(b), 0);
    store_txn *t;
    crdt_record *r = NULL;
    assert_int_equal(store_begin(b, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_record(t, "person", "P2", &r), 0);
    crdt_record_free(r);
    store_abort(t);
    store_close(b);

    /* Corrupt P1: replace its stored record with P2's content re-sealed under
     * P1's key (authenticates, but is not what the log says). */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    crdt_record *p2 = NULL;
    assert_int_equal(store_get_record(t, "person", "P2", &p2), 0);
    strcpy(p2->id, "P1");
    crdt_buf enc = {0};
    assert_int_equal(crdt_record_encode(p2, &enc), 0);
    assert_int_equal(store_put_sealed(t, DB_RECORDS, "person\0P1", 9, enc.p, enc.n), 0);
    assert_int_equal(store_commit(t), 0);
    assert_true(verify_problems(s) > 0);
    /* And a record whose sealed bytes were flipped fails to unseal. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    MDB_val v;
    assert_int_equal(store_get(t, DB_RECORDS, "person\0P2", 9, &v), 0);
    uint8_t *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size / 2] ^= 1;
    assert_int_equal(store_put(t, DB_RECORDS, "person\0P2", 9, copy, v.mv_size), 0);
    free(copy);
    crdt_record *x = NULL;
    assert_int_equal(store_get_record(t, "person", "P2", &x), STORE_ECORRUPT);
    assert_null(x);
    store_abort(t);
    crdt_buf_free(&enc);
    crdt_record_free(p2);
    store_close(s);
    su_dir_remove(&d);
}

/* The envelope of (dev, seq) re-encoded with another key epoch and signed
 * again: same ops, same stamp (the record does not change), other hash. */
static void reepoch(const su_dev *dev, const crdt_buf *env, crdt_buf *out)
{
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int err_op;
    uint8_t nsig[64];
    crdt_buf bytes = {0};
    crdt_arena *a = crdt_arena_new(0);
    assert_non_null(a);
    assert_int_equal(wire_envelope_decode(env->p, env->n, &crdt_limits_default, &db, &dl,
                                          &sig), 0);
    assert_int_equal(crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op), 0);
    d.epoch = 2;
    assert_int_equal(crdt_delta_encode(&d, &bytes), 0);
    assert_int_equal(wire_delta_sign(bytes.p, bytes.n, dev->sk, nsig), 0);
    crdt_buf_reset(out);
    assert_int_equal(wire_envelope_encode(bytes.p, bytes.n, nsig, out), 0);
    crdt_buf_free(&bytes);
    crdt_arena_free(a);
}

/* dots keep (sseq, hash) only for held-back deltas; an applied dot keeps its
 * sseq and the hash is recomputed from deltas[sseq] on a resend.  The long
 * form of stores written before still reads.  verify still catches an
 * envelope replaced under an applied dot: the next delta's previous hash
 * (or the chain head) no longer matches. */
static void test_dots_short_form(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "dots");
    store *s = su_store_new(&d, NULL);
    su_dev a;
    su_dev_init(&a, 4);
    su_ops o = {0};
    crdt_buf env[4] = {{0}}, forged = {0};
    uint64_t sseq[4] = {0};
    for (int i = 1; i <= 3; i++) {
        char note[32];
        snprintf(note, sizeof note, "visit %d", i);
        su_ops_reset(&o);
        su_set_str(&o, "note", note);
        su_make(&a, "household", "H1", &o, NOW + (uint64_t)i, &env[i], NULL);
        store_outcome out = su_push(s, &env[i], NOW);
        assert_int_equal(out.result, STORE_APPLIED);
        sseq[i] = out.sseq;
    }
    /* A clock far ahead: held back, its dot keeps the hash. */
    su_dev c;
    su_dev_init(&c, 5);
    crdt_buf held = {0};
    su_make(&c, "household", "H2", &o, NOW + 25 * 3600 * 1000ull, &held, NULL);
    assert_int_equal(su_push(s, &held, NOW).code, STORE_Q_CLOCK_AHEAD);

    store_txn *t;
    MDB_val v;
    uint8_t dk[12];
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    be32(dk, 4);
    be64(dk + 4, 2);
    /* Applied dots: slots of the device's chunk of 64 seqs, no entry of their own. */
    uint8_t ck[13];
    be32(ck, 4);
    be64(ck + 4, 0);
    ck[12] = 'C';
    assert_int_equal(store_get(t, DB_DOTS, dk, 12, &v), STORE_ENOTFOUND);
    assert_int_equal(store_get(t, DB_DOTS, ck, 13, &v), 0);
    assert_int_equal(v.mv_size, STORE_DOT_CHUNK_VAL);
    for (unsigned i = 0; i < STORE_DOT_CHUNK; i++)
        assert_int_equal(store_dot_slot(v.mv_data, i), i >= 1 && i <= 3 ? sseq[i] : 0);
    uint8_t held_key[12];
    be32(held_key, 5);
    be64(held_key + 4, 1);
    assert_int_equal(store_get(t, DB_DOTS, held_key, 12, &v), 0);
    assert_int_equal(v.mv_size, 40);
    assert_int_equal(rd64(v.mv_data), 0);
    store_abort(t);
    /* A resend is a duplicate (hash recomputed from the envelope); a clone
     * of seq 2 is still told apart. */
    store_outcome out = su_push(s, &env[2], NOW);
    assert_int_equal(out.result, STORE_DUPLICATE);
    assert_int_equal(out.sseq, sseq[2]);
    assert_int_equal(verify_problems(s), 0);

    /* The forms of stores written before format 3 still read: a dot of
     * its own per seq, sseq only or sseq and hash. */
    uint8_t h2[32], lv[40];
    const uint8_t *db, *sig;
    size_t dl;
    assert_int_equal(wire_envelope_decode(env[2].p, env[2].n, &crdt_limits_default, &db, &dl,
                                          &sig), 0);
    assert_int_equal(wire_delta_hash(db, dl, h2), 0);
    be64(lv, sseq[2]);
    memcpy(lv + 8, h2, 32);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_del(t, DB_DOTS, ck, 13), 0);
    for (int i = 1; i <= 3; i++) {
        uint8_t k1[12], v1[8];
        be32(k1, 4);
        be64(k1 + 4, (uint64_t)i);
        be64(v1, sseq[i]);
        assert_int_equal(store_put(t, DB_DOTS, k1, 12, v1, 8), 0);
    }
    assert_int_equal(store_put(t, DB_DOTS, dk, 12, lv, 40), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(su_push(s, &env[2], NOW).result, STORE_DUPLICATE);
    assert_int_equal(verify_problems(s), 0);

    /* Replace the envelope of seq 2 (short dot) by a re-signed variant
     * with the same stamp and ops: the record rebuild cannot see it, the
     * chain does. */
    reepoch(&a, &env[2], &forged);
    uint8_t sk[8];
    be64(sk, sseq[2]);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put(t, DB_DOTS, dk, 12, lv, 8), 0);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, sk, 8, forged.p, forged.n), 0);
    assert_int_equal(store_commit(t), 0);
    assert_true(verify_problems(s) > 0);
    /* Put it back; then the last delta of the chain: the head's hash. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, sk, 8, env[2].p, env[2].n), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(verify_problems(s), 0);
    reepoch(&a, &env[3], &forged);
    be64(sk, sseq[3]);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, sk, 8, forged.p, forged.n), 0);
    assert_int_equal(store_commit(t), 0);
    assert_true(verify_problems(s) > 0);
    /* Put it back, and the chain goes on past seq 64: the old forms (seqs
     * 1..3, entries of their own) and the new (slots of two chunks, the
     * first sorting before them) are one chain to verify, and a resend of
     * each form is a duplicate. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put_sealed(t, DB_DELTAS, sk, 8, env[3].p, env[3].n), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf more = {0};
    for (int i = 4; i <= 70; i++) {
        su_ops_reset(&o);
        su_set_str(&o, "note", "again");
        su_make(&a, "household", "H1", &o, NOW + (uint64_t)i, &more, NULL);
        assert_int_equal(su_push(s, &more, NOW).result, STORE_APPLIED);
    }
    assert_int_equal(su_push(s, &more, NOW).result, STORE_DUPLICATE);
    assert_int_equal(su_push(s, &env[1], NOW).result, STORE_DUPLICATE);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf_free(&more);

    su_ops_free(&o);
    for (int i = 0; i < 4; i++) crdt_buf_free(&env[i]);
    crdt_buf_free(&forged);
    crdt_buf_free(&held);
    store_close(s);
    su_dir_remove(&d);
}

/* MDB_APPEND puts (the logs: deltas, quar, audit) take only keys greater
 * than the last one, and fill pages where in-order ordinary puts leave them
 * partly empty. */
static void test_append_order(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "append");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    uint8_t k[8], v[400];
    MDB_stat plain_st, app_st;
    memset(v, 7, sizeof v);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    for (uint64_t i = 1; i <= 2000; i++) {
        be64(k, i);
        assert_int_equal(store_put(t, DB_AGGHIST, k, 8, v, sizeof v), 0);   /* ordinary */
        assert_int_equal(store_put_append(t, DB_STAFF, k, 8, v, sizeof v), 0);
    }
    be64(k, 2000);
    assert_int_equal(store_put_append(t, DB_STAFF, k, 8, v, sizeof v), STORE_ECORRUPT);
    be64(k, 5);
    assert_int_equal(store_put_append(t, DB_STAFF, k, 8, v, sizeof v), STORE_ECORRUPT);
    assert_int_equal(store_put_sealed_append(t, DB_STAFF, k, 8, v, 10), STORE_ECORRUPT);
    be64(k, 2001);
    assert_int_equal(store_put_sealed_append(t, DB_STAFF, k, 8, v, 10), 0);
    assert_int_equal(mdb_stat(t->txn, s->dbi[DB_AGGHIST], &plain_st), 0);
    assert_int_equal(mdb_stat(t->txn, s->dbi[DB_STAFF], &app_st), 0);
    assert_int_equal(app_st.ms_entries, 2001);
    /* 9 values of 418 B fit a 4 KiB page: 223 pages appended, ~250 otherwise. */
    assert_true(app_st.ms_leaf_pages <= 2001 / 9 + 1);
    assert_true(app_st.ms_leaf_pages < plain_st.ms_leaf_pages);
    store_abort(t);
    store_close(s);
    su_dir_remove(&d);
}

/* The audit log is hash-chained: removing, editing or truncating entries is
 * caught (even with the data key in hand). */
static void test_audit_chain(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "audit");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    uint64_t bad = 99;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    for (int i = 0; i < 5; i++) {
        char detail[32];
        snprintf(detail, sizeof detail, "entry %d", i);
        assert_int_equal(store_audit_append(t, NOW + (uint64_t)i, "admin:alice", "test.entry",
                                            detail, NULL), 0);
    }
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_verify(t, &bad), 0);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* Edit entry 3: re-sealed with the right key, but the chain breaks at 4. */
    uint8_t k3[8];
    be64(k3, 3);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    crdt_buf plain = {0};
    assert_int_equal(store_get_sealed(t, DB_AUDIT, k3, 8, &plain), 0);
    plain.p[plain.n - 1] ^= 1; /* the last byte of the detail */
    crdt_buf copy = {0};
    crdt_buf_append(&copy, plain.p, plain.n);
    assert_int_equal(store_put_sealed(t, DB_AUDIT, k3, 8, copy.p, copy.n), 0);
    assert_int_equal(store_audit_verify(t, &bad), STORE_EVERIFY);
    assert_int_equal(bad, 4);
    store_abort(t);

    /* Remove entry 2: the chain breaks at 3 (its number, then its hash). */
    uint8_t k2[8];
    be64(k2, 2);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_del(t, DB_AUDIT, k2, 8), 0);
    assert_int_equal(store_audit_verify(t, &bad), STORE_EVERIFY);
    assert_int_equal(bad, 3);
    store_abort(t);

    /* Cut the last entry: the head no longer matches. */
    uint8_t k5[8];
    be64(k5, 5);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_del(t, DB_AUDIT, k5, 8), 0);
    assert_int_equal(store_audit_verify(t, &bad), STORE_EVERIFY);
    assert_int_equal(bad, 0);
    store_abort(t);
    crdt_buf_free(&plain);
    crdt_buf_free(&copy);
    store_close(s);
    su_dir_remove(&d);
}

/* The server's own deltas (dashboard resolutions, doorstepctl import): its
 * chain advances by one per delta even inside one transaction, each HLC is
 * past every stored one (here a phone's, ahead of the server's wall clock),
 * and a delta the schema refuses is reported and appends nothing. */
static void test_server_append(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "srvappend");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 5);
    seed_household(s, &dev, "H1", "C01", "G01", NOW + 30000);
    seed_person(s, &dev, "P1", "H1", "张三", 1, NOW + 30000);
    su_ops o = {0};
    store_txn *t;
    store_server_delta r;
    crdt_hlc hwm0, hwm1, hwm2;
    uint64_t head;
    uint8_t h[32];
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_hlc_hwm(t, &hwm0), 0);
    su_set_str(&o, "note", "first");
    assert_int_equal(store_server_append(t, "person", "P1", o.op, o.n, NOW, 60000, &r), 0);
    assert_int_equal(r.invalid, 0);
    assert_int_equal(r.oc.result, STORE_APPLIED);
    assert_int_equal(r.seq, 1);
    assert_string_equal(r.oc.household, "H1");
    assert_int_equal(store_hlc_hwm(t, &hwm1), 0);
    assert_true(hwm1 > hwm0);
    su_ops_reset(&o);
    su_set_str(&o, "note", "second");
    assert_int_equal(store_server_append(t, "person", "P1", o.op, o.n, NOW, 60000, &r), 0);
    assert_int_equal(r.oc.result, STORE_APPLIED);
    assert_int_equal(r.seq, 2);
    assert_int_equal(store_hlc_hwm(t, &hwm2), 0);
    assert_true(hwm2 > hwm1);
    su_ops_reset(&o);
    su_set_str(&o, "no_such_field", "x");
    assert_int_equal(store_server_append(t, "person", "P1", o.op, o.n, NOW, 60000, &r), 0);
    assert_int_not_equal(r.invalid, 0);
    assert_int_equal(r.err_op, 0);
    assert_int_equal(r.seq, 0);
    assert_int_equal(store_chain_head(t, 0, &head, h), 0);
    assert_int_equal(head, 2);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    crdt_record *rec = NULL;
    assert_int_equal(store_get_record(t, "person", "P1", &rec), 0);
    const crdt_field *f = crdt_record_field(rec, "note", (crdt_blob){NULL, 0});
    assert_non_null(f);
    assert_int_equal(f->e[0].st.dot.dev, 0);
    assert_int_equal(f->e[0].st.dot.seq, 2);
    crdt_record_free(rec);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    su_ops_free(&o);
    store_close(s);
    su_dir_remove(&d);
}

/* A writer process (doorstepctl, say) killed in the middle of a big write
 * transaction leaves the store consistent: nothing of that transaction,
 * verify passes, and the next writer carries on. */
static void test_killed_writer(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "killed");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 1);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    uint64_t before;
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &before), 0);
    store_abort(t);
    store_close(s);
    for (int round = 0; round < 3; round++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* The child: one long write transaction, killed before it commits. */
            char err[256];
            store *cs = NULL;
            store_opts o = {0}; /* durable, like doorstepctl */
            if (store_open(d.data, d.key, &o, &cs, err, sizeof err)) _exit(1);
            store_txn *w;
            if (store_begin(cs, STORE_RW, &w)) _exit(1);
            for (int i = 0;; i++) {
                char detail[64];
                snprintf(detail, sizeof detail, "entry %d", i);
                if (store_audit_append(w, NOW, "doorstepctl", "test.bulk", detail, NULL)) _exit(1);
                if (i == 2000 && write(pfd[1], "x", 1) != 1) _exit(1);
            }
        }
        char c;
        close(pfd[1]);
        assert_int_equal(read(pfd[0], &c, 1), 1); /* mid-transaction */
        close(pfd[0]);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        assert_true(WIFSIGNALED(status));
    }
    char err[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(verify_problems(s), 0);
    uint64_t after, bad;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &after), 0);
    assert_int_equal(store_audit_verify(t, &bad), 0);
    store_abort(t);
    assert_int_equal(after, before);
    /* and writing goes on */
    su_ops o2 = {0};
    crdt_buf env = {0};
    su_set_str(&o2, "note", "after the crash");
    su_make(&dev, "household", "H1", &o2, NOW + 5, &env, NULL);
    assert_int_equal(su_push(s, &env, NOW).result, STORE_APPLIED);
    su_ops_free(&o2);
    crdt_buf_free(&env);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- the log's blocks (log.c) ---------------------------------------------------------- */

typedef struct logread {
    uint64_t sseq[512];
    crdt_buf env[512];
    size_t n;
} logread;

static int logread_cb(uint64_t sseq, const uint8_t *env, size_t n, void *arg)
{
    logread *l = arg;
    assert_true(l->n < 512);
    l->sseq[l->n] = sseq;
    crdt_buf_reset(&l->env[l->n]);
    assert_int_equal(crdt_buf_append(&l->env[l->n], env, n), 0);
    l->n++;
    return 0;
}

static void logread_free(logread *l)
{
    for (size_t i = 0; i < 512; i++) crdt_buf_free(&l->env[i]);
}

static uint64_t db_count(store_txn *t, int db, uint64_t *overflow)
{
    MDB_stat st;
    assert_int_equal(mdb_stat(t->txn, t->s->dbi[db], &st), 0);
    if (overflow) *overflow = st.ms_overflow_pages;
    return st.ms_entries;
}

/* Envelopes appended in one write transaction are stored as sealed blocks
 * of consecutive server seqs, each small enough for a leaf page; every
 * reader sees them one by one, in the transaction (before the block is
 * written) and after; the first block makes the store format 3; damage
 * under a valid seal is STORE_ECORRUPT. */
static void test_log_blocks(void **state)
{
    (void)state;
    enum { N = 300 };
    su_dir d;
    su_dir_make(&d, "logblocks");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    MDB_val v;
    char err[256];
    su_dev dev;
    su_dev_init(&dev, 5);
    /* A format 2 store (as made before blocks) with one envelope in it. */
    uint8_t fmt[4];
    be32(fmt, 2);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put(t, DB_META, "format", 6, fmt, 4), 0);
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_get(t, DB_META, "format", 6, &v), 0);
    assert_int_equal(rd32(v.mv_data), 4); /* its dots chunk (3), its record a reference (4) */
    assert_int_equal(store_put(t, DB_META, "format", 6, fmt, 4), 0); /* say 2 again */
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);

    /* N persons in one batch: one write transaction. */
    crdt_buf e[N];
    const uint8_t *envs[N];
    size_t lens[N];
    store_outcome outs[N];
    for (int i = 0; i < N; i++) {
        su_ops o = {0};
        char pid[16], idn[19];
        snprintf(pid, sizeof pid, "P%03d", i);
        su_idnum((unsigned)(100 + i), idn);
        su_set_str(&o, "name", "欧阳震华");
        su_set_str(&o, "id_number", idn);
        su_set_str(&o, "household", "H1");
        memset(&e[i], 0, sizeof e[i]);
        su_make(&dev, "person", pid, &o, NOW + (uint64_t)i, &e[i], NULL);
        su_ops_free(&o);
        envs[i] = e[i].p;
        lens[i] = e[i].n;
    }
    assert_int_equal(store_append_batch(s, envs, lens, N, NOW + N, 86400000ull, outs), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(outs[i].result, STORE_APPLIED);
        assert_int_equal(outs[i].sseq, (uint64_t)i + 2);
    }
    assert_int_equal(verify_problems(s), 0);
    store_close(s);
    /* Read back by a store opened again (as another process would). */
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_META, "format", 6, &v), 0);
    assert_int_equal(rd32(v.mv_data), 4);
    uint64_t ovf, entries = db_count(t, DB_DELTAS, &ovf);
    assert_true(entries > 1 && entries < N / 4); /* blocks of several */
    assert_int_equal(ovf, 0);                   /* each on a leaf page */
    uint64_t last, count;
    assert_int_equal(store_last_sseq(t, &last), 0);
    assert_int_equal(last, N + 1);
    assert_int_equal(store_log_count(t, &count), 0);
    assert_int_equal(count, N + 1);
    crdt_buf env = {0};
    for (int i = N - 1; i >= 0; i--) { /* backwards: a block read again for each */
        assert_int_equal(store_get_envelope(t, (uint64_t)i + 2, &env), 0);
        assert_int_equal(env.n, lens[i]);
        assert_memory_equal(env.p, envs[i], lens[i]);
    }
    assert_int_equal(store_get_envelope(t, 0, &env), STORE_ENOTFOUND);
    assert_int_equal(store_get_envelope(t, N + 2, &env), STORE_ENOTFOUND);
    assert_int_equal(store_log_has(t, N + 1), 0);
    assert_int_equal(store_log_has(t, N + 2), STORE_ENOTFOUND);
    /* The log in order, from anywhere, across blocks. */
    static logread lr;
    memset(&lr, 0, sizeof lr);
    assert_int_equal(store_log_read(t, 0, 1000, SIZE_MAX, logread_cb, &lr), 0);
    assert_int_equal(lr.n, N + 1);
    for (size_t i = 0; i < lr.n; i++) assert_int_equal(lr.sseq[i], i + 1);
    for (int i = 0; i < N; i++) assert_memory_equal(lr.env[i + 1].p, envs[i], lens[i]);
    lr.n = 0;
    assert_int_equal(store_log_read(t, 150, 7, SIZE_MAX, logread_cb, &lr), 0);
    assert_int_equal(lr.n, 7);
    assert_int_equal(lr.sseq[0], 151);
    assert_int_equal(lr.sseq[6], 157);
    assert_memory_equal(lr.env[0].p, envs[149], lens[149]);
    store_abort(t);

    /* In a write txn: appended envelopes are read before they are written
     * (pending), and after a mid-txn flush; incompressible ones make
     * blocks that must be cut smaller; abort loses them all. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    uint8_t big[40][900];
    for (int i = 0; i < 40; i++) {
        randombytes_buf(big[i], sizeof big[i]);
        big[i][0] = 0x82;
        assert_int_equal(store_log_append(t, N + 2 + (uint64_t)i, big[i], sizeof big[i]), 0);
        assert_int_equal(store_get_envelope(t, N + 2 + (uint64_t)i, &env), 0);
        assert_memory_equal(env.p, big[i], sizeof big[i]);
    }
    /* Not the next seq: refused. */
    assert_int_equal(store_log_append(t, N + 50, big[0], sizeof big[0]), STORE_EINVAL);
    assert_int_equal(store_log_append(t, N + 41, big[0], sizeof big[0]), STORE_EINVAL); /* again */
    assert_true(db_count(t, DB_DELTAS, NULL) > entries); /* some written already */
    for (int i = 0; i < 40; i++) {
        assert_int_equal(store_get_envelope(t, N + 2 + (uint64_t)i, &env), 0);
        assert_memory_equal(env.p, big[i], sizeof big[i]);
    }
    lr.n = 0;
    assert_int_equal(store_log_read(t, N - 2, 10, SIZE_MAX, logread_cb, &lr), 0);
    assert_int_equal(lr.n, 10);
    assert_memory_equal(lr.env[0].p, envs[N - 3], lens[N - 3]); /* seq N - 1 */
    assert_memory_equal(lr.env[3].p, big[0], sizeof big[0]);   /* seq N + 2 */
    assert_int_equal(store_log_flush(t), 0);
    assert_int_equal(db_count(t, DB_DELTAS, &ovf) > entries, 1);
    assert_int_equal(ovf, 0);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_envelope(t, N + 2, &env), STORE_ENOTFOUND);
    assert_int_equal(db_count(t, DB_DELTAS, NULL), entries);
    store_abort(t);

    /* Damage under a valid seal: a block whose count or lengths do not
     * add up, a block of one, an unknown tag. */
    uint8_t k[8];
    uint64_t bseq = 0;
    crdt_buf plain = {0};
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    for (uint64_t q = N + 1; q > 1 && !bseq; q--) { /* the last block (not an entry of one) */
        be64(k, q);
        MDB_val kv;
        if (store_get(t, DB_DELTAS, k, 8, &kv)) continue;
        raw_plain(t, DB_DELTAS, k, 8, &plain);
        if (plain.p[0] == 0x03) bseq = q;
    }
    assert_true(bseq > 1);
    uint8_t bad[64] = {0x04, 3, 0, 0, 0, 10, 0, 0, 0, 10, 0, 0, 0, 10};
    memset(bad + 14, 0x82, sizeof bad - 14); /* 50 bytes of envelopes, not 30 */
    assert_int_equal(store_put_sealed(t, DB_DELTAS, k, 8, bad, sizeof bad), 0);
    assert_int_equal(store_get_envelope(t, bseq, &env), STORE_ECORRUPT);
    bad[1] = 1;
    assert_int_equal(store_put_sealed(t, DB_DELTAS, k, 8, bad, sizeof bad), 0);
    assert_int_equal(store_get_envelope(t, bseq, &env), STORE_ECORRUPT);
    bad[0] = 0x05;
    assert_int_equal(store_put_sealed(t, DB_DELTAS, k, 8, bad, sizeof bad), 0);
    assert_int_equal(store_get_envelope(t, bseq, &env), STORE_ECORRUPT);
    assert_int_equal(store_commit(t), 0);
    assert_true(verify_problems(s) > 0);

    crdt_buf_free(&plain);
    crdt_buf_free(&env);
    logread_free(&lr);
    for (int i = 0; i < N; i++) crdt_buf_free(&e[i]);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- a record's history (format 3) ------------------------------------------------------ */

typedef struct seqlist {
    uint64_t v[64];
    size_t n;
} seqlist;

static int seqlist_cb(uint64_t sseq, void *arg)
{
    seqlist *l = arg;
    assert_true(l->n < 64);
    l->v[l->n++] = sseq;
    return 0;
}

/* A record's deltas are listed in its own value (no rdeltas entry each);
 * a record a format 2 store began (its first deltas in rdeltas) lists
 * both, in order, across pages; a history that does not ascend is damage. */
static void test_record_history(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "history");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 6);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    seed_person(s, &dev, "P1", "H1", "欧阳震华", 7, NOW);
    for (int i = 0; i < 3; i++) {
        su_ops o = {0};
        crdt_buf env = {0};
        su_set_str(&o, "phone", i == 1 ? "13900139000" : "13800138001");
        su_make(&dev, "person", "P1", &o, NOW + 10 + (uint64_t)i, &env, NULL);
        assert_int_equal(su_push(s, &env, NOW + 10).result, STORE_APPLIED);
        su_ops_free(&o);
        crdt_buf_free(&env);
    }
    store_txn *t;
    seqlist l = {0};
    uint64_t next = 0;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, &next), 0);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.v[0], 2); /* seq 1 is the household */
    for (int i = 1; i < 4; i++) assert_true(l.v[i] > l.v[i - 1]);
    assert_int_equal(next, l.v[3]);
    assert_int_equal(db_count(t, DB_RDELTAS, NULL), 0);
    store_abort(t);
    uint64_t all[4];
    memcpy(all, l.v, sizeof all);

    /* As a format 2 store left it and this version went on: the first two
     * deltas in rdeltas, the last two in the value. */
    crdt_buf plain = {0}, nv = {0};
    const uint8_t *rec, *h;
    size_t rn, hn;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_get_packed(t, DB_RECORDS, "person\0P1", 9, &plain), 0);
    assert_int_equal(plain.p[0], 0x92);
    assert_int_equal(store_record_split(plain.p, plain.n, &rec, &rn, &h, &hn), 0);
    uint8_t hb[32];
    size_t hl = store_leb128(hb, all[2]);
    hl += store_leb128(hb + hl, all[3] - all[2]);
    uint8_t hdr[3] = {0x92, 0xc4, (uint8_t)hl};
    assert_int_equal(crdt_buf_append(&nv, hdr, 3), 0);
    assert_int_equal(crdt_buf_append(&nv, hb, hl), 0);
    assert_int_equal(crdt_buf_append(&nv, rec, rn), 0);
    assert_int_equal(store_put_packed(t, DB_RECORDS, "person\0P1", 9, nv.p, nv.n, false), 0);
    for (int i = 0; i < 2; i++) {
        uint8_t rk[9 + 1 + 8];
        memcpy(rk, "person\0P1", 9);
        rk[9] = 0;
        be64(rk + 10, all[i]);
        assert_int_equal(store_put(t, DB_RDELTAS, rk, sizeof rk, "", 0), 0);
    }
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(verify_problems(s), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    l.n = 0;
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, NULL), 0);
    assert_int_equal(l.n, 4);
    assert_memory_equal(l.v, all, sizeof all);
    l.n = 0; /* a page across the two */
    assert_int_equal(store_record_deltas(t, "person", "P1", all[0], 2, seqlist_cb, &l, &next), 0);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0], all[1]);
    assert_int_equal(l.v[1], all[2]);
    assert_int_equal(next, all[2]);
    l.n = 0;
    assert_int_equal(store_record_deltas(t, "person", "P1", all[2], 5, seqlist_cb, &l, &next), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0], all[3]);
    store_abort(t);
    /* And it goes on: one more delta joins the history in the value. */
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "phone", "13700137000");
    su_make(&dev, "person", "P1", &o, NOW + 20, &env, NULL);
    store_outcome out = su_push(s, &env, NOW + 20);
    assert_int_equal(out.result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    l.n = 0;
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, NULL), 0);
    assert_int_equal(l.n, 5);
    assert_int_equal(l.v[4], out.sseq);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* Damage: a difference of 0 (not ascending), a history cut short. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    crdt_buf_reset(&nv);
    uint8_t bad[] = {0x92, 0xc4, 2, 0x05, 0x00};
    assert_int_equal(crdt_buf_append(&nv, bad, sizeof bad), 0);
    assert_int_equal(crdt_buf_append(&nv, rec, rn), 0);
    assert_int_equal(store_put_packed(t, DB_RECORDS, "person\0P1", 9, nv.p, nv.n, false), 0);
    l.n = 0;
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, NULL),
                     STORE_ECORRUPT);
    bad[4] = 0x85; /* a continuation byte last */
    crdt_buf_reset(&nv);
    assert_int_equal(crdt_buf_append(&nv, bad, sizeof bad), 0);
    assert_int_equal(crdt_buf_append(&nv, rec, rn), 0);
    assert_int_equal(store_put_packed(t, DB_RECORDS, "person\0P1", 9, nv.p, nv.n, false), 0);
    l.n = 0;
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, NULL),
                     STORE_ECORRUPT);
    /* A bin longer than the value. */
    bad[2] = 200;
    assert_int_equal(store_put_packed(t, DB_RECORDS, "person\0P1", 9, bad, sizeof bad, false), 0);
    crdt_record *r = NULL;
    assert_int_equal(store_get_record(t, "person", "P1", &r), STORE_ECORRUPT);
    assert_null(r);
    assert_int_equal(store_commit(t), 0);
    assert_true(verify_problems(s) > 0);

    su_ops_free(&o);
    crdt_buf_free(&env);
    crdt_buf_free(&plain);
    crdt_buf_free(&nv);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- records kept as references to their one delta (format 4) --------------------------- */

static int page_count_cb(const crdt_record *r, void *arg)
{
    (void)r;
    (*(int *)arg)++;
    return 0;
}

/* The canonical bytes of records[kind, id] as the store reads it. */
static void stored_bytes(store *s, const char *kind, const char *id, crdt_buf *out)
{
    store_txn *t;
    crdt_record *r = NULL;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_record(t, kind, id, &r), 0);
    crdt_buf_reset(out);
    assert_int_equal(crdt_record_encode(r, out), 0);
    crdt_record_free(r);
    store_abort(t);
}

/* A record one delta made is kept as a short unsealed reference to that
 * delta and read by applying it again: the same record as the merge made
 * (its delta applied to an empty record), listed by every reader;
 * its second delta writes it out in full, in the same transaction or a
 * later one; a format 3 store becomes format 4 with the first reference;
 * a reference to a missing delta or another record's is STORE_ECORRUPT. */
static void test_record_refs(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "refs");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    MDB_val v;
    su_dev dev;
    su_dev_init(&dev, 9);
    /* A format 3 store (as made before references). */
    uint8_t fmt[4];
    be32(fmt, 3);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put(t, DB_META, "format", 6, fmt, 4), 0);
    assert_int_equal(store_commit(t), 0);
    store_close(s);
    char err[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, err, sizeof err), 0);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);        /* sseq 1 */
    seed_person(s, &dev, "P1", "H1", "欧阳震华", 21, NOW);   /* sseq 2 */
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_META, "format", 6, &v), 0);
    assert_int_equal(rd32(v.mv_data), 4);
    assert_int_equal(store_get(t, DB_RECORDS, "person\0P1", 9, &v), 0);
    assert_int_equal(v.mv_size, 2);
    assert_memory_equal(v.mv_data, "\x00\x02", 2); /* a reference to sseq 2 */
    assert_int_equal(store_get(t, DB_RECORDS, "household\0H1", 12, &v), 0);
    assert_memory_equal(v.mv_data, "\x00\x01", 2);
    crdt_record *r = NULL;
    assert_int_equal(store_get_record(t, "person", "P1", &r), 0);
    uint32_t len;
    const char *name = store_field_str(r, s->model.p_name, (crdt_blob){NULL, 0}, &len);
    assert_non_null(name);
    assert_int_equal(len, strlen("欧阳震华"));
    assert_memory_equal(name, "欧阳震华", len);
    crdt_record_free(r);
    seqlist l = {0};
    assert_int_equal(store_record_deltas(t, "person", "P1", 0, SIZE_MAX, seqlist_cb, &l, NULL), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0], 2);
    int seen = 0;
    char next[CRDT_RECID_MAX + 1];
    assert_int_equal(store_records_page(t, "person", "", 10, page_count_cb, &seen, next), 0);
    assert_int_equal(seen, 1);
    store_ids ids = {0};
    assert_int_equal(store_lookup(t, 3, "欧阳震华", strlen("欧阳震华"), &ids), 0);
    assert_int_equal(ids.n, 1);
    store_ids_free(&ids);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* The same record as the merge made: its delta applied to an empty
     * record, outside the store. */
    crdt_buf a = {0}, b = {0};
    stored_bytes(s, "person", "P1", &a);
    crdt_record *mine = crdt_record_new("person", 6, "P1", 2);
    crdt_buf e1 = {0};
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_envelope(t, 2, &e1), 0);
    store_abort(t);
    crdt_arena *ar = crdt_arena_new(0);
    crdt_delta dd;
    decode_env(&e1, ar, &dd, NULL);
    assert_int_equal(crdt_record_apply(mine, store_schema(s), &dd), 0);
    crdt_arena_free(ar);
    assert_int_equal(crdt_record_encode(mine, &b), 0);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.p, b.p, a.n);
    crdt_record_free(mine);

    /* Its second delta: written out in full, sealed, with both seqs. */
    store_outcome o2 = push_phone(s, &dev, "P1", "13900139000", NOW + 1);
    assert_int_equal(o2.result, STORE_APPLIED);
    crdt_buf plain = {0};
    const uint8_t *rec, *h;
    size_t rn, hn;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_RECORDS, "person\0P1", 9, &v), 0);
    assert_true(v.mv_size > 32);
    assert_int_equal(store_get_packed(t, DB_RECORDS, "person\0P1", 9, &plain), 0);
    assert_int_equal(store_record_split(plain.p, plain.n, &rec, &rn, &h, &hn), 0);
    assert_int_equal(hn, 2);
    assert_memory_equal(h, "\x02\x01", 2); /* 2, then 3 */
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* In one transaction: P2 made, P3 made (the cached record is P3's),
     * P2 changed (read back as a reference from the log's pending block). */
    crdt_buf e[3];
    const uint8_t *envs[3];
    size_t lens[3];
    store_outcome outs[3];
    const char *who[3] = {"P2", "P3", "P2"};
    for (int i = 0; i < 3; i++) {
        su_ops o = {0};
        char idn[19];
        su_idnum((unsigned)(30 + i), idn);
        su_set_str(&o, "name", "王小明");
        su_set_str(&o, i == 2 ? "phone" : "id_number", i == 2 ? "13700137000" : idn);
        if (i < 2) su_set_str(&o, "household", "H1");
        memset(&e[i], 0, sizeof e[i]);
        su_make(&dev, "person", who[i], &o, NOW + 2 + (uint64_t)i, &e[i], NULL);
        su_ops_free(&o);
        envs[i] = e[i].p;
        lens[i] = e[i].n;
    }
    assert_int_equal(store_append_batch(s, envs, lens, 3, NOW + 5, 86400000ull, outs), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(outs[i].result, STORE_APPLIED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_RECORDS, "person\0P3", 9, &v), 0);
    assert_int_equal(v.mv_size, 2);
    assert_int_equal(store_get(t, DB_RECORDS, "person\0P2", 9, &v), 0);
    assert_true(v.mv_size > 32);
    crdt_record *p2 = NULL;
    assert_int_equal(store_get_record(t, "person", "P2", &p2), 0);
    assert_non_null(store_field_str(p2, s->model.p_idnum, (crdt_blob){NULL, 0}, &len));
    assert_non_null(store_field_str(p2, s->model.p_phone, (crdt_blob){NULL, 0}, &len));
    crdt_record_free(p2);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);

    /* Damage: a reference to a seq the log lacks, to another record's
     * delta, of no seq, with a bad tag; each STORE_ECORRUPT, and verify
     * reports it. */
    const uint8_t bad[4][3] = {{0x00, 0x7f}, {0x00, 0x01}, {0x00, 0x00}, {0x07, 0x02}};
    const size_t badn[4] = {2, 2, 1, 2};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(store_begin(s, STORE_RW, &t), 0);
        assert_int_equal(store_get(t, DB_RECORDS, "person\0P3", 9, &v), 0);
        uint8_t keep[2];
        memcpy(keep, v.mv_data, 2);
        assert_int_equal(store_put(t, DB_RECORDS, "person\0P3", 9, bad[i], badn[i]), 0);
        r = NULL;
        assert_int_equal(store_get_record(t, "person", "P3", &r), STORE_ECORRUPT);
        assert_null(r);
        assert_int_equal(store_commit(t), 0);
        assert_true(verify_problems(s) > 0);
        assert_int_equal(store_begin(s, STORE_RW, &t), 0);
        assert_int_equal(store_put(t, DB_RECORDS, "person\0P3", 9, keep, 2), 0);
        assert_int_equal(store_commit(t), 0);
        assert_int_equal(verify_problems(s), 0);
    }
    for (int i = 0; i < 3; i++) crdt_buf_free(&e[i]);
    crdt_buf_free(&e1);
    crdt_buf_free(&a);
    crdt_buf_free(&b);
    crdt_buf_free(&plain);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- what a write transaction caches of the chains ------------------------------------- */

/* Append one envelope in the caller's write txn (what store_append_batch
 * does for each of its envelopes). */
static store_outcome append_in(store_txn *t, const crdt_buf *env, uint64_t now_ms)
{
    crdt_delta d;
    store_item it;
    store_outcome out;
    crdt_arena *a = crdt_arena_new(0);
    assert_non_null(a);
    memset(&it, 0, sizeof it);
    decode_env(env, a, &d, it.hash);
    it.env = env->p;
    it.env_len = env->n;
    it.delta = &d;
    assert_int_equal(store_append(t, &it, now_ms, 86400000ull, &out), 0);
    crdt_arena_free(a);
    return out;
}

/*
 * Lookup changes wait in the write transaction and are applied at commit in
 * key order (store_lookup_apply).  One group commit of three deltas: P1 is
 * made with phone A, then given B (phone is last-writer-wins, so A goes: a
 * delete queued after A's put, for the same key); P2 is made with A.  Afterwards A finds only P2, B only P1, and the name both; the index
 * holds exactly what the records imply (store_verify).  Order matters: were
 * P1's put of A applied after its delete, A would still find P1.  Then a
 * lookup inside a write transaction sees a change queued in it (P3 made
 * with A), and an abort drops the queue with the rest.
 */
static void test_lookup_changes_in_one_commit(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "lookupq");
    store *s = su_store_new(&d, NULL);
    su_dev dev;
    su_dev_init(&dev, 3);
    seed_household(s, &dev, "H1", "C01", "G01", NOW);
    const char *a = "13800138001", *b = "13900139002";
    crdt_buf env[3] = {{0}};
    const char *pid[3] = {"P1", "P1", "P2"}, *ph[3] = {a, b, a};
    for (int i = 0; i < 3; i++) {
        su_ops o = {0};
        su_set_str(&o, "phone", ph[i]);
        if (i != 1) {
            su_set_str(&o, "name", "李四");
            su_set_str(&o, "household", "H1");
        }
        su_make(&dev, "person", pid[i], &o, NOW + 10 * (uint64_t)(i + 1), &env[i], NULL);
        su_ops_free(&o);
    }
    const uint8_t *e[3] = {env[0].p, env[1].p, env[2].p};
    size_t n[3] = {env[0].n, env[1].n, env[2].n};
    store_outcome out[3];
    assert_int_equal(store_append_batch(s, e, n, 3, NOW + 100, 86400000ull, out), 0);
    for (int i = 0; i < 3; i++) assert_int_equal(out[i].result, STORE_APPLIED);

    store_txn *t;
    store_ids ids;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_PHONE, a, strlen(a), &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "P2");
    store_ids_free(&ids);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_PHONE, b, strlen(b), &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "P1");
    store_ids_free(&ids);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_NAME, "李四", strlen("李四"), &ids), 0);
    assert_int_equal(ids.n, 2);
    store_ids_free(&ids);
    store_abort(t);

    su_ops o = {0};
    crdt_buf e3 = {0};
    su_set_str(&o, "phone", a);
    su_set_str(&o, "household", "H1");
    su_make(&dev, "person", "P3", &o, NOW + 200, &e3, NULL);
    su_ops_free(&o);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(append_in(t, &e3, NOW + 300).result, STORE_APPLIED);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_PHONE, a, strlen(a), &ids), 0);
    assert_int_equal(ids.n, 2);
    assert_string_equal(ids.id[0], "P2");
    assert_string_equal(ids.id[1], "P3");
    store_ids_free(&ids);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_lookup(t, STORE_LOOKUP_PHONE, a, strlen(a), &ids), 0);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.id[0], "P2");
    store_ids_free(&ids);
    store_abort(t);
    crdt_buf_free(&e3);

    uint64_t problems;
    assert_int_equal(store_verify(s, NULL, NULL, &problems), 0);
    assert_int_equal(problems, 0);
    for (int i = 0; i < 3; i++) crdt_buf_free(&env[i]);
    store_close(s);
    su_dir_remove(&d);
}

static void make_note(su_dev *dev, const char *hh, const char *note, uint64_t ms, crdt_buf *env)
{
    su_ops o = {0};
    su_set_str(&o, "note", note);
    su_make(dev, "household", hh, &o, ms, env, NULL);
    su_ops_free(&o);
}

/* A write txn reads a device's state, chain head and dots chunk once for a
 * run of its deltas; whatever else the same txn writes to them is seen by
 * the deltas after: a resend after its first copy is a duplicate, a clone
 * freezes the device for the rest of the txn, a revocation quarantines
 * what follows it, a held-back delta advances the head the next ones
 * chain to. */
static void test_txn_caches(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "txncache");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    su_dev a, clone, b, c;
    su_dev_init(&a, 9);
    su_dev_init(&b, 10);
    su_dev_init(&c, 11);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    for (uint32_t id = 9; id <= 11; id++) {
        store_device dv = {.id = id, .state = STORE_DEV_ACTIVE, .epoch = 1};
        strcpy(dv.volunteer, "李四");
        assert_int_equal(store_device_put(t, &dv), 0);
    }
    assert_int_equal(store_commit(t), 0);
    seed_household(s, &a, "H1", "C01", "G01", NOW); /* a's seq 1 */

    crdt_buf e2 = {0}, e3 = {0}, x3 = {0}, e4 = {0};
    make_note(&a, "H1", "二", NOW + 1, &e2);
    clone = a;
    make_note(&a, "H1", "三", NOW + 2, &e3);
    make_note(&clone, "H1", "克隆", NOW + 2, &x3);
    make_note(&a, "H1", "四", NOW + 3, &e4);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(append_in(t, &e2, NOW).result, STORE_APPLIED);
    assert_int_equal(append_in(t, &e3, NOW).result, STORE_APPLIED);
    store_outcome o = append_in(t, &e2, NOW);
    assert_int_equal(o.result, STORE_DUPLICATE);
    assert_int_equal(o.sseq, 2);
    o = append_in(t, &x3, NOW);
    assert_int_equal(o.result, STORE_QUARANTINED);
    assert_int_equal(o.code, STORE_Q_CLONE);
    o = append_in(t, &e4, NOW); /* the device froze a moment ago, in this txn */
    assert_int_equal(o.result, STORE_QUARANTINED);
    assert_int_equal(o.code, STORE_Q_FROZEN);

    /* b: one applied, then revoked (hard) in the same txn, then one more. */
    crdt_buf b1 = {0}, b2 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    make_note(&b, "H1", "b1", NOW + 4, &b1);
    make_note(&b, "H1", "b2", NOW + 5, &b2);
    assert_int_equal(append_in(t, &b1, NOW).result, STORE_APPLIED);
    assert_int_equal(store_device_revoke(t, 10, STORE_REVOKE_HARD, NOW, "admin"), 0);
    o = append_in(t, &b2, NOW);
    assert_int_equal(o.result, STORE_QUARANTINED);
    assert_int_equal(o.code, STORE_Q_REVOKED);

    /* c: seq 2 first (a gap), then 1 held back (clock ahead: the head
     * moves), then 2 chains to it; 1 again is not merged twice. */
    make_note(&c, "H1", "c1", NOW + 3 * 86400000ull, &c1);
    make_note(&c, "H1", "c2", NOW + 6, &c2);
    make_note(&c, "H1", "c3", NOW + 7, &c3);
    o = append_in(t, &c2, NOW);
    assert_int_equal(o.result, STORE_REJECTED);
    assert_int_equal(o.code, STORE_EGAP);
    assert_int_equal(o.expected_seq, 1);
    o = append_in(t, &c1, NOW);
    assert_int_equal(o.result, STORE_QUARANTINED);
    assert_int_equal(o.code, STORE_Q_CLOCK_AHEAD);
    /* 2 and 3 chain to the held-back head (not a gap, not a fork); their
     * clock follows c1's, so they are held back too. */
    for (int i = 0; i < 2; i++) {
        o = append_in(t, i ? &c3 : &c2, NOW);
        assert_int_equal(o.result, STORE_QUARANTINED);
        assert_int_equal(o.code, STORE_Q_CLOCK_AHEAD);
    }
    assert_int_not_equal(append_in(t, &c1, NOW).result, STORE_APPLIED);
    assert_int_equal(store_commit(t), 0);

    /* As a fresh txn reads them. */
    uint64_t head;
    uint8_t hh[CRDT_HASH_BYTES];
    store_device dv;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_chain_head(t, 9, &head, hh), 0);
    assert_int_equal(head, 3);
    assert_int_equal(store_device_get(t, 9, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_FROZEN);
    assert_int_equal(store_chain_head(t, 10, &head, hh), 0);
    assert_int_equal(head, 1);
    assert_int_equal(store_device_get(t, 10, &dv), 0);
    assert_int_equal(dv.state, STORE_DEV_REVOKED_HARD);
    assert_int_equal(store_chain_head(t, 11, &head, hh), 0);
    assert_int_equal(head, 3);
    store_abort(t);
    assert_int_equal(verify_problems(s), 0);
    crdt_buf *bufs[] = {&e2, &e3, &x3, &e4, &b1, &b2, &c1, &c2, &c3};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) crdt_buf_free(bufs[i]);
    store_close(s);
    su_dir_remove(&d);
}

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_open_errors),
        cmocka_unit_test(test_persistence_idempotency_gap),
        cmocka_unit_test(test_clone_fork_clock),
        cmocka_unit_test(test_lookups_members_grid),
        cmocka_unit_test(test_feed_bruteforce),
        cmocka_unit_test(test_aggregates),
        cmocka_unit_test(test_aggregates_random),
        cmocka_unit_test(test_map_growth_and_full),
        cmocka_unit_test(test_batch_rejects_individually),
        cmocka_unit_test(test_two_processes),
        cmocka_unit_test(test_privacy_canary),
        cmocka_unit_test(test_backup_verify_and_corruption),
        cmocka_unit_test(test_dots_short_form),
        cmocka_unit_test(test_packed_values),
        cmocka_unit_test(test_zdict_deterministic),
        cmocka_unit_test(test_lookup_hash_len),
        cmocka_unit_test(test_lookup_changes_in_one_commit),
        cmocka_unit_test(test_append_order),
        cmocka_unit_test(test_log_blocks),
        cmocka_unit_test(test_record_history),
        cmocka_unit_test(test_record_refs),
        cmocka_unit_test(test_txn_caches),
        cmocka_unit_test(test_audit_chain),
        cmocka_unit_test(test_server_append),
        cmocka_unit_test(test_killed_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
