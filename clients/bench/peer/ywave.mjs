// ywave.mjs — the evening wave against y-websocket with LevelDB, for doorstep-bench.
//
//   node ywave.mjs --devices D --deltas W [--trials T]
//
// The same wave doorstep-bench runs against doorstepd (clients/bench/net.c,
// run_wave), against the best-known open-source sync server of its kind on
// the same machine: y-websocket 1.5.4's server (bin/server.js, one Y.Doc per
// room, every update stored with y-leveldb), fresh with an empty LevelDB per
// trial.  D devices each own a room (as a phone owns its slice) and hold W
// updates made beforehand (each a transaction that fills in one person's
// fields: name, ID number, phone, address, payment, tags — about the
// content of one Doorstep delta).  The clock starts before the first connect
// and stops at the last "ack": y-websocket has no acknowledgement, so after
// its updates each client sends a sync step 1 and counts the server's step 2
// answer (the server handles a connection's messages in order, so the answer
// means every update before it was applied to the room's document and handed
// to y-leveldb).  What the peer does not do, and Doorstep does: verify a
// signature per update, fsync before answering, check schema and scope.
//
// Prints exactly one JSON object on stdout; progress on stderr.  Exit 0 on
// success, 1 on failure, 2 on bad usage.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const Y = require('yjs');
const syncProtocol = require('y-protocols/sync');
const encoding = require('lib0/encoding');
const decoding = require('lib0/decoding');
const WebSocket = require('ws');

function arg(name, def) {
  const i = process.argv.indexOf('--' + name);
  if (i < 0) return def;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 1 || v > 100000) {
    console.error(`ywave: --${name} needs an integer from 1 to 100000`);
    process.exit(2);
  }
  return v;
}
const DEVICES = arg('devices', 300), DELTAS = arg('deltas', 50), TRIALS = arg('trials', 3);
const version = (p) => JSON.parse(readFileSync(join(here, 'node_modules', p, 'package.json'), 'utf8')).version;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => ok(p)); });
  });
}

/* The server, fresh: its own port and an empty LevelDB directory. */
async function startServer(dir) {
  const port = await freePort();
  const proc = spawn(process.execPath, [join(here, 'node_modules', 'y-websocket', 'bin', 'server.js')],
    { env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), YPERSISTENCE: dir },
      stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('y-websocket did not start: ' + out)), 15000);
    const seen = (d) => { out += d; if (/running at/.test(out)) { clearTimeout(timer); ok(); } };
    proc.stdout.on('data', seen);
    proc.stderr.on('data', seen);
    proc.on('exit', (c) => { clearTimeout(timer); fail(new Error(`y-websocket exited ${c}: ${out}`)); });
  });
  return { proc, port };
}

function stopServer(s) {
  return new Promise((ok) => {
    if (s.proc.exitCode !== null) return ok();
    s.proc.on('exit', ok);
    s.proc.kill('SIGTERM');
    setTimeout(() => s.proc.kill('SIGKILL'), 5000);
  });
}

/* Device d's W updates, made before the clock starts, as sync messages. */
function buildUpdates(d) {
  const doc = new Y.Doc();
  const ups = [];
  doc.on('update', (u) => ups.push(u));
  const tags = ['低保', '灵活就业', '新生儿', '残疾'];
  for (let k = 0; k < DELTAS; k++) {
    doc.transact(() => {
      const p = doc.getMap(`P${String(d).padStart(4, '0')}-${k}`);
      p.set('name', ['张', '王', '李', '赵'][k % 4] + ['伟', '芳', '娜', '强'][d % 4]);
      p.set('id_number', `32050019${String(50 + (k % 40)).padStart(2, '0')}0101${String(d % 1000).padStart(3, '0')}${k % 10}`);
      p.set('phone', `138${String(d * 1000 + k).padStart(8, '0')}`);
      p.set('household', `H${String(d * 20 + (k % 20)).padStart(5, '0')}`);
      p.set('relation', k % 3 ? '子女' : '户主');
      p.set('insurance_type', '城乡居民');
      p.set('payment', new Y.Map([['2026', k % 2 ? '已缴费' : '代缴']]));
      p.set('tags', tags.slice(0, 1 + (k % 3)));
      p.set('note', `第${k}次走访，${['上门走访', '电话随访'][k % 2]}`);
    });
  }
  const msgs = ups.map((u) => {
    const e = encoding.createEncoder();
    encoding.writeVarUint(e, 0); // messageSync
    syncProtocol.writeUpdate(e, u);
    return encoding.toUint8Array(e);
  });
  return { msgs, bytes: ups.reduce((n, u) => n + u.length, 0) };
}

