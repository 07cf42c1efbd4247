/*
 * doorstep_device.h — the Doorstep device library: what a phone app embeds.
 *
 * One handle (dsd) per local store.  A local store is a directory on the
 * phone holding an LMDB environment (records in the device's scope, the
 * durable outbox of signed deltas, the sync cursor, chain state, device id,
 * key epoch, the server's public key) and the device's Ed25519 secret key in
 * its own file (mode 0600, written atomically, read only to sign and wiped
 * from memory right after).
 *
 * Every edit becomes one signed delta: encoded canonically, signed, put in
 * the outbox with the chain state (seq, previous hash, HLC) advanced, and
 * applied to the local record — all in one LMDB write transaction, so a
 * crash at any point loses nothing and duplicates nothing.  Sync pushes the
 * outbox, removes entries only once the server acknowledged them as
 * applied, duplicate or quarantined, and pulls what changed in its scope
 * since its cursor (the cursor moves in the same transaction as the records
 * it covers).
 *
 * Bindings (JNI, Swift): plain C types only; the handle is opaque; every
 * function returns 0 or a negative code and leaves a message for the last
 * failure in the handle (dsd_errmsg).  Memory handed out (dsd_record_get)
 * is freed with dsd_free.
 *
 * Threading: no global state.  A handle must be used by one thread at a
 * time (calls on one handle are not synchronised; a sync running on a
 * worker thread must not overlap an edit on the UI thread — serialise them,
 * e.g. on one dispatch queue).  Distinct handles may be used from distinct
 * threads freely.  Call dsd_global_init() once before the first handle is
 * opened (it initialises libsodium; idempotent and thread-safe).
 *
 * Transport: ws:// only (a small blocking RFC 6455 client in ws.c);
 * wss:// (TLS) is not supported yet and fails with DSD_ETLS.
 */
#ifndef DOORSTEP_DEVICE_H
#define DOORSTEP_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes.  Functions return 0 or a negative code: one of these, or a
 * code the server sent (SYNC_E* -300.., STORE_E* -200.., CRDT_E* / WIRE_E*
 * for a delta it refused).  dsd_strerror() knows all of them. */
enum {
    DSD_OK = 0,
    DSD_EINVAL = -400,        /* bad argument (NULL, unknown field, bad value) */
    DSD_ENOMEM = -401,
    DSD_EIO = -402,           /* file or directory I/O failed (see message) */
    DSD_ELMDB = -403,         /* the local LMDB store failed (see message) */
    DSD_ENOTENROLLED = -404,  /* enroll first */
    DSD_EENROLLED = -405,     /* already enrolled */
    DSD_ENOTFOUND = -406,     /* no such record */
    DSD_ESCOPE = -407,        /* record outside this device's households */
    DSD_ECONNECT = -408,      /* cannot connect / upgrade to WebSocket */
    DSD_ETLS = -409,          /* wss:// requested: TLS is not supported yet */
    DSD_EURL = -410,          /* server URL malformed */
    DSD_ETIMEOUT = -411,      /* server did not answer in time */
    DSD_ECLOSED = -412,       /* connection closed or lost */
    DSD_EPROTO = -413,        /* server sent something the protocol forbids */
    DSD_ESERVERKEY = -414,    /* server key differs from the one pinned at enrollment */
    DSD_ECHAIN = -415,        /* server holds more of this device's chain than the
                               * device (restored from an old backup?) */
    DSD_EBLOCKED = -416,      /* a rejected delta blocks the chain: see dsd_rejected */
    DSD_EKEYFILE = -417,      /* secret key file missing, wrong mode or mismatched */
    DSD_ENOCONFLICT = -418,   /* resolve: the field has a single value */
    DSD_ESCHEMA = -419,       /* schema file could not be loaded (see message) */
    DSD_EREVOKED = -420,      /* the station revoked this device (soft): what was pending
                               * was handed in; no more pulls or edits (see dsd_sync) */
    DSD_EFORGED = -421        /* an envelope the server sent is not signed by the key its
                               * key record (signed by the pinned server key) names:
                               * nothing of that page was applied */
};

/* A static English message for any code (never NULL). */
const char *dsd_strerror(int code);

typedef struct dsd dsd;

