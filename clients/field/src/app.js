/*
 * app.js — the field app's screens (hash routes), for a volunteer at a door:
 *   #/enroll            scan the QR code or type the token
 *   #/                  my households by grid, with visit status
 *   #/h/ID              a household with its members; record a visit
 *   #/p/ID              a person's file: every schema field, conflicts, visits
 *   #/new/HOUSEHOLD     a new person (newborn, moved in), ID number checked as typed
 *   #/sync              sync now: progress, pending, held for review, refused
 * Every save goes through model.commitEdit (durable outbox) before the
 * screen says "saved"; sync runs on demand, when the network comes back and
 * every two minutes while the app is open and online.
 */
import jsQR from 'jsqr';
import * as crdt from './crdt.js';
import * as db from './db.js';
import { errText, getLang, heldText, refusedText, setLang, t } from './i18n.js';
import { commitEdit, fieldSpec, householdOf, schema, value, view, viewsOf } from './model.js';
import { parseEnrollment } from './proto.js';
import { enroll, syncNow } from './sync.js';
import { checkEntry, checkValue, idnumFacts } from './validate.js';

const $main = document.getElementById('main');
const $bar = document.getElementById('bar');
let syncing = null;
let status = '';

function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const k of kids.flat()) if (k != null && k !== false) e.append(k.nodeType ? k : String(k));
  return e;
}

