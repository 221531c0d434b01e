"""A small application backend answering rtserver's proxy requests (twisted.web).

Run as ``python3 backend.py PORT``; prints ``{"ready": PORT}`` once listening. With
``PORT CERT KEY`` it serves HTTPS with that certificate, with ``PORT CERT KEY CLIENT_CA``
it also requires a client certificate that CA signed (mutual TLS). It plays a
site with cookie sessions (``Cookie: session=<user>``, or the emulated ``X-Session``
header) and records every proxy request it gets, for the tests to inspect:

* ``POST /connect``: a session -> ``user``, ``info`` and ``data``; users named
  ``short*`` expire in 2 s (renewed by ``/refresh``); no session -> disconnect 4501.
* ``POST /refresh``, ``POST /sub_refresh``: extend by 2 s; ``info`` counts the renewals.
* ``POST /subscribe``: ``proxied:allowed*`` and ``proxied:short*`` (expiring in 2 s)
  allowed with channel ``info`` and ``data``; anything else refused with error 1403.
* ``POST /publish``: ``{"text": t}`` becomes ``{"text": T.upper(), "by": user}``; the
  fields of an ``"ask"`` object in the data (``tags``, ``idempotency_key``, ``delta``,
  ``version``...) are added to the result as they are.
* ``POST /rpc``: ``whoami`` answers what the backend saw; ``fail`` is error 1404.
* ``POST /mode`` ``{"mode": "ok"|"sleep"|"garbage"|"status"}`` switches every proxy
  endpoint to answer normally, after 5 s, with a non-JSON body, or with status 503.
* ``GET /requests`` lists the recorded requests; ``POST /reset`` forgets them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

STATE: dict[str, Any] = {"mode": "ok", "requests": [], "renewals": 0}


def _session(body: dict[str, Any], headers: dict[str, str]) -> str:
    cookie = headers.get("cookie", "")
    for part in cookie.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "session" and value:
            return value
    return headers.get("x-session", "")


def answer(kind: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    now = int(time.time())
    if kind == "connect":
        user = _session(body, headers)
        if not user:
            return {"disconnect": {"code": 4501, "reason": "unauthorized"}}
        result: dict[str, Any] = {
            "user": user,
            "info": {"name": user.title()},
            "data": {"welcome": user},
            "meta": {"session": user},
        }
        if user.startswith("short"):
            result["expire_at"] = now + 2
        return {"result": result}
    if kind in ("refresh", "sub_refresh"):
        STATE["renewals"] += 1
        return {"result": {"expire_at": now + 2, "info": {"renewals": STATE["renewals"]}}}
    if kind == "subscribe":
        channel = body["channel"]
        if channel.startswith(("proxied:allowed", "proxied:short")):
            result = {"info": {"seat": body["user"]}, "data": {"topic": channel}}
            if channel.startswith("proxied:short"):
                result["expire_at"] = now + 2
            return {"result": result}
        return {"error": {"code": 1403, "message": "not a member"}}
    if kind == "publish":
        text = body["data"]["text"]
        result = {"data": {"text": text.upper(), "by": body["user"]}}
        return {"result": {**result, **body["data"].get("ask", {})}}
    if kind == "rpc":
        if body["method"] == "fail":
            return {"error": {"code": 1404, "message": "no such thing"}}
        seen = {k: body.get(k) for k in ("client", "user", "transport", "protocol", "encoding")}
        return {"result": {"data": {**seen, "echo": body.get("data")}}}
    raise ValueError(kind)


class ProxyEndpoint(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def render_POST(self, request: Request) -> bytes | int:
        body = json.loads(request.content.read())
        headers = {
            k.decode().lower(): v[-1].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        peer = request.getClientAddress()
        STATE["requests"].append(
            {"kind": self.kind, "body": body, "headers": headers, "port": getattr(peer, "port", 0)}
        )
        request.setHeader(b"content-type", b"application/json")
        mode = STATE["mode"]
        if mode == "garbage":
            return b"<html>this is not json"
        if mode == "status":
            request.setResponseCode(503)
            return b"{}"
        payload = json.dumps(answer(self.kind, body, headers)).encode()
        if mode == "sleep":
            call = reactor.callLater(5, _finish, request, payload)
            request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
            return NOT_DONE_YET
        return payload


def _finish(request: Request, payload: bytes) -> None:
    request.write(payload)
    request.finish()


class Control(Resource):
    isLeaf = True  # noqa: N815 - twisted.web's name

    def render_GET(self, request: Request) -> bytes:
        return json.dumps(STATE["requests"]).encode()

    def render_POST(self, request: Request) -> bytes:
        path = request.path.decode()
        if path == "/mode":
            STATE["mode"] = json.loads(request.content.read())["mode"]
        elif path == "/reset":
            STATE["requests"].clear()
        return b"{}"


def _tls_options(files: list[str]) -> Any:
    """Server TLS of ``CERT KEY [CLIENT_CA]`` (PEM files)."""
    import warnings
    from pathlib import Path

    from twisted.internet import ssl

    warnings.simplefilter("ignore")  # pyOpenSSL's deprecations; stdout carries "ready"
    pem = Path(files[0]).read_text() + Path(files[1]).read_text()
    mine = ssl.PrivateCertificate.loadPEM(pem)
    extra: dict[str, Any] = {}
    if len(files) > 2:
        ca = ssl.Certificate.loadPEM(Path(files[2]).read_text())
        extra = {"verify": True, "caCerts": [ca.original], "requireCertificate": True}
    return ssl.CertificateOptions(
        privateKey=mine.privateKey.original, certificate=mine.original, **extra
    )


def main() -> None:
    port = int(sys.argv[1])
    root = Resource()
    for kind in ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc"):
        root.putChild(kind.encode(), ProxyEndpoint(kind))
    control = Control()
    for name in (b"requests", b"mode", b"reset"):
        root.putChild(name, control)
    site = Site(root)
    if len(sys.argv) > 3:
        reactor.listenSSL(port, site, _tls_options(sys.argv[2:]), interface="127.0.0.1")
    else:
        reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print(json.dumps({"ready": port}), flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
