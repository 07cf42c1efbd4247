/*
 * crdt.js — merged records on the phone: a port of crdt/record.c, with the
 * parts of crdt/val.c, vv.c, codec.c, mpcheck.c and hlc.c it needs.  The
 * phone merges the deltas it pulls or makes exactly as the server does, and
 * holds the same canonical record bytes (crdt_record_encode).
 *
 * Every field state is a join-semilattice (DESIGN.md §3; record.c's header):
 *   lww      the entry with the greatest stamp (hlc, dev, seq)
 *   stage    the entry with the greatest (ordinal, stamp); the ordinal is `num`
 *   mv       entries ∪ entries, dead dots ∪ dead dots, minus the entries whose
 *            dot is dead (a write's `x` names the writes it supersedes, so
 *            concurrent writes, which did not see each other, both stay)
 *   set      the same with (element, dot) pairs: add-wins, because a `rem`
 *            kills only the add dots it observed
 *   log      entries ∪ entries, ordered by stamp
 *   counter  entries ∪ entries (one per dot), value = sum of `num`
 * and the record tombstone is an lww of bool.  Two entries with the same key
 * but different contents (only a cloned or forged dot makes them) resolve to
 * the greater by (stamp, num, value bytes), so merging stays a semilattice.
 *
 * Representation (plain data):
 *   Record {kind, id, fields: Field[], tomb: Field}
 *   Field  {name, key: Uint8Array|null, type: 1..6, e: Entry[], d: Entry[]}
 *   Entry  {hlc: bigint, dev: number, seq: bigint, num: bigint, v: Uint8Array|null}
 * `key` and `v` are canonical msgpack value bytes, as C keeps them, so values
 * order as bytes and encode exactly.  Dead entries (`d`) carry only the dot
 * (hlc 0, num 0) and, for sets, the element.  Fields and entries are never
 * changed once built (merges build new ones), so records may share them.
 *
 * Invariants (crdt_record_invariant_ok; decodeRecord checks them): fields
 * sorted and unique by (name, key bytes); lww, stage: at most one entry and
 * no dead ones; mv: e and d sorted and unique by dot, no live dot dead;
 * set: likewise by (element bytes, dot); log: sorted and unique by stamp;
 * counter: sorted and unique by dot; log and counter have no dead entries.
 *
 * Bytes are read by a small msgpack reader of our own rather than by
 * @msgpack/msgpack, because the verdicts must be msgpack-c's and
 * crdt_mp_check's: uint64 kept exact, strings refused unless valid UTF-8 and
 * a leading U+FEFF kept, map key order seen, ext/float/0xc1 refused, and the
 * walk's limits (DESIGN.md §7).  Functions throw an Error naming the problem;
 * applyDelta leaves its record unchanged when it throws.
 */

/** Schema crdt names -> the type codes records store (crdt_ftype). */
export const FIELD_TYPES = Object.freeze({ lww: 1, mv: 2, set: 3, log: 4, counter: 5, stage: 6 });
const { lww: LWW, mv: MV, set: SET, log: LOG, counter: COUNTER, stage: STAGE } = FIELD_TYPES;
const TYPE_NAMES = ['', 'lww', 'mv', 'set', 'log', 'counter', 'stage'];

const OP_NAMES = ['set', 'add', 'rem', 'app', 'inc', 'raise', 'del', 'undel'];
const isRecordOp = (o) => o === 'del' || o === 'undel';
const isElemOp = (o) => o === 'add' || o === 'rem';

const NAME_RE = /^[a-z0-9_]{1,31}$/;          /* kinds and fields (crdt_name_valid) */
const RECID_RE = /^[A-Za-z0-9_.-]{1,64}$/;    /* record ids (crdt_recid_valid) */
const HASH_BYTES = 32;
const VAL_MAP_MAX = 16;                       /* members of a log entry */
const MAP_KEYS_MAX = 4096;                    /* the walk's cap on one map */
const UINT32_MAX = 0xffffffffn;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const UINT64_MAX = (1n << 64n) - 1n;

/* crdt_limits_default, for deltas; record.c's record_limits, for records. */
const DELTA_LIMITS = { maxMsg: 262144, maxDepth: 8, maxEntries: 1024, maxStr: 4096, maxBin: 262144, maxOps: 64 };
const RECORD_LIMITS = { maxMsg: 64 << 20, maxDepth: 8, maxEntries: 1 << 20, maxStr: 4096, maxBin: 64 << 20 };

const te = new TextEncoder();
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function fail(what, msg) {
  throw new Error(`${what}: ${msg}`);
}

/* ---- reading msgpack ------------------------------------------------------------- */

/* Node types of a parsed msgpack value: {t, v}; strings also keep `raw` bytes. */
const NIL = 0, BOOL = 1, INT = 2, STR = 3, BIN = 4, ARR = 5, MAP = 6;

/*
 * Parse exactly one msgpack value, refusing what crdt_mp_check refuses under
 * `lim` (size, depth, entries, string and bin lengths, UTF-8, map keys that
 * are not strings or repeat, ext, floats, 0xc1, truncation, trailing bytes).
 * Integers become bigints; maps are [keyNode, valueNode] pairs in order.
 */
