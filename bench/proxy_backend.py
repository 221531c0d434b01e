"""A minimal proxy backend for ``bench/proxy.py``: keep-alive HTTP/1.1 on asyncio.

Answers every proxy path with a fixed result (connect: user ``u<n>`` from the session
cookie; subscribe: channel info; publish: the data unchanged), so the benchmark measures
rtserver's side of a proxy call, not an application. Prints ``{"ready": PORT}``.

Run: ``python bench/proxy_backend.py PORT``.
"""

from __future__ import annotations

import asyncio
import json
import sys

ANSWERS = {
    b"/subscribe": b'{"result":{"info":{"seat":1}}}',
    b"/publish": b'{"result":{}}',
    b"/rpc": b'{"result":{"data":{}}}',
}


def _answer(path: bytes, headers: bytes) -> bytes:
    if path == b"/connect":
        start = headers.find(b"session=")
        if start < 0:
            return b'{"disconnect":{"code":4501,"reason":"unauthorized"}}'
        user = headers[start + 8 : headers.find(b"\r\n", start)].split(b";")[0]
        return b'{"result":{"user":"' + user + b'"}}'
    return ANSWERS.get(path, b'{"result":{}}')


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            lower = head.lower()
            at = lower.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            path = head.split(b" ", 2)[1]
            self.buf = self.buf[end + 4 + length :]
            body = _answer(path, lower)
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, "127.0.0.1", port)
    print(json.dumps({"ready": port}), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
