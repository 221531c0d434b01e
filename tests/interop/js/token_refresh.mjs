// A connection token with a short exp is refreshed by the SDK (getToken + refresh command)
// without a disconnect: the connection is still up after exp + client.expired_close_delay.
// env: WS_URL, TOKEN (short exp), TOKEN_EXP (unix s), CLOSE_DELAY (s), FRESH_TOKEN, CHANNEL
import { done, emit, env, handshake, makeClient, makeSubscription, waitFor } from './lib.mjs';

let calls = 0;
const fresh = env('FRESH_TOKEN');
const client = makeClient('main', {
  token: env('TOKEN'),
  getToken: async () => {
    calls += 1;
    emit({ event: 'getToken', calls, at: Date.now() / 1000 });
    return fresh;
  },
});
const sub = makeSubscription(client, env('CHANNEL'), 'main');
const connected = waitFor(client, 'connected');
const subscribed = waitFor(sub, 'subscribed');
client.connect();
sub.subscribe();
const ctx = await connected;
await subscribed;
emit({ connected_at: Date.now() / 1000 });
// Connection closing, if any, would happen at exp + close delay: wait until well past it.
const deadline = (Number(env('TOKEN_EXP')) + Number(env('CLOSE_DELAY')) + 1.5) * 1000;
await new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now())));
const presence = await sub.presence();
await handshake('past_expiry', 'checked', {
  id: ctx.client, state: client.state, getToken_calls: calls,
  in_presence: Object.keys(presence.clients).includes(ctx.client), now: Date.now() / 1000,
});
client.disconnect();
done();
