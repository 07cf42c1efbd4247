/*
 * testutil.h — helpers shared by the test binaries (not part of any layer).
 *
 * A seeded PRNG (splitmix64 / xoshiro256**) so that every randomized test is
 * reproducible: tu_seed() reads DOORSTEP_SEED from the environment (decimal
 * or 0x-hex) or derives one from the time and pid, and prints
 * "seed: N (replay with DOORSTEP_SEED=N)" on stderr.  DOORSTEP_LONG=1 asks
 * property tests for their long mode.
 */
#ifndef DOORSTEP_TESTUTIL_H
#define DOORSTEP_TESTUTIL_H
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef struct tu_rng { uint64_t s[4]; } tu_rng;

uint64_t tu_seed(const char *test_name);
void tu_rng_init(tu_rng *r, uint64_t seed);
uint64_t tu_next(tu_rng *r);
uint64_t tu_below(tu_rng *r, uint64_t n);   /* uniform in [0, n), n > 0 */
bool tu_long_mode(void);
/* Under valgrind (make memcheck sets DOORSTEP_MEMCHECK=1) randomized and
 * exhaustive tests check memory safety, not coverage: tu_scaled(n) is n/20
 * (at least 1) there and n otherwise; tu_memcheck() says which. */
bool tu_memcheck(void);
uint64_t tu_scaled(uint64_t n);

/* Hex helpers: tu_hex writes 2n+1 chars to out. tu_unhex returns bytes
 * written or -1. */
void tu_hex(const uint8_t *p, size_t n, char *out);
long tu_unhex(const char *hex, uint8_t *out, size_t cap);

/* Read a whole file into a malloc'd buffer (NUL-terminated); NULL on error. */
char *tu_read_file(const char *path, size_t *len);
#endif

/* A small schema covering every CRDT type, built in code so that crdt tests
 * do not depend on the JSON loader.  Kind "t" with fields:
 *   lw (lww text), mv (mv text), pay (mv enum, keyed by int 2000..2100),
 *   tags (set text), visits (log entry {d: date required, n: text}),
 *   cnt (counter), st (stage a < b < c).
 * Free with crdt_schema_free. */
struct crdt_schema;
struct crdt_schema *tu_test_schema(void);
