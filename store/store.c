/*
 * store.c — opening, initialising and closing the store; transactions; the
 * master key file; sealing; small get/put helpers; map growth.
 *
 * Invariants
 *   - All named databases are opened once, in store_open, inside one write
 *     transaction committed before any other transaction begins.
 *   - The master key never touches the data directory; subkeys (sealing,
 *     lookup hashing) are derived with crypto_kdf and wiped on close.
 *   - A store whose canary does not unseal with the given key is refused at
 *     open (wrong key file), so no caller ever sees garbage plaintext.
 *   - The map is grown only with no transaction open in this process
 *     (LMDB's rule for mdb_env_set_mapsize); other processes adopt the new
 *     size through MDB_MAP_RESIZED at their next transaction.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const store_db_names[DB_COUNT] = {
    "meta", "deltas", "dots", "heads", "records", "rdeltas", "feed", "members",
    "grid", "lookup", "agg", "aggw", "devices", "quar", "audit", "keys", "tokens", "staff",
    "place", "agghist"
};

#define MASTER_KEY_BYTES crypto_kdf_KEYBYTES
#define KEYFILE_MAGIC "doorstep-key-v1\n"
#define CANARY "doorstep canary"

const char *store_strerror(int code)
{
    switch (code) {
    case STORE_OK: return "ok";
    case STORE_ENOTINIT: return "data directory is not initialised";
    case STORE_EEXIST: return "a store already exists there";
    case STORE_EKEYFILE: return "data key file is missing, unreadable, too open, or the wrong key";
    case STORE_EFORMAT: return "store format is not supported by this version";
    case STORE_ELMDB: return "database error";
    case STORE_EMAPFULL: return "database map is full at its maximum size";
    case STORE_ENOSPC: return "disk full";
    case STORE_EIO: return "I/O error";
    case STORE_ECORRUPT: return "stored value failed to unseal, decompress or decode";
    case STORE_ENOTFOUND: return "not found";
    case STORE_EGAP: return "delta sequence number is not the next one";
    case STORE_EREADONLY: return "write in a read-only transaction";
    case STORE_EBUSY: return "database busy";
    case STORE_ESCHEMA: return "schema lacks a field the store needs";
    case STORE_EVERIFY: return "verify found differences";
    case STORE_EINVAL: return "invalid argument";
    case STORE_ETOKEN_USED: return "enrollment token was already used";
    case STORE_ETOKEN_EXPIRED: return "enrollment token has expired";
    case STORE_EBADPASS: return "wrong password";
    case STORE_ELOCKED: return "account locked after too many failed logins";
    case STORE_EDISABLED: return "account disabled";
    case STORE_ERELAYKEY: return "the relay presents a different server key than it pinned";
    default: return wire_strerror(code);
    }
}

bool store_retryable(int code)
{
    return code == STORE_EMAPFULL || code == STORE_ENOSPC || code == STORE_EIO ||
           code == STORE_EBUSY;
}

int store_lmdb_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS: return STORE_OK;
    case MDB_NOTFOUND: return STORE_ENOTFOUND;
    case MDB_MAP_FULL: return STORE_EMAPFULL;
    case MDB_READERS_FULL:
    case MDB_TXN_FULL: return STORE_EBUSY;
    case ENOSPC: return STORE_ENOSPC;
    case EIO: return STORE_EIO;
    case ENOMEM: return CRDT_ENOMEM;
    case EACCES: return STORE_EREADONLY;
    default: return STORE_ELMDB;
    }
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    if (err && errlen) snprintf(err, errlen, fmt, a ? a : "", b ? b : "");
}

/* ---- key file ----------------------------------------------------------------- */

static int key_file_create(const char *path, uint8_t master[MASTER_KEY_BYTES], char *err,
                           size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create key file: %s", path,
                errno == EEXIST ? "it already exists (refusing to overwrite a key)"
                                : strerror(errno));
        return STORE_EKEYFILE;
    }
    crypto_kdf_keygen(master);
    char hex[MASTER_KEY_BYTES * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, master, MASTER_KEY_BYTES);
    char buf[sizeof KEYFILE_MAGIC + sizeof hex + 1];
    int n = snprintf(buf, sizeof buf, "%s%s\n", KEYFILE_MAGIC, hex);
    bool ok = n > 0 && write(fd, buf, (size_t)n) == n && fsync(fd) == 0;
    sodium_memzero(hex, sizeof hex);
    sodium_memzero(buf, sizeof buf);
    if (close(fd) != 0) ok = false;
    if (!ok) {
        unlink(path);
        set_err(err, errlen, "%s: cannot write key file: %s", path, strerror(errno));
        return STORE_EKEYFILE;
    }
    return STORE_OK;
}

