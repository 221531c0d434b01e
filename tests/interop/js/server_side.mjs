// Server-side subscription from the connection token `channels` claim: client-level
// `subscribed` and `publication` events.
// env: WS_URL, TOKEN (with channels claim), CHANNEL
import { done, env, handshake, makeClient, waitFor } from './lib.mjs';

const channel = env('CHANNEL');
const client = makeClient('main', { token: env('TOKEN') });
const subscribed = waitFor(client, 'subscribed', (ctx) => ctx.channel === channel);
client.connect();
await subscribed;
const publication = waitFor(client, 'publication', (ctx) => ctx.channel === channel);
await handshake('subscribed', 'published');
await publication;
client.disconnect();
done();
