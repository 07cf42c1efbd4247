/*
 * relay.c — what a store keeps for upward replication (issue 16,
 * docs/SCALE.md): a street server relays every envelope it applied to its
 * district server, which verifies each one back to the phone that signed it.
 *
 * At the district (the receiving store)
 *   A relay is an ordinary enrolled device whose scope is the single entry
 *   STORE_RELAY_SCOPE.  Device ids are each server's own numbering, so the
 *   street's device 7 and another street's device 7 are different phones:
 *   the district gives every (relay, street device) pair a device id of its
 *   own (its "chain device"), under which it keeps that phone's keys, dots,
 *   chain head and state.  The envelope is stored verbatim (its `d` stays
 *   the street's), and records merge it exactly as the street did, so the
 *   district's records are byte for byte the street's.  The street server's
 *   own staff edits (device 0 there) get a chain device like any phone, with
 *   the street's server key as their key.
 *
 *   meta  "rmap" relay(4) dev(4)  -> chain dev(4)
 *         "rdev" chain dev(4)     -> relay(4) dev(4)         (the way back)
 *         "rsrv" relay(4)         -> the street's server public key (32),
 *                                    pinned by the first relayed batch
 *         "rsrk" server key(32)   -> relay(4)                (the way back: one
 *                                    street key, one relay)
 *         "rcom" community        -> relay(4)   the street a community is in:
 *                                    the relay that first brought one of its
 *                                    households (the dashboard's street scope)
 *         "radm" relay(4)         -> aseq(8): the street's audit entries taken
 *                                    (admin records), up to this one
 *
 * At the street (the sending store)
 *   meta  "upstream_cursor"       -> server seq(8): every envelope up to it
 *                                    is durable at the district (acked)
 *         "upstream_acursor"      -> aseq(8): the same for audit entries sent
 *                                    as admin records
 *
 * Invariants
 *   - A mapping, once written, never changes: (relay, dev) -> chain dev is
 *     one-to-one, and chain devs are allocated like enrolled devices
 *     (store_device_next_id), so they never collide with phones enrolled
 *     at the district itself.
 *   - A relay's pinned server key never changes, and no two relays pin the
 *     same key (STORE_ERELAYKEY).
 *   - The upstream cursor only moves forward.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* A u64 in meta under key k (kn bytes): 0 if absent. */
static int meta_u64(store_txn *t, const void *k, size_t kn, uint64_t *out)
{
    MDB_val v;
    *out = 0;
    int rc = store_get(t, DB_META, k, kn, &v);
    if (rc == STORE_ENOTFOUND) return STORE_OK;
    if (rc) return rc;
    if (v.mv_size != 8) return STORE_ECORRUPT;
    *out = rd64(v.mv_data);
    return STORE_OK;
}

/* Set it to x if x is larger (cursors only move forward). */
static int meta_u64_raise(store_txn *t, const void *k, size_t kn, uint64_t x)
{
    uint64_t cur;
    uint8_t v[8];
    int rc = meta_u64(t, k, kn, &cur);
    if (rc || x <= cur) return rc;
    be64(v, x);
    return store_put(t, DB_META, k, kn, v, 8);
}

static void rmap_key(uint8_t k[12], uint32_t relay, uint32_t dev)
{
    memcpy(k, "rmap", 4);
    be32(k + 4, relay);
    be32(k + 8, dev);
}

int store_relay_map(store_txn *t, uint32_t relay, uint32_t dev, const char *label, bool create,
                    uint32_t *out)
{
    uint8_t k[12], rk[8], rv[8], v4[4];
    MDB_val v;
    *out = 0;
    if (!relay) return STORE_EINVAL;
    rmap_key(k, relay, dev);
    int rc = store_get(t, DB_META, k, sizeof k, &v);
    if (rc == STORE_OK) {
        if (v.mv_size != 4) return STORE_ECORRUPT;
        *out = rd32(v.mv_data);
        return *out ? STORE_OK : STORE_ECORRUPT;
    }
    if (rc != STORE_ENOTFOUND || !create) return rc;
    if (!t->rw) return STORE_EREADONLY;
    store_device d;
    memset(&d, 0, sizeof d);
    if ((rc = store_device_next_id(t, &d.id))) return rc;
    d.state = STORE_DEV_ACTIVE;
    d.epoch = 1;
    if (label) snprintf(d.volunteer, sizeof d.volunteer, "%s", label);
    if ((rc = store_device_put(t, &d))) return rc;
    be32(v4, d.id);
    if ((rc = store_put(t, DB_META, k, sizeof k, v4, 4))) return rc;
    memcpy(rk, "rdev", 4);
    be32(rk + 4, d.id);
    be32(rv, relay);
    be32(rv + 4, dev);
    if ((rc = store_put(t, DB_META, rk, sizeof rk, rv, sizeof rv))) return rc;
    *out = d.id;
    return STORE_OK;
}

