// centrifuge-js's Protobuf build over ONE transport (TRANSPORT: 'websocket' or 'http_stream'),
// next to a JSON client (the default build, WebSocket) in the same channel.
//
// 1. connect with a short-lived JWT whose `channels` claim subscribes SERVER_CHANNEL
//    server-side; subscribe CHANNEL (recoverable) and the private PRIVATE_CHANNEL with a
//    short-lived subscription token;
// 2. pytest publishes COUNT publications to CHANNEL and one to SERVER_CHANNEL;
// 3. the Protobuf client publishes raw bytes: both clients get them (JSON as a value);
// 4. presence, presence stats, history; RPC -> error 108;
// 5. past both token expiries (refresh and sub_refresh through getToken), still subscribed;
// 6. disconnect, pytest publishes MISSED, reconnect: recovered with every missed publication.
// env: WS_URL, BASE_URL, TRANSPORT, TOKEN, TOKEN_EXP, FRESH_TOKEN, SUB_TOKEN, FRESH_SUB_TOKEN,
//      PEER_TOKEN, CHANNEL, PRIVATE_CHANNEL, SERVER_CHANNEL, COUNT, MISSED, CLOSE_DELAY
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';
import {
  Collector, describeError, done, emit, env, fatal, handshake, makeClient, makeSubscription,
  traceClient, waitFor,
} from './lib.mjs';

const TRANSPORT = env('TRANSPORT');
const channel = env('CHANNEL');
const privateChannel = env('PRIVATE_CHANNEL');
const count = Number(env('COUNT'));
const missed = Number(env('MISSED'));
const text = (bytes) => new TextDecoder().decode(bytes);
// uint64 offsets arrive as Long values in the Protobuf build
const num = (v) => (v !== null && typeof v === 'object' && typeof v.toNumber === 'function' ? v.toNumber() : v);
const bytesOf = (ctx) => ({ data: text(ctx.data), offset: num(ctx.offset), binary: ctx.data instanceof Uint8Array });

const endpoint = TRANSPORT === 'websocket'
  ? env('WS_URL')
  : [{ transport: 'http_stream', endpoint: `${env('BASE_URL')}/connection/http_stream` }];
const tokenCalls = [];
const client = traceClient(new ProtobufCentrifuge(endpoint, {
  websocket: WebSocket,
  emulationEndpoint: `${env('BASE_URL')}/emulation`,
  token: env('TOKEN'),
  getToken: async () => { tokenCalls.push('connection'); return env('FRESH_TOKEN'); },
  minReconnectDelay: 100,
  maxReconnectDelay: 1000,
}), 'pb');
const sub = makeSubscription(client, channel, 'pb');
const priv = makeSubscription(client, privateChannel, 'pb', {
  token: env('SUB_TOKEN'),
  getToken: async () => { tokenCalls.push('subscription'); return env('FRESH_SUB_TOKEN'); },
});
const peer = makeClient('json', { token: env('PEER_TOKEN') });
const peerSub = makeSubscription(peer, channel, 'json');

const pubs = new Collector(sub, 'publication');
const peerPubs = new Collector(peerSub, 'publication');
const serverPubs = new Collector(client, 'publication');
const subscribedEvents = new Collector(sub, 'subscribed');
const connected = waitFor(client, 'connected');
const serverSubscribed = waitFor(client, 'subscribed');
const ready = Promise.all([
  waitFor(priv, 'subscribed'), waitFor(peer, 'connected'), waitFor(peerSub, 'subscribed'),
]);
client.connect();
peer.connect();
sub.subscribe();
priv.subscribe();
peerSub.subscribe();
const ctx = await connected;
const serverSub = await serverSubscribed;
const [first] = await subscribedEvents.next(1);
await ready;
await handshake('subscribed', 'published', {
  id: ctx.client, transport: ctx.transport, server_subscribed: serverSub.channel,
  recoverable: first.recoverable,
});

const api = await pubs.next(count);
const peerApi = await peerPubs.next(count);
const [serverPub] = await serverPubs.next(1);
emit({ api: api.map(bytesOf), peer_api: peerApi.map((p) => p.data), server_pub: bytesOf(serverPub) });

const raw = new TextEncoder().encode('{"raw": "bytes",\n "from": "protobuf"}');
await sub.publish(raw);
const [own] = await pubs.next(1);
const [atPeer] = await peerPubs.next(1);
emit({ own: bytesOf(own), at_peer: atPeer.data });

const presence = await sub.presence();
const stats = await sub.presenceStats();
const history = await sub.history({ limit: -1 });
emit({
  presence: Object.values(presence.clients).map((c) => ({ user: c.user, client: c.client })).sort((a, b) => a.user.localeCompare(b.user)),
  presence_stats: { numClients: stats.numClients, numUsers: stats.numUsers },
  history: history.publications.map(bytesOf),
});

try {
  await client.rpc('method', new Uint8Array([0, 1, 2]));
  emit({ rpc: 'ok' });
} catch (err) {
  if (!err || typeof err !== 'object' || !('code' in err)) fatal(`unexpected rejection: ${describeError(err)}`);
  emit({ rpc_error: { code: err.code, message: err.message } });
}

// Past the connection and subscription tokens' expiry (+ close delay): refreshed, still up.
const deadline = (Number(env('TOKEN_EXP')) + Number(env('CLOSE_DELAY')) + 1.5) * 1000;
await new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now())));
emit({ after_expiry: { state: client.state, private: priv.state, token_calls: tokenCalls } });

const away = waitFor(client, 'disconnected');
client.disconnect();
await away;
await handshake('away', 'published_missed');
client.connect();
const [again] = await subscribedEvents.next(1);
const recovered = await pubs.next(missed);
emit({
  again: { wasRecovering: again.wasRecovering, recovered: again.recovered },
  recovered_pubs: recovered.map(bytesOf),
});
client.disconnect();
peer.disconnect();
done();
