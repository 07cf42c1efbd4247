/*
 * doorstepd.c — the Doorstep sync server command.
 *
 *   doorstepd --data DIR [--key-file F] [--listen HOST:PORT]
 *             [--tls-cert F --tls-key F] [--allow-plain] [--static DIR] [--field DIR]
 *             [--log-level L] [--map-max SIZE] [--device-rate N --device-burst N]
 *             [--commit-delay MS]
 *             [--init --schema F --campaign-year Y]
 *             [--upstream ws://DISTRICT:PORT/sync [--upstream-dir D]]
 *
 * The data key file defaults to DIR.key beside the data directory (never
 * inside it).  SIGTERM/SIGINT stop accepting work, finish and ack in-flight
 * commits, close sessions with 1001 and exit 0.
 */
#include "sync.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static sync_server *the_server;

static void on_signal(int sig)
{
    (void)sig;
    if (the_server) sync_server_stop(the_server);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: doorstepd --data DIR [--key-file F] [--listen HOST:PORT]\n"
            "                 [--tls-cert F --tls-key F] [--allow-plain] [--static DIR]\n"
            "                 [--field DIR] [--log-level 0-3] [--map-max SIZE]\n"
            "                 [--device-rate N] [--device-burst N] [--commit-delay MS]\n"
            "                 [--init [--schema F] [--campaign-year Y]]\n"
            "                 [--upstream URL [--upstream-dir D]]\n"
            "  --data DIR        data directory (or DOORSTEP_DATA)\n"
            "  --key-file F      data key file (or DOORSTEP_KEY_FILE; default DIR.key)\n"
            "  --listen H:P      address to listen on (default 127.0.0.1:8080; port 0 = any)\n"
            "  --tls-cert F      PEM certificate: serve wss:// and HTTPS (with --tls-key)\n"
            "  --tls-key F       PEM private key for --tls-cert\n"
            "  --allow-plain     allow plain ws on a non-loopback address\n"
            "  --static DIR      serve the dashboard files in DIR at /\n"
            "  --field DIR       serve the volunteers' field app (a build's field/ directory)\n"
            "                    at /field/\n"
            "  --log-level L     0 quiet, 1 normal (default), 2 notices, 3 debug\n"
            "  --map-max SIZE    largest the database may grow, e.g. 64G (suffix K, M, G or T;\n"
            "                    default 1T); at the limit pushes get a retryable error\n"
            "  --device-rate N   deltas per second one device may push, sustained (default 200;\n"
            "                    0 = no limit); beyond it pushes get SYNC_ERATE with a wait\n"
            "  --device-burst N  deltas one device may push at once (default 5000; at least 500,\n"
            "                    one full push)\n"
            "  --commit-delay MS while other pushes are still being verified, wait until MS\n"
            "                    since the last commit began so one commit takes them all\n"
            "                    (default 200, 0..1000; 0 = commit at once); a lone push is\n"
            "                    never held back\n"
            "  --init            initialise DIR first if it is not a store yet\n"
            "  --schema F        with --init: the schema file (default: the yibao schema)\n"
            "  --campaign-year Y with --init: the campaign year, 2000..2100 (default: this year)\n"
            "  --upstream URL    relay every applied envelope to the district server at URL\n"
            "                    (ws://HOST:PORT/sync), as the relay enrolled in --upstream-dir\n"
            "  --upstream-dir D  the relay's identity, made by `doorstepctl upstream enroll`\n"
            "                    (default DIR.upstream beside the data directory)\n");
}

/* A whole decimal number in [lo, hi], nothing after it.  false otherwise. */
static bool parse_num(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '+' || *s == ' ') return false;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* "4096", "512K", "64M", "2G", "1T" (binary units; "MiB"/"MB" forms too). */
static bool parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    if (!*s || *s < '0' || *s > '9') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (shift && (!strcmp(end, "iB") || !strcmp(end, "B"))) end += strlen(end);
    if (*end || (shift && v > (SIZE_MAX >> shift))) return false;
    *out = (size_t)(v << shift);
    return true;
}


