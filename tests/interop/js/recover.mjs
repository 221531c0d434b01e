// Reconnect after missed publications: the subscription recovers them.
// MODE=disconnect: client.disconnect() ... client.connect().
// MODE=drop: the TCP connection is terminated (no close frame); the SDK reconnects by itself,
//            its connect+subscribe frame is held back until pytest has published.
// env: WS_URL, TOKEN, CHANNEL, MODE, LIVE, MISSED
import { Collector, done, emit, env, fatal, gatedWebSocket, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

const mode = env('MODE');
const live = Number(env('LIVE'));
const missed = Number(env('MISSED'));
const gate = gatedWebSocket();
const client = makeClient('main', { token: env('TOKEN'), websocket: gate.WebSocket });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const pubs = new Collector(sub, 'publication');
const subscribedEvents = new Collector(sub, 'subscribed');
client.connect();
sub.subscribe();
await subscribedEvents.next(1);

await handshake('subscribed', 'published_live');
await pubs.next(live);

if (mode === 'disconnect') {
  const away = waitFor(client, 'disconnected');
  client.disconnect();
  await away;
} else if (mode === 'drop') {
  const away = waitFor(client, 'connecting');
  emit({ dropped_sockets: gate.drop() });
  await away;
  // The SDK reconnects by itself; its connect+subscribe frame is held back.
  await gate.whenHeld();
} else {
  fatal(`unknown MODE ${mode}`);
}
emit({ away_state: client.state, sub_state: sub.state });

await handshake('away', 'published_missed');
const connectedAgain = waitFor(client, 'connected');
if (mode === 'disconnect') client.connect();
else emit({ released_frames: gate.release() });
await connectedAgain;
await subscribedEvents.next(1);
await pubs.next(missed);

await handshake('recovered', 'published_sentinel');
const [sentinel] = await pubs.next(1);
if (!sentinel.data || sentinel.data.sentinel !== true) fatal(`expected the sentinel, got ${JSON.stringify(sentinel.data)}`);
client.disconnect();
done();
