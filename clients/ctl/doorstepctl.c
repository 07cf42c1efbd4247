/*
 * doorstepctl.c — the administrator's command.
 *
 *   doorstepctl [--data DIR] [--key-file F] [--tz ZONE] COMMAND [SUBCOMMAND] [ARGS]
 *
 * Global options come before the command; DOORSTEP_DATA, DOORSTEP_KEY_FILE
 * and DOORSTEP_TZ are the environment defaults; the key file defaults to
 * DIR.key, as for doorstepd.  Times are printed in the station's time zone
 * (--tz, default Asia/Shanghai, as the dashboard), whatever TZ the process
 * inherited.  It works while doorstepd runs (LMDB's
 * multi-process locking): every change is one short write transaction, and
 * a device change bumps the admin generation that doorstepd watches, so a
 * revocation closes the phone's live session within a second.
 *
 * Commands (docs/ADMIN.md has every one with an example):
 *   init, verify, backup DEST, stats [--json]
 *   device enroll|list|show|scope|rotate|revoke|tokens
 *   quarantine list|show|accept|reject
 *   staff add|list|passwd|role|disable|enable
 *   audit list
 *   import --csv FILE, export --csv FILE   CSV ledgers (one row per person)
 *
 * Invariants
 *   - Every state-changing command writes its audit entry in the same write
 *     transaction as the change (all or nothing); the actor is
 *     "admin:USERNAME" from --as, else $USER.  --as is attribution, not
 *     authentication: doorstepctl's authority is access to the data
 *     directory and the data key file.
 *   - Every subcommand parses its options with getopt_long and has --help.
 *   - Counts are printed with the noun in the right number (plural()).
 *   - Exit codes: 0 ok, 1 failure (message on stderr), 2 usage.  Nothing is printed to stdout before a failure is known,
 *     except what a command has already committed.
 *   - Passwords and enrollment tokens are wiped (sodium_memzero) after use;
 *     a token is shown once and never stored in clear (the PNG, if asked
 *     for, is created 0600).
 */
#include "doorstep_device.h"
#include "ledger.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <png.h>
#include <pwd.h>
#include <qrencode.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_FAIL = 1, EXIT_USAGE = 2 };

static const char *data_dir, *key_file;

static const char usage_text[] =
    "usage: doorstepctl [--data DIR] [--key-file F] [--tz ZONE] COMMAND [ARGS]\n"
    "commands:\n"
    "  init [--schema F] [--campaign-year Y] [--admin NAME]\n"
    "  verify | backup DEST | stats [--json]\n"
    "  device enroll --volunteer NAME (--households IDS | --grids C/G,...) [--expires D]\n"
    "                [--server URL] [--png FILE] [--no-qr] [--qr-invert]\n"
    "  device enroll --relay --volunteer STREET [--expires D]   (at a district server)\n"
    "  device list [--json] | device show ID | device tokens [--json]\n"
    "  device scope ID (--households IDS | --grids C/G,...)\n"
    "  device rotate ID (--require | --cancel)\n"
    "  device revoke ID (--soft | --hard)\n"
    "  quarantine list [--state pending|accepted|rejected|all] [--json]\n"
    "  quarantine show QID | accept QID | reject QID [--note TEXT]\n"
    "  staff add USERNAME --role staff|admin [--display NAME] [--password-stdin]\n"
    "  staff list [--json] | passwd USERNAME [--password-stdin]\n"
    "  staff role USERNAME staff|admin | disable USERNAME | enable USERNAME\n"
    "  audit list [--after N] [--before N] [--limit N] [--json] | audit verify\n"
    "  import --csv FILE [--encoding utf-8|gbk] [--dry-run]\n"
    "  export --csv FILE [--headers en|zh]\n"
    "  upstream enroll URL TOKEN [--dir D] | upstream status [--dir D] [--json]\n"
    "state-changing commands take --as USERNAME (default $USER), recorded in the audit log.\n"
    "every command and subcommand takes --help.\n"
    "--tz ZONE: the station's time zone for the times printed, an IANA name\n"
    "  (default Asia/Shanghai; the TZ variable is not used).\n"
    "environment: DOORSTEP_DATA, DOORSTEP_KEY_FILE, DOORSTEP_TZ, DOORSTEP_ADMIN_PASSWORD (init),\n"
    "  DOORSTEP_PASSWORD (staff add/passwd), DOORSTEP_SERVER (enrollment URI), USER\n"
    "exit codes: 0 ok, 1 failure, 2 usage\n";

static void usage(FILE *f) { fputs(usage_text, f); }

/* A usage error: message, then exit code 2. */
static int usage_err(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "doorstepctl %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see doorstepctl %s --help)\n", cmd);
    return EXIT_USAGE;
}

static int fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "doorstepctl %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAIL;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The noun for n things: plural(1, "household", "households") is
 * "household", plural(0, ...) "households". */
static const char *plural(uint64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* ---- the station's time zone --------------------------------------------------------
 *
 * Every time is printed in the station's zone, as the dashboard shows it:
 * --tz ZONE, else DOORSTEP_TZ, else Asia/Shanghai -- never the TZ the
 * process happened to inherit.  station_tz_set checks the IANA name against
 * the zone database ($TZDIR, else /usr/share/zoneinfo, where the C library
 * reads it) and then sets the process's TZ to that zone file, so that
 * localtime_r gives the station's wall clock and the UTC offset of each
 * instant, daylight saving time included.
 */

#define STATION_TZ_DEFAULT "Asia/Shanghai"
#define TZ_NAME_MAX 64          /* the longest IANA name is about 30 bytes */

/* Zones known without the zone database (tzdata not installed), as POSIX
 * TZ rules.  A fixed +08:00 is exact for Asia/Shanghai: China has had no
 * daylight saving time since 1991, before any time doorstepctl prints. */
static const struct {
    const char *name, *rule;
} tz_builtin[] = {{"Asia/Shanghai", "CST-8"}, {"UTC", "UTC0"}, {"Etc/UTC", "UTC0"}};

/* An IANA zone name as the database spells it: parts of A-Z a-z 0-9 _ + -
 * joined by single '/', at most TZ_NAME_MAX bytes.  No '.', and no '/' at
 * either end, so it names a file below the zone directory and nothing else. */
static bool tz_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > TZ_NAME_MAX || name[0] == '/' || name[n - 1] == '/') return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '+' || c == '-' || (c == '/' && name[i + 1] != '/');
        if (!ok) return false;
    }
    return true;
}

/* Where the C library reads zone files from. */
static const char *tz_dir(void)
{
    const char *d = getenv("TZDIR");
    return d && *d ? d : "/usr/share/zoneinfo";
}

/* Is tz_dir()/name a zone file (it starts with the TZif magic; a directory
 * such as "Asia", or a missing file, is not)? */
static bool tz_file_ok(const char *name)
{
    char path[4096], magic[4];
    int n = snprintf(path, sizeof path, "%s/%s", tz_dir(), name);
    if (n < 0 || (size_t)n >= sizeof path) return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t r = read(fd, magic, sizeof magic);
    close(fd);
    return r == (ssize_t)sizeof magic && !memcmp(magic, "TZif", sizeof magic);
}

/* Make the zone `name` (given by `from`: "--tz", "DOORSTEP_TZ" or the
 * default) the one localtime_r uses.  0; EXIT_USAGE with a message for a
 * name that is not a zone here; EXIT_FAIL if TZ cannot be set. */
static int station_tz_set(const char *name, const char *from)
{
    char tz[TZ_NAME_MAX + 2];
    if (!tz_name_ok(name)) {
        fprintf(stderr, "doorstepctl: %s \"%s\" is not a time zone name (an IANA name such as "
                        "Asia/Shanghai or Europe/Berlin)\n", from, name);
        return EXIT_USAGE;
    }
    if (tz_file_ok(name)) {
        snprintf(tz, sizeof tz, ":%s", name); /* ':': a zone file, never a POSIX rule */
    } else {
        const char *rule = NULL;
        for (size_t i = 0; i < sizeof tz_builtin / sizeof *tz_builtin && !rule; i++)
            if (!strcmp(name, tz_builtin[i].name)) rule = tz_builtin[i].rule;
        if (!rule) {
            fprintf(stderr, "doorstepctl: %s \"%s\": unknown time zone (no zone file %s/%s; "
                            "is tzdata installed?)\n", from, name, tz_dir(), name);
            return EXIT_USAGE;
        }
        snprintf(tz, sizeof tz, "%s", rule);
    }
    if (setenv("TZ", tz, 1) != 0) {
        fprintf(stderr, "doorstepctl: cannot set the time zone: %s\n", strerror(errno));
        return EXIT_FAIL;
    }
    tzset();
    return 0;
}

/* Station time "2026-05-01 12:34:56 +0800" (the offset of that instant in
 * the station's zone), or "never" for 0. */
static const char *fmt_time(uint64_t ms, char buf[40])
{
    if (!ms) return "never";
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || !strftime(buf, 40, "%Y-%m-%d %H:%M:%S %z", &tm))
        snprintf(buf, 40, "%llu ms", (unsigned long long)ms);
    return buf;
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

/* One write transaction: fn(t, arg) then commit; on a full map, grow and
 * run fn again from the start (nothing of the failed try remains). */
typedef int (*rw_fn)(store_txn *t, void *arg);

static int run_rw(store *s, rw_fn fn, void *arg)
{
    for (;;) {
        store_txn *t;
        int rc = store_begin(s, STORE_RW, &t);
        if (rc) return rc;
        rc = fn(t, arg);
        if (rc) store_abort(t);
        else rc = store_commit(t);
        if (rc == STORE_EMAPFULL && store_grow(s) == STORE_OK) continue;
        return rc;
    }
}

/* The actor for the audit log: "admin:" + --as, else $USER, $LOGNAME, or
 * the name of the effective user id. */
static bool make_actor(const char *cmd, const char *as, char out[STORE_AUDIT_ACTOR_MAX + 1])
{
    if (!as || !*as) as = getenv("USER");
    if (!as || !*as) as = getenv("LOGNAME");
    if (!as || !*as) {
        const struct passwd *pw = getpwuid(geteuid());
        if (pw && pw->pw_name && *pw->pw_name) as = pw->pw_name;
    }
    if (!as || !*as) {
        usage_err(cmd, "who is acting? give --as USERNAME ($USER is not set)");
        return false;
    }
    int n = snprintf(out, STORE_AUDIT_ACTOR_MAX + 1, "admin:%s", as);
    if (n < 0 || n > STORE_AUDIT_ACTOR_MAX || !crdt_utf8_valid((const uint8_t *)out, (size_t)n)) {
        usage_err(cmd, "--as must be at most %d bytes of UTF-8",
                  STORE_AUDIT_ACTOR_MAX - (int)strlen("admin:"));
        return false;
    }
    return true;
}

static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (max - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_dev(const char *s, uint32_t *out)
{
    uint64_t v;
    if (!parse_u64(s, UINT32_MAX, &v) || v == 0) return false;
    *out = (uint32_t)v;
    return true;
}

/* getopt_long over a subcommand's argv (argv[0] is the subcommand's name);
 * glibc needs optind = 0 to start over with argument permutation. */
static void getopt_reset(void)
{
    optind = 0;
    opterr = 1;
}

static const char *key_state_name(uint8_t st)
{
    switch (st) {
    case STORE_KEY_ACTIVE: return "active";
    case STORE_KEY_RETIRED: return "retired";
    case STORE_KEY_REVOKED: return "revoked";
    default: return "unknown";
    }
}

static int print_json(json_t *j)
{
    char *txt = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    if (!txt) return fail("json", "out of memory");
    puts(txt);
    free(txt);
    return 0;
}

/* ---- lists of ids: "H1,H2" and "C01/C01-G03,C02/C02-G01" ------------------------ */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void strlist_sort_unique(ledger_strv *l)
{
    if (!l->n) return;
    qsort(l->v, l->n, sizeof *l->v, cmp_str);
    size_t o = 1;
    for (size_t i = 1; i < l->n; i++) {
        if (!strcmp(l->v[i], l->v[o - 1])) free(l->v[i]);
        else l->v[o++] = l->v[i];
    }
    l->n = o;
}

static bool household_id_ok(const char *id)
{
    crdt_record *r = crdt_record_new("household", 9, id, strlen(id));
    crdt_record_free(r);
    return r != NULL;
}

/* Split a comma-separated list (spaces around items ignored) into l;
 * false with a message for an empty item. */
static bool split_list(const char *cmd, const char *opt, const char *s, ledger_strv *l)
{
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\t')) p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
        if (!n) {
            usage_err(cmd, "%s: empty item in \"%s\"", opt, s);
            return false;
        }
        if (!ledger_strv_push(l, p, n)) {
            fail(cmd, "out of memory");
            return false;
        }
        if (!e) return true;
        p = e + 1;
    }
}

/* Parse --households / --grids into checked entries; exactly one given. */
static int parse_scope(const char *cmd, const char *households, const char *grids,
                       ledger_strv *hh, ledger_strv *gr)
{
    if (!households == !grids)
        return usage_err(cmd, "give exactly one of --households IDS or --grids C/G,...");
    if (households) {
        if (!split_list(cmd, "--households", households, hh)) return EXIT_USAGE;
        for (size_t i = 0; i < hh->n; i++)
            if (!household_id_ok(hh->v[i]))
                return usage_err(cmd, "--households: \"%s\" is not a valid household id",
                                 hh->v[i]);
    } else {
        if (!split_list(cmd, "--grids", grids, gr)) return EXIT_USAGE;
        for (size_t i = 0; i < gr->n; i++) {
            const char *slash = strchr(gr->v[i], '/');
            if (!slash || slash == gr->v[i] || !slash[1] || strchr(slash + 1, '/') ||
                strlen(gr->v[i]) > STORE_SCOPE_ITEM_MAX)
                return usage_err(cmd,
                                 "--grids: \"%s\" is not COMMUNITY/GRID (e.g. C07/C07-G03)",
                                 gr->v[i]);
        }
    }
    return 0;
}

/* The households of grid "C/G" appended to out (all pages). */
static int grid_expand(store_txn *t, const char *cg, ledger_strv *out, size_t *count)
{
    char comm[STORE_SCOPE_ITEM_MAX + 1];
    const char *slash = strchr(cg, '/');
    size_t cl = (size_t)(slash - cg);
    memcpy(comm, cg, cl);
    comm[cl] = 0;
    char after[CRDT_RECID_MAX + 1] = "";
    *count = 0;
    for (;;) {
        store_ids page = {0};
        int rc = store_grid_households(t, comm, slash + 1, after, 1000, &page);
        if (rc) return rc;
        for (size_t i = 0; i < page.n; i++)
            if (!ledger_strv_push(out, page.id[i], strlen(page.id[i]))) {
                store_ids_free(&page);
                return CRDT_ENOMEM;
            }
        *count += page.n;
        bool more = page.n == 1000;
        if (more) snprintf(after, sizeof after, "%s", page.id[page.n - 1]);
        store_ids_free(&page);
        if (!more) return STORE_OK;
    }
}

