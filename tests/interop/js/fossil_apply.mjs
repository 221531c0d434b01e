// centrifuge-js's own delta decoding as a peer for rtserver's fossil encoder: reads a JSON
// request on stdin, prints a JSON answer.
//   {"json": [[frame text, ...], ...], "protobuf": [[frame hex, ...], ...]}
// Each inner list is one subscription's frames, in order: every frame is decoded with the
// build's codec (decodeReplies) and every publication push goes through the codec's
// applyDeltaIfNeeded with the previous value, exactly as a Subscription does once the
// subscribe reply said delta: true. Answer, per chain:
//   {"data": [JSON.stringify(value) | hex of bytes, ...], "wire": [bytes on the wire, ...],
//    "full": [decoded bytes, ...], "deltas": count of delta publications}
// or {"error": message} when the SDK refused a delta.
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';

const opts = { websocket: function () {} };
const codecs = {
  json: new JsonCentrifuge('ws://127.0.0.1:1/connection/websocket', opts)._codec,
  protobuf: new ProtobufCentrifuge('ws://127.0.0.1:1/connection/websocket', opts)._codec,
};
if (codecs.json.name() !== 'json' || codecs.protobuf.name() !== 'protobuf') {
  throw new Error('unexpected codecs');
}

function run(kind, frames) {
  const codec = codecs[kind];
  let prev;
  const out = { data: [], wire: [], full: [], deltas: 0 };
  try {
    for (const frame of frames) {
      const input = kind === 'json' ? frame : Uint8Array.from(Buffer.from(frame, 'hex'));
      for (const reply of codec.decodeReplies(input)) {
        const pub = reply.push && reply.push.pub;
        if (!pub) continue;
        const r = codec.applyDeltaIfNeeded(pub, prev);
        prev = r.newPrevValue;
        if (r.isDelta) out.deltas++;
        out.wire.push(r.wireBytes);
        out.full.push(r.fullBytes);
        out.data.push(kind === 'json' ? JSON.stringify(r.newData) : Buffer.from(r.newData).toString('hex'));
      }
    }
  } catch (e) {
    return { error: String(e && e.message ? e.message : e) };
  }
  return out;
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString());
const answer = {};
for (const kind of ['json', 'protobuf']) {
  if (request[kind]) answer[kind] = request[kind].map((frames) => run(kind, frames));
}
process.stdout.write(JSON.stringify(answer));
