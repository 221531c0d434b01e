// Connect with an expired token: the server answers 109, the SDK calls getToken and connects
// with the fresh token.
// env: WS_URL, TOKEN (expired), FRESH_TOKEN
import { done, emit, env, makeClient, waitFor } from './lib.mjs';

let calls = 0;
const fresh = env('FRESH_TOKEN');
const client = makeClient('main', {
  token: env('TOKEN'),
  getToken: async () => {
    calls += 1;
    emit({ event: 'getToken', calls });
    return fresh;
  },
});
const connected = waitFor(client, 'connected');
client.connect();
const ctx = await connected;
emit({ connected_with: ctx.client, getToken_calls: calls, state: client.state });
client.disconnect();
done();
