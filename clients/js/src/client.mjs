// progress-relay client: one execution's events, exactly once and in order,
// over a WebSocket that resumes after every drop, or over polling when the
// socket cannot get through. See docs/client.md.
import { computeBackoff, parseRetryAfter, buildQuery, stripTrailingSlash, toWebSocketBase, safeJsonParse } from './util.mjs';
import { createBrowserSocketOpener, createFetchRequester, createBrowserLifecycle } from './transports/browser.mjs';
import { createWxSocketOpener, createWxRequester, createWxLifecycle } from './transports/wx.mjs';

/** Defaults from the product specification; every one can be overridden. */
export const DEFAULT_OPTIONS = Object.freeze({
  /** reconnect attempts after a failure before falling back to polling */
  MAX_RECONNECT_ATTEMPTS: 5,
  /** first reconnect delay (ms); doubles each attempt: 3, 6, 12, 24, 48 s */
  RECONNECT_INTERVAL: 3000,
  /** ceiling of any backoff delay (ms) */
  MAX_RECONNECT_INTERVAL: 60000,
  /** each delay is multiplied by a random factor in [1 - j, 1 + j) */
  RECONNECT_JITTER: 0.2,
  /** app-level {"type":"ping"} period (ms); the server's own value wins when shorter */
  HEARTBEAT_INTERVAL: 30000,
  /** reconnect when nothing at all arrived for HEARTBEAT_INTERVAL + this (ms) */
  HEARTBEAT_GRACE: 10000,
  /** from opening a socket to its "connected" frame (ms); also bounds HTTP calls */
  CONNECTION_TIMEOUT: 10000,
  /** false: poll only */
  ENABLE_WEBSOCKET: true,
  /** long-poll `wait` in seconds (the server allows 0..30) */
  POLL_WAIT: 25,
  /** least time between two polls that brought nothing (ms) */
  POLL_MIN_INTERVAL: 1000,
  /** after a fallback, how often the socket is tried again in the background (ms, jittered) */
  BACKGROUND_RETRY_INTERVAL: 60000,
  /** least delay after a 4029 close or a 429 without Retry-After (ms) */
  RATE_LIMIT_INTERVAL: 30000
});

function getGlobal() {
  if (typeof globalThis !== 'undefined') return globalThis;
  if (typeof window !== 'undefined') return window;
  return /** @type {any} */ ({});
}

/**
 * Picks the transports: an explicit `transport`, else WeChat's `wx` when it is
 * given or present, else the standard WebSocket / fetch / window.
 * @param {any} options
 * @returns {import('./types').Transport}
 */
export function resolveTransport(options) {
  const g = /** @type {any} */ (getGlobal());
  const wxApi = findWx(options, g);
  const base = wxApi && options.platform !== 'browser' ? wxTransport(wxApi) : browserTransport(options, g);
  return options.transport ? withCustomTransport(options.transport, base) : base;
}

/**
 * The `wx` object to use: the one given, else the global one when it can open
 * sockets (and the page did not ask for the browser transports).
 * @param {any} options
 * @param {any} g
 */
function findWx(options, g) {
  if (options.wx) return options.wx;
  if (options.platform === 'browser' || !g.wx) return null;
  return typeof g.wx.connectSocket === 'function' ? g.wx : null;
}

/**
 * @param {any} wxApi
 * @returns {import('./types').Transport}
 */
function wxTransport(wxApi) {
  return {
    name: 'wx',
    openSocket: createWxSocketOpener(wxApi),
    request: createWxRequester(wxApi),
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
    openSocket: WS ? createBrowserSocketOpener(WS) : function () { throw new Error('no WebSocket implementation: pass options.WebSocket'); },
    request: fetchImpl ? createFetchRequester(fetchImpl) : function () { throw new Error('no fetch implementation: pass options.fetch'); },
    lifecycle: createBrowserLifecycle(options.window || (typeof g.addEventListener === 'function' ? g : null))
  };
}

/**
 * A partial custom transport, completed from the detected one.
 * @param {any} custom
 * @param {import('./types').Transport} base
 * @returns {import('./types').Transport}
 */
function withCustomTransport(custom, base) {
  return {
    name: custom.name || 'custom',
    openSocket: custom.openSocket || base.openSocket,
    request: custom.request || base.request,
    lifecycle: custom.lifecycle || function () { return function () {}; }
  };
}

