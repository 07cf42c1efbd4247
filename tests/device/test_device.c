/*
 * test_device.c — the device library and doorstep-sim against a real
 * doorstepd over loopback WebSockets (the server runs in this process, as in
 * tests/sync/test_server.c):
 *   - enrollment (and token errors), edits, sync, reading back;
 *   - end-to-end convergence of many devices (the simulator, checked);
 *   - a device whose connection drops mid-push, and a device process killed
 *     (fork + SIGKILL) at random points while pushing: after restart nothing
 *     is lost and nothing is stored twice;
 *   - a device offline for several simulated days while others edit the
 *     same records, then syncing cleanly;
 *   - scope reassignment: records that left are purged, new ones filled;
 *   - key rotation (on demand and required by the station);
 *   - the simulator's check fails when the server lost a delta;
 *   - errors with codes and messages (TLS, bad URL, refused, key file).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "doorstep_device.h"
#include "sim.h"
#include "storeutil.h"
#include "sync.h"

#define SCHEMA DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json"

typedef struct srv {
    su_dir d;
    store *st;
    sync_server *sv;
    sync_config cfg;
    pthread_t th;
    int port;
    char url[64];
} srv;

static void *run_thread(void *arg)
{
    sync_server_run(((srv *)arg)->sv);
    return NULL;
}

/* A server with cfg (NULL: sync_config_default). */
static void srv_start_cfg(srv *s, const sync_config *cfg)
{
    char err[256];
    sync_server_opts o = {.listen_host = "127.0.0.1", .port = 0, .verify_threads = 2,
                          .log_level = 0};
    su_dir_make(&s->d, "device");
    s->st = su_store_new(&s->d, NULL);
    s->cfg = cfg ? *cfg : sync_config_default;
    int rc = sync_server_new(s->st, &s->cfg, &o, &s->sv, err, sizeof err);
    if (rc) fail_msg("server: %s", err);
    s->port = sync_server_port(s->sv);
    snprintf(s->url, sizeof s->url, "ws://127.0.0.1:%d", s->port);
    assert_int_equal(pthread_create(&s->th, NULL, run_thread, s), 0);
}

static void srv_start(srv *s) { srv_start_cfg(s, NULL); }

static void srv_stop(srv *s)
{
    sync_server_stop(s->sv);
    pthread_join(s->th, NULL);
    sync_server_free(s->sv);
    store_close(s->st);
    su_dir_remove(&s->d);
}

static dsd *dev_open(srv *s, const char *name)
{
    char path[512], err[256];
    dsd *h = NULL;
    snprintf(path, sizeof path, "%s/%s", s->d.root, name);
    int rc = dsd_open(path, SCHEMA, &h, err, sizeof err);
    if (rc) fail_msg("dsd_open %s: %s", path, err);
    return h;
}

/* Enroll a device with a scope of households. */
static dsd *dev_enroll(srv *s, const char *name, const char *const *scope, size_t n)
{
    char tok[STORE_TOKEN_TEXT_LEN + 1];
    dsd *h = dev_open(s, name);
    assert_int_equal(sim_token(s->st, name, scope, n, tok), 0);
    int rc = dsd_enroll(h, s->url, tok);
    if (rc) fail_msg("enroll %s: %s: %s", name, dsd_strerror(rc), dsd_errmsg(h));
    return h;
}

static void must(dsd *h, int rc, const char *what)
{
    if (rc) fail_msg("%s: %s (%d): %s", what, dsd_strerror(rc), rc, dsd_errmsg(h));
}

static void sync_ok(dsd *h, srv *s, dsd_sync_report *rep)
{
    must(h, dsd_sync(h, s->url, NULL, rep), "sync");
}

static void check_converged(srv *s, dsd *const *devs, size_t n)
{
    sim_result r;
    assert_int_equal(sim_check(s->st, devs, n, 0, &r), 0);
    if (!r.converged) fail_msg("not converged: %s", r.why);
}

static void make_household(dsd *h, const char *id, const char *comm, const char *grid)
{
    must(h, dsd_household_create(h, id, comm, grid, "幸福路1号"), "household");
}

static void make_person(dsd *h, const char *id, const char *hh, unsigned i)
{
    char idn[19];
    su_idnum(i, idn);
    must(h, dsd_person_create(h, id, hh, "王芳", idn, "女", NULL, "户主"), "person");
}