int store_relay_origin(store_txn *t, uint32_t chain_dev, uint32_t *relay, uint32_t *dev)
{
    uint8_t rk[8];
    MDB_val v;
    memcpy(rk, "rdev", 4);
    be32(rk + 4, chain_dev);
    int rc = store_get(t, DB_META, rk, sizeof rk, &v);
    if (rc) return rc;
    if (v.mv_size != 8) return STORE_ECORRUPT;
    if (relay) *relay = rd32(v.mv_data);
    if (dev) *dev = rd32((const uint8_t *)v.mv_data + 4);
    return STORE_OK;
}

int store_relay_pin(store_txn *t, uint32_t relay, const uint8_t pk[32], bool write)
{
    uint8_t k[8];
    MDB_val v;
    memcpy(k, "rsrv", 4);
    be32(k + 4, relay);
    int rc = store_get(t, DB_META, k, sizeof k, &v);
    if (rc == STORE_OK) {
        if (v.mv_size != 32) return STORE_ECORRUPT;
        return sodium_memcmp(v.mv_data, pk, 32) ? STORE_ERELAYKEY : STORE_OK;
    }
    if (rc != STORE_ENOTFOUND) return rc;
    /* One street, one relay: a key another relay pinned is not this one's
     * (else a relay could pass another street's envelopes off as its own). */
    uint8_t rk[36];
    memcpy(rk, "rsrk", 4);
    memcpy(rk + 4, pk, 32);
    rc = store_get(t, DB_META, rk, sizeof rk, &v);
    if (rc == STORE_OK) return STORE_ERELAYKEY;
    if (rc != STORE_ENOTFOUND) return rc;
    if (!write) return STORE_OK; /* not pinned yet: the commit will pin it */
    uint8_t r4[4];
    be32(r4, relay);
    if ((rc = store_put(t, DB_META, rk, sizeof rk, r4, 4))) return rc;
    return store_put(t, DB_META, k, sizeof k, pk, 32);
}

int store_relay_server_key(store_txn *t, uint32_t relay, uint8_t pk[32])
{
    uint8_t k[8];
    MDB_val v;
    memcpy(k, "rsrv", 4);
    be32(k + 4, relay);
    int rc = store_get(t, DB_META, k, sizeof k, &v);
    if (rc) return rc;
    if (v.mv_size != 32) return STORE_ECORRUPT;
    memcpy(pk, v.mv_data, 32);
    return STORE_OK;
}

int store_upstream_cursor(store_txn *t, uint64_t *sseq)
{
    return meta_u64(t, "upstream_cursor", 15, sseq);
}

int store_upstream_cursor_set(store_txn *t, uint64_t sseq)
{
    return meta_u64_raise(t, "upstream_cursor", 15, sseq);
}

/* ---- which street a community belongs to (the district's street scope) ----------------- */

/* The key "rcom" community of the relay owning household's community, in
 * k[RCOM_KEY_MAX]: STORE_ENOTFOUND when the household is not placed (no
 * community yet), STORE_ECORRUPT for a bad place entry. */
#define RCOM_KEY_MAX (4 + 128)
static int rcom_key(store_txn *t, const char *household, uint8_t k[RCOM_KEY_MAX], size_t *kn)
{
    MDB_val v;
    if (!household || !*household) return STORE_ENOTFOUND;
    int rc = store_get(t, DB_PLACE, household, strlen(household), &v);
    if (rc) return rc;
    const uint8_t *z = memchr(v.mv_data, 0, v.mv_size);
    size_t cl = z ? (size_t)(z - (const uint8_t *)v.mv_data) : 0;
    if (!cl || cl > RCOM_KEY_MAX - 4) return STORE_ECORRUPT;
    memcpy(k, "rcom", 4);
    memcpy(k + 4, v.mv_data, cl);
    *kn = 4 + cl;
    return STORE_OK;
}

/* A relay's name for the audit log: its enrolled label ("" if it has none). */
static int relay_label(store_txn *t, uint32_t relay, store_device *d)
{
    int rc = store_device_get(t, relay, d);
    if (rc == STORE_ENOTFOUND) {
        d->volunteer[0] = 0;
        return STORE_OK;
    }
    return rc;
}

/* A second street brought a household of a community the first one owns:
 * ids that are not unique across the district's streets (two streets'
 * H00001, or the same community code), whose records merge at the
 * district.  Nothing here can tell them apart again, so the district's
 * administrator is told: one audit entry (relay.place_clash) per
 * (community, street), remembered under "rclh" community \0 relay. */
