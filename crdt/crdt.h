/*
 * crdt.h — Doorstep's CRDT core: clocks, dots, values, deltas, records, schema.
 *
 * This is the one public header of the crdt/ layer.  Everything here is pure:
 * no I/O, no clock reads, no globals, no locks.  The library links only
 * msgpack-c (used to decode already-checked bytes and to pack canonical
 * output).  Crypto lives in wire/, storage in store/, networking in sync/.
 *
 * Conventions (DESIGN.md §10)
 *   - Functions return 0 (CRDT_OK) or a negative CRDT_E* code; crdt_strerror()
 *     gives a static English message for every code.
 *   - Outputs are zeroed on failure.
 *   - "Borrowed" pointers (crdt_blob, const char * with a length) point into
 *     memory owned by someone else — the input bytes or a crdt_arena — and
 *     live exactly as long as that memory.  Copy to keep.
 *   - Structures marked "owned" are freed by the matching *_free().
 *
 * The model (DESIGN.md §3)
 *   A delta is one device's edit of one record: (device, key epoch, seq,
 *   hash of the device's previous delta, HLC, record kind, record id, ops).
 *   Its dot is (device, seq).  A record is a map from field instances to
 *   field states; every field state is a join-semilattice, so merging records
 *   (and applying deltas, which is merging a one-delta record) is
 *   commutative, associative and idempotent, and the canonical encoding of a
 *   record depends only on the set of deltas applied to it.
 *
 * Thread safety: none needed — no shared state.  Distinct objects may be used
 * from distinct threads freely; one object must not be mutated concurrently.
 */
#ifndef DOORSTEP_CRDT_H
#define DOORSTEP_CRDT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Error codes                                                               */
/* ------------------------------------------------------------------------ */

enum {
    CRDT_OK = 0,
    CRDT_ENOMEM = -1,        /* allocation failed (or arena cap reached) */
    CRDT_EINVAL = -2,        /* invalid argument from the caller */
    CRDT_EHLC_DRIFT = -3,    /* remote clock beyond the allowed drift */
    CRDT_EHLC_RANGE = -4,    /* wall clock or HLC outside 48-bit ms range */

    /* Bounded msgpack walk (crdt_mp_check), DESIGN.md §7. */
    CRDT_ETRUNC = -10,       /* input ends inside a value */
    CRDT_ETRAILING = -11,    /* bytes left after the top-level value */
    CRDT_EDEPTH = -12,       /* nesting deeper than the limit */
    CRDT_ECOUNT = -13,       /* array or map with more entries than allowed */
    CRDT_ELENGTH = -14,      /* declared length/count exceeds bytes present */
    CRDT_ESTRLEN = -15,      /* string longer than the limit */
    CRDT_EBINLEN = -16,      /* binary longer than the limit */
    CRDT_EEXT = -17,         /* ext type (never used by Doorstep) */
    CRDT_EDUPKEY = -18,      /* duplicate key in a map */
    CRDT_EMAPKEY = -19,      /* map key is not a string */
    CRDT_EUTF8 = -20,        /* string is not valid UTF-8 */
    CRDT_ERESERVED = -21,    /* reserved type byte 0xc1 */
    CRDT_ETOOBIG = -22,      /* whole message larger than the limit */
    CRDT_EFLOAT = -23,       /* float where Doorstep never uses one */

    /* Structure of deltas, envelopes and records. */
    CRDT_ETYPE = -30,        /* a key holds the wrong msgpack type */
    CRDT_EMISSING = -31,     /* a required key is missing */
    CRDT_EUNKNOWNKEY = -32,  /* a key Doorstep does not define */
    CRDT_ENONCANON = -33,    /* bytes are not the canonical encoding */
    CRDT_ERANGE = -34,       /* integer out of range (seq 0, epoch 0, ...) */
    CRDT_ERECID = -35,       /* record id empty, too long or bad charset */
    CRDT_ETOOMANYOPS = -36,  /* more ops in one delta than allowed */
    CRDT_EOPCODE = -37,      /* unknown op code */
    CRDT_EDUPOP = -38,       /* two ops on the same field instance/element */
    CRDT_EOBS = -39,         /* observed dots where not allowed, or bad dot */
    CRDT_ENOOPS = -40,       /* delta without ops */