function today() {
  const d = new Date();
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`;
}
function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleString(getLang() === 'en' ? 'en-GB' : 'zh-CN', { hour12: false }) : t('never');
}
function toast(msg, bad = false) {
  const el = h('div', { class: 'toast' + (bad ? ' bad' : ''), role: 'status' }, msg);
  document.body.append(el);
  setTimeout(() => el.remove(), 3500);
}

async function renderBar() {
  const n = await db.count('outbox');
  const last = await db.meta('last_sync');
  $bar.replaceChildren(
    h('a', { href: '#/', class: 'brand' }, t('app')),
    h('span', { class: 'status', id: 'sync-status' },
      status || (navigator.onLine ? (n ? t('edits_pending', n) : `${t('last_sync')} ${fmtTime(last && last.ms)}`)
        : t('offline'))),
    h('a', { href: '#/sync', class: 'btn small' + (n ? ' warn' : ''), id: 'sync-link' }, t('sync'),
      n ? h('b', { class: 'badge' }, n) : null),
  );
}

/* ---- enroll --------------------------------------------------------------------- */

async function screenEnroll(gen) {
  const input = h('input', { id: 'token', placeholder: t('token_ph'), autocomplete: 'off', autocapitalize: 'off' });
  const name = h('input', { id: 'volunteer', autocomplete: 'name' });
  const msg = h('p', { class: 'msg', id: 'enroll-msg' });
  const video = h('video', { playsinline: true, muted: true, class: 'scan hidden' });
  let stream = null;
  const stop = () => { if (stream) stream.getTracks().forEach((x) => x.stop()); stream = null; video.classList.add('hidden'); };
  const found = (text) => { stop(); input.value = text; msg.textContent = ''; };
  const file = h('input', { type: 'file', accept: 'image/*', id: 'qr-file', class: 'hidden',
    onchange: async () => {
      const f = file.files[0];
      if (!f) return;
      const text = decodeImage(await createImageBitmap(f));
      if (text) found(text); else msg.textContent = t('qr_none');
    } });
  const go = async () => {
    let enr;
    try { enr = parseEnrollment(input.value); } catch (e) { msg.textContent = errText({ code: e.message }); return; }
    msg.textContent = t('enrolling');
    try {
      await enroll(enr, name.value.trim(), progress);
      status = '';
      location.hash = '#/';
    } catch (e) {
      msg.textContent = errText(e);
    }
  };
  show(gen, h('section', { class: 'card' },
    h('h1', {}, t('enroll_title')), h('p', {}, t('enroll_help')),
    h('div', { class: 'row' },
      h('button', { class: 'btn', id: 'scan', onclick: async () => {
        try {
          stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' } });
          video.srcObject = stream;
          video.classList.remove('hidden');
          await video.play();
          scanLoop(video, () => stream, found);
        } catch { msg.textContent = t('no_camera'); }
      } }, t('scan')),
      h('button', { class: 'btn ghost', onclick: () => file.click() }, t('from_photo')), file),
    video,
    h('label', {}, t('token'), input), h('label', {}, t('volunteer'), name),
    h('button', { class: 'btn primary', id: 'do-enroll', onclick: go }, t('do_enroll')), msg));
}

function decodeImage(src) {
  const c = document.createElement('canvas');
  const scale = Math.min(1, 1024 / Math.max(src.width || src.videoWidth, src.height || src.videoHeight));
  c.width = Math.round((src.width || src.videoWidth) * scale);
  c.height = Math.round((src.height || src.videoHeight) * scale);
  const g = c.getContext('2d', { willReadFrequently: true });
  g.drawImage(src, 0, 0, c.width, c.height);
  const img = g.getImageData(0, 0, c.width, c.height);
  const r = jsQR(img.data, img.width, img.height, { inversionAttempts: 'attemptBoth' });
  return r ? r.data : null;
}

function scanLoop(video, alive, found) {
  const tick = () => {
    if (!alive()) return;
    if (video.readyState >= 2) {
      const text = decodeImage(video);
      if (text) return found(text);
    }
    requestAnimationFrame(tick);
  };
  tick();
}

/* ---- households ------------------------------------------------------------------ */

function lastVisit(rec) {
  const v = crdt.logEntries(rec, 'visits');
  return v.length ? v[v.length - 1].value.date : null;
}

async function screenHome(gen) {
  const scope = (await db.meta('scope')) || [];
  const hh = await viewsOf('household');
  const persons = await viewsOf('person');
  const members = new Map();
  for (const [id, v] of persons) {
    const x = householdOf(v.rec);
    if (!members.has(x)) members.set(x, []);
    members.get(x).push({ id, ...v });
  }
  const byGrid = new Map();
  for (const id of scope) {
    const v = hh.get(id);
    if (!v) continue;
    const g = value(v.rec, 'grid') || '—';
    if (!byGrid.has(g)) byGrid.set(g, []);
    byGrid.get(g).push({ id, ...v });
  }
  const lists = [...byGrid.keys()].sort().map((g) => h('section', { class: 'card' },
    h('h2', {}, `${t('grid')} ${g}`),
    h('ul', { class: 'list' }, byGrid.get(g).sort((a, b) => a.id.localeCompare(b.id)).map((x) => {
      const ms = members.get(x.id) || [];
      const head = ms.find((m) => m.id === value(x.rec, 'head'));
      const lv = lastVisit(x.rec);
      const pend = x.pending + ms.reduce((a, m) => a + m.pending, 0);
      return h('li', {}, h('a', { href: `#/h/${encodeURIComponent(x.id)}`, class: 'item' },
        h('span', { class: 'main' }, value(x.rec, 'address') || x.id),
        h('span', { class: 'sub' }, `${t('head')}：${head ? value(head.rec, 'name') || head.id : '—'} · ${ms.length} 人`),
        h('span', { class: 'tag ' + (lv === today() ? 'ok' : lv ? '' : 'warn') },
          lv === today() ? t('visited_today') : lv ? `${t('last_visit')} ${lv}` : t('never_visited')),
        pend ? h('span', { class: 'tag warn' }, `${pend} ${t('pending')}`) : null));
    }))));
  show(gen, h('h1', {}, t('households')),
    ...(lists.length ? lists : [h('p', { class: 'card' }, t('no_households'))]));
}

async function screenHousehold(id, gen) {
  const v = await view('household', id);
  if (!v) { show(gen, h('p', {}, t('no_households'))); return; }
  const persons = [...(await viewsOf('person')).entries()].filter(([, p]) => householdOf(p.rec) === id);
  const year = String(new Date().getFullYear());
  const visits = crdt.logEntries(v.rec, 'visits');
  show(gen,
    h('a', { href: '#/', class: 'back' }, '‹ ' + t('back')),
    h('section', { class: 'card' }, h('h1', {}, value(v.rec, 'address') || id),
      h('p', { class: 'sub' }, `${id} · ${t('grid')} ${value(v.rec, 'grid') || '—'}`),
      await textField('household', id, v.rec, 'phone'), await textField('household', id, v.rec, 'note')),
    h('section', { class: 'card' }, h('h2', {}, t('members')),
      h('ul', { class: 'list' }, persons.map(([pid, p]) => h('li', {},
        h('a', { href: `#/p/${encodeURIComponent(pid)}`, class: 'item' },
          h('span', { class: 'main' }, value(p.rec, 'name') || pid),
          h('span', { class: 'sub' }, [value(p.rec, 'relation'), value(p.rec, 'payment', Number(year))]
            .filter(Boolean).join(' · ')),
          crdt.isDeleted(p.rec) ? h('span', { class: 'tag' }, '已注销') : null,
          p.pending ? h('span', { class: 'tag warn' }, `${p.pending} ${t('pending')}`) : null)))),
      h('a', { class: 'btn', href: `#/new/${encodeURIComponent(id)}`, id: 'add-person' }, t('add_person'))),
    await visitSection('household', id, visits));
}

