// centrifuge-js (BUILD: 'json' = the default build, 'protobuf' = centrifuge/build/protobuf)
// with fossil delta compression and a tag filter, reading its own wire.
//
// 1. client `delta` subscribes DELTA_CHANNEL with delta: 'fossil' and TAGS_CHANNEL with
//    a tagsFilter (TAGS_FILTER, JSON); client `plain` subscribes DELTA_CHANNEL without
//    delta. Both record every WebSocket frame they receive.
// 2. pytest publishes COUNT documents to DELTA_CHANNEL (API `delta: true`) and TAGGED
//    tagged publications to TAGS_CHANNEL.
// 3. print what each subscription got (data as text) and, decoded from the recorded frames
//    with the build's own codec, each DELTA_CHANNEL publication's size on the wire and
//    whether it was a delta.
// With TRANSPORT=http_stream the `delta` client uses HTTP-streaming + /emulation instead
// (its frames are not recorded; the `plain` client stays on WebSocket).
// env: WS_URL, BASE_URL, TRANSPORT, BUILD, DELTA_TOKEN, PLAIN_TOKEN, DELTA_CHANNEL, TAGS_CHANNEL, TAGS_FILTER,
//      COUNT, TAGGED_MATCHING
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';
import { Collector, done, emit, env, handshake, makeSubscription, traceClient, waitFor } from './lib.mjs';

const BUILD = env('BUILD');
const Centrifuge = BUILD === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
const deltaChannel = env('DELTA_CHANNEL');
const tagsChannel = env('TAGS_CHANNEL');
const count = Number(env('COUNT'));
const matching = Number(env('TAGGED_MATCHING'));
const text = (data) => (data instanceof Uint8Array ? new TextDecoder().decode(data) : JSON.stringify(data));

// A `ws` WebSocket that keeps every frame it receives (Buffer, as sent by the server).
function recordingWebSocket(frames) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data, isBinary) => frames.push({ data: Buffer.from(data), isBinary }));
    }
  };
}

const TRANSPORT = env('TRANSPORT');

function makeClient(label, token, frames, transport = 'websocket') {
  const endpoint = transport === 'websocket'
    ? env('WS_URL')
    : [{ transport: 'http_stream', endpoint: `${env('BASE_URL')}/connection/http_stream` }];
  return traceClient(new Centrifuge(endpoint, {
    websocket: recordingWebSocket(frames),
    emulationEndpoint: `${env('BASE_URL')}/emulation`,
    token,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  }), label);
}

const deltaFrames = [];
const plainFrames = [];
const deltaClient = makeClient('delta', env('DELTA_TOKEN'), deltaFrames, TRANSPORT);
const plainClient = makeClient('plain', env('PLAIN_TOKEN'), plainFrames);
const deltaSub = makeSubscription(deltaClient, deltaChannel, 'delta', { delta: 'fossil' });
const plainSub = makeSubscription(plainClient, deltaChannel, 'plain');
const tagsSub = makeSubscription(deltaClient, tagsChannel, 'tags', { tagsFilter: JSON.parse(env('TAGS_FILTER')) });
const deltaPubs = new Collector(deltaSub, 'publication');
const plainPubs = new Collector(plainSub, 'publication');
const tagsPubs = new Collector(tagsSub, 'publication');
const subscribed = Promise.all([
  waitFor(deltaSub, 'subscribed'), waitFor(plainSub, 'subscribed'), waitFor(tagsSub, 'subscribed'),
]);
const deltaConnected = waitFor(deltaClient, 'connected');
deltaClient.connect();
plainClient.connect();
deltaSub.subscribe();
plainSub.subscribe();
tagsSub.subscribe();
await subscribed;
const { transport } = await deltaConnected;
await handshake('subscribed', 'published', { delta_negotiated: deltaSub._delta_negotiated, transport });

const got = await deltaPubs.next(count);
const plain = await plainPubs.next(count);
const tagged = await tagsPubs.next(matching);

// Every DELTA_CHANNEL publication as it travelled, decoded with the build's codec.
function wire(frames) {
  const codec = deltaClient._codec;
  const out = [];
  for (const frame of frames) {
    const input = BUILD === 'protobuf' ? new Uint8Array(frame.data) : frame.data.toString('utf8');
    for (const reply of codec.decodeReplies(input)) {
      const push = reply.push;
      if (!push || !push.pub || push.channel !== deltaChannel) continue;
      const data = push.pub.data;
      let dataBytes;
      if (typeof data === 'string') dataBytes = Buffer.byteLength(data); // a delta subscriber's JSON string
      else if (data instanceof Uint8Array) dataBytes = data.length; // Protobuf bytes
      else dataBytes = Buffer.byteLength(JSON.stringify(data)); // a plain JSON value
      out.push({ delta: Boolean(push.pub.delta), data_bytes: dataBytes, frame_bytes: frame.data.length });
    }
  }
  return out;
}

emit({
  delta: got.map((ctx) => text(ctx.data)),
  plain: plain.map((ctx) => text(ctx.data)),
  tags: tagged.map((ctx) => text(ctx.data)),
  delta_wire: wire(deltaFrames),
  plain_wire: wire(plainFrames),
  sdk_stats: {
    received: deltaSub._deltaBytesReceived, decoded: deltaSub._deltaBytesDecoded,
    deltas: deltaSub._deltaNumDelta, full: deltaSub._deltaNumFull,
  },
});
deltaClient.disconnect();
plainClient.disconnect();
// the line above is long: let it reach the pipe before done() exits the process
await new Promise((resolve) => process.stdout.write('', resolve));
done();
