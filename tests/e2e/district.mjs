// district.mjs BUILD_DIR [ARTIFACT_DIR] — a district's dashboard in a real
// browser (issue 16): two street servers relay to a district server, and a
// district staff member sees each street.
//
// Three doorstepd processes (D, with the dashboard; streets A and B with
// --upstream to D), each street filled by its own doorstep-sim (ids and
// communities prefixed A / B).  Once both streets say D acked their whole log
// (doorstepctl upstream status --json), in Debian's headless Chromium: log in
// at D; the 各街道 table has one row per street whose persons, enrolled, paid
// and unpaid equal that street's own figures (doorstepctl --data A stats
// --json), and the district total is their sum; choosing street A scopes the
// community table to A's communities and nothing else; the weekly report
// shows the streets too; no Chinese glyph is drawn as a box.  Screenshots go
// to ARTIFACT_DIR (default BUILD_DIR/e2e-artifacts).
//
// Exit codes: 0 pass, 1 fail, 77 skip (only when Debian's chromium is absent).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { boxedGlyphs, latinWords, startDoorstepd, stopDoorstepd, until } from './common.mjs';

const CHROMIUM = '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const build = resolve(process.argv[2] || join(repo, 'build'));
const artifacts = resolve(process.argv[3] || join(build, 'e2e-artifacts'));
const PASSWORD = 'e2e-district-password';

if (!existsSync(CHROMIUM)) {
  console.log(`SKIP: ${CHROMIUM} not found (scripts/install-deps installs Debian's chromium)`);
  process.exit(77);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.error('FAIL: playwright-core is not installed: run scripts/install-deps (npm ci)');
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'doorstep-district-'));
mkdirSync(artifacts, { recursive: true });
const servers = [];
let context = null, step = 'start';

function ctl(data, ...args) {
  return execFileSync(join(build, 'doorstepctl'), ['--data', data, ...args],
    { env: { ...process.env, DOORSTEP_ADMIN_PASSWORD: PASSWORD }, encoding: 'utf8' });
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}
function sim(port, data, prefix, volunteers, households, seed) {
  return new Promise((ok, fail) => {
    const p = spawn(join(build, 'doorstep-sim'), ['--server', `ws://127.0.0.1:${port}`, '--data', data,
      '--devices', data + '.sim', '--prefix', prefix, '--volunteers', String(volunteers),
      '--households', String(households), '--days', '2', '--seed', String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('exit', (c) => (c === 0 ? ok(out) : fail(new Error(`doorstep-sim ${prefix} exited ${c}: ${out}`))));
  });
}
async function caughtUp(data) {
  const end = Date.now() + 60000;
  for (;;) {
    const s = JSON.parse(ctl(data, 'upstream', 'status', '--json'));
    if (s.last > 0 && s.behind === 0) return s;
    if (Date.now() > end) throw new Error(`${data}: the district acked ${s.cursor} of ${s.last}`);
    await new Promise((ok) => setTimeout(ok, 200));
  }
}
const LATIN_OK = ['English', 'CSV', 'Doorstep'];
async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, name + '.png'), fullPage: true });
  const boxed = await boxedGlyphs(page);
  check(boxed.length === 0, `${name}: Chinese glyphs drawn as boxes (no CJK font?): ${boxed.join('')}`);
  const latin = await latinWords(page, LATIN_OK);
  check(latin.length === 0, `${name}: Latin words on a Chinese screen: ${latin.join('; ')}`);
}

