"""Parse one raw HTTP/1.1 response (Content-Length or chunked) for the web tests."""

from __future__ import annotations


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """``(status, lower-cased headers, body)`` of the response at the start of ``data``."""
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest[: int(headers.get("content-length", len(rest)))]
    return int(status.split()[1]), headers, body
