"""An HPACK decoder (RFC 7541) for the reactor's GRPC server: its own dynamic table.

The ``hpack`` library's decoder costs ~20 µs for a GRPC request's header block of 9
fields: a memoryview slice, a decoded integer and a tuple per field, logging calls, a
deque lookup per index. A block that leaves the dynamic table unchanged can be cached
whole, but a client that indexes a new ``grpc-timeout`` value on every call (grpc-go's
and the ``h2`` library's encoders do) changes the table with every block, and every
later index shifts with it, so no block repeats. This decoder walks a block with plain
integer arithmetic: an indexed field (most of such a block) is a table lookup (29.8k
instructions per grpc-go block against ``hpack``'s 195.7k; bench/RESULTS.md).

It is as strict as ``hpack``'s and raises the same exceptions for the same blocks (a
differential fuzz test compares the two): an index of 0 or past the table
(:class:`~hpack.InvalidTableIndexError`), a table size update past the bound
(SETTINGS_HEADER_TABLE_SIZE, 4096 unless told otherwise) or after a field
(:class:`~hpack.InvalidTableSizeError`, :class:`~hpack.HPACKDecodingError`), an integer
of more than 5 octets after its prefix or cut short, a string past the block, a Huffman
string with bad padding or EOS (:class:`~hpack.HPACKDecodingError`, Huffman decoding is
``hpack``'s, through ``rtserver._compat``), and a decoded header list larger than
``max_header_list_size`` (RFC 7541's entry size: name + value + 32)
(:class:`~hpack.OversizedHeaderListError`).

Memory: the dynamic table holds at most its size in bytes (each entry counts its name,
value and 32); Huffman strings decoded are remembered up to :data:`HUFFMAN_CACHED`
strings of at most :data:`HUFFMAN_CACHED_SIZE` bytes (a client sends the same few).
"""

from __future__ import annotations

from hpack import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)

from rtserver._compat import hpack_decode_huffman, hpack_static_table

__all__ = ["HUFFMAN_CACHED", "HUFFMAN_CACHED_SIZE", "HPACKDecoder"]

#: The static table (RFC 7541, Appendix A), index 1 first.
_STATIC = hpack_static_table()
_STATIC_LENGTH = len(_STATIC)
#: Each static entry's size as RFC 7541 (4.1) counts it: name + value + 32.
_STATIC_SIZES = tuple(len(name) + len(value) + 32 for name, value in _STATIC)
#: The dynamic table size before any SETTINGS_HEADER_TABLE_SIZE (RFC 9113, 6.5.2).
DEFAULT_TABLE_SIZE = 4096
#: Octets an integer may take after its prefix, as ``hpack`` allows (value < 2**35).
_MAX_INTEGER_OCTETS = 5
#: Huffman-decoded strings remembered, and the longest remembered (encoded).
HUFFMAN_CACHED = 64
HUFFMAN_CACHED_SIZE = 128


def _integer(block: bytes, at: int, value: int) -> tuple[int, int]:
    """The rest of an HPACK integer whose prefix was full: its value and end.

    ``at``: the first octet after the prefix; ``value``: the prefix's value.
    """
    shift = 0
    stop = at + _MAX_INTEGER_OCTETS
    end = len(block)
    while at < end:
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        if at >= stop:
            raise HPACKDecodingError("Variable integer representation is too long")
        shift += 7
    raise HPACKDecodingError("Unable to decode HPACK integer representation")


