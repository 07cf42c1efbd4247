/*
 * storeutil.h — helpers for store tests: temporary stores, simulated
 * devices that sign real envelopes, and op builders for the default schema.
 */
#ifndef DOORSTEP_STOREUTIL_H
#define DOORSTEP_STOREUTIL_H

#include "store.h"

/* A scratch directory under $TMPDIR with data/ and a key file beside it. */
typedef struct su_dir {
    char root[256];
    char data[300];
    char key[300];
} su_dir;

void su_dir_make(su_dir *d, const char *name);   /* asserts on failure */
void su_dir_remove(su_dir *d);                   /* rm -rf root */
/* init + open with the default schema; map sizes from opts (may be NULL). */
store *su_store_new(su_dir *d, const store_opts *opts);

/* A simulated device: key pair, seq, chain hash, clock. */
typedef struct su_dev {
    uint32_t id;
    uint8_t pk[32], sk[64];
    uint64_t seq;
    uint8_t prev[32];
    crdt_hlc clock;
} su_dev;

void su_dev_init(su_dev *d, uint32_t id);

/* Ops for one delta. */
typedef struct su_ops {
    crdt_op op[16];
    crdt_buf val[16], key[16];
    crdt_dot obs[16][8];
    uint32_t n;
} su_ops;

void su_ops_reset(su_ops *o);
void su_ops_free(su_ops *o);
void su_set_str(su_ops *o, const char *field, const char *v);       /* lww/mv set */
void su_set_keyed(su_ops *o, const char *field, int64_t key, const char *v);
void su_add(su_ops *o, const char *field, const char *elem);
/* A visit entry {date, method} ("上门走访" when method is NULL). */
void su_visit(su_ops *o, const char *field, const char *date, const char *method);
void su_del(su_ops *o);

/*
 * su_make — the device's next delta for kind/id with ops o, at wall time ms:
 * encoded, signed, wrapped; envelope appended to env (reset first).  The
 * device's seq/prev/clock advance.  Returns the delta's hash in hash.
 */
void su_make(su_dev *d, const char *kind, const char *id, su_ops *o, uint64_t ms,
             crdt_buf *env, uint8_t hash[32]);

/* Append one envelope in its own group commit; returns the outcome. */
store_outcome su_push(store *s, const crdt_buf *env, uint64_t now_ms);

/* A valid GB 11643 ID number for index i (deterministic). */
void su_idnum(unsigned i, char out[19]);
#endif