/* A server that limits each device to 200 deltas/s, 500 at once: a phone
 * with 800 deltas waits as told (`ra` of SYNC_ERATE) and gets all of them
 * through in one dsd_sync, without counting the waits as stalls. */
static void test_rate_limited_sync(void **state)
{
    (void)state;
    srv s;
    sync_config cfg = sync_config_default;
    cfg.device_rate = 200;
    cfg.device_burst = 500;
    srv_start_cfg(&s, &cfg);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    make_household(a, "H1", "幸福社区", "G1");
    for (int i = 1; i < 800; i++) {
        char note[32];
        snprintf(note, sizeof note, "第%d次", i);
        must(a, dsd_set(a, "household", "H1", "note", NULL, note), "set");
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dsd_sync_report rep = {0};
    sync_ok(a, &s, &rep);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("rate-limited sync: 800 deltas in %.2f s, %u rounds\n", secs, rep.rounds);
    assert_int_equal(rep.pushed, 800);
    assert_true(rep.rounds >= 1);  /* it was refused at least once */
    assert_true(secs >= 1.4);      /* 300 deltas beyond the burst at 200/s */
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.outbox, 0);
    dsd_close(a);
    srv_stop(&s);
}

/* ---- basics ------------------------------------------------------------------------------ */

static void test_enroll_edit_sync(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1", "H2"};
    dsd *a = dev_enroll(&s, "a", scope, 2), *b = dev_enroll(&s, "b", scope, 2);
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status");
    assert_true(st.dev > 0);
    assert_int_equal(st.epoch, 1);
    assert_int_equal(st.scope, 2);

    /* The token is one-time; unknown tokens are refused with their codes. */
    char tok[STORE_TOKEN_TEXT_LEN + 1];
    assert_int_equal(sim_token(s.st, "c", scope, 1, tok), 0);
    dsd *c = dev_open(&s, "c"), *c2 = dev_open(&s, "c2"), *c3 = dev_open(&s, "c3");
    must(c, dsd_enroll(c, s.url, tok), "enroll c");
    assert_int_equal(dsd_enroll(c, s.url, tok), DSD_EENROLLED);
    assert_int_equal(dsd_enroll(c2, s.url, tok), -216);
    assert_non_null(strstr(dsd_errmsg(c2), "used"));
    assert_int_equal(dsd_enroll(c3, s.url, "aaaaaaaaaaaaaaaaaaaaaaaaaa"), -209);
    dsd_close(c);
    dsd_close(c2);
    dsd_close(c3);

    /* Edits apply locally at once, offline. */
    make_household(a, "H1", "C01", "C01-G01");
    make_person(a, "P1", "H1", 1);
    must(a, dsd_tag_add(a, "P1", "低保"), "tag");
    must(a, dsd_set(a, "person", "P1", "payment", "2026", "未缴费"), "payment");
    must(a, dsd_visit_append(a, "household", "H1", "2026-09-03", "上门走访", "已完成", NULL, "首次走访"),
         "visit");
    must(a, dsd_stage_raise(a, "P1", "review", "社区已初审"), "raise");
    char text[64];
    must(a, dsd_field_text(a, "person", "P1", "payment", "2026", text, sizeof text), "read");
    assert_string_equal(text, "未缴费");
    /* Outside the scope, and invalid values, are refused locally. */
    assert_int_equal(dsd_household_create(a, "H9", "C01", "C01-G01", NULL), DSD_ESCOPE);
    assert_int_equal(dsd_set(a, "person", "P1", "id_number", NULL, "110101199001011234"), CRDT_EIDNUM);
    assert_int_equal(dsd_set(a, "person", "P1", "no_such_field", NULL, "x"), DSD_EINVAL);
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.outbox, 6);

    dsd_sync_report rep;
    sync_ok(a, &s, &rep);
    assert_int_equal(rep.pushed, 6);
    sync_ok(b, &s, &rep);
    assert_int_equal(rep.pulled, 6);
    must(b, dsd_field_text(b, "person", "P1", "payment", "2026", text, sizeof text), "read b");
    assert_string_equal(text, "未缴费");

    /* Concurrent writes become a conflict both devices see; one resolves it. */
    must(a, dsd_set(a, "person", "P1", "payment", "2026", "已缴费"), "a pays");
    must(b, dsd_set(b, "person", "P1", "payment", "2026", "代缴"), "b pays");
    sync_ok(a, &s, NULL);
    sync_ok(b, &s, NULL);
    sync_ok(a, &s, NULL);
    uint32_t na = 0, nb = 0;
    must(a, dsd_field_count(a, "person", "P1", "payment", "2026", &na), "count");
    must(b, dsd_field_count(b, "person", "P1", "payment", "2026", &nb), "count");
    assert_int_equal(na, 2);
    assert_int_equal(nb, 2);
    dsd *devs[] = {a, b};
    check_converged(&s, devs, 2);
    must(b, dsd_resolve(b, "person", "P1", "payment", "2026", "代缴"), "resolve");
    assert_int_equal(dsd_resolve(b, "person", "P1", "payment", "2026", "代缴"), DSD_ENOCONFLICT);
    sync_ok(b, &s, NULL);
    sync_ok(a, &s, NULL);
    must(a, dsd_field_count(a, "person", "P1", "payment", "2026", &na), "count");
    assert_int_equal(na, 1);
    check_converged(&s, devs, 2);
    dsd_close(a);
    dsd_close(b);
    srv_stop(&s);
}

