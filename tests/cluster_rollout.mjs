// The rollout part of `just bench-cluster`: one WebSocket client on each node, connected to plugin
// `rollout`, while `wasmpush deploy` alternates two builds (portfolio, whose frames hold
// `positions`, and quote, whose frames hold `symbol`). For each deploy it prints the time from the
// command's return to each node's first frame of the new build.
// Usage: node --experimental-websocket tests/cluster_rollout.mjs ENGINE NATS_URL PORTFOLIO_WASM QUOTE_WASM ROUNDS PORT...
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);
const [engine, nats, portfolio, quote, rounds, ...ports] = process.argv.slice(2);
const builds = [{ file: portfolio, kind: 'portfolio' }, { file: quote, kind: 'quote' }];
const params = encodeURIComponent(JSON.stringify({ account: 'a0', symbol: 'AAPL' }));
const kindOf = (text) => {
  const frame = JSON.parse(text);
  return frame.positions ? 'portfolio' : frame.symbol ? 'quote' : 'other';
};
const deploy = (build) => run(engine, ['deploy', 'rollout', build.file, '--nats', nats, '--wait', '30']);

await deploy(builds[0]);
const clients = await Promise.all(ports.map((port) => new Promise((resolve, reject) => {
  const client = { port, waiting: null };
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/rollout?params=${params}`);
  ws.onmessage = (event) => {
    const now = performance.now();
    if (client.waiting && kindOf(event.data) === client.waiting.kind) {
      client.waiting.resolve(now);
      client.waiting = null;
    }
  };
  ws.onclose = () => console.error(`the client of node ${port} was closed`);
  ws.onopen = () => resolve(client);
  ws.onerror = () => reject(new Error(`cannot connect to ws://127.0.0.1:${port}/ws/rollout`));
})));

const worst = [];
for (let round = 1; round <= Number(rounds); round++) {
  const build = builds[round % 2];
  const firstFrames = clients.map((client) => new Promise((resolve) => {
    client.waiting = { kind: build.kind, resolve };
    setTimeout(() => resolve(null), 20000);
  }));
  const began = performance.now();
  await run(engine, ['deploy', 'rollout', build.file, '--nats', nats]);
  const returned = performance.now();
  const arrived = await Promise.all(firstFrames);
  const after = arrived.map((at) => (at === null ? null : Math.max(0, Math.round(at - returned))));
  worst.push(Math.max(...after.map((ms) => (ms === null ? Infinity : ms))));
  console.log(`deploy ${round}: command ${Math.round(returned - began)} ms; first frame of the new build ` +
    clients.map((client, i) => `node ${client.port}: ${after[i] === null ? 'never (20 s)' : `${after[i]} ms`}`).join(', '));
}
worst.sort((a, b) => a - b);
console.log(`worst node per deploy, sorted: ${worst.join(', ')} ms`);
process.exit(0);
