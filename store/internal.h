/*
 * internal.h — what the store/ files share and nobody else sees.
 *
 * Key layouts (big-endian integers, so LMDB's byte order is numeric order;
 * ids never contain 0x00, so 0x00 separates parts):
 *   meta      "format" "schema" "server_pk" "server_sk"(sealed) "canary"(sealed)
 *             "campaign_year" "hlc_hwm" "zdict1"(sealed: the compression dictionary)
 *             "lookup_hlen" (1 byte, 8; absent: 16)
 *   deltas    last sseq(8)                 -> sealed packed envelope, or a sealed
 *                                             block of consecutive ones (log.c)
 *   dots      dev(4) base(8) 'C'           -> 64 x sseq(6)     applied dots of seqs
 *                                                               base .. base + 63 (base a
 *                                                               multiple of 64; 0 = none);
 *                                                               the hash is that of
 *                                                               deltas[sseq]
 *             dev(4) seq(8)                -> sseq(8)=0 hash(32)  held back (quarantined
 *                                                               clock_ahead/out_of_scope)
 *             (stores written before format 3 also hold dev(4) seq(8) -> sseq(8), or
 *              sseq(8) hash(32), for applied dots: every form is read, store_dot_get;
 *              a chunk sorts just after dev(4) base(8), before dev(4) base+1(8))
 *   heads     dev(4)                       -> seq(8) hash(32)
 *   records   kind 0 id                    -> sealed packed canonical record, since
 *                                             format 3 after the record's history;
 *                                             or (format 4, a record one delta made)
 *                                             0x00 history, not sealed: a reference
 *   rdeltas   kind 0 id 0 sseq(8)          -> ""      (a record's deltas, written
 *                                             before format 3; since, its history is in
 *                                             the record's value: append.c)
 *   feed      household 0 first(8)         -> LEB128 differences of the household's
 *                                             next sseqs (a chunk of at most 64; ""
 *                                             in stores before format 3: one sseq)
 *   members   household 0 person           -> ""
 *   grid      community 0 grid 0 household -> ""
 *   lookup    what(1) hash(8) person       -> ""      (keyed BLAKE2b-128, cut to 8 B;
 *                                                      hash(16) in stores made before:
 *                                                      meta "lookup_hlen" says which)
 *   agg       community 0 grid             -> store_agg counters (fixed layout)
 *   aggw      community 0 grid 0 week(4)   -> int64 visits that ISO week
 *   devices   dev(4)                       -> device state (fixed layout)
 *   quar      qid(8)                       -> sealed quarantine entry
 *   audit     aseq(8)                      -> sealed audit entry      (admin.c)
 *   keys      dev(4) epoch(4)              -> key state (fixed layout)
 *   tokens    hash(32)                     -> sealed token (keyed BLAKE2b of the secret)
 *   staff     username                     -> sealed account
 *   meta      "qreview" qid(8)             -> sealed quarantine review (review.c)
 *   place     household                    -> community 0 grid  (where it is, for agg)
 *   agghist   day(4) community             -> int64 persons, enrolled, paid (agg.c)
 *
 * Packed values (format 2, pack.c).  The plaintext sealed under deltas and
 * records is either the msgpack value itself (first byte >= 0x80: every
 * envelope and record is a map; values of format 1 stores, and values that
 * would not shrink) or 0x01 followed by a zstd frame without its magic
 * number, compressed with the dictionary in meta "zdict1" (built from the
 * schema when the store was made or upgraded; stored, never rebuilt).
 * Compressed, then sealed; unsealed, then decompressed.  A deltas value
 * may also be a block of consecutive envelopes (format 3, log.c: tag 0x03,
 * one zstd frame, or 0x04, as it is), keyed by the last seq it holds.
 *
 * Page fill.  deltas, quar and audit are append-only logs whose next key is
 * the last one + 1, read in the same write transaction: they are written
 * with MDB_APPEND (store_put_append), so LMDB fills each leaf page before it
 * starts the next instead of splitting full pages in half.  Every other
 * database is written with ordinary puts.
 */
#ifndef DOORSTEP_STORE_INTERNAL_H
#define DOORSTEP_STORE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <sodium.h>

#include "store.h"

