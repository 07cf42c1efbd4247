/*
 * device.c — the device library's handle, local LMDB store, secret key
 * files, editing API and local reads.  (Sync lives in dsync.c, the
 * transport in ws.c.)
 *
 * Invariants
 *   - One edit = one LMDB write transaction that, all or nothing: reads the
 *     chain state (seq, prev hash, HLC), signs the next delta, puts it in the
 *     outbox under its seq, advances the chain state, and merges the delta
 *     into the local record.  A crash before the commit leaves no trace; a
 *     crash after it leaves a complete, signed, chained delta.
 *   - The secret key is read from its file only to sign (or rotate) and is
 *     wiped with sodium_memzero right after; it never enters LMDB.  Key
 *     files are written to a temporary name, fsync'd, renamed, and the
 *     directory fsync'd, so a crash leaves the old file or the new one.
 *   - The key file must be mode 0600 (no group/other bits) and match the
 *     public key recorded in meta, or signing fails with DSD_EKEYFILE.
 *   - Local records only ever change by crdt_record_apply (own edits and
 *     pulled deltas), so they converge with the server's.
 *   - No global state: everything hangs off the handle.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAP_INITIAL (32u << 20)

/* ---- errors -------------------------------------------------------------------- */

const char *dsd_strerror(int code)
{
    switch (code) {
    case DSD_OK: return "ok";
    case DSD_EINVAL: return "invalid argument";
    case DSD_ENOMEM: return "out of memory";
    case DSD_EIO: return "file I/O failed";
    case DSD_ELMDB: return "local database failed";
    case DSD_ENOTENROLLED: return "device not enrolled yet";
    case DSD_EENROLLED: return "device already enrolled";
    case DSD_ENOTFOUND: return "no such record";
    case DSD_ESCOPE: return "record outside this device's households";
    case DSD_ECONNECT: return "cannot connect to the server";
    case DSD_ETLS: return "TLS (wss://) not supported yet";
    case DSD_EURL: return "malformed server URL";
    case DSD_ETIMEOUT: return "server did not answer in time";
    case DSD_ECLOSED: return "connection closed";
    case DSD_EPROTO: return "server sent an unexpected frame";
    case DSD_ESERVERKEY: return "server key differs from the one pinned at enrollment";
    case DSD_ECHAIN: return "server holds more of this device's deltas than the device";
    case DSD_EBLOCKED: return "a delta the server refused blocks the ones after it";
    case DSD_EKEYFILE: return "device key file missing, unsafe or not this device's";
    case DSD_ENOCONFLICT: return "no conflict to resolve";
    case DSD_ESCHEMA: return "schema could not be loaded";
    case DSD_EREVOKED: return "the station revoked this device; its pending edits were handed in";
    case DSD_EFORGED: return "the server sent an envelope that is not signed by its device's key";
    /* codes the server sends (sync/sync.h, store/store.h) */
    case -300: return "frame malformed";
    case -301: return "unknown frame type";
    case -302: return "frame not allowed now";
    case -303: return "unknown device";
    case -304: return "device frozen: a cloned key was detected; contact the station";
    case -305: return "device revoked by the station";
    case -306: return "authentication signature does not verify";
    case -307: return "key epoch unknown, retired or revoked";
    case -308: return "too many deltas in one push";
    case -309: return "record outside this device's households";
    case -310: return "delta signed for another device";
    case -311: return "server busy; retry later";
    case -312: return "server cannot store data now; retry later";
    case -313: return "server shutting down; retry later";
    case -314: return "not authenticated in time";
    case -315: return "key rotation required before pushing";
    case -209: return "enrollment token not recognised";
    case -210: return "delta seq is not the next one";
    case -216: return "enrollment token already used";
    case -217: return "enrollment token expired";
    default: return wire_strerror(code);
    }
}

int dsd_fail(dsd *h, int code, const char *fmt, ...)
{
    if (h) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(h->err, sizeof h->err, fmt, ap);
        va_end(ap);
    }
    return code;
}

int dsd_lmdb(dsd *h, int rc, const char *what)
{
    if (rc == 0) return 0;
    return dsd_fail(h, rc == ENOMEM ? DSD_ENOMEM : DSD_ELMDB, "local database: %s: %s", what,
                    mdb_strerror(rc));
}

const char *dsd_errmsg(const dsd *h) { return h ? h->err : ""; }
void dsd_free(void *p) { free(p); }

int dsd_global_init(void) { return wire_init() ? DSD_EIO : 0; }

void dsd_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) *p++ = (uint8_t)(v >> (8 * i));
}

uint64_t dsd_rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

uint64_t dsd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- open / close -------------------------------------------------------------- */

static int open_dbi(dsd *h, MDB_txn *t, const char *name, MDB_dbi *dbi)
{
    return dsd_lmdb(h, mdb_dbi_open(t, name, MDB_CREATE, dbi), name);
}

int dsd_open(const char *dir, const char *schema_path, dsd **out, char *err, size_t errlen)
{
    dsd *h = NULL;
    MDB_txn *t = NULL;
    int rc;
    char emsg[512];
    if (out) *out = NULL;
    if (!dir || !schema_path || !out || strlen(dir) >= DSD_PATH_MAX - 32) {
        rc = DSD_EINVAL;
        snprintf(emsg, sizeof emsg, "dsd_open: directory and schema path are required");
        goto fail;
    }
    h = calloc(1, sizeof *h);
    if (!h) {
        rc = DSD_ENOMEM;
        snprintf(emsg, sizeof emsg, "out of memory");
        goto fail;
    }
    snprintf(h->dir, sizeof h->dir, "%s", dir);
    h->lim = crdt_limits_default;
    h->lim.max_msg = 8u << 20;
    h->lim.max_entries = 1u << 20;
    h->lim.max_bin = 1u << 20;
    if (mkdir(dir, 0700) && errno != EEXIST) {
        rc = DSD_EIO;
        snprintf(emsg, sizeof emsg, "%s: %s", dir, strerror(errno));
        goto fail;
    }
    rc = wire_schema_load_file(schema_path, &h->schema, emsg, sizeof emsg);
    if (rc) {
        rc = DSD_ESCHEMA;
        goto fail;
    }
    if ((rc = mdb_env_create(&h->env)) || (rc = mdb_env_set_maxdbs(h->env, 8)) ||
        (rc = mdb_env_set_mapsize(h->env, MAP_INITIAL)) ||
        (rc = mdb_env_open(h->env, dir, MDB_NOTLS, 0600))) {
        snprintf(emsg, sizeof emsg, "%s: local database: %s", dir, mdb_strerror(rc));
        rc = DSD_ELMDB;
        goto fail;
    }
    int dead = 0;
    mdb_reader_check(h->env, &dead); /* slots of a crashed process */
    if ((rc = mdb_txn_begin(h->env, NULL, 0, &t)) || open_dbi(h, t, "meta", &h->db_meta) ||
        open_dbi(h, t, "records", &h->db_rec) || open_dbi(h, t, "outbox", &h->db_out) ||
        open_dbi(h, t, "rejected", &h->db_rej) || open_dbi(h, t, "scope", &h->db_scope) ||
        (rc = mdb_txn_commit(t))) {
        if (t && rc) mdb_txn_abort(t);
        snprintf(emsg, sizeof emsg, "%s: local database: %s", dir,
                 rc ? mdb_strerror(rc) : h->err);
        rc = DSD_ELMDB;
        goto fail;
    }
    *out = h;
    return 0;
fail:
    if (err && errlen) snprintf(err, errlen, "%s", emsg);
    dsd_close(h);
    return rc;
}