/**
 * Throws on options without which no client can work.
 * @param {any} options
 */
function checkClientOptions(options) {
  if (!options || typeof options.baseUrl !== 'string' || !options.baseUrl) {
    throw new TypeError('createClient: options.baseUrl (http(s)://host[:port]) is required');
  }
  if (typeof options.getToken !== 'function') {
    throw new TypeError('createClient: options.getToken (async () => token) is required');
  }
}

/**
 * DEFAULT_OPTIONS overridden by every option that is not undefined.
 * @param {any} options
 */
function mergeOptions(options) {
  /** @type {any} */
  const opts = {};
  const keys = Object.keys(DEFAULT_OPTIONS);
  for (let i = 0; i < keys.length; i++) opts[keys[i]] = /** @type {any} */ (DEFAULT_OPTIONS)[keys[i]];
  for (const k of Object.keys(options)) if (options[k] !== undefined) opts[k] = options[k];
  return opts;
}

/**
 * Whether a close tells the client to reconnect (with backoff) rather than to
 * ask the state endpoint why the handshake failed.
 * @param {any} s the socket record
 * @param {any} info
 */
function closeMeansRetry(s, info) {
  const code = info.code;
  if (info.local || s.connected) return true;
  if (code >= 4000 && code <= 4499) return true;
  return code === 1000 || code === 1001 || code === 1012 || code === 1008 || code === 1009 || code === 1011;
}

/**
 * The seq to resume after: connect()'s `resume.lastSeq` when it is a positive number, else 0.
 * @param {any} resume
 */
function resumePoint(resume) {
  if (!resume || typeof resume.lastSeq !== 'number') return 0;
  return resume.lastSeq > 0 ? resume.lastSeq : 0;
}

/**
 * 4500-4999: the server refuses this token or user for good.
 * @param {number} code
 */
function isRefusalClose(code) {
  return code >= 4500 && code <= 4999;
}

/**
 * complete, and an error that is not marked recoverable, end the execution.
 * @param {any} evt
 * @param {any} data
 */
function isTerminalEvent(evt, data) {
  return evt.event === 'complete' || (evt.event === 'error' && data.recoverable !== true);
}

/**
 * An event's data object; {} when it has none.
 * @param {any} evt
 */
function eventData(evt) {
  return evt.data && typeof evt.data === 'object' ? evt.data : {};
}

/** @param {any} e */
function seqOf(e) {
  return e && typeof e.seq === 'number' ? e.seq : 0;
}

/** The handler called for each kind of event, after onEvent. */
const EVENT_HANDLERS = { progress: 'onProgress', result: 'onResult', complete: 'onComplete', error: 'onError' };

class ProgressRelayClient {
  /**
   * @param {any} options
   */
  constructor(options) {
    checkClientOptions(options);
    const opts = mergeOptions(options);
    this.options = opts;
    this._transport = resolveTransport(options);
    this._baseUrl = stripTrailingSlash(options.baseUrl);
    this._wsBase = stripTrailingSlash(options.wsUrl || toWebSocketBase(options.baseUrl));
    this._random = typeof options.random === 'function' ? options.random : Math.random;
    this._logger = options.logger === undefined ? getGlobal().console : options.logger;
    /** @type {Record<string, any>} */
    this._timers = {};
    /** @type {any[]} */
    this._http = [];
    this._sid = 0;
    /** @type {import('../index').State} */
    this._state = 'idle';
    /** @type {import('../index').Mode} */
    this._mode = opts.ENABLE_WEBSOCKET ? 'websocket' : 'polling';
    this._preferPolling = !opts.ENABLE_WEBSOCKET;
    this._resetSession();
  }


  _resetSession() {
    this._active = false;
    this._executionId = '';
    /** @type {any} */
    this._handlers = {};
    this._lastSeq = 0;
    this._terminal = false;
    this._token = null;
    this._tokenPromise = null;
    this._failures = 0;
    this._pollErrors = 0;
    this._fallback = false;
    this._manualPolling = false;
    /** @type {any} */
    this._socket = null;
    this._sockGen = 0;
    this._pollGen = 0;
    this._checkGen = 0;
    this._pollAnnounced = false;
    this._hidden = false;
    this._offline = false;
    /** @type {null | (() => void)} */
    this._unsubscribe = null;
  }

  // ---------------------------------------------------------------- public API

