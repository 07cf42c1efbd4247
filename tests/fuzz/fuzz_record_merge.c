/*
 * fuzz_record_merge.c — libFuzzer target: the input bytes drive a sequence
 * of deltas from up to four devices on one record of the test schema
 * (tu_test_schema: lww, mv with observed dots, keyed mv enum, set add/rem,
 * log, counter, stage, tombstone), each through crdt_delta_encode ->
 * crdt_delta_decode -> crdt_schema_check_delta.  Three replicas apply the
 * valid ones in different orders (as generated, reversed, and an order
 * taken from the input with duplicates); their canonical bytes must be
 * identical, and survive a decode/encode round trip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "testutil.h"

#define MAXD 48

static crdt_schema *schema;

typedef struct rd {
    const uint8_t *p;
    size_t n, i;
} rd;

static unsigned next(rd *r) { return r->i < r->n ? r->p[r->i++] : 0; }

static const char *const words[] = {"张三", "李四", "a", "b", ""};
static const char *const pays[] = {"unpaid", "paid", "proxy"};
static const char *const stages[] = {"a", "b", "c"};

static void apply_all(crdt_record *r, crdt_buf *enc, const int *order, int n)
{
    for (int k = 0; k < n; k++) {
        crdt_arena *a = crdt_arena_new(0);
        crdt_delta d;
        int eo;
        const crdt_buf *b = &enc[order[k]];
        if (crdt_delta_decode(b->p, b->n, &crdt_limits_default, a, &d, &eo) ||
            crdt_schema_check_delta(schema, &d, &eo) || crdt_record_apply(r, schema, &d))
            abort(); /* it was valid when generated */
        crdt_arena_free(a);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!schema) schema = tu_test_schema();
    rd r = {data, size, 0};
    crdt_buf enc[MAXD];
    crdt_dot dots[MAXD];
    int n = 0;
    uint64_t seqs[5] = {0};
    memset(enc, 0, sizeof enc);
    while (r.i < r.n && n < MAXD) {
        crdt_op ops[4];
        crdt_buf vals[4] = {{0}}, keys[4] = {{0}};
        crdt_dot obs[4][4];
        unsigned used = 0, nops = 1 + next(&r) % 3, k = 0;
        memset(ops, 0, sizeof ops);
        for (unsigned j = 0; j < nops; j++) {
            unsigned c = next(&r) % 9;
            if (used & (1u << c)) continue;
            if ((c == 7 || c == 8) && (used & ((1u << 7) | (1u << 8)))) continue;
            used |= 1u << c;
            crdt_op *o = &ops[k];
            unsigned v = next(&r);
            static const char *const fields[] = {"lw", "mv", "pay", "tags", "tags",
                                                 "visits", "cnt", "st", NULL};
            o->field = fields[c];
            o->field_len = o->field ? (uint32_t)strlen(o->field) : 0;
            if (c == 3 && (used & (1u << 4))) continue;
            if (c == 4 && (used & (1u << 3))) continue;
            switch (c) {
            case 0: o->code = CRDT_OP_SET; crdt_val_put_str(&vals[k], words[v % 5], strlen(words[v % 5])); break;
            case 1:
            case 2:
                o->code = CRDT_OP_SET;
                if (c == 1) crdt_val_put_str(&vals[k], words[v % 5], strlen(words[v % 5]));
                else {
                    crdt_val_put_str(&vals[k], pays[v % 3], strlen(pays[v % 3]));
                    crdt_val_put_int(&keys[k], 2000 + (v >> 4) % 3);
                }
                /* observe up to 2 earlier deltas' dots, sorted and unique */
                if (n && (v & 8)) {
                    crdt_dot a = dots[next(&r) % n], b = dots[next(&r) % n];
                    if (crdt_dot_cmp(a, b) > 0) { crdt_dot t = a; a = b; b = t; }
                    obs[k][0] = a;
                    o->n_obs = 1;
                    if (crdt_dot_cmp(a, b) != 0) { obs[k][1] = b; o->n_obs = 2; }
                    o->obs = obs[k];
                }
                break;
            case 3: o->code = CRDT_OP_ADD; crdt_val_put_str(&vals[k], words[v % 4], strlen(words[v % 4])); break;
            case 4:
                o->code = CRDT_OP_REM;
                crdt_val_put_str(&vals[k], words[v % 4], strlen(words[v % 4]));
                if (n) { obs[k][0] = dots[next(&r) % n]; o->n_obs = 1; o->obs = obs[k]; }
                break;
            case 5: {
                o->code = CRDT_OP_APP;
                char date[11];
                snprintf(date, sizeof date, "2026-01-%02u", 1 + v % 28);
                const char *keys_[1] = {"d"};
                crdt_scalar sv[1] = {{.t = CRDT_V_STR, .s = date, .len = 10}};
                crdt_val_put_map(&vals[k], keys_, sv, 1);
                break;
            }
            case 6: o->code = CRDT_OP_INC; crdt_val_put_int(&vals[k], (int64_t)(v % 7) - 3 ? (int64_t)(v % 7) - 3 : 1); break;
            case 7: o->code = CRDT_OP_RAISE; crdt_val_put_str(&vals[k], stages[v % 3], 1); break;
            default: o->code = v & 1 ? CRDT_OP_DEL : CRDT_OP_UNDEL; break;
            }
            o->val = (crdt_blob){vals[k].p, (uint32_t)vals[k].n};
            o->key = (crdt_blob){keys[k].p, (uint32_t)keys[k].n};
            k++;
        }
        unsigned dev = 1 + next(&r) % 4;
        crdt_delta d;
        memset(&d, 0, sizeof d);
        d.dev = dev;
        d.epoch = 1;
        d.seq = seqs[dev] + 1;
        memset(d.prev, d.seq == 1 ? 0 : 1, sizeof d.prev);
        d.hlc = ((uint64_t)(1700000000000ull + next(&r) * 1000ull) << 16) | next(&r);
        d.kind = "t";
        d.kind_len = 1;
        d.id = "r1";
        d.id_len = 2;
        d.ops = ops;
        d.n_ops = k;
        crdt_buf b = {0};
        int eo;
        crdt_arena *a = crdt_arena_new(0);
        crdt_delta back;
        if (k && crdt_delta_encode(&d, &b) == 0 &&
            crdt_delta_decode(b.p, b.n, &crdt_limits_default, a, &back, &eo) == 0 &&
            crdt_schema_check_delta(schema, &back, &eo) == 0) {
            enc[n] = b;
            dots[n] = (crdt_dot){dev, d.seq};
            seqs[dev]++;
            n++;
        } else {
            crdt_buf_free(&b);
        }
        crdt_arena_free(a);
        for (int j = 0; j < 4; j++) {
            crdt_buf_free(&vals[j]);
            crdt_buf_free(&keys[j]);
        }
    }
    int o1[MAXD], o2[MAXD], o3[MAXD * 2], n3 = 0;
    for (int i = 0; i < n; i++) {
        o1[i] = i;
        o2[i] = n - 1 - i;
    }
    /* a third order from the input: a rotation, every delta, some twice */
    unsigned rot = n ? (unsigned)(size % (size_t)n) : 0;
    for (int i = 0; i < n; i++) {
        o3[n3++] = (int)((i + rot) % (unsigned)n);
        if (i < (int)size && (data[i] & 1)) o3[n3++] = i;
    }
    crdt_record *a = crdt_record_new("t", 1, "r1", 2), *b = crdt_record_new("t", 1, "r1", 2),
                *c = crdt_record_new("t", 1, "r1", 2);
    if (!a || !b || !c) abort();
    apply_all(a, enc, o1, n);
    apply_all(b, enc, o2, n);
    apply_all(c, enc, o3, n3);
    crdt_buf ea = {0}, eb = {0}, ec = {0}, er = {0};
    if (crdt_record_encode(a, &ea) || crdt_record_encode(b, &eb) || crdt_record_encode(c, &ec))
        abort();
    if (ea.n != eb.n || memcmp(ea.p, eb.p, ea.n) || ea.n != ec.n || memcmp(ea.p, ec.p, ea.n)) {
        fprintf(stderr, "fuzz_record_merge: replicas diverged after %d deltas\n", n);
        abort();
    }
    crdt_record *back = NULL;
    if (crdt_record_decode(ea.p, ea.n, &back) || crdt_record_encode(back, &er) || er.n != ea.n ||
        memcmp(er.p, ea.p, ea.n))
        abort();
    crdt_record_free(back);
    crdt_record_free(a);
    crdt_record_free(b);
    crdt_record_free(c);
    crdt_buf_free(&ea);
    crdt_buf_free(&eb);
    crdt_buf_free(&ec);
    crdt_buf_free(&er);
    for (int i = 0; i < n; i++) crdt_buf_free(&enc[i]);
    return 0;
}
