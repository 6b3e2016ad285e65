// Unit tests of the client's schedule (node --test): the backoff's jitter, cap and reset, what
// each close code leads to, token renewal times. A fake WebSocket stands in for the engine; the
// end-to-end tests against a real engine run in Chromium (tests/all/js_client.rs).
import { test, mock } from 'node:test';
import assert from 'node:assert/strict';

import { Backoff, CLOSE, afterClose, connect, renewalDelay, tokenExpiry } from '../wasmpush.js';

test('full jitter: each wait is uniform below a ceiling that doubles', () => {
  const low = new Backoff({ initialMs: 100, maxMs: 10_000, random: () => 0 });
  const high = new Backoff({ initialMs: 100, maxMs: 10_000, random: () => 0.999_999 });
  assert.deepEqual([0, 1, 2, 3].map(() => low.next()), [0, 0, 0, 0]);
  assert.deepEqual([0, 1, 2, 3].map(() => high.next()), [99, 199, 399, 799]);
  // Spread: a thousand clients at the same step do not pick one wait.
  const waits = new Set(Array.from({ length: 1000 }, () => new Backoff({ initialMs: 1000 }).next()));
  assert.ok(waits.size > 500, `${waits.size} distinct waits of 1000`);
});

test('the ceiling stops at maxMs', () => {
  const backoff = new Backoff({ initialMs: 500, maxMs: 30_000, random: () => 0.999_999 });
  const waits = Array.from({ length: 12 }, () => backoff.next());
  assert.equal(Math.max(...waits), 29_999);
  assert.equal(backoff.ceiling(), 30_000);
  assert.throws(() => new Backoff({ initialMs: 0 }), RangeError);
  assert.throws(() => new Backoff({ initialMs: 10, maxMs: 5 }), RangeError);
});

test('close codes: restarts come back soon, refusals stop, token refusals renew', () => {
  assert.equal(afterClose(CLOSE.RESTART), 'soon');
  assert.equal(afterClose(CLOSE.GOING_AWAY), 'soon');
  assert.equal(afterClose(CLOSE.ABNORMAL), 'backoff');
  assert.equal(afterClose(CLOSE.TRY_AGAIN_LATER), 'backoff');
  for (const code of [CLOSE.POLICY, 4400, 4403, 4404, 4999, CLOSE.TOO_BIG]) assert.equal(afterClose(code), 'stop', code);
  assert.equal(afterClose(CLOSE.TOKEN), 'renew');
});

test('a token is renewed a fifth of its life before exp, at most 30 s before', () => {
  assert.equal(renewalDelay(5_000), 4_000);
  assert.equal(renewalDelay(3_600_000), 3_570_000);
  assert.equal(renewalDelay(-1_000), 0);
  const payload = Buffer.from(JSON.stringify({ sub: 'a', exp: 1_900_000_000 })).toString('base64url');
  assert.equal(tokenExpiry(`e30.${payload}.sig`), 1_900_000_000);
  assert.equal(tokenExpiry('not a token'), undefined);
});

/** A WebSocket double: the test opens and closes it, and reads what the client sent. */
class FakeSocket {
  static made = [];
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, sent: [], readyState: 0 });
    FakeSocket.made.push(this);
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  drop(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  send(text) {
    this.sent.push(text);
  }
  close() {
    this.readyState = 3;
  }
}

function fakeClient(options) {
  FakeSocket.made = [];
  const states = [];
  const client = connect('ws://engine', { plugin: 'quote', WebSocket: FakeSocket, ...options });
  client.onState = (state, detail) => states.push([state, detail]);
  return { client, states };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

test('the backoff resets after a connection that stayed up, not after a short one', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const { client, states } = fakeClient({ random: () => 0.999_999, backoff: { initialMs: 100 }, stableMs: 5000 });
  await settle();
  const waits = [];
  for (let attempt = 0; attempt < 3; attempt += 1) {
    FakeSocket.made.at(-1).drop(CLOSE.ABNORMAL);
    waits.push(states.at(-1)[1].delayMs);
    t.mock.timers.tick(states.at(-1)[1].delayMs);
    await settle();
  }
  assert.deepEqual(waits, [99, 199, 399], 'failed attempts climb');
  // Up for a second only: still climbing.
  FakeSocket.made.at(-1).open();
  t.mock.timers.tick(1000);
  FakeSocket.made.at(-1).drop(CLOSE.ABNORMAL);
  assert.equal(states.at(-1)[1].delayMs, 799);
  t.mock.timers.tick(799);
  await settle();
  // Up for five seconds: back to the first step.
  FakeSocket.made.at(-1).open();
  t.mock.timers.tick(5000);
  FakeSocket.made.at(-1).drop(CLOSE.ABNORMAL);
  assert.equal(states.at(-1)[1].delayMs, 99);
  client.close();
});

