/*
 * crdt.js — merged records on the phone: a port of crdt/record.c (and the
 * bits of codec.c, val.c, hlc.c it needs), so that the phone merges the
 * deltas it pulls or makes exactly as the server does and ends with the same
 * canonical record bytes (crdt_record_encode).
 *
 * Field states (join-semilattices, DESIGN.md §3; record.c's header):
 *   lww      the entry with the greatest stamp (hlc, dev, seq)
 *   stage    the entry with the greatest (ordinal, stamp); ordinal in `num`
 *   mv, set  entries ∪ entries, dead ∪ dead, minus entries whose key is dead
 *            (mv keyed by dot; set by (element bytes, dot))
 *   log      entries ∪ entries, keyed and ordered by stamp
 *   counter  entries ∪ entries (one per dot), value = sum of `num`
 * and the tombstone is an lww of bool.  Equal keys with different entries
 * keep the greater by (stamp, num, value bytes), as in C.
 *
 * Representation: Record = {kind, id, fields: [Field] sorted by (name, key
 * bytes), tomb: Field}; Field = {name, key: Uint8Array|null (msgpack bytes of
 * the field key), type (1..6), e: [Entry], d: [Entry]}; Entry = {hlc: BigInt,
 * dev: number, seq: BigInt, num: BigInt, v: Uint8Array|null (canonical
 * msgpack of the value)}.  Values stay as bytes, so encoding is exact.
 */
import { decode } from '@msgpack/msgpack';

export const FIELD_TYPES = { lww: 1, mv: 2, set: 3, log: 4, counter: 5, stage: 6 };
const LWW = 1, MV = 2, SET = 3, LOG = 4, COUNTER = 5, STAGE = 6;
const te = new TextEncoder();

/* ---- canonical msgpack writer ----------------------------------------------------- */

class Writer {
  constructor() { this.buf = new Uint8Array(256); this.n = 0; }
  room(k) {
    if (this.n + k <= this.buf.length) return;
    let c = this.buf.length * 2;
    while (c < this.n + k) c *= 2;
    const b = new Uint8Array(c); b.set(this.buf.subarray(0, this.n)); this.buf = b;
  }
  byte(x) { this.room(1); this.buf[this.n++] = x; }
  bytes(b) { this.room(b.length); this.buf.set(b, this.n); this.n += b.length; }
  be(v, k) { /* big-endian k-byte unsigned of BigInt v */
    this.room(k);
    for (let i = k - 1; i >= 0; i--) { this.buf[this.n + i] = Number(v & 0xffn); v >>= 8n; }
    this.n += k;
  }
  int(x) {
    const v = BigInt(x);
    if (v >= 0n) {
      if (v < 128n) this.byte(Number(v));
      else if (v < 256n) { this.byte(0xcc); this.be(v, 1); }
      else if (v < 65536n) { this.byte(0xcd); this.be(v, 2); }
      else if (v < 4294967296n) { this.byte(0xce); this.be(v, 4); }
      else { this.byte(0xcf); this.be(v, 8); }
    } else if (v >= -32n) this.byte(Number(v + 256n));
    else if (v >= -128n) { this.byte(0xd0); this.be(v + 256n, 1); }
    else if (v >= -32768n) { this.byte(0xd1); this.be(v + 65536n, 2); }
    else if (v >= -2147483648n) { this.byte(0xd2); this.be(v + 4294967296n, 4); }
    else { this.byte(0xd3); this.be(v + 18446744073709551616n, 8); }
  }
  str(s) {
    const b = te.encode(s);
    if (b.length < 32) this.byte(0xa0 | b.length);
    else if (b.length < 256) { this.byte(0xd9); this.be(BigInt(b.length), 1); }
    else if (b.length < 65536) { this.byte(0xda); this.be(BigInt(b.length), 2); }
    else { this.byte(0xdb); this.be(BigInt(b.length), 4); }
    this.bytes(b);
  }
  bin(b) {
    if (b.length < 256) { this.byte(0xc4); this.be(BigInt(b.length), 1); }
    else if (b.length < 65536) { this.byte(0xc5); this.be(BigInt(b.length), 2); }
    else { this.byte(0xc6); this.be(BigInt(b.length), 4); }
    this.bytes(b);
  }
  arr(n) {
    if (n < 16) this.byte(0x90 | n);
    else if (n < 65536) { this.byte(0xdc); this.be(BigInt(n), 2); }
    else { this.byte(0xdd); this.be(BigInt(n), 4); }
  }
  map(n) {
    if (n < 16) this.byte(0x80 | n);
    else if (n < 65536) { this.byte(0xde); this.be(BigInt(n), 2); }
    else { this.byte(0xdf); this.be(BigInt(n), 4); }
  }
  value(x) {
    if (x === null || x === undefined) this.byte(0xc0);
    else if (x === true) this.byte(0xc3);
    else if (x === false) this.byte(0xc2);
    else if (typeof x === 'number' || typeof x === 'bigint') {
      if (typeof x === 'number' && !Number.isInteger(x)) throw new Error('floats are not allowed');
      this.int(x);
    } else if (typeof x === 'string') this.str(x);
    else if (x instanceof Uint8Array) this.bin(x);
    else if (Array.isArray(x)) { this.arr(x.length); for (const y of x) this.value(y); }
    else if (typeof x === 'object') {
      const keys = Object.keys(x).filter((k) => x[k] !== undefined).sort(cmpStrBytes);
      this.map(keys.length);
      for (const k of keys) { this.str(k); this.value(x[k]); }
    } else throw new Error('cannot encode ' + typeof x);
  }
  done() { return this.buf.slice(0, this.n); }
}