async function main() {
  step = 'init';
  const D = join(tmp, 'D'), A = join(tmp, 'A'), B = join(tmp, 'B');
  for (const d of [D, A, B]) ctl(d, 'init');
  step = 'district';
  const dsrv = await startDoorstepd(join(build, 'doorstepd'), ['--data', D, '--listen', '127.0.0.1:0',
    '--static', join(repo, 'clients', 'dashboard'), '--log-level', '1']);
  servers.push(dsrv);
  const url = `ws://127.0.0.1:${dsrv.port}/sync`;
  step = 'streets';
  const streets = {};
  for (const [name, data, vol, hh, seed, title] of [['A', A, 6, 60, 3, '东城街道'], ['B', B, 5, 40, 4, '西城街道']]) {
    const tok = /token: (\S+)/.exec(ctl(D, 'device', 'enroll', '--relay', '--volunteer', title,
      '--no-qr', '--as', 'e2e'))[1];
    ctl(data, 'upstream', 'enroll', url, tok);
    const s = await startDoorstepd(join(build, 'doorstepd'), ['--data', data, '--listen', '127.0.0.1:0',
      '--log-level', '1', '--device-burst', '40000', '--upstream', url]);
    servers.push(s);
    streets[name] = { data, port: s.port, vol, hh, seed };
  }
  await Promise.all(Object.entries(streets).map(([n, s]) => sim(s.port, s.data, n, s.vol, s.hh, s.seed)));
  for (const s of Object.values(streets)) await caughtUp(s.data);
  // The street's /metrics tell an operator the relay is up and caught up.
  const metrics = await (await fetch(`http://127.0.0.1:${streets.A.port}/metrics`)).text();
  check(/^doorstep_upstream_connected 1$/m.test(metrics), 'A: doorstep_upstream_connected 1');
  check(/^doorstep_upstream_behind 0$/m.test(metrics), 'A: doorstep_upstream_behind 0');
  const taken = Number((/^doorstep_upstream_envelopes_total\{result="taken"\} (\d+)$/m.exec(metrics) || [])[1]);
  check(taken > 0, `A: envelopes taken by the district (${taken})`);
  const statsA = JSON.parse(ctl(A, 'stats', '--json')).station;
  const statsB = JSON.parse(ctl(B, 'stats', '--json')).station;

  step = 'browser';
  context = await chromium.launchPersistentContext(join(tmp, 'profile'), {
    executablePath: CHROMIUM, headless: true, locale: 'zh-CN', timezoneId: 'Asia/Shanghai',
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[01] /.test(m.text())) errors.push(m.text()); });
  page.setDefaultTimeout(15000);
  const base = `http://127.0.0.1:${dsrv.port}`;
  await page.goto(base + '/');
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#login-user', 'admin');
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('[data-testid=streets-table]');

  step = 'overview';
  const ov = await page.evaluate(async () => (await fetch('/api/overview')).json());
  check(ov.streets.length === 2, `two streets in the overview (${ov.streets.length})`);
  const byName = Object.fromEntries(ov.streets.map((s) => [s.name, s]));
  for (const [name, st] of [['东城街道', statsA], ['西城街道', statsB]]) {
    const s = byName[name];
    check(s, `street ${name} listed`);
    for (const k of ['persons', 'enrolled', 'paid', 'unpaid', 'key_group_unenrolled'])
      check(s[k] === st[k], `${name} ${k}: district ${s[k]}, street ${st[k]}`);
  }
  check(ov.station.persons === statsA.persons + statsB.persons,
    `district persons ${ov.station.persons} = ${statsA.persons} + ${statsB.persons}`);
  const rows = await page.$$eval('[data-testid=streets-table] tbody tr', (trs) =>
    trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent.trim())));
  check(rows.length === 2, 'two street rows on the page');
  await until(page, () => document.querySelector('.brand').textContent === '区医保中心', null,
    'the district calls itself 区医保中心');
  check(true, 'the district calls itself 区医保中心, not a street station');
  for (const r of rows) check(Number(r[1]) === byName[r[0]].persons, `row ${r[0]}: persons ${r[1]} on the page`);
  await shot(page, 'district-overview');

  step = 'street scope';
  await page.click(`[data-testid=street-${byName['东城街道'].id}]`);
  await until(page, () => /street=/.test(location.hash), null, 'the street link');
  await page.waitForSelector('[data-testid=overview-table] tbody tr');
  const comms = await page.$$eval('[data-testid=overview-table] tbody tr.community td:first-child',
    (tds) => tds.map((td) => td.textContent.trim()));
  check(comms.length > 0 && comms.every((c) => c.startsWith('A')),
    `street A's scope shows only A's communities: ${comms.join(' ')}`);
  const scoped = await page.evaluate(async (id) => (await fetch('/api/overview?street=' + id)).json(),
    byName['东城街道'].id);
  check(scoped.total_communities === comms.length || comms.length === scoped.limit,
    'the page shows the API\'s communities of street A');
  check(await page.$eval('[data-testid=filter-street]', (s) => s.selectedOptions[0].textContent) === '东城街道',
    'the street filter says 东城街道');
  const bad = await page.evaluate(async () => (await fetch('/api/overview?street=999999')).status);
  check(bad === 400, `an unknown street is a 400 (${bad})`);
  await shot(page, 'district-street-a');

  step = 'provenance';
  // Who edited a street's person, as the district shows it: the street's
  // phone under the district's name for it ("东城街道 #N"), never another
  // device that happens to have the same number here.
  const csv = join(tmp, 'a.csv');
  ctl(A, 'export', '--csv', csv);
  const { readFileSync } = await import('node:fs');
  const ids = readFileSync(csv, 'utf8').trim().split('\n').slice(1).map((r) => r.split(',')[0]);
  const sample = ids.filter((_, i) => i % Math.max(1, Math.floor(ids.length / 20)) === 0);
  const stamps = [];
  for (const id of sample) {
    const person = await page.evaluate(async (x) => (await fetch('/api/persons/' + encodeURIComponent(x))).json(), id);
    JSON.stringify(person, (k, v) => {
      if (v && typeof v === 'object' && 'dev' in v && 'volunteer' in v && v.dev) stamps.push(v);
      return v;
    });
  }
  const wrong = stamps.filter((st) => st.volunteer !== '东城街道 #' + st.dev);
  const devs = new Set(stamps.map((st) => st.dev));
  check(stamps.length > 0 && devs.size > 1 && wrong.length === 0,
    `provenance of ${sample.length} of street A's persons at the district names A's phones by their ` +
    `numbers (${devs.size} phones): ` +
    wrong.slice(0, 4).map((st) => `dev ${st.dev} shown as ${st.volunteer}`).join('; '));
  const dcsv = join(tmp, 'd.csv');
  ctl(D, 'export', '--csv', dcsv);
  const rowsD = readFileSync(dcsv, 'utf8').trim().split('\n');
  const head = rowsD[0].split(',');
  const byCol = head.indexOf('last_changed_by');
  check(byCol >= 0, 'the export has last_changed_by: ' + head.join(','));
  const bys = new Set(rowsD.slice(1).map((r) => r.split(',')[byCol]));
  check([...bys].every((b) => /^(东城街道|西城街道) #\d+$/.test(b) || b === 'server' || b === ''),
    'the district export names street phones: ' + [...bys].slice(0, 8).join(', '));

  step = 'report';
  // The district's first snapshot was taken before its streets relayed (no
  // persons): the coverage curve leaves it out and ends on today's figures.
  const rep = await page.evaluate(async () => (await fetch('/api/report/weekly')).json());
  const hist = rep.coverage_history;
  check(hist.length >= 1 && hist.every((d) => d.persons > 0), 'the coverage curve holds no day without persons');
  const last = hist[hist.length - 1];
  check(last.persons === rep.station.persons && last.enrolled === rep.station.enrolled,
    `the curve ends on today's figures (${last.enrolled} of ${last.persons})`);
  await page.goto(base + '/#/report');
  await page.waitForSelector('[data-testid=streets-table]');
  await shot(page, 'district-report');
  check(errors.length === 0, 'no page errors: ' + errors.join('; '));
}

let failed = false;
try {
  await main();
  console.log('district e2e: ok');
} catch (e) {
  failed = true;
  console.error(`FAIL (${step}): ${e.message}`);
} finally {
  if (context) await context.close().catch(() => {});
  for (const s of servers.reverse()) await stopDoorstepd(s);
  if (!failed) rmSync(tmp, { recursive: true, force: true });
  else console.error('files kept in ' + tmp);
}
process.exit(failed ? 1 : 0);
