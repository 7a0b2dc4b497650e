// The example mini-program's report page (clients/miniprogram/pages/report),
// rendered headlessly by miniprogram-simulate with WeChat's WXML compiler,
// against a real relay through a fake `wx` over real sockets and fetch.
// What is asserted is what a person would see on the page.
import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startRelay, publish, waitFor, serviceAvailable } from './support/relay.mjs';
import { pageEnvironment, renderReportPage as render, textOf, startTokenBackend } from './support/miniprogram.mjs';

const { wx, app } = pageEnvironment();
let relay = null;
let backend = null;
let counter = 0;
const newExecution = (name) => `mp-${name}-${process.pid}-${++counter}`;

before(async () => {
  if (!serviceAvailable()) throw new Error('the relay (service/) is needed for the page tests');
  relay = await startRelay();
  backend = await startTokenBackend(relay.base);
  app.globalData.relay.relayBaseUrl = relay.base;
  app.globalData.relay.tokenUrl = backend.url;
  app.globalData.relay.client = { logger: null, RECONNECT_INTERVAL: 150, CONNECTION_TIMEOUT: 3000, POLL_WAIT: 2, POLL_MIN_INTERVAL: 100, BACKGROUND_RETRY_INTERVAL: 800, HIDE_GRACE: 0 };
});

// a test that fails half-way must not leave its page running into the next ones
const pages = [];
function renderReportPage() {
  const page = render();
  pages.push(page);
  return page;
}
afterEach(() => {
  for (const page of pages.splice(0)) if (page.instance.client) page.instance.onUnload();
});

after(async () => {
  if (backend) await backend.close();
  if (relay) await relay.stop();
});

const progress = (n, stage, text) => ({ progress: n, stage, status: 'processing', status_text: text });

/** A loaded report page for a new execution, connected over the socket. */
async function openPage(name, extra = {}) {
  const id = newExecution(name);
  const page = renderReportPage();
  const tasksBefore = wx.tasks.length;
  page.instance.onLoad({ executionId: id, ...extra });
  page.instance.onShow();
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'badge 已连接' });
  return { id, page, task: wx.tasks[tasksBefore] };
}

test('the page connects: badge 已连接, Bearer token in the handshake and none in the URL', async () => {
  const { page, task } = await openPage('connect');
  assert.equal(textOf(page, '#badge'), '已连接');
  assert.match(task.header.Authorization, /^Bearer ey/);
  assert.doesNotMatch(task.url, /token/);
  assert.equal(textOf(page, '#mode'), 'WebSocket 实时推送');
  page.instance.onUnload();
});

test('published progress, status_text and platform rows appear, each event once', async () => {
  const { id, page } = await openPage('live');
  await publish(relay.base, id, 'progress', progress(5, 'ai_fetching', '开始向 5 个 AI 平台提问'));
  await waitFor(() => textOf(page, '#status-text') === '开始向 5 个 AI 平台提问', { what: 'status_text' });
  assert.equal(page.data.progress, 5, 'the <progress> bar is bound to 5 (built-ins render empty)');
  assert.equal(textOf(page, '#stage'), '获取 AI 数据');
  await publish(relay.base, id, 'result', { platform: 'wenxin', platform_name: '文心一言', mentioned: true, rank: 2, sentiment: 'positive', score: 88, summary: '文心一言提到了示例品牌' });
  await publish(relay.base, id, 'result', { platform: 'kimi', platform_name: 'Kimi', mentioned: false, rank: null, sentiment: 'none', score: 30, summary: 'Kimi没有提到示例品牌' });
  await publish(relay.base, id, 'progress', progress(40, 'ai_fetching', '正在查询豆包（3/5）'));
  await waitFor(() => page.data.progress === 40, { what: 'progress 40' });
  const rows = page.querySelectorAll('.row');
  assert.equal(rows.length, 2, 'one row per platform');
  assert.match(rows[0].dom.textContent, /文心一言\s*得分 88 · 提及（第 2 位） · 情感 正面/);
  assert.match(rows[1].dom.textContent, /Kimi\s*得分 30 · 未提及/);
  // a dropped socket replays nothing twice
  const seq = page.instance.client.getLastSeq();
  page.instance.client.setMode('polling');
  page.instance.client.setMode('websocket');
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'back on the socket' });
  assert.match(wx.tasks[wx.tasks.length - 1].url, new RegExp(`last_seq=${seq}`));
  assert.equal(page.querySelectorAll('.row').length, 2);
  page.instance.onUnload();
});

