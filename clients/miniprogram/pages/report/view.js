// What the report page shows, computed from the client's callbacks: plain
// functions from data to the page's `data` fields (no wx, no timers).

const STAGE_TEXT = { queued: '排队中', ai_fetching: '获取 AI 数据', analyzing: '分析回答', report: '生成报告' };
const SENTIMENT_TEXT = { positive: '正面', neutral: '中性', negative: '负面', none: '—' };
const MODE_TEXT = { websocket: 'WebSocket 实时推送', polling: '轮询模式' };
const REFUSED_TEXT = {
  4500: '订阅凭证无效或已被吊销',
  4503: '无权查看这个诊断',
  1006: '订阅凭证被拒绝',
  401: '订阅凭证无效或已过期',
  403: '无权查看这个诊断'
};

/** The empty page for one execution. */
function initialData(executionId) {
  return {
    executionId: executionId,
    view: 'live',
    progress: 0,
    stageText: '—',
    statusText: '等待诊断开始…',
    platforms: [],
    badge: { kind: 'connecting', text: '连接中…' },
    mode: 'websocket',
    modeText: MODE_TEXT.websocket,
    toggleText: '切换到轮询',
    canToggle: true,
    errorText: '',
    canRetry: false,
    notice: '',
    report: null
  };
}

/**
 * The connection badge for a client state.
 * @param {string} state
 * @param {any} info onStateChange's info
 */
function badgeFor(state, info) {
  switch (state) {
    case 'connecting': return { kind: 'connecting', text: '连接中…' };
    case 'connected': return { kind: 'connected', text: '已连接' };
    case 'reconnecting':
      return info && info.attempt
        ? { kind: 'reconnecting', text: '重连中（第 ' + info.attempt + ' 次，' + Math.round((info.delay || 0) / 100) / 10 + ' 秒后）' }
        : { kind: 'reconnecting', text: '重连中…' };
    case 'polling': return { kind: 'polling', text: '轮询中' };
    case 'paused':
      return info && info.reason === 'offline' ? { kind: 'offline', text: '网络已断开' } : { kind: 'paused', text: '已暂停' };
    case 'done': return { kind: 'done', text: '已完成' };
    case 'failed': return { kind: 'failed', text: '连接失败' };
    default: return { kind: 'closed', text: '已断开' };
  }
}

/** The mode line and the toggle's label. */
function modeFields(mode) {
  return { mode: mode, modeText: MODE_TEXT[mode] || mode, toggleText: mode === 'websocket' ? '切换到轮询' : '切换到 WebSocket' };
}

/** Stage and status text of a progress event. */
function progressFields(d) {
  const p = Math.max(0, Math.min(100, Number(d.progress) || 0));
  const stage = STAGE_TEXT[d.stage] || d.stage || '—';
  return { progress: p, stageText: stage, statusText: d.status_text || stage };
}

/** One platform row of a `result` event. */
function resultRow(d) {
  const parts = [];
  if (typeof d.score === 'number') parts.push('得分 ' + d.score);
  if (d.mentioned !== undefined) parts.push(d.mentioned ? '提及' + (d.rank ? '（第 ' + d.rank + ' 位）' : '') : '未提及');
  if (d.sentiment && SENTIMENT_TEXT[d.sentiment]) parts.push('情感 ' + SENTIMENT_TEXT[d.sentiment]);
  return {
    platform: String(d.platform || d.platform_name || ''),
    name: d.platform_name || d.platform || '未知平台',
    status: 'done',
    detail: parts.join(' · '),
    summary: d.summary || ''
  };
}

/** The row of a platform being retried after a recoverable `error` event; null when it names none. */
function retryRow(d) {
  const details = d.error_details || {};
  const key = details.platform || details.platform_name;
  if (!key) return null;
  return { platform: String(key), name: details.platform_name || key, status: 'retrying', detail: '重试中', summary: d.error || '' };
}

/**
 * The rows with `row` put in its platform's place (a retrying row never
 * replaces a finished one).
 */
function mergeRow(rows, row) {
  const out = rows.slice();
  for (let i = 0; i < out.length; i++) {
    if (out[i].platform !== row.platform) continue;
    if (row.status === 'retrying' && out[i].status === 'done') return out;
    out[i] = row;
    return out;
  }
  out.push(row);
  return out;
}

/** The report view of a `complete` event's report (as `progress-relay demo` produces it). */
function reportFields(report) {
  const r = report || {};
  const platforms = Array.isArray(r.platforms) ? r.platforms.map(resultRow) : [];
  return {
    overallScore: r.overall_score === undefined ? '—' : String(r.overall_score),
    grade: r.grade || '—',
    mentionRate: typeof r.mention_rate === 'number' ? Math.round(r.mention_rate * 100) + '%' : '—',
    summary: r.summary || '',
    platforms: platforms,
    suggestions: Array.isArray(r.suggestions) ? r.suggestions.map(String) : []
  };
}

/** The error view's text for the client giving up. */
function refusedText(d) {
  if (d.error_type === 'NO_TRANSPORT') return '当前环境无法连接进度服务：' + d.error;
  return '连接被拒绝：' + (REFUSED_TEXT[d.code] || d.error) + (d.code ? '（' + d.code + '）' : '');
}

module.exports = {
  initialData: initialData,
  badgeFor: badgeFor,
  modeFields: modeFields,
  progressFields: progressFields,
  resultRow: resultRow,
  retryRow: retryRow,
  mergeRow: mergeRow,
  reportFields: reportFields,
  refusedText: refusedText
};
