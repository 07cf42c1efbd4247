/*
 * test_hostile.c — the hostile-client catalogue (issue #9): one server in
 * this process (sync_server_run on a thread, port 0), raw-socket clients
 * (tests/common/wsclient.c) that send what a well-behaved phone never
 * would, each case expecting the error code or WebSocket close code that
 * docs/PROTOCOL.md documents.
 *
 * After every case (check_after): the server answers /healthz; a witness
 * device still pushes a delta and a second witness pulls it back byte for
 * byte; the delta log holds exactly the deltas the cases saw acked as
 * "applied" (nothing invalid was stored); store_verify passes.  The memory
 * case measures the process's allocated bytes (mallinfo2, or the sanitizer
 * allocator under ASan) across a repeated series of hostile connections and
 * floods and fails if it keeps growing.
 *
 * docs/RELIABILITY.md points here for "bounded input", "bounded memory per
 * connection", "clock skew", "clones" and "revocation".
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <msgpack.h>
#include <sodium.h>
#if defined(DOORSTEP_SANITIZED)
#include <sanitizer/allocator_interface.h>
#endif

#include "storeutil.h"
#include "sync.h"
#include "testutil.h"
#include "wsclient.h"

/* ---- the shared server ------------------------------------------------------------ */

static struct {
    su_dir d;
    store *st;
    sync_server *sv;
    sync_config cfg;
    pthread_t th;
    int port;
    uint64_t applied;       /* deltas the cases saw "applied": the log's length */
    uint32_t next_dev;      /* device ids handed out by new_device */
    su_dev w1, w2;          /* witnesses */
    uint64_t w2_cursor;
} S;

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *run_thread(void *arg)
{
    (void)arg;
    sync_server_run(S.sv);
    return NULL;
}

static void put_device(su_dev *dev, uint32_t id, const char *const *hh, size_t n, uint8_t state)
{
    store_txn *t;
    su_dev_init(dev, id);
    assert_int_equal(store_begin(S.st, STORE_RW, &t), 0);
    store_device d = {.id = id, .state = state, .epoch = 1};
    snprintf(d.volunteer, sizeof d.volunteer, "hostile%u", id);
    assert_int_equal(store_device_put(t, &d), 0);
    store_key k = {.dev = id, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, dev->pk, 32);
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_device_scope_set(t, id, hh, n), 0);
    assert_int_equal(store_commit(t), 0);
}

/* A fresh device with its own household "HX<id>" in scope. */
static void new_device(su_dev *dev, char hh[16], uint8_t state)
{
    uint32_t id = S.next_dev++;
    snprintf(hh, 16, "HX%u", id);
    const char *scope[] = {hh};
    put_device(dev, id, scope, 1, state);
}

static void set_state(uint32_t id, uint8_t state, uint64_t revoked_at)
{
    store_txn *t;
    store_device d;
    assert_int_equal(store_begin(S.st, STORE_RW, &t), 0);
    assert_int_equal(store_device_get(t, id, &d), 0);
    d.state = state;
    d.revoked_at_seq = revoked_at;
    assert_int_equal(store_device_put(t, &d), 0);
    assert_int_equal(store_commit(t), 0);
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    memset(&S, 0, sizeof S);
    su_dir_make(&S.d, "hostile");
    S.st = su_store_new(&S.d, NULL);
    S.cfg = sync_config_default;
    S.cfg.auth_timeout_s = 2;
    S.cfg.seen_flush_ms = 300;
    sync_server_opts o = {.listen_host = "127.0.0.1", .port = 0, .verify_threads = 2,
                          .log_level = 0};
    if (sync_server_new(S.st, &S.cfg, &o, &S.sv, err, sizeof err)) fail_msg("server: %s", err);
    S.port = sync_server_port(S.sv);
    assert_int_equal(pthread_create(&S.th, NULL, run_thread, NULL), 0);
    const char *ws[] = {"HW"};
    put_device(&S.w1, 1, ws, 1, STORE_DEV_ACTIVE);
    put_device(&S.w2, 2, ws, 1, STORE_DEV_ACTIVE);
    S.next_dev = 100;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    sync_server_stop(S.sv);
    pthread_join(S.th, NULL);
    sync_server_free(S.sv);
    store_close(S.st);
    su_dir_remove(&S.d);
    return 0;
}

/* ---- client helpers ------------------------------------------------------------------ */

static void expect_frame(wsc *c, crdt_buf *m, const char *type)
{
    int cc = 0;
    int op = wsc_recv(c, 5000, m, &cc);
    if (op != WSC_BINARY) fail_msg("expected a %s frame, got op %d (close %d)", type, op, cc);
    if (strcmp(mp_type(m->p, m->n), type)) {
        int64_t code = 0;
        char msg[200] = "";
        mp_get_i64(m->p, m->n, "c", &code);
        mp_get_str(m->p, m->n, "m", msg, sizeof msg);
        fail_msg("expected %s, got '%s' (code %lld: %s)", type, mp_type(m->p, m->n),
                 (long long)code, msg);
    }
}

/* Expect an error frame with `code` (and, if want_id, that id), then (if
 * close_code) the close with that code.  Returns the frame's "r". */
static bool expect_error_id(wsc *c, int code, int close_code, uint64_t want_id)
{
    crdt_buf m = {0};
    int cc = 0;
    expect_frame(c, &m, "error");
    int64_t got = 0;
    assert_true(mp_get_i64(m.p, m.n, "c", &got));
    if (got != code) fail_msg("error code %lld, want %d", (long long)got, code);
    uint64_t id = 0;
    bool has_id = mp_get_u64(m.p, m.n, "id", &id);
    if (want_id && (!has_id || id != want_id)) fail_msg("error id %llu, want %llu",
                                                        (unsigned long long)id,
                                                        (unsigned long long)want_id);
    bool retry = memmem(m.p, m.n, "\xa1r\xc3", 3) != NULL;
    if (close_code) {
        int op = wsc_recv(c, 5000, &m, &cc);
        if (op != WSC_CLOSE) fail_msg("expected close %d, got op %d", close_code, op);
        assert_int_equal(cc, close_code);
    }
    crdt_buf_free(&m);
    return retry;
}

static void expect_error(wsc *c, int code, int close_code)
{
    expect_error_id(c, code, close_code, 0);
}

/* An error frame with code and no "id" key (the frame had no valid id to echo). */
static void expect_error_no_id(wsc *c, int code)
{
    crdt_buf m = {0};
    expect_frame(c, &m, "error");
    int64_t got = 0;
    uint64_t id = 0;
    assert_true(mp_get_i64(m.p, m.n, "c", &got));
    assert_int_equal(got, code);
    if (mp_get_u64(m.p, m.n, "id", &id)) fail_msg("error carries id %llu, want none",
                                                  (unsigned long long)id);
    crdt_buf_free(&m);
}

/* Expect the connection to end: a close frame with close_code, or (if
 * drop_ok) the TCP connection simply dropping. */
static void expect_close(wsc *c, int close_code, bool drop_ok, int timeout_ms)
{
    crdt_buf m = {0};
    int cc = 0;
    int op = wsc_recv(c, timeout_ms, &m, &cc);
    while (op == WSC_BINARY && drop_ok) /* an error frame may come first */
        op = wsc_recv(c, timeout_ms, &m, &cc);
    crdt_buf_free(&m);
    if (op == WSC_CLOSE) {
        assert_int_equal(cc, close_code);
        return;
    }
    if (op == -1 && drop_ok) return;
    fail_msg("expected close %d, got op %d", close_code, op);
}

static void connect_ok(wsc *c, su_dev *d, crdt_buf *welcome)
{
    int rc = device_connect(c, S.port, d->id, 1, d->sk, welcome);
    if (rc) fail_msg("device %u: connect failed with %d", d->id, rc);
}

/* Read hello; returns server key and nonce. */
static void hello(wsc *c, uint8_t spk[32], uint8_t nonce[32])
{
    crdt_buf m = {0};
    assert_int_equal(wsc_connect(c, "127.0.0.1", S.port, "/sync", SYNC_SUBPROTOCOL), 0);
    expect_frame(c, &m, "hello");
    assert_true(mp_get_bin(m.p, m.n, "srv", spk, 32));
    assert_true(mp_get_bin(m.p, m.n, "n", nonce, 32));
    crdt_buf_free(&m);
}

/* A household delta from dev at wall time ms. */
static void hh_delta_at(su_dev *dev, const char *hh, const char *note, uint64_t ms, crdt_buf *env)
{
    su_ops o = {0};
    su_set_str(&o, "note", note);
    su_make(dev, "household", hh, &o, ms, env, NULL);
    su_ops_free(&o);
}

