/*
 * test_server.c — doorstepd over real WebSockets on loopback: hello, auth,
 * push/ack, duplicates, gaps, pull, live subscription across devices,
 * resume after disconnect, many concurrent devices, graceful shutdown with
 * acks for in-flight pushes, HTTP /healthz and /metrics, and the error
 * codes and close codes of docs/PROTOCOL.md (each case leaves the server
 * up for other devices and stores nothing invalid).
 *
 * The server runs in this process (sync_server_run on a thread, port 0);
 * the client is tests/common/wsclient.c, a raw-socket WebSocket client.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>
#include <msgpack.h>
#include <sys/wait.h>

#include "storeutil.h"
#include "sync.h"
#include "testutil.h"
#include "wsclient.h"

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct srv {
    su_dir d;
    store *st;
    sync_server *sv;
    sync_config cfg;
    pthread_t th;
    int port;
} srv;

static void *run_thread(void *arg)
{
    sync_server_run(((srv *)arg)->sv);
    return NULL;
}

static store_opts *next_opts; /* for the next fresh server (NULL: defaults) */
static size_t next_page_bytes; /* for the next fresh server (0: default) */
static int next_commit_delay_ms; /* for the next server (0: commit at once) */

static void srv_start_on(srv *s, bool fresh)
{
    char err[256];
    sync_server_opts o = {.listen_host = "127.0.0.1", .port = 0, .verify_threads = 2,
                          .log_level = 0, .commit_delay_ms = next_commit_delay_ms};
    if (fresh) {
        su_dir_make(&s->d, "server");
        s->st = su_store_new(&s->d, next_opts);
        s->cfg = sync_config_default;
        s->cfg.auth_timeout_s = 2;
        if (next_page_bytes) s->cfg.page_bytes = next_page_bytes;
    } else {
        store_opts so = {.no_sync = true};
        assert_int_equal(store_open(s->d.data, s->d.key, &so, &s->st, err, sizeof err), 0);
    }
    int rc = sync_server_new(s->st, &s->cfg, &o, &s->sv, err, sizeof err);
    if (rc) fail_msg("server: %s", err);
    s->port = sync_server_port(s->sv);
    assert_true(s->port > 0);
    assert_int_equal(pthread_create(&s->th, NULL, run_thread, s), 0);
}

static void srv_halt(srv *s)
{
    sync_server_stop(s->sv);
    pthread_join(s->th, NULL);
    sync_server_free(s->sv);
    store_close(s->st);
    s->sv = NULL;
    s->st = NULL;
}

static void srv_stop(srv *s)
{
    srv_halt(s);
    su_dir_remove(&s->d);
}

/* Register a device with key epoch 1 and a scope of households. */
static void add_device(srv *s, su_dev *dev, uint32_t id, const char *const *hh, size_t n,
                       uint8_t state)
{
    store_txn *t;
    su_dev_init(dev, id);
    assert_int_equal(store_begin(s->st, STORE_RW, &t), 0);
    store_device d = {.id = id, .state = state, .epoch = 1};
    snprintf(d.volunteer, sizeof d.volunteer, "志愿者%u", id);
    assert_int_equal(store_device_put(t, &d), 0);
    store_key k = {.dev = id, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, dev->pk, 32);
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_device_scope_set(t, id, hh, n), 0);
    assert_int_equal(store_commit(t), 0);
}

static int expect_frame(wsc *c, crdt_buf *m, const char *type)
{
    int cc = 0;
    int op = wsc_recv(c, 5000, m, &cc);
    if (op != WSC_BINARY) fail_msg("expected a %s frame, got op %d (close %d)", type, op, cc);
    if (strcmp(mp_type(m->p, m->n), type)) {
        int64_t code = 0;
        char msg[200] = "";
        mp_get_i64(m->p, m->n, "c", &code);
        mp_get_str(m->p, m->n, "m", msg, sizeof msg);
        fail_msg("expected %s, got %s (code %lld: %s)", type, mp_type(m->p, m->n),
                 (long long)code, msg);
    }
    return 0;
}

/* Expect an error frame with `code`, then (if close_code) a close. */
static void expect_error(wsc *c, int code, int close_code)
{
    crdt_buf m = {0};
    int cc = 0;
    expect_frame(c, &m, "error");
    int64_t got = 0;
    assert_true(mp_get_i64(m.p, m.n, "c", &got));
    if (got != code) fail_msg("error code %lld, want %d", (long long)got, code);
    if (close_code) {
        int op = wsc_recv(c, 5000, &m, &cc);
        assert_int_equal(op, WSC_CLOSE);
        assert_int_equal(cc, close_code);
    }
    crdt_buf_free(&m);
}

/* A household delta from dev. */
static void hh_delta(su_dev *dev, const char *hh, const char *note, crdt_buf *env)
{
    su_ops o = {0};
    su_set_str(&o, "community", "C01");
    su_set_str(&o, "grid", "G01");
    su_set_str(&o, "note", note);
    su_make(dev, "household", hh, &o, wall_ms(), env, NULL);
    su_ops_free(&o);
}