void dsd_close(dsd *h)
{
    if (!h) return;
    if (h->env) mdb_env_close(h->env);
    crdt_schema_free(h->schema);
    free(h);
}

int dsd_set_durable(dsd *h, bool durable)
{
    if (!h) return DSD_EINVAL;
    return dsd_lmdb(h, mdb_env_set_flags(h->env, MDB_NOSYNC, durable ? 0 : 1), "set flags");
}

int dsd_txn_begin(dsd *h, bool rw, MDB_txn **t)
{
    *t = NULL;
    if (rw) {
        MDB_envinfo ei;
        MDB_stat st;
        if (!mdb_env_info(h->env, &ei) && !mdb_env_stat(h->env, &st) &&
            (ei.me_last_pgno + 1) * (size_t)st.ms_psize > ei.me_mapsize / 4 * 3) {
            int rc = mdb_env_set_mapsize(h->env, ei.me_mapsize * 2);
            if (rc) return dsd_lmdb(h, rc, "growing the map");
        }
    }
    return dsd_lmdb(h, mdb_txn_begin(h->env, NULL, rw ? 0 : MDB_RDONLY, t), "begin");
}

/* ---- meta ------------------------------------------------------------------------ */

static MDB_val mkey(const char *k) { return (MDB_val){strlen(k), (void *)k}; }

int dsd_meta_u64(dsd *h, MDB_txn *t, const char *k, uint64_t *v)
{
    MDB_val key = mkey(k), val;
    *v = 0;
    int rc = mdb_get(t, h->db_meta, &key, &val);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return dsd_lmdb(h, rc, k);
    if (val.mv_size != 8) return dsd_fail(h, DSD_ELMDB, "local database: meta %s corrupt", k);
    *v = dsd_rd64(val.mv_data);
    return 0;
}

int dsd_meta_put_u64(dsd *h, MDB_txn *t, const char *k, uint64_t v)
{
    uint8_t b[8];
    dsd_be64(b, v);
    MDB_val key = mkey(k), val = {8, b};
    return dsd_lmdb(h, mdb_put(t, h->db_meta, &key, &val, 0), k);
}

int dsd_meta_bin(dsd *h, MDB_txn *t, const char *k, uint8_t *v, size_t n, bool *found)
{
    MDB_val key = mkey(k), val;
    memset(v, 0, n);
    if (found) *found = false;
    int rc = mdb_get(t, h->db_meta, &key, &val);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return dsd_lmdb(h, rc, k);
    if (val.mv_size != n) return dsd_fail(h, DSD_ELMDB, "local database: meta %s corrupt", k);
    memcpy(v, val.mv_data, n);
    if (found) *found = true;
    return 0;
}

int dsd_meta_put_bin(dsd *h, MDB_txn *t, const char *k, const uint8_t *v, size_t n)
{
    MDB_val key = mkey(k), val = {n, (void *)v};
    return dsd_lmdb(h, mdb_put(t, h->db_meta, &key, &val, 0), k);
}

int dsd_meta_del(dsd *h, MDB_txn *t, const char *k)
{
    MDB_val key = mkey(k);
    int rc = mdb_del(t, h->db_meta, &key, NULL);
    return rc == MDB_NOTFOUND ? 0 : dsd_lmdb(h, rc, k);
}

/* ---- key files ------------------------------------------------------------------- */

