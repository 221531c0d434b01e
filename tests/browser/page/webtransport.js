// Test page: centrifuge-js (browser build) with WebTransport first and WebSocket as fallback.
// Query: wt=<https URL of /connection/webtransport>, ws=<ws URL of /connection/websocket>,
// hash=<base64 SHA-256 of the server's certificate>, token=<JWT>, channel=<name>,
// chat=<channel the page publishes into>, codec=json|protobuf (which build the HTML loaded:
// the Protobuf build carries data as bytes, here JSON text). Results go to window.__rtReport.
(function () {
  'use strict';
  var params = new URLSearchParams(window.location.search);
  var binary = params.get('codec') === 'protobuf';
  function encode(value) { return binary ? new TextEncoder().encode(JSON.stringify(value)) : value; }
  function decode(data) { return binary ? JSON.parse(new TextDecoder().decode(data)) : data; }
  function report(obj) {
    if (typeof window.__rtReport === 'function') window.__rtReport(obj);
  }
  // A test certificate is trusted through serverCertificateHashes (ECDSA, valid <= 14 days);
  // centrifuge-js constructs globalThis.WebTransport with the URL only, so add the option here.
  var hash = Uint8Array.from(atob(params.get('hash')), function (c) { return c.charCodeAt(0); });
  var Native = globalThis.WebTransport;
  if (Native) {
    globalThis.WebTransport = class extends Native {
      constructor(url, options) {
        super(url, Object.assign({}, options, {
          serverCertificateHashes: [{ algorithm: 'sha-256', value: hash }],
        }));
      }
    };
  }
  var client = new Centrifuge(
    [
      { transport: 'webtransport', endpoint: params.get('wt') },
      { transport: 'websocket', endpoint: params.get('ws') },
    ],
    { token: params.get('token'), minReconnectDelay: 100, maxReconnectDelay: 500, timeout: 5000 },
  );
  client.on('connecting', function (ctx) { report({ event: 'connecting', code: ctx.code, reason: ctx.reason }); });
  client.on('connected', function (ctx) { report({ event: 'connected', transport: ctx.transport }); });
  client.on('disconnected', function (ctx) { report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }); });
  client.on('error', function (ctx) { report({ event: 'error', type: ctx.type, message: String(ctx.error && ctx.error.message) }); });
  function watch(channel) {
    var sub = client.newSubscription(channel);
    sub.on('subscribed', function (ctx) {
      report({ event: 'subscribed', channel: channel, recovered: !!ctx.recovered, wasRecovering: !!ctx.wasRecovering });
    });
    sub.on('publication', function (ctx) { report({ event: 'publication', channel: channel, data: decode(ctx.data) }); });
    sub.subscribe();
    return sub;
  }
  var news = watch(params.get('channel'));
  var chat = watch(params.get('chat'));
  window.__rt = {
    publish: function () {
      return chat.publish(encode({ from: 'browser' })).then(
        function () { return 'ok'; },
        function (err) { return 'error ' + (err && err.code); },
      );
    },
  };
  void news;
  client.connect();
})();
