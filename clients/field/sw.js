/*
 * sw.js — the field app's service worker: keeps the app's files so it opens
 * with no network.  Cache-first for the app shell (a new build has a new
 * VERSION, so an update replaces the whole cache on the next online start);
 * WebSocket sync is not touched (service workers never see it).
 */
const VERSION = '__BUILD__';
const CACHE = 'doorstep-field-' + VERSION;
const FILES = ['./', 'index.html', 'app.js', 'style.css', 'schema.json', 'manifest.json', 'icon.svg'];

self.addEventListener('install', (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (ev) => {
  ev.waitUntil(caches.keys().then((ks) => Promise.all(ks.filter((k) => k.startsWith('doorstep-field-') && k !== CACHE)
    .map((k) => caches.delete(k)))).then(() => self.clients.claim()));
});

self.addEventListener('fetch', (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== 'GET' || url.origin !== location.origin) return;
  ev.respondWith(caches.open(CACHE).then(async (c) => {
    const hit = await c.match(ev.request, { ignoreSearch: true });
    if (hit) return hit;
    try {
      return await fetch(ev.request);
    } catch (e) {
      if (ev.request.mode === 'navigate') return (await c.match('index.html')) || Response.error();
      throw e;
    }
  }));
});
