/*
 * mpcheck.c — the bounded msgpack walk (crdt_mp_check) and the UTF-8 rule
 * (crdt_utf8_valid) that every untrusted byte string passes BEFORE msgpack-c
 * sees it (DESIGN.md §7).  msgpack-c's unpacker allocates from declared
 * lengths and counts, so a 5-byte `dd ff 00 00 00` would make it try to
 * allocate 64 GiB; this walk refuses such input from the bytes alone.
 *
 * Invariants
 *   - Never reads past p + n: every header is bounds-checked before it is
 *     read, every declared str/bin length before its payload is touched.
 *   - Allocates nothing (no malloc, no qsort, which may malloc) and does not
 *     recurse.  Stack: one frame per open container (at most
 *     MP_DEPTH_CAP = 64, checked against lim->max_depth, else CRDT_EINVAL)
 *     plus the duplicate-key scratch below (MP_MAP_KEYS_CAP spans of 8 bytes
 *     = 32 KiB); about 34 KiB in all.
 *   - Work is O(n + K log K) where K is the number of keys of the
 *     largest map: declared counts are checked against the bytes present
 *     (array of k needs k bytes, map of k needs 2k) before anything loops
 *     over them, so no loop runs on a count without input behind it.
 *   - Deterministic: the result and err_off depend only on (p, n, *lim).
 *
 * Error order.  The walk goes front to back and reports the first problem it
 * meets; for one header the checks run in this order:
 *   type byte (0xc1 -> ERESERVED, ext -> EEXT, float -> EFLOAT), then map
 *   key type (EMAPKEY), then header truncated (ETRUNC), then
 *   containers: EDEPTH, ECOUNT (max_entries, then the map-key cap), ELENGTH;
 *   str: ESTRLEN, ELENGTH, EUTF8;  bin: EBINLEN, ELENGTH.
 * Whole-input checks: ETOOBIG (first, before any byte is read), empty input
 * (ETRUNC), and after the top-level value ETRAILING.
 * err_off: the offset of the offending header (for EUTF8: the first byte of
 * the bad sequence; for ETRUNC of a missing value: n; for ETRAILING: the
 * first trailing byte; for ETOOBIG: the effective max_msg; 0 for EINVAL).
 *
 * Duplicate keys.  The walk pushes the (offset, length) of every key it
 * meets onto one key stack; each open map remembers where its keys start.
 * When a map closes, its keys (the top of the stack) are checked — pairwise
 * for up to 16 keys (Doorstep's maps), heapsort and neighbour comparison
 * beyond (bytes, then length) — and popped.  Inner maps' keys are pushed
 * and popped between two keys of the outer map, so the stack stays in
 * order; nothing is walked twice.  The stack holds MP_MAP_KEYS_CAP = 4096
 * keys of all open maps together; a map above min(lim->max_entries, 4096)
 * entries, or open maps holding more than 4096 keys in all, are refused
 * with CRDT_ECOUNT (the default max_entries is 1024, and Doorstep never
 * writes a map of more than a few dozen keys).  EDUPKEY's err_off is the
 * header of the earliest key that repeats an earlier key of the same map.
 * Because the check runs at map close, a later error inside the same map
 * (e.g. bad UTF-8 in a following value) is reported first.
 *
 * Depth.  lim->max_depth may be up to 64, but msgpack-c 4.0's unpacker
 * follows at most 32 levels (MSGPACK_EMBED_STACK_SIZE) and fails with a
 * parse error beyond that: limits above 32 are safe but pointless for
 * anything later handed to msgpack_unpack_next.
 *
 * Offsets are kept as uint32_t: inputs above UINT32_MAX bytes are refused
 * with CRDT_ETOOBIG whatever lim->max_msg says.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crdt.h"

#define MP_DEPTH_CAP 64u
#define MP_MAP_KEYS_CAP CRDT_MP_MAP_KEYS_MAX
#define MP_SIZE_CAP ((size_t)UINT32_MAX)

/* What one type byte starts. */
enum mp_kind {
    MP_K_SCALAR,  /* nil, bool, ints: hdr bytes and nothing else */
    MP_K_STR,
    MP_K_BIN,
    MP_K_ARRAY,
    MP_K_MAP,
    MP_K_EXT,
    MP_K_FLOAT,
    MP_K_RESERVED
};