/* ---- person ---------------------------------------------------------------------- */

async function save(kind, id, ops, summary) {
  await commitEdit(kind, id, ops, summary);
  toast(t('saved'));
  await renderBar();
  route();
  kickSync();
}

/** An lww/mv field as an input (select for enums), with conflicts shown. */
async function textField(kind, id, rec, name, key = null) {
  const spec = await fieldSpec(kind, name);
  const vals = crdt.visibleValues(rec, name, key);
  const cur = vals.length ? vals[0].value : '';
  const err = h('span', { class: 'err' });
  let input;
  if (spec.type === 'enum') {
    input = h('select', { name }, h('option', { value: '' }, '—'),
      spec.values.map((x) => h('option', { value: x, selected: x === cur }, x)));
  } else {
    input = h('input', { name, value: cur ?? '', inputmode: spec.type === 'phone' || spec.type === 'idnum' ? 'numeric' : null });
  }
  const check = () => {
    const e = input.value === '' ? null : checkValue(spec, input.value);
    err.textContent = e ? t('v_' + e) : '';
    return !e;
  };
  input.addEventListener('input', check);
  const saveBtn = h('button', { class: 'btn small', onclick: async () => {
    if (!check() || input.value === '' || input.value === cur) return;
    const op = { f: name, o: 'set', v: input.value };
    if (key !== null) op.k = key;
    if (spec.crdt === 'mv') op.x = crdt.observedDots(rec, name, key);
    await save(kind, id, [op], `${t(name)} = ${input.value}`);
  } }, t('save'));
  /* Concurrent writes of the same value agree: a conflict is two or more
   * DISTINCT values (crdt_field_conflict), each shown once with how many
   * wrote it.  Choosing one supersedes every concurrent write. */
  const distinct = [];
  for (const x of vals) {
    const d = distinct.find((y) => y.value === x.value);
    if (d) d.n++; else distinct.push({ value: x.value, n: 1 });
  }
  const conflict = spec.crdt === 'mv' && distinct.length > 1
    ? h('div', { class: 'conflict' }, t('conflict'), distinct.map((x) => h('button', { class: 'btn small ghost',
      onclick: () => save(kind, id, [{ f: name, o: 'set', v: x.value, ...(key !== null ? { k: key } : {}),
        x: crdt.observedDots(rec, name, key) }], `${t(name)} = ${x.value}`) },
      `${t('choose')}：${x.value}` + (x.n > 1 ? t('writers', x.n) : ''))))
    : null;
  return h('div', { class: 'field', 'data-field': name }, h('label', {}, t(name) + (key !== null ? ` ${key}` : '')),
    h('div', { class: 'row' }, input, saveBtn), err, conflict);
}

async function visitSection(kind, id, visits) {
  const spec = await fieldSpec(kind, 'visits');
  const form = h('form', { class: 'visit hidden', id: 'visit-form' });
  const inputs = {};
  for (const m of spec.members) {
    inputs[m.name] = m.type === 'enum'
      ? h('select', { name: m.name }, m.required ? null : h('option', { value: '' }, '—'),
        m.values.map((x) => h('option', { value: x }, x)))
      : h('input', { name: m.name, value: m.name === 'date' ? today() : '' });
    form.append(h('label', {}, t(m.name) + (m.required ? ' *' : ''), inputs[m.name]));
  }
  const err = h('p', { class: 'err' });
  form.append(err, h('button', { class: 'btn primary', type: 'submit' }, t('save')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const entry = {};
    for (const [k, el] of Object.entries(inputs)) if (el.value !== '') entry[k] = el.value;
    const e = checkEntry(spec, entry);
    if (e) { err.textContent = t('v_' + e); return; }
    await save(kind, id, [{ f: 'visits', o: 'app', v: entry }], `${t('add_visit')} ${entry.date} ${entry.method}`);
  });
  return h('section', { class: 'card' }, h('h2', {}, t('visits')),
    h('ul', { class: 'list' }, visits.slice().reverse().map((x) => h('li', { class: 'item' },
      h('span', { class: 'main' }, `${x.value.date} ${x.value.method}`),
      h('span', { class: 'sub' }, [x.value.result, x.value.service, x.value.note].filter(Boolean).join(' · '))))),
    h('button', { class: 'btn', id: 'add-visit', onclick: () => form.classList.toggle('hidden') }, t('add_visit')), form);
}

