// The live progress page: uses the client library only (progress-relay.mjs,
// the same ES module as clients/js/dist, copied here by its build).
import { createClient } from './progress-relay.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const STATE_TEXT = {
  idle: '—',
  connecting: '连接中…',
  connected: '已连接',
  reconnecting: '重连中',
  polling: '轮询中',
  paused: '已暂停（页面在后台或网络断开）',
  done: '已完成',
  failed: '连接被拒绝',
  closed: '已断开'
};
const MODE_TEXT = { websocket: 'WebSocket 实时推送', polling: '轮询模式' };
const STAGE_TEXT = { queued: '排队中', ai_fetching: '获取 AI 数据', analyzing: '分析回答', report: '生成报告' };
const REFUSED_TEXT = {
  4500: 'Token 无效或已被吊销',
  4503: '无权查看这个执行（Token 属于其他执行，或来源不被允许）',
  1006: 'Token 被拒绝',
  401: 'Token 无效或已过期',
  403: '无权查看这个执行'
};
const SENTIMENT_TEXT = { positive: '正面', neutral: '中性', negative: '负面', none: '—' };

let client = null;
let current = { executionId: '', token: '', base: '' };

function baseUrl() {
  return ($('base-url').value || location.origin).replace(/\/+$/, '');
}

function time(ts) {
  const d = ts ? new Date(ts) : new Date();
  return isNaN(d.getTime()) ? '' : d.toLocaleTimeString('zh-CN', { hour12: false });
}

function logLine(text, cls, seq) {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  if (seq !== undefined) li.dataset.seq = String(seq);
  li.textContent = text;
  const log = $('event-log');
  log.appendChild(li);
  log.scrollTop = log.scrollHeight;
}

function describe(evt) {
  const d = evt.data || {};
  switch (evt.event) {
    case 'progress': return `${d.progress}% ${d.status_text || STAGE_TEXT[d.stage] || d.stage || ''}`;
    case 'result': return `${d.platform_name || d.platform || '结果'}：${d.summary || ''}`;
    case 'error': return `${d.recoverable ? '可恢复错误' : '错误'}：${d.error || ''}`;
    case 'complete': return `诊断完成${d.report && d.report.summary ? '：' + d.report.summary : ''}`;
    default: return JSON.stringify(d);
  }
}

function setProgress(pct) {
  const p = Math.max(0, Math.min(100, Number(pct) || 0));
  $('progress-bar').style.width = p + '%';
  $('progress-pct').textContent = p + '%';
  $('progress').setAttribute('aria-valuenow', String(p));
}

function showMode(mode) {
  const badge = $('mode-badge');
  badge.textContent = MODE_TEXT[mode] || mode;
  badge.dataset.mode = mode;
  badge.classList.toggle('polling', mode === 'polling');
  $('mode-switch').textContent = mode === 'websocket' ? '切换到轮询' : '切换到 WebSocket';
}

function showState(state, info) {
  let text = STATE_TEXT[state] || state;
  if (state === 'reconnecting' && info && info.attempt) {
    text += `（第 ${info.attempt} 次，${(info.delay / 1000).toFixed(1)} 秒后）`;
  }
  const el = $('conn-state');
  el.textContent = text;
  el.dataset.state = state;
}

function resultRow(platform) {
  const tbody = $('results').tBodies[0];
  let tr = tbody.querySelector(`tr[data-platform="${CSS.escape(platform)}"]`);
  if (!tr) {
    tr = document.createElement('tr');
    tr.dataset.platform = platform;
    for (let i = 0; i < 6; i++) tr.appendChild(document.createElement('td'));
    tbody.appendChild(tr);
  }
  $('results-card').hidden = false;
  return tr;
}

function showResult(d) {
  const key = d.platform || d.platform_name || String(Date.now());
  const tr = resultRow(key);
  tr.classList.remove('retrying');
  const cells = [
    d.platform_name || d.platform || '—',
    d.mentioned === undefined ? '—' : d.mentioned ? '是' : '否',
    d.rank === null || d.rank === undefined ? '—' : String(d.rank),
    SENTIMENT_TEXT[d.sentiment] || d.sentiment || '—',
    d.score === undefined ? '—' : String(d.score),
    d.summary || ''
  ];
  cells.forEach((text, i) => { tr.cells[i].textContent = text; });
}

function showRetry(d) {
  const details = d.error_details || {};
  const key = details.platform || details.platform_name;
  if (!key) return;
  const tr = resultRow(key);
  if (!tr.cells[5].textContent || tr.classList.contains('retrying')) {
    tr.classList.add('retrying');
    tr.cells[0].textContent = details.platform_name || key;
    tr.cells[5].textContent = d.error || '重试中';
  }
}

function showReport(report) {
  $('report').hidden = false;
  if (!report) return;
  $('report-score').textContent = report.overall_score ?? '—';
  $('report-grade').textContent = report.grade ?? '—';
  $('report-rate').textContent = typeof report.mention_rate === 'number' ? Math.round(report.mention_rate * 100) + '%' : '—';
  $('report-summary').textContent = report.summary || '';
  const ul = $('report-suggestions');
  ul.textContent = '';
  for (const s of report.suggestions || []) {
    const li = document.createElement('li');
    li.textContent = s;
    ul.appendChild(li);
  }
  $('report-json').textContent = JSON.stringify(report, null, 2);
}

