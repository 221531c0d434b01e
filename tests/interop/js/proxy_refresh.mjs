// A connection and a subscription that expire every 2 s are renewed by the refresh and
// sub_refresh proxies without a reconnect or a resubscribe.
// env: WS_URL, COOKIE, CHANNEL, WAIT_MS
import { done, emit, env, makeClient, makeSubscription, waitFor } from './lib.mjs';
import { cookieWebSocket } from './proxy_lib.mjs';

const client = makeClient('main', { websocket: cookieWebSocket(env('COOKIE')) });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
let connects = 0;
let subscribes = 0;
client.on('connected', () => { connects += 1; });
sub.on('subscribed', () => { subscribes += 1; });
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
await subscribed;
await new Promise((resolve) => setTimeout(resolve, Number(env('WAIT_MS'))));
const presence = await sub.presence();
emit({ state: client.state, sub_state: sub.state, connects, subscribes, presence: presence.clients });
client.disconnect();
done();
