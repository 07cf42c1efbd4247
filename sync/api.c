/*
 * api.c — the staff dashboard's JSON API (issue #7; routes in docs/API.md).
 *
 * sync_api_handle is a function from one HTTP request to one response: the
 * server (server.c) collects the request, calls it on its API thread and
 * writes the bytes back.  Nothing here touches a socket or libwebsockets.
 *
 * Invariants
 *   - Authentication first: every route but POST /api/login needs a live
 *     session (401 otherwise), whatever the path, so an unauthenticated
 *     caller learns nothing (not even which routes exist).  Every non-GET
 *     request with a session must carry the session's CSRF token in
 *     X-CSRF-Token (403 otherwise), compared in constant time.
 *   - Roles: STORE_ROLE_STAFF reads, resolves conflicts, raises review
 *     stages and exports; STORE_ROLE_ADMIN also sees devices, quarantine and
 *     staff accounts (403 for staff).
 *   - Every response that shows a person's record is preceded by an access
 *     log entry (audit "person.read", actor "staff:NAME"); if that entry
 *     cannot be written the record is not shown (503).
 *   - Pages read indexes and aggregates (store_get_record, store_lookup,
 *     store_household_members, store_agg_get).  The conflicts and review
 *     queues read an index the API keeps in memory (qx_*: built by one walk
 *     over the persons when first needed, then caught up from the delta log
 *     on each use), so they have exact totals and pages.
 *   - The server writes only server-signed deltas (device 0, its own chain,
 *     HLC past the store's high-water mark), appended with their audit
 *     entry in ONE write transaction: a staff edit is never stored without
 *     the name of who made it, nor logged without being stored.
 *   - Sessions live in memory only (restart = log in again): 32 random
 *     bytes as hex, with an idle and an absolute expiry.  The session table
 *     is the only state shared with other threads (sync_api_session_ok),
 *     guarded by one mutex; everything else runs on the API thread alone.
 *   - Read transactions never outlive a request.
 */
#include "sync.h"

#include <ctype.h>
#include <jansson.h>
#include <qrencode.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_SESS_MAX 1024
#define API_SESS_IDLE_MS (2ull * 3600 * 1000)    /* idle expiry */
#define API_SESS_ABS_MS (12ull * 3600 * 1000)    /* absolute expiry */
#define API_COOKIE "ds_session"
#define API_HISTORY_MAX 500        /* deltas shown in a person's history */
#define API_DEVICES_MAX 100000     /* device ids walked for listings */
#define API_TZ_OFFSET_MS (8ull * 3600 * 1000) /* China Standard Time, no DST */
#define API_DAY_MS 86400000ull
#define API_SERVER_DEV 0u          /* the server's own device id */
#define API_WRITE_TRIES 4
#define API_OFFSET_MAX 10000000u   /* paging: the greatest offset accepted */
/* Between the Chinese and the English of an error message (send_err). */
#define EN "\x1f"

/* ---- the API object ------------------------------------------------------------ */

typedef struct api_sess {
    bool used;
    char id[65];                 /* 32 random bytes, hex */
    char csrf[65];
    char username[STORE_USER_MAX + 1];
    char display[STORE_DISPLAY_MAX + 1];
    uint8_t role;
    uint64_t created_ms, seen_ms;
} api_sess;

typedef struct srv_dot {         /* server delta seq -> staff who made it */
    uint64_t seq;
    char username[STORE_USER_MAX + 1];
} srv_dot;

typedef struct qx_ent {         /* a person in the conflicts or review queue */
    char id[CRDT_RECID_MAX + 1];
    uint16_t conflicts;          /* crdt_record_conflicts (0: none) */
    int16_t stage;               /* open review ordinal, -1: none or done */
} qx_ent;

struct sync_api {
    store *st;
    sync_config cfg;
    pthread_mutex_t mu;          /* guards sess[] only */
    api_sess *sess;              /* API_SESS_MAX slots */
    srv_dot *dots;               /* API thread only */
    size_t n_dots, cap_dots;
    /* The queue index (API thread only; see "queues" below). */
    qx_ent *qx;                  /* sorted by id */
    size_t qx_n, qx_cap;
    uint64_t qx_sseq;            /* current through this server seq */
    bool qx_ready;
};

/* One request being handled. */
typedef struct rq {
    sync_api *api;
    const sync_http_req *req;
    sync_http_resp *resp;
    uint64_t now;
    api_sess s;                  /* copy of the caller's session */
    bool authed;
    char actor[STORE_AUDIT_ACTOR_MAX + 1];
    const char *seg[6];          /* path segments after /api/ */
    size_t seg_len[6];
    size_t nseg;
    char segbuf[512];
} rq;

/* ---- responses -------------------------------------------------------------------- */

static void resp_body(sync_http_resp *r, const char *p, size_t n)
{
    crdt_buf_reset(&r->body);
    if (crdt_buf_append(&r->body, p, n)) {
        r->status = 500;
        crdt_buf_reset(&r->body);
    }
}

static void send_json(rq *q, int status, json_t *j)
{
    char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    snprintf(q->resp->content_type, sizeof q->resp->content_type, "%s",
             "application/json; charset=utf-8");
    if (!txt) {
        static const char oom[] = "{\"error\":\"internal\",\"message\":\"out of memory\"}";
        q->resp->status = 500;
        resp_body(q->resp, oom, sizeof oom - 1);
        return;
    }
    q->resp->status = status;
    resp_body(q->resp, txt, strlen(txt));
    free(txt);
}

__attribute__((format(printf, 4, 5)))
static int send_err(rq *q, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_object();
    json_object_set_new(j, "error", json_string(code));
    /* "中文" EN "English": message is both (Chinese first), message_zh and
     * message_en each one, so a page shows one language. */
    char *sep = strchr(msg, EN[0]);
    if (sep) {
        *sep = 0;
        json_t *zh = json_string(msg), *en = json_string(sep + 1);
        json_object_set_new(j, "message_zh", zh ? zh : json_null());
        json_object_set_new(j, "message_en", en ? en : json_null());
        *sep = ' ';
    }
    json_t *m = json_string(msg);
    json_object_set_new(j, "message", m ? m : json_string("(message not UTF-8)"));
    send_json(q, status, j);
    return status;
}

/* A store error as a response: retryable ones are 503. */
static int send_store_err(rq *q, int rc, const char *what)
{
    if (rc == STORE_ENOTFOUND)
        return send_err(q, 404, "not_found", "没有找到。" EN "%s: not found", what);
    if (store_retryable(rc) || rc == STORE_EBUSY)
        return send_err(q, 503, "unavailable", "服务器正忙，请稍后再试。" EN "%s: %s (retry later)",
                        what, store_strerror(rc));
    return send_err(q, 500, "internal", "服务器内部错误，请联系管理员。" EN "%s: %s", what,
                    store_strerror(rc));
}

/* ---- small helpers ------------------------------------------------------------------- */

static bool recid_ok(const char *s, size_t n)
{
    if (n == 0 || n > CRDT_RECID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '_' || c == '.' || c == '-')) return false;
    }
    return true;
}

/*
 * Query parameter `name` into buf; NULL if absent.  The server hands the
 * decoded arguments over joined by '&', with '%' and '&' inside them written
 * %25 and %26 (sync_http_req.query), so a parameter ends at the next '&' and
 * only those two escapes are undone here.  A value longer than cap - 1 bytes
 * is cut there (every route's own check then refuses what it cannot take).
 */
static const char *qparam(rq *q, const char *name, char *buf, size_t cap)
{
    const char *p = q->req->query ? q->req->query : "";
    size_t nl = strlen(name);
    while (*p) {
        size_t len = strcspn(p, "&");
        if (len >= nl && !memcmp(p, name, nl) && (len == nl || p[nl] == '=')) {
            size_t o = 0;
            for (size_t i = len == nl ? len : nl + 1; i < len && o + 1 < cap; i++) {
                if (p[i] == '%' && i + 2 < len && p[i + 1] == '2' &&
                    (p[i + 2] == '5' || p[i + 2] == '6')) {
                    buf[o++] = p[i + 2] == '5' ? '%' : '&';
                    i += 2;
                } else {
                    buf[o++] = p[i];
                }
            }
            buf[o] = 0;
            return buf;
        }
        p += len;
        if (*p == '&') p++;
    }
    return NULL;
}

/* Unsigned decimal parameter in [lo, hi]; def if absent.  -1: bad (400 sent). */
static int qnum(rq *q, const char *name, uint64_t lo, uint64_t hi, uint64_t def, uint64_t *out)
{
    char b[32];
    const char *v = qparam(q, name, b, sizeof b);
    *out = def;
    if (!v) return 0;
    char *end;
    if (!*v || !isdigit((unsigned char)*v)) goto bad;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || x < lo || x > hi) goto bad;
    *out = x;
    return 0;
bad:
    send_err(q, 400, "bad_parameter", "参数 %s 应为 %llu 至 %llu 的整数。" EN
             "Parameter '%s' must be an integer from %llu to %llu", name,
             (unsigned long long)lo, (unsigned long long)hi, name, (unsigned long long)lo,
             (unsigned long long)hi);
    return -1;
}



/* Local (China) day number of a server time. */
static int64_t local_day(uint64_t ms) { return (int64_t)((ms + API_TZ_OFFSET_MS) / API_DAY_MS); }

/* Monday of the local week containing day (1970-01-01 was a Thursday). */
static int64_t week_monday(int64_t day) { return day - ((day + 3) % 7); }

static void day_str(int64_t day, char out[16])
{
    int y;
    unsigned m, d;
    crdt_civil_from_days(day, &y, &m, &d);
    snprintf(out, 16, "%04d-%02u-%02u", y % 10000, m % 100, d % 100);
}

/* The store's week functions take a server time; ours are local weeks. */
static uint64_t agg_time(int64_t day) { return (uint64_t)day * API_DAY_MS + API_DAY_MS / 2; }

static void mask_idnum(const char *s, size_t n, char *out, size_t cap)
{
    if (n == 18 && cap > 18) {
        memcpy(out, s, 6);
        memset(out + 6, '*', 8);
        memcpy(out + 14, s + 14, 4);
        out[18] = 0;
    } else {
        snprintf(out, cap, "%s", "***");
    }
}

static void mask_phone(const char *s, size_t n, char *out, size_t cap)
{
    if (n >= 7 && n < cap) {
        memcpy(out, s, n);
        for (size_t i = 3; i < n - 4; i++) out[i] = '*';
        out[n] = 0;
    } else {
        snprintf(out, cap, "%s", "***");
    }
}

/* ---- values and stamps as JSON ----------------------------------------------------------- */

static json_t *scalar_json(const crdt_scalar *s)
{
    switch (s->t) {
    case CRDT_V_BOOL: return json_boolean(s->b);
    case CRDT_V_INT: return json_integer(s->i);
    case CRDT_V_STR: return json_stringn(s->s, s->len);
    default: return json_null();
    }
}

static json_t *val_json(crdt_blob b)
{
    crdt_val v;
    if (!b.n || crdt_val_parse(b, &v)) return json_null();
    switch (v.t) {
    case CRDT_V_BOOL: return json_boolean(v.b);
    case CRDT_V_INT: return json_integer(v.i);
    case CRDT_V_STR: {
        json_t *j = json_stringn(v.s, v.len);
        return j ? j : json_null();
    }
    case CRDT_V_MAP: {
        json_t *o = json_object();
        for (uint32_t i = 0; i < v.nkv; i++) {
            char k[64];
            size_t kl = v.kv[i].klen < sizeof k - 1 ? v.kv[i].klen : sizeof k - 1;
            memcpy(k, v.kv[i].k, kl);
            k[kl] = 0;
            json_t *x = scalar_json(&v.kv[i].v);
            json_object_set_new(o, k, x ? x : json_null());
        }
        return o;
    }
    default: return json_null();
    }
}

/* Volunteers by device id, cached for one request. */
typedef struct devcache {
    size_t n, ns;
    /* At a district: the relay whose street the record being shown is in
     * (dev_relay_set): its dots name that street's devices. 0 elsewhere. */
    uint32_t relay;
    struct { uint32_t relay, dev; bool found; char volunteer[64]; } e[64];
    struct { char user[STORE_USER_MAX + 1]; char display[STORE_DISPLAY_MAX + 1]; } s[8];
} devcache;

/* A staff member's display name (cached for one request); NULL if unknown. */
static const char *staff_display(store_txn *t, devcache *c, const char *user)
{
    for (size_t i = 0; i < c->ns; i++)
        if (!strcmp(c->s[i].user, user)) return *c->s[i].display ? c->s[i].display : NULL;
    store_staff st;
    bool found = store_staff_get(t, user, &st) == STORE_OK;
    size_t i = c->ns < 8 ? c->ns++ : 7; /* full: the last slot is reused */
    snprintf(c->s[i].user, sizeof c->s[i].user, "%s", user);
    snprintf(c->s[i].display, sizeof c->s[i].display, "%s", found ? st.display : "");
    return *c->s[i].display ? c->s[i].display : NULL;
}

/* Which street's numbering record r's dots use (devcache.relay). */
static void dev_relay_set(store_txn *t, devcache *c, const crdt_record *r)
{
    char hh[CRDT_RECID_MAX + 1] = "";
    c->relay = 0;
    if (!r) return;
    if (!strcmp(r->kind, "household")) {
        snprintf(hh, sizeof hh, "%s", r->id);
    } else {
        const crdt_field *f = crdt_record_field(r, "household", (crdt_blob){NULL, 0});
        crdt_val v;
        if (f && f->n && !crdt_val_parse(f->e[0].v, &v) && v.t == CRDT_V_STR && v.len < sizeof hh)
            snprintf(hh, sizeof hh, "%.*s", (int)v.len, v.s);
    }
    if (store_relay_of_household(t, hh, &c->relay)) c->relay = 0;
}

static const char *volunteer_of(store_txn *t, devcache *c, uint32_t dev)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].dev == dev && c->e[i].relay == c->relay)
            return c->e[i].found ? c->e[i].volunteer : NULL;
    store_device d;
    uint32_t local = dev;
    /* A relayed record's device is the street's: its chain device here. */
    if (c->relay && store_relay_map(t, c->relay, dev, NULL, false, &local)) local = 0;
    bool found = local != API_SERVER_DEV && store_device_get(t, local, &d) == STORE_OK;
    if (c->n < 64) {
        c->e[c->n].relay = c->relay;
        c->e[c->n].dev = dev;
        c->e[c->n].found = found;
        snprintf(c->e[c->n].volunteer, sizeof c->e[c->n].volunteer, "%s",
                 found ? d.volunteer : "");
        return c->e[c->n++].found ? c->e[c->n - 1].volunteer : NULL;
    }
    return NULL;
}

static const char *staff_of_server_seq(sync_api *api, uint64_t seq)
{
    for (size_t i = 0; i < api->n_dots; i++)
        if (api->dots[i].seq == seq) return api->dots[i].username;
    return NULL;
}

static void remember_server_seq(sync_api *api, uint64_t seq, const char *user)
{
    if (api->n_dots == api->cap_dots) {
        size_t nc = api->cap_dots ? api->cap_dots * 2 : 64;
        if (nc > 65536) { /* keep the newest half */
            memmove(api->dots, api->dots + api->n_dots / 2,
                    (api->n_dots - api->n_dots / 2) * sizeof *api->dots);
            api->n_dots -= api->n_dots / 2;
        } else {
            srv_dot *nd = realloc(api->dots, nc * sizeof *nd);
            if (!nd) return;
            api->dots = nd;
            api->cap_dots = nc;
        }
    }
    api->dots[api->n_dots].seq = seq;
    snprintf(api->dots[api->n_dots].username, sizeof api->dots[api->n_dots].username, "%s", user);
    api->n_dots++;
}

/* Provenance of a write: who (volunteer by device, or the server and the
 * staff member when known), which device, when. */
static json_t *stamp_json(rq *q, store_txn *t, devcache *dc, crdt_stamp st)
{
    json_t *o = json_object();
    json_object_set_new(o, "dev", json_integer(st.dot.dev));
    json_object_set_new(o, "seq", json_integer((json_int_t)st.dot.seq));
    json_object_set_new(o, "hlc_ms", json_integer((json_int_t)CRDT_HLC_MS(st.hlc)));
    json_object_set_new(o, "hlc_ctr", json_integer(CRDT_HLC_CTR(st.hlc)));
    if (st.dot.dev == API_SERVER_DEV && dc->relay) {
        /* A street's staff edit, relayed: its staff are the street's. */
        json_object_set_new(o, "server", json_true());
        json_object_set_new(o, "staff", json_null());
        json_object_set_new(o, "staff_display", json_null());
        const char *v = volunteer_of(t, dc, 0);
        json_t *vs = v ? json_string(v) : NULL;
        json_object_set_new(o, "street_server", vs ? vs : json_null());
        json_object_set_new(o, "volunteer", json_null());
    } else if (st.dot.dev == API_SERVER_DEV) {
        json_object_set_new(o, "server", json_true());
        const char *who = staff_of_server_seq(q->api, st.dot.seq);
        json_object_set_new(o, "staff", who ? json_string(who) : json_null());
        const char *disp = who ? staff_display(t, dc, who) : NULL;
        json_t *dj = disp ? json_string(disp) : NULL;
        json_object_set_new(o, "staff_display", dj ? dj : json_null());
        json_object_set_new(o, "volunteer", json_null());
    } else {
        const char *v = volunteer_of(t, dc, st.dot.dev);
        json_object_set_new(o, "server", json_false());
        json_t *vs = v ? json_string(v) : NULL;
        json_object_set_new(o, "volunteer", vs ? vs : json_null());
    }
    return o;
}

static const char *ftype_name(int t)
{
    switch (t) {
    case CRDT_F_LWW: return "lww";
    case CRDT_F_MV: return "mv";
    case CRDT_F_SET: return "set";
    case CRDT_F_LOG: return "log";
    case CRDT_F_COUNTER: return "counter";
    case CRDT_F_STAGE: return "stage";
    default: return "?";
    }
}

