/*
 * store.h — Doorstep's LMDB store: durable deltas, merged records, scoped
 * feeds, indexes, aggregates, sealing at rest.
 *
 * One public header for the store/ layer (uses crdt/ and wire/).
 *
 * Processes.  doorstepd and doorstepctl open the same data directory at the
 * same time; LMDB's lock file arbitrates.  Nothing here assumes a single
 * process: the server sequence, chain heads and aggregates live only in the
 * database and are read inside the write transaction that changes them.
 *
 * Transactions.  Every read and write happens in an explicit store_txn.
 * store_commit consumes the transaction whether it succeeds or not; after
 * a failed commit nothing of the transaction is visible.  Borrowed results
 * (STORE_BORROWED in a comment) live until the transaction ends.  Never keep
 * a read transaction across event-loop turns (DESIGN.md §10).
 *
 * Sealing.  Every value that holds personal data (envelopes, records,
 * quarantine entries) is sealed with XChaCha20-Poly1305 under a data key
 * kept in a separate key file; the associated data is the database's name
 * and the value's key, so a sealed value cannot be moved to another key or
 * database undetected.  (A record one delta made is kept as a reference to
 * that delta, which is sealed in the log: see store_get_record.)  Exact
 * lookups (ID number, phone, name) go through BLAKE2b keyed with a key of
 * its own, derived from the same master key.
 *
 * Errors: 0 or a negative STORE_E* code (or CRDT_E* or WIRE_E* passed through);
 * store_strerror() covers all three ranges.  Retryable errors
 * (store_retryable()) mean "nothing was written; try the same thing later".
 */
#ifndef DOORSTEP_STORE_H
#define DOORSTEP_STORE_H

#include "crdt.h"
#include "wire.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    STORE_OK = 0,
    STORE_ENOTINIT = -200,    /* data directory was never initialised */
    STORE_EEXIST = -201,      /* init: a store already exists there */
    STORE_EKEYFILE = -202,    /* key file missing, unreadable, wrong mode or wrong key */
    STORE_EFORMAT = -203,     /* store written by an incompatible version */
    STORE_ELMDB = -204,       /* unexpected LMDB error (see the log) */
    STORE_EMAPFULL = -205,    /* map at its maximum size: retryable after cleanup */
    STORE_ENOSPC = -206,      /* disk full: retryable */
    STORE_EIO = -207,         /* I/O error: retryable; the env may need reopening */
    STORE_ECORRUPT = -208,    /* a value failed to unseal, decompress or decode */
    STORE_ENOTFOUND = -209,   /* no such record / device / key */
    STORE_EGAP = -210,        /* delta seq is not the next one (see expected_seq) */
    STORE_EREADONLY = -211,   /* write attempted in a read-only transaction */
    STORE_EBUSY = -212,       /* too many readers, or txn already open in thread */
    STORE_ESCHEMA = -213,     /* schema lacks a field the store's model needs */
    STORE_EVERIFY = -214,     /* verify found a difference (see report) */
    STORE_EINVAL = -215,
    STORE_ETOKEN_USED = -216,    /* enrollment token already redeemed */
    STORE_ETOKEN_EXPIRED = -217, /* enrollment token past its expiry */
    STORE_EBADPASS = -218,       /* wrong password */
    STORE_ELOCKED = -219,        /* account locked after too many failures */
    STORE_EDISABLED = -220,      /* account disabled */
    STORE_ERELAYKEY = -221       /* a relay presents another server key than it pinned */
};

const char *store_strerror(int code);
bool store_retryable(int code);

/* ---- opening ----------------------------------------------------------------- */

typedef struct store store;
typedef struct store_txn store_txn;

typedef struct store_opts {
    size_t map_initial;        /* bytes; default 1 GiB of address space (the
                                  file grows only as used) */
    size_t map_max;            /* bytes; default 1 TiB */
    uint32_t campaign_year;    /* the year aggregates count; default: from meta */
    bool no_sync;              /* tests only: MDB_NOSYNC */
} store_opts;

/*
 * store_init — create a new store in `dir` (created 0700 if missing) and a
 * new master key in `key_file` (created 0600; refuses to overwrite; its
 * directory must not be `dir`).  Writes meta: format version, the schema
 * (the JSON text at schema_path, validated), a new server Ed25519 key pair
 * (secret part sealed), HLC high-water mark 0, campaign year.
 * Returns 0, STORE_EEXIST, STORE_EKEYFILE, WIRE_E* or CRDT_ESCHEMA (schema),
 * STORE_ELMDB, STORE_EIO; err receives a one-line message naming the path.
 */
int store_init(const char *dir, const char *key_file, const char *schema_path,
               uint32_t campaign_year, char *err, size_t errlen);

/*
 * store_open — open an initialised store.  Clears stale reader slots
 * (mdb_reader_check), checks the format version and that the key file's key
 * unseals the store's canary, loads the schema.  Returns 0,
 * STORE_ENOTINIT (message says to run `doorstepctl --data DIR init`),
 * STORE_EKEYFILE, STORE_EFORMAT, STORE_ELMDB, STORE_ESCHEMA.
 */
int store_open(const char *dir, const char *key_file, const store_opts *opts,
               store **out, char *err, size_t errlen);

/* The default data key file for a data directory: DIR.key, beside it (never
 * inside it).  Returns a malloc'd string, or NULL on ENOMEM. */
char *store_default_key_file(const char *dir);
void store_close(store *s);

const crdt_schema *store_schema(const store *s);
/* The schema's JSON text exactly as stored (what store_schema was loaded
 * from), *n bytes; owned by the store, valid until store_close. */
const uint8_t *store_schema_json(const store *s, size_t *n);
/* The server's public key (for hello frames and snapshot signatures). */
const uint8_t *store_server_pk(const store *s);
uint32_t store_campaign_year(const store *s);

/* ---- transactions -------------------------------------------------------- */

enum { STORE_RDONLY = 1, STORE_RW = 2 };

/* Begin a transaction.  A write transaction blocks while another (in any
 * process) is open.  Returns 0, STORE_EBUSY, STORE_ELMDB. */
int store_begin(store *s, int mode, store_txn **out);
/* Commit and free.  Returns 0 or STORE_ENOSPC/STORE_EIO/STORE_EMAPFULL/
 * STORE_ELMDB (then nothing was written). */
