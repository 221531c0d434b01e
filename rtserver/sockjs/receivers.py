"""Receiving HTTP transports: polling and streaming responses carrying session frames.

One :class:`HTTPReceiver` per request. Polling responses (``xhr``, ``jsonp``) carry one
frame; streaming ones (``xhr_streaming``, ``eventsource``, ``htmlfile``) write one frame
per ``request.write`` (one chunk each on HTTP/1.1, raw until close on HTTP/1.0) and end
once ``response_limit`` bytes of frames went out, so the client opens a fresh request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from rtserver.sockjs.session import Session

__all__ = ["HTTPReceiver"]


@implementer(IPushProducer)
class _Relay:
    """Forwards one response's pause/resume to the session's producer, remembering a pause.

    A response can end while its connection's buffer is full (a poll answer bigger than the
    buffer pauses the producer, then finishes at once); the producer must not stay paused
    after this response is gone, or the session's output stops for good.
    """

    def __init__(self, producer: IPushProducer) -> None:
        self.producer = producer
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = False
        self.producer.stopProducing()

    def release(self) -> None:
        """This response is done: undo a pause it caused."""
        if self.paused:
            self.resumeProducing()


class HTTPReceiver:
    """A session's receiver on one HTTP response."""

    def __init__(
        self,
        request: Request,
        envelope: Callable[[bytes], bytes],
        *,
        streaming: bool,
        limit: int = 0,
    ) -> None:
        self._request = request
        self._envelope = envelope
        self._streaming = streaming
        self._limit = limit
        self._sent = 0
        self._done = False
        self._producing = False
        self._relay: _Relay | None = None
        self.session: Session | None = None
        request.notifyFinish().addCallbacks(self._finished, self._lost)

    def start(self, prelude: bytes) -> None:
        """Send the headers and the transport's prelude now (clients wait for them)."""
        if self._streaming:
            self._request.write(prelude)

    def send_frame(self, frame: bytes) -> bool:
        """Write one frame in its envelope; False once this response is complete."""
        if self._done:
            return False
        data = self._envelope(frame)
        if not self._streaming:
            self._request.setHeader(b"Content-Length", b"%d" % len(data))
            self._request.write(data)
            return False
        self._request.write(data)
        self._sent += len(data)
        return self._sent < self._limit

    def finish(self) -> None:
        """End the response (nothing happens if the client already left)."""
        if self._done:
            return
        self._done = True
        self.unregister_producer()
        self._request.finish()

    def register_producer(self, producer: IPushProducer) -> None:
        """Pause ``producer`` while this connection's send buffer is full."""
        if not self._done and not self._producing:
            self._relay = _Relay(producer)
            self._request.registerProducer(self._relay, True)
            self._producing = True

    def unregister_producer(self) -> None:
        """Stop reporting buffer state to the producer (resuming it if this paused it)."""
        if self._producing:
            self._producing = False
            if self._request.channel is not None:
                self._request.unregisterProducer()
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.release()

    def _finished(self, _: Any) -> None:
        self._done = True

    def _lost(self, failure: Failure) -> None:
        """The client aborted the request: the session ends at once."""
        self._done = True
        self._producing = False
        if self.session is not None:
            self.session.receiver_lost(self)