enum {
    DB_META, DB_DELTAS, DB_DOTS, DB_HEADS, DB_RECORDS, DB_RDELTAS, DB_FEED,
    DB_MEMBERS, DB_GRID, DB_LOOKUP, DB_AGG, DB_AGGW, DB_DEVICES, DB_QUAR,
    DB_AUDIT, DB_KEYS, DB_TOKENS, DB_STAFF, DB_PLACE, DB_AGGHIST, DB_COUNT
};

extern const char *const store_db_names[DB_COUNT];

/* Format 2: packed (compressed) deltas and records, short dots, the
 * dictionary in meta.  store_open upgrades a format 1 store (pack.c), so
 * that older binaries refuse it cleanly.  Format 3: the delta log holds
 * blocks (log.c); the first block written makes a format 2 store format 3.
 * Format 4: a record made by one delta is kept as a reference to it
 * (append.c); the first one written makes the store format 4. */
#define STORE_FORMAT 4
#define STORE_FORMAT_MIN 1
#define STORE_LOOKUP_HASH_MAX 16
#define SEAL_OVERHEAD (crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + \
                       crypto_aead_xchacha20poly1305_ietf_ABYTES)

/* Field names the store's indexes and aggregates read (the model). */
typedef struct store_model {
    const crdt_fspec *hh_community, *hh_grid;           /* household */
    const crdt_fspec *p_household, *p_name, *p_idnum, *p_phone, *p_tags,
                     *p_payment, *p_life, *p_visits;     /* person */
    const crdt_fspec *hh_visits;
    const crdt_fspec *p_insurance;                      /* optional */
} store_model;

struct store {
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    char *dir;
    crdt_schema *schema;
    uint8_t *schema_json;        /* the stored schema's JSON text, as in meta "schema" */
    size_t schema_json_len;
    store_model model;
    uint8_t seal_key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
    uint8_t lookup_key[crypto_generichash_KEYBYTES];
    uint8_t lookup_hlen;        /* bytes of the keyed hash in lookup keys: 8 or 16 */
    uint8_t server_pk[32];
    uint32_t campaign_year;
    size_t map_size, map_max;
    /* Held shared by every open transaction of this process and exclusively
     * while the map is resized: LMDB requires that no transaction is active
     * in the process during mdb_env_set_mapsize (the map is remapped). */
    pthread_rwlock_t resize_lock;
    store_opts opts;            /* as opened (for store_reopen) */
    /* Compression (pack.c): the dictionary (meta "zdict1", loaded at open
     * and read-only after), zstd's objects for it, and a pool of
     * decompression contexts under zlock.  zcc is used only inside a write
     * txn (one at a time per process). */
    pthread_mutex_t zlock;
    uint8_t *zdict;
    size_t zdict_n;
    struct ZSTD_CDict_s *zcd;
    struct ZSTD_DDict_s *zdd;
    struct ZSTD_CCtx_s *zcc;
    struct ZSTD_DCtx_s *zdctx[8];
    int n_zdctx;
    /* The log (log.c), used inside write txns only: the compressed/raw
     * ratio of the last block made (to size the next), and the biggest
     * sealed value LMDB keeps on a leaf page with an 8-byte key. */
    double log_ratio;
    size_t log_vmax;
    uint32_t format;            /* meta "format" as this process last saw it */
};

#define LOG_BLOCK_MAX 64        /* envelopes per block of the log, at most */
#define STORE_DOT_CHUNK 64      /* applied dots per entry of dots */
#define STORE_DOT_CHUNK_KEY 13
#define STORE_DOT_CHUNK_VAL (6 * STORE_DOT_CHUNK)
/* Slot i of a dots chunk value: the sseq, 0 if none (append.c). */
uint64_t store_dot_slot(const uint8_t *chunk, unsigned i);