  /**
   * Starts watching one execution. A client watches one execution at a time:
   * connecting again first disconnects the previous one.
   * @param {string} executionId
   * @param {any} [handlers]
   * @param {{lastSeq?: number}} [resume] resume after this seq (e.g. kept across a page reload)
   */
  connect(executionId, handlers, resume) {
    if (executionId === undefined || executionId === null || executionId === '') {
      throw new TypeError('connect: executionId is required');
    }
    if (this._active || this._state !== 'idle') this._teardown();
    this._resetSession();
    this._sid++;
    this._active = true;
    this._executionId = String(executionId);
    this._handlers = handlers || {};
    this._lastSeq = resumePoint(resume);
    this._watchLifecycle();
    if (this._preferPolling) {
      this._mode = 'polling';
      this._manualPolling = true;
      this._startPolling();
    } else {
      this._mode = 'websocket';
      this._openSocket(false);
    }
    return this;
  }

  /** Follows page/app visibility and network changes for this session. */
  _watchLifecycle() {
    const self = this;
    const sid = this._sid;
    this._unsubscribe = this._transport.lifecycle({
      hide: function () { if (sid === self._sid) self._onHide(); },
      show: function () { if (sid === self._sid) self._onShow(); },
      online: function () { if (sid === self._sid) self._onOnline(); },
      offline: function () { if (sid === self._sid) self._onOffline(); }
    });
  }

  /**
   * Switches the transport by hand. Idempotent. Events keep their order and
   * are never repeated across the switch (the new transport resumes after the
   * last seq received).
   * @param {'polling' | 'websocket'} mode
   */
  setMode(mode) {
    if (mode !== 'polling' && mode !== 'websocket') throw new TypeError("setMode: 'polling' or 'websocket'");
    this._preferPolling = mode === 'polling';
    if (!this._active) {
      this._mode = mode;
      return this;
    }
    if (mode === 'polling') this._switchToPolling();
    else this._switchToWebSocket();
    return this;
  }

  _switchToPolling() {
    this._manualPolling = true;
    this._fallback = false;
    this._clearTimer('probe');
    if (this._mode === 'polling') {
      if (this._socket && this._socket.probe) this._closeSocket(1000, 'probe cancelled');
      return;
    }
    this._mode = 'polling';
    this._closeSocket(1000, 'switching to polling');
    this._clearTimer('reconnect');
    this._checkGen++;
    if (this._paused()) return;
    this._startPolling();
  }

  _switchToWebSocket() {
    this._manualPolling = false;
    if (this._mode === 'websocket') return;
    this._stopPolling();
    this._clearTimer('probe');
    this._fallback = false;
    this._failures = 0;
    this._mode = 'websocket';
    if (this._socket && this._socket.probe) {
      // a background attempt is already under way: let it finish as the real one
      this._socket.probe = false;
      this._setState('connecting', { attempt: 0 });
      return;
    }
    if (this._paused()) return;
    this._openSocket(false);
  }

  /** Stops everything: closes the socket, aborts requests, clears every timer. */
  disconnect() {
    const was = this._state;
    this._teardown();
    if (was !== 'closed' && was !== 'idle') this._setState('closed', {});
    return this;
  }

  getState() { return this._state; }
  getMode() { return this._mode; }
  getLastSeq() { return this._lastSeq; }
  /** names of the timers still pending (empty after disconnect) */
  pendingTimers() { return Object.keys(this._timers); }

  // ------------------------------------------------------------------ internals

  _log(level, msg, extra) {
    const l = this._logger;
    if (l && typeof l[level] === 'function') {
      try { l[level]('[progress-relay] ' + msg, extra === undefined ? '' : extra); } catch (e) { /* ignore */ }
    }
  }

  _call(name) {
    const fn = this._handlers && this._handlers[name];
    if (typeof fn !== 'function') return;
    const args = Array.prototype.slice.call(arguments, 1);
    try {
      fn.apply(null, args);
    } catch (err) {
      this._log('error', 'handler ' + name + ' threw', err);
    }
  }

  _setState(state, info) {
    const prev = this._state;
    if (prev === state && state !== 'reconnecting') return;
    this._state = state;
    const detail = { previous: prev, mode: this._mode };
    if (info) for (const k of Object.keys(info)) /** @type {any} */ (detail)[k] = info[k];
    this._call('onStateChange', state, detail);
  }

