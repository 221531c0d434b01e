"""GRPC request messages map onto the executor's JSON request shapes, and results back."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from rtserver.api.executor import PublishCommand
from rtserver.grpcapi import convert
from rtserver.grpcapi.proto import api_pb2 as pb
from rtserver.protocol.codes import Error


def test_publish_passes_only_what_the_request_sets() -> None:
    request = pb.PublishRequest(channel="c", data=b'{"a": [1, 2]}', tags={"t": "v"},
                                skip_history=True, idempotency_key="k1")
    assert convert.publish_params(request) == {
        "channel": "c", "data": {"a": [1, 2]}, "tags": {"t": "v"}, "skip_history": True,
        "idempotency_key": "k1",
    }
    b64 = base64.b64encode(b'"x"').decode()
    both = pb.PublishRequest(channel="c", data=b"ignored", b64data=b64)
    assert convert.publish_params(both) == {"channel": "c", "b64data": b64}


def test_payload_bytes_must_be_json() -> None:
    with pytest.raises(Error) as e:
        convert.publish_params(pb.PublishRequest(channel="c", data=b"\xff\xfe"))
    assert (e.value.code, e.value.message) == (
        107, "bad request: data must be JSON: this server is JSON-only")
    with pytest.raises(Error) as e:
        convert.refresh_params(pb.RefreshRequest(user="u", info=b"{"))
    assert e.value.message == "bad request: info must be JSON: this server is JSON-only"


def test_subscribe_maps_positions_overrides_and_payloads() -> None:
    request = pb.SubscribeRequest(
        channel="c", user="u", info=b'{"i":1}', b64data=base64.b64encode(b"2").decode(),
        recover_since=pb.StreamPosition(offset=5, epoch="e"),
        override=pb.SubscribeOptionOverride(presence=pb.BoolValue(value=False),
                                            force_recovery=pb.BoolValue(value=True)),
    )
    params = convert.subscribe_params(request)
    assert params["info"] == {"i": 1}
    assert params["b64data"] == "Mg=="
    assert params["recover_since"] == {"offset": 5, "epoch": "e"}
    assert params["override"] == {"presence": {"value": False},
                                  "force_recovery": {"value": True}}
    plain = convert.subscribe_params(pb.SubscribeRequest(channel="c", user="u"))
    assert "recover_since" not in plain and "override" not in plain and "info" not in plain


def test_disconnect_without_a_disconnect_uses_the_default() -> None:
    assert "disconnect" not in convert.disconnect_params(pb.DisconnectRequest(user="u"))
    request = pb.DisconnectRequest(user="u", disconnect=pb.Disconnect(code=4500, reason="r"),
                                   whitelist=["c1"])
    params = convert.disconnect_params(request)
    assert params["disconnect"] == {"code": 4500, "reason": "r"}
    assert params["whitelist"] == ["c1"]


def test_results_carry_raw_json_bytes() -> None:
    info = {"user": "u", "client": "c", "conn_info": orjson.Fragment(b'{"n":"A"}')}
    presence = convert.presence_result({"presence": {"c": info}})
    assert presence.presence["c"] == pb.ClientInfo(user="u", client="c", conn_info=b'{"n":"A"}')
    history = convert.history_result({
        "publications": [{"data": orjson.Fragment(b"[1]"), "offset": 7, "tags": {"a": "b"},
                          "info": {"user": "u", "client": "c"}}],
        "offset": 7, "epoch": "e",
    })
    (publication,) = history.publications
    assert (publication.data, publication.offset, dict(publication.tags)) == (b"[1]", 7,
                                                                              {"a": "b"})
    assert publication.info == pb.ClientInfo(user="u", client="c")


def test_batch_keeps_request_order_around_failed_conversions() -> None:
    request = pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"{")),
        pb.Command(info=pb.InfoRequest()),
        pb.Command(),
        pb.Command(publish=pb.PublishRequest(channel="b", data=b"1")),
    ])
    commands, failed = convert.batch_commands(request)
    assert commands == [{"info": {}}, {convert.UNKNOWN_COMMAND: {}},
                        {"publish": {"channel": "b", "data": 1}}]
    assert list(failed) == [0]
    replies = [{"info": {"nodes": []}}, {"error": {"code": 104, "message": "method not found"}},
               {"publish": {"offset": 3, "epoch": "e"}}]
    response = convert.batch_response(replies, failed, 4)
    assert [r.ListFields()[0][0].name
            for r in response.replies] == ["error", "info", "error", "publish"]
    assert response.replies[0].error.code == 107
    assert response.replies[2].error.code == 104
    assert response.replies[3].publish == pb.PublishResult(offset=3, epoch="e")


# --- the typed publish path ------------------------------------------------------------


def test_publish_command_types_what_the_request_sets() -> None:
    """Compact JSON data, tags, flags; base64 data wins; the channel is checked first."""
    command = convert.publish_command(pb.PublishRequest(
        channel="c", data=b'{"a": [1, 2]}', tags={"t": "v"}, skip_history=True,
        idempotency_key="k1"))
    assert command == PublishCommand("c", b'{"a":[1,2]}', {"t": "v"}, True, "k1")
    delta = convert.publish_command(pb.PublishRequest(channel="c", data=b"1", delta=True))
    assert delta == PublishCommand("c", b"1", {}, delta=True)
    b64 = base64.b64encode(b' "x" ').decode()
    both = convert.publish_command(pb.PublishRequest(channel="c", data=b"ignored", b64data=b64))
    assert (both.data, both.tags) == (b'"x"', {})


@pytest.mark.parametrize(("request_", "message"), [
    (pb.PublishRequest(data=b"{"), "bad request: channel is required"),
    (pb.PublishRequest(channel="c"), "bad request: data is required"),
    (pb.PublishRequest(channel="c", data=b"\xff"),
     "bad request: data must be JSON: this server is JSON-only"),
    (pb.PublishRequest(channel="c", b64data="!"), "bad request: b64data must be valid base64"),
])
def test_publish_command_errors_are_the_executors(request_: pb.PublishRequest,
                                                  message: str) -> None:
    with pytest.raises(Error) as e:
        convert.publish_command(request_)
    assert (e.value.code, e.value.message) == (107, message)


def test_batch_publishes_only_for_a_batch_of_publish() -> None:
    """Any other command sends the batch down the generic path (None)."""
    publish = pb.Command(publish=pb.PublishRequest(channel="a", data=b"1"))
    mixed = pb.BatchRequest(commands=[publish, pb.Command(info=pb.InfoRequest())])
    assert convert.batch_publishes(mixed) is None
    assert convert.batch_publishes(pb.BatchRequest(commands=[publish, pb.Command()])) is None
    request = pb.BatchRequest(commands=[
        pb.Command(publish=pb.PublishRequest(channel="a", data=b"{")), publish])
    typed = convert.batch_publishes(request)
    assert typed is not None
    commands, failed = typed
    assert commands == [PublishCommand("a", b"1", {})]
    assert list(failed) == [0] and failed[0].code == 107


_OUTCOMES: list[dict[str, Any] | Error] = [
    {},
    {"offset": 1, "epoch": "e"},
    {"offset": 300, "epoch": "épœque"},  # multi-byte varint, UTF-8 epoch
    {"offset": 2**63 + 5, "epoch": "x" * 200},  # long epoch: multi-byte length
    {"offset": 0, "epoch": "e"},
    Error(102, "unknown channel"),
    Error(100, "internal server error", True),
    Error(0, ""),
]


@pytest.mark.parametrize("outcome", _OUTCOMES)
def test_hand_encoded_publish_response_is_the_schemas(outcome: dict[str, Any] | Error) -> None:
    """Byte for byte what the generated classes serialize for the same response."""
    if isinstance(outcome, Error):
        want = pb.PublishResponse(error=pb.Error(code=outcome.code, message=outcome.message))
    else:
        want = pb.PublishResponse(result=convert.publish_result(outcome))
    got = convert.encode_publish_response(outcome)
    assert got == want.SerializeToString()
    assert pb.PublishResponse.FromString(got) == want


def test_hand_encoded_batch_response_is_the_schemas() -> None:
    """Outcomes and conversion failures merged in request order, as batch_response does."""
    failed = {0: Error(107, "bad request: data is required"), 4: Error(107, "x")}
    outcomes = list(_OUTCOMES)
    total = len(outcomes) + len(failed)
    replies = [{"error": o.to_wire()} if isinstance(o, Error) else {"publish": o}
               for o in outcomes]
    want = convert.batch_response(replies, failed, total)
    got = convert.encode_batch_publish_response(outcomes, failed, total)
    assert got == want.SerializeToString()
    assert pb.BatchResponse.FromString(got) == want
    assert convert.encode_batch_publish_response([], {}, 0) == b""
