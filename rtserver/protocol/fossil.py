r"""Fossil delta encoder: the ``delta: "fossil"`` publication format of the client protocol.

A delta turns the previous publication of a channel (the *source*) into the next one
(the *target*). The format (see docs/client-protocol.rst,
"Delta compression and tag filters") is a line ``<target length>\n`` followed by
commands, every integer written in fossil's base-64 digits (``0-9 A-Z _ a-z ~``, most
significant first):

* ``<count>@<offset>,`` copy ``count`` bytes of the source from ``offset``;
* ``<count>:<bytes>`` insert the next ``count`` bytes of the delta literally;
* ``<checksum>;`` end: the checksum of the target (below).

Only the format is fixed; how matches are found is the encoder's choice. This one
indexes the source in 16-byte blocks and walks the target looking each 16-byte window
up in that index (a dict lookup per position instead of a byte-by-byte rolling hash,
which is what makes it fast in Python); a hit is extended forwards and backwards and
the walk jumps past it, so unchanged stretches cost one comparison per 64 bytes.

With ``utf8=True`` (the default) copies start and end on UTF-8 character boundaries of
the target, so the literal bytes of the delta are whole characters: the delta of a valid
UTF-8 target is itself valid UTF-8 and survives being sent as a JSON string (JSON
clients get deltas that way; a split character would be replaced by U+FFFD and the
client's checksum would fail).
"""

from __future__ import annotations

from array import array
from sys import byteorder
from typing import Final

import orjson

__all__ = ["NHASH", "checksum", "delta", "delta_or_full", "json_data"]

#: Block size of the source index: the shortest copy the encoder looks for.
NHASH: Final = 16
#: First chunk compared while extending a match.
_STRIDE: Final = 64

_DIGITS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"


def _int(value: int) -> bytes:
    """``value`` (>= 0) in fossil's base-64 digits, most significant first."""
    if value == 0:
        return b"0"
    out = bytearray()
    while value:
        out.append(_DIGITS[value & 63])
        value >>= 6
    out.reverse()
    return bytes(out)


def checksum(data: bytes) -> int:
    """The 32-bit checksum ending a delta: big-endian words summed modulo 2**32.

    The target is read as big-endian 32-bit words (the last one zero-padded) and the
    words are added with wrap-around.
    """
    pad = -len(data) % 4
    words = array("I", data + b"\0" * pad if pad else data)
    if words.itemsize != 4:  # pragma: no cover - 'I' is 4 bytes on every supported platform
        raise RuntimeError("array('I') is not 32-bit here")
    if byteorder == "little":
        words.byteswap()
    return sum(words) & 0xFFFFFFFF


