/*
 * test_session.c — the session logic as the pure function it is: frames in,
 * frames/jobs/close codes out, with a store and a time, and no socket.  A
 * push job is run through sync_job_verify and sync_jobs_commit by hand, as
 * the server's threads would, to show the ack is built only from committed
 * outcomes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "storeutil.h"
#include "sync.h"
#include "testutil.h"
#include "wsclient.h"

#define NOW 1790000000000ull

typedef struct fx {
    su_dir d;
    store *st;
    sync_session *s;
    su_dev dev;
    uint8_t nonce[32];
} fx;

static void fx_open(fx *f)
{
    su_dir_make(&f->d, "session");
    f->st = su_store_new(&f->d, NULL);
    su_dev_init(&f->dev, 3);
    store_txn *t;
    assert_int_equal(store_begin(f->st, STORE_RW, &t), 0);
    store_device d = {.id = 3, .state = STORE_DEV_ACTIVE, .epoch = 1};
    assert_int_equal(store_device_put(t, &d), 0);
    store_key k = {.dev = 3, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, f->dev.pk, 32);
    assert_int_equal(store_key_put(t, &k), 0);
    const char *hh[] = {"H1"};
    assert_int_equal(store_device_scope_set(t, 3, hh, 1), 0);
    assert_int_equal(store_commit(t), 0);
    randombytes_buf(f->nonce, 32);
    f->s = sync_session_new(f->st, &sync_config_default, f->nonce);
    assert_non_null(f->s);
}

static void fx_close(fx *f)
{
    sync_session_free(f->s);
    store_close(f->st);
    su_dir_remove(&f->d);
}

/* Feed one message; return the first output frame's type (or ""). */
static const char *feed(fx *f, const crdt_buf *msg, sync_out *out)
{
    sync_out_init(out);
    assert_int_equal(sync_session_input(f->s, msg->p, msg->n, NOW, out), 0);
    return out->frames ? mp_type(sync_frame_data(out->frames), out->frames->len) : "";
}

static void test_hello_auth_push_ack(void **state)
{
    (void)state;
    fx f;
    fx_open(&f);
    sync_out out;
    sync_out_init(&out);
    assert_int_equal(sync_session_hello(f.s, NOW, &out), 0);
    assert_string_equal(mp_type(sync_frame_data(out.frames), out.frames->len), "hello");
    sync_frames_free(out.frames);

    crdt_buf m = {0}, env = {0};
    frame_auth(&m, 3, 1, f.dev.sk, store_server_pk(f.st), f.nonce);
    assert_string_equal(feed(&f, &m, &out), "welcome");
    assert_int_equal(out.close_code, 0);
    assert_true(sync_session_authed(f.s));
    sync_frames_free(out.frames);

    /* A push becomes a job, not an ack. */
    su_ops o = {0};
    su_set_str(&o, "note", "offline visit");
    su_make(&f.dev, "household", "H1", &o, NOW, &env, NULL);
    frame_push(&m, 42, &env, 1);
    assert_string_equal(feed(&f, &m, &out), "");
    assert_non_null(out.job);
    assert_int_equal(sync_session_inflight(f.s), 1);
    sync_job *j = out.job;
    /* Worker: verify.  Writer: commit.  Loop: ack. */
    assert_int_equal(sync_job_verify(f.st, &sync_config_default, j), 0);
    assert_int_equal(j->items[0].code, 0);
    char (*touched)[CRDT_RECID_MAX + 1] = NULL;
    size_t nt = 0;
    assert_int_equal(sync_jobs_commit(f.st, &sync_config_default, j, NOW, &touched, &nt), 0);
    assert_int_equal(nt, 1);
    assert_string_equal(touched[0], "H1");
    free(touched);
    sync_out_init(&out);
    assert_int_equal(sync_session_job_done(f.s, j, &out), 0);
    assert_string_equal(mp_type(sync_frame_data(out.frames), out.frames->len), "ack");
    char r[32];
    assert_true(ack_entry(sync_frame_data(out.frames), out.frames->len, 0, r, sizeof r, NULL, NULL,
                          NULL));
    assert_string_equal(r, "applied");
    assert_int_equal(sync_session_inflight(f.s), 0);
    sync_frames_free(out.frames);

    /* A failed commit gives a retryable error, never an ack. */
    frame_push(&m, 43, &env, 1);
    feed(&f, &m, &out);
    j = out.job;
    assert_non_null(j);
    j->commit_rc = STORE_ENOSPC;
    sync_out_init(&out);
    assert_int_equal(sync_session_job_done(f.s, j, &out), 0);
    assert_string_equal(mp_type(sync_frame_data(out.frames), out.frames->len), "error");
    int64_t code;
    assert_true(mp_get_i64(sync_frame_data(out.frames), out.frames->len, "c", &code));
    assert_int_equal(code, SYNC_EUNAVAILABLE);
    assert_true(sync_retryable((int)code));
    sync_frames_free(out.frames);

    /* Inflight cap. */
    for (int i = 0; i < 4; i++) {
        frame_push(&m, 50 + (uint64_t)i, &env, 1);
        feed(&f, &m, &out);
        assert_non_null(out.job);
        sync_job_free(out.job);
    }
    frame_push(&m, 60, &env, 1);
    assert_string_equal(feed(&f, &m, &out), "error");
    assert_true(mp_get_i64(sync_frame_data(out.frames), out.frames->len, "c", &code));
    assert_int_equal(code, SYNC_EBUSY);
    sync_frames_free(out.frames);
    su_ops_free(&o);
    crdt_buf_free(&m);
    crdt_buf_free(&env);
    fx_close(&f);
}