function showError(text) {
  const el = $('error');
  el.textContent = text;
  el.hidden = !text;
}

function resetView(executionId) {
  $('live').hidden = false;
  $('log-card').hidden = false;
  $('results-card').hidden = true;
  $('report').hidden = true;
  $('results').tBodies[0].textContent = '';
  $('event-log').textContent = '';
  $('live-execution').textContent = executionId;
  $('stage').textContent = '—';
  $('status-text').textContent = '等待事件…';
  showError('');
  setProgress(0);
  $('mode-switch').disabled = false;
}

/** A fresh token from the dev-mode demo API, when the service offers one. */
async function devToken(executionId) {
  try {
    const r = await fetch(baseUrl() + '/demo/api/tokens', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ execution_id: executionId })
    });
    if (!r.ok) return null;
    const body = await r.json();
    return body.token || null;
  } catch {
    return null;
  }
}

export function watch(executionId, token, mode) {
  if (client) client.disconnect();
  current = { executionId, token, base: baseUrl() };
  resetView(executionId);
  const url = new URL(location.href);
  url.searchParams.set('execution_id', executionId);
  url.searchParams.delete('token');
  history.replaceState(null, '', url);

  client = createClient({
    baseUrl: current.base,
    getToken: async ({ reason }) => {
      if (reason === 'initial' && current.token) return current.token;
      const fresh = await devToken(executionId);
      if (fresh) current.token = fresh;
      if (!current.token) throw new Error('没有订阅 token：请粘贴一个，或在开发模式下启动演示诊断');
      return current.token;
    }
  });
  window.relayDemo = { client };
  if (mode === 'polling') client.setMode('polling');
  showMode(client.getMode());

  client.connect(executionId, {
    onConnected: (info) => {
      showMode(info.mode);
      logLine(`${time()} — ${info.mode === 'websocket' ? 'WebSocket 已连接' : '轮询已开始'}` +
        (info.resumed ? `，从 #${info.lastSeq} 之后继续` : '') + (info.gap ? '（部分历史已过期）' : ''), 'sys');
    },
    onEvent: (evt) => {
      logLine(`#${evt.seq} ${time(evt.timestamp)} ${evt.event} ${describe(evt)}`, evt.event === 'error' ? 'error' : '', evt.seq);
    },
    onProgress: (d) => {
      setProgress(d.progress);
      $('stage').textContent = STAGE_TEXT[d.stage] ? `${STAGE_TEXT[d.stage]}（${d.stage}）` : d.stage || '—';
      $('status-text').textContent = d.status_text || '';
    },
    onResult: (d) => showResult(d),
    onError: (d, evt) => {
      if (!evt) {
        const why = REFUSED_TEXT[d.code] || d.error;
        showError(`连接被拒绝：${why}（${d.code}）`);
        logLine(`${time()} — 连接被拒绝：${why}（${d.error}）`, 'sys');
      } else if (d.recoverable) {
        showRetry(d);
      } else {
        showError(`诊断失败：${d.error}`);
      }
    },
    onComplete: (d) => {
      setProgress(100);
      $('status-text').textContent = '诊断完成';
      showReport(d.report);
    },
    onReset: (info) => {
      // the relay lost this execution's history (a restarted in-memory relay,
      // a flushed Redis): what is shown belongs to a stream that no longer
      // exists. Clear it; the new stream's events follow from its start.
      resetView(executionId);
      logLine(`${time()} — 数据流已重置（服务端丢失了此前的历史，新纪元 ${info.epoch || '—'}）：旧内容已清除，从新数据流的开头重新加载`, 'sys reset');
    },
    onFallback: () => logLine(`${time()} — WebSocket 多次连接失败，已自动降级为轮询`, 'sys'),
    onStateChange: (state, info) => {
      showState(state, info);
      showMode(info.mode);
      $('mode-switch').disabled = state === 'done' || state === 'failed' || state === 'closed';
      if (state === 'done' && !$('report').hidden) return;
      if (state === 'done') $('status-text').textContent = '执行已结束';
    }
  });
}

async function startDemo() {
  const hint = $('setup-hint');
  try {
    const r = await fetch(baseUrl() + '/demo/api/executions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ pace: Number(params.get('pace') || 0.6) })
    });
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const body = await r.json();
    $('execution-id').value = body.execution_id;
    $('token').value = body.token || '';
    watch(body.execution_id, body.token || '', params.get('mode'));
  } catch (err) {
    hint.textContent = `无法启动演示（${err.message}）：演示接口只在开发模式下提供。` +
      '也可以运行 progress-relay demo，把打印出的执行 ID 和 token 粘贴到这里。';
    hint.classList.add('error');
  }
}

function init() {
  $('base-url').value = params.get('base') || location.origin;
  $('watch-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = $('execution-id').value.trim();
    if (id) watch(id, $('token').value.trim(), params.get('mode'));
  });
  $('start-demo').addEventListener('click', () => startDemo());
  $('mode-switch').addEventListener('click', () => {
    if (!client) return;
    client.setMode(client.getMode() === 'websocket' ? 'polling' : 'websocket');
    showMode(client.getMode());
  });
  if (params.get('execution_id')) {
    $('execution-id').value = params.get('execution_id');
    $('token').value = params.get('token') || '';
    watch(params.get('execution_id'), params.get('token') || '', params.get('mode'));
  }
}

// inserted by index.html, this module may run before the body is parsed
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