static int key_file_read(const char *path, uint8_t master[MASTER_KEY_BYTES], char *err,
                         size_t errlen)
{
    struct stat st;
    char buf[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot open data key file: %s", path, strerror(errno));
        return STORE_EKEYFILE;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        set_err(err, errlen, "%s: data key file is not a regular file%s", path, NULL);
        return STORE_EKEYFILE;
    }
    if (st.st_mode & 077) {
        close(fd);
        set_err(err, errlen, "%s: data key file is readable by others; run chmod 600 %s",
                path, path);
        return STORE_EKEYFILE;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    size_t ml = strlen(KEYFILE_MAGIC);
    size_t bin_len = 0;
    if (n < 0 || (size_t)n < ml + MASTER_KEY_BYTES * 2 || memcmp(buf, KEYFILE_MAGIC, ml) ||
        sodium_hex2bin(master, MASTER_KEY_BYTES, buf + ml, (size_t)n - ml, "\n", &bin_len,
                       NULL) != 0 ||
        bin_len != MASTER_KEY_BYTES) {
        sodium_memzero(buf, sizeof buf);
        sodium_memzero(master, MASTER_KEY_BYTES);
        set_err(err, errlen, "%s: not a Doorstep data key file%s", path, NULL);
        return STORE_EKEYFILE;
    }
    sodium_memzero(buf, sizeof buf);
    return STORE_OK;
}

static void derive_keys(store *s, const uint8_t master[MASTER_KEY_BYTES])
{
    crypto_kdf_derive_from_key(s->seal_key, sizeof s->seal_key, 1, "dsseal01", master);
    crypto_kdf_derive_from_key(s->lookup_key, sizeof s->lookup_key, 2, "dslook01", master);
}

/* ---- sealing ------------------------------------------------------------------ */

static int seal_ad(int db, const MDB_val *key, uint8_t *ad, size_t cap, size_t *adlen)
{
    size_t nl = strlen(store_db_names[db]);
    if (nl + 1 + key->mv_size > cap) return STORE_EINVAL;
    memcpy(ad, store_db_names[db], nl);
    ad[nl] = 0;
    memcpy(ad + nl + 1, key->mv_data, key->mv_size);
    *adlen = nl + 1 + key->mv_size;
    return STORE_OK;
}

/*
 * Seal nonces: 24 random bytes each, from the kernel's CSPRNG like any
 * random XChaCha20 nonce, but fetched NONCE_POOL bytes at a time per thread:
 * libsodium 1.0.18 makes one getrandom(2) system call per randombytes_buf,
 * which was two system calls per stored delta on the single writer.  Each
 * pool byte is handed out once.  A forked child drops the pool it inherited
 * (pthread_atfork; only the forking thread lives on in the child), so parent
 * and child never use the same nonce.
 */
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define NONCE_POOL (170 * NONCE_BYTES)
static _Thread_local uint8_t nonce_pool[NONCE_POOL];
static _Thread_local size_t nonce_used = NONCE_POOL;
static pthread_once_t nonce_once = PTHREAD_ONCE_INIT;

static void nonce_atfork_child(void) { nonce_used = NONCE_POOL; }
static void nonce_init(void) { pthread_atfork(NULL, NULL, nonce_atfork_child); }

static void seal_nonce(uint8_t nonce[NONCE_BYTES])
{
    pthread_once(&nonce_once, nonce_init);
    if (nonce_used + NONCE_BYTES > NONCE_POOL) {
        randombytes_buf(nonce_pool, NONCE_POOL);
        nonce_used = 0;
    }
    memcpy(nonce, nonce_pool + nonce_used, NONCE_BYTES);
    nonce_used += NONCE_BYTES;
}

int store_seal(const store *s, int db, const MDB_val *key, const uint8_t *plain, size_t n,
               crdt_buf *out)
{
    uint8_t ad[600];
    size_t adlen;
    unsigned long long clen;
    if (seal_ad(db, key, ad, sizeof ad, &adlen)) return STORE_EINVAL;
    crdt_buf_reset(out);
    size_t need = n + SEAL_OVERHEAD;
    if (out->cap < need) {
        uint8_t *p = realloc(out->p, need);
        if (!p) return CRDT_ENOMEM;
        out->p = p;
        out->cap = need;
    }
    uint8_t *nonce = out->p;
    seal_nonce(nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(
        out->p + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &clen, plain, n, ad, adlen,
        NULL, nonce, s->seal_key);
    out->n = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + (size_t)clen;
    return STORE_OK;
}

int store_unseal(const store *s, int db, const MDB_val *key, const uint8_t *sealed, size_t n,
                 crdt_buf *out)
{
    uint8_t ad[600];
    size_t adlen;
    unsigned long long plen;
    crdt_buf_reset(out);
    if (n < SEAL_OVERHEAD) return STORE_ECORRUPT;
    if (seal_ad(db, key, ad, sizeof ad, &adlen)) return STORE_EINVAL;
    size_t need = n - SEAL_OVERHEAD + 1;
    if (out->cap < need) {
        uint8_t *p = realloc(out->p, need);
        if (!p) return CRDT_ENOMEM;
        out->p = p;
        out->cap = need;
    }
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            out->p, &plen, NULL, sealed + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
            n - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, ad, adlen, sealed,
            s->seal_key) != 0)
        return STORE_ECORRUPT;
    out->n = (size_t)plen;
    return STORE_OK;
}