int store_commit(store_txn *t);
void store_abort(store_txn *t);

/*
 * store_grow — after STORE_EMAPFULL, double the map up to opts.map_max.
 * Waits until no thread of this process has a transaction open (every
 * transaction holds a shared lock that resizing takes exclusively), so the
 * calling thread must not hold one.  Returns 0, STORE_EMAPFULL
 * (already at the maximum) or STORE_ELMDB.
 */
int store_grow(store *s);

/* Sign msg with the server's Ed25519 key (unsealed from meta inside t,
 * wiped after use).  The caller puts its own domain string in msg.
 * Returns 0, STORE_ECORRUPT, or an LMDB error; sig zeroed on failure. */
int store_server_sign(store_txn *t, const uint8_t *msg, size_t n, uint8_t sig[64]);

/*
 * store_reopen — close and reopen the LMDB environment (after a failed
 * fsync: the kernel may have dropped pages LMDB believes written, so its
 * in-memory state is not trusted; reopening reads the last durable meta
 * page back from disk).  Waits until no other transaction of this process
 * is open; the caller holds none.  Returns 0 or an open error (err set);
 * on failure the store must not be used for writes until a reopen works.
 */
int store_reopen(store *s, char *err, size_t errlen);

/* Map use for /metrics: bytes in used pages and the current map size. */
void store_map_usage(store *s, size_t *used, size_t *size);
/* The largest the map may grow (opts.map_max, or the file's size if that is
 * larger): at it, writes fail with STORE_EMAPFULL. */
size_t store_map_max(const store *s);

/* ---- appending deltas ------------------------------------------------------ */

typedef enum store_result {
    STORE_APPLIED = 1,      /* merged; sseq assigned */
    STORE_DUPLICATE = 2,    /* same (device, seq) with the same hash already held */
    STORE_QUARANTINED = 3,  /* kept aside with a reason; not merged */
    STORE_REJECTED = 4      /* refused with a code; nothing stored */
} store_result;

enum {  /* quarantine reasons */
    STORE_Q_CLOCK_AHEAD = 1,  /* HLC more than the allowed drift ahead */
    STORE_Q_CLONE = 2,        /* same dot, different content; device frozen */
    STORE_Q_FROZEN = 3,       /* device frozen (after a clone) */
    STORE_Q_REVOKED = 4,      /* device revoked (soft: beyond held seq; hard) */
    STORE_Q_SEALED = 5,       /* old key beyond its sealed seq */
    STORE_Q_FORK = 6,         /* prev hash does not match the chain head */
    STORE_Q_SCOPE = 7,        /* outside the device's scope when it arrived */
    STORE_Q_UNVERIFIED = 8    /* relayed, and fails the checks here (signature,
                               * key record, decoding, schema): never merged */
};
const char *store_qreason_name(int reason);

typedef struct store_outcome {
    uint8_t result;           /* store_result */
    int code;                 /* REJECTED: the error; QUARANTINED: reason */
    uint64_t sseq;            /* APPLIED/DUPLICATE: server seq of the delta */
    uint64_t expected_seq;    /* STORE_EGAP: the seq the server expects */
    char household[CRDT_RECID_MAX + 1]; /* APPLIED: the household whose feed
                                         * it joined ("" if none) */
} store_outcome;

/* A delta ready to append: envelope bytes plus what the caller decoded and
 * checked (schema) and verified (signature) — typically on a worker thread. */
typedef struct store_item {
    const uint8_t *env;       /* envelope bytes, stored verbatim */
    size_t env_len;
    const crdt_delta *delta;  /* decoded from the envelope's delta bytes */
    uint8_t hash[CRDT_HASH_BYTES]; /* wire_delta_hash of the delta bytes */
    uint8_t quarantine;       /* 0, or a STORE_Q_* reason: hold it back.
                               * STORE_Q_SCOPE holds it after the chain
                               * checks and advances the chain (like a clock
                               * ahead): the delta is authentic and in order,
                               * only its content is outside policy. */
    /* Relayed deltas (a street's envelopes at its district, relay.c): the
     * device id this store keeps the delta's chain, dots and device state
     * under (the delta's own `d` is another server's numbering; 0: the
     * delta's d), and relayed = true: the chain is not checked for gaps or
     * forks (the street checked it, and it relays deltas an admin accepted
     * from quarantine after later ones), only for duplicates and clones. */
    uint32_t chain_dev;
    bool relayed;
} store_item;

/*
 * store_append — append one verified delta in the caller's write txn:
 * dot idempotency; device chain (next seq, prev hash = head hash); server
 * seq; envelope stored sealed; merge into the record; feed, household,
 * grid and lookup indexes; aggregates.  Quarantines a delta whose HLC is
 * more than max_ahead_ms ahead of now_ms, and clones/forks (freezing the
 * device).  All-or-nothing per delta.
 * Returns 0 with *out filled (any result), or a retryable/fatal error
 * (STORE_EMAPFULL, STORE_ENOSPC, STORE_EIO, STORE_ELMDB, CRDT_ENOMEM): then
 * the transaction must be aborted.
 */
int store_append(store_txn *t, const store_item *it, uint64_t now_ms,
                 uint64_t max_ahead_ms, store_outcome *out);

/*
 * store_append_batch — group commit: one write transaction for n envelopes
 * (decoding and schema-checking them; signatures must have been verified by
 * the caller), committed before returning.  Grows the map and retries on
 * MDB_MAP_FULL.  outs[i] is the outcome of envs[i]; an envelope that does
 * not decode or fails the schema is REJECTED with its code.  Returns 0 (all
 * outcomes durable) or an error (nothing committed; outcomes zeroed).
 */
int store_append_batch(store *s, const uint8_t *const *envs, const size_t *lens,
                       size_t n, uint64_t now_ms, uint64_t max_ahead_ms,
                       store_outcome *outs);

/* The device's chain head: last seq held and its hash (zeros if none). */
int store_chain_head(store_txn *t, uint32_t dev, uint64_t *seq,
                     uint8_t hash[CRDT_HASH_BYTES]);
/* The greatest HLC merged so far (meta "hlc_hwm"); the server's own clock
 * for deltas it signs (staff edits) must run past it. */
