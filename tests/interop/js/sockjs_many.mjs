// CLIENTS centrifuge-js clients over SockJS (sockjs-client 1.6.1, one transport:
// SOCKJS_TRANSPORT), each subscribed to CHANNEL; ready "subscribed" once all are, then the
// scenario ends once every client received COUNT publications (live or recovered).
// env: BASE_URL, SOCKJS_TRANSPORT, TOKEN, CHANNEL, CLIENTS, COUNT; FRESH_CONNECTIONS=1 sends
// every HTTP request on a new connection (no keep-alive).
import http from 'node:http';
import { Centrifuge } from 'centrifuge';
import SockJS from 'sockjs-client';
import { Collector, done, env, handshake, makeSubscription, traceClient, waitFor } from './lib.mjs';

if (process.env.FRESH_CONNECTIONS === '1') {
  http.globalAgent = new http.Agent({ keepAlive: false });
}

const count = Number(env('COUNT'));
const clients = [];
const received = [];
const subscribed = [];
for (let i = 0; i < Number(env('CLIENTS')); i++) {
  const client = traceClient(
    new Centrifuge(
      [{ transport: 'sockjs', endpoint: `${env('BASE_URL')}/connection/sockjs` }],
      {
        token: env('TOKEN'),
        sockjs: SockJS,
        sockjsOptions: { transports: [env('SOCKJS_TRANSPORT')] },
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
      },
    ),
    `c${i}`,
  );
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