/* Initialise libsodium.  0 or DSD_EIO. */
int dsd_global_init(void);

/*
 * dsd_open — open (creating if needed, mode 0700) the local store in `dir`
 * with the record schema from the JSON file `schema_path` (the same file
 * the server uses).  *out receives the handle.  On failure *out is NULL and
 * `err` (if errlen > 0) receives a message.  Returns 0, DSD_EINVAL,
 * DSD_ENOMEM, DSD_EIO, DSD_ELMDB, DSD_ESCHEMA.
 */
int dsd_open(const char *dir, const char *schema_path, dsd **out, char *err, size_t errlen);
/* Close the handle (NULL is a no-op). */
void dsd_close(dsd *h);
/* Simulators and tests only: durable=false skips fsync at commit
 * (MDB_NOSYNC), trading crash durability for speed.  A phone keeps the
 * default (durable).  0 or DSD_ELMDB. */
int dsd_set_durable(dsd *h, bool durable);

/* The message of the last failure on this handle ("" if none). */
const char *dsd_errmsg(const dsd *h);
/* Free memory the library handed out. */
void dsd_free(void *p);

/* ---- identity ------------------------------------------------------------------ */

typedef struct dsd_status {
    uint32_t dev;             /* device id, 0 if not enrolled */
    uint32_t epoch;           /* key epoch */
    uint64_t seq;             /* last seq signed */
    uint8_t head[32];         /* hash of that delta (zeros if none) */
    uint64_t outbox;          /* deltas waiting for the server */
    uint64_t rejected;        /* deltas the server refused (kept aside) */
    uint64_t cursor;          /* server seq pulled up to */
    uint64_t records;         /* local records */
    uint64_t scope;           /* households in scope */
    int64_t clock_offset_ms;  /* correction learned from the server */
    bool rotate_pending;      /* a rotation was started and not confirmed */
    bool revoked;             /* the station revoked this device (soft; see dsd_sync) */
} dsd_status;

int dsd_status_get(dsd *h, dsd_status *out);

/*
 * dsd_enroll — generate the device's key pair (secret key written to its
 * own file) and enroll with a one-time token over `url` (ws://HOST:PORT,
 * path /sync by default).  On success the device id, key epoch 1, the
 * server's public key (pinned from now on) and the scope are stored, and
 * the records in scope are pulled.  Returns 0, DSD_EENROLLED, transport
 * errors, or the server's code (STORE_ETOKEN_USED -216,
 * STORE_ETOKEN_EXPIRED -217, STORE_ENOTFOUND -209: token unknown).
 */
int dsd_enroll(dsd *h, const char *url, const char *token);

/* ---- editing ------------------------------------------------------------------- */

/*
 * An edit gathers ops on one record and commits them as one signed delta.
 * Values and keys are given as text and converted by the field's schema
 * type (int fields: decimal; bool: "true"/"false"; everything else as is).
 * Ops are checked against the schema at commit (dsd_edit_commit returns the
 * schema's code, e.g. CRDT_EIDNUM -54 for a bad ID number).
 *   set:    lww and mv fields.  An mv write observes every value currently
 *           visible locally, so it replaces them (concurrent writes made
 *           elsewhere stay side by side as a conflict).
 *   add/remove: set fields; remove observes the element's visible adds.
 *   append: log fields; names[i] = values[i] members of the entry.
 *   inc:    counter fields.  raise: stage fields.  delete: tombstone.
 * `key` is the field key for keyed fields (e.g. the year of "payment"),
 * NULL otherwise.  A failed op leaves the edit usable (the op is dropped).
 */
typedef struct dsd_edit dsd_edit;

int dsd_edit_begin(dsd *h, const char *kind, const char *id, dsd_edit **out);
int dsd_edit_set(dsd_edit *e, const char *field, const char *key, const char *value);
int dsd_edit_add(dsd_edit *e, const char *field, const char *elem);
int dsd_edit_remove(dsd_edit *e, const char *field, const char *elem);
int dsd_edit_append(dsd_edit *e, const char *field, const char *const *names,
                    const char *const *values, size_t n);
