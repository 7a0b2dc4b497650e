// Unit tests of the client's behaviour over fake transports and fake timers.
import { test, mock, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { setup, flush, ev } from './helpers.mjs';
import { END_REASON, disconnect } from './support/disconnects.mjs';

beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
afterEach(() => mock.timers.reset());

async function tick(ms) {
  await flush();
  mock.timers.tick(ms);
  await flush();
}

/** connect and bring the first socket to "connected" */
async function connected(opts) {
  const ctx = setup(opts);
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().connected();
  return ctx;
}

test('connect opens one socket with the token and no last_seq, then delivers events in order', async () => {
  const { client, transport, seen, log } = await connected();
  assert.equal(transport.sockets.length, 1);
  const s = transport.last();
  assert.equal(s.url, 'ws://relay.test/ws/executions/exec-1');
  assert.equal(s.token, 'tok-1');
  assert.equal(client.getState(), 'connected');
  assert.equal(log.find((l) => l[0] === 'connected')[1].mode, 'websocket');
  s.event(1); s.event(2); s.event(3, 'result', { platform: 'qwen' });
  assert.deepEqual(seen, [1, 2, 3]);
  client.disconnect();
});

test('duplicates and stale events are dropped; a reconnect resumes from the last seq', async () => {
  const { client, transport, seen } = await connected();
  const s = transport.last();
  s.event(1); s.event(2); s.event(2); s.event(1); s.event(3);
  assert.deepEqual(seen, [1, 2, 3]);
  s.serverClose(1012, 'restarting');
  await tick(3000);
  const s2 = transport.last();
  assert.notEqual(s2, s);
  assert.match(s2.url, /\?last_seq=3$/);
  s2.connected({ latest_seq: 5, resumed: true });
  s2.event(2); s2.event(3); s2.event(4); s2.event(5);
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  assert.equal(client.getLastSeq(), 5);
  client.disconnect();
});

test('backoff schedule: 3, 6, 12, 24, 48 s, then onFallback and polling', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  const expected = [3000, 6000, 12000, 24000, 48000];
  for (let i = 0; i < expected.length; i++) {
    const count = ctx.transport.sockets.length;
    ctx.transport.last().serverClose(1011, 'internal error'); // before "connected": a failed attempt
    await flush();
    const st = ctx.log.filter((l) => l[0] === 'state' && l[1] === 'reconnecting').pop();
    assert.equal(st[2].attempt, i + 1);
    assert.equal(st[2].delay, expected[i]);
    await tick(expected[i] - 1);
    assert.equal(ctx.transport.sockets.length, count, `no attempt before ${expected[i]} ms`);
    await tick(1);
    assert.equal(ctx.transport.sockets.length, count + 1, `attempt ${i + 1} at ${expected[i]} ms`);
  }
  assert.equal(ctx.log.filter((l) => l[0] === 'fallback').length, 0);
  ctx.transport.last().serverClose(1011);
  await flush();
  assert.equal(ctx.log.filter((l) => l[0] === 'fallback').length, 1);
  assert.equal(ctx.client.getMode(), 'polling');
  assert.equal(ctx.client.getState(), 'polling');
  const poll = ctx.transport.lastRequest();
  assert.equal(poll.url, 'http://relay.test/v1/executions/exec-1/events?after=0&wait=0', 'the first poll answers at once');
  assert.equal(ctx.transport.sockets.length, 6, 'initial attempt + 5 reconnects');
  ctx.client.disconnect();
  assert.deepEqual(ctx.client.pendingTimers(), []);
});

test('jittered delays stay within +/-20% for real random values', async () => {
  for (let i = 0; i < 50; i++) {
    const ctx = setup({ client: { random: Math.random } });
    ctx.client.connect('exec-1', ctx.handlers);
    await flush();
    ctx.transport.last().serverClose(1006);
    await flush();
    ctx.transport.lastRequest().fail(); // state check: network down
    await flush();
    const st = ctx.log.filter((l) => l[0] === 'state' && l[1] === 'reconnecting').pop();
    assert.ok(st[2].delay >= 2400 && st[2].delay <= 3600, String(st[2].delay));
    ctx.client.disconnect();
  }
});

test('a drop after a good connection starts a fresh series (attempt 1, 3 s)', async () => {
  const { client, transport, log } = await connected();
  transport.last().serverClose(1011);
  await tick(3000);
  transport.last().serverClose(1011);
  await tick(6000);
  transport.last().connected();
  transport.last().serverClose(1001, 'going away');
  await flush();
  const st = log.filter((l) => l[0] === 'state' && l[1] === 'reconnecting').pop();
  assert.equal(st[2].attempt, 1);
  assert.equal(st[2].delay, 3000);
  client.disconnect();
});

