/*
 * alloc_failures.c — memory allocation failures on the push path and on
 * the read paths a device uses on every sync (pull, subscribe + live,
 * snapshot; issue #9, docs/RELIABILITY.md): no crash, no leak, no wrong ack
 * or answer, nothing partial.  The read paths are described above
 * read_run() below.
 *
 * tests/common/failalloc.c replaces malloc and friends for this process;
 * failalloc_arm(n) makes the n-th allocation from then on fail, once.  For
 * n = 1, 2, 3, ... until a run finishes without the failure firing, one
 * push of three signed deltas (create a household, create a person in it,
 * update the person: payment, tag, visit) goes the way doorstepd moves it,
 * without sockets: sync_session_input (event loop) -> sync_job_verify
 * (verify worker) -> sync_jobs_commit (writer) -> sync_session_job_done
 * (event loop).  Device 1000 (decode path) or 5000 (commit path) pushes
 * its seqs 1..3 into a new store each run.
 *
 *   decode path: armed around sync_session_input + sync_job_verify, after an
 *     unarmed hello/auth.  Allowed outcomes: input returns CRDT_ENOMEM (the
 *     server closes the connection; nothing was judged), a retryable error
 *     frame, or a job that then either fails as a whole (retryable
 *     SYNC_EUNAVAILABLE error frame, nothing stored) or is acked with all
 *     three deltas "applied".  Never a per-delta rejection: all three are
 *     valid, and a device files a rejected delta away for good.
 *   commit path: verified unarmed, armed around sync_jobs_commit +
 *     sync_session_job_done.  Allowed: rc 0 and an ack of three "applied"
 *     (or no frame at all if the ack itself could not be built: the device
 *     resends and hears "duplicate"), or rc != 0 and the retryable
 *     SYNC_EUNAVAILABLE error "nothing from this push was stored".  The
 *     store is then closed, reopened and read: the chain head is 3 or 0,
 *     the records are there or absent accordingly, store_verify passes.
 *   In both: the same push is retried unarmed on a new session and must be
 *   applied completely (or be all duplicates if the first try committed);
 *   store_verify passes; after everything was freed and the store closed,
 *   the live-block count equals the one before the store was opened.  One unarmed warm-up run first moves the lazy one-time allocations
 *   of libsodium, msgpack-c, LMDB and glibc out of the way, and every run
 *   starts from a new empty store, so runs repeat the same allocations and
 *   the loop meets each of them once.
 *
 * One delta (the household's) is over 2 KiB, so that verifying its
 * signature allocates too.  Every frame the server produces must pass
 * crdt_mp_check.  The device side (clients/device/dsync.c) is not covered:
 * its frame handling is reachable only through dsd_sync over a socket.
 *
 * Built only without the sanitizers (failalloc defines malloc).  Prints the
 * number of failure points exercised on each path and how the runs ended;
 * ALLOC_FAILURES_ONLY=<test name> runs one test, ALLOC_FAILURES_VERBOSE=1
 * prints every commit-path run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <msgpack.h>
#include <sodium.h>

#include "failalloc.h"
#include "storeutil.h"
#include "sync.h"
#include "testutil.h"
#include "wsclient.h"

#define NOW 1790000000000ull
#define NDELTA 3
#define MAX_POINTS 100000 /* a loop that never ends is a bug in itself */

static su_dir dir;
static const sync_config *cfg = &sync_config_default;
/* The run in progress, named when a test fails (teardown). */
static const char *cur_path = "";
static uint64_t cur_nth;
/* How the runs ended (printed at the end of each path). */
static unsigned n_closed, n_refused, n_job_failed, n_acked, n_commit_failed, n_no_answer;

/* ---- helpers ------------------------------------------------------------------ */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Every run starts from a new, empty store (in `dir`), so that each run
 * makes the same allocations in the same order and n = 1, 2, 3, ... meets
 * every one of them once. */
static void fresh_store(void)
{
    su_dir_make(&dir, "allocfail");
    store_close(su_store_new(&dir, NULL));
}

static store *open_store(void)
{
    char err[512] = "";
    store *s = NULL;
    store_opts o = {0};
    o.no_sync = true;
    int rc = store_open(dir.data, dir.key, &o, &s, err, sizeof err);
    if (rc) fail_msg("store_open: %s (%s)", err, store_strerror(rc));
    return s;
}

/* n bytes (a multiple of 3) of Chinese text, NUL-terminated, in out. */
static const char *fill(char *out, size_t n)
{
    static const char w[] = "幸福路走访记录";
    for (size_t i = 0; i < n; i += 3) memcpy(out + i, w + (i % (sizeof w - 1)), 3);
    out[n] = 0;
    return out;
}

/* A device of its own for run k: key, epoch 1, scope {Hk}; its three
 * envelopes (household Hk, person Pk in it, an update of Pk). */
typedef struct run {
    uint32_t dev_id;
    char hh[32], person[32];
    su_dev dev;
    crdt_buf env[NDELTA];
    crdt_buf push;           /* the push frame */
} run;

