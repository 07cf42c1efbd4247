/*
 * wsclient.h — a small blocking WebSocket client over a raw TCP socket, for
 * tests.  It deliberately does not use libwebsockets: tests need to send
 * what a well-behaved library never would (fragments that never finish,
 * 1-byte fragments, text frames, oversized messages, wrong subprotocols).
 *
 * Also: the device side of the Doorstep handshake (hello/auth/welcome) and
 * frame builders, so integration tests read like a phone's session.
 */
#ifndef DOORSTEP_WSCLIENT_H
#define DOORSTEP_WSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crdt.h"

typedef struct wsc {
    int fd;
    uint8_t *in;          /* buffered, unparsed input */
    size_t n, cap;
    int http_status;      /* of the handshake */
} wsc;

enum { WSC_TEXT = 1, WSC_BINARY = 2, WSC_CLOSE = 8, WSC_PING = 9, WSC_PONG = 10,
       WSC_CONT = 0 };

/* Connect and upgrade.  subprotocol may be NULL (none requested).
 * Returns 0 on 101 Switching Protocols, -1 otherwise (http_status set). */
int wsc_connect(wsc *c, const char *host, int port, const char *path, const char *subprotocol);
/* One raw frame (masked, as a client must). */
int wsc_send_frame(wsc *c, int opcode, bool fin, const uint8_t *p, size_t n);
/* One binary message in a single frame. */
int wsc_send(wsc *c, const uint8_t *p, size_t n);
/*
 * wsc_recv — the next complete message (fragments joined, pings answered).
 * Returns WSC_BINARY/WSC_TEXT with the payload in *msg (reset first),
 * WSC_CLOSE with *close_code (1005 if none) when the server closes, or -1
 * on timeout or connection loss.
 */
int wsc_recv(wsc *c, int timeout_ms, crdt_buf *msg, int *close_code);
void wsc_close(wsc *c);

/* A raw HTTP GET; returns the status and the body in *body. */
int http_get(const char *host, int port, const char *path, crdt_buf *body);

/* ---- Doorstep frames --------------------------------------------------------- */

/* Find key in a msgpack map message; helpers return false if absent/wrong. */
bool mp_get_str(const uint8_t *msg, size_t n, const char *key, char *out, size_t cap);
bool mp_get_u64(const uint8_t *msg, size_t n, const char *key, uint64_t *v);
bool mp_get_i64(const uint8_t *msg, size_t n, const char *key, int64_t *v);
bool mp_get_bin(const uint8_t *msg, size_t n, const char *key, uint8_t *out, size_t len);
/* Frame type ("t"), or "" */
const char *mp_type(const uint8_t *msg, size_t n);

/* Build frames. */
void frame_auth(crdt_buf *out, uint32_t dev, uint32_t epoch, const uint8_t sk[64],
                const uint8_t server_pk[32], const uint8_t server_nonce[32]);
void frame_push(crdt_buf *out, uint64_t id, const crdt_buf *envs, size_t n);
void frame_pull(crdt_buf *out, uint64_t id, uint64_t after, uint32_t max);
void frame_subscribe(crdt_buf *out, uint64_t after);

/* Ack inspection: number of entries, and entry i's result/code/seq. */
size_t ack_count(const uint8_t *msg, size_t n);
bool ack_entry(const uint8_t *msg, size_t n, size_t i, char *result, size_t rcap,
               int64_t *code, uint64_t *seq, uint64_t *expected);
/* Changes inspection: envelopes count; envelope i copied into *env. */
size_t changes_count(const uint8_t *msg, size_t n);
bool changes_env(const uint8_t *msg, size_t n, size_t i, crdt_buf *env);

/* Connect, read hello, authenticate; returns 0 and leaves the welcome frame
 * in *welcome, or the error code from the server's error frame (negative),
 * or -1 on transport failure. */
int device_connect(wsc *c, int port, uint32_t dev, uint32_t epoch, const uint8_t sk[64],
                   crdt_buf *welcome);
#endif
