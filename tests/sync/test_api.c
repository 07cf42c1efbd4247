/*
 * test_api.c — the staff dashboard's JSON API (sync/api.c), called directly
 * (sync_api_handle) on a store filled with signed deltas: authentication
 * everywhere, login / wrong password / lockout, cookies, CSRF on every
 * write, roles, overview numbers equal to the aggregates, search by ID
 * number (and a wrong checksum's 400), phone and name, the person page with
 * provenance, history and a conflict, resolving it with a server-signed
 * delta (the conflict is gone and store_verify still passes), review
 * stages, queues, reports, and the access log.
 *
 * The tests run in order on one store (group setup): later ones rely on the
 * conflict the earlier ones saw.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>

#include "storeutil.h"
#include "sync.h"
#include "testutil.h"

#define NOW 1789000000000ull   /* 2026-09-10 (a Thursday) */
#define YEAR 2026

static const store_pwopts cheap = {crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN};

typedef struct world {
    su_dir d;
    store *st;
    sync_api *api;
    su_dev dev1, dev2;
    char idnum1[19], idnum2[19];
    char staff_cookie[128], staff_csrf[65];
    char admin_cookie[128], admin_csrf[65];
    uint64_t now;
} world;

static world W;

/* ---- calling the API ----------------------------------------------------------- */

typedef struct reply {
    int status;
    json_t *j;                   /* parsed body when JSON, else NULL */
    char set_cookie[512];
    char hdr_name[64], hdr_value[256], ctype[64];
    char *body;                  /* NUL-terminated copy */
    size_t len;
} reply;

static void reply_free(reply *r)
{
    json_decref(r->j);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static reply call_full(const char *method, const char *path, const char *query,
                       const char *cookie, const char *csrf, const char *body, bool tls)
{
    sync_http_req req = {.method = method, .path = path, .query = query ? query : "",
                         .cookie = cookie ? cookie : "", .csrf = csrf ? csrf : "",
                         .content_type = body ? "application/json" : "", .origin = "",
                         .remote = "127.0.0.1", .tls = tls,
                         .body = (const uint8_t *)(body ? body : ""),
                         .body_len = body ? strlen(body) : 0};
    sync_http_resp resp;
    reply r;
    memset(&resp, 0, sizeof resp);
    memset(&r, 0, sizeof r);
    assert_int_equal(sync_api_handle(W.api, &req, W.now, &resp), 0);
    r.status = resp.status;
    memcpy(r.set_cookie, resp.set_cookie, sizeof r.set_cookie);
    memcpy(r.hdr_name, resp.extra_header_name, sizeof r.hdr_name);
    memcpy(r.hdr_value, resp.extra_header_value, sizeof r.hdr_value);
    memcpy(r.ctype, resp.content_type, sizeof r.ctype);
    r.body = malloc(resp.body.n + 1);
    assert_non_null(r.body);
    if (resp.body.n) memcpy(r.body, resp.body.p, resp.body.n);
    r.body[resp.body.n] = 0;
    r.len = resp.body.n;
    if (strstr(r.ctype, "json")) {
        json_error_t e;
        r.j = json_loadb(r.body, r.len, 0, &e);
        if (!r.j) fail_msg("response is not JSON: %s: %s", e.text, r.body);
    }
    crdt_buf_free(&resp.body);
    return r;
}

static reply call(const char *method, const char *path, const char *query, bool admin,
                  const char *body)
{
    return call_full(method, path, query, admin ? W.admin_cookie : W.staff_cookie,
                     admin ? W.admin_csrf : W.staff_csrf, body, false);
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : "";
}

static json_int_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v)) fail_msg("'%s' is not an integer", k);
    return json_integer_value(v);
}

/* Cookie header value from a Set-Cookie header. */
static void cookie_of(const char *set_cookie, char *out, size_t cap)
{
    size_t n = strcspn(set_cookie, ";");
    assert_true(n < cap);
    memcpy(out, set_cookie, n);
    out[n] = 0;
}

static int login(const char *user, const char *pw, char *cookie, size_t cap, char csrf[65])
{
    char body[256];
    snprintf(body, sizeof body, "{\"username\":\"%s\",\"password\":\"%s\"}", user, pw);
    reply r = call_full("POST", "/api/login", NULL, NULL, NULL, body, false);
    int st = r.status;
    if (st == 200) {
        cookie_of(r.set_cookie, cookie, cap);
        snprintf(csrf, 65, "%s", jstr(r.j, "csrf"));
    }
    reply_free(&r);
    return st;
}

/* ---- audit helpers ---------------------------------------------------------------- */

typedef struct afind {
    const char *actor, *action, *detail_sub;
    int found;
} afind;

static int afind_cb(const store_audit *e, void *arg)
{
    afind *f = arg;
    if ((!f->actor || !strcmp(e->actor, f->actor)) && !strcmp(e->action, f->action) &&
        (!f->detail_sub || strstr(e->detail, f->detail_sub)))
        f->found++;
    return 0;
}