static void run_make(run *r, uint32_t dev_id)
{
    memset(r, 0, sizeof *r);
    r->dev_id = dev_id;
    snprintf(r->hh, sizeof r->hh, "H%u", dev_id);
    snprintf(r->person, sizeof r->person, "P%u", dev_id);
    su_dev_init(&r->dev, dev_id);
    su_ops o = {0};
    char idn[19];
    su_idnum(dev_id, idn);
    char note[1000], vnote[500], addr[200];
    su_set_str(&o, "address", fill(addr, 198));
    su_set_str(&o, "community", "C07-xingfu-community-residents-1");
    su_set_str(&o, "grid", "C07-G03-building-12-unit-3-40101");
    su_set_str(&o, "head", r->person);
    /* Long texts (near each field's max_len in bytes): the signed message
     * no longer fits wire_delta_verify's 2 KiB stack buffer, so verifying
     * this delta allocates too. */
    su_set_str(&o, "note", fill(note, 999));
    su_set_str(&o, "phone", "13800138000");
    su_visit(&o, "visits", "2026-09-14", NULL);
    {
        crdt_buf *v = &o.val[o.n - 1];
        const char *keys[3] = {"date", "method", "note"};
        crdt_scalar vals[3] = {{.t = CRDT_V_STR, .s = "2026-09-14", .len = 10},
                               {.t = CRDT_V_STR, .s = "上门走访", .len = 12},
                               {.t = CRDT_V_STR, .s = fill(vnote, 498), .len = 498}};
        crdt_buf_reset(v);
        assert_int_equal(crdt_val_put_map(v, keys, vals, 3), 0);
        o.op[o.n - 1].val = (crdt_blob){v->p, (uint32_t)v->n};
    }
    su_make(&r->dev, "household", r->hh, &o, NOW, &r->env[0], NULL);
    /* delta = envelope - 74 bytes of framing and signature */
    assert_true(r->env[0].n - 74 + sizeof WIRE_DOMAIN_DELTA > 2048);
    su_ops_reset(&o);
    su_set_str(&o, "household", r->hh);
    su_set_str(&o, "name", "王秀英");
    su_set_str(&o, "id_number", idn);
    su_set_str(&o, "gender", "女");
    su_set_str(&o, "relation", "户主");
    su_make(&r->dev, "person", r->person, &o, NOW + 1000, &r->env[1], NULL);
    su_ops_reset(&o);
    su_set_keyed(&o, "payment", 2026, "代缴");
    su_add(&o, "tags", "低保");
    su_visit(&o, "visits", "2026-09-14", NULL);
    su_make(&r->dev, "person", r->person, &o, NOW + 2000, &r->env[2], NULL);
    su_ops_free(&o);
    frame_push(&r->push, 7, r->env, NDELTA);
}

static void run_free(run *r)
{
    for (int i = 0; i < NDELTA; i++) crdt_buf_free(&r->env[i]);
    crdt_buf_free(&r->push);
}

static void register_device(store *st, const run *r)
{
    store_txn *t;
    assert_int_equal(store_begin(st, STORE_RW, &t), 0);
    store_device d = {.id = r->dev_id, .state = STORE_DEV_ACTIVE, .epoch = 1};
    assert_int_equal(store_device_put(t, &d), 0);
    store_key k = {.dev = r->dev_id, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, r->dev.pk, 32);
    assert_int_equal(store_key_put(t, &k), 0);
    const char *hh[] = {r->hh};
    assert_int_equal(store_device_scope_set(t, r->dev_id, hh, 1), 0);
    assert_int_equal(store_commit(t), 0);
}

/* Every frame the server produces must be well-formed msgpack. */
static void check_frames(const sync_out *out)
{
    for (sync_frame *f = out->frames; f; f = f->next) {
        size_t off;
        int rc = crdt_mp_check(sync_frame_data(f), f->len, &cfg->lim, &off);
        if (rc) fail_msg("malformed frame from the server: %s at byte %zu", crdt_strerror(rc), off);
    }
}

/* The boolean "r" of an error frame. */
static bool error_retryable(const uint8_t *p, size_t n)
{
    msgpack_unpacked up;
    size_t off = 0;
    bool r = false;
    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS &&
        up.data.type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < up.data.via.map.size; i++) {
            const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
            if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 1 &&
                kv->key.via.str.ptr[0] == 'r' && kv->val.type == MSGPACK_OBJECT_BOOLEAN)
                r = kv->val.via.boolean;
        }
    msgpack_unpacked_destroy(&up);
    return r;
}

/* An ack whose NDELTA entries all say `want` (seq 1..NDELTA). */
static void expect_ack(const sync_frame *f, const char *want)
{
    const uint8_t *p = sync_frame_data((sync_frame *)f);
    assert_string_equal(mp_type(p, f->len), "ack");
    assert_int_equal(ack_count(p, f->len), NDELTA);
    for (size_t i = 0; i < NDELTA; i++) {
        char r[32] = "";
        int64_t code = 0;
        uint64_t seq = 0;
        assert_true(ack_entry(p, f->len, i, r, sizeof r, &code, &seq, NULL));
        if (strcmp(r, want))
            fail_msg("ack entry %zu: %s (code %lld: %s), expected %s", i, r, (long long)code,
                     sync_strerror((int)code), want);
        assert_int_equal(seq, i + 1);
    }
}

