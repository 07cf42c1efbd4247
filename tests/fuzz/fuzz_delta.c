/*
 * fuzz_delta.c — libFuzzer target: untrusted delta bytes through the whole
 * crdt pipeline (bounded walk, decode, schema check against the default
 * schema, apply to a record, record encode/decode round trip).
 *
 * Properties checked on every input:
 *   - nothing crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - a delta that decodes re-encodes to exactly the input bytes;
 *   - applying it twice changes nothing the second time (idempotence);
 *   - the record's canonical bytes survive a decode/encode round trip;
 *   - the fast pass (crdt_delta_decode_fast) accepts exactly what the
 *     reference decoder accepts, and decodes it to the same delta (compared
 *     by re-encoding both).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "wire.h"

static crdt_schema *schema;

static void load_schema(void)
{
    char err[512];
    if (schema) return;
    if (wire_schema_load_file(DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json", &schema, err,
                              sizeof err)) {
        fprintf(stderr, "fuzz_delta: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    crdt_arena *a = crdt_arena_new(64 * size + 4096);
    crdt_delta d;
    crdt_buf re = {0}, r1 = {0}, r2 = {0};
    int err_op;
    load_schema();
    {
        crdt_delta f, ref;
        int eo;
        bool fast = crdt_delta_decode_fast(data, size, &crdt_limits_default, a, &f);
        int rrc = crdt_delta_decode_ref(data, size, &crdt_limits_default, a, &ref, &eo);
        if (fast != (rrc == 0)) abort();
        if (fast) {
            if (crdt_delta_encode(&f, &r1) || crdt_delta_encode(&ref, &r2) || r1.n != r2.n ||
                memcmp(r1.p, r2.p, r1.n))
                abort();
            crdt_buf_reset(&r1);
            crdt_buf_reset(&r2);
        }
    }
    if (crdt_delta_decode(data, size, &crdt_limits_default, a, &d, &err_op) != 0) goto out;
    if (crdt_delta_encode(&d, &re) != 0 || re.n != size || memcmp(re.p, data, size) != 0)
        abort();
    if (crdt_schema_check_delta(schema, &d, &err_op) != 0) goto out;
    crdt_record *r = crdt_record_new(d.kind, d.kind_len, d.id, d.id_len);
    if (!r) abort();
    if (crdt_record_apply(r, schema, &d) != 0) abort();
    if (crdt_record_encode(r, &r1) != 0) abort();
    if (crdt_record_apply(r, schema, &d) != 0) abort();
    if (crdt_record_encode(r, &r2) != 0) abort();
    if (r1.n != r2.n || memcmp(r1.p, r2.p, r1.n) != 0) abort();
    crdt_record *back = NULL;
    if (crdt_record_decode(r1.p, r1.n, &back) != 0) abort();
    crdt_buf_reset(&r2);
    if (crdt_record_encode(back, &r2) != 0) abort();
    if (r1.n != r2.n || memcmp(r1.p, r2.p, r1.n) != 0) abort();
    crdt_record_free(back);
    crdt_record_free(r);
out:
    crdt_buf_free(&re);
    crdt_buf_free(&r1);
    crdt_buf_free(&r2);
    crdt_arena_free(a);
    return 0;
}
