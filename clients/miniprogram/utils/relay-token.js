// The subscriber token from the product backend (see app.js, tokenUrl).

/**
 * Asks the backend for a token for one execution. Called by the client at
 * the start and again after the relay said the token expired (close 4001).
 * @param {string} tokenUrl
 * @param {string} executionId
 * @returns {Promise<string>}
 */
function fetchRelayToken(tokenUrl, executionId) {
  return new Promise(function (resolve, reject) {
    wx.request({
      url: tokenUrl + (tokenUrl.indexOf('?') >= 0 ? '&' : '?') + 'execution_id=' + encodeURIComponent(executionId),
      method: 'GET',
      dataType: 'json',
      success: function (res) {
        const token = res.statusCode === 200 && res.data && res.data.token;
        if (typeof token === 'string' && token) resolve(token);
        else reject(new Error('获取订阅凭证失败（HTTP ' + res.statusCode + '）'));
      },
      fail: function (err) {
        reject(new Error('获取订阅凭证失败：' + ((err && err.errMsg) || '网络错误')));
      }
    });
  });
}

module.exports = { fetchRelayToken: fetchRelayToken };
