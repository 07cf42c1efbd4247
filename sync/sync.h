/*
 * sync.h — the sync layer: wire frames, the per-connection session logic,
 * push jobs (verify on workers, group commit on one writer), and the server.
 *
 * The session logic is a pure function of (session state, input frame,
 * store, time) -> (output frames, jobs, close request); it never touches a
 * socket, so it is tested without one (tests/sync/test_session.c).  Only
 * sync/server.c includes libwebsockets.h.
 *
 * A push travels:  event loop: sync_session_input() parses it into a
 * sync_job -> worker thread: sync_job_verify() (decode, schema, scope,
 * key lookup, Ed25519) -> writer thread: sync_jobs_commit() (one LMDB write
 * transaction for many jobs, committed) -> event loop:
 * sync_session_job_done() turns the outcomes into the ack frame.  The ack
 * therefore always follows the commit.
 *
 * Errors: SYNC_E* (below) are the protocol's error codes, sent in `error`
 * frames and in per-delta ack entries together with CRDT_E*, WIRE_E* and
 * STORE_E* codes; docs/PROTOCOL.md lists every one with its meaning and
 * whether it is retryable.
 */
#ifndef DOORSTEP_SYNC_H
#define DOORSTEP_SYNC_H

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    SYNC_OK = 0,
    SYNC_EPROTO = -300,        /* frame malformed for its type */
    SYNC_EFRAME = -301,        /* unknown frame type */
    SYNC_ESTATE = -302,        /* frame not allowed in this state (e.g. push before auth) */
    SYNC_EUNKNOWN_DEVICE = -303,
    SYNC_EFROZEN = -304,       /* device frozen (clone detected) */
    SYNC_EREVOKED = -305,
    SYNC_EBADAUTH = -306,      /* auth signature does not verify */
    SYNC_EEPOCH = -307,        /* key epoch unknown or retired */
    SYNC_ETOOMANY = -308,      /* more deltas in one push than allowed */
    SYNC_ESCOPE = -309,        /* record outside the device's scope */
    SYNC_EDEVICE = -310,       /* delta signed for another device than the session's */
    SYNC_EBUSY = -311,         /* server busy (queue full, rate limit): retry later */
    SYNC_EUNAVAILABLE = -312,  /* store cannot write now (disk full, I/O): retry later */
    SYNC_ESHUTDOWN = -313,     /* server shutting down: retry later */
    SYNC_EAUTHTIME = -314,     /* not authenticated within the allowed time */
    SYNC_EROTATE = -315,       /* key rotation required before pushing */
    SYNC_ERATE = -316          /* device over its push rate limit: retry after `ra` ms */
};

const char *sync_strerror(int code);
bool sync_retryable(int code);

#define SYNC_PROTOCOL_VERSION 1
#define SYNC_SUBPROTOCOL "doorstep.v1"
/* The signed handshake messages (auth, enroll, rotate, snapshot) are built
 * by wire_*_msg (wire.h), shared with the device library. */
#define SYNC_SNAPSHOT_MAX (16u << 20)  /* bytes of records in one snapshot */
#define SYNC_NONCE_BYTES WIRE_NONCE_BYTES

/* Limits and knobs (DESIGN.md §7), defaults in sync_config_default. */
typedef struct sync_config {
    crdt_limits lim;
    uint32_t max_push;          /* deltas per push (500) */
    uint32_t page_max;          /* envelopes per changes frame (500) */
    size_t page_bytes;          /* bytes of envelopes per changes frame (192 KiB) */
    uint64_t max_ahead_ms;      /* quarantine deltas further ahead (24 h) */
    uint32_t auth_timeout_s;    /* close unauthenticated connections (10 s) */
    uint32_t max_inflight;      /* pushes awaiting ack per session (4) */
    uint32_t device_rate;       /* deltas per second one device may push, sustained
                                 * (200; 0 = no limit); see sync/limit.c */
    uint32_t device_burst;      /* deltas one device may push at once (5000; the
                                 * server wants >= max_push) */
    uint32_t seen_flush_ms;     /* devices' last-sync times of sessions without a
                                 * push reach the store within this (10 s; pushes
                                 * record it in their own commit) */
} sync_config;

extern const sync_config sync_config_default;

