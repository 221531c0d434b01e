"""Message values of the client protocol: commands, requests, publications.

Requests are parsed from decoded JSON objects into small immutable values. Parsing is
strict about types (a string where a number belongs is a protocol violation, answered
with disconnect 3501) and lenient about unknown fields (SDKs send ``flag``, ``tf``,
``headers`` and others a server may ignore).

Raw JSON payloads (``data``, ``info``) are carried as compact JSON ``bytes`` that never
contain a newline, so they can be spliced into replies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from rtserver.protocol.codes import Disconnect
from rtserver.protocol.fields import FieldReader

__all__ = [
    "METHODS",
    "ClientInfo",
    "Command",
    "ConnectRequest",
    "HistoryRequest",
    "ProtocolError",
    "Publication",
    "PublishRequest",
    "RPCRequest",
    "RefreshRequest",
    "StreamPosition",
    "SubRefreshRequest",
    "SubscribeRequest",
]

#: Command methods in field-number order; the first present key wins.
METHODS = (
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "presence",
    "presence_stats",
    "history",
    "ping",
    "send",
    "rpc",
    "refresh",
    "sub_refresh",
)

MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1

#: Subscribe ``flag`` bit: answer a failed recovery with error 112.
FLAG_REJECT_UNRECOVERED = 2


class ProtocolError(Disconnect):
    """A malformed command; the connection is closed with 3501 "bad request"."""

    def __init__(self, detail: str) -> None:
        bad_request = Disconnect.BAD_REQUEST
        super().__init__(bad_request.code, bad_request.reason)
        self.detail = detail

    def __repr__(self) -> str:
        return f"ProtocolError({self.detail!r})"


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel's history stream."""

    offset: int
    epoch: str

    def to_wire(self) -> dict[str, Any]:
        """``{"offset":N,"epoch":E}`` with omit-empty offset."""
        body: dict[str, Any] = {"epoch": self.epoch}
        if self.offset:
            body["offset"] = self.offset
        return body


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is: sent in presence, join/leave and client publications."""

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object; ``user`` and ``client`` are always written."""
        body: dict[str, Any] = {"user": self.user, "client": self.client}
        if self.conn_info is not None:
            body["conn_info"] = orjson.Fragment(self.conn_info)
        if self.chan_info is not None:
            body["chan_info"] = orjson.Fragment(self.chan_info)
        return body


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in a channel; ``offset`` is 0 for channels without history.

    ``epoch`` is the stream epoch the engine assigned ``offset`` in (empty without
    history); it is not sent to clients, but lets a subscriber notice a stream that
    restarted under it. ``delta`` is the publisher's request (API ``delta`` flag or the
    namespace's ``delta_publish``) that subscribers which negotiated delta compression
    get it as a fossil delta against the channel's previous publication; it is not the
    client-protocol ``delta`` field (which marks a ``data`` that *is* a delta).
    """

    data: bytes
    info: ClientInfo | None = None
    offset: int = 0
    tags: dict[str, str] | None = None
    time: int = 0
    epoch: str = ""
    delta: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The client-protocol ``Publication`` object (omit-empty)."""
        body: dict[str, Any] = {"data": orjson.Fragment(self.data)}
        if self.info is not None:
            body["info"] = self.info.to_wire()
        if self.offset:
            body["offset"] = self.offset
        if self.tags:
            body["tags"] = self.tags
        return body


@dataclass(frozen=True, slots=True)
class Command:
    """One decoded command. ``method`` is ``None`` for a pong (the empty command)."""

    id: int
    method: str | None
    params: dict[str, Any] = field(default_factory=dict)


# --- field readers ---------------------------------------------------------------

_read = FieldReader(ProtocolError)
_str = _read.string
_bool = _read.boolean
_int = _read.integer
_object = _read.object


def _raw(params: dict[str, Any], key: str) -> bytes | None:
    return _read.raw_json(params, key)