static void hh_delta(su_dev *dev, const char *hh, const char *note, crdt_buf *env)
{
    hh_delta_at(dev, hh, note, wall_ms(), env);
}

/* Push envs and wait for the ack; entry i's result and code in r[i]/code[i]
 * (arrays of n), counting "applied" ones into S.applied. */
typedef struct ack_res {
    char r[32];
    int64_t c;
    uint64_t s, x;
} ack_res;

static void push_acked(wsc *c, uint64_t id, const crdt_buf *envs, size_t n, ack_res *res)
{
    crdt_buf f = {0}, m = {0};
    frame_push(&f, id, envs, n);
    assert_int_equal(wsc_send(c, f.p, f.n), 0);
    expect_frame(c, &m, "ack");
    uint64_t got = 0;
    assert_true(mp_get_u64(m.p, m.n, "id", &got));
    assert_int_equal(got, id);
    assert_int_equal(ack_count(m.p, m.n), n);
    for (size_t i = 0; i < n; i++) {
        assert_true(ack_entry(m.p, m.n, i, res[i].r, sizeof res[i].r, &res[i].c, &res[i].s,
                              &res[i].x));
        if (!strcmp(res[i].r, "applied")) S.applied++;
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
}

/* Push one envelope; expect result `want` and (if code) that code. */
static void push_expect(wsc *c, uint64_t id, const crdt_buf *env, const char *want, int64_t code)
{
    ack_res r;
    push_acked(c, id, env, 1, &r);
    if (strcmp(r.r, want) || (code && r.c != code))
        fail_msg("push %llu: %s (code %lld), want %s (code %lld)", (unsigned long long)id, r.r,
                 (long long)r.c, want, (long long)code);
}

/* ---- the invariants after every case ---------------------------------------------- */

static uint64_t quarantine_count(void)
{
    store_txn *t;
    uint64_t n = 0;
    assert_int_equal(store_begin(S.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_count(t, &n), 0);
    store_abort(t);
    return n;
}

static uint8_t device_state(uint32_t id)
{
    store_txn *t;
    store_device d;
    assert_int_equal(store_begin(S.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, id, &d), 0);
    store_abort(t);
    return d.state;
}

static void check_after(void)
{
    crdt_buf body = {0}, env = {0}, f = {0}, m = {0};
    /* The server is up. */
    assert_int_equal(http_get("127.0.0.1", S.port, "/healthz", &body), 200);
    /* Another device still syncs: w1 pushes, w2 pulls it back verbatim. */
    wsc c1, c2;
    connect_ok(&c1, &S.w1, NULL);
    hh_delta(&S.w1, "HW", "witness", &env);
    push_expect(&c1, 1, &env, "applied", 0);
    wsc_close(&c1);
    connect_ok(&c2, &S.w2, NULL);
    bool found = false;
    for (uint64_t id = 1, more = 1; more && id < 50; id++) {
        frame_pull(&f, id, S.w2_cursor, 500);
        assert_int_equal(wsc_send(&c2, f.p, f.n), 0);
        expect_frame(&c2, &m, "changes");
        crdt_buf e = {0};
        for (size_t i = 0; i < changes_count(m.p, m.n); i++) {
            assert_true(changes_env(m.p, m.n, i, &e));
            if (e.n == env.n && !memcmp(e.p, env.p, e.n)) found = true;
        }
        crdt_buf_free(&e);
        assert_true(mp_get_u64(m.p, m.n, "n", &S.w2_cursor));
        more = memmem(m.p, m.n, "\xa4more\xc3", 6) != NULL;
    }
    assert_true(found);
    wsc_close(&c2);
    /* Nothing invalid was stored: the log holds exactly the applied deltas,
     * and every record rebuilds from the log. */
    store_txn *t;
    uint64_t last;
    assert_int_equal(store_begin(S.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &last), 0);
    store_abort(t);
    if (last != S.applied) fail_msg("log holds %llu deltas, %llu were acked applied",
                                    (unsigned long long)last, (unsigned long long)S.applied);
    uint64_t problems = 0;
    assert_int_equal(store_verify(S.st, NULL, NULL, &problems), 0);
    assert_int_equal(problems, 0);
    crdt_buf_free(&body);
    crdt_buf_free(&env);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
}

/* ---- raw msgpack building ------------------------------------------------------------ */

static int bw(void *data, const char *p, size_t n) { return crdt_buf_append(data, p, n) ? -1 : 0; }
static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* A hand-made delta (canonical key order; msgpack-c packs shortest ints):
 * n_ops copies of {f: field, o: "set", v: value}, signed by dev with its next
 * seq.  Used where crdt_delta_encode refuses to produce the bytes. */
static void raw_delta_env(su_dev *dev, const char *kind, const char *id, const char *field,
                          const char *value, unsigned n_ops, crdt_buf *env)
{
    crdt_buf b = {0};
    msgpack_packer pk;
    crdt_hlc now;
    uint8_t sig[64];
    msgpack_packer_init(&pk, &b, bw);
    assert_int_equal(crdt_hlc_now(&dev->clock, wall_ms(), &now), 0);
    msgpack_pack_map(&pk, 8);
    pstr(&pk, "d");
    msgpack_pack_uint32(&pk, dev->id);
    pstr(&pk, "e");
    msgpack_pack_uint32(&pk, 1);
    pstr(&pk, "h");
    msgpack_pack_uint64(&pk, now);
    pstr(&pk, "i");
    pstr(&pk, id);
    pstr(&pk, "k");
    pstr(&pk, kind);
    pstr(&pk, "o");
    msgpack_pack_array(&pk, n_ops);
    for (unsigned i = 0; i < n_ops; i++) {
        msgpack_pack_map(&pk, 3);
        pstr(&pk, "f");
        pstr(&pk, field);
        pstr(&pk, "o");
        pstr(&pk, "set");
        pstr(&pk, "v");
        pstr(&pk, value);
    }
    pstr(&pk, "p");
    msgpack_pack_bin_with_body(&pk, dev->prev, 32);
    pstr(&pk, "s");
    msgpack_pack_uint64(&pk, dev->seq + 1);
    assert_int_equal(wire_delta_sign(b.p, b.n, dev->sk, sig), 0);
    crdt_buf_reset(env);
    assert_int_equal(wire_envelope_encode(b.p, b.n, sig, env), 0);
    crdt_buf_free(&b);
}

/* ---- transport cases ---------------------------------------------------------------- */

static void test_oversized_single_frame(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    size_t n = 300 * 1024;
    uint8_t *big = malloc(n);
    memset(big, 0x90, n);
    wsc_send(&c, big, n); /* the server may close before reading it all */
    free(big);
    expect_close(&c, 1009, true, 5000);
    wsc_close(&c);
    check_after();
}

static void test_oversized_in_fragments(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    uint8_t chunk[4096];
    memset(chunk, 0x90, sizeof chunk);
    for (int i = 0; i < 80; i++)
        if (wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, false, chunk, sizeof chunk)) break;
    expect_close(&c, 1009, true, 5000);
    wsc_close(&c);
    check_after();
}

/* Before auth, fragments that never finish do not keep the connection:
 * the auth deadline (2 s here) closes it. */
static void test_unfinished_fragments_before_auth(void **state)
{
    (void)state;
    wsc c;
    uint8_t spk[32], nonce[32];
    hello(&c, spk, nonce);
    static const uint8_t part[] = {0x85, 0xa1, 'd'};
    assert_int_equal(wsc_send_frame(&c, WSC_BINARY, false, part, sizeof part), 0);
    uint64_t t0 = wall_ms();
    for (int i = 0; i < 6; i++) {
        usleep(200 * 1000);
        if (wsc_send_frame(&c, WSC_CONT, false, part + 2, 1)) break;
    }
    crdt_buf m = {0};
    int cc = 0, op;
    while ((op = wsc_recv(&c, 10000, &m, &cc)) == WSC_BINARY) {
        int64_t code = 0;
        assert_string_equal(mp_type(m.p, m.n), "error");
        assert_true(mp_get_i64(m.p, m.n, "c", &code));
        assert_int_equal(code, SYNC_EAUTHTIME);
    }
    assert_true(op == WSC_CLOSE || op == -1);
    if (op == WSC_CLOSE) assert_int_equal(cc, 1008);
    uint64_t took = wall_ms() - t0;
    if (took > 9000) fail_msg("unfinished message held the connection %llu ms",
                              (unsigned long long)took);
    crdt_buf_free(&m);
    wsc_close(&c);
    check_after();
}

/* After auth, an unfinished message that keeps growing is closed at the
 * message limit (1009), a few bytes at a time as well as in big chunks. */
static void test_unfinished_fragments_after_auth(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    uint8_t chunk[16384];
    memset(chunk, 0xc0, sizeof chunk);
    for (int i = 0; i < 20; i++)
        if (wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, false, chunk, sizeof chunk)) break;
    expect_close(&c, 1009, true, 5000);
    wsc_close(&c);
    check_after();
}

