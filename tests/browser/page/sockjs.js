// Test page: centrifuge-js (browser build) over SockJS with ONE SockJS transport against
// rtserver, served from a different origin than rtserver.
// Query: rt=<rtserver base URL>, transport=<sockjs transport>, token=<JWT>, channel=<name>.
// Results go to window.__rtReport (exposed by the Playwright driver) as plain objects.
(function () {
  'use strict';
  var params = new URLSearchParams(window.location.search);
  var transport = params.get('transport');
  function report(obj) {
    if (typeof window.__rtReport === 'function') window.__rtReport(obj);
  }
  function errorInfo(err) {
    if (!err) return null;
    return { code: err.code === undefined ? null : err.code, message: String(err.message || err) };
  }

  var client = new Centrifuge(
    [{ transport: 'sockjs', endpoint: params.get('rt') + '/connection/sockjs' }],
    {
      sockjs: SockJS,
      sockjsOptions: { transports: [transport] },
      token: params.get('token'),
      minReconnectDelay: 100,
      maxReconnectDelay: 500,
      timeout: 5000,
    },
  );
  client.on('connected', function (ctx) { report({ event: 'connected', client: ctx.client, transport: ctx.transport }); });
  client.on('disconnected', function (ctx) { report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }); });
  client.on('error', function (ctx) { report({ event: 'error', type: ctx.type, error: errorInfo(ctx.error) }); });

  var sub = client.newSubscription(params.get('channel'));
  sub.on('subscribed', function (ctx) {
    report({ event: 'subscribed', channel: ctx.channel, recoverable: ctx.recoverable, wasRecovering: ctx.wasRecovering, recovered: ctx.recovered });
  });
  sub.on('publication', function (ctx) { report({ event: 'publication', data: ctx.data, offset: ctx.offset }); });

  window.__rt = {
    state: function () { return { client: client.state, sub: sub.state }; },
    history: function () {
      client.disconnect();
      return { client: client.state };
    },
    presence: function () {
      client.connect();
      return { client: client.state };
    },
  };
  report({ event: 'page_ready', origin: window.location.origin, transport: transport, sockjs: typeof SockJS });
  client.connect();
  sub.subscribe();
})();