int dsd_key_write(dsd *h, const char *name, const uint8_t sk[64])
{
    char path[DSD_PATH_MAX + 32], tmp[DSD_PATH_MAX + 40];
    snprintf(path, sizeof path, "%s/%s", h->dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return dsd_fail(h, DSD_EIO, "%s: %s", tmp, strerror(errno));
    ssize_t w = write(fd, sk, 64);
    int e = errno;
    if (w != 64 || fsync(fd)) {
        close(fd);
        unlink(tmp);
        return dsd_fail(h, DSD_EIO, "%s: %s", tmp, strerror(w < 0 ? e : EIO));
    }
    close(fd);
    if (rename(tmp, path)) {
        e = errno;
        unlink(tmp);
        return dsd_fail(h, DSD_EIO, "%s: %s", path, strerror(e));
    }
    int dfd = open(h->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

int dsd_key_read(dsd *h, const char *name, uint8_t sk[64])
{
    char path[DSD_PATH_MAX + 32];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", h->dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dsd_fail(h, DSD_EKEYFILE, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) || (st.st_mode & 077)) {
        close(fd);
        return dsd_fail(h, DSD_EKEYFILE, "%s: must be mode 0600 (no group or other access)",
                        path);
    }
    ssize_t r = read(fd, sk, 64);
    close(fd);
    if (r != 64) {
        sodium_memzero(sk, 64);
        return dsd_fail(h, DSD_EKEYFILE, "%s: not a 64-byte Ed25519 secret key", path);
    }
    return 0;
}

int dsd_key_rename(dsd *h, const char *from, const char *to)
{
    char a[DSD_PATH_MAX + 32], b[DSD_PATH_MAX + 32];
    snprintf(a, sizeof a, "%s/%s", h->dir, from);
    snprintf(b, sizeof b, "%s/%s", h->dir, to);
    if (rename(a, b)) return dsd_fail(h, DSD_EIO, "%s: %s", a, strerror(errno));
    int dfd = open(h->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

void dsd_key_remove(dsd *h, const char *name)
{
    char a[DSD_PATH_MAX + 32];
    snprintf(a, sizeof a, "%s/%s", h->dir, name);
    unlink(a);
}

/* Load the current secret key: device.key must match meta "pk".  (A
 * rotation confirmed and recorded but whose rename did not happen yet is
 * finished here.) */
static int load_sk(dsd *h, MDB_txn *t, uint8_t sk[64])
{
    uint8_t pk[32], kpk[32];
    bool found;
    int rc = dsd_meta_bin(h, t, "pk", pk, 32, &found);
    if (rc) return rc;
    if (!found) return dsd_fail(h, DSD_ENOTENROLLED, "device not enrolled");
    for (int pass = 0; pass < 2; pass++) {
        rc = dsd_key_read(h, pass ? "device.key.next" : "device.key", sk);
        if (rc) return rc;
        crypto_sign_ed25519_sk_to_pk(kpk, sk);
        if (!memcmp(kpk, pk, 32)) {
            if (pass) dsd_key_rename(h, "device.key.next", "device.key");
            return 0;
        }
        sodium_memzero(sk, 64);
        rc = dsd_fail(h, DSD_EKEYFILE, "%s/device.key is not this device's current key", h->dir);
        /* meta may name a rotated key whose file was not renamed yet */
    }
    return rc;
}

/* ---- status ------------------------------------------------------------------------ */

static uint64_t count_db(MDB_txn *t, MDB_dbi d)
{
    MDB_stat st;
    return mdb_stat(t, d, &st) ? 0 : st.ms_entries;
}

int dsd_status_get(dsd *h, dsd_status *out)
{
    MDB_txn *t;
    uint64_t v, off;
    bool rot;
    uint8_t tmp[32];
    memset(out, 0, sizeof *out);
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    if ((rc = dsd_meta_u64(h, t, "dev", &v))) goto out;
    out->dev = (uint32_t)v;
    if ((rc = dsd_meta_u64(h, t, "epoch", &v))) goto out;
    out->epoch = (uint32_t)v;
    if ((rc = dsd_meta_u64(h, t, "seq", &out->seq)) ||
        (rc = dsd_meta_bin(h, t, "prev", out->head, 32, NULL)) ||
        (rc = dsd_meta_u64(h, t, "cursor", &out->cursor)) ||
        (rc = dsd_meta_u64(h, t, "off", &off)) ||
        (rc = dsd_meta_bin(h, t, "rot_pk", tmp, 32, &rot)) ||
        (rc = dsd_meta_u64(h, t, "revoked", &v)))
        goto out;
    out->revoked = v != 0;
    out->clock_offset_ms = (int64_t)off;
    out->rotate_pending = rot;
    out->outbox = count_db(t, h->db_out);
    out->rejected = count_db(t, h->db_rej);
    out->records = count_db(t, h->db_rec);
    out->scope = count_db(t, h->db_scope);
out:
    mdb_txn_abort(t);
    if (rc) memset(out, 0, sizeof *out);
    return rc;
}

/* ---- records ----------------------------------------------------------------------- */

static int rec_key(const char *kind, const char *id, uint8_t *buf, size_t cap, MDB_val *k)
{
    size_t kl = strlen(kind), il = strlen(id);
    if (kl + 1 + il > cap) return DSD_EINVAL;
    memcpy(buf, kind, kl);
    buf[kl] = 0;
    memcpy(buf + kl + 1, id, il);
    k->mv_data = buf;
    k->mv_size = kl + 1 + il;
    return 0;
}

/* The local record (owned) or NULL if absent. */
static int rec_load(dsd *h, MDB_txn *t, const char *kind, const char *id, crdt_record **out)
{
    uint8_t kb[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    MDB_val k, v;
    *out = NULL;
    if (rec_key(kind, id, kb, sizeof kb, &k)) return dsd_fail(h, DSD_EINVAL, "bad record id");
    int rc = mdb_get(t, h->db_rec, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return dsd_lmdb(h, rc, "records");
    rc = crdt_record_decode(v.mv_data, v.mv_size, out);
    if (rc) return dsd_fail(h, DSD_ELMDB, "local record %s/%s corrupt: %s", kind, id,
                            crdt_strerror(rc));
    return 0;
}

static int rec_store(dsd *h, MDB_txn *t, const crdt_record *r)
{
    uint8_t kb[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    crdt_buf b = {0};
    MDB_val k, v;
    if (rec_key(r->kind, r->id, kb, sizeof kb, &k)) return dsd_fail(h, DSD_EINVAL, "bad id");
    if (crdt_record_encode(r, &b)) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    v.mv_data = b.p;
    v.mv_size = b.n;
    int rc = dsd_lmdb(h, mdb_put(t, h->db_rec, &k, &v, 0), "records");
    crdt_buf_free(&b);
    return rc;
}

static int rec_delete(dsd *h, MDB_txn *t, const char *kind, const char *id)
{
    uint8_t kb[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    MDB_val k;
    if (rec_key(kind, id, kb, sizeof kb, &k)) return DSD_EINVAL;
    int rc = mdb_del(t, h->db_rec, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : dsd_lmdb(h, rc, "records");
}

bool dsd_in_scope(dsd *h, MDB_txn *t, const char *hh, size_t len)
{
    MDB_val k = {len, (void *)hh}, v;
    return len > 0 && mdb_get(t, h->db_scope, &k, &v) == 0;
}

/* The (first) current household value of a person record, "" if none. */
static void person_household(const crdt_record *r, char out[CRDT_RECID_MAX + 1])
{
    out[0] = 0;
    const crdt_field *f = crdt_record_field(r, "household", (crdt_blob){NULL, 0});
    crdt_val v;
    if (f && f->n && !crdt_val_parse(f->e[0].v, &v) && v.t == CRDT_V_STR &&
        v.len <= CRDT_RECID_MAX) {
        memcpy(out, v.s, v.len);
        out[v.len] = 0;
    }
}

/* Does the record belong to the scope (household in scope, or a person of
 * one)?  A person with no household yet counts as in scope. */
static bool rec_in_scope(dsd *h, MDB_txn *t, const crdt_record *r)
{
    if (!strcmp(r->kind, "household")) return dsd_in_scope(h, t, r->id, strlen(r->id));
    char hh[CRDT_RECID_MAX + 1];
    person_household(r, hh);
    return !hh[0] || dsd_in_scope(h, t, hh, strlen(hh));
}

int dsd_apply_remote(dsd *h, MDB_txn *t, const uint8_t *env, size_t n, uint64_t *purged,
                     bool *fresh)
{
    const uint8_t *db, *sig;
    size_t dl;
    int err_op, rc;
    crdt_arena *a = crdt_arena_new(0);
    crdt_delta d;
    crdt_record *r = NULL;
    if (!a) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    rc = wire_envelope_decode(env, n, &crdt_limits_default, &db, &dl, &sig);
    if (!rc) rc = crdt_delta_decode(db, dl, &crdt_limits_default, a, &d, &err_op);
    if (!rc) rc = crdt_schema_check_delta(h->schema, &d, &err_op);
    if (rc) {
        rc = dsd_fail(h, DSD_EPROTO, "server sent a delta that does not decode: %s",
                      wire_strerror(rc));
        goto out;
    }
    char kind[CRDT_NAME_MAX + 1], id[CRDT_RECID_MAX + 1];
    if (d.kind_len > CRDT_NAME_MAX || d.id_len > CRDT_RECID_MAX) {
        rc = dsd_fail(h, DSD_EPROTO, "bad record name");
        goto out;
    }
    memcpy(kind, d.kind, d.kind_len);
    kind[d.kind_len] = 0;
    memcpy(id, d.id, d.id_len);
    id[d.id_len] = 0;
    if ((rc = rec_load(h, t, kind, id, &r))) goto out;
    /* A person this device has never seen may have moved in with history
     * it never received: the caller fetches its merged record. */
    if (fresh) *fresh = !r && !strcmp(kind, "person");
    if (!r && !(r = crdt_record_new(kind, d.kind_len, id, d.id_len))) {
        rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = crdt_record_apply(r, h->schema, &d))) {
        rc = dsd_fail(h, DSD_EPROTO, "cannot apply %s/%s: %s", kind, id, crdt_strerror(rc));
        goto out;
    }
    /* Merge the remote clock into ours, so later local edits follow it. */
    uint64_t hlc, off;
    crdt_hlc nh;
    if ((rc = dsd_meta_u64(h, t, "hlc", &hlc)) || (rc = dsd_meta_u64(h, t, "off", &off))) goto out;
    if (crdt_hlc_recv(&hlc, d.hlc, dsd_wall_ms() + off, 24ull * 3600 * 1000, &nh) == 0 &&
        (rc = dsd_meta_put_u64(h, t, "hlc", nh)))
        goto out;
    if (rec_in_scope(h, t, r)) {
        rc = rec_store(h, t, r);
    } else {
        rc = rec_delete(h, t, kind, id);
        if (!rc && purged) (*purged)++;
    }
out:
    crdt_record_free(r);
    crdt_arena_free(a);
    return rc;
}

int dsd_merge_record(dsd *h, MDB_txn *t, const uint8_t *p, size_t n)
{
    crdt_record *in = NULL, *r = NULL;
    int rc = crdt_record_decode(p, n, &in);
    if (rc) return dsd_fail(h, DSD_EPROTO, "server sent a record that does not decode");
    if ((rc = rec_load(h, t, in->kind, in->id, &r))) goto out;
    if (!r) {
        r = in;
        in = NULL;
    } else if ((rc = crdt_record_merge(r, in))) {
        rc = dsd_fail(h, DSD_EPROTO, "cannot merge %s/%s: %s", r->kind, r->id, crdt_strerror(rc));
        goto out;
    }
    if (rec_in_scope(h, t, r)) rc = rec_store(h, t, r);
out:
    crdt_record_free(in);
    crdt_record_free(r);
    return rc;
}

int dsd_purge_out_of_scope(dsd *h, MDB_txn *t, uint64_t *purged)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(t, h->db_rec, &c);
    if (rc) return dsd_lmdb(h, rc, "records");
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        crdt_record *r = NULL;
        if (crdt_record_decode(v.mv_data, v.mv_size, &r)) continue;
        bool keep = rec_in_scope(h, t, r);
        crdt_record_free(r);
        if (!keep) {
            if ((rc = mdb_cursor_del(c, 0))) break;
            if (purged) (*purged)++;
        }
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : dsd_lmdb(h, rc, "purge");
}

/* ---- edits ------------------------------------------------------------------------- */

#define EDIT_MAX_OPS 64

typedef struct intent {
    uint8_t code;
    char field[CRDT_NAME_MAX];
    crdt_buf key, val;
} intent;

struct dsd_edit {
    dsd *h;
    char kind[CRDT_NAME_MAX];
    char id[CRDT_RECID_MAX + 1];
    const crdt_kspec *ks;
    uint32_t n;
    intent op[EDIT_MAX_OPS];
};

int dsd_edit_begin(dsd *h, const char *kind, const char *id, dsd_edit **out)
{
    *out = NULL;
    if (!h || !kind || !id) return DSD_EINVAL;
    const crdt_kspec *ks = crdt_schema_kind(h->schema, kind, strlen(kind));
    if (!ks) return dsd_fail(h, DSD_EINVAL, "unknown record kind '%s'", kind);
    crdt_record *probe = crdt_record_new(kind, strlen(kind), id, strlen(id));
    if (!probe) return dsd_fail(h, DSD_EINVAL, "bad record id '%s' (1-64 of A-Za-z0-9_.-)", id);
    crdt_record_free(probe);
    dsd_edit *e = calloc(1, sizeof *e);
    if (!e) return dsd_fail(h, DSD_ENOMEM, "out of memory");
    e->h = h;
    e->ks = ks;
    snprintf(e->kind, sizeof e->kind, "%s", kind);
    snprintf(e->id, sizeof e->id, "%s", id);
    *out = e;
    return 0;
}

void dsd_edit_abort(dsd_edit *e)
{
    if (!e) return;
    for (uint32_t i = 0; i < e->n; i++) {
        crdt_buf_free(&e->op[i].key);
        crdt_buf_free(&e->op[i].val);
    }
    free(e);
}

/* Text -> canonical value bytes by value spec. */
static int put_typed(dsd *h, const crdt_vspec *vs, const char *text, crdt_buf *out)
{
    if (!text) return dsd_fail(h, DSD_EINVAL, "missing value");
    if (vs->vtype == CRDT_VT_INT) {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno || !*text || *end) return dsd_fail(h, DSD_EINVAL, "'%s' is not an integer", text);
        return crdt_val_put_int(out, v) ? DSD_ENOMEM : 0;
    }
    if (vs->vtype == CRDT_VT_BOOL) {
        if (strcmp(text, "true") && strcmp(text, "false"))
            return dsd_fail(h, DSD_EINVAL, "'%s' is not true/false", text);
        return crdt_val_put_bool(out, !strcmp(text, "true")) ? DSD_ENOMEM : 0;
    }
    return crdt_val_put_str(out, text, strlen(text)) ? DSD_ENOMEM : 0;
}

static int add_op(dsd_edit *e, uint8_t code, const char *field, const crdt_fspec **fs,
                  intent **out)
{
    dsd *h = e->h;
    *out = NULL;
    if (e->n >= EDIT_MAX_OPS) return dsd_fail(h, DSD_EINVAL, "too many ops in one edit");
    if (field) {
        *fs = crdt_schema_field(e->ks, field, strlen(field));
        if (!*fs) return dsd_fail(h, DSD_EINVAL, "%s has no field '%s'", e->kind, field);
    }
    intent *it = &e->op[e->n];
    memset(it, 0, sizeof *it);
    it->code = code;
    if (field) snprintf(it->field, sizeof it->field, "%s", field);
    *out = it;
    return 0;
}

static int op_done(dsd_edit *e, intent *it, int rc)
{
    if (rc) {
        crdt_buf_free(&it->key);
        crdt_buf_free(&it->val);
        return rc == DSD_ENOMEM ? dsd_fail(e->h, rc, "out of memory") : rc;
    }
    e->n++;
    return 0;
}

static int put_key(dsd_edit *e, const crdt_fspec *fs, const char *key, intent *it)
{
    if (fs->keyed != (key != NULL))
        return dsd_fail(e->h, DSD_EINVAL, "field '%s' %s a key", fs->name,
                        fs->keyed ? "needs" : "takes no");
    return key ? put_typed(e->h, &fs->key, key, &it->key) : 0;
}

int dsd_edit_set(dsd_edit *e, const char *field, const char *key, const char *value)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    if (!e || !field) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_SET, field, &fs, &it);
    if (rc) return rc;
    rc = put_key(e, fs, key, it);
    if (!rc) rc = put_typed(e->h, &fs->v, value, &it->val);
    return op_done(e, it, rc);
}

int dsd_edit_add(dsd_edit *e, const char *field, const char *elem)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    if (!e || !field) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_ADD, field, &fs, &it);
    if (rc) return rc;
    return op_done(e, it, put_typed(e->h, &fs->v, elem, &it->val));
}

int dsd_edit_remove(dsd_edit *e, const char *field, const char *elem)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    if (!e || !field) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_REM, field, &fs, &it);
    if (rc) return rc;
    return op_done(e, it, put_typed(e->h, &fs->v, elem, &it->val));
}

