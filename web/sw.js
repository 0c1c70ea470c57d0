// Service worker: caches the page, its runtime and the model on the first visit, then answers from the cache, so
// the identifier works with no network. Every response it serves carries the cross-origin isolation headers
// (COOP/COEP), so the page gets WebAssembly threads even from a static host that does not send them.
// `fungilib export` fills in the version and the file list.
"use strict";
const VERSION = "__BUNDLE_VERSION__";
const FILES = __PRECACHE_FILES__;
const CACHE = "fungilib-" + VERSION;
const ISOLATION = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin" };

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("fungilib-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()));
});

// The page names the runtime files it fetched (one WebAssembly build of several); keep those for offline use.
self.addEventListener("message", (event) => {
  const keep = event.data && event.data.keep;
  if (!Array.isArray(keep)) return;
  const mine = keep.filter((url) => new URL(url).origin === self.location.origin);
  const reply = (message) => event.ports && event.ports[0] && event.ports[0].postMessage(message);
  event.waitUntil(caches.open(CACHE).then((cache) => Promise.all(mine.map((url) =>
    cache.match(url).then((hit) => hit || cache.add(url)))))
    .then(() => reply({ kept: mine.length }), (err) => reply({ error: String(err) })));
});

function isolated(response) {
  if (!response || response.type === "opaque" || response.status === 0) return response;
  const headers = new Headers(response.headers);
  for (const [name, value] of Object.entries(ISOLATION)) headers.set(name, value);
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET" || new URL(request.url).origin !== self.location.origin) return;
  event.respondWith(
    caches.open(CACHE)
      .then((cache) => cache.match(request, { ignoreSearch: true }))
      .then((hit) => hit || fetch(request))
      .then(isolated));
});
