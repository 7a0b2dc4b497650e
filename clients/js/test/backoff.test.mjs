import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeBackoff, parseRetryAfter, DEFAULT_OPTIONS } from '../src/index.mjs';

const o = { base: 3000, max: 60000, jitter: 0.2 };

test('defaults are the product values', () => {
  assert.equal(DEFAULT_OPTIONS.MAX_RECONNECT_ATTEMPTS, 5);
  assert.equal(DEFAULT_OPTIONS.RECONNECT_INTERVAL, 3000);
  assert.equal(DEFAULT_OPTIONS.HEARTBEAT_INTERVAL, 30000);
  assert.equal(DEFAULT_OPTIONS.CONNECTION_TIMEOUT, 10000);
  assert.equal(DEFAULT_OPTIONS.ENABLE_WEBSOCKET, true);
});

test('without jitter the schedule doubles: 3, 6, 12, 24, 48 s', () => {
  const mid = { ...o, random: () => 0.5 };
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => computeBackoff(n, mid)), [3000, 6000, 12000, 24000, 48000]);
});

test('the ceiling caps the doubling', () => {
  assert.equal(computeBackoff(6, { ...o, random: () => 0.5 }), 60000);
  assert.equal(computeBackoff(30, { ...o, random: () => 0.5 }), 60000);
});

test('jitter stays within +/-20% and actually spreads clients', () => {
  for (let n = 1; n <= 5; n++) {
    const nominal = 3000 * 2 ** (n - 1);
    assert.equal(computeBackoff(n, { ...o, random: () => 0 }), nominal * 0.8);
    assert.ok(computeBackoff(n, { ...o, random: () => 0.999999 }) <= nominal * 1.2);
    const values = new Set();
    for (let i = 0; i < 500; i++) {
      const d = computeBackoff(n, o);
      assert.ok(d >= nominal * 0.8 && d <= nominal * 1.2, `attempt ${n}: ${d}`);
      values.add(d);
    }
    assert.ok(values.size > 100, 'delays differ between clients');
  }
});

test('Retry-After in seconds or as an HTTP date', () => {
  assert.equal(parseRetryAfter('7', 1), 7000);
  assert.equal(parseRetryAfter('1.5', 1), 1500);
  assert.equal(parseRetryAfter(undefined, 1234), 1234);
  assert.equal(parseRetryAfter('soon', 1234), 1234);
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', 1, now), 10000);
});
