// Over ONE emulation transport (TRANSPORT): reconnect after missed publications and recover them.
// MODE=disconnect: client.disconnect() ... client.connect().
// MODE=drop: the streaming connection fails like a network error (body errors, request aborted);
//            the SDK reconnects by itself and its new stream request (carrying connect) is held
//            back until pytest has published.
// env: BASE_URL, TRANSPORT, TOKEN, CHANNEL, MODE, LIVE, MISSED
import { Collector, done, emit, env, fatal, handshake, makeSubscription, waitFor } from './lib.mjs';
import { gatedFetch, makeEmulationClient } from './emulation_lib.mjs';

const mode = env('MODE');
const live = Number(env('LIVE'));
const missed = Number(env('MISSED'));
const gate = gatedFetch();
const client = makeEmulationClient('main', { token: env('TOKEN'), fetch: gate.fetch });
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

if (mode === 'disconnect') {
  const away = waitFor(client, 'disconnected');
  client.disconnect();
  await away;
} else if (mode === 'drop') {
  const away = waitFor(client, 'connecting');
  emit({ dropped_streams: gate.drop() });
  await away;
  await gate.whenHeld();
} else {
  fatal(`unknown MODE ${mode}`);
}
emit({ away_state: client.state, sub_state: sub.state });

await handshake('away', 'published_missed');
if (mode === 'disconnect') client.connect();
else emit({ released_requests: gate.release() });
const [again] = await connectedEvents.next(1);
await subscribedEvents.next(1);
await pubs.next(missed);

await handshake('recovered', 'published_sentinel', { transport: again.transport });
const [sentinel] = await pubs.next(1);
if (!sentinel.data || sentinel.data.sentinel !== true) fatal(`expected the sentinel, got ${JSON.stringify(sentinel.data)}`);
client.disconnect();
done();