static int audit_count(const char *actor, const char *action, const char *detail_sub)
{
    afind f = {actor, action, detail_sub, 0};
    store_txn *t;
    uint64_t next;
    assert_int_equal(store_begin(W.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_read(t, 0, 1000000, afind_cb, &f, &next), 0);
    store_abort(t);
    return f.found;
}

/* ---- the street ---------------------------------------------------------------------- */

static void push(su_dev *dv, const char *kind, const char *id, su_ops *o, uint64_t ms)
{
    crdt_buf env = {0};
    su_make(dv, kind, id, o, ms, &env, NULL);
    store_outcome oc = su_push(W.st, &env, ms);
    if (oc.result != STORE_APPLIED)
        fail_msg("push %s %s: result %d code %d", kind, id, oc.result, oc.code);
    crdt_buf_free(&env);
    su_ops_reset(o);
}

static void device(uint32_t id, const char *volunteer, uint64_t last_sync)
{
    store_txn *t;
    store_device d = {.id = id, .state = STORE_DEV_ACTIVE, .epoch = 1, .created_ms = NOW - 1000,
                      .last_sync_ms = last_sync};
    snprintf(d.volunteer, sizeof d.volunteer, "%s", volunteer);
    assert_int_equal(store_begin(W.st, STORE_RW, &t), 0);
    assert_int_equal(store_device_put(t, &d), 0);
    assert_int_equal(store_commit(t), 0);
}

static int setup(void **state)
{
    (void)state;
    memset(&W, 0, sizeof W);
    W.now = NOW;
    su_dir_make(&W.d, "api");
    W.st = su_store_new(&W.d, NULL);
    W.api = sync_api_new(W.st, &sync_config_default);
    assert_non_null(W.api);

    store_txn *t;
    assert_int_equal(store_begin(W.st, STORE_RW, &t), 0);
    assert_int_equal(store_staff_create(t, "alice", "陈爱丽", STORE_ROLE_STAFF,
                                        "alice-password", NOW, &cheap), 0);
    assert_int_equal(store_staff_create(t, "root", "管理员", STORE_ROLE_ADMIN, "root-password",
                                        NOW, &cheap), 0);
    assert_int_equal(store_staff_create(t, "carol", "卡罗", STORE_ROLE_STAFF, "carol-password",
                                        NOW, &cheap), 0);
    assert_int_equal(store_commit(t), 0);

    su_dev_init(&W.dev1, 1);
    su_dev_init(&W.dev2, 2);
    device(1, "李四", NOW - 3600 * 1000);
    device(2, "王五", NOW - 10ull * 86400 * 1000); /* not synced for 10 days */
    su_idnum(7, W.idnum1);
    su_idnum(8, W.idnum2);

    su_ops o;
    memset(&o, 0, sizeof o);
    uint64_t ms = NOW - 86400000ull;
    su_set_str(&o, "community", "C01");
    su_set_str(&o, "grid", "C01-G01");
    su_set_str(&o, "address", "幸福路1号");
    su_visit(&o, "visits", "2026-09-09", NULL);
    push(&W.dev1, "household", "H1", &o, ms);
    su_set_str(&o, "community", "C02");
    su_set_str(&o, "grid", "C02-G01");
    su_set_str(&o, "address", "和平街8号");
    push(&W.dev2, "household", "H2", &o, ms + 1);

    su_set_str(&o, "household", "H1");
    su_set_str(&o, "name", "张三");
    su_set_str(&o, "id_number", W.idnum1);
    su_set_str(&o, "phone", "13800138000");
    su_set_str(&o, "relation", "户主");
    su_set_keyed(&o, "payment", YEAR, "已缴费");
    su_add(&o, "tags", "低保");
    su_visit(&o, "visits", "2026-09-08", NULL);
    push(&W.dev1, "person", "P1", &o, ms + 2);
    su_set_str(&o, "household", "H1");
    su_set_str(&o, "name", "李梅");
    su_set_str(&o, "id_number", W.idnum2);
    su_set_keyed(&o, "payment", YEAR, "未缴费");
    su_add(&o, "tags", "特困");
    push(&W.dev1, "person", "P2", &o, ms + 3);
    su_set_str(&o, "household", "H2");
    su_set_str(&o, "name", "王芳");
    push(&W.dev2, "person", "P3", &o, ms + 4);
    /* Device 2 writes P1's name without having seen device 1's: a conflict. */
    su_set_str(&o, "name", "张山");
    push(&W.dev2, "person", "P1", &o, ms + 5);
    su_ops_free(&o);

    assert_int_equal(login("alice", "alice-password", W.staff_cookie, sizeof W.staff_cookie,
                           W.staff_csrf), 200);
    assert_int_equal(login("root", "root-password", W.admin_cookie, sizeof W.admin_cookie,
                           W.admin_csrf), 200);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sync_api_free(W.api);
    store_close(W.st);
    su_dir_remove(&W.d);
    return 0;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void t_auth_required(void **state)
{
    (void)state;
    const char *paths[] = {"/api/overview", "/api/search", "/api/persons/P1", "/api/households/H1",
                           "/api/devices", "/api/quarantine", "/api/queues/conflicts",
                           "/api/report/weekly", "/api/report/weekly.csv", "/api/me",
                           "/api/no-such-route"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        reply r = call_full("GET", paths[i], "q=x", NULL, NULL, NULL, false);
        if (r.status != 401) fail_msg("%s without a session: %d", paths[i], r.status);
        assert_string_equal(jstr(r.j, "error"), "unauthenticated");
        reply_free(&r);
        /* A forged cookie is no better. */
        r = call_full("GET", paths[i], "q=x",
                      "ds_session=0000000000000000000000000000000000000000000000000000000000000000",
                      NULL, NULL, false);
        assert_int_equal(r.status, 401);
        reply_free(&r);
    }
    reply r = call_full("POST", "/api/persons/P1/resolve", NULL, NULL, NULL,
                        "{\"field\":\"name\",\"value\":\"x\"}", false);
    assert_int_equal(r.status, 401);
    reply_free(&r);
    r = call_full("GET", "/api/login", NULL, NULL, NULL, NULL, false);
    assert_int_equal(r.status, 405);
    reply_free(&r);
}

static void t_login(void **state)
{
    (void)state;
    /* Cookie attributes; Secure only over TLS. */
    reply r = call_full("POST", "/api/login", NULL, NULL, NULL,
                        "{\"username\":\"carol\",\"password\":\"carol-password\"}", false);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.set_cookie, "ds_session="));
    assert_non_null(strstr(r.set_cookie, "HttpOnly"));
    assert_non_null(strstr(r.set_cookie, "SameSite=Strict"));
    assert_non_null(strstr(r.set_cookie, "Path=/"));
    assert_null(strstr(r.set_cookie, "Secure"));
    assert_string_equal(jstr(r.j, "username"), "carol");
    assert_string_equal(jstr(r.j, "display"), "卡罗");
    assert_string_equal(jstr(r.j, "role"), "staff");
    assert_int_equal(strlen(jstr(r.j, "csrf")), 64);
    char cookie[128];
    cookie_of(r.set_cookie, cookie, sizeof cookie);
    assert_true(sync_api_session_ok(W.api, cookie, W.now));
    assert_false(sync_api_session_ok(W.api, "ds_session=abc", W.now));
    assert_false(sync_api_session_ok(W.api, "", W.now));
    reply_free(&r);
    r = call_full("POST", "/api/login", NULL, NULL, NULL,
                  "{\"username\":\"carol\",\"password\":\"carol-password\"}", true);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.set_cookie, "; Secure"));
    reply_free(&r);

    /* GET /api/me gives the CSRF token back to a reloaded page. */
    r = call("GET", "/api/me", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "csrf"), W.staff_csrf);
    reply_free(&r);

    /* Wrong password, unknown user: the same 401. */
    r = call_full("POST", "/api/login", NULL, NULL, NULL,
                  "{\"username\":\"carol\",\"password\":\"wrong-password\"}", false);
    assert_int_equal(r.status, 401);
    assert_string_equal(jstr(r.j, "error"), "bad_login");
    assert_string_equal(r.set_cookie, "");
    reply_free(&r);
    r = call_full("POST", "/api/login", NULL, NULL, NULL,
                  "{\"username\":\"nobody\",\"password\":\"wrong-password\"}", false);
    assert_int_equal(r.status, 401);
    assert_string_equal(jstr(r.j, "error"), "bad_login");
    reply_free(&r);
    /* Bad input. */
    r = call_full("POST", "/api/login", NULL, NULL, NULL, "{\"username\":\"carol\"}", false);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(jstr(r.j, "message"), "password"));
    reply_free(&r);
    r = call_full("POST", "/api/login", NULL, NULL, NULL, "{not json", false);
    assert_int_equal(r.status, 400);
    assert_string_equal(jstr(r.j, "error"), "bad_json");
    reply_free(&r);
    assert_true(audit_count("staff:carol", "staff.login", NULL) >= 2);
    assert_true(audit_count("staff:carol", "staff.login_failed", NULL) >= 1);
}

static void t_lockout(void **state)
{
    (void)state;
    char cookie[128], csrf[65];
    /* carol failed once above; four more reach the default limit of five. */
    int st = 0;
    for (int i = 0; i < 4; i++) st = login("carol", "wrong-password", cookie, sizeof cookie, csrf);
    assert_int_equal(st, 429);
    /* Now even the right password is refused, with a clear message. */
    reply r = call_full("POST", "/api/login", NULL, NULL, NULL,
                        "{\"username\":\"carol\",\"password\":\"carol-password\"}", false);
    assert_int_equal(r.status, 429);
    assert_string_equal(jstr(r.j, "error"), "locked");
    reply_free(&r);
    /* ... until the lock expires. */
    W.now += 16ull * 60 * 1000;
    assert_int_equal(login("carol", "carol-password", cookie, sizeof cookie, csrf), 200);
    W.now = NOW;
}

