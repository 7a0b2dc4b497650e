// The report page: one execution's progress, per-platform results and the
// final report, live over the relay (WebSocket, or polling when the socket
// cannot get through). Built with Component() so that it renders headlessly
// (clients/js/test/miniprogram-page.test.mjs); pages may use Component()
// since base library 1.6.3, with the page lifecycle in `methods`.
const { createClient } = require('../../utils/progress-relay.js');
const { fetchRelayToken } = require('../../utils/relay-token.js');
const view = require('./view.js');

/** The relay settings of app.js (globalData.relay). */
function relaySettings() {
  const app = getApp();
  return (app && app.globalData && app.globalData.relay) || {};
}

Component({
  data: view.initialData(''),

  methods: {
    /** @param {{executionId?: string, execution_id?: string}} query */
    onLoad(query) {
      const executionId = (query && (query.executionId || query.execution_id)) || '';
      this._pageHidden = false;
      this._pending = null;
      this.setData(view.initialData(executionId));
      if (!executionId) {
        this._showError('缺少诊断编号（executionId）', false);
        return;
      }
      const settings = relaySettings();
      const options = Object.assign({}, settings.client || {}, {
        baseUrl: settings.relayBaseUrl,
        getToken: function (ctx) { return fetchRelayToken(settings.tokenUrl, ctx.executionId); }
      });
      this.client = createClient(options);
      this._watch({});
    },

    onUnload() {
      if (this.client) this.client.disconnect();
      this.client = null;
    },

    // The page hidden under another page of the mini-program (the app itself
    // going to the background is the client's business: wx.onAppHide): the
    // stream goes on, but the page renders nothing until it is shown again.
    onHide() {
      this._pageHidden = true;
    },

    onShow() {
      this._pageHidden = false;
      if (this._pending) {
        const patch = this._pending;
        this._pending = null;
        this.setData(patch);
      }
    },

    /** The manual WebSocket <-> polling switch. */
    onToggleMode() {
      if (!this.client || !this.data.canToggle) return;
      this.client.setMode(this.client.getMode() === 'websocket' ? 'polling' : 'websocket');
      this._render(view.modeFields(this.client.getMode()));
    },

    /** The error view's retry: the same execution again, after the last seq shown. */
    onRetry() {
      if (!this.client) return;
      this._render({ view: 'live', errorText: '', canRetry: false, canToggle: true });
      this._watch({ lastSeq: this.client.getLastSeq(), epoch: this.client.getEpoch() });
    },

    // ------------------------------------------------------------ internals

    _watch(resume) {
      const page = this;
      this.client.connect(this.data.executionId, {
        onConnected: function (info) { page._render(view.modeFields(info.mode)); },
        onProgress: function (d) { page._render(view.progressFields(d)); },
        onResult: function (d) { page._render({ platforms: view.mergeRow(page._data().platforms, view.resultRow(d)) }); },
        onError: function (d, evt) { page._onError(d, evt); },
        onComplete: function (d) {
          page._render({ view: 'report', progress: 100, statusText: '诊断完成', report: view.reportFields(d.report), canToggle: false });
        },
        onReset: function () {
          // the relay lost this stream's history: what is shown belongs to a
          // stream that no longer exists; the new epoch's events follow
          const fresh = view.initialData(page.data.executionId);
          fresh.notice = '数据已重新同步';
          fresh.badge = page._data().badge;
          page._render(fresh);
        },
        onStateChange: function (state, info) {
          const patch = view.modeFields(info.mode);
          patch.badge = view.badgeFor(state, info);
          if (state === 'done' || state === 'failed' || state === 'closed') patch.canToggle = false;
          page._render(patch);
        }
      }, resume);
    },

    _onError(d, evt) {
      if (!evt) {
        this._showError(view.refusedText(d), true);
      } else if (d.recoverable) {
        const row = view.retryRow(d);
        if (row) this._render({ platforms: view.mergeRow(this._data().platforms, row) });
      } else {
        this._showError('诊断失败：' + (d.error || '未知错误'), false);
      }
    },

    _showError(text, canRetry) {
      this._render({ view: 'error', errorText: text, canRetry: canRetry, canToggle: false });
    },

    /** The data as it will be once pending updates are rendered. */
    _data() {
      return this._pending ? Object.assign({}, this.data, this._pending) : this.data;
    },

    /** setData now, or when the page is shown again. */
    _render(patch) {
      if (this._pageHidden) {
        this._pending = Object.assign(this._pending || {}, patch);
        return;
      }
      this.setData(patch);
    }
  }
});