static void revoke_dev(srv *s, dsd *h, int how)
{
    dsd_status st;
    store_txn *t;
    must(h, dsd_status_get(h, &st), "status");
    assert_int_equal(store_begin(s->st, STORE_RW, &t), 0);
    assert_int_equal(store_device_revoke(t, st.dev, how, 1, "admin:test"), 0);
    assert_int_equal(store_commit(t), 0);
}

/* A lost phone, soft-revoked while it holds offline edits: the next sync
 * hands them in (quarantined for review, nothing lost), pulls nothing and
 * says so (DSD_EREVOKED, rep.revoked); the phone then refuses edits.  The
 * other phones go on syncing and converge.  A hard-revoked phone is refused
 * at authentication and knows it is revoked. */
static void test_revocation(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1), *b = dev_enroll(&s, "b", scope, 1),
        *c = dev_enroll(&s, "c", scope, 1);
    make_household(a, "H1", "C01", "C01-G01");
    make_person(a, "P1", "H1", 1);
    sync_ok(a, &s, NULL);
    sync_ok(b, &s, NULL);
    sync_ok(c, &s, NULL);
    /* a edits offline, then is lost; b edits too. */
    must(a, dsd_set(a, "person", "P1", "phone", NULL, "13800138000"), "a phone");
    must(a, dsd_tag_add(a, "P1", "低保"), "a tag");
    must(b, dsd_set(b, "person", "P1", "note", NULL, "b 的备注"), "b note");
    revoke_dev(&s, a, STORE_REVOKE_SOFT);
    uint64_t q0;
    store_txn *t;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_count(t, &q0), 0);
    store_abort(t);

    dsd_sync_report rep;
    int rc = dsd_sync(a, s.url, NULL, &rep);
    assert_int_equal(rc, DSD_EREVOKED);
    assert_true(rep.revoked);
    assert_int_equal(rep.quarantined, 2);
    assert_int_equal(rep.pulled, 0);
    assert_non_null(strstr(dsd_errmsg(a), "handed in"));
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status a");
    assert_true(st.revoked);
    assert_int_equal(st.outbox, 0);
    /* Both edits are in quarantine, from device a, as device_revoked. */
    uint64_t q1;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_quarantine_count(t, &q1), 0);
    assert_int_equal(q1, q0 + 2);
    for (uint64_t q = q0 + 1; q <= q1; q++) {
        store_qentry e;
        assert_int_equal(store_quarantine_get(t, q, &e), 0);
        assert_int_equal(e.dev, st.dev);
        assert_int_equal(e.reason, STORE_Q_REVOKED);
        crdt_buf_free(&e.env);
    }
    store_abort(t);
    /* No more edits on the revoked phone; syncing again hands in nothing. */
    assert_int_equal(dsd_set(a, "person", "P1", "note", NULL, "x"), DSD_EREVOKED);
    assert_int_equal(dsd_rotate(a, s.url, NULL), DSD_EREVOKED);
    assert_int_equal(dsd_sync(a, s.url, NULL, &rep), DSD_EREVOKED);
    assert_int_equal(rep.pushed + rep.quarantined, 0);
    /* The others carry on and converge (the simulator's check, as in make run). */
    sync_ok(b, &s, NULL);
    sync_ok(c, &s, &rep);
    assert_int_equal(rep.pulled, 1);
    dsd *devs[] = {b, c};
    check_converged(&s, devs, 2);
    dsd *gone[] = {a};
    sim_result r;
    memset(&r, 0, sizeof r);
    assert_int_equal(sim_check_revoked(s.st, gone, 1, &r), 0);
    assert_int_equal(r.revoked, 1);
    assert_int_equal(r.handed_in, 2);
    assert_string_equal(r.why, "");
    /* Hard: refused at auth, nothing sent; the phone records it. */
    must(c, dsd_set(c, "person", "P1", "note", NULL, "c 的备注"), "c note");
    revoke_dev(&s, c, STORE_REVOKE_HARD);
    assert_int_equal(dsd_sync(c, s.url, NULL, &rep), -305);
    must(c, dsd_status_get(c, &st), "status c");
    assert_true(st.revoked);
    assert_int_equal(st.outbox, 1);
    assert_int_equal(dsd_set(c, "person", "P1", "note", NULL, "y"), DSD_EREVOKED);
    dsd_close(a);
    dsd_close(b);
    dsd_close(c);
    srv_stop(&s);
}

