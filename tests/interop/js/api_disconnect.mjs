// Server API `disconnect` (default code 3503): the client sees a terminal disconnect.
// env: WS_URL, TOKEN, CHANNEL
import { done, emit, env, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

const client = makeClient('main', { token: env('TOKEN') });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const connected = waitFor(client, 'connected');
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
const ctx = await connected;
await subscribed;
const disconnected = waitFor(client, 'disconnected');
await handshake('subscribed', 'disconnected', { id: ctx.client });
const d = await disconnected;
emit({ disconnect: { code: d.code, reason: d.reason }, state: client.state });
done();
