/*
 * wsclient.c — see wsclient.h.  RFC 6455 client framing, blocking I/O with
 * poll() timeouts; msgpack helpers built on msgpack-c.
 */
#define _GNU_SOURCE
#include "wsclient.h"
#include "wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <msgpack.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int tcp_connect(const char *host, int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, strcmp(host, "localhost") ? host : "127.0.0.1", &a.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read more into c->in; 0 ok, -1 timeout/error/eof. */
static int fill(wsc *c, int timeout_ms)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r <= 0) return -1;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 65536;
        uint8_t *np = realloc(c->in, nc);
        if (!np) return -1;
        c->in = np;
        c->cap = nc;
    }
    ssize_t got = recv(c->fd, c->in + c->n, c->cap - c->n, 0);
    if (got <= 0) return -1;
    c->n += (size_t)got;
    return 0;
}

static void consume(wsc *c, size_t k)
{
    memmove(c->in, c->in + k, c->n - k);
    c->n -= k;
}

int wsc_connect(wsc *c, const char *host, int port, const char *path, const char *subprotocol)
{
    uint8_t key[16];
    char key64[32], req[1024];
    memset(c, 0, sizeof *c);
    c->fd = tcp_connect(host, port);
    if (c->fd < 0) return -1;
    randombytes_buf(key, sizeof key);
    sodium_bin2base64(key64, sizeof key64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     path, host, port, key64, subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     subprotocol ? subprotocol : "", subprotocol ? "\r\n" : "");
    if (write_all(c->fd, req, (size_t)n)) return -1;
    for (;;) {
        uint8_t *end = c->n >= 4 ? memmem(c->in, c->n, "\r\n\r\n", 4) : NULL;
        if (end) {
            c->http_status = atoi((char *)c->in + 9);
            consume(c, (size_t)(end - c->in) + 4);
            return c->http_status == 101 ? 0 : -1;
        }
        if (fill(c, 3000)) {
            c->http_status = 0;
            return -1;
        }
    }
}

int wsc_send_frame(wsc *c, int opcode, bool fin, const uint8_t *p, size_t n)
{
    uint8_t hdr[14], mask[4];
    size_t h = 0;
    hdr[h++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (n < 126) {
        hdr[h++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(n >> 8);
        hdr[h++] = (uint8_t)n;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) hdr[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    randombytes_buf(mask, 4);
    memcpy(hdr + h, mask, 4);
    h += 4;
    uint8_t *buf = malloc(h + n + 1);
    if (!buf) return -1;
    memcpy(buf, hdr, h);
    for (size_t i = 0; i < n; i++) buf[h + i] = p[i] ^ mask[i & 3];
    int rc = write_all(c->fd, buf, h + n);
    free(buf);
    return rc;
}

int wsc_send(wsc *c, const uint8_t *p, size_t n) { return wsc_send_frame(c, WSC_BINARY, true, p, n); }

int wsc_recv(wsc *c, int timeout_ms, crdt_buf *msg, int *close_code)
{
    int msg_op = -1;
    crdt_buf_reset(msg);
    for (;;) {
        /* Parse one frame if complete. */
        if (c->n >= 2) {
            size_t h = 2;
            uint64_t len = c->in[1] & 0x7f;
            if (len == 126) {
                if (c->n < 4) goto more;
                len = (uint64_t)c->in[2] << 8 | c->in[3];
                h = 4;
            } else if (len == 127) {
                if (c->n < 10) goto more;
                len = 0;
                for (int i = 0; i < 8; i++) len = len << 8 | c->in[2 + i];
                h = 10;
            }
            if (c->n < h + len) goto more;
            int op = c->in[0] & 0x0f;
            bool fin = c->in[0] & 0x80;
            const uint8_t *pl = c->in + h;
            if (op == WSC_CLOSE) {
                if (close_code) *close_code = len >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
                crdt_buf_append(msg, pl, len);
                consume(c, h + len);
                return WSC_CLOSE;
            }
            if (op == WSC_PING) {
                uint8_t tmp[125];
                size_t l = len < sizeof tmp ? len : sizeof tmp;
                memcpy(tmp, pl, l);
                consume(c, h + len);
                wsc_send_frame(c, WSC_PONG, true, tmp, l);
                continue;
            }
            if (op == WSC_PONG) {
                consume(c, h + len);
                continue;
            }
            if (op != WSC_CONT) msg_op = op;
            crdt_buf_append(msg, pl, len);
            consume(c, h + len);
            if (fin) return msg_op;
            continue;
        }
    more:
        if (fill(c, timeout_ms)) return -1;
    }
}

void wsc_close(wsc *c)
{
    if (c->fd >= 0) close(c->fd);
    free(c->in);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

int http_get(const char *host, int port, const char *path, crdt_buf *body)
{
    wsc c;
    char req[512];
    memset(&c, 0, sizeof c);
    crdt_buf_reset(body);
    c.fd = tcp_connect(host, port);
    if (c.fd < 0) return -1;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n",
                     path, host);
    if (write_all(c.fd, req, (size_t)n)) {
        wsc_close(&c);
        return -1;
    }
    while (fill(&c, 3000) == 0) {}
    int status = c.n > 12 ? atoi((char *)c.in + 9) : -1;
    uint8_t *end = c.n >= 4 ? memmem(c.in, c.n, "\r\n\r\n", 4) : NULL;
    if (end) crdt_buf_append(body, end + 4, c.n - (size_t)(end + 4 - c.in));
    wsc_close(&c);
    return status;
}

/* ---- msgpack helpers -------------------------------------------------------------- */

static bool find(const uint8_t *msg, size_t n, const char *key, msgpack_unpacked *up,
                 const msgpack_object **val)
{
    size_t off = 0;
    msgpack_unpacked_init(up);
    if (msgpack_unpack_next(up, (const char *)msg, n, &off) != MSGPACK_UNPACK_SUCCESS ||
        up->data.type != MSGPACK_OBJECT_MAP)
        return false;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < up->data.via.map.size; i++) {
        msgpack_object_kv *kv = &up->data.via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            !memcmp(kv->key.via.str.ptr, key, kl)) {
            *val = &kv->val;
            return true;
        }
    }
    return false;
}

bool mp_get_str(const uint8_t *msg, size_t n, const char *key, char *out, size_t cap)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = find(msg, n, key, &up, &v) && v->type == MSGPACK_OBJECT_STR && v->via.str.size < cap;
    if (ok) {
        memcpy(out, v->via.str.ptr, v->via.str.size);
        out[v->via.str.size] = 0;
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

bool mp_get_u64(const uint8_t *msg, size_t n, const char *key, uint64_t *out)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = find(msg, n, key, &up, &v) && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
    if (ok) *out = v->via.u64;
    msgpack_unpacked_destroy(&up);
    return ok;
}

bool mp_get_i64(const uint8_t *msg, size_t n, const char *key, int64_t *out)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = find(msg, n, key, &up, &v) && (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                                             v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
    if (ok) *out = v->via.i64;
    msgpack_unpacked_destroy(&up);
    return ok;
}

bool mp_get_bin(const uint8_t *msg, size_t n, const char *key, uint8_t *out, size_t len)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = find(msg, n, key, &up, &v) && v->type == MSGPACK_OBJECT_BIN && v->via.bin.size == len;
    if (ok) memcpy(out, v->via.bin.ptr, len);
    msgpack_unpacked_destroy(&up);
    return ok;
}

