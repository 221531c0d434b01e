"""Pure parts of a connect: its server-side channels, its result, its errors.

The client (``core/client.py``) runs the connect; these functions decide, given the
configuration and the verified token, without touching the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rtserver.config import ChannelOptions, ClientConfig
from rtserver.core.channels import ChannelResolver
from rtserver.core.tokens import expiry_fields
from rtserver.core.types import ConnectionToken, SubscriptionGrant
from rtserver.protocol.codes import Disconnect, Error

__all__ = [
    "ServerSideChannel",
    "anonymous_allowed",
    "connect_result",
    "server_side_channels",
    "uni_disconnect",
]

#: A server-side subscription to establish on connect: channel, the token's ``subs``
#: grant for it (None for ``channels`` and the personal channel), its options.
ServerSideChannel = tuple[str, SubscriptionGrant | None, ChannelOptions]


def anonymous_allowed(config: ClientConfig) -> bool:
    """Whether a connect without a token is accepted (as user "")."""
    return config.allow_anonymous_connect_without_token or config.insecure


def header_user(headers: Mapping[str, str], name: str) -> str:
    """The user id in the request header ``name`` (``client.user_id_http_header``), or "".

    Header names compare case-insensitively; an empty value is no user.
    """
    if not name:
        return ""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return ""


def server_side_channels(
    token: ConnectionToken, user: str, config: ClientConfig, resolver: ChannelResolver
) -> list[ServerSideChannel]:
    """The token's ``channels`` and ``subs`` and the personal channel, each once.

    Raises:
        Error: 102 unknown channel for a channel in no configured namespace; 106 limit
            exceeded past ``client.channel_limit``.
    """
    names: list[tuple[str, SubscriptionGrant | None]] = [(ch, None) for ch in token.channels]
    names += list(token.subs.items())
    personal = config.subscribe_to_user_personal_channel
    if personal.enabled and user:
        names.append((resolver.personal_channel(user, personal.personal_channel_namespace), None))
    out: list[ServerSideChannel] = []
    seen: set[str] = set()
    for channel, grant in names:
        if channel in seen:
            continue
        seen.add(channel)
        out.append((channel, grant, resolver.options(channel)))
    if len(out) > config.channel_limit:
        raise Error.LIMIT_EXCEEDED
    return out


# Any: JSON values of the connect result (the codec encodes them).
def connect_result(
    config: ClientConfig,
    *,
    client_id: str,
    version: str,
    expire_at: int,
    now: float,
    subs: dict[str, dict[str, Any]],
    pong: bool,
    session: str,
    node: str,
) -> dict[str, Any]:
    """The connect result (reply or unidirectional push) of an accepted connection.

    ``pong``: the transport answers pings; ``session``: emulation and unidirectional
    connections; ``node``: this node's uid for emulation connections (else "").
    """
    result: dict[str, Any] = {"client": client_id, "version": version}
    result.update(expiry_fields(expire_at, now))
    if subs:
        result["subs"] = subs
    if config.ping_interval > 0:
        result["ping"] = int(config.ping_interval)
        if pong and config.pong_timeout > 0:
            result["pong"] = True
    if session:
        result["session"] = session
        if node:
            result["node"] = node
    if config.connect_include_server_time:
        result["time"] = int(now * 1000)
    return result


def uni_disconnect(error: Error) -> Disconnect:
    """Connect errors on unidirectional transports become disconnects."""
    if error.code in (Error.TOKEN_EXPIRED.code, Error.EXPIRED.code):
        return Disconnect.EXPIRED
    if error.code == Error.TOO_MANY_REQUESTS.code:
        return Disconnect.TOO_MANY_REQUESTS
    if error.code == Error.PERMISSION_DENIED.code:
        return Disconnect.PERMISSION_DENIED
    return Disconnect.SERVER_ERROR
