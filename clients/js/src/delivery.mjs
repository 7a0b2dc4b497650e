// Delivery: the cursor (stream epoch + seq), de-duplication, stream resets
// and the end of the stream. Pure: no timer, no socket, no request; the
// client tells it what arrived and it answers what that means.
// See docs/client.md ("Exactly once, epochs and resets").

/** The reason the relay gives when it closes a socket with 1000 at the end of the stream. */
export const END_OF_STREAM_REASON = 'execution finished';

/**
 * complete, and an error that is not marked recoverable, end the execution.
 * @param {any} evt
 */
export function isTerminalEvent(evt) {
  if (!evt || typeof evt !== 'object') return false;
  const data = evt.data && typeof evt.data === 'object' ? evt.data : {};
  return evt.event === 'complete' || (evt.event === 'error' && data.recoverable !== true);
}

/**
 * A stream epoch as the relay sends it; null when absent (a v1 relay).
 * @param {any} value
 * @returns {string | null}
 */
function epochOf(value) {
  return typeof value === 'string' && value ? value : null;
}

/**
 * The cursor of one watched execution and the rules that keep delivery
 * exactly once across reconnects, transport switches and stream resets.
 */
export class Delivery {
  /**
   * @param {{lastSeq?: number, epoch?: string} | undefined} resume where a previous page stopped
   */
  constructor(resume) {
    const seq = resume && typeof resume.lastSeq === 'number' && resume.lastSeq > 0 ? resume.lastSeq : 0;
    /** last seq delivered in `epoch` */
    this.seq = seq;
    /** the stream epoch `seq` belongs to (null until the relay named one) */
    this.epoch = seq > 0 && resume ? epochOf(resume.epoch) : null;
    /** a terminal event was delivered, or the relay said the stream ended */
    this.terminal = false;
  }

  /**
   * The resume cursor for a socket URL (`last_seq`, `epoch`) or a poll
   * (`after`, `epoch`); the epoch travels only with a seq it qualifies.
   * @param {'last_seq' | 'after'} name
   * @returns {Record<string, string | number | undefined>}
   */
  cursor(name) {
    /** @type {Record<string, string | number | undefined>} */
    const q = {};
    if (name === 'after' || this.seq > 0) q[name] = this.seq;
    if (this.seq > 0 && this.epoch) q.epoch = this.epoch;
    return q;
  }

  /**
   * A `connected` frame or a polling answer: whether the stream was reset
   * under this cursor, and the new cursor. A reset is the relay saying so
   * (`reset: true`), an epoch other than the one we hold, or, from a v1
   * relay without epochs, a latest seq below ours.
   * @param {any} msg
   * @param {number} requested the seq the request resumed after
   * @returns {{reset: boolean, previousEpoch: string | null, previousSeq: number, epoch: string | null, latestSeq: number | null, reopen: boolean}}
   */
  opened(msg, requested) {
    const epoch = epochOf(msg.epoch);
    const latest = typeof msg.latest_seq === 'number' ? msg.latest_seq : null;
    const legacy = epoch === null && latest !== null && latest < this.seq;
    const reset = msg.reset === true || this.isOtherEpoch(epoch) || legacy;
    const out = { reset: reset, previousEpoch: this.epoch, previousSeq: this.seq, epoch: epoch, latestSeq: latest, reopen: false };
    if (reset) this.seq = 0;
    if (epoch !== null) this.epoch = epoch;
    // a v1 relay replays only after the cursor we sent: ask again from the start
    out.reopen = legacy && requested > 0;
    return out;
  }

  /**
   * Whether the relay names an epoch other than the one this cursor holds.
   * @param {string | null} epoch
   */
  isOtherEpoch(epoch) {
    return epoch !== null && this.epoch !== null && epoch !== this.epoch;
  }

  /**
   * Records an event of the current epoch; false when it was seen already
   * (or delivery ended).
   * @param {any} evt
   */
  accept(evt) {
    if (!evt || typeof evt !== 'object' || this.terminal) return false;
    if (typeof evt.seq !== 'number') return true;
    if (evt.seq <= this.seq) return false;
    this.seq = evt.seq;
    return true;
  }

  /**
   * Whether a socket close is the relay's own end of the stream: 1000 with
   * its end-of-stream reason, after `connected`, with everything it announced
   * delivered. A bare 1000 is not: WeChat closes sockets with 1000
   * "interrupted" when the app goes to the background or the network changes.
   * @param {{code: number, reason?: string, local?: boolean}} info
   * @param {{connected: boolean, latestSeq: number | null}} socket
   */
  endsStream(info, socket) {
    if (info.code !== 1000 || info.local || !socket.connected || info.reason !== END_OF_STREAM_REASON) return false;
    return socket.latestSeq === null || this.seq >= socket.latestSeq;
  }

  /**
   * Whether a polling answer or a state answer says the stream ended and
   * nothing more is to come (the terminal event may have expired from history).
   * @param {any} body
   */
  endsPolling(body) {
    if (!body || body.terminal !== true) return false;
    if (this.isOtherEpoch(epochOf(body.epoch))) return false;
    return typeof body.latest_seq !== 'number' || this.seq >= body.latest_seq;
  }
}