int dsd_edit_append(dsd_edit *e, const char *field, const char *const *names,
                    const char *const *values, size_t n)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    crdt_scalar sv[CRDT_VAL_MAP_MAX];
    crdt_buf tmp[CRDT_VAL_MAP_MAX];
    if (!e || !field || !names || !values || n == 0 || n > CRDT_VAL_MAP_MAX) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_APP, field, &fs, &it);
    if (rc) return rc;
    memset(tmp, 0, sizeof tmp);
    for (size_t i = 0; i < n && !rc; i++) {
        const crdt_member *m = NULL;
        for (uint32_t j = 0; j < fs->n_members; j++)
            if (!strcmp(fs->members[j].name, names[i])) m = &fs->members[j];
        if (!m) {
            rc = dsd_fail(e->h, DSD_EINVAL, "log '%s' has no member '%s'", field, names[i]);
            break;
        }
        memset(&sv[i], 0, sizeof sv[i]);
        if (m->v.vtype == CRDT_VT_INT) {
            char *end;
            sv[i].t = CRDT_V_INT;
            sv[i].i = strtoll(values[i], &end, 10);
            if (!*values[i] || *end) rc = dsd_fail(e->h, DSD_EINVAL, "'%s' is not an integer",
                                                  values[i]);
        } else if (m->v.vtype == CRDT_VT_BOOL) {
            sv[i].t = CRDT_V_BOOL;
            sv[i].b = !strcmp(values[i], "true");
        } else {
            sv[i].t = CRDT_V_STR;
            sv[i].s = values[i];
            sv[i].len = (uint32_t)strlen(values[i]);
        }
    }
    if (!rc) {
        rc = crdt_val_put_map(&it->val, names, sv, (uint32_t)n);
        if (rc) rc = dsd_fail(e->h, rc == CRDT_ENOMEM ? DSD_ENOMEM : DSD_EINVAL, "entry: %s",
                              crdt_strerror(rc));
    }
    return op_done(e, it, rc);
}