int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},
        {"key-file", required_argument, NULL, 'k'},
        {"listen", required_argument, NULL, 'l'},
        {"tls-cert", required_argument, NULL, 'c'},
        {"tls-key", required_argument, NULL, 'K'},
        {"allow-plain", no_argument, NULL, 'P'},
        {"static", required_argument, NULL, 's'},
        {"field", required_argument, NULL, 'F'},
        {"log-level", required_argument, NULL, 'v'},
        {"init", no_argument, NULL, 'i'},
        {"schema", required_argument, NULL, 'S'},
        {"campaign-year", required_argument, NULL, 'y'},
        {"map-max", required_argument, NULL, 'M'},
        {"device-rate", required_argument, NULL, 'r'},
        {"device-burst", required_argument, NULL, 'b'},
        {"commit-delay", required_argument, NULL, 'C'},
        {"upstream", required_argument, NULL, 'U'},
        {"upstream-dir", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *data = getenv("DOORSTEP_DATA"), *key = getenv("DOORSTEP_KEY_FILE");
    const char *listen = "127.0.0.1:8080", *schema = DOORSTEP_DEFAULT_SCHEMA;
    const char *upstream = NULL, *updir = NULL;
    char updir_buf[1100];
    sync_server_opts so = {0};
    sync_config cfg = sync_config_default;
    store_opts sto = {0};
    bool init = false;
    long long year = 0, num;
    int c;
    so.log_level = 1;
    so.commit_delay_ms = SYNC_COMMIT_DELAY_MS;
#define NUM_ARG(lo, hi, what)                                                              \
    do {                                                                                   \
        if (!parse_num(optarg, lo, hi, &num)) {                                            \
            fprintf(stderr, "doorstepd: %s must be a whole number %lld..%lld, got '%s'\n",  \
                    what, (long long)(lo), (long long)(hi), optarg);                       \
            return 2;                                                                      \
        }                                                                                  \
    } while (0)
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data = optarg; break;
        case 'U': upstream = optarg; break;
        case 'D': updir = optarg; break;
        case 'k': key = optarg; break;
        case 'l': listen = optarg; break;
        case 'c': so.tls_cert = optarg; break;
        case 'K': so.tls_key = optarg; break;
        case 'P': so.allow_plain = true; break;
        case 's': so.static_dir = optarg; break;
        case 'F': so.field_dir = optarg; break;
        case 'v':
            NUM_ARG(0, 3, "--log-level");
            so.log_level = (int)num;
            break;
        case 'i': init = true; break;
        case 'S': schema = optarg; break;
        case 'y':
            NUM_ARG(2000, 2100, "--campaign-year");
            year = num;
            break;
        case 'M':
            if (!parse_size(optarg, &sto.map_max) || sto.map_max < ((size_t)1 << 20)) {
                fprintf(stderr, "doorstepd: --map-max wants a size of at least 1M such as 512M, "
                                "64G or 1T, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            NUM_ARG(0, 1000000, "--device-rate");
            cfg.device_rate = (uint32_t)num;
            break;
        case 'b':
            NUM_ARG(sync_config_default.max_push, 10000000, "--device-burst");
            cfg.device_burst = (uint32_t)num;
            break;
        case 'C':
            NUM_ARG(0, SYNC_COMMIT_DELAY_MAX_MS, "--commit-delay");
            so.commit_delay_ms = (int)num;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (updir && !upstream) {
        fprintf(stderr, "doorstepd: --upstream-dir needs --upstream\n");
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "doorstepd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!data || !*data) {
        fprintf(stderr, "doorstepd: --data DIR is required\n");
        usage(stderr);
        return 2;
    }
    char *key_alloc = NULL;
    if (!key) key = key_alloc = store_default_key_file(data);
    char host[256];
    int port;
    const char *colon = strrchr(listen, ':');
    char *endp;
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host) {
        fprintf(stderr, "doorstepd: --listen wants HOST:PORT, got '%s'\n", listen);
        return 2;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    errno = 0;
    long pl = strtol(colon + 1, &endp, 10);
    if (errno || *endp || pl < 0 || pl > 65535) {
        fprintf(stderr, "doorstepd: bad port in --listen '%s'\n", listen);
        return 2;
    }
    port = (int)pl;

    char err[512] = "";
    store *st = NULL;
    /* The map starts at 1 GiB of address space (the file grows only as
     * used), or at the maximum if that is smaller. */
    if (sto.map_max) sto.map_initial = sto.map_max < ((size_t)1 << 30) ? sto.map_max : (size_t)1 << 30;
    int rc = store_open(data, key, &sto, &st, err, sizeof err);
    if (rc == STORE_ENOTINIT && init) {
        if (!year) {
            time_t now = time(NULL);
            struct tm tm;
            gmtime_r(&now, &tm);
            year = tm.tm_year + 1900;
        }
        rc = store_init(data, key, schema, (uint32_t)year, err, sizeof err);
        if (rc) {
            fprintf(stderr, "doorstepd: %s\n", err);
            return 1;
        }
        fprintf(stderr, "doorstepd: initialised %s (data key in %s)\n", data, key);
        rc = store_open(data, key, &sto, &st, err, sizeof err);
    }
    if (rc) {
        fprintf(stderr, "doorstepd: %s\n", err);
        if (rc == STORE_ENOTINIT)
            fprintf(stderr, "doorstepd: run `doorstepctl --data %s init` or pass --init\n", data);
        free(key_alloc);
        return 1;
    }
    so.listen_host = host;
    so.port = port;
    sync_server *sv = NULL;
    if (sto.map_max) {
        size_t used = 0, map = 0;
        store_map_usage(st, &used, &map);
        if (map > sto.map_max)
            fprintf(stderr, "doorstepd: the database already needs %zu MiB, more than --map-max; "
                            "the map stays at that size\n", map >> 20);
    }
    rc = sync_server_new(st, &cfg, &so, &sv, err, sizeof err);
    if (rc) {
        fprintf(stderr, "doorstepd: %s\n", err);
        store_close(st);
        free(key_alloc);
        return 1;
    }
    sync_upstream *up = NULL;
    if (upstream) {
        if (!updir) {
            snprintf(updir_buf, sizeof updir_buf, "%s.upstream", data);
            updir = updir_buf;
        }
        if (sync_upstream_start(st, upstream, updir, so.log_level, &up, err, sizeof err)) {
            fprintf(stderr, "doorstepd: %s\n", err);
            sync_server_free(sv);
            store_close(st);
            free(key_alloc);
            return 1;
        }
        sync_server_set_metrics_hook(sv, sync_upstream_metrics, up);
    }
    the_server = sv;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("doorstepd: listening on ws://%s:%d/sync (data %s)\n", host, sync_server_port(sv), data);
    fflush(stdout);
    sync_server_run(sv);
    the_server = NULL;
    sync_upstream_stop(up);
    sync_server_free(sv);
    store_close(st);
    fprintf(stderr, "doorstepd: stopped\n");
    free(key_alloc);
    return 0;
}
