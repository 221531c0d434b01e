// Connect WITHOUT a token: the connect proxy authenticates the session Cookie of the upgrade.
// Then: the subscribe proxy allows CHANNEL and refuses FORBIDDEN; presence shows the backend's
// channel info; a publication is rewritten by the publish proxy before the peer receives it;
// client.rpc() returns the backend's data and error codes.
// env: WS_URL, COOKIE, PEER_COOKIE, CHANNEL, FORBIDDEN
import { describeError, done, emit, env, fatal, makeClient, makeSubscription, pubJSON, waitFor } from './lib.mjs';
import { cookieWebSocket } from './proxy_lib.mjs';

const client = makeClient('main', { websocket: cookieWebSocket(env('COOKIE')) });
const peer = makeClient('peer', { websocket: cookieWebSocket(env('PEER_COOKIE')) });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const forbidden = makeSubscription(client, env('FORBIDDEN'), 'main');
const peerSub = makeSubscription(peer, env('CHANNEL'), 'peer');

const connected = waitFor(client, 'connected');
const subscribed = waitFor(sub, 'subscribed');
const refused = waitFor(forbidden, 'unsubscribed');
const peerSubscribed = waitFor(peerSub, 'subscribed');
client.connect();
peer.connect();
sub.subscribe();
forbidden.subscribe();
peerSub.subscribe();
const ctx = await connected;
emit({ connected: { id: ctx.client, transport: ctx.transport, data: ctx.data } });
const subCtx = await subscribed;
emit({ subscribed: { data: subCtx.data } });
const refusal = await refused;
emit({ refused: { code: refusal.code, reason: refusal.reason } });
await peerSubscribed;

const presence = await sub.presence();
emit({ presence: presence.clients });

const received = waitFor(peerSub, 'publication');
await sub.publish({ text: 'hello' });
emit({ peer_received: pubJSON(await received) });

const rpc = await client.rpc('whoami', { n: 1 });
emit({ rpc: rpc.data });
try {
  await client.rpc('fail', {});
  fatal('rpc fail did not fail');
} catch (err) {
  if (!err || typeof err !== 'object' || !('code' in err)) fatal(`unexpected: ${describeError(err)}`);
  emit({ rpc_error: { code: err.code, message: err.message } });
}
client.disconnect();
peer.disconnect();
done();
