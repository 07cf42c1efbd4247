/*
 * report.c — doorstep-bench's budgets (DESIGN.md §8) and the two human
 * renderings of a result object: the table printed after a run, and the
 * Markdown page docs/BENCHMARKS.md (`doorstep-bench --report FILE.json`).
 *
 * Both read only the JSON result, so a result saved under bench-results/ can be
 * rendered again later.  A figure that is JSON null was not measured: it is
 * shown as "not measured", never as a pass or a miss.  A figure measured at a
 * smaller scale than its budget states (--quick) says so beside its verdict.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#ifndef DOORSTEP_SOURCE_DIR
#define DOORSTEP_SOURCE_DIR "."
#endif

typedef struct budget {
    const char *key;          /* top-level field of the result */
    const char *what;         /* the figure, in words */
    const char *unit;
    int at_least;             /* 1: value >= limit; 0: value < limit; 2: value <= limit */
    double limit;
    const char *budget;       /* the budget, in words */
    int scale;                /* 1: budget at 1 M persons; 2: at 300 x 50; 3: at 10,000 conns */
} budget;

static const budget budgets[] = {
    {"wave_ms", "evening wave: 300 devices x 50 deltas, all acked", "ms", 0, 1000.0, "< 1 s",
     2},
    {"sustained_ratio_to_verify", "sustained ingest over WebSockets / all-core verify", "", 1,
     0.70, ">= 0.70 (ingest >= 70 % of all-core Ed25519 verify)", 0},
    {"wave_ratio_to_peer", "evening wave: y-websocket + y-leveldb's time / Doorstep's", "", 1,
     2.0, ">= 2 (Doorstep at least twice as fast, signing and fsyncing)", 2},
    {"rss_per_conn_kib", "server RSS per idle connection (10,000 devices)", "KiB", 2, 32.0,
     "<= 32 KiB", 3},
    {"lookup_p99_ms", "staff lookup by ID number, p99", "ms", 0, 1.0, "< 1 ms", 1},
    {"report_ms", "station report (median)", "ms", 0, 50.0, "< 50 ms at 1 M persons", 1},
    {"disk_bytes_per_delta", "disk per delta, with indexes", "B", 2, 512.0, "<= 512 B", 0},
    {"worker_noncrypto_us_per_delta", "verify worker, non-crypto CPU per delta (one thread)",
     "µs", 2, 15.0, "<= 15 µs (decode, schema, hash, compression; issue 15)", 0},
    {"store_ingest_ratio_to_verify", "store alone (no verify, no network) / all-core verify",
     "", 1, 0.70, "(>= 0.70 applies to the server; shown for comparison)", 0},
};
#define N_BUDGETS (sizeof budgets / sizeof budgets[0])


