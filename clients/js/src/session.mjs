// What one watched execution holds besides its cursor: the subscriber token
// (asked once, again only when refused, one request at a time) and the HTTP
// requests in flight (all aborted at once on pause or disconnect).
import { buildQuery } from './util.mjs';

/** An error for a request that was aborted on purpose (not a failure). */
function abortedError() {
  const e = new Error('aborted');
  /** @type {any} */ (e).aborted = true;
  return e;
}

/** The subscriber token of one session. */
export class TokenSource {
  /**
   * @param {(ctx: {executionId: string, reason: string}) => any} getToken the page's getToken
   * @param {string} executionId
   */
  constructor(getToken, executionId) {
    this.getToken = getToken;
    this.executionId = executionId;
    /** @type {string | null} */
    this.token = null;
    /** @type {Promise<string> | null} */
    this.pending = null;
  }

  /**
   * The token: the one held, or a fresh one when `force` (after a refusal).
   * Concurrent callers share one getToken call.
   * @param {boolean} force
   * @returns {Promise<string>}
   */
  get(force) {
    if (!force && this.token) return Promise.resolve(this.token);
    if (this.pending) return this.pending;
    const self = this;
    const p = Promise.resolve()
      .then(function () { return self.getToken({ executionId: self.executionId, reason: force ? 'refresh' : 'initial' }); })
      .then(function (tok) {
        if (typeof tok !== 'string' || !tok) throw new Error('getToken returned no token');
        self.token = tok;
        return tok;
      });
    this.pending = p;
    const clear = function () { if (self.pending === p) self.pending = null; };
    p.then(clear, clear);
    return p;
  }

  /** @returns {Promise<boolean>} whether the fresh token differs from the old one */
  refresh() {
    const old = this.token;
    return this.get(true).then(function (tok) { return tok !== old; });
  }
}

/** The HTTP requests of one session, each with the session's token. */
export class SessionRequests {
  /**
   * @param {import('./types').Transport} transport
   * @param {string} baseUrl
   * @param {TokenSource} tokens
   */
  constructor(transport, baseUrl, tokens) {
    this.transport = transport;
    this.baseUrl = baseUrl;
    this.tokens = tokens;
    /** @type {any[]} */
    this.inFlight = [];
  }

  /**
   * GET `path` with `query`; the promise rejects with `err.aborted` when
   * aborted, and with an error when there is no HTTP transport here.
   * @param {string} path
   * @param {Record<string, any> | null} query
   * @param {number} timeout ms
   */
  get(path, query, timeout) {
    const self = this;
    const handle = { abort: function () { handle.aborted = true; if (handle.inner) handle.inner.abort(); }, aborted: false, inner: null };
    this.inFlight.push(handle);
    const done = function () {
      const i = self.inFlight.indexOf(handle);
      if (i >= 0) self.inFlight.splice(i, 1);
    };
    const promise = this.tokens.get(false).then(function (token) {
      if (handle.aborted) throw abortedError();
      if (!self.transport.request) throw new Error('no HTTP transport here (wx.request or fetch)');
      handle.inner = self.transport.request({ url: self.baseUrl + path + buildQuery(query || {}), token: token, timeout: timeout });
      return handle.inner.promise;
    });
    promise.then(done, done);
    return { promise: promise, abort: handle.abort };
  }

  /** Aborts every request in flight. */
  abortAll() {
    const pending = this.inFlight.slice();
    this.inFlight = [];
    for (let i = 0; i < pending.length; i++) {
      try { pending[i].abort(); } catch (e) { /* ignore */ }
    }
  }
}
