"""Channel names: namespaces, options lookup, private and user-limited channels."""

from __future__ import annotations

import re

from rtserver.config import ChannelConfig, ChannelOptions
from rtserver.protocol.codes import Error

__all__ = ["ChannelResolver"]


class ChannelResolver:
    """Resolves a channel name to its namespace options and name-level rules."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self._boundary = config.namespace_boundary
        self._namespaces: dict[str, ChannelOptions] = {ns.name: ns for ns in config.namespaces}
        self._regex: dict[str, re.Pattern[str]] = {}
        for opts in (config.without_namespace, *config.namespaces):
            if opts.channel_regex:
                self._regex[opts.channel_regex] = re.compile(opts.channel_regex)

    def split(self, channel: str) -> tuple[str, str]:
        """``(namespace, rest)``; the namespace is empty for channels without one."""
        name = channel
        prefix = self.config.private_prefix
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
        ns, sep, rest = name.partition(self._boundary)
        if not sep:
            return "", name
        return ns, rest

    def options(self, channel: str) -> ChannelOptions:
        """The options governing ``channel``.

        Raises:
            Error: 102 unknown channel when the namespace is not configured.
        """
        ns, _ = self.split(channel)
        if not ns:
            return self.config.without_namespace
        opts = self._namespaces.get(ns)
        if opts is None:
            raise Error.UNKNOWN_CHANNEL
        return opts

    def check_name(self, channel: str) -> None:
        """Length and character rules for client-supplied channel names.

        Raises:
            Error: 107 bad request for a too long or non-ASCII name, or one with
                control characters (docs/client-protocol.rst, "Channels").
        """
        if len(channel.encode("utf-8")) > self.config.max_length:
            raise Error.BAD_REQUEST.with_message("channel name too long")
        if not channel.isascii():
            raise Error.BAD_REQUEST.with_message("channel name must be ASCII")
        if not channel.isprintable():
            raise Error.BAD_REQUEST.with_message("channel name must not contain control characters")

    def check_regex(self, channel: str, opts: ChannelOptions) -> None:
        """Match the non-namespace part against ``channel_regex`` (107 on mismatch)."""
        if not opts.channel_regex:
            return
        _, rest = self.split(channel)
        if not self._regex[opts.channel_regex].fullmatch(rest):
            raise Error.BAD_REQUEST.with_message("channel does not match channel_regex")

    def is_private(self, channel: str) -> bool:
        """Channels starting with the private prefix need a subscription token."""
        prefix = self.config.private_prefix
        return bool(prefix) and channel.startswith(prefix)

    def is_user_limited(self, channel: str, opts: ChannelOptions) -> bool:
        """``...#42,43`` channels when the namespace allows user-limited channels."""
        return opts.allow_user_limited_channels and self.config.user_boundary in channel

    def user_allowed(self, channel: str, user: str) -> bool:
        """Whether ``user`` is listed after the channel's last user boundary."""
        if not user:
            return False
        users = channel.rpartition(self.config.user_boundary)[2]
        return user in users.split(self.config.user_separator)

    def personal_channel(self, user: str, namespace: str) -> str:
        """The personal channel of ``user``: ``#42`` or ``<ns>:#42``."""
        channel = f"{self.config.user_boundary}{user}"
        if namespace:
            channel = f"{namespace}{self._boundary}{channel}"
        return channel