static void push_and_ack(wsc *c, uint64_t id, crdt_buf *envs, size_t n, const char *want)
{
    crdt_buf f = {0}, m = {0};
    frame_push(&f, id, envs, n);
    assert_int_equal(wsc_send(c, f.p, f.n), 0);
    expect_frame(c, &m, "ack");
    uint64_t got_id = 0;
    assert_true(mp_get_u64(m.p, m.n, "id", &got_id));
    assert_int_equal(got_id, id);
    assert_int_equal(ack_count(m.p, m.n), n);
    for (size_t i = 0; i < n; i++) {
        char r[32];
        int64_t code;
        assert_true(ack_entry(m.p, m.n, i, r, sizeof r, &code, NULL, NULL));
        if (strcmp(r, want)) fail_msg("delta %zu: %s (code %lld), want %s", i, r, (long long)code, want);
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
}

/* ---- the happy path ---------------------------------------------------------------- */

/*
 * The key records of the changes frame p[0..n) (PROTOCOL.md, "Key records"):
 * each is signed by the server key over wire_key_msg, and the one for
 * device dev names pk.  Returns how many records the frame has.
 */
static unsigned check_key_records(const uint8_t *p, size_t n, const uint8_t srvpk[32],
                                  uint32_t dev, const uint8_t pk[32])
{
    msgpack_unpacked up;
    size_t off = 0;
    unsigned found = 0, count = 0;
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, (const char *)p, n, &off), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *k = NULL;
    for (uint32_t i = 0; i < up.data.via.map.size; i++)
        if (up.data.via.map.ptr[i].key.via.str.size == 1 &&
            up.data.via.map.ptr[i].key.via.str.ptr[0] == 'k')
            k = &up.data.via.map.ptr[i].val;
    assert_true(k && k->type == MSGPACK_OBJECT_ARRAY);
    for (uint32_t i = 0; i < k->via.array.size; i++, count++) {
        const msgpack_object *r = &k->via.array.ptr[i];
        assert_int_equal(r->type, MSGPACK_OBJECT_MAP);
        assert_int_equal(r->via.map.size, 4);   /* d, e, g, p, in that order */
        const msgpack_object_kv *kv = r->via.map.ptr;
        assert_int_equal(kv[0].val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
        assert_int_equal(kv[2].val.via.bin.size, 64);
        assert_int_equal(kv[3].val.via.bin.size, 32);
        uint8_t msg[WIRE_KEY_MSG_BYTES];
        wire_key_msg((uint32_t)kv[0].val.via.u64, (uint32_t)kv[1].val.via.u64,
                     (const uint8_t *)kv[3].val.via.bin.ptr, msg);
        assert_int_equal(crypto_sign_verify_detached((const uint8_t *)kv[2].val.via.bin.ptr, msg,
                                                     sizeof msg, srvpk), 0);
        if (kv[0].val.via.u64 == dev) {
            assert_memory_equal(kv[3].val.via.bin.ptr, pk, 32);
            found++;
        }
    }
    assert_int_equal(found, 1);
    msgpack_unpacked_destroy(&up);
    return count;
}

static void test_happy_path(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a, b;
    const char *scope[] = {"H1", "H2"};
    add_device(&s, &a, 1, scope, 2, STORE_DEV_ACTIVE);
    add_device(&s, &b, 2, scope, 1, STORE_DEV_ACTIVE);
    wsc ca, cb;
    crdt_buf welcome = {0}, m = {0}, f = {0};

    /* Hello has what the protocol says. */
    assert_int_equal(wsc_connect(&ca, "127.0.0.1", s.port, "/sync", SYNC_SUBPROTOCOL), 0);
    int cc;
    assert_int_equal(wsc_recv(&ca, 3000, &m, &cc), WSC_BINARY);
    assert_string_equal(mp_type(m.p, m.n), "hello");
    uint64_t v, now;
    uint8_t srvpk[32], nonce[32];
    assert_true(mp_get_u64(m.p, m.n, "v", &v));
    assert_int_equal(v, 1);
    assert_true(mp_get_bin(m.p, m.n, "srv", srvpk, 32));
    assert_memory_equal(srvpk, store_server_pk(s.st), 32);
    assert_true(mp_get_bin(m.p, m.n, "n", nonce, 32));
    assert_true(mp_get_u64(m.p, m.n, "now", &now));
    assert_true(now + 5000 > wall_ms() && now < wall_ms() + 5000);
    frame_auth(&f, 1, 1, a.sk, srvpk, nonce);
    assert_int_equal(wsc_send(&ca, f.p, f.n), 0);
    expect_frame(&ca, &welcome, "welcome");
    uint64_t seq = 99;
    assert_true(mp_get_u64(welcome.p, welcome.n, "seq", &seq));
    assert_int_equal(seq, 0);

    /* B subscribes to live changes for H1. */
    assert_int_equal(device_connect(&cb, s.port, 2, 1, b.sk, NULL), 0);
    frame_subscribe(&f, 0);
    assert_int_equal(wsc_send(&cb, f.p, f.n), 0);

    /* A pushes three deltas: applied; the same again: duplicates. */
    crdt_buf envs[3] = {{0}};
    hh_delta(&a, "H1", "第一次走访", &envs[0]);
    hh_delta(&a, "H1", "第二次走访", &envs[1]);
    hh_delta(&a, "H2", "另一户", &envs[2]);
    push_and_ack(&ca, 7, envs, 3, "applied");
    push_and_ack(&ca, 8, envs, 3, "duplicate");

    /* B receives A's H1 changes live (not H2: outside B's scope). */
    size_t got = 0;
    while (got < 2) {
        expect_frame(&cb, &m, "changes");
        /* One key record, for A's key: B can verify A's envelopes itself. */
        assert_int_equal(check_key_records(m.p, m.n, srvpk, 1, a.pk), 1);
        for (size_t i = 0; i < changes_count(m.p, m.n); i++) {
            crdt_buf e = {0};
            assert_true(changes_env(m.p, m.n, i, &e));
            assert_int_equal(e.n, envs[got].n);
            assert_memory_equal(e.p, envs[got].p, e.n); /* verbatim */
            crdt_buf_free(&e);
            got++;
        }
    }

    /* A pulls everything from 0, in pages of 2. */
    uint64_t cursor = 0, more_flag = 1;
    size_t pulled = 0;
    for (uint64_t id = 100; more_flag; id++) {
        frame_pull(&f, id, cursor, 2);
        assert_int_equal(wsc_send(&ca, f.p, f.n), 0);
        expect_frame(&ca, &m, "changes");
        pulled += changes_count(m.p, m.n);
        assert_true(mp_get_u64(m.p, m.n, "n", &cursor));
        /* "more" is a bool: c3 (true) right after the key */
        more_flag = m.n && memmem(m.p, m.n, "\xa4more\xc3", 6) != NULL;
    }
    assert_int_equal(pulled, 3);

    /* Resume after disconnect: the server says what it holds. */
    wsc_close(&ca);
    assert_int_equal(device_connect(&ca, s.port, 1, 1, a.sk, &welcome), 0);
    assert_true(mp_get_u64(welcome.p, welcome.n, "seq", &seq));
    assert_int_equal(seq, 3);

    /* A gap: seq 5 when 4 is expected. */
    crdt_buf skip = {0};
    hh_delta(&a, "H1", "4", &skip);
    hh_delta(&a, "H1", "5", &skip);
    frame_push(&f, 9, &skip, 1);
    assert_int_equal(wsc_send(&ca, f.p, f.n), 0);
    expect_frame(&ca, &m, "ack");
    char r[32];
    int64_t code;
    uint64_t expected, s5;
    assert_true(ack_entry(m.p, m.n, 0, r, sizeof r, &code, &s5, &expected));
    assert_string_equal(r, "rejected");
    assert_int_equal(code, STORE_EGAP);
    assert_int_equal(s5, 5);
    assert_int_equal(expected, 4);

    for (int i = 0; i < 3; i++) crdt_buf_free(&envs[i]);
    crdt_buf_free(&skip);
    crdt_buf_free(&welcome);
    crdt_buf_free(&m);
    crdt_buf_free(&f);
    wsc_close(&ca);
    wsc_close(&cb);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    srv_stop(&s);
}

/* ---- refusals ------------------------------------------------------------------------ */

static void test_auth_refusals(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a, frozen, revoked, stranger;
    const char *scope[] = {"H1"};
    add_device(&s, &a, 1, scope, 1, STORE_DEV_ACTIVE);
    add_device(&s, &frozen, 2, scope, 1, STORE_DEV_FROZEN);
    add_device(&s, &revoked, 3, scope, 1, STORE_DEV_REVOKED_HARD);
    su_dev_init(&stranger, 4);
    wsc c;
    crdt_buf m = {0}, f = {0};
    int cc;

    assert_int_equal(device_connect(&c, s.port, 4, 1, stranger.sk, NULL), SYNC_EUNKNOWN_DEVICE);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, s.port, 2, 1, frozen.sk, NULL), SYNC_EFROZEN);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, s.port, 3, 1, revoked.sk, NULL), SYNC_EREVOKED);
    wsc_close(&c);
    assert_int_equal(device_connect(&c, s.port, 1, 2, a.sk, NULL), SYNC_EEPOCH);
    wsc_close(&c);
    /* Someone else's key for device 1: bad signature. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, stranger.sk, NULL), SYNC_EBADAUTH);
    assert_int_equal(wsc_recv(&c, 3000, &m, &cc), WSC_CLOSE);
    assert_int_equal(cc, 1008);
    wsc_close(&c);

    /* Push before auth. */
    assert_int_equal(wsc_connect(&c, "127.0.0.1", s.port, "/sync", SYNC_SUBPROTOCOL), 0);
    expect_frame(&c, &m, "hello");
    frame_push(&f, 1, NULL, 0);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_ESTATE, 1008);
    wsc_close(&c);

    /* Replayed auth: a second auth on an authenticated session. */
    crdt_buf w = {0};
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, &w), 0);
    uint8_t spk[32], nonce[32];
    memcpy(spk, store_server_pk(s.st), 32);
    memset(nonce, 0, 32);
    frame_auth(&f, 1, 1, a.sk, spk, nonce);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_ESTATE, 1008);
    wsc_close(&c);

    /* Silent client: told and closed after the auth timeout (2 s here). */
    assert_int_equal(wsc_connect(&c, "127.0.0.1", s.port, "/sync", SYNC_SUBPROTOCOL), 0);
    expect_frame(&c, &m, "hello");
    expect_error(&c, SYNC_EAUTHTIME, 1008);
    wsc_close(&c);

    /* No subprotocol at all: no upgrade either. */
    assert_int_equal(wsc_connect(&c, "127.0.0.1", s.port, "/sync", NULL), -1);
    wsc_close(&c);

    /* Wrong path and wrong subprotocol: no upgrade. */
    assert_int_equal(wsc_connect(&c, "127.0.0.1", s.port, "/other", SYNC_SUBPROTOCOL), -1);
    wsc_close(&c);
    assert_int_equal(wsc_connect(&c, "127.0.0.1", s.port, "/sync", "chat"), -1);
    wsc_close(&c);

    /* The server is still up for a good device. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    wsc_close(&c);
    crdt_buf_free(&m);
    crdt_buf_free(&f);
    crdt_buf_free(&w);
    srv_stop(&s);
}

static void test_bad_input(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a, other;
    const char *scope[] = {"H1"};
    add_device(&s, &a, 1, scope, 1, STORE_DEV_ACTIVE);
    su_dev_init(&other, 77);
    wsc c;
    crdt_buf m = {0}, f = {0};
    int cc;

    /* Invalid msgpack: error then close 1007. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    static const uint8_t junk[] = {0xc1, 0x00};
    assert_int_equal(wsc_send(&c, junk, sizeof junk), 0);
    expect_error(&c, CRDT_ERESERVED, 1007);
    wsc_close(&c);

    /* A text frame: close 1003. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    assert_int_equal(wsc_send_frame(&c, WSC_TEXT, true, (const uint8_t *)"hi", 2), 0);
    assert_int_equal(wsc_recv(&c, 3000, &m, &cc), WSC_CLOSE);
    assert_int_equal(cc, 1003);
    wsc_close(&c);

    /* Oversized message (in 1-KiB fragments): close 1009. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    uint8_t chunk[1024];
    memset(chunk, 0x90, sizeof chunk);
    int op = 0;
    for (int i = 0; i < 300 && op == 0; i++)
        if (wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, false, chunk, sizeof chunk)) op = -1;
    op = wsc_recv(&c, 3000, &m, &cc);
    assert_true(op == WSC_CLOSE || op == -1);
    if (op == WSC_CLOSE) assert_int_equal(cc, 1009);
    wsc_close(&c);

    /* 1-byte fragments of a valid pull are reassembled. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    frame_pull(&f, 5, 0, 10);
    for (size_t i = 0; i < f.n; i++)
        assert_int_equal(wsc_send_frame(&c, i ? WSC_CONT : WSC_BINARY, i + 1 == f.n, f.p + i, 1), 0);
    expect_frame(&c, &m, "changes");

    /* Unknown frame type: an error, the session stays open. */
    static const uint8_t zap[] = {0x81, 0xa1, 't', 0xa3, 'z', 'a', 'p'};
    assert_int_equal(wsc_send(&c, zap, sizeof zap), 0);
    expect_error(&c, SYNC_EFRAME, 0);
    frame_pull(&f, 6, 0, 10);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "changes");

    /* Duplicate map keys: refused by the walk. */
    static const uint8_t dup[] = {0x82, 0xa1, 't', 0xa4, 'p', 'u', 'l', 'l', 0xa1, 't', 0xa4,
                                  'p', 'u', 'l', 'l'};
    assert_int_equal(wsc_send(&c, dup, sizeof dup), 0);
    expect_error(&c, CRDT_EDUPKEY, 1007);
    wsc_close(&c);

    /* Too many deltas in one push. */
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    crdt_buf *many = calloc(501, sizeof *many);
    for (int i = 0; i < 501; i++) crdt_buf_append(&many[i], "x", 1);
    frame_push(&f, 3, many, 501);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_ETOOMANY, 0);
    for (int i = 0; i < 501; i++) crdt_buf_free(&many[i]);
    free(many);

    /* Per-delta refusals in one push: outside scope, another device's
     * delta, a bad signature, a garbage envelope, an invalid phone. */
    crdt_buf e[5] = {{0}};
    su_dev a2 = a;
    hh_delta(&a2, "H9", "outside", &e[0]);        /* seq 1, scope refuses */
    hh_delta(&other, "H1", "not mine", &e[1]);
    su_dev a3 = a;
    hh_delta(&a3, "H1", "tampered", &e[2]);
    e[2].p[e[2].n - 1] ^= 1;                      /* flip a signature bit */
    crdt_buf_append(&e[3], "\x82\xa1" "b", 3);
    su_ops o = {0};
    su_set_str(&o, "phone", "12345");
    su_dev a4 = a;
    su_make(&a4, "household", "H1", &o, wall_ms(), &e[4], NULL);
    frame_push(&f, 4, e, 5);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "ack");
    static const int want[5] = {STORE_Q_SCOPE, SYNC_EDEVICE, WIRE_EBADSIG, CRDT_ELENGTH,
                                CRDT_EPHONE};
    for (int i = 0; i < 5; i++) {
        char r[32];
        int64_t code;
        assert_true(ack_entry(m.p, m.n, (size_t)i, r, sizeof r, &code, NULL, NULL));
        assert_string_equal(r, i == 0 ? "quarantined" : "rejected");
        if (code != want[i]) fail_msg("entry %d: code %lld, want %d", i, (long long)code, want[i]);
    }
    /* Nothing of that was stored. */
    store_txn *t;
    uint64_t last;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &last), 0);
    assert_int_equal(last, 0);
    store_abort(t);
    for (int i = 0; i < 5; i++) crdt_buf_free(&e[i]);
    su_ops_free(&o);
    wsc_close(&c);
    crdt_buf_free(&m);
    crdt_buf_free(&f);
    srv_stop(&s);
}

