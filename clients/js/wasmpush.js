// wasmpush browser and Node client: one connection to a plugin that comes back by itself.
//
// - Reconnects with exponential backoff and full jitter, and sends the current params on every
//   new connection.
// - A restart (close 1012) or a server going away (1001): back soon, spread over a second, so
//   thousands of clients do not return in one burst.
// - A refusal (1008, a 4xxx close code, a refused token): stops and says why; a refused or expired
//   token is retried only with a new token from `getToken`.
// - Renews its token before `exp` with `getToken` and the engine's `{"$token": …}` message.
//
// Close codes and the protocol: docs/protocol.md. No dependencies.

/** Close codes the client reacts to. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_BIG: 1009,
  RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  TOKEN: 4401,
});

/** Subprotocols: the engine's own, and the ask for refusals as close codes (4000 + HTTP status). */
const PROTOCOL = 'wasmpush';
const REFUSALS_IN_BAND = 'wasmpush.refusals';
const BEARER_PREFIX = 'wasmpush.bearer.';

/**
 * Exponential backoff with full jitter: the n-th wait is uniform in [0, min(maxMs, initialMs·factorⁿ)).
 * Spreads clients that failed together, and caps the wait.
 */
export class Backoff {
  constructor({ initialMs = 500, maxMs = 30_000, factor = 2, random = Math.random } = {}) {
    if (!(initialMs > 0 && maxMs >= initialMs && factor >= 1)) {
      throw new RangeError('backoff needs initialMs > 0, maxMs >= initialMs and factor >= 1');
    }
    Object.assign(this, { initialMs, maxMs, factor, random });
    this.attempt = 0;
  }

  /** The ceiling of the next wait, in milliseconds. */
  ceiling() {
    return Math.min(this.maxMs, this.initialMs * this.factor ** this.attempt);
  }

  /** The next wait, in milliseconds; each call moves one step up. */
  next() {
    const wait = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    return wait;
  }

  /** Back to the first step (after a connection that stayed up). */
  reset() {
    this.attempt = 0;
  }
}

/** What a close tells the client to do: `reconnect` soon or after backoff, `renew` the token, or `stop`. */
export function afterClose(code) {
  if (code === CLOSE.RESTART || code === CLOSE.GOING_AWAY) return 'soon';
  if (code === CLOSE.TOKEN) return 'renew';
  if (code === CLOSE.POLICY || code === CLOSE.TOO_BIG || code === CLOSE.INVALID_DATA || code === CLOSE.PROTOCOL_ERROR) {
    return 'stop';
  }
  if (code >= 4000 && code <= 4999) return 'stop';
  return 'backoff';
}

/** Seconds since the epoch at which a JWT expires, or undefined if it carries no readable `exp`. */
export function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), '='))).exp;
    return typeof exp === 'number' ? exp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * When to renew a token that lives `lifetimeMs` more: a fifth of its life before `exp`, at most 30 s
 * before, never in the past.
 */
export function renewalDelay(lifetimeMs) {
  const margin = Math.min(30_000, lifetimeMs / 5);
  return Math.max(0, lifetimeMs - margin);
}

/** Whether a text frame is one of the engine's error frames: `{"code":N,"msg":"…","data":[…]}`. */
function errorFrame(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value) &&
    typeof value.code === 'number' && typeof value.msg === 'string' && Array.isArray(value.data) &&
    Object.keys(value).length === 3;
}

