"""Output flow control shared by transports: eager TCP sends and backpressure.

* :func:`write_eagerly` sends on an idle plain-TCP transport at once instead of waiting
  for the reactor's next write pass (docs/performance.rst, "Eager send").
* :class:`Backpressure` is the push producer a transport registers: it pauses the
  client's writer while the transport buffer is full, and closes with 3009 "write error"
  when the peer reads nothing for ``write_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from zope.interface import implementer

from rtserver._compat import write_now
from rtserver.core.client import Client
from rtserver.protocol.codes import Disconnect

__all__ = ["Backpressure", "write_eagerly"]


#: Write ``data``, trying one immediate ``send()`` when the transport is idle.
#:
#: Falls back to ``transport.write`` for TLS, for anything already buffered (order is
#: kept), and for whatever the kernel did not take. Without a transport (the connection
#: is gone) there is nothing to write to. It is :func:`rtserver._compat.write_now` itself
#: (no wrapper: it runs once per frame per subscriber).
write_eagerly: Final[Callable[[ITransport | None, bytes], None]] = write_now


@implementer(IPushProducer)
class Backpressure:
    """Tells a client when its transport's buffer is full and when it drained."""

    def __init__(self, client: Client, clock: IReactorTime, write_timeout: float) -> None:
        self._client = client
        self._clock = clock
        self._timeout = write_timeout
        self._timer: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        """The transport buffer is full: hold output, start the write timeout."""
        self._client.pause_writing()
        if self._timeout > 0 and self._timer is None:
            self._timer = self._clock.callLater(self._timeout, self._expired)

    def resumeProducing(self) -> None:
        """The transport drained: write what accumulated."""
        self._cancel()
        self._client.resume_writing()

    def stopProducing(self) -> None:
        """The transport is going away."""
        self._cancel()

    def _expired(self) -> None:
        self._timer = None
        self._client.close(Disconnect.WRITE_ERROR)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
