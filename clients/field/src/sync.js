/*
 * sync.js — one sync session with doorstepd (docs/PROTOCOL.md): hello,
 * enroll or auth, welcome (clock, scope purge and refill, required
 * rotation, soft revocation), push/ack with up to 4 pushes in flight and
 * rate-limit waits, then snapshot (first time, or the scope grew) or pull
 * from the cursor until caught up.
 *
 * Invariants (a phone may die or lose the network at any point)
 *   - An outbox entry leaves only in the transaction that records the ack
 *     (applied/duplicate: merged into the record; quarantined: into "held").
 *     A lost ack means the entry is sent again and comes back "duplicate".
 *   - A refused delta moves to "refused" with the server's reason, and the
 *     later deltas, which the server cannot have held (it stops at a gap),
 *     are signed again one seq lower, their dots remapped; so one refusal
 *     never blocks the volunteer's other edits.
 *   - The cursor moves in the transaction that stores the page it ends.
 *   - Nothing is ever signed twice for a seq the server holds (welcome.seq).
 */
import * as crdt from './crdt.js';
import * as db from './db.js';
import { generateKey, sign, verify } from './keys.js';
import { schema, withChainLock } from './model.js';
import {
  authInput, chainHash, checkServerUrl, decodeEnvelope, decodeFrame, deltaSignInput,
  encodeEnvelope, encodeFrame, enrollInput, equalBytes, keyInput, num, rotateInput, snapshotInput,
} from './proto.js';

const PUSH_MAX = 100;        /* deltas per push (server allows 500; smaller shows progress) */
const INFLIGHT_MAX = 4;
const TIMEOUT_MS = 15000;
const RATE_WAIT_MAX_MS = 60000;

/** An error with the server's code (negative) or a local one, for i18n. */
export class SyncError extends Error {
  constructor(code, message, retry = false) {
    super(message);
    this.code = code;
    this.retry = retry;
  }
}

/** A WebSocket that yields decoded frames in order. */
class Conn {
  constructor(url) {
    this.url = url;
    this.queue = [];
    this.waiters = [];
    this.closed = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url, 'doorstep.v1');
      } catch (e) {
        reject(new SyncError('connect', String(e), true));
        return;
      }
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      ws.onopen = () => resolve();
      ws.onmessage = (ev) => {
        if (!(ev.data instanceof ArrayBuffer)) return this.fail(new SyncError('proto', 'text frame'));
        let f;
        try { f = decodeFrame(new Uint8Array(ev.data)); } catch (e) {
          return this.fail(new SyncError('proto', e.message));
        }
        const w = this.waiters.shift();
        if (w) w.resolve(f); else this.queue.push(f);
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        const err = new SyncError('closed', `connection closed (${ev.code} ${ev.reason || ''})`, true);
        if (!this.closed) this.closed = err;
        reject(err);
        for (const w of this.waiters.splice(0)) w.reject(this.closed);
      };
    });
  }

  fail(err) {
    this.closed = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
    try { this.ws.close(); } catch { /* closing already */ }
  }

  send(obj) {
    if (this.closed) throw this.closed;
    this.ws.send(encodeFrame(obj));
  }

  /** The next frame, or a rejection on close / timeout. */
  next(timeout = TIMEOUT_MS) {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new SyncError('timeout', 'the server did not answer in time', true));
      }, timeout);
      const w = { resolve: (f) => { clearTimeout(t); resolve(f); },
        reject: (e) => { clearTimeout(t); reject(e); } };
      this.waiters.push(w);
    });
  }

  close() { try { this.ws.close(1000); } catch { /* already */ } }
}

function serverError(f) {
  return new SyncError(f.c, f.m || 'error', f.r === true);
}

