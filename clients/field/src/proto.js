/*
 * proto.js — the bytes of the Doorstep wire protocol on the phone
 * (docs/PROTOCOL.md): frames, the auth / enroll / rotate signing inputs,
 * envelopes and chain hashes.
 *
 * Invariants
 *   - Frames this module builds are canonical msgpack (keys in bytewise
 *     order, shortest integers), as the server's are; the signed delta bytes
 *     come from crdt.encodeDelta, which reproduces tests/vectors byte for byte.
 *   - Every domain string is followed by its NUL byte, exactly as the server
 *     builds the signing input (wire/envelope.c, wire/handshake.c).
 *   - Nothing here does I/O or keeps state; keys are opaque to it (see keys.js).
 */
import { encode, decode } from '@msgpack/msgpack';
import { blake2b } from '@noble/hashes/blake2.js';

const te = new TextEncoder();

/** Encode a frame canonically: sorted keys, shortest ints, BigInt as 64-bit. */
export function encodeFrame(obj) {
  return encode(obj, { sortKeys: true, useBigInt64: true, ignoreUndefined: true });
}

/**
 * Decode a frame from the server.  Integers above 2^53 come back as BigInt
 * (useBigInt64 turns every 64-bit msgpack integer into BigInt); num() below
 * converts the ones that fit.  Throws on malformed input.
 */
export function decodeFrame(bytes) {
  const f = decode(bytes, { useBigInt64: true, maxStrLength: 4096, maxBinLength: 262144,
    maxArrayLength: 1024, maxMapLength: 1024 });
  if (!f || typeof f !== 'object' || Array.isArray(f) || typeof f.t !== 'string')
    throw new Error('server frame is not a map with a string t');
  return f;
}

/** A msgpack integer (number or BigInt) as a JS number; throws above 2^53. */
export function num(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= 0n) return Number(v);
  throw new Error('expected an integer, got ' + typeof v);
}

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

function be32(v) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v); return b; }
function be64(v) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v)); return b; }
function domain(s) { return concat(te.encode(s), new Uint8Array([0])); }

/** 121 bytes: "doorstep/v1/auth" NUL || srv || server nonce || client nonce || d BE32 || e BE32. */
export function authInput(srv, serverNonce, clientNonce, dev, epoch) {
  return concat(domain('doorstep/v1/auth'), srv, serverNonce, clientNonce, be32(dev), be32(epoch));
}

/** "doorstep/v1/enroll" NUL || srv || server nonce || token bytes || pk. */
export function enrollInput(srv, serverNonce, token, pk) {
  return concat(domain('doorstep/v1/enroll'), srv, serverNonce, te.encode(token), pk);
}

/** "doorstep/v1/rotate" NUL || d BE32 || new epoch BE32 || new pk || seal BE64. */
export function rotateInput(dev, newEpoch, pk, seal) {
  return concat(domain('doorstep/v1/rotate'), be32(dev), be32(newEpoch), pk, be64(seal));
}

/** The bytes a device signs for a delta: "doorstep/v1/delta" NUL || delta bytes. */
export function deltaSignInput(deltaBytes) {
  return concat(domain('doorstep/v1/delta'), deltaBytes);
}

/** Chain hash: BLAKE2b-256("doorstep/v1/delta-hash" NUL || delta bytes). */
export function chainHash(deltaBytes) {
  return blake2b(concat(domain('doorstep/v1/delta-hash'), deltaBytes), { dkLen: 32 });
}

/** The canonical envelope {"b": delta bytes, "s": signature}. */
export function encodeEnvelope(deltaBytes, sig) {
  if (sig.length !== 64) throw new Error('signature must be 64 bytes');
  return encodeFrame({ b: deltaBytes, s: sig });
}

export function decodeEnvelope(bytes) {
  const e = decode(bytes);
  if (!e || !(e.b instanceof Uint8Array) || !(e.s instanceof Uint8Array))
    throw new Error('envelope is not {b, s}');
  return e;
}

/** Key record signing input: "doorstep/v1/key" NUL || d BE32 || e BE32 || pk (docs/PROTOCOL.md, `changes`). */
export function keyInput(dev, epoch, pk) {
  return concat(domain('doorstep/v1/key'), be32(dev), be32(epoch), pk);
}

/** Snapshot page signing input (docs/PROTOCOL.md, `snapshot`). */
export function snapshotInput(dev, n, page, more, records) {
  const parts = [];
  for (const r of records) parts.push(be32(r.length), r);
  const digest = blake2b(concat(...parts), { dkLen: 32 });
  return concat(domain('doorstep/v1/snapshot'), be32(dev), be64(n), be32(page),
    new Uint8Array([more ? 1 : 0]), digest);
}

export function hex(b) { return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(''); }
export function unhex(s) {
  if (s.length % 2 || /[^0-9a-f]/i.test(s)) throw new Error('bad hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16);
  return out;
}
export function equalBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Parse what `doorstepctl device enroll` prints or puts in its QR code:
 * the URI doorstep://enroll?server=…&token=…&spk=…, or a bare token.
 * Returns {token, server (or null), spk (Uint8Array or null)}; throws with a
 * message for anything else.
 */
export function parseEnrollment(text) {
  const t = String(text || '').trim();
  if (/^doorstep:\/\/enroll\?/i.test(t)) {
    const q = new URLSearchParams(t.slice(t.indexOf('?') + 1));
    const token = (q.get('token') || '').toLowerCase();
    if (!/^[a-z2-7]{26}$/.test(token)) throw new Error('token');
    const spkHex = q.get('spk');
    const spk = spkHex ? unhex(spkHex) : null;
    if (spk && spk.length !== 32) throw new Error('spk');
    const server = q.get('server');
    return { token, server: server || null, spk };
  }
  const token = t.replace(/[\s-]/g, '').toLowerCase();
  if (!/^[a-z2-7]{26}$/.test(token)) throw new Error('token');
  return { token, server: null, spk: null };
}

/** ws:// only to a loopback host; everything else must be wss://. */
export function checkServerUrl(url) {
  let u;
  try { u = new URL(url); } catch { throw new Error('url'); }
  if (u.protocol === 'wss:') return u.href;
  if (u.protocol === 'ws:' && /^(127\.\d+\.\d+\.\d+|localhost|\[::1\])$/.test(u.hostname)) return u.href;
  throw new Error('insecure');
}
