/*
 * model.js — what the screens read and write: records as the phone sees
 * them (the server's merged record plus this phone's edits still in the
 * outbox) and edits turned into signed deltas.
 *
 * Invariants
 *   - The records store holds only what the server merged (snapshots,
 *     pulled changes, and this phone's deltas once acked as applied); the
 *     outbox is laid over it for display, so a refused or quarantined edit
 *     disappears from the record and shows in its own list instead.
 *   - Every edit is one delta: seq = chain.seq + 1, p = chain.head, h from
 *     the HLC; chain and outbox are written in one durable transaction under
 *     the "doorstep-chain" Web Lock, so two tabs never sign the same seq.
 */
import * as crdt from './crdt.js';
import * as db from './db.js';
import { sign } from './keys.js';
import { chainHash, deltaSignInput, encodeEnvelope } from './proto.js';

let schemaP = null;

/** The record schema (crdt/schema/yibao.json, copied into the build). */
export function schema() {
  if (!schemaP)
    schemaP = fetch(new URL('./schema.json', location.href)).then((r) => {
      if (!r.ok) throw new Error('schema.json: HTTP ' + r.status);
      return r.json();
    }).then((j) => ({ json: j, compiled: crdt.compileSchema(j) }));
  return schemaP;
}

export async function fieldSpec(kind, name) {
  const s = await schema();
  const k = s.json.kinds.find((x) => x.name === kind);
  return k && k.fields.find((f) => f.name === name);
}

export function withChainLock(fn) {
  if (navigator.locks) return navigator.locks.request('doorstep-chain', fn);
  return fn();
}

/** Local clock corrected by what the server said its time was. */
export async function nowMs() {
  return Date.now() + ((await db.meta('clock')) || 0);
}

/**
 * Sign an edit of one record and put it in the outbox.  ops: delta ops as in
 * docs/PROTOCOL.md ({f, k, o, v, x}).  Resolves with the seq once the outbox
 * entry is durable; throws if the phone is not enrolled.
 */
export async function commitEdit(kind, id, ops, summary) {
  return withChainLock(async () => {
    const dev = await db.meta('device');
    const keys = await db.meta('keys');
    if (!dev || !keys) throw new Error('not enrolled');
    const key = keys[dev.epoch];
    const chain = (await db.meta('chain')) || { seq: 0, head: new Uint8Array(32), hlc: 0n };
    const h = crdt.hlcNext(chain.hlc, await nowMs());
    const delta = { d: dev.dev, e: dev.epoch, h, i: id, k: kind, o: ops, p: chain.head,
      s: BigInt(chain.seq + 1) };
    const bytes = crdt.encodeDelta(delta);
    const env = encodeEnvelope(bytes, await sign(key, deltaSignInput(bytes)));
    const seq = chain.seq + 1;
    await db.write(async (s, req) => {
      const cur = await req(s.meta.get('chain'));
      if ((cur ? cur.seq : 0) !== chain.seq) throw new Error('chain moved during the edit');
      s.meta.put({ seq, head: chainHash(bytes), hlc: h }, 'chain');
      s.outbox.put({ seq, env, delta: bytes, kind, id, summary, at: Date.now() }, seq);
    });
    return seq;
  });
}

/** The record as the volunteer should see it: merged + pending edits. */
export async function view(kind, id) {
  const { compiled } = await schema();
  const row = await db.get('records', db.recordKey(kind, id));
  let rec = row ? crdt.decodeRecord(row.bytes) : null;
  const pending = (await db.all('outbox')).filter((o) => o.kind === kind && o.id === id);
  for (const o of pending) {
    if (!rec) rec = crdt.newRecord(kind, id);
    crdt.applyDelta(rec, crdt.decodeDelta(o.delta), compiled);
  }
  return rec ? { rec, pending: pending.length } : null;
}

/** Every record of a kind the phone holds or is creating, as views. */
export async function viewsOf(kind) {
  const { compiled } = await schema();
  const map = new Map();
  for (const row of await db.all('records'))
    if (row.kind === kind) map.set(row.id, { rec: crdt.decodeRecord(row.bytes), pending: 0 });
  for (const o of await db.all('outbox')) {
    if (o.kind !== kind) continue;
    let v = map.get(o.id);
    if (!v) map.set(o.id, (v = { rec: crdt.newRecord(kind, o.id), pending: 0 }));
    crdt.applyDelta(v.rec, crdt.decodeDelta(o.delta), compiled);
    v.pending++;
  }
  return map;
}

/** First visible value of an lww/mv field (or null). */
export function value(rec, name, key = null) {
  const v = crdt.visibleValues(rec, name, key);
  return v.length ? v[0].value : null;
}

/** The household a person record belongs to (or null). */
export function householdOf(rec) { return value(rec, 'household'); }