/* ---- load, shutdown, HTTP ------------------------------------------------------------ */

typedef struct dev_run {
    int port;
    su_dev dev;
    char hh[16];
    int n;
    int ok;
} dev_run;

static void *device_thread(void *arg)
{
    dev_run *r = arg;
    wsc c;
    crdt_buf env[20] = {{0}}, f = {0}, m = {0};
    int cc;
    if (device_connect(&c, r->port, r->dev.id, 1, r->dev.sk, NULL) != 0) return NULL;
    for (int i = 0; i < r->n && i < 20; i++) {
        su_ops o = {0};
        char note[32];
        snprintf(note, sizeof note, "visit %d", i);
        su_set_str(&o, "note", note);
        su_make(&r->dev, "household", r->hh, &o, wall_ms(), &env[i], NULL);
        su_ops_free(&o);
    }
    frame_push(&f, 1, env, 10);
    wsc_send(&c, f.p, f.n);
    frame_push(&f, 2, env + 10, (size_t)r->n - 10);
    wsc_send(&c, f.p, f.n); /* pipelined */
    int acks = 0;
    while (acks < 2 && wsc_recv(&c, 10000, &m, &cc) == WSC_BINARY) {
        if (strcmp(mp_type(m.p, m.n), "ack")) continue;
        for (size_t i = 0; i < ack_count(m.p, m.n); i++) {
            char res[32];
            ack_entry(m.p, m.n, i, res, sizeof res, NULL, NULL, NULL);
            if (!strcmp(res, "applied")) r->ok++;
        }
        acks++;
    }
    for (int i = 0; i < 20; i++) crdt_buf_free(&env[i]);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    wsc_close(&c);
    return NULL;
}

