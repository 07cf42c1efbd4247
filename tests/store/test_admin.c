/*
 * test_admin.c — the store's administrative records (store/admin.c): device
 * keys by epoch and their rotation states; one-time enrollment tokens
 * (redeem once, used, expired, unknown, aborted redemption); staff accounts
 * (duplicates, passwords, lockout and its expiry, disabled, unknown users
 * costing what wrong passwords cost, rehash, sealed records bound to their
 * key); the append-only audit log (pages, reopen, validation, no gaps after
 * an abort); the append path auditing a clone or fork freeze; and a privacy
 * canary: no token, volunteer, display name or audit text in the data file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <cmocka.h>

#include "internal.h"
#include "storeutil.h"
#include "testutil.h"

#define NOW 1790000000000ull

/* Cheap Argon2id for tests. */
static const store_pwopts cheap = {crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN};

static store *reopen(store *s, su_dir *d)
{
    char err[256];
    store_opts o = {.no_sync = true};
    store_close(s);
    s = NULL;
    int rc = store_open(d->data, d->key, &o, &s, err, sizeof err);
    if (rc) fail_msg("reopen: %s", err);
    return s;
}

static bool file_contains(const char *path, const void *needle, size_t n)
{
    size_t len;
    char *buf = tu_read_file(path, &len);
    assert_non_null(buf);
    bool found = false;
    for (size_t i = 0; i + n <= len && !found; i++)
        if (memcmp(buf + i, needle, n) == 0) found = true;
    free(buf);
    return found;
}

/* ---- keys ------------------------------------------------------------------------ */

typedef struct keys_seen {
    uint32_t epoch[8];
    uint8_t state[8];
    size_t n;
    int stop_at;    /* return 7 at this many, 0 = never */
} keys_seen;

static int collect_key(const store_key *k, void *arg)
{
    keys_seen *ks = arg;
    assert_true(ks->n < 8);
    ks->epoch[ks->n] = k->epoch;
    ks->state[ks->n] = k->state;
    ks->n++;
    return ks->stop_at && (int)ks->n == ks->stop_at ? 7 : 0;
}

static void test_keys(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "keys");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    store_key k = {0}, got;

    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    k.dev = 7;
    k.epoch = 1;
    k.state = STORE_KEY_ACTIVE;
    memset(k.pk, 0xa1, 32);
    k.created_ms = k.changed_ms = NOW;
    assert_int_equal(store_key_put(t, &k), 0);
    /* Neighbours must not leak into device 7's scans. */
    store_key other = k;
    other.dev = 8;
    other.epoch = 5;
    assert_int_equal(store_key_put(t, &other), 0);
    other.dev = 6;
    other.epoch = 9;
    assert_int_equal(store_key_put(t, &other), 0);
    /* Invalid keys. */
    store_key bad = k;
    bad.epoch = 0;
    assert_int_equal(store_key_put(t, &bad), STORE_EINVAL);
    bad.epoch = 2;
    bad.state = 9;
    assert_int_equal(store_key_put(t, &bad), STORE_EINVAL);
    assert_int_equal(store_commit(t), 0);

    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_key_get(t, 7, 1, &got), 0);
    assert_int_equal(got.dev, 7);
    assert_int_equal(got.epoch, 1);
    assert_int_equal(got.state, STORE_KEY_ACTIVE);
    assert_memory_equal(got.pk, k.pk, 32);
    assert_int_equal(got.created_ms, NOW);
    assert_int_equal(store_key_current(t, 7, &got), 0);
    assert_int_equal(got.epoch, 1);
    assert_int_equal(store_key_get(t, 7, 2, &got), STORE_ENOTFOUND);
    assert_int_equal(got.epoch, 0); /* zeroed on failure */
    assert_int_equal(store_key_current(t, 5, &got), STORE_ENOTFOUND);
    assert_int_equal(store_key_put(t, &k), STORE_EREADONLY);
    store_abort(t);

    /* Rotation: epoch 1 retired with its sealed seq, epoch 2 active. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_key_get(t, 7, 1, &got), 0);
    got.state = STORE_KEY_RETIRED;
    got.sealed_seq = 42;
    got.changed_ms = NOW + 10;
    assert_int_equal(store_key_put(t, &got), 0);
    k.epoch = 2;
    memset(k.pk, 0xb2, 32);
    k.created_ms = k.changed_ms = NOW + 10;
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_commit(t), 0);

    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_key_current(t, 7, &got), 0);
    assert_int_equal(got.epoch, 2);
    assert_memory_equal(got.pk, k.pk, 32);
    assert_int_equal(store_key_get(t, 7, 1, &got), 0);
    assert_int_equal(got.state, STORE_KEY_RETIRED);
    assert_int_equal(got.sealed_seq, 42);
    assert_int_equal(got.changed_ms, NOW + 10);
    store_abort(t);

    /* A third key, revoked at once: the current key stays epoch 2; with 2
     * revoked too, there is none. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    k.epoch = 3;
    k.state = STORE_KEY_REVOKED;
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_key_current(t, 7, &got), 0);
    assert_int_equal(got.epoch, 2);
    keys_seen ks = {0};
    assert_int_equal(store_key_list(t, 7, collect_key, &ks), 0);
    assert_int_equal(ks.n, 3);
    for (uint32_t i = 0; i < 3; i++) assert_int_equal(ks.epoch[i], i + 1);
    assert_int_equal(ks.state[0], STORE_KEY_RETIRED);
    assert_int_equal(ks.state[1], STORE_KEY_ACTIVE);
    assert_int_equal(ks.state[2], STORE_KEY_REVOKED);
    keys_seen stop = {.stop_at = 2};
    assert_int_equal(store_key_list(t, 7, collect_key, &stop), 7);
    assert_int_equal(stop.n, 2);
    keys_seen none = {0};
    assert_int_equal(store_key_list(t, 5, collect_key, &none), 0);
    assert_int_equal(none.n, 0);
    k.epoch = 2;
    k.state = STORE_KEY_REVOKED;
    assert_int_equal(store_key_put(t, &k), 0);
    assert_int_equal(store_key_current(t, 7, &got), STORE_ENOTFOUND);
    assert_int_equal(store_commit(t), 0);

    s = reopen(s, &d);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_key_get(t, 7, 1, &got), 0);
    assert_int_equal(got.sealed_seq, 42);
    assert_int_equal(store_key_current(t, 8, &got), 0);
    assert_int_equal(got.epoch, 5);
    store_abort(t);
    store_close(s);
    su_dir_remove(&d);
}

/* ---- enrollment tokens ------------------------------------------------------------- */

