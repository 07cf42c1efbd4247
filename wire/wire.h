/*
 * wire.h — what the server and the device library share: signed envelopes,
 * delta hashes, and loading the record schema from its JSON file.
 *
 * The crdt/ layer stays crypto-free and I/O-free; this layer adds libsodium
 * (Ed25519 signatures, BLAKE2b hashes) and libjansson (schema files).
 *
 * Conventions as in crdt.h: 0 or a negative code (WIRE_E* or a CRDT_E*
 * passed through), wire_strerror() for both ranges, outputs zeroed on failure,
 * secret keys wiped with sodium_memzero by whoever owns them.
 *
 * Signing (docs/PROTOCOL.md "Signatures"): the device signs, with Ed25519,
 * the domain string WIRE_DOMAIN_DELTA (including its terminating NUL byte)
 * followed by the exact delta bytes.  The envelope is the msgpack map
 *   {"b": <bin: delta bytes>, "s": <bin: 64-byte signature>}
 * and is stored verbatim.  The chain hash of a delta is BLAKE2b-256 of the
 * domain string WIRE_DOMAIN_HASH (with NUL) followed by the delta bytes.
 */
#ifndef DOORSTEP_WIRE_H
#define DOORSTEP_WIRE_H

#include "crdt.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    WIRE_OK = 0,
    WIRE_EINIT = -100,       /* libsodium could not initialise */
    WIRE_EBADSIG = -101,     /* signature does not verify */
    WIRE_EKEYSIZE = -102,    /* key, signature or hash of the wrong size */
    WIRE_EIO = -103,         /* file could not be read */
    WIRE_EJSON = -104        /* file is not valid JSON (see the message) */
};

#define WIRE_DOMAIN_DELTA "doorstep/v1/delta"
#define WIRE_DOMAIN_HASH "doorstep/v1/delta-hash"
#define WIRE_PK_BYTES 32
#define WIRE_SK_BYTES 64
#define WIRE_SIG_BYTES 64

/*
 * Handshake messages (handshake.c; layouts in docs/PROTOCOL.md
 * "Signatures").  Each is a domain string with its NUL, then fixed fields,
 * integers big-endian.  The phone builds them to sign, the server to verify
 * (and the reverse for snapshot pages), so both sides call these and the
 * bytes cannot drift apart.  Pure functions: no allocation, no failure
 * except where a length is returned.
 *
 *   auth      domain | server pk | server nonce | client nonce | dev u32 | epoch u32
 *   enroll    domain | server pk | server nonce | token (1..64) | new pk
 *   rotate    domain | dev u32 | new epoch u32 | new pk | seal seq u64
 *   snapshot  domain | dev u32 | cursor u64 | page u32 | more u8 | digest
 *   key       domain | dev u32 | epoch u32 | pk      (a key record, in changes)
 *   schema    domain | BLAKE2b-256(schema JSON text)  (the schema frame)
 */
#define WIRE_DOMAIN_AUTH "doorstep/v1/auth"
#define WIRE_DOMAIN_ENROLL "doorstep/v1/enroll"
#define WIRE_DOMAIN_ROTATE "doorstep/v1/rotate"
#define WIRE_DOMAIN_SNAPSHOT "doorstep/v1/snapshot"
#define WIRE_DOMAIN_KEY "doorstep/v1/key"
#define WIRE_DOMAIN_SCHEMA "doorstep/v1/schema"
#define WIRE_NONCE_BYTES 32
#define WIRE_TOKEN_MAX 64
#define WIRE_AUTH_MSG_BYTES (sizeof WIRE_DOMAIN_AUTH + 3 * 32 + 8)
#define WIRE_ENROLL_MSG_MAX (sizeof WIRE_DOMAIN_ENROLL + 2 * 32 + WIRE_TOKEN_MAX + 32)
#define WIRE_ROTATE_MSG_BYTES (sizeof WIRE_DOMAIN_ROTATE + 4 + 4 + 32 + 8)
#define WIRE_SNAPSHOT_MSG_BYTES (sizeof WIRE_DOMAIN_SNAPSHOT + 4 + 8 + 4 + 1 + 32)
#define WIRE_KEY_MSG_BYTES (sizeof WIRE_DOMAIN_KEY + 4 + 4 + 32)
#define WIRE_SCHEMA_MSG_BYTES (sizeof WIRE_DOMAIN_SCHEMA + 32)

void wire_auth_msg(const uint8_t spk[WIRE_PK_BYTES], const uint8_t snonce[WIRE_NONCE_BYTES],
                   const uint8_t cnonce[WIRE_NONCE_BYTES], uint32_t dev, uint32_t epoch,
                   uint8_t out[WIRE_AUTH_MSG_BYTES]);