/* The display value of an lww/mv field: the entry with the greatest stamp. */
static const crdt_entry *field_top(const crdt_field *f)
{
    const crdt_entry *best = NULL;
    for (uint32_t i = 0; f && i < f->n; i++)
        if (!best || crdt_stamp_cmp(f->e[i].st, best->st) > 0) best = &f->e[i];
    return best;
}

/* The string value of an unkeyed lww/mv field into buf ("" if none). */
static const char *field_cstr(const crdt_record *r, const char *name, char *buf, size_t cap)
{
    const crdt_entry *e = field_top(crdt_record_field(r, name, (crdt_blob){NULL, 0}));
    crdt_val v;
    buf[0] = 0;
    if (e && !crdt_val_parse(e->v, &v) && v.t == CRDT_V_STR) {
        size_t n = v.len < cap - 1 ? v.len : cap - 1;
        memcpy(buf, v.s, n);
        buf[n] = 0;
    }
    return buf;
}


static json_t *key_json(crdt_blob k) { return k.n ? val_json(k) : json_null(); }

/* The campaign year as a field key blob. */
static crdt_blob year_key(uint32_t year, uint8_t buf[9])
{
    crdt_buf b = {0};
    crdt_blob out = {buf, 0};
    if (crdt_val_put_int(&b, year) == 0 && b.n <= 9) {
        memcpy(buf, b.p, b.n);
        out.n = (uint32_t)b.n;
    }
    crdt_buf_free(&b);
    return out;
}

/* An mv field is in conflict when its live writes hold more than one
 * distinct value: two phones writing the same value agree (代缴 and 代缴 are
 * one value with two writers).  The one rule for every count here (person
 * summaries, the conflicts queue and its total, the person page) is
 * crdt_field_conflict, which the simulator and doorstepctl use too. */
static bool mv_conflict(const crdt_field *f) { return crdt_field_conflict(f); }

static uint32_t mv_conflicts(const crdt_record *r) { return crdt_record_conflicts(r); }

/* Is entry i of f the first one holding its value? */
static bool first_of_value(const crdt_field *f, uint32_t i)
{
    for (uint32_t j = 0; j < i; j++)
        if (!crdt_blob_cmp(f->e[i].v, f->e[j].v)) return false;
    return true;
}

/* The distinct values of a keyed or unkeyed field instance, as a JSON array. */
static json_t *instance_values(const crdt_field *f)
{
    json_t *a = json_array();
    for (uint32_t i = 0; f && i < f->n; i++)
        if (first_of_value(f, i)) json_array_append_new(a, val_json(f->e[i].v));
    return a;
}

/* All live values of an unkeyed field, as a JSON array (distinct). */
static json_t *field_values(const crdt_record *r, const char *name)
{
    return instance_values(crdt_record_field(r, name, (crdt_blob){NULL, 0}));
}

/* A short summary of a person (search results, members, queues). */
static json_t *person_summary(rq *q, store_txn *t, const crdt_record *p)
{
    json_t *o = json_object();
    char buf[256], m[32];
    uint8_t kb[9];
    json_object_set_new(o, "id", json_string(p->id));
    json_object_set_new(o, "names", field_values(p, "name"));
    json_t *ids = json_array();
    const crdt_field *f = crdt_record_field(p, "id_number", (crdt_blob){NULL, 0});
    for (uint32_t i = 0; f && i < f->n; i++) {
        crdt_val v;
        if (!first_of_value(f, i)) continue; /* one number, however many writers */
        if (crdt_val_parse(f->e[i].v, &v) || v.t != CRDT_V_STR) continue;
        mask_idnum(v.s, v.len, m, sizeof m);
        json_array_append_new(ids, json_string(m));
    }
    json_object_set_new(o, "id_numbers_masked", ids);
    json_object_set_new(o, "gender", field_values(p, "gender"));
    json_object_set_new(o, "birth_date", field_values(p, "birth_date"));
    field_cstr(p, "relation", buf, sizeof buf);
    json_object_set_new(o, "relation", json_string(buf));
    field_cstr(p, "household", buf, sizeof buf);
    json_object_set_new(o, "household", json_string(buf));
    json_object_set_new(o, "insurance_type", field_values(p, "insurance_type"));
    json_object_set_new(o, "life_status", field_values(p, "life_status"));
    const crdt_field *pay = crdt_record_field(p, "payment",
                                              year_key(store_campaign_year(q->api->st), kb));
    json_object_set_new(o, "payment", instance_values(pay)); /* distinct: 代缴 once */
    json_object_set_new(o, "tags", field_values(p, "tags"));
    const crdt_field *rv = crdt_record_field(p, "review", (crdt_blob){NULL, 0});
    json_object_set_new(o, "review_ordinal", json_integer(rv ? crdt_field_stage(rv) : -1));
    json_object_set_new(o, "conflicts", json_integer(mv_conflicts(p)));
    json_object_set_new(o, "deleted", json_boolean(crdt_record_deleted(p)));
    (void)t;
    return o;
}

/* ---- audit --------------------------------------------------------------------------- */

/* Append one audit entry in its own write txn (growing the map if full). */
static int audit_write(rq *q, const char *actor, const char *action, const char *detail)
{
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        store_txn *t = NULL;
        int rc = store_begin(q->api->st, STORE_RW, &t);
        if (!rc) rc = store_audit_append(t, q->now, actor, action, detail, NULL);
        if (!rc) {
            rc = store_commit(t);
            t = NULL;
        }
        store_abort(t);
        if (rc != STORE_EMAPFULL) return rc;
        if (store_grow(q->api->st)) return rc;
    }
    return STORE_EMAPFULL;
}

/* ---- sessions -------------------------------------------------------------------------- */

static bool sess_live(const api_sess *s, uint64_t now)
{
    return s->used && now < s->seen_ms + API_SESS_IDLE_MS && now < s->created_ms + API_SESS_ABS_MS;
}

/* The session id from a Cookie header into out (65 bytes); false if none. */
static bool cookie_sid(const char *cookie, char out[65])
{
    const char *p = cookie ? cookie : "";
    size_t nl = strlen(API_COOKIE);
    while (*p) {
        while (*p == ' ' || *p == ';') p++;
        if (!strncmp(p, API_COOKIE, nl) && p[nl] == '=') {
            const char *v = p + nl + 1;
            size_t n = strcspn(v, "; ");
            if (n != 64) return false;
            for (size_t i = 0; i < 64; i++)
                if (!isxdigit((unsigned char)v[i])) return false;
            memcpy(out, v, 64);
            out[64] = 0;
            return true;
        }
        p += strcspn(p, ";");
    }
    return false;
}

/* Find (and touch) the live session for a cookie; copy it to *out. */
static bool sess_find(sync_api *api, const char *cookie, uint64_t now, bool touch, api_sess *out)
{
    char sid[65];
    bool ok = false;
    if (!cookie_sid(cookie, sid)) return false;
    pthread_mutex_lock(&api->mu);
    for (size_t i = 0; i < API_SESS_MAX; i++) {
        api_sess *s = &api->sess[i];
        if (!s->used) continue;
        if (!sess_live(s, now)) {
            sodium_memzero(s, sizeof *s);
            continue;
        }
        if (sodium_memcmp(s->id, sid, 64) == 0) {
            if (touch) s->seen_ms = now;
            if (out) *out = *s;
            ok = true;
        }
    }
    pthread_mutex_unlock(&api->mu);
    sodium_memzero(sid, sizeof sid);
    return ok;
}

static void sess_create(sync_api *api, const store_staff *st, uint64_t now, api_sess *out)
{
    uint8_t rnd[32];
    api_sess s;
    memset(&s, 0, sizeof s);
    s.used = true;
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(s.id, sizeof s.id, rnd, 32);
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(s.csrf, sizeof s.csrf, rnd, 32);
    sodium_memzero(rnd, sizeof rnd);
    snprintf(s.username, sizeof s.username, "%s", st->username);
    snprintf(s.display, sizeof s.display, "%s", st->display);
    s.role = st->role;
    s.created_ms = s.seen_ms = now;
    pthread_mutex_lock(&api->mu);
    size_t slot = API_SESS_MAX, oldest = 0;
    for (size_t i = 0; i < API_SESS_MAX; i++) {
        if (!api->sess[i].used || !sess_live(&api->sess[i], now)) {
            slot = i;
            break;
        }
        if (api->sess[i].seen_ms < api->sess[oldest].seen_ms) oldest = i;
    }
    if (slot == API_SESS_MAX) slot = oldest; /* table full: the least recently used goes */
    api->sess[slot] = s;
    pthread_mutex_unlock(&api->mu);
    *out = s;
    sodium_memzero(&s, sizeof s);
}

static void sess_drop(sync_api *api, const char *id)
{
    pthread_mutex_lock(&api->mu);
    for (size_t i = 0; i < API_SESS_MAX; i++)
        if (api->sess[i].used && sodium_memcmp(api->sess[i].id, id, 64) == 0)
            sodium_memzero(&api->sess[i], sizeof api->sess[i]);
    pthread_mutex_unlock(&api->mu);
}

bool sync_api_session_ok(sync_api *api, const char *cookie, uint64_t now_ms)
{
    return api && sess_find(api, cookie, now_ms, false, NULL);
}

static const char *role_name(uint8_t r)
{
    return r == STORE_ROLE_ADMIN ? "admin" : r == STORE_ROLE_STAFF ? "staff" : "unknown";
}

static json_t *me_json(const api_sess *s)
{
    json_t *o = json_object();
    json_object_set_new(o, "username", json_string(s->username));
    json_t *d = json_string(s->display);
    json_object_set_new(o, "display", d ? d : json_string(s->username));
    json_object_set_new(o, "role", json_string(role_name(s->role)));
    json_object_set_new(o, "csrf", json_string(s->csrf));
    return o;
}

/* ---- request bodies ------------------------------------------------------------------------ */

