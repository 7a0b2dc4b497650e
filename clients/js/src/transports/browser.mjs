// Browser (and Node) transports: WebSocket, fetch, online/offline events.
import { buildQuery, headerFromObject, frameToText } from '../util.mjs';

/**
 * Socket adapter over the standard WebSocket API. Browsers cannot set
 * headers on a WebSocket handshake, so the token travels as ?token=.
 * @param {any} WebSocketImpl a WebSocket constructor (window.WebSocket, or the
 *   `ws` package under Node 20)
 * @returns {import('../types').OpenSocket}
 */
export function createBrowserSocketOpener(WebSocketImpl) {
  return function openBrowserSocket(req) {
    const url = req.url + (req.url.indexOf('?') >= 0 ? '&' : '?') + buildQuery({ token: req.token }).slice(1);
    let ended = false;
    /** @type {any} */
    let ws;
    try {
      ws = new WebSocketImpl(url);
    } catch (err) {
      // Bad URL or blocked by the page's CSP: report it like a refused connection.
      setTimeout(function () {
        if (ended) return;
        ended = true;
        req.onError(err);
        req.onClose({ code: 1006, reason: String((err && err.message) || err) });
      }, 0);
      return { send: function () { return false; }, close: function () { ended = true; } };
    }
    ws.onopen = function () { if (!ended) req.onOpen(); };
    ws.onmessage = function (ev) { if (!ended) req.onMessage(frameToText(ev.data)); };
    ws.onerror = function (ev) { if (!ended) req.onError(ev); };
    ws.onclose = function (ev) {
      if (ended) return;
      ended = true;
      req.onClose({ code: typeof ev.code === 'number' ? ev.code : 1006, reason: ev.reason || '' });
    };
    return {
      send: function (text) {
        if (ended || ws.readyState !== 1) return false;
        try {
          ws.send(text);
          return true;
        } catch (e) {
          return false;
        }
      },
      close: function (code, reason) {
        if (ended) return;
        ended = true;
        ws.onopen = ws.onmessage = ws.onclose = null;
        // keep an error listener: closing a socket that is still connecting
        // makes the `ws` package (Node) emit 'error', fatal without one
        ws.onerror = function () {};
        try {
          ws.close(code || 1000, reason || '');
        } catch (e) {
          try { ws.close(); } catch (e2) { /* already gone */ }
        }
      }
    };
  };
}

/**
 * HTTP adapter over fetch, with a timeout and abort.
 * @param {typeof fetch} fetchImpl
 * @returns {import('../types').HttpRequest}
 */
export function createFetchRequester(fetchImpl) {
  return function fetchRequest(req) {
    const controller = typeof AbortController !== 'undefined' ? new AbortController() : null;
    let timer = null;
    let aborted = false;
    const promise = new Promise(function (resolve, reject) {
      if (req.timeout > 0) {
        timer = setTimeout(function () {
          timer = null;
          if (controller) controller.abort();
          const err = new Error('request timed out');
          /** @type {any} */ (err).timeout = true;
          reject(err);
        }, req.timeout);
      }
      /** @type {Record<string, string>} */
      const headers = { Accept: 'application/json' };
      if (req.token) headers.Authorization = 'Bearer ' + req.token;
      fetchImpl(req.url, {
        method: 'GET',
        headers: headers,
        cache: 'no-store',
        signal: controller ? controller.signal : undefined
      }).then(function (res) {
        return res.text().then(function (text) {
          let body;
          try { body = text ? JSON.parse(text) : null; } catch (e) { body = text; }
          /** @type {Record<string, string>} */
          const h = {};
          if (res.headers && typeof res.headers.forEach === 'function') {
            res.headers.forEach(function (value, key) { h[key] = value; });
          }
          return { status: res.status, body: body, header: function (name) { return headerFromObject(h, name); } };
        });
      }).then(function (out) {
        if (timer) clearTimeout(timer);
        timer = null;
        resolve(out);
      }, function (err) {
        if (timer) clearTimeout(timer);
        timer = null;
        if (aborted) {
          const e = new Error('aborted');
          /** @type {any} */ (e).aborted = true;
          reject(e);
        } else reject(err);
      });
    });
    return {
      promise: promise,
      abort: function () {
        aborted = true;
        if (timer) clearTimeout(timer);
        timer = null;
        if (controller) controller.abort();
      }
    };
  };
}

/**
 * Browser online/offline events.
 * @param {any} win window-like object with addEventListener
 * @returns {import('../types').Lifecycle}
 */
export function createBrowserLifecycle(win) {
  return function subscribeBrowser(cb) {
    if (!win || typeof win.addEventListener !== 'function') return function () {};
    const onOnline = function () { cb.online(); };
    const onOffline = function () { cb.offline(); };
    win.addEventListener('online', onOnline);
    win.addEventListener('offline', onOffline);
    return function () {
      win.removeEventListener('online', onOnline);
      win.removeEventListener('offline', onOffline);
    };
  };
}
