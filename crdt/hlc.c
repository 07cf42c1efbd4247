/*
 * hlc.c — hybrid logical clock (Kulkarni et al.), 48-bit ms + 16-bit counter.
 *
 * Invariants
 *   - A clock state never decreases: every successful call returns a value
 *     strictly greater than the state it was given.
 *   - The ms part never exceeds CRDT_HLC_MS_MAX; a call that would need more
 *     fails with CRDT_EHLC_RANGE and leaves the state unchanged.
 *   - Wall time is a parameter: this file reads no clock.
 */
#include "crdt.h"

/* Smallest HLC strictly greater than both `a` and the wall time `wall`. */
static int hlc_next(crdt_hlc a, uint64_t wall_ms, crdt_hlc *out)
{
    uint64_t ms = CRDT_HLC_MS(a);
    uint32_t ctr = CRDT_HLC_CTR(a);
    if (wall_ms > ms) {
        *out = CRDT_HLC_MAKE(wall_ms, 0);
        return CRDT_OK;
    }
    if (ctr < 0xffffu) {
        *out = CRDT_HLC_MAKE(ms, ctr + 1);
        return CRDT_OK;
    }
    /* Counter exhausted within one ms: borrow the next millisecond. */
    if (ms >= CRDT_HLC_MS_MAX) return CRDT_EHLC_RANGE;
    *out = CRDT_HLC_MAKE(ms + 1, 0);
    return CRDT_OK;
}

int crdt_hlc_now(crdt_hlc *state, uint64_t wall_ms, crdt_hlc *out)
{
    crdt_hlc r = 0;
    int rc;
    if (!state || !out) return CRDT_EINVAL;
    *out = 0;
    if (wall_ms > CRDT_HLC_MS_MAX) return CRDT_EHLC_RANGE;
    rc = hlc_next(*state, wall_ms, &r);
    if (rc) return rc;
    *state = *out = r;
    return CRDT_OK;
}

int crdt_hlc_recv(crdt_hlc *state, crdt_hlc remote, uint64_t wall_ms,
                  uint64_t max_drift_ms, crdt_hlc *out)
{
    crdt_hlc r = 0;
    int rc;
    if (!state || !out) return CRDT_EINVAL;
    *out = 0;
    if (wall_ms > CRDT_HLC_MS_MAX) return CRDT_EHLC_RANGE;
    if (CRDT_HLC_MS(remote) > wall_ms &&
        CRDT_HLC_MS(remote) - wall_ms > max_drift_ms)
        return CRDT_EHLC_DRIFT;
    crdt_hlc base = *state > remote ? *state : remote;
    rc = hlc_next(base, wall_ms, &r);
    if (rc) return rc;
    *state = *out = r;
    return CRDT_OK;
}
