"""SockJS sessions: state, buffering, heartbeats and the disconnect delay.

A :class:`Session` outlives the HTTP requests that carry it. At most one *receiver* (a
response, or a WebSocket) is attached at a time; messages sent while none is attached are
buffered. Timers run on an injected ``IReactorTime``: a heartbeat (``h``) every
``heartbeat_delay`` seconds while a receiver is attached, and a disconnect timer of
``disconnect_delay`` seconds while none is. When it fires the session is gone. Every path
to the end (timer, client abort, shutdown) goes through :meth:`Session._gone`, which
cancels both timers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import Interface

from rtserver.logs import Logger
from rtserver.protocol import sockjs as frames
from rtserver.sockjs.options import SockJSOptions

__all__ = ["ISockJSHandler", "Receiver", "Session", "SessionRegistry", "State"]

_log = Logger()

_ANOTHER_CONNECTION = frames.close_frame(2010, "Another connection still open")


class ISockJSHandler(Interface):
    """The application behind a SockJS endpoint (one instance serves every session)."""

    # ``session`` is a Session, or for raw ``/websocket`` a RawSession with the same calls.

    def on_open(session: Session) -> None:
        """A session opened (the client has received ``o``)."""

    def on_message(session: Session, message: str) -> None:
        """One message (a ``str``) arrived on ``session``."""

    def on_close(session: Session) -> None:
        """The session ended: closed by the application, timed out or aborted."""


class Receiver(Protocol):
    """Where a session's frames go: a receiving HTTP response or a WebSocket."""

    def send_frame(self, frame: bytes) -> bool:
        """Write one frame; False when this receiver takes no more (poll done, limit hit)."""

    def finish(self) -> None:
        """End the response or connection (idempotent)."""

    def register_producer(self, producer: IPushProducer) -> None:
        """Let ``producer`` be paused while this receiver's buffer is full."""

    def unregister_producer(self) -> None:
        """Undo :meth:`register_producer` (idempotent)."""