static void test_many_devices(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    enum { N = 40 };
    dev_run *runs = calloc(N, sizeof *runs);
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        snprintf(runs[i].hh, sizeof runs[i].hh, "H%d", i);
        const char *scope[] = {runs[i].hh};
        add_device(&s, &runs[i].dev, (uint32_t)i + 1, scope, 1, STORE_DEV_ACTIVE);
        runs[i].port = s.port;
        runs[i].n = 20;
    }
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, device_thread, &runs[i]);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        if (runs[i].ok != 20) fail_msg("device %d: %d of 20 applied", i + 1, runs[i].ok);
    store_txn *t;
    uint64_t last;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &last), 0);
    assert_int_equal(last, N * 20);
    store_abort(t);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    /* /metrics agrees. */
    crdt_buf body = {0};
    assert_int_equal(http_get("127.0.0.1", s.port, "/metrics", &body), 200);
    crdt_buf_append(&body, "", 1);
    char want[64];
    snprintf(want, sizeof want, "doorstep_deltas_total{outcome=\"applied\"} %d", N * 20);
    if (!strstr((char *)body.p, want)) fail_msg("metrics lack '%s'", want);
    assert_non_null(strstr((char *)body.p, "doorstep_commit_seconds_bucket"));
    assert_int_equal(http_get("127.0.0.1", s.port, "/healthz", &body), 200);
    assert_int_equal(http_get("127.0.0.1", s.port, "/nothing", &body), 404);
    crdt_buf_free(&body);
    free(runs);
    srv_stop(&s);
}

/*
 * The group-commit delay (sync/server.c, commit_delay) at its largest,
 * 1000 ms: it holds a commit back only while other pushes are still being
 * verified.  A lone device's pushes, each sent after the last one's ack (so
 * each arrives well within 1000 ms of the previous commit), are committed
 * at once: three of them take far less than the one second that a single
 * wrongful wait would add.  Many devices pushing together are all applied
 * and the store checks clean.  Out-of-range delays are refused.
 */
static void test_commit_delay(void **state)
{
    (void)state;
    srv s;
    char err[256];
    next_commit_delay_ms = SYNC_COMMIT_DELAY_MAX_MS;
    srv_start_on(&s, true);
    next_commit_delay_ms = 0;

    const char *scope[] = {"H1"};
    su_dev d;
    add_device(&s, &d, 1, scope, 1, STORE_DEV_ACTIVE);
    wsc c;
    assert_int_equal(device_connect(&c, s.port, d.id, 1, d.sk, NULL), 0);
    uint64_t t0 = wall_ms();
    for (int i = 0; i < 3; i++) {
        crdt_buf env = {0};
        hh_delta(&d, "H1", i ? "again" : "first", &env);
        push_and_ack(&c, (uint64_t)i + 1, &env, 1, "applied");
        crdt_buf_free(&env);
    }
    uint64_t took = wall_ms() - t0;
    if (took >= 1000) fail_msg("three lone pushes took %llu ms: a commit waited for company",
                               (unsigned long long)took);
    wsc_close(&c);

    enum { N = 20 };
    dev_run *runs = calloc(N, sizeof *runs);
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        snprintf(runs[i].hh, sizeof runs[i].hh, "H%d", i + 10);
        const char *sc[] = {runs[i].hh};
        add_device(&s, &runs[i].dev, (uint32_t)i + 2, sc, 1, STORE_DEV_ACTIVE);
        runs[i].port = s.port;
        runs[i].n = 20;
    }
    for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, device_thread, &runs[i]);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        if (runs[i].ok != 20) fail_msg("device %d: %d of 20 applied", i + 2, runs[i].ok);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    assert_int_equal(problems, 0);
    free(runs);
    srv_stop(&s);

    /* Out of range: refused with a message, nothing started. */
    su_dir dd;
    su_dir_make(&dd, "delay");
    store *st2 = su_store_new(&dd, NULL);
    sync_server *sv = NULL;
    sync_config cfg = sync_config_default;
    for (int k = 0; k < 2; k++) {
        sync_server_opts o = {.listen_host = "127.0.0.1", .port = 0,
                              .commit_delay_ms = k ? SYNC_COMMIT_DELAY_MAX_MS + 1 : -1};
        err[0] = 0;
        assert_int_equal(sync_server_new(st2, &cfg, &o, &sv, err, sizeof err), SYNC_EPROTO);
        assert_null(sv);
        assert_non_null(strstr(err, "commit delay"));
    }
    store_close(st2);
    su_dir_remove(&dd);
}

