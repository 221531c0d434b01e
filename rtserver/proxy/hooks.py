"""In-process proxy hooks: Python callables instead of an HTTP backend.

An application that embeds rtserver (``rtserver.service.build(config, hooks=Hooks(...))``,
docs/proxies.rst "Embedding: Python hooks") passes callables taking the event's request
value (:mod:`rtserver.core.proxy`) and returning its result value, ``None`` (no result),
a Deferred of either or a coroutine. A hook refuses by raising
:class:`~rtserver.protocol.codes.Error` (an error reply, custom codes 400-1999) or
:class:`~rtserver.protocol.codes.Disconnect` (custom codes 4000-4999). Any other
exception is a failed backend: one log line, error 100 to the client.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from rtserver.core.proxy import (
    ConnectProxyRequest,
    ConnectProxyResult,
    IProxy,
    PublishProxyRequest,
    PublishProxyResult,
    RefreshProxyRequest,
    RefreshProxyResult,
    RPCProxyRequest,
    RPCProxyResult,
    SubRefreshProxyRequest,
    SubRefreshProxyResult,
    SubscribeProxyRequest,
    SubscribeProxyResult,
)
from rtserver.protocol.codes import Error

__all__ = ["HookProxy", "Hooks"]

_Q = TypeVar("_Q")
_R = TypeVar("_R")

# Any: a coroutine's yield and send types are whatever the hook awaits.
Answer: TypeAlias = "_R | Deferred[_R | None] | Coroutine[Any, Any, _R | None] | None"
Hook: TypeAlias = "Callable[[_Q], Answer[_R]]"


@dataclass(frozen=True)
class Hooks:
    """The events an embedding application answers in-process; None: not handled here.

    ``connect``/``refresh`` act as ``client.proxy.connect``/``refresh`` (enabled by being
    given). ``subscribe``, ``publish``, ``sub_refresh`` and ``rpc`` become the proxies
    named ``name`` of their event (``default`` unless changed): namespaces opt in with
    ``subscribe_proxy_enabled`` etc., RPC namespaces with ``proxy_enabled``, exactly as
    for HTTP proxies. ``timeout`` bounds every call (seconds, on the server's clock).
    """

    connect: Hook[ConnectProxyRequest, ConnectProxyResult] | None = None
    refresh: Hook[RefreshProxyRequest, RefreshProxyResult] | None = None
    subscribe: Hook[SubscribeProxyRequest, SubscribeProxyResult] | None = None
    publish: Hook[PublishProxyRequest, PublishProxyResult] | None = None
    sub_refresh: Hook[SubRefreshProxyRequest, SubRefreshProxyResult] | None = None
    rpc: Hook[RPCProxyRequest, RPCProxyResult] | None = None
    name: str = "default"
    timeout: float = 1.0


def _invoke(hook: Hook[_Q, _R] | None, request: _Q) -> Deferred[_R | None]:
    if hook is None:
        return fail(Error.NOT_AVAILABLE)
    try:
        value = hook(request)
    except Exception:
        return fail()
    if isinstance(value, Deferred):
        return value
    if isinstance(value, Coroutine):
        return Deferred.fromCoroutine(value)
    return succeed(value)


@implementer(IProxy)
class HookProxy:
    """:class:`Hooks` behind the proxy port."""

    def __init__(self, hooks: Hooks, name: str = "") -> None:
        """Answer with ``hooks``; ``name`` appears in log lines (default: ``hooks.name``)."""
        self.name = name or hooks.name
        self._hooks = hooks

    def connect(self, request: ConnectProxyRequest) -> Deferred[ConnectProxyResult | None]:
        """Call the connect hook."""
        return _invoke(self._hooks.connect, request)

    def refresh(self, request: RefreshProxyRequest) -> Deferred[RefreshProxyResult | None]:
        """Call the refresh hook."""
        return _invoke(self._hooks.refresh, request)

    def subscribe(self, request: SubscribeProxyRequest) -> Deferred[SubscribeProxyResult | None]:
        """Call the subscribe hook."""
        return _invoke(self._hooks.subscribe, request)

    def publish(self, request: PublishProxyRequest) -> Deferred[PublishProxyResult | None]:
        """Call the publish hook."""
        return _invoke(self._hooks.publish, request)

    def sub_refresh(
        self, request: SubRefreshProxyRequest
    ) -> Deferred[SubRefreshProxyResult | None]:
        """Call the sub_refresh hook."""
        return _invoke(self._hooks.sub_refresh, request)

    def rpc(self, request: RPCProxyRequest) -> Deferred[RPCProxyResult | None]:
        """Call the rpc hook."""
        return _invoke(self._hooks.rpc, request)
