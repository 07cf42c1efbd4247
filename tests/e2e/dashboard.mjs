// dashboard.mjs BUILD_DIR [ARTIFACT_DIR] — the staff dashboard in a real browser.
//
// Debian's headless Chromium (driven by playwright-core over CDP) against a
// doorstepd built in BUILD_DIR, serving clients/dashboard, on a fresh store
// (doorstepctl init) filled by doorstep-sim (a street whose phones made
// concurrent edits, so there are conflicts).  As a staff member would: log
// in, read the 日调度 overview (numbers equal the API's, and the station's
// and every community's persons/enrolled/paid/unpaid/coverage equal
// doorstepctl stats --json), find a conflict in the queue, search the
// person by name (and a mistyped ID number gets the checksum message), open the person page
// (provenance: volunteer, device, time), resolve the conflict and see the
// converged, server-signed value; doorstepctl verify still passes; revoke a
// device; open the weekly report (SVG charts, CSV); switch to English.
// Screenshots go to ARTIFACT_DIR (default BUILD_DIR/e2e-artifacts).
//
// Exit codes: 0 pass, 1 fail, 77 skip (only when Debian's chromium is absent).
import { execFileSync } from 'node:child_process';
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
const PASSWORD = 'e2e-admin-password';

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
for (const b of ['doorstepd', 'doorstepctl', 'doorstep-sim']) {
  if (!existsSync(join(build, b))) {
    console.error(`FAIL: ${join(build, b)} not built`);
    process.exit(1);
  }
}

const tmp = mkdtempSync(join(tmpdir(), 'doorstep-e2e-'));
const data = join(tmp, 'data');
mkdirSync(artifacts, { recursive: true });
let server = null, context = null, lastPage = null;
const pageErrors = [];
const serverErr = () => (server ? server.stderr() : '');
let step = 'start';

