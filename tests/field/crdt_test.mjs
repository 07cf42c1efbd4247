// crdt_test.mjs — the field app's JS CRDT (clients/field/src/crdt.js) against
// the C one (crdt/record.c): tests/field/gen_records.c builds random histories
// of deltas and merges them in C; here JS must reach the same record bytes
// whatever the order (given, reversed, shuffled with duplicates and a store
// round trip), decode and re-encode C's records and merges byte for byte, read
// them as C does, give C's verdict on corrupted delta and record bytes, follow
// crdt/hlc.c, and reproduce the golden delta vectors.
//
// usage: node tests/field/crdt_test.mjs GEN_RECORDS tests/vectors/deltas.txt
// The seed is printed; DOORSTEP_SEED=N replays it, DOORSTEP_LONG=1 runs 10x more.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as crdt from '../../clients/field/src/crdt.js';

const [gen, vectorsPath] = process.argv.slice(2);
if (!gen || !vectorsPath) {
  console.error('usage: node tests/field/crdt_test.mjs GEN_RECORDS tests/vectors/deltas.txt');
  process.exit(64);
}
const seed = process.env.DOORSTEP_SEED
  ? BigInt(process.env.DOORSTEP_SEED)
  : crypto.getRandomValues(new BigUint64Array(1))[0];
console.log(`seed: ${seed} (replay with DOORSTEP_SEED=${seed})`);

const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
const schemaJson = JSON.parse(readFileSync(new URL('../../crdt/schema/yibao.json', import.meta.url)));
const schema = crdt.compileSchema(schemaJson);

