/*
 * doorstepd.c — the Doorstep sync server command.
 *
 *   doorstepd --data DIR [--key-file F] [--listen HOST:PORT]
 *             [--tls-cert F --tls-key F] [--allow-plain] [--static DIR]
 *             [--log-level L] [--init --schema F --campaign-year Y]
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
            "                 [--log-level 0-3] [--init [--schema F] [--campaign-year Y]]\n"
            "  --data DIR        data directory (or DOORSTEP_DATA)\n"
            "  --key-file F      data key file (or DOORSTEP_KEY_FILE; default DIR.key)\n"
            "  --listen H:P      address to listen on (default 127.0.0.1:8080; port 0 = any)\n"
            "  --allow-plain     allow plain ws on a non-loopback address\n"
            "  --init            initialise DIR first if it is not a store yet\n");
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
        {"log-level", required_argument, NULL, 'v'},
        {"init", no_argument, NULL, 'i'},
        {"schema", required_argument, NULL, 'S'},
        {"campaign-year", required_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *data = getenv("DOORSTEP_DATA"), *key = getenv("DOORSTEP_KEY_FILE");
    const char *listen = "127.0.0.1:8080", *schema = DOORSTEP_DEFAULT_SCHEMA;
    sync_server_opts so = {0};
    bool init = false;
    long year = 0;
    int c;
    so.log_level = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data = optarg; break;
        case 'k': key = optarg; break;
        case 'l': listen = optarg; break;
        case 'c': so.tls_cert = optarg; break;
        case 'K': so.tls_key = optarg; break;
        case 'P': so.allow_plain = true; break;
        case 's': so.static_dir = optarg; break;
        case 'v': so.log_level = atoi(optarg); break;
        case 'i': init = true; break;
        case 'S': schema = optarg; break;
        case 'y': year = strtol(optarg, NULL, 10); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
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
    if (year && (year < 2000 || year > 2100)) {
        fprintf(stderr, "doorstepd: --campaign-year must be 2000..2100\n");
        return 2;
    }

    char err[512] = "";
    store *st = NULL;
    int rc = store_open(data, key, NULL, &st, err, sizeof err);
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
        rc = store_open(data, key, NULL, &st, err, sizeof err);
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
    rc = sync_server_new(st, &sync_config_default, &so, &sv, err, sizeof err);
    if (rc) {
        fprintf(stderr, "doorstepd: %s\n", err);
        store_close(st);
        free(key_alloc);
        return 1;
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
    sync_server_free(sv);
    store_close(st);
    fprintf(stderr, "doorstepd: stopped\n");
    free(key_alloc);
    return 0;
}
