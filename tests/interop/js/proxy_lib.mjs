// Helpers for the backend-proxy scenarios (tests/proxy/test_interop_proxy.py).
import WebSocket from 'ws';

// A `ws` WebSocket class sending `cookie` with the upgrade request, as a browser sends the
// session cookie of its site (null: no Cookie header).
export function cookieWebSocket(cookie) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
    }
  };
}