test('a recoverable error shows a retrying row, not the error view; the result then completes the row', async () => {
  const { id, page } = await openPage('retry-row');
  await publish(relay.base, id, 'error', { error: '豆包响应超时，正在重试', error_type: 'platform_timeout', error_details: { platform: 'doubao', platform_name: '豆包' }, recoverable: true });
  await waitFor(() => page.querySelectorAll('.row-retrying').length === 1, { what: 'retrying row' });
  assert.match(page.querySelector('.row-retrying').dom.textContent, /豆包\s*重试中/);
  assert.ok(!page.querySelector('#error-view'), 'no error view');
  assert.equal(page.data.view, 'live');
  await publish(relay.base, id, 'result', { platform: 'doubao', platform_name: '豆包', mentioned: true, rank: 1, sentiment: 'neutral', score: 70 });
  await waitFor(() => page.querySelectorAll('.row-retrying').length === 0, { what: 'row done' });
  assert.equal(page.querySelectorAll('.row-done').length, 1);
  page.instance.onUnload();
});

test('toggle to polling (the socket closes, long polls carry the cursor) and back (last_seq)', async () => {
  const { id, page } = await openPage('toggle');
  await publish(relay.base, id, 'progress', progress(10, 'ai_fetching', '正在查询文心一言（1/5）'));
  await waitFor(() => page.data.progress === 10, { what: 'progress 10' });
  const requestsBefore = wx.requests.length;
  page.querySelector('#toggle').dispatchEvent('tap');
  await waitFor(() => page.data.badge.kind === 'polling', { what: 'badge 轮询中' });
  assert.equal(textOf(page, '#mode'), '轮询模式');
  assert.equal(textOf(page, '#toggle'), '切换到 WebSocket');
  await waitFor(() => wx.openTasks().length === 0, { what: 'the socket closed' });
  await publish(relay.base, id, 'progress', progress(20, 'ai_fetching', '正在查询通义千问（2/5）'));
  await waitFor(() => page.data.progress === 20, { what: 'progress 20 by polling' });
  const polls = () => wx.requests.slice(requestsBefore).filter((r) => r.url.includes('/events?'));
  await waitFor(() => polls().some((r) => /after=2&epoch=[\w-]+&wait=2/.test(r.url)), { what: 'a long poll after seq 2 of this epoch' });
  assert.match(polls()[0].url, /after=1&epoch=[\w-]+&wait=0/, 'the first poll catches up at once');
  assert.ok(polls().some((r) => /after=1&epoch=[\w-]+&wait=2/.test(r.url)), 'then long polls carrying the cursor');
  assert.ok(polls().every((r) => !r.url.includes('token=') && /^Bearer /.test(r.header.Authorization)));
  page.querySelector('#toggle').dispatchEvent('tap');
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'back on the socket' });
  assert.match(wx.tasks[wx.tasks.length - 1].url, /last_seq=2&epoch=[\w-]+$/);
  await publish(relay.base, id, 'progress', progress(30, 'ai_fetching', '正在查询 Kimi（3/5）'));
  await waitFor(() => page.data.progress === 30, { what: 'progress 30 on the socket' });
  page.instance.onUnload();
});

test('app hide then show: paused with no socket and no timer, then catches up', async () => {
  const { id, page } = await openPage('hide');
  wx.hide();
  await waitFor(() => page.data.badge.kind === 'paused', { what: 'badge 已暂停' });
  assert.equal(textOf(page, '#badge'), '已暂停');
  assert.deepEqual([...page.instance.client.pendingTimers()], []);
  await waitFor(() => wx.openTasks().length === 0, { what: 'socket closed' });
  await publish(relay.base, id, 'progress', progress(60, 'analyzing', '正在分析各平台回答'));
  wx.show();
  await waitFor(() => page.data.progress === 60, { what: 'caught up after show' });
  assert.equal(textOf(page, '#status-text'), '正在分析各平台回答');
  assert.equal(page.data.badge.kind, 'connected');
  page.instance.onUnload();
});

