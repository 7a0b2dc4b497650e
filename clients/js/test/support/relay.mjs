// Test support: run the real Python relay as a child process, publish to it,
// mint tokens, put a switchable TCP proxy in front of its WebSocket, and a
// fake `wx` that exposes the real SocketTask / wx.request API shape on top of
// a real socket (the `ws` package) and fetch.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const JWT_SECRET = 'integration-secret-0123456789abcdef0123456789';
export const PUBLISH_KEY = 'integration-publish-key-0123456789abcdef';

export function pythonPath() {
  if (process.env.RELAY_TEST_PYTHON) return process.env.RELAY_TEST_PYTHON;
  const venv = join(REPO, '.venv', 'bin', 'python');
  return existsSync(venv) ? venv : 'python3';
}

export function serviceAvailable() {
  return existsSync(join(REPO, 'service', 'web', 'app.py')) && existsSync(join(REPO, 'service', '__main__.py'));
}

export async function freePort() {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(cond, { timeout = 10000, interval = 20, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** Starts `python -m service` on `port` and waits for /healthz. */
export async function startRelay({ port, env = {} } = {}) {
  port = port || (await freePort());
  const output = [];
  const child = spawn(pythonPath(), ['-m', 'service'], {
    cwd: REPO,
    env: {
      ...process.env,
      RELAY_ENV: 'dev',
      RELAY_HOST: '127.0.0.1',
      RELAY_PORT: String(port),
      RELAY_WORKERS: '1',
      RELAY_JWT_SECRET: JWT_SECRET,
      RELAY_PUBLISH_KEYS: PUBLISH_KEY,
      RELAY_JWT_LEEWAY: '0',
      RELAY_ACCESS_LOG: 'false',
      RELAY_LOG_LEVEL: 'WARNING',
      ...env
    },
    stdio: ['ignore', 'pipe', 'pipe']
  });
  child.stdout.on('data', (d) => output.push(String(d)));
  child.stderr.on('data', (d) => output.push(String(d)));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const base = `http://127.0.0.1:${port}`;
  const relay = {
    port,
    base,
    child,
    output,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 8000);
      const r = await exited;
      clearTimeout(t);
      return r;
    }
  };
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error('relay exited at start:\n' + output.join(''));
      try {
        const r = await fetch(base + '/healthz');
        return r.status === 200;
      } catch {
        return false;
      }
    }, { timeout: 20000, what: 'the relay to answer /healthz' });
  } catch (e) {
    await relay.stop('SIGKILL');
    throw e;
  }
  return relay;
}

export async function publish(base, executionId, event, data, extra = {}) {
  const r = await fetch(`${base}/internal/v1/executions/${encodeURIComponent(executionId)}/events`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${PUBLISH_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ event, data, ...extra })
  });
  const body = await r.json();
  if (r.status !== 202) throw new Error(`publish ${event}: ${r.status} ${JSON.stringify(body)}`);
  return body;
}

