/*
 * envelope.c — signed delta envelopes, chain hashes, wire_strerror/wire_init.
 *
 * Exact bytes (docs/PROTOCOL.md "Signatures"):
 *   signature  = Ed25519(sk, "doorstep/v1/delta" 0x00 || delta bytes)
 *   chain hash = BLAKE2b-256("doorstep/v1/delta-hash" 0x00 || delta bytes)
 *   envelope   = 82 a1 62 <bin delta> a1 73 c4 40 <64-byte signature>
 *                i.e. the canonical msgpack map {"b": delta, "s": sig}
 * Invariants: the domain strings differ, so a signature over a delta can
 * never be replayed as a signature over anything else Doorstep signs (auth
 * strings, key hand-overs, snapshots use their own domains); envelopes have
 * exactly one valid byte representation.
 */
#include "wire.h"

#include <msgpack.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

const char *wire_strerror(int code)
{
    switch (code) {
    case WIRE_EINIT: return "libsodium failed to initialise";
    case WIRE_EBADSIG: return "signature does not verify";
    case WIRE_EKEYSIZE: return "key, signature or hash has the wrong size";
    case WIRE_EIO: return "file could not be read";
    case WIRE_EJSON: return "file is not valid JSON";
    default: return crdt_strerror(code);
    }
}

int wire_init(void)
{
    return sodium_init() < 0 ? WIRE_EINIT : WIRE_OK;
}

int wire_delta_hash(const uint8_t *delta, size_t n, uint8_t out[CRDT_HASH_BYTES])
{
    crypto_generichash_state st;
    if (!delta || !out) return CRDT_EINVAL;
    crypto_generichash_init(&st, NULL, 0, CRDT_HASH_BYTES);
    crypto_generichash_update(&st, (const unsigned char *)WIRE_DOMAIN_HASH,
                              sizeof(WIRE_DOMAIN_HASH)); /* includes NUL */
    crypto_generichash_update(&st, delta, n);
    crypto_generichash_final(&st, out, CRDT_HASH_BYTES);
    return WIRE_OK;
}

/* Build domain || NUL || delta in `stack` if it fits, else on the heap. */
static unsigned char *signed_message(const uint8_t *delta, size_t n,
                                     unsigned char *stack, size_t stack_len,
                                     size_t *mlen)
{
    size_t len = sizeof(WIRE_DOMAIN_DELTA) + n;
    unsigned char *m = len <= stack_len ? stack : malloc(len);
    if (!m) return NULL;
    memcpy(m, WIRE_DOMAIN_DELTA, sizeof(WIRE_DOMAIN_DELTA));
    memcpy(m + sizeof(WIRE_DOMAIN_DELTA), delta, n);
    *mlen = len;
    return m;
}

int wire_delta_sign(const uint8_t *delta, size_t n,
                    const uint8_t sk[WIRE_SK_BYTES], uint8_t sig[WIRE_SIG_BYTES])
{
    unsigned char stack[2048];
    size_t mlen = 0;
    int rc = WIRE_OK;
    if (!delta || !sk || !sig) return CRDT_EINVAL;
    memset(sig, 0, WIRE_SIG_BYTES);
    unsigned char *m = signed_message(delta, n, stack, sizeof stack, &mlen);
    if (!m) return CRDT_ENOMEM;
    if (crypto_sign_detached(sig, NULL, m, mlen, sk) != 0) {
        memset(sig, 0, WIRE_SIG_BYTES);
        rc = CRDT_EINVAL;
    }
    if (m != stack) free(m);
    return rc;
}

int wire_delta_verify(const uint8_t *delta, size_t n,
                      const uint8_t sig[WIRE_SIG_BYTES],
                      const uint8_t pk[WIRE_PK_BYTES])
{
    unsigned char stack[2048];
    size_t mlen = 0;
    if (!delta || !sig || !pk) return CRDT_EINVAL;
    unsigned char *m = signed_message(delta, n, stack, sizeof stack, &mlen);
    if (!m) return CRDT_ENOMEM;
    int ok = crypto_sign_verify_detached(sig, m, mlen, pk) == 0;
    if (m != stack) free(m);
    return ok ? WIRE_OK : WIRE_EBADSIG;
}

