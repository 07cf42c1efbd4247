/*
 * failalloc.c — see failalloc.h.  Replaces the malloc family for the whole
 * process by symbol interposition (glibc manual, "Replacing malloc") and
 * forwards to glibc's allocator through its exported __libc_* entry points.
 *
 * Invariants
 *   - live == (successful allocations) - (frees of non-NULL pointers) since
 *     the process started: a failed allocation changes nothing; realloc that
 *     moves a block neither adds nor removes one; realloc(p, 0) is a free
 *     (glibc returns NULL and frees p); a failed realloc leaves p live.
 *   - At most one allocation fails per arm: the one whose number (counted
 *     from the arm, starting at 1) equals the armed n.
 *   - Nothing here allocates, takes a lock or calls stdio, so it is safe in
 *     any thread and at any point of libc's own start-up.
 */
#include "failalloc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#error "failalloc.c must not be built with AddressSanitizer (it defines malloc)"
#endif

/* glibc's own allocator, exported for exactly this use. */
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t n);

/* The replacements have no prototypes in this file's headers beyond
 * stdlib.h (malloc, calloc, realloc, free, posix_memalign, aligned_alloc,
 * valloc under _DEFAULT_SOURCE); declare the rest for -Wmissing-prototypes. */
void *memalign(size_t align, size_t n);
void *pvalloc(size_t n);
void *valloc(size_t n);

static atomic_uint_fast64_t fa_nth;    /* 0 = disarmed */
static atomic_uint_fast64_t fa_count;  /* allocations since arm/disarm */
static atomic_bool fa_fired;
static atomic_int_fast64_t fa_live;

void failalloc_arm(uint64_t nth)
{
    atomic_store(&fa_nth, 0);
    atomic_store(&fa_fired, false);
    atomic_store(&fa_count, 0);
    atomic_store(&fa_nth, nth);
}

void failalloc_disarm(void)
{
    atomic_store(&fa_nth, 0);
    atomic_store(&fa_count, 0);
    atomic_store(&fa_fired, false);
}

uint64_t failalloc_count(void) { return atomic_load(&fa_count); }
bool failalloc_fired(void) { return atomic_load(&fa_fired); }
int64_t failalloc_live(void) { return atomic_load(&fa_live); }

/* Count one allocation attempt; true if it is the one to fail. */
static bool fa_fail_now(void)
{
    uint64_t c = atomic_fetch_add(&fa_count, 1) + 1;
    uint64_t nth = atomic_load(&fa_nth);
    if (nth && c == nth) {
        atomic_store(&fa_fired, true);
        return true;
    }
    return false;
}

static void *fa_track(void *p)
{
    if (p) atomic_fetch_add(&fa_live, 1);
    return p;
}

void *malloc(size_t n)
{
    if (fa_fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return fa_track(__libc_malloc(n));
}

void *calloc(size_t n, size_t size)
{
    if (fa_fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return fa_track(__libc_calloc(n, size));
}

void *realloc(void *p, size_t n)
{
    if (!p) return malloc(n);
    if (n == 0) {
        /* glibc: frees p and returns NULL.  Not an allocation. */
        atomic_fetch_sub(&fa_live, 1);
        return __libc_realloc(p, 0);
    }
    if (fa_fail_now()) {
        errno = ENOMEM;
        return NULL; /* p stays live */
    }
    /* On success p is replaced by the result (same count); on a genuine
     * failure p stays live (same count). */
    return __libc_realloc(p, n);
}

void free(void *p)
{
    if (!p) return;
    atomic_fetch_sub(&fa_live, 1);
    __libc_free(p);
}

static void *fa_memalign(size_t align, size_t n)
{
    if (fa_fail_now()) {
        errno = ENOMEM;
        return NULL;
    }
    return fa_track(__libc_memalign(align, n));
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    int saved = errno;
    void *p = fa_memalign(align, n);
    errno = saved;
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n) { return fa_memalign(align, n); }
void *memalign(size_t align, size_t n) { return fa_memalign(align, n); }

void *valloc(size_t n) { return fa_memalign((size_t)sysconf(_SC_PAGESIZE), n); }

void *pvalloc(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t rounded = (n + page - 1) & ~(page - 1);
    if (rounded < n) {
        errno = ENOMEM;
        return NULL;
    }
    return fa_memalign(page, rounded ? rounded : page);
}
