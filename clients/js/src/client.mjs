// progress-relay client: one execution's events, exactly once and in order,
// over a WebSocket that resumes after every drop, or over polling when the
// socket cannot get through. A thin coordinator of three parts with their own
// tests: transport selection (transport-select.mjs), the reconnect policy
// (reconnect.mjs) and delivery (delivery.mjs: cursor, epochs, resets).
// See docs/client.md.
import { parseRetryAfter, buildQuery, stripTrailingSlash, toWebSocketBase, safeJsonParse } from './util.mjs';
import { TokenSource, SessionRequests } from './session.mjs';
import { getGlobal, resolveTransport, transportProblem } from './transport-select.mjs';
import { ReconnectPolicy, closeVerdict, isRefusalClose, refusalMessage } from './reconnect.mjs';
import { Delivery, isTerminalEvent } from './delivery.mjs';
import { SessionTimers } from './timers.mjs';
import { Presence } from './presence.mjs';

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
  RATE_LIMIT_INTERVAL: 30000,
  /**
   * after the app goes to the background, how long the connection stays
   * before it is closed (ms; 0 closes at once). WeChat cuts connections about
   * 5 s after hiding; a share sheet or an image picker hides the app too.
   */
  HIDE_GRACE: 3000
});

/** The method that follows up each reconnect verdict but finish and refused. */
const VERDICT_METHODS = { refresh: '_tokenExpired', 'check-end': '_checkEnded', 'check-refused': '_checkRefused', retry: '_failure' };