static void test_one_byte_fragments(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf f = {0}, m = {0}, env = {0};
    uint8_t spk[32], nonce[32];
    /* The auth frame itself in 1-byte fragments. */
    hello(&c, spk, nonce);
    frame_auth(&f, d.id, 1, d.sk, spk, nonce);
    for (size_t i = 0; i < f.n; i++)
        assert_int_equal(wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, i + 1 == f.n, f.p + i, 1),
                         0);
    expect_frame(&c, &m, "welcome");
    /* A push in 1-byte fragments, with a ping in the middle. */
    hh_delta(&d, hh, "一字节分片", &env);
    frame_push(&f, 3, &env, 1);
    for (size_t i = 0; i < f.n; i++) {
        if (i == f.n / 2) assert_int_equal(wsc_send_frame(&c, WSC_PING, true, (const uint8_t *)"p", 1), 0);
        assert_int_equal(wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, i + 1 == f.n, f.p + i, 1),
                         0);
    }
    expect_frame(&c, &m, "ack");
    ack_res r;
    assert_true(ack_entry(m.p, m.n, 0, r.r, sizeof r.r, &r.c, NULL, NULL));
    assert_string_equal(r.r, "applied");
    S.applied++;
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_silent_before_auth(void **state)
{
    (void)state;
    wsc c;
    uint8_t spk[32], nonce[32];
    hello(&c, spk, nonce);
    expect_error(&c, SYNC_EAUTHTIME, 1008);
    wsc_close(&c);
    check_after();
}

static void test_wrong_subprotocol(void **state)
{
    (void)state;
    wsc c;
    assert_int_equal(wsc_connect(&c, "127.0.0.1", S.port, "/sync", "chat"), -1);
    assert_true(c.http_status != 101);
    wsc_close(&c);
    assert_int_equal(wsc_connect(&c, "127.0.0.1", S.port, "/sync", "doorstep.v2"), -1);
    wsc_close(&c);
    check_after();
}

static void test_no_subprotocol(void **state)
{
    (void)state;
    wsc c;
    assert_int_equal(wsc_connect(&c, "127.0.0.1", S.port, "/sync", NULL), -1);
    assert_true(c.http_status != 101);
    wsc_close(&c);
    assert_int_equal(wsc_connect(&c, "127.0.0.1", S.port, "/other", SYNC_SUBPROTOCOL), -1);
    wsc_close(&c);
    check_after();
}

static void test_text_frame(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    assert_int_equal(wsc_send_frame(&c, WSC_TEXT, true, (const uint8_t *)"{\"t\":\"pull\"}", 12),
                     0);
    expect_close(&c, 1003, false, 5000);
    wsc_close(&c);
    check_after();
}

/* ---- frame encoding cases (each: error with the walk's code, then close) ------------ */

static void bad_bytes_case(const uint8_t *p, size_t n, int code, int close_code, bool authed)
{
    su_dev d;
    char hh[16];
    wsc c;
    if (authed) {
        new_device(&d, hh, STORE_DEV_ACTIVE);
        connect_ok(&c, &d, NULL);
    } else {
        uint8_t spk[32], nonce[32];
        hello(&c, spk, nonce);
    }
    assert_int_equal(wsc_send(&c, p, n), 0);
    expect_error(&c, code, close_code);
    wsc_close(&c);
}

static void test_invalid_msgpack(void **state)
{
    (void)state;
    static const uint8_t reserved[] = {0xc1};
    static const uint8_t trunc[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l'};
    static const uint8_t trailing[] = {0x81, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0x00};
    bad_bytes_case(reserved, sizeof reserved, CRDT_ERESERVED, 1007, true);
    bad_bytes_case(trunc, sizeof trunc, CRDT_ETRUNC, 1007, true);
    bad_bytes_case(trailing, sizeof trailing, CRDT_ETRAILING, 1007, false);
    check_after();
}

static void test_not_a_map_and_no_type(void **state)
{
    (void)state;
    static const uint8_t arr[] = {0x91, 0x01};
    static const uint8_t notype[] = {0x81, 0xa2, 'i', 'd', 0x01};
    static const uint8_t inttype[] = {0x81, 0xa1, 't', 0x05};
    bad_bytes_case(arr, sizeof arr, SYNC_EPROTO, 1007, true);
    bad_bytes_case(notype, sizeof notype, SYNC_EPROTO, 1008, true);
    bad_bytes_case(inttype, sizeof inttype, SYNC_EPROTO, 1008, false);
    check_after();
}

static void test_ext_types(void **state)
{
    (void)state;
    /* {t: "pull", id: fixext1} and a timestamp ext (-1). */
    static const uint8_t ext[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l',
                                  0xa2, 'i', 'd', 0xd4, 0x01, 0x00};
    static const uint8_t ts[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa2, 'i', 'd',
                                 0xd6, 0xff, 0x00, 0x00, 0x00, 0x01};
    bad_bytes_case(ext, sizeof ext, CRDT_EEXT, 1007, true);
    bad_bytes_case(ts, sizeof ts, CRDT_EEXT, 1007, false);
    check_after();
}

static void test_duplicate_map_keys(void **state)
{
    (void)state;
    static const uint8_t dup[] = {0x83, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa2, 'i', 'd',
                                  0x01, 0xa2, 'i', 'd', 0x02};
    bad_bytes_case(dup, sizeof dup, CRDT_EDUPKEY, 1007, true);
    static const uint8_t intkey[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0x01, 0x01};
    bad_bytes_case(intkey, sizeof intkey, CRDT_EMAPKEY, 1007, true);
    check_after();
}

static void test_floats_depth_lengths(void **state)
{
    (void)state;
    static const uint8_t flt[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa2, 'i', 'd',
                                  0xca, 0x3f, 0x80, 0x00, 0x00};
    bad_bytes_case(flt, sizeof flt, CRDT_EFLOAT, 1007, true);
    /* nesting 9 */
    uint8_t deep[32] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa1, 'x'};
    size_t n = 10;
    for (int i = 0; i < 9; i++) deep[n++] = 0x91;
    deep[n++] = 0x01;
    bad_bytes_case(deep, n, CRDT_EDEPTH, 1007, true);
    /* an array declaring 4 billion elements in a few bytes */
    static const uint8_t huge[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 's', 'h', 0xa1, 'd',
                                   0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
    bad_bytes_case(huge, sizeof huge, CRDT_ECOUNT, 1007, true);
    /* a string declaring 64 KiB with 3 bytes present */
    static const uint8_t strlen_lie[] = {0x81, 0xa1, 't', 0xda, 0x0f, 0xff, 'a', 'b', 'c'};
    bad_bytes_case(strlen_lie, sizeof strlen_lie, CRDT_ELENGTH, 1007, false);
    check_after();
}

static void test_huge_strings(void **state)
{
    (void)state;
    /* A 5000-byte string in a frame: the walk refuses it. */
    crdt_buf b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, bw);
    msgpack_pack_map(&pk, 2);
    pstr(&pk, "t");
    char *s = malloc(5001);
    memset(s, 'a', 5000);
    s[5000] = 0;
    pstr(&pk, s);
    pstr(&pk, "x");
    pstr(&pk, "y");
    bad_bytes_case(b.p, b.n, CRDT_ESTRLEN, 1007, true);
    /* Invalid UTF-8. */
    static const uint8_t utf[] = {0x81, 0xa1, 't', 0xa2, 0xc0, 0xaf};
    bad_bytes_case(utf, sizeof utf, CRDT_EUTF8, 1007, true);
    /* A field value longer than the schema allows (note: 1000 chars), and a
     * 4 KiB+ string inside a signed delta: both rejected per delta. */
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    crdt_buf env = {0};
    s[1500] = 0;
    su_dev d2 = d;
    hh_delta(&d2, hh, s, &env);
    push_expect(&c, 1, &env, "rejected", CRDT_ETEXT);
    s[1500] = 'a';
    d2 = d;
    raw_delta_env(&d2, "household", hh, "note", s, 1, &env);
    push_expect(&c, 2, &env, "rejected", 0);
    wsc_close(&c);
    free(s);
    crdt_buf_free(&b);
    crdt_buf_free(&env);
    check_after();
}

/* ---- frame-level protocol cases ------------------------------------------------------ */

