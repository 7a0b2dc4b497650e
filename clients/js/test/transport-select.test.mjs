// Transport selection on its own: which adapters a client gets, and the
// verdict when none can work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveTransport, transportProblem, getGlobal } from '../src/transport-select.mjs';

const wxLike = () => ({ connectSocket() {}, request() {}, onAppHide() {}, offAppHide() {} });

test('a given wx wins over the browser globals', () => {
  const t = resolveTransport({ wx: wxLike() });
  assert.equal(t.name, 'wx');
  assert.equal(typeof t.openSocket, 'function');
  assert.equal(typeof t.request, 'function');
});

test('a global wx is used unless the page asks for the browser transports', () => {
  const g = getGlobal();
  g.wx = wxLike();
  try {
    assert.equal(resolveTransport({}).name, 'wx');
    assert.equal(resolveTransport({ platform: 'browser', WebSocket: function () {} }).name, 'browser');
  } finally {
    delete g.wx;
  }
});

test('a wx without connectSocket is not a mini-program', () => {
  const g = getGlobal();
  g.wx = {};
  try {
    assert.equal(resolveTransport({ WebSocket: function () {} }).name, 'browser');
  } finally {
    delete g.wx;
  }
});

test('a custom transport is completed from the detected one; a part given as null stays null', () => {
  const open = () => ({ send: () => true, close() {} });
  const t = resolveTransport({ transport: { openSocket: open }, WebSocket: function () {}, fetch: () => Promise.resolve() });
  assert.equal(t.openSocket, open);
  assert.equal(typeof t.request, 'function');
  assert.equal(resolveTransport({ transport: { openSocket: open, request: null } }).request, null);
});

test('transportProblem: none at all is a clear problem; either part alone is not', () => {
  assert.match(transportProblem({ name: 'x', openSocket: null, request: null, lifecycle: null }), /no transport/);
  assert.equal(transportProblem({ name: 'x', openSocket: null, request: () => null, lifecycle: null }), null);
  assert.equal(transportProblem({ name: 'x', openSocket: () => null, request: null, lifecycle: null }), null);
});