static void test_graceful_shutdown_acks_inflight(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a;
    const char *scope[] = {"H1"};
    add_device(&s, &a, 1, scope, 1, STORE_DEV_ACTIVE);
    wsc c;
    crdt_buf env[50] = {{0}}, f = {0}, m = {0};
    assert_int_equal(device_connect(&c, s.port, 1, 1, a.sk, NULL), 0);
    for (int i = 0; i < 50; i++) hh_delta(&a, "H1", "在途", &env[i]);
    frame_push(&f, 1, env, 50);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    usleep(1000);
    sync_server_stop(s.sv); /* as SIGTERM does */
    /* The push is answered: an ack (committed) or a retryable error. */
    int cc;
    bool answered = false, acked = false;
    for (;;) {
        int op = wsc_recv(&c, 8000, &m, &cc);
        if (op != WSC_BINARY) {
            if (op == WSC_CLOSE) assert_int_equal(cc, 1001);
            break;
        }
        if (!strcmp(mp_type(m.p, m.n), "ack")) answered = acked = true;
        if (!strcmp(mp_type(m.p, m.n), "error")) {
            int64_t code;
            mp_get_i64(m.p, m.n, "c", &code);
            assert_true(sync_retryable((int)code));
            answered = true;
        }
    }
    assert_true(answered);
    pthread_join(s.th, NULL);
    sync_server_free(s.sv);
    store_close(s.st);
    /* After a restart the acked deltas are there. */
    srv_start_on(&s, false);
    store_txn *t;
    uint64_t head;
    uint8_t h[32];
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_chain_head(t, 1, &head, h), 0);
    store_abort(t);
    if (acked) assert_int_equal(head, 50);
    wsc_close(&c);
    for (int i = 0; i < 50; i++) crdt_buf_free(&env[i]);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    srv_stop(&s);
}


/* ---- enrollment, rotation, required rotation, live revocation ---------------------- */

static int bw2(void *d, const char *p, size_t n) { return crdt_buf_append(d, p, n) ? -1 : 0; }

static void frame_enroll(crdt_buf *out, const char *tok, const uint8_t pk[32], const uint8_t sk[64],
                         const uint8_t spk[32], const uint8_t nonce[32])
{
    uint8_t msg[256], sig[64], *p = msg;
    memcpy(p, WIRE_DOMAIN_ENROLL, sizeof WIRE_DOMAIN_ENROLL);
    p += sizeof WIRE_DOMAIN_ENROLL;
    memcpy(p, spk, 32);
    p += 32;
    memcpy(p, nonce, 32);
    p += 32;
    memcpy(p, tok, strlen(tok));
    p += strlen(tok);
    memcpy(p, pk, 32);
    p += 32;
    crypto_sign_detached(sig, NULL, msg, (size_t)(p - msg), sk);
    msgpack_packer pk_;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk_, out, bw2);
    msgpack_pack_map(&pk_, 4);
    msgpack_pack_str_with_body(&pk_, "pk", 2);
    msgpack_pack_bin_with_body(&pk_, pk, 32);
    msgpack_pack_str_with_body(&pk_, "sig", 3);
    msgpack_pack_bin_with_body(&pk_, sig, 64);
    msgpack_pack_str_with_body(&pk_, "t", 1);
    msgpack_pack_str_with_body(&pk_, "enroll", 6);
    msgpack_pack_str_with_body(&pk_, "tok", 3);
    msgpack_pack_str_with_body(&pk_, tok, strlen(tok));
}

static void frame_rotate(crdt_buf *out, uint32_t dev, uint32_t e, uint64_t seal,
                         const uint8_t old_sk[64], const uint8_t new_pk[32], const uint8_t new_sk[64])
{
    uint8_t msg[sizeof WIRE_DOMAIN_ROTATE + 48], so[64], sn[64], *p = msg;
    memcpy(p, WIRE_DOMAIN_ROTATE, sizeof WIRE_DOMAIN_ROTATE);
    p += sizeof WIRE_DOMAIN_ROTATE;
    for (int i = 3; i >= 0; i--) *p++ = (uint8_t)(dev >> (8 * i));
    for (int i = 3; i >= 0; i--) *p++ = (uint8_t)(e >> (8 * i));
    memcpy(p, new_pk, 32);
    p += 32;
    for (int i = 7; i >= 0; i--) *p++ = (uint8_t)(seal >> (8 * i));
    crypto_sign_detached(so, NULL, msg, (size_t)(p - msg), old_sk);
    crypto_sign_detached(sn, NULL, msg, (size_t)(p - msg), new_sk);
    msgpack_packer pk_;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk_, out, bw2);
    msgpack_pack_map(&pk_, 6);
    msgpack_pack_str_with_body(&pk_, "e", 1);
    msgpack_pack_uint32(&pk_, e);
    msgpack_pack_str_with_body(&pk_, "pk", 2);
    msgpack_pack_bin_with_body(&pk_, new_pk, 32);
    msgpack_pack_str_with_body(&pk_, "seal", 4);
    msgpack_pack_uint64(&pk_, seal);
    msgpack_pack_str_with_body(&pk_, "sn", 2);
    msgpack_pack_bin_with_body(&pk_, sn, 64);
    msgpack_pack_str_with_body(&pk_, "so", 2);
    msgpack_pack_bin_with_body(&pk_, so, 64);
    msgpack_pack_str_with_body(&pk_, "t", 1);
    msgpack_pack_str_with_body(&pk_, "rotate", 6);
}

/* Connect and read hello; returns the server key and nonce. */
static void hello(wsc *c, int port, uint8_t spk[32], uint8_t nonce[32])
{
    crdt_buf m = {0};
    assert_int_equal(wsc_connect(c, "127.0.0.1", port, "/sync", SYNC_SUBPROTOCOL), 0);
    expect_frame(c, &m, "hello");
    assert_true(mp_get_bin(m.p, m.n, "srv", spk, 32));
    assert_true(mp_get_bin(m.p, m.n, "n", nonce, 32));
    crdt_buf_free(&m);
}