static int buf_write(void *data, const char *p, size_t n)
{
    return crdt_buf_append(data, p, n) == CRDT_OK ? 0 : -1;
}

int wire_envelope_encode(const uint8_t *delta, size_t n,
                         const uint8_t sig[WIRE_SIG_BYTES], crdt_buf *out)
{
    msgpack_packer pk;
    size_t start = out->n;
    if (!delta || !sig || n > UINT32_MAX) return CRDT_EINVAL;
    msgpack_packer_init(&pk, out, buf_write);
    if (msgpack_pack_map(&pk, 2) || msgpack_pack_str_with_body(&pk, "b", 1) ||
        msgpack_pack_bin_with_body(&pk, delta, n) ||
        msgpack_pack_str_with_body(&pk, "s", 1) ||
        msgpack_pack_bin_with_body(&pk, sig, WIRE_SIG_BYTES)) {
        out->n = start;
        return CRDT_ENOMEM;
    }
    return WIRE_OK;
}

/* Read a bin header at p[*off] (shortest form required); *len = body length. */
static int read_bin(const uint8_t *p, size_t n, size_t *off, size_t *len)
{
    size_t o = *off, l;
    if (o >= n) return CRDT_ETRUNC;
    switch (p[o]) {
    case 0xc4: l = p[o + 1]; o += 2; break;
    case 0xc5: l = (size_t)p[o + 1] << 8 | p[o + 2]; o += 3;
        if (l < 256) return CRDT_ENONCANON;
        break;
    case 0xc6: l = (size_t)p[o + 1] << 24 | (size_t)p[o + 2] << 16 |
                   (size_t)p[o + 3] << 8 | p[o + 4];
        o += 5;
        if (l < 65536) return CRDT_ENONCANON;
        break;
    default: return CRDT_ETYPE;
    }
    *off = o;
    *len = l;
    return CRDT_OK;
}

/* Expect a one-character key `k` at p[*off]. */
static int read_key(const uint8_t *p, size_t n, size_t *off, char k)
{
    size_t o = *off;
    if (o + 2 > n) return CRDT_ETRUNC;
    if (p[o] != 0xa1) return (p[o] & 0xe0) == 0xa0 || p[o] == 0xd9 ? CRDT_EUNKNOWNKEY
                                                                  : CRDT_ETYPE;
    if (p[o + 1] != (uint8_t)k) return p[o + 1] < (uint8_t)k ? CRDT_EUNKNOWNKEY
                                                             : CRDT_EMISSING;
    *off = o + 2;
    return CRDT_OK;
}

int wire_envelope_decode(const uint8_t *p, size_t n, const crdt_limits *lim,
                         const uint8_t **delta, size_t *delta_len,
                         const uint8_t **sig)
{
    size_t off = 0, dl = 0, sl = 0;
    int rc;
    if (!p || !lim || !delta || !delta_len || !sig) return CRDT_EINVAL;
    *delta = NULL;
    *delta_len = 0;
    *sig = NULL;
    /* The walk guarantees every header and body below lies within p[0..n). */
    rc = crdt_mp_check(p, n, lim, NULL);
    if (rc) return rc;
    if ((p[0] & 0xf0) != 0x80 && p[0] != 0xde && p[0] != 0xdf) return CRDT_ETYPE;
    if (p[0] != 0x82) return (p[0] & 0xf0) == 0x80 && p[0] < 0x82 ? CRDT_EMISSING
                                                                  : CRDT_EUNKNOWNKEY;
    off = 1;
    if ((rc = read_key(p, n, &off, 'b'))) return rc;
    if ((rc = read_bin(p, n, &off, &dl))) return rc;
    const uint8_t *d = p + off;
    off += dl;
    if ((rc = read_key(p, n, &off, 's'))) return rc;
    if ((rc = read_bin(p, n, &off, &sl))) return rc;
    if (sl != WIRE_SIG_BYTES) return WIRE_EKEYSIZE;
    *delta = d;
    *delta_len = dl;
    *sig = p + off;
    return WIRE_OK;
}

const msgpack_object *wire_mp_get(const msgpack_object *map, const char *key)
{
    if (!map || !key || map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            !memcmp(kv->key.via.str.ptr, key, kl))
            return &kv->val;
    }
    return NULL;
}
