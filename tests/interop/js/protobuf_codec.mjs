// centrifuge-js's own Protobuf codec as a peer for rtserver's: reads a JSON request on
// stdin, prints a JSON answer. Bytes travel as {"$hex": "..."} both ways.
//   {"commands": [...]}          -> {"frame": hex of encodeCommands(commands)}
//   {"replies": hex}             -> {"replies": decodeReplies(bytes)}
//   {"emulation": {...}}         -> {"body": hex of encodeEmulationRequest(req)}
import { Centrifuge } from 'centrifuge/build/protobuf';

const fromHex = (hex) => Uint8Array.from(Buffer.from(hex, 'hex'));
const revive = (key, value) =>
  value && typeof value === 'object' && typeof value.$hex === 'string' ? fromHex(value.$hex) : value;
const replace = (key, value) => {
  if (value instanceof Uint8Array) return { $hex: Buffer.from(value).toString('hex') };
  if (value && typeof value === 'object' && typeof value.toNumber === 'function') {
    // a protobufjs Long (64-bit field): a number when exact, else its decimal string
    const n = Number(value.toString());
    return Number.isSafeInteger(n) ? n : value.toString();
  }
  return value;
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString(), revive);
const codec = new Centrifuge('ws://127.0.0.1:1/connection/websocket', { websocket: function () {} })._codec;
if (codec.name() !== 'protobuf') throw new Error(`unexpected codec ${codec.name()}`);

const answer = {};
if (request.commands) answer.frame = Buffer.from(codec.encodeCommands(request.commands)).toString('hex');
if (request.replies) answer.replies = codec.decodeReplies(fromHex(request.replies));
if (request.emulation) answer.body = Buffer.from(codec.encodeEmulationRequest(request.emulation)).toString('hex');
process.stdout.write(JSON.stringify(answer, replace));