test('1000 after the terminal event: done, nothing left running', async () => {
  const { client, transport, log, seen } = await connected();
  const s = transport.last();
  s.event(1);
  s.event(2, 'complete', { report: { score: 90 } });
  s.serverClose(1000, END_REASON);
  await tick(120000);
  assert.deepEqual(seen, [1, 2]);
  assert.equal(client.getState(), 'done');
  assert.equal(transport.sockets.length, 1);
  assert.deepEqual(client.pendingTimers(), []);
  assert.equal(log.filter((l) => l[0] === 'complete').length, 1);
});

test('1000 right after connected with nothing newer (already finished, resumed at the end): done', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 9 });
  await flush();
  ctx.transport.last().connected({ latest_seq: 9, resumed: true });
  ctx.transport.last().serverClose(1000, END_REASON);
  await tick(60000);
  assert.equal(ctx.client.getState(), 'done');
  assert.equal(ctx.transport.sockets.length, 1);
  assert.deepEqual(ctx.client.pendingTimers(), []);
});

test('1000 with events still missing: reconnect and resume', async () => {
  const { client, transport } = await connected();
  transport.last().event(1);
  transport.last().serverClose(1000);
  await flush();
  assert.equal(client.getState(), 'reconnecting');
  client.disconnect();
});

test('a non-recoverable error event is terminal; a recoverable one is not', async () => {
  const { client, transport, log } = await connected();
  const s = transport.last();
  s.event(1, 'error', { error: 'qwen timeout', recoverable: true });
  assert.equal(client.getState(), 'connected');
  s.event(2, 'error', { error: 'AI 调用失败', error_type: 'AI_PLATFORM_ERROR' });
  assert.equal(client.getState(), 'done');
  assert.equal(log.filter((l) => l[0] === 'error').length, 2);
  assert.deepEqual(client.pendingTimers(), []);
});

test('4001: getToken is called again and the socket reopens at once with the new token', async () => {
  const { client, transport, getTokenCalls } = await connected();
  transport.last().event(1);
  transport.last().serverClose(4001, 'token expired');
  await flush();
  assert.equal(getTokenCalls.length, 2);
  assert.equal(getTokenCalls[1].reason, 'refresh');
  assert.equal(transport.sockets.length, 2);
  assert.equal(transport.last().token, 'tok-2');
  assert.match(transport.last().url, /last_seq=1/);
  client.disconnect();
});

test('4001, then a switch to polling while the token is refreshed: no socket reopens', async () => {
  let release;
  const ctx = setup({ client: { getToken: (c) => (c.reason === 'refresh' ? new Promise((r) => { release = r; }) : Promise.resolve('t1')) } });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().connected();
  ctx.transport.last().serverClose(4001);
  await flush();
  ctx.client.setMode('polling');
  release('t2');
  await flush();
  assert.equal(ctx.transport.sockets.length, 1);
  assert.equal(ctx.client.getMode(), 'polling');
  assert.equal(ctx.transport.pendingRequests().length, 1);
  ctx.client.disconnect();
});

test('4001 with a token that does not change counts as a failed attempt', async () => {
  const ctx = setup({ tokens: ['same'] });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().serverClose(4001);
  await flush();
  assert.equal(ctx.transport.sockets.length, 1);
  assert.equal(ctx.client.getState(), 'reconnecting');
  ctx.client.disconnect();
});

for (const code of [4000, 4008, 4400, 1001, 1011, 1012]) {
  test(`close ${code}: reconnect and resume`, async () => {
    const { client, transport } = await connected();
    transport.last().event(1);
    transport.last().serverClose(code);
    await flush();
    assert.equal(client.getState(), 'reconnecting');
    await tick(3000);
    assert.equal(transport.sockets.length, 2);
    assert.match(transport.last().url, /last_seq=1/);
    client.disconnect();
  });
}

test('close 4029: backs off at least RATE_LIMIT_INTERVAL', async () => {
  const { client, transport, log } = await connected();
  transport.last().serverClose(4029, 'rate limited');
  await flush();
  const st = log.filter((l) => l[0] === 'state' && l[1] === 'reconnecting').pop();
  assert.equal(st[2].delay, 30000);
  await tick(29999);
  assert.equal(transport.sockets.length, 1);
  await tick(1);
  assert.equal(transport.sockets.length, 2);
  client.disconnect();
});

for (const code of [4500, 4503, 4999]) {
  test(`close ${code}: stop, onError, never reconnect`, async () => {
    const ctx = setup();
    ctx.client.connect('exec-1', ctx.handlers);
    await flush();
    ctx.transport.last().serverClose(code, 'nope');
    await tick(600000);
    assert.equal(ctx.transport.sockets.length, 1);
    assert.equal(ctx.transport.requests.length, 0);
    assert.equal(ctx.client.getState(), 'failed');
    const err = ctx.log.find((l) => l[0] === 'error');
    assert.equal(err[1].fatal, true);
    assert.equal(err[1].code, code);
    assert.deepEqual(ctx.client.pendingTimers(), []);
  });
}

