/*
 * admin.c — the store's administrative records: device keys by epoch,
 * one-time enrollment tokens, staff accounts, and the append-only audit log.
 *
 * Key layouts (integers big-endian; see internal.h for the whole store)
 *   keys    dev(4) epoch(4) -> layout(1)=1 state(1) pk(32) sealed_seq(8)
 *                              created_ms(8) changed_ms(8)           (58 bytes)
 *   tokens  hash(32)        -> sealed: layout(1)=1 used(1) created_ms(8)
 *                              expires_ms(8) used_ms(8) used_dev(4)
 *                              vlen(1) volunteer nscope(2) {len(1) entry}*
 *   staff   username        -> sealed: layout(1)=1 role(1) disabled(1)
 *                              failures(4) locked_until(8) created_ms(8)
 *                              last_login_ms(8) pw_changed_ms(8)
 *                              hlen(1) pwhash dlen(1) display
 *   audit   aseq(8)         -> sealed: layout(1)=2 prev_hash(32) at_ms(8)
 *                              alen(1) actor nlen(1) action dlen(2) detail
 *   meta "audit_head"       -> aseq(8) hash(32): the hash chain's head
 *
 * Invariants
 *   - An enrollment token's secret is never stored: tokens is keyed by
 *     BLAKE2b-256 keyed with the store's lookup key over "dstoken1" || the
 *     16 secret bytes (a different output length and prefix from the person
 *     lookups, so the two hash families never collide).
 *   - A token goes from unused to used once and never back; only
 *     store_token_redeem writes an existing token.
 *   - Staff records hold only crypto_pwhash_str strings, never passwords;
 *     Argon2id never runs while store_staff_login holds the write lock.
 *   - Audit entries are numbered 1, 2, 3… without gaps (aseq = last + 1 in
 *     the appending write txn) and this file has no code path that rewrites
 *     or deletes one.
 *   - Nothing here reads a clock: every time is the caller's now_ms.
 *   - Sealed values are bound to their database and key (store_seal's AD),
 *     so a staff record cannot be moved to another username undetected.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- byte layouts ------------------------------------------------------------- */

static int put_u8(crdt_buf *b, uint8_t v) { return crdt_buf_append(b, &v, 1); }

