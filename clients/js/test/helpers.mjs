// Fake transports for unit tests: sockets and requests the test drives by hand.
import { createClient } from '../src/index.mjs';

export function fakeTransport() {
  const t = { name: 'fake', sockets: [], requests: [], lc: null };
  t.openSocket = (req) => {
    const s = {
      req,
      url: req.url,
      token: req.token,
      sent: [],
      closed: null,
      msg(obj) { req.onMessage(typeof obj === 'string' ? obj : JSON.stringify(obj)); },
      connected(extra = {}) {
        req.onOpen();
        s.msg({ type: 'connected', execution_id: 'exec-1', latest_seq: 0, resumed: false, heartbeat_interval: 30, ...extra });
      },
      event(seq, event = 'progress', data = { progress: seq, stage: 's' + seq }) {
        s.msg({ type: 'diagnosis_update', execution_id: 'exec-1', seq, timestamp: '2026-01-01T00:00:00Z', event, data });
      },
      serverClose(code, reason = '') {
        if (s.closed) return;
        s.closed = { code, reason, by: 'server' };
        req.onClose({ code, reason });
      }
    };
    t.sockets.push(s);
    return {
      send(text) { s.sent.push(text); return true; },
      close(code, reason) { if (!s.closed) s.closed = { code, reason, by: 'client' }; }
    };
  };
  t.request = (req) => {
    let resolve, reject;
    const promise = new Promise((a, b) => { resolve = a; reject = b; });
    const r = {
      req,
      url: req.url,
      token: req.token,
      aborted: false,
      settled: false,
      respond(status, body, headers = {}) {
        r.settled = true;
        resolve({ status, body, header: (n) => headers[n] ?? headers[n.toLowerCase()] });
      },
      fail(msg = 'network down') { r.settled = true; reject(new Error(msg)); }
    };
    t.requests.push(r);
    return {
      promise,
      abort() {
        r.aborted = true;
        const e = new Error('aborted');
        e.aborted = true;
        reject(e);
      }
    };
  };
  t.lifecycle = (cb) => {
    t.lc = cb;
    return () => { t.lc = null; };
  };
  t.last = () => t.sockets[t.sockets.length - 1];
  t.lastRequest = () => t.requests[t.requests.length - 1];
  t.openSockets = () => t.sockets.filter((s) => !s.closed);
  t.pendingRequests = () => t.requests.filter((r) => !r.aborted && !r.settled);
  return t;
}

export function ev(seq, event = 'progress', data) {
  return { type: 'diagnosis_update', execution_id: 'exec-1', seq, timestamp: '2026-01-01T00:00:00Z', event, data: data || { progress: seq, stage: 's' + seq } };
}

/** Lets pending promise callbacks run (setImmediate is not faked). */
export async function flush(n = 3) {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

/** A client over a fake transport, recording every callback. */
export function setup(options = {}) {
  const transport = fakeTransport();
  const log = [];
  const tokens = options.tokens ? [...options.tokens] : null;
  const getTokenCalls = [];
  const client = createClient({
    baseUrl: 'http://relay.test',
    transport,
    logger: null,
    random: () => 0.5,
    getToken: async (ctx) => {
      getTokenCalls.push(ctx);
      if (tokens) return tokens.length > 1 ? tokens.shift() : tokens[0];
      return 'tok-' + getTokenCalls.length;
    },
    ...options.client
  });
  const seen = [];
  const handlers = {
    onConnected: (info) => log.push(['connected', info]),
    onProgress: (data, e) => { seen.push(e.seq); log.push(['progress', e.seq]); },
    onResult: (data, e) => { seen.push(e.seq); log.push(['result', e.seq]); },
    onComplete: (data, e) => { seen.push(e.seq); log.push(['complete', e.seq]); },
    onError: (data, e) => { if (e) seen.push(e.seq); log.push(['error', data]); },
    onFallback: (info) => log.push(['fallback', info]),
    onStateChange: (state, info) => log.push(['state', state, info]),
    onEvent: () => {},
    onReset: (info) => log.push(['reset', info]),
    ...options.handlers
  };
  return { client, transport, log, seen, handlers, getTokenCalls, states: () => log.filter((l) => l[0] === 'state').map((l) => l[1]) };
}