/* ---- frames -------------------------------------------------------------- */

/* A frame queued for sending: SYNC_FRAME_PRE bytes of headroom before data
 * (libwebsockets writes its header there), then len bytes. */
#define SYNC_FRAME_PRE 32
typedef struct sync_frame {
    struct sync_frame *next;
    size_t len;
    uint8_t buf[];             /* SYNC_FRAME_PRE + len bytes */
} sync_frame;

static inline uint8_t *sync_frame_data(sync_frame *f) { return f->buf + SYNC_FRAME_PRE; }
void sync_frame_free(sync_frame *f);
void sync_frames_free(sync_frame *list);
/* Copy bytes into a new frame; NULL on ENOMEM. */
sync_frame *sync_frame_new(const uint8_t *p, size_t n);

/* The error frame {t:"error", c, m, r[, id]} as a new frame. */
sync_frame *sync_frame_error(int code, const char *msg, uint64_t req_id);
/* The same with `ra`: milliseconds after which a retry will be accepted
 * (SYNC_ERATE); retry_ms 0 leaves `ra` out. */
sync_frame *sync_frame_error_ra(int code, const char *msg, uint64_t req_id, uint64_t retry_ms);

/* ---- the per-device rate limit (sync/limit.c) ----------------------------------- */

/* Token buckets by device id, shared by all sessions of a server; used on
 * the event-loop thread only (no locking). */
typedef struct sync_limiter sync_limiter;
sync_limiter *sync_limiter_new(void);        /* NULL on ENOMEM */
void sync_limiter_free(sync_limiter *l);
/* Take max(n, 1) tokens (at most cfg->device_burst) from device dev's bucket
 * at now_ms.  Returns SYNC_OK; SYNC_ERATE with *retry_ms > 0 (nothing
 * taken; the same request passes after that many ms); or CRDT_ENOMEM.
 * l NULL, cfg->device_rate 0 or dev 0: always SYNC_OK. */
int sync_limiter_take(sync_limiter *l, const sync_config *cfg, uint32_t dev, uint32_t n,
                      uint64_t now_ms, uint64_t *retry_ms);
/* How many pushes were refused with SYNC_ERATE so far. */
uint64_t sync_limiter_refused(const sync_limiter *l);

/* ---- push jobs ------------------------------------------------------------- */

typedef struct sync_job_item {
    uint8_t *env;               /* owned copy of the envelope */
    size_t env_len;
    int code;                   /* 0 = verified, else rejected before commit */
    uint32_t dev;               /* from the delta, when it decoded */
    uint64_t seq;
    crdt_delta delta;           /* decoded, borrowed from the job's arena */
    uint8_t hash[CRDT_HASH_BYTES];
    uint8_t quarantine;         /* STORE_Q_* if verification holds it back */
    store_outcome out;          /* filled by sync_jobs_commit */
    /* Relay jobs only: the signer's key as the worker verified it (from a
     * key record of the frame, or the street server key for device 0),
     * registered by the writer under the chain device if it is new. */
    bool unverified;            /* failed the checks: kept as STORE_Q_UNVERIFIED */
    bool key_from_frame;
    uint8_t key_pk[32];
} sync_job_item;

/*
 * An admin record of a relay frame (PROTOCOL.md, `relay`): one entry of the
 * street's audit log about a device or the quarantine, signed by the street
 * server key over "doorstep/v1/admin" 0x00 || b.  b is a msgpack map:
 * a (aseq), act (action), at (ms), by (actor), x (detail) and, for device
 * actions, d (street device id), st (its state now), rs (revoked_at_seq).
 */
#define SYNC_ADMIN_DOMAIN "doorstep/v1/admin"
#define SYNC_ADMIN_MAX 100      /* admin records per relay frame */
#define SYNC_ADMIN_BYTES 2048   /* most bytes of one record's b */
typedef struct sync_relay_admin {
    uint8_t b[SYNC_ADMIN_BYTES];
    size_t n;
    uint8_t g[64];
    bool valid;                 /* signed by the street and well-formed (worker) */
    uint64_t aseq, at;
    char act[STORE_AUDIT_ACTION_MAX + 1], by[STORE_AUDIT_ACTOR_MAX + 1];
    char x[STORE_AUDIT_DETAIL_MAX + 1];
    bool has_dev;
    uint32_t dev;
    uint8_t st;
    uint64_t rs;
} sync_relay_admin;

