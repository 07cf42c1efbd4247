/*
 * limit.c — the per-device push rate limit (a token bucket per device).
 *
 * Why: one phone (buggy, cloned or hostile) must not be able to take the
 * single writer thread away from the other ~300 devices of a street.  The
 * 4-pushes-in-flight cap (SYNC_EBUSY) bounds what one *connection* holds in
 * memory, but a device that opens many connections, or waits for each ack
 * and sends the next 500 deltas at once, is bounded only by this limit.
 *
 * The bucket: every device starts with `burst` tokens; a push of n deltas
 * takes max(n, 1) tokens; tokens come back at `rate` per second up to
 * `burst`.  A push that finds too few tokens takes none and is answered
 * with the retryable SYNC_ERATE and the number of milliseconds after which
 * the same push would pass (the error frame's `ra`).  A refused push costs
 * nothing, so a device that retries after `ra` always gets through.
 *
 * Defaults (sync_config_default): 5,000 deltas of burst, 200 deltas/s
 * sustained per device.  A week of offline visits (a few thousand deltas)
 * goes through at once; sustained, one device gets at most 200/s, about 1 %
 * of what the writer commits (docs/BENCHMARKS.md), while a whole street
 * syncing normally stays far below it (tests/sync/test_hostile.c,
 * test_rate_limit).
 *
 * Arithmetic is in milli-tokens (uint64): `rate` deltas per second is
 * exactly `rate` milli-tokens per millisecond, so no floating point and no
 * rounding drift.  Invariant: 0 <= b->mtok <= burst * 1000.
 *
 * Threading: none.  The server calls it only from the event-loop thread
 * (where sessions live); the table grows with the number of distinct
 * devices that authenticated (bounded by the registered devices), 24 bytes
 * each.
 */
#include "sync.h"

#include <stdlib.h>
#include <string.h>

typedef struct bucket {
    uint32_t dev;               /* 0 = empty slot (device 0 is the server, never pushes) */
    uint64_t mtok;              /* milli-tokens available at `at` */
    uint64_t at;                /* ms of the last refill */
} bucket;

struct sync_limiter {
    bucket *slot;
    size_t cap, used;           /* cap: power of two; used <= cap / 2 */
    uint64_t refused;           /* pushes answered SYNC_ERATE (for /metrics) */
};

sync_limiter *sync_limiter_new(void)
{
    sync_limiter *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->cap = 64;
    l->slot = calloc(l->cap, sizeof *l->slot);
    if (!l->slot) {
        free(l);
        return NULL;
    }
    return l;
}

void sync_limiter_free(sync_limiter *l)
{
    if (!l) return;
    free(l->slot);
    free(l);
}

static size_t slot_of(const bucket *slot, size_t cap, uint32_t dev)
{
    size_t i = (size_t)(dev * 2654435761u) & (cap - 1); /* Knuth's multiplicative hash */
    while (slot[i].dev && slot[i].dev != dev) i = (i + 1) & (cap - 1);
    return i;
}

static int grow(sync_limiter *l)
{
    size_t cap = l->cap * 2;
    bucket *n = calloc(cap, sizeof *n);
    if (!n) return CRDT_ENOMEM;
    for (size_t i = 0; i < l->cap; i++)
        if (l->slot[i].dev) n[slot_of(n, cap, l->slot[i].dev)] = l->slot[i];
    free(l->slot);
    l->slot = n;
    l->cap = cap;
    return 0;
}

int sync_limiter_take(sync_limiter *l, const sync_config *cfg, uint32_t dev, uint32_t n,
                      uint64_t now_ms, uint64_t *retry_ms)
{
    *retry_ms = 0;
    if (!l || !cfg->device_rate || dev == 0) return SYNC_OK; /* no limit configured */
    uint64_t cap_m = (uint64_t)cfg->device_burst * 1000;
    uint64_t cost = (uint64_t)(n ? n : 1) * 1000;
    size_t i = slot_of(l->slot, l->cap, dev);
    if (!l->slot[i].dev) {
        if (l->used + 1 > l->cap / 2) {
            if (grow(l)) return CRDT_ENOMEM;
            i = slot_of(l->slot, l->cap, dev);
        }
        l->slot[i] = (bucket){dev, cap_m, now_ms};
        l->used++;
    }
    bucket *b = &l->slot[i];
    if (b->mtok > cap_m) b->mtok = cap_m; /* the burst was lowered */
    if (now_ms > b->at) {
        /* Refill; (missing + rate - 1) / rate ms fill the bucket, which also
         * keeps dt * rate from overflowing. */
        uint64_t dt = now_ms - b->at, missing = cap_m - b->mtok;
        if (dt >= (missing + cfg->device_rate - 1) / cfg->device_rate) b->mtok = cap_m;
        else b->mtok += dt * cfg->device_rate;
    }
    b->at = now_ms; /* also when the wall clock stepped back: no refill, no lock-out */
    /* sync_server_new keeps the burst >= the largest push; should a caller
     * not, a push larger than the burst needs a full bucket (never stuck). */
    if (cost > cap_m) cost = cap_m;
    if (b->mtok < cost) {
        *retry_ms = (cost - b->mtok + cfg->device_rate - 1) / cfg->device_rate;
        if (!*retry_ms) *retry_ms = 1;
        l->refused++;
        return SYNC_ERATE;
    }
    b->mtok -= cost;
    return SYNC_OK;
}

uint64_t sync_limiter_refused(const sync_limiter *l) { return l ? l->refused : 0; }
