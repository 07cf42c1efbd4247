/*
 * vv.c — dots and version vectors.
 *
 * Invariants
 *   - crdt_vv entries are sorted by device id, unique, and every seq >= 1
 *     (a device never seen is simply absent).
 *   - Every operation is monotone: seqs only grow.  A failed call (ENOMEM)
 *     leaves the vector unchanged.
 */
#include "crdt.h"

#include <stdlib.h>

int crdt_dot_cmp(crdt_dot a, crdt_dot b)
{
    if (a.dev != b.dev) return a.dev < b.dev ? -1 : 1;
    if (a.seq != b.seq) return a.seq < b.seq ? -1 : 1;
    return 0;
}

/* Index of dev in v, or of where it would be inserted; *found says which. */
static uint32_t vv_find(const crdt_vv *v, uint32_t dev, bool *found)
{
    uint32_t lo = 0, hi = v->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v->e[mid].dev < dev) lo = mid + 1;
        else hi = mid;
    }
    *found = lo < v->n && v->e[lo].dev == dev;
    return lo;
}

uint64_t crdt_vv_get(const crdt_vv *v, uint32_t dev)
{
    bool found;
    uint32_t i = vv_find(v, dev, &found);
    return found ? v->e[i].seq : 0;
}

int crdt_vv_add(crdt_vv *v, crdt_dot d)
{
    bool found;
    if (!v || d.seq == 0) return CRDT_EINVAL;
    uint32_t i = vv_find(v, d.dev, &found);
    if (found) {
        if (d.seq > v->e[i].seq) v->e[i].seq = d.seq;
        return CRDT_OK;
    }
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? v->cap * 2 : 8;
        crdt_dot *ne = realloc(v->e, (size_t)cap * sizeof(*ne));
        if (!ne) return CRDT_ENOMEM;
        v->e = ne;
        v->cap = cap;
    }
    for (uint32_t j = v->n; j > i; j--) v->e[j] = v->e[j - 1];
    v->e[i] = d;
    v->n++;
    return CRDT_OK;
}

bool crdt_vv_covers(const crdt_vv *v, crdt_dot d)
{
    return d.seq <= crdt_vv_get(v, d.dev);
}

int crdt_vv_merge(crdt_vv *v, const crdt_vv *o)
{
    /* Reserve first so that a failure leaves v unchanged. */
    uint32_t need = v->n;
    for (uint32_t i = 0; i < o->n; i++) {
        bool found;
        vv_find(v, o->e[i].dev, &found);
        if (!found) need++;
    }
    if (need > v->cap) {
        crdt_dot *ne = realloc(v->e, (size_t)need * sizeof(*ne));
        if (!ne) return CRDT_ENOMEM;
        v->e = ne;
        v->cap = need;
    }
    for (uint32_t i = 0; i < o->n; i++) {
        int rc = crdt_vv_add(v, o->e[i]);
        if (rc) return rc; /* cannot happen: capacity reserved */
    }
    return CRDT_OK;
}

int crdt_vv_compare(const crdt_vv *a, const crdt_vv *b)
{
    bool a_more = false, b_more = false;
    uint32_t i = 0, j = 0;
    while (i < a->n || j < b->n) {
        if (j == b->n || (i < a->n && a->e[i].dev < b->e[j].dev)) {
            a_more = true;
            i++;
        } else if (i == a->n || b->e[j].dev < a->e[i].dev) {
            b_more = true;
            j++;
        } else {
            if (a->e[i].seq > b->e[j].seq) a_more = true;
            else if (a->e[i].seq < b->e[j].seq) b_more = true;
            i++;
            j++;
        }
    }
    if (a_more && b_more) return CRDT_VV_CONCURRENT;
    if (a_more) return CRDT_VV_AFTER;
    if (b_more) return CRDT_VV_BEFORE;
    return CRDT_VV_EQUAL;
}

void crdt_vv_free(crdt_vv *v)
{
    if (!v) return;
    free(v->e);
    v->e = NULL;
    v->n = v->cap = 0;
}