static json_t *body_json(rq *q)
{
    const char *ct = q->req->content_type ? q->req->content_type : "";
    if (strncasecmp(ct, "application/json", 16) != 0) {
        send_err(q, 400, "bad_content_type", "请求内容必须是 JSON。" EN
                 "The request body must be JSON (Content-Type: application/json)");
        return NULL;
    }
    if (q->req->body_len > SYNC_API_BODY_MAX) {
        send_err(q, 413, "too_large", "请求内容太大（最多 %d 字节）。" EN
                 "Request body larger than %d bytes", SYNC_API_BODY_MAX, SYNC_API_BODY_MAX);
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb((const char *)q->req->body, q->req->body_len,
                           JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        send_err(q, 400, "bad_json", "请求内容不是有效的 JSON（第 %d 行第 %d 列）。" EN
                 "Request body is not valid JSON: %s (line %d, column %d)", e.line, e.column,
                 e.text, e.line, e.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        send_err(q, 400, "bad_json", "请求内容必须是 JSON 对象。" EN
                 "Request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* A required string member; NULL (400 sent) if missing or not a string. */
static const char *body_str(rq *q, json_t *j, const char *name, size_t maxlen)
{
    json_t *v = json_object_get(j, name);
    if (!v || !json_is_string(v)) {
        send_err(q, 400, "bad_parameter", "缺少必填项 %s（应为文字）。" EN
                 "'%s' is required and must be a string", name, name);
        return NULL;
    }
    if (json_string_length(v) > maxlen || strlen(json_string_value(v)) != json_string_length(v)) {
        send_err(q, 400, "bad_parameter", "%s 最多 %zu 字节。" EN
                 "'%s' must be at most %zu bytes without NUL", name, maxlen, name, maxlen);
        return NULL;
    }
    return json_string_value(v);
}

/* ---- login / logout / me ---------------------------------------------------------------------- */

static bool username_chars_ok(const char *u)
{
    size_t n = strlen(u);
    if (!n || n > STORE_USER_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        if (!(islower(c) || isdigit(c) || c == '_' || c == '.' || c == '-')) return false;
    }
    return true;
}

static int route_login(rq *q)
{
    json_t *j = body_json(q);
    if (!j) return 400;
    const char *u = body_str(q, j, "username", 256), *pw = u ? body_str(q, j, "password",
                                                                          STORE_PASSWORD_MAX)
                                                              : NULL;
    if (!u || !pw) {
        json_decref(j);
        return 400;
    }
    char user[STORE_USER_MAX + 1], actor[STORE_AUDIT_ACTOR_MAX + 1];
    bool valid = username_chars_ok(u);
    snprintf(user, sizeof user, "%s", valid ? u : "");
    snprintf(actor, sizeof actor, "staff:%s", valid ? u : "(invalid)");
    store_staff st;
    int rc = store_staff_login(q->api->st, valid ? u : "-", pw, q->now, NULL, NULL, &st);
    json_decref(j); /* the password lived in it */
    char detail[160];
    snprintf(detail, sizeof detail, "from %s", q->req->remote ? q->req->remote : "?");
    if (rc == STORE_OK) {
        api_sess s;
        audit_write(q, actor, "staff.login", detail);
        sess_create(q->api, &st, q->now, &s);
        snprintf(q->resp->set_cookie, sizeof q->resp->set_cookie,
                 "%s=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%llu%s", API_COOKIE, s.id,
                 (unsigned long long)(API_SESS_ABS_MS / 1000), q->req->tls ? "; Secure" : "");
        send_json(q, 200, me_json(&s));
        sodium_memzero(&s, sizeof s);
        return 200;
    }
    if (rc == STORE_ELOCKED) {
        audit_write(q, actor, "staff.login_locked", detail);
        return send_err(q, 429, "locked",
                        "账户因多次登录失败已被暂时锁定，请稍后再试或联系管理员。" EN
                        "Too many failed logins: the account is locked for a while");
    }
    if (rc == STORE_EBADPASS || rc == STORE_ENOTFOUND || rc == STORE_EDISABLED ||
        rc == STORE_EINVAL) {
        audit_write(q, actor, "staff.login_failed", detail);
        return send_err(q, 401, "bad_login", "用户名或密码错误。" EN
                        "Wrong username or password");
    }
    return send_store_err(q, rc, "login");
}

static int route_logout(rq *q)
{
    sess_drop(q->api, q->s.id);
    audit_write(q, q->actor, "staff.logout", NULL);
    snprintf(q->resp->set_cookie, sizeof q->resp->set_cookie,
             "%s=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0%s", API_COOKIE,
             q->req->tls ? "; Secure" : "");
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    send_json(q, 200, o);
    return 200;
}

/* ---- overview and reports (aggregates only) ------------------------------------------------- */

static json_t *agg_json(rq *q, const store_agg *a)
{
    size_t ng = 0;
    const char *const *names = store_group_names(q->api->st, &ng);
    json_t *o = json_object();
    int64_t unenrolled_groups = 0;
    json_object_set_new(o, "persons", json_integer(a->persons));
    json_object_set_new(o, "enrolled", json_integer(a->enrolled));
    json_object_set_new(o, "paid", json_integer(a->paid));
    json_object_set_new(o, "unpaid", json_integer(a->persons - a->enrolled));
    json_object_set_new(o, "coverage",
                        json_real(a->persons ? (double)a->enrolled / (double)a->persons : 0.0));
    json_object_set_new(o, "visits_week", json_integer(a->visits_week));
    json_t *g = json_array();
    for (size_t i = 0; i < ng && i < STORE_MAX_GROUPS; i++) {
        json_t *x = json_object();
        json_object_set_new(x, "name", json_string(names[i]));
        json_object_set_new(x, "persons", json_integer(a->group[i]));
        json_object_set_new(x, "unenrolled", json_integer(a->group_unenrolled[i]));
        unenrolled_groups += a->group_unenrolled[i];
        json_array_append_new(g, x);
    }
    json_object_set_new(o, "groups", g);
    /* A person in two key groups counts once per group here. */
    json_object_set_new(o, "key_group_unenrolled", json_integer(unenrolled_groups));
    return o;
}

/* ---- a district's streets (issue 16: relays, store/relay.c) ------------------------------ */

/* community -> the relay (street server) it came through, in community order. */
typedef struct street_map {
    struct street_ent { char community[129]; uint32_t relay; } *e;
    size_t n, cap;
} street_map;

static int street_map_add(const char *community, uint32_t relay, void *arg)
{
    street_map *m = arg;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 32;
        void *p = realloc(m->e, nc * sizeof *m->e);
        if (!p) return CRDT_ENOMEM;
        m->e = p;
        m->cap = nc;
    }
    snprintf(m->e[m->n].community, sizeof m->e[m->n].community, "%s", community);
    m->e[m->n++].relay = relay;
    return 0;
}

static int street_cmp(const void *k, const void *e)
{
    return strcmp(k, ((const struct street_ent *)e)->community);
}

/* The relay of community c, 0 if it is not a relayed street's. */
static uint32_t street_of(const street_map *m, const char *c)
{
    const struct street_ent *e = m && m->n ? bsearch(c, m->e, m->n, sizeof *m->e, street_cmp) : NULL;
    return e ? e->relay : 0;
}

static void agg_add(store_agg *sum, const store_agg *a)
{
    sum->persons += a->persons;
    sum->enrolled += a->enrolled;
    sum->paid += a->paid;
    sum->visits_week += a->visits_week;
    for (size_t i = 0; i < STORE_MAX_GROUPS; i++) {
        sum->group[i] += a->group[i];
        sum->group_unenrolled[i] += a->group_unenrolled[i];
    }
}

static json_t *agg_json(rq *q, const store_agg *a);

/* Each street's aggregate at time `at` (the sum of its communities), with
 * its relay device's id, name and last relay time; [] on a street server. */
static int streets_json(rq *q, store_txn *t, const street_map *m, uint64_t at, json_t **out)
{
    *out = json_array();
    for (size_t i = 0; i < m->n;) {
        uint32_t relay = m->e[i].relay;
        store_agg sum, a;
        store_device d;
        size_t ncomm = 0;
        memset(&sum, 0, sizeof sum);
        /* The map is in community order: gather this relay's from all of it. */
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++) seen = m->e[k].relay == relay;
        if (seen) {
            i++;
            continue;
        }
        for (size_t k = i; k < m->n; k++) {
            if (m->e[k].relay != relay) continue;
            int rc = store_agg_get(t, m->e[k].community, NULL, at, &a);
            if (rc) return rc;
            agg_add(&sum, &a);
            ncomm++;
        }
        int rc = store_device_get(t, relay, &d);
        if (rc && rc != STORE_ENOTFOUND) return rc;
        json_t *o = agg_json(q, &sum);
        json_object_set_new(o, "id", json_integer(relay));
        json_object_set_new(o, "name", json_string(rc ? "" : d.volunteer));
        json_object_set_new(o, "last_sync_ms", json_integer(rc ? 0 : (json_int_t)d.last_sync_ms));
        json_object_set_new(o, "state", json_string(rc ? "unknown" : store_device_state_name(d.state)));
        json_object_set_new(o, "communities", json_integer((json_int_t)ncomm));
        json_array_append_new(*out, o);
        i++;
    }
    return 0;
}

/* Which part of the tree a page shows: communities offset..offset+limit of
 * those matching the filters (community, and grid inside it; at a
 * district, street: the relay device id of one street, 0 any). */
typedef struct tree_opts {
    const char *community, *grid; /* NULL: any */
    uint64_t offset, limit;
    uint32_t street;
    const street_map *streets;
} tree_opts;

static const tree_opts tree_all = {NULL, NULL, 0, UINT64_MAX, 0, NULL};

/* The station's aggregate and the communities tree_opts selects, each with
 * its grids (only the filtered grid if there is one); *total receives the
 * number of communities matching the filters.  pl: store_agg_place_list. */
static int build_tree(rq *q, store_txn *t, const store_places *pl, uint64_t at,
                      const tree_opts *to, json_t **station, json_t **comms, uint64_t *total)
{
    store_agg a;
    json_t *c = NULL;
    uint64_t n = 0;
    int rc = store_agg_get(t, NULL, NULL, at, &a);
    *station = *comms = NULL;
    if (rc) return rc;
    *station = agg_json(q, &a);
    *comms = json_array();
    for (size_t i = 0; i < pl->n;) {
        size_t j = i;
        const char *cn = pl->p[i].community;
        while (j < pl->n && !strcmp(pl->p[j].community, cn)) j++;
        bool want = (!to->community || !strcmp(to->community, cn)) &&
                    (!to->street || street_of(to->streets, cn) == to->street);
        if (want && to->grid) {
            want = false;
            for (size_t k = i; k < j; k++) want |= !strcmp(pl->p[k].grid, to->grid);
        }
        if (!want || n++ < to->offset || n > to->offset + to->limit) {
            i = j;
            continue;
        }
        if ((rc = store_agg_get(t, cn, NULL, at, &a))) goto fail;
        c = agg_json(q, &a);
        json_object_set_new(c, "community", json_string(cn));
        json_t *grids = json_array();
        json_object_set_new(c, "grids", grids);
        for (size_t k = i; k < j; k++) {
            if (to->grid && strcmp(pl->p[k].grid, to->grid)) continue;
            if ((rc = store_agg_get(t, cn, pl->p[k].grid, at, &a))) goto fail;
            json_t *g = agg_json(q, &a);
            json_object_set_new(g, "grid", json_string(pl->p[k].grid));
            json_array_append_new(grids, g);
        }
        json_array_append_new(*comms, c);
        c = NULL;
        i = j;
    }
    *total = n;
    return 0;
fail:
    json_decref(c);
    json_decref(*station);
    json_decref(*comms);
    *station = *comms = NULL;
    return rc;
}

/* Every community with the codes of its grids (the filter's choices). */
static json_t *places_json(const store_places *pl)
{
    json_t *out = json_array(), *grids = NULL;
    for (size_t i = 0; i < pl->n; i++) {
        if (!i || strcmp(pl->p[i].community, pl->p[i - 1].community)) {
            grids = json_array();
            json_array_append_new(out, json_pack("{s:s, s:o}", "community", pl->p[i].community,
                                                 "grids", grids));
        }
        json_array_append_new(grids, json_string(pl->p[i].grid));
    }
    return out;
}

/* A place filter parameter: absent (NULL), or 1..32 bytes of UTF-8 without
 * control characters (the schema's community and grid codes).  -1: 400 sent. */
static int place_param(rq *q, const char *name, const char *what_zh, char *buf, size_t cap,
                       const char **out)
{
    const char *v = qparam(q, name, buf, cap);
    *out = NULL;
    if (!v) return 0;
    size_t n = strlen(v);
    bool ok = n >= 1 && n <= 32 && crdt_utf8_valid((const uint8_t *)v, n);
    for (size_t i = 0; ok && i < n; i++) ok = (unsigned char)v[i] >= 0x20;
    if (!ok) {
        send_err(q, 400, "bad_parameter", "参数 %s（%s代码）应为 1 至 32 字节的文字。" EN
                 "'%s' must be a %s code of 1..32 bytes of UTF-8", name, what_zh, name, name);
        return -1;
    }
    *out = v;
    return 0;
}

static int qx_sync(rq *q, store_txn *t);
static void qx_conflict_totals(const sync_api *api, uint64_t *persons, uint64_t *fields);

static int route_overview(rq *q)
{
    uint64_t stale_days;
    char cb[64], gb[64];
    tree_opts to = tree_all;
    uint64_t street = 0;
    street_map sm = {0};
    json_t *streets = NULL;
    if (qnum(q, "stale_days", 1, 365, 3, &stale_days) ||
        qnum(q, "offset", 0, 10000, 0, &to.offset) || qnum(q, "limit", 1, 100, 100, &to.limit) ||
        qnum(q, "street", 0, UINT32_MAX, 0, &street) ||
        place_param(q, "community", "社区", cb, sizeof cb, &to.community) ||
        place_param(q, "grid", "网格", gb, sizeof gb, &to.grid))
        return 400;
    store_txn *t = NULL;
    store_places pl = {0};
    json_t *station = NULL, *comms = NULL, *o = json_object();
    int64_t today = local_day(q->now), monday = week_monday(today);
    uint64_t ncomm = 0, cpersons = 0, cfields = 0;
    char ds[16];
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_agg_place_list(t, &pl);
    if (!rc) rc = store_relay_communities(t, street_map_add, &sm);
    if (rc) goto fail;
    to.street = (uint32_t)street;
    to.streets = &sm;
    if (street) {
        bool known = false;
        for (size_t i = 0; i < sm.n && !known; i++) known = sm.e[i].relay == street;
        if (!known) {
            store_abort(t);
            store_places_free(&pl);
            free(sm.e);
            json_decref(o);
            return send_err(q, 400, "bad_parameter", "没有编号为 %llu 的街道。" EN "No street %llu",
                            (unsigned long long)street, (unsigned long long)street);
        }
    }
    /* The filters must name places that exist (and a grid its community). */
    if (to.community || to.grid) {
        const char *gc = NULL;
        bool cfound = false, gmany = false;
        for (size_t i = 0; i < pl.n; i++) {
            cfound |= to.community && !strcmp(pl.p[i].community, to.community);
            if (to.grid && !strcmp(pl.p[i].grid, to.grid) &&
                (!to.community || !strcmp(pl.p[i].community, to.community))) {
                gmany |= gc && strcmp(gc, pl.p[i].community);
                gc = pl.p[i].community;
            }
        }
        int status = 0;
        if (to.community && !cfound)
            status = send_err(q, 400, "bad_parameter", "没有社区“%s”。" EN "No community '%s'",
                              to.community, to.community);
        else if (to.grid && !gc)
            status = to.community
                         ? send_err(q, 400, "bad_parameter",
                                    "社区“%s”中没有网格“%s”。" EN "Community '%s' has no grid '%s'",
                                    to.community, to.grid, to.community, to.grid)
                         : send_err(q, 400, "bad_parameter", "没有网格“%s”。" EN "No grid '%s'",
                                    to.grid, to.grid);
        else if (gmany)
            status = send_err(q, 400, "bad_parameter",
                              "多个社区都有网格“%s”，请同时指定社区（community）。" EN
                              "Grid '%s' is in several communities: give 'community' too",
                              to.grid, to.grid);
        if (status) {
            store_abort(t);
            store_places_free(&pl);
            json_decref(o);
            return status;
        }
    }
    if ((rc = build_tree(q, t, &pl, agg_time(today), &to, &station, &comms, &ncomm))) goto fail;
    if ((rc = streets_json(q, t, &sm, agg_time(today), &streets))) goto fail;
    if ((rc = qx_sync(q, t))) goto fail;
    qx_conflict_totals(q->api, &cpersons, &cfields);
    json_object_set_new(o, "campaign_year", json_integer(store_campaign_year(q->api->st)));
    json_object_set_new(o, "now_ms", json_integer((json_int_t)q->now));
    day_str(today, ds);
    json_object_set_new(o, "today", json_string(ds));
    day_str(monday, ds);
    json_object_set_new(o, "week_start", json_string(ds));
    json_object_set_new(o, "station", station);
    json_object_set_new(o, "communities", comms);
    station = comms = NULL;
    json_object_set_new(o, "total_communities", json_integer((json_int_t)ncomm));
    json_object_set_new(o, "offset", json_integer((json_int_t)to.offset));
    json_object_set_new(o, "limit", json_integer((json_int_t)to.limit));
    json_object_set_new(o, "filter", json_pack("{s:o, s:o, s:o}", "community",
                                               to.community ? json_string(to.community) : json_null(),
                                               "grid", to.grid ? json_string(to.grid) : json_null(),
                                               "street", street ? json_integer((json_int_t)street)
                                                                : json_null()));
    json_object_set_new(o, "streets", streets);
    streets = NULL;
    json_t *places = places_json(&pl);
    if (sm.n) { /* a district: each community's street */
        size_t i;
        json_t *pe;
        json_array_foreach(places, i, pe) {
            uint32_t r = street_of(&sm, json_string_value(json_object_get(pe, "community")));
            json_object_set_new(pe, "street", r ? json_integer(r) : json_null());
        }
    }
    json_object_set_new(o, "places", places);
    json_object_set_new(o, "conflicts", json_pack("{sIsI}", "persons", (json_int_t)cpersons,
                                                  "fields", (json_int_t)cfields));

    /* Devices: a walk over device ids (hundreds per station), not records. */
    uint32_t next_id = 1;
    if ((rc = store_device_next_id(t, &next_id))) goto fail;
    json_t *stale = json_array();
    int64_t total = 0, active = 0, synced_today = 0;
    uint64_t day_start = (uint64_t)today * API_DAY_MS - API_TZ_OFFSET_MS;
    for (uint32_t id = 1; id < next_id && id < API_DEVICES_MAX; id++) {
        store_device d;
        if (store_device_get(t, id, &d)) continue;
        /* A street's phone as the district knows it (relay.c): it never
         * syncs here; its street's relay does. */
        if (store_relay_origin(t, id, NULL, NULL) == STORE_OK) continue;
        total++;
        if (d.state != STORE_DEV_ACTIVE) continue;
        active++;
        if (d.last_sync_ms >= day_start) synced_today++;
        if (!d.last_sync_ms ||
            (q->now > d.last_sync_ms && q->now - d.last_sync_ms > stale_days * API_DAY_MS)) {
            json_t *x = json_object();
            json_object_set_new(x, "id", json_integer(id));
            json_t *vs = json_string(d.volunteer);
            json_object_set_new(x, "volunteer", vs ? vs : json_null());
            json_object_set_new(x, "last_sync_ms", json_integer((json_int_t)d.last_sync_ms));
            json_object_set_new(x, "days",
                                d.last_sync_ms ? json_integer((json_int_t)((q->now - d.last_sync_ms)
                                                                          / API_DAY_MS))
                                               : json_null());
            json_array_append_new(stale, x);
        }
    }
    json_t *dv = json_object();
    json_object_set_new(dv, "total", json_integer(total));
    json_object_set_new(dv, "active", json_integer(active));
    json_object_set_new(dv, "synced_today", json_integer(synced_today));
    json_object_set_new(dv, "stale_days", json_integer((json_int_t)stale_days));
    json_object_set_new(dv, "stale", stale);
    json_object_set_new(o, "devices", dv);
    uint64_t qc[4];
    if ((rc = store_quarantine_counts(t, qc))) goto fail;
    json_object_set_new(o, "quarantine", json_integer((json_int_t)qc[0]));
    json_object_set_new(o, "quarantine_pending", json_integer((json_int_t)qc[STORE_QSTATE_PENDING]));
    store_abort(t);
    store_places_free(&pl);
    free(sm.e);
    send_json(q, 200, o);
    return 200;
fail:
    store_abort(t);
    store_places_free(&pl);
    free(sm.e);
    json_decref(streets);
    json_decref(o);
    json_decref(station);
    json_decref(comms);
    return send_store_err(q, rc, "overview");
}

/* The report's week: ?week=YYYY-MM-DD (any day of it), default this week. */
static int report_week(rq *q, int64_t *monday)
{
    char b[16];
    const char *w = qparam(q, "week", b, sizeof b);
    *monday = week_monday(local_day(q->now));
    if (!w) return 0;
    int64_t day;
    if (crdt_date_days(w, strlen(w), &day)) {
        send_err(q, 400, "bad_parameter", "参数 week 应为日期 YYYY-MM-DD，而不是“%s”。" EN
                 "'week' must be a date YYYY-MM-DD, got '%s'", w, w);
        return -1;
    }
    *monday = week_monday(day);
    return 0;
}


typedef struct hist_ctx {
    json_t *arr;
    uint32_t last_day; /* of the last entry added (valid when arr is not empty) */
} hist_ctx;

/* One day of the coverage curve.  A day with no persons has no coverage
 * (a server that took its snapshot before its first sync, a district before
 * its streets relayed): it is left out rather than drawn as 0 %. */
static json_t *hist_entry(uint32_t day, int64_t persons, int64_t enrolled, int64_t paid)
{
    char ds[16];
    json_t *x = json_object();
    day_str((int64_t)day, ds);
    json_object_set_new(x, "day", json_string(ds));
    json_object_set_new(x, "persons", json_integer(persons));
    json_object_set_new(x, "enrolled", json_integer(enrolled));
    json_object_set_new(x, "paid", json_integer(paid));
    json_object_set_new(x, "coverage", json_real((double)enrolled / (double)persons));
    return x;
}

static int hist_add(uint32_t day, int64_t persons, int64_t enrolled, int64_t paid, void *arg)
{
    hist_ctx *h = arg;
    if (persons <= 0) return 0;
    json_array_append_new(h->arr, hist_entry(day, persons, enrolled, paid));
    h->last_day = day;
    return 0;
}

static int route_weekly(rq *q)
{
    int64_t monday;
    if (report_week(q, &monday)) return 400;
    store_txn *t = NULL;
    store_places pl = {0};
    json_t *station = NULL, *comms = NULL, *o = json_object();
    uint64_t ncomm = 0, cpersons = 0, cfields = 0;
    char ds[16];
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_agg_place_list(t, &pl);
    street_map sm = {0};
    json_t *streets = NULL;
    if (!rc) rc = build_tree(q, t, &pl, agg_time(monday), &tree_all, &station, &comms, &ncomm);
    if (!rc) rc = store_relay_communities(t, street_map_add, &sm);
    if (!rc) rc = streets_json(q, t, &sm, agg_time(monday), &streets);
    free(sm.e);
    if (!rc) rc = qx_sync(q, t);
    if (rc) {
        json_decref(streets);
        goto fail;
    }
    json_object_set_new(o, "streets", streets); /* [] unless this is a district */
    qx_conflict_totals(q->api, &cpersons, &cfields);
    day_str(monday, ds);
    json_object_set_new(o, "week_start", json_string(ds));
    day_str(monday + 6, ds);
    json_object_set_new(o, "week_end", json_string(ds));
    json_object_set_new(o, "campaign_year", json_integer(store_campaign_year(q->api->st)));
    json_object_set_new(o, "generated_ms", json_integer((json_int_t)q->now));
    json_object_set_new(o, "station", station);
    json_object_set_new(o, "communities", comms);
    station = comms = NULL;
    /* Open conflicts now (crdt_field_conflict, as everywhere). */
    json_object_set_new(o, "conflicts", json_pack("{sIsI}", "persons", (json_int_t)cpersons,
                                                  "fields", (json_int_t)cfields));
    /* Visits per week over the last 16 weeks (the aggregates keep weeks). */
    json_t *weeks = json_array();
    for (int i = 15; i >= 0; i--) {
        store_agg a;
        int64_t m = monday - 7 * i;
        if ((rc = store_agg_get(t, NULL, NULL, agg_time(m), &a))) goto fail;
        json_t *x = json_object();
        day_str(m, ds);
        json_object_set_new(x, "week_start", json_string(ds));
        json_object_set_new(x, "visits", json_integer(a.visits_week));
        json_array_append_new(weeks, x);
    }
    json_object_set_new(o, "weeks", weeks);
    /* Coverage over the campaign: the server's daily snapshots of the
     * station's aggregates, from September 1 of the campaign year (or 120
     * days back) to the end of this week. */
    {
        json_t *hist = json_array();
        int64_t sept1 = crdt_days_from_civil((int)store_campaign_year(q->api->st), 9, 1);
        int64_t from = monday - 120 > sept1 ? monday - 120 : sept1;
        if (from > monday + 6) from = monday - 120;
        hist_ctx hc = {hist, 0};
        if ((rc = store_agg_history(t, "", (uint32_t)(from < 0 ? 0 : from), (uint32_t)(monday + 6),
                                    hist_add, &hc))) {
            json_decref(hist);
            goto fail;
        }
        /* Today, when the range holds it, is what the aggregates say now:
         * snapshots are taken every 10 minutes, and a report must not lag
         * behind the table above it (a district fed since its last one). */
        int64_t today = (int64_t)(q->now / 86400000ull); /* the snapshots' day (UTC) */
        if (today >= from && today <= monday + 6) {
            store_agg now;
            if ((rc = store_agg_get(t, NULL, NULL, q->now, &now))) {
                json_decref(hist);
                goto fail;
            }
            size_t n = json_array_size(hist);
            json_t *x = now.persons > 0 ? hist_entry((uint32_t)today, now.persons, now.enrolled,
                                                     now.paid) : NULL;
            if (x && n && hc.last_day == (uint32_t)today) json_array_set_new(hist, n - 1, x);
            else if (x) json_array_append_new(hist, x);
        }
        json_object_set_new(o, "coverage_history", hist);
    }
    json_object_set_new(o, "note",
                        json_string("参保率曲线来自服务器每日快照；走访数按周统计。"
                                    " The coverage curve comes from the server's daily "
                                    "snapshots; visits are per week."));
    store_abort(t);
    store_places_free(&pl);
    audit_write(q, q->actor, "report.weekly", ds);
    send_json(q, 200, o);
    return 200;
fail:
    store_abort(t);
    store_places_free(&pl);
    json_decref(o);
    json_decref(station);
    json_decref(comms);
    return send_store_err(q, rc, "weekly report");
}

static int csv_cell(crdt_buf *b, const char *s)
{
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    /* Cells starting with = + - @ are neutralised for spreadsheets. */
    bool formula = *s == '=' || *s == '+' || *s == '-' || *s == '@';
    int rc = 0;
    if (quote || formula) rc |= crdt_buf_append(b, "\"", 1);
    if (formula) rc |= crdt_buf_append(b, "'", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"') rc |= crdt_buf_append(b, "\"", 1);
        rc |= crdt_buf_append(b, p, 1);
    }
    if (quote || formula) rc |= crdt_buf_append(b, "\"", 1);
    return rc;
}

static int csv_row(crdt_buf *b, const char *c, const char *g, const store_agg *a)
{
    char num[256];
    int64_t kg = 0;
    for (int i = 0; i < STORE_MAX_GROUPS; i++) kg += a->group_unenrolled[i];
    int rc = csv_cell(b, c);
    rc |= crdt_buf_append(b, ",", 1);
    rc |= csv_cell(b, g);
    snprintf(num, sizeof num, ",%lld,%lld,%lld,%.2f%%,%lld,%lld,%lld\r\n", (long long)a->persons,
             (long long)a->enrolled, (long long)a->paid,
             a->persons ? 100.0 * (double)a->enrolled / (double)a->persons : 0.0,
             (long long)(a->persons - a->enrolled), (long long)kg, (long long)a->visits_week);
    rc |= crdt_buf_append(b, num, strlen(num));
    return rc;
}

static int route_weekly_csv(rq *q)
{
    int64_t monday;
    if (report_week(q, &monday)) return 400;
    store_txn *t = NULL;
    store_places pl = {0};
    crdt_buf b = {0};
    store_agg a;
    char ds[16];
    uint64_t at = agg_time(monday);
    static const char head[] = "\xEF\xBB\xBF" "社区,网格,人数,已参保,已缴费,参保率,未参保/未缴费,"
                               "重点人群未参保,本周走访\r\n";
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_agg_place_list(t, &pl);
    if (!rc) rc = crdt_buf_append(&b, head, sizeof head - 1);
    for (size_t i = 0; !rc && i < pl.n; i++) {
        if ((rc = store_agg_get(t, pl.p[i].community, pl.p[i].grid, at, &a))) break;
        if (csv_row(&b, pl.p[i].community, pl.p[i].grid, &a)) rc = CRDT_ENOMEM;
        if (!rc && (i + 1 == pl.n || strcmp(pl.p[i + 1].community, pl.p[i].community))) {
            if (!(rc = store_agg_get(t, pl.p[i].community, NULL, at, &a)) &&
                csv_row(&b, pl.p[i].community, "合计", &a))
                rc = CRDT_ENOMEM;
        }
    }
    if (!rc && !(rc = store_agg_get(t, NULL, NULL, at, &a)) && csv_row(&b, "全街道", "合计", &a))
        rc = CRDT_ENOMEM;
    store_abort(t);
    store_places_free(&pl);
    if (rc) {
        crdt_buf_free(&b);
        return send_store_err(q, rc, "weekly report");
    }
    day_str(monday, ds);
    audit_write(q, q->actor, "report.export", ds);
    q->resp->status = 200;
    snprintf(q->resp->content_type, sizeof q->resp->content_type, "text/csv; charset=utf-8");
    snprintf(q->resp->extra_header_name, sizeof q->resp->extra_header_name,
             "content-disposition:");
    snprintf(q->resp->extra_header_value, sizeof q->resp->extra_header_value,
             "attachment; filename=\"weekly-%s.csv\"", ds);
    crdt_buf_free(&q->resp->body);
    q->resp->body = b;
    return 200;
}

/* ---- search ------------------------------------------------------------------------------- */

/* The household head {"id", "names"} of household record hh, or null. */
static json_t *head_json(store_txn *t, const crdt_record *hh)
{
    char hb[CRDT_RECID_MAX + 1];
    field_cstr(hh, "head", hb, sizeof hb);
    if (!*hb || !recid_ok(hb, strlen(hb))) return json_null();
    json_t *o = json_pack("{ss}", "id", hb);
    crdt_record *p = NULL;
    if (store_get_record(t, "person", hb, &p) == STORE_OK)
        json_object_set_new(o, "names", field_values(p, "name"));
    else
        json_object_set_new(o, "names", json_array());
    crdt_record_free(p);
    return o;
}

/* A person summary's place: community, grid, address and household head,
 * from the person's household record (nothing if it has not synced). */
static void add_place(store_txn *t, json_t *s, const crdt_record *p)
{
    char hb[CRDT_RECID_MAX + 1], tmp[256];
    crdt_record *hh = NULL;
    field_cstr(p, "household", hb, sizeof hb);
    if (!*hb || !recid_ok(hb, strlen(hb)) || store_get_record(t, "household", hb, &hh)) return;
    json_object_set_new(s, "community", json_string(field_cstr(hh, "community", tmp, sizeof tmp)));
    json_object_set_new(s, "grid", json_string(field_cstr(hh, "grid", tmp, sizeof tmp)));
    json_t *addr = json_string(field_cstr(hh, "address", tmp, sizeof tmp));
    json_object_set_new(s, "address", addr ? addr : json_null());
    json_object_set_new(s, "household_head", head_json(t, hh));
    crdt_record_free(hh);
}

static int idlist_cmp(const void *a, const void *b) { return strcmp(a, b); }

static int idnum_problem(rq *q, const char *s, size_t n)
{
    if (n != 18)
        return send_err(q, 400, "bad_idnum",
                        "身份证号码应为18位（当前%zu位）。" EN "An ID number has 18 characters, "
                        "this one has %zu.", n, n);
    for (size_t i = 0; i < 17; i++)
        if (!isdigit((unsigned char)s[i]))
            return send_err(q, 400, "bad_idnum",
                            "身份证号码前17位必须是数字（第%zu位不是）。" EN "The first 17 "
                            "characters must be digits (character %zu is not).", i + 1, i + 1);
    char want = crdt_idnum_check_char(s);
    if (s[17] != want)
        return send_err(q, 400, "bad_idnum_checksum",
                        "身份证号码校验位错误：第18位应为 %c，而不是 %c，请核对号码。" EN
                        "Checksum error: the 18th character should be %c, not %c (GB 11643 "
                        "MOD 11-2); check the number.", want, s[17], want, s[17]);
    return send_err(q, 400, "bad_idnum",
                    "身份证号码中的出生日期或地区码无效。" EN "The birth date (characters 7-14) "
                    "or the region code of this ID number is not valid.");
}

static int route_search(rq *q)
{
    char raw[256], v[256];
    uint64_t offset, limit;
    if (qnum(q, "offset", 0, API_OFFSET_MAX, 0, &offset) || qnum(q, "limit", 1, 200, 50, &limit))
        return 400;
    const char *qs = qparam(q, "q", raw, sizeof raw);
    if (!qs)
        return send_err(q, 400, "bad_parameter", "请输入要查询的身份证号码、手机号或姓名。" EN
                                                 "Parameter 'q' is required");
    /* Trim spaces; uppercase a trailing x of an ID number. */
    const char *b = qs;
    while (*b == ' ' || *b == '\t') b++;
    size_t n = strlen(b);
    while (n && (b[n - 1] == ' ' || b[n - 1] == '\t')) n--;
    if (!n)
        return send_err(q, 400, "bad_parameter", "请输入要查询的身份证号码、手机号或姓名。" EN
                                                 "Parameter 'q' is empty");
    if (n >= sizeof v - 1)
        return send_err(q, 400, "bad_parameter", "查询内容太长（最多 %zu 字节）。" EN
                        "Parameter 'q' is longer than %zu bytes", sizeof v - 2, sizeof v - 2);
    memcpy(v, b, n);
    v[n] = 0;
    size_t digits = 0;
    for (size_t i = 0; i < n; i++) digits += isdigit((unsigned char)v[i]) != 0;
    bool x_last = v[n - 1] == 'x' || v[n - 1] == 'X';
    bool dash = strchr(v, '-') != NULL;
    int what;
    const char *kind;
    if (digits == n || (x_last && digits == n - 1) || (dash && digits == n - 1)) {
        /* Digits: an 11-digit mobile or a landline is a phone; 15 or more
         * characters are an ID number; anything else is neither. */
        if ((n == 11 && v[0] == '1' && digits == n) || (v[0] == '0' && n <= 13 && !x_last)) {
            if (crdt_check_phone(v, n))
                return send_err(q, 400, "bad_phone",
                                "“%s”不是有效的电话号码（手机11位，1开头；固话区号开头）。" EN
                                "Not a valid mobile (11 digits, 1[3-9]…) or landline number.",
                                v);
            what = STORE_LOOKUP_PHONE;
            kind = "phone";
        } else if (n >= 15 && !dash) {
            if (x_last) v[n - 1] = 'X';
            if (crdt_check_idnum(v, n)) return idnum_problem(q, v, n);
            what = STORE_LOOKUP_IDNUM;
            kind = "idnum";
        } else {
            return send_err(q, 400, "bad_parameter",
                            "“%s”既不是身份证号码（18位）也不是手机号（11位）。" EN
                            "Neither an ID number (18 characters) nor a mobile number (11 "
                            "digits).", v);
        }
    } else {
        if (!crdt_utf8_valid((const uint8_t *)v, n) || n > 64)
            return send_err(q, 400, "bad_parameter", "姓名最多 64 字节。" EN
                                                     "A name is 1..64 bytes of UTF-8");
        what = STORE_LOOKUP_NAME;
        kind = "name";
    }
    store_txn *t = NULL;
    store_ids ids = {0};
    json_t *items = json_array();
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_lookup(t, what, v, n, &ids);
    if (!rc && ids.n > 1) qsort(ids.id, ids.n, sizeof *ids.id, idlist_cmp); /* stable pages */
    for (size_t i = (size_t)offset; !rc && i < ids.n && json_array_size(items) < limit; i++) {
        crdt_record *p = NULL;
        if (store_get_record(t, "person", ids.id[i], &p)) continue;
        json_t *s = person_summary(q, t, p);
        add_place(t, s, p);
        crdt_record_free(p);
        json_array_append_new(items, s);
    }    store_abort(t);
    if (rc) {
        store_ids_free(&ids);
        json_decref(items);
        return send_store_err(q, rc, "search");
    }
    char detail[160], m[64];
    if (what == STORE_LOOKUP_IDNUM) mask_idnum(v, n, m, sizeof m);
    else if (what == STORE_LOOKUP_PHONE) mask_phone(v, n, m, sizeof m);
    else snprintf(m, sizeof m, "(%zu bytes)", n);
    snprintf(detail, sizeof detail, "%s %s: %zu results", kind, m, ids.n);
    size_t total = ids.n;
    store_ids_free(&ids);
    if ((rc = audit_write(q, q->actor, "person.search", detail))) {
        json_decref(items);
        return send_store_err(q, rc, "access log");
    }
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string(kind));
    json_object_set_new(o, "total", json_integer((json_int_t)total));
    json_object_set_new(o, "offset", json_integer((json_int_t)offset));
    json_object_set_new(o, "limit", json_integer((json_int_t)limit));
    json_object_set_new(o, "count", json_integer((json_int_t)json_array_size(items)));
    json_object_set_new(o, "results", items);
    send_json(q, 200, o);
    return 200;
}

/* ---- history: a record's deltas, decoded ------------------------------------------------------- */

typedef struct hist {
    size_t n, cap;
    uint64_t *sseq;
} hist;

static int hist_cb(uint64_t sseq, void *arg)
{
    hist *h = arg;
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 32;
        uint64_t *np = realloc(h->sseq, nc * sizeof *np);
        if (!np) return CRDT_ENOMEM;
        h->sseq = np;
        h->cap = nc;
    }
    h->sseq[h->n++] = sseq;
    return 0;
}