/* The signed message of an admin record body b (n bytes) into out (the
 * caller frees it).  0 or CRDT_ENOMEM. */
int sync_admin_msg(const uint8_t *b, size_t n, crdt_buf *out);
/* Parse and check an admin record body into a (its b, n and g are set). */
bool sync_admin_parse(sync_relay_admin *a);

/* A key record of a relay frame (PROTOCOL.md, `relay`). */
typedef struct sync_relay_key {
    uint32_t dev, epoch;
    uint8_t pk[32], sig[64];
    bool valid;                 /* the street server key signed it (worker) */
} sync_relay_key;

typedef struct sync_job {
    struct sync_job *next;      /* for the server's queues */
    void *owner;                /* the session (the server's business) */
    uint64_t session_serial;    /* detects a session that went away */
    uint64_t push_id;
    uint32_t dev;               /* the authenticated device */
    uint32_t epoch;
    uint32_t n;
    sync_job_item *items;
    crdt_arena *arena;
    store_ids scope;            /* the device's households (loaded by verify) */
    /* A relay job (a `relay` frame from a street server, relay.c): the
     * envelopes are other devices', verified with the frame's key records. */
    bool relay;
    uint8_t relay_srv[32];      /* the street server key the frame names */
    sync_relay_key *relay_keys; /* n_relay_keys of them (owned) */
    uint32_t n_relay_keys;
    sync_relay_admin *relay_admin; /* n_relay_admin of them (owned) */
    uint32_t n_relay_admin;
    char relay_name[64];        /* the relay device's name (worker), for labels */
    int commit_rc;              /* 0, or the error that failed the whole job:
                                 * its verification could not be done (out of
                                 * memory, store error) or the batch's commit
                                 * failed; nothing of the job was stored */
} sync_job;

void sync_job_free(sync_job *j);

/*
 * sync_job_verify — on a worker thread: decode each envelope and delta,
 * check limits and schema, check the delta names the session's device and
 * a key epoch it holds, and verify the Ed25519 signature with the device's
 * key for that epoch (a retired key beyond its sealed seq: the item is
 * marked for quarantine).  Loads the device's scope into j->scope.  Sets
 * items[i].code (0 = ready to commit).  Opens its own read transaction.
 * Returns 0, or CRDT_ENOMEM or a store error when the push could not be
 * judged: then j->commit_rc holds that error, no item is committed and the
 * push is answered with the retryable SYNC_EUNAVAILABLE, never with
 * per-delta rejections.
 */
int sync_job_verify(store *st, const sync_config *cfg, sync_job *j);

/*
 * sync_jobs_commit — on the writer thread: check each verified item's
 * scope inside the write transaction (so a person created earlier in the
 * same push or batch counts: records in the device's households; persons
 * whose current household is in scope; new persons placed in scope), then
 * append every item of every job in `jobs` (a list through ->next) in ONE
 * write transaction and
 * commit it (growing the map on MDB_MAP_FULL and redoing the batch).  On
 * success each item's `out` holds its outcome; on failure every job's
 * commit_rc holds the (retryable) error and nothing was written.
 * Jobs that arrive with commit_rc already set (verification failed as a
 * whole) are skipped and keep it.
 * `now_ms` is the server time used for the clock check.  *touched receives
 * a malloc'd array of the household ids touched by applied deltas (for
 * waking live subscribers), *n_touched its length; the caller frees it.
 */
int sync_jobs_commit(store *st, const sync_config *cfg, sync_job *jobs, uint64_t now_ms,
                     char (**touched)[CRDT_RECID_MAX + 1], size_t *n_touched);

/* ---- sessions ---------------------------------------------------------------- */

typedef struct sync_session sync_session;

/* What one input produced.  frames: to send, in order (owned by the caller
 * afterwards); job: a push to verify and commit (owned by the caller);
 * close_code: if non-zero, send the frames then close with this WebSocket
 * close code (1002, 1003, 1007, 1008, 1009, 1011). */
