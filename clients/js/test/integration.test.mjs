// Integration tests against the real Python service, started here as a child
// process on a free port (python -m service; RELAY_TEST_PYTHON overrides the
// interpreter, default ../../.venv/bin/python).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createClient } from '../src/index.mjs';
import {
  serviceAvailable, startRelay, publish, mintToken, signToken, startProxy,
  countingWebSocket, fakeWx, waitFor, sleep, freePort
} from './support/relay.mjs';

// The relay is part of this repository: without it these tests fail, they never skip.
if (!serviceAvailable()) throw new Error('the relay (service/web/app.py, service/__main__.py) is needed for the integration tests');

const shared = await startRelay();
after(() => shared.stop());

// Every top-level await comes before the first test() call: the runner may
// start (and finish) the tests registered so far while the module waits.
async function redisUp() {
  return new Promise((r) => {
    const s = net.connect(6379, '127.0.0.1');
    s.once('connect', () => { s.destroy(); r(true); });
    s.once('error', () => r(false));
  });
}
// In CI a missing Redis fails these tests (scripts/ensure-redis.sh starts one); elsewhere they skip, saying why.
const REDIS_UP = await redisUp();
if (!REDIS_UP && process.env.CI) throw new Error('no Redis on 127.0.0.1:6379 (CI starts one with scripts/ensure-redis.sh)');
const REDIS_SKIP = REDIS_UP ? false : 'no Redis on 127.0.0.1:6379';

let counter = 0;
const newExecution = (name) => `it-${name}-${process.pid}-${++counter}`;

/** A client against `relay` with fast timings and a recorder of every callback. */
function makeClient(relay, executionId, extra = {}) {
  const WS = countingWebSocket();
  const getTokenCalls = [];
  const rec = { events: [], states: [], connected: [], fallbacks: [], errors: [], resets: [], complete: null };
  const client = createClient({
    baseUrl: relay.base,
    WebSocket: WS,
    logger: null,
    RECONNECT_INTERVAL: 150,
    CONNECTION_TIMEOUT: 3000,
    BACKGROUND_RETRY_INTERVAL: 1000,
    POLL_WAIT: 2,
    POLL_MIN_INTERVAL: 100,
    getToken: async (ctx) => {
      getTokenCalls.push(ctx);
      return mintToken(relay.base, executionId);
    },
    ...extra
  });
  const handlers = {
    onConnected: (info) => rec.connected.push(info),
    onEvent: (e) => rec.events.push(e),
    onComplete: (data) => { rec.complete = data; },
    onError: (data, e) => { if (!e) rec.errors.push(data); },
    onFallback: (info) => rec.fallbacks.push(info),
    onStateChange: (state, info) => rec.states.push([state, info.mode]),
    onReset: (info) => rec.resets.push(info)
  };
  return { client, WS, getTokenCalls, rec, handlers, seqs: () => rec.events.map((e) => e.seq) };
}

const progress = (n, text) => ({ progress: n, stage: 'stage_' + n, status: 'processing', status_text: text || `进度 ${n}%` });

function assertExactlyOnce(seqs, expected) {
  assert.deepEqual(seqs, expected, `events seen: ${JSON.stringify(seqs)}`);
}

test('full flow: replay, live events, Chinese texts, complete, nothing left running', async () => {
  const id = newExecution('full');
  await publish(shared.base, id, 'progress', progress(5, '正在初始化诊断任务...'));
  await publish(shared.base, id, 'progress', progress(10));
  const c = makeClient(shared, id);
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  assert.equal(c.rec.connected[0].mode, 'websocket');
  await waitFor(() => c.rec.events.length === 2, { what: 'replay' });
  await publish(shared.base, id, 'progress', progress(50, '正在获取 AI 数据...'));
  await publish(shared.base, id, 'result', { platform: 'qwen', brand_rank: 2, summary: '通义千问：品牌提及 3 次' });
  await publish(shared.base, id, 'progress', progress(90));
  await publish(shared.base, id, 'complete', { report: { score: 87, title: '品牌诊断报告' } });
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(c.rec.events.map((e) => e.event), ['progress', 'progress', 'progress', 'result', 'progress', 'complete']);
  assert.equal(c.rec.events[0].data.status_text, '正在初始化诊断任务...');
  assert.equal(c.rec.events[3].data.summary, '通义千问：品牌提及 3 次');
  assert.deepEqual(c.rec.complete.report, { score: 87, title: '品牌诊断报告' });
  assert.equal(c.WS.urls.length, 1);
  assert.match(c.WS.urls[0], /\/ws\/executions\/it-full-[\w-]+\?token=/);
  assert.doesNotMatch(c.WS.urls[0], /last_seq/);
  assert.deepEqual(c.client.pendingTimers(), []);
});