/* The retryable "nothing stored" answer to a push that failed as a whole. */
static void expect_unavailable(const sync_frame *f)
{
    const uint8_t *p = sync_frame_data((sync_frame *)f);
    int64_t code = 0;
    uint64_t id = 0;
    char m[200] = "";
    assert_string_equal(mp_type(p, f->len), "error");
    assert_true(mp_get_i64(p, f->len, "c", &code));
    assert_int_equal(code, SYNC_EUNAVAILABLE);
    assert_true(error_retryable(p, f->len));
    assert_true(mp_get_u64(p, f->len, "id", &id));
    assert_int_equal(id, 7);
    assert_true(mp_get_str(p, f->len, "m", m, sizeof m));
    assert_non_null(strstr(m, "nothing from this push was stored"));
}

/* A new authenticated session (unarmed). */
static sync_session *session_authed(store *st, const run *r)
{
    uint8_t nonce[32];
    randombytes_buf(nonce, sizeof nonce);
    sync_session *s = sync_session_new(st, cfg, nonce);
    assert_non_null(s);
    sync_out out;
    sync_out_init(&out);
    assert_int_equal(sync_session_hello(s, NOW, &out), 0);
    sync_frames_free(out.frames);
    crdt_buf m = {0};
    frame_auth(&m, r->dev_id, 1, r->dev.sk, store_server_pk(st), nonce);
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s, m.p, m.n, NOW, &out), 0);
    assert_non_null(out.frames);
    assert_string_equal(mp_type(sync_frame_data(out.frames), out.frames->len), "welcome");
    assert_true(sync_session_authed(s));
    sync_frames_free(out.frames);
    crdt_buf_free(&m);
    return s;
}

/* Chain head of the run's device, and whether its two records exist. */
static uint64_t stored_state(store *st, const run *r, bool *hh_there, bool *person_there)
{
    store_txn *t;
    uint64_t head = 0;
    uint8_t h[CRDT_HASH_BYTES];
    crdt_record *rec = NULL;
    assert_int_equal(store_begin(st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_chain_head(t, r->dev_id, &head, h), 0);
    int rc = store_get_record(t, "household", r->hh, &rec);
    assert_true(rc == STORE_OK || rc == STORE_ENOTFOUND);
    *hh_there = rc == STORE_OK;
    crdt_record_free(rec);
    rec = NULL;
    rc = store_get_record(t, "person", r->person, &rec);
    assert_true(rc == STORE_OK || rc == STORE_ENOTFOUND);
    *person_there = rc == STORE_OK;
    if (rc == STORE_OK) {
        /* all three deltas merged: the payment of the third is there */
        crdt_buf k = {0};
        crdt_val_put_int(&k, 2026);
        const crdt_field *f = crdt_record_field(rec, "payment", (crdt_blob){k.p, (uint32_t)k.n});
        assert_non_null(f);
        assert_int_equal(f->n, 1);
        crdt_buf_free(&k);
    }
    crdt_record_free(rec);
    store_abort(t);
    return head;
}

/* All or nothing: 3 and both records, or 0 and neither.  Returns true if
 * the push is stored. */
static bool check_all_or_nothing(store *st, const run *r)
{
    bool hh, person;
    uint64_t head = stored_state(st, r, &hh, &person);
    if (head == NDELTA && hh && person) return true;
    if (head == 0 && !hh && !person) return false;
    fail_msg("partial push stored for device %u: chain head %llu, household %s, person %s",
             r->dev_id, (unsigned long long)head, hh ? "present" : "absent",
             person ? "present" : "absent");
    return false;
}

static void print_line(void *arg, const char *line)
{
    (void)arg;
    printf("alloc_failures: store_verify: %s\n", line);
}

static void check_verify(store *st)
{
    uint64_t problems = 0;
    assert_int_equal(store_verify(st, print_line, NULL, &problems), 0);
    assert_int_equal(problems, 0);
}

/* Unarmed: push the run's deltas on a new session, verify, commit, ack;
 * every entry must say `want`. */
static void push_clean(store *st, const run *r, const char *want)
{
    sync_session *s = session_authed(st, r);
    sync_out out;
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s, r->push.p, r->push.n, NOW, &out), 0);
    assert_null(out.frames);
    assert_non_null(out.job);
    sync_job *j = out.job;
    assert_int_equal(sync_job_verify(st, cfg, j), 0);
    char (*touched)[CRDT_RECID_MAX + 1] = NULL;
    size_t nt = 0;
    assert_int_equal(sync_jobs_commit(st, cfg, j, NOW, &touched, &nt), 0);
    free(touched);
    sync_out_init(&out);
    assert_int_equal(sync_session_job_done(s, j, &out), 0);
    assert_non_null(out.frames);
    check_frames(&out);
    expect_ack(out.frames, want);
    sync_frames_free(out.frames);
    sync_session_free(s);
}

/* ---- decode path ---------------------------------------------------------------- */

/* One run of the decode path with allocation nth failing (0: none).
 * Returns whether the failure fired. */