function cmpStrBytes(a, b) { return blobCmp(te.encode(a), te.encode(b)); }

/** Canonical msgpack bytes of a JS value (bytewise-sorted keys, shortest ints). */
export function encodeValue(x) { const w = new Writer(); w.value(x); return w.done(); }

function decodeValue(b) { return b ? normInts(decode(b, { useBigInt64: true })) : null; }

/* Integers that fit in a double as numbers, larger ones stay BigInt. */
function normInts(x) {
  if (typeof x === 'bigint') return x >= -9007199254740991n && x <= 9007199254740991n ? Number(x) : x;
  if (Array.isArray(x)) return x.map(normInts);
  if (x && typeof x === 'object' && !(x instanceof Uint8Array)) {
    const o = {};
    for (const [k, v] of Object.entries(x)) o[k] = normInts(v);
    return o;
  }
  return x;
}

/* ---- comparisons (record.c) --------------------------------------------------------- */

export function blobCmp(a, b) {
  const an = a ? a.length : 0, bn = b ? b.length : 0, m = Math.min(an, bn);
  for (let i = 0; i < m; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return an === bn ? 0 : an < bn ? -1 : 1;
}
const big = (x, y) => (x === y ? 0 : x < y ? -1 : 1);
function dotCmp(a, b) { return a.dev !== b.dev ? (a.dev < b.dev ? -1 : 1) : big(a.seq, b.seq); }
function stampCmp(a, b) { return a.hlc !== b.hlc ? big(a.hlc, b.hlc) : dotCmp(a, b); }
function fullCmp(a, b) { return stampCmp(a, b) || big(a.num, b.num) || blobCmp(a.v, b.v); }
const keyDot = dotCmp;
function keyElem(a, b) { return blobCmp(a.v, b.v) || dotCmp(a, b); }
const keyStamp = stampCmp;
function keyOf(type) { return type === SET ? keyElem : type === LOG ? keyStamp : keyDot; }
function fieldCmp(a, b) {
  return a.name !== b.name ? (cmpStrBytes(a.name, b.name)) : blobCmp(a.key, b.key);
}

function unionSorted(a, b, key) {
  const out = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (j === b.length) out.push(a[i++]);
    else if (i === a.length) out.push(b[j++]);
    else {
      const c = key(a[i], b[j]);
      if (c < 0) out.push(a[i++]);
      else if (c > 0) out.push(b[j++]);
      else { out.push(fullCmp(a[i], b[j]) >= 0 ? a[i] : b[j]); i++; j++; }
    }
  }
  return out;
}

function removeDead(e, d, key) {
  let j = 0;
  return e.filter((x) => {
    while (j < d.length && key(d[j], x) < 0) j++;
    return !(j < d.length && key(d[j], x) === 0);
  });
}