/* A parsed header: kind, header size, and the length/count (or the fixed
 * inline value for fix* types). */
typedef struct mp_hdr {
    uint8_t kind;     /* enum mp_kind */
    uint8_t hdr;      /* bytes of the header itself (>= 1) */
    uint8_t len_size; /* 0 (inline or none), 1, 2 or 4 bytes of big-endian length */
    uint32_t len;     /* str/bin bytes or array/map entries (valid after mp_read_len) */
} mp_hdr;

/* One open container. */
typedef struct mp_frame {
    uint64_t left;    /* items still to come: array k, map 2k (key + value) */
    uint32_t start;   /* offset of the first item */
    uint32_t count;   /* declared entries */
    uint32_t kbase;   /* maps: where this map's keys start on the key stack */
    bool is_map;
} mp_frame;

/* One map key: offset of its str header, and its byte length. */
typedef struct mp_span {
    uint32_t off;
    uint32_t len;
} mp_span;

/* Classify the type byte b; fix* lengths are stored in h->len directly. */
static void mp_classify(uint8_t b, mp_hdr *h)
{
    h->hdr = 1;
    h->len_size = 0;
    h->len = 0;
    if (b <= 0x7f || b >= 0xe0) { h->kind = MP_K_SCALAR; return; }
    if (b <= 0x8f) { h->kind = MP_K_MAP; h->len = b & 0x0fu; return; }
    if (b <= 0x9f) { h->kind = MP_K_ARRAY; h->len = b & 0x0fu; return; }
    if (b <= 0xbf) { h->kind = MP_K_STR; h->len = b & 0x1fu; return; }
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3:
        h->kind = MP_K_SCALAR; return;
    case 0xc1:
        h->kind = MP_K_RESERVED; return;
    case 0xc4: h->kind = MP_K_BIN; h->len_size = 1; break;
    case 0xc5: h->kind = MP_K_BIN; h->len_size = 2; break;
    case 0xc6: h->kind = MP_K_BIN; h->len_size = 4; break;
    case 0xc7: case 0xc8: case 0xc9:
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        h->kind = MP_K_EXT; return;
    case 0xca: case 0xcb:
        h->kind = MP_K_FLOAT; return;
    case 0xcc: case 0xd0: h->kind = MP_K_SCALAR; h->hdr = 2; return;
    case 0xcd: case 0xd1: h->kind = MP_K_SCALAR; h->hdr = 3; return;
    case 0xce: case 0xd2: h->kind = MP_K_SCALAR; h->hdr = 5; return;
    case 0xcf: case 0xd3: h->kind = MP_K_SCALAR; h->hdr = 9; return;
    case 0xd9: h->kind = MP_K_STR; h->len_size = 1; break;
    case 0xda: h->kind = MP_K_STR; h->len_size = 2; break;
    case 0xdb: h->kind = MP_K_STR; h->len_size = 4; break;
    case 0xdc: h->kind = MP_K_ARRAY; h->len_size = 2; break;
    case 0xdd: h->kind = MP_K_ARRAY; h->len_size = 4; break;
    case 0xde: h->kind = MP_K_MAP; h->len_size = 2; break;
    default:   h->kind = MP_K_MAP; h->len_size = 4; break; /* 0xdf */
    }
    h->hdr = (uint8_t)(1 + h->len_size);
}

/* Read the big-endian length that follows the type byte at q (the caller
 * has checked that h->hdr bytes are present). */
static void mp_read_len(const uint8_t *q, mp_hdr *h)
{
    uint32_t v = 0;
    for (uint8_t i = 0; i < h->len_size; i++) v = (v << 8) | q[1 + i];
    if (h->len_size) h->len = v;
}

/* The first invalid byte of s[0..len) as UTF-8 (start of the bad sequence),
 * or len if it is all valid. */