function readMsgpack(bytes, lim, what) {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`${what}: expected a Uint8Array`);
  if (bytes.length > lim.maxMsg) fail(what, `${bytes.length} bytes, more than ${lim.maxMsg}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const bad = (msg) => fail(what, `${msg} at byte ${pos}`);
  const take = (k) => {
    if (bytes.length - pos < k) bad('input ends inside a value');
    pos += k;
    return pos - k;
  };
  const len = (k) => (k === 1 ? view.getUint8(take(1)) : k === 2 ? view.getUint16(take(2)) : view.getUint32(take(4)));

  function str(n) {
    if (n > lim.maxStr) bad(`string of ${n} bytes, more than ${lim.maxStr}`);
    const at = take(n), raw = bytes.subarray(at, at + n);
    try {
      return { t: STR, v: utf8.decode(raw), raw };
    } catch {
      return bad('string is not valid UTF-8');
    }
  }
  function bin(n) {
    if (n > lim.maxBin) bad(`binary of ${n} bytes, more than ${lim.maxBin}`);
    const at = take(n);
    return { t: BIN, v: bytes.slice(at, at + n) };
  }
  function container(n, isMap, depth) {
    if (depth >= lim.maxDepth) bad(`nesting deeper than ${lim.maxDepth}`);
    if (n > (isMap ? Math.min(lim.maxEntries, MAP_KEYS_MAX) : lim.maxEntries)) bad(`container of ${n} entries`);
    const v = [];
    const seen = new Set();
    for (let i = 0; i < n; i++) {
      if (!isMap) {
        v.push(item(depth + 1));
        continue;
      }
      const k = item(depth + 1);
      if (k.t !== STR) bad('map key is not a string');
      if (seen.has(k.v)) bad(`duplicate map key "${k.v}"`);
      seen.add(k.v);
      v.push([k, item(depth + 1)]);
    }
    return { t: isMap ? MAP : ARR, v };
  }
  function item(depth) {
    const b = bytes[take(1)];
    if (b <= 0x7f) return { t: INT, v: BigInt(b) };
    if (b >= 0xe0) return { t: INT, v: BigInt(b - 256) };
    if (b <= 0x8f) return container(b & 0x0f, true, depth);
    if (b <= 0x9f) return container(b & 0x0f, false, depth);
    if (b <= 0xbf) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return { t: NIL, v: null };
      case 0xc2: return { t: BOOL, v: false };
      case 0xc3: return { t: BOOL, v: true };
      case 0xc4: return bin(len(1));
      case 0xc5: return bin(len(2));
      case 0xc6: return bin(len(4));
      case 0xcc: return { t: INT, v: BigInt(view.getUint8(take(1))) };
      case 0xcd: return { t: INT, v: BigInt(view.getUint16(take(2))) };
      case 0xce: return { t: INT, v: BigInt(view.getUint32(take(4))) };
      case 0xcf: return { t: INT, v: view.getBigUint64(take(8)) };
      case 0xd0: return { t: INT, v: BigInt(view.getInt8(take(1))) };
      case 0xd1: return { t: INT, v: BigInt(view.getInt16(take(2))) };
      case 0xd2: return { t: INT, v: BigInt(view.getInt32(take(4))) };
      case 0xd3: return { t: INT, v: view.getBigInt64(take(8)) };
      case 0xd9: return str(len(1));
      case 0xda: return str(len(2));
      case 0xdb: return str(len(4));
      case 0xdc: return container(len(2), false, depth);
      case 0xdd: return container(len(4), false, depth);
      case 0xde: return container(len(2), true, depth);
      case 0xdf: return container(len(4), true, depth);
      case 0xca: case 0xcb: pos--; return bad('float (never used by Doorstep)');
      case 0xc1: pos--; return bad('reserved byte 0xc1');
      default: pos--; return bad('ext type (never used by Doorstep)');
    }
  }
  const root = item(0);
  if (pos !== bytes.length) bad('bytes after the value');
  return root;
}

/* ---- writing canonical msgpack ----------------------------------------------------- */

/* Shortest ints, shortest headers: what msgpack-c's packer and val.c emit. */
class Writer {
  #buf = new Uint8Array(256);
  #n = 0;

  #room(k) {
    if (this.#n + k <= this.#buf.length) return;
    let cap = this.#buf.length * 2;
    while (cap < this.#n + k) cap *= 2;
    const b = new Uint8Array(cap);
    b.set(this.#buf.subarray(0, this.#n));
    this.#buf = b;
  }

  byte(b) {
    this.#room(1);
    this.#buf[this.#n++] = b;
  }

  raw(bytes) {
    this.#room(bytes.length);
    this.#buf.set(bytes, this.#n);
    this.#n += bytes.length;
  }

  /* tag, then the low k bytes of v (a bigint) big-endian. */
  #head(tag, v, k) {
    this.byte(tag);
    for (let i = k - 1; i >= 0; i--) this.byte(Number((v >> BigInt(8 * i)) & 0xffn));
  }

  /* A length header: inline up to fixMax, else a 1 (if t8), 2 or 4-byte length. */
  #len(n, fixMax, fixTag, t8, t16, t32) {
    if (n <= fixMax) this.byte(fixTag | n);
    else if (t8 && n < 0x100) this.#head(t8, BigInt(n), 1);
    else if (n < 0x10000) this.#head(t16, BigInt(n), 2);
    else this.#head(t32, BigInt(n), 4);
  }

  int(x) {
    const v = BigInt(x);
    if (v < INT64_MIN || v > UINT64_MAX) throw new RangeError(`integer ${v} does not fit msgpack`);
    if (v >= 0n) {
      if (v < 0x80n) this.byte(Number(v));
      else if (v < 0x100n) this.#head(0xcc, v, 1);
      else if (v < 0x10000n) this.#head(0xcd, v, 2);
      else if (v < 0x100000000n) this.#head(0xce, v, 4);
      else this.#head(0xcf, v, 8);
    } else if (v >= -32n) this.byte(Number(v) & 0xff);
    else if (v >= -0x80n) this.#head(0xd0, v, 1);
    else if (v >= -0x8000n) this.#head(0xd1, v, 2);
    else if (v >= -0x80000000n) this.#head(0xd2, v, 4);
    else this.#head(0xd3, v, 8);
  }

  str(s) {
    const b = te.encode(s);
    this.#len(b.length, 31, 0xa0, 0xd9, 0xda, 0xdb);
    this.raw(b);
  }

  bin(b) {
    this.#len(b.length, -1, 0, 0xc4, 0xc5, 0xc6);
    this.raw(b);
  }

  arr(n) { this.#len(n, 15, 0x90, 0, 0xdc, 0xdd); }

  map(n) { this.#len(n, 15, 0x80, 0, 0xde, 0xdf); }

  done() { return this.#buf.slice(0, this.#n); }
}

/* ---- values (crdt/val.c) ------------------------------------------------------------ */

/* Bytewise order of two blobs, null being empty (crdt_blob_cmp). */
function blobCmp(a, b) {
  const an = a ? a.length : 0, bn = b ? b.length : 0, m = Math.min(an, bn);
  for (let i = 0; i < m; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return an === bn ? 0 : an < bn ? -1 : 1;
}

const isPlainObject = (x) => x !== null && typeof x === 'object' &&
  (Object.getPrototypeOf(x) === Object.prototype || Object.getPrototypeOf(x) === null);
const LONE_SURROGATE = /\p{Cs}/u;    /* a paired surrogate is one code point here */
const isInt = (x) => typeof x === 'bigint' || Number.isSafeInteger(x);

function writeScalar(w, x, what) {
  if (typeof x === 'boolean') w.byte(x ? 0xc3 : 0xc2);
  else if (typeof x === 'string') {
    if (LONE_SURROGATE.test(x)) fail(what, 'string with a lone surrogate');
    w.str(x);
  } else if (isInt(x)) {
    if (BigInt(x) < INT64_MIN || BigInt(x) > INT64_MAX) fail(what, `integer ${x} outside int64`);
    w.int(x);
  } else fail(what, `${x === null ? 'null' : typeof x} is not a boolean, integer or string`);
}

/*
 * The canonical bytes of a JS value: null (nil), boolean, integer (a safe
 * number or a bigint in int64), string, or a plain object of at most 16
 * boolean/integer/string members (a log entry; undefined members are left
 * out), written with its keys in bytewise order.
 */
function valueBytes(x, what) {
  const w = new Writer();
  if (x === null) w.byte(0xc0);
  else if (isPlainObject(x)) {
    const keys = Object.keys(x).filter((k) => x[k] !== undefined)
      .map((k) => [te.encode(k), k]).sort((a, b) => blobCmp(a[0], b[0]));
    if (keys.length > VAL_MAP_MAX) fail(what, `more than ${VAL_MAP_MAX} members`);
    w.map(keys.length);
    for (const [, k] of keys) {
      writeScalar(w, k, what);
      writeScalar(w, x[k], `${what}.${k}`);
    }
  } else writeScalar(w, x, what);
  return w.done();
}

const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);
const jsInt = (v) => (v >= -SAFE_MAX && v <= SAFE_MAX ? Number(v) : v);

function intValue(v, what) {
  if (v > INT64_MAX) fail(what, 'integer above 2^63-1');
  return jsInt(v);
}

/*
 * A parsed node as a Doorstep value (crdt_val_parse of what msgpack-c
 * re-packs): integers as numbers, or bigints beyond 2^53; a map must be flat,
 * at most 16 members, keys in bytewise order, members never nil.
 */
function nodeValue(node, what) {
  switch (node.t) {
    case NIL:
    case BOOL:
    case STR:
      return node.v;
    case INT:
      return intValue(node.v, what);
    case MAP: {
      const kv = node.v;
      if (kv.length > VAL_MAP_MAX) fail(what, `map value of more than ${VAL_MAP_MAX} members`);
      return Object.fromEntries(kv.map(([k, x], i) => {
        if (i && blobCmp(kv[i - 1][0].raw, k.raw) >= 0) fail(what, 'map value keys out of bytewise order');
        if (x.t === INT) return [k.v, intValue(x.v, what)];
        if (x.t !== BOOL && x.t !== STR) fail(what, `member "${k.v}" is not a boolean, integer or string`);
        return [k.v, x.v];
      }));
    }
    default:
      return fail(what, 'arrays and binary are never values');
  }
}

/* A stored value node as canonical bytes, null for nil (record.c's pack_blob). */
function nodeBytes(node, what) {
  return node.t === NIL ? null : valueBytes(nodeValue(node, what), what);
}

/* Stored value bytes as a JS value (null for none). */
function decodeValue(bytes) {
  return bytes ? nodeValue(readMsgpack(bytes, RECORD_LIMITS, 'value'), 'value') : null;
}

/* ---- order (record.c, vv.c) --------------------------------------------------------- */

const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
const dotCmp = (a, b) => cmp(a.dev, b.dev) || cmp(a.seq, b.seq);       /* crdt_dot_cmp */
const stampCmp = (a, b) => cmp(a.hlc, b.hlc) || dotCmp(a, b);          /* crdt_stamp_cmp */
const elemCmp = (a, b) => blobCmp(a.v, b.v) || dotCmp(a, b);
/* Total order on whole entries, to choose between two with the same key. */
const fullCmp = (a, b) => stampCmp(a, b) || cmp(a.num, b.num) || blobCmp(a.v, b.v);
/* The key order of a type's entries, live and dead; lww/stage hold <= 1. */
const keyOf = (type) => (type === SET ? elemCmp : type === LOG ? stampCmp : dotCmp);
/* Names are ASCII, so string order is strcmp's. */
const fieldCmp = (a, b) => cmp(a.name, b.name) || blobCmp(a.key, b.key);

/* ---- field states --------------------------------------------------------------------- */

/* Sorted union by `key`; on an equal key the greater entry (fullCmp) wins. */
function unionSorted(a, b, key) {
  const out = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    const c = j === b.length ? -1 : i === a.length ? 1 : key(a[i], b[j]);
    if (c < 0) out.push(a[i++]);
    else if (c > 0) out.push(b[j++]);
    else {
      out.push(fullCmp(a[i], b[j]) >= 0 ? a[i] : b[j]);
      i++;
      j++;
    }
  }
  return out;
}

/* The entries of e (sorted) whose key is not in d (sorted). */
function removeDead(e, d, key) {
  let j = 0;
  return e.filter((x) => {
    while (j < d.length && key(d[j], x) < 0) j++;
    return !(j < d.length && key(d[j], x) === 0);
  });
}

/* The winner of a single-entry register (lww, stage, tombstone), or null. */
function registerMax(type, a, b) {
  if (!a.e.length) return b.e[0] ?? null;
  if (!b.e.length) return a.e[0];
  const [x, y] = [a.e[0], b.e[0]];
  if (type === STAGE && x.num !== y.num) return x.num > y.num ? x : y;
  return fullCmp(x, y) >= 0 ? x : y;
}

/* a ⊔ b; a and b have the same name, key and type (field_merge). */
function fieldMerge(a, b) {
  const { type } = a, key = keyOf(type);
  const out = { name: a.name, key: a.key, type, e: [], d: [] };
  switch (type) {
    case LWW:
    case STAGE: {
      const w = registerMax(type, a, b);
      if (w) out.e = [w];
      break;
    }
    case MV:
    case SET:
      out.d = unionSorted(a.d, b.d, key);
      out.e = removeDead(unionSorted(a.e, b.e, key), out.d, key);
      break;
    case LOG:
    case COUNTER:
      out.e = unionSorted(a.e, b.e, key);
      break;
    default:
      fail('merge', `field "${a.name}" has unknown type ${type}`);
  }
  return out;
}

const tombField = (e) => ({ name: '', key: null, type: LWW, e, d: [] });

/* ---- records ------------------------------------------------------------------------------ */

/** A new empty record (crdt_record_new); throws for an invalid kind or id. */
export function newRecord(kind, id) {
  if (!NAME_RE.test(kind)) fail('record', `invalid kind "${kind}"`);
  if (!RECID_RE.test(id)) fail('record', `invalid record id "${id}"`);
  return { kind, id, fields: [], tomb: tombField([]) };
}

/**
 * a ⊔ b as a new record (crdt_record_merge on a copy of a): commutative,
 * associative, idempotent.  a and b are not changed (the result shares their
 * unchanged fields).  Throws if kind, id or the type of a field differs.
 */
export function mergeRecord(a, b) {
  if (a.kind !== b.kind || a.id !== b.id) fail('merge', `${b.kind}/${b.id} into ${a.kind}/${a.id}`);
  const fields = [];
  let i = 0, j = 0;
  while (i < a.fields.length || j < b.fields.length) {
    const c = j === b.fields.length ? -1 : i === a.fields.length ? 1 : fieldCmp(a.fields[i], b.fields[j]);
    if (c < 0) fields.push(a.fields[i++]);
    else if (c > 0) fields.push(b.fields[j++]);
    else {
      const [x, y] = [a.fields[i++], b.fields[j++]];
      if (x.type !== y.type) fail('merge', `field "${x.name}" is ${TYPE_NAMES[x.type]} in one record, ${TYPE_NAMES[y.type]} in the other`);
      fields.push(fieldMerge(x, y));
    }
  }
  return { kind: a.kind, id: a.id, fields, tomb: fieldMerge(a.tomb, b.tomb) };
}

/**
 * The schema (the parsed JSON of crdt/schema/yibao.json, docs/SCHEMA.md) as
 * the lookups applyDelta needs: {kinds: Map(kind -> Map(field -> {name, crdt,
 * type, values}))}, where `values` orders a stage field's stages.
 */
export function compileSchema(json) {
  if (!json || !Array.isArray(json.kinds)) fail('schema', 'no "kinds" array');
  const kinds = new Map();
  for (const k of json.kinds) {
    if (!NAME_RE.test(k.name)) fail('schema', `invalid kind name "${k.name}"`);
    const fields = new Map();
    for (const f of k.fields ?? []) {
      const where = `${k.name}.${f.name}`;
      if (!NAME_RE.test(f.name)) fail('schema', `invalid field name "${where}"`);
      const type = TYPE_NAMES.indexOf(f.crdt);
      if (type < LWW) fail('schema', `${where}: unknown crdt "${f.crdt}"`);
      if (type === STAGE && !Array.isArray(f.values)) fail('schema', `${where}: a stage needs "values"`);
      fields.set(f.name, { name: f.name, crdt: f.crdt, type, values: f.values ?? [] });
    }
    kinds.set(k.name, fields);
  }
  return { kinds };
}

const compiledSchemas = new WeakMap();
function schemaOf(schema) {
  if (schema?.kinds instanceof Map) return schema;
  if (!compiledSchemas.has(schema)) compiledSchemas.set(schema, compileSchema(schema));
  return compiledSchemas.get(schema);
}

/* The field (or tombstone) state that op `op` of delta `d` contributes
 * (record.c's field_of_op); `fields` is the kind's schema. */
function fieldOfOp(fields, d, op) {
  const st = { hlc: d.hlc, dev: d.dev, seq: d.seq, num: 0n, v: null };
  if (isRecordOp(op.o)) return tombField([{ ...st, v: Uint8Array.of(op.o === 'del' ? 0xc3 : 0xc2) }]);
  const fs = fields.get(op.f);
  if (!fs) fail('apply', `no field "${op.f}" in kind "${d.kind}"`);
  const state = (e, dead = []) => ({ name: fs.name, key: op.key, type: fs.type, e, d: dead });
  const dead = (elem) => op.x.map(({ dev, seq }) => ({ hlc: 0n, dev, seq, num: 0n, v: elem }));
  const misfit = () => fail('apply', `op "${op.o}" does not fit ${fs.crdt} field "${fs.name}"`);
  switch (fs.type) {
    case LWW:
    case MV: {
      if (op.o !== 'set') misfit();
      const e = [{ ...st, v: op.val }];
      if (fs.type === LWW || !op.x.length) return state(e);
      const superseded = dead(null);
      /* A write that names its own dot supersedes itself (a forged op). */
      return state(removeDead(e, superseded, dotCmp), superseded);
    }
    case SET:
      if (op.o === 'add') return state([{ ...st, v: op.val }]);
      if (op.o === 'rem') return state([], dead(op.val));
      return misfit();
    case LOG:
      if (op.o !== 'app') misfit();
      return state([{ ...st, v: op.val }]);
    case COUNTER:
      if (op.o !== 'inc' || !isInt(op.v)) misfit();
      return state([{ ...st, num: BigInt(op.v) }]);
    default: { /* STAGE */
      const ord = fs.values.indexOf(op.v);
      if (op.o !== 'raise' || typeof op.v !== 'string' || ord < 0) misfit();
      return state([{ ...st, num: BigInt(ord) }]);
    }
  }
}

/**
 * Merge one delta into rec, in place, exactly as crdt_record_apply: rec
 * becomes rec ⊔ (the one-delta record of `delta`), so applying is idempotent
 * and order-independent.  `delta` is as decodeDelta returns it (or any delta
 * encodeDelta accepts); it must fit the schema (the server checks that, as
 * crdt_schema_check_delta; validate.js checks the phone's own edits).
 * `schema` is compileSchema's result or the schema JSON itself.  Returns
 * rec; throws (leaving rec unchanged) for another record, an unknown kind or
 * field, or an op that does not fit its field's CRDT type.
 */
export function applyDelta(rec, delta, schema) {
  const d = checkDelta(delta);
  if (d.kind !== rec.kind || d.id !== rec.id) fail('apply', `delta for ${d.kind}/${d.id} on ${rec.kind}/${rec.id}`);
  const fields = schemaOf(schema).kinds.get(d.kind);
  if (!fields) fail('apply', `no kind "${d.kind}" in the schema`);
  const one = { kind: rec.kind, id: rec.id, fields: [], tomb: tombField([]) };
  const states = [];
  for (const op of d.ops) {
    const f = fieldOfOp(fields, d, op);
    if (op.f === null) one.tomb = f;
    else states.push(f);
  }
  /* Set ops on distinct elements of one field become one field state. */
  states.sort(fieldCmp);
  for (const f of states) {
    const last = one.fields[one.fields.length - 1];
    if (last && fieldCmp(last, f) === 0) one.fields[one.fields.length - 1] = fieldMerge(last, f);
    else one.fields.push(f);
  }
  const merged = mergeRecord(rec, one);
  rec.fields = merged.fields;
  rec.tomb = merged.tomb;
  return rec;
}

/* ---- record bytes ------------------------------------------------------------------------- */

function writeEntries(w, entries) {
  w.arr(entries.length);
  for (const x of entries) {
    w.arr(5);
    w.int(x.hlc);
    w.int(x.dev);
    w.int(x.seq);
    w.int(x.num);
    if (x.v) w.raw(x.v);
    else w.byte(0xc0);
  }
}

/**
 * The canonical bytes of rec, identical to crdt_record_encode's:
 *   {"f": [[name, key|nil, type, [entry...], [dead...]]...], "i": id, "k": kind,
 *    "t": [tombstone entry] or []}     entry = [hlc, dev, seq, num, value|nil]
 */
export function encodeRecord(rec) {
  const w = new Writer();
  w.map(4);
  w.str('f');
  w.arr(rec.fields.length);
  for (const f of rec.fields) {
    w.arr(5);
    w.str(f.name);
    if (f.key) w.raw(f.key);
    else w.byte(0xc0);
    w.int(f.type);
    writeEntries(w, f.e);
    writeEntries(w, f.d);
  }
  w.str('i');
  w.str(rec.id);
  w.str('k');
  w.str(rec.kind);
  w.str('t');
  writeEntries(w, rec.tomb.e);
  return w.done();
}

function uintNode(node, max, what) {
  if (node.t !== INT || node.v < 0n || node.v > max) fail(what, `not an integer in 0..${max}`);
  return node.v;
}

function decodeEntries(node, what) {
  if (node.t !== ARR) fail(what, 'entries are not an array');
  return node.v.map((x, i) => {
    const at = `${what} entry ${i}`;
    if (x.t !== ARR || x.v.length !== 5) fail(at, 'not [hlc, dev, seq, num, value]');
    const [hlc, dev, seq, num, v] = x.v;
    if (num.t !== INT || num.v > INT64_MAX) fail(at, 'num is not an int64');
    return { hlc: uintNode(hlc, UINT64_MAX, `${at} hlc`), dev: Number(uintNode(dev, UINT32_MAX, `${at} dev`)),
      seq: uintNode(seq, UINT64_MAX, `${at} seq`), num: num.v, v: nodeBytes(v, `${at} value`) };
  });
}

function decodeField(node, i) {
  const what = `record field ${i}`;
  if (node.t !== ARR || node.v.length !== 5) fail(what, 'not [name, key, type, entries, dead]');
  const [name, key, type, e, d] = node.v;
  if (name.t !== STR || !NAME_RE.test(name.v)) fail(what, 'invalid name');
  if (type.t !== INT || type.v < BigInt(LWW) || type.v > BigInt(STAGE)) fail(what, 'unknown type');
  return { name: name.v, key: nodeBytes(key, `${what} key`), type: Number(type.v),
    e: decodeEntries(e, what), d: decodeEntries(d, `${what} dead`) };
}

const sortedUnique = (xs, key) => xs.every((x, i) => i === 0 || key(xs[i - 1], x) < 0);

/* field_invariant_ok */
function fieldOk(f) {
  const key = keyOf(f.type);
  switch (f.type) {
    case LWW:
    case STAGE:
      return f.e.length <= 1 && f.d.length === 0;
    case MV:
    case SET:
      return sortedUnique(f.e, key) && sortedUnique(f.d, key) && removeDead(f.e, f.d, key).length === f.e.length;
    default: /* LOG, COUNTER */
      return f.d.length === 0 && sortedUnique(f.e, key);
  }
}

/**
 * Decode record bytes (a snapshot page, the local store) as
 * crdt_record_decode does: the bounded walk, then the structure, then every
 * invariant.  Like C it accepts a non-shortest encoding of any integer or
 * string header and normalises it, so encodeRecord may give other bytes only
 * for such input.  Throws an Error saying what is wrong.
 */
export function decodeRecord(bytes) {
  const root = readMsgpack(bytes, RECORD_LIMITS, 'record');
  if (root.t !== MAP || root.v.length !== 4) fail('record', 'not a map of "f", "i", "k", "t"');
  const m = {};
  for (const [k, v] of root.v) {
    if (!['f', 'i', 'k', 't'].includes(k.v)) fail('record', `unknown key "${k.v}"`);
    m[k.v] = v;
  }
  if (m.f.t !== ARR) fail('record', '"f" is not an array');
  if (m.k.t !== STR || !NAME_RE.test(m.k.v)) fail('record', 'invalid kind');
  if (m.i.t !== STR || !RECID_RE.test(m.i.v)) fail('record', 'invalid record id');
  const rec = { kind: m.k.v, id: m.i.v, fields: m.f.v.map(decodeField), tomb: tombField(decodeEntries(m.t, 'tombstone')) };
  if (!fieldOk(rec.tomb)) fail('record', 'more than one tombstone entry');
  rec.fields.forEach((f, i) => {
    if (!fieldOk(f)) fail('record', `field "${f.name}" breaks the ${TYPE_NAMES[f.type]} invariants`);
    if (i && fieldCmp(rec.fields[i - 1], f) >= 0) fail('record', `fields out of order at "${f.name}"`);
  });
  return rec;
}

/* ---- deltas (crdt/codec.c) ---------------------------------------------------------------- */

const present = (x) => x !== undefined && x !== null;

function uintIn(x, lo, hi, what) {
  if (!isInt(x) || BigInt(x) < lo || BigInt(x) > hi) fail(what, `not an integer in ${lo}..${hi}`);
  return BigInt(x);
}

/* One op, checked as check_op_shape does, with its key and value as bytes. */
function checkOp(op, i) {
  const what = `delta op ${i}`;
  if (!OP_NAMES.includes(op?.o)) fail(what, `unknown op "${op?.o}"`);
  if (present(op.x) && !Array.isArray(op.x)) fail(what, '"x" is not an array of [dev, seq]');
  const x = (op.x ?? []).map((dot, j) => {
    if (!Array.isArray(dot) || dot.length !== 2) fail(what, `observed dot ${j} is not [dev, seq]`);
    return { dev: Number(uintIn(dot[0], 0n, UINT32_MAX, `${what} dot ${j} dev`)),
      seq: uintIn(dot[1], 1n, UINT64_MAX, `${what} dot ${j} seq`) };
  });
  if (isRecordOp(op.o)) {
    if (present(op.f) || present(op.k) || present(op.v)) fail(what, `"${op.o}" takes no field, key or value`);
    if (x.length) fail(what, `"${op.o}" takes no observed dots`);
    return { o: op.o, f: null, k: null, v: null, key: null, val: null, x };
  }
  if (!present(op.f)) fail(what, 'missing field');
  if (typeof op.f !== 'string' || !NAME_RE.test(op.f)) fail(what, `invalid field name "${op.f}"`);
  if (!present(op.v)) fail(what, 'missing value');
  if (present(op.k) && typeof op.k !== 'string' && !isInt(op.k)) fail(what, 'field key is not an integer or string');
  if (x.length && op.o !== 'set' && op.o !== 'rem') fail(what, `"${op.o}" takes no observed dots`);
  x.forEach((dot, j) => { if (j && dotCmp(x[j - 1], dot) >= 0) fail(what, 'observed dots not sorted and unique'); });
  return { o: op.o, f: op.f, k: op.k ?? null, v: op.v, key: present(op.k) ? valueBytes(op.k, `${what} key`) : null,
    val: valueBytes(op.v, `${what} value`), x };
}

/* The structural rules shared by encoder and decoder (delta_check_struct),
 * on a JS delta; returns it normalised: ints as bigint/number, op keys and
 * values as canonical bytes. */
function checkDelta(delta) {
  const d = {
    dev: Number(uintIn(delta.d, 0n, UINT32_MAX, 'delta "d" (device)')),
    epoch: Number(uintIn(delta.e, 1n, UINT32_MAX, 'delta "e" (key epoch)')),
    hlc: uintIn(delta.h, 0n, UINT64_MAX, 'delta "h" (hlc)'),
    seq: uintIn(delta.s, 1n, UINT64_MAX, 'delta "s" (seq)'),
    kind: delta.k, id: delta.i, prev: delta.p,
  };
  if (typeof d.kind !== 'string' || !NAME_RE.test(d.kind)) fail('delta', `invalid kind "${d.kind}"`);
  if (typeof d.id !== 'string' || !RECID_RE.test(d.id)) fail('delta', `invalid record id "${d.id}"`);
  if (!(d.prev instanceof Uint8Array) || d.prev.length !== HASH_BYTES) fail('delta', '"p" is not 32 bytes');
  if (d.seq === 1n && d.prev.some((b) => b !== 0)) fail('delta', 'seq 1 needs 32 zero bytes as "p"');
  if (!Array.isArray(delta.o) || delta.o.length === 0) fail('delta', 'no ops');
  if (delta.o.length > DELTA_LIMITS.maxOps) fail('delta', `more than ${DELTA_LIMITS.maxOps} ops`);
  d.ops = delta.o.map(checkOp);
  /* One op per field instance (per element for set ops), one record op. */
  d.ops.forEach((o, i) => {
    for (const q of d.ops.slice(0, i)) {
      if (o.f === null || q.f === null) {
        if (o.f !== q.f) continue;
      } else if (o.f !== q.f || blobCmp(o.key, q.key) ||
                 (isElemOp(o.o) && isElemOp(q.o) && blobCmp(o.val, q.val))) continue;
      fail(`delta op ${i}`, 'a second op on the same field instance (or element, or record)');
    }
  });
  return d;
}

/**
 * The canonical bytes of a delta (crdt_delta_encode; docs/PROTOCOL.md
 * "Deltas"): {d, e, h, i, k, o: [{f, k, o, v, x}...], p: bin, s}, keys in
 * bytewise order, shortest ints, absent op members and an empty x omitted.
 * delta = {d: dev, e: epoch, h: hlc (bigint), i: id, k: kind, o: ops,
 * p: Uint8Array(32), s: seq (bigint)}; ints may be numbers or bigints; dots
 * [dev, seq].  Throws for a delta the decoder would refuse.
 */
export function encodeDelta(delta) {
  const d = checkDelta(delta);
  const w = new Writer();
  w.map(8);
  w.str('d');
  w.int(d.dev);
  w.str('e');
  w.int(d.epoch);
  w.str('h');
  w.int(d.hlc);
  w.str('i');
  w.str(d.id);
  w.str('k');
  w.str(d.kind);
  w.str('o');
  w.arr(d.ops.length);
  for (const op of d.ops) {
    w.map(1 + (op.f !== null) + (op.key !== null) + (op.val !== null) + (op.x.length > 0));
    if (op.f !== null) {
      w.str('f');
      w.str(op.f);
    }
    if (op.key) {
      w.str('k');
      w.raw(op.key);
    }
    w.str('o');
    w.str(op.o);
    if (op.val) {
      w.str('v');
      w.raw(op.val);
    }
    if (op.x.length) {
      w.str('x');
      w.arr(op.x.length);
      for (const { dev, seq } of op.x) {
        w.arr(2);
        w.int(dev);
        w.int(seq);
      }
    }
  }
  w.str('p');
  w.bin(d.prev);
  w.str('s');
  w.int(d.seq);
  return w.done();
}

function decodeOp(node, i) {
  const what = `delta op ${i}`;
  if (node.t !== MAP) fail(what, 'not a map');
  const op = {};
  for (const [k, v] of node.v) {
    switch (k.v) {
      case 'f':
        if (v.t !== STR) fail(what, '"f" is not a string');
        op.f = v.v;
        break;
      case 'k':
        if (v.t !== STR && v.t !== INT) fail(what, 'field key is not an integer or string');
        op.k = nodeValue(v, `${what} key`);
        break;
      case 'o':
        if (v.t !== STR) fail(what, '"o" is not a string');
        op.o = v.v;
        break;
      case 'v':
        if (v.t === NIL) fail(what, 'nil value (an absent value is left out)');
        op.v = nodeValue(v, `${what} value`);
        break;
      case 'x':
        if (v.t !== ARR) fail(what, '"x" is not an array');
        op.x = v.v.map((dot) => {
          if (dot.t !== ARR || dot.v.length !== 2) fail(what, 'observed dot is not [dev, seq]');
          return [Number(uintNode(dot.v[0], UINT32_MAX, `${what} dot dev`)), uintNode(dot.v[1], UINT64_MAX, `${what} dot seq`)];
        });
        break;
      default:
        fail(what, `unknown key "${k.v}"`);
    }
  }
  if (op.o === undefined) fail(what, 'missing "o"');
  return op;
}

/**
 * Decode untrusted delta bytes as crdt_delta_decode does: the bounded walk
 * (default limits), types and ranges, the structural rules, and finally
 * canonical form (re-encoding must give the same bytes).  Returns {d, e,
 * h: bigint, i, k, o: [{f?, k?, o, v?, x?: [[dev, seq: bigint]...]}...],
 * p: Uint8Array, s: bigint}; integer keys and values are numbers (bigints
 * beyond 2^53).  Throws an Error saying what is wrong.
 */
export function decodeDelta(bytes) {
  const root = readMsgpack(bytes, DELTA_LIMITS, 'delta');
  if (root.t !== MAP) fail('delta', 'not a map');
  const d = {};
  for (const [k, v] of root.v) {
    switch (k.v) {
      case 'd': d.d = Number(uintNode(v, UINT32_MAX, 'delta "d"')); break;
      case 'e': d.e = Number(uintNode(v, UINT32_MAX, 'delta "e"')); break;
      case 'h': d.h = uintNode(v, UINT64_MAX, 'delta "h"'); break;
      case 's': d.s = uintNode(v, UINT64_MAX, 'delta "s"'); break;
      case 'i':
      case 'k':
        if (v.t !== STR) fail('delta', `"${k.v}" is not a string`);
        d[k.v] = v.v;
        break;
      case 'o':
        if (v.t !== ARR) fail('delta', '"o" is not an array');
        d.o = v.v.map(decodeOp);
        break;
      case 'p':
        if (v.t !== BIN) fail('delta', '"p" is not binary');
        d.p = v.v;
        break;
      default:
        fail('delta', `unknown key "${k.v}"`);
    }
  }
  for (const k of ['d', 'e', 'h', 'i', 'k', 'o', 'p', 's']) if (d[k] === undefined) fail('delta', `missing "${k}"`);
  const again = encodeDelta(d);
  if (blobCmp(again, bytes) !== 0) fail('delta', 'not the canonical encoding');
  return { d: d.d, e: d.e, h: d.h, i: d.i, k: d.k, o: d.o, p: d.p, s: d.s };
}

/* ---- reading records for the UI ------------------------------------------------------------ */

/* The field instance (name, key), or null (crdt_record_field); throws if it
 * exists with a type other than `types`. */
function fieldOf(rec, name, key, types, helper) {
  const kb = present(key) ? valueBytes(key, `${helper} key`) : null;
  let lo = 0, hi = rec.fields.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1, f = rec.fields[mid];
    const c = cmp(f.name, name) || blobCmp(f.key, kb);
    if (c === 0) {
      if (!types.includes(f.type)) fail(helper, `"${name}" is a ${TYPE_NAMES[f.type]} field`);
      return f;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return null;
}

const stamped = (x) => ({ value: decodeValue(x.v), dev: x.dev, seq: x.seq, hlc: x.hlc });

/** The keys of field `name` present in rec, in record order, decoded (int
 * keys as numbers: payment years); [null] for an unkeyed field present. */
export function fieldInstances(rec, name) {
  return rec.fields.filter((f) => f.name === name).map((f) => decodeValue(f.key));
}

/** What an lww field shows (its one winner) or an mv field shows (every
 * live write, more than one = a conflict, ordered by dot as in C):
 * [{value, dev, seq: bigint, hlc: bigint}]; [] if never written. */
export function visibleValues(rec, name, key = null) {
  return (fieldOf(rec, name, key, [LWW, MV], 'visibleValues')?.e ?? []).map(stamped);
}

/** The elements of a set field in byte order of their values, each with the
 * dots of its live adds: [{value, dots: [[dev, seq: bigint]...]}]. */
export function setElements(rec, name) {
  const out = [];
  let last = null;
  for (const x of fieldOf(rec, name, null, [SET], 'setElements')?.e ?? []) {
    if (last && blobCmp(last.v, x.v) === 0) last.dots.push([x.dev, x.seq]);
    else out.push((last = { v: x.v, value: decodeValue(x.v), dots: [[x.dev, x.seq]] }));
  }
  return out.map(({ value, dots }) => ({ value, dots }));
}

/** The entries of a log field in stamp order: [{value (object), dev, seq, hlc}]. */
export function logEntries(rec, name) {
  return (fieldOf(rec, name, null, [LOG], 'logEntries')?.e ?? []).map(stamped);
}

/** A counter's value: the sum of its increments, saturating at the int64
 * bounds as crdt_field_counter does, as a Number (0 if never incremented). */
export function counterValue(rec, name, key = null) {
  let sum = 0n;
  for (const x of fieldOf(rec, name, key, [COUNTER], 'counterValue')?.e ?? [])
    sum = sum + x.num > INT64_MAX ? INT64_MAX : sum + x.num < INT64_MIN ? INT64_MIN : sum + x.num;
  return Number(sum);
}

/** A stage field's current ordinal (index in the schema's "values"), or -1
 * if never raised (crdt_field_stage). */
export function stageIndex(rec, name, key = null) {
  const f = fieldOf(rec, name, key, [STAGE], 'stageIndex');
  return f?.e.length ? Number(f.e[0].num) : -1;
}

/** A stage field's current stage name, or null if never raised.  Records
 * store only the ordinal, so this needs the schema (compiled or JSON). */
export function stageValue(rec, name, key, schema) {
  const ord = stageIndex(rec, name, key);
  return ord < 0 ? null : schemaOf(schema).kinds.get(rec.kind)?.get(name)?.values[ord] ?? null;
}

/** Is the record tombstoned (its latest del/undel is a del)? */
export function isDeleted(rec) {
  const e = rec.tomb.e[0];
  return rec.tomb.e.length === 1 && e.v?.length === 1 && e.v[0] === 0xc3;
}

/** The dots an mv `set` must carry in `x` to supersede every value now
 * visible (sorted, as `x` must be): [[dev, seq: bigint]...]. */
export function observedDots(rec, name, key = null) {
  return (fieldOf(rec, name, key, [MV], 'observedDots')?.e ?? []).map((x) => [x.dev, x.seq]);
}

/** The dots of the live adds of element `elem` of a set field: the `x` of a
 * `rem` that removes it (sorted; [] if absent: such a rem removes nothing). */
export function addDots(rec, name, elem) {
  const vb = valueBytes(elem, 'addDots element');
  return (fieldOf(rec, name, null, [SET], 'addDots')?.e ?? []).filter((x) => blobCmp(x.v, vb) === 0)
    .map((x) => [x.dev, x.seq]);
}

/* ---- hybrid logical clock (crdt/hlc.c) ------------------------------------------------------ */

const HLC_MS_MAX = (1n << 48n) - 1n;

function wallMs(nowMs) {
  if (!Number.isFinite(nowMs) || nowMs < 0) throw new RangeError(`wall clock ${nowMs} is not a time`);
  const wall = BigInt(Math.floor(nowMs));
  if (wall > HLC_MS_MAX) throw new RangeError('wall clock beyond the 48-bit HLC range');
  return wall;
}

/* The smallest HLC greater than both `a` and the wall time (hlc_next). */
function hlcAfter(a, wall) {
  const ms = a >> 16n, ctr = a & 0xffffn;
  if (wall > ms) return wall << 16n;
  if (ctr < 0xffffn) return (ms << 16n) | (ctr + 1n);
  /* Counter exhausted within one ms: borrow the next millisecond. */
  if (ms >= HLC_MS_MAX) throw new RangeError('HLC beyond the 48-bit ms range');
  return (ms + 1n) << 16n;
}

/**
 * The HLC of a local event at wall time nowMs after state lastH
 * (crdt_hlc_now): (ms << 16) | counter, strictly greater than lastH.  When
 * the counter would pass 0xffff within one millisecond, the ms part
 * advances by one instead (logical time may run ahead of the wall; it never
 * runs back).  Throws a RangeError past the 48-bit ms range.
 */
export function hlcNext(lastH, nowMs) {
  return hlcAfter(uintIn(lastH, 0n, UINT64_MAX, 'hlc'), wallMs(nowMs));
}

/**
 * The clock state after seeing a remote HLC (crdt_hlc_recv): strictly greater
 * than both lastH and remoteH (and than the wall time nowMs, default 0).
 * Unlike the C it has no drift check: the server quarantines deltas more than
 * 24 h ahead before any phone sees them.
 */
export function hlcObserve(lastH, remoteH, nowMs = 0) {
  const a = uintIn(lastH, 0n, UINT64_MAX, 'hlc'), b = uintIn(remoteH, 0n, UINT64_MAX, 'remote hlc');
  return hlcAfter(a > b ? a : b, wallMs(nowMs));
}
