// The grpc-js client of bench/grpc_h2_replay.py (--client grpc-js): N sequential unary
// Publish calls, with a 10 s deadline each when DEADLINE=1.
// env: PROTO, TARGET, N, DEADLINE; packages from tests/interop/node_modules.
import { createRequire } from 'node:module';

const require = createRequire(new URL('../tests/interop/package.json', import.meta.url));
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(process.env.PROTO, {
  keepCase: true, longs: Number, defaults: true, oneofs: true,
});
const api = grpc.loadPackageDefinition(definition).centrifugal.centrifugo.api;
const client = new api.CentrifugoApi(process.env.TARGET, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set('authorization', 'apikey k');
const deadline = process.env.DEADLINE === '1';
for (let i = 0; i < Number(process.env.N); i++) {
  await new Promise((resolve, reject) => {
    const options = deadline ? { deadline: new Date(Date.now() + 10000) } : {};
    client.Publish({ channel: 'a', data: Buffer.from('1') }, metadata, options,
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}
client.close();