class State(enum.Enum):
    """Where a session is in its life."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Session:
    """One SockJS session: what the application sees and drives.

    Attributes:
        id: The session id from the URL (random per WebSocket session).
        transport: The transport that opened it (``xhr``, ``websocket``...).
        headers: Request headers of the request that opened it (lower-case names).
        context: Free for the application (e.g. the connection object it serves).
    """

    def __init__(
        self,
        session_id: str,
        handler: Any,
        clock: IReactorTime,
        options: SockJSOptions,
        *,
        transport: str,
        headers: dict[str, str] | None = None,
        on_gone: Callable[[Session], None] | None = None,
        linger: bool = True,
    ) -> None:
        self.id = session_id
        self.transport = transport
        self.headers = headers or {}
        self.context: Any = None
        self.state = State.CONNECTING
        self._handler = handler
        self._clock = clock
        self._options = options
        self._on_gone = on_gone
        self._linger = linger
        self._receiver: Receiver | None = None
        self._producer: IPushProducer | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._holding = False
        self._close: bytes | None = None
        self._notified = False
        self._heartbeat: IDelayedCall | None = None
        self._disconnect: IDelayedCall | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of quoted messages waiting for a receiver."""
        return self._buffered

    @property
    def attached(self) -> bool:
        """Whether a receiver is attached now."""
        return self._receiver is not None

    # --- application side ------------------------------------------------------------

    def send(self, message: str) -> bool:
        """Queue one message; False (dropped) unless the session is open."""
        return self.send_quoted([frames.quote(message).encode("utf-8")])

    def send_quoted(self, quoted: Sequence[bytes]) -> bool:
        """Queue already-quoted messages (see :func:`rtserver.protocol.sockjs.quote`)."""
        if self.state is not State.OPEN:
            return False
        self._buffer.extend(quoted)
        self._buffered += sum(len(q) for q in quoted)
        if not self._holding:
            self._flush()
        return True

    def close(self, code: int = 1000, reason: str = "Normal closure") -> None:
        """Close with ``c[code,"reason"]`` after what is buffered; idempotent."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.state = State.CLOSING
        self._close = frames.close_frame(code, reason)
        self._flush()
        self._notify_closed()
        if self._receiver is None and self._disconnect is None and self.state is State.CLOSING:
            self._start_disconnect_timer()

    def register_producer(self, producer: IPushProducer | None) -> None:
        """Register the application's producer on every receiver that attaches."""
        if self._receiver is not None:
            self._receiver.unregister_producer()
        self._producer = producer
        if producer is not None and self._receiver is not None:
            self._receiver.register_producer(producer)

    def expire(self) -> None:
        """End the session now: finish any receiver, no close frame (shutdown)."""
        self._gone()

    # --- transport side --------------------------------------------------------------

    def attach(self, receiver: Receiver) -> None:
        """A receiving request or WebSocket arrived for this session."""
        if self.state is State.CLOSED:
            receiver.send_frame(self._close or frames.close_frame(1002, "Connection interrupted"))
            receiver.finish()
            return
        if self._receiver is not None:
            receiver.send_frame(_ANOTHER_CONNECTION)
            receiver.finish()
            return
        self._cancel(self._disconnect)
        self._disconnect = None
        self._receiver = receiver
        if self._producer is not None:
            receiver.register_producer(self._producer)
        if self.state is State.CONNECTING:
            self.state = State.OPEN
            self._write(frames.OPEN)
            self._call("on_open")
        self._flush()
        if self._receiver is receiver and self._heartbeat is None:
            self._schedule_heartbeat()

    def deliver(self, messages: Sequence[str]) -> None:
        """Messages from the client; replies they cause go out as one frame."""
        if self.state is not State.OPEN or not messages:
            return
        self._holding = True
        try:
            for message in messages:
                if self.state is not State.OPEN:
                    break
                self._call("on_message", message)
        finally:
            self._holding = False
        self._flush()

    def receiver_lost(self, receiver: Receiver) -> None:
        """The client went away mid-response (not a finish by us): end the session."""
        if receiver is self._receiver:
            self._receiver = None
            self._gone()

    # --- internals -------------------------------------------------------------------

    def _flush(self) -> None:
        if self._receiver is None:
            return
        if self._buffer:
            frame = frames.messages_frame(self._buffer)
            self._buffer = []
            self._buffered = 0
            self._write(frame)
        if self._close is not None and self._receiver is not None:
            self._write(self._close)
            self._release()

    def _write(self, frame: bytes) -> None:
        receiver = self._receiver
        if receiver is not None and not receiver.send_frame(frame):
            self._release()

    def _release(self) -> None:
        """Detach the receiver (its work is done) and start the disconnect timer."""
        receiver = self._receiver
        if receiver is None:
            return
        self._receiver = None
        self._cancel(self._heartbeat)
        self._heartbeat = None
        receiver.unregister_producer()
        receiver.finish()
        if self.state is not State.CLOSED:
            self._start_disconnect_timer()

    def _start_disconnect_timer(self) -> None:
        if not self._linger:
            self._gone()
            return
        self._cancel(self._disconnect)
        self._disconnect = self._clock.callLater(self._options.disconnect_delay, self._timeout)

    def _timeout(self) -> None:
        self._disconnect = None
        self._gone()

    def _schedule_heartbeat(self) -> None:
        if self._options.heartbeat_delay > 0:
            self._heartbeat = self._clock.callLater(self._options.heartbeat_delay, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if self._receiver is None:
            return
        self._write(frames.HEARTBEAT)
        if self._receiver is not None:
            self._schedule_heartbeat()

    def _gone(self) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._cancel(self._heartbeat)
        self._cancel(self._disconnect)
        self._heartbeat = self._disconnect = None
        self._buffer = []
        self._buffered = 0
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.unregister_producer()
            receiver.finish()
        if self._on_gone is not None:
            self._on_gone(self)
        self._notify_closed()

    def _notify_closed(self) -> None:
        if not self._notified:
            self._notified = True
            self._call("on_close")

    def _call(self, name: str, *args: Any) -> None:
        try:
            getattr(self._handler, name)(self, *args)
        except Exception:
            _log.failure("sockjs session {id}: {name} failed", id=self.id, name=name)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value}>"


class SessionRegistry:
    """The sessions of one endpoint, by id (WebSocket sessions are never registered)."""

    def __init__(self, handler: Any, clock: IReactorTime, options: SockJSOptions) -> None:
        self._handler = handler
        self._clock = clock
        self._options = options
        self._sessions: dict[str, Session] = {}

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, if any."""
        return self._sessions.get(session_id)

    def get_or_create(self, session_id: str, transport: str, headers: dict[str, str]) -> Session:
        """The session with this id; a receiving request creates it."""
        session = self._sessions.get(session_id)
        if session is None:
            session = Session(
                session_id,
                self._handler,
                self._clock,
                self._options,
                transport=transport,
                headers=headers,
                on_gone=self._forget,
            )
            self._sessions[session_id] = session
        return session

    def new_websocket_session(self, headers: dict[str, str]) -> Session:
        """An unregistered session for one WebSocket connection."""
        return Session(
            "",
            self._handler,
            self._clock,
            self._options,
            transport="websocket",
            headers=headers,
            linger=False,
        )

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def close_all(self) -> None:
        """Expire every session (shutdown)."""
        for session in list(self._sessions.values()):
            session.expire()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))