test('1006 before connected: the state endpoint refusing the token (401, same token) stops', async () => {
  const ctx = setup({ tokens: ['bad'] });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().serverClose(1006);
  await flush();
  const check = ctx.transport.lastRequest();
  assert.equal(check.url, 'http://relay.test/v1/executions/exec-1');
  assert.equal(check.token, 'bad');
  check.respond(401, { error: 'unauthorized' });
  await flush();
  assert.equal(ctx.client.getState(), 'failed');
  assert.equal(ctx.log.find((l) => l[0] === 'error')[1].fatal, true);
  await tick(600000);
  assert.equal(ctx.transport.sockets.length, 1);
});

test('1006 before connected: 403 from the state endpoint stops', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().serverClose(1006);
  await flush();
  ctx.transport.lastRequest().respond(403, {});
  await flush();
  assert.equal(ctx.client.getState(), 'failed');
});

for (const [what, answer] of [['network error', (r) => r.fail()], ['503', (r) => r.respond(503, {})], ['200', (r) => r.respond(200, { latest_seq: 0 })], ['404', (r) => r.respond(404, {})]]) {
  test(`1006 before connected: state endpoint ${what} means reconnect`, async () => {
    const ctx = setup();
    ctx.client.connect('exec-1', ctx.handlers);
    await flush();
    ctx.transport.last().serverClose(1006);
    await flush();
    answer(ctx.transport.lastRequest());
    await flush();
    assert.equal(ctx.client.getState(), 'reconnecting');
    await tick(3000);
    assert.equal(ctx.transport.sockets.length, 2);
    ctx.client.disconnect();
  });
}

test('1006 after connected: reconnect without asking the state endpoint', async () => {
  const { client, transport } = await connected();
  transport.last().serverClose(1006);
  await flush();
  assert.equal(transport.requests.length, 0);
  assert.equal(client.getState(), 'reconnecting');
  client.disconnect();
});

test('heartbeat: a ping every interval; silence for interval + 10 s reconnects', async () => {
  const { client, transport } = await connected({ client: { HEARTBEAT_INTERVAL: 30000 } });
  const s = transport.last();
  await tick(30000);
  assert.deepEqual(s.sent, ['{"type":"ping"}']);
  s.msg({ type: 'pong', timestamp: 'x' });
  await tick(30000);
  assert.equal(s.sent.length, 2);
  s.msg({ type: 'pong', timestamp: 'x' });
  assert.equal(s.closed, null);
  // now the server goes silent
  await tick(39999);
  assert.equal(s.closed, null);
  await tick(1);
  assert.equal(s.closed.by, 'client');
  assert.equal(client.getState(), 'reconnecting');
  await tick(3000);
  assert.equal(transport.sockets.length, 2);
  client.disconnect();
});

test("the server's shorter heartbeat_interval wins", async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().connected({ heartbeat_interval: 5 });
  await tick(5000);
  assert.equal(ctx.transport.last().sent.length, 1);
  ctx.client.disconnect();
});

test('connection timeout: no "connected" within CONNECTION_TIMEOUT is a failed attempt', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  await tick(9999);
  assert.equal(ctx.transport.last().closed, null);
  await tick(1);
  assert.equal(ctx.transport.last().closed.by, 'client');
  assert.equal(ctx.client.getState(), 'reconnecting');
  ctx.client.disconnect();
});

test('getToken failing is a failed attempt, not a crash', async () => {
  let n = 0;
  const ctx = setup({ client: { getToken: async () => { n++; if (n === 1) throw new Error('backend down'); return 'ok'; } } });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  assert.equal(ctx.transport.sockets.length, 0);
  assert.equal(ctx.client.getState(), 'reconnecting');
  await tick(3000);
  assert.equal(ctx.transport.sockets.length, 1);
  assert.equal(ctx.transport.last().token, 'ok');
  ctx.client.disconnect();
});

/** drives a client into the polling fallback */
async function fallenBack(opts) {
  const ctx = setup(opts);
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.last().connected();
  ctx.transport.last().event(1);
  ctx.transport.last().event(2);
  ctx.transport.last().serverClose(1011);
  await flush();
  for (const d of [3000, 6000, 12000, 24000, 48000]) {
    await tick(d);
    ctx.transport.last().serverClose(1011);
    await flush();
  }
  assert.equal(ctx.client.getMode(), 'polling');
  return ctx;
}

