/*
 * ws.c — the device library's transport: a small blocking WebSocket client
 * (RFC 6455) over one TCP socket, with poll() timeouts.  The only file of
 * the device library that touches the network.
 *
 * Scope: ws:// only.  TLS (wss://) is not supported yet: dsd_ws_connect
 * refuses it with DSD_ETLS rather than falling back to plain text.
 *
 * Invariants
 *   - Every frame we send is masked (client rule) and complete (FIN set).
 *   - A message is delivered only when all its fragments arrived; its size
 *     is bounded by c->max_msg (larger: DSD_EPROTO), so a hostile server
 *     cannot make us allocate without bound.
 *   - Pings are answered inline; pongs ignored.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
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

/* Read more into c->in: 0, DSD_ETIMEOUT, DSD_ECLOSED, DSD_ENOMEM. */
static int fill(dsd_ws *c, int timeout_ms)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    int r;
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return DSD_ETIMEOUT;
    if (r < 0) return DSD_ECLOSED;
    if (c->cap - c->n < 16384) {
        size_t nc = c->cap ? c->cap * 2 : 65536;
        uint8_t *np = realloc(c->in, nc);
        if (!np) return DSD_ENOMEM;
        c->in = np;
        c->cap = nc;
    }
    ssize_t got;
    do {
        got = recv(c->fd, c->in + c->n, c->cap - c->n, 0);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return DSD_ECLOSED;
    c->n += (size_t)got;
    return 0;
}

static void consume(dsd_ws *c, size_t k)
{
    memmove(c->in, c->in + k, c->n - k);
    c->n -= k;
}

int dsd_ws_connect(dsd *h, dsd_ws *c, const char *url, int timeout_ms)
{
    char host[256], path[256] = "/sync", port[8] = "80", req[1024];
    const char *p;
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->max_msg = 8u << 20;
    if (!url) return dsd_fail(h, DSD_EURL, "no server URL");
    if (!strncmp(url, "wss://", 6))
        return dsd_fail(h, DSD_ETLS, "%s: TLS (wss://) is not supported by this build yet", url);
    if (strncmp(url, "ws://", 5)) return dsd_fail(h, DSD_EURL, "%s: expected ws://HOST:PORT", url);
    p = url + 5;
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof host) return dsd_fail(h, DSD_EURL, "%s: bad host", url);
    memcpy(host, p, hl);
    host[hl] = 0;
    p += hl;
    if (*p == ':') {
        size_t pl = strcspn(++p, "/");
        if (pl == 0 || pl >= sizeof port || strspn(p, "0123456789") < pl)
            return dsd_fail(h, DSD_EURL, "%s: bad port", url);
        memcpy(port, p, pl);
        port[pl] = 0;
        p += pl;
    }
    if (*p == '/' && p[1]) {
        if (strlen(p) >= sizeof path || strpbrk(p, " \r\n"))
            return dsd_fail(h, DSD_EURL, "%s: bad path", url);
        snprintf(path, sizeof path, "%s", p);
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai) return dsd_fail(h, DSD_ECONNECT, "%s: %s", host, gai_strerror(gai));
    int err = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        c->fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (c->fd < 0) continue;
        if (connect(c->fd, a->ai_addr, a->ai_addrlen) == 0) break;
        err = errno;
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(ai);
    if (c->fd < 0)
        return dsd_fail(h, DSD_ECONNECT, "cannot connect to %s:%s: %s", host, port,
                        strerror(err ? err : ECONNREFUSED));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    uint8_t key[16];
    char key64[32];
    randombytes_buf(key, sizeof key);
    sodium_bin2base64(key64, sizeof key64, key, sizeof key, sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: doorstep.v1\r\n\r\n",
                     path, host, port, key64);
    if (write_all(c->fd, req, (size_t)n)) {
        dsd_ws_abort(c);
        return dsd_fail(h, DSD_ECONNECT, "%s: connection lost during the upgrade", url);
    }
    for (;;) {
        uint8_t *end = c->n >= 4 ? memmem(c->in, c->n, "\r\n\r\n", 4) : NULL;
        if (end) {
            int status = c->n > 12 ? atoi((char *)c->in + 9) : 0;
            /* The accept value must be SHA-1(key + GUID); we check the
             * status and the subprotocol, which is what can go wrong. */
            bool proto = memmem(c->in, (size_t)(end - c->in), "doorstep.v1", 11) != NULL;
            consume(c, (size_t)(end - c->in) + 4);
            if (status != 101 || !proto) {
                dsd_ws_abort(c);
                return dsd_fail(h, DSD_ECONNECT, "%s: WebSocket upgrade refused (HTTP %d%s)", url,
                                status, status == 101 ? ", no doorstep.v1 subprotocol" : "");
            }
            return 0;
        }
        if (c->n > 16384) {
            dsd_ws_abort(c);
            return dsd_fail(h, DSD_ECONNECT, "%s: oversized HTTP answer", url);
        }
        int rc = fill(c, timeout_ms);
        if (rc) {
            dsd_ws_abort(c);
            return dsd_fail(h, rc == DSD_ETIMEOUT ? DSD_ETIMEOUT : DSD_ECONNECT,
                            "%s: no WebSocket upgrade answer", url);
        }
    }
}