/* ---- get/put helpers ------------------------------------------------------------ */

/* A write to db: drop what the txn caches of it (internal.h). */
static void txn_cache_drop(store_txn *t, int db)
{
    if (db == DB_DELTAS) t->blk_n = 0; /* the log entry it caches may be this one */
    else if (db == DB_DEVICES) t->cdev_ok = false;
    else if (db == DB_HEADS) t->chead_ok = false;
    else if (db == DB_DOTS) t->cchunk_ok = false;
}

int store_put(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn)
{
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    if (!t->rw) return STORE_EREADONLY;
    txn_cache_drop(t, db);
    return store_lmdb_err(mdb_put(t->txn, t->s->dbi[db], &key, &val, 0));
}

/*
 * MDB_APPEND: LMDB puts the key at the end of the last leaf and, when that
 * page is full, starts a new page with it instead of splitting the full one
 * in half, so a database written only in key order has full pages.  LMDB
 * refuses (MDB_KEYEXIST) a key that is not greater than the last one; the
 * callers derive the key from the last one in the same write transaction
 * (last + 1), so a refusal means the database's order is damaged.
 */
int store_put_append(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn)
{
    MDB_val key = {kn, (void *)k}, val = {vn, (void *)v};
    if (!t->rw) return STORE_EREADONLY;
    txn_cache_drop(t, db);
    int rc = mdb_put(t->txn, t->s->dbi[db], &key, &val, MDB_APPEND);
    return rc == MDB_KEYEXIST ? STORE_ECORRUPT : store_lmdb_err(rc);
}

int store_get(store_txn *t, int db, const void *k, size_t kn, MDB_val *v)
{
    MDB_val key = {kn, (void *)k};
    return store_lmdb_err(mdb_get(t->txn, t->s->dbi[db], &key, v));
}

int store_del(store_txn *t, int db, const void *k, size_t kn)
{
    MDB_val key = {kn, (void *)k};
    txn_cache_drop(t, db);
    int rc = mdb_del(t->txn, t->s->dbi[db], &key, NULL);
    return rc == MDB_NOTFOUND ? STORE_OK : store_lmdb_err(rc);
}

int store_put_sealed(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn)
{
    MDB_val key = {kn, (void *)k};
    int rc = store_seal(t->s, db, &key, v, vn, &t->scratch);
    if (rc) return rc;
    return store_put(t, db, k, kn, t->scratch.p, t->scratch.n);
}

int store_put_sealed_append(store_txn *t, int db, const void *k, size_t kn, const void *v,
                            size_t vn)
{
    MDB_val key = {kn, (void *)k};
    int rc = store_seal(t->s, db, &key, v, vn, &t->scratch);
    if (rc) return rc;
    return store_put_append(t, db, k, kn, t->scratch.p, t->scratch.n);
}

int store_get_sealed(store_txn *t, int db, const void *k, size_t kn, crdt_buf *out)
{
    MDB_val key = {kn, (void *)k}, v;
    int rc = store_lmdb_err(mdb_get(t->txn, t->s->dbi[db], &key, &v));
    if (rc) return rc;
    return store_unseal(t->s, db, &key, v.mv_data, v.mv_size, out);
}

size_t store_key_join(uint8_t *out, size_t cap, const char *const *parts, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pl = strlen(parts[i]);
        if (len + pl + (i + 1 < n) > cap) return 0;
        memcpy(out + len, parts[i], pl);
        len += pl;
        if (i + 1 < n) out[len++] = 0;
    }
    return len;
}