typedef struct tokens_seen {
    size_t n, used;
    char volunteer[4][STORE_VOLUNTEER_MAX + 1];
} tokens_seen;

static int collect_token(const store_token *tok, void *arg)
{
    tokens_seen *ts = arg;
    assert_true(ts->n < 4);
    assert_int_equal(strlen(tok->id), STORE_TOKEN_ID_LEN);
    assert_true(tok->n_scope >= 1);
    strcpy(ts->volunteer[ts->n++], tok->volunteer);
    if (tok->used) ts->used++;
    return 0;
}

static void upper(char *s)
{
    for (; *s; s++)
        if (*s >= 'a' && *s <= 'z') *s = (char)(*s - 'a' + 'A');
}

/* Create a token in its own transaction. */
static void make_token(store *s, const char *vol, uint64_t expires, char text[27])
{
    const char *scope[] = {"H1", "C01/G01", "幸福社区/网格3"};
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_token_create(t, vol, scope, 3, NOW, expires, text), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(strlen(text), STORE_TOKEN_TEXT_LEN);
    for (const char *p = text; *p; p++)
        assert_true((*p >= 'a' && *p <= 'z') || (*p >= '2' && *p <= '7'));
}

static void test_tokens(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "tokens");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    store_token tok;
    char text[27], text2[27], text3[27], typed[27];

    make_token(s, "王小明", NOW + 3600 * 1000ull, text);
    make_token(s, "李晓红", NOW + 1000, text2);
    assert_string_not_equal(text, text2);

    /* Redeem once (typed in capitals): volunteer and scope come back. */
    strcpy(typed, text);
    upper(typed);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_token_redeem(t, typed, NOW + 5, 31, &tok), 0);
    assert_true(tok.used);
    assert_string_equal(tok.volunteer, "王小明");
    assert_int_equal(tok.n_scope, 3);
    assert_string_equal(tok.scope[0], "H1");
    assert_string_equal(tok.scope[1], "C01/G01");
    assert_string_equal(tok.scope[2], "幸福社区/网格3");
    assert_int_equal(tok.expires_ms, NOW + 3600 * 1000ull);
    assert_int_equal(tok.used_dev, 31);
    store_token_free(&tok);
    assert_null(tok.scope);
    /* ...and not twice, even in the same transaction. */
    assert_int_equal(store_token_redeem(t, text, NOW + 6, 32, &tok), STORE_ETOKEN_USED);
    assert_int_equal(tok.n_scope, 0);
    assert_null(tok.scope);
    assert_int_equal(store_commit(t), 0);

    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_token_redeem(t, text, NOW + 7, 33, &tok), STORE_ETOKEN_USED);
    /* Expired: at its expiry instant and after. */
    assert_int_equal(store_token_redeem(t, text2, NOW + 1000, 34, &tok), STORE_ETOKEN_EXPIRED);
    assert_string_equal(tok.volunteer, "");
    /* Unknown: well-formed but never issued; malformed; wrong length; a
     * non-canonical last character. */
    assert_int_equal(store_token_redeem(t, "aaaaaaaaaaaaaaaaaaaaaaaaaa", NOW, 1, &tok),
                     STORE_ENOTFOUND);
    assert_int_equal(store_token_redeem(t, "hello", NOW, 1, &tok), STORE_ENOTFOUND);
    assert_int_equal(store_token_redeem(t, "aaaaaaaaaaaaaaaaaaaaaaaaa1", NOW, 1, &tok),
                     STORE_ENOTFOUND);
    strcpy(typed, text2);
    typed[25] = 'b'; /* sets one of the two unused low bits */
    assert_int_equal(store_token_redeem(t, typed, NOW, 1, &tok), STORE_ENOTFOUND);
    assert_int_equal(store_token_redeem(t, "", NOW, 1, NULL), STORE_ENOTFOUND);
    /* Invalid creations. */
    const char *scope[] = {"H1"}, *empty[] = {""};
    char longvol[80];
    memset(longvol, 'x', sizeof longvol - 1);
    longvol[sizeof longvol - 1] = 0;
    assert_int_equal(store_token_create(t, "v", scope, 0, NOW, NOW + 1, text3), STORE_EINVAL);
    assert_int_equal(store_token_create(t, "v", scope, 1, NOW, NOW, text3), STORE_EINVAL);
    assert_string_equal(text3, "");
    assert_int_equal(store_token_create(t, "", scope, 1, NOW, NOW + 1, text3), STORE_EINVAL);
    assert_int_equal(store_token_create(t, longvol, scope, 1, NOW, NOW + 1, text3),
                     STORE_EINVAL);
    assert_int_equal(store_token_create(t, "v", empty, 1, NOW, NOW + 1, text3), STORE_EINVAL);
    assert_int_equal(store_token_create(t, "\xff\xfe", scope, 1, NOW, NOW + 1, text3),
                     STORE_EINVAL);
    store_abort(t);

    /* A redemption in an aborted transaction is undone. */
    make_token(s, "张伟", NOW + 5000, text3);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_token_redeem(t, text3, NOW, 40, NULL), 0);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_token_redeem(t, text3, NOW, 40, &tok), STORE_EREADONLY);
    tokens_seen ts = {0};
    assert_int_equal(store_token_list(t, collect_token, &ts), 0);
    assert_int_equal(ts.n, 3);
    assert_int_equal(ts.used, 1);
    store_abort(t);
    s = reopen(s, &d);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_token_redeem(t, text3, NOW + 1, 41, &tok), 0);
    assert_string_equal(tok.volunteer, "张伟");
    store_token_free(&tok);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    memset(&ts, 0, sizeof ts);
    assert_int_equal(store_token_list(t, collect_token, &ts), 0);
    assert_int_equal(ts.used, 2);
    store_abort(t);
    store_close(s);

    /* Privacy canary: neither the token texts nor their bytes nor the
     * volunteers are in the data file. */
    char path[400];
    uint8_t raw[16];
    snprintf(path, sizeof path, "%s/data.mdb", d.data);
    assert_true(file_contains(path, "tokens", 6)); /* the test can see plain text */
    const char *texts[] = {text, text2, text3};
    for (int i = 0; i < 3; i++) {
        assert_false(file_contains(path, texts[i], STORE_TOKEN_TEXT_LEN));
        strcpy(typed, texts[i]);
        upper(typed);
        assert_false(file_contains(path, typed, STORE_TOKEN_TEXT_LEN));
        /* decode base32 to the 16 secret bytes */
        uint32_t acc = 0;
        int bits = 0;
        size_t o = 0;
        for (int j = 0; j < STORE_TOKEN_TEXT_LEN; j++) {
            char c = texts[i][j];
            acc = (acc << 5 | (uint32_t)(c >= 'a' ? c - 'a' : c - '2' + 26)) & 0xffff;
            bits += 5;
            if (bits >= 8) {
                raw[o++] = (uint8_t)(acc >> (bits - 8));
                bits -= 8;
            }
        }
        assert_int_equal(o, 16);
        assert_false(file_contains(path, raw, 16));
    }
    assert_false(file_contains(path, "王小明", strlen("王小明")));
    assert_false(file_contains(path, "幸福社区", strlen("幸福社区")));
    su_dir_remove(&d);
}