test('an execution that finished before connect: replay then done', async () => {
  const id = newExecution('finished');
  await publish(shared.base, id, 'progress', progress(50));
  await publish(shared.base, id, 'complete', { report: {} });
  const c = makeClient(shared, id);
  c.client.connect(id, c.handlers);
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), [1, 2]);
  await sleep(500);
  assert.equal(c.WS.urls.length, 1, 'no reconnect after 1000');
});

test('mini-program adapter (fake wx over a real socket): header token, hide/show, network loss, exactly once', async () => {
  const id = newExecution('wx');
  const wx = fakeWx();
  const c = makeClient(shared, id, { wx, WebSocket: undefined, HIDE_GRACE: 0 });
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  assert.equal(wx.tasks.length, 1);
  assert.doesNotMatch(wx.tasks[0].url, /token=/);
  assert.match(wx.tasks[0].header.Authorization, /^Bearer ey/);
  await publish(shared.base, id, 'progress', progress(10));
  await publish(shared.base, id, 'progress', progress(20));
  await waitFor(() => c.rec.events.length === 2, { what: 'two events' });

  wx.hide();
  assert.equal(c.client.getState(), 'paused');
  assert.deepEqual(c.client.pendingTimers(), []);
  await waitFor(() => wx.openTasks().length === 0, { what: 'socket closed on hide' });
  await publish(shared.base, id, 'progress', progress(30));
  await publish(shared.base, id, 'result', { platform: 'doubao' });
  await sleep(300);
  assert.equal(c.rec.events.length, 2, 'nothing while hidden');
  wx.show();
  await waitFor(() => c.rec.events.length === 4, { what: 'events missed while hidden' });
  assert.match(wx.tasks[wx.tasks.length - 1].url, /last_seq=2&epoch=[\w-]+$/);

  wx.network(false);
  assert.equal(c.client.getState(), 'paused');
  await publish(shared.base, id, 'progress', progress(60));
  wx.network(true);
  await waitFor(() => c.rec.events.length === 5, { what: 'event missed while offline' });
  await publish(shared.base, id, 'complete', { report: { score: 1 } });
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), [1, 2, 3, 4, 5, 6]);
  assert.ok(wx.openTasks().length === 0 || (await waitFor(() => wx.openTasks().length === 0, { what: 'all tasks closed' })));
  assert.equal(wx.listenerCount(), 0, 'lifecycle listeners removed when done');
  // at most one socket at any time
  assert.ok(wx.tasks.length >= 3);
});

test('server killed and restarted mid-execution (memory broker): the socket resumes with the old epoch, onReset, then the new epoch from seq 1', async () => {
  const relay = await startRelay();
  try {
    const id = newExecution('restart');
    const c = makeClient(relay, id, { RECONNECT_INTERVAL: 500 });
    c.client.connect(id, c.handlers);
    await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
    for (const p of [10, 20, 30]) await publish(relay.base, id, 'progress', progress(p));
    await waitFor(() => c.rec.events.length === 3, { what: 'three events' });
    await relay.stop('SIGKILL');
    await waitFor(() => c.client.getState() === 'reconnecting', { what: 'reconnecting' });
    const again = await startRelay({ port: relay.port });
    relay.stop = again.stop;
    // the memory broker lost the history: the restarted relay has a new
    // stream epoch; the client resumed with the old one and was told to reset
    const oldEpoch = c.client.getEpoch();
    assert.match(oldEpoch, /^[A-Za-z0-9_-]{1,32}$/);
    await waitFor(() => c.rec.connected.length >= 2 && c.client.getState() === 'connected', { timeout: 25000, what: 'reconnected' });
    await waitFor(() => c.rec.resets.length === 1, { what: 'reset noticed' });
    assert.equal(c.rec.resets[0].previousEpoch, oldEpoch);
    assert.equal(c.rec.resets[0].previousSeq, 3);
    assert.notEqual(c.rec.resets[0].epoch, oldEpoch);
    assert.ok(c.WS.urls.some((u) => u.includes(`last_seq=3&epoch=${oldEpoch}`)), 'resumed with both cursors');
    for (const p of [40, 50]) await publish(again.base, id, 'progress', progress(p));
    await publish(again.base, id, 'complete', { report: {} });
    await waitFor(() => c.client.getState() === 'done', { what: 'done' });
    const values = c.rec.events.map((e) => (e.event === 'complete' ? 'complete' : e.data.progress));
    assert.deepEqual(values, [10, 20, 30, 40, 50, 'complete']);
    assert.deepEqual(c.seqs(), [1, 2, 3, 1, 2, 3], 'the new epoch from its start');
    assert.equal(c.rec.fallbacks.length, 0);
  } finally {
    await relay.stop();
  }
});

