// field.mjs BUILD_DIR [ARTIFACT_DIR] — the volunteers' field app in a real browser.
//
// Debian's headless Chromium (playwright-core) at a 390×844 phone viewport,
// against doorstepd serving BUILD_DIR/field at /field/ on a store filled by
// doorstep-sim.  As volunteers would:
//   1. Phone A enrolls by reading the QR code PNG that `doorstepctl device
//      enroll` wrote (the photo path; jsQR decodes it), and pulls its slice
//      (a server-signed snapshot).
//   2. Offline (context.setOffline): edits on several persons (phone, a
//      payment, a tag, a visit log entry) and a new person whose ID number is
//      checked as typed; reload while offline (the service worker opens the
//      app, the outbox survives); back online, sync: the staff API and
//      doorstepctl show every edit.
//   3. Phone B enrolls by typed token on the same households, and a phone on
//      the C device library (tests/field/cphone.c) too; all three give the same
//      person different names offline; after they sync, A, B, the C phone and
//      a freshly enrolled phone C (whose records come straight from the
//      server's snapshot) hold byte-identical records, and the staff API
//      lists the conflict.
//   4. Hostile paths: the station shrinks A's scope while A edits offline →
//      the edit comes back "held for review" with its reason in Chinese and
//      shows in the server's quarantine; the server dies mid-sync → the app
//      says it will retry, keeps the outbox, and a later sync delivers it.
// Screenshots of every screen go to ARTIFACT_DIR and are checked for the
// CJK font (no Chinese character may be drawn like a missing glyph).
// Exit codes: 0 pass, 1 fail, 77 skip (only when Debian's chromium is absent).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { inflateSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { boxedGlyphs, startDoorstepd, stopDoorstepd, until as pollUntil } from './common.mjs';

const CHROMIUM = '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const build = resolve(process.argv[2] || join(repo, 'build'));
const artifacts = resolve(process.argv[3] || join(build, 'e2e-artifacts', 'field'));
const PASSWORD = 'e2e-admin-password';

if (!existsSync(CHROMIUM)) {
  console.log(`SKIP: ${CHROMIUM} not found (scripts/install-deps installs Debian's chromium)`);
  process.exit(77);
}
const { chromium } = await import('playwright-core');
for (const f of ['doorstepd', 'doorstepctl', 'doorstep-sim', 'field_cphone', 'field/app.js']) {
  if (!existsSync(join(build, f))) { console.error(`FAIL: ${join(build, f)} not built`); process.exit(1); }
}

const tmp = mkdtempSync(join(tmpdir(), 'doorstep-field-e2e-'));
const data = join(tmp, 'data');
mkdirSync(artifacts, { recursive: true });
let server = null, pastErr = '', port = 0, browser = null, step = 'start';
const phones = [];

function ctl(...args) {
  return execFileSync(join(build, 'doorstepctl'), ['--data', data, ...args],
    { env: { ...process.env, DOORSTEP_ADMIN_PASSWORD: PASSWORD }, encoding: 'utf8' });
}
// The phone on the C device library (tests/field/cphone.c).
function cphone(...args) {
  return execFileSync(join(build, 'field_cphone'), [join(tmp, 'cphone'), join(repo, 'crdt', 'schema', 'yibao.json'),
    ...args], { encoding: 'utf8' }).trim();
}
function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); console.log('ok   ' + what); }

async function startServer() {
  if (server) pastErr += server.stderr();
  server = await startDoorstepd(join(build, 'doorstepd'), ['--data', data, '--listen', `127.0.0.1:${port}`,
    '--field', join(build, 'field'), '--static', join(repo, 'clients', 'dashboard'), '--log-level', '1']);
  port = server.port; // the same port again after a restart: phones keep their server URL
}
const stopServer = (sig) => stopDoorstepd(server, sig);
const serverErr = () => pastErr + (server ? server.stderr() : '');
const until = (page, fn, arg, what, ms = 20000) => pollUntil(page, fn, arg, what, ms);

// A screenshot, and a check that no Chinese glyph on the screen is drawn as
// a box (common.mjs, boxedGlyphs: each character against a missing glyph).
async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, name + '.png'), fullPage: true });
  const boxed = await boxedGlyphs(page);
  check(boxed.length === 0, `${name}: Chinese glyphs render with a CJK font` +
    (boxed.length ? ` (drawn as boxes: ${boxed.join('')})` : ''));
}

