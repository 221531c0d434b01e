"""Regenerate the key tables of docs/configuration.rst from rtserver.config.

Usage: python scripts/config_doc.py [--check]
The tables sit between ``.. keys-start``/``.. keys-end`` and
``.. options-start``/``.. options-end`` markers; the prose around them is hand-written.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.rst"
# document this checkout's schema, not an installed rtserver
sys.path.insert(0, str(ROOT))

from rtserver import config  # noqa: E402

MEANING = {
    "http_server.address": "interface to bind (empty: all)",
    "http_server.port": "HTTP port for every endpoint",
    "http_server.internal_address": "interface of the internal port (empty: all)",
    "http_server.internal_port": "second port for the admin UI (0: none)",
    "http_server.tls.enabled": "serve HTTPS/WSS on the same port",
    "http_server.tls.cert_pem": "certificate chain: PEM text, base64 PEM or a file path",
    "http_server.tls.key_pem": "private key: PEM text, base64 PEM or a file path",
    "http_server.tls.cert_pem_file": "certificate chain (PEM file path)",
    "http_server.tls.key_pem_file": "private key (PEM file path)",
    "http_server.tls.client_ca_pem":
        "CA(s) of client certificates: set, every TLS client must present one (mutual TLS)",
    "http_server.http3.enabled": "HTTP/3 over UDP on the HTTP port number (needs tls)",
    "http_server.read_header_timeout":
        "request head (incl. WebSocket upgrade) deadline, else 408 + close; 0 = off",
    "http_server.max_unfinished_request_heads":
        "new connections get 503 + close while this many heads are open; 0 = off",
    "log.level": "trace, debug, info, warn, error, fatal or none",
    "log.format": "``text`` or ``json`` (one JSON object per line; rtserver's own key)",
    "client.token.hmac_secret_key": "HS256/384/512 secret for connection tokens",
    "client.token.hmac_previous_secret_key": "the HMAC secret before a rotation, still accepted",
    "client.token.hmac_previous_secret_key_valid_until":
        "unix seconds after which the previous secret is refused; 0 = no end",
    "client.token.rsa_public_key": "PEM public key for RS256/384/512",
    "client.token.ecdsa_public_key": "PEM public key for ES256/384/512",
    "client.token.jwks_public_endpoint": "JWKS URL: RSA, EC and Ed25519 keys by ``kid``",
    "client.token.audience": "required ``aud`` (checked only when set)",
    "client.token.audience_regex": "pattern one ``aud`` value must match (searched; anchor it)",
    "client.token.issuer": "required ``iss`` (checked only when set)",
    "client.token.issuer_regex": "pattern ``iss`` must match (searched; anchor it)",
    "client.token.user_id_claim": "claim (dotted path) holding the user id instead of ``sub``",
    "client.subscription_token.enabled": "verify subscription tokens with the keys of this block",
    "client.allowed_origins":
        "browser origins allowed to connect; ``*`` wildcards; empty = no browsers",
    "client.allow_anonymous_connect_without_token": "connect without a token as anonymous user",
    "client.disallow_anonymous_connection_tokens": "refuse tokens with an empty ``sub``",
    "client.user_id_http_header":
        "request header with the user id (set by an authenticating proxy); no token needed",
    "client.insecure": "development only: no auth, every channel permission granted",
    "client.ping_interval": "server ping ``{}`` interval",
    "client.pong_timeout": "close with 3012 when the pong is late (must be < ping_interval)",
    "client.expired_close_delay": "grace after connection expiry before 3005",
    "client.expired_sub_close_delay": "grace after subscription expiry before unsubscribe 2501",
    "client.stale_close_delay": "close with 3502 when no connect arrives in time",
    "client.channel_limit": "subscriptions per connection (106 beyond)",
    "client.queue_max_size": "bytes queued per connection before disconnect 3008",
    "client.max_messages_in_frame": "messages joined into one WebSocket frame",
    "client.write_delay": "delay before output is flushed (0s: end of the turn)",
    "client.presence_update_interval": "presence refresh interval (engines with presence TTL)",
    "client.history_max_publication_limit": "cap on client ``history`` limit",
    "client.recovery_max_publication_limit": "cap on publications recovered on subscribe",
    "client.user_connection_limit": "connections per user on this node (3504 beyond; 0 = off)",
    "client.connection_limit": "connections on this node (HTTP 503 beyond; 0 = off)",
    "client.connection_rate_limit": "new connections per second on this node (503; 0 = off)",
    "client.connect_include_server_time": "add ``time`` (ms) to connect results",
    "client.subscribe_to_user_personal_channel.enabled": "subscribe every user to ``#<user>``",
    "client.subscribe_to_user_personal_channel.personal_channel_namespace": "its namespace",
    "client.subscribe_to_user_personal_channel.single_connection":
        "a new connection closes the user's other ones (3504)",
    "channel.namespaces": "list of namespace objects: ``name`` plus the channel options below",
    "channel.history_meta_ttl": "how long epoch/top offset survive without traffic",
    "channel.max_length": "maximum channel name length in bytes (107 beyond)",
    "channel.private_prefix": "prefix of channels that need a subscription token",
    "channel.namespace_boundary": "separates namespace and channel name",
    "channel.user_boundary": "starts the user list of user-limited channels",
    "channel.user_separator": "separates users in user-limited channels",
    "http_api.disabled": "turn the server API off",
    "http_api.key": "API key (``X-API-Key`` or ``Authorization: apikey``); empty = every call 401",
    "http_api.insecure": "no API key check (behind a trusted proxy only)",
    "http_api.handler_prefix": "path of the API",
    "http_api.max_request_body_size": "413 beyond this many body bytes",
    "http_api.error_mode": "``transport``: API errors as HTTP statuses instead of ``error``",
    "grpc_api.enabled": "serve the server API over GRPC on its own port",
    "grpc_api.address": "interface the GRPC API binds (empty: all)",
    "grpc_api.port": "GRPC API port",
    "grpc_api.key": "API key in ``authorization: apikey <key>`` metadata; empty = no check",
    "grpc_api.error_mode": "``transport``: API errors as GRPC statuses instead of ``error``",
    "grpc_api.tls.enabled": "serve the GRPC API over TLS",
    "grpc_api.tls.cert_pem": "like http_server.tls.cert_pem, for the GRPC API",
    "grpc_api.tls.key_pem": "like http_server.tls.key_pem, for the GRPC API",
    "grpc_api.tls.cert_pem_file": "certificate chain of the GRPC API (PEM file path)",
    "grpc_api.tls.key_pem_file": "private key of the GRPC API (PEM file path)",
    "grpc_api.tls.client_ca_pem": "like http_server.tls.client_ca_pem, for the GRPC API",
    "grpc_api.reflection": "register the GRPC server reflection service (grpcio's server only)",
    "grpc_api.max_receive_message_size": "largest request in bytes (0: 4 MiB, as grpcio)",
    "grpc_api.server":
        "``h2``: HTTP/2 on the reactor; ``grpcio``: grpcio's threaded server; "
        "empty: ``h2``, or ``grpcio`` when reflection is on",
    "uni_grpc.enabled": "serve the unidirectional GRPC transport on its own port",
    "uni_grpc.address": "interface uni_grpc binds (empty: all)",
    "uni_grpc.port": "uni_grpc port",
    "uni_grpc.max_receive_message_size": "largest connect request in bytes (0: grpcio's 4 MiB)",
    "uni_grpc.tls.enabled": "serve uni_grpc over TLS",
    "uni_grpc.tls.cert_pem": "like http_server.tls.cert_pem, for uni_grpc",
    "uni_grpc.tls.key_pem": "like http_server.tls.key_pem, for uni_grpc",
    "uni_grpc.tls.cert_pem_file": "certificate chain of uni_grpc (PEM file path)",
    "uni_grpc.tls.key_pem_file": "private key of uni_grpc (PEM file path)",
    "uni_grpc.tls.client_ca_pem": "like http_server.tls.client_ca_pem, for uni_grpc",
    "uni_grpc.max_concurrent_streams":
        "streams at once; RESOURCE_EXHAUSTED beyond",
    "websocket.disabled": "turn the WebSocket endpoint off",
    "websocket.handler_prefix": "path of the WebSocket endpoint",
    "websocket.message_size_limit": "largest inbound message (close 1009 beyond)",
    "websocket.write_timeout":
        "a peer reading nothing this long is closed with 3009 (all transports)",
    "webtransport.enabled": "WebTransport over HTTP/3 (needs http_server.http3)",
    "webtransport.handler_prefix": "path of the WebTransport endpoint",
    "webtransport.message_size_limit": "largest inbound command (close 3501 beyond)",
    "webtransport.write_buffer_size": "unacknowledged output before writes pause",
    "webtransport.write_timeout": "paused this long: close 3009",
    "webtransport.max_connections": "QUIC connections at once; new ones refused beyond",
    "webtransport.max_sessions_per_connection": "sessions per QUIC connection",
    "webtransport.max_streams_per_session": "client streams per session; 3501 beyond",
    "webtransport.idle_timeout": "QUIC idle timeout",
    "http_stream.enabled": "bidirectional emulation over HTTP streaming",
    "http_stream.handler_prefix": "its path",
    "http_stream.max_request_body_size": "413 beyond",
    "sse.enabled": "bidirectional emulation over Server-Sent Events",
    "sse.handler_prefix": "its path",
    "sse.max_request_body_size": "413 beyond (POST)",
    "emulation.handler_prefix": "path receiving commands of HTTP-stream/SSE sessions",
    "emulation.max_request_body_size": "413 beyond",
    "uni_websocket.enabled": "unidirectional WebSocket",
    "uni_websocket.handler_prefix": "its path",
    "uni_websocket.message_size_limit": "largest connect request (close 1009 beyond)",
    "uni_websocket.join_push_messages": "newline-join pushes sent in one turn into one message",
    "uni_sse.enabled": "unidirectional Server-Sent Events",
    "uni_sse.handler_prefix": "its path",
    "uni_sse.max_request_body_size": "413 beyond (POST)",
    "uni_http_stream.enabled": "unidirectional HTTP streaming",
    "uni_http_stream.handler_prefix": "its path",
    "uni_http_stream.max_request_body_size": "413 beyond",
    "sockjs.enabled": "SockJS endpoint for legacy browsers",
    "sockjs.handler_prefix": "its path (sessions at ``<prefix>/<server>/<session>/...``)",
    "sockjs.heartbeat_delay": "``h`` frame interval while a receiver is attached",
    "sockjs.disconnect_delay": "a session without a receiver ends after this",
    "sockjs.response_limit": "bytes before a streaming response is recycled",
    "sockjs.client_url": "sockjs-client for the iframe page; empty = bundled 1.6.1",
    "sockjs.cookie_needed": "JSESSIONID cookie for cookie-pinning load balancers",
    "sockjs.websocket": "offer SockJS's WebSocket transport",
    "sockjs.max_request_body_size": "413 beyond (``xhr_send``/``jsonp_send``)",
    "health.enabled": "serve the health endpoint",
    "health.handler_prefix": "path of the health endpoint",
    "health.ready_handler_prefix": "path of the readiness endpoint (503 starting/draining)",
    "health.drain_delay": "on SIGTERM, not ready for this long before closing; 0 = off",
    "shutdown.timeout": "on SIGTERM, the most closing may take (after drain_delay)",
    "engine.type": "memory (one process) or redis (a cluster of nodes)",
    "engine.redis.address":
        "a string or a list (several shard channels): ``host:port``, ``redis://``, "
        "``rediss://``, ``redis+sentinel://``, ``redis+cluster://`` (docs/cluster.rst)",
    "engine.redis.prefix": "prefix of every Redis key and PUB/SUB channel",
    "engine.redis.db": "database number (when the URL has none)",
    "engine.redis.user": "ACL user (when the URL has none)",
    "engine.redis.password": "password (when the URL has none)",
    "engine.redis.client_name": "``CLIENT SETNAME`` of every Redis connection",
    "engine.redis.force_resp2": "accepted for Centrifugo configs; rtserver always speaks RESP2",
    "engine.redis.tls.enabled": "TLS to every Redis address (``rediss://``: to that one)",
    "engine.redis.tls.cert_pem": "client certificate: PEM text, base64 PEM or a file path",
    "engine.redis.tls.key_pem": "its private key (same forms)",
    "engine.redis.tls.server_ca_pem": "CA(s) to verify the server with (default: the system)",
    "engine.redis.tls.insecure_skip_verify": "do not verify the server certificate (tests only)",
    "engine.redis.tls.server_name": "name the certificate must carry (default: the host)",
    "engine.redis.sentinel_address":
        "Sentinel shards, each ``host:port[,host:port...]`` (instead of ``address``)",
    "engine.redis.sentinel_master_name": "the master the sentinels watch (required with them)",
    "engine.redis.sentinel_user": "ACL user on the sentinels",
    "engine.redis.sentinel_password": "password on the sentinels",
    "engine.redis.sentinel_client_name": "``CLIENT SETNAME`` on Sentinel connections",
    "engine.redis.sentinel_tls.enabled": "TLS to the sentinels",
    "engine.redis.sentinel_tls.cert_pem": "as ``engine.redis.tls.cert_pem``",
    "engine.redis.sentinel_tls.key_pem": "as ``engine.redis.tls.key_pem``",
    "engine.redis.sentinel_tls.server_ca_pem": "as ``engine.redis.tls.server_ca_pem``",
    "engine.redis.sentinel_tls.insecure_skip_verify": "as for ``engine.redis.tls``",
    "engine.redis.sentinel_tls.server_name": "as for ``engine.redis.tls``",
    "engine.redis.cluster_address":
        "Redis Cluster seeds: one cluster per entry, ``host:port`` seeds separated by "
        "commas; wins over ``address`` (docs/cluster.rst)",
    "engine.redis.connect_timeout": "give up a Redis connection attempt after this",
    "engine.redis.io_timeout": "fail a Redis command (error 100) after this",
    "engine.redis.presence_ttl": "presence entries of a vanished node expire after this",
    "engine.redis.idempotent_result_ttl": "how long an ``idempotency_key`` result is kept",
    "engine.redis.pubsub_probe_interval":
        "probe a silent PUB/SUB link after this; reconnect if deaf",
    "broker.enabled": "replace the engine's broker (PUB/SUB and history) with ``broker.type``",
    "broker.type": "memory, redis or nats (read only when enabled)",
    "broker.nats.url":
        "``nats://`` or ``tls://[user:pass@]host:port``; several comma-separated: failover",
    "broker.nats.prefix": "prefix of every NATS subject rtserver uses",
    "broker.nats.dial_timeout": "give up a connection attempt (TCP and handshake) after this",
    "broker.nats.write_timeout": "drop a NATS connection whose writes block this long",
    "broker.nats.tls.enabled": "TLS to every NATS server (``tls://`` URLs turn it on too)",
    "broker.nats.tls.cert_pem": "client certificate (mutual TLS), as ``engine.redis.tls.cert_pem``",
    "broker.nats.tls.key_pem": "its private key, as ``engine.redis.tls.key_pem``",
    "broker.nats.tls.server_ca_pem": "CA(s) to verify the servers with (default: the system)",
    "broker.nats.tls.insecure_skip_verify": "do not verify the server certificate (tests only)",
    "broker.nats.tls.server_name": "name the certificate must carry (default: the URL's host)",
    "broker.nats.allow_wildcards": "allow channels with ``*``/``>`` (NATS wildcard subscriptions)",
    "broker.nats.raw_mode.enabled": "channels are plain NATS subjects; payloads unwrapped",
    "broker.nats.raw_mode.channel_replacements":
        "JSON object: substrings replaced in channel names to form subjects",
    "broker.nats.raw_mode.prefix": "subject prefix in raw mode (not ``broker.nats.prefix``)",
    "presence_manager.enabled": "replace the engine's presence with ``presence_manager.type``",
    "presence_manager.type": "memory or redis (read only when enabled)",
    "prometheus.enabled": "serve Prometheus metrics",
    "prometheus.handler_prefix": "path of the metrics endpoint",
    "graphite.enabled": "push the metrics of ``/metrics`` to Graphite over TCP",
    "graphite.host": "Graphite's plaintext (carbon) host",
    "graphite.port": "Graphite's plaintext (carbon) port",
    "graphite.prefix": "first path component; the node name follows",
    "graphite.interval": "how often the metrics are collected and pushed",
    "graphite.tags": "labels as Graphite tags (``;name=value``) instead of path components",
    "node.name": "name in ``info`` (default ``<hostname>_<port>``)",
    # channel options
    "presence": "keep presence (who is subscribed)",
    "join_leave": "emit join/leave events",
    "force_push_join_leave": "push join/leave to every subscriber",
    "history_size": "publications kept per channel (with history_ttl)",
    "history_ttl": "history lifetime after the last publish",
    "history_meta_ttl": "epoch/top offset lifetime (0 = channel.history_meta_ttl)",
    "force_positioning": "every subscription gets epoch/offset",
    "allow_positioning": "positioning when the client asks",
    "force_recovery": "every subscription is recoverable",
    "allow_recovery": "recovery when the client asks",
    "force_recovery_mode":
        "``stream``: recover the whole gap; ``cache``: only the latest publication",
    "allow_subscribe_for_client": "authenticated clients may subscribe",
    "allow_subscribe_for_anonymous": "anonymous clients may subscribe too",
    "allow_publish_for_client": "clients may publish",
    "allow_publish_for_subscriber": "subscribers may publish",
    "allow_publish_for_anonymous": "anonymous clients may publish too",
    "allow_presence_for_client": "clients may ask presence",
    "allow_presence_for_subscriber": "subscribers may ask presence",
    "allow_presence_for_anonymous": "anonymous clients too",
    "allow_history_for_client": "clients may read history",
    "allow_history_for_subscriber": "subscribers may read history",
    "allow_history_for_anonymous": "anonymous clients too",
    "allow_user_limited_channels": "``name#1,2`` channels open to users 1 and 2",
    "channel_regex": "regular expression the channel name (after ``ns:``) must match",
    "publication_data_format": "``json_object`` requires object payloads (107 otherwise)",
    "allowed_delta_types": "delta formats subscribers may negotiate: ``[\"fossil\"]``",
    "delta_publish": "publish every publication with ``delta`` (needs allowed_delta_types)",
    "allow_tags_filter": "subscribers may send a ``tf`` tag filter",
    "admin.enabled": "serve the admin web UI (docs/admin.rst)",
    "admin.password": "password to log into the admin UI",
    "admin.secret": "signs admin session tokens",
    "admin.insecure": "admin UI without login (local use only)",
    "admin.handler_prefix": "path of the admin UI (empty: ``/``)",
    "admin.external": "keep the admin UI on the main port despite ``internal_port``",
    "subscribe_proxy_enabled": "the subscribe proxy decides subscriptions (docs/proxies.rst)",
    "subscribe_proxy_name": "which subscribe proxy: ``default`` or a ``proxies`` name",
    "publish_proxy_enabled": "the publish proxy decides client publications",
    "publish_proxy_name": "which publish proxy: ``default`` or a ``proxies`` name",
    "sub_refresh_proxy_enabled": "the server refreshes expiring subscriptions via the proxy",
    "sub_refresh_proxy_name": "which sub_refresh proxy: ``default`` or a ``proxies`` name",
    "client.proxy.connect.enabled": "ask the connect proxy when a client brings no token",
    "client.proxy.refresh.enabled": "the server refreshes expiring connections via the proxy",
    "channel.proxy.subscribe.endpoint": "the subscribe proxy named ``default``",
    "channel.proxy.publish.endpoint": "the publish proxy named ``default``",
    "channel.proxy.sub_refresh.endpoint": "the sub_refresh proxy named ``default``",
    "rpc.proxy.endpoint": "the RPC proxy named ``default``",
    "rpc.without_namespace.proxy_enabled": "methods without namespace go to the RPC proxy",
    "rpc.without_namespace.proxy_name": "which RPC proxy: ``default`` or a ``proxies`` name",
    "rpc.namespaces": "list of RPC namespaces: ``name``, ``proxy_enabled``, ``proxy_name``",
    "rpc.namespace_boundary": "separates RPC namespace and method (``ns:method``)",
    "rpc.ping.enabled": "answer the RPC method below with ``{}`` without a proxy",
    "rpc.ping.method": "name of that method",
    "proxies": "named proxies (``name`` plus the proxy keys) for ``*_proxy_name``",
    "consumers":
        "server API commands from queues: ``name``, ``enabled``, ``type`` (``redis_stream``) "
        "and its section (docs/consumers.rst)",
}

_PROXY_KEYS = {
    "endpoint": "``http://``, ``https://`` or ``grpc://host:port`` of the backend",
    "timeout": "give up on the backend after this (error 100 to the client)",
    "http_headers": "headers of the client's connection request forwarded",
    "grpc_metadata": "metadata keys of ``uni_grpc`` clients' calls forwarded",
    "emulated_headers": "connect command ``headers`` (SDK emulation) forwarded",
    "binary_encoding": "``b64data``/``b64info`` instead of raw JSON",
    "include_connection_meta": "send the connection's ``meta`` along",
    "http.static_headers": "headers added to every request (object)",
    "http.tls.enabled": "own TLS for an ``https://`` backend (docs/proxies.rst, \"HTTPS\")",
    "http.tls.cert_pem": "client certificate (mutual TLS): PEM text, base64 PEM or a file path",
    "http.tls.key_pem": "its private key (same forms)",
    "http.tls.server_ca_pem": "CA(s) to verify the backend with (default: the system)",
    "http.tls.insecure_skip_verify": "accept any certificate (tests only)",
    "http.tls.server_name": "name the certificate must carry (default: the endpoint's host)",
    "grpc.tls.enabled": "TLS to a ``grpc://`` backend (docs/proxies.rst, \"GRPC\")",
    "grpc.tls.cert_pem": "client certificate (mutual TLS): PEM text, base64 PEM or a file path",
    "grpc.tls.key_pem": "its private key (same forms)",
    "grpc.tls.server_ca_pem": "CA(s) to verify the backend with (default: the system)",
    "grpc.tls.insecure_skip_verify": "accept any certificate (tests only; a TLS relay)",
    "grpc.tls.server_name": "name the certificate must carry (default: the endpoint's host)",
    "grpc.credentials_key": "metadata key sent with every call (per-RPC credentials)",
    "grpc.credentials_value": "its value (never logged)",
    "grpc.compression": "gzip-compress requests",
    "grpc.static_metadata": "metadata sent with every call (object; forwarded headers win)",
}
for _prefix in (
    "client.proxy.connect",
    "client.proxy.refresh",
    "channel.proxy.subscribe",
    "channel.proxy.publish",
    "channel.proxy.sub_refresh",
    "rpc.proxy",
):
    for _leaf, _meaning in _PROXY_KEYS.items():
        MEANING.setdefault(f"{_prefix}.{_leaf}", _meaning)


def _default(key: config.SchemaKey) -> str:
    value = key.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == {}:
        return "{}"
    if value == "":
        return '""'
    if value == []:
        return "[]"
    return str(value)


def _meaning(name: str) -> str:
    """The key's meaning; a Redis section of broker/presence_manager reads as engine.redis."""
    if name in MEANING:
        return MEANING[name]
    for section in ("broker.redis.", "presence_manager.redis."):
        if name.startswith(section):
            return "as ``engine.redis." + name.removeprefix(section) + "``, for this side"
    return ""


def _rows(cls: type, skip: str = "") -> list[tuple[str, str, str]]:
    return [
        (f"``{key.name}``", f"``{_default(key)}``", _meaning(key.name))
        for key in config.schema_keys(cls)
        if not (skip and key.name.startswith(skip + "."))
    ]


def _table(rows: list[tuple[str, str, str]], headers: tuple[str, str, str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def render(text: str) -> str:
    """The document with both tables regenerated."""
    keys = _table(_rows(config.Config, skip="channel.without_namespace"),
                  ("key", "default", "meaning"))
    options = _table(_rows(config.ChannelOptions), ("option", "default", "meaning"))
    for marker, table in (("keys", keys), ("options", options)):
        start, end = f".. {marker}-start\n", f".. {marker}-end\n"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{table}\n\n{end}{tail}"
    return text


def main() -> int:
    """Rewrite the doc, or with --check report whether it is up to date."""
    text = DOC.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("docs/configuration.rst is out of date: run python scripts/config_doc.py")
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