function step1() {
  const e = encoding.createEncoder();
  encoding.writeVarUint(e, 0);
  syncProtocol.writeSyncStep1(e, new Y.Doc());
  return encoding.toUint8Array(e);
}

/* One trial: every device connects at t0, syncs, sends its updates and a step 1; done at the last step 2. */
async function trial(n, devs) {
  const dir = mkdtempSync(join(tmpdir(), 'doorstep-ywave-'));
  const srv = await startServer(join(dir, 'leveldb'));
  const s1 = step1();
  const cpuOf = (pid) => {   // utime + stime of a process, seconds (/proc/PID/stat)
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  try {
    const scpu0 = cpuOf(srv.proc.pid), ccpu0 = process.cpuUsage();
    const t0 = performance.now();
    let last = t0, acked = 0;
    await Promise.all(devs.map((dv, i) => new Promise((ok, fail) => {
      const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/dev-${i}`);
      ws.binaryType = 'arraybuffer';
      let step2s = 0;
      ws.on('open', () => ws.send(s1));
      ws.on('message', (data) => {
        const dec = decoding.createDecoder(new Uint8Array(data));
        if (decoding.readVarUint(dec) !== 0 || decoding.readVarUint(dec) !== 1) return; // not a step 2
        if (++step2s === 1) {            // handshake done: the wave's pushes, then the "ack" request
          for (const m of dv.msgs) ws.send(m);
          ws.send(s1);
        } else {
          last = Math.max(last, performance.now());
          acked += dv.msgs.length;
          ws.close();
          ok();
        }
      });
      ws.on('error', fail);
      setTimeout(() => fail(new Error(`device ${i}: no answer in 120 s`)), 120000).unref();
    })));
    const ms = last - t0;
    const server_cpu_s = cpuOf(srv.proc.pid) - scpu0;
    const cc = process.cpuUsage(ccpu0), client_cpu_s = (cc.user + cc.system) / 1e6;
    console.error(`ywave: trial ${n}: ${devs.length} x ${DELTAS} updates in ${ms.toFixed(0)} ms ` +
      `(server ${server_cpu_s.toFixed(2)} CPU s, client ${client_cpu_s.toFixed(2)} CPU s)`);
    return { ms, acked, server_cpu_s, client_cpu_s };
  } finally {
    await stopServer(srv);
    rmSync(dir, { recursive: true, force: true });
  }
}

try {
  const devs = Array.from({ length: DEVICES }, (_, d) => buildUpdates(d + 1));
  const trials = [];
  for (let t = 0; t < TRIALS; t++) trials.push(await trial(t + 1, devs));
  const sorted = trials.map((t) => t.ms).sort((a, b) => a - b);
  const updates = DEVICES * DELTAS;
  console.log(JSON.stringify({
    peer: `y-websocket ${version('y-websocket')} server + y-leveldb ${version('y-leveldb')}, yjs ${version('yjs')}, node ${process.versions.node}`,
    devices: DEVICES, deltas_each: DELTAS, trials: trials.map((t) => Math.round(t.ms * 10) / 10),
    median_ms: sorted[Math.floor((sorted.length - 1) / 2)],
    server_cpu_s: trials.map((t) => t.server_cpu_s), client_cpu_s: trials.map((t) => Math.round(t.client_cpu_s * 100) / 100),
    updates_acked: trials.every((t) => t.acked === updates) ? updates : Math.min(...trials.map((t) => t.acked)),
    update_bytes_avg: devs.reduce((n, d) => n + d.bytes, 0) / updates,
  }));
  process.exit(0);
} catch (e) {
  console.error('ywave: ' + (e.stack || e));
  process.exit(1);
}