function fieldMerge(a, b) {
  const type = a.type, key = keyOf(type);
  const out = { name: a.name, key: a.key, type, e: [], d: [] };
  switch (type) {
    case LWW:
    case STAGE: {
      let w = null;
      if (!a.e.length) w = b.e[0] || null;
      else if (!b.e.length) w = a.e[0];
      else {
        const x = a.e[0], y = b.e[0];
        if (type === STAGE && x.num !== y.num) w = x.num > y.num ? x : y;
        else w = fullCmp(x, y) >= 0 ? x : y;
      }
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
      throw new Error('unknown field type ' + type);
  }
  return out;
}

/* ---- records ---------------------------------------------------------------------- */

export function newRecord(kind, id) {
  return { kind, id, fields: [], tomb: { name: '', key: null, type: LWW, e: [], d: [] } };
}

function recordMergeInto(r, o) {
  if (r.kind !== o.kind || r.id !== o.id) throw new Error('merging different records');
  const nf = [];
  let i = 0, j = 0;
  while (i < r.fields.length || j < o.fields.length) {
    const c = j === o.fields.length ? -1 : i === r.fields.length ? 1 : fieldCmp(r.fields[i], o.fields[j]);
    if (c < 0) nf.push(r.fields[i++]);
    else if (c > 0) nf.push(o.fields[j++]);
    else {
      if (r.fields[i].type !== o.fields[j].type) throw new Error('field type mismatch: ' + r.fields[i].name);
      nf.push(fieldMerge(r.fields[i++], o.fields[j++]));
    }
  }
  r.fields = nf;
  r.tomb = fieldMerge(r.tomb, o.tomb);
  return r;
}

/** a ⊔ b as a new record (crdt_record_merge); a and b are not changed. */
export function mergeRecord(a, b) {
  return recordMergeInto({ ...a, fields: a.fields.slice() }, b);
}

/** The schema as lookups: kinds[kind].fields[name] = {type, values, ...spec}. */
export function compileSchema(json) {
  const kinds = {};
  for (const k of json.kinds) {
    const fields = {};
    for (const f of k.fields) fields[f.name] = { ...f, type: FIELD_TYPES[f.crdt], vtype: f.type };
    kinds[k.name] = { fields };
  }
  return { kinds };
}

function fieldOfOp(ks, d, op) {
  const st = { hlc: d.h, dev: d.d, seq: d.s, num: 0n, v: null };
  if (op.o === 'del' || op.o === 'undel')
    return { tomb: true, f: { name: '', key: null, type: LWW, e: [{ ...st, v: new Uint8Array([op.o === 'del' ? 0xc3 : 0xc2]) }], d: [] } };
  const fs = ks.fields[op.f];
  if (!fs) throw new Error('unknown field ' + op.f);
  const f = { name: op.f, key: op.k === undefined || op.k === null ? null : encodeValue(op.k), type: fs.type, e: [], d: [] };
  const v = op.v === undefined ? null : encodeValue(op.v);
  const dots = (op.x || []).map(([dev, seq]) => ({ hlc: 0n, dev: Number(dev), seq: BigInt(seq), num: 0n, v: null }));
  switch (fs.type) {
    case LWW:
    case MV:
      if (op.o !== 'set') throw new Error('op ' + op.o + ' on ' + op.f);
      f.e = [{ ...st, v }];
      if (fs.type === MV && dots.length) { f.d = dots; f.e = removeDead(f.e, f.d, keyDot); }
      break;
    case SET:
      if (op.o === 'add') f.e = [{ ...st, v }];
      else if (op.o === 'rem') f.d = dots.map((x) => ({ ...x, v }));
      else throw new Error('op ' + op.o + ' on ' + op.f);
      break;
    case LOG:
      if (op.o !== 'app') throw new Error('op ' + op.o + ' on ' + op.f);
      f.e = [{ ...st, v }];
      break;
    case COUNTER:
      if (op.o !== 'inc') throw new Error('op ' + op.o + ' on ' + op.f);
      f.e = [{ ...st, num: BigInt(op.v) }];
      break;
    case STAGE: {
      if (op.o !== 'raise') throw new Error('op ' + op.o + ' on ' + op.f);
      const ord = fs.values.indexOf(op.v);
      if (ord < 0) throw new Error('unknown stage ' + op.v);
      f.e = [{ ...st, num: BigInt(ord) }];
      break;
    }
    default:
      throw new Error('bad field type');
  }
  return { tomb: false, f };
}

/** Merge one delta into rec (crdt_record_apply); rec is changed and returned. */
export function applyDelta(rec, d, schema) {
  if (d.k !== rec.kind || d.i !== rec.id) throw new Error('delta is for another record');
  const ks = schema.kinds[d.k];
  if (!ks) throw new Error('unknown kind ' + d.k);
  const one = newRecord(rec.kind, rec.id);
  const ops = [];
  for (const op of d.o) {
    const r = fieldOfOp(ks, d, op);
    if (r.tomb) one.tomb = r.f; else ops.push(r.f);
  }
  ops.sort(fieldCmp);
  for (const f of ops) {
    const last = one.fields[one.fields.length - 1];
    if (last && fieldCmp(last, f) === 0) one.fields[one.fields.length - 1] = fieldMerge(last, f);
    else one.fields.push(f);
  }
  return recordMergeInto(rec, one);
}

/* ---- record bytes ------------------------------------------------------------------- */

function writeEntries(w, es) {
  w.arr(es.length);
  for (const x of es) {
    w.arr(5); w.int(x.hlc); w.int(x.dev); w.int(x.seq); w.int(x.num);
    if (x.v && x.v.length) w.bytes(x.v); else w.byte(0xc0);
  }
}

/** Canonical record bytes, identical to crdt_record_encode. */
export function encodeRecord(r) {
  const w = new Writer();
  w.map(4); w.str('f'); w.arr(r.fields.length);
  for (const f of r.fields) {
    w.arr(5); w.str(f.name);
    if (f.key && f.key.length) w.bytes(f.key); else w.byte(0xc0);
    w.int(f.type); writeEntries(w, f.e); writeEntries(w, f.d);
  }
  w.str('i'); w.str(r.id); w.str('k'); w.str(r.kind); w.str('t'); writeEntries(w, r.tomb.e);
  return w.done();
}

function entriesOf(a) {
  if (!Array.isArray(a)) throw new Error('record entries are not an array');
  return a.map((x) => {
    if (!Array.isArray(x) || x.length !== 5) throw new Error('record entry is not [hlc, dev, seq, num, v]');
    return { hlc: BigInt(x[0]), dev: Number(x[1]), seq: BigInt(x[2]), num: BigInt(x[3]),
      v: x[4] === null ? null : encodeValue(x[4]) };
  });
}

/** Decode canonical record bytes (from a snapshot or the local store). */
export function decodeRecord(bytes) {
  const m = decode(bytes, { useBigInt64: true });
  if (!m || typeof m !== 'object' || !Array.isArray(m.f) || typeof m.i !== 'string' || typeof m.k !== 'string')
    throw new Error('not a record');
  const r = newRecord(m.k, m.i);
  r.fields = m.f.map((f) => {
    if (!Array.isArray(f) || f.length !== 5 || typeof f[0] !== 'string') throw new Error('bad record field');
    return { name: f[0], key: f[1] === null ? null : encodeValue(f[1]), type: Number(f[2]),
      e: entriesOf(f[3]), d: entriesOf(f[4]) };
  });
  r.tomb.e = entriesOf(m.t);
  return r;
}

/* ---- deltas ------------------------------------------------------------------------- */

/** Canonical delta bytes (docs/PROTOCOL.md "Deltas"); reproduces tests/vectors. */
export function encodeDelta(d) {
  const ops = d.o.map((op) => {
    const o = { o: op.o };
    if (op.f !== undefined && op.f !== null) o.f = op.f;
    if (op.k !== undefined && op.k !== null) o.k = op.k;
    if (op.v !== undefined) o.v = op.v;
    if (op.x && op.x.length) o.x = op.x.map(([dev, seq]) => [dev, seq]);
    return o;
  });
  return encodeValue({ d: d.d, e: d.e, h: d.h, i: d.i, k: d.k, o: ops, p: d.p, s: d.s });
}

/** Decode delta bytes: h and s as BigInt, dots as [number, BigInt]. */
export function decodeDelta(bytes) {
  const m = decode(bytes, { useBigInt64: true });
  if (!m || !Array.isArray(m.o) || !(m.p instanceof Uint8Array)) throw new Error('not a delta');
  return { d: Number(m.d), e: Number(m.e), h: BigInt(m.h), i: m.i, k: m.k, p: m.p, s: BigInt(m.s),
    o: m.o.map((op) => {
      const o = { o: op.o };
      if (op.f !== undefined) o.f = op.f;
      if (op.k !== undefined) o.k = normInts(op.k);
      if (op.v !== undefined) o.v = normInts(op.v);
      if (op.x) o.x = op.x.map(([dev, seq]) => [Number(dev), BigInt(seq)]);
      return o;
    }) };
}

/* ---- reading ------------------------------------------------------------------------ */

function fieldOf(rec, name, key) {
  const kb = key === null || key === undefined ? null : encodeValue(key);
  return rec.fields.find((f) => f.name === name && blobCmp(f.key, kb) === 0) || null;
}

/** The keys present for a keyed field (e.g. payment years), decoded. */
export function fieldInstances(rec, name) {
  return rec.fields.filter((f) => f.name === name).map((f) => decodeValue(f.key));
}

/** Live values of an lww (one) or mv (all concurrent) field instance. */
export function visibleValues(rec, name, key = null) {
  const f = fieldOf(rec, name, key);
  if (!f) return [];
  return f.e.map((x) => ({ value: decodeValue(x.v), dev: x.dev, seq: x.seq, hlc: x.hlc }));
}

/** Live set elements with the dots of their adds. */
export function setElements(rec, name) {
  const f = fieldOf(rec, name, null);
  const out = [];
  for (const x of f ? f.e : []) {
    const last = out[out.length - 1];
    if (last && blobCmp(last.v, x.v) === 0) last.dots.push([x.dev, x.seq]);
    else out.push({ v: x.v, value: decodeValue(x.v), dots: [[x.dev, x.seq]] });
  }
  return out.map(({ value, dots }) => ({ value, dots }));
}

/** Log entries in stamp order. */
export function logEntries(rec, name) {
  const f = fieldOf(rec, name, null);
  return (f ? f.e : []).map((x) => ({ value: decodeValue(x.v), dev: x.dev, seq: x.seq, hlc: x.hlc }));
}

export function counterValue(rec, name, key = null) {
  const f = fieldOf(rec, name, key);
  return f ? Number(f.e.reduce((a, x) => a + x.num, 0n)) : 0;
}

/** Ordinal of the current stage (index in the schema's values), or -1. */
export function stageIndex(rec, name, key = null) {
  const f = fieldOf(rec, name, key);
  return f && f.e.length ? Number(f.e[0].num) : -1;
}

export function isDeleted(rec) {
  return rec.tomb.e.length === 1 && rec.tomb.e[0].v && rec.tomb.e[0].v.length === 1 && rec.tomb.e[0].v[0] === 0xc3;
}

/** Dots an mv `set` must observe to supersede what is visible (sorted). */
export function observedDots(rec, name, key = null) {
  const f = fieldOf(rec, name, key);
  return (f ? f.e : []).map((x) => [x.dev, x.seq]);
}

/** Dots of the visible adds of a set element (for a `rem`). */
export function addDots(rec, name, elem) {
  const f = fieldOf(rec, name, null);
  const vb = encodeValue(elem);
  return (f ? f.e : []).filter((x) => blobCmp(x.v, vb) === 0).map((x) => [x.dev, x.seq]);
}

/* ---- hybrid logical clock (crdt/hlc.c) ------------------------------------------------ */

/**
 * The smallest HLC greater than both lastH and the wall time nowMs
 * (48-bit ms << 16 | 16-bit counter).  When the counter is exhausted within
 * one millisecond, the next millisecond is borrowed, as hlc.c does.
 */
export function hlcNext(lastH, nowMs) {
  const last = BigInt(lastH || 0n), ms = last >> 16n, ctr = last & 0xffffn, wall = BigInt(Math.floor(nowMs));
  if (wall > ms) return wall << 16n;
  if (ctr < 0xffffn) return (ms << 16n) | (ctr + 1n);
  return (ms + 1n) << 16n;
}

/** The clock after seeing a remote stamp: the greater of the two. */
export function hlcObserve(lastH, remoteH) {
  const a = BigInt(lastH || 0n), b = BigInt(remoteH);
  return a > b ? a : b;
}
