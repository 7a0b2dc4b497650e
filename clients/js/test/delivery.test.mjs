// Delivery on its own: the cursor (epoch + seq), de-duplication, resets and
// the end of the stream, with no timer, socket or request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Delivery, isTerminalEvent, END_OF_STREAM_REASON } from '../src/delivery.mjs';
import { END_REASON } from './support/disconnects.mjs';

const e = (seq, event = 'progress', data = {}) => ({ type: 'diagnosis_update', seq, event, data });

test('a fresh cursor sends no last_seq on the socket and after=0 on polling', () => {
  const d = new Delivery();
  assert.deepEqual(d.cursor('last_seq'), {});
  assert.deepEqual(d.cursor('after'), { after: 0 });
});

test('a resume point with an epoch resumes with both; an epoch without a seq is dropped', () => {
  assert.deepEqual(new Delivery({ lastSeq: 4, epoch: 'e1' }).cursor('last_seq'), { last_seq: 4, epoch: 'e1' });
  assert.deepEqual(new Delivery({ lastSeq: 4, epoch: 'e1' }).cursor('after'), { after: 4, epoch: 'e1' });
  assert.deepEqual(new Delivery({ lastSeq: 0, epoch: 'e1' }).cursor('last_seq'), {});
  assert.equal(new Delivery({ lastSeq: -3 }).seq, 0);
});

test('each seq of an epoch is accepted once and in order; events without a seq pass', () => {
  const d = new Delivery();
  const got = [1, 2, 2, 1, 3, 5, 4].filter((s) => d.accept(e(s)));
  assert.deepEqual(got, [1, 2, 3, 5]);
  assert.equal(d.accept({ type: 'diagnosis_update', event: 'progress' }), true);
  assert.equal(d.accept(null), false);
});

test('nothing is accepted after the end of the stream', () => {
  const d = new Delivery();
  d.terminal = true;
  assert.equal(d.accept(e(1)), false);
});

test('the same epoch is no reset; its events go on after the cursor', () => {
  const d = new Delivery({ lastSeq: 3, epoch: 'e1' });
  const r = d.opened({ type: 'connected', epoch: 'e1', latest_seq: 5, resumed: true }, 3);
  assert.equal(r.reset, false);
  assert.equal(d.seq, 3);
  assert.equal(d.accept(e(3)), false);
  assert.equal(d.accept(e(4)), true);
});

test('"reset": true restarts the cursor in the new epoch and names both epochs', () => {
  const d = new Delivery({ lastSeq: 7, epoch: 'old' });
  const r = d.opened({ epoch: 'new', reset: true, latest_seq: 2 }, 7);
  assert.deepEqual(r, { reset: true, previousEpoch: 'old', previousSeq: 7, epoch: 'new', latestSeq: 2, reopen: false });
  assert.equal(d.epoch, 'new');
  assert.deepEqual([1, 2].filter((s) => d.accept(e(s))), [1, 2]);
});

test('an epoch other than ours is a reset even when the relay does not say so', () => {
  const d = new Delivery({ lastSeq: 3, epoch: 'a' });
  assert.equal(d.opened({ epoch: 'b', latest_seq: 1 }, 3).reset, true);
  assert.equal(d.seq, 0);
});

test('the first epoch learnt is no reset', () => {
  const d = new Delivery();
  assert.equal(d.opened({ epoch: 'a', latest_seq: 4 }, 0).reset, false);
  assert.equal(d.epoch, 'a');
});

test('a v1 relay (no epoch) whose latest seq fell below ours: reset, and reopen from the start', () => {
  const d = new Delivery({ lastSeq: 5 });
  const r = d.opened({ latest_seq: 0 }, 5);
  assert.equal(r.reset, true);
  assert.equal(r.reopen, true);
  assert.deepEqual(d.cursor('last_seq'), {});
});

test('the relay\'s end of stream: 1000 with its reason, after connected, nothing missing', () => {
  assert.equal(END_OF_STREAM_REASON, END_REASON);
  const d = new Delivery({ lastSeq: 4 });
  const sock = { connected: true, latestSeq: 4 };
  assert.equal(d.endsStream({ code: 1000, reason: END_REASON }, sock), true);
  assert.equal(d.endsStream({ code: 1000, reason: 'interrupted' }, sock), false, "WeChat's own 1000");
  assert.equal(d.endsStream({ code: 1000, reason: '' }, sock), false);
  assert.equal(d.endsStream({ code: 1000, reason: END_REASON, local: true }, sock), false);
  assert.equal(d.endsStream({ code: 1000, reason: END_REASON }, { connected: false, latestSeq: 4 }), false);
  assert.equal(d.endsStream({ code: 1000, reason: END_REASON }, { connected: true, latestSeq: 6 }), false, 'events missing');
  assert.equal(d.endsStream({ code: 1001, reason: END_REASON }, sock), false);
});

test('a polling or state answer ends the stream when terminal, caught up, and of our epoch', () => {
  const d = new Delivery({ lastSeq: 4, epoch: 'e1' });
  assert.equal(d.endsPolling({ terminal: true, latest_seq: 4, epoch: 'e1' }), true);
  assert.equal(d.endsPolling({ terminal: true, latest_seq: 4 }), true);
  assert.equal(d.endsPolling({ terminal: true, latest_seq: 5, epoch: 'e1' }), false);
  assert.equal(d.endsPolling({ terminal: false, latest_seq: 4, epoch: 'e1' }), false);
  assert.equal(d.endsPolling({ terminal: true, latest_seq: 1, epoch: 'e2' }), false);
  assert.equal(d.endsPolling(null), false);
});

test('complete and a non-recoverable error are terminal; a recoverable error is not', () => {
  assert.equal(isTerminalEvent(e(1, 'complete')), true);
  assert.equal(isTerminalEvent(e(1, 'error', { error: 'x' })), true);
  assert.equal(isTerminalEvent(e(1, 'error', { error: 'x', recoverable: true })), false);
  assert.equal(isTerminalEvent(e(1, 'progress')), false);
  assert.equal(isTerminalEvent(null), false);
});