/* ---- staff accounts ------------------------------------------------------------------- */

typedef struct staff_seen {
    size_t n;
    char user[4][STORE_USER_MAX + 1];
} staff_seen;

static int collect_staff(const store_staff *st, void *arg)
{
    staff_seen *ss = arg;
    assert_true(ss->n < 4);
    strcpy(ss->user[ss->n++], st->username);
    return 0;
}

static void test_staff(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "staff");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    store_staff st;
    const store_lockout pol = {3, 60000};

    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_staff_create(t, "alice", "陈爱丽", STORE_ROLE_ADMIN,
                                        "correct horse", NOW, &cheap), 0);
    assert_int_equal(store_staff_create(t, "bob.w-2_", "王博", STORE_ROLE_STAFF,
                                        "battery staple", NOW, &cheap), 0);
    assert_int_equal(store_staff_create(t, "alice", "other", STORE_ROLE_STAFF, "whatever1",
                                        NOW, &cheap), STORE_EEXIST);
    /* Invalid usernames, display names, roles, passwords, costs. */
    const char *bad_users[] = {"", "Alice", "a b", "a/b", "abcdefghijklmnopqrstuvwxyz0123456",
                               "名字"};
    for (size_t i = 0; i < sizeof bad_users / sizeof *bad_users; i++)
        assert_int_equal(store_staff_create(t, bad_users[i], "x", STORE_ROLE_STAFF,
                                            "password1", NOW, &cheap), STORE_EINVAL);
    assert_int_equal(store_staff_create(t, "abcdefghijklmnopqrstuvwxyz012345", "x",
                                        STORE_ROLE_STAFF, "password1", NOW, &cheap), 0);
    assert_int_equal(store_staff_create(t, "carol", "", STORE_ROLE_STAFF, "password1", NOW,
                                        &cheap), STORE_EINVAL);
    assert_int_equal(store_staff_create(t, "carol", "c", 3, "password1", NOW, &cheap),
                     STORE_EINVAL);
    assert_int_equal(store_staff_create(t, "carol", "c", STORE_ROLE_STAFF, "short", NOW,
                                        &cheap), STORE_EINVAL);
    store_pwopts silly = {1, 1};
    assert_int_equal(store_staff_create(t, "carol", "c", STORE_ROLE_STAFF, "password1", NOW,
                                        &silly), STORE_EINVAL);
    assert_int_equal(store_staff_get(t, "carol", &st), STORE_ENOTFOUND);
    assert_int_equal(store_commit(t), 0);

    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_staff_get(t, "alice", &st), 0);
    assert_string_equal(st.username, "alice");
    assert_string_equal(st.display, "陈爱丽");
    assert_int_equal(st.role, STORE_ROLE_ADMIN);
    assert_false(st.disabled);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.created_ms, NOW);
    assert_int_equal(st.last_login_ms, 0);
    assert_int_equal(store_staff_get(t, "nobody", &st), STORE_ENOTFOUND);
    assert_string_equal(st.username, "");
    assert_int_equal(store_staff_get(t, "NOT VALID", &st), STORE_ENOTFOUND);
    assert_int_equal(store_staff_set_role(t, "alice", STORE_ROLE_STAFF), STORE_EREADONLY);
    staff_seen ss = {0};
    assert_int_equal(store_staff_list(t, collect_staff, &ss), 0);
    assert_int_equal(ss.n, 3);
    assert_string_equal(ss.user[0], "abcdefghijklmnopqrstuvwxyz012345");
    assert_string_equal(ss.user[1], "alice");
    assert_string_equal(ss.user[2], "bob.w-2_");
    store_abort(t);

    /* Right password. */
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 1, &pol, &cheap, &st),
                     0);
    assert_string_equal(st.display, "陈爱丽");
    assert_int_equal(st.role, STORE_ROLE_ADMIN);
    assert_int_equal(st.last_login_ms, NOW + 1);
    /* Wrong twice, then the third failure locks (policy: 3, 60 s). */
    assert_int_equal(store_staff_login(s, "alice", "wrong one", NOW + 2, &pol, &cheap, &st),
                     STORE_EBADPASS);
    assert_string_equal(st.username, ""); /* zeroed on failure */
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_staff_get(t, "alice", &st), 0);
    assert_int_equal(st.failures, 1);
    store_abort(t);
    assert_int_equal(store_staff_login(s, "alice", "wrong two", NOW + 3, &pol, &cheap, NULL),
                     STORE_EBADPASS);
    assert_int_equal(store_staff_login(s, "alice", "wrong three", NOW + 4, &pol, &cheap, NULL),
                     STORE_ELOCKED);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_staff_get(t, "alice", &st), 0);
    assert_int_equal(st.locked_until_ms, NOW + 4 + 60000);
    assert_int_equal(st.failures, 0);
    store_abort(t);
    /* Locked: even the right password is refused, and nothing is counted. */
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 5, &pol, &cheap, &st),
                     STORE_ELOCKED);
    assert_int_equal(store_staff_login(s, "alice", "wrong", NOW + 60003, &pol, &cheap, NULL),
                     STORE_ELOCKED);
    /* Unlocked once the duration has passed. */
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 60004, &pol, &cheap,
                                       &st), 0);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.locked_until_ms, 0);
    /* A success resets the count: two failures, success, two failures: no lock. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(store_staff_login(s, "alice", "nope nope", NOW + 60010, &pol, &cheap,
                                           NULL), STORE_EBADPASS);
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 60011, &pol, &cheap,
                                       NULL), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(store_staff_login(s, "alice", "nope nope", NOW + 60012, &pol, &cheap,
                                           NULL), STORE_EBADPASS);
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 60013, &pol, &cheap,
                                       NULL), 0);

    /* Unknown users; a NULL policy means the default (5 failures). */
    assert_int_equal(store_staff_login(s, "mallory", "correct horse", NOW, &pol, &cheap, &st),
                     STORE_ENOTFOUND);
    assert_int_equal(store_staff_login(s, "Bad Name!", "x", NOW, NULL, &cheap, &st),
                     STORE_ENOTFOUND);
    for (int i = 0; i < 4; i++)
        assert_int_equal(store_staff_login(s, "bob.w-2_", "wrong pw", NOW, NULL, &cheap, NULL),
                         STORE_EBADPASS);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "wrong pw", NOW, NULL, &cheap, NULL),
                     STORE_ELOCKED);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "battery staple", NOW + 15 * 60000 - 1,
                                       NULL, &cheap, NULL), STORE_ELOCKED);

    /* An admin resets bob's password: the lock is cleared. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_staff_set_password(t, "bob.w-2_", "new password", NOW + 10, &cheap),
                     0);
    assert_int_equal(store_staff_set_password(t, "bob.w-2_", "short", NOW + 10, &cheap),
                     STORE_EINVAL);
    assert_int_equal(store_staff_set_password(t, "nobody", "new password", NOW, &cheap),
                     STORE_ENOTFOUND);
    assert_int_equal(store_staff_set_role(t, "bob.w-2_", STORE_ROLE_ADMIN), 0);
    assert_int_equal(store_staff_set_role(t, "bob.w-2_", 7), STORE_EINVAL);
    assert_int_equal(store_staff_set_role(t, "nobody", STORE_ROLE_ADMIN), STORE_ENOTFOUND);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "battery staple", NOW + 11, NULL, &cheap,
                                       NULL), STORE_EBADPASS);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "new password", NOW + 12, NULL, &cheap,
                                       &st), 0);
    assert_int_equal(st.role, STORE_ROLE_ADMIN);
    assert_int_equal(st.pw_changed_ms, NOW + 10);

    /* Disabled: refused whatever the password; re-enabled: fine again. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_staff_set_disabled(t, "bob.w-2_", true), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "new password", NOW + 13, NULL, &cheap,
                                       &st), STORE_EDISABLED);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "bad password", NOW + 13, NULL, &cheap,
                                       &st), STORE_EDISABLED);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_staff_get(t, "bob.w-2_", &st), 0);
    assert_true(st.disabled);
    assert_int_equal(st.failures, 0); /* attempts on a disabled account are not counted */
    assert_int_equal(store_staff_set_disabled(t, "bob.w-2_", false), 0);
    assert_int_equal(store_commit(t), 0);
    assert_int_equal(store_staff_login(s, "bob.w-2_", "new password", NOW + 14, NULL, &cheap,
                                       NULL), 0);

    /* A login at a higher cost rehashes; the account still works both ways. */
    store_pwopts dearer = {crypto_pwhash_OPSLIMIT_MIN + 1, crypto_pwhash_MEMLIMIT_MIN * 2};
    MDB_val v;
    uint8_t *before;
    size_t before_n;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_get(t, DB_STAFF, "alice", 5, &v), 0);
    before_n = v.mv_size;
    before = malloc(before_n);
    memcpy(before, v.mv_data, before_n);
    store_abort(t);
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 70000, NULL, &dearer,
                                       NULL), 0);
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 70001, NULL, &cheap,
                                       NULL), 0);

    /* A sealed record is bound to its username: copied under another name
     * it fails to unseal. */
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_put(t, DB_STAFF, "mallory", 7, before, before_n), 0);
    assert_int_equal(store_staff_get(t, "mallory", &st), STORE_ECORRUPT);
    assert_string_equal(st.display, "");
    assert_int_equal(store_commit(t), 0);
    free(before);
    assert_int_equal(store_staff_login(s, "mallory", "correct horse", NOW, NULL, &cheap, &st),
                     STORE_ECORRUPT);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    memset(&ss, 0, sizeof ss);
    assert_int_equal(store_staff_list(t, collect_staff, &ss), STORE_ECORRUPT);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_del(t, DB_STAFF, "mallory", 7), 0);
    assert_int_equal(store_commit(t), 0);

    /* Survives reopen. */
    s = reopen(s, &d);
    assert_int_equal(store_staff_login(s, "alice", "correct horse", NOW + 80000, NULL, &cheap,
                                       &st), 0);
    assert_string_equal(st.display, "陈爱丽");
    store_close(s);

    char path[400];
    snprintf(path, sizeof path, "%s/data.mdb", d.data);
    assert_false(file_contains(path, "陈爱丽", strlen("陈爱丽")));
    assert_false(file_contains(path, "correct horse", 13));
    assert_false(file_contains(path, "$argon2id$", 10));
    su_dir_remove(&d);
}