static bool decode_run(uint32_t dev_id, uint64_t nth, bool warmup)
{
    run r;
    cur_path = "decode";
    cur_nth = nth;
    run_make(&r, dev_id);
    fresh_store();
    /* LMDB keeps freed dirty pages for reuse while the environment is
     * open, so blocks are counted from before the open to after the close. */
    int64_t live0 = failalloc_live();
    store *st = open_store();
    register_device(st, &r);

    sync_session *s = session_authed(st, &r);
    sync_out out;
    sync_out_init(&out);
    failalloc_arm(nth);
    int rc = sync_session_input(s, r.push.p, r.push.n, NOW, &out);
    sync_job *j = out.job;
    if (!rc && j) sync_job_verify(st, cfg, j);
    bool fired = failalloc_fired();
    failalloc_disarm();
    check_frames(&out);

    bool stored = false;
    if (rc) {
        /* The server closes the connection: nothing was judged. */
        assert_int_equal(rc, CRDT_ENOMEM);
        assert_true(fired);
        assert_null(j);
        sync_frames_free(out.frames);
        n_closed++;
    } else if (!j) {
        /* Refused before a job existed: only a retryable answer is right. */
        assert_true(fired);
        assert_non_null(out.frames);
        const uint8_t *p = sync_frame_data(out.frames);
        int64_t code = 0;
        assert_string_equal(mp_type(p, out.frames->len), "error");
        assert_true(mp_get_i64(p, out.frames->len, "c", &code));
        if (!error_retryable(p, out.frames->len))
            fail_msg("push refused with the non-retryable %lld (%s) after an allocation failure",
                     (long long)code, sync_strerror((int)code));
        sync_frames_free(out.frames);
        n_refused++;
    } else {
        assert_null(out.frames);
        /* Writer and loop, unarmed. */
        char (*touched)[CRDT_RECID_MAX + 1] = NULL;
        size_t nt = 0;
        int crc = sync_jobs_commit(st, cfg, j, NOW, &touched, &nt);
        free(touched);
        bool whole_failure = j->commit_rc != 0;
        sync_out_init(&out);
        assert_int_equal(sync_session_job_done(s, j, &out), 0);
        assert_non_null(out.frames);
        check_frames(&out);
        if (whole_failure) {
            assert_true(fired);
            assert_int_equal(crc, 0); /* the batch itself committed (nothing of this job) */
            expect_unavailable(out.frames);
            n_job_failed++;
        } else {
            expect_ack(out.frames, "applied");
            stored = true;
            n_acked++;
        }
        sync_frames_free(out.frames);
    }
    sync_session_free(s);
    assert_int_equal(check_all_or_nothing(st, &r), stored);

    /* The device resends on a new connection. */
    push_clean(st, &r, stored ? "duplicate" : "applied");
    assert_true(check_all_or_nothing(st, &r));
    check_verify(st);
    store_close(st);
    int64_t live1 = failalloc_live();
    run_free(&r);
    su_dir_remove(&dir);
    if (live1 != live0 && !warmup)
        fail_msg("decode path, allocation %llu failing: %lld blocks leaked",
                 (unsigned long long)nth, (long long)(live1 - live0));
    return fired;
}

static void test_decode_path(void **state)
{
    (void)state;
    double t0 = mono_s();
    n_closed = n_refused = n_job_failed = n_acked = 0;
    decode_run(1000, 0, true); /* warm-up */
    decode_run(1000, 0, false);
    uint64_t n = 1;
    while (decode_run(1000, n, false)) {
        n++;
        assert_true(n < MAX_POINTS);
    }
    cur_path = "";
    printf("alloc_failures: decode path: %llu failure points exercised (%.1f s): "
           "%u connection closed, %u retryable refusals, %u pushes failed as a whole, "
           "%u acked (runs unarmed included)\n",
           (unsigned long long)(n - 1), mono_s() - t0, n_closed, n_refused, n_job_failed,
           n_acked);
}

/* ---- commit path ---------------------------------------------------------------- */