  _setTimer(name, fn, ms) {
    this._clearTimer(name);
    const self = this;
    const sid = this._sid;
    this._timers[name] = setTimeout(function () {
      delete self._timers[name];
      if (sid !== self._sid) return;
      fn.call(self);
    }, Math.max(0, ms));
  }

  _clearTimer(name) {
    if (Object.prototype.hasOwnProperty.call(this._timers, name)) {
      clearTimeout(this._timers[name]);
      delete this._timers[name];
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
  }

  _backoff(failures) {
    const o = this.options;
    return computeBackoff(failures, { base: o.RECONNECT_INTERVAL, max: o.MAX_RECONNECT_INTERVAL, jitter: o.RECONNECT_JITTER, random: this._random });
  }

  _paused() { return this._hidden || this._offline; };

  _teardown() {
    this._active = false;
    this._sid++;
    this._stopTransports();
    if (this._unsubscribe) {
      const un = this._unsubscribe;
      this._unsubscribe = null;
      try { un(); } catch (e) { /* ignore */ }
    }
  }

  _stopTransports() {
    this._closeSocket(1000, 'client closing');
    this._stopPolling();
    this._checkGen++;
    const pending = this._http.slice();
    this._http = [];
    for (let i = 0; i < pending.length; i++) {
      try { pending[i].abort(); } catch (e) { /* ignore */ }
    }
    this._clearAllTimers();
  }

  // token -----------------------------------------------------------------------

  _getToken(force) {
    if (!force && this._token) return Promise.resolve(this._token);
    if (this._tokenPromise) return this._tokenPromise;
    const self = this;
    const sid = this._sid;
    const executionId = this._executionId;
    const p = Promise.resolve()
      .then(function () { return self.options.getToken({ executionId: executionId, reason: force ? 'refresh' : 'initial' }); })
      .then(function (tok) {
        if (typeof tok !== 'string' || !tok) throw new Error('getToken returned no token');
        if (sid === self._sid) self._token = tok;
        return tok;
      });
    this._tokenPromise = p;
    const clear = function () { if (self._tokenPromise === p) self._tokenPromise = null; };
    p.then(clear, clear);
    return p;
  }

  /** @returns {Promise<boolean>} whether the fresh token differs from the old one */
  _refreshToken() {
    const old = this._token;
    return this._getToken(true).then(function (tok) { return tok !== old; });
  }

  // HTTP ------------------------------------------------------------------------

  _httpGet(path, query, timeout) {
    const self = this;
    const handle = { abort: function () { handle.aborted = true; if (handle.inner) handle.inner.abort(); }, aborted: false, inner: null };
    this._http.push(handle);
    const done = function () {
      const i = self._http.indexOf(handle);
      if (i >= 0) self._http.splice(i, 1);
    };
    const promise = this._getToken(false).then(function (token) {
      if (handle.aborted) {
        const e = new Error('aborted');
        /** @type {any} */ (e).aborted = true;
        throw e;
      }
      handle.inner = self._transport.request({ url: self._baseUrl + path + buildQuery(query || {}), token: token, timeout: timeout });
      return handle.inner.promise;
    });
    promise.then(done, done);
    return { promise: promise, abort: handle.abort };
  }

  // WebSocket -------------------------------------------------------------------

  _openSocket(probe) {
    if (!this._active || this._paused()) return;
    this._closeSocket(1000, 'reconnecting');
    this._clearTimer('reconnect');
    if (!probe) this._setState('connecting', { attempt: this._failures });
    const self = this;
    const s = { gen: ++this._sockGen, probe: !!probe, connected: false, handle: null, requestedLastSeq: this._lastSeq, latestSeq: null, heartbeat: 0, delivered: 0 };
    this._socket = s;
    this._setTimer('connect-timeout', function () {
      if (self._socket === s) self._socketEnded(s, { code: 4000, reason: 'connection timeout', local: true });
    }, this.options.CONNECTION_TIMEOUT);
    this._getToken(false).then(function (token) {
      if (self._socket !== s) return;
      const url = self._wsBase + '/ws/executions/' + encodeURIComponent(self._executionId) +
        buildQuery({ last_seq: s.requestedLastSeq > 0 ? s.requestedLastSeq : undefined });
      try {
        s.handle = self._transport.openSocket({
          url: url,
          token: token,
          timeout: self.options.CONNECTION_TIMEOUT,
          onOpen: function () {},
          onMessage: function (text) { if (self._socket === s) self._onSocketMessage(s, text); },
          onError: function (err) { if (self._socket === s) self._log('debug', 'socket error', err); },
          onClose: function (info) { if (self._socket === s) self._socketEnded(s, info); }
        });
      } catch (err) {
        self._log('warn', 'cannot open a socket', err);
        self._socketEnded(s, { code: 4000, reason: 'cannot open a socket', local: true });
      }
    }, function (err) {
      self._log('warn', 'getToken failed', err);
      if (self._socket === s) self._socketEnded(s, { code: 4000, reason: 'getToken failed', local: true });
    });
  }

  _closeSocket(code, reason) {
    const s = this._socket;
    this._clearTimer('connect-timeout');
    this._clearTimer('ping');
    this._clearTimer('watchdog');
    if (!s) return;
    this._socket = null;
    if (s.handle) {
      try { s.handle.close(code || 1000, reason || ''); } catch (e) { /* ignore */ }
    }
  }

  _onSocketMessage(s, text) {
    if (s.connected) this._armWatchdog();
    const msg = safeJsonParse(text);
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'connected') {
      this._onConnectedFrame(s, msg);
      return;
    }
    if (msg.type === 'pong') return;
    if (msg.type === 'diagnosis_update' || typeof msg.event === 'string') {
      if (this._deliver(msg)) s.delivered++;
    }
  }

