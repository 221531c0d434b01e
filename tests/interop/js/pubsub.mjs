// Connect with a JWT, subscribe, receive COUNT publications made through cent, then read
// presence, presence stats and history of the channel.
// env: WS_URL, TOKEN, CHANNEL, COUNT
import { Collector, done, emitChannelState, env, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

const channel = env('CHANNEL');
const count = Number(env('COUNT'));
const client = makeClient('main', { token: env('TOKEN') });
const sub = makeSubscription(client, channel, 'main');
const pubs = new Collector(sub, 'publication');
const connected = waitFor(client, 'connected');
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
const ctx = await connected;
await subscribed;

await handshake('subscribed', 'published', { id: ctx.client });
await pubs.next(count);

await emitChannelState(sub);
client.disconnect();
done();
