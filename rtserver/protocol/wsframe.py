"""Server-to-client WebSocket frames (RFC 6455), built once and shared.

Frames sent by a server are unmasked, so the same bytes are valid on every connection
that negotiated no extension. Fan-out builds a frame once per publication and writes
those bytes to every subscriber.
"""

from __future__ import annotations

import struct

__all__ = ["binary_frame", "text_frame"]

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


#: The two header bytes of a frame shorter than 126 bytes, by length.
_SHORT_TEXT = [bytes((_FIN_TEXT, n)) for n in range(126)]
_SHORT_BINARY = [bytes((_FIN_BINARY, n)) for n in range(126)]


def text_frame(payload: bytes) -> bytes:
    """A single unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return _SHORT_TEXT[length] + payload
    if length < 65536:
        return _HEADER_16.pack(_FIN_TEXT, 126, length) + payload
    return _HEADER_64.pack(_FIN_TEXT, 127, length) + payload


def binary_frame(payload: bytes) -> bytes:
    """A single unfragmented, unmasked binary frame (the Protobuf protocol's frames)."""
    length = len(payload)
    if length < 126:
        return _SHORT_BINARY[length] + payload
    if length < 65536:
        return _HEADER_16.pack(_FIN_BINARY, 126, length) + payload
    return _HEADER_64.pack(_FIN_BINARY, 127, length) + payload