test('fallback: polling resumes after the last seq, de-duplicates, and the socket is retried in the background', async () => {
  const ctx = await fallenBack();
  const { transport, seen, client, log } = ctx;
  assert.equal(log.filter((l) => l[0] === 'fallback').length, 1);
  let poll = transport.lastRequest();
  assert.match(poll.url, /events\?after=2&wait=0$/);
  poll.respond(200, { execution_id: 'exec-1', events: [ev(2), ev(3), ev(4)], latest_seq: 4, terminal: false });
  await tick(0);
  assert.deepEqual(seen, [1, 2, 3, 4]);
  poll = transport.lastRequest();
  assert.match(poll.url, /after=4&wait=25$/, 'then long polls');
  const socketsBefore = transport.sockets.length;
  // background retry after BACKGROUND_RETRY_INTERVAL (jitter 0 with random 0.5)
  await tick(59999);
  assert.equal(transport.sockets.length, socketsBefore);
  await tick(1);
  assert.equal(transport.sockets.length, socketsBefore + 1);
  assert.equal(client.getState(), 'polling', 'still polling while the socket is tried');
  const probe = transport.last();
  assert.match(probe.url, /last_seq=4/);
  probe.connected({ latest_seq: 5, resumed: true });
  assert.equal(client.getMode(), 'websocket');
  assert.equal(client.getState(), 'connected');
  assert.ok(poll.aborted, 'the long poll is aborted once the socket is back');
  probe.event(4); probe.event(5);
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  client.disconnect();
  assert.deepEqual(client.pendingTimers(), []);
});

test('fallback: a failed background attempt is retried later and polling goes on', async () => {
  const { transport, client } = await fallenBack();
  const n = transport.sockets.length;
  await tick(60000);
  assert.equal(transport.sockets.length, n + 1);
  transport.last().serverClose(1006);
  await flush();
  assert.equal(client.getState(), 'polling');
  assert.equal(transport.requests.filter((r) => r.url.endsWith('/exec-1')).length, 0, 'no state check for probes');
  await tick(60000);
  assert.equal(transport.sockets.length, n + 2);
  client.disconnect();
});

test('polling: terminal response ends the session', async () => {
  const { transport, client, seen } = await fallenBack();
  transport.lastRequest().respond(200, { events: [ev(3), ev(4, 'complete', { report: {} })], latest_seq: 4, terminal: true });
  await flush();
  assert.deepEqual(seen, [1, 2, 3, 4]);
  assert.equal(client.getState(), 'done');
  assert.deepEqual(client.pendingTimers(), []);
});

test('polling: 429 honours Retry-After, 5xx backs off', async () => {
  const { transport, client } = await fallenBack();
  let n = transport.requests.length;
  transport.lastRequest().respond(429, { error: 'slow down' }, { 'Retry-After': '7' });
  await tick(6999);
  assert.equal(transport.requests.length, n);
  await tick(1);
  assert.equal(transport.requests.length, n + 1);
  n++;
  transport.lastRequest().respond(503, {});
  await tick(2999);
  assert.equal(transport.requests.length, n);
  await tick(1);
  assert.equal(transport.requests.length, n + 1);
  transport.lastRequest().fail();
  await tick(5999);
  assert.equal(transport.requests.length, n + 1);
  await tick(1);
  assert.equal(transport.requests.length, n + 2);
  client.disconnect();
});

test('polling: an empty answer that came back at once waits POLL_MIN_INTERVAL', async () => {
  const { transport, client } = await fallenBack();
  const n = transport.requests.length;
  transport.lastRequest().respond(200, { events: [], latest_seq: 2, terminal: false });
  await tick(999);
  assert.equal(transport.requests.length, n);
  await tick(1);
  assert.equal(transport.requests.length, n + 1);
  client.disconnect();
});

test('polling: latest_seq ahead but no events (history gone) does not spin', async () => {
  const { transport, client } = await fallenBack();
  const n = transport.requests.length;
  transport.lastRequest().respond(200, { events: [], latest_seq: 50, terminal: false });
  await tick(999);
  assert.equal(transport.requests.length, n);
  await tick(1);
  assert.equal(transport.requests.length, n + 1);
  client.disconnect();
});

test('polling: 401 refreshes the token and retries; a token that stays refused stops', async () => {
  const ctx = setup({ client: { ENABLE_WEBSOCKET: false } });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  assert.equal(ctx.transport.sockets.length, 0);
  ctx.transport.lastRequest().respond(401, {});
  await tick(0);
  assert.equal(ctx.getTokenCalls.length, 2);
  assert.equal(ctx.transport.lastRequest().token, 'tok-2');
  ctx.client.disconnect();

  const bad = setup({ tokens: ['bad'], client: { ENABLE_WEBSOCKET: false } });
  bad.client.connect('exec-1', bad.handlers);
  await flush();
  bad.transport.lastRequest().respond(401, {});
  await flush();
  assert.equal(bad.client.getState(), 'failed');
  assert.equal(bad.log.find((l) => l[0] === 'error')[1].fatal, true);
});

