/*
 * failalloc.h — allocation-failure injection for in-process tests (issue #9).
 *
 * Linking tests/common/failalloc.c into a test executable replaces malloc,
 * calloc, realloc, free, posix_memalign, aligned_alloc, memalign, valloc and
 * pvalloc for the whole process (glibc supports replacing malloc by symbol
 * interposition; every shared library, msgpack-c, libsodium and liblmdb
 * included, then calls these).  Each forwards to glibc's own allocator
 * (__libc_malloc, ...), so under valgrind the blocks are still valgrind's.
 *
 * What it offers:
 *   - failalloc_arm(n): the n-th allocation from now (1 = the next one)
 *     fails, once; every other allocation succeeds.
 *   - failalloc_disarm(): no failure (also clears the counters below).
 *   - failalloc_count(): allocations attempted since the last arm/disarm,
 *     so a loop over n knows it went past the end of a code path when a run
 *     finishes with failalloc_fired() still false.
 *   - failalloc_live(): blocks live now (successful allocations minus
 *     frees), always counted, for leak checks against a baseline.
 *
 * realloc(p, n > 0) counts as one allocation (it may fail, and then p stays
 * live); realloc(NULL, n) is a malloc; realloc(p, 0) frees p (glibc) and is
 * never failed.  Zero-size malloc/calloc are counted like any other.
 *
 * Never build this file with AddressSanitizer (the ASan runtime defines
 * malloc itself): CMake builds the tests that use it only when
 * DOORSTEP_SANITIZE and DOORSTEP_FUZZ are OFF.  Thread-safe (atomics).
 */
#ifndef DOORSTEP_FAILALLOC_H
#define DOORSTEP_FAILALLOC_H

#include <stdbool.h>
#include <stdint.h>

void failalloc_arm(uint64_t nth);
void failalloc_disarm(void);
uint64_t failalloc_count(void);
bool failalloc_fired(void);
int64_t failalloc_live(void);
#endif
