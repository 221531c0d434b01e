"""WebTransport over HTTP/3 against a real ``twistd -n rtserver``, driven by aioquic.

The server runs with a fresh short-lived ECDSA certificate; the client
(``wtclient.WTClient``) is aioquic's own QUIC and HTTP/3 code over a UDP socket. Sessions
are counted through ``/metrics`` (``rtserver_webtransport_sessions``,
``rtserver_http3_connections``) and the server API (``num_clients``); the harness fails a
test when the server logs a traceback or an unexpected failure.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from harness import (
    Server,
    base_config,
    free_udp_port,
    make_certificate,
    merge,
    spawn_server,
    stop_server,
)
from wtclient import WTClient, varint_frames

from rtserver.protocol import protobuf

ENDPOINT = "/connection/webtransport"
IDLE_TIMEOUT = 5.0
#: client.stale_close_delay: also how long a QUIC connection may stay without a session.
STALE_DELAY = 3.0


class WTServer:
    """A running server with HTTP/3 on ``udp_port``."""

    def __init__(self, server: Server, udp_port: int) -> None:
        self.server = server
        self.udp_port = udp_port
        self._http = requests.Session()
        self._http.trust_env = False

    def client(self) -> WTClient:
        return WTClient("127.0.0.1", self.udp_port)

    @contextmanager
    def released_client(self) -> Iterator[WTClient]:
        """A client, closed afterwards; then (if the body passed) every session released."""
        client = self.client()
        try:
            yield client
        finally:
            client.close()
        self.wait_released()

    def metric(self, name: str, labels: str = "") -> float:
        text = self._http.get(self.server.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + labels + " ") or line.startswith(name + labels + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def num_clients(self) -> int:
        reply = self._http.post(
            self.server.api_url + "/info",
            json={},
            headers={"X-API-Key": self.server.api_key},
            timeout=5,
        ).json()
        return sum(int(n.get("num_clients", 0)) for n in reply["result"]["nodes"])

    def api(self, method: str, params: dict[str, Any]) -> Any:
        return self._http.post(
            f"{self.server.api_url}/{method}",
            json=params,
            headers={"X-API-Key": self.server.api_key},
            timeout=5,
        ).json()

    def wait_released(self, timeout: float = 15.0) -> None:
        """Until no session, no QUIC connection and no client is left (polls the server)."""
        deadline = time.monotonic() + timeout
        state: tuple[float, float, int] = (-1, -1, -1)
        while time.monotonic() < deadline:
            state = (
                self.metric("rtserver_webtransport_sessions"),
                self.metric("rtserver_http3_connections"),
                self.num_clients(),
            )
            if state == (0, 0, 0):
                return
            time.sleep(0.1)  # another process: nothing to await but its answers
        raise AssertionError(f"not released: sessions, connections, clients = {state}")

    def close(self) -> None:
        self._http.close()


def _overrides(directory: Path, udp_port: int, **extra: Any) -> dict[str, Any]:
    cert, key, _ = make_certificate(directory)
    return merge(
        {
            "http_server": {
                "port": udp_port,
                "address": "127.0.0.1",
                "tls": {"enabled": True, "cert_pem": str(cert), "key_pem": str(key)},
                "http3": {"enabled": True},
            },
            "webtransport": {"enabled": True, "idle_timeout": f"{IDLE_TIMEOUT:g}s"},
            "prometheus": {"enabled": True},
            "client": {
                "allow_anonymous_connect_without_token": True,
                "stale_close_delay": f"{STALE_DELAY:g}s",
            },
            "channel": {"without_namespace": {"allow_subscribe_for_anonymous": True}},
        },
        extra,
    )


def _start(directory: Path, **extra: Any) -> WTServer:
    secret = "wt-" + uuid.uuid4().hex + uuid.uuid4().hex
    api_key = "api-" + uuid.uuid4().hex
    udp_port = free_udp_port()
    config = merge(base_config(secret, api_key), _overrides(directory, udp_port, **extra))
    server = spawn_server(directory, config, secret=secret, api_key=api_key)
    return WTServer(server, udp_port)


@pytest.fixture(scope="module")
def wt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WTServer]:
    server = _start(tmp_path_factory.mktemp("wt"))
    try:
        yield server
    finally:
        server.close()
        stop_server(server.server)


def lines(data: bytes) -> list[dict[str, Any]]:
    """The complete (newline-terminated) JSON messages in ``data``."""
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


def connected(client: WTClient, path: str = ENDPOINT, token: str = "") -> int:
    """A session with its stream, connected (JSON); returns the stream id."""
    session = client.open_session(path)
    stream = client.open_stream(session)
    connect = {"token": token} if token else {}
    client.send(stream, json.dumps({"id": 1, "connect": connect}).encode() + b"\n")
    reply = lines(client.read_until(stream, lambda b: b.count(b"\n") >= 1))[0]
    assert "connect" in reply, reply
    return stream


def _has_disconnect(data: bytes) -> bool:
    return any("disconnect" in m.get("push", {}) for m in lines(data))


def disconnect_of(data: bytes) -> dict[str, Any]:
    (push,) = [m["push"]["disconnect"] for m in lines(data) if "disconnect" in m.get("push", {})]
    return push  # type: ignore[no-any-return]


# --- the session -----------------------------------------------------------------------


def test_subscribe_and_receive_api_publications(wt: WTServer) -> None:
    """Connect, subscribe, publish through the API: the publication arrives on the stream."""
    with wt.released_client() as client:
        stream = connected(client, token=wt.server.token("alice"))
        client.send(stream, b'{"id":2,"subscribe":{"channel":"news"}}\n')
        client.read_until(stream, lambda b: b'"id":2' in b)
        wt.server.publish("news", {"text": "hello over QUIC"})
        data = client.read_until(stream, lambda b: b"hello over QUIC" in b)
        pubs = [m["push"] for m in lines(data) if "pub" in m.get("push", {})]
        assert pubs == [{"channel": "news", "pub": {"data": {"text": "hello over QUIC"},
                                                    "offset": pubs[0]["pub"]["offset"]}}]
        accepted = wt.metric(
            "centrifugo_client_connections_accepted", '{transport="webtransport"}'
        )
        assert accepted >= 1


def test_commands_cut_anywhere_and_batched(wt: WTServer) -> None:
    """The stream is bytes: a command split across writes and two in one write both work."""
    client = wt.client()
    try:
        session = client.open_session()
        stream = client.open_stream(session)
        command = b'{"id":1,"connect":{}}\n'
        client.send(stream, command[:7])
        client.send(stream, command[7:] + b'{"id":2,"subscribe":{"channel":"a"}}\n{"id":3,')
        client.send(stream, b'"subscribe":{"channel":"b"}}\n')
        data = client.read_until(stream, lambda b: b'"id":3' in b)
        replies = [m for m in lines(data) if "id" in m]
        assert [m["id"] for m in replies] == [1, 2, 3]
        assert all("error" not in m for m in replies), replies
    finally:
        client.close()


def test_protobuf_session(wt: WTServer) -> None:
    """``?cf_protocol=protobuf``: varint-delimited Commands in, Replies out."""
    client = wt.client()
    try:
        session = client.open_session(ENDPOINT + "?cf_protocol=protobuf")
        stream = client.open_stream(session)
        command = protobuf.encode_message("Command", {"id": 1, "connect": {}})
        subscribe = protobuf.encode_message("Command", {"id": 2, "subscribe": {"channel": "pb"}})
        framed = b"".join(bytes([len(m)]) + m for m in (command, subscribe))
        client.send(stream, framed[:3])  # the prefix of the first message only
        client.send(stream, framed[3:])
        data = client.read_until(stream, lambda b: len(varint_frames(b)) >= 2)
        replies = [protobuf.decode_message("Reply", m) for m in varint_frames(data)]
        assert replies[0]["id"] == 1 and "connect" in replies[0]
        assert replies[1]["id"] == 2 and "subscribe" in replies[1]
    finally:
        client.close()


def test_api_disconnect_is_a_push_then_the_end_of_the_stream(wt: WTServer) -> None:
    """A server-side disconnect reaches the client with its code, then the stream ends."""
    with wt.released_client() as client:
        stream = connected(client, token=wt.server.token("bob"))
        reply = wt.api("disconnect", {"user": "bob", "disconnect": {"code": 4500, "reason": "go"}})
        assert "error" not in reply, reply
        data = client.read_until(stream, _has_disconnect)
        assert disconnect_of(data) == {"code": 4500, "reason": "go"}
        client.wait(lambda: client.streams[stream].ended)
        # this client does not end the session: the server does, with the code
        session = next(s for s, h in client.responses.items() if dict(h)[b":status"] == b"200")
        deadline = time.monotonic() + 15
        while not (session in client.bodies and client.bodies[session].ended):
            assert time.monotonic() < deadline, "no CLOSE_WEBTRANSPORT_SESSION"
            client.quic.send_ping(2)  # QUIC keep-alive: this test's idle timeout is 5 s too
            client.flush()
            client.pump(0.5)
        capsule = bytes(client.bodies[session].data)
        assert capsule == b"\x68\x43\x06" + (4500).to_bytes(4, "big") + b"go"


# --- bad input -------------------------------------------------------------------------


def test_malformed_json_closes_with_3501(wt: WTServer) -> None:
    with wt.released_client() as client:
        stream = connected(client)
        client.send(stream, b"this is not json\n")
        data = client.read_until(stream, _has_disconnect)
        assert disconnect_of(data) == {"code": 3501, "reason": "bad request"}
        client.wait(lambda: client.streams[stream].ended)


def test_malformed_protobuf_length_closes_with_3501(wt: WTServer) -> None:
    with wt.released_client() as client:
        session = client.open_session(ENDPOINT + "?cf_protocol=protobuf")
        stream = client.open_stream(session)
        client.send(stream, b"\xff" * 11)  # a length prefix longer than 10 bytes
        client.wait(lambda: client.streams[stream].ended)
        (push,) = varint_frames(bytes(client.streams[stream].data))
        assert protobuf.decode_message("Reply", push)["push"]["disconnect"]["code"] == 3501


def test_command_beyond_the_size_limit_closes_with_3501(wt: WTServer) -> None:
    with wt.released_client() as client:
        stream = connected(client)
        client.send(stream, b'{"id":2,"rpc":{"data":"' + b"x" * 70000)
        data = client.read_until(stream, _has_disconnect, timeout=20)
        assert disconnect_of(data)["code"] == 3501


def test_stream_reset_mid_command_releases_the_session(wt: WTServer) -> None:
    with wt.released_client() as client:
        stream = connected(client)
        client.send(stream, b'{"id":2,"subscribe":{"chan')
        client.reset(stream, 7)
        deadline = time.monotonic() + 10
        while wt.metric("rtserver_webtransport_sessions") and time.monotonic() < deadline:
            client.pump(0.1)
        assert wt.metric("rtserver_webtransport_sessions") == 0
        assert wt.num_clients() == 0


def test_refusals(wt: WTServer) -> None:
    """Other paths, methods and protocols get an HTTP/3 status; extra streams are reset."""
    with wt.released_client() as client:
        assert client.status(client.request("/connection/other")) == 404
        assert client.status(client.request(ENDPOINT, method=b"GET", protocol=None)) == 400
        assert client.status(client.request(ENDPOINT, protocol=b"websocket")) == 400
        assert client.status(client.request(ENDPOINT, origin=b"https://evil.example")) == 403
        stream = connected(client)
        # one session per connection (webtransport.max_sessions_per_connection)
        assert client.status(client.request(ENDPOINT)) == 429
        # more HEADERS (trailers) on the session's and on a refused request stream: ignored
        session = next(s for s, h in client.responses.items() if dict(h)[b":status"] == b"200")
        refused = client.request(ENDPOINT, protocol=b"other")
        assert client.status(refused) == 400
        for stream_id in (session, refused):
            client.h3.send_headers(stream_id, [(b"x-trailer", b"1")])
        client.flush()
        client.send(stream, b'{"id":2,"subscribe":{"channel":"still-here"}}\n')
        client.read_until(stream, lambda b: b'"id":2' in b)


def test_a_stream_beyond_the_cap_closes_the_session(wt: WTServer) -> None:
    """A second stream is reset and closes the session with 3501.

    ``webtransport.max_streams_per_session`` is 1 by default.
    """
    with wt.released_client() as client:
        session = client.open_session()
        stream = client.open_stream(session)
        client.send(stream, b'{"id":1,"connect":{}}\n')
        client.read_until(stream, lambda b: b"\n" in b)
        extra = client.open_stream(session)
        client.send(extra, b'{"id":9,"connect":{}}\n')
        client.wait(lambda: client.streams[extra].reset)
        data = client.read_until(stream, _has_disconnect)
        assert disconnect_of(data) == {"code": 3501, "reason": "bad request"}


def test_thousand_sessions_opened_and_dropped(wt: WTServer) -> None:
    """1,000 sessions, ended three ways; every one is released, nothing is logged."""
    opened_before = wt.metric("rtserver_webtransport_sessions_opened_total")
    batch: list[tuple[WTClient, int]] = []
    for _ in range(1000):
        client = wt.client()
        session = client.open_session()
        stream = client.open_stream(session)
        client.send(stream, b'{"id":1,"connect":{}}\n')
        batch.append((client, stream))
        if len(batch) == 50:
            for n, (c, s) in enumerate(batch):
                c.read_until(s, lambda b: b"\n" in b)
                if n % 3 == 0:
                    c.close()  # CONNECTION_CLOSE
                elif n % 3 == 1:
                    c.reset(s)  # the stream reset, then the socket goes silent
                    c.drop()
                else:
                    c.drop()  # silence: the idle timeout ends it
            batch = []
    assert wt.metric("rtserver_webtransport_sessions_opened_total") - opened_before == 1000
    wt.wait_released(timeout=IDLE_TIMEOUT + 30)


def test_shutdown_sends_3001(tmp_path: Path) -> None:
    """Stopping the server disconnects open sessions with 3001 and exits cleanly."""
    server = _start(tmp_path)
    client = server.client()
    try:
        stream = connected(client)
        server.server.process.send_signal(signal.SIGTERM)
        data = client.read_until(stream, _has_disconnect)
        assert disconnect_of(data) == {"code": 3001, "reason": "shutdown"}
        server.server.process.wait(timeout=10)
    finally:
        client.drop()
        server.close()
        stop_server(server.server)


def test_stray_datagrams_are_dropped_and_the_listener_keeps_serving(wt: WTServer) -> None:
    """Junk, short packets and unknown QUIC versions never disturb the listener."""
    dropped = wt.metric("rtserver_http3_datagrams_dropped_total")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        target = ("127.0.0.1", wt.udp_port)
        s.sendto(b"", target)
        s.sendto(b"\x00" * 3, target)  # a short header for no known connection
        s.sendto(b"\xc0\x00\x00\x00\x01\x08" + b"\x01" * 8 + b"\x08", target)  # cut long header
        # an Initial of an unknown version, full size: answered by Version Negotiation
        dcid, scid = b"\x11" * 8, b"\x22" * 8
        packet = b"\xc0" + b"\x1a\x2a\x3a\x4a" + b"\x08" + dcid + b"\x08" + scid
        s.sendto(packet + b"\x00" * (1200 - len(packet)), target)
        reply, _ = s.recvfrom(2048)
        assert reply[1:5] == b"\x00\x00\x00\x00"  # version 0: Version Negotiation
        assert reply[6:14] == scid  # addressed to the sender's connection id
        # the same, but small: no answer larger than the question (amplification)
        s.sendto(packet, target)
    assert wt.metric("rtserver_http3_datagrams_dropped_total") >= dropped + 3
    with wt.released_client() as client:
        connected(client)


def test_a_client_that_stops_reading_is_closed_with_3009(wt: WTServer) -> None:
    """A client that acknowledges nothing is disconnected with 3009.

    Unacknowledged output beyond ``webtransport.write_buffer_size`` pauses its writes;
    still stuck after ``write_timeout``, the server closes it.
    """
    with wt.released_client() as client:
        stream = connected(client)
        client.send(stream, b'{"id":2,"subscribe":{"channel":"firehose"}}\n')
        client.read_until(stream, lambda b: b'"id":2' in b)
        # from here on the client reads nothing and acknowledges nothing
        blob = "x" * 1000
        commands = [{"publish": {"channel": "firehose", "data": {"blob": blob}}}] * 400
        assert "error" not in wt.api("batch", {"commands": commands})
        deadline = time.monotonic() + 15
        while wt.metric("rtserver_webtransport_sessions") and time.monotonic() < deadline:
            time.sleep(0.1)  # the server's decision, seen from another process
        assert wt.metric("rtserver_webtransport_sessions") == 0
        data = client.read_until(stream, _has_disconnect, timeout=20)
        assert disconnect_of(data) == {"code": 3009, "reason": "write error"}


def test_a_burst_beyond_the_write_buffer_is_delivered_whole(wt: WTServer) -> None:
    """400 KB at once pauses the writes; the client's acknowledgements resume them."""
    with wt.released_client() as client:
        stream = connected(client)
        client.send(stream, b'{"id":2,"subscribe":{"channel":"burst"}}\n')
        client.read_until(stream, lambda b: b'"id":2' in b)
        commands = [
            {"publish": {"channel": "burst", "data": {"i": i, "blob": "y" * 1000}}}
            for i in range(400)
        ]
        assert "error" not in wt.api("batch", {"commands": commands})
        data = client.read_until(stream, lambda b: b'"i":399' in b, timeout=30)
        got = [m["push"]["pub"]["data"]["i"] for m in lines(data) if "pub" in m.get("push", {})]
        assert got == list(range(400))
        assert not _has_disconnect(data)