    /* Schema checks of a delta (crdt_schema_check_delta). */
    CRDT_EKIND = -50,        /* unknown record kind */
    CRDT_EFIELD = -51,       /* unknown field for the kind */
    CRDT_EOP = -52,          /* op does not fit the field's CRDT type */
    CRDT_EVALUE = -53,       /* value does not fit the field's value type */
    CRDT_EIDNUM = -54,       /* ID number fails GB 11643 (format/date/checksum) */
    CRDT_EPHONE = -55,       /* not a mainland mobile or landline number */
    CRDT_EDATE = -56,        /* not a valid YYYY-MM-DD date */
    CRDT_EENUM = -57,        /* value not among the field's allowed values */
    CRDT_EKEY = -58,         /* field key missing, unexpected or invalid */
    CRDT_ETEXT = -59,        /* text too long for the field */
    CRDT_EBLANK = -60,       /* a required text is empty or only spaces */

    /* Schema definitions (loading). */
    CRDT_ESCHEMA = -70,      /* the schema definition itself is invalid */

    /* Records. */
    CRDT_EMISMATCH = -80,    /* merging records of different kind or id */
    CRDT_ECORRUPT = -81      /* stored record bytes do not decode */
};

/* Static English message for a code; never NULL. */
const char *crdt_strerror(int code);

/*
 * crdt_value_message — why a value was refused, for people: Chinese first,
 * then English ("不是有效的电话号码。Not a valid phone number").  For the codes
 * crdt_vspec_check / crdt_fspec_check_value return (CRDT_EVALUE, CRDT_ETEXT,
 * CRDT_EBLANK, CRDT_ERANGE, CRDT_EDATE, CRDT_EENUM, CRDT_EIDNUM, CRDT_EPHONE,
 * CRDT_ERECID, CRDT_EMISSING, CRDT_EUNKNOWNKEY, CRDT_EKEY); any other code
 * gives crdt_strerror's text.  Every write path (staff API, ledger import,
 * device deltas) answers with this text, so the same mistake reads the same
 * everywhere.
 */
const char *crdt_value_message(int code);

/* ------------------------------------------------------------------------ */
/* Limits on untrusted input (DESIGN.md §7)                                  */
/* ------------------------------------------------------------------------ */

typedef struct crdt_limits {
    size_t max_msg;        /* whole input, bytes              (256 KiB) */
    uint32_t max_depth;    /* nesting of arrays/maps          (8)       */
    uint32_t max_entries;  /* entries in one array or map     (1024)    */
    uint32_t max_str;      /* bytes in one string             (4096)    */
    uint32_t max_bin;      /* bytes in one bin                (256 KiB) */
    uint32_t max_ops;      /* ops in one delta                (64)      */
} crdt_limits;

#define CRDT_LIMITS_DEFAULT_INIT {262144u, 8u, 1024u, 4096u, 262144u, 64u}
extern const crdt_limits crdt_limits_default;

#define CRDT_RECID_MAX 64      /* record ids: 1..64 bytes of [A-Za-z0-9_.-] */

/* Is s[0..n) a valid record id (1..CRDT_RECID_MAX bytes of [A-Za-z0-9_.-])? */
bool crdt_recid_valid(const char *s, size_t n);
/* Is s[0..n) a valid kind or field name (1..CRDT_NAME_MAX-1 bytes of [a-z0-9_])? */
bool crdt_name_valid(const char *s, size_t n);
#define CRDT_NAME_MAX 32       /* kind and field names */
#define CRDT_HASH_BYTES 32     /* previous-delta hash */

/* ------------------------------------------------------------------------ */
/* Bounded msgpack walk                                                      */
/* ------------------------------------------------------------------------ */

/*
 * crdt_mp_check — check that p[0..n) is exactly one msgpack value within
 * `lim`, BEFORE msgpack-c (whose unpacker allocates from declared lengths)
 * ever sees it.
 *
 * Enforced: total size <= lim->max_msg; nesting <= max_depth; every array
 * or map <= max_entries entries; every declared count and length fits in the
 * bytes still present (an array of k elements needs >= k bytes, a map >= 2k),
 * so total elements are bounded by n; str <= max_str and valid UTF-8 (no
 * overlongs, no surrogates, <= U+10FFFF); bin <= max_bin; no ext types, no
 * reserved byte 0xc1, no floats; map keys are strings and unique.
 * The walk allocates nothing and uses O(max_depth) stack plus one bounded
 * scratch array for duplicate-key detection (about 34 KiB of stack).
 * Limits: max_depth <= 64 (else CRDT_EINVAL), but msgpack-c itself refuses
 * nesting deeper than 32, so limits meant for decoding should stay <= 32;
 * a map never holds more than min(max_entries, 4096) keys; inputs over
 * 4 GiB are CRDT_ETOOBIG whatever max_msg says.  When one byte breaks
 * several rules, byte-level errors (reserved, ext, float) win.
 *
 * Returns 0, or one of CRDT_ETOOBIG, CRDT_ETRUNC, CRDT_ETRAILING,
 * CRDT_EDEPTH, CRDT_ECOUNT, CRDT_ELENGTH, CRDT_ESTRLEN, CRDT_EBINLEN,
 * CRDT_EEXT, CRDT_ERESERVED, CRDT_EFLOAT, CRDT_EMAPKEY, CRDT_EDUPKEY,
 * CRDT_EUTF8, CRDT_EINVAL (NULL arguments).  If err_off is not NULL it
 * receives the byte offset where the problem was found (0 on success).
 */