static void t_csrf(void **state)
{
    (void)state;
    char cookie[128], csrf[65];
    assert_int_equal(login("carol", "carol-password", cookie, sizeof cookie, csrf), 200);
    /* No token, a wrong one, another session's: 403, nothing done. */
    reply r = call_full("POST", "/api/logout", NULL, cookie, NULL, NULL, false);
    assert_int_equal(r.status, 403);
    assert_string_equal(jstr(r.j, "error"), "csrf");
    reply_free(&r);
    r = call_full("POST", "/api/logout", NULL, cookie, W.staff_csrf, NULL, false);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call_full("POST", "/api/persons/P1/resolve", NULL, cookie, "x",
                  "{\"field\":\"name\",\"value\":\"张三\"}", false);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    assert_true(sync_api_session_ok(W.api, cookie, W.now));
    /* With the token: logged out, cookie cleared, session gone. */
    r = call_full("POST", "/api/logout", NULL, cookie, csrf, NULL, false);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.set_cookie, "Max-Age=0"));
    reply_free(&r);
    assert_false(sync_api_session_ok(W.api, cookie, W.now));
    r = call_full("GET", "/api/overview", NULL, cookie, NULL, NULL, false);
    assert_int_equal(r.status, 401);
    reply_free(&r);
}

static void check_agg(json_t *o, const store_agg *a)
{
    assert_int_equal(jint(o, "persons"), a->persons);
    assert_int_equal(jint(o, "enrolled"), a->enrolled);
    assert_int_equal(jint(o, "paid"), a->paid);
    assert_int_equal(jint(o, "unpaid"), a->persons - a->enrolled);
    assert_int_equal(jint(o, "visits_week"), a->visits_week);
    json_t *g = json_object_get(o, "groups");
    size_t ng;
    store_group_names(W.st, &ng);
    assert_int_equal(json_array_size(g), ng);
    for (size_t i = 0; i < ng; i++) {
        assert_int_equal(jint(json_array_get(g, i), "persons"), a->group[i]);
        assert_int_equal(jint(json_array_get(g, i), "unenrolled"), a->group_unenrolled[i]);
    }
}

static void t_overview(void **state)
{
    (void)state;
    reply r = call("GET", "/api/overview", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    store_txn *t;
    store_agg a;
    /* The API counts local (UTC+8) weeks; the store takes a time in them. */
    uint64_t day = (W.now + 8ull * 3600 * 1000) / 86400000ull;
    uint64_t at = day * 86400000ull + 43200000ull;
    assert_int_equal(store_begin(W.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_agg_get(t, NULL, NULL, at, &a), 0);
    check_agg(json_object_get(r.j, "station"), &a);
    assert_int_equal(a.persons, 3);
    assert_int_equal(a.paid, 1);
    assert_int_equal(a.visits_week, 2);
    json_t *comms = json_object_get(r.j, "communities");
    assert_int_equal(json_array_size(comms), 2);
    json_t *c1 = json_array_get(comms, 0);
    assert_string_equal(jstr(c1, "community"), "C01");
    assert_int_equal(store_agg_get(t, "C01", NULL, at, &a), 0);
    check_agg(c1, &a);
    json_t *g1 = json_array_get(json_object_get(c1, "grids"), 0);
    assert_string_equal(jstr(g1, "grid"), "C01-G01");
    assert_int_equal(store_agg_get(t, "C01", "C01-G01", at, &a), 0);
    check_agg(g1, &a);
    store_abort(t);
    /* Devices not synced for 3 days: device 2 only. */
    json_t *stale = json_object_get(json_object_get(r.j, "devices"), "stale");
    assert_int_equal(json_array_size(stale), 1);
    assert_int_equal(jint(json_array_get(stale, 0), "id"), 2);
    assert_string_equal(jstr(json_array_get(stale, 0), "volunteer"), "王五");
    reply_free(&r);
    r = call("GET", "/api/overview", "stale_days=30", false, NULL);
    assert_int_equal(json_array_size(json_object_get(json_object_get(r.j, "devices"), "stale")),
                     0);
    reply_free(&r);
    r = call("GET", "/api/overview", "stale_days=abc", false, NULL);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(jstr(r.j, "message"), "stale_days"));
    reply_free(&r);
}

static void t_search(void **state)
{
    (void)state;
    char q[64];
    snprintf(q, sizeof q, "q=%s", W.idnum1);
    reply r = call("GET", "/api/search", q, false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "kind"), "idnum");
    assert_int_equal(jint(r.j, "count"), 1);
    json_t *p = json_array_get(json_object_get(r.j, "results"), 0);
    assert_string_equal(jstr(p, "id"), "P1");
    assert_string_equal(jstr(p, "community"), "C01");
    /* The list masks ID numbers. */
    assert_null(strstr(r.body, W.idnum1));
    reply_free(&r);

    /* A wrong check character: 400 naming the checksum and the right one. */
    char bad[19];
    memcpy(bad, W.idnum1, 19);
    char right = bad[17];
    bad[17] = right == '0' ? '1' : '0';
    snprintf(q, sizeof q, "q=%s", bad);
    r = call("GET", "/api/search", q, false, NULL);
    assert_int_equal(r.status, 400);
    assert_string_equal(jstr(r.j, "error"), "bad_idnum_checksum");
    char want[64];
    snprintf(want, sizeof want, "should be %c, not %c", right, bad[17]);
    assert_non_null(strstr(jstr(r.j, "message"), want));
    assert_non_null(strstr(jstr(r.j, "message"), "校验位"));
    reply_free(&r);
    r = call("GET", "/api/search", "q=11010519491301001", false, NULL); /* 19 chars */
    assert_int_equal(r.status, 400);
    assert_string_equal(jstr(r.j, "error"), "bad_idnum");
    reply_free(&r);

    r = call("GET", "/api/search", "q=13800138000", false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "kind"), "phone");
    assert_int_equal(jint(r.j, "count"), 1);
    reply_free(&r);
    r = call("GET", "/api/search", "q=12345", false, NULL);
    assert_int_equal(r.status, 400);
    reply_free(&r);

    /* Names: both sides of a conflict find the person. */
    r = call("GET", "/api/search", "q=张三", false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "kind"), "name");
    assert_int_equal(jint(r.j, "count"), 1);
    reply_free(&r);
    r = call("GET", "/api/search", "q= 张山 ", false, NULL);
    assert_int_equal(jint(r.j, "count"), 1);
    reply_free(&r);
    r = call("GET", "/api/search", "q=无此人", false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "count"), 0);
    reply_free(&r);
    r = call("GET", "/api/search", "", false, NULL);
    assert_int_equal(r.status, 400);
    reply_free(&r);
    assert_true(audit_count("staff:alice", "person.search", NULL) >= 4);
}

static json_t *field_of(json_t *person, const char *name, json_t *key)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(person, "fields"), i, f) {
        if (!strcmp(jstr(f, "name"), name) &&
            (!key || json_equal(json_object_get(f, "key"), key)))
            return f;
    }
    fail_msg("no field %s", name);
    return NULL;
}

