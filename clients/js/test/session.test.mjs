// A session's token and requests on their own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TokenSource, SessionRequests } from '../src/session.mjs';
import { fakeTransport, flush } from './helpers.mjs';

test('the token is asked once, concurrent callers share the call, a refresh asks again', async () => {
  const calls = [];
  const tokens = new TokenSource(async (ctx) => { calls.push(ctx); return 'tok-' + calls.length; }, 'exec-1');
  const [a, b] = await Promise.all([tokens.get(false), tokens.get(false)]);
  assert.equal(a, 'tok-1');
  assert.equal(b, 'tok-1');
  assert.equal(await tokens.get(false), 'tok-1');
  assert.equal(await tokens.refresh(), true, 'a different token');
  assert.deepEqual(calls, [{ executionId: 'exec-1', reason: 'initial' }, { executionId: 'exec-1', reason: 'refresh' }]);
});

test('a refresh that brings the same token says so; no token at all is an error', async () => {
  assert.equal(await new TokenSource(() => 'same', 'e').refresh(), true, 'none before');
  const same = new TokenSource(() => 'same', 'e');
  await same.get(false);
  assert.equal(await same.refresh(), false);
  await assert.rejects(new TokenSource(() => '', 'e').get(false), /no token/);
});

test('requests carry the token and the base URL; abortAll aborts every one in flight', async () => {
  const t = fakeTransport();
  const reqs = new SessionRequests(t, 'http://relay.test', new TokenSource(() => 'jwt', 'e'));
  const one = reqs.get('/v1/executions/e', null, 1000);
  const two = reqs.get('/v1/executions/e/events', { after: 3, wait: 0 }, 1000);
  await flush();
  assert.deepEqual(t.requests.map((r) => [r.url, r.token]), [
    ['http://relay.test/v1/executions/e', 'jwt'],
    ['http://relay.test/v1/executions/e/events?after=3&wait=0', 'jwt']
  ]);
  reqs.abortAll();
  await assert.rejects(one.promise, (e) => e.aborted === true);
  await assert.rejects(two.promise, (e) => e.aborted === true);
  assert.ok(t.requests.every((r) => r.aborted));
});

test('without an HTTP transport a request fails with a clear error', async () => {
  const reqs = new SessionRequests({ request: null }, 'http://x', new TokenSource(() => 't', 'e'));
  await assert.rejects(reqs.get('/p', null, 10).promise, /no HTTP transport/);
});