function ctl(...args) {
  return execFileSync(join(build, 'doorstepctl'), ['--data', data, ...args],
    { env: { ...process.env, DOORSTEP_ADMIN_PASSWORD: PASSWORD }, encoding: 'utf8' });
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function startServer() {
  server = await startDoorstepd(join(build, 'doorstepd'), ['--data', data, '--listen', '127.0.0.1:0',
    '--static', join(repo, 'clients', 'dashboard'), '--log-level', '1']);
  return server.port;
}

async function stopServer() { await stopDoorstepd(server); }

// Latin words a Chinese screen may show: the switch to English (named in its
// own language) and file formats that have no Chinese name.  Ids and units
// with digits pass by themselves (common.mjs, latinWords).
const LATIN_OK = ['English', 'CSV', 'Doorstep'];

// A screenshot; on a Chinese screen (zh, the default) also: no Chinese glyph
// drawn as a box, and no Latin word outside LATIN_OK.
async function shot(page, name, zh = true) {
  await page.screenshot({ path: join(artifacts, name + '.png'), fullPage: true });
  if (!zh) return;
  const boxed = await boxedGlyphs(page);
  check(boxed.length === 0, `${name}: Chinese glyphs drawn as boxes (no CJK font?): ${boxed.join('')}`);
  const latin = await latinWords(page, LATIN_OK);
  check(latin.length === 0, `${name}: Latin words on a Chinese screen: ${latin.join('; ')}`);
}

async function main() {
  step = 'init';
  const year = new Date().getUTCFullYear();
  const init = ctl('init', '--campaign-year', String(year));
  check(/admin login: admin/.test(init), 'doorstepctl init printed the admin login');
  step = 'doorstepd';
  const port = await startServer();
  const base = `http://127.0.0.1:${port}`;
  step = 'doorstep-sim';
  const sim = execFileSync(join(build, 'doorstep-sim'), ['--server', `ws://127.0.0.1:${port}`,
    '--data', data, '--volunteers', '6', '--households', '40', '--days', '5', '--seed', '3'],
  { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const conflicts = Number((/conflicts=(\d+)/.exec(sim) || [])[1] || 0);
  check(conflicts > 0, 'the simulated street has conflicts: ' + sim.trim().split('\n').pop());

  step = 'browser';
  context = await chromium.launchPersistentContext(join(tmp, 'profile'), {
    executablePath: CHROMIUM, headless: true, locale: 'zh-CN', timezoneId: 'Asia/Shanghai',
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = context.pages()[0] || await context.newPage();
  lastPage = page;
  const errors = pageErrors;
  page.on('pageerror', (e) => errors.push(String(e)));
  // Expected refusals (401 before login or for a wrong password, 400 for a
  // mistyped ID number) show up as failed loads; anything else is an error.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[01] /.test(m.text())) errors.push(m.text());
  });
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(15000);

  // Log in (a wrong password first).
  step = 'login';
  await page.goto(base + '/');
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#login-user', 'admin');
  await page.fill('#login-password', 'not-the-password');
  await page.click('#login-form button[type=submit]');
  await until(page, () => document.querySelector('#login-error').textContent.length > 0, null, 'login error');
  check((await page.textContent('#login-error')).includes('用户名或密码错误'), 'wrong password message');
  await page.fill('#login-password', PASSWORD);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#nav:not([hidden])');

  // Overview: the numbers the page shows are the API's, and the quarantine
  // count is doorstepctl stats'.
  step = 'overview';
  await page.waitForSelector('[data-testid=kpi-persons]');
  const api = (path) => page.evaluate(async (p) => (await fetch(p)).json(), path);
  const ov = await api('/api/overview');
  const kpi = async (id) => (await page.textContent(`[data-testid=${id}] .kpi-v`)).trim();
  check(Number(await kpi('kpi-persons')) === ov.station.persons && ov.station.persons > 0,
    `persons on the page (${await kpi('kpi-persons')}) = API (${ov.station.persons})`);
  check(Number(await kpi('kpi-paid')) === ov.station.paid, 'paid on the page = API');
  check(Number(await kpi('kpi-unpaid')) === ov.station.unpaid, 'unpaid on the page = API');
  check(await page.textContent('.brand') === '街道医保工作站', 'a street server calls itself 街道医保工作站');
  // doorstepctl stats --json reads the same aggregates: the station's and
  // every community's persons, enrolled and coverage must be the overview's.
  const stats = JSON.parse(ctl('stats', '--json'));
  check(Number(await kpi('kpi-quarantine')) === stats.quarantine_pending,
    `pending quarantine on the page = doorstepctl stats (${stats.quarantine_pending})`);
  const same = (a, b, where) => {
    for (const k of ['persons', 'enrolled', 'paid', 'unpaid']) {
      check(a[k] === b[k], `${where} ${k}: overview ${a[k]} = doorstepctl stats ${b[k]}`);
    }
    check(Math.abs(a.coverage - b.coverage) < 1e-9,
      `${where} coverage: overview ${a.coverage} = doorstepctl stats ${b.coverage}`);
  };
  same(ov.station, stats.station, 'station');
  check(ov.communities.length === stats.communities.length && ov.communities.length > 0,
    `communities: overview ${ov.communities.length} = doorstepctl stats ${stats.communities.length}`);
  for (const c of ov.communities) {
    const sc = stats.communities.find((x) => x.community === c.community);
    check(sc, `community ${c.community} is in doorstepctl stats`);
    same(c, sc, `community ${c.community}`);
  }
  const rows = await page.$$eval('[data-testid=overview-table] tbody tr', (r) => r.length);
  check(rows >= 2, 'overview lists communities and grids');
  await until(page, () => document.querySelector('#live').classList.contains('on'), null, 'live updates connected');
  await shot(page, '01-overview');

  // The conflicts queue names a person with a conflict.
  step = 'queue';
  await page.click('a[href="#/queues/conflicts"]');
  await page.waitForSelector('[data-testid=queue] tbody tr');
  const first = await page.$('[data-testid=queue] tbody tr a.person-link');
  const personHref = await first.getAttribute('href');
  const personId = decodeURIComponent(personHref.split('/').pop());
  const personName = (await first.textContent()).split(' / ')[0];
  await shot(page, '02-conflicts');

  // Search: by name finds the person; a mistyped ID number says why.
  step = 'search';
  await page.click('a[href="#/search"]');
  await page.fill('#search-q', personName);
  await page.press('#search-q', 'Enter');
  await page.waitForSelector('[data-testid=search-results]');
  check(await page.$(`[data-testid=search-results] a[href="${personHref}"]`) !== null,
    `search for ${personName} lists ${personId}`);
  await shot(page, '03-search');
  await page.fill('#search-q', '110105194901010010');
  await page.press('#search-q', 'Enter');
  await page.waitForSelector('[data-testid=search-error]');
  const err = await page.textContent('[data-testid=search-error]');
  check(err.includes('校验位') && err.includes('3'), 'wrong ID checksum explained: ' + err);

  // The person: every field with provenance, and the conflict side by side.
  step = 'person';
  await page.goto(base + '/' + personHref);
  await page.waitForSelector('[data-testid=conflicts] .conflict');
  const card = await page.$('[data-testid=conflicts] .conflict');
  const field = await card.getAttribute('data-field');
  const sides = await card.$$('.side');
  check(sides.length >= 2, 'the conflict shows its values side by side');
  const provText = await card.textContent();
  check(/设备 \d+/.test(provText), 'provenance names the device: ' + provText);
  const fieldsShown = await page.$$eval('[data-testid=fields] tbody tr', (r) => r.length);
  check(fieldsShown >= 12, 'the person page lists every field');
  await shot(page, '04-person-conflict');

  const conflictsBefore = (await api('/api/overview')).conflicts.persons;
  const drop = (await api('/api/persons/' + encodeURIComponent(personId))).fields.filter((x) => x.conflict).length === 1 ? 1 : 0;
  // Resolve: take the first side; the page shows one server-signed value.
  step = 'resolve';
  const chosen = (await sides[0].$eval('.side-v', (e) => e.textContent)).trim();
  await sides[0].$eval('button.resolve', (b) => b.click());
  await until(page, (f) => !document.querySelector(`[data-testid=conflict-${f}]`), field, 'the conflict to go');
  const cell = (await page.textContent(`tr[data-field="${field}"] td.val`)).trim();
  check(cell.startsWith(chosen) && !cell.includes('≠'), `converged value shown (${cell} vs ${chosen})`);
  const rowText = await page.textContent(`tr[data-field="${field}"]`);
  check(rowText.includes('工作人员 管理员') && rowText.includes('服务器签名'),
    'provenance names the staff member and the server signature: ' + rowText);
  const person = await api('/api/persons/' + encodeURIComponent(personId));
  const f = person.fields.find((x) => x.name === field && !x.conflict);
  check(f && f.values.every((v) => v.by.server), 'the API shows the server-signed value');
  await shot(page, '05-person-resolved');
  // One count of persons in conflict everywhere, one fewer after the resolution
  // (if that was the person's only conflicting field).
  const counts = [(await api('/api/overview')).conflicts.persons, (await api('/api/report/weekly')).conflicts.persons,
    (await api('/api/queues/conflicts')).total];
  check(counts.every((n) => n === conflictsBefore - drop),
    `persons in conflict: ${conflictsBefore} before, then overview/report/queue ${counts.join('/')}`);
  const verify = ctl('verify');
  check(/verify: ok/.test(verify), 'doorstepctl verify after the resolution: ' + verify);

  // Devices (admin): revoke one.
  step = 'devices';
  await page.click('a[href="#/devices"]');
  await page.waitForSelector('[data-testid=devices] tbody tr');
  // A locator, not an element handle: live updates may re-render the table.
  await page.locator('[data-testid=devices] tbody tr[data-device="1"] button.revoke').click();
  await until(page, () => {
    const r = document.querySelector('[data-testid=devices] tr[data-device="1"]');
    return r && r.dataset.state === 'revoked_soft' && r.querySelector('.dev-state').textContent.includes('已吊销（可交回）');
  }, null, 'device 1 revoked');
  // Enroll a phone from the page: a one-time token and its QR code on screen.
  await page.locator('[data-testid=enroll-volunteer]').fill('王志愿');
  await page.locator('[data-testid=enroll-scope]').fill('H0001, C01/G01');
  await page.locator('[data-testid=enroll-result]').evaluate((e) => e.closest('.card').querySelector('button[type=submit]').click());
  await page.waitForSelector('[data-testid=enroll-token]');
  const tokText = (await page.textContent('[data-testid=enroll-token]')).trim();
  check(/^[a-z2-7]{26}$/.test(tokText), 'an enrollment token is shown: ' + tokText);
  check(await page.$('[data-testid=enroll-result] svg.qr rect') !== null, 'its QR code is drawn');
  await shot(page, '06-devices');

  // The weekly report: charts, table, CSV.
  step = 'report';
  await page.click('a[href="#/report"]');
  await page.waitForSelector('[data-testid=report-table]');
  check((await page.$$('svg.chart')).length === 3, 'three SVG charts (coverage by community, over the campaign, visits per week)');
  check(await page.$('[data-testid=coverage-history] svg.chart') !== null, 'coverage over the campaign is drawn');
  const csvHref = await page.getAttribute('[data-testid=csv-link]', 'href');
  const csv = await page.evaluate(async (p) => {
    const r = await fetch(p);
    return { cd: r.headers.get('content-disposition'), text: await r.text() };
  }, csvHref);
  check(/attachment; filename="weekly-/.test(csv.cd || ''), 'CSV is a download: ' + csv.cd);
  check(csv.text.includes('社区,网格,人数'), 'CSV header');
  await shot(page, '07-report');

  // Every other page in Chinese, with the paging and filters staff use.
  step = 'household';
  await page.goto(base + '/' + personHref);
  await page.waitForSelector('[data-testid=person-household] a');
  await page.click('[data-testid=person-household] a');
  await page.waitForSelector('[data-testid=household-head]');
  const hhId = decodeURIComponent(page.url().split('/').pop());
  const hh = await api('/api/households/' + encodeURIComponent(hhId));
  check(hh.head && hh.head.names.length > 0, 'the API names the household head');
  const headText = await page.textContent('[data-testid=household-head]');
  check(headText.includes(hh.head.names[0]) && !headText.includes(hh.head.id),
    `the household head is shown by name: ${headText}`);
  check((await page.textContent('#view h1')).includes(hh.head.names[0] + '户'), 'the household is titled by its head');
  check(await page.$$eval('[data-testid=visits] li', (l) => l.length) > 0, 'the household lists its visits');
  await shot(page, '09-household');
  await page.goto(base + '/' + personHref);
  await page.waitForSelector('[data-testid=legend]');
  const hhCell = await page.textContent('[data-testid=value-household]');
  check(hhCell.includes(hh.head.names[0] + '户'), `the person's household field names its head: ${hhCell}`);
  const legend = await page.textContent('[data-testid=legend]');
  check(legend.includes('≠') && legend.includes('冲突') && legend.includes('取代'),
    'the history markers are explained in words: ' + legend);

  step = 'queue-paging';
  const cq = await api('/api/queues/conflicts?limit=1');
  check(cq.total >= 2, 'the conflicts queue has a total count: ' + cq.total);
  await page.goto(base + '/#/queues/conflicts?limit=1');
  await page.waitForSelector('[data-testid=queue] tbody tr');
  check((await page.textContent('[data-testid=pager]')).includes(`共 ${cq.total} 条`), 'the queue shows its total');
  const firstQ = await page.getAttribute('[data-testid=queue] tbody tr a.person-link', 'href');
  await page.click('[data-testid=pager] a.next');
  await until(page, (h) => {
    const a = document.querySelector('[data-testid=queue] tbody tr a.person-link');
    return a && a.getAttribute('href') !== h && document.querySelector('[data-testid=pager]').textContent.includes('第 2–2 条');
  }, firstQ, 'the next page of the conflicts queue');
  await shot(page, '10-conflicts-page-2');
  const rq = await api('/api/queues/review');
  await page.goto(base + '/#/queues/review');
  await page.waitForSelector('[data-testid=stage-filter]');
  check((await page.textContent('[data-testid=pager]')).includes(rq.total ? `共 ${rq.total} 条` : '共 0 条'),
    'the review queue shows its total: ' + rq.total);
  await shot(page, '11-review');

  step = 'overview-filter';
  const ovAll = await api('/api/overview');
  const c2 = ovAll.places[1];
  await page.goto(base + '/#/overview?limit=1');
  await page.waitForSelector('[data-testid=overview-table]');
  check(await page.$$eval('[data-testid=overview-table] tbody tr', (r) => r.filter((x) => x.classList.contains('community')).length) === 1,
    'one community per page');
  check((await page.textContent('[data-testid=pager]')).includes(`共 ${ovAll.total_communities} 个`),
    'the overview pager counts communities');
  await page.selectOption('[data-testid=filter-community]', c2.community);
  await until(page, (c) => {
    const g = document.querySelector('[data-testid=filter-grid]');   // null while the view reloads
    return location.hash.includes('community=' + encodeURIComponent(c)) && g && !g.disabled;
  }, c2.community, 'the community filter');
  const ovC = await api('/api/overview?community=' + encodeURIComponent(c2.community));
  check(ovC.communities.length === 1 && ovC.communities[0].community === c2.community, 'the API filters by community');
  await until(page, (c) => [...document.querySelectorAll('[data-testid=overview-table] tbody td:first-child')]
    .every((td) => td.textContent.startsWith(c)), c2.community, 'only that community in the table');
  await page.selectOption('[data-testid=filter-grid]', c2.grids[0]);
  await until(page, (g) => location.hash.includes('grid=' + encodeURIComponent(g)), c2.grids[0], 'the grid filter');
  await page.waitForSelector('[data-testid=overview-table]');
  await shot(page, '12-overview-filtered');

  step = 'quarantine-page';
  await page.goto(base + '/#/quarantine');
  await page.waitForSelector('[data-testid=quarantine-state]');
  await shot(page, '13-quarantine');
  // A page left while its data is still on the way (a slow overview, the
  // user clicks 隔离区) must not cover the page that followed when it lands.
  step = 'late-answer';
  let slowOverview = 0;
  await page.route('**/api/overview*', async (r) => {
    slowOverview++;
    await new Promise((ok) => setTimeout(ok, 1500));
    await r.continue().catch(() => {});
  });
  await page.goto(base + '/#/overview');
  await until(page, () => document.querySelector('#view').textContent.length > 0, null, 'the overview starts loading');
  await page.goto(base + '/#/quarantine');
  await page.waitForSelector('[data-testid=quarantine-state]');
  await new Promise((ok) => setTimeout(ok, 2500));
  check(slowOverview >= 1 && await page.locator('[data-testid=quarantine-state]').count() === 1 &&
    await page.locator('[data-testid=kpi-persons]').count() === 0,
  'a late overview answer does not replace the quarantine page that followed it');
  await page.unroute('**/api/overview*');
  step = 'staff-page';
  await page.goto(base + '/#/staff');
  await page.waitForSelector('[data-testid=staff]');
  await shot(page, '14-staff');
  step = 'search-error-page';
  await page.goto(base + '/#/search');
  await page.fill('#search-q', '110105194901010010');
  await page.press('#search-q', 'Enter');
  await page.waitForSelector('[data-testid=search-error]');
  await shot(page, '15-search-error');

  // English.
  step = 'english';
  await page.click('#lang');
  await until(page, () => document.querySelector('a[href="#/overview"]').textContent === 'Daily dispatch', null, 'English nav');
  await page.click('a[href="#/overview"]');
  await page.waitForSelector('[data-testid=kpi-persons]');
  await shot(page, '08-overview-en', false);
  await page.click('#lang');

  check(errors.length === 0, 'no errors in the page: ' + errors.join(' | '));
  step = 'done';
}

let code = 0;
try {
  await main();
  console.log('dashboard e2e: ok (screenshots in ' + artifacts + ')');
} catch (e) {
  console.error(`FAIL at ${step}: ${e.stack || e}`);
  if (pageErrors.length) console.error('page errors: ' + pageErrors.join(' | '));
  if (lastPage) await shot(lastPage, 'failed-' + step).catch(() => {});
  code = 1;
} finally {
  if (context) await context.close().catch(() => {});
  await stopServer();
  if (/ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/.test(serverErr())) {
    console.error('FAIL: doorstepd sanitizer report:\n' + serverErr());
    code = 1;
  } else if (code) {
    console.error('doorstepd stderr:\n' + serverErr().slice(-4000));
  }
  rmSync(tmp, { recursive: true, force: true });
}
process.exit(code);