def _forward(source: bytes, spos: int, target: bytes, tpos: int, tstop: int) -> int:
    """Length of the common run of ``source[spos:]`` and ``target[tpos:tstop]``.

    Galloping: equal chunks of doubling size, then a binary search inside the first
    unequal one, so a run of ``n`` bytes costs O(log n) slice comparisons.
    """
    limit = min(len(source) - spos, tstop - tpos)
    n = 0
    step = _STRIDE
    growing = True
    while n < limit:
        size = min(step, limit - n)
        if source[spos + n : spos + n + size] == target[tpos + n : tpos + n + size]:
            n += size
            step = step * 2 if growing else max(1, step // 2)
        elif size == 1:
            break
        else:
            growing = False
            step = size // 2
    return n


def _common_tail(source: bytes, target: bytes, limit: int) -> int:
    """Length of the common suffix of ``source`` and ``target``, at most ``limit``."""
    send = len(source)
    tend = len(target)
    n = 0
    step = _STRIDE
    growing = True
    while n < limit:
        size = min(step, limit - n)
        if source[send - n - size : send - n] == target[tend - n - size : tend - n]:
            n += size
            step = step * 2 if growing else max(1, step // 2)
        elif size == 1:
            break
        else:
            growing = False
            step = size // 2
    return n


def _backward(source: bytes, spos: int, target: bytes, tpos: int, floor: int, sfloor: int) -> int:
    """How many bytes before ``spos``/``tpos`` also match, staying at/above both floors."""
    limit = min(spos - sfloor, tpos - floor)
    n = 0
    while n < limit and source[spos - n - 1] == target[tpos - n - 1]:
        n += 1
    return n


def _is_continuation(byte: int) -> bool:
    return 0x80 <= byte < 0xC0


def _copy_pays(count: int, offset: int) -> bool:
    """Whether ``<count>@<offset>,`` is shorter than inserting the bytes."""
    return count > len(_int(count)) + len(_int(offset)) + 2


def delta(source: bytes, target: bytes, *, utf8: bool = True) -> bytes:
    """The fossil delta that turns ``source`` into ``target``.

    The common head and tail of the two are found first (O(log n) comparisons; most
    republished documents change in one region), then the middle of the target is
    matched against an index of the middle of the source.

    Args:
        source: The previous payload (what the client holds).
        target: The new payload.
        utf8: Keep copies on UTF-8 character boundaries of ``target`` (see the module
            docstring); costs nothing on ASCII and little elsewhere.

    Returns:
        The delta bytes; any fossil decoder applied to ``source`` returns ``target``.
    """
    size = len(target)
    slen = len(source)
    out = [_int(size), b"\n"]
    head = _forward(source, 0, target, 0, size)
    tail = _common_tail(source, target, min(slen, size) - head)
    if utf8:
        while 0 < head < size and _is_continuation(target[head]):
            head -= 1
        while tail and _is_continuation(target[size - tail]):
            tail -= 1
    if not _copy_pays(head, 0):
        head = 0
    if not _copy_pays(tail, slen - tail):
        tail = 0
    if head:
        out += (_int(head), b"@0,")
    stop = size - tail  # the middle of the target is [head, stop)
    sstop = slen - tail
    base = head  # start of the pending literal run in target
    if sstop - head >= NHASH and stop - head >= NHASH:
        # Built last block first so the first block with given content wins (smaller
        # offsets take fewer digits).
        top = head + (sstop - head - NHASH) // NHASH * NHASH
        index = {source[spos : spos + NHASH]: spos for spos in range(top, head - 1, -NHASH)}
        lookup = index.get
        tpos = head
        last = stop - NHASH
        while tpos <= last:
            spos = lookup(target[tpos : tpos + NHASH])
            if spos is None:
                tpos += 1
                continue
            back = _backward(source, spos, target, tpos, base, head)
            start = tpos - back
            sstart = spos - back
            end = tpos + NHASH + _forward(source, spos + NHASH, target, tpos + NHASH, stop)
            if utf8:
                while start < end and _is_continuation(target[start]):
                    start += 1
                    sstart += 1
                while end > start and end < size and _is_continuation(target[end]):
                    end -= 1
            count = end - start
            if count < NHASH or not _copy_pays(count, sstart):
                tpos += 1
                continue
            if start > base:
                out += (_int(start - base), b":", target[base:start])
            out += (_int(count), b"@", _int(sstart), b",")
            base = tpos = end
    if base < stop:
        out += (_int(stop - base), b":", target[base:stop])
    if tail:
        out += (_int(tail), b"@", _int(sstop), b",")
    out += (_int(checksum(target)), b";")
    return b"".join(out)


def delta_or_full(source: bytes, target: bytes, *, utf8: bool = True) -> tuple[bytes, bool]:
    """``(payload, is_delta)``: the delta, or ``target`` itself when the delta is not smaller.

    Centrifugo's rule: a delta at least as long as the full payload is not worth sending,
    and the publication goes out full (``delta`` unset) and becomes the next base.
    """
    patch = delta(source, target, utf8=utf8)
    if len(patch) >= len(target):
        return target, False
    return patch, True


def json_data(payload: bytes) -> bytes | None:
    """``payload`` as a JSON string literal, the ``data`` sent to a JSON delta subscriber.

    Full payloads and deltas alike travel as JSON strings to a JSON client that
    negotiated delta. Returns None when ``payload`` is not valid UTF-8 (it cannot be a
    JSON string; with ``utf8=True`` that happens only when the target is not UTF-8).
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return orjson.dumps(text)