/* The record's deltas as JSON (newest last), at most API_HISTORY_MAX (the
 * newest ones); *truncated says whether older ones were left out. */
static int history_json(rq *q, store_txn *t, devcache *dc, const char *kind, const char *id,
                        json_t **out, bool *truncated)
{
    hist h = {0};
    crdt_buf env = {0};
    crdt_arena *a = crdt_arena_new(0);
    int rc = a ? store_record_deltas(t, kind, id, 0, SIZE_MAX, hist_cb, &h, NULL) : CRDT_ENOMEM;
    *out = NULL;
    *truncated = false;
    if (rc) goto out;
    *out = json_array();
    size_t from = h.n > API_HISTORY_MAX ? h.n - API_HISTORY_MAX : 0;
    *truncated = from > 0;
    for (size_t i = from; i < h.n; i++) {
        const uint8_t *db, *sig;
        size_t dl;
        crdt_delta d;
        int err_op;
        crdt_arena_reset(a);
        json_t *x = json_object();
        json_object_set_new(x, "sseq", json_integer((json_int_t)h.sseq[i]));
        if ((rc = store_get_envelope(t, h.sseq[i], &env)) ||
            (rc = wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig)) ||
            (rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op))) {
            json_object_set_new(x, "error", json_string(store_strerror(rc)));
            json_array_append_new(*out, x);
            rc = 0;
            continue;
        }
        crdt_stamp st = {d.hlc, {d.dev, d.seq}};
        json_object_set_new(x, "by", stamp_json(q, t, dc, st));
        json_t *ops = json_array();
        for (uint32_t k = 0; k < d.n_ops; k++) {
            const crdt_op *op = &d.ops[k];
            json_t *o = json_object();
            json_object_set_new(o, "op", json_string(crdt_opcode_name(op->code)));
            json_object_set_new(o, "field", op->field ? json_stringn(op->field, op->field_len)
                                                      : json_null());
            json_object_set_new(o, "key", key_json(op->key));
            json_object_set_new(o, "value", op->val.n ? val_json(op->val) : json_null());
            if (op->n_obs) {
                json_t *obs = json_array();
                for (uint32_t m = 0; m < op->n_obs; m++)
                    json_array_append_new(obs, json_pack("[iI]", (int)op->obs[m].dev,
                                                         (json_int_t)op->obs[m].seq));
                json_object_set_new(o, "observed", obs);
            }
            json_array_append_new(ops, o);
        }
        json_object_set_new(x, "ops", ops);
        json_array_append_new(*out, x);
    }
out:
    free(h.sseq);
    crdt_buf_free(&env);
    crdt_arena_free(a);
    if (rc) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

/* ---- person page ------------------------------------------------------------------------------ */

static json_t *entry_json(rq *q, store_txn *t, devcache *dc, const crdt_fspec *fs,
                          const crdt_entry *e)
{
    json_t *o = json_object();
    if (fs->type == CRDT_F_COUNTER) {
        json_object_set_new(o, "value", json_integer(e->num));
    } else if (fs->type == CRDT_F_STAGE) {
        int i = (int)e->num;
        json_object_set_new(o, "value", i >= 0 && (uint32_t)i < fs->v.n_enum
                                            ? json_string(fs->v.enum_values[i])
                                            : json_integer(e->num));
    } else {
        json_object_set_new(o, "value", val_json(e->v));
    }
    json_object_set_new(o, "by", stamp_json(q, t, dc, e->st));
    return o;
}

/* An mv field instance as a person reads it: its distinct values, each with
 * every live write holding it ({"value", "writers": [PROVENANCE…]}), in the
 * order of their first write (entries are sorted by dot).  Two phones that
 * both wrote 代缴 give one side with two writers, not a conflict. */
static json_t *sides_json(rq *q, store_txn *t, devcache *dc, const crdt_field *f)
{
    json_t *sides = json_array();
    for (uint32_t i = 0; f && i < f->n; i++) {
        if (!first_of_value(f, i)) continue;
        json_t *side = json_object(), *w = json_array();
        json_object_set_new(side, "value", val_json(f->e[i].v));
        for (uint32_t j = i; j < f->n; j++)
            if (!crdt_blob_cmp(f->e[j].v, f->e[i].v))
                json_array_append_new(w, stamp_json(q, t, dc, f->e[j].st));
        json_object_set_new(side, "writers", w);
        json_array_append_new(sides, side);
    }
    return sides;
}