int crdt_mp_check(const uint8_t *p, size_t n, const crdt_limits *lim,
                  size_t *err_off);

/* ------------------------------------------------------------------------ */
/* Memory helpers                                                            */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer (owned).  Zero-initialise, then append. */
typedef struct crdt_buf {
    uint8_t *p;
    size_t n;
    size_t cap;
} crdt_buf;

int crdt_buf_append(crdt_buf *b, const void *p, size_t n); /* 0/ENOMEM */
void crdt_buf_reset(crdt_buf *b);                          /* n = 0 */
void crdt_buf_free(crdt_buf *b);                           /* frees, zeroes */
/*
 * crdt_buf_pack_write — msgpack_packer write callback (data: a crdt_buf) for
 * frames packed without checking every pack call.  Sticky: after one failed
 * append the buffer is freed and marked failed (p == NULL, n == SIZE_MAX)
 * and every later write fails too, so a frame is never built with bytes
 * missing inside it.  Callers check p before using the bytes;
 * crdt_buf_reset/crdt_buf_free clear the mark.  Only for a buffer that holds
 * nothing else (a failure frees earlier contents).  Returns 0 or -1.
 */
int crdt_buf_pack_write(void *data, const char *p, size_t n);

/*
 * A bump allocator for decoded (borrowed) structures.  `cap` bounds the total
 * bytes it will hand out (0 = unbounded); allocations past it fail with NULL,
 * so decode memory stays proportional to the input.
 */
typedef struct crdt_arena crdt_arena;
crdt_arena *crdt_arena_new(size_t cap);            /* NULL on ENOMEM */
void *crdt_arena_alloc(crdt_arena *a, size_t n);   /* 16-aligned, or NULL */
void crdt_arena_reset(crdt_arena *a);              /* frees all but first chunk */
size_t crdt_arena_used(const crdt_arena *a);
/* A point in an arena's life: crdt_arena_rewind gives back everything
 * allocated after crdt_arena_get_mark (the arena must not have been reset in
 * between); what was allocated before stays valid. */
typedef struct crdt_arena_mark {
    const void *chunk;
    size_t used, given;
} crdt_arena_mark;
crdt_arena_mark crdt_arena_get_mark(const crdt_arena *a);
void crdt_arena_rewind(crdt_arena *a, crdt_arena_mark m);
void crdt_arena_free(crdt_arena *a);

/* A borrowed or owned run of bytes (a canonical msgpack value, a string). */
typedef struct crdt_blob {
    const uint8_t *p;
    uint32_t n;
} crdt_blob;

/* ------------------------------------------------------------------------ */
/* Hybrid logical clock                                                      */
/* ------------------------------------------------------------------------ */

/* 48-bit milliseconds since the Unix epoch, then a 16-bit counter. */
typedef uint64_t crdt_hlc;
#define CRDT_HLC_MS(h) ((uint64_t)(h) >> 16)
#define CRDT_HLC_CTR(h) ((uint32_t)((h) & 0xffffu))
#define CRDT_HLC_MAKE(ms, c) (((uint64_t)(ms) << 16) | ((uint64_t)(c) & 0xffffu))
#define CRDT_HLC_MS_MAX ((UINT64_C(1) << 48) - 1)

/*
 * crdt_hlc_now — advance *state for a local event at wall time wall_ms and
 * store the new timestamp in *out (also the new *state).  The result is
 * strictly greater than the previous state.  If the counter would overflow,
 * the millisecond part advances by one (logical time may run ahead of wall
 * time; it never runs backwards).  Returns 0 or CRDT_EHLC_RANGE.
 */
int crdt_hlc_now(crdt_hlc *state, uint64_t wall_ms, crdt_hlc *out);

/*
 * crdt_hlc_recv — merge a remote timestamp into *state at local wall time
 * wall_ms.  If the remote's ms part is more than max_drift_ms ahead of
 * wall_ms, returns CRDT_EHLC_DRIFT and leaves *state unchanged (the caller
 * quarantines the event).  Otherwise *out = new state, strictly greater than
 * both the old state and remote.  Returns 0, CRDT_EHLC_DRIFT or
 * CRDT_EHLC_RANGE.
 */