/* Unknown users cost an Argon2id run, like wrong passwords, so timing does
 * not tell which usernames exist.  Asserted by what the run does, not by a
 * clock (a busy machine makes CPU and wall times of a few ms meaningless):
 *  - the unknown-user path hashes with the configured cost: a cost libsodium
 *    refuses turns its answer into STORE_EINVAL;
 *  - libsodium maps Argon2id's memory fresh for every run (mmap), so a 4 MiB
 *    run shows as ~1024 minor page faults: the unknown-user path must fault
 *    at least half as much as the wrong-password one (without the dummy
 *    hash it faults a handful).  Where transparent huge pages serve that map
 *    (THP "always"), faults cannot tell and only the first check stands. */
static long minor_faults(void)
{
    struct rusage ru;
    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_minflt;
}

static void test_staff_unknown_timing(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "staff-timing");
    store *s = su_store_new(&d, NULL);
    store_pwopts pw = {2, 4u << 20};
    store_lockout nolock = {0, 0};
    store_txn *t;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_staff_create(t, "alice", "A", STORE_ROLE_STAFF, "correct horse", NOW,
                                        &pw), 0);
    assert_int_equal(store_commit(t), 0);
    store_pwopts refused = {2, 1024}; /* below crypto_pwhash_MEMLIMIT_MIN */
    assert_int_equal(store_staff_login(s, "nobody", "wrong pass", NOW, &nolock, &refused, NULL),
                     STORE_EINVAL);
    long wrong = -1, unknown = -1;
    for (int i = 0; i < 5; i++) {
        long f0 = minor_faults();
        assert_int_equal(store_staff_login(s, "alice", "wrong pass", NOW, &nolock, &pw, NULL),
                         STORE_EBADPASS);
        long f1 = minor_faults();
        assert_int_equal(store_staff_login(s, "nobody", "wrong pass", NOW, &nolock, &pw, NULL),
                         STORE_ENOTFOUND);
        long f2 = minor_faults();
        if (wrong < 0 || f1 - f0 < wrong) wrong = f1 - f0;
        if (unknown < 0 || f2 - f1 < unknown) unknown = f2 - f1;
    }
    fprintf(stderr, "login: wrong password %ld page faults, unknown user %ld (least of 5)\n",
            wrong, unknown);
    if (wrong >= 512)
        assert_true(2 * unknown >= wrong);
    else
        fprintf(stderr, "login: Argon2id's 4 MiB did not show as page faults (huge pages?): "
                        "only the cost check stands\n");
    store_close(s);
    su_dir_remove(&d);
}

