"""Refused requests leave nothing behind: no live ``Client``, no growing traceback.

Each scenario refuses the same request 1,000 times through the real paths (a ``Client``
of a Clock-driven node fed raw frames; the server API resource fed raw bodies) and then
requires, after ``gc.collect()``, that

* the number of live :class:`~rtserver.core.client.Client` objects is no higher than the
  baseline taken after a warm-up, and
* neither are the traceback entries reachable from live exception objects (their
  ``__traceback__``, ``__context__`` and ``__cause__`` chains).

An exception instance raised again and again (a shared module-level ``Error.X``) grows
its traceback by one chain per raise and pins every frame on it, and with the frames the
refused ``Client``: both numbers then grow with the number of refused requests.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import jwt
import orjson
import pytest
from twisted.internet.defer import Deferred

from rtserver.api.executor import APIExecutor
from rtserver.config import HTTPAPIConfig
from rtserver.core.client import Client
from rtserver.core.node import Node
from rtserver.testing import RecordingSink, make_node
from rtserver.web.api import APIResource

SECRET = "leak-test-secret-of-at-least-32-bytes"
ROUNDS = 1_000
#: Warm-up rounds before the baseline: first-use caches, and more log events than
#: Twisted's 200-event buffer (kept until logging begins), so that leftovers of earlier
#: tests are evicted before the baseline rather than during the measured rounds.
WARMUP = 250
SETTINGS: dict[str, Any] = {
    "client": {"token": {"hmac_secret_key": SECRET}, "channel_limit": 1},
    "channel": {
        "without_namespace": {"allow_subscribe_for_client": True},
        "namespaces": [{"name": "hist", "history_size": 10, "history_ttl": "300s"}],
    },
    "http_api": {"insecure": True},
}


def _token(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _live_clients() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, Client))


def _tb_len(tb: TracebackType | None) -> int:
    n = 0
    while tb is not None:
        n += 1
        tb = tb.tb_next
    return n


def _traceback_entries() -> int:
    """Traceback entries reachable from every live exception object."""
    total = 0
    for obj in gc.get_objects():
        if not isinstance(obj, BaseException):
            continue
        seen: set[int] = set()
        exc: BaseException | None = obj
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            total += _tb_len(exc.__traceback__)
            exc = exc.__cause__ or exc.__context__
    return total


def _measure() -> tuple[int, int]:
    gc.collect()
    return _live_clients(), _traceback_entries()


class Connections:
    """Refused connections through a real Client on a Clock-driven node."""

    def __init__(self) -> None:
        self.node, self.clock = make_node(SETTINGS)

    def attempt(self, frames: list[bytes], expect: Callable[[RecordingSink], None]) -> None:
        sink = RecordingSink()
        client = self.node.make_client(sink)
        for frame in frames:
            client.receive(frame)
        self.clock.advance(0)
        expect(sink)
        # The peer goes away after being refused (a no-op if the server closed first).
        client.transport_lost()

    def stop(self) -> None:
        self.node.stop()
        self.clock.advance(0)


def _closed_with(code: int) -> Callable[[RecordingSink], None]:
    def check(sink: RecordingSink) -> None:
        assert sink.closed_with is not None and sink.closed_with.code == code, sink.closed_with

    return check


def _error_reply(code: int) -> Callable[[RecordingSink], None]:
    def check(sink: RecordingSink) -> None:
        errors = [r["error"]["code"] for r in sink.replies() if "error" in r]
        assert errors == [code], sink.messages()

    return check


def _connect(token: str = "") -> bytes:
    return orjson.dumps({"id": 1, "connect": {"token": token} if token else {}})


_EXPIRED = _token({"sub": "u", "exp": 1_000})  # long expired
_VALID = _token({"sub": "u"})

CONNECTION_CASES: dict[str, tuple[list[bytes], Callable[[RecordingSink], None]]] = {
    "bad token": ([_connect("not.a.token")], _closed_with(3500)),
    "badly signed token": ([_connect(_VALID[:-4] + "AAAA")], _closed_with(3500)),
    "no token": ([_connect()], _closed_with(3501)),
    "expired token": ([_connect(_EXPIRED)], _error_reply(109)),
    "bad JSON": ([b'{"id":1,"connect":'], _closed_with(3501)),
    "over the channel limit": (
        [
            _connect(_VALID),
            b'{"id":2,"subscribe":{"channel":"a"}}',
            b'{"id":3,"subscribe":{"channel":"b"}}',
        ],
        _error_reply(106),
    ),
    "unknown namespace": (
        [_connect(_VALID), b'{"id":2,"subscribe":{"channel":"nope:a"}}'],
        _error_reply(102),
    ),
}


def test_unidirectional_refused_subscriptions_do_not_leak() -> None:
    """A uni connect whose ``subs`` are refused (error 103, logged at debug) frees the client."""
    conns = Connections()

    def attempt() -> None:
        sink = RecordingSink(unidirectional=True)
        client = conns.node.make_client(sink)
        client.start_unidirectional(b'{"token":"%s","subs":{"$private":{}}}' % _VALID.encode())
        conns.clock.advance(0)
        assert "subs" not in sink.messages()[0]["connect"], sink.messages()
        client.transport_lost()

    conns.clock.advance(time.time())
    try:
        for _ in range(WARMUP):
            attempt()
        clients0, tracebacks0 = _measure()
        for _ in range(ROUNDS):
            attempt()
        clients1, tracebacks1 = _measure()
    finally:
        conns.stop()
    assert clients1 <= clients0, f"{clients1 - clients0} refused clients still alive"
    assert tracebacks1 <= tracebacks0, f"{tracebacks1 - tracebacks0} traceback entries retained"


@pytest.mark.parametrize("case", sorted(CONNECTION_CASES))
def test_refused_connections_do_not_leak(case: str) -> None:
    frames, expect = CONNECTION_CASES[case]
    conns = Connections()
    conns.clock.advance(time.time())  # tokens carry real unix times
    try:
        for _ in range(WARMUP):
            conns.attempt(frames, expect)
        clients0, tracebacks0 = _measure()
        for _ in range(ROUNDS):
            conns.attempt(frames, expect)
        clients1, tracebacks1 = _measure()
    finally:
        conns.stop()
    assert clients1 <= clients0, f"{clients1 - clients0} refused clients still alive"
    assert tracebacks1 <= tracebacks0, f"{tracebacks1 - tracebacks0} traceback entries retained"


def _api() -> tuple[Node, APIResource, Any]:
    node, clock = make_node(SETTINGS)
    return node, APIResource(APIExecutor(node), HTTPAPIConfig(insecure=True)), clock


API_CASES: dict[str, tuple[str, bytes, int]] = {
    "102 unknown channel": ("publish", b'{"channel":"nope:x","data":{}}', 102),
    "108 not available": ("history", b'{"channel":"plain"}', 108),
    "107 bad request": ("publish", b'{"data":{}}', 107),
    "104 method not found": ("rpc", b'{"method":"x"}', 104),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_api_errors_do_not_leak(case: str) -> None:
    method, body, code = API_CASES[case]
    node, api, clock = _api()

    def call() -> None:
        d = Deferred.fromCoroutine(api.run_method(method, body, False))
        clock.advance(0)
        response = d.result
        assert orjson.loads(response.body)["error"]["code"] == code

    try:
        for _ in range(WARMUP):
            call()
        _, tracebacks0 = _measure()
        for _ in range(ROUNDS):
            call()
        _, tracebacks1 = _measure()
    finally:
        node.stop()
        clock.advance(0)
    assert tracebacks1 <= tracebacks0, f"{tracebacks1 - tracebacks0} traceback entries retained"