test('ENABLE_WEBSOCKET false: polling only, never a socket', async () => {
  const ctx = setup({ client: { ENABLE_WEBSOCKET: false } });
  ctx.client.connect('exec-1', ctx.handlers);
  await flush();
  ctx.transport.lastRequest().respond(200, { events: [ev(1)], latest_seq: 1, terminal: false });
  await tick(600000);
  assert.equal(ctx.transport.sockets.length, 0);
  assert.equal(ctx.log.find((l) => l[0] === 'connected')[1].mode, 'polling');
  ctx.client.disconnect();
});

test('setMode: websocket -> polling -> websocket, idempotent, no loss or duplicate', async () => {
  const { client, transport, seen } = await connected();
  transport.last().event(1);
  transport.last().event(2);
  client.setMode('polling');
  assert.equal(transport.last().closed.by, 'client');
  await flush();
  const n = transport.requests.length;
  assert.match(transport.lastRequest().url, /after=2/);
  client.setMode('polling');
  await flush();
  assert.equal(transport.requests.length, n, 'idempotent');
  transport.lastRequest().respond(200, { events: [ev(2), ev(3)], latest_seq: 3, terminal: false });
  await flush();
  assert.deepEqual(seen, [1, 2, 3]);
  // manual polling never retries the socket on its own
  await tick(600000);
  assert.equal(transport.sockets.length, 1);
  const pending = transport.lastRequest();
  client.setMode('websocket');
  await flush();
  assert.ok(pending.aborted);
  assert.equal(transport.sockets.length, 2);
  assert.match(transport.last().url, /last_seq=3/);
  client.setMode('websocket');
  await flush();
  assert.equal(transport.sockets.length, 2, 'idempotent');
  transport.last().connected({ latest_seq: 4 });
  transport.last().event(3); transport.last().event(4);
  assert.deepEqual(seen, [1, 2, 3, 4]);
  client.disconnect();
});

test('at most one socket: reconnects always close the previous one', async () => {
  const { client, transport } = await connected();
  for (let i = 0; i < 5; i++) {
    transport.last().serverClose(1012);
    await tick(3000);
    transport.last().connected();
    assert.ok(transport.openSockets().length <= 1);
  }
  client.setMode('polling');
  client.setMode('websocket');
  await flush();
  client.setMode('polling');
  client.setMode('websocket');
  await flush();
  assert.equal(transport.openSockets().length, 1);
  client.disconnect();
  assert.equal(transport.openSockets().length, 0);
});

test('lifecycle: hide closes everything (HIDE_GRACE 0), show reconnects at once with the backoff reset', async () => {
  const { client, transport } = await connected({ client: { HIDE_GRACE: 0 } });
  transport.last().event(1);
  transport.last().serverClose(1011);
  await tick(3000);
  transport.last().serverClose(1011); // failures: 2
  await flush();
  transport.lc.hide();
  assert.equal(client.getState(), 'paused');
  assert.deepEqual(client.pendingTimers(), []);
  await tick(600000);
  const n = transport.sockets.length;
  assert.equal(transport.openSockets().length, 0);
  transport.lc.show();
  await flush();
  assert.equal(transport.sockets.length, n + 1, 'reconnects at once');
  assert.match(transport.last().url, /last_seq=1/);
  transport.last().serverClose(1011);
  await flush();
  const st = client.getState();
  assert.equal(st, 'reconnecting');
  client.disconnect();
});

test('lifecycle: a show without a hide before it does nothing', async () => {
  const { client, transport } = await connected();
  transport.lc.show();
  await flush();
  assert.equal(transport.sockets.length, 1);
  assert.equal(client.getState(), 'connected');
  client.disconnect();
});

test('lifecycle: offline pauses, online reconnects at once', async () => {
  const { client, transport, log } = await connected();
  transport.last().serverClose(1006);
  await flush();
  transport.lc.offline();
  assert.equal(client.getState(), 'paused');
  await tick(600000);
  assert.equal(transport.sockets.length, 1);
  transport.lc.online();
  await flush();
  assert.equal(transport.sockets.length, 2);
  transport.last().connected();
  transport.lc.online(); // network type change while healthy: keep the socket
  await flush();
  assert.equal(transport.sockets.length, 2);
  void log;
  client.disconnect();
});

test('lifecycle: after a fallback, show polls and retries the socket at once', async () => {
  const { client, transport } = await fallenBack({ client: { HIDE_GRACE: 0 } });
  transport.lc.hide();
  const n = transport.sockets.length;
  transport.lc.show();
  await tick(0);
  assert.equal(transport.sockets.length, n + 1);
  assert.equal(client.getState(), 'polling');
  client.disconnect();
});