static int note_clash(store_txn *t, uint32_t owner, uint32_t relay, const uint8_t *comm,
                      size_t cl, const char *household, uint64_t now_ms)
{
    uint8_t k[RCOM_KEY_MAX + 1 + 4], one = 1;
    MDB_val v;
    memcpy(k, "rclh", 4);
    memcpy(k + 4, comm, cl);
    k[4 + cl] = 0;
    be32(k + 5 + cl, relay);
    int rc = store_get(t, DB_META, k, 9 + cl, &v);
    if (rc != STORE_ENOTFOUND) return rc; /* told already, or an error */
    store_device od, nd;
    char detail[400];
    if ((rc = relay_label(t, owner, &od)) || (rc = relay_label(t, relay, &nd))) return rc;
    snprintf(detail, sizeof detail,
             "community %.*s belongs to relay %" PRIu32 " (%s); relay %" PRIu32 " (%s) sent "
             "household %.64s in it: ids shared by two streets merge here",
             (int)cl, (const char *)comm, owner, od.volunteer, relay, nd.volunteer, household);
    if ((rc = store_audit_append(t, now_ms, "server", "relay.place_clash", detail, NULL)))
        return rc;
    return store_put(t, DB_META, k, 9 + cl, &one, 1);
}

int store_relay_note_place(store_txn *t, uint32_t relay, const char *household, uint64_t now_ms)
{
    MDB_val v;
    uint8_t k[RCOM_KEY_MAX], r4[4];
    size_t kn;
    int rc = rcom_key(t, household, k, &kn);
    if (rc == STORE_ENOTFOUND) return STORE_OK; /* not placed yet: a later delta will */
    if (rc) return rc;
    rc = store_get(t, DB_META, k, kn, &v);
    if (rc == STORE_OK) {
        if (v.mv_size != 4) return STORE_ECORRUPT;
        uint32_t owner = rd32(v.mv_data);
        return owner == relay ? STORE_OK : note_clash(t, owner, relay, k + 4, kn - 4, household, now_ms);
    }
    if (rc != STORE_ENOTFOUND) return rc;
    be32(r4, relay);
    return store_put(t, DB_META, k, kn, r4, 4);
}

int store_relay_communities(store_txn *t, store_relay_comm_cb cb, void *arg)
{
    MDB_cursor *c;
    MDB_val k, v;
    char comm[129];
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_META], &c);
    if (rc) return store_lmdb_err(rc);
    k.mv_data = "rcom";
    k.mv_size = 4;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 5 || memcmp(k.mv_data, "rcom", 4)) break;
        if (v.mv_size != 4 || k.mv_size - 4 >= sizeof comm) {
            rc = STORE_ECORRUPT;
            break;
        }
        memcpy(comm, (const uint8_t *)k.mv_data + 4, k.mv_size - 4);
        comm[k.mv_size - 4] = 0;
        if ((rc = cb(comm, rd32(v.mv_data), arg))) break;
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND) rc = STORE_OK;
    else if (rc > 0) rc = store_lmdb_err(rc);
    return rc;
}

/* ---- admin records: how far a relay's audit entries were taken -------------------------- */

static void radm_key(uint8_t k[8], uint32_t relay)
{
    memcpy(k, "radm", 4);
    be32(k + 4, relay);
}

int store_relay_admin_cursor(store_txn *t, uint32_t relay, uint64_t *aseq)
{
    uint8_t k[8];
    radm_key(k, relay);
    return meta_u64(t, k, sizeof k, aseq);
}

int store_relay_admin_cursor_set(store_txn *t, uint32_t relay, uint64_t aseq)
{
    uint8_t k[8];
    radm_key(k, relay);
    return meta_u64_raise(t, k, sizeof k, aseq);
}

int store_upstream_admin_cursor(store_txn *t, uint64_t *aseq)
{
    return meta_u64(t, "upstream_acursor", 16, aseq);
}

int store_upstream_admin_cursor_set(store_txn *t, uint64_t aseq)
{
    return meta_u64_raise(t, "upstream_acursor", 16, aseq);
}

int store_relay_of_household(store_txn *t, const char *household, uint32_t *relay)
{
    MDB_val v;
    uint8_t k[RCOM_KEY_MAX];
    size_t kn;
    *relay = 0;
    int rc = rcom_key(t, household, k, &kn);
    if (!rc) rc = store_get(t, DB_META, k, kn, &v);
    if (rc == STORE_ENOTFOUND) return STORE_OK;
    if (rc) return rc;
    if (v.mv_size != 4) return STORE_ECORRUPT;
    *relay = rd32(v.mv_data);
    return STORE_OK;
}
