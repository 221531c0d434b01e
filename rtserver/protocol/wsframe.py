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


def _frame(first: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _HEADER_16.pack(first, 126, length) + payload
    return _HEADER_64.pack(first, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """A single unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    return _frame(_FIN_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    """A single unfragmented, unmasked binary frame (the Protobuf protocol's frames)."""
    return _frame(_FIN_BINARY, payload)