test('memory relay restarted while polling: ?after=N&epoch=E answers "reset", onReset before the new epoch\'s events', async () => {
  const relay = await startRelay();
  let current = relay;
  try {
    const id = newExecution('reset-poll');
    const c = makeClient(relay, id, { ENABLE_WEBSOCKET: false });
    const order = [];
    c.handlers.onReset = (info) => { c.rec.resets.push(info); order.push('reset'); };
    const onEvent = c.handlers.onEvent;
    c.handlers.onEvent = (e) => { onEvent(e); order.push(e.seq); };
    for (const p of [10, 20]) await publish(relay.base, id, 'progress', progress(p));
    c.client.connect(id, c.handlers);
    await waitFor(() => c.rec.events.length === 2, { what: 'two events by polling' });
    const oldEpoch = c.client.getEpoch();
    await relay.stop('SIGKILL');
    current = await startRelay({ port: relay.port });
    for (const p of [30, 40, 50]) await publish(current.base, id, 'progress', progress(p));
    await waitFor(() => c.rec.events.length === 5, { timeout: 20000, what: 'the new epoch by polling' });
    assert.deepEqual(order, [1, 2, 'reset', 1, 2, 3]);
    assert.equal(c.rec.resets[0].previousEpoch, oldEpoch);
    assert.notEqual(c.client.getEpoch(), oldEpoch);
    assert.deepEqual(c.rec.events.map((e) => e.data.progress), [10, 20, 30, 40, 50]);
    c.client.disconnect();
  } finally {
    await current.stop();
  }
});

test('server killed and restarted mid-execution (Redis broker): exact resume, events published during the outage', { skip: REDIS_SKIP }, async () => {
  const env = { RELAY_BROKER_URL: 'redis://127.0.0.1:6379/15' };
  const relay = await startRelay({ env });
  let current = relay;
  try {
    const id = newExecution('restart-redis');
    const c = makeClient(relay, id, { RECONNECT_INTERVAL: 500 });
    c.client.connect(id, c.handlers);
    await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
    for (const p of [10, 20, 30]) await publish(relay.base, id, 'progress', progress(p));
    await waitFor(() => c.rec.events.length === 3, { what: 'three events' });
    await relay.stop('SIGKILL');
    current = await startRelay({ port: relay.port, env });
    // published before the client is back: it must get them by resuming
    for (const p of [40, 50]) await publish(current.base, id, 'progress', progress(p));
    await waitFor(() => c.rec.events.length === 5, { timeout: 25000, what: 'resumed events' });
    await publish(current.base, id, 'complete', { report: {} });
    await waitFor(() => c.client.getState() === 'done', { what: 'done' });
    assertExactlyOnce(c.seqs(), [1, 2, 3, 4, 5, 6]);
    assert.equal(c.rec.resets.length, 0);
  } finally {
    await current.stop();
  }
});

test('heartbeat: app-level pings are answered, the connection stays up', async () => {
  const id = newExecution('heartbeat');
  const c = makeClient(shared, id, { HEARTBEAT_INTERVAL: 300, HEARTBEAT_GRACE: 1200 });
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  await sleep(2000);
  assert.equal(c.WS.urls.length, 1, 'no reconnect while pongs arrive');
  assert.equal(c.client.getState(), 'connected');
  c.client.disconnect();
  assert.deepEqual(c.client.pendingTimers(), []);
});

