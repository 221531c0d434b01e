"""Session lifecycle on a Clock: heartbeats, disconnect delay, cleanup of timers."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from rtserver.sockjs import SockJSOptions, SockJSResource, State
from rtserver.sockjs.conformance import Echo


class Recorder(Echo):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_open(self, session: Any) -> None:
        self.events.append(("open", session.id))

    def on_close(self, session: Any) -> None:
        self.events.append(("close", session.id))


def make(**options: Any) -> tuple[SockJSResource, Recorder, Clock]:
    clock = Clock()
    handler = Recorder()
    resource = SockJSResource(handler, SockJSOptions(**options), clock=clock)
    return resource, handler, clock


def request(resource: SockJSResource, method: bytes, path: str, body: bytes = b"") -> DummyRequest:
    req = DummyRequest([p.encode() for p in path.strip("/").split("/")])
    req.method = method
    req.content = io.BytesIO(body)
    result = resource.render(req)
    if isinstance(result, bytes):
        req.write(result)
        req.finish()
    return req


def body(req: DummyRequest) -> bytes:
    return b"".join(req.written)


def test_vanished_polling_client_is_cleaned_up_after_disconnect_delay() -> None:
    """A client that stops polling: session and timers are gone after 5 s, app told once."""
    resource, handler, clock = make()
    req = request(resource, b"POST", "/000/s1/xhr")
    assert body(req) == b"o\n" and req.finished
    assert len(resource.sessions) == 1
    clock.advance(4.9)
    assert len(resource.sessions) == 1
    clock.advance(0.2)
    assert len(resource.sessions) == 0
    assert handler.events == [("open", "s1"), ("close", "s1")]
    assert clock.getDelayedCalls() == []


def test_polling_client_keeps_session_alive() -> None:
    """Each poll re-arms the delay; buffered messages wait for the next poll."""
    resource, _, clock = make()
    request(resource, b"POST", "/000/s1/xhr")
    for i in range(3):
        clock.advance(4)
        send = request(resource, b"POST", "/000/s1/xhr_send", b'["m%d"]' % i)
        assert send.responseCode == 204
        req = request(resource, b"POST", "/000/s1/xhr")
        assert body(req) == b'a["m%d"]\n' % i
    assert len(resource.sessions) == 1
    clock.advance(5)
    assert len(resource.sessions) == 0 and clock.getDelayedCalls() == []


def test_heartbeat_ends_a_long_poll() -> None:
    """A waiting poll gets h after heartbeat_delay, then the disconnect timer runs."""
    resource, _, clock = make(heartbeat_delay=25)
    request(resource, b"POST", "/000/s1/xhr")
    waiting = request(resource, b"POST", "/000/s1/xhr")
    assert not waiting.finished
    clock.advance(25)
    assert body(waiting) == b"h\n" and waiting.finished
    clock.advance(5)
    assert len(resource.sessions) == 0 and clock.getDelayedCalls() == []


def test_streaming_heartbeats_repeat_and_stop_with_the_session() -> None:
    """H every heartbeat_delay on a stream; aborting it removes session and timers."""
    resource, handler, clock = make(heartbeat_delay=10)
    stream = request(resource, b"POST", "/000/s1/xhr_streaming")
    clock.advance(10)
    clock.advance(10)
    assert body(stream).endswith(b"o\nh\nh\n")
    stream.processingFailed(Exception("peer went away"))  # type: ignore[arg-type]
    assert len(resource.sessions) == 0
    assert clock.getDelayedCalls() == []
    assert handler.events[-1] == ("close", "s1")


def test_closed_session_lingers_then_goes() -> None:
    """After an application close the session answers with c[...] until the delay ends."""
    resource, handler, clock = make()
    request(resource, b"POST", "/000/s1/xhr")
    session = resource.sessions.get("s1")
    assert session is not None
    session.close(3001, "bye")
    assert session.state is State.CLOSING
    assert handler.events[-1] == ("close", "s1")
    clock.advance(3)
    assert body(request(resource, b"POST", "/000/s1/xhr")) == b'c[3001,"bye"]\n'
    clock.advance(5)
    assert resource.sessions.get("s1") is None
    assert clock.getDelayedCalls() == []
    assert body(request(resource, b"POST", "/000/s1/xhr")) == b"o\n"


def test_shutdown_expires_every_session() -> None:
    """wait_closed ends waiting requests and cancels every timer."""
    resource, handler, clock = make()
    request(resource, b"POST", "/000/a/xhr")
    waiting = request(resource, b"POST", "/000/b/xhr_streaming")
    resource.wait_closed(1)
    assert waiting.finished
    assert len(resource.sessions) == 0
    assert clock.getDelayedCalls() == []
    assert sorted(e for e in handler.events if e[0] == "close") == [("close", "a"), ("close", "b")]


def test_options_never_create_sessions() -> None:
    """Preflights answer without touching the registry."""
    resource, _, clock = make()
    req = request(resource, b"OPTIONS", "/000/s1/xhr_streaming")
    assert req.responseCode == 204
    assert len(resource.sessions) == 0 and clock.getDelayedCalls() == []


def test_unknown_session_send_is_404_for_every_send_transport() -> None:
    """A request for a session this node does not hold gets 404 (cluster pinning check)."""
    resource, _, _ = make()
    assert request(resource, b"POST", "/000/nope/xhr_send", b'["x"]').responseCode == 404
    assert request(resource, b"POST", "/000/nope/jsonp_send", b'["x"]').responseCode == 404
    assert len(resource.sessions) == 0