int store_hlc_hwm(store_txn *t, crdt_hlc *out);
/* Highest server seq assigned so far (0 if empty). */
int store_last_sseq(store_txn *t, uint64_t *sseq);
/* The envelope with server seq `sseq`, unsealed into *out (replaced);
 * STORE_ENOTFOUND if the log does not hold it.  Also sees envelopes this
 * write txn appended (log.c). */
int store_get_envelope(store_txn *t, uint64_t sseq, crdt_buf *out);

/* ---- devices (the part the append path needs; keys and tokens: issue #6) -- */

enum {
    STORE_DEV_ACTIVE = 1,
    STORE_DEV_FROZEN = 2,        /* clone or fork detected; admin must act */
    STORE_DEV_REVOKED_SOFT = 3,  /* lost/retired: seqs <= revoked_at_seq stay valid */
    STORE_DEV_REVOKED_HARD = 4   /* compromised: everything after revocation held */
};

/* "active", "frozen", "revoked_soft", "revoked_hard" or "unknown": the names
 * doorstepctl prints, the dashboard's JSON carries and the audit log uses. */
const char *store_device_state_name(uint8_t state);

typedef struct store_device {
    uint32_t id;
    uint8_t state;               /* STORE_DEV_* */
    uint32_t epoch;              /* current key epoch */
    uint64_t revoked_at_seq;     /* soft revocation: highest seq held then */
    uint64_t created_ms;
    uint64_t last_sync_ms;       /* server time of its last sync step (auth, push
                                  * acked, pull, snapshot): store_device_seen */
    char volunteer[64];          /* NUL-terminated */
    uint8_t flags;               /* STORE_DEVF_* */
} store_device;

enum { STORE_DEVF_ROTATE_REQUIRED = 1 };  /* rotate the key before pushing */

/* Create or replace a device record.  Also bumps the admin generation
 * (store_admin_gen), so a server in another process notices within its
 * polling interval that a device was revoked, frozen or changed.
 * 0 or an LMDB error. */
int store_device_put(store_txn *t, const store_device *d);

/* The device synced at ms (server time): raise its last_sync_ms to ms (a
 * smaller ms changes nothing).  Unlike store_device_put it does not bump
 * the admin generation: a sync is not an administrative change.  Returns
 * 0, STORE_ENOTFOUND, or an LMDB error. */
int store_device_seen(store_txn *t, uint32_t dev, uint64_t ms);

typedef struct store_seen {
    uint32_t dev;
    uint64_t ms;
} store_seen;
/* A counter bumped by every device change (any process). 0 if never. */
int store_admin_gen(store_txn *t, uint64_t *gen);
/* The next free device id (greatest id in use + 1; ids start at 1). */
int store_device_next_id(store_txn *t, uint32_t *id);
/* 0, STORE_ENOTFOUND, STORE_ECORRUPT. */
int store_device_get(store_txn *t, uint32_t id, store_device *out);

/* A device's scope: the households whose records it may edit and receive.
 * _set replaces the whole list (ids must be valid record ids); _get fills
 * *out sorted (free with store_ids_free).  A scope given as grids is
 * expanded to the grids' households by the caller (store_grid_households)
 * when it is assigned.  0, STORE_EINVAL, or an LMDB error. */
typedef struct store_ids store_ids;
int store_device_scope_set(store_txn *t, uint32_t dev, const char *const *households,
                           size_t n);
int store_device_scope_get(store_txn *t, uint32_t dev, store_ids *out);

/* ---- quarantine (listing and review: issue #6) ---------------------------- */

typedef struct store_qentry {
    uint64_t qid;
    uint8_t reason;              /* STORE_Q_* */
    uint32_t dev;
    uint64_t seq;
    uint64_t at_ms;              /* server time of receipt */
    crdt_buf env;                /* owned: envelope bytes */
} store_qentry;

/* Number of quarantine entries; the entry qid (env owned by caller). */
int store_quarantine_count(store_txn *t, uint64_t *n);
/* Keep env (n bytes, verbatim) in quarantine for `reason` (a STORE_Q_*),
 * naming device dev and seq (0 and 0 when it could not be decoded), without
 * looking at it: for envelopes that never reach store_append (a relayed
 * envelope that fails verification, STORE_Q_UNVERIFIED).  Returns 0,
 * STORE_EINVAL, STORE_EREADONLY, CRDT_ENOMEM or an LMDB error. */
int store_quarantine_put(store_txn *t, uint8_t reason, uint32_t dev, uint64_t seq,
                         uint64_t now_ms, const uint8_t *env, size_t n);
int store_quarantine_get(store_txn *t, uint64_t qid, store_qentry *out);

/* ---- reading records ------------------------------------------------------- */

/* The merged record kind/id (owned by caller: crdt_record_free): decoded
 * from its value, or, for a record one delta made (kept as a reference to
 * it, format 4), that delta read from the log and applied again.
 * Returns 0, STORE_ENOTFOUND, STORE_ECORRUPT, CRDT_ENOMEM. */
int store_get_record(store_txn *t, const char *kind, const char *id,
                     crdt_record **out);

/*
 * store_feed — the envelopes touching any of `households` with server seq
 * > after, in server order, at most `limit`; for each, cb(sseq, env, len,
 * arg) with env borrowed for the call.  *next receives the cursor to resume
 * from (the last sseq delivered, or `after` if none).  Cost is proportional
 * to the households and the page, never to the whole log.  cb returning
 * non-zero stops early (that value is returned).
 */
typedef int (*store_feed_cb)(uint64_t sseq, const uint8_t *env, size_t len, void *arg);
int store_feed(store_txn *t, const char *const *households, size_t n_households,
               uint64_t after, size_t limit, store_feed_cb cb, void *arg,
               uint64_t *next);

/* Person ids in a household, sorted; ids copied into *ids (caller frees
 * with store_ids_free). */
struct store_ids {
    size_t n;
    char (*id)[CRDT_RECID_MAX + 1];
};
void store_ids_free(store_ids *ids);
int store_household_members(store_txn *t, const char *household, store_ids *out);
/* Households of a grid (community, grid), sorted by id, after `after` (""
 * for the first page), at most limit. */