static void t_person(void **state)
{
    (void)state;
    int before = audit_count("staff:alice", "person.read", "P1");
    reply r = call("GET", "/api/persons/P1", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(audit_count("staff:alice", "person.read", "P1"), before + 1);
    /* Every schema field is listed, set or not. */
    assert_true(json_array_size(json_object_get(r.j, "fields")) >= 16);
    json_t *name = field_of(r.j, "name", NULL);
    assert_true(json_is_true(json_object_get(name, "conflict")));
    json_t *vals = json_object_get(name, "values");
    assert_int_equal(json_array_size(vals), 2);
    bool saw1 = false, saw2 = false;
    size_t i;
    json_t *v;
    json_array_foreach(vals, i, v) {
        json_t *by = json_object_get(v, "by");
        if (!strcmp(jstr(v, "value"), "张三")) {
            saw1 = true;
            assert_int_equal(jint(by, "dev"), 1);
            assert_string_equal(jstr(by, "volunteer"), "李四");
        } else {
            saw2 = true;
            assert_string_equal(jstr(v, "value"), "张山");
            assert_int_equal(jint(by, "dev"), 2);
            assert_string_equal(jstr(by, "volunteer"), "王五");
        }
        assert_true(jint(by, "hlc_ms") > 0);
    }
    assert_true(saw1 && saw2);
    assert_int_equal(json_array_size(json_object_get(name, "history")), 2);
    assert_int_equal(json_array_size(json_object_get(r.j, "conflicts")), 1);
    assert_int_equal(json_array_size(json_object_get(r.j, "history")), 2);
    json_t *pay = field_of(r.j, "payment", NULL);
    assert_int_equal(json_integer_value(json_object_get(pay, "key")), YEAR);
    json_t *hh = json_object_get(r.j, "household");
    assert_string_equal(jstr(hh, "id"), "H1");
    assert_string_equal(jstr(hh, "grid"), "C01-G01");
    reply_free(&r);

    r = call("GET", "/api/persons/NOPE", NULL, false, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    r = call("GET", "/api/persons/bad%20id", NULL, false, NULL);
    assert_int_equal(r.status, 400);
    reply_free(&r);

    r = call("GET", "/api/households/H1", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.j, "members")), 2);
    assert_int_equal(json_array_size(json_object_get(r.j, "visits")), 1);
    assert_int_equal(json_array_size(json_object_get(r.j, "person_visits")), 1);
    reply_free(&r);
    assert_true(audit_count("staff:alice", "household.read", "H1") >= 1);
}

static void t_queue_conflicts(void **state)
{
    (void)state;
    reply r = call("GET", "/api/queues/conflicts", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    json_t *items = json_object_get(r.j, "items");
    assert_int_equal(json_array_size(items), 1);
    assert_string_equal(jstr(json_array_get(items, 0), "id"), "P1");
    assert_true(json_is_null(json_object_get(r.j, "next")) ||
                json_is_string(json_object_get(r.j, "next")));
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", "limit=0", false, NULL);
    assert_int_equal(r.status, 400);
    reply_free(&r);
}

static void report_line(void *arg, const char *line)
{
    (void)arg;
    print_message("verify: %s\n", line);
}

static void t_resolve(void **state)
{
    (void)state;
    /* Bad input first: each a 400 with a message. */
    struct { const char *body, *msg; } bad[] = {
        {"{\"field\":\"nope\",\"value\":\"x\"}", "no field"},
        {"{\"field\":\"phone\",\"value\":\"13800138000\"}", "only mv fields"},
        {"{\"field\":\"payment\",\"value\":\"已缴费\"}", "'key' is required"},
        {"{\"field\":\"payment\",\"key\":1999,\"value\":\"已缴费\"}", "'key'"},
        {"{\"field\":\"payment\",\"key\":2026,\"value\":\"欠费\"}", "allowed values"},
        {"{\"field\":\"id_number\",\"value\":\"110105194901010010\"}", "checksum"},
        {"{\"field\":\"name\"}", "'value' is required"},
        {"{\"field\":\"name\",\"value\":7}", "must be a string"},
        /* a required text (the schema's "required"): blank is refused, with
         * the text the import and the devices' acks give (crdt_value_message) */
        {"{\"field\":\"name\",\"value\":\"\"}", "必填，不能为空。Required: must not be empty"},
        {"{\"field\":\"name\",\"value\":\" \\u3000 \"}", "必填，不能为空"},
        {"[1]", "JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        reply r = call("POST", "/api/persons/P1/resolve", NULL, false, bad[i].body);
        if (r.status != 400 || !strstr(jstr(r.j, "message"), bad[i].msg))
            fail_msg("%s: %d %s", bad[i].body, r.status, r.body);
        reply_free(&r);
    }
    /* Observed dots that do not match what is there now: 409. */
    reply r = call("POST", "/api/persons/P1/resolve", NULL, false,
                   "{\"field\":\"name\",\"value\":\"张三\",\"observed\":[[1,2]]}");
    assert_int_equal(r.status, 409);
    reply_free(&r);
    r = call("POST", "/api/persons/NOPE/resolve", NULL, false,
             "{\"field\":\"name\",\"value\":\"张三\"}");
    assert_int_equal(r.status, 404);
    reply_free(&r);

    /* Resolve, naming what was seen: device 1's seq 2 and device 2's seq 3. */
    r = call("POST", "/api/persons/P1/resolve", NULL, false,
             "{\"field\":\"name\",\"value\":\"张三\",\"observed\":[[1,2],[2,3]]}");
    if (r.status != 200) fail_msg("resolve: %d %s", r.status, r.body);
    assert_string_equal(jstr(json_object_get(r.j, "resolved_by"), "username"), "alice");
    assert_string_equal(jstr(json_object_get(r.j, "resolved_by"), "display"), "陈爱丽");
    json_t *d = json_object_get(r.j, "delta");
    assert_int_equal(jint(d, "dev"), 0);
    assert_int_equal(jint(d, "seq"), 1);
    assert_string_equal(jstr(r.j, "household"), "H1");
    uint64_t sseq = (uint64_t)jint(d, "sseq");
    reply_free(&r);

    /* The stored delta is the server's, signed with its key. */
    store_txn *t;
    crdt_buf env = {0};
    const uint8_t *db, *sig;
    size_t dl;
    assert_int_equal(store_begin(W.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get_envelope(t, sseq, &env), 0);
    assert_int_equal(wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig), 0);
    assert_int_equal(wire_delta_verify(db, dl, sig, store_server_pk(W.st)), 0);
    uint64_t head;
    uint8_t hh[32];
    assert_int_equal(store_chain_head(t, 0, &head, hh), 0);
    assert_int_equal(head, 1);
    store_abort(t);
    crdt_buf_free(&env);

    /* The page shows one value, the server's, naming the staff member. */
    r = call("GET", "/api/persons/P1", NULL, false, NULL);
    json_t *name = field_of(r.j, "name", NULL);
    assert_false(json_is_true(json_object_get(name, "conflict")));
    assert_int_equal(json_array_size(json_object_get(name, "values")), 1);
    json_t *v = json_array_get(json_object_get(name, "values"), 0);
    assert_string_equal(jstr(v, "value"), "张三");
    assert_true(json_is_true(json_object_get(json_object_get(v, "by"), "server")));
    assert_string_equal(jstr(json_object_get(v, "by"), "staff"), "alice");
    assert_int_equal(json_array_size(json_object_get(name, "history")), 3);
    assert_int_equal(json_array_size(json_object_get(r.j, "conflicts")), 0);
    reply_free(&r);
    /* A new API object (a restart) still knows who it was, from the audit log. */
    sync_api *again = sync_api_new(W.st, &sync_config_default);
    assert_non_null(again);
    sync_api_free(again);

    assert_int_equal(audit_count("staff:alice", "person.resolve", "server delta 0:1"), 1);
    r = call("GET", "/api/queues/conflicts", NULL, false, NULL);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 0);
    reply_free(&r);
    r = call("GET", "/api/search", "q=张山", false, NULL);
    assert_int_equal(jint(r.j, "count"), 0);
    reply_free(&r);

    /* A keyed field, with no conflict: a plain server write. */
    r = call("POST", "/api/persons/P2/resolve", NULL, false,
             "{\"field\":\"payment\",\"key\":2026,\"value\":\"代缴\"}");
    assert_int_equal(r.status, 200);
    reply_free(&r);

    uint64_t problems = 99;
    assert_int_equal(store_verify(W.st, report_line, NULL, &problems), 0);
    assert_int_equal(problems, 0);
}

static void t_review(void **state)
{
    (void)state;
    reply r = call("POST", "/api/persons/P1/review", NULL, false, "{\"stage\":\"社区已初审\"}");
    if (r.status != 200) fail_msg("review: %d %s", r.status, r.body);
    reply_free(&r);
    r = call("POST", "/api/persons/P1/review", NULL, false, "{\"stage\":\"待初审\"}");
    assert_int_equal(r.status, 409);
    reply_free(&r);
    r = call("POST", "/api/persons/P1/review", NULL, false, "{\"stage\":\"完成\"}");
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(jstr(r.j, "message"), "社区已初审"));
    reply_free(&r);
    r = call("GET", "/api/queues/review", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 1);
    reply_free(&r);
    r = call("POST", "/api/persons/P1/review", NULL, false, "{\"stage\":\"街道已办结\"}");
    assert_int_equal(r.status, 200);
    reply_free(&r);
    r = call("GET", "/api/queues/review", NULL, false, NULL);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 0);
    reply_free(&r);
    assert_int_equal(audit_count("staff:alice", "person.review", "P1"), 2);
    uint64_t problems = 99;
    assert_int_equal(store_verify(W.st, report_line, NULL, &problems), 0);
}

