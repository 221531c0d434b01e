// Over ONE emulation transport (TRANSPORT): reconnect after missed publications and recover
// them (js/lib.mjs runRecover). MODE=drop fails the streaming connection like a network error.
// env: BASE_URL, TRANSPORT, TOKEN, CHANNEL, MODE, LIVE, MISSED
import { env, makeSubscription, runRecover } from './lib.mjs';
import { gatedFetch, makeEmulationClient } from './emulation_lib.mjs';

const gate = gatedFetch();
const client = makeEmulationClient('main', { token: env('TOKEN'), fetch: gate.fetch });
const sub = makeSubscription(client, env('CHANNEL'), 'main');
await runRecover(client, sub, {
  mode: env('MODE'), live: Number(env('LIVE')), missed: Number(env('MISSED')), gate,
});
