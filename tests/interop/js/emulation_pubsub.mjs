// Over ONE emulation transport (TRANSPORT): connect with a JWT, subscribe, receive COUNT
// publications made through cent, read presence, presence stats and history, then publish from
// the client: refused (103) in CHANNEL, allowed in CHAT_CHANNEL and delivered to a second client.
// env: BASE_URL, TRANSPORT, TOKEN, PEER_TOKEN, CHANNEL, CHAT_CHANNEL, COUNT
import { Collector, describeError, done, emit, emitChannelState, env, fatal, handshake, makeSubscription, pubJSON, waitFor } from './lib.mjs';
import { makeEmulationClient } from './emulation_lib.mjs';

const channel = env('CHANNEL');
const count = Number(env('COUNT'));

const client = makeEmulationClient('main', { token: env('TOKEN') });
const sub = makeSubscription(client, channel, 'main');
const chat = makeSubscription(client, env('CHAT_CHANNEL'), 'main');
const peer = makeEmulationClient('peer', { token: env('PEER_TOKEN') });
const peerChat = makeSubscription(peer, env('CHAT_CHANNEL'), 'peer');

const pubs = new Collector(sub, 'publication');
const connected = waitFor(client, 'connected');
const peerConnected = waitFor(peer, 'connected');
const subscribed = Promise.all([waitFor(sub, 'subscribed'), waitFor(chat, 'subscribed'), waitFor(peerChat, 'subscribed')]);
client.connect();
peer.connect();
sub.subscribe();
chat.subscribe();
peerChat.subscribe();
const ctx = await connected;
const peerCtx = await peerConnected;
await subscribed;

await handshake('subscribed', 'published', { id: ctx.client, transport: ctx.transport, peer_transport: peerCtx.transport });
await pubs.next(count);

await emitChannelState(sub);

try {
  await sub.publish({ text: 'not allowed' });
  emit({ denied_publish: 'ok' });
} catch (err) {
  if (!err || typeof err !== 'object' || !('code' in err)) fatal(`unexpected rejection: ${describeError(err)}`);
  emit({ denied_publish_error: { code: err.code, message: err.message } });
}

const own = waitFor(chat, 'publication');
const atPeer = waitFor(peerChat, 'publication');
const result = await chat.publish({ text: 'allowed' });
emit({ chat_publish_result: result });
emit({ chat_publication: pubJSON(await own), peer_publication: pubJSON(await atPeer) });
emit({ final_transport: client.state === 'connected' ? ctx.transport : null });
client.disconnect();
peer.disconnect();
done();
