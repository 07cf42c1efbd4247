/*
 * fuzz_session.c — libFuzzer target: frame sequences fed to
 * sync_session_input with a real store (LMDB in a temporary directory,
 * device 1 registered with scope ["H1"]).
 *
 * Input: byte 0 = flags (bit 0: start with a genuine auth frame for device
 * 1, so the fuzzer reaches the authenticated state; with bit 1 too, for
 * device 2 instead, a relay: scope "@relay", so `relay` frames are taken
 * and their jobs verified and committed), then frames as
 * [u16 big-endian length][bytes].  Push jobs are verified and committed
 * synchronously (sync_job_verify, sync_jobs_commit, sync_session_job_done),
 * live changes are produced when asked for.  Nothing may crash or leak;
 * every 512 inputs store_verify must find no problem (nothing invalid
 * stored).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>
#include <msgpack.h>

#include "storeutil.h"
#include "sync.h"

static store *st;
static su_dir dir;
static su_dev dev1, dev2;
static sync_config cfg;
static uint64_t runs;

static void cleanup(void) { su_dir_remove(&dir); }

static void setup(void)
{
    if (st) return;
    if (wire_init()) abort();
    su_dir_make(&dir, "fuzz-session");
    st = su_store_new(&dir, NULL);
    atexit(cleanup);
    su_dev_init(&dev1, 1);
    store_txn *t;
    if (store_begin(st, STORE_RW, &t)) abort();
    store_device d = {.id = 1, .state = STORE_DEV_ACTIVE, .epoch = 1};
    strcpy(d.volunteer, "fuzz");
    store_key k = {.dev = 1, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, dev1.pk, 32);
    const char *scope[] = {"H1"};
    if (store_device_put(t, &d) || store_key_put(t, &k) || store_device_scope_set(t, 1, scope, 1))
        abort();
    su_dev_init(&dev2, 2);
    d.id = k.dev = 2;
    memcpy(k.pk, dev2.pk, 32);
    const char *rscope[] = {STORE_RELAY_SCOPE};
    if (store_device_put(t, &d) || store_key_put(t, &k) || store_device_scope_set(t, 2, rscope, 1) ||
        store_commit(t))
        abort();
    cfg = sync_config_default;
}

static int bw(void *d, const char *p, size_t n) { return crdt_buf_append(d, p, n) ? -1 : 0; }

static void auth_frame(const su_dev *dv, const uint8_t nonce[32], crdt_buf *out)
{
    uint8_t cn[32], sig[64], msg[sizeof WIRE_DOMAIN_AUTH + 104], *p = msg;
    memset(cn, 0x11, 32);
    memcpy(p, WIRE_DOMAIN_AUTH, sizeof WIRE_DOMAIN_AUTH);
    p += sizeof WIRE_DOMAIN_AUTH;
    memcpy(p, store_server_pk(st), 32);
    p += 32;
    memcpy(p, nonce, 32);
    p += 32;
    memcpy(p, cn, 32);
    p += 32;
    const uint8_t de[8] = {0, 0, 0, (uint8_t)dv->id, 0, 0, 0, 1};
    memcpy(p, de, 8);
    crypto_sign_detached(sig, NULL, msg, sizeof msg, dv->sk);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, bw);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "d", 1);
    msgpack_pack_uint32(&pk, dv->id);
    msgpack_pack_str_with_body(&pk, "e", 1);
    msgpack_pack_uint32(&pk, 1);
    msgpack_pack_str_with_body(&pk, "n", 1);
    msgpack_pack_bin_with_body(&pk, cn, 32);
    msgpack_pack_str_with_body(&pk, "s", 1);
    msgpack_pack_bin_with_body(&pk, sig, 64);
    msgpack_pack_str_with_body(&pk, "t", 1);
    msgpack_pack_str_with_body(&pk, "auth", 4);
}

/* Handle one output: run its job, drain live changes; true if closing. */
static bool handle(sync_session *s, sync_out *out)
{
    bool closing = out->close_code != 0;
    if (out->job) {
        sync_job *j = out->job;
        out->job = NULL;
        char (*touched)[CRDT_RECID_MAX + 1] = NULL;
        size_t nt = 0;
        sync_job_verify(st, &cfg, j);
        j->next = NULL;
        int rc = sync_jobs_commit(st, &cfg, j, 1790000000000ull, &touched, &nt);
        (void)rc;
        free(touched);
        sync_session_job_done(s, j, out);
    }
    if (out->wake_live) {
        out->wake_live = false;
        bool more = true;
        for (int k = 0; more && k < 8; k++)
            if (sync_session_live(s, out, &more)) break;
    }
    sync_frames_free(out->frames);
    sync_out_init(out);
    return closing;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size < 1) return 0;
    uint8_t nonce[SYNC_NONCE_BYTES];
    memset(nonce, 0x5a, sizeof nonce);
    sync_session *s = sync_session_new(st, &cfg, nonce);
    if (!s) abort();
    sync_out out;
    sync_out_init(&out);
    sync_session_hello(s, 1790000000000ull, &out);
    bool closed = handle(s, &out);
    if (data[0] & 1) {
        crdt_buf a = {0};
        auth_frame(data[0] & 2 ? &dev2 : &dev1, nonce, &a);
        if (sync_session_input(s, a.p, a.n, 1790000000000ull, &out) == 0) closed = handle(s, &out);
        if (!sync_session_authed(s)) abort(); /* a genuine auth must work */
        crdt_buf_free(&a);
    }
    size_t i = 1;
    while (!closed && i + 2 <= size) {
        size_t n = (size_t)data[i] << 8 | data[i + 1];
        i += 2;
        if (n > size - i) n = size - i;
        /* a private copy, so ASan sees reads past the frame */
        uint8_t *m = malloc(n ? n : 1);
        memcpy(m, data + i, n);
        int rc = sync_session_input(s, m, n, 1790000000000ull, &out);
        free(m);
        i += n;
        if (rc) {
            sync_frames_free(out.frames);
            if (out.job) sync_job_free(out.job);
            sync_out_init(&out);
            break;
        }
        closed = handle(s, &out);
        if (data[0] & 2) {
            sync_session_recheck(s, &out);
            closed |= handle(s, &out);
        }
    }
    sync_session_free(s);
    if (++runs % 512 == 0) {
        uint64_t problems = 0;
        if (store_verify(st, NULL, NULL, &problems) || problems) {
            fprintf(stderr, "fuzz_session: store_verify found %llu problems\n",
                    (unsigned long long)problems);
            abort();
        }
    }
    return 0;
}
