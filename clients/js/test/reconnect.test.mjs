// The reconnect policy on its own: what each close means, and the back-off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeVerdict, ReconnectPolicy, isRefusalClose } from '../src/reconnect.mjs';
import { Delivery } from '../src/delivery.mjs';
import { DEFAULT_OPTIONS } from '../src/client.mjs';
import { DISCONNECTS, END_REASON } from './support/disconnects.mjs';

const live = { connected: true, latestSeq: 2 };
const opening = { connected: false, latestSeq: null };
const caughtUp = () => new Delivery({ lastSeq: 2 });

test('every code of the relay\'s disconnect table gets the verdict its "reconnect" says', () => {
  for (const { code, reason, reconnect } of DISCONNECTS) {
    const v = closeVerdict({ code, reason }, live, caughtUp());
    if (code === 1000 && !reconnect) assert.equal(v, 'finish', `${code} ${reason}`);
    else if (reconnect) assert.ok(['retry', 'refresh'].includes(v), `${code} ${reason}: ${v}`);
    else assert.equal(v, 'refused', `${code} ${reason}`);
  }
});

test('a 1000 that is not the relay\'s end asks the state endpoint after connected, retries before', () => {
  assert.equal(closeVerdict({ code: 1000, reason: 'interrupted' }, live, caughtUp()), 'check-end');
  assert.equal(closeVerdict({ code: 1000, reason: 'interrupted' }, opening, caughtUp()), 'retry');
  assert.equal(closeVerdict({ code: 1000, reason: END_REASON }, { connected: true, latestSeq: 9 }, caughtUp()), 'check-end');
});

test('codes never seen: 4000-4499 reconnect, 4500-4999 stop, anything else before connected is checked', () => {
  assert.equal(closeVerdict({ code: 4321 }, opening, caughtUp()), 'retry');
  assert.equal(closeVerdict({ code: 4777 }, opening, caughtUp()), 'refused');
  assert.equal(closeVerdict({ code: 1006 }, opening, caughtUp()), 'check-refused');
  assert.equal(closeVerdict({ code: 1006 }, live, caughtUp()), 'retry');
  assert.equal(closeVerdict({ code: 4001 }, live, caughtUp()), 'refresh');
  assert.equal(closeVerdict({ code: 4000, local: true }, opening, caughtUp()), 'retry');
  assert.ok(isRefusalClose(4500) && !isRefusalClose(4499) && !isRefusalClose(5000));
  assert.equal(closeVerdict({ code: 1008, reason: 'cursor not understood' }, opening, caughtUp()), 'refused', 'the same cursor again would be refused again');
});

test('back-off 3, 6, 12, 24, 48 s, then the fallback; a good connection starts a fresh series', () => {
  const p = new ReconnectPolicy(DEFAULT_OPTIONS, () => 0.5);
  const delays = [1, 2, 3, 4, 5].map(() => p.next(false, 1006).delay);
  assert.deepEqual(delays, [3000, 6000, 12000, 24000, 48000]);
  assert.equal(p.next(false, 1006), null);
  assert.deepEqual(p.next(false, 1006), { attempt: 1, delay: 3000 }, 'counting starts again after a fallback');
  p.next(false, 1006);
  assert.deepEqual(p.next(true, 1012), { attempt: 1, delay: 3000 });
});

test('4029 waits at least RATE_LIMIT_INTERVAL; probes are jittered around their base', () => {
  const p = new ReconnectPolicy(DEFAULT_OPTIONS, () => 0);
  assert.equal(p.next(true, 4029).delay, DEFAULT_OPTIONS.RATE_LIMIT_INTERVAL);
  assert.equal(p.probeDelay(60000), 48000);
  assert.equal(new ReconnectPolicy(DEFAULT_OPTIONS, () => 0.999999).probeDelay(60000), 72000);
});