export async function mintToken(base, executionId, sub = 'user-1', ttl) {
  const r = await fetch(`${base}/internal/v1/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${PUBLISH_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ execution_id: executionId, sub, ...(ttl ? { ttl_seconds: ttl } : {}) })
  });
  const body = await r.json();
  if (r.status !== 201) throw new Error(`token: ${r.status} ${JSON.stringify(body)}`);
  return body.token;
}

const b64url = (obj) => Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj)).toString('base64url');

/** An HS256 subscriber token minted here (for expiries and bad signatures). */
export function signToken({ executionId, sub = 'user-1', exp, secret = JWT_SECRET, aud = 'progress-relay' }) {
  const header = b64url({ alg: 'HS256', typ: 'JWT' });
  const payload = b64url({ sub, execution_id: executionId, aud, iat: Math.floor(Date.now() / 1000), exp });
  const sig = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/**
 * A TCP proxy to the relay for WebSocket traffic only; `block()` drops every
 * connection through it and refuses new ones (like a proxy that blocks
 * WebSockets), `unblock()` lets them through again.
 */
export async function startProxy(targetPort) {
  const sockets = new Set();
  const pairs = [];
  let blocked = false;
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted++;
    if (blocked) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
    pairs.push([client, upstream]);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    get accepted() { return accepted; },
    block() {
      blocked = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    unblock() { blocked = false; },
    /** existing connections stay open but nothing passes any more (a dead NAT entry) */
    stall() {
      for (const [a, b] of pairs.splice(0)) {
        a.unpipe(b); b.unpipe(a);
        a.pause(); b.pause();
      }
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(r));
    }
  };
}

/** A WebSocket class (for the browser adapter) that counts and records its sockets. */
export function countingWebSocket() {
  const urls = [];
  class CountingWebSocket extends WebSocket {
    constructor(url, ...rest) {
      urls.push(url);
      super(url, ...rest);
    }
  }
  CountingWebSocket.urls = urls;
  return CountingWebSocket;
}

/**
 * A fake `wx` with the real API shape (wx.connectSocket -> SocketTask,
 * wx.request -> RequestTask, app and network events), backed by real
 * sockets and fetch. `hide()`, `show()`, `network(isConnected)` fire the
 * lifecycle events the way WeChat does.
 */
export function fakeWx() {
  const listeners = { hide: new Set(), show: new Set(), net: new Set() };
  const tasks = [];
  const wx = {
    tasks,
    requests: [],
    connectSocket(option) {
      const handlers = { open: [], close: [], error: [], message: [] };
      const record = { url: option.url, header: option.header, closedByClient: null, state: 'connecting' };
      tasks.push(record);
      let sock;
      try {
        sock = new WebSocket(option.url, { headers: option.header || {}, handshakeTimeout: option.timeout });
      } catch (err) {
        setTimeout(() => option.fail && option.fail({ errMsg: 'connectSocket:fail ' + err.message }), 0);
        return { onOpen() {}, onClose() {}, onError() {}, onMessage() {}, send() {}, close() {} };
      }
      // like WeChat: events fire on later ticks, never synchronously
      sock.on('open', () => { record.state = 'open'; handlers.open.forEach((h) => h({ header: {}, profile: {} })); });
      sock.on('message', (data, isBinary) => {
        const payload = isBinary ? new Uint8Array(data).buffer : data.toString('utf8');
        handlers.message.forEach((h) => h({ data: payload }));
      });
      sock.on('error', (err) => handlers.error.forEach((h) => h({ errMsg: String(err && err.message) })));
      sock.on('close', (code, reason) => {
        record.state = 'closed';
        handlers.close.forEach((h) => h({ code, reason: reason.toString() }));
      });
      if (option.success) setTimeout(() => option.success({ errMsg: 'connectSocket:ok' }), 0);
      return {
        onOpen(h) { handlers.open.push(h); },
        onClose(h) { handlers.close.push(h); },
        onError(h) { handlers.error.push(h); },
        onMessage(h) { handlers.message.push(h); },
        send(o) {
          if (sock.readyState !== WebSocket.OPEN) { o.fail && o.fail({ errMsg: 'sendSocketMessage:fail' }); return; }
          sock.send(o.data, (err) => (err ? o.fail && o.fail({ errMsg: String(err) }) : o.success && o.success({ errMsg: 'ok' })));
        },
        close(o = {}) {
          record.closedByClient = { code: o.code, reason: o.reason };
          if (sock.readyState === WebSocket.CONNECTING) {
            // WeChat refuses to close a task that is not open yet
            o.fail && o.fail({ errMsg: 'closeSocket:fail WebSocket is not connected' });
            return;
          }
          try { sock.close(o.code || 1000, o.reason || ''); o.success && o.success({ errMsg: 'closeSocket:ok' }); } catch (e) { o.fail && o.fail({ errMsg: String(e) }); }
        }
      };
    },
    request(option) {
      const ctrl = new AbortController();
      const rec = { url: option.url, header: option.header };
      wx.requests.push(rec);
      const timer = option.timeout ? setTimeout(() => ctrl.abort(), option.timeout) : null;
      fetch(option.url, { method: option.method || 'GET', headers: option.header || {}, signal: ctrl.signal })
        .then(async (res) => {
          const text = await res.text();
          let data = text;
          if (option.dataType === undefined || option.dataType === 'json') { try { data = JSON.parse(text); } catch { /* keep text */ } }
          const header = {};
          res.headers.forEach((v, k) => { header[k.replace(/(^|-)([a-z])/g, (m, p, c) => p + c.toUpperCase())] = v; });
          if (timer) clearTimeout(timer);
          option.success && option.success({ data, statusCode: res.status, header, cookies: [], errMsg: 'request:ok' });
        }, (err) => {
          if (timer) clearTimeout(timer);
          const aborted = ctrl.signal.aborted;
          option.fail && option.fail({ errMsg: aborted ? 'request:fail abort' : 'request:fail ' + String(err && err.message) });
        });
      return { abort() { ctrl.abort(); }, onHeadersReceived() {}, offHeadersReceived() {} };
    },
    onAppHide(h) { listeners.hide.add(h); },
    offAppHide(h) { listeners.hide.delete(h); },
    onAppShow(h) { listeners.show.add(h); },
    offAppShow(h) { listeners.show.delete(h); },
    onNetworkStatusChange(h) { listeners.net.add(h); },
    offNetworkStatusChange(h) { listeners.net.delete(h); },
    hide() { listeners.hide.forEach((h) => h({})); },
    show() { listeners.show.forEach((h) => h({ path: 'pages/report-v2/report-v2', query: {}, scene: 1001 })); },
    network(isConnected) { listeners.net.forEach((h) => h({ isConnected, networkType: isConnected ? 'wifi' : 'none' })); },
    listenerCount() { return listeners.hide.size + listeners.show.size + listeners.net.size; },
    openTasks() { return tasks.filter((t) => t.state !== 'closed'); }
  };
  return wx;
}