async function screenPerson(id, gen) {
  const v = await view('person', id);
  if (!v) { show(gen, h('p', {}, t('no_households'))); return; }
  const rec = v.rec;
  const year = new Date().getFullYear();
  const hhId = householdOf(rec);
  const tagsSpec = await fieldSpec('person', 'tags');
  const have = new Map(crdt.setElements(rec, 'tags').map((x) => [x.value, x]));
  const tagBox = h('div', { class: 'chips' }, tagsSpec.values.map((tg) => h('button', {
    class: 'chip' + (have.has(tg) ? ' on' : ''), 'data-tag': tg,
    onclick: () => (have.has(tg)
      ? save('person', id, [{ f: 'tags', o: 'rem', v: tg, x: crdt.addDots(rec, 'tags', tg) }], `${t('tags')} − ${tg}`)
      : save('person', id, [{ f: 'tags', o: 'add', v: tg }], `${t('tags')} + ${tg}`)),
  }, tg)));
  const reviewSpec = await fieldSpec('person', 'review');
  const ord = crdt.stageIndex(rec, 'review', null);
  const stage = ord >= 0 ? reviewSpec.values[ord] : null;
  const nextStages = reviewSpec.values.slice(ord + 1);
  show(gen,
    h('a', { href: hhId ? `#/h/${encodeURIComponent(hhId)}` : '#/', class: 'back' }, '‹ ' + t('back')),
    h('section', { class: 'card' }, h('h1', {}, value(rec, 'name') || id), h('p', { class: 'sub' }, id),
      ...(await Promise.all(['name', 'id_number', 'gender', 'birth_date', 'phone', 'relation', 'insurance_type',
        'life_status'].map((f) => textField('person', id, rec, f)))),
      await textField('person', id, rec, 'payment', year),
      await textField('person', id, rec, 'payment', year - 1),
      await textField('person', id, rec, 'note')),
    h('section', { class: 'card' }, h('h2', {}, t('tags')), tagBox),
    h('section', { class: 'card' },
      h('p', {}, `${t('errands_done')}：${crdt.counterValue(rec, 'errands_done', null)}`),
      h('button', { class: 'btn small', onclick: () => save('person', id, [{ f: 'errands_done', o: 'inc', v: 1 }],
        t('add_errand')) }, t('add_errand')),
      h('p', {}, `${t('review')}：${stage || '—'}`),
      nextStages.map((s) => h('button', { class: 'btn small ghost', onclick: () => save('person', id,
        [{ f: 'review', o: 'raise', v: s }], `${t('review')} → ${s}`) }, `${t('raise_to')} ${s}`))),
    await visitSection('person', id, crdt.logEntries(rec, 'visits')));
}