int store_grid_households(store_txn *t, const char *community, const char *grid,
                          const char *after, size_t limit, store_ids *out);

enum { STORE_LOOKUP_IDNUM = 1, STORE_LOOKUP_PHONE = 2, STORE_LOOKUP_NAME = 3 };
/* Exact lookup through the keyed-hash index: person ids whose field
 * currently holds `value` (any side of a conflict counts). */
int store_lookup(store_txn *t, int what, const char *value, size_t len,
                 store_ids *out);

/* ---- aggregates ------------------------------------------------------------- */

#define STORE_MAX_GROUPS 16
typedef struct store_agg {
    int64_t persons;          /* living persons on file (not tombstoned) */
    int64_t enrolled;         /* with payment recorded for the campaign year */
    int64_t paid;             /* paid (incl. paid on their behalf) this year */
    int64_t group[STORE_MAX_GROUPS];         /* persons per key-group tag */
    int64_t group_unenrolled[STORE_MAX_GROUPS]; /* ... not enrolled this year */
    int64_t visits_week;      /* visit log entries dated in the current week */
} store_agg;

/* Key-group names, in the order of store_agg.group[] (from the schema's
 * tags enum); *n receives the count. */
const char *const *store_group_names(const store *s, size_t *n);

/* Aggregates of one grid, or of a whole community when grid is NULL, or of
 * the whole station when both are NULL; visits for the ISO week containing
 * now_ms.  Reads the maintained aggregates: never scans records. */
int store_agg_get(store_txn *t, const char *community, const char *grid,
                  uint64_t now_ms, store_agg *out);

/*
 * Coverage over the campaign.  Aggregates hold the current state only, so
 * the server snapshots them (store_agg_snapshot, from its timer) into a
 * daily history: for the day of now_ms, the station ("" community) and each
 * community: persons, enrolled, paid (a later snapshot the same day
 * replaces the earlier one).  store_agg_history calls cb for each stored
 * day in [from_day, to_day] (days since 1970-01-01, UTC) of one community
 * ("" for the station), in day order.  Both read aggregates, never records.
 */
int store_agg_snapshot(store_txn *t, uint64_t now_ms);
typedef int (*store_hist_cb)(uint32_t day, int64_t persons, int64_t enrolled, int64_t paid,
                             void *arg);
int store_agg_history(store_txn *t, const char *community, uint32_t from_day, uint32_t to_day,
                      store_hist_cb cb, void *arg);

/* ---- backup and verify ---------------------------------------------------- */

/* Hot, compacting copy of the environment into the new directory dest
 * (mdb_env_copy2 with MDB_CP_COMPACT) while writers run. */
int store_backup(store *s, const char *dest, char *err, size_t errlen);

/*
 * store_verify — rebuild every record and aggregate from the delta log and
 * compare byte for byte with what is stored; check every index entry and
 * every device chain.  Writes a human-readable line per problem to report
 * (if not NULL).  Returns 0 (consistent), STORE_EVERIFY, or an error.
 */
typedef void (*store_report_fn)(void *arg, const char *line);
int store_verify(store *s, store_report_fn report, void *arg, uint64_t *problems);

/* ---- keys, enrollment tokens, staff accounts, audit (admin.c) ---- */

/*
 * Device keys.  One record per (device, key epoch): the Ed25519 public key
 * and what became of it.  Epochs start at 1 and are assigned by the caller
 * (the enrollment and rotation logic); the device record's `epoch` is the
 * caller's to keep in step.  Nothing here reads a clock: times are passed in.
 */
enum {
    STORE_KEY_ACTIVE = 1,    /* signs new deltas */
    STORE_KEY_RETIRED = 2,   /* rotated out: deltas with seq <= sealed_seq stay valid */
    STORE_KEY_REVOKED = 3    /* no longer trusted (device revocation decides what stays) */
};

typedef struct store_key {
    uint32_t dev;
    uint32_t epoch;              /* >= 1 */
    uint8_t state;               /* STORE_KEY_* */
    uint8_t pk[32];              /* Ed25519 public key */
    uint64_t sealed_seq;         /* RETIRED: last seq signed with this key */
    uint64_t created_ms;         /* server time the key was registered */
    uint64_t changed_ms;         /* server time of the last state change */
} store_key;

/* Create or replace the key (k->dev, k->epoch) in a write txn.  Returns 0,
 * STORE_EINVAL (epoch 0 or unknown state), STORE_EREADONLY, or an LMDB error. */
int store_key_put(store_txn *t, const store_key *k);
/* The key (dev, epoch) into *out.  Returns 0, STORE_ENOTFOUND, STORE_ECORRUPT
 * (*out zeroed on failure). */
int store_key_get(store_txn *t, uint32_t dev, uint32_t epoch, store_key *out);
/* The device's current key: its ACTIVE key with the highest epoch (the
 * epoch is out->epoch).  Returns 0, STORE_ENOTFOUND (no active key),
 * STORE_ECORRUPT (*out zeroed on failure). */
int store_key_current(store_txn *t, uint32_t dev, store_key *out);
/* cb(key, arg) for each of the device's keys, in epoch order; the key is
 * borrowed for the call.  cb returning non-zero stops early and that value
 * is returned; otherwise 0 or an error. */
typedef int (*store_key_cb)(const store_key *k, void *arg);
int store_key_list(store_txn *t, uint32_t dev, store_key_cb cb, void *arg);

/*
 * Enrollment tokens.  A token is 16 random bytes, given to the admin once
 * as STORE_TOKEN_TEXT_LEN characters of lowercase base32 (RFC 4648, no
 * padding); the store keeps only a keyed BLAKE2b hash of the bytes, with
 * the volunteer, scope and times sealed.  A token is redeemed at most once.
 * A scope entry is a household id, or "community/grid" for a whole grid.
 */
#define STORE_TOKEN_TEXT_LEN 26
#define STORE_TOKEN_ID_LEN 16        /* hex display handle (not the secret) */
#define STORE_VOLUNTEER_MAX 63       /* bytes of UTF-8, as store_device.volunteer */
#define STORE_SCOPE_MAX 1024         /* entries per token */
#define STORE_SCOPE_ITEM_MAX 255     /* bytes of UTF-8 per entry */