/* Ops of the history that touched field (name, key). */
static json_t *field_history(json_t *hist_j, const char *name, json_t *key)
{
    json_t *out = json_array();
    size_t i, k;
    json_t *d, *op;
    json_array_foreach(hist_j, i, d) {
        json_array_foreach(json_object_get(d, "ops"), k, op) {
            json_t *f = json_object_get(op, "field");
            if (!json_is_string(f) || strcmp(json_string_value(f), name)) continue;
            if (!json_equal(json_object_get(op, "key"), key)) continue;
            json_t *x = json_object();
            json_object_set(x, "sseq", json_object_get(d, "sseq"));
            json_object_set(x, "op", json_object_get(op, "op"));
            json_object_set(x, "value", json_object_get(op, "value"));
            json_object_set(x, "by", json_object_get(d, "by"));
            json_t *obs = json_object_get(op, "observed");
            if (obs) json_object_set(x, "observed", obs);
            json_array_append_new(out, x);
        }
    }
    return out;
}

static json_t *field_json(rq *q, store_txn *t, devcache *dc, const crdt_fspec *fs,
                          const crdt_field *f, json_t *hist_j)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(fs->name));
    json_object_set_new(o, "crdt", json_string(ftype_name(fs->type)));
    json_t *doc = fs->doc ? json_string(fs->doc) : NULL;
    json_object_set_new(o, "doc", doc ? doc : json_null());
    json_t *key = f ? key_json(f->key) : json_null();
    json_object_set_new(o, "key", key);
    json_object_set_new(o, "keyed", json_boolean(fs->keyed));
    if (fs->v.vtype == CRDT_VT_ENUM && fs->type != CRDT_F_SET) {
        json_t *ev = json_array();
        for (uint32_t i = 0; i < fs->v.n_enum; i++)
            json_array_append_new(ev, json_string(fs->v.enum_values[i]));
        json_object_set_new(o, "choices", ev);
    }
    json_t *vals = json_array();
    for (uint32_t i = 0; f && i < f->n; i++)
        json_array_append_new(vals, entry_json(q, t, dc, fs, &f->e[i]));
    json_object_set_new(o, "values", vals);
    if (fs->type == CRDT_F_MV) json_object_set_new(o, "sides", sides_json(q, t, dc, f));
    if (fs->type == CRDT_F_COUNTER)
        json_object_set_new(o, "total", json_integer(f ? crdt_field_counter(f) : 0));
    json_object_set_new(o, "conflict", json_boolean(mv_conflict(f)));
    json_object_set_new(o, "history", field_history(hist_j, fs->name, key));
    return o;
}

static int route_person(rq *q, const char *id)
{
    store_txn *t = NULL;
    crdt_record *p = NULL, *hh = NULL;
    devcache dc = {0};
    json_t *hist_j = NULL, *o = NULL;
    bool trunc = false;
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_get_record(t, "person", id, &p);
    if (rc == STORE_ENOTFOUND) {
        store_abort(t);
        return send_err(q, 404, "not_found", "没有编号为 %s 的人员档案。" EN "No person '%s'",
                        id, id);
    }
    if (!rc) dev_relay_set(t, &dc, p);
    if (!rc) rc = history_json(q, t, &dc, "person", id, &hist_j, &trunc);
    if (rc) goto fail;
    const crdt_kspec *ks = crdt_schema_kind(store_schema(q->api->st), "person", 6);
    o = json_object();
    json_object_set_new(o, "id", json_string(p->id));
    json_object_set_new(o, "kind", json_string("person"));
    json_object_set_new(o, "deleted", json_boolean(crdt_record_deleted(p)));
    json_object_set_new(o, "campaign_year", json_integer(store_campaign_year(q->api->st)));
    json_t *fields = json_array(), *conflicts = json_array();
    for (uint32_t k = 0; ks && k < ks->n_fields; k++) {
        const crdt_fspec *fs = &ks->fields[k];
        bool any = false;
        for (uint32_t i = 0; i < p->n_fields; i++) {
            const crdt_field *f = &p->fields[i];
            if (strcmp(f->name, fs->name)) continue;
            any = true;
            json_t *fj = field_json(q, t, &dc, fs, f, hist_j);
            if (json_is_true(json_object_get(fj, "conflict"))) json_array_append(conflicts, fj);
            json_array_append_new(fields, fj);
        }
        if (!any) json_array_append_new(fields, field_json(q, t, &dc, fs, NULL, hist_j));
    }
    json_object_set_new(o, "fields", fields);
    json_object_set_new(o, "conflicts", conflicts);
    json_object_set_new(o, "history", hist_j);
    hist_j = NULL;
    json_object_set_new(o, "history_truncated", json_boolean(trunc));
    char hb[CRDT_RECID_MAX + 1], tmp[256];
    field_cstr(p, "household", hb, sizeof hb);
    if (*hb && store_get_record(t, "household", hb, &hh) == STORE_OK) {
        json_t *h = json_object();
        json_object_set_new(h, "id", json_string(hb));
        json_t *addr = json_string(field_cstr(hh, "address", tmp, sizeof tmp));
        json_object_set_new(h, "address", addr ? addr : json_null());
        json_object_set_new(h, "community", json_string(field_cstr(hh, "community", tmp,
                                                                   sizeof tmp)));
        json_object_set_new(h, "grid", json_string(field_cstr(hh, "grid", tmp, sizeof tmp)));
        json_object_set_new(h, "head", head_json(t, hh));
        json_object_set_new(o, "household", h);
    } else {
        json_object_set_new(o, "household", *hb ? json_pack("{ss}", "id", hb) : json_null());
    }
    store_abort(t);
    t = NULL;
    /* The access log entry comes before the data leaves. */
    if ((rc = audit_write(q, q->actor, "person.read", id))) {
        crdt_record_free(p);
        crdt_record_free(hh);
        json_decref(o);
        return send_store_err(q, rc, "access log");
    }
    crdt_record_free(p);
    crdt_record_free(hh);
    send_json(q, 200, o);
    return 200;
fail:
    store_abort(t);
    crdt_record_free(p);
    crdt_record_free(hh);
    json_decref(hist_j);
    json_decref(o);
    return send_store_err(q, rc, "person");
}

/* ---- household page --------------------------------------------------------------------------- */

static int route_household(rq *q, const char *id)
{
    store_txn *t = NULL;
    crdt_record *hh = NULL;
    store_ids mem = {0};
    devcache dc = {0};
    json_t *o = NULL;
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_get_record(t, "household", id, &hh);
    if (rc == STORE_ENOTFOUND) {
        /* A household may have members before its own record arrives. */
        rc = store_household_members(t, id, &mem);
        if (!rc && !mem.n) {
            store_abort(t);
            return send_err(q, 404, "not_found", "没有编号为 %s 的户档案。" EN
                            "No household '%s'", id, id);
        }
    } else if (!rc) {
        rc = store_household_members(t, id, &mem);
    }
    if (rc) goto fail;
    if (store_relay_of_household(t, id, &dc.relay)) dc.relay = 0; /* a district: whose dots */
    o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "known", json_boolean(hh != NULL));
    const crdt_kspec *ks = crdt_schema_kind(store_schema(q->api->st), "household", 9);
    json_t *fields = json_array(), *visits = json_array();
    for (uint32_t k = 0; ks && k < ks->n_fields; k++) {
        const crdt_fspec *fs = &ks->fields[k];
        const crdt_field *f = hh ? crdt_record_field(hh, fs->name, (crdt_blob){NULL, 0}) : NULL;
        if (fs->type == CRDT_F_LOG) {
            for (uint32_t i = 0; f && i < f->n; i++)
                json_array_append_new(visits, entry_json(q, t, &dc, fs, &f->e[i]));
            continue;
        }
        json_array_append_new(fields, field_json(q, t, &dc, fs, f, NULL));
    }
    json_object_set_new(o, "fields", fields);
    json_object_set_new(o, "head", hh ? head_json(t, hh) : json_null());
    json_object_set_new(o, "visits", visits);
    json_t *members = json_array(), *pvisits = json_array();
    for (size_t i = 0; i < mem.n; i++) {
        crdt_record *p = NULL;
        if (store_get_record(t, "person", mem.id[i], &p)) continue;
        json_array_append_new(members, person_summary(q, t, p));
        const crdt_field *f = crdt_record_field(p, "visits", (crdt_blob){NULL, 0});
        const crdt_kspec *pk = crdt_schema_kind(store_schema(q->api->st), "person", 6);
        const crdt_fspec *vf = pk ? crdt_schema_field(pk, "visits", 6) : NULL;
        for (uint32_t k = 0; vf && f && k < f->n; k++) {
            json_t *e = entry_json(q, t, &dc, vf, &f->e[k]);
            json_object_set_new(e, "person", json_string(p->id));
            json_array_append_new(pvisits, e);
        }
        crdt_record_free(p);
    }
    json_object_set_new(o, "members", members);
    json_object_set_new(o, "person_visits", pvisits);
    store_abort(t);
    t = NULL;
    char detail[128];
    snprintf(detail, sizeof detail, "%s (%zu members)", id, mem.n);
    store_ids_free(&mem);
    crdt_record_free(hh);
    if ((rc = audit_write(q, q->actor, "household.read", detail))) {
        json_decref(o);
        return send_store_err(q, rc, "access log");
    }
    send_json(q, 200, o);
    return 200;
fail:
    store_abort(t);
    store_ids_free(&mem);
    crdt_record_free(hh);
    json_decref(o);
    return send_store_err(q, rc, "household");
}

/* ---- server-signed writes ------------------------------------------------------------------------ */

typedef struct srv_write {
    const char *person;
    crdt_op op;                  /* field, key, val, obs filled by the caller (obs: below) */
    bool observe_all;            /* mv set: observe every current dot of the instance */
    const crdt_dot *expect;      /* optional: the dots the staff member saw */
    size_t n_expect;
    int stage_min;               /* stage raise: must exceed the current ordinal */
    const char *action;          /* audit action */
    char detail[512];
    /* results */
    uint64_t seq, sseq;
    char household[CRDT_RECID_MAX + 1];
} srv_write;

static int dot_cmp_q(const void *a, const void *b)
{
    return crdt_dot_cmp(*(const crdt_dot *)a, *(const crdt_dot *)b);
}

/* One attempt in one write transaction.  Returns 0 with the HTTP status
 * already sent for refusals (*sent), or a store error to retry/report. */
static int srv_write_once(rq *q, srv_write *w, bool *sent)
{
    store *st = q->api->st;
    store_txn *t = NULL;
    crdt_record *p = NULL;
    crdt_dot *obs = NULL;
    int rc = store_begin(st, STORE_RW, &t);
    *sent = false;
    if (rc) goto out;
    rc = store_get_record(t, "person", w->person, &p);
    if (rc == STORE_ENOTFOUND) {
        send_err(q, 404, "not_found", "没有编号为 %s 的人员档案。" EN "No person '%s'",
                 w->person, w->person);
        *sent = true;
        rc = 0;
        goto out;
    }
    if (rc) goto out;
    crdt_op op = w->op;
    char fname[CRDT_NAME_MAX];
    snprintf(fname, sizeof fname, "%.*s", (int)op.field_len, op.field);
    const crdt_field *f = NULL;
    for (uint32_t i = 0; i < p->n_fields; i++)
        if (!strcmp(p->fields[i].name, fname) && !crdt_blob_cmp(p->fields[i].key, op.key))
            f = &p->fields[i];
    if (w->observe_all) {
        uint32_t n = f ? f->n : 0;
        if (w->expect) {
            bool same = n == w->n_expect;
            for (uint32_t i = 0; same && i < n; i++) {
                bool found = false;
                for (size_t j = 0; j < w->n_expect; j++)
                    found |= !crdt_dot_cmp(f->e[i].st.dot, w->expect[j]);
                same &= found;
            }
            if (!same) {
                send_err(q, 409, "changed",
                         "该字段在您查看之后已有新的修改，请刷新后重新处理。" EN "The field "
                         "changed since you loaded it (a device synced meanwhile); reload and "
                         "resolve again.");
                *sent = true;
                rc = 0;
                goto out;
            }
        }
        if (n) {
            if (!(obs = calloc(n, sizeof *obs))) {
                rc = CRDT_ENOMEM;
                goto out;
            }
            for (uint32_t i = 0; i < n; i++) obs[i] = f->e[i].st.dot;
            qsort(obs, n, sizeof *obs, dot_cmp_q);
            /* Values set by an earlier staff resolution (device 0) are
             * observed like any phone's. */
        }
        op.obs = obs;
        op.n_obs = n;
    }
    if (w->stage_min >= 0) {
        int cur = f ? crdt_field_stage(f) : -1;
        if (cur >= w->stage_min) {
            send_err(q, 409, "stage",
                     "业务已处于该阶段或之后，不能回退。" EN "The item is already at this "
                     "stage or later; stages only move forward.");
            *sent = true;
            rc = 0;
            goto out;
        }
    }
    /* The server's own delta, appended like a phone's. */
    store_server_delta r;
    if ((rc = store_server_append(t, "person", w->person, &op, 1, q->now,
                                  q->api->cfg.max_ahead_ms, &r)))
        goto out;
    if (r.invalid) {
        send_err(q, 400, "bad_value", "修改不符合档案格式：%s" EN
                 "The edit does not pass the schema: %s", crdt_value_message(r.invalid),
                 crdt_strerror(r.invalid));
        *sent = true;
        goto out;
    }
    if (r.oc.result != STORE_APPLIED) {
        send_err(q, 409, "not_applied", "服务器的修改未能写入（%s）。" EN
                 "The server's delta was not applied (%s: %s)",
                 r.oc.result == STORE_REJECTED ? "被拒绝" : "被隔离",
                 r.oc.result == STORE_REJECTED ? "rejected" : "quarantined",
                 r.oc.result == STORE_REJECTED ? store_strerror(r.oc.code)
                                               : store_qreason_name(r.oc.code));
        *sent = true;
        goto out;
    }
    w->seq = r.seq;
    w->sseq = r.oc.sseq;
    snprintf(w->household, sizeof w->household, "%s", r.oc.household);
    {
        char detail[STORE_AUDIT_DETAIL_MAX + 1];
        snprintf(detail, sizeof detail, "%s; server delta 0:%llu (sseq %llu), observed %u",
                 w->detail, (unsigned long long)w->seq, (unsigned long long)w->sseq, op.n_obs);
        if ((rc = store_audit_append(t, q->now, q->actor, w->action, detail, NULL))) goto out;
    }
    rc = store_commit(t);
    t = NULL;
out:
    store_abort(t);
    crdt_record_free(p);
    free(obs);
    return rc;
}

/* Run the write (growing the map when full); 0 = success, response unsent. */
static int srv_write_run(rq *q, srv_write *w)
{
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        bool sent = false;
        int rc = srv_write_once(q, w, &sent);
        if (sent) return -1;
        if (!rc) {
            remember_server_seq(q->api, w->seq, q->s.username);
            return 0;
        }
        if (rc == STORE_EMAPFULL && store_grow(q->api->st) == STORE_OK) continue;
        send_store_err(q, rc, "write");
        return -1;
    }
    send_store_err(q, STORE_EMAPFULL, "write");
    return -1;
}

/* A value for field spec v from JSON, as canonical bytes.  NULL msg = ok. */
static const char *json_to_val(const crdt_vspec *v, json_t *j, crdt_buf *out)
{
    crdt_buf_reset(out);
    switch (v->vtype) {
    case CRDT_VT_INT:
        if (json_is_integer(j)) return crdt_val_put_int(out, json_integer_value(j)) ? "oom" : NULL;
        if (json_is_string(j)) {
            char *end;
            long long x = strtoll(json_string_value(j), &end, 10);
            if (*json_string_value(j) && !*end) return crdt_val_put_int(out, x) ? "oom" : NULL;
        }
        return "must be an integer";
    case CRDT_VT_BOOL:
        if (json_is_boolean(j)) return crdt_val_put_bool(out, json_is_true(j)) ? "oom" : NULL;
        return "must be true or false";
    case CRDT_VT_ENTRY:
        return "cannot be set here";
    default:
        if (json_is_string(j))
            return crdt_val_put_str(out, json_string_value(j), json_string_length(j)) ? "oom"
                                                                                      : NULL;
        return "must be a string";
    }
}

/* The same text for a refused value on every write path (crdt_value_message). */
static const char *vcheck_msg(int rc) { return crdt_value_message(rc); }

/* Parse {"field","key"?,"value"} into w->op for person field spec; 400 sent
 * on failure (returns -1). */
static int parse_field_value(rq *q, json_t *j, const crdt_fspec **fs_out, crdt_buf *kb,
                             crdt_buf *vb)
{
    const crdt_kspec *ks = crdt_schema_kind(store_schema(q->api->st), "person", 6);
    const char *field = body_str(q, j, "field", CRDT_NAME_MAX);
    if (!field) return -1;
    const crdt_fspec *fs = ks ? crdt_schema_field(ks, field, strlen(field)) : NULL;
    if (!fs) {
        send_err(q, 400, "bad_field", "person has no field '%s'", field);
        return -1;
    }
    if (fs->type != CRDT_F_MV) {
        send_err(q, 400, "bad_field",
                 "field '%s' is %s: only mv fields hold conflicts to resolve", field,
                 ftype_name(fs->type));
        return -1;
    }
    json_t *key = json_object_get(j, "key");
    crdt_val pv;
    const char *m;
    if (fs->keyed) {
        if (!key || json_is_null(key)) {
            send_err(q, 400, "bad_key", "field '%s' is keyed (e.g. by year): 'key' is required",
                     field);
            return -1;
        }
        if ((m = json_to_val(&fs->key, key, kb))) {
            send_err(q, 400, "bad_key", "'key' %s", m);
            return -1;
        }
        int rc = crdt_val_parse((crdt_blob){kb->p, (uint32_t)kb->n}, &pv);
        if (!rc) rc = crdt_vspec_check(&fs->key, &pv);
        if (rc) {
            send_err(q, 400, "bad_key", "'key' for field '%s': %s", field, vcheck_msg(rc));
            return -1;
        }
    } else if (key && !json_is_null(key)) {
        send_err(q, 400, "bad_key", "field '%s' takes no 'key'", field);
        return -1;
    }
    json_t *val = json_object_get(j, "value");
    if (!val) {
        send_err(q, 400, "bad_value", "'value' is required");
        return -1;
    }
    if ((m = json_to_val(&fs->v, val, vb))) {
        send_err(q, 400, "bad_value", "'value' %s", m);
        return -1;
    }
    int rc = crdt_val_parse((crdt_blob){vb->p, (uint32_t)vb->n}, &pv);
    if (!rc) rc = crdt_fspec_check_value(fs, &pv);
    if (rc) {
        send_err(q, 400, "bad_value", "'value' for field '%s': %s", field, vcheck_msg(rc));
        return -1;
    }
    *fs_out = fs;
    return 0;
}