int crdt_hlc_recv(crdt_hlc *state, crdt_hlc remote, uint64_t wall_ms,
                  uint64_t max_drift_ms, crdt_hlc *out);

/* ------------------------------------------------------------------------ */
/* Dots and version vectors                                                  */
/* ------------------------------------------------------------------------ */

/* A dot names one delta: (device id, per-device seq >= 1). */
typedef struct crdt_dot {
    uint32_t dev;
    uint64_t seq;
} crdt_dot;

int crdt_dot_cmp(crdt_dot a, crdt_dot b); /* <0, 0, >0 by (dev, seq) */

/* A version vector (owned): for each device, the highest seq seen.  Entries
 * are kept sorted by device id; a zero-initialised value is empty. */
typedef struct crdt_vv {
    uint32_t n, cap;
    crdt_dot *e;
} crdt_vv;

enum { CRDT_VV_EQUAL = 0, CRDT_VV_BEFORE = 1, CRDT_VV_AFTER = 2,
       CRDT_VV_CONCURRENT = 3 };

uint64_t crdt_vv_get(const crdt_vv *v, uint32_t dev);      /* 0 if absent */
int crdt_vv_add(crdt_vv *v, crdt_dot d);                   /* max in; 0/ENOMEM */
bool crdt_vv_covers(const crdt_vv *v, crdt_dot d);         /* d.seq <= get */
int crdt_vv_merge(crdt_vv *v, const crdt_vv *o);           /* pointwise max */
int crdt_vv_compare(const crdt_vv *a, const crdt_vv *b);   /* CRDT_VV_* */
void crdt_vv_free(crdt_vv *v);

/* ------------------------------------------------------------------------ */
/* Values                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Field values travel and are stored as canonical msgpack bytes (crdt_blob):
 * nil, bool, int, str, or a flat map of str -> (bool|int|str) with keys in
 * bytewise order (log entries).  Canonical means: ints in their shortest
 * form, str with the shortest header, map keys sorted and unique.  Equal
 * values therefore have equal bytes, and ordering values = ordering bytes.
 * crdt_val is a parsed, borrowed view of such bytes.
 */
typedef enum crdt_vtype {
    CRDT_V_NIL = 0, CRDT_V_BOOL, CRDT_V_INT, CRDT_V_STR, CRDT_V_MAP
} crdt_vtype;

#define CRDT_VAL_MAP_MAX 16 /* entries in a log-entry map */

typedef struct crdt_scalar {
    uint8_t t;            /* CRDT_V_BOOL, CRDT_V_INT or CRDT_V_STR */
    bool b;
    int64_t i;
    const char *s;        /* borrowed, not NUL-terminated */
    uint32_t len;
} crdt_scalar;

typedef struct crdt_val {
    uint8_t t;            /* crdt_vtype */
    bool b;
    int64_t i;
    const char *s;        /* CRDT_V_STR: borrowed, not NUL-terminated */
    uint32_t len;
    uint32_t nkv;         /* CRDT_V_MAP: entries */
    struct { const char *k; uint32_t klen; crdt_scalar v; } kv[CRDT_VAL_MAP_MAX];
} crdt_val;

/*
 * crdt_val_parse — parse canonical value bytes into a borrowed view.
 * Returns 0, CRDT_ETYPE (a type values never take, e.g. array, bin, nested
 * map, unsigned int above INT64_MAX), CRDT_ECOUNT (map over
 * CRDT_VAL_MAP_MAX), CRDT_ENONCANON (non-shortest form, unsorted or
 * duplicate keys, trailing bytes) or CRDT_ETRUNC.
 */
int crdt_val_parse(crdt_blob b, crdt_val *out);

/* Canonical encoders for the scalar values; append to *out. 0/ENOMEM. */
int crdt_val_put_nil(crdt_buf *out);
int crdt_val_put_bool(crdt_buf *out, bool v);
int crdt_val_put_int(crdt_buf *out, int64_t v);
int crdt_val_put_str(crdt_buf *out, const char *s, size_t len);
/* A flat map: keys[i] (NUL-terminated) -> vals[i]; sorts the keys itself.
 * Returns CRDT_EDUPKEY for duplicate keys, CRDT_ECOUNT above the max. */
int crdt_val_put_map(crdt_buf *out, const char *const *keys,
                     const crdt_scalar *vals, uint32_t n);

/* Bytewise order of two blobs (memcmp, then length). */
int crdt_blob_cmp(crdt_blob a, crdt_blob b);