static size_t utf8_bad_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;   /* range of the second byte */
        if (c < 0xc2) return i;         /* stray continuation, or overlong c0/c1 */
        if (c < 0xe0) {
            need = 1;
        } else if (c < 0xf0) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;       /* overlong */
            else if (c == 0xed) hi = 0x9f;  /* surrogates D800..DFFF */
        } else if (c < 0xf5) {
            need = 3;
            if (c == 0xf0) lo = 0x90;       /* overlong */
            else if (c == 0xf4) hi = 0x8f;  /* above U+10FFFF */
        } else {
            return i;                        /* f5..ff: never valid */
        }
        if (len - i - 1 < need) return i;    /* truncated sequence */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t j = 2; j <= need; j++)
            if ((s[i + j] & 0xc0u) != 0x80u) return i;
        i += need + 1;
    }
    return len;
}

bool crdt_utf8_valid(const uint8_t *s, size_t len)
{
    if (len == 0) return true;
    if (!s) return false;
    return utf8_bad_at(s, len) == len;
}

/* ---- duplicate keys ------------------------------------------------------- */

/* The bytes of the (already validated) str whose header is at p + off. */
static const uint8_t *mp_key_bytes(const uint8_t *p, uint32_t off)
{
    switch (p[off]) {
    case 0xd9: return p + off + 2;
    case 0xda: return p + off + 3;
    case 0xdb: return p + off + 5;
    default:   return p + off + 1;  /* fixstr */
    }
}

/* Bytewise order of two keys (memcmp, then length). */
static int mp_key_cmp(const uint8_t *p, mp_span a, mp_span b)
{
    uint32_t m = a.len < b.len ? a.len : b.len;
    int c = m ? memcmp(mp_key_bytes(p, a.off), mp_key_bytes(p, b.off), m) : 0;
    if (c) return c;
    return (a.len > b.len) - (a.len < b.len);
}

static void mp_sift_down(const uint8_t *p, mp_span *v, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && mp_key_cmp(p, v[child], v[child + 1]) < 0) child++;
        if (mp_key_cmp(p, v[root], v[child]) >= 0) return;
        mp_span t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

/* In-place heapsort: O(k log k), no allocation, no recursion. */
static void mp_sort_keys(const uint8_t *p, mp_span *v, size_t n)
{
    if (n < 2) return;
    for (size_t i = n / 2; i-- > 0;) mp_sift_down(p, v, i, n);
    for (size_t end = n - 1; end > 0; end--) {
        mp_span t = v[0];
        v[0] = v[end];
        v[end] = t;
        mp_sift_down(p, v, 0, end);
    }
}

/* Check keys[0..n) (the keys of one map, in order of appearance) for
 * duplicates: pairwise for the small maps Doorstep sends, heapsort beyond.
 * Returns 0 or CRDT_EDUPKEY with *at = the header offset of the earliest
 * key that repeats an earlier one.  May reorder keys[]. */
static int mp_keys_unique(const uint8_t *p, mp_span *keys, size_t n, size_t *at)
{
    if (n < 2) return 0;
    if (n <= 16) {
        for (size_t j = 1; j < n; j++)
            for (size_t i = 0; i < j; i++)
                if (mp_key_cmp(p, keys[i], keys[j]) == 0) {
                    *at = keys[j].off;
                    return CRDT_EDUPKEY;
                }
        return 0;
    }
    mp_sort_keys(p, keys, n);
    size_t best = SIZE_MAX;
    for (size_t i = 1; i < n; i++) {
        if (mp_key_cmp(p, keys[i - 1], keys[i]) != 0) continue;
        uint32_t later = keys[i - 1].off > keys[i].off ? keys[i - 1].off : keys[i].off;
        if (later < best) best = later;
    }
    if (best == SIZE_MAX) return 0;
    *at = best;
    return CRDT_EDUPKEY;
}

/* ---- the walk ------------------------------------------------------------- */

