"""Property-based fuzz of the WebTransport endpoint.

An aioquic client and the server's ``QuicListener`` run in one process; datagrams are
passed by hand and every timer runs on one ``Clock``.

Whatever the client does with its streams and requests (arbitrary bytes, cut or whole
commands, FIN, RESET_STREAM, STOP_SENDING, more HEADERS, extra streams, requests for
other paths, protocols and methods, silence), the properties hold:

* no exception escapes the listener, and nothing is logged at error level or above;
* once the client has gone silent long enough, the server has released everything: no
  QUIC connection, no session, no client on the node.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from fuzzkit import FUZZ, watch_log
from harness import make_certificate
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserver import config as rtconfig
from rtserver.testing import make_node
from rtserver.transports.origin import OriginPolicy
from rtserver.transports.webtransport import QuicListener, quic_configuration

pytestmark = pytest.mark.filterwarnings("ignore:mypy_extensions:DeprecationWarning")

SERVER = ("127.0.0.1", 4433)
CLIENT = ("127.0.0.1", 50000)
SETTINGS: dict[str, Any] = {
    "client": {"allow_anonymous_connect_without_token": True, "stale_close_delay": "5s"},
    "channel": {"without_namespace": {"allow_subscribe_for_client": True,
                                      "allow_subscribe_for_anonymous": True}},
}
_PEM: dict[str, bytes] = {}


def _pems(tmp: Path) -> tuple[bytes, bytes]:
    if not _PEM:
        cert, key, _ = make_certificate(tmp)
        _PEM["cert"], _PEM["key"] = cert.read_bytes(), key.read_bytes()
    return _PEM["cert"], _PEM["key"]


class Wire:
    """The UDP in between: what each side sent, delivered when the test says so."""

    def __init__(self) -> None:
        self.to_client: list[bytes] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.to_client.append(data)


class Pair:
    """A client QUIC+H3 connection and the server's listener, on one clock."""

    def __init__(self, cert: bytes, key: bytes) -> None:
        self.node, self.clock = make_node(SETTINGS)
        wt = rtconfig.WebTransportConfig(enabled=True, idle_timeout=10.0)
        quic = quic_configuration(cert, key, 10.0)
        self.listener = QuicListener(self.node, OriginPolicy([]), wt, quic, self.clock)
        self.wire = Wire()
        self.listener.transport = self.wire  # type: ignore[assignment]
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                   max_datagram_frame_size=65536, verify_mode=ssl.CERT_NONE)
        self.quic = QuicConnection(configuration=config)
        self.h3 = H3Connection(self.quic, enable_webtransport=True)
        self.quic.connect(SERVER, now=self.clock.seconds())
        self.pump()

    def pump(self, rounds: int = 8) -> None:
        for _ in range(rounds):
            now = self.clock.seconds()
            out = self.quic.datagrams_to_send(now=now)
            for data, _ in out:
                self.listener.datagramReceived(data, CLIENT)
            back, self.wire.to_client = self.wire.to_client, []
            for data in back:
                self.quic.receive_datagram(data, SERVER, now=self.clock.seconds())
            while True:
                event = self.quic.next_event()
                if event is None:
                    break
                self.h3.handle_event(event)
            self.clock.advance(0.01)
            if not out and not back:
                return

    def request(self, path: bytes, protocol: bytes | None, method: bytes = b"CONNECT") -> int:
        stream_id = self.quic.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", b"https"),
                   (b":authority", b"localhost"), (b":path", path)]
        if protocol is not None:
            headers.append((b":protocol", protocol))
        self.h3.send_headers(stream_id, headers, end_stream=method != b"CONNECT")
        return stream_id


_ACTIONS = st.one_of(
    st.tuples(st.just("send"), st.binary(max_size=300)),
    st.tuples(st.just("command"), st.sampled_from([
        b'{"id":1,"connect":{}}\n', b'{"id":2,"subscribe":{"channel":"a"}}\n', b"{}\n",
        b'{"id":3,"publish":{"channel":"a","data":{}}}\n', b'{"id":1,"conn', b"\n\n",
        b"\x05\x0a\x03\x12\x01x", b"\xff\xff\xff",
    ])),
    st.tuples(st.just("fin"), st.none()),
    st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("trailers"), st.none()),
    st.tuples(st.just("end_session"), st.none()),
    st.tuples(st.just("stream"), st.booleans()),
    st.tuples(st.just("session"), st.sampled_from([
        (b"/connection/webtransport", b"webtransport", b"CONNECT"),
        (b"/connection/webtransport?cf_protocol=protobuf", b"webtransport", b"CONNECT"),
        (b"/elsewhere", b"webtransport", b"CONNECT"),
        (b"/connection/webtransport", None, b"GET"),
        (b"/connection/webtransport", b"websocket", b"CONNECT"),
    ])),
    st.tuples(st.just("wait"), st.floats(min_value=0.01, max_value=3.0)),
)


#: Most examples start from a connected session (the interesting state).
_CONNECTED = [
    ("session", (b"/connection/webtransport", b"webtransport", b"CONNECT")),
    ("stream", False),
    ("command", b'{"id":1,"connect":{}}\n'),
]


@settings(FUZZ, max_examples=150)
@given(connected=st.booleans(), actions=st.lists(_ACTIONS, max_size=12))
def test_any_client_behaviour_is_survived_and_released(
    connected: bool, actions: list[tuple[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    cert, key = _pems(tmp_path_factory.mktemp("wt-fuzz"))
    with watch_log() as log:
        pair = Pair(cert, key)
        session: int | None = None
        stream: int | None = None
        for kind, arg in (_CONNECTED if connected else []) + actions:
            try:
                if kind == "session":
                    path, protocol, method = arg
                    session = pair.request(path, protocol, method)
                elif kind == "stream" and session is not None:
                    stream = pair.h3.create_webtransport_stream(session,
                                                                is_unidirectional=arg)
                elif kind in ("send", "command") and stream is not None:
                    pair.quic.send_stream_data(stream, arg)
                elif kind == "fin" and stream is not None:
                    pair.quic.send_stream_data(stream, b"", end_stream=True)
                elif kind == "reset" and stream is not None:
                    pair.quic.reset_stream(stream, 7)
                elif kind == "stop" and stream is not None:
                    pair.quic.stop_stream(stream, 7)
                elif kind == "trailers" and session is not None:
                    pair.h3.send_headers(session, [(b"x-trailer", b"1")])
                elif kind == "end_session" and session is not None:
                    pair.h3.send_data(session, b"", end_stream=True)
                elif kind == "wait":
                    pair.clock.advance(arg)
            except Exception:  # the client library refusing an action in its state
                continue
            pair.pump()
        # the client goes silent: everything must be released
        for _ in range(40):
            pair.clock.advance(1.0)
            pair.pump(2)
        assert len(pair.listener.peers) == 0
        assert pair.listener.open_sessions == 0
        assert pair.node.hub.num_clients == 0
    assert not log.bad, "\n".join(log.lines())