static bool commit_run(uint32_t dev_id, uint64_t nth, bool warmup)
{
    run r;
    cur_path = "commit";
    cur_nth = nth;
    run_make(&r, dev_id);
    fresh_store();
    int64_t live0 = failalloc_live();
    store *st = open_store();
    register_device(st, &r);

    sync_session *s = session_authed(st, &r);
    sync_out out;
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s, r.push.p, r.push.n, NOW, &out), 0);
    sync_job *j = out.job;
    assert_non_null(j);
    assert_int_equal(sync_job_verify(st, cfg, j), 0);
    for (uint32_t i = 0; i < j->n; i++) assert_int_equal(j->items[i].code, 0);

    char (*touched)[CRDT_RECID_MAX + 1] = NULL;
    size_t nt = 0;
    sync_out_init(&out);
    failalloc_arm(nth);
    int rc = sync_jobs_commit(st, cfg, j, NOW, &touched, &nt);
    int drc = sync_session_job_done(s, j, &out); /* frees j */
    bool fired = failalloc_fired();
    failalloc_disarm();
    free(touched);
    check_frames(&out);
    if (getenv("ALLOC_FAILURES_VERBOSE"))
        printf("commit path: allocation %llu: fired %d, commit rc %d, answer rc %d, %zu touched\n",
               (unsigned long long)nth, fired, rc, drc, nt);
    if (rc) {
        assert_true(fired);
        if (!sync_retryable(rc) && rc != CRDT_ENOMEM)
            fail_msg("allocation %llu failing: commit failed with %d (%s)",
                     (unsigned long long)nth, rc, sync_strerror(rc));
        assert_int_equal(drc, 0);
        assert_non_null(out.frames);
        expect_unavailable(out.frames);
        n_commit_failed++;
    } else if (drc) {
        /* Committed, but the ack could not be built: no frame at all. */
        assert_int_equal(drc, CRDT_ENOMEM);
        assert_true(fired);
        assert_null(out.frames);
        n_no_answer++;
    } else {
        assert_non_null(out.frames);
        expect_ack(out.frames, "applied");
        n_acked++;
    }
    sync_frames_free(out.frames);
    sync_session_free(s);
    /* As the writer sees it, in the environment it goes on using ... */
    assert_int_equal(check_all_or_nothing(st, &r), rc == 0);
    check_verify(st);
    store_close(st);
    int64_t live1 = failalloc_live();
    if (live1 != live0 && !warmup)
        fail_msg("commit path, allocation %llu failing: %lld blocks leaked",
                 (unsigned long long)nth, (long long)(live1 - live0));

    /* ... and from disk: reopen and read, all or nothing, and consistent. */
    st = open_store();
    bool stored = check_all_or_nothing(st, &r);
    assert_int_equal(stored, rc == 0);
    check_verify(st);
    /* The device resends. */
    push_clean(st, &r, stored ? "duplicate" : "applied");
    assert_true(check_all_or_nothing(st, &r));
    check_verify(st);
    store_close(st);
    run_free(&r);
    su_dir_remove(&dir);
    return fired;
}

static void test_commit_path(void **state)
{
    (void)state;
    double t0 = mono_s();
    n_commit_failed = n_no_answer = n_acked = 0;
    commit_run(5000, 0, true); /* warm-up */
    commit_run(5000, 0, false);
    uint64_t n = 1;
    while (commit_run(5000, n, false)) {
        n++;
        assert_true(n < MAX_POINTS);
    }
    cur_path = "";
    printf("alloc_failures: commit path: %llu failure points exercised (%.1f s): "
           "%u commits failed (nothing stored), %u committed without an answer, "
           "%u acked (runs unarmed included)\n",
           (unsigned long long)(n - 1), mono_s() - t0, n_commit_failed, n_no_answer, n_acked);
}

/* ---- read paths: pull, subscribe + live, snapshot ---------------------------------- */

/*
 * After an unarmed push of the run's three deltas (server seqs 1..3), one
 * read request goes through sync_session_input with allocation nth failing
 * (for live: the subscribe and then sync_session_live).  Allowed outcomes:
 * input returns CRDT_ENOMEM (the server closes the connection), a retryable
 * error frame with the request's id, or the complete answer: a `changes`
 * frame with exactly the expected envelopes byte for byte, their seqs and
 * the right cursor, or signed snapshot pages that all verify and together
 * hold exactly the records of an unarmed snapshot.  sync_session_live may
 * also fail (rc != 0, no frame) as long as the live cursor did not move: the
 * unarmed call that follows must then deliver everything.  After every armed
 * request the same session must answer the same request completely,
 * unarmed (nothing in the session was left half-changed).
 */
typedef enum { RP_PULL, RP_PULL_PAGED, RP_LIVE, RP_SNAPSHOT, RP_SNAPSHOT_K, RP_COUNT } read_path;
static const char *const rp_name[RP_COUNT] = {"pull", "pull (paged, m=2)", "subscribe + live",
                                              "snapshot", "snapshot of listed persons"};
static unsigned n_answered, n_live_failed;

static uint64_t mp_uint(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = wire_mp_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) fail_msg("key %s: no uint", key);
    return v->via.u64;
}

static bool mp_bool(const msgpack_object *map, const char *key)
{
    const msgpack_object *v = wire_mp_get(map, key);
    if (!v || v->type != MSGPACK_OBJECT_BOOLEAN) fail_msg("key %s: no bool", key);
    return v->via.boolean;
}

/* A changes frame with id `id` holding envelopes first..first+count-1 of r
 * (server seqs first+1..), `more`, and cursor `n`. */