const char *mp_type(const uint8_t *msg, size_t n)
{
    static _Thread_local char t[32];
    if (!mp_get_str(msg, n, "t", t, sizeof t)) t[0] = 0;
    return t;
}

static int bw(void *data, const char *p, size_t n) { return crdt_buf_append(data, p, n) ? -1 : 0; }

static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

void frame_auth(crdt_buf *out, uint32_t dev, uint32_t epoch, const uint8_t sk[64],
                const uint8_t server_pk[32], const uint8_t server_nonce[32])
{
    uint8_t cn[32], sig[64], msg[sizeof "doorstep/v1/auth" + 104], *p = msg;
    randombytes_buf(cn, sizeof cn);
    memcpy(p, "doorstep/v1/auth", sizeof "doorstep/v1/auth");
    p += sizeof "doorstep/v1/auth";
    memcpy(p, server_pk, 32);
    p += 32;
    memcpy(p, server_nonce, 32);
    p += 32;
    memcpy(p, cn, 32);
    p += 32;
    for (int i = 3; i >= 0; i--) *p++ = (uint8_t)(dev >> (8 * i));
    for (int i = 3; i >= 0; i--) *p++ = (uint8_t)(epoch >> (8 * i));
    crypto_sign_detached(sig, NULL, msg, sizeof msg, sk);
    msgpack_packer pk;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk, out, bw);
    msgpack_pack_map(&pk, 5);
    pstr(&pk, "d");
    msgpack_pack_uint32(&pk, dev);
    pstr(&pk, "e");
    msgpack_pack_uint32(&pk, epoch);
    pstr(&pk, "n");
    msgpack_pack_bin_with_body(&pk, cn, 32);
    pstr(&pk, "s");
    msgpack_pack_bin_with_body(&pk, sig, 64);
    pstr(&pk, "t");
    pstr(&pk, "auth");
}