typedef struct store_token {
    char id[STORE_TOKEN_ID_LEN + 1]; /* hex of the hash's first 8 bytes: for listings */
    char volunteer[STORE_VOLUNTEER_MAX + 1];
    size_t n_scope;
    char (*scope)[STORE_SCOPE_ITEM_MAX + 1]; /* owned (store_token_free) unless borrowed */
    uint64_t created_ms;
    uint64_t expires_ms;         /* redeemable while now_ms < expires_ms */
    bool used;
    uint64_t used_ms;            /* used: server time of redemption */
    uint32_t used_dev;           /* used: the device id the caller named */
} store_token;

/* Free the scope of a token filled by store_token_redeem (zeroes *tok). */
void store_token_free(store_token *tok);

/*
 * store_token_create — a new one-time token for `volunteer` (1..63 bytes of
 * UTF-8) and `scope` (1..STORE_SCOPE_MAX entries of 1..255 bytes of UTF-8),
 * redeemable while now_ms < expires_ms, in a write txn.  text receives the
 * token (NUL-terminated): show it once, never store it.  Returns 0,
 * STORE_EINVAL (bad volunteer, scope or expires_ms <= now_ms),
 * STORE_EREADONLY, or an LMDB error; text is zeroed on failure.
 */
int store_token_create(store_txn *t, const char *volunteer, const char *const *scope,
                       size_t n_scope, uint64_t now_ms, uint64_t expires_ms,
                       char text[STORE_TOKEN_TEXT_LEN + 1]);

/*
 * store_token_redeem — redeem the token `text` (case-insensitive) in the
 * caller's write txn: marks it used at now_ms by device `dev`, so a second
 * redemption fails once the txn commits (abort to undo).  On success *out
 * (may be NULL) receives the token's volunteer and scope (owned: free with
 * store_token_free).  Returns 0, STORE_ENOTFOUND (unknown or malformed
 * text), STORE_ETOKEN_USED, STORE_ETOKEN_EXPIRED, STORE_EREADONLY,
 * STORE_ECORRUPT, or an LMDB error; *out zeroed on failure.
 */
int store_token_redeem(store_txn *t, const char *text, uint64_t now_ms, uint32_t dev,
                       store_token *out);

/* cb(token, arg) for every token (used and expired ones too), in hash
 * order; the token and its scope are borrowed for the call.  cb returning
 * non-zero stops early and that value is returned; otherwise 0 or an error. */
typedef int (*store_token_cb)(const store_token *tok, void *arg);
int store_token_list(store_txn *t, store_token_cb cb, void *arg);

/*
 * Staff accounts (the dashboard and doorstepctl).  Usernames are 1..32
 * characters of [a-z0-9_.-]; passwords are hashed with Argon2id
 * (crypto_pwhash_str).  The record, display name included, is sealed.
 */
enum { STORE_ROLE_STAFF = 1, STORE_ROLE_ADMIN = 2 };
#define STORE_USER_MAX 32
#define STORE_DISPLAY_MAX 127        /* bytes of UTF-8 */
#define STORE_PASSWORD_MIN 8         /* bytes */
#define STORE_PASSWORD_MAX 1024

typedef struct store_staff {
    char username[STORE_USER_MAX + 1];
    char display[STORE_DISPLAY_MAX + 1];
    uint8_t role;                /* STORE_ROLE_* */
    bool disabled;
    uint32_t failures;           /* consecutive failed logins since the last lock/success */
    uint64_t locked_until_ms;    /* logins refused while now_ms < this */
    uint64_t created_ms;
    uint64_t last_login_ms;      /* 0 if never */
    uint64_t pw_changed_ms;
} store_staff;

/* Argon2id cost.  Zero fields (or a NULL pointer) mean libsodium's
 * INTERACTIVE limits; tests may pass crypto_pwhash_OPSLIMIT_MIN and
 * crypto_pwhash_MEMLIMIT_MIN. */
typedef struct store_pwopts {
    unsigned long long opslimit;
    size_t memlimit;
} store_pwopts;

/* Lockout after max_failures consecutive wrong passwords, for lock_ms.  A
 * NULL pointer means 5 failures, 15 minutes; max_failures 0 disables it. */
typedef struct store_lockout {
    uint32_t max_failures;
    uint64_t lock_ms;
} store_lockout;

/*
 * store_staff_create — a new account in a write txn (hashes the password:
 * Argon2id runs while the txn is open).  Returns 0, STORE_EEXIST,
 * STORE_EINVAL (username, display name 1..127 bytes of UTF-8, role,
 * password length STORE_PASSWORD_MIN..MAX, or cost limits out of range),
 * STORE_EREADONLY, CRDT_ENOMEM, or an LMDB error.
 */
int store_staff_create(store_txn *t, const char *username, const char *display,
                       uint8_t role, const char *password, uint64_t now_ms,
                       const store_pwopts *pw);
/* The account (never its password hash) into *out.  Returns 0,
 * STORE_ENOTFOUND (also for an invalid username), STORE_ECORRUPT; *out
 * zeroed on failure. */
int store_staff_get(store_txn *t, const char *username, store_staff *out);

/*
 * store_staff_login — check a password, with lockout.  Runs its own
 * transactions, so Argon2id never runs while the write lock is held: a
 * read txn fetches the account, the password is verified with no txn
 * open, and a short write txn (committed here; the map grows on
 * MDB_MAP_FULL) records the outcome: a success resets the failure count
 * and sets last_login_ms (and rehashes if pw's cost differs from the
 * stored hash's); a wrong password counts a failure, and the policy's
 * max_failures-th locks the account until now_ms + lock_ms (and resets the
 * count).  Unknown, disabled and locked accounts cost one Argon2id run with
 * cost pw, like a wrong password, and write nothing.  Must not be called
 * while this thread has a transaction open.  On success *out (may be NULL)
 * receives the account.  A password changed between the read and the
 * write reads as STORE_EBADPASS (not counted).
 * Returns 0, STORE_ENOTFOUND (unknown or invalid username), STORE_EBADPASS,
 * STORE_ELOCKED (locked now, or by this attempt), STORE_EDISABLED,
 * STORE_ECORRUPT, CRDT_ENOMEM, or a store error; *out zeroed on failure.
 * Callers should show all failures alike and write the audit entry.
 */