/* ---- passwords -------------------------------------------------------------------- */

/* Read one line from f into buf (without the newline); false at EOF or if
 * it does not fit. */
static bool read_line(FILE *f, char *buf, size_t cap)
{
    if (!fgets(buf, (int)cap, f)) return false;
    size_t n = strlen(buf);
    if (n && buf[n - 1] == '\n') buf[--n] = 0;
    else if (!feof(f)) return false; /* too long */
    if (n && buf[n - 1] == '\r') buf[--n] = 0;
    return true;
}

static bool prompt_noecho(const char *prompt, char *buf, size_t cap)
{
    struct termios old, quiet;
    fprintf(stderr, "%s", prompt);
    fflush(stderr);
    bool have_tc = tcgetattr(STDIN_FILENO, &old) == 0;
    if (have_tc) {
        quiet = old;
        quiet.c_lflag &= (tcflag_t)~ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    bool ok = read_line(stdin, buf, cap);
    if (have_tc) tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    fputc('\n', stderr);
    return ok;
}

/* The new password for `user`: DOORSTEP_PASSWORD, else --password-stdin
 * (one line), else asked twice at a terminal.  0, or an exit code. */
static int get_password(const char *cmd, const char *user, bool from_stdin, char *pw, size_t cap)
{
    const char *env = getenv("DOORSTEP_PASSWORD");
    pw[0] = 0;
    if (env && *env) {
        if (strlen(env) >= cap) return fail(cmd, "DOORSTEP_PASSWORD is too long");
        snprintf(pw, cap, "%s", env);
    } else if (from_stdin) {
        if (!read_line(stdin, pw, cap))
            return fail(cmd, "--password-stdin: no password line on standard input");
    } else if (isatty(STDIN_FILENO)) {
        char again[STORE_PASSWORD_MAX + 2];
        char prompt[96];
        snprintf(prompt, sizeof prompt, "new password for %s: ", user);
        if (!prompt_noecho(prompt, pw, cap)) return fail(cmd, "no password given");
        if (!prompt_noecho("again: ", again, sizeof again)) {
            sodium_memzero(pw, cap);
            return fail(cmd, "no password given");
        }
        bool same = strcmp(pw, again) == 0;
        sodium_memzero(again, sizeof again);
        if (!same) {
            sodium_memzero(pw, cap);
            return fail(cmd, "the two passwords differ; nothing changed");
        }
    } else {
        return usage_err(cmd, "no password: set DOORSTEP_PASSWORD, use --password-stdin, or "
                              "run at a terminal");
    }
    size_t n = strlen(pw);
    if (n < STORE_PASSWORD_MIN || n > STORE_PASSWORD_MAX) {
        sodium_memzero(pw, cap);
        return fail(cmd, "a password must be %d to %d bytes long", STORE_PASSWORD_MIN,
                    STORE_PASSWORD_MAX);
    }
    return 0;
}

/* ---- init, verify, backup, stats ------------------------------------------------- */

static int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {{"schema", required_argument, NULL, 's'},
                                         {"campaign-year", required_argument, NULL, 'y'},
                                         {"admin", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *schema = DOORSTEP_DEFAULT_SCHEMA, *admin = "admin";
    long year = 0;
    int c;
    getopt_reset();
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
        case 'h':
            printf("usage: doorstepctl [--data DIR] init [--schema F] [--campaign-year Y] "
                   "[--admin NAME]\n"
                   "creates the store, the data key file and the first admin account (password\n"
                   "from DOORSTEP_ADMIN_PASSWORD, else a random one printed once)\n");
            return 0;
        default: return usage_err("init", "bad option");
        }
    }
    if (optind < argc) return usage_err("init", "unexpected argument %s", argv[optind]);
    if (!year) { /* this year at the station */
        time_t t = time(NULL);
        struct tm tm;
        if (!localtime_r(&t, &tm))
            return fail("init", "cannot read the clock; give --campaign-year");
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

/* A command without options or with only --help; false: exit with *rc. */
static bool no_options(const char *cmd, int argc, char **argv, int want_args,
                       const char *help, int *rc)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'h') {
            fputs(help, stdout);
            *rc = 0;
        } else {
            *rc = usage_err(cmd, "bad option");
        }
        return false;
    }
    if (argc - optind != want_args) {
        *rc = want_args ? usage_err(cmd, "expected %d %s", want_args,
                                    plural((uint64_t)want_args, "argument", "arguments"))
                        : usage_err(cmd, "takes no arguments");
        return false;
    }
    return true;
}

static void print_problem(void *arg, const char *line)
{
    (void)arg;
    printf("problem: %s\n", line);
}

static int cmd_verify(int argc, char **argv)
{
    int xrc;
    if (!no_options("verify", argc, argv, 0,
                    "usage: doorstepctl verify\nrebuilds every record and aggregate from the "
                    "delta log and compares; exit 1 if anything differs\n",
                    &xrc))
        return xrc;
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
        printf("verify: %llu %s\n", (unsigned long long)problems,
               plural(problems, "problem", "problems"));
        return 1;
    }
    fprintf(stderr, "doorstepctl verify: %s\n", store_strerror(rc));
    return 1;
}

static int cmd_backup(int argc, char **argv)
{
    int xrc;
    if (!no_options("backup", argc, argv, 1,
                    "usage: doorstepctl backup DEST\nhot, compacting copy of the store into the "
                    "new directory DEST (it must not exist)\n",
                    &xrc))
        return xrc;
    const char *dest = argv[optind];
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

/* ---- stats: coverage per community and grid, from the aggregates -------------------- */

#define DAY_MS (24ull * 3600 * 1000)

/* The instant the aggregates are asked about: noon UTC of today's date in
 * the station's zone.  Visits count by their YYYY-MM-DD date and
 * store_agg_get takes the week of the instant's UTC date, so "visits this
 * week" is the station's week, as in the dashboard's overview. */
static uint64_t agg_instant(uint64_t now)
{
    time_t t = (time_t)(now / 1000);
    struct tm tm;
    int64_t day = (int64_t)(now / DAY_MS); /* the UTC date, if localtime_r fails */
    if (localtime_r(&t, &tm))
        day = crdt_days_from_civil(tm.tm_year + 1900, (unsigned)tm.tm_mon + 1,
                                   (unsigned)tm.tm_mday);
    return (uint64_t)day * DAY_MS + DAY_MS / 2;
}

/* One aggregate as JSON: the same members as the dashboard's /api/overview
 * (persons, enrolled, paid, unpaid = persons - enrolled, coverage as a
 * fraction, visits_week, groups, key_group_unenrolled). */
static json_t *agg_to_json(store *s, const store_agg *a)
{
    size_t ng = 0;
    const char *const *names = store_group_names(s, &ng);
    int64_t key_unenrolled = 0;
    json_t *g = json_array();
    for (size_t i = 0; g && i < ng && i < STORE_MAX_GROUPS; i++) {
        json_array_append_new(g, json_pack("{s:s, s:I, s:I}", "name", names[i], "persons",
                                           (json_int_t)a->group[i], "unenrolled",
                                           (json_int_t)a->group_unenrolled[i]));
        key_unenrolled += a->group_unenrolled[i];
    }
    return json_pack("{s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:o*}", "persons",
                     (json_int_t)a->persons, "enrolled", (json_int_t)a->enrolled, "coverage",
                     a->persons ? (double)a->enrolled / (double)a->persons : 0.0, "paid",
                     (json_int_t)a->paid, "unpaid", (json_int_t)(a->persons - a->enrolled),
                     "key_group_unenrolled", (json_int_t)key_unenrolled, "visits_week",
                     (json_int_t)a->visits_week, "groups", g);
}

static void agg_line(const char *c, const char *g, const store_agg *a)
{
    int64_t key_unenrolled = 0;
    for (size_t i = 0; i < STORE_MAX_GROUPS; i++) key_unenrolled += a->group_unenrolled[i];
    printf("%-12s %-14s %8lld %8lld %8.1f%% %8lld %8lld %8lld %8lld\n", c, g,
           (long long)a->persons, (long long)a->enrolled,
           a->persons ? 100.0 * (double)a->enrolled / (double)a->persons : 0.0,
           (long long)a->paid, (long long)(a->persons - a->enrolled), (long long)key_unenrolled,
           (long long)a->visits_week);
}

/* Station, then each community followed by its grids: text lines, or into
 * j ("station", "communities": [{community, ..., grids: [{grid, ...}]}]). */
static int stats_coverage(store *s, store_txn *t, uint64_t at, json_t *j)
{
    store_places pl = {0};
    store_agg a;
    int rc = store_agg_place_list(t, &pl);
    if (!rc) rc = store_agg_get(t, NULL, NULL, at, &a);
    if (rc) goto out;
    json_t *comms = NULL;
    if (j) {
        json_object_set_new(j, "station", agg_to_json(s, &a));
        comms = json_array();
        json_object_set_new(j, "communities", comms);
    } else {
        printf("\ncoverage, campaign year %u (payment recorded for the year; visits: this week)\n",
               store_campaign_year(s));
        printf("%-12s %-14s %8s %8s %9s %8s %8s %8s %8s\n", "COMMUNITY", "GRID", "PERSONS",
               "ENROLLED", "COVERAGE", "PAID", "UNPAID", "KEY-UNEN", "VISITS");
        agg_line("(station)", "(all)", &a);
    }
    for (size_t i = 0; i < pl.n;) {
        size_t k = i;
        if ((rc = store_agg_get(t, pl.p[i].community, NULL, at, &a))) goto out;
        json_t *c = NULL, *grids = NULL;
        if (j) {
            c = agg_to_json(s, &a);
            grids = json_array();
            json_object_set_new(c, "community", json_string(pl.p[i].community));
            json_object_set_new(c, "grids", grids);
            json_array_append_new(comms, c);
        } else {
            agg_line(pl.p[i].community, "(all)", &a);
        }
        for (; k < pl.n && !strcmp(pl.p[k].community, pl.p[i].community); k++) {
            if ((rc = store_agg_get(t, pl.p[k].community, pl.p[k].grid, at, &a))) goto out;
            if (j) {
                json_t *g = agg_to_json(s, &a);
                json_object_set_new(g, "grid", json_string(pl.p[k].grid));
                json_array_append_new(grids, g);
            } else {
                agg_line(pl.p[k].community, pl.p[k].grid, &a);
            }
        }
        i = k;
    }
out:
    store_places_free(&pl);
    return rc;
}

static int cmd_stats(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool json = false;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j') json = true;
        else if (c == 'h') {
            printf("usage: doorstepctl stats [--json]\n"
                   "counts (deltas, quarantine and pending, HLC high-water mark, map use), then\n"
                   "coverage from the aggregates for the station, each community and each grid:\n"
                   "persons, enrolled, coverage %%, paid, unpaid, key-group persons not enrolled,\n"
                   "visits this week.  --json: the same as one JSON object\n");
            return 0;
        } else return usage_err("stats", "bad option");
    }
    if (optind < argc) return usage_err("stats", "unexpected argument %s", argv[optind]);
    store *s = open_store();
    if (!s) return 1;
    store_txn *t;
    uint64_t last = 0, quar = 0, pending = 0;
    crdt_hlc hwm = 0;
    size_t used, size;
    json_t *j = json ? json_object() : NULL;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (!rc) {
        store_last_sseq(t, &last);
        store_hlc_hwm(t, &hwm);
        uint64_t qc[4];
        rc = store_quarantine_counts(t, qc);
        quar = qc[0];
        pending = qc[STORE_QSTATE_PENDING];
        store_map_usage(s, &used, &size);
        if (!rc && j) {
            json_object_set_new(j, "deltas", json_integer((json_int_t)last));
            json_object_set_new(j, "quarantine", json_integer((json_int_t)quar));
            json_object_set_new(j, "quarantine_pending", json_integer((json_int_t)pending));
            json_object_set_new(j, "hlc_high_water_ms",
                                json_integer((json_int_t)CRDT_HLC_MS(hwm)));
            json_object_set_new(j, "map_used_bytes", json_integer((json_int_t)used));
            json_object_set_new(j, "map_size_bytes", json_integer((json_int_t)size));
            json_object_set_new(j, "campaign_year", json_integer(store_campaign_year(s)));
        } else if (!rc) {
            printf("deltas: %llu\nquarantine: %llu\nquarantine_pending: %llu\n"
                   "hlc_high_water_ms: %llu\nmap_used_bytes: %zu\nmap_size_bytes: %zu\n",
                   (unsigned long long)last, (unsigned long long)quar,
                   (unsigned long long)pending, (unsigned long long)CRDT_HLC_MS(hwm), used, size);
        }
        if (!rc) rc = stats_coverage(s, t, agg_instant(now_ms()), j);
        store_abort(t);
    }
    store_close(s);
    if (rc) {
        json_decref(j);
        fprintf(stderr, "doorstepctl stats: %s\n", store_strerror(rc));
        return 1;
    }
    return j ? print_json(j) : 0;
}

/* ---- QR codes: terminal and PNG --------------------------------------------------- */

#define QR_MARGIN_TTY 2
#define QR_MARGIN_PNG 4
#define QR_PNG_SCALE 8

static bool qr_dark(const QRcode *qr, int x, int y)
{
    if (x < 0 || y < 0 || x >= qr->width || y >= qr->width) return false;
    return qr->data[y * qr->width + x] & 1;
}

/*
 * Two modules per character cell with the Unicode half blocks.  By default
 * the light modules (and the quiet zone) are drawn, so the code reads
 * correctly on a dark terminal; invert draws the dark ones, for light
 * terminals.
 */
static void qr_print(FILE *f, const QRcode *qr, bool invert)
{
    static const char *const cell[4] = {" ", "\u2584", "\u2580", "\u2588"}; /* top<<1 | bottom */
    int m = QR_MARGIN_TTY, w = qr->width;
    for (int y = -m; y < w + m; y += 2) {
        for (int x = -m; x < w + m; x++) {
            bool top = qr_dark(qr, x, y) == invert;
            bool bottom = y + 1 < w + m ? qr_dark(qr, x, y + 1) == invert : false;
            fputs(cell[(top ? 2 : 0) | (bottom ? 1 : 0)], f);
        }
        fputc('\n', f);
    }
}

/* A 1-bit grayscale PNG: QR_PNG_SCALE pixels per module, a quiet zone of
 * QR_MARGIN_PNG modules; created 0600 (it holds a secret).  0 or -1 with a
 * message. */