async function phone(name) {
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2,
    isMobile: true, hasTouch: true, locale: 'zh-CN', timezoneId: 'Asia/Shanghai' });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`[${name}] page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[${name}] console: ${m.text()}`); });
  await page.goto(`http://127.0.0.1:${port}/field/`);
  await page.waitForSelector('#do-enroll');
  const p = { ctx, page, name };
  phones.push(p);
  return p;
}

const outboxCount = (page) => page.evaluate(async () => (await window.doorstepField.db.count('outbox')));
async function syncAndWait(page, what) {
  const sum = await page.evaluate(async () => {
    const s = await window.doorstepField.runSync();
    return s ? { ...s } : null;
  });
  check(sum !== null, `${what}: sync succeeded`);
  return sum;
}
async function recordHex(page, kind, id) {
  return page.evaluate(async ([k, i]) => {
    const row = await window.doorstepField.db.get('records', `${k}/${i}`);
    return row ? Array.from(row.bytes, (b) => b.toString(16).padStart(2, '0')).join('') : null;
  }, [kind, id]);
}

async function login() {
  const r = await fetch(`http://127.0.0.1:${port}/api/login`, { method: 'POST',
    headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
  check(r.ok, 'staff API login');
  return r.headers.get('set-cookie').split(';')[0];
}
async function api(cookie, path) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { cookie } });
  return r.json();
}
const fieldValues = (p, name, key = null) =>
  p.fields.filter((f) => f.name === name && (key === null || String(f.key) === String(key)))
    .flatMap((f) => f.values.map((v) => v.value));

// The QR code PNG doorstepctl writes (1-bit grayscale) as a Y4M video, for
// Chromium's fake camera (--use-file-for-fake-video-capture): 640x480 frames,
// the code scaled to fit in the middle of a white frame.
function pngToY4m(pngPath, y4mPath) {
  const png = readFileSync(pngPath);
  const w = png.readUInt32BE(16), hgt = png.readUInt32BE(20), depth = png[24], ctype = png[25];
  if (depth !== 1 || ctype !== 0) throw new Error(`QR PNG is not 1-bit grayscale (${depth}, ${ctype})`);
  const idat = [];
  for (let o = 8; o < png.length;) {
    const len = png.readUInt32BE(o), type = png.toString('latin1', o + 4, o + 8);
    if (type === 'IDAT') idat.push(png.subarray(o + 8, o + 8 + len));
    o += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat)), stride = Math.ceil(w / 8);
  const rows = [];
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < hgt; y++) {
    const f = raw[y * (stride + 1)], line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const a = i ? line[i - 1] : 0, b = prev[i], c = i ? prev[i - 1] : 0;
      const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][f];
      line[i] = (line[i] + pred) & 0xff;
    }
    rows.push(line);
    prev = line;
  }
  const W = 640, H = 480, size = 440, y0 = (H - size) / 2, x0 = (W - size) / 2;
  const Y = Buffer.alloc(W * H, 235);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const sx = Math.floor((x * w) / size), sy = Math.floor((y * hgt) / size);
      const bit = (rows[sy][sx >> 3] >> (7 - (sx & 7))) & 1;
      Y[(y0 + y) * W + x0 + x] = bit ? 235 : 16;
    }
  const UV = Buffer.alloc((W / 2) * (H / 2), 128);
  const frame = Buffer.concat([Buffer.from('FRAME\n'), Y, UV, UV]);
  writeFileSync(y4mPath, Buffer.concat([Buffer.from(`YUV4MPEG2 W${W} H${H} F10:1 Ip A1:1 C420jpeg\n`), frame, frame, frame]));
}