static int txn_begin_adopting(store *s, unsigned flags, MDB_txn **txn);

/* ---- transactions ------------------------------------------------------------- */

int store_begin(store *s, int mode, store_txn **out)
{
    *out = NULL;
    store_txn *t = calloc(1, sizeof(*t));
    if (!t) return CRDT_ENOMEM;
    t->s = s;
    t->rw = mode == STORE_RW;
    /* Another process may have grown the map: adopt its size. */
    int rc = txn_begin_adopting(s, t->rw ? 0 : MDB_RDONLY, &t->txn);
    if (rc) {
        free(t);
        return store_lmdb_err(rc);
    }
    *out = t;
    return STORE_OK;
}

static void txn_free(store_txn *t)
{
    pthread_rwlock_unlock(&t->s->resize_lock);
    crdt_buf_free(&t->scratch);
    crdt_buf_free(&t->scratch2);
    crdt_buf_free(&t->zbuf);
    crdt_buf_free(&t->pend);
    crdt_buf_free(&t->blkw);
    crdt_buf_free(&t->blk);
    crdt_buf_free(&t->hist);
    crdt_buf_free(&t->menv);
    crdt_buf_free(&t->lk);
    crdt_arena_free(t->marena);
    crdt_record_free(t->rcache);
    free(t);
}

int store_commit(store_txn *t)
{
    if (!t) return STORE_EINVAL;
    if (t->rw && (t->pend_n || t->lk_n)) {
        int rc = store_lookup_apply(t);
        if (!rc) rc = store_log_flush(t);
        if (rc) {
            mdb_txn_abort(t->txn);
            txn_free(t);
            return rc;
        }
    }
    if (t->rw && t->hwm) {
        /* The HLC high-water mark, once per transaction (see store_append). */
        MDB_val key = {7, "hlc_hwm"}, v;
        int rc = mdb_get(t->txn, t->s->dbi[DB_META], &key, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != 8 || rd64(v.mv_data) < t->hwm))) {
            uint8_t b[8];
            be64(b, t->hwm);
            MDB_val nv = {8, b};
            rc = mdb_put(t->txn, t->s->dbi[DB_META], &key, &nv, 0);
        }
        if (rc) {
            mdb_txn_abort(t->txn);
            txn_free(t);
            return store_lmdb_err(rc);
        }
    }
    int rc = mdb_txn_commit(t->txn);
    if (rc == 0 && t->made_format > t->s->format) t->s->format = t->made_format;
    txn_free(t);
    return store_lmdb_err(rc);
}

void store_abort(store_txn *t)
{
    if (!t) return;
    mdb_txn_abort(t->txn);
    txn_free(t);
}

int store_grow(store *s)
{
    MDB_envinfo info;
    int rc = STORE_OK;
    /* Waits until no other thread of this process has a transaction open
     * (the caller must not hold one either). */
    pthread_rwlock_wrlock(&s->resize_lock);
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size)
        s->map_size = info.me_mapsize; /* someone else grew it already */
    if (s->map_size >= s->map_max) {
        rc = STORE_EMAPFULL;
    } else {
        size_t want = s->map_size * 2;
        if (want > s->map_max || want < s->map_size) want = s->map_max;
        int lrc = mdb_env_set_mapsize(s->env, want);
        if (lrc) rc = store_lmdb_err(lrc);
        else s->map_size = want;
    }
    pthread_rwlock_unlock(&s->resize_lock);
    return rc;
}

int store_server_sign(store_txn *t, const uint8_t *msg, size_t n, uint8_t sig[64])
{
    crdt_buf sk = {0};
    int rc = store_get_sealed(t, DB_META, "server_sk", 9, &sk);
    memset(sig, 0, 64);
    if (!rc && sk.n != crypto_sign_SECRETKEYBYTES) rc = STORE_ECORRUPT;
    if (!rc && crypto_sign_detached(sig, NULL, msg, n, sk.p) != 0) rc = STORE_ECORRUPT;
    if (sk.p) sodium_memzero(sk.p, sk.cap);
    crdt_buf_free(&sk);
    return rc;
}

void store_map_usage(store *s, size_t *used, size_t *size)
{
    MDB_envinfo info;
    MDB_stat st;
    *used = *size = 0;
    if (mdb_env_info(s->env, &info) || mdb_env_stat(s->env, &st)) return;
    *used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    *size = info.me_mapsize;
}