# --- requests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """``subscribe`` (also the value type of connect ``subs`` recovery hints)."""

    channel: str
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = 0
    data: bytes | None = None
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False
    flag: int = 0
    delta: str = ""
    tf: dict[str, Any] | None = None

    @classmethod
    def parse(cls, params: dict[str, Any], channel: str | None = None) -> SubscribeRequest:
        """Validate a ``subscribe`` object (``channel`` given for connect ``subs``).

        ``delta`` must be empty or ``"fossil"`` (anything else is a protocol violation, as
        in Centrifugo). ``tf`` must be an object when present; it is kept as decoded, and
        the subscribe handler validates it with ``filters.parse`` (error 107 when
        malformed or not allowed in the namespace).
        """
        delta = _str(params, "delta")
        if delta and delta != "fossil":
            raise ProtocolError("unknown delta type")
        tf = params.get("tf")
        if tf is not None and not isinstance(tf, dict):
            raise ProtocolError("tf must be an object")
        return cls(
            channel=_str(params, "channel") if channel is None else channel,
            token=_str(params, "token"),
            recover=_bool(params, "recover"),
            epoch=_str(params, "epoch"),
            offset=_int(params, "offset", 0, MAX_UINT64),
            data=_raw(params, "data"),
            positioned=_bool(params, "positioned"),
            recoverable=_bool(params, "recoverable"),
            join_leave=_bool(params, "join_leave"),
            flag=_int(params, "flag", -(2**63), 2**63 - 1),
            delta=delta,
            tf=tf,
        )

    @property
    def reject_unrecovered(self) -> bool:
        """Whether a failed recovery must be answered with error 112."""
        return bool(self.flag & FLAG_REJECT_UNRECOVERED)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """``connect``: credentials and recovery hints for server-side subscriptions."""

    token: str = ""
    data: bytes | None = None
    subs: dict[str, SubscribeRequest] = field(default_factory=dict)
    name: str = ""
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, params: dict[str, Any]) -> ConnectRequest:
        """Validate a ``connect`` object."""
        subs = {
            str(ch): SubscribeRequest.parse(_expect_object(v, "subs"), channel=str(ch))
            for ch, v in _object(params, "subs").items()
        }
        headers = _object(params, "headers")
        if not all(isinstance(v, str) for v in headers.values()):
            raise ProtocolError("headers must map strings to strings")
        return cls(
            token=_str(params, "token"),
            data=_raw(params, "data"),
            subs=subs,
            name=_str(params, "name"),
            version=_str(params, "version"),
            headers=headers,
        )


def _expect_object(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{key} values must be objects")
    return value


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """``publish``: a client publication."""

    channel: str
    data: bytes

    @classmethod
    def parse(cls, params: dict[str, Any]) -> PublishRequest:
        """Validate a ``publish`` object; ``data`` is required."""
        data = _raw(params, "data")
        if data is None:
            raise ProtocolError("publish needs data")
        return cls(channel=_str(params, "channel"), data=data)


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """``history``: ``limit`` 0 returns the position only, -1 everything allowed."""

    channel: str
    limit: int = 0
    since: StreamPosition | None = None
    reverse: bool = False

    @classmethod
    def parse(cls, params: dict[str, Any]) -> HistoryRequest:
        """Validate a ``history`` object."""
        since = None
        if params.get("since") is not None:
            raw = _object(params, "since")
            since = StreamPosition(
                offset=_int(raw, "offset", 0, MAX_UINT64), epoch=_str(raw, "epoch")
            )
        return cls(
            channel=_str(params, "channel"),
            limit=_int(params, "limit", -(2**31), 2**31 - 1),
            since=since,
            reverse=_bool(params, "reverse"),
        )


@dataclass(frozen=True, slots=True)
class RPCRequest:
    """``rpc``: a call proxied to the application backend."""

    method: str
    data: bytes | None

    @classmethod
    def parse(cls, params: dict[str, Any]) -> RPCRequest:
        """Validate an ``rpc`` object."""
        return cls(method=_str(params, "method"), data=_raw(params, "data"))


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """``refresh``: a new connection token."""

    token: str

    @classmethod
    def parse(cls, params: dict[str, Any]) -> RefreshRequest:
        """Validate a ``refresh`` object."""
        return cls(token=_str(params, "token"))


@dataclass(frozen=True, slots=True)
class SubRefreshRequest:
    """``sub_refresh``: a new subscription token for one channel."""

    channel: str
    token: str

    @classmethod
    def parse(cls, params: dict[str, Any]) -> SubRefreshRequest:
        """Validate a ``sub_refresh`` object."""
        return cls(channel=_str(params, "channel"), token=_str(params, "token"))


def channel_of(params: dict[str, Any]) -> str:
    """The ``channel`` field of unsubscribe/presence/presence_stats requests."""
    return _str(params, "channel")