int dsd_edit_inc(dsd_edit *e, const char *field, int64_t amount)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    if (!e || !field) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_INC, field, &fs, &it);
    if (rc) return rc;
    return op_done(e, it, crdt_val_put_int(&it->val, amount) ? DSD_ENOMEM : 0);
}

int dsd_edit_raise(dsd_edit *e, const char *field, const char *stage)
{
    const crdt_fspec *fs = NULL;
    intent *it;
    if (!e || !field || !stage) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_RAISE, field, &fs, &it);
    if (rc) return rc;
    return op_done(e, it, crdt_val_put_str(&it->val, stage, strlen(stage)) ? DSD_ENOMEM : 0);
}

int dsd_edit_delete(dsd_edit *e)
{
    intent *it;
    if (!e) return DSD_EINVAL;
    int rc = add_op(e, CRDT_OP_DEL, NULL, NULL, &it);
    if (rc) return rc;
    return op_done(e, it, 0);
}

/* The dots an op observes in the current local record. */
static int observe(const crdt_record *r, const crdt_fspec *fs, const intent *it, crdt_dot **obs,
                   uint32_t *n)
{
    *obs = NULL;
    *n = 0;
    if (!r || !fs) return 0;
    bool mvset = it->code == CRDT_OP_SET && fs->type == CRDT_F_MV;
    bool rem = it->code == CRDT_OP_REM;
    if (!mvset && !rem) return 0;
    const crdt_field *f = crdt_record_field(r, it->field, (crdt_blob){it->key.p, (uint32_t)it->key.n});
    if (!f || !f->n) return 0;
    *obs = calloc(f->n, sizeof **obs);
    if (!*obs) return DSD_ENOMEM;
    for (uint32_t i = 0; i < f->n; i++) {
        if (rem && crdt_blob_cmp(f->e[i].v, (crdt_blob){it->val.p, (uint32_t)it->val.n})) continue;
        (*obs)[(*n)++] = f->e[i].st.dot;
    }
    /* mv entries are sorted by dot; set entries of one element too. */
    return 0;
}

