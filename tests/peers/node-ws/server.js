// The Node.js `ws` peer of `just bench`: the `quote` workload of docs/quote.md served as a
// well-written Node.js push server serves it, so wasmpush is measured against it in the same run,
// on the same cores, under the same load generator.
//
// The session is wasmpush's (docs/protocol.md): params from `?params=` or a text frame (pushed at
// once), a push to every connection with params every 200 ms, an error frame once and then parked
// until new params, `{"code":4001,…}` for params that are not a JSON object. A connection's
// symbol, hash and nonce are worked out once per params change, not once per push. One timer
// walks every connection each tick, as the original Swoole design did. The listen backlog is
// tokio's, which wasmpush uses: 1024.
//
// Usage: node server.js [--listen HOST:PORT]   serves; GET /status answers {"connections","pushes"}
//        node server.js --self-test           checks the frames against docs/quote.md's table

'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const TICK_MS = 200;
const PING_MS = 25_000;
const MAX_PARAMS_BYTES = 4096;
const FAIL_FRAME = '{"code":0,"msg":"symbol FAIL is not tradable","data":[]}';

/** FNV-1a, 32 bit, over the UTF-8 bytes of `text`. */
function fnv1a32(text) {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(text, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** What a connection's pushes need from its params, worked out once per change. */
function quoteState(params) {
  const symbol = typeof params.symbol === 'string' ? params.symbol : 'NONE';
  return {
    fails: symbol === 'FAIL',
    symbolJson: JSON.stringify(symbol),
    hashMod: fnv1a32(symbol) % 10000,
    nonceJson: Object.hasOwn(params, 'nonce') ? JSON.stringify(params.nonce) : 'null',
  };
}

/** The frame of push number `seq` at `ts` (ms since the epoch). */
function quoteFrame(state, seq, ts) {
  const cents = state.hashMod + seq;
  const price = `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, '0')}`;
  return `{"symbol":${state.symbolJson},"seq":${seq},"ts":${ts},"price":${price},"nonce":${state.nonceJson}}`;
}

/** Checks the frames against docs/quote.md's table; exits non-zero on a mismatch. */
function selfTest() {
  const ts = 1700000000000;
  const table = [
    ['{"symbol":"AAPL","nonce":7}', 1, '{"symbol":"AAPL","seq":1,"ts":1700000000000,"price":29.56,"nonce":7}'],
    ['{}', 1, '{"symbol":"NONE","seq":1,"ts":1700000000000,"price":62.20,"nonce":null}'],
    ['{"symbol":5}', 3, '{"symbol":"NONE","seq":3,"ts":1700000000000,"price":62.22,"nonce":null}'],
    ['{"symbol":"SYM0"}', 100, '{"symbol":"SYM0","seq":100,"ts":1700000000000,"price":49.60,"nonce":null}'],
    ['{"symbol":"BTCUSDT","nonce":"n-1"}', 2, '{"symbol":"BTCUSDT","seq":2,"ts":1700000000000,"price":15.66,"nonce":"n-1"}'],
  ];
  let failures = 0;
  for (const [params, seq, expected] of table) {
    const frame = quoteFrame(quoteState(JSON.parse(params)), seq, ts);
    if (frame !== expected) {
      console.error(`self-test: ${params} seq ${seq}: got ${frame}, expected ${expected}`);
      failures += 1;
    }
  }
  if (fnv1a32('é€') !== 1682486103 || !quoteState({ symbol: 'FAIL' }).fails) failures += 1;
  console.log(failures === 0 ? 'self-test: ok' : `self-test: ${failures} failed`);
  process.exit(failures === 0 ? 0 : 1);
}

/** One client's session. */
class Session {
  constructor(socket) {
    this.socket = socket;
    this.state = null;
    this.seq = 0;
    this.parked = false;
    this.alive = true;
  }

  /** New params (JSON text): kept and pushed at once, or refused with an error frame. */
  setParams(text) {
    let params;
    try {
      params = JSON.parse(text);
    } catch (err) {
      this.socket.send(JSON.stringify({ code: 4001, msg: `invalid params JSON: ${err.message}`, data: [] }));
      return;
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      this.socket.send('{"code":4001,"msg":"params must be a JSON object","data":[]}');
      return;
    }
    this.state = quoteState(params);
    this.parked = false;
    this.push();
  }

  /** Pushes the next frame, unless it has no params or is parked. */
  push() {
    if (this.state === null || this.parked) return;
    if (this.state.fails) {
      this.parked = true;
      this.socket.send(FAIL_FRAME);
    } else {
      this.seq += 1;
      this.socket.send(quoteFrame(this.state, this.seq, Date.now()));
    }
    pushes += 1;
  }
}

let pushes = 0;
const sessions = new Set();

function serve(host, port) {
  const server = http.createServer((req, res) => {
    if (req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ connections: sessions.size, pushes }));
    } else {
      res.writeHead(404).end();
    }
  });
  const wss = new WebSocketServer({ server, maxPayload: 1 << 20, perMessageDeflate: false });
  wss.on('connection', (socket, req) => {
    const session = new Session(socket);
    sessions.add(session);
    socket.on('message', (data, isBinary) => {
      if (isBinary || data.length > MAX_PARAMS_BYTES) {
        socket.send('{"code":4001,"msg":"params must be a text frame of at most 4096 bytes","data":[]}');
      } else {
        session.setParams(data.toString('utf8'));
      }
    });
    socket.on('pong', () => {
      session.alive = true;
    });
    socket.on('close', () => sessions.delete(session));
    socket.on('error', () => sessions.delete(session));
    const query = new URL(req.url, 'http://peer').searchParams.get('params');
    if (query !== null) session.setParams(query);
  });
  setInterval(() => {
    for (const session of sessions) session.push();
  }, TICK_MS);
  setInterval(() => {
    for (const session of sessions) {
      if (!session.alive) session.socket.terminate();
      session.alive = false;
      session.socket.ping();
    }
  }, PING_MS);
  server.listen({ host, port, backlog: 1024 }, () => console.log(`serving ws://${host}:${port}/`));
}

const args = process.argv.slice(2);
if (args[0] === '--self-test') {
  selfTest();
} else {
  const listen = args[0] === '--listen' ? args[1] : '127.0.0.1:9603';
  const colon = listen.lastIndexOf(':');
  serve(listen.slice(0, colon), Number(listen.slice(colon + 1)));
}
