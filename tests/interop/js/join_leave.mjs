// force_push_join_leave: subscriber A sees B join and leave the channel, with B's ClientInfo.
// env: WS_URL, TOKEN_A, TOKEN_B, CHANNEL
import { done, emit, env, makeClient, makeSubscription, waitFor } from './lib.mjs';

const channel = env('CHANNEL');
const a = makeClient('a', { token: env('TOKEN_A') });
const subA = makeSubscription(a, channel, 'a');
const aSubscribed = waitFor(subA, 'subscribed');
a.connect();
subA.subscribe();
await aSubscribed;

const b = makeClient('b', { token: env('TOKEN_B') });
const subB = makeSubscription(b, channel, 'b');
const bConnected = waitFor(b, 'connected');
b.connect();
const bId = (await bConnected).client;
const joined = waitFor(subA, 'join', (ctx) => ctx.info.client === bId);
subB.subscribe();
const join = await joined;
emit({ a_saw_join: join.info, b_id: bId });

const left = waitFor(subA, 'leave', (ctx) => ctx.info.client === bId);
subB.unsubscribe();
const leave = await left;
emit({ a_saw_leave: leave.info });
b.disconnect();
a.disconnect();
done();