static void t_roles(void **state)
{
    (void)state;
    const char *admin_only[] = {"/api/devices", "/api/quarantine", "/api/staff"};
    for (size_t i = 0; i < 3; i++) {
        reply r = call("GET", admin_only[i], NULL, false, NULL);
        if (r.status != 403) fail_msg("%s as staff: %d", admin_only[i], r.status);
        reply_free(&r);
        r = call("GET", admin_only[i], NULL, true, NULL);
        if (r.status != 200) fail_msg("%s as admin: %d %s", admin_only[i], r.status, r.body);
        reply_free(&r);
    }
    reply r = call("GET", "/api/devices", NULL, true, NULL);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 2);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "items"), 0), "volunteer"),
                        "李四");
    reply_free(&r);
    r = call("POST", "/api/devices/2/revoke", NULL, false, "{\"mode\":\"soft\"}");
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("POST", "/api/devices/2/revoke", NULL, true, "{\"mode\":\"soft\"}");
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "state"), "revoked_soft");
    reply_free(&r);
    r = call("POST", "/api/devices/9/revoke", NULL, true, "{}");
    assert_int_equal(r.status, 404);
    reply_free(&r);

    /* Enrolling a phone from the page: a one-time token, its URI and a QR
     * matrix; staff may not; bad input says what is wrong. */
    r = call("POST", "/api/devices/enroll", NULL, false, "{\"volunteer\":\"王五\",\"scope\":[\"H1\"]}");
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("POST", "/api/devices/enroll", NULL, true, "{\"volunteer\":\"王五\",\"scope\":[]}");
    assert_int_equal(r.status, 400);
    reply_free(&r);
    r = call("POST", "/api/devices/enroll", NULL, true,
             "{\"volunteer\":\"王五\",\"scope\":[\"H1\",\"C01/G01\"],\"expires_days\":3}");
    assert_int_equal(r.status, 200);
    const char *tok = jstr(r.j, "token");
    assert_int_equal(strlen(tok), STORE_TOKEN_TEXT_LEN);
    assert_non_null(strstr(jstr(r.j, "uri"), tok));
    json_t *qr = json_object_get(r.j, "qr");
    assert_true(jint(qr, "size") >= 21);
    assert_int_equal(json_array_size(json_object_get(qr, "rows")), (size_t)jint(qr, "size"));
    {
        store_txn *tt;
        store_token got;
        assert_int_equal(store_begin(W.st, STORE_RW, &tt), 0);
        assert_int_equal(store_token_redeem(tt, tok, W.now, 77, &got), 0);
        assert_string_equal(got.volunteer, "王五");
        assert_int_equal(got.n_scope, 2);
        store_token_free(&got);
        store_abort(tt); /* leave it unredeemed */
    }
    assert_true(audit_count(NULL, "token.create", "王五") >= 1);
    reply_free(&r);
    store_txn *t;
    store_device d;
    assert_int_equal(store_begin(W.st, STORE_RDONLY, &t), 0);
    assert_int_equal(store_device_get(t, 2, &d), 0);
    store_abort(t);
    assert_int_equal(d.state, STORE_DEV_REVOKED_SOFT);
    assert_int_equal(d.revoked_at_seq, 3);
    assert_int_equal(audit_count("staff:root", "device.revoke_soft", "device 2"), 1);

    /* The revoked phone's later work goes to quarantine, which admins review. */
    su_ops o;
    crdt_buf env = {0};
    memset(&o, 0, sizeof o);
    su_set_str(&o, "note", "迟到的记录");
    su_make(&W.dev2, "person", "P3", &o, NOW, &env, NULL);
    assert_int_equal(su_push(W.st, &env, NOW).result, STORE_QUARANTINED);
    crdt_buf_free(&env);
    su_ops_free(&o);
    r = call("GET", "/api/quarantine", NULL, true, NULL);
    assert_int_equal(r.status, 200);
    json_t *qi = json_array_get(json_object_get(r.j, "items"), 0);
    assert_non_null(qi);
    assert_string_equal(jstr(qi, "reason"), "device_revoked");
    assert_string_equal(jstr(qi, "volunteer"), "王五");
    assert_string_equal(jstr(qi, "record"), "P3");
    assert_string_equal(jstr(qi, "state"), "pending");
    char qpath[64];
    snprintf(qpath, sizeof qpath, "/api/quarantine/%lld/accept", (long long)jint(qi, "qid"));
    reply_free(&r);
    r = call("POST", qpath, NULL, false, NULL);
    assert_int_equal(r.status, 403);
    reply_free(&r);
    r = call("POST", qpath, NULL, true, NULL);
    if (r.status != 200) fail_msg("accept: %d %s", r.status, r.body);
    assert_string_equal(jstr(r.j, "state"), "accepted");
    reply_free(&r);
    r = call("POST", qpath, NULL, true, NULL);
    assert_int_equal(r.status, 409);
    reply_free(&r);
    r = call("GET", "/api/quarantine", "state=pending", true, NULL);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 0);
    reply_free(&r);
    uint64_t problems = 99;
    assert_int_equal(store_verify(W.st, report_line, NULL, &problems), 0);

    r = call("POST", "/api/staff", NULL, true,
             "{\"username\":\"dave\",\"display\":\"戴\",\"role\":\"staff\","
             "\"password\":\"dave-password\"}");
    assert_int_equal(r.status, 201);
    reply_free(&r);
    r = call("POST", "/api/staff", NULL, true,
             "{\"username\":\"dave\",\"display\":\"戴\",\"role\":\"staff\","
             "\"password\":\"dave-password\"}");
    assert_int_equal(r.status, 409);
    reply_free(&r);
    r = call("POST", "/api/staff", NULL, true,
             "{\"username\":\"Eve\",\"display\":\"e\",\"role\":\"boss\",\"password\":\"x\"}");
    assert_int_equal(r.status, 400);
    reply_free(&r);
}