size_t store_map_max(const store *s) { return s->map_max; }

/* ---- open / init / close ------------------------------------------------------ */

static int env_open(store *s, const char *dir, const store_opts *o, char *err, size_t errlen)
{
    int rc = mdb_env_create(&s->env);
    if (rc) goto fail;
    /* The map is address space, not disk: the file grows only as used, so
     * start large and resize rarely. */
    s->map_size = o && o->map_initial ? o->map_initial : (size_t)1 << 30;
    s->map_max = o && o->map_max ? o->map_max : (size_t)1 << 40;
    if (s->map_max < s->map_size) s->map_max = s->map_size;
    if ((rc = mdb_env_set_maxdbs(s->env, DB_COUNT + 2))) goto fail;
    if ((rc = mdb_env_set_maxreaders(s->env, 512))) goto fail;
    if ((rc = mdb_env_set_mapsize(s->env, s->map_size))) goto fail;
    unsigned flags = MDB_NOTLS | (o && o->no_sync ? MDB_NOSYNC : 0);
    if ((rc = mdb_env_open(s->env, dir, flags, 0600))) goto fail;
    /* The biggest value a leaf node holds inline with an 8-byte key: LMDB's
     * me_nodemax, ((psize - 16) / 2 rounded down to even) - 2, less the
     * node header (8) and the key (log.c sizes its blocks to it). */
    MDB_stat est;
    if ((rc = mdb_env_stat(s->env, &est))) goto fail;
    s->log_vmax = ((((size_t)est.ms_psize - 16) / 2) & ~(size_t)1) - 2 - 8 - 8;
    /* The file may be larger than we asked for (grown by another process). */
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size) {
        s->map_size = info.me_mapsize;
        if (s->map_max < s->map_size) s->map_max = s->map_size;
    }
    int dead = 0;
    mdb_reader_check(s->env, &dead); /* clear slots of crashed processes */
    return STORE_OK;
fail:
    set_err(err, errlen, "%s: cannot open database: %s", dir, mdb_strerror(rc));
    return store_lmdb_err(rc);
}

/*
 * mdb_txn_begin under the shared resize lock (released by txn_free, or
 * here on failure), adopting a map another process grew in the meantime:
 * adopting remaps, so it takes the lock exclusively first.
 */
static int txn_begin_adopting(store *s, unsigned flags, MDB_txn **txn)
{
    int rc = MDB_MAP_RESIZED;
    for (int tries = 0; tries < 8; tries++) {
        pthread_rwlock_rdlock(&s->resize_lock);
        rc = mdb_txn_begin(s->env, NULL, flags, txn);
        if (rc == MDB_SUCCESS) return rc; /* lock held until the txn ends */
        pthread_rwlock_unlock(&s->resize_lock);
        if (rc != MDB_MAP_RESIZED) return rc;
        pthread_rwlock_wrlock(&s->resize_lock);
        mdb_env_set_mapsize(s->env, 0);
        MDB_envinfo info;
        if (mdb_env_info(s->env, &info) == 0) s->map_size = info.me_mapsize;
        if (s->map_max < s->map_size) s->map_max = s->map_size;
        pthread_rwlock_unlock(&s->resize_lock);
    }
    return rc;
}

/* Open every named database.  Only called while no other transaction of
 * this process can exist (open, init, or reopen under the exclusive resize
 * lock), so it adopts a map grown by another process without locking. */
static int open_dbs(store *s, bool create)
{
    MDB_txn *txn = NULL;
    int rc = MDB_MAP_RESIZED;
    for (int tries = 0; tries < 8 && rc == MDB_MAP_RESIZED; tries++) {
        rc = mdb_txn_begin(s->env, NULL, create ? 0 : MDB_RDONLY, &txn);
        if (rc == MDB_MAP_RESIZED) {
            mdb_env_set_mapsize(s->env, 0);
            MDB_envinfo info;
            if (mdb_env_info(s->env, &info) == 0) s->map_size = info.me_mapsize;
            if (s->map_max < s->map_size) s->map_max = s->map_size;
        }
    }
    if (rc) return store_lmdb_err(rc);
    for (int i = 0; i < DB_COUNT; i++) {
        rc = mdb_dbi_open(txn, store_db_names[i], create ? MDB_CREATE : 0, &s->dbi[i]);
        if (rc) {
            mdb_txn_abort(txn);
            return rc == MDB_NOTFOUND ? STORE_ENOTINIT : store_lmdb_err(rc);
        }
    }
    return store_lmdb_err(mdb_txn_commit(txn));
}

