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
 *   - Chinese screens show Chinese only: words come from i18n.js, errors
 *     from the API's message_zh (or the error code's i18n text), states and
 *     reasons through their i18n keys.  Machine identifiers a person may
 *     need to copy (usernames, tokens, links) are set in <code>.
 */
'use strict';
(function () {
  const I = window.DS_I18N, F = window.DS_FIELDS, M = window.DS_MEMBERS;
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
  function tOr(key, fallbackKey, vars) { return I[key] ? t(key, vars) : t(fallbackKey, vars); }
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
  /* A value as text: visit entries with their members' names, booleans as 是/否. */
  function valText(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'boolean') return t(v ? 'common.yes' : 'common.no');
    if (typeof v === 'object') {
      const order = Object.keys(M);
      return Object.entries(v).sort((a, b) => (order.indexOf(a[0]) + 1 || 99) - (order.indexOf(b[0]) + 1 || 99))
        .map(([k, x]) => (M[k] ? M[k][lang] : k) + '：' + valText(x)).join('；');
    }
    return String(v);
  }
  /* A schema doc string ("中文。English …"): the Chinese sentence on Chinese screens. */
  function docText(doc) {
    if (!doc) return '';
    if (lang) return doc;
    const m = /^[^A-Za-z]*?。/.exec(doc);
    return m ? m[0] : (/[A-Za-z]/.test(doc) ? '' : doc);
  }
  function roleName(r) { return tOr('role.' + r, 'dev.state.unknown'); }
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
  /*
   * What an error says to a person, in the page's language: the API's
   * message_zh / message_en when it has them; else the error code's text
   * from i18n.js (with the Chinese sentence of the API's message, if it has
   * one without Latin words); else the HTTP status.  Never an English
   * sentence on a Chinese screen.
   */
  function errText(e) {
    const b = (e && e.body) || {};
    const fallback = e && e.status ? t('err.http', {s: e.status}) : t('err.network');
    if (lang) return b.message_en || b.message || fallback;
    if (b.message_zh) return b.message_zh;
    const k = 'err.' + (b.error || '');
    if (!I[k]) return fallback;
    const m = /[\u3400-\u9fff][^]*?。/.exec(b.message || '');
    const frag = m && !/[A-Za-z]/.test(m[0]) && !t(k).includes(m[0]) ? m[0] : '';
    return t(k) + frag;
  }
  async function api(method, path, body) {
    const opt = {method, headers: {}, credentials: 'same-origin'};
    if (method !== 'GET') opt.headers['X-CSRF-Token'] = me ? me.csrf : '';
    if (body !== undefined) {
      opt.headers['Content-Type'] = 'application/json';
      opt.body = JSON.stringify(body);
    }
    let r;
    try { r = await fetch(path, opt); } catch (e) { throw new ApiError(0, null); }
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
    document.title = t(document.querySelector('.brand').dataset.i18n || 'app.title') + ' · Doorstep';
    if (me) showWho();
  }
  /* A district server (streets relay to it) calls itself 区医保中心, not a
   * street station: learnt from the overview, kept for this tab's reloads. */
  function setDistrict(on) {
    const brand = document.querySelector('.brand'), key = on ? 'app.title_district' : 'app.title';
    if (brand.dataset.i18n === key) return;
    brand.dataset.i18n = key;
    try { if (on) sessionStorage.setItem('doorstep-district', '1'); else sessionStorage.removeItem('doorstep-district'); }
    catch (e) { /* storage off: the next overview or report sets it again */ }
    applyStatic();
  }
  function showWho() {
    $('who').textContent = (me.display || me.username) + '（' + roleName(me.role) + '）';
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
    showWho();
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
      $('login-error').textContent = errText(e);
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
      overview: () => viewOverview(view, params),
      search: () => viewSearch(view, params.get('q') || '', params),
      household: () => viewHousehold(view, parts[1]),
      person: () => viewPerson(view, parts[1]),
      queues: () => viewQueue(view, parts[1] === 'review' ? 'review' : 'conflicts', params),
      quarantine: () => viewQuarantine(view, params),
      devices: () => viewDevices(view),
      staff: () => viewStaff(view),
      report: () => viewReport(view, params.get('week') || '')
    }[parts[0] || 'overview'];
    (r || r0)();
    function r0() { viewOverview(view, params); }
  }
  /* Render with a loader; re-rendered quietly on live "changed".  Only the
   * newest render may fill the view: a page left before its data arrived
   * (the overview still loading when the user clicks 隔离区) must not
   * replace the page that followed it when its answer comes in late. */
  let renderSeq = 0;
  function mount(view, load) {
    const run = async (quiet) => {
      const mine = ++renderSeq;
      if (!quiet) view.replaceChildren(h('p', {class: 'muted'}, t('common.loading')));
      try {
        const node = await load();
        if (mine !== renderSeq) return;
        if (node) view.replaceChildren(node);
      } catch (e) {
        if (mine !== renderSeq || e.status === 401) return;
        view.replaceChildren(h('div', {class: 'card error', role: 'alert', 'data-testid': 'view-error'},
          t('common.error') + '：' + errText(e)));
      }
    };
    currentRender = run;
    return run(false);
  }
  /* A hash route with params (empty ones left out). */
  function hashOf(base, params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') p.set(k, v);
    const qs = p.toString();
    return base + (qs ? '?' + qs : '');
  }
  /* "第 a–b 条，共 n 条" with links to the previous and next page. */
  function pager(base, params, total, offset, limit, rangeKey) {
    const shown = Math.max(0, Math.min(limit, total - offset));
    const text = total ? t(rangeKey || 'page.range', {a: offset + 1, b: offset + shown, n: total})
      : t('page.zero');
    const link = (off, label, cls) => h('a', {class: 'page ' + cls,
      href: hashOf(base, Object.assign({}, params, {offset: off || null}))}, label);
    return h('div', {class: 'pager', 'data-testid': 'pager'},
      h('span', {class: 'page-range'}, text),
      offset > 0 ? link(Math.max(0, offset - limit), t('page.prev'), 'prev') : null,
      offset + limit < total ? link(offset + limit, t('page.next'), 'next') : null);
  }
  function intParam(params, name, def) {
    const v = Number(params.get(name));
    return Number.isInteger(v) && v >= 0 && params.get(name) !== '' && params.get(name) !== null ? v : def;
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
  const OV_LIMITS = [10, 20, 50, 100];
  /* A district (its streets relay to it: /api/overview's "streets"): one row
   * per street, each a link that scopes the overview to that street. */
  function streetsCard(streets, current, link) {
    if (!streets || !streets.length) return null;
    return h('div', {class: 'card', 'data-testid': 'streets'}, h('h2', {}, t('ov.streets')),
      h('table', {class: 'data', 'data-testid': 'streets-table'},
        h('thead', {}, h('tr', {}, ...aggHead(t('ov.street')).childNodes, h('th', {}, t('ov.street_sync')))),
        h('tbody', {}, streets.map(st => h('tr', {class: st.id === current ? 'community selected' : 'community'},
          h('td', {}, link ? h('a', {href: link(st), 'data-testid': 'street-' + st.id}, st.name || t('ov.street_no', {d: st.id}))
            : (st.name || t('ov.street_no', {d: st.id}))),
          aggCells(st),
          h('td', {class: 'small'}, (st.last_sync_ms ? fmtTime(st.last_sync_ms) : t('ov.never')) +
            (st.state !== 'active' ? ' · ' + st.state : '')))))));
  }
  function viewOverview(view, params) {
    const community = params.get('community') || '', grid = params.get('grid') || '';
    const street = intParam(params, 'street', 0);
    const offset = intParam(params, 'offset', 0), limit = intParam(params, 'limit', 20);
    return mount(view, async () => {
      const o = await api('GET', hashOf('/api/overview', {community, grid, street: street || null, offset, limit}));
      const district = (o.streets || []).length > 0;
      setDistrict(district);
      const whole = district ? t('ov.district') : t('ov.station');
      // Scoped to one street: its own total under the table.
      const sc = district && street ? o.streets.find(x => x.id === street) : null;
      const scopeName = sc ? (sc.name || t('ov.street_no', {d: sc.id})) : whole, scopeAgg = sc || o.station;
      const s = o.station;
      const kpi = (label, value, id, href) => h(href ? 'a' : 'div', {class: 'kpi', 'data-testid': id, href},
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
      // Filters: community, then a grid of it; page size.
      const go = (p) => { location.hash = hashOf('#/overview', Object.assign({community, grid, street: street || null, limit}, p)); };
      const ssel = district ? h('select', {'data-testid': 'filter-street', 'aria-label': t('ov.street'),
        onchange: () => go({street: ssel.value || null, community: '', grid: '', offset: null})},
      h('option', {value: ''}, t('ov.all_streets')),
      o.streets.map(st => h('option', {value: st.id, selected: st.id === street}, st.name || t('ov.street_no', {d: st.id})))) : null;
      const place = (o.places || []).find(p => p.community === community);
      const csel = h('select', {'data-testid': 'filter-community', 'aria-label': t('ov.community'),
        onchange: () => go({community: csel.value, grid: '', offset: null})},
      h('option', {value: ''}, t('ov.all_communities')),
      (o.places || []).filter(p => !street || p.street === street).map(p =>
        h('option', {value: p.community, selected: p.community === community}, p.community)));
      const gsel = h('select', {'data-testid': 'filter-grid', 'aria-label': t('ov.grid'), disabled: !place,
        onchange: () => go({grid: gsel.value, offset: null})},
      h('option', {value: ''}, t('ov.all_grids')),
      (place ? place.grids : []).map(g => h('option', {value: g, selected: g === grid}, g)));
      const lsel = h('select', {'aria-label': t('ov.per_page'), onchange: () => go({limit: lsel.value, offset: null})},
        OV_LIMITS.concat(OV_LIMITS.includes(limit) ? [] : [limit]).map(n =>
          h('option', {value: n, selected: n === limit}, String(n))));
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
          kpi(t('ov.conflicts'), o.conflicts ? o.conflicts.persons : 0, 'kpi-conflicts', '#/queues/conflicts'),
          kpi(t('ov.quarantine'), o.quarantine_pending, 'kpi-quarantine')),
        streetsCard(o.streets, street, st => hashOf('#/overview', {street: st.id, limit})),
        h('div', {class: 'card'},
          h('div', {class: 'toolbar'}, t('ov.filter'), ssel, csel, gsel, h('span', {class: 'grow'}),
            t('ov.per_page'), lsel),
          h('table', {class: 'data', 'data-testid': 'overview-table'},
            h('thead', {}, aggHead(t('ov.community') + ' / ' + t('ov.grid'))),
            h('tbody', {}, rows),
            h('tfoot', {}, h('tr', {}, h('td', {}, scopeName), aggCells(scopeAgg)))),
          pager('#/overview', {community, grid, street: street || null, limit}, o.total_communities, o.offset, o.limit, 'ov.communities_range')),
        h('div', {class: 'cols'},
          h('div', {class: 'card'}, h('h2', {}, t('ov.groups')),
            groups.length ? h('table', {class: 'data'},
              h('thead', {}, h('tr', {}, h('th', {}, t('ov.group')), h('th', {}, t('ov.persons')),
                h('th', {}, t('ov.group_unenrolled')))), h('tbody', {}, groups))
              : h('p', {class: 'muted'}, t('common.none'))),
          h('div', {class: 'card'}, h('h2', {}, t('ov.stale', {n: d.stale_days})),
            d.stale.length ? h('ul', {class: 'plain', 'data-testid': 'stale-devices'}, d.stale.map(x =>
              h('li', {}, t('ov.dev_no', {d: x.id}) + ' ' + (x.volunteer || '') + ' — ' +
                (x.last_sync_ms ? t('ov.days', {n: x.days}) + '（' + fmtTime(x.last_sync_ms) + '）' : t('ov.never')))))
              : h('p', {class: 'muted'}, t('common.none')))));
    });
  }

  /* ---- search ---------------------------------------------------------------------- */
  function headName(head) {
    if (!head) return '';
    return (head.names && head.names.length) ? head.names.join(' / ') : '';
  }
  /* The household as a link: its head's name, the id beside it. */
  function householdLink(id, head) {
    if (!id) return '';
    const n = headName(head);
    return h('a', {href: '#/household/' + encodeURIComponent(id), class: 'household-link'},
      n ? t('hh.of', {n}) : id, n ? h('small', {class: 'muted'}, ' ' + id) : null);
  }
  function personRow(p) {
    return h('tr', {},
      h('td', {}, h('a', {href: '#/person/' + encodeURIComponent(p.id), class: 'person-link'},
        (p.names || []).join(' / ') || p.id)),
      h('td', {class: 'mono'}, (p.id_numbers_masked || []).join(' / ')),
      h('td', {}, householdLink(p.household, p.household_head)),
      h('td', {}, p.relation || ''),
      h('td', {}, (p.payment || []).join(' ≠ ')),
      h('td', {}, (p.tags || []).join('、')),
      h('td', {class: 'num' + (p.conflicts ? ' warn' : '')}, p.conflicts || ''));
  }
  function personHead(extra) {
    return h('tr', {}, h('th', {}, t('col.name')), h('th', {}, t('col.idnum')), h('th', {}, t('col.household')),
      h('th', {}, t('col.relation')), h('th', {}, t('col.payment')), h('th', {}, t('col.tags')),
      h('th', {}, t('col.conflicts')), extra || null);
  }
  function viewSearch(view, q, params) {
    const offset = intParam(params, 'offset', 0), limit = intParam(params, 'limit', 50);
    const input = h('input', {id: 'search-q', type: 'search', value: q, placeholder: t('search.hint'),
      'aria-label': t('search.hint'), autocomplete: 'off'});
    const out = h('div', {id: 'search-out'});
    const form = h('form', {class: 'search', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = '#/search?q=' + encodeURIComponent(input.value.trim());
    }}, input, h('button', {type: 'submit'}, t('search.go')));
    view.replaceChildren(h('div', {}, h('h1', {}, t('search.title')), h('div', {class: 'card'}, form), out));
    currentRender = null;
    ++renderSeq; /* a page still loading must not cover the search page */
    input.focus();
    if (!q) return;
    out.replaceChildren(h('p', {class: 'muted'}, t('common.loading')));
    api('GET', hashOf('/api/search', {q, offset, limit})).then(r => {
      const total = r.total === undefined ? r.count : r.total;
      out.replaceChildren(h('div', {class: 'card'},
        h('p', {'data-testid': 'search-count'}, t('search.results', {n: total}) + ' · ' + t('search.by.' + r.kind)),
        r.count ? h('table', {class: 'data', 'data-testid': 'search-results'},
          h('thead', {}, personHead()), h('tbody', {}, r.results.map(personRow))) : null,
        total > limit ? pager('#/search', {q, limit: params.get('limit')}, total, r.offset || 0, r.limit || limit) : null));
    }).catch(e => {
      if (e.status !== 401) out.replaceChildren(h('div', {class: 'card error', role: 'alert', 'data-testid': 'search-error'}, errText(e)));
    });
  }

  /* ---- provenance ----------------------------------------------------------------------- */
  function byText(by) {
    if (!by) return '';
    if (by.server) {
      const who = by.staff_display || by.staff;
      return (who ? t('p.by_server', {s: who}) : t('p.server')) + ' · ' + fmtTime(by.hlc_ms);
    }
    return (by.volunteer || t('p.unknown_vol')) + ' · ' + t('p.device', {d: by.dev}) + ' · ' + fmtTime(by.hlc_ms);
  }
  function prov(by) { return h('span', {class: 'prov' + (by && by.server ? ' server' : '')}, byText(by)); }
  /* An mv field's distinct values with their writers (the API's "sides";
   * grouped here for an older server that only sends "values"). */
  function sidesOf(f) {
    if (f.sides) return f.sides;
    const out = [];
    for (const v of f.values) {
      const k = JSON.stringify(v.value);
      const s = out.find(x => JSON.stringify(x.value) === k);
      if (s) s.writers.push(v.by); else out.push({value: v.value, writers: [v.by]});
    }
    return out;
  }

  /* ---- household ------------------------------------------------------------------------ */
  function viewHousehold(view, id) {
    return mount(view, async () => {
      const o = await api('GET', '/api/households/' + encodeURIComponent(id));
      const memberName = {};
      for (const m of o.members) memberName[m.id] = (m.names || []).join(' / ') || m.id;
      const fields = o.fields.filter(f => f.values.length).map(f => h('tr', {'data-field': f.name},
        h('th', {title: docText(f.doc)}, fname(f.name)),
        h('td', {}, f.values.map(v => h('div', {},
          f.name === 'head' ? h('a', {href: '#/person/' + encodeURIComponent(v.value), 'data-testid': 'head-link'},
            headName(o.head) || v.value) : valText(v.value), ' ', prov(v.by))))));
      const visits = o.visits.concat(o.person_visits).sort((a, b) => (b.by.hlc_ms - a.by.hlc_ms));
      const hn = headName(o.head);
      return h('div', {},
        h('h1', {}, t('hh.title') + '：' + (hn ? t('hh.of', {n: hn}) : o.id), h('small', {}, ' ' + o.id)),
        h('p', {'data-testid': 'household-head'}, t('hh.head') + '：',
          o.head ? h('a', {href: '#/person/' + encodeURIComponent(o.head.id)}, hn || t('hh.head_unknown'))
            : t('hh.no_head')),
        o.known ? null : h('p', {class: 'muted'}, t('hh.unknown')),
        h('div', {class: 'card'}, h('table', {class: 'kv'}, h('tbody', {}, fields))),
        h('div', {class: 'card'}, h('h2', {}, t('hh.members')),
          h('table', {class: 'data', 'data-testid': 'members'}, h('thead', {}, personHead()),
            h('tbody', {}, o.members.map(p => personRow(Object.assign({}, p, {household_head: o.head})))))),
        h('div', {class: 'card'}, h('h2', {}, t('hh.visits')),
          visits.length ? h('ul', {class: 'plain visits', 'data-testid': 'visits'}, visits.map(v => h('li', {},
            h('strong', {}, valText(v.value)), v.person ? t('hh.visit_of', {p: memberName[v.person] || v.person}) : '',
            ' — ', prov(v.by))))
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
    return sidesOf(f).map(s => valText(s.value)).join(' ≠ ');
  }
  function dotsText(obs) {
    return t('p.supersedes', {list: obs.map(d => t('p.dot', {d: d[0], s: d[1]})).join('、')});
  }
  function opName(op) { return tOr('p.op.' + op, 'p.op.unknown'); }
  function historyList(hist) {
    return h('ol', {class: 'history'}, hist.map(x => h('li', {},
      h('span', {class: 'op'}, opName(x.op)), ' ', h('strong', {}, valText(x.value)), ' — ', prov(x.by),
      x.observed && x.observed.length ? h('span', {class: 'muted'}, dotsText(x.observed)) : null)));
  }
  async function resolve(pid, f, value, observed) {
    if (!confirm(t('p.confirm', {f: fname(f.name) + keyLabel(f), v: valText(value)}))) return;
    const body = {field: f.name, value: value, observed: observed};
    if (f.keyed) body.key = f.key;
    try {
      const r = await api('POST', '/api/persons/' + encodeURIComponent(pid) + '/resolve', body);
      toast(t('p.resolved', {v: valText(r.value)}));
    } catch (e) {
      toast(errText(e), true);
    }
    if (currentRender) currentRender(true);
  }
  function conflictCard(pid, f) {
    // Resolving observes every live write, so it supersedes them all.
    const observed = f.values.map(v => [v.by.dev, v.by.seq]);
    const custom = f.choices
      ? h('select', {class: 'custom', 'aria-label': t('p.other_value')}, f.choices.map(c => h('option', {value: c}, c)))
      : h('input', {class: 'custom', type: 'text', 'aria-label': t('p.other_value')});
    return h('div', {class: 'conflict card', 'data-field': f.name, 'data-testid': 'conflict-' + f.name},
      h('h3', {}, t('p.conflict') + '：' + fname(f.name) + keyLabel(f)),
      h('div', {class: 'sides'}, sidesOf(f).map((s, i) => h('div', {class: 'side'},
        h('div', {class: 'side-v'}, valText(s.value),
          s.writers.length > 1 ? h('small', {class: 'muted'}, ' ' + t('p.writers', {n: s.writers.length})) : null),
        h('ul', {class: 'plain writers'}, s.writers.map(w => h('li', {}, prov(w)))),
        h('button', {type: 'button', class: 'resolve', 'data-testid': 'resolve-' + f.name + '-' + i,
          onclick: () => resolve(pid, f, s.value, observed)}, t('p.use_this'))))),
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
        } catch (e) { toast(errText(e), true); }
        if (currentRender) currentRender(true);
      }}, t('p.raise') + ' ' + s)));
  }
  function provCell(f) {
    if (f.crdt === 'set' || f.crdt === 'counter') return f.values.slice(-3).map(v => h('div', {}, prov(v.by)));
    if (f.crdt !== 'mv') return f.values.map(v => h('div', {}, prov(v.by)));
    const sides = sidesOf(f);
    return sides.map(s => h('div', {class: 'side-prov'}, sides.length > 1 ? valText(s.value) + '：' : '',
      s.writers.map((w, i) => [i ? '；' : '', prov(w)])));
  }
  function viewPerson(view, id) {
    return mount(view, async () => {
      const p = await api('GET', '/api/persons/' + encodeURIComponent(id));
      const nameF = p.fields.find(f => f.name === 'name');
      const names = nameF ? sidesOf(nameF).map(s => valText(s.value)) : [];
      const rows = [];
      const hhNow = p.household;
      for (const f of p.fields) {
        if (f.crdt === 'log' || f.name === 'review') continue;
        const hist = h('details', {class: 'hist'}, h('summary', {}, t('p.show_history', {n: f.history.length})),
          historyList(f.history));
        rows.push(h('tr', {class: f.conflict ? 'conflict-row' : '', 'data-field': f.name},
          h('th', {title: docText(f.doc)}, fname(f.name) + keyLabel(f)),
          h('td', {class: 'val', 'data-testid': 'value-' + f.name},
            /* The household by its head's name (户主), the id beside it. */
            f.name === 'household' && hhNow && fieldValue(f) === hhNow.id ? householdLink(hhNow.id, hhNow.head) : fieldValue(f),
            f.conflict ? h('span', {class: 'badge'}, t('p.conflict')) : null),
          h('td', {}, provCell(f)),
          h('td', {}, f.history.length ? hist : null)));
      }
      const visitsF = p.fields.find(f => f.name === 'visits');
      const hh = p.household;
      return h('div', {},
        h('h1', {}, t('p.title') + '：' + (names.join(' / ') || p.id), h('small', {}, ' ' + p.id)),
        hh ? h('p', {'data-testid': 'person-household'}, fname('household') + '：', householdLink(hh.id, hh.head),
          ' ', [hh.community, hh.grid, hh.address].filter(Boolean).join(' · ')) : null,
        p.deleted ? h('p', {class: 'error'}, t('p.deleted')) : null,
        h('div', {class: 'card', 'data-testid': 'conflicts'}, h('h2', {}, t('p.conflicts')),
          p.conflicts.length ? p.conflicts.map(f => conflictCard(p.id, f)) : h('p', {class: 'muted'}, t('p.no_conflicts'))),
        h('div', {class: 'card'}, h('table', {class: 'data fields', 'data-testid': 'fields'},
          h('thead', {}, h('tr', {}, h('th', {}, t('p.field')), h('th', {}, t('p.value')), h('th', {}, t('p.prov')),
            h('th', {}, t('p.history')))), h('tbody', {}, rows)),
          h('p', {class: 'muted small legend', 'data-testid': 'legend'}, t('p.legend_values'), ' ', t('p.legend_history'))),
        reviewCard(p.id, p.fields.find(f => f.name === 'review')),
        visitsF ? h('div', {class: 'card'}, h('h2', {}, fname('visits')),
          visitsF.values.length ? h('ul', {class: 'plain visits', 'data-testid': 'visits'}, visitsF.values.slice().reverse().map(v =>
            h('li', {}, h('strong', {}, valText(v.value)), ' — ', prov(v.by)))) : h('p', {class: 'muted'}, t('common.none'))) : null,
        h('details', {class: 'card', 'data-testid': 'all-deltas'},
          h('summary', {}, t('p.all_deltas') + (p.history_truncated ? ' ' + t('p.truncated') : '')),
          h('p', {class: 'muted small'}, t('p.legend_history')),
          h('ol', {class: 'history'}, p.history.map(d => h('li', {}, t('p.delta_no', {n: d.sseq}) + ' ', prov(d.by), ' — ',
            (d.ops || []).map(o => h('div', {class: 'op-line'}, opName(o.op) + ' ' + (o.field ? fname(o.field) : '') +
              (o.key !== null && o.key !== undefined ? ' [' + o.key + ']' : '') + (o.value !== null ? '：' + valText(o.value) : ''),
            o.observed && o.observed.length ? h('span', {class: 'muted'}, dotsText(o.observed)) : null)))))));
    });
  }

  /* ---- queues ---------------------------------------------------------------------------- */
  function viewQueue(view, which, params) {
    const offset = intParam(params, 'offset', 0), limit = intParam(params, 'limit', 50);
    const stage = which === 'review' ? (params.get('stage') || '') : '';
    return mount(view, async () => {
      const r = await api('GET', hashOf('/api/queues/' + which, {offset, limit, stage}));
      let filter = null;
      if (which === 'review') {
        const counts = {};
        for (const c of r.open_stages || []) counts[c.stage] = c.count;
        const sel = h('select', {'data-testid': 'stage-filter', onchange: () => {
          location.hash = hashOf('#/queues/review', {stage: sel.value});
        }}, h('option', {value: ''}, t('q.all_open')),
        r.stages.slice(0, -1).map(s => h('option', {value: s, selected: stage === s},
          counts[s] === undefined ? s : t('q.stage_count', {s, n: counts[s]}))));
        filter = h('p', {}, t('q.stage_filter'), sel);
      }
      const extra = which === 'conflicts' ? h('th', {}, t('col.fields')) : h('th', {}, t('col.stage'));
      const rows = r.items.map(p => {
        const row = personRow(p);
        row.appendChild(which === 'conflicts'
          ? h('td', {}, p.conflict_fields.map(c => h('div', {class: 'qconflict'}, fname(c.field) + keyLabel(c) + '：' +
              (c.sides || c.values.map(v => ({value: v, writers: []}))).map(s => valText(s.value) +
                (s.writers.length > 1 ? '（' + t('p.writers', {n: s.writers.length}) + '）' : '')).join(' ≠ '))))
          : h('td', {}, r.stages[p.review_ordinal] || ''));
        return row;
      });
      const base = '#/queues/' + which;
      return h('div', {},
        h('h1', {}, t(which === 'review' ? 'q.review' : 'q.conflicts')), filter,
        h('div', {class: 'card'},
          pager(base, {stage, limit: params.get('limit')}, r.total, r.offset, r.limit),
          rows.length ? h('table', {class: 'data', 'data-testid': 'queue'}, h('thead', {}, personHead(extra)), h('tbody', {}, rows))
            : h('p', {class: 'muted'}, t('q.none'))));
    });
  }

  /* ---- admin: quarantine, devices, staff ------------------------------------------------------ */
  function actorName(a) { return a ? String(a).replace(/^staff:/, '') : ''; }
  function recordLink(kind, id) {
    const label = tOr('qu.kind.' + kind, 'p.op.unknown') + ' ' + id;
    return kind === 'person' || kind === 'household'
      ? h('a', {href: '#/' + kind + '/' + encodeURIComponent(id)}, label) : label;
  }
  const QSTATES = ['all', 'pending', 'accepted', 'rejected'];
  function viewQuarantine(view, params) {
    const offset = intParam(params, 'offset', 0), limit = intParam(params, 'limit', 50);
    const state = QSTATES.includes(params.get('state')) ? params.get('state') : 'all';
    return mount(view, async () => {
      const r = await api('GET', hashOf('/api/quarantine', {state, offset, limit}));
      const counts = r.counts || {};
      const sel = h('select', {'data-testid': 'quarantine-state', onchange: () => {
        location.hash = hashOf('#/quarantine', {state: sel.value === 'all' ? '' : sel.value});
      }}, QSTATES.map(s => h('option', {value: s, selected: s === state},
        t('qu.state.' + s) + (counts[s] === undefined ? '' : '（' + counts[s] + '）'))));
      const rows = r.items.map(x => h('tr', {'data-qid': x.qid},
        h('td', {class: 'num'}, x.qid), h('td', {}, tOr('qu.reason.' + x.reason, 'qu.reason.unknown')),
        h('td', {}, t('ov.dev_no', {d: x.dev}) + ' ' + (x.volunteer || '') + ' · ' + t('qu.seq', {n: x.seq})),
        h('td', {}, x.record ? recordLink(x.kind, x.record) : t('common.error')),
        h('td', {}, (x.ops || []).map(o => h('div', {}, opName(o.op) + ' ' + (o.field ? fname(o.field) : '') +
          (o.value !== null ? '：' + valText(o.value) : '')))),
        h('td', {}, fmtTime(x.at_ms)),
        h('td', {}, tOr('qu.state.' + x.state, 'dev.state.unknown'),
          x.decided_by ? [' · ' + t('qu.decided_by') + ' ', h('code', {}, actorName(x.decided_by))] : null),
        h('td', {}, x.state === 'pending' ? [
          h('button', {type: 'button', onclick: () => decide(x.qid, 'accept')}, t('qu.accept')), ' ',
          h('button', {type: 'button', class: 'danger', onclick: () => decide(x.qid, 'reject')}, t('qu.reject'))] : null)));
      return h('div', {}, h('h1', {}, t('qu.title')),
        h('div', {class: 'card'},
          h('p', {}, t('qu.state') + '：', sel),
          pager('#/quarantine', {state: state === 'all' ? '' : state, limit: params.get('limit')}, r.total, r.offset || 0, r.limit || limit),
          rows.length ? h('table', {class: 'data', 'data-testid': 'quarantine'},
            h('thead', {}, h('tr', {}, [t('qu.no'), t('qu.reason'), t('qu.device'), t('qu.record'), t('qu.content'),
              t('qu.at'), t('qu.state'), ''].map(x => h('th', {}, x)))),
            h('tbody', {}, rows)) : h('p', {class: 'muted'}, t('common.none'))));
    });
    async function decide(qid, what) {
      try {
        await api('POST', '/api/quarantine/' + qid + '/' + what, {});
      } catch (e) { toast(errText(e), true); }
      if (currentRender) currentRender(true);
    }
  }
  function devState(s) { return tOr('dev.state.' + s, 'dev.state.unknown'); }
  function viewDevices(view) {
    return mount(view, async () => {
      const r = await api('GET', '/api/devices');
      const act = async (d, what, body) => {
        if (what === 'revoke' && !confirm(t('dev.confirm_revoke', {d: d.id, v: d.volunteer}))) return;
        try { await api('POST', '/api/devices/' + d.id + '/' + what, body); } catch (e) { toast(errText(e), true); }
        if (currentRender) currentRender(true);
      };
      const rows = r.items.map(d => h('tr', {'data-device': d.id, 'data-state': d.state},
        h('td', {class: 'num'}, d.id), h('td', {}, d.volunteer || ''),
        h('td', {class: 'dev-state'}, devState(d.state) + (d.rotate_required ? ' · ' + t('dev.rotating') : '')),
        h('td', {}, fmtTime(d.last_sync_ms)), h('td', {class: 'num'}, d.last_seq),
        h('td', {class: 'num'}, d.scope_households),
        h('td', {}, d.state === 'active' ? [
          h('button', {type: 'button', onclick: () => act(d, 'rotate')}, t('dev.rotate')), ' ',
          h('button', {type: 'button', class: 'danger revoke', onclick: () => act(d, 'revoke', {mode: 'soft'})}, t('dev.revoke')), ' ',
          h('button', {type: 'button', class: 'danger', onclick: () => act(d, 'revoke', {mode: 'hard'})}, t('dev.revoke_hard'))]
          : d.state === 'revoked_soft' ? h('button', {type: 'button', class: 'danger', onclick: () => act(d, 'revoke', {mode: 'hard'})}, t('dev.revoke_hard')) : null)));
      // Enroll a phone: a one-time token, shown once as text and as a QR code.
      const vol = h('input', {required: true, placeholder: t('dev.volunteer'), 'aria-label': t('dev.volunteer'), 'data-testid': 'enroll-volunteer'});
      const scope = h('input', {required: true, placeholder: 'H001, C01/G03', 'aria-label': t('dev.enroll_scope'),
        title: t('dev.enroll_scope'), 'data-testid': 'enroll-scope'});
      const days = h('input', {type: 'number', min: '1', max: '90', value: '7', 'aria-label': t('dev.enroll_days'), title: t('dev.enroll_days')});
      const out = h('div', {'data-testid': 'enroll-result'});
      const qrSvg = (qr) => {
        const n = qr.size, q = 4, sz = n + 2 * q;
        const rects = [];
        qr.rows.forEach((row, y) => { for (let x = 0; x < n; x++) if (row[x] === '1') rects.push(h('svg:rect', {x: x + q, y: y + q, width: 1, height: 1})); });
        return h('svg:svg', {viewBox: '0 0 ' + sz + ' ' + sz, width: '220', height: '220', class: 'qr', role: 'img', 'aria-label': t('dev.qr')},
          h('svg:rect', {x: 0, y: 0, width: sz, height: sz, fill: '#fff'}), h('svg:g', {fill: '#000'}, rects));
      };
      const form = h('form', {class: 'inline', onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          const list = scope.value.split(/[,，、\s]+/).filter(Boolean);
          const r2 = await api('POST', '/api/devices/enroll', {volunteer: vol.value, scope: list, expires_days: Number(days.value) || 7});
          out.replaceChildren(h('div', {class: 'card'},
            h('p', {}, t('dev.enroll_token') + ' ', h('code', {'data-testid': 'enroll-token'}, r2.token)),
            r2.qr ? qrSvg(r2.qr) : null,
            h('p', {class: 'muted small'}, t('dev.enroll_link') + ' ', h('code', {class: 'uri'}, r2.uri)),
            h('p', {class: 'muted small'}, t('dev.enroll_once'))));
        } catch (e) { toast(errText(e), true); }
      }}, h('label', {}, t('dev.volunteer') + ' ', vol), h('label', {}, t('dev.enroll_scope') + ' ', scope),
      h('label', {}, t('dev.enroll_days') + ' ', days), h('button', {type: 'submit'}, t('dev.enroll')));
      return h('div', {}, h('h1', {}, t('dev.title')),
        h('div', {class: 'card'}, h('table', {class: 'data', 'data-testid': 'devices'},
          h('thead', {}, h('tr', {}, [t('dev.id'), t('dev.volunteer'), t('dev.state'), t('dev.last_sync'), t('dev.last_seq'), t('dev.scope'), ''].map(x => h('th', {}, x)))),
          h('tbody', {}, rows))),
        h('div', {class: 'card'}, h('h2', {}, t('dev.enroll')), form, out));
    });
  }
  function staffStatus(s, now) {
    if (s.disabled) return t('st.disabled');
    if (s.locked_until_ms && s.locked_until_ms > now) return t('st.locked', {t: fmtTime(s.locked_until_ms)});
    return t('st.ok');
  }
  function viewStaff(view) {
    return mount(view, async () => {
      const r = await api('GET', '/api/staff');
      const now = Date.now();
      const u = h('input', {required: true, pattern: '[a-z0-9_.\\-]{1,32}', placeholder: t('st.username'),
        'aria-label': t('st.username'), 'data-testid': 'staff-username', autocomplete: 'off'});
      const d = h('input', {required: true, placeholder: t('st.display'), 'aria-label': t('st.display'), 'data-testid': 'staff-display'});
      const role = h('select', {'aria-label': t('st.role'), 'data-testid': 'staff-role'},
        h('option', {value: 'staff'}, roleName('staff')), h('option', {value: 'admin'}, roleName('admin')));
      const pw = h('input', {type: 'password', required: true, minlength: '8', autocomplete: 'new-password',
        placeholder: t('st.password'), 'aria-label': t('st.password'), 'data-testid': 'staff-password'});
      const form = h('form', {class: 'inline', 'data-testid': 'staff-form', onsubmit: async (ev) => {
        ev.preventDefault();
        try {
          await api('POST', '/api/staff', {username: u.value, display: d.value, role: role.value, password: pw.value});
          pw.value = '';
          toast(t('st.created', {u: u.value}));
          if (currentRender) currentRender(true);
        } catch (e) { toast(errText(e), true); }
      }}, u, d, role, pw, h('button', {type: 'submit'}, t('st.create')));
      return h('div', {}, h('h1', {}, t('st.title')),
        h('div', {class: 'card'}, h('table', {class: 'data', 'data-testid': 'staff'},
          h('thead', {}, h('tr', {}, [t('st.username'), t('st.display'), t('st.role'), t('st.last_login'), t('st.status')].map(x => h('th', {}, x)))),
          h('tbody', {}, r.items.map(s => h('tr', {}, h('td', {}, h('code', {}, s.username)), h('td', {}, s.display || ''),
            h('td', {}, roleName(s.role)), h('td', {}, fmtTime(s.last_login_ms)), h('td', {}, staffStatus(s, now))))))),
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
  /* points [{label, value}]; the axis runs from 0 to fixedMax (a rate: 100)
   * or to the largest value rounded up to even, so the middle line has a
   * whole number (no "0, 1, 1" axis when every value is 0). */
  function lineChart(points, label, fixedMax) {
    const W = 640, H = 200, l = 40, b = 30, top = 10;
    const max = fixedMax || Math.max(2, Math.ceil(Math.max(0, ...points.map(p => p.value)) / 2) * 2);
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
      setDistrict((r.streets || []).length > 0);
      const weekInput = h('input', {type: 'date', value: r.week_start, 'aria-label': t('rep.week'), onchange: () => {
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
        streetsCard(r.streets, 0, null),
        h('div', {class: 'card'}, h('h2', {}, t('rep.chart_cov')),
          barChart(r.communities.map(c => ({label: c.community, value: c.coverage})).concat([{label: (r.streets || []).length ? t('ov.district') : t('ov.station'), value: r.station.coverage}]))),
        h('div', {class: 'card', 'data-testid': 'coverage-history'}, h('h2', {}, t('rep.chart_cov_hist')),
          (r.coverage_history || []).length
            ? lineChart(r.coverage_history.map(d => ({label: d.day, value: Math.round(d.coverage * 1000) / 10})), t('rep.chart_cov_hist'), 100)
            : h('p', {class: 'muted small'}, t('rep.no_history'))),
        h('div', {class: 'card'}, h('h2', {}, t('rep.chart_visits')),
          lineChart(r.weeks.map(w => ({label: w.week_start, value: w.visits})))),
        h('div', {class: 'card'}, h('table', {class: 'data', 'data-testid': 'report-table'},
          h('thead', {}, head), h('tbody', {}, rows),
          h('tfoot', {}, h('tr', {}, h('td', {}, (r.streets || []).length ? t('ov.district') : t('ov.station')), h('td', {}, t('rep.total')), aggCells(r.station))))),
        h('div', {class: 'report-foot', 'data-testid': 'report-foot'},
          r.conflicts ? h('p', {class: 'small'}, t('rep.conflicts', {p: r.conflicts.persons, f: r.conflicts.fields})) : null,
          h('p', {class: 'muted small'}, t('rep.note'))));
    });
  }

  /* ---- start ------------------------------------------------------------------------------- */
  document.addEventListener('DOMContentLoaded', async () => {
    try { if (sessionStorage.getItem('doorstep-district') === '1') setDistrict(true); } catch (e) { /* storage off */ }
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