int store_staff_login(store *s, const char *username, const char *password,
                      uint64_t now_ms, const store_lockout *policy,
                      const store_pwopts *pw, store_staff *out);

/* Set a new password in a write txn (Argon2id runs while it is open); also
 * clears the failure count and any lock.  Returns 0, STORE_ENOTFOUND,
 * STORE_EINVAL (password length or cost), STORE_EREADONLY, STORE_ECORRUPT,
 * or an LMDB error. */
int store_staff_set_password(store_txn *t, const char *username, const char *password,
                             uint64_t now_ms, const store_pwopts *pw);
/* Change the role.  Returns 0, STORE_ENOTFOUND, STORE_EINVAL,
 * STORE_EREADONLY, STORE_ECORRUPT, or an LMDB error. */
int store_staff_set_role(store_txn *t, const char *username, uint8_t role);
/* Disable or re-enable an account (re-enabling clears failures and any
 * lock).  Returns as store_staff_set_role. */
int store_staff_set_disabled(store_txn *t, const char *username, bool disabled);
/* cb(account, arg) for every account in username order, borrowed for the
 * call.  cb returning non-zero stops early and that value is returned. */
typedef int (*store_staff_cb)(const store_staff *st, void *arg);
int store_staff_list(store_txn *t, store_staff_cb cb, void *arg);

/*
 * Audit log: append-only, sealed (it names people).  Entries are numbered
 * aseq = 1, 2, 3… in commit order; there is no way to change or delete
 * one.  actor: who ("admin:alice", "device:42", "server"); action: what,
 * 1..63 of [a-z0-9_.] ("device.freeze", "token.create"); detail: free text.
 */
#define STORE_AUDIT_ACTOR_MAX 63     /* bytes of UTF-8 */
#define STORE_AUDIT_ACTION_MAX 63
#define STORE_AUDIT_DETAIL_MAX 1024  /* bytes of UTF-8 */

typedef struct store_audit {
    uint64_t aseq;
    uint64_t at_ms;              /* server time, as the caller passed it */
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    char action[STORE_AUDIT_ACTION_MAX + 1];
    char detail[STORE_AUDIT_DETAIL_MAX + 1];
    uint8_t hash[32];            /* chain hash of this entry (see below) */
} store_audit;

/*
 * The audit log is hash-chained: entry n stores the chain hash of entry
 * n-1, and its own hash is BLAKE2b-256("doorstep/v1/audit" 0 || aseq BE64
 * || the entry's plaintext, previous hash included).  The head (last aseq
 * and hash) is kept in meta, so deleting, editing or reordering entries —
 * even by someone holding the data key — breaks the chain.
 * store_audit_verify walks the whole log; returns 0, STORE_EVERIFY with
 * *bad = the first aseq that does not chain (0: the head does not match),
 * or an error.
 */
int store_audit_verify(store_txn *t, uint64_t *bad);

/* Append an entry in the caller's write txn; *aseq (may be NULL) receives
 * its number.  detail may be NULL ("").  Returns 0, STORE_EINVAL (empty or
 * too long actor/action, action outside [a-z0-9_.], detail too long, or
 * not UTF-8), STORE_EREADONLY, CRDT_ENOMEM, or an LMDB error. */
int store_audit_append(store_txn *t, uint64_t at_ms, const char *actor, const char *action,
                       const char *detail, uint64_t *aseq);

/* cb(entry, arg) for entries with aseq > after, in order, at most limit;
 * the entry is borrowed for the call.  *next receives the cursor to resume
 * from (the last aseq delivered, or `after`).  cb returning non-zero stops
 * early (that entry does not count as delivered) and that value is
 * returned; otherwise 0, STORE_ECORRUPT, or an LMDB error. */
typedef int (*store_audit_cb)(const store_audit *e, void *arg);
int store_audit_read(store_txn *t, uint64_t after, size_t limit, store_audit_cb cb,
                     void *arg, uint64_t *next);

/* ---- administration: revocation, quarantine review (review.c) ---- */

/*
 * Revocation (DESIGN.md §5).  Soft (lost or retired phone): the device's
 * state becomes STORE_DEV_REVOKED_SOFT with revoked_at_seq = its chain head
 * at the time, so deltas up to that seq stay (a late re-send of one reads
 * as a duplicate) and later arrivals go to quarantine (store_append reads
 * the state).  Hard (compromised): STORE_DEV_REVOKED_HARD; everything that
 * arrives afterwards is quarantined (a re-send of a delta already held is
 * acked as a duplicate by store_append in both cases).
 * Both mark the device's ACTIVE keys STORE_KEY_REVOKED (hard: its RETIRED
 * keys too), bump the admin generation (live sessions are closed by the
 * server within its polling interval) and write an audit entry naming the
 * actor ("admin:alice").  Revoking is one-way: soft may become hard, never
 * the reverse; repeating the same revocation changes nothing and writes no
 * audit entry.  The data the device sent is never removed.
 */
enum { STORE_REVOKE_SOFT = 1, STORE_REVOKE_HARD = 2 };

/* Returns 0, STORE_ENOTFOUND (no such device), STORE_EINVAL (bad `how` or
 * actor, or soft after hard), STORE_EREADONLY, or an LMDB error (abort the
 * txn). */
int store_device_revoke(store_txn *t, uint32_t dev, int how, uint64_t now_ms,
                        const char *actor);

/* Set (on) or clear the device's STORE_DEVF_ROTATE_REQUIRED flag: the next
 * welcome asks the phone to rotate its key before it may push.  Audited
 * ("device.rotate_require" / "device.rotate_cancel") when it changes
 * anything.  Returns 0, STORE_ENOTFOUND, STORE_EINVAL (revoked device, bad
 * actor), STORE_EREADONLY, or an LMDB error. */
int store_device_require_rotation(store_txn *t, uint32_t dev, bool on, uint64_t now_ms,
                                  const char *actor);

/* cb(device, scope_n, arg) for every device in id order (scope_n: the
 * number of households in its scope); borrowed for the call.  cb returning
 * non-zero stops early and that value is returned; otherwise 0,
 * STORE_ECORRUPT, or an LMDB error. */
typedef int (*store_device_cb)(const store_device *d, size_t scope_n, void *arg);
int store_device_list(store_txn *t, store_device_cb cb, void *arg);