int dsd_edit_inc(dsd_edit *e, const char *field, int64_t amount);
int dsd_edit_raise(dsd_edit *e, const char *field, const char *stage);
int dsd_edit_delete(dsd_edit *e);
/* Sign, put in the outbox, apply locally — one transaction.  Frees e
 * whatever the result; *seq (may be NULL) receives the delta's seq.
 * Returns 0, DSD_ENOTENROLLED, DSD_ESCOPE, DSD_EKEYFILE, a CRDT_E* schema
 * code, DSD_ELMDB, DSD_EIO. */
int dsd_edit_commit(dsd_edit *e, uint64_t *seq);
void dsd_edit_abort(dsd_edit *e);

/* Convenience edits (each one delta). */
int dsd_household_create(dsd *h, const char *id, const char *community, const char *grid,
                         const char *address);
int dsd_person_create(dsd *h, const char *id, const char *household, const char *name,
                      const char *id_number, const char *gender, const char *birth_date,
                      const char *relation);
int dsd_set(dsd *h, const char *kind, const char *id, const char *field, const char *key,
            const char *value);
int dsd_tag_add(dsd *h, const char *person, const char *tag);
int dsd_tag_remove(dsd *h, const char *person, const char *tag);
/* A visit entry on a household or person (`visits` log); result, service
 * and note may be NULL. */
int dsd_visit_append(dsd *h, const char *kind, const char *id, const char *date,
                     const char *method, const char *result, const char *service,
                     const char *note);
int dsd_stage_raise(dsd *h, const char *person, const char *field, const char *stage);
/* Resolve a conflict this device sees: write `value` to an mv field,
 * observing all current values.  DSD_ENOCONFLICT if there is only one. */
int dsd_resolve(dsd *h, const char *kind, const char *id, const char *field, const char *key,
                const char *value);

/* ---- reading ------------------------------------------------------------------- */

/* Canonical record bytes (crdt_record_encode), malloc'd into *p (dsd_free).
 * Returns 0, DSD_ENOTFOUND. */
int dsd_record_get(dsd *h, const char *kind, const char *id, uint8_t **p, size_t *n);
/* Number of values currently visible in a field instance (an mv field with
 * more than one is a conflict); 0 if absent. */
int dsd_field_count(dsd *h, const char *kind, const char *id, const char *field,
                    const char *key, uint32_t *count);
/* The first visible value of a text-like field as a NUL-terminated string
 * (out gets "" if absent).  0, DSD_ENOTFOUND, DSD_EINVAL (too small). */
int dsd_field_text(dsd *h, const char *kind, const char *id, const char *field,
                   const char *key, char *out, size_t cap);
/* cb(kind, id, canonical bytes, len, arg) for every local record of `kind`
 * (NULL: all), in key order; the bytes are borrowed for the call.  cb
 * returning non-zero stops the walk (that value is returned). */
typedef int (*dsd_record_cb)(const char *kind, const char *id, const uint8_t *p, size_t n,
                             void *arg);
int dsd_record_foreach(dsd *h, const char *kind, dsd_record_cb cb, void *arg);
/* cb for each household in scope (kind "household", bytes NULL). */
int dsd_scope_foreach(dsd *h, dsd_record_cb cb, void *arg);
/* cb(seq, code, message, arg) for each delta the server rejected. */
typedef int (*dsd_rejected_cb)(uint64_t seq, int code, const char *msg, void *arg);
int dsd_rejected_foreach(dsd *h, dsd_rejected_cb cb, void *arg);

/* ---- sync ---------------------------------------------------------------------- */

typedef struct dsd_sync_opts {
    int timeout_ms;           /* per server answer (default 10000) */
    int live_ms;              /* > 0: after pulling, subscribe and apply live
                               * changes for this long */
    bool no_push;             /* pull only (tests, metered networks) */
    bool no_pull;             /* push only */
    /* Tests only: after sending this many push frames, drop the connection
     * without waiting for acks (0 = never). */
    uint32_t test_drop_after_pushes;
} dsd_sync_opts;

typedef struct dsd_sync_report {
    uint64_t pushed;          /* deltas acked applied or duplicate */
    uint64_t quarantined;     /* deltas the server kept aside */
    uint64_t rejected;        /* deltas the server refused */
    uint64_t resent;          /* deltas sent again (gaps, busy server) */
    uint64_t pulled;          /* envelopes applied from the server */
    uint64_t purged;          /* records dropped because they left the scope */
    uint32_t rounds;          /* push rounds */
    bool rotated;             /* the key was rotated in this session */
    bool filled;              /* the scope grew: pulled again from the start */
    bool revoked;             /* soft-revoked: the outbox was handed in, nothing pulled */
} dsd_sync_report;

