// centrifuge-js over SockJS (sockjs-client 1.6.1) with ONE SockJS transport (SOCKJS_TRANSPORT):
// connect with a JWT, subscribe, receive publications made through the server API, disconnect,
// miss some, reconnect and recover them (js/lib.mjs runRecover).
// env: BASE_URL, SOCKJS_TRANSPORT, TOKEN, CHANNEL, LIVE, MISSED; FRESH_CONNECTIONS=1 sends
// every HTTP request on a new connection (no keep-alive), as a browser behind a proxy may.
import http from 'node:http';
import { Centrifuge } from 'centrifuge';
import SockJS from 'sockjs-client';
import { env, makeSubscription, runRecover, traceClient } from './lib.mjs';

if (process.env.FRESH_CONNECTIONS === '1') {
  http.globalAgent = new http.Agent({ keepAlive: false });
}

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
  'main',
);
const sub = makeSubscription(client, env('CHANNEL'), 'main');
await runRecover(client, sub, {
  mode: 'disconnect', live: Number(env('LIVE')), missed: Number(env('MISSED')),
});
