// Shared helpers for the interop scenarios.
//
// Protocol with pytest (tests/interop/conftest.py, NodeScenario):
//   stdout: one JSON object per line; {"ready": "<label>"} when pytest should act,
//           {"fatal": "..."} (and exit code 2) on failure or timeout, {"done": true} at the end.
//   stdin:  one command word per line, sent by pytest after it acted on a "ready" line.
import readline from 'node:readline';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';

export const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 20000);

export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

export function fatal(message) {
  emit({ fatal: String(message) });
  process.exit(2);
}

export function done(extra = {}) {
  emit({ done: true, ...extra });
  process.exit(0);
}

// A scenario never runs longer than SCENARIO_TIMEOUT_MS.
setTimeout(() => fatal(`scenario timeout after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();
process.on('unhandledRejection', (reason) => fatal(`unhandled rejection: ${describeError(reason)}`));
process.on('uncaughtException', (err) => fatal(`uncaught exception: ${describeError(err)}`));

export function describeError(err) {
  if (err && typeof err === 'object' && 'code' in err) {
    return JSON.stringify({ code: err.code, message: err.message });
  }
  return err && err.stack ? err.stack : String(err);
}

export function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    fatal(`environment variable ${name} is required`);
  }
  return value;
}

// --- stdin commands ---------------------------------------------------------------------

const lines = [];
const lineWaiters = [];
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const waiter = lineWaiters.shift();
  if (waiter) waiter(line.trim());
  else lines.push(line.trim());
});

// Announce `label` as ready and wait for pytest to answer with the `expected` command.
export async function handshake(label, expected, extra = {}) {
  emit({ ready: label, ...extra });
  const line = lines.length ? lines.shift() : await new Promise((resolve) => lineWaiters.push(resolve));
  if (line !== expected) fatal(`expected command ${JSON.stringify(expected)}, got ${JSON.stringify(line)}`);
}

// --- events -----------------------------------------------------------------------------

// Resolve with the first `name` event of `emitter` that satisfies `pred`.
export function waitFor(emitter, name, pred = () => true) {
  return new Promise((resolve) => {
    const listener = (ctx) => {
      if (pred(ctx)) {
        emitter.off(name, listener);
        resolve(ctx);
      }
    };
    emitter.on(name, listener);
  });
}

// Collects events of one kind; `next(n)` waits until n more have arrived since the last call.
export class Collector {
  constructor(emitter, name) {
    this.items = [];
    this.consumed = 0;
    this.waiter = null;
    emitter.on(name, (ctx) => {
      this.items.push(ctx);
      if (this.waiter && this.items.length >= this.waiter.count) {
        const { resolve } = this.waiter;
        this.waiter = null;
        resolve();
      }
    });
  }

  async next(n) {
    const count = this.consumed + n;
    if (this.items.length < count) {
      await new Promise((resolve) => {
        this.waiter = { count, resolve };
      });
    }
    const out = this.items.slice(this.consumed, count);
    this.consumed = count;
    return out;
  }
}

export function pubJSON(ctx) {
  const out = { data: ctx.data };
  if (ctx.offset !== undefined) out.offset = ctx.offset;
  if (ctx.info) out.info = ctx.info;
  if (ctx.channel) out.channel = ctx.channel;
  return out;
}

// --- clients ----------------------------------------------------------------------------

// A Centrifuge client over the `ws` package that prints its lifecycle events.
export function makeClient(label, options = {}) {
  const client = new Centrifuge(env('WS_URL'), {
    websocket: options.websocket || WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    ...options,
  });
  return traceClient(client, label);
}

// Print a client's lifecycle, errors and server-side subscription events as JSON lines.
export function traceClient(client, label) {
  const tag = (obj) => emit({ client: label, ...obj });
  client.on('connecting', (ctx) => tag({ event: 'connecting', code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => tag({ event: 'connected', id: ctx.client, transport: ctx.transport }));
  client.on('disconnected', (ctx) => tag({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
  // EventEmitter throws on an 'error' event nobody listens to: always listen.
  client.on('error', (ctx) => tag({
    event: 'error', type: ctx.type, code: ctx.error && ctx.error.code, message: ctx.error && ctx.error.message,
  }));
  client.on('subscribed', (ctx) => tag({
    event: 'server_subscribed', channel: ctx.channel, recoverable: ctx.recoverable,
    wasRecovering: ctx.wasRecovering, recovered: ctx.recovered,
  }));
  client.on('unsubscribed', (ctx) => tag({ event: 'server_unsubscribed', channel: ctx.channel }));
  client.on('publication', (ctx) => tag({ event: 'server_publication', ...pubJSON(ctx) }));
  return client;
}

// A subscription that prints its events.
export function makeSubscription(client, channel, label, options = {}) {
  const sub = client.newSubscription(channel, options);
  const tag = (obj) => emit({ client: label, channel, ...obj });
  sub.on('subscribing', (ctx) => tag({ event: 'subscribing', code: ctx.code, reason: ctx.reason }));
  sub.on('subscribed', (ctx) => tag({
    event: 'subscribed', recoverable: ctx.recoverable, positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering, recovered: ctx.recovered, streamPosition: ctx.streamPosition,
  }));
  sub.on('unsubscribed', (ctx) => tag({ event: 'unsubscribed', code: ctx.code, reason: ctx.reason }));
  sub.on('publication', (ctx) => tag({ event: 'publication', ...pubJSON(ctx) }));
  sub.on('join', (ctx) => tag({ event: 'join', info: ctx.info }));
  sub.on('leave', (ctx) => tag({ event: 'leave', info: ctx.info }));
  sub.on('error', (ctx) => tag({
    event: 'sub_error', type: ctx.type, code: ctx.error && ctx.error.code, message: ctx.error && ctx.error.message,
  }));
  return sub;
}

// A `ws` WebSocket whose live sockets can be dropped (TCP terminated, no close frame) and whose
// outgoing frames can be held back while the gate is closed: a reconnect then opens its socket
// but its connect/subscribe frame reaches the server only after release().
export function gatedWebSocket() {
  const sockets = new Set();
  let held = null;
  let onHeld = null;
  class GatedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.add(this);
      this.on('close', () => sockets.delete(this));
    }

    send(data, ...rest) {
      if (held !== null) {
        held.push([this, data, rest]);
        if (onHeld) onHeld();
        return;
      }
      super.send(data, ...rest);
    }
  }
  return {
    WebSocket: GatedWebSocket,
    drop() {
      held = [];
      const dropped = sockets.size;
      for (const socket of sockets) socket.terminate();
      return dropped;
    },
    // Resolves once a frame is held back (the SDK reconnected and sent its connect command).
    whenHeld() {
      if (held && held.length) return Promise.resolve();
      return new Promise((resolve) => { onHeld = () => { onHeld = null; resolve(); }; });
    },
    release() {
      const frames = held || [];
      held = null;
      for (const [socket, data, rest] of frames) {
        if (socket.readyState === WebSocket.OPEN) WebSocket.prototype.send.call(socket, data, ...rest);
      }
      return frames.length;
    },
  };
}

// Print the channel's presence, presence stats, whole history and latest publication
// (what interop_support.check_pubsub_presence_history reads).
export async function emitChannelState(sub) {
  const presence = await sub.presence();
  emit({ presence: presence.clients });
  const stats = await sub.presenceStats();
  emit({ presence_stats: { numClients: stats.numClients, numUsers: stats.numUsers } });
  const history = await sub.history({ limit: -1 });
  emit({ history: { publications: history.publications.map(pubJSON), offset: history.offset, epoch: history.epoch } });
  const latest = await sub.history({ limit: 1, reverse: true });
  emit({ history_latest: latest.publications.map(pubJSON) });
}

// --- the recovery scenario --------------------------------------------------------------

// Shared by every transport's recover scenario: connect and subscribe, receive `live`
// publications, go away, let pytest publish `missed` ones, come back, recover them, then
// get a sentinel publication. mode 'disconnect': client.disconnect() ... client.connect().
// mode 'drop': `gate` (gatedWebSocket() or gatedFetch()) fails the live connection like a
// network error; the SDK reconnects by itself and the gate holds its connect back until
// pytest has published. Prints `dropped` and `released` counts in drop mode. The
// pytest side is NodeScenario.run_recovery (tests/harness.py).
export async function runRecover(client, sub, { mode, live, missed, gate = null }) {
  if (mode !== 'disconnect' && !(mode === 'drop' && gate)) fatal(`unknown MODE ${mode}`);
  const pubs = new Collector(sub, 'publication');
  const subscribedEvents = new Collector(sub, 'subscribed');
  const connectedEvents = new Collector(client, 'connected');
  client.connect();
  sub.subscribe();
  const [first] = await connectedEvents.next(1);
  await subscribedEvents.next(1);

  await handshake('subscribed', 'published_live', { transport: first.transport, mode, live, missed });
  await pubs.next(live);

  if (mode === 'disconnect') {
    const away = waitFor(client, 'disconnected');
    client.disconnect();
    await away;
  } else {
    const away = waitFor(client, 'connecting');
    emit({ dropped: gate.drop() });
    await away;
    await gate.whenHeld();
  }
  emit({ away_state: client.state, sub_state: sub.state });

  await handshake('away', 'published_missed');
  if (mode === 'disconnect') client.connect();
  else emit({ released: gate.release() });
  const [again] = await connectedEvents.next(1);
  await subscribedEvents.next(1);
  await pubs.next(missed);

  await handshake('recovered', 'published_sentinel', { transport: again.transport });
  const [sentinel] = await pubs.next(1);
  if (!sentinel.data || sentinel.data.sentinel !== true) fatal(`expected the sentinel, got ${JSON.stringify(sentinel.data)}`);
  client.disconnect();
  done();
}