static void test_unknown_frame_type(void **state)
{
    (void)state;
    static const uint8_t zap[] = {0x81, 0xa1, 't', 0xa3, 'z', 'a', 'p'};
    /* Before auth: error and close 1008. */
    bad_bytes_case(zap, sizeof zap, SYNC_EFRAME, 1008, false);
    /* After auth: error, the session stays open (also for server frame names). */
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf f = {0}, m = {0};
    connect_ok(&c, &d, NULL);
    assert_int_equal(wsc_send(&c, zap, sizeof zap), 0);
    expect_error(&c, SYNC_EFRAME, 0);
    static const uint8_t hel[] = {0x81, 0xa1, 't', 0xa5, 'h', 'e', 'l', 'l', 'o'};
    assert_int_equal(wsc_send(&c, hel, sizeof hel), 0);
    expect_error(&c, SYNC_EFRAME, 0);
    frame_pull(&f, 9, 0, 1);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "changes");
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    wsc_close(&c);
    check_after();
}

static void test_unknown_key_in_frame(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    /* pull with an extra key: SYNC_EPROTO, no close, and the frame's valid
     * id echoed (PROTOCOL.md: an error names the request whenever it can). */
    static const uint8_t p[] = {0x83, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa2, 'i', 'd', 0x01,
                                0xa3, 'z', 'z', 'z', 0x01};
    assert_int_equal(wsc_send(&c, p, sizeof p), 0);
    expect_error_id(&c, SYNC_EPROTO, 0, 1);
    /* push with id 0, push whose d is not an array, push with a non-bin element */
    static const uint8_t id0[] = {0x83, 0xa1, 't', 0xa4, 'p', 'u', 's', 'h', 0xa2, 'i', 'd', 0x00,
                                  0xa1, 'd', 0x90};
    assert_int_equal(wsc_send(&c, id0, sizeof id0), 0);
    expect_error_no_id(&c, SYNC_EPROTO);
    static const uint8_t dmap[] = {0x83, 0xa1, 't', 0xa4, 'p', 'u', 's', 'h', 0xa2, 'i', 'd', 0x05,
                                   0xa1, 'd', 0x80};
    assert_int_equal(wsc_send(&c, dmap, sizeof dmap), 0);
    expect_error_id(&c, SYNC_EPROTO, 0, 5);
    static const uint8_t dint[] = {0x83, 0xa1, 't', 0xa4, 'p', 'u', 's', 'h', 0xa2, 'i', 'd', 0x06,
                                   0xa1, 'd', 0x91, 0x07};
    assert_int_equal(wsc_send(&c, dint, sizeof dint), 0);
    expect_error_id(&c, SYNC_EPROTO, 0, 6);
    /* auth with an extra key on a new connection: close 1008. */
    wsc_close(&c);
    uint8_t spk[32], nonce[32];
    crdt_buf f = {0};
    hello(&c, spk, nonce);
    frame_auth(&f, d.id, 1, d.sk, spk, nonce);
    f.p[0]++; /* map of 6 */
    crdt_buf_append(&f, "\xa1z\x01", 3);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_EPROTO, 1008);
    wsc_close(&c);
    crdt_buf_free(&f);
    check_after();
}

static void test_push_before_auth(void **state)
{
    (void)state;
    crdt_buf f = {0};
    frame_push(&f, 1, NULL, 0);
    bad_bytes_case(f.p, f.n, SYNC_ESTATE, 1008, false);
    frame_pull(&f, 1, 0, 1);
    bad_bytes_case(f.p, f.n, SYNC_ESTATE, 1008, false);
    crdt_buf_free(&f);
    /* Every other frame of a ready session too, whatever its keys
     * (PROTOCOL.md, SYNC_ESTATE: the state is checked before the frame). */
    static const uint8_t sub[] = {0x81, 0xa1, 't', 0xa9, 's', 'u', 'b', 's', 'c', 'r', 'i', 'b', 'e'};
    static const uint8_t rot[] = {0x81, 0xa1, 't', 0xa6, 'r', 'o', 't', 'a', 't', 'e'};
    static const uint8_t snap[] = {0x81, 0xa1, 't', 0xa8, 's', 'n', 'a', 'p', 's', 'h', 'o', 't'};
    static const uint8_t schem[] = {0x81, 0xa1, 't', 0xa6, 's', 'c', 'h', 'e', 'm', 'a'};
    bad_bytes_case(schem, sizeof schem, SYNC_ESTATE, 1008, false);
    bad_bytes_case(sub, sizeof sub, SYNC_ESTATE, 1008, false);
    bad_bytes_case(rot, sizeof rot, SYNC_ESTATE, 1008, false);
    bad_bytes_case(snap, sizeof snap, SYNC_ESTATE, 1008, false);
    check_after();
}

/* ---- authentication cases --------------------------------------------------------- */

static void test_replayed_auth(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf f = {0}, m = {0};
    uint8_t spk[32], nonce[32];
    /* Capture a genuine auth frame and use it. */
    hello(&c, spk, nonce);
    frame_auth(&f, d.id, 1, d.sk, spk, nonce);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "welcome");
    /* Replaying it in the same session: ESTATE. */
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_ESTATE, 1008);
    wsc_close(&c);
    /* On a new connection the server nonce differs: EBADAUTH. */
    for (int i = 0; i < 3; i++) {
        hello(&c, spk, nonce);
        assert_int_equal(wsc_send(&c, f.p, f.n), 0);
        expect_error(&c, SYNC_EBADAUTH, 1008);
        wsc_close(&c);
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    check_after();
}

static void test_bad_signature(void **state)
{
    (void)state;
    su_dev d, stranger;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    su_dev_init(&stranger, 999999);
    wsc c;
    assert_int_equal(device_connect(&c, S.port, d.id, 1, stranger.sk, NULL), SYNC_EBADAUTH);
    expect_close(&c, 1008, false, 5000);
    wsc_close(&c);
    /* A flipped bit in an otherwise genuine auth. */
    uint8_t spk[32], nonce[32];
    crdt_buf f = {0};
    hello(&c, spk, nonce);
    frame_auth(&f, d.id, 1, d.sk, spk, nonce);
    f.p[f.n - 10] ^= 0x40; /* inside "s" (the last bin before "t") */
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_EBADAUTH, 1008);
    wsc_close(&c);
    /* A signature of the wrong length. */
    static const uint8_t shortsig[] = {0x85, 0xa1, 'd', 0x01, 0xa1, 'e', 0x01, 0xa1, 'n', 0xc4,
                                       0x01, 0x00, 0xa1, 's', 0xc4, 0x01, 0x00, 0xa1, 't', 0xa4,
                                       'a', 'u', 't', 'h'};
    bad_bytes_case(shortsig, sizeof shortsig, SYNC_EPROTO, 1008, false);
    crdt_buf_free(&f);
    check_after();
}

static void test_wrong_key_epoch(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    assert_int_equal(device_connect(&c, S.port, d.id, 2, d.sk, NULL), SYNC_EEPOCH);
    expect_close(&c, 1008, false, 5000);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, S.port, d.id, 0, d.sk, NULL), SYNC_EPROTO);
    wsc_close(&c);
    check_after();
}

static void test_unknown_device(void **state)
{
    (void)state;
    su_dev d;
    su_dev_init(&d, 777777);
    wsc c;
    assert_int_equal(device_connect(&c, S.port, d.id, 1, d.sk, NULL), SYNC_EUNKNOWN_DEVICE);
    expect_close(&c, 1008, false, 5000);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, S.port, 0, 1, d.sk, NULL), SYNC_EPROTO);
    wsc_close(&c);
    check_after();
}

