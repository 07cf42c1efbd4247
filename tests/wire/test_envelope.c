/*
 * test_envelope.c — signing, verifying and framing delta envelopes; the
 * chain hash; a golden envelope from a fixed seed (tests/vectors/deltas.txt).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "wire.h"
#include "testutil.h"

static const uint8_t delta[] = {0x81, 0xa1, 0x64, 0x01}; /* any bytes sign */

static void keypair(uint8_t pk[32], uint8_t sk[64], uint8_t fill)
{
    uint8_t seed[32];
    memset(seed, fill, sizeof seed);
    crypto_sign_seed_keypair(pk, sk, seed);
}

static void test_sign_verify(void **state)
{
    (void)state;
    uint8_t pk[32], sk[64], pk2[32], sk2[64], sig[64];
    keypair(pk, sk, 1);
    keypair(pk2, sk2, 2);
    assert_int_equal(wire_delta_sign(delta, sizeof delta, sk, sig), 0);
    assert_int_equal(wire_delta_verify(delta, sizeof delta, sig, pk), 0);
    /* Wrong key, flipped signature bit, flipped message bit: all refused. */
    assert_int_equal(wire_delta_verify(delta, sizeof delta, sig, pk2), WIRE_EBADSIG);
    sig[10] ^= 1;
    assert_int_equal(wire_delta_verify(delta, sizeof delta, sig, pk), WIRE_EBADSIG);
    sig[10] ^= 1;
    uint8_t m[sizeof delta];
    memcpy(m, delta, sizeof m);
    m[3] ^= 1;
    assert_int_equal(wire_delta_verify(m, sizeof m, sig, pk), WIRE_EBADSIG);
    /* Domain separation: a plain Ed25519 signature of the bytes is refused. */
    uint8_t plain[64];
    crypto_sign_detached(plain, NULL, delta, sizeof delta, sk);
    assert_int_equal(wire_delta_verify(delta, sizeof delta, plain, pk), WIRE_EBADSIG);
    /* Large deltas take the heap path. */
    size_t big = 100000;
    uint8_t *b = malloc(big);
    memset(b, 7, big);
    assert_int_equal(wire_delta_sign(b, big, sk, sig), 0);
    assert_int_equal(wire_delta_verify(b, big, sig, pk), 0);
    free(b);
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(sk2, sizeof sk2);
}

static void test_hash(void **state)
{
    (void)state;
    uint8_t h1[32], h2[32], plain[32];
    assert_int_equal(wire_delta_hash(delta, sizeof delta, h1), 0);
    assert_int_equal(wire_delta_hash(delta, sizeof delta, h2), 0);
    assert_memory_equal(h1, h2, 32);
    crypto_generichash(plain, 32, delta, sizeof delta, NULL, 0);
    assert_memory_not_equal(h1, plain, 32); /* domain-separated */
    /* The documented construction, computed independently. */
    uint8_t msg[64];
    memcpy(msg, WIRE_DOMAIN_HASH, sizeof WIRE_DOMAIN_HASH);
    memcpy(msg + sizeof WIRE_DOMAIN_HASH, delta, sizeof delta);
    crypto_generichash(plain, 32, msg, sizeof WIRE_DOMAIN_HASH + sizeof delta, NULL, 0);
    assert_memory_equal(h1, plain, 32);
}