void frame_push(crdt_buf *out, uint64_t id, const crdt_buf *envs, size_t n)
{
    msgpack_packer pk;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk, out, bw);
    msgpack_pack_map(&pk, 3);
    pstr(&pk, "d");
    msgpack_pack_array(&pk, n);
    for (size_t i = 0; i < n; i++) msgpack_pack_bin_with_body(&pk, envs[i].p, envs[i].n);
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pstr(&pk, "t");
    pstr(&pk, "push");
}

void frame_pull(crdt_buf *out, uint64_t id, uint64_t after, uint32_t max)
{
    msgpack_packer pk;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk, out, bw);
    msgpack_pack_map(&pk, 4);
    pstr(&pk, "a");
    msgpack_pack_uint64(&pk, after);
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pstr(&pk, "m");
    msgpack_pack_uint32(&pk, max);
    pstr(&pk, "t");
    pstr(&pk, "pull");
}

void frame_subscribe(crdt_buf *out, uint64_t after)
{
    msgpack_packer pk;
    crdt_buf_reset(out);
    msgpack_packer_init(&pk, out, bw);
    msgpack_pack_map(&pk, 2);
    pstr(&pk, "a");
    msgpack_pack_uint64(&pk, after);
    pstr(&pk, "t");
    pstr(&pk, "subscribe");
}

size_t ack_count(const uint8_t *msg, size_t n)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    size_t k = 0;
    if (find(msg, n, "r", &up, &v) && v->type == MSGPACK_OBJECT_ARRAY) k = v->via.array.size;
    msgpack_unpacked_destroy(&up);
    return k;
}

bool ack_entry(const uint8_t *msg, size_t n, size_t i, char *result, size_t rcap, int64_t *code,
               uint64_t *seq, uint64_t *expected)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = false;
    if (find(msg, n, "r", &up, &v) && v->type == MSGPACK_OBJECT_ARRAY && i < v->via.array.size) {
        const msgpack_object *e = &v->via.array.ptr[i];
        const msgpack_object *r = wire_mp_get(e, "r"), *c = wire_mp_get(e, "c"), *s = wire_mp_get(e, "s"),
                             *x = wire_mp_get(e, "x");
        if (r && r->type == MSGPACK_OBJECT_STR && r->via.str.size < rcap) {
            memcpy(result, r->via.str.ptr, r->via.str.size);
            result[r->via.str.size] = 0;
            ok = true;
        }
        if (code) *code = c ? c->via.i64 : 0;
        if (seq) *seq = s ? s->via.u64 : 0;
        if (expected) *expected = x ? x->via.u64 : 0;
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

size_t changes_count(const uint8_t *msg, size_t n)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    size_t k = 0;
    if (find(msg, n, "e", &up, &v) && v->type == MSGPACK_OBJECT_ARRAY) k = v->via.array.size;
    msgpack_unpacked_destroy(&up);
    return k;
}

bool changes_env(const uint8_t *msg, size_t n, size_t i, crdt_buf *env)
{
    msgpack_unpacked up;
    const msgpack_object *v;
    bool ok = false;
    crdt_buf_reset(env);
    if (find(msg, n, "e", &up, &v) && v->type == MSGPACK_OBJECT_ARRAY && i < v->via.array.size &&
        v->via.array.ptr[i].type == MSGPACK_OBJECT_BIN) {
        crdt_buf_append(env, v->via.array.ptr[i].via.bin.ptr, v->via.array.ptr[i].via.bin.size);
        ok = true;
    }
    msgpack_unpacked_destroy(&up);
    return ok;
}

int device_connect(wsc *c, int port, uint32_t dev, uint32_t epoch, const uint8_t sk[64],
                   crdt_buf *welcome)
{
    crdt_buf m = {0}, f = {0};
    uint8_t spk[32], nonce[32];
    int cc = 0, rc = -1;
    if (wsc_connect(c, "127.0.0.1", port, "/sync", "doorstep.v1")) goto out;
    if (wsc_recv(c, 3000, &m, &cc) != WSC_BINARY || strcmp(mp_type(m.p, m.n), "hello") ||
        !mp_get_bin(m.p, m.n, "srv", spk, 32) || !mp_get_bin(m.p, m.n, "n", nonce, 32))
        goto out;
    frame_auth(&f, dev, epoch, sk, spk, nonce);
    if (wsc_send(c, f.p, f.n)) goto out;
    if (wsc_recv(c, 3000, &m, &cc) != WSC_BINARY) goto out;
    if (!strcmp(mp_type(m.p, m.n), "welcome")) {
        rc = 0;
        if (welcome) {
            crdt_buf_reset(welcome);
            crdt_buf_append(welcome, m.p, m.n);
        }
    } else {
        int64_t code = -1;
        mp_get_i64(m.p, m.n, "c", &code);
        rc = (int)code;
    }
out:
    crdt_buf_free(&m);
    crdt_buf_free(&f);
    return rc;
}
