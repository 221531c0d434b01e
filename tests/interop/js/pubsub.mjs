// Connect with a JWT, subscribe, receive COUNT publications made through cent, then read
// presence, presence stats and history of the channel.
// env: WS_URL, TOKEN, CHANNEL, COUNT
import { Collector, done, emit, env, handshake, makeClient, makeSubscription, pubJSON, waitFor } from './lib.mjs';

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

const presence = await sub.presence();
emit({ presence: presence.clients });
const stats = await sub.presenceStats();
emit({ presence_stats: { numClients: stats.numClients, numUsers: stats.numUsers } });
const history = await sub.history({ limit: -1 });
emit({ history: { publications: history.publications.map(pubJSON), offset: history.offset, epoch: history.epoch } });
const latest = await sub.history({ limit: 1, reverse: true });
emit({ history_latest: latest.publications.map(pubJSON) });
client.disconnect();
done();
