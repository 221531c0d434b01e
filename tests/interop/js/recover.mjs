// Over WebSocket: reconnect after missed publications, the subscription recovers them
// (js/lib.mjs runRecover). MODE=drop terminates the TCP connection (no close frame).
// env: WS_URL, TOKEN, CHANNEL, MODE, LIVE, MISSED
import { env, gatedWebSocket, makeClient, makeSubscription, runRecover } from './lib.mjs';

const gate = gatedWebSocket();
const client = makeClient('main', { token: env('TOKEN'), websocket: gate.WebSocket });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
await runRecover(client, sub, {
  mode: env('MODE'), live: Number(env('LIVE')), missed: Number(env('MISSED')), gate,
});