// A seeded PRNG (mulberry32) for the JS side's orders.
let rs = Number(BigInt.asUintN(32, seed ^ (seed >> 32n)));
function rand(n) {
  rs = (rs + 0x6d2b79f5) >>> 0;
  let t = rs;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (((t ^ (t >>> 14)) >>> 0) % n);
}
function shuffle(a) {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rand(i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

let checks = 0;
const failures = [];
function check(ok, what, detail = '') {
  checks++;
  if (!ok) failures.push(`${what}${detail ? '\n      ' + detail : ''}`);
}
/* Where two hex strings first differ, with some context. */
function diff(want, got) {
  let i = 0;
  while (i < want.length && want[i] === got[i]) i++;
  const at = i >> 1, from = Math.max(0, (at - 8) * 2);
  return `first difference at byte ${at} (C ${want.length / 2} bytes, JS ${got.length / 2}):` +
    `\n      C  …${want.slice(from, from + 64)}\n      JS …${got.slice(from, from + 64)}`;
}
function sameHex(want, got, what) {
  check(want === got, what, want === got ? '' : diff(want, got));
}
/* Run f; the Error it threw, or null. */
function attempt(f) {
  try {
    f();
    return null;
  } catch (e) {
    return e;
  }
}

const seen = { ops: new Set(), conflicts: 0, keyed: 0, unseenRem: 0, bigSeq: 0, clones: 0, deleted: 0,
  deltaOk: 0, deltaBad: 0, recordOk: 0, recordBad: 0, normalized: 0, hlcRefused: 0 };

const res = spawnSync(gen, [String(seed), process.env.DOORSTEP_LONG ? '600' : '60'],
  { encoding: 'utf8', maxBuffer: 1 << 30 });
if (res.status !== 0) {
  console.error(`FAIL generator ${gen} exited ${res.status ?? res.signal}\n${res.stderr}`);
  process.exit(1);
}
const lines = res.stdout.trim().split('\n').map((l) => JSON.parse(l));

/* ---- histories --------------------------------------------------------------------- */

function replay(kind, id, deltas, roundTripAt = -1) {
  let rec = crdt.newRecord(kind, id);
  deltas.forEach((d, i) => {
    crdt.applyDelta(rec, d, schema);
    if (i === roundTripAt) rec = crdt.decodeRecord(crdt.encodeRecord(rec));
  });
  return hex(crdt.encodeRecord(rec));
}

const dotsHex = (dots) => JSON.stringify(dots.map(([d, s]) => [d, String(s)]));

/* The read helpers against what C read from the same record. */
function checkViews(n, rec, line) {
  const where = `history ${n}`;
  check(crdt.isDeleted(rec) === line.deleted, `${where}: isDeleted`, `C says ${line.deleted}`);
  if (line.deleted) seen.deleted++;
  const byName = new Map();
  for (const f of line.fields) byName.set(f.f, [...(byName.get(f.f) ?? []), f.k]);
  for (const [name, keys] of byName)
    check(JSON.stringify(crdt.fieldInstances(rec, name)) === JSON.stringify(keys), `${where}: fieldInstances(${name})`,
      `C ${JSON.stringify(keys)}, JS ${JSON.stringify(crdt.fieldInstances(rec, name))}`);
  for (const f of line.fields) {
    const at = `${where}: ${f.f}${f.k === null ? '' : `[${f.k}]`}`;
    const want = JSON.stringify(f.e);
    if (f.k !== null) seen.keyed++;
    switch (f.t) {
      case crdt.FIELD_TYPES.lww:
      case crdt.FIELD_TYPES.mv: {
        const vals = crdt.visibleValues(rec, f.f, f.k);
        check(dotsHex(vals.map((v) => [v.dev, v.seq])) === want, `${at}: visibleValues`, `C ${want}`);
        check(vals.every((v) => typeof v.hlc === 'bigint' && v.value !== undefined), `${at}: visibleValues shape`);
        if (f.t === crdt.FIELD_TYPES.mv) {
          check(dotsHex(crdt.observedDots(rec, f.f, f.k)) === want, `${at}: observedDots`, `C ${want}`);
          if (vals.length > 1) seen.conflicts++;
        }
        break;
      }
      case crdt.FIELD_TYPES.set: {
        const els = crdt.setElements(rec, f.f);
        check(dotsHex(els.flatMap((x) => x.dots)) === want, `${at}: setElements`, `C ${want}`);
        for (const x of els)
          check(dotsHex(crdt.addDots(rec, f.f, x.value)) === dotsHex(x.dots), `${at}: addDots(${x.value})`);
        break;
      }
      case crdt.FIELD_TYPES.log: {
        const es = crdt.logEntries(rec, f.f);
        check(dotsHex(es.map((x) => [x.dev, x.seq])) === want, `${at}: logEntries`, `C ${want}`);
        check(es.every((x) => typeof x.value === 'object' && typeof x.value.date === 'string'), `${at}: log values`);
        break;
      }
      case crdt.FIELD_TYPES.counter:
        check(crdt.counterValue(rec, f.f, f.k) === f.c, `${at}: counterValue`, `C ${f.c}, JS ${crdt.counterValue(rec, f.f, f.k)}`);
        break;
      default: {
        check(crdt.stageIndex(rec, f.f, f.k) === f.s, `${at}: stageIndex`, `C ${f.s}, JS ${crdt.stageIndex(rec, f.f, f.k)}`);
        const stages = schemaJson.kinds.find((k) => k.name === rec.kind).fields.find((x) => x.name === f.f).values;
        check(crdt.stageValue(rec, f.f, f.k, schema) === (f.s < 0 ? null : stages[f.s]), `${at}: stageValue`);
      }
    }
  }
}

function checkHistory(n, line) {
  const where = `history ${n} (${line.kind}/${line.id}, ${line.deltas.length} deltas)`;
  const deltas = [];
  const dots = new Map();
  for (const [i, h] of line.deltas.entries()) {
    const d = crdt.decodeDelta(unhex(h));
    sameHex(h, hex(crdt.encodeDelta(d)), `${where}: delta ${i} re-encodes`);
    deltas.push(d);
    for (const op of d.o) {
      seen.ops.add(op.o);
      if (op.o === 'rem' && !op.x) seen.unseenRem++;
    }
    if (d.s > BigInt(Number.MAX_SAFE_INTEGER)) seen.bigSeq++;
    const dot = `${d.d}/${d.s}`;
    if (dots.has(dot) && dots.get(dot) !== h) seen.clones++;
    dots.set(dot, h);
  }
  sameHex(line.record, replay(line.kind, line.id, deltas), `${where}: in the given order`);
  sameHex(line.record, replay(line.kind, line.id, deltas.slice().reverse()), `${where}: in reverse`);
  const dup = shuffle(deltas.flatMap((d) => (rand(3) ? [d] : [d, d, d].slice(0, 2 + rand(2)))));
  sameHex(line.record, replay(line.kind, line.id, dup, rand(dup.length)), `${where}: shuffled with duplicates`);

  const rec = crdt.decodeRecord(unhex(line.record));
  sameHex(line.record, hex(crdt.encodeRecord(rec)), `${where}: C record decodes and re-encodes`);
  checkViews(n, rec, line);
  for (const d of deltas.slice(0, 3)) { /* re-applying changes nothing */
    crdt.applyDelta(rec, d, schema);
    sameHex(line.record, hex(crdt.encodeRecord(rec)), `${where}: applying again is idempotent`);
  }
  /* A delta that does not fit the schema is refused and changes nothing. */
  const bad = { ...deltas[0], s: deltas[0].s + 1n, o: [{ f: 'no_such_field', o: 'set', v: 'x' }, ...deltas[0].o.slice(0, 1)] };
  check(attempt(() => crdt.applyDelta(rec, bad, schema)) !== null, `${where}: unknown field refused`);
  sameHex(line.record, hex(crdt.encodeRecord(rec)), `${where}: a refused delta leaves the record unchanged`);
}

/* ---- the other lines ----------------------------------------------------------------- */

function checkMerge(n, line) {
  const [ha, hb] = line.merge;
  const a = crdt.decodeRecord(unhex(ha)), b = crdt.decodeRecord(unhex(hb));
  sameHex(line.record, hex(crdt.encodeRecord(crdt.mergeRecord(a, b))), `merge ${n}: A ⊔ B`);
  sameHex(line.record, hex(crdt.encodeRecord(crdt.mergeRecord(b, a))), `merge ${n}: B ⊔ A`);
  sameHex(ha, hex(crdt.encodeRecord(a)), `merge ${n}: A unchanged by the merge`);
}

function checkMutatedDelta(n, line) {
  const bytes = unhex(line.mutated_delta);
  let d = null;
  const err = attempt(() => { d = crdt.decodeDelta(bytes); });
  check((err === null) === line.ok, `mutated delta ${n}: C ${line.ok ? 'accepts' : 'refuses'}, JS ${err ? 'refuses' : 'accepts'}`,
    `${err ? err.message : ''}\n      ${line.mutated_delta}`);
  if (err === null && line.ok) sameHex(line.mutated_delta, hex(crdt.encodeDelta(d)), `mutated delta ${n}: re-encodes`);
  if (line.ok) seen.deltaOk++;
  else seen.deltaBad++;
}

function checkMutatedRecord(n, line) {
  let rec = null;
  const err = attempt(() => { rec = crdt.decodeRecord(unhex(line.mutated_record)); });
  check((err === null) === line.ok, `mutated record ${n}: C ${line.ok ? 'accepts' : 'refuses'}, JS ${err ? 'refuses' : 'accepts'}`,
    `${err ? err.message : ''}\n      ${line.mutated_record}`);
  if (err === null && line.ok) sameHex(line.canon, hex(crdt.encodeRecord(rec)), `mutated record ${n}: re-encodes as C does`);
  if (!line.ok) seen.recordBad++;
  else if (line.canon === line.mutated_record) seen.recordOk++;
  else seen.normalized++;
}

function checkHlc(n, line) {
  const [name, args] = line.hlc_now ? ['hlcNext', line.hlc_now] : ['hlcObserve', line.hlc_recv];
  const want = args.at(-1);
  const [state, ...rest] = args.slice(0, -1).map(BigInt);
  let got = null;
  const err = attempt(() => {
    got = name === 'hlcNext' ? crdt.hlcNext(state, Number(rest[0])) : crdt.hlcObserve(state, rest[0], Number(rest[1]));
  });
  if (want === null) seen.hlcRefused++;
  check(want === null ? err instanceof RangeError : got === BigInt(want),
    `hlc ${n}: ${name}(${args.slice(0, -1).join(', ')})`, `C ${want}, JS ${err ? err.message : got}`);
}

let histories = 0;
lines.forEach((line, n) => {
  const run = line.deltas ? () => (histories++, checkHistory(n, line))
    : line.merge ? () => checkMerge(n, line)
    : line.mutated_delta !== undefined ? () => checkMutatedDelta(n, line)
    : line.mutated_record !== undefined ? () => checkMutatedRecord(n, line)
    : () => checkHlc(n, line);
  const err = attempt(run);
  check(err === null, `line ${n}: threw`, err?.stack);
});

/* ---- golden vectors ------------------------------------------------------------------- */

const vectors = [...readFileSync(vectorsPath, 'utf8').matchAll(/^(delta-[a-z-]+): ([0-9a-f]+)$/gm)];
check(vectors.length >= 3, 'golden delta vectors found', `${vectors.length} in ${vectorsPath}`);
for (const [, name, h] of vectors) {
  let again = '';
  const err = attempt(() => { again = hex(crdt.encodeDelta(crdt.decodeDelta(unhex(h)))); });
  check(err === null, `golden ${name} decodes`, err?.message);
  if (!err) sameHex(h, again, `golden ${name} re-encodes byte for byte`);
}

/* ---- golden record vectors (tests/vectors/records.txt, docs/RECORD.md) --------------- */

const recPath = new URL('records.txt', new URL('file://' + (vectorsPath.startsWith('/') ? '' : process.cwd() + '/') + vectorsPath));
const rv = Object.fromEntries([...readFileSync(recPath, 'utf8').matchAll(/^((?:delta|record)-[a-z0-9-]+): ([0-9a-f]+)$/gm)]
  .map(([, n, h]) => [n, h]));
check(['delta-a1', 'delta-a2', 'delta-b1', 'delta-b2', 'record-a', 'record-b', 'record-ab', 'record-ab-deleted']
  .every((n) => rv[n]), 'golden record vectors found', Object.keys(rv).join(' '));
{
  const built = (names) => {
    const r = crdt.newRecord('person', 'P-0001');
    for (const n of names) crdt.applyDelta(r, crdt.decodeDelta(unhex(rv[n])), schema);
    return r;
  };
  let a, b;
  const err = attempt(() => {
    a = built(['delta-a1', 'delta-a2']);
    b = built(['delta-b1']);
    sameHex(rv['record-a'], hex(crdt.encodeRecord(a)), 'record-a from its deltas, byte for byte');
    sameHex(rv['record-b'], hex(crdt.encodeRecord(b)), 'record-b from its deltas, byte for byte');
    sameHex(rv['record-ab'], hex(crdt.encodeRecord(crdt.mergeRecord(a, b))), 'record-ab = a ⊔ b');
    sameHex(rv['record-ab'], hex(crdt.encodeRecord(crdt.mergeRecord(b, a))), 'record-ab = b ⊔ a');
    sameHex(rv['record-ab-deleted'], hex(crdt.encodeRecord(built(['delta-b2', 'delta-b1', 'delta-a2', 'delta-a1']))),
      'record-ab-deleted from the four deltas, last first');
    for (const n of ['record-a', 'record-b', 'record-ab', 'record-ab-deleted'])
      sameHex(rv[n], hex(crdt.encodeRecord(crdt.decodeRecord(unhex(rv[n])))), `${n} decodes and re-encodes`);
    const ab = crdt.decodeRecord(unhex(rv['record-ab']));
    const names = crdt.visibleValues(ab, 'name').map((x) => x.value).sort();
    check(names.join('|') === '张三|张山', 'record-ab: name is a conflict of 张三 and 张山', names.join('|'));
    check(crdt.setElements(ab, 'tags').length === 0, 'record-ab: the removed tag is gone');
    check(crdt.counterValue(ab, 'errands_done') === 3n || crdt.counterValue(ab, 'errands_done') === 3,
      'record-ab: errands_done = 3', String(crdt.counterValue(ab, 'errands_done')));
    check(crdt.visibleValues(ab, 'note').map((x) => x.value).join() === '电话随访', 'record-ab: note = 电话随访');
    check(!crdt.isDeleted(ab) && crdt.isDeleted(crdt.decodeRecord(unhex(rv['record-ab-deleted']))),
      'record-ab-deleted is deleted, record-ab is not');
  });
  check(err === null, 'golden record vectors: no exception', err?.message);
}

/* ---- did the histories exercise what they should? ------------------------------------- */

for (const op of ['set', 'add', 'rem', 'app', 'inc', 'raise', 'del', 'undel'])
  check(seen.ops.has(op), `coverage: some delta has a "${op}" op`);
for (const k of ['conflicts', 'keyed', 'unseenRem', 'bigSeq', 'clones', 'deleted', 'deltaOk', 'deltaBad',
  'recordBad', 'normalized', 'hlcRefused'])
  check(seen[k] > 0, `coverage: ${k} > 0`);

console.log(`${histories} histories, ${lines.length} generator lines, ${checks} checks; seen: ` +
  Object.entries(seen).map(([k, v]) => `${k}=${v instanceof Set ? v.size : v}`).join(' '));
if (failures.length) {
  for (const f of failures.slice(0, 25)) console.log(`FAIL ${f}`);
  if (failures.length > 25) console.log(`… and ${failures.length - 25} more`);
  console.log(`${failures.length} of ${checks} checks failed (seed ${seed})`);
  process.exit(1);
}
console.log('all checks passed');
