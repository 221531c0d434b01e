"""Channel permissions of client commands, as pure decisions.

The rules are in docs/client-protocol.rst ("Channels"). Each function answers one
question for one client and channel; callers raise 103 on ``False``. ``insecure``
(``client.insecure``) grants everything. Anonymous users (user ``""``) additionally need
the ``*_for_anonymous`` option.
"""

from __future__ import annotations

from rtserver.config import ChannelOptions

__all__ = ["may_publish", "may_read_history", "may_read_presence", "may_subscribe"]


def _granted(permission: bool, user: str, anonymous: bool, insecure: bool) -> bool:
    return insecure or (permission and (bool(user) or anonymous))


def may_subscribe(opts: ChannelOptions, user: str, insecure: bool) -> bool:
    """Subscribing without a token (not private, not user-limited)."""
    return _granted(
        opts.allow_subscribe_for_client, user, opts.allow_subscribe_for_anonymous, insecure
    )


def may_publish(opts: ChannelOptions, user: str, subscribed: bool, insecure: bool) -> bool:
    """Publishing from a client."""
    permission = opts.allow_publish_for_client or (
        opts.allow_publish_for_subscriber and subscribed
    )
    return _granted(permission, user, opts.allow_publish_for_anonymous, insecure)


def may_read_presence(opts: ChannelOptions, user: str, subscribed: bool, insecure: bool) -> bool:
    """``presence`` / ``presence_stats``, and asking for join/leave pushes on subscribe."""
    permission = opts.allow_presence_for_client or (
        opts.allow_presence_for_subscriber and subscribed
    )
    return _granted(permission, user, opts.allow_presence_for_anonymous, insecure)


def may_read_history(opts: ChannelOptions, user: str, subscribed: bool, insecure: bool) -> bool:
    """``history``, and asking for positioning/recovery on subscribe."""
    permission = opts.allow_history_for_client or (
        opts.allow_history_for_subscriber and subscribed
    )
    return _granted(permission, user, opts.allow_history_for_anonymous, insecure)
