"""Error, unsubscribe and disconnect codes of the Centrifugo client protocol v2.

The code tables are the wire contract (docs/client-protocol.rst, "Codes",
"Unsubscribe codes", "Disconnect codes"): clients decide whether to retry, resubscribe
or give up from these numbers alone.

* Reply errors (:class:`Error`): 100-199 protocol errors, 400-1999 application errors.
  ``temporary`` errors and 109 make SDKs retry; any other code is terminal.
* Unsubscribe codes (:class:`Unsubscribe`): below 2500 terminal, 2500 and above make the
  client resubscribe (with recovery).
* Disconnect codes (:class:`Disconnect`): 3000-3499, 4000-4499 and 5000+ reconnect;
  3500-3999 and 4500-4999 are terminal.

The named codes (``Error.PERMISSION_DENIED``, ``Disconnect.INVALID_TOKEN``...) are class
attributes that build a **new** value on every access, so ``raise Error.X`` always raises
a fresh exception. A raised exception keeps its traceback, and raising one shared
instance again and again would chain every raise's frames (and the connections they
hold) onto it for the life of the process. The values compare equal by their fields.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = [
    "Disconnect",
    "Error",
    "Unsubscribe",
]


_V = TypeVar("_V", "Error", "Disconnect", "Unsubscribe")


class _Fresh(Generic[_V]):
    """A class attribute that is a new instance of its class on every access.

    Declared in the class body as ``NAME = _Fresh(code, text)``; reading ``Cls.NAME`` or
    ``instance.NAME`` calls ``Cls(code, text, *extra)``. Assignment through the class is
    not intercepted, so the attributes are never reassigned.
    """

    __slots__ = ("_cls", "_code", "_extra", "_text")

    _cls: type[_V]

    def __init__(self, code: int, text: str, *extra: bool) -> None:
        self._code = code
        self._text = text
        self._extra = extra

    def __set_name__(self, owner: type[_V], name: str) -> None:
        self._cls = owner

    def __get__(self, obj: object, owner: type | None = None) -> _V:
        return self._cls(self._code, self._text, *self._extra)


class Error(Exception):
    """An error reply to a command: ``{"id":N,"error":{"code":C,"message":M}}``.

    Treat instances as immutable values; they double as exceptions, so a handler can
    ``raise Error.PERMISSION_DENIED`` (a new instance each time) and the client turns it
    into the reply.
    """

    __slots__ = ("code", "message", "temporary")

    code: int
    message: str
    temporary: bool

    INTERNAL: _Fresh[Error] = _Fresh(100, "internal server error", True)
    UNAUTHORIZED: _Fresh[Error] = _Fresh(101, "unauthorized")
    UNKNOWN_CHANNEL: _Fresh[Error] = _Fresh(102, "unknown channel")
    PERMISSION_DENIED: _Fresh[Error] = _Fresh(103, "permission denied")
    METHOD_NOT_FOUND: _Fresh[Error] = _Fresh(104, "method not found")
    ALREADY_SUBSCRIBED: _Fresh[Error] = _Fresh(105, "already subscribed")
    LIMIT_EXCEEDED: _Fresh[Error] = _Fresh(106, "limit exceeded")
    BAD_REQUEST: _Fresh[Error] = _Fresh(107, "bad request")
    NOT_AVAILABLE: _Fresh[Error] = _Fresh(108, "not available")
    TOKEN_EXPIRED: _Fresh[Error] = _Fresh(109, "token expired")
    EXPIRED: _Fresh[Error] = _Fresh(110, "expired")
    TOO_MANY_REQUESTS: _Fresh[Error] = _Fresh(111, "too many requests", True)
    UNRECOVERABLE_POSITION: _Fresh[Error] = _Fresh(112, "unrecoverable position")

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.temporary = temporary

    def with_message(self, message: str) -> Error:
        """Return the same code with a more specific message."""
        return Error(self.code, message, self.temporary)

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object as sent to clients and API callers."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.temporary:
            body["temporary"] = True
        return body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Error):
            return NotImplemented
        return (self.code, self.message, self.temporary) == (
            other.code,
            other.message,
            other.temporary,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message, self.temporary))

    def __repr__(self) -> str:
        return f"Error({self.code}, {self.message!r})"


class Disconnect(Exception):
    """A connection-ending event with a code and a reason.

    Sent as a WebSocket close frame (code + reason) or, on transports without close
    codes, as a ``disconnect`` push. ``reconnect`` is derived from the code ranges.
    """

    __slots__ = ("code", "reason")

    code: int
    reason: str

    CONNECTION_CLOSED: _Fresh[Disconnect] = _Fresh(3000, "connection closed")
    SHUTDOWN: _Fresh[Disconnect] = _Fresh(3001, "shutdown")
    SERVER_ERROR: _Fresh[Disconnect] = _Fresh(3004, "internal server error")
    EXPIRED: _Fresh[Disconnect] = _Fresh(3005, "connection expired")
    SUB_EXPIRED: _Fresh[Disconnect] = _Fresh(3006, "subscription expired")
    SLOW: _Fresh[Disconnect] = _Fresh(3008, "slow")
    WRITE_ERROR: _Fresh[Disconnect] = _Fresh(3009, "write error")
    INSUFFICIENT_STATE: _Fresh[Disconnect] = _Fresh(3010, "insufficient state")
    FORCE_RECONNECT: _Fresh[Disconnect] = _Fresh(3011, "force reconnect")
    NO_PONG: _Fresh[Disconnect] = _Fresh(3012, "no pong")
    TOO_MANY_REQUESTS: _Fresh[Disconnect] = _Fresh(3013, "too many requests")
    STATE_INVALIDATED: _Fresh[Disconnect] = _Fresh(3014, "state invalidated")
    INVALID_TOKEN: _Fresh[Disconnect] = _Fresh(3500, "invalid token")
    BAD_REQUEST: _Fresh[Disconnect] = _Fresh(3501, "bad request")
    STALE: _Fresh[Disconnect] = _Fresh(3502, "stale")
    FORCE_NO_RECONNECT: _Fresh[Disconnect] = _Fresh(3503, "force disconnect")
    CONNECTION_LIMIT: _Fresh[Disconnect] = _Fresh(3504, "connection limit")
    CHANNEL_LIMIT: _Fresh[Disconnect] = _Fresh(3505, "channel limit")
    INAPPROPRIATE_PROTOCOL: _Fresh[Disconnect] = _Fresh(3506, "inappropriate protocol")
    PERMISSION_DENIED: _Fresh[Disconnect] = _Fresh(3507, "permission denied")
    NOT_AVAILABLE: _Fresh[Disconnect] = _Fresh(3508, "not available")
    TOO_MANY_ERRORS: _Fresh[Disconnect] = _Fresh(3509, "too many errors")

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        """Whether clients reconnect after this disconnect (the ranges above)."""
        code = self.code
        return not (3500 <= code <= 3999 or 4500 <= code <= 4999)

    def to_wire(self) -> dict[str, Any]:
        """The ``disconnect`` push body for transports without close frames."""
        return {"code": self.code, "reason": self.reason}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Disconnect):
            return NotImplemented
        return (self.code, self.reason) == (other.code, other.reason)

    def __hash__(self) -> int:
        return hash((self.code, self.reason))

    def __repr__(self) -> str:
        return f"Disconnect({self.code}, {self.reason!r})"


class Unsubscribe:
    """A server-initiated unsubscribe: ``{"unsubscribe":{"code":C,"reason":R}}`` push."""

    __slots__ = ("code", "reason")

    SERVER: _Fresh[Unsubscribe] = _Fresh(2000, "server unsubscribe")
    INSUFFICIENT_STATE: _Fresh[Unsubscribe] = _Fresh(2500, "insufficient state")
    EXPIRED: _Fresh[Unsubscribe] = _Fresh(2501, "subscription expired")
    STATE_INVALIDATED: _Fresh[Unsubscribe] = _Fresh(2502, "state invalidated")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    @property
    def resubscribe(self) -> bool:
        """Whether clients resubscribe after this unsubscribe."""
        return self.code >= 2500

    def to_wire(self) -> dict[str, Any]:
        """The ``unsubscribe`` push body."""
        return {"code": self.code, "reason": self.reason}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unsubscribe):
            return NotImplemented
        return (self.code, self.reason) == (other.code, other.reason)

    def __hash__(self) -> int:
        return hash((self.code, self.reason))

    def __repr__(self) -> str:
        return f"Unsubscribe({self.code}, {self.reason!r})"
