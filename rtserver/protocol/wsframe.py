"""Server-to-client WebSocket frames (RFC 6455), built once and shared.

Frames sent by a server are unmasked, so the same bytes are valid on every connection
that negotiated no extension. Fan-out builds a frame once per publication and writes
those bytes to every subscriber.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_FIN_TEXT = 0x81
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """A single unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 65536:
        return _HEADER_16.pack(_FIN_TEXT, 126, length) + payload
    return _HEADER_64.pack(_FIN_TEXT, 127, length) + payload