/* Resolve the fields the indexes and aggregates read; all must exist. */
static int load_model(store *s, char *err, size_t errlen)
{
    const crdt_kspec *hh = crdt_schema_kind(s->schema, "household", 9);
    const crdt_kspec *p = crdt_schema_kind(s->schema, "person", 6);
    store_model *m = &s->model;
    if (!hh || !p) {
        set_err(err, errlen, "schema has no %s kind%s", !hh ? "household" : "person", NULL);
        return STORE_ESCHEMA;
    }
#define FIELD(dst, kind, name)                                              \
    do {                                                                    \
        m->dst = crdt_schema_field(kind, name, strlen(name));               \
        if (!m->dst) {                                                      \
            set_err(err, errlen, "schema lacks field %s%s", name, NULL);    \
            return STORE_ESCHEMA;                                           \
        }                                                                   \
    } while (0)
    FIELD(hh_community, hh, "community");
    FIELD(hh_grid, hh, "grid");
    FIELD(hh_visits, hh, "visits");
    FIELD(p_household, p, "household");
    FIELD(p_name, p, "name");
    FIELD(p_idnum, p, "id_number");
    FIELD(p_phone, p, "phone");
    FIELD(p_tags, p, "tags");
    FIELD(p_payment, p, "payment");
    FIELD(p_life, p, "life_status");
    FIELD(p_visits, p, "visits");
#undef FIELD
    m->p_insurance = crdt_schema_field(p, "insurance_type", 14);
    return STORE_OK;
}