/** Where to sync: the enrolled server, else this page's own origin. */
export function defaultServer() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/sync`;
}

async function hello(conn, pinned) {
  const h = await conn.next();
  if (h.t !== 'hello' || !(h.srv instanceof Uint8Array) || h.srv.length !== 32 ||
      !(h.n instanceof Uint8Array) || h.n.length !== 32)
    throw new SyncError('proto', 'first frame is not a hello');
  if (pinned && !equalBytes(pinned, h.srv))
    throw new SyncError('server_key', 'the server key differs from the one this phone enrolled with');
  return h;
}

/**
 * Enroll this phone with a one-time token: make the key pair, prove it,
 * store the device id, key, pinned server key and scope.  Then a first sync
 * fills the phone.  enr: {token, server, spk} from proto.parseEnrollment.
 */
export async function enroll(enr, volunteer, report = () => {}) {
  if (await db.meta('device')) throw new SyncError('enrolled', 'this phone is already enrolled');
  const server = checkServerUrl(enr.server || defaultServer());
  const conn = new Conn(server);
  report({ phase: 'connect' });
  await conn.open();
  try {
    const h = await hello(conn, enr.spk);
    const key = await generateKey();
    const sig = await sign(key, enrollInput(h.srv, h.n, enr.token, key.pub));
    conn.send({ t: 'enroll', tok: enr.token, pk: key.pub, sig });
    const w = await conn.next();
    if (w.t === 'error') throw serverError(w);
    if (w.t !== 'welcome') throw new SyncError('proto', 'expected welcome, got ' + w.t);
    const dev = num(w.d), epoch = num(w.e);
    await db.write((s) => {
      s.meta.put({ dev, epoch, srv: h.srv, server, volunteer: volunteer || '' }, 'device');
      s.meta.put({ [epoch]: key }, 'keys');
      s.meta.put({ seq: 0, head: new Uint8Array(32), hlc: 0n }, 'chain');
      s.meta.put(0, 'cursor');
      s.meta.put(null, 'scope'); /* unknown: the first sync takes a snapshot */
    });
    const sum = { pushed: 0, held: 0, refused: 0, pulled: 0, purged: 0 };
    await afterWelcome(conn, w, report, sum);
    await db.write((s) => s.meta.put({ ms: Date.now(), ok: true, sum }, 'last_sync'));
    return { dev };
  } finally {
    conn.close();
  }
}

/**
 * One whole sync: push everything pending, then bring the phone up to date.
 * report(progress) is called with {phase, pushed, total, pulled}.  Resolves
 * with a summary; throws SyncError (retry = true when trying later helps).
 */
export async function syncNow(report = () => {}) {
  const dev = await db.meta('device');
  if (!dev) throw new SyncError('not_enrolled', 'enroll first');
  const conn = new Conn(dev.server);
  const sum = { pushed: 0, held: 0, refused: 0, pulled: 0, purged: 0 };
  report({ phase: 'connect' });
  try {
    await conn.open();
    const h = await hello(conn, dev.srv);
    let keys = await db.meta('keys');
    let epoch = dev.epoch;
    const pend = await db.meta('pending_key');
    let w = await authenticate(conn, h, dev.dev, epoch, keys[epoch]);
    if (w.t === 'error' && w.c === -307 && pend && pend.epoch === epoch + 1) {
      /* A rotation the server confirmed but this phone did not record. */
      await finishRotation(pend);
      conn.close();
      return syncNow(report);
    }
    if (w.t === 'error') throw serverError(w);
    if (w.t !== 'welcome') throw new SyncError('proto', 'expected welcome, got ' + w.t);
    await afterWelcome(conn, w, report, sum);
    await db.write((s) => s.meta.put({ ms: Date.now(), ok: true, sum }, 'last_sync'));
    return sum;
  } catch (e) {
    await db.write((s) => s.meta.put({ ms: Date.now(), ok: false, code: e.code, msg: e.message },
      'last_sync')).catch(() => {});
    throw e;
  } finally {
    conn.close();
  }
}

async function authenticate(conn, h, dev, epoch, key) {
  const n = crypto.getRandomValues(new Uint8Array(32));
  const s = await sign(key, authInput(h.srv, h.n, n, dev, epoch));
  conn.send({ t: 'auth', d: dev, e: epoch, n, s });
  return conn.next();
}

async function afterWelcome(conn, w, report, sum) {
  const req = Array.isArray(w.req) ? w.req : [];
  await db.write((s) => s.meta.put(num(w.now) - Date.now(), 'clock'));
  const revoked = req.includes('revoked');
  await trimOutbox(num(w.seq));
  if (req.includes('rotate')) await rotate(conn, num(w.d));
  await push(conn, report, sum);
  if (revoked) await handIn(conn, report, sum, false);
  try {
    await applyScope(conn, w.scope.map(String), report, sum);
    await pull(conn, report, sum);
  } catch (e) {
    /* Soft-revoked while this session was open: the server keeps the
     * connection for pushes and refuses reads with SYNC_EREVOKED. */
    if (e instanceof SyncError && e.code === -305) await handIn(conn, report, sum, true);
    throw e;
  }
}

/**
 * The station soft-revoked this phone (lost or retired, docs/ADMIN.md): what
 * was recorded is handed in (the server keeps it in quarantine for review),
 * then the phone deletes its data.  If anything could not be handed in, the
 * data stays and the next sync tries again.  Always throws SyncError -305,
 * with `wiped` saying whether the data is gone.
 */
async function handIn(conn, report, sum, again) {
  if (again) await push(conn, report, sum);
  const left = await db.count('outbox');
  if (left === 0) await db.wipe();
  const e = new SyncError(-305, 'this phone was revoked by the station', false);
  e.wiped = left === 0;
  e.soft = true;
  throw e;
}

/** Drop outbox entries the server already holds (its chain reaches them). */
async function trimOutbox(held) {
  const chain = await db.meta('chain');
  if (held > chain.seq)
    throw new SyncError('chain', 'the server holds more of this phone\'s edits than the phone (restored from an old copy?)');
  await db.write(async (s, req) => {
    const keys = await req(s.outbox.getAllKeys(IDBKeyRange.upperBound(held)));
    for (const k of keys) s.outbox.delete(k);
  });
}

async function rotate(conn, dev) {
  const d = await db.meta('device');
  const keys = await db.meta('keys');
  const chain = await db.meta('chain');
  const ne = d.epoch + 1;
  const nk = await generateKey();
  await db.write((s) => s.meta.put({ epoch: ne, key: nk }, 'pending_key'));
  const msg = rotateInput(dev, ne, nk.pub, chain.seq);
  const so = await sign(keys[d.epoch], msg), sn = await sign(nk, msg);
  conn.send({ t: 'rotate', e: ne, pk: nk.pub, seal: chain.seq, sn, so });
  const r = await conn.next();
  if (r.t === 'error') throw serverError(r);
  if (r.t !== 'rotated') throw new SyncError('proto', 'expected rotated, got ' + r.t);
  await finishRotation({ epoch: ne, key: nk });
}

async function finishRotation(p) {
  await db.write(async (s, req) => {
    const d = await req(s.meta.get('device'));
    const keys = await req(s.meta.get('keys'));
    keys[p.epoch] = p.key;
    d.epoch = p.epoch;
    s.meta.put(keys, 'keys');
    s.meta.put(d, 'device');
    s.meta.delete('pending_key');
  });
}

/* ---- push ---------------------------------------------------------------------- */

async function push(conn, report, sum) {
  const total = await db.count('outbox');
  let pushed = 0, nextId = 1, stalls = 0;
  report({ phase: 'push', pushed, total });
  for (;;) {
    const out = await db.all('outbox');
    if (!out.length) return;
    const flights = [];
    for (let i = 0; i < out.length && flights.length < INFLIGHT_MAX; i += PUSH_MAX) {
      const batch = out.slice(i, i + PUSH_MAX);
      const id = nextId++;
      conn.send({ t: 'push', id, d: batch.map((o) => o.env) });
      flights.push({ id, batch });
    }
    let again = false, waitMs = 0, refusedSeq = null;
    for (let k = 0; k < flights.length; k++) {
      const f = await nextFor(conn, flights.map((x) => x.id));
      const fl = flights.find((x) => x.id === f.id);
      if (f.t === 'error') {
        if (f.c === -316) waitMs = Math.max(waitMs, Math.min(num(f.ra || 1000), RATE_WAIT_MAX_MS));
        else if (!f.r) throw serverError(f);
        again = true;
        continue;
      }
      const res = await recordAck(fl.batch, f.r, sum);
      pushed += res.done;
      if (res.refused !== null && (refusedSeq === null || res.refused < refusedSeq)) refusedSeq = res.refused;
      if (res.gap) again = true;
      report({ phase: 'push', pushed, total });
    }
    if (refusedSeq !== null) await renumberAfter(refusedSeq);
    if (waitMs) {
      report({ phase: 'wait', ms: waitMs, pushed, total });
      await new Promise((r) => setTimeout(r, waitMs));
    } else if (again && refusedSeq === null && ++stalls > 20) {
      throw new SyncError('stalled', 'the server keeps refusing to take the edits now', true);
    } else if (again) {
      await new Promise((r) => setTimeout(r, 200 * Math.min(stalls, 10)));
    }
  }
}

/** The ack or error answering one of ids (other frames are protocol errors). */
async function nextFor(conn, ids) {
  for (;;) {
    const f = await conn.next();
    if ((f.t === 'ack' || f.t === 'error') && ids.includes(num(f.id || 0))) {
      f.id = num(f.id);
      return f;
    }
    if (f.t === 'error') throw serverError(f);
    if (f.t === 'changes' && num(f.id) === 0) continue; /* live changes: not subscribed here */
    throw new SyncError('proto', 'unexpected ' + f.t + ' while pushing');
  }
}

/**
 * Record one ack: applied/duplicate → merged into the local record and out
 * of the outbox; quarantined → held; rejected (not a gap) → refused.
 * Returns {done, refused: lowest refused seq or null, gap}.
 */
async function recordAck(batch, results, sum) {
  const { compiled } = await schema();
  const res = { done: 0, refused: null, gap: false };
  if (!Array.isArray(results) || results.length !== batch.length)
    throw new SyncError('proto', 'ack does not answer every delta');
  await db.write(async (s, req) => {
    for (let i = 0; i < batch.length; i++) {
      const o = batch[i], r = results[i];
      if (r.r === 'applied' || r.r === 'duplicate') {
        const key = db.recordKey(o.kind, o.id);
        const row = await req(s.records.get(key));
        const rec = row ? crdt.decodeRecord(row.bytes) : crdt.newRecord(o.kind, o.id);
        crdt.applyDelta(rec, crdt.decodeDelta(o.delta), compiled);
        s.records.put(recordRow(o.kind, o.id, rec), key);
        s.outbox.delete(o.seq);
        res.done++;
        sum.pushed++;
      } else if (r.r === 'quarantined') {
        s.held.put({ seq: o.seq, kind: o.kind, id: o.id, code: num(r.c), reason: r.m, summary: o.summary,
          delta: o.delta, at: Date.now() }, o.seq);
        s.outbox.delete(o.seq);
        res.done++;
        sum.held++;
      } else if (r.r === 'rejected' && r.c === -210) {
        res.gap = true;
      } else if (r.r === 'rejected') {
        s.refused.put({ seq: o.seq, kind: o.kind, id: o.id, code: r.c, message: r.m, summary: o.summary,
          delta: o.delta, at: Date.now() });
        s.outbox.delete(o.seq);
        if (res.refused === null) res.refused = o.seq;
        sum.refused++;
        res.done++;
      } else {
        throw new SyncError('proto', 'unknown ack result ' + r.r);
      }
    }
  });
  return res;
}

export function recordRow(kind, id, rec) {
  const hh = kind === 'household' ? id : (crdt.visibleValues(rec, 'household', null)[0] || {}).value || null;
  return { kind, id, bytes: crdt.encodeRecord(rec), hh };
}

/**
 * The server refused seq r and so holds nothing after it: sign every later
 * outbox delta again, one seq lower each step past a refused one, chained
 * from the last held hash, with dots on refused seqs dropped and the others
 * moved with their deltas.
 */
async function renumberAfter(r) {
  await withChainLock(async () => {
    const dev = await db.meta('device');
    const keys = await db.meta('keys');
    const out = (await db.all('outbox')).filter((o) => o.seq > r);
    const chain = await db.meta('chain');
    /* The head before r: the hash of the newest delta below r the server
     * holds.  Everything below r was acked, so recompute from outbox-free
     * history: the refused delta's own p field is that hash. */
    const refused = (await db.all('refused')).filter((x) => x.seq === r).pop();
    let head = crdt.decodeDelta(refused.delta).p;
    let seq = r - 1;
    const map = new Map();
    const rows = [];
    for (const o of out) {
      const d = crdt.decodeDelta(o.delta);
      seq++;
      map.set(o.seq, seq);
      for (const op of d.o) {
        if (!op.x) continue;
        op.x = op.x.filter(([dv, s]) => !(dv === dev.dev && Number(s) === r))
          .map(([dv, s]) => (dv === dev.dev && map.has(Number(s)) ? [dv, BigInt(map.get(Number(s)))] : [dv, s]));
        if (!op.x.length) delete op.x;
      }
      d.s = BigInt(seq);
      d.p = head;
      d.e = dev.epoch;
      const bytes = crdt.encodeDelta(d);
      const env = encodeEnvelope(bytes, await sign(keys[dev.epoch], deltaSignInput(bytes)));
      head = chainHash(bytes);
      rows.push({ ...o, seq, env, delta: bytes });
    }
    await db.write(async (s, req) => {
      const cur = await req(s.meta.get('chain'));
      if (cur.seq !== chain.seq) throw new Error('chain moved during renumbering');
      for (const o of out) s.outbox.delete(o.seq);
      for (const o of rows) s.outbox.put(o, o.seq);
      s.meta.put({ seq, head, hlc: cur.hlc }, 'chain');
    });
  });
}

/* ---- scope, snapshot, pull ------------------------------------------------------ */

async function applyScope(conn, scope, report, sum) {
  const old = await db.meta('scope');
  const now = new Set(scope);
  const added = !old || scope.some((h) => !old.includes(h));
  if (old) {
    const gone = new Set(old.filter((h) => !now.has(h)));
    if (gone.size) {
      await db.write(async (s, req) => {
        for (const row of await req(s.records.getAll()))
          if (row.hh && gone.has(row.hh) && !now.has(row.hh)) {
            s.records.delete(db.recordKey(row.kind, row.id));
            sum.purged++;
          }
      });
    }
  }
  await db.write((s) => s.meta.put(scope, 'scope'));
  if (added) await snapshot(conn, report, null, sum);
}

/** Fetch merged records (all of the scope, or the persons in ids) and merge them in. */
async function snapshot(conn, report, ids, sum) {
  const dev = await db.meta('device');
  const id = 1000 + Math.floor(Math.random() * 1000);
  conn.send(ids ? { t: 'snapshot', id, k: ids } : { t: 'snapshot', id });
  let page = 0, n = 0;
  for (;;) {
    const f = await conn.next(60000);
    if (f.t === 'error') throw serverError(f);
    if (f.t !== 'snapshot' || num(f.id) !== id) throw new SyncError('proto', 'expected a snapshot page');
    const recs = f.r || [];
    if (num(f.p) !== page) throw new SyncError('proto', 'snapshot pages out of order');
    const ok = await verify(dev.srv, snapshotInput(dev.dev, num(f.n), page, f.more === true, recs), f.g);
    if (!ok) throw new SyncError('snapshot_sig', 'a snapshot page is not signed by the server');
    n = num(f.n);
    await db.write(async (s, req) => {
      for (const b of recs) {
        const rec = crdt.decodeRecord(b);
        const key = db.recordKey(rec.kind, rec.id);
        const row = await req(s.records.get(key));
        const merged = row ? crdt.mergeRecord(crdt.decodeRecord(row.bytes), rec) : rec;
        s.records.put(recordRow(rec.kind, rec.id, merged), key);
      }
      if (!ids) {
        const cur = (await req(s.meta.get('cursor'))) || 0;
        if (!f.more && n > cur) s.meta.put(n, 'cursor');
      }
    });
    sum.pulled += recs.length;
    report({ phase: 'snapshot', pulled: sum.pulled });
    if (!f.more) return n;
    page++;
  }
}

/*
 * Persons new to the phone (created, or moved into one of its households)
 * have a history older than the cursor, so they are fetched merged with
 * `snapshot` `k`.  Their ids are stored ("fetch") in the transaction that
 * moves the cursor past their deltas, and leave only once fetched, so a sync
 * cut off in between fetches them next time instead of losing them.
 */
async function fetchPersons(conn, report, sum) {
  for (;;) {
    const ids = (await db.meta('fetch')) || [];
    if (!ids.length) return;
    const batch = ids.slice(0, 500);
    await snapshot(conn, report, batch, sum);
    await db.write(async (s, req) => {
      const cur = (await req(s.meta.get('fetch'))) || [];
      s.meta.put(cur.filter((x) => !batch.includes(x)), 'fetch');
    });
  }
}

/*
 * Every envelope of a changes frame, verified back to the phone that signed
 * it (docs/PROTOCOL.md, "Key records"): each key record {d, e, g, p} must be
 * signed by the server key pinned at enrollment, and each envelope must
 * verify under its (device, epoch)'s key (the server's own, device 0, under
 * the server key).  Throws SyncError('forged') before anything is applied.
 */
export async function verifyChanges(f, srv) {
  const keys = new Map();
  for (const r of f.k || []) {
    if (!(r && r.g instanceof Uint8Array && r.p instanceof Uint8Array && r.p.length === 32))
      throw new SyncError('forged', 'a key record is malformed');
    if (!(await verify(srv, keyInput(num(r.d), num(r.e), r.p), r.g)))
      throw new SyncError('forged', `the key record of device ${num(r.d)} is not signed by the server`);
    keys.set(`${num(r.d)}/${num(r.e)}`, r.p);
  }
  for (const env of f.e || []) {
    const e = decodeEnvelope(env);
    const d = crdt.decodeDelta(e.b);
    const pk = num(d.d) === 0 ? srv : keys.get(`${num(d.d)}/${num(d.e)}`);
    if (!pk) throw new SyncError('forged', `no key record for device ${num(d.d)}`);
    if (!(await verify(pk, deltaSignInput(e.b), e.s)))
      throw new SyncError('forged', `the change of device ${num(d.d)} seq ${num(d.s)} is not signed by its key`);
  }
}

async function pull(conn, report, sum) {
  const { compiled } = await schema();
  await fetchPersons(conn, report, sum);
  for (let id = 501; ; id++) {
    const a = (await db.meta('cursor')) || 0;
    conn.send({ t: 'pull', id, a, m: 500 });
    const f = await conn.next(60000);
    if (f.t === 'error') throw serverError(f);
    if (f.t !== 'changes' || num(f.id) !== id) throw new SyncError('proto', 'expected changes');
    await verifyChanges(f, (await db.meta('device')).srv);
    await db.write(async (s, req) => {
      const chain = await req(s.meta.get('chain'));
      const fetch = new Set((await req(s.meta.get('fetch'))) || []);
      let hlc = chain.hlc;
      for (const env of f.e || []) {
        const d = crdt.decodeDelta(decodeEnvelope(env).b);
        hlc = crdt.hlcObserve(hlc, d.h);
        const key = db.recordKey(d.k, d.i);
        const row = await req(s.records.get(key));
        if (!row && d.k === 'person') {
          fetch.add(d.i);
          continue;
        }
        const rec = row ? crdt.decodeRecord(row.bytes) : crdt.newRecord(d.k, d.i);
        crdt.applyDelta(rec, d, compiled);
        s.records.put(recordRow(d.k, d.i, rec), key);
        sum.pulled++;
      }
      s.meta.put({ ...chain, hlc }, 'chain');
      s.meta.put([...fetch], 'fetch');
      s.meta.put(num(f.n), 'cursor');
    });
    await fetchPersons(conn, report, sum);
    report({ phase: 'pull', pulled: sum.pulled });
    if (!f.more) return;
  }
}
