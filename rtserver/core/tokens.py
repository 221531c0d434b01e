"""Connection and subscription tokens as a client sees them: verification outcomes.

Pure functions over an :class:`~rtserver.core.ports.ITokenVerifier`: they map the
verifier's outcome to the protocol's errors and disconnects (docs/client-protocol.rst)
and compute the ``expires``/``ttl`` fields every connect, subscribe and refresh result
carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rtserver.core.ports import ITokenVerifier
from rtserver.core.types import (
    ConnectionToken,
    InvalidToken,
    KeysLoading,
    SubscriptionToken,
    TokenExpired,
)
from rtserver.logs import Logger
from rtserver.protocol.codes import Disconnect, Error

__all__ = [
    "check_unexpired",
    "expiry_fields",
    "verify_connection_token",
    "verify_subscription_token",
]

_log = Logger()

T = TypeVar("T")


async def _verified(check: Callable[[], T]) -> T:
    """Run ``check``; if its keys are being fetched (JWKS), wait for them and run it again.

    A second :class:`KeysLoading` propagates as the InvalidToken it is.
    """
    try:
        return check()
    except KeysLoading as e:
        await e.ready
    return check()


async def verify_connection_token(
    verifier: ITokenVerifier | None, raw: str, now: float, expired: Exception, client_id: str
) -> ConnectionToken:
    """Verify a connection token.

    Raises:
        Exception: ``expired`` when the token has expired (109 on connect, 3005 on
            refresh).
        Disconnect: 3500 invalid token (or no verifier configured).
    """
    if verifier is None:
        raise Disconnect.INVALID_TOKEN
    try:
        return await _verified(lambda: verifier.verify_connection_token(raw, now))
    except TokenExpired:
        raise expired from None
    except InvalidToken as e:
        _log.info("client {client}: invalid connection token: {e}", client=client_id, e=str(e))
        raise Disconnect.INVALID_TOKEN from None


async def verify_subscription_token(
    verifier: ITokenVerifier | None,
    raw: str,
    now: float,
    *,
    channel: str,
    user: str,
    client_id: str,
) -> SubscriptionToken:
    """Verify a subscription token for ``channel``, ``user`` and connection ``client_id``.

    Raises:
        Error: 109 token expired; 103 when the token is invalid or no verifier is
            configured.
        Disconnect: 3500 when the token is for another channel, user or connection.
    """
    if verifier is None:
        raise Error.PERMISSION_DENIED
    try:
        token = await _verified(lambda: verifier.verify_subscription_token(raw, now))
    except TokenExpired:
        raise Error.TOKEN_EXPIRED from None
    except InvalidToken as e:
        _log.info(
            "client {client}: invalid subscription token: {e}", client=client_id, e=str(e)
        )
        raise Error.PERMISSION_DENIED from None
    if token.channel != channel or token.user != user:
        raise Disconnect.INVALID_TOKEN
    if token.client and token.client != client_id:
        raise Disconnect.INVALID_TOKEN
    return token


def check_unexpired(expire_at: int, now: float) -> None:
    """Refuse an ``expire_at`` already in the past (0 never expires).

    Raises:
        Error: 110 expired.
    """
    if expire_at and expire_at <= now:
        raise Error.EXPIRED


def expiry_fields(expire_at: int, now: float) -> dict[str, bool | int]:
    """``{"expires": true, "ttl": seconds}`` for an expiring result, else nothing."""
    if not expire_at:
        return {}
    return {"expires": True, "ttl": max(1, int(expire_at - now))}
