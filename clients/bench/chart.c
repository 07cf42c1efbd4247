/*
 * chart.c — ack latency against load, drawn by gnuplot from a result's
 * "wave_chart" (one evening wave per device count; p50 and p99 of the time
 * from a push to its ack).  gnuplot is optional: without it the chart is
 * skipped with a note on stderr and the bench does not fail.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static bool have_gnuplot(void)
{
    const char *path = getenv("PATH");
    char *dup = path ? strdup(path) : NULL, *save = NULL;
    bool found = false;
    for (char *d = dup ? strtok_r(dup, ":", &save) : NULL; d && !found;
         d = strtok_r(NULL, ":", &save)) {
        char cand[1024];
        snprintf(cand, sizeof cand, "%s/gnuplot", d);
        found = access(cand, X_OK) == 0;
    }
    free(dup);
    return found;
}

static double num(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

int bench_chart(const json_t *r, const char *svg_path)
{
    const json_t *ch = json_object_get(r, "wave_chart");
    if (!json_is_array(ch) || json_array_size(ch) == 0) {
        fprintf(stderr, "doorstep-bench: no wave_chart in the result; chart skipped\n");
        return 1;
    }
    if (!have_gnuplot()) {
        fprintf(stderr, "doorstep-bench: gnuplot is not installed (Debian: gnuplot-nox, "
                "scripts/install-deps); chart %s skipped\n", svg_path);
        return 1;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(stderr, "doorstep-bench: cannot run gnuplot\n");
        return -1;
    }
    const json_t *m = json_object_get(r, "machine");
    const char *date = json_string_value(json_object_get(r, "date"));
    const char *cpu = json_string_value(json_object_get(m, "cpu_model"));
    double each = num(json_array_get(ch, 0), "deltas_each");
    fprintf(g, "set terminal svg size 760,440 dynamic enhanced font 'sans,12' background '#ffffff'\n");
    fprintf(g, "set output '%s'\n", svg_path);
    char cpus[128];
    snprintf(cpus, sizeof cpus, "%s", cpu ? cpu : "?");
    for (char *q = cpus; *q; q++)
        if (*q == '"' || *q == '\\' || *q == '{' || *q == '}') *q = ' ';
    fprintf(g, "set title \"Doorstep: ack latency against load (evening wave, %.0f deltas per "
               "device, loopback)\\n{/*0.8 %s, %lld cores, %s}\"\n", each, cpus,
            (long long)json_integer_value(json_object_get(m, "cores")), date ? date : "");
    fprintf(g, "set xlabel 'devices pushing at once'\nset ylabel 'push to durable ack (ms)'\n");
    fprintf(g, "set key top left\nset grid\nset yrange [0:*]\nset xrange [0:*]\n");
    fprintf(g, "set style data linespoints\n");
    fprintf(g, "plot '-' using 1:2 with linespoints title 'ack p50' lw 2 pt 7, "
               "'-' using 1:2 with linespoints title 'ack p99' lw 2 pt 5, "
               "'-' using 1:2 with linespoints title 'whole wave (last ack)' lw 1 pt 1 "
               "lc rgb '#888888'\n");
    const char *keys[3] = {"ack_p50_ms", "ack_p99_ms", "ms"};
    for (int s = 0; s < 3; s++) {
        size_t i;
        json_t *w;
        json_array_foreach(ch, i, w) fprintf(g, "%.0f %.3f\n", num(w, "devices"), num(w, keys[s]));
        fprintf(g, "e\n");
    }
    int rc = pclose(g);
    if (rc != 0) {
        fprintf(stderr, "doorstep-bench: gnuplot failed (status %d)\n", rc);
        return -1;
    }
    fprintf(stderr, "doorstep-bench: chart written to %s\n", svg_path);
    return 0;
}