struct store_txn {
    store *s;
    MDB_txn *txn;
    bool rw;
    uint64_t last_sseq;         /* cached: valid when have_last_sseq */
    bool have_last_sseq;
    crdt_hlc hwm;               /* pending HLC high-water mark, written at commit */
    crdt_buf scratch;   /* sealing/unsealing */
    crdt_buf scratch2;
    crdt_buf zbuf;      /* compressing/decompressing (pack.c) */
    /* Write txns only: the record last read or written by this txn
     * (store_get_record, put_record in append.c), decoded, owned; NULL if
     * none.  It always equals records[kind, id] as this txn sees it:
     * put_record is the only writer of DB_RECORDS and replaces it.  Saves
     * decoding a record again when the writer's scope check, the merge and
     * the next delta of the batch read the same one. */
    crdt_record *rcache;
    /* The log (log.c).  Write txns: envelopes appended and not yet written
     * as a block, seqs pend_first .. pend_first + pend_n - 1, the i-th at
     * pend.p + pend_off[i] (pend_off[pend_n]: their bytes); blkw, where a
     * block is built.  Every txn: the log entry last read, decoded: seqs
     * blk_first .. blk_last, the i-th envelope at blk.p + blk_off[i]
     * (blk_n == 0: none). */
    crdt_buf pend, blkw, blk;
    uint32_t pend_off[LOG_BLOCK_MAX + 1], pend_n;
    uint64_t pend_first;
    uint32_t blk_off[LOG_BLOCK_MAX + 1], blk_n;
    uint64_t blk_first, blk_last;
    uint32_t made_format;       /* this txn wrote meta "format" (3 or 4), or 0 */
    /* Write txns: the history (append.c) of records[hist_key] as stored
     * or last written by this txn, valid when hist_ok; hist_last, its last
     * sseq (0: none). */
    crdt_buf hist;
    uint8_t hist_key[CRDT_NAME_MAX + CRDT_RECID_MAX + 2];
    size_t hist_kn;
    bool hist_ok;
    bool hist_stored;           /* records[hist_key] exists (else: a new record) */
    uint64_t hist_last;
    /* Rebuilding a record kept as a reference (store_record_build): the
     * envelope being applied and its decoded delta's arena (NULL until
     * first used). */
    crdt_buf menv;
    crdt_arena *marena;
    /* The device state, chain head and dots chunk last read or written
     * (store_device_get, store_chain_head, dot_put_chunk and the append
     * path's head_put), so that a push's deltas, one device's in a row,
     * read each of them once; any other write to devices, heads or dots
     * drops the one it may change (store_put, store_del: txn_cache_drop). */
    bool cdev_ok, chead_ok, cchunk_ok;
    store_device cdev_v;
    uint32_t chead_dev;
    uint64_t chead_seq;
    uint8_t chead_hash[CRDT_HASH_BYTES];
    uint8_t cchunk_key[STORE_DOT_CHUNK_KEY], cchunk_v[STORE_DOT_CHUNK_VAL];
    /* Write txns: lookup-index changes not yet applied (append.c,
     * lookup_queue): each is op (1 put, 0 delete), key length, key, in
     * lk; lk_n of them.  store_lookup_apply applies them in key order. */
    crdt_buf lk;
    uint32_t lk_n;
};

/* LMDB code -> STORE_E*. */
int store_lmdb_err(int rc);

/* Seal plain into out (replacing its contents) with AD = db name || key. */
int store_seal(const store *s, int db, const MDB_val *key, const uint8_t *plain,
               size_t n, crdt_buf *out);
/* Unseal; out replaced.  STORE_ECORRUPT if authentication fails. */
int store_unseal(const store *s, int db, const MDB_val *key, const uint8_t *sealed,
                 size_t n, crdt_buf *out);

/* Put/get helpers; get returns STORE_ENOTFOUND if absent. */
int store_put(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn);
int store_get(store_txn *t, int db, const void *k, size_t kn, MDB_val *v);
int store_put_sealed(store_txn *t, int db, const void *k, size_t kn, const void *v,
                     size_t vn);
/* As store_put and store_put_sealed, for a key greater than every key in db
 * (LMDB's MDB_APPEND: full pages instead of half-full ones).  Only for
 * databases whose new keys are last + 1 read in the same write transaction
 * (deltas, quar, audit); STORE_ECORRUPT if the key is not the greatest. */
int store_put_append(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn);
int store_put_sealed_append(store_txn *t, int db, const void *k, size_t kn, const void *v,
                            size_t vn);
