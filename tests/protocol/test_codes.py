"""Error, disconnect and unsubscribe codes are values: every named code is a new object."""

from __future__ import annotations

import pytest

from rtserver.protocol.codes import Disconnect, Error, Unsubscribe
from rtserver.protocol.frames import ProtocolError


@pytest.mark.parametrize(
    "read",
    [lambda: Error.PERMISSION_DENIED, lambda: Disconnect.INVALID_TOKEN, lambda: Unsubscribe.SERVER],
)
def test_named_codes_are_new_equal_values(read: object) -> None:
    assert callable(read)
    first, second = read(), read()
    assert first is not second
    assert first == second
    assert hash(first) == hash(second)


@pytest.mark.parametrize("cls", [Error, Disconnect, Unsubscribe])
def test_every_named_code_is_fresh(cls: type) -> None:
    names = [n for n in vars(cls) if n.isupper()]
    assert len(names) >= 4
    for name in names:
        first, second = getattr(cls, name), getattr(cls, name)
        assert type(first) is cls and first is not second and first == second, name


def test_raising_a_named_code_twice_does_not_grow_one_traceback() -> None:
    def refuse() -> None:
        raise Error.PERMISSION_DENIED

    caught = []
    for _ in range(3):
        try:
            refuse()
        except Error as e:
            caught.append(e)
    assert len({id(e) for e in caught}) == 3
    depths = []
    for e in caught:
        tb, n = e.__traceback__, 0
        while tb is not None:
            n, tb = n + 1, tb.tb_next
        depths.append(n)
    assert depths == [depths[0]] * 3


def test_named_codes_keep_their_fields() -> None:
    assert Error.INTERNAL.to_wire() == {
        "code": 100,
        "message": "internal server error",
        "temporary": True,
    }
    assert Error.TOO_MANY_REQUESTS.temporary
    assert not Error.BAD_REQUEST.temporary
    assert Disconnect.INVALID_TOKEN.reconnect is False
    assert Disconnect.SHUTDOWN.reconnect is True
    assert Unsubscribe.EXPIRED.resubscribe is True
    # A subclass reads the base class's codes, not instances of itself.
    assert type(ProtocolError.BAD_REQUEST) is Disconnect
    assert ProtocolError("x") == Disconnect.BAD_REQUEST