test('disconnect clears every timer and aborts every request, whatever the state', async () => {
  const scenarios = {
    connecting: async (ctx) => { ctx.client.connect('exec-1', ctx.handlers); await flush(); },
    connected: async (ctx) => { ctx.client.connect('exec-1', ctx.handlers); await flush(); ctx.transport.last().connected(); },
    reconnecting: async (ctx) => { ctx.client.connect('exec-1', ctx.handlers); await flush(); ctx.transport.last().serverClose(1011); await flush(); },
    checking: async (ctx) => { ctx.client.connect('exec-1', ctx.handlers); await flush(); ctx.transport.last().serverClose(1006); await flush(); },
    polling: async (ctx) => { ctx.client.connect('exec-1', ctx.handlers); await flush(); ctx.client.setMode('polling'); await flush(); }
  };
  for (const [name, run] of Object.entries(scenarios)) {
    const ctx = setup();
    await run(ctx);
    assert.notDeepEqual(ctx.client.pendingTimers().length + ctx.transport.pendingRequests().length, 0, name);
    ctx.client.disconnect();
    assert.deepEqual(ctx.client.pendingTimers(), [], name);
    assert.deepEqual(ctx.transport.pendingRequests(), [], name);
    assert.equal(ctx.transport.openSockets().length, 0, name);
    assert.equal(ctx.transport.lc, null, `${name}: lifecycle listeners removed`);
    const sockets = ctx.transport.sockets.length;
    const requests = ctx.transport.requests.length;
    await tick(600000);
    assert.equal(ctx.transport.sockets.length, sockets, name);
    assert.equal(ctx.transport.requests.length, requests, name);
    assert.equal(ctx.client.getState(), 'closed', name);
  }
});

test('a callback that disconnects inside onProgress stops delivery at once', async () => {
  const ctx = setup({ handlers: {} });
  const got = [];
  ctx.client.connect('exec-1', { onProgress: (d, e) => { got.push(e.seq); if (e.seq === 2) ctx.client.disconnect(); } });
  await flush();
  ctx.transport.last().connected();
  ctx.transport.last().event(1);
  ctx.transport.last().event(2);
  ctx.transport.last().event(3);
  assert.deepEqual(got, [1, 2]);
});

test('a throwing callback does not break the client', async () => {
  const ctx = setup();
  const got = [];
  ctx.client.connect('exec-1', { onProgress: (d, e) => { got.push(e.seq); throw new Error('page bug'); } });
  await flush();
  ctx.transport.last().connected();
  ctx.transport.last().event(1);
  ctx.transport.last().event(2);
  assert.deepEqual(got, [1, 2]);
  ctx.client.disconnect();
});

test('server history lost (latest_seq below ours): follow the new sequence', async () => {
  const { client, transport, log, seen } = await connected();
  transport.last().event(1); transport.last().event(2); transport.last().event(3);
  transport.last().serverClose(1012);
  await tick(3000);
  // restarted server with a fresh in-memory history
  transport.last().connected({ latest_seq: 0, resumed: false });
  await flush();
  assert.equal(log.filter((l) => l[0] === 'reset').length, 1);
  assert.equal(transport.sockets.length, 3, 'reopened without the stale last_seq');
  assert.doesNotMatch(transport.last().url, /last_seq/);
  transport.last().connected({ latest_seq: 0 });
  transport.last().event(1, 'progress', { progress: 80, stage: 'x' });
  assert.deepEqual(seen, [1, 2, 3, 1]);
  assert.equal(client.getLastSeq(), 1);
  client.disconnect();
});

test('connect with a resume point starts after it', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 7 });
  await flush();
  assert.match(ctx.transport.last().url, /last_seq=7/);
  ctx.client.disconnect();
});

test('executionId is URL-encoded and baseUrl path prefixes are kept', async () => {
  const ctx = setup({ client: { baseUrl: 'https://x.test/relay/' } });
  ctx.client.connect('a b/c', ctx.handlers);
  await flush();
  assert.equal(ctx.transport.last().url, 'wss://x.test/relay/ws/executions/a%20b%2Fc');
  ctx.client.disconnect();
});

// ---- issue 16: the page must not say "done" while the execution runs

test('a 1000 "interrupted" close mid-run (WeChat, app in background) is not the end: state check, then reconnect and resume', async () => {
  const { client, transport, seen } = await connected();
  transport.last().event(1);
  transport.last().serverClose(1000, 'interrupted');
  await flush();
  assert.notEqual(client.getState(), 'done');
  const check = transport.lastRequest();
  assert.equal(check.url, 'http://relay.test/v1/executions/exec-1');
  check.respond(200, { execution_id: 'exec-1', latest_seq: 3, terminal: false });
  await flush();
  assert.equal(client.getState(), 'reconnecting');
  await tick(3000);
  assert.equal(transport.sockets.length, 2);
  assert.match(transport.last().url, /last_seq=1$/);
  transport.last().connected({ latest_seq: 3, resumed: true });
  transport.last().event(2); transport.last().event(3);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(client.getState(), 'connected');
  client.disconnect();
});

