"""Raw JSON nested deeper than orjson's encoder limit crosses the Redis wire unchanged.

Tokens and API requests accept ``info``/``data`` nested up to the parser's limit; the
Redis engine must carry them between nodes as they are (publications, presence,
join/leave and control messages), not fail with an encoder error on the receiving node.
"""

from __future__ import annotations

from rtserver.core.types import SubscribeControl
from rtserver.engines.wire import (
    decode_client_info,
    decode_control,
    decode_publication,
    encode_client_info,
    encode_control,
    encode_publication,
)
from rtserver.protocol.frames import ClientInfo, Publication

DEEP = b'[{"a":' * 300 + b"1" + b"}]" * 300  # 600 levels


def test_deep_client_info_round_trips() -> None:
    info = ClientInfo("u", "c", conn_info=DEEP, chan_info=DEEP)
    assert decode_client_info(encode_client_info(info)) == info


def test_publication_with_deep_info_and_data_round_trips() -> None:
    pub = Publication(data=DEEP, info=ClientInfo("u", "c", conn_info=DEEP))
    assert decode_publication(encode_publication(pub)) == pub


def test_control_message_with_deep_info_round_trips() -> None:
    message = SubscribeControl(user="u", channel="c", info=DEEP, data=DEEP)
    assert decode_control(encode_control(message)) == message