test('a connection that goes silent (nothing passes any more) is replaced after heartbeat + grace', async () => {
  const id = newExecution('silent');
  const proxy = await startProxy(shared.port);
  try {
    const c = makeClient(shared, id, { wsUrl: `ws://127.0.0.1:${proxy.port}`, HEARTBEAT_INTERVAL: 500, HEARTBEAT_GRACE: 1000 });
    c.client.connect(id, c.handlers);
    await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
    await publish(shared.base, id, 'progress', progress(10));
    await waitFor(() => c.rec.events.length === 1, { what: 'first event' });
    proxy.stall();
    await publish(shared.base, id, 'progress', progress(20));
    await waitFor(() => c.rec.connected.length === 2, { timeout: 10000, what: 'a new connection' });
    assert.match(c.WS.urls[1], /last_seq=1/);
    await publish(shared.base, id, 'complete', { report: {} });
    await waitFor(() => c.client.getState() === 'done', { what: 'done' });
    assertExactlyOnce(c.seqs(), [1, 2, 3]);
  } finally {
    await proxy.close();
  }
});

test('token expiry: 4001, getToken called again, the stream continues', async () => {
  const id = newExecution('expiry');
  let first = true;
  const c = makeClient(shared, id, {
    getToken: async (ctx) => {
      c.getTokenCalls.push(ctx);
      if (first) {
        first = false;
        return signToken({ executionId: id, exp: Math.floor(Date.now() / 1000) + 2 });
      }
      return mintToken(shared.base, id);
    }
  });
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  await publish(shared.base, id, 'progress', progress(10));
  await waitFor(() => c.rec.events.length === 1, { what: 'first event' });
  await waitFor(() => c.getTokenCalls.length === 2, { timeout: 5000, what: 'getToken called again after 4001' });
  assert.equal(c.getTokenCalls[1].reason, 'refresh');
  await waitFor(() => c.rec.connected.length === 2, { what: 'reconnected' });
  assert.match(c.WS.urls[1], /last_seq=1/);
  await publish(shared.base, id, 'progress', progress(60));
  await publish(shared.base, id, 'complete', { report: {} });
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), [1, 2, 3]);
  assert.equal(c.rec.errors.length, 0);
  assert.equal(c.WS.urls.length, 2);
});

test('an already expired token: 4001 at connect, a fresh token, connected', async () => {
  const id = newExecution('expired');
  let n = 0;
  const c = makeClient(shared, id, {
    getToken: async () => (n++ === 0 ? signToken({ executionId: id, exp: Math.floor(Date.now() / 1000) - 60 }) : mintToken(shared.base, id))
  });
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  assert.equal(n, 2);
  c.client.disconnect();
});

for (const [name, token, code] of [
  ['bad signature', (id) => signToken({ executionId: id, exp: Math.floor(Date.now() / 1000) + 600, secret: 'another-secret-0123456789abcdef0123' }), 4500],
  ['wrong audience', (id) => signToken({ executionId: id, exp: Math.floor(Date.now() / 1000) + 600, aud: 'someone-else' }), 4500],
  ['garbage', () => 'not-a-jwt', 4500],
  ['token for another execution', () => signToken({ executionId: 'someone-elses-run', exp: Math.floor(Date.now() / 1000) + 600 }), 4503]
]) {
  test(`invalid token (${name}): ${code}, onError, no reconnect`, async () => {
    const id = newExecution('invalid');
    const c = makeClient(shared, id, { getToken: async () => token(id) });
    c.client.connect(id, c.handlers);
    await waitFor(() => c.client.getState() === 'failed', { what: 'failed' });
    assert.equal(c.rec.errors.length, 1);
    assert.equal(c.rec.errors[0].fatal, true);
    assert.equal(c.rec.errors[0].code, code);
    await sleep(1000);
    assert.equal(c.WS.urls.length, 1, 'never reconnects');
    assert.equal(c.rec.fallbacks.length, 0);
    assert.deepEqual(c.client.pendingTimers(), []);
  });
}

