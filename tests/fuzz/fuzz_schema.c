/*
 * fuzz_schema.c — libFuzzer target: untrusted schema JSON through
 * wire_schema_load_buffer (jansson parse, then crdt_schema_validate).
 * Nothing may crash or leak; a schema that loads is used once: a record of
 * its first kind is created and encoded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crdt.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    crdt_schema *s = NULL;
    char err[512];
    if (wire_schema_load_buffer((const char *)data, size, "fuzz", &s, err, sizeof err) != 0) {
        if (s) abort(); /* nothing returned on failure */
        if (!memchr(err, 0, sizeof err)) abort();
        return 0;
    }
    if (!s) abort();
    if (s->n_kinds) {
        const char *k = s->kinds[0].name;
        crdt_record *r = crdt_record_new(k, strlen(k), "r1", 2);
        crdt_buf b = {0};
        if (!r || crdt_record_encode(r, &b)) abort();
        crdt_buf_free(&b);
        crdt_record_free(r);
    }
    crdt_schema_free(s);
    return 0;
}