test('a restart reconnects within the spread and resends the latest params', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const { client, states } = fakeClient({ params: { symbol: 'AAPL' }, restartSpreadMs: 1000, random: () => 0.5 });
  await settle();
  const first = FakeSocket.made[0];
  assert.equal(first.url, 'ws://engine/ws/quote');
  assert.deepEqual(first.protocols, ['wasmpush', 'wasmpush.refusals']);
  first.open();
  assert.deepEqual(first.sent, ['{"symbol":"AAPL"}']);
  first.drop(CLOSE.RESTART, 'service restart');
  assert.deepEqual(states.at(-1), ['reconnecting', { code: 1012, reason: 'service restart', delayMs: 500 }]);
  client.setParams({ symbol: 'MSFT' });
  t.mock.timers.tick(500);
  await settle();
  const second = FakeSocket.made[1];
  second.open();
  assert.deepEqual(second.sent, ['{"symbol":"MSFT"}'], 'the params set while away are the ones sent');
  assert.equal(client.state, 'open');
  client.close();
  assert.equal(client.state, 'closed');
});

test('a refusal stops for good; a refused token is retried only with a new one', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const refused = fakeClient({});
  await settle();
  FakeSocket.made[0].drop(4404, 'unknown plugin `quote`');
  assert.deepEqual(refused.states.at(-1), ['closed', { code: 4404, reason: 'unknown plugin `quote`' }]);
  t.mock.timers.tick(60_000);
  await settle();
  assert.equal(FakeSocket.made.length, 1, 'no retry after a refusal');

  const tokens = ['t1', 't2', 't2'];
  const renewing = fakeClient({ getToken: async () => tokens.shift(), random: () => 0 });
  await settle();
  assert.ok(FakeSocket.made[0].protocols.includes('wasmpush.bearer.t1'));
  FakeSocket.made[0].drop(CLOSE.TOKEN, 'token expired');
  assert.equal(renewing.client.state, 'reconnecting');
  t.mock.timers.tick(1);
  await settle();
  assert.ok(FakeSocket.made[1].protocols.includes('wasmpush.bearer.t2'), 'a new token is tried');
  FakeSocket.made[1].drop(CLOSE.TOKEN, 'token invalid: signature');
  t.mock.timers.tick(1);
  await settle();
  assert.equal(FakeSocket.made.length, 2, 'the same refused token is not sent again');
  assert.equal(renewing.states.at(-1)[0], 'closed');

  const fixed = fakeClient({ token: 'static' });
  await settle();
  FakeSocket.made[0].drop(CLOSE.TOKEN, 'token expired');
  assert.equal(fixed.client.state, 'closed', 'without getToken there is no new token');
});

test('engine error frames go to onError, pushes to onFrame', async () => {
  const frames = [];
  const errors = [];
  const { client } = fakeClient({ onFrame: (f) => frames.push(f), onError: (e) => errors.push(e) });
  await settle();
  const socket = FakeSocket.made[0];
  socket.open();
  socket.onmessage({ data: '{"symbol":"AAPL","seq":1}' });
  socket.onmessage({ data: '{"code":5001,"msg":"plugin failed","data":[]}' });
  socket.onmessage({ data: 'plain text' });
  assert.deepEqual(frames, [{ symbol: 'AAPL', seq: 1 }, 'plain text']);
  assert.deepEqual(errors, [{ code: 5001, msg: 'plugin failed', data: [] }]);
  client.close();
});

test('a token is renewed over the open connection before it expires', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const now = Date.now();
  const jwt = (exp) => `e30.${Buffer.from(JSON.stringify({ exp })).toString('base64url')}.sig`;
  const tokens = [jwt(Math.floor(now / 1000) + 10), jwt(Math.floor(now / 1000) + 100)];
  const getToken = mock.fn(async () => tokens.shift());
  const { client } = fakeClient({ getToken });
  await settle();
  const socket = FakeSocket.made[0];
  socket.open();
  t.mock.timers.tick(7_000);
  await settle();
  assert.equal(socket.sent.length, 0, 'not yet');
  t.mock.timers.tick(2_000);
  await settle();
  assert.equal(getToken.mock.callCount(), 2);
  assert.deepEqual(socket.sent, [JSON.stringify({ $token: client.token })]);
  client.close();
});