/* ------------------------------------------------------------------------ */
/* Field-value validators (GB 11643 ID numbers, phones, dates)               */
/* ------------------------------------------------------------------------ */

/* 18 chars: 17 digits + check char (0-9 or 'X', uppercase); birth date in
 * positions 7..14 a real date in 1900..2100; region digits not all zero.
 * Returns 0, CRDT_EIDNUM. */
int crdt_check_idnum(const char *s, size_t len);
/* The GB 11643 check character for the first 17 digits ('0'..'9' or 'X'),
 * or 0 if s is not 17 digits. */
char crdt_idnum_check_char(const char *s17);
/* Mainland mobile 1[3-9]xxxxxxxxx, or landline 0AA(A)-NNNNNNN(N) with the
 * dash optional.  Returns 0, CRDT_EPHONE. */
int crdt_check_phone(const char *s, size_t len);
/* YYYY-MM-DD, a real Gregorian date, year 1900..2100.  0, CRDT_EDATE. */
int crdt_check_date(const char *s, size_t len);

/* Proleptic Gregorian calendar arithmetic (Howard Hinnant's algorithms):
 * days since 1970-01-01 for y-m-d (m 1..12, d 1..31, not checked), and
 * back.  crdt_date_days checks a YYYY-MM-DD string (crdt_check_date) and
 * converts it: 0 or CRDT_EDATE (*days untouched). */
int64_t crdt_days_from_civil(int y, unsigned m, unsigned d);
void crdt_civil_from_days(int64_t days, int *y, unsigned *m, unsigned *d);
int crdt_date_days(const char *s, size_t len, int64_t *days);
/* Valid UTF-8 (the walker's rule).  true/false. */
bool crdt_utf8_valid(const uint8_t *s, size_t len);

/* crdt_mp_check's cap on the keys of all open maps together (so on one map):
 * a map above min(lim->max_entries, CRDT_MP_MAP_KEYS_MAX) entries is
 * CRDT_ECOUNT. */
#define CRDT_MP_MAP_KEYS_MAX 4096u

/* The big-endian unsigned integer in q[0..k), k <= 8 (shared by the value
 * parser and the delta decoder's single pass). */
static inline uint64_t crdt_be_read(const uint8_t *q, size_t k)
{
    uint64_t v = 0;
    for (size_t i = 0; i < k; i++) v = v << 8 | q[i];
    return v;
}

/* ------------------------------------------------------------------------ */
/* Schema                                                                    */
/* ------------------------------------------------------------------------ */

/* CRDT types of fields (DESIGN.md §3). */
typedef enum crdt_ftype {
    CRDT_F_LWW = 1,     /* last-writer-wins register */
    CRDT_F_MV = 2,      /* multi-value register: concurrent writes all kept */
    CRDT_F_SET = 3,     /* add-wins observed-remove set */
    CRDT_F_LOG = 4,     /* grow-only list of entries */
    CRDT_F_COUNTER = 5, /* PN counter */
    CRDT_F_STAGE = 6    /* max over an ordered enum */
} crdt_ftype;

/* Value types a field's values (or set elements, or log-entry members, or
 * field keys) must have. */
typedef enum crdt_valtype {
    CRDT_VT_TEXT = 1,   /* UTF-8 string, max_len bytes               */
    CRDT_VT_INT = 2,    /* integer in [min, max]                      */
    CRDT_VT_BOOL = 3,
    CRDT_VT_DATE = 4,   /* "YYYY-MM-DD"                               */
    CRDT_VT_ENUM = 5,   /* one of enum_values (stage: in order)       */
    CRDT_VT_IDNUM = 6,  /* GB 11643 resident ID number                */
    CRDT_VT_PHONE = 7,  /* mainland phone                             */
    CRDT_VT_REF = 8,    /* record id of a record of kind ref_kind     */
    CRDT_VT_ENTRY = 9   /* flat map with members `members` (log only) */
} crdt_valtype;

typedef struct crdt_vspec {
    uint8_t vtype;              /* crdt_valtype */
    uint32_t max_len;           /* TEXT: bytes (default 200) */
    bool nonblank;              /* TEXT: not empty nor only spaces (the schema's
                                 * "required" on a field or an entry member) */
    int64_t min, max;           /* INT range */
    char **enum_values;         /* ENUM: owned NUL-terminated strings */
    uint32_t n_enum;
    char ref_kind[CRDT_NAME_MAX];  /* REF: kind name */
} crdt_vspec;

typedef struct crdt_member {    /* one member of an ENTRY value */
    char name[CRDT_NAME_MAX];
    bool required;
    crdt_vspec v;               /* not ENTRY */
} crdt_member;