typedef struct sync_out {
    sync_frame *frames;
    sync_frame **tail;
    sync_job *job;
    int close_code;
    bool wake_live;             /* a subscription started: call sync_session_live */
    bool synced;                /* the device just completed a sync step (auth,
                                 * push acked, pull or snapshot answered): the
                                 * server records its last sync time */
} sync_out;

void sync_out_init(sync_out *o);
void sync_out_append(sync_out *o, sync_frame *f);

/* A new session; nonce is the server's 32 random bytes for this
 * connection.  Returns NULL on ENOMEM. */
sync_session *sync_session_new(store *st, const sync_config *cfg,
                               const uint8_t nonce[SYNC_NONCE_BYTES]);
void sync_session_free(sync_session *s);
/* Share the server's per-device rate limit with this session (none if never
 * called, as in the protocol unit tests). */
void sync_session_set_limiter(sync_session *s, sync_limiter *l);

/* The hello frame (first frame of every connection). */
int sync_session_hello(sync_session *s, uint64_t now_ms, sync_out *out);

/* One complete incoming message.  Returns 0 (see out), or CRDT_ENOMEM. */
int sync_session_input(sync_session *s, const uint8_t *msg, size_t n, uint64_t now_ms,
                       sync_out *out);

/* A push job of this session was committed (or failed): the ack, or a
 * retryable error frame.  Takes ownership of j.  Returns 0, or CRDT_ENOMEM
 * when neither could be built (no frame: the caller closes the connection,
 * and the device resends). */
int sync_session_job_done(sync_session *s, sync_job *j, sync_out *out);

/* Live changes: if subscribed and behind, the next page of changes (at most
 * one frame, so a slow reader is flow-controlled by the caller sending it
 * only when the socket is writable).  *more says whether to call again.
 * Returns 0, or an error (CRDT_ENOMEM, a store error) with no frame and the
 * live cursor unchanged: the caller closes the connection (1011). */
int sync_session_live(sync_session *s, sync_out *out, bool *more);

/* After an administrative change (store_admin_gen moved): is the session's
 * device still allowed?  Frozen or hard-revoked meanwhile: out gets an error
 * frame and close code 1008.  Soft-revoked: the session becomes restricted
 * (pushes go on, reads are refused; a live subscription ends with one
 * SYNC_EREVOKED error frame, no close).  Rotation required: the next push is
 * refused until the device rotates. */
int sync_session_recheck(sync_session *s, sync_out *out);

/* Does the session care about a commit that touched these households? */
bool sync_session_wants(const sync_session *s, char (*touched)[CRDT_RECID_MAX + 1], size_t n);

bool sync_session_authed(const sync_session *s);
uint32_t sync_session_device(const sync_session *s);
uint32_t sync_session_inflight(const sync_session *s);

/* ---- the staff HTTP API (sync/api.c) ------------------------------------------ */

/*
 * The dashboard's JSON API is a function from a request to a response; the
 * server (server.c) only moves bytes.  It runs on the server's API thread,
 * never on the event loop (a login costs an Argon2id hash), one request at
 * a time, so the API object needs no locking of its own.
 */
typedef struct sync_http_req {
    const char *method;         /* "GET", "POST", ... */
    const char *path;           /* "/api/overview" (no query) */
    const char *query;          /* "a=1&q=..." or "": the arguments URL-decoded, joined by
                                 * '&', with '%' and '&' inside them written %25 and %26 */
    const char *cookie;         /* the Cookie header, or "" */
    const char *csrf;           /* the X-CSRF-Token header, or "" */
    const char *content_type;   /* or "" */
    const char *origin;         /* the Origin header, or "" */
    const char *remote;         /* peer address, for logs and lockout */
    bool tls;                   /* request came over TLS (cookies get Secure) */
    const uint8_t *body;        /* request body (<= SYNC_API_BODY_MAX) */
    size_t body_len;
} sync_http_req;

#define SYNC_API_BODY_MAX (64 * 1024)

typedef struct sync_http_resp {
    int status;                 /* 200, 400, 401, 403, 404, 409, 413, 429, 500, 503 */
    char content_type[64];      /* default "application/json; charset=utf-8" */
    char set_cookie[512];       /* a Set-Cookie header value, or "" */
    char extra_header_name[64]; /* one more header (e.g. "content-disposition:"), or "" */
    char extra_header_value[256];
    char changed_household[CRDT_RECID_MAX + 1]; /* a write touched this household:
                                 * the server wakes live devices and pages */
    crdt_buf body;              /* owned; freed by the server */
} sync_http_resp;

