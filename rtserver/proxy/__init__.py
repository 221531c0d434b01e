"""Adapters of the backend proxy port (:class:`rtserver.core.proxy.IProxy`).

``codec.py`` (Centrifugo's JSON proxy bodies), ``http.py`` (HTTP over Twisted's Agent
with a persistent connection pool), ``hooks.py`` (in-process Python callables). See
docs/proxies.rst.
"""
