"""SockJS framing, sans-I/O: frames, message quoting, transport encodings, decoding.

Server to client there are four frames: ``o`` (open), ``h`` (heartbeat), ``a[...]``
(a JSON array of message strings) and ``c[code,"reason"]`` (close). Each receiving
transport wraps a frame in its own envelope (a line, an SSE event, a ``<script>`` block,
a JSONP call). Client to server, bodies are a JSON array of strings.

Messages are ``str``; the wire is UTF-8. A message is quoted once (:func:`quote`) and the
quoted form can be reused in any number of ``a[...]`` frames.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable

__all__ = [
    "HEARTBEAT",
    "OPEN",
    "FramingError",
    "close_frame",
    "decode_form_messages",
    "decode_messages",
    "decode_ws_message",
    "eventsource_frame",
    "htmlfile_frame",
    "htmlfile_prelude",
    "iframe_page",
    "jsonp_frame",
    "line_frame",
    "messages_frame",
    "quote",
    "quote_utf8",
    "valid_callback",
]

OPEN = b"o"
HEARTBEAT = b"h"

#: Code points SockJS servers send as ``\uXXXX`` (browsers mangle them on the wire);
#: lone surrogates (legal in JavaScript strings) are escaped too so UTF-8 can carry them.
_ESCAPED = re.compile(
    "[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ud800-\udfff\ufff0-\uffff]"
)
_HTML_UNSAFE = re.compile("[<>&]")
_CALLBACK = re.compile(r"[a-zA-Z0-9\-_.]+")
_MAX_CALLBACK = 64


class FramingError(ValueError):
    """A client body that is not a SockJS message array; ``str()`` is the protocol text."""


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def quote(message: str) -> str:
    """``message`` as a JSON string literal with the SockJS escapes applied."""
    return _ESCAPED.sub(_escape, json.dumps(message, ensure_ascii=False))


def quote_utf8(data: bytes) -> bytes:
    """:func:`quote` for a UTF-8 message, returning UTF-8."""
    return quote(data.decode("utf-8")).encode("utf-8")


def messages_frame(quoted: Iterable[bytes]) -> bytes:
    """An ``a[...]`` frame of already-quoted messages."""
    return b"a[" + b",".join(quoted) + b"]"


def close_frame(code: int, reason: str) -> bytes:
    """A ``c[code,"reason"]`` frame."""
    return b"c[" + str(int(code)).encode("ascii") + b"," + quote(reason).encode("utf-8") + b"]"


# --- decoding -------------------------------------------------------------------------


def decode_messages(body: bytes | str) -> list[str]:
    """The messages of an ``xhr_send``/``jsonp_send`` body (a JSON array of strings).

    Raises:
        FramingError: ``Payload expected.`` for an empty body or a non-array,
            ``Broken JSON encoding.`` for unparsable JSON.
    """
    if not body:
        raise FramingError("Payload expected.")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FramingError("Broken JSON encoding.") from e
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise FramingError("Payload expected.")
    return value


def decode_form_messages(body: bytes, content_type: str) -> list[str]:
    """The messages of a ``jsonp_send`` body: form field ``d``, or the raw body."""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        # Percent escapes decode to Latin-1 too, so every field byte maps to one character.
        fields = urllib.parse.parse_qs(
            body.decode("latin-1"), keep_blank_values=True, encoding="latin-1"
        )
        values = fields.get("d") or [""]
        return decode_messages(values[0].encode("latin-1").decode("utf-8", "replace"))
    return decode_messages(body)


def decode_ws_message(text: str) -> list[str]:
    """The messages of one WebSocket text message.

    The empty string and ``[]`` carry nothing; a bare JSON string is one message.

    Raises:
        FramingError: ``Broken framing.`` when the text is not JSON or holds non-strings.
    """
    if not text:
        return []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise FramingError("Broken framing.") from e
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        return value
    raise FramingError("Broken framing.")


# --- transport envelopes --------------------------------------------------------------


def line_frame(frame: bytes) -> bytes:
    """Envelope of ``xhr`` and ``xhr_streaming``: one frame per line."""
    return frame + b"\n"


def eventsource_frame(frame: bytes) -> bytes:
    """An SSE event; ``%``, CR, LF and NUL are percent-escaped (the client decodes them)."""
    data = (
        frame.replace(b"%", b"%25")
        .replace(b"\r", b"%0D")
        .replace(b"\n", b"%0A")
        .replace(b"\x00", b"%00")
    )
    return b"data: " + data + b"\r\n\r\n"


def _js_string(frame: bytes, *, html: bool = False) -> bytes:
    text = json.dumps(frame.decode("utf-8"))
    if html:
        text = _HTML_UNSAFE.sub(_escape, text)
    return text.encode("ascii")


def htmlfile_frame(frame: bytes) -> bytes:
    """A ``<script>`` block passing the frame to the iframe's ``p()``; HTML-safe."""
    return b"<script>\np(" + _js_string(frame, html=True) + b");\n</script>\r\n"


def jsonp_frame(callback: bytes, frame: bytes) -> bytes:
    """A JSONP call; ``/**/`` guards against Rosetta-Flash style sniffing."""
    return b"/**/" + callback + b"(" + _js_string(frame) + b");\r\n"


def valid_callback(callback: bytes) -> bool:
    """Whether a JSONP/htmlfile callback name is safe to echo (``[a-zA-Z0-9-_.]``)."""
    if len(callback) > _MAX_CALLBACK:
        return False
    return _CALLBACK.fullmatch(callback.decode("latin-1")) is not None


_HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {{c.message(d);}};
    window.onload = function() {{c.stop();}};
  </script>"""


def htmlfile_prelude(callback: bytes) -> bytes:
    """The htmlfile head for a validated callback, padded past 1024 bytes."""
    head = _HTMLFILE_HEAD.format(callback=callback.decode("ascii")).encode("ascii")
    return head + b" " * max(0, 1025 - len(head)) + b"\r\n\r\n"


_IFRAME = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{url}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


def iframe_page(client_url: str) -> bytes:
    """The cross-domain iframe page loading the SockJS client from ``client_url``."""
    safe = client_url.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return _IFRAME.format(url=safe).encode("utf-8")
