// WeChat mini-program transports: wx.connectSocket / SocketTask, wx.request,
// and the app lifecycle (wx.onAppHide / wx.onAppShow / wx.onNetworkStatusChange).
// Type-checked against miniprogram-api-typings (npm run typecheck).
import { headerFromObject, frameToText } from '../util.mjs';

/** how long a SocketTask error may go without its close event (ms) */
const ERROR_WITHOUT_CLOSE_MS = 1000;

/**
 * Socket adapter over wx.connectSocket. The token goes in the handshake's
 * Authorization header; every SocketTask handler is registered synchronously
 * right after connectSocket returns (so no early event is missed); the
 * previous task of this adapter is always closed before a new one is opened,
 * so one client never holds more than one socket (old base libraries allow
 * only one, newer ones five per mini-program).
 * @param {WechatMiniprogram.Wx} wxApi
 * @param {{perMessageDeflate?: boolean}} [settings] perMessageDeflate: offer
 *   compression (default true; false for a device where it misbehaves)
 * @returns {import('../types').OpenSocket}
 */
export function createWxSocketOpener(wxApi, settings) {
  const deflate = !settings || settings.perMessageDeflate !== false;
  /** @type {{ close: (code?: number, reason?: string) => void } | null} */
  let current = null;

  return function openWxSocket(req) {
    if (current) {
      current.close(1000, 'replaced');
      current = null;
    }
    let ended = false;
    let opened = false;
    let closeRequested = false;
    /** @type {{code: number, reason: string}} */
    let closeArgs = { code: 1000, reason: '' };

    /** @type {any} */
    let errorTimer = null;
    function clearErrorTimer() {
      if (errorTimer !== null) clearTimeout(errorTimer);
      errorTimer = null;
    }

    /** @param {{code: number, reason: string}} info */
    function finish(info) {
      clearErrorTimer();
      if (ended) return;
      ended = true;
      if (current === handle) current = null;
      req.onClose(info);
    }

    /** @type {WechatMiniprogram.ConnectSocketOption} */
    const option = {
      url: req.url,
      header: { Authorization: 'Bearer ' + req.token },
      // Offer permessage-deflate (base library >= 2.8.0; older ones ignore it): the relay
      // answers with context takeover, and event frames shrink to about a third.
      perMessageDeflate: deflate,
      fail: function (err) {
        // connectSocket itself failed (bad domain, too many sockets...).
        if (ended) return;
        req.onError(err);
        finish({ code: 1006, reason: (err && err.errMsg) || 'connectSocket failed' });
      }
    };
    if (req.timeout > 0) option.timeout = req.timeout;
    const task = wxApi.connectSocket(option);

    /** @param {number} code @param {string} reason */
    function closeTask(code, reason) {
      try {
        task.close({ code: code, reason: reason, fail: function () { /* not open yet / already closed */ } });
      } catch (e) { /* ignore */ }
    }

    // Handlers registered synchronously, before anything can be delivered.
    task.onOpen(function () {
      opened = true;
      if (closeRequested) {
        closeTask(closeArgs.code, closeArgs.reason);
        return;
      }
      if (!ended) req.onOpen();
    });
    task.onMessage(function (res) {
      if (ended || closeRequested) return;
      req.onMessage(frameToText(res.data));
    });
    task.onError(function (err) {
      if (ended || closeRequested) return;
      req.onError(err);
      // onClose normally follows; some clients only report the error
      if (errorTimer === null) {
        errorTimer = setTimeout(function () {
          errorTimer = null;
          if (ended || closeRequested) return;
          finish({ code: 1006, reason: (err && err.errMsg) || 'socket error' });
          closeTask(1000, 'socket error');
        }, ERROR_WITHOUT_CLOSE_MS);
      }
    });
    task.onClose(function (res) {
      if (closeRequested) { ended = true; return; }
      finish({ code: res && typeof res.code === 'number' ? res.code : 1006, reason: (res && res.reason) || '' });
    });

    const handle = {
      /** @param {string} text */
      send: function (text) {
        if (ended || closeRequested || !opened) return false;
        task.send({ data: text, fail: function () { /* the close handler will report it */ } });
        return true;
      },
      /** @param {number} [code] @param {string} [reason] */
      close: function (code, reason) {
        clearErrorTimer();
        if (closeRequested || ended) return;
        closeRequested = true;
        ended = true;
        if (current === handle) current = null;
        closeArgs = { code: code || 1000, reason: reason || '' };
        // A task that is still connecting cannot be closed on every base
        // library version: close it now and again as soon as it opens.
        closeTask(closeArgs.code, closeArgs.reason);
      }
    };
    current = handle;
    return handle;
  };
}

