// Connect with a JWT, subscribe to CHANNEL, say so, wait for COUNT publications (each
// printed by makeSubscription), say so, and disconnect when pytest sends "close". Used by
// the admin UI browser test: the publications come from the admin page, not from pytest.
// env: WS_URL, TOKEN, CHANNEL, COUNT
import { Collector, done, emit, env, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

const client = makeClient('main', { token: env('TOKEN') });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const pubs = new Collector(sub, 'publication');
const connected = waitFor(client, 'connected');
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
const ctx = await connected;
await subscribed;
emit({ ready: 'subscribed', id: ctx.client });
await pubs.next(Number(env('COUNT')));
await handshake('received', 'close');
client.disconnect();
done();