static bool delta_in_scope(dsd *h, MDB_txn *t, const crdt_record *r, const crdt_delta *d,
                           const char *kind, const char *id)
{
    if (!strcmp(kind, "household")) return dsd_in_scope(h, t, id, strlen(id));
    if (r) {
        char hh[CRDT_RECID_MAX + 1];
        person_household(r, hh);
        if (hh[0] && dsd_in_scope(h, t, hh, strlen(hh))) return true;
    }
    for (uint32_t i = 0; i < d->n_ops; i++) {
        const crdt_op *o = &d->ops[i];
        crdt_val v;
        if (o->field && o->field_len == 9 && !memcmp(o->field, "household", 9) &&
            !crdt_val_parse(o->val, &v) && v.t == CRDT_V_STR && dsd_in_scope(h, t, v.s, v.len))
            return true;
    }
    return false;
}

int dsd_edit_commit(dsd_edit *e, uint64_t *seq_out)
{
    dsd *h = e ? e->h : NULL;
    MDB_txn *t = NULL;
    crdt_record *r = NULL;
    crdt_op ops[EDIT_MAX_OPS];
    crdt_dot *obs[EDIT_MAX_OPS];
    crdt_buf bytes = {0}, env = {0};
    uint8_t sk[64], sig[64], prev[32], hash[32];
    uint64_t dev, epoch, seq, hlc, off;
    int rc;
    if (seq_out) *seq_out = 0;
    if (!e) return DSD_EINVAL;
    memset(obs, 0, sizeof obs);
    memset(ops, 0, sizeof ops);
    if (e->n == 0) {
        rc = dsd_fail(h, DSD_EINVAL, "edit without ops");
        goto out;
    }
    if ((rc = dsd_txn_begin(h, true, &t))) goto out;
    if ((rc = dsd_meta_u64(h, t, "dev", &dev)) || (rc = dsd_meta_u64(h, t, "epoch", &epoch)) ||
        (rc = dsd_meta_u64(h, t, "seq", &seq)) || (rc = dsd_meta_bin(h, t, "prev", prev, 32, NULL)) ||
        (rc = dsd_meta_u64(h, t, "hlc", &hlc)) || (rc = dsd_meta_u64(h, t, "off", &off)))
        goto out;
    if (!dev) {
        rc = dsd_fail(h, DSD_ENOTENROLLED, "enroll the device before editing");
        goto out;
    }
    uint64_t revoked;
    if ((rc = dsd_meta_u64(h, t, "revoked", &revoked))) goto out;
    if (revoked) {
        rc = dsd_fail(h, DSD_EREVOKED, "the station revoked this device: it takes no more edits");
        goto out;
    }
    if ((rc = rec_load(h, t, e->kind, e->id, &r))) goto out;
    for (uint32_t i = 0; i < e->n; i++) {
        const intent *it = &e->op[i];
        const crdt_fspec *fs = it->field[0] ? crdt_schema_field(e->ks, it->field, strlen(it->field))
                                            : NULL;
        ops[i].code = it->code;
        ops[i].field = it->field[0] ? it->field : NULL;
        ops[i].field_len = (uint32_t)strlen(it->field);
        ops[i].key = (crdt_blob){it->key.p, (uint32_t)it->key.n};
        ops[i].val = (crdt_blob){it->val.p, (uint32_t)it->val.n};
        if (observe(r, fs, it, &obs[i], &ops[i].n_obs)) {
            rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
            goto out;
        }
        ops[i].obs = obs[i];
    }
    crdt_delta d;
    memset(&d, 0, sizeof d);
    d.dev = (uint32_t)dev;
    d.epoch = (uint32_t)epoch;
    d.seq = seq + 1;
    memcpy(d.prev, prev, 32);
    if (crdt_hlc_now(&hlc, dsd_wall_ms() + off, &d.hlc)) {
        rc = dsd_fail(h, DSD_EINVAL, "device clock out of range");
        goto out;
    }
    d.kind = e->kind;
    d.kind_len = (uint32_t)strlen(e->kind);
    d.id = e->id;
    d.id_len = (uint32_t)strlen(e->id);
    d.ops = ops;
    d.n_ops = e->n;
    int err_op = -1;
    if ((rc = crdt_schema_check_delta(h->schema, &d, &err_op)) || (rc = crdt_delta_encode(&d, &bytes))) {
        rc = dsd_fail(h, rc, "%s/%s%s%s: %s", e->kind, e->id, err_op >= 0 ? " field " : "",
                      err_op >= 0 && ops[err_op].field ? ops[err_op].field : "",
                      crdt_strerror(rc));
        goto out;
    }
    if (!delta_in_scope(h, t, r, &d, e->kind, e->id)) {
        rc = dsd_fail(h, DSD_ESCOPE, "%s/%s is outside this device's households", e->kind, e->id);
        goto out;
    }
    if ((rc = load_sk(h, t, sk))) goto out;
    rc = wire_delta_sign(bytes.p, bytes.n, sk, sig);
    sodium_memzero(sk, sizeof sk);
    if (rc || wire_envelope_encode(bytes.p, bytes.n, sig, &env) ||
        wire_delta_hash(bytes.p, bytes.n, hash)) {
        rc = dsd_fail(h, DSD_ENOMEM, "signing failed");
        goto out;
    }
    uint8_t kb[8];
    dsd_be64(kb, d.seq);
    MDB_val k = {8, kb}, v = {env.n, env.p};
    if ((rc = dsd_lmdb(h, mdb_put(t, h->db_out, &k, &v, MDB_NOOVERWRITE), "outbox")) ||
        (rc = dsd_meta_put_u64(h, t, "seq", d.seq)) || (rc = dsd_meta_put_bin(h, t, "prev", hash, 32)) ||
        (rc = dsd_meta_put_u64(h, t, "hlc", hlc)))
        goto out;
    if (!r && !(r = crdt_record_new(d.kind, d.kind_len, d.id, d.id_len))) {
        rc = dsd_fail(h, DSD_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = crdt_record_apply(r, h->schema, &d))) {
        rc = dsd_fail(h, rc, "apply: %s", crdt_strerror(rc));
        goto out;
    }
    if ((rc = rec_store(h, t, r))) goto out;
    rc = dsd_lmdb(h, mdb_txn_commit(t), "commit");
    t = NULL;
    if (!rc && seq_out) *seq_out = d.seq;
out:
    if (t) mdb_txn_abort(t);
    crdt_record_free(r);
    for (uint32_t i = 0; i < EDIT_MAX_OPS; i++) free(obs[i]);
    crdt_buf_free(&bytes);
    crdt_buf_free(&env);
    dsd_edit_abort(e);
    return rc;
}

