"""Publication chains for the fossil cross-checks: payloads in order, as a channel would see them.

Each chain is what one delta subscriber receives: the first publication full, then each
one as a delta against the previous (or full, when the delta is not smaller). The frames
are built the way Centrifugo sends them to a subscriber that negotiated delta: JSON
clients get ``data`` as a JSON *string* (full payload or delta alike) with
``"delta": true`` on deltas; Protobuf clients get the raw bytes and the ``delta`` flag.
"""

from __future__ import annotations

import itertools
import json
import random

import orjson

from rtserver.protocol import fossil, protobuf

CHANNEL = "docs:report"

_WORDS = ["alpha", "beta", "gamma", "délta", "ünïcode", "😀", "naïve", "日本語", "x", "42"]


def edited_document(rounds: int = 50, seed: int = 11) -> list[bytes]:
    """A ~6 KB JSON document republished ``rounds`` times, each with one small edit.

    Edits change a number, rewrite a (sometimes non-ASCII) string, append or remove a row,
    so copies around multi-byte characters are exercised.
    """
    rng = random.Random(seed)
    rows = [
        {"id": i, "name": f"row {i} {rng.choice(_WORDS)}", "qty": rng.randint(0, 999), "ok": True}
        for i in range(60)
    ]
    doc = {"title": "Quarterly report — draft", "rows": rows, "version": 0}
    out = [json.dumps(doc, ensure_ascii=False).encode()]
    for version in range(1, rounds):
        doc["version"] = version
        kind = rng.randrange(4)
        row = rng.choice(rows)
        if kind == 0:
            row["qty"] = rng.randint(0, 99999)
        elif kind == 1:
            row["name"] = f"row {row['id']} {rng.choice(_WORDS)}{rng.choice(_WORDS)}"
        elif kind == 2:
            rows.insert(rng.randrange(len(rows)), {"id": 100 + version, "name": "new ✓"})
        else:
            rows.pop(rng.randrange(len(rows)))
        out.append(json.dumps(doc, ensure_ascii=False).encode())
    return out


def random_pairs(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    """``count`` (source, target) UTF-8 text pairs: mutations of each other and strangers."""
    rng = random.Random(seed)
    alphabet = 'ab c{}":,é✓😀\n\\' + "".join(_WORDS)
    pairs = []
    for _ in range(count):
        source = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))
        target = source
        for _ in range(rng.randrange(0, 6)):
            at = rng.randrange(len(target) + 1)
            cut = rng.randrange(0, 20)
            added = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 20)))
            target = target[:at] + added + target[at + cut :]
        if rng.random() < 0.1:
            target = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 100)))
        pairs.append(
            (
                json.dumps(source, ensure_ascii=False).encode(),
                json.dumps(target, ensure_ascii=False).encode(),
            )
        )
    return pairs


def encoded(payloads: list[bytes]) -> list[tuple[bytes, bool]]:
    """What the subscriber receives for each payload: ``(payload or delta, is_delta)``."""
    out = [(payloads[0], False)]
    for prev, cur in itertools.pairwise(payloads):
        out.append(fossil.delta_or_full(prev, cur))
    return out


def json_frames(payloads: list[bytes]) -> list[str]:
    """The JSON ``pub`` push frames a delta subscriber reads."""
    frames = []
    for offset, (data, is_delta) in enumerate(encoded(payloads), start=1):
        literal = fossil.json_data(data)
        assert literal is not None, "a UTF-8 payload always has a UTF-8 delta"
        pub: dict[str, object] = {"data": orjson.Fragment(literal), "offset": offset}
        if is_delta:
            pub["delta"] = True
        frames.append(orjson.dumps({"push": {"channel": CHANNEL, "pub": pub}}).decode())
    return frames


def protobuf_frames(payloads: list[bytes]) -> list[bytes]:
    """The Protobuf ``pub`` push frames (length-prefixed ``Reply``) a delta subscriber reads."""
    return [
        protobuf.encode_push(
            CHANNEL, "pub", {"data": data, "offset": offset, "delta": is_delta or None}
        )
        for offset, (data, is_delta) in enumerate(encoded(payloads), start=1)
    ]