static double num(const json_t *r, const char *key)
{
    const json_t *v = json_object_get(r, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *str(const json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return s ? s : "?";
}

/* 1 pass, 0 miss, -1 not measured. */
static int verdict(const budget *b, double v)
{
    if (isnan(v)) return -1;
    switch (b->at_least) {
    case 1: return v >= b->limit;
    case 2: return v <= b->limit;
    default: return v < b->limit;
    }
}

static void fmt_value(char *out, size_t n, double v, const char *unit)
{
    if (isnan(v)) snprintf(out, n, "not measured");
    else if (!*unit) snprintf(out, n, "%.2f", v);
    else if (v >= 100) snprintf(out, n, "%.0f %s", v, unit);
    else if (v >= 1) snprintf(out, n, "%.2f %s", v, unit);
    else snprintf(out, n, "%.3f %s", v, unit);
}

/* "" at the budget's own scale, else what was measured instead. */
static const char *scale_note(const json_t *r, const budget *b, char *out, size_t n)
{
    const json_t *w = json_object_get(r, "wave"), *idle = json_object_get(r, "idle");
    out[0] = 0;
    if (b->scale == 1 && num(r, "persons") < 1000000)
        snprintf(out, n, " (at %.0f persons)", num(r, "persons"));
    if (b->scale == 2 && (num(w, "devices") != 300 || num(w, "deltas_each") != 50))
        snprintf(out, n, " (at %.0f x %.0f)", num(w, "devices"), num(w, "deltas_each"));
    if (b->scale == 3 && num(idle, "connections") != 10000)
        snprintf(out, n, " (at %.0f connections)", num(idle, "connections"));
    return out;
}

static const char *verdict_text(const json_t *r, const budget *b, double v)
{
    static char buf[96];
    char note[64];
    int p = verdict(b, v);
    if (p < 0) return "—";
    if (b->scale == 0 && b->at_least == 1 && b->budget[0] == '(') return p ? "(above)" : "(below)";
    snprintf(buf, sizeof buf, "%s%s", p ? "pass" : "MISS", scale_note(r, b, note, sizeof note));
    return buf;
}

void bench_print_table(const json_t *r)
{
    const json_t *m = json_object_get(r, "machine");
    const json_t *lc = json_object_get(r, "lmdb_commits_per_s");
    const json_t *lp = json_object_get(r, "lmdb_puts_per_s");
    char v[64];
    printf("doorstep-bench (%s mode), %s\n", str(r, "mode"), str(r, "date"));
    printf("machine: %s, %lld cores, data on %s\n\n", str(m, "cpu_model"),
           (long long)json_integer_value(json_object_get(m, "cores")), str(m, "filesystem"));
    printf("limits\n");
    printf("  Ed25519 verify, one core      %12.0f /s\n", num(r, "verify_per_s_one_core"));
    printf("  Ed25519 verify, all %2lld cores  %12.0f /s\n",
           (long long)json_integer_value(json_object_get(r, "verify_threads")),
           num(r, "verify_per_s_all_cores"));
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)lc, k, x) {
        printf("  LMDB durable, batch %-4s      %12.0f commits/s %12.0f puts/s\n", k,
               json_number_value(x), json_number_value(json_object_get(lp, k)));
    }
    if (json_object_get(r, "ingest")) {
        printf("\nstore (%.0f persons, %.0f deltas)\n", num(r, "persons"),
               num(json_object_get(r, "ingest"), "deltas"));
        printf("  ingest                        %12.0f deltas/s (%s)\n",
               num(r, "store_ingest_deltas_per_s"), str(r, "store_ingest_includes"));
        printf("  lookup by ID number           p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms\n",
               num(r, "lookup_p50_ms"), num(r, "lookup_p99_ms"), num(r, "lookup_p999_ms"));
        printf("  station report                %.2f ms (median; %.0f aggregate reads)\n",
               num(r, "report_ms"), num(json_object_get(r, "report"), "queries"));
        printf("  disk per delta                %.0f B\n", num(r, "disk_bytes_per_delta"));
        printf("  verify worker per delta       %.1f µs non-crypto + %.1f µs Ed25519 (one thread, "
               "%.0f deltas)\n", num(r, "worker_noncrypto_us_per_delta"),
               num(r, "worker_verify_us_per_delta"), num(r, "worker_sample"));
    }
    const json_t *w = json_object_get(r, "wave"), *su = json_object_get(r, "sustained");
    const json_t *pu = json_object_get(r, "pull"), *id = json_object_get(r, "idle");
    const json_t *ch = json_object_get(r, "wave_chart");
    if (w) {
        const json_t *mt = json_array_get(json_object_get(w, "trials"),
                                          (size_t)num(w, "median_trial"));
        printf("\nserver over loopback (doorstepd child process; client: one epoll thread)\n");
        printf("  evening wave %.0f x %.0f         %.0f ms to the last ack (median of %zu), "
               "%.0f deltas/s = %.2f of all-core verify\n", num(w, "devices"),
               num(w, "deltas_each"), num(r, "wave_ms"),
               json_array_size(json_object_get(w, "trials")), num(r, "wave_deltas_per_s"),
               num(r, "wave_ratio_to_verify"));
        printf("    ack latency                 p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms "
               "(connect to welcome: p50 %.1f ms)\n", num(r, "ack_p50_ms"),
               num(r, "ack_p99_ms"), num(r, "ack_p999_ms"), num(mt, "auth_p50_ms"));
        if (json_is_object(json_object_get(r, "peer_wave")))
            printf("    same wave, y-websocket      %.0f ms: Doorstep %.2fx as fast (%s)\n",
                   num(r, "peer_wave_ms"), num(r, "wave_ratio_to_peer"),
                   str(json_object_get(r, "peer_wave"), "peer"));
        else if (json_is_string(json_object_get(r, "peer_skipped")))
            printf("    same wave, y-websocket      skipped: %s\n", str(r, "peer_skipped"));
        size_t i;
        json_t *cw;
        json_array_foreach((json_t *)ch, i, cw)
            printf("    %4.0f devices               %6.0f ms, ack p50 %.1f ms, p99 %.1f ms\n",
                   num(cw, "devices"), num(cw, "ms"), num(cw, "ack_p50_ms"),
                   num(cw, "ack_p99_ms"));
        printf("  sustained, %.0f devices        %12.0f deltas/s = %.2f of all-core verify "
               "(%.1f s; server %.2f cores, client %.2f)\n", num(su, "devices"),
               num(r, "sustained_deltas_per_s"), num(r, "sustained_ratio_to_verify"),
               num(su, "window_s"), num(su, "server_cores"), num(su, "client_cores"));
        printf("    ack latency                 p50 %.0f ms, p99 %.0f ms (pushes of %.0f)\n",
               num(su, "ack_p50_ms"), num(su, "ack_p99_ms"), num(su, "batch"));
        printf("  pull, %.0f households          %.0f envelopes, %.0f bytes in %.1f ms "
               "(%.0f pages)\n", num(pu, "households"), num(pu, "envelopes"),
               num(r, "pull_bytes"), num(r, "pull_ms"), num(pu, "pages"));
        printf("  idle, %.0f connections       RSS %.0f -> %.0f KiB: %.1f KiB each\n",
               num(id, "connections"), num(id, "rss_before_kib"), num(id, "rss_after_kib"),
               num(r, "rss_per_conn_kib"));
    }
    printf("\nagainst the budget (DESIGN.md §8)\n");
    printf("  %-52s %-18s %-26s %s\n", "figure", "measured", "budget", "result");
    for (size_t i = 0; i < N_BUDGETS; i++) {
        double val = num(r, budgets[i].key);
        fmt_value(v, sizeof v, val, budgets[i].unit);
        printf("  %-52s %-18s %-26s %s\n", budgets[i].what, v, budgets[i].budget,
               verdict_text(r, &budgets[i], val));
    }
}

