// centrifuge-js over SockJS (sockjs-client 1.6.1) with ONE SockJS transport (SOCKJS_TRANSPORT):
// connect with a JWT, subscribe, receive publications made through the server API, disconnect,
// miss some, reconnect and recover them.
// env: BASE_URL, SOCKJS_TRANSPORT, TOKEN, CHANNEL, LIVE, MISSED
import { Centrifuge } from 'centrifuge';
import SockJS from 'sockjs-client';
import { Collector, done, env, handshake, makeSubscription, traceClient, waitFor } from './lib.mjs';

const live = Number(env('LIVE'));
const missed = Number(env('MISSED'));
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
const pubs = new Collector(sub, 'publication');
const subscribedEvents = new Collector(sub, 'subscribed');
const connectedEvents = new Collector(client, 'connected');
client.connect();
sub.subscribe();
const [first] = await connectedEvents.next(1);
await subscribedEvents.next(1);

await handshake('subscribed', 'published_live', { transport: first.transport });
await pubs.next(live);

const away = waitFor(client, 'disconnected');
client.disconnect();
await away;
await handshake('away', 'published_missed');
client.connect();
const [again] = await connectedEvents.next(1);
await subscribedEvents.next(1);
await pubs.next(missed);
client.disconnect();
done({ transport: again.transport });
