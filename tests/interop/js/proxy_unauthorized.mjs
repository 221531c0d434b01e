// Without the session Cookie the connect proxy answers disconnect 4501: the SDK reports it
// and does not reconnect (4500-4999 are terminal).
// env: WS_URL
import { done, emit, makeClient, waitFor } from './lib.mjs';
import { cookieWebSocket } from './proxy_lib.mjs';

const client = makeClient('main', { websocket: cookieWebSocket(null) });
let connecting = 0;
client.on('connecting', () => { connecting += 1; });
const disconnected = waitFor(client, 'disconnected');
client.connect();
const ctx = await disconnected;
const attemptsAtDisconnect = connecting;
await new Promise((resolve) => setTimeout(resolve, 1500));
emit({ disconnected: { code: ctx.code, reason: ctx.reason }, state: client.state,
       connect_attempts_after: connecting - attemptsAtDisconnect });
done();