typedef struct crdt_fspec {
    char name[CRDT_NAME_MAX];
    uint8_t type;               /* crdt_ftype */
    crdt_vspec v;               /* values / set elements / log entries */
    bool keyed;                 /* a map of registers, e.g. per year */
    crdt_vspec key;             /* if keyed: INT or ENUM */
    crdt_member *members;       /* ENTRY members (owned) */
    uint32_t n_members;
    int64_t inc_max;            /* COUNTER: |amount| per op (default 1e6) */
    char *doc;                  /* owned, may be NULL */
} crdt_fspec;

typedef struct crdt_kspec {
    char name[CRDT_NAME_MAX];
    crdt_fspec *fields;         /* owned */
    uint32_t n_fields;
} crdt_kspec;

typedef struct crdt_schema {
    char name[64];
    uint32_t version;
    crdt_kspec *kinds;          /* owned */
    uint32_t n_kinds;
} crdt_schema;

/* Free everything a schema owns, including *s itself (which must come from
 * malloc, as loaders produce it).  NULL is a no-op. */
void crdt_schema_free(crdt_schema *s);

/* Lookups by name (length-counted, not NUL-terminated); NULL if absent. */
const crdt_kspec *crdt_schema_kind(const crdt_schema *s, const char *kind,
                                   size_t len);
const crdt_fspec *crdt_schema_field(const crdt_kspec *k, const char *field,
                                    size_t len);
/* Ordinal (0-based) of a stage/enum value; -1 if not a member. */
int crdt_vspec_enum_index(const crdt_vspec *v, const char *s, size_t len);

/*
 * crdt_vspec_check — check a parsed value against a value spec.  Returns 0
 * or CRDT_EVALUE (wrong type), CRDT_ETEXT, CRDT_ERANGE, CRDT_EDATE,
 * CRDT_EENUM, CRDT_EIDNUM, CRDT_EPHONE, CRDT_ERECID.  ENTRY values need the
 * field spec: use crdt_fspec_check_value (crdt_vspec_check on an ENTRY spec
 * returns CRDT_EINVAL), which also returns CRDT_EMISSING for a required
 * member that is absent and CRDT_EUNKNOWNKEY for a member the field lacks.
 * Nil is never a valid value (fields are cleared by writing "" or, for
 * sets, by removing elements).
 */
int crdt_vspec_check(const crdt_vspec *v, const crdt_val *val);
int crdt_fspec_check_value(const crdt_fspec *f, const crdt_val *val);

/* Check a schema built by a loader for internal consistency (names unique
 * and well-formed, enum lists non-empty and unique, ranges ordered, stage
 * fields ENUM, ENTRY only on LOG, keys INT/ENUM, REF kinds exist).
 * Returns 0 or CRDT_ESCHEMA with a message in err (if errlen > 0). */
int crdt_schema_validate(const crdt_schema *s, char *err, size_t errlen);

/* ------------------------------------------------------------------------ */
/* Deltas                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum crdt_opcode {
    CRDT_OP_SET = 1,     /* lww, mv: "set"   value [, obs for mv] */
    CRDT_OP_ADD = 2,     /* set:     "add"   value = element      */
    CRDT_OP_REM = 3,     /* set:     "rem"   value = element, obs */
    CRDT_OP_APP = 4,     /* log:     "app"   value = entry        */
    CRDT_OP_INC = 5,     /* counter: "inc"   value = int != 0     */
    CRDT_OP_RAISE = 6,   /* stage:   "raise" value = stage name   */
    CRDT_OP_DEL = 7,     /* record:  "del"   tombstone, no field  */
    CRDT_OP_UNDEL = 8    /* record:  "undel" lift tombstone       */
} crdt_opcode;

/* The op's wire name ("set", "add", ...) or NULL. */
const char *crdt_opcode_name(int op);

/*
 * One op.  In a decoded delta everything is borrowed from the arena and the
 * input bytes.  field is NULL for record-level ops (DEL, UNDEL).  key.n == 0
 * when the field is not keyed; val.n == 0 when the op has no value.
 */
typedef struct crdt_op {
    uint8_t code;             /* crdt_opcode */
    const char *field;
    uint32_t field_len;
    crdt_blob key;            /* canonical value bytes of the field key */
    crdt_blob val;            /* canonical value bytes */
    uint32_t n_obs;
    const crdt_dot *obs;      /* mv set, set rem: the dots observed */
} crdt_op;