@pytest.mark.parametrize("end", ["stream", "session"])
def test_the_client_ending_its_stream_or_session_releases_it(wt: WTServer, end: str) -> None:
    with wt.released_client() as client:
        session = client.open_session()
        stream = client.open_stream(session)
        client.send(stream, b'{"id":1,"connect":{}}\n')
        client.read_until(stream, lambda b: b"\n" in b)
        if end == "stream":
            client.send(stream, b"", end=True)
        else:
            client.h3.send_data(session, b"", end_stream=True)
            client.flush()
        deadline = time.monotonic() + 10
        while wt.metric("rtserver_webtransport_sessions") and time.monotonic() < deadline:
            client.pump(0.1)
        assert wt.metric("rtserver_webtransport_sessions") == 0
        assert wt.num_clients() == 0


@pytest.mark.parametrize("codec", ["json", "protobuf"])
def test_a_whole_command_beyond_the_limit_closes_with_3501(wt: WTServer, codec: str) -> None:
    """A command over message_size_limit is refused even when it arrives complete."""
    with wt.released_client() as client:
        query = "?cf_protocol=protobuf" if codec == "protobuf" else ""
        session = client.open_session(ENDPOINT + query)
        stream = client.open_stream(session)
        if codec == "protobuf":
            big = protobuf.encode_message("Command", {"id": 1, "connect": {"name": "x" * 70000}})
            prefix = bytearray()
            length = len(big)
            while length >= 0x80:
                prefix.append(length & 0x7F | 0x80)
                length >>= 7
            prefix.append(length)
            payload = bytes(prefix) + big
        else:
            payload = b'{"id":1,"connect":{"name":"' + b"x" * 70000 + b'"}}\n'
        # one write: the stream's window (128 KiB) takes it whole
        client.send(stream, payload)
        client.wait(lambda: client.streams[stream].ended, timeout=20)
        data = bytes(client.streams[stream].data)
        if codec == "protobuf":
            (push,) = varint_frames(data)
            assert protobuf.decode_message("Reply", push)["push"]["disconnect"]["code"] == 3501
        else:
            assert disconnect_of(data)["code"] == 3501


def test_a_connection_without_a_session_is_closed_despite_pings(wt: WTServer) -> None:
    """Pings keep a QUIC connection alive, but only a session keeps it open.

    Without one within ``client.stale_close_delay`` the server closes the connection.
    """
    client = wt.client()
    try:
        client.wait(lambda: client.connected)
        assert client.status(client.request("/elsewhere")) == 404  # a request is no session
        deadline = time.monotonic() + STALE_DELAY + 10
        while client.terminated is None and time.monotonic() < deadline:
            client.quic.send_ping(1)
            client.flush()
            client.pump(0.5)
        assert client.terminated is not None
        assert client.terminated.reason_phrase == "no session"
    finally:
        client.drop()
    wt.wait_released()
