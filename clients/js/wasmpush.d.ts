// Types of the wasmpush client (wasmpush.js). Behaviour: docs/protocol.md, "The JavaScript client".

/** Close codes the client reacts to. */
export declare const CLOSE: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  ABNORMAL: 1006;
  INVALID_DATA: 1007;
  POLICY: 1008;
  TOO_BIG: 1009;
  RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  TOKEN: 4401;
}>;

/** Where the client is: trying its first connection, connected, waiting to connect again, or stopped for good. */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** Why the state changed: the close code and reason, and before a reconnect the wait chosen. */
export interface StateDetail {
  code?: number;
  reason?: string;
  delayMs?: number;
}

/** An error frame of the engine: `code` 0 is the plugin's business error; 4001–4007 and 5001–5004 in docs/protocol.md. */
export interface ErrorFrame {
  code: number;
  msg: string;
  data: unknown[];
}

export interface BackoffOptions {
  /** The first wait's ceiling (500 ms). */
  initialMs?: number;
  /** The largest ceiling (30 s). */
  maxMs?: number;
  /** How much the ceiling grows per failed attempt (2). */
  factor?: number;
}

export interface ConnectOptions<Params = unknown, Frame = unknown> {
  /** The plugin: connects to `URL/ws/PLUGIN`. Without it, `url` is used as it is. */
  plugin?: string;
  /** The params (a JSON object), sent on every new connection. */
  params?: Params;
  /** A JWT for plugins that need one. Not renewed: pass `getToken` for that. */
  token?: string;
  /** Gives a fresh JWT: called before each connection and before the token's `exp`. */
  getToken?: () => string | Promise<string>;
  /** The WebSocket class (default: the global one; in Node 20 it needs `--experimental-websocket`, or pass `ws`'s). */
  WebSocket?: unknown;
  backoff?: BackoffOptions;
  /** After a restart (1012) or going away (1001), the reconnect waits a random time below this (1000 ms). */
  restartSpreadMs?: number;
  /** A connection up this long resets the backoff (5000 ms). */
  stableMs?: number;
  onFrame?: ((frame: Frame) => void) | null;
  onError?: ((error: ErrorFrame) => void) | null;
  onState?: ((state: State, detail: StateDetail) => void) | null;
  /** The random source of the jitter (tests). */
  random?: () => number;
}

export declare class Client<Params = unknown, Frame = unknown> {
  readonly url: string;
  readonly state: State;
  readonly params: Params | undefined;
  /** Each frame the plugin pushes: parsed JSON, or the text if it is not JSON. */
  onFrame: ((frame: Frame) => void) | null;
  /** Each error frame of the engine. */
  onError: ((error: ErrorFrame) => void) | null;
  /** Each change of state. */
  onState: ((state: State, detail: StateDetail) => void) | null;
  /** Replaces the params: sent at once when connected, and on every new connection. */
  setParams(params: Params): void;
  /** Ends the client for good. */
  close(): void;
}

/** Connects to a plugin of the engine at `url`; the client reconnects by itself until `close()` or a refusal. */
export declare function connect<Params = unknown, Frame = unknown>(
  url: string,
  options?: ConnectOptions<Params, Frame>,
): Client<Params, Frame>;

/** Exponential backoff with full jitter. */
export declare class Backoff {
  constructor(options?: BackoffOptions & { random?: () => number });
  attempt: number;
  ceiling(): number;
  next(): number;
  reset(): void;
}

/** What a close code makes the client do. */
export declare function afterClose(code: number): 'soon' | 'renew' | 'stop' | 'backoff';

/** When a JWT expires (seconds since the epoch), if it says. */
export declare function tokenExpiry(token: string): number | undefined;

/** How long to wait before renewing a token that lives `lifetimeMs` more. */
export declare function renewalDelay(lifetimeMs: number): number;