typedef struct crdt_delta {
    uint32_t dev;             /* >= 1 (0 is reserved for the server)     */
    uint32_t epoch;           /* key epoch, >= 1                         */
    uint64_t seq;             /* >= 1, contiguous per device             */
    uint8_t prev[CRDT_HASH_BYTES]; /* hash of the previous delta; 0s for seq 1 */
    crdt_hlc hlc;
    const char *kind;
    uint32_t kind_len;
    const char *id;
    uint32_t id_len;
    uint32_t n_ops;
    const crdt_op *ops;
} crdt_delta;

/*
 * crdt_delta_encode — append the canonical bytes of *d to *out:
 *   {"d":dev, "e":epoch, "h":hlc, "i":id, "k":kind, "o":[op...], "p":prev(bin32), "s":seq}
 *   op = {"f":field, "k":key, "o":opname, "v":value, "x":[[dev,seq]...]}
 * with absent op members omitted.  Checks the same structural rules as the
 * decoder (record id, op shapes, limits) so that only decodable deltas are
 * produced.  Returns 0, CRDT_ENOMEM, or the structural codes of
 * crdt_delta_decode.
 */
int crdt_delta_encode(const crdt_delta *d, crdt_buf *out);

/*
 * crdt_delta_decode — decode untrusted delta bytes.  Runs crdt_mp_check,
 * then msgpack-c, then checks structure: known keys only, types, seq/epoch
 * >= 1, record id charset, op count <= lim->max_ops, op shapes (which
 * members each op takes), unique field instances (field, key[, element]),
 * and finally that the bytes are canonical (re-encoding gives the same
 * bytes), so a signed delta has exactly one byte representation.
 * Everything in *out is borrowed from `a` and from p[0..n).
 * Schema rules are NOT checked here: see crdt_schema_check_delta.
 * Returns 0 or a negative code; *err_op (if not NULL) receives the index of
 * the offending op, or -1.
 *
 * Two decoders give this one result: a single strict pass that accepts only
 * the encoder's exact bytes within the limits (almost every delta), and,
 * whenever that pass gives up, crdt_delta_decode_ref from the start, whose
 * verdict and error code are the answer.  The pass gives back the arena
 * memory it took when it gives up.
 */
int crdt_delta_decode(const uint8_t *p, size_t n, const crdt_limits *lim,
                      crdt_arena *a, crdt_delta *out, int *err_op);

/*
 * crdt_delta_decode_fast — the single strict pass alone: true when it
 * decoded p[0..n) into *out (exactly as crdt_delta_decode_ref would); false
 * when it gave up, with *out zeroed and the arena as it was.  Giving up is no
 * verdict: the bytes may still be a valid delta in a form the pass does not
 * take (none that crdt_delta_encode writes under crdt_limits_default).
 */
bool crdt_delta_decode_fast(const uint8_t *p, size_t n, const crdt_limits *lim, crdt_arena *a,
                            crdt_delta *out);

/*
 * crdt_delta_decode_ref — the reference decoder (the steps in codec.c's
 * header: bounded walk, msgpack-c, checks, re-encode and compare).  Same
 * contract as crdt_delta_decode; slower.  For tests and fuzzing, which
 * check that the two agree.
 */
int crdt_delta_decode_ref(const uint8_t *p, size_t n, const crdt_limits *lim,
                          crdt_arena *a, crdt_delta *out, int *err_op);

/*
 * crdt_schema_check_delta — check a decoded delta against the schema: the
 * kind exists; each op's field exists, its op fits the field's CRDT type,
 * its key is present exactly when the field is keyed and valid, its value
 * is valid for the value type (GB 11643 ID numbers, phones, dates, enums,
 * ranges, text lengths, entry members), and obs is present only where the
 * type takes it.  Returns 0 or a CRDT_E* code; *err_op as above.
 */
int crdt_schema_check_delta(const crdt_schema *s, const crdt_delta *d,
                            int *err_op);

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

/* When and by whom a value was written. */
typedef struct crdt_stamp {
    crdt_hlc hlc;
    crdt_dot dot;
} crdt_stamp;

/* Total order on stamps: hlc, then device id, then seq. */
int crdt_stamp_cmp(crdt_stamp a, crdt_stamp b);

/*
 * One entry of a field state (owned by the record).
 *   lww, mv:  st + v (the value)
 *   set:      st + v (the element)
 *   log:      st + v (the entry map)
 *   counter:  st + num (the amount)
 *   stage:    st + num (the ordinal)
 * Dead entries (mv: dots superseded; set: (element, dot) removed) use st.dot
 * (and v for set) only.
 */
typedef struct crdt_entry {
    crdt_stamp st;
    int64_t num;
    crdt_blob v;              /* owned copy; n == 0 for none */
} crdt_entry;

