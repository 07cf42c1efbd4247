/*
 * handshake.c — the byte layouts the phone and the server sign for auth,
 * enrollment, key rotation and snapshot pages (see wire.h and
 * docs/PROTOCOL.md "Signatures").  One implementation, linked by doorstepd
 * (verifying auth/enroll/rotate, signing snapshots), the device library
 * (the reverse) and doorstep-bench, so the two ends cannot disagree.
 *
 * Invariant: every message starts with its domain string including the NUL
 * byte, so no message of one kind is a valid message of another.
 */
#include "wire.h"

#include <sodium.h>
#include <string.h>

static uint8_t *put(uint8_t *p, const void *b, size_t n)
{
    memcpy(p, b, n);
    return p + n;
}

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--) *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

void wire_auth_msg(const uint8_t spk[WIRE_PK_BYTES], const uint8_t snonce[WIRE_NONCE_BYTES],
                   const uint8_t cnonce[WIRE_NONCE_BYTES], uint32_t dev, uint32_t epoch,
                   uint8_t out[WIRE_AUTH_MSG_BYTES])
{
    uint8_t *p = put(out, WIRE_DOMAIN_AUTH, sizeof WIRE_DOMAIN_AUTH);
    p = put(p, spk, WIRE_PK_BYTES);
    p = put(p, snonce, WIRE_NONCE_BYTES);
    p = put(p, cnonce, WIRE_NONCE_BYTES);
    p = put32(p, dev);
    put32(p, epoch);
}

size_t wire_enroll_msg(const uint8_t spk[WIRE_PK_BYTES], const uint8_t snonce[WIRE_NONCE_BYTES],
                       const char *token, size_t token_len, const uint8_t pk[WIRE_PK_BYTES],
                       uint8_t out[WIRE_ENROLL_MSG_MAX])
{
    if (!token || token_len == 0 || token_len > WIRE_TOKEN_MAX) return 0;
    uint8_t *p = put(out, WIRE_DOMAIN_ENROLL, sizeof WIRE_DOMAIN_ENROLL);
    p = put(p, spk, WIRE_PK_BYTES);
    p = put(p, snonce, WIRE_NONCE_BYTES);
    p = put(p, token, token_len);
    p = put(p, pk, WIRE_PK_BYTES);
    return (size_t)(p - out);
}

void wire_rotate_msg(uint32_t dev, uint32_t epoch, const uint8_t pk[WIRE_PK_BYTES], uint64_t seal,
                     uint8_t out[WIRE_ROTATE_MSG_BYTES])
{
    uint8_t *p = put(out, WIRE_DOMAIN_ROTATE, sizeof WIRE_DOMAIN_ROTATE);
    p = put32(p, dev);
    p = put32(p, epoch);
    p = put(p, pk, WIRE_PK_BYTES);
    p = put32(p, (uint32_t)(seal >> 32));
    put32(p, (uint32_t)seal);
}

void wire_snapshot_msg(uint32_t dev, uint64_t cursor, uint32_t page, bool more,
                       const uint8_t digest[32], uint8_t out[WIRE_SNAPSHOT_MSG_BYTES])
{
    uint8_t *p = put(out, WIRE_DOMAIN_SNAPSHOT, sizeof WIRE_DOMAIN_SNAPSHOT);
    p = put32(p, dev);
    p = put32(p, (uint32_t)(cursor >> 32));
    p = put32(p, (uint32_t)cursor);
    p = put32(p, page);
    *p++ = more ? 1 : 0;
    put(p, digest, 32);
}

void wire_key_msg(uint32_t dev, uint32_t epoch, const uint8_t pk[WIRE_PK_BYTES],
                  uint8_t out[WIRE_KEY_MSG_BYTES])
{
    uint8_t *p = put(out, WIRE_DOMAIN_KEY, sizeof WIRE_DOMAIN_KEY);
    p = put32(p, dev);
    p = put32(p, epoch);
    put(p, pk, WIRE_PK_BYTES);
}

void wire_schema_msg(const uint8_t *json, size_t n, uint8_t out[WIRE_SCHEMA_MSG_BYTES])
{
    uint8_t *p = put(out, WIRE_DOMAIN_SCHEMA, sizeof WIRE_DOMAIN_SCHEMA);
    crypto_generichash(p, 32, json, n, NULL, 0);
}