/* Returns the message length, or 0 (out untouched) when token_len is 0 or
 * above WIRE_TOKEN_MAX. */
size_t wire_enroll_msg(const uint8_t spk[WIRE_PK_BYTES], const uint8_t snonce[WIRE_NONCE_BYTES],
                       const char *token, size_t token_len, const uint8_t pk[WIRE_PK_BYTES],
                       uint8_t out[WIRE_ENROLL_MSG_MAX]);
void wire_rotate_msg(uint32_t dev, uint32_t epoch, const uint8_t pk[WIRE_PK_BYTES], uint64_t seal,
                     uint8_t out[WIRE_ROTATE_MSG_BYTES]);
void wire_snapshot_msg(uint32_t dev, uint64_t cursor, uint32_t page, bool more,
                       const uint8_t digest[32], uint8_t out[WIRE_SNAPSHOT_MSG_BYTES]);
/* What the server signs in a key record: device dev's key of epoch `epoch` is pk. */
void wire_key_msg(uint32_t dev, uint32_t epoch, const uint8_t pk[WIRE_PK_BYTES],
                  uint8_t out[WIRE_KEY_MSG_BYTES]);
/* What the server signs in a schema frame: the hash of the schema's JSON text. */
void wire_schema_msg(const uint8_t *json, size_t n, uint8_t out[WIRE_SCHEMA_MSG_BYTES]);

/* Messages for WIRE_E* and, for anything else, crdt_strerror(). */
const char *wire_strerror(int code);

/* Call once before any other wire_* function (thread-safe, idempotent).
 * Returns 0 or WIRE_EINIT. */
int wire_init(void);

/* BLAKE2b-256 chain hash of delta bytes.  0 or WIRE_EINVAL-like CRDT_EINVAL. */
int wire_delta_hash(const uint8_t *delta, size_t n, uint8_t out[CRDT_HASH_BYTES]);

/* Ed25519 over WIRE_DOMAIN_DELTA "\0" || delta.  0, CRDT_ENOMEM, CRDT_EINVAL. */
int wire_delta_sign(const uint8_t *delta, size_t n,
                    const uint8_t sk[WIRE_SK_BYTES], uint8_t sig[WIRE_SIG_BYTES]);
/* 0 if sig is valid for delta under pk; WIRE_EBADSIG otherwise. */
int wire_delta_verify(const uint8_t *delta, size_t n,
                      const uint8_t sig[WIRE_SIG_BYTES],
                      const uint8_t pk[WIRE_PK_BYTES]);

/*
 * wire_mp_get — the value under the string key `key` in a decoded msgpack
 * map (msgpack-c's msgpack_object), or NULL when `map` is not a map or has
 * no such key.  Linear in the map's size: protocol frames have a handful of
 * keys, and crdt_mp_check refuses duplicate keys, so the first match is the
 * only one.  Shared by the server's session and relay, the device library,
 * the bench and the tests (callers include <msgpack.h>).
 */
struct msgpack_object;
const struct msgpack_object *wire_mp_get(const struct msgpack_object *map, const char *key);

/* Append the canonical envelope {"b":delta,"s":sig} to *out. 0/CRDT_ENOMEM. */
int wire_envelope_encode(const uint8_t *delta, size_t n,
                         const uint8_t sig[WIRE_SIG_BYTES], crdt_buf *out);

/*
 * wire_envelope_decode — split untrusted envelope bytes.  Runs crdt_mp_check
 * with lim, requires exactly the keys "b" (bin) and "s" (bin of 64 bytes) and
 * the canonical encoding.  *delta points into p (borrowed).  Returns 0 or
 * a CRDT_E* structural code / WIRE_EKEYSIZE.
 */
int wire_envelope_decode(const uint8_t *p, size_t n, const crdt_limits *lim,
                         const uint8_t **delta, size_t *delta_len,
                         const uint8_t **sig);

/*
 * wire_schema_load_file — read and parse a JSON schema file (format in
 * docs/SCHEMA.md), then crdt_schema_validate() it.  On failure returns
 * WIRE_EIO, WIRE_EJSON or CRDT_ESCHEMA with a message in err naming the file
 * and the line (JSON syntax) or the field path (e.g.
 * "yibao.json: kinds[1](person).fields[1](id_number).type: unknown type
 * 'idnr' (expected text|int|...)").
 * *out is owned by the caller (crdt_schema_free).
 */
int wire_schema_load_file(const char *path, crdt_schema **out, char *err,
                          size_t errlen);
/* The same from a buffer; `source` names it in messages. */
int wire_schema_load_buffer(const char *json, size_t len, const char *source,
                            crdt_schema **out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* DOORSTEP_WIRE_H */