/* ---- audit log ---------------------------------------------------------------------------- */

typedef struct audit_seen {
    size_t n;
    uint64_t aseq[64];
    char action[64][STORE_AUDIT_ACTION_MAX + 1];
    char actor[64][STORE_AUDIT_ACTOR_MAX + 1];
    char detail[64][128];
    uint64_t at[64];
    int stop_at;
} audit_seen;

static int collect_audit(const store_audit *e, void *arg)
{
    audit_seen *as = arg;
    if (as->stop_at && (int)as->n == as->stop_at) return 9;
    assert_true(as->n < 64);
    as->aseq[as->n] = e->aseq;
    as->at[as->n] = e->at_ms;
    strcpy(as->action[as->n], e->action);
    strcpy(as->actor[as->n], e->actor);
    size_t dl = strlen(e->detail);
    if (dl >= sizeof as->detail[0]) dl = sizeof as->detail[0] - 1;
    memcpy(as->detail[as->n], e->detail, dl);
    as->detail[as->n][dl] = 0;
    as->n++;
    return 0;
}

static void read_all(store *s, audit_seen *as)
{
    store_txn *t;
    uint64_t next;
    memset(as, 0, sizeof *as);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_audit_read(t, 0, SIZE_MAX, collect_audit, as, &next), 0);
    store_abort(t);
}