static void test_revoked_device(void **state)
{
    (void)state;
    /* Hard revocation: no session at all. */
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_REVOKED_HARD);
    wsc c;
    assert_int_equal(device_connect(&c, S.port, d.id, 1, d.sk, NULL), SYNC_EREVOKED);
    expect_close(&c, 1008, false, 5000);
    wsc_close(&c);
    /* Soft revocation: what was signed before stays, later seqs are
     * quarantined, pull is refused. */
    su_dev e;
    char hh2[16];
    new_device(&e, hh2, STORE_DEV_ACTIVE);
    set_state(e.id, STORE_DEV_REVOKED_SOFT, 1);
    crdt_buf w = {0}, env[2] = {{0}}, f = {0};
    connect_ok(&c, &e, &w);
    assert_non_null(memmem(w.p, w.n, "revoked", 7));
    hh_delta(&e, hh2, "before", &env[0]);
    hh_delta(&e, hh2, "after", &env[1]);
    uint64_t q0 = quarantine_count();
    ack_res r[2];
    push_acked(&c, 1, env, 2, r);
    assert_string_equal(r[0].r, "applied");
    assert_string_equal(r[1].r, "quarantined");
    assert_int_equal(r[1].c, STORE_Q_REVOKED);
    assert_int_equal(quarantine_count(), q0 + 1);
    frame_pull(&f, 2, 0, 10);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_EREVOKED, 0);
    wsc_close(&c);
    /* Soft-revoked while connected and subscribed (store_device_revoke, as
     * doorstepctl does: the key is revoked too): the session is not closed
     * but becomes restricted: the subscription ends with one SYNC_EREVOKED
     * error without id, pushes go on (into quarantine), reads and key
     * rotation are refused, the connection stays open throughout. */
    su_dev k;
    char hh4[16];
    new_device(&k, hh4, STORE_DEV_ACTIVE);
    connect_ok(&c, &k, NULL);
    frame_subscribe(&f, 0);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    {
        store_txn *t;
        assert_int_equal(store_begin(S.st, STORE_RW, &t), 0);
        assert_int_equal(store_device_revoke(t, k.id, STORE_REVOKE_SOFT, wall_ms(), "admin:test"), 0);
        assert_int_equal(store_commit(t), 0);
    }
    /* The subscription may deliver the witnesses' backlog first. */
    for (;;) {
        crdt_buf m = {0};
        int cc = 0;
        int op = wsc_recv(&c, 5000, &m, &cc);
        if (op != WSC_BINARY) fail_msg("expected the revocation error, got op %d (close %d)", op, cc);
        bool done = !strcmp(mp_type(m.p, m.n), "error");
        if (done) {
            int64_t code = 0;
            uint64_t id = 0;
            assert_true(mp_get_i64(m.p, m.n, "c", &code));
            assert_int_equal(code, SYNC_EREVOKED);
            assert_false(mp_get_u64(m.p, m.n, "id", &id));
        } else {
            assert_string_equal(mp_type(m.p, m.n), "changes");
        }
        crdt_buf_free(&m);
        if (done) break;
    }
    hh_delta(&k, hh4, "handed in after revocation", &env[0]);
    q0 = quarantine_count();
    push_acked(&c, 7, env, 1, r);
    assert_string_equal(r[0].r, "quarantined");
    assert_int_equal(r[0].c, STORE_Q_REVOKED);
    assert_int_equal(quarantine_count(), q0 + 1);
    frame_pull(&f, 8, 0, 10);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error_id(&c, SYNC_EREVOKED, 0, 8);
    frame_subscribe(&f, 0);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_EREVOKED, 0);
    {
        /* A correctly signed rotation: a revoked key must not hand over to
         * a fresh active one. */
        uint8_t npk[32], nsk[64], msg[WIRE_ROTATE_MSG_BYTES], so[64], sn[64];
        crypto_sign_keypair(npk, nsk);
        wire_rotate_msg(k.id, 2, npk, 1, msg);
        crypto_sign_detached(so, NULL, msg, sizeof msg, k.sk);
        crypto_sign_detached(sn, NULL, msg, sizeof msg, nsk);
        msgpack_packer pk;
        crdt_buf_reset(&f);
        msgpack_packer_init(&pk, &f, crdt_buf_pack_write);
        msgpack_pack_map(&pk, 6);
        pstr(&pk, "e");
        msgpack_pack_uint32(&pk, 2);
        pstr(&pk, "pk");
        msgpack_pack_bin_with_body(&pk, npk, 32);
        pstr(&pk, "seal");
        msgpack_pack_uint64(&pk, 1);
        pstr(&pk, "sn");
        msgpack_pack_bin_with_body(&pk, sn, 64);
        pstr(&pk, "so");
        msgpack_pack_bin_with_body(&pk, so, 64);
        pstr(&pk, "t");
        pstr(&pk, "rotate");
        assert_int_equal(wsc_send(&c, f.p, f.n), 0);
        expect_error(&c, SYNC_EREVOKED, 0);
        store_txn *t;
        store_key key;
        assert_int_equal(store_begin(S.st, STORE_RDONLY, &t), 0);
        assert_int_equal(store_key_get(t, k.id, 1, &key), 0);
        assert_int_equal(key.state, STORE_KEY_REVOKED);
        assert_int_equal(store_key_get(t, k.id, 2, &key), STORE_ENOTFOUND);
        store_abort(t);
    }
    wsc_close(&c);
    /* Reconnecting: restricted mode from the welcome on (req "revoked"). */
    connect_ok(&c, &k, &w);
    assert_non_null(memmem(w.p, w.n, "revoked", 7));
    wsc_close(&c);
    /* Revoked while connected: the live session is closed. */
    su_dev g;
    char hh3[16];
    new_device(&g, hh3, STORE_DEV_ACTIVE);
    connect_ok(&c, &g, NULL);
    set_state(g.id, STORE_DEV_REVOKED_HARD, 0);
    expect_error(&c, SYNC_EREVOKED, 1008);
    wsc_close(&c);
    crdt_buf_free(&w);
    crdt_buf_free(&env[0]);
    crdt_buf_free(&env[1]);
    crdt_buf_free(&f);
    check_after();
}

static uint64_t last_sync_of(uint32_t dev, uint64_t *admin_gen)
{
    store_txn *t;
    store_device d;
    assert_int_equal(store_begin(S.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, dev, &d), 0);
    if (admin_gen) assert_int_equal(store_admin_gen(t, admin_gen), 0);
    store_abort(t);
    return d.last_sync_ms;
}

/* 最后同步 (issue #14): a device's last sync is recorded on every session
 * that authenticates and pulls (within cfg.seen_flush_ms, not per frame),
 * and by a push in the push's own commit; recording it is not an
 * administrative change (the admin generation does not move). */
static void test_last_sync(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    uint64_t gen0, gen1;
    assert_int_equal(last_sync_of(d.id, &gen0), 0);
    uint64_t t0 = wall_ms();
    wsc c;
    crdt_buf f = {0}, m = {0}, env = {0};
    connect_ok(&c, &d, NULL);
    for (uint64_t id = 1; id <= 20; id++) { /* pulls: noted in memory, flushed later */
        frame_pull(&f, id, 0, 10);
        assert_int_equal(wsc_send(&c, f.p, f.n), 0);
        expect_frame(&c, &m, "changes");
    }
    uint64_t seen = 0;
    for (int i = 0; i < 100 && !(seen = last_sync_of(d.id, NULL)); i++) usleep(50 * 1000);
    assert_true(seen >= t0);
    assert_true(seen <= wall_ms());
    /* A push: recorded when its ack arrives, without waiting for a flush. */
    usleep(20 * 1000);
    uint64_t t1 = wall_ms();
    hh_delta(&d, hh, "visit", &env);
    push_expect(&c, 30, &env, "applied", 0);
    assert_true(last_sync_of(d.id, &gen1) >= t1);
    assert_int_equal(gen1, gen0);
    wsc_close(&c);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    crdt_buf_free(&env);
    check_after();
}

static void test_frozen_device(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_FROZEN);
    wsc c;
    assert_int_equal(device_connect(&c, S.port, d.id, 1, d.sk, NULL), SYNC_EFROZEN);
    expect_close(&c, 1008, false, 5000);
    wsc_close(&c);
    check_after();
}

/* ---- per-delta cases ------------------------------------------------------------- */

static void test_seq_gap(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    hh_delta(&d, hh, "1", &env);
    push_expect(&c, 1, &env, "applied", 0);
    hh_delta(&d, hh, "2 (never sent)", &env);
    hh_delta(&d, hh, "3", &env);
    ack_res r;
    push_acked(&c, 2, &env, 1, &r);
    assert_string_equal(r.r, "rejected");
    assert_int_equal(r.c, STORE_EGAP);
    assert_int_equal(r.s, 3);
    assert_int_equal(r.x, 2);
    /* A seq far in the future, too. */
    d.seq = 1000000;
    hh_delta(&d, hh, "far", &env);
    push_acked(&c, 3, &env, 1, &r);
    assert_int_equal(r.c, STORE_EGAP);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

/* seq reuse with other content: clone -> device frozen, both quarantined. */
static void test_seq_reuse_clone(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    su_dev twin = d; /* the cloned phone: same key, same chain position */
    hh_delta(&d, hh, "original", &env);
    push_expect(&c, 1, &env, "applied", 0);
    /* The same envelope again is a harmless duplicate. */
    push_expect(&c, 2, &env, "duplicate", 0);
    uint64_t q0 = quarantine_count();
    hh_delta(&twin, hh, "the clone's version", &env);
    ack_res r;
    push_acked(&c, 3, &env, 1, &r);
    assert_string_equal(r.r, "quarantined");
    assert_int_equal(r.c, STORE_Q_CLONE);
    assert_int_equal(device_state(d.id), STORE_DEV_FROZEN);
    uint64_t q1 = quarantine_count();
    if (q1 != q0 + 2) fail_msg("clone: %llu quarantine entries added, want 2 (both)",
                               (unsigned long long)(q1 - q0));
    /* The live session is cut off; a new one is refused. */
    crdt_buf m = {0};
    int cc = 0, op;
    while ((op = wsc_recv(&c, 3000, &m, &cc)) == WSC_BINARY) {
        int64_t code = 0;
        assert_true(mp_get_i64(m.p, m.n, "c", &code));
        assert_int_equal(code, SYNC_EFROZEN);
    }
    assert_int_equal(op, WSC_CLOSE);
    assert_int_equal(cc, 1008);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, S.port, d.id, 1, d.sk, NULL), SYNC_EFROZEN);
    wsc_close(&c);
    crdt_buf_free(&m);
    crdt_buf_free(&env);
    check_after();
}