static int mp_walk(const uint8_t *p, size_t n, const crdt_limits *lim, size_t *at)
{
    mp_frame st[MP_DEPTH_CAP];
    mp_span keys[MP_MAP_KEYS_CAP]; /* a stack: the keys of every open map */
    uint32_t ktop = 0;
    uint32_t depth = 0;
    uint32_t map_max = lim->max_entries < MP_MAP_KEYS_CAP ? lim->max_entries
                                                          : MP_MAP_KEYS_CAP;
    size_t pos = 0;

    for (;;) {
        /* A value starts at pos. */
        mp_hdr h;
        size_t rest;
        if (pos >= n) { *at = n; return CRDT_ETRUNC; }
        *at = pos;
        mp_classify(p[pos], &h);
        switch (h.kind) {
        case MP_K_RESERVED: return CRDT_ERESERVED;
        case MP_K_EXT: return CRDT_EEXT;
        case MP_K_FLOAT: return CRDT_EFLOAT;
        default: break;
        }
        if (depth > 0 && st[depth - 1].is_map && st[depth - 1].left % 2 == 0 &&
            h.kind != MP_K_STR)
            return CRDT_EMAPKEY;
        if (h.hdr > n - pos) return CRDT_ETRUNC;
        mp_read_len(p + pos, &h);
        rest = n - pos - h.hdr;  /* bytes after the header */

        switch (h.kind) {
        case MP_K_STR:
            if (h.len > lim->max_str) return CRDT_ESTRLEN;
            if (h.len > rest) return CRDT_ELENGTH;
            {
                size_t bad = utf8_bad_at(p + pos + h.hdr, h.len);
                if (bad != h.len) { *at = pos + h.hdr + bad; return CRDT_EUTF8; }
            }
            if (depth > 0 && st[depth - 1].is_map && st[depth - 1].left % 2 == 0) {
                /* A key: remember it for the duplicate check at map close. */
                if (ktop == MP_MAP_KEYS_CAP) return CRDT_ECOUNT;
                keys[ktop].off = (uint32_t)pos;
                keys[ktop].len = h.len;
                ktop++;
            }
            pos += h.hdr + (size_t)h.len;
            break;
        case MP_K_BIN:
            if (h.len > lim->max_bin) return CRDT_EBINLEN;
            if (h.len > rest) return CRDT_ELENGTH;
            pos += h.hdr + (size_t)h.len;
            break;
        case MP_K_ARRAY:
        case MP_K_MAP: {
            bool is_map = h.kind == MP_K_MAP;
            uint64_t items = is_map ? 2 * (uint64_t)h.len : h.len;
            if (depth + 1 > lim->max_depth) return CRDT_EDEPTH;
            if (h.len > lim->max_entries) return CRDT_ECOUNT;
            if (is_map && h.len > map_max) return CRDT_ECOUNT;
            if (items > rest) return CRDT_ELENGTH;
            pos += h.hdr;
            if (items > 0) {
                st[depth].left = items;
                st[depth].start = (uint32_t)pos;
                st[depth].count = h.len;
                st[depth].kbase = ktop;
                st[depth].is_map = is_map;
                depth++;
                continue;  /* its first item starts at pos */
            }
            break;         /* empty: complete already */
        }
        default:  /* MP_K_SCALAR */
            pos += h.hdr;
            break;
        }

        /* A value ended at pos: account for it in the open containers,
         * closing every container it completes. */
        while (depth > 0) {
            mp_frame *f = &st[depth - 1];
            if (--f->left > 0) break;
            if (f->is_map) {
                int rc = mp_keys_unique(p, keys + f->kbase, ktop - f->kbase, at);
                if (rc) return rc;
                ktop = f->kbase;
            }
            depth--;
        }
        if (depth == 0) {
            if (pos != n) { *at = pos; return CRDT_ETRAILING; }
            *at = 0;
            return CRDT_OK;
        }
    }
}

int crdt_mp_check(const uint8_t *p, size_t n, const crdt_limits *lim,
                  size_t *err_off)
{
    size_t at = 0;
    int rc;
    if (!lim || lim->max_depth > MP_DEPTH_CAP) {
        rc = CRDT_EINVAL;
    } else {
        size_t max_msg = lim->max_msg < MP_SIZE_CAP ? lim->max_msg : MP_SIZE_CAP;
        if (n > max_msg) {
            at = max_msg;
            rc = CRDT_ETOOBIG;
        } else if (n == 0) {
            rc = CRDT_ETRUNC;
        } else if (!p) {
            rc = CRDT_EINVAL;
        } else {
            rc = mp_walk(p, n, lim, &at);
        }
    }
    if (err_off) *err_off = rc ? at : 0;
    return rc;
}