static int route_resolve(rq *q, const char *id)
{
    json_t *j = body_json(q);
    if (!j) return 400;
    const crdt_fspec *fs = NULL;
    crdt_buf kb = {0}, vb = {0};
    crdt_dot *expect = NULL;
    size_t n_expect = 0;
    int status = 400;
    if (parse_field_value(q, j, &fs, &kb, &vb)) goto out;
    json_t *obs = json_object_get(j, "observed");
    if (obs && !json_is_null(obs)) {
        size_t i;
        json_t *x;
        if (!json_is_array(obs) || json_array_size(obs) > 1024) {
            send_err(q, 400, "bad_parameter", "observed 应为 [设备, 序号] 的列表。" EN
                     "'observed' must be an array of [device, seq]");
            goto out;
        }
        expect = calloc(json_array_size(obs) + 1, sizeof *expect);
        if (!expect) {
            status = send_err(q, 500, "internal", "服务器内存不足。" EN "Out of memory");
            goto out;
        }
        json_array_foreach(obs, i, x) {
            json_t *dv = json_array_get(x, 0), *sv = json_array_get(x, 1);
            if (!json_is_array(x) || json_array_size(x) != 2 || !json_is_integer(dv) ||
                !json_is_integer(sv) || json_integer_value(dv) < 0 ||
                json_integer_value(dv) > UINT32_MAX || json_integer_value(sv) < 1) {
                send_err(q, 400, "bad_parameter", "observed 应为 [设备, 序号] 的列表。" EN
                         "'observed' must be an array of [device, seq] pairs");
                goto out;
            }
            expect[n_expect].dev = (uint32_t)json_integer_value(dv);
            expect[n_expect++].seq = (uint64_t)json_integer_value(sv);
        }
    }
    srv_write w;
    memset(&w, 0, sizeof w);
    w.person = id;
    w.op.code = CRDT_OP_SET;
    w.op.field = fs->name;
    w.op.field_len = (uint32_t)strlen(fs->name);
    w.op.key = (crdt_blob){kb.p, (uint32_t)kb.n};
    w.op.val = (crdt_blob){vb.p, (uint32_t)vb.n};
    w.observe_all = true;
    w.expect = expect;
    w.n_expect = expect ? n_expect : 0;
    if (obs && !json_is_null(obs) && !expect) w.expect = (const crdt_dot *)"";
    w.stage_min = -1;
    w.action = "person.resolve";
    {
        char *vs = json_dumps(json_object_get(j, "value"), JSON_ENCODE_ANY);
        char *ks = fs->keyed ? json_dumps(json_object_get(j, "key"), JSON_ENCODE_ANY) : NULL;
        snprintf(w.detail, sizeof w.detail, "person %s field %s%s%s%s = %.200s", id, fs->name,
                 ks ? "[" : "", ks ? ks : "", ks ? "]" : "", vs ? vs : "?");
        free(vs);
        free(ks);
    }
    if (srv_write_run(q, &w)) {
        status = q->resp->status;
        goto out;
    }
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "person", json_string(id));
    json_object_set_new(o, "field", json_string(fs->name));
    json_object_set(o, "key", fs->keyed ? json_object_get(j, "key") : json_null());
    json_object_set(o, "value", json_object_get(j, "value"));
    json_t *by = json_object();
    json_object_set_new(by, "username", json_string(q->s.username));
    json_t *disp = json_string(q->s.display);
    json_object_set_new(by, "display", disp ? disp : json_null());
    json_object_set_new(o, "resolved_by", by);
    json_object_set_new(o, "delta", json_pack("{sisIsI}", "dev", 0, "seq", (json_int_t)w.seq,
                                              "sseq", (json_int_t)w.sseq));
    json_object_set_new(o, "household", *w.household ? json_string(w.household) : json_null());
    snprintf(q->resp->changed_household, sizeof q->resp->changed_household, "%s", w.household);
    send_json(q, 200, o);
    status = 200;
out:
    json_decref(j);
    crdt_buf_free(&kb);
    crdt_buf_free(&vb);
    free(expect);
    return status;
}

static const crdt_fspec *stage_field(rq *q)
{
    const crdt_kspec *ks = crdt_schema_kind(store_schema(q->api->st), "person", 6);
    return ks ? crdt_schema_field(ks, "review", 6) : NULL;
}

static int route_review_raise(rq *q, const char *id)
{
    const crdt_fspec *fs = stage_field(q);
    if (!fs || fs->type != CRDT_F_STAGE)
        return send_err(q, 404, "not_found", "模式中没有业务审核阶段字段。" EN
                        "The schema has no review stage field");
    json_t *j = body_json(q);
    if (!j) return 400;
    const char *stage = body_str(q, j, "stage", 255);
    int status = 400;
    crdt_buf vb = {0};
    int ord = stage ? crdt_vspec_enum_index(&fs->v, stage, strlen(stage)) : -1;
    if (!stage) goto out;
    if (ord < 0) {
        char list[512] = "";
        for (uint32_t i = 0; i < fs->v.n_enum; i++) {
            strncat(list, i ? " < " : "", sizeof list - strlen(list) - 1);
            strncat(list, fs->v.enum_values[i], sizeof list - strlen(list) - 1);
        }
        send_err(q, 400, "bad_stage", "审核阶段应为：%s。" EN "'stage' must be one of: %s", list,
                 list);
        goto out;
    }
    if (crdt_val_put_str(&vb, stage, strlen(stage))) {
        status = send_err(q, 500, "internal", "服务器内存不足。" EN "Out of memory");
        goto out;
    }
    srv_write w;
    memset(&w, 0, sizeof w);
    w.person = id;
    w.op.code = CRDT_OP_RAISE;
    w.op.field = fs->name;
    w.op.field_len = (uint32_t)strlen(fs->name);
    w.op.val = (crdt_blob){vb.p, (uint32_t)vb.n};
    w.stage_min = ord;
    w.action = "person.review";
    snprintf(w.detail, sizeof w.detail, "person %s review -> %s", id, stage);
    if (srv_write_run(q, &w)) {
        status = q->resp->status;
        goto out;
    }
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "person", json_string(id));
    json_object_set_new(o, "stage", json_string(stage));
    json_object_set_new(o, "by", json_string(q->s.username));
    json_object_set_new(o, "delta", json_pack("{sisIsI}", "dev", 0, "seq", (json_int_t)w.seq,
                                              "sseq", (json_int_t)w.sseq));
    json_object_set_new(o, "household", *w.household ? json_string(w.household) : json_null());
    snprintf(q->resp->changed_household, sizeof q->resp->changed_household, "%s", w.household);
    send_json(q, 200, o);
    status = 200;
out:
    json_decref(j);
    crdt_buf_free(&vb);
    return status;
}

/* ---- queues: an index kept in memory, caught up from the delta log ---------------------- */

/*
 * The conflicts and review queues need totals and pages, and the store has
 * no index of either.  The API keeps one in memory (API thread only): the
 * person ids that have a conflict (crdt_record_conflicts > 0) or an open
 * review stage, sorted by id, and the server seq through which it is
 * current.  It is built by one walk over the person records the first time
 * a page needs it, then caught up on each use from the deltas committed
 * since (store_last_sseq, store_get_envelope): only the persons those
 * deltas touched are read again.  Every merge (device push, staff write,
 * quarantine accept, doorstepctl import) appends a delta, so nothing
 * changes a person without passing through the log.  A gap larger than
 * API_QX_CATCHUP_MAX deltas rebuilds instead.
 */
#define API_QX_CATCHUP_MAX 200000u /* deltas caught up one by one; more: rebuild */
#define API_QX_WALK 10000u         /* records per store_records_page call */

/* The queue state of one person (what the index keeps). */
static bool qx_entry_of(const crdt_record *r, int last_stage, qx_ent *e)
{
    memset(e, 0, sizeof *e);
    snprintf(e->id, sizeof e->id, "%s", r->id);
    e->stage = -1;
    if (crdt_record_deleted(r)) return false;
    uint32_t c = mv_conflicts(r);
    e->conflicts = (uint16_t)(c > UINT16_MAX ? UINT16_MAX : c);
    const crdt_field *f = crdt_record_field(r, "review", (crdt_blob){NULL, 0});
    int st = f ? crdt_field_stage(f) : -1;
    if (st >= 0 && st < last_stage) e->stage = (int16_t)st;
    return e->conflicts > 0 || e->stage >= 0;
}

static int qx_cmp(const void *a, const void *b)
{
    return strcmp(((const qx_ent *)a)->id, ((const qx_ent *)b)->id);
}

static int qx_push(qx_ent **v, size_t *n, size_t *cap, const qx_ent *e)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        qx_ent *nv = realloc(*v, nc * sizeof *nv);
        if (!nv) return CRDT_ENOMEM;
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = *e;
    return 0;
}

typedef struct qx_walk {
    sync_api *api;
    int last_stage;
    size_t visited;
    int rc;
} qx_walk;

static int qx_walk_cb(const crdt_record *r, void *arg)
{
    qx_walk *w = arg;
    qx_ent e;
    w->visited++;
    if (qx_entry_of(r, w->last_stage, &e) &&
        (w->rc = qx_push(&w->api->qx, &w->api->qx_n, &w->api->qx_cap, &e)))
        return w->rc;
    return 0;
}

static int qx_last_stage(rq *q)
{
    const crdt_kspec *ks = crdt_schema_kind(store_schema(q->api->st), "person", 6);
    const crdt_fspec *fs = ks ? crdt_schema_field(ks, "review", 6) : NULL;
    return fs && fs->type == CRDT_F_STAGE ? (int)fs->v.n_enum - 1 : 0;
}

/* Rebuild from every person record, in t. */
static int qx_build(rq *q, store_txn *t, uint64_t last)
{
    sync_api *api = q->api;
    char after[CRDT_RECID_MAX + 1] = "", next[CRDT_RECID_MAX + 1];
    qx_walk w = {api, qx_last_stage(q), 0, 0};
    api->qx_ready = false;
    api->qx_n = 0;
    for (;;) {
        w.visited = 0;
        next[0] = 0;
        int rc = store_records_page(t, "person", after, API_QX_WALK, qx_walk_cb, &w, next);
        if (rc) return w.rc ? w.rc : rc;
        if (w.visited < API_QX_WALK || !*next) break;
        memcpy(after, next, sizeof after);
    }
    qsort(api->qx, api->qx_n, sizeof *api->qx, qx_cmp);
    api->qx_sseq = last;
    api->qx_ready = true;
    return 0;
}

typedef struct idlist {
    char (*id)[CRDT_RECID_MAX + 1];
    size_t n, cap;
} idlist;

/* Catch up with the deltas (qx_sseq, last], in t. */
static int qx_catch_up(rq *q, store_txn *t, uint64_t last)
{
    sync_api *api = q->api;
    idlist touched = {0};
    crdt_buf env = {0};
    crdt_arena *a = crdt_arena_new(0);
    qx_ent *nv = NULL;
    size_t nn = 0, ncap = 0;
    int rc = a ? 0 : CRDT_ENOMEM, last_stage = qx_last_stage(q);
    for (uint64_t s = api->qx_sseq + 1; !rc && s <= last; s++) {
        const uint8_t *db, *sig;
        size_t dl;
        crdt_delta d;
        int err_op;
        rc = store_get_envelope(t, s, &env);
        if (rc == STORE_ENOTFOUND) {
            rc = 0;
            continue;
        }
        if (rc) break;
        crdt_arena_reset(a);
        if (wire_envelope_decode(env.p, env.n, &crdt_limits_default, &db, &dl, &sig) ||
            crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op))
            continue; /* stored, so it decoded once; store_verify reports it */
        if (d.kind_len != 6 || memcmp(d.kind, "person", 6) || !d.id_len ||
            d.id_len > CRDT_RECID_MAX)
            continue;
        if (touched.n == touched.cap) {
            size_t nc = touched.cap ? touched.cap * 2 : 64;
            void *np = realloc(touched.id, nc * sizeof *touched.id);
            if (!np) {
                rc = CRDT_ENOMEM;
                break;
            }
            touched.id = np;
            touched.cap = nc;
        }
        memcpy(touched.id[touched.n], d.id, d.id_len);
        touched.id[touched.n++][d.id_len] = 0;
    }
    if (rc) goto out;
    qsort(touched.id, touched.n, sizeof *touched.id, idlist_cmp);
    /* Merge: the old entries not touched, and the touched ones as they are now. */
    size_t i = 0, k = 0;
    while (!rc && (i < api->qx_n || k < touched.n)) {
        int c = i == api->qx_n ? 1 : k == touched.n ? -1 : strcmp(api->qx[i].id, touched.id[k]);
        if (c < 0) {
            rc = qx_push(&nv, &nn, &ncap, &api->qx[i++]);
            continue;
        }
        if (c == 0) i++;
        const char *id = touched.id[k];
        while (k < touched.n && !strcmp(touched.id[k], id)) k++; /* duplicates */
        crdt_record *r = NULL;
        qx_ent e;
        int g = store_get_record(t, "person", id, &r);
        if (g && g != STORE_ENOTFOUND) rc = g;
        else if (!g && qx_entry_of(r, last_stage, &e)) rc = qx_push(&nv, &nn, &ncap, &e);
        crdt_record_free(r);
    }
    if (rc) goto out;
    free(api->qx);
    api->qx = nv;
    api->qx_n = nn;
    api->qx_cap = ncap;
    nv = NULL;
    api->qx_sseq = last;
out:
    free(nv);
    free(touched.id);
    crdt_buf_free(&env);
    crdt_arena_free(a);
    return rc;
}

/* Make the index current as of t's snapshot. */
static int qx_sync(rq *q, store_txn *t)
{
    uint64_t last = 0;
    int rc = store_last_sseq(t, &last);
    if (rc) return rc;
    sync_api *api = q->api;
    if (api->qx_ready && last == api->qx_sseq) return 0;
    if (!api->qx_ready || last < api->qx_sseq || last - api->qx_sseq > API_QX_CATCHUP_MAX)
        rc = qx_build(q, t, last);
    else
        rc = qx_catch_up(q, t, last);
    if (rc) api->qx_ready = false; /* rebuilt next time */
    return rc;
}

/* Persons with conflicts and the conflicting field instances (index totals). */
static void qx_conflict_totals(const sync_api *api, uint64_t *persons, uint64_t *fields)
{
    *persons = *fields = 0;
    for (size_t i = 0; i < api->qx_n; i++)
        if (api->qx[i].conflicts) {
            (*persons)++;
            *fields += api->qx[i].conflicts;
        }
}

/* The conflicting field instances of r, each with its distinct values and,
 * per value, every writer. */
static json_t *conflict_fields_json(rq *q, store_txn *t, devcache *dc, const crdt_record *r)
{
    json_t *fl = json_array();
    for (uint32_t i = 0; i < r->n_fields; i++) {
        const crdt_field *f = &r->fields[i];
        if (!mv_conflict(f)) continue;
        json_t *x = json_object();
        json_object_set_new(x, "field", json_string(f->name));
        json_object_set_new(x, "key", key_json(f->key));
        json_object_set_new(x, "values", instance_values(f));
        json_object_set_new(x, "sides", sides_json(q, t, dc, f));
        json_array_append_new(fl, x);
    }
    return fl;
}

/* Paging parameters: offset (0..API_OFFSET_MAX) or after (an id), limit. */
static int page_params(rq *q, uint64_t def_limit, uint64_t max_limit, char after[CRDT_RECID_MAX + 2],
                       bool *has_after, uint64_t *offset, uint64_t *limit)
{
    char ob[32];
    const char *af = qparam(q, "after", after, CRDT_RECID_MAX + 2);
    *has_after = af && *af;
    if (*has_after && !recid_ok(af, strlen(af))) {
        send_err(q, 400, "bad_parameter",
                 "参数 after 应为档案编号（1 至 64 个字母、数字或 _ . -）。" EN
                 "'after' must be a record id (1..64 of A-Z a-z 0-9 _ . -)");
        return -1;
    }
    if (qnum(q, "offset", 0, API_OFFSET_MAX, 0, offset) || qnum(q, "limit", 1, max_limit, def_limit, limit))
        return -1;
    if (*has_after && qparam(q, "offset", ob, sizeof ob)) {
        send_err(q, 400, "bad_parameter",
                 "参数 after 与 offset 只能给一个。" EN "Give either 'after' or 'offset', not both");
        return -1;
    }
    return 0;
}

