r"""JSON codec of the client protocol: bytes in, commands out; values in, bytes out.

A transport frame (a WebSocket message, an HTTP body, an ``/emulation`` payload) holds
one or more JSON objects separated by ``\\n``. Each encoded reply or push is a single
line of compact JSON; transports join several with ``\\n``.

Anything malformed raises :class:`~rtserver.protocol.frames.ProtocolError`, which is a
``Disconnect(3501, "bad request")``: never a traceback to the client. A value that cannot
be encoded (an integer beyond 64 bits, say) raises :class:`EncodeError`, a
``Disconnect(3004, "internal server error")``: the connection is closed cleanly rather
than left without the reply it waits for.
"""

from __future__ import annotations

from typing import Any

import orjson

from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import MAX_UINT32, METHODS, Command, ProtocolError

__all__ = [
    "PING",
    "EncodeError",
    "decode_commands",
    "encode_disconnect",
    "encode_error",
    "encode_push",
    "encode_reply",
    "encode_unsubscribe",
    "join",
]

#: A server ping on bidirectional transports, and a client pong: the empty object.
PING = b"{}"


class EncodeError(Disconnect):
    """A reply or push could not be encoded; the connection is closed with 3004."""

    def __init__(self, detail: str) -> None:
        server_error = Disconnect.SERVER_ERROR
        super().__init__(server_error.code, server_error.reason)
        self.detail = detail

    def __repr__(self) -> str:
        return f"EncodeError({self.detail!r})"


def _dumps(message: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as e:
        raise EncodeError(str(e)) from None


def decode_commands(data: bytes | str) -> list[Command]:
    """Split a transport frame into commands, in order.

    Raises:
        ProtocolError: on invalid JSON, a non-object line, a bad ``id``, an unknown
            command, or a frame without any command.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    commands = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ProtocolError("invalid JSON") from None
        commands.append(parse_command(obj))
    if not commands:
        raise ProtocolError("empty frame")
    return commands


def parse_command(obj: Any) -> Command:
    """Turn one decoded JSON object into a :class:`Command`."""
    if not isinstance(obj, dict):
        raise ProtocolError("command must be an object")
    cmd_id = obj.get("id", 0)
    if isinstance(cmd_id, bool) or not isinstance(cmd_id, int) or not 0 <= cmd_id <= MAX_UINT32:
        raise ProtocolError("bad command id")
    for method in METHODS:
        params = obj.get(method)
        if params is not None:
            if not isinstance(params, dict):
                raise ProtocolError(f"{method} must be an object")
            return Command(cmd_id, method, params)
    if cmd_id:
        raise ProtocolError("unknown command")
    return Command(0, None, {})


def encode_reply(cmd_id: int, method: str, result: dict[str, Any]) -> bytes:
    """A successful reply; the result key is always present, even when empty."""
    return _dumps({"id": cmd_id, method: result})


def encode_error(cmd_id: int, error: Error) -> bytes:
    """An error reply ``{"id":N,"error":{"code":C,"message":M}}``."""
    return _dumps({"id": cmd_id, "error": error.to_wire()})


def encode_push(channel: str, kind: str, body: dict[str, Any], *, uni: bool = False) -> bytes:
    """A push; bidirectional transports wrap it in ``{"push":...}``, uni ones do not."""
    push: dict[str, Any] = {kind: body}
    if channel:
        push = {"channel": channel, kind: body}
    return _dumps(push if uni else {"push": push})


def encode_unsubscribe(channel: str, unsub: Unsubscribe, *, uni: bool = False) -> bytes:
    """The ``unsubscribe`` push for a server-initiated unsubscribe."""
    return encode_push(channel, "unsubscribe", unsub.to_wire(), uni=uni)


def encode_disconnect(disconnect: Disconnect, *, uni: bool = False) -> bytes:
    """The ``disconnect`` push for transports without close frames."""
    return encode_push("", "disconnect", disconnect.to_wire(), uni=uni)



def join(payloads: list[bytes]) -> bytes:
    """Join encoded messages into one transport frame (newline-delimited JSON).

    The JSON half of :class:`rtserver.protocol.encoding.Codec`; the Protobuf codec joins
    its length-prefixed messages with nothing between them.
    """
    if len(payloads) == 1:
        return payloads[0]
    return b"\n".join(payloads)