test('network lost and back: badge 网络已断开, then reconnected', async () => {
  const { page } = await openPage('offline');
  wx.network(false);
  await waitFor(() => page.data.badge.kind === 'offline', { what: 'badge offline' });
  assert.equal(textOf(page, '#badge'), '网络已断开');
  wx.network(true);
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'reconnected' });
  page.instance.onUnload();
});

test('a refused token shows the error view; retry recovers from the last seq', async () => {
  const id = newExecution('refused');
  await publish(relay.base, id, 'progress', progress(15, 'ai_fetching', '正在查询文心一言（1/5）'));
  backend.next.push('bad');
  const page = renderReportPage();
  page.instance.onLoad({ executionId: id });
  await waitFor(() => page.data.view === 'error', { what: 'error view' });
  assert.match(textOf(page, '#error-text'), /连接被拒绝：订阅凭证无效或已被吊销（4500）/);
  assert.equal(textOf(page, '#badge'), '连接失败');
  assert.equal(wx.openTasks().length, 0);
  page.querySelector('#retry').dispatchEvent('tap');
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'connected after retry' });
  assert.equal(page.data.view, 'live');
  await waitFor(() => page.data.progress === 15, { what: 'the history' });
  page.instance.onUnload();
});

test('an expired token (4001) is refreshed from the backend and the stream goes on', async () => {
  const id = newExecution('expiry');
  backend.next.push('expired');
  const callsBefore = backend.calls.length;
  const page = renderReportPage();
  page.instance.onLoad({ executionId: id });
  await waitFor(() => page.data.badge.kind === 'connected', { what: 'connected with a fresh token' });
  assert.deepEqual(backend.calls.slice(callsBefore).map((c) => c.kind), ['expired', 'good']);
  await publish(relay.base, id, 'progress', progress(25, 'ai_fetching', '正在查询通义千问（2/5）'));
  await waitFor(() => page.data.progress === 25, { what: 'progress after refresh' });
  page.instance.onUnload();
});

test('a blocked WebSocket goes reconnecting -> polling -> back to the socket', async () => {
  const { startProxy } = await import('./support/relay.mjs');
  const proxy = await startProxy(relay.port);
  const saved = app.globalData.relay.client;
  app.globalData.relay.client = { ...saved, wsUrl: `ws://127.0.0.1:${proxy.port}`, MAX_RECONNECT_ATTEMPTS: 2 };
  try {
    const { id, page } = await openPage('blocked');
    const kinds = [];
    const origSetData = page.instance.setData.bind(page.instance);
    page.instance.setData = (patch, cb) => { if (patch.badge) kinds.push(patch.badge.kind); return origSetData(patch, cb); };
    proxy.block();
    await waitFor(() => page.data.badge.kind === 'polling', { what: 'fallback to polling' });
    assert.ok(kinds.includes('reconnecting'), `badges: ${kinds}`);
    assert.match(textOf(page, '#mode'), /轮询模式/);
    await publish(relay.base, id, 'progress', progress(50, 'ai_fetching', '正在查询豆包（4/5）'));
    await waitFor(() => page.data.progress === 50, { what: 'events by polling' });
    proxy.unblock();
    await waitFor(() => page.data.badge.kind === 'connected', { timeout: 15000, what: 'back to the socket' });
    assert.equal(textOf(page, '#mode'), 'WebSocket 实时推送');
    await publish(relay.base, id, 'progress', progress(55, 'ai_fetching', '正在查询 DeepSeek（5/5）'));
    await waitFor(() => page.data.progress === 55, { what: 'events on the socket' });
    page.instance.onUnload();
  } finally {
    app.globalData.relay.client = saved;
    await proxy.close();
  }
});