static void expect_changes(const sync_frame *f, const run *r, uint64_t id, unsigned first,
                           unsigned count, bool more, uint64_t n)
{
    msgpack_unpacked up;
    size_t off = 0;
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, (const char *)sync_frame_data((sync_frame *)f),
                                         f->len, &off),
                     MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, f->len);
    const msgpack_object *m = &up.data;
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(m->via.map.size, 7);   /* e, id, k, more, n, q, t */
    const msgpack_object *t = wire_mp_get(m, "t"), *e = wire_mp_get(m, "e"), *q = wire_mp_get(m, "q");
    const msgpack_object *k = wire_mp_get(m, "k");   /* the signers' key records */
    assert_true(k && k->type == MSGPACK_OBJECT_ARRAY && (count == 0 || k->via.array.size > 0));
    assert_non_null(t);
    assert_true(t->type == MSGPACK_OBJECT_STR && t->via.str.size == 7 &&
                !memcmp(t->via.str.ptr, "changes", 7));
    assert_int_equal(mp_uint(m, "id"), id);
    assert_true(e && e->type == MSGPACK_OBJECT_ARRAY);
    assert_true(q && q->type == MSGPACK_OBJECT_ARRAY);
    if (e->via.array.size != count || q->via.array.size != count)
        fail_msg("changes frame with %u envelopes and %u seqs, expected %u",
                 e->via.array.size, q->via.array.size, count);
    for (unsigned i = 0; i < count; i++) {
        const msgpack_object *b = &e->via.array.ptr[i];
        const crdt_buf *want = &r->env[first + i];
        assert_int_equal(b->type, MSGPACK_OBJECT_BIN);
        assert_int_equal(b->via.bin.size, want->n);
        assert_memory_equal(b->via.bin.ptr, want->p, want->n);
        assert_int_equal(q->via.array.ptr[i].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(q->via.array.ptr[i].via.u64, first + i + 1);
    }
    if (mp_bool(m, "more") != more) fail_msg("changes frame: more is %d, expected %d", !more, more);
    if (mp_uint(m, "n") != n)
        fail_msg("changes frame: cursor %llu, expected %llu",
                 (unsigned long long)mp_uint(m, "n"), (unsigned long long)n);
    msgpack_unpacked_destroy(&up);
}

/* The retryable error answering request `id`. */
static void expect_retryable_error(const sync_frame *f, uint64_t id)
{
    const uint8_t *p = sync_frame_data((sync_frame *)f);
    int64_t code = 0;
    uint64_t got = 0;
    assert_string_equal(mp_type(p, f->len), "error");
    assert_true(mp_get_i64(p, f->len, "c", &code));
    if (!error_retryable(p, f->len))
        fail_msg("read request refused with the non-retryable %lld (%s)", (long long)code,
                 sync_strerror((int)code));
    assert_true(mp_get_u64(p, f->len, "id", &got));
    assert_int_equal(got, id);
}

static void be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

/* Snapshot pages answering request `id`: numbered 0.., `more` on all but
 * the last, cursor `cursor`, every signature verifies (checked here from the
 * records, independently of the server's code).  The records, each as
 * len BE32 || bytes, are appended to *recs; returns their number. */
static size_t expect_snapshot(const sync_out *out, store *st, const run *r, uint64_t id,
                              uint64_t cursor, crdt_buf *recs)
{
    size_t nrec = 0;
    uint32_t pageno = 0;
    assert_non_null(out->frames);
    for (const sync_frame *f = out->frames; f; f = f->next, pageno++) {
        msgpack_unpacked up;
        size_t off = 0;
        msgpack_unpacked_init(&up);
        assert_int_equal(msgpack_unpack_next(&up, (const char *)sync_frame_data((sync_frame *)f),
                                             f->len, &off),
                         MSGPACK_UNPACK_SUCCESS);
        const msgpack_object *m = &up.data;
        assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(m->via.map.size, 7);
        const msgpack_object *t = wire_mp_get(m, "t"), *g = wire_mp_get(m, "g"), *rs = wire_mp_get(m, "r");
        if (!t || t->type != MSGPACK_OBJECT_STR || t->via.str.size != 8 ||
            memcmp(t->via.str.ptr, "snapshot", 8))
            fail_msg("page %u of a snapshot is a %s frame", pageno,
                     mp_type(sync_frame_data((sync_frame *)f), f->len));
        assert_int_equal(mp_uint(m, "id"), id);
        assert_int_equal(mp_uint(m, "p"), pageno);
        assert_int_equal(mp_uint(m, "n"), cursor);
        bool more = mp_bool(m, "more");
        assert_int_equal(more, f->next != NULL);
        assert_true(g && g->type == MSGPACK_OBJECT_BIN && g->via.bin.size == 64);
        assert_true(rs && rs->type == MSGPACK_OBJECT_ARRAY);
        crypto_generichash_state h;
        crypto_generichash_init(&h, NULL, 0, 32);
        for (uint32_t i = 0; i < rs->via.array.size; i++) {
            const msgpack_object *b = &rs->via.array.ptr[i];
            uint8_t len[4];
            assert_int_equal(b->type, MSGPACK_OBJECT_BIN);
            be(len, b->via.bin.size, 4);
            crypto_generichash_update(&h, len, 4);
            crypto_generichash_update(&h, (const uint8_t *)b->via.bin.ptr, b->via.bin.size);
            crdt_buf_append(recs, len, 4);
            crdt_buf_append(recs, b->via.bin.ptr, b->via.bin.size);
            nrec++;
        }
        uint8_t msg[sizeof WIRE_DOMAIN_SNAPSHOT + 4 + 8 + 4 + 1 + 32];
        memcpy(msg, WIRE_DOMAIN_SNAPSHOT, sizeof WIRE_DOMAIN_SNAPSHOT); /* with its 0 */
        uint8_t *q = msg + sizeof WIRE_DOMAIN_SNAPSHOT;
        be(q, r->dev_id, 4);
        be(q + 4, cursor, 8);
        be(q + 12, pageno, 4);
        q[16] = more;
        crypto_generichash_final(&h, q + 17, 32);
        if (crypto_sign_verify_detached((const uint8_t *)g->via.bin.ptr, msg, sizeof msg,
                                        store_server_pk(st)))
            fail_msg("snapshot page %u: the signature does not verify", pageno);
        msgpack_unpacked_destroy(&up);
    }
    return nrec;
}