for (const reason of ['', 'interrupted']) {
  test(`1000 "${reason}" right after connected with nothing newer is not the end either (only the relay's reason is)`, async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 9 });
  await flush();
  ctx.transport.last().connected({ latest_seq: 9, resumed: true });
  ctx.transport.last().serverClose(1000, reason);
  await flush();
  ctx.transport.lastRequest().fail();
  await flush();
  assert.equal(ctx.client.getState(), 'reconnecting');
  await tick(3000);
  assert.equal(ctx.transport.sockets.length, 2, 'reconnected');
  assert.match(ctx.transport.last().url, /last_seq=9$/);
  ctx.client.disconnect();
  });
}

test('a 1000 without the relay\'s reason ends the session when the state endpoint says terminal', async () => {
  const { client, transport } = await connected();
  transport.last().event(1);
  transport.last().serverClose(1000, 'interrupted');
  await flush();
  transport.lastRequest().respond(200, { execution_id: 'exec-1', latest_seq: 1, terminal: true });
  await flush();
  assert.equal(client.getState(), 'done');
  assert.deepEqual(client.pendingTimers(), []);
});

test('the relay\'s end-of-stream reason is the one of its disconnect table', async () => {
  const { END_OF_STREAM_REASON } = await import('../src/index.mjs');
  assert.equal(END_OF_STREAM_REASON, END_REASON);
  assert.equal(disconnect(1000).reconnect, false);
});

// ---- app hide grace

test('hide then show within HIDE_GRACE keeps the socket; a longer hide pauses', async () => {
  const { client, transport } = await connected({ client: { HIDE_GRACE: 3000 } });
  transport.lc.hide();
  await tick(2999);
  assert.equal(client.getState(), 'connected');
  assert.equal(transport.last().closed, null);
  transport.lc.show();
  await tick(10000);
  assert.equal(client.getState(), 'connected');
  assert.equal(transport.sockets.length, 1);
  transport.lc.hide();
  await tick(3000);
  assert.equal(client.getState(), 'paused');
  assert.equal(transport.last().closed.by, 'client');
  assert.deepEqual(client.pendingTimers(), []);
  transport.lc.show();
  await flush();
  assert.equal(transport.sockets.length, 2);
  client.disconnect();
});

test('the default HIDE_GRACE is under the 5 s after which WeChat cuts connections', async () => {
  const { DEFAULT_OPTIONS } = await import('../src/index.mjs');
  assert.ok(DEFAULT_OPTIONS.HIDE_GRACE > 0 && DEFAULT_OPTIONS.HIDE_GRACE < 5000);
});

// ---- issue 13: stream epochs

test('the resume cursor carries the epoch: socket ?last_seq=N&epoch=E, polling ?after=N&epoch=E', async () => {
  const { client, transport } = await connected({ client: { HIDE_GRACE: 0 } });
  transport.last().serverClose(1012);
  await tick(3000);
  assert.doesNotMatch(transport.last().url, /epoch/, 'no epoch without a seq');
  transport.last().connected({ epoch: 'e1', latest_seq: 2 });
  transport.last().event(1); transport.last().event(2);
  assert.equal(client.getEpoch(), 'e1');
  transport.last().serverClose(1012);
  await tick(3000);
  assert.match(transport.last().url, /\?last_seq=2&epoch=e1$/);
  client.setMode('polling');
  await flush();
  assert.match(transport.lastRequest().url, /events\?after=2&epoch=e1&wait=0$/);
  client.disconnect();
});

test('connect with {lastSeq, epoch} resumes with both', async () => {
  const ctx = setup();
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 7, epoch: 'abc' });
  await flush();
  assert.match(ctx.transport.last().url, /last_seq=7&epoch=abc$/);
  ctx.client.disconnect();
});

test('reset on the socket: onReset with the new epoch before the new epoch\'s events, delivered from seq 1', async () => {
  const order = [];
  const ctx = setup({ handlers: {} });
  ctx.handlers.onReset = (info) => order.push(['reset', info]);
  ctx.handlers.onEvent = (e) => order.push(['event', e.seq]);
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 5, epoch: 'old' });
  await flush();
  const s = ctx.transport.last();
  s.connected({ epoch: 'new', reset: true, latest_seq: 2, resumed: false });
  s.event(1); s.event(2); s.event(2);
  assert.deepEqual(order, [
    ['reset', { previousEpoch: 'old', epoch: 'new', previousSeq: 5, latestSeq: 2 }],
    ['event', 1], ['event', 2]
  ]);
  assert.equal(ctx.client.getEpoch(), 'new');
  assert.equal(ctx.client.getLastSeq(), 2);
  assert.equal(ctx.log.find((l) => l[0] === 'connected')[1].reset, true);
  ctx.client.disconnect();
});

