/*
 * bench.c — doorstep-bench: Doorstep measured against this machine's limits.
 *
 *   doorstep-bench [--quick] [--json] [--dir DIR] [--persons N] [--seed S]
 *                  [--batch N] [--schema FILE] [--server PATH] [--only store|net]
 *   doorstep-bench --report FILE.json      Markdown page (docs/BENCHMARKS.md)
 *   doorstep-bench --chart FILE.json OUT.svg   ack latency against load (gnuplot)
 *
 * One run takes the limits (Ed25519 verify rate, LMDB durable commit rate),
 * then the store figures on a synthetic street (see street.c), then the
 * network figures against a doorstepd child process on loopback (net.c), and
 * prints a table, or with --json exactly one JSON object on stdout.  Progress
 * goes to stderr.  A section left out with --only is JSON null.
 *
 * Scratch data lives in a fresh doorstep-bench-XXXXXX directory inside
 * --dir (default $TMPDIR or /tmp), removed at the end.
 *
 * Exit status: 0 measured; 1 a measurement failed; 2 usage.
 */
#define _XOPEN_SOURCE 700   /* nftw */
#include <errno.h>
#include <math.h>
#include <ftw.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <libgen.h>

#include <lmdb.h>
#include <sodium.h>

#include "bench.h"

#ifndef DOORSTEP_SOURCE_DIR
#define DOORSTEP_SOURCE_DIR "."
#endif

/* ---- small shared helpers ------------------------------------------------------ */

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t bench_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t bench_below(uint64_t *state, uint64_t n) { return n ? bench_rand(state) % n : 0; }

int bench_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

static double t_start;

void bench_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "doorstep-bench [%6.1f s]: ", bench_now() - t_start);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
}

/* ---- the machine ---------------------------------------------------------------- */

static void cpu_model(char *out, size_t n)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(out, n, "unknown");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10)) continue;
        char *c = strchr(line, ':');
        if (!c) continue;
        c++;
        while (*c == ' ' || *c == '\t') c++;
        c[strcspn(c, "\n")] = 0;
        snprintf(out, n, "%s", c);
        break;
    }
    fclose(f);
}

static const char *fs_name(const char *dir)
{
    struct statfs sf;
    if (statfs(dir, &sf)) return "unknown";
    switch ((unsigned long)sf.f_type) {
    case 0xEF53UL: return "ext4";
    case 0x58465342UL: return "xfs";
    case 0x9123683EUL: return "btrfs";
    case 0x01021994UL: return "tmpfs (fsync is free: commit figures are not durable-disk figures)";
    case 0x794c7630UL: return "overlayfs";
    case 0x2FC12FC1UL: return "zfs";
    default: return "other";
    }
}

static json_t *machine_json(const char *dir)
{
    char cpu[256], lib[128], kern[300];
    struct utsname u;
    double mem = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    cpu_model(cpu, sizeof cpu);
    if (uname(&u) == 0) snprintf(kern, sizeof kern, "%s %s %s", u.sysname, u.release, u.machine);
    else snprintf(kern, sizeof kern, "unknown");
    snprintf(lib, sizeof lib, "libsodium %s, %s", sodium_version_string(),
             mdb_version(NULL, NULL, NULL));
    return json_pack("{ss si sf ss ss ss ss}", "cpu_model", cpu, "cores", bench_cores(),
                     "memory_gib", mem / (1024.0 * 1024 * 1024), "kernel", kern,
                     "filesystem", fs_name(dir), "libraries", lib,
#ifdef __VERSION__
                     "compiler", __VERSION__
#else
                     "compiler", "unknown"
#endif
    );
}