test('a WebSocket refused before any frame (1006): the state endpoint tells a refused token from the network', async () => {
  // A port where nothing listens: every socket ends 1006. With a good token
  // and a server that answers, the client keeps trying (then falls back).
  const deadPort = await freePort();
  const id = newExecution('dead');
  const c = makeClient(shared, id, { wsUrl: `ws://127.0.0.1:${deadPort}`, RECONNECT_INTERVAL: 50, BACKGROUND_RETRY_INTERVAL: 60000 });
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.fallbacks.length === 1, { timeout: 10000, what: 'fallback after 5 attempts' });
  assert.equal(c.WS.urls.length, 6, 'the first attempt and five reconnects');
  assert.equal(c.rec.errors.length, 0);
  c.client.disconnect();
  assert.deepEqual(c.client.pendingTimers(), []);
});

test('socket blocked: five attempts fail, fallback to polling, events keep arriving, back to the socket later, no duplicates', async () => {
  const id = newExecution('blocked');
  const proxy = await startProxy(shared.port);
  try {
    const c = makeClient(shared, id, { wsUrl: `ws://127.0.0.1:${proxy.port}`, RECONNECT_INTERVAL: 100, BACKGROUND_RETRY_INTERVAL: 1500 });
    c.client.connect(id, c.handlers);
    await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
    await publish(shared.base, id, 'progress', progress(10));
    await publish(shared.base, id, 'progress', progress(20));
    await waitFor(() => c.rec.events.length === 2, { what: 'two events over the socket' });
    proxy.block();
    await publish(shared.base, id, 'progress', progress(30));
    await waitFor(() => c.rec.fallbacks.length === 1, { timeout: 15000, what: 'fallback' });
    assert.equal(c.client.getMode(), 'polling');
    await publish(shared.base, id, 'result', { platform: 'kimi' });
    await publish(shared.base, id, 'progress', progress(60));
    await waitFor(() => c.rec.events.length === 5, { what: 'events by polling' });
    proxy.unblock();
    await waitFor(() => c.client.getMode() === 'websocket' && c.client.getState() === 'connected', { timeout: 10000, what: 'socket back' });
    await publish(shared.base, id, 'progress', progress(90));
    await publish(shared.base, id, 'complete', { report: {} });
    await waitFor(() => c.client.getState() === 'done', { what: 'done' });
    assertExactlyOnce(c.seqs(), [1, 2, 3, 4, 5, 6, 7]);
    assert.equal(c.rec.fallbacks.length, 1);
  } finally {
    await proxy.close();
  }
});

test('manual switching both ways: websocket -> polling -> websocket -> polling, exactly once', async () => {
  const id = newExecution('switch');
  const c = makeClient(shared, id);
  c.client.connect(id, c.handlers);
  await waitFor(() => c.rec.connected.length === 1, { what: 'connected' });
  let n = 0;
  const step = async (mode) => {
    c.client.setMode(mode);
    c.client.setMode(mode); // idempotent
    await publish(shared.base, id, 'progress', progress(++n * 10));
    await publish(shared.base, id, 'progress', progress(++n * 10));
    await waitFor(() => c.rec.events.length === n, { what: `${n} events in ${mode} mode` });
    assert.equal(c.client.getMode(), mode);
  };
  await step('polling');
  await step('websocket');
  await step('polling');
  await step('websocket');
  await publish(shared.base, id, 'complete', { report: {} });
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), Array.from({ length: n + 1 }, (_, i) => i + 1));
});

test('mini-program polling through wx.request (statusCode checked, long poll)', async () => {
  const id = newExecution('wxpoll');
  const wx = fakeWx();
  const c = makeClient(shared, id, { wx, WebSocket: undefined, ENABLE_WEBSOCKET: false });
  c.client.connect(id, c.handlers);
  await publish(shared.base, id, 'progress', progress(10, '正在分析...'));
  await publish(shared.base, id, 'complete', { report: {} });
  await waitFor(() => c.client.getState() === 'done', { what: 'done' });
  assertExactlyOnce(c.seqs(), [1, 2]);
  assert.equal(wx.tasks.length, 0);
  assert.match(wx.requests[0].url, /\/events\?after=0&wait=0$/);
  assert.match(wx.requests[0].header.Authorization, /^Bearer /);
});