static int qr_png(const QRcode *qr, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return fail("device enroll", "cannot create %s: %s", path, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        return fail("device enroll", "cannot open %s: %s", path, strerror(errno));
    }
    const int side = (qr->width + 2 * QR_MARGIN_PNG) * QR_PNG_SCALE;
    const size_t rowbytes = (size_t)(side + 7) / 8;
    png_bytep row = malloc(rowbytes);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!row || !png || !info) {
        png_destroy_write_struct(&png, &info);
        free(row);
        fclose(f);
        return fail("device enroll", "out of memory writing %s", path);
    }
    /* Nothing set between here and the writes changes after setjmp. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row);
        fclose(f);
        return fail("device enroll", "writing %s failed", path);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)side, (png_uint_32)side, 1, PNG_COLOR_TYPE_GRAY,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int py = 0; py < side; py++) {
        memset(row, 0, rowbytes);
        int my = py / QR_PNG_SCALE - QR_MARGIN_PNG;
        for (int px = 0; px < side; px++) {
            int mx = px / QR_PNG_SCALE - QR_MARGIN_PNG;
            if (!qr_dark(qr, mx, my)) row[px / 8] |= (png_byte)(0x80 >> (px % 8)); /* white */
        }
        png_write_row(png, row);
    }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
    if (fclose(f) != 0) return fail("device enroll", "writing %s failed: %s", path, strerror(errno));
    return 0;
}

/* Percent-encode s (RFC 3986 unreserved characters kept) into out. */
static bool pct_encode(const char *s, char *out, size_t cap)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool keep = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        if (o + (keep ? 1 : 3) >= cap) return false;
        if (keep) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = digits[*p >> 4];
            out[o++] = digits[*p & 15];
        }
    }
    out[o] = 0;
    return true;
}

/* ---- device ------------------------------------------------------------------------ */

/* "7d", "36h", "90m", or a number of days; at most 90 days. */
static bool parse_duration(const char *s, uint64_t *ms)
{
    size_t n = strlen(s);
    uint64_t unit = 86400000ull, v;
    char num[24];
    if (n == 0 || n >= sizeof num) return false;
    memcpy(num, s, n + 1);
    switch (num[n - 1]) {
    case 'd': unit = 86400000ull; num[--n] = 0; break;
    case 'h': unit = 3600000ull; num[--n] = 0; break;
    case 'm': unit = 60000ull; num[--n] = 0; break;
    default: break;
    }
    if (!parse_u64(num, 90ull * 86400000ull, &v) || v == 0) return false;
    *ms = v * unit;
    return *ms <= 90ull * 86400000ull;
}

typedef struct enroll_ctx {
    const char *volunteer;
    const char *const *scope;
    size_t n_scope;
    uint64_t now, expires;
    const char *actor;
    size_t grid_households;   /* households the grids hold now (for the message) */
    const ledger_strv *grids;
    char token[STORE_TOKEN_TEXT_LEN + 1];
} enroll_ctx;

static int enroll_txn(store_txn *t, void *arg)
{
    enroll_ctx *e = arg;
    char detail[STORE_AUDIT_DETAIL_MAX + 1];
    int rc = store_token_create(t, e->volunteer, e->scope, e->n_scope, e->now, e->expires,
                                e->token);
    if (rc) return rc;
    size_t o = (size_t)snprintf(detail, sizeof detail,
                                "enrollment token for %s, %zu scope %s (", e->volunteer,
                                e->n_scope, plural(e->n_scope, "entry", "entries"));
    for (size_t i = 0; i < e->n_scope && o < sizeof detail - 64; i++)
        o += (size_t)snprintf(detail + o, sizeof detail - o, "%s%s", i ? " " : "", e->scope[i]);
    if (o >= sizeof detail - 64) o += (size_t)snprintf(detail + o, sizeof detail - o, " ...");
    char when[40];
    snprintf(detail + o, sizeof detail - o, "), expires %s", fmt_time(e->expires, when));
    return store_audit_append(t, e->now, e->actor, "token.create", detail, NULL);
}

static const char enroll_help[] =
    "usage: doorstepctl device enroll --volunteer NAME (--households IDS | --grids C/G,...)\n"
    "         [--expires D] [--server URL] [--png FILE] [--no-qr] [--qr-invert] [--as USER]\n"
    "creates a one-time enrollment token bound to the volunteer and the scope, and shows it\n"
    "as text, as a URI and as a QR code (terminal; PNG with --png).  The phone enrolls with\n"
    "it once.  --households H1,H2,...: household ids.  --grids C07/C07-G03,...: whole grids\n"
    "(COMMUNITY/GRID), expanded to their households when the phone enrolls.  --expires:\n"
    "7d (default), 36h, 90m, or days; at most 90 days.  --server: the sync URL put in the\n"
    "URI (default $DOORSTEP_SERVER; omitted if neither).  --qr-invert: for light terminals.\n"
    "URI: doorstep://enroll?server=<percent-encoded URL>&token=<token>&spk=<server key hex>\n"
    "--relay (at a district server): a token for a street server instead of a phone, named\n"
    "by --volunteer (e.g. the street's name); the street enrolls with it once, with\n"
    "`doorstepctl upstream enroll URL TOKEN`, and then relays everything it applies.\n";

