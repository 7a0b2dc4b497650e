// Small helpers shared by the client and the transports. No dependencies, no
// globals beyond what every target (browsers, WeChat mini-programs, Node 20)
// has.

/**
 * Exponential backoff with jitter.
 * failures=1 -> base, 2 -> 2*base, 3 -> 4*base ... capped at `max`, then
 * multiplied by a random factor in [1 - jitter, 1 + jitter) so that many
 * clients dropped at the same moment do not come back in lockstep.
 * @param {number} failures consecutive failures so far (1 for the first)
 * @param {{base: number, max: number, jitter: number, random?: () => number}} o
 * @returns {number} milliseconds
 */
export function computeBackoff(failures, o) {
  const n = Math.max(1, failures | 0);
  const raw = Math.min(o.max, o.base * Math.pow(2, n - 1));
  const rnd = o.random ? o.random() : Math.random();
  const factor = 1 - o.jitter + 2 * o.jitter * rnd;
  return Math.max(0, Math.round(raw * factor));
}

/**
 * Retry-After header value (seconds or an HTTP date) to milliseconds.
 * @param {string | null | undefined} value
 * @param {number} fallbackMs used when the header is absent or unreadable
 * @param {number} [nowMs]
 * @returns {number}
 */
export function parseRetryAfter(value, fallbackMs, nowMs) {
  if (value === null || value === undefined || value === '') return fallbackMs;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(parseFloat(text) * 1000);
  const when = Date.parse(text);
  if (!isNaN(when)) {
    const now = nowMs === undefined ? Date.now() : nowMs;
    return Math.max(0, when - now);
  }
  return fallbackMs;
}

/**
 * @param {Record<string, string | number | undefined | null>} params
 * @returns {string} "?a=1&b=2" or ""
 */
export function buildQuery(params) {
  const parts = [];
  for (const key of Object.keys(params)) {
    const v = params[key];
    if (v === undefined || v === null || v === '') continue;
    parts.push(encodeURIComponent(key) + '=' + encodeURIComponent(String(v)));
  }
  return parts.length ? '?' + parts.join('&') : '';
}

/** @param {string} url */
export function stripTrailingSlash(url) {
  return String(url).replace(/\/+$/, '');
}

/**
 * ws(s):// URL for a base http(s):// URL.
 * @param {string} baseUrl
 */
export function toWebSocketBase(baseUrl) {
  const base = stripTrailingSlash(baseUrl);
  if (/^wss?:\/\//i.test(base)) return base;
  if (/^https:\/\//i.test(base)) return 'wss://' + base.slice(8);
  if (/^http:\/\//i.test(base)) return 'ws://' + base.slice(7);
  return base;
}

/**
 * Case-insensitive header lookup in a plain object (wx.request's res.header).
 * @param {Record<string, any> | undefined | null} headers
 * @param {string} name
 * @returns {string | undefined}
 */
export function headerFromObject(headers, name) {
  if (!headers) return undefined;
  const want = name.toLowerCase();
  for (const key of Object.keys(headers)) {
    if (key.toLowerCase() === want) {
      const v = headers[key];
      return v === undefined || v === null ? undefined : String(v);
    }
  }
  return undefined;
}

/**
 * Text of a frame that may arrive as an ArrayBuffer (wx SocketTask) or a
 * Buffer / Uint8Array (ws under Node).
 * @param {any} data
 * @returns {string}
 */
export function frameToText(data) {
  if (typeof data === 'string') return data;
  if (data === null || data === undefined) return '';
  const bytes = frameBytes(data);
  if (!bytes) return String(data);
  if (typeof TextDecoder !== 'undefined') return new TextDecoder('utf-8').decode(bytes);
  return decodeUtf8Fallback(bytes);
}

/**
 * Whether `value` is an ArrayBuffer, from this realm or another one (a
 * mini-program's SocketTask, a vm context, an iframe): `instanceof` alone
 * misses buffers made by another realm's constructor.
 * @param {any} value
 */
export function isArrayBuffer(value) {
  if (value === null || typeof value !== 'object') return false;
  if (typeof ArrayBuffer !== 'undefined' && value instanceof ArrayBuffer) return true;
  return Object.prototype.toString.call(value) === '[object ArrayBuffer]';
}

/**
 * The bytes of an ArrayBuffer or a typed array / Buffer (of any realm); null for anything else.
 * @param {any} data
 * @returns {Uint8Array | null}
 */
function frameBytes(data) {
  if (typeof Uint8Array === 'undefined') return null;
  if (isArrayBuffer(data)) return new Uint8Array(data);
  if (isArrayBuffer(data.buffer) && typeof data.byteLength === 'number') {
    return new Uint8Array(data.buffer, data.byteOffset || 0, data.byteLength);
  }
  return null;
}

/**
 * UTF-8 decoding for old mini-program base libraries, which have no TextDecoder.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
function decodeUtf8Fallback(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
  try {
    return decodeURIComponent(escape(binary));
  } catch (e) {
    return binary;
  }
}

/**
 * @param {string} text
 * @returns {any} parsed JSON, or undefined when the text is not JSON
 */
export function safeJsonParse(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return undefined;
  }
}