  _onConnectedFrame(s, msg) {
    this._clearTimer('connect-timeout');
    const latest = typeof msg.latest_seq === 'number' ? msg.latest_seq : null;
    if (latest !== null && latest < this._lastSeq) {
      // The server no longer has what we saw (a restarted in-memory broker, or
      // expired history): its sequence starts again. Follow it.
      const prev = this._lastSeq;
      this._lastSeq = latest;
      this._call('onReset', { previousSeq: prev, latestSeq: latest });
      if (s.requestedLastSeq > latest) {
        this._openSocket(s.probe);
        return;
      }
    }
    s.connected = true;
    s.latestSeq = latest;
    if (s.probe) {
      // the background attempt got through: leave polling
      s.probe = false;
      this._stopPolling();
      this._clearTimer('probe');
      this._fallback = false;
      this._mode = 'websocket';
    }
    this._failures = 0;
    let hb = this.options.HEARTBEAT_INTERVAL;
    if (typeof msg.heartbeat_interval === 'number' && msg.heartbeat_interval > 0) hb = Math.min(hb, msg.heartbeat_interval * 1000);
    s.heartbeat = hb;
    this._schedulePing();
    this._armWatchdog();
    const info = {
      mode: 'websocket',
      executionId: this._executionId,
      latestSeq: latest,
      lastSeq: this._lastSeq,
      resumed: !!msg.resumed,
      gap: !!msg.gap
    };
    this._setState('connected', { resumed: info.resumed, gap: info.gap, latestSeq: latest });
    this._call('onConnected', info);
  }

  _schedulePing() {
    const s = this._socket;
    if (!s) return;
    this._setTimer('ping', function () {
      if (this._socket !== s || !s.handle) return;
      s.handle.send('{"type":"ping"}');
      this._schedulePing();
    }, s.heartbeat || this.options.HEARTBEAT_INTERVAL);
  }

  _armWatchdog() {
    const s = this._socket;
    if (!s) return;
    this._setTimer('watchdog', function () {
      if (this._socket === s) this._socketEnded(s, { code: 4000, reason: 'heartbeat timeout', local: true });
    }, (s.heartbeat || this.options.HEARTBEAT_INTERVAL) + this.options.HEARTBEAT_GRACE);
  }

  /**
   * The close-code policy. `info.local` marks an end decided here (timeouts).
   */
  _socketEnded(s, info) {
    if (this._socket === s) this._closeSocket(info.local ? 4000 : 1000, info.reason || '');
    if (this._active && !this._terminal) this._afterSocketEnd(s, info);
  }

