// A client publish into a namespace that does not allow it is rejected with 103; publishing
// into one that allows subscribers to publish works and comes back with the publisher info.
// env: WS_URL, TOKEN, RO_CHANNEL, CHAT_CHANNEL
import { describeError, done, emit, env, fatal, makeClient, makeSubscription, pubJSON, waitFor } from './lib.mjs';

const client = makeClient('main', { token: env('TOKEN') });
const ro = makeSubscription(client, env('RO_CHANNEL'), 'main');
const chat = makeSubscription(client, env('CHAT_CHANNEL'), 'main');
const roSubscribed = waitFor(ro, 'subscribed');
const chatSubscribed = waitFor(chat, 'subscribed');
client.connect();
ro.subscribe();
chat.subscribe();
await Promise.all([roSubscribed, chatSubscribed]);

try {
  await ro.publish({ text: 'not allowed' });
  emit({ ro_publish: 'ok' });
} catch (err) {
  if (!err || typeof err !== 'object' || !('code' in err)) fatal(`unexpected rejection: ${describeError(err)}`);
  emit({ ro_publish_error: { code: err.code, message: err.message } });
}
emit({ state_after_error: client.state, ro_state: ro.state });

const own = waitFor(chat, 'publication');
await chat.publish({ text: 'allowed' });
emit({ chat_publication: pubJSON(await own) });
client.disconnect();
done();