static void test_audit(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "audit");
    store *s = su_store_new(&d, NULL);
    store_txn *t;
    uint64_t aseq, next;
    char actor[32], detail[64];

    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    for (int i = 1; i <= 25; i++) {
        if (i % 2) snprintf(actor, sizeof actor, "admin:alice");
        else snprintf(actor, sizeof actor, "device:%d", i);
        snprintf(detail, sizeof detail, "entry %d 张三丰", i);
        assert_int_equal(store_audit_append(t, NOW + (uint64_t)i, actor,
                                            i % 3 ? "token.create" : "staff.login_failed",
                                            detail, &aseq), 0);
        assert_int_equal(aseq, (uint64_t)i);
    }
    assert_int_equal(store_commit(t), 0);

    /* Pages of 10 after a cursor. */
    audit_seen *as = calloc(1, sizeof *as);
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    uint64_t after = 0;
    for (int page = 0; page < 3; page++) {
        size_t had = as->n;
        assert_int_equal(store_audit_read(t, after, 10, collect_audit, as, &next), 0);
        assert_int_equal(as->n - had, page < 2 ? 10 : 5);
        assert_int_equal(next, as->aseq[as->n - 1]);
        after = next;
    }
    assert_int_equal(store_audit_read(t, after, 10, collect_audit, as, &next), 0);
    assert_int_equal(next, 25);
    assert_int_equal(as->n, 25);
    for (size_t i = 0; i < 25; i++) {
        int n = (int)i + 1;
        assert_int_equal(as->aseq[i], i + 1);
        assert_int_equal(as->at[i], NOW + i + 1);
        snprintf(detail, sizeof detail, "entry %d 张三丰", n);
        assert_string_equal(as->detail[i], detail);
        assert_string_equal(as->action[i], n % 3 ? "token.create" : "staff.login_failed");
    }
    assert_string_equal(as->actor[1], "device:2");
    assert_int_equal(store_audit_read(t, UINT64_MAX, 10, collect_audit, as, &next), 0);
    assert_int_equal(next, UINT64_MAX);
    /* An early stop returns the callback's value; the cursor stays on the
     * last entry delivered. */
    memset(as, 0, sizeof *as);
    as->stop_at = 3;
    assert_int_equal(store_audit_read(t, 4, 10, collect_audit, as, &next), 9);
    assert_int_equal(next, 7);
    assert_int_equal(store_audit_append(t, NOW, "server", "x.y", "", &aseq), STORE_EREADONLY);
    assert_int_equal(aseq, 0);
    store_abort(t);

    /* Validation; an aborted append leaves no gap. */
    char big[STORE_AUDIT_DETAIL_MAX + 2];
    memset(big, 'd', sizeof big);
    big[STORE_AUDIT_DETAIL_MAX + 1] = 0;
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_audit_append(t, NOW, "server", "Device Freeze", "", NULL),
                     STORE_EINVAL);
    assert_int_equal(store_audit_append(t, NOW, "", "a.b", "", NULL), STORE_EINVAL);
    assert_int_equal(store_audit_append(t, NOW, "server", "", "", NULL), STORE_EINVAL);
    assert_int_equal(store_audit_append(t, NOW, "server", "a.b", big, NULL), STORE_EINVAL);
    assert_int_equal(store_audit_append(t, NOW, "server", "a.b", "\xc3", NULL), STORE_EINVAL);
    big[STORE_AUDIT_DETAIL_MAX] = 0;
    assert_int_equal(store_audit_append(t, NOW, "server", "a.b", big, &aseq), 0);
    assert_int_equal(aseq, 26);
    store_abort(t);
    assert_int_equal(store_begin(s, STORE_RW, &t), 0);
    assert_int_equal(store_audit_append(t, NOW + 100, "server", "store.open", NULL, &aseq), 0);
    assert_int_equal(aseq, 26);
    assert_int_equal(store_audit_append(t, NOW + 101, "server", "a.b", big, &aseq), 0);
    assert_int_equal(aseq, 27);
    assert_int_equal(store_commit(t), 0);

    /* Survives reopen, in order. */
    s = reopen(s, &d);
    read_all(s, as);
    assert_int_equal(as->n, 27);
    for (size_t i = 0; i < as->n; i++) assert_int_equal(as->aseq[i], i + 1);
    assert_string_equal(as->action[25], "store.open");
    assert_string_equal(as->detail[25], "");
    assert_int_equal(strlen(as->detail[26]), sizeof as->detail[26] - 1); /* truncated copy */
    /* A full 1 KiB detail reads back whole. */
    {
        store_txn *rt;
        assert_int_equal(store_begin(s, STORE_RDONLY, &rt), 0);
        MDB_val v;
        uint8_t k[8];
        be64(k, 27);
        assert_int_equal(store_get(rt, DB_AUDIT, k, 8, &v), 0);
        assert_true(v.mv_size > STORE_AUDIT_DETAIL_MAX);
        store_abort(rt);
    }
    store_close(s);
    free(as);
    char path[400];
    snprintf(path, sizeof path, "%s/data.mdb", d.data);
    assert_false(file_contains(path, "张三丰", strlen("张三丰")));
    assert_false(file_contains(path, "admin:alice", 11));
    su_dir_remove(&d);
}