  _afterSocketEnd(s, info) {
    const code = info.code;
    if (s.probe) {
      this._probeEnded(s, info);
      return;
    }
    if (this._finishedEarlier(s, info)) {
      // "stream finished" and nothing newer than what we have: the terminal
      // event was delivered earlier (e.g. connect() with a resume point) or
      // is no longer in the history
      this._finish(null);
      return;
    }
    if (isRefusalClose(code)) {
      this._fatal(code, info.reason, code === 4503 ? 'forbidden' : 'token invalid or revoked');
      return;
    }
    if (code === 4001) {
      this._tokenExpired(s, info);
      return;
    }
    if (closeMeansRetry(s, info)) {
      this._failure(s, info);
      return;
    }
    // 1006 (and anything else without a meaning) before "connected": the
    // network, or a handshake refused before any close code could be sent.
    // The state endpoint with the same token tells the two apart.
    this._checkRefused(s, info);
  }

  /** A normal close after "connected" that brought nothing newer than we have. */
  _finishedEarlier(s, info) {
    if (info.code !== 1000 || info.local || !s.connected || s.delivered) return false;
    return s.latestSeq !== null && this._lastSeq >= s.latestSeq;
  }

  /** 4001, token expired: a fresh one first, then resume. */
  _tokenExpired(s, info) {
    const self = this;
    const sid = this._sid;
    this._refreshToken().then(function (changed) {
      if (sid !== self._sid || !self._active || self._socket || self._mode !== 'websocket') return;
      if (changed || s.connected) {
        if (s.connected) self._failures = 0;
        self._openSocket(false);
      } else self._failure(s, info);
    }, function (err) {
      if (sid !== self._sid || !self._active || self._socket || self._mode !== 'websocket') return;
      self._log('warn', 'getToken failed', err);
      self._failure(s, info);
    });
  }

  _checkRefused(s, info) {
    const self = this;
    const gen = ++this._checkGen;
    const sid = this._sid;
    const req = this._httpGet('/v1/executions/' + encodeURIComponent(this._executionId), null, this.options.CONNECTION_TIMEOUT);
    req.promise.then(function (res) {
      if (gen !== self._checkGen || sid !== self._sid || !self._active || self._socket) return;
      if (res.status === 403) {
        self._fatal(1006, info.reason, 'token refused (403)');
      } else if (res.status === 401) {
        self._refreshToken().then(function (changed) {
          if (gen !== self._checkGen || sid !== self._sid || !self._active || self._socket) return;
          if (changed) self._failure(s, info);
          else self._fatal(1006, info.reason, 'token refused (401)');
        }, function () {
          if (gen !== self._checkGen || sid !== self._sid || !self._active || self._socket) return;
          self._fatal(1006, info.reason, 'token refused (401)');
        });
      } else self._failure(s, info);
    }, function (err) {
      if (err && err.aborted) return;
      if (gen !== self._checkGen || sid !== self._sid || !self._active || self._socket) return;
      self._failure(s, info);
    });
  }

  _failure(s, info) {
    if (!this._active || this._terminal || this._paused()) return;
    if (s && s.connected) this._failures = 0;
    this._failures += 1;
    if (this._failures > this.options.MAX_RECONNECT_ATTEMPTS) {
      this._startFallback(info);
      return;
    }
    let delay = this._backoff(this._failures);
    const why = info || {};
    if (why.code === 4029) delay = Math.max(delay, this.options.RATE_LIMIT_INTERVAL);
    this._setState('reconnecting', { attempt: this._failures, delay: delay, code: why.code, reason: why.reason });
    this._setTimer('reconnect', function () { this._openSocket(false); }, delay);
  }

  _fatal(code, reason, message) {
    this._teardown();
    this._setState('failed', { code: code, reason: reason });
    this._call('onError', {
      error: message,
      error_type: 'CONNECTION_REFUSED',
      code: code,
      reason: reason || '',
      fatal: true,
      source: 'connection'
    });
  }

  _startFallback(info) {
    this._failures = 0;
    this._fallback = true;
    this._mode = 'polling';
    this._call('onFallback', { reason: (info && info.reason) || ('close code ' + (info && info.code)), code: info && info.code, attempts: this.options.MAX_RECONNECT_ATTEMPTS });
    if (!this._active || this._mode !== 'polling') return;
    this._startPolling();
    this._scheduleProbe(this.options.BACKGROUND_RETRY_INTERVAL);
  }

  _scheduleProbe(base) {
    if (!this._active || !this._fallback || this._manualPolling || !this.options.ENABLE_WEBSOCKET) return;
    const j = this.options.RECONNECT_JITTER;
    const delay = Math.round(base * (1 - j + 2 * j * this._random()));
    this._setTimer('probe', function () { this._openSocket(true); }, delay);
  }