static void test_enroll_rotate_revoke(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    /* The station's households: H1 alone, H2 in grid C01/G01. */
    su_dev seed;
    const char *all[] = {"H1", "H2"};
    add_device(&s, &seed, 1, all, 2, STORE_DEV_ACTIVE);
    crdt_buf env = {0}, f = {0}, m = {0};
    hh_delta(&seed, "H2", "seeded", &env);
    assert_int_equal(su_push(s.st, &env, wall_ms()).result, STORE_APPLIED);

    char tok[STORE_TOKEN_TEXT_LEN + 1];
    store_txn *t;
    const char *scope[] = {"H1", "C01/G01"};
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    assert_int_equal(store_token_create(t, "王志愿", scope, 2, wall_ms(), wall_ms() + 3600000, tok), 0);
    assert_int_equal(store_commit(t), 0);

    /* Enroll a new phone: it gets an id, key epoch 1 and the expanded scope. */
    su_dev phone;
    su_dev_init(&phone, 0);
    uint8_t spk[32], nonce[32];
    wsc c;
    hello(&c, s.port, spk, nonce);
    frame_enroll(&f, tok, phone.pk, phone.sk, spk, nonce);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "welcome");
    uint64_t id = 0, e = 0;
    assert_true(mp_get_u64(m.p, m.n, "d", &id));
    assert_true(mp_get_u64(m.p, m.n, "e", &e));
    assert_int_equal(id, 2);
    assert_int_equal(e, 1);
    assert_non_null(memmem(m.p, m.n, "\xa2H1", 3));
    assert_non_null(memmem(m.p, m.n, "\xa2H2", 3));
    phone.id = (uint32_t)id;
    crdt_buf envs[1] = {{0}};
    hh_delta(&phone, "H2", "enrolled phone", &envs[0]);
    push_and_ack(&c, 1, envs, 1, "applied");

    /* The token works once. */
    wsc c2;
    su_dev other;
    su_dev_init(&other, 0);
    hello(&c2, s.port, spk, nonce);
    frame_enroll(&f, tok, other.pk, other.sk, spk, nonce);
    assert_int_equal(wsc_send(&c2, f.p, f.n), 0);
    expect_error(&c2, STORE_ETOKEN_USED, 1008);
    wsc_close(&c2);

    /* Rotate: the old key hands over at seq 1, the new key signs seq 2. */
    su_dev next;
    su_dev_init(&next, 99);
    frame_rotate(&f, phone.id, 2, 1, phone.sk, next.pk, next.sk);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "rotated");
    uint8_t old_sk[64];
    memcpy(old_sk, phone.sk, 64);
    memcpy(phone.sk, next.sk, 64);
    memcpy(phone.pk, next.pk, 32);
    /* su_make signs with epoch 1; build an epoch-2 delta by hand. */
    su_ops o = {0};
    su_set_str(&o, "note", "new key");
    crdt_delta d;
    crdt_buf bytes = {0};
    memset(&d, 0, sizeof d);
    crdt_hlc now;
    crdt_hlc_now(&phone.clock, wall_ms(), &now);
    d.dev = phone.id;
    d.epoch = 2;
    d.seq = ++phone.seq;
    memcpy(d.prev, phone.prev, 32);
    d.hlc = now;
    d.kind = "household";
    d.kind_len = 9;
    d.id = "H1";
    d.id_len = 2;
    d.ops = o.op;
    d.n_ops = o.n;
    assert_int_equal(crdt_delta_encode(&d, &bytes), 0);
    uint8_t sig[64];
    wire_delta_sign(bytes.p, bytes.n, phone.sk, sig);
    crdt_buf_reset(&envs[0]);
    wire_envelope_encode(bytes.p, bytes.n, sig, &envs[0]);
    push_and_ack(&c, 2, envs, 1, "applied");

    /* The old key signing beyond the seq it sealed (a stolen old key?):
     * a genuine signature, so it is kept in quarantine, not merged. */
    {
        su_dev oldk = phone;
        memcpy(oldk.sk, old_sk, 64);
        crdt_buf e3 = {0};
        hh_delta(&oldk, "H1", "old key, seq 3", &e3); /* su_make signs with epoch 1 */
        push_and_ack(&c, 4, &e3, 1, "quarantined");
        crdt_buf_free(&e3);
    }

    /* Admin requires another rotation: pushes are refused until it happens. */
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    store_device dv;
    assert_int_equal(store_device_get(t, phone.id, &dv), 0);
    assert_int_equal(dv.epoch, 2);
    dv.flags |= STORE_DEVF_ROTATE_REQUIRED;
    assert_int_equal(store_device_put(t, &dv), 0);
    assert_int_equal(store_commit(t), 0);
    usleep(600 * 1000);
    frame_push(&f, 3, envs, 1);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_error(&c, SYNC_EROTATE, 0);

    /* Revoked from another process: the live session is closed within 1 s. */
    uint64_t t0 = wall_ms();
    pid_t pid = fork();
    if (pid == 0) {
        char err[256];
        store *st2 = NULL;
        store_opts so = {.no_sync = true};
        if (store_open(s.d.data, s.d.key, &so, &st2, err, sizeof err)) _exit(1);
        store_txn *t2;
        store_device d2;
        if (store_begin(st2, STORE_RW, &t2) || store_device_get(t2, phone.id, &d2)) _exit(1);
        d2.state = STORE_DEV_REVOKED_HARD;
        if (store_device_put(t2, &d2) || store_commit(t2)) _exit(1);
        store_close(st2);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    expect_error(&c, SYNC_EREVOKED, 1008);
    uint64_t took = wall_ms() - t0;
    if (took > 1000) fail_msg("revocation took %llu ms to close the session", (unsigned long long)took);
    wsc_close(&c);
    su_ops_free(&o);
    crdt_buf_free(&bytes);
    crdt_buf_free(&envs[0]);
    crdt_buf_free(&env);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    srv_stop(&s);
}

/* Scope is judged in the writer's transaction; held-back deltas are kept. */
static void test_scope_and_quarantine_rules(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a, b;
    const char *sa[] = {"H1"}, *sb[] = {"H2"};
    add_device(&s, &a, 1, sa, 1, STORE_DEV_ACTIVE);
    add_device(&s, &b, 2, sb, 1, STORE_DEV_ACTIVE);
    wsc ca, cb;
    crdt_buf f = {0}, m = {0}, e[2] = {{0}};
    assert_int_equal(device_connect(&ca, s.port, 1, 1, a.sk, NULL), 0);

    /* A new person and a second edit of it in the same push: both land. */
    su_ops o = {0};
    su_set_str(&o, "name", "新生儿");
    su_set_str(&o, "household", "H1");
    su_make(&a, "person", "P9", &o, wall_ms(), &e[0], NULL);
    su_ops_reset(&o);
    su_add(&o, "tags", "新生儿");
    su_make(&a, "person", "P9", &o, wall_ms(), &e[1], NULL);
    push_and_ack(&ca, 1, e, 2, "applied");

    /* Device B may not take A's person into its household. */
    assert_int_equal(device_connect(&cb, s.port, 2, 1, b.sk, NULL), 0);
    su_ops_reset(&o);
    su_set_str(&o, "household", "H2");
    su_make(&b, "person", "P9", &o, wall_ms(), &e[0], NULL);
    frame_push(&f, 1, e, 1);
    assert_int_equal(wsc_send(&cb, f.p, f.n), 0);
    expect_frame(&cb, &m, "ack");
    char r[32];
    int64_t code;
    assert_true(ack_entry(m.p, m.n, 0, r, sizeof r, &code, NULL, NULL));
    assert_string_equal(r, "quarantined"); /* kept, not merged; B's chain moves on */
    assert_int_equal(code, STORE_Q_SCOPE);
    wsc_close(&cb);

    /* Subscribing sends the backlog at once. */
    frame_subscribe(&f, 0);
    assert_int_equal(wsc_send(&ca, f.p, f.n), 0);
    expect_frame(&ca, &m, "changes");
    assert_int_equal(changes_count(m.p, m.n), 2);
    wsc_close(&ca);

    /* Soft revocation: the phone may still hand in what it recorded; what it
     * signed after the revocation is kept in quarantine, and it is sent
     * nothing. */
    store_txn *t;
    store_device dv;
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    assert_int_equal(store_device_get(t, 1, &dv), 0);
    dv.state = STORE_DEV_REVOKED_SOFT;
    dv.revoked_at_seq = 2;
    assert_int_equal(store_device_put(t, &dv), 0);
    assert_int_equal(store_commit(t), 0);
    crdt_buf w = {0};
    assert_int_equal(device_connect(&ca, s.port, 1, 1, a.sk, &w), 0);
    assert_non_null(memmem(w.p, w.n, "revoked", 7));
    su_ops_reset(&o);
    su_set_str(&o, "note", "recorded after the phone was lost");
    su_make(&a, "household", "H1", &o, wall_ms(), &e[0], NULL);
    push_and_ack(&ca, 2, e, 1, "quarantined");
    frame_pull(&f, 3, 0, 10);
    assert_int_equal(wsc_send(&ca, f.p, f.n), 0);
    expect_error(&ca, SYNC_EREVOKED, 0);
    wsc_close(&ca);
    uint64_t nq;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_count(t, &nq), 0);
    store_abort(t);
    assert_true(nq >= 1);

    su_ops_free(&o);
    crdt_buf_free(&e[0]);
    crdt_buf_free(&e[1]);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    crdt_buf_free(&w);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    srv_stop(&s);
}