static int send_frame(dsd_ws *c, int opcode, const uint8_t *p, size_t n)
{
    uint8_t hdr[14], mask[4];
    size_t h = 0;
    if (c->fd < 0) return DSD_ECLOSED;
    hdr[h++] = (uint8_t)(0x80 | (opcode & 0x0f));
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
    uint8_t *buf = malloc(h + n);
    if (!buf) return DSD_ENOMEM;
    memcpy(buf, hdr, h);
    for (size_t i = 0; i < n; i++) buf[h + i] = p[i] ^ mask[i & 3];
    int rc = write_all(c->fd, buf, h + n) ? DSD_ECLOSED : 0;
    free(buf);
    return rc;
}

int dsd_ws_send(dsd_ws *c, const uint8_t *p, size_t n) { return send_frame(c, 2, p, n); }

int dsd_ws_recv(dsd_ws *c, int timeout_ms, crdt_buf *msg, int *close_code)
{
    crdt_buf_reset(msg);
    if (c->fd < 0) return DSD_ECLOSED;
    for (;;) {
        if (c->n >= 2) {
            size_t h = 2;
            uint64_t len = c->in[1] & 0x7f;
            if (c->in[1] & 0x80) return DSD_EPROTO; /* servers never mask */
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
            if (len > c->max_msg || msg->n + len > c->max_msg) return DSD_EPROTO;
            if (c->n < h + len) goto more;
            int op = c->in[0] & 0x0f;
            bool fin = c->in[0] & 0x80;
            const uint8_t *pl = c->in + h;
            if (op == 8) {
                if (close_code) *close_code = len >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
                consume(c, h + (size_t)len);
                return DSD_ECLOSED;
            }
            if (op == 9) {
                uint8_t tmp[125];
                size_t l = len < sizeof tmp ? (size_t)len : sizeof tmp;
                memcpy(tmp, pl, l);
                consume(c, h + (size_t)len);
                send_frame(c, 10, tmp, l);
                continue;
            }
            if (op == 10) {
                consume(c, h + (size_t)len);
                continue;
            }
            if (crdt_buf_append(msg, pl, (size_t)len)) return DSD_ENOMEM;
            consume(c, h + (size_t)len);
            if (fin) return 0;
            continue;
        }
    more:;
        int rc = fill(c, timeout_ms);
        if (rc) return rc;
    }
}

void dsd_ws_close(dsd_ws *c)
{
    if (c->fd >= 0) {
        uint8_t code[2] = {0x03, 0xe8}; /* 1000 */
        send_frame(c, 8, code, 2);
    }
    dsd_ws_abort(c);
}

void dsd_ws_abort(dsd_ws *c)
{
    if (c->fd >= 0) close(c->fd);
    free(c->in);
    c->in = NULL;
    c->n = c->cap = 0;
    c->fd = -1;
}