static void test_errors(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    assert_int_equal(dsd_sync(a, "wss://127.0.0.1:1", NULL, NULL), DSD_ETLS);
    assert_non_null(strstr(dsd_errmsg(a), "TLS"));
    assert_int_equal(dsd_sync(a, "http://x", NULL, NULL), DSD_EURL);
    assert_int_equal(dsd_sync(a, "ws://127.0.0.1:1", NULL, NULL), DSD_ECONNECT);
    assert_true(strlen(dsd_errmsg(a)) > 0);
    /* An unsafe key file is refused, with a message naming it. */
    char path[600];
    snprintf(path, sizeof path, "%s/a/device.key", s.d.root);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    chmod(path, 0644);
    assert_int_equal(dsd_household_create(a, "H1", "C01", "C01-G01", NULL), DSD_EKEYFILE);
    assert_non_null(strstr(dsd_errmsg(a), "0600"));
    chmod(path, 0600);
    make_household(a, "H1", "C01", "C01-G01");
    /* A device that never enrolled cannot edit or sync. */
    dsd *n = dev_open(&s, "n");
    assert_int_equal(dsd_household_create(n, "H1", "C01", "C01-G01", NULL), DSD_ENOTENROLLED);
    assert_int_equal(dsd_sync(n, s.url, NULL, NULL), DSD_ENOTENROLLED);
    for (int code = -420; code <= 0; code++) assert_non_null(dsd_strerror(code));
    dsd_close(n);
    dsd_close(a);
    srv_stop(&s);
}

/* ---- convergence with many devices -------------------------------------------------------- */

static void test_sim_converges(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    char devdir[600];
    snprintf(devdir, sizeof devdir, "%s/sim", s.d.root);
    sim_opts o = {.server = s.url, .schema = SCHEMA, .devices_dir = devdir, .volunteers = 24,
                  .households = 360, .days = 3, .threads = 12, .seed = 7};
    sim_result r;
    assert_int_equal(sim_run(s.st, &o, &r), 0);
    if (!r.converged) fail_msg("sim did not converge: %s", r.why);
    assert_int_equal(r.devices, 25);
    assert_true(r.deltas > 1000);
    assert_int_equal(r.server_deltas, r.deltas);
    assert_true(r.conflicts > 0);
    /* A second run reuses the street and continues. */
    o.days = 1;
    sim_result r2;
    assert_int_equal(sim_run(s.st, &o, &r2), 0);
    if (!r2.converged) fail_msg("second run did not converge: %s", r2.why);
    assert_true(r2.deltas > r.deltas);
    /* The check fails when the server lost a delta (any one). */
    o.days = 0;
    o.test_skip_sseq = r2.server_deltas / 2;
    sim_result r3;
    assert_int_equal(sim_run(s.st, &o, &r3), 0);
    assert_false(r3.converged);
    assert_non_null(strstr(r3.why, "the server log holds"));
    srv_stop(&s);
}

/* ---- crashes during push ------------------------------------------------------------------- */

static void edits(dsd *h, const char *hh, unsigned from, unsigned n)
{
    char pid[32];
    for (unsigned i = from; i < from + n; i++) {
        snprintf(pid, sizeof pid, "P%u", i % 50);
        char note[32];
        snprintf(note, sizeof note, "第%u次", i);
        dsd_edit *e;
        must(h, dsd_edit_begin(h, "person", pid, &e), "begin");
        must(h, dsd_edit_set(e, "household", NULL, hh), "hh");
        must(h, dsd_edit_set(e, "note", NULL, note), "note");
        must(h, dsd_edit_commit(e, NULL), "commit");
    }
}