static void test_envelope_roundtrip_and_hostile(void **state)
{
    (void)state;
    uint8_t pk[32], sk[64], sig[64];
    keypair(pk, sk, 3);
    assert_int_equal(wire_delta_sign(delta, sizeof delta, sk, sig), 0);
    crdt_buf env = {0};
    assert_int_equal(wire_envelope_encode(delta, sizeof delta, sig, &env), 0);
    const uint8_t *d, *s;
    size_t dl;
    assert_int_equal(wire_envelope_decode(env.p, env.n, &crdt_limits_default, &d, &dl, &s), 0);
    assert_int_equal(dl, sizeof delta);
    assert_memory_equal(d, delta, dl);
    assert_memory_equal(s, sig, 64);
    assert_int_equal(wire_delta_verify(d, dl, s, pk), 0);

    static const struct { const char *hex; int code; const char *what; } cases[] = {
        {"81a162c40101", CRDT_EMISSING, "no signature"},
        {"82a162c40101a173c40100", WIRE_EKEYSIZE, "1-byte signature"},
        {"82a162a10aa173c40100", CRDT_ETYPE, "delta as a string"},
        {"82a173c40100a162c40101", CRDT_EMISSING, "keys in the wrong order"},
        {"83a162c40101a173c40100a17ac0", CRDT_EUNKNOWNKEY, "extra key"},
        {"82a162c5000101a173c40100", CRDT_ENONCANON, "bin16 for a 1-byte delta"},
        {"92c40101c40100", CRDT_ETYPE, "array instead of map"},
        {"82a162c40101a162c40101", CRDT_EDUPKEY, "duplicate key"},
        {"82a162c4ff01", CRDT_ELENGTH, "bin longer than the input"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[64];
        long n = tu_unhex(cases[i].hex, buf, sizeof buf);
        assert_true(n > 0);
        int rc = wire_envelope_decode(buf, (size_t)n, &crdt_limits_default, &d, &dl, &s);
        if (rc != cases[i].code)
            fail_msg("case '%s': got %d (%s), want %d", cases[i].what, rc, wire_strerror(rc),
                     cases[i].code);
        assert_null(d);
        assert_null(s);
    }
    crdt_buf_free(&env);
    sodium_memzero(sk, sizeof sk);
}

/* Golden envelope: the "delta-set-name" vector signed with the key from the
 * seed 32 x 0x2a.  Ed25519 is deterministic, so the bytes are fixed. */
static void test_golden_envelope(void **state)
{
    (void)state;
    size_t len;
    char *text = tu_read_file(DOORSTEP_SOURCE_DIR "/tests/vectors/deltas.txt", &len);
    assert_non_null(text);
    uint8_t dbytes[512], want[600], got_hash[32], want_hash[64];
    long dn = -1, en = -1, hn = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "delta-set-name:", 15)) dn = tu_unhex(line + 15, dbytes, sizeof dbytes);
        if (!strncmp(line, "envelope-set-name:", 18)) en = tu_unhex(line + 18, want, sizeof want);
        if (!strncmp(line, "hash-set-name:", 14)) hn = tu_unhex(line + 14, want_hash, sizeof want_hash);
    }
    free(text);
    assert_true(dn > 0);
    uint8_t pk[32], sk[64], sig[64];
    keypair(pk, sk, 0x2a);
    assert_int_equal(wire_delta_sign(dbytes, (size_t)dn, sk, sig), 0);
    crdt_buf env = {0};
    assert_int_equal(wire_envelope_encode(dbytes, (size_t)dn, sig, &env), 0);
    assert_int_equal(wire_delta_hash(dbytes, (size_t)dn, got_hash), 0);
    if (en < 0 || hn != 32) {
        char hex[1400], hh[65];
        tu_hex(env.p, env.n, hex);
        tu_hex(got_hash, 32, hh);
        fail_msg("vectors missing: envelope-set-name: %s  hash-set-name: %s", hex, hh);
    }
    assert_int_equal((size_t)en, env.n);
    assert_memory_equal(want, env.p, env.n);
    assert_memory_equal(want_hash, got_hash, 32);
    crdt_buf_free(&env);
    sodium_memzero(sk, sizeof sk);
}

static int setup(void **state)
{
    (void)state;
    return wire_init();
}

/* The handshake layouts byte for byte, written out here independently of
 * handshake.c (the spec is docs/PROTOCOL.md "Signatures"). */
