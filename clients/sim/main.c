/*
 * main.c — the doorstep-sim command (see sim.h and sim.c).
 *
 *   doorstep-sim --server ws://HOST:PORT --data DIR [--key-file F]
 *                [--volunteers N] [--households H] [--days D] [--seed S]
 *                [--devices DIR] [--schema F] [--threads T] [--prefix P]
 *
 * DIR is the server's data directory: the simulator opens the store beside
 * doorstepd (LMDB allows both) to create enrollment tokens and assign the
 * station device's scope, as an administrator would, and to read the log
 * for the check.  Device stores go to --devices (default DIR/../sim-devices
 * next to the data directory); a second run with the same directory reuses
 * the street and continues with the next visit days.
 * The last line is `converged: yes deltas=N conflicts=M` (exit 0) or
 * `converged: no ...` (exit 1).  Exit 2: usage; 3: could not run.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "sim.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: doorstep-sim --server ws://HOST:PORT --data DIR [--key-file F]\n"
               "                    [--volunteers N] [--households H] [--days D] [--seed S]\n"
               "                    [--devices DIR] [--schema F] [--threads T] [--prefix P]\n"
               "  --prefix P  before every record id and community code (up to 6 letters or\n"
               "              digits), e.g. one per street when streets feed a district\n");
}

static bool num(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || v > max) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"server", required_argument, NULL, 's'},   {"data", required_argument, NULL, 'd'},
        {"key-file", required_argument, NULL, 'k'}, {"volunteers", required_argument, NULL, 'v'},
        {"households", required_argument, NULL, 'H'}, {"days", required_argument, NULL, 'D'},
        {"seed", required_argument, NULL, 'S'},     {"devices", required_argument, NULL, 'x'},
        {"schema", required_argument, NULL, 'c'},   {"threads", required_argument, NULL, 't'},
        {"prefix", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    sim_opts o;
    memset(&o, 0, sizeof o);
    o.schema = DOORSTEP_DEFAULT_SCHEMA;
    o.days = 3;
    o.log = stdout;
    const char *data = NULL, *key = NULL;
    char keybuf[1100], devbuf[1100];
    uint64_t v;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': o.server = optarg; break;
        case 'd': data = optarg; break;
        case 'k': key = optarg; break;
        case 'x': o.devices_dir = optarg; break;
        case 'p': o.prefix = optarg; break;
        case 'c': o.schema = optarg; break;
        case 'v':
            if (!num(optarg, 10000, &v) || !v) goto bad;
            o.volunteers = (uint32_t)v;
            break;
        case 'H':
            if (!num(optarg, 1000000, &v) || !v) goto bad;
            o.households = (uint32_t)v;
            break;
        case 'D':
            if (!num(optarg, 120, &v)) goto bad;
            o.days = (uint32_t)v;
            break;
        case 'S':
            if (!num(optarg, UINT64_MAX, &v)) goto bad;
            o.seed = v;
            break;
        case 't':
            if (!num(optarg, 1024, &v) || !v) goto bad;
            o.threads = (uint32_t)v;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !o.server || !data) {
        fprintf(stderr, "doorstep-sim: --server and --data are required\n");
        usage(stderr);
        return 2;
    }
    size_t dl = strlen(data);
    while (dl > 1 && data[dl - 1] == '/') dl--;
    if (!key) {
        snprintf(keybuf, sizeof keybuf, "%.*s.key", (int)dl, data);
        key = keybuf;
    }
    if (!o.devices_dir) {
        snprintf(devbuf, sizeof devbuf, "%.*s-sim-devices", (int)dl, data);
        o.devices_dir = devbuf;
    }
    /* Each device store holds two descriptors; 300 phones need more than 1024. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (dsd_global_init()) {
        fprintf(stderr, "doorstep-sim: libsodium failed to initialise\n");
        return 3;
    }
    char err[512];
    store *st = NULL;
    int rc = store_open(data, key, NULL, &st, err, sizeof err);
    if (rc) {
        fprintf(stderr, "doorstep-sim: %s\n", err);
        return 3;
    }
    sim_result r;
    rc = sim_run(st, &o, &r);
    store_close(st);
    if (rc && !r.why[0]) snprintf(r.why, sizeof r.why, "%s", dsd_strerror(rc));
    if (rc) {
        printf("converged: no (could not run: %s)\n", r.why);
        return 3;
    }
    printf("sim: %llu devices; %llu deltas made in this run; server log %llu deltas; check %.2f s\n",
           (unsigned long long)r.devices, (unsigned long long)r.deltas_run,
           (unsigned long long)r.server_deltas, r.converge_s);
    if (r.revoked)
        printf("sim: %llu revoked device%s (not compared); %llu of their deltas kept in "
               "quarantine for review\n",
               (unsigned long long)r.revoked, r.revoked == 1 ? "" : "s",
               (unsigned long long)r.handed_in);
    if (r.converged) {
        printf("converged: yes deltas=%llu conflicts=%llu\n", (unsigned long long)r.deltas,
               (unsigned long long)r.conflicts);
        return 0;
    }
    printf("converged: no deltas=%llu conflicts=%llu: %s\n", (unsigned long long)r.deltas,
           (unsigned long long)r.conflicts, r.why);
    return 1;
bad:
    fprintf(stderr, "doorstep-sim: bad value '%s'\n", optarg);
    usage(stderr);
    return 2;
}