  _probeEnded(s, info) {
    const code = info.code;
    if (isRefusalClose(code)) {
      // the socket is refused for good; polling decides about the token
      this._fallback = false;
      return;
    }
    if (code === 4001) this._refreshToken().then(null, function () {});
    this._scheduleProbe(this.options.BACKGROUND_RETRY_INTERVAL);
  }

  // polling ---------------------------------------------------------------------

  _startPolling() {
    if (this._socket && !this._socket.probe) this._closeSocket(1000, 'polling');
    this._clearTimer('reconnect');
    this._pollErrors = 0;
    this._pollAnnounced = false;
    this._setState('polling', { fallback: this._fallback });
    this._poll();
  }

  _stopPolling() {
    this._pollGen++;
    this._clearTimer('poll');
    if (this._pollReq) {
      const r = this._pollReq;
      this._pollReq = null;
      r.abort();
    }
  }

  _schedulePoll(delay) {
    this._setTimer('poll', function () { this._poll(); }, delay);
  }

  _poll() {
    if (!this._active || this._paused() || this._mode !== 'polling' || this._terminal) return;
    this._clearTimer('poll');
    if (this._pollReq) {
      const old = this._pollReq;
      this._pollReq = null;
      old.abort();
    }
    const self = this;
    const gen = ++this._pollGen;
    const after = this._lastSeq;
    // the first poll of a polling period answers at once (catch up, and tell
    // the page that polling works); the next ones are long polls
    const wait = this._pollAnnounced ? Math.max(0, Math.min(30, this.options.POLL_WAIT)) : 0;
    const started = Date.now();
    const req = this._httpGet('/v1/executions/' + encodeURIComponent(this._executionId) + '/events',
      { after: after, wait: wait }, wait * 1000 + this.options.CONNECTION_TIMEOUT);
    this._pollReq = req;
    req.promise.then(function (res) {
      if (gen !== self._pollGen) return;
      self._pollReq = null;
      self._onPollResponse(res, after, started);
    }, function (err) {
      if (gen !== self._pollGen) return;
      self._pollReq = null;
      if (err && err.aborted) return;
      self._onPollError(err);
    });
  }

  _onPollResponse(res, after, started) {
    const o = this.options;
    if (res.status === 200 && res.body && typeof res.body === 'object') {
      this._onPollBody(res.body, after, started);
      return;
    }
    if (res.status === 401) {
      this._pollUnauthorized();
      return;
    }
    if (res.status === 403) {
      this._fatal(403, 'polling refused', 'forbidden (403)');
      return;
    }
    if (res.status === 429) {
      this._schedulePoll(Math.max(o.POLL_MIN_INTERVAL, parseRetryAfter(res.header('Retry-After'), o.RATE_LIMIT_INTERVAL)));
      return;
    }
    this._onPollError(new Error('HTTP ' + res.status));
  }

  /** A 200 answer to a poll: its events, then the next poll or the end. */
  _onPollBody(body, after, started) {
    this._pollErrors = 0;
    const latest = typeof body.latest_seq === 'number' ? body.latest_seq : null;
    if (latest !== null && latest < after) {
      this._pollReset(latest);
      return;
    }
    if (!this._announcePolling(latest, after)) return;
    const events = Array.isArray(body.events) ? body.events.slice() : [];
    if (!this._deliverPolled(events)) return;
    if (body.terminal === true && (latest === null || this._lastSeq >= latest)) {
      // finished, and the terminal event itself is no longer in the history
      this._finish(null);
      return;
    }
    this._schedulePoll(this._nextPollDelay(events.length, started));
  }

  /**
   * More right away when this answer brought events; otherwise never two
   * empty polls closer than POLL_MIN_INTERVAL (a server without long-poll
   * support, or a history that no longer has what latest_seq announces).
   */
  _nextPollDelay(delivered, started) {
    const min = this.options.POLL_MIN_INTERVAL;
    const elapsed = Date.now() - started;
    return delivered || elapsed >= min ? 0 : min - elapsed;
  }