static void test_refusals_without_socket(void **state)
{
    (void)state;
    fx f;
    fx_open(&f);
    sync_out out;
    crdt_buf m = {0};
    /* pull before auth */
    frame_pull(&m, 1, 0, 10);
    assert_string_equal(feed(&f, &m, &out), "error");
    assert_int_equal(out.close_code, 1008);
    sync_frames_free(out.frames);
    /* oversized (by the limit in the config) → 1009; invalid → 1007 */
    sync_config small = sync_config_default;
    small.lim.max_msg = 8;
    sync_session *s2 = sync_session_new(f.st, &small, f.nonce);
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s2, m.p, m.n, NOW, &out), 0);
    assert_int_equal(out.close_code, 1009);
    sync_frames_free(out.frames);
    static const uint8_t ext[] = {0xd4, 0x01, 0x00};
    sync_out_init(&out);
    assert_int_equal(sync_session_input(s2, ext, sizeof ext, NOW, &out), 0);
    assert_int_equal(out.close_code, 1007);
    sync_frames_free(out.frames);
    sync_session_free(s2);
    /* auth with unknown keys in the frame */
    static const uint8_t extra[] = {0x82, 0xa1, 't', 0xa4, 'a', 'u', 't', 'h', 0xa1, 'z', 0xc0};
    crdt_buf x = {0};
    crdt_buf_append(&x, extra, sizeof extra);
    assert_string_equal(feed(&f, &x, &out), "error");
    int64_t code;
    assert_true(mp_get_i64(sync_frame_data(out.frames), out.frames->len, "c", &code));
    assert_int_equal(code, SYNC_EPROTO);
    sync_frames_free(out.frames);
    crdt_buf_free(&x);
    crdt_buf_free(&m);
    fx_close(&f);
}

/* The token bucket's arithmetic (sync/limit.c), with explicit times. */
static void test_limiter(void **state)
{
    (void)state;
    sync_config cfg = sync_config_default;
    cfg.device_rate = 100; /* 100 deltas/s = 0.1 per ms */
    cfg.device_burst = 300;
    sync_limiter *l = sync_limiter_new();
    assert_non_null(l);
    uint64_t ra = 0, t = 1000000;
    /* A full bucket at first sight; 300 in any split. */
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 200, t, &ra), SYNC_OK);
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 100, t, &ra), SYNC_OK);
    /* Empty: one delta needs 10 ms; a refusal takes nothing. */
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 1, t, &ra), SYNC_ERATE);
    assert_int_equal(ra, 10);
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 50, t + 5, &ra), SYNC_ERATE);
    assert_int_equal(ra, 495);                 /* 50 needed, 0.5 there */
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 50, t + 500, &ra), SYNC_OK);
    assert_int_equal(sync_limiter_refused(l), 2);
    /* An empty push costs one. */
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 0, t + 500, &ra), SYNC_ERATE);
    assert_int_equal(ra, 10);
    /* Refill stops at the burst, however long the pause. */
    t += 1000ull * 3600 * 24 * 365;
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 300, t, &ra), SYNC_OK);
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 1, t, &ra), SYNC_ERATE);
    /* A wall clock stepping back neither refills nor locks the device out. */
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 1, t - 3600000, &ra), SYNC_ERATE);
    assert_int_equal(ra, 10);
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 1, t - 3600000 + 10, &ra), SYNC_OK);
    /* A push larger than the burst needs a full bucket, then passes. */
    assert_int_equal(sync_limiter_take(l, &cfg, 8, 500, t, &ra), SYNC_OK);
    assert_int_equal(sync_limiter_take(l, &cfg, 8, 500, t, &ra), SYNC_ERATE);
    assert_int_equal(ra, 3000);
    assert_int_equal(sync_limiter_take(l, &cfg, 8, 500, t + 3000, &ra), SYNC_OK);
    /* Devices are independent, also after the table grew (64 slots at first). */
    for (uint32_t d = 100; d < 1100; d++)
        assert_int_equal(sync_limiter_take(l, &cfg, d, 300, t, &ra), SYNC_OK);
    for (uint32_t d = 100; d < 1100; d++)
        assert_int_equal(sync_limiter_take(l, &cfg, d, 1, t, &ra), SYNC_ERATE);
    assert_int_equal(sync_limiter_take(l, &cfg, 1100, 300, t, &ra), SYNC_OK);
    /* No limit: rate 0, device 0 (the server), or no limiter. */
    assert_int_equal(sync_limiter_take(l, &cfg, 0, 100000, t, &ra), SYNC_OK);
    assert_int_equal(sync_limiter_take(NULL, &cfg, 7, 100000, t, &ra), SYNC_OK);
    cfg.device_rate = 0;
    assert_int_equal(sync_limiter_take(l, &cfg, 7, 100000, t, &ra), SYNC_OK);
    assert_int_equal(ra, 0);
    sync_limiter_free(l);
}

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_auth_push_ack),
        cmocka_unit_test(test_refusals_without_socket),
        cmocka_unit_test(test_limiter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