class HPACKDecoder:
    """Decodes the header blocks of one HTTP/2 connection (one dynamic table).

    Args:
        max_header_list_size: the largest decoded header list accepted (RFC 7541's
            entry sizes, as ``hpack`` counts).
        max_table_size: the SETTINGS_HEADER_TABLE_SIZE this side announced: the largest
            table size update accepted.
    """

    __slots__ = (
        "_huffman",
        "_max_size",
        "_size",
        "_sizes",
        "_table",
        "changed",
        "max_allowed_table_size",
        "max_header_list_size",
    )

    def __init__(
        self, max_header_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE
    ) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = max_table_size
        #: The dynamic table, oldest entry first (dynamic index 1 is the last).
        self._table: list[tuple[bytes, bytes]] = []
        self._sizes: list[int] = []  # the entries' sizes, in the same order
        self._size = 0  # of the entries, as RFC 7541 (4.1) counts it
        self._max_size = max_table_size  # the table's size (the last size update)
        self._huffman: dict[bytes, bytes] = {}
        #: Whether the last block changed the dynamic table (an insertion or size update).
        self.changed = False

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table's entries, newest first (dynamic index 1 first)."""
        return self._table[::-1]

    @property
    def table_size(self) -> int:
        """The dynamic table's size (its last size update, or the default)."""
        return self._max_size

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of a complete header block, as raw (name, value) pairs."""
        headers: list[tuple[bytes, bytes]] = []
        table = self._table
        sizes = self._sizes
        size = 0
        limit = self.max_header_list_size
        changed = False
        at, end = 0, len(block)
        while at < end:
            first = block[at]
            at += 1
            if first & 0x80:  # an indexed field (6.1)
                index = first & 0x7F
                if index == 0x7F:
                    index, at = _integer(block, at, index)
                if 0 < index <= _STATIC_LENGTH:
                    header = _STATIC[index - 1]
                    size += _STATIC_SIZES[index - 1]
                else:
                    dynamic = index - _STATIC_LENGTH
                    if index == 0 or dynamic > len(table):
                        raise InvalidTableIndexError(f"Invalid table index {index}")
                    header = table[-dynamic]
                    size += sizes[-dynamic]
            elif first & 0x40 or not first & 0x20:
                # A literal: with incremental indexing (6.2.1), without indexing
                # (6.2.2) or never indexed (6.2.3).
                indexing = first & 0x40
                mask = 0x3F if indexing else 0x0F
                index = first & mask
                if index:
                    if index == mask:
                        index, at = _integer(block, at, index)
                    if index <= _STATIC_LENGTH:
                        name = _STATIC[index - 1][0]
                    else:
                        dynamic = index - _STATIC_LENGTH
                        if dynamic > len(table):
                            raise InvalidTableIndexError(f"Invalid table index {index}")
                        name = table[-dynamic][0]
                else:
                    name, at = self._string(block, at)
                value, at = self._string(block, at)
                header = (name, value)
                entry = len(name) + len(value) + 32
                size += entry
                if indexing:
                    self._add(header, entry)
                    changed = True
            else:  # a dynamic table size update (6.3)
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                new_size = first & 0x1F
                if new_size == 0x1F:
                    new_size, at = _integer(block, at, new_size)
                if new_size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self._max_size = new_size
                self._evict()
                changed = True
                continue
            headers.append(header)
            if size > limit:
                raise OversizedHeaderListError(f"A header list larger than {limit}")
        self.changed = changed
        return headers

    def _string(self, block: bytes, at: int) -> tuple[bytes, int]:
        """A string literal (5.2) at ``at``: its octets and end."""
        if at >= len(block):
            raise HPACKDecodingError("Unable to decode HPACK integer representation")
        first = block[at]
        length = first & 0x7F
        at += 1
        if length == 0x7F:
            length, at = _integer(block, at, length)
        stop = at + length
        if stop > len(block):
            raise HPACKDecodingError("Truncated header block")
        octets = block[at:stop]
        if first & 0x80:
            cache = self._huffman
            decoded = cache.get(octets)
            if decoded is None:
                decoded = hpack_decode_huffman(octets)
                if length <= HUFFMAN_CACHED_SIZE:
                    if len(cache) >= HUFFMAN_CACHED:
                        cache.clear()
                    cache[octets] = decoded
            octets = decoded
        return octets, stop

    def _add(self, header: tuple[bytes, bytes], size: int) -> None:
        """Insert an entry of ``size`` (4.4): evict the oldest to make room, or empty all."""
        if size > self._max_size:
            self._table.clear()
            self._sizes.clear()
            self._size = 0
            return
        self._table.append(header)
        self._sizes.append(size)
        self._size += size
        if self._size > self._max_size:
            self._evict()

    def _evict(self) -> None:
        sizes = self._sizes
        size = self._size
        evicted = 0
        while size > self._max_size:
            size -= sizes[evicted]
            evicted += 1
        if evicted:
            del self._table[:evicted]
            del sizes[:evicted]
        self._size = size
