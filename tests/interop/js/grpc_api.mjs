// The GRPC server API with @grpc/grpc-js (Node's HTTP/2, nghttp2 underneath): stubs
// loaded from rtserver's api.proto, unary Publish/Batch/Info/History, a bad key, and a
// request and an answer larger than 64 KiB (both flow-controlled).
// env: GRPC_TARGET, GRPC_KEY, PROTO, CHANNEL
import { createRequire } from 'node:module';
import { done, emit, env, fatal } from './lib.mjs';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(env('PROTO'), {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const api = grpc.loadPackageDefinition(definition).centrifugal.centrifugo.api;
const client = new api.CentrifugoApi(env('GRPC_TARGET'), grpc.credentials.createInsecure(), {
  'grpc.max_receive_message_length': 8 * 1024 * 1024,
});

function metadata(key) {
  const md = new grpc.Metadata();
  md.set('authorization', `apikey ${key}`);
  return md;
}

function call(method, request, key = env('GRPC_KEY')) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, metadata(key), { deadline }, (err, reply) => {
      resolve(err ? { status: err.code, details: err.details } : { status: 0, reply });
    });
  });
}

function expectOk(name, outcome) {
  if (outcome.status !== 0) fatal(`${name}: status ${outcome.status} ${outcome.details}`);
  return outcome.reply;
}

const channel = env('CHANNEL');
const small = Buffer.from(JSON.stringify({ n: 1 }));
const large = Buffer.from(JSON.stringify({ text: 'x'.repeat(200 * 1024) }));

const first = expectOk('publish', await call('Publish', { channel, data: small }));
emit({ publish: { offset: first.result.offset, epoch: first.result.epoch } });

const refused = await call('Publish', { channel, data: small }, 'wrong-key');
emit({ bad_key: refused });

const invalid = expectOk('invalid', await call('Publish', { channel, data: Buffer.alloc(0) }));
emit({ invalid: invalid.error });

const big = expectOk('large publish', await call('Publish', { channel, data: large }));
emit({ large_publish: { offset: big.result.offset } });

const batch = expectOk('batch', await call('Batch', {
  commands: [1, 2, 3].map((n) => ({ publish: { channel, data: Buffer.from(`{"b":${n}}`) } })),
}));
emit({ batch: batch.replies.map((r) => (r.error ? { error: r.error } : { offset: r.publish.offset })) });

const history = expectOk('history', await call('History', { channel, limit: 10 }));
emit({
  history: history.result.publications.map((p) => ({ offset: p.offset, size: p.data.length })),
  history_equal: Buffer.compare(history.result.publications[1].data, large) === 0,
});

const info = expectOk('info', await call('Info', {}));
emit({ info: { nodes: info.result.nodes.length } });

// Several calls at once on the one connection.
const many = await Promise.all(Array.from({ length: 20 }, () => call('Info', {})));
emit({ concurrent: many.filter((o) => o.status === 0).length });

client.close();
done();