/* Packed values (pack.c): deltas and records are compressed with the
 * schema dictionary, then sealed.  store_put_packed compresses v (unless it
 * is small or would not shrink), seals and puts it (with MDB_APPEND if
 * append); v must be msgpack whose first byte is >= 0x80 (a map: envelopes
 * and records are), else STORE_EINVAL; store_get_packed gets, unseals and
 * decompresses (*out replaced);
 * store_unpack decompresses an unsealed value in place.  Decompression
 * failures are STORE_ECORRUPT. */
int store_put_packed(store_txn *t, int db, const void *k, size_t kn, const void *v, size_t vn,
                     bool append);
int store_get_packed(store_txn *t, int db, const void *k, size_t kn, crdt_buf *out);
int store_unpack(store_txn *t, crdt_buf *plain);
/* A zstd frame of v with the store's dictionary, its magic number replaced
 * by tag: *out (in t->zbuf, valid until the txn packs again); write txns of
 * a store with a dictionary only (STORE_EINVAL).  store_unzframe replaces
 * *plain (tag, frame) with what the frame holds (STORE_ECORRUPT if it does
 * not decompress with the dictionary). */
int store_zframe(store_txn *t, const uint8_t *v, size_t n, uint8_t tag, const uint8_t **out,
                 size_t *on);
int store_unzframe(store_txn *t, crdt_buf *plain);
/* The log (log.c).  store_log_append queues the envelope for server seq
 * sseq in the write txn (STORE_EINVAL unless it is the one after the last,
 * store_last_sseq, which then returns it);
 * store_log_flush writes what is queued as blocks (store_commit calls it);
 * store_log_has: STORE_OK if the log holds sseq, else STORE_ENOTFOUND;
 * store_log_count counts the envelopes in the log. */
int store_log_append(store_txn *t, uint64_t sseq, const uint8_t *env, size_t n);
int store_log_flush(store_txn *t);
/* Apply the txn's queued lookup-index changes (t->lk) in key order, one
 * key's in the order they were made, and empty the queue (append.c).
 * store_commit calls it; so does any reader of DB_LOOKUP in a write txn. */
int store_lookup_apply(store_txn *t);
int store_log_has(store_txn *t, uint64_t sseq);
int store_log_count(store_txn *t, uint64_t *count);
/* Before the first write of something only format `format` reads (3: a log
 * block, a dots chunk, a history in a record's value, a feed chunk; 4: a
 * record kept as a reference to the log): meta "format" set to it in the
 * same txn, unless the store is there already (older binaries refuse the
 * store rather than misread it; store_commit then notes it in s->format). */
int store_format_raise(store_txn *t, uint32_t format);
/* A records value's plaintext (unpacked): the record's canonical bytes
 * (*rec, *rn) and its history (*hist, *hn: none in values written before
 * format 3); STORE_ECORRUPT if it is neither form (append.c).
 * store_history_next reads the next sseq of a history into *sseq (the
 * previous one, 0 at first): STORE_ECORRUPT if cut short or not ascending. */
int store_record_split(const uint8_t *p, size_t n, const uint8_t **rec, size_t *rn,
                       const uint8_t **hist, size_t *hn);
/* A records value as read (append.c): the record's canonical bytes (rec,
 * rn; NULL, 0 for a reference, format 4: the record is its history's
 * deltas applied to an empty record) and its history (hist, hn), both in
 * the caller's buffer `plain`.  store_record_value reads the value raw (as
 * LMDB holds it under key k); store_get_record_value gets it first
 * (STORE_ENOTFOUND if absent).  store_record_build makes the record from
 * it: decoded, or rebuilt from the log; *out owned by the caller.  Each
 * returns STORE_ECORRUPT for a value that is not what it should be. */
typedef struct store_recval {
    const uint8_t *rec, *hist;
    size_t rn, hn;
} store_recval;
int store_record_value(store_txn *t, const MDB_val *k, const MDB_val *raw, crdt_buf *plain,
                       store_recval *rv);
int store_get_record_value(store_txn *t, const void *k, size_t kn, crdt_buf *plain,
                           store_recval *rv);
int store_record_build(store_txn *t, const char *kind, size_t kl, const char *id, size_t il,
                       const store_recval *rv, crdt_record **out);
