/*
 * relay_test.c — upward replication, end to end (issue 16, docs/SCALE.md):
 * three doorstepd processes on loopback, two streets (A, B) and their
 * district (D).
 *
 *   relay_test --build DIR [--keep] [--kills N]
 *
 *   1. Three stores (doorstepctl init); D enrolls A and B as relays
 *      (doorstepctl device enroll --relay); each street enrolls with its
 *      token (doorstepctl upstream enroll).
 *   2. With the district down, street A's phones sync (doorstep-sim with
 *      prefix A) and A's station imports a ledger (server-signed deltas,
 *      device 0): a street works without its district.
 *   3. D comes up; A and B run with --upstream; B's phones sync meanwhile.
 *      While A relays its backlog, D and A are killed with SIGKILL N times
 *      at random moments and restarted.
 *   4. Street A soft-revokes a phone; once both streets say the district
 *      acked their whole log and admin records (upstream status), the
 *      district shows that phone revoked, with the street's audit entry in
 *      its own audit log once; all three stop and the stores are compared:
 *      every record at D is byte for byte the record at its street, D holds
 *      exactly A's and B's records, its log holds exactly as many envelopes
 *      as both streets' logs together (nothing applied twice, nothing lost),
 *      and `doorstepctl verify` passes at D.
 *   5. A forger: a third relay enrolled at D sends a genuine envelope of A
 *      with one byte of its delta changed, with A's key records; D answers
 *      "quarantined" (unverified), keeps it in quarantine, and no record
 *      changes.  The genuine envelope sent again is a duplicate.  The same
 *      relay naming another street key later is refused (STORE_ERELAYKEY).
 *
 * Seed: DOORSTEP_SEED (printed).  Exit 0 on success, 1 on a failed check.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "doorstep_device.h"
#include "store.h"
#include "wire.h"

static int failures;
static char root[256], build[512];

static void failf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "relay_test: FAIL: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    failures++;
}

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) failf(__VA_ARGS__);                                                   \
    } while (0)

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Run a shell command; its output goes to root/cmd.log.  Returns the status. */
static int sh(const char *fmt, ...)
{
    char cmd[4096], full[4400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    snprintf(full, sizeof full, "(%s) >>%s/cmd.log 2>&1 </dev/null", cmd, root);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Run a command and return its first output line that starts with prefix
 * (the rest of it) in out. */
static bool sh_line(const char *prefix, char *out, size_t n, const char *fmt, ...)
{
    char cmd[4096], line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    bool found = false;
    if (!p) return false;
    while (fgets(line, sizeof line, p)) {
        size_t pl = strlen(prefix);
        if (!found && !strncmp(line, prefix, pl)) {
            line[strcspn(line, "\r\n")] = 0;
            snprintf(out, n, "%s", line + pl);
            found = true;
        }
    }
    pclose(p);
    return found;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    socklen_t al = sizeof a;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &al)) {
        if (fd >= 0) close(fd);
        return 0;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- servers ------------------------------------------------------------------------ */

typedef struct srv {
    const char *name;
    char data[300];
    int port;
    char upstream[128];          /* "" or the district's URL */
    pid_t pid;
} srv;

static bool srv_start(srv *s)
{
    char logf[400], port[16];
    int pfd[2];
    snprintf(logf, sizeof logf, "%s/%s.log", root, s->name);
    snprintf(port, sizeof port, "127.0.0.1:%d", s->port);
    if (pipe2(pfd, O_CLOEXEC)) return false;
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        char bin[600];
        snprintf(bin, sizeof bin, "%s/doorstepd", build);
        dup2(pfd[1], 1);
        int lf = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (lf >= 0) dup2(lf, 2);
        if (s->upstream[0])
            execl(bin, bin, "--data", s->data, "--listen", port, "--log-level", "1",
                  "--device-burst", "40000", "--upstream", s->upstream, (char *)NULL);
        else
            execl(bin, bin, "--data", s->data, "--listen", port, "--log-level", "1",
                  "--device-burst", "40000", (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char buf[1024];
    size_t n = 0;
    uint64_t t0 = mono_ms();
    bool up = false;
    while (!up && mono_ms() - t0 < 15000) {
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t r = read(pfd[0], buf + n, sizeof buf - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        buf[n] = 0;
        up = strstr(buf, "listening on ws://") != NULL;
    }
    close(pfd[0]);
    if (!up) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        failf("%s did not start (see %s)", s->name, logf);
        return false;
    }
    s->pid = pid;
    return true;
}

static void srv_stop(srv *s, int sig)
{
    int st;
    if (s->pid <= 0) return;
    kill(s->pid, sig);
    waitpid(s->pid, &st, 0);
    if (sig == SIGTERM)
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s did not exit 0 on SIGTERM (%d)", s->name,
              st);
    s->pid = 0;
}

/* "acked ... up to server seq C of L": C == L and L >= min, and no admin
 * record left to send, within ms. */
static bool caught_up(const srv *s, uint64_t min_last, int ms)
{
    uint64_t t0 = mono_ms();
    char line[256], aline[256];
    unsigned long long c = 0, l = 0, ac = 0, ab = 1;
    while (mono_ms() - t0 < (uint64_t)ms) {
        if (sh_line("acked by the district up to server seq ", line, sizeof line,
                    "%s/doorstepctl --data %s upstream status 2>/dev/null", build, s->data) &&
            sscanf(line, "%llu of %llu", &c, &l) == 2 &&
            sh_line("admin records (device and quarantine decisions): acked up to audit entry ",
                    aline, sizeof aline, "%s/doorstepctl --data %s upstream status 2>/dev/null",
                    build, s->data) &&
            sscanf(aline, "%llu; %llu", &ac, &ab) == 2 && c == l && l >= min_last && ab == 0)
            return true;
        sleep_ms(200);
    }
    failf("%s: the district acked %llu of %llu envelopes, %llu admin records left", s->name, c, l,
          ab);
    return false;
}

/* ---- stores ------------------------------------------------------------------------- */

typedef struct rec {
    char kind[16], id[CRDT_RECID_MAX + 1];
    crdt_buf bytes;
} rec;

typedef struct recs {
    rec *v;
    size_t n, cap;
    const char *kind;
} recs;

static int collect(const crdt_record *r, void *arg)
{
    recs *rs = arg;
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? rs->cap * 2 : 256;
        rs->v = realloc(rs->v, rs->cap * sizeof *rs->v);
        if (!rs->v) abort();
    }
    rec *x = &rs->v[rs->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->kind, sizeof x->kind, "%s", rs->kind);
    snprintf(x->id, sizeof x->id, "%s", r->id);
    if (crdt_record_encode(r, &x->bytes)) abort();
    return 0;
}

static store *open_data(const char *data)
{
    char err[256];
    store *s = NULL;
    char *key = store_default_key_file(data);
    int rc = store_open(data, key, NULL, &s, err, sizeof err);
    free(key);
    if (rc) failf("open %s: %s", data, err);
    return s;
}

/* Every record of both kinds, in (kind, id) order; *last_sseq the log's end. */
static void load_records(const char *data, recs *out, uint64_t *last_sseq)
{
    static const char *kinds[] = {"household", "person"};
    memset(out, 0, sizeof *out);
    *last_sseq = 0;
    store *s = open_data(data);
    if (!s) return;
    store_txn *t = NULL;
    if (store_begin(s, STORE_RDONLY, &t)) abort();
    store_last_sseq(t, last_sseq);
    for (int k = 0; k < 2; k++) {
        char after[CRDT_RECID_MAX + 1] = "", next[CRDT_RECID_MAX + 1];
        out->kind = kinds[k];
        for (;;) {
            size_t before = out->n;
            if (store_records_page(t, kinds[k], after, 500, collect, out, next)) abort();
            if (out->n == before) break;
            snprintf(after, sizeof after, "%s", next);
        }
    }
    store_abort(t);
    store_close(s);
}

static const rec *find(const recs *rs, const char *kind, const char *id)
{
    for (size_t i = 0; i < rs->n; i++)
        if (!strcmp(rs->v[i].kind, kind) && !strcmp(rs->v[i].id, id)) return &rs->v[i];
    return NULL;
}

static void recs_free(recs *rs)
{
    for (size_t i = 0; i < rs->n; i++) crdt_buf_free(&rs->v[i].bytes);
    free(rs->v);
    memset(rs, 0, sizeof *rs);
}

/* ---- the forger (step 5) ---------------------------------------------------------------- */

static void pstr(msgpack_packer *pk, const char *s) { msgpack_pack_str_with_body(pk, s, strlen(s)); }

/* A relay frame with one envelope, send, and the key record of the signer
 * of the genuine envelope env, signed by street store sa's server key. */
static void forge_frame(store *sa, const crdt_buf *send, const uint8_t *env, size_t n, uint64_t id,
                        const uint8_t srv_pk[32], crdt_buf *f)
{
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int err_op;
    crdt_arena *a = crdt_arena_new(0);
    store_txn *t = NULL;
    store_key k;
    uint8_t m[WIRE_KEY_MSG_BYTES], g[64];
    if (!a || wire_envelope_decode(env, n, &crdt_limits_default, &db, &dl, &sig) ||
        crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op) || store_begin(sa, STORE_RDONLY, &t) ||
        store_key_get(t, d.dev, d.epoch, &k))
        abort();
    wire_key_msg(k.dev, k.epoch, k.pk, m);
    if (store_server_sign(t, m, sizeof m, g)) abort();
    store_abort(t);
    crdt_arena_free(a);
    crdt_buf_reset(f);
    msgpack_packer pk;
    msgpack_packer_init(&pk, f, crdt_buf_pack_write);
    msgpack_pack_map(&pk, 5);
    pstr(&pk, "d");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_bin_with_body(&pk, send->p, send->n);
    pstr(&pk, "id");
    msgpack_pack_uint64(&pk, id);
    pstr(&pk, "k");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 4);
    pstr(&pk, "d");
    msgpack_pack_uint32(&pk, k.dev);
    pstr(&pk, "e");
    msgpack_pack_uint32(&pk, k.epoch);
    pstr(&pk, "g");
    msgpack_pack_bin_with_body(&pk, g, 64);
    pstr(&pk, "p");
    msgpack_pack_bin_with_body(&pk, k.pk, 32);
    pstr(&pk, "srv");
    msgpack_pack_bin_with_body(&pk, srv_pk, 32);
    pstr(&pk, "t");
    pstr(&pk, "relay");
}