test('an epoch other than ours is a reset even without "reset": true', async () => {
  const { client, transport, log, seen } = await connected();
  transport.last().serverClose(1012);
  await tick(3000);
  transport.last().connected({ epoch: 'e1', latest_seq: 3 });
  transport.last().event(1); transport.last().event(2); transport.last().event(3);
  transport.last().serverClose(1012);
  await tick(3000);
  transport.last().connected({ epoch: 'e2', latest_seq: 1 });
  transport.last().event(1);
  assert.deepEqual(seen, [1, 2, 3, 1]);
  assert.equal(log.filter((l) => l[0] === 'reset').length, 1);
  client.disconnect();
});

test('4009 (stream reset) while live: reconnect with the old cursor, then reset into the new epoch', async () => {
  const { client, transport, log, seen } = await connected();
  transport.last().serverClose(1012);
  await tick(3000);
  transport.last().connected({ epoch: 'e1', latest_seq: 0 });
  transport.last().event(1); transport.last().event(2);
  transport.last().serverClose(4009, disconnect(4009).reason);
  await flush();
  assert.equal(client.getState(), 'reconnecting');
  await tick(3000);
  assert.match(transport.last().url, /last_seq=2&epoch=e1$/);
  transport.last().connected({ epoch: 'e2', reset: true, latest_seq: 1 });
  transport.last().event(1, 'progress', { progress: 5, stage: 'queued' });
  assert.deepEqual(seen, [1, 2, 1]);
  assert.equal(log.filter((l) => l[0] === 'reset').pop()[1].epoch, 'e2');
  client.disconnect();
});

test('reset on polling: "reset": true answer calls onReset, then delivers its events', async () => {
  const ctx = setup({ client: { ENABLE_WEBSOCKET: false } });
  ctx.client.connect('exec-1', ctx.handlers, { lastSeq: 4, epoch: 'old' });
  await flush();
  const poll = ctx.transport.lastRequest();
  assert.match(poll.url, /after=4&epoch=old&wait=0$/);
  poll.respond(200, { execution_id: 'exec-1', events: [ev(1), ev(2)], latest_seq: 2, epoch: 'new', reset: true, terminal: false });
  await flush();
  const resets = ctx.log.filter((l) => l[0] === 'reset');
  assert.equal(resets.length, 1);
  assert.equal(resets[0][1].epoch, 'new');
  assert.deepEqual(ctx.seen, [1, 2]);
  const i = ctx.log.findIndex((l) => l[0] === 'reset');
  const j = ctx.log.findIndex((l) => l[0] === 'progress');
  assert.ok(i < j, 'onReset before the first event of the new epoch');
  await tick(0);
  assert.match(ctx.transport.lastRequest().url, /after=2&epoch=new&wait=25$/);
  ctx.client.disconnect();
});

test('a terminal state from another epoch does not end the session', async () => {
  const { client, transport } = await connected();
  transport.last().serverClose(1012);
  await tick(3000);
  transport.last().connected({ epoch: 'e1', latest_seq: 0 });
  transport.last().event(1);
  transport.last().serverClose(1000, 'interrupted');
  await flush();
  transport.lastRequest().respond(200, { latest_seq: 1, epoch: 'e2', terminal: true });
  await flush();
  assert.equal(client.getState(), 'reconnecting');
  client.disconnect();
});

// ---- no transport

test('no transport at all (no wx, WebSocket or fetch): onError with a clear message, state failed', async () => {
  const errors = [];
  const { createClient } = await import('../src/index.mjs');
  const client = createClient({ baseUrl: 'https://relay.test', getToken: () => 't', logger: null, transport: { openSocket: null, request: null }, platform: 'browser' });
  client.connect('exec-1', { onError: (d) => errors.push(d) });
  assert.equal(client.getState(), 'failed');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].error_type, 'NO_TRANSPORT');
  assert.equal(errors[0].fatal, true);
  assert.match(errors[0].error, /no transport/);
  assert.deepEqual(client.pendingTimers(), []);
});

test('a socket but no HTTP: when the socket keeps failing, onError instead of polling for ever', async () => {
  const ctx = setup();
  ctx.transport.request = null;
  const { createClient } = await import('../src/index.mjs');
  const client = createClient({ baseUrl: 'http://relay.test', transport: ctx.transport, logger: null, random: () => 0.5, getToken: async () => 't' });
  const errors = [];
  client.connect('exec-1', { onError: (d) => errors.push(d) });
  await flush();
  for (const d of [3000, 6000, 12000, 24000, 48000]) {
    ctx.transport.last().serverClose(1011);
    await tick(d);
  }
  ctx.transport.last().serverClose(1011);
  await flush();
  assert.equal(client.getState(), 'failed');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].error_type, 'NO_TRANSPORT');
  assert.deepEqual(client.pendingTimers(), []);
});
