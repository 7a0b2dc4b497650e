// The transport adapters on their own: the browser WebSocket / fetch adapter
// over real sockets, and the mini-program adapter over a scripted `wx`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import http from 'node:http';
import WebSocket, { WebSocketServer } from 'ws';
import { createBrowserSocketOpener, createFetchRequester } from '../src/transports/browser.mjs';
import { createWxSocketOpener, createWxRequester, createWxLifecycle } from '../src/transports/wx.mjs';

const noop = () => {};

test('browser adapter: token in the query, frames both ways, close code reported', async () => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  const seen = [];
  wss.on('connection', (sock, req) => {
    seen.push(req.url);
    sock.on('message', (m) => { sock.send('echo:' + m); sock.close(4008, 'slow'); });
  });
  const open = createBrowserSocketOpener(WebSocket);
  const got = [];
  const closed = new Promise((resolve) => {
    const h = open({
      url: `ws://127.0.0.1:${wss.address().port}/ws/executions/e1?last_seq=3`,
      token: 'a b',
      timeout: 1000,
      onOpen: () => h.send('hi'),
      onMessage: (t) => got.push(t),
      onClose: resolve,
      onError: noop
    });
  });
  assert.deepEqual(await closed, { code: 4008, reason: 'slow' });
  assert.deepEqual(got, ['echo:hi']);
  assert.deepEqual(seen, ['/ws/executions/e1?last_seq=3&token=a%20b']);
  wss.close();
});

test('browser adapter: closing a socket that is still connecting does not crash Node', async () => {
  const silent = net.createServer(() => {});
  await new Promise((r) => silent.listen(0, '127.0.0.1', r));
  const open = createBrowserSocketOpener(WebSocket);
  let closes = 0;
  const h = open({ url: `ws://127.0.0.1:${silent.address().port}/x`, token: 't', timeout: 1000, onOpen: noop, onMessage: noop, onClose: () => closes++, onError: noop });
  await new Promise((r) => setTimeout(r, 50));
  h.close(1000, 'bye');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(closes, 0, 'no callback after close()');
  silent.close();
});

test('browser adapter: a refused connection ends with 1006', async () => {
  const port = await new Promise((r) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => r(p)); }); });
  const open = createBrowserSocketOpener(WebSocket);
  const info = await new Promise((resolve) => open({ url: `ws://127.0.0.1:${port}/x`, token: 't', timeout: 1000, onOpen: noop, onMessage: noop, onClose: resolve, onError: noop }));
  assert.equal(info.code, 1006);
});