/* Send f, read the ack; the first entry's "r" and "c" into r, *c. */
static bool relay_once(dsd_chan *ch, const crdt_buf *f, char r[16], int64_t *c)
{
    const uint8_t *p;
    size_t n, off = 0;
    r[0] = 0;
    *c = 0;
    if (dsd_chan_send(ch, f->p, f->n) || dsd_chan_recv(ch, 10000, &p, &n)) return false;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    bool ok = msgpack_unpack_next(&up, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS &&
              up.data.type == MSGPACK_OBJECT_MAP;
    for (uint32_t i = 0; ok && i < up.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
        if (kv->key.via.str.size != 1 || kv->key.via.str.ptr[0] != 'r' ||
            kv->val.type != MSGPACK_OBJECT_ARRAY || kv->val.via.array.size != 1)
            continue;
        const msgpack_object *e = &kv->val.via.array.ptr[0];
        for (uint32_t j = 0; e->type == MSGPACK_OBJECT_MAP && j < e->via.map.size; j++) {
            const msgpack_object_kv *x = &e->via.map.ptr[j];
            if (x->key.via.str.size == 1 && x->key.via.str.ptr[0] == 'r' &&
                x->val.type == MSGPACK_OBJECT_STR)
                snprintf(r, 16, "%.*s", (int)x->val.via.str.size, x->val.via.str.ptr);
            if (x->key.via.str.size == 1 && x->key.via.str.ptr[0] == 'c')
                *c = x->val.via.i64;
        }
    }
    msgpack_unpacked_destroy(&up);
    return ok && r[0];
}

static int first_env(uint64_t sseq, const uint8_t *env, size_t len, void *arg)
{
    (void)sseq;
    crdt_buf *b = arg;
    crdt_buf_reset(b);
    return crdt_buf_append(b, env, len) ? -1 : 1; /* stop after the first */
}

/* A channel to D as the relay whose identity is in dir (enrolled if token). */
static dsd *relay_identity(const char *dir, const char *schema, const char *url, const char *token)
{
    char err[256];
    dsd *h = NULL;
    if (dsd_open(dir, schema, &h, err, sizeof err)) {
        failf("%s: %s", dir, err);
        return NULL;
    }
    if (token && dsd_enroll(h, url, token)) {
        failf("%s: enroll: %s", dir, dsd_errmsg(h));
        dsd_close(h);
        return NULL;
    }
    return h;
}

/*
 * Step 5, with A's doorstepd stopped and D serving: as relay A (its own
 * identity), send a tampered copy of a genuine envelope of A (quarantined
 * as unverified, nothing merged) and the genuine one again (a duplicate);
 * as another relay, claim A's server key (refused: one street, one relay).
 */
static void forger(srv *D, srv *A)
{
    char token[64], url[128], dir[400], adir[400], schema[600];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/sync", D->port);
    snprintf(adir, sizeof adir, "%s.upstream", A->data);
    snprintf(schema, sizeof schema, "%s/schema.json", adir);
    snprintf(dir, sizeof dir, "%s/forger", root);
    CHECK(sh_line("token: ", token, sizeof token,
                  "%s/doorstepctl --data %s device enroll --relay --volunteer forger --no-qr "
                  "--as test", build, D->data), "no relay token for the forger");
    sh("mkdir -p %s", dir);
    dsd *ha = relay_identity(adir, schema, url, NULL);
    dsd *hf = relay_identity(dir, schema, url, token);
    store *sa = open_data(A->data);
    crdt_buf env = {0}, bad = {0}, f = {0};
    recs before = {0}, after = {0};
    uint64_t l0 = 0, l1 = 0;
    dsd_chan *ch = NULL;
    char r[16];
    int64_t c;
    if (!ha || !hf || !sa) goto out;
    /* A genuine envelope of A (server seq 1: a phone's) and a copy with one
     * byte of its delta changed (the delta is most of the envelope). */
    store_txn *t = NULL;
    if (store_begin(sa, STORE_RDONLY, &t) || store_log_read(t, 0, 1, 1 << 20, first_env, &env) != 1)
        abort();
    store_abort(t);
    crdt_buf_append(&bad, env.p, env.n);
    bad.p[bad.n / 3] ^= 0x01;
    uint8_t srv_a[32];
    memcpy(srv_a, store_server_pk(sa), 32);

    srv_stop(D, SIGTERM); /* D's records at rest, then it serves again */
    load_records(D->data, &before, &l0);
    if (!srv_start(D)) goto out;
    if (dsd_chan_open(ha, url, 10000, &ch)) {
        failf("relay A: connect: %s", dsd_errmsg(ha));
        goto out;
    }
    forge_frame(sa, &bad, env.p, env.n, 1, srv_a, &f);
    CHECK(relay_once(ch, &f, r, &c) && !strcmp(r, "quarantined") && c == STORE_Q_UNVERIFIED,
          "a tampered envelope was answered %s (c=%lld), not quarantined/unverified", r,
          (long long)c);
    forge_frame(sa, &env, env.p, env.n, 2, srv_a, &f);
    CHECK(relay_once(ch, &f, r, &c) && !strcmp(r, "duplicate"),
          "the genuine envelope sent again was answered %s, not duplicate", r);
    dsd_chan_close(ch, false);
    ch = NULL;
    if (dsd_chan_open(hf, url, 10000, &ch)) {
        failf("forger: connect: %s", dsd_errmsg(hf));
        goto out;
    }
    forge_frame(sa, &env, env.p, env.n, 1, srv_a, &f);
    CHECK(relay_once(ch, &f, r, &c) && !strcmp(r, "rejected") && c == STORE_ERELAYKEY,
          "a second relay claiming A's server key was answered %s (c=%lld)", r, (long long)c);
    dsd_chan_close(ch, false);
    ch = NULL;
    srv_stop(D, SIGTERM);
    load_records(D->data, &after, &l1);
    CHECK(l1 == l0, "the forger changed D's log (%llu -> %llu)", (unsigned long long)l0,
          (unsigned long long)l1);
    CHECK(after.n == before.n, "the forger changed D's record count");
    for (size_t i = 0; i < after.n && i < before.n; i++)
        CHECK(after.v[i].bytes.n == before.v[i].bytes.n &&
                  !memcmp(after.v[i].bytes.p, before.v[i].bytes.p, after.v[i].bytes.n),
              "the forger changed %s %s", after.v[i].kind, after.v[i].id);
    char line[512];
    CHECK(sh_line("", line, sizeof line,
                  "%s/doorstepctl --data %s quarantine list --state all --json | "
                  "grep -o '\"unverified\"' | wc -l", build, D->data) && atoi(line) == 1,
          "D's quarantine does not hold exactly one unverified entry (%s)", line);
    CHECK(sh("%s/doorstepctl --data %s quarantine accept 1 --as test", build, D->data) != 0,
          "an unverified envelope could be accepted");
out:
    if (ch) dsd_chan_close(ch, true);
    recs_free(&before);
    recs_free(&after);
    crdt_buf_free(&env);
    crdt_buf_free(&bad);
    crdt_buf_free(&f);
    store_close(sa);
    dsd_close(ha);
    dsd_close(hf);
}

/* ---- the scenario --------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"build", required_argument, NULL, 'b'},
                                         {"keep", no_argument, NULL, 'k'},
                                         {"kills", required_argument, NULL, 'n'},
                                         {NULL, 0, NULL, 0}};
    bool keep = false;
    int kills = 4, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'b': snprintf(build, sizeof build, "%s", optarg); break;
        case 'k': keep = true; break;
        case 'n': kills = atoi(optarg); break;
        default: fprintf(stderr, "usage: relay_test --build DIR [--keep] [--kills N]\n"); return 2;
        }
    }
    if (!build[0]) {
        fprintf(stderr, "relay_test: --build DIR is required\n");
        return 2;
    }
    const char *seed_env = getenv("DOORSTEP_SEED");
    unsigned seed = seed_env ? (unsigned)strtoul(seed_env, NULL, 10) : (unsigned)time(NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("relay_test: DOORSTEP_SEED=%u\n", seed);
    srand(seed);
    signal(SIGPIPE, SIG_IGN);
    if (dsd_global_init()) return 1;
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/relay-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) return 1;

    srv D = {.name = "D"}, A = {.name = "A"}, B = {.name = "B"};
    srv *all[] = {&D, &A, &B};
    for (int i = 0; i < 3; i++) {
        snprintf(all[i]->data, sizeof all[i]->data, "%s/%s", root, all[i]->name);
        all[i]->port = free_port();
        CHECK(sh("%s/doorstepctl --data %s init", build, all[i]->data) == 0, "init %s failed",
              all[i]->name);
    }
    char durl[128], tok[64];
    snprintf(durl, sizeof durl, "ws://127.0.0.1:%d/sync", D.port);
    if (failures || !srv_start(&D)) goto done;
    for (int i = 1; i < 3; i++) {
        CHECK(sh_line("token: ", tok, sizeof tok,
                      "%s/doorstepctl --data %s device enroll --relay --volunteer 街道%s --no-qr "
                      "--as test", build, D.data, all[i]->name),
              "no relay token for %s", all[i]->name);
        CHECK(sh("%s/doorstepctl --data %s upstream enroll %s %s", build, all[i]->data, durl,
                 tok) == 0, "upstream enroll of %s failed", all[i]->name);
    }
    if (failures) goto done;

    /* 2. The district is down: street A works on its own. */
    srv_stop(&D, SIGTERM);
    snprintf(A.upstream, sizeof A.upstream, "%s", durl);
    snprintf(B.upstream, sizeof B.upstream, "%s", durl);
    if (!srv_start(&A)) goto done;
    CHECK(sh("%s/doorstep-sim --server ws://127.0.0.1:%d --data %s --devices %s/A.dev "
             "--prefix A --volunteers 30 --households 600 --days 2 --seed %u",
             build, A.port, A.data, root, seed) == 0,
          "street A's phones did not converge with the district down (see cmd.log)");
    CHECK(sh("%s/doorstepctl --data %s import --csv %s/tests/cli/fixtures/ledger-zh.csv "
             "--as test", build, A.data, SOURCE_DIR) == 0,
          "the ledger import at A failed (see cmd.log)");

    /* 3. The district comes up; A relays its backlog while D and A die. */
    if (!srv_start(&D) || !srv_start(&B)) goto done;
    pid_t simb = fork();
    if (simb == 0) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "%s/doorstep-sim --server ws://127.0.0.1:%d --data %s --devices %s/B.dev "
                 "--prefix B --volunteers 20 --households 400 --days 2 --seed %u "
                 ">>%s/simb.log 2>&1 </dev/null",
                 build, B.port, B.data, root, seed + 1, root);
        _exit(system(cmd) == 0 ? 0 : 1);
    }
    for (int k = 0; k < kills; k++) {
        sleep_ms(50 + rand() % 400);
        srv *victim = k % 2 ? &A : &D;
        char line[256] = "";
        sh_line("acked by the district up to server seq ", line, sizeof line,
                "%s/doorstepctl --data %s upstream status 2>/dev/null", build, A.data);
        printf("relay_test: kill -9 %s; A acked up to %s\n", victim->name, line);
        srv_stop(victim, SIGKILL);
        sleep_ms(rand() % 300);
        if (!srv_start(victim)) goto done;
    }
    int st = 0;
    waitpid(simb, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "street B's phones did not converge while relaying (see simb.log)");
    /* A decision at the street travels up as an admin record. */
    CHECK(sh("%s/doorstepctl --data %s device revoke 3 --soft --as test", build, A.data) == 0,
          "revoking device 3 at A failed");
    caught_up(&A, 1, 120000);
    caught_up(&B, 1, 120000);
    char line[512];
    CHECK(sh_line("", line, sizeof line,
                  "%s/doorstepctl --data %s device list --json | grep -A2 '\"街道A #3\"' | "
                  "grep -c revoked_soft", build, D.data) && atoi(line) == 1,
          "street A's revocation of its device 3 did not reach the district (%s)", line);
    CHECK(sh_line("", line, sizeof line,
                  "%s/doorstepctl --data %s audit list | grep -c street.device.revoke_soft", build,
                  D.data) && atoi(line) == 1,
          "the district's audit log does not hold A's revocation exactly once (%s)", line);

    /* 4. Compare at rest. */
    for (int i = 0; i < 3; i++) srv_stop(all[i], SIGTERM);
    recs rd, ra, rb;
    uint64_t ld, la, lb;
    load_records(D.data, &rd, &ld);
    load_records(A.data, &ra, &la);
    load_records(B.data, &rb, &lb);
    printf("relay_test: A %zu records / %llu envelopes, B %zu / %llu, district %zu / %llu\n",
           ra.n, (unsigned long long)la, rb.n, (unsigned long long)lb, rd.n,
           (unsigned long long)ld);
    CHECK(ra.n > 0 && rb.n > 0, "the streets hold no records");
    CHECK(ld == la + lb, "district log %llu envelopes, streets %llu + %llu",
          (unsigned long long)ld, (unsigned long long)la, (unsigned long long)lb);
    CHECK(rd.n == ra.n + rb.n, "district %zu records, streets %zu + %zu", rd.n, ra.n, rb.n);
    size_t same = 0;
    for (size_t i = 0; i < rd.n; i++) {
        const rec *x = &rd.v[i], *y = find(&ra, x->kind, x->id);
        if (!y) y = find(&rb, x->kind, x->id);
        if (!y) {
            failf("district record %s %s is at neither street", x->kind, x->id);
            continue;
        }
        if (y->bytes.n == x->bytes.n && !memcmp(y->bytes.p, x->bytes.p, x->bytes.n)) same++;
        else failf("district record %s %s differs from its street's", x->kind, x->id);
        if (failures > 20) break;
    }
    printf("relay_test: %zu of %zu district records byte-identical to their street's\n", same,
           rd.n);
    recs_free(&rd);
    recs_free(&ra);
    recs_free(&rb);
    CHECK(sh("%s/doorstepctl --data %s verify", build, D.data) == 0, "doorstepctl verify at D failed");

    /* 5. A forger. */
    if (!srv_start(&D)) goto done;
    forger(&D, &A);

done:
    for (int i = 0; i < 3; i++) srv_stop(all[i], SIGTERM);
    if (failures) {
        fprintf(stderr, "relay_test: %d failure(s); files kept in %s\n", failures, root);
        return 1;
    }
    if (!keep) sh("rm -rf %s", root);
    printf("relay_test: ok\n");
    return 0;
}