static int route_queue(rq *q, int mode)
{
    char after[CRDT_RECID_MAX + 2], sb[256];
    bool has_after;
    uint64_t offset, limit;
    int stage = -2; /* review: only this ordinal (-2: any open) */
    if (page_params(q, 50, 200, after, &has_after, &offset, &limit)) return 400;
    const crdt_fspec *rf = stage_field(q);
    if (mode == 1) {
        if (!rf || rf->type != CRDT_F_STAGE)
            return send_err(q, 404, "not_found", "模式中没有业务审核阶段字段。" EN
                                                 "The schema has no review stage field");
        const char *sv = qparam(q, "stage", sb, sizeof sb);
        if (sv && *sv) {
            stage = crdt_vspec_enum_index(&rf->v, sv, strlen(sv));
            if (stage < 0 || stage >= (int)rf->v.n_enum - 1) {
                char list[512] = "";
                for (uint32_t i = 0; i + 1 < rf->v.n_enum; i++) {
                    strncat(list, i ? "、" : "", sizeof list - strlen(list) - 1);
                    strncat(list, rf->v.enum_values[i], sizeof list - strlen(list) - 1);
                }
                return send_err(q, 400, "bad_parameter",
                                "参数 stage 应为未办结的审核阶段：%s。" EN
                                "'stage' must be an open review stage: %s", list, list);
            }
        }
    }
    store_txn *t = NULL;
    devcache dc = {0};
    json_t *items = json_array();
    uint64_t total = 0, shown = 0, by_stage[64] = {0};
    size_t last_i = 0;
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = qx_sync(q, t);
    if (rc) goto fail;
    const sync_api *api = q->api;
    /* Where the page starts: offset, or just after the id `after`. */
    if (has_after) {
        offset = 0;
        for (size_t i = 0; i < api->qx_n && strcmp(api->qx[i].id, after) <= 0; i++) {
            const qx_ent *e = &api->qx[i];
            bool match = mode == 0 ? e->conflicts > 0
                                   : e->stage >= 0 && (stage == -2 || e->stage == stage);
            offset += match;
        }
    }
    for (size_t i = 0; i < api->qx_n; i++) {
        const qx_ent *e = &api->qx[i];
        if (mode == 1 && e->stage >= 0 && e->stage < 64) by_stage[e->stage]++;
        bool match = mode == 0 ? e->conflicts > 0
                               : e->stage >= 0 && (stage == -2 || e->stage == stage);
        if (!match) continue;
        if (total++ < offset || shown >= limit) continue;
        crdt_record *r = NULL;
        int g = store_get_record(t, "person", e->id, &r);
        if (g == STORE_ENOTFOUND) continue;
        if (g) {
            rc = g;
            goto fail;
        }
        json_t *p = person_summary(q, t, r);
        add_place(t, p, r);
        dev_relay_set(t, &dc, r);
        if (mode == 0) json_object_set_new(p, "conflict_fields", conflict_fields_json(q, t, &dc, r));
        json_array_append_new(items, p);
        crdt_record_free(r);
        shown++;
        last_i = i;
    }
    store_abort(t);
    t = NULL;
    json_t *o = json_object();
    json_object_set_new(o, "items", items);
    json_object_set_new(o, "total", json_integer((json_int_t)total));
    json_object_set_new(o, "offset", json_integer((json_int_t)offset));
    json_object_set_new(o, "limit", json_integer((json_int_t)limit));
    json_object_set_new(o, "next", shown && offset + shown < total ? json_string(api->qx[last_i].id)
                                                                   : json_null());
    if (mode == 1) {
        json_t *st = json_array(), *counts = json_array();
        for (uint32_t i = 0; i < rf->v.n_enum; i++) {
            json_array_append_new(st, json_string(rf->v.enum_values[i]));
            if (i + 1 < rf->v.n_enum && i < 64)
                json_array_append_new(counts, json_pack("{sssI}", "stage", rf->v.enum_values[i],
                                                        "count", (json_int_t)by_stage[i]));
        }
        json_object_set_new(o, "stages", st);
        json_object_set_new(o, "open_stages", counts);
    }
    audit_write(q, q->actor, mode ? "queue.review" : "queue.conflicts", NULL);
    send_json(q, 200, o);
    return 200;
fail:
    store_abort(t);
    json_decref(items);
    return send_store_err(q, rc, "queue");
}

/* ---- admin: quarantine, devices, staff ------------------------------------------------------------- */

typedef struct qlist {
    rq *q;
    store_txn *t;
    devcache dc;
    json_t *items;
    uint64_t skip;               /* entries of the walk before the page */
} qlist;

static int qlist_cb(const store_qentry *e, const store_qreview *rv, void *arg)
{
    qlist *l = arg;
    if (l->skip) {
        l->skip--;
        return 0;
    }
    json_t *x = json_object();
    json_object_set_new(x, "qid", json_integer((json_int_t)e->qid));
    json_object_set_new(x, "reason", json_string(store_qreason_name(e->reason)));
    json_object_set_new(x, "dev", json_integer(e->dev));
    json_object_set_new(x, "seq", json_integer((json_int_t)e->seq));
    json_object_set_new(x, "at_ms", json_integer((json_int_t)e->at_ms));
    const char *v = volunteer_of(l->t, &l->dc, e->dev);
    json_t *vs = v ? json_string(v) : NULL;
    json_object_set_new(x, "volunteer", vs ? vs : json_null());
    json_object_set_new(x, "state", json_string(store_qstate_name(rv->state)));
    if (rv->state != STORE_QSTATE_PENDING) {
        json_t *ac = json_string(rv->actor), *nt = json_string(rv->note);
        json_object_set_new(x, "decided_by", ac ? ac : json_null());
        json_object_set_new(x, "decided_ms", json_integer((json_int_t)rv->decided_ms));
        json_object_set_new(x, "note", nt ? nt : json_null());
    }
    const uint8_t *db, *sig;
    size_t dl;
    crdt_delta d;
    int err_op;
    crdt_arena *a = crdt_arena_new(0);
    int rc = a ? wire_envelope_decode(e->env.p, e->env.n, &crdt_limits_default, &db, &dl, &sig)
               : CRDT_ENOMEM;
    if (!rc) rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op);
    if (!rc) {
        json_object_set_new(x, "kind", json_stringn(d.kind, d.kind_len));
        json_object_set_new(x, "record", json_stringn(d.id, d.id_len));
        json_object_set_new(x, "hlc_ms", json_integer((json_int_t)CRDT_HLC_MS(d.hlc)));
        json_t *ops = json_array();
        for (uint32_t k = 0; k < d.n_ops; k++) {
            const crdt_op *op = &d.ops[k];
            json_t *o = json_object();
            json_object_set_new(o, "op", json_string(crdt_opcode_name(op->code)));
            json_object_set_new(o, "field", op->field ? json_stringn(op->field, op->field_len)
                                                      : json_null());
            json_object_set_new(o, "key", key_json(op->key));
            json_object_set_new(o, "value", op->val.n ? val_json(op->val) : json_null());
            json_array_append_new(ops, o);
        }
        json_object_set_new(x, "ops", ops);
    } else {
        json_object_set_new(x, "decode_error", json_string(store_strerror(rc)));
    }
    crdt_arena_free(a);
    json_array_append_new(l->items, x);
    return 0;
}

static int route_quarantine(rq *q)
{
    uint64_t after, limit, offset, next = 0, total = 0, counts[4] = {0};
    char sb[32], ob[32];
    int state = STORE_QSTATE_PENDING;
    if (qnum(q, "after", 0, UINT64_MAX - 1, 0, &after) ||
        qnum(q, "offset", 0, API_OFFSET_MAX, 0, &offset) ||
        qnum(q, "limit", 1, 500, 100, &limit))
        return 400;
    if (after && qparam(q, "offset", ob, sizeof ob))
        return send_err(q, 400, "bad_parameter",
                        "参数 after 与 offset 只能给一个。" EN "Give either 'after' or 'offset', "
                        "not both");
    const char *sv = qparam(q, "state", sb, sizeof sb);
    if (sv) {
        if (!strcmp(sv, "pending")) state = STORE_QSTATE_PENDING;
        else if (!strcmp(sv, "accepted")) state = STORE_QSTATE_ACCEPTED;
        else if (!strcmp(sv, "rejected")) state = STORE_QSTATE_REJECTED;
        else if (!strcmp(sv, "all")) state = 0;
        else
            return send_err(q, 400, "bad_parameter",
                            "参数 state 应为 pending（待审）、accepted（已接受）、rejected（已拒绝）"
                            "或 all（全部）。" EN "'state' must be pending, accepted, rejected or "
                            "all");
    }
    qlist l;
    memset(&l, 0, sizeof l);
    l.q = q;
    l.items = json_array();
    l.skip = after ? 0 : offset;
    int rc = store_begin(q->api->st, STORE_RDONLY, &l.t);
    if (!rc) rc = store_quarantine_counts(l.t, counts); /* [0] all, [state] each */
    total = counts[state];
    if (!rc)
        rc = store_quarantine_list(l.t, after, (size_t)(l.skip + limit), state, qlist_cb, &l,
                                   &next);
    store_abort(l.t);
    if (rc) {
        json_decref(l.items);
        return send_store_err(q, rc, "quarantine");
    }
    json_t *o = json_object();
    json_object_set_new(o, "total", json_integer((json_int_t)total));
    json_object_set_new(o, "counts", json_pack("{sIsIsIsI}", "all", (json_int_t)counts[0],
                                               "pending", (json_int_t)counts[1],
                                               "accepted", (json_int_t)counts[2],
                                               "rejected", (json_int_t)counts[3]));
    json_object_set_new(o, "offset", json_integer((json_int_t)(after ? 0 : offset)));
    json_object_set_new(o, "limit", json_integer((json_int_t)limit));
    json_object_set_new(o, "items", l.items);
    json_object_set_new(o, "next", json_integer((json_int_t)next));
    send_json(q, 200, o);
    return 200;
}

/* POST /api/quarantine/{qid}/accept|reject {"note"?}. */
static int route_quarantine_decide(rq *q, const char *qs, bool accept)
{
    char *end;
    unsigned long long qid = strtoull(qs, &end, 10);
    const char *note = NULL;
    json_t *j = NULL;
    if (!*qs || *end || !qid)
        return send_err(q, 400, "bad_parameter", "隔离记录编号应为正整数。" EN
                        "Quarantine id must be a positive integer");
    if (q->req->body_len) {
        if (!(j = body_json(q))) return 400;
        json_t *n = json_object_get(j, "note");
        if (n && !json_is_string(n)) {
            json_decref(j);
            return send_err(q, 400, "bad_parameter", "备注应为文字。" EN
                            "'note' must be a string");
        }
        note = n ? json_string_value(n) : NULL;
    }
    store_qreview rv;
    int rc = 0;
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        store_txn *t = NULL;
        rc = store_begin(q->api->st, STORE_RW, &t);
        if (!rc) rc = accept ? store_quarantine_accept(t, qid, q->now, q->actor, &rv)
                             : store_quarantine_reject(t, qid, q->now, q->actor, note, &rv);
        if (!rc) {
            rc = store_commit(t);
            t = NULL;
        }
        store_abort(t);
        if (rc == STORE_EMAPFULL && store_grow(q->api->st) == STORE_OK) continue;
        break;
    }
    json_decref(j);
    if (rc == STORE_ENOTFOUND)
        return send_err(q, 404, "not_found", "没有第 %llu 号隔离记录。" EN
                        "No quarantine entry %llu", qid, qid);
    if (rc == STORE_EINVAL)
        return send_err(q, 409, "decided",
                        "第 %llu 号隔离记录已经处理过（或备注超过 %d 字节）。" EN
                        "Entry %llu is already decided (or the note is not 1..%d bytes of UTF-8)",
                        qid, STORE_QNOTE_MAX, qid, STORE_QNOTE_MAX);
    if (rc < 0 && rc > -200)
        return send_err(q, 409, "not_mergeable", "该记录无法合并：%s" EN
                        "The kept delta cannot be merged: %s", crdt_value_message(rc),
                        store_strerror(rc));
    if (rc) return send_store_err(q, rc, "quarantine");
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "qid", json_integer((json_int_t)qid));
    json_object_set_new(o, "state", json_string(store_qstate_name(rv.state)));
    json_object_set_new(o, "sseq", json_integer((json_int_t)rv.sseq));
    send_json(q, 200, o);
    return 200;
}

typedef struct dlist {
    store_txn *t;
    json_t *items;
} dlist;

static int dlist_cb(const store_device *d, size_t scope_n, void *arg)
{
    dlist *l = arg;
    uint64_t head = 0;
    uint8_t h[CRDT_HASH_BYTES];
    store_chain_head(l->t, d->id, &head, h);
    json_t *x = json_object();
    json_object_set_new(x, "id", json_integer(d->id));
    json_t *vs = json_string(d->volunteer);
    json_object_set_new(x, "volunteer", vs ? vs : json_null());
    json_object_set_new(x, "state", json_string(store_device_state_name(d->state)));
    json_object_set_new(x, "epoch", json_integer(d->epoch));
    json_object_set_new(x, "created_ms", json_integer((json_int_t)d->created_ms));
    json_object_set_new(x, "last_sync_ms", json_integer((json_int_t)d->last_sync_ms));
    json_object_set_new(x, "last_seq", json_integer((json_int_t)head));
    json_object_set_new(x, "revoked_at_seq", json_integer((json_int_t)d->revoked_at_seq));
    json_object_set_new(x, "rotate_required", json_boolean(d->flags & STORE_DEVF_ROTATE_REQUIRED));
    json_object_set_new(x, "scope_households", json_integer((json_int_t)scope_n));
    /* At a district: "relay" for a street server, or the street phone this
     * device stands for ({relay, dev}: the street's own device number). */
    uint32_t relay = 0, sdev = 0;
    store_ids sc = {0};
    if (store_relay_origin(l->t, d->id, &relay, &sdev) == STORE_OK)
        json_object_set_new(x, "relayed", json_pack("{s:I, s:I}", "relay", (json_int_t)relay,
                                                    "dev", (json_int_t)sdev));
    else if (scope_n == 1 && store_device_scope_get(l->t, d->id, &sc) == STORE_OK && sc.n == 1 &&
             !strcmp(sc.id[0], STORE_RELAY_SCOPE))
        json_object_set_new(x, "relay", json_true());
    store_ids_free(&sc);
    return json_array_append_new(l->items, x) ? CRDT_ENOMEM : 0;
}

static int route_devices(rq *q)
{
    dlist l = {NULL, json_array()};
    int rc = store_begin(q->api->st, STORE_RDONLY, &l.t);
    if (!rc) rc = store_device_list(l.t, dlist_cb, &l);
    store_abort(l.t);
    if (rc) {
        json_decref(l.items);
        return send_store_err(q, rc, "devices");
    }
    json_t *o = json_object();
    json_object_set_new(o, "items", l.items);
    json_object_set_new(o, "now_ms", json_integer((json_int_t)q->now));
    send_json(q, 200, o);
    return 200;
}

/* POST /api/devices/{id}/revoke {"mode":"soft"|"hard"} and /rotate. */
static int route_device_action(rq *q, const char *ids, const char *action)
{
    char *end;
    unsigned long id = strtoul(ids, &end, 10);
    if (!*ids || *end || id == 0 || id > UINT32_MAX)
        return send_err(q, 400, "bad_parameter", "设备编号应为正整数。" EN
                        "Device id must be a positive integer");
    bool revoke = !strcmp(action, "revoke");
    int how = STORE_REVOKE_SOFT;
    if (revoke) {
        json_t *j = body_json(q);
        if (!j) return 400;
        json_t *m = json_object_get(j, "mode");
        const char *mode = json_is_string(m) ? json_string_value(m) : m ? "" : "soft";
        if (!strcmp(mode, "hard")) how = STORE_REVOKE_HARD;
        else if (strcmp(mode, "soft")) {
            json_decref(j);
            return send_err(q, 400, "bad_parameter", "吊销方式应为 soft（可交回）或 hard（已泄露）。" EN
                            "'mode' must be \"soft\" or \"hard\"");
        }
        json_decref(j);
    }
    store_device d;
    int rc = 0;
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        store_txn *t = NULL;
        rc = store_begin(q->api->st, STORE_RW, &t);
        if (!rc) rc = revoke ? store_device_revoke(t, (uint32_t)id, how, q->now, q->actor)
                             : store_device_require_rotation(t, (uint32_t)id, true, q->now,
                                                             q->actor);
        if (!rc) rc = store_device_get(t, (uint32_t)id, &d);
        if (!rc) {
            rc = store_commit(t);
            t = NULL;
        }
        store_abort(t);
        if (rc == STORE_EMAPFULL && store_grow(q->api->st) == STORE_OK) continue;
        break;
    }
    if (rc == STORE_ENOTFOUND)
        return send_err(q, 404, "not_found", "没有 %lu 号设备。" EN "No device %lu", id, id);
    if (rc == STORE_EINVAL)
        return send_err(q, 409, "state",
                        revoke ? "%lu 号设备已彻底吊销，不能改为可交回。" EN
                                 "Device %lu is hard-revoked: it cannot go back to soft"
                               : "%lu 号设备已吊销，不能再要求更换密钥。" EN
                                 "Device %lu is revoked: no rotation to require", id, id);
    if (rc) return send_store_err(q, rc, "device");
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "id", json_integer((json_int_t)id));
    json_object_set_new(o, "state", json_string(store_device_state_name(d.state)));
    json_object_set_new(o, "revoked_at_seq", json_integer((json_int_t)d.revoked_at_seq));
    json_object_set_new(o, "rotate_required", json_boolean(d.flags & STORE_DEVF_ROTATE_REQUIRED));
    send_json(q, 200, o);
    return 200;
}


/*
 * POST /api/devices/enroll (admin): a one-time enrollment token for a
 * volunteer and a scope, shown once as text, as the enrollment URI
 * (doorstep://enroll?token=..&spk=.., as doorstepctl prints it) and as a QR
 * code matrix the page draws.  Body: {"volunteer", "scope": ["H001",
 * "C01/G03", ...], "expires_days"?: 1..90 (default 7)}.
 */