static bool dir_exists(const char *d)
{
    struct stat st;
    return stat(d, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool same_dir(const char *dir, const char *key_file)
{
    char *kf = strdup(key_file);
    if (!kf) return false;
    char *slash = strrchr(kf, '/');
    const char *kdir = ".";
    if (slash) {
        *slash = 0;
        kdir = *kf ? kf : "/";
    }
    char *a = realpath(dir, NULL), *b = realpath(kdir, NULL);
    bool same = a && b && strcmp(a, b) == 0;
    free(a);
    free(b);
    free(kf);
    return same;
}

int store_init(const char *dir, const char *key_file, const char *schema_path,
               uint32_t campaign_year, char *err, size_t errlen)
{
    store s;
    uint8_t master[MASTER_KEY_BYTES], sk[64];
    crdt_buf sealed = {0};
    char *json = NULL;
    size_t json_len = 0;
    MDB_txn *txn = NULL;
    int rc;
    memset(&s, 0, sizeof s);
    pthread_rwlock_init(&s.resize_lock, NULL);
    if (wire_init()) return WIRE_EINIT;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        set_err(err, errlen, "%s: cannot create directory: %s", dir, strerror(errno));
        return STORE_EIO;
    }
    {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/data.mdb", dir);
        if (stat(path, &st) == 0) {
            set_err(err, errlen, "%s: a store already exists here%s", dir, NULL);
            return STORE_EEXIST;
        }
    }
    if (same_dir(dir, key_file)) {
        set_err(err, errlen, "%s: the data key file must live outside the data directory %s",
                key_file, dir);
        return STORE_EKEYFILE;
    }
    /* Load and validate the schema before creating anything else. */
    rc = wire_schema_load_file(schema_path, &s.schema, err, errlen);
    if (rc) return rc;
    {
        FILE *f = fopen(schema_path, "rb");
        if (f) {
            fseek(f, 0, SEEK_END);
            long l = ftell(f);
            rewind(f);
            json = l > 0 ? malloc((size_t)l) : NULL;
            if (json && fread(json, 1, (size_t)l, f) == (size_t)l) json_len = (size_t)l;
            fclose(f);
        }
        if (!json_len) {
            set_err(err, errlen, "%s: cannot read schema%s", schema_path, NULL);
            rc = WIRE_EIO;
            goto out;
        }
    }
    if ((rc = load_model(&s, err, errlen))) goto out;
    if ((rc = key_file_create(key_file, master, err, errlen))) goto out;
    derive_keys(&s, master);
    if ((rc = env_open(&s, dir, NULL, err, errlen))) goto out_key;
    if ((rc = open_dbs(&s, true))) goto out_key;
    if ((rc = store_lmdb_err(mdb_txn_begin(s.env, NULL, 0, &txn)))) goto out_key;
    {
        store_txn t = {.s = &s, .txn = txn, .rw = true};
        uint8_t fmt[4], year[4], zero[8] = {0};
        be32(fmt, STORE_FORMAT);
        be32(year, campaign_year);
        crypto_sign_keypair(s.server_pk, sk);
        if ((rc = store_put(&t, DB_META, "format", 6, fmt, 4)) ||
            (rc = store_put(&t, DB_META, "schema", 6, json, json_len)) ||
            (rc = store_put(&t, DB_META, "server_pk", 9, s.server_pk, 32)) ||
            (rc = store_put_sealed(&t, DB_META, "server_sk", 9, sk, 64)) ||
            (rc = store_put_sealed(&t, DB_META, "canary", 6, CANARY, strlen(CANARY))) ||
            (rc = store_put(&t, DB_META, "campaign_year", 13, year, 4)) ||
            (rc = store_put(&t, DB_META, "hlc_hwm", 7, zero, 8)) ||
            (rc = store_put(&t, DB_META, "lookup_hlen", 11, "\x08", 1)) ||
            (rc = store_zdict_put(&t))) {
            crdt_buf_free(&t.scratch);
            mdb_txn_abort(txn);
            goto out_key;
        }
        crdt_buf_free(&t.scratch);
        rc = store_lmdb_err(mdb_txn_commit(txn));
    }
out_key:
    if (rc) {
        unlink(key_file);
        if (err && errlen && !*err) snprintf(err, errlen, "%s: init failed: %s", dir,
                                             store_strerror(rc));
    }
out:
    sodium_memzero(master, sizeof master);
    sodium_memzero(sk, sizeof sk);
    sodium_memzero(s.seal_key, sizeof s.seal_key);
    sodium_memzero(s.lookup_key, sizeof s.lookup_key);
    if (s.env) mdb_env_close(s.env);
    pthread_rwlock_destroy(&s.resize_lock);
    crdt_schema_free(s.schema);
    crdt_buf_free(&sealed);
    free(json);
    return rc;
}

int store_open(const char *dir, const char *key_file, const store_opts *opts, store **out,
               char *err, size_t errlen)
{
    uint8_t master[MASTER_KEY_BYTES];
    store *s = NULL;
    store_txn *t = NULL;
    crdt_buf plain = {0};
    MDB_val v;
    uint32_t format;
    int rc;
    *out = NULL;
    if (err && errlen) *err = 0;
    if (wire_init()) return WIRE_EINIT;
    {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/data.mdb", dir);
        if (!dir_exists(dir) || stat(path, &st) != 0) {
            set_err(err, errlen, "%s: not a Doorstep store; run `doorstepctl --data %s init`",
                    dir, dir);
            return STORE_ENOTINIT;
        }
    }
    if ((rc = key_file_read(key_file, master, err, errlen))) return rc;
    s = calloc(1, sizeof *s);
    if (!s) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    pthread_rwlock_init(&s->resize_lock, NULL);
    pthread_mutex_init(&s->zlock, NULL);
    derive_keys(s, master);
    sodium_memzero(master, sizeof master);
    s->dir = strdup(dir);
    if (opts) s->opts = *opts;
    if ((rc = env_open(s, dir, opts, err, errlen))) goto fail;
    if ((rc = open_dbs(s, false))) {
        set_err(err, errlen, "%s: store is incomplete (%s)", dir, store_strerror(rc));
        goto fail;
    }
    if ((rc = store_begin(s, STORE_RDONLY, &t))) goto fail;
    if ((rc = store_get(t, DB_META, "format", 6, &v)) || v.mv_size != 4) {
        set_err(err, errlen, "%s: store has no format version%s", dir, NULL);
        rc = STORE_EFORMAT;
        goto fail;
    }
    format = rd32(v.mv_data);
    s->format = format;
    if (format < STORE_FORMAT_MIN || format > STORE_FORMAT) {
        if (err && errlen)
            snprintf(err, errlen, "%s: store format %u; this version reads formats %u to %u (%s)",
                     dir, (unsigned)format, (unsigned)STORE_FORMAT_MIN, (unsigned)STORE_FORMAT,
                     format > STORE_FORMAT ? "a newer Doorstep wrote or upgraded it: run that "
                                             "version" : "too old to upgrade");
        rc = STORE_EFORMAT;
        goto fail;
    }
    rc = store_get_sealed(t, DB_META, "canary", 6, &plain);
    if (rc || plain.n != strlen(CANARY) || memcmp(plain.p, CANARY, plain.n)) {
        set_err(err, errlen, "%s: the data key file does not belong to the store in %s",
                key_file, dir);
        rc = STORE_EKEYFILE;
        goto fail;
    }
    if ((rc = store_get(t, DB_META, "schema", 6, &v))) goto fail;
    rc = wire_schema_load_buffer(v.mv_data, v.mv_size, "stored schema", &s->schema, err,
                                 errlen);
    if (rc) goto fail;
    if (!(s->schema_json = malloc(v.mv_size ? v.mv_size : 1))) {
        rc = CRDT_ENOMEM;
        goto fail;
    }
    memcpy(s->schema_json, v.mv_data, v.mv_size);
    s->schema_json_len = v.mv_size;
    if ((rc = load_model(s, err, errlen))) goto fail;
    if ((rc = store_get(t, DB_META, "server_pk", 9, &v)) || v.mv_size != 32) {
        rc = STORE_ECORRUPT;
        goto fail;
    }
    memcpy(s->server_pk, v.mv_data, 32);
    if ((rc = store_get(t, DB_META, "campaign_year", 13, &v)) || v.mv_size != 4) {
        rc = STORE_ECORRUPT;
        goto fail;
    }
    s->campaign_year = opts && opts->campaign_year ? opts->campaign_year : rd32(v.mv_data);
    /* Lookup keys hold 8 bytes of keyed hash; stores made before format 2
     * hold 16 and keep them (no meta entry). */
    s->lookup_hlen = 16;
    rc = store_get(t, DB_META, "lookup_hlen", 11, &v);
    if (rc == STORE_OK) {
        if (v.mv_size != 1 || (*(uint8_t *)v.mv_data != 8 && *(uint8_t *)v.mv_data != 16)) {
            rc = STORE_ECORRUPT;
            goto fail;
        }
        s->lookup_hlen = *(uint8_t *)v.mv_data;
    } else if (rc != STORE_ENOTFOUND) {
        goto fail;
    }
    /* The compression dictionary.  A format 1 store has none yet and is
     * upgraded to format 2 first (pack.c).  A format 2 store without one is
     * damaged: it opens, writes values uncompressed, and every compressed
     * value reads as STORE_ECORRUPT (verify reports them), rather than
     * being read with a dictionary made again. */
    rc = store_zdict_load(t);
    store_abort(t);
    t = NULL;
    if (rc == STORE_ENOTFOUND && format == 1) {
        if ((rc = store_zdict_upgrade(s)) == STORE_OK) s->format = 2;
        else
            set_err(err, errlen, "%s: cannot upgrade the store to this version's format: %s",
                    dir, store_strerror(rc));
    } else if (rc == STORE_ENOTFOUND) {
        rc = STORE_OK;
    }
    if (rc) goto fail;
    crdt_buf_free(&plain);
    *out = s;
    return STORE_OK;
fail:
    if (err && errlen && !*err)
        snprintf(err, errlen, "%s: cannot open store: %s", dir, store_strerror(rc));
    store_abort(t);
    crdt_buf_free(&plain);
    store_close(s);
    return rc;
}

int store_reopen(store *s, char *err, size_t errlen)
{
    /* Exclusive: no transaction of this process is open while the
     * environment is closed and opened again. */
    pthread_rwlock_wrlock(&s->resize_lock);
    store_opts o = s->opts;
    o.map_initial = s->map_size;
    o.map_max = s->map_max;
    mdb_env_close(s->env);
    s->env = NULL;
    int rc = env_open(s, s->dir, &o, err, errlen);
    if (!rc) rc = open_dbs(s, false);
    pthread_rwlock_unlock(&s->resize_lock);
    return rc;
}

char *store_default_key_file(const char *dir)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    char *p = malloc(n + 5);
    if (!p) return NULL;
    memcpy(p, dir, n);
    strcpy(p + n, ".key");
    return p;
}

void store_close(store *s)
{
    if (!s) return;
    if (s->env) mdb_env_close(s->env);
    store_zdict_free(s);
    pthread_mutex_destroy(&s->zlock);
    crdt_schema_free(s->schema);
    free(s->schema_json);
    sodium_memzero(s->seal_key, sizeof s->seal_key);
    sodium_memzero(s->lookup_key, sizeof s->lookup_key);
    free(s->dir);
    pthread_rwlock_destroy(&s->resize_lock);
    free(s);
}

const crdt_schema *store_schema(const store *s) { return s->schema; }

const uint8_t *store_schema_json(const store *s, size_t *n)
{
    *n = s->schema_json_len;
    return s->schema_json;
}
const uint8_t *store_server_pk(const store *s) { return s->server_pk; }
uint32_t store_campaign_year(const store *s) { return s->campaign_year; }
