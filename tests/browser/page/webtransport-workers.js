// Test page: several centrifuge-js clients (a QUIC connection each), WebTransport first and
// WebSocket as fallback, each subscribed to one channel.
// Query: wt=<https URL of /connection/webtransport>, ws=<ws URL of /connection/websocket>,
// hash=<base64 SHA-256 of the server's certificate>, token=<JWT>, channel=<name>,
// clients=<how many>. Every report names its client (0..clients-1); results go to
// window.__rtReport.
(function () {
  'use strict';
  var params = new URLSearchParams(window.location.search);
  function report(obj) {
    if (typeof window.__rtReport === 'function') window.__rtReport(obj);
  }
  // The test certificate is trusted through serverCertificateHashes (see webtransport.js).
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
  var channel = params.get('channel');
  function open(i) {
    var client = new Centrifuge(
      [
        { transport: 'webtransport', endpoint: params.get('wt') },
        { transport: 'websocket', endpoint: params.get('ws') },
      ],
      { token: params.get('token'), minReconnectDelay: 100, maxReconnectDelay: 500, timeout: 5000 },
    );
    client.on('connecting', function (ctx) { report({ event: 'connecting', client: i, code: ctx.code, reason: ctx.reason }); });
    client.on('connected', function (ctx) { report({ event: 'connected', client: i, transport: ctx.transport }); });
    client.on('disconnected', function (ctx) { report({ event: 'disconnected', client: i, code: ctx.code, reason: ctx.reason }); });
    var sub = client.newSubscription(channel);
    sub.on('subscribed', function (ctx) {
      report({ event: 'subscribed', client: i, recovered: !!ctx.recovered, wasRecovering: !!ctx.wasRecovering });
    });
    sub.on('publication', function (ctx) { report({ event: 'publication', client: i, data: ctx.data }); });
    sub.subscribe();
    client.connect();
    return { client: client, sub: sub };
  }
  var clients = [];
  for (var i = 0; i < Number(params.get('clients')); i++) clients.push(open(i));
  window.__rt = {
    // The same commands, answers not awaited (a client that does something, as opposed to
    // an idle one, which sends its next packet only with its transport's keepalive).
    poke: function () {
      clients.forEach(function (c) { c.sub.history({ limit: 0 }).catch(function () {}); });
      return 'sent';
    },
    // One command per client that needs the server's answer (history of the channel):
    // 'ok' for each client whose connection carries commands both ways.
    ask: function () {
      return Promise.all(clients.map(function (c) {
        return c.sub.history({ limit: 0 }).then(
          function () { return 'ok'; },
          function (err) { return 'error ' + (err && err.code) + ' ' + (err && err.message); },
        );
      }));
    },
  };
})();
