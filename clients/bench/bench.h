/*
 * bench.h — what the files of doorstep-bench share (clients/bench/ only).
 *
 * doorstep-bench measures Doorstep against this machine's own limits, in one
 * run (DESIGN.md §8, issue #8):
 *   limits.c  Ed25519 verify rate (one core, all cores); LMDB durable commit
 *             rate for batches of 1, 10, 100, 500 small puts.
 *   street.c  a synthetic street (households and persons, pre-signed on all
 *             cores before any clock starts), fed to store_append_batch in
 *             durable group commits; staff lookups, station reports, bytes
 *             on disk per delta.
 *   report.c  the budgets of DESIGN.md §8, the readable table, and the
 *             Markdown page docs/BENCHMARKS.md generated from a JSON result.
 *   bench.c   options, machine description, the run, JSON output.
 * The network figures (evening wave, sustained throughput, pull bootstrap,
 * idle connections) need doorstepd driven over WebSockets, which this version
 * does not do yet: they are reported as JSON null, never estimated.
 *
 * Errors: functions return 0 or -1 after printing one line to stderr.
 */
#ifndef DOORSTEP_BENCH_H
#define DOORSTEP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* ---- time and randomness --------------------------------------------------- */

double bench_now(void);                  /* CLOCK_MONOTONIC, seconds */
uint64_t bench_rand(uint64_t *state);    /* splitmix64 */
uint64_t bench_below(uint64_t *state, uint64_t n);
int bench_cores(void);                   /* sysconf(_SC_NPROCESSORS_ONLN), >= 1 */
/* Progress line on stderr (prefixed "doorstep-bench: "), printf-style. */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- limits.c ----------------------------------------------------------------- */

#define VERIFY_TRIALS 3
typedef struct bench_verify {
    int threads;
    double one_core_per_s;    /* best trial */
    double all_cores_per_s;   /* best trial */
    double one_core_trials[VERIFY_TRIALS], all_cores_trials[VERIFY_TRIALS];
} bench_verify;

/* Verify pre-signed 200-byte messages on one thread, then on bench_cores()
 * threads, each for VERIFY_TRIALS trials sharing `seconds`; the best trial
 * counts.  0 or -1. */
int bench_verify_rate(double seconds, bench_verify *out);

#define BENCH_LMDB_SIZES 4
extern const unsigned bench_lmdb_batch[BENCH_LMDB_SIZES];   /* 1, 10, 100, 500 */

typedef struct bench_lmdb {
    double commits_per_s[BENCH_LMDB_SIZES];
    double puts_per_s[BENCH_LMDB_SIZES];
} bench_lmdb;

/* Durable (fsync) commits into a fresh environment in dir (created). */
int bench_lmdb_rate(const char *dir, double seconds, bench_lmdb *out);

/* ---- street.c ------------------------------------------------------------------- */

typedef struct bench_street_opts {
    const char *dir;          /* scratch directory (data/ and data.key inside) */
    const char *schema_path;
    uint64_t persons;
    uint64_t seed;
    size_t batch;             /* deltas per group commit */
    size_t lookups;           /* random ID-number lookups */
    int report_runs;          /* station reports timed (median taken) */
} bench_street_opts;

typedef struct bench_street {
    uint64_t persons, households, devices, deltas;
    uint64_t communities, grids;
    double gen_s;             /* pre-signing wall time (not part of any figure) */
    double ingest_s;
    double ingest_per_s;
    uint64_t applied, rejected;
    double env_bytes_mean;    /* mean envelope size fed to the store */
    size_t lookups;
    double lookup_p50_ms, lookup_p99_ms, lookup_p999_ms, lookup_max_ms;
    uint64_t lookup_misses;
    int report_runs;
    size_t report_queries;    /* store_agg_get calls per report */
    double report_ms;         /* median */
    double report_min_ms, report_max_ms;
    int64_t report_persons;   /* station total persons (sanity check) */
    uint64_t page_size, used_pages, file_bytes;
    double disk_bytes_per_delta;
    json_t *disk_dbs;         /* object: db name -> bytes in its pages (owned) */
} bench_street;

/* Generate, ingest, query, measure; 0 or -1.  out->disk_dbs must be
 * json_decref'd by the caller. */
int bench_street_run(const bench_street_opts *o, bench_street *out);

/* ---- report.c -------------------------------------------------------------------- */

/* The readable table of a result object (as built by bench.c). */
void bench_print_table(const json_t *r);
/* The Markdown page of a result object; 0 or -1. */
int bench_print_markdown(const json_t *r, const char *source_name);

#endif /* DOORSTEP_BENCH_H */
