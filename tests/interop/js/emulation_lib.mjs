// Helpers for the bidirectional-emulation scenarios (HTTP-streaming and SSE + /emulation).
//
// env: BASE_URL (http://127.0.0.1:PORT of rtserver), TRANSPORT ('http_stream' or 'sse'),
// optional EMULATION_URL (the node that takes /emulation requests; default BASE_URL).
// The client is given ONLY that transport, so a connection can only succeed through it.
import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import { env, traceClient } from './lib.mjs';

export const BASE_URL = env('BASE_URL');
export const TRANSPORT = env('TRANSPORT');
export const EMULATION_URL = process.env.EMULATION_URL || BASE_URL;

// A fetch() whose streaming connections (/connection/...) can be dropped like a network failure
// (the response body errors with a TypeError and the request is aborted, so the server sees the
// TCP connection go away) and whose new streaming connections are held back while the gate is
// closed: a reconnect then reaches the server only after release(). POST /emulation passes.
export function gatedFetch(realFetch = globalThis.fetch) {
  const live = new Set();
  let held = null;
  let onHeld = null;

  async function fetchImpl(input, init = {}) {
    const url = String(input instanceof Request ? input.url : input);
    if (!url.includes('/connection/')) return realFetch(input, init);
    if (held !== null) {
      await new Promise((resolve) => {
        held.push(resolve);
        if (onHeld) onHeld();
      });
    }
    const abort = new AbortController();
    const outer = init.signal;
    if (outer) {
      if (outer.aborted) abort.abort(outer.reason);
      else outer.addEventListener('abort', () => abort.abort(outer.reason), { once: true });
    }
    const response = await realFetch(input, { ...init, signal: abort.signal });
    if (!response.body) return response;
    const reader = response.body.getReader();
    let controller;
    const entry = {};
    const body = new ReadableStream({
      start(c) { controller = c; },
      async pull(c) {
        try {
          const { done, value } = await reader.read();
          if (done) { live.delete(entry); c.close(); } else c.enqueue(value);
        } catch (e) {
          live.delete(entry);
          try { c.error(e); } catch { /* already errored by drop() */ }
        }
      },
      cancel(reason) {
        live.delete(entry);
        reader.cancel(reason).catch(() => {});
      },
    });
    entry.drop = () => {
      try { controller.error(new TypeError('network connection dropped (test)')); } catch { /* closed */ }
      abort.abort();
    };
    live.add(entry);
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  }

  return {
    fetch: fetchImpl,
    // Fails every live streaming connection and holds back new ones; returns how many dropped.
    drop() {
      held = [];
      const entries = [...live];
      live.clear();
      for (const entry of entries) entry.drop();
      return entries.length;
    },
    // Resolves once a new streaming request is held back (the SDK reconnected).
    whenHeld() {
      if (held && held.length) return Promise.resolve();
      return new Promise((resolve) => { onHeld = () => { onHeld = null; resolve(); }; });
    },
    release() {
      const waiting = held || [];
      held = null;
      for (const resolve of waiting) resolve();
      return waiting.length;
    },
  };
}

// An EventSource (npm `eventsource`, fetch-based) that uses the given fetch implementation.
export function eventSourceWith(fetchImpl) {
  return class extends EventSource {
    constructor(url, init = {}) {
      super(url, { ...init, fetch: fetchImpl });
    }
  };
}

// A Centrifuge client restricted to TRANSPORT that prints its lifecycle events.
export function makeEmulationClient(label, options = {}) {
  const fetchImpl = options.fetch || globalThis.fetch;
  const { fetch: _unused, ...rest } = options;
  const client = new Centrifuge(
    [{ transport: TRANSPORT, endpoint: `${BASE_URL}/connection/${TRANSPORT}` }],
    {
      emulationEndpoint: `${EMULATION_URL}/emulation`,
      fetch: fetchImpl,
      eventsource: eventSourceWith(fetchImpl),
      minReconnectDelay: 100,
      maxReconnectDelay: 1000,
      ...rest,
    },
  );
  return traceClient(client, label);
}