async function screenNewPerson(hhId, gen) {
  const s = await schema();
  const kind = s.json.kinds.find((k) => k.name === 'person');
  const f = (n) => kind.fields.find((x) => x.name === n);
  const inputs = {};
  const errs = {};
  const form = h('form', { class: 'card', id: 'new-person' }, h('h1', {}, t('new_person')));
  for (const n of ['name', 'id_number', 'gender', 'birth_date', 'relation', 'phone', 'life_status']) {
    const spec = f(n);
    inputs[n] = spec.type === 'enum'
      ? h('select', { name: n }, h('option', { value: '' }, '—'), spec.values.map((x) => h('option', { value: x,
        selected: n === 'life_status' && x === '新增' }, x)))
      : h('input', { name: n, inputmode: n === 'id_number' || n === 'phone' ? 'numeric' : null });
    errs[n] = h('span', { class: 'err', id: `err-${n}` });
    form.append(h('label', {}, t(n) + (n === 'name' ? ' *' : ''), inputs[n], errs[n]));
  }
  const okLine = h('span', { class: 'ok', id: 'id-ok' });
  errs.id_number.after(okLine);
  inputs.id_number.addEventListener('input', () => {
    inputs.id_number.value = inputs.id_number.value.toUpperCase().replace(/\s/g, '');
    const v = inputs.id_number.value;
    const e = v.length ? checkValue(f('id_number'), v) : null;
    /* Complain once all 18 characters are typed, not at every keystroke before. */
    errs.id_number.textContent = e && v.length >= 18 ? t('v_' + e) : '';
    const facts = idnumFacts(v);
    okLine.textContent = facts ? t('id_ok', facts.birth, facts.gender) : '';
    if (facts) { inputs.birth_date.value = facts.birth; inputs.gender.value = facts.gender; }
  });
  form.append(h('div', { class: 'row' }, h('button', { class: 'btn primary', type: 'submit' }, t('save')),
    h('a', { class: 'btn ghost', href: `#/h/${encodeURIComponent(hhId)}` }, t('cancel'))));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let bad = false;
    const ops = [{ f: 'household', o: 'set', v: hhId }];
    for (const [n, el] of Object.entries(inputs)) {
      errs[n].textContent = '';
      const v = el.value.trim();
      if (!v) {
        if (n === 'name') { errs[n].textContent = t('v_required'); bad = true; }
        continue;
      }
      const e = checkValue(f(n), v);
      if (e) { errs[n].textContent = t('v_' + e); bad = true; continue; }
      ops.push({ f: n, o: 'set', v });
    }
    if (bad) return;
    const dev = await db.meta('device');
    const pid = `N${dev.dev}-${Date.now().toString(36)}`;
    ops.sort((a, b) => (a.f < b.f ? -1 : 1));
    await commitEdit('person', pid, ops, `${t('new_person')} ${inputs.name.value.trim()}`);
    toast(t('saved'));
    location.hash = `#/p/${encodeURIComponent(pid)}`;
    kickSync();
  });
  show(gen, h('a', { href: `#/h/${encodeURIComponent(hhId)}`, class: 'back' }, '‹ ' + t('back')), form);
}

/* ---- sync ------------------------------------------------------------------------ */

function progress(p) {
  if (p.phase === 'connect') status = t('phase_connect');
  else if (p.phase === 'push') status = t('phase_push', p.pushed, p.total);
  else if (p.phase === 'pull') status = t('phase_pull', p.pulled);
  else if (p.phase === 'snapshot') status = t('phase_snapshot', p.pulled);
  else if (p.phase === 'wait') status = t('phase_wait', Math.ceil(p.ms / 1000));
  const el = document.getElementById('sync-status');
  if (el) el.textContent = status;
  const pr = document.getElementById('sync-progress');
  if (pr) pr.textContent = status;
}

async function runSync() {
  if (syncing) return syncing;
  syncing = (async () => {
    try {
      const sum = await syncNow(progress);
      status = '';
      toast(t('sync_ok', sum.pushed, sum.pulled));
      return sum;
    } catch (e) {
      status = '';
      if (e.code === -305) {
        /* soft: handed in (and wiped when all went); hard: refused at auth */
        toast(t(e.wiped ? 'revoked_wiped' : e.soft ? 'revoked_pending' : 'revoked_hard'), true);
      } else {
        toast(t('sync_failed', errText(e)) + (e.retry ? ' ' + t('will_retry') : ''), true);
        if (e.retry) retryLater();
      }
      return null;
    } finally {
      syncing = null;
      await renderBar();
      route();
    }
  })();
  return syncing;
}

let retryTimer = null, backoff = 5000;
function retryLater() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => { if (navigator.onLine) runSync(); }, backoff);
  backoff = Math.min(backoff * 2, 300000);
}
function kickSync() { if (navigator.onLine) setTimeout(() => runSync().then((s) => { if (s) backoff = 5000; }), 300); }

