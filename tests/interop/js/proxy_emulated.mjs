// Over HTTP-streaming, where the connection request carries no cookie, the SDK's `headers`
// option (emulated headers, sent inside the connect command) authenticates through the
// connect proxy's emulated_headers allow-list.
// env: BASE_URL, TRANSPORT, SESSION
import { done, emit, env, waitFor } from './lib.mjs';
import { makeEmulationClient } from './emulation_lib.mjs';

const client = makeEmulationClient('main', { headers: { 'X-Session': env('SESSION') } });
const connected = waitFor(client, 'connected');
client.connect();
const ctx = await connected;
emit({ connected: { id: ctx.client, transport: ctx.transport, data: ctx.data } });
const rpc = await client.rpc('whoami', {});
emit({ rpc: rpc.data });
client.disconnect();
done();