static int put_u16(crdt_buf *b, uint16_t v)
{
    uint8_t p[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return crdt_buf_append(b, p, 2);
}

static int put_u32(crdt_buf *b, uint32_t v)
{
    uint8_t p[4];
    be32(p, v);
    return crdt_buf_append(b, p, 4);
}

static int put_u64(crdt_buf *b, uint64_t v)
{
    uint8_t p[8];
    be64(p, v);
    return crdt_buf_append(b, p, 8);
}

/* len(1) bytes; n <= 255 checked by the caller's validation. */
static int put_str8(crdt_buf *b, const char *s, size_t n)
{
    int rc = put_u8(b, (uint8_t)n);
    return rc ? rc : crdt_buf_append(b, s, n);
}

/* A bounds-checked reader: any short read sets bad and yields zeros. */
typedef struct rdr {
    const uint8_t *p;
    size_t n;
    bool bad;
} rdr;

static const uint8_t *get_bytes(rdr *r, size_t n)
{
    if (r->bad || r->n < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->n -= n;
    return p;
}

static uint8_t get_u8(rdr *r)
{
    const uint8_t *p = get_bytes(r, 1);
    return p ? p[0] : 0;
}

static uint16_t get_u16(rdr *r)
{
    const uint8_t *p = get_bytes(r, 2);
    return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}

static uint32_t get_u32(rdr *r)
{
    const uint8_t *p = get_bytes(r, 4);
    return p ? rd32(p) : 0;
}

static uint64_t get_u64(rdr *r)
{
    const uint8_t *p = get_bytes(r, 8);
    return p ? rd64(p) : 0;
}

/* A string of n bytes into out[cap] (NUL-terminated); bad if it does not fit. */
static void get_str(rdr *r, size_t n, char *out, size_t cap)
{
    const uint8_t *p = n < cap ? get_bytes(r, n) : NULL;
    if (!p) {
        r->bad = true;
        if (cap) out[0] = 0;
        return;
    }
    memcpy(out, p, n);
    out[n] = 0;
}

/* 1..max bytes of valid UTF-8 without NUL (strlen stops there). */
static bool text_ok(const char *s, size_t max)
{
    if (!s) return false;
    size_t n = strnlen(s, max + 1);
    return n >= 1 && n <= max && crdt_utf8_valid((const uint8_t *)s, n);
}

/* Every key of db starting with prefix (all keys if pn is 0), in order:
 * fn(key, value, arg); fn returning non-zero stops and is returned. */
typedef int (*scan_fn)(store_txn *t, const MDB_val *k, const MDB_val *v, void *arg);

static int scan_prefix(store_txn *t, int db, const uint8_t *prefix, size_t pn, scan_fn fn,
                       void *arg)
{
    MDB_cursor *c;
    MDB_val k = {pn, (void *)prefix}, v;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[db], &c);
    if (rc) return store_lmdb_err(rc);
    rc = mdb_cursor_get(c, &k, &v, pn ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        if (pn && (k.mv_size < pn || memcmp(k.mv_data, prefix, pn) != 0)) {
            rc = MDB_NOTFOUND;
            break;
        }
        int r2 = fn(t, &k, &v, arg);
        if (r2) {
            mdb_cursor_close(c);
            return r2;
        }
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? STORE_OK : store_lmdb_err(rc);
}

/* ---- keys ----------------------------------------------------------------------- */

#define KEY_LAYOUT 1
#define KEY_BYTES (1 + 1 + 32 + 8 + 8 + 8)

static void key_key(uint8_t k[8], uint32_t dev, uint32_t epoch)
{
    be32(k, dev);
    be32(k + 4, epoch);
}

static int key_decode(const MDB_val *k, const MDB_val *v, store_key *out)
{
    const uint8_t *p = v->mv_data;
    memset(out, 0, sizeof *out);
    if (k->mv_size != 8 || v->mv_size != KEY_BYTES || p[0] != KEY_LAYOUT ||
        p[1] < STORE_KEY_ACTIVE || p[1] > STORE_KEY_REVOKED)
        return STORE_ECORRUPT;
    out->dev = rd32(k->mv_data);
    out->epoch = rd32((const uint8_t *)k->mv_data + 4);
    out->state = p[1];
    memcpy(out->pk, p + 2, 32);
    out->sealed_seq = rd64(p + 34);
    out->created_ms = rd64(p + 42);
    out->changed_ms = rd64(p + 50);
    return STORE_OK;
}

int store_key_put(store_txn *t, const store_key *k)
{
    uint8_t key[8], v[KEY_BYTES];
    if (k->epoch == 0 || k->state < STORE_KEY_ACTIVE || k->state > STORE_KEY_REVOKED)
        return STORE_EINVAL;
    key_key(key, k->dev, k->epoch);
    v[0] = KEY_LAYOUT;
    v[1] = k->state;
    memcpy(v + 2, k->pk, 32);
    be64(v + 34, k->sealed_seq);
    be64(v + 42, k->created_ms);
    be64(v + 50, k->changed_ms);
    return store_put(t, DB_KEYS, key, 8, v, sizeof v);
}

int store_key_get(store_txn *t, uint32_t dev, uint32_t epoch, store_key *out)
{
    uint8_t key[8];
    MDB_val k = {8, key}, v;
    memset(out, 0, sizeof *out);
    key_key(key, dev, epoch);
    int rc = store_get(t, DB_KEYS, key, 8, &v);
    return rc ? rc : key_decode(&k, &v, out);
}

typedef struct key_scan {
    store_key_cb cb;     /* list */
    void *arg;
    store_key *best;     /* current */
    bool found;
} key_scan;

static int key_each(store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
    key_scan *ks = arg;
    store_key key;
    (void)t;
    int rc = key_decode(k, v, &key);
    if (rc) return rc;
    if (ks->cb) return ks->cb(&key, ks->arg);
    if (key.state == STORE_KEY_ACTIVE) { /* epochs ascend: the last one wins */
        *ks->best = key;
        ks->found = true;
    }
    return STORE_OK;
}

int store_key_current(store_txn *t, uint32_t dev, store_key *out)
{
    uint8_t prefix[4];
    key_scan ks = {.best = out};
    memset(out, 0, sizeof *out);
    be32(prefix, dev);
    int rc = scan_prefix(t, DB_KEYS, prefix, 4, key_each, &ks);
    if (!rc && !ks.found) rc = STORE_ENOTFOUND;
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

int store_key_list(store_txn *t, uint32_t dev, store_key_cb cb, void *arg)
{
    uint8_t prefix[4];
    key_scan ks = {.cb = cb, .arg = arg};
    be32(prefix, dev);
    return scan_prefix(t, DB_KEYS, prefix, 4, key_each, &ks);
}

/* ---- enrollment tokens ---------------------------------------------------------- */

#define TOKEN_LAYOUT 1
#define TOKEN_SECRET 16
#define TOKEN_HASH 32

static const char b32_alphabet[] = "abcdefghijklmnopqrstuvwxyz234567";

static void b32_encode(const uint8_t in[TOKEN_SECRET], char out[STORE_TOKEN_TEXT_LEN + 1])
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < TOKEN_SECRET; i++) {
        acc = (acc << 8 | in[i]) & 0xffff;
        bits += 8;
        while (bits >= 5) {
            out[o++] = b32_alphabet[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits) out[o++] = b32_alphabet[(acc << (5 - bits)) & 31];
    out[o] = 0;
    acc = 0;
}

/* Exactly STORE_TOKEN_TEXT_LEN base32 characters, any case, whose unused
 * final bits are zero (one text per token).  false otherwise. */
static bool b32_decode(const char *s, uint8_t out[TOKEN_SECRET])
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    if (!s || strnlen(s, STORE_TOKEN_TEXT_LEN + 1) != STORE_TOKEN_TEXT_LEN) return false;
    for (size_t i = 0; i < STORE_TOKEN_TEXT_LEN; i++) {
        char c = s[i];
        uint32_t v;
        if (c >= 'a' && c <= 'z') v = (uint32_t)(c - 'a');
        else if (c >= 'A' && c <= 'Z') v = (uint32_t)(c - 'A');
        else if (c >= '2' && c <= '7') v = (uint32_t)(c - '2' + 26);
        else return false;
        acc = (acc << 5 | v) & 0xffff;
        bits += 5;
        if (bits >= 8) {
            out[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    bool canonical = o == TOKEN_SECRET && (acc & ((1u << bits) - 1)) == 0;
    acc = 0;
    return canonical;
}

static void token_hash(const store *s, const uint8_t secret[TOKEN_SECRET],
                       uint8_t out[TOKEN_HASH])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, s->lookup_key, sizeof s->lookup_key, TOKEN_HASH);
    crypto_generichash_update(&st, (const uint8_t *)"dstoken1", 8);
    crypto_generichash_update(&st, secret, TOKEN_SECRET);
    crypto_generichash_final(&st, out, TOKEN_HASH);
    sodium_memzero(&st, sizeof st);
}

void store_token_free(store_token *tok)
{
    if (!tok) return;
    free(tok->scope);
    memset(tok, 0, sizeof *tok);
}

static int token_encode(const store_token *tok, crdt_buf *b)
{
    int rc;
    crdt_buf_reset(b);
    if ((rc = put_u8(b, TOKEN_LAYOUT)) || (rc = put_u8(b, tok->used ? 1 : 0)) ||
        (rc = put_u64(b, tok->created_ms)) || (rc = put_u64(b, tok->expires_ms)) ||
        (rc = put_u64(b, tok->used_ms)) || (rc = put_u32(b, tok->used_dev)) ||
        (rc = put_str8(b, tok->volunteer, strlen(tok->volunteer))) ||
        (rc = put_u16(b, (uint16_t)tok->n_scope)))
        return rc;
    for (size_t i = 0; i < tok->n_scope; i++)
        if ((rc = put_str8(b, tok->scope[i], strlen(tok->scope[i])))) return rc;
    return STORE_OK;
}

/* Decode into *out (scope allocated: store_token_free); hash gives the id. */
static int token_decode(const uint8_t hash[TOKEN_HASH], const uint8_t *p, size_t n,
                        store_token *out)
{
    rdr r = {p, n, false};
    memset(out, 0, sizeof *out);
    if (get_u8(&r) != TOKEN_LAYOUT) return STORE_ECORRUPT;
    out->used = get_u8(&r) != 0;
    out->created_ms = get_u64(&r);
    out->expires_ms = get_u64(&r);
    out->used_ms = get_u64(&r);
    out->used_dev = get_u32(&r);
    get_str(&r, get_u8(&r), out->volunteer, sizeof out->volunteer);
    size_t ns = get_u16(&r);
    if (r.bad || ns > STORE_SCOPE_MAX) goto corrupt;
    out->scope = calloc(ns ? ns : 1, sizeof *out->scope);
    if (!out->scope) {
        memset(out, 0, sizeof *out);
        return CRDT_ENOMEM;
    }
    out->n_scope = ns;
    for (size_t i = 0; i < ns; i++)
        get_str(&r, get_u8(&r), out->scope[i], sizeof out->scope[i]);
    if (r.bad || r.n) goto corrupt;
    sodium_bin2hex(out->id, sizeof out->id, hash, STORE_TOKEN_ID_LEN / 2);
    return STORE_OK;
corrupt:
    store_token_free(out);
    return STORE_ECORRUPT;
}

int store_token_create(store_txn *t, const char *volunteer, const char *const *scope,
                       size_t n_scope, uint64_t now_ms, uint64_t expires_ms,
                       char text[STORE_TOKEN_TEXT_LEN + 1])
{
    uint8_t secret[TOKEN_SECRET], hash[TOKEN_HASH];
    store_token tok;
    crdt_buf plain = {0};
    MDB_val v;
    int rc = STORE_EINVAL;
    memset(text, 0, STORE_TOKEN_TEXT_LEN + 1);
    memset(&tok, 0, sizeof tok);
    if (!t->rw) return STORE_EREADONLY;
    if (!text_ok(volunteer, STORE_VOLUNTEER_MAX) || n_scope == 0 ||
        n_scope > STORE_SCOPE_MAX || !scope || expires_ms <= now_ms)
        return STORE_EINVAL;
    for (size_t i = 0; i < n_scope; i++)
        if (!text_ok(scope[i], STORE_SCOPE_ITEM_MAX)) return STORE_EINVAL;
    strcpy(tok.volunteer, volunteer);
    tok.created_ms = now_ms;
    tok.expires_ms = expires_ms;
    tok.n_scope = n_scope;
    tok.scope = calloc(n_scope, sizeof *tok.scope);
    if (!tok.scope) return CRDT_ENOMEM;
    for (size_t i = 0; i < n_scope; i++) strcpy(tok.scope[i], scope[i]);
    if ((rc = token_encode(&tok, &plain))) goto fail;
    /* 128 random bits do not collide; check anyway rather than overwrite. */
    for (int tries = 0;; tries++) {
        randombytes_buf(secret, sizeof secret);
        token_hash(t->s, secret, hash);
        rc = store_get(t, DB_TOKENS, hash, sizeof hash, &v);
        if (rc == STORE_ENOTFOUND) break;
        if (rc) goto fail;
        if (tries == 3) {
            rc = STORE_ELMDB;
            goto fail;
        }
    }
    if ((rc = store_put_sealed(t, DB_TOKENS, hash, sizeof hash, plain.p, plain.n))) goto fail;
    b32_encode(secret, text);
fail:
    if (rc) memset(text, 0, STORE_TOKEN_TEXT_LEN + 1);
    sodium_memzero(secret, sizeof secret);
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    crdt_buf_free(&plain);
    store_token_free(&tok);
    return rc;
}

int store_token_redeem(store_txn *t, const char *text, uint64_t now_ms, uint32_t dev,
                       store_token *out)
{
    uint8_t secret[TOKEN_SECRET], hash[TOKEN_HASH];
    store_token tok;
    crdt_buf plain = {0};
    int rc;
    memset(&tok, 0, sizeof tok);
    if (out) memset(out, 0, sizeof *out);
    if (!t->rw) return STORE_EREADONLY;
    if (!b32_decode(text, secret)) {
        rc = STORE_ENOTFOUND;
        goto out;
    }
    token_hash(t->s, secret, hash);
    if ((rc = store_get_sealed(t, DB_TOKENS, hash, sizeof hash, &plain))) goto out;
    if ((rc = token_decode(hash, plain.p, plain.n, &tok))) goto out;
    if (tok.used) {
        rc = STORE_ETOKEN_USED;
        goto out;
    }
    if (now_ms >= tok.expires_ms) {
        rc = STORE_ETOKEN_EXPIRED;
        goto out;
    }
    tok.used = true;
    tok.used_ms = now_ms;
    tok.used_dev = dev;
    if ((rc = token_encode(&tok, &plain))) goto out;
    if ((rc = store_put_sealed(t, DB_TOKENS, hash, sizeof hash, plain.p, plain.n))) goto out;
    if (out) {
        *out = tok; /* hands over the scope */
        memset(&tok, 0, sizeof tok);
    }
out:
    sodium_memzero(secret, sizeof secret);
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    crdt_buf_free(&plain);
    store_token_free(&tok);
    return rc;
}

typedef struct token_scan {
    store_token_cb cb;
    void *arg;
} token_scan;

static int token_each(store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
    token_scan *ts = arg;
    store_token tok;
    if (k->mv_size != TOKEN_HASH) return STORE_ECORRUPT;
    int rc = store_unseal(t->s, DB_TOKENS, k, v->mv_data, v->mv_size, &t->scratch2);
    if (!rc) rc = token_decode(k->mv_data, t->scratch2.p, t->scratch2.n, &tok);
    if (rc) return rc;
    rc = ts->cb(&tok, ts->arg);
    store_token_free(&tok);
    return rc;
}

int store_token_list(store_txn *t, store_token_cb cb, void *arg)
{
    token_scan ts = {cb, arg};
    return scan_prefix(t, DB_TOKENS, NULL, 0, token_each, &ts);
}

/* ---- staff accounts -------------------------------------------------------------- */

#define STAFF_LAYOUT 1
#define DEFAULT_MAX_FAILURES 5
#define DEFAULT_LOCK_MS (15 * 60 * 1000ull)

/* A staff record with its password hash (never leaves this file). */
typedef struct staff_rec {
    store_staff st;
    char pwhash[crypto_pwhash_STRBYTES];
} staff_rec;

static bool username_ok(const char *u)
{
    size_t n = u ? strnlen(u, STORE_USER_MAX + 1) : 0;
    if (n < 1 || n > STORE_USER_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = u[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return false;
    }
    return true;
}

static bool password_ok(const char *pw)
{
    size_t n = pw ? strnlen(pw, STORE_PASSWORD_MAX + 1) : 0;
    return n >= STORE_PASSWORD_MIN && n <= STORE_PASSWORD_MAX;
}

static void pw_limits(const store_pwopts *pw, unsigned long long *ops, size_t *mem)
{
    *ops = pw && pw->opslimit ? pw->opslimit : crypto_pwhash_OPSLIMIT_INTERACTIVE;
    *mem = pw && pw->memlimit ? pw->memlimit : crypto_pwhash_MEMLIMIT_INTERACTIVE;
}

/* Argon2id hash of password into out.  STORE_EINVAL if the limits are out of
 * range, CRDT_ENOMEM if the memory cannot be had. */
static int pw_hash(const char *password, size_t n, const store_pwopts *pw,
                   char out[crypto_pwhash_STRBYTES])
{
    unsigned long long ops;
    size_t mem;
    pw_limits(pw, &ops, &mem);
    if (ops < crypto_pwhash_OPSLIMIT_MIN || ops > crypto_pwhash_OPSLIMIT_MAX ||
        mem < crypto_pwhash_MEMLIMIT_MIN || mem > crypto_pwhash_MEMLIMIT_MAX) {
        memset(out, 0, crypto_pwhash_STRBYTES);
        return STORE_EINVAL;
    }
    if (crypto_pwhash_str(out, password, n, ops, mem) != 0) {
        memset(out, 0, crypto_pwhash_STRBYTES);
        return CRDT_ENOMEM;
    }
    return STORE_OK;
}

static int staff_encode(const staff_rec *r, crdt_buf *b)
{
    const store_staff *s = &r->st;
    int rc;
    crdt_buf_reset(b);
    if ((rc = put_u8(b, STAFF_LAYOUT)) || (rc = put_u8(b, s->role)) ||
        (rc = put_u8(b, s->disabled ? 1 : 0)) || (rc = put_u32(b, s->failures)) ||
        (rc = put_u64(b, s->locked_until_ms)) || (rc = put_u64(b, s->created_ms)) ||
        (rc = put_u64(b, s->last_login_ms)) || (rc = put_u64(b, s->pw_changed_ms)) ||
        (rc = put_str8(b, r->pwhash, strlen(r->pwhash))) ||
        (rc = put_str8(b, s->display, strlen(s->display))))
        return rc;
    return STORE_OK;
}

static int staff_decode(const uint8_t *key, size_t kn, const uint8_t *p, size_t n,
                        staff_rec *out)
{
    rdr r = {p, n, false};
    store_staff *s = &out->st;
    memset(out, 0, sizeof *out);
    if (kn < 1 || kn > STORE_USER_MAX || get_u8(&r) != STAFF_LAYOUT) return STORE_ECORRUPT;
    memcpy(s->username, key, kn);
    s->role = get_u8(&r);
    s->disabled = get_u8(&r) != 0;
    s->failures = get_u32(&r);
    s->locked_until_ms = get_u64(&r);
    s->created_ms = get_u64(&r);
    s->last_login_ms = get_u64(&r);
    s->pw_changed_ms = get_u64(&r);
    get_str(&r, get_u8(&r), out->pwhash, sizeof out->pwhash);
    get_str(&r, get_u8(&r), s->display, sizeof s->display);
    if (r.bad || r.n || (s->role != STORE_ROLE_STAFF && s->role != STORE_ROLE_ADMIN)) {
        sodium_memzero(out, sizeof *out);
        return STORE_ECORRUPT;
    }
    return STORE_OK;
}

/* Load username's record into *out (the scratch buffer holds the plaintext
 * until the next sealed read; wiped by the caller's staff_done). */
static int staff_load(store_txn *t, const char *username, staff_rec *out)
{
    memset(out, 0, sizeof *out);
    if (!username_ok(username)) return STORE_ENOTFOUND;
    size_t kn = strlen(username);
    int rc = store_get_sealed(t, DB_STAFF, username, kn, &t->scratch2);
    if (!rc) rc = staff_decode((const uint8_t *)username, kn, t->scratch2.p, t->scratch2.n, out);
    if (t->scratch2.p) sodium_memzero(t->scratch2.p, t->scratch2.cap);
    return rc;
}

static int staff_store(store_txn *t, const staff_rec *r)
{
    crdt_buf plain = {0};
    int rc = staff_encode(r, &plain);
    if (!rc)
        rc = store_put_sealed(t, DB_STAFF, r->st.username, strlen(r->st.username), plain.p,
                              plain.n);
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    crdt_buf_free(&plain);
    return rc;
}

int store_staff_create(store_txn *t, const char *username, const char *display, uint8_t role,
                       const char *password, uint64_t now_ms, const store_pwopts *pw)
{
    staff_rec r;
    MDB_val v;
    int rc;
    memset(&r, 0, sizeof r);
    if (!t->rw) return STORE_EREADONLY;
    if (!username_ok(username) || !text_ok(display, STORE_DISPLAY_MAX) ||
        (role != STORE_ROLE_STAFF && role != STORE_ROLE_ADMIN) || !password_ok(password))
        return STORE_EINVAL;
    rc = store_get(t, DB_STAFF, username, strlen(username), &v);
    if (rc == STORE_OK) return STORE_EEXIST;
    if (rc != STORE_ENOTFOUND) return rc;
    strcpy(r.st.username, username);
    strcpy(r.st.display, display);
    r.st.role = role;
    r.st.created_ms = now_ms;
    r.st.pw_changed_ms = now_ms;
    if ((rc = pw_hash(password, strlen(password), pw, r.pwhash))) goto out;
    rc = staff_store(t, &r);
out:
    sodium_memzero(&r, sizeof r);
    return rc;
}

int store_staff_get(store_txn *t, const char *username, store_staff *out)
{
    staff_rec r;
    int rc = staff_load(t, username, &r);
    *out = r.st;
    sodium_memzero(&r, sizeof r);
    return rc;
}

/* Read phase of a login: the record (or ENOTFOUND), in a read txn. */
static int login_fetch(store *s, const char *username, staff_rec *r)
{
    store_txn *t = NULL;
    int rc = store_begin(s, STORE_RDONLY, &t);
    if (rc) {
        memset(r, 0, sizeof *r);
        return rc;
    }
    rc = staff_load(t, username, r);
    store_abort(t);
    return rc;
}

/* Write phase of a login: re-read the record and record the outcome, if
 * the hash verified is still the stored one.  rehash: a new hash to store
 * on success ("" for none). */
static int login_record(store *s, const staff_rec *seen, bool ok, const char *rehash,
                        uint64_t now_ms, const store_lockout *policy, staff_rec *cur)
{
    uint32_t max = policy ? policy->max_failures : DEFAULT_MAX_FAILURES;
    uint64_t lock_ms = policy ? policy->lock_ms : DEFAULT_LOCK_MS;
    store_txn *t = NULL;
    int rc, verdict;
    for (;;) {
        if ((rc = store_begin(s, STORE_RW, &t))) goto fail;
        if ((rc = staff_load(t, seen->st.username, cur))) goto fail;
        if (strcmp(cur->pwhash, seen->pwhash) != 0) {
            /* The password changed meanwhile: the verified hash is stale. */
            rc = STORE_EBADPASS;
            goto fail;
        }
        if (cur->st.disabled) {
            rc = STORE_EDISABLED;
            goto fail;
        }
        if (now_ms < cur->st.locked_until_ms) {
            rc = STORE_ELOCKED;
            goto fail;
        }
        if (ok) {
            verdict = STORE_OK;
            cur->st.failures = 0;
            cur->st.locked_until_ms = 0;
            cur->st.last_login_ms = now_ms;
            if (*rehash) memcpy(cur->pwhash, rehash, sizeof cur->pwhash);
        } else {
            verdict = STORE_EBADPASS;
            cur->st.failures++;
            if (max && cur->st.failures >= max) {
                cur->st.failures = 0;
                cur->st.locked_until_ms =
                    now_ms + lock_ms < now_ms ? UINT64_MAX : now_ms + lock_ms;
                verdict = STORE_ELOCKED;
            }
        }
        if ((rc = staff_store(t, cur))) goto fail;
        rc = store_commit(t);
        t = NULL;
        if (rc) goto fail;
        return verdict;
    fail:
        store_abort(t); /* no txn open here after this: the map may grow */
        t = NULL;
        if (rc == STORE_EMAPFULL && store_grow(s) == STORE_OK) continue;
        if (rc != STORE_OK) memset(cur, 0, sizeof *cur);
        return rc;
    }
}

int store_staff_login(store *s, const char *username, const char *password, uint64_t now_ms,
                      const store_lockout *policy, const store_pwopts *pw, store_staff *out)
{
    staff_rec seen, cur;
    char rehash[crypto_pwhash_STRBYTES];
    unsigned long long ops;
    size_t mem, pn = password ? strlen(password) : 0;
    bool ok = false;
    int rc;
    memset(rehash, 0, sizeof rehash);
    memset(&cur, 0, sizeof cur);
    if (out) memset(out, 0, sizeof *out);
    if (!password) password = "";
    pw_limits(pw, &ops, &mem);
    rc = login_fetch(s, username, &seen);
    if (rc && rc != STORE_ENOTFOUND) goto out;
    if (rc == STORE_ENOTFOUND) {
        /* Cost what a wrong password costs, so timing does not tell which
         * usernames exist. */
        if (pw_hash(password, pn, pw, rehash) == STORE_EINVAL) rc = STORE_EINVAL;
        goto out;
    }
    ok = crypto_pwhash_str_verify(seen.pwhash, password, pn) == 0;
    if (seen.st.disabled) {
        rc = STORE_EDISABLED;
        goto out;
    }
    if (now_ms < seen.st.locked_until_ms) {
        rc = STORE_ELOCKED;
        goto out;
    }
    if (ok && crypto_pwhash_str_needs_rehash(seen.pwhash, ops, mem) != 0 &&
        pw_hash(password, pn, pw, rehash) != STORE_OK)
        memset(rehash, 0, sizeof rehash); /* keep the old hash */
    rc = login_record(s, &seen, ok, rehash, now_ms, policy, &cur);
    if (rc == STORE_OK && out) *out = cur.st;
out:
    sodium_memzero(&seen, sizeof seen);
    sodium_memzero(&cur, sizeof cur);
    sodium_memzero(rehash, sizeof rehash);
    return rc;
}

/* Load, change with fn, store. */
typedef int (*staff_edit_fn)(staff_rec *r, const void *arg);

static int staff_edit(store_txn *t, const char *username, staff_edit_fn fn, const void *arg)
{
    staff_rec r;
    int rc;
    if (!t->rw) return STORE_EREADONLY;
    if ((rc = staff_load(t, username, &r))) goto out;
    if ((rc = fn(&r, arg))) goto out;
    rc = staff_store(t, &r);
out:
    sodium_memzero(&r, sizeof r);
    return rc;
}

typedef struct pw_edit {
    const char *password;
    uint64_t now_ms;
    const store_pwopts *pw;
} pw_edit;

static int edit_password(staff_rec *r, const void *arg)
{
    const pw_edit *e = arg;
    int rc = pw_hash(e->password, strlen(e->password), e->pw, r->pwhash);
    if (rc) return rc;
    r->st.pw_changed_ms = e->now_ms;
    r->st.failures = 0;
    r->st.locked_until_ms = 0;
    return STORE_OK;
}

int store_staff_set_password(store_txn *t, const char *username, const char *password,
                             uint64_t now_ms, const store_pwopts *pw)
{
    pw_edit e = {password, now_ms, pw};
    if (!password_ok(password)) return STORE_EINVAL;
    return staff_edit(t, username, edit_password, &e);
}

static int edit_role(staff_rec *r, const void *arg)
{
    r->st.role = *(const uint8_t *)arg;
    return STORE_OK;
}

int store_staff_set_role(store_txn *t, const char *username, uint8_t role)
{
    if (role != STORE_ROLE_STAFF && role != STORE_ROLE_ADMIN) return STORE_EINVAL;
    return staff_edit(t, username, edit_role, &role);
}

static int edit_disabled(staff_rec *r, const void *arg)
{
    bool disabled = *(const bool *)arg;
    if (!disabled && r->st.disabled) {
        r->st.failures = 0;
        r->st.locked_until_ms = 0;
    }
    r->st.disabled = disabled;
    return STORE_OK;
}

int store_staff_set_disabled(store_txn *t, const char *username, bool disabled)
{
    return staff_edit(t, username, edit_disabled, &disabled);
}

typedef struct staff_scan {
    store_staff_cb cb;
    void *arg;
} staff_scan;

static int staff_each(store_txn *t, const MDB_val *k, const MDB_val *v, void *arg)
{
    staff_scan *ss = arg;
    staff_rec r;
    int rc = store_unseal(t->s, DB_STAFF, k, v->mv_data, v->mv_size, &t->scratch2);
    if (!rc) rc = staff_decode(k->mv_data, k->mv_size, t->scratch2.p, t->scratch2.n, &r);
    if (t->scratch2.p) sodium_memzero(t->scratch2.p, t->scratch2.cap);
    if (!rc) {
        sodium_memzero(r.pwhash, sizeof r.pwhash);
        rc = ss->cb(&r.st, ss->arg);
    }
    sodium_memzero(&r, sizeof r);
    return rc;
}

int store_staff_list(store_txn *t, store_staff_cb cb, void *arg)
{
    staff_scan ss = {cb, arg};
    return scan_prefix(t, DB_STAFF, NULL, 0, staff_each, &ss);
}

/* ---- audit log ------------------------------------------------------------------- */

#define AUDIT_LAYOUT 2
#define AUDIT_DOMAIN "doorstep/v1/audit"

/* Chain hash of entry aseq with plaintext p[0..n) (which holds prev). */
static void audit_hash(uint64_t aseq, const uint8_t *p, size_t n, uint8_t out[32])
{
    crypto_generichash_state st;
    uint8_t k[8];
    be64(k, aseq);
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)AUDIT_DOMAIN, sizeof AUDIT_DOMAIN);
    crypto_generichash_update(&st, k, 8);
    crypto_generichash_update(&st, p, n);
    crypto_generichash_final(&st, out, 32);
}

static int audit_head(store_txn *t, uint64_t *aseq, uint8_t hash[32])
{
    MDB_val v;
    *aseq = 0;
    memset(hash, 0, 32);
    int rc = store_get(t, DB_META, "audit_head", 10, &v);
    if (rc == STORE_ENOTFOUND) return STORE_OK;
    if (rc) return rc;
    if (v.mv_size != 40) return STORE_ECORRUPT;
    *aseq = rd64(v.mv_data);
    memcpy(hash, (uint8_t *)v.mv_data + 8, 32);
    return STORE_OK;
}

static bool action_ok(const char *a)
{
    size_t n = a ? strnlen(a, STORE_AUDIT_ACTION_MAX + 1) : 0;
    if (n < 1 || n > STORE_AUDIT_ACTION_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.'))
            return false;
    }
    return true;
}

int store_audit_append(store_txn *t, uint64_t at_ms, const char *actor, const char *action,
                       const char *detail, uint64_t *aseq)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t next = 1;
    uint8_t key[8];
    crdt_buf plain = {0};
    size_t dl = detail ? strnlen(detail, STORE_AUDIT_DETAIL_MAX + 1) : 0;
    int rc;
    if (aseq) *aseq = 0;
    if (!t->rw) return STORE_EREADONLY;
    if (!detail) detail = "";
    if (!text_ok(actor, STORE_AUDIT_ACTOR_MAX) || !action_ok(action) ||
        dl > STORE_AUDIT_DETAIL_MAX || !crdt_utf8_valid((const uint8_t *)detail, dl))
        return STORE_EINVAL;
    if ((rc = mdb_cursor_open(t->txn, t->s->dbi[DB_AUDIT], &c))) return store_lmdb_err(rc);
    rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == 0) {
        if (k.mv_size != 8) return STORE_ECORRUPT;
        next = rd64(k.mv_data) + 1;
    } else if (rc != MDB_NOTFOUND) {
        return store_lmdb_err(rc);
    }
    be64(key, next);
    uint64_t head_seq;
    uint8_t prev[32], hash[32], head[40];
    if ((rc = audit_head(t, &head_seq, prev))) goto out;
    if (head_seq != next - 1) {
        rc = STORE_ECORRUPT; /* the chain's head is not the last entry */
        goto out;
    }
    if ((rc = put_u8(&plain, AUDIT_LAYOUT)) || (rc = crdt_buf_append(&plain, prev, 32)) ||
        (rc = put_u64(&plain, at_ms)) ||
        (rc = put_str8(&plain, actor, strlen(actor))) ||
        (rc = put_str8(&plain, action, strlen(action))) || (rc = put_u16(&plain, (uint16_t)dl)) ||
        (rc = crdt_buf_append(&plain, detail, dl)))
        goto out;
    /* next = last + 1: the log is written in key order (full pages). */
    if ((rc = store_put_sealed_append(t, DB_AUDIT, key, 8, plain.p, plain.n))) goto out;
    audit_hash(next, plain.p, plain.n, hash);
    be64(head, next);
    memcpy(head + 8, hash, 32);
    if ((rc = store_put(t, DB_META, "audit_head", 10, head, sizeof head))) goto out;
    if (aseq) *aseq = next;
out:
    if (plain.p) sodium_memzero(plain.p, plain.cap);
    crdt_buf_free(&plain);
    return rc;
}