/*
 * Quarantine review.  An entry (store_qentry) never changes and is never
 * deleted; the admin's decision is a separate review record in meta, key
 * "qreview" || qid(8) (sealed: it names the admin), plus an audit entry.
 * Accepting merges the delta through the normal merge path (a fresh server
 * seq, the envelope verbatim in the log, the record and its history, feed,
 * indexes, aggregates), so store_verify holds afterwards; the device's
 * chain is left as it is, except that a clock-ahead delta — already in the
 * chain as a dot without a server seq — gets its dot linked to the new
 * server seq.  A delta whose exact bytes are already in the log (the first
 * copy of a clone pair) is accepted without a second copy.  Signatures were
 * verified when the delta arrived and are not checked again.
 */
enum {
    STORE_QSTATE_PENDING = 1,
    STORE_QSTATE_ACCEPTED = 2,
    STORE_QSTATE_REJECTED = 3
};
#define STORE_QNOTE_MAX 255          /* bytes of UTF-8 */

typedef struct store_qreview {
    uint64_t qid;
    uint8_t state;               /* STORE_QSTATE_* */
    uint64_t decided_ms;         /* 0 while pending */
    uint64_t aseq;               /* the decision's audit entry (0 while pending) */
    uint64_t sseq;               /* ACCEPTED: the delta's server seq */
    char actor[STORE_AUDIT_ACTOR_MAX + 1]; /* who decided ("" while pending) */
    char note[STORE_QNOTE_MAX + 1];        /* the reviewer's note, may be "" */
} store_qreview;

const char *store_qstate_name(int state);    /* "pending", "accepted", "rejected" */

/* The review state of entry qid (PENDING if undecided).  Returns 0,
 * STORE_ENOTFOUND (no such entry), STORE_ECORRUPT; *out zeroed on failure. */
int store_quarantine_review(store_txn *t, uint64_t qid, store_qreview *out);

/* cb(entry, review, arg) for entries with qid > after whose state is
 * `state` (0: any), in qid order, at most limit; both borrowed for the call
 * (entry->env included).  *next receives the last qid delivered (or
 * `after`).  cb returning non-zero stops early (not delivered) and that
 * value is returned; otherwise 0, STORE_ECORRUPT, or an LMDB error. */
/* The quarantine's entries by state, in one walk that reads only the
 * decisions (not the kept envelopes): counts[0] all, counts[STORE_QSTATE_*]
 * each state.  Returns 0, STORE_ECORRUPT or an LMDB error. */
int store_quarantine_counts(store_txn *t, uint64_t counts[4]);

typedef int (*store_qreview_cb)(const store_qentry *q, const store_qreview *r, void *arg);
int store_quarantine_list(store_txn *t, uint64_t after, size_t limit, int state,
                          store_qreview_cb cb, void *arg, uint64_t *next);

/* Accept entry qid on behalf of actor (1..63 bytes, e.g. "admin:alice"):
 * merge it as described above, audit "quarantine.accept", record the
 * decision.  *out (may be NULL) receives the review.  Returns 0,
 * STORE_ENOTFOUND, STORE_EINVAL (already decided, or bad actor),
 * STORE_EREADONLY, a WIRE_E or CRDT_E code (the kept envelope no longer
 * decodes or fits the schema), or a store error (abort the txn); *out
 * zeroed on failure. */
int store_quarantine_accept(store_txn *t, uint64_t qid, uint64_t now_ms, const char *actor,
                            store_qreview *out);

/* Reject entry qid: it stays, marked rejected with the actor and the note
 * (NULL or 0..STORE_QNOTE_MAX bytes of UTF-8); audit "quarantine.reject".
 * Returns as store_quarantine_accept (STORE_EINVAL also for a bad note). */
int store_quarantine_reject(store_txn *t, uint64_t qid, uint64_t now_ms, const char *actor,
                            const char *note, store_qreview *out);

/* ---- dashboard support: server signing and index walks (serverkey.c, issue #7) ---- */

/*
 * store_server_sign_delta — sign delta bytes with the server's Ed25519 key
 * (wire_delta_sign: the delta domain), for deltas the server writes itself
 * (device id 0: staff resolving conflicts, review stages).  The secret key
 * is unsealed from meta "server_sk" inside the caller's transaction, used,
 * and wiped (sodium_memzero) before returning; it is never kept in the
 * store object.  Returns 0, STORE_ECORRUPT (key does not unseal or has the
 * wrong size), STORE_ENOTFOUND, or an LMDB error; sig zeroed on failure.
 */
int store_server_sign_delta(store_txn *t, const uint8_t *delta, size_t n,
                            uint8_t sig[WIRE_SIG_BYTES]);

/*
 * store_server_append — write a delta as the server itself (device id 0):
 * ops on record kind/id, on the server's own chain (next seq after its
 * head, prev = its head hash), stamped with an HLC past every HLC stored
 * (store_hlc_hwm, including this transaction's appends), signed with
 * store_server_sign_delta, then decoded, schema-checked and appended by
 * store_append exactly as a phone's envelope would be.  Used by the
 * dashboard (conflict resolution, review stages) and doorstepctl import.
 *
 * Returns 0 with *out filled, or a store/CRDT error (abort the txn).  On 0:
 *   out->invalid != 0  the delta did not pass decoding or the schema
 *                      (a CRDT_E/WIRE_E code; out->err_op names the op, or
 *                      -1); nothing was appended;
 *   else               out->oc is store_append's outcome (APPLIED,
 *                      REJECTED or QUARANTINED) and out->seq the server
 *                      chain seq the delta carries.
 */
typedef struct store_server_delta {
    uint64_t seq;
    int invalid;
    int err_op;
    store_outcome oc;
} store_server_delta;

int store_server_append(store_txn *t, const char *kind, const char *id, const crdt_op *ops,
                        uint32_t n_ops, uint64_t now_ms, uint64_t max_ahead_ms,
                        store_server_delta *out);

/*
 * store_record_deltas — the server seqs of the deltas merged into record
 * kind/id (the rdeltas index of older stores, then the history kept in the
 * record's value since format 3), ascending, those > after, at most limit:
 * cb(sseq, arg) for each.  *next (may be NULL) receives the last sseq
 * delivered (or `after`).  Cost is proportional to the page.  cb returning
 * non-zero stops early and that value is returned; else 0, STORE_EINVAL,
 * STORE_ECORRUPT (a history that does not decode), or an LMDB error.
 */