static void read_request(read_path path, crdt_buf *req)
{
    crdt_buf_reset(req);
    msgpack_packer pk;
    switch (path) {
    case RP_PULL: frame_pull(req, 9, 0, 500); break;
    case RP_PULL_PAGED: frame_pull(req, 9, 0, 2); break;
    case RP_LIVE: frame_subscribe(req, 0); break;
    case RP_SNAPSHOT:
    case RP_SNAPSHOT_K:
        msgpack_packer_init(&pk, req, crdt_buf_pack_write);
        msgpack_pack_map(&pk, path == RP_SNAPSHOT_K ? 3 : 2);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_uint64(&pk, 11);
        if (path == RP_SNAPSHOT_K) {
            msgpack_pack_str_with_body(&pk, "k", 1);
            msgpack_pack_array(&pk, 2);
            msgpack_pack_str_with_body(&pk, "P6000", 5);
            msgpack_pack_str_with_body(&pk, "P-absent", 8);
        }
        msgpack_pack_str_with_body(&pk, "t", 1);
        msgpack_pack_str_with_body(&pk, "snapshot", 8);
        break;
    default: fail();
    }
}

/* The complete answer to `path`'s request, as frames in out (for live: the
 * frame sync_session_live produced).  recs: see expect_snapshot. */
static void expect_answer(read_path path, const sync_out *out, store *st, const run *r,
                          crdt_buf *recs)
{
    check_frames(out);
    switch (path) {
    case RP_PULL:
    case RP_LIVE:
        assert_non_null(out->frames);
        assert_null(out->frames->next);
        expect_changes(out->frames, r, path == RP_LIVE ? 0 : 9, 0, NDELTA, false, NDELTA);
        break;
    case RP_PULL_PAGED:
        assert_non_null(out->frames);
        assert_null(out->frames->next);
        expect_changes(out->frames, r, 9, 0, 2, true, 2);
        break;
    case RP_SNAPSHOT:
        assert_int_equal(expect_snapshot(out, st, r, 11, NDELTA, recs), 2);
        break;
    case RP_SNAPSHOT_K:
        assert_int_equal(expect_snapshot(out, st, r, 11, NDELTA, recs), 1);
        break;
    default: fail();
    }
}

/* Unarmed: the request on session s must be answered completely. */
static void read_clean(read_path path, sync_session *s, store *st, const run *r, crdt_buf *recs)
{
    crdt_buf req = {0};
    read_request(path, &req);
    sync_out out;
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s, req.p, req.n, NOW, &out), 0);
    if (path == RP_LIVE) {
        assert_null(out.frames);
        assert_true(out.wake_live);
        bool more = true;
        sync_out_init(&out);
        assert_int_equal(sync_session_live(s, &out, &more), 0);
        assert_false(more);
    }
    expect_answer(path, &out, st, r, recs);
    sync_frames_free(out.frames);
    crdt_buf_free(&req);
}