static void test_handshake_layouts(void **state)
{
    (void)state;
    uint8_t spk[32], sn[32], cn[32], pk[32], dg[32];
    for (int i = 0; i < 32; i++) {
        spk[i] = (uint8_t)i;
        sn[i] = (uint8_t)(0x40 + i);
        cn[i] = (uint8_t)(0x80 + i);
        pk[i] = (uint8_t)(0xc0 + i);
        dg[i] = (uint8_t)(0xe0 ^ i);
    }
    uint8_t want[256], got[256];
    size_t n = 0;
    /* auth */
    memcpy(want, "doorstep/v1/auth\0", 17), n = 17;
    memcpy(want + n, spk, 32), n += 32;
    memcpy(want + n, sn, 32), n += 32;
    memcpy(want + n, cn, 32), n += 32;
    memcpy(want + n, "\x00\x01\x02\x03\x00\x00\x00\x07", 8), n += 8;
    assert_int_equal(WIRE_AUTH_MSG_BYTES, n);
    wire_auth_msg(spk, sn, cn, 0x00010203u, 7, got);
    assert_memory_equal(got, want, n);
    /* enroll: token bounds, then the bytes */
    assert_int_equal(wire_enroll_msg(spk, sn, "t", 0, pk, got), 0);
    char tok65[66];
    memset(tok65, 'a', 65);
    tok65[65] = 0;
    assert_int_equal(wire_enroll_msg(spk, sn, tok65, 65, pk, got), 0);
    assert_int_equal(wire_enroll_msg(spk, sn, tok65, 64, pk, got), WIRE_ENROLL_MSG_MAX);
    memcpy(want, "doorstep/v1/enroll\0", 19), n = 19;
    memcpy(want + n, spk, 32), n += 32;
    memcpy(want + n, sn, 32), n += 32;
    memcpy(want + n, "tok-1", 5), n += 5;
    memcpy(want + n, pk, 32), n += 32;
    assert_int_equal(wire_enroll_msg(spk, sn, "tok-1", 5, pk, got), n);
    assert_memory_equal(got, want, n);
    /* rotate */
    memcpy(want, "doorstep/v1/rotate\0", 19), n = 19;
    memcpy(want + n, "\x00\x00\x01\x2c\x00\x00\x00\x03", 8), n += 8;
    memcpy(want + n, pk, 32), n += 32;
    memcpy(want + n, "\x00\x00\x00\x01\x00\x00\x00\x02", 8), n += 8;
    assert_int_equal(WIRE_ROTATE_MSG_BYTES, n);
    wire_rotate_msg(300, 3, pk, 0x100000002ull, got);
    assert_memory_equal(got, want, n);
    /* snapshot */
    memcpy(want, "doorstep/v1/snapshot\0", 21), n = 21;
    memcpy(want + n, "\x00\x00\x00\x05", 4), n += 4;
    memcpy(want + n, "\x00\x00\x00\x00\x00\x00\x30\x39", 8), n += 8;
    memcpy(want + n, "\x00\x00\x00\x02\x01", 5), n += 5;
    memcpy(want + n, dg, 32), n += 32;
    assert_int_equal(WIRE_SNAPSHOT_MSG_BYTES, n);
    wire_snapshot_msg(5, 12345, 2, true, dg, got);
    assert_memory_equal(got, want, n);
    /* key record */
    memcpy(want, "doorstep/v1/key\0", 16), n = 16;
    memcpy(want + n, "\x00\x00\x01\x2c\x00\x00\x00\x03", 8), n += 8;
    memcpy(want + n, pk, 32), n += 32;
    assert_int_equal(WIRE_KEY_MSG_BYTES, n);
    wire_key_msg(300, 3, pk, got);
    assert_memory_equal(got, want, n);
    /* schema: domain, then the unkeyed BLAKE2b-256 of the JSON text */
    static const char json[] = "{\"name\": \"s\"}";
    memcpy(want, "doorstep/v1/schema\0", 19), n = 19;
    crypto_generichash(want + n, 32, (const uint8_t *)json, sizeof json - 1, NULL, 0), n += 32;
    assert_int_equal(WIRE_SCHEMA_MSG_BYTES, n);
    wire_schema_msg((const uint8_t *)json, sizeof json - 1, got);
    assert_memory_equal(got, want, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verify),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_envelope_roundtrip_and_hostile),
        cmocka_unit_test(test_golden_envelope),
        cmocka_unit_test(test_handshake_layouts),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
