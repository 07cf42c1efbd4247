/* tdelta.c — see tdelta.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "tdelta.h"

void td_init_for(tdelta *t, const char *kind, const char *id, uint32_t dev, uint64_t seq,
                 uint64_t ms)
{
    memset(t, 0, sizeof *t);
    t->d.dev = dev;
    t->d.epoch = 1;
    t->d.seq = seq;
    t->d.hlc = CRDT_HLC_MAKE(ms, 0);
    t->d.kind = kind;
    t->d.kind_len = (uint32_t)strlen(kind);
    t->d.id = id;
    t->d.id_len = (uint32_t)strlen(id);
    t->d.ops = t->ops;
}

crdt_op *td_op(tdelta *t, int code, const char *field)
{
    assert_true(t->d.n_ops < 8);
    crdt_op *o = &t->ops[t->d.n_ops++];
    o->code = (uint8_t)code;
    o->field = field;
    o->field_len = field ? (uint32_t)strlen(field) : 0;
    return o;
}

void td_str(tdelta *t, crdt_op *o, const char *s)
{
    crdt_buf *b = &t->v[o - t->ops];
    assert_int_equal(crdt_val_put_str(b, s, strlen(s)), 0);
    o->val = (crdt_blob){b->p, (uint32_t)b->n};
}

void td_int(tdelta *t, crdt_op *o, int64_t i)
{
    crdt_buf *b = &t->v[o - t->ops];
    assert_int_equal(crdt_val_put_int(b, i), 0);
    o->val = (crdt_blob){b->p, (uint32_t)b->n};
}

void td_key(tdelta *t, crdt_op *o, int64_t key)
{
    crdt_buf *b = &t->k[o - t->ops];
    assert_int_equal(crdt_val_put_int(b, key), 0);
    o->key = (crdt_blob){b->p, (uint32_t)b->n};
}

void td_obs(tdelta *t, crdt_op *o, uint32_t dev, uint64_t seq)
{
    crdt_dot *arr = t->obs[o - t->ops];
    assert_true(o->n_obs < 8);
    arr[o->n_obs++] = (crdt_dot){dev, seq};
    o->obs = arr;
}

void td_free(tdelta *t)
{
    for (int i = 0; i < 8; i++) {
        crdt_buf_free(&t->v[i]);
        crdt_buf_free(&t->k[i]);
    }
}