static void iso_date(char *out, size_t n)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- options ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: doorstep-bench [--quick] [--json] [--dir DIR] [--persons N] [--seed S]\n"
            "                      [--batch N] [--schema FILE] [--server PATH] [--only store|net]\n"
            "                      [--peer DIR | --no-peer]\n"
            "       doorstep-bench --report FILE.json > docs/BENCHMARKS.md\n"
            "       doorstep-bench --chart FILE.json OUT.svg\n"
            "\n"
            "  --quick        50,000 persons, shorter limit runs (under a minute)\n"
            "  --json         print exactly one JSON object on stdout\n"
            "  --dir DIR      scratch space (default $TMPDIR or /tmp); a fresh\n"
            "                 doorstep-bench-XXXXXX directory inside it is removed at the end\n"
            "  --persons N    persons on the synthetic street (default 1,000,000; quick 50,000)\n"
            "  --seed S       data and lookup seed (default 1)\n"
            "  --batch N      deltas per durable group commit (default 500)\n"
            "  --schema FILE  record schema (default %s/crdt/schema/yibao.json)\n"
            "  --server PATH  doorstepd to drive (default: beside doorstep-bench)\n"
            "  --only WHAT    store: limits and store figures only; net: limits and\n"
            "                 network figures only (the other section is null)\n"
            "  --peer DIR     the wave peer (default %s/clients/bench/peer): the same\n"
            "                 evening wave against y-websocket + y-leveldb, when installed\n"
            "  --no-peer      skip the peer's wave\n"
            "  --report FILE  render a saved JSON result as Markdown and exit\n"
            "  --chart FILE OUT.svg  plot ack latency against load with gnuplot and exit\n"
            "                 (skipped, exit 0, if gnuplot is not installed)\n",
            DOORSTEP_SOURCE_DIR, DOORSTEP_SOURCE_DIR);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') return -1;
    *out = v;
    return 0;
}

static int report_mode(const char *file)
{
    json_error_t je;
    json_t *r = json_load_file(file, 0, &je);
    if (!r) {
        fprintf(stderr, "doorstep-bench: %s:%d: %s\n", file, je.line, je.text);
        return 1;
    }
    const char *base = strrchr(file, '/');
    char name[512];
    /* Name it as the repository does: bench-results/<file>. */
    snprintf(name, sizeof name, "bench-results/%s", base ? base + 1 : file);
    int rc = bench_print_markdown(r, name);
    json_decref(r);
    return rc ? 1 : 0;
}

static int chart_mode(const char *file, const char *svg)
{
    json_error_t je;
    json_t *r = json_load_file(file, 0, &je);
    if (!r) {
        fprintf(stderr, "doorstep-bench: %s:%d: %s\n", file, je.line, je.text);
        return 1;
    }
    int rc = bench_chart(r, svg);
    json_decref(r);
    return rc < 0 ? 1 : 0;
}

/* doorstepd beside this binary (the build directory), else on PATH. */
static void default_server(char *out, size_t n)
{
    char self[600];
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l > 0) {
        self[l] = 0;
        snprintf(out, n, "%s/doorstepd", dirname(self));
        if (access(out, X_OK) == 0) return;
    }
    snprintf(out, n, "doorstepd");
    const char *path = getenv("PATH");
    if (!path) return;
    char *dup = strdup(path), *save = NULL;
    for (char *d = dup ? strtok_r(dup, ":", &save) : NULL; d; d = strtok_r(NULL, ":", &save)) {
        char cand[700];
        snprintf(cand, sizeof cand, "%s/doorstepd", d);
        if (access(cand, X_OK) == 0) {
            snprintf(out, n, "%s", cand);
            break;
        }
    }
    free(dup);
}

static json_t *wave_json(const bench_wave *w)
{
    return json_pack("{sI sI sf sf sf sf sf sf sf sf sI sI sf sf sf}", "devices",
                     (json_int_t)w->devices, "deltas_each", (json_int_t)w->deltas_each, "ms",
                     w->ms, "deltas_per_s", w->deltas_per_s, "ack_p50_ms", w->ack_p50_ms,
                     "ack_p99_ms", w->ack_p99_ms, "ack_p999_ms", w->ack_p999_ms, "ack_max_ms",
                     w->ack_max_ms, "auth_p50_ms", w->auth_p50_ms, "auth_max_ms",
                     w->auth_max_ms, "applied", (json_int_t)w->applied, "not_applied",
                     (json_int_t)w->not_applied, "server_cpu_s", w->server_cpu_s,
                     "client_cpu_s", w->client_cpu_s, "load_before", w->load_before);
}

static void set_num(json_t *r, const char *key, bool have, double v)
{
    json_object_set_new(r, key, have && isfinite(v) ? json_real(v) : json_null());
}