  /** The history restarted below what we have (e.g. a broker wipe): start over from its latest seq. */
  _pollReset(latest) {
    const sid = this._sid;
    const prev = this._lastSeq;
    this._lastSeq = latest;
    this._call('onReset', { previousSeq: prev, latestSeq: latest });
    if (sid === this._sid && this._active) this._schedulePoll(0);
  }

  /**
   * onConnected for the first answer of a polling period; false when a
   * handler stopped or switched the session meanwhile.
   */
  _announcePolling(latest, after) {
    if (this._pollAnnounced) return true;
    const sid = this._sid;
    this._pollAnnounced = true;
    this._call('onConnected', { mode: 'polling', executionId: this._executionId, latestSeq: latest, lastSeq: this._lastSeq, resumed: after > 0, gap: false });
    return this._stillPolling(sid);
  }

  /** Delivers polled events in seq order; false when delivery must stop there. */
  _deliverPolled(events) {
    const sid = this._sid;
    events.sort(function (a, b) { return seqOf(a) - seqOf(b); });
    for (let i = 0; i < events.length; i++) {
      this._deliver(events[i]);
      if (!this._stillPolling(sid) || this._terminal) return false;
    }
    return true;
  }

  /** Whether session `sid` is still the active one, in polling mode. */
  _stillPolling(sid) {
    return sid === this._sid && this._active && this._mode === 'polling';
  }

  /** A 401 to a poll: a fresh token and poll again, or give up. */
  _pollUnauthorized() {
    const self = this;
    const sid = this._sid;
    this._refreshToken().then(function (changed) {
      if (sid !== self._sid || !self._active) return;
      if (changed) self._schedulePoll(0);
      else self._fatal(401, 'polling refused', 'token refused (401)');
    }, function () {
      if (sid === self._sid && self._active) self._onPollError(new Error('getToken failed'));
    });
  }

  _onPollError(err) {
    if (!this._active || this._paused()) return;
    this._pollErrors += 1;
    const delay = this._backoff(this._pollErrors);
    this._log('debug', 'poll failed, next in ' + delay + ' ms', err);
    this._schedulePoll(delay);
  }

  // events ----------------------------------------------------------------------

  /** Delivers one event unless already seen; returns whether it was new. */
  _deliver(evt) {
    if (!evt || typeof evt !== 'object') return false;
    if (!this._active || this._terminal || !this._takeSeq(evt.seq)) return false;
    const sid = this._sid;
    const data = eventData(evt);
    this._call('onEvent', evt);
    if (sid !== this._sid) return true;
    this._dispatch(evt, data);
    if (sid !== this._sid || !this._active) return true;
    if (isTerminalEvent(evt, data)) this._finish(evt);
    return true;
  }

  /** The handler for the event's kind (onProgress, onResult, ...), if any. */
  _dispatch(evt, data) {
    if (!Object.prototype.hasOwnProperty.call(EVENT_HANDLERS, evt.event)) return;
    this._call(EVENT_HANDLERS[evt.event], data, evt);
  }

  /** Records an event's seq; false when it was seen already. */
  _takeSeq(seq) {
    if (typeof seq !== 'number') return true;
    if (seq <= this._lastSeq) return false;
    this._lastSeq = seq;
    return true;
  }

  _finish(evt) {
    this._terminal = true;
    this._teardown();
    this._setState('done', { event: evt ? evt.event : null });
  }

  // lifecycle -------------------------------------------------------------------

  _pause(reason) {
    if (!this._active) return;
    this._stopTransports();
    this._setState('paused', { reason: reason });
  }

  _resume(reason) {
    if (!this._active || this._paused()) return;
    if (this._state === 'connected' && this._socket && this._socket.connected) return;
    this._failures = 0;
    this._pollErrors = 0;
    if (this._mode === 'polling') {
      this._startPolling();
      if (this._fallback) this._scheduleProbe(0);
    } else {
      this._openSocket(false);
    }
    this._log('debug', 'resumed (' + reason + ')');
  }

  _onHide() {
    this._hidden = true;
    this._pause('hidden');
  }

  _onShow() {
    if (!this._hidden) return;
    this._hidden = false;
    this._resume('shown');
  }

  _onOffline() {
    this._offline = true;
    this._pause('offline');
  }

  _onOnline() {
    this._offline = false;
    this._resume('online');
  }
}

/**
 * @param {any} options
 * @returns {any}
 */
export function createClient(options) {
  return new ProgressRelayClient(options);
}

export { ProgressRelayClient };
