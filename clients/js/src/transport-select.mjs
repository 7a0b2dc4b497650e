// Transport selection: WeChat's `wx` when there is one (given, global, or a
// free variable of the module scope), else the standard WebSocket / fetch /
// window, else a custom transport; and a clear verdict when none can work.
import { createBrowserSocketOpener, createFetchRequester, createBrowserLifecycle } from './transports/browser.mjs';
import { createWxSocketOpener, createWxRequester, createWxLifecycle } from './transports/wx.mjs';

/**
 * The global object, on engines without `globalThis` too (older iOS
 * JavaScriptCore in WeChat); an empty object when none is reachable.
 * @returns {any}
 */
export function getGlobal() {
  if (typeof globalThis !== 'undefined') return globalThis;
  if (typeof self !== 'undefined') return self;
  if (typeof window !== 'undefined') return window;
  return {};
}

/**
 * `wx` as a free variable: WeChat hands it to every module of a mini-program
 * even where the global object does not show it.
 * @returns {any}
 */
function freeWx() {
  return typeof wx !== 'undefined' ? wx : null;
}

/**
 * The `wx` object to use: the one given, else the global or free `wx` when it
 * can open sockets (and the page did not ask for the browser transports).
 * @param {any} options
 * @param {any} g
 */
function findWx(options, g) {
  if (options.wx) return options.wx;
  if (options.platform === 'browser') return null;
  const candidates = [g.wx, freeWx()];
  for (let i = 0; i < candidates.length; i++) {
    const c = candidates[i];
    if (c && typeof c.connectSocket === 'function') return c;
  }
  return null;
}

/**
 * @param {any} wxApi
 * @param {any} options
 * @returns {import('./types').Transport}
 */
function wxTransport(wxApi, options) {
  return {
    name: 'wx',
    openSocket: createWxSocketOpener(wxApi, { perMessageDeflate: options.perMessageDeflate !== false }),
    request: typeof wxApi.request === 'function' ? createWxRequester(wxApi) : null,
    lifecycle: createWxLifecycle(wxApi)
  };
}

/**
 * @param {any} options
 * @param {any} g
 * @returns {import('./types').Transport}
 */
function browserTransport(options, g) {
  const WS = options.WebSocket || g.WebSocket;
  const fetchImpl = options.fetch || (typeof g.fetch === 'function' ? function (/** @type {any} */ u, /** @type {any} */ i) { return g.fetch(u, i); } : null);
  return {
    name: 'browser',
    openSocket: WS ? createBrowserSocketOpener(WS) : null,
    request: fetchImpl ? createFetchRequester(fetchImpl) : null,
    lifecycle: createBrowserLifecycle(options.window || (typeof g.addEventListener === 'function' ? g : null))
  };
}

/**
 * A partial custom transport, completed from the detected one (a part given
 * as null stays null: that transport is not available).
 * @param {any} custom
 * @param {import('./types').Transport} base
 * @returns {import('./types').Transport}
 */
function withCustomTransport(custom, base) {
  return {
    name: custom.name || 'custom',
    openSocket: custom.openSocket !== undefined ? custom.openSocket : base.openSocket,
    request: custom.request !== undefined ? custom.request : base.request,
    lifecycle: custom.lifecycle || function () { return function () {}; }
  };
}

/**
 * Picks the transports: an explicit `transport`, else WeChat's `wx` when it is
 * given or present, else the standard WebSocket / fetch / window. A part that
 * cannot work here is null (see transportProblem).
 * @param {any} options
 * @returns {import('./types').Transport}
 */
export function resolveTransport(options) {
  const g = getGlobal();
  const wxApi = findWx(options, g);
  const base = wxApi ? wxTransport(wxApi, options) : browserTransport(options, g);
  return options.transport ? withCustomTransport(options.transport, base) : base;
}

/**
 * Why no transport can work here, or null. A socket without HTTP still works
 * (until a fallback is needed), and HTTP alone means polling only.
 * @param {import('./types').Transport} t
 * @returns {string | null}
 */
export function transportProblem(t) {
  if (t.openSocket || t.request) return null;
  return 'no transport: neither wx.connectSocket nor WebSocket, and neither wx.request nor fetch, is available here ' +
    '(in a mini-program pass options.wx; under Node pass options.WebSocket and options.fetch)';
}