static void t_reports(void **state)
{
    (void)state;
    reply r = call("GET", "/api/report/weekly", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(r.j, "week_start"), "2026-09-07");
    assert_int_equal(json_array_size(json_object_get(r.j, "weeks")), 16);
    json_t *last = json_array_get(json_object_get(r.j, "weeks"), 15);
    assert_int_equal(jint(last, "visits"), 2);
    reply_free(&r);
    r = call("GET", "/api/report/weekly", "week=2026-02-30", false, NULL);
    assert_int_equal(r.status, 400);
    reply_free(&r);
    r = call("GET", "/api/report/weekly.csv", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/csv"));
    assert_string_equal(r.hdr_name, "content-disposition:");
    assert_non_null(strstr(r.hdr_value, "attachment; filename=\"weekly-2026-09-07.csv\""));
    assert_memory_equal(r.body, "\xEF\xBB\xBF", 3);
    assert_non_null(strstr(r.body, "社区,网格"));
    assert_non_null(strstr(r.body, "C01,C01-G01,2,"));
    assert_non_null(strstr(r.body, "全街道,合计,3,"));
    reply_free(&r);
    assert_int_equal(audit_count("staff:alice", "report.export", NULL), 1);
}

/* ---- issue #14: equal values, totals and pages, places, heads, Chinese errors ------------ */

static su_dev dev3, dev4;

/* The writers of a side as "dev:seq" pairs appended to a JSON array of [dev, seq]. */
static void side_dots(json_t *side, json_t *out)
{
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(side, "writers"), i, w)
        json_array_append_new(out, json_pack("[II]", jint(w, "dev"), jint(w, "seq")));
}

static json_t *side_with(json_t *field, const char *value)
{
    size_t i;
    json_t *sd;
    json_array_foreach(json_object_get(field, "sides"), i, sd)
        if (!strcmp(jstr(sd, "value"), value)) return sd;
    fail_msg("no side %s", value);
    return NULL;
}

static json_t *item_of(json_t *items, const char *id)
{
    size_t i;
    json_t *x;
    json_array_foreach(items, i, x)
        if (!strcmp(jstr(x, "id"), id)) return x;
    return NULL;
}

/* Point 3: two phones writing 代缴 agree; 代缴, 代缴 and 已缴费 are two values. */
static void t_equal_values(void **state)
{
    (void)state;
    su_dev_init(&dev3, 3);
    su_dev_init(&dev4, 4);
    device(3, "赵六", NOW - 3600 * 1000);
    device(4, "钱七", NOW - 3600 * 1000);
    su_ops o;
    memset(&o, 0, sizeof o);
    uint64_t ms = NOW - 7200 * 1000;
    /* P5: 代缴 from devices 1 and 3, 已缴费 from device 4, none seeing the others. */
    su_set_str(&o, "household", "H1");
    su_set_str(&o, "name", "孙八");
    su_set_keyed(&o, "payment", YEAR, "代缴");
    push(&W.dev1, "person", "P5", &o, ms);
    su_set_keyed(&o, "payment", YEAR, "代缴");
    push(&dev3, "person", "P5", &o, ms + 1);
    su_set_keyed(&o, "payment", YEAR, "已缴费");
    push(&dev4, "person", "P5", &o, ms + 2);
    /* P6: 代缴 from devices 1 and 3 only: no conflict. */
    su_set_str(&o, "household", "H1");
    su_set_str(&o, "name", "周九");
    su_set_keyed(&o, "payment", YEAR, "代缴");
    push(&W.dev1, "person", "P6", &o, ms + 3);
    su_set_keyed(&o, "payment", YEAR, "代缴");
    push(&dev3, "person", "P6", &o, ms + 4);
    su_ops_free(&o);

    /* The person page: three writes, two values, each with its writers. */
    reply r = call("GET", "/api/persons/P5", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    json_t *pay = field_of(r.j, "payment", NULL);
    assert_true(json_is_true(json_object_get(pay, "conflict")));
    assert_int_equal(json_array_size(json_object_get(pay, "values")), 3);
    assert_int_equal(json_array_size(json_object_get(pay, "sides")), 2);
    json_t *daijiao = side_with(pay, "代缴"), *paid = side_with(pay, "已缴费");
    assert_int_equal(json_array_size(json_object_get(daijiao, "writers")), 2);
    assert_int_equal(json_array_size(json_object_get(paid, "writers")), 1);
    json_t *w0 = json_array_get(json_object_get(daijiao, "writers"), 0);
    json_t *w1 = json_array_get(json_object_get(daijiao, "writers"), 1);
    assert_string_equal(jstr(w0, "volunteer"), "李四");
    assert_string_equal(jstr(w1, "volunteer"), "赵六");
    assert_true(jint(w0, "hlc_ms") > 0 && jint(w1, "hlc_ms") > 0);
    assert_int_equal(json_array_size(json_object_get(r.j, "conflicts")), 1);
    json_t *all = json_array(), *some = json_array();
    side_dots(daijiao, all);
    side_dots(paid, all);
    side_dots(daijiao, some);
    reply_free(&r);

    /* P6: one value with two writers is no conflict anywhere. */
    r = call("GET", "/api/persons/P6", NULL, false, NULL);
    pay = field_of(r.j, "payment", NULL);
    assert_false(json_is_true(json_object_get(pay, "conflict")));
    assert_int_equal(json_array_size(json_object_get(pay, "sides")), 1);
    assert_int_equal(json_array_size(json_object_get(side_with(pay, "代缴"), "writers")), 2);
    assert_int_equal(json_array_size(json_object_get(r.j, "conflicts")), 0);
    reply_free(&r);

    /* Summaries (search, members, queue) list each value once. */
    r = call("GET", "/api/search", "q=周九", false, NULL);
    json_t *s6 = json_array_get(json_object_get(r.j, "results"), 0);
    assert_int_equal(json_array_size(json_object_get(s6, "payment")), 1);
    assert_int_equal(jint(s6, "conflicts"), 0);
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", NULL, false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "total"), 1);
    json_t *items = json_object_get(r.j, "items");
    assert_null(item_of(items, "P6"));
    json_t *i5 = item_of(items, "P5");
    assert_non_null(i5);
    assert_int_equal(jint(i5, "conflicts"), 1);
    assert_int_equal(json_array_size(json_object_get(i5, "payment")), 2);
    json_t *cf = json_array_get(json_object_get(i5, "conflict_fields"), 0);
    assert_string_equal(jstr(cf, "field"), "payment");
    assert_int_equal(json_array_size(json_object_get(cf, "values")), 2);
    assert_int_equal(json_array_size(json_object_get(side_with(cf, "代缴"), "writers")), 2);
    reply_free(&r);
    /* The overview and the report count the same. */
    r = call("GET", "/api/overview", NULL, false, NULL);
    assert_int_equal(jint(json_object_get(r.j, "conflicts"), "persons"), 1);
    assert_int_equal(jint(json_object_get(r.j, "conflicts"), "fields"), 1);
    reply_free(&r);
    r = call("GET", "/api/report/weekly", NULL, false, NULL);
    assert_int_equal(jint(json_object_get(r.j, "conflicts"), "persons"), 1);
    reply_free(&r);

    /* 以此为准 must supersede every write: naming only the 代缴 writers is 409. */
    char body[512], *obs = json_dumps(some, JSON_COMPACT);
    snprintf(body, sizeof body,
             "{\"field\":\"payment\",\"key\":%d,\"value\":\"代缴\",\"observed\":%s}", YEAR, obs);
    free(obs);
    r = call("POST", "/api/persons/P5/resolve", NULL, false, body);
    assert_int_equal(r.status, 409);
    assert_string_equal(jstr(r.j, "error"), "changed");
    reply_free(&r);
    obs = json_dumps(all, JSON_COMPACT);
    snprintf(body, sizeof body,
             "{\"field\":\"payment\",\"key\":%d,\"value\":\"代缴\",\"observed\":%s}", YEAR, obs);
    free(obs);
    r = call("POST", "/api/persons/P5/resolve", NULL, false, body);
    if (r.status != 200) fail_msg("resolve P5: %d %s", r.status, r.body);
    reply_free(&r);
    json_decref(all);
    json_decref(some);
    r = call("GET", "/api/persons/P5", NULL, false, NULL);
    pay = field_of(r.j, "payment", NULL);
    assert_false(json_is_true(json_object_get(pay, "conflict")));
    assert_int_equal(json_array_size(json_object_get(pay, "values")), 1);
    assert_int_equal(json_array_size(json_object_get(pay, "sides")), 1);
    json_t *wr = json_array_get(json_object_get(json_array_get(json_object_get(pay, "sides"), 0),
                                                "writers"), 0);
    assert_true(json_is_true(json_object_get(wr, "server")));
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", NULL, false, NULL);
    assert_int_equal(jint(r.j, "total"), 0);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 0);
    reply_free(&r);
    r = call("GET", "/api/overview", NULL, false, NULL);
    assert_int_equal(jint(json_object_get(r.j, "conflicts"), "persons"), 0);
    reply_free(&r);
    uint64_t problems = 99;
    assert_int_equal(store_verify(W.st, report_line, NULL, &problems), 0);
    assert_int_equal(problems, 0);
}