/* A fresh device bootstraps from a server-signed snapshot, then pulls on. */
static void test_snapshot_bootstrap(void **state)
{
    (void)state;
    srv s;
    srv_start_on(&s, true);
    su_dev a, fresh;
    const char *scope[] = {"H1", "H2"};
    add_device(&s, &a, 1, scope, 2, STORE_DEV_ACTIVE);
    add_device(&s, &fresh, 2, scope, 2, STORE_DEV_ACTIVE);
    /* History: households, persons, several edits each. */
    crdt_buf env = {0}, f = {0}, m = {0};
    for (int i = 0; i < 3; i++) {
        hh_delta(&a, "H1", "visit", &env);
        assert_int_equal(su_push(s.st, &env, wall_ms()).result, STORE_APPLIED);
        hh_delta(&a, "H2", "visit", &env);
        assert_int_equal(su_push(s.st, &env, wall_ms()).result, STORE_APPLIED);
    }
    su_ops o = {0};
    su_set_str(&o, "name", "李明");
    su_set_str(&o, "household", "H1");
    su_make(&a, "person", "P1", &o, wall_ms(), &env, NULL);
    assert_int_equal(su_push(s.st, &env, wall_ms()).result, STORE_APPLIED);
    su_ops_reset(&o);
    su_add(&o, "tags", "低保");
    su_make(&a, "person", "P1", &o, wall_ms(), &env, NULL);
    assert_int_equal(su_push(s.st, &env, wall_ms()).result, STORE_APPLIED);

    wsc c;
    uint8_t spk[32];
    memcpy(spk, store_server_pk(s.st), 32);
    assert_int_equal(device_connect(&c, s.port, 2, 1, fresh.sk, NULL), 0);
    static const uint8_t req[] = {0x82, 0xa2, 'i', 'd', 0x07, 0xa1, 't', 0xa8, 's', 'n', 'a', 'p',
                                  's', 'h', 'o', 't'};
    assert_int_equal(wsc_send(&c, req, sizeof req), 0);
    size_t records = 0;
    uint64_t cursor = 0;
    for (uint32_t page = 0;; page++) {
        expect_frame(&c, &m, "snapshot");
        uint64_t n, p;
        uint8_t sig[64];
        assert_true(mp_get_u64(m.p, m.n, "n", &n));
        assert_true(mp_get_u64(m.p, m.n, "p", &p));
        assert_int_equal(p, page);
        assert_true(mp_get_bin(m.p, m.n, "g", sig, 64));
        bool more = memmem(m.p, m.n, "\xa4more\xc3", 6) != NULL;
        /* Recompute the signed digest from the records. */
        msgpack_unpacked up;
        size_t off = 0;
        msgpack_unpacked_init(&up);
        assert_int_equal(msgpack_unpack_next(&up, (const char *)m.p, m.n, &off),
                         MSGPACK_UNPACK_SUCCESS);
        const msgpack_object *r = NULL;
        for (uint32_t i = 0; i < up.data.via.map.size; i++)
            if (up.data.via.map.ptr[i].key.via.str.size == 1 &&
                up.data.via.map.ptr[i].key.via.str.ptr[0] == 'r')
                r = &up.data.via.map.ptr[i].val;
        assert_non_null(r);
        crypto_generichash_state h;
        crypto_generichash_init(&h, NULL, 0, 32);
        store_txn *t;
        assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
        for (uint32_t i = 0; i < r->via.array.size; i++) {
            const msgpack_object *b = &r->via.array.ptr[i];
            uint8_t len[4] = {(uint8_t)(b->via.bin.size >> 24), (uint8_t)(b->via.bin.size >> 16),
                              (uint8_t)(b->via.bin.size >> 8), (uint8_t)b->via.bin.size};
            crypto_generichash_update(&h, len, 4);
            crypto_generichash_update(&h, (const uint8_t *)b->via.bin.ptr, b->via.bin.size);
            /* Each record is exactly the server's merged record. */
            crdt_record *rec = NULL, *want = NULL;
            assert_int_equal(crdt_record_decode((const uint8_t *)b->via.bin.ptr, b->via.bin.size,
                                                &rec), 0);
            assert_int_equal(store_get_record(t, rec->kind, rec->id, &want), 0);
            crdt_buf x = {0};
            assert_int_equal(crdt_record_encode(want, &x), 0);
            assert_int_equal(x.n, b->via.bin.size);
            assert_memory_equal(x.p, b->via.bin.ptr, x.n);
            crdt_buf_free(&x);
            crdt_record_free(rec);
            crdt_record_free(want);
            records++;
        }
        store_abort(t);
        msgpack_unpacked_destroy(&up);
        uint8_t digest[32], msg[sizeof WIRE_DOMAIN_SNAPSHOT + 49], *q = msg;
        crypto_generichash_final(&h, digest, 32);
        memcpy(q, WIRE_DOMAIN_SNAPSHOT, sizeof WIRE_DOMAIN_SNAPSHOT);
        q += sizeof WIRE_DOMAIN_SNAPSHOT;
        uint32_t dev = 2;
        for (int i = 3; i >= 0; i--) *q++ = (uint8_t)(dev >> (8 * i));
        for (int i = 7; i >= 0; i--) *q++ = (uint8_t)(n >> (8 * i));
        for (int i = 3; i >= 0; i--) *q++ = (uint8_t)(page >> (8 * i));
        *q++ = more ? 1 : 0;
        memcpy(q, digest, 32);
        assert_int_equal(crypto_sign_verify_detached(sig, msg, sizeof msg, spk), 0);
        cursor = n;
        if (!more) break;
    }
    assert_int_equal(records, 3); /* H1, H2, P1 */
    assert_int_equal(cursor, 8);  /* everything so far */
    /* Pulling on from the cursor finds nothing older. */
    frame_pull(&f, 9, cursor, 100);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "changes");
    assert_int_equal(changes_count(m.p, m.n), 0);
    wsc_close(&c);
    su_ops_free(&o);
    crdt_buf_free(&env);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    srv_stop(&s);
}