/* ---- main ----------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"quick", no_argument, NULL, 'q'},    {"json", no_argument, NULL, 'j'},
        {"dir", required_argument, NULL, 'd'}, {"persons", required_argument, NULL, 'n'},
        {"seed", required_argument, NULL, 's'}, {"batch", required_argument, NULL, 'b'},
        {"schema", required_argument, NULL, 'S'}, {"report", required_argument, NULL, 'r'},
        {"server", required_argument, NULL, 'D'}, {"only", required_argument, NULL, 'o'},
        {"chart", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
        {"peer", required_argument, NULL, 'P'}, {"no-peer", no_argument, NULL, 'N'},
        {NULL, 0, NULL, 0}};
    bool quick = false, as_json = false, do_store = true, do_net = true;
    const char *base = NULL, *report = NULL, *chart = NULL, *server = NULL;
    const char *schema = DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json";
    const char *peer_dir = DOORSTEP_SOURCE_DIR "/clients/bench/peer";
    uint64_t persons = 0, seed = 1, batch = 500;
    char server_buf[700];
    int c;
    t_start = bench_now();
    while ((c = getopt_long(argc, argv, "qjd:n:s:b:S:r:D:o:c:hP:N", longopts, NULL)) != -1) {
        switch (c) {
        case 'q': quick = true; break;
        case 'j': as_json = true; break;
        case 'd': base = optarg; break;
        case 'n':
            if (parse_u64(optarg, &persons) || persons < 1) {
                fprintf(stderr, "doorstep-bench: --persons wants a positive integer\n");
                return 2;
            }
            break;
        case 's':
            if (parse_u64(optarg, &seed)) {
                fprintf(stderr, "doorstep-bench: --seed wants an unsigned integer\n");
                return 2;
            }
            break;
        case 'b':
            if (parse_u64(optarg, &batch) || batch < 1 || batch > 100000) {
                fprintf(stderr, "doorstep-bench: --batch wants 1..100000\n");
                return 2;
            }
            break;
        case 'S': schema = optarg; break;
        case 'r': report = optarg; break;
        case 'D': server = optarg; break;
        case 'c': chart = optarg; break;
        case 'P': peer_dir = optarg; break;
        case 'N': peer_dir = NULL; break;
        case 'o':
            if (!strcmp(optarg, "store")) do_net = false;
            else if (!strcmp(optarg, "net")) do_store = false;
            else {
                fprintf(stderr, "doorstep-bench: --only wants store or net\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (chart) {
        if (optind + 1 != argc) {
            fprintf(stderr, "doorstep-bench: --chart FILE.json OUT.svg\n");
            return 2;
        }
        return chart_mode(chart, argv[optind]);
    }
    if (optind < argc) {
        fprintf(stderr, "doorstep-bench: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (report) return report_mode(report);
    if (sodium_init() < 0) {
        fprintf(stderr, "doorstep-bench: sodium_init failed\n");
        return 1;
    }
    if (!persons) persons = quick ? 50000 : 1000000;
    if (!base) {
        base = getenv("TMPDIR");
        if (!base || !*base) base = "/tmp";
    }
    if (access(schema, R_OK)) {
        fprintf(stderr, "doorstep-bench: schema %s: %s (use --schema FILE)\n", schema,
                strerror(errno));
        return 1;
    }
    if (!server) {
        default_server(server_buf, sizeof server_buf);
        server = server_buf;
    }

    char dir[600], raw[700], date[32], cmd[1024] = "doorstep-bench";
    snprintf(dir, sizeof dir, "%s/doorstep-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "doorstep-bench: mkdtemp in %s: %s\n", base, strerror(errno));
        return 1;
    }
    snprintf(raw, sizeof raw, "%s/lmdb-raw", dir);
    for (int i = 1; i < argc; i++) {
        size_t l = strlen(cmd);
        snprintf(cmd + l, sizeof cmd - l, " %s", argv[i]);
    }
    iso_date(date, sizeof date);
    bench_progress("%s mode, %llu persons, scratch in %s", quick ? "quick" : "full",
                   (unsigned long long)persons, dir);

    double lim_s = quick ? 1.0 : 3.0;
    bench_verify ver;
    bench_lmdb lm;
    bench_street st;
    bench_net net;
    bench_street_opts so = {.dir = dir, .schema_path = schema, .persons = persons,
                            .seed = seed, .batch = (size_t)batch,
                            .lookups = quick ? 10000 : 100000,
                            .report_runs = quick ? 11 : 21};
    bench_net_opts no = {.dir = dir, .schema_path = schema, .doorstepd = server, .seed = seed,
                         .persons = quick ? 110000 : 240000,
                         .wave_devices = quick ? 100 : 300, .wave_deltas = quick ? 20 : 50,
                         .wave_trials = quick ? 1 : 3,
                         .sust_batch = 50, .sust_seconds = quick ? 5 : 10,
                         .sust_warmup = quick ? 0.5 : 1.0,
                         .pull_households = 70, .idle_conns = quick ? 1000 : 10000};
    static const unsigned chart_full[] = {50, 100, 200, 300}, chart_quick[] = {25, 50, 100};
    no.chart_n = quick ? 3 : 4;
    for (unsigned i = 0; i < no.chart_n; i++)
        no.chart_devices[i] = quick ? chart_quick[i] : chart_full[i];
    memset(&st, 0, sizeof st);
    memset(&net, 0, sizeof net);
    double ver2_one[VERIFY_TRIALS] = {0}, ver2_all[VERIFY_TRIALS] = {0};
    bool have_ver2 = false;
    json_t *machine = machine_json(dir);
    int failed = bench_verify_rate(quick ? 1.5 : 6.0, &ver) || bench_lmdb_rate(raw, lim_s, &lm) ||
                 (do_store && bench_street_run(&so, &st)) || (do_net && bench_net_run(&no, &net));
    if (!failed && (do_store || do_net)) {
        /* The limit again, after the long sections: other work on the machine
         * at the start must not lower the limit (and inflate the ratios).
         * The best of all trials counts. */
        bench_verify v2;
        if (bench_verify_rate(quick ? 1.5 : 6.0, &v2) == 0) {
            for (int i = 0; i < VERIFY_TRIALS; i++) {
                ver2_one[i] = v2.one_core_trials[i];
                ver2_all[i] = v2.all_cores_trials[i];
            }
            have_ver2 = true;
            if (v2.one_core_per_s > ver.one_core_per_s) ver.one_core_per_s = v2.one_core_per_s;
            if (v2.all_cores_per_s > ver.all_cores_per_s) ver.all_cores_per_s = v2.all_cores_per_s;
        }
    }
    /* The peer's wave, last (its own processes and scratch directories). */
    json_t *peer = NULL;
    char peer_why[512] = "";
    if (!failed && do_net) {
        if (!peer_dir) {
            snprintf(peer_why, sizeof peer_why, "--no-peer");
        } else {
            bench_progress("peer: the evening wave against y-websocket + y-leveldb (%s)", peer_dir);
            peer = bench_peer_wave(peer_dir, no.wave_devices, no.wave_deltas, no.wave_trials,
                                   peer_why, sizeof peer_why);
        }
        if (!peer) bench_progress("peer: skipped: %s", peer_why);
    }
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (failed) {
        json_decref(machine);
        if (st.disk_dbs) json_decref(st.disk_dbs);
        fprintf(stderr, "doorstep-bench: a measurement failed; no figures printed\n");
        return 1;
    }

    json_t *lc = json_object(), *lp = json_object();
    for (int i = 0; i < BENCH_LMDB_SIZES; i++) {
        char k[16];
        snprintf(k, sizeof k, "%u", bench_lmdb_batch[i]);
        json_object_set_new(lc, k, json_real(lm.commits_per_s[i]));
        json_object_set_new(lp, k, json_real(lm.puts_per_s[i]));
    }
    double vall = ver.all_cores_per_s;
    double ratio = vall > 0 ? st.ingest_per_s / vall : 0;
    const char *includes =
        "envelope and delta decoding, schema checks, chain hash (BLAKE2b), dot/chain checks, "
        "sealing, merge, indexes and aggregates, durable commit per batch; not signature "
        "verification and not the network";
    json_t *r = json_object();
    json_object_set_new(r, "tool", json_string("doorstep-bench"));
    json_object_set_new(r, "format", json_integer(2));
    json_object_set_new(r, "command", json_string(cmd));
    json_object_set_new(r, "mode", json_string(quick ? "quick" : "full"));
    json_object_set_new(r, "date", json_string(date));
    json_object_set_new(r, "machine", machine);
    json_object_set_new(r, "seed", json_integer((json_int_t)seed));
    if (do_store) json_object_set_new(r, "persons", json_integer((json_int_t)st.persons));
    else json_object_set_new(r, "persons", json_null());
    json_object_set_new(r, "verify_per_s_one_core", json_real(ver.one_core_per_s));
    json_object_set_new(r, "verify_per_s_all_cores", json_real(vall));
    json_object_set_new(r, "verify_threads", json_integer(ver.threads));
    json_t *t1 = json_array(), *tn = json_array();
    for (int i = 0; i < VERIFY_TRIALS; i++) {
        json_array_append_new(t1, json_real(ver.one_core_trials[i]));
        json_array_append_new(tn, json_real(ver.all_cores_trials[i]));
    }
    for (int i = 0; have_ver2 && i < VERIFY_TRIALS; i++) {   /* taken again at the end */
        json_array_append_new(t1, json_real(ver2_one[i]));
        json_array_append_new(tn, json_real(ver2_all[i]));
    }
    json_object_set_new(r, "verify_trials", json_pack("{so so}", "one_core", t1, "all_cores", tn));
    json_object_set_new(r, "lmdb_commits_per_s", lc);
    json_object_set_new(r, "lmdb_puts_per_s", lp);
    if (do_store) {
        json_object_set_new(r, "store_ingest_deltas_per_s", json_real(st.ingest_per_s));
        json_object_set_new(r, "store_ingest_ratio_to_verify", json_real(ratio));
        json_object_set_new(r, "store_ingest_includes", json_string(includes));
        json_object_set_new(r, "ingest", json_pack(
            "{sI sI sI sI sI sI sI sf sf sf}", "deltas", (json_int_t)st.deltas,
            "applied", (json_int_t)st.applied, "not_applied", (json_int_t)st.rejected,
            "households", (json_int_t)st.households, "devices", (json_int_t)st.devices,
            "batch", (json_int_t)batch, "push", (json_int_t)50, "seconds", st.ingest_s,
            "presign_s", st.gen_s, "envelope_bytes_mean", st.env_bytes_mean));
    }
    set_num(r, "worker_noncrypto_us_per_delta", do_store, st.worker_noncrypto_us);
    set_num(r, "worker_verify_us_per_delta", do_store, st.worker_verify_us);
    if (do_store) json_object_set_new(r, "worker_sample", json_integer((json_int_t)st.worker_sample));
    set_num(r, "store_ingest_deltas_per_s", do_store, st.ingest_per_s);
    set_num(r, "store_ingest_ratio_to_verify", do_store, ratio);
    set_num(r, "lookup_p50_ms", do_store, st.lookup_p50_ms);
    set_num(r, "lookup_p99_ms", do_store, st.lookup_p99_ms);
    set_num(r, "lookup_p999_ms", do_store, st.lookup_p999_ms);
    set_num(r, "lookup_max_ms", do_store, st.lookup_max_ms);
    if (do_store) {
        json_object_set_new(r, "lookups", json_integer((json_int_t)st.lookups));
        json_object_set_new(r, "lookup_misses", json_integer((json_int_t)st.lookup_misses));
    }
    set_num(r, "report_ms", do_store, st.report_ms);
    if (do_store) {
        json_object_set_new(r, "report", json_pack(
            "{si sI sI sI sf sf sI}", "runs", st.report_runs, "queries",
            (json_int_t)st.report_queries, "grids", (json_int_t)st.grids, "communities",
            (json_int_t)st.communities, "min_ms", st.report_min_ms, "max_ms", st.report_max_ms,
            "persons_counted", (json_int_t)st.report_persons));
    }
    set_num(r, "disk_bytes_per_delta", do_store, st.disk_bytes_per_delta);
    if (do_store)
        json_object_set_new(r, "disk", json_pack(
            "{sI sI sI sI so}", "page_size", (json_int_t)st.page_size,
            "used_pages", (json_int_t)st.used_pages,
            "used_bytes", (json_int_t)(st.used_pages * st.page_size),
            "file_bytes", (json_int_t)st.file_bytes, "dbs", st.disk_dbs));

    /* The network figures (net.c). */
    const bench_wave *w = &net.wave[net.wave_median];
    set_num(r, "wave_ms", do_net, w->ms);
    set_num(r, "wave_deltas_per_s", do_net, w->deltas_per_s);
    set_num(r, "wave_ratio_to_verify", do_net && vall > 0, w->deltas_per_s / vall);
    set_num(r, "ack_p50_ms", do_net, w->ack_p50_ms);
    set_num(r, "ack_p99_ms", do_net, w->ack_p99_ms);
    set_num(r, "ack_p999_ms", do_net, w->ack_p999_ms);
    set_num(r, "sustained_deltas_per_s", do_net, net.sust_per_s);
    set_num(r, "sustained_ratio_to_verify", do_net && vall > 0, net.sust_per_s / vall);
    /* The peer's wave beside ours: how many times longer it takes. */
    double peer_ms = peer ? json_number_value(json_object_get(peer, "median_ms")) : 0;
    set_num(r, "peer_wave_ms", peer != NULL, peer_ms);
    set_num(r, "wave_ratio_to_peer", peer != NULL && w->ms > 0, peer_ms / w->ms);
    json_object_set_new(r, "peer_wave", peer ? peer : json_null());
    json_object_set_new(r, "peer_skipped", peer || !do_net ? json_null() : json_string(peer_why));
    set_num(r, "pull_bytes", do_net, (double)net.pull_bytes);
    set_num(r, "pull_ms", do_net, net.pull_ms);
    set_num(r, "rss_per_conn_kib", do_net, net.rss_per_conn_kib);
    if (do_net) {
        json_t *trials = json_array();
        for (unsigned i = 0; i < net.wave_trials; i++)
            json_array_append_new(trials, wave_json(&net.wave[i]));
        json_t *jchart = json_array();
        for (unsigned i = 0; i < net.chart_n; i++)
            json_array_append_new(jchart, wave_json(&net.chart[i]));
        json_object_set_new(r, "net", json_pack(
            "{sI sI sI sI sf ss}", "persons", (json_int_t)net.persons, "households",
            (json_int_t)net.households, "deltas", (json_int_t)net.deltas, "devices",
            (json_int_t)net.devices, "presign_s", net.gen_s, "server", server));
        json_object_set_new(r, "wave", json_pack(
            "{sI sI sI so}", "devices", (json_int_t)w->devices, "deltas_each",
            (json_int_t)w->deltas_each, "median_trial", (json_int_t)net.wave_median, "trials",
            trials));
        json_object_set_new(r, "wave_chart", jchart);
        json_object_set_new(r, "sustained", json_pack(
            "{sI sI sf sf sf sI sI sI sf sf sf sf sf sb}", "devices",
            (json_int_t)net.sust_devices, "batch", (json_int_t)net.sust_batch, "seconds",
            net.sust_seconds, "warmup_s", net.sust_warmup, "window_s", net.sust_window_s,
            "deltas", (json_int_t)net.sust_deltas, "pushes", (json_int_t)net.sust_pushes,
            "not_applied", (json_int_t)net.sust_not_applied, "ack_p50_ms", net.sust_ack_p50_ms,
            "ack_p99_ms", net.sust_ack_p99_ms, "ack_p999_ms", net.sust_ack_p999_ms,
            "server_cores", net.sust_server_cores, "client_cores", net.sust_client_cores,
            "ran_out", net.sust_ran_out));
        json_t *sj = json_object_get(r, "sustained");
        json_object_set_new(sj, "commits", json_real(net.sust_commits));
        set_num(sj, "commit_ms_mean", true, net.sust_commit_ms);
        set_num(sj, "commit_batch_mean", true, net.sust_commit_batch);
        set_num(sj, "commit_busy", true, net.sust_commit_busy);
        set_num(sj, "load_before", true, net.sust_load_before);
        json_object_set_new(r, "pull", json_pack(
            "{sI sI sI sI sI sI sf sI}", "households", (json_int_t)net.pull_households,
            "envelopes", (json_int_t)net.pull_envelopes, "expected",
            (json_int_t)net.pull_expected, "envelope_bytes", (json_int_t)net.pull_env_bytes,
            "pages", (json_int_t)net.pull_pages, "server_deltas",
            (json_int_t)net.pull_server_deltas, "connect_ms", net.pull_connect_ms, "bytes",
            (json_int_t)net.pull_bytes));
        json_object_set_new(r, "idle", json_pack(
            "{sI sI sI sI sf}", "target", (json_int_t)net.idle_target, "connections",
            (json_int_t)net.idle_conns, "rss_before_kib", (json_int_t)net.rss_before_kib,
            "rss_after_kib", (json_int_t)net.rss_after_kib, "connect_s", net.idle_connect_s));
    }
    if (as_json) {
        json_dumpf(r, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(6) | JSON_PRESERVE_ORDER);
        fputc('\n', stdout);
    } else {
        bench_print_table(r);
    }
    json_decref(r);
    return 0;
}