/*
 * dsd_sync — connect to `url`, authenticate (pinning the server key),
 * handle the welcome (drop outbox entries the server already holds, correct
 * the clock, purge records that left the scope and refill when it grew,
 * rotate the key if the station requires it), push the outbox (batches of
 * at most 500, at most 4 in flight), pull changes from the cursor, and
 * optionally stay subscribed for opts->live_ms.  opts and rep may be NULL.
 * Returns 0 or the first error (what was done before it stays done).
 *
 * A soft-revoked device (a lost or retired phone, docs/ADMIN.md) still
 * authenticates: dsd_sync then hands in the whole outbox (the server keeps
 * what it did not hold at revocation in quarantine for review; acks count in
 * rep->quarantined), pulls nothing, records the revocation on disk and
 * returns DSD_EREVOKED with rep->revoked set.  From then on dsd_sync hands in
 * nothing new (there is nothing: edits are refused with DSD_EREVOKED) and
 * dsd_status reports revoked; the application should tell the volunteer and
 * delete the device directory.  A hard-revoked device is refused at
 * authentication: -305 (SYNC_EREVOKED), nothing sent.
 */
int dsd_sync(dsd *h, const char *url, const dsd_sync_opts *opts, dsd_sync_report *rep);

/*
 * dsd_rotate — rotate the device key now (over a fresh connection): a new
 * key pair, the hand-over signed by the old key (sealing the last seq it
 * signed) and countersigned by the new one.  Crash-safe: a rotation the
 * server confirmed but the device did not record is completed on the next
 * connection.  Returns 0 or an error.
 */
int dsd_rotate(dsd *h, const char *url, const dsd_sync_opts *opts);

/*
 * dsd_schema_fetch — the record schema the server checks deltas with, as its
 * JSON text (the format of crdt/schema/yibao.json, docs/SCHEMA.md), over a
 * fresh authenticated connection.  The server signs it (PROTOCOL.md,
 * `schema`); the signature is checked with the server key pinned at
 * enrollment (DSD_EFORGED if it fails).  On success *json (n bytes, not
 * NUL-terminated) is malloc'd: free it with dsd_free.  An application saves
 * it and passes the file to dsd_open, so it needs no copy of its own.
 */
int dsd_schema_fetch(dsd *h, const char *url, const dsd_sync_opts *opts, uint8_t **json,
                     size_t *n);

/*
 * Channels: an authenticated connection for a device that is not a phone
 * (a street server relaying to its district: sync/upstream.c).  The
 * library does what it does for dsd_sync up to the welcome (connect,
 * check the pinned server key, auth, rotation if required, soft
 * revocation: DSD_EREVOKED); the caller then speaks its own frames.
 *
 * dsd_chan_open   connect and authenticate; *out is the channel.  Returns 0
 *                 or the errors of dsd_sync.  timeout_ms <= 0: 10 s.
 * dsd_chan_send   send one frame (msgpack bytes).  0 or DSD_ECLOSED.
 * dsd_chan_recv   the next frame from the server: *p, *n stay valid until
 *                 the next call.  An error frame carrying a request id is
 *                 returned as a frame (type "error"); one without is its
 *                 code.  0, DSD_ETIMEOUT, DSD_ECLOSED, DSD_EPROTO.
 * dsd_chan_device the device id the channel authenticated as.
 * dsd_chan_close  close (abort: without a close frame) and free.
 */
typedef struct dsd_chan dsd_chan;
int dsd_chan_open(dsd *h, const char *url, int timeout_ms, dsd_chan **out);
int dsd_chan_send(dsd_chan *ch, const uint8_t *p, size_t n);
int dsd_chan_recv(dsd_chan *ch, int timeout_ms, const uint8_t **p, size_t *n);
uint32_t dsd_chan_device(const dsd_chan *ch);
void dsd_chan_close(dsd_chan *ch, bool abort);

#ifdef __cplusplus
}
#endif
#endif /* DOORSTEP_DEVICE_H */