static void test_drop_during_push(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    dsd_set_durable(a, false);
    make_household(a, "H1", "C01", "C01-G01");
    edits(a, "H1", 0, 1700); /* 4 pushes */
    dsd_sync_opts o = {.test_drop_after_pushes = 3};
    assert_int_equal(dsd_sync(a, s.url, &o, NULL), DSD_ECLOSED);
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.outbox, 1701); /* nothing acked: nothing dropped */
    dsd_sync_report rep;
    sync_ok(a, &s, &rep);
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.outbox, 0);
    /* What the server committed from the dropped connection before this
     * one's welcome is dropped from the outbox unsent (welcome.seq); the
     * rest is pushed now (applied, or duplicate if it landed after the
     * welcome).  Either way the server ends holding all 1701, once each. */
    assert_true(rep.pushed >= 1701 - 1500 && rep.pushed <= 1701);
    {
        store_txn *t;
        uint64_t head = 0;
        uint8_t h[32];
        assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
        assert_int_equal(store_chain_head(t, st.dev, &head, h), 0);
        store_abort(t);
        assert_int_equal(head, 1701);
    }
    dsd *devs[] = {a};
    check_converged(&s, devs, 1);
    dsd_close(a);
    srv_stop(&s);
}

static void test_killed_during_push(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    make_household(a, "H1", "C01", "C01-G01");
    dsd_close(a);
    char path[600];
    snprintf(path, sizeof path, "%s/a", s.d.root);
    unsigned made = 0;
    srand(12345);
    for (int round = 0; round < 6; round++) {
        /* The child edits and syncs in a loop (durably, as a phone); the
         * parent kills it at a random moment. */
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            dsd *c = NULL;
            char err[256];
            if (dsd_open(path, SCHEMA, &c, err, sizeof err)) _exit(3);
            for (unsigned i = 0;; i++) {
                edits(c, "H1", made + i * 300, 300);
                dsd_sync(c, s.url, NULL, NULL);
            }
        }
        struct timespec ts = {0, (long)(50 + rand() % 400) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int wst;
        waitpid(pid, &wst, 0);
        assert_true(WIFSIGNALED(wst));
        made += 100000;
    }
    /* Restart: the device finishes what it had and the server holds every
     * delta exactly once. */
    a = dev_open(&s, "a");
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status");
    assert_true(st.seq > 1);
    dsd_sync_report rep;
    sync_ok(a, &s, &rep);
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.outbox, 0);
    assert_int_equal(st.rejected, 0);
    dsd *devs[] = {a};
    check_converged(&s, devs, 1);
    dsd_close(a);
    srv_stop(&s);
}

/* ---- offline for days -------------------------------------------------------------------------- */

static void test_offline_days(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1", "H2", "H3"};
    dsd *a = dev_enroll(&s, "a", scope, 3), *b = dev_enroll(&s, "b", scope, 3),
        *c = dev_enroll(&s, "c", scope, 3);
    make_household(a, "H1", "C01", "C01-G01");
    make_household(a, "H2", "C01", "C01-G01");
    make_household(a, "H3", "C01", "C01-G02");
    for (unsigned i = 0; i < 9; i++) {
        char pid[16];
        snprintf(pid, sizeof pid, "P%u", i);
        make_person(a, pid, scope[i % 3], i + 1);
    }
    sync_ok(a, &s, NULL);
    sync_ok(b, &s, NULL);
    sync_ok(c, &s, NULL);
    /* c goes offline for five visit days; a and b sync every evening. */
    for (int day = 0; day < 5; day++) {
        char date[16];
        snprintf(date, sizeof date, "2026-09-%02d", day + 10);
        for (unsigned i = 0; i < 9; i++) {
            char pid[16];
            snprintf(pid, sizeof pid, "P%u", i);
            must(a, dsd_visit_append(a, "person", pid, date, "上门走访", "已完成", NULL, NULL), "a");
            must(c, dsd_visit_append(c, "person", pid, date, "电话随访", "需再访", NULL, NULL), "c");
            if (i % 3 == (unsigned)day % 3) {
                must(b, dsd_set(b, "person", pid, "insurance_type", NULL, "职工"), "b");
                must(c, dsd_set(c, "person", pid, "insurance_type", NULL, "城乡居民"), "c");
            }
            dsd_edit *e;
            must(c, dsd_edit_begin(c, "person", pid, &e), "begin");
            must(c, dsd_edit_inc(e, "errands_done", 1), "inc");
            must(c, dsd_edit_commit(e, NULL), "commit");
        }
        sync_ok(a, &s, NULL);
        sync_ok(b, &s, NULL);
    }
    dsd_status st;
    must(c, dsd_status_get(c, &st), "status");
    assert_int_equal(st.outbox, 5 * (9 + 9 + 3));
    dsd_sync_report rep;
    sync_ok(c, &s, &rep);
    assert_int_equal(rep.pushed, 5 * 21);
    assert_int_equal(rep.rejected, 0);
    sync_ok(a, &s, NULL);
    sync_ok(b, &s, NULL);
    dsd *devs[] = {a, b, c};
    check_converged(&s, devs, 3);
    uint32_t n = 0;
    must(a, dsd_field_count(a, "person", "P0", "insurance_type", NULL, &n), "count");
    assert_true(n >= 2); /* b's and c's concurrent writes side by side */
    dsd_close(a);
    dsd_close(b);
    dsd_close(c);
    srv_stop(&s);
}