/* A 400 whose message names the parameter, in Chinese first (message_zh). */
static void bad_query(const char *path, const char *query, bool admin, const char *sub)
{
    reply r = call("GET", path, query, admin, NULL);
    if (r.status != 400 || !strstr(jstr(r.j, "message"), sub) || !*jstr(r.j, "message_zh") ||
        !*jstr(r.j, "message_en"))
        fail_msg("%s?%s: %d %s", path, query, r.status, r.body);
    assert_string_equal(jstr(r.j, "error"), "bad_parameter");
    reply_free(&r);
}

/* Point 6: totals and pages for queues, search and quarantine; the
 * overview by community and grid, paged; household heads by name. */
static void t_pages(void **state)
{
    (void)state;
    su_ops o;
    memset(&o, 0, sizeof o);
    uint64_t ms = NOW - 3600 * 1000;
    char id[16];
    /* Seven persons named 同名; five of them with a name conflict (同名 / 童名). */
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "Q%d", i);
        su_set_str(&o, "household", "H2");
        su_set_str(&o, "name", "同名");
        push(&W.dev1, "person", id, &o, ms + 10 * (uint64_t)i);
        if (i < 5) {
            su_set_str(&o, "name", "童名");
            push(&dev3, "person", id, &o, ms + 10 * (uint64_t)i + 1);
        }
    }
    /* H1's head is P1. */
    su_set_str(&o, "head", "P1");
    push(&W.dev1, "household", "H1", &o, ms + 100);
    su_ops_free(&o);

    /* The conflicts queue: five, two at a time, by offset or by after. */
    reply r = call("GET", "/api/queues/conflicts", "limit=2", false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "total"), 5);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 2);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "items"), 0), "id"), "Q0");
    assert_string_equal(jstr(r.j, "next"), "Q1");
    json_t *it = json_array_get(json_object_get(r.j, "items"), 0);
    assert_string_equal(jstr(it, "community"), "C02");
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", "limit=2&after=Q1", false, NULL);
    assert_int_equal(jint(r.j, "offset"), 2);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "items"), 0), "id"), "Q2");
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", "limit=2&offset=4", false, NULL);
    assert_int_equal(jint(r.j, "total"), 5);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "items"), 0), "id"), "Q4");
    assert_true(json_is_null(json_object_get(r.j, "next")));
    reply_free(&r);
    /* The server joins lws's decoded arguments with '&' and writes a '%' or
     * '&' inside one as %25 / %26 (server.c, query_copy): "q=同名%26x" searches
     * for "同名&x" (nobody), and a parameter the route does not know is
     * ignored, not taken into its neighbour's value. */
    r = call("GET", "/api/search", "q=同名&limit=3&offset=6", false, NULL);
    assert_int_equal(jint(r.j, "total"), 7);
    assert_int_equal(jint(r.j, "count"), 1);
    reply_free(&r);
    r = call("GET", "/api/search", "q=同名%26x&limit=3", false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "total"), 0);
    assert_int_equal(jint(r.j, "limit"), 3);
    reply_free(&r);
    r = call("GET", "/api/search", "q=同名&_=1733&limit=3", false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "total"), 7);
    assert_int_equal(jint(r.j, "count"), 3);
    reply_free(&r);
    r = call("GET", "/api/search", "q=%2525", false, NULL);   /* the name "%25": no one */
    assert_int_equal(r.status, 200);
    assert_int_equal(jint(r.j, "total"), 0);
    reply_free(&r);
    r = call("GET", "/api/queues/conflicts", "offset=9", false, NULL);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 0);
    reply_free(&r);
    bad_query("/api/queues/conflicts", "limit=201", false, "limit");
    bad_query("/api/queues/conflicts", "offset=-1", false, "offset");
    bad_query("/api/queues/conflicts", "offset=1&after=Q1", false, "after");
    bad_query("/api/queues/conflicts", "after=no%20id", false, "after");

    /* A restart (a new API object, its index built from scratch) counts the
     * same as the index caught up from the log. */
    {
        sync_api *old = W.api;
        char cookie[128], csrf[65], sc[128], scs[65];
        memcpy(sc, W.staff_cookie, sizeof sc);
        memcpy(scs, W.staff_csrf, sizeof scs);
        W.api = sync_api_new(W.st, &sync_config_default);
        assert_int_equal(login("alice", "alice-password", cookie, sizeof cookie, csrf), 200);
        memcpy(W.staff_cookie, cookie, sizeof cookie);
        memcpy(W.staff_csrf, csrf, sizeof csrf);
        r = call("GET", "/api/queues/conflicts", "limit=1", false, NULL);
        assert_int_equal(jint(r.j, "total"), 5);
        reply_free(&r);
        sync_api_free(W.api);
        W.api = old;
        memcpy(W.staff_cookie, sc, sizeof sc);
        memcpy(W.staff_csrf, scs, sizeof scs);
    }

    /* The review queue: totals per open stage, filtered, paged. */
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof path, "/api/persons/Q%d/review", i);
        r = call("POST", path, NULL, false, i < 2 ? "{\"stage\":\"待初审\"}"
                                                  : "{\"stage\":\"社区已初审\"}");
        assert_int_equal(r.status, 200);
        reply_free(&r);
    }
    r = call("GET", "/api/queues/review", "limit=1", false, NULL);
    assert_int_equal(jint(r.j, "total"), 3);
    assert_int_equal(json_array_size(json_object_get(r.j, "items")), 1);
    json_t *os = json_object_get(r.j, "open_stages");
    assert_int_equal(json_array_size(os), 2);
    assert_string_equal(jstr(json_array_get(os, 0), "stage"), "待初审");
    assert_int_equal(jint(json_array_get(os, 0), "count"), 2);
    assert_int_equal(jint(json_array_get(os, 1), "count"), 1);
    reply_free(&r);
    r = call("GET", "/api/queues/review", "stage=社区已初审", false, NULL);
    assert_int_equal(jint(r.j, "total"), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "items"), 0), "id"), "Q2");
    reply_free(&r);
    bad_query("/api/queues/review", "stage=街道已办结", false, "stage");

    /* Search: seven results, paged; the page says how many in all. */
    r = call("GET", "/api/search", "q=同名&limit=3", false, NULL);
    assert_int_equal(jint(r.j, "total"), 7);
    assert_int_equal(jint(r.j, "count"), 3);
    reply_free(&r);
    r = call("GET", "/api/search", "q=同名&limit=3&offset=6", false, NULL);
    assert_int_equal(jint(r.j, "count"), 1);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "results"), 0), "id"), "Q6");
    reply_free(&r);
    bad_query("/api/search", "q=同名&limit=0", false, "limit");

    /* The overview by community and grid, one community a page. */
    r = call("GET", "/api/overview", "limit=1", false, NULL);
    assert_int_equal(jint(r.j, "total_communities"), 2);
    assert_int_equal(json_array_size(json_object_get(r.j, "communities")), 1);
    assert_int_equal(json_array_size(json_object_get(r.j, "places")), 2);
    reply_free(&r);
    r = call("GET", "/api/overview", "limit=1&offset=1", false, NULL);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "communities"), 0), "community"),
                        "C02");
    reply_free(&r);
    r = call("GET", "/api/overview", "community=C01", false, NULL);
    assert_int_equal(jint(r.j, "total_communities"), 1);
    json_t *c1 = json_array_get(json_object_get(r.j, "communities"), 0);
    assert_string_equal(jstr(c1, "community"), "C01");
    assert_int_equal(json_array_size(json_object_get(c1, "grids")), 1);
    reply_free(&r);
    r = call("GET", "/api/overview", "grid=C02-G01", false, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(jstr(json_array_get(json_object_get(r.j, "communities"), 0), "community"),
                        "C02");
    reply_free(&r);
    bad_query("/api/overview", "community=C99", false, "C99");
    bad_query("/api/overview", "grid=G77", false, "G77");
    bad_query("/api/overview", "community=C01&grid=C02-G01", false, "C02-G01");
    bad_query("/api/overview", "community=", false, "community");
    bad_query("/api/overview",
              "community=C0123456789012345678901234567890123456789", false, "community");
    bad_query("/api/overview", "limit=0", false, "limit");
    bad_query("/api/overview", "limit=101", false, "limit");
    bad_query("/api/overview", "offset=10001", false, "offset");

    /* Quarantine: counts per state, pages by offset. */
    r = call("GET", "/api/quarantine", "state=all&limit=1", true, NULL);
    assert_int_equal(r.status, 200);
    json_t *qc = json_object_get(r.j, "counts");
    assert_int_equal(jint(qc, "all"), jint(r.j, "total"));
    assert_int_equal(jint(qc, "accepted"), 1);
    assert_int_equal(jint(qc, "pending") + jint(qc, "accepted") + jint(qc, "rejected"),
                     jint(qc, "all"));
    reply_free(&r);
    r = call("GET", "/api/quarantine", "state=accepted", true, NULL);
    assert_int_equal(jint(r.j, "total"), 1);
    reply_free(&r);
    bad_query("/api/quarantine", "state=open", true, "state");

    /* The household head by name, on the household and the person pages. */
    r = call("GET", "/api/households/H1", NULL, false, NULL);
    json_t *head = json_object_get(r.j, "head");
    assert_string_equal(jstr(head, "id"), "P1");
    assert_string_equal(json_string_value(json_array_get(json_object_get(head, "names"), 0)),
                        "张三");
    reply_free(&r);
    r = call("GET", "/api/persons/P2", NULL, false, NULL);
    head = json_object_get(json_object_get(r.j, "household"), "head");
    assert_string_equal(json_string_value(json_array_get(json_object_get(head, "names"), 0)),
                        "张三");
    reply_free(&r);
    r = call("GET", "/api/search", "q=李梅", false, NULL);
    head = json_object_get(json_array_get(json_object_get(r.j, "results"), 0), "household_head");
    assert_string_equal(jstr(head, "id"), "P1");
    reply_free(&r);
}

