// Test page: centrifuge-js (browser build) with ONE emulation transport against rtserver,
// served from a different origin than rtserver so every request is cross-origin (CORS).
// Query: rt=<rtserver base URL>, transport=http_stream|sse, token=<JWT>, channel=<name>.
// Results go to window.__rtReport (exposed by the Playwright driver) as plain objects.
(function () {
  'use strict';
  var params = new URLSearchParams(window.location.search);
  var base = params.get('rt');
  var transport = params.get('transport');
  function report(obj) {
    if (typeof window.__rtReport === 'function') window.__rtReport(obj);
  }
  function errorInfo(err) {
    if (!err) return null;
    return { code: err.code === undefined ? null : err.code, message: String(err.message || err) };
  }

  var client = new Centrifuge(
    [{ transport: transport, endpoint: base + '/connection/' + transport }],
    {
      emulationEndpoint: base + '/emulation',
      token: params.get('token'),
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
      timeout: 3000,
    },
  );
  client.on('connecting', function (ctx) { report({ event: 'connecting', code: ctx.code, reason: ctx.reason }); });
  client.on('connected', function (ctx) { report({ event: 'connected', client: ctx.client, transport: ctx.transport }); });
  client.on('disconnected', function (ctx) { report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }); });
  client.on('error', function (ctx) { report({ event: 'error', type: ctx.type, error: errorInfo(ctx.error) }); });

  var sub = client.newSubscription(params.get('channel'));
  sub.on('subscribed', function (ctx) {
    report({ event: 'subscribed', channel: ctx.channel, recoverable: ctx.recoverable, positioned: ctx.positioned });
  });
  sub.on('publication', function (ctx) { report({ event: 'publication', data: ctx.data, offset: ctx.offset }); });
  sub.on('error', function (ctx) { report({ event: 'sub_error', type: ctx.type, error: errorInfo(ctx.error) }); });

  window.__rt = {
    state: function () { return { client: client.state, sub: sub.state }; },
    history: function () {
      return sub.history({ limit: -1 }).then(function (r) {
        return { publications: r.publications.map(function (p) { return { data: p.data, offset: p.offset }; }), offset: r.offset, epoch: r.epoch };
      });
    },
    presence: function () {
      return sub.presence().then(function (r) { return Object.keys(r.clients); });
    },
  };
  report({ event: 'page_ready', origin: window.location.origin, transport: transport, version: typeof Centrifuge });
  client.connect();
  sub.subscribe();
})();