static int route_device_enroll(rq *q)
{
    json_t *j = body_json(q);
    if (!j) return 400;
    const char *vol = body_str(q, j, "volunteer", STORE_VOLUNTEER_MAX);
    json_t *sc = json_object_get(j, "scope"), *ex = json_object_get(j, "expires_days");
    const char **scope = NULL;
    size_t ns = 0;
    int status = 400;
    if (!vol) goto out;
    if (!*vol) {
        send_err(q, 400, "bad_parameter", "请填写志愿者姓名。" EN "'volunteer' must not be empty");
        goto out;
    }
    if (!json_is_array(sc) || json_array_size(sc) == 0 || json_array_size(sc) > STORE_SCOPE_MAX) {
        send_err(q, 400, "bad_parameter",
                 "负责范围应为 1 至 %d 个户编号或“社区/网格”。" EN
                 "'scope' must be a list of 1..%d household ids or community/grid entries",
                 STORE_SCOPE_MAX, STORE_SCOPE_MAX);
        goto out;
    }
    json_int_t days = 7;
    if (ex && (!json_is_integer(ex) || json_integer_value(ex) < 1 || json_integer_value(ex) > 90)) {
        send_err(q, 400, "bad_parameter", "有效天数应为 1 至 90。" EN "'expires_days' must be 1..90");
        goto out;
    }
    if (ex) days = json_integer_value(ex);
    ns = json_array_size(sc);
    scope = calloc(ns, sizeof *scope);
    if (!scope) {
        status = send_store_err(q, CRDT_ENOMEM, "enroll");
        goto out;
    }
    for (size_t i = 0; i < ns; i++) {
        json_t *e = json_array_get(sc, i);
        if (!json_is_string(e) || json_string_length(e) == 0 ||
            json_string_length(e) > STORE_SCOPE_ITEM_MAX) {
            send_err(q, 400, "bad_parameter", "负责范围第 %zu 项不能为空。" EN
                     "Scope entry %zu must be a non-empty string", i + 1, i + 1);
            goto out;
        }
        scope[i] = json_string_value(e);
    }
    char tok[STORE_TOKEN_TEXT_LEN + 1];
    int rc = 0;
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        store_txn *t = NULL;
        char detail[200];
        rc = store_begin(q->api->st, STORE_RW, &t);
        if (!rc) rc = store_token_create(t, vol, scope, ns, q->now,
                                         q->now + (uint64_t)days * 86400000ull, tok);
        snprintf(detail, sizeof detail, "enrollment token for %s, %zu scope entries, %lld days",
                 vol, ns, (long long)days);
        if (!rc) rc = store_audit_append(t, q->now, q->actor, "token.create", detail, NULL);
        if (!rc) {
            rc = store_commit(t);
            t = NULL;
        }
        store_abort(t);
        if (rc == STORE_EMAPFULL && store_grow(q->api->st) == STORE_OK) continue;
        break;
    }
    if (rc == STORE_EINVAL) {
        send_err(q, 400, "bad_parameter", "志愿者姓名或负责范围的文字无效或太长。" EN
                 "Volunteer name or scope entries are not valid UTF-8 of the allowed lengths");
        goto out;
    }
    if (rc) {
        status = send_store_err(q, rc, "enroll");
        goto out;
    }
    char spk[65], uri[200];
    sodium_bin2hex(spk, sizeof spk, store_server_pk(q->api->st), 32);
    snprintf(uri, sizeof uri, "doorstep://enroll?token=%s&spk=%s", tok, spk);
    QRcode *qr = QRcode_encodeString(uri, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
    json_t *o = json_object();
    json_object_set_new(o, "token", json_string(tok));
    json_object_set_new(o, "uri", json_string(uri));
    json_object_set_new(o, "volunteer", json_string(vol));
    json_object_set_new(o, "expires_ms", json_integer((json_int_t)(q->now + (uint64_t)days * 86400000ull)));
    if (qr) {
        /* The matrix as rows of '0'/'1' (dark = '1'); the page draws it. */
        json_t *rows = json_array();
        char *line = malloc((size_t)qr->width + 1);
        for (int y = 0; line && y < qr->width; y++) {
            for (int x = 0; x < qr->width; x++)
                line[x] = (qr->data[y * qr->width + x] & 1) ? '1' : '0';
            line[qr->width] = 0;
            json_array_append_new(rows, json_string(line));
        }
        free(line);
        json_object_set_new(o, "qr", json_pack("{s:i, s:o}", "size", qr->width, "rows", rows));
        QRcode_free(qr);
    } else {
        json_object_set_new(o, "qr", json_null());
    }
    sodium_memzero(tok, sizeof tok);
    send_json(q, 200, o);
    status = 200;
out:
    free(scope);
    json_decref(j);
    return status;
}

static int staff_list_cb(const store_staff *s, void *arg)
{
    json_t *x = json_object();
    json_object_set_new(x, "username", json_string(s->username));
    json_t *d = json_string(s->display);
    json_object_set_new(x, "display", d ? d : json_null());
    json_object_set_new(x, "role", json_string(role_name(s->role)));
    json_object_set_new(x, "disabled", json_boolean(s->disabled));
    json_object_set_new(x, "locked_until_ms", json_integer((json_int_t)s->locked_until_ms));
    json_object_set_new(x, "last_login_ms", json_integer((json_int_t)s->last_login_ms));
    json_object_set_new(x, "created_ms", json_integer((json_int_t)s->created_ms));
    return json_array_append_new(arg, x) ? CRDT_ENOMEM : 0;
}

static int route_staff_list(rq *q)
{
    store_txn *t = NULL;
    json_t *items = json_array();
    int rc = store_begin(q->api->st, STORE_RDONLY, &t);
    if (!rc) rc = store_staff_list(t, staff_list_cb, items);
    store_abort(t);
    if (rc) {
        json_decref(items);
        return send_store_err(q, rc, "staff");
    }
    json_t *o = json_object();
    json_object_set_new(o, "items", items);
    send_json(q, 200, o);
    return 200;
}

static int route_staff_create(rq *q)
{
    json_t *j = body_json(q);
    if (!j) return 400;
    const char *u = body_str(q, j, "username", STORE_USER_MAX);
    const char *disp = u ? body_str(q, j, "display", STORE_DISPLAY_MAX) : NULL;
    const char *role = disp ? body_str(q, j, "role", 16) : NULL;
    const char *pw = role ? body_str(q, j, "password", STORE_PASSWORD_MAX) : NULL;
    int status = 400, rc = 0;
    if (!pw) goto out;
    uint8_t r = !strcmp(role, "admin") ? STORE_ROLE_ADMIN : !strcmp(role, "staff")
                                                                ? STORE_ROLE_STAFF : 0;
    if (!username_chars_ok(u)) {
        send_err(q, 400, "bad_parameter",
                 "用户名应为 1 至 32 个小写字母、数字或 _ . -。" EN
                 "'username' must be 1..32 of [a-z0-9_.-]");
        goto out;
    }
    if (!r) {
        send_err(q, 400, "bad_parameter", "角色应为工作人员（staff）或管理员（admin）。" EN
                 "'role' must be \"staff\" or \"admin\"");
        goto out;
    }
    if (strlen(pw) < STORE_PASSWORD_MIN) {
        send_err(q, 400, "bad_parameter", "密码至少 %d 个字符。" EN
                 "'password' must have at least %d bytes", STORE_PASSWORD_MIN, STORE_PASSWORD_MIN);
        goto out;
    }
    for (int tries = 0; tries < API_WRITE_TRIES; tries++) {
        store_txn *t = NULL;
        rc = store_begin(q->api->st, STORE_RW, &t);
        if (!rc) rc = store_staff_create(t, u, disp, r, pw, q->now, NULL);
        if (!rc) rc = store_audit_append(t, q->now, q->actor, "staff.create", u, NULL);
        if (!rc) {
            rc = store_commit(t);
            t = NULL;
        }
        store_abort(t);
        if (rc == STORE_EMAPFULL && store_grow(q->api->st) == STORE_OK) continue;
        break;
    }
    if (rc == STORE_EEXIST) {
        status = send_err(q, 409, "exists", "账户 %s 已存在。" EN "An account '%s' already exists",
                          u, u);
    } else if (rc == STORE_EINVAL) {
        status = send_err(q, 400, "bad_parameter",
                          "账户信息无效：姓名 1 至 127 字节，密码 %d 至 %d 字节。" EN
                          "Invalid account: display name 1..127 bytes of UTF-8, password "
                          "%d..%d bytes", STORE_PASSWORD_MIN, STORE_PASSWORD_MAX,
                          STORE_PASSWORD_MIN, STORE_PASSWORD_MAX);
    } else if (rc) {
        status = send_store_err(q, rc, "staff");
    } else {
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_true());
        json_object_set_new(o, "username", json_string(u));
        send_json(q, 201, o);
        status = 201;
    }
out:
    json_decref(j);
    return status;
}

/* ---- routing ------------------------------------------------------------------------------------------ */

static bool seg_is(const rq *q, size_t i, const char *s)
{
    return i < q->nseg && strlen(s) == q->seg_len[i] && !memcmp(q->seg[i], s, q->seg_len[i]);
}

/* Split the path after "/api/" into NUL-terminated segments. */
static int split_path(rq *q)
{
    const char *p = q->req->path ? q->req->path : "";
    if (strncmp(p, "/api/", 5)) return -1;
    p += 5;
    size_t n = strlen(p);
    if (n >= sizeof q->segbuf) return -1;
    memcpy(q->segbuf, p, n + 1);
    char *s = q->segbuf;
    while (*s) {
        if (q->nseg == 6) return -1;
        char *slash = strchr(s, '/');
        if (slash) *slash = 0;
        q->seg[q->nseg] = s;
        q->seg_len[q->nseg] = strlen(s);
        q->nseg++;
        if (!slash) break;
        s = slash + 1;
        if (!*s) break; /* trailing slash */
    }
    return 0;
}

static int need_admin(rq *q)
{
    if (q->s.role == STORE_ROLE_ADMIN) return 0;
    send_err(q, 403, "forbidden", "仅限管理员。" EN "Administrators only");
    return -1;
}

static int method_not_allowed(rq *q)
{
    return send_err(q, 405, "method", "不支持此操作（%s）。" EN "%s is not allowed on %s",
                    q->req->method, q->req->method, q->req->path);
}

static int dispatch(rq *q)
{
    const char *m = q->req->method ? q->req->method : "";
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST");
    if (seg_is(q, 0, "me") && q->nseg == 1) {
        if (!get) return method_not_allowed(q);
        send_json(q, 200, me_json(&q->s));
        return 200;
    }
    if (seg_is(q, 0, "logout") && q->nseg == 1)
        return post ? route_logout(q) : method_not_allowed(q);
    if (seg_is(q, 0, "overview") && q->nseg == 1)
        return get ? route_overview(q) : method_not_allowed(q);
    if (seg_is(q, 0, "search") && q->nseg == 1)
        return get ? route_search(q) : method_not_allowed(q);
    if (seg_is(q, 0, "households") && q->nseg == 2) {
        if (!recid_ok(q->seg[1], q->seg_len[1]))
            return send_err(q, 400, "bad_parameter",
                            "户编号无效（1 至 64 个字母、数字或 _ . -）。" EN
                            "Not a household id (1..64 of A-Z a-z 0-9 _ . -)");
        return get ? route_household(q, q->seg[1]) : method_not_allowed(q);
    }
    if (seg_is(q, 0, "persons") && (q->nseg == 2 || q->nseg == 3)) {
        if (!recid_ok(q->seg[1], q->seg_len[1]))
            return send_err(q, 400, "bad_parameter",
                            "人员编号无效（1 至 64 个字母、数字或 _ . -）。" EN
                            "Not a person id (1..64 of A-Z a-z 0-9 _ . -)");
        if (q->nseg == 2) return get ? route_person(q, q->seg[1]) : method_not_allowed(q);
        if (seg_is(q, 2, "resolve")) return post ? route_resolve(q, q->seg[1])
                                                 : method_not_allowed(q);
        if (seg_is(q, 2, "review")) return post ? route_review_raise(q, q->seg[1])
                                                : method_not_allowed(q);
    }
    if (seg_is(q, 0, "queues") && q->nseg == 2) {
        if (!get) return method_not_allowed(q);
        if (seg_is(q, 1, "conflicts")) return route_queue(q, 0);
        if (seg_is(q, 1, "review")) return route_queue(q, 1);
    }
    if (seg_is(q, 0, "report") && q->nseg == 2) {
        if (!get) return method_not_allowed(q);
        if (seg_is(q, 1, "weekly")) return route_weekly(q);
        if (seg_is(q, 1, "weekly.csv")) return route_weekly_csv(q);
    }
    if (seg_is(q, 0, "quarantine")) {
        if (need_admin(q)) return 403;
        if (q->nseg == 1) return get ? route_quarantine(q) : method_not_allowed(q);
        if (q->nseg == 3 && (seg_is(q, 2, "accept") || seg_is(q, 2, "reject")))
            return post ? route_quarantine_decide(q, q->seg[1], seg_is(q, 2, "accept"))
                        : method_not_allowed(q);
    }
    if (seg_is(q, 0, "devices")) {
        if (need_admin(q)) return 403;
        if (q->nseg == 1) return get ? route_devices(q) : method_not_allowed(q);
        if (q->nseg == 2 && seg_is(q, 1, "enroll"))
            return post ? route_device_enroll(q) : method_not_allowed(q);
        if (q->nseg == 3 && (seg_is(q, 2, "revoke") || seg_is(q, 2, "rotate")))
            return post ? route_device_action(q, q->seg[1], q->seg[2]) : method_not_allowed(q);
    }
    if (seg_is(q, 0, "staff") && q->nseg == 1) {
        if (need_admin(q)) return 403;
        if (get) return route_staff_list(q);
        if (post) return route_staff_create(q);
        return method_not_allowed(q);
    }
    return send_err(q, 404, "not_found", "没有这个接口。" EN "No route %s %s", m, q->req->path);
}

int sync_api_handle(sync_api *api, const sync_http_req *req, uint64_t now_ms,
                    sync_http_resp *resp)
{
    rq q;
    memset(&q, 0, sizeof q);
    q.api = api;
    q.req = req;
    q.resp = resp;
    q.now = now_ms;
    resp->status = 500;
    resp->set_cookie[0] = 0;
    resp->extra_header_name[0] = resp->extra_header_value[0] = 0;
    const char *m = req->method ? req->method : "";
    bool is_get = !strcmp(m, "GET") || !strcmp(m, "HEAD");

    if (split_path(&q)) {
        send_err(&q, 404, "not_found", "没有这个接口。" EN "No such API path");
        return 0;
    }
    if (seg_is(&q, 0, "login") && q.nseg == 1) {
        if (strcmp(m, "POST")) method_not_allowed(&q);
        else route_login(&q);
        return 0;
    }
    if (!sess_find(api, req->cookie, now_ms, true, &q.s)) {
        send_err(&q, 401, "unauthenticated", "请先登录。" EN "Please log in");
        return 0;
    }
    q.authed = true;
    snprintf(q.actor, sizeof q.actor, "staff:%s", q.s.username);
    if (!is_get) {
        const char *tok = req->csrf ? req->csrf : "";
        if (strlen(tok) != 64 || sodium_memcmp(tok, q.s.csrf, 64) != 0) {
            send_err(&q, 403, "csrf",
                     "页面已过期，请刷新后重试。" EN
                     "Missing or wrong X-CSRF-Token header (use the csrf value from login)");
            sodium_memzero(&q.s, sizeof q.s);
            return 0;
        }
    }
    dispatch(&q);
    sodium_memzero(&q.s, sizeof q.s);
    return 0;
}

/* ---- lifetime --------------------------------------------------------------------------------------- */

/* The staff behind earlier server deltas, from the audit log (the newest
 * API_AUDIT_WARM entries), so provenance names them after a restart. */
#define API_AUDIT_WARM 200000u

static int warm_cb(const store_audit *e, void *arg)
{
    sync_api *api = arg;
    const char *p;
    if (strcmp(e->action, "person.resolve") && strcmp(e->action, "person.review")) return 0;
    if (strncmp(e->actor, "staff:", 6) || !(p = strstr(e->detail, "server delta 0:"))) return 0;
    unsigned long long seq = strtoull(p + 15, NULL, 10);
    if (seq) remember_server_seq(api, seq, e->actor + 6);
    return 0;
}

static int count_cb(const store_audit *e, void *arg)
{
    (void)e;
    (void)arg;
    return 0;
}

static void warm_staff_cache(sync_api *api)
{
    store_txn *t = NULL;
    uint64_t lo = 0, hi = 1, next;
    if (store_begin(api->st, STORE_RDONLY, &t)) return;
    /* The last aseq, by exponential then binary search (entries are 1..N). */
    while (store_audit_read(t, hi - 1, 1, count_cb, NULL, &next) == 0 && next == hi &&
           hi < (UINT64_C(1) << 62)) {
        lo = hi;
        hi *= 2;
    }
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (store_audit_read(t, mid - 1, 1, count_cb, NULL, &next) == 0 && next == mid) lo = mid;
        else hi = mid;
    }
    uint64_t from = lo > API_AUDIT_WARM ? lo - API_AUDIT_WARM : 0;
    store_audit_read(t, from, API_AUDIT_WARM, warm_cb, api, &next);
    store_abort(t);
}

sync_api *sync_api_new(store *st, const sync_config *cfg)
{
    sync_api *api = calloc(1, sizeof *api);
    if (!api) return NULL;
    api->sess = calloc(API_SESS_MAX, sizeof *api->sess);
    if (!api->sess || pthread_mutex_init(&api->mu, NULL)) {
        free(api->sess);
        free(api);
        return NULL;
    }
    api->st = st;
    api->cfg = cfg ? *cfg : sync_config_default;
    warm_staff_cache(api);
    return api;
}

void sync_api_free(sync_api *api)
{
    if (!api) return;
    sodium_memzero(api->sess, API_SESS_MAX * sizeof *api->sess);
    free(api->sess);
    free(api->dots);
    free(api->qx);
    pthread_mutex_destroy(&api->mu);
    free(api);
}