static void t_misc(void **state)
{
    (void)state;
    reply r = call("DELETE", "/api/overview", NULL, false, NULL);
    assert_int_equal(r.status, 405);
    reply_free(&r);
    r = call("GET", "/api/nope", NULL, false, NULL);
    assert_int_equal(r.status, 404);
    reply_free(&r);
    /* A POST body that is not declared JSON. */
    sync_http_req req = {.method = "POST", .path = "/api/persons/P1/review", .query = "",
                         .cookie = W.staff_cookie, .csrf = W.staff_csrf,
                         .content_type = "text/plain", .origin = "", .remote = "x",
                         .body = (const uint8_t *)"{}", .body_len = 2};
    sync_http_resp resp;
    memset(&resp, 0, sizeof resp);
    sync_api_handle(W.api, &req, W.now, &resp);
    assert_int_equal(resp.status, 400);
    crdt_buf_free(&resp.body);
    /* Sessions expire after 2 h idle (last: this ends every session). */
    assert_true(sync_api_session_ok(W.api, W.staff_cookie, W.now + 3600ull * 1000));
    assert_false(sync_api_session_ok(W.api, W.staff_cookie, W.now + 3ull * 3600 * 1000));
    r = call("GET", "/api/me", NULL, false, NULL);
    assert_int_equal(r.status, 401); /* W.now is earlier, but the session is gone */
    reply_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_auth_required), cmocka_unit_test(t_login),
        cmocka_unit_test(t_lockout),       cmocka_unit_test(t_csrf),
        cmocka_unit_test(t_overview),      cmocka_unit_test(t_search),
        cmocka_unit_test(t_person),        cmocka_unit_test(t_queue_conflicts),
        cmocka_unit_test(t_resolve),       cmocka_unit_test(t_review),
        cmocka_unit_test(t_roles),         cmocka_unit_test(t_reports),
        cmocka_unit_test(t_equal_values),  cmocka_unit_test(t_pages),
        cmocka_unit_test(t_misc),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
