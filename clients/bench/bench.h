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
 *   net.c     the network figures against a real doorstepd (a child process
 *             on loopback): the evening wave, sustained closed-loop ingest,
 *             a cold pull of one volunteer's slice, idle connections' RSS.
 *             Its client is a single-threaded epoll WebSocket client with
 *             pre-built, pre-signed, pre-masked push frames.
 *   chart.c   the gnuplot chart of ack latency against load.
 *   bench.c   options, machine description, the run, JSON output.
 *
 * Errors: functions return 0 or -1 after printing one line to stderr.
 */
#ifndef DOORSTEP_BENCH_H
#define DOORSTEP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store.h"

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
    /* The verify worker's cost per delta, one thread (street.c worker_cost):
     * decode + schema + hash + compression, and the Ed25519 check. */
    double worker_noncrypto_us, worker_verify_us;
    size_t worker_sample;
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

/* The generator street.c uses, for the network sections: a street of
 * `persons` split into n_dev contiguous slices of households, device i+1
 * owning slice i; every envelope encoded, signed and chained.  Delta times
 * start 20 days before now_ms, one to three seconds apart. */
typedef struct bench_dev {
    uint32_t id;
    uint8_t pk[32], sk[64];   /* sk is wiped after generation: see bench_dev_keypair */
    uint64_t seq;
    uint8_t prev[CRDT_HASH_BYTES];
    crdt_hlc clock;
    uint64_t wall;
    uint64_t h_lo, h_hi;      /* households [h_lo, h_hi) */
    crdt_buf envs;            /* all envelopes, concatenated */
    size_t *off;              /* envelope i at envs.p + off[i], length off[i+1]-off[i] */
    uint32_t *hh;             /* household index of envelope i's record */
    size_t n, cap;
    size_t fed;               /* ingest cursor */
    int err;
} bench_dev;

typedef struct bench_gen {
    uint64_t persons, households, deltas, seed, now_ms;
    unsigned n_dev;
    uint32_t *first;          /* first person of household h; first[households] = persons */
    bench_dev *dev;           /* n_dev devices, ids 1..n_dev */
    double gen_s;             /* signing wall time */
} bench_gen;

int bench_gen_make(bench_gen *g, uint64_t persons, unsigned n_dev, uint64_t seed,
                   uint64_t now_ms);
void bench_gen_free(bench_gen *g);
/* The key pair of device `id` in a street generated with `seed`. */
void bench_dev_keypair(uint64_t seed, uint32_t id, uint8_t pk[32], uint8_t sk[64]);
/* The record id of household h ("H0000042"). */
void bench_hh_id(uint64_t h, char out[24]);

/* ---- net.c ------------------------------------------------------------------------ */

#define BENCH_WAVE_TRIALS_MAX 5
#define BENCH_CHART_MAX 8

typedef struct bench_net_opts {
    const char *dir;          /* scratch directory */
    const char *schema_path;
    const char *doorstepd;    /* the server binary */
    uint64_t seed;
    uint64_t persons;         /* the street pushed over the network */
    unsigned wave_devices, wave_deltas, wave_trials;
    unsigned chart_n, chart_devices[BENCH_CHART_MAX];
    unsigned sust_batch;      /* deltas per push */
    double sust_seconds, sust_warmup;
    unsigned pull_households;
    unsigned idle_conns;
} bench_net_opts;

typedef struct bench_wave {
    unsigned devices, deltas_each;
    double ms;                /* clock start (before connect) to the last ack */
    double deltas_per_s;
    double ack_p50_ms, ack_p99_ms, ack_p999_ms, ack_max_ms;   /* push sent -> its ack */
    double auth_p50_ms, auth_max_ms;                          /* connect -> welcome */
    uint64_t applied, not_applied;
    double server_cpu_s, client_cpu_s;
    double load_before;       /* 1-minute load average when the wave started */
} bench_wave;

typedef struct bench_net {
    uint64_t persons, households, deltas;
    unsigned devices;
    double gen_s;
    unsigned wave_trials;
    bench_wave wave[BENCH_WAVE_TRIALS_MAX];
    unsigned wave_median;     /* index of the median trial (by ms) */
    unsigned chart_n;
    bench_wave chart[BENCH_CHART_MAX];
    /* sustained */
    unsigned sust_devices, sust_batch;
    double sust_seconds, sust_warmup, sust_window_s;
    uint64_t sust_deltas, sust_not_applied, sust_pushes;
    double sust_per_s, sust_ack_p50_ms, sust_ack_p99_ms, sust_ack_p999_ms;
    double sust_server_cores, sust_client_cores;
    bool sust_ran_out;        /* a device ran out of deltas: window shortened */
    double sust_commits;      /* group commits in the window (server /metrics) */
    double sust_commit_ms;    /* mean group-commit time */
    double sust_commit_batch; /* mean deltas per group commit */
    double sust_commit_busy;  /* share of the window the writer spent committing */
    double sust_load_before;  /* 1-minute load average when the run started */
    /* pull */
    unsigned pull_households;
    uint64_t pull_envelopes, pull_expected, pull_bytes, pull_env_bytes, pull_server_deltas;
    unsigned pull_pages;
    double pull_ms, pull_connect_ms;
    /* idle connections */
    unsigned idle_target, idle_conns;
    long rss_before_kib, rss_after_kib;
    double rss_per_conn_kib, idle_connect_s;
} bench_net;

/* All network sections; 0 or -1. */
int bench_net_run(const bench_net_opts *o, bench_net *out);

/*
 * The evening wave against the peer in dir (y-websocket + y-leveldb, run by
 * dir/ywave.mjs under node; peer.c): its JSON object, or NULL with the
 * reason in why (not installed, node missing, a failed run).
 */
json_t *bench_peer_wave(const char *dir, unsigned devices, unsigned each, unsigned trials,
                        char *why, size_t whylen);

/* ---- chart.c ---------------------------------------------------------------------- */

/* Plot ack latency against load from a result's "wave_chart" to an SVG with
 * gnuplot.  Returns 0 (drawn), 1 (gnuplot missing or no data: skipped, said
 * on stderr) or -1 (gnuplot failed). */
int bench_chart(const json_t *r, const char *svg_path);

/* ---- report.c -------------------------------------------------------------------- */

/* The readable table of a result object (as built by bench.c). */
void bench_print_table(const json_t *r);
/* The Markdown page of a result object; 0 or -1. */
int bench_print_markdown(const json_t *r, const char *source_name);

#endif /* DOORSTEP_BENCH_H */
