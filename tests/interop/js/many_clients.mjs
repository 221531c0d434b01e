// CLIENTS centrifuge-js clients over ONE transport, each subscribed to CHANNEL; ready
// "subscribed" once all are, then the scenario ends once every client received COUNT
// publications (live or recovered after a reconnect).
// env: BASE_URL, TRANSPORT ('websocket', 'http_stream' or 'sockjs'), WS_URL (websocket),
// SOCKJS_TRANSPORT (sockjs: one sockjs-client transport), TOKEN, CHANNEL, CLIENTS, COUNT;
// FRESH_CONNECTIONS=1 sends every SockJS request on a new connection (no keep-alive).
import http from 'node:http';
import { Centrifuge } from 'centrifuge';
import SockJS from 'sockjs-client';
import WebSocket from 'ws';
import { Collector, done, env, fatal, handshake, makeSubscription, traceClient, waitFor } from './lib.mjs';

if (process.env.FRESH_CONNECTIONS === '1') {
  http.globalAgent = new http.Agent({ keepAlive: false });
}

const transport = env('TRANSPORT');
const options = { token: env('TOKEN'), minReconnectDelay: 100, maxReconnectDelay: 1000 };

async function makeClient(label) {
  if (transport === 'websocket') {
    return traceClient(new Centrifuge(env('WS_URL'), { ...options, websocket: WebSocket }), label);
  }
  if (transport === 'sockjs') {
    const endpoint = `${env('BASE_URL')}/connection/sockjs`;
    return traceClient(
      new Centrifuge([{ transport: 'sockjs', endpoint }], {
        ...options,
        sockjs: SockJS,
        sockjsOptions: { transports: [env('SOCKJS_TRANSPORT')] },
      }),
      label,
    );
  }
  if (transport === 'http_stream') {
    const { makeEmulationClient } = await import('./emulation_lib.mjs');
    return makeEmulationClient(label, options);
  }
  return fatal(`unknown TRANSPORT ${transport}`);
}

const count = Number(env('COUNT'));
const clients = [];
const received = [];
const subscribed = [];
for (let i = 0; i < Number(env('CLIENTS')); i++) {
  const client = await makeClient(`c${i}`);
  const sub = makeSubscription(client, env('CHANNEL'), `c${i}`);
  received.push(new Collector(sub, 'publication'));
  subscribed.push(waitFor(sub, 'subscribed'));
  client.connect();
  sub.subscribe();
  clients.push(client);
}
await Promise.all(subscribed);
await handshake('subscribed', 'go');
await Promise.all(received.map((collector) => collector.next(count)));
for (const client of clients) client.disconnect();
done();