test('complete shows the report, closes the socket and leaves no timer or listener', async () => {
  const { id, page } = await openPage('complete');
  const report = {
    brand: '示例品牌', overall_score: 78, grade: 'B', mention_rate: 0.6,
    platforms: [
      { platform: 'wenxin', platform_name: '文心一言', mentioned: true, rank: 2, sentiment: 'positive', score: 88 },
      { platform: 'kimi', platform_name: 'Kimi', mentioned: false, rank: null, sentiment: 'none', score: 30 }
    ],
    summary: '3/5 个 AI 平台提到了示例品牌，综合得分 78。',
    suggestions: ['在未提及品牌的平台补充权威、可引用的品牌资料', '针对负面评价整理事实依据并持续更新官方信息']
  };
  await publish(relay.base, id, 'complete', { report });
  await waitFor(() => page.data.view === 'report', { what: 'report view' });
  assert.equal(textOf(page, '#report-score'), '78');
  assert.equal(textOf(page, '#report-grade'), 'B');
  assert.equal(textOf(page, '#report-rate'), '60%');
  assert.equal(textOf(page, '#report-summary'), report.summary);
  assert.equal(page.querySelectorAll('#report .row').length, 2);
  assert.deepEqual(page.querySelectorAll('.suggestion').map((s) => s.dom.textContent.trim()), report.suggestions.map((s, i) => `${i + 1}. ${s}`));
  assert.equal(textOf(page, '#badge'), '已完成');
  assert.equal(page.data.canToggle, false);
  await waitFor(() => wx.openTasks().length === 0, { what: 'socket closed' });
  assert.equal(page.instance.client.pendingTimers().length, 0);
  assert.equal(wx.listenerCount(), 0, 'no app or network listener left');
  page.instance.onUnload();
});

test('onUnload leaves nothing running', async () => {
  const { page } = await openPage('unload');
  const client = page.instance.client;
  page.instance.onUnload();
  assert.equal(client.getState(), 'closed');
  assert.equal(client.pendingTimers().length, 0);
  assert.equal(wx.listenerCount(), 0);
  await waitFor(() => wx.openTasks().length === 0, { what: 'socket closed' });
});

test('the page hidden under another page renders nothing until shown, then everything at once', async () => {
  const { id, page } = await openPage('page-hide');
  page.instance.onHide();
  await publish(relay.base, id, 'progress', progress(35, 'ai_fetching', '正在查询 Kimi（3/5）'));
  await waitFor(() => page.instance.client.getLastSeq() === 1, { what: 'event received' });
  assert.equal(page.data.progress, 0, 'not rendered while hidden');
  page.instance.onShow();
  assert.equal(page.data.progress, 35);
  assert.equal(textOf(page, '#status-text'), '正在查询 Kimi（3/5）');
  page.instance.onUnload();
});

test('a reset (the relay lost the stream: new epoch) clears and rebuilds the page', async () => {
  const own = await startRelay();
  const saved = { ...app.globalData.relay };
  const ownBackend = await startTokenBackend(own.base);
  app.globalData.relay.relayBaseUrl = own.base;
  app.globalData.relay.tokenUrl = ownBackend.url;
  let current = own;
  try {
    const id = newExecution('reset');
    const page = renderReportPage();
    page.instance.onLoad({ executionId: id });
    await waitFor(() => page.data.badge.kind === 'connected', { what: 'connected' });
    await publish(own.base, id, 'progress', progress(40, 'ai_fetching', '正在查询豆包（4/5）'));
    await publish(own.base, id, 'result', { platform: 'wenxin', platform_name: '文心一言', score: 80 });
    await waitFor(() => page.querySelectorAll('.row').length === 1, { what: 'old row' });
    const oldEpoch = page.instance.client.getEpoch();
    await own.stop('SIGKILL');
    current = await startRelay({ port: own.port });
    await publish(current.base, id, 'progress', progress(5, 'ai_fetching', '重新开始向 AI 平台提问'));
    await waitFor(() => page.data.notice === '数据已重新同步', { timeout: 20000, what: 'reset notice' });
    await waitFor(() => page.data.progress === 5, { what: 'the new stream from its start' });
    assert.equal(page.querySelectorAll('.row').length, 0, 'the lost stream\'s rows are gone');
    assert.equal(textOf(page, '#status-text'), '重新开始向 AI 平台提问');
    assert.notEqual(page.instance.client.getEpoch(), oldEpoch, 'a new epoch');
    assert.equal(textOf(page, '#notice'), '数据已重新同步');
    page.instance.onUnload();
  } finally {
    Object.assign(app.globalData.relay, saved);
    await ownBackend.close();
    await current.stop();
  }
});