static int device_enroll(int argc, char **argv)
{
    static const struct option opts[] = {{"volunteer", required_argument, NULL, 'v'},
                                         {"households", required_argument, NULL, 'H'},
                                         {"grids", required_argument, NULL, 'g'},
                                         {"expires", required_argument, NULL, 'e'},
                                         {"server", required_argument, NULL, 's'},
                                         {"png", required_argument, NULL, 'p'},
                                         {"no-qr", no_argument, NULL, 'n'},
                                         {"qr-invert", no_argument, NULL, 'i'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"relay", no_argument, NULL, 'R'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "device enroll";
    bool relay = false;
    const char *volunteer = NULL, *households = NULL, *grids = NULL, *png = NULL, *as = NULL;
    const char *server = getenv("DOORSTEP_SERVER");
    uint64_t ttl = 7 * 86400000ull;
    bool no_qr = false, invert = false;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'v': volunteer = optarg; break;
        case 'H': households = optarg; break;
        case 'g': grids = optarg; break;
        case 'e':
            if (!parse_duration(optarg, &ttl))
                return usage_err(cmd, "--expires: \"%s\" is not a duration of at most 90 days "
                                      "(7d, 36h, 90m, or days)", optarg);
            break;
        case 's': server = optarg; break;
        case 'p': png = optarg; break;
        case 'n': no_qr = true; break;
        case 'i': invert = true; break;
        case 'a': as = optarg; break;
        case 'R': relay = true; break;
        case 'h': fputs(enroll_help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    if (!volunteer) return usage_err(cmd, "--volunteer NAME is required");
    size_t vl = strlen(volunteer);
    if (vl == 0 || vl > STORE_VOLUNTEER_MAX ||
        !crdt_utf8_valid((const uint8_t *)volunteer, vl))
        return usage_err(cmd, "--volunteer must be 1 to %d bytes of UTF-8", STORE_VOLUNTEER_MAX);
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    ledger_strv hh = {0}, gr = {0};
    int xrc = 0;
    if (relay) {
        /* A relay's scope is the reserved entry, nothing else. */
        if (households || grids) return usage_err(cmd, "--relay takes no --households or --grids");
        if (!ledger_strv_push(&hh, STORE_RELAY_SCOPE, strlen(STORE_RELAY_SCOPE)))
            return fail(cmd, "out of memory");
        households = STORE_RELAY_SCOPE;
    } else if ((xrc = parse_scope(cmd, households, grids, &hh, &gr))) {
        goto out_lists;
    }
    ledger_strv *scope = households ? &hh : &gr;
    strlist_sort_unique(scope);
    if (scope->n > STORE_SCOPE_MAX) {
        xrc = usage_err(cmd, "at most %d scope entries", STORE_SCOPE_MAX);
        goto out_lists;
    }
    char enc_server[1024] = "";
    if (server && *server && !pct_encode(server, enc_server, sizeof enc_server)) {
        xrc = usage_err(cmd, "--server is too long");
        goto out_lists;
    }
    store *s = open_store();
    if (!s) {
        xrc = EXIT_FAIL;
        goto out_lists;
    }
    /* Grids: say now if one has no households (likely a typo). */
    if (grids) {
        store_txn *t = NULL;
        int rc = store_begin(s, STORE_RDONLY, &t);
        for (size_t i = 0; !rc && i < gr.n; i++) {
            ledger_strv tmp = {0};
            size_t n = 0;
            rc = grid_expand(t, gr.v[i], &tmp, &n);
            ledger_strv_free(&tmp);
            if (!rc && n == 0)
                fprintf(stderr, "doorstepctl %s: warning: grid %s has no households yet; the "
                                "phone gets the grid's households as of its enrollment\n",
                        cmd, gr.v[i]);
        }
        if (t) store_abort(t);
        if (rc) {
            xrc = fail(cmd, "reading grids: %s", store_strerror(rc));
            store_close(s);
            goto out_lists;
        }
    }
    enroll_ctx e = {.volunteer = volunteer, .scope = (const char *const *)scope->v,
                    .n_scope = scope->n, .now = now_ms(), .actor = actor};
    e.expires = e.now + ttl;
    int rc = run_rw(s, enroll_txn, &e);
    char spk[65];
    sodium_bin2hex(spk, sizeof spk, store_server_pk(s), 32);
    store_close(s);
    if (rc) {
        xrc = fail(cmd, "creating the token failed: %s", store_strerror(rc));
        goto out_lists;
    }
    char uri[1400];
    snprintf(uri, sizeof uri, "doorstep://enroll?%s%s%stoken=%s&spk=%s", *enc_server ? "server=" : "",
             enc_server, *enc_server ? "&" : "", e.token, spk);
    char when[40];
    if (relay)
        printf("relay enrollment token for %s, expires %s\n", volunteer, fmt_time(e.expires, when));
    else
        printf("enrollment token for %s: %zu %s, expires %s\n", volunteer, scope->n,
               households ? plural(scope->n, "household", "households")
                          : plural(scope->n, "grid", "grids"),
               fmt_time(e.expires, when));
    printf("token: %s\n", e.token);
    printf("uri: %s\n", uri);
    if (!*enc_server)
        printf("note: no --server or DOORSTEP_SERVER given; the phone must be told the server\n");
    QRcode *qr = QRcode_encodeString(uri, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
    if (!qr) {
        xrc = fail(cmd, "QR encoding failed: %s (the token above is valid)", strerror(errno));
    } else {
        if (!no_qr) qr_print(stdout, qr, invert);
        if (png && qr_png(qr, png) == 0) printf("png: %s\n", png);
        else if (png) xrc = EXIT_FAIL; /* the token exists; the message said why */
        QRcode_free(qr);
    }
    printf("shown once: the store keeps only a hash of the token.\n");
    sodium_memzero(e.token, sizeof e.token);
    sodium_memzero(uri, sizeof uri);
out_lists:
    ledger_strv_free(&hh);
    ledger_strv_free(&gr);
    return xrc;
}

typedef struct list_ctx {
    json_t *arr;
    size_t n;
} list_ctx;

/* Walks the store for one listing, calling the row printer into l. */
typedef int (*list_walk)(store_txn *t, list_ctx *l, const void *arg);

/* The body every listing shares: open the store read-only, walk it (rows
 * printed as they come, or collected into a JSON array), then print the
 * array, or `empty` when there were no rows.  Returns the exit status. */
static int list_run(const char *cmd, bool json, list_walk walk, const void *arg,
                    const char *empty)
{
    list_ctx l = {NULL, 0};
    if (json && !(l.arr = json_array())) return fail(cmd, "out of memory");
    store *s = open_store();
    if (!s) {
        json_decref(l.arr);
        return EXIT_FAIL;
    }
    store_txn *t;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (!rc) {
        rc = walk(t, &l, arg);
        store_abort(t);
    }
    store_close(s);
    if (rc) {
        json_decref(l.arr);
        return fail(cmd, "%s", store_strerror(rc));
    }
    if (json) return print_json(l.arr);
    if (!l.n && empty) printf("%s\n", empty);
    return 0;
}

/* A listing that takes only [--json] and [--help]: parse them, list_run. */
static int list_cmd(int argc, char **argv, const char *cmd, const char *help, list_walk walk,
                    const char *empty)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    bool json = false;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j') json = true;
        else if (c == 'h') {
            fputs(help, stdout);
            return 0;
        } else return usage_err(cmd, "bad option");
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    return list_run(cmd, json, walk, NULL, empty);
}

static int list_dev(const store_device *d, size_t scope_n, void *arg)
{
    list_ctx *l = arg;
    char when[40];
    l->n++;
    if (l->arr) {
        json_t *o = json_pack("{s:I, s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:I}", "id",
                              (json_int_t)d->id, "volunteer", d->volunteer, "state",
                              store_device_state_name(d->state), "epoch", (json_int_t)d->epoch,
                              "rotate_required", (d->flags & STORE_DEVF_ROTATE_REQUIRED) != 0,
                              "revoked_at_seq", (json_int_t)d->revoked_at_seq, "created_ms",
                              (json_int_t)d->created_ms, "last_sync_ms",
                              (json_int_t)d->last_sync_ms, "scope_households",
                              (json_int_t)scope_n);
        return o ? json_array_append_new(l->arr, o) : CRDT_ENOMEM;
    }
    if (l->n == 1)
        printf("%-6s %-13s %-5s %-6s %-25s %-6s %s\n", "ID", "STATE", "EPOCH", "ROTATE",
               "LAST SYNC", "SCOPE", "VOLUNTEER");
    printf("%-6u %-13s %-5u %-6s %-25s %-6zu %s\n", d->id, store_device_state_name(d->state), d->epoch,
           d->flags & STORE_DEVF_ROTATE_REQUIRED ? "yes" : "-", fmt_time(d->last_sync_ms, when),
           scope_n, d->volunteer);
    return 0;
}

static int walk_devices(store_txn *t, list_ctx *l, const void *arg)
{
    (void)arg;
    return store_device_list(t, list_dev, l);
}

static int device_list(int argc, char **argv)
{
    return list_cmd(argc, argv, "device list",
                    "usage: doorstepctl device list [--json]\n"
                    "every device: id, state, key epoch, rotation required, last sync, scope "
                    "size, volunteer\n",
                    walk_devices, "no devices (enroll one: doorstepctl device enroll --help)");
}

static int print_key(const store_key *k, void *arg)
{
    char pk[65], t1[40], t2[40];
    (void)arg;
    sodium_bin2hex(pk, sizeof pk, k->pk, 32);
    printf("  epoch %-3u %s", k->epoch, key_state_name(k->state));
    if (k->state == STORE_KEY_RETIRED || k->sealed_seq)
        printf(" sealed at seq %llu", (unsigned long long)k->sealed_seq);
    printf("\n            pk %s\n            registered %s, changed %s\n", pk,
           fmt_time(k->created_ms, t1), fmt_time(k->changed_ms, t2));
    return 0;
}

typedef struct dev_q {
    uint32_t dev;
    uint64_t total, pending;
} dev_q;

static int count_dev_q(const store_qentry *q, const store_qreview *r, void *arg)
{
    dev_q *d = arg;
    if (q->dev == d->dev) {
        d->total++;
        if (r->state == STORE_QSTATE_PENDING) d->pending++;
    }
    return 0;
}

static int device_show(int argc, char **argv)
{
    const char *cmd = "device show";
    int xrc;
    uint32_t id;
    if (!no_options(cmd, argc, argv, 1,
                    "usage: doorstepctl device show ID\n"
                    "the device, its keys by epoch, its chain head, its scope and its "
                    "quarantine entries\n",
                    &xrc))
        return xrc;
    if (!parse_dev(argv[optind], &id))
        return usage_err(cmd, "\"%s\" is not a device id (1, 2, 3...)", argv[optind]);
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    store_txn *t = NULL;
    store_device d;
    store_ids scope = {0};
    uint64_t head = 0, next;
    uint8_t hash[CRDT_HASH_BYTES];
    dev_q dq = {id, 0, 0};
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (rc) goto out;
    if ((rc = store_device_get(t, id, &d))) goto out;
    if ((rc = store_chain_head(t, id, &head, hash)) || (rc = store_device_scope_get(t, id, &scope)) ||
        (rc = store_quarantine_list(t, 0, SIZE_MAX, 0, count_dev_q, &dq, &next)))
        goto out;
    char t1[40], t2[40], hh[65];
    sodium_bin2hex(hh, sizeof hh, hash, 8);
    printf("device %u\n", d.id);
    printf("  volunteer:   %s\n", d.volunteer);
    printf("  state:       %s", store_device_state_name(d.state));
    if (d.state == STORE_DEV_REVOKED_SOFT)
        printf(" (deltas up to seq %llu stay; later ones are quarantined)",
               (unsigned long long)d.revoked_at_seq);
    else if (d.state == STORE_DEV_REVOKED_HARD)
        printf(" (everything arriving is quarantined; held at revocation: seq %llu)",
               (unsigned long long)d.revoked_at_seq);
    else if (d.state == STORE_DEV_FROZEN)
        printf(" (clone or fork detected; arrivals are quarantined)");
    printf("\n  key epoch:   %u\n", d.epoch);
    printf("  rotation:    %s\n", d.flags & STORE_DEVF_ROTATE_REQUIRED
                                       ? "required on next connect"
                                       : "not required");
    printf("  enrolled:    %s\n  last sync:   %s\n", fmt_time(d.created_ms, t1),
           fmt_time(d.last_sync_ms, t2));
    printf("  chain head:  seq %llu", (unsigned long long)head);
    if (head) printf(", hash %s...", hh);
    printf("\n  quarantine:  %llu %s, %llu pending\n", (unsigned long long)dq.total,
           plural(dq.total, "entry", "entries"), (unsigned long long)dq.pending);
    printf("  scope:       %zu %s", scope.n, plural(scope.n, "household", "households"));
    for (size_t i = 0; i < scope.n && i < 50; i++) printf("%s%s", i ? " " : ": ", scope.id[i]);
    if (scope.n > 50) printf(" ... (%zu more)", scope.n - 50);
    printf("\nkeys:\n");
    rc = store_key_list(t, id, print_key, NULL);
out:
    store_ids_free(&scope);
    if (t) store_abort(t);
    store_close(s);
    if (rc == STORE_ENOTFOUND) return fail(cmd, "no device %u (see doorstepctl device list)", id);
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    return 0;
}

typedef struct scope_ctx {
    uint32_t dev;
    ledger_strv *hh, *gr;
    ledger_strv all;
    const char *actor;
    uint64_t now;
    char why[256];
} scope_ctx;

static int scope_txn(store_txn *t, void *arg)
{
    scope_ctx *c = arg;
    store_device d;
    int rc = store_device_get(t, c->dev, &d);
    if (rc) return rc;
    ledger_strv_free(&c->all);
    if (c->hh->n) {
        for (size_t i = 0; i < c->hh->n; i++)
            if (!ledger_strv_push(&c->all, c->hh->v[i], strlen(c->hh->v[i]))) return CRDT_ENOMEM;
    }
    for (size_t i = 0; i < c->gr->n; i++) {
        size_t n;
        if ((rc = grid_expand(t, c->gr->v[i], &c->all, &n))) return rc;
        if (n == 0) {
            snprintf(c->why, sizeof c->why, "grid %s has no households", c->gr->v[i]);
            return STORE_EINVAL;
        }
    }
    strlist_sort_unique(&c->all);
    if ((rc = store_device_scope_set(t, c->dev, (const char *const *)c->all.v, c->all.n)))
        return rc;
    char detail[STORE_AUDIT_DETAIL_MAX + 1];
    const ledger_strv *given = c->hh->n ? c->hh : c->gr;
    size_t o = (size_t)snprintf(detail, sizeof detail,
                                "device %u (%s) scope set to %zu %s from %s:", c->dev,
                                d.volunteer, c->all.n,
                                plural(c->all.n, "household", "households"),
                                c->hh->n ? "households" : "grids");
    for (size_t i = 0; i < given->n && o < sizeof detail - 64; i++)
        o += (size_t)snprintf(detail + o, sizeof detail - o, " %s", given->v[i]);
    if (o >= sizeof detail - 64) snprintf(detail + o, sizeof detail - o, " ...");
    return store_audit_append(t, c->now, c->actor, "device.scope", detail, NULL);
}

static int device_scope(int argc, char **argv)
{
    static const struct option opts[] = {{"households", required_argument, NULL, 'H'},
                                         {"grids", required_argument, NULL, 'g'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "device scope";
    const char *households = NULL, *grids = NULL, *as = NULL;
    uint32_t id;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'H': households = optarg; break;
        case 'g': grids = optarg; break;
        case 'a': as = optarg; break;
        case 'h':
            printf("usage: doorstepctl device scope ID (--households IDS | --grids C/G,...) "
                   "[--as USER]\n"
                   "replaces the device's scope (the households it may edit and receive); "
                   "grids are\nexpanded to the households they hold now\n");
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != 1) return usage_err(cmd, "expected one device ID");
    if (!parse_dev(argv[optind], &id))
        return usage_err(cmd, "\"%s\" is not a device id", argv[optind]);
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    ledger_strv hh = {0}, gr = {0};
    int xrc = parse_scope(cmd, households, grids, &hh, &gr);
    if (xrc) goto out;
    store *s = open_store();
    if (!s) {
        xrc = EXIT_FAIL;
        goto out;
    }
    scope_ctx sc = {.dev = id, .hh = &hh, .gr = &gr, .actor = actor, .now = now_ms()};
    int rc = run_rw(s, scope_txn, &sc);
    store_close(s);
    if (rc == STORE_ENOTFOUND) xrc = fail(cmd, "no device %u", id);
    else if (rc && *sc.why) xrc = fail(cmd, "%s; nothing changed", sc.why);
    else if (rc) xrc = fail(cmd, "%s", store_strerror(rc));
    else printf("device %u: scope set to %zu %s\n", id, sc.all.n,
                plural(sc.all.n, "household", "households"));
    ledger_strv_free(&sc.all);
out:
    ledger_strv_free(&hh);
    ledger_strv_free(&gr);
    return xrc;
}

typedef struct devop_ctx {
    uint32_t dev;
    int how;            /* revoke: STORE_REVOKE_*; rotate: 1 require, 0 cancel */
    const char *actor;
    uint64_t now;
    store_device before;
} devop_ctx;

static int revoke_txn(store_txn *t, void *arg)
{
    devop_ctx *c = arg;
    int rc = store_device_get(t, c->dev, &c->before);
    if (rc) return rc;
    return store_device_revoke(t, c->dev, c->how, c->now, c->actor);
}

static int rotate_txn(store_txn *t, void *arg)
{
    devop_ctx *c = arg;
    int rc = store_device_get(t, c->dev, &c->before);
    if (rc) return rc;
    return store_device_require_rotation(t, c->dev, c->how == 1, c->now, c->actor);
}

/* Shared by rotate and revoke: ID plus two exclusive flags. */
static int device_flagged(int argc, char **argv, const char *cmd, const char *f1, const char *f2,
                          const char *help, uint32_t *id, int *which, char *actor)
{
    const struct option opts[] = {{f1, no_argument, NULL, '1'},
                                  {f2, no_argument, NULL, '2'},
                                  {"as", required_argument, NULL, 'a'},
                                  {"help", no_argument, NULL, 'h'},
                                  {NULL, 0, NULL, 0}};
    const char *as = NULL;
    int c;
    *which = 0;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case '1':
        case '2':
            if (*which && *which != c - '0')
                return usage_err(cmd, "give one of --%s or --%s, not both", f1, f2);
            *which = c - '0';
            break;
        case 'a': as = optarg; break;
        case 'h': fputs(help, stdout); return -1;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (!*which) return usage_err(cmd, "give --%s or --%s", f1, f2);
    if (argc - optind != 1) return usage_err(cmd, "expected one device ID");
    if (!parse_dev(argv[optind], id))
        return usage_err(cmd, "\"%s\" is not a device id", argv[optind]);
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    return 0;
}

static int device_rotate(int argc, char **argv)
{
    const char *cmd = "device rotate";
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    devop_ctx c = {0};
    int which;
    int xrc = device_flagged(argc, argv, cmd, "require", "cancel",
                             "usage: doorstepctl device rotate ID (--require | --cancel) "
                             "[--as USER]\n"
                             "--require: the phone must rotate its key on its next connection "
                             "before it may push\n(welcome says \"rotate\"); --cancel withdraws "
                             "the requirement\n",
                             &c.dev, &which, actor);
    if (xrc) return xrc < 0 ? 0 : xrc;
    c.how = which == 1 ? 1 : 0;
    c.actor = actor;
    c.now = now_ms();
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    int rc = run_rw(s, rotate_txn, &c);
    store_close(s);
    if (rc == STORE_ENOTFOUND) return fail(cmd, "no device %u", c.dev);
    if (rc == STORE_EINVAL)
        return fail(cmd, "device %u is %s: a revoked device cannot rotate", c.dev,
                    store_device_state_name(c.before.state));
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    bool was = c.before.flags & STORE_DEVF_ROTATE_REQUIRED;
    if (was == (c.how == 1))
        printf("device %u: rotation %s already; nothing changed\n", c.dev,
               was ? "required" : "not required");
    else if (c.how == 1)
        printf("device %u: key rotation required on its next connection (now at epoch %u)\n",
               c.dev, c.before.epoch);
    else
        printf("device %u: rotation no longer required\n", c.dev);
    return 0;
}

static int device_revoke(int argc, char **argv)
{
    const char *cmd = "device revoke";
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    devop_ctx c = {0};
    int which;
    int xrc = device_flagged(
        argc, argv, cmd, "soft", "hard",
        "usage: doorstepctl device revoke ID (--soft | --hard) [--as USER]\n"
        "--soft: lost or retired phone: deltas up to the highest seq held now stay; later\n"
        "        arrivals go to quarantine.\n"
        "--hard: compromised phone: everything arriving from now on goes to quarantine.\n"
        "Both revoke the device's key and close its live sessions within a second.\n"
        "Irreversible (soft may become hard, not the reverse); nothing is deleted.\n",
        &c.dev, &which, actor);
    if (xrc) return xrc < 0 ? 0 : xrc;
    c.how = which == 1 ? STORE_REVOKE_SOFT : STORE_REVOKE_HARD;
    c.actor = actor;
    c.now = now_ms();
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    int rc = run_rw(s, revoke_txn, &c);
    store_device after = {0};
    uint64_t head = 0;
    if (!rc) {
        store_txn *t;
        uint8_t hh[CRDT_HASH_BYTES];
        if (store_begin(s, STORE_RDONLY, &t) == 0) {
            store_device_get(t, c.dev, &after);
            store_chain_head(t, c.dev, &head, hh);
            store_abort(t);
        }
    }
    store_close(s);
    if (rc == STORE_ENOTFOUND) return fail(cmd, "no device %u", c.dev);
    if (rc == STORE_EINVAL)
        return fail(cmd, "device %u is revoked hard; a revocation cannot be softened", c.dev);
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    if (c.before.state == after.state) {
        printf("device %u: already %s; nothing changed\n", c.dev, store_device_state_name(after.state));
    } else if (c.how == STORE_REVOKE_SOFT) {
        printf("device %u (%s): revoked (soft). Deltas up to seq %llu stay; later arrivals go "
               "to quarantine.\n",
               c.dev, after.volunteer, (unsigned long long)after.revoked_at_seq);
    } else {
        printf("device %u (%s): revoked (hard). Everything arriving from now on goes to "
               "quarantine (held: up to seq %llu).\n",
               c.dev, after.volunteer, (unsigned long long)head);
    }
    return 0;
}

static int list_token(const store_token *tok, void *arg)
{
    list_ctx *l = arg;
    char t1[40], t2[40], t3[40], status[96];
    uint64_t now = now_ms();
    l->n++;
    if (tok->used)
        snprintf(status, sizeof status, "used by device %u at %s", tok->used_dev,
                 fmt_time(tok->used_ms, t3));
    else if (now >= tok->expires_ms)
        snprintf(status, sizeof status, "expired");
    else
        snprintf(status, sizeof status, "unused");
    if (l->arr) {
        json_t *sc = json_array();
        for (size_t i = 0; sc && i < tok->n_scope; i++)
            json_array_append_new(sc, json_string(tok->scope[i]));
        json_t *o = json_pack("{s:s, s:s, s:o, s:I, s:I, s:b, s:I, s:I}", "id", tok->id,
                              "volunteer", tok->volunteer, "scope", sc, "created_ms",
                              (json_int_t)tok->created_ms, "expires_ms",
                              (json_int_t)tok->expires_ms, "used", tok->used, "used_ms",
                              (json_int_t)tok->used_ms, "used_dev", (json_int_t)tok->used_dev);
        return o ? json_array_append_new(l->arr, o) : CRDT_ENOMEM;
    }
    printf("token %s  %s  scope %zu %s  created %s  expires %s  %s\n", tok->id,
           tok->volunteer, tok->n_scope, plural(tok->n_scope, "entry", "entries"),
           fmt_time(tok->created_ms, t1), fmt_time(tok->expires_ms, t2), status);
    return 0;
}

static int walk_tokens(store_txn *t, list_ctx *l, const void *arg)
{
    (void)arg;
    return store_token_list(t, list_token, l);
}

static int device_tokens(int argc, char **argv)
{
    return list_cmd(argc, argv, "device tokens",
                    "usage: doorstepctl device tokens [--json]\n"
                    "enrollment tokens (used, unused and expired) by their display id; the "
                    "secret itself is never stored\n",
                    walk_tokens, "no enrollment tokens");
}

/* ---- quarantine ------------------------------------------------------------------------ */

static int parse_qid(const char *cmd, const char *s, uint64_t *qid)
{
    if (!parse_u64(s, UINT64_MAX, qid) || *qid == 0)
        return usage_err(cmd, "\"%s\" is not a quarantine entry id (1, 2, 3...)", s);
    return 0;
}

/* Decode the kind/id of a quarantined envelope into buf ("?" if it does not
 * decode). */
static void q_record(const store_qentry *q, crdt_arena *a, char *buf, size_t cap)
{
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    crdt_arena_reset(a);
    if (wire_envelope_decode(q->env.p, q->env.n, &crdt_limits_default, &db, &dl, &sig) ||
        crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, NULL))
        snprintf(buf, cap, "?");
    else
        snprintf(buf, cap, "%.*s/%.*s", (int)d.kind_len, d.kind, (int)d.id_len, d.id);
}

typedef struct qlist_ctx {
    json_t *arr;
    size_t n;
    crdt_arena *a;
} qlist_ctx;

static int list_q(const store_qentry *q, const store_qreview *r, void *arg)
{
    qlist_ctx *l = arg;
    char rec[CRDT_NAME_MAX + CRDT_RECID_MAX + 4], when[40];
    l->n++;
    q_record(q, l->a, rec, sizeof rec);
    if (l->arr) {
        json_t *o = json_pack("{s:I, s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:I, s:I}", "qid",
                              (json_int_t)q->qid, "state", store_qstate_name(r->state), "reason",
                              store_qreason_name(q->reason), "device", (json_int_t)q->dev, "seq",
                              (json_int_t)q->seq, "received_ms", (json_int_t)q->at_ms, "record",
                              rec, "decided_by", r->actor, "decided_ms",
                              (json_int_t)r->decided_ms, "sseq", (json_int_t)r->sseq);
        return o ? json_array_append_new(l->arr, o) : CRDT_ENOMEM;
    }
    if (l->n == 1)
        printf("%-6s %-9s %-15s %-7s %-6s %-25s %s\n", "QID", "STATE", "REASON", "DEVICE", "SEQ",
               "RECEIVED", "RECORD");
    printf("%-6llu %-9s %-15s %-7u %-6llu %-25s %s\n", (unsigned long long)q->qid,
           store_qstate_name(r->state), store_qreason_name(q->reason), q->dev,
           (unsigned long long)q->seq, fmt_time(q->at_ms, when), rec);
    return 0;
}

static int quarantine_list(int argc, char **argv)
{
    static const struct option opts[] = {{"state", required_argument, NULL, 's'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "quarantine list";
    int state = 0, c;
    bool json = false;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!strcmp(optarg, "pending")) state = STORE_QSTATE_PENDING;
            else if (!strcmp(optarg, "accepted")) state = STORE_QSTATE_ACCEPTED;
            else if (!strcmp(optarg, "rejected")) state = STORE_QSTATE_REJECTED;
            else if (!strcmp(optarg, "all")) state = 0;
            else return usage_err(cmd, "--state must be pending, accepted, rejected or all");
            break;
        case 'j': json = true; break;
        case 'h':
            printf("usage: doorstepctl quarantine list [--state pending|accepted|rejected|all] "
                   "[--json]\n"
                   "quarantined deltas (default: all), oldest first: id, review state, reason, "
                   "device, seq,\nwhen received, record\n");
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    qlist_ctx l = {json ? json_array() : NULL, 0, crdt_arena_new(0)};
    store_txn *t = NULL;
    uint64_t next;
    int rc = l.a ? store_begin(s, STORE_RDONLY, &t) : CRDT_ENOMEM;
    if (!rc) rc = store_quarantine_list(t, 0, SIZE_MAX, state, list_q, &l, &next);
    if (t) store_abort(t);
    store_close(s);
    crdt_arena_free(l.a);
    if (rc) {
        json_decref(l.arr);
        return fail(cmd, "%s", store_strerror(rc));
    }
    if (json) return print_json(l.arr);
    if (!l.n) printf("no quarantine entries%s%s\n", state ? " in state " : "",
                     state ? store_qstate_name(state) : "");
    return 0;
}

/* A value for display: strings quoted, maps as {k: v, ...}. */
static void print_val(crdt_blob b)
{
    crdt_val v;
    if (!b.n) return;
    if (crdt_val_parse(b, &v)) {
        printf("<%u %s, undecodable>", b.n, plural(b.n, "byte", "bytes"));
        return;
    }
    switch (v.t) {
    case CRDT_V_NIL: printf("nil"); break;
    case CRDT_V_BOOL: printf("%s", v.b ? "true" : "false"); break;
    case CRDT_V_INT: printf("%lld", (long long)v.i); break;
    case CRDT_V_STR: printf("\"%.*s\"", (int)v.len, v.s); break;
    case CRDT_V_MAP:
        printf("{");
        for (uint32_t i = 0; i < v.nkv; i++) {
            const crdt_scalar *sc = &v.kv[i].v;
            printf("%s%.*s: ", i ? ", " : "", (int)v.kv[i].klen, v.kv[i].k);
            if (sc->t == CRDT_V_BOOL) printf("%s", sc->b ? "true" : "false");
            else if (sc->t == CRDT_V_INT) printf("%lld", (long long)sc->i);
            else printf("\"%.*s\"", (int)sc->len, sc->s);
        }
        printf("}");
        break;
    default: printf("?"); break;
    }
}

static const char *reason_text(int reason)
{
    switch (reason) {
    case STORE_Q_CLOCK_AHEAD: return "its clock was more than the allowed drift ahead";
    case STORE_Q_CLONE: return "same device and seq as another delta, different content";
    case STORE_Q_FROZEN: return "the device was frozen (after a clone or fork)";
    case STORE_Q_REVOKED: return "the device was revoked";
    case STORE_Q_SEALED: return "signed with a retired key beyond its sealed seq";
    case STORE_Q_FORK: return "its previous hash did not match the device's chain";
    case STORE_Q_SCOPE: return "its record was outside the device's households when it arrived";
    default: return "unknown reason";
    }
}

static int quarantine_show(int argc, char **argv)
{
    const char *cmd = "quarantine show";
    int xrc;
    uint64_t qid;
    if (!no_options(cmd, argc, argv, 1,
                    "usage: doorstepctl quarantine show QID\n"
                    "the entry decoded: device, seq, key epoch, record, ops, reason, when "
                    "received,\nwhether its signature verifies, and the review decision\n",
                    &xrc))
        return xrc;
    if ((xrc = parse_qid(cmd, argv[optind], &qid))) return xrc;
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    store_txn *t = NULL;
    store_qentry q = {0};
    store_qreview r;
    store_device dv;
    store_key key;
    crdt_arena *a = crdt_arena_new(0);
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int err_op = -1, drc;
    int rc = a ? store_begin(s, STORE_RDONLY, &t) : CRDT_ENOMEM;
    if (rc) goto out;
    if ((rc = store_quarantine_get(t, qid, &q)) || (rc = store_quarantine_review(t, qid, &r)))
        goto out;
    char t1[40], t2[40];
    printf("quarantine entry %llu\n", (unsigned long long)qid);
    printf("  state:     %s", store_qstate_name(r.state));
    if (r.state == STORE_QSTATE_ACCEPTED)
        printf(" by %s at %s, merged as server seq %llu", r.actor, fmt_time(r.decided_ms, t1),
               (unsigned long long)r.sseq);
    else if (r.state == STORE_QSTATE_REJECTED)
        printf(" by %s at %s%s%s", r.actor, fmt_time(r.decided_ms, t1), *r.note ? "; note: " : "",
               r.note);
    printf("\n  reason:    %s (%s)\n", store_qreason_name(q.reason), reason_text(q.reason));
    printf("  received:  %s\n", fmt_time(q.at_ms, t2));
    printf("  device:    %u", q.dev);
    bool have_dev = store_device_get(t, q.dev, &dv) == STORE_OK;
    if (have_dev) printf(" (%s, %s)", dv.volunteer, store_device_state_name(dv.state));
    else printf(" (not enrolled here)");
    printf("\n  seq:       %llu\n", (unsigned long long)q.seq);
    drc = wire_envelope_decode(q.env.p, q.env.n, &crdt_limits_default, &db, &dl, &sig);
    if (!drc) drc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op);
    if (drc) {
        printf("  delta:     does not decode: %s (op %d); %zu envelope %s kept\n",
               store_strerror(drc), err_op, q.env.n, plural(q.env.n, "byte", "bytes"));
        goto out;
    }
    char prev[17];
    sodium_bin2hex(prev, sizeof prev, d.prev, 8);
    printf("  record:    %.*s %.*s\n", (int)d.kind_len, d.kind, (int)d.id_len, d.id);
    printf("  key epoch: %u", d.epoch);
    if (store_key_get(t, q.dev, d.epoch, &key) == STORE_OK)
        printf(" (key %s; signature %s)", key_state_name(key.state),
               wire_delta_verify(db, dl, sig, key.pk) == 0 ? "verifies" : "DOES NOT VERIFY");
    else
        printf(" (key unknown here; signature not checked)");
    printf("\n  hlc:       %s + %u\n", fmt_time(CRDT_HLC_MS(d.hlc), t1), CRDT_HLC_CTR(d.hlc));
    printf("  prev hash: %s...\n", prev);
    printf("  ops (%u):\n", d.n_ops);
    for (uint32_t i = 0; i < d.n_ops; i++) {
        const crdt_op *op = &d.ops[i];
        printf("    %-5s %.*s", crdt_opcode_name(op->code), (int)op->field_len,
               op->field ? op->field : "");
        if (op->key.n) {
            printf("[");
            print_val(op->key);
            printf("]");
        }
        if (op->val.n) {
            printf(" = ");
            print_val(op->val);
        }
        if (op->n_obs) {
            printf("  (observed");
            for (uint32_t j = 0; j < op->n_obs; j++)
                printf(" %u:%llu", op->obs[j].dev, (unsigned long long)op->obs[j].seq);
            printf(")");
        }
        printf("\n");
    }
out:
    crdt_buf_free(&q.env);
    if (t) store_abort(t);
    store_close(s);
    crdt_arena_free(a);
    if (rc == STORE_ENOTFOUND)
        return fail(cmd, "no quarantine entry %llu (see doorstepctl quarantine list)",
                    (unsigned long long)qid);
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    return 0;
}

typedef struct decide_ctx {
    uint64_t qid;
    bool accept;
    const char *actor, *note;
    uint64_t now;
    store_qreview before, after;
} decide_ctx;

static int decide_txn(store_txn *t, void *arg)
{
    decide_ctx *c = arg;
    int rc = store_quarantine_review(t, c->qid, &c->before);
    if (rc) return rc;
    if (c->before.state != STORE_QSTATE_PENDING) return STORE_EINVAL;
    return c->accept ? store_quarantine_accept(t, c->qid, c->now, c->actor, &c->after)
                     : store_quarantine_reject(t, c->qid, c->now, c->actor, c->note, &c->after);
}

static int quarantine_decide(int argc, char **argv, bool accept)
{
    static const struct option opts[] = {{"as", required_argument, NULL, 'a'},
                                         {"note", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = accept ? "quarantine accept" : "quarantine reject";
    const char *as = NULL, *note = NULL;
    int c, xrc;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'a': as = optarg; break;
        case 'n':
            if (accept) return usage_err(cmd, "--note is for reject");
            note = optarg;
            break;
        case 'h':
            if (accept)
                printf("usage: doorstepctl quarantine accept QID [--as USER]\n"
                       "merges the held delta into its record (a new server seq; indexes, "
                       "feeds and\naggregates follow); you are recorded as the approver. "
                       "The entry is kept.\n");
            else
                printf("usage: doorstepctl quarantine reject QID [--note TEXT] [--as USER]\n"
                       "marks the entry rejected; it is kept (nothing is ever deleted) and "
                       "never merged.\n");
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != 1) return usage_err(cmd, "expected one quarantine entry id");
    decide_ctx dc = {.accept = accept, .note = note, .now = now_ms()};
    if ((xrc = parse_qid(cmd, argv[optind], &dc.qid))) return xrc;
    if (note && strlen(note) > STORE_QNOTE_MAX)
        return usage_err(cmd, "--note is longer than %d bytes", STORE_QNOTE_MAX);
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    dc.actor = actor;
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    int rc = run_rw(s, decide_txn, &dc);
    store_close(s);
    char when[40];
    if (rc == STORE_ENOTFOUND)
        return fail(cmd, "no quarantine entry %llu", (unsigned long long)dc.qid);
    if (rc == STORE_EINVAL && dc.before.state && dc.before.state != STORE_QSTATE_PENDING)
        return fail(cmd, "entry %llu was already %s by %s at %s; a decision is final",
                    (unsigned long long)dc.qid, store_qstate_name(dc.before.state),
                    dc.before.actor, fmt_time(dc.before.decided_ms, when));
    if (rc == STORE_EINVAL) return fail(cmd, "invalid note or actor");
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    if (accept)
        printf("accepted quarantine entry %llu: merged as server seq %llu (approved by %s)\n",
               (unsigned long long)dc.qid, (unsigned long long)dc.after.sseq, actor);
    else
        printf("rejected quarantine entry %llu (kept, never merged; by %s)\n",
               (unsigned long long)dc.qid, actor);
    return 0;
}

/* ---- staff ------------------------------------------------------------------------------- */

static bool parse_role(const char *s, uint8_t *role)
{
    if (!strcmp(s, "staff") || !strcmp(s, "station")) *role = STORE_ROLE_STAFF;
    else if (!strcmp(s, "admin")) *role = STORE_ROLE_ADMIN;
    else return false;
    return true;
}

static const char *role_name(uint8_t r) { return r == STORE_ROLE_ADMIN ? "admin" : "staff"; }

typedef struct staff_ctx {
    const char *user, *display, *actor;
    char *pw;
    uint8_t role;
    bool disable;
    uint64_t now;
    int op;                   /* 'a' add, 'p' passwd, 'r' role, 'd' disable/enable */
    store_staff before;
    bool last_admin;          /* refused: would leave no enabled admin */
} staff_ctx;

static int count_admins(const store_staff *st, void *arg)
{
    if (st->role == STORE_ROLE_ADMIN && !st->disabled) (*(size_t *)arg)++;
    return 0;
}

static int staff_txn(store_txn *t, void *arg)
{
    staff_ctx *c = arg;
    char detail[256];
    const char *action;
    int rc;
    if (c->op != 'a') {
        if ((rc = store_staff_get(t, c->user, &c->before))) return rc;
        bool loses_admin = c->before.role == STORE_ROLE_ADMIN && !c->before.disabled &&
                           ((c->op == 'r' && c->role != STORE_ROLE_ADMIN) ||
                            (c->op == 'd' && c->disable));
        if (loses_admin) {
            size_t admins = 0;
            if ((rc = store_staff_list(t, count_admins, &admins))) return rc;
            if (admins <= 1) {
                c->last_admin = true;
                return STORE_EINVAL;
            }
        }
    }
    switch (c->op) {
    case 'a':
        rc = store_staff_create(t, c->user, c->display, c->role, c->pw, c->now, NULL);
        snprintf(detail, sizeof detail, "staff account %s created, role %s", c->user,
                 role_name(c->role));
        action = "staff.add";
        break;
    case 'p':
        rc = store_staff_set_password(t, c->user, c->pw, c->now, NULL);
        snprintf(detail, sizeof detail, "password of %s changed", c->user);
        action = "staff.passwd";
        break;
    case 'r':
        rc = store_staff_set_role(t, c->user, c->role);
        snprintf(detail, sizeof detail, "role of %s: %s -> %s", c->user,
                 role_name(c->before.role), role_name(c->role));
        action = "staff.role";
        break;
    default:
        rc = store_staff_set_disabled(t, c->user, c->disable);
        snprintf(detail, sizeof detail, "account %s %s", c->user,
                 c->disable ? "disabled" : "enabled");
        action = c->disable ? "staff.disable" : "staff.enable";
        break;
    }
    if (rc) return rc;
    return store_audit_append(t, c->now, c->actor, action, detail, NULL);
}

static int staff_run(const char *cmd, staff_ctx *c)
{
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    c->now = now_ms();
    int rc = run_rw(s, staff_txn, c);
    store_close(s);
    if (c->pw) sodium_memzero(c->pw, strlen(c->pw));
    if (rc == STORE_ENOTFOUND) return fail(cmd, "no staff account %s", c->user);
    if (rc == STORE_EEXIST) return fail(cmd, "staff account %s already exists", c->user);
    if (c->last_admin)
        return fail(cmd, "%s is the last enabled admin; add or enable another admin first",
                    c->user);
    if (rc == STORE_EINVAL && c->op == 'a')
        return fail(cmd, "invalid account: usernames are 1 to %d characters of a-z 0-9 _ . -; "
                         "display names 1 to %d bytes",
                    STORE_USER_MAX, STORE_DISPLAY_MAX);
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    return 0;
}

static int staff_add(int argc, char **argv)
{
    static const struct option opts[] = {{"role", required_argument, NULL, 'r'},
                                         {"display", required_argument, NULL, 'd'},
                                         {"password-stdin", no_argument, NULL, 'p'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "staff add";
    staff_ctx c = {.op = 'a'};
    const char *as = NULL;
    bool role_given = false, from_stdin = false;
    int opt;
    getopt_reset();
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'r':
            if (!parse_role(optarg, &c.role))
                return usage_err(cmd, "--role must be staff (or station) or admin");
            role_given = true;
            break;
        case 'd': c.display = optarg; break;
        case 'p': from_stdin = true; break;
        case 'a': as = optarg; break;
        case 'h':
            printf("usage: doorstepctl staff add USERNAME --role staff|admin [--display NAME] "
                   "[--password-stdin] [--as USER]\n"
                   "a dashboard account (station staff, or admin).  The password comes from\n"
                   "DOORSTEP_PASSWORD, else one line of standard input with --password-stdin,\n"
                   "else it is asked twice at the terminal.  At least %d bytes.\n",
                   STORE_PASSWORD_MIN);
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != 1) return usage_err(cmd, "expected one USERNAME");
    if (!role_given) return usage_err(cmd, "--role staff|admin is required");
    c.user = argv[optind];
    if (!c.display) c.display = c.user;
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    c.actor = actor;
    char pw[STORE_PASSWORD_MAX + 2];
    int xrc = get_password(cmd, c.user, from_stdin, pw, sizeof pw);
    if (xrc) return xrc;
    c.pw = pw;
    xrc = staff_run(cmd, &c);
    sodium_memzero(pw, sizeof pw);
    if (!xrc) printf("staff account %s created (%s)\n", c.user, role_name(c.role));
    return xrc;
}

static int staff_passwd(int argc, char **argv)
{
    static const struct option opts[] = {{"password-stdin", no_argument, NULL, 'p'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "staff passwd";
    staff_ctx c = {.op = 'p'};
    const char *as = NULL;
    bool from_stdin = false;
    int opt;
    getopt_reset();
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'p': from_stdin = true; break;
        case 'a': as = optarg; break;
        case 'h':
            printf("usage: doorstepctl staff passwd USERNAME [--password-stdin] [--as USER]\n"
                   "sets a new password (as for staff add) and clears any lockout\n");
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != 1) return usage_err(cmd, "expected one USERNAME");
    c.user = argv[optind];
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    c.actor = actor;
    char pw[STORE_PASSWORD_MAX + 2];
    int xrc = get_password(cmd, c.user, from_stdin, pw, sizeof pw);
    if (xrc) return xrc;
    c.pw = pw;
    xrc = staff_run(cmd, &c);
    sodium_memzero(pw, sizeof pw);
    if (!xrc) printf("password of %s changed\n", c.user);
    return xrc;
}

/* staff role USERNAME ROLE, staff disable|enable USERNAME */
static int staff_simple(int argc, char **argv, int op, bool disable)
{
    static const struct option opts[] = {{"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = op == 'r' ? "staff role" : disable ? "staff disable" : "staff enable";
    staff_ctx c = {.op = op, .disable = disable};
    const char *as = NULL;
    int opt;
    getopt_reset();
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'a': as = optarg; break;
        case 'h':
            if (op == 'r')
                printf("usage: doorstepctl staff role USERNAME staff|admin [--as USER]\n");
            else
                printf("usage: doorstepctl staff %s USERNAME [--as USER]\n%s",
                       disable ? "disable" : "enable",
                       disable ? "the account can no longer log in; it is kept\n"
                               : "the account can log in again (failures and lock cleared)\n");
            return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != (op == 'r' ? 2 : 1))
        return usage_err(cmd, op == 'r' ? "expected USERNAME and ROLE" : "expected one USERNAME");
    c.user = argv[optind];
    if (op == 'r' && !parse_role(argv[optind + 1], &c.role))
        return usage_err(cmd, "the role must be staff (or station) or admin");
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    c.actor = actor;
    int xrc = staff_run(cmd, &c);
    if (xrc) return xrc;
    if (op == 'r') printf("%s is now %s\n", c.user, role_name(c.role));
    else printf("account %s %s\n", c.user, disable ? "disabled" : "enabled");
    return 0;
}

static int list_staff(const store_staff *st, void *arg)
{
    list_ctx *l = arg;
    char t1[40], status[64];
    uint64_t now = now_ms();
    l->n++;
    if (st->disabled) snprintf(status, sizeof status, "disabled");
    else if (now < st->locked_until_ms) snprintf(status, sizeof status, "locked");
    else snprintf(status, sizeof status, "active");
    if (l->arr) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I}", "username",
                              st->username, "display", st->display, "role", role_name(st->role),
                              "status", status, "failures", (json_int_t)st->failures,
                              "created_ms", (json_int_t)st->created_ms, "last_login_ms",
                              (json_int_t)st->last_login_ms, "pw_changed_ms",
                              (json_int_t)st->pw_changed_ms);
        return o ? json_array_append_new(l->arr, o) : CRDT_ENOMEM;
    }
    if (l->n == 1)
        printf("%-20s %-6s %-9s %-25s %s\n", "USERNAME", "ROLE", "STATUS", "LAST LOGIN",
               "DISPLAY");
    printf("%-20s %-6s %-9s %-25s %s\n", st->username, role_name(st->role), status,
           fmt_time(st->last_login_ms, t1), st->display);
    return 0;
}

static int walk_staff(store_txn *t, list_ctx *l, const void *arg)
{
    (void)arg;
    return store_staff_list(t, list_staff, l);
}

static int staff_list(int argc, char **argv)
{
    return list_cmd(argc, argv, "staff list",
                    "usage: doorstepctl staff list [--json]\n"
                    "every account: username, role, status (active, locked, disabled), last "
                    "login, display name\n",
                    walk_staff, "no staff accounts (add one: doorstepctl staff add --help)");
}

/* ---- audit ---------------------------------------------------------------------------------- */

static int list_audit(const store_audit *e, void *arg)
{
    list_ctx *l = arg;
    char when[40];
    char hash[65];
    sodium_bin2hex(hash, sizeof hash, e->hash, sizeof e->hash);
    l->n++;
    if (l->arr) {
        json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:s, s:s}", "aseq", (json_int_t)e->aseq,
                              "at_ms", (json_int_t)e->at_ms, "actor", e->actor, "action",
                              e->action, "detail", e->detail, "hash", hash);
        return o ? json_array_append_new(l->arr, o) : CRDT_ENOMEM;
    }
    hash[12] = 0; /* a prefix of the chain hash */
    printf("%-6llu %s  %s  %-22s %-22s %s\n", (unsigned long long)e->aseq,
           fmt_time(e->at_ms, when), hash, e->actor, e->action, e->detail);
    return 0;
}

/* The entries listed: those numbered after < aseq < before, the newest
 * `limit` of them, newest first. */
typedef struct audit_range {
    uint64_t after, before;
    size_t limit;
} audit_range;

#define AUDIT_STOP 1            /* a callback's "past the range" (store codes are < 0) */
#define AUDIT_CHUNK 256         /* entries copied at a time while listing backwards */

typedef struct audit_ids {
    uint64_t *v;                /* the entry numbers in range, oldest first */
    size_t n, cap;
    uint64_t before;
} audit_ids;

static int collect_aseq(const store_audit *e, void *arg)
{
    audit_ids *ids = arg;
    if (e->aseq >= ids->before) return AUDIT_STOP;
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 1024;
        uint64_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return CRDT_ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = e->aseq;
    return 0;
}

typedef struct audit_chunk {
    store_audit *e;             /* AUDIT_CHUNK entries, copied (store_audit_read lends them) */
    size_t n;
} audit_chunk;

static int copy_audit(const store_audit *e, void *arg)
{
    audit_chunk *ch = arg;
    if (ch->n == AUDIT_CHUNK) return AUDIT_STOP;
    ch->e[ch->n++] = *e;
    return 0;
}

/* Newest first.  store_audit_read walks forwards only, so a first pass
 * collects the numbers of the entries in range; then the newest `limit`
 * are read in chunks from the newest end backwards, each chunk printed in
 * reverse.  Both passes run in the caller's one read transaction, so they
 * see the same log; memory is 8 bytes per entry plus one chunk. */
static int walk_audit(store_txn *t, list_ctx *l, const void *arg)
{
    const audit_range *r = arg;
    audit_ids ids = {.before = r->before};
    audit_chunk ch = {NULL, 0};
    uint64_t next;
    int rc = store_audit_read(t, r->after, SIZE_MAX, collect_aseq, &ids, &next);
    if (rc == AUDIT_STOP) rc = 0;
    size_t lo = ids.n > r->limit ? ids.n - r->limit : 0;
    if (!rc && ids.n > lo && !(ch.e = malloc(AUDIT_CHUNK * sizeof *ch.e))) rc = CRDT_ENOMEM;
    for (size_t end = ids.n; !rc && end > lo;) {
        size_t start = end - lo > AUDIT_CHUNK ? end - AUDIT_CHUNK : lo;
        ch.n = 0;
        /* Entries ids.v[start..end): those after the one before start. */
        rc = store_audit_read(t, start ? ids.v[start - 1] : r->after, end - start, copy_audit,
                              &ch, &next);
        if (!rc && ch.n != end - start) rc = STORE_ECORRUPT; /* the log changed under us? */
        for (size_t i = ch.n; !rc && i > 0; i--) rc = list_audit(&ch.e[i - 1], l);
        end = start;
    }
    if (ch.e) {
        sodium_memzero(ch.e, AUDIT_CHUNK * sizeof *ch.e); /* as store_audit_read does */
        free(ch.e);
    }
    free(ids.v);
    return rc;
}

static int cmd_audit(int argc, char **argv)
{
    static const struct option opts[] = {{"after", required_argument, NULL, 'A'},
                                         {"before", required_argument, NULL, 'B'},
                                         {"limit", required_argument, NULL, 'l'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "audit list";
    uint64_t after = 0, before = UINT64_MAX, limit = UINT64_MAX;
    bool json = false;
    int c;
    static const char help[] = "usage: doorstepctl audit list [--after N] [--before N] [--limit N] "
                               "[--json]\n"
                               "       doorstepctl audit verify\n"
                               "list: the append-only audit log, newest first: number, time "
                               "(station time, see --tz),\nchain hash (prefix), actor, action, "
                               "detail.  --after N: only entries after entry N;\n--before N: "
                               "only entries before entry N; --limit N: only the newest N of "
                               "those.\n"
                               "verify: check the hash chain (each entry names the hash of the "
                               "one before; the head is kept apart): a removed, edited or "
                               "reordered entry is reported\n";
    if (argc < 2) return usage_err("audit", "expected a subcommand: list or verify");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "verify")) {
        if (argc != 2) return usage_err("audit verify", "unexpected argument %s", argv[2]);
        store *s = open_store();
        if (!s) return EXIT_FAIL;
        store_txn *t;
        uint64_t bad = 0;
        int rc = store_begin(s, STORE_RDONLY, &t);
        if (!rc) {
            rc = store_audit_verify(t, &bad);
            store_abort(t);
        }
        store_close(s);
        if (rc == STORE_OK) {
            printf("audit verify: ok (the hash chain is intact)\n");
            return 0;
        }
        if (rc == STORE_EVERIFY) {
            if (bad) printf("audit verify: entry %llu does not chain to the entry before it\n",
                            (unsigned long long)bad);
            else printf("audit verify: the chain's head does not match the last entry\n");
            return EXIT_FAIL;
        }
        return fail("audit verify", "%s", store_strerror(rc));
    }
    if (strcmp(argv[1], "list"))
        return usage_err("audit", "unknown subcommand \"%s\"; use list or verify", argv[1]);
    argc--;
    argv++;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'A':
            if (!parse_u64(optarg, UINT64_MAX - 1, &after))
                return usage_err(cmd, "--after must be an entry number");
            break;
        case 'B':
            if (!parse_u64(optarg, UINT64_MAX, &before) || !before)
                return usage_err(cmd, "--before must be an entry number");
            break;
        case 'l':
            if (!parse_u64(optarg, UINT64_MAX, &limit) || !limit)
                return usage_err(cmd, "--limit must be a positive number");
            break;
        case 'j': json = true; break;
        case 'h': fputs(help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    audit_range r = {after, before, limit > SIZE_MAX ? SIZE_MAX : (size_t)limit};
    return list_run(cmd, json, walk_audit, &r,
                    after || before != UINT64_MAX ? "no audit entries in that range"
                                                  : "the audit log is empty");
}

/* ---- CSV ledgers: import and export (issue #6) ------------------------------------------------
 *
 * The importer is a library (ledger.h: decode, parse, phase one, phase
 * two); here are the command's options, the store, the transaction and
 * what is printed.  Export writes the columns of ledger_cols.
 */

/* A file name fit for the audit log: UTF-8, at most 400 bytes. */
static void shown_name(const char *path, char *out, size_t cap)
{
    size_t n = strlen(path);
    if (!crdt_utf8_valid((const uint8_t *)path, n)) {
        snprintf(out, cap, "(a file name that is not UTF-8)");
        return;
    }
    if (n > 400) {
        path += n - 400;
        while ((*path & 0xc0) == 0x80) path++;
        snprintf(out, cap, "...%s", path);
        return;
    }
    snprintf(out, cap, "%s", path);
}

static const char import_help[] =
    "usage: doorstepctl import --csv FILE [--encoding utf-8|gbk] [--dry-run] [--as USER]\n"
    "imports a household and person ledger, one row per person (docs/ADMIN.md):\n"
    "  headers 户编号 所属社区 网格 住址 姓名 公民身份号码 性别 出生日期 联系电话 与户主关系\n"
    "  or household_id community grid address name id_number gender birth_date phone relation;\n"
    "  optional: person_id (人员编号), insurance_type, payment (campaign year), tags, life_status,\n"
    "  note.  UTF-8 (with or without BOM) or GBK; auto-detected unless --encoding is given.\n"
    "every row is checked first; any bad row is reported with its line number and nothing is\n"
    "written (exit 1).  Otherwise all rows are written in one transaction as deltas signed by\n"
    "the server (device 0).  --dry-run checks and counts, writes nothing.\n";

static int import_txn(store_txn *t, void *arg) { return ledger_import_txn(t, arg); }

/* "6 rows, 3 households (3 new), 6 persons (6 new); 9 deltas (40 ops)"
 * (one row per person; "would write" before the deltas of a dry run). */
static void print_import_counts(const ledger_import *li, bool dry)
{
    printf("%zu %s, %zu %s (%zu new), %zu %s (%zu new); %s%zu %s (%zu %s)", li->n_rows,
           plural(li->n_rows, "row", "rows"), li->n_hh,
           plural(li->n_hh, "household", "households"), li->hh_new, li->n_rows,
           plural(li->n_rows, "person", "persons"), li->persons_new, dry ? "would write " : "",
           li->deltas, plural(li->deltas, "delta", "deltas"), li->ops,
           plural(li->ops, "op", "ops"));
}

static int cmd_import(int argc, char **argv)
{
    static const struct option opts[] = {{"csv", required_argument, NULL, 'c'},
                                         {"encoding", required_argument, NULL, 'e'},
                                         {"dry-run", no_argument, NULL, 'n'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "import", *path = NULL, *enc = NULL, *as = NULL;
    bool dry = false;
    int opt;
    getopt_reset();
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'e':
            if (!strcasecmp(optarg, "utf-8") || !strcasecmp(optarg, "utf8")) enc = "utf-8";
            else if (!strcasecmp(optarg, "gbk") || !strcasecmp(optarg, "gb18030") ||
                     !strcasecmp(optarg, "gb2312"))
                enc = "gbk";
            else return usage_err(cmd, "--encoding must be utf-8 or gbk");
            break;
        case 'n': dry = true; break;
        case 'a': as = optarg; break;
        case 'h': fputs(import_help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    if (!path) return usage_err(cmd, "--csv FILE is required");
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    char *text = NULL, err[1024];
    size_t len = 0;
    const char *used = NULL;
    if (ledger_read(path, enc, &text, &len, &used, err, sizeof err)) return fail(cmd, "%s", err);
    ledger_doc doc = {0};
    size_t bad_line;
    const char *why;
    int rc = ledger_parse(text, len, &doc, &bad_line, &why);
    free(text);
    if (rc)
        return bad_line ? fail(cmd, "%s:%zu: %s; nothing imported", path, bad_line, why)
                        : fail(cmd, "%s", why);
    if (doc.n < 2) {
        ledger_doc_free(&doc);
        return fail(cmd, "%s: no rows (a header line and one row per person are expected)",
                    path);
    }
    store *s = open_store();
    if (!s) {
        ledger_doc_free(&doc);
        return EXIT_FAIL;
    }
    char shown[512];
    shown_name(path, shown, sizeof shown);
    ledger_import li;
    memset(&li, 0, sizeof li);
    li.path = path;
    li.shown = shown;
    li.enc = used;
    li.actor = actor;
    li.sc = store_schema(s);
    li.year = store_campaign_year(s);
    li.dry_run = dry;
    li.now_ms = now_ms();
    rc = ledger_check(&li, &doc);
    for (size_t i = 0; i < li.warnings.n; i++)
        fprintf(stderr, "doorstepctl %s: %s\n", cmd, li.warnings.v[i]);
    if (!rc && !li.problems.n) rc = run_rw(s, import_txn, &li);
    store_close(s);
    int xrc = 0;
    if (rc < 0) {
        xrc = fail(cmd, "%s", ledger_strerror(rc));
    } else if (li.problems.n) {
        /* In line order (the checks run in passes); count the lines. */
        size_t lines = ledger_msgs_sort(&li.problems);
        for (size_t i = 0; i < li.problems.n; i++) fprintf(stderr, "%s\n", li.problems.v[i]);
        xrc = fail(cmd, "%s: %zu %s on %zu %s; nothing imported", path, li.problems.n,
                   plural(li.problems.n, "problem", "problems"), lines,
                   plural(lines, "line", "lines"));
    } else if (dry) {
        printf("dry run: %s (%s): ", path, used);
        print_import_counts(&li, true);
        printf("; nothing written\n");
    } else {
        printf("imported %s (%s): ", path, used);
        print_import_counts(&li, false);
        printf(" signed by the server");
        if (li.deltas)
            printf(", device 0 seq %llu..%llu", (unsigned long long)li.first_seq,
                   (unsigned long long)li.last_seq);
        printf("; audit entry %llu\n", (unsigned long long)li.audit_seq);
    }
    ledger_import_free(&li);
    return xrc;
}

/* ---- export ------------------------------------------------------------------------------- */

typedef struct export_ctx {
    const char *cmd;
    store_txn *t;
    store *s;
    FILE *f;
    uint32_t year;
    bool zh;                           /* Chinese column names (--headers zh) */
    size_t persons, conflicts;
    char cur_hh[CRDT_RECID_MAX + 1];   /* household cache */
    crdt_record *hh;
    crdt_blob year_key;                /* payment's key: the campaign year */
    uint32_t cur_dev;                  /* device cache (UINT32_MAX: none) */
    uint32_t cur_relay;                /* ... and its relay (a district) */
    char volunteer[STORE_VOLUNTEER_MAX + 1];
} export_ctx;

/* The live elements of an enum set field in the schema's order, joined by
 * ";" (so the export does not depend on how the set stores them). */
static bool set_text(const crdt_field *f, const crdt_fspec *fs, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = 0;
    for (uint32_t e = 0; e < fs->v.n_enum; e++) {
        const char *name = fs->v.enum_values[e];
        size_t nl = strlen(name);
        bool in = false;
        for (uint32_t i = 0; i < f->n && !in; i++) {
            crdt_val v;
            in = !crdt_val_parse(f->e[i].v, &v) && v.t == CRDT_V_STR && v.len == nl &&
                 !memcmp(v.s, name, nl);
        }
        if (!in) continue;
        int w = snprintf(out + k, cap - k, "%s%s", k ? ";" : "", name);
        if (w < 0 || (size_t)w >= cap - k) return false;
        k += (size_t)w;
    }
    return true;
}

/* The live values of a field instance as text: distinct values joined by
 * " | ", set elements by ";".  *conflict: crdt_field_conflict, the
 * dashboard's test, so concurrent writes of one value (two phones that both
 * wrote 代缴) are one value and no conflict. */
static bool field_text(const crdt_field *f, char *out, size_t cap, bool *conflict)
{
    size_t k = 0, distinct = 0;
    out[0] = 0;
    *conflict = false;
    if (!f) return true;
    for (uint32_t i = 0; i < f->n; i++) {
        bool dup = false;
        for (uint32_t j = 0; j < i && !dup; j++) dup = !crdt_blob_cmp(f->e[j].v, f->e[i].v);
        if (dup) continue;
        crdt_val v;
        char one[4200];                /* text fields hold at most 4096 bytes */
        if (crdt_val_parse(f->e[i].v, &v)) continue;
        if (v.t == CRDT_V_STR) snprintf(one, sizeof one, "%.*s", (int)v.len, v.s);
        else if (v.t == CRDT_V_INT) snprintf(one, sizeof one, "%lld", (long long)v.i);
        else if (v.t == CRDT_V_BOOL) snprintf(one, sizeof one, "%s", v.b ? "true" : "false");
        else continue;
        const char *sep = !distinct ? "" : f->type == CRDT_F_SET ? ";" : " | ";
        int w = snprintf(out + k, cap - k, "%s%s", sep, one);
        if (w < 0 || (size_t)w >= cap - k) return false;
        k += (size_t)w;
        distinct++;
    }
    *conflict = crdt_field_conflict(f);
    return true;
}

/* The latest stamp of any live value of r (the tombstone too). */
static crdt_stamp last_change(const crdt_record *r)
{
    crdt_stamp best = {0, {0, 0}};
    for (uint32_t i = 0; i < r->n_fields; i++)
        for (uint32_t k = 0; k < r->fields[i].n; k++)
            if (crdt_stamp_cmp(r->fields[i].e[k].st, best) > 0) best = r->fields[i].e[k].st;
    for (uint32_t k = 0; k < r->tomb.n; k++)
        if (crdt_stamp_cmp(r->tomb.e[k].st, best) > 0) best = r->tomb.e[k].st;
    return best;
}

/* HLC milliseconds as ISO 8601 UTC ("2026-11-24T01:32:02.123Z"). */
static void iso_time(uint64_t ms, char out[32])
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    if (!ms || !gmtime_r(&sec, &tm)) {
        out[0] = 0;
        return;
    }
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ms % 1000));
}

static int export_person(const crdt_record *p, void *arg)
{
    export_ctx *x = arg;
    if (crdt_record_deleted(p)) return 0;
    const crdt_blob nokey = {NULL, 0};
    char hid[CRDT_RECID_MAX + 1] = "";
    bool conflict;
    char buf[16384];
    const crdt_field *hf = crdt_record_field(p, "household", nokey);
    if (!field_text(hf, buf, sizeof buf, &conflict)) return CRDT_ENOMEM;
    if (!conflict && strlen(buf) < sizeof hid) memcpy(hid, buf, strlen(buf) + 1);
    if (strcmp(hid, x->cur_hh)) {
        crdt_record_free(x->hh);
        x->hh = NULL;
        snprintf(x->cur_hh, sizeof x->cur_hh, "%s", hid);
        if (*hid) {
            int rc = store_get_record(x->t, "household", hid, &x->hh);
            if (rc && rc != STORE_ENOTFOUND) return rc;
        }
    }
    char conflicts[512] = "";
    for (int col = 0; col < LEDGER_NCOLS; col++) {
        const ledger_col *lc = &ledger_cols[col];
        const crdt_field *f = NULL;
        buf[0] = 0;
        conflict = false;
        if (col == LEDGER_COL_PID) {
            snprintf(buf, sizeof buf, "%s", p->id);
        } else if (col == LEDGER_COL_HH) {
            snprintf(buf, sizeof buf, "%s", hid);
        } else if (lc->kind == 'h') {
            f = x->hh ? crdt_record_field(x->hh, lc->field, nokey) : NULL;
        } else if (lc->kind == 'p') {
            f = crdt_record_field(p, lc->field, col == LEDGER_COL_PAY ? x->year_key : nokey);
        } else if (col == LEDGER_COL_CONFLICT) {
            snprintf(buf, sizeof buf, "%s", conflicts);
            if (*conflicts) x->conflicts++;
        } else if (col == LEDGER_COL_BY || col == LEDGER_COL_DEV || col == LEDGER_COL_AT) {
            crdt_stamp st = last_change(p);
            if (col == LEDGER_COL_AT) {
                char iso[32];
                iso_time(CRDT_HLC_MS(st.hlc), iso);
                snprintf(buf, sizeof buf, "%s", iso);
            } else if (col == LEDGER_COL_DEV) {
                snprintf(buf, sizeof buf, "%u", (unsigned)st.dot.dev);
            } else if (!st.dot.seq) {
                buf[0] = 0;
            } else if (st.dot.dev == 0) {
                snprintf(buf, sizeof buf, "server");
            } else {
                /* At a district the device is the street's (relay.c): its
                 * chain device here has the name ("东城街道 #7"). */
                uint32_t relay = 0, local = st.dot.dev;
                int rc = store_relay_of_household(x->t, hid, &relay);
                if (rc) return rc;
                if (relay && store_relay_map(x->t, relay, st.dot.dev, NULL, false, &local))
                    local = 0;
                if (local != x->cur_dev || relay != x->cur_relay) {
                    store_device d;
                    rc = local ? store_device_get(x->t, local, &d) : STORE_ENOTFOUND;
                    if (rc && rc != STORE_ENOTFOUND) return rc;
                    snprintf(x->volunteer, sizeof x->volunteer, "%s", rc ? "" : d.volunteer);
                    x->cur_dev = local;
                    x->cur_relay = relay;
                }
                snprintf(buf, sizeof buf, "%s", x->volunteer);
            }
        }
        const crdt_fspec *fs = NULL;
        if (f && f->type == CRDT_F_SET) {
            const crdt_kspec *k = crdt_schema_kind(store_schema(x->s), "person", 6);
            fs = k ? crdt_schema_field(k, f->name, strlen(f->name)) : NULL;
        }
        if (fs && fs->v.vtype == CRDT_VT_ENUM) {
            if (!set_text(f, fs, buf, sizeof buf)) return CRDT_ENOMEM;
        } else if (f && !field_text(f, buf, sizeof buf, &conflict)) {
            return CRDT_ENOMEM;
        }
        if (conflict) { /* named as in the header, so a Chinese ledger stays Chinese */
            size_t n = strlen(conflicts);
            snprintf(conflicts + n, sizeof conflicts - n, "%s%s", n ? ";" : "",
                     x->zh ? lc->zh : lc->en);
        }
        ledger_csv_put(x->f, buf, col == 0);
    }
    fputs("\r\n", x->f);
    x->persons++;
    return ferror(x->f) ? STORE_EIO : 0;
}

static const char export_help[] =
    "usage: doorstepctl export --csv FILE [--headers en|zh] [--as USER]\n"
    "writes the 一人一档 ledger: one row per person (deleted records left out), UTF-8 with a\n"
    "BOM, CRLF line ends, created 0600 (it holds ID numbers).  Columns: person_id household_id\n"
    "community grid address name id_number gender birth_date phone relation insurance_type\n"
    "payment (for the campaign year) tags (;-separated) life_status note conflict (the columns\n"
    "with conflicting values, written \"a | b\", named as in the header) last_changed_by\n"
    "(volunteer, or server) last_changed_device last_changed_at (ISO 8601 UTC, from the\n"
    "HLC).  FILE - is standard output.  --headers zh writes the Chinese column names.\n"
    "Audited as export.csv.\n";

static int export_txn(store_txn *t, void *arg)
{
    export_ctx *x = arg;
    char after[CRDT_RECID_MAX + 1] = "", next[CRDT_RECID_MAX + 1];
    x->t = t;
    for (;;) {
        next[0] = 0;
        int rc = store_records_page(t, "person", after, 500, export_person, x, next);
        if (rc) return rc;
        if (!next[0] || !strcmp(next, after)) return 0;
        snprintf(after, sizeof after, "%s", next);
    }
}

typedef struct audit_ctx {
    const char *actor, *action, *detail;
    uint64_t now;
} audit_ctx;

static int audit_only_txn(store_txn *t, void *arg)
{
    const audit_ctx *a = arg;
    return store_audit_append(t, a->now, a->actor, a->action, a->detail, NULL);
}

static int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {{"csv", required_argument, NULL, 'c'},
                                         {"headers", required_argument, NULL, 'H'},
                                         {"as", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "export", *path = NULL, *as = NULL;
    bool zh = false;
    int opt;
    getopt_reset();
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'H':
            if (!strcmp(optarg, "zh")) zh = true;
            else if (strcmp(optarg, "en")) return usage_err(cmd, "--headers must be en or zh");
            break;
        case 'a': as = optarg; break;
        case 'h': fputs(export_help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    if (!path) return usage_err(cmd, "--csv FILE is required (- for standard output)");
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    if (!make_actor(cmd, as, actor)) return EXIT_USAGE;
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    bool to_stdout = !strcmp(path, "-");
    char *tmp = NULL;
    FILE *f = stdout;
    if (!to_stdout) {
        size_t n = strlen(path) + 16;
        tmp = malloc(n);
        if (!tmp) {
            store_close(s);
            return fail(cmd, "out of memory");
        }
        snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || !(f = fdopen(fd, "w"))) {
            int e = errno;
            if (fd >= 0) close(fd);
            store_close(s);
            int xr = fail(cmd, "cannot create %s: %s", tmp, strerror(e));
            free(tmp);
            return xr;
        }
    }
    export_ctx x;
    memset(&x, 0, sizeof x);
    x.cmd = cmd;
    x.s = s;
    x.f = f;
    x.year = store_campaign_year(s);
    x.zh = zh;
    x.cur_dev = UINT32_MAX;
    crdt_buf yk = {0};
    if (crdt_val_put_int(&yk, x.year)) {
        store_close(s);
        return fail(cmd, "out of memory");
    }
    x.year_key = (crdt_blob){yk.p, (uint32_t)yk.n};
    fputs("\xef\xbb\xbf", f);
    for (int col = 0; col < LEDGER_NCOLS; col++)
        ledger_csv_put(f, zh ? ledger_cols[col].zh : ledger_cols[col].en, col == 0);
    fputs("\r\n", f);
    /* One read transaction: a consistent snapshot of every person. */
    store_txn *t;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (!rc) {
        rc = export_txn(t, &x);
        store_abort(t);
    }
    crdt_record_free(x.hh);
    crdt_buf_free(&yk);
    bool werr = fflush(f) != 0 || ferror(f);
    if (!to_stdout) {
        if (!werr) werr = fsync(fileno(f)) != 0;
        werr |= fclose(f) != 0;
    }
    if (!rc && werr) rc = STORE_EIO;
    /* The audit entry before the file takes its name: an export that is not
     * in the audit log never appears. */
    if (!rc) {
        char shown[512], detail[STORE_AUDIT_DETAIL_MAX + 1];
        shown_name(to_stdout ? "(standard output)" : path, shown, sizeof shown);
        snprintf(detail, sizeof detail,
                 "file %s: %zu %s (%zu with conflicts), campaign year %u", shown, x.persons,
                 plural(x.persons, "person", "persons"), x.conflicts, x.year);
        audit_ctx ac = {actor, "export.csv", detail, now_ms()};
        rc = run_rw(s, audit_only_txn, &ac);
    }
    store_close(s);
    if (rc) {
        if (!to_stdout) unlink(tmp);
        free(tmp);
        return fail(cmd, "%s%s; nothing exported", store_strerror(rc),
                    werr ? " (writing the file)" : "");
    }
    if (!to_stdout && rename(tmp, path) != 0) {
        int xr = fail(cmd, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return xr;
    }
    free(tmp);
    fprintf(to_stdout ? stderr : stdout, "exported %zu %s (%zu with conflicts) to %s\n",
            x.persons, plural(x.persons, "person", "persons"), x.conflicts,
            to_stdout ? "standard output" : path);
    return 0;
}

/* ---- dispatch ------------------------------------------------------------------------------- */

typedef struct subcmd {
    const char *name;
    int (*fn)(int argc, char **argv);
} subcmd;

static int quarantine_accept(int argc, char **argv) { return quarantine_decide(argc, argv, true); }
static int quarantine_reject(int argc, char **argv) { return quarantine_decide(argc, argv, false); }
static int staff_role(int argc, char **argv) { return staff_simple(argc, argv, 'r', false); }
static int staff_disable(int argc, char **argv) { return staff_simple(argc, argv, 'd', true); }
static int staff_enable(int argc, char **argv) { return staff_simple(argc, argv, 'd', false); }

static const subcmd device_cmds[] = {
    {"enroll", device_enroll}, {"list", device_list},     {"show", device_show},
    {"scope", device_scope},   {"rotate", device_rotate}, {"revoke", device_revoke},
    {"tokens", device_tokens}, {NULL, NULL}};
static const subcmd quarantine_cmds[] = {{"list", quarantine_list},
                                         {"show", quarantine_show},
                                         {"accept", quarantine_accept},
                                         {"reject", quarantine_reject},
                                         {NULL, NULL}};
static const subcmd staff_cmds[] = {{"add", staff_add},         {"list", staff_list},
                                    {"passwd", staff_passwd},   {"role", staff_role},
                                    {"disable", staff_disable}, {"enable", staff_enable},
                                    {NULL, NULL}};


/* ---- upstream: this server as a relay of its district (issue 16) ---------------------- */

static const char upstream_enroll_help[] =
    "usage: doorstepctl upstream enroll URL TOKEN [--dir D]\n"
    "enrolls this (street) server at its district server URL (ws://HOST:PORT/sync) with a\n"
    "relay token the district made (`doorstepctl device enroll --relay`).  The relay's key is\n"
    "made here and never leaves D (default: DATA.upstream beside the data directory); the\n"
    "district's server key is pinned.  Then run doorstepd with --upstream URL.\n";

static const char upstream_status_help[] =
    "usage: doorstepctl upstream status [--dir D] [--json]\n"
    "how far the relay to the district got: the server seq acked by the district (the\n"
    "cursor), the last server seq here, and the envelopes still to send; the same for the\n"
    "admin records (this server's audit entries about devices and the quarantine).\n";

/* --dir D, or the default beside the data directory, into out. */
static void upstream_dir(const char *dir, char *out, size_t n)
{
    if (dir) snprintf(out, n, "%s", dir);
    else snprintf(out, n, "%s.upstream", data_dir);
}

static int upstream_enroll(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, 'D'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "upstream enroll", *dir = NULL;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'D': dir = optarg; break;
        case 'h': fputs(upstream_enroll_help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (argc - optind != 2) return usage_err(cmd, "expected URL and TOKEN");
    const char *url = argv[optind], *token = argv[optind + 1];
    if (strncmp(url, "ws://", 5)) return usage_err(cmd, "URL must be ws://HOST:PORT[/sync]");
    char d[1024], schema[1100], err[256];
    upstream_dir(dir, d, sizeof d);
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    /* The device library checks deltas with a schema file: this store's. */
    if (mkdir(d, 0700) && errno != EEXIST) {
        store_close(s);
        return fail(cmd, "cannot create %s: %s", d, strerror(errno));
    }
    snprintf(schema, sizeof schema, "%s/schema.json", d);
    size_t sn = 0;
    const uint8_t *sj = store_schema_json(s, &sn);
    FILE *f = fopen(schema, "w");
    bool ok = f && fwrite(sj, 1, sn, f) == sn;
    if (f && fclose(f)) ok = false;
    store_close(s);
    if (!ok) return fail(cmd, "cannot write %s: %s", schema, strerror(errno));
    dsd *h = NULL;
    if (dsd_global_init()) return fail(cmd, "the device library failed to initialise");
    if (dsd_open(d, schema, &h, err, sizeof err)) return fail(cmd, "%s", err);
    int rc = dsd_enroll(h, url, token);
    if (rc) {
        int x = fail(cmd, "%s (code %d)", dsd_errmsg(h), rc);
        dsd_close(h);
        return x;
    }
    dsd_status st;
    dsd_status_get(h, &st);
    dsd_close(h);
    printf("enrolled at %s as relay device %u (identity in %s)\n", url, st.dev, d);
    printf("now run: doorstepd --data %s --upstream %s%s%s\n", data_dir, url,
           dir ? " --upstream-dir " : "", dir ? dir : "");
    return 0;
}

/* Audit entries the relay sends up (admin records: upstream.c). */
static int count_admin(const store_audit *e, void *arg)
{
    if (!strncmp(e->action, "device.", 7) || !strncmp(e->action, "quarantine.", 11))
        (*(uint64_t *)arg)++;
    return 0;
}

static int upstream_status(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, 'D'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *cmd = "upstream status", *dir = NULL;
    bool json = false;
    int c;
    getopt_reset();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'D': dir = optarg; break;
        case 'j': json = true; break;
        case 'h': fputs(upstream_status_help, stdout); return 0;
        default: return usage_err(cmd, "bad option");
        }
    }
    if (optind < argc) return usage_err(cmd, "unexpected argument %s", argv[optind]);
    char d[1024];
    struct stat sb;
    upstream_dir(dir, d, sizeof d);
    bool enrolled = stat(d, &sb) == 0 && S_ISDIR(sb.st_mode);
    store *s = open_store();
    if (!s) return EXIT_FAIL;
    store_txn *t = NULL;
    uint64_t cur = 0, last = 0, acur = 0, abehind = 0, anext = 0;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (!rc) rc = store_upstream_cursor(t, &cur);
    if (!rc) rc = store_last_sseq(t, &last);
    if (!rc) rc = store_upstream_admin_cursor(t, &acur);
    if (!rc) rc = store_audit_read(t, acur, SIZE_MAX, count_admin, &abehind, &anext);
    if (t) store_abort(t);
    store_close(s);
    if (rc) return fail(cmd, "%s", store_strerror(rc));
    uint64_t behind = last > cur ? last - cur : 0;
    if (json) {
        json_t *j = json_pack("{s:b, s:s, s:I, s:I, s:I, s:I, s:I}", "enrolled", enrolled, "dir",
                              d, "cursor", (json_int_t)cur, "last", (json_int_t)last, "behind",
                              (json_int_t)behind, "admin_cursor", (json_int_t)acur,
                              "admin_behind", (json_int_t)abehind);
        if (!j) return fail(cmd, "out of memory");
        char *txt = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        if (!txt) return fail(cmd, "out of memory");
        puts(txt);
        free(txt);
        return 0;
    }
    printf("relay identity: %s%s\n", d, enrolled ? "" : " (not enrolled)");
    printf("acked by the district up to server seq %llu of %llu: %llu to send\n",
           (unsigned long long)cur, (unsigned long long)last, (unsigned long long)behind);
    printf("admin records (device and quarantine decisions): acked up to audit entry %llu; "
           "%llu to send\n", (unsigned long long)acur, (unsigned long long)abehind);
    return 0;
}

static const subcmd upstream_cmds[] = {{"enroll", upstream_enroll},
                                       {"status", upstream_status},
                                       {NULL, NULL}};

/* argv[0] is the command, argv[1] the subcommand. */
static int dispatch(const char *cmd, const subcmd *tab, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: doorstepctl %s SUBCOMMAND [--help]\nsubcommands:", cmd);
        for (const subcmd *s = tab; s->name; s++) fprintf(f, " %s", s->name);
        fputc('\n', f);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    for (const subcmd *s = tab; s->name; s++)
        if (!strcmp(argv[1], s->name)) return s->fn(argc - 1, argv + 1);
    fprintf(stderr, "doorstepctl %s: unknown subcommand \"%s\"; one of:", cmd, argv[1]);
    for (const subcmd *s = tab; s->name; s++) fprintf(stderr, " %s", s->name);
    fputc('\n', stderr);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"data", required_argument, NULL, 'd'},
                                         {"key-file", required_argument, NULL, 'k'},
                                         {"tz", required_argument, NULL, 'z'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int c;
    data_dir = getenv("DOORSTEP_DATA");
    key_file = getenv("DOORSTEP_KEY_FILE");
    const char *tz = getenv("DOORSTEP_TZ"), *tz_from = "DOORSTEP_TZ";
    if (!tz || !*tz) {
        tz = STATION_TZ_DEFAULT;
        tz_from = "the default zone";
    }
    /* "+": stop at the command; its options are its own. */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': data_dir = optarg; break;
        case 'k': key_file = optarg; break;
        case 'z':
            tz = optarg;
            tz_from = "--tz";
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    /* Before anything is read or printed: a bad zone is a usage error. */
    int tzrc = station_tz_set(tz, tz_from);
    if (tzrc) return tzrc;
    const char *cmd = argv[optind];
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    bool wants_help = false;
    for (int i = 1; i < sub_argc; i++)
        if (!strcmp(sub_argv[i], "--help") || !strcmp(sub_argv[i], "-h")) wants_help = true;
    if (!wants_help && (!data_dir || !*data_dir)) {
        fprintf(stderr, "doorstepctl: --data DIR (or DOORSTEP_DATA) is required\n");
        return EXIT_USAGE;
    }
    char *kf = NULL;
    if (!key_file && data_dir) key_file = kf = store_default_key_file(data_dir);
    if (sodium_init() < 0) return EXIT_FAIL;
    int rc;
    if (!strcmp(cmd, "init")) rc = cmd_init(sub_argc, sub_argv);
    else if (!strcmp(cmd, "verify")) rc = cmd_verify(sub_argc, sub_argv);
    else if (!strcmp(cmd, "backup")) rc = cmd_backup(sub_argc, sub_argv);
    else if (!strcmp(cmd, "stats")) rc = cmd_stats(sub_argc, sub_argv);
    else if (!strcmp(cmd, "device")) rc = dispatch(cmd, device_cmds, sub_argc, sub_argv);
    else if (!strcmp(cmd, "quarantine")) rc = dispatch(cmd, quarantine_cmds, sub_argc, sub_argv);
    else if (!strcmp(cmd, "staff")) rc = dispatch(cmd, staff_cmds, sub_argc, sub_argv);
    else if (!strcmp(cmd, "audit")) rc = cmd_audit(sub_argc, sub_argv);
    else if (!strcmp(cmd, "import")) rc = cmd_import(sub_argc, sub_argv);
    else if (!strcmp(cmd, "export")) rc = cmd_export(sub_argc, sub_argv);
    else if (!strcmp(cmd, "upstream")) rc = dispatch(cmd, upstream_cmds, sub_argc, sub_argv);
    else {
        fprintf(stderr, "doorstepctl: unknown command \"%s\"\n", cmd);
        usage(stderr);
        rc = EXIT_USAGE;
    }
    free(kf);
    return rc;
}
