/*
 * doorstepctl.c — the administrator's command.
 *
 *   doorstepctl [--data DIR] [--key-file F] COMMAND [ARGS]
 *
 * Global options come before the command; DOORSTEP_DATA and
 * DOORSTEP_KEY_FILE are the environment defaults; the key file defaults to
 * DIR.key, as for doorstepd.  It works while doorstepd runs (LMDB's
 * multi-process locking).  Commands in this version:
 *
 *   init [--schema F] [--campaign-year Y] [--admin NAME]
 *        create the store, its server key, the data key file, and the first
 *        admin account (password from DOORSTEP_ADMIN_PASSWORD, else a random
 *        one printed once)
 *   verify            rebuild records and aggregates from the log and compare
 *   backup DEST       hot, compacting copy into the new directory DEST
 *   stats             counts: deltas, records, devices, quarantine, map use
 *
 * Device, key, quarantine and staff commands arrive with issue #6.
 * Exit codes: 0 ok, 1 failure (message on stderr), 2 usage.
 */
#include "store.h"

#include <errno.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char *data_dir, *key_file;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: doorstepctl [--data DIR] [--key-file F] COMMAND [ARGS]\n"
            "commands:\n"
            "  init [--schema F] [--campaign-year Y] [--admin NAME]\n"
            "  verify\n"
            "  backup DEST\n"
            "  stats\n"
            "environment: DOORSTEP_DATA, DOORSTEP_KEY_FILE, DOORSTEP_ADMIN_PASSWORD\n");
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static store *open_store(void)
{
    char err[512];
    store *s = NULL;
    int rc = store_open(data_dir, key_file, NULL, &s, err, sizeof err);
    if (rc) {
        fprintf(stderr, "doorstepctl: %s\n", err);
        return NULL;
    }
    return s;
}

static int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {{"schema", required_argument, NULL, 's'},
                                         {"campaign-year", required_argument, NULL, 'y'},
                                         {"admin", required_argument, NULL, 'a'},
                                         {NULL, 0, NULL, 0}};
    const char *schema = DOORSTEP_DEFAULT_SCHEMA, *admin = "admin";
    long year = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's': schema = optarg; break;
        case 'y': {
            char *end;
            errno = 0;
            year = strtol(optarg, &end, 10);
            if (errno || *end || year < 2000 || year > 2100) {
                fprintf(stderr, "doorstepctl init: --campaign-year must be 2000..2100\n");
                return 2;
            }
            break;
        }
        case 'a': admin = optarg; break;
        default: usage(stderr); return 2;
        }
    }
    if (!year) {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        year = tm.tm_year + 1900;
    }
    char err[512] = "";
    int rc = store_init(data_dir, key_file, schema, (uint32_t)year, err, sizeof err);
    if (rc) {
        fprintf(stderr, "doorstepctl init: %s\n", err);
        return 1;
    }
    store *s = open_store();
    if (!s) return 1;
    char pw[40];
    const char *env = getenv("DOORSTEP_ADMIN_PASSWORD");
    bool generated = !env || !*env;
    if (generated) {
        uint8_t raw[15];
        randombytes_buf(raw, sizeof raw);
        sodium_bin2base64(pw, sizeof pw, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        sodium_memzero(raw, sizeof raw);
    } else {
        snprintf(pw, sizeof pw, "%s", env);
        if (strlen(env) >= sizeof pw) {
            fprintf(stderr, "doorstepctl init: DOORSTEP_ADMIN_PASSWORD is longer than %zu bytes\n",
                    sizeof pw - 1);
            store_close(s);
            return 1;
        }
    }
    store_txn *t;
    rc = store_begin(s, STORE_RW, &t);
    if (!rc) rc = store_staff_create(t, admin, "管理员", STORE_ROLE_ADMIN, pw, now_ms(), NULL);
    if (!rc) {
        char detail[128];
        snprintf(detail, sizeof detail, "store initialised; admin account %s created", admin);
        rc = store_audit_append(t, now_ms(), "doorstepctl", "store.init", detail, NULL);
    }
    if (!rc) rc = store_commit(t);
    else store_abort(t);
    if (rc) {
        fprintf(stderr, "doorstepctl init: creating the admin account failed: %s\n",
                store_strerror(rc));
        sodium_memzero(pw, sizeof pw);
        store_close(s);
        return 1;
    }
    printf("initialised store in %s\n", data_dir);
    printf("data key file: %s (keep it safe and outside backups of %s)\n", key_file, data_dir);
    printf("campaign year: %ld\n", year);
    if (generated) printf("admin login: %s / %s  (shown once; change it)\n", admin, pw);
    else printf("admin login: %s (password from DOORSTEP_ADMIN_PASSWORD)\n", admin);
    sodium_memzero(pw, sizeof pw);
    store_close(s);
    return 0;
}