/* ---- scope reassignment ------------------------------------------------------------------------ */

static int count_kind(const char *kind, const char *id, const uint8_t *p, size_t n, void *arg)
{
    (void)kind, (void)id, (void)p, (void)n;
    (*(int *)arg)++;
    return 0;
}

static void test_scope_reassignment(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *all[] = {"H1", "H2", "H3"}, *first[] = {"H1", "H2"};
    dsd *staff = dev_enroll(&s, "staff", all, 3), *v = dev_enroll(&s, "v", first, 2);
    for (unsigned i = 0; i < 3; i++) {
        char pid[16];
        make_household(staff, all[i], "C01", "C01-G01");
        for (unsigned k = 0; k < 3; k++) {
            snprintf(pid, sizeof pid, "P%u-%u", i + 1, k);
            make_person(staff, pid, all[i], 10 * i + k + 1);
        }
    }
    sync_ok(staff, &s, NULL);
    sync_ok(v, &s, NULL);
    int n = 0;
    must(v, dsd_record_foreach(v, NULL, count_kind, &n), "foreach");
    assert_int_equal(n, 8);
    /* The station moves H1 to another volunteer and gives v H3. */
    dsd_status st;
    must(v, dsd_status_get(v, &st), "status");
    store_txn *t;
    const char *now[] = {"H2", "H3"};
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    assert_int_equal(store_device_scope_set(t, st.dev, now, 2), 0);
    assert_int_equal(store_commit(t), 0);
    dsd_sync_report rep;
    sync_ok(v, &s, &rep);
    assert_int_equal(rep.purged, 4);
    assert_true(rep.filled);
    uint8_t *p;
    size_t len;
    assert_int_equal(dsd_record_get(v, "household", "H1", &p, &len), DSD_ENOTFOUND);
    assert_int_equal(dsd_record_get(v, "person", "P1-0", &p, &len), DSD_ENOTFOUND);
    must(v, dsd_record_get(v, "person", "P3-2", &p, &len), "filled");
    dsd_free(p);
    n = 0;
    must(v, dsd_record_foreach(v, NULL, count_kind, &n), "foreach");
    assert_int_equal(n, 8);
    /* Editing what left the scope is refused locally. */
    assert_int_equal(dsd_set(v, "household", "H1", "note", NULL, "x"), DSD_ESCOPE);
    must(v, dsd_set(v, "household", "H3", "note", NULL, "新接手"), "edit H3");
    sync_ok(v, &s, NULL);
    sync_ok(staff, &s, NULL);
    dsd *devs[] = {staff, v};
    check_converged(&s, devs, 2);
    dsd_close(staff);
    dsd_close(v);
    srv_stop(&s);
}

/* ---- key rotation ----------------------------------------------------------------------------- */

