"""rtserver's fossil delta encoder against the official SDKs' decoders.

No server: the encoder's deltas are wrapped in the frames a delta subscriber reads (JSON
and Protobuf, see ``deltachains.py``) and decoded by centrifuge-js (its JSON and
Protobuf builds' codecs in Node, ``js/fossil_apply.mjs``) and by centrifuge-python
(``centrifuge.fossil.apply_delta`` on what its codecs hand it: the UTF-8 bytes of the
JSON string, or the Protobuf ``data`` bytes parsed with the SDK's own ``client_pb2``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from centrifuge.fossil import apply_delta
from centrifuge.protocol.client_pb2 import Reply
from deltachains import edited_document, encoded, json_frames, protobuf_frames, random_pairs
from harness import INTEROP_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserver.protocol import fossil

SCRIPT = INTEROP_DIR / "js" / "fossil_apply.mjs"


def run_js(node: str, node_modules: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to centrifuge-js's codecs; its JSON answer."""
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=60,
        check=False,
        cwd=node_modules.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_js_applies_republished_document(node: str, node_modules: Path) -> None:
    """A document republished 50 times arrives intact at JS JSON and Protobuf subscribers.

    Almost every publication after the first is a delta, and the deltas are a small
    fraction of the full payloads on the wire.
    """
    payloads = edited_document(50)
    answer = run_js(
        node,
        node_modules,
        {
            "json": [json_frames(payloads)],
            "protobuf": [[f.hex() for f in protobuf_frames(payloads)]],
        },
    )
    as_json = answer["json"][0]
    assert "error" not in as_json, as_json
    assert [json.loads(d) for d in as_json["data"]] == [json.loads(p) for p in payloads]
    as_pb = answer["protobuf"][0]
    assert "error" not in as_pb, as_pb
    assert [bytes.fromhex(d) for d in as_pb["data"]] == payloads
    for result in (as_json, as_pb):
        assert result["deltas"] >= 45
        assert result["full"][1:] == [len(p) for p in payloads[1:]]
        # Small edits of a 6 KB document: the deltas are under a tenth of the bytes.
        assert sum(result["wire"][1:]) * 10 < sum(result["full"][1:])


def test_js_applies_random_corpus(node: str, node_modules: Path) -> None:
    """300 seeded (source, target) text pairs: every delta decodes to the target in both builds."""
    pairs = random_pairs(300, seed=5)
    answer = run_js(
        node,
        node_modules,
        {
            "json": [json_frames([s, t]) for s, t in pairs],
            "protobuf": [[f.hex() for f in protobuf_frames([s, t])] for s, t in pairs],
        },
    )
    for (source, target), as_json, as_pb in zip(
        pairs, answer["json"], answer["protobuf"], strict=True
    ):
        assert "error" not in as_json, (source, target, as_json)
        assert [json.loads(d) for d in as_json["data"]] == [json.loads(source), json.loads(target)]
        assert [bytes.fromhex(d) for d in as_pb["data"]] == [source, target]
    assert sum(r["deltas"] for r in answer["json"]) > 100


def test_js_refuses_a_delta_against_another_base(node: str, node_modules: Path) -> None:
    """A subscriber holding a different base gets the SDK's checksum error, not wrong data."""
    payloads = edited_document(2)
    frames = json_frames(payloads)
    assert encoded(payloads)[1][1], "the second publication is a delta"
    other_base = payloads[0].replace(b'"row 1 ', b'"row 7 ', 1)  # still JSON, same length
    assert other_base != payloads[0]
    stale = json_frames([other_base])[0]
    answer = run_js(node, node_modules, {"json": [[stale, frames[1]]]})
    assert "checksum" in answer["json"][0].get("error", "")


# --- centrifuge-python ------------------------------------------------------------------


def python_sdk_json(frames: list[str]) -> list[Any]:
    """What centrifuge-python's JSON codec yields for a delta subscription's frames."""
    prev = b""
    out = []
    for frame in frames:
        pub = json.loads(frame)["push"]["pub"]
        wire = pub["data"].encode("utf-8")
        prev = bytes(apply_delta(prev, wire)) if pub.get("delta") else wire
        out.append(json.loads(prev))
    return out


def python_sdk_protobuf(frames: list[bytes]) -> list[bytes]:
    """What centrifuge-python's Protobuf codec yields (frames parsed with its ``client_pb2``)."""
    prev = b""
    out = []
    for frame in frames:
        start = 1
        while frame[start - 1] & 0x80:  # past the varint length prefix
            start += 1
        reply = Reply.FromString(frame[start:])
        pub = reply.push.pub
        prev = bytes(apply_delta(prev, pub.data)) if pub.delta else pub.data
        out.append(prev)
    return out


def test_python_applies_republished_document() -> None:
    """The 50-times republished document arrives intact through centrifuge-python's decoding."""
    payloads = edited_document(50)
    assert python_sdk_json(json_frames(payloads)) == [json.loads(p) for p in payloads]
    assert python_sdk_protobuf(protobuf_frames(payloads)) == payloads


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@st.composite
def edited_pairs(draw: st.DrawFn) -> tuple[str, str]:
    """A text and a version of it with a few insertions and deletions (or a stranger)."""
    source = draw(_text)
    if draw(st.booleans()):
        return source, draw(_text)
    target = source
    for _ in range(draw(st.integers(0, 5))):
        at = draw(st.integers(0, len(target)))
        cut = draw(st.integers(0, 30))
        target = target[:at] + draw(st.text(max_size=30)) + target[at + cut :]
    return source, target


@settings(max_examples=300, deadline=None)
@given(edited_pairs())
def test_python_applies_text_deltas_as_json_strings(pair: tuple[str, str]) -> None:
    """Any UTF-8 text pair: the delta is valid UTF-8 and decodes through the JSON string path."""
    source, target = (json.dumps(s, ensure_ascii=False).encode() for s in pair)
    frames = json_frames([source, target])
    assert python_sdk_json(frames) == [pair[0], pair[1]]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600), st.booleans())
def test_python_applies_binary_deltas(source: bytes, target: bytes, utf8: bool) -> None:
    """Arbitrary bytes (Protobuf payloads): the delta applies with or without UTF-8 alignment."""
    patch = fossil.delta(source, target, utf8=utf8)
    assert bytes(apply_delta(source, patch)) == target


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=2000), st.data())
def test_python_applies_binary_edits(source: bytes, data: st.DataObject) -> None:
    """Edited binary payloads decode, and a small edit of a long payload gives a short delta."""
    at = data.draw(st.integers(0, len(source)))
    insert = data.draw(st.binary(max_size=8))
    target = source[:at] + insert + source[at + 4 :]
    patch = fossil.delta(source, target, utf8=False)
    assert bytes(apply_delta(source, patch)) == target
    if len(source) >= 1000:
        assert len(patch) < 80