static void print_problem(void *arg, const char *line)
{
    (void)arg;
    printf("problem: %s\n", line);
}

static int cmd_verify(void)
{
    store *s = open_store();
    if (!s) return 1;
    uint64_t problems = 0;
    int rc = store_verify(s, print_problem, NULL, &problems);
    store_close(s);
    if (rc == STORE_OK) {
        printf("verify: ok\n");
        return 0;
    }
    if (rc == STORE_EVERIFY) {
        printf("verify: %llu problem(s)\n", (unsigned long long)problems);
        return 1;
    }
    fprintf(stderr, "doorstepctl verify: %s\n", store_strerror(rc));
    return 1;
}

static int cmd_backup(int argc, char **argv)
{
    if (argc != 2) {
        usage(stderr);
        return 2;
    }
    const char *dest = argv[1];
    if (mkdir(dest, 0700) != 0) {
        fprintf(stderr, "doorstepctl backup: cannot create %s: %s (it must not exist yet)\n", dest,
                strerror(errno));
        return 1;
    }
    store *s = open_store();
    if (!s) return 1;
    char err[512];
    int rc = store_backup(s, dest, err, sizeof err);
    store_close(s);
    if (rc) {
        fprintf(stderr, "doorstepctl backup: %s\n", err);
        return 1;
    }
    printf("backup written to %s (it needs the same data key file to open)\n", dest);
    return 0;
}

static int cmd_stats(void)
{
    store *s = open_store();
    if (!s) return 1;
    store_txn *t;
    uint64_t last = 0, quar = 0;
    crdt_hlc hwm = 0;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (!rc) {
        store_last_sseq(t, &last);
        store_quarantine_count(t, &quar);
        store_hlc_hwm(t, &hwm);
        store_abort(t);
    }
    size_t used, size;
    store_map_usage(s, &used, &size);
    store_close(s);
    if (rc) {
        fprintf(stderr, "doorstepctl stats: %s\n", store_strerror(rc));
        return 1;
    }
    printf("deltas: %llu\nquarantine: %llu\nhlc_high_water_ms: %llu\n"
           "map_used_bytes: %zu\nmap_size_bytes: %zu\n",
           (unsigned long long)last, (unsigned long long)quar,
           (unsigned long long)CRDT_HLC_MS(hwm), used, size);
    return 0;
}

static char *default_key_file(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    char *p = malloc(n + 5);
    if (!p) return NULL;
    memcpy(p, dir, n);
    strcpy(p + n, ".key");
    return p;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"data", required_argument, NULL, 'd'},
                                         {"key-file", required_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    data_dir = getenv("DOORSTEP_DATA");
    key_file = getenv("DOORSTEP_KEY_FILE");
    /* "+": stop at the command; its options are its own. */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data_dir = optarg; break;
        case 'k': key_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    if (!data_dir || !*data_dir) {
        fprintf(stderr, "doorstepctl: --data DIR (or DOORSTEP_DATA) is required\n");
        return 2;
    }
    char *kf = NULL;
    if (!key_file) key_file = kf = default_key_file(data_dir);
    if (sodium_init() < 0) return 1;
    const char *cmd = argv[optind];
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    int rc;
    if (!strcmp(cmd, "init")) rc = cmd_init(sub_argc, sub_argv);
    else if (!strcmp(cmd, "verify") && sub_argc == 1) rc = cmd_verify();
    else if (!strcmp(cmd, "backup")) rc = cmd_backup(sub_argc, sub_argv);
    else if (!strcmp(cmd, "stats") && sub_argc == 1) rc = cmd_stats();
    else {
        fprintf(stderr, "doorstepctl: unknown command or arguments: %s\n", cmd);
        usage(stderr);
        rc = 2;
    }
    free(kf);
    return rc;
}