static void test_rotation(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    make_household(a, "H1", "C01", "C01-G01");
    /* Queued offline deltas signed with the old key stay valid after the
     * rotation (sealed at the last seq). */
    make_person(a, "P1", "H1", 1);
    must(a, dsd_rotate(a, s.url, NULL), "rotate");
    dsd_status st;
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.epoch, 2);
    assert_int_equal(st.outbox, 2);
    assert_false(st.rotate_pending);
    must(a, dsd_tag_add(a, "P1", "残疾"), "edit with new key");
    dsd_sync_report rep;
    sync_ok(a, &s, &rep);
    assert_int_equal(rep.pushed, 3);
    /* The station requires a rotation: the next sync rotates before pushing. */
    store_txn *t;
    store_device d;
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    assert_int_equal(store_device_get(t, st.dev, &d), 0);
    d.flags |= STORE_DEVF_ROTATE_REQUIRED;
    assert_int_equal(store_device_put(t, &d), 0);
    assert_int_equal(store_commit(t), 0);
    must(a, dsd_set(a, "person", "P1", "note", NULL, "轮换后"), "edit");
    sync_ok(a, &s, &rep);
    assert_true(rep.rotated);
    assert_int_equal(rep.pushed, 1);
    must(a, dsd_status_get(a, &st), "status");
    assert_int_equal(st.epoch, 3);
    store_key k;
    assert_int_equal(store_begin(s.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_key_get(t, st.dev, 3, &k), 0);
    assert_int_equal(k.state, STORE_KEY_ACTIVE);
    store_abort(t);
    dsd *devs[] = {a};
    check_converged(&s, devs, 1);
    dsd_close(a);
    srv_stop(&s);
}

/* ---- live subscription -------------------------------------------------------------------------- */

typedef struct live_arg {
    dsd *h;
    srv *s;
    int rc;
    dsd_sync_report rep;
} live_arg;

static void *live_thread(void *p)
{
    live_arg *la = p;
    dsd_sync_opts o = {.live_ms = 1500};
    la->rc = dsd_sync(la->h, la->s->url, &o, &la->rep);
    return NULL;
}

static void test_live(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1), *b = dev_enroll(&s, "b", scope, 1);
    live_arg la = {.h = b, .s = &s};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, live_thread, &la), 0);
    struct timespec ts = {0, 300000000L};
    nanosleep(&ts, NULL);
    make_household(a, "H1", "C01", "C01-G01");
    make_person(a, "P1", "H1", 1);
    sync_ok(a, &s, NULL);
    pthread_join(th, NULL);
    must(b, la.rc, "live sync");
    assert_int_equal(la.rep.pulled, 2);
    dsd *devs[] = {a, b};
    check_converged(&s, devs, 2);
    dsd_close(a);
    dsd_close(b);
    srv_stop(&s);
}

/*
 * A server (or a disk, or a link) that hands out an envelope its device did
 * not sign: the changes frame carries the device's key record, signed by the
 * server key the phone pinned, and the phone verifies every envelope against
 * it before applying anything.  The page is refused as a whole (DSD_EFORGED:
 * nothing applied, the cursor stays), and the valid envelopes before the bad
 * one are not applied either.  (The store does not check signatures: the
 * server's verify workers do, which is what this test goes around.)
 */
static void test_forged_envelope(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H9"};
    dsd *b = dev_enroll(&s, "b", scope, 1);
    /* Device 900, registered straight in the store, scope H9. */
    su_dev d;
    su_dev_init(&d, 900);
    store_txn *t;
    assert_int_equal(store_begin(s.st, STORE_RW, &t), 0);
    store_device dv = {.id = 900, .state = STORE_DEV_ACTIVE, .epoch = 1};
    snprintf(dv.volunteer, sizeof dv.volunteer, "forger");
    assert_int_equal(store_device_put(t, &dv), 0);
    store_key k = {.dev = 900, .epoch = 1, .state = STORE_KEY_ACTIVE};
    memcpy(k.pk, d.pk, 32);
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_device_scope_set(t, 900, scope, 1), 0);
    assert_int_equal(store_commit(t), 0);
    /* A genuine household delta, then one whose signature is damaged. */
    su_ops o;
    memset(&o, 0, sizeof o);
    crdt_buf env = {0};
    uint8_t hash[32];
    su_set_str(&o, "address", "幸福路9号");
    su_set_str(&o, "community", "C01");
    su_set_str(&o, "grid", "C01-G01");
    su_make(&d, "household", "H9", &o, (uint64_t)time(NULL) * 1000, &env, hash);
    assert_int_equal(su_push(s.st, &env, (uint64_t)time(NULL) * 1000).result, STORE_APPLIED);
    su_ops_reset(&o);
    su_set_str(&o, "note", "伪造的修改");
    su_make(&d, "household", "H9", &o, (uint64_t)time(NULL) * 1000 + 1, &env, hash);
    env.p[env.n - 1] ^= 0x01;   /* the last byte of the envelope is the signature's */
    assert_int_equal(su_push(s.st, &env, (uint64_t)time(NULL) * 1000).result, STORE_APPLIED);
    /* The phone refuses the page; it holds nothing of H9. */
    dsd_sync_report rep;
    int rc = dsd_sync(b, s.url, NULL, &rep);
    if (rc != DSD_EFORGED) fail_msg("sync gave %d (%s): %s", rc, dsd_strerror(rc), dsd_errmsg(b));
    assert_non_null(strstr(dsd_errmsg(b), "device 900 seq 2"));
    uint8_t *rp = NULL;
    size_t rn = 0;
    assert_int_equal(dsd_record_get(b, "household", "H9", &rp, &rn), DSD_ENOTFOUND);
    free(rp);
    crdt_buf_free(&env);
    su_ops_free(&o);
    dsd_close(b);
    srv_stop(&s);
}