/** The handler called for each kind of event, after onEvent. */
const EVENT_HANDLERS = { progress: 'onProgress', result: 'onResult', complete: 'onComplete', error: 'onError' };

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
  const given = Object.keys(options);
  for (let i = 0; i < given.length; i++) if (options[given[i]] !== undefined) opts[given[i]] = options[given[i]];
  return opts;
}

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
    this._sid = 0;
    const self = this;
    this._timers = new SessionTimers(function () { return self._sid; });
    this._policy = new ReconnectPolicy(opts, this._random);
    /** @type {import('../index').State} */
    this._state = 'idle';
    this._preferPolling = !opts.ENABLE_WEBSOCKET || !this._transport.openSocket;
    /** @type {import('../index').Mode} */
    this._mode = this._preferPolling ? 'polling' : 'websocket';
    this._resetSession(undefined, '');
  }

  /**
   * @param {any} resume
   * @param {string} executionId
   */
  _resetSession(resume, executionId) {
    this._active = false;
    this._executionId = executionId;
    /** @type {any} */
    this._handlers = {};
    this._delivery = new Delivery(resume);
    this._tokens = new TokenSource(this.options.getToken, this._executionId);
    this._requests = new SessionRequests(this._transport, this._baseUrl, this._tokens);
    this._policy.reset();
    this._pollErrors = 0;
    this._fallback = false;
    this._manualPolling = false;
    /** @type {any} */
    this._socket = null;
    /** @type {any} */
    this._pollReq = null;
    this._sockGen = 0;
    this._pollGen = 0;
    this._checkGen = 0;
    this._pollAnnounced = false;
    this._presence = new Presence();
    /** @type {null | (() => void)} */
    this._unsubscribe = null;
  }

  // ---------------------------------------------------------------- public API

  /**
   * Starts watching one execution. A client watches one execution at a time:
   * connecting again first disconnects the previous one.
   * @param {string} executionId
   * @param {any} [handlers]
   * @param {{lastSeq?: number, epoch?: string}} [resume] resume after this
   *   seq of this stream epoch (e.g. kept across a page reload)
   */
  connect(executionId, handlers, resume) {
    if (executionId === undefined || executionId === null || executionId === '') {
      throw new TypeError('connect: executionId is required');
    }
    if (this._active || this._state !== 'idle') this._teardown();
    this._resetSession(resume, String(executionId));
    this._sid++;
    this._active = true;
    this._handlers = handlers || {};
    const problem = transportProblem(this._transport);
    if (problem) {
      this._fatal(0, '', problem, 'NO_TRANSPORT');
      return this;
    }
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

  /**
   * Switches the transport by hand. Idempotent. Events keep their order and
   * are never repeated across the switch (the new transport resumes after the
   * last seq received).
   * @param {'polling' | 'websocket'} mode
   */
  setMode(mode) {
    if (mode !== 'polling' && mode !== 'websocket') throw new TypeError("setMode: 'polling' or 'websocket'");
    if (mode === 'websocket' && !this._transport.openSocket) {
      this._log('warn', 'no WebSocket here: staying with polling');
      return this;
    }
    this._preferPolling = mode === 'polling';
    if (!this._active) {
      this._mode = mode;
      return this;
    }
    if (mode === 'polling') this._switchToPolling();
    else this._switchToWebSocket();
    return this;
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
  /** the last seq delivered (within getEpoch()) */
  getLastSeq() { return this._delivery.seq; }
  /** the stream epoch of getLastSeq(); null until the relay named one */
  getEpoch() { return this._delivery.epoch; }
  /** names of the timers still pending (empty after disconnect) */
  pendingTimers() { return this._timers.names(); }

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
    if (info) {
      const keys = Object.keys(info);
      for (let i = 0; i < keys.length; i++) /** @type {any} */ (detail)[keys[i]] = info[keys[i]];
    }
    this._call('onStateChange', state, detail);
  }

  _setTimer(name, fn, ms) {
    const self = this;
    this._timers.set(name, function () { fn.call(self); }, ms);
  }

  _clearTimer(name) { this._timers.clear(name); }

  _paused() { return this._presence.paused(); }

  /** Whether session `sid` is still the active one. */
  _current(sid) { return sid === this._sid && this._active; }

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
    this._requests.abortAll();
    this._timers.clearAll();
  }

  _fatal(code, reason, message, type) {
    this._teardown();
    this._setState('failed', { code: code, reason: reason });
    this._call('onError', {
      error: message,
      error_type: type || 'CONNECTION_REFUSED',
      code: code,
      reason: reason || '',
      fatal: true,
      source: 'connection'
    });
  }

  _finish(evt) {
    this._delivery.terminal = true;
    this._teardown();
    this._setState('done', { event: evt ? evt.event : null });
  }

  // token and HTTP --------------------------------------------------------------

  _getToken(force) { return this._tokens.get(force); }

  /** @returns {Promise<boolean>} whether the fresh token differs from the old one */
  _refreshToken() { return this._tokens.refresh(); }

  _httpGet(path, query, timeout) { return this._requests.get(path, query, timeout); }

  /**
   * GET of the state endpoint; `then(res)` runs only while this check is
   * still wanted (same session, no newer check, no socket opened meanwhile),
   * `otherwise()` on a network error.
   */
  _stateCheck(then, otherwise) {
    const self = this;
    const gen = ++this._checkGen;
    const sid = this._sid;
    const wanted = function () { return gen === self._checkGen && self._current(sid) && !self._socket; };
    const req = this._httpGet('/v1/executions/' + encodeURIComponent(this._executionId), null, this.options.CONNECTION_TIMEOUT);
    req.promise.then(function (res) {
      if (wanted()) then(res, wanted);
    }, function (err) {
      if (!(err && err.aborted) && wanted()) otherwise(err);
    });
  }

  // WebSocket -------------------------------------------------------------------

  _openSocket(probe) {
    if (!this._active || this._paused()) return;
    this._closeSocket(1000, 'reconnecting');
    this._clearTimer('reconnect');
    if (!probe) this._setState('connecting', { attempt: this._policy.failures });
    const self = this;
    const s = { gen: ++this._sockGen, probe: !!probe, connected: false, handle: null, requestedLastSeq: this._delivery.seq, latestSeq: null, heartbeat: 0 };
    this._socket = s;
    this._setTimer('connect-timeout', function () {
      if (self._socket === s) self._socketEnded(s, { code: 4000, reason: 'connection timeout', local: true });
    }, this.options.CONNECTION_TIMEOUT);
    this._getToken(false).then(function (token) {
      if (self._socket !== s) return;
      const url = self._wsBase + '/ws/executions/' + encodeURIComponent(self._executionId) + buildQuery(self._delivery.cursor('last_seq'));
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
    if (msg.type === 'pong' || !s.connected) return;
    if (msg.type === 'diagnosis_update' || typeof msg.event === 'string') this._deliver(msg);
  }

  _onConnectedFrame(s, msg) {
    this._clearTimer('connect-timeout');
    const sid = this._sid;
    const opened = this._delivery.opened(msg, s.requestedLastSeq);
    if (opened.reset) {
      this._announceReset(opened);
      if (!this._current(sid) || this._socket !== s) return;
      if (opened.reopen) {
        // a v1 relay replays only after the cursor sent: ask from the start
        this._openSocket(s.probe);
        return;
      }
    }
    s.connected = true;
    s.latestSeq = opened.latestSeq;
    if (s.probe) this._leavePolling(s);
    this._policy.reset();
    let hb = this.options.HEARTBEAT_INTERVAL;
    if (typeof msg.heartbeat_interval === 'number' && msg.heartbeat_interval > 0) hb = Math.min(hb, msg.heartbeat_interval * 1000);
    s.heartbeat = hb;
    this._schedulePing();
    this._armWatchdog();
    const info = {
      mode: 'websocket',
      executionId: this._executionId,
      latestSeq: opened.latestSeq,
      lastSeq: this._delivery.seq,
      epoch: this._delivery.epoch,
      resumed: !!msg.resumed,
      gap: !!msg.gap,
      reset: opened.reset
    };
    this._setState('connected', { resumed: info.resumed, gap: info.gap, latestSeq: opened.latestSeq });
    this._call('onConnected', info);
  }

  /** A background attempt got through: leave polling for the socket. */
  _leavePolling(s) {
    s.probe = false;
    this._stopPolling();
    this._clearTimer('probe');
    this._fallback = false;
    this._mode = 'websocket';
  }

  /** onReset, before any event of the new epoch. */
  _announceReset(opened) {
    this._call('onReset', {
      previousEpoch: opened.previousEpoch,
      epoch: opened.epoch,
      previousSeq: opened.previousSeq,
      latestSeq: opened.latestSeq
    });
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

  /** A socket ended; `info.local` marks an end decided here (timeouts). */
  _socketEnded(s, info) {
    if (this._socket === s) this._closeSocket(info.local ? 4000 : 1000, info.reason || '');
    if (!this._active || this._delivery.terminal) return;
    if (s.probe) {
      this._probeEnded(s, info);
      return;
    }
    const verdict = closeVerdict(info, s, this._delivery);
    if (verdict === 'finish') this._finish(null);
    else if (verdict === 'refused') this._fatal(info.code, info.reason, refusalMessage(info.code, info.reason));
    else this[VERDICT_METHODS[verdict]](s, info);
  }

  /** 4001, token expired: a fresh one first, then resume. */
  _tokenExpired(s, info) {
    const self = this;
    const sid = this._sid;
    const still = function () { return self._current(sid) && !self._socket && self._mode === 'websocket'; };
    this._refreshToken().then(function (changed) {
      if (!still()) return;
      if (changed || s.connected) {
        if (s.connected) self._policy.reset();
        self._openSocket(false);
      } else self._failure(s, info);
    }, function (err) {
      if (!still()) return;
      self._log('warn', 'getToken failed', err);
      self._failure(s, info);
    });
  }

  /**
   * A 1000 after `connected` without the relay's end-of-stream reason
   * (WeChat's own "interrupted"): finished only if the state endpoint says so.
   */
  _checkEnded(s, info) {
    const self = this;
    this._setState('reconnecting', { attempt: 0, delay: 0, code: info.code, reason: info.reason });
    this._stateCheck(function (res) {
      if (res.status === 200 && self._delivery.endsPolling(res.body)) self._finish(null);
      else self._failure(s, info);
    }, function () { self._failure(s, info); });
  }

  /**
   * 1006 (or a code without a meaning) before `connected`: the network, or a
   * handshake refused before any close code could be sent. The state
   * endpoint with the same token tells the two apart.
   */
  _checkRefused(s, info) {
    const self = this;
    this._stateCheck(function (res, wanted) {
      if (res.status === 403) {
        self._fatal(1006, info.reason, 'token refused (403)');
      } else if (res.status === 401) {
        self._refreshToken().then(function (changed) {
          if (!wanted()) return;
          if (changed) self._failure(s, info);
          else self._fatal(1006, info.reason, 'token refused (401)');
        }, function () {
          if (wanted()) self._fatal(1006, info.reason, 'token refused (401)');
        });
      } else self._failure(s, info);
    }, function () { self._failure(s, info); });
  }

  _failure(s, info) {
    if (!this._active || this._delivery.terminal || this._paused()) return;
    const why = info || {};
    const next = this._policy.next(!!(s && s.connected), why.code);
    if (!next) {
      this._startFallback(info);
      return;
    }
    this._setState('reconnecting', { attempt: next.attempt, delay: next.delay, code: why.code, reason: why.reason });
    this._setTimer('reconnect', function () { this._openSocket(false); }, next.delay);
  }

  _startFallback(info) {
    if (!this._transport.request) {
      this._fatal(info && info.code, info && info.reason, 'the WebSocket keeps failing and polling needs wx.request or fetch, which is not available here', 'NO_TRANSPORT');
      return;
    }
    this._fallback = true;
    this._mode = 'polling';
    this._call('onFallback', { reason: (info && info.reason) || ('close code ' + (info && info.code)), code: info && info.code, attempts: this.options.MAX_RECONNECT_ATTEMPTS });
    if (!this._active || this._mode !== 'polling') return;
    this._startPolling();
    this._scheduleProbe(this.options.BACKGROUND_RETRY_INTERVAL);
  }

  _scheduleProbe(base) {
    if (!this._active || !this._fallback || this._manualPolling || !this.options.ENABLE_WEBSOCKET) return;
    this._setTimer('probe', function () { this._openSocket(true); }, this._policy.probeDelay(base));
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

  // manual switch -----------------------------------------------------------------

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
    this._policy.reset();
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
    if (!this._active || this._paused() || this._mode !== 'polling' || this._delivery.terminal) return;
    this._stopPolling();
    const self = this;
    const gen = this._pollGen;
    const after = this._delivery.seq;
    // the first poll of a polling period answers at once (catch up, and tell
    // the page that polling works); the next ones are long polls
    const wait = this._pollAnnounced ? Math.max(0, Math.min(30, this.options.POLL_WAIT)) : 0;
    const started = Date.now();
    const query = this._delivery.cursor('after');
    query.wait = wait;
    const req = this._httpGet('/v1/executions/' + encodeURIComponent(this._executionId) + '/events',
      query, wait * 1000 + this.options.CONNECTION_TIMEOUT);
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
    if (res.status === 200 && res.body && typeof res.body === 'object') this._onPollBody(res.body, after, started);
    else if (res.status === 401) this._pollUnauthorized();
    else if (res.status === 403) this._fatal(403, 'polling refused', 'forbidden (403)');
    else if (res.status === 429) this._schedulePoll(Math.max(o.POLL_MIN_INTERVAL, parseRetryAfter(res.header('Retry-After'), o.RATE_LIMIT_INTERVAL)));
    else this._onPollError(new Error('HTTP ' + res.status));
  }

  /** A 200 answer to a poll: a reset if any, its events, then the next poll or the end. */
  _onPollBody(body, after, started) {
    const sid = this._sid;
    this._pollErrors = 0;
    const opened = this._delivery.opened(body, after);
    if (opened.reset) {
      this._announceReset(opened);
      if (!this._stillPolling(sid)) return;
      if (opened.reopen) {
        this._schedulePoll(0);
        return;
      }
    }
    if (!this._announcePolling(opened, after)) return;
    const events = Array.isArray(body.events) ? body.events.slice() : [];
    if (!this._deliverPolled(events)) return;
    if (this._delivery.endsPolling(body)) {
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

  /**
   * onConnected for the first answer of a polling period; false when a
   * handler stopped or switched the session meanwhile.
   */
  _announcePolling(opened, after) {
    if (this._pollAnnounced) return true;
    const sid = this._sid;
    this._pollAnnounced = true;
    this._call('onConnected', {
      mode: 'polling',
      executionId: this._executionId,
      latestSeq: opened.latestSeq,
      lastSeq: this._delivery.seq,
      epoch: this._delivery.epoch,
      resumed: after > 0,
      gap: false,
      reset: opened.reset
    });
    return this._stillPolling(sid);
  }

  /** Delivers polled events in seq order; false when delivery must stop there. */
  _deliverPolled(events) {
    const sid = this._sid;
    events.sort(function (a, b) { return (a && a.seq) - (b && b.seq); });
    for (let i = 0; i < events.length; i++) {
      this._deliver(events[i]);
      if (!this._stillPolling(sid) || this._delivery.terminal) return false;
    }
    return true;
  }

  /** Whether session `sid` is still the active one, in polling mode. */
  _stillPolling(sid) {
    return this._current(sid) && this._mode === 'polling';
  }

  /** A 401 to a poll: a fresh token and poll again, or give up. */
  _pollUnauthorized() {
    const self = this;
    const sid = this._sid;
    this._refreshToken().then(function (changed) {
      if (!self._current(sid)) return;
      if (changed) self._schedulePoll(0);
      else self._fatal(401, 'polling refused', 'token refused (401)');
    }, function () {
      if (self._current(sid)) self._onPollError(new Error('getToken failed'));
    });
  }

  _onPollError(err) {
    if (!this._active || this._paused()) return;
    this._pollErrors += 1;
    const delay = this._policy.backoff(this._pollErrors);
    this._log('debug', 'poll failed, next in ' + delay + ' ms', err);
    this._schedulePoll(delay);
  }

  // events ----------------------------------------------------------------------

  /** Delivers one event unless already seen. */
  _deliver(evt) {
    if (!this._active || !this._delivery.accept(evt)) return;
    const sid = this._sid;
    this._call('onEvent', evt);
    if (sid !== this._sid) return;
    if (Object.prototype.hasOwnProperty.call(EVENT_HANDLERS, evt.event)) {
      this._call(EVENT_HANDLERS[evt.event], evt.data && typeof evt.data === 'object' ? evt.data : {}, evt);
    }
    if (!this._current(sid)) return;
    if (isTerminalEvent(evt)) this._finish(evt);
  }

  // lifecycle -------------------------------------------------------------------

  /** Follows app visibility and network changes for this session. */
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

  _pause(reason) {
    if (!this._active) return;
    this._stopTransports();
    this._setState('paused', { reason: reason });
  }

  _resume(reason) {
    if (!this._active || this._paused()) return;
    if (this._state === 'connected' && this._socket && this._socket.connected) return;
    this._policy.reset();
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
    const grace = this.options.HIDE_GRACE;
    const action = this._presence.hide(grace);
    if (action === 'grace') this._setTimer('hide-grace', this._graceOver, grace);
    else if (action === 'pause') this._pause('hidden');
  }

  _graceOver() {
    if (this._presence.graceOver()) this._pause('hidden');
  }

  _onShow() {
    const action = this._presence.show();
    // back within the grace: the connection was never closed
    if (action === 'stay') this._clearTimer('hide-grace');
    else if (action === 'resume') this._resume('shown');
  }

  _onOffline() {
    this._presence.goOffline();
    this._pause('offline');
  }

  _onOnline() {
    if (this._presence.goOnline()) this._resume('online');
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