async function main() {
  const year = new Date().getFullYear();
  step = 'init';
  ctl('init', '--campaign-year', String(year));
  await startServer();
  step = 'doorstep-sim';
  execFileSync(join(build, 'doorstep-sim'), ['--server', `ws://127.0.0.1:${port}`, '--data', data,
    '--volunteers', '4', '--households', '24', '--days', '1', '--seed', '7'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const cookie = await login();
  const ov = await api(cookie, '/api/overview');
  check(ov.station.visits_week > 0, `the demo's visits are dated by the clock: 本周走访 = ${ov.station.visits_week} on ${ov.today}`);
  const hhs = ['H00001', 'H00002', 'H00003'];
  const hh0 = await api(cookie, `/api/households/${hhs[0]}`);
  check(hh0.members && hh0.members.length > 0, 'the sim made households with members');
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'] });

  // 1. Phone A enrolls from the QR code picture.
  step = 'enroll A (QR)';
  const png = join(tmp, 'a.png');
  ctl('device', 'enroll', '--volunteer', '王芳', '--households', hhs.join(','),
    '--server', `ws://127.0.0.1:${port}/sync`, '--png', png, '--no-qr');
  const A = await phone('A');
  await shot(A.page, '01-enroll');
  await A.page.setInputFiles('#qr-file', png);
  await until(A.page, () => document.querySelector('#token').value.startsWith('doorstep://enroll?'), null, 'QR decoded');
  check(true, 'phone A read the QR code from the photo');
  await A.page.fill('#volunteer', '王芳');
  await A.page.click('#do-enroll');
  await until(A.page, () => location.hash === '#/' && document.querySelectorAll('.list li').length >= 3, null,
    'households listed', 30000);
  check(true, 'phone A enrolled and shows its 3 households');
  await shot(A.page, '02-households');

  // 2. Offline edits, reload offline, sync.
  step = 'offline edits';
  const person = hh0.members[0].id, person2 = hh0.members[hh0.members.length > 1 ? 1 : 0].id;
  await A.ctx.setOffline(true);
  await A.page.goto(`http://127.0.0.1:${port}/field/#/h/${hhs[0]}`);
  await A.page.waitForSelector('#add-visit');
  await shot(A.page, '03-household');
  await A.page.click(`a[href="#/p/${person}"]`);
  await A.page.waitForSelector('[data-field="phone"] input');
  await A.page.fill('[data-field="phone"] input', '12345');
  check((await A.page.textContent('[data-field="phone"] .err')).includes('电话号码格式不对'), 'a bad phone number is refused as typed');
  await A.page.fill('[data-field="phone"] input', '13912345678');
  await A.page.click('[data-field="phone"] button');
  await until(A.page, () => document.querySelector('.toast') && document.querySelector('.toast').textContent.includes('已保存'), null, 'saved toast');
  await A.page.waitForSelector('[data-tag="低保"]');
  await A.page.click('[data-tag="低保"]');
  await until(A.page, async () => (await window.doorstepField.db.count('outbox')) >= 2, null, 'tag in outbox');
  await A.page.waitForSelector('#add-visit');
  await A.page.click('#add-visit');
  await A.page.selectOption('#visit-form select[name="method"]', '上门走访');
  await A.page.selectOption('#visit-form select[name="result"]', '已完成');
  await A.page.fill('#visit-form input[name="service"]', '代缴');
  await A.page.click('#visit-form button[type="submit"]');
  await until(A.page, async () => (await window.doorstepField.db.count('outbox')) >= 3, null, 'visit in outbox');
  await shot(A.page, '04-person');
  await A.page.goto(`http://127.0.0.1:${port}/field/#/p/${person2}`);
  await A.page.waitForSelector(`[data-field="payment"] select`);
  await A.page.selectOption(`[data-field="payment"] select`, '代缴');
  await A.page.click(`[data-field="payment"] button`);
  await until(A.page, async () => (await window.doorstepField.db.count('outbox')) >= 4, null, 'payment in outbox');
  // A newborn, ID number checked as typed.
  await A.page.goto(`http://127.0.0.1:${port}/field/#/new/${hhs[0]}`);
  await A.page.waitForSelector('#new-person');
  await A.page.fill('input[name="name"]', '李小宝');
  const id17 = `11010520${String(year - 2000).padStart(2, '0')}0101002`;
  const w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  const cc = '10X98765432'[[...id17].reduce((a, c, i) => a + Number(c) * w[i], 0) % 11];
  const wrong = cc === '0' ? '1' : '0';
  await A.page.fill('input[name="id_number"]', id17 + wrong);
  await A.page.dispatchEvent('input[name="id_number"]', 'input');
  check((await A.page.textContent('#err-id_number')).includes('校验位不对'), 'a wrong ID check digit is caught as typed');
  await A.page.fill('input[name="id_number"]', id17 + cc);
  await A.page.dispatchEvent('input[name="id_number"]', 'input');
  check((await A.page.textContent('#id-ok')).includes('校验通过'), 'a right ID number passes and fills birth date and gender');
  await A.page.selectOption('select[name="relation"]', '子女');
  await shot(A.page, '05-new-person');
  await A.page.click('#new-person button[type="submit"]');
  await until(A.page, () => location.hash.startsWith('#/p/N'), null, 'new person saved');
  const newId = decodeURIComponent((await A.page.evaluate(() => location.hash)).slice(4));
  check(await outboxCount(A.page) === 5, 'five edits wait in the outbox');
  step = 'reload offline';
  await A.page.reload();
  await A.page.waitForSelector('#sync-link');
  check(await outboxCount(A.page) === 5, 'after a reload while offline the outbox still holds the five edits');
  await A.page.goto(`http://127.0.0.1:${port}/field/#/sync`);
  await A.page.waitForSelector('#outbox li');
  await shot(A.page, '06-sync-pending');
  step = 'online sync';
  await A.ctx.setOffline(false);
  await syncAndWait(A.page, 'phone A');
  check(await outboxCount(A.page) === 0, 'the outbox is empty after sync');
  const p1 = await api(cookie, `/api/persons/${person}`);
  check(fieldValues(p1, 'phone').includes('13912345678'), 'the server holds the new phone number');
  check(fieldValues(p1, 'tags').includes('低保'), 'the server holds the tag');
  check(fieldValues(p1, 'visits').some((v) => v && v.service === '代缴'), 'the server holds the visit entry');
  const p2 = await api(cookie, `/api/persons/${person2}`);
  check(fieldValues(p2, 'payment', year).includes('代缴'), 'the server holds the payment');
  const np = await api(cookie, `/api/persons/${newId}`);
  check(fieldValues(np, 'name').includes('李小宝') && np.household && np.household.id === hhs[0], 'the server holds the new person in the household');
  const exported = join(tmp, 'export.csv');
  ctl('export', '--csv', exported);
  check(execFileSync('grep', ['-c', '李小宝', exported], { encoding: 'utf8' }).trim() === '1', 'doorstepctl export lists the new person');
  ctl('verify');
  check(true, 'doorstepctl verify passes');
  await shot(A.page, '07-sync-done');

  // 3. Phone B, typed token; concurrent names; phone C from the snapshot.
  step = 'phone B';
  const tokB = /token: (\S+)/.exec(ctl('device', 'enroll', '--volunteer', '张伟', '--households', hhs.join(','), '--no-qr'))[1];
  const B = await phone('B');
  await B.page.fill('#token', tokB.toUpperCase());
  await B.page.click('#do-enroll');
  await until(B.page, () => location.hash === '#/' && document.querySelectorAll('.list li').length >= 3, null, 'B households');
  const tokD = /token: (\S+)/.exec(ctl('device', 'enroll', '--volunteer', '刘洋', '--households', hhs.join(','), '--no-qr'))[1];
  cphone('enroll', `ws://127.0.0.1:${port}`, tokD);
  cphone('set', 'person', person, 'name', '王建民'); // offline, on the C library
  await A.ctx.setOffline(true);
  await B.ctx.setOffline(true);
  for (const [P, nm] of [[A, '王建国'], [B, '王建华']]) {
    await P.page.goto(`http://127.0.0.1:${port}/field/#/p/${person}`);
    await P.page.waitForSelector('[data-field="name"] input');
    await P.page.fill('[data-field="name"] input', nm);
    await P.page.click('[data-field="name"] button');
    await until(P.page, async () => (await window.doorstepField.db.count('outbox')) === 1, null, `${P.name} name edit`);
  }
  await A.ctx.setOffline(false);
  await B.ctx.setOffline(false);
  await syncAndWait(A.page, 'A');
  await syncAndWait(B.page, 'B');
  cphone('sync', `ws://127.0.0.1:${port}`);
  await syncAndWait(A.page, 'A again (pulls B and the C phone)');
  await syncAndWait(B.page, 'B again (pulls the C phone)');
  const tokC = /token: (\S+)/.exec(ctl('device', 'enroll', '--volunteer', '赵敏', '--households', hhs.join(','), '--no-qr'))[1];
  const C = await phone('C');
  await C.page.fill('#token', tokC);
  await C.page.click('#do-enroll');
  await until(C.page, () => location.hash === '#/' && document.querySelectorAll('.list li').length >= 3, null, 'C households');
  for (const id of [person, person2, newId]) {
    const [a, b, c] = [await recordHex(A.page, 'person', id), await recordHex(B.page, 'person', id),
      await recordHex(C.page, 'person', id)];
    const d = cphone('record', 'person', id);
    check(a && a === b && b === c && c === d,
      `person ${id}: phones A, B, the C-library phone and C (the server's snapshot) hold identical bytes`);
  }
  // A sync cut off between a changes page and fetching the persons it named
  // leaves their ids in "fetch"; the next sync fetches them.
  const before = await recordHex(A.page, 'person', person2);
  await A.page.evaluate(async (pid) => {
    const { db } = window.doorstepField;
    await db.write((s) => { s.records.delete(`person/${pid}`); s.meta.put([pid], 'fetch'); });
  }, person2);
  await syncAndWait(A.page, 'A with a person left to fetch');
  check(await recordHex(A.page, 'person', person2) === before, 'a person left to fetch by a cut-off sync is fetched by the next one');
  check((await A.page.evaluate(async () => window.doorstepField.db.meta('fetch'))).length === 0, 'and leaves the fetch list');
  const pc = await api(cookie, `/api/persons/${person}`);
  const names = pc.conflicts.filter((f) => f.name === 'name').flatMap((f) => f.values.map((v) => v.value));
  check(['王建国', '王建华', '王建民'].every((n) => names.includes(n)), 'the staff API shows the three-way name conflict');
  await A.page.goto(`http://127.0.0.1:${port}/field/#/p/${person}`);
  await A.page.waitForSelector('.conflict');
  await shot(A.page, '08-conflict');

  // 4a. Scope shrinks while A edits offline: held for review, reason shown.
  step = 'scope shrink';
  await A.ctx.setOffline(true);
  await A.page.goto(`http://127.0.0.1:${port}/field/#/h/${hhs[2]}`);
  await A.page.waitForSelector('[data-field="note"] input');
  await A.page.fill('[data-field="note"] input', '门口有狗');
  await A.page.click('[data-field="note"] button');
  await until(A.page, async () => (await window.doorstepField.db.count('outbox')) === 1, null, 'note edit');
  const devA = await A.page.evaluate(async () => (await window.doorstepField.db.meta('device')).dev);
  ctl('device', 'scope', String(devA), '--households', hhs.slice(0, 2).join(','));
  await A.ctx.setOffline(false);
  await syncAndWait(A.page, 'A after the scope shrank');
  await A.page.goto(`http://127.0.0.1:${port}/field/#/sync`);
  await A.page.waitForSelector('#held li');
  check((await A.page.textContent('#held')).includes('不在本机负责的住户范围内'), 'the held edit shows its reason in Chinese');
  check(/out_of_scope/.test(ctl('quarantine', 'list')), 'the server keeps it in quarantine');
  check(await recordHex(A.page, 'household', hhs[2]) === null, 'the household that left the scope was purged');
  await shot(A.page, '09-sync-held');

  // 4b. The server dies mid-sync: retried later, nothing lost.
  step = 'server down';
  await A.page.goto(`http://127.0.0.1:${port}/field/#/p/${person2}`);
  await A.page.waitForSelector('[data-field="note"] input');
  await A.page.fill('[data-field="note"] input', '下午再来');
  await A.ctx.setOffline(true); // saved before anything is sent
  await A.page.click('[data-field="note"] button');
  await until(A.page, async () => (await window.doorstepField.db.count('outbox')) === 1, null, 'note in outbox');
  await stopServer('SIGKILL');
  await A.ctx.setOffline(false);
  const failed = await A.page.evaluate(async () => window.doorstepField.runSync());
  check(failed === null, 'sync fails while the server is down');
  await until(A.page, () => [...document.querySelectorAll('.toast')].some((t) => t.textContent.includes('自动重试')), null, 'retry message');
  check(await outboxCount(A.page) === 1, 'the edit stays in the outbox');
  await startServer();
  await syncAndWait(A.page, 'A after the server came back');
  check(fieldValues(await api(await login(), `/api/persons/${person2}`), 'note').includes('下午再来'), 'the server holds the edit made while it was down');

  // 4c. A value the server refuses (signed past the screen's checks): shown
  // with its reason, kept on the phone, and the edits after it still land.
  step = 'refused';
  await A.page.evaluate(async (pid) => {
    await window.doorstepField.commitEdit('person', pid, [{ f: 'phone', o: 'set', v: '12345' }], '电话 = 12345');
    await window.doorstepField.commitEdit('person', pid, [{ f: 'note', o: 'set', v: '拒收后的修改' }], '备注');
  }, person2);
  await syncAndWait(A.page, 'A with a refused delta');
  check(await outboxCount(A.page) === 0, 'nothing is left waiting after the refusal');
  await A.page.goto(`http://127.0.0.1:${port}/field/#/sync`);
  await A.page.waitForSelector('#refused li');
  check((await A.page.textContent('#refused')).includes('不是有效的电话号码'), 'the refused edit shows the reason in Chinese');
  check(fieldValues(await api(await login(), `/api/persons/${person2}`), 'note').includes('拒收后的修改'),
    'the edit signed after the refused one was re-signed and reached the server');
  await shot(A.page, '10-sync-refused');

  // 4d. The station requires a key rotation: the next sync rotates.
  step = 'rotation';
  ctl('device', 'rotate', String(devA), '--require');
  await A.page.evaluate(async (pid) => window.doorstepField.commitEdit('person', pid,
    [{ f: 'note', o: 'set', v: '换钥匙之后' }], '备注'), person2);
  await syncAndWait(A.page, 'A with a rotation required');
  check(await A.page.evaluate(async () => (await window.doorstepField.db.meta('device')).epoch) === 2, 'phone A now signs with key epoch 2');
  check(fieldValues(await api(await login(), `/api/persons/${person2}`), 'note').includes('换钥匙之后'), 'the edit after the rotation reached the server');

  // 4e. Phone B is lost with two edits made offline; the station soft-revokes it
  // (doorstepctl device revoke --soft). Its next sync hands both in (to the
  // quarantine), then the phone deletes its data and says so. An admin reviews
  // them in the dashboard's 隔离区 page: accepts one (it reaches the person's
  // file), rejects the other. The street goes on: doorstep-sim converges.
  step = 'soft revocation';
  const devB = await B.page.evaluate(async () => (await window.doorstepField.db.meta('device')).dev);
  await B.ctx.setOffline(true);
  await B.page.evaluate(async (pid) => window.doorstepField.commitEdit('person', pid,
    [{ f: 'note', o: 'set', v: '丢失前的备注' }], '备注'), person2);
  await B.page.evaluate(async (pid) => window.doorstepField.commitEdit('person', pid,
    [{ f: 'phone', o: 'set', v: '13900001111' }], '电话'), person2);
  check(await outboxCount(B.page) === 2, 'phone B holds two offline edits');
  const rv = ctl('device', 'revoke', String(devB), '--soft');
  check(/revoked \(soft\)/.test(rv), 'doorstepctl soft-revoked phone B');
  await B.ctx.setOffline(false);
  const bsum = await B.page.evaluate(async () => (await window.doorstepField.runSync()));
  check(bsum === null, 'the revoked phone\'s sync ends with the revocation');
  await until(B.page, () => [...document.querySelectorAll('.toast')].some((e) => e.textContent.includes('记录已交回，本机数据已清除')),
    null, 'B says its edits were handed in and its data deleted');
  check(await B.page.evaluate(async () => (await window.doorstepField.db.count('records')) === 0 &&
    (await window.doorstepField.db.count('outbox')) === 0), 'phone B deleted its records and outbox');
  await B.page.goto(`http://127.0.0.1:${port}/field/`);
  await B.page.waitForSelector('#do-enroll');
  await shot(B.page, '11-revoked-wiped');
  // The dashboard, as the administrator.
  const dash = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN', timezoneId: 'Asia/Shanghai' });
  const dp = await dash.newPage();
  phones.push({ name: 'dashboard', page: dp }); // printed and photographed on a failure too
  await dp.goto(`http://127.0.0.1:${port}/`);
  await dp.waitForSelector('#login:not([hidden])');
  await dp.fill('#login-user', 'admin');
  await dp.fill('#login-password', PASSWORD);
  await dp.click('#login-form button[type=submit]');
  await dp.waitForSelector('#login', { state: 'hidden' });
  await dp.goto(`http://127.0.0.1:${port}/#/quarantine`);
  await until(dp, () => [...document.querySelectorAll('[data-testid=quarantine] tbody tr')]
    .filter((tr) => tr.textContent.includes('张伟') && tr.querySelector('button.danger')).length >= 2, null,
  'two handed-in edits pending in the quarantine view');
  const qtext = await dp.textContent('[data-testid=quarantine]');
  check(qtext.includes('张伟'), 'the quarantine view names the revoked phone\'s volunteer');
  await shot(dp, '12-dashboard-quarantine');
  const pendingOfB = () => dp.locator('[data-testid=quarantine] tbody tr', { hasText: '张伟' })
    .filter({ has: dp.locator('button.danger') });
  await pendingOfB().first().locator('button:not(.danger)').click();      // 接受
  await until(dp, () => [...document.querySelectorAll('[data-testid=quarantine] tbody tr')]
    .filter((tr) => tr.textContent.includes('张伟') && tr.querySelector('button.danger')).length === 1, null,
  'one handed-in edit left to decide');
  await pendingOfB().first().locator('button.danger').click();            // 拒绝
  await until(dp, () => [...document.querySelectorAll('[data-testid=quarantine] tbody tr')]
    .filter((tr) => tr.textContent.includes('张伟') && tr.querySelector('button.danger')).length === 0, null,
  'both handed-in edits decided');
  await shot(dp, '13-dashboard-quarantine-decided');
  const q = await (await fetch(`http://127.0.0.1:${port}/api/quarantine?state=all`, { headers: { cookie: await login() } })).json();
  const mine = q.items.filter((e) => e.dev === devB);
  check(mine.length === 2, 'the server kept both handed-in edits: ' + JSON.stringify(mine.map((e) => e.state)));
  check(mine.some((e) => e.state === 'accepted') && mine.some((e) => e.state === 'rejected'),
    'the admin accepted one and rejected the other in the dashboard');
  const pB = await api(await login(), `/api/persons/${person2}`);
  check(fieldValues(pB, 'note').includes('丢失前的备注') || fieldValues(pB, 'phone').includes('13900001111'),
    'the accepted edit is in the person\'s file');
  await dash.close();
  const simOut = execFileSync(join(build, 'doorstep-sim'), ['--server', `ws://127.0.0.1:${port}`, '--data', data,
    '--volunteers', '4', '--households', '24', '--days', '1', '--seed', '7'], { encoding: 'utf8' });
  check(/converged: yes/.test(simOut), 'the street keeps converging after the revocation: ' + simOut.trim().split('\n').pop());

  // 5. Enrollment with the camera: Chromium's fake camera shows the QR code.
  step = 'camera';
  const pngE = join(tmp, 'e.png'), y4m = join(tmp, 'e.y4m');
  ctl('device', 'enroll', '--volunteer', '孙丽', '--households', hhs[0], '--png', pngE, '--no-qr');
  pngToY4m(pngE, y4m);
  const cam = await chromium.launch({ executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic', '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream', `--use-file-for-fake-video-capture=${y4m}`] });
  try {
    const ctx = await cam.newContext({ viewport: { width: 390, height: 844 }, locale: 'zh-CN', permissions: ['camera'] });
    const page = await ctx.newPage();
    await page.goto(`http://127.0.0.1:${port}/field/`);
    await page.waitForSelector('#scan');
    await page.click('#scan');
    await until(page, () => document.querySelector('#token').value.startsWith('doorstep://enroll?'), null,
      'the camera read the QR code', 20000);
    check(true, 'the camera scan read the enrollment QR code');
    await page.click('#do-enroll');
    await until(page, () => location.hash === '#/' && document.querySelectorAll('.list li').length === 1, null,
      'camera-enrolled phone lists its household', 30000);
    check(true, 'the phone enrolled from the camera scan shows its household');
  } finally {
    await cam.close();
  }
  ctl('verify');
  console.log('PASS field app end to end');
}

let rc = 0;
try {
  await main();
} catch (e) {
  console.error(`FAIL at step "${step}": ${e.stack || e}`);
  if (serverErr()) console.error('doorstepd stderr:\n' + serverErr().slice(-2000));
  for (const p of phones) {
    const text = await p.page.evaluate(() => document.body.innerText).catch((x) => String(x));
    console.error(`${p.name === 'dashboard' ? 'the dashboard' : 'phone ' + p.name} shows:\n${text.slice(0, 1500)}`);
    await p.page.screenshot({ path: join(artifacts, `fail-${p.name}.png`) }).catch(() => {});
  }
  rc = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopServer();
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(rc);