typedef struct sync_api sync_api;

/* The API over an open store (server key for staff-signed deltas, staff
 * accounts, records, aggregates).  NULL on ENOMEM. */
sync_api *sync_api_new(store *st, const sync_config *cfg);
void sync_api_free(sync_api *api);
/* Handle one request (resp zero-initialised by the caller).  Returns 0; any
 * failure is expressed as an HTTP status in resp. */
int sync_api_handle(sync_api *api, const sync_http_req *req, uint64_t now_ms,
                    sync_http_resp *resp);
/* Is this Cookie header a live staff session?  (For the dashboard's live
 * WebSocket at /live, checked at upgrade.)  Thread-safe. */
bool sync_api_session_ok(sync_api *api, const char *cookie, uint64_t now_ms);

/* ---- the server --------------------------------------------------------------- */

typedef struct sync_server_opts {
    const char *listen_host;    /* "127.0.0.1" */
    int port;                   /* 8080; 0 = any free port (see sync_server_port) */
    const char *tls_cert, *tls_key;
    bool allow_plain;           /* plain ws on a non-loopback address */
    const char *static_dir;     /* dashboard files served at /, or NULL */
    const char *field_dir;      /* the volunteers' field app served at /field/, or NULL */
    int verify_threads;         /* 0 = number of cores */
    int log_level;              /* 0 quiet .. 3 debug */
    /* Group-commit delay: while other pushes are still being verified, the
     * writer waits until this many ms have passed since its previous commit
     * began, so that one commit (one fsync) takes them all; a push with no
     * others in flight is committed at once.  0 = never wait.  doorstepd's
     * default is SYNC_COMMIT_DELAY_MS. */
    int commit_delay_ms;
} sync_server_opts;

#define SYNC_COMMIT_DELAY_MS 200     /* doorstepd --commit-delay default */
#define SYNC_COMMIT_DELAY_MAX_MS 1000 /* largest --commit-delay */

typedef struct sync_server sync_server;

/* Start listening (binds before returning).  0 or an error with err set. */
int sync_server_new(store *st, const sync_config *cfg, const sync_server_opts *o,
                    sync_server **out, char *err, size_t errlen);
int sync_server_port(const sync_server *sv);
/* Add fn's lines (Prometheus text format) to /metrics; set before
 * sync_server_run.  fn runs on the thread serving /metrics. */
void sync_server_set_metrics_hook(sync_server *sv, void (*fn)(void *arg, crdt_buf *out), void *arg);
/* Run the event loop until sync_server_stop (safe from a signal handler). */
int sync_server_run(sync_server *sv);
void sync_server_stop(sync_server *sv);
void sync_server_free(sync_server *sv);


/* ---- upward replication, sending side (upstream.c) ------------------------- */

/*
 * sync_upstream_start — relay every envelope of st's log, in server order,
 * to the district server at url (ws://HOST:PORT[/sync]) as the relay device
 * enrolled in the device directory dir (doorstepctl upstream enroll), on a
 * thread of its own, from the durable cursor (store_upstream_cursor) on;
 * the cursor moves only after the district acked.  Reconnects by itself.
 * Returns 0 (*out set), SYNC_EPROTO (bad url), STORE_ENOTFOUND (no dir),
 * CRDT_ENOMEM; err receives a message.
 */
typedef struct sync_upstream sync_upstream;
int sync_upstream_start(store *st, const char *url, const char *dir, int log_level,
                        sync_upstream **out, char *err, size_t errlen);
/* Stop the thread (it finishes the frame in flight or gives it up; what
 * was not acked is sent again next time) and free.  NULL: no-op. */
void sync_upstream_stop(sync_upstream *u);
/* The relay's /metrics lines (for sync_server_set_metrics_hook; arg is the
 * sync_upstream): connected, acked server seq, envelopes behind, outcomes. */
void sync_upstream_metrics(void *arg, crdt_buf *out);

#ifdef __cplusplus
}
#endif
#endif /* DOORSTEP_SYNC_H */
