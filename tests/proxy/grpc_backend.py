"""A grpcio backend implementing Centrifugo's ``CentrifugoProxy`` service for the tests.

Same site as ``backend.py``: a session in the ``cookie`` metadata (``session=<user>``)
authenticates, ``proxied:allowed*`` channels are allowed, publications are upper-cased
(kept out of history, plus the ``PublishResult`` fields of an ``"ask"`` object in the data),
RPC ``whoami`` tells what the backend saw, ``fail`` is error 1404 and ``sleep`` answers
after 2 s. Runs in the test process on grpcio's threads; ``calls`` records
``(method, request, metadata)`` (the values of ``-bin`` keys as bytes), ``peers`` the common name of each call's client
certificate ("" without one) and ``cancelled`` counts calls the client cancelled.
Plaintext, or TLS with ``tls=(certificate, key)`` (PEM bytes), requiring a client
certificate signed by ``client_ca``; ``options`` are grpcio server options.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from typing import Any

import grpc

from rtserver.proxy import proxy_pb2 as pb

METHODS = {
    "Connect": (pb.ConnectRequest, pb.ConnectResponse),
    "Refresh": (pb.RefreshRequest, pb.RefreshResponse),
    "Subscribe": (pb.SubscribeRequest, pb.SubscribeResponse),
    "Publish": (pb.PublishRequest, pb.PublishResponse),
    "RPC": (pb.RPCRequest, pb.RPCResponse),
    "SubRefresh": (pb.SubRefreshRequest, pb.SubRefreshResponse),
}


class GRPCBackend:
    def __init__(
        self,
        port: int,
        *,
        tls: tuple[bytes, bytes] | None = None,
        client_ca: bytes | None = None,
        options: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        self.port = port
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.peers: list[str] = []
        self.cancelled = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(name),
                request_deserializer=req.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
            for name, (req, _) in METHODS.items()
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("centrifugal.centrifugo.proxy.CentrifugoProxy",
                                                  handlers),)
        )
        if tls is None:
            self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls[1], tls[0])], root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    def _handler(self, name: str) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            md = dict(context.invocation_metadata())  # bytes for '-bin' keys
            names = context.auth_context().get("x509_common_name", [b""])
            with self._lock:
                self.calls.append((name, request, md))
                self.peers.append(names[0].decode())
            return getattr(self, name.lower())(request, md, context)

        return handle

    def connect(self, req: pb.ConnectRequest, md: dict[str, str], ctx: Any) -> Any:
        session = md.get("cookie", "").partition("session=")[2].split(";")[0]
        if not session:
            return pb.ConnectResponse(disconnect=pb.Disconnect(code=4501, reason="unauthorized"))
        subs = {"proxied:allowed-home": pb.SubscribeOptions(info=b'{"home":true}')}
        result = pb.ConnectResult(
            user=session, info=json.dumps({"name": session.title()}).encode(),
            data=b'{"welcome":"grpc"}', subs=subs, meta=b'{"m":1}',
        )
        return pb.ConnectResponse(result=result)

    def refresh(self, req: Any, md: dict[str, str], ctx: Any) -> Any:
        return pb.RefreshResponse(result=pb.RefreshResult(expire_at=int(time.time()) + 2))

    def subrefresh(self, req: Any, md: dict[str, str], ctx: Any) -> Any:
        return pb.SubRefreshResponse(result=pb.SubRefreshResult(expire_at=int(time.time()) + 2))

    def subscribe(self, req: pb.SubscribeRequest, md: dict[str, str], ctx: Any) -> Any:
        if not req.channel.startswith("proxied:allowed"):
            return pb.SubscribeResponse(error=pb.Error(code=1403, message="not a member"))
        override = pb.SubscribeOptionOverride(join_leave=pb.BoolValue(value=True))
        result = pb.SubscribeResult(info=json.dumps({"seat": req.user}).encode(),
                                    data=b'{"topic":"grpc"}', override=override)
        return pb.SubscribeResponse(result=result)

    def publish(self, req: pb.PublishRequest, md: dict[str, str], ctx: Any) -> Any:
        body = json.loads(req.data)
        data = json.dumps({"text": body["text"].upper(), "by": req.user}).encode()
        ask = {"skip_history": True, **body.get("ask", {})}
        return pb.PublishResponse(result=pb.PublishResult(data=data, **ask))

    def rpc(self, req: pb.RPCRequest, md: dict[str, str], ctx: grpc.ServicerContext) -> Any:
        if req.method == "fail":
            return pb.RPCResponse(error=pb.Error(code=1404, message="no such thing"))
        if req.method == "sleep":
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and ctx.is_active():
                time.sleep(0.01)
            if not ctx.is_active():
                with self._lock:
                    self.cancelled += 1
        seen = {"client": req.client, "user": req.user, "transport": req.transport,
                "protocol": req.protocol, "cookie": md.get("cookie", "")}
        return pb.RPCResponse(result=pb.RPCResult(data=json.dumps(seen).encode()))