static bool read_run(read_path path, uint64_t nth, bool warmup)
{
    run r;
    cur_path = rp_name[path];
    cur_nth = nth;
    run_make(&r, 6000);
    fresh_store();
    int64_t live0 = failalloc_live();
    store *st = open_store();
    register_device(st, &r);
    push_clean(st, &r, "applied");

    crdt_buf req = {0}, got = {0}, want = {0};
    read_request(path, &req);
    sync_session *s = session_authed(st, &r);
    sync_out out;
    sync_out_init(&out);
    failalloc_arm(nth);
    int rc = sync_session_input(s, req.p, req.n, NOW, &out);
    int lrc = 0;
    bool more = false, lived = false;
    if (path == RP_LIVE && !rc && out.wake_live && !out.frames) {
        lived = true;
        lrc = sync_session_live(s, &out, &more);
    }
    bool fired = failalloc_fired();
    failalloc_disarm();
    check_frames(&out);
    if (getenv("ALLOC_FAILURES_VERBOSE"))
        printf("%s: allocation %llu: fired %d, input rc %d, live rc %d, frames %s\n",
               rp_name[path], (unsigned long long)nth, fired, rc, lrc,
               out.frames ? mp_type(sync_frame_data(out.frames), out.frames->len) : "none");

    bool session_usable = true;
    if (rc) {
        /* The server closes the connection. */
        assert_int_equal(rc, CRDT_ENOMEM);
        assert_true(fired);
        assert_null(out.frames);
        session_usable = false;
        n_closed++;
    } else if (path == RP_LIVE && !lived) {
        /* The subscribe itself was refused. */
        assert_true(fired);
        assert_non_null(out.frames);
        assert_null(out.frames->next);
        assert_string_equal(mp_type(sync_frame_data(out.frames), out.frames->len), "error");
        assert_true(error_retryable(sync_frame_data(out.frames), out.frames->len));
        n_refused++;
    } else if (path == RP_LIVE && lrc) {
        /* Live failed: nothing sent, and the cursor must not have moved
         * (read_clean below sends the same subscribe again, so check with
         * a plain sync_session_live first). */
        assert_true(fired);
        assert_null(out.frames);
        sync_out_init(&out);
        assert_int_equal(sync_session_live(s, &out, &more), 0);
        expect_answer(path, &out, st, &r, &got);
        n_live_failed++;
    } else if (out.frames &&
               !strcmp(mp_type(sync_frame_data(out.frames), out.frames->len), "error")) {
        assert_true(fired);
        assert_null(out.frames->next);
        expect_retryable_error(out.frames, path == RP_SNAPSHOT || path == RP_SNAPSHOT_K ? 11 : 9);
        n_refused++;
    } else {
        if (!out.frames)
            fail_msg("%s: allocation %llu failing: success without an answer", rp_name[path],
                     (unsigned long long)nth);
        expect_answer(path, &out, st, &r, &got);
        if (path == RP_LIVE) assert_false(more);
        n_answered++;
    }
    sync_frames_free(out.frames);
    /* The same session (if the server kept it) answers completely now. */
    if (session_usable) {
        read_clean(path, s, st, &r, &want);
        if (got.n && (got.n != want.n || memcmp(got.p, want.p, got.n)))
            fail_msg("%s: allocation %llu failing: records differ from an unarmed snapshot",
                     rp_name[path], (unsigned long long)nth);
    }
    sync_session_free(s);
    crdt_buf_free(&req);
    crdt_buf_free(&got);
    crdt_buf_free(&want);
    check_verify(st);
    store_close(st);
    int64_t live1 = failalloc_live();
    run_free(&r);
    su_dir_remove(&dir);
    if (live1 != live0 && !warmup)
        fail_msg("%s path, allocation %llu failing: %lld blocks leaked", rp_name[path],
                 (unsigned long long)nth, (long long)(live1 - live0));
    return fired;
}

static void read_path_test(read_path path)
{
    double t0 = mono_s();
    n_closed = n_refused = n_live_failed = n_answered = 0;
    read_run(path, 0, true); /* warm-up */
    read_run(path, 0, false);
    uint64_t n = 1;
    while (read_run(path, n, false)) {
        n++;
        assert_true(n < MAX_POINTS);
    }
    cur_path = "";
    printf("alloc_failures: %s path: %llu failure points exercised (%.1f s): "
           "%u connection closed, %u retryable refusals, %u live calls failed (cursor kept), "
           "%u answered completely (runs unarmed included)\n",
           rp_name[path], (unsigned long long)(n - 1), mono_s() - t0, n_closed, n_refused,
           n_live_failed, n_answered);
}

static void test_pull_path(void **state)
{
    (void)state;
    read_path_test(RP_PULL);
}

static void test_pull_paged_path(void **state)
{
    (void)state;
    read_path_test(RP_PULL_PAGED);
}

static void test_live_path(void **state)
{
    (void)state;
    read_path_test(RP_LIVE);
}

static void test_snapshot_path(void **state)
{
    (void)state;
    read_path_test(RP_SNAPSHOT);
}

static void test_snapshot_k_path(void **state)
{
    (void)state;
    read_path_test(RP_SNAPSHOT_K);
}

/* ---- setup ------------------------------------------------------------------------ */

static int test_teardown(void **state)
{
    (void)state;
    failalloc_disarm();
    if (*cur_path)
        printf("alloc_failures: last run: %s path, allocation %llu failing\n", cur_path,
               (unsigned long long)cur_nth);
    cur_path = "";
    return 0;
}

/* Is this process's malloc really failalloc's?  (valgrind replaces malloc
 * in the main executable too unless told --soname-synonyms=somalloc=
 * nouserintercepts; the Makefile's memcheck says so.)  Without it every
 * run would pass without a single failure injected. */
static int check_interposed(void)
{
    failalloc_arm(1);
    void *volatile p = malloc(16);
    bool fired = failalloc_fired();
    failalloc_disarm();
    free(p);
    if (fired && !p) return 0;
    fprintf(stderr, "alloc_failures: malloc is not failalloc's here (under valgrind, add "
                    "--soname-synonyms=somalloc=nouserintercepts)\n");
    return 1;
}

int main(void)
{
    if (wire_init() || check_interposed()) return 1;
    /* e.g. ALLOC_FAILURES_ONLY=test_commit_path, when chasing one failure */
    const char *only = getenv("ALLOC_FAILURES_ONLY");
    if (only && *only) cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_decode_path, test_teardown),
        cmocka_unit_test_teardown(test_commit_path, test_teardown),
        cmocka_unit_test_teardown(test_pull_path, test_teardown),
        cmocka_unit_test_teardown(test_pull_paged_path, test_teardown),
        cmocka_unit_test_teardown(test_live_path, test_teardown),
        cmocka_unit_test_teardown(test_snapshot_path, test_teardown),
        cmocka_unit_test_teardown(test_snapshot_k_path, test_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