async function screenSync(gen) {
  const dev = await db.meta('device');
  const last = await db.meta('last_sync');
  const out = await db.all('outbox');
  const held = await db.all('held');
  const refused = await db.all('refused');
  const item = (main, sub) => h('li', { class: 'item' }, h('span', { class: 'main' }, main), h('span', { class: 'sub' }, sub));
  show(gen,
    h('section', { class: 'card' }, h('h1', {}, t('sync')),
      h('p', {}, `${t('last_sync')}：${fmtTime(last && last.ms)}`,
        last && !last.ok ? h('span', { class: 'err' }, ` (${errText(last)})`) : null),
      h('p', { id: 'sync-progress', class: 'msg' }, status),
      h('button', { class: 'btn primary', id: 'sync-now', onclick: () => runSync() }, t('sync_now'))),
    h('section', { class: 'card', id: 'outbox' }, h('h2', {}, `${t('outbox')} (${out.length})`),
      out.length ? h('ul', { class: 'list' }, out.map((o) => item(o.summary, `${t(o.kind)} ${o.id} · #${o.seq}`))) : h('p', {}, t('nothing'))),
    h('section', { class: 'card', id: 'held' }, h('h2', {}, `${t('held')} (${held.length})`), h('p', { class: 'sub' }, t('held_help')),
      h('ul', { class: 'list' }, held.map((o) => item(o.summary, `${heldText(o.code)} · ${t(o.kind)} ${o.id}`)))),
    h('section', { class: 'card', id: 'refused' }, h('h2', {}, `${t('refused')} (${refused.length})`),
      h('p', { class: 'sub' }, t('refused_help')),
      h('ul', { class: 'list' }, refused.map((o) => item(o.summary, `${refusedText(o.code, o.message)} · ${t(o.kind)} ${o.id}`)))),
    h('section', { class: 'card' }, h('h2', {}, t('device')),
      h('p', {}, `${t('device_id')} ${dev ? dev.dev : '—'} · ${dev ? dev.volunteer : ''}`),
      h('p', { class: 'sub' }, dev ? dev.server : ''),
      h('button', { class: 'btn ghost', id: 'lang', onclick: () => { setLang(getLang() === 'en' ? 'zh' : 'en'); document.documentElement.lang = getLang() === 'en' ? 'en' : 'zh-CN'; renderBar(); route(); } }, t('language'))));
}

/* ---- routing --------------------------------------------------------------------- */

/* Screens render through show(gen, ...): only the newest route() may fill
 * the screen, so a screen whose reads finish late (route() after a sync,
 * the volunteer already on the next household) does not cover the one that
 * followed it. */
let routeSeq = 0;
function show(gen, ...nodes) {
  if (gen === routeSeq) $main.replaceChildren(...nodes);
}

async function route() {
  const gen = ++routeSeq;
  const enrolled = !!(await db.meta('device'));
  const hash = location.hash || '#/';
  if (!enrolled && !hash.startsWith('#/enroll')) { location.hash = '#/enroll'; return; }
  let m;
  try {
    if (hash.startsWith('#/enroll')) await screenEnroll(gen);
    else if ((m = /^#\/h\/(.+)$/.exec(hash))) await screenHousehold(decodeURIComponent(m[1]), gen);
    else if ((m = /^#\/p\/(.+)$/.exec(hash))) await screenPerson(decodeURIComponent(m[1]), gen);
    else if ((m = /^#\/new\/(.+)$/.exec(hash))) await screenNewPerson(decodeURIComponent(m[1]), gen);
    else if (hash.startsWith('#/sync')) await screenSync(gen);
    else await screenHome(gen);
  } catch (e) {
    show(gen, h('p', { class: 'err' }, String(e && e.message || e)));
  }
  await renderBar();
}

document.documentElement.lang = getLang() === 'en' ? 'en' : 'zh-CN';
window.addEventListener('hashchange', route);
window.addEventListener('online', () => { renderBar(); runSync(); });
window.addEventListener('offline', () => renderBar());
setInterval(() => { if (navigator.onLine && !syncing) db.meta('device').then((d) => d && runSync()); }, 120000);
if ('serviceWorker' in navigator) navigator.serviceWorker.register('./sw.js').catch(() => {});
/* For the browser tests (tests/e2e/field.mjs), which drive the app as a volunteer would
 * and read its store; commitEdit lets them sign an edit the screens would refuse. */
window.doorstepField = { runSync, db, crdt, commitEdit };
route().then(() => db.meta('device').then((d) => { if (d && navigator.onLine) runSync(); }));
