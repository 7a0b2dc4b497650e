// The reconnect policy: what a socket close means (finish, give up, refresh
// the token, reconnect, or ask the state endpoint), and when the next attempt
// runs (jittered exponential back-off, then the fallback to polling). Pure:
// the client keeps the timers. See docs/client.md ("Close codes").
import { computeBackoff } from './util.mjs';

/** Codes that mean "reconnect and resume" before `connected` too. */
const RETRY_CODES = [1000, 1001, 1011, 1012];

/**
 * 4500-4999: the relay refuses this token or user for good; 1008 / 1009: it
 * refused what this client sent (a cursor, a frame), which a reconnect would
 * only send again.
 * @param {number} code
 */
export function isRefusalClose(code) {
  return (code >= 4500 && code <= 4999) || code === 1008 || code === 1009;
}

/**
 * The error text for a refusal close.
 * @param {number} code
 * @param {string} [reason]
 */
export function refusalMessage(code, reason) {
  if (code === 4503) return 'forbidden';
  if (code === 1008 || code === 1009) return 'the relay refused a message of this client' + (reason ? ': ' + reason : '');
  return 'token invalid or revoked';
}

/**
 * What to do after a socket ended.
 *   finish        the relay's own end of the stream
 *   refused       4500-4999, 1008, 1009: stop, tell the page
 *   refresh       4001: a fresh token first, then resume
 *   check-end     a 1000 that is not the relay's end (WeChat's "interrupted"):
 *                 the state endpoint says whether the execution finished
 *   retry         reconnect with back-off and resume
 *   check-refused 1006 or an unknown code before `connected`: the state
 *                 endpoint tells a refused token from the network
 * @param {{code: number, reason?: string, local?: boolean}} info
 * @param {{connected: boolean, latestSeq: number | null}} socket
 * @param {import('./delivery.mjs').Delivery} delivery
 * @returns {'finish' | 'refused' | 'refresh' | 'check-end' | 'retry' | 'check-refused'}
 */
export function closeVerdict(info, socket, delivery) {
  const code = info.code;
  if (delivery.endsStream(info, socket)) return 'finish';
  if (isRefusalClose(code)) return 'refused';
  if (code === 4001) return 'refresh';
  if (info.local) return 'retry';
  if (socket.connected) return code === 1000 ? 'check-end' : 'retry';
  if (code >= 4000 && code <= 4499) return 'retry';
  return RETRY_CODES.indexOf(code) >= 0 ? 'retry' : 'check-refused';
}

/**
 * Counts failed attempts and spaces the next ones: RECONNECT_INTERVAL
 * doubling up to MAX_RECONNECT_INTERVAL, jittered; after
 * MAX_RECONNECT_ATTEMPTS the answer is "fall back to polling".
 */
export class ReconnectPolicy {
  /**
   * @param {any} options the client's merged options
   * @param {() => number} random in [0, 1)
   */
  constructor(options, random) {
    this.options = options;
    this.random = random;
    /** consecutive failed attempts */
    this.failures = 0;
  }

  /** A connection got through: the next failure starts a fresh series. */
  reset() {
    this.failures = 0;
  }

  /**
   * The delay before retry number `n` (1 for the first).
   * @param {number} n
   */
  backoff(n) {
    const o = this.options;
    return computeBackoff(n, { base: o.RECONNECT_INTERVAL, max: o.MAX_RECONNECT_INTERVAL, jitter: o.RECONNECT_JITTER, random: this.random });
  }

  /**
   * One more failure: the next attempt, or null when it is time to fall back.
   * @param {boolean} wasConnected the socket that ended had said `connected`
   * @param {number | undefined} code its close code (4029: back off longer)
   * @returns {{attempt: number, delay: number} | null}
   */
  next(wasConnected, code) {
    if (wasConnected) this.failures = 0;
    this.failures += 1;
    if (this.failures > this.options.MAX_RECONNECT_ATTEMPTS) {
      this.failures = 0;
      return null;
    }
    let delay = this.backoff(this.failures);
    if (code === 4029) delay = Math.max(delay, this.options.RATE_LIMIT_INTERVAL);
    return { attempt: this.failures, delay: delay };
  }

  /**
   * When to try the socket again in the background after a fallback.
   * @param {number} base ms
   */
  probeDelay(base) {
    const j = this.options.RECONNECT_JITTER;
    return Math.round(base * (1 - j + 2 * j * this.random()));
  }
}