test('fetch adapter: status, JSON body, headers, bearer token, timeout and abort', async () => {
  const server = http.createServer((req, res) => {
    if (req.url === '/slow') return; // never answers
    res.writeHead(429, { 'Content-Type': 'application/json', 'Retry-After': '7' });
    res.end(JSON.stringify({ auth: req.headers.authorization }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  const request = createFetchRequester(fetch);
  const res = await request({ url: base + '/x', token: 'tok', timeout: 2000 }).promise;
  assert.equal(res.status, 429);
  assert.deepEqual(res.body, { auth: 'Bearer tok' });
  assert.equal(res.header('retry-after'), '7');
  await assert.rejects(request({ url: base + '/slow', timeout: 100 }).promise, (e) => e.timeout === true);
  const r = request({ url: base + '/slow', timeout: 5000 });
  r.abort();
  await assert.rejects(r.promise, (e) => e.aborted === true);
  server.closeAllConnections();
  server.close();
});

/** A scripted wx: SocketTasks that the test opens and closes by hand. */
function scriptedWx() {
  const tasks = [];
  const requests = [];
  const listeners = {};
  const wx = {
    tasks,
    requests,
    listeners,
    connectSocket(option) {
      const t = { option, handlers: {}, closeCalls: [], sent: [], state: 'connecting' };
      // events fire on a later tick, as in WeChat: anything registered late is missed
      queueMicrotask(() => { t.registeredInTime = Object.keys(t.handlers).sort(); });
      tasks.push(t);
      return {
        onOpen: (h) => { t.handlers.open = h; },
        onClose: (h) => { t.handlers.close = h; },
        onError: (h) => { t.handlers.error = h; },
        onMessage: (h) => { t.handlers.message = h; },
        send: (o) => { t.sent.push(o.data); },
        close: (o) => {
          t.closeCalls.push({ code: o.code, reason: o.reason });
          if (t.state === 'connecting') { if (o.fail) o.fail({ errMsg: 'closeSocket:fail WebSocket is not connected' }); return; }
          t.state = 'closed';
          if (t.handlers.close) t.handlers.close({ code: o.code || 1000, reason: o.reason || '' });
        }
      };
    },
    request(option) {
      const r = { option, aborted: false };
      requests.push(r);
      return { abort: () => { r.aborted = true; } };
    }
  };
  for (const name of ['AppHide', 'AppShow', 'NetworkStatusChange']) {
    listeners[name] = new Set();
    wx['on' + name] = (h) => listeners[name].add(h);
    wx['off' + name] = (h) => listeners[name].delete(h);
  }
  return wx;
}

const req = (over = {}) => ({ url: 'wss://relay/ws/executions/e1', token: 'jwt', timeout: 10000, onOpen: noop, onMessage: noop, onClose: noop, onError: noop, ...over });

test('wx adapter: token in the Authorization header, never in the URL; every handler registered synchronously', async () => {
  const wx = scriptedWx();
  createWxSocketOpener(wx)(req());
  await Promise.resolve();
  const t = wx.tasks[0];
  assert.equal(t.option.url, 'wss://relay/ws/executions/e1');
  assert.deepEqual(t.option.header, { Authorization: 'Bearer jwt' });
  assert.equal(t.option.perMessageDeflate, true, 'offers compression');
  assert.equal(t.option.timeout, 10000);
  assert.deepEqual(t.registeredInTime, ['close', 'error', 'message', 'open']);
});

test('wx adapter: the previous task is always closed, even one still connecting', () => {
  const wx = scriptedWx();
  const open = createWxSocketOpener(wx);
  let closes = 0;
  open(req({ onClose: () => closes++ }));
  open(req());
  assert.equal(wx.tasks[0].closeCalls.length, 1, 'closed when the next one opens');
  // it was still connecting: WeChat refused the close, so it is closed again once open
  wx.tasks[0].state = 'open';
  wx.tasks[0].handlers.open();
  assert.equal(wx.tasks[0].closeCalls.length, 2);
  assert.equal(closes, 0, 'a replaced task reports nothing');
});

test('wx adapter: frames, ArrayBuffer frames, send after open, close code', () => {
  const wx = scriptedWx();
  const got = [];
  let closed = null;
  let opened = false;
  const h = createWxSocketOpener(wx)(req({ onOpen: () => { opened = true; }, onMessage: (m) => got.push(m), onClose: (i) => { closed = i; } }));
  const t = wx.tasks[0];
  assert.equal(h.send('early'), false, 'nothing is sent before open');
  t.state = 'open';
  t.handlers.open({});
  assert.ok(opened);
  assert.equal(h.send('{"type":"ping"}'), true);
  assert.deepEqual(t.sent, ['{"type":"ping"}']);
  t.handlers.message({ data: '{"a":1}' });
  t.handlers.message({ data: new TextEncoder().encode('{"t":"进度"}').buffer });
  assert.deepEqual(got, ['{"a":1}', '{"t":"进度"}']);
  t.handlers.close({ code: 4001, reason: 'token expired' });
  assert.deepEqual(closed, { code: 4001, reason: 'token expired' });
});

test('wx adapter: an error without a close event ends the task as 1006 after 1 s', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const wx = scriptedWx();
  let closed = null;
  createWxSocketOpener(wx)(req({ onClose: (i) => { closed = i; } }));
  const task = wx.tasks[0];
  task.state = 'open';
  task.handlers.error({ errMsg: 'network lost' });
  t.mock.timers.tick(999);
  assert.equal(closed, null);
  t.mock.timers.tick(1);
  assert.deepEqual(closed, { code: 1006, reason: 'network lost' });
  assert.equal(task.closeCalls.length, 1, 'the task is closed too');
  // an error followed by its close reports the close code once
  const wx2 = scriptedWx();
  const seen = [];
  createWxSocketOpener(wx2)(req({ onClose: (i) => seen.push(i) }));
  wx2.tasks[0].handlers.error({ errMsg: 'x' });
  wx2.tasks[0].handlers.close({ code: 4500, reason: 'token invalid' });
  t.mock.timers.tick(5000);
  assert.deepEqual(seen, [{ code: 4500, reason: 'token invalid' }]);
});

test('wx adapter: connectSocket failing reports 1006', () => {
  const wx = scriptedWx();
  let closed = null;
  createWxSocketOpener(wx)(req({ onClose: (i) => { closed = i; } }));
  wx.tasks[0].option.fail({ errMsg: 'connectSocket:fail url not in domain list' });
  assert.deepEqual(closed, { code: 1006, reason: 'connectSocket:fail url not in domain list' });
});

test('wx.request adapter: statusCode checked, headers case-insensitive, fail and abort', async () => {
  const wx = scriptedWx();
  const request = createWxRequester(wx);
  const a = request({ url: 'https://relay/v1/x', token: 'jwt', timeout: 5000 });
  const r0 = wx.requests[0];
  assert.equal(r0.option.header.Authorization, 'Bearer jwt');
  assert.equal(r0.option.method, 'GET');
  assert.equal(r0.option.timeout, 5000);
  r0.option.success({ statusCode: 429, data: { error: 'rate' }, header: { 'retry-after': '3' }, cookies: [], errMsg: 'request:ok' });
  const res = await a.promise;
  assert.equal(res.status, 429);
  assert.equal(res.header('Retry-After'), '3');
  const b = request({ url: 'https://relay/v1/x', token: 'jwt', timeout: 5000 });
  wx.requests[1].option.fail({ errMsg: 'request:fail timeout' });
  await assert.rejects(b.promise, (e) => e.timeout === true);
  const c = request({ url: 'https://relay/v1/x', token: 'jwt', timeout: 5000 });
  c.abort();
  assert.ok(wx.requests[2].aborted);
  await assert.rejects(c.promise, (e) => e.aborted === true);
});

test('wx lifecycle: hide, show and network events; off* on unsubscribe', () => {
  const wx = scriptedWx();
  const calls = [];
  const un = createWxLifecycle(wx)({ hide: () => calls.push('hide'), show: () => calls.push('show'), online: () => calls.push('online'), offline: () => calls.push('offline') });
  for (const h of wx.listeners.AppHide) h({});
  for (const h of wx.listeners.AppShow) h({});
  for (const h of wx.listeners.NetworkStatusChange) { h({ isConnected: false, networkType: 'none' }); h({ isConnected: true, networkType: '4g' }); }
  assert.deepEqual(calls, ['hide', 'show', 'offline', 'online']);
  un();
  assert.equal(wx.listeners.AppHide.size + wx.listeners.AppShow.size + wx.listeners.NetworkStatusChange.size, 0);
});

test('the CommonJS build loads with require() and has the same API', async () => {
  const { createRequire } = await import('node:module');
  const require = createRequire(import.meta.url);
  const cjs = require('../dist/progress-relay.js');
  const esm = await import('../dist/progress-relay.mjs');
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  assert.equal(typeof cjs.createClient, 'function');
  assert.equal(cjs.DEFAULT_OPTIONS.MAX_RECONNECT_ATTEMPTS, 5);
  const client = cjs.createClient({ baseUrl: 'http://x', getToken: async () => 't', transport: { openSocket: () => ({ send: () => true, close: noop }), request: () => ({ promise: new Promise(noop), abort: noop }) } });
  assert.equal(client.getState(), 'idle');
});

test('the CommonJS build runs in a mini-program-like sandbox (only wx, timers and console; no window, fetch, WebSocket)', async () => {
  const { readFileSync } = await import('node:fs');
  const vm = await import('node:vm');
  const wx = scriptedWx();
  const module = { exports: {} };
  const sandbox = { wx, setTimeout, clearTimeout, console, module, exports: module.exports };
  vm.createContext(sandbox);
  vm.runInContext(readFileSync(new URL('../dist/progress-relay.js', import.meta.url), 'utf8'), sandbox, { filename: 'progress-relay.js' });
  const { createClient } = module.exports;
  const seen = [];
  const client = createClient({ baseUrl: 'https://relay.example.com', getToken: () => Promise.resolve('jwt'), logger: null });
  client.connect('exec-9', { onProgress: (d, e) => seen.push([e.seq, d.status_text]) });
  await new Promise((r) => setImmediate(r));
  assert.equal(wx.tasks.length, 1, 'picked wx.connectSocket from the global wx');
  const t = wx.tasks[0];
  assert.equal(t.option.url, 'wss://relay.example.com/ws/executions/exec-9');
  t.state = 'open';
  t.handlers.open({});
  t.handlers.message({ data: JSON.stringify({ type: 'connected', execution_id: 'exec-9', latest_seq: 0, resumed: false, heartbeat_interval: 30 }) });
  t.handlers.message({ data: JSON.stringify({ type: 'diagnosis_update', execution_id: 'exec-9', seq: 1, event: 'progress', data: { progress: 5, stage: 'queued', status_text: '诊断任务已排队' } }) });
  t.handlers.message({ data: JSON.stringify({ type: 'diagnosis_update', execution_id: 'exec-9', seq: 1, event: 'progress', data: { progress: 5, stage: 'queued' } }) });
  assert.deepEqual(seen, [[1, '诊断任务已排队']]);
  assert.equal(wx.listeners.AppHide.size, 1, 'listens to onAppHide');
  client.disconnect();
  assert.equal(wx.listeners.AppHide.size, 0);
  assert.equal(t.closeCalls.length, 1);
});

/** Runs the CommonJS build in a fresh realm, wrapped like a mini-program module with `names` shadowed. */
async function loadInSandbox(globals, wrapperArgs) {
  const { readFileSync } = await import('node:fs');
  const vm = await import('node:vm');
  const module = { exports: {} };
  const sandbox = { setTimeout, clearTimeout, module, ...globals };
  vm.createContext(sandbox);
  const names = Object.keys(wrapperArgs);
  const code = readFileSync(new URL('../dist/progress-relay.js', import.meta.url), 'utf8');
  const wrapped = `(function (${names.join(', ')}) {\n${code}\n})`;
  vm.runInContext(wrapped, sandbox, { filename: 'progress-relay.js' })(...names.map((n) => wrapperArgs[n]));
  return { api: module.exports, sandbox };
}

test('no globalThis (older iOS JavaScriptCore) and wx only as a free variable: the client still picks wx', async () => {
  const wx = scriptedWx();
  const { api } = await loadInSandbox({}, { globalThis: undefined, window: undefined, self: undefined, wx });
  const client = api.createClient({ baseUrl: 'https://relay.example.com', getToken: () => Promise.resolve('jwt'), logger: null });
  client.connect('exec-1', {});
  await new Promise((r) => setImmediate(r));
  assert.equal(wx.tasks.length, 1, 'opened its socket through the free wx');
  assert.equal(wx.tasks[0].option.header.Authorization, 'Bearer jwt');
  assert.equal(wx.listeners.AppHide.size, 1);
  client.disconnect();
});

test('no globalThis and no wx at all: onError says no transport can work (no silent polling for ever)', async () => {
  const { api } = await loadInSandbox({}, { globalThis: undefined, window: undefined, self: undefined });
  const errors = [];
  const client = api.createClient({ baseUrl: 'https://relay.example.com', getToken: () => 'jwt', logger: null });
  client.connect('exec-1', { onError: (d) => errors.push(d) });
  assert.equal(client.getState(), 'failed');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].error_type, 'NO_TRANSPORT');
  assert.match(errors[0].error, /wx\.connectSocket/);
  assert.equal(client.pendingTimers().length, 0, 'nothing left running');
});

test('wx adapter: perMessageDeflate can be switched off', () => {
  const wx = scriptedWx();
  createWxSocketOpener(wx, { perMessageDeflate: false })(req());
  assert.equal(wx.tasks[0].option.perMessageDeflate, false);
  createWxSocketOpener(wx, {})(req());
  assert.equal(wx.tasks[1].option.perMessageDeflate, true, 'default on');
});

test('client option perMessageDeflate: false reaches wx.connectSocket', async () => {
  const wx = scriptedWx();
  const { createClient } = await import('../src/index.mjs');
  const client = createClient({ baseUrl: 'https://r.test', wx, perMessageDeflate: false, getToken: () => 't', logger: null });
  client.connect('e', {});
  await new Promise((r) => setImmediate(r));
  assert.equal(wx.tasks[0].option.perMessageDeflate, false);
  client.disconnect();
});

test('ArrayBuffer frames from another realm are decoded, not dropped', async () => {
  const vm = await import('node:vm');
  const { frameToText, isArrayBuffer } = await import('../src/util.mjs');
  const foreign = vm.runInNewContext('const b = new ArrayBuffer(3); new Uint8Array(b).set([123, 125, 10]); b');
  assert.equal(foreign instanceof ArrayBuffer, false, 'really another realm');
  assert.equal(isArrayBuffer(foreign), true);
  assert.equal(frameToText(foreign), '{}\n');
  const view = vm.runInNewContext('new Uint8Array([34, 120, 34])');
  assert.equal(frameToText(view), '"x"');
  assert.equal(isArrayBuffer({ byteLength: 3 }), false);
});