static const char *trials(const json_t *r, const char *which, char *out, size_t n)
{
    const json_t *a = json_object_get(json_object_get(r, "verify_trials"), which);
    size_t i, l = 0;
    json_t *x;
    out[0] = 0;
    json_array_foreach(a, i, x) {
        snprintf(out + l, n - l, "%s%.0f", i ? ", " : "", json_number_value(x));
        l = strlen(out);
    }
    if (!l) snprintf(out, n, "not recorded");
    return out;
}

static void md_row2(const char *a, const char *b) { printf("| %s | %s |\n", a, b); }

static void md_wave_row(const json_t *w)
{
    printf("| %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f | %.1f | %.2f / %.2f | %.1f |\n",
           num(w, "devices"), num(w, "deltas_each"), num(w, "ms"), num(w, "deltas_per_s"),
           num(w, "ack_p50_ms"), num(w, "ack_p99_ms"), num(w, "ack_p999_ms"),
           num(w, "auth_p50_ms"), num(w, "server_cpu_s"), num(w, "client_cpu_s"),
           num(w, "load_before"));
}

/* The network sections of the page (nothing if they were not run). */
static void md_network(const json_t *r)
{
    const json_t *net = json_object_get(r, "net"), *w = json_object_get(r, "wave");
    const json_t *su = json_object_get(r, "sustained"), *pu = json_object_get(r, "pull");
    const json_t *id = json_object_get(r, "idle"), *ch = json_object_get(r, "wave_chart");
    const json_t *tr = json_object_get(w, "trials");
    size_t i;
    json_t *x;
    if (!net || !w) return;
    double vall = num(r, "verify_per_s_all_cores");
    printf("\n## Evening wave\n\n");
    printf("%.0f devices, each with %.0f pre-signed deltas (signed before the clock starts), "
           "connect and push at once\nover loopback to a fresh `doorstepd`. The clock runs from "
           "before the first `connect()` to the last\nack, so it includes TCP, the WebSocket "
           "upgrade, `hello`/`auth`/`welcome` (one Ed25519 signature\nby the client and one "
           "verification by the server per device) and one push of %.0f deltas per device.\n"
           "Ack latency is per push, from handing the push to the socket to its `ack` (sent by "
           "the server after\nthe LMDB commit). The figure is the median of %zu trials, each on "
           "a fresh server.\n\n", num(w, "devices"), num(w, "deltas_each"),
           num(w, "deltas_each"), json_array_size(tr));
    printf("| | |\n|---|---|\n");
    char v[160];
    snprintf(v, sizeof v, "**%.0f ms** (budget < 1000 ms for 300 x 50)", num(r, "wave_ms"));
    md_row2("time to the last ack", v);
    snprintf(v, sizeof v, "%.0f deltas/s = %.2f of the all-core verify rate (%.0f /s)",
             num(r, "wave_deltas_per_s"), num(r, "wave_ratio_to_verify"), vall);
    md_row2("throughput", v);
    snprintf(v, sizeof v, "p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms (one push per device: %.0f "
             "samples)", num(r, "ack_p50_ms"), num(r, "ack_p99_ms"), num(r, "ack_p999_ms"),
             num(w, "devices"));
    md_row2("ack latency", v);
    printf("\nTrials (server / client CPU in seconds, over the whole wave):\n\n");
    printf("| devices | deltas each | to last ack (ms) | deltas/s | ack p50 (ms) | ack p99 (ms) "
           "| ack p99.9 (ms) | connect to welcome p50 (ms) | CPU s server / client | load avg before |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    json_array_foreach((json_t *)tr, i, x) md_wave_row(x);

    const json_t *pw = json_object_get(r, "peer_wave");
    printf("\n### The same wave against y-websocket\n\n");
    if (json_is_object(pw)) {
        const json_t *pt = json_object_get(pw, "trials"), *ps = json_object_get(pw, "server_cpu_s"),
                     *pc = json_object_get(pw, "client_cpu_s");
        printf("In the same run, on the same machine: %s (`clients/bench/peer/ywave.mjs`), a "
               "fresh server with an\nempty LevelDB per trial; %.0f devices, one room each, "
               "%.0f updates each (one person's fields per\nupdate, %.0f bytes on average), "
               "clock from before the first connect to the last answer (a sync\nstep 2 asked "
               "for after the updates: y-websocket has no ack). The peer neither signs nor\n"
               "verifies, does not fsync before answering, and checks no schema or scope.\n\n",
               str(pw, "peer"), num(pw, "devices"), num(pw, "deltas_each"),
               num(pw, "update_bytes_avg"));
        printf("| | |\n|---|---|\n");
        snprintf(v, sizeof v, "**%.0f ms** (median of %zu)", num(pw, "median_ms"),
                 json_array_size(pt));
        md_row2("y-websocket + y-leveldb, to the last answer", v);
        snprintf(v, sizeof v, "**%.2f** (goal >= 2)", num(r, "wave_ratio_to_peer"));
        md_row2("its time / Doorstep's", v);
        printf("\n| trial | to last answer (ms) | CPU s server / client |\n|---|---|---|\n");
        for (i = 0; i < json_array_size(pt); i++)
            printf("| %zu | %.0f | %.2f / %.2f |\n", i + 1,
                   json_number_value(json_array_get(pt, i)), json_number_value(json_array_get(ps, i)),
                   json_number_value(json_array_get(pc, i)));
    } else {
        printf("Not measured in this run: %s.\n", json_is_string(json_object_get(r, "peer_skipped"))
               ? str(r, "peer_skipped") : "the run predates the peer");
    }

    printf("\n## Ack latency against load\n\n");
    printf("The same wave at several device counts (%.0f deltas per device; fresh server for "
           "each).\n\n![ack latency against load](bench-ack-latency.svg)\n\n",
           num(w, "deltas_each"));
    printf("| devices | deltas each | to last ack (ms) | deltas/s | ack p50 (ms) | ack p99 (ms) "
           "| ack p99.9 (ms) | connect to welcome p50 (ms) | CPU s server / client | load avg before |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n");
    json_array_foreach((json_t *)ch, i, x) md_wave_row(x);

    printf("\n## Sustained ingest\n\n");
    printf("%.0f devices, all authenticated first; then each keeps one push of %.0f deltas in "
           "flight and sends\nthe next as soon as its ack returns (closed loop). Deltas acked "
           "in a %.1f s window after a\n%.1f s warm-up count.%s\n\n",
           num(su, "devices"), num(su, "batch"), num(su, "window_s"), num(su, "warmup_s"),
           json_is_true(json_object_get(su, "ran_out"))
               ? " A device ran out of pre-signed deltas, so the window was cut short there."
               : "");
    printf("| | |\n|---|---|\n");
    snprintf(v, sizeof v, "**%.0f deltas/s** = **%.2f** of the all-core verify rate (budget "
             ">= 0.70)", num(r, "sustained_deltas_per_s"), num(r, "sustained_ratio_to_verify"));
    md_row2("durable ingest", v);
    snprintf(v, sizeof v, "%.0f deltas in %.0f pushes, %.0f not applied", num(su, "deltas"),
             num(su, "pushes"), num(su, "not_applied"));
    md_row2("acked in the window", v);
    snprintf(v, sizeof v, "p50 %.0f ms, p99 %.0f ms, p99.9 %.0f ms", num(su, "ack_p50_ms"),
             num(su, "ack_p99_ms"), num(su, "ack_p999_ms"));
    md_row2("ack latency under this load", v);
    snprintf(v, sizeof v, "server %.2f cores, client %.2f cores (of %lld)",
             num(su, "server_cores"), num(su, "client_cores"),
             (long long)json_integer_value(json_object_get(json_object_get(r, "machine"),
                                                           "cores")));
    md_row2("CPU used in the window", v);
    snprintf(v, sizeof v, "%.0f group commits, mean %.0f deltas and %.1f ms each; the writer "
             "was committing %.0f %% of the window", num(su, "commits"),
             num(su, "commit_batch_mean"), num(su, "commit_ms_mean"),
             100 * num(su, "commit_busy"));
    md_row2("server's group commits (its /metrics)", v);
    snprintf(v, sizeof v, "%.1f (1-minute load average; other work on the machine slows every "
             "figure)", num(su, "load_before"));
    md_row2("machine load when it started", v);
    snprintf(v, sizeof v, "%.0f persons, %.0f households, %.0f deltas for %.0f devices, "
             "signed in %.1f s before any clock", num(net, "persons"), num(net, "households"),
             num(net, "deltas"), num(net, "devices"), num(net, "presign_s"));
    md_row2("data pushed (the same street as the waves)", v);

    printf("\n## Pull: cold bootstrap of one volunteer's slice\n\n");
    printf("After the sustained run, the rest of volunteer 1's history is pushed (not timed), "
           "so the server\nholds %.0f deltas of the street. A new phone whose scope is the "
           "first %.0f households of\nvolunteer 1's slice connects and pulls from cursor 0 "
           "(pages of up to 500) until `more` is false.\nBytes are everything the socket "
           "received (HTTP upgrade response, `hello`, `welcome`, `changes`).\n\n",
           num(pu, "server_deltas"), num(pu, "households"));
    printf("| | |\n|---|---|\n");
    snprintf(v, sizeof v, "**%.0f B** on the wire (%.0f B of envelopes)", num(r, "pull_bytes"),
             num(pu, "envelope_bytes"));
    md_row2("bytes", v);
    snprintf(v, sizeof v, "**%.1f ms** from `connect()` to the last page (%.1f ms to `welcome`)",
             num(r, "pull_ms"), num(pu, "connect_ms"));
    md_row2("time", v);
    snprintf(v, sizeof v, "%.0f in %.0f page(s); %.0f expected (every delta touching those "
             "households)", num(pu, "envelopes"), num(pu, "pages"), num(pu, "expected"));
    md_row2("envelopes", v);

    printf("\n## Idle connections\n\n");
    printf("%.0f devices connect, authenticate and stay idle (one epoll client; source "
           "addresses 127.0.0.2–17\nso ephemeral ports never run short; the server inherits "
           "a raised open-file limit). Server RSS\n(`VmRSS` in /proc/PID/status) is read "
           "before the first connection and 2 s after the last `welcome`.\n\n",
           num(id, "connections"));
    printf("| | |\n|---|---|\n");
    snprintf(v, sizeof v, "**%.1f KiB** per connection (budget <= 32 KiB)",
             num(r, "rss_per_conn_kib"));
    md_row2("RSS per idle connection", v);
    snprintf(v, sizeof v, "%.0f KiB before, %.0f KiB with %.0f connections",
             num(id, "rss_before_kib"), num(id, "rss_after_kib"), num(id, "connections"));
    md_row2("server RSS", v);
    snprintf(v, sizeof v, "%.1f s for all of them (256 handshakes at a time)",
             num(id, "connect_s"));
    md_row2("connect and authenticate", v);
}

/* Hand-written notes (profiles of misses), kept with the bench's source. */
static void md_notes(void)
{
    FILE *f = fopen(DOORSTEP_SOURCE_DIR "/clients/bench/NOTES.md", "r");
    char buf[4096];
    size_t n;
    if (!f) return;
    printf("\n");
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    fclose(f);
}

int bench_print_markdown(const json_t *r, const char *source_name)
{
    const json_t *m = json_object_get(r, "machine");
    const json_t *in = json_object_get(r, "ingest");
    const json_t *rep = json_object_get(r, "report");
    const json_t *disk = json_object_get(r, "disk");
    const json_t *lc = json_object_get(r, "lmdb_commits_per_s");
    const json_t *lp = json_object_get(r, "lmdb_puts_per_s");
    char v[96], w[96], w1[96], w2[96];
    const char *k;
    json_t *x;
    if (!json_is_object(r) || !json_is_object(m)) {
        fprintf(stderr, "doorstep-bench: %s is not a doorstep-bench result\n", source_name);
        return -1;
    }
    printf("# Benchmarks\n\n");
    printf("Generated from `%s` by `doorstep-bench --report`; do not edit by hand. `make bench` "
           "runs the\nbenchmark in full mode, saves its JSON under `bench-results/` and "
           "regenerates this page.\n\n", source_name);
    printf("Doorstep is measured against the limits of the machine it runs on, taken in the "
           "same run\n(DESIGN.md §8): the Ed25519 verify rate on all cores and LMDB's durable "
           "commit rate. The network\nfigures drive a real `doorstepd` (a child process) over "
           "loopback with a client built for\nload (clients/bench/net.c); client and server share "
           "the machine, and the client's CPU time\nis reported beside the figures.\n\n");

    printf("## Run\n\n| | |\n|---|---|\n");
    md_row2("date (UTC)", str(r, "date"));
    snprintf(v, sizeof v, "`%s`", str(r, "command"));
    md_row2("command", v);
    md_row2("mode", str(r, "mode"));
    md_row2("CPU", str(m, "cpu_model"));
    snprintf(v, sizeof v, "%lld", (long long)json_integer_value(json_object_get(m, "cores")));
    md_row2("cores (online)", v);
    snprintf(v, sizeof v, "%.1f GiB", num(m, "memory_gib"));
    md_row2("memory", v);
    md_row2("kernel", str(m, "kernel"));
    md_row2("data directory file system", str(m, "filesystem"));
    md_row2("libsodium / LMDB", str(m, "libraries"));
    md_row2("compiler", str(m, "compiler"));
    snprintf(v, sizeof v, "%.0f", num(r, "seed"));
    md_row2("seed", v);

    printf("\n## Against the budget\n\n");
    printf("| figure | measured | budget (DESIGN.md §8) | result |\n|---|---|---|---|\n");
    for (size_t i = 0; i < N_BUDGETS; i++) {
        double val = num(r, budgets[i].key);
        fmt_value(v, sizeof v, val, budgets[i].unit);
        printf("| %s | %s | %s | %s |\n", budgets[i].what, v, budgets[i].budget,
               verdict_text(r, &budgets[i], val));
    }
    printf("\nThe wave and the sustained ingest are end to end: WebSocket, auth, Ed25519 "
           "verification on the\nserver's workers, group commit with fsync, ack. The last row is "
           "the store alone (no signature\nverification, no network) for comparison.\n");
    md_network(r);

    printf("\n## Limits of this machine\n\nVerify rates are the best of 3 trials at the start of the run and 3 more at its end (other\nwork on the machine lowers a trial; the figure is the limit, so the best trial makes the ratios\nconservative). Trials: one core %s; all cores %s.\n\n| limit | rate |\n|---|---|\n",
           trials(r, "one_core", w1, sizeof w1), trials(r, "all_cores", w2, sizeof w2));
    snprintf(v, sizeof v, "%.0f /s", num(r, "verify_per_s_one_core"));
    md_row2("Ed25519 verify (`crypto_sign_verify_detached`, 200-byte messages), one core", v);
    snprintf(v, sizeof v, "%.0f /s", num(r, "verify_per_s_all_cores"));
    snprintf(w, sizeof w, "Ed25519 verify, all cores (%lld threads)",
             (long long)json_integer_value(json_object_get(r, "verify_threads")));
    md_row2(w, v);
    printf("\nLMDB, default durable flags (fsync at every commit), 16-byte random keys, "
           "64-byte values:\n\n| puts per commit | commits/s | puts/s |\n|---|---|---|\n");
    json_object_foreach((json_t *)lc, k, x) {
        printf("| %s | %.0f | %.0f |\n", k, json_number_value(x),
               json_number_value(json_object_get(lp, k)));
    }

    if (!in) goto tail;
    printf("\n## Store ingest\n\n| | |\n|---|---|\n");
    snprintf(v, sizeof v, "%.0f persons in %.0f households, %.0f grids, %.0f communities",
             num(r, "persons"), num(in, "households"), num(rep, "grids"),
             num(rep, "communities"));
    md_row2("street", v);
    snprintf(v, sizeof v, "%.0f (%.0f applied, %.0f not applied) from %.0f devices",
             num(in, "deltas"), num(in, "applied"), num(in, "not_applied"), num(in, "devices"));
    md_row2("deltas", v);
    snprintf(v, sizeof v, "%.0f deltas per durable commit", num(in, "batch"));
    md_row2("group commit", v);
    snprintf(v, sizeof v, "%.0f deltas/s (%.1f s)", num(r, "store_ingest_deltas_per_s"),
             num(in, "seconds"));
    md_row2("ingest rate", v);
    snprintf(v, sizeof v, "%.2f", num(r, "store_ingest_ratio_to_verify"));
    md_row2("ratio to all-core verify rate", v);
    md_row2("what the figure includes", str(r, "store_ingest_includes"));
    snprintf(v, sizeof v, "%.1f s on all cores, before the clock starts (not part of any "
             "figure)", num(in, "presign_s"));
    md_row2("pre-signing", v);
    printf("\nThe street: households of 1–6 persons (mean ≈ 2.95), ~350 households per grid, "
           "10 grids per\ncommunity, 300 devices each owning a slice of households. Each "
           "household gets a delta (community,\ngrid, address, head, phone), each person one "
           "(name, ID number, gender, birth date, household,\nrelation, insurance type, "
           "payment for 2026, life status, phone for 70 %%, key-group tags for 20 %%);\nthen "
           "25 %% of households get a visit and 30 %% of persons a follow-up (a visit; the "
           "unpaid pay,\nsuperseding their first payment entry). Devices are fed round-robin "
           "in pushes of 50 deltas.\n");

    printf("\n## Staff queries\n\n| query | figure |\n|---|---|\n");
    snprintf(v, sizeof v, "p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms (%.0f lookups)",
             num(r, "lookup_p50_ms"), num(r, "lookup_p99_ms"), num(r, "lookup_p999_ms"),
             num(r, "lookup_max_ms"), num(r, "lookups"));
    md_row2("lookup by ID number (`store_lookup`, own read transaction each)", v);
    snprintf(v, sizeof v, "median %.2f ms, min %.2f ms, max %.2f ms (%.0f runs)",
             num(r, "report_ms"), num(rep, "min_ms"), num(rep, "max_ms"), num(rep, "runs"));
    snprintf(w, sizeof w, "station report (%.0f `store_agg_get` calls in one read transaction)",
             num(rep, "queries"));
    md_row2(w, v);
    printf("\nA station report reads the aggregates of every grid, every community and the "
           "station total.\nQueries run after the ingest, with the data in the page cache.\n");

    printf("\n## Storage\n\n");
    printf("%.0f B per delta: %.0f used pages × %.0f B (LMDB's last page + 1) / %.0f deltas "
           "stored.\n`data.mdb` is %.0f B (file size). The envelopes fed in average %.0f B; each is stored\nverbatim: compressed (zstd, schema dictionary), then sealed (+40 B). By database:\n\n",
           num(r, "disk_bytes_per_delta"), num(disk, "used_pages"), num(disk, "page_size"),
           num(in, "applied"), num(disk, "file_bytes"), num(in, "envelope_bytes_mean"));
    printf("| database | bytes | entries | bytes per delta | key + value per entry | leaf fill |\n"
           "|---|---|---|---|---|---|\n");
    json_object_foreach((json_t *)json_object_get(disk, "dbs"), k, x) {
        double b = num(x, "bytes"), ap = num(in, "applied"), n = num(x, "entries");
        if (n <= 0) continue;
        const json_t *fill = json_object_get(x, "leaf_fill");
        if (json_object_get(x, "value_bytes") && json_is_number(fill))
            printf("| %s | %.0f | %.0f | %.1f | %.0f + %.0f B | %.0f %% |\n", k, b, n,
                   ap > 0 ? b / ap : 0, num(x, "key_bytes") / n, num(x, "value_bytes") / n,
                   100 * json_number_value(fill));
        else if (json_object_get(x, "value_bytes")) /* values on overflow pages */
            printf("| %s | %.0f | %.0f | %.1f | %.0f + %.0f B | (overflow pages) |\n", k, b, n,
                   ap > 0 ? b / ap : 0, num(x, "key_bytes") / n, num(x, "value_bytes") / n);
        else /* results saved before these columns existed */
            printf("| %s | %.0f | %.0f | %.1f | | |\n", k, b, n, ap > 0 ? b / ap : 0);
    }
    printf("\nLeaf fill is the entries' bytes (with LMDB's 10 B per node) over the leaf pages' "
           "room. LMDB splits a full\npage in half unless the key goes at the very end "
           "(MDB_APPEND), so trees that 300 devices extend at\n300 places at once stay near "
           "half to two-thirds full.\n");

tail:
    md_notes();
    printf("\n## Reproduce\n\n```sh\nmake bench                         # full mode, "
           "writes bench-results/ and this page\nbuild/doorstep-bench --quick        # under a "
           "minute; readable table\nbuild/doorstep-bench --quick --json\n"
           "build/doorstep-bench --only net     # limits and network sections only\n"
           "build/doorstep-bench --report bench-results/FILE.json > docs/BENCHMARKS.md\n"
           "build/doorstep-bench --chart bench-results/FILE.json docs/bench-ack-latency.svg\n```\n");
    return 0;
}