/*
 * The state of one field instance (owned by the record).  Invariants
 * (checked by crdt_record_invariant_ok):
 *   - lww, stage: n <= 1, nd == 0.
 *   - mv: e sorted by dot, dots unique; d sorted by dot, unique; no entry's
 *     dot is in d.
 *   - set: e sorted by (v, dot), unique; d likewise; no (v, dot) of e in d.
 *   - log: e sorted by stamp, unique by dot; nd == 0.
 *   - counter: e sorted by dot, unique; nd == 0.
 */
typedef struct crdt_field {
    char name[CRDT_NAME_MAX];
    crdt_blob key;            /* owned; n == 0 if not keyed */
    uint8_t type;             /* crdt_ftype */
    uint32_t n, cap;
    crdt_entry *e;
    uint32_t nd, capd;
    crdt_entry *d;
} crdt_field;

/* A merged record (owned).  Fields are sorted by (name, key). */
typedef struct crdt_record {
    char kind[CRDT_NAME_MAX];
    char id[CRDT_RECID_MAX + 1];
    crdt_field tomb;          /* lww of bool: deleted?  n == 0: never */
    uint32_t n_fields, cap_fields;
    crdt_field *fields;
} crdt_record;

/* New empty record; kind and id are copied.  NULL on ENOMEM or invalid
 * kind/id (CRDT_ERECID rules). */
crdt_record *crdt_record_new(const char *kind, size_t kind_len,
                             const char *id, size_t id_len);
void crdt_record_free(crdt_record *r);

/*
 * crdt_record_apply — merge one delta into r.  The delta must have passed
 * crdt_schema_check_delta against s (the schema gives each field its type
 * and stage ordinals); kind and id must match r (else CRDT_EMISMATCH).
 * Applying is merging r with the one-delta record of d, so it is
 * idempotent and order-independent.  On failure r is unchanged.
 * Returns 0, CRDT_ENOMEM, CRDT_EMISMATCH, CRDT_EFIELD, CRDT_EOP.
 */
int crdt_record_apply(crdt_record *r, const crdt_schema *s,
                      const crdt_delta *d);

/*
 * crdt_record_merge — r := r ⊔ o.  Commutative, associative, idempotent.
 * On failure r is unchanged.  Returns 0, CRDT_ENOMEM, CRDT_EMISMATCH (kind,
 * id, or a field's type differs).
 */
int crdt_record_merge(crdt_record *r, const crdt_record *o);

/* Deep copy; NULL on ENOMEM. */
crdt_record *crdt_record_dup(const crdt_record *r);

/*
 * crdt_record_encode — append the canonical bytes of r:
 *   {"f":[[name, key|nil, type, [entry...], [dead...]]...], "i":id, "k":kind,
 *    "t":[entry]|[]}   entry = [hlc, dev, seq, num, value|nil]
 * Equal states give equal bytes.  Returns 0 or CRDT_ENOMEM.
 */
int crdt_record_encode(const crdt_record *r, crdt_buf *out);

/*
 * crdt_record_decode — decode record bytes (from storage: checked with
 * crdt_mp_check under generous limits, then for every invariant).
 * *out is owned by the caller.  Returns 0, CRDT_ENOMEM, CRDT_ECORRUPT.
 */
int crdt_record_decode(const uint8_t *p, size_t n, crdt_record **out);

/*
 * crdt_field_conflict — is this field instance a conflict a person must
 * resolve?  Only an mv field can be: its live concurrent writes hold more
 * than one DISTINCT value.  Two phones that wrote the same value agree, so
 * 代缴 and 代缴 are one value with two writers, not a conflict.  Every count
 * of conflicts (dashboard, reports, exports, the simulator) uses this.
 */
bool crdt_field_conflict(const crdt_field *f);

/* Number of field instances of r for which crdt_field_conflict holds. */
uint32_t crdt_record_conflicts(const crdt_record *r);

/* Find a field instance; key may be {NULL,0}.  NULL if absent. */
const crdt_field *crdt_record_field(const crdt_record *r, const char *name,
                                    crdt_blob key);

/* Is the record tombstoned (latest del/undel is del)? */
bool crdt_record_deleted(const crdt_record *r);

/* Counter value: sum of amounts (saturating).  Stage: ordinal or -1. */
int64_t crdt_field_counter(const crdt_field *f);
int crdt_field_stage(const crdt_field *f);

/* Structural invariants of a record; for assert() and tests. */
bool crdt_record_invariant_ok(const crdt_record *r);

#ifdef __cplusplus
}
#endif
#endif /* DOORSTEP_CRDT_H */