/**
 * Connects to `plugin` on the engine at `url` (`ws://HOST:9503`, or a full `ws://HOST/ws/NAME` without `plugin`).
 * Options: `params` (an object), `token` or `getToken` (async, returns a JWT), `WebSocket` (a class such as `ws`'s;
 * default the global one), `backoff` (`{initialMs, maxMs, factor}`), `restartSpreadMs` (1000), `stableMs` (5000),
 * `onFrame`, `onError`, `onState`, and `random` (tests).
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export class Client {
  constructor(url, options) {
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== 'function') {
      throw new TypeError('no WebSocket class: pass { WebSocket } (Node 20 needs --experimental-websocket or the `ws` package)');
    }
    if (options.token !== undefined && options.getToken !== undefined) {
      throw new TypeError('pass `token` or `getToken`, not both');
    }
    this.url = options.plugin ? `${url.replace(/\/+$/, '')}/ws/${encodeURIComponent(options.plugin)}` : url;
    this.params = options.params;
    this.token = options.token;
    this.state = 'connecting';
    this.onFrame = options.onFrame ?? null;
    this.onError = options.onError ?? null;
    this.onState = options.onState ?? null;
    this._WebSocket = WebSocketClass;
    this._getToken = options.getToken;
    this._random = options.random ?? Math.random;
    this._backoff = new Backoff({ ...options.backoff, random: this._random });
    this._restartSpreadMs = options.restartSpreadMs ?? 1000;
    this._stableMs = options.stableMs ?? 5000;
    this._socket = null;
    this._timer = null;
    this._renewTimer = null;
    this._openedAt = 0;
    this._refusedToken = undefined;
    this._closed = false;
    // Handlers are usually set right after `connect` returns: the first attempt starts after them.
    queueMicrotask(() => this._open());
  }

  /** Replaces the params: sent at once when connected, and on every new connection. */
  setParams(params) {
    this.params = params;
    this._sendParams();
  }

  /** Ends the client for good. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._renewTimer);
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onclose = null;
      socket.close(CLOSE.NORMAL);
    }
    this._setState('closed', { reason: 'closed by the client' });
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState?.(state, detail);
  }

  async _open() {
    if (this._closed) return;
    if (this._getToken) {
      try {
        this.token = await this._getToken();
      } catch (err) {
        this.onError?.({ code: 0, msg: `getToken failed: ${err?.message ?? err}`, data: [] });
        return this._retry('backoff', { code: CLOSE.ABNORMAL, reason: 'no token' });
      }
      if (this._closed) return;
      if (this._refusedToken !== undefined && this.token === this._refusedToken) {
        return this._stop({ code: CLOSE.TOKEN, reason: 'the token was refused and getToken gave no new one' });
      }
    }
    const protocols = [PROTOCOL, REFUSALS_IN_BAND];
    if (this.token) protocols.push(BEARER_PREFIX + this.token);
    let socket;
    try {
      socket = new this._WebSocket(this.url, protocols);
    } catch (err) {
      return this._stop({ code: CLOSE.ABNORMAL, reason: `cannot connect: ${err?.message ?? err}` });
    }
    this._socket = socket;
    const usedToken = this.token;
    socket.onopen = () => {
      // A refusal in band: the engine answers this subprotocol and closes with 4000 + the HTTP status.
      if (socket.protocol === REFUSALS_IN_BAND) return;
      this._openedAt = Date.now();
      this._refusedToken = undefined;
      this._setState('open');
      this._sendParams();
      this._scheduleRenewal();
    };
    socket.onmessage = (message) => this._received(message.data);
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      clearTimeout(this._renewTimer);
      const stable = this._openedAt && Date.now() - this._openedAt >= this._stableMs;
      if (stable) this._backoff.reset();
      this._openedAt = 0;
      const detail = { code: event.code, reason: event.reason };
      const next = afterClose(event.code);
      if (next === 'renew') {
        if (!this._getToken) return this._stop(detail);
        this._refusedToken = usedToken;
        return this._retry('backoff', detail);
      }
      if (next === 'stop') return this._stop(detail);
      this._retry(next, detail);
    };
  }

  _received(text) {
    if (typeof text !== 'string') return;
    let value = text;
    try {
      value = JSON.parse(text);
    } catch {
      // A plugin may push text that is not JSON: handed on as it is.
    }
    if (errorFrame(value)) this.onError?.(value);
    else this.onFrame?.(value);
  }

  _sendParams() {
    if (this.params !== undefined && this._socket && this._socket.readyState === 1) {
      this._socket.send(JSON.stringify(this.params));
    }
  }

  /** Renews the token with `getToken` before it expires, without reconnecting. */
  _scheduleRenewal() {
    clearTimeout(this._renewTimer);
    const exp = this.token && this._getToken ? tokenExpiry(this.token) : undefined;
    if (exp === undefined) return;
    this._renewTimer = setTimeout(async () => {
      let token;
      try {
        token = await this._getToken();
      } catch (err) {
        this.onError?.({ code: 0, msg: `getToken failed: ${err?.message ?? err}`, data: [] });
        return;
      }
      if (this._closed || !this._socket || this._socket.readyState !== 1 || token === this.token) return;
      this.token = token;
      this._socket.send(JSON.stringify({ $token: token }));
      this._scheduleRenewal();
    }, renewalDelay(exp * 1000 - Date.now()));
  }

  _retry(how, detail) {
    if (this._closed) return;
    const delayMs = how === 'soon' ? Math.floor(this._random() * this._restartSpreadMs) : this._backoff.next();
    this._setState('reconnecting', { ...detail, delayMs });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  _stop(detail) {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._renewTimer);
    this._setState('closed', detail);
  }
}
