/*
 * fuzz_mpcheck.c — libFuzzer target: untrusted bytes through the bounded
 * msgpack walk (crdt_mp_check) under the default limits and under generous
 * ones (huge max_entries, 32 levels: msgpack-c 4.0's unpacker itself stops
 * at 32 levels of nesting, MSGPACK_EMBED_STACK_SIZE, so the walk's 64-level
 * ceiling is more than msgpack-c can follow).
 *
 * Properties checked on every input:
 *   - nothing crashes or reads out of bounds (ASan/UBSan); no recursion, so
 *     deep nesting cannot overflow the stack;
 *   - the result and err_off are deterministic, and err_off <= size;
 *   - whatever is accepted, msgpack-c accepts too, consuming exactly `size`
 *     bytes, with no float or ext objects and only string map keys;
 *   - accepting under the default limits implies accepting under the
 *     generous ones (the generous limits are all >= the defaults).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "crdt.h"

static const crdt_limits generous = {262144u, 32u, UINT32_MAX, 4096u, 262144u, 64u};

/* Structural rules on what msgpack-c made of accepted bytes.  The walk
 * already bounded the depth (<= 32), so recursion here is fine. */
static void obey(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
    case MSGPACK_OBJECT_EXT:
        abort();
    case MSGPACK_OBJECT_ARRAY:
        for (uint32_t i = 0; i < o->via.array.size; i++) obey(&o->via.array.ptr[i]);
        break;
    case MSGPACK_OBJECT_MAP:
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR) abort();
            obey(&o->via.map.ptr[i].val);
        }
        break;
    default:
        break;
    }
}

static int run(const uint8_t *data, size_t size, const crdt_limits *lim)
{
    size_t off1 = 0, off2 = 0;
    int rc = crdt_mp_check(data, size, lim, &off1);
    if (crdt_mp_check(data, size, lim, &off2) != rc || off1 != off2) abort();
    if (rc > 0 || (rc != 0 && rc != CRDT_ETOOBIG && off1 > size)) abort();
    if (rc == 0) {
        msgpack_unpacked up;
        size_t used = 0;
        if (off1 != 0) abort();
        msgpack_unpacked_init(&up);
        if (msgpack_unpack_next(&up, (const char *)data, size, &used) != MSGPACK_UNPACK_SUCCESS ||
            used != size)
            abort();
        obey(&up.data);
        msgpack_unpacked_destroy(&up);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int rc_default = run(data, size, &crdt_limits_default);
    int rc_generous = run(data, size, &generous);
    if (rc_default == 0 && rc_generous != 0) abort();
    (void)crdt_utf8_valid(data, size);
    return 0;
}
