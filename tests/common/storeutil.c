/*
 * storeutil.c — see storeutil.h.
 */
#include "storeutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>

void su_dir_make(su_dir *d, const char *name)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(d->root, sizeof d->root, "%s/doorstep-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", name);
    assert_non_null(mkdtemp(d->root));
    snprintf(d->data, sizeof d->data, "%s/data", d->root);
    snprintf(d->key, sizeof d->key, "%s/data.key", d->root);
}

void su_dir_remove(su_dir *d)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->root);
    assert_int_equal(system(cmd), 0);
}

store *su_store_new(su_dir *d, const store_opts *opts)
{
    char err[512] = "";
    store *s = NULL;
    int rc = store_init(d->data, d->key, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", 2026,
                        err, sizeof err);
    if (rc) fail_msg("store_init: %s (%s)", err, store_strerror(rc));
    store_opts o = {0};
    if (opts) o = *opts;
    o.no_sync = true; /* tests do not need fsync; durability is tested by crash tests */
    rc = store_open(d->data, d->key, &o, &s, err, sizeof err);
    if (rc) fail_msg("store_open: %s (%s)", err, store_strerror(rc));
    return s;
}

void su_dev_init(su_dev *d, uint32_t id)
{
    uint8_t seed[32];
    memset(d, 0, sizeof *d);
    d->id = id;
    memset(seed, 0, sizeof seed);
    memcpy(seed, &id, sizeof id);
    crypto_sign_seed_keypair(d->pk, d->sk, seed);
}

void su_ops_reset(su_ops *o)
{
    for (int i = 0; i < 16; i++) {
        crdt_buf_reset(&o->val[i]);
        crdt_buf_reset(&o->key[i]);
    }
    memset(o->op, 0, sizeof o->op);
    o->n = 0;
}

void su_ops_free(su_ops *o)
{
    for (int i = 0; i < 16; i++) {
        crdt_buf_free(&o->val[i]);
        crdt_buf_free(&o->key[i]);
    }
    o->n = 0;
}

static crdt_op *next_op(su_ops *o, int code, const char *field)
{
    assert_true(o->n < 16);
    crdt_op *op = &o->op[o->n];
    memset(op, 0, sizeof *op);
    op->code = (uint8_t)code;
    op->field = field;
    op->field_len = field ? (uint32_t)strlen(field) : 0;
    o->n++;
    return op;
}

static void set_val(su_ops *o, crdt_op *op)
{
    crdt_buf *b = &o->val[op - o->op];
    op->val = (crdt_blob){b->p, (uint32_t)b->n};
}

void su_set_str(su_ops *o, const char *field, const char *v)
{
    crdt_op *op = next_op(o, CRDT_OP_SET, field);
    crdt_val_put_str(&o->val[op - o->op], v, strlen(v));
    set_val(o, op);
}

void su_set_keyed(su_ops *o, const char *field, int64_t key, const char *v)
{
    crdt_op *op = next_op(o, CRDT_OP_SET, field);
    crdt_buf *k = &o->key[op - o->op];
    crdt_val_put_int(k, key);
    op->key = (crdt_blob){k->p, (uint32_t)k->n};
    crdt_val_put_str(&o->val[op - o->op], v, strlen(v));
    set_val(o, op);
}

void su_add(su_ops *o, const char *field, const char *elem)
{
    crdt_op *op = next_op(o, CRDT_OP_ADD, field);
    crdt_val_put_str(&o->val[op - o->op], elem, strlen(elem));
    set_val(o, op);
}

void su_visit(su_ops *o, const char *field, const char *date, const char *method)
{
    crdt_op *op = next_op(o, CRDT_OP_APP, field);
    if (!method) method = "上门走访";
    const char *keys[2] = {"date", "method"};
    crdt_scalar vals[2] = {{.t = CRDT_V_STR, .s = date, .len = (uint32_t)strlen(date)},
                           {.t = CRDT_V_STR, .s = method, .len = (uint32_t)strlen(method)}};
    assert_int_equal(crdt_val_put_map(&o->val[op - o->op], keys, vals, 2), 0);
    set_val(o, op);
}

void su_del(su_ops *o) { next_op(o, CRDT_OP_DEL, NULL); }

void su_make(su_dev *d, const char *kind, const char *id, su_ops *o, uint64_t ms,
             crdt_buf *env, uint8_t hash[32])
{
    crdt_delta dl;
    crdt_buf bytes = {0};
    uint8_t sig[64];
    crdt_hlc now;
    memset(&dl, 0, sizeof dl);
    assert_int_equal(crdt_hlc_now(&d->clock, ms, &now), 0);
    dl.dev = d->id;
    dl.epoch = 1;
    dl.seq = ++d->seq;
    memcpy(dl.prev, d->prev, 32);
    dl.hlc = now;
    dl.kind = kind;
    dl.kind_len = (uint32_t)strlen(kind);
    dl.id = id;
    dl.id_len = (uint32_t)strlen(id);
    dl.ops = o->op;
    dl.n_ops = o->n;
    int rc = crdt_delta_encode(&dl, &bytes);
    if (rc) fail_msg("encode: %s", crdt_strerror(rc));
    assert_int_equal(wire_delta_sign(bytes.p, bytes.n, d->sk, sig), 0);
    crdt_buf_reset(env);
    assert_int_equal(wire_envelope_encode(bytes.p, bytes.n, sig, env), 0);
    assert_int_equal(wire_delta_hash(bytes.p, bytes.n, d->prev), 0);
    if (hash) memcpy(hash, d->prev, 32);
    crdt_buf_free(&bytes);
}

store_outcome su_push(store *s, const crdt_buf *env, uint64_t now_ms)
{
    store_outcome out;
    const uint8_t *e = env->p;
    size_t n = env->n;
    int rc = store_append_batch(s, &e, &n, 1, now_ms, 86400000ull, &out);
    if (rc) fail_msg("append_batch: %s", store_strerror(rc));
    return out;
}

void su_idnum(unsigned i, char out[19])
{
    /* Region 110105, birth 1950-01-01 + (i % 20000) days (kept simple:
     * vary year and day-of-month), sequence from i. */
    int year = 1940 + (int)(i % 70);
    int month = 1 + (int)((i / 70) % 12);
    int day = 1 + (int)((i / 840) % 28);
    snprintf(out, 19, "110105%04d%02d%02d%03u", year, month, day, i % 1000);
    out[17] = crdt_idnum_check_char(out);
    out[18] = 0;
}
