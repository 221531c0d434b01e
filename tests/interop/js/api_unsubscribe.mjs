// Server API `unsubscribe`: the subscription ends with code 2000, the connection stays.
// env: WS_URL, TOKEN, CHANNEL
import { done, emit, env, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

const client = makeClient('main', { token: env('TOKEN') });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
await subscribed;
const unsubscribed = waitFor(sub, 'unsubscribed');
await handshake('subscribed', 'unsubscribed');
const u = await unsubscribed;
emit({ unsubscribe: { code: u.code, reason: u.reason }, sub_state: sub.state, client_state: client.state });
client.disconnect();
done();