static int audit_decode(const MDB_val *k, const uint8_t *p, size_t n, store_audit *out)
{
    rdr r = {p, n, false};
    memset(out, 0, sizeof *out);
    if (k->mv_size != 8 || n < 33 || get_u8(&r) != AUDIT_LAYOUT) return STORE_ECORRUPT;
    out->aseq = rd64(k->mv_data);
    r.p += 32; /* the previous hash: checked by store_audit_verify */
    r.n -= 32;
    audit_hash(out->aseq, p, n, out->hash);
    out->at_ms = get_u64(&r);
    get_str(&r, get_u8(&r), out->actor, sizeof out->actor);
    get_str(&r, get_u8(&r), out->action, sizeof out->action);
    get_str(&r, get_u16(&r), out->detail, sizeof out->detail);
    if (r.bad || r.n) {
        memset(out, 0, sizeof *out);
        return STORE_ECORRUPT;
    }
    return STORE_OK;
}

int store_audit_read(store_txn *t, uint64_t after, size_t limit, store_audit_cb cb, void *arg,
                     uint64_t *next)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    size_t delivered = 0;
    store_audit *e;
    int rc = STORE_OK, mrc;
    *next = after;
    if (after == UINT64_MAX || limit == 0) return STORE_OK;
    if (!(e = malloc(sizeof *e))) return CRDT_ENOMEM;
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_AUDIT], &c))) {
        free(e);
        return store_lmdb_err(mrc);
    }
    be64(start, after + 1);
    k.mv_data = start;
    k.mv_size = 8;
    mrc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && delivered < limit) {
        rc = store_unseal(t->s, DB_AUDIT, &k, v.mv_data, v.mv_size, &t->scratch2);
        if (!rc) rc = audit_decode(&k, t->scratch2.p, t->scratch2.n, e);
        if (!rc) rc = cb(e, arg);
        if (rc) goto out;
        *next = e->aseq;
        delivered++;
        mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    if (mrc && mrc != MDB_NOTFOUND) rc = store_lmdb_err(mrc);
out:
    mdb_cursor_close(c);
    if (t->scratch2.p) sodium_memzero(t->scratch2.p, t->scratch2.cap);
    sodium_memzero(e, sizeof *e);
    free(e);
    return rc;
}

