// The app's visibility and the network on their own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Presence } from '../src/presence.mjs';

test('hide with a grace: wait first; back in time changes nothing', () => {
  const p = new Presence();
  assert.equal(p.hide(3000), 'grace');
  assert.equal(p.paused(), false, 'still connected during the grace');
  assert.equal(p.hide(3000), null, 'a second hide changes nothing');
  assert.equal(p.show(), 'stay');
  assert.equal(p.graceOver(), null, 'a stale grace timer does nothing');
  assert.equal(p.paused(), false);
});

test('hide past the grace pauses; show resumes', () => {
  const p = new Presence();
  p.hide(3000);
  assert.equal(p.graceOver(), 'pause');
  assert.equal(p.paused(), true);
  assert.equal(p.show(), 'resume');
  assert.equal(p.paused(), false);
});

test('hide without a grace pauses at once; a show without a hide does nothing', () => {
  const p = new Presence();
  assert.equal(p.show(), null);
  assert.equal(p.hide(0), 'pause');
  assert.equal(p.paused(), true);
});

test('offline pauses at once, ends a pending grace as hidden; online resumes only when shown', () => {
  const p = new Presence();
  p.hide(3000);
  assert.equal(p.goOffline(), 'pause');
  assert.equal(p.goOnline(), null, 'still hidden');
  assert.equal(p.show(), 'resume');
  assert.equal(p.goOffline(), 'pause');
  assert.equal(p.show(), null, 'a show while offline waits for the network');
  assert.equal(p.goOnline(), 'resume');
});