typedef int (*store_sseq_cb)(uint64_t sseq, void *arg);
int store_record_deltas(store_txn *t, const char *kind, const char *id, uint64_t after,
                        size_t limit, store_sseq_cb cb, void *arg, uint64_t *next);

/*
 * store_agg_places — every (community, grid) that has aggregates, in byte
 * order: cb(community, grid, arg) with NUL-terminated strings borrowed for
 * the call.  Reads the aggregate index only (one entry per grid), never
 * records.  cb returning non-zero stops early (that value is returned);
 * else 0, STORE_ECORRUPT (a key is not "community\0grid"), CRDT_ENOMEM,
 * or an LMDB error.
 */
typedef int (*store_place_cb)(const char *community, const char *grid, void *arg);
int store_agg_places(store_txn *t, store_place_cb cb, void *arg);

/* store_agg_place_list — the same places collected into *out (owned by the
 * caller: store_places_free), for callers that walk them more than once.
 * Returns as store_agg_places; *out is empty on failure. */
typedef struct store_place {
    char *community, *grid;
} store_place;
typedef struct store_places {
    store_place *p;
    size_t n, cap;
} store_places;
int store_agg_place_list(store_txn *t, store_places *out);
void store_places_free(store_places *pl);

/*
 * store_records_page — a bounded walk over the records of one kind, in id
 * order, with id > after ("" for the first), at most limit: cb(record, arg)
 * with the decoded record borrowed for the call.  *next receives the id of
 * the last record visited ("" if none), to resume from.  This IS a scan: it
 * is for queues that have no index yet, and callers must bound `limit`.
 * Returns 0, the cb's non-zero value, STORE_EINVAL, STORE_ECORRUPT,
 * CRDT_ENOMEM or an LMDB error.
 */
typedef int (*store_record_cb)(const crdt_record *r, void *arg);
int store_records_page(store_txn *t, const char *kind, const char *after, size_t limit,
                       store_record_cb cb, void *arg, char next[CRDT_RECID_MAX + 1]);

/* ---- end dashboard support -------------------------------------------------------- */

/* ---- upward replication (relay.c; docs/SCALE.md, issue 16) ------------------------ */

/* The scope entry that makes an enrolled device a relay: another server
 * that pushes the envelopes it applied (`relay` frames), not a phone. */
#define STORE_RELAY_SCOPE "@relay"

/*
 * store_relay_map — the device id this store keeps relay `relay`'s device
 * `dev` (the street's numbering; 0: the street server's own edits) under.
 * If there is none and create is true (write txn), allocate one: a new
 * device record (active, epoch 1, volunteer = label, cut to 63 bytes).
 * Returns 0 (*out set), STORE_ENOTFOUND (none, create false), STORE_EINVAL,
 * STORE_EREADONLY, STORE_ECORRUPT or an LMDB error.
 */
int store_relay_map(store_txn *t, uint32_t relay, uint32_t dev, const char *label, bool create,
                    uint32_t *out);
/* The (relay, street device) a chain device was allocated for.  0,
 * STORE_ENOTFOUND (not a relayed device), STORE_ECORRUPT. */
int store_relay_origin(store_txn *t, uint32_t chain_dev, uint32_t *relay, uint32_t *dev);
/* Check pk against the street server key pinned for relay; if none is
 * pinned, pin pk when write (write txn).  0, STORE_ERELAYKEY (another key
 * is pinned for relay, or pk is pinned by another relay), or an LMDB error. */
int store_relay_pin(store_txn *t, uint32_t relay, const uint8_t pk[32], bool write);
/* The district's street scope: the first relay to bring a household of a
 * community owns the community.  Called by the writer for each applied
 * relayed delta (household: the one it touched).  Another relay bringing a
 * household of an owned community means ids shared by two streets (their
 * records merge here): the first time per (community, relay) it is written
 * to the audit log as relay.place_clash, at now_ms.  0 or an error. */
int store_relay_note_place(store_txn *t, uint32_t relay, const char *household, uint64_t now_ms);
/* cb(community, relay, arg) for every community a relay brought, in
 * community order.  cb's non-zero value stops and is returned. */
typedef int (*store_relay_comm_cb)(const char *community, uint32_t relay, void *arg);
/* The relay whose street household is in (its community's), 0 if none:
 * whose device numbering the household's records' dots use. */
int store_relay_of_household(store_txn *t, const char *household, uint32_t *relay);
int store_relay_communities(store_txn *t, store_relay_comm_cb cb, void *arg);
/* Admin records (a street's audit entries about devices and the quarantine,
 * relayed signed): at the district, the last street aseq taken from relay;
 * at the street, the last aseq the district acked.  0 at first. */
int store_relay_admin_cursor(store_txn *t, uint32_t relay, uint64_t *aseq);
int store_relay_admin_cursor_set(store_txn *t, uint32_t relay, uint64_t aseq);
int store_upstream_admin_cursor(store_txn *t, uint64_t *aseq);
int store_upstream_admin_cursor_set(store_txn *t, uint64_t aseq); /* only forward */
/* The street server key pinned for relay.  0, STORE_ENOTFOUND. */
int store_relay_server_key(store_txn *t, uint32_t relay, uint8_t pk[32]);
/* The sending side: every envelope with server seq <= *sseq is durable
 * upstream (0 at first).  _set only moves it forward. */
int store_upstream_cursor(store_txn *t, uint64_t *sseq);
int store_upstream_cursor_set(store_txn *t, uint64_t sseq);
/*
 * store_log_read — the log in server order: cb(sseq, envelope, len, arg)
 * for each envelope with server seq > after, at most max of them and, after
 * the first, at most max_bytes of envelopes in all.  Envelopes are
 * borrowed for the call.  Returns 0, cb's non-zero value, or a store error.
 */
int store_log_read(store_txn *t, uint64_t after, size_t max, size_t max_bytes, store_feed_cb cb,
                   void *arg);

#ifdef __cplusplus
}
#endif
#endif /* DOORSTEP_STORE_H */