/* ---- the append path audits freezes --------------------------------------------------------- */

static void push_household(store *s, su_dev *dev, const char *hh, const char *note,
                           uint64_t ms, int want_result, int want_code)
{
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "community", "C01");
    su_set_str(&o, "grid", "G01");
    su_set_str(&o, "note", note);
    su_make(dev, "household", hh, &o, ms, &env, NULL);
    store_outcome out = su_push(s, &env, ms);
    assert_int_equal(out.result, want_result);
    assert_int_equal(out.code, want_code);
    su_ops_free(&o);
    crdt_buf_free(&env);
}

static void test_freeze_is_audited(void **state)
{
    (void)state;
    su_dir d;
    su_dir_make(&d, "freeze-audit");
    store *s = su_store_new(&d, NULL);
    su_dev a, clone, b;
    su_dev_init(&a, 9);
    push_household(s, &a, "H1", "first", NOW, STORE_APPLIED, 0);   /* seq 1 */
    clone = a; /* a copied phone: same key, same chain position */
    push_household(s, &a, "H1", "real", NOW + 5, STORE_APPLIED, 0); /* seq 2 */
    push_household(s, &clone, "H1", "clone", NOW + 6, STORE_QUARANTINED, STORE_Q_CLONE);
    audit_seen *as = calloc(1, sizeof *as);
    read_all(s, as);
    assert_int_equal(as->n, 1);
    assert_int_equal(as->aseq[0], 1);
    assert_string_equal(as->actor[0], "server");
    assert_string_equal(as->action[0], "device.freeze");
    assert_string_equal(as->detail[0], "reason=clone dev=9 seq=2");
    assert_int_equal(as->at[0], NOW + 6);
    /* A frozen device's later deltas are held without another freeze entry. */
    push_household(s, &a, "H1", "later", NOW + 7, STORE_QUARANTINED, STORE_Q_FROZEN);
    /* A fork: right seq, wrong previous hash. */
    su_dev_init(&b, 10);
    push_household(s, &b, "H2", "first", NOW, STORE_APPLIED, 0);
    memset(b.prev, 0x55, 32);
    push_household(s, &b, "H2", "forked", NOW + 8, STORE_QUARANTINED, STORE_Q_FORK);
    read_all(s, as);
    assert_int_equal(as->n, 2);
    assert_string_equal(as->action[1], "device.freeze");
    assert_string_equal(as->detail[1], "reason=fork dev=10 seq=2");
    free(as);
    store_close(s);
    su_dir_remove(&d);
}

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_staff),
        cmocka_unit_test(test_staff_unknown_timing),
        cmocka_unit_test(test_audit),
        cmocka_unit_test(test_freeze_is_audited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