/* The right seq with a wrong prev hash: a fork, quarantined, device frozen. */
static void test_chain_fork(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    hh_delta(&d, hh, "1", &env);
    push_expect(&c, 1, &env, "applied", 0);
    memset(d.prev, 0xab, 32);
    hh_delta(&d, hh, "2 on a forked chain", &env);
    ack_res r;
    push_acked(&c, 2, &env, 1, &r);
    assert_string_equal(r.r, "quarantined");
    assert_int_equal(r.c, STORE_Q_FORK);
    assert_int_equal(device_state(d.id), STORE_DEV_FROZEN);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_outside_scope(void **state)
{
    (void)state;
    /* Out of scope is kept for an administrator (quarantine reason
     * out_of_scope) and the chain advances (docs/PROTOCOL.md); it is never
     * merged and never in the log. */
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    uint64_t q0 = quarantine_count();
    hh_delta(&d, "HW", "someone else's household", &env);
    ack_res r;
    push_acked(&c, 1, &env, 1, &r);
    if (strcmp(r.r, "quarantined") || r.c != STORE_Q_SCOPE)
        fail_msg("outside scope: %s (%lld)", r.r, (long long)r.c);
    /* A person placed outside the scope. */
    su_ops o = {0};
    su_set_str(&o, "name", "外人");
    su_set_str(&o, "household", "HW");
    su_make(&d, "person", "PX-out", &o, wall_ms(), &env, NULL);
    push_acked(&c, 2, &env, 1, &r);
    if (strcmp(r.r, "quarantined") || r.c != STORE_Q_SCOPE)
        fail_msg("person outside scope: %s (%lld)", r.r, (long long)r.c);
    assert_int_equal(quarantine_count(), q0 + 2);
    /* The chain advanced: the next in-scope delta applies. */
    hh_delta(&d, hh, "mine", &env);
    push_expect(&c, 3, &env, "applied", 0);
    su_ops_free(&o);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_other_devices_delta(void **state)
{
    (void)state;
    su_dev d, e;
    char hh[16], hh2[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    new_device(&e, hh2, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    hh_delta(&e, hh, "signed by e, pushed by d", &env);
    push_expect(&c, 1, &env, "rejected", SYNC_EDEVICE);
    /* Device d's own key claiming to be e. */
    su_dev fake = e;
    memcpy(fake.sk, d.sk, 64);
    fake.seq = 0;
    memset(fake.prev, 0, 32);
    hh_delta(&fake, hh, "impostor", &env);
    push_expect(&c, 2, &env, "rejected", SYNC_EDEVICE);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_clock_far_ahead(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0}, w = {0};
    connect_ok(&c, &d, NULL);
    uint64_t q0 = quarantine_count();
    hh_delta_at(&d, hh, "from the future", wall_ms() + 25ull * 3600 * 1000, &env);
    ack_res r;
    push_acked(&c, 1, &env, 1, &r);
    assert_string_equal(r.r, "quarantined");
    assert_int_equal(r.c, STORE_Q_CLOCK_AHEAD);
    assert_int_equal(quarantine_count(), q0 + 1);
    /* The chain advances: the next delta (clock corrected) is applied. */
    d.clock = 0;
    hh_delta(&d, hh, "back to now", &env);
    /* the HLC must not go backwards within the device: keep it ahead of the
     * quarantined one only by the counter, which the server accepts */
    push_acked(&c, 2, &env, 1, &r);
    assert_true(!strcmp(r.r, "applied") || !strcmp(r.r, "quarantined"));
    wsc_close(&c);
    connect_ok(&c, &d, &w);
    uint64_t seq = 0;
    assert_true(mp_get_u64(w.p, w.n, "seq", &seq));
    assert_int_equal(seq, 2);
    crdt_buf_free(&env);
    crdt_buf_free(&w);
    wsc_close(&c);
    check_after();
}

static void test_unknown_field_and_kind(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    su_ops o = {0};
    su_set_str(&o, "password", "x");
    su_dev d2 = d;
    su_make(&d2, "household", hh, &o, wall_ms(), &env, NULL);
    push_expect(&c, 1, &env, "rejected", CRDT_EFIELD);
    d2 = d;
    su_ops_reset(&o);
    su_set_str(&o, "note", "x");
    su_make(&d2, "spaceship", hh, &o, wall_ms(), &env, NULL);
    push_expect(&c, 2, &env, "rejected", CRDT_EKIND);
    su_ops_free(&o);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_wrong_op_for_field(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    su_ops o = {0};
    su_add(&o, "note", "add on an lww field");
    su_dev d2 = d;
    su_make(&d2, "household", hh, &o, wall_ms(), &env, NULL);
    push_expect(&c, 1, &env, "rejected", CRDT_EOP);
    su_ops_reset(&o);
    su_set_str(&o, "visits", "set on a log");
    d2 = d;
    su_make(&d2, "household", hh, &o, wall_ms(), &env, NULL);
    push_expect(&c, 2, &env, "rejected", CRDT_EOP);
    su_ops_reset(&o);
    su_set_str(&o, "phone", "12345");
    d2 = d;
    su_make(&d2, "household", hh, &o, wall_ms(), &env, NULL);
    push_expect(&c, 3, &env, "rejected", CRDT_EPHONE);
    su_ops_free(&o);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_invalid_id_number(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    char good[19];
    su_idnum(7, good);
    static const char *bad[] = {"110105194901011235", "11010519490101123", "110105194913011234",
                                "11010519490101123x"};
    for (unsigned i = 0; i < 4; i++) {
        char idn[20];
        snprintf(idn, sizeof idn, "%s", bad[i]);
        if (i == 0) { /* good number with the check character changed */
            memcpy(idn, good, 19);
            idn[17] = idn[17] == '0' ? '1' : '0';
        }
        su_ops o = {0};
        su_set_str(&o, "name", "假号");
        su_set_str(&o, "household", hh);
        su_set_str(&o, "id_number", idn);
        su_dev d2 = d;
        su_make(&d2, "person", "PX-id", &o, wall_ms(), &env, NULL);
        push_expect(&c, i + 1, &env, "rejected", CRDT_EIDNUM);
        su_ops_free(&o);
    }
    /* Invalid record ids (hand-made: the encoder refuses them). */
    su_dev d2 = d;
    raw_delta_env(&d2, "household", "H 1", "note", "x", 1, &env);
    push_expect(&c, 10, &env, "rejected", CRDT_ERECID);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_too_many_ops(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env = {0};
    connect_ok(&c, &d, NULL);
    su_dev d2 = d;
    raw_delta_env(&d2, "household", hh, "note", "x", 65, &env);
    push_expect(&c, 1, &env, "rejected", CRDT_ETOOMANYOPS);
    /* Two ops on the same field. */
    d2 = d;
    raw_delta_env(&d2, "household", hh, "note", "x", 2, &env);
    push_expect(&c, 2, &env, "rejected", CRDT_EDUPOP);
    /* Zero ops. */
    d2 = d;
    raw_delta_env(&d2, "household", hh, "note", "x", 0, &env);
    push_expect(&c, 3, &env, "rejected", CRDT_ENOOPS);
    /* The device's real seq 1 still goes through afterwards. */
    hh_delta(&d, hh, "fine", &env);
    push_expect(&c, 4, &env, "applied", 0);
    crdt_buf_free(&env);
    wsc_close(&c);
    check_after();
}

static void test_too_many_deltas(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf f = {0};
    connect_ok(&c, &d, NULL);
    crdt_buf *many = calloc(1100, sizeof *many);
    for (int i = 0; i < 1100; i++) crdt_buf_append(&many[i], "x", 1);
    frame_push(&f, 3, many, 501);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error_id(&c, SYNC_ETOOMANY, 0, 3);
    /* More than 1024: the walk refuses the message first. */
    frame_push(&f, 4, many, 1100);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, CRDT_ECOUNT, 1007);
    for (int i = 0; i < 1100; i++) crdt_buf_free(&many[i]);
    free(many);
    crdt_buf_free(&f);
    wsc_close(&c);
    check_after();
}

static void test_garbage_envelopes(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    connect_ok(&c, &d, NULL);
    crdt_buf e[5] = {{0}};
    crdt_buf_append(&e[0], "\x82\xa1" "b", 3);               /* truncated */
    crdt_buf_append(&e[1], "\xc1", 1);                         /* reserved */
    su_dev d2 = d;
    hh_delta(&d2, hh, "tampered", &e[2]);
    e[2].p[e[2].n - 1] ^= 1;                                   /* bad signature */
    d2 = d;
    hh_delta(&d2, hh, "tampered delta bytes", &e[3]);
    e[3].p[20] ^= 1;                                           /* bit flip in the delta */
    crdt_buf_append(&e[4], "\x82\xa1" "b\xc4\x01\x00\xa1s\xc4\x01\x00", 11); /* short sig */
    ack_res r[5];
    push_acked(&c, 1, e, 5, r);
    for (int i = 0; i < 5; i++) {
        if (strcmp(r[i].r, "rejected")) fail_msg("garbage envelope %d: %s", i, r[i].r);
        assert_true(r[i].c < 0);
    }
    assert_int_equal(r[2].c, WIRE_EBADSIG);
    for (int i = 0; i < 5; i++) crdt_buf_free(&e[i]);
    wsc_close(&c);
    check_after();
}

/* A flood of pushes from one device, not reading the acks: 4 in flight,
 * the rest answered with the retryable SYNC_EBUSY. */
static void test_push_flood(void **state)
{
    (void)state;
    su_dev d;
    char hh[16];
    new_device(&d, hh, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf f = {0}, m = {0};
    connect_ok(&c, &d, NULL);
    enum { N = 60, PER = 50 };
    crdt_buf *env = calloc(N * PER, sizeof *env);
    for (int i = 0; i < N * PER; i++) hh_delta(&d, hh, "洪水", &env[i]);
    for (int i = 0; i < N; i++) {
        frame_push(&f, (uint64_t)i + 1, env + i * PER, PER);
        assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    }
    int acks = 0, busy = 0, cc;
    uint64_t acked_upto = 0;
    while (acks + busy < N) {
        int op = wsc_recv(&c, 10000, &m, &cc);
        if (op != WSC_BINARY) fail_msg("flood: connection ended after %d answers", acks + busy);
        if (!strcmp(mp_type(m.p, m.n), "ack")) {
            acks++;
            for (size_t i = 0; i < ack_count(m.p, m.n); i++) {
                ack_res r;
                ack_entry(m.p, m.n, i, r.r, sizeof r.r, &r.c, &r.s, NULL);
                if (!strcmp(r.r, "applied")) {
                    S.applied++;
                    if (r.s > acked_upto) acked_upto = r.s;
                }
            }
        } else {
            int64_t code = 0;
            assert_string_equal(mp_type(m.p, m.n), "error");
            assert_true(mp_get_i64(m.p, m.n, "c", &code));
            assert_int_equal(code, SYNC_EBUSY);
            assert_non_null(memmem(m.p, m.n, "\xa1r\xc3", 3)); /* retryable */
            busy++;
        }
    }
    assert_true(busy > 0);
    assert_true(acks >= 1);
    wsc_close(&c);
    /* The device resumes from what the server holds. */
    crdt_buf w = {0};
    connect_ok(&c, &d, &w);
    uint64_t seq = 0;
    assert_true(mp_get_u64(w.p, w.n, "seq", &seq));
    assert_true(seq >= acked_upto);
    for (int i = 0; i < N * PER; i++) crdt_buf_free(&env[i]);
    free(env);
    crdt_buf_free(&w);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    wsc_close(&c);
    check_after();
}

/*
 * A device over its rate limit, on a server of its own (50 deltas/s, 500
 * at once) so the shared server's cases keep the default limit: the push
 * that finds too few tokens gets the retryable SYNC_ERATE with `ra`, nothing
 * of it is stored, a second connection of the same device is limited too
 * (the bucket is the device's, not the connection's), another device is
 * not, and the same push passes after `ra` ms.  /metrics counts the
 * refusals.
 */
static uint64_t rate_push(wsc *c, uint64_t id, const crdt_buf *envs, size_t n, int64_t *code,
                          uint64_t *ra)
{
    crdt_buf f = {0}, m = {0};
    uint64_t applied = 0;
    *code = 0;
    *ra = 0;
    frame_push(&f, id, envs, n);
    assert_int_equal(wsc_send(c, f.p, f.n), 0);
    int cc = 0;
    assert_int_equal(wsc_recv(c, 10000, &m, &cc), WSC_BINARY);
    uint64_t got = 0;
    assert_true(mp_get_u64(m.p, m.n, "id", &got));
    assert_int_equal(got, id);
    if (!strcmp(mp_type(m.p, m.n), "ack")) {
        assert_int_equal(ack_count(m.p, m.n), n);
        for (size_t i = 0; i < n; i++) {
            ack_res r;
            assert_true(ack_entry(m.p, m.n, i, r.r, sizeof r.r, &r.c, &r.s, &r.x));
            applied += !strcmp(r.r, "applied");
        }
    } else {
        assert_string_equal(mp_type(m.p, m.n), "error");
        assert_true(mp_get_i64(m.p, m.n, "c", code));
        assert_non_null(memmem(m.p, m.n, "\xa1r\xc3", 3)); /* retryable */
        assert_true(mp_get_u64(m.p, m.n, "ra", ra));
        char msg[200] = "";
        mp_get_str(m.p, m.n, "m", msg, sizeof msg);
        assert_non_null(strstr(msg, "retry after"));
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    return applied;
}

static void *run_server(void *arg)
{
    sync_server_run(arg);
    return NULL;
}

static void test_rate_limit(void **state)
{
    (void)state;
    su_dir dir;
    su_dir_make(&dir, "ratelimit");
    store *st = su_store_new(&dir, NULL);
    sync_config cfg = sync_config_default;
    cfg.device_rate = 50;  /* slow enough that a slow commit of push 1 cannot refill it */
    cfg.device_burst = 500;
    sync_server_opts o = {.listen_host = "127.0.0.1", .port = 0, .verify_threads = 1,
                          .log_level = 0};
    sync_server *sv = NULL;
    char err[256];
    if (sync_server_new(st, &cfg, &o, &sv, err, sizeof err)) fail_msg("server: %s", err);
    int port = sync_server_port(sv);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_server, sv), 0);
    su_dev a, b;
    store_txn *t;
    assert_int_equal(store_begin(st, STORE_RW, &t), 0);
    su_dev *devs[2] = {&a, &b};
    for (uint32_t i = 0; i < 2; i++) {
        su_dev_init(devs[i], 10 + i);
        store_device dv = {.id = 10 + i, .state = STORE_DEV_ACTIVE, .epoch = 1};
        snprintf(dv.volunteer, sizeof dv.volunteer, "rate%u", i);
        store_key k = {.dev = 10 + i, .epoch = 1, .state = STORE_KEY_ACTIVE};
        memcpy(k.pk, devs[i]->pk, 32);
        const char *scope[] = {i ? "HRB" : "HRA"};
        assert_int_equal(store_device_put(t, &dv), 0);
        assert_int_equal(store_key_put(t, &k), 0);
        assert_int_equal(store_device_scope_set(t, 10 + i, scope, 1), 0);
    }
    assert_int_equal(store_commit(t), 0);
    enum { N = 600 };
    crdt_buf *ea = calloc(N, sizeof *ea), *eb = calloc(N, sizeof *eb);
    for (int i = 0; i < N; i++) {
        hh_delta(&a, "HRA", "rate", &ea[i]);
        hh_delta(&b, "HRB", "rate", &eb[i]);
    }
    wsc c1, c2, cb;
    assert_int_equal(device_connect(&c1, port, a.id, 1, a.sk, NULL), 0);
    int64_t code;
    uint64_t ra, ra2;
    /* 400 of the 500 tokens; then 200 more does not fit. */
    assert_int_equal(rate_push(&c1, 1, ea, 400, &code, &ra), 400);
    assert_int_equal(rate_push(&c1, 2, ea + 400, 200, &code, &ra), 0);
    uint64_t t0 = wall_ms(); /* `ra` counts from the server's refusal, before this */
    assert_int_equal(code, SYNC_ERATE);
    /* 100 tokens missing at 50/s: 2 s, less what has passed. */
    if (ra < 1 || ra > 2000) fail_msg("retry after %llu ms, want 1..2000", (unsigned long long)ra);
    /* The bucket is the device's: a second connection is limited too. */
    assert_int_equal(device_connect(&c2, port, a.id, 1, a.sk, NULL), 0);
    assert_int_equal(rate_push(&c2, 1, ea + 400, 200, &code, &ra2), 0);
    assert_int_equal(code, SYNC_ERATE);
    /* Another device is not. */
    assert_int_equal(device_connect(&cb, port, b.id, 1, b.sk, NULL), 0);
    assert_int_equal(rate_push(&cb, 1, eb, 500, &code, &ra2), 500);
    /* Nothing of the refused push was stored. */
    uint64_t head = 0;
    uint8_t h[32];
    assert_int_equal(store_begin(st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_chain_head(t, a.id, &head, h), 0);
    store_abort(t);
    assert_int_equal(head, 400);
    /* After `ra` the same push passes. */
    uint64_t waited = wall_ms() - t0;
    ra += 2; /* both clocks count whole milliseconds */
    if (waited < ra) {
        struct timespec ts = {(time_t)((ra - waited) / 1000), (long)((ra - waited) % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(rate_push(&c1, 3, ea + 400, 200, &code, &ra), 200);
    crdt_buf body = {0};
    assert_int_equal(http_get("127.0.0.1", port, "/metrics", &body), 200);
    crdt_buf_append(&body, "", 1);
    const char *p = strstr((char *)body.p, "\ndoorstep_pushes_rate_limited_total ");
    assert_non_null(p);
    assert_int_equal(atoi(p + strlen("\ndoorstep_pushes_rate_limited_total ")), 2);
    wsc_close(&c1);
    wsc_close(&c2);
    wsc_close(&cb);
    for (int i = 0; i < N; i++) {
        crdt_buf_free(&ea[i]);
        crdt_buf_free(&eb[i]);
    }
    free(ea);
    free(eb);
    crdt_buf_free(&body);
    sync_server_stop(sv);
    pthread_join(th, NULL);
    sync_server_free(sv);
    uint64_t problems = 0;
    assert_int_equal(store_verify(st, NULL, NULL, &problems), 0);
    assert_int_equal(problems, 0);
    store_close(st);
    su_dir_remove(&dir);
}

/* ---- memory -------------------------------------------------------------------------- */

static size_t allocated_bytes(void)
{
#if defined(DOORSTEP_SANITIZED)
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2(); /* glibc sums every arena */
    return mi.uordblks + mi.hblkhd;
#endif
}

static char flood_hh[16];
static su_dev flood_dev;

/* Pull requests sent without ever reading the answers: the server queues
 * changes frames up to ~2 MiB, then stops reading from the connection. */
static size_t pull_flood(int conns)
{
    wsc *c = calloc((size_t)conns, sizeof *c);
    crdt_buf f = {0};
    for (int k = 0; k < conns; k++) {
        connect_ok(&c[k], &flood_dev, NULL);
        struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
        setsockopt(c[k].fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        int shrink = 4096;
        setsockopt(c[k].fd, SOL_SOCKET, SO_RCVBUF, &shrink, sizeof shrink);
    }
    for (int i = 0; i < 3000; i++) {
        bool any = false;
        for (int k = 0; k < conns; k++) {
            frame_pull(&f, (uint64_t)i + 1, 0, 500);
            if (c[k].fd >= 0 && wsc_send(&c[k], f.p, f.n) == 0) any = true;
        }
        if (!any) break;
    }
    usleep(300 * 1000);
    size_t peak = allocated_bytes();
    for (int k = 0; k < conns; k++) wsc_close(&c[k]);
    free(c);
    crdt_buf_free(&f);
    return peak;
}

static void hostile_series(void)
{
    /* A burst of hostile connections that all end in a close. */
    static const uint8_t junk[] = {0xc1};
    for (int i = 0; i < 20; i++) {
        wsc c;
        uint8_t spk[32], nonce[32];
        hello(&c, spk, nonce);
        wsc_send(&c, junk, sizeof junk);
        expect_close(&c, 1007, true, 5000);
        wsc_close(&c);
    }
    uint8_t chunk[8192];
    memset(chunk, 0xc0, sizeof chunk);
    for (int i = 0; i < 5; i++) {
        wsc c;
        connect_ok(&c, &flood_dev, NULL);
        for (int k = 0; k < 40; k++)
            if (wsc_send_frame(&c, k ? WSC_CONT : WSC_BINARY, false, chunk, sizeof chunk)) break;
        expect_close(&c, 1009, true, 5000);
        wsc_close(&c);
    }
}

static void test_memory_bounded(void **state)
{
    (void)state;
    new_device(&flood_dev, flood_hh, STORE_DEV_ACTIVE);
    /* ~300 KiB of envelopes in the device's scope, so every pull answer is a
     * ~192 KiB changes frame. */
    wsc c;
    connect_ok(&c, &flood_dev, NULL);
    char *note = malloc(1001);
    memset(note, 'm', 1000);
    note[1000] = 0;
    for (int b = 0; b < 3; b++) {
        crdt_buf env[100] = {{0}};
        ack_res r[100];
        for (int i = 0; i < 100; i++) hh_delta(&flood_dev, flood_hh, note, &env[i]);
        push_acked(&c, (uint64_t)b + 1, env, 100, r);
        for (int i = 0; i < 100; i++) crdt_buf_free(&env[i]);
    }
    wsc_close(&c);
    free(note);

    size_t base = allocated_bytes();
    size_t peak1 = pull_flood(1);
    hostile_series();
    usleep(300 * 1000);
    size_t after1 = allocated_bytes();
    size_t peak8 = pull_flood(8);
    for (int round = 0; round < 3; round++) {
        hostile_series();
        pull_flood(1);
    }
    usleep(500 * 1000);
    size_t after = allocated_bytes();
    print_message("memory: base %zu KiB; one flooding connection: peak +%ld KiB; 8 flooding "
                  "connections: peak +%ld KiB; after 1 series +%ld KiB; after 4 series +%ld KiB\n",
                  base / 1024, ((long)peak1 - (long)base) / 1024, ((long)peak8 - (long)base) / 1024,
                  ((long)after1 - (long)base) / 1024, ((long)after - (long)base) / 1024);
    /* Per flooding connection: the send queue (2 MiB) plus one page and the
     * partial input; allow 6 MiB each. */
    if (peak1 > base + 6 * 1024 * 1024)
        fail_msg("one flooding connection holds %zu KiB", (peak1 - base) / 1024);
    if (peak8 > base + 8 * 6 * 1024 * 1024)
        fail_msg("8 flooding connections hold %zu KiB", (peak8 - base) / 1024);
    /* Nothing accumulates across series (allow slack for allocator caches). */
    if (after > after1 + 2 * 1024 * 1024)
        fail_msg("memory grew by %zu KiB over 3 more series", (after - after1) / 1024);
    S.applied += 0;
    check_after();
}

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oversized_single_frame),
        cmocka_unit_test(test_oversized_in_fragments),
        cmocka_unit_test(test_unfinished_fragments_before_auth),
        cmocka_unit_test(test_unfinished_fragments_after_auth),
        cmocka_unit_test(test_one_byte_fragments),
        cmocka_unit_test(test_silent_before_auth),
        cmocka_unit_test(test_wrong_subprotocol),
        cmocka_unit_test(test_no_subprotocol),
        cmocka_unit_test(test_text_frame),
        cmocka_unit_test(test_invalid_msgpack),
        cmocka_unit_test(test_not_a_map_and_no_type),
        cmocka_unit_test(test_ext_types),
        cmocka_unit_test(test_duplicate_map_keys),
        cmocka_unit_test(test_floats_depth_lengths),
        cmocka_unit_test(test_huge_strings),
        cmocka_unit_test(test_unknown_frame_type),
        cmocka_unit_test(test_unknown_key_in_frame),
        cmocka_unit_test(test_push_before_auth),
        cmocka_unit_test(test_replayed_auth),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_wrong_key_epoch),
        cmocka_unit_test(test_unknown_device),
        cmocka_unit_test(test_revoked_device), cmocka_unit_test(test_last_sync),
        cmocka_unit_test(test_frozen_device),
        cmocka_unit_test(test_seq_gap),
        cmocka_unit_test(test_seq_reuse_clone),
        cmocka_unit_test(test_chain_fork),
        cmocka_unit_test(test_outside_scope),
        cmocka_unit_test(test_other_devices_delta),
        cmocka_unit_test(test_clock_far_ahead),
        cmocka_unit_test(test_unknown_field_and_kind),
        cmocka_unit_test(test_wrong_op_for_field),
        cmocka_unit_test(test_invalid_id_number),
        cmocka_unit_test(test_too_many_ops),
        cmocka_unit_test(test_too_many_deltas),
        cmocka_unit_test(test_garbage_envelopes),
        cmocka_unit_test(test_push_flood),
        cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_memory_bounded),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