/* The map grows (doubling from 256 KiB) while workers verify, sessions
 * read and the writer commits: resizing waits for every transaction of the
 * process (a remap under a live read transaction would crash). */
static void *puller_thread(void *arg)
{
    dev_run *r = arg;
    wsc c;
    crdt_buf f = {0}, m = {0};
    if (device_connect(&c, r->port, r->dev.id, 1, r->dev.sk, NULL) != 0) return NULL;
    for (int i = 0; i < 200; i++) {
        frame_pull(&f, (uint64_t)i + 1, 0, 500);
        if (wsc_send(&c, f.p, f.n)) break;
        int cc;
        if (wsc_recv(&c, 10000, &m, &cc) != WSC_BINARY) break;
        r->ok++;
    }
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    wsc_close(&c);
    return NULL;
}

static void test_map_growth_under_load(void **state)
{
    (void)state;
    srv s;
    store_opts small = {.map_initial = 256 * 1024, .map_max = 1u << 30};
    next_opts = &small;
    srv_start_on(&s, true);
    next_opts = NULL;
    /* The map as opened: the load below must make it grow (40 x 20
     * deltas, ~0.6 MB at ~0.7 KB each). */
    size_t used0, size0;
    store_map_usage(s.st, &used0, &size0);
    enum { N = 40 };
    dev_run *runs = calloc(2 * N, sizeof *runs);
    pthread_t th[2 * N];
    for (int i = 0; i < N; i++) {
        snprintf(runs[i].hh, sizeof runs[i].hh, "H%d", i);
        const char *scope[] = {runs[i].hh};
        add_device(&s, &runs[i].dev, (uint32_t)i + 1, scope, 1, STORE_DEV_ACTIVE);
        runs[i].port = s.port;
        runs[i].n = 20;
        /* a reader per household */
        snprintf(runs[N + i].hh, sizeof runs[N + i].hh, "H%d", i);
        add_device(&s, &runs[N + i].dev, (uint32_t)(N + i) + 1, scope, 1, STORE_DEV_ACTIVE);
        runs[N + i].port = s.port;
    }
    for (int i = 0; i < 2 * N; i++)
        pthread_create(&th[i], NULL, i < N ? device_thread : puller_thread, &runs[i]);
    for (int i = 0; i < 2 * N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        if (runs[i].ok != 20) fail_msg("device %d: %d of 20 applied", i + 1, runs[i].ok);
    size_t used, size;
    store_map_usage(s.st, &used, &size);
    assert_true(size > size0);
    uint64_t problems;
    assert_int_equal(store_verify(s.st, NULL, NULL, &problems), 0);
    free(runs);
    srv_stop(&s);
}

/*
 * A changes page's byte budget counts the key records its envelopes bring
 * (one per new signer), so a page of many signers stays within the budget a
 * device can take: with room for two envelopes but not for two envelopes and
 * two key records, three signers come one per page, each with its record.
 */
static void test_key_records_in_page_budget(void **state)
{
    (void)state;
    srv s;
    const char *scope[] = {"H1"};
    su_dev w[3], r;
    wsc c;
    crdt_buf env = {0}, f = {0}, m = {0};
    /* The envelope's size first (a throwaway device of the same id makes
     * the same bytes but for the signature), then a budget of two of them. */
    su_dev_init(&w[0], 11);
    hh_delta(&w[0], "H1", "走访", &env);
    size_t envlen = env.n, budget = 2 * envlen + 40;
    next_page_bytes = budget;
    srv_start_on(&s, true);
    next_page_bytes = 0;
    for (uint32_t i = 0; i < 3; i++) {
        add_device(&s, &w[i], 11 + i, scope, 1, STORE_DEV_ACTIVE);
        assert_int_equal(device_connect(&c, s.port, 11 + i, 1, w[i].sk, NULL), 0);
        hh_delta(&w[i], "H1", "走访", &env);
        assert_int_equal(env.n, envlen);
        push_and_ack(&c, 1, &env, 1, "applied");
        wsc_close(&c);
    }
    assert_true(2 * envlen <= budget && 2 * (envlen + 100) > budget); /* this test's case */
    add_device(&s, &r, 20, scope, 1, STORE_DEV_ACTIVE);
    assert_int_equal(device_connect(&c, s.port, 20, 1, r.sk, NULL), 0);
    uint64_t cursor = 0;
    size_t pages = 0, got = 0;
    for (bool more = true; more; pages++) {
        frame_pull(&f, 100 + pages, cursor, 500);
        assert_int_equal(wsc_send(&c, f.p, f.n), 0);
        expect_frame(&c, &m, "changes");
        size_t n = changes_count(m.p, m.n);
        got += n;
        if (n) {
            assert_int_equal(n, 1);
            assert_int_equal(check_key_records(m.p, m.n, store_server_pk(s.st), 11 + (uint32_t)(got - 1),
                                               w[got - 1].pk), 1);
        }
        assert_true(mp_get_u64(m.p, m.n, "n", &cursor));
        more = memmem(m.p, m.n, "\xa4more\xc3", 6) != NULL;
    }
    assert_int_equal(got, 3);
    /* Pulled again, the same records come from the session's cache: still valid. */
    frame_pull(&f, 200, 0, 500);
    assert_int_equal(wsc_send(&c, f.p, f.n), 0);
    expect_frame(&c, &m, "changes");
    assert_int_equal(changes_count(m.p, m.n), 1);
    assert_int_equal(check_key_records(m.p, m.n, store_server_pk(s.st), 11, w[0].pk), 1);
    wsc_close(&c);
    crdt_buf_free(&env);
    crdt_buf_free(&f);
    crdt_buf_free(&m);
    srv_stop(&s);
}

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_records_in_page_budget),
        cmocka_unit_test(test_happy_path),
        cmocka_unit_test(test_auth_refusals),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_many_devices),
        cmocka_unit_test(test_commit_delay),
        cmocka_unit_test(test_graceful_shutdown_acks_inflight),
        cmocka_unit_test(test_enroll_rotate_revoke),
        cmocka_unit_test(test_scope_and_quarantine_rules),
        cmocka_unit_test(test_snapshot_bootstrap),
        cmocka_unit_test(test_map_growth_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