int store_history_next(const uint8_t **p, const uint8_t *end, uint64_t *sseq);
/* v as LEB128 into p (at most 10 bytes); its length. */
size_t store_leb128(uint8_t *p, uint64_t v);
/* STORE_OK if household's feed lists sseq, else STORE_ENOTFOUND. */
int store_feed_has(store_txn *t, const char *household, uint64_t sseq);
/* The dictionary built from a schema (deterministic); store_zdict_put puts
 * it in meta "zdict1" (store_init); store_zdict_load loads it from meta into
 * the store (STORE_ENOTFOUND if absent); store_zdict_upgrade makes a format 1
 * store format 2 (dictionary and format in one write transaction, unless
 * another process did) and loads it; store_zdict_free releases it all. */
int store_zdict_build(const crdt_schema *s, crdt_buf *out);
int store_zdict_put(store_txn *t);
int store_zdict_load(store_txn *t);
int store_zdict_upgrade(store *s);
void store_zdict_free(store *s);
/* Unsealed value appended to *out after reset. */
int store_get_sealed(store_txn *t, int db, const void *k, size_t kn, crdt_buf *out);
int store_del(store_txn *t, int db, const void *k, size_t kn);

static inline void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void be64(uint8_t *p, uint64_t v)
{
    be32(p, (uint32_t)(v >> 32));
    be32(p + 4, (uint32_t)v);
}
static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) << 32 | rd32(p + 4);
}

/* Build "a 0 b 0 c" style keys; returns length or 0 if it does not fit. */
size_t store_key_join(uint8_t *out, size_t cap, const char *const *parts, size_t n);

/* The value of an lww/mv field as a string: the entry with the greatest
 * stamp (the display value).  NULL if absent or not a string. */
const char *store_field_str(const crdt_record *r, const crdt_fspec *f,
                            crdt_blob key, uint32_t *len);

/* Aggregates (agg.c), called by the append path after a merge.  `before`
 * is NULL for a new record.  h0/h1: the person's household before/after. */
int store_agg_person(store_txn *t, const crdt_record *before, const crdt_record *after,
                     const char *h0, const char *h1);
/* moved: the household's community or grid changed (members move too). */
int store_agg_household(store_txn *t, const crdt_record *before, const crdt_record *after,
                        bool moved);

/* dots (append.c).  store_dot_get: the server seq of the dot's delta (0 if
 * it was held back) and its chain hash, read from the dot or recomputed
 * from the envelope at sseq; STORE_ENOTFOUND if the dot is absent,
 * STORE_ECORRUPT if it is malformed or its envelope is missing or does not
 * decode.  store_dot_put puts an applied dot (sseq != 0) in its chunk's
 * slot (and deletes any entry of the seq's own: held back before, or the
 * long form), a held-back one (sseq 0) with its hash. */
int store_dot_get(store_txn *t, uint32_t dev, uint64_t seq, uint64_t *sseq,
                  uint8_t hash[CRDT_HASH_BYTES]);
int store_dot_put(store_txn *t, uint32_t dev, uint64_t seq, uint64_t sseq,
                  const uint8_t hash[CRDT_HASH_BYTES]);
/* The delta stored at sseq: its envelope into *env, decoded into *d (a
 * reset first), its chain hash into hash unless NULL.  STORE_ENOTFOUND if
 * the log lacks it; decode errors as they come. */
int store_delta_at(store_txn *t, uint64_t sseq, crdt_buf *env, crdt_arena *a, crdt_delta *d,
                   uint8_t hash[CRDT_HASH_BYTES]);
/* The chain hash of the delta stored at sseq (from its envelope). */
int store_delta_hash_at(store_txn *t, uint64_t sseq, uint8_t hash[CRDT_HASH_BYTES]);

/* The stored-sum entries one record implies (for verify): fn is called with
 * the DB_AGG or DB_AGGW key and the values to add. */
typedef void (*store_contrib_fn)(void *arg, int db, const uint8_t *key, size_t kl,
                                 const int64_t *v, size_t nv);
int store_agg_contrib(store_txn *t, const crdt_record *r, store_contrib_fn fn, void *arg);

/* The merge half of store_append for a delta accepted from quarantine
 * (append.c; used by review.c's store_quarantine_accept). */
int store_merge_reviewed(store_txn *t, const store_item *it, store_outcome *out);

#endif