/* The schema from the server, signed: byte for byte the JSON the store was
 * made with, and usable by dsd_open, so a phone needs no copy of its own. */
static void test_schema_fetch(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *scope[] = {"H1"};
    dsd *a = dev_enroll(&s, "a", scope, 1);
    uint8_t *json = NULL;
    size_t n = 0;
    must(a, dsd_schema_fetch(a, s.url, NULL, &json, &n), "schema fetch");
    size_t fl = 0;
    char *file = NULL;
    FILE *f = fopen(SCHEMA, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    fl = (size_t)ftell(f);
    rewind(f);
    file = malloc(fl);
    assert_non_null(file);
    assert_int_equal(fread(file, 1, fl, f), fl);
    fclose(f);
    assert_int_equal(n, fl);
    assert_memory_equal(json, file, n);
    /* Saved to a file, it opens a device as the source tree's copy does. */
    char path[512], dir[512], err[256];
    snprintf(path, sizeof path, "%s/fetched-schema.json", s.d.root);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(json, 1, n, f), n);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/c", s.d.root);
    dsd *c = NULL;
    if (dsd_open(dir, path, &c, err, sizeof err)) fail_msg("dsd_open with the fetched schema: %s", err);
    dsd_close(c);
    free(file);
    dsd_free(json);
    dsd_close(a);
    srv_stop(&s);
}

/* A person moves from one volunteer's household into another's: the
 * receiving phone never got the person's earlier history (the feed of its
 * household only has deltas from the move on), so it fetches the merged
 * record and ends up equal to the server. */
static void test_person_moves_in(void **state)
{
    (void)state;
    srv s;
    srv_start(&s);
    const char *sa[] = {"H1"}, *sb[] = {"H2"};
    dsd *a = dev_enroll(&s, "move-a", sa, 1);
    dsd *b = dev_enroll(&s, "move-b", sb, 1);
    make_household(a, "H1", "C01", "G01");
    make_household(b, "H2", "C01", "G02");
    make_person(a, "P7", "H1", 7);
    must(a, dsd_tag_add(a, "P7", "低保"), "tag");
    must(a, dsd_visit_append(a, "person", "P7", "2026-09-21", "上门走访", NULL, NULL, NULL), "visit");
    dsd_sync_report rep;
    sync_ok(a, &s, &rep);
    sync_ok(b, &s, &rep);
    /* A moves P7 to H2 (moving out of A's scope is allowed). */
    must(a, dsd_set(a, "person", "P7", "household", NULL, "H2"), "move");
    sync_ok(a, &s, &rep);
    sync_ok(b, &s, &rep);
    dsd *devs[] = {a, b};
    check_converged(&s, devs, 2); /* byte-identical to the server, history included */
    uint8_t *p = NULL;
    size_t n = 0;
    must(b, dsd_record_get(b, "person", "P7", &p, &n), "record on b");
    dsd_free(p);
    dsd_close(a);
    dsd_close(b);
    srv_stop(&s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (dsd_global_init()) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enroll_edit_sync), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_sim_converges),    cmocka_unit_test(test_drop_during_push),
        cmocka_unit_test(test_killed_during_push), cmocka_unit_test(test_offline_days),
        cmocka_unit_test(test_scope_reassignment), cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_live),
        cmocka_unit_test(test_forged_envelope), cmocka_unit_test(test_schema_fetch), cmocka_unit_test(test_person_moves_in),
        cmocka_unit_test(test_rate_limited_sync), cmocka_unit_test(test_revocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
