"""The fossil delta format details the SDK cross-checks rely on (tests/interop/test_fossil_sdks.py)."""

from __future__ import annotations

import os

import orjson
import pytest

from rtserver.protocol import fossil


def test_checksum_is_the_wrapping_sum_of_big_endian_words() -> None:
    """Words read big-endian, the last one zero-padded, summed modulo 2**32."""
    assert fossil.checksum(b"") == 0
    assert fossil.checksum(b"abcd") == 0x61626364
    assert fossil.checksum(b"a") == 0x61000000
    assert fossil.checksum(b"abcdef") == 0x61626364 + 0x65660000
    assert fossil.checksum(b"\xff" * 8) == 0xFFFFFFFE


def test_header_and_terminator() -> None:
    """The length line in base-64 digits first, ``<checksum>;`` last."""
    target = b"x" * 64
    patch = fossil.delta(b"", target)
    # 64 = 1*64 + 0: the length line, then one insert of the whole target, then the end.
    assert patch[:6] == b"10\n10:"
    assert patch[6:70] == target
    assert patch.endswith(b";")
    assert b"\n" not in patch[70:]
    assert fossil.delta(b"abc", b"") == b"0\n0;"


def test_unchanged_payload_is_one_copy() -> None:
    """Republishing the same 4 KB gives a delta of a few bytes."""
    payload = os.urandom(4096)
    patch = fossil.delta(payload, payload, utf8=False)
    assert len(patch) < 20
    assert b"@0," in patch


def test_full_payload_when_delta_is_not_smaller() -> None:
    """Unrelated payloads go out full, without the delta flag (Centrifugo's rule)."""
    source, target = os.urandom(200), os.urandom(200)
    assert fossil.delta_or_full(source, target) == (target, False)
    edited = target[:100] + b"!" + target[101:]
    data, is_delta = fossil.delta_or_full(target, edited, utf8=False)
    assert is_delta
    assert len(data) < 40


def test_utf8_deltas_are_utf8() -> None:
    """Copies never split a character: the literal bytes of the delta are whole characters."""
    source = ("x" * 40 + "é" + "y" * 40).encode()
    target = ("x" * 40 + "ê" + "y" * 40).encode()  # é and ê share their first byte
    with pytest.raises(UnicodeDecodeError):  # a byte-exact encoder splits the character
        fossil.delta(source, target, utf8=False).decode("utf-8")
    patch = fossil.delta(source, target)
    assert "ê".encode() in patch
    patch.decode("utf-8")


def test_json_data() -> None:
    """Full payloads and deltas reach JSON delta subscribers as JSON strings."""
    assert fossil.json_data(b'{"a":"\xc3\xa9"}') == orjson.dumps('{"a":"é"}')
    assert fossil.json_data(b"\xff\xfe") is None
