/*
 * tdelta.h — a tiny builder of deltas for tests (not part of any layer):
 * ops with string/int values, keys and observed dots, owned by the tdelta.
 * Used by tests/crdt/test_record.c and tests/wire/test_records.c.
 * The helpers assert (cmocka) on failure.
 */
#ifndef DOORSTEP_TDELTA_H
#define DOORSTEP_TDELTA_H
#include "crdt.h"

typedef struct tdelta {
    crdt_delta d;
    crdt_op ops[8];
    crdt_buf v[8], k[8];          /* per op: value, key (owned) */
    crdt_dot obs[8][8];           /* per op: observed dots */
} tdelta;

/* An empty delta for kind/id (static strings) by dev at seq, HLC (ms, 0),
 * key epoch 1, prev all zero (set it after, if the test cares). */
void td_init_for(tdelta *t, const char *kind, const char *id, uint32_t dev, uint64_t seq,
                 uint64_t ms);
crdt_op *td_op(tdelta *t, int code, const char *field);   /* field NULL: record-level */
void td_str(tdelta *t, crdt_op *o, const char *s);
void td_int(tdelta *t, crdt_op *o, int64_t i);
void td_key(tdelta *t, crdt_op *o, int64_t key);
void td_obs(tdelta *t, crdt_op *o, uint32_t dev, uint64_t seq);
void td_free(tdelta *t);                                  /* values and keys */
#endif
