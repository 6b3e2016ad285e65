// `just bench-reconnect`: CLIENTS instances of the JavaScript client (clients/js) on one engine,
// then `wasmpush restart`. Prints when each client came back — a histogram of the time from its
// close to its next open — and the engine's peak accept rate (opens per 100 ms), for the client
// as shipped (full jitter) or with its jitter taken out (`none`: every wait is 0, as a naive
// client that reconnects at once).
// Usage: node --experimental-websocket tests/reconnect_spread.mjs WASMPUSH CONFIG PID_FILE CLIENTS jitter|none
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import { connect } from '../clients/js/wasmpush.js';

const run = promisify(execFile);
const [engine, config, pidFile, count, mode] = process.argv.slice(2);
const clients = Number(count);
if (!engine || !Number.isInteger(clients) || !['jitter', 'none'].includes(mode)) {
  console.error('usage: reconnect_spread.mjs WASMPUSH CONFIG PID_FILE CLIENTS jitter|none');
  process.exit(2);
}
const port = /listen = "[^"]*:(\d+)"/.exec((await import('node:fs')).readFileSync(config, 'utf8'))[1];
const deadline = (ms, what) => new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms).unref());

// Each client's record: when it was closed, when it opened again, how many attempts failed between.
const records = [];
async function open(n) {
  const record = { closedAt: 0, reopenedAt: 0, failed: 0, code: 0 };
  records.push(record);
  const options = { plugin: 'quote', params: { symbol: `S${n}` } };
  if (mode === 'none') options.random = () => 0;
  const client = connect(`ws://127.0.0.1:${port}`, options);
  await new Promise((resolve, reject) => {
    client.onState = (state, detail) => {
      const now = performance.now();
      if (state === 'open' && !record.closedAt) resolve();
      else if (state === 'open' && !record.reopenedAt) record.reopenedAt = now;
      else if (state === 'reconnecting' && !record.closedAt) [record.closedAt, record.code] = [now, detail.code];
      else if (state === 'reconnecting') record.failed += 1;
      else if (state === 'closed') reject(new Error(`client ${n} stopped: ${detail.code} ${detail.reason}`));
    };
  });
  return client;
}

const opened = [];
for (let n = 0; n < clients; n += 250) {
  const batch = Array.from({ length: Math.min(250, clients - n) }, (_, i) => open(n + i));
  opened.push(...(await Promise.race([Promise.all(batch), deadline(30_000, 'connecting')])));
}

const restartAt = performance.now();
await run(engine, ['restart', '--config', config, '--pid-file', pidFile]);
const restarted = performance.now();
await Promise.race([
  new Promise((resolve) => {
    const check = setInterval(() => {
      if (records.every((r) => r.reopenedAt)) {
        clearInterval(check);
        resolve();
      }
    }, 20);
  }),
  deadline(120_000, 'reconnecting'),
]);
opened.forEach((client) => client.close());

// Opens per 100 ms window since the restart command began: the engine's accept rate.
const windows = new Map();
for (const r of records) {
  const at = Math.floor((r.reopenedAt - restartAt) / 100);
  windows.set(at, (windows.get(at) ?? 0) + 1);
}
const gaps = records.map((r) => r.reopenedAt - r.closedAt).sort((a, b) => a - b);
const quantile = (q) => gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))];
const histogram = [100, 200, 300, 500, 750, 1000, 1500, 2000, 5000, Infinity].map((upTo, i, all) => {
  const from = i === 0 ? 0 : all[i - 1];
  return { from_ms: from, to_ms: upTo, clients: gaps.filter((g) => g >= from && g < upTo).length };
});
const closes = records.map((r) => r.closedAt - restartAt).sort((a, b) => a - b);
console.log(JSON.stringify({
  mode,
  clients,
  close_codes: [...new Set(records.map((r) => r.code))],
  restart_command_ms: Math.round(restarted - restartAt),
  closes_spread_ms: Math.round(closes.at(-1) - closes[0]),
  reconnect_ms: { p50: Math.round(quantile(0.5)), p90: Math.round(quantile(0.9)), p99: Math.round(quantile(0.99)), max: Math.round(gaps.at(-1)) },
  failed_attempts: records.reduce((sum, r) => sum + r.failed, 0),
  peak_accepts_per_100ms: Math.max(...windows.values()),
  histogram,
}));
process.exit(0);
