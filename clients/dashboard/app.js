/*
 * app.js — the Doorstep staff dashboard: one page, hash routes, the JSON API
 * of docs/API.md, live refresh over the /live WebSocket.
 *
 * Rules kept here:
 *   - No innerHTML with data: every value reaches the page as text nodes
 *     (h() below), so a name typed on a phone can never run as code.
 *   - No inline scripts, styles or handlers (the server's CSP forbids them).
 *   - Every write sends the session's CSRF token (X-CSRF-Token); the token
 *     comes from the login answer or GET /api/me.
 */
'use strict';
(function () {
  const I = window.DS_I18N, F = window.DS_FIELDS;
  let lang = localStorage.getItem('ds.lang') === 'en' ? 1 : 0;
  let me = null;            // {username, display, role, csrf}
  let live = null, liveTimer = null, liveBackoff = 1000, refreshTimer = null;
  let currentRender = null; // re-run on "changed"

  /* ---- small helpers ---------------------------------------------------- */
  function t(key, vars) {
    const e = I[key];
    let s = e ? e[lang] : key;
    if (vars) for (const k of Object.keys(vars)) s = s.split('{' + k + '}').join(String(vars[k]));
    return s;
  }
  function fname(n) { return F[n] ? F[n][lang] : n; }
  const SVG = 'http://www.w3.org/2000/svg';
  function h(tag, attrs, ...kids) {
    const svg = tag.startsWith('svg:');
    const el = svg ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of kids.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function $(id) { return document.getElementById(id); }
  function fmtTime(ms) {
    if (!ms) return '—';
    try {
      return new Date(ms).toLocaleString(lang ? 'en-GB' : 'zh-CN',
        {timeZone: 'Asia/Shanghai', hour12: false, year: 'numeric', month: '2-digit',
         day: '2-digit', hour: '2-digit', minute: '2-digit'});
    } catch (e) { return new Date(ms).toISOString(); }
  }
  function pct(x) { return (100 * (x || 0)).toFixed(1) + '%'; }
  function valText(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') {
      return Object.entries(v).map(([k, x]) => k + ': ' + x).join('；');
    }
    return String(v);
  }
  function toast(msg, bad) {
    const el = $('toast');
    el.textContent = msg;
    el.className = 'toast' + (bad ? ' bad' : '');
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  /* ---- the API ------------------------------------------------------------ */
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || ('HTTP ' + status));
      this.status = status;
      this.body = body;
    }
  }
  async function api(method, path, body) {
    const opt = {method, headers: {}, credentials: 'same-origin'};
    if (method !== 'GET') opt.headers['X-CSRF-Token'] = me ? me.csrf : '';
    if (body !== undefined) {
      opt.headers['Content-Type'] = 'application/json';
      opt.body = JSON.stringify(body);
    }
    const r = await fetch(path, opt);
    let j = null;
    try { j = await r.json(); } catch (e) { j = null; }
    if (r.status === 401 && path !== '/api/login') {
      showLogin();
      throw new ApiError(401, j);
    }
    if (!r.ok) throw new ApiError(r.status, j);
    return j;
  }

  /* ---- login, chrome -------------------------------------------------------- */
  function applyStatic() {
    document.documentElement.lang = lang ? 'en' : 'zh-CN';
    document.querySelectorAll('[data-i18n]').forEach(el => { el.textContent = t(el.dataset.i18n); });
    document.querySelectorAll('[data-i18n-title]').forEach(el => { el.title = t(el.dataset.i18nTitle); });
    $('lang').textContent = lang ? '中文' : 'English';
    document.title = t('app.title') + ' · Doorstep';
  }
  function showLogin() {
    me = null;
    closeLive();
    $('nav').hidden = true;
    $('logout').hidden = true;
    $('who').textContent = '';
    $('view').replaceChildren();
    $('login').hidden = false;
    $('login-user').focus();
  }
  function loggedIn(info) {
    me = info;
    $('login').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = false;
    $('who').textContent = (info.display || info.username) + ' · ' + info.role;
    document.body.classList.toggle('is-admin', info.role === 'admin');
    openLive();
    if (!location.hash || location.hash === '#' || location.hash === '#/') location.hash = '#/overview';
    else route();
  }
  async function doLogin(ev) {
    ev.preventDefault();
    $('login-error').textContent = '';
    try {
      const info = await api('POST', '/api/login',
        {username: $('login-user').value.trim(), password: $('login-password').value});
      $('login-password').value = '';
      loggedIn(info);
    } catch (e) {
      $('login-error').textContent = e.message;
    }
  }
  async function doLogout() {
    try { await api('POST', '/api/logout'); } catch (e) { /* gone anyway */ }
    showLogin();
  }

  /* ---- live updates ------------------------------------------------------------ */
  function setLive(on) {
    const el = $('live');
    el.className = 'live ' + (on ? 'on' : 'off');
    el.title = t(on ? 'live.on' : 'live.off');
  }
  function openLive() {
    if (live || !me) return;
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/live';
    let ws;
    try { ws = new WebSocket(url, 'doorstep.dashboard.v1'); } catch (e) { return; }
    live = ws;
    ws.onopen = () => { liveBackoff = 1000; setLive(true); };
    ws.onmessage = (ev) => {
      let m = null;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m && m.type === 'changed') scheduleRefresh();
    };
    ws.onclose = () => {
      setLive(false);
      if (live === ws) live = null;
      if (me) {
        clearTimeout(liveTimer);
        liveTimer = setTimeout(openLive, liveBackoff);
        liveBackoff = Math.min(liveBackoff * 2, 30000);
      }
    };
  }
  function closeLive() {
    clearTimeout(liveTimer);
    if (live) { const ws = live; live = null; ws.close(); }
    setLive(false);
  }
  function scheduleRefresh() {
    // Several commits in a burst (the evening sync) cause one refresh.
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      if (currentRender && !document.querySelector('.editing')) currentRender(true);
    }, 400);
  }

  /* ---- router ------------------------------------------------------------------ */
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, qs] = raw.split('?');
    return {parts: path.split('/').filter(Boolean).map(decodeURIComponent),
            params: new URLSearchParams(qs || '')};
  }
  function route() {
    if (!me) return;
    const {parts, params} = parseHash();
    const view = $('view');
    document.querySelectorAll('#nav a').forEach(a => {
      a.classList.toggle('active', location.hash.startsWith(a.getAttribute('href')));
    });
    const r = {
      overview: () => viewOverview(view),
      search: () => viewSearch(view, params.get('q') || ''),
      household: () => viewHousehold(view, parts[1]),
      person: () => viewPerson(view, parts[1]),
      queues: () => viewQueue(view, parts[1] === 'review' ? 'review' : 'conflicts', params),
      quarantine: () => viewQuarantine(view),
      devices: () => viewDevices(view),
      staff: () => viewStaff(view),
      report: () => viewReport(view, params.get('week') || '')
    }[parts[0] || 'overview'];
    (r || r0)();
    function r0() { viewOverview(view); }
  }
  /* Render with a loader; re-rendered quietly on live "changed". */
  function mount(view, load) {
    const run = async (quiet) => {
      if (!quiet) view.replaceChildren(h('p', {class: 'muted'}, t('common.loading')));
      try {
        const node = await load();
        if (node) view.replaceChildren(node);
      } catch (e) {
        if (e.status === 401) return;
        view.replaceChildren(h('div', {class: 'card error', role: 'alert'},
          t('common.error') + ' (' + (e.status || '') + '): ' + e.message));
      }
    };
    currentRender = run;
    return run(false);
  }

  /* ---- overview (日调度) ---------------------------------------------------------- */
  function aggCells(a) {
    return [h('td', {class: 'num'}, a.persons), h('td', {class: 'num'}, a.enrolled),
      h('td', {class: 'num'}, a.paid), h('td', {class: 'num cov'}, covBar(a.coverage)),
      h('td', {class: 'num'}, a.unpaid), h('td', {class: 'num'}, a.key_group_unenrolled),
      h('td', {class: 'num'}, a.visits_week)];
  }
  function covBar(c) {
    const w = Math.round(100 * (c || 0));
    return h('span', {class: 'covbar'},
      h('svg:svg', {viewBox: '0 0 100 8', width: '60', height: '8', 'aria-hidden': 'true'},
        h('svg:rect', {x: 0, y: 0, width: 100, height: 8, class: 'bar-bg'}),
        h('svg:rect', {x: 0, y: 0, width: w, height: 8, class: w >= 95 ? 'bar-ok' : 'bar-low'})),
      ' ' + pct(c));
  }
  function aggHead(first) {
    return h('tr', {}, h('th', {}, first), h('th', {}, t('ov.persons')), h('th', {}, t('ov.enrolled')),
      h('th', {}, t('ov.paid')), h('th', {}, t('ov.coverage')), h('th', {}, t('ov.unpaid')),
      h('th', {}, t('ov.keyunenrolled')), h('th', {}, t('ov.visits')));
  }
  function viewOverview(view) {
    return mount(view, async () => {
      const o = await api('GET', '/api/overview');
      const s = o.station;
      const kpi = (label, value, id) => h('div', {class: 'kpi', 'data-testid': id},
        h('div', {class: 'kpi-v'}, value), h('div', {class: 'kpi-l'}, label));
      const rows = [];
      for (const c of o.communities) {
        rows.push(h('tr', {class: 'community'}, h('td', {}, c.community), aggCells(c)));
        for (const g of c.grids) rows.push(h('tr', {class: 'grid'}, h('td', {class: 'indent'}, g.grid), aggCells(g)));
      }
      const groups = s.groups.filter(g => g.persons > 0).map(g =>
        h('tr', {}, h('td', {}, g.name), h('td', {class: 'num'}, g.persons),
          h('td', {class: 'num' + (g.unenrolled ? ' warn' : '')}, g.unenrolled)));
      const d = o.devices;
      return h('div', {},
        h('h1', {}, t('ov.title'), h('small', {}, ' ' + t('ov.today') + ' ' + o.today +
          ' · ' + t('ov.year') + ' ' + o.campaign_year)),
        h('div', {class: 'kpis'},
          kpi(t('ov.persons'), s.persons, 'kpi-persons'),
          kpi(t('ov.coverage'), pct(s.coverage), 'kpi-coverage'),
          kpi(t('ov.paid'), s.paid, 'kpi-paid'),
          kpi(t('ov.unpaid'), s.unpaid, 'kpi-unpaid'),
          kpi(t('ov.keyunenrolled'), s.key_group_unenrolled, 'kpi-keygroups'),
          kpi(t('ov.visits'), s.visits_week, 'kpi-visits'),
          kpi(t('ov.dev_today'), d.synced_today + ' / ' + d.active, 'kpi-synced'),
          kpi(t('ov.quarantine'), o.quarantine, 'kpi-quarantine')),
        h('div', {class: 'card'},
          h('table', {class: 'data', 'data-testid': 'overview-table'},
            h('thead', {}, aggHead(t('ov.community') + ' / ' + t('ov.grid'))),
            h('tbody', {}, rows),
            h('tfoot', {}, h('tr', {}, h('td', {}, t('ov.station')), aggCells(s))))),
        h('div', {class: 'cols'},
          h('div', {class: 'card'}, h('h2', {}, t('ov.groups')),
            groups.length ? h('table', {class: 'data'},
              h('thead', {}, h('tr', {}, h('th', {}, t('ov.group')), h('th', {}, t('ov.persons')),
                h('th', {}, t('ov.group_unenrolled')))), h('tbody', {}, groups))
              : h('p', {class: 'muted'}, t('common.none'))),
          h('div', {class: 'card'}, h('h2', {}, t('ov.stale', {n: d.stale_days})),
            d.stale.length ? h('ul', {class: 'plain', 'data-testid': 'stale-devices'}, d.stale.map(x =>
              h('li', {}, '#' + x.id + ' ' + (x.volunteer || '') + ' — ' +
                (x.last_sync_ms ? t('ov.days', {n: x.days}) + ' (' + fmtTime(x.last_sync_ms) + ')' : t('ov.never')))))
              : h('p', {class: 'muted'}, t('common.none')))));
    });
  }

  /* ---- search ---------------------------------------------------------------------- */
  function personRow(p) {
    return h('tr', {},
      h('td', {}, h('a', {href: '#/person/' + encodeURIComponent(p.id), class: 'person-link'},
        (p.names || []).join(' / ') || p.id)),
      h('td', {class: 'mono'}, (p.id_numbers_masked || []).join(' / ')),
      h('td', {}, p.household ? h('a', {href: '#/household/' + encodeURIComponent(p.household)}, p.household) : ''),
      h('td', {}, p.relation || ''),
      h('td', {}, (p.payment || []).join(' / ')),
      h('td', {}, (p.tags || []).join('、')),
      h('td', {class: 'num' + (p.conflicts ? ' warn' : '')}, p.conflicts || ''));
  }
  function personHead(extra) {
    return h('tr', {}, h('th', {}, t('col.name')), h('th', {}, t('col.idnum')), h('th', {}, t('col.household')),
      h('th', {}, t('col.relation')), h('th', {}, t('col.payment')), h('th', {}, t('col.tags')),
      h('th', {}, t('col.conflicts')), extra || null);
  }
  function viewSearch(view, q) {
    const input = h('input', {id: 'search-q', type: 'search', value: q, placeholder: t('search.hint'),
      'aria-label': t('search.hint'), autocomplete: 'off'});
    const out = h('div', {id: 'search-out'});
    const form = h('form', {class: 'search', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = '#/search?q=' + encodeURIComponent(input.value.trim());
    }}, input, h('button', {type: 'submit'}, t('search.go')));
    view.replaceChildren(h('div', {}, h('h1', {}, t('search.title')), h('div', {class: 'card'}, form), out));
    currentRender = null;
    input.focus();
    if (!q) return;
    out.replaceChildren(h('p', {class: 'muted'}, t('common.loading')));
    api('GET', '/api/search?q=' + encodeURIComponent(q)).then(r => {
      out.replaceChildren(h('div', {class: 'card'},
        h('p', {'data-testid': 'search-count'}, t('search.results', {n: r.count}) + ' · ' + t('search.by.' + r.kind)),
        r.count ? h('table', {class: 'data', 'data-testid': 'search-results'},
          h('thead', {}, personHead()), h('tbody', {}, r.results.map(personRow))) : null));
    }).catch(e => {
      if (e.status !== 401) out.replaceChildren(h('div', {class: 'card error', role: 'alert', 'data-testid': 'search-error'}, e.message));
    });
  }

  /* ---- provenance ----------------------------------------------------------------------- */
  function byText(by) {
    if (!by) return '';
    if (by.server) return (by.staff ? t('p.by_server', {s: by.staff}) : t('p.server')) + ' · ' + fmtTime(by.hlc_ms);
    return (by.volunteer || t('p.unknown_vol')) + ' · ' + t('p.device', {d: by.dev}) + ' · ' + fmtTime(by.hlc_ms);
  }
  function prov(by) { return h('span', {class: 'prov' + (by && by.server ? ' server' : '')}, byText(by)); }

  /* ---- household ------------------------------------------------------------------------ */
  function viewHousehold(view, id) {
    return mount(view, async () => {
      const o = await api('GET', '/api/households/' + encodeURIComponent(id));
      const fields = o.fields.filter(f => f.values.length).map(f => h('tr', {},
        h('th', {}, fname(f.name)),
        h('td', {}, f.values.map(v => h('div', {}, valText(v.value), ' ', prov(v.by))))));
      const visits = o.visits.concat(o.person_visits).sort((a, b) => (b.by.hlc_ms - a.by.hlc_ms));
      return h('div', {},
        h('h1', {}, t('hh.title') + ' ' + o.id),
        o.known ? null : h('p', {class: 'muted'}, t('hh.unknown')),
        h('div', {class: 'card'}, h('table', {class: 'kv'}, h('tbody', {}, fields))),
        h('div', {class: 'card'}, h('h2', {}, t('hh.members')),
          h('table', {class: 'data', 'data-testid': 'members'}, h('thead', {}, personHead()),
            h('tbody', {}, o.members.map(personRow)))),
        h('div', {class: 'card'}, h('h2', {}, t('hh.visits')),
          visits.length ? h('ul', {class: 'plain visits'}, visits.map(v => h('li', {},
            h('strong', {}, valText(v.value)), v.person ? ' (' + v.person + ')' : '', ' — ', prov(v.by))))
            : h('p', {class: 'muted'}, t('common.none'))));
    });
  }

  /* ---- person ----------------------------------------------------------------------------- */
  function keyLabel(f) { return f.key === null || f.key === undefined ? '' : ' [' + f.key + ']'; }
  function fieldValue(f) {
    if (f.crdt === 'counter') return String(f.total);
    if (!f.values.length) return '';
    if (f.crdt === 'lww' || f.crdt === 'stage') return valText(f.values[f.values.length - 1].value);
    if (f.crdt === 'set') return [...new Set(f.values.map(v => valText(v.value)))].join('、');
    if (f.crdt === 'log') return '';
    return f.values.map(v => valText(v.value)).join(' ≠ ');
  }
  function historyList(hist) {
    return h('ol', {class: 'history'}, hist.map(x => h('li', {},
      h('span', {class: 'op'}, t('p.op.' + x.op)), ' ', h('strong', {}, valText(x.value)), ' — ', prov(x.by),
      x.observed ? h('span', {class: 'muted'}, ' ⟵ ' + x.observed.map(d => d[0] + ':' + d[1]).join(', ')) : null)));
  }
  async function resolve(pid, f, value, observed) {
    if (!confirm(t('p.confirm', {f: fname(f.name) + keyLabel(f), v: value}))) return;
    const body = {field: f.name, value: value, observed: observed};
    if (f.keyed) body.key = f.key;
    try {
      const r = await api('POST', '/api/persons/' + encodeURIComponent(pid) + '/resolve', body);
      toast(t('p.resolved', {v: valText(r.value)}));
    } catch (e) {
      toast(e.message, true);
    }
    if (currentRender) currentRender(true);
  }
  function conflictCard(pid, f) {
    const observed = f.values.map(v => [v.by.dev, v.by.seq]);
    const custom = f.choices
      ? h('select', {class: 'custom'}, f.choices.map(c => h('option', {value: c}, c)))
      : h('input', {class: 'custom', type: 'text'});
    return h('div', {class: 'conflict card', 'data-field': f.name, 'data-testid': 'conflict-' + f.name},
      h('h3', {}, t('p.conflict') + '：' + fname(f.name) + keyLabel(f)),
      h('div', {class: 'sides'}, f.values.map((v, i) => h('div', {class: 'side'},
        h('div', {class: 'side-v'}, valText(v.value)),
        h('div', {}, prov(v.by)),
        h('button', {type: 'button', class: 'resolve', 'data-testid': 'resolve-' + f.name + '-' + i,
          onclick: () => resolve(pid, f, v.value, observed)}, t('p.use_this'))))),
      h('div', {class: 'other'}, h('span', {}, t('p.other_value')), custom,
        h('button', {type: 'button', class: 'resolve', onclick: () => {
          const v = custom.value.trim();
          if (v) resolve(pid, f, v, observed);
        }}, t('p.resolve'))));
  }
  function reviewCard(pid, f) {
    if (!f || !f.choices) return null;
    const cur = f.values.length ? f.values[0].value : null;
    const idx = cur === null ? -1 : f.choices.indexOf(cur);
    const next = f.choices.slice(idx + 1);
    return h('div', {class: 'card'}, h('h2', {}, t('p.review')),
      h('ol', {class: 'stages'}, f.choices.map((c, i) => h('li', {class: i <= idx ? 'done' : ''}, c))),
      cur !== null ? h('p', {}, prov(f.values[0].by)) : null,
      next.map(s => h('button', {type: 'button', class: 'raise', onclick: async () => {
        try {
          await api('POST', '/api/persons/' + encodeURIComponent(pid) + '/review', {stage: s});
          toast(t('p.raise') + ' ' + s);
        } catch (e) { toast(e.message, true); }
        if (currentRender) currentRender(true);
      }}, t('p.raise') + ' ' + s)));
  }
  function viewPerson(view, id) {
    return mount(view, async () => {
      const p = await api('GET', '/api/persons/' + encodeURIComponent(id));
      const names = (p.fields.find(f => f.name === 'name') || {values: []}).values.map(v => valText(v.value));
      const rows = [];
      for (const f of p.fields) {
        if (f.crdt === 'log' || f.name === 'review') continue;
        const hist = h('details', {class: 'hist'}, h('summary', {}, t('p.show_history') + ' (' + f.history.length + ')'),
          historyList(f.history));
        rows.push(h('tr', {class: f.conflict ? 'conflict-row' : '', 'data-field': f.name},
          h('th', {title: f.doc || ''}, fname(f.name) + keyLabel(f)),
          h('td', {class: 'val', 'data-testid': 'value-' + f.name}, fieldValue(f),
            f.conflict ? h('span', {class: 'badge'}, t('p.conflict')) : null),
          h('td', {}, f.crdt === 'set' || f.crdt === 'counter' ? f.values.slice(-3).map(v => h('div', {}, prov(v.by)))
            : f.values.map(v => h('div', {}, f.values.length > 1 ? valText(v.value) + '：' : '', prov(v.by)))),
          h('td', {}, f.history.length ? hist : null)));
      }
      const visitsF = p.fields.find(f => f.name === 'visits');
      const hh = p.household;
      return h('div', {},
        h('h1', {}, t('p.title') + '：' + (names.join(' / ') || p.id), h('small', {}, ' ' + p.id)),
        hh ? h('p', {}, t('col.household') + '：', h('a', {href: '#/household/' + encodeURIComponent(hh.id)}, hh.id),
          ' ', [hh.community, hh.grid, hh.address].filter(Boolean).join(' · ')) : null,
        p.deleted ? h('p', {class: 'error'}, t('p.deleted')) : null,
        h('div', {class: 'card', 'data-testid': 'conflicts'}, h('h2', {}, t('p.conflicts')),
          p.conflicts.length ? p.conflicts.map(f => conflictCard(p.id, f)) : h('p', {class: 'muted'}, t('p.no_conflicts'))),
        h('div', {class: 'card'}, h('table', {class: 'data fields', 'data-testid': 'fields'},
          h('thead', {}, h('tr', {}, h('th', {}, t('p.field')), h('th', {}, t('p.value')), h('th', {}, t('p.prov')),
            h('th', {}, t('p.history')))), h('tbody', {}, rows))),
        reviewCard(p.id, p.fields.find(f => f.name === 'review')),
        visitsF ? h('div', {class: 'card'}, h('h2', {}, fname('visits')),
          visitsF.values.length ? h('ul', {class: 'plain visits'}, visitsF.values.slice().reverse().map(v =>
            h('li', {}, h('strong', {}, valText(v.value)), ' — ', prov(v.by)))) : h('p', {class: 'muted'}, t('common.none'))) : null,
        h('details', {class: 'card'}, h('summary', {}, t('p.all_deltas') + (p.history_truncated ? ' ' + t('p.truncated') : '')),
          h('ol', {class: 'history'}, p.history.map(d => h('li', {}, '#' + d.sseq + ' ', prov(d.by), ' — ',
            (d.ops || []).map(o => h('div', {class: 'op-line'}, t('p.op.' + o.op) + ' ' + (o.field ? fname(o.field) : '') +
              (o.key !== null && o.key !== undefined ? ' [' + o.key + ']' : '') + (o.value !== null ? '：' + valText(o.value) : ''))))))));
    });
  }

  /* ---- queues ---------------------------------------------------------------------------- */
  function viewQueue(view, which, params) {
    return mount(view, async () => {
      const qs = new URLSearchParams();
      if (params.get('after')) qs.set('after', params.get('after'));
      if (which === 'review' && params.get('stage')) qs.set('stage', params.get('stage'));
      const r = await api('GET', '/api/queues/' + which + (qs.toString() ? '?' + qs : ''));
      let filter = null;
      if (which === 'review') {
        const sel = h('select', {onchange: () => {
          location.hash = '#/queues/review' + (sel.value ? '?stage=' + encodeURIComponent(sel.value) : '');
        }}, h('option', {value: ''}, t('q.all_open')),
        r.stages.slice(0, -1).map(s => h('option', {value: s, selected: params.get('stage') === s}, s)));
        filter = h('p', {}, t('q.stage_filter'), sel);
      }
      const extra = which === 'conflicts' ? h('th', {}, t('col.fields')) : h('th', {}, t('col.stage'));
      const rows = r.items.map(p => {
        const row = personRow(p);
        row.appendChild(which === 'conflicts'
          ? h('td', {}, p.conflict_fields.map(c => h('div', {}, fname(c.field) + (c.key !== null ? ' [' + c.key + ']' : '') +
              '：' + c.values.map(valText).join(' ≠ '))))
          : h('td', {}, r.stages[p.review_ordinal] || ''));
        return row;
      });
      return h('div', {},
        h('h1', {}, t(which === 'review' ? 'q.review' : 'q.conflicts')), filter,
        h('div', {class: 'card'},
          rows.length ? h('table', {class: 'data', 'data-testid': 'queue'}, h('thead', {}, personHead(extra)), h('tbody', {}, rows))
            : h('p', {class: 'muted'}, t('q.none')),
          h('p', {class: 'muted small'}, t('q.scan', {n: r.scan_budget})),
          r.next ? h('a', {href: '#/queues/' + which + '?after=' + encodeURIComponent(r.next) +
            (params.get('stage') ? '&stage=' + encodeURIComponent(params.get('stage')) : '')}, t('common.more')) : null));
    });
  }

  /* ---- admin: quarantine, devices, staff ------------------------------------------------------ */
  function viewQuarantine(view) {
    return mount(view, async () => {
      const r = await api('GET', '/api/quarantine?state=all');
      const rows = r.items.map(x => h('tr', {},
        h('td', {class: 'num'}, x.qid), h('td', {}, x.reason),
        h('td', {}, '#' + x.dev + ' ' + (x.volunteer || '') + ' seq ' + x.seq),
        h('td', {}, x.record ? x.kind + ' ' + x.record : (x.decode_error || '')),
        h('td', {}, (x.ops || []).map(o => h('div', {}, t('p.op.' + o.op) + ' ' + (o.field ? fname(o.field) : '') + (o.value !== null ? '：' + valText(o.value) : '')))),
        h('td', {}, fmtTime(x.at_ms)),
        h('td', {}, x.state + (x.decided_by ? ' · ' + x.decided_by : '')),
        h('td', {}, x.state === 'pending' ? [
          h('button', {type: 'button', onclick: () => decide(x.qid, 'accept')}, t('qu.accept')), ' ',
          h('button', {type: 'button', class: 'danger', onclick: () => decide(x.qid, 'reject')}, t('qu.reject'))] : null)));
      return h('div', {}, h('h1', {}, t('qu.title')),
        h('div', {class: 'card'}, h('p', {}, t('qu.total', {n: r.total})),
          rows.length ? h('table', {class: 'data', 'data-testid': 'quarantine'},
            h('thead', {}, h('tr', {}, ['#', t('qu.reason'), t('dev.title').split('（')[0], t('qu.record'), '', t('qu.at'), t('qu.state'), ''].map(x => h('th', {}, x)))),
            h('tbody', {}, rows)) : h('p', {class: 'muted'}, t('common.none'))));
    });
    async function decide(qid, what) {
      try {
        await api('POST', '/api/quarantine/' + qid + '/' + what, {});
      } catch (e) { toast(e.message, true); }
      if (currentRender) currentRender(true);
    }
  }
  function viewDevices(view) {
    return mount(view, async () => {
      const r = await api('GET', '/api/devices');
      const act = async (d, what, body) => {
        if (what === 'revoke' && !confirm(t('dev.confirm_revoke', {d: d.id, v: d.volunteer}))) return;
        try { await api('POST', '/api/devices/' + d.id + '/' + what, body); } catch (e) { toast(e.message, true); }
        if (currentRender) currentRender(true);
      };
      const rows = r.items.map(d => h('tr', {'data-device': d.id},
        h('td', {class: 'num'}, d.id), h('td', {}, d.volunteer || ''),
        h('td', {class: 'dev-state'}, d.state + (d.rotate_required ? ' · ' + t('dev.rotating') : '')),
        h('td', {}, fmtTime(d.last_sync_ms)), h('td', {class: 'num'}, d.last_seq),
        h('td', {class: 'num'}, d.scope_households),
        h('td', {}, d.state === 'active' ? [
          h('button', {type: 'button', onclick: () => act(d, 'rotate')}, t('dev.rotate')), ' ',
          h('button', {type: 'button', class: 'danger revoke', onclick: () => act(d, 'revoke', {mode: 'soft'})}, t('dev.revoke')), ' ',
          h('button', {type: 'button', class: 'danger', onclick: () => act(d, 'revoke', {mode: 'hard'})}, t('dev.revoke_hard'))]
          : d.state === 'revoked_soft' ? h('button', {type: 'button', class: 'danger', onclick: () => act(d, 'revoke', {mode: 'hard'})}, t('dev.revoke_hard')) : null)));
      // Enroll a phone: a one-time token, shown once as text and as a QR code.
      const vol = h('input', {required: true, placeholder: t('dev.volunteer'), 'data-testid': 'enroll-volunteer'});
      const scope = h('input', {required: true, placeholder: 'H001, C01/G03', 'data-testid': 'enroll-scope'});
      const days = h('input', {type: 'number', min: '1', max: '90', value: '7'});
      const out = h('div', {'data-testid': 'enroll-result'});
      const qrSvg = (qr) => {
        const n = qr.size, q = 4, sz = n + 2 * q;
        const rects = [];
        qr.rows.forEach((row, y) => { for (let x = 0; x < n; x++) if (row[x] === '1') rects.push(h('svg:rect', {x: x + q, y: y + q, width: 1, height: 1})); });
        return h('svg:svg', {viewBox: '0 0 ' + sz + ' ' + sz, width: '220', height: '220', class: 'qr', role: 'img', 'aria-label': 'QR'},
          h('svg:rect', {x: 0, y: 0, width: sz, height: sz, fill: '#fff'}), h('svg:g', {fill: '#000'}, rects));
      };
      const form = h('form', {class: 'inline', onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const list = scope.value.split(/[,，\s]+/).filter(Boolean);
          const r2 = await api('POST', '/api/devices/enroll', {volunteer: vol.value, scope: list, expires_days: Number(days.value) || 7});
          out.replaceChildren(h('div', {class: 'card'},
            h('p', {}, t('dev.enroll_token') + ' ', h('code', {'data-testid': 'enroll-token'}, r2.token)),
            r2.qr ? qrSvg(r2.qr) : null,
            h('p', {class: 'muted small'}, r2.uri),
            h('p', {class: 'muted small'}, t('dev.enroll_once'))));
        } catch (e) { toast(e.message, true); }
      }}, vol, scope, days, h('button', {type: 'submit'}, t('dev.enroll')));
      return h('div', {}, h('h1', {}, t('dev.title')),
        h('div', {class: 'card'}, h('table', {class: 'data', 'data-testid': 'devices'},
          h('thead', {}, h('tr', {}, [t('dev.id'), t('dev.volunteer'), t('dev.state'), t('dev.last_sync'), t('dev.last_seq'), t('dev.scope'), ''].map(x => h('th', {}, x)))),
          h('tbody', {}, rows))),
        h('div', {class: 'card'}, h('h2', {}, t('dev.enroll')), form, out));
    });
  }
  function viewStaff(view) {
    return mount(view, async () => {
      const r = await api('GET', '/api/staff');
      const u = h('input', {required: true, pattern: '[a-z0-9_.\\-]{1,32}', placeholder: 'username'});
      const d = h('input', {required: true, placeholder: t('st.display')});
      const role = h('select', {}, h('option', {value: 'staff'}, 'staff'), h('option', {value: 'admin'}, 'admin'));
      const pw = h('input', {type: 'password', required: true, minlength: '8', autocomplete: 'new-password'});
      const form = h('form', {class: 'inline', onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api('POST', '/api/staff', {username: u.value, display: d.value, role: role.value, password: pw.value});
          pw.value = '';
          if (currentRender) currentRender(true);
        } catch (e) { toast(e.message, true); }
      }}, u, d, role, pw, h('button', {type: 'submit'}, t('st.create')));
      return h('div', {}, h('h1', {}, t('st.title')),
        h('div', {class: 'card'}, h('table', {class: 'data'},
          h('thead', {}, h('tr', {}, ['username', t('st.display'), t('st.role'), t('st.last_login'), ''].map(x => h('th', {}, x)))),
          h('tbody', {}, r.items.map(s => h('tr', {}, h('td', {}, s.username), h('td', {}, s.display || ''),
            h('td', {}, s.role), h('td', {}, fmtTime(s.last_login_ms)), h('td', {}, s.disabled ? 'disabled' : '')))))),
        h('div', {class: 'card'}, h('h2', {}, t('st.create')), form));
    });
  }

  /* ---- weekly report (周通报) --------------------------------------------------------------- */
  function barChart(items) {   // [{label, value 0..1}]
    const W = 640, bh = 22, gap = 8, left = 120, H = items.length * (bh + gap) + 30;
    return h('svg:svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': t('rep.chart_cov')},
      [0, 0.25, 0.5, 0.75, 1].map(x => [
        h('svg:line', {x1: left + x * (W - left - 60), x2: left + x * (W - left - 60), y1: 0, y2: H - 20, class: 'gridline'}),
        h('svg:text', {x: left + x * (W - left - 60), y: H - 5, class: 'axis', 'text-anchor': 'middle'}, (x * 100) + '%')]),
      items.map((it, i) => {
        const y = i * (bh + gap) + 4, w = Math.max(0, Math.min(1, it.value)) * (W - left - 60);
        return [h('svg:text', {x: left - 8, y: y + bh * 0.7, class: 'label', 'text-anchor': 'end'}, it.label),
          h('svg:rect', {x: left, y: y, width: w, height: bh, class: it.value >= 0.95 ? 'bar-ok' : 'bar-low'}),
          h('svg:text', {x: left + w + 6, y: y + bh * 0.7, class: 'value'}, pct(it.value))];
      }));
  }
  function lineChart(points, label) { // [{label, value}]
    const W = 640, H = 200, l = 40, b = 30, top = 10;
    const max = Math.max(1, ...points.map(p => p.value));
    const x = i => l + i * (W - l - 30) / Math.max(1, points.length - 1);
    const y = v => top + (H - top - b) * (1 - v / max);
    const path = points.map((p, i) => (i ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(p.value).toFixed(1)).join(' ');
    return h('svg:svg', {viewBox: '0 0 ' + W + ' ' + H, class: 'chart', role: 'img', 'aria-label': label || t('rep.chart_visits')},
      [0, 0.5, 1].map(f => [h('svg:line', {x1: l, x2: W - 10, y1: y(max * f), y2: y(max * f), class: 'gridline'}),
        h('svg:text', {x: l - 4, y: y(max * f) + 4, class: 'axis', 'text-anchor': 'end'}, Math.round(max * f))]),
      h('svg:path', {d: path, class: 'line'}),
      points.map((p, i) => [h('svg:circle', {cx: x(i), cy: y(p.value), r: 3, class: 'dot'}),
        i % 3 === points.length % 3 - 1 || i === points.length - 1
          ? h('svg:text', {x: x(i), y: H - 8, class: 'axis', 'text-anchor': 'middle'}, p.label.slice(5)) : null]));
  }
  function viewReport(view, week) {
    return mount(view, async () => {
      const r = await api('GET', '/api/report/weekly' + (week ? '?week=' + encodeURIComponent(week) : ''));
      const weekInput = h('input', {type: 'date', value: r.week_start, onchange: () => {
        location.hash = '#/report?week=' + encodeURIComponent(weekInput.value);
      }});
      const rows = [];
      for (const c of r.communities) {
        for (const g of c.grids) rows.push(h('tr', {}, h('td', {}, c.community), h('td', {}, g.grid), aggCells(g).slice(0)));
        rows.push(h('tr', {class: 'community'}, h('td', {}, c.community), h('td', {}, t('rep.total')), aggCells(c)));
      }
      const head = h('tr', {}, h('th', {}, t('ov.community')), ...aggHead(t('ov.grid')).childNodes);
      return h('div', {class: 'report'},
        h('div', {class: 'no-print toolbar'}, t('rep.week') + ' ', weekInput, ' ',
          h('button', {type: 'button', onclick: () => window.print()}, t('rep.print')), ' ',
          h('a', {href: '/api/report/weekly.csv?week=' + encodeURIComponent(r.week_start), download: '', 'data-testid': 'csv-link'}, t('rep.csv'))),
        h('h1', {}, t('rep.title'), h('small', {}, ' ' + r.week_start + ' — ' + r.week_end)),
        h('p', {class: 'muted small'}, t('rep.generated') + ' ' + fmtTime(r.generated_ms) + ' · ' + t('ov.year') + ' ' + r.campaign_year),
        h('div', {class: 'kpis'},
          h('div', {class: 'kpi'}, h('div', {class: 'kpi-v'}, pct(r.station.coverage)), h('div', {class: 'kpi-l'}, t('ov.coverage'))),
          h('div', {class: 'kpi'}, h('div', {class: 'kpi-v'}, r.station.persons), h('div', {class: 'kpi-l'}, t('ov.persons'))),
          h('div', {class: 'kpi'}, h('div', {class: 'kpi-v'}, r.station.unpaid), h('div', {class: 'kpi-l'}, t('ov.unpaid'))),
          h('div', {class: 'kpi'}, h('div', {class: 'kpi-v'}, r.station.visits_week), h('div', {class: 'kpi-l'}, t('ov.visits')))),
        h('div', {class: 'card'}, h('h2', {}, t('rep.chart_cov')),
          barChart(r.communities.map(c => ({label: c.community, value: c.coverage})).concat([{label: t('ov.station'), value: r.station.coverage}]))),
        h('div', {class: 'card', 'data-testid': 'coverage-history'}, h('h2', {}, t('rep.chart_cov_hist')),
          (r.coverage_history || []).length
            ? lineChart(r.coverage_history.map(d => ({label: d.day, value: Math.round(d.coverage * 1000) / 10})), t('rep.chart_cov_hist'))
            : h('p', {class: 'muted small'}, t('rep.no_history'))),
        h('div', {class: 'card'}, h('h2', {}, t('rep.chart_visits')),
          lineChart(r.weeks.map(w => ({label: w.week_start, value: w.visits})))),
        h('div', {class: 'card'}, h('table', {class: 'data', 'data-testid': 'report-table'},
          h('thead', {}, head), h('tbody', {}, rows),
          h('tfoot', {}, h('tr', {}, h('td', {}, t('ov.station')), h('td', {}, t('rep.total')), aggCells(r.station))))),
        h('p', {class: 'muted small'}, r.note));
    });
  }

  /* ---- start ------------------------------------------------------------------------------- */
  document.addEventListener('DOMContentLoaded', async () => {
    applyStatic();
    $('login-form').addEventListener('submit', doLogin);
    $('logout').addEventListener('click', doLogout);
    $('lang').addEventListener('click', () => {
      lang = 1 - lang;
      localStorage.setItem('ds.lang', lang ? 'en' : 'zh');
      applyStatic();
      if (me) route();
    });
    window.addEventListener('hashchange', route);
    try {
      const info = await api('GET', '/api/me');
      loggedIn(info);
    } catch (e) {
      if (e.status !== 401) showLogin();
    }
  });
})();