/* ---- convenience edits -------------------------------------------------------------- */

int dsd_household_create(dsd *h, const char *id, const char *community, const char *grid,
                         const char *address)
{
    dsd_edit *e;
    int rc = dsd_edit_begin(h, "household", id, &e);
    if (rc) return rc;
    if ((rc = dsd_edit_set(e, "community", NULL, community)) ||
        (rc = dsd_edit_set(e, "grid", NULL, grid)) ||
        (address && (rc = dsd_edit_set(e, "address", NULL, address)))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

int dsd_person_create(dsd *h, const char *id, const char *household, const char *name,
                      const char *id_number, const char *gender, const char *birth_date,
                      const char *relation)
{
    dsd_edit *e;
    int rc = dsd_edit_begin(h, "person", id, &e);
    if (rc) return rc;
    if ((rc = dsd_edit_set(e, "household", NULL, household)) ||
        (name && (rc = dsd_edit_set(e, "name", NULL, name))) ||
        (id_number && (rc = dsd_edit_set(e, "id_number", NULL, id_number))) ||
        (gender && (rc = dsd_edit_set(e, "gender", NULL, gender))) ||
        (birth_date && (rc = dsd_edit_set(e, "birth_date", NULL, birth_date))) ||
        (relation && (rc = dsd_edit_set(e, "relation", NULL, relation)))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

int dsd_set(dsd *h, const char *kind, const char *id, const char *field, const char *key,
            const char *value)
{
    dsd_edit *e;
    int rc = dsd_edit_begin(h, kind, id, &e);
    if (rc) return rc;
    if ((rc = dsd_edit_set(e, field, key, value))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

static int one_set_op(dsd *h, const char *person, const char *tag, bool add)
{
    dsd_edit *e;
    int rc = dsd_edit_begin(h, "person", person, &e);
    if (rc) return rc;
    if ((rc = add ? dsd_edit_add(e, "tags", tag) : dsd_edit_remove(e, "tags", tag))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

int dsd_tag_add(dsd *h, const char *person, const char *tag) { return one_set_op(h, person, tag, true); }
int dsd_tag_remove(dsd *h, const char *person, const char *tag)
{
    return one_set_op(h, person, tag, false);
}

int dsd_visit_append(dsd *h, const char *kind, const char *id, const char *date,
                     const char *method, const char *result, const char *service,
                     const char *note)
{
    const char *names[5], *vals[5];
    size_t n = 0;
    names[n] = "date", vals[n++] = date;
    names[n] = "method", vals[n++] = method;
    if (result) names[n] = "result", vals[n++] = result;
    if (service) names[n] = "service", vals[n++] = service;
    if (note) names[n] = "note", vals[n++] = note;
    dsd_edit *e;
    int rc = dsd_edit_begin(h, kind, id, &e);
    if (rc) return rc;
    if ((rc = dsd_edit_append(e, "visits", names, vals, n))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

int dsd_stage_raise(dsd *h, const char *person, const char *field, const char *stage)
{
    dsd_edit *e;
    int rc = dsd_edit_begin(h, "person", person, &e);
    if (rc) return rc;
    if ((rc = dsd_edit_raise(e, field, stage))) {
        dsd_edit_abort(e);
        return rc;
    }
    return dsd_edit_commit(e, NULL);
}

int dsd_resolve(dsd *h, const char *kind, const char *id, const char *field, const char *key,
                const char *value)
{
    uint32_t n = 0;
    int rc = dsd_field_count(h, kind, id, field, key, &n);
    if (rc) return rc;
    if (n < 2) return dsd_fail(h, DSD_ENOCONFLICT, "%s/%s %s has %u value(s): nothing to resolve",
                               kind, id, field, n);
    return dsd_set(h, kind, id, field, key, value);
}

/* ---- reads -------------------------------------------------------------------------- */

int dsd_record_get(dsd *h, const char *kind, const char *id, uint8_t **p, size_t *n)
{
    uint8_t kb[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    MDB_txn *t;
    MDB_val k, v;
    *p = NULL;
    *n = 0;
    if (!kind || !id || rec_key(kind, id, kb, sizeof kb, &k)) return DSD_EINVAL;
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    rc = mdb_get(t, h->db_rec, &k, &v);
    if (rc == MDB_NOTFOUND) rc = dsd_fail(h, DSD_ENOTFOUND, "no record %s/%s", kind, id);
    else if (rc) rc = dsd_lmdb(h, rc, "records");
    else if (!(*p = malloc(v.mv_size ? v.mv_size : 1))) rc = DSD_ENOMEM;
    else {
        memcpy(*p, v.mv_data, v.mv_size);
        *n = v.mv_size;
    }
    mdb_txn_abort(t);
    return rc;
}

/* The field instance of a loaded record (owned record in *rp). */
static int field_of(dsd *h, const char *kind, const char *id, const char *field, const char *key,
                    crdt_record **rp, const crdt_field **fp)
{
    MDB_txn *t;
    crdt_buf kb = {0};
    *rp = NULL;
    *fp = NULL;
    const crdt_kspec *ks = kind ? crdt_schema_kind(h->schema, kind, strlen(kind)) : NULL;
    const crdt_fspec *fs = ks && field ? crdt_schema_field(ks, field, strlen(field)) : NULL;
    if (!fs) return dsd_fail(h, DSD_EINVAL, "unknown field %s.%s", kind ? kind : "?",
                             field ? field : "?");
    if (key && put_typed(h, &fs->key, key, &kb)) return DSD_EINVAL;
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) {
        crdt_buf_free(&kb);
        return rc;
    }
    rc = rec_load(h, t, kind, id, rp);
    mdb_txn_abort(t);
    if (!rc && *rp) *fp = crdt_record_field(*rp, field, (crdt_blob){kb.p, (uint32_t)kb.n});
    crdt_buf_free(&kb);
    return rc;
}

int dsd_field_count(dsd *h, const char *kind, const char *id, const char *field,
                    const char *key, uint32_t *count)
{
    crdt_record *r;
    const crdt_field *f;
    *count = 0;
    int rc = field_of(h, kind, id, field, key, &r, &f);
    if (!rc && f) *count = f->n;
    crdt_record_free(r);
    return rc;
}

int dsd_field_text(dsd *h, const char *kind, const char *id, const char *field,
                   const char *key, char *out, size_t cap)
{
    crdt_record *r;
    const crdt_field *f;
    if (!out || !cap) return DSD_EINVAL;
    out[0] = 0;
    int rc = field_of(h, kind, id, field, key, &r, &f);
    if (!rc && !r) rc = dsd_fail(h, DSD_ENOTFOUND, "no record %s/%s", kind, id);
    if (!rc && f && f->n) {
        crdt_val v;
        if (!crdt_val_parse(f->e[f->n - 1].v, &v)) {
            if (v.t == CRDT_V_STR) {
                if (v.len >= cap) rc = DSD_EINVAL;
                else {
                    memcpy(out, v.s, v.len);
                    out[v.len] = 0;
                }
            } else if (v.t == CRDT_V_INT) {
                snprintf(out, cap, "%lld", (long long)v.i);
            } else if (v.t == CRDT_V_BOOL) {
                snprintf(out, cap, "%s", v.b ? "true" : "false");
            }
        }
    }
    crdt_record_free(r);
    return rc;
}

int dsd_record_foreach(dsd *h, const char *kind, dsd_record_cb cb, void *arg)
{
    MDB_txn *t;
    MDB_cursor *c;
    MDB_val k, v;
    char kbuf[CRDT_NAME_MAX + 1], ibuf[CRDT_RECID_MAX + 1];
    int rc = dsd_txn_begin(h, false, &t);
    if (rc) return rc;
    if ((rc = mdb_cursor_open(t, h->db_rec, &c))) {
        mdb_txn_abort(t);
        return dsd_lmdb(h, rc, "records");
    }
    size_t kl = kind ? strlen(kind) + 1 : 0;
    if (kind) {
        k.mv_data = (void *)kind;
        k.mv_size = kl; /* includes the NUL: "kind\0" prefix */
        rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    } else {
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    }
    int ret = 0;
    for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (kind && (k.mv_size < kl || memcmp(k.mv_data, kind, kl))) break;
        const uint8_t *kp = k.mv_data;
        const uint8_t *nul = memchr(kp, 0, k.mv_size);
        if (!nul) continue;
        size_t a = (size_t)(nul - kp), b = k.mv_size - a - 1;
        if (a > CRDT_NAME_MAX || b > CRDT_RECID_MAX) continue;
        memcpy(kbuf, kp, a);
        kbuf[a] = 0;
        memcpy(ibuf, nul + 1, b);
        ibuf[b] = 0;
        if ((ret = cb(kbuf, ibuf, v.mv_data, v.mv_size, arg))) break;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(t);
    if (ret) return ret;
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : dsd_lmdb(h, rc, "records");
}

int dsd_scope_foreach(dsd *h, dsd_record_cb cb, void *arg)
{
    MDB_txn *t;
    MDB_cursor *c;
    MDB_val k, v;
    char ibuf[CRDT_RECID_MAX + 1];
    int rc = dsd_txn_begin(h, false, &t), ret = 0;
    if (rc) return rc;
    if ((rc = mdb_cursor_open(t, h->db_scope, &c))) {
        mdb_txn_abort(t);
        return dsd_lmdb(h, rc, "scope");
    }
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size > CRDT_RECID_MAX) continue;
        memcpy(ibuf, k.mv_data, k.mv_size);
        ibuf[k.mv_size] = 0;
        if ((ret = cb("household", ibuf, NULL, 0, arg))) break;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(t);
    if (ret) return ret;
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : dsd_lmdb(h, rc, "scope");
}

int dsd_rejected_foreach(dsd *h, dsd_rejected_cb cb, void *arg)
{
    MDB_txn *t;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = dsd_txn_begin(h, false, &t), ret = 0;
    if (rc) return rc;
    if ((rc = mdb_cursor_open(t, h->db_rej, &c))) {
        mdb_txn_abort(t);
        return dsd_lmdb(h, rc, "rejected");
    }
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const uint8_t *p = v.mv_data;
        if (k.mv_size != 8 || v.mv_size < 5) continue;
        int32_t code = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                 (uint32_t)p[2] << 8 | p[3]);
        const uint8_t *nul = memchr(p + 4, 0, v.mv_size - 4);
        char msg[256] = "";
        if (nul) snprintf(msg, sizeof msg, "%s", (const char *)p + 4);
        if ((ret = cb(dsd_rd64(k.mv_data), code, msg, arg))) break;
    }
    mdb_cursor_close(c);
    mdb_txn_abort(t);
    if (ret) return ret;
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : dsd_lmdb(h, rc, "rejected");
}