int store_audit_verify(store_txn *t, uint64_t *bad)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t prev[32], head_hash[32];
    uint64_t expect = 1, head_seq;
    int rc, mrc;
    *bad = 0;
    memset(prev, 0, sizeof prev);
    if ((rc = audit_head(t, &head_seq, head_hash))) return rc;
    if ((mrc = mdb_cursor_open(t->txn, t->s->dbi[DB_AUDIT], &c))) return store_lmdb_err(mrc);
    for (mrc = mdb_cursor_get(c, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t aseq = k.mv_size == 8 ? rd64(k.mv_data) : 0;
        rc = store_unseal(t->s, DB_AUDIT, &k, v.mv_data, v.mv_size, &t->scratch2);
        if (rc || aseq != expect || t->scratch2.n < 33 || t->scratch2.p[0] != AUDIT_LAYOUT ||
            memcmp(t->scratch2.p + 1, prev, 32) != 0) {
            *bad = aseq ? aseq : expect;
            rc = STORE_EVERIFY;
            goto out;
        }
        audit_hash(aseq, t->scratch2.p, t->scratch2.n, prev);
        expect++;
    }
    if (mrc != MDB_NOTFOUND) {
        rc = store_lmdb_err(mrc);
        goto out;
    }
    /* The head names the last entry and its hash (entries cut off the end
     * would leave the head pointing past them). */
    if (head_seq != expect - 1 || memcmp(head_hash, prev, 32) != 0) {
        *bad = 0;
        rc = STORE_EVERIFY;
        goto out;
    }
    rc = STORE_OK;
out:
    mdb_cursor_close(c);
    if (t->scratch2.p) sodium_memzero(t->scratch2.p, t->scratch2.cap);
    return rc;
}
