/*
 * arena.c — crdt_buf (growable byte buffer) and crdt_arena (bump allocator).
 *
 * Invariants
 *   - crdt_buf: p == NULL iff cap == 0; n <= cap.  Growth doubles, so appends
 *     are amortised O(1); a failed append leaves the buffer unchanged.
 *   - crdt_arena: a singly linked list of chunks, newest first; every pointer
 *     handed out is 16-byte aligned and stays valid until reset/free; the sum
 *     of requested sizes never exceeds `cap` (when cap != 0), which is how
 *     decoders keep memory proportional to their input.
 */
#include "crdt.h"

#include <stdlib.h>
#include <string.h>

/* ---- crdt_buf ------------------------------------------------------------ */

int crdt_buf_append(crdt_buf *b, const void *p, size_t n)
{
    if (n == 0) return CRDT_OK;
    if (b->n + n < b->n) return CRDT_ENOMEM; /* overflow */
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) {
            if (cap > SIZE_MAX / 2) return CRDT_ENOMEM;
            cap *= 2;
        }
        uint8_t *np = realloc(b->p, cap);
        if (!np) return CRDT_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return CRDT_OK;
}

void crdt_buf_reset(crdt_buf *b) { b->n = 0; }

void crdt_buf_free(crdt_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

int crdt_buf_pack_write(void *data, const char *p, size_t n)
{
    crdt_buf *b = data;
    if (b->n == SIZE_MAX) return -1;
    if (!crdt_buf_append(b, p, n)) return 0;
    crdt_buf_free(b);
    b->n = SIZE_MAX;
    return -1;
}

/* ---- crdt_arena ---------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t size;   /* usable bytes in data[] */
    size_t used;
    _Alignas(16) unsigned char data[];
} chunk;

struct crdt_arena {
    chunk *head;
    size_t cap;    /* 0 = unbounded */
    size_t given;  /* bytes handed out since the last reset */
};

#define ARENA_CHUNK 4096

static chunk *chunk_new(size_t size)
{
    chunk *c = malloc(sizeof(chunk) + size);
    if (!c) return NULL;
    c->next = NULL;
    c->size = size;
    c->used = 0;
    return c;
}

crdt_arena *crdt_arena_new(size_t cap)
{
    crdt_arena *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->cap = cap;
    return a;
}

void *crdt_arena_alloc(crdt_arena *a, size_t n)
{
    if (!a) return NULL;
    if (n == 0) n = 1;
    size_t rounded = (n + 15) & ~(size_t)15;
    if (rounded < n) return NULL;
    if (a->cap && (rounded > a->cap || a->given > a->cap - rounded)) return NULL;
    chunk *c = a->head;
    if (!c || c->size - c->used < rounded) {
        size_t size = rounded > ARENA_CHUNK ? rounded : ARENA_CHUNK;
        chunk *nc = chunk_new(size);
        if (!nc) return NULL;
        nc->next = a->head;
        a->head = nc;
        c = nc;
    }
    void *p = c->data + c->used;
    c->used += rounded;
    a->given += rounded;
    return p;
}

void crdt_arena_reset(crdt_arena *a)
{
    if (!a || !a->head) return;
    /* Keep the oldest chunk (the tail) and free the rest. */
    chunk *c = a->head, *keep = NULL;
    while (c) {
        chunk *next = c->next;
        if (!next) keep = c;
        else free(c);
        c = next;
    }
    keep->used = 0;
    a->head = keep;
    a->given = 0;
}

size_t crdt_arena_used(const crdt_arena *a) { return a ? a->given : 0; }

crdt_arena_mark crdt_arena_get_mark(const crdt_arena *a)
{
    crdt_arena_mark m = {NULL, 0, 0};
    if (!a) return m;
    m.chunk = a->head;
    m.used = a->head ? a->head->used : 0;
    m.given = a->given;
    return m;
}

void crdt_arena_rewind(crdt_arena *a, crdt_arena_mark m)
{
    if (!a) return;
    /* Chunks newer than the mark's go; the mark's own is cut back. */
    while (a->head && a->head != m.chunk) {
        chunk *next = a->head->next;
        free(a->head);
        a->head = next;
    }
    if (a->head) a->head->used = m.used;
    a->given = m.given;
}

void crdt_arena_free(crdt_arena *a)
{
    if (!a) return;
    chunk *c = a->head;
    while (c) {
        chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}
