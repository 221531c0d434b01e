"""Error, unsubscribe and disconnect codes of the Centrifugo client protocol v2.

The code tables are the wire contract (protocol.md §2): clients decide whether to
retry, resubscribe or give up from these numbers alone.

* Reply errors (:class:`Error`): 100-199 protocol errors, 400-1999 application errors.
  ``temporary`` errors and 109 make SDKs retry; any other code is terminal.
* Unsubscribe codes (:class:`Unsubscribe`): below 2500 terminal, 2500 and above make the
  client resubscribe (with recovery).
* Disconnect codes (:class:`Disconnect`): 3000-3499, 4000-4499 and 5000+ reconnect;
  3500-3999 and 4500-4999 are terminal.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "Disconnect",
    "Error",
    "Unsubscribe",
]


class Error(Exception):
    """An error reply to a command: ``{"id":N,"error":{"code":C,"message":M}}``.

    Treat instances as immutable values; they double as exceptions, so a handler can
    ``raise Error.PERMISSION_DENIED`` and the client turns it into the reply.
    """

    __slots__ = ("code", "message", "temporary")

    code: int
    message: str
    temporary: bool

    INTERNAL: Error
    UNAUTHORIZED: Error
    UNKNOWN_CHANNEL: Error
    PERMISSION_DENIED: Error
    METHOD_NOT_FOUND: Error
    ALREADY_SUBSCRIBED: Error
    LIMIT_EXCEEDED: Error
    BAD_REQUEST: Error
    NOT_AVAILABLE: Error
    TOKEN_EXPIRED: Error
    EXPIRED: Error
    TOO_MANY_REQUESTS: Error
    UNRECOVERABLE_POSITION: Error

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


Error.INTERNAL = Error(100, "internal server error", temporary=True)
Error.UNAUTHORIZED = Error(101, "unauthorized")
Error.UNKNOWN_CHANNEL = Error(102, "unknown channel")
Error.PERMISSION_DENIED = Error(103, "permission denied")
Error.METHOD_NOT_FOUND = Error(104, "method not found")
Error.ALREADY_SUBSCRIBED = Error(105, "already subscribed")
Error.LIMIT_EXCEEDED = Error(106, "limit exceeded")
Error.BAD_REQUEST = Error(107, "bad request")
Error.NOT_AVAILABLE = Error(108, "not available")
Error.TOKEN_EXPIRED = Error(109, "token expired")
Error.EXPIRED = Error(110, "expired")
Error.TOO_MANY_REQUESTS = Error(111, "too many requests", temporary=True)
Error.UNRECOVERABLE_POSITION = Error(112, "unrecoverable position")


class Disconnect(Exception):
    """A connection-ending event with a code and a reason.

    Sent as a WebSocket close frame (code + reason) or, on transports without close
    codes, as a ``disconnect`` push. ``reconnect`` is derived from the code ranges.
    """

    __slots__ = ("code", "reason")

    code: int
    reason: str

    CONNECTION_CLOSED: Disconnect
    SHUTDOWN: Disconnect
    SERVER_ERROR: Disconnect
    EXPIRED: Disconnect
    SUB_EXPIRED: Disconnect
    SLOW: Disconnect
    WRITE_ERROR: Disconnect
    INSUFFICIENT_STATE: Disconnect
    FORCE_RECONNECT: Disconnect
    NO_PONG: Disconnect
    TOO_MANY_REQUESTS: Disconnect
    STATE_INVALIDATED: Disconnect
    INVALID_TOKEN: Disconnect
    BAD_REQUEST: Disconnect
    STALE: Disconnect
    FORCE_NO_RECONNECT: Disconnect
    CONNECTION_LIMIT: Disconnect
    CHANNEL_LIMIT: Disconnect
    INAPPROPRIATE_PROTOCOL: Disconnect
    PERMISSION_DENIED: Disconnect
    NOT_AVAILABLE: Disconnect
    TOO_MANY_ERRORS: Disconnect

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        """Whether clients reconnect after this disconnect (protocol.md §2.3 ranges)."""
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


Disconnect.CONNECTION_CLOSED = Disconnect(3000, "connection closed")
Disconnect.SHUTDOWN = Disconnect(3001, "shutdown")
Disconnect.SERVER_ERROR = Disconnect(3004, "internal server error")
Disconnect.EXPIRED = Disconnect(3005, "connection expired")
Disconnect.SUB_EXPIRED = Disconnect(3006, "subscription expired")
Disconnect.SLOW = Disconnect(3008, "slow")
Disconnect.WRITE_ERROR = Disconnect(3009, "write error")
Disconnect.INSUFFICIENT_STATE = Disconnect(3010, "insufficient state")
Disconnect.FORCE_RECONNECT = Disconnect(3011, "force reconnect")
Disconnect.NO_PONG = Disconnect(3012, "no pong")
Disconnect.TOO_MANY_REQUESTS = Disconnect(3013, "too many requests")
Disconnect.STATE_INVALIDATED = Disconnect(3014, "state invalidated")
Disconnect.INVALID_TOKEN = Disconnect(3500, "invalid token")
Disconnect.BAD_REQUEST = Disconnect(3501, "bad request")
Disconnect.STALE = Disconnect(3502, "stale")
Disconnect.FORCE_NO_RECONNECT = Disconnect(3503, "force disconnect")
Disconnect.CONNECTION_LIMIT = Disconnect(3504, "connection limit")
Disconnect.CHANNEL_LIMIT = Disconnect(3505, "channel limit")
Disconnect.INAPPROPRIATE_PROTOCOL = Disconnect(3506, "inappropriate protocol")
Disconnect.PERMISSION_DENIED = Disconnect(3507, "permission denied")
Disconnect.NOT_AVAILABLE = Disconnect(3508, "not available")
Disconnect.TOO_MANY_ERRORS = Disconnect(3509, "too many errors")


class Unsubscribe:
    """A server-initiated unsubscribe: ``{"unsubscribe":{"code":C,"reason":R}}`` push."""

    __slots__ = ("code", "reason")

    SERVER: Unsubscribe
    INSUFFICIENT_STATE: Unsubscribe
    EXPIRED: Unsubscribe
    STATE_INVALIDATED: Unsubscribe

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


Unsubscribe.SERVER = Unsubscribe(2000, "server unsubscribe")
Unsubscribe.INSUFFICIENT_STATE = Unsubscribe(2500, "insufficient state")
Unsubscribe.EXPIRED = Unsubscribe(2501, "subscription expired")
Unsubscribe.STATE_INVALIDATED = Unsubscribe(2502, "state invalidated")