/**
 * HTTP adapter over wx.request (checks statusCode; never trusts `success`
 * alone, which wx calls for 4xx/5xx too).
 * @param {WechatMiniprogram.Wx} wxApi
 * @returns {import('../types').HttpRequest}
 */
export function createWxRequester(wxApi) {
  return function wxRequest(req) {
    /** @type {WechatMiniprogram.RequestTask | null} */
    let task = null;
    let done = false;
    /** @type {(err: any) => void} */
    let rejectFn = function () {};
    const promise = new Promise(function (resolve, reject) {
      rejectFn = reject;
      /** @type {WechatMiniprogram.RequestOption} */
      const option = {
        url: req.url,
        method: 'GET',
        header: req.token ? { Authorization: 'Bearer ' + req.token, Accept: 'application/json' } : { Accept: 'application/json' },
        dataType: 'json',
        success: function (res) {
          if (done) return;
          done = true;
          let body = res.data;
          if (typeof body === 'string') {
            try { body = JSON.parse(body); } catch (e) { /* keep the text */ }
          }
          resolve({
            status: res.statusCode,
            body: body,
            header: function (name) { return headerFromObject(res.header, name); }
          });
        },
        fail: function (err) {
          if (done) return;
          done = true;
          const e = new Error((err && err.errMsg) || 'wx.request failed');
          if (err && /timeout/i.test(err.errMsg || '')) /** @type {any} */ (e).timeout = true;
          reject(e);
        }
      };
      if (req.timeout > 0) option.timeout = req.timeout;
      task = wxApi.request(option);
    });
    return {
      promise: promise,
      abort: function () {
        if (done) return;
        done = true;
        try { if (task) task.abort(); } catch (e) { /* ignore */ }
        const err = new Error('aborted');
        /** @type {any} */ (err).aborted = true;
        rejectFn(err);
      }
    };
  };
}

/**
 * App lifecycle: hide closes, show and a regained network reconnect at once.
 * @param {WechatMiniprogram.Wx} wxApi
 * @returns {import('../types').Lifecycle}
 */
export function createWxLifecycle(wxApi) {
  return function subscribeWx(cb) {
    /** @type {WechatMiniprogram.OnAppHideCallback} */
    const onHide = function () { cb.hide(); };
    /** @type {WechatMiniprogram.OnAppShowCallback} */
    const onShow = function () { cb.show(); };
    /** @type {WechatMiniprogram.OnNetworkStatusChangeCallback} */
    const onNet = function (res) {
      if (res && res.isConnected === false) cb.offline();
      else cb.online();
    };
    if (typeof wxApi.onAppHide === 'function') wxApi.onAppHide(onHide);
    if (typeof wxApi.onAppShow === 'function') wxApi.onAppShow(onShow);
    if (typeof wxApi.onNetworkStatusChange === 'function') wxApi.onNetworkStatusChange(onNet);
    // (the typings declare off* listeners with another parameter type than on*)
    return function () {
      if (typeof wxApi.offAppHide === 'function') wxApi.offAppHide(/** @type {any} */ (onHide));
      if (typeof wxApi.offAppShow === 'function') wxApi.offAppShow(/** @type {any} */ (onShow));
      if (typeof wxApi.offNetworkStatusChange === 'function') wxApi.offNetworkStatusChange(/** @type {any} */ (onNet));
    };
  };
}
