/*
 * db.js — the phone's local store, in IndexedDB ("doorstep-field").
 *
 * Object stores
 *   meta     key → value: "device" {dev, epoch, srv, server, volunteer},
 *            "keys" {epoch → key record (keys.js)}, "pending_key" {epoch, key},
 *            "chain" {seq, head, hlc}, "cursor", "scope" [household ids],
 *            "clock" (ms to add to the phone's clock), "last_sync" {ms, ok, msg},
 *            "fetch" [person ids to fetch merged: new to the phone, seen in changes]
 *   records  "kind/id" → {kind, id, bytes (canonical record bytes), hh}
 *   outbox   seq → {seq, env, delta, kind, id, summary, at}: signed, not yet acked
 *   held     seq → {seq, kind, id, code, reason, summary, at}: the server kept it
 *            in quarantine for the station to review
 *   refused  auto id → {seq, delta, kind, id, code, message, summary, at}: the
 *            server refused it; kept so the volunteer and station can see it
 *
 * Invariants
 *   - An edit is written (chain advanced + outbox entry) in one transaction
 *     with durability "strict" before the screen says it is saved.
 *   - An outbox entry leaves only in the transaction that records the
 *     server's answer (records, held or refused), so nothing is lost between.
 *   - A page of changes and the cursor it ends at are written together.
 */
const NAME = 'doorstep-field';
const STORES = ['meta', 'records', 'outbox', 'held', 'refused'];

let dbp = null;

export function open() {
  if (dbp) return dbp;
  dbp = new Promise((resolve, reject) => {
    const r = indexedDB.open(NAME, 1);
    r.onupgradeneeded = () => {
      const db = r.result;
      db.createObjectStore('meta');
      db.createObjectStore('records');
      db.createObjectStore('outbox');
      db.createObjectStore('held');
      db.createObjectStore('refused', { autoIncrement: true });
    };
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
  return dbp;
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('transaction aborted'));
  });
}

function req(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/**
 * Run fn(stores) in one read-write transaction over all stores and wait for
 * it to commit durably.  fn must only issue IndexedDB requests (no other
 * awaits), or the transaction would commit early; it may return a value.
 */
export async function write(fn) {
  const db = await open();
  const tx = db.transaction(STORES, 'readwrite', { durability: 'strict' });
  const s = Object.fromEntries(STORES.map((n) => [n, tx.objectStore(n)]));
  let out;
  try {
    out = await fn(s, req);
  } catch (e) {
    try { tx.abort(); } catch { /* already finished */ }
    throw e;
  }
  await done(tx);
  return out;
}

export async function get(store, key) {
  const db = await open();
  return req(db.transaction(store).objectStore(store).get(key));
}

export async function all(store) {
  const db = await open();
  return req(db.transaction(store).objectStore(store).getAll());
}

export async function count(store) {
  const db = await open();
  return req(db.transaction(store).objectStore(store).count());
}

export async function meta(key) { return get('meta', key); }

export function recordKey(kind, id) { return kind + '/' + id; }

/** Delete everything (a revoked phone; "leave this device"). */
export async function wipe() {
  await write((s) => { for (const n of STORES) s[n].clear(); });
}
