/*
 * internal.h — shared by the device library's files (not installed).
 *
 * Local LMDB layout (one environment per handle, in the handle's directory):
 *   meta      "dev" u32, "epoch" u32, "srvpk" 32 B, "pk" 32 B (current key),
 *             "seq" u64, "prev" 32 B, "hlc" u64, "off" i64 (clock offset),
 *             "cursor" u64, "rot_epoch" u32 + "rot_pk" 32 B (rotation started)
 *   records   kind NUL id -> canonical record bytes (crdt_record_encode)
 *   outbox    seq (BE64) -> envelope bytes
 *   rejected  seq (BE64) -> code (BE32, two's complement) || message NUL || envelope
 *   scope     household id -> ""
 * Integers in meta are stored big-endian.  Secret keys: dir/device.key
 * (current), dir/device.key.next (a rotation in progress); 64 bytes, 0600.
 */
#ifndef DOORSTEP_DEVICE_INTERNAL_H
#define DOORSTEP_DEVICE_INTERNAL_H

#include <lmdb.h>

#include "crdt.h"
#include "doorstep_device.h"
#include "wire.h"

#define DSD_PATH_MAX 512

struct dsd {
    char dir[DSD_PATH_MAX];
    MDB_env *env;
    MDB_dbi db_meta, db_rec, db_out, db_rej, db_scope;
    crdt_schema *schema;
    crdt_limits lim;          /* for frames from the server */
    char err[256];
};

/* Set the handle's message (printf-style) and return code. */
int dsd_fail(dsd *h, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Map an LMDB return code to DSD_* with a message. */
int dsd_lmdb(dsd *h, int rc, const char *what);

/* Transactions: grow the map first if it is more than 3/4 full. */
int dsd_txn_begin(dsd *h, bool rw, MDB_txn **t);

/* meta accessors (absent: 0 / zeros / false). */
int dsd_meta_u64(dsd *h, MDB_txn *t, const char *k, uint64_t *v);
int dsd_meta_put_u64(dsd *h, MDB_txn *t, const char *k, uint64_t v);
int dsd_meta_bin(dsd *h, MDB_txn *t, const char *k, uint8_t *v, size_t n, bool *found);
int dsd_meta_put_bin(dsd *h, MDB_txn *t, const char *k, const uint8_t *v, size_t n);
int dsd_meta_del(dsd *h, MDB_txn *t, const char *k);

/* Secret key files. */
int dsd_key_write(dsd *h, const char *name, const uint8_t sk[64]);
int dsd_key_read(dsd *h, const char *name, uint8_t sk[64]);
int dsd_key_rename(dsd *h, const char *from, const char *to);
void dsd_key_remove(dsd *h, const char *name);

/* Wall clock corrected by the stored offset. */
uint64_t dsd_wall_ms(void);

/* Apply one envelope received from the server in txn t (idempotent):
 * decode, schema-check, merge into the local record, merge its HLC into
 * ours; purge the record if it is a person whose household left the scope.
 * *purged is incremented for a purge.  Undecodable envelopes: DSD_EPROTO. */
/* Apply a remote envelope; *fresh (may be NULL) says the record is a person
 * this device did not hold (its earlier history may be missing). */
int dsd_apply_remote(dsd *h, MDB_txn *t, const uint8_t *env, size_t n, uint64_t *purged,
                     bool *fresh);
/* Merge a merged record the server sent (snapshot) into the local store. */
int dsd_merge_record(dsd *h, MDB_txn *t, const uint8_t *p, size_t n);
/* Drop records outside the current scope (in txn t); count in *purged. */
int dsd_purge_out_of_scope(dsd *h, MDB_txn *t, uint64_t *purged);
/* Is household id in the scope table? */
bool dsd_in_scope(dsd *h, MDB_txn *t, const char *hh, size_t len);

/* BE helpers */
void dsd_be64(uint8_t *p, uint64_t v);
uint64_t dsd_rd64(const uint8_t *p);

/* ---- transport (ws.c): a blocking RFC 6455 client over TCP -------------------- */

typedef struct dsd_ws {
    int fd;
    uint8_t *in;
    size_t n, cap;
    size_t max_msg;
} dsd_ws;

/* Parse ws://host[:port][/path]; connect and upgrade with subprotocol
 * doorstep.v1.  Returns 0, DSD_EURL, DSD_ETLS, DSD_ECONNECT (message in h). */
int dsd_ws_connect(dsd *h, dsd_ws *c, const char *url, int timeout_ms);
/* Send one binary message.  0 or DSD_ECLOSED. */
int dsd_ws_send(dsd_ws *c, const uint8_t *p, size_t n);
/* Receive one binary message into *msg (reset first).  0, DSD_ETIMEOUT,
 * DSD_ECLOSED (peer closed: *close_code if not NULL), DSD_EPROTO. */
int dsd_ws_recv(dsd_ws *c, int timeout_ms, crdt_buf *msg, int *close_code);
/* Send a close frame (best effort) and release. */
void dsd_ws_close(dsd_ws *c);
/* Drop the connection without a close frame (tests: a crash). */
void dsd_ws_abort(dsd_ws *c);

#endif
