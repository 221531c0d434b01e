"""Which encoding a connection speaks, and the codec that goes with it.

The choice is made once, at the handshake, from what the request carries (Centrifugo's
rules):

* WebSocket: the ``centrifuge-protobuf`` subprotocol, or a ``format=protobuf`` /
  ``cf_protocol=protobuf`` query parameter, selects Protobuf (binary frames); anything
  else is JSON (text frames). ``centrifuge-json`` is accepted as a subprotocol too; a
  client that asks for none gets none.
* HTTP-streaming and ``/emulation``: a ``Content-Type: application/octet-stream`` request
  is Protobuf (varint-delimited messages both ways); anything else is JSON.
* SockJS, SSE and the unidirectional transports are JSON only.

:class:`Codec` is the interface both codec modules (:mod:`~rtserver.protocol.codec`,
:mod:`~rtserver.protocol.protobuf`) implement; :func:`codec_for` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from rtserver.protocol import codec, protobuf
from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import Command

__all__ = [
    "JSON",
    "OCTET_STREAM",
    "PROTOBUF",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_PROTOBUF",
    "Codec",
    "codec_for",
    "http_encoding",
    "websocket_encoding",
]

JSON: Final = "json"
PROTOBUF: Final = "protobuf"
SUBPROTOCOL_JSON: Final = "centrifuge-json"
SUBPROTOCOL_PROTOBUF: Final = "centrifuge-protobuf"
OCTET_STREAM: Final = "application/octet-stream"


class Codec(Protocol):
    """Frames in, commands out; values in, encoded messages out (one encoding)."""

    @property
    def PING(self) -> bytes:  # noqa: N802 - the module constant's name
        """The server ping / client pong message."""
        ...

    def decode_commands(self, data: bytes | str) -> list[Command]:
        """Split a transport frame into commands (raises ProtocolError)."""
        ...

    def encode_reply(self, cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
        """A successful reply."""
        ...

    def encode_error(self, cmd_id: int, error: Error) -> bytes:
        """An error reply."""
        ...

    def encode_push(
        self, channel: str, kind: str, body: dict[str, Any], *, uni: bool = False
    ) -> bytes:
        """A push, wrapped for bidirectional transports unless ``uni``."""
        ...

    def encode_unsubscribe(self, channel: str, unsub: Unsubscribe, *, uni: bool = False) -> bytes:
        """The ``unsubscribe`` push for a server-initiated unsubscribe."""
        ...

    def encode_disconnect(self, disconnect: Disconnect, *, uni: bool = False) -> bytes:
        """The ``disconnect`` push for transports without close frames."""
        ...

    def join(self, payloads: list[bytes]) -> bytes:
        """Encoded messages joined into one transport frame."""
        ...


def codec_for(encoding: str) -> Codec:
    """The codec module for ``encoding`` (:data:`JSON` or :data:`PROTOBUF`)."""
    if encoding == PROTOBUF:
        return protobuf
    if encoding == JSON:
        return codec
    raise ValueError(f"unknown encoding {encoding!r}")


def websocket_encoding(
    subprotocols: Sequence[str], query: Mapping[str, Sequence[str]]
) -> tuple[str, str | None]:
    """``(encoding, subprotocol to accept or None)`` for a WebSocket upgrade request.

    ``query`` maps parameter names to their values (the first value of a name counts).
    As with Centrifugo, the subprotocol accepted is the first the client offers among the
    two known ones; ``centrifuge-protobuf`` selects Protobuf, and so does the query
    parameter whatever subprotocol is accepted.
    """
    accepted = next(
        (p for p in subprotocols if p in (SUBPROTOCOL_JSON, SUBPROTOCOL_PROTOBUF)), None
    )
    if accepted == SUBPROTOCOL_PROTOBUF:
        return PROTOBUF, accepted
    for name in ("format", "cf_protocol"):
        values = query.get(name)
        if values and values[0] == PROTOBUF:
            return PROTOBUF, accepted
    return JSON, accepted


def http_encoding(content_type: str | None) -> str:
    """The encoding of an HTTP-streaming or ``/emulation`` request from its Content-Type."""
    if content_type is not None and content_type.split(";")[0].strip().lower() == OCTET_STREAM:
        return PROTOBUF
    return JSON
